//! The master key: with one configured, every `/v1` call, vLLM's `/tokenize` and
//! `/detokenize`, and the UI's `/api/*` need `Authorization: Bearer KEY` or
//! `x-api-key: KEY` (as LiteLLM and Anthropic clients send). `/health`, `/metrics` and the
//! UI's static files stay open. Without one, the server only listens on loopback addresses
//! (checked in `config.rs`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Compares in time independent of where the strings first differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.master_key.as_deref() else {
        return next.run(request).await;
    };
    match presented_key(request.headers()) {
        Some(key) if same(key.trim(), expected) => next.run(request).await,
        presented => {
            let message = if presented.is_some() {
                "Incorrect API key provided."
            } else {
                "Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`."
            };
            let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
            (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
        }
    }
}

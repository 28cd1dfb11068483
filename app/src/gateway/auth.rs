//! Who is calling: with a master key configured, every `/v1` call, vLLM's `/tokenize` and
//! `/detokenize`, the UI's `/api/*` and the admin routes need `Authorization: Bearer KEY`
//! or `x-api-key: KEY` (as LiteLLM and Anthropic clients send), either the master key or a
//! virtual key that has not expired. The `Caller` goes into the request's extensions.
//! `/health`, `/metrics` and the UI's static files stay open. Without a master key the
//! server only listens on loopback addresses (checked in `config.rs`) and every caller is
//! `Caller::Open`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::keys::{VirtualKey, hash_key};
use crate::state::AppState;

#[derive(Clone)]
pub enum Caller {
    /// No master key is configured: everyone on loopback may call.
    Open,
    Master,
    Virtual(Arc<VirtualKey>),
}

fn unauthorized(message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

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
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.master_key.as_deref() else {
        request.extensions_mut().insert(Caller::Open);
        return next.run(request).await;
    };
    let caller = match presented_key(request.headers()).map(str::trim) {
        Some(key) if same(key, expected) => Caller::Master,
        Some(key) => match state.ledger.keys.get(&hash_key(key)) {
            Some(virtual_key) if virtual_key.expired(super::unix_now()) => {
                return unauthorized("Authentication Error - Expired Key.");
            }
            Some(virtual_key) => Caller::Virtual(virtual_key),
            None => return unauthorized("Incorrect API key provided."),
        },
        None => {
            return unauthorized(
                "Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.",
            );
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

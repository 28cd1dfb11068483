//! `POST /v1/messages`: Anthropic's Messages API, so that the official `anthropic` SDK and
//! Anthropic-format tools work. A request is translated to an OpenAI chat request, served
//! by the same path as `/v1/chat/completions` (the local engine or a gateway upstream),
//! and the answer, whole or streamed, is translated back; errors take Anthropic's shape.

mod request;
mod response;
mod stream;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::gateway::ledger::Served;
use crate::openai::EngineReport;
use crate::openai::chat::chat_completions;
use crate::openai::json::{OpenAiJson, parse_json};
use crate::state::AppState;

/// Bodies of non-streamed answers are read whole up to this size.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

fn error(status: StatusCode, message: String) -> Response {
    let kind = response::error_type(status);
    (
        status,
        Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

pub async fn messages(State(state): State<AppState>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {e}"),
            );
        }
    };
    let openai = match request::to_openai(&request) {
        Ok(openai) => openai,
        Err(request::Invalid(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    let model = openai["model"].as_str().unwrap_or_default().to_string();
    let answer = dispatch(&state, &model, openai).await;
    // Who served it matters to the meter, whatever the answer's shape.
    let served = answer.extensions().get::<Served>().cloned();
    let report = answer.extensions().get::<EngineReport>().cloned();
    let mut translated = translate(answer, &model).await;
    if let Some(served) = served {
        translated.extensions_mut().insert(served);
    }
    if let Some(report) = report {
        translated.extensions_mut().insert(report);
    }
    translated
}

/// Serves an OpenAI chat request as `/v1/chat/completions` would.
async fn dispatch(state: &AppState, model: &str, openai: Value) -> Response {
    if let Some(gateway) = &state.gateway
        && let Some(group) = gateway.group(model)
    {
        return crate::gateway::forward(gateway, group, "/chat/completions", openai).await;
    }
    let bytes = match serde_json::to_vec(&openai) {
        Ok(bytes) => bytes,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match parse_json(&bytes) {
        Ok(request) => chat_completions(State(state.clone()), OpenAiJson(request))
            .await
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn translate(answer: Response, model: &str) -> Response {
    let status = answer.status();
    let is_stream = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !status.is_success() || !is_stream {
        let bytes = axum::body::to_bytes(answer.into_body(), MAX_ANSWER_BYTES)
            .await
            .unwrap_or_default();
        if !status.is_success() {
            return (status, Json(response::error_body(status, &bytes))).into_response();
        }
        return match serde_json::from_slice::<Value>(&bytes) {
            Ok(completion) => Json(response::to_anthropic(&completion, model)).into_response(),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                format!("the model's answer was not JSON: {e}"),
            ),
        };
    }
    let mut translator = stream::Translator::new(model);
    let mut upstream = answer.into_body().into_data_stream();
    let events = async_stream::stream! {
        let mut sse = crate::sse::SseData::default();
        while let Some(chunk) = upstream.next().await {
            let Ok(chunk) = chunk else { break };
            for payload in sse.push(&chunk) {
                let events = translator.push(&payload);
                if !events.is_empty() {
                    yield Ok::<Bytes, std::convert::Infallible>(Bytes::from(events));
                }
            }
        }
        let mut tail = String::new();
        translator.finish(&mut tail);
        if !tail.is_empty() {
            yield Ok(Bytes::from(tail));
        }
    };
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

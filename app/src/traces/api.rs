//! Langfuse's write routes: `POST /api/public/ingestion` (207 with per-event results),
//! OTLP/HTTP at `/api/public/otel/v1/traces` and `/v1/traces` (protobuf or JSON, gzip or
//! not), `POST /api/public/scores` (one score or a batch), and the small routes SDKs call
//! (`/api/public/projects`, `/api/public/health`). Every write is on disk before the 2xx.

use std::io::Read;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ingest::{self, Rejected};
use super::{otel_map, otlp};
use crate::config::ProjectConfig;
use crate::state::AppState;
use crate::store::{Ingest, IngestError, TraceEvent};

/// Inflated request bodies larger than this are refused (a gzip bomb stops here).
const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

/// Langfuse's error shape.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    let reason = status.canonical_reason().unwrap_or("error");
    (status, Json(json!({"message": message, "error": reason}))).into_response()
}

pub fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "Invalid credentials: send HTTP Basic auth with a project's public and secret key",
    )
}

/// The caller's project, or the 401 to answer.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<ProjectConfig, Box<Response>> {
    state
        .tracing
        .project(headers)
        .ok_or_else(|| Box::new(unauthorized()))
}

/// Stores events durably; the response to send when that fails.
async fn store(state: &AppState, batch: Vec<Ingest>) -> Result<(), Box<Response>> {
    match state.ledger.writer.ingest(batch).await {
        Ok(()) => Ok(()),
        Err(IngestError::Busy) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                IngestError::Busy.to_string(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(Box::new(response))
        }
        Err(e @ IngestError::Failed(_)) => {
            tracing::error!("trace ingestion failed: {e}");
            Err(Box::new(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the events could not be stored",
            )))
        }
    }
}

pub async fn ingestion(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let project = match authenticate(&state, &headers) {
        Ok(project) => project,
        Err(response) => return *response,
    };
    let envelope: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Invalid request data: not JSON: {e}"),
            );
        }
    };
    let Some(batch) = envelope.get("batch").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid request data: `batch` must be a list of events",
        );
    };
    let mut successes = Vec::new();
    let mut errors = Vec::new();
    let mut ingests = Vec::new();
    let mut stored_ids = Vec::new();
    for (index, item) in batch.iter().enumerate() {
        let Some(id) = item
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
        else {
            errors.push(json!({"id": format!("#{index}"), "status": 400,
                "message": "an event needs an `id`", "error": "Bad Request"}));
            continue;
        };
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        let timestamp = match item.get("timestamp") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_str().and_then(ingest::parse_time) {
                Some(time) => Some(time),
                None => {
                    errors.push(json!({"id": id, "status": 400,
                        "message": "`timestamp` is not an ISO-8601 time", "error": "Bad Request"}));
                    continue;
                }
            },
        };
        match ingest::event(kind, item.get("body").unwrap_or(&Value::Null), timestamp) {
            Ok(Some(event)) => {
                ingests.push(Ingest::new(project.id.clone(), Some(id.to_string()), event));
                stored_ids.push(id.to_string());
            }
            Ok(None) => successes.push(json!({"id": id, "status": 201})),
            Err(Rejected(message)) => errors
                .push(json!({"id": id, "status": 400, "message": message, "error": "Bad Request"})),
        }
    }
    if !ingests.is_empty()
        && let Err(response) = store(&state, ingests).await
    {
        return *response;
    }
    successes.extend(
        stored_ids
            .into_iter()
            .map(|id| json!({"id": id, "status": 201})),
    );
    (
        StatusCode::MULTI_STATUS,
        Json(json!({"successes": successes, "errors": errors})),
    )
        .into_response()
}

/// The body, inflated if it came gzipped.
fn inflated(headers: &HeaderMap, body: Bytes) -> Result<Bytes, Box<Response>> {
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if !gzipped {
        return Ok(body);
    }
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(&body[..]).take(MAX_INFLATED_BYTES + 1);
    if let Err(e) = decoder.read_to_end(&mut out) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("the gzip body could not be read: {e}"),
        )));
    }
    if out.len() as u64 > MAX_INFLATED_BYTES {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the inflated body is over 64 MiB",
        )));
    }
    Ok(Bytes::from(out))
}

pub async fn otel_traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let project = match authenticate(&state, &headers) {
        Ok(project) => project,
        Err(response) => return *response,
    };
    let body = match inflated(&headers, body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let protobuf = content_type.contains("protobuf");
    let spans = if protobuf {
        otlp::decode_protobuf(&body)
    } else if content_type.contains("json") {
        otlp::decode_json(&body)
    } else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send OTLP as application/x-protobuf or application/json",
        );
    };
    let spans = match spans {
        Ok(spans) => spans,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let batch: Vec<Ingest> = spans
        .iter()
        .flat_map(otel_map::span_events)
        .map(|event| Ingest::new(project.id.clone(), None, event))
        .collect();
    if !batch.is_empty()
        && let Err(response) = store(&state, batch).await
    {
        return *response;
    }
    if protobuf {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            otlp::encode_response(0, ""),
        )
            .into_response()
    } else {
        Json(json!({})).into_response()
    }
}

/// One score (answered `{id}`) or a list of them (answered 202, or 207 with the rejects).
pub async fn create_scores(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let project = match authenticate(&state, &headers) {
        Ok(project) => project,
        Err(response) => return *response,
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Invalid request data: not JSON: {e}"),
            );
        }
    };
    let (items, single) = match value {
        Value::Array(items) => (items, false),
        object @ Value::Object(_) => (vec![object], true),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "a score must be an object, or a list of them",
            );
        }
    };
    let mut batch = Vec::new();
    let mut rejected = Vec::new();
    for item in &items {
        match ingest::event("score-create", item, None) {
            Ok(Some(event)) => batch.push(Ingest::new(project.id.clone(), None, event)),
            Ok(None) => {}
            Err(Rejected(message)) => rejected.push(json!({"message": message})),
        }
    }
    if single && !rejected.is_empty() {
        let message = rejected[0]["message"]
            .as_str()
            .unwrap_or("invalid score")
            .to_string();
        return error(StatusCode::BAD_REQUEST, message);
    }
    let ids: Vec<String> = batch
        .iter()
        .filter_map(|i| match &i.event {
            TraceEvent::Score(s) => Some(s.id.clone()),
            _ => None,
        })
        .collect();
    if !batch.is_empty()
        && let Err(response) = store(&state, batch).await
    {
        return *response;
    }
    if single {
        return Json(json!({"id": ids.first()})).into_response();
    }
    if rejected.is_empty() {
        return (StatusCode::ACCEPTED, Json(json!({"message": "Accepted"}))).into_response();
    }
    (
        StatusCode::MULTI_STATUS,
        Json(json!({"accepted": ids.len(), "rejected": rejected.len(), "errors": rejected})),
    )
        .into_response()
}

/// The caller's project (Langfuse SDKs' `auth_check`).
pub async fn projects(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match authenticate(&state, &headers) {
        Ok(project) => Json(json!({"data": [{
            "id": project.id,
            "name": project.name.unwrap_or_else(|| project.id.clone()),
            "metadata": {},
            "organization": {"id": "agentbox", "name": "agentbox"},
        }]}))
        .into_response(),
        Err(response) => *response,
    }
}

pub async fn health() -> Response {
    Json(json!({"status": "OK", "version": env!("CARGO_PKG_VERSION")})).into_response()
}

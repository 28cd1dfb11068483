//! The middleware on every inference route (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/messages`): admits the call on the caller's virtual key, sends
//! gateway models upstream and the rest to the local handlers, and meters the answer as
//! it passes (usage, cost, spend, and the call's automatic trace) without holding streams
//! back.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::auth::Caller;
use super::keys::{KeyPermit, Refusal};
use super::ledger::{Finished, Ledger, Served};
use super::usage::UsageScan;
use crate::error::AppError;
use crate::openai::EngineReport;
use crate::state::AppState;
use crate::traces::auto::{self, CallOutcome, CallTrace};

/// The largest body read to find its `model` (as the server's own limit).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Whole answers are metered up to this size.
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// LiteLLM's `call_type` for each route.
fn call_type(path: &str) -> &'static str {
    match path {
        "/chat/completions" => "acompletion",
        "/completions" => "atext_completion",
        "/embeddings" => "aembedding",
        "/messages" => "anthropic_messages",
        _ => "unknown",
    }
}

/// A refusal in the shape of the API the client called.
fn refuse(
    anthropic: bool,
    status: StatusCode,
    code: &str,
    message: String,
    retry_after: Option<u64>,
) -> Response {
    let body = if anthropic {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else {
            "permission_error"
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else {
            "invalid_request_error"
        };
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn refusal_response(anthropic: bool, refusal: &Refusal) -> Response {
    let message = refusal.to_string();
    match refusal {
        Refusal::ModelNotAllowed { .. } => refuse(
            anthropic,
            StatusCode::UNAUTHORIZED,
            "key_model_access_denied",
            message,
            None,
        ),
        Refusal::BudgetExceeded { retry_after, .. } => refuse(
            anthropic,
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exceeded",
            message,
            *retry_after,
        ),
        Refusal::Rpm { retry_after, .. } | Refusal::Tpm { retry_after, .. } => refuse(
            anthropic,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            message,
            Some(*retry_after),
        ),
        Refusal::Parallel { .. } => refuse(
            anthropic,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            message,
            Some(1),
        ),
    }
}

/// What the meter knows of a call before its answer.
struct Call {
    ledger: Arc<Ledger>,
    gateway: Option<Arc<super::Gateway>>,
    path: &'static str,
    model: String,
    user: String,
    tags: Vec<String>,
    api_key: String,
    permit: Option<KeyPermit>,
    start_ms: i64,
    /// The call's automatic trace, unless tracing is off.
    trace: Option<CallTrace>,
    streamed: bool,
}

impl Call {
    fn finish(
        self,
        scan: &UsageScan,
        status: u16,
        served: Option<&Served>,
        engine: Option<&EngineReport>,
    ) {
        let usage = scan.usage.unwrap_or_default();
        if let (Some(gateway), Some(deployment)) =
            (&self.gateway, served.and_then(|s| s.deployment))
        {
            gateway.record_tokens(deployment, usage.total());
        }
        let request_id = scan
            .response_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let key_alias = self.permit.as_ref().and_then(|p| p.key().alias());
        let end_ms = crate::clock::unix_ms();
        let cost = self.ledger.record(Finished {
            request_id: request_id.clone(),
            call_type: call_type(self.path),
            requested_model: &self.model,
            served,
            usage,
            status,
            start_ms: self.start_ms,
            end_ms,
            user: self.user,
            tags: self.tags,
            api_key: self.api_key,
            permit: self.permit.as_ref(),
        });
        if let Some(trace) = self.trace {
            let events = auto::events(
                trace,
                CallOutcome {
                    model: served.map_or(self.model.as_str(), |s| s.model.as_str()),
                    provider: served.map_or("agentbox", |s| s.provider.as_str()),
                    api_base: served.map_or("", |s| s.api_base.as_str()),
                    start_ms: self.start_ms,
                    end_ms,
                    first_token_ms: scan.first_token_ms,
                    streamed: self.streamed,
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cost,
                    status,
                    output: scan.output.clone(),
                    cache_hit: served.is_some_and(|s| s.cache_hit),
                    key_alias,
                    request_id: &request_id,
                    engine: engine.and_then(EngineReport::get),
                },
            );
            self.ledger.writer.record_traces(events);
        }
    }
}

pub async fn meter(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start_ms = crate::clock::unix_ms();
    let path: &'static str = match request.uri().path().trim_start_matches("/v1") {
        "/chat/completions" => "/chat/completions",
        "/completions" => "/completions",
        "/embeddings" => "/embeddings",
        "/messages" => "/messages",
        _ => return next.run(request).await,
    };
    let anthropic = path == "/messages";
    let caller = request.extensions().get::<Caller>().cloned();
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return AppError::bad_request(
                "body",
                format!("could not read the request body: {error}"),
            )
            .into_response();
        }
    };
    // Bodies that are not JSON objects with a model go to the handlers, which say why.
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&bytes) else {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    let now_secs = start_ms.div_euclid(1000);
    let (permit, api_key) = match &caller {
        Some(Caller::Virtual(key)) => match key.admit(&model, now_secs) {
            Ok(permit) => (Some(permit), key.token.clone()),
            Err(refusal) => return refusal_response(anthropic, &refusal),
        },
        Some(Caller::Master) => (None, state.ledger.master_token.clone().unwrap_or_default()),
        _ => (None, String::new()),
    };
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    // Ask for usage on OpenAI streams for the accounting; the meter takes it out again.
    let mut strip_usage = false;
    if stream && !anthropic && path != "/embeddings" {
        let options = body.entry("stream_options").or_insert_with(|| json!({}));
        if let Value::Object(options) = options
            && options.get("include_usage").and_then(Value::as_bool) != Some(true)
        {
            options.insert("include_usage".into(), Value::Bool(true));
            strip_usage = true;
        }
    }
    let user = body
        .get("user")
        .or_else(|| body.get("metadata").and_then(|m| m.get("user_id")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let tags = body
        .get("metadata")
        .and_then(|m| m.get("tags"))
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // `metadata` is agentbox's (LiteLLM's), not the model's: it does not go on, except
    // on Anthropic's API, where it is Anthropic's own field.
    let rewritten = strip_usage || (!anthropic && body.contains_key("metadata"));
    let redact = matches!(&caller, Some(Caller::Virtual(key)) if key.redacts_bodies());
    let tracing = &state.tracing.config;
    let record_bodies = tracing.record_bodies && !redact;
    let trace = if tracing.enabled {
        Some(CallTrace::from_request(
            path,
            &mut body,
            &parts.headers,
            record_bodies,
            anthropic,
        ))
    } else {
        if !anthropic {
            body.remove("metadata");
        }
        None
    };
    let capture = trace.is_some() && record_bodies;
    let call = Call {
        ledger: state.ledger.clone(),
        gateway: state.gateway.clone(),
        path,
        model: model.clone(),
        user,
        tags,
        api_key,
        permit,
        start_ms,
        trace,
        streamed: stream,
    };
    let body = Value::Object(body);
    let group = state
        .gateway
        .as_ref()
        .filter(|_| !anthropic)
        .and_then(|g| g.group(&model).map(|group| (g.clone(), group)));
    let response = match group {
        Some((gateway, group)) => super::upstream::forward(&gateway, group, path, body).await,
        None => {
            let bytes = if rewritten {
                match serde_json::to_vec(&body) {
                    Ok(rewritten) => Bytes::from(rewritten),
                    Err(_) => bytes,
                }
            } else {
                bytes
            };
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    };
    metered(response, call, strip_usage, capture).await
}

/// The answer, passed on as it comes, with its usage recorded when it ends (or when the
/// client goes away).
async fn metered(response: Response, call: Call, strip_usage: bool, capture: bool) -> Response {
    let status = response.status().as_u16();
    let served = response.extensions().get::<Served>().cloned();
    let engine = response.extensions().get::<EngineReport>().cloned();
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (parts, body) = response.into_parts();
    if !streaming {
        // Whole answers are already in memory: read them at once, keep their length.
        let mut scan = UsageScan::new(false, false);
        if capture {
            scan = scan.capturing();
        }
        let Ok(bytes) = axum::body::to_bytes(body, MAX_ANSWER_BYTES).await else {
            call.finish(
                &scan,
                StatusCode::BAD_GATEWAY.as_u16(),
                served.as_ref(),
                engine.as_ref(),
            );
            return AppError::Internal(anyhow::anyhow!("an answer could not be read"))
                .into_response();
        };
        let bytes = scan.push(bytes);
        scan.finish();
        call.finish(&scan, status, served.as_ref(), engine.as_ref());
        return Response::from_parts(parts, Body::from(bytes));
    }
    let mut scan = UsageScan::new(true, strip_usage);
    if capture {
        scan = scan.capturing();
    }
    let mut meter = StreamMeter {
        scan,
        call: Some(call),
        status,
        served,
        engine,
    };
    let mut upstream = body.into_data_stream();
    let chunks = async_stream::stream! {
        while let Some(chunk) = upstream.next().await {
            match chunk {
                Ok(bytes) => {
                    let out = meter.scan.push(bytes);
                    if !out.is_empty() {
                        yield Ok::<Bytes, axum::Error>(out);
                    }
                }
                Err(error) => {
                    yield Err(error);
                    break;
                }
            }
        }
        let tail = meter.scan.finish();
        if !tail.is_empty() {
            yield Ok(tail);
        }
    };
    Response::from_parts(parts, Body::from_stream(chunks))
}

/// A stream's metering state; records the call when dropped, finished or not.
struct StreamMeter {
    scan: UsageScan,
    call: Option<Call>,
    status: u16,
    served: Option<Served>,
    engine: Option<EngineReport>,
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // A client that stops reading at `[DONE]` drops the stream before its end
            // was seen: what passed is still the answer.
            self.scan.finish();
            call.finish(
                &self.scan,
                self.status,
                self.served.as_ref(),
                self.engine.as_ref(),
            );
        }
    }
}

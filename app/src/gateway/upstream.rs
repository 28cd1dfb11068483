//! Forwarding one OpenAI-format call upstream: pick a deployment (`routing`), then either
//! swap in its model name and key and relay the answer byte for byte (OpenAI-compatible
//! upstreams), or translate to and from Anthropic's Messages API.
//! Connection failures, timeouts, 429 and 5xx are retried on another pick, up to
//! `num_retries` times, but only before the client has received anything. Upstream errors
//! reach the client in OpenAI's shape without the upstream's raw body or any key.
//! A stream that goes quiet for longer than `stream_timeout` is ended with an error event;
//! a stream that has started is never retried elsewhere.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ledger::Served;
use super::metrics::DeploymentState;
use super::routing::{self, Candidate, InFlight};
use super::{Deployment, Gateway, anthropic_wire, bedrock, cache};

fn served_by(deployment: &Deployment) -> Served {
    Served {
        deployment: Some(deployment.id),
        provider: deployment.provider.clone(),
        model: deployment.upstream_model.clone(),
        api_base: deployment.api_base.clone().unwrap_or_default(),
        price: deployment.price,
        cache_hit: false,
    }
}

/// One piece of a guarded upstream stream.
enum Piece {
    Bytes(axum::body::Bytes),
    /// The upstream went quiet: the OpenAI-shaped error event and `[DONE]` that end the
    /// client's stream, in whatever format the upstream spoke.
    Stalled(axum::body::Bytes),
    Failed(reqwest::Error),
}

/// An upstream stream passed on piece by piece, ended with `Piece::Stalled` if the
/// upstream sends nothing for `idle`; keeps the deployment's in-flight count until it ends.
fn guarded<S>(
    upstream: S,
    idle: Option<Duration>,
    model: String,
    in_flight: Option<InFlight>,
) -> impl futures::Stream<Item = Piece>
where
    S: futures::Stream<Item = Result<axum::body::Bytes, reqwest::Error>> + Send + 'static,
{
    async_stream::stream! {
        let _in_flight = in_flight;
        let mut upstream = std::pin::pin!(upstream);
        loop {
            let next = futures::StreamExt::next(&mut upstream);
            let piece = match idle {
                Some(idle) => match tokio::time::timeout(idle, next).await {
                    Ok(piece) => piece,
                    Err(_) => {
                        tracing::warn!(model, "upstream stream idle for {idle:?}; ending it");
                        let event = json!({"error": {
                            "message": format!("the upstream for model {model:?} sent nothing for {:.1} s; the stream was ended", idle.as_secs_f64()),
                            "type": "upstream_error", "param": null, "code": "stream_timeout"}});
                        yield Piece::Stalled(format!("data: {event}\n\ndata: [DONE]\n\n").into());
                        break;
                    }
                },
                None => next.await,
            };
            match piece {
                Some(Ok(bytes)) => yield Piece::Bytes(bytes),
                Some(Err(error)) => {
                    yield Piece::Failed(error);
                    break;
                }
                None => break,
            }
        }
    }
}

/// How an attempt on a group ended, for the fallbacks.
#[derive(PartialEq)]
enum Outcome {
    Answered,
    /// The prompt does not fit the upstream's context window.
    ContextWindow,
    Failed,
}

/// Whether an upstream error body says the prompt is too long (OpenAI's code, or the
/// wording of Anthropic's and vLLM's messages).
fn context_window_error(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let error = &value["error"];
    let message = error["message"].as_str().unwrap_or("").to_ascii_lowercase();
    // Bedrock's errors are `{"message": ...}` at the top.
    let message = if message.is_empty() {
        value["message"].as_str().unwrap_or("").to_ascii_lowercase()
    } else {
        message
    };
    error["code"] == "context_length_exceeded"
        || message.contains("input is too long")
        || message.contains("context length")
        || message.contains("context window")
        || message.contains("prompt is too long")
}

/// The wait before retry `attempt` (1, 2, ...): 50 ms doubling, at most 1 s, with jitter
/// so that clients retrying together spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 50u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(1000);
    let jitter = rand::random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// An OpenAI-shaped error response.
fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (status, axum::Json(body)).into_response()
}

/// The `error.message` of an OpenAI-shaped error body, if it is one.
fn upstream_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value.get("error")?.get("message")?.as_str()?;
    Some(message.chars().take(500).collect())
}

/// The upstream HTTP request for one attempt, in the deployment's wire format; or why the
/// request cannot go to this deployment (a 400 for the client).
fn build_request(
    gateway: &Gateway,
    deployment: &Deployment,
    path: &str,
    body: &mut Value,
) -> Result<reqwest::RequestBuilder, String> {
    let timeout = deployment.timeout.unwrap_or(gateway.default_timeout);
    if deployment.provider == "bedrock" {
        return bedrock_request(gateway, deployment, path, body, timeout);
    }
    if deployment.provider == "anthropic" {
        if path != "/chat/completions" {
            return Err(format!(
                "model {:?} (Anthropic) serves chat completions only",
                deployment.model_name
            ));
        }
        let translated = anthropic_wire::to_anthropic_request(body, &deployment.upstream_model)?;
        let base = deployment
            .api_base
            .as_deref()
            .unwrap_or("https://api.anthropic.com")
            .trim_end_matches("/v1");
        let mut request = gateway
            .client
            .post(format!("{base}/v1/messages"))
            .timeout(timeout)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&translated);
        if let Some(key) = &deployment.api_key {
            request = request.header("x-api-key", key);
        }
        return Ok(request);
    }
    if let Some(model) = body.get_mut("model") {
        *model = Value::String(deployment.upstream_model.clone());
    }
    let url = match gateway.endpoint(deployment, path) {
        Some(url) => url.clone(),
        None => endpoint(deployment, path)?,
    };
    let mut request = gateway.client.post(url).timeout(timeout).json(body);
    if let Some(key) = &deployment.api_key {
        request = request.bearer_auth(key);
    }
    Ok(request)
}

/// An OpenAI-compatible deployment's URL for `path` (`/chat/completions`, ...).
pub(super) fn endpoint(deployment: &Deployment, path: &str) -> Result<reqwest::Url, String> {
    let base = deployment
        .api_base
        .as_deref()
        .unwrap_or("https://api.openai.com/v1");
    reqwest::Url::parse(&format!("{base}{path}"))
        .map_err(|e| format!("model {:?}: bad api_base: {e}", deployment.model_name))
}

/// A Converse call, signed with SigV4 over the exact bytes sent.
fn bedrock_request(
    gateway: &Gateway,
    deployment: &Deployment,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<reqwest::RequestBuilder, String> {
    if path != "/chat/completions" {
        return Err(format!(
            "model {:?} (Bedrock) serves chat completions only",
            deployment.model_name
        ));
    }
    let Some(credentials) = &deployment.aws else {
        return Err(format!(
            "model {:?} (Bedrock) has no AWS credentials",
            deployment.model_name
        ));
    };
    let translated = bedrock::to_converse_request(body)?;
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let base = deployment
        .api_base
        .clone()
        .unwrap_or_else(|| bedrock::default_endpoint(&credentials.region));
    let url = reqwest::Url::parse(&format!(
        "{}{}",
        base.trim_end_matches('/'),
        bedrock::converse_path(&deployment.upstream_model, streaming)
    ))
    .map_err(|e| format!("model {:?}: bad api_base: {e}", deployment.model_name))?;
    let bytes = serde_json::to_vec(&translated).map_err(|e| e.to_string())?;
    let signed = bedrock::sign(
        "POST",
        &url,
        &[("content-type", "application/json")],
        &bytes,
        credentials,
        bedrock::SIGNING_SERVICE,
        std::time::SystemTime::now(),
    );
    let mut request = gateway
        .client
        .post(url)
        .timeout(timeout)
        .header(header::CONTENT_TYPE, "application/json")
        .body(bytes);
    for (name, value) in signed {
        request = request.header(name, value);
    }
    Ok(request)
}

/// A Converse answer in OpenAI's shape: whole, or its binary event stream as chunks.
async fn relay_bedrock(
    response: reqwest::Response,
    deployment: &Deployment,
    request: &Value,
    idle: Option<Duration>,
    in_flight: Option<InFlight>,
) -> Response {
    let model = deployment.model_name.clone();
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return whole_answer(response, &model, bedrock::to_openai_completion).await;
    }
    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut translator = bedrock::StreamTranslator::new(&model, include_usage);
    let mut pieces = Box::pin(guarded(
        response.bytes_stream(),
        idle,
        model.clone(),
        in_flight,
    ));
    event_stream(async_stream::stream! {
        let mut decoder = bedrock::EventStreamDecoder::default();
        while let Some(piece) = futures::StreamExt::next(&mut pieces).await {
            let bytes = match piece {
                Piece::Bytes(bytes) => bytes,
                Piece::Stalled(end) => {
                    yield end;
                    translator.done = true;
                    break;
                }
                Piece::Failed(_) => break,
            };
            let events = match decoder.push(&bytes) {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(model, "unreadable Bedrock event stream: {e}");
                    break;
                }
            };
            for event in events {
                let out = translator.push(&event);
                if !out.is_empty() {
                    yield out.into();
                }
            }
        }
        if !translator.done {
            // Cut short: end the stream so clients do not wait forever.
            yield "data: [DONE]\n\n".into();
        }
    })
}

/// A translated whole answer, or a 502 if the upstream's is not JSON.
async fn whole_answer(
    response: reqwest::Response,
    model: &str,
    translate: fn(&Value, &str) -> Value,
) -> Response {
    match response.json::<Value>().await {
        Ok(answer) => axum::Json(translate(&answer, model)).into_response(),
        Err(_) => error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("the upstream for model {model:?} sent an unreadable answer"),
        ),
    }
}

/// An SSE response of translated chunks.
fn event_stream(
    chunks: impl futures::Stream<Item = axum::body::Bytes> + Send + 'static,
) -> Response {
    let body = Body::from_stream(futures::StreamExt::map(
        chunks,
        Ok::<_, std::convert::Infallible>,
    ));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// An OpenAI-compatible answer, passed through byte for byte: streams as they come, whole
/// answers in one piece (with a length, so the client needs no chunked framing).
async fn relay(
    response: reqwest::Response,
    idle: Option<Duration>,
    model: &str,
    in_flight: Option<InFlight>,
) -> Response {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    let streaming = content_type.as_bytes().starts_with(b"text/event-stream");
    let body = if streaming {
        let pieces = guarded(response.bytes_stream(), idle, model.to_string(), in_flight);
        Body::from_stream(futures::StreamExt::map(pieces, |piece| match piece {
            Piece::Bytes(bytes) | Piece::Stalled(bytes) => Ok(bytes),
            Piece::Failed(error) => Err(error),
        }))
    } else {
        match response.bytes().await {
            Ok(bytes) => Body::from(bytes),
            Err(_) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the upstream's answer was cut off".into(),
                );
            }
        }
    };
    let mut relayed = Response::new(body);
    relayed
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    relayed
}

/// An Anthropic answer in OpenAI's shape: whole, or its events as chunks.
async fn relay_anthropic(
    response: reqwest::Response,
    deployment: &Deployment,
    request: &Value,
    idle: Option<Duration>,
    in_flight: Option<InFlight>,
) -> Response {
    let model = deployment.model_name.clone();
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return whole_answer(response, &model, anthropic_wire::to_openai_completion).await;
    }
    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut translator = anthropic_wire::StreamTranslator::new(&model, include_usage);
    let mut pieces = Box::pin(guarded(
        response.bytes_stream(),
        idle,
        model.clone(),
        in_flight,
    ));
    event_stream(async_stream::stream! {
        let mut sse = crate::sse::SseData::default();
        while let Some(piece) = futures::StreamExt::next(&mut pieces).await {
            let bytes = match piece {
                Piece::Bytes(bytes) => bytes,
                Piece::Stalled(end) => {
                    yield end;
                    translator.done = true;
                    break;
                }
                Piece::Failed(_) => break,
            };
            for payload in sse.push(&bytes) {
                let out = translator.push(&payload);
                if !out.is_empty() {
                    yield out.into();
                }
            }
        }
        if !translator.done {
            // Cut short: end the stream so clients do not wait forever.
            yield "data: [DONE]\n\n".into();
        }
    })
}

/// The Messages API version agentbox speaks.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Forwards to the group (or answers from the cache), records the metrics and adds
/// LiteLLM's overhead header: the time spent here, the upstream's excluded.
pub async fn forward(
    gateway: &Gateway,
    group: &[Deployment],
    path: &str,
    mut body: Value,
) -> Response {
    let started = Instant::now();
    let mut upstream_time = Duration::ZERO;
    let model = group.first().map_or("", |d| d.model_name.as_str());
    let controls = cache::Controls::take(&mut body);
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let cache = gateway.cache.as_ref().filter(|_| !streaming);
    // Hashing the body costs a serialisation: only when a cache is on.
    let key = cache.map_or(0, |_| cache::key(path, &body));
    let cached = cache
        .filter(|_| !controls.no_cache)
        .and_then(|c| c.get(key, controls.max_age));
    let mut response = match cached {
        Some(entry) => {
            let mut hit = Response::new(Body::from(entry.body));
            if let Ok(value) = HeaderValue::from_str(&entry.content_type) {
                hit.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            if let Some(first) = group.first() {
                hit.extensions_mut().insert(Served {
                    deployment: None,
                    cache_hit: true,
                    ..served_by(first)
                });
            }
            hit
        }
        None => {
            let mut answer = answer(gateway, group, path, body, &mut upstream_time).await;
            if answer.extensions().get::<Served>().is_none()
                && let Some(first) = group.first()
            {
                // Failed everywhere: the group's first deployment stands for it.
                answer.extensions_mut().insert(Served {
                    deployment: None,
                    ..served_by(first)
                });
            }
            match cache.filter(|_| !controls.no_store && answer.status().is_success()) {
                Some(cache) => store(cache, key, answer, controls.ttl).await,
                None => answer,
            }
        }
    };
    if cache.is_some()
        && let Ok(value) = HeaderValue::from_str(&format!("{key:016x}"))
    {
        response.headers_mut().insert("x-litellm-cache-key", value);
    }
    let overhead = started.elapsed().saturating_sub(upstream_time);
    gateway
        .metrics
        .record(model, response.status().as_u16(), overhead);
    if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0)) {
        response
            .headers_mut()
            .insert("x-litellm-overhead-duration-ms", value);
    }
    response
}

/// Keeps a whole answer in the cache and hands it on.
async fn store(
    cache: &cache::ResponseCache,
    key: u64,
    answer: Response,
    ttl: Option<Duration>,
) -> Response {
    let (parts, body) = answer.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream's answer was cut off".into(),
        );
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    cache.put(key, bytes.clone(), content_type, ttl);
    Response::from_parts(parts, Body::from(bytes))
}

/// The group's answer, trying the configured fallback groups when it fails.
async fn answer(
    gateway: &Gateway,
    group: &[Deployment],
    path: &str,
    body: Value,
    upstream_time: &mut Duration,
) -> Response {
    let model = group.first().map_or("", |d| d.model_name.as_str());
    let may_fall_back = gateway.fallbacks.contains_key(model)
        || gateway.context_window_fallbacks.contains_key(model);
    // Most groups have no fallbacks: then the body is not copied.
    let (first_body, body) = if may_fall_back {
        (body.clone(), body)
    } else {
        (body, Value::Null)
    };
    let (mut response, outcome) = attempt(gateway, group, path, first_body, upstream_time).await;
    let fallbacks = match outcome {
        Outcome::Answered => None,
        Outcome::ContextWindow => gateway.context_window_fallbacks.get(model),
        Outcome::Failed => gateway.fallbacks.get(model),
    };
    for name in fallbacks.into_iter().flatten() {
        let Some(fallback) = gateway.group(name) else {
            continue;
        };
        tracing::info!(model, fallback = %name, "falling back");
        let (answer, outcome) = attempt(gateway, fallback, path, body.clone(), upstream_time).await;
        response = answer;
        if outcome == Outcome::Answered {
            break;
        }
    }
    response
}

/// Tries deployments of the group until one answers or the retries run out, adding the
/// time spent waiting on upstreams to `upstream_time`.
async fn attempt(
    gateway: &Gateway,
    group: &[Deployment],
    path: &str,
    mut body: Value,
    upstream_time: &mut Duration,
) -> (Response, Outcome) {
    let started = Instant::now();
    let mut last_failure: Option<Response> = None;
    for attempt in 0..=gateway.num_retries {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let now = super::unix_now();
        let ready: Vec<Candidate<'_>> = group
            .iter()
            .filter(|d| gateway.cooling(d).is_none())
            .filter_map(|deployment| {
                Some(Candidate {
                    deployment,
                    stats: gateway.stats(deployment)?,
                    price_per_token: gateway
                        .price_per_token
                        .get(deployment.id)
                        .copied()
                        .unwrap_or(0.0),
                })
            })
            .collect();
        let Some(deployment) = routing::choose(gateway.strategy, &ready, now) else {
            let name = group.first().map_or("", |d| d.model_name.as_str());
            let (message, wait) = if ready.is_empty() {
                (
                    format!(
                        "every deployment of model {name:?} is cooling down after repeated failures"
                    ),
                    group.iter().filter_map(|d| gateway.cooling(d)).min(),
                )
            } else {
                (
                    format!("every deployment of model {name:?} is at its rpm or tpm limit"),
                    Some(Duration::from_secs((60 - now.rem_euclid(60)) as u64)),
                )
            };
            let mut refusal = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
            let secs = wait.map_or(1, |w| w.as_secs().max(1));
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                refusal.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return (last_failure.unwrap_or(refusal), Outcome::Failed);
        };
        let request = match build_request(gateway, deployment, path, &mut body) {
            Ok(request) => request,
            Err(message) => {
                let refusal = error(StatusCode::BAD_REQUEST, "invalid_request_error", message);
                return (refusal, Outcome::Failed);
            }
        };
        let in_flight = gateway.stats(deployment).map(|s| s.start(now));
        let sent = Instant::now();
        let result = request.send().await;
        *upstream_time += sent.elapsed();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                gateway.record_failure(deployment);
                gateway
                    .metrics
                    .set_state(deployment, DeploymentState::Outage);
                let (status, what) = if e.is_timeout() {
                    (StatusCode::GATEWAY_TIMEOUT, "timed out")
                } else {
                    (StatusCode::BAD_GATEWAY, "could not be reached")
                };
                tracing::warn!(model = %deployment.model_name, attempt, "upstream {what}: {e}");
                last_failure = Some(error(
                    status,
                    "upstream_error",
                    format!("the upstream for model {:?} {what}", deployment.model_name),
                ));
                continue;
            }
        };
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            let detail = upstream_message(&bytes).map_or(String::new(), |m| format!(": {m}"));
            tracing::warn!(model = %deployment.model_name, attempt, %status, "upstream error");
            let failure = error(
                status,
                if status.is_client_error() {
                    "invalid_request_error"
                } else {
                    "upstream_error"
                },
                format!(
                    "the upstream for model {:?} answered {status}{detail}",
                    deployment.model_name
                ),
            );
            if retryable(status) {
                gateway.record_failure(deployment);
                gateway
                    .metrics
                    .set_state(deployment, DeploymentState::Outage);
                last_failure = Some(failure);
                continue;
            }
            let outcome = if context_window_error(&bytes) {
                Outcome::ContextWindow
            } else {
                Outcome::Failed
            };
            return (failure, outcome);
        }
        tracing::debug!(
            model = %deployment.model_name,
            attempt,
            "upstream answered in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        gateway
            .metrics
            .set_state(deployment, DeploymentState::Healthy);
        let reading = Instant::now();
        let idle = deployment.stream_timeout.or(gateway.stream_timeout);
        let mut relayed = if deployment.provider == "bedrock" {
            relay_bedrock(response, deployment, &body, idle, in_flight).await
        } else if deployment.provider == "anthropic" {
            relay_anthropic(response, deployment, &body, idle, in_flight).await
        } else {
            relay(response, idle, &deployment.model_name, in_flight).await
        };
        // Whole answers are read here: waiting on their bytes is upstream time too.
        *upstream_time += reading.elapsed();
        if let Some(stats) = gateway.stats(deployment) {
            stats.record_latency(sent.elapsed());
        }
        relayed.extensions_mut().insert(served_by(deployment));
        return (relayed, Outcome::Answered);
    }
    let failure = last_failure.unwrap_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            "no deployment is available for this model".into(),
        )
    });
    (failure, Outcome::Failed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn context_window_errors_are_recognised() {
        assert!(context_window_error(
            br#"{"error":{"message":"x","code":"context_length_exceeded"}}"#
        ));
        assert!(context_window_error(
            br#"{"type":"error","error":{"message":"prompt is too long: 300000 tokens"}}"#
        ));
        assert!(!context_window_error(br#"{"error":{"message":"bad key"}}"#));
    }

    #[test]
    fn only_openai_shaped_messages_are_passed_on() {
        assert_eq!(
            upstream_message(br#"{"error":{"message":"too long","type":"x"}}"#).as_deref(),
            Some("too long")
        );
        assert_eq!(upstream_message(b"<html>secret stack trace</html>"), None);
    }
}

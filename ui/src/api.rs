//! HTTP calls from the browser to the agentbox server, and the JSON shapes they carry.
//!
//! Everything goes through `window.fetch`, with the stored API key (`auth`) as
//! `Authorization: Bearer KEY`; the chat completion is read as an OpenAI-style SSE stream
//! from the response body so tokens render as they arrive. A refused key is reported to
//! `auth`, which asks the user for one.
//!
//! The Langfuse-style tracing API (`/api/public/*`, see `traces_api`) wants HTTP Basic
//! `public:secret` instead: [`public_request_json`] sends `pk-lf-ui:KEY` (the master key is
//! the secret there), or nothing when no key is stored.

use std::fmt;

use js_sys::{Reflect, Uint8Array};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, ReadableStreamDefaultReader, Request, RequestInit, Response};

use crate::auth;

/// The server's error code for a missing or wrong API key (with HTTP 401).
const INVALID_API_KEY: &str = "invalid_api_key";

/// A failed call, already reduced to a message fit for the error banner.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub message: String,
    pub kind: ApiErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// The server wants a (different) API key: the key panel speaks for this one.
    InvalidApiKey,
    /// A 401 of another shape (the tracing API's): the caller decides who tells the user.
    Unauthorized,
    Other,
}

impl ApiError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: ApiErrorKind::Other,
        }
    }

    /// Whether the key panel, rather than an error banner, should tell the user.
    pub fn is_invalid_api_key(&self) -> bool {
        self.kind == ApiErrorKind::InvalidApiKey
    }

    fn from_js(context: &str, value: &JsValue) -> Self {
        let detail = value
            .dyn_ref::<js_sys::Error>()
            .map(|error| String::from(error.message()))
            .or_else(|| value.as_string())
            .unwrap_or_else(|| format!("{value:?}"));
        Self::new(format!("{context}: {detail}"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ModelCard {
    pub id: String,
    #[serde(default)]
    pub task: Option<String>,
}

impl ModelCard {
    pub fn can_chat(&self) -> bool {
        self.task.as_deref() == Some("generate")
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelCard>,
}

/// A stored conversation as listed in the sidebar.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    pub model: String,
}

/// A stored conversation with its messages, in order.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ConversationWithMessages {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub messages: Vec<StoredMessage>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
}

/// A message as sent to the server, both for storage and as chat context.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutgoingMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

#[derive(Serialize)]
struct NewConversation<'a> {
    title: &'a str,
    model: &'a str,
}

#[derive(Serialize)]
struct ChatCompletionRequest<'a> {
    model: &'a str,
    messages: &'a [OutgoingMessage<'a>],
    stream: bool,
    max_tokens: u32,
    metadata: &'a TraceContext,
}

/// Where the server files a chat call's automatic trace: under the id the UI chose (so
/// feedback can be scored on it), in the conversation's session. The server takes
/// `metadata` out of the request before the model sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceContext {
    pub trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// Upper bound on a reply's length, in tokens.
const MAX_REPLY_TOKENS: u32 = 512;

/// How a streamed completion ended.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEnd {
    /// The server finished (`finish_reason`, when it sent one).
    Finished(Option<String>),
    /// The user pressed Stop.
    Aborted,
}

/// Whether the server takes `key`: `GET /v1/models` with it. A refusal is returned, not
/// reported to `auth` (the key panel asking shows it itself).
pub async fn check_key(key: &str) -> Result<(), ApiError> {
    let request = build_request("GET", "/v1/models", None, None)?;
    request
        .headers()
        .set("Authorization", &format!("Bearer {key}"))
        .map_err(|error| ApiError::from_js("building request", &error))?;
    fetch(&request).await?;
    Ok(())
}

pub async fn list_models() -> Result<Vec<ModelCard>, ApiError> {
    let list: ModelList = request_json("GET", "/v1/models", None).await?;
    Ok(list.data)
}

pub async fn list_conversations() -> Result<Vec<Conversation>, ApiError> {
    request_json("GET", "/api/conversations", None).await
}

pub async fn create_conversation(title: &str, model: &str) -> Result<Conversation, ApiError> {
    let body = to_json(&NewConversation { title, model })?;
    request_json("POST", "/api/conversations", Some(&body)).await
}

pub async fn get_conversation(id: &str) -> Result<ConversationWithMessages, ApiError> {
    request_json("GET", &format!("/api/conversations/{id}"), None).await
}

pub async fn add_message(conversation_id: &str, role: &str, content: &str) -> Result<(), ApiError> {
    let body = to_json(&OutgoingMessage { role, content })?;
    let url = format!("/api/conversations/{conversation_id}/messages");
    send(&build_request("POST", &url, Some(&body), None)?).await?;
    Ok(())
}

pub async fn delete_conversation(id: &str) -> Result<(), ApiError> {
    let url = format!("/api/conversations/{id}");
    send(&build_request("DELETE", &url, None, None)?).await?;
    Ok(())
}

/// Streams `POST /v1/chat/completions`, calling `on_delta` with each piece of content.
///
/// Aborting `abort_signal` ends the stream with [`StreamEnd::Aborted`]; what was
/// already delivered through `on_delta` stays with the caller.
pub async fn stream_chat(
    model: &str,
    messages: &[OutgoingMessage<'_>],
    trace: &TraceContext,
    abort_signal: &AbortSignal,
    mut on_delta: impl FnMut(&str),
) -> Result<StreamEnd, ApiError> {
    let body = to_json(&ChatCompletionRequest {
        model,
        messages,
        stream: true,
        max_tokens: MAX_REPLY_TOKENS,
        metadata: trace,
    })?;
    let request = build_request(
        "POST",
        "/v1/chat/completions",
        Some(&body),
        Some(abort_signal),
    )?;
    let response = match send(&request).await {
        Ok(response) => response,
        Err(_) if abort_signal.aborted() => return Ok(StreamEnd::Aborted),
        Err(error) => return Err(error),
    };
    let reader: ReadableStreamDefaultReader = response
        .body()
        .ok_or_else(|| ApiError::new("the reply has no body"))?
        .get_reader()
        .unchecked_into();

    let mut pending = Vec::new();
    let mut finish_reason = None;
    loop {
        let chunk = match JsFuture::from(reader.read()).await {
            Ok(chunk) => chunk,
            Err(_) if abort_signal.aborted() => return Ok(StreamEnd::Aborted),
            Err(error) => return Err(ApiError::from_js("reading the reply", &error)),
        };
        if js_field(&chunk, "done").as_bool().unwrap_or(true) {
            break;
        }
        if let Ok(bytes) = js_field(&chunk, "value").dyn_into::<Uint8Array>() {
            pending.extend(bytes.to_vec());
        }
        // SSE lines end in '\n', an ASCII byte, so each complete line is whole UTF-8.
        while let Some(newline) = pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            let line = String::from_utf8_lossy(&line);
            match parse_sse_line(line.trim_end())? {
                SseLine::Chunk { content, finish } => {
                    if let Some(content) = content {
                        on_delta(&content);
                    }
                    finish_reason = finish.or(finish_reason);
                }
                SseLine::Done => return Ok(StreamEnd::Finished(finish_reason)),
                SseLine::Ignored => {}
            }
        }
    }
    Ok(StreamEnd::Finished(finish_reason))
}

enum SseLine {
    Chunk {
        content: Option<String>,
        finish: Option<String>,
    },
    Done,
    Ignored,
}

#[derive(Deserialize)]
struct ChunkPayload {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

fn parse_sse_line(line: &str) -> Result<SseLine, ApiError> {
    let Some(payload) = line.strip_prefix("data:") else {
        return Ok(SseLine::Ignored);
    };
    let payload = payload.trim_start();
    if payload == "[DONE]" {
        return Ok(SseLine::Done);
    }
    let chunk: ChunkPayload = serde_json::from_str(payload)
        .map_err(|error| ApiError::new(format!("unreadable stream chunk: {error}")))?;
    if let Some(error) = chunk.error {
        return Err(ApiError::new(error.message));
    }
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Ok(SseLine::Ignored);
    };
    Ok(SseLine::Chunk {
        content: choice.delta.content.filter(|content| !content.is_empty()),
        finish: choice.finish_reason,
    })
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// The tracing API's error shape (Langfuse's): `{"message", "error"}`.
#[derive(Deserialize)]
struct MessageEnvelope {
    message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
    #[serde(default)]
    code: Option<String>,
}

fn to_json(value: &impl Serialize) -> Result<String, ApiError> {
    serde_json::to_string(value)
        .map_err(|error| ApiError::new(format!("encoding request: {error}")))
}

fn js_field(object: &JsValue, name: &str) -> JsValue {
    Reflect::get(object, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

fn build_request(
    method: &str,
    url: &str,
    json_body: Option<&str>,
    abort_signal: Option<&AbortSignal>,
) -> Result<Request, ApiError> {
    let init = RequestInit::new();
    init.set_method(method);
    if let Some(body) = json_body {
        init.set_body(&JsValue::from_str(body));
    }
    if let Some(signal) = abort_signal {
        init.set_signal(Some(signal));
    }
    let request = Request::new_with_str_and_init(url, &init)
        .map_err(|error| ApiError::from_js("building request", &error))?;
    let headers = request.headers();
    if json_body.is_some() {
        headers
            .set("Content-Type", "application/json")
            .map_err(|error| ApiError::from_js("building request", &error))?;
    }
    if let Some(key) = auth::current_key() {
        headers
            .set("Authorization", &format!("Bearer {key}"))
            .map_err(|error| ApiError::from_js("building request", &error))?;
    }
    Ok(request)
}

/// Sends `request` as [`fetch`] does, and reports a refused API key to `auth`.
async fn send(request: &Request) -> Result<Response, ApiError> {
    let outcome = fetch(request).await;
    if let Err(error) = &outcome
        && error.is_invalid_api_key()
    {
        let sent_key = request
            .headers()
            .get("Authorization")
            .ok()
            .flatten()
            .and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned));
        auth::key_rejected(sent_key.as_deref(), &error.message);
    }
    outcome
}

/// Sends `request`; any non-2xx status becomes an [`ApiError`] carrying the server's message.
async fn fetch(request: &Request) -> Result<Response, ApiError> {
    let window = web_sys::window().ok_or_else(|| ApiError::new("no window"))?;
    let response: Response = JsFuture::from(window.fetch_with_request(request))
        .await
        .map_err(|error| ApiError::from_js("network error", &error))?
        .unchecked_into();
    if response.ok() {
        return Ok(response);
    }
    let status = response.status();
    let body = response_text(&response).await.unwrap_or_default();
    let unauthorized = if status == 401 {
        ApiErrorKind::Unauthorized
    } else {
        ApiErrorKind::Other
    };
    let Ok(ErrorEnvelope { error }) = serde_json::from_str::<ErrorEnvelope>(&body) else {
        let message = match serde_json::from_str::<MessageEnvelope>(&body) {
            Ok(MessageEnvelope { message }) => message,
            Err(_) => format!("HTTP {status} {}", response.status_text()),
        };
        return Err(ApiError {
            message,
            kind: unauthorized,
        });
    };
    let kind = if status == 401 && error.code.as_deref() == Some(INVALID_API_KEY) {
        ApiErrorKind::InvalidApiKey
    } else {
        unauthorized
    };
    Err(ApiError {
        message: error.message,
        kind,
    })
}

async fn response_text(response: &Response) -> Result<String, ApiError> {
    let promise = response
        .text()
        .map_err(|error| ApiError::from_js("reading response", &error))?;
    let text = JsFuture::from(promise)
        .await
        .map_err(|error| ApiError::from_js("reading response", &error))?;
    Ok(text.as_string().unwrap_or_default())
}

pub async fn request_json<T: DeserializeOwned>(
    method: &str,
    url: &str,
    json_body: Option<&str>,
) -> Result<T, ApiError> {
    let response = send(&build_request(method, url, json_body, None)?).await?;
    let text = response_text(&response).await?;
    serde_json::from_str(&text)
        .map_err(|error| ApiError::new(format!("unexpected reply from {url}: {error}")))
}

/// The public key sent to the tracing API: without configured projects any public key
/// goes, and the secret is the server's master key.
const TRACING_PUBLIC_KEY: &str = "pk-lf-ui";

/// A call to the tracing API (`/api/public/*`) with HTTP Basic `pk-lf-ui:KEY`, or no
/// credentials when no key is stored. A 401 without a key opens the key panel (and comes
/// back as [`ApiErrorKind::InvalidApiKey`], which pages leave to the panel); a 401 with one
/// means the server keeps its own tracing projects, whose keys the UI does not hold.
pub async fn public_request_json<T: DeserializeOwned>(
    method: &str,
    url: &str,
    json_body: Option<&str>,
) -> Result<T, ApiError> {
    let request = build_request(method, url, json_body, None)?;
    let headers = request.headers();
    let key = auth::current_key();
    let outcome = match &key {
        Some(key) => headers.set(
            "Authorization",
            &format!(
                "Basic {}",
                base64_encode(format!("{TRACING_PUBLIC_KEY}:{key}").as_bytes())
            ),
        ),
        None => headers.delete("Authorization"),
    };
    outcome.map_err(|error| ApiError::from_js("building request", &error))?;
    let response = match fetch(&request).await {
        Ok(response) => response,
        Err(error) if error.kind == ApiErrorKind::Unauthorized => {
            return Err(match key {
                None => {
                    auth::key_rejected(None, &error.message);
                    ApiError {
                        message: error.message,
                        kind: ApiErrorKind::InvalidApiKey,
                    }
                }
                Some(_) => ApiError::new(format!(
                    "the tracing API refused the stored API key ({}): a server with \
                     tracing projects wants a project's keys, which this UI does not send",
                    error.message
                )),
            });
        }
        Err(error) => return Err(error),
    };
    let text = response_text(&response).await?;
    serde_json::from_str(&text)
        .map_err(|error| ApiError::new(format!("unexpected reply from {url}: {error}")))
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64_encode;

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("pk-lf-ui:sk-ui-test", "cGstbGYtdWk6c2stdWktdGVzdA=="),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }
}

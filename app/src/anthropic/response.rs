//! OpenAI chat answers back to Anthropic's shapes: a whole message (text and `tool_use`
//! blocks, stop reason, usage), stop reasons, and errors.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// OpenAI's `finish_reason` as Anthropic's `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        _ => "end_turn",
    }
}

/// A tool call's arguments string as the `input` object (`{}` when empty or not JSON).
pub fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

pub fn message_id(openai_id: Option<&str>) -> String {
    match openai_id {
        Some(id) => format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        None => format!("msg_{}", uuid::Uuid::new_v4().simple()),
    }
}

/// The Anthropic message for a whole OpenAI chat completion.
pub fn to_anthropic(completion: &Value, model: &str) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": call["function"]["name"],
            "input": tool_input(call["function"]["arguments"].as_str().unwrap_or("")),
        }));
    }
    json!({
        "id": message_id(completion["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": {
            "input_tokens": completion["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            "output_tokens": completion["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        },
    })
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic's error body for an OpenAI error body (or any body) with this status.
pub fn error_body(status: StatusCode, openai_body: &[u8]) -> Value {
    let message = serde_json::from_slice::<Value>(openai_body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_completion_with_text_and_a_tool_call_becomes_blocks() {
        let completion = json!({"id": "chatcmpl-abc", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7}});
        let message = to_anthropic(&completion, "claude-x");
        assert_eq!(message["id"], "msg_abc");
        assert_eq!(message["model"], "claude-x");
        assert_eq!(
            message["content"][0],
            json!({"type": "text", "text": "Let me look."})
        );
        assert_eq!(message["content"][1]["input"], json!({"city": "Paris"}));
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 12, "output_tokens": 7})
        );
    }

    #[test]
    fn stop_reasons_and_errors_map() {
        assert_eq!(stop_reason(Some("length")), "max_tokens");
        assert_eq!(stop_reason(Some("stop")), "end_turn");
        let body = error_body(
            StatusCode::NOT_FOUND,
            br#"{"error":{"message":"no such model"}}"#,
        );
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no such model"}})
        );
        assert_eq!(
            error_body(StatusCode::BAD_GATEWAY, b"<html>")["error"]["type"],
            "api_error"
        );
    }
}

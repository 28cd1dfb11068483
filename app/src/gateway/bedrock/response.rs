//! A whole Converse answer as an OpenAI chat completion: text blocks joined, `toolUse`
//! blocks as tool calls with JSON-string arguments, `stopReason` as `finish_reason`, and
//! Bedrock's token counts as OpenAI's usage.

use serde_json::{Value, json};

/// Converse's `stopReason` as OpenAI's `finish_reason`.
pub(super) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("content_filtered" | "guardrail_intervened") => "content_filter",
        _ => "stop",
    }
}

pub(super) fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Converse answers carry no id: each completion gets a fresh one.
pub(super) fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// OpenAI's usage for Bedrock's `usage` object.
pub(super) fn usage(usage: &Value) -> Value {
    let input = usage["inputTokens"].as_u64().unwrap_or(0);
    let output = usage["outputTokens"].as_u64().unwrap_or(0);
    let total = usage["totalTokens"].as_u64().unwrap_or(input + output);
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": total})
}

/// The OpenAI chat completion for a whole Converse answer; `model` is the name the
/// client asked for.
pub fn to_openai_completion(converse: &Value, model: &str) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in converse["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(piece) = block["text"].as_str() {
            text.push_str(piece);
        } else if let Some(call) = block.get("toolUse") {
            tool_calls.push(json!({"id": call["toolUseId"], "type": "function",
                "function": {"name": call["name"], "arguments": call["input"].to_string()}}));
        }
    }
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    let mut reply = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        reply["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": created(),
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": null,
                     "finish_reason": finish_reason(converse["stopReason"].as_str())}],
        "usage": usage(&converse["usage"]),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn text_and_tool_use_answers_come_back_in_openai_shape() {
        let converse = json!({"output": {"message": {"role": "assistant", "content": [
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "w", "input": {"city": "Oslo"}}}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8},
            "metrics": {"latencyMs": 10}});
        let completion = to_openai_completion(&converse, "claude-bedrock");
        assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["model"], "claude-bedrock");
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Let me check.");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "tooluse_1");
        assert_eq!(call["function"]["arguments"], r#"{"city":"Oslo"}"#);
        assert_eq!(
            completion["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
        );

        let only_tool = json!({"output": {"message": {"content": [
            {"toolUse": {"toolUseId": "t", "name": "w", "input": {}}}]}}, "stopReason": "tool_use"});
        let completion = to_openai_completion(&only_tool, "m");
        assert_eq!(completion["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(completion["usage"]["total_tokens"], 0);
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("content_filtered", "content_filter"),
            ("guardrail_intervened", "content_filter"),
        ] {
            assert_eq!(finish_reason(Some(stop)), finish, "{stop}");
        }
        assert_eq!(finish_reason(None), "stop");
    }
}

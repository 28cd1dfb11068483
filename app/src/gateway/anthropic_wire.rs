//! Talking to an Anthropic Messages upstream on behalf of an OpenAI-format client: the
//! chat request to Anthropic's shape (system at the top, `max_tokens` required, tool
//! calls to `tool_use` blocks, `tool` messages to `tool_result` blocks), and the answer
//! back, whole or as a stream of Anthropic events turned into OpenAI chunks.

use serde_json::{Map, Value, json};

/// Anthropic requires `max_tokens`; OpenAI clients may leave it out.
const DEFAULT_MAX_TOKENS: u64 = 4096;

fn text_content(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The Anthropic Messages request for an OpenAI chat request, for `model` upstream.
pub fn to_anthropic_request(openai: &Value, model: &str) -> Result<Value, String> {
    let Some(messages) = openai.get("messages").and_then(Value::as_array) else {
        return Err("messages: Field required".into());
    };
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(text_content(content));
                continue;
            }
            "user" => (
                "user",
                vec![json!({"type": "text", "text": text_content(content)})],
            ),
            "assistant" => {
                let mut blocks = Vec::new();
                let text = text_content(content);
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input = serde_json::from_str::<Value>(arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
                }
                ("assistant", blocks)
            }
            "tool" => (
                "user",
                vec![
                    json!({"type": "tool_result", "tool_use_id": message.get("tool_call_id").cloned().unwrap_or(Value::Null),
                            "content": text_content(content)}),
                ],
            ),
            other => return Err(format!("messages.{i}.role: {other:?} is not supported")),
        };
        // Anthropic wants user and assistant turns to alternate: merge same-role runs
        // (several tool results answer one assistant turn).
        match out.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["content"].as_array_mut() {
                    existing.extend(blocks);
                }
            }
            _ => out.push(json!({"role": role, "content": blocks})),
        }
    }
    let max_tokens = openai
        .get("max_completion_tokens")
        .or_else(|| openai.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert("messages".into(), Value::Array(out));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    for key in ["temperature", "top_p", "top_k", "stream"] {
        if let Some(value) = openai.get(key).filter(|v| !v.is_null()) {
            body.insert(key.into(), value.clone());
        }
    }
    match openai.get("stop") {
        Some(Value::String(stop)) => {
            body.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            body.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(tools) = openai.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                json!({"name": f["name"], "description": f.get("description").cloned().unwrap_or(Value::Null),
                       "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = openai.get("tool_choice") {
        let choice = match choice {
            Value::String(s) if s == "auto" => json!({"type": "auto"}),
            Value::String(s) if s == "required" => json!({"type": "any"}),
            Value::String(s) if s == "none" => json!({"type": "none"}),
            Value::Object(_) => json!({"type": "tool", "name": choice["function"]["name"]}),
            _ => return Err("tool_choice must be auto, required, none or a function".into()),
        };
        body.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(body))
}

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    stop_reason.map(|r| match r {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        _ => "stop",
    })
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The OpenAI chat completion for a whole Anthropic message; `model` is the name the
/// client asked for.
pub fn to_openai_completion(message: &Value, model: &str) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({"id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()}})),
            _ => {}
        }
    }
    let mut reply = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }});
    if !tool_calls.is_empty() {
        reply["tool_calls"] = Value::Array(tool_calls);
    }
    let (input, output) = (
        message["usage"]["input_tokens"].as_u64().unwrap_or(0),
        message["usage"]["output_tokens"].as_u64().unwrap_or(0),
    );
    json!({
        "id": format!("chatcmpl-{}", message["id"].as_str().unwrap_or("anthropic")),
        "object": "chat.completion",
        "created": created(),
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": null,
                     "finish_reason": finish_reason(message["stop_reason"].as_str()).unwrap_or("stop")}],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    })
}

/// Anthropic stream events to OpenAI chunks; feed it each `data:` payload in order.
pub struct StreamTranslator {
    model: String,
    id: String,
    created: u64,
    include_usage: bool,
    /// Anthropic block index to OpenAI tool-call index, for `tool_use` blocks.
    tool_index: Vec<(u64, u64)>,
    input_tokens: u64,
    pub done: bool,
}

impl StreamTranslator {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            model: model.to_string(),
            id: "chatcmpl-anthropic".into(),
            created: created(),
            include_usage,
            tool_index: Vec::new(),
            input_tokens: 0,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    }

    /// The OpenAI SSE text for one Anthropic event payload.
    pub fn push(&mut self, payload: &str) -> String {
        let Ok(event) = serde_json::from_str::<Value>(payload) else {
            return String::new();
        };
        match event["type"].as_str() {
            Some("message_start") => {
                if let Some(id) = event["message"]["id"].as_str() {
                    self.id = format!("chatcmpl-{id}");
                }
                self.input_tokens = event["message"]["usage"]["input_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                self.chunk(json!({"role": "assistant", "content": ""}), None)
            }
            Some("content_block_start") if event["content_block"]["type"] == "tool_use" => {
                let index = self.tool_index.len() as u64;
                self.tool_index
                    .push((event["index"].as_u64().unwrap_or(0), index));
                let block = &event["content_block"];
                self.chunk(
                    json!({"tool_calls": [{"index": index, "id": block["id"], "type": "function",
                    "function": {"name": block["name"], "arguments": ""}}]}),
                    None,
                )
            }
            Some("content_block_delta") => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => self.chunk(json!({"content": delta["text"]}), None),
                    Some("input_json_delta") => {
                        let block = event["index"].as_u64().unwrap_or(0);
                        let index = self
                            .tool_index
                            .iter()
                            .find(|(b, _)| *b == block)
                            .map_or(0, |(_, i)| *i);
                        self.chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]}), None)
                    }
                    _ => String::new(),
                }
            }
            Some("message_delta") => {
                let finish =
                    finish_reason(event["delta"]["stop_reason"].as_str()).unwrap_or("stop");
                let mut out = self.chunk(json!({}), Some(finish));
                if self.include_usage {
                    let output = event["usage"]["output_tokens"].as_u64().unwrap_or(0);
                    let usage = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [],
                        "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": output, "total_tokens": self.input_tokens + output}});
                    out.push_str(&format!("data: {usage}\n\n"));
                }
                out
            }
            Some("message_stop") => {
                self.done = true;
                "data: [DONE]\n\n".into()
            }
            Some("error") => {
                self.done = true;
                let message = event["error"]["message"]
                    .as_str()
                    .unwrap_or("upstream error");
                let error = json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": null}});
                format!("data: {error}\n\ndata: [DONE]\n\n")
            }
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_openai_conversation_with_tools_becomes_an_anthropic_request() {
        let openai = json!({"model": "claude", "max_tokens": 50, "stop": "END", "temperature": 0.2,
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "cold"},
                {"role": "user", "content": "Thanks"}]});
        let body = to_anthropic_request(&openai, "claude-3-opus").unwrap();
        assert_eq!(body["model"], "claude-3-opus");
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{body}");
        assert_eq!(messages[1]["content"][0]["input"], json!({"city": "Oslo"}));
        // The tool result and the next user text merge into one user turn.
        assert_eq!(
            messages[2]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "t1", "content": "cold"})
        );
        assert_eq!(messages[2]["content"][1]["text"], "Thanks");
        let body = to_anthropic_request(&json!({"messages": []}), "m").unwrap();
        assert_eq!(body["max_tokens"], 4096);
    }

    #[test]
    fn a_message_and_a_stream_come_back_in_openai_shapes() {
        let message = json!({"id": "msg_1", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3}});
        let completion = to_openai_completion(&message, "claude-3");
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"a":1}"#
        );
        assert_eq!(completion["usage"]["total_tokens"], 8);

        let mut t = StreamTranslator::new("claude-3", true);
        let mut out = String::new();
        for event in [
            r#"{"type":"message_start","message":{"id":"msg_2","usage":{"input_tokens":7}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"w","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":4}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            out.push_str(&t.push(event));
        }
        let chunks: Vec<Value> = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["id"], "chatcmpl-msg_2");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "w"
        );
        assert_eq!(
            chunks[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[5]["usage"]["prompt_tokens"], 7);
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(t.done);
    }
}

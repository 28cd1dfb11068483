//! Anthropic Messages requests to OpenAI chat requests: `system` to a system message,
//! content blocks to text, `tool_use` blocks to `tool_calls` (input object to arguments
//! string), `tool_result` blocks to `tool` messages, tools and `tool_choice`, and the
//! sampling fields.

use serde_json::{Map, Value, json};

/// Why a request cannot be translated; becomes a 400 `invalid_request_error`.
#[derive(Debug)]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

/// The text of a `content` that is a string or a list of blocks (text blocks only).
fn text_of(content: &Value, place: &str) -> Result<String, Invalid> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some(other) => {
                        return invalid(format!(
                            "{place}: content blocks of type {other:?} are not supported here"
                        ));
                    }
                    None => return invalid(format!("{place}: a content block has no type")),
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => invalid(format!(
            "{place}: content must be a string or a list of blocks"
        )),
    }
}

/// One Anthropic message as one or more OpenAI messages.
fn convert_message(i: usize, message: &Value, out: &mut Vec<Value>) -> Result<(), Invalid> {
    let place = format!("messages.{i}");
    let role = match message.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant")) => role,
        Some(other) => {
            return invalid(format!("{place}.role: {other:?} must be user or assistant"));
        }
        None => return invalid(format!("{place}.role: Field required")),
    };
    let content = message.get("content").unwrap_or(&Value::Null);
    let Value::Array(blocks) = content else {
        out.push(json!({"role": role, "content": text_of(content, &place)?}));
        return Ok(());
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut tool_results = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let place = format!("{place}.content.{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") if role == "assistant" => {
                let arguments = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": block.get("name").cloned().unwrap_or(Value::Null),
                                 "arguments": arguments.to_string()},
                }));
            }
            Some("tool_result") if role == "user" => {
                let mut result = text_of(block.get("content").unwrap_or(&Value::Null), &place)?;
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    result = format!("Error: {result}");
                }
                tool_results.push(json!({
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id").cloned().unwrap_or(Value::Null),
                    "content": result,
                }));
            }
            Some(other) => {
                return invalid(format!(
                    "{place}: content blocks of type {other:?} are not supported in a {role} message"
                ));
            }
            None => return invalid(format!("{place}: a content block has no type")),
        }
    }
    // Tool results answer the previous assistant turn, so they come first.
    out.extend(tool_results);
    if !text.is_empty() || !tool_calls.is_empty() || blocks.is_empty() {
        let mut message = Map::new();
        message.insert("role".into(), json!(role));
        message.insert(
            "content".into(),
            if text.is_empty() && !tool_calls.is_empty() {
                Value::Null
            } else {
                json!(text)
            },
        );
        if !tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        out.push(Value::Object(message));
    }
    Ok(())
}

/// The OpenAI chat request for an Anthropic Messages request.
pub fn to_openai(request: &Value) -> Result<Value, Invalid> {
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return invalid("model: Field required");
    };
    let Some(max_tokens) = request.get("max_tokens").and_then(Value::as_u64) else {
        return invalid("max_tokens: Field required (a positive integer)");
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return invalid("messages: Field required");
    };
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = request.get("system") {
        let text = text_of(system, "system")?;
        if !text.is_empty() {
            out.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, message) in messages.iter().enumerate() {
        convert_message(i, message, &mut out)?;
    }
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut body =
        json!({"model": model, "messages": out, "max_tokens": max_tokens, "stream": stream});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(value) = request.get(from).filter(|v| !v.is_null()) {
            body[to] = value.clone();
        }
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| json!({"type": "function", "function": {
                "name": t.get("name").cloned().unwrap_or(Value::Null),
                "description": t.get("description").cloned().unwrap_or(Value::Null),
                "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
            }}))
            .collect();
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
        }
    }
    if let Some(choice) = request.get("tool_choice") {
        body["tool_choice"] = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => return invalid("tool_choice.type must be auto, any, tool or none"),
        };
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn system_blocks_tools_and_results_translate() {
        let request = json!({
            "model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "temperature": 0.5, "stream": true,
            "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "weather"},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "Thanks"}]},
            ]
        });
        let body = to_openai(&request).unwrap();
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "Weather in Paris?"})
        );
        assert_eq!(body["messages"][2]["content"], "Checking.");
        let call = &body["messages"][2]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "18C"})
        );
        assert_eq!(
            body["messages"][4],
            json!({"role": "user", "content": "Thanks"})
        );
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(
            body["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(body["tool_choice"]["function"]["name"], "weather");
    }

    #[test]
    fn missing_fields_and_unsupported_blocks_are_named() {
        let err = to_openai(&json!({"model": "m", "messages": []})).unwrap_err();
        assert!(err.0.contains("max_tokens"), "{}", err.0);
        let err = to_openai(&json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {}}]}]}))
        .unwrap_err();
        assert!(
            err.0.contains("messages.0.content.0") && err.0.contains("image"),
            "{}",
            err.0
        );
        let err = to_openai(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]})).unwrap_err();
        assert!(err.0.contains("messages.0.role"), "{}", err.0);
    }
}

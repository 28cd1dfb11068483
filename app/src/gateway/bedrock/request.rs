//! An OpenAI chat request as a Bedrock Converse request body: system messages to the
//! top-level `system` blocks, sampling fields to `inferenceConfig`, tool calls to
//! `toolUse` blocks (arguments parsed into objects), `tool` messages to `toolResult`
//! blocks in user turns, same-role runs merged (Bedrock wants turns to alternate), and
//! `tools` / `tool_choice` to `toolConfig`. The model id goes in the URL, not the body.

use serde_json::{Map, Value, json};

/// The text blocks of an OpenAI `content` (a string or a list of parts); other part
/// kinds (images, audio, files) are refused by name.
fn text_blocks(content: &Value, at: &str) -> Result<Vec<Value>, String> {
    let mut blocks = Vec::new();
    match content {
        Value::Null => {}
        Value::String(text) => blocks.push(text.clone()),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        blocks.push(part["text"].as_str().unwrap_or("").to_string());
                    }
                    Some(kind) => {
                        return Err(format!(
                            "{at}.content.{j}: {kind} content is not supported for Bedrock models"
                        ));
                    }
                    None => return Err(format!("{at}.content.{j}.type: Field required")),
                }
            }
        }
        _ => return Err(format!("{at}.content must be a string or a list of parts")),
    }
    // Bedrock refuses blank text blocks.
    Ok(blocks
        .into_iter()
        .filter(|text| !text.trim().is_empty())
        .map(|text| json!({"text": text}))
        .collect())
}

/// An OpenAI tool call as a `toolUse` block: its JSON-string arguments as an object.
fn tool_use(call: &Value, at: &str) -> Result<Value, String> {
    let function = &call["function"];
    let arguments = match &function["arguments"] {
        Value::String(text) if text.trim().is_empty() => json!({}),
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| format!("{at}.function.arguments is not valid JSON: {e}"))?,
        Value::Null => json!({}),
        other => other.clone(),
    };
    if !arguments.is_object() {
        return Err(format!("{at}.function.arguments must be a JSON object"));
    }
    let Some(name) = function["name"].as_str() else {
        return Err(format!("{at}.function.name: Field required"));
    };
    Ok(json!({"toolUse": {"toolUseId": call["id"], "name": name, "input": arguments}}))
}

/// The Converse request body for an OpenAI chat request.
pub fn to_converse_request(body: &Value) -> Result<Value, String> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err("messages: Field required".into());
    };
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(content, &at)?);
                continue;
            }
            "user" => ("user", text_blocks(content, &at)?),
            "assistant" => {
                let mut blocks = text_blocks(content, &at)?;
                let calls = message.get("tool_calls").and_then(Value::as_array);
                for (j, call) in calls.into_iter().flatten().enumerate() {
                    blocks.push(tool_use(call, &format!("{at}.tool_calls.{j}"))?);
                }
                ("assistant", blocks)
            }
            "tool" => {
                let mut result = text_blocks(content, &at)?;
                if result.is_empty() {
                    // A tool result needs some content; an empty answer is still one.
                    result.push(json!({"text": "(empty)"}));
                }
                let id = message.get("tool_call_id").cloned().unwrap_or(Value::Null);
                let block = json!({"toolResult": {"toolUseId": id, "content": result}});
                ("user", vec![block])
            }
            other => return Err(format!("{at}.role: {other:?} is not supported")),
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["content"].as_array_mut() {
                    existing.extend(blocks);
                }
            }
            _ => out.push(json!({"role": role, "content": blocks})),
        }
    }
    let mut converse = Map::new();
    converse.insert("messages".into(), Value::Array(out));
    if !system.is_empty() {
        converse.insert("system".into(), Value::Array(system));
    }
    let inference = inference_config(body);
    if !inference.is_empty() {
        converse.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tool_config) = tool_config(body)? {
        converse.insert("toolConfig".into(), tool_config);
    }
    Ok(Value::Object(converse))
}

fn inference_config(body: &Value) -> Map<String, Value> {
    let mut inference = Map::new();
    let max_tokens = body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    if let Some(max_tokens) = max_tokens {
        inference.insert("maxTokens".into(), json!(max_tokens));
    }
    for (openai, bedrock) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(value) = body.get(openai).filter(|v| v.is_number()) {
            inference.insert(bedrock.into(), value.clone());
        }
    }
    let stops = match body.get("stop") {
        Some(Value::String(stop)) => vec![json!(stop)],
        Some(Value::Array(stops)) => stops.clone(),
        _ => Vec::new(),
    };
    if !stops.is_empty() {
        inference.insert("stopSequences".into(), Value::Array(stops));
    }
    inference
}

/// `toolConfig` for the request's `tools` and `tool_choice`; none when there are no
/// tools or the choice is `none`.
fn tool_config(body: &Value) -> Result<Option<Value>, String> {
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "none" => return Ok(None),
        Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
        Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
        Some(Value::Object(choice)) => match choice
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({"tool": {"name": name}})),
            None => return Err("tool_choice.function.name: Field required".into()),
        },
        Some(_) => return Err("tool_choice must be auto, required, none or a function".into()),
    };
    let Some(tools) = body.get("tools").and_then(Value::as_array) else {
        return Ok(None);
    };
    if tools.is_empty() {
        return Ok(None);
    }
    let mut specs = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let function = &tool["function"];
        let Some(name) = function["name"].as_str() else {
            return Err(format!("tools.{i}.function.name: Field required"));
        };
        let schema = match function.get("parameters") {
            Some(schema) if schema.is_object() => schema.clone(),
            _ => json!({"type": "object", "properties": {}}),
        };
        let mut spec = json!({"name": name, "inputSchema": {"json": schema}});
        if let Some(description) = function["description"].as_str().filter(|d| !d.is_empty()) {
            spec["description"] = json!(description);
        }
        specs.push(json!({"toolSpec": spec}));
    }
    let mut config = json!({"tools": specs});
    if let Some(choice) = choice {
        config["toolChoice"] = choice;
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_conversation_with_tools_becomes_a_converse_request() {
        let openai = json!({"model": "claude", "max_tokens": 50, "stop": "END", "temperature": 0.2, "top_p": 0.9,
            "tools": [{"type": "function", "function": {"name": "w", "description": "Weather",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "w"}},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "cold"},
                {"role": "user", "content": "Thanks"}]});
        let body = to_converse_request(&openai).unwrap();
        assert_eq!(body["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            body["inferenceConfig"],
            json!({"maxTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
        assert_eq!(
            body["toolConfig"],
            json!({"tools": [{"toolSpec": {"name": "w", "description": "Weather",
                "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
                "toolChoice": {"tool": {"name": "w"}}})
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"text": "Weather?"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "w", "input": {"city": "Oslo"}}}]},
                // The tool result and the next user text merge into one user turn.
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "t1", "content": [{"text": "cold"}]}},
                    {"text": "Thanks"}]}])
        );
        assert!(body.get("model").is_none());
    }

    #[test]
    fn choices_limits_and_stops_map_as_bedrock_names_them() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let with = |extra: Value| {
            let mut request =
                json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools});
            for (k, v) in extra.as_object().unwrap() {
                request[k] = v.clone();
            }
            to_converse_request(&request).unwrap()
        };
        assert_eq!(
            with(json!({"tool_choice": "auto"}))["toolConfig"]["toolChoice"],
            json!({"auto": {}})
        );
        assert_eq!(
            with(json!({"tool_choice": "required"}))["toolConfig"]["toolChoice"],
            json!({"any": {}})
        );
        assert!(
            with(json!({"tool_choice": "none"}))
                .get("toolConfig")
                .is_none()
        );
        let plain = with(json!({"max_completion_tokens": 7, "max_tokens": 9, "stop": ["a", "b"]}));
        assert_eq!(plain["inferenceConfig"]["maxTokens"], 7);
        assert_eq!(plain["inferenceConfig"]["stopSequences"], json!(["a", "b"]));
        assert_eq!(
            plain["toolConfig"]["tools"][0]["toolSpec"],
            json!({"name": "f", "inputSchema": {"json": {"type": "object", "properties": {}}}})
        );
        let bare =
            to_converse_request(&json!({"messages": [{"role": "user", "content": "x"}]})).unwrap();
        assert!(bare.get("inferenceConfig").is_none() && bare.get("toolConfig").is_none());
    }

    #[test]
    fn what_bedrock_cannot_take_is_a_clear_error() {
        let bad_arguments = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "w", "arguments": "{city: Oslo"}}]}]});
        let error = to_converse_request(&bad_arguments).unwrap_err();
        assert!(
            error.starts_with("messages.0.tool_calls.0.function.arguments is not valid JSON"),
            "{error}"
        );
        let image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert_eq!(
            to_converse_request(&image).unwrap_err(),
            "messages.0.content.1: image_url content is not supported for Bedrock models"
        );
        assert_eq!(
            to_converse_request(&json!({})).unwrap_err(),
            "messages: Field required"
        );
        assert!(to_converse_request(&json!({"messages": [], "tool_choice": 3})).is_err());
    }
}

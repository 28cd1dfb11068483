//! OpenAI chat-completion chunks (SSE) to Anthropic's stream events, in Anthropic's order:
//! `message_start`, then per content block `content_block_start`, its deltas
//! (`text_delta` or `input_json_delta`) and `content_block_stop`, then `message_delta`
//! (stop reason, usage) and `message_stop`.

use serde_json::{Value, json};

use super::response::{message_id, stop_reason};

/// The block being streamed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    None,
    Text,
    /// A tool call, by its OpenAI `index`.
    Tool(u64),
}

/// Turns OpenAI chunks into Anthropic events; feed it every `data:` payload in order.
pub struct Translator {
    model: String,
    started: bool,
    finished: bool,
    open: Open,
    /// Blocks started so far; the next block's `index`.
    blocks: u64,
    finish_reason: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Translator {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            started: false,
            finished: false,
            open: Open::None,
            blocks: 0,
            finish_reason: None,
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        out.push_str(&event(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": message_id(id), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ));
    }

    fn close_block(&mut self, out: &mut String) {
        if self.open != Open::None {
            out.push_str(&event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.blocks - 1}),
            ));
            self.open = Open::None;
        }
    }

    fn open_block(&mut self, open: Open, block: Value, out: &mut String) {
        self.close_block(out);
        out.push_str(&event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.blocks, "content_block": block}),
        ));
        self.blocks += 1;
        self.open = open;
    }

    /// The events for one OpenAI SSE payload (a JSON chunk or `[DONE]`).
    pub fn push(&mut self, payload: &str) -> String {
        let mut out = String::new();
        if payload == "[DONE]" {
            self.finish(&mut out);
            return out;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(payload) else {
            return out;
        };
        if let Some(error) = chunk.get("error") {
            let message = error["message"].as_str().unwrap_or("upstream error");
            out.push_str(&event(
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            ));
            self.finished = true;
            return out;
        }
        self.start(chunk["id"].as_str(), &mut out);
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.input_tokens = usage["prompt_tokens"].as_u64().unwrap_or(self.input_tokens);
            self.output_tokens = usage["completion_tokens"]
                .as_u64()
                .unwrap_or(self.output_tokens);
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.open != Open::Text {
                self.open_block(Open::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            out.push_str(&event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": self.blocks - 1,
                "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap_or(0);
            if self.open != Open::Tool(index) {
                self.open_block(Open::Tool(index), json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}), &mut out);
            }
            if let Some(arguments) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push_str(&event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": self.blocks - 1,
                    "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                ));
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_string());
        }
        out
    }

    /// Closes the stream (at `[DONE]`, or when the upstream ends without it).
    pub fn finish(&mut self, out: &mut String) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.start(None, out);
        self.close_block(out);
        out.push_str(&event("message_delta", &json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}})));
        out.push_str(&event("message_stop", &json!({"type": "message_stop"})));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn names(events: &str) -> Vec<String> {
        events
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn text_then_a_tool_call_streams_in_anthropic_order() {
        let mut t = Translator::new("claude-x");
        let mut all = String::new();
        for payload in [
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#,
            "[DONE]",
        ] {
            all.push_str(&t.push(payload));
        }
        assert_eq!(
            names(&all),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let data: Vec<Value> = all
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(data[0]["message"]["id"], "msg_1");
        assert_eq!(data[4]["index"], 1);
        assert_eq!(data[4]["content_block"]["name"], "weather");
        assert_eq!(data[8]["delta"]["stop_reason"], "tool_use");
        assert_eq!(data[8]["usage"]["output_tokens"], 4);
        let json: String = data
            .iter()
            .filter_map(|d| d["delta"]["partial_json"].as_str())
            .collect();
        assert_eq!(json, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn a_stream_cut_without_done_still_ends_properly_once() {
        let mut t = Translator::new("m");
        let mut all = t.push(r#"{"id":"x","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"length"}]}"#);
        t.finish(&mut all);
        t.finish(&mut all);
        assert_eq!(
            names(&all).iter().filter(|n| *n == "message_stop").count(),
            1
        );
        assert!(all.contains(r#""stop_reason":"max_tokens""#), "{all}");
    }
}

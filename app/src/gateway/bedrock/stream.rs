//! Converse stream events as OpenAI `chat.completion.chunk` SSE lines. Bedrock sends
//! `metadata` (the usage) after `messageStop`, so the finish chunk goes out at
//! `messageStop` and the usage chunk and `[DONE]` at `metadata`; a stream cut short
//! after `messageStop` still told the client why it finished.

use serde_json::{Value, json};

use super::event_stream::Event;
use super::response::{completion_id, created, finish_reason, usage};

/// Converse stream events to OpenAI chunks; feed it each decoded event in order.
pub struct StreamTranslator {
    model: String,
    id: String,
    created: u64,
    include_usage: bool,
    /// Converse content-block index to OpenAI tool-call index, for `toolUse` blocks.
    tool_index: Vec<(u64, u64)>,
    finished: bool,
    pub done: bool,
}

impl StreamTranslator {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            model: model.to_string(),
            id: completion_id(),
            created: created(),
            include_usage,
            tool_index: Vec::new(),
            finished: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    }

    fn finish(&mut self, stop_reason: Option<&str>) -> String {
        if self.finished {
            return String::new();
        }
        self.finished = true;
        self.chunk(json!({}), Some(finish_reason(stop_reason)))
    }

    fn error(&mut self, code: Option<&str>, message: &str) -> String {
        self.done = true;
        let message: String = message.chars().take(500).collect();
        let error = json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": code}});
        format!("data: {error}\n\ndata: [DONE]\n\n")
    }

    /// The OpenAI SSE text for one Converse stream event.
    pub fn push(&mut self, event: &Event) -> String {
        if self.done {
            return String::new();
        }
        let payload: Value = serde_json::from_slice(&event.payload).unwrap_or(Value::Null);
        match event.message_type.as_deref() {
            Some("exception") => {
                let message = payload["message"]
                    .as_str()
                    .unwrap_or("the upstream failed mid-stream");
                return self.error(event.exception_type.as_deref(), message);
            }
            Some("error") => {
                let message = event
                    .error_message
                    .as_deref()
                    .unwrap_or("the upstream failed mid-stream");
                return self.error(event.error_code.as_deref(), message);
            }
            _ => {}
        }
        match event.event_type.as_deref() {
            Some("messageStart") => self.chunk(json!({"role": "assistant", "content": ""}), None),
            Some("contentBlockStart") => {
                let Some(start) = payload["start"].get("toolUse") else {
                    return String::new();
                };
                let index = self.tool_index.len() as u64;
                let block = payload["contentBlockIndex"].as_u64().unwrap_or(0);
                self.tool_index.push((block, index));
                self.chunk(
                    json!({"tool_calls": [{"index": index, "id": start["toolUseId"], "type": "function",
                        "function": {"name": start["name"], "arguments": ""}}]}),
                    None,
                )
            }
            Some("contentBlockDelta") => {
                let delta = &payload["delta"];
                if let Some(text) = delta["text"].as_str() {
                    return self.chunk(json!({"content": text}), None);
                }
                let Some(input) = delta["toolUse"]["input"].as_str() else {
                    return String::new();
                };
                let block = payload["contentBlockIndex"].as_u64().unwrap_or(0);
                let index = self
                    .tool_index
                    .iter()
                    .find(|(b, _)| *b == block)
                    .map_or(0, |(_, i)| *i);
                self.chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": input}}]}),
                    None,
                )
            }
            Some("messageStop") => self.finish(payload["stopReason"].as_str()),
            Some("metadata") => {
                let mut out = self.finish(None);
                if self.include_usage {
                    let usage = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage(&payload["usage"])});
                    out.push_str(&format!("data: {usage}\n\n"));
                }
                self.done = true;
                out.push_str("data: [DONE]\n\n");
                out
            }
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(event_type: &str, payload: Value) -> Event {
        Event {
            message_type: Some("event".into()),
            event_type: Some(event_type.into()),
            payload: payload.to_string().into_bytes(),
            ..Event::default()
        }
    }

    fn chunks(out: &str) -> Vec<Value> {
        out.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn a_converse_stream_becomes_openai_chunks_with_usage_last() {
        let mut t = StreamTranslator::new("claude-bedrock", true);
        let mut out = String::new();
        for e in [
            event("messageStart", json!({"role": "assistant", "p": "abc"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "w"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 1})),
            event("messageStop", json!({"stopReason": "tool_use"})),
        ] {
            out.push_str(&t.push(&e));
        }
        assert!(!t.done && !out.contains("[DONE]"));
        out.push_str(&t.push(&event(
            "metadata",
            json!({"usage": {"inputTokens": 7, "outputTokens": 4, "totalTokens": 11}, "metrics": {"latencyMs": 5}}),
        )));
        let chunks = chunks(&out);
        assert!(chunks[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        let start = &chunks[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (start["index"].as_u64(), &start["id"]),
            (Some(0), &json!("tooluse_1"))
        );
        assert_eq!(start["function"]["name"], "w");
        assert_eq!(
            chunks[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(
            chunks[6]["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11})
        );
        assert_eq!(chunks.len(), 7);
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(t.done);
        assert_eq!(t.push(&event("metadata", json!({}))), "");
    }

    #[test]
    fn without_usage_requested_metadata_only_ends_the_stream() {
        let mut t = StreamTranslator::new("m", false);
        t.push(&event("messageStart", json!({"role": "assistant"})));
        let stop = t.push(&event("messageStop", json!({"stopReason": "max_tokens"})));
        assert_eq!(chunks(&stop)[0]["choices"][0]["finish_reason"], "length");
        let end = t.push(&event(
            "metadata",
            json!({"usage": {"inputTokens": 1, "outputTokens": 1}}),
        ));
        assert_eq!(end, "data: [DONE]\n\n");
    }

    #[test]
    fn an_exception_mid_stream_is_an_openai_error_then_done() {
        let mut t = StreamTranslator::new("m", true);
        let exception = Event {
            message_type: Some("exception".into()),
            exception_type: Some("throttlingException".into()),
            payload: br#"{"message":"Too many requests"}"#.to_vec(),
            ..Event::default()
        };
        let out = t.push(&exception);
        let error = &chunks(&out)[0]["error"];
        assert_eq!(error["message"], "Too many requests");
        assert_eq!(error["code"], "throttlingException");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(t.done);
    }
}

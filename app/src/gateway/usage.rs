//! Reading token usage from answers as they pass to the client: OpenAI's and Anthropic's
//! `usage` objects, in whole JSON bodies and in SSE streams (Anthropic's `message_start`
//! and `message_delta`, OpenAI's final usage chunk). When the gateway asked for usage on a
//! stream only for its own accounting, the usage-only chunk is taken out again, so the
//! client gets the stream it asked for. With `capture`, it also keeps the answer itself
//! (the message, or a stream's text put back together) for the call's trace.

use axum::body::Bytes;
use serde_json::Value;

/// Whole bodies are kept for reading their usage up to this size.
const MAX_WHOLE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

pub struct UsageScan {
    stream: bool,
    strip_usage_chunk: bool,
    /// Streams: the line not yet complete. Whole bodies: every byte so far.
    pending: Vec<u8>,
    /// Whether the previous line was dropped, so the blank line after it goes too.
    dropped_line: bool,
    pub usage: Option<Usage>,
    /// The answer's `id` (`chatcmpl-...`, `msg_...`), if it has one.
    pub response_id: Option<String>,
    capture: bool,
    /// With `capture`: the answer (a whole body's message, or a stream's text).
    pub output: Option<Value>,
    streamed_text: String,
    /// What the streamed pieces were: chat deltas, completion text, or Anthropic text.
    streamed_kind: StreamedKind,
    /// When the first piece of generated text passed (Unix ms): time to first token.
    pub first_token_ms: Option<i64>,
}

impl UsageScan {
    pub fn new(stream: bool, strip_usage_chunk: bool) -> Self {
        Self {
            stream,
            strip_usage_chunk: stream && strip_usage_chunk,
            pending: Vec::new(),
            dropped_line: false,
            usage: None,
            response_id: None,
            capture: false,
            output: None,
            streamed_text: String::new(),
            streamed_kind: StreamedKind::Text,
            first_token_ms: None,
        }
    }

    /// Also keeps the answer's content (for traces).
    pub fn capturing(mut self) -> Self {
        self.capture = true;
        self
    }

    /// Takes the next piece of the body; returns what to pass on to the client now.
    pub fn push(&mut self, bytes: Bytes) -> Bytes {
        if !self.stream {
            if self.pending.len() + bytes.len() <= MAX_WHOLE_BYTES {
                self.pending.extend_from_slice(&bytes);
            }
            return bytes;
        }
        if !self.strip_usage_chunk {
            // Pass bytes on at once; read complete lines from a copy.
            self.pending.extend_from_slice(&bytes);
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                self.read_line(&line);
            }
            return bytes;
        }
        self.pending.extend_from_slice(&bytes);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset + 1;
            let line = self.pending[start..end].to_vec();
            let blank = line.iter().all(u8::is_ascii_whitespace);
            let keep = if blank {
                !std::mem::take(&mut self.dropped_line)
            } else {
                let usage_only = self.read_line(&line);
                self.dropped_line = usage_only;
                !usage_only
            };
            if keep {
                out.extend_from_slice(&self.pending[start..end]);
            }
            start = end;
        }
        self.pending.drain(..start);
        Bytes::from(out)
    }

    /// The end of the body: reads a whole body's usage; returns any bytes still held.
    pub fn finish(&mut self) -> Bytes {
        if !self.stream {
            let whole = std::mem::take(&mut self.pending);
            if let Ok(value) = serde_json::from_slice::<Value>(&whole) {
                self.take(&value);
                if self.capture {
                    self.output = answer(&value);
                }
            }
            return Bytes::new();
        }
        let rest = std::mem::take(&mut self.pending);
        self.read_line(&rest);
        if self.capture && !self.streamed_text.is_empty() {
            // The same shape as a whole answer's.
            let text = std::mem::take(&mut self.streamed_text);
            self.output = Some(match self.streamed_kind {
                StreamedKind::Chat => serde_json::json!({"role": "assistant", "content": text}),
                StreamedKind::Anthropic => serde_json::json!([{"type": "text", "text": text}]),
                StreamedKind::Text => Value::String(text),
            });
        }
        if self.strip_usage_chunk {
            Bytes::from(rest)
        } else {
            Bytes::new()
        }
    }

    /// Reads one SSE line; true if it is OpenAI's usage-only chunk.
    fn read_line(&mut self, line: &[u8]) -> bool {
        let Some(payload) = line.strip_prefix(b"data:") else {
            return false;
        };
        // Most chunks carry no usage: parse only those that might (or all, to capture).
        let might =
            self.capture || self.first_token_ms.is_none() || contains(payload, b"\"usage\"");
        if !might {
            return false;
        }
        let Ok(value) = serde_json::from_slice::<Value>(payload.trim_ascii()) else {
            return false;
        };
        self.take(&value);
        if self.first_token_ms.is_none() && has_text(&value) {
            self.first_token_ms = Some(crate::clock::unix_ms());
        }
        if self.capture {
            // OpenAI chunks (`choices[0].delta.content`, `choices[0].text`), Anthropic deltas.
            let pieces = [
                (
                    value["choices"][0]["delta"]["content"].as_str(),
                    StreamedKind::Chat,
                ),
                (value["choices"][0]["text"].as_str(), StreamedKind::Text),
                (value["delta"]["text"].as_str(), StreamedKind::Anthropic),
            ];
            if let Some((Some(piece), kind)) = pieces.into_iter().find(|(p, _)| p.is_some()) {
                self.streamed_text.push_str(piece);
                self.streamed_kind = kind;
            }
        }
        value["usage"].is_object() && value["choices"].as_array().is_some_and(Vec::is_empty)
    }

    fn take(&mut self, value: &Value) {
        if self.response_id.is_none() {
            let id = value["id"]
                .as_str()
                .or_else(|| value["message"]["id"].as_str());
            self.response_id = id.map(str::to_string);
        }
        for usage in [&value["usage"], &value["message"]["usage"]] {
            if !usage.is_object() {
                continue;
            }
            let current = self.usage.get_or_insert_with(Usage::default);
            let field = |names: &[&str]| names.iter().find_map(|n| usage[*n].as_u64());
            if let Some(n) = field(&["prompt_tokens", "input_tokens"]) {
                current.input_tokens = n;
            }
            if let Some(n) = field(&["completion_tokens", "output_tokens"]) {
                current.output_tokens = n;
            }
        }
    }
}

/// Whether a stream chunk carries generated text (OpenAI's or Anthropic's).
fn has_text(value: &Value) -> bool {
    let non_empty = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    non_empty(&value["choices"][0]["delta"]["content"])
        || non_empty(&value["choices"][0]["text"])
        || non_empty(&value["delta"]["text"])
        || value["choices"][0]["delta"]["tool_calls"].is_array()
}

#[derive(Clone, Copy)]
enum StreamedKind {
    Chat,
    Text,
    Anthropic,
}

/// A whole answer's content: the chat message, the completion text, Anthropic's content
/// blocks, or (embeddings) how many vectors came back.
fn answer(value: &Value) -> Option<Value> {
    let choice = &value["choices"][0];
    if choice["message"].is_object() {
        return Some(choice["message"].clone());
    }
    if let Some(text) = choice["text"].as_str() {
        return Some(Value::from(text));
    }
    if value["content"].is_array() {
        return Some(value["content"].clone());
    }
    value["data"]
        .as_array()
        .map(|data| serde_json::json!({"embeddings": data.len()}))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scan: &mut UsageScan, pieces: &[&str]) -> String {
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&scan.push(Bytes::from(piece.to_string())));
        }
        out.extend_from_slice(&scan.finish());
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn whole_openai_and_anthropic_bodies() {
        let mut scan = UsageScan::new(false, false);
        let body = r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        assert_eq!(run(&mut scan, &[&body[..20], &body[20..]]), body);
        assert_eq!(
            scan.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 3
            })
        );
        assert_eq!(scan.response_id.as_deref(), Some("chatcmpl-1"));
        let mut scan = UsageScan::new(false, false);
        run(
            &mut scan,
            &[r#"{"id":"msg_1","usage":{"input_tokens":5,"output_tokens":2}}"#],
        );
        assert_eq!(scan.usage.map(|u| u.total()), Some(7));
    }

    #[test]
    fn the_usage_chunk_is_read_and_taken_out_when_the_client_did_not_ask() {
        let stream = "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n\
                      data: [DONE]\n\n";
        let mut scan = UsageScan::new(true, true);
        let out = run(
            &mut scan,
            &[&stream[..30], &stream[30..100], &stream[100..]],
        );
        assert!(!out.contains("prompt_tokens"), "{out}");
        assert!(
            out.contains("\"hi\"") && out.ends_with("data: [DONE]\n\n"),
            "{out}"
        );
        assert!(!out.contains("\n\n\n"), "{out:?}");
        assert_eq!(scan.usage.map(|u| u.total()), Some(5));
        let mut scan = UsageScan::new(true, false);
        assert_eq!(run(&mut scan, &[stream]), stream);
        assert_eq!(scan.usage.map(|u| u.input_tokens), Some(4));
    }

    #[test]
    fn anthropic_stream_usage_comes_from_start_and_delta() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n";
        let mut scan = UsageScan::new(true, false);
        run(&mut scan, &[stream]);
        assert_eq!(
            scan.usage,
            Some(Usage {
                input_tokens: 11,
                output_tokens: 3
            })
        );
        assert_eq!(scan.response_id.as_deref(), Some("msg_9"));
    }
}

//! `SseData`: splits a server-sent-events byte stream, fed in arbitrary chunks, into the
//! payloads of its `data:` lines. Shared by the stream translations (Anthropic to OpenAI
//! and back).

#[derive(Default)]
pub struct SseData {
    pending: Vec<u8>,
}

impl SseData {
    /// Adds bytes; returns the payloads of the `data:` lines they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        // SSE lines end in '\n', an ASCII byte, so each complete line is whole UTF-8.
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(payload) = line.trim_end().strip_prefix("data:") {
                payloads.push(payload.trim_start().to_string());
            }
        }
        payloads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_across_chunks_come_out_whole() {
        let mut sse = SseData::default();
        assert!(sse.push(b"event: x\ndata: {\"a\":").is_empty());
        assert_eq!(sse.push(b"1}\n\ndata:[DONE]\n"), ["{\"a\":1}", "[DONE]"]);
    }
}

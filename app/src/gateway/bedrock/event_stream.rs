//! `EventStreamDecoder`: AWS's binary event-stream framing
//! (`application/vnd.amazon.eventstream`), fed in arbitrary chunks. Each frame is a
//! 12-byte prelude (total length, headers length, CRC32 of the first 8 bytes), typed
//! headers, the payload, and a CRC32 of everything before it. Both CRCs are checked.

/// A frame's string headers this gateway reads, and its payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// `:message-type`: `event`, `exception` or `error`.
    pub message_type: Option<String>,
    /// `:event-type`, for events: `messageStart`, `contentBlockDelta`, …
    pub event_type: Option<String>,
    /// `:exception-type`, for exceptions: `throttlingException`, …
    pub exception_type: Option<String>,
    /// `:error-code` and `:error-message`, for `error` messages.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventStreamError {
    #[error("event-stream prelude checksum mismatch")]
    PreludeChecksum,
    #[error("event-stream message checksum mismatch")]
    MessageChecksum,
    #[error("event-stream frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    FrameTooLarge(u32),
    #[error("event-stream frame lengths are inconsistent (total {total}, headers {headers})")]
    BadLengths { total: u32, headers: u32 },
    #[error("event-stream header is malformed: {0}")]
    BadHeader(&'static str),
}

/// Frames larger than this are refused rather than buffered.
const MAX_FRAME: u32 = 16 * 1024 * 1024;
const PRELUDE: usize = 12;
/// Prelude plus the trailing message CRC.
const OVERHEAD: u32 = 16;

#[derive(Default)]
pub struct EventStreamDecoder {
    pending: Vec<u8>,
}

impl EventStreamDecoder {
    /// Adds bytes; returns the events they complete, in order. After an error the stream
    /// is broken and should be abandoned.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, EventStreamError> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(frame_len) = self.next_frame_len(start)? {
            let frame = &self.pending[start..start + frame_len];
            events.push(decode_frame(frame)?);
            start += frame_len;
        }
        self.pending.drain(..start);
        Ok(events)
    }

    /// The length of the frame at `start`, once all of it is buffered.
    fn next_frame_len(&self, start: usize) -> Result<Option<usize>, EventStreamError> {
        let rest = &self.pending[start..];
        if rest.len() < PRELUDE {
            return Ok(None);
        }
        let total = be_u32(&rest[0..4]);
        let headers = be_u32(&rest[4..8]);
        if crc32fast::hash(&rest[0..8]) != be_u32(&rest[8..12]) {
            return Err(EventStreamError::PreludeChecksum);
        }
        if total > MAX_FRAME {
            return Err(EventStreamError::FrameTooLarge(total));
        }
        if total < OVERHEAD || headers > total - OVERHEAD {
            return Err(EventStreamError::BadLengths { total, headers });
        }
        let total = total as usize;
        Ok((rest.len() >= total).then_some(total))
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(word)
}

/// One whole frame, lengths already checked against its size.
fn decode_frame(frame: &[u8]) -> Result<Event, EventStreamError> {
    let (body, crc) = frame.split_at(frame.len() - 4);
    if crc32fast::hash(body) != be_u32(crc) {
        return Err(EventStreamError::MessageChecksum);
    }
    let headers_len = be_u32(&frame[4..8]) as usize;
    let headers = &body[PRELUDE..PRELUDE + headers_len];
    let mut event = Event {
        payload: body[PRELUDE + headers_len..].to_vec(),
        ..Event::default()
    };
    let mut at = 0;
    while at < headers.len() {
        let name_len = usize::from(headers[at]);
        let name = take(headers, at + 1, name_len)?;
        at += 1 + name_len;
        let kind = *headers
            .get(at)
            .ok_or(EventStreamError::BadHeader("missing value type"))?;
        at += 1;
        let value_len = match kind {
            0 | 1 => 0, // true, false
            2 => 1,     // byte
            3 => 2,     // short
            4 => 4,     // integer
            5 | 8 => 8, // long, timestamp
            9 => 16,    // uuid
            6 | 7 => {
                // byte array, string: a 2-byte length first
                let len = take(headers, at, 2)?;
                at += 2;
                usize::from(u16::from_be_bytes([len[0], len[1]]))
            }
            _ => return Err(EventStreamError::BadHeader("unknown value type")),
        };
        let value = take(headers, at, value_len)?;
        at += value_len;
        if kind != 7 {
            continue;
        }
        let value = String::from_utf8_lossy(value).into_owned();
        match name {
            b":message-type" => event.message_type = Some(value),
            b":event-type" => event.event_type = Some(value),
            b":exception-type" => event.exception_type = Some(value),
            b":error-code" => event.error_code = Some(value),
            b":error-message" => event.error_message = Some(value),
            _ => {}
        }
    }
    Ok(event)
}

fn take(bytes: &[u8], at: usize, len: usize) -> Result<&[u8], EventStreamError> {
    bytes
        .get(at..at + len)
        .ok_or(EventStreamError::BadHeader("runs past the headers"))
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// One frame with string headers (and, to be skipped, one of each other type).
    pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut encoded = Vec::new();
        for (name, value) in headers {
            encoded.push(name.len() as u8);
            encoded.extend_from_slice(name.as_bytes());
            encoded.push(7);
            encoded.extend_from_slice(&(value.len() as u16).to_be_bytes());
            encoded.extend_from_slice(value.as_bytes());
        }
        let total = (16 + encoded.len() + payload.len()) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out.extend_from_slice(&encoded);
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out
    }

    pub fn event_frame(event_type: &str, payload: &str) -> Vec<u8> {
        frame(
            &[
                (":event-type", event_type),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    #[test]
    fn frames_split_anywhere_decode_in_order() {
        let mut stream = event_frame("messageStart", r#"{"role":"assistant"}"#);
        stream.extend(event_frame(
            "contentBlockDelta",
            r#"{"delta":{"text":"Hi"}}"#,
        ));
        stream.extend(frame(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        for split in [1, 5, 12, 13, 40, stream.len() - 1] {
            let mut decoder = EventStreamDecoder::default();
            let mut events = decoder.push(&stream[..split]).unwrap();
            events.extend(decoder.push(&stream[split..]).unwrap());
            assert_eq!(events.len(), 3, "split at {split}");
            assert_eq!(events[0].event_type.as_deref(), Some("messageStart"));
            assert_eq!(events[0].message_type.as_deref(), Some("event"));
            assert_eq!(events[1].payload, br#"{"delta":{"text":"Hi"}}"#);
            assert_eq!(
                events[2].exception_type.as_deref(),
                Some("throttlingException")
            );
        }
        // Byte by byte.
        let mut decoder = EventStreamDecoder::default();
        let count: usize = stream
            .iter()
            .map(|b| decoder.push(&[*b]).unwrap().len())
            .sum();
        assert_eq!(count, 3);
    }

    #[test]
    fn every_header_type_is_skipped() {
        let mut headers = Vec::new();
        for (kind, value) in [
            (0u8, vec![]),
            (1, vec![]),
            (2, vec![7]),
            (3, vec![0, 7]),
            (4, vec![0; 4]),
            (5, vec![0; 8]),
            (6, vec![0, 2, 0xff, 0xfe]),
            (8, vec![0; 8]),
            (9, vec![0; 16]),
        ] {
            headers.extend_from_slice(&[1, b'x', kind]);
            headers.extend(value);
        }
        headers.extend_from_slice(&[11]);
        headers.extend_from_slice(b":event-type");
        headers.extend_from_slice(&[7, 0, 8]);
        headers.extend_from_slice(b"metadata");
        let total = (16 + headers.len() + 2) as u32;
        let mut raw = Vec::new();
        raw.extend_from_slice(&total.to_be_bytes());
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        raw.extend_from_slice(&crc32fast::hash(&raw).to_be_bytes());
        raw.extend(headers);
        raw.extend_from_slice(b"{}");
        raw.extend_from_slice(&crc32fast::hash(&raw).to_be_bytes());
        let events = EventStreamDecoder::default().push(&raw).unwrap();
        assert_eq!(events[0].event_type.as_deref(), Some("metadata"));
        assert_eq!(events[0].payload, b"{}");
    }

    #[test]
    fn corrupt_or_oversized_frames_are_refused() {
        let good = event_frame("messageStop", r#"{"stopReason":"end_turn"}"#);
        let mut bad_payload = good.clone();
        let at = bad_payload.len() - 6;
        bad_payload[at] ^= 1;
        assert_eq!(
            EventStreamDecoder::default().push(&bad_payload),
            Err(EventStreamError::MessageChecksum)
        );
        let mut bad_prelude = good.clone();
        bad_prelude[3] ^= 1;
        assert_eq!(
            EventStreamDecoder::default().push(&bad_prelude),
            Err(EventStreamError::PreludeChecksum)
        );
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        huge.extend_from_slice(&crc32fast::hash(&huge).to_be_bytes());
        assert_eq!(
            EventStreamDecoder::default().push(&huge),
            Err(EventStreamError::FrameTooLarge(MAX_FRAME + 1))
        );
        let mut short = Vec::new();
        short.extend_from_slice(&20u32.to_be_bytes());
        short.extend_from_slice(&10u32.to_be_bytes());
        short.extend_from_slice(&crc32fast::hash(&short).to_be_bytes());
        assert!(matches!(
            EventStreamDecoder::default().push(&short),
            Err(EventStreamError::BadLengths { .. })
        ));
    }
}

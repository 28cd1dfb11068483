//! Langfuse's batch ingestion events (`POST /api/public/ingestion`): each
//! `{id, timestamp, type, body}` becomes a store upsert, or an error for that event alone.
//! Types: `trace-create`; `span-`, `generation-`, `event-`, `agent-`, `tool-`, `chain-`,
//! `retriever-`, `evaluator-`, `embedding-`, `guardrail-` and `observation-` `create` /
//! `update`; `score-create`; `sdk-log` (accepted, not stored).

use serde_json::{Map, Value};

use crate::store::{JsonText, ObservationUpsert, ScoreUpsert, TraceEvent, TraceUpsert};

/// Longest id accepted, in bytes.
const MAX_ID: usize = 256;

/// Why one event was turned away (the batch's other events still count).
#[derive(Debug, PartialEq)]
pub struct Rejected(pub String);

fn text(body: &Map<String, Value>, field: &str) -> Result<Option<String>, Rejected> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Rejected(format!("`{field}` must be a string"))),
    }
}

fn id(body: &Map<String, Value>, field: &str) -> Result<Option<String>, Rejected> {
    let value = text(body, field)?;
    if value
        .as_ref()
        .is_some_and(|v| v.is_empty() || v.len() > MAX_ID)
    {
        return Err(Rejected(format!("`{field}` must be 1 to {MAX_ID} bytes")));
    }
    Ok(value)
}

/// An ISO-8601 / RFC 3339 timestamp in Unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_at(text.find(['T', ' '])?);
    let day = crate::clock::parse_day(date)?;
    let rest = &rest[1..];
    let zone_at = rest
        .find(['Z', 'z', '+'])
        .or_else(|| rest.rfind('-'))
        .unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let mut parts = clock.split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next().unwrap_or("0").parse().ok()?;
    if hours > 23 || minutes > 59 || !(0.0..61.0).contains(&seconds) {
        return None;
    }
    let offset_minutes = match zone {
        "" | "Z" | "z" => 0,
        zone => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(char::is_ascii_digit).collect();
            if digits.len() != 4 {
                return None;
            }
            let h: i64 = digits[..2].parse().ok()?;
            let m: i64 = digits[2..].parse().ok()?;
            sign * (h * 60 + m)
        }
    };
    let ms = (seconds * 1000.0).round() as i64;
    Some(day * 86_400_000 + (hours * 60 + minutes - offset_minutes) * 60_000 + ms)
}

fn time(body: &Map<String, Value>, field: &str) -> Result<Option<i64>, Rejected> {
    match text(body, field)? {
        None => Ok(None),
        Some(t) => parse_time(&t)
            .map(Some)
            .ok_or_else(|| Rejected(format!("`{field}` is not an ISO-8601 time: {t:?}"))),
    }
}

fn any(body: &Map<String, Value>, field: &str) -> Option<JsonText> {
    body.get(field).filter(|v| !v.is_null()).map(JsonText::from)
}

fn number(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

fn tags(body: &Map<String, Value>) -> Result<Option<Vec<String>>, Rejected> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| Rejected("`tags` must be a list of strings".into())),
        Some(_) => Err(Rejected("`tags` must be a list of strings".into())),
    }
}

/// The observation type an event type names.
fn observation_kind(kind: &str, body: &Map<String, Value>) -> Option<Option<String>> {
    let (prefix, action) = kind.rsplit_once('-')?;
    if action != "create" && action != "update" {
        return None;
    }
    let name = match prefix {
        "span" => "SPAN",
        "generation" => "GENERATION",
        "event" => "EVENT",
        "agent" => "AGENT",
        "tool" => "TOOL",
        "chain" => "CHAIN",
        "retriever" => "RETRIEVER",
        "evaluator" => "EVALUATOR",
        "embedding" => "EMBEDDING",
        "guardrail" => "GUARDRAIL",
        // The legacy form names its type in the body.
        "observation" => {
            return Some(
                body.get("type")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_uppercase),
            );
        }
        _ => return None,
    };
    // An update keeps the type the create set.
    Some((action == "create").then(|| name.to_string()))
}

/// One batch event as a store upsert; `Ok(None)` for events that are accepted but not
/// stored (`sdk-log`).
pub fn event(
    kind: &str,
    body: &Value,
    timestamp: Option<i64>,
) -> Result<Option<TraceEvent>, Rejected> {
    let Some(body) = body.as_object() else {
        return Err(Rejected("`body` must be an object".into()));
    };
    if kind == "sdk-log" {
        return Ok(None);
    }
    if kind == "trace-create" {
        let id = id(body, "id")?.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        return Ok(Some(TraceEvent::Trace(TraceUpsert {
            id,
            timestamp: time(body, "timestamp")?.or(timestamp),
            name: text(body, "name")?,
            user_id: text(body, "userId")?,
            session_id: text(body, "sessionId")?,
            release: text(body, "release")?,
            version: text(body, "version")?,
            environment: text(body, "environment")?,
            tags: tags(body)?,
            input: any(body, "input"),
            output: any(body, "output"),
            metadata: any(body, "metadata"),
            public: body.get("public").and_then(Value::as_bool),
        })));
    }
    if kind == "score-create" {
        let Some(name) = text(body, "name")? else {
            return Err(Rejected("a score needs a `name`".into()));
        };
        let (value, string_value, default_type) = match body.get("value") {
            Some(Value::Number(n)) => (n.as_f64(), None, "NUMERIC"),
            Some(Value::Bool(b)) => (Some(f64::from(u8::from(*b))), None, "BOOLEAN"),
            Some(Value::String(s)) => (None, Some(s.clone()), "CATEGORICAL"),
            _ => {
                return Err(Rejected(
                    "a score's `value` must be a number or a string".into(),
                ));
            }
        };
        let data_type = text(body, "dataType")?.unwrap_or_else(|| default_type.to_string());
        if !["NUMERIC", "CATEGORICAL", "BOOLEAN"].contains(&data_type.as_str()) {
            return Err(Rejected(format!("unknown score dataType {data_type:?}")));
        }
        let trace_id = id(body, "traceId")?;
        let session_id = id(body, "sessionId")?;
        if trace_id.is_none() && session_id.is_none() {
            return Err(Rejected(
                "a score needs a `traceId` or a `sessionId`".into(),
            ));
        }
        return Ok(Some(TraceEvent::Score(ScoreUpsert {
            id: id(body, "id")?.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            trace_id,
            observation_id: id(body, "observationId")?,
            session_id,
            name,
            value,
            string_value,
            data_type,
            comment: text(body, "comment")?,
            source: text(body, "source")?.unwrap_or_else(|| "API".to_string()),
            timestamp: time(body, "timestamp")?
                .or(timestamp)
                .unwrap_or_else(crate::clock::unix_ms),
            metadata: any(body, "metadata"),
        })));
    }
    let Some(observation_type) = observation_kind(kind, body) else {
        return Err(Rejected(format!("unknown event type {kind:?}")));
    };
    let Some(observation_id) = id(body, "id")? else {
        return Err(Rejected("an observation needs an `id`".into()));
    };
    let Some(trace_id) = id(body, "traceId")? else {
        return Err(Rejected("an observation needs a `traceId`".into()));
    };
    // `usage` (legacy: input/output/total or promptTokens/...) and `usageDetails`.
    let usage = body.get("usage").and_then(Value::as_object);
    let details = body.get("usageDetails").and_then(Value::as_object);
    let pick = |names: &[&str]| {
        names.iter().find_map(|n| {
            number(details.and_then(|d| d.get(*n)))
                .or_else(|| number(usage.and_then(|u| u.get(*n))))
        })
    };
    let usage_input = pick(&["input", "promptTokens", "prompt_tokens", "input_tokens"]);
    let usage_output = pick(&[
        "output",
        "completionTokens",
        "completion_tokens",
        "output_tokens",
    ]);
    let usage_total = pick(&["total", "totalTokens", "total_tokens"])
        .or_else(|| usage_input.zip(usage_output).map(|(i, o)| i + o));
    let costs = body.get("costDetails").and_then(Value::as_object);
    let provided_cost = costs
        .and_then(|c| c.get("total"))
        .and_then(Value::as_f64)
        .or_else(|| {
            usage
                .and_then(|u| u.get("totalCost"))
                .and_then(Value::as_f64)
        });
    let start_time = time(body, "startTime")?.or(if kind.ends_with("-create") {
        timestamp
    } else {
        None
    });
    Ok(Some(TraceEvent::Observation(Box::new(ObservationUpsert {
        id: observation_id,
        trace_id,
        kind: observation_type,
        parent_observation_id: id(body, "parentObservationId")?,
        name: text(body, "name")?,
        start_time,
        end_time: time(body, "endTime")?,
        completion_start_time: time(body, "completionStartTime")?,
        model: text(body, "model")?,
        model_parameters: any(body, "modelParameters"),
        input: any(body, "input"),
        output: any(body, "output"),
        metadata: any(body, "metadata"),
        level: text(body, "level")?,
        status_message: text(body, "statusMessage")?,
        version: text(body, "version")?,
        environment: text(body, "environment")?,
        usage_input,
        usage_output,
        usage_total,
        usage_details: any(body, "usageDetails"),
        cost_details: any(body, "costDetails"),
        provided_cost,
    }))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn times_parse_with_zones_and_fractions() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:00-00:30"), Some(1_800_000));
        assert_eq!(
            parse_time("2026-11-23T06:55:00.123456Z"),
            Some(20_780 * 86_400_000 + 24_900_123)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-11-23T25:00:00Z"), None);
    }

    #[test]
    fn generations_read_usage_in_every_spelling_and_bad_events_say_why() {
        let event = event(
            "generation-create",
            &json!({"id": "g", "traceId": "t", "model": "gpt-4o", "startTime": "2026-01-01T00:00:00Z",
                    "usage": {"promptTokens": 10, "completionTokens": 5}}),
            None,
        )
        .unwrap();
        let Some(TraceEvent::Observation(o)) = event else {
            panic!()
        };
        assert_eq!(
            (o.usage_input, o.usage_output, o.usage_total),
            (Some(10), Some(5), Some(15))
        );
        assert_eq!(o.kind.as_deref(), Some("GENERATION"));
        let Some(TraceEvent::Observation(update)) = super::event(
            "generation-update",
            &json!({"id": "g", "traceId": "t", "usageDetails": {"input": 3}}),
            Some(7),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (update.kind, update.usage_input, update.start_time),
            (None, Some(3), None)
        );
        assert!(
            super::event("span-create", &json!({"id": "s"}), None)
                .unwrap_err()
                .0
                .contains("traceId")
        );
        assert!(
            super::event("nonsense", &json!({}), None)
                .unwrap_err()
                .0
                .contains("unknown")
        );
        assert!(super::event("trace-create", &json!({"tags": "x"}), None).is_err());
        assert!(super::event("score-create", &json!({"name": "q", "value": [1]}), None).is_err());
        assert_eq!(
            super::event("sdk-log", &json!({"log": "x"}), None).unwrap(),
            None
        );
    }
}

//! OpenTelemetry spans to Langfuse's model, as Langfuse maps them: each span is an
//! observation (id: the span id; trace: the OTel trace id); `langfuse.*` attributes win,
//! then the GenAI conventions (`gen_ai.*`), then OpenInference (`llm.*`, `input.value`).
//! A span with a model is a generation. Trace-level attributes (`langfuse.trace.*`,
//! `user.id`, `session.id`) on any span update the trace; the root span names it.
//! Attributes not mapped go into the observation's metadata.

use serde_json::{Map, Value};

use super::otlp::OtelSpan;
use crate::store::{JsonText, ObservationUpsert, TraceEvent, TraceUpsert};

/// Attributes that a mapping consumes (they do not go into metadata).
const CONSUMED_PREFIXES: &[&str] = &["langfuse.", "gen_ai.usage.", "llm.token_count."];
const CONSUMED: &[&str] = &[
    "user.id",
    "session.id",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.prompt",
    "gen_ai.completion",
    "llm.model_name",
    "input.value",
    "output.value",
];

/// A string attribute holding JSON (Langfuse's SDKs serialise input, output and usage
/// this way) as the JSON it holds; other values as they are.
fn decoded(value: &Value) -> Value {
    match value {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| value.clone()),
        other => other.clone(),
    }
}

fn string(attributes: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match attributes.get(*k)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn count(attributes: &Map<String, Value>, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| match attributes.get(*k)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

/// `prefix.key = value` attributes gathered into one object (Langfuse flattens metadata
/// this way), merged over a whole-object attribute `prefix` if there is one.
fn gathered(attributes: &Map<String, Value>, prefix: &str) -> Option<Value> {
    let mut object = match attributes.get(prefix).map(decoded) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let dotted = format!("{prefix}.");
    for (key, value) in attributes {
        if let Some(rest) = key.strip_prefix(&dotted) {
            object.insert(rest.to_string(), decoded(value));
        }
    }
    (!object.is_empty()).then_some(Value::Object(object))
}

/// GenAI's indexed prompt / completion attributes (`gen_ai.prompt.0.role`, ...) as a list
/// of messages.
fn indexed_messages(attributes: &Map<String, Value>, prefix: &str) -> Option<Value> {
    let mut messages: Vec<Map<String, Value>> = Vec::new();
    let dotted = format!("{prefix}.");
    for (key, value) in attributes {
        let Some(rest) = key.strip_prefix(&dotted) else {
            continue;
        };
        let Some((index, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        if index >= 1000 {
            continue;
        }
        if messages.len() <= index {
            messages.resize_with(index + 1, Map::new);
        }
        messages[index].insert(field.to_string(), decoded(value));
    }
    (!messages.is_empty()).then(|| Value::Array(messages.into_iter().map(Value::Object).collect()))
}

fn nanos_to_ms(nanos: u64) -> Option<i64> {
    (nanos > 0).then_some((nanos / 1_000_000) as i64)
}

/// The trace and observation events one span stands for.
pub fn span_events(span: &OtelSpan) -> Vec<TraceEvent> {
    let a = &span.attributes;
    let mut events = Vec::with_capacity(2);
    let tags = match a.get("langfuse.trace.tags").map(decoded) {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
        ),
        Some(Value::String(s)) => Some(s.split(',').map(|t| t.trim().to_string()).collect()),
        _ => None,
    };
    let is_root = span.parent_span_id.is_none()
        || a.get("langfuse.internal.as_root") == Some(&Value::Bool(true));
    let environment = string(a, &["langfuse.environment"]).or_else(|| {
        string(
            &span.resource,
            &[
                "langfuse.environment",
                "deployment.environment.name",
                "deployment.environment",
            ],
        )
    });
    let mut trace = TraceUpsert {
        id: span.trace_id.clone(),
        timestamp: if is_root {
            nanos_to_ms(span.start_unix_nano)
        } else {
            None
        },
        name: string(a, &["langfuse.trace.name"]).or_else(|| is_root.then(|| span.name.clone())),
        user_id: string(a, &["langfuse.user.id", "user.id"]),
        session_id: string(a, &["langfuse.session.id", "session.id"]),
        release: string(a, &["langfuse.release"])
            .or_else(|| string(&span.resource, &["service.version"])),
        version: string(a, &["langfuse.version"]),
        environment: environment.clone(),
        tags,
        input: a
            .get("langfuse.trace.input")
            .map(|v| JsonText::from(decoded(v))),
        output: a
            .get("langfuse.trace.output")
            .map(|v| JsonText::from(decoded(v))),
        metadata: gathered(a, "langfuse.trace.metadata").map(JsonText::from),
        public: a.get("langfuse.trace.public").and_then(Value::as_bool),
    };

    let model = string(
        a,
        &[
            "langfuse.observation.model.name",
            "gen_ai.response.model",
            "gen_ai.request.model",
            "llm.model_name",
        ],
    );
    let kind = string(a, &["langfuse.observation.type"])
        .map(|t| t.to_ascii_uppercase())
        .unwrap_or_else(|| {
            if model.is_some() {
                "GENERATION"
            } else {
                "SPAN"
            }
            .to_string()
        });
    let usage_details = a.get("langfuse.observation.usage_details").map(decoded);
    let from_details = |keys: &[&str]| {
        usage_details
            .as_ref()
            .and_then(|d| keys.iter().find_map(|k| d.get(*k).and_then(Value::as_u64)))
    };
    let usage_input = from_details(&["input", "prompt_tokens", "input_tokens"]).or_else(|| {
        count(
            a,
            &[
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.prompt_tokens",
                "llm.token_count.prompt",
            ],
        )
    });
    let usage_output =
        from_details(&["output", "completion_tokens", "output_tokens"]).or_else(|| {
            count(
                a,
                &[
                    "gen_ai.usage.output_tokens",
                    "gen_ai.usage.completion_tokens",
                    "llm.token_count.completion",
                ],
            )
        });
    let usage_total = from_details(&["total"])
        .or_else(|| count(a, &["gen_ai.usage.total_tokens", "llm.token_count.total"]))
        .or_else(|| usage_input.zip(usage_output).map(|(i, o)| i + o));
    let cost_details = a.get("langfuse.observation.cost_details").map(decoded);
    let provided_cost = cost_details
        .as_ref()
        .and_then(|c| c.get("total").and_then(Value::as_f64))
        .or_else(|| a.get("gen_ai.usage.cost").and_then(Value::as_f64));
    let input = a
        .get("langfuse.observation.input")
        .map(decoded)
        .or_else(|| a.get("gen_ai.prompt").map(decoded))
        .or_else(|| indexed_messages(a, "gen_ai.prompt"))
        .or_else(|| a.get("input.value").map(decoded))
        .map(JsonText::from);
    let output = a
        .get("langfuse.observation.output")
        .map(decoded)
        .or_else(|| a.get("gen_ai.completion").map(decoded))
        .or_else(|| indexed_messages(a, "gen_ai.completion"))
        .or_else(|| a.get("output.value").map(decoded))
        .map(JsonText::from);
    // Everything not mapped above is kept as metadata, as Langfuse does.
    let mut metadata = match gathered(a, "langfuse.observation.metadata") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for (key, value) in a {
        let consumed = CONSUMED.contains(&key.as_str())
            || CONSUMED_PREFIXES.iter().any(|p| key.starts_with(p))
            || key.starts_with("gen_ai.prompt.")
            || key.starts_with("gen_ai.completion.");
        if !consumed {
            metadata.insert(key.clone(), value.clone());
        }
    }
    if !span.resource.is_empty() {
        metadata.insert(
            "resourceAttributes".into(),
            Value::Object(span.resource.clone()),
        );
    }
    if !span.scope_name.is_empty() {
        metadata.insert("scope".into(), Value::from(span.scope_name.clone()));
    }
    let error = span.status_code == 2;
    let level =
        string(a, &["langfuse.observation.level"]).or_else(|| error.then(|| "ERROR".to_string()));
    let status_message = string(a, &["langfuse.observation.status_message"])
        .or_else(|| (!span.status_message.is_empty()).then(|| span.status_message.clone()));
    // The root span's input and output are the trace's, unless the trace has its own.
    if is_root {
        trace.input = trace.input.or_else(|| input.clone());
        trace.output = trace.output.or_else(|| output.clone());
    }
    // Langfuse writes a trace for a root span or a span that sets trace fields; any other
    // span only needs the trace to exist, which its observation ensures.
    let updates_trace = trace.name.is_some()
        || trace.user_id.is_some()
        || trace.session_id.is_some()
        || trace.tags.is_some()
        || trace.input.is_some()
        || trace.output.is_some()
        || trace.metadata.is_some()
        || trace.public.is_some();
    if is_root || updates_trace {
        events.push(TraceEvent::Trace(trace));
    }
    let completion_start_time = string(a, &["langfuse.observation.completion_start_time"])
        .and_then(|t| super::ingest::parse_time(t.trim_matches('"')));
    events.push(TraceEvent::Observation(Box::new(ObservationUpsert {
        id: span.span_id.clone(),
        trace_id: span.trace_id.clone(),
        kind: Some(kind),
        parent_observation_id: span.parent_span_id.clone(),
        name: Some(span.name.clone()),
        start_time: nanos_to_ms(span.start_unix_nano),
        end_time: nanos_to_ms(span.end_unix_nano),
        completion_start_time,
        model,
        model_parameters: a
            .get("langfuse.observation.model.parameters")
            .map(|v| JsonText::from(decoded(v))),
        input,
        output,
        metadata: (!metadata.is_empty()).then(|| JsonText::from(Value::Object(metadata))),
        level,
        status_message,
        version: string(a, &["langfuse.version"]),
        environment,
        usage_input,
        usage_output,
        usage_total,
        usage_details: usage_details.map(JsonText::from),
        cost_details: cost_details.map(JsonText::from),
        provided_cost,
    })));
    events
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn span(attributes: Value, parent: Option<&str>) -> OtelSpan {
        OtelSpan {
            trace_id: "t".repeat(32),
            span_id: "s".repeat(16),
            parent_span_id: parent.map(str::to_string),
            name: "chat gpt-4o".into(),
            start_unix_nano: 2_000_000_000,
            end_unix_nano: 3_000_000_000,
            attributes: attributes.as_object().unwrap().clone(),
            resource: Map::new(),
            scope_name: String::new(),
            status_code: 0,
            status_message: String::new(),
            events: vec![],
        }
    }

    #[test]
    fn gen_ai_spans_become_generations_with_usage() {
        let events = span_events(&span(
            json!({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 12,
                   "gen_ai.usage.output_tokens": 3, "gen_ai.prompt.0.role": "user",
                   "gen_ai.prompt.0.content": "hi", "user.id": "u1", "session.id": "s1", "http.method": "POST"}),
            None,
        ));
        let [TraceEvent::Trace(trace), TraceEvent::Observation(o)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(
            (trace.user_id.as_deref(), trace.session_id.as_deref()),
            (Some("u1"), Some("s1"))
        );
        assert_eq!(trace.name.as_deref(), Some("chat gpt-4o"));
        assert_eq!(trace.timestamp, Some(2000));
        assert_eq!(o.kind.as_deref(), Some("GENERATION"));
        assert_eq!(
            (o.usage_input, o.usage_output, o.usage_total),
            (Some(12), Some(3), Some(15))
        );
        assert_eq!(
            o.input,
            Some(json!([{"role": "user", "content": "hi"}]).into())
        );
        let metadata = o.metadata.as_ref().unwrap().value();
        assert_eq!(metadata["http.method"], "POST");
        assert!(metadata.get("user.id").is_none());
    }

    #[test]
    fn langfuse_attributes_win_and_decode_their_json() {
        let events = span_events(&span(
            json!({"langfuse.observation.type": "span", "langfuse.trace.name": "checkout",
                   "langfuse.trace.tags": ["a", "b"], "langfuse.observation.input": "{\"q\": 1}",
                   "langfuse.observation.metadata.step": "2", "langfuse.trace.metadata.team": "x",
                   "langfuse.observation.usage_details": "{\"input\": 4, \"output\": 1}"}),
            Some("p"),
        ));
        let [TraceEvent::Trace(trace), TraceEvent::Observation(o)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(trace.name.as_deref(), Some("checkout"));
        assert_eq!(trace.timestamp, None);
        assert_eq!(trace.tags, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(trace.metadata, Some(json!({"team": "x"}).into()));
        assert_eq!(o.kind.as_deref(), Some("SPAN"));
        assert_eq!(o.input, Some(json!({"q": 1}).into()));
        assert_eq!(o.metadata.as_ref().unwrap().value()["step"], 2);
        assert_eq!((o.usage_input, o.usage_total), (Some(4), Some(5)));
        assert_eq!(o.parent_observation_id.as_deref(), Some("p"));
    }
}

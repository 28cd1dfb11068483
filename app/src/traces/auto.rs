//! Automatic traces: every inference call through agentbox becomes a trace with one
//! generation (model, provider, input and output, parameters, usage, cost from the one
//! price table, latency, time to first token, status and error), in the default project.
//! Clients group them with the body's `user` and `metadata` (`session_id`, `trace_id`,
//! `trace_name`, `trace_user_id`, `generation_name`, `tags`, other keys kept as trace
//! metadata, as LiteLLM's Langfuse logging reads them), or with the headers
//! `x-agentbox-session-id` and `x-agentbox-trace-id`.

use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

use super::DEFAULT_PROJECT;
use crate::store::{Ingest, JsonText, ObservationUpsert, TraceEvent, TraceUpsert};

/// Request fields that are sampling parameters, shown as the generation's parameters.
const PARAMETERS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "stream",
    "tools",
    "tool_choice",
];

/// What a call's trace takes from its request.
#[derive(Debug, Default)]
pub struct CallTrace {
    pub trace_id: Option<String>,
    pub trace_name: String,
    pub generation_name: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub parameters: Map<String, Value>,
    pub input: Option<Value>,
}

impl CallTrace {
    /// Reads the request; takes `metadata` out of the body (it is agentbox's, not the
    /// upstream's). Bodies are kept only when `record_bodies`.
    pub fn from_request(
        path: &str,
        body: &mut Map<String, Value>,
        headers: &HeaderMap,
        record_bodies: bool,
        anthropic: bool,
    ) -> Self {
        // Anthropic's `metadata` is its own field (`user_id`): leave it in the request.
        let mut metadata = match if anthropic {
            body.get("metadata").cloned()
        } else {
            body.remove("metadata")
        } {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|v| !v.is_empty())
        };
        let mut take = |key: &str| match metadata.remove(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        };
        let session_id = take("session_id").or_else(|| header("x-agentbox-session-id"));
        let trace_id = take("trace_id").or_else(|| header("x-agentbox-trace-id"));
        let trace_name = take("trace_name");
        let generation_name = take("generation_name");
        let user_id = take("trace_user_id")
            .or_else(|| take("user_id"))
            .or_else(|| body.get("user").and_then(Value::as_str).map(str::to_string));
        let tags = match metadata.remove("tags") {
            Some(Value::Array(tags)) => tags
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let name = path.trim_start_matches('/').replace('/', ".");
        let parameters = PARAMETERS
            .iter()
            .filter_map(|k| Some((k.to_string(), body.get(*k)?.clone())))
            .collect();
        let input = if record_bodies {
            ["messages", "prompt", "input"]
                .iter()
                .find_map(|k| body.get(*k).cloned())
                .map(|input| match body.get("system") {
                    Some(system) if anthropic => json!({"system": system, "messages": input}),
                    _ => input,
                })
        } else {
            None
        };
        Self {
            trace_id,
            trace_name: trace_name.unwrap_or_else(|| name.clone()),
            generation_name: generation_name.unwrap_or(name),
            user_id,
            session_id,
            tags,
            metadata,
            parameters,
            input,
        }
    }
}

/// How the call ended, as the meter saw it.
pub struct CallOutcome<'a> {
    pub model: &'a str,
    pub provider: &'a str,
    pub api_base: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub first_token_ms: Option<i64>,
    pub streamed: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    pub status: u16,
    pub output: Option<Value>,
    pub cache_hit: bool,
    pub key_alias: Option<String>,
    pub request_id: &'a str,
    /// A local model's own account: queue, prefill and decode times, prefix-cache hits.
    pub engine: Option<engine::Completion>,
}

/// The trace and generation events for one call.
pub fn events(call: CallTrace, outcome: CallOutcome<'_>) -> Vec<Ingest> {
    let trace_id = call
        .trace_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let failed = outcome.status >= 400;
    let mut trace_metadata = call.metadata;
    if let Some(alias) = &outcome.key_alias {
        trace_metadata.insert("key_alias".into(), Value::from(alias.clone()));
    }
    let input = call.input.map(JsonText::from);
    let output = outcome.output.map(JsonText::from);
    let trace = TraceUpsert {
        id: trace_id.clone(),
        timestamp: Some(outcome.start_ms),
        name: Some(call.trace_name),
        user_id: call.user_id,
        session_id: call.session_id,
        tags: (!call.tags.is_empty()).then_some(call.tags),
        input: input.clone(),
        output: output.clone(),
        metadata: (!trace_metadata.is_empty())
            .then(|| JsonText::from(Value::Object(trace_metadata))),
        ..TraceUpsert::default()
    };
    let mut metadata = json!({
        "provider": outcome.provider,
        "api_base": outcome.api_base,
        "status_code": outcome.status,
        "cache_hit": outcome.cache_hit,
        "request_id": outcome.request_id,
    });
    let mut usage_details = None;
    if let Some(engine) = &outcome.engine {
        let t = &engine.timings;
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        metadata["engine"] = json!({
            "queue_ms": ms(t.queued),
            "prefill_ms": ms(t.first_token.saturating_sub(t.queued)),
            "decode_ms": ms(t.total.saturating_sub(t.first_token)),
            "prefix_cache_hit_tokens": engine.cached_prompt_tokens,
        });
        usage_details = Some(json!({
            "input": outcome.input_tokens,
            "output": outcome.output_tokens,
            "total": outcome.input_tokens + outcome.output_tokens,
            "input_cached_tokens": engine.cached_prompt_tokens,
        }));
    }
    let generation = ObservationUpsert {
        id: uuid::Uuid::new_v4().simple().to_string(),
        trace_id,
        kind: Some("GENERATION".into()),
        name: Some(call.generation_name),
        start_time: Some(outcome.start_ms),
        end_time: Some(outcome.end_ms),
        completion_start_time: outcome.first_token_ms.filter(|_| outcome.streamed),
        model: Some(outcome.model.to_string()),
        model_parameters: (!call.parameters.is_empty())
            .then(|| JsonText::from(Value::Object(call.parameters))),
        input,
        output,
        metadata: Some(JsonText::from(metadata)),
        level: failed.then(|| "ERROR".to_string()),
        status_message: failed.then(|| format!("HTTP {}", outcome.status)),
        usage_input: Some(outcome.input_tokens),
        usage_output: Some(outcome.output_tokens),
        usage_total: Some(outcome.input_tokens + outcome.output_tokens),
        usage_details: usage_details.map(JsonText::from),
        provided_cost: Some(outcome.cost),
        ..ObservationUpsert::default()
    };
    [
        TraceEvent::Trace(trace),
        TraceEvent::Observation(Box::new(generation)),
    ]
    .into_iter()
    .map(|event| Ingest::new(DEFAULT_PROJECT.to_string(), None, event))
    .collect()
}

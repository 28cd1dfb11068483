//! The store's records: what callers write (upserts, spend rows, keys) and read back
//! (stored traces, observations, scores, spend, conversations), and the filters of its
//! queries. Plain data shared by both backends (`sqlite/`, `postgres/`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_with::skip_serializing_none;

/// Milliseconds in a UTC day: daily metrics and prices go by UTC day.
pub(super) const DAY_MS: i64 = 86_400_000;

/// A JSON value as the store keeps it: its text, serialized where the event was parsed
/// (on the request's thread), so that the writer thread only binds strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(String);

impl JsonText {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value again (text that is not JSON comes back as a string).
    #[cfg(test)]
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or_else(|_| Value::String(self.0.clone()))
    }
}

impl From<&Value> for JsonText {
    fn from(value: &Value) -> Self {
        Self(value.to_string())
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

/// (Written to the ingestion log as JSON: empty fields are left out, and default.)
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceUpsert {
    pub id: String,
    pub timestamp: Option<i64>,
    pub name: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub release: Option<String>,
    pub version: Option<String>,
    pub environment: Option<String>,
    pub tags: Option<Vec<String>>,
    pub input: Option<JsonText>,
    pub output: Option<JsonText>,
    pub metadata: Option<JsonText>,
    pub public: Option<bool>,
}

/// (Written to the ingestion log as JSON: empty fields are left out, and default.)
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObservationUpsert {
    pub id: String,
    pub trace_id: String,
    /// `SPAN`, `GENERATION`, `EVENT`, `AGENT`, `TOOL`, ...; `None` keeps the stored type.
    pub kind: Option<String>,
    pub parent_observation_id: Option<String>,
    pub name: Option<String>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub completion_start_time: Option<i64>,
    pub model: Option<String>,
    pub model_parameters: Option<JsonText>,
    pub input: Option<JsonText>,
    pub output: Option<JsonText>,
    pub metadata: Option<JsonText>,
    pub level: Option<String>,
    pub status_message: Option<String>,
    pub version: Option<String>,
    pub environment: Option<String>,
    pub usage_input: Option<u64>,
    pub usage_output: Option<u64>,
    pub usage_total: Option<u64>,
    pub usage_details: Option<JsonText>,
    pub cost_details: Option<JsonText>,
    /// A cost the client reported; wins over the price table's.
    pub provided_cost: Option<f64>,
}

/// (Written to the ingestion log as JSON: empty fields are left out, and default.)
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoreUpsert {
    pub id: String,
    pub trace_id: Option<String>,
    pub observation_id: Option<String>,
    pub session_id: Option<String>,
    pub name: String,
    pub value: Option<f64>,
    pub string_value: Option<String>,
    pub data_type: String,
    pub comment: Option<String>,
    pub source: String,
    pub timestamp: i64,
    pub metadata: Option<JsonText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceEvent {
    Trace(TraceUpsert),
    Observation(Box<ObservationUpsert>),
    Score(ScoreUpsert),
}

/// One event for a project; `event_id` dedupes (Langfuse's batch `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingest {
    pub project: String,
    pub event_id: Option<String>,
    pub event: TraceEvent,
    /// When agentbox received the event (Unix ms): the time of a trace or observation
    /// that names none, however late the event is written.
    pub received: i64,
}

impl Ingest {
    /// An event received now.
    pub fn new(project: String, event_id: Option<String>, event: TraceEvent) -> Self {
        Self {
            project,
            event_id,
            event,
            received: crate::clock::unix_ms(),
        }
    }
}

/// A trace as stored, with what its observations add up to.
#[derive(Debug, Clone, Default)]
pub struct StoredTrace {
    pub id: String,
    pub timestamp: i64,
    pub name: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub release: Option<String>,
    pub version: Option<String>,
    pub environment: Option<String>,
    pub tags: Vec<String>,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub metadata: Option<Value>,
    pub public: bool,
    /// Seconds from the first observation's start to the last one's end.
    pub latency: Option<f64>,
    pub total_cost: f64,
    pub observation_ids: Vec<String>,
    pub score_ids: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct StoredObservation {
    pub id: String,
    pub trace_id: String,
    pub kind: String,
    pub parent_observation_id: Option<String>,
    pub name: Option<String>,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub completion_start_time: Option<i64>,
    pub model: Option<String>,
    pub model_parameters: Option<Value>,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub metadata: Option<Value>,
    pub level: Option<String>,
    pub status_message: Option<String>,
    pub version: Option<String>,
    pub environment: Option<String>,
    pub usage_input: u64,
    pub usage_output: u64,
    pub usage_total: u64,
    pub usage_details: Option<Value>,
    pub cost_details: Option<Value>,
    pub provided_cost: Option<f64>,
    pub calculated_input_cost: Option<f64>,
    pub calculated_output_cost: Option<f64>,
}

impl StoredObservation {
    /// The client's cost if it sent one, else the price table's.
    pub fn total_cost(&self) -> Option<f64> {
        self.provided_cost.or(
            match (self.calculated_input_cost, self.calculated_output_cost) {
                (None, None) => None,
                (i, o) => Some(i.unwrap_or(0.0) + o.unwrap_or(0.0)),
            },
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct StoredScore {
    pub id: String,
    pub trace_id: Option<String>,
    pub observation_id: Option<String>,
    pub session_id: Option<String>,
    pub name: String,
    pub value: Option<f64>,
    pub string_value: Option<String>,
    pub data_type: String,
    pub comment: Option<String>,
    pub source: String,
    pub timestamp: i64,
    pub metadata: Option<Value>,
}

/// Filters of `GET /api/public/traces`. Times are Unix milliseconds, `to` exclusive.
#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub environment: Vec<String>,
}

/// How daily metrics are gathered: whole UTC days from the writer's per-day totals, and
/// from the rows themselves the partial days at either end of a time range, or everything
/// when the filter is on more than time (the totals are per day, not per user or tag).
#[derive(Debug)]
pub(super) struct DailyPlan {
    /// Whole days `first..end` (day numbers) to read from the totals, if any.
    pub whole_days: Option<(i64, i64)>,
    /// Filters to compute from the rows; a day they return replaces the totals' day.
    pub scans: Vec<TraceFilter>,
}

pub(super) fn daily_plan(filter: &TraceFilter) -> DailyPlan {
    if filter.user_id.is_some()
        || filter.session_id.is_some()
        || filter.name.is_some()
        || !filter.tags.is_empty()
        || !filter.environment.is_empty()
    {
        return DailyPlan {
            whole_days: None,
            scans: vec![filter.clone()],
        };
    }
    let by_time = |from, to| TraceFilter {
        from,
        to,
        ..TraceFilter::default()
    };
    let first = filter.from.map_or(i64::MIN, |from| {
        from.div_euclid(DAY_MS) + i64::from(from.rem_euclid(DAY_MS) != 0)
    });
    let end = filter.to.map_or(i64::MAX, |to| to.div_euclid(DAY_MS));
    if first >= end {
        return DailyPlan {
            whole_days: None,
            scans: vec![by_time(filter.from, filter.to)],
        };
    }
    let mut scans = Vec::new();
    if let Some(from) = filter.from.filter(|from| from.rem_euclid(DAY_MS) != 0) {
        scans.push(by_time(Some(from), Some(first * DAY_MS)));
    }
    if let Some(to) = filter.to.filter(|to| to.rem_euclid(DAY_MS) != 0) {
        scans.push(by_time(Some(end * DAY_MS), Some(to)));
    }
    DailyPlan {
        whole_days: Some((first, end)),
        scans,
    }
}

/// Filters of `GET /api/public/observations`.
#[derive(Debug, Clone, Default)]
pub struct ObservationFilter {
    pub trace_id: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub user_id: Option<String>,
    pub parent_observation_id: Option<String>,
    pub level: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// One day of `GET /api/public/metrics/daily`: per model (input, output, total tokens,
/// observations, traces, cost).
#[derive(Debug, Clone, Default)]
pub struct DailyMetrics {
    pub day: i64,
    pub count_traces: u64,
    pub count_observations: u64,
    pub total_cost: f64,
    pub models: Vec<ModelUsage>,
}

#[derive(Debug, Clone, Default)]
pub struct ModelUsage {
    pub model: Option<String>,
    pub input: u64,
    pub output: u64,
    pub total: u64,
    pub count_traces: u64,
    pub count_observations: u64,
    pub total_cost: f64,
}

// Gateway keys and spend.

/// One virtual key as stored. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub token: String,
    /// `sk-...abcd`: enough of the key for people to tell keys apart.
    pub key_name: String,
    pub key_alias: Option<String>,
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<i64>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Value,
    pub spend: f64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Another key already has this `key_alias`.
#[derive(Debug, thiserror::Error)]
#[error("another key already has this key_alias")]
pub struct DuplicateAlias;

/// One request's spend. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRecord {
    pub request_id: String,
    pub call_type: String,
    /// The SHA-256 of the key the caller presented; empty without one.
    pub api_key: String,
    pub key_alias: Option<String>,
    pub spend: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub start_time_ms: i64,
    pub end_time_ms: i64,
    /// The model that answered (the upstream's name, or the local model).
    pub model: String,
    /// The model name the client asked for.
    pub model_group: String,
    pub provider: String,
    pub api_base: String,
    pub user: String,
    pub status_code: u16,
    pub cache_hit: bool,
    pub request_tags: Vec<String>,
    /// The key's running spend after this request, and when its budget resets.
    pub key_spend: Option<(f64, Option<i64>)>,
}

/// What `GET /spend/logs` may filter on.
#[derive(Debug, Default, Clone)]
pub struct SpendFilter {
    pub api_key: Option<String>,
    pub user: Option<String>,
    pub request_id: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub limit: usize,
}

// Conversations.

#[derive(Debug, Clone, serde::Serialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    pub model: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConversationWithMessages {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub messages: Vec<StoredMessage>,
}

// Helpers both backends store and read through.

/// A JSON value as stored (TEXT).
pub(super) fn json(value: &Option<JsonText>) -> Option<&str> {
    value.as_ref().map(JsonText::as_str)
}

/// Stored JSON text back to a value (text that is not JSON comes back as a string).
pub(super) fn parsed(text: Option<String>) -> Option<Value> {
    let text = text?;
    Some(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// What an observation's tokens cost at the price table's rate for its model on the day
/// it started: (input, output) in dollars.
pub(super) fn token_cost(
    prices: &crate::pricing::PriceTable,
    model: &str,
    input: Option<i64>,
    output: Option<i64>,
    start_ms: i64,
) -> (f64, f64) {
    let price = prices.price(model, false, start_ms.div_euclid(DAY_MS));
    (
        price.input_per_token * input.unwrap_or(0).max(0) as f64,
        price.output_per_token * output.unwrap_or(0).max(0) as f64,
    )
}

/// The cost an observation upsert prices a new row with, from the event alone, or `None`
/// where nothing is to be priced: a cost the client gave wins, and an event with neither
/// model nor usage changes nothing priced. Model and usage may come in separate events,
/// so backends price the merged row again where it differs.
pub(super) fn own_cost(
    prices: &crate::pricing::PriceTable,
    o: &ObservationUpsert,
    now: i64,
) -> Option<(f64, f64)> {
    let model = o.model.as_deref().filter(|_| reprices(o))?;
    Some(token_cost(
        prices,
        model,
        to_i64(o.usage_input),
        to_i64(o.usage_output),
        o.start_time.unwrap_or(now),
    ))
}

/// Whether an observation upsert calls for pricing its merged row.
pub(super) fn reprices(o: &ObservationUpsert) -> bool {
    o.provided_cost.is_none()
        && (o.model.is_some() || o.usage_input.is_some() || o.usage_output.is_some())
}

/// One row of the per-day totals (`daily_usage`) as a model's usage: model `''` is usage
/// without a model, and counts kept by adding and subtracting are clamped at zero.
pub(super) fn rolled_up_usage(
    model: String,
    [traces, observations, input, output, total]: [i64; 5],
    cost: f64,
) -> ModelUsage {
    let count = |n: i64| n.max(0) as u64;
    ModelUsage {
        model: (!model.is_empty()).then_some(model),
        count_traces: count(traces),
        count_observations: count(observations),
        input: count(input),
        output: count(output),
        total: count(total),
        // Sums of additions and subtractions leave float dust behind.
        total_cost: (cost * 1e12).round() / 1e12,
    }
}

/// A count as stored (a signed 64-bit integer), saturating.
pub(super) fn to_i64(n: Option<u64>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// Sets a day's trace count in daily metrics being gathered.
pub(super) fn set_day_traces(days: &mut BTreeMap<i64, DailyMetrics>, day: i64, traces: u64) {
    let entry = days.entry(day).or_default();
    entry.day = day;
    entry.count_traces = traces;
}

/// Adds one model's usage to its day; usage without a model counts toward the day only.
pub(super) fn add_day_usage(days: &mut BTreeMap<i64, DailyMetrics>, day: i64, usage: ModelUsage) {
    let entry = days.entry(day).or_default();
    entry.day = day;
    entry.count_observations += usage.count_observations;
    entry.total_cost += usage.total_cost;
    if usage.model.is_some() {
        entry.models.push(usage);
    }
}

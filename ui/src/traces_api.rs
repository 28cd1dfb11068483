//! The tracing pages' JSON, in Langfuse's field names: `GET /api/public/traces` (filtered,
//! paginated), `/traces/{id}` (with observations and scores), `/sessions`,
//! `/sessions/{id}`, `/metrics/daily`, and `POST /api/public/scores`.
//!
//! Fields are read leniently: anything a trace may lack (`null` or absent) reads as
//! `None` or empty, since traces also arrive from SDKs and OTLP, not only from the
//! server's automatic tracing.

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{ApiError, public_request_json};

/// `null` reads as the type's default (an SDK may send `"tags": null`).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A page of a list route.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
pub struct Paged<T> {
    pub data: Vec<T>,
    pub meta: PageMeta,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageMeta {
    pub page: u64,
    pub limit: u64,
    pub total_items: u64,
    pub total_pages: u64,
}

/// A trace as listed (`observations` and `scores` are ids there; a session's traces
/// carry neither).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub id: String,
    /// RFC 3339.
    pub timestamp: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Seconds.
    #[serde(default)]
    pub latency: Option<f64>,
    #[serde(default)]
    pub total_cost: Option<f64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub observations: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub scores: Vec<String>,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub output: Value,
}

/// One trace with everything in it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceDetail {
    pub id: String,
    pub timestamp: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub latency: Option<f64>,
    #[serde(default)]
    pub total_cost: Option<f64>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default, deserialize_with = "null_as_default")]
    pub observations: Vec<Observation>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub scores: Vec<Score>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub id: String,
    /// `GENERATION`, `SPAN`, `EVENT`, or one of Langfuse's newer kinds (`AGENT`, `TOOL`…).
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    pub start_time: String,
    #[serde(default)]
    pub end_time: Option<String>,
    #[serde(default)]
    pub completion_start_time: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub model_parameters: Value,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default, deserialize_with = "null_as_default")]
    pub usage: Usage,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub status_message: Option<String>,
    #[serde(default)]
    pub parent_observation_id: Option<String>,
    #[serde(default)]
    pub calculated_total_cost: Option<f64>,
    /// Seconds.
    #[serde(default)]
    pub latency: Option<f64>,
    /// Seconds.
    #[serde(default)]
    pub time_to_first_token: Option<f64>,
}

/// Token counts (floats on the wire from some SDKs; shown rounded).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub input: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub output: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub total: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Score {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub string_value: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub data_type: String,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub observation_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    pub id: String,
    pub created_at: String,
    #[serde(default)]
    pub environment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDetail {
    pub id: String,
    pub created_at: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub traces: Vec<TraceSummary>,
}

/// One UTC day of `GET /api/public/metrics/daily`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DailyMetrics {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    #[serde(default)]
    pub count_traces: u64,
    #[serde(default)]
    pub count_observations: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub total_cost: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub usage: Vec<ModelUsage>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub input_usage: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub output_usage: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub total_usage: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub total_cost: f64,
}

/// The trace list's filters; empty strings are no filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceFilters {
    pub user_id: String,
    pub session_id: String,
    pub name: String,
    pub tag: String,
}

impl TraceFilters {
    pub fn is_empty(&self) -> bool {
        [&self.user_id, &self.session_id, &self.name, &self.tag]
            .iter()
            .all(|value| value.trim().is_empty())
    }
}

/// `?key=value&…` with each value percent-encoded; empty values are left out.
fn query(pairs: &[(&str, &str)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter(|(_, value)| !value.trim().is_empty())
        .map(|(key, value)| {
            format!(
                "{key}={}",
                String::from(js_sys::encode_uri_component(value.trim()))
            )
        })
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

fn item_url(collection: &str, id: &str) -> String {
    format!(
        "/api/public/{collection}/{}",
        String::from(js_sys::encode_uri_component(id))
    )
}

pub async fn list_traces(
    filters: &TraceFilters,
    page: u64,
    limit: u64,
) -> Result<Paged<TraceSummary>, ApiError> {
    let (page, limit) = (page.to_string(), limit.to_string());
    let url = format!(
        "/api/public/traces{}",
        query(&[
            ("page", &page),
            ("limit", &limit),
            ("userId", &filters.user_id),
            ("sessionId", &filters.session_id),
            ("name", &filters.name),
            ("tags", &filters.tag),
        ])
    );
    public_request_json("GET", &url, None).await
}

pub async fn get_trace(id: &str) -> Result<TraceDetail, ApiError> {
    public_request_json("GET", &item_url("traces", id), None).await
}

pub async fn list_sessions(page: u64, limit: u64) -> Result<Paged<SessionSummary>, ApiError> {
    let (page, limit) = (page.to_string(), limit.to_string());
    let url = format!(
        "/api/public/sessions{}",
        query(&[("page", &page), ("limit", &limit)])
    );
    public_request_json("GET", &url, None).await
}

pub async fn get_session(id: &str) -> Result<SessionDetail, ApiError> {
    public_request_json("GET", &item_url("sessions", id), None).await
}

/// Daily totals from `from_iso` (RFC 3339) on, oldest first, at most `days` of them.
pub async fn daily_metrics(from_iso: &str, days: u64) -> Result<Paged<DailyMetrics>, ApiError> {
    let days = days.to_string();
    let url = format!(
        "/api/public/metrics/daily{}",
        query(&[("fromTimestamp", from_iso), ("limit", &days)])
    );
    public_request_json("GET", &url, None).await
}

/// A score as `POST /api/public/scores` takes it. Sending the same `id` again replaces
/// the score (the server upserts), so a changed vote does not add a second one.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewScore<'a> {
    pub id: &'a str,
    pub trace_id: &'a str,
    pub name: &'a str,
    pub value: f64,
    pub data_type: &'a str,
}

#[derive(Deserialize)]
struct CreatedScore {
    #[serde(default)]
    id: Option<String>,
}

/// Stores `score`; answers the id the server gave it.
pub async fn create_score(score: &NewScore<'_>) -> Result<Option<String>, ApiError> {
    let body = serde_json::to_string(score)
        .map_err(|error| ApiError::new(format!("encoding the score: {error}")))?;
    let created: CreatedScore =
        public_request_json("POST", "/api/public/scores", Some(&body)).await?;
    Ok(created.id)
}

//! Langfuse's read routes, in its field names: `GET /api/public/traces` (filters: userId,
//! sessionId, name, tags, environment, from/toTimestamp; page and limit),
//! `/traces/{id}` (observations and scores), `/observations`, `/observations/{id}`,
//! `/sessions`, `/sessions/{id}` and `/metrics/daily`.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::api::{authenticate, error};
use super::ingest::parse_time;
use crate::clock::rfc3339_ms;
use crate::config::ProjectConfig;
use crate::state::AppState;
use crate::store::{ObservationFilter, StoredObservation, StoredScore, StoredTrace, TraceFilter};

const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 1000;

/// A query string's pairs; repeated keys (`tags=a&tags=b`) keep every value.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<String>) -> Self {
        let pairs = raw
            .as_deref()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self(pairs)
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            })
            .collect()
    }

    fn time(&self, key: &str) -> Result<Option<i64>, BadQuery> {
        match self.get(key) {
            None => Ok(None),
            Some(text) => parse_time(&text)
                .map(Some)
                .ok_or_else(|| BadQuery(format!("`{key}` must be an ISO-8601 time"))),
        }
    }

    /// `page` (from 1) and `limit`.
    fn page(&self) -> Result<(u64, u64), BadQuery> {
        let number = |key: &str, default: u64| -> Result<u64, BadQuery> {
            match self.get(key) {
                None => Ok(default),
                Some(text) => text
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| BadQuery(format!("`{key}` must be a whole number >= 1"))),
            }
        };
        Ok((
            number("page", 1)?,
            number("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT),
        ))
    }
}

/// A query parameter that does not parse: a 400 naming it.
struct BadQuery(String);

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

fn meta(page: u64, limit: u64, total: u64) -> Value {
    json!({"page": page, "limit": limit, "totalItems": total, "totalPages": total.div_ceil(limit.max(1))})
}

fn environment(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "default".into())
}

fn trace_json(project: &str, t: &StoredTrace) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("id".into(), json!(t.id));
    out.insert("timestamp".into(), json!(rfc3339_ms(t.timestamp)));
    out.insert("name".into(), json!(t.name));
    out.insert("input".into(), t.input.clone().unwrap_or(Value::Null));
    out.insert("output".into(), t.output.clone().unwrap_or(Value::Null));
    out.insert("sessionId".into(), json!(t.session_id));
    out.insert("release".into(), json!(t.release));
    out.insert("version".into(), json!(t.version));
    out.insert("userId".into(), json!(t.user_id));
    out.insert("metadata".into(), t.metadata.clone().unwrap_or(Value::Null));
    out.insert("tags".into(), json!(t.tags));
    out.insert("public".into(), json!(t.public));
    out.insert("environment".into(), json!(environment(&t.environment)));
    out.insert(
        "htmlPath".into(),
        json!(format!("/traces/{}?project={project}", t.id)),
    );
    out.insert("latency".into(), json!(t.latency.unwrap_or(0.0)));
    out.insert("totalCost".into(), json!(t.total_cost));
    out
}

/// Integer entries of a usage-details object (Langfuse's `{str: int}`).
fn int_entries(value: &Option<Value>) -> Map<String, Value> {
    value
        .as_ref()
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.is_u64())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn observation_json(o: &StoredObservation) -> Value {
    let seconds = |from: i64, to: Option<i64>| to.map(|to| (to - from).max(0) as f64 / 1000.0);
    let mut usage_details = int_entries(&o.usage_details);
    for (key, value) in [
        ("input", o.usage_input),
        ("output", o.usage_output),
        ("total", o.usage_total),
    ] {
        if value > 0 || !usage_details.is_empty() {
            usage_details.entry(key).or_insert(json!(value));
        }
    }
    let mut cost_details: Map<String, Value> = o
        .cost_details
        .as_ref()
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if cost_details.is_empty()
        && let Some(total) = o.total_cost()
    {
        cost_details.insert(
            "input".into(),
            json!(o.calculated_input_cost.unwrap_or(0.0)),
        );
        cost_details.insert(
            "output".into(),
            json!(o.calculated_output_cost.unwrap_or(0.0)),
        );
        cost_details.insert("total".into(), json!(total));
    }
    json!({
        "id": o.id,
        "traceId": o.trace_id,
        "type": o.kind,
        "name": o.name,
        "startTime": rfc3339_ms(o.start_time),
        "endTime": o.end_time.map(rfc3339_ms),
        "completionStartTime": o.completion_start_time.map(rfc3339_ms),
        "model": o.model,
        "modelParameters": o.model_parameters,
        "input": o.input,
        "output": o.output,
        "version": o.version,
        "metadata": o.metadata,
        "usage": {"input": o.usage_input, "output": o.usage_output, "total": o.usage_total, "unit": "TOKENS"},
        "usageDetails": usage_details,
        "costDetails": cost_details,
        "level": o.level.clone().unwrap_or_else(|| "DEFAULT".into()),
        "statusMessage": o.status_message,
        "parentObservationId": o.parent_observation_id,
        "promptId": null,
        "environment": environment(&o.environment),
        "calculatedInputCost": o.calculated_input_cost,
        "calculatedOutputCost": o.calculated_output_cost,
        "calculatedTotalCost": o.total_cost(),
        "latency": seconds(o.start_time, o.end_time),
        "timeToFirstToken": seconds(o.start_time, o.completion_start_time),
    })
}

fn score_json(s: &StoredScore) -> Value {
    let time = rfc3339_ms(s.timestamp);
    let mut out = json!({
        "id": s.id,
        "traceId": s.trace_id,
        "sessionId": s.session_id,
        "observationId": s.observation_id,
        "name": s.name,
        "source": s.source,
        "timestamp": time,
        "createdAt": time,
        "updatedAt": time,
        "comment": s.comment,
        "metadata": s.metadata,
        "environment": "default",
        "dataType": s.data_type,
    });
    match s.data_type.as_str() {
        "TEXT" => out["stringValue"] = json!(s.string_value),
        "NUMERIC" => out["value"] = json!(s.value.unwrap_or(0.0)),
        "BOOLEAN" => {
            let value = s.value.unwrap_or(0.0);
            out["value"] = json!(value);
            out["stringValue"] = json!(if value != 0.0 { "True" } else { "False" });
        }
        _ => {
            out["value"] = json!(s.value.unwrap_or(0.0));
            out["stringValue"] = json!(s.string_value.clone().unwrap_or_default());
        }
    }
    out
}

fn trace_filter(query: &Query) -> Result<TraceFilter, BadQuery> {
    Ok(TraceFilter {
        user_id: query.get("userId"),
        session_id: query.get("sessionId"),
        name: query.get("name").or_else(|| query.get("traceName")),
        tags: query.all("tags"),
        from: query.time("fromTimestamp")?,
        to: query.time("toTimestamp")?,
        environment: query.all("environment"),
    })
}

macro_rules! try_response {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(refusal) => return refusal.into_response(),
        }
    };
}

/// The caller's project, once every event acknowledged before this read is queryable
/// (ingestion is answered when logged, and folded into the store soon after).
async fn reading(state: &AppState, headers: &HeaderMap) -> Result<ProjectConfig, Response> {
    let project = authenticate(state, headers).map_err(|r| *r)?;
    state.ledger.writer.caught_up().await;
    Ok(project)
}

pub async fn list_traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let project = try_response!(reading(&state, &headers).await);
    let query = Query::parse(raw);
    let (page, limit) = try_response!(query.page());
    let filter = try_response!(trace_filter(&query));
    match state
        .store
        .list_traces(project.id.clone(), filter, page, limit)
        .await
    {
        Ok((traces, total)) => {
            let data: Vec<Value> = traces
                .iter()
                .map(|t| {
                    let mut out = trace_json(&project.id, t);
                    out.insert("observations".into(), json!(t.observation_ids));
                    out.insert("scores".into(), json!(t.score_ids));
                    Value::Object(out)
                })
                .collect();
            Json(json!({"data": data, "meta": meta(page, limit, total)})).into_response()
        }
        Err(e) => internal(e),
    }
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("trace query failed: {e:#}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed")
}

pub async fn get_trace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let project = try_response!(reading(&state, &headers).await);
    match state.store.get_trace(project.id.clone(), id).await {
        Ok(Some((trace, observations, scores))) => {
            let mut out = trace_json(&project.id, &trace);
            out.insert(
                "observations".into(),
                observations.iter().map(observation_json).collect(),
            );
            out.insert("scores".into(), scores.iter().map(score_json).collect());
            Json(Value::Object(out)).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "Trace not found"),
        Err(e) => internal(e),
    }
}

pub async fn list_observations(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let project = try_response!(reading(&state, &headers).await);
    let query = Query::parse(raw);
    let (page, limit) = try_response!(query.page());
    let filter = ObservationFilter {
        trace_id: query.get("traceId"),
        kind: query.get("type"),
        name: query.get("name"),
        user_id: query.get("userId"),
        parent_observation_id: query.get("parentObservationId"),
        level: query.get("level"),
        from: try_response!(query.time("fromStartTime")),
        to: try_response!(query.time("toStartTime")),
    };
    match state
        .store
        .list_observations(project.id, filter, page, limit)
        .await
    {
        Ok((rows, total)) => Json(json!({
            "data": rows.iter().map(observation_json).collect::<Vec<_>>(),
            "meta": meta(page, limit, total),
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}

pub async fn get_observation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let project = try_response!(reading(&state, &headers).await);
    match state.store.get_observation(project.id, id).await {
        Ok(Some(o)) => Json(observation_json(&o)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "Observation not found"),
        Err(e) => internal(e),
    }
}

pub async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let project = try_response!(reading(&state, &headers).await);
    let query = Query::parse(raw);
    let (page, limit) = try_response!(query.page());
    let from = try_response!(query.time("fromTimestamp"));
    let to = try_response!(query.time("toTimestamp"));
    match state
        .store
        .list_sessions(project.id.clone(), from, to, page, limit)
        .await
    {
        Ok((sessions, total)) => {
            let data: Vec<Value> = sessions
                .iter()
                .map(|(id, created, env)| {
                    json!({"id": id, "createdAt": rfc3339_ms(*created), "projectId": project.id,
                           "environment": environment(env)})
                })
                .collect();
            Json(json!({"data": data, "meta": meta(page, limit, total)})).into_response()
        }
        Err(e) => internal(e),
    }
}

pub async fn get_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let project = try_response!(reading(&state, &headers).await);
    let filter = TraceFilter {
        session_id: Some(id.clone()),
        ..TraceFilter::default()
    };
    match state
        .store
        .list_traces(project.id.clone(), filter, 1, MAX_LIMIT)
        .await
    {
        Ok((traces, _)) if !traces.is_empty() => {
            let created = traces.iter().map(|t| t.timestamp).min().unwrap_or(0);
            let environment = environment(&traces[0].environment);
            let traces: Vec<Value> = traces
                .iter()
                .map(|t| Value::Object(trace_json(&project.id, t)))
                .collect();
            Json(
                json!({"id": id, "createdAt": rfc3339_ms(created), "projectId": project.id,
                        "environment": environment, "traces": traces}),
            )
            .into_response()
        }
        Ok(_) => error(StatusCode::NOT_FOUND, "Session not found"),
        Err(e) => internal(e),
    }
}

pub async fn daily_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let project = try_response!(reading(&state, &headers).await);
    let query = Query::parse(raw);
    let (page, limit) = try_response!(query.page());
    let filter = try_response!(trace_filter(&query));
    match state.store.daily_metrics(project.id, filter).await {
        Ok(days) => {
            let total = days.len() as u64;
            let data: Vec<Value> = days
                .iter()
                .skip(((page - 1) * limit) as usize)
                .take(limit as usize)
                .map(|d| {
                    json!({
                        "date": rfc3339_ms(d.day * 86_400_000)[..10].to_string(),
                        "countTraces": d.count_traces,
                        "countObservations": d.count_observations,
                        "totalCost": d.total_cost,
                        "usage": d.models.iter().map(|m| json!({
                            "model": m.model, "inputUsage": m.input, "outputUsage": m.output,
                            "totalUsage": m.total, "countTraces": m.count_traces,
                            "countObservations": m.count_observations, "totalCost": m.total_cost,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Json(json!({"data": data, "meta": meta(page, limit, total)})).into_response()
        }
        Err(e) => internal(e),
    }
}

//! Traces, observations and scores in Postgres: the same merging upserts, event-id dedupe
//! and reads as the SQLite backend (`../sqlite/traces.rs`), in Postgres' SQL. Tags and
//! JSON columns are TEXT as in SQLite; merges go through JSONB.

use std::collections::HashSet;

use anyhow::Context;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::{Db, rollup};
use crate::pricing::PriceTable;
use crate::store::records::{
    DailyMetrics, Ingest, ModelUsage, ObservationFilter, ObservationUpsert, ScoreUpsert,
    StoredObservation, StoredScore, StoredTrace, TraceEvent, TraceFilter, TraceUpsert,
    add_day_usage, daily_plan, json, own_cost, parsed, reprices, set_day_traces, to_i64,
    token_cost,
};

/// The (project, trace id) pairs known to have a trace row in the writer's current
/// transaction, so that each trace is ensured once per transaction, not per observation.
pub(super) type KnownTraces = std::collections::HashSet<(String, String)>;

/// The (project, trace id) pairs that events in a write batch touched: the traces whose
/// day totals the writer brings up to date after it.
pub(super) fn touched_traces(
    batches: &[&[Ingest]],
) -> std::collections::BTreeSet<(String, String)> {
    let mut touched = std::collections::BTreeSet::new();
    for ingest in batches.iter().flat_map(|b| b.iter()) {
        let trace = match &ingest.event {
            TraceEvent::Trace(t) => Some(&t.id),
            TraceEvent::Observation(o) => Some(&o.trace_id),
            TraceEvent::Score(s) => s.trace_id.as_ref(),
        };
        if let Some(trace) = trace {
            touched.insert((ingest.project.clone(), trace.clone()));
        }
    }
    touched
}

/// Applies events in the caller's transaction; an event whose `event_id` was seen before
/// is skipped.
pub(super) async fn apply(
    tx: &mut PgConnection,
    batch: &[Ingest],
    prices: &PriceTable,
    now: i64,
    known: &mut KnownTraces,
) -> anyhow::Result<()> {
    let mut new_ids = record_event_ids(tx, batch, now).await?;
    for ingest in batch {
        if let Some(event_id) = &ingest.event_id
            && !new_ids.remove(&(ingest.project.clone(), event_id.clone()))
        {
            continue;
        }
        let project = &ingest.project;
        // Times an event leaves out are when it was received, not when it is written.
        let now = ingest.received;
        match &ingest.event {
            TraceEvent::Trace(t) => {
                upsert_trace(tx, project, t, now).await?;
                known.insert((project.clone(), t.id.clone()));
            }
            TraceEvent::Observation(o) => {
                let start = o.start_time.unwrap_or(now);
                ensure_trace(tx, known, project, &o.trace_id, start, now).await?;
                upsert_observation(tx, project, o, prices, now).await?;
            }
            TraceEvent::Score(s) => {
                if let Some(trace_id) = &s.trace_id {
                    ensure_trace(tx, known, project, trace_id, s.timestamp, s.timestamp).await?;
                }
                upsert_score(tx, project, s).await?;
            }
        }
    }
    Ok(())
}

/// Records the batch's event ids in one statement; returns those not seen before (an id
/// twice in the batch is new once: its first event applies, the second is a duplicate).
async fn record_event_ids(
    tx: &mut PgConnection,
    batch: &[Ingest],
    now: i64,
) -> anyhow::Result<HashSet<(String, String)>> {
    let mut unique = HashSet::new();
    let (mut projects, mut ids) = (Vec::new(), Vec::new());
    for ingest in batch {
        if let Some(event_id) = &ingest.event_id
            && unique.insert((ingest.project.as_str(), event_id.as_str()))
        {
            projects.push(ingest.project.as_str());
            ids.push(event_id.as_str());
        }
    }
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::query(
        "INSERT INTO ingested_events (project_id, id, at)
         SELECT project_id, id, $3 FROM UNNEST($1::TEXT[], $2::TEXT[]) AS e(project_id, id)
         ON CONFLICT DO NOTHING
         RETURNING project_id, id",
    )
    .bind(&projects)
    .bind(&ids)
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .context("recording event ids")?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<sqlx::Result<_>>()
        .map_err(Into::into)
}

async fn upsert_trace(
    tx: &mut PgConnection,
    project: &str,
    t: &TraceUpsert,
    now: i64,
) -> anyhow::Result<()> {
    let tags = t
        .tags
        .as_ref()
        .map(|tags| serde_json::Value::from(tags.clone()).to_string());
    sqlx::query(
        "INSERT INTO traces AS t (project_id, id, timestamp, name, user_id, session_id, release,
            version, environment, tags, input, output, metadata, public, updated_at)
         VALUES ($1, $2, COALESCE($3, $15), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (project_id, id) DO UPDATE SET
            timestamp = COALESCE($3, t.timestamp),
            name = COALESCE($4, t.name), user_id = COALESCE($5, t.user_id),
            session_id = COALESCE($6, t.session_id), release = COALESCE($7, t.release),
            version = COALESCE($8, t.version), environment = COALESCE($9, t.environment),
            tags = CASE WHEN $10 IS NULL THEN t.tags ELSE (
                SELECT COALESCE(jsonb_agg(v ORDER BY v), '[]'::JSONB)::TEXT FROM (
                    SELECT jsonb_array_elements_text(COALESCE(t.tags, '[]')::JSONB) AS v
                    UNION SELECT jsonb_array_elements_text($10::JSONB)) AS merged) END,
            input = COALESCE($11, t.input), output = COALESCE($12, t.output),
            metadata = CASE WHEN $13 IS NULL THEN t.metadata
                WHEN t.metadata IS NULL THEN $13
                ELSE agentbox_merge_patch(t.metadata::JSONB, $13::JSONB)::TEXT END,
            public = COALESCE($14, t.public), updated_at = $15",
    )
    .bind(project)
    .bind(&t.id)
    .bind(t.timestamp)
    .bind(&t.name)
    .bind(&t.user_id)
    .bind(&t.session_id)
    .bind(&t.release)
    .bind(&t.version)
    .bind(&t.environment)
    .bind(tags)
    .bind(json(&t.input))
    .bind(json(&t.output))
    .bind(json(&t.metadata))
    .bind(t.public)
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("upserting a trace")?;
    Ok(())
}

/// Makes sure a trace row exists for an observation or score that names one.
async fn ensure_trace(
    tx: &mut PgConnection,
    known: &mut KnownTraces,
    project: &str,
    trace_id: &str,
    timestamp: i64,
    now: i64,
) -> anyhow::Result<()> {
    // A failed insert fails the whole transaction, so the set can be marked first.
    if !known.insert((project.to_string(), trace_id.to_string())) {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO traces (project_id, id, timestamp, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(project)
    .bind(trace_id)
    .bind(timestamp)
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("creating a trace")?;
    Ok(())
}

async fn upsert_observation(
    tx: &mut PgConnection,
    project: &str,
    o: &ObservationUpsert,
    prices: &PriceTable,
    now: i64,
) -> anyhow::Result<()> {
    // The event alone prices a new row; the merged row the upsert returns is priced again
    // below where that differs (model and usage came in separate events).
    let own_cost = own_cost(prices, o, now);
    let merged = sqlx::query(
        "INSERT INTO observations AS o (project_id, id, trace_id, type, parent_observation_id,
            name, start_time, end_time, completion_start_time, model, model_parameters, input,
            output, metadata, level, status_message, version, environment, usage_input,
            usage_output, usage_total, usage_details, cost_details, provided_cost, updated_at,
            calculated_input_cost, calculated_output_cost)
         VALUES ($1, $2, $3, COALESCE($4, 'SPAN'), $5, $6, COALESCE($7, $25), $8, $9, $10, $11,
            $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)
         ON CONFLICT (project_id, id) DO UPDATE SET
            type = COALESCE($4, o.type),
            parent_observation_id = COALESCE($5, o.parent_observation_id),
            name = COALESCE($6, o.name), start_time = COALESCE($7, o.start_time),
            end_time = COALESCE($8, o.end_time),
            completion_start_time = COALESCE($9, o.completion_start_time),
            model = COALESCE($10, o.model), model_parameters = COALESCE($11, o.model_parameters),
            input = COALESCE($12, o.input), output = COALESCE($13, o.output),
            metadata = CASE WHEN $14 IS NULL THEN o.metadata
                WHEN o.metadata IS NULL THEN $14
                ELSE agentbox_merge_patch(o.metadata::JSONB, $14::JSONB)::TEXT END,
            level = COALESCE($15, o.level),
            status_message = COALESCE($16, o.status_message), version = COALESCE($17, o.version),
            environment = COALESCE($18, o.environment),
            usage_input = COALESCE($19, o.usage_input),
            usage_output = COALESCE($20, o.usage_output),
            usage_total = COALESCE($21, o.usage_total),
            usage_details = COALESCE($22, o.usage_details),
            cost_details = COALESCE($23, o.cost_details),
            provided_cost = COALESCE($24, o.provided_cost), updated_at = $25
         RETURNING model, usage_input, usage_output, start_time, calculated_input_cost,
            calculated_output_cost",
    )
    .bind(project)
    .bind(&o.id)
    .bind(&o.trace_id)
    .bind(&o.kind)
    .bind(&o.parent_observation_id)
    .bind(&o.name)
    .bind(o.start_time)
    .bind(o.end_time)
    .bind(o.completion_start_time)
    .bind(&o.model)
    .bind(json(&o.model_parameters))
    .bind(json(&o.input))
    .bind(json(&o.output))
    .bind(json(&o.metadata))
    .bind(&o.level)
    .bind(&o.status_message)
    .bind(&o.version)
    .bind(&o.environment)
    .bind(to_i64(o.usage_input))
    .bind(to_i64(o.usage_output))
    .bind(to_i64(o.usage_total))
    .bind(json(&o.usage_details))
    .bind(json(&o.cost_details))
    .bind(o.provided_cost)
    .bind(now)
    .bind(own_cost.map(|c| c.0))
    .bind(own_cost.map(|c| c.1))
    .fetch_one(&mut *tx)
    .await
    .context("upserting an observation")?;
    if reprices(o)
        && let Some(model) = merged.try_get::<Option<String>, _>(0)?
    {
        let cost = token_cost(
            prices,
            &model,
            merged.try_get(1)?,
            merged.try_get(2)?,
            merged.try_get(3)?,
        );
        let stored: (Option<f64>, Option<f64>) = (merged.try_get(4)?, merged.try_get(5)?);
        if stored != (Some(cost.0), Some(cost.1)) {
            sqlx::query(
                "UPDATE observations SET calculated_input_cost = $3, calculated_output_cost = $4
                 WHERE project_id = $1 AND id = $2",
            )
            .bind(project)
            .bind(&o.id)
            .bind(cost.0)
            .bind(cost.1)
            .execute(&mut *tx)
            .await
            .context("pricing an observation")?;
        }
    }
    Ok(())
}

async fn upsert_score(tx: &mut PgConnection, project: &str, s: &ScoreUpsert) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO scores (project_id, id, trace_id, observation_id, session_id, name, value,
            string_value, data_type, comment, source, timestamp, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (project_id, id) DO UPDATE SET trace_id = EXCLUDED.trace_id,
            observation_id = EXCLUDED.observation_id, session_id = EXCLUDED.session_id,
            name = EXCLUDED.name, value = EXCLUDED.value, string_value = EXCLUDED.string_value,
            data_type = EXCLUDED.data_type, comment = EXCLUDED.comment,
            source = EXCLUDED.source, timestamp = EXCLUDED.timestamp,
            metadata = EXCLUDED.metadata",
    )
    .bind(project)
    .bind(&s.id)
    .bind(&s.trace_id)
    .bind(&s.observation_id)
    .bind(&s.session_id)
    .bind(&s.name)
    .bind(s.value)
    .bind(&s.string_value)
    .bind(&s.data_type)
    .bind(&s.comment)
    .bind(&s.source)
    .bind(s.timestamp)
    .bind(json(&s.metadata))
    .execute(&mut *tx)
    .await
    .context("upserting a score")?;
    Ok(())
}

/// A trace's columns (alias `t`), then its aggregates: first start, last end, cost,
/// observation ids by start, score ids.
const TRACE_SELECT: &str = "SELECT t.id, t.timestamp, t.name, t.user_id, t.session_id,
    t.release, t.version, t.environment, t.tags, t.input, t.output, t.metadata, t.public,
    agg.first_start, agg.last_end, agg.cost, agg.ids,
    (SELECT array_agg(s.id) FROM scores s WHERE s.project_id = t.project_id AND s.trace_id = t.id)
    FROM traces t LEFT JOIN LATERAL (
        SELECT MIN(o.start_time) AS first_start,
            MAX(COALESCE(o.end_time, o.start_time)) AS last_end,
            SUM(COALESCE(o.provided_cost, o.calculated_input_cost + o.calculated_output_cost, 0))
                AS cost,
            array_agg(o.id ORDER BY o.start_time) AS ids
        FROM observations o WHERE o.project_id = t.project_id AND o.trace_id = t.id
    ) agg ON TRUE";

fn trace_from_row(row: &PgRow) -> sqlx::Result<StoredTrace> {
    let tags: Option<String> = row.try_get(8)?;
    let start: Option<i64> = row.try_get(13)?;
    let end: Option<i64> = row.try_get(14)?;
    Ok(StoredTrace {
        id: row.try_get(0)?,
        timestamp: row.try_get(1)?,
        name: row.try_get(2)?,
        user_id: row.try_get(3)?,
        session_id: row.try_get(4)?,
        release: row.try_get(5)?,
        version: row.try_get(6)?,
        environment: row.try_get(7)?,
        tags: tags
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        input: parsed(row.try_get(9)?),
        output: parsed(row.try_get(10)?),
        metadata: parsed(row.try_get(11)?),
        public: row.try_get::<Option<bool>, _>(12)?.unwrap_or(false),
        latency: start.zip(end).map(|(s, e)| (e - s).max(0) as f64 / 1000.0),
        total_cost: row.try_get::<Option<f64>, _>(15)?.unwrap_or(0.0),
        observation_ids: row
            .try_get::<Option<Vec<String>>, _>(16)?
            .unwrap_or_default(),
        score_ids: row
            .try_get::<Option<Vec<String>>, _>(17)?
            .unwrap_or_default(),
    })
}

const OBSERVATION_COLUMNS: &str = "o.id, o.trace_id, o.type, o.parent_observation_id, o.name,
    o.start_time, o.end_time, o.completion_start_time, o.model, o.model_parameters, o.input,
    o.output, o.metadata, o.level, o.status_message, o.version, o.environment, o.usage_input,
    o.usage_output, o.usage_total, o.usage_details, o.cost_details, o.provided_cost,
    o.calculated_input_cost, o.calculated_output_cost";

fn observation_from_row(row: &PgRow) -> sqlx::Result<StoredObservation> {
    let tokens = |i: usize| -> sqlx::Result<u64> {
        Ok(row.try_get::<Option<i64>, _>(i)?.unwrap_or(0).max(0) as u64)
    };
    Ok(StoredObservation {
        id: row.try_get(0)?,
        trace_id: row.try_get(1)?,
        kind: row.try_get(2)?,
        parent_observation_id: row.try_get(3)?,
        name: row.try_get(4)?,
        start_time: row.try_get(5)?,
        end_time: row.try_get(6)?,
        completion_start_time: row.try_get(7)?,
        model: row.try_get(8)?,
        model_parameters: parsed(row.try_get(9)?),
        input: parsed(row.try_get(10)?),
        output: parsed(row.try_get(11)?),
        metadata: parsed(row.try_get(12)?),
        level: row.try_get(13)?,
        status_message: row.try_get(14)?,
        version: row.try_get(15)?,
        environment: row.try_get(16)?,
        usage_input: tokens(17)?,
        usage_output: tokens(18)?,
        usage_total: tokens(19)?,
        usage_details: parsed(row.try_get(20)?),
        cost_details: parsed(row.try_get(21)?),
        provided_cost: row.try_get(22)?,
        calculated_input_cost: row.try_get(23)?,
        calculated_output_cost: row.try_get(24)?,
    })
}

const SCORE_COLUMNS: &str = "s.id, s.trace_id, s.observation_id, s.session_id, s.name, s.value,
    s.string_value, s.data_type, s.comment, s.source, s.timestamp, s.metadata";

fn score_from_row(row: &PgRow) -> sqlx::Result<StoredScore> {
    Ok(StoredScore {
        id: row.try_get(0)?,
        trace_id: row.try_get(1)?,
        observation_id: row.try_get(2)?,
        session_id: row.try_get(3)?,
        name: row.try_get(4)?,
        value: row.try_get(5)?,
        string_value: row.try_get(6)?,
        data_type: row.try_get(7)?,
        comment: row.try_get(8)?,
        source: row.try_get(9)?,
        timestamp: row.try_get(10)?,
        metadata: parsed(row.try_get(11)?),
    })
}

/// Appends `WHERE`'s conditions for a trace filter (on alias `t`).
fn push_trace_filter(q: &mut QueryBuilder<'_, Postgres>, project: &str, f: &TraceFilter) {
    q.push(" WHERE t.project_id = ")
        .push_bind(project.to_string());
    if let Some(v) = &f.user_id {
        q.push(" AND t.user_id = ").push_bind(v.clone());
    }
    if let Some(v) = &f.session_id {
        q.push(" AND t.session_id = ").push_bind(v.clone());
    }
    if let Some(v) = &f.name {
        q.push(" AND t.name = ").push_bind(v.clone());
    }
    if let Some(v) = f.from {
        q.push(" AND t.timestamp >= ").push_bind(v);
    }
    if let Some(v) = f.to {
        q.push(" AND t.timestamp < ").push_bind(v);
    }
    for tag in &f.tags {
        q.push(" AND t.tags IS NOT NULL AND t.tags::JSONB @> jsonb_build_array(")
            .push_bind(tag.clone())
            .push("::TEXT)");
    }
    if !f.environment.is_empty() {
        q.push(" AND COALESCE(t.environment, 'default') = ANY(")
            .push_bind(f.environment.clone())
            .push(")");
    }
}

fn offset(page: u64, limit: u64) -> i64 {
    i64::try_from((page.max(1) - 1).saturating_mul(limit)).unwrap_or(i64::MAX)
}

impl Db {
    pub async fn list_traces(
        &self,
        project: String,
        filter: TraceFilter,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<StoredTrace>, u64)> {
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM traces t");
        push_trace_filter(&mut count, &project, &filter);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .context("counting traces")?;
        let mut select = QueryBuilder::new(TRACE_SELECT);
        push_trace_filter(&mut select, &project, &filter);
        select
            .push(" ORDER BY t.timestamp DESC, t.id LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .push_bind(offset(page, limit));
        let rows = select
            .build()
            .fetch_all(&self.pool)
            .await
            .context("listing traces")?;
        let traces = rows
            .iter()
            .map(trace_from_row)
            .collect::<Result<_, _>>()
            .context("listing traces")?;
        Ok((traces, total.max(0) as u64))
    }

    pub async fn get_trace(
        &self,
        project: String,
        id: String,
    ) -> anyhow::Result<Option<(StoredTrace, Vec<StoredObservation>, Vec<StoredScore>)>> {
        let row = sqlx::query(&format!(
            "{TRACE_SELECT} WHERE t.project_id = $1 AND t.id = $2"
        ))
        .bind(&project)
        .bind(&id)
        .fetch_optional(&self.pool)
        .await
        .context("reading a trace")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let trace = trace_from_row(&row)?;
        let observations = sqlx::query(&format!(
            "SELECT {OBSERVATION_COLUMNS} FROM observations o
             WHERE o.project_id = $1 AND o.trace_id = $2 ORDER BY o.start_time, o.id"
        ))
        .bind(&project)
        .bind(&id)
        .fetch_all(&self.pool)
        .await
        .context("reading a trace's observations")?
        .iter()
        .map(observation_from_row)
        .collect::<Result<_, _>>()?;
        let scores = sqlx::query(&format!(
            "SELECT {SCORE_COLUMNS} FROM scores s
             WHERE s.project_id = $1 AND s.trace_id = $2 ORDER BY s.timestamp"
        ))
        .bind(&project)
        .bind(&id)
        .fetch_all(&self.pool)
        .await
        .context("reading a trace's scores")?
        .iter()
        .map(score_from_row)
        .collect::<Result<_, _>>()?;
        Ok(Some((trace, observations, scores)))
    }

    pub async fn list_observations(
        &self,
        project: String,
        f: ObservationFilter,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<StoredObservation>, u64)> {
        let filter = |q: &mut QueryBuilder<'_, Postgres>| {
            q.push(" WHERE o.project_id = ").push_bind(project.clone());
            if let Some(v) = &f.trace_id {
                q.push(" AND o.trace_id = ").push_bind(v.clone());
            }
            if let Some(v) = &f.kind {
                q.push(" AND o.type = ").push_bind(v.to_ascii_uppercase());
            }
            if let Some(v) = &f.name {
                q.push(" AND o.name = ").push_bind(v.clone());
            }
            if let Some(v) = &f.parent_observation_id {
                q.push(" AND o.parent_observation_id = ")
                    .push_bind(v.clone());
            }
            if let Some(v) = &f.level {
                q.push(" AND o.level = ").push_bind(v.clone());
            }
            if let Some(v) = f.from {
                q.push(" AND o.start_time >= ").push_bind(v);
            }
            if let Some(v) = f.to {
                q.push(" AND o.start_time < ").push_bind(v);
            }
            if let Some(v) = &f.user_id {
                q.push(
                    " AND o.trace_id IN (SELECT id FROM traces WHERE project_id = o.project_id AND user_id = ",
                )
                .push_bind(v.clone())
                .push(")");
            }
        };
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM observations o");
        filter(&mut count);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .context("counting observations")?;
        let mut select =
            QueryBuilder::new(format!("SELECT {OBSERVATION_COLUMNS} FROM observations o"));
        filter(&mut select);
        select
            .push(" ORDER BY o.start_time DESC, o.id LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .push_bind(offset(page, limit));
        let rows = select
            .build()
            .fetch_all(&self.pool)
            .await
            .context("listing observations")?;
        let observations = rows
            .iter()
            .map(observation_from_row)
            .collect::<Result<_, _>>()
            .context("listing observations")?;
        Ok((observations, total.max(0) as u64))
    }

    pub async fn get_observation(
        &self,
        project: String,
        id: String,
    ) -> anyhow::Result<Option<StoredObservation>> {
        let row = sqlx::query(&format!(
            "SELECT {OBSERVATION_COLUMNS} FROM observations o WHERE o.project_id = $1 AND o.id = $2"
        ))
        .bind(project)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("reading an observation")?;
        row.as_ref()
            .map(observation_from_row)
            .transpose()
            .context("reading an observation")
    }

    pub async fn list_sessions(
        &self,
        project: String,
        from: Option<i64>,
        to: Option<i64>,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<(String, i64, Option<String>)>, u64)> {
        let filter = "project_id = $1 AND session_id IS NOT NULL
            AND ($2::BIGINT IS NULL OR timestamp >= $2) AND ($3::BIGINT IS NULL OR timestamp < $3)";
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(DISTINCT session_id) FROM traces WHERE {filter}"
        ))
        .bind(&project)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await
        .context("counting sessions")?;
        let rows = sqlx::query(&format!(
            "SELECT session_id, MIN(timestamp), MAX(environment) FROM traces WHERE {filter}
             GROUP BY session_id ORDER BY MIN(timestamp) DESC, session_id LIMIT $4 OFFSET $5"
        ))
        .bind(&project)
        .bind(from)
        .bind(to)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(offset(page, limit))
        .fetch_all(&self.pool)
        .await
        .context("listing sessions")?;
        let sessions = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<sqlx::Result<_>>()
            .context("listing sessions")?;
        Ok((sessions, total.max(0) as u64))
    }

    pub async fn daily_metrics(
        &self,
        project: String,
        filter: TraceFilter,
    ) -> anyhow::Result<Vec<DailyMetrics>> {
        let plan = daily_plan(&filter);
        let mut days = match plan.whole_days {
            Some((first, end)) => rollup::days(&self.pool, &project, first, end).await?,
            None => Default::default(),
        };
        for scan in &plan.scans {
            days.extend(self.scan_days(&project, scan).await?);
        }
        Ok(days.into_values().rev().collect())
    }

    /// Daily metrics computed from the rows.
    async fn scan_days(
        &self,
        project: &str,
        filter: &TraceFilter,
    ) -> anyhow::Result<std::collections::BTreeMap<i64, DailyMetrics>> {
        let mut days: std::collections::BTreeMap<i64, DailyMetrics> =
            std::collections::BTreeMap::new();
        let mut per_day =
            QueryBuilder::new("SELECT t.timestamp / 86400000, COUNT(*) FROM traces t");
        push_trace_filter(&mut per_day, project, filter);
        per_day.push(" GROUP BY 1");
        for row in per_day
            .build()
            .fetch_all(&self.pool)
            .await
            .context("counting traces per day")?
        {
            let day: i64 = row.try_get(0)?;
            set_day_traces(&mut days, day, row.try_get::<i64, _>(1)?.max(0) as u64);
        }
        let mut per_model = QueryBuilder::new(
            "SELECT t.timestamp / 86400000, o.model, COUNT(*), COUNT(DISTINCT o.trace_id),
                SUM(COALESCE(o.usage_input, 0))::BIGINT, SUM(COALESCE(o.usage_output, 0))::BIGINT,
                SUM(COALESCE(o.usage_total, 0))::BIGINT,
                SUM(COALESCE(o.provided_cost, o.calculated_input_cost + o.calculated_output_cost, 0))
             FROM traces t JOIN observations o
               ON o.project_id = t.project_id AND o.trace_id = t.id",
        );
        push_trace_filter(&mut per_model, project, filter);
        per_model.push(" GROUP BY 1, 2");
        for row in per_model
            .build()
            .fetch_all(&self.pool)
            .await
            .context("summing usage per day and model")?
        {
            let day: i64 = row.try_get(0)?;
            let count = |i: usize| -> sqlx::Result<u64> {
                Ok(row.try_get::<Option<i64>, _>(i)?.unwrap_or(0).max(0) as u64)
            };
            let usage = ModelUsage {
                model: row.try_get(1)?,
                count_observations: count(2)?,
                count_traces: count(3)?,
                input: count(4)?,
                output: count(5)?,
                total: count(6)?,
                total_cost: row.try_get::<Option<f64>, _>(7)?.unwrap_or(0.0),
            };
            add_day_usage(&mut days, day, usage);
        }
        Ok(days)
    }

    /// Blocking: the retention thread calls it.
    pub fn prune_traces(&self, before: i64, chunk: usize) -> anyhow::Result<usize> {
        self.block_on(async {
            let mut tx = self.pool.begin().await?;
            let doomed =
                sqlx::query("SELECT project_id, id FROM traces WHERE timestamp < $1 LIMIT $2")
                    .bind(before)
                    .bind(i64::try_from(chunk).unwrap_or(i64::MAX))
                    .fetch_all(&mut *tx)
                    .await?;
            let mut projects = Vec::with_capacity(doomed.len());
            let mut ids = Vec::with_capacity(doomed.len());
            for row in &doomed {
                projects.push(row.try_get::<String, _>(0)?);
                ids.push(row.try_get::<String, _>(1)?);
            }
            rollup::forget(&mut tx, &projects, &ids).await?;
            let deleted = sqlx::query(
                "WITH doomed AS (
                    SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) AS d(project_id, id)
                 ), gone_observations AS (
                    DELETE FROM observations o USING doomed d
                    WHERE o.project_id = d.project_id AND o.trace_id = d.id
                 ), gone_scores AS (
                    DELETE FROM scores s USING doomed d
                    WHERE s.project_id = d.project_id AND s.trace_id = d.id
                 )
                 DELETE FROM traces t USING doomed d
                 WHERE t.project_id = d.project_id AND t.id = d.id",
            )
            .bind(&projects)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected() as usize;
            if deleted < chunk {
                sqlx::query("DELETE FROM ingested_events WHERE at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await.context("pruning traces")?;
            Ok(deleted)
        })
    }
}

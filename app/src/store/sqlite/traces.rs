//! Traces, observations and scores (Langfuse's model) in SQLite: upserts that merge
//! partial events (a field an event leaves out keeps its stored value), event-id dedupe,
//! and the reads behind Langfuse's public API. Writes go through the store's writer
//! thread (`writer.rs`), in one transaction per batch; times are Unix milliseconds.

use anyhow::Context;
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::Value;

use super::rollup::{self, BatchTraces};
use crate::pricing::PriceTable;
use crate::store::records::{
    DailyMetrics, Ingest, ModelUsage, ObservationFilter, ObservationUpsert, ScoreUpsert,
    StoredObservation, StoredScore, StoredTrace, TraceEvent, TraceFilter, TraceUpsert,
    add_day_usage, daily_plan, json, own_cost, parsed, reprices, set_day_traces, to_i64,
    token_cost,
};

/// Applies events in the caller's transaction; an event whose `event_id` was seen before
/// is skipped.
pub(super) fn apply(
    tx: &Transaction<'_>,
    batch: &[Ingest],
    prices: &PriceTable,
    now: i64,
    traces: &mut BatchTraces,
) -> anyhow::Result<()> {
    let mut seen = tx.prepare_cached(
        "INSERT OR IGNORE INTO ingested_events (project_id, id, at) VALUES (?1, ?2, ?3)",
    )?;
    for ingest in batch {
        if let Some(event_id) = &ingest.event_id
            && seen.execute(params![ingest.project, event_id, now])? == 0
        {
            continue;
        }
        let project = &ingest.project;
        // Times an event leaves out are when it was received, not when it is written.
        let now = ingest.received;
        match &ingest.event {
            TraceEvent::Trace(t) => {
                traces.first_mention(project, &t.id);
                if upsert_trace(tx, project, t, now)? {
                    traces.created(project, &t.id, t.timestamp.unwrap_or(now));
                } else if t.timestamp.is_some() {
                    // The trace may move to another day.
                    traces.changed(project, &t.id);
                }
            }
            TraceEvent::Observation(o) => {
                let start = o.start_time.unwrap_or(now);
                ensure_trace(tx, traces, project, &o.trace_id, start, now)?;
                match upsert_observation(tx, project, o, prices, now)? {
                    Written::Inserted { cost } => {
                        let tokens = [o.usage_input, o.usage_output, o.usage_total].map(to_i64);
                        traces.observed(project, &o.trace_id, o.model.as_deref(), tokens, cost);
                    }
                    Written::Updated => traces.changed(project, &o.trace_id),
                }
            }
            TraceEvent::Score(s) => {
                // Scores add nothing to the day totals; a trace they create counts.
                if let Some(trace_id) = &s.trace_id {
                    ensure_trace(tx, traces, project, trace_id, s.timestamp, s.timestamp)?;
                }
                upsert_score(tx, project, s)?;
            }
        }
    }
    Ok(())
}

/// Inserts or merges a trace; whether it was new.
fn upsert_trace(
    tx: &Transaction<'_>,
    project: &str,
    t: &TraceUpsert,
    now: i64,
) -> anyhow::Result<bool> {
    let tags = t
        .tags
        .as_ref()
        .map(|tags| Value::from(tags.clone()).to_string());
    let values = params![
        project,
        t.id,
        t.timestamp,
        t.name,
        t.user_id,
        t.session_id,
        t.release,
        t.version,
        t.environment,
        tags,
        json(&t.input),
        json(&t.output),
        json(&t.metadata),
        t.public,
        now
    ];
    // A new trace is one plain insert (see `upsert_observation`); a known one is merged.
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO traces (project_id, id, timestamp, name, user_id, session_id,
                release, version, environment, tags, input, output, metadata, public, updated_at)
             VALUES (?1, ?2, COALESCE(?3, ?15), ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                ?15)",
        )?
        .execute(values)
        .context("inserting a trace")?;
    if inserted == 1 {
        return Ok(true);
    }
    tx.prepare_cached(
        "UPDATE traces SET
            timestamp = COALESCE(?3, timestamp),
            name = COALESCE(?4, name), user_id = COALESCE(?5, user_id),
            session_id = COALESCE(?6, session_id), release = COALESCE(?7, release),
            version = COALESCE(?8, version), environment = COALESCE(?9, environment),
            tags = CASE WHEN ?10 IS NULL THEN tags ELSE (
                SELECT json_group_array(value) FROM (
                    SELECT value FROM json_each(COALESCE(tags, '[]'))
                    UNION SELECT value FROM json_each(?10) ORDER BY value)) END,
            input = COALESCE(?11, input), output = COALESCE(?12, output),
            metadata = CASE WHEN ?13 IS NULL THEN metadata
                WHEN metadata IS NULL THEN ?13 ELSE json_patch(metadata, ?13) END,
            public = COALESCE(?14, public), updated_at = ?15
         WHERE project_id = ?1 AND id = ?2",
    )?
    .execute(values)
    .context("updating a trace")?;
    Ok(false)
}

/// Makes sure a trace row exists for an observation or score that names one.
fn ensure_trace(
    tx: &Transaction<'_>,
    traces: &mut BatchTraces,
    project: &str,
    trace_id: &str,
    timestamp: i64,
    now: i64,
) -> anyhow::Result<()> {
    // A failed insert fails the whole transaction, so the trace can be marked first.
    if !traces.first_mention(project, trace_id) {
        return Ok(());
    }
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO traces (project_id, id, timestamp, updated_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![project, trace_id, timestamp, now])?;
    if inserted == 1 {
        traces.created(project, trace_id, timestamp);
    }
    Ok(())
}

/// How an observation was written.
enum Written {
    /// A new row, adding this cost.
    Inserted { cost: f64 },
    /// Merged into the stored row.
    Updated,
}

fn upsert_observation(
    tx: &Transaction<'_>,
    project: &str,
    o: &ObservationUpsert,
    prices: &PriceTable,
    now: i64,
) -> anyhow::Result<Written> {
    // A new observation (the usual case) is one plain insert, priced by the event alone.
    // `OR IGNORE` only meets the primary key here (every NOT NULL column is bound or
    // defaulted), and it spares SQLite the statement journal and the RETURNING table an
    // upsert needs.
    let own_cost = own_cost(prices, o, now);
    // ?1..?24 are what the merging update sets too; the insert alone adds ?25..?27.
    let values = params![
        project,
        o.id,
        o.kind,
        o.parent_observation_id,
        o.name,
        o.start_time,
        o.end_time,
        o.completion_start_time,
        o.model,
        json(&o.model_parameters),
        json(&o.input),
        json(&o.output),
        json(&o.metadata),
        o.level,
        o.status_message,
        o.version,
        o.environment,
        to_i64(o.usage_input),
        to_i64(o.usage_output),
        to_i64(o.usage_total),
        json(&o.usage_details),
        json(&o.cost_details),
        o.provided_cost,
        now,
        o.trace_id,
        own_cost.map(|c| c.0),
        own_cost.map(|c| c.1),
    ];
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO observations (project_id, id, trace_id, type,
                parent_observation_id, name, start_time, end_time, completion_start_time, model,
                model_parameters, input, output, metadata, level, status_message, version,
                environment, usage_input, usage_output, usage_total, usage_details, cost_details,
                provided_cost, updated_at, calculated_input_cost, calculated_output_cost)
             VALUES (?1, ?2, ?25, COALESCE(?3, 'SPAN'), ?4, ?5, COALESCE(?6, ?24), ?7, ?8, ?9,
                ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?26,
                ?27)",
        )?
        .execute(values)
        .context("inserting an observation")?;
    if inserted == 1 {
        // What the day totals add for it, as `rollup.rs` sums stored rows.
        let cost = o
            .provided_cost
            .or(own_cost.map(|(input, output)| input + output));
        return Ok(Written::Inserted {
            cost: cost.unwrap_or(0.0),
        });
    }
    // An update merges into the stored row (a field the event leaves out keeps its value);
    // the merged row is priced again where model and usage came in separate events.
    // (model, input tokens, output tokens, start time, calculated input and output cost)
    type Merged = (
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
        Option<f64>,
        Option<f64>,
    );
    let merged: Merged = tx
        .prepare_cached(
            "UPDATE observations SET
                type = COALESCE(?3, type),
                parent_observation_id = COALESCE(?4, parent_observation_id),
                name = COALESCE(?5, name), start_time = COALESCE(?6, start_time),
                end_time = COALESCE(?7, end_time),
                completion_start_time = COALESCE(?8, completion_start_time),
                model = COALESCE(?9, model), model_parameters = COALESCE(?10, model_parameters),
                input = COALESCE(?11, input), output = COALESCE(?12, output),
                metadata = CASE WHEN ?13 IS NULL THEN metadata
                    WHEN metadata IS NULL THEN ?13 ELSE json_patch(metadata, ?13) END,
                level = COALESCE(?14, level),
                status_message = COALESCE(?15, status_message), version = COALESCE(?16, version),
                environment = COALESCE(?17, environment),
                usage_input = COALESCE(?18, usage_input), usage_output = COALESCE(?19, usage_output),
                usage_total = COALESCE(?20, usage_total),
                usage_details = COALESCE(?21, usage_details),
                cost_details = COALESCE(?22, cost_details),
                provided_cost = COALESCE(?23, provided_cost), updated_at = ?24
             WHERE project_id = ?1 AND id = ?2
             RETURNING model, usage_input, usage_output, start_time, calculated_input_cost,
                calculated_output_cost",
        )?
        .query_row(
            &values[..24],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .context("updating an observation")?;
    let (model, input, output, start, input_cost, output_cost) = merged;
    if let (true, Some(model)) = (reprices(o), model) {
        let cost = token_cost(prices, &model, input, output, start);
        if (input_cost, output_cost) != (Some(cost.0), Some(cost.1)) {
            tx.prepare_cached(
                "UPDATE observations SET calculated_input_cost = ?3, calculated_output_cost = ?4
                 WHERE project_id = ?1 AND id = ?2",
            )?
            .execute(params![project, o.id, cost.0, cost.1])?;
        }
    }
    Ok(Written::Updated)
}

fn upsert_score(tx: &Transaction<'_>, project: &str, s: &ScoreUpsert) -> anyhow::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO scores (project_id, id, trace_id, observation_id, session_id,
            name, value, string_value, data_type, comment, source, timestamp, metadata)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        project,
        s.id,
        s.trace_id,
        s.observation_id,
        s.session_id,
        s.name,
        s.value,
        s.string_value,
        s.data_type,
        s.comment,
        s.source,
        s.timestamp,
        json(&s.metadata)
    ])
    .context("upserting a score")?;
    Ok(())
}

const TRACE_COLUMNS: &str =
    "t.id, t.timestamp, t.name, t.user_id, t.session_id, t.release, t.version,
    t.environment, t.tags, t.input, t.output, t.metadata, t.public";

fn trace_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredTrace> {
    let tags: Option<String> = row.get(8)?;
    Ok(StoredTrace {
        id: row.get(0)?,
        timestamp: row.get(1)?,
        name: row.get(2)?,
        user_id: row.get(3)?,
        session_id: row.get(4)?,
        release: row.get(5)?,
        version: row.get(6)?,
        environment: row.get(7)?,
        tags: tags
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        input: parsed(row.get(9)?),
        output: parsed(row.get(10)?),
        metadata: parsed(row.get(11)?),
        public: row.get::<_, Option<bool>>(12)?.unwrap_or(false),
        ..StoredTrace::default()
    })
}

const OBSERVATION_COLUMNS: &str = "o.id, o.trace_id, o.type, o.parent_observation_id, o.name,
    o.start_time, o.end_time, o.completion_start_time, o.model, o.model_parameters, o.input,
    o.output, o.metadata, o.level, o.status_message, o.version, o.environment, o.usage_input,
    o.usage_output, o.usage_total, o.usage_details, o.cost_details, o.provided_cost,
    o.calculated_input_cost, o.calculated_output_cost";

fn observation_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredObservation> {
    let tokens = |i: usize| -> rusqlite::Result<u64> {
        Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    Ok(StoredObservation {
        id: row.get(0)?,
        trace_id: row.get(1)?,
        kind: row.get(2)?,
        parent_observation_id: row.get(3)?,
        name: row.get(4)?,
        start_time: row.get(5)?,
        end_time: row.get(6)?,
        completion_start_time: row.get(7)?,
        model: row.get(8)?,
        model_parameters: parsed(row.get(9)?),
        input: parsed(row.get(10)?),
        output: parsed(row.get(11)?),
        metadata: parsed(row.get(12)?),
        level: row.get(13)?,
        status_message: row.get(14)?,
        version: row.get(15)?,
        environment: row.get(16)?,
        usage_input: tokens(17)?,
        usage_output: tokens(18)?,
        usage_total: tokens(19)?,
        usage_details: parsed(row.get(20)?),
        cost_details: parsed(row.get(21)?),
        provided_cost: row.get(22)?,
        calculated_input_cost: row.get(23)?,
        calculated_output_cost: row.get(24)?,
    })
}

const SCORE_COLUMNS: &str = "s.id, s.trace_id, s.observation_id, s.session_id, s.name, s.value,
    s.string_value, s.data_type, s.comment, s.source, s.timestamp, s.metadata";

fn score_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredScore> {
    Ok(StoredScore {
        id: row.get(0)?,
        trace_id: row.get(1)?,
        observation_id: row.get(2)?,
        session_id: row.get(3)?,
        name: row.get(4)?,
        value: row.get(5)?,
        string_value: row.get(6)?,
        data_type: row.get(7)?,
        comment: row.get(8)?,
        source: row.get(9)?,
        timestamp: row.get(10)?,
        metadata: parsed(row.get(11)?),
    })
}

/// The cost of an observation row in SQL, as `StoredObservation::total_cost`.
const COST: &str =
    "COALESCE(o.provided_cost, o.calculated_input_cost + o.calculated_output_cost, 0)";

/// `WHERE` clause and parameters for a trace filter (on alias `t`).
fn trace_where(project: &str, f: &TraceFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as Sql;
    let mut clause = String::from("t.project_id = ?");
    let mut values = vec![Sql::Text(project.to_string())];
    let mut add = |sql: &str, value: Sql| {
        clause.push_str(sql);
        values.push(value);
    };
    if let Some(v) = &f.user_id {
        add(" AND t.user_id = ?", Sql::Text(v.clone()));
    }
    if let Some(v) = &f.session_id {
        add(" AND t.session_id = ?", Sql::Text(v.clone()));
    }
    if let Some(v) = &f.name {
        add(" AND t.name = ?", Sql::Text(v.clone()));
    }
    if let Some(v) = f.from {
        add(" AND t.timestamp >= ?", Sql::Integer(v));
    }
    if let Some(v) = f.to {
        add(" AND t.timestamp < ?", Sql::Integer(v));
    }
    for tag in &f.tags {
        add(
            " AND EXISTS (SELECT 1 FROM json_each(t.tags) WHERE json_each.value = ?)",
            Sql::Text(tag.clone()),
        );
    }
    if !f.environment.is_empty() {
        let marks = vec!["?"; f.environment.len()].join(", ");
        clause.push_str(&format!(
            " AND COALESCE(t.environment, 'default') IN ({marks})"
        ));
        values.extend(f.environment.iter().cloned().map(Sql::Text));
    }
    (clause, values)
}

impl super::Db {
    /// A page of traces, newest first, and how many match in all.
    pub async fn list_traces(
        &self,
        project: String,
        filter: TraceFilter,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<StoredTrace>, u64)> {
        self.with_connection(move |c| {
            let (clause, values) = trace_where(&project, &filter);
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(*) FROM traces t WHERE {clause}"),
                rusqlite::params_from_iter(values.iter()),
                |r| r.get(0),
            )?;
            let mut statement = c.prepare(&format!(
                "SELECT {TRACE_COLUMNS} FROM traces t WHERE {clause}
                 ORDER BY t.timestamp DESC, t.id LIMIT {limit} OFFSET {}",
                (page.max(1) - 1) * limit
            ))?;
            let mut traces = statement
                .query_map(rusqlite::params_from_iter(values.iter()), trace_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            for trace in &mut traces {
                add_aggregates(c, &project, trace)?;
            }
            Ok((traces, total.max(0) as u64))
        })
        .await
        .context("listing traces")
    }

    /// One trace with its observations (by start time) and scores.
    pub async fn get_trace(
        &self,
        project: String,
        id: String,
    ) -> anyhow::Result<Option<(StoredTrace, Vec<StoredObservation>, Vec<StoredScore>)>> {
        self.with_connection(move |c| {
            let trace = c
                .prepare_cached(&format!(
                    "SELECT {TRACE_COLUMNS} FROM traces t WHERE t.project_id = ?1 AND t.id = ?2"
                ))?
                .query_row(params![project, id], trace_from_row)
                .optional()?;
            let Some(mut trace) = trace else {
                return Ok(None);
            };
            add_aggregates(c, &project, &mut trace)?;
            let observations = c
                .prepare_cached(&format!(
                    "SELECT {OBSERVATION_COLUMNS} FROM observations o INDEXED BY observations_by_trace
                     WHERE o.project_id = ?1 AND o.trace_id = ?2 ORDER BY o.start_time, o.id"
                ))?
                .query_map(params![project, id], observation_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let scores = c
                .prepare_cached(&format!(
                    "SELECT {SCORE_COLUMNS} FROM scores s
                     WHERE s.project_id = ?1 AND s.trace_id = ?2 ORDER BY s.timestamp"
                ))?
                .query_map(params![project, id], score_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((trace, observations, scores)))
        })
        .await
        .context("reading a trace")
    }

    /// A page of observations, newest first, and how many match in all.
    pub async fn list_observations(
        &self,
        project: String,
        f: ObservationFilter,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<StoredObservation>, u64)> {
        use rusqlite::types::Value as Sql;
        self.with_connection(move |c| {
            let mut clause = String::from("o.project_id = ?");
            let mut values = vec![Sql::Text(project.clone())];
            let mut add = |sql: &str, value: Sql| {
                clause.push_str(sql);
                values.push(value);
            };
            if let Some(v) = &f.trace_id {
                add(" AND o.trace_id = ?", Sql::Text(v.clone()));
            }
            if let Some(v) = &f.kind {
                add(" AND o.type = ?", Sql::Text(v.to_ascii_uppercase()));
            }
            if let Some(v) = &f.name {
                add(" AND o.name = ?", Sql::Text(v.clone()));
            }
            if let Some(v) = &f.parent_observation_id {
                add(" AND o.parent_observation_id = ?", Sql::Text(v.clone()));
            }
            if let Some(v) = &f.level {
                add(" AND o.level = ?", Sql::Text(v.clone()));
            }
            if let Some(v) = f.from {
                add(" AND o.start_time >= ?", Sql::Integer(v));
            }
            if let Some(v) = f.to {
                add(" AND o.start_time < ?", Sql::Integer(v));
            }
            if let Some(v) = &f.user_id {
                add(
                    " AND o.trace_id IN (SELECT id FROM traces WHERE project_id = o.project_id AND user_id = ?)",
                    Sql::Text(v.clone()),
                );
            }
            // Without statistics SQLite may scan the primary key: name the index.
            let index = if f.trace_id.is_some() {
                "observations_by_trace"
            } else {
                "observations_by_time"
            };
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(*) FROM observations o INDEXED BY {index} WHERE {clause}"),
                rusqlite::params_from_iter(values.iter()),
                |r| r.get(0),
            )?;
            let mut statement = c.prepare(&format!(
                "SELECT {OBSERVATION_COLUMNS} FROM observations o INDEXED BY {index} WHERE {clause}
                 ORDER BY o.start_time DESC, o.id LIMIT {limit} OFFSET {}",
                (page.max(1) - 1) * limit
            ))?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values.iter()), observation_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((rows, total.max(0) as u64))
        })
        .await
        .context("listing observations")
    }

    pub async fn get_observation(
        &self,
        project: String,
        id: String,
    ) -> anyhow::Result<Option<StoredObservation>> {
        self.with_connection(move |c| {
            c.prepare_cached(&format!(
                "SELECT {OBSERVATION_COLUMNS} FROM observations o WHERE o.project_id = ?1 AND o.id = ?2"
            ))?
            .query_row(params![project, id], observation_from_row)
            .optional()
            .context("reading an observation")
        })
        .await
    }

    /// Sessions (id, first trace time, environment), newest first, and their count.
    pub async fn list_sessions(
        &self,
        project: String,
        from: Option<i64>,
        to: Option<i64>,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<(String, i64, Option<String>)>, u64)> {
        self.with_connection(move |c| {
            let filter = "project_id = ?1 AND session_id IS NOT NULL
                AND (?2 IS NULL OR timestamp >= ?2) AND (?3 IS NULL OR timestamp < ?3)";
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(DISTINCT session_id) FROM traces WHERE {filter}"),
                params![project, from, to],
                |r| r.get(0),
            )?;
            let mut statement = c.prepare_cached(&format!(
                "SELECT session_id, MIN(timestamp), MAX(environment) FROM traces WHERE {filter}
                 GROUP BY session_id ORDER BY MIN(timestamp) DESC LIMIT ?4 OFFSET ?5"
            ))?;
            let rows = statement
                .query_map(
                    params![
                        project,
                        from,
                        to,
                        limit as i64,
                        ((page.max(1) - 1) * limit) as i64
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((rows, total.max(0) as u64))
        })
        .await
        .context("listing sessions")
    }

    /// Per day (newest first): traces, observations, cost, and usage per model, over the
    /// traces the filter keeps.
    pub async fn daily_metrics(
        &self,
        project: String,
        filter: TraceFilter,
    ) -> anyhow::Result<Vec<DailyMetrics>> {
        self.with_connection(move |c| {
            let plan = daily_plan(&filter);
            let mut days = match plan.whole_days {
                Some((first, end)) => rollup::days(c, &project, first, end)?,
                None => Default::default(),
            };
            for scan in &plan.scans {
                days.extend(scan_days(c, &project, scan)?);
            }
            Ok(days.into_values().rev().collect())
        })
        .await
        .context("computing daily metrics")
    }

    /// Deletes up to `chunk` traces older than `before`, with their observations and
    /// scores, in one short transaction; returns how many traces went.
    pub fn prune_traces(&self, before: i64, chunk: usize) -> anyhow::Result<usize> {
        let mut connection = self.connection.lock();
        let tx = connection.transaction()?;
        let doomed: Vec<(String, String)> = tx
            .prepare_cached("SELECT project_id, id FROM traces WHERE timestamp < ?1 LIMIT ?2")?
            .query_map(params![before, chunk as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        for (project, id) in &doomed {
            rollup::forget(&tx, project, id)?;
            tx.execute(
                "DELETE FROM observations WHERE project_id = ?1 AND trace_id = ?2",
                params![project, id],
            )?;
            tx.execute(
                "DELETE FROM scores WHERE project_id = ?1 AND trace_id = ?2",
                params![project, id],
            )?;
            tx.execute(
                "DELETE FROM traces WHERE project_id = ?1 AND id = ?2",
                params![project, id],
            )?;
        }
        if doomed.len() < chunk {
            tx.execute("DELETE FROM ingested_events WHERE at < ?1", [before])?;
        }
        tx.commit().context("pruning traces")?;
        Ok(doomed.len())
    }
}

/// Daily metrics computed from the rows (trace filter `f`), keyed by day.
fn scan_days(
    c: &rusqlite::Connection,
    project: &str,
    f: &TraceFilter,
) -> rusqlite::Result<std::collections::BTreeMap<i64, DailyMetrics>> {
    let (clause, values) = trace_where(project, f);
    let mut days: std::collections::BTreeMap<i64, DailyMetrics> = std::collections::BTreeMap::new();
    let mut per_day = c.prepare(&format!(
        "SELECT t.timestamp / 86400000, COUNT(*) FROM traces t WHERE {clause} GROUP BY 1"
    ))?;
    let rows = per_day.query_map(rusqlite::params_from_iter(values.iter()), |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (day, count) = row?;
        set_day_traces(&mut days, day, count.max(0) as u64);
    }
    let mut per_model = c.prepare(&format!(
        "SELECT t.timestamp / 86400000, o.model, COUNT(*), COUNT(DISTINCT o.trace_id),
                    SUM(COALESCE(o.usage_input, 0)), SUM(COALESCE(o.usage_output, 0)),
                    SUM(COALESCE(o.usage_total, 0)), SUM({COST})
             FROM traces t JOIN observations o INDEXED BY observations_by_trace
               ON o.project_id = t.project_id AND o.trace_id = t.id
             WHERE {clause} GROUP BY 1, 2"
    ))?;
    let rows = per_model.query_map(rusqlite::params_from_iter(values.iter()), |r| {
        Ok((
            r.get::<_, i64>(0)?,
            ModelUsage {
                model: r.get(1)?,
                count_observations: r.get::<_, i64>(2)?.max(0) as u64,
                count_traces: r.get::<_, i64>(3)?.max(0) as u64,
                input: r.get::<_, i64>(4)?.max(0) as u64,
                output: r.get::<_, i64>(5)?.max(0) as u64,
                total: r.get::<_, i64>(6)?.max(0) as u64,
                total_cost: r.get::<_, Option<f64>>(7)?.unwrap_or(0.0),
            },
        ))
    })?;
    for row in rows {
        let (day, usage) = row?;
        add_day_usage(&mut days, day, usage);
    }
    Ok(days)
}

/// Fills a trace's latency, cost, observation and score ids.
fn add_aggregates(
    c: &rusqlite::Connection,
    project: &str,
    trace: &mut StoredTrace,
) -> rusqlite::Result<()> {
    let (start, end, cost): (Option<i64>, Option<i64>, Option<f64>) = c
        .prepare_cached(&format!(
            "SELECT MIN(o.start_time), MAX(COALESCE(o.end_time, o.start_time)), SUM({COST})
             FROM observations o INDEXED BY observations_by_trace
             WHERE o.project_id = ?1 AND o.trace_id = ?2"
        ))?
        .query_row(params![project, trace.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    trace.latency = start.zip(end).map(|(s, e)| (e - s).max(0) as f64 / 1000.0);
    trace.total_cost = cost.unwrap_or(0.0);
    trace.observation_ids = c
        .prepare_cached("SELECT id FROM observations WHERE project_id = ?1 AND trace_id = ?2 ORDER BY start_time")?
        .query_map(params![project, trace.id], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    trace.score_ids = c
        .prepare_cached("SELECT id FROM scores WHERE project_id = ?1 AND trace_id = ?2")?
        .query_map(params![project, trace.id], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

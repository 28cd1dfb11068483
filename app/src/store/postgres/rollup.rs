//! Daily metrics without scanning observations, as on SQLite (`../sqlite/rollup.rs`): the
//! same tables (`trace_usage`, `daily_usage`, `daily_traces`, `traces.rollup_day`) kept by
//! the writer. Here each step is one set-based statement over all the traces a batch
//! touched, so that a batch costs a few round trips, not a few per trace: a trace's old
//! contributions are deleted and subtracted from their days, its new ones computed from
//! its observations, inserted and added. Days are UTC days of the trace's timestamp.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use sqlx::{PgConnection, PgPool, Row};

use crate::store::records::{DailyMetrics, add_day_usage, rolled_up_usage, set_day_traces};

/// Migration 5: the rollup tables, filled from what is stored already.
pub const MIGRATION: &str = "
    ALTER TABLE traces ADD COLUMN rollup_day BIGINT;
    CREATE TABLE trace_usage (
        project_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        model TEXT NOT NULL,
        day BIGINT NOT NULL,
        observations BIGINT NOT NULL,
        input BIGINT NOT NULL,
        output BIGINT NOT NULL,
        total BIGINT NOT NULL,
        cost DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (project_id, trace_id, model)
    );
    CREATE TABLE daily_usage (
        project_id TEXT NOT NULL,
        day BIGINT NOT NULL,
        model TEXT NOT NULL,
        traces BIGINT NOT NULL,
        observations BIGINT NOT NULL,
        input BIGINT NOT NULL,
        output BIGINT NOT NULL,
        total BIGINT NOT NULL,
        cost DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (project_id, day, model)
    );
    CREATE TABLE daily_traces (
        project_id TEXT NOT NULL,
        day BIGINT NOT NULL,
        traces BIGINT NOT NULL,
        PRIMARY KEY (project_id, day)
    );
    INSERT INTO trace_usage
        SELECT o.project_id, o.trace_id, COALESCE(o.model, ''), t.timestamp / 86400000,
            COUNT(*), SUM(COALESCE(o.usage_input, 0)), SUM(COALESCE(o.usage_output, 0)),
            SUM(COALESCE(o.usage_total, 0)),
            SUM(COALESCE(o.provided_cost, o.calculated_input_cost + o.calculated_output_cost, 0))
        FROM observations o JOIN traces t ON t.project_id = o.project_id AND t.id = o.trace_id
        GROUP BY o.project_id, o.trace_id, COALESCE(o.model, ''), t.timestamp;
    INSERT INTO daily_usage
        SELECT project_id, day, model, COUNT(*), SUM(observations), SUM(input), SUM(output),
            SUM(total), SUM(cost)
        FROM trace_usage GROUP BY project_id, day, model;
    UPDATE traces SET rollup_day = timestamp / 86400000;
    INSERT INTO daily_traces
        SELECT project_id, rollup_day, COUNT(*) FROM traces GROUP BY project_id, rollup_day;";

/// The touched traces as a relation `x(project_id, trace_id)` from two text arrays.
const TOUCHED: &str =
    "x AS (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) AS x(project_id, trace_id))";

/// Adds the rows of `changes(project_id, day, model, traces, observations, input, output,
/// total, cost)` to the day totals.
const ADD_TO_DAYS: &str = "
    INSERT INTO daily_usage AS d (project_id, day, model, traces, observations, input, output,
        total, cost)
    SELECT project_id, day, model, SUM(traces), SUM(observations), SUM(input), SUM(output),
        SUM(total), SUM(cost)
    FROM changes GROUP BY project_id, day, model
    ON CONFLICT (project_id, day, model) DO UPDATE SET traces = d.traces + EXCLUDED.traces,
        observations = d.observations + EXCLUDED.observations,
        input = d.input + EXCLUDED.input, output = d.output + EXCLUDED.output,
        total = d.total + EXCLUDED.total, cost = d.cost + EXCLUDED.cost";

/// Runs `sql` (which starts `WITH x AS ...` over `$1`, `$2`) for the touched traces.
async fn over_touched(
    tx: &mut PgConnection,
    sql: &str,
    projects: &[String],
    ids: &[String],
    what: &'static str,
) -> anyhow::Result<()> {
    sqlx::query(sql)
        .bind(projects)
        .bind(ids)
        .execute(&mut *tx)
        .await
        .context(what)?;
    Ok(())
}

/// Brings the day totals up to date with the touched traces, in the writer's transaction.
pub async fn refresh(
    tx: &mut PgConnection,
    touched: &BTreeSet<(String, String)>,
) -> anyhow::Result<()> {
    if touched.is_empty() {
        return Ok(());
    }
    let (projects, ids): (Vec<String>, Vec<String>) = touched.iter().cloned().unzip();
    // A trace counts once toward its day; one whose day changed moves.
    let count_days = format!(
        "WITH {TOUCHED}, moved AS (
            SELECT t.project_id, t.id, t.rollup_day AS old_day, t.timestamp / 86400000 AS day
            FROM traces t JOIN x ON t.project_id = x.project_id AND t.id = x.trace_id
            WHERE t.rollup_day IS DISTINCT FROM t.timestamp / 86400000
         ), marked AS (
            UPDATE traces t SET rollup_day = m.day FROM moved m
            WHERE t.project_id = m.project_id AND t.id = m.id
         )
         INSERT INTO daily_traces AS d (project_id, day, traces)
         SELECT project_id, day, SUM(n) FROM (
            SELECT project_id, day, 1 AS n FROM moved
            UNION ALL SELECT project_id, old_day, -1 FROM moved WHERE old_day IS NOT NULL
         ) c GROUP BY project_id, day
         ON CONFLICT (project_id, day) DO UPDATE SET traces = d.traces + EXCLUDED.traces"
    );
    over_touched(tx, &count_days, &projects, &ids, "counting traces per day").await?;
    subtract(tx, &projects, &ids).await?;
    let add = format!(
        "WITH {TOUCHED}, changes AS (
            INSERT INTO trace_usage (project_id, trace_id, model, day, observations, input,
                output, total, cost)
            SELECT o.project_id, o.trace_id, COALESCE(o.model, ''), t.timestamp / 86400000,
                COUNT(*), SUM(COALESCE(o.usage_input, 0)), SUM(COALESCE(o.usage_output, 0)),
                SUM(COALESCE(o.usage_total, 0)),
                SUM(COALESCE(o.provided_cost, o.calculated_input_cost + o.calculated_output_cost, 0))
            FROM x JOIN traces t ON t.project_id = x.project_id AND t.id = x.trace_id
            JOIN observations o ON o.project_id = t.project_id AND o.trace_id = t.id
            GROUP BY o.project_id, o.trace_id, COALESCE(o.model, ''), t.timestamp
            RETURNING project_id, day, model, 1 AS traces, observations, input, output, total,
                cost
         ) {ADD_TO_DAYS}"
    );
    over_touched(tx, &add, &projects, &ids, "adding traces to their days").await
}

/// Takes traces out of the day totals, before pruning deletes them.
pub async fn forget(
    tx: &mut PgConnection,
    projects: &[String],
    ids: &[String],
) -> anyhow::Result<()> {
    subtract(tx, projects, ids).await?;
    let uncount = format!(
        "WITH {TOUCHED}
         UPDATE daily_traces d SET traces = d.traces - c.n FROM (
            SELECT t.project_id, t.rollup_day AS day, COUNT(*) AS n
            FROM traces t JOIN x ON t.project_id = x.project_id AND t.id = x.trace_id
            WHERE t.rollup_day IS NOT NULL GROUP BY 1, 2
         ) c WHERE d.project_id = c.project_id AND d.day = c.day"
    );
    over_touched(tx, &uncount, projects, ids, "uncounting pruned traces").await
}

/// Deletes the traces' contributions and subtracts them from their days.
async fn subtract(
    tx: &mut PgConnection,
    projects: &[String],
    ids: &[String],
) -> anyhow::Result<()> {
    let sql = format!(
        "WITH {TOUCHED}, changes AS (
            DELETE FROM trace_usage u USING x
            WHERE u.project_id = x.project_id AND u.trace_id = x.trace_id
            RETURNING u.project_id, u.day, u.model, -1 AS traces, -u.observations AS observations,
                -u.input AS input, -u.output AS output, -u.total AS total, -u.cost AS cost
         ) {ADD_TO_DAYS}"
    );
    over_touched(tx, &sql, projects, ids, "taking traces out of their days").await
}

/// Day totals for whole days `from_day..to_day`, keyed by day.
pub async fn days(
    pool: &PgPool,
    project: &str,
    from_day: i64,
    to_day: i64,
) -> anyhow::Result<BTreeMap<i64, DailyMetrics>> {
    let mut days: BTreeMap<i64, DailyMetrics> = BTreeMap::new();
    let traces = sqlx::query(
        "SELECT day, traces FROM daily_traces
         WHERE project_id = $1 AND day >= $2 AND day < $3 AND traces > 0",
    )
    .bind(project)
    .bind(from_day)
    .bind(to_day)
    .fetch_all(pool)
    .await
    .context("reading traces per day")?;
    for row in traces {
        set_day_traces(
            &mut days,
            row.try_get(0)?,
            row.try_get::<i64, _>(1)?.max(0) as u64,
        );
    }
    let usage = sqlx::query(
        "SELECT day, model, traces, observations, input, output, total, cost FROM daily_usage
         WHERE project_id = $1 AND day >= $2 AND day < $3 AND observations > 0
         ORDER BY day, model",
    )
    .bind(project)
    .bind(from_day)
    .bind(to_day)
    .fetch_all(pool)
    .await
    .context("reading usage per day")?;
    for row in usage {
        let counts = [
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
        ];
        let usage = rolled_up_usage(row.try_get(1)?, counts, row.try_get(7)?);
        add_day_usage(&mut days, row.try_get(0)?, usage);
    }
    Ok(days)
}

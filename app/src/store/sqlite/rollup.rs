//! Daily metrics without scanning observations: the writer keeps per-day totals up to
//! date. `trace_usage` holds what each trace adds to its day per model (model `''`: none),
//! `daily_usage` the sums over a day's traces, `daily_traces` a day's trace count (each
//! trace remembers in `traces.rollup_day` which day counted it). After each write batch,
//! every trace the batch touched is recomputed from its observations (the covering index
//! makes that a short range scan) and the difference applied to the day totals; pruning
//! subtracts what it deletes. Days are UTC days of the trace's timestamp, as the direct
//! query groups them.
//!
//! The common case is cheaper: a trace the batch created, whose observations are all the
//! batch's own fresh inserts, adds exactly what those inserts carry (`BatchTraces` sums
//! them as they are written), so it needs no reads, and the day totals of all such traces
//! are applied together.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::store::records::{DAY_MS, DailyMetrics, add_day_usage, rolled_up_usage, set_day_traces};

/// Migration 5: the rollup tables, filled from what is stored already.
pub const MIGRATION: &str = "
    ALTER TABLE traces ADD COLUMN rollup_day INTEGER;
    CREATE TABLE trace_usage (
        project_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        model TEXT NOT NULL,
        day INTEGER NOT NULL,
        observations INTEGER NOT NULL,
        input INTEGER NOT NULL,
        output INTEGER NOT NULL,
        total INTEGER NOT NULL,
        cost REAL NOT NULL,
        PRIMARY KEY (project_id, trace_id, model)
    ) WITHOUT ROWID;
    CREATE TABLE daily_usage (
        project_id TEXT NOT NULL,
        day INTEGER NOT NULL,
        model TEXT NOT NULL,
        traces INTEGER NOT NULL,
        observations INTEGER NOT NULL,
        input INTEGER NOT NULL,
        output INTEGER NOT NULL,
        total INTEGER NOT NULL,
        cost REAL NOT NULL,
        PRIMARY KEY (project_id, day, model)
    ) WITHOUT ROWID;
    CREATE TABLE daily_traces (
        project_id TEXT NOT NULL,
        day INTEGER NOT NULL,
        traces INTEGER NOT NULL,
        PRIMARY KEY (project_id, day)
    ) WITHOUT ROWID;
    INSERT INTO trace_usage
        SELECT o.project_id, o.trace_id, COALESCE(o.model, ''), t.timestamp / 86400000,
            COUNT(*), SUM(COALESCE(o.usage_input, 0)), SUM(COALESCE(o.usage_output, 0)),
            SUM(COALESCE(o.usage_total, 0)),
            SUM(COALESCE(o.provided_cost, o.calculated_input_cost + o.calculated_output_cost, 0))
        FROM observations o JOIN traces t ON t.project_id = o.project_id AND t.id = o.trace_id
        GROUP BY o.project_id, o.trace_id, COALESCE(o.model, '');
    INSERT INTO daily_usage
        SELECT project_id, day, model, COUNT(*), SUM(observations), SUM(input), SUM(output),
            SUM(total), SUM(cost)
        FROM trace_usage GROUP BY project_id, day, model;
    UPDATE traces SET rollup_day = timestamp / 86400000;
    INSERT INTO daily_traces
        SELECT project_id, rollup_day, COUNT(*) FROM traces GROUP BY project_id, rollup_day;";

/// What one trace adds to its day for one model.
#[derive(Debug, Clone, PartialEq)]
struct Contribution {
    model: String,
    day: i64,
    observations: i64,
    input: i64,
    output: i64,
    total: i64,
    cost: f64,
}

/// What one write batch did to the traces it named.
#[derive(Default)]
pub struct BatchTraces {
    /// By project, then trace id.
    traces: HashMap<String, HashMap<String, Touched>>,
}

enum Touched {
    /// The trace's row exists; nothing in the day totals changed.
    Known,
    /// The batch created the trace and only added fresh observations to it: its day, and
    /// what it adds to that day per model.
    Created(i64, BTreeMap<String, Contribution>),
    /// To recompute from its rows.
    Changed,
}

impl BatchTraces {
    fn get_mut(&mut self, project: &str, trace_id: &str) -> Option<&mut Touched> {
        self.traces.get_mut(project)?.get_mut(trace_id)
    }

    fn set(&mut self, project: &str, trace_id: &str, touched: Touched) {
        match self.get_mut(project, trace_id) {
            Some(state) => *state = touched,
            None => {
                self.traces
                    .entry(project.to_string())
                    .or_default()
                    .insert(trace_id.to_string(), touched);
            }
        }
    }

    /// Whether this is the batch's first mention of the trace (its row is to be ensured).
    pub fn first_mention(&mut self, project: &str, trace_id: &str) -> bool {
        if self.get_mut(project, trace_id).is_some() {
            return false;
        }
        self.set(project, trace_id, Touched::Known);
        true
    }

    /// The batch inserted the trace's row, with this timestamp (its day truncates as SQL's
    /// `timestamp / 86400000` does).
    pub fn created(&mut self, project: &str, trace_id: &str, timestamp: i64) {
        if !matches!(self.get_mut(project, trace_id), Some(Touched::Changed)) {
            self.set(
                project,
                trace_id,
                Touched::Created(timestamp / DAY_MS, BTreeMap::new()),
            );
        }
    }

    /// The batch changed the trace or one of its observations in place.
    pub fn changed(&mut self, project: &str, trace_id: &str) {
        self.set(project, trace_id, Touched::Changed);
    }

    /// The batch inserted a new observation with this model, usage and cost.
    pub fn observed(
        &mut self,
        project: &str,
        trace_id: &str,
        model: Option<&str>,
        tokens: [Option<i64>; 3],
        cost: f64,
    ) {
        let Some(Touched::Created(day, usage)) = self.get_mut(project, trace_id) else {
            // Added to a trace stored before: recomputed from its rows.
            self.changed(project, trace_id);
            return;
        };
        let model = model.unwrap_or_default();
        let sum = match usage.get_mut(model) {
            Some(sum) => sum,
            None => usage
                .entry(model.to_string())
                .or_insert_with(|| Contribution::empty(model, *day)),
        };
        let [input, output, total] = tokens.map(|t| t.unwrap_or(0));
        sum.observations += 1;
        sum.input += input;
        sum.output += output;
        sum.total += total;
        sum.cost += cost;
    }

    /// Every trace named, by project and id.
    fn all(&self) -> impl Iterator<Item = (&str, &str, &Touched)> {
        self.traces.iter().flat_map(|(project, traces)| {
            traces
                .iter()
                .map(move |(id, touched)| (project.as_str(), id.as_str(), touched))
        })
    }
}

impl Contribution {
    fn empty(model: &str, day: i64) -> Self {
        Self {
            model: model.to_string(),
            day,
            observations: 0,
            input: 0,
            output: 0,
            total: 0,
            cost: 0.0,
        }
    }

    fn add(&mut self, other: &Contribution) {
        self.observations += other.observations;
        self.input += other.input;
        self.output += other.output;
        self.total += other.total;
        self.cost += other.cost;
    }
}

/// Brings the day totals up to date with the batch's traces, in the writer's transaction.
pub fn refresh(tx: &Transaction<'_>, batch: &BatchTraces) -> anyhow::Result<()> {
    add_fresh(tx, batch)?;
    let mut changed: Vec<(&str, &str)> = batch
        .all()
        .filter(|(_, _, touched)| matches!(touched, Touched::Changed))
        .map(|(project, id, _)| (project, id))
        .collect();
    changed.sort_unstable();
    recompute(tx, &changed)
}

/// The created traces' day totals, from what the batch inserted: per trace its day and
/// its per-model rows; per day the sums of all of them, in one statement each.
fn add_fresh(tx: &Transaction<'_>, batch: &BatchTraces) -> anyhow::Result<()> {
    let mut traces_per_day: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    let mut usage_per_day: BTreeMap<(&str, i64, &str), (i64, Contribution)> = BTreeMap::new();
    for (project, trace_id, touched) in batch.all() {
        let Touched::Created(day, usage) = touched else {
            continue;
        };
        set_rollup_day(tx, project, trace_id, *day)?;
        *traces_per_day.entry((project, *day)).or_default() += 1;
        for c in usage.values() {
            insert_usage(tx, project, trace_id, c)?;
            let (traces, sum) = usage_per_day
                .entry((project, c.day, &c.model))
                .or_insert_with(|| (0, Contribution::empty(&c.model, c.day)));
            *traces += 1;
            sum.add(c);
        }
    }
    for ((project, day), count) in traces_per_day {
        count_trace(tx, project, day, count)?;
    }
    for ((project, _, _), (traces, sum)) in usage_per_day {
        add_to_day(tx, project, &sum, traces, 1)?;
    }
    Ok(())
}

/// Recomputes each trace's contributions from its rows and applies the difference.
fn recompute(tx: &Transaction<'_>, touched: &[(&str, &str)]) -> anyhow::Result<()> {
    for &(project, trace_id) in touched {
        let row: Option<(i64, Option<i64>)> = tx
            .prepare_cached(
                "SELECT timestamp / 86400000, rollup_day FROM traces
                 WHERE project_id = ?1 AND id = ?2",
            )?
            .query_row(params![project, trace_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((day, counted)) = row else {
            continue;
        };
        if counted != Some(day) {
            if let Some(old) = counted {
                count_trace(tx, project, old, -1)?;
            }
            count_trace(tx, project, day, 1)?;
            set_rollup_day(tx, project, trace_id, day)?;
        }
        let old = contributions(
            tx,
            "SELECT model, day, observations, input, output, total, cost FROM trace_usage
             WHERE project_id = ?1 AND trace_id = ?2 ORDER BY model",
            project,
            trace_id,
        )?;
        let mut new = contributions(
            tx,
            "SELECT COALESCE(model, ''), 0, COUNT(*), SUM(COALESCE(usage_input, 0)),
                SUM(COALESCE(usage_output, 0)), SUM(COALESCE(usage_total, 0)),
                SUM(COALESCE(provided_cost, calculated_input_cost + calculated_output_cost, 0))
             FROM observations INDEXED BY observations_by_trace
             WHERE project_id = ?1 AND trace_id = ?2 GROUP BY 1 ORDER BY 1",
            project,
            trace_id,
        )?;
        for c in &mut new {
            c.day = day;
        }
        if old == new {
            continue;
        }
        for c in &old {
            add_to_day(tx, project, c, 1, -1)?;
        }
        for c in &new {
            add_to_day(tx, project, c, 1, 1)?;
        }
        tx.prepare_cached("DELETE FROM trace_usage WHERE project_id = ?1 AND trace_id = ?2")?
            .execute(params![project, trace_id])?;
        for c in &new {
            insert_usage(tx, project, trace_id, c)?;
        }
    }
    Ok(())
}

/// Records the day that counts the trace.
fn set_rollup_day(
    tx: &Transaction<'_>,
    project: &str,
    trace_id: &str,
    day: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE traces SET rollup_day = ?3 WHERE project_id = ?1 AND id = ?2")?
        .execute(params![project, trace_id, day])?;
    Ok(())
}

/// Stores what the trace adds to its day for one model.
fn insert_usage(
    tx: &Transaction<'_>,
    project: &str,
    trace_id: &str,
    c: &Contribution,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO trace_usage (project_id, trace_id, model, day, observations, input,
            output, total, cost) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        project,
        trace_id,
        c.model,
        c.day,
        c.observations,
        c.input,
        c.output,
        c.total,
        c.cost
    ])?;
    Ok(())
}

/// Takes a trace out of the day totals, before pruning deletes it.
pub fn forget(tx: &Transaction<'_>, project: &str, trace_id: &str) -> anyhow::Result<()> {
    let old = contributions(
        tx,
        "SELECT model, day, observations, input, output, total, cost FROM trace_usage
         WHERE project_id = ?1 AND trace_id = ?2",
        project,
        trace_id,
    )?;
    for c in &old {
        add_to_day(tx, project, c, 1, -1)?;
    }
    tx.prepare_cached("DELETE FROM trace_usage WHERE project_id = ?1 AND trace_id = ?2")?
        .execute(params![project, trace_id])?;
    let counted: Option<Option<i64>> = tx
        .prepare_cached("SELECT rollup_day FROM traces WHERE project_id = ?1 AND id = ?2")?
        .query_row(params![project, trace_id], |r| r.get(0))
        .optional()?;
    if let Some(Some(day)) = counted {
        count_trace(tx, project, day, -1)?;
    }
    Ok(())
}

/// Day totals for whole days `from_day..to_day`, keyed by day.
pub fn days(
    c: &Connection,
    project: &str,
    from_day: i64,
    to_day: i64,
) -> rusqlite::Result<BTreeMap<i64, DailyMetrics>> {
    let mut days: BTreeMap<i64, DailyMetrics> = BTreeMap::new();
    let mut traces = c.prepare_cached(
        "SELECT day, traces FROM daily_traces
         WHERE project_id = ?1 AND day >= ?2 AND day < ?3 AND traces > 0",
    )?;
    for row in traces.query_map(params![project, from_day, to_day], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (day, count) = row?;
        set_day_traces(&mut days, day, count.max(0) as u64);
    }
    let mut usage = c.prepare_cached(
        "SELECT day, model, traces, observations, input, output, total, cost FROM daily_usage
         WHERE project_id = ?1 AND day >= ?2 AND day < ?3 AND observations > 0
         ORDER BY day, model",
    )?;
    for row in usage.query_map(params![project, from_day, to_day], |r| {
        let counts = [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?];
        Ok((
            r.get::<_, i64>(0)?,
            rolled_up_usage(r.get(1)?, counts, r.get(7)?),
        ))
    })? {
        let (day, usage) = row?;
        add_day_usage(&mut days, day, usage);
    }
    Ok(days)
}

fn contributions(
    tx: &Transaction<'_>,
    sql: &str,
    project: &str,
    trace_id: &str,
) -> rusqlite::Result<Vec<Contribution>> {
    tx.prepare_cached(sql)?
        .query_map(params![project, trace_id], |r| {
            Ok(Contribution {
                model: r.get(0)?,
                day: r.get(1)?,
                observations: r.get(2)?,
                input: r.get(3)?,
                output: r.get(4)?,
                total: r.get(5)?,
                cost: r.get::<_, Option<f64>>(6)?.unwrap_or(0.0),
            })
        })?
        .collect()
}

/// Adds (`sign` 1) or takes away (-1) `c`, the sum of `traces` traces' contributions.
fn add_to_day(
    tx: &Transaction<'_>,
    project: &str,
    c: &Contribution,
    traces: i64,
    sign: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO daily_usage (project_id, day, model, traces, observations, input, output,
            total, cost) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (project_id, day, model) DO UPDATE SET traces = traces + excluded.traces,
            observations = observations + excluded.observations,
            input = input + excluded.input, output = output + excluded.output,
            total = total + excluded.total, cost = cost + excluded.cost",
    )?
    .execute(params![
        project,
        c.day,
        c.model,
        sign * traces,
        sign * c.observations,
        sign * c.input,
        sign * c.output,
        sign * c.total,
        sign as f64 * c.cost
    ])?;
    Ok(())
}

/// Adds `count` (negative: takes away) to a day's trace count.
fn count_trace(tx: &Transaction<'_>, project: &str, day: i64, count: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO daily_traces (project_id, day, traces) VALUES (?1, ?2, ?3)
         ON CONFLICT (project_id, day) DO UPDATE SET traces = traces + excluded.traces",
    )?
    .execute(params![project, day, count])?;
    Ok(())
}

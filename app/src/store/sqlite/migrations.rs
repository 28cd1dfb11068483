//! Versioned schema migrations, tracked in SQLite's `user_version`. Append only.

use anyhow::Context;
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: chat conversations for the web UI.
    "CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    CREATE INDEX conversations_by_update ON conversations(updated_at DESC);",
    // 2: downsampled GPU history for the GPU page's 24-hour charts.
    "CREATE TABLE gpu_history (
        uuid TEXT NOT NULL,
        t INTEGER NOT NULL,
        gpu_util REAL,
        mem_copy_util REAL,
        fb_used_mib REAL,
        fb_total_mib REAL,
        power_w REAL,
        temperature_c REAL,
        sm_clock_mhz REAL,
        PRIMARY KEY (uuid, t)
    ) WITHOUT ROWID;
    CREATE INDEX gpu_history_by_time ON gpu_history(t);",
    // 3: the gateway's virtual keys (hashed) and its spend log.
    "CREATE TABLE virtual_keys (
        token TEXT PRIMARY KEY,
        key_name TEXT NOT NULL,
        key_alias TEXT UNIQUE,
        models TEXT NOT NULL,
        max_budget REAL,
        budget_duration TEXT,
        budget_reset_at INTEGER,
        rpm_limit INTEGER,
        tpm_limit INTEGER,
        max_parallel_requests INTEGER,
        expires_at INTEGER,
        metadata TEXT NOT NULL,
        spend REAL NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE spend_logs (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        call_type TEXT NOT NULL,
        api_key TEXT NOT NULL,
        key_alias TEXT,
        spend REAL NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        start_time INTEGER NOT NULL,
        end_time INTEGER NOT NULL,
        model TEXT NOT NULL,
        model_group TEXT NOT NULL,
        custom_llm_provider TEXT NOT NULL,
        api_base TEXT NOT NULL,
        user TEXT NOT NULL,
        status TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        cache_hit INTEGER NOT NULL,
        request_tags TEXT NOT NULL
    );
    CREATE INDEX spend_logs_by_time ON spend_logs(start_time);
    CREATE INDEX spend_logs_by_key ON spend_logs(api_key, start_time);
    CREATE INDEX spend_logs_by_request ON spend_logs(request_id);",
    // 4: traces, observations and scores (Langfuse's model), and ingested event ids.
    "CREATE TABLE traces (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        name TEXT,
        user_id TEXT,
        session_id TEXT,
        release TEXT,
        version TEXT,
        environment TEXT,
        tags TEXT,
        input TEXT,
        output TEXT,
        metadata TEXT,
        public INTEGER,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX traces_by_time ON traces(project_id, timestamp);
    CREATE INDEX traces_by_user ON traces(project_id, user_id, timestamp);
    CREATE INDEX traces_by_session ON traces(project_id, session_id, timestamp);
    CREATE TABLE observations (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        type TEXT NOT NULL,
        parent_observation_id TEXT,
        name TEXT,
        start_time INTEGER NOT NULL,
        end_time INTEGER,
        completion_start_time INTEGER,
        model TEXT,
        model_parameters TEXT,
        input TEXT,
        output TEXT,
        metadata TEXT,
        level TEXT,
        status_message TEXT,
        version TEXT,
        environment TEXT,
        usage_input INTEGER,
        usage_output INTEGER,
        usage_total INTEGER,
        usage_details TEXT,
        cost_details TEXT,
        provided_cost REAL,
        calculated_input_cost REAL,
        calculated_output_cost REAL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX observations_by_time ON observations(project_id, start_time);
    -- A trace's observations by start, covering what trace aggregates and daily metrics read.
    CREATE INDEX observations_by_trace ON observations(project_id, trace_id, start_time,
        end_time, model, usage_input, usage_output, usage_total, provided_cost,
        calculated_input_cost, calculated_output_cost);
    CREATE TABLE scores (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        trace_id TEXT,
        observation_id TEXT,
        session_id TEXT,
        name TEXT NOT NULL,
        value REAL,
        string_value TEXT,
        data_type TEXT NOT NULL,
        comment TEXT,
        source TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        metadata TEXT,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX scores_by_trace ON scores(project_id, trace_id);
    CREATE TABLE ingested_events (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (project_id, id)
    ) WITHOUT ROWID;",
    // 5: per-day totals for daily metrics, kept by the writer.
    super::rollup::MIGRATION,
    // 6: the last ingestion log row folded into the store (`store/ingest_log.rs`).
    "CREATE TABLE ingest_log_position (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        seq INTEGER NOT NULL
    );
    INSERT INTO ingest_log_position (id, seq) VALUES (0, 0);",
];

pub fn run(connection: &mut Connection) -> anyhow::Result<()> {
    let current: usize = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .context("reading schema version")?;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "the database has schema version {current}, newer than this binary knows ({}); upgrade agentbox",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = connection.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

//! Versioned Postgres migrations, tracked in `agentbox_schema`. Append only; the same
//! tables and columns as SQLite's, in Postgres types. An advisory lock serialises replicas
//! that start at the same time.

use anyhow::Context;
use sqlx::PgPool;

/// `pg_advisory_xact_lock` key: "agentbox" in ASCII.
const LOCK: i64 = 0x6167_656e_7462_6f78;

const MIGRATIONS: &[&str] = &[
    // 1: chat conversations for the web UI.
    "CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE messages (
        id BIGSERIAL PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    CREATE INDEX conversations_by_update ON conversations(updated_at DESC);",
    // 2: downsampled GPU history.
    "CREATE TABLE gpu_history (
        uuid TEXT NOT NULL,
        t BIGINT NOT NULL,
        gpu_util DOUBLE PRECISION,
        mem_copy_util DOUBLE PRECISION,
        fb_used_mib DOUBLE PRECISION,
        fb_total_mib DOUBLE PRECISION,
        power_w DOUBLE PRECISION,
        temperature_c DOUBLE PRECISION,
        sm_clock_mhz DOUBLE PRECISION,
        PRIMARY KEY (uuid, t)
    );
    CREATE INDEX gpu_history_by_time ON gpu_history(t);",
    // 3: the gateway's virtual keys (hashed) and its spend log.
    "CREATE TABLE virtual_keys (
        token TEXT PRIMARY KEY,
        key_name TEXT NOT NULL,
        key_alias TEXT UNIQUE,
        models TEXT NOT NULL,
        max_budget DOUBLE PRECISION,
        budget_duration TEXT,
        budget_reset_at BIGINT,
        rpm_limit BIGINT,
        tpm_limit BIGINT,
        max_parallel_requests BIGINT,
        expires_at BIGINT,
        metadata TEXT NOT NULL,
        spend DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE spend_logs (
        id BIGSERIAL PRIMARY KEY,
        request_id TEXT NOT NULL,
        call_type TEXT NOT NULL,
        api_key TEXT NOT NULL,
        key_alias TEXT,
        spend DOUBLE PRECISION NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        total_tokens BIGINT NOT NULL,
        start_time BIGINT NOT NULL,
        end_time BIGINT NOT NULL,
        model TEXT NOT NULL,
        model_group TEXT NOT NULL,
        custom_llm_provider TEXT NOT NULL,
        api_base TEXT NOT NULL,
        \"user\" TEXT NOT NULL,
        status TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        cache_hit BOOLEAN NOT NULL,
        request_tags TEXT NOT NULL
    );
    CREATE INDEX spend_logs_by_time ON spend_logs(start_time);
    CREATE INDEX spend_logs_by_key ON spend_logs(api_key, start_time);
    CREATE INDEX spend_logs_by_request ON spend_logs(request_id);",
    // 4: traces, observations and scores (Langfuse's model), ingested event ids, and
    // SQLite's json_patch (RFC 7396 merge) for merging metadata.
    "CREATE TABLE traces (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
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
        public BOOLEAN,
        updated_at BIGINT NOT NULL,
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
        start_time BIGINT NOT NULL,
        end_time BIGINT,
        completion_start_time BIGINT,
        model TEXT,
        model_parameters TEXT,
        input TEXT,
        output TEXT,
        metadata TEXT,
        level TEXT,
        status_message TEXT,
        version TEXT,
        environment TEXT,
        usage_input BIGINT,
        usage_output BIGINT,
        usage_total BIGINT,
        usage_details TEXT,
        cost_details TEXT,
        provided_cost DOUBLE PRECISION,
        calculated_input_cost DOUBLE PRECISION,
        calculated_output_cost DOUBLE PRECISION,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX observations_by_time ON observations(project_id, start_time);
    CREATE INDEX observations_by_trace ON observations(project_id, trace_id, start_time);
    CREATE TABLE scores (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        trace_id TEXT,
        observation_id TEXT,
        session_id TEXT,
        name TEXT NOT NULL,
        value DOUBLE PRECISION,
        string_value TEXT,
        data_type TEXT NOT NULL,
        comment TEXT,
        source TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        metadata TEXT,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX scores_by_trace ON scores(project_id, trace_id);
    CREATE TABLE ingested_events (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX ingested_events_by_time ON ingested_events(at);
    CREATE FUNCTION agentbox_merge_patch(target JSONB, patch JSONB) RETURNS JSONB
    LANGUAGE plpgsql IMMUTABLE AS $$
    DECLARE
        merged JSONB;
        k TEXT;
        v JSONB;
    BEGIN
        IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
            RETURN patch;
        END IF;
        IF target IS NULL OR jsonb_typeof(target) <> 'object' THEN
            merged := '{}'::JSONB;
        ELSE
            merged := target;
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(patch) LOOP
            IF jsonb_typeof(v) = 'null' THEN
                merged := merged - k;
            ELSE
                merged := jsonb_set(merged, ARRAY[k], agentbox_merge_patch(merged -> k, v));
            END IF;
        END LOOP;
        RETURN merged;
    END
    $$;",
    // 5: per-day totals for daily metrics, kept by the writer.
    super::rollup::MIGRATION,
];

pub async fn run(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await
        .context("taking the migration lock")?;
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS agentbox_schema (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: Option<i32> = sqlx::query_scalar("SELECT MAX(version) FROM agentbox_schema")
        .fetch_one(&mut *tx)
        .await
        .context("reading schema version")?;
    let current = current.unwrap_or(0).max(0) as usize;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "the database has schema version {current}, newer than this binary knows ({}); upgrade agentbox",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("migration {}", i + 1))?;
        sqlx::query("INSERT INTO agentbox_schema (version) VALUES ($1)")
            .bind((i + 1) as i32)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await.context("committing migrations")?;
    Ok(())
}

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

//! The embedded backend: SQLite in the data directory (WAL mode), through `rusqlite`, with
//! versioned migrations. Reads run on blocking threads over one shared connection; writes
//! of spend and traces go through the writer thread's own connection (`batch.rs`).

mod batch;
mod checkpoint;
mod conversations;
mod gpu_history;
mod keys;
mod migrations;
mod rollup;
mod spend;
mod traces;

pub(super) use batch::Sink;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parking_lot::Mutex;
use rusqlite::Connection;

#[derive(Clone)]
pub struct Db {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl Db {
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join("agentbox.db");
        let mut connection = Connection::open(&path)
            .with_context(|| format!("opening database {}", path.display()))?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .context("enabling WAL")?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .context("setting synchronous")?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .context("enabling foreign keys")?;
        // Reads over large trace tables stay in memory (64 MiB of pages).
        connection
            .pragma_update(None, "cache_size", -65_536)
            .context("sizing the page cache")?;
        migrations::run(&mut connection)
            .with_context(|| format!("migrating database {}", path.display()))?;
        // Statistics for the query planner, cheap when they are fresh.
        connection
            .execute_batch("PRAGMA optimize=0x10002;")
            .context("optimizing the database")?;
        Ok(Self {
            path,
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn with_connection<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || f(&mut connection.lock()))
            .await
            .context("database task panicked")?
    }

    pub fn describe(&self) -> String {
        format!("SQLite at {}", self.path.display())
    }

    /// Where the ingestion log lives: beside the database.
    pub fn ingest_log_path(&self) -> PathBuf {
        self.path.with_file_name("ingest-log.db")
    }

    /// The writer thread's own connection.
    pub fn sink(&self) -> anyhow::Result<Sink> {
        Sink::open(&self.path)
    }

    /// Checkpoints the WAL into the main file; called at shutdown.
    pub fn close(&self) -> anyhow::Result<()> {
        self.connection
            .lock()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .context("checkpointing the database")
    }
}

//! The store: conversations, GPU history, gateway keys and spend, traces. Two backends
//! behind one `Store`: SQLite in the data directory (the default, `sqlite/`) or Postgres
//! (`postgres/`, chosen by `database_url`, for a cluster). Both run versioned migrations
//! at start and hold the same tables; spend and trace writes go through one writer
//! thread (`writer.rs`) whatever the backend.

mod ingest_log;
mod postgres;
mod records;
mod sqlite;
mod writer;

pub use records::{
    Conversation, ConversationWithMessages, DailyMetrics, DuplicateAlias, Ingest, JsonText,
    ObservationFilter, ObservationUpsert, ScoreUpsert, SpendFilter, SpendRecord, StoredKey,
    StoredMessage, StoredObservation, StoredScore, StoredTrace, TraceEvent, TraceFilter,
    TraceUpsert,
};
pub use writer::{IngestError, Writer};

use std::path::Path;

use crate::gpu::HistoryPoint;

#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Db),
    Postgres(postgres::Db),
}

/// Calls the same method on whichever backend this store has.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* ) $(. $await:tt)?) => {
        match &$self.backend {
            Backend::Sqlite(db) => db.$method($($arg),*) $(.$await)?,
            Backend::Postgres(db) => db.$method($($arg),*) $(.$await)?,
        }
    };
}

impl Store {
    /// Opens Postgres at `database_url` when given, else SQLite in `data_dir`, and
    /// migrates it.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Self> {
        let backend = match database_url {
            Some(url) => Backend::Postgres(postgres::Db::open(url).await?),
            None => {
                let data_dir = data_dir.to_path_buf();
                let db = tokio::task::spawn_blocking(move || sqlite::Db::open(&data_dir))
                    .await
                    .map_err(|e| anyhow::anyhow!("opening the database panicked: {e}"))??;
                Backend::Sqlite(db)
            }
        };
        Ok(Self { backend })
    }

    /// The backend in words, for the start-up log.
    pub fn describe(&self) -> String {
        dispatch!(self.describe())
    }

    /// A connection for the writer thread.
    fn writer_sink(&self) -> anyhow::Result<Box<dyn writer::Sink>> {
        Ok(match &self.backend {
            Backend::Sqlite(db) => Box::new(db.sink()?),
            Backend::Postgres(db) => Box::new(db.sink()),
        })
    }

    /// The ingestion log's file: SQLite's only (Postgres is written directly).
    fn ingest_log_path(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Sqlite(db) => Some(db.ingest_log_path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Flushes what the backend buffers; called at shutdown.
    pub fn close(&self) -> anyhow::Result<()> {
        dispatch!(self.close())
    }

    pub async fn list_conversations(&self) -> anyhow::Result<Vec<Conversation>> {
        dispatch!(self.list_conversations().await)
    }

    pub async fn create_conversation(
        &self,
        title: String,
        model: String,
    ) -> anyhow::Result<Conversation> {
        let now = crate::clock::unix_ms() / 1000;
        let conversation = Conversation {
            id: uuid::Uuid::new_v4().to_string(),
            title,
            model,
            created_at: now,
            updated_at: now,
        };
        let row = conversation.clone();
        dispatch!(self.insert_conversation(row).await)?;
        Ok(conversation)
    }

    pub async fn conversation(
        &self,
        id: String,
    ) -> anyhow::Result<Option<ConversationWithMessages>> {
        dispatch!(self.conversation(id).await)
    }

    /// Appends a message; `None` if the conversation does not exist.
    pub async fn add_message(
        &self,
        conversation_id: String,
        role: String,
        content: String,
    ) -> anyhow::Result<Option<StoredMessage>> {
        let now = crate::clock::unix_ms() / 1000;
        dispatch!(self.add_message(conversation_id, role, content, now).await)
    }

    /// Deletes a conversation and its messages; false if it did not exist.
    pub async fn delete_conversation(&self, id: String) -> anyhow::Result<bool> {
        dispatch!(self.delete_conversation(id).await)
    }

    /// Stores finished buckets and drops rows from before `keep_from_ms`. Blocking: the
    /// GPU monitor calls it from its own thread.
    pub fn insert_gpu_history(
        &self,
        points: &[(String, HistoryPoint)],
        keep_from_ms: u64,
    ) -> anyhow::Result<()> {
        dispatch!(self.insert_gpu_history(points, keep_from_ms))
    }

    /// Every GPU's stored points since `since_ms`, by GPU then time.
    pub async fn gpu_history(&self, since_ms: u64) -> anyhow::Result<Vec<(String, HistoryPoint)>> {
        dispatch!(self.gpu_history(since_ms).await)
    }

    pub async fn load_keys(&self) -> anyhow::Result<Vec<StoredKey>> {
        dispatch!(self.load_keys().await)
    }

    /// Inserts or replaces a key (by token); `DuplicateAlias` if another key has its alias.
    pub async fn save_key(&self, key: StoredKey) -> anyhow::Result<()> {
        dispatch!(self.save_key(key).await)
    }

    /// Deletes keys by token; returns the tokens that existed.
    pub async fn delete_keys(&self, tokens: Vec<String>) -> anyhow::Result<Vec<String>> {
        dispatch!(self.delete_keys(tokens).await)
    }

    /// Spend rows matching `filter`, newest first.
    pub async fn spend_logs(&self, filter: SpendFilter) -> anyhow::Result<Vec<SpendRecord>> {
        dispatch!(self.spend_logs(filter).await)
    }

    /// A page of traces, newest first, and how many match in all.
    pub async fn list_traces(
        &self,
        project: String,
        filter: TraceFilter,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<StoredTrace>, u64)> {
        dispatch!(self.list_traces(project, filter, page, limit).await)
    }

    /// One trace with its observations (by start time) and scores.
    pub async fn get_trace(
        &self,
        project: String,
        id: String,
    ) -> anyhow::Result<Option<(StoredTrace, Vec<StoredObservation>, Vec<StoredScore>)>> {
        dispatch!(self.get_trace(project, id).await)
    }

    /// A page of observations, newest first, and how many match in all.
    pub async fn list_observations(
        &self,
        project: String,
        filter: ObservationFilter,
        page: u64,
        limit: u64,
    ) -> anyhow::Result<(Vec<StoredObservation>, u64)> {
        dispatch!(self.list_observations(project, filter, page, limit).await)
    }

    pub async fn get_observation(
        &self,
        project: String,
        id: String,
    ) -> anyhow::Result<Option<StoredObservation>> {
        dispatch!(self.get_observation(project, id).await)
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
        dispatch!(self.list_sessions(project, from, to, page, limit).await)
    }

    /// Per day (newest first): traces, observations, cost, and usage per model, over the
    /// traces the filter keeps.
    pub async fn daily_metrics(
        &self,
        project: String,
        filter: TraceFilter,
    ) -> anyhow::Result<Vec<DailyMetrics>> {
        dispatch!(self.daily_metrics(project, filter).await)
    }

    /// Deletes up to `chunk` traces older than `before`, with their observations and
    /// scores, in one short transaction; returns how many traces went. Blocking: the
    /// retention thread calls it.
    pub fn prune_traces(&self, before: i64, chunk: usize) -> anyhow::Result<usize> {
        dispatch!(self.prune_traces(before, chunk))
    }
}

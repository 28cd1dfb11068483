//! The spend log: one row per gateway request (tokens, cost, key, model, timing), written
//! by `SpendWriter`'s own thread in batches over its own connection, so a slow disk never
//! stalls a request. The queue is bounded: when it is full, or a batch still fails after
//! retries, rows are dropped and counted (`agentbox_spend_log_dropped_total`), so memory
//! never grows without bound. Keys' running spend is written in the same transaction.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{Connection, params};

use super::Store;

/// Rows waiting for the writer at most; past this, new rows are dropped.
const QUEUE_CAPACITY: usize = 50_000;
/// Rows per transaction at most.
const BATCH_ROWS: usize = 2_000;
/// How long the writer gathers rows after the first before it commits: one transaction
/// (one WAL append, one wake-up) for every call in that window.
const GATHER: Duration = Duration::from_millis(50);
/// Waits between the tries of a failing batch.
const RETRY_DELAYS: &[Duration] = &[
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// One request's spend. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRecord {
    pub request_id: String,
    pub call_type: String,
    /// The SHA-256 of the key the caller presented; empty without one.
    pub api_key: String,
    pub key_alias: Option<String>,
    pub spend: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub start_time_ms: i64,
    pub end_time_ms: i64,
    /// The model that answered (the upstream's name, or the local model).
    pub model: String,
    /// The model name the client asked for.
    pub model_group: String,
    pub provider: String,
    pub api_base: String,
    pub user: String,
    pub status_code: u16,
    pub cache_hit: bool,
    pub request_tags: Vec<String>,
    /// The key's running spend after this request, and when its budget resets.
    pub key_spend: Option<(f64, Option<i64>)>,
}

/// What `GET /spend/logs` may filter on.
#[derive(Debug, Default, Clone)]
pub struct SpendFilter {
    pub api_key: Option<String>,
    pub user: Option<String>,
    pub request_id: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub limit: usize,
}

enum Message {
    Record(Box<SpendRecord>),
    Flush(mpsc::Sender<()>),
}

#[derive(Clone)]
pub struct SpendWriter {
    sender: SyncSender<Message>,
    dropped: prometheus::IntCounter,
}

impl SpendWriter {
    /// Starts the writer thread on its own connection to the store's database.
    pub fn start(data_dir: &Path, registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let path = data_dir.join("agentbox.db");
        let connection = Connection::open(&path)
            .with_context(|| format!("opening {} for the spend writer", path.display()))?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        let dropped = prometheus::IntCounter::new(
            "agentbox_spend_log_dropped_total",
            "Spend-log rows dropped because the writer's queue was full or the disk failed.",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
        let thread_dropped = dropped.clone();
        std::thread::Builder::new()
            .name("spend-writer".into())
            .spawn(move || run(connection, receiver, thread_dropped))
            .context("starting the spend writer")?;
        Ok(Self { sender, dropped })
    }

    /// Queues a row without waiting; a full queue drops it (counted and logged).
    pub fn record(&self, record: SpendRecord) {
        match self.sender.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped.get().is_multiple_of(1000) {
                    tracing::warn!("spend log queue full: rows are being dropped");
                }
                self.dropped.inc();
            }
            Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Waits (up to `timeout`) until every row queued before this call is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        if self.sender.send(Message::Flush(done)).is_err() {
            return false;
        }
        wait.recv_timeout(timeout).is_ok()
    }
}

fn run(mut connection: Connection, receiver: Receiver<Message>, dropped: prometheus::IntCounter) {
    let mut batch: Vec<SpendRecord> = Vec::with_capacity(BATCH_ROWS);
    let mut flushes = Vec::new();
    loop {
        // Block for the first message, then take what else is already queued.
        match receiver.recv_timeout(Duration::from_secs(3600)) {
            Ok(message) => take(message, &mut batch, &mut flushes),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let deadline = Instant::now() + GATHER;
        while batch.len() < BATCH_ROWS && flushes.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok(message) => take(message, &mut batch, &mut flushes),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            write_with_retries(&mut connection, &batch, &dropped);
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn take(message: Message, batch: &mut Vec<SpendRecord>, flushes: &mut Vec<mpsc::Sender<()>>) {
    match message {
        Message::Record(record) => batch.push(*record),
        Message::Flush(done) => flushes.push(done),
    }
}

fn write_with_retries(
    connection: &mut Connection,
    batch: &[SpendRecord],
    dropped: &prometheus::IntCounter,
) {
    let started = Instant::now();
    let mut delays = RETRY_DELAYS.iter();
    loop {
        match write(connection, batch) {
            Ok(()) => {
                tracing::trace!(
                    rows = batch.len(),
                    "spend rows written in {:?}",
                    started.elapsed()
                );
                return;
            }
            Err(error) => match delays.next() {
                Some(delay) => {
                    tracing::warn!("writing spend rows failed, retrying: {error:#}");
                    std::thread::sleep(*delay);
                }
                None => {
                    tracing::error!(
                        rows = batch.len(),
                        "writing spend rows failed; dropping them: {error:#}"
                    );
                    dropped.inc_by(batch.len() as u64);
                    return;
                }
            },
        }
    }
}

fn write(connection: &mut Connection, batch: &[SpendRecord]) -> anyhow::Result<()> {
    let tx = connection.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO spend_logs (request_id, call_type, api_key, key_alias, spend,
                prompt_tokens, completion_tokens, total_tokens, start_time, end_time, model,
                model_group, custom_llm_provider, api_base, user, status, status_code,
                cache_hit, request_tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18, ?19)",
        )?;
        let mut key_spend = tx.prepare_cached(
            "UPDATE virtual_keys SET spend = ?2, budget_reset_at = ?3 WHERE token = ?1",
        )?;
        for r in batch {
            let status = if r.status_code < 400 {
                "success"
            } else {
                "failure"
            };
            insert.execute(params![
                r.request_id,
                r.call_type,
                r.api_key,
                r.key_alias,
                r.spend,
                r.prompt_tokens as i64,
                r.completion_tokens as i64,
                (r.prompt_tokens + r.completion_tokens) as i64,
                r.start_time_ms,
                r.end_time_ms,
                r.model,
                r.model_group,
                r.provider,
                r.api_base,
                r.user,
                status,
                r.status_code,
                r.cache_hit,
                serde_json::to_string(&r.request_tags)?,
            ])?;
            if let Some((spend, reset_at)) = r.key_spend {
                key_spend.execute(params![r.api_key, spend, reset_at])?;
            }
        }
    }
    tx.commit().context("committing spend rows")
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SpendRecord> {
    let tags: String = row.get(16)?;
    Ok(SpendRecord {
        request_id: row.get(0)?,
        call_type: row.get(1)?,
        api_key: row.get(2)?,
        key_alias: row.get(3)?,
        spend: row.get(4)?,
        prompt_tokens: row.get::<_, i64>(5)?.max(0) as u64,
        completion_tokens: row.get::<_, i64>(6)?.max(0) as u64,
        start_time_ms: row.get(7)?,
        end_time_ms: row.get(8)?,
        model: row.get(9)?,
        model_group: row.get(10)?,
        provider: row.get(11)?,
        api_base: row.get(12)?,
        user: row.get(13)?,
        status_code: row.get(14)?,
        cache_hit: row.get(15)?,
        request_tags: serde_json::from_str(&tags).unwrap_or_default(),
        key_spend: None,
    })
}

impl Store {
    /// Spend rows matching `filter`, newest first.
    pub async fn spend_logs(&self, filter: SpendFilter) -> anyhow::Result<Vec<SpendRecord>> {
        self.with_connection(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT request_id, call_type, api_key, key_alias, spend, prompt_tokens,
                    completion_tokens, start_time, end_time, model, model_group,
                    custom_llm_provider, api_base, user, status_code, cache_hit, request_tags
                 FROM spend_logs
                 WHERE (?1 IS NULL OR api_key = ?1)
                   AND (?2 IS NULL OR user = ?2)
                   AND (?3 IS NULL OR request_id = ?3)
                   AND (?4 IS NULL OR start_time >= ?4)
                   AND (?5 IS NULL OR start_time < ?5)
                 ORDER BY id DESC LIMIT ?6",
            )?;
            let rows = statement.query_map(
                params![
                    filter.api_key,
                    filter.user,
                    filter.request_id,
                    filter.start_ms,
                    filter.end_ms,
                    filter.limit as i64
                ],
                from_row,
            )?;
            rows.collect::<Result<Vec<_>, _>>()
                .context("reading spend logs")
        })
        .await
    }
}

//! The ingestion log: where acknowledged trace ingestion waits to be folded into the store
//! (SQLite only). The ingestion API answers once a request's events are appended here, in
//! a short durable transaction (`synchronous=FULL`); the writer thread then folds them
//! into the indexed tables in large transactions, whose page writes are shared by
//! thousands of events instead of one request's hundred.
//!
//! The log is its own SQLite file (`ingest-log.db` beside `agentbox.db`), so appending
//! never waits on a fold's write lock. A row is one request's events (a JSON array of
//! `Ingest`), numbered by `seq`. The store records the last `seq` it folded in the fold's
//! own transaction (`Sink::log_position`), so after a crash start-up folds exactly the
//! rows after it (`recover`), and rows up to it are deleted whenever convenient.
//!
//! One thread appends (`Appender`): it commits every request waiting at that moment
//! together (group commit), hands the events to the writer thread, and only then answers,
//! so a read that waits for the writer after an answer sees those events. It stops taking
//! requests while more than `MAX_BACKLOG` events wait to be folded, so memory stays
//! bounded; the writer's full queue then answers 503.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use anyhow::Context;
use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::records::Ingest;
use super::writer::{Message, Sink};
use crate::pricing::PriceTable;

/// Events appended but not yet folded, at most, before appending waits for the writer.
const MAX_BACKLOG: usize = 200_000;
/// Events per append transaction, about.
const APPEND_ITEMS: usize = 20_000;
/// Log rows folded per transaction during start-up recovery.
const RECOVERY_ROWS: usize = 200;

/// The log file.
pub struct IngestLog {
    connection: Connection,
    /// The `seq` the next row gets.
    next: u64,
    /// Rows up to this `seq` are deleted.
    forgotten: u64,
}

impl IngestLog {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let connection = Connection::open(path)
            .with_context(|| format!("opening the ingestion log {}", path.display()))?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, events BLOB NOT NULL)",
        )?;
        let last: Option<i64> =
            connection.query_row("SELECT MAX(seq) FROM log", [], |r| r.get(0))?;
        Ok(Self {
            connection,
            next: last.map_or(1, |last| last as u64 + 1),
            forgotten: 0,
        })
    }

    /// Appends request batches (each a JSON array of events) in one durable transaction;
    /// returns the `seq` of the last.
    pub fn append(&mut self, batches: &[Vec<u8>]) -> anyhow::Result<u64> {
        let tx = self.connection.transaction()?;
        let mut seq = self.next;
        {
            let mut insert = tx.prepare_cached("INSERT INTO log (seq, events) VALUES (?1, ?2)")?;
            for events in batches {
                insert.execute(params![seq as i64, events])?;
                seq += 1;
            }
        }
        tx.commit().context("committing to the ingestion log")?;
        self.next = seq;
        Ok(seq - 1)
    }

    /// Deletes the rows up to `seq` (folded into the store).
    pub fn forget_through(&mut self, seq: u64) -> anyhow::Result<()> {
        if seq > self.forgotten {
            self.connection
                .execute("DELETE FROM log WHERE seq <= ?1", params![seq as i64])
                .context("trimming the ingestion log")?;
            self.forgotten = seq;
        }
        Ok(())
    }

    /// Up to `limit` rows after `seq`, decoded.
    fn read_after(&self, seq: u64, limit: usize) -> anyhow::Result<Vec<(u64, Vec<Ingest>)>> {
        let mut select = self
            .connection
            .prepare_cached("SELECT seq, events FROM log WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = select.query_map(params![seq as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, events) = row?;
            let events = serde_json::from_slice(&events)
                .with_context(|| format!("decoding ingestion log row {seq}"))?;
            out.push((seq, events));
        }
        Ok(out)
    }
}

/// Folds what the log holds beyond the store's position: the events acknowledged before a
/// crash or stop that the writer had not folded yet. Runs before the writer starts.
pub fn recover(
    log: &mut IngestLog,
    sink: &mut dyn Sink,
    prices: &PriceTable,
) -> anyhow::Result<()> {
    let mut position = sink.log_position()?;
    let mut folded = 0;
    loop {
        let rows = log.read_after(position, RECOVERY_ROWS)?;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        let events: Vec<Ingest> = rows.into_iter().flat_map(|(_, events)| events).collect();
        sink.write(
            &[],
            &events,
            &[],
            prices,
            crate::clock::unix_ms(),
            Some(last),
        )
        .context("folding the ingestion log")?;
        folded += events.len();
        position = last;
    }
    log.forget_through(position)?;
    if folded > 0 {
        tracing::info!(
            events = folded,
            "folded acknowledged trace events left in the ingestion log"
        );
    }
    log.next = log.next.max(position + 1);
    Ok(())
}

/// What the appender and the writer share: how far each got.
pub struct Progress {
    /// The last `seq` appended and handed to the writer.
    appended: AtomicU64,
    /// The last `seq` the writer folded.
    folded: AtomicU64,
    /// Events appended but not yet folded.
    backlog: Mutex<usize>,
    drained: Condvar,
    /// The backlog, for `/metrics`.
    gauge: prometheus::IntGauge,
}

impl Progress {
    /// `gauge` shows the backlog.
    pub fn new(gauge: prometheus::IntGauge) -> Self {
        Self {
            appended: AtomicU64::new(0),
            folded: AtomicU64::new(0),
            backlog: Mutex::new(0),
            drained: Condvar::new(),
            gauge,
        }
    }

    /// Whether acknowledged events wait to be folded.
    pub fn behind(&self) -> bool {
        self.appended.load(Ordering::Acquire) > self.folded.load(Ordering::Acquire)
    }

    /// The writer folded `events` events, through `seq`.
    pub fn folded(&self, seq: u64, events: usize) {
        self.folded.fetch_max(seq, Ordering::AcqRel);
        let mut backlog = self.backlog.lock();
        *backlog = backlog.saturating_sub(events);
        self.gauge.set(*backlog as i64);
        self.drained.notify_all();
    }

    fn add_backlog(&self, events: usize) {
        let mut backlog = self.backlog.lock();
        *backlog += events;
        self.gauge.set(*backlog as i64);
    }

    /// Waits while the backlog is full.
    fn wait_for_room(&self) {
        let mut backlog = self.backlog.lock();
        while *backlog > MAX_BACKLOG {
            self.drained
                .wait_for(&mut backlog, Duration::from_millis(100));
        }
    }
}

/// One request's events, encoded, and whom to answer.
pub struct Append {
    pub encoded: Vec<u8>,
    pub events: Vec<Ingest>,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// The appending thread's loop: group commits into the log, then hands over and answers.
pub fn run_appender(
    mut log: IngestLog,
    requests: Receiver<Append>,
    writer: SyncSender<Message>,
    progress: Arc<Progress>,
) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        let mut events = batch[0].events.len();
        while events < APPEND_ITEMS {
            match requests.try_recv() {
                Ok(next) => {
                    events += next.events.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        progress.wait_for_room();
        let encoded: Vec<Vec<u8>> = batch
            .iter_mut()
            .map(|a| std::mem::take(&mut a.encoded))
            .collect();
        match log.append(&encoded) {
            Ok(seq) => {
                let mut handed = Vec::with_capacity(events);
                let mut replies = Vec::with_capacity(batch.len());
                for append in batch {
                    replies.push(append.reply);
                    handed.extend(append.events);
                }
                progress.add_backlog(handed.len());
                if writer.send(Message::Logged(handed, seq)).is_err() {
                    // The writer stopped (shutdown): the rows stay in the log and are
                    // folded at the next start, so the answer is still true.
                    tracing::warn!(
                        "the store writer stopped; logged events wait for the next start"
                    );
                }
                progress.appended.fetch_max(seq, Ordering::AcqRel);
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::error!("appending to the ingestion log failed: {error:#}");
                for append in batch {
                    let _ = append.reply.send(Err(format!("{error:#}")));
                }
            }
        }
        let folded = progress.folded.load(Ordering::Acquire);
        if let Err(error) = log.forget_through(folded) {
            tracing::warn!("{error:#}");
        }
    }
}

//! The store's one writer thread, on its own connection to either backend (a `Sink`: a
//! commit is on disk when it returns). Spend rows are fire-and-forget: gathered for up to
//! 50 ms per transaction, never waited on by a request. Trace ingestion waits for its
//! commit (the API answers 2xx only once the events are durable), and commits as soon as
//! the queue is empty, so concurrent requests share one transaction (group commit).
//! The queue is bounded: a full queue drops spend rows (counted in
//! `agentbox_spend_log_dropped_total`) and refuses ingestion (the caller answers 503), so
//! memory never grows without bound.
//!
//! On SQLite, ingestion goes through the ingestion log first (`ingest_log.rs`): it is
//! answered once appended there, and reaches this thread as `Logged` events, which are
//! gathered into large transactions (up to `BATCH_ITEMS`) and never dropped: a failing
//! fold is retried until it succeeds, since the log still holds them. Reads of traces call
//! `caught_up` first, so they see every event acknowledged before them.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;

use super::Store;
use super::ingest_log::{self, Append, IngestLog, Progress};
use super::records::{Ingest, SpendRecord};
use crate::pricing::PriceTable;

/// Messages waiting for the writer at most.
const QUEUE_CAPACITY: usize = 50_000;
/// Spend rows or trace events per transaction, about.
const BATCH_ITEMS: usize = 100_000;
/// How long spend rows and logged events are gathered after the first, when nobody waits
/// on the commit.
const GATHER: Duration = Duration::from_millis(50);
/// Ingestion requests waiting to be appended to the ingestion log, at most.
const APPEND_QUEUE: usize = 1_000;
/// How long a read waits for acknowledged events to be folded before it answers anyway.
/// Under light load a fold takes milliseconds; under saturated ingestion a fold of
/// `BATCH_ITEMS` takes seconds, and a read then answers without the newest events, as
/// Langfuse's own reads do.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Waits between the tries of a failing spend batch.
const RETRY_DELAYS: &[Duration] = &[
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// Where the writer thread commits: one backend connection.
pub(super) trait Sink: Send + 'static {
    /// Writes spend rows and trace events in one durable transaction (an event whose
    /// `event_id` was seen before is skipped).
    /// `log_seq`: the events include the ingestion log's rows through this `seq`, which
    /// the same transaction records as the store's log position.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        spend: &[SpendRecord],
        traces: &[Ingest],
        ingests: &[&[Ingest]],
        prices: &PriceTable,
        now: i64,
        log_seq: Option<u64>,
    ) -> anyhow::Result<()>;

    /// The last ingestion log `seq` this store folded (0: none).
    fn log_position(&mut self) -> anyhow::Result<u64>;
}

type IngestReply = oneshot::Sender<Result<(), String>>;

pub(super) enum Message {
    Spend(Box<SpendRecord>),
    /// Trace events nobody waits on (automatic traces).
    Traces(Vec<Ingest>),
    Ingest(Vec<Ingest>, IngestReply),
    /// Acknowledged events from the ingestion log, through this `seq`.
    Logged(Vec<Ingest>, u64),
    Flush(Flushed),
}

/// Whom to tell that everything queued before a flush is written.
pub(super) enum Flushed {
    Thread(mpsc::Sender<()>),
    Task(oneshot::Sender<()>),
}

impl Flushed {
    fn send(self) {
        match self {
            Self::Thread(done) => drop(done.send(())),
            Self::Task(done) => drop(done.send(())),
        }
    }
}

/// Why ingestion was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the store's write queue is full; retry shortly")]
    Busy,
    #[error("the store could not write: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct Writer {
    sender: SyncSender<Message>,
    /// SQLite: ingestion goes through the ingestion log.
    log: Option<LogSide>,
    dropped: prometheus::IntCounter,
    traces_dropped: prometheus::IntCounter,
}

#[derive(Clone)]
struct LogSide {
    appender: SyncSender<Append>,
    progress: Arc<Progress>,
}

impl Writer {
    /// Starts the writer thread on its own connection to the store's database.
    pub fn start(
        store: &Store,
        prices: Arc<PriceTable>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let mut sink = store.writer_sink()?;
        let dropped = prometheus::IntCounter::new(
            "agentbox_spend_log_dropped_total",
            "Spend-log rows dropped because the writer's queue was full or the disk failed.",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let traces_dropped = prometheus::IntCounter::new(
            "agentbox_traces_dropped_total",
            "Automatic trace events dropped because the writer's queue was full or the disk failed.",
        )?;
        registry.register(Box::new(traces_dropped.clone()))?;
        // Registered whatever the backend: without an ingestion log it stays 0.
        let backlog = prometheus::IntGauge::new(
            "agentbox_traces_ingest_backlog",
            "Trace events acknowledged (in the ingestion log) but not yet folded into the store.",
        )?;
        registry.register(Box::new(backlog.clone()))?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
        let log = match store.ingest_log_path() {
            Some(path) => {
                let mut log = IngestLog::open(&path)?;
                ingest_log::recover(&mut log, sink.as_mut(), &prices)?;
                let progress = Arc::new(Progress::new(backlog));
                let (appender, requests) = mpsc::sync_channel(APPEND_QUEUE);
                let (writer, shared) = (sender.clone(), progress.clone());
                std::thread::Builder::new()
                    .name("store-log".into())
                    .spawn(move || ingest_log::run_appender(log, requests, writer, shared))
                    .context("starting the ingestion log")?;
                Some(LogSide { appender, progress })
            }
            None => None,
        };
        let thread_dropped = dropped.clone();
        let progress = log.as_ref().map(|log| log.progress.clone());
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                lower_priority();
                run(sink, receiver, prices, thread_dropped, progress)
            })
            .context("starting the store writer")?;
        Ok(Self {
            sender,
            log,
            dropped,
            traces_dropped,
        })
    }

    /// Queues trace events without waiting; a full queue drops them (counted).
    pub fn record_traces(&self, events: Vec<Ingest>) {
        let count = events.len() as u64;
        if self.sender.try_send(Message::Traces(events)).is_err() {
            self.traces_dropped.inc_by(count);
        }
    }

    /// Queues a spend row without waiting; a full queue drops it (counted and logged).
    pub fn record_spend(&self, record: SpendRecord) {
        match self.sender.try_send(Message::Spend(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped.get().is_multiple_of(1000) {
                    tracing::warn!("store write queue full: spend rows are being dropped");
                }
                self.dropped.inc();
            }
            Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Stores trace events durably (events with a duplicate `event_id` are skipped).
    pub async fn ingest(&self, batch: Vec<Ingest>) -> Result<(), IngestError> {
        let (reply, answer) = oneshot::channel();
        match &self.log {
            Some(log) => {
                let encoded = serde_json::to_vec(&batch)
                    .map_err(|e| IngestError::Failed(format!("encoding events: {e}")))?;
                log.appender
                    .try_send(Append {
                        encoded,
                        events: batch,
                        reply,
                    })
                    .map_err(|_| IngestError::Busy)?;
            }
            None => self
                .sender
                .try_send(Message::Ingest(batch, reply))
                .map_err(|_| IngestError::Busy)?,
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(IngestError::Failed(message)),
            Err(_) => Err(IngestError::Failed("the writer stopped".into())),
        }
    }

    /// Waits (up to `timeout`) until everything queued before this call is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        if self
            .sender
            .send(Message::Flush(Flushed::Thread(done)))
            .is_err()
        {
            return false;
        }
        wait.recv_timeout(timeout).is_ok()
    }

    /// Waits until every ingestion acknowledged before this call is folded into the
    /// store, so that a read sees it (at once when none waits; at most `CATCH_UP`).
    pub async fn caught_up(&self) {
        let Some(log) = &self.log else {
            return;
        };
        if !log.progress.behind() {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self
            .sender
            .try_send(Message::Flush(Flushed::Task(done)))
            .is_err()
        {
            return;
        }
        if tokio::time::timeout(CATCH_UP, wait).await.is_err() {
            tracing::debug!("a trace read did not wait longer for ingestion to be folded");
        }
    }
}

/// Background work yields to requests: the writer thread runs at nice 10, so on a busy
/// machine the HTTP workers get the CPU first (requests never wait on the writer).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on our own thread id only
        // changes this thread's nice value (per-thread on Linux).
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10)
        };
        if result != 0 {
            tracing::debug!("could not lower the writer thread's priority");
        }
    }
}

#[derive(Default)]
struct Batch {
    spend: Vec<SpendRecord>,
    traces: Vec<Ingest>,
    ingests: Vec<(Vec<Ingest>, IngestReply)>,
    events: usize,
    /// How many of `traces` came from the ingestion log, and through which `seq`.
    logged: usize,
    log_seq: Option<u64>,
    flushes: Vec<Flushed>,
}

impl Batch {
    fn take(&mut self, message: Message) {
        match message {
            Message::Spend(record) => self.spend.push(*record),
            Message::Traces(events) => self.traces.extend(events),
            Message::Ingest(events, reply) => {
                self.events += events.len();
                self.ingests.push((events, reply));
            }
            Message::Logged(events, seq) => {
                self.logged += events.len();
                self.traces.extend(events);
                self.log_seq = Some(seq);
            }
            Message::Flush(done) => self.flushes.push(done),
        }
    }

    fn len(&self) -> usize {
        self.spend.len() + self.traces.len() + self.events
    }

    /// Someone waits on this commit: do not gather longer.
    fn awaited(&self) -> bool {
        !self.ingests.is_empty() || !self.flushes.is_empty()
    }
}

fn run(
    mut sink: Box<dyn Sink>,
    receiver: Receiver<Message>,
    prices: Arc<PriceTable>,
    dropped: prometheus::IntCounter,
    progress: Option<Arc<Progress>>,
) {
    loop {
        let mut batch = Batch::default();
        match receiver.recv_timeout(Duration::from_secs(3600)) {
            Ok(message) => batch.take(message),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let deadline = Instant::now() + GATHER;
        while batch.len() < BATCH_ITEMS {
            let next = if batch.awaited() {
                receiver.try_recv().ok()
            } else {
                let wait = deadline.saturating_duration_since(Instant::now());
                receiver.recv_timeout(wait).ok()
            };
            match next {
                Some(message) => batch.take(message),
                None => break,
            }
        }
        commit(sink.as_mut(), batch, &prices, &dropped, progress.as_deref());
    }
}

fn commit(
    sink: &mut dyn Sink,
    batch: Batch,
    prices: &PriceTable,
    dropped: &prometheus::IntCounter,
    progress: Option<&Progress>,
) {
    let now = crate::clock::unix_ms();
    let mut delays = RETRY_DELAYS.iter();
    let Batch {
        spend,
        traces,
        mut ingests,
        logged,
        log_seq,
        flushes,
        ..
    } = batch;
    loop {
        let awaited: Vec<&[Ingest]> = ingests.iter().map(|(events, _)| &events[..]).collect();
        let result = sink.write(&spend, &traces, &awaited, prices, now, log_seq);
        drop(awaited);
        match result {
            Ok(()) => {
                for (_, reply) in ingests.drain(..) {
                    let _ = reply.send(Ok(()));
                }
                if let (Some(seq), Some(progress)) = (log_seq, progress) {
                    progress.folded(seq, logged);
                }
                break;
            }
            Err(error) if log_seq.is_some() => {
                // Acknowledged events are never dropped: the log holds them, so the fold
                // is retried until the store takes it (ingestion backs up meanwhile).
                for (_, reply) in ingests.drain(..) {
                    let _ = reply.send(Err(format!("{error:#}")));
                }
                let delay = delays.next().or(RETRY_DELAYS.last()).copied();
                tracing::error!("folding acknowledged trace events failed, retrying: {error:#}");
                std::thread::sleep(delay.unwrap_or(Duration::from_secs(2)));
            }
            Err(error) => {
                // Ingestion callers get the error now and may retry; spend rows are
                // retried here a few times, then dropped and counted.
                for (_, reply) in ingests.drain(..) {
                    let _ = reply.send(Err(format!("{error:#}")));
                }
                if spend.is_empty() && traces.is_empty() {
                    tracing::error!("writing trace events failed: {error:#}");
                    break;
                }
                match delays.next() {
                    Some(delay) => {
                        tracing::warn!("writing to the store failed, retrying: {error:#}");
                        std::thread::sleep(*delay);
                    }
                    None => {
                        tracing::error!(
                            rows = spend.len(),
                            traces = traces.len(),
                            "writing to the store failed; dropping spend rows and trace events: {error:#}"
                        );
                        dropped.inc_by(spend.len() as u64);
                        break;
                    }
                }
            }
        }
    }
    for done in flushes {
        done.send();
    }
}

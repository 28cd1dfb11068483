//! WAL checkpoints on their own thread and connection. SQLite's automatic checkpoint would
//! run inside the writer thread's commit and copy pages into the main file there; instead
//! the writer nudges this thread after each commit, and it checkpoints (PASSIVE: it never
//! waits on readers or the writer) at most once per `INTERVAL`. Committed transactions are
//! durable in the WAL either way; a checkpoint only moves them into the main file.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::Connection;

/// The least time between two checkpoints.
const INTERVAL: Duration = Duration::from_millis(500);

pub struct Checkpointer {
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(path: &Path) -> anyhow::Result<Self> {
        let connection = Connection::open(path)
            .with_context(|| format!("opening {} for checkpoints", path.display()))?;
        connection.busy_timeout(Duration::from_secs(5))?;
        let (nudge, nudged) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&connection, &nudged))
            .context("starting the checkpoint thread")?;
        Ok(Self {
            nudge: Some(nudge),
            thread: Some(thread),
        })
    }

    /// Says that a commit added to the WAL; never blocks.
    pub fn nudge(&self) {
        if let Some(nudge) = &self.nudge {
            let _ = nudge.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Lets a checkpoint under way finish, so that shutdown's own checkpoint does not meet it.
    fn drop(&mut self) {
        self.nudge.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(connection: &Connection, nudged: &Receiver<()>) {
    let mut last: Option<Instant> = None;
    while nudged.recv().is_ok() {
        if let Some(wait) = last.and_then(|last| INTERVAL.checked_sub(last.elapsed())) {
            std::thread::sleep(wait);
        }
        // Commits while this thread waited are covered by this one checkpoint.
        while nudged.try_recv().is_ok() {}
        if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!("WAL checkpoint failed: {error}");
        }
        last = Some(Instant::now());
    }
}

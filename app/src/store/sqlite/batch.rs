//! The writer thread's SQLite connection (`synchronous=FULL`: a commit is on disk when it
//! returns): one transaction per batch of spend rows and trace events. Its WAL is
//! checkpointed by `checkpoint.rs`, off the writer thread. A fold of the ingestion log
//! records its position (`ingest_log_position`) in the same transaction.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

use super::checkpoint::Checkpointer;
use super::rollup::{self, BatchTraces};
use super::{spend, traces};
use crate::pricing::PriceTable;
use crate::store::records::{Ingest, SpendRecord};
use crate::store::writer;

pub struct Sink {
    connection: Connection,
    checkpointer: Checkpointer,
}

impl Sink {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let connection = Connection::open(path)
            .with_context(|| format!("opening {} for the writer", path.display()))?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        // Random trace ids insert all over the B-trees: keep them in memory (128 MiB).
        connection.pragma_update(None, "cache_size", -131_072)?;
        // Checkpoints run on their own thread; the WAL file is cut back after each reset.
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        connection.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let checkpointer = Checkpointer::start(path)?;
        Ok(Self {
            connection,
            checkpointer,
        })
    }
}

impl writer::Sink for Sink {
    fn write(
        &mut self,
        spend: &[SpendRecord],
        traces: &[Ingest],
        ingests: &[&[Ingest]],
        prices: &PriceTable,
        now: i64,
        log_seq: Option<u64>,
    ) -> anyhow::Result<()> {
        let tx = self.connection.transaction()?;
        spend::insert(&tx, spend)?;
        let mut touched = BatchTraces::default();
        traces::apply(&tx, traces, prices, now, &mut touched)?;
        for events in ingests {
            traces::apply(&tx, events, prices, now, &mut touched)?;
        }
        rollup::refresh(&tx, &touched)?;
        if let Some(seq) = log_seq {
            tx.prepare_cached("UPDATE ingest_log_position SET seq = ?1")?
                .execute([seq as i64])?;
        }
        tx.commit().context("committing")?;
        self.checkpointer.nudge();
        Ok(())
    }

    fn log_position(&mut self) -> anyhow::Result<u64> {
        let seq: i64 = self
            .connection
            .query_row("SELECT seq FROM ingest_log_position", [], |r| r.get(0))
            .context("reading the ingestion log position")?;
        Ok(seq as u64)
    }
}

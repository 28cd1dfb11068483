//! The writer thread's Postgres side: one transaction per batch of spend rows and trace
//! events (Postgres' default `synchronous_commit`: a commit is on disk when it returns).

use anyhow::Context;

use super::traces::{KnownTraces, touched_traces};
use super::{Db, rollup, spend, traces};
use crate::pricing::PriceTable;
use crate::store::records::{Ingest, SpendRecord};
use crate::store::writer;

pub struct Sink {
    db: Db,
}

impl Sink {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
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
        // Postgres stores ingestion directly: the ingestion log is SQLite's.
        anyhow::ensure!(log_seq.is_none(), "Postgres has no ingestion log");
        self.db.block_on(async {
            let mut tx = self
                .db
                .pool
                .begin()
                .await
                .context("starting a transaction")?;
            spend::insert(&mut tx, spend).await?;
            let mut known = KnownTraces::new();
            traces::apply(&mut tx, traces, prices, now, &mut known).await?;
            for events in ingests {
                traces::apply(&mut tx, events, prices, now, &mut known).await?;
            }
            let mut batches = vec![traces];
            batches.extend_from_slice(ingests);
            rollup::refresh(&mut tx, &touched_traces(&batches)).await?;
            tx.commit().await.context("committing")?;
            Ok(())
        })
    }

    fn log_position(&mut self) -> anyhow::Result<u64> {
        Ok(0)
    }
}

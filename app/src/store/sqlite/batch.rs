//! The writer thread's SQLite connection (`synchronous=FULL`: a commit is on disk when it
//! returns): one transaction per batch of spend rows and trace events.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

use super::{rollup, spend, traces};
use crate::pricing::PriceTable;
use crate::store::records::{Ingest, SpendRecord};
use crate::store::writer;

pub struct Sink {
    connection: Connection,
}

impl Sink {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let connection = Connection::open(path)
            .with_context(|| format!("opening {} for the writer", path.display()))?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        // Random trace ids insert all over the B-trees: keep them in memory (128 MiB).
        connection.pragma_update(None, "cache_size", -131_072)?;
        Ok(Self { connection })
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
    ) -> anyhow::Result<Vec<Vec<bool>>> {
        let tx = self.connection.transaction()?;
        spend::insert(&tx, spend)?;
        traces::apply(&tx, traces, prices, now)?;
        let mut applied = Vec::with_capacity(ingests.len());
        for events in ingests {
            applied.push(traces::apply(&tx, events, prices, now)?);
        }
        let mut batches = vec![traces];
        batches.extend_from_slice(ingests);
        rollup::refresh(&tx, &rollup::touched(&batches))?;
        tx.commit().context("committing")?;
        Ok(applied)
    }
}

//! Retention: a background thread deletes traces older than `traces.retention_days`, in
//! chunks of a few hundred per short transaction, so ingestion never waits behind it.

use std::time::Duration;

use crate::store::Store;

const CHUNK: usize = 500;
/// Pause between chunks: the writer gets the database in between.
const BREATHER: Duration = Duration::from_millis(50);
/// The first pass waits for start-up (model loading) to settle.
const FIRST_RUN: Duration = Duration::from_secs(5);
const PERIOD: Duration = Duration::from_secs(3600);

/// Starts the pruning thread; it runs until the process ends.
pub fn start(store: Store, retention: Duration) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("trace-retention".into())
        .spawn(move || {
            std::thread::sleep(FIRST_RUN);
            loop {
                prune(&store, retention);
                std::thread::sleep(PERIOD);
            }
        })?;
    Ok(())
}

/// Deletes everything older than `retention`, chunk by chunk; returns how many traces.
pub fn prune(store: &Store, retention: Duration) -> usize {
    let before = crate::clock::unix_ms() - retention.as_millis() as i64;
    let mut total = 0;
    loop {
        match store.prune_traces(before, CHUNK) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                std::thread::sleep(BREATHER);
            }
            Err(e) => {
                tracing::warn!("pruning old traces failed: {e:#}");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(traces = total, "deleted traces past the retention period");
    }
    total
}

//! The cluster backend: Postgres through `sqlx`, chosen by `database_url`. The same tables
//! as SQLite (`../sqlite/`), versioned migrations under an advisory lock (replicas may
//! start together), and a connection pool. The few blocking callers (the writer thread,
//! the GPU monitor, retention) run their queries on the runtime that opened the pool.

mod batch;
mod conversations;
mod gpu_history;
mod keys;
mod migrations;
mod rollup;
mod spend;
mod traces;

pub(super) use batch::Sink;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};

#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
    /// The URL without its password, for logs.
    shown: String,
}

impl Db {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let shown = without_password(url);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .with_context(|| format!("connecting to Postgres at {shown}"))?;
        migrations::run(&pool)
            .await
            .with_context(|| format!("migrating Postgres at {shown}"))?;
        Ok(Self {
            pool,
            runtime: tokio::runtime::Handle::current(),
            shown,
        })
    }

    pub fn describe(&self) -> String {
        format!("Postgres at {}", self.shown)
    }

    /// The writer thread's handle on the pool.
    pub fn sink(&self) -> Sink {
        Sink::new(self.clone())
    }

    /// Runs `future` to completion from a thread outside the async runtime.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn close(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(an unparsable URL)".to_string(),
    }
}

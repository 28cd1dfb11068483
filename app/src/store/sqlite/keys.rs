//! The gateway's virtual keys: only their SHA-256 (`token`) is kept, with their limits and
//! their spend. The gateway holds them in memory (`gateway::keys`) and writes through here.

use anyhow::Context;
use rusqlite::params;

use super::Db;
use crate::store::records::{DuplicateAlias, StoredKey, to_i64};

const COLUMNS: &str = "token, key_name, key_alias, models, max_budget, budget_duration,
    budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, expires_at, metadata, spend,
    created_at, updated_at";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let models: String = row.get(3)?;
    let metadata: String = row.get(11)?;
    let count = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|n| n.max(0) as u64))
    };
    Ok(StoredKey {
        token: row.get(0)?,
        key_name: row.get(1)?,
        key_alias: row.get(2)?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        max_budget: row.get(4)?,
        budget_duration: row.get(5)?,
        budget_reset_at: row.get(6)?,
        rpm_limit: count(7)?,
        tpm_limit: count(8)?,
        max_parallel_requests: count(9)?,
        expires_at: row.get(10)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        spend: row.get(12)?,
        created_at: row.get(13)?,
        updated_at: row.get(14)?,
    })
}

impl Db {
    pub async fn load_keys(&self) -> anyhow::Result<Vec<StoredKey>> {
        self.with_connection(|c| {
            let mut statement = c.prepare(&format!("SELECT {COLUMNS} FROM virtual_keys"))?;
            let rows = statement.query_map([], from_row)?;
            rows.collect::<Result<Vec<_>, _>>()
                .context("loading virtual keys")
        })
        .await
    }

    /// Inserts or replaces a key (by token).
    pub async fn save_key(&self, key: StoredKey) -> anyhow::Result<()> {
        self.with_connection(move |c| {
            c.execute(
                &format!(
                    "INSERT OR REPLACE INTO virtual_keys ({COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                ),
                params![
                    key.token,
                    key.key_name,
                    key.key_alias,
                    serde_json::to_string(&key.models)?,
                    key.max_budget,
                    key.budget_duration,
                    key.budget_reset_at,
                    to_i64(key.rpm_limit),
                    to_i64(key.tpm_limit),
                    to_i64(key.max_parallel_requests),
                    key.expires_at,
                    key.metadata.to_string(),
                    key.spend,
                    key.created_at,
                    key.updated_at,
                ],
            )
            .map(drop)
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    anyhow::Error::new(DuplicateAlias)
                }
                other => anyhow::Error::new(other).context("saving a virtual key"),
            })
        })
        .await
    }

    /// Deletes keys by token; returns the tokens that existed.
    pub async fn delete_keys(&self, tokens: Vec<String>) -> anyhow::Result<Vec<String>> {
        self.with_connection(move |c| {
            let tx = c.transaction()?;
            let mut deleted = Vec::new();
            for token in tokens {
                if tx.execute("DELETE FROM virtual_keys WHERE token = ?1", [&token])? > 0 {
                    deleted.push(token);
                }
            }
            tx.commit().context("deleting virtual keys")?;
            Ok(deleted)
        })
        .await
    }
}

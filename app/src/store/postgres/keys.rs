//! The gateway's virtual keys in Postgres (only their SHA-256 `token`).

use anyhow::Context;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::Db;
use crate::store::records::{DuplicateAlias, StoredKey, to_i64};

const COLUMNS: &str = "token, key_name, key_alias, models, max_budget, budget_duration,
    budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, expires_at, metadata, spend,
    created_at, updated_at";

fn from_row(row: &PgRow) -> sqlx::Result<StoredKey> {
    let models: String = row.try_get(3)?;
    let metadata: String = row.try_get(11)?;
    let count = |i: usize| -> sqlx::Result<Option<u64>> {
        Ok(row.try_get::<Option<i64>, _>(i)?.map(|n| n.max(0) as u64))
    };
    Ok(StoredKey {
        token: row.try_get(0)?,
        key_name: row.try_get(1)?,
        key_alias: row.try_get(2)?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        max_budget: row.try_get(4)?,
        budget_duration: row.try_get(5)?,
        budget_reset_at: row.try_get(6)?,
        rpm_limit: count(7)?,
        tpm_limit: count(8)?,
        max_parallel_requests: count(9)?,
        expires_at: row.try_get(10)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        spend: row.try_get(12)?,
        created_at: row.try_get(13)?,
        updated_at: row.try_get(14)?,
    })
}

impl Db {
    pub async fn load_keys(&self) -> anyhow::Result<Vec<StoredKey>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM virtual_keys"))
            .fetch_all(&self.pool)
            .await
            .context("loading virtual keys")?;
        rows.iter()
            .map(from_row)
            .collect::<Result<_, _>>()
            .context("loading virtual keys")
    }

    pub async fn save_key(&self, key: StoredKey) -> anyhow::Result<()> {
        let result = sqlx::query(&format!(
            "INSERT INTO virtual_keys ({COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (token) DO UPDATE SET key_name = EXCLUDED.key_name,
                key_alias = EXCLUDED.key_alias, models = EXCLUDED.models,
                max_budget = EXCLUDED.max_budget, budget_duration = EXCLUDED.budget_duration,
                budget_reset_at = EXCLUDED.budget_reset_at, rpm_limit = EXCLUDED.rpm_limit,
                tpm_limit = EXCLUDED.tpm_limit,
                max_parallel_requests = EXCLUDED.max_parallel_requests,
                expires_at = EXCLUDED.expires_at, metadata = EXCLUDED.metadata,
                spend = EXCLUDED.spend, created_at = EXCLUDED.created_at,
                updated_at = EXCLUDED.updated_at"
        ))
        .bind(&key.token)
        .bind(&key.key_name)
        .bind(&key.key_alias)
        .bind(serde_json::to_string(&key.models)?)
        .bind(key.max_budget)
        .bind(&key.budget_duration)
        .bind(key.budget_reset_at)
        .bind(to_i64(key.rpm_limit))
        .bind(to_i64(key.tpm_limit))
        .bind(to_i64(key.max_parallel_requests))
        .bind(key.expires_at)
        .bind(key.metadata.to_string())
        .bind(key.spend)
        .bind(key.created_at)
        .bind(key.updated_at)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(anyhow::Error::new(DuplicateAlias))
            }
            Err(e) => Err(anyhow::Error::new(e).context("saving a virtual key")),
        }
    }

    pub async fn delete_keys(&self, tokens: Vec<String>) -> anyhow::Result<Vec<String>> {
        let deleted: Vec<String> =
            sqlx::query_scalar("DELETE FROM virtual_keys WHERE token = ANY($1) RETURNING token")
                .bind(&tokens)
                .fetch_all(&self.pool)
                .await
                .context("deleting virtual keys")?;
        // In the order asked for, as the SQLite backend answers.
        Ok(tokens.into_iter().filter(|t| deleted.contains(t)).collect())
    }
}

//! The spend log in Postgres: rows written by the writer thread (with keys' running spend
//! in the same transaction), and the reads for `GET /spend/logs`.

use anyhow::Context;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::Db;
use crate::store::records::{SpendFilter, SpendRecord};

/// Inserts spend rows, and their keys' running spend, in the caller's transaction.
pub(super) async fn insert(tx: &mut PgConnection, batch: &[SpendRecord]) -> anyhow::Result<()> {
    for r in batch {
        let status = if r.status_code < 400 {
            "success"
        } else {
            "failure"
        };
        sqlx::query(
            "INSERT INTO spend_logs (request_id, call_type, api_key, key_alias, spend,
                prompt_tokens, completion_tokens, total_tokens, start_time, end_time, model,
                model_group, custom_llm_provider, api_base, \"user\", status, status_code,
                cache_hit, request_tags)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                $17, $18, $19)",
        )
        .bind(&r.request_id)
        .bind(&r.call_type)
        .bind(&r.api_key)
        .bind(&r.key_alias)
        .bind(r.spend)
        .bind(r.prompt_tokens as i64)
        .bind(r.completion_tokens as i64)
        .bind((r.prompt_tokens + r.completion_tokens) as i64)
        .bind(r.start_time_ms)
        .bind(r.end_time_ms)
        .bind(&r.model)
        .bind(&r.model_group)
        .bind(&r.provider)
        .bind(&r.api_base)
        .bind(&r.user)
        .bind(status)
        .bind(i32::from(r.status_code))
        .bind(r.cache_hit)
        .bind(serde_json::to_string(&r.request_tags)?)
        .execute(&mut *tx)
        .await
        .context("inserting a spend row")?;
        if let Some((spend, reset_at)) = r.key_spend {
            sqlx::query(
                "UPDATE virtual_keys SET spend = $2, budget_reset_at = $3 WHERE token = $1",
            )
            .bind(&r.api_key)
            .bind(spend)
            .bind(reset_at)
            .execute(&mut *tx)
            .await
            .context("updating a key's spend")?;
        }
    }
    Ok(())
}

fn from_row(row: &PgRow) -> sqlx::Result<SpendRecord> {
    let tags: String = row.try_get(16)?;
    Ok(SpendRecord {
        request_id: row.try_get(0)?,
        call_type: row.try_get(1)?,
        api_key: row.try_get(2)?,
        key_alias: row.try_get(3)?,
        spend: row.try_get(4)?,
        prompt_tokens: row.try_get::<i64, _>(5)?.max(0) as u64,
        completion_tokens: row.try_get::<i64, _>(6)?.max(0) as u64,
        start_time_ms: row.try_get(7)?,
        end_time_ms: row.try_get(8)?,
        model: row.try_get(9)?,
        model_group: row.try_get(10)?,
        provider: row.try_get(11)?,
        api_base: row.try_get(12)?,
        user: row.try_get(13)?,
        status_code: u16::try_from(row.try_get::<i32, _>(14)?).unwrap_or(0),
        cache_hit: row.try_get(15)?,
        request_tags: serde_json::from_str(&tags).unwrap_or_default(),
        key_spend: None,
    })
}

impl Db {
    pub async fn spend_logs(&self, filter: SpendFilter) -> anyhow::Result<Vec<SpendRecord>> {
        let rows = sqlx::query(
            "SELECT request_id, call_type, api_key, key_alias, spend, prompt_tokens,
                completion_tokens, start_time, end_time, model, model_group,
                custom_llm_provider, api_base, \"user\", status_code, cache_hit, request_tags
             FROM spend_logs
             WHERE ($1::TEXT IS NULL OR api_key = $1)
               AND ($2::TEXT IS NULL OR \"user\" = $2)
               AND ($3::TEXT IS NULL OR request_id = $3)
               AND ($4::BIGINT IS NULL OR start_time >= $4)
               AND ($5::BIGINT IS NULL OR start_time < $5)
             ORDER BY id DESC LIMIT $6",
        )
        .bind(filter.api_key)
        .bind(filter.user)
        .bind(filter.request_id)
        .bind(filter.start_ms)
        .bind(filter.end_ms)
        .bind(filter.limit as i64)
        .fetch_all(&self.pool)
        .await
        .context("reading spend logs")?;
        rows.iter()
            .map(from_row)
            .collect::<Result<_, _>>()
            .context("reading spend logs")
    }
}

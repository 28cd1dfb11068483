//! The spend log: one row per gateway request (tokens, cost, key, model, timing), written
//! off the request path by the store's writer thread (`writer.rs`), with keys' running
//! spend in the same transaction; and its reads for `GET /spend/logs`.

use anyhow::Context;
use rusqlite::{Transaction, params};

use super::Db;
use crate::store::records::{SpendFilter, SpendRecord};

/// Inserts spend rows, and their keys' running spend, in the caller's transaction.
pub(super) fn insert(tx: &Transaction<'_>, batch: &[SpendRecord]) -> anyhow::Result<()> {
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO spend_logs (request_id, call_type, api_key, key_alias, spend,
                prompt_tokens, completion_tokens, total_tokens, start_time, end_time, model,
                model_group, custom_llm_provider, api_base, user, status, status_code,
                cache_hit, request_tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18, ?19)",
        )?;
        let mut key_spend = tx.prepare_cached(
            "UPDATE virtual_keys SET spend = ?2, budget_reset_at = ?3 WHERE token = ?1",
        )?;
        for r in batch {
            let status = if r.status_code < 400 {
                "success"
            } else {
                "failure"
            };
            insert.execute(params![
                r.request_id,
                r.call_type,
                r.api_key,
                r.key_alias,
                r.spend,
                r.prompt_tokens as i64,
                r.completion_tokens as i64,
                (r.prompt_tokens + r.completion_tokens) as i64,
                r.start_time_ms,
                r.end_time_ms,
                r.model,
                r.model_group,
                r.provider,
                r.api_base,
                r.user,
                status,
                r.status_code,
                r.cache_hit,
                serde_json::to_string(&r.request_tags)?,
            ])?;
            if let Some((spend, reset_at)) = r.key_spend {
                key_spend.execute(params![r.api_key, spend, reset_at])?;
            }
        }
    }
    Ok(())
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SpendRecord> {
    let tags: String = row.get(16)?;
    Ok(SpendRecord {
        request_id: row.get(0)?,
        call_type: row.get(1)?,
        api_key: row.get(2)?,
        key_alias: row.get(3)?,
        spend: row.get(4)?,
        prompt_tokens: row.get::<_, i64>(5)?.max(0) as u64,
        completion_tokens: row.get::<_, i64>(6)?.max(0) as u64,
        start_time_ms: row.get(7)?,
        end_time_ms: row.get(8)?,
        model: row.get(9)?,
        model_group: row.get(10)?,
        provider: row.get(11)?,
        api_base: row.get(12)?,
        user: row.get(13)?,
        status_code: row.get(14)?,
        cache_hit: row.get(15)?,
        request_tags: serde_json::from_str(&tags).unwrap_or_default(),
        key_spend: None,
    })
}

impl Db {
    /// Spend rows matching `filter`, newest first.
    pub async fn spend_logs(&self, filter: SpendFilter) -> anyhow::Result<Vec<SpendRecord>> {
        self.with_connection(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT request_id, call_type, api_key, key_alias, spend, prompt_tokens,
                    completion_tokens, start_time, end_time, model, model_group,
                    custom_llm_provider, api_base, user, status_code, cache_hit, request_tags
                 FROM spend_logs
                 WHERE (?1 IS NULL OR api_key = ?1)
                   AND (?2 IS NULL OR user = ?2)
                   AND (?3 IS NULL OR request_id = ?3)
                   AND (?4 IS NULL OR start_time >= ?4)
                   AND (?5 IS NULL OR start_time < ?5)
                 ORDER BY id DESC LIMIT ?6",
            )?;
            let rows = statement.query_map(
                params![
                    filter.api_key,
                    filter.user,
                    filter.request_id,
                    filter.start_ms,
                    filter.end_ms,
                    filter.limit as i64
                ],
                from_row,
            )?;
            rows.collect::<Result<Vec<_>, _>>()
                .context("reading spend logs")
        })
        .await
    }
}

//! Downsampled GPU history in Postgres (one row per GPU per bucket).

use anyhow::Context;
use sqlx::Row;

use super::Db;
use crate::gpu::HistoryPoint;

impl Db {
    /// Blocking: the GPU monitor calls it from its own thread.
    pub fn insert_gpu_history(
        &self,
        points: &[(String, HistoryPoint)],
        keep_from_ms: u64,
    ) -> anyhow::Result<()> {
        self.block_on(async {
            let mut tx = self.pool.begin().await?;
            for (uuid, p) in points {
                sqlx::query(
                    "INSERT INTO gpu_history (uuid, t, gpu_util, mem_copy_util, fb_used_mib,
                        fb_total_mib, power_w, temperature_c, sm_clock_mhz)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (uuid, t) DO UPDATE SET gpu_util = EXCLUDED.gpu_util,
                        mem_copy_util = EXCLUDED.mem_copy_util,
                        fb_used_mib = EXCLUDED.fb_used_mib, fb_total_mib = EXCLUDED.fb_total_mib,
                        power_w = EXCLUDED.power_w, temperature_c = EXCLUDED.temperature_c,
                        sm_clock_mhz = EXCLUDED.sm_clock_mhz",
                )
                .bind(uuid)
                .bind(p.t as i64)
                .bind(p.gpu_util)
                .bind(p.mem_copy_util)
                .bind(p.fb_used_mib)
                .bind(p.fb_total_mib)
                .bind(p.power_w)
                .bind(p.temperature_c)
                .bind(p.sm_clock_mhz)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM gpu_history WHERE t < $1")
                .bind(keep_from_ms as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await.context("storing GPU history")
        })
    }

    pub async fn gpu_history(&self, since_ms: u64) -> anyhow::Result<Vec<(String, HistoryPoint)>> {
        let rows = sqlx::query(
            "SELECT uuid, t, gpu_util, mem_copy_util, fb_used_mib, fb_total_mib, power_w,
                temperature_c, sm_clock_mhz
             FROM gpu_history WHERE t >= $1 ORDER BY uuid, t",
        )
        .bind(since_ms as i64)
        .fetch_all(&self.pool)
        .await
        .context("reading GPU history")?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>(0)?,
                    HistoryPoint {
                        t: row.try_get::<i64, _>(1)?.max(0) as u64,
                        gpu_util: row.try_get(2)?,
                        mem_copy_util: row.try_get(3)?,
                        fb_used_mib: row.try_get(4)?,
                        fb_total_mib: row.try_get(5)?,
                        power_w: row.try_get(6)?,
                        temperature_c: row.try_get(7)?,
                        sm_clock_mhz: row.try_get(8)?,
                    },
                ))
            })
            .collect::<sqlx::Result<Vec<_>>>()
            .context("reading GPU history")
    }
}

//! Downsampled GPU history (one row per GPU per bucket), written by the GPU monitor and
//! read by `/api/gpu/history`; rows older than the retention window are pruned on write.

use anyhow::Context;
use rusqlite::params;

use super::Store;
use crate::gpu::HistoryPoint;

impl Store {
    /// Stores finished buckets and drops rows from before `keep_from_ms`. Blocking: the
    /// GPU monitor calls it from its own thread.
    pub fn insert_gpu_history(
        &self,
        points: &[(String, HistoryPoint)],
        keep_from_ms: u64,
    ) -> anyhow::Result<()> {
        let mut connection = self.connection.lock();
        let tx = connection.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO gpu_history
                 (uuid, t, gpu_util, mem_copy_util, fb_used_mib, fb_total_mib, power_w, temperature_c, sm_clock_mhz)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (uuid, p) in points {
                insert.execute(params![
                    uuid,
                    p.t as i64,
                    p.gpu_util,
                    p.mem_copy_util,
                    p.fb_used_mib,
                    p.fb_total_mib,
                    p.power_w,
                    p.temperature_c,
                    p.sm_clock_mhz
                ])?;
            }
            tx.execute(
                "DELETE FROM gpu_history WHERE t < ?1",
                params![keep_from_ms as i64],
            )?;
        }
        tx.commit().context("storing GPU history")
    }

    /// Every GPU's stored points since `since_ms`, by GPU then time.
    pub async fn gpu_history(&self, since_ms: u64) -> anyhow::Result<Vec<(String, HistoryPoint)>> {
        self.with_connection(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT uuid, t, gpu_util, mem_copy_util, fb_used_mib, fb_total_mib, power_w, temperature_c, sm_clock_mhz
                 FROM gpu_history WHERE t >= ?1 ORDER BY uuid, t",
            )?;
            let rows = statement.query_map(params![since_ms as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    HistoryPoint {
                        t: row.get::<_, i64>(1)?.max(0) as u64,
                        gpu_util: row.get(2)?,
                        mem_copy_util: row.get(3)?,
                        fb_used_mib: row.get(4)?,
                        fb_total_mib: row.get(5)?,
                        power_w: row.get(6)?,
                        temperature_c: row.get(7)?,
                        sm_clock_mhz: row.get(8)?,
                    },
                ))
            })?;
            rows.collect::<Result<Vec<_>, _>>()
                .context("reading GPU history")
        })
        .await
    }
}

//! Downsampled GPU history (one row per GPU per bucket), written by the GPU monitor and
//! read by `/api/gpu/history`; rows older than the retention window are pruned on write.

use anyhow::Context;
use rusqlite::params;

use super::Db;
use crate::gpu::HistoryPoint;

impl Db {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn point(t: u64, util: f64) -> HistoryPoint {
        HistoryPoint {
            t,
            gpu_util: Some(util),
            power_w: Some(300.0),
            ..HistoryPoint::default()
        }
    }

    #[tokio::test]
    async fn history_is_stored_read_back_in_order_and_pruned() {
        let dir = std::env::temp_dir().join(format!("agentbox-gpu-history-{}", std::process::id()));
        let store = Db::open(&dir).unwrap();
        let rows = vec![
            ("GPU-b".to_string(), point(2_000, 20.0)),
            ("GPU-a".to_string(), point(61_000, 61.0)),
            ("GPU-a".to_string(), point(1_000, 10.0)),
        ];
        store.insert_gpu_history(&rows, 0).unwrap();
        let read = store.gpu_history(0).await.unwrap();
        let keys: Vec<(&str, u64)> = read.iter().map(|(u, p)| (u.as_str(), p.t)).collect();
        assert_eq!(
            keys,
            [("GPU-a", 1_000), ("GPU-a", 61_000), ("GPU-b", 2_000)]
        );
        assert_eq!(read[0].1, point(1_000, 10.0));
        // A bucket written again replaces the first version.
        store
            .insert_gpu_history(&[("GPU-a".to_string(), point(61_000, 99.0))], 0)
            .unwrap();
        // `since` filters; a write prunes rows before its retention window.
        assert_eq!(store.gpu_history(60_000).await.unwrap().len(), 1);
        store
            .insert_gpu_history(&[("GPU-a".to_string(), point(121_000, 5.0))], 60_000)
            .unwrap();
        let read = store.gpu_history(0).await.unwrap();
        let kept: Vec<(u64, Option<f64>)> = read.iter().map(|(_, p)| (p.t, p.gpu_util)).collect();
        assert_eq!(kept, [(61_000, Some(99.0)), (121_000, Some(5.0))]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

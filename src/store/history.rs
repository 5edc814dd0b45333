//! History points: the seed's nine fields per point and one row per GPU, pruned by retention,
//! read back averaged into equal buckets.

use rusqlite::params;

use super::{Store, StoreError};
use crate::history::{GpuHistoryPoint, HistoryPoint, HistorySeries};
use crate::time::rfc3339_unix;

impl Store {
    /// Records one history point with its GPUs' figures (durably, in one transaction) and drops
    /// points older than `prune_before`. The GPUs' rows are keyed by the point's time: a snapshot
    /// recorded twice (by the recorder and by `stats/save`) keeps one row per GPU.
    pub fn record_history(&mut self, p: &HistoryPoint, prune_before: f64) -> Result<(), StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO history (ts, cpu_percent, ram_used_gb, ram_total_gb, ram_percent,
                                      gpu_percent, vram_used_mb, vram_total_mb, vram_percent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    p.ts,
                    p.cpu_percent,
                    p.ram_used_gb,
                    p.ram_total_gb,
                    p.ram_percent,
                    p.gpu_percent,
                    p.vram_used_mb,
                    p.vram_total_mb,
                    p.vram_percent
                ],
            )?;
            {
                let mut gpu = tx.prepare_cached(
                    "INSERT OR REPLACE INTO history_gpus (ts, gpu_index, gpu_percent, vram_percent)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for g in &p.gpus {
                    gpu.execute(params![p.ts, g.index, g.gpu_percent, g.vram_percent])?;
                }
            }
            tx.execute("DELETE FROM history WHERE ts < ?1", params![prune_before])?;
            tx.execute("DELETE FROM history_gpus WHERE ts < ?1", params![prune_before])?;
            tx.commit()
        })
    }

    /// Points with `start <= ts <= end`, oldest first. When more than `max_points` fall in the
    /// range they are averaged into `max_points` equal-width buckets; a reading missing from a
    /// sample is left out of its bucket's average rather than counted as 0. Each point's `gpus`
    /// are averaged per GPU over the same buckets (unbucketed: the rows recorded at its time).
    pub fn query_history(
        &self,
        start: f64,
        end: f64,
        max_points: u32,
        interval_seconds: f64,
    ) -> Result<HistorySeries, StoreError> {
        let total: u64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM history WHERE ts >= ?1 AND ts <= ?2", params![start, end], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        let bucketed = total > u64::from(max_points);
        let width = if bucketed { (end - start) / f64::from(max_points) } else { interval_seconds };
        let (rows, gpu_rows) =
            if bucketed { self.bucketed_rows(start, end, width, max_points) } else { self.raw_rows(start, end) };
        let rows = rows.map_err(|e| self.sql(e))?;
        let mut by_key: std::collections::HashMap<i64, Vec<GpuHistoryPoint>> = std::collections::HashMap::new();
        for (key, gpu) in gpu_rows.map_err(|e| self.sql(e))? {
            by_key.entry(key).or_default().push(gpu);
        }
        let points = rows
            .into_iter()
            .map(|(key, mut point)| {
                // Two points recorded at the same time (the same snapshot saved twice) share its rows.
                point.gpus = by_key.get(&key).cloned().unwrap_or_default();
                point
            })
            .collect();
        Ok(HistorySeries { points, total_count: total, resolution_seconds: width })
    }

    /// The points averaged into `max_points` buckets of `width` seconds, and each bucket's GPUs,
    /// keyed by the bucket.
    fn bucketed_rows(&self, start: f64, end: f64, width: f64, max_points: u32) -> Rows {
        // The sample exactly at `end` belongs to the last bucket, not one of its own. Points and
        // their GPUs are bucketed by the same expression over the same times, so they agree.
        const BUCKET: &str = "MIN(CAST((ts - ?1) / ?3 AS INTEGER), ?4 - 1)";
        let points = self
            .conn
            .prepare_cached(&format!(
                "SELECT {BUCKET} AS bucket, AVG(ts), AVG(cpu_percent), AVG(ram_used_gb), AVG(ram_total_gb),
                        AVG(ram_percent), AVG(gpu_percent), AVG(vram_used_mb), AVG(vram_total_mb),
                        AVG(vram_percent)
                 FROM history WHERE ts >= ?1 AND ts <= ?2
                 GROUP BY bucket
                 ORDER BY 2"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![start, end, width, max_points], |r| point_row(r, r.get(0)?))?
                    .collect::<Result<Vec<_>, _>>()
            });
        // Streamed in time order and summed here: grouping in SQL would sort every row of every
        // GPU first (about twice the time). The bucket is still SQLite's, by the same expression.
        let gpus = self
            .conn
            .prepare_cached(&format!(
                "SELECT {BUCKET}, gpu_index, gpu_percent, vram_percent
                 FROM history_gpus WHERE ts >= ?1 AND ts <= ?2 ORDER BY ts, gpu_index"
            ))
            .and_then(|mut stmt| {
                let mut sums = GpuSums::default();
                let mut rows = stmt.query(params![start, end, width, max_points])?;
                while let Some(r) = rows.next()? {
                    sums.add(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                }
                Ok(sums.means())
            });
        (points, gpus)
    }

    /// Every point in the range and the GPUs' rows, keyed by the point's time (its bits).
    fn raw_rows(&self, start: f64, end: f64) -> Rows {
        let points = self
            .conn
            .prepare_cached(
                "SELECT NULL, ts, cpu_percent, ram_used_gb, ram_total_gb, ram_percent,
                        gpu_percent, vram_used_mb, vram_total_mb, vram_percent
                 FROM history WHERE ts >= ?1 AND ts <= ?2 ORDER BY ts, id",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![start, end], |r| point_row(r, r.get::<_, f64>(1)?.to_bits() as i64))?
                    .collect::<Result<Vec<_>, _>>()
            });
        let gpus = self
            .conn
            .prepare_cached(
                "SELECT ts, gpu_index, gpu_percent, vram_percent
                 FROM history_gpus WHERE ts >= ?1 AND ts <= ?2 ORDER BY ts, gpu_index",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![start, end], |r| {
                    let key = r.get::<_, f64>(0)?.to_bits() as i64;
                    Ok((key, GpuHistoryPoint { index: r.get(1)?, gpu_percent: r.get(2)?, vram_percent: r.get(3)? }))
                })?
                .collect::<Result<Vec<_>, _>>()
            });
        (points, gpus)
    }
}

/// Points keyed by what their GPUs are found by, and the GPUs' rows keyed likewise.
type Rows = (rusqlite::Result<Vec<(i64, HistoryPoint)>>, rusqlite::Result<Vec<(i64, GpuHistoryPoint)>>);

/// One point from columns 1 to 9 (ts, the seed's eight figures), under `key`.
fn point_row(r: &rusqlite::Row<'_>, key: i64) -> rusqlite::Result<(i64, HistoryPoint)> {
    let ts: f64 = r.get(1)?;
    let point = HistoryPoint {
        ts,
        cpu_percent: r.get(2)?,
        ram_used_gb: r.get(3)?,
        ram_total_gb: r.get(4)?,
        ram_percent: r.get(5)?,
        gpu_percent: r.get(6)?,
        vram_used_mb: r.get(7)?,
        vram_total_mb: r.get(8)?,
        vram_percent: r.get(9)?,
        timestamp: rfc3339_unix(ts),
        gpus: Vec::new(),
    };
    Ok((key, point))
}

/// Per bucket and GPU, the sums and counts of the readings there were, as rows arrive in time
/// order (so a bucket's rows are consecutive).
#[derive(Default)]
struct GpuSums {
    buckets: Vec<(i64, Vec<GpuSum>)>,
}

/// One GPU's utilization and VRAM % readings in a bucket: sums and counts.
struct GpuSum {
    index: u32,
    sum: [f64; 2],
    n: [u32; 2],
}

impl GpuSums {
    fn add(&mut self, bucket: i64, index: u32, util: Option<f64>, vram: Option<f64>) {
        if self.buckets.last().is_none_or(|(b, _)| *b != bucket) {
            self.buckets.push((bucket, Vec::new()));
        }
        let gpus = &mut self.buckets.last_mut().expect("pushed above").1;
        let at = match gpus.iter().position(|g| g.index == index) {
            Some(at) => at,
            None => {
                gpus.push(GpuSum { index, sum: [0.0; 2], n: [0; 2] });
                gpus.len() - 1
            }
        };
        let g = &mut gpus[at];
        for (k, v) in [util, vram].into_iter().enumerate() {
            if let Some(v) = v {
                g.sum[k] += v;
                g.n[k] += 1;
            }
        }
    }

    /// `(bucket, GPU)` means, a GPU's figure `None` where it had no reading in the bucket.
    fn means(self) -> Vec<(i64, GpuHistoryPoint)> {
        let mean = |sum: f64, n: u32| (n > 0).then(|| sum / f64::from(n));
        self.buckets
            .into_iter()
            .flat_map(|(bucket, mut gpus)| {
                gpus.sort_unstable_by_key(|g| g.index);
                gpus.into_iter().map(move |g| {
                    let point = GpuHistoryPoint {
                        index: g.index,
                        gpu_percent: mean(g.sum[0], g.n[0]),
                        vram_percent: mean(g.sum[1], g.n[1]),
                    };
                    (bucket, point)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DB_FILE;
    use rusqlite::Connection;

    fn point(ts: f64, cpu: Option<f64>, vram: f64) -> HistoryPoint {
        HistoryPoint {
            ts,
            cpu_percent: cpu,
            ram_used_gb: Some(1.0),
            ram_total_gb: Some(2.0),
            ram_percent: Some(50.0),
            gpu_percent: 10.0,
            vram_used_mb: vram,
            vram_total_mb: 1000.0,
            vram_percent: vram / 10.0,
            timestamp: String::new(),
            gpus: Vec::new(),
        }
    }

    /// Ten samples into five buckets: each bucket is the exact mean of its two samples, and a
    /// missing reading is skipped rather than averaged in as 0.
    #[test]
    fn history_buckets_average_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let cpu = if i == 3 { None } else { Some(f64::from(i) * 10.0) };
            s.record_history(&point(1000.0 + f64::from(i), cpu, f64::from(i) * 100.0), 0.0).unwrap();
        }
        let raw = s.query_history(1000.0, 1009.0, 100, 5.0).unwrap();
        assert_eq!(raw.total_count, 10);
        assert_eq!(raw.points.len(), 10);
        assert_eq!(raw.resolution_seconds, 5.0);
        assert_eq!(raw.points[3].cpu_percent, None);
        let b = s.query_history(1000.0, 1010.0, 5, 5.0).unwrap();
        assert_eq!(b.total_count, 10);
        assert_eq!(b.resolution_seconds, 2.0);
        let cpu: Vec<Option<f64>> = b.points.iter().map(|p| p.cpu_percent).collect();
        assert_eq!(cpu, vec![Some(5.0), Some(20.0), Some(45.0), Some(65.0), Some(85.0)]);
        let vram: Vec<f64> = b.points.iter().map(|p| p.vram_used_mb).collect();
        assert_eq!(vram, vec![50.0, 250.0, 450.0, 650.0, 850.0]);
        let ts: Vec<f64> = b.points.iter().map(|p| p.ts).collect();
        assert_eq!(ts, vec![1000.5, 1002.5, 1004.5, 1006.5, 1008.5]);
        // The sample exactly at the end of the range lands in the last bucket, not a sixth one.
        let edge = s.query_history(1000.0, 1009.0, 3, 5.0).unwrap();
        assert_eq!(edge.points.len(), 3);
        assert_eq!(edge.points[2].vram_used_mb, 750.0); // 600, 700, 800 and the edge sample 900
    }

    /// Recording prunes what is older than the retention boundary.
    #[test]
    fn history_retention_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            s.record_history(&point(f64::from(i), Some(1.0), 1.0), 0.0).unwrap();
        }
        s.record_history(&point(10.0, Some(1.0), 1.0), 3.0).unwrap();
        let all = s.query_history(0.0, 100.0, 100, 1.0).unwrap();
        let ts: Vec<f64> = all.points.iter().map(|p| p.ts).collect();
        assert_eq!(ts, vec![3.0, 4.0, 10.0]);
    }

    fn gpu(index: u32, util: Option<f64>, vram: Option<f64>) -> GpuHistoryPoint {
        GpuHistoryPoint { index, gpu_percent: util, vram_percent: vram }
    }

    /// Each GPU is averaged over the same buckets as the whole; a reading a GPU lacked is left
    /// out of its mean, and a GPU with no reading in a bucket has `None`, not 0. Unbucketed,
    /// each point has the rows recorded at its time; pruning drops them with it.
    #[test]
    fn history_gpus_bucket_with_their_points() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let mut p = point(1000.0 + f64::from(i), Some(1.0), 100.0);
            let util1 = if i % 2 == 1 { None } else { Some(50.0 + f64::from(i)) };
            let vram1 = if i < 2 { None } else { Some(60.0) };
            p.gpus = vec![gpu(0, Some(f64::from(i) * 10.0), Some(20.0)), gpu(1, util1, vram1)];
            s.record_history(&p, 0.0).unwrap();
        }
        let raw = s.query_history(1000.0, 1009.0, 100, 1.0).unwrap();
        assert_eq!(raw.points[3].gpus, vec![gpu(0, Some(30.0), Some(20.0)), gpu(1, None, Some(60.0))]);
        assert_eq!(raw.points[0].gpus, vec![gpu(0, Some(0.0), Some(20.0)), gpu(1, Some(50.0), None)]);
        let b = s.query_history(1000.0, 1010.0, 5, 1.0).unwrap();
        let util0: Vec<Option<f64>> = b.points.iter().map(|p| p.gpus[0].gpu_percent).collect();
        assert_eq!(util0, vec![Some(5.0), Some(25.0), Some(45.0), Some(65.0), Some(85.0)]);
        // GPU 1 has one utilization per bucket (the odd samples lack it), and no VRAM at first.
        let util1: Vec<Option<f64>> = b.points.iter().map(|p| p.gpus[1].gpu_percent).collect();
        assert_eq!(util1, vec![Some(50.0), Some(52.0), Some(54.0), Some(56.0), Some(58.0)]);
        let vram1: Vec<Option<f64>> = b.points.iter().map(|p| p.gpus[1].vram_percent).collect();
        assert_eq!(vram1, vec![None, Some(60.0), Some(60.0), Some(60.0), Some(60.0)]);
        // The edge sample joins the last bucket for the GPUs as for the whole.
        let edge = s.query_history(1000.0, 1009.0, 3, 1.0).unwrap();
        assert_eq!(edge.points[2].vram_used_mb, 100.0);
        assert_eq!(edge.points[2].gpus[0].gpu_percent, Some(75.0)); // 60, 70, 80 and the edge 90

        s.record_history(&point(1020.0, None, 1.0), 1005.0).unwrap();
        let rows: i64 = s.conn.query_row("SELECT COUNT(*) FROM history_gpus", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 10, "five points left with two GPUs each; the new point has none");

        // A bucket whose first sample lacks GPU 0 still lists its GPUs by index.
        let mut p = point(2000.0, Some(1.0), 1.0);
        p.gpus = vec![gpu(1, Some(10.0), None)];
        s.record_history(&p, 0.0).unwrap();
        p.ts = 2001.0;
        p.gpus = vec![gpu(0, None, Some(30.0))];
        s.record_history(&p, 0.0).unwrap();
        let one = s.query_history(2000.0, 2001.0, 1, 1.0).unwrap();
        assert_eq!(one.points[0].gpus, vec![gpu(0, None, Some(30.0)), gpu(1, Some(10.0), None)]);
    }

    /// A store written before per-GPU history opens with the table added, and its old points
    /// come back with no GPUs.
    #[test]
    fn history_from_before_per_gpu_figures_reads_with_none() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, cpu_percent REAL,
                     ram_used_gb REAL, ram_total_gb REAL, ram_percent REAL, gpu_percent REAL NOT NULL,
                     vram_used_mb REAL NOT NULL, vram_total_mb REAL NOT NULL, vram_percent REAL NOT NULL);
                 INSERT INTO history (ts, gpu_percent, vram_used_mb, vram_total_mb, vram_percent)
                     VALUES (1000, 40, 4096, 16384, 25);",
            )
            .unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        let mut p = point(1001.0, Some(1.0), 100.0);
        p.gpus = vec![gpu(0, Some(40.0), Some(25.0))];
        s.record_history(&p, 0.0).unwrap();
        let all = s.query_history(0.0, 2000.0, 100, 1.0).unwrap();
        assert_eq!(all.points.len(), 2);
        assert_eq!(all.points[0].gpus, vec![]);
        assert_eq!(all.points[0].gpu_percent, 40.0);
        assert_eq!(all.points[1].gpus, p.gpus);
    }
}

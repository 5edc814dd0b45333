//! Stats history for charts: the embedded store (the default) and a Prometheus-backed source
//! that answers the same query from Prometheus's own record of vramguard's metrics.
//!
//! - [`prometheus`]: builds the same answer from `query_range`.
//!
//! Recording (every `history.interval`, pruning past `history.retention`) is the service
//! layer's job: `app::history` (the recorder task and `stats/save`).
//!
//! The bucketing itself is SQL in [`crate::store`]: equal-width time buckets, each the average of
//! the samples in it (missing readings are skipped, not counted as 0). Each point carries the
//! whole (the seed's nine fields) and each GPU's own utilization and VRAM % ([`GpuHistoryPoint`]),
//! bucketed alike.

pub(crate) mod prometheus;

use crate::snapshot::Snapshot;
use crate::time::rfc3339;
use crate::units::{MIB, gib, round1, round2};

/// One GPU's figures in a point of history: its own utilization and VRAM %, each the mean of the
/// readings it had over the point's samples. A reading the GPU lacked is null (and left out of
/// a bucket's mean), never 0.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuHistoryPoint {
    /// NVML index (the `gpu` label of the metrics).
    pub index: u32,
    /// SM busy, percent.
    pub gpu_percent: Option<f64>,
    /// VRAM allocated, percent of this GPU's capacity.
    pub vram_percent: Option<f64>,
}

impl GpuHistoryPoint {
    /// The same figures rounded to 0.1 %, as the other percentages.
    pub fn rounded(self) -> Self {
        Self { gpu_percent: self.gpu_percent.map(round1), vram_percent: self.vram_percent.map(round1), ..self }
    }
}

/// One point of history: the seed's nine stats fields, and the GPUs one by one.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    /// Unix seconds (the API shows `timestamp`).
    pub ts: f64,
    /// CPU busy, percent.
    pub cpu_percent: Option<f64>,
    /// RAM in use, GiB.
    pub ram_used_gb: Option<f64>,
    /// RAM size, GiB.
    pub ram_total_gb: Option<f64>,
    /// RAM in use, percent.
    pub ram_percent: Option<f64>,
    /// Mean GPU busy, percent.
    pub gpu_percent: f64,
    /// VRAM allocated over all GPUs, MiB.
    pub vram_used_mb: f64,
    /// VRAM capacity over all GPUs, MiB.
    pub vram_total_mb: f64,
    /// VRAM allocated, percent.
    pub vram_percent: f64,
    /// When (RFC 3339 UTC); for a bucket, the mean time of its samples.
    pub timestamp: String,
    /// Each GPU's own figures, by index; empty for points recorded before vramguard kept them.
    /// Not serialised with the nine fields: the history answer adds them as its points' `gpus`
    /// (`/stats`, which flattens this point, has a `gpus` of its own, the live breakdown).
    pub gpus: Vec<GpuHistoryPoint>,
}

impl HistoryPoint {
    /// The point a snapshot contributes. Same figures as `GET /stats`, unrounded.
    pub fn from_snapshot(s: &Snapshot) -> Self {
        let host = s.host.as_ref();
        let utils: Vec<f64> = s.gpus.iter().filter_map(|g| g.utilization_ratio).collect();
        let used: u64 = s.gpus.iter().filter_map(|g| g.memory).map(|m| m.used_bytes).sum();
        let total: u64 = s.gpus.iter().filter_map(|g| g.memory).map(|m| m.total_bytes).sum();
        Self {
            ts: s.timestamp_seconds(),
            cpu_percent: host.map(|h| h.cpu_usage_ratio * 100.0),
            ram_used_gb: host.map(|h| gib(h.memory_used_bytes())),
            ram_total_gb: host.map(|h| gib(h.memory_total_bytes)),
            ram_percent: host.map(|h| h.memory_used_ratio() * 100.0),
            gpu_percent: if utils.is_empty() { 0.0 } else { utils.iter().sum::<f64>() / utils.len() as f64 * 100.0 },
            vram_used_mb: used as f64 / MIB,
            vram_total_mb: total as f64 / MIB,
            vram_percent: if total == 0 { 0.0 } else { used as f64 / total as f64 * 100.0 },
            timestamp: rfc3339(s.taken_at),
            gpus: s
                .gpus
                .iter()
                .map(|g| GpuHistoryPoint {
                    index: g.index,
                    gpu_percent: g.utilization_ratio.map(|u| u * 100.0),
                    vram_percent: g
                        .memory
                        .filter(|m| m.total_bytes > 0)
                        .map(|m| m.used_bytes as f64 / m.total_bytes as f64 * 100.0),
                })
                .collect(),
        }
    }

    /// The same point rounded for display (percent to 0.1, GiB to 0.01, MiB to 0.1), its GPUs too.
    pub fn rounded(mut self) -> Self {
        self.cpu_percent = self.cpu_percent.map(round1);
        self.ram_used_gb = self.ram_used_gb.map(round2);
        self.ram_total_gb = self.ram_total_gb.map(round2);
        self.ram_percent = self.ram_percent.map(round1);
        self.gpu_percent = round1(self.gpu_percent);
        self.vram_used_mb = round1(self.vram_used_mb);
        self.vram_total_mb = round1(self.vram_total_mb);
        self.vram_percent = round1(self.vram_percent);
        self.gpus = self.gpus.into_iter().map(GpuHistoryPoint::rounded).collect();
        self
    }
}

/// Points in a time range, bucketed if needed.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySeries {
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
    /// Samples that fell in the range before bucketing.
    pub total_count: u64,
    /// Width of one bucket (or the recording interval when not bucketed), seconds.
    pub resolution_seconds: f64,
}

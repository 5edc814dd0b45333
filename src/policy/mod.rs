//! The policy engine: pure functions of (snapshot, settings, constraints, request) → decision.
//! No I/O, no clock reads, no globals; everything here is unit-tested without a socket.
//!
//! - [`estimate`]: VRAM need of one generation, savings, and the recommendation search.
//! - [`admission`]: the resource-check decision (SPEC §4.2).
//! - [`gang`]: placing one generation's ranks on several GPUs, all or none.
//! - [`fit`]: how many more generations would be admitted now.
//! - [`health`]: the health report (SPEC §4.1).
//! - [`gpu_health`]: GPU fault health (ECC, row remapping, XIDs): which GPUs take no new work.
//! - [`verdict`]: the per-resource verdicts both of them use; the boundary rule (a usage at or
//!   above a threshold counts as over it) is written there once.

pub(crate) mod admission;
pub(crate) mod estimate;
pub(crate) mod fit;
pub(crate) mod gang;
pub(crate) mod gpu_health;
pub(crate) mod health;
pub(crate) mod phases;
pub(crate) mod search;
#[cfg(test)]
mod tests;
pub(crate) mod verdict;

use crate::config::{Constraints, LearningConfig, Optimization, Workload};
use crate::snapshot::Snapshot;
use crate::units::{GIB, gib};
use estimate::{Estimate, EstimateKey};

/// One GPU as the policy sees it, in GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuView<'a> {
    /// NVML index.
    pub index: u32,
    /// NVML UUID, borrowed from the snapshot (a decision copies views freely).
    pub uuid: &'a str,
    /// Capacity.
    pub total_gb: f64,
    /// Not available to new work: capacity minus NVML's free (includes the driver's reserve).
    pub used_gb: f64,
    /// Still owed to live leases: reserved and not yet used by their jobs.
    pub reserved_gb: f64,
}

impl GpuView<'_> {
    /// Fraction of VRAM taken now (without reservations); what health looks at.
    pub fn usage(&self) -> f64 {
        self.used_gb / self.total_gb
    }

    /// Fraction of VRAM taken if a job of `required_gb` starts here.
    pub fn projected(&self, required_gb: f64) -> f64 {
        (self.used_gb + self.reserved_gb + required_gb) / self.total_gb
    }

    /// Free VRAM after reservations, GiB.
    pub fn free_gb(&self) -> f64 {
        (self.total_gb - self.used_gb - self.reserved_gb).max(0.0)
    }

    /// How much can still be allocated before reaching `critical`, GiB.
    pub fn headroom_gb(&self, critical: f64) -> f64 {
        (critical * self.total_gb - self.used_gb - self.reserved_gb).max(0.0)
    }
}

/// The GPUs of a snapshot that report memory, with `reserved(index)` GiB promised on each.
pub fn gpu_views(snapshot: &Snapshot, reserved: impl Fn(u32) -> f64) -> Vec<GpuView<'_>> {
    let mut views = Vec::with_capacity(snapshot.gpus.len());
    views.extend(snapshot.gpus.iter().filter_map(|g| {
        let m = g.memory?;
        (m.total_bytes > 0).then(|| GpuView {
            index: g.index,
            uuid: &g.uuid,
            total_gb: gib(m.total_bytes),
            used_gb: gib(m.total_bytes.saturating_sub(m.free_bytes)),
            reserved_gb: reserved(g.index),
        })
    }));
    views
}

/// The GPU with the most free VRAM after reservations (so also after any job); ties go to the
/// lower index, so placement is stable.
pub(crate) fn best_gpu<'s, 'a: 's>(gpus: impl IntoIterator<Item = &'s GpuView<'a>>) -> Option<&'s GpuView<'a>> {
    gpus.into_iter().fold(None, |best: Option<&GpuView<'_>>, g| match best {
        Some(b) if b.free_gb() >= g.free_gb() => Some(b),
        _ => Some(g),
    })
}

/// Everything a decision looks at, borrowed from the live state.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Latest snapshot, `None` before the first sample.
    pub snapshot: Option<&'a Snapshot>,
    /// Live constraints.
    pub constraints: &'a Constraints,
    /// Live optimization settings.
    pub settings: &'a Optimization,
    /// The workload profile the request named (or `default`).
    pub workload: &'a Workload,
    /// Its name.
    pub workload_name: &'a str,
    /// Observed peaks of finished generations, newest first.
    pub observed: &'a [(EstimateKey, estimate::Peak)],
    /// How observations become estimates.
    pub learning: &'a LearningConfig,
    /// `gpu.enabled` from config: false means no GPU on purpose (VRAM does not fail closed).
    pub gpu_enabled: bool,
    /// GiB still owed per GPU index to live leases (reserved, not yet used).
    pub outstanding: &'a [(u32, f64)],
    /// Live leases whose jobs use more than they reserved.
    pub overruns: &'a [Overrun],
    /// Leases held now; `None` where concurrency is not tracked.
    pub active_generations: Option<u32>,
    /// Why the state store does not take writes, while it does not: a health issue.
    pub store_problem: Option<&'a str>,
    /// When the decision is made, Unix seconds: dates a report made before the first sample.
    pub now: f64,
}

/// A live lease whose job uses more VRAM than it reserved.
#[derive(Debug, Clone, PartialEq)]
pub struct Overrun {
    /// Its client, else its id.
    pub label: String,
    /// What its pids hold now, GiB.
    pub used_gb: f64,
    /// What it reserved, GiB.
    pub reserved_gb: f64,
}

impl<'a> Context<'a> {
    /// The GPUs with what live leases still owe applied.
    pub fn gpus(&self) -> Vec<GpuView<'a>> {
        match self.snapshot {
            Some(s) => gpu_views(s, |i| self.outstanding.iter().filter(|(g, _)| *g == i).map(|(_, gb)| gb).sum()),
            None => Vec::new(),
        }
    }

    /// The key of one generation of this context's workload under the live settings, at
    /// `geometry` (`None`: the profile's own size).
    pub fn key(&self, model_loaded: bool, geometry: Option<phases::Geometry>) -> EstimateKey {
        EstimateKey {
            workload: self.workload_name.to_owned(),
            settings: *self.settings,
            model_loaded,
            geometry: Some(geometry.unwrap_or_else(|| phases::Geometry::of(self.workload))),
        }
    }

    /// The estimate of one generation of this context's workload under the live settings.
    pub fn estimate(&self, model_loaded: bool, geometry: Option<phases::Geometry>) -> Estimate {
        estimate::estimate(self.workload, &self.key(model_loaded, geometry), self.observed, self.learning)
    }
}

/// The compute processes holding the most VRAM, as a sentence, when any are known.
pub(crate) fn top_holders(snapshot: &Snapshot, n: usize) -> Option<String> {
    let mut procs: Vec<(u32, &str, u64, u32)> = snapshot
        .gpus
        .iter()
        .flat_map(|g| {
            g.processes.iter().flatten().map(move |p| (p.pid, p.name.as_deref().unwrap_or("?"), p.used_bytes, g.index))
        })
        .filter(|p| p.2 as f64 >= 0.05 * GIB)
        .collect();
    if procs.is_empty() {
        return None;
    }
    procs.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let list: Vec<String> = procs
        .iter()
        .take(n)
        .map(|(pid, name, bytes, gpu)| format!("pid {pid} ({name}) {:.1} GB on GPU {gpu}", gib(*bytes)))
        .collect();
    Some(format!("Nothing fits while other work holds the VRAM; the largest holders: {}", list.join(", ")))
}

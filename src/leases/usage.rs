//! What live leases use and still owe on a snapshot: each lease's processes matched against
//! the GPU processes' lineages, the attributed ones by what they hold, the rest by the growth of
//! the GPU's used VRAM since their grant.

use std::collections::{BTreeMap, BTreeSet};

use super::Lease;
use crate::snapshot::Snapshot;
use crate::units::gib;

/// What a live lease uses and still owes, from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaseUsage {
    /// Lease id.
    pub id: String,
    /// Its GPU.
    pub gpu_index: Option<u32>,
    /// VRAM its processes hold now, GiB; `None` without pids (or without a reading).
    pub used_gb: Option<f64>,
    /// Reserved VRAM not used yet: what still counts against the GPU.
    pub outstanding_gb: f64,
    /// How `outstanding_gb` was counted.
    pub attribution: Attribution,
}

/// How a lease's use is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attribution {
    /// By what its processes hold: some were seen holding VRAM on its GPU.
    Pids,
    /// By the growth of the GPU's used VRAM since its grant: it has no pids, or none of them
    /// has been seen holding VRAM (not started yet, or in a pid namespace vramguard cannot
    /// match).
    Growth,
}

impl Attribution {
    /// The name in lease bodies.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Attribution::Pids => "pids",
            Attribution::Growth => "growth",
        }
    }
}

/// VRAM the processes of each of `leases` hold on GPU `gpu_index` in `snapshot`, GiB, in the
/// order of `leases` (oldest first); `None` when the GPU or its process list is not in the
/// snapshot. A process counts once: for the oldest lease that lists it or one of its ancestors
/// (the lease that listed it first).
pub(crate) fn held_gb(snapshot: &Snapshot, gpu_index: u32, leases: &[&Lease]) -> Option<Vec<f64>> {
    let gpu = snapshot.gpus.iter().find(|g| g.index == gpu_index)?;
    let procs = gpu.processes.as_ref()?;
    let mut bytes = vec![0u64; leases.len()];
    for p in procs {
        let owner = leases.iter().position(|l| !l.pids.is_empty() && p.lineage.iter().any(|who| l.lists(who)));
        if let Some(i) = owner {
            bytes[i] += p.used_bytes;
        }
    }
    Some(bytes.into_iter().map(gib).collect())
}

/// The GPU's used VRAM (total − free, as the policy counts it), GiB.
pub(crate) fn gpu_used_gb(snapshot: &Snapshot, gpu_index: u32) -> Option<f64> {
    let m = snapshot.gpus.iter().find(|g| g.index == gpu_index)?.memory?;
    Some(gib(m.total_bytes.saturating_sub(m.free_bytes)))
}

/// What each of `live` uses and still owes on `snapshot`, in the order of `live`. Without a snapshot reading for a
/// lease's GPU, the whole reservation is outstanding (fail closed).
pub(crate) fn usage(live: &[&Lease], snapshot: Option<&Snapshot>) -> Vec<LeaseUsage> {
    let mut out: Vec<LeaseUsage> = Vec::with_capacity(live.len());
    let gpus: BTreeSet<u32> = live.iter().filter_map(|l| l.gpu_index).collect();
    for l in live.iter().filter(|l| l.gpu_index.is_none()) {
        let attribution = Attribution::Growth;
        out.push(LeaseUsage { id: l.id.clone(), gpu_index: None, used_gb: None, outstanding_gb: 0.0, attribution });
    }
    for gpu in gpus {
        let mut on_gpu: Vec<&Lease> = live.iter().copied().filter(|l| l.gpu_index == Some(gpu)).collect();
        on_gpu.sort_by(|a, b| a.granted_at.total_cmp(&b.granted_at).then(a.id.cmp(&b.id)));
        let held = snapshot.and_then(|s| held_gb(s, gpu, &on_gpu));
        let mut attributed_gb = 0.0;
        // Leases counted by growth, with what their processes hold now.
        let mut unattributed: Vec<(&Lease, Option<f64>)> = Vec::new();
        for (i, l) in on_gpu.iter().enumerate() {
            let used = held.as_ref().map(|h| h[i]).filter(|_| !l.pids.is_empty());
            // Counted by its processes once they were seen holding VRAM; until then (or never, as
            // for a job vramguard cannot match) by the growth rule, so a job whose VRAM shows
            // under no listed pid is not owed its reservation on top of the GPU's used memory.
            if !(l.seen || used.is_some_and(|u| u > 0.0)) {
                unattributed.push((l, used));
                continue;
            }
            attributed_gb += used.unwrap_or(0.0);
            let outstanding = (l.vram_reserved_gb - used.unwrap_or(0.0)).max(0.0);
            let attribution = Attribution::Pids;
            out.push(LeaseUsage {
                id: l.id.clone(),
                gpu_index: Some(gpu),
                used_gb: used,
                outstanding_gb: outstanding,
                attribution,
            });
        }
        // Unattributed leases, oldest first, share the growth of the GPU's unattributed use (used
        // less what attributed leases' processes hold) since the oldest one's grant.
        let baseline = unattributed.iter().filter_map(|(l, _)| l.unattributed_used_at_grant_gb).reduce(f64::min);
        let now_used = snapshot.and_then(|s| gpu_used_gb(s, gpu));
        let mut pool = match (now_used, baseline) {
            (Some(n), Some(b)) => (n - b - attributed_gb).max(0.0),
            _ => 0.0,
        };
        for (l, pids_hold) in unattributed {
            let used = pool.min(l.vram_reserved_gb);
            pool -= used;
            out.push(LeaseUsage {
                id: l.id.clone(),
                gpu_index: Some(gpu),
                used_gb: pids_hold,
                outstanding_gb: l.vram_reserved_gb - used,
                attribution: Attribution::Growth,
            });
        }
    }
    let mut by_id: BTreeMap<String, LeaseUsage> = out.into_iter().map(|u| (u.id.clone(), u)).collect();
    live.iter().filter_map(|l| by_id.remove(&l.id)).collect()
}

/// GiB still owed per GPU index, summed over `usage`.
pub(crate) fn outstanding_by_gpu(usage: &[LeaseUsage]) -> Vec<(u32, f64)> {
    let mut by: BTreeMap<u32, f64> = BTreeMap::new();
    for u in usage {
        if let Some(g) = u.gpu_index {
            *by.entry(g).or_default() += u.outstanding_gb;
        }
    }
    by.into_iter().collect()
}

//! How closely the GPUs are connected: NVML's closest common ancestor of each pair (same board,
//! one PCIe switch, several switches, one host bridge, one NUMA node, across sockets), which gang
//! placement prefers to keep a job's ranks close. Read again only when the set of GPUs changes:
//! the topology does not change while the driver runs, and n(n − 1)/2 calls on every pass would
//! be waste.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;

use crate::snapshot::GpuStats;

/// The pairs last read, and for which GPUs (index and UUID).
#[derive(Default)]
pub(super) struct TopologyReader {
    gpus: Vec<(u32, String)>,
    pairs: Vec<(u32, u32, u8)>,
}

impl TopologyReader {
    /// Every pair of `gpus` NVML reports a common ancestor for, lower index first.
    pub(super) fn read(&mut self, nvml: &Nvml, gpus: &[GpuStats]) -> Vec<(u32, u32, u8)> {
        let now: Vec<(u32, String)> = gpus.iter().map(|g| (g.index, g.uuid.clone())).collect();
        if now != self.gpus {
            self.pairs = read_pairs(nvml, &now);
            self.gpus = now;
        }
        self.pairs.clone()
    }
}

fn read_pairs(nvml: &Nvml, gpus: &[(u32, String)]) -> Vec<(u32, u32, u8)> {
    let mut pairs = Vec::new();
    for (i, (a, _)) in gpus.iter().enumerate() {
        for (b, _) in &gpus[i + 1..] {
            let level = nvml.device_by_index(*a).and_then(|da| {
                let db = nvml.device_by_index(*b)?;
                da.topology_common_ancestor(db)
            });
            // Unsupported (or a GPU that went away meanwhile): that pair is simply not known.
            if let Ok(level) = level {
                pairs.push(((*a).min(*b), (*a).max(*b), figure(level)));
            }
        }
    }
    pairs
}

/// NVML's `nvmlGpuTopologyLevel_t` value: the lower, the closer.
fn figure(level: TopologyLevel) -> u8 {
    match level {
        TopologyLevel::Internal => 0,
        TopologyLevel::Single => 10,
        TopologyLevel::Multiple => 20,
        TopologyLevel::HostBridge => 30,
        TopologyLevel::Node => 40,
        TopologyLevel::System => 50,
    }
}

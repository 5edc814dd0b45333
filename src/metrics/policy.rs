//! The policy's part of the exposition: a function of the decision inputs only, so the caller
//! keeps it while they hold ([`crate::app`]'s kept answers).

use super::family::{Family, family, sample};
use super::{Metrics, REVISION, VERSION};
use crate::config::Constraints;
use crate::policy::health::HealthStatus;
use crate::snapshot::Snapshot;
use crate::units::GIB;

/// What live leases and the estimates add to an exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseFigures {
    /// GiB still owed to live leases per GPU index (GPUs absent here owe nothing).
    pub outstanding: Vec<(u32, f64)>,
    /// The current estimate per workload profile: name, source (`model`|`observed`), GiB.
    pub estimates: Vec<(String, &'static str, f64)>,
    /// Generation requests waiting for room.
    pub waiting: usize,
    /// Per workload profile: how many more generations of its estimate would be admitted now
    /// (empty before the first sample).
    pub that_fit: Vec<(String, u32)>,
    /// Per workload profile and gang size: how many more generations sharded over that many
    /// GPUs would be admitted now (sizes the machine has GPUs for only).
    pub gangs_that_fit: Vec<(String, u32, u32)>,
    /// GPUs holding at least one live lease (a gang holds one per rank).
    pub gpus_leased: u32,
}

/// The policy's part of an exposition, encoded: (family name, text) per family.
#[derive(Debug, Clone, Default)]
pub struct PolicyText(pub(super) Vec<(String, String)>);

impl Metrics {
    /// The policy's part of the exposition: estimates, outstanding VRAM, the queue, what
    /// fits, the live thresholds, active leases, health and the build. A function of the
    /// decision inputs only, so a caller keeps it while they hold.
    pub fn policy_text(
        &self,
        snapshot: Option<&Snapshot>,
        constraints: &Constraints,
        health: Option<HealthStatus>,
        active_generations: u32,
        leases: &LeaseFigures,
    ) -> PolicyText {
        let mut families = Vec::new();
        families.push(family(
            "vramguard_estimate_bytes",
            "VRAM one generation of the workload profile is estimated to need under the live settings.",
            leases
                .estimates
                .iter()
                .map(|(name, source, gb)| sample(&[("workload", name), ("source", source)], gb * GIB))
                .collect(),
        ));
        if let Some(s) = snapshot {
            let owed = s
                .gpus
                .iter()
                .filter(|g| g.memory.is_some())
                .map(|g| {
                    let gb =
                        leases.outstanding.iter().filter(|(i, _)| *i == g.index).fold(0.0, |acc, (_, gb)| acc + gb);
                    let index = g.index.to_string();
                    sample(&[("gpu", &index), ("uuid", &g.uuid)], (gb * GIB).round())
                })
                .collect();
            families.push(family(
                "vramguard_gpu_memory_outstanding_bytes",
                "VRAM live generation leases reserved and have not used yet, in bytes: it counts against the GPU.",
                owed,
            ));
        }
        families.extend(fit_families(leases));
        families.extend(policy_families(constraints));
        families.push(family(
            "vramguard_active_generations",
            "Generations holding leases now (a job on several GPUs counts once).",
            vec![sample(&[], f64::from(active_generations))],
        ));
        families.push(family(
            "vramguard_gpus_leased",
            "GPUs holding at least one live generation lease (a job on several GPUs holds one per rank).",
            vec![sample(&[], f64::from(leases.gpus_leased))],
        ));
        if let Some(status) = health {
            families.push(family(
                "vramguard_health_status",
                "Health status as a state set: 1 for the current status, 0 for the others.",
                HealthStatus::ALL
                    .iter()
                    .map(|s| sample(&[("status", s.as_str())], if *s == status { 1.0 } else { 0.0 }))
                    .collect(),
            ));
        }
        families.push(family(
            "vramguard_build_info",
            "A metric with a constant 1 labelled by vramguard's version and git revision.",
            vec![sample(&[("version", VERSION), ("revision", REVISION)], 1.0)],
        ));
        PolicyText(
            families
                .into_iter()
                .filter_map(|f| {
                    let name = f.name().to_owned();
                    Some((name, f.into_text()?))
                })
                .collect(),
        )
    }
}

fn policy_families(c: &Constraints) -> Vec<Family> {
    vec![
        family(
            "vramguard_threshold_ratio",
            "Live resource constraint thresholds (fractions 0-1), so alert rules follow API changes.",
            vec![
                sample(&[("resource", "vram"), ("level", "warning")], c.vram_warning_threshold),
                sample(&[("resource", "vram"), ("level", "critical")], c.vram_critical_threshold),
                sample(&[("resource", "cpu"), ("level", "warning")], c.cpu_warning_threshold),
                sample(&[("resource", "ram"), ("level", "warning")], c.ram_warning_threshold),
            ],
        ),
        family(
            "vramguard_max_concurrent_generations",
            "Live limit on generation leases held at once.",
            vec![sample(&[], f64::from(c.max_concurrent_generations))],
        ),
    ]
}

/// The queue's length and what still fits, one GPU each and per gang size.
fn fit_families(leases: &LeaseFigures) -> Vec<Family> {
    vec![
        family(
            "vramguard_admission_waiting",
            "Generation requests waiting in the admission queue for room.",
            vec![sample(&[], leases.waiting as f64)],
        ),
        family(
            "vramguard_generations_that_fit",
            "How many more generations of the workload's current estimate would be admitted now, placed greedily on the GPUs.",
            leases.that_fit.iter().map(|(name, n)| sample(&[("workload", name)], f64::from(*n))).collect(),
        ),
        family(
            "vramguard_gangs_that_fit",
            "How many more generations of the workload sharded over `gpus` GPUs would be admitted now, each rank with its per-rank estimate.",
            leases
                .gangs_that_fit
                .iter()
                .map(|(name, gpus, n)| sample(&[("workload", name), ("gpus", &gpus.to_string())], f64::from(*n)))
                .collect(),
        ),
    ]
}

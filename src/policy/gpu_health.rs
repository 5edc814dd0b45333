//! GPU fault health (issue #13): whether a GPU may take new work, judged from its fault readings.
//!
//! A GPU is unhealthy while a row remap is pending or has failed, while it has uncorrected ECC
//! errors since the driver loaded, or while a fatal XID (`gpu_health.fatal_xids`) was seen on it
//! within `gpu_health.xid_window`. Hardware or thermal clock slowdown is a warning only: the GPU
//! still computes correctly, just slower. A reading the board does not support is `None` and
//! never counts against it.
//!
//! The sampler stamps [`judge`]'s verdict on every GPU of every snapshot; admission leaves the
//! GPUs of [`out_of_placement`] out, and health lists them.

use std::time::{Duration, SystemTime};

use crate::config::GpuHealthConfig;
use crate::snapshot::{GpuFaults, GpuHealth, Remedy, Snapshot, THROTTLE_REASONS};

/// Clock event reasons that mean the hardware is protecting itself: worth a warning.
const SLOWDOWNS: [&str; 4] = ["hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown"];

/// Judges one GPU's faults at `now`.
pub(crate) fn judge(f: &GpuFaults, cfg: &GpuHealthConfig, now: SystemTime) -> GpuHealth {
    let mut health = GpuHealth::default();
    let mut unhealthy = |what: String, remedy: Remedy| {
        health.reasons.push(format!("{what}, {}", remedy_text(remedy)));
        health.remedy = health.remedy.max(Some(remedy));
        health.healthy = false;
    };
    if let Some(r) = f.remapped_rows {
        if r.failed {
            unhealthy("row remapping failed (no spare rows left)".to_owned(), Remedy::Rma);
        }
        if r.pending {
            unhealthy("row remap pending".to_owned(), Remedy::Reset);
        }
    }
    if let Some(n) = f.ecc_uncorrected
        && n > 0
    {
        let s = if n == 1 { "" } else { "s" };
        unhealthy(format!("{n} uncorrected ECC error{s} since the driver loaded"), Remedy::Reset);
    }
    let window = cfg.xid_window.0;
    for x in f.xids.iter().filter(|x| cfg.fatal_xids.contains(&x.xid)) {
        // An event recorded after the snapshot started reads as "just now".
        let age = now.duration_since(x.last_seen).unwrap_or(Duration::ZERO);
        if age < window {
            let (meaning, remedy) = xid_meaning(x.xid);
            let what = match meaning {
                Some(m) => format!("fatal XID {} ({m}) within the last {}", x.xid, cfg.xid_window),
                None => format!("fatal XID {} within the last {}", x.xid, cfg.xid_window),
            };
            unhealthy(what, remedy);
        }
    }
    if let Some(bits) = f.throttle_reasons {
        for (name, bit) in THROTTLE_REASONS {
            if bits & bit != 0 && SLOWDOWNS.contains(&name) {
                health.warnings.push(format!("clocks slowed down by {name}"));
            }
        }
    }
    health
}

/// What a fatal XID means and what it calls for (NVIDIA's XID catalogue); codes configured as
/// fatal that are not in this table get a drain and a look at the kernel log.
fn xid_meaning(xid: u64) -> (Option<&'static str>, Remedy) {
    match xid {
        48 => (Some("double-bit ECC error"), Remedy::Reset),
        61 => (Some("internal micro-controller breakpoint"), Remedy::Reset),
        62 => (Some("internal micro-controller halt"), Remedy::Reset),
        63 => (Some("row remapping event"), Remedy::Reset),
        64 => (Some("row remapping failure"), Remedy::Rma),
        74 => (Some("NVLink error"), Remedy::Reset),
        79 => (Some("GPU has fallen off the bus"), Remedy::Reset),
        92 => (Some("high single-bit ECC error rate"), Remedy::Reset),
        94 => (Some("contained ECC error"), Remedy::Reset),
        95 => (Some("uncontained ECC error"), Remedy::Reset),
        119 => (Some("GSP RPC timeout"), Remedy::Reset),
        120 => (Some("GSP error"), Remedy::Reset),
        _ => (None, Remedy::Drain),
    }
}

fn remedy_text(r: Remedy) -> &'static str {
    match r {
        Remedy::Drain => "drain the GPU and check the kernel log",
        Remedy::Reset => "reset the GPU",
        Remedy::Rma => "replace the GPU (RMA)",
    }
}

/// "GPU 0 unhealthy: row remap pending, reset the GPU": the text admission and health show.
pub(crate) fn describe(index: u32, h: &GpuHealth) -> String {
    format!("GPU {index} unhealthy: {}", h.reasons.join("; "))
}

/// What the operator should do with an unhealthy GPU, as a health recommendation.
pub(crate) fn recommendation(index: u32, h: &GpuHealth) -> Option<String> {
    let text = match h.remedy? {
        Remedy::Drain => format!(
            "GPU {index} takes no new work: let its running jobs finish, then check the kernel log \
             (dmesg | grep -i xid) before resetting it"
        ),
        Remedy::Reset => format!(
            "GPU {index} takes no new work: let its running jobs finish (or stop them), then reset it \
             (nvidia-smi --gpu-reset -i {index}) or reboot; if the fault returns, request an RMA"
        ),
        Remedy::Rma => {
            format!("GPU {index} takes no new work: drain it and request an RMA (replacement) from the vendor")
        }
    };
    Some(text)
}

/// The GPUs that must not take new work, with the text saying why, lowest index first.
pub(crate) fn out_of_placement(snapshot: Option<&Snapshot>) -> Vec<(u32, String)> {
    snapshot
        .map(|s| s.gpus.iter().filter(|g| !g.health.healthy).map(|g| (g.index, describe(g.index, &g.health))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use crate::snapshot::{RemappedRows, XidSeen};

    fn cfg(window_s: u64) -> GpuHealthConfig {
        GpuHealthConfig { xid_window: Dur(Duration::from_secs(window_s)), ..GpuHealthConfig::default() }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn xid(code: u64, seen: u64) -> XidSeen {
        XidSeen { xid: code, count: 1, last_seen: at(seen) }
    }

    #[test]
    fn nothing_known_is_healthy() {
        let h = judge(&GpuFaults::default(), &cfg(3600), at(0));
        assert!(h.healthy && h.reasons.is_empty() && h.warnings.is_empty() && h.remedy.is_none());
    }

    #[test]
    fn zero_counts_are_healthy() {
        let f = GpuFaults {
            ecc_corrected: Some(12),
            ecc_uncorrected: Some(0),
            remapped_rows: Some(RemappedRows { correctable: 3, uncorrectable: 0, pending: false, failed: false }),
            throttle_reasons: Some(0x1 | 0x4),
            ..GpuFaults::default()
        };
        let h = judge(&f, &cfg(3600), at(0));
        assert!(h.healthy, "{h:?}");
        assert!(h.warnings.is_empty(), "idle and power cap are normal: {h:?}");
    }

    #[test]
    fn pending_remap_needs_a_reset() {
        let f = GpuFaults {
            remapped_rows: Some(RemappedRows { correctable: 0, uncorrectable: 1, pending: true, failed: false }),
            ..GpuFaults::default()
        };
        let h = judge(&f, &cfg(3600), at(0));
        assert!(!h.healthy);
        assert_eq!(h.reasons, ["row remap pending, reset the GPU"]);
        assert_eq!(h.remedy, Some(Remedy::Reset));
        assert_eq!(describe(0, &h), "GPU 0 unhealthy: row remap pending, reset the GPU");
        assert!(recommendation(0, &h).unwrap().contains("nvidia-smi --gpu-reset -i 0"));
    }

    #[test]
    fn failed_remap_and_uncorrected_ecc_take_the_strongest_remedy() {
        let f = GpuFaults {
            ecc_uncorrected: Some(2),
            remapped_rows: Some(RemappedRows { correctable: 0, uncorrectable: 512, pending: false, failed: true }),
            ..GpuFaults::default()
        };
        let h = judge(&f, &cfg(3600), at(0));
        assert!(!h.healthy);
        assert_eq!(
            h.reasons,
            [
                "row remapping failed (no spare rows left), replace the GPU (RMA)",
                "2 uncorrected ECC errors since the driver loaded, reset the GPU"
            ]
        );
        assert_eq!(h.remedy, Some(Remedy::Rma));
        assert!(recommendation(3, &h).unwrap().contains("RMA"));
    }

    #[test]
    fn fatal_xid_counts_within_the_window_only() {
        let f = GpuFaults { xids: vec![xid(79, 0)], ..GpuFaults::default() };
        let h = judge(&f, &cfg(60), at(59));
        assert!(!h.healthy);
        assert_eq!(h.reasons, ["fatal XID 79 (GPU has fallen off the bus) within the last 1m, reset the GPU"]);
        assert!(judge(&f, &cfg(60), at(60)).healthy, "the window has passed");
        // Recorded after the snapshot began: just now.
        assert!(!judge(&f, &cfg(60), at(0) - Duration::from_millis(5)).healthy);
    }

    #[test]
    fn application_xids_stay_healthy_and_the_list_is_configurable() {
        let f = GpuFaults { xids: vec![xid(31, 0), xid(13, 0)], ..GpuFaults::default() };
        assert!(judge(&f, &cfg(3600), at(1)).healthy);
        let strict = GpuHealthConfig { fatal_xids: vec![13], ..cfg(3600) };
        let h = judge(&f, &strict, at(1));
        assert_eq!(h.reasons, ["fatal XID 13 within the last 1h, drain the GPU and check the kernel log"]);
        assert_eq!(h.remedy, Some(Remedy::Drain));
        let none = GpuHealthConfig { fatal_xids: vec![], ..cfg(3600) };
        assert!(judge(&GpuFaults { xids: vec![xid(79, 0)], ..GpuFaults::default() }, &none, at(1)).healthy);
    }

    #[test]
    fn slowdown_is_a_warning_not_unhealthy() {
        let f = GpuFaults { throttle_reasons: Some(0x40 | 0x8 | 0x4), ..GpuFaults::default() };
        let h = judge(&f, &cfg(3600), at(0));
        assert!(h.healthy);
        assert_eq!(h.warnings, ["clocks slowed down by hw_slowdown", "clocks slowed down by hw_thermal_slowdown"]);
    }

    /// Placement and the health report with an unhealthy GPU: the decisions built on `judge`.
    mod decisions {
        use super::*;
        use crate::config::Config;
        use crate::policy::Context;
        use crate::policy::admission::{CheckRequest, resource_check};
        use crate::policy::health::{HealthStatus, health};
        use crate::snapshot::{GpuMemory, GpuStats};

        const G: u64 = 1 << 30;

        fn gpu(index: u32, free_gib: u64, faults: GpuFaults) -> GpuStats {
            GpuStats {
                index,
                uuid: format!("GPU-{index}"),
                name: None,
                pci_bus_id: None,
                utilization_ratio: None,
                memory: Some(GpuMemory {
                    total_bytes: 48 * G,
                    used_bytes: (48 - free_gib) * G,
                    free_bytes: free_gib * G,
                }),
                temperature_celsius: None,
                power_watts: None,
                processes: None,
                health: judge(&faults, &GpuHealthConfig::default(), at(0)),
                faults,
                telemetry: Default::default(),
            }
        }

        fn pending() -> GpuFaults {
            GpuFaults {
                remapped_rows: Some(RemappedRows { correctable: 0, uncorrectable: 1, pending: true, failed: false }),
                ..GpuFaults::default()
            }
        }

        fn snapshot(gpus: Vec<GpuStats>) -> Snapshot {
            Snapshot {
                topology: Vec::new(),
                taken_at: at(0),
                host: Some(crate::snapshot::HostStats {
                    cpu_usage_ratio: 0.1,
                    memory_total_bytes: 64 * G,
                    memory_available_bytes: 48 * G,
                    cgroup_memory_limit_bytes: None,
                }),
                gpus,
                driver_version: None,
                collectors: vec![],
            }
        }

        fn ctx<'a>(config: &'a Config, s: &'a Snapshot) -> Context<'a> {
            Context {
                snapshot: Some(s),
                constraints: &config.constraints,
                settings: &config.optimization,
                workload: &config.workload,
                workload_name: "default",
                observed: &[],
                learning: &config.learning,
                gpu_enabled: true,
                outstanding: &[],
                overruns: &[],
                active_generations: None,
                store_problem: None,
                now: 1_700_000_000.0,
            }
        }

        fn need(gb: f64, pin: Option<u32>) -> CheckRequest {
            CheckRequest { vram_required_gb: Some(gb), gpu: pin, ..CheckRequest::default() }
        }

        #[test]
        fn the_emptier_gpu_is_skipped_while_unhealthy() {
            let config = Config::default();
            let s = snapshot(vec![gpu(0, 40, pending()), gpu(1, 20, GpuFaults::default())]);
            let r = resource_check(&ctx(&config, &s), &need(8.0, None));
            assert!(r.can_start_generation, "{r:?}");
            assert_eq!(r.gpu.unwrap().index, 1);
            let h = health(&ctx(&config, &s));
            assert_eq!(h.status, HealthStatus::Warning);
            assert_eq!(h.system_info.issues, ["GPU 0 unhealthy: row remap pending, reset the GPU"]);
            assert!(h.system_info.recommendations.iter().any(|r| r.contains("nvidia-smi --gpu-reset -i 0")));
        }

        #[test]
        fn a_pinned_unhealthy_gpu_refuses_and_says_why() {
            let config = Config::default();
            let s = snapshot(vec![gpu(0, 40, pending()), gpu(1, 20, GpuFaults::default())]);
            let r = resource_check(&ctx(&config, &s), &need(8.0, Some(0)));
            assert!(!r.can_start_generation);
            assert!(!r.resource_status.vram_available);
            assert_eq!(r.blocking_issues, ["GPU 0 unhealthy: row remap pending, reset the GPU"]);
            assert_eq!(r.message, "Cannot start generation: GPU 0 unhealthy: row remap pending, reset the GPU");
            assert_eq!(r.primary_reason(), "no_gpu");
            // Pinned to the healthy one: GPU 0 is not mentioned.
            let r = resource_check(&ctx(&config, &s), &need(30.0, Some(1)));
            assert!(!r.can_start_generation);
            assert!(r.blocking_issues.iter().all(|b| !b.contains("GPU 0")), "{:?}", r.blocking_issues);
        }

        #[test]
        fn no_healthy_gpu_left_is_critical_and_refuses() {
            let config = Config::default();
            let s = snapshot(vec![gpu(0, 40, pending())]);
            let r = resource_check(&ctx(&config, &s), &need(8.0, None));
            assert!(!r.can_start_generation);
            assert_eq!(r.blocking_issues, ["GPU 0 unhealthy: row remap pending, reset the GPU"]);
            assert!(r.gpu.is_none());
            assert_eq!(health(&ctx(&config, &s)).status, HealthStatus::Critical);
        }

        #[test]
        fn a_job_too_big_for_the_healthy_gpus_names_the_unhealthy_one_too() {
            let config = Config::default();
            let s = snapshot(vec![gpu(0, 40, pending()), gpu(1, 20, GpuFaults::default())]);
            let r = resource_check(&ctx(&config, &s), &need(30.0, None));
            assert!(!r.can_start_generation);
            assert!(r.blocking_issues[0].starts_with("Not enough free VRAM"), "{:?}", r.blocking_issues);
            assert_eq!(r.blocking_issues[1], "GPU 0 unhealthy: row remap pending, reset the GPU");
            assert_eq!(r.primary_reason(), "vram");
        }

        #[test]
        fn thermal_slowdown_warns_but_places() {
            let config = Config::default();
            let hot = GpuFaults { throttle_reasons: Some(0x40), ..GpuFaults::default() };
            let s = snapshot(vec![gpu(0, 40, hot)]);
            assert!(resource_check(&ctx(&config, &s), &need(8.0, None)).can_start_generation);
            let h = health(&ctx(&config, &s));
            assert_eq!(h.status, HealthStatus::Warning);
            assert_eq!(h.system_info.warnings, ["GPU 0 clocks slowed down by hw_thermal_slowdown"]);
            assert!(h.system_info.issues.is_empty());
        }
    }
}

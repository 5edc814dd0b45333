//! Decisions on synthetic snapshots: no I/O, exact numbers.

use std::time::{Duration, UNIX_EPOCH};

use super::Context;
use super::admission::{CheckRequest, Reason, resource_check};
use super::health::{HealthStatus, health};
use crate::config::{Config, Constraints, Optimization};
use crate::snapshot::{CollectorStatus, GpuMemory, GpuProcess, GpuStats, HostStats, Snapshot};
use crate::units::GIB;

const G: u64 = 1 << 30;

fn gpu(index: u32, total_gib: u64, used_bytes: u64) -> GpuStats {
    GpuStats {
        index,
        uuid: format!("GPU-{index}"),
        name: Some("Test GPU".to_owned()),
        pci_bus_id: None,
        utilization_ratio: Some(0.1),
        memory: Some(GpuMemory { total_bytes: total_gib * G, used_bytes, free_bytes: total_gib * G - used_bytes }),
        temperature_celsius: None,
        power_watts: None,
        processes: Some(vec![GpuProcess::unresolved(4242, Some("python3".to_owned()), used_bytes)]),
        faults: Default::default(),
        telemetry: Default::default(),
        health: Default::default(),
    }
}

fn snapshot(cpu: f64, ram_used_fraction: f64, gpus: Vec<GpuStats>) -> Snapshot {
    let total = 60 * G;
    Snapshot {
        topology: Vec::new(),
        taken_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        host: Some(HostStats {
            cpu_usage_ratio: cpu,
            memory_total_bytes: total,
            memory_available_bytes: total - (total as f64 * ram_used_fraction) as u64,
            cgroup_memory_limit_bytes: None,
        }),
        gpus,
        driver_version: None,
        collectors: vec![CollectorStatus { name: "host", success: true, duration: Duration::ZERO, error: None }],
    }
}

struct Fixture {
    config: Config,
    constraints: Constraints,
    settings: Optimization,
}

impl Fixture {
    fn new() -> Self {
        let config = Config::default();
        Self { constraints: config.constraints, settings: config.optimization, config }
    }

    fn ctx<'a>(&'a self, s: &'a Snapshot) -> Context<'a> {
        Context {
            snapshot: Some(s),
            constraints: &self.constraints,
            settings: &self.settings,
            workload: &self.config.workload,
            workload_name: "default",
            observed: &[],
            learning: &self.config.learning,
            gpu_enabled: self.config.gpu.enabled,
            outstanding: &[],
            overruns: &[],
            active_generations: None,
            store_problem: None,
            now: 1_800_000_000.0,
        }
    }
}

fn need(gb: f64) -> CheckRequest {
    CheckRequest { vram_required_gb: Some(gb), ..CheckRequest::default() }
}

#[test]
fn healthy_gpu_admits_and_reports_the_gpu() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 2 * G)]);
    let h = health(&f.ctx(&s));
    assert_eq!(h.status, HealthStatus::Healthy);
    assert_eq!(h.system_info.vram_percent, 12.5);
    let r = resource_check(&f.ctx(&s), &need(4.0));
    assert!(r.can_start_generation, "{r:?}");
    let g = r.gpu.clone().expect("gpu");
    assert_eq!((g.index, g.free_gb, g.projected_percent), (0, 14.0, 37.5));
    assert_eq!(r.current_usage.vram_percent, 12.5);
    assert!(r.blocking_issues.is_empty());
    assert_eq!(r.primary_reason(), "none");
}

/// A store that does not take writes is a critical issue naming the problem, with or without
/// a sample.
#[test]
fn a_failing_store_is_a_critical_issue() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 2 * G)]);
    let problem = "state store /s/vramguard.db was deleted or moved while vramguard was running";
    let h = health(&Context { store_problem: Some(problem), ..f.ctx(&s) });
    assert_eq!(h.status, HealthStatus::Critical);
    assert_eq!(h.system_info.issues, vec![format!("State store failing: {problem}")]);
    assert!(h.message.starts_with("Issues detected: State store failing"), "{}", h.message);
    let early = health(&Context { store_problem: Some(problem), snapshot: None, ..f.ctx(&s) });
    assert_eq!(early.status, HealthStatus::Critical);
    assert_eq!(early.system_info.issues.len(), 2);
    assert_eq!(early.message, format!("Issues detected: No resource sample yet, State store failing: {problem}"));
}

#[test]
fn warning_level_vram_warns_and_recommends() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 14 * G)]); // 87.5%
    let h = health(&f.ctx(&s));
    assert_eq!(h.status, HealthStatus::Warning);
    assert_eq!(h.system_info.warnings, vec!["High VRAM usage - consider optimization"]);
    assert!(h.system_info.issues.is_empty());
    assert!(!h.system_info.recommendations.is_empty());
    assert!(h.system_info.recommendations.iter().all(|r| r.contains("saves ~")), "{:?}", h.system_info.recommendations);
}

#[test]
fn critical_vram_is_critical_and_blocks() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 15_600_000_000)]); // 90.8%... raise to 96%
    let s = Snapshot { gpus: vec![gpu(0, 25, 24 * G)], ..s }; // 96%
    let h = health(&f.ctx(&s));
    assert_eq!(h.status, HealthStatus::Critical);
    assert_eq!(h.system_info.issues, vec!["Critical VRAM usage - generation may fail"]);
    let r = resource_check(&f.ctx(&s), &need(0.5));
    assert!(!r.can_start_generation);
    assert_eq!(r.blocking_issues, vec!["VRAM usage too high (96.0%)"]);
    assert_eq!(r.reasons, vec![Reason::Vram]);
    // Nothing fits: the largest VRAM holder is named.
    assert!(
        r.recommendations.iter().any(|t| t.contains("pid 4242 (python3) 24.0 GB on GPU 0")),
        "{:?}",
        r.recommendations
    );
}

#[test]
fn exactly_at_the_critical_threshold_both_agree() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 20, 19 * G)]); // exactly 0.95
    assert_eq!(19.0 * GIB / (20.0 * GIB), 0.95);
    assert_eq!(health(&f.ctx(&s)).status, HealthStatus::Critical);
    let r = resource_check(&f.ctx(&s), &need(0.001));
    assert!(!r.can_start_generation);
    assert_eq!(r.blocking_issues[0], "VRAM usage too high (95.0%)");
    // Just below, a small job fits.
    let s = snapshot(0.2, 0.3, vec![gpu(0, 20, 19 * G - 64 * (1 << 20))]);
    assert_ne!(health(&f.ctx(&s)).status, HealthStatus::Critical);
    assert!(resource_check(&f.ctx(&s), &need(0.01)).can_start_generation);
}

#[test]
fn at_the_warning_thresholds_cpu_and_ram_count_as_over() {
    let f = Fixture::new();
    let s = snapshot(0.9, 0.9, vec![gpu(0, 16, 2 * G)]);
    let h = health(&f.ctx(&s));
    assert_eq!(h.status, HealthStatus::Warning);
    assert_eq!(h.system_info.issues, vec!["High CPU usage", "High RAM usage"]);
    let r = resource_check(&f.ctx(&s), &need(1.0));
    assert!(!r.can_start_generation);
    assert_eq!(r.blocking_issues, vec!["CPU usage too high (90.0%)", "RAM usage too high (90.0%)"]);
    assert_eq!(r.reasons, vec![Reason::Cpu, Reason::Ram]);
    assert!(r.resource_status.vram_available);
}

#[test]
fn job_that_does_not_fit_says_how_much_room_there_is() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 9 * G)]);
    let r = resource_check(&f.ctx(&s), &need(9.8));
    assert!(!r.can_start_generation);
    // 0.95 × 16 − 9 = 6.2 GiB below the limit.
    assert_eq!(
        r.blocking_issues,
        vec!["Not enough free VRAM for this generation (needs 9.8 GB; GPU 0 has 6.2 GB below the 95% limit)"]
    );
}

#[test]
fn over_budget_is_blocking_even_when_the_gpu_has_room() {
    let mut f = Fixture::new();
    f.settings.max_vram_usage_gb = 12.0;
    let s = snapshot(0.2, 0.3, vec![gpu(0, 80, 0)]);
    let r = resource_check(&f.ctx(&s), &need(13.8));
    assert!(!r.can_start_generation);
    assert_eq!(r.blocking_issues, vec!["Generation needs 13.8 GB, more than max_vram_usage_gb 12.0"]);
    assert!(r.recommendations[0].starts_with("Raise max_vram_usage_gb to 13.8 or more"), "{:?}", r.recommendations);
}

#[test]
fn two_gpus_choose_the_less_loaded() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 24, 20 * G), gpu(1, 24, 4 * G)]);
    let r = resource_check(&f.ctx(&s), &need(6.0));
    assert!(r.can_start_generation);
    assert_eq!(r.gpu.as_ref().unwrap().index, 1);
    assert_eq!(r.current_usage.vram_percent, 16.7);
    // health looks at the worst GPU.
    assert_eq!(health(&f.ctx(&s)).system_info.vram_percent, 83.3);
    // Pinning the loaded GPU refuses and says why.
    let pinned = resource_check(&f.ctx(&s), &CheckRequest { gpu: Some(0), ..need(6.0) });
    assert!(!pinned.can_start_generation);
    assert_eq!(pinned.gpu.unwrap().index, 0);
    let missing = resource_check(&f.ctx(&s), &CheckRequest { gpu: Some(7), ..need(1.0) });
    assert_eq!(missing.blocking_issues, vec!["GPU 7 is not visible (visible: 0, 1)"]);
}

#[test]
fn no_gpu_fails_closed_unless_disabled() {
    let mut f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![]);
    let r = resource_check(&f.ctx(&s), &need(1.0));
    assert!(!r.can_start_generation);
    assert!(!r.resource_status.vram_available);
    assert_eq!(r.reasons, vec![Reason::NoGpu]);
    assert!(r.gpu.is_none());
    assert_eq!(health(&f.ctx(&s)).status, HealthStatus::Warning);
    f.config.gpu.enabled = false;
    let r = resource_check(&f.ctx(&s), &need(1.0));
    assert!(r.can_start_generation, "{r:?}");
    assert_eq!(health(&f.ctx(&s)).status, HealthStatus::Healthy);
}

#[test]
fn reservations_count_against_their_gpu() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 4 * G)]); // 12 GiB free
    let reservations = [(0, 10.0)];
    let ctx = Context { outstanding: &reservations, ..f.ctx(&s) };
    let r = resource_check(&ctx, &need(10.0));
    assert!(!r.can_start_generation);
    assert_eq!(r.reasons, vec![Reason::Vram]);
    assert_eq!(r.gpu.unwrap().free_gb, 2.0);
}

#[test]
fn concurrency_limit_is_reported_when_tracked() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 2 * G)]);
    let ctx = Context { active_generations: Some(2), ..f.ctx(&s) };
    let r = resource_check(&ctx, &need(1.0));
    assert!(!r.can_start_generation);
    assert_eq!(r.resource_status.concurrency_available, Some(false));
    assert_eq!(r.blocking_issues, vec!["Concurrent generation limit reached (2/2)"]);
    assert_eq!(r.reasons, vec![Reason::Concurrency]);
    let h = health(&ctx);
    assert_eq!(h.system_info.active_generations, Some(2));
    assert_eq!(h.system_info.concurrency_available, Some(false));
    assert_eq!(h.status, HealthStatus::Healthy, "a full house is not a health problem");
    // Untracked: the figures are unknown (and left out of the JSON, see http::wire).
    let untracked = resource_check(&f.ctx(&s), &need(1.0));
    assert_eq!(untracked.resource_status.concurrency_available, None);
    assert_eq!(untracked.current_usage.active_generations, None);
}

#[test]
fn default_requirement_is_the_workload_estimate() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 24, 0)]);
    let r = resource_check(&f.ctx(&s), &CheckRequest::default());
    let size = super::phases::Geometry::of(&f.config.workload);
    let expected = super::estimate::need_gb(&f.config.workload, &f.settings, false, size);
    assert_eq!(r.vram_required_gb, crate::units::round2(expected));
    let loaded = resource_check(&f.ctx(&s), &CheckRequest { model_loaded: true, ..CheckRequest::default() });
    assert!(loaded.vram_required_gb < r.vram_required_gb - 9.0);
}

#[test]
fn failing_collector_is_a_health_issue() {
    let f = Fixture::new();
    let mut s = snapshot(0.2, 0.3, vec![gpu(0, 16, 2 * G)]);
    s.collectors.push(CollectorStatus {
        name: "gpu",
        success: false,
        duration: Duration::ZERO,
        error: Some("GPU 1: GPU is lost".to_owned()),
    });
    let h = health(&f.ctx(&s));
    assert_eq!(h.status, HealthStatus::Warning);
    assert_eq!(h.system_info.issues, vec!["Collector gpu failing: GPU 1: GPU is lost"]);
}

/// A workload of exactly 5 GiB: no weights, 5 GiB of activations (its decoded video, 1.2 GiB,
/// is the smaller phase).
fn five_gib_job() -> crate::config::Workload {
    let mut w = crate::config::Workload::default();
    w.text_encoder.params_billions = 0.0;
    w.transformer.params_billions = 0.0;
    w.vae.params_billions = 0.0;
    w.vae.decode_bytes_per_pixel = 0.0;
    w.overhead_gb = 0.0;
    let tokens = super::phases::tokens(&w, super::phases::Geometry::of(&w));
    w.transformer.activation_bytes = 5.0 * crate::units::GIB / (tokens * f64::from(w.transformer.dim));
    w
}

/// GPU 0: 24 GiB, 2 used → 2 + 5k < 22.8 holds for k ≤ 4. GPU 1: 16 GiB, empty → 5k < 15.2
/// for k ≤ 3. Seven in all, fewer when slots, an outstanding reservation, CPU or the budget say so.
#[test]
fn generations_that_fit_places_greedily_within_every_rule() {
    use super::fit::generations_that_fit;
    let mut f = Fixture::new();
    f.config.workload = five_gib_job();
    f.constraints.max_concurrent_generations = 10;
    let s = snapshot(0.2, 0.3, vec![gpu(0, 24, 2 * G), gpu(1, 16, 0)]);
    assert_eq!(resource_check(&f.ctx(&s), &CheckRequest::default()).vram_required_gb, 5.0);
    assert_eq!(generations_that_fit(&f.ctx(&s), 1), 7);
    // Two slots left of ten.
    assert_eq!(generations_that_fit(&Context { active_generations: Some(8), ..f.ctx(&s) }, 1), 2);
    // 6 GiB still owed on GPU 1: 6 + 5k < 15.2 for k ≤ 1.
    assert_eq!(generations_that_fit(&Context { outstanding: &[(1, 6.0)], ..f.ctx(&s) }, 1), 5);
    // CPU over its threshold: none.
    let busy = snapshot(0.95, 0.3, vec![gpu(0, 24, 2 * G), gpu(1, 16, 0)]);
    assert_eq!(generations_that_fit(&f.ctx(&busy), 1), 0);
    // Over the budget: none.
    f.settings.max_vram_usage_gb = 4.0;
    assert_eq!(generations_that_fit(&f.ctx(&s), 1), 0);
}

/// Waiting helps only where a release or a calmer host can make room.
#[test]
fn refusals_that_cannot_clear_are_lasting() {
    let f = Fixture::new();
    let s = snapshot(0.2, 0.3, vec![gpu(0, 16, 14 * G)]);
    // Full now, but the GPU could take it once emptied: worth waiting.
    let r = resource_check(&f.ctx(&s), &need(8.0));
    assert!(r.may_clear(), "{r:?}");
    // Larger than the GPU below its critical threshold (15.2 GiB), or than the budget (12 GiB).
    assert!(resource_check(&f.ctx(&s), &need(15.5)).lasting);
    let mut roomy = Fixture::new();
    roomy.settings.max_vram_usage_gb = 12.0;
    let s24 = snapshot(0.2, 0.3, vec![gpu(0, 24, 0)]);
    assert!(resource_check(&roomy.ctx(&s24), &need(13.0)).lasting);
    // An unknown pinned GPU, or no GPU at all.
    assert!(resource_check(&f.ctx(&s), &CheckRequest { gpu: Some(3), ..need(1.0) }).lasting);
    assert!(resource_check(&f.ctx(&snapshot(0.2, 0.3, vec![])), &need(1.0)).lasting);
    // A busy CPU clears.
    let busy = snapshot(0.95, 0.3, vec![gpu(0, 16, 0)]);
    assert!(resource_check(&f.ctx(&busy), &need(1.0)).may_clear());
}

//! The exposition's unit tests: omitted readings, escaping, live thresholds, lost GPUs, reuse.

use std::time::{Duration, UNIX_EPOCH};

use std::sync::Arc;

use super::*;
use crate::config::Constraints;
use crate::snapshot::{CollectorStatus, GpuMemory, GpuStats, HostStats};

fn gpu(index: u32) -> GpuStats {
    GpuStats {
        index,
        uuid: format!("GPU-{index}"),
        name: Some("Test \"GPU\"".to_owned()),
        pci_bus_id: Some("00000000:01:00.0".to_owned()),
        utilization_ratio: Some(0.5),
        memory: Some(GpuMemory { total_bytes: 100, used_bytes: 40, free_bytes: 60 }),
        temperature_celsius: None,
        power_watts: Some(120.5),
        processes: None,
        faults: Default::default(),
        telemetry: Default::default(),
        health: Default::default(),
    }
}

fn snapshot(gpus: Vec<GpuStats>) -> Snapshot {
    Snapshot {
        topology: Vec::new(),
        taken_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        host: Some(HostStats {
            cpu_usage_ratio: 0.25,
            memory_total_bytes: 1000,
            memory_available_bytes: 600,
            cgroup_memory_limit_bytes: None,
        }),
        gpus,
        driver_version: Some("550.1".to_owned()),
        collectors: vec![
            CollectorStatus { name: "host", success: true, duration: Duration::from_millis(2), error: None },
            CollectorStatus { name: "gpu", success: true, duration: Duration::from_millis(3), error: None },
        ],
    }
}

/// An exposition on the production path: the policy's part, then the whole text.
fn render(
    snapshot: Option<&Snapshot>,
    constraints: &Constraints,
    health: Option<crate::policy::health::HealthStatus>,
    active: u32,
    figures: &LeaseFigures,
) -> String {
    let metrics = Metrics::new();
    let snapshot = snapshot.cloned().map(Arc::new);
    let policy = Arc::new(metrics.policy_text(snapshot.as_deref(), constraints, health, active, figures));
    String::from_utf8(metrics.render_cached(snapshot.as_ref(), &policy, 0).to_vec()).unwrap()
}

/// The bytes of the previous exposition are sent again (the same buffer, not a fresh render of
/// the same text) only while nothing in them changed: a new sample, a new policy part, a
/// counted decision or a change kept elsewhere each render afresh.
#[test]
fn the_exposition_is_reused_only_while_nothing_changed() {
    let metrics = Metrics::new();
    let figures = LeaseFigures::default();
    let sample = Arc::new(snapshot(vec![gpu(0)]));
    let policy = Arc::new(metrics.policy_text(Some(&sample), &Constraints::default(), None, 0, &figures));
    let first = metrics.render_cached(Some(&sample), &policy, 0);
    let again = metrics.render_cached(Some(&sample), &policy, 0);
    assert_eq!(first.as_ptr(), again.as_ptr(), "nothing changed: the same bytes are sent again");

    // A new sample with the very same readings: rendered afresh, though the text is the same.
    let next = Arc::new(snapshot(vec![gpu(0)]));
    let after_sample = metrics.render_cached(Some(&next), &policy, 0);
    assert_ne!(after_sample.as_ptr(), again.as_ptr(), "a new sample renders afresh");
    assert_eq!(after_sample, again, "same readings, same text");

    let new_policy = Arc::new(metrics.policy_text(Some(&next), &Constraints::default(), None, 1, &figures));
    let after_policy = metrics.render_cached(Some(&next), &new_policy, 0);
    assert_ne!(after_policy.as_ptr(), after_sample.as_ptr(), "a new policy part renders afresh");

    metrics.record_decision(true, "none");
    let after_decision = metrics.render_cached(Some(&next), &new_policy, 0);
    assert_ne!(after_decision.as_ptr(), after_policy.as_ptr(), "a counted decision renders afresh");

    let after_outside = metrics.render_cached(Some(&next), &new_policy, 1);
    assert_ne!(after_outside.as_ptr(), after_decision.as_ptr(), "a change kept elsewhere renders afresh");
}

/// An unavailable reading has no series at all (never a 0), and label values are escaped.
#[test]
fn unavailable_readings_are_omitted() {
    let text = render(Some(&snapshot(vec![gpu(0)])), &Constraints::default(), None, 0, &LeaseFigures::default());
    assert!(!text.contains("vramguard_gpu_temperature_celsius"), "{text}");
    assert!(text.contains("vramguard_gpu_power_watts{gpu=\"0\",uuid=\"GPU-0\"} 120.5"), "{text}");
    assert!(text.contains("name=\"Test \\\"GPU\\\"\""), "{text}");
    assert!(text.contains("vramguard_memory_used_bytes 400"), "{text}");
    assert!(!text.contains("vramguard_cgroup_memory_limit_bytes"), "{text}");
}

/// The policy gauges carry the live constraint values.
#[test]
fn thresholds_follow_constraints() {
    let c = Constraints { vram_critical_threshold: 0.9, max_concurrent_generations: 3, ..Constraints::default() };
    let text = render(None, &c, None, 0, &LeaseFigures::default());
    assert!(text.contains("vramguard_threshold_ratio{resource=\"vram\",level=\"critical\"} 0.9"), "{text}");
    assert!(text.contains("vramguard_max_concurrent_generations 3"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("vramguard_gpus ")), "no snapshot yet: {text}");
}

/// A lost GPU takes its series with it and the GPU count drops.
#[test]
fn gpu_count_follows_snapshot() {
    let text =
        render(Some(&snapshot(vec![gpu(0), gpu(1)])), &Constraints::default(), None, 0, &LeaseFigures::default());
    assert!(text.contains("vramguard_gpus 2"));
    let text = render(Some(&snapshot(vec![gpu(1)])), &Constraints::default(), None, 0, &LeaseFigures::default());
    assert!(text.contains("vramguard_gpus 1"));
    assert!(!text.contains("gpu=\"0\""));
}

//! Kept answers against the real binary: a resource-check answer and the exposition are served
//! again only while nothing they were decided from changed. Every change of an input (a lease,
//! a release, a settings change, a new sample, an observation) shows in the very next answer,
//! and every answer is counted, kept or not.

mod common;

use common::{GIB, Vramguard};
use serde_json::{Value, json};

const CHECK: &str = "/api/v1/system/resource-check?vram_required_gb=6";
const LEASES: &str = "/api/v1/system/generations";

/// One 24 GiB GPU with 2 GiB used; samples every hour, so the first snapshot stays unless the
/// test asks for a new one.
fn start() -> Vramguard {
    start_on(24)
}

/// One GPU of `total_gib`, 2 GiB used, sampled once.
fn start_on(total_gib: u64) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let scenario =
        format!("[gpu]\nname NVIDIA GeForce RTX 4090\nmemory_total {}\nmemory_used {}\n", total_gib * GIB, 2 * GIB);
    let vg = Vramguard::start(&format!("sample_interval: \"1h\"\n{gpu}"), Some(&scenario), &[]);
    vg.wait_ready();
    vg
}

fn scenario(used_gib: u64) -> String {
    format!("[gpu]\nname NVIDIA GeForce RTX 4090\nmemory_total {}\nmemory_used {}\n", 24 * GIB, used_gib * GIB)
}

fn check(vg: &Vramguard) -> (String, Value) {
    let (status, body) = vg.get(CHECK);
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    (body, json)
}

fn admitted(vg: &Vramguard) -> f64 {
    vg.metrics()
        .value("vramguard_admission_decisions_total", &[("result", "admitted"), ("reason", "none")])
        .unwrap_or(0.0)
}

#[test]
fn resource_check_answers_follow_every_input() {
    let vg = start();
    // The same question twice: the same answer, counted twice (and kept from the second asking:
    // every answer below is to a question asked before).
    let before = admitted(&vg);
    let (first, json) = check(&vg);
    let (again, _) = check(&vg);
    assert_eq!(first, again);
    assert_eq!(admitted(&vg), before + 2.0, "a kept answer is still a decision");
    assert_eq!(json["current_usage"]["active_generations"], 0);
    assert_eq!(json["gpu"]["free_gb"], 22.0);

    // A lease: the next answer sees it.
    let (status, lease) = vg.post_json(LEASES, &json!({"vram_required_gb": 5.0}));
    assert_eq!(status, 201, "{lease}");
    let (_, json) = check(&vg);
    assert_eq!(json["current_usage"]["active_generations"], 1);
    assert_eq!(json["gpu"]["free_gb"], 17.0, "the reservation counts against the GPU");

    // A constraint change: refused for concurrency at once; reset: admitted again.
    let (status, _) = vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 1}));
    assert_eq!(status, 200);
    let (_, json) = check(&vg);
    assert_eq!(json["can_start_generation"], false);
    assert_eq!(json["resource_status"]["concurrency_available"], false);
    let (status, _) = vg.delete("/api/v1/system/constraints");
    assert_eq!(status, 200);
    assert_eq!(check(&vg).1["can_start_generation"], true);

    // The release: the slot and the VRAM are back in the next answer.
    let (status, _) = vg.delete(&format!("{LEASES}/{}", lease["id"].as_str().unwrap()));
    assert_eq!(status, 204);
    let (_, json) = check(&vg);
    assert_eq!(json["current_usage"]["active_generations"], 0);
    assert_eq!(json["gpu"]["free_gb"], 22.0);
}

/// A new snapshot is a new input: the answer kept on the old one is not served after it.
#[test]
fn a_new_sample_is_seen_in_the_next_answer() {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&scenario(2)), &[]);
    vg.wait_ready();
    // Asked more than once, so an answer is kept (from the second asking).
    for _ in 0..3 {
        assert_eq!(check(&vg).1["gpu"]["free_gb"], 22.0);
    }
    vg.set_scenario(&scenario(20));
    vg.wait_until("the 20 GiB sample", std::time::Duration::from_secs(10), || {
        vg.get_json("/api/v1/system/stats").1["gpus"][0]["vram_used_mb"].as_f64() == Some(20.0 * 1024.0)
    });
    let (_, json) = check(&vg);
    assert_eq!(json["can_start_generation"], false, "{json}");
    assert_eq!(json["resource_status"]["vram_available"], false, "{json}");
}

#[test]
fn a_bad_question_is_refused_every_time_and_never_kept() {
    let vg = start();
    for _ in 0..2 {
        let (status, body) = vg.get("/api/v1/system/resource-check?vram_required_gb=-1");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("vram_required_gb"), "{body}");
        let (status, body) = vg.get("/api/v1/system/resource-check?vram=1");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("unknown query parameter"), "{body}");
    }
    // A good question after them is answered as usual.
    assert_eq!(check(&vg).1["can_start_generation"], true);
}

#[test]
fn every_input_change_shows_in_the_next_scrape() {
    // 48 GiB: the default profile's estimate (~19.8 GiB) fits twice, and once beside a lease.
    let vg = start_on(48);
    let scrape = || vg.get("/metrics").1;
    let first = scrape();
    let second = scrape();
    // Back to back, nothing changed: the same text (process series are read at most once a
    // second, so they may differ only across that boundary). Whether the bytes were reused or
    // rendered again cannot be seen from here: the unit test
    // `metrics::tests::the_exposition_is_reused_only_while_nothing_changed` shows that.
    let without_process = |t: &str| t.lines().filter(|l| !l.starts_with("process_")).collect::<Vec<_>>().join("\n");
    assert_eq!(without_process(&first), without_process(&second));

    // A decision: the counter moves in the next scrape.
    let before = admitted(&vg);
    check(&vg);
    assert_eq!(admitted(&vg), before + 1.0);

    // A lease: active generations, outstanding VRAM and what fits in the next scrape.
    let fit = |m: &common::Metrics| m.value("vramguard_generations_that_fit", &[("workload", "default")]).unwrap();
    let fit_before = fit(&vg.metrics());
    assert!(fit_before >= 1.0);
    let (status, lease) = vg.post_json(LEASES, &json!({"vram_required_gb": 5.0}));
    assert_eq!(status, 201, "{lease}");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_active_generations", &[]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_memory_outstanding_bytes", &[("gpu", "0")]), Some((5 * GIB) as f64));
    let fit_with_lease = fit(&m);
    assert!(fit_with_lease <= fit_before && fit_with_lease >= 1.0, "{fit_before} then {fit_with_lease}");
    // With the one slot taken, nothing more fits, at once; the reset brings it back.
    let (status, _) = vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 1}));
    assert_eq!(status, 200);
    assert_eq!(fit(&vg.metrics()), 0.0);
    let (status, _) = vg.delete("/api/v1/system/constraints");
    assert_eq!(status, 200);
    assert_eq!(fit(&vg.metrics()), fit_with_lease);

    // A settings change: the threshold series in the next scrape.
    let (status, _) = vg.post_json("/api/v1/system/constraints", &json!({"vram_warning_threshold": 0.7}));
    assert_eq!(status, 200);
    assert_eq!(
        vg.metrics().value("vramguard_threshold_ratio", &[("resource", "vram"), ("level", "warning")]),
        Some(0.7)
    );

    // The release: back to none.
    let (status, _) = vg.delete(&format!("{LEASES}/{}", lease["id"].as_str().unwrap()));
    assert_eq!(status, 204);
    assert_eq!(vg.metrics().value("vramguard_active_generations", &[]), Some(0.0));
}

/// A lease lapses at its expiry, before the reaper writes it off: every answer decided after
/// that moment no longer counts it, even to a question never asked before (decided on a view
/// kept since before the expiry).
#[test]
fn a_lapsed_lease_is_gone_from_every_answer_after_its_expiry() {
    use std::time::{Duration, Instant};
    let vg = start();
    let (status, lease) = vg.post_json(LEASES, &json!({"vram_required_gb": 5.0, "ttl_seconds": 10}));
    assert_eq!(status, 201, "{lease}");
    // The lease expires at most 10 s after its answer came.
    let lapsed = Instant::now() + Duration::from_secs(10);
    let mut after = 0;
    for i in 0.. {
        let asked = Instant::now();
        if asked > lapsed + Duration::from_millis(1500) {
            break;
        }
        // A new question each time (no kept answer), every one decided on the kept view.
        let (status, body) =
            vg.get(&format!("/api/v1/system/resource-check?vram_required_gb={}", 1.0 + f64::from(i) / 1e4));
        assert_eq!(status, 200, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        if asked > lapsed {
            after += 1;
            assert_eq!(json["current_usage"]["active_generations"], 0, "asked after the expiry: {json}");
            assert_eq!(json["gpu"]["free_gb"], 22.0, "asked after the expiry: {json}");
        }
        if asked + Duration::from_millis(600) < lapsed {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(after > 10, "only {after} answers after the expiry");
}

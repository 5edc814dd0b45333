//! Generation leases against the real binary: atomic admission under concurrency, VRAM
//! reservations, expiry, heartbeats, restarts, placement and bad input.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{GIB, Vramguard};
use serde_json::{Value, json};

const LEASES: &str = "/api/v1/system/generations";

/// Starts vramguard on a scripted calm host (the harness default), so neither this machine's
/// load nor a retry decides whether a lease is granted. The sample interval is longer than any
/// test: the first snapshot is the only one.
fn start(scenario: &str, extra: &str) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"1h\"\n{gpu}{extra}"), Some(scenario), &[]);
    vg.wait_ready();
    vg
}

fn gpu(total: u64, used: u64) -> String {
    format!("[gpu]\nmemory_total {total}\nmemory_used {used}\n")
}

/// Fires `n` lease requests at once and returns their statuses and bodies.
fn race(vg: &Vramguard, n: usize, body: &Value) -> Vec<(u16, Value)> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    vg.post_json(LEASES, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn count(results: &[(u16, Value)], status: u16) -> usize {
    results.iter().filter(|(s, _)| *s == status).count()
}

fn live_ids(vg: &Vramguard) -> Vec<String> {
    let (status, list) = vg.get_json(LEASES);
    assert_eq!(status, 200);
    list["leases"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect()
}

/// Limit 2, 50 concurrent requests: exactly 2 granted and 48 refused for concurrency; after
/// one release, exactly one more. Twenty rounds, no flake.
#[test]
fn race_for_the_last_slots() {
    let vg = start(&gpu(80 * GIB, 0), "");
    let body = json!({"vram_required_gb": 0.5, "client": "race"});
    for round in 0..20 {
        let results = race(&vg, 50, &body);
        assert_eq!(count(&results, 201), 2, "round {round}: {:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
        assert_eq!(count(&results, 409), 48, "round {round}");
        let refused = results.iter().find(|(s, _)| *s == 409).unwrap();
        assert_eq!(refused.1["resource_check"]["resource_status"]["concurrency_available"], json!(false));
        assert!(
            refused.1["detail"].as_str().unwrap().contains("Concurrent generation limit reached (2/2)"),
            "{}",
            refused.1
        );
        let ids = live_ids(&vg);
        assert_eq!(ids.len(), 2);
        assert_eq!(vg.delete(&format!("{LEASES}/{}", ids[0])).0, 204);
        let again = race(&vg, 50, &body);
        assert_eq!(count(&again, 201), 1, "round {round} after one release");
        assert_eq!(count(&again, 409), 49);
        for id in live_ids(&vg) {
            assert_eq!(vg.delete(&format!("{LEASES}/{id}")).0, 204);
        }
    }
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_active_generations", &[]), Some(0.0));
    // 60 leases, and nothing else was decided.
    assert_eq!(
        m.value("vramguard_admission_decisions_total", &[("result", "admitted"), ("reason", "none")]),
        Some(60.0)
    );
    assert_eq!(
        m.value("vramguard_admission_decisions_total", &[("result", "refused"), ("reason", "concurrency")]),
        Some(1940.0)
    );
}

/// One GPU with 12 GiB free, two concurrent 10 GiB requests: one is granted and the other is
/// refused on VRAM although NVML's reading has not moved; the reservation keeps counting for
/// the lease's whole life, and its release frees it.
#[test]
fn reservations_prevent_double_promises() {
    let vg = start(&gpu(16 * GIB, 4 * GIB), "");
    let body = json!({"vram_required_gb": 10});
    let results = race(&vg, 2, &body);
    assert_eq!(count(&results, 201), 1, "{results:?}");
    assert_eq!(count(&results, 409), 1);
    let refused = &results.iter().find(|(s, _)| *s == 409).unwrap().1;
    assert_eq!(refused["resource_check"]["resource_status"]["vram_available"], json!(false));
    assert_eq!(refused["resource_check"]["resource_status"]["concurrency_available"], json!(true));
    assert!(refused["detail"].as_str().unwrap().contains("10.0 GB of it promised to running generations"), "{refused}");
    assert_eq!(refused["resource_check"]["gpu"]["free_gb"], json!(2.0));
    // The read-only check sees the reservation too, and it does not lapse.
    std::thread::sleep(Duration::from_secs(2));
    let (_, check) = vg.get_json("/api/v1/system/resource-check?vram_required_gb=10");
    assert_eq!(check["resource_status"]["vram_available"], json!(false));
    let granted = &results.iter().find(|(s, _)| *s == 201).unwrap().1;
    assert_eq!(granted["vram_outstanding_gb"], json!(10.0));
    assert_eq!(vg.delete(&format!("{LEASES}/{}", granted["id"].as_str().unwrap())).0, 204);
    assert_eq!(vg.post_json(LEASES, &body).0, 201);
}

/// A short TTL lapses; a heartbeat extends it; releasing an unknown or expired lease is 404.
#[test]
fn expiry_and_heartbeat() {
    let vg = start(&gpu(80 * GIB, 0), "");
    let (status, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 1, "ttl_seconds": 10, "client": "a"}));
    assert_eq!(status, 201, "{a}");
    let (status, b) = vg.post_json(LEASES, &json!({"vram_required_gb": 1, "ttl_seconds": 10, "client": "b"}));
    assert_eq!(status, 201, "{b}");
    let b_id = b["id"].as_str().unwrap().to_owned();
    assert_eq!(a["gpu"], json!({"index": 0, "uuid": "GPU-00000000-0000-0000-0000-000000000000"}));
    assert_eq!(a["vram_reserved_gb"], json!(1.0));
    assert!(a["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["resource_check"]["can_start_generation"], json!(true));
    // Keep b alive with heartbeats while a runs out.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        let (status, hb) = vg.post_json(&format!("{LEASES}/{b_id}/heartbeat"), &json!({}));
        assert_eq!(status, 200, "{hb}");
        std::thread::sleep(Duration::from_secs(2));
    }
    let ids = live_ids(&vg);
    assert_eq!(ids, vec![b_id.clone()]);
    let a_id = a["id"].as_str().unwrap();
    assert_eq!(vg.delete(&format!("{LEASES}/{a_id}")).0, 404);
    assert_eq!(vg.post_json(&format!("{LEASES}/{a_id}/heartbeat"), &json!({})).0, 404);
    assert_eq!(vg.delete(&format!("{LEASES}/{}", "0".repeat(32))).0, 404);
    // A heartbeat can set a new TTL; an empty body keeps the lease's own.
    let r = vg.client().post(vg.url(&format!("{LEASES}/{b_id}/heartbeat"))).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, hb) = vg.post_json(&format!("{LEASES}/{b_id}/heartbeat"), &json!({"ttl_seconds": 3600}));
    assert_eq!(status, 200);
    assert_eq!(hb["ttl_seconds"], json!(3600));
    assert_eq!(vg.delete(&format!("{LEASES}/{b_id}")).0, 204);
    assert_eq!(vg.delete(&format!("{LEASES}/{b_id}")).0, 404);
}

/// A lease survives `kill -9` and still expires on time afterwards.
#[test]
fn lease_survives_restart_and_still_expires() {
    let vg = start(&gpu(80 * GIB, 0), "");
    let (status, lease) = vg.post_json(LEASES, &json!({"vram_required_gb": 2, "ttl_seconds": 10}));
    assert_eq!(status, 201);
    let granted = Instant::now();
    let id = lease["id"].as_str().unwrap().to_owned();
    let vg = vg.restart(true);
    vg.wait_ready();
    let (_, list) = vg.get_json(LEASES);
    assert_eq!(list["active_generations"], json!(1));
    assert_eq!(list["leases"][0]["id"], json!(id));
    assert_eq!(list["leases"][0]["expires_at"], lease["expires_at"]);
    assert_eq!(vg.metrics().value("vramguard_active_generations", &[]), Some(1.0));
    let (_, check) = vg.get_json("/api/v1/system/resource-check?vram_required_gb=1");
    assert_eq!(check["current_usage"]["active_generations"], json!(1));
    let (_, health) = vg.get_json("/api/v1/system/health");
    assert_eq!(health["system_info"]["active_generations"], json!(1));
    assert_eq!(health["system_info"]["concurrency_available"], json!(true));
    // Expiry keeps counting across the restart: gone once its 10 s are up, not 10 s after restart.
    while granted.elapsed() < Duration::from_millis(10_500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    vg.wait_until("the lease to expire", Duration::from_secs(3), || live_ids(&vg).is_empty());
    assert_eq!(vg.delete(&format!("{LEASES}/{id}")).0, 404);
}

/// Placement: the GPU with the most free VRAM after the job; `gpu` pins one, and a pinned GPU
/// that cannot take the job is a refusal that says so.
#[test]
fn placement_across_two_gpus() {
    let vg = start(&format!("{}{}", gpu(24 * GIB, 16 * GIB), gpu(24 * GIB, 4 * GIB)), "");
    let (status, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 4}));
    assert_eq!(status, 201);
    assert_eq!(a["gpu"]["index"], json!(1));
    let (status, b) = vg.post_json(LEASES, &json!({"vram_required_gb": 4, "gpu": 0}));
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["gpu"]["index"], json!(0));
    for id in live_ids(&vg) {
        vg.delete(&format!("{LEASES}/{id}"));
    }
    let (status, c) = vg.post_json(LEASES, &json!({"vram_required_gb": 8, "gpu": 0}));
    assert_eq!(status, 409, "{c}");
    assert!(c["detail"].as_str().unwrap().contains("GPU 0 has"), "{c}");
    assert_eq!(c["resource_check"]["gpu"]["index"], json!(0));
    let (status, d) = vg.post_json(LEASES, &json!({"vram_required_gb": 1, "gpu": 5}));
    assert_eq!(status, 409);
    assert!(d["detail"].as_str().unwrap().contains("GPU 5 is not visible (visible: 0, 1)"), "{d}");
}

/// Bad input on every lease endpoint: 400/404 with a detail, and nothing recorded.
#[test]
fn bad_lease_input_records_nothing() {
    let vg = start(&gpu(80 * GIB, 0), "");
    let long = "x".repeat(129);
    let cases = [
        json!({"vram_required_gb": -1}),
        json!({"vram_required_gb": 0}),
        json!({"vram_required_gb": 1e9}),
        json!({"vram_required_gb": "2"}),
        json!({"ttl_seconds": 9}),
        json!({"ttl_seconds": 86401}),
        json!({"ttl_seconds": -5}),
        json!({"ttl_seconds": 1.5}),
        json!({"client": long}),
        json!({"client": 7}),
        json!({"gpu": -1}),
        json!({"gpu": "0"}),
        json!({"model_loaded": "yes"}),
        json!({"lease": true}),
        json!([1]),
    ];
    for body in cases {
        let (status, resp) = vg.post_json(LEASES, &body);
        assert_eq!(status, 400, "{body} -> {resp}");
        assert!(resp["detail"].is_string(), "{body}: {resp}");
    }
    for bad in ["not-an-id", "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ", "abc", &"a".repeat(33)] {
        let (status, resp) = vg.delete(&format!("{LEASES}/{bad}"));
        assert_eq!(status, 404, "{bad}");
        assert!(resp["detail"].is_string());
        assert_eq!(vg.post_json(&format!("{LEASES}/{bad}/heartbeat"), &json!({})).0, 404);
    }
    let id = "0123456789abcdef0123456789abcdef";
    assert_eq!(vg.post_json(&format!("{LEASES}/{id}/heartbeat"), &json!({"ttl_seconds": 5})).0, 400);
    assert_eq!(vg.post_json(&format!("{LEASES}/{id}/heartbeat"), &json!({"x": 1})).0, 400);
    let (_, list) = vg.get_json(LEASES);
    assert_eq!(list["active_generations"], json!(0));
    assert_eq!(vg.metrics().value("vramguard_active_generations", &[]), Some(0.0));
}

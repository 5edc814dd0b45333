//! GPU fault health end to end (issue #13): the real binary on the fake NVML with ECC counters,
//! row remapping, clock event reasons and XID events scripted, and what they do to placement,
//! health, the stats API and the exposition.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{GIB, Metrics, Vramguard, require_tool};
use serde_json::json;

const LEASES: &str = "/api/v1/system/generations";
const INTERVAL: f64 = 0.25;

fn start(scenario: &str, extra: &str) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}{extra}"), Some(scenario), &[]);
    vg.wait_ready();
    vg
}

/// Two data-center GPUs: GPU 0 has 40 GiB free, GPU 1 16 GiB; GPU 0's remap state is given.
fn two_gpus(pending: bool) -> String {
    format!(
        "[gpu]\nmemory_total {}\nmemory_used {}\nremap_pending {}\nremapped_rows_uncorrectable 1\nclock_sm 1980\nclock_memory 2619\n\
         [gpu]\nmemory_total {}\nmemory_used {}\nclock_sm 1755\nclock_memory 2619\n",
        48 * GIB,
        8 * GIB,
        u8::from(pending),
        24 * GIB,
        8 * GIB,
    )
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn sample_time(m: &Metrics) -> f64 {
    m.value("vramguard_last_sample_timestamp_seconds", &[]).unwrap()
}

fn healthy(m: &Metrics, gpu: &str) -> Option<f64> {
    m.value("vramguard_gpu_healthy", &[("gpu", gpu)])
}

/// Must show 1: GPU 0 has the most free VRAM but a pending remap, so leases go to GPU 1, health
/// names GPU 0 and `vramguard_gpu_healthy{gpu="0"}` is 0; a pinned request for GPU 0 refuses and
/// says why. Once the remap is cleared (the GPU was reset), GPU 0 is used again.
#[test]
fn pending_remap_steers_placement_until_cleared() {
    let vg = start(&two_gpus(true), "");
    let m = vg.metrics();
    assert_eq!(healthy(&m, "0"), Some(0.0), "{}", m.text);
    assert_eq!(healthy(&m, "1"), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_remap_pending", &[("gpu", "0")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_remapped_rows", &[("gpu", "0"), ("type", "uncorrectable")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_clock_hertz", &[("gpu", "1"), ("clock", "sm")]), Some(1.755e9));

    let (status, lease) = vg.post_json(LEASES, &json!({"vram_required_gb": 4}));
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease["gpu"]["index"], json!(1), "{lease}");

    let (_, check) = vg.get_json("/api/v1/system/resource-check?vram_required_gb=4");
    assert_eq!(check["gpu"]["index"], json!(1), "{check}");
    let (status, refused) = vg.post_json(LEASES, &json!({"vram_required_gb": 4, "gpu": 0}));
    assert_eq!(status, 409, "{refused}");
    let expected = "GPU 0 unhealthy: row remap pending, reset the GPU";
    assert!(refused["detail"].as_str().unwrap().contains(expected), "{refused}");
    assert_eq!(refused["resource_check"]["blocking_issues"], json!([expected]));

    let (_, health) = vg.get_json("/api/v1/system/health");
    assert_eq!(health["status"], json!("warning"), "{health}");
    assert_eq!(health["system_info"]["issues"], json!([expected]), "{health}");
    let recs = health["system_info"]["recommendations"].as_array().unwrap();
    assert!(recs.iter().any(|r| r.as_str().unwrap().contains("nvidia-smi --gpu-reset -i 0")), "{health}");

    let (_, stats) = vg.get_json("/api/v1/system/stats");
    assert_eq!(stats["gpus"][0]["healthy"], json!(false));
    assert_eq!(stats["gpus"][0]["health_reasons"], json!(["row remap pending, reset the GPU"]));
    assert_eq!(stats["gpus"][1]["healthy"], json!(true));
    assert_eq!(stats["gpus"][1]["health_reasons"], json!([]));

    vg.set_scenario(&two_gpus(false));
    vg.wait_metrics("GPU 0 to be healthy again", Duration::from_secs(10), |m| healthy(m, "0") == Some(1.0));
    let (status, lease) = vg.post_json(LEASES, &json!({"vram_required_gb": 4}));
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease["gpu"]["index"], json!(0), "{lease}");
    let (_, health) = vg.get_json("/api/v1/system/health");
    assert_eq!(health["status"], json!("healthy"), "{health}");
}

/// Must show 2: XID 79 injected mid-run is counted within two samples and makes the GPU
/// unhealthy (critical: no other GPU) for the window, then healthy again; XID 31, an
/// application fault, is counted and the GPU stays healthy.
#[test]
fn fatal_xid_counts_and_expires_application_xid_only_counts() {
    let base = "[gpu]\nmemory_total 25769803776\n";
    let vg = start(base, "gpu_health: { xid_window: 3s }\n");
    vg.wait_until("the XID thread to register", Duration::from_secs(10), || vg.logs().contains("watching XID events"));
    let m = vg.metrics();
    assert!(!m.has("vramguard_gpu_xid_errors_total"), "{}", m.text);
    assert_eq!(healthy(&m, "0"), Some(1.0));

    let written = unix_now();
    vg.set_scenario(&format!("{base}xid 79 1\n"));
    // Every snapshot taken two intervals after the event was written already counts it.
    let m = vg.wait_metrics("a snapshot two intervals later", Duration::from_secs(10), |m| {
        sample_time(m) >= written + 2.0 * INTERVAL
    });
    assert_eq!(m.value("vramguard_gpu_xid_errors_total", &[("gpu", "0"), ("xid", "79")]), Some(1.0), "{}", m.text);
    assert_eq!(healthy(&m, "0"), Some(0.0), "{}", m.text);
    let (_, health) = vg.get_json("/api/v1/system/health");
    assert_eq!(health["status"], json!("critical"), "{health}");
    assert_eq!(
        health["system_info"]["issues"][0],
        json!("GPU 0 unhealthy: fatal XID 79 (GPU has fallen off the bus) within the last 3s, reset the GPU")
    );
    let (status, refused) = vg.post_json(LEASES, &json!({"vram_required_gb": 1}));
    assert_eq!(status, 409, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("GPU 0 unhealthy: fatal XID 79"), "{refused}");

    let back = vg.wait_metrics("the window to pass", Duration::from_secs(15), |m| healthy(m, "0") == Some(1.0));
    assert!(sample_time(&back) >= written + 3.0, "healthy again before the window ended");
    assert_eq!(back.value("vramguard_gpu_xid_errors_total", &[("gpu", "0"), ("xid", "79")]), Some(1.0));
    assert_eq!(vg.post_json(LEASES, &json!({"vram_required_gb": 1})).0, 201);

    let written = unix_now();
    vg.set_scenario(&format!("{base}xid 79 1\nxid 31 2\n"));
    let m = vg.wait_metrics("a snapshot two intervals later", Duration::from_secs(10), |m| {
        sample_time(m) >= written + 2.0 * INTERVAL
    });
    assert_eq!(m.value("vramguard_gpu_xid_errors_total", &[("gpu", "0"), ("xid", "31")]), Some(1.0), "{}", m.text);
    assert_eq!(m.value("vramguard_gpu_xid_errors_total", &[("gpu", "0"), ("xid", "79")]), Some(1.0), "not again");
    let later =
        vg.wait_metrics("more samples", Duration::from_secs(10), |later| sample_time(later) >= sample_time(&m) + 1.0);
    assert_eq!(healthy(&later, "0"), Some(1.0), "{}", later.text);
    assert_eq!(vg.get_json("/api/v1/system/health").1["status"], json!("healthy"));
    assert!(vg.logs().contains("XID event"), "{}", vg.logs());
}

/// A GPU that refuses XID registration does not take the others' registrations with it: GPU 1
/// refuses between two that accept, and events on GPUs 0 and 2 are still counted.
#[test]
fn a_gpu_refusing_xid_registration_leaves_the_others_watched() {
    let gpus = |xids: bool| {
        let x = |line: &str| if xids { line.to_owned() } else { String::new() };
        format!(
            "[gpu]\n{}[gpu]\nxid_events unsupported\n{}[gpu]\n{}",
            x("xid 94 1\n"),
            x("xid 79 1\n"),
            x("xid 43 1\n")
        )
    };
    let vg = start(&gpus(false), "");
    vg.wait_until("the XID thread to register", Duration::from_secs(10), || vg.logs().contains("watching XID events"));
    assert!(vg.logs().contains("GPU refuses XID event registration"), "{}", vg.logs());
    vg.set_scenario(&gpus(true));
    let m = vg.wait_metrics("XIDs on GPUs 0 and 2", Duration::from_secs(10), |m| {
        m.value("vramguard_gpu_xid_errors_total", &[("gpu", "0"), ("xid", "94")]) == Some(1.0)
            && m.value("vramguard_gpu_xid_errors_total", &[("gpu", "2"), ("xid", "43")]) == Some(1.0)
    });
    assert!(m.find("vramguard_gpu_xid_errors_total", &[("gpu", "1")]).is_empty(), "{}", m.text);
    assert_eq!(healthy(&m, "0"), Some(0.0), "XID 94 is fatal");
    assert_eq!(healthy(&m, "1"), Some(1.0));
    assert_eq!(healthy(&m, "2"), Some(1.0), "XID 43 is not");
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0));
}

/// Must show 3: a board without ECC or row remapping (NOT_SUPPORTED), and one with ECC switched
/// off: those series are absent, never 0, both GPUs are healthy, and promtool is silent.
#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool on PATH (apt-get install prometheus)")]
fn unsupported_fault_readings_are_absent_and_healthy() {
    let vg = start(
        "[gpu]\nname NVIDIA GeForce RTX 4090\necc_mode unsupported\nremapped_rows unsupported\n\
         clock_event_reasons unsupported\nclock_sm unsupported\nclock_memory unsupported\n\
         [gpu]\necc_mode off\necc_uncorrected 5\nremapped_rows unsupported\n",
        "",
    );
    let m = vg.metrics();
    for absent in [
        "vramguard_gpu_ecc_errors_total",
        "vramguard_gpu_remapped_rows",
        "vramguard_gpu_remap_pending",
        "vramguard_gpu_remap_failed",
    ] {
        assert!(!m.has(absent), "{absent} should be omitted:\n{}", m.text);
    }
    assert!(m.find("vramguard_gpu_throttle_reason", &[("gpu", "0")]).is_empty(), "{}", m.text);
    assert!(m.find("vramguard_gpu_clock_hertz", &[("gpu", "0")]).is_empty(), "{}", m.text);
    assert_eq!(m.find("vramguard_gpu_throttle_reason", &[("gpu", "1")]).len(), 7, "{}", m.text);
    assert_eq!(healthy(&m, "0"), Some(1.0));
    assert_eq!(healthy(&m, "1"), Some(1.0), "uncorrected counts mean nothing with ECC off");
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0));
    let (_, health) = vg.get_json("/api/v1/system/health");
    assert_eq!(health["status"], json!("healthy"), "{health}");
    if require_tool("promtool") {
        common::promtool_check_metrics(&m.text);
    }
}

/// Uncorrected ECC errors make a GPU unhealthy, a failed remap asks for an RMA, and thermal
/// slowdown only warns; each reading comes out exactly as NVML gave it.
#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool on PATH (apt-get install prometheus)")]
fn ecc_failed_remap_and_thermal_slowdown() {
    let vg = start(
        "[gpu]\necc_corrected 12\necc_uncorrected 2\n\
         [gpu]\nremapped_rows_correctable 3\nremapped_rows_uncorrectable 512\nremap_failed 1\n\
         [gpu]\nclock_event_reasons hw_thermal_slowdown,sw_power_cap\n",
        "",
    );
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpu_ecc_errors_total", &[("gpu", "0"), ("type", "corrected")]), Some(12.0));
    assert_eq!(m.value("vramguard_gpu_ecc_errors_total", &[("gpu", "0"), ("type", "uncorrected")]), Some(2.0));
    assert_eq!(m.value("vramguard_gpu_remapped_rows", &[("gpu", "1"), ("type", "correctable")]), Some(3.0));
    assert_eq!(m.value("vramguard_gpu_remap_failed", &[("gpu", "1")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_remap_pending", &[("gpu", "1")]), Some(0.0));
    let reason = |r: &str| m.value("vramguard_gpu_throttle_reason", &[("gpu", "2"), ("reason", r)]);
    assert_eq!(
        (reason("hw_thermal_slowdown"), reason("sw_power_cap"), reason("gpu_idle")),
        (Some(1.0), Some(1.0), Some(0.0))
    );
    assert_eq!((healthy(&m, "0"), healthy(&m, "1"), healthy(&m, "2")), (Some(0.0), Some(0.0), Some(1.0)));

    let (_, health) = vg.get_json("/api/v1/system/health");
    assert_eq!(health["status"], json!("warning"), "a healthy GPU is left: {health}");
    assert_eq!(
        health["system_info"]["issues"],
        json!([
            "GPU 0 unhealthy: 2 uncorrected ECC errors since the driver loaded, reset the GPU",
            "GPU 1 unhealthy: row remapping failed (no spare rows left), replace the GPU (RMA)"
        ]),
        "{health}"
    );
    assert_eq!(health["system_info"]["warnings"], json!(["GPU 2 clocks slowed down by hw_thermal_slowdown"]));
    let recs = health["system_info"]["recommendations"].as_array().unwrap();
    assert!(
        recs.iter().any(|r| r.as_str().unwrap().starts_with("GPU 1 takes no new work: drain it and request an RMA"))
    );
    let (status, lease) = vg.post_json(LEASES, &json!({"vram_required_gb": 1}));
    assert_eq!((status, &lease["gpu"]["index"]), (201, &json!(2)), "{lease}");
    if require_tool("promtool") {
        common::promtool_check_metrics(&m.text);
    }
}

/// Must show 4: an XID thread stuck inside NVML's event wait holds up neither the sampler's
/// cadence nor shutdown: samples keep coming every interval, and SIGTERM exits 0 within 2 s.
#[test]
fn a_stuck_event_wait_stalls_neither_sampling_nor_shutdown() {
    let mut vg = start("event_wait_hang_ms 60000\n[gpu]\n[gpu]\n", "");
    vg.wait_until("the XID thread to register", Duration::from_secs(10), || vg.logs().contains("watching XID events"));
    // The thread is now inside a 60 s wait. Count samples over two seconds.
    let first = sample_time(&vg.metrics());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let last = vg.metrics();
    let samples = (sample_time(&last) - first) / INTERVAL;
    assert!(samples >= 6.0, "{samples} intervals in {:?}", start.elapsed());
    assert_eq!(last.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0));
    assert_eq!(last.value("vramguard_gpus", &[]), Some(2.0));

    let (status, took) = vg.terminate(Duration::from_secs(5));
    let status = status.expect("vramguard exited");
    assert!(status.success(), "{status:?}; logs:\n{}", vg.logs());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

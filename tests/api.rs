//! The policy sidecar end to end: the real binary on fake-NVML scenarios.
//!
//! CPU and RAM are this machine's real readings and vary with the load of the test run, so the
//! VRAM parts of each decision are asserted exactly and `can_start_generation` is checked to be
//! the conjunction of the per-resource verdicts.

mod common;

use std::time::Duration;

use common::{CALM, GIB, Host, MIB, Vramguard};
use serde_json::{Value, json};

fn gpu(uuid: &str, total: u64, used: u64, util: u32, extra: &str) -> String {
    format!(
        "[gpu]\nuuid {uuid}\nname Test GPU\nmemory_total {total}\nmemory_used {used}\nutilization_gpu {util}\ntemperature 60\npower_mw 100000\n{extra}"
    )
}

fn start(scenario: &str) -> Vramguard {
    let vg = Vramguard::with_fake(scenario, "250ms");
    vg.wait_ready();
    vg
}

fn check(vg: &Vramguard, query: &str) -> Value {
    let (status, body) = vg.get_json(&format!("/api/v1/system/resource-check{query}"));
    assert_eq!(status, 200, "{body}");
    let rs = &body["resource_status"];
    let all = rs["vram_available"].as_bool().unwrap()
        && rs["cpu_available"].as_bool().unwrap()
        && rs["ram_available"].as_bool().unwrap();
    assert_eq!(body["can_start_generation"].as_bool().unwrap(), all, "{body}");
    body
}

fn health(vg: &Vramguard) -> Value {
    let (status, body) = vg.get_json("/api/v1/system/health");
    assert_eq!(status, 200);
    body
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

/// Issues that are not about CPU or RAM (which depend on the machine running the tests).
fn vram_issues(h: &Value) -> Vec<String> {
    strings(&h["system_info"]["issues"])
        .into_iter()
        .filter(|i| i != "High CPU usage" && i != "High RAM usage")
        .collect()
}

/// A 16 GiB GPU with 2 GiB used: stats, health and resource-check all say so.
#[test]
fn healthy_gpu() {
    let vg = start(&gpu("GPU-A", 16 * GIB, 2 * GIB, 35, ""));
    let (status, stats) = vg.get_json("/api/v1/system/stats");
    assert_eq!(status, 200);
    for field in [
        "cpu_percent",
        "ram_used_gb",
        "ram_total_gb",
        "ram_percent",
        "gpu_percent",
        "vram_used_mb",
        "vram_total_mb",
        "vram_percent",
        "timestamp",
    ] {
        assert!(stats.get(field).is_some(), "stats lacks {field}: {stats}");
    }
    assert_eq!(stats["vram_used_mb"], json!(2048.0));
    assert_eq!(stats["vram_total_mb"], json!(16384.0));
    assert_eq!(stats["vram_percent"], json!(12.5));
    assert_eq!(stats["gpu_percent"], json!(35.0));
    assert_eq!(stats["gpu_count"], json!(1));
    assert_eq!(stats["gpus"][0]["uuid"], json!("GPU-A"));
    assert_eq!(stats["gpus"][0]["temperature_c"], json!(60.0));
    assert_eq!(stats["gpus"][0]["power_w"], json!(100.0));
    assert!(stats["timestamp"].as_str().unwrap().ends_with('Z'));
    let total_gb = stats["ram_total_gb"].as_f64().unwrap();
    assert!(total_gb > 0.0);

    let h = health(&vg);
    assert_eq!(h["system_info"]["vram_percent"], json!(12.5));
    assert!(vram_issues(&h).is_empty(), "{h}");
    assert!(h["system_info"]["warnings"].as_array().unwrap().is_empty());
    // The scripted host is calm, so nothing at all is wrong.
    assert!(h["system_info"]["issues"].as_array().unwrap().is_empty(), "{h}");
    assert_eq!(h["status"], json!("healthy"));
    assert_eq!(h["system_info"]["cpu_percent"], json!(10.0));
    assert_eq!(h["system_info"]["ram_percent"], json!(25.0));
    assert_eq!(h["system_info"]["resource_constraints"]["vram_critical_threshold"], json!(0.95));

    let r = check(&vg, "?vram_required_gb=4");
    assert_eq!(r["resource_status"]["vram_available"], json!(true));
    assert_eq!(r["gpu"], json!({"index": 0, "uuid": "GPU-A", "free_gb": 14.0, "projected_percent": 37.5}));
    assert_eq!(r["current_usage"]["vram_percent"], json!(12.5));
    assert_eq!(r["vram_required_gb"], json!(4.0));
    assert_eq!(r["resource_status"]["concurrency_available"], json!(true));
    assert_eq!(r["current_usage"]["active_generations"], json!(0));
    // Without a figure, the requirement is the workload estimate of the live settings.
    // Wan2.2 TI2V-5B at 1280×704×121, bf16, offload, tiles of 256: the denoising phase, 5.00e9
    // parameters × 2 B + the VAE's 0.705e9 × 4 B + 90.6 B × 27,280 tokens × 3072, + 0.75 GiB.
    let est = check(&vg, "");
    assert_eq!(est["vram_required_gb"], json!(19.76));
    assert_eq!(est["estimate"]["workload"], json!("default"));
    // A worker holding its model: the activations and the overhead.
    let loaded = check(&vg, "?model_loaded=true");
    assert_eq!(loaded["vram_required_gb"], json!(7.82));
}

/// VRAM at 87.5%: a warning with recommendations that carry numbers.
#[test]
fn warning_vram() {
    let vg = start(&gpu("GPU-A", 16 * GIB, 14 * GIB, 90, ""));
    let h = health(&vg);
    assert_ne!(h["status"], json!("critical"));
    assert_eq!(h["status"], json!("warning"));
    assert_eq!(strings(&h["system_info"]["warnings"]), vec!["High VRAM usage - consider optimization"]);
    let recs = strings(&h["system_info"]["recommendations"]);
    assert!(recs.iter().any(|r| r.contains("saves ~") && r.contains("projected VRAM")), "{recs:?}");
    let r = check(&vg, "?vram_required_gb=1");
    assert_eq!(r["resource_status"]["vram_available"], json!(true));
}

/// VRAM at 96%: critical, and nothing is admitted; the holder of the VRAM is named.
#[test]
fn critical_vram() {
    let me = std::process::id();
    let vg = start(&gpu("GPU-A", 25 * GIB, 24 * GIB, 99, &format!("process {me} {}\n", 24 * GIB)));
    let h = health(&vg);
    assert_eq!(h["status"], json!("critical"));
    assert!(vram_issues(&h).contains(&"Critical VRAM usage - generation may fail".to_owned()));
    let r = check(&vg, "?vram_required_gb=1");
    assert_eq!(r["can_start_generation"], json!(false));
    assert_eq!(r["resource_status"]["vram_available"], json!(false));
    assert!(strings(&r["blocking_issues"]).contains(&"VRAM usage too high (96.0%)".to_owned()), "{r}");
    let recs = strings(&r["recommendations"]);
    assert!(recs.iter().any(|t| t.contains(&format!("pid {me} (")) && t.contains("24.0 GB on GPU 0")), "{recs:?}");
}

/// Exactly at the critical threshold, health is critical and resource-check refuses; moving the
/// threshold through the API moves both together.
#[test]
fn exactly_at_threshold() {
    let vg = start(&gpu("GPU-A", 20 * GIB, 19 * GIB, 50, ""));
    assert_eq!(health(&vg)["status"], json!("critical"));
    let r = check(&vg, "?vram_required_gb=0.01");
    assert_eq!(r["resource_status"]["vram_available"], json!(false));
    assert!(strings(&r["blocking_issues"]).contains(&"VRAM usage too high (95.0%)".to_owned()), "{r}");

    let (status, _) = vg.post_json("/api/v1/system/constraints", &json!({"vram_critical_threshold": 0.96}));
    assert_eq!(status, 200);
    assert_ne!(health(&vg)["status"], json!("critical"));
    let r = check(&vg, "?vram_required_gb=0.01");
    assert_eq!(r["resource_status"]["vram_available"], json!(true), "{r}");
}

/// Two GPUs: stats sum and average them, and the less loaded GPU is chosen.
#[test]
fn two_gpus() {
    let vg = start(&format!("{}{}", gpu("GPU-A", 24 * GIB, 20 * GIB, 80, ""), gpu("GPU-B", 24 * GIB, 4 * GIB, 20, "")));
    let (_, stats) = vg.get_json("/api/v1/system/stats");
    assert_eq!(stats["gpu_count"], json!(2));
    assert_eq!(stats["vram_used_mb"], json!((24 * GIB / MIB) as f64));
    assert_eq!(stats["vram_total_mb"], json!((48 * GIB / MIB) as f64));
    assert_eq!(stats["vram_percent"], json!(50.0));
    assert_eq!(stats["gpu_percent"], json!(50.0));
    let r = check(&vg, "?vram_required_gb=6");
    assert_eq!(r["gpu"]["index"], json!(1));
    assert_eq!(r["gpu"]["uuid"], json!("GPU-B"));
    assert_eq!(r["current_usage"]["vram_percent"], json!(16.7));
    assert_eq!(health(&vg)["system_info"]["vram_percent"], json!(83.3));
}

/// No GPU visible while gpu.enabled: VRAM fails closed; stats report zero GPUs.
#[test]
fn no_gpu_fails_closed() {
    let vg = start("init_error DRIVER_NOT_LOADED\n");
    let (_, stats) = vg.get_json("/api/v1/system/stats");
    assert_eq!(stats["gpu_count"], json!(0));
    assert_eq!(stats["vram_total_mb"], json!(0.0));
    assert_eq!(stats["gpu_percent"], json!(0.0));
    let r = check(&vg, "?vram_required_gb=1");
    assert_eq!(r["can_start_generation"], json!(false));
    assert_eq!(r["resource_status"]["vram_available"], json!(false));
    assert_eq!(r["gpu"], Value::Null);
    assert!(strings(&r["blocking_issues"])[0].starts_with("No GPU visible"), "{r}");
    let h = health(&vg);
    assert!(vram_issues(&h).iter().any(|i| i.starts_with("No GPU visible")), "{h}");
    let m = vg.metrics();
    // The refusal is counted under no_gpu.
    assert_eq!(
        m.value("vramguard_admission_decisions_total", &[("result", "refused"), ("reason", "no_gpu")]),
        Some(1.0),
        "{}",
        m.text
    );
}

/// CPU and RAM from the scripted host: at or above the threshold warns and refuses, under it
/// does not, and a failed host collector fails admission closed.
#[test]
fn host_thresholds_from_the_scripted_source() {
    let vg = start(&gpu("GPU-A", 16 * GIB, 2 * GIB, 35, ""));
    let wait_cpu = |percent: f64| {
        vg.wait_until("the new host figures", Duration::from_secs(10), || {
            health(&vg)["system_info"]["cpu_percent"] == json!(percent)
        })
    };
    // Exactly at the 90 % CPU threshold counts as over it.
    vg.set_host(Host { cpu: 0.90, ..CALM });
    wait_cpu(90.0);
    let h = health(&vg);
    assert_eq!(h["status"], json!("warning"), "{h}");
    assert_eq!(strings(&h["system_info"]["issues"]), vec!["High CPU usage"]);
    let r = check(&vg, "?vram_required_gb=1");
    assert_eq!(r["resource_status"]["cpu_available"], json!(false));
    assert_eq!(strings(&r["blocking_issues"]), vec!["CPU usage too high (90.0%)"]);
    // Just under it: admitted; RAM at 95 % used refuses instead.
    vg.set_host(Host { cpu: 0.899, available: 64 * GIB / 20, ..CALM });
    wait_cpu(89.9);
    let r = check(&vg, "?vram_required_gb=1");
    assert_eq!(r["resource_status"]["cpu_available"], json!(true));
    assert_eq!(r["resource_status"]["ram_available"], json!(false));
    assert_eq!(r["current_usage"]["ram_percent"], json!(95.0));
    assert_eq!(strings(&r["blocking_issues"]), vec!["RAM usage too high (95.0%)"]);
    assert_eq!(strings(&health(&vg)["system_info"]["issues"]), vec!["High RAM usage"]);
    // A host collector that fails: CPU and RAM unknown, admission fails closed.
    common::write_scenario(&vg.dir.path().join("host.txt"), "error sysinfo is broken\n");
    vg.wait_until("the host collector to fail", Duration::from_secs(10), || {
        health(&vg)["system_info"]["cpu_percent"].is_null()
    });
    let r = check(&vg, "?vram_required_gb=1");
    assert!(!r["can_start_generation"].as_bool().unwrap());
    assert!(strings(&r["blocking_issues"]).contains(&"CPU usage unknown: the host collector failed".to_owned()), "{r}");
    let h = health(&vg);
    assert!(strings(&h["system_info"]["issues"]).iter().any(|i| i.contains("sysinfo is broken")), "{h}");
    // Back to calm: healthy again.
    vg.set_host(CALM);
    wait_cpu(10.0);
    assert_eq!(health(&vg)["status"], json!("healthy"));
}

/// `gpu.enabled: false`: a GPU-less host on purpose does not block on VRAM.
#[test]
fn gpu_disabled_does_not_block_on_vram() {
    let vg = Vramguard::start("sample_interval: \"250ms\"\ngpu: { enabled: false }\n", None, &[]);
    vg.wait_ready();
    let r = check(&vg, "?vram_required_gb=1");
    assert_eq!(r["resource_status"]["vram_available"], json!(true));
    assert_eq!(r["gpu"], Value::Null);
}

/// A GPU lost mid-run: the survivor is chosen and health names the failing collector.
#[test]
fn lost_gpu() {
    let a = gpu("GPU-A", 24 * GIB, 12 * GIB, 50, "");
    let vg = start(&format!("{a}{}", gpu("GPU-B", 24 * GIB, GIB, 5, "")));
    assert_eq!(check(&vg, "?vram_required_gb=4")["gpu"]["index"], json!(1));
    vg.set_scenario(&format!("{a}{}", gpu("GPU-B", 24 * GIB, GIB, 5, "lost 1\n")));
    vg.wait_metrics("GPU B to be lost", Duration::from_secs(20), |m| m.value("vramguard_gpus", &[]) == Some(1.0));
    let r = check(&vg, "?vram_required_gb=4");
    assert_eq!(r["gpu"]["index"], json!(0));
    let h = health(&vg);
    assert!(vram_issues(&h).iter().any(|i| i.starts_with("Collector gpu failing") && i.contains("GPU 1")), "{h}");
}

/// Settings and constraints round-trip; /metrics follows the constraints; DELETE resets.
#[test]
fn settings_update_and_reset() {
    let vg = start(&gpu("GPU-A", 16 * GIB, 2 * GIB, 35, ""));
    let (status, body) = vg.post_json("/api/v1/system/optimization", &json!({"quantization": "int8"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], json!("Optimization settings updated successfully"));
    assert_eq!(
        body["settings"],
        json!({"quantization": "int8", "enable_offload": true, "vae_tile_size": 256, "vae_tiling": true, "max_vram_usage_gb": 80.0})
    );
    assert_eq!(body["current_vram_usage_gb"], json!(2.0));
    // int8 + offload + tile 256: the denoising phase with the transformer at 1 byte a parameter.
    assert_eq!(body["estimated_vram_need_gb"], json!(15.1));
    assert!(body["estimated_vram_savings_gb"].as_f64().unwrap() > 15.0);
    assert_eq!(vg.get_json("/api/v1/system/optimization").1["quantization"], json!("int8"));

    let (status, body) = vg.post_json("/api/v1/system/constraints", &json!({"vram_warning_threshold": 0.8}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], json!("Resource constraints updated successfully"));
    assert_eq!(body["updated_constraints"]["vram_warning_threshold"], json!(0.8));
    assert_eq!(body["updated_constraints"]["max_concurrent_generations"], json!(2));
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_threshold_ratio", &[("resource", "vram"), ("level", "warning")]), Some(0.8));
    assert_eq!(m.value("vramguard_health_status", &[("status", "critical")]), Some(0.0));

    let (status, body) = vg.delete("/api/v1/system/constraints");
    assert_eq!(status, 200);
    assert_eq!(body["updated_constraints"]["vram_warning_threshold"], json!(0.85));
    let (status, body) = vg.delete("/api/v1/system/optimization");
    assert_eq!(status, 200);
    assert_eq!(body["settings"]["quantization"], json!("bf16"));
    let (_, c) = vg.get_json("/api/v1/system/constraints");
    assert_eq!(c["constraints"]["vram_warning_threshold"], json!(0.85));
    assert!(c["description"]["vram_warning_threshold"].as_str().unwrap().contains("warning"));
}

/// Changes survive a clean restart.
#[test]
fn settings_survive_restart() {
    let vg = start(&gpu("GPU-A", 16 * GIB, 2 * GIB, 35, ""));
    assert_eq!(vg.post_json("/api/v1/system/optimization", &json!({"vae_tile_size": 384})).0, 200);
    assert_eq!(vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 5})).0, 200);
    let vg = vg.restart(false);
    vg.wait_ready();
    assert_eq!(vg.get_json("/api/v1/system/optimization").1["vae_tile_size"], json!(384));
    assert_eq!(vg.get_json("/api/v1/system/constraints").1["constraints"]["max_concurrent_generations"], json!(5));
    assert_eq!(vg.metrics().value("vramguard_max_concurrent_generations", &[]), Some(5.0));
}

/// An acknowledged write survives `kill -9` sent right after the 200, every time.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut vg = start(&gpu("GPU-A", 16 * GIB, 2 * GIB, 35, ""));
    for i in 0..8u32 {
        let limit = 1 + (i % 10);
        let warning = 0.5 + f64::from(i) * 0.01;
        let (status, _) = vg.post_json(
            "/api/v1/system/constraints",
            &json!({"max_concurrent_generations": limit, "vram_warning_threshold": warning}),
        );
        assert_eq!(status, 200);
        let tile = 128 + 32 * (i % 12);
        assert_eq!(vg.post_json("/api/v1/system/optimization", &json!({"vae_tile_size": tile})).0, 200);
        vg = vg.restart(true);
        let (_, c) = vg.get_json("/api/v1/system/constraints");
        assert_eq!(c["constraints"]["max_concurrent_generations"], json!(limit), "round {i}");
        assert_eq!(c["constraints"]["vram_warning_threshold"], json!(warning), "round {i}");
        assert_eq!(vg.get_json("/api/v1/system/optimization").1["vae_tile_size"], json!(tile), "round {i}");
    }
}

/// A corrupt state store stops vramguard at start with a message naming the file.
#[test]
fn corrupt_store_fails_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/vramguard.db"), vec![7u8; 4096]).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:0\"\nstate_dir: \"{}\"\ngpu: {{ enabled: false }}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN).arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("vramguard.db"), "{stderr}");
}

/// With a token: writes without it get 401 and change nothing; reads still answer.
#[test]
fn token_protects_writes() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = format!(
        "sample_interval: \"250ms\"\ngpu: {{ enabled: false }}\nauth: {{ token_file: \"{}\" }}\n",
        token_file.display()
    );
    let mut vg = Vramguard::start(&config, None, &[]);
    vg.wait_ready();
    let (status, body) = vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 7}));
    assert_eq!(status, 401);
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));
    vg.token = Some("wrong".to_owned());
    assert_eq!(vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 7})).0, 401);
    assert_eq!(vg.delete("/api/v1/system/optimization").0, 401);
    let (status, c) = vg.get_json("/api/v1/system/constraints");
    assert_eq!(status, 200);
    assert_eq!(c["constraints"]["max_concurrent_generations"], json!(2));
    assert_eq!(vg.get_json("/api/v1/system/health").0, 200);
    vg.token = Some("s3cret-token-0123456789".to_owned());
    assert_eq!(vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 7})).0, 200);
    // The scheme is case-insensitive.
    let r = vg
        .client()
        .post(vg.url("/api/v1/system/constraints"))
        .header("Authorization", "bearer s3cret-token-0123456789")
        .json(&json!({"max_concurrent_generations": 6}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!vg.logs().contains("s3cret-token"));
}

/// The OpenAPI document describes every JSON endpoint.
#[test]
fn openapi_document_lists_every_endpoint() {
    let vg = Vramguard::start("sample_interval: \"250ms\"\ngpu: { enabled: false }\n", None, &[]);
    let (status, doc) = vg.get_json("/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, methods) in [
        ("/api/v1/system/stats", &["get"][..]),
        ("/api/v1/system/optimization", &["get", "post", "delete"][..]),
        ("/api/v1/system/constraints", &["get", "post", "delete"][..]),
        ("/api/v1/system/health", &["get"][..]),
        ("/api/v1/system/resource-check", &["get"][..]),
    ] {
        for m in methods {
            assert!(doc["paths"][path][m].is_object(), "{path} {m} missing");
        }
    }
}

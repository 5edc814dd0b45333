//! SIGHUP reloads the configuration file without a restart: a changed default takes effect, an
//! invalid file keeps the running configuration, and the process never exits on the signal.

mod common;

use std::time::Duration;

use common::{Vramguard, signal};
use serde_json::json;

fn config_path(vg: &Vramguard) -> std::path::PathBuf {
    vg.dir.path().join("config.yaml")
}

/// Rewrites the config file: the harness's own lines plus `extra`.
fn rewrite(vg: &Vramguard, base: &str, extra: &str) {
    let tmp = vg.dir.path().join("config.yaml.new");
    std::fs::write(&tmp, format!("{base}{extra}")).unwrap();
    std::fs::rename(tmp, config_path(vg)).unwrap();
}

fn reload_ok(vg: &Vramguard) -> Option<f64> {
    vg.metrics().value("vramguard_config_last_reload_successful", &[])
}

#[test]
fn sighup_reloads_and_survives_a_bad_file() {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\" }}\n", common::fake_nvml());
    let scenario = format!("[gpu]\nmemory_total {}\nmemory_used {}\n", 24 * common::GIB, 14 * common::GIB);
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&scenario), &[]);
    vg.wait_ready();
    let base = std::fs::read_to_string(config_path(&vg)).unwrap();
    assert_eq!(reload_ok(&vg), Some(1.0));
    let started_at = vg.metrics().value("vramguard_config_last_reload_success_timestamp_seconds", &[]).unwrap();
    // 14 of 24 GiB is 58 %: healthy at the default 0.85 warning threshold.
    assert_eq!(vg.get_json("/api/v1/system/health").1["status"], json!("healthy"));

    // A lower default threshold takes effect without a restart.
    rewrite(&vg, &base, "constraints: { vram_warning_threshold: 0.5 }\nworkloads: { small: wan2.1-t2v-1.3b }\n");
    std::thread::sleep(Duration::from_millis(1100));
    signal(vg.pid(), "HUP");
    vg.wait_until("the new threshold", Duration::from_secs(10), || {
        vg.get_json("/api/v1/system/constraints").1["constraints"]["vram_warning_threshold"] == json!(0.5)
    });
    assert_eq!(vg.get_json("/api/v1/system/health").1["status"], json!("warning"));
    assert_eq!(vg.get_json("/api/v1/system/resource-check?workload=small").0, 200, "a new workload profile");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_config_last_reload_successful", &[]), Some(1.0));
    assert!(m.value("vramguard_config_last_reload_success_timestamp_seconds", &[]).unwrap() > started_at);
    assert_eq!(m.value("vramguard_threshold_ratio", &[("resource", "vram"), ("level", "warning")]), Some(0.5));

    // An invalid file: the running configuration stays, the gauge says so, the process lives.
    rewrite(&vg, &base, "constraints: { vram_warning_threshold: 85 }\n");
    signal(vg.pid(), "HUP");
    vg.wait_until("the failed reload", Duration::from_secs(10), || reload_ok(&vg) == Some(0.0));
    vg.wait_until("the logged reason", Duration::from_secs(5), || {
        vg.logs().contains("configuration reload failed") && vg.logs().contains("constraints.vram_warning_threshold")
    });
    assert_eq!(vg.get_json("/api/v1/system/constraints").1["constraints"]["vram_warning_threshold"], json!(0.5));

    // A key read only at start is named, and keeps its running value.
    rewrite(&vg, &base.replace("sample_interval: \"250ms\"", "sample_interval: \"2s\""), "");
    signal(vg.pid(), "HUP");
    vg.wait_until("the reload", Duration::from_secs(10), || reload_ok(&vg) == Some(1.0));
    vg.wait_until("the restart note", Duration::from_secs(5), || vg.logs().contains("keys=sample_interval"));
    // Back to the default threshold (the file no longer sets it).
    assert_eq!(vg.get_json("/api/v1/system/constraints").1["constraints"]["vram_warning_threshold"], json!(0.85));

    // A threshold set through the API is an override: a reload does not replace it.
    let (status, _) = vg.post_json("/api/v1/system/constraints", &json!({"vram_warning_threshold": 0.7}));
    assert_eq!(status, 200);
    rewrite(&vg, &base, "constraints: { vram_warning_threshold: 0.4 }\n");
    signal(vg.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(vg.get_json("/api/v1/system/constraints").1["constraints"]["vram_warning_threshold"], json!(0.7));

    // Never exits on SIGHUP, even a burst of them.
    for _ in 0..5 {
        signal(vg.pid(), "HUP");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vg.get("/-/healthy").0, 200);
}

//! `vramguard --demo`: two simulated GPUs through the embedded fake NVML, on a machine without a
//! GPU, exactly as a newcomer starts it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Metrics, Vramguard, require_tool};

fn start_demo() -> Vramguard {
    let mut cmd = Command::new(BIN);
    cmd.args(["--demo", "--listen", "127.0.0.1:0"]);
    // No FAKE_NVML_SCENARIO: the demo's library finds the scenario the demo writes beside it.
    let vg = Vramguard::spawn(cmd, tempfile::tempdir().unwrap(), Path::new(""));
    vg.wait_ready();
    vg
}

fn energy(m: &Metrics, gpu: &str) -> f64 {
    m.value("vramguard_gpu_energy_joules_total", &[("gpu", gpu)]).expect("the demo GPUs report energy")
}

/// Two GPUs whose figures change between two samples, a compute process on at least one of them
/// in the course of a minute's cycle, and admission answering about them.
#[test]
fn the_demo_shows_two_gpus_that_move() {
    let vg = start_demo();
    let first = vg.wait_metrics("two demo GPUs", Duration::from_secs(10), |m| {
        m.value("vramguard_gpus", &[]) == Some(2.0) && m.has("vramguard_gpu_energy_joules_total")
    });
    assert_eq!(first.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0));
    let names: Vec<String> = first.find("vramguard_gpu_info", &[]).iter().map(|s| s.labels["name"].clone()).collect();
    assert!(names.iter().all(|n| n.contains("(simulated)")), "{names:?}");
    // The simulation moves every second: the next samples differ.
    let later = vg.wait_metrics("the demo's energy to grow", Duration::from_secs(10), |m| {
        energy(m, "0") > energy(&first, "0") && energy(m, "1") > energy(&first, "1")
    });
    assert_ne!(
        first.find("vramguard_gpu_power_watts", &[]).iter().map(|s| s.value).collect::<Vec<_>>(),
        later.find("vramguard_gpu_power_watts", &[]).iter().map(|s| s.value).collect::<Vec<_>>()
    );
    // The demo offsets the two GPUs' cycles so that at any moment one of them runs a job.
    assert!(later.has("vramguard_gpu_process_memory_used_bytes"), "{}", later.text);
    let (status, answer) = vg.get_json("/api/v1/system/resource-check?vram_required_gb=1");
    assert_eq!(status, 200);
    assert!(answer["can_start_generation"].is_boolean(), "{answer}");
    let (_, stats) = vg.get_json("/api/v1/system/stats");
    assert_eq!(stats["gpus"].as_array().map(Vec::len), Some(2), "{stats}");
    assert!(stats["gpus"][0]["power_limit_w"].is_number(), "{stats}");
}

/// The demo's exposition passes `promtool check metrics` (promtool required when CI is set).
#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool on PATH (apt-get install prometheus)")]
fn the_demo_exposition_passes_promtool() {
    if !require_tool("promtool") {
        return;
    }
    let vg = start_demo();
    let m = vg.wait_metrics("two demo GPUs", Duration::from_secs(10), |m| m.value("vramguard_gpus", &[]) == Some(2.0));
    common::promtool_check_metrics(&m.text);
}

/// `--demo` takes no configuration file: the demo is the built-in defaults plus its GPUs.
#[test]
fn the_demo_refuses_a_config_file() {
    let out = Command::new(BIN).args(["--demo", "--config", "config.yaml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{out:?}");
}

/// An inherited `FAKE_NVML_SCENARIO` would make the demo's library read that file instead of the
/// demo's own: the demo refuses to start rather than show GPUs that do not move.
#[test]
fn the_demo_refuses_an_inherited_scenario() {
    let out = Command::new(BIN)
        .args(["--demo", "--listen", "127.0.0.1:0"])
        .env("FAKE_NVML_SCENARIO", "/tmp/elsewhere.txt")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FAKE_NVML_SCENARIO is set (/tmp/elsewhere.txt)"), "{stderr}");
}

/// The demo's private directory (library, scenario, state) is gone once vramguard has stopped.
#[test]
fn the_demo_removes_its_directory_on_exit() {
    let mut vg = start_demo();
    let dir = std::env::temp_dir().join(format!("vramguard-demo-{}", vg.pid()));
    assert!(dir.join("scenario.txt").exists(), "{}", dir.display());
    let (status, _) = vg.terminate(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

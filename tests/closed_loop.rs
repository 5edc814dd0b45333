//! Closed-loop admission against the real binary and the fake NVML: leases attributed to their
//! processes, reservations that last the lease's whole life, overruns, and estimates learned
//! from observed peaks.

mod common;

use std::time::Duration;

use common::{GIB, Vramguard};
use serde_json::{Value, json};

const LEASES: &str = "/api/v1/system/generations";
const OTHER: u32 = 7; // a process that is not part of any job

fn start(extra: &str) -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}{extra}"), Some(&scenario(&[])), &[]);
    vg.wait_ready();
    vg
}

/// A 24 GiB GPU where another process holds 2 GiB, plus `procs` (pid, GiB).
fn scenario(procs: &[(u32, f64)]) -> String {
    let mut used = 2.0 * GIB as f64;
    let mut lines = format!("process {OTHER} {}\n", 2 * GIB);
    for (pid, gb) in procs {
        let bytes = (gb * GIB as f64) as u64;
        used += bytes as f64;
        lines.push_str(&format!("process {pid} {bytes}\n"));
    }
    format!("[gpu]\nmemory_total {}\nmemory_used {}\n{lines}", 24 * GIB, used as u64)
}

/// Sets the scenario and waits until vramguard's stats show its used VRAM.
fn set(vg: &Vramguard, procs: &[(u32, f64)]) {
    vg.set_scenario(&scenario(procs));
    let want = (2.0 + procs.iter().map(|(_, gb)| gb).sum::<f64>()) * 1024.0;
    vg.wait_until("the new scenario", Duration::from_secs(10), || {
        vg.get_json("/api/v1/system/stats").1["vram_used_mb"].as_f64() == Some(want)
    });
}

fn take(vg: &Vramguard, body: Value) -> (u16, Value) {
    vg.post_json(LEASES, &body)
}

fn lease(vg: &Vramguard, id: &str) -> Value {
    let (_, list) = vg.get_json(LEASES);
    list["leases"].as_array().unwrap().iter().find(|l| l["id"] == json!(id)).cloned().expect("lease is listed")
}

/// The failure of wave 1, turned around: A holds 8 of its 12 GiB, so 4 GiB are still owed to
/// it and a second 12 GiB job is refused naming them; a 3.5 GiB job still fits.
#[test]
fn whole_life_reservation_with_pids() {
    let vg = start("");
    let (status, a) = take(&vg, json!({"vram_required_gb": 12, "pids": [4242], "client": "A"}));
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["pids"], json!([4242]));
    assert_eq!(a["vram_outstanding_gb"], json!(12.0));
    let (status, b) = take(&vg, json!({"vram_required_gb": 12}));
    assert_eq!(status, 409, "{b}");
    set(&vg, &[(4242, 8.0)]);
    let id = a["id"].as_str().unwrap();
    let listed = lease(&vg, id);
    assert_eq!(listed["vram_used_gb"], json!(8.0));
    assert_eq!(listed["vram_outstanding_gb"], json!(4.0));
    assert_eq!(listed["overrun"], json!(false));
    let (status, b) = take(&vg, json!({"vram_required_gb": 12}));
    assert_eq!(status, 409, "{b}");
    let issues = b["resource_check"]["blocking_issues"].to_string();
    assert!(
        issues.contains(
            "Not enough free VRAM for this generation (needs 12.0 GB; GPU 0 has 14.0 GB free, 4.0 GB of it promised to running generations)"
        ),
        "{issues}"
    );
    let (status, small) = take(&vg, json!({"vram_required_gb": 3.5}));
    assert_eq!(status, 201, "{small}");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpu_memory_outstanding_bytes", &[("gpu", "0")]), Some(7.5 * GIB as f64));
}

/// Without pids the GPU's growth since the grant is the lease's use, and the baseline survives
/// a restart.
#[test]
fn whole_life_reservation_by_growth_survives_restart() {
    let vg = start("");
    let (status, a) = take(&vg, json!({"vram_required_gb": 12}));
    assert_eq!(status, 201, "{a}");
    set(&vg, &[(4242, 8.0)]);
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(lease(&vg, &id)["vram_outstanding_gb"], json!(4.0));
    assert_eq!(lease(&vg, &id)["vram_used_gb"], Value::Null);
    assert_eq!(take(&vg, json!({"vram_required_gb": 12})).0, 409);
    let vg = vg.restart(true);
    vg.wait_ready();
    assert_eq!(lease(&vg, &id)["vram_outstanding_gb"], json!(4.0));
    let (status, b) = take(&vg, json!({"vram_required_gb": 12}));
    assert_eq!(status, 409, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("4.0 GB of it promised"), "{b}");
    assert_eq!(take(&vg, json!({"vram_required_gb": 3.5})).0, 201);
}

/// A job that grows past its reservation: flagged once, counted once, a health warning.
#[test]
fn overrun_is_flagged_counted_and_warned() {
    let vg = start("");
    let (status, a) = take(&vg, json!({"vram_required_gb": 12, "pids": [4242], "client": "video-worker"}));
    assert_eq!(status, 201, "{a}");
    set(&vg, &[(4242, 13.0)]);
    let id = a["id"].as_str().unwrap();
    vg.wait_until("the overrun", Duration::from_secs(10), || lease(&vg, id)["overrun"] == json!(true));
    assert_eq!(lease(&vg, id)["vram_peak_gb"], json!(13.0));
    let m = vg.wait_metrics("the overrun counter", Duration::from_secs(5), |m| {
        m.value("vramguard_lease_overruns_total", &[]) == Some(1.0)
    });
    assert_eq!(m.value("vramguard_gpu_memory_outstanding_bytes", &[("gpu", "0")]), Some(0.0));
    let (_, h) = vg.get_json("/api/v1/system/health");
    assert_eq!(h["status"], json!("warning"), "{h}");
    let warnings = h["system_info"]["warnings"].to_string();
    assert!(warnings.contains("Generation lease video-worker uses 13.0 GB, more than the 12.0 GB it reserved"), "{h}");
    assert!(h["message"].as_str().unwrap().starts_with("Warnings: "), "{h}");
    // Still one overrun after more samples.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(vg.metrics().value("vramguard_lease_overruns_total", &[]), Some(1.0));
    // Back under its reservation: the warning goes, the flag and the peak stay.
    set(&vg, &[(4242, 11.0)]);
    vg.wait_until("the warning to clear", Duration::from_secs(10), || {
        vg.get_json("/api/v1/system/health").1["status"] == json!("healthy")
    });
    assert_eq!(lease(&vg, id)["overrun"], json!(true));
    assert_eq!(lease(&vg, id)["vram_peak_gb"], json!(13.0));
    assert_eq!(vg.metrics().value("vramguard_lease_overruns_total", &[]), Some(1.0));
}

/// Three finished leases peaking at 9.5, 10 and 13 GiB: the next estimate is 13 × 1.1 = 14.3
/// GiB from observations; after DELETE /observations it is the model's again.
#[test]
fn observed_peaks_become_the_estimate() {
    let vg = start("");
    let (_, model) = vg.get_json("/api/v1/system/resource-check");
    assert_eq!(model["estimate_source"], json!("model"));
    assert_eq!(model["estimate_samples"], json!(0));
    let model_gb = model["vram_required_gb"].clone();
    for (pid, peak) in [(5001, 9.5), (5002, 10.0), (5003, 13.0)] {
        let (status, l) = take(&vg, json!({"vram_required_gb": 12, "pids": [pid]}));
        assert_eq!(status, 201, "{l}");
        let id = l["id"].as_str().unwrap().to_owned();
        set(&vg, &[(pid, peak)]);
        vg.wait_until("the peak", Duration::from_secs(10), || lease(&vg, &id)["vram_peak_gb"] == json!(peak));
        set(&vg, &[(pid, 1.0)]); // the peak is the highest seen, not the last reading
        assert_eq!(vg.delete(&format!("{LEASES}/{id}")).0, 204);
    }
    let (_, obs) = vg.get_json("/api/v1/system/observations");
    let peaks: Vec<f64> =
        obs["observations"].as_array().unwrap().iter().map(|o| o["peak_vram_gb"].as_f64().unwrap()).collect();
    assert_eq!(peaks, vec![13.0, 10.0, 9.5], "{obs}");
    assert_eq!(obs["observations"][0]["source"], json!("nvml"));
    assert_eq!(obs["observations"][0]["workload"], json!("default"));
    assert_eq!(obs["observations"][0]["quantization"], json!("bf16"));
    let (_, learned) = vg.get_json("/api/v1/system/resource-check");
    assert_eq!(learned["estimate_source"], json!("observed"), "{learned}");
    assert_eq!(learned["estimate_samples"], json!(3));
    assert_eq!(learned["vram_required_gb"], json!(14.3));
    let m = vg.metrics();
    let est = m.value("vramguard_estimate_bytes", &[("workload", "default"), ("source", "observed")]).unwrap();
    assert!((est - 14.3 * GIB as f64).abs() < 1.0, "{est}");
    // A client-reported peak is recorded with source "client".
    let (_, l) = take(&vg, json!({"vram_required_gb": 2}));
    assert_eq!(vg.delete(&format!("{LEASES}/{}?peak_vram_gb=7.25", l["id"].as_str().unwrap())).0, 204);
    let (_, obs) = vg.get_json("/api/v1/system/observations");
    assert_eq!(obs["observations"][0]["source"], json!("client"));
    assert_eq!(obs["observations"][0]["peak_vram_gb"], json!(7.25));
    assert_eq!(vg.delete("/api/v1/system/observations").0, 204);
    let (_, back) = vg.get_json("/api/v1/system/resource-check");
    assert_eq!(back["estimate_source"], json!("model"));
    assert_eq!(back["vram_required_gb"], model_gb);
}

/// Workload profiles are selected by name; an unknown name lists the known ones; bad pids and
/// peaks are 400s that change nothing.
#[test]
fn workloads_and_bad_input() {
    // Exactly 5 GiB: 256 bytes × 4,096 tokens (1024×1024 / 8 / 2, one frame) × width 5120; and
    // a built-in profile under a name of the operator's.
    let vg = start(
        "workloads:\n  small: { name: five, width: 1024, height: 1024, frames: 1, text_encoder: { params_billions: 0 }, transformer: { params_billions: 0, dim: 5120, patch: [1, 2, 2], activation_bytes: 256 }, vae: { params_billions: 0, temporal_stride: 4, spatial_stride: 8, decode_bytes_per_pixel: 0 }, overhead_gb: 0 }\n  a14b: wan2.2-t2v-a14b\n",
    );
    let (_, small) = vg.get_json("/api/v1/system/resource-check?workload=small");
    assert_eq!(small["vram_required_gb"], json!(5.0));
    let (_, a14b) = vg.get_json("/api/v1/system/resource-check?workload=a14b");
    let (_, builtin) = vg.get_json("/api/v1/system/resource-check?workload=wan2.2-t2v-a14b");
    assert_eq!(a14b["estimate"]["vram_required_gb"], builtin["estimate"]["vram_required_gb"]);
    let (status, bad) = vg.get_json("/api/v1/system/resource-check?workload=huge");
    assert_eq!(status, 400);
    assert!(bad["detail"].as_str().unwrap().contains("known profiles: default, a14b, small, wan2.2-ti2v-5b"), "{bad}");
    for body in [
        json!({"pids": []}),
        json!({"pids": [0]}),
        json!({"pids": (1..=65).collect::<Vec<u32>>()}),
        json!({"pids": [-1]}),
        json!({"workload": "huge"}),
    ] {
        let (status, r) = take(&vg, body.clone());
        assert_eq!(status, 400, "{body}: {r}");
    }
    let (status, l) = take(&vg, json!({"vram_required_gb": 1, "workload": "small"}));
    assert_eq!(status, 201, "{l}");
    let id = l["id"].as_str().unwrap();
    assert_eq!(vg.delete(&format!("{LEASES}/{id}?peak_vram_gb=0")).0, 400);
    assert_eq!(vg.delete(&format!("{LEASES}/{id}?peak=1")).0, 400);
    assert_eq!(lease(&vg, id)["id"], json!(id));
    // Heartbeat adds pids.
    let (status, hb) = vg.post_json(&format!("{LEASES}/{id}/heartbeat"), &json!({"pids": [11, 12]}));
    assert_eq!(status, 200, "{hb}");
    assert_eq!(hb["pids"], json!([11, 12]));
    let (_, obs) = vg.get_json("/api/v1/system/observations");
    assert_eq!(obs["observations"], json!([]));
}

//! Attribution where pipelines really run (issue #22), against the real binary and the fake
//! NVML: a job's VRAM held by a child of its listed pid, jobs whose VRAM shows under no pid
//! vramguard can match (as from a container it cannot see into), and how a job ended.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{GIB, Vramguard};
use serde_json::{Value, json};

const LEASES: &str = "/api/v1/system/generations";
const OTHER: u32 = 7; // a process that is not part of any job

fn start() -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&scenario(&[])), &[]);
    vg.wait_ready();
    vg
}

/// A 24 GiB GPU where another process holds 2 GiB, plus `procs` (pid, GiB).
fn scenario(procs: &[(u32, f64)]) -> String {
    let mut used = 2 * GIB;
    let mut lines = format!("process {OTHER} {}\n", 2 * GIB);
    for (pid, gb) in procs {
        let bytes = (gb * GIB as f64) as u64;
        used += bytes;
        lines.push_str(&format!("process {pid} {bytes}\n"));
    }
    format!(
        "[gpu]\nuuid GPU-aaaaaaaa-2222-3333-4444-555555555555\nmemory_total {}\nmemory_used {used}\n{lines}",
        24 * GIB
    )
}

/// Sets the scenario and waits until vramguard's stats show its used VRAM.
fn set(vg: &Vramguard, procs: &[(u32, f64)]) {
    vg.set_scenario(&scenario(procs));
    let want = (2.0 + procs.iter().map(|(_, gb)| gb).sum::<f64>()) * 1024.0;
    vg.wait_until("the new scenario", Duration::from_secs(10), || {
        vg.get_json("/api/v1/system/stats").1["vram_used_mb"].as_f64() == Some(want)
    });
}

fn lease(vg: &Vramguard, id: &str) -> Value {
    let (_, list) = vg.get_json(LEASES);
    list["leases"].as_array().unwrap().iter().find(|l| l["id"] == json!(id)).cloned().expect("lease is listed")
}

fn observations(vg: &Vramguard) -> Vec<Value> {
    vg.get_json("/api/v1/system/observations").1["observations"].as_array().unwrap().clone()
}

/// A shell (the job's listed pid) whose child `sleep` is what holds VRAM; the child's pid.
// The shell is handed to the caller, which kills and waits for it (`kill_tree`).
#[allow(clippy::zombie_processes)]
fn job_with_a_child() -> (Child, u32) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg("sleep 60 & echo $! > \"$0\"; wait")
        .arg(&pidfile)
        .stdout(Stdio::null())
        .spawn()
        .expect("sh");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse().ok()) {
            return (shell, pid);
        }
        if std::time::Instant::now() > deadline {
            let _ = shell.kill();
            let _ = shell.wait();
            panic!("the job's child did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_tree(mut shell: Child, child: u32) {
    common::signal(child, "KILL");
    let _ = shell.kill();
    let _ = shell.wait();
}

/// Must show 2: a child of a listed pid holding VRAM is attributed to the lease, and its peak is
/// what the lease's end learns.
#[test]
fn a_child_of_a_listed_pid_is_attributed_to_the_lease() {
    let vg = start();
    let (shell, child) = job_with_a_child();
    let (status, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 12, "pids": [shell.id()], "client": "A"}));
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["attribution"], json!("growth"), "nothing seen yet");
    let id = a["id"].as_str().unwrap().to_owned();
    set(&vg, &[(child, 8.0)]);
    let listed = lease(&vg, &id);
    assert_eq!(listed["attribution"], json!("pids"), "{listed}");
    assert_eq!(listed["vram_used_gb"], json!(8.0));
    assert_eq!(listed["vram_outstanding_gb"], json!(4.0));
    // Whole-life rule: 24 × 0.95 − 10 used − 4 owed = 8.8 GiB fit, 9 do not.
    let (status, b) = vg.post_json(LEASES, &json!({"vram_required_gb": 8.7, "gpu": 0}));
    assert_eq!(status, 201, "{b}");
    let (status, _) = vg.delete(&format!("{LEASES}/{}", b["id"].as_str().unwrap()));
    assert_eq!(status, 204);
    let (status, c) = vg.post_json(LEASES, &json!({"vram_required_gb": 9}));
    assert_eq!(status, 409, "{c}");
    let (status, _) = vg.delete(&format!("{LEASES}/{id}"));
    assert_eq!(status, 204);
    let seen = observations(&vg);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0]["peak_vram_gb"].clone(), seen[0]["source"].clone()), (json!(8.0), json!("nvml")));
    assert_eq!(seen[0]["outcome"], json!("ok"));
    kill_tree(shell, child);
}

/// Must show 3: three jobs whose VRAM shows under a pid vramguard cannot match (their lease
/// lists pid 1 of a pid namespace it cannot read) teach nothing, and none is owed twice.
#[test]
fn leases_whose_processes_never_hold_vram_teach_nothing_and_are_not_counted_twice() {
    let vg = start();
    for round in 0..3 {
        let body =
            json!({"vram_required_gb": 12, "pids": [1], "pid_namespace": 4_026_599_999u64, "client": "in a container"});
        let (status, a) = vg.post_json(LEASES, &body);
        assert_eq!(status, 201, "round {round}: {a}");
        let id = a["id"].as_str().unwrap().to_owned();
        // The job loads 8 GiB under its host pid, which is not pid 1 of that namespace.
        set(&vg, &[(900_000 + round, 8.0)]);
        let listed = lease(&vg, &id);
        assert_eq!(listed["attribution"], json!("growth"), "{listed}");
        // Counted by growth: 12 reserved − 8 grown = 4 owed, not 12 on top of the 8 in use.
        assert_eq!(listed["vram_outstanding_gb"], json!(4.0), "{listed}");
        let (status, fits) = vg.post_json(LEASES, &json!({"vram_required_gb": 3.5}));
        assert_eq!(status, 201, "2 + 8 + 4 + 3.5 fits in 22.8 GiB: {fits}");
        // A probe, not a job: released as cancelled, it teaches nothing either way.
        assert_eq!(vg.delete(&format!("{LEASES}/{}?outcome=cancelled", fits["id"].as_str().unwrap())).0, 204);
        assert_eq!(vg.delete(&format!("{LEASES}/{id}")).0, 204);
        set(&vg, &[]);
    }
    assert_eq!(observations(&vg), Vec::<Value>::new());
    let (_, check) = vg.get_json("/api/v1/system/resource-check");
    assert_eq!(check["estimate_source"], json!("model"), "{check}");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_observations_skipped_total", &[("reason", "not_seen")]), Some(3.0));
    assert_eq!(m.value("vramguard_generations_finished_total", &[("outcome", "ok")]), Some(3.0));
}

/// Must show 4: one `oom` end at 10 GiB lifts the estimate to at least 12.5 GiB at once; `error`
/// and `cancelled` record nothing; the counters follow.
#[test]
fn an_out_of_memory_end_raises_the_estimate_and_errors_teach_nothing() {
    let vg = start();
    let model = vg.get_json("/api/v1/system/resource-check").1["vram_required_gb"].as_f64().unwrap();
    // Jobs that reserved 8 GiB (a client peak above twice the reservation would need NVML evidence).
    for (outcome, peak) in [("error", 20.0), ("cancelled", 20.0), ("oom", 10.0)] {
        let (status, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 8}));
        assert_eq!(status, 201, "{a}");
        let path = format!("{LEASES}/{}?outcome={outcome}&peak_vram_gb={peak}", a["id"].as_str().unwrap());
        assert_eq!(vg.delete(&path).0, 204, "{outcome}");
        if outcome != "oom" {
            assert!(observations(&vg).is_empty(), "{outcome} taught something");
        }
    }
    let seen = observations(&vg);
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0]["outcome"].clone(), seen[0]["peak_vram_gb"].clone()), (json!("oom"), json!(10.0)));
    let (_, check) = vg.get_json("/api/v1/system/resource-check");
    assert_eq!(check["estimate_source"], json!("observed"), "one OOM is enough: {check}");
    let gb = check["vram_required_gb"].as_f64().unwrap();
    assert!(gb >= 12.5 && gb >= model, "estimate {gb} after an OOM at 10 GiB (model {model})");
    let m = vg.metrics();
    for (outcome, n) in [("oom", 1.0), ("error", 1.0), ("cancelled", 1.0), ("ok", 0.0)] {
        assert_eq!(m.value("vramguard_generations_finished_total", &[("outcome", outcome)]), Some(n), "{outcome}");
    }
    assert_eq!(m.value("vramguard_observations_skipped_total", &[("reason", "error")]), Some(1.0));
    assert_eq!(m.value("vramguard_observations_skipped_total", &[("reason", "cancelled")]), Some(1.0));
    // An outcome vramguard does not know is refused, naming the field, and releases nothing.
    let (_, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 4}));
    let (status, body) = vg.delete(&format!("{LEASES}/{}?outcome=expired", a["id"].as_str().unwrap()));
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().starts_with("outcome: "), "{body}");
    assert_eq!(vg.get_json(LEASES).1["active_generations"], json!(1));
}

/// Issue #27, item 1: a process counts for one live lease. A second lease (or a heartbeat of
/// another lease) that lists a pid a live lease lists is a 409 naming that lease, so the 8 GiB
/// the process holds is never counted twice (on main: B owed 0 and C over-admitted 7.2 GiB).
#[test]
fn a_pid_listed_by_a_live_lease_cannot_be_listed_again() {
    let vg = start();
    set(&vg, &[(4242, 8.0)]);
    let (status, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 12, "pids": [4242], "client": "A"}));
    assert_eq!(status, 201, "{a}");
    assert_eq!(lease(&vg, a["id"].as_str().unwrap())["vram_outstanding_gb"], json!(4.0));
    let (status, b) = vg.post_json(LEASES, &json!({"vram_required_gb": 8, "pids": [4242], "client": "B"}));
    assert_eq!(status, 409, "{b}");
    let detail = b["detail"].as_str().unwrap();
    assert!(detail.starts_with("pids: process 4242 is already listed by the live lease A"), "{detail}");
    let (status, c) = vg.post_json(LEASES, &json!({"vram_required_gb": 4, "client": "C"}));
    assert_eq!(status, 201, "{c}");
    let (status, hb) =
        vg.post_json(&format!("{LEASES}/{}/heartbeat", c["id"].as_str().unwrap()), &json!({"pids": [4242]}));
    assert_eq!(status, 409, "{hb}");
    assert_eq!(lease(&vg, c["id"].as_str().unwrap())["pids"], json!([]), "the refused heartbeat changed nothing");
    // Once A is released the pid is free to list.
    assert_eq!(vg.delete(&format!("{LEASES}/{}", a["id"].as_str().unwrap())).0, 204);
    let (status, b) = vg.post_json(LEASES, &json!({"vram_required_gb": 8, "pids": [4242], "client": "B"}));
    assert_eq!(status, 201, "{b}");
}

/// Issue #27, item 4: health names an overrunning lease by its client, else its owner, else its
/// GPU, never by its id (which the listing hides from the same callers).
#[test]
fn health_never_names_a_lease_by_its_id() {
    let vg = start();
    let (status, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 4, "pids": [4242]}));
    assert_eq!(status, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_owned();
    set(&vg, &[(4242, 6.0)]);
    vg.wait_until("the overrun", Duration::from_secs(10), || {
        vg.get_json("/api/v1/system/health").1.to_string().contains("more than the 4.0 GB it reserved")
    });
    let health = vg.get_json("/api/v1/system/health").1.to_string();
    assert!(!health.contains(&id) && !health.contains(&id[..8]), "{health}");
    assert!(health.contains("Generation lease (unnamed) on GPU 0 uses 6.0 GB"), "{health}");
    assert!(!vg.logs().contains(&id), "the id is in the log at info level");
}

/// Issue #27, items 2 and 7a: client peaks the evidence does not bear out are kept unused.
/// Three releases at 0.01 GiB leave the estimate at or above half the model and count three
/// `implausible`; a 1024 GiB peak leaves it within twice the model.
#[test]
fn client_peaks_cannot_talk_the_estimate_down_or_up() {
    let vg = start();
    let model = vg.get_json("/api/v1/system/resource-check").1["vram_required_gb"].as_f64().unwrap();
    for _ in 0..3 {
        let (status, a) = vg.post_json(LEASES, &json!({"client": "liar"}));
        assert_eq!(status, 201, "{a}");
        assert_eq!(vg.delete(&format!("{LEASES}/{}?peak_vram_gb=0.01", a["id"].as_str().unwrap())).0, 204);
    }
    let (_, check) = vg.get_json("/api/v1/system/resource-check");
    let gb = check["vram_required_gb"].as_f64().unwrap();
    assert!(gb >= 0.5 * model, "talked down to {gb} (model {model})");
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_observations_skipped_total", &[("reason", "implausible")]), Some(3.0));
    let seen = observations(&vg);
    assert_eq!(seen.len(), 3, "kept, for the record");
    assert!(seen.iter().all(|o| o["used"] == json!(false) && o["peak_vram_gb"] == json!(0.01)), "{seen:?}");
    // Upward: one release claiming 1024 GiB.
    let (_, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 4}));
    assert_eq!(vg.delete(&format!("{LEASES}/{}?peak_vram_gb=1024", a["id"].as_str().unwrap())).0, 204);
    let (_, check) = vg.get_json("/api/v1/system/resource-check");
    let gb = check["vram_required_gb"].as_f64().unwrap();
    assert!(gb <= 2.0 * model, "talked up to {gb} (model {model})");
    // A plausible figure still counts: what vramguard saw of the job, or more.
    set(&vg, &[(4242, 6.0)]);
    let (_, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 8, "pids": [4242]}));
    let id = a["id"].as_str().unwrap().to_owned();
    vg.wait_until("the job seen", Duration::from_secs(10), || lease(&vg, &id)["attribution"] == json!("pids"));
    assert_eq!(vg.delete(&format!("{LEASES}/{id}?peak_vram_gb=6.5")).0, 204);
    let seen = observations(&vg);
    assert_eq!((seen[0]["peak_vram_gb"].clone(), seen[0]["used"].clone()), (json!(6.5), json!(true)));
}

/// Issue #27, item 7d: observations are pruned to `learning.window` per key, and the listing
/// takes `limit`.
#[test]
fn observations_are_bounded_per_key_and_the_listing_takes_a_limit() {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let config = format!("sample_interval: \"250ms\"\n{gpu}learning: {{ window: 3, min_samples: 3 }}\n");
    let vg = Vramguard::start(&config, Some(&scenario(&[])), &[]);
    vg.wait_ready();
    for peak in [10.0, 10.5, 11.0, 11.5, 12.0, 12.5] {
        let (status, a) = vg.post_json(LEASES, &json!({"vram_required_gb": 8}));
        assert_eq!(status, 201, "{a}");
        assert_eq!(vg.delete(&format!("{LEASES}/{}?peak_vram_gb={peak}", a["id"].as_str().unwrap())).0, 204);
    }
    let peaks: Vec<f64> = observations(&vg).iter().map(|o| o["peak_vram_gb"].as_f64().unwrap()).collect();
    assert_eq!(peaks, vec![12.5, 12.0, 11.5], "the newest three of the key");
    let (status, two) = vg.get_json("/api/v1/system/observations?limit=2");
    assert_eq!(status, 200);
    assert_eq!(two["observations"].as_array().unwrap().len(), 2);
    let (status, bad) = vg.get_json("/api/v1/system/observations?limit=0");
    assert_eq!(status, 400, "{bad}");
    assert!(bad["detail"].as_str().unwrap().starts_with("limit: "), "{bad}");
}

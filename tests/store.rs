//! The state store knows itself, against the real binary: a start that finds the identity but
//! a deleted or empty database refuses, naming the file and `--reset-state`; the flag starts
//! fresh with the old files moved aside. While running, a deleted database and a full disk are
//! noticed on the next write: 503 with Retry-After and nothing changed, `vramguard_store_up 0`,
//! a health issue; a release still frees its slot (202, retried) and the store recovers once
//! writes succeed again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Vramguard;
use serde_json::{Value, json};

const LEASES: &str = "/api/v1/system/generations";
const CONFIG: &str = "sample_interval: \"250ms\"\ngpu: { enabled: false }\nhistory: { interval: 1h, retention: 7d }\n";

fn state(vg: &Vramguard) -> PathBuf {
    vg.dir.path().join("state")
}

/// Runs the binary on `config` and expects it to refuse to start; returns its stderr.
fn refused_start(config: &Path, args: &[&str]) -> String {
    let mut child = Command::new(common::BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vramguard started although its store should be refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn max_concurrent(vg: &Vramguard) -> Value {
    vg.get_json("/api/v1/system/constraints").1["constraints"]["max_concurrent_generations"].clone()
}

/// Deleted and zero-length databases are refused at start with one line naming the file, the
/// identity file and the flag; `--reset-state` moves them aside and starts fresh, and a second
/// `--reset-state` keeps the now healthy store.
#[test]
fn a_lost_database_refuses_to_start_until_reset() {
    let mut vg = Vramguard::start(CONFIG, None, &[]);
    vg.wait_ready();
    assert_eq!(vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 3})).0, 200);
    assert!(vg.terminate(Duration::from_secs(5)).0.unwrap().success());
    let dir = state(&vg);
    let config = vg.dir.path().join("config.yaml");
    assert!(dir.join("store-id").exists());

    for f in ["vramguard.db", "vramguard.db-wal", "vramguard.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let err = refused_start(&config, &[]);
    let line = err.lines().find(|l| l.starts_with("vramguard: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&format!("{}: is missing", dir.join("vramguard.db").display())), "{line}");
    assert!(line.contains("store-id") && line.contains("vramguard --reset-state"), "{line}");
    assert!(!dir.join("vramguard.db").exists(), "a refused start created a database");

    std::fs::write(dir.join("vramguard.db"), b"").unwrap();
    let err = refused_start(&config, &[]);
    assert!(err.contains("vramguard.db: is empty (0 bytes)") && err.contains("--reset-state"), "{err}");

    let mut cmd = Command::new(common::BIN);
    cmd.arg("--config").arg(&config).arg("--reset-state");
    let scenario = vg.scenario_path();
    let home = std::mem::replace(&mut vg.dir, tempfile::tempdir().unwrap());
    let fresh = Vramguard::spawn(cmd, home, &scenario);
    fresh.wait_ready();
    assert_eq!(max_concurrent(&fresh), json!(2), "a fresh store has the config's values");
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("reset-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::metadata(aside[0].join("vramguard.db")).unwrap().len(), 0, "the old file is kept as it was");
    assert!(aside[0].join("store-id").exists());
    assert!(fresh.logs().contains("moved aside"), "{}", fresh.logs());

    // The flag left on the command line does not wipe a store that opens.
    assert_eq!(fresh.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 4})).0, 200);
    let again = fresh.restart(false);
    again.wait_ready();
    assert_eq!(max_concurrent(&again), json!(4));
    assert!(again.logs().contains("opens normally; kept it"), "{}", again.logs());
}

fn store_up(vg: &Vramguard) -> f64 {
    vg.metrics().value("vramguard_store_up", &[]).expect("vramguard_store_up is exported")
}

fn health_issues(vg: &Vramguard) -> (String, Vec<String>) {
    let (_, h) = vg.get_json("/api/v1/system/health");
    let issues =
        h["system_info"]["issues"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    (h["status"].as_str().unwrap().to_owned(), issues)
}

/// `(status, Retry-After, body)` of a request.
fn send(rb: reqwest::blocking::RequestBuilder) -> (u16, Option<String>, Value) {
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.json().unwrap_or(Value::Null))
}

/// The database deleted while running: every write after it answers 503 with Retry-After and
/// changes nothing, the store is reported down with the reason, and a release still frees its
/// slot (202, not yet durable).
#[test]
fn a_database_deleted_while_running_fails_writes_with_503() {
    let vg = Vramguard::start(CONFIG, None, &[]);
    vg.wait_ready();
    let (status, lease) = vg.post_json(LEASES, &json!({"client": "w1"}));
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().unwrap().to_owned();
    assert_eq!(store_up(&vg), 1.0);
    std::fs::remove_file(state(&vg).join("vramguard.db")).unwrap();

    let c = vg.client();
    let writes = [
        c.post(vg.url("/api/v1/system/constraints")).json(&json!({"max_concurrent_generations": 5})),
        c.delete(vg.url("/api/v1/system/optimization")),
        c.post(vg.url(LEASES)).json(&json!({"client": "w2"})),
        c.post(vg.url(&format!("{LEASES}/{id}/heartbeat"))),
        c.post(vg.url("/api/v1/system/stats/save")),
        c.delete(vg.url("/api/v1/system/observations")),
    ];
    for rb in writes {
        let (status, retry, body) = send(rb);
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("5"));
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("nothing was changed") && detail.contains("was deleted or moved"), "{detail}");
    }
    assert_eq!(max_concurrent(&vg), json!(2));
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_store_up", &[]), Some(0.0));
    assert!(m.value("vramguard_store_write_errors_total", &[]).unwrap() >= 6.0, "{}", m.text);
    assert_eq!(m.value("vramguard_active_generations", &[]), Some(1.0), "a failed heartbeat ends nothing");
    let (status, issues) = health_issues(&vg);
    assert_eq!(status, "critical");
    assert!(issues.iter().any(|i| i.starts_with("State store failing:") && i.contains("vramguard.db")), "{issues:?}");

    let (status, _, body) = send(c.delete(vg.url(&format!("{LEASES}/{id}"))));
    assert_eq!(status, 202, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("not yet durable"), "{body}");
    assert_eq!(vg.get_json(LEASES).1["active_generations"], json!(0));
    assert!(vg.logs().contains("state store does not take writes"), "{}", vg.logs());
    assert_eq!(store_up(&vg), 0.0, "a deleted database does not come back by itself");
}

/// How to enter a private mount namespace where a tmpfs can be mounted: as root directly, else
/// through a user namespace. `None` when neither works; with `CI` set, one must.
fn mount_namespace() -> Option<&'static [&'static str]> {
    const WAYS: [&[&str]; 2] = [&["--mount"], &["--user", "--map-root-user", "--mount"]];
    let probe = tempfile::tempdir().unwrap();
    let works = |way: &[&str]| {
        Command::new("unshare")
            .args(way)
            .args(["sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$0\""])
            .arg(probe.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let found = WAYS.into_iter().find(|w| works(w));
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "the disk-full test needs a small tmpfs when CI is set: unshare --mount failed, as root and in a user namespace"
            );
        }
        eprintln!("SKIPPED: cannot mount a tmpfs in a private mount namespace (unshare); the disk-full test needs one");
    }
    found
}

/// Starts vramguard in its own mount namespace with `state_dir` on a 2 MiB tmpfs. A watcher in
/// the same namespace fills the tmpfs when `fill` appears in the test directory and empties it
/// when `free` appears, answering with `filled` and `freed`.
fn start_on_tmpfs(namespace: &[&str]) -> Vramguard {
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let host = home.path().join("host.txt");
    common::write_scenario(&host, &common::host_text(common::CALM));
    let config = home.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:0\"\nstate_dir: \"{}\"\nhost: {{ scripted_file: \"{}\" }}\n{CONFIG}",
            state.display(),
            host.display()
        ),
    )
    .unwrap();
    let script = r#"
        mount -t tmpfs -o size=2m tmpfs "$STATE" || exit 97
        (
            while kill -0 $$ 2>/dev/null; do
                if [ -e "$HOME_DIR/fill" ]; then
                    rm -f "$HOME_DIR/fill"
                    dd if=/dev/zero of="$STATE/filler" bs=64k 2>/dev/null
                    touch "$HOME_DIR/filled"
                fi
                if [ -e "$HOME_DIR/free" ]; then
                    rm -f "$HOME_DIR/free" "$STATE/filler"
                    touch "$HOME_DIR/freed"
                fi
                sleep 0.05
            done
        ) &
        exec "$BIN" --config "$CONFIG"
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args(namespace)
        .args(["sh", "-c", script])
        .env("STATE", &state)
        .env("HOME_DIR", home.path())
        .env("BIN", common::BIN)
        .env("CONFIG", &config);
    let scenario = home.path().join("scenario.txt");
    Vramguard::spawn(cmd, home, &scenario)
}

/// Asks the watcher in the namespace to `what` (fill, free) and waits for its answer.
fn ask_watcher(vg: &Vramguard, what: &str, answer: &str) {
    let done = vg.dir.path().join(answer);
    let _ = std::fs::remove_file(&done);
    std::fs::write(vg.dir.path().join(what), b"").unwrap();
    vg.wait_until(answer, Duration::from_secs(20), || done.exists());
}

/// A full disk (a 2 MiB tmpfs filled up): the release of the only lease still frees its slot
/// (202, not yet durable) while a new lease cannot be recorded (503); once space is free again
/// the retried release goes through, the store is up, and the new lease is admitted.
#[test]
#[cfg_attr(
    not(has_mount_namespace),
    ignore = "needs a private mount namespace with a tmpfs (unshare --mount, as root or in a user namespace)"
)]
fn a_full_disk_still_frees_released_slots() {
    let Some(namespace) = mount_namespace() else { return };
    let vg = start_on_tmpfs(namespace);
    vg.wait_ready();
    assert_eq!(vg.post_json("/api/v1/system/constraints", &json!({"max_concurrent_generations": 1})).0, 200);
    let (status, lease) = vg.post_json(LEASES, &json!({"client": "w1", "ttl_seconds": 3600}));
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().unwrap().to_owned();
    assert_eq!(vg.post_json(LEASES, &json!({"client": "w2"})).0, 409, "the only slot is taken");

    ask_watcher(&vg, "fill", "filled");
    let (status, body) = vg.delete(&format!("{LEASES}/{id}"));
    assert_eq!(status, 202, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("its slot is free") && detail.contains("not yet durable"), "{detail}");
    assert!(detail.contains("full"), "the reason is named: {detail}");
    assert_eq!(vg.get_json(LEASES).1["active_generations"], json!(0));
    let (_, check) = vg.get_json("/api/v1/system/resource-check");
    assert_eq!(check["resource_status"]["concurrency_available"], json!(true), "{check}");
    let (status, retry, body) = send(vg.client().post(vg.url(LEASES)).json(&json!({"client": "w2"})));
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
    assert_eq!(store_up(&vg), 0.0);
    let (_, issues) = health_issues(&vg);
    assert!(issues.iter().any(|i| i.contains("State store failing") && i.contains("full")), "{issues:?}");

    ask_watcher(&vg, "free", "freed");
    vg.wait_metrics("the retried release", Duration::from_secs(10), |m| {
        m.value("vramguard_store_up", &[]) == Some(1.0)
    });
    vg.wait_until("the recovery logged", Duration::from_secs(5), || {
        vg.logs().contains("state store takes writes again")
    });
    let (status, lease) = vg.post_json(LEASES, &json!({"client": "w2"}));
    assert_eq!(status, 201, "{lease}");
    assert!(health_issues(&vg).1.iter().all(|i| !i.contains("State store")));
}

/// A request waiting in the admission queue whose turn comes while the store does not take
/// writes is told at once (503), not left to its deadline.
#[test]
fn a_waiting_request_whose_grant_cannot_be_recorded_gets_503() {
    let vg = Vramguard::start(&format!("{CONFIG}constraints: {{ max_concurrent_generations: 1 }}\n"), None, &[]);
    vg.wait_ready();
    let (status, lease) = vg.post_json(LEASES, &json!({"client": "w1"}));
    assert_eq!(status, 201, "{lease}");
    let url = vg.url(LEASES);
    let waiter = std::thread::spawn(move || {
        let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        send(c.post(url).json(&json!({"client": "w2", "wait_seconds": 30})))
    });
    vg.wait_until("w2 waiting", Duration::from_secs(10), || {
        vg.get_json(&format!("{LEASES}/queue")).1["waiting"].as_array().is_some_and(|w| w.len() == 1)
    });
    std::fs::remove_file(state(&vg).join("vramguard.db")).unwrap();
    let asked = Instant::now();
    let (status, _, body) = send(vg.client().delete(vg.url(&format!("{LEASES}/{}", lease["id"].as_str().unwrap()))));
    assert_eq!(status, 202, "{body}");
    let (status, retry, body) = waiter.join().unwrap();
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(10), "answered at its turn, not its deadline");
    assert_eq!(vg.get_json(LEASES).1["active_generations"], json!(0));
}

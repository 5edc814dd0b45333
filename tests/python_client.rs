//! The Python client (`clients/python`) against the real binary and the fake NVML: a venv under
//! `target/tmp` with the client and its dev tools, then `ruff format --check`, `ruff check`,
//! `mypy --strict` and pytest. Needs python3 with venv and PyPI: without venv a plain `cargo test`
//! lists it as ignored with why (build.rs); without PyPI it prints a `SKIPPED:` line. With `CI`
//! set it runs and fails instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(what: &str, cmd: &mut Command) -> bool {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("== {what}\n{text}");
    if !out.status.success() {
        eprintln!("{what} failed:\n{text}");
    }
    out.status.success()
}

/// The venv, made once for every test here (they run in parallel).
fn venv(client: &Path) -> Option<PathBuf> {
    static VENV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    VENV.get_or_init(|| make_venv(client)).clone()
}

/// A venv with the client installed (editable) and its dev tools; reused while pyproject.toml
/// is unchanged.
fn make_venv(client: &Path) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-client-venv");
    let stamp = dir.join("pyproject.stamp");
    let pyproject = std::fs::read_to_string(client.join("pyproject.toml")).expect("pyproject.toml");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(pyproject.as_str()) {
        return Some(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !run("python3 -m venv", Command::new("python3").arg("-m").arg("venv").arg(&dir)) {
        return None;
    }
    let pip = dir.join("bin/pip");
    let spec = format!("{}[dev]", client.display());
    if !run("pip install", Command::new(&pip).args(["install", "-q", "--disable-pip-version-check", "-e", &spec])) {
        return None;
    }
    std::fs::write(&stamp, pyproject).expect("write stamp");
    Some(dir)
}

#[test]
#[cfg_attr(not(has_python_venv), ignore = "needs python3 with venv and ensurepip (apt-get install python3-venv)")]
fn python_client_passes_its_checks_and_tests() {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        assert!(!ci, "{why} (required when CI is set)");
        eprintln!("SKIPPED: python client tests: {why}");
    };
    let has_venv =
        Command::new("python3").args(["-c", "import venv, ensurepip"]).output().is_ok_and(|o| o.status.success());
    if !has_venv {
        return skip("python3 with venv and ensurepip not found (apt-get install python3-venv)");
    }
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let Some(venv) = venv(&client) else {
        return skip("could not create the venv or install the client and its dev tools from PyPI");
    };
    let bin = |tool: &str| venv.join("bin").join(tool);
    let in_client = |tool: &str| {
        let mut c = Command::new(bin(tool));
        c.current_dir(&client);
        c
    };
    assert!(run("ruff format --check", in_client("ruff").args(["format", "--check", "."])));
    assert!(run("ruff check", in_client("ruff").args(["check", "."])));
    assert!(run("mypy --strict", in_client("mypy").args(["--strict", "src"])));
    assert!(run(
        "pytest",
        in_client("pytest")
            .args(["-q", "-p", "no:cacheprovider", "tests"])
            .env("VRAMGUARD_BIN", common::BIN)
            .env("VRAMGUARD_FAKE_NVML", common::fake_nvml()),
    ));
}

/// Issue #22, must show 1: a job in its own pid namespace (as in any container) runs the Python
/// client, which sends `pids: [1]` and its namespace; NVML reports its host pid. The lease is
/// attributed by its pids, a second lease fits exactly as the whole-life rule says, and the
/// release records the peak its host pid held.
#[test]
#[cfg_attr(
    not(all(has_python_venv, has_pid_namespace)),
    ignore = "needs python3 with venv, and `unshare --pid --fork --mount-proc` (root)"
)]
fn a_job_in_its_own_pid_namespace_is_attributed_by_its_pids() {
    let ci = std::env::var_os("CI").is_some();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let Some(venv) = venv(&client) else {
        assert!(!ci, "could not create the venv (required when CI is set)");
        return eprintln!("SKIPPED: could not create the venv or install the client from PyPI");
    };
    let uuid = "GPU-aaaaaaaa-2222-3333-4444-555555555555";
    let scenario = |extra: &str, used: u64| {
        format!(
            "[gpu]\nuuid {uuid}\nmemory_total {}\nmemory_used {used}\nprocess 7 {}\n{extra}",
            24 * common::GIB,
            2 * common::GIB
        )
    };
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = common::Vramguard::start(
        &format!("sample_interval: \"250ms\"\n{gpu}"),
        Some(&scenario("", 2 * common::GIB)),
        &[],
    );
    vg.wait_ready();
    let dir = tempfile::tempdir().unwrap();
    let (ready, done) = (dir.path().join("ready"), dir.path().join("done"));
    let script = format!(
        "import os, pathlib, time\n\
         from vramguard_client import Vramguard\n\
         with Vramguard('http://{addr}').generation(vram_gb=12, client='container') as lease:\n\
         \x20   pathlib.Path('{ready}').write_text(f'{{os.getpid()}} {{lease.id}}\\n')\n\
         \x20   while not pathlib.Path('{done}').exists():\n\
         \x20       time.sleep(0.05)\n",
        addr = vg.addr,
        ready = ready.display(),
        done = done.display()
    );
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(venv.join("bin/python"))
        .args(["-c", &script])
        .spawn()
        .expect("unshare");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let said = loop {
        if let Ok(t) = std::fs::read_to_string(&ready)
            && t.ends_with('\n')
        {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "the job in the namespace did not take its lease");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (inner_pid, id) = said.trim().split_once(' ').unwrap();
    assert_eq!(inner_pid, "1", "inside its namespace the job is pid 1");
    // Its host pid: the child unshare forked.
    let children = format!("/proc/{0}/task/{0}/children", unshare.id());
    let host_pid: u32 = std::fs::read_to_string(children).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    vg.set_scenario(&scenario(&format!("process {host_pid} {}\n", 8 * common::GIB), 10 * common::GIB));
    let listed = || {
        let (_, list) = vg.get_json("/api/v1/system/generations");
        list["leases"].as_array().unwrap().iter().find(|l| l["id"] == serde_json::json!(id)).cloned().unwrap()
    };
    vg.wait_until("the job's host pid attributed", std::time::Duration::from_secs(10), || {
        listed()["attribution"] == serde_json::json!("pids")
    });
    let lease = listed();
    assert_eq!(lease["pids"], serde_json::json!([1]));
    assert!(lease["pid_namespace"].as_u64().is_some(), "{lease}");
    assert_eq!(lease["vram_used_gb"], serde_json::json!(8.0), "{lease}");
    assert_eq!(lease["vram_outstanding_gb"], serde_json::json!(4.0), "{lease}");
    // Whole life: 24 × 0.95 − (2 + 8) used − 4 owed = 8.8 GiB left.
    let (status, fits) = vg.post_json("/api/v1/system/generations", &serde_json::json!({"vram_required_gb": 8.7}));
    assert_eq!(status, 201, "{fits}");
    let probe = format!("/api/v1/system/generations/{}?outcome=cancelled", fits["id"].as_str().unwrap());
    assert_eq!(vg.delete(&probe).0, 204);
    let (status, over) = vg.post_json("/api/v1/system/generations", &serde_json::json!({"vram_required_gb": 9}));
    assert_eq!(status, 409, "{over}");
    std::fs::write(&done, "").unwrap();
    assert!(unshare.wait().unwrap().success());
    let (_, seen) = vg.get_json("/api/v1/system/observations");
    let seen = seen["observations"].as_array().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["peak_vram_gb"], serde_json::json!(8.0));
    assert_eq!(seen[0]["source"], serde_json::json!("nvml"));
}

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

/// A venv with the client installed (editable) and its dev tools; reused while pyproject.toml
/// is unchanged.
fn venv(client: &Path) -> Option<PathBuf> {
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

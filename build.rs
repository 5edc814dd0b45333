//! Build script: records the git revision for `vramguard_build_info` and compiles the fake NVML
//! library (tests/fake-nvml) that the integration tests load in place of libnvidia-ml.so and
//! that `vramguard --demo` embeds.
//!
//! The fake is built here rather than by the tests so that plain `cargo test` has it ready and
//! its path is known at compile time (`VRAMGUARD_FAKE_NVML`). It needs only the C compiler that
//! Rust already uses as its linker on Linux; if that fails the build goes on and the tests that
//! need the fake say why they cannot run.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=tests/fake-nvml/fake_nvml.c");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-env-changed=CC");

    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=VRAMGUARD_REVISION={revision}");

    detect_test_tools();

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let lib = out.join("libnvidia-ml-fake.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-O2", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg("tests/fake-nvml/fake_nvml.c")
        .args(["-lpthread", "-ldl"])
        .status();
    // `vramguard --demo` embeds the same library (include_bytes! of VRAMGUARD_DEMO_NVML); without
    // a C compiler it embeds an empty file and `--demo` says the build has no demo.
    let demo = out.join("demo-nvml.so");
    match status {
        Ok(s) if s.success() => {
            println!("cargo:rustc-env=VRAMGUARD_FAKE_NVML={}", lib.display());
            std::fs::copy(&lib, &demo).expect("copy the fake NVML for the demo");
        }
        other => {
            println!("cargo:warning=could not build the fake NVML library with {cc}: {other:?}");
            println!("cargo:rustc-env=VRAMGUARD_FAKE_NVML=");
            std::fs::write(&demo, b"").expect("write the empty demo library");
        }
    }
    println!("cargo:rustc-env=VRAMGUARD_DEMO_NVML={}", demo.display());
}

/// The outside programs some integration tests drive, each as the `cfg` the tests read: a test
/// whose program is missing is marked `#[ignore = "needs ..."]` through
/// `cfg_attr(not(has_...))`, so a plain `cargo test` lists it as ignored, with why, and counts it
/// in its summary, instead of passing without having run. `.ci/run` passes `--include-ignored`:
/// there every test runs, and one whose program is missing fails.
///
/// Installing a program changes a directory on PATH, which reruns this script (and so flips the
/// cfg) on the next build.
fn detect_test_tools() {
    println!("cargo:rerun-if-env-changed=PATH");
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).filter(|d| d.is_dir()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let on_path = |tool: &str| std::env::split_paths(&path).any(|d| d.join(tool).is_file());
    let python_venv =
        || Command::new("python3").args(["-c", "import venv, ensurepip"]).output().is_ok_and(|o| o.status.success());
    // tests/store.rs fills a 2 MiB tmpfs in a private mount namespace: as root, or through a
    // user namespace.
    let mount_namespace = || {
        let probe = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("tmpfs-probe");
        let _ = std::fs::create_dir_all(&probe);
        [&["--mount"][..], &["--user", "--map-root-user", "--mount"][..]].iter().any(|way| {
            Command::new("unshare")
                .args(*way)
                .args(["sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$0\""])
                .arg(&probe)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    };
    let tools: [(&str, bool); 8] = [
        ("has_promtool", on_path("promtool")),
        ("has_amtool", on_path("amtool")),
        ("has_prometheus", on_path("prometheus")),
        ("has_chromium", on_path("chromium") && on_path("chromedriver")),
        ("has_redis", on_path("redis-server") && on_path("redis-cli")),
        ("has_python_venv", python_venv()),
        ("has_mount_namespace", mount_namespace()),
        // tests/python_client.rs runs a job in its own pid namespace, as a container does.
        (
            "has_pid_namespace",
            Command::new("unshare")
                .args(["--pid", "--fork", "--mount-proc", "true"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        ),
    ];
    for (cfg, found) in tools {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if found {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

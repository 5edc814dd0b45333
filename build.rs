//! Build script: records the git revision for `vramguard_build_info` and compiles the fake NVML
//! library (tests/fake-nvml) that the integration tests load in place of libnvidia-ml.so.
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

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let lib = out.join("libnvidia-ml-fake.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-O2", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg("tests/fake-nvml/fake_nvml.c")
        .arg("-lpthread")
        .status();
    match status {
        Ok(s) if s.success() => {
            println!("cargo:rustc-env=VRAMGUARD_FAKE_NVML={}", lib.display());
        }
        other => {
            println!("cargo:warning=could not build the fake NVML library with {cc}: {other:?}");
            println!("cargo:rustc-env=VRAMGUARD_FAKE_NVML=");
        }
    }
}

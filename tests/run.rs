//! `vramguard run -- CMD` against the real binary and the fake NVML (issue #22): the
//! environment it gives the command, the command's processes attributed to the lease, exit
//! statuses passed through, refusals, out-of-memory on stderr, and forwarded signals.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, GIB, Vramguard};
use serde_json::{Value, json};

const UUID: &str = "GPU-aaaaaaaa-2222-3333-4444-555555555555";

fn scenario(procs: &[(u32, u64)]) -> String {
    let used = 2 * GIB + procs.iter().map(|(_, b)| b).sum::<u64>();
    let lines: String = procs.iter().map(|(p, b)| format!("process {p} {b}\n")).collect();
    format!("[gpu]\nuuid {UUID}\nmemory_total {}\nmemory_used {used}\nprocess 7 {}\n{lines}", 24 * GIB, 2 * GIB)
}

fn start() -> Vramguard {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&scenario(&[])), &[]);
    vg.wait_ready();
    vg
}

/// `vramguard run --url … ARGS -- sh -c SCRIPT`, with its stderr captured.
fn run(vg: &Vramguard, args: &[&str], script: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run").arg("--url").arg(format!("http://{}", vg.addr)).args(args).args(["--", "sh", "-c", script]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.output().expect("vramguard run")
}

fn finished(vg: &Vramguard, outcome: &str) -> f64 {
    vg.metrics().value("vramguard_generations_finished_total", &[("outcome", outcome)]).unwrap()
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(Instant::now() < deadline, "{} was not written", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_command_gets_the_leases_gpu_by_uuid_and_its_exit_status_passes_through() {
    let vg = start();
    let out = output(run(
        &vg,
        &["--vram-gb", "4", "--client", "render"],
        "echo \"$CUDA_VISIBLE_DEVICES|$VRAMGUARD_LEASE_ID|$VRAMGUARD_GPU_INDEX|$VRAMGUARD_URL\"; exit 7",
    ));
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let env = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = env.trim().split('|').collect();
    assert_eq!(parts[0], UUID);
    assert_eq!(parts[1].len(), 32, "{env}");
    assert_eq!(parts[2], "0");
    assert_eq!(parts[3], format!("http://{}", vg.addr));
    assert_eq!(finished(&vg, "error"), 1.0);
    assert_eq!(vg.get_json("/api/v1/system/generations").1["active_generations"], json!(0), "released");
    // Killed by SIGTERM: 128 + 15, and the job was cancelled.
    let out = output(run(&vg, &["--vram-gb", "4"], "kill -TERM $$"));
    assert_eq!(out.status.code(), Some(143));
    assert_eq!(finished(&vg, "cancelled"), 1.0);
}

#[test]
fn a_refusal_exits_75_with_the_blocking_issues_and_an_unreachable_vramguard_69() {
    let vg = start();
    let out = output(run(&vg, &["--vram-gb", "30", "--gpu", "0"], "echo ran"));
    assert_eq!(out.status.code(), Some(75));
    assert!(out.stdout.is_empty(), "the command must not run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Not enough free VRAM for this generation"), "{err}");
    let mut nobody = Command::new(BIN);
    nobody.args(["run", "--url", "http://127.0.0.1:9", "--vram-gb", "1", "--", "true"]);
    let unreachable = output(nobody);
    assert_eq!(unreachable.status.code(), Some(69), "{}", String::from_utf8_lossy(&unreachable.stderr));
}

#[test]
fn an_out_of_memory_line_on_stderr_passes_through_and_ends_as_oom() {
    let vg = start();
    let line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB";
    let out = output(run(&vg, &["--vram-gb", "4", "--client", "rank0"], &format!("echo '{line}' >&2; exit 1")));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(line), "stderr is passed through unchanged");
    assert_eq!(finished(&vg, "oom"), 1.0);
}

/// The command's child holds the VRAM: it is the lease's; SIGINT to `vramguard run` reaches the
/// command, which exits 3; the lease is released with what was seen.
#[test]
fn the_commands_tree_is_attributed_and_sigint_is_forwarded() {
    let vg = start();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!(
        "sleep 60 & echo $! > {p}; trap 'kill $!; echo interrupted >&2; exit 3' INT; while :; do sleep 0.1; done",
        p = pidfile.display()
    );
    let mut child = run(&vg, &["--vram-gb", "12", "--ttl", "30s"], &script).spawn().unwrap();
    let worker: u32 = wait_for_file(&pidfile).trim().parse().unwrap();
    vg.set_scenario(&scenario(&[(worker, 8 * GIB)]));
    let first_lease = || vg.get_json("/api/v1/system/generations").1["leases"][0].clone();
    vg.wait_until("the child's VRAM attributed", Duration::from_secs(10), || {
        first_lease()["attribution"] == json!("pids")
    });
    let lease: Value = first_lease();
    assert_eq!(lease["vram_used_gb"], json!(8.0), "{lease}");
    assert_eq!(lease["vram_outstanding_gb"], json!(4.0), "{lease}");
    assert_eq!(lease["client"], json!("sh"));
    common::signal(child.id(), "INT");
    // Bounded: if the signal were not forwarded the command would loop for ever.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("SIGINT was not forwarded: the command still runs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));
    assert_eq!(vg.get_json("/api/v1/system/generations").1["active_generations"], json!(0));
    // Exit 3 is an error: nothing learned, though its VRAM was seen.
    assert_eq!(finished(&vg, "error"), 1.0);
    assert_eq!(vg.get_json("/api/v1/system/observations").1["observations"], json!([]));
}

/// `vramguard run --gpus 2`: one lease on two GPUs, CUDA_VISIBLE_DEVICES their UUIDs in rank
/// order, and every rank attributed: the command's two children (as torchrun's ranks) each
/// hold VRAM on their own GPU and count for the lease there.
#[test]
fn a_job_on_two_gpus_gets_both_and_each_rank_is_attributed() {
    let two = |procs: &[(u32, u32, u64)]| -> String {
        (0..2)
            .map(|g| {
                let lines: String =
                    procs.iter().filter(|p| p.0 == g).map(|(_, pid, b)| format!("process {pid} {b}\n")).collect();
                let used: u64 = procs.iter().filter(|p| p.0 == g).map(|p| p.2).sum();
                format!("[gpu]\nuuid GPU-{g}{g}{g}\nmemory_total {}\nmemory_used {used}\n{lines}", 24 * GIB)
            })
            .collect()
    };
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&two(&[])), &[]);
    vg.wait_ready();
    let dir = tempfile::tempdir().unwrap();
    let (env, ranks) = (dir.path().join("env"), dir.path().join("ranks"));
    let script = format!(
        "echo \"$CUDA_VISIBLE_DEVICES|$VRAMGUARD_GPU_INDICES\" > {e}; sleep 60 & a=$!; sleep 60 & b=$!; \
         echo \"$a $b\" > {r}; trap 'kill $a $b; exit 0' TERM; wait",
        e = env.display(),
        r = ranks.display()
    );
    let mut child = run(&vg, &["--gpus", "2", "--vram-gb", "6", "--ttl", "30s"], &script).spawn().unwrap();
    let seen = wait_for_file(&env);
    assert_eq!(seen.trim(), "GPU-000,GPU-111|0,1");
    let pids: Vec<u32> = wait_for_file(&ranks).split_whitespace().map(|p| p.parse().unwrap()).collect();
    vg.set_scenario(&two(&[(0, pids[0], 5 * GIB), (1, pids[1], 4 * GIB)]));
    let lease = || vg.get_json("/api/v1/system/generations").1["leases"][0].clone();
    vg.wait_until("both ranks attributed", Duration::from_secs(10), || {
        lease()["gpus"].as_array().is_some_and(|g| g.iter().all(|r| r["attribution"] == json!("pids")))
    });
    let l = lease();
    assert_eq!(l["gpus"][0]["vram_used_gb"], json!(5.0), "{l}");
    assert_eq!(l["gpus"][1]["vram_used_gb"], json!(4.0), "{l}");
    assert_eq!(l["vram_used_gb"], json!(9.0), "{l}");
    assert_eq!(l["vram_outstanding_gb"], json!(3.0), "{l}");
    assert_eq!(vg.get_json("/api/v1/system/generations").1["active_generations"], json!(1));
    common::signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the command's own exit (its trap) passes through");
    assert_eq!(vg.get_json("/api/v1/system/generations").1["leases"], json!([]), "released whole");
}

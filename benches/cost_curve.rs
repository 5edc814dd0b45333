//! The cost curve: how one sample, one exposition and one decision grow with the size of the
//! machine, at N ∈ {1, 8, 16} GPUs × P ∈ {0, 32, 256} compute processes. **P counts processes
//! in total**, spread evenly over the GPUs (8 GPUs × 32 processes is 4 per GPU, the
//! `scripts/bench.sh` box; 1 GPU × 256 is 256 on one GPU).
//!
//!   cargo bench --bench cost_curve              (about 3 minutes)
//!   scripts/bench.sh --curve                    (the same, then the table and the PNG)
//!
//! Groups (criterion's output lands in `target/criterion/cost_<group>/<P>_processes/<N>_gpus/`):
//! - `cost_sample`: one pass of the real GPU collector (`vramguard::bench_gpu_collector`, the
//!   sampler is crate-private) against the fake NVML of `tests/fake-nvml` with a scenario of N
//!   GPUs and P processes: every NVML call nvml-wrapper makes, the fault readings, the XID
//!   lookup and one `/proc/PID/comm` read per process (the pids are this bench's own, so each
//!   read succeeds, as on a real box). The fake answers from memory after one `stat` of its
//!   scenario per call; a real driver's calls cost more (ioctls), so this is vramguard's own
//!   share of a sample plus a cheap driver. Not the host collector, which does not grow with N
//!   or P.
//! - `cost_exposition`: the whole `/metrics` text after a new sample (`Metrics::policy_text`, then
//!   `Metrics::render_cached`) for a snapshot of that
//!   shape (including the process collector's read of `/proc/self`, a constant).
//! - `cost_decision_fits`: `resource_check` for a 9.5 GiB job that fits (the request
//!   `scripts/bench.sh` sends).
//! - `cost_decision_refused`: `resource_check` for a 60 GiB job that fits no GPU now but would
//!   fit an empty one: the recommendation search and the walk over every process for the
//!   largest holders.
//!
//! Without `FAKE_NVML_SCENARIO` in the environment the bench runs itself again with it set to
//! a scenario file in a temporary directory (the fake reads the variable on every call, and
//! setting it in a running process is `unsafe`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode};
use vramguard::Context;
use vramguard::snapshot::Snapshot;
use vramguard::{CheckRequest, resource_check};
use vramguard::{Config, Optimization, Quantization};
use vramguard::{LeaseFigures, Metrics};

mod fixture;
use fixture::GIB;

const GPUS: [u32; 3] = [1, 8, 16];
const PROCESSES: [u32; 3] = [0, 32, 256];
/// VRAM used on every GPU, whatever P (the processes share it), so the decisions take the
/// same path at every P.
const USED_GIB: u64 = 40;
const TOTAL_GIB: u64 = 80;

/// Processes on GPU `g` of `n` when `p` are spread evenly (the first GPUs take the remainder).
fn per_gpu(g: u32, n: u32, p: u32) -> u32 {
    p / n + u32::from(g < p % n)
}

/// Every telemetry reading supported, so a pass makes each of their NVML calls.
const TELEMETRY: &str = "power_limit_mw 700000\nenergy_mj 123456789123\nfans 30,30\nencoder_utilization 0\n\
decoder_utilization 0\npcie_tx_kbps 1024\npcie_rx_kbps 2048\npcie_link_gen 5\npcie_link_width 16\npstate 0\n\
violation_power_ns 12500000000\nviolation_thermal_ns 0\nviolation_sync_boost_ns 0\nviolation_board_limit_ns 0\n\
violation_low_utilization_ns 0\nviolation_reliability_ns 0\n";

/// The fake NVML scenario of N GPUs and P processes in total, all with this process's pid.
fn scenario(n: u32, p: u32) -> String {
    let pid = std::process::id();
    let mut s = String::new();
    for g in 0..n {
        let k = per_gpu(g, n, p);
        s += &format!(
            "[gpu]\nname NVIDIA H100 80GB HBM3\nmemory_total {}\nmemory_used {}\nutilization_gpu 50\ntemperature 50\npower_mw 300000\n{TELEMETRY}",
            TOTAL_GIB * GIB,
            USED_GIB * GIB
        );
        for _ in 0..k {
            s += &format!("process {pid} {}\nprocess_sm {pid} 10\n", USED_GIB * GIB / u64::from(k));
        }
    }
    s
}

/// The snapshot of the same shape, as the sampler would publish it (names as on a real box).
fn snapshot(n: u32, p: u32) -> Snapshot {
    fixture::snapshot(
        (0..n)
            .map(|i| {
                let k = per_gpu(i, n, p);
                fixture::h100(i, USED_GIB, 100_000 + i * 1000, k, USED_GIB * GIB / u64::from(k.max(1)))
            })
            .collect(),
    )
}

fn id(n: u32, p: u32) -> BenchmarkId {
    BenchmarkId::new(format!("{p}_processes"), format!("{n}_gpus"))
}

/// Writes `text` to `path` atomically, so the fake re-reads it whole.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the scenario");
    std::fs::rename(&tmp, path).expect("replace the scenario");
}

fn sample(c: &mut Criterion, scenario_file: &Path) {
    let fake = env!("VRAMGUARD_FAKE_NVML");
    if fake.is_empty() {
        eprintln!("cost_sample skipped: the fake NVML was not built (no C compiler at build time)");
        return;
    }
    let mut group = c.benchmark_group("cost_sample");
    // Up to milliseconds an iteration: flat sampling keeps the run within its time.
    group.sampling_mode(SamplingMode::Flat).sample_size(50);
    for n in GPUS {
        for p in PROCESSES {
            replace(scenario_file, &scenario(n, p));
            // The fake looks at its file at most every 20 ms (tests/fake-nvml/README.md): let that
            // pass, so the first pass reads this shape and not the previous one.
            std::thread::sleep(Duration::from_millis(25));
            // A fresh collector per shape: NVML initialised once, then one pass per iteration.
            let mut collect = vramguard::bench_gpu_collector(PathBuf::from(fake));
            let first = collect().expect("the fake NVML answers");
            let seen: usize = first.iter().map(|g| g.processes.as_ref().map_or(0, Vec::len)).sum();
            assert_eq!((first.len(), seen), (n as usize, p as usize), "the collector read the scenario");
            group.bench_function(id(n, p), |b| b.iter(|| black_box(collect().expect("the fake NVML answers"))));
        }
    }
    group.finish();
}

fn exposition(c: &mut Criterion) {
    let config = Config::default();
    let metrics = Metrics::new();
    let figures = LeaseFigures {
        outstanding: vec![(0, 10.0)],
        estimates: vec![("default".to_owned(), "model", 9.5)],
        waiting: 0,
        that_fit: vec![("default".to_owned(), 1)],
        gangs_that_fit: vec![("default".to_owned(), 2, 1), ("default".to_owned(), 4, 0)],
        gpus_leased: 1,
    };
    let mut group = c.benchmark_group("cost_exposition");
    for n in GPUS {
        for p in PROCESSES {
            let s = snapshot(n, p);
            // A scrape after a new sample (the production path; the sample made outside the timing).
            group.bench_function(id(n, p), |b| {
                b.iter_batched(
                    || std::sync::Arc::new(s.clone()),
                    |sample| {
                        let policy = metrics.policy_text(Some(&sample), &config.constraints, None, 1, &figures);
                        black_box(metrics.render_cached(Some(&sample), &std::sync::Arc::new(policy), 0))
                    },
                    criterion::BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn decision(c: &mut Criterion, name: &str, required_gb: f64, refused: bool) {
    let config = Config::default();
    let settings = Optimization {
        quantization: Quantization::Fp16,
        enable_offload: false,
        vae_tile_size: 512,
        vae_tiling: true,
        max_vram_usage_gb: f64::from(TOTAL_GIB as u32),
    };
    let reservations = [(0u32, 10.0)];
    let req = CheckRequest { vram_required_gb: Some(required_gb), ..CheckRequest::default() };
    let mut group = c.benchmark_group(name);
    for n in GPUS {
        for p in PROCESSES {
            let s = snapshot(n, p);
            let ctx = Context {
                snapshot: Some(&s),
                constraints: &config.constraints,
                settings: &settings,
                workload: &config.workload,
                workload_name: "default",
                observed: &[],
                learning: &config.learning,
                gpu_enabled: true,
                outstanding: &reservations,
                overruns: &[],
                active_generations: Some(1),
                store_problem: None,
                now: 1_800_000_000.0,
            };
            // The path taken must not change with the shape, or the curve compares two things.
            let check = resource_check(&ctx, &req);
            assert_eq!(check.can_start_generation, !refused, "{name} at {n} GPUs: {check:?}");
            let holders = check.recommendations.iter().any(|r| r.contains("largest holders"));
            assert_eq!(holders, refused && p > 0, "{name} at {n} GPUs, {p} processes: {check:?}");
            group.bench_function(id(n, p), |b| b.iter(|| black_box(resource_check(&ctx, &req))));
        }
    }
    group.finish();
}

fn main() -> ExitCode {
    let Some(scenario_file) = std::env::var_os("FAKE_NVML_SCENARIO") else {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let me = std::env::current_exe().expect("the bench's own path");
        let status = std::process::Command::new(me)
            .args(std::env::args_os().skip(1))
            .env("FAKE_NVML_SCENARIO", dir.path().join("scenario.txt"))
            .status()
            .expect("run the bench again");
        return ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8);
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    sample(&mut c, Path::new(&scenario_file));
    exposition(&mut c);
    decision(&mut c, "cost_decision_fits", 9.5, false);
    decision(&mut c, "cost_decision_refused", 60.0, true);
    c.final_summary();
    ExitCode::SUCCESS
}

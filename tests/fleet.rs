//! Many GPU machines behind one job queue: the `examples/queue-workers` pattern run for real.
//!
//! A real `redis-server` on a free loopback port is the shared queue; two vramguard instances
//! stand for two machines (fake NVML, a 24 GiB and a 48 GiB GPU, two generations at a time);
//! three copies of the example worker per machine take a waiting lease from their machine's
//! vramguard before they pull a job. Forty jobs of mixed sizes; each "generation" holds its VRAM
//! by listing the worker's pid in its machine's fake-NVML scenario. One worker is killed while
//! its job holds VRAM, and that job must come back and finish elsewhere.
//!
//! Asserted: every job finishes exactly once; at no sample of either machine's `/metrics` (every
//! 100 ms) do used plus outstanding VRAM exceed the critical threshold, nor live leases the limit;
//! both machines did work. Needs `redis-server`, `redis-cli` and python3 with venv and PyPI: without
//! the programs a plain `cargo test` lists it as ignored with why (build.rs); without PyPI it
//! prints a `SKIPPED:` line. With `CI` set it runs and fails instead.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GIB, Metrics, Vramguard};

const WORKERS_PER_MACHINE: usize = 3;
/// The short jobs: sizes in GiB (used in turn by submit.py) and how long each holds its VRAM.
const SHORT_JOBS: usize = 39;
const SHORT_SIZES: &str = "3,6,10,14";
/// One long job of a size no other job has, so its worker can be found in a scenario and killed.
const LONG_GIB: u64 = 7;
/// Lease knobs of the workers: short enough that a killed worker's lease and job come back
/// within the test.
const LEASE_WAIT_SECONDS: &str = "5";
const LEASE_TTL_SECONDS: &str = "10";
const MAINTENANCE_SECONDS: &str = "2";
/// RQ's timeout for the long job; with the worker's 10 s grace its registry entry lapses 18 s
/// after it started.
const LONG_TIMEOUT: &str = "8";

struct Machine {
    name: &'static str,
    vg: Vramguard,
}

/// A 24 GiB or 48 GiB GPU on which another process (pid 7) holds `baseline` GiB.
fn scenario(total_gib: u64, baseline_gib: u64) -> String {
    format!(
        "[gpu]\nname Fake GPU {total_gib}G\nmemory_total {}\nmemory_used {}\nprocess 7 {}\n",
        total_gib * GIB,
        baseline_gib * GIB,
        baseline_gib * GIB
    )
}

fn machine(name: &'static str, total_gib: u64, baseline_gib: u64) -> Machine {
    let config = format!(
        "sample_interval: \"200ms\"\n\
         gpu: {{ enabled: true, nvml_library: \"{}\", per_process: true }}\n\
         constraints: {{ max_concurrent_generations: 2 }}\n\
         optimization: {{ max_vram_usage_gb: {} }}\n",
        common::fake_nvml(),
        total_gib - 4
    );
    let vg = Vramguard::start(&config, Some(&scenario(total_gib, baseline_gib)), &[]);
    vg.wait_ready();
    Machine { name, vg }
}

/// Children killed (and reaped) on drop, so a failing assertion leaves nothing running.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(what: &str, cmd: &mut Command) -> Option<String> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("{what} failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(stdout)
}

/// A venv with the example's pinned requirements and the client (with its dev tools, for the
/// lint of the example); reused while those files are unchanged.
fn venv(repo: &Path) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-venv");
    let stamp = dir.join("inputs.stamp");
    let requirements = repo.join("examples/queue-workers/requirements.txt");
    let inputs = std::fs::read_to_string(&requirements).expect("requirements.txt")
        + &std::fs::read_to_string(repo.join("clients/python/pyproject.toml")).expect("pyproject.toml");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(inputs.as_str()) {
        return Some(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    run("python3 -m venv", Command::new("python3").arg("-m").arg("venv").arg(&dir))?;
    let client = format!("{}[dev]", repo.join("clients/python").display());
    run(
        "pip install",
        Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .args(["-e", &client]),
    )?;
    std::fs::write(&stamp, inputs).expect("write stamp");
    Some(dir)
}

/// Runs `redis-cli -p PORT` on `commands` (one per line) and returns its replies, one per line.
fn redis(port: u16, commands: &str) -> Vec<String> {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child.stdin.take().expect("stdin").write_all(commands.as_bytes()).expect("write to redis-cli");
    let out = child.wait_with_output().expect("redis-cli output");
    assert!(out.status.success(), "redis-cli: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Removes `process <pid> ...` from a scenario, as the driver frees a dead process's memory,
/// under the lock the example's jobs take (`<scenario>.lock`, flock) and by rename.
fn free_dead_process(scenario: &Path, pid: u32) {
    let lock =
        File::options().create(true).append(true).open(format!("{}.lock", scenario.display())).expect("lock file");
    lock.lock().expect("flock");
    let text = std::fs::read_to_string(scenario).expect("read scenario");
    let mut freed = 0u64;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dead = f.len() == 3 && f[0] == "process" && f[1] == pid.to_string();
            if dead {
                freed += f[2].parse::<u64>().expect("process bytes");
            }
            !dead
        })
        .map(str::to_owned)
        .collect();
    for l in &mut lines {
        if let Some(used) = l.strip_prefix("memory_used ") {
            *l = format!("memory_used {}", used.trim().parse::<u64>().expect("memory_used") - freed);
        }
    }
    common::write_scenario(scenario, &(lines.join("\n") + "\n"));
    lock.unlock().expect("unlock");
}

/// The pid holding exactly `bytes` in a scenario, if any.
fn holder_of(scenario: &Path, bytes: u64) -> Option<u32> {
    let text = std::fs::read_to_string(scenario).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[0] == "process" && f[2] == bytes.to_string()).then(|| f[1].parse().ok()).flatten()
    })
}

/// What the sampler saw on one machine.
#[derive(Debug, Default, Clone)]
struct Seen {
    samples: u32,
    peak_used: f64,
    peak_committed: f64,
    peak_active: f64,
    violations: Vec<String>,
}

/// One `/metrics` scrape checked: used (total − free, as admission counts it) plus what live
/// leases still owe must stay under the critical threshold, live leases under the limit.
fn check(seen: &mut Seen, name: &str, m: &Metrics, at: Duration) {
    let gpu = [("gpu", "0")];
    let (Some(total), Some(free)) =
        (m.value("vramguard_gpu_memory_total_bytes", &gpu), m.value("vramguard_gpu_memory_free_bytes", &gpu))
    else {
        seen.violations.push(format!("{name} at {at:?}: no GPU memory series"));
        return;
    };
    let used = total - free;
    let outstanding = m.value("vramguard_gpu_memory_outstanding_bytes", &gpu).unwrap_or(0.0);
    let critical =
        m.value("vramguard_threshold_ratio", &[("resource", "vram"), ("level", "critical")]).expect("critical");
    let active = m.value("vramguard_active_generations", &[]).expect("active generations");
    let limit = m.value("vramguard_max_concurrent_generations", &[]).expect("limit");
    seen.samples += 1;
    seen.peak_used = seen.peak_used.max(used);
    seen.peak_committed = seen.peak_committed.max(used + outstanding);
    seen.peak_active = seen.peak_active.max(active);
    // Admission keeps (used + outstanding + job) strictly below critical × total; outstanding is
    // rendered from GiB figures, so allow 1 MiB of rounding and nothing more.
    if used + outstanding > critical * total + (1 << 20) as f64 {
        seen.violations.push(format!(
            "{name} at {at:?}: used {:.2} GiB + outstanding {:.2} GiB > {critical} of {:.0} GiB",
            used / GIB as f64,
            outstanding / GIB as f64,
            total / GIB as f64
        ));
    }
    if active > limit {
        seen.violations.push(format!("{name} at {at:?}: {active} live leases > limit {limit}"));
    }
}

#[test]
#[cfg_attr(
    not(all(has_redis, has_python_venv)),
    ignore = "needs redis-server, redis-cli and python3 with venv (apt-get install redis-server redis-tools python3-venv)"
)]
fn forty_jobs_on_two_machines_through_redis() {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        assert!(!ci, "{why} (required when CI is set)");
        eprintln!("SKIPPED: fleet test: {why}");
    };
    if !on_path("redis-server") || !on_path("redis-cli") {
        return skip("redis-server or redis-cli not found (apt-get install redis-server)");
    }
    let has_venv =
        Command::new("python3").args(["-c", "import venv, ensurepip"]).output().is_ok_and(|o| o.status.success());
    if !has_venv {
        return skip("python3 with venv and ensurepip not found (apt-get install python3-venv)");
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(venv) = venv(repo) else {
        return skip("could not create the venv or install the example's requirements from PyPI");
    };
    let example = repo.join("examples/queue-workers");
    let tool = |name: &str| {
        let mut c = Command::new(venv.join("bin").join(name));
        c.current_dir(&example);
        c
    };
    // The example is code people copy: it stays formatted, linted and typed.
    assert!(run("ruff format --check", tool("ruff").args(["format", "--check", "."])).is_some());
    assert!(run("ruff check", tool("ruff").args(["check", "."])).is_some());
    assert!(run("mypy --strict", tool("mypy").args(["--strict", "."])).is_some());

    let tmp = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let mut children = Children(Vec::new());
    let server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    children.0.push(("redis-server".into(), server));
    let start = Instant::now();
    while redis(port, "PING\n") != ["PONG"] {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not answer on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let redis_url = format!("redis://127.0.0.1:{port}/0");

    let machines = Arc::new(vec![machine("a", 24, 1), machine("b", 48, 2)]);
    let mut workers: Vec<(u32, &'static str)> = Vec::new();
    for m in machines.iter() {
        for i in 0..WORKERS_PER_MACHINE {
            let log = File::create(tmp.path().join(format!("worker-{}{i}.log", m.name))).expect("log file");
            let child = tool("python")
                .arg("worker.py")
                .env("REDIS_URL", &redis_url)
                .env("VRAMGUARD_URL", m.vg.url(""))
                .env("MACHINE", m.name)
                .env("FAKE_NVML_SCENARIO", m.vg.scenario_path())
                .env("LEASE_WAIT_SECONDS", LEASE_WAIT_SECONDS)
                .env("LEASE_TTL_SECONDS", LEASE_TTL_SECONDS)
                .env("MAINTENANCE_SECONDS", MAINTENANCE_SECONDS)
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start worker");
            workers.push((child.id(), m.name));
            children.0.push((format!("worker {}{i}", m.name), child));
        }
    }

    // Sample both machines every 100 ms from before the first job until the last one is done.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(vec![Seen::default(), Seen::default()]));
    let sampler = {
        let (stop, seen, machines) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&machines));
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for (i, m) in machines.iter().enumerate() {
                    let (status, body) = m.vg.get("/metrics");
                    assert_eq!(status, 200, "{body}");
                    check(&mut seen.lock().unwrap()[i], m.name, &Metrics::parse(&body), t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let submit = |args: &[&str]| -> Vec<String> {
        let out = run("submit.py", tool("python").arg("submit.py").args(args).env("REDIS_URL", &redis_url))
            .expect("submit.py");
        out.lines().map(str::to_owned).collect()
    };
    let submitted = Instant::now();
    // The jobs' records carry Python's time.time(): the same clock.
    let submitted_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let long = submit(&["--count", "1", "--sizes", &LONG_GIB.to_string(), "--seconds", "6", "--timeout", LONG_TIMEOUT]);
    let short =
        submit(&["--count", &SHORT_JOBS.to_string(), "--sizes", SHORT_SIZES, "--seconds", "1", "--timeout", "10"]);
    let ids: Vec<String> = long.iter().chain(&short).cloned().collect();
    assert_eq!(ids.len(), SHORT_JOBS + 1);

    // Kill the worker running the long job while its generation holds VRAM (so it never
    // finished), and free that memory as the driver would for a dead process.
    let (killed, killed_on) = loop {
        let found = machines.iter().find_map(|m| holder_of(&m.vg.scenario_path(), LONG_GIB * GIB).map(|p| (p, m)));
        if let Some((pid, m)) = found {
            assert!(workers.contains(&(pid, m.name)), "pid {pid} holding the long job is not a worker of {}", m.name);
            common::signal(pid, "KILL");
            free_dead_process(&m.vg.scenario_path(), pid);
            break (pid, m.name);
        }
        assert!(submitted.elapsed() < Duration::from_secs(40), "the long job never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed_at = submitted.elapsed();

    // Wait for all forty: each finished job appends one record.
    let records = loop {
        let done = redis(port, "LRANGE queue-workers:done 0 -1\n");
        let short_done = done.iter().filter(|r| !r.contains(&long[0])).count();
        if done.len() >= ids.len() {
            break done;
        }
        if submitted.elapsed() > Duration::from_secs(80) {
            stop.store(true, Ordering::Relaxed);
            let logs: String = std::fs::read_dir(tmp.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| {
                    format!("== {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default())
                })
                .collect();
            panic!("only {} of {} jobs finished ({short_done} short); worker logs:\n{logs}", done.len(), ids.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let finished_all = submitted.elapsed();
    // A job that ran twice would append a second record; give a late duplicate time to show.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let records = {
        let again = redis(port, "LRANGE queue-workers:done 0 -1\n");
        assert!(again.len() >= records.len());
        again
    };

    let mut runs: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_str(r).unwrap_or_else(|e| panic!("record {r}: {e}"));
        runs.entry(v["job"].as_str().expect("job id").to_owned()).or_default().push(v);
    }
    for id in &ids {
        let n = runs.get(id).map_or(0, Vec::len);
        assert_eq!(n, 1, "job {id} finished {n} times: {:?}", runs.get(id));
    }
    assert_eq!(runs.len(), ids.len(), "records of jobs nobody submitted: {runs:?}");
    let statuses = redis(port, &ids.iter().map(|id| format!("HGET rq:job:{id} status\n")).collect::<String>());
    assert!(statuses.iter().all(|s| s == "finished"), "RQ statuses: {statuses:?}");
    let long_run = &runs[&long[0]][0];
    assert_ne!(long_run["pid"].as_u64(), Some(u64::from(killed)), "the long job's record came from the killed worker");

    let per_machine = |name: &str| runs.values().filter(|r| r[0]["machine"] == name).count();
    let seen = seen.lock().unwrap().clone();
    for (m, s) in machines.iter().zip(&seen) {
        assert!(s.violations.is_empty(), "machine {}: {:#?}", m.name, s.violations);
        assert!(s.samples >= 50, "machine {}: only {} samples", m.name, s.samples);
        assert!(per_machine(m.name) > 0, "machine {} did no job", m.name);
        assert!(s.peak_active >= 1.0, "machine {}: the sampler never saw a live lease", m.name);
    }

    // The figures the lead reports: throughput of the short jobs, and each machine's peaks.
    let short_makespan = runs
        .iter()
        .filter(|(id, _)| short.contains(id))
        .map(|(_, r)| r[0]["finished"].as_f64().expect("finished") - submitted_unix)
        .fold(0.0, f64::max);
    println!(
        "fleet: {} jobs on 2 machines x {WORKERS_PER_MACHINE} workers; all finished {:.1} s after submission",
        ids.len(),
        finished_all.as_secs_f64()
    );
    println!(
        "fleet: the {SHORT_JOBS} one-second jobs ({SHORT_SIZES} GiB in turn) finished {short_makespan:.1} s after \
         submission: {:.0} jobs/minute",
        SHORT_JOBS as f64 * 60.0 / short_makespan
    );
    println!(
        "fleet: worker {killed} on machine {killed_on} killed {:.1} s in, its {LONG_GIB} GiB job finished once, on machine {} (pid {})",
        killed_at.as_secs_f64(),
        long_run["machine"].as_str().unwrap_or("?"),
        long_run["pid"]
    );
    for (m, s) in machines.iter().zip(&seen) {
        println!(
            "fleet: machine {}: {} jobs, peak VRAM used {:.1} GiB, peak used + outstanding {:.1} GiB, peak live leases {}, {} samples",
            m.name,
            per_machine(m.name),
            s.peak_used / GIB as f64,
            s.peak_committed / GIB as f64,
            s.peak_active,
            s.samples
        );
    }
}

/// `deploy/prometheus-fleet.yml` (with its targets file and the repo's rules) passes promtool,
/// and `deploy/keda-scaledobject.yaml` holds together: the formula names exactly its triggers,
/// the Redis lists are the example's RQ queues, and every Prometheus query parses and asks
/// only for series a running vramguard exports.
#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool on PATH (apt-get install prometheus)")]
fn fleet_deploy_files_check() {
    if !common::require_tool("promtool") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo.join("deploy/prometheus-fleet.yml"))
        .output()
        .expect("run promtool");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A missing targets file is only a warning to promtool; here it is a failure.
    assert!(out.status.success() && !printed.contains("WARNING"), "promtool check config: {printed}");
    assert!(printed.contains("vramguard.rules.yml"), "the rules are not loaded: {printed}");

    let text = std::fs::read_to_string(repo.join("deploy/keda-scaledobject.yaml")).expect("keda-scaledobject.yaml");
    let keda: serde_json::Value = serde_norway::from_str(&text).expect("KEDA YAML");
    assert_eq!(keda["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(keda["kind"], "ScaledObject");
    let triggers = keda["spec"]["triggers"].as_array().expect("triggers");
    let names: Vec<&str> = triggers.iter().map(|t| t["name"].as_str().expect("every trigger is named")).collect();
    let formula = keda["spec"]["advanced"]["scalingModifiers"]["formula"].as_str().expect("formula");
    let mut used: Vec<&str> = formula
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic()) && !["min", "max"].contains(w))
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut declared = names.clone();
    declared.sort_unstable();
    assert_eq!(used, declared, "the formula and the triggers disagree");

    let vg = Vramguard::with_fake(&scenario(24, 1), "200ms");
    vg.wait_ready();
    let exported = vg.metrics();
    let mut rules = String::from("groups:\n  - name: keda\n    rules:\n");
    for t in triggers {
        match t["type"].as_str() {
            Some("redis") => {
                let list = t["metadata"]["listName"].as_str().expect("listName");
                let gb = list.strip_prefix("rq:queue:gpu-").and_then(|r| r.strip_suffix("gb")).expect(list);
                assert!(gb.parse::<u32>().is_ok(), "{list} is not an example queue");
            }
            Some("prometheus") => {
                let query = t["metadata"]["query"].as_str().expect("query");
                rules.push_str(&format!(
                    "      - record: keda:{}\n        expr: '{query}'\n",
                    t["name"].as_str().unwrap()
                ));
                for metric in query
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("vramguard_"))
                {
                    assert!(exported.has(metric), "{metric} (in {query}) is not exported:\n{}", exported.text);
                }
            }
            other => panic!("unexpected trigger type {other:?}"),
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keda.rules.yml");
    std::fs::write(&path, &rules).expect("write rules");
    let out = Command::new("promtool").args(["check", "rules"]).arg(&path).output().expect("run promtool");
    assert!(out.status.success(), "the KEDA queries do not parse:\n{rules}\n{}", String::from_utf8_lossy(&out.stdout));
}

//! The exporter end to end: the real binary, the real nvml-wrapper code, the fake NVML library.

mod common;

use std::time::Duration;

use common::{GIB, MIB, Metrics, Vramguard, require_tool};

/// Two GPUs with every reading set, one of them running two compute processes (one of them
/// busy on the SMs). GPU 1 is a fanless board that reports only some held-back reasons.
fn two_gpus(lost_second: bool, test_pid: u32) -> String {
    format!(
        "driver_version 550.54.15\n\
         [gpu]\n\
         uuid GPU-11111111-2222-3333-4444-555555555555\n\
         name NVIDIA GeForce RTX 4080\n\
         pci_bus_id 00000000:01:00.0\n\
         memory_total {}\n\
         memory_used {}\n\
         utilization_gpu 35\n\
         temperature 61\n\
         power_mw 215500\n\
         process {test_pid} {}\n\
         process 999999999 {}\n\
         process_sm {test_pid} 35\n\
         utilization_memory 20\n\
         power_limit_mw 320000\n\
         energy_mj 123456789\n\
         fans 45,50\n\
         encoder_utilization 12\n\
         decoder_utilization 3\n\
         pcie_tx_kbps 1000\n\
         pcie_rx_kbps 250000\n\
         pcie_link_gen 4\n\
         pcie_link_width 16\n\
         pstate 2\n\
         violation_power_ns 5000000000\n\
         violation_thermal_ns 250000000\n\
         violation_sync_boost_ns 0\n\
         violation_board_limit_ns 0\n\
         violation_low_utilization_ns 1000000000\n\
         violation_reliability_ns 0\n\
         xid 31 1\n\
         ecc_mode unsupported\n\
         remapped_rows unsupported\n\
         clock_event_reasons sw_power_cap\n\
         clock_sm 2505\n\
         clock_memory 11201\n\
         [gpu]\n\
         uuid GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\n\
         name NVIDIA RTX A6000\n\
         pci_bus_id 00000000:41:00.0\n\
         memory_total {}\n\
         memory_used {}\n\
         utilization_gpu 90\n\
         temperature 74\n\
         power_mw 280000\n\
         utilization_memory 55\n\
         power_limit_mw 300000\n\
         energy_mj 9876543\n\
         fans none\n\
         encoder_utilization 0\n\
         decoder_utilization 0\n\
         pcie_tx_kbps 0\n\
         pcie_rx_kbps 0\n\
         pcie_link_gen 4\n\
         pcie_link_width 16\n\
         pstate 8\n\
         violation_power_ns 0\n\
         violation_thermal_ns 0\n\
         process_utilization unsupported\n\
         ecc_corrected 3\n\
         remapped_rows_correctable 1\n\
         clock_event_reasons gpu_idle\n\
         clock_sm 210\n\
         clock_memory 405\n\
         lost {}\n",
        16 * GIB,
        2 * GIB,
        1536 * MIB,
        512 * MIB,
        48 * GIB,
        40 * GIB,
        u8::from(lost_second),
    )
}

/// Two GPUs come out with exactly the values NVML reported, in base units.
#[test]
fn two_gpus_exact_values() {
    let vg = Vramguard::with_fake(&two_gpus(false, 1), "250ms");
    vg.wait_ready();
    let m = vg.metrics();
    let g0 = [("gpu", "0"), ("uuid", "GPU-11111111-2222-3333-4444-555555555555")];
    let g1 = [("gpu", "1"), ("uuid", "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")];
    assert_eq!(m.value("vramguard_gpus", &[]), Some(2.0));
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_memory_total_bytes", &g0), Some((16 * GIB) as f64));
    assert_eq!(m.value("vramguard_gpu_memory_used_bytes", &g0), Some((2 * GIB) as f64));
    assert_eq!(m.value("vramguard_gpu_memory_free_bytes", &g0), Some((14 * GIB) as f64));
    assert_eq!(m.value("vramguard_gpu_utilization_ratio", &g0), Some(0.35));
    assert_eq!(m.value("vramguard_gpu_temperature_celsius", &g0), Some(61.0));
    assert_eq!(m.value("vramguard_gpu_power_watts", &g0), Some(215.5));
    assert_eq!(m.value("vramguard_gpu_memory_total_bytes", &g1), Some((48 * GIB) as f64));
    assert_eq!(m.value("vramguard_gpu_memory_used_bytes", &g1), Some((40 * GIB) as f64));
    assert_eq!(m.value("vramguard_gpu_memory_free_bytes", &g1), Some((8 * GIB) as f64));
    assert_eq!(m.value("vramguard_gpu_utilization_ratio", &g1), Some(0.9));
    assert_eq!(m.value("vramguard_gpu_temperature_celsius", &g1), Some(74.0));
    assert_eq!(m.value("vramguard_gpu_power_watts", &g1), Some(280.0));
    let info = m.find("vramguard_gpu_info", &[("gpu", "1")]);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["name"], "NVIDIA RTX A6000");
    assert_eq!(info[0].labels["pci_bus_id"], "00000000:41:00.0");
    assert_eq!(info[0].labels["driver_version"], "550.54.15");
    assert_eq!(info[0].value, 1.0);
    // Identity stays on the info series only.
    assert!(m.find("vramguard_gpu_memory_used_bytes", &[("name", "NVIDIA RTX A6000")]).is_empty());
    // Fault readings: GPU 0, a GeForce, has neither ECC nor row remapping; GPU 1 has both.
    assert!(m.find("vramguard_gpu_ecc_errors_total", &g0).is_empty(), "{}", m.text);
    assert!(m.find("vramguard_gpu_remap_pending", &g0).is_empty(), "{}", m.text);
    assert_eq!(m.value("vramguard_gpu_ecc_errors_total", &[g1[0], g1[1], ("type", "corrected")]), Some(3.0));
    assert_eq!(m.value("vramguard_gpu_ecc_errors_total", &[g1[0], g1[1], ("type", "uncorrected")]), Some(0.0));
    assert_eq!(m.value("vramguard_gpu_remapped_rows", &[g1[0], g1[1], ("type", "correctable")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_remap_pending", &g1), Some(0.0));
    assert_eq!(m.value("vramguard_gpu_clock_hertz", &[g0[0], g0[1], ("clock", "sm")]), Some(2.505e9));
    assert_eq!(m.value("vramguard_gpu_clock_hertz", &[g1[0], g1[1], ("clock", "memory")]), Some(4.05e8));
    assert_eq!(m.value("vramguard_gpu_throttle_reason", &[g0[0], g0[1], ("reason", "sw_power_cap")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_throttle_reason", &[g1[0], g1[1], ("reason", "gpu_idle")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_healthy", &g0), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_healthy", &g1), Some(1.0));
}

/// Per-process VRAM: a visible pid gets its /proc name, an invisible one an empty name.
#[test]
fn per_process_vram() {
    let me = std::process::id();
    let vg = Vramguard::with_fake(&two_gpus(false, me), "250ms");
    vg.wait_ready();
    let m = vg.metrics();
    let pid = me.to_string();
    let mine = m.find("vramguard_gpu_process_memory_used_bytes", &[("gpu", "0"), ("pid", &pid)]);
    assert_eq!(mine.len(), 1, "{}", m.text);
    assert_eq!(mine[0].value, (1536 * MIB) as f64);
    let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
    assert_eq!(mine[0].labels["process"], comm.trim());
    let ghost = m.find("vramguard_gpu_process_memory_used_bytes", &[("pid", "999999999")]);
    assert_eq!(ghost.len(), 1);
    assert_eq!(ghost[0].value, (512 * MIB) as f64);
    assert_eq!(ghost[0].labels.get("process").map(String::as_str).unwrap_or(""), "");
    assert!(m.find("vramguard_gpu_process_memory_used_bytes", &[("gpu", "1")]).is_empty());
}

/// With per_process off there are no process series.
#[test]
fn per_process_can_be_turned_off() {
    let gpu = format!("gpu: {{ enabled: true, nvml_library: \"{}\", per_process: false }}\n", common::fake_nvml());
    let vg = Vramguard::start(&format!("sample_interval: \"250ms\"\n{gpu}"), Some(&two_gpus(false, 1)), &[]);
    vg.wait_ready();
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpus", &[]), Some(2.0));
    assert!(!m.has("vramguard_gpu_process_memory_used_bytes"), "{}", m.text);
}

/// A GPU lost mid-run is gone from every series by the snapshot taken two intervals after the
/// change, the rest keeps being served, and the GPU comes back when it recovers.
#[test]
fn lost_gpu_is_dropped_and_comes_back() {
    let interval = 0.25;
    let vg = Vramguard::with_fake(&two_gpus(false, 1), "250ms");
    vg.wait_ready();
    let before = vg.metrics();
    assert_eq!(before.value("vramguard_gpus", &[]), Some(2.0));
    let t0 = before.value("vramguard_last_sample_timestamp_seconds", &[]).unwrap();
    vg.set_scenario(&two_gpus(true, 1));

    // Every snapshot taken two or more intervals after t0 must already lack GPU 1.
    let after = vg.wait_metrics("a snapshot two intervals later", Duration::from_secs(20), |m| {
        m.value("vramguard_last_sample_timestamp_seconds", &[]).unwrap() >= t0 + 2.0 * interval
    });
    assert_eq!(after.value("vramguard_gpus", &[]), Some(1.0), "{}", after.text);
    assert!(after.find("vramguard_gpu_memory_used_bytes", &[("gpu", "1")]).is_empty());
    assert!(after.find("vramguard_gpu_info", &[("gpu", "1")]).is_empty());
    assert_eq!(after.value("vramguard_gpu_memory_used_bytes", &[("gpu", "0")]), Some((2 * GIB) as f64));
    assert_eq!(after.value("vramguard_collector_success", &[("collector", "gpu")]), Some(0.0));
    assert_eq!(after.value("vramguard_collector_success", &[("collector", "host")]), Some(1.0));
    assert!(after.has("vramguard_memory_total_bytes"));

    vg.set_scenario(&two_gpus(false, 1));
    let back =
        vg.wait_metrics("GPU 1 to come back", Duration::from_secs(20), |m| m.value("vramguard_gpus", &[]) == Some(2.0));
    assert_eq!(back.value("vramguard_gpu_memory_used_bytes", &[("gpu", "1")]), Some((40 * GIB) as f64));
    assert_eq!(back.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0), "{}", back.text);
}

/// NVML that fails to initialise leaves CPU and RAM served, and a later recovery is picked up
/// by the re-initialisation backoff.
#[test]
fn nvml_init_failure_keeps_host_metrics() {
    let vg = Vramguard::with_fake("init_error DRIVER_NOT_LOADED\n", "250ms");
    vg.wait_ready();
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpus", &[]), Some(0.0));
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(0.0));
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "host")]), Some(1.0));
    assert!(m.value("vramguard_memory_total_bytes", &[]).unwrap() > 0.0);
    assert!(m.has("vramguard_cpu_usage_ratio"));
    assert!(!m.has("vramguard_gpu_info"));
    assert!(vg.logs().contains("NVML initialisation failed"), "{}", vg.logs());

    vg.set_scenario(&two_gpus(false, 1));
    vg.wait_metrics("NVML to recover", Duration::from_secs(20), |m| m.value("vramguard_gpus", &[]) == Some(2.0));
}

/// No NVML library at all: a GPU-less host, logged once at info, not as an error.
#[test]
fn missing_library_is_a_gpu_less_host() {
    let config = "sample_interval: \"250ms\"\ngpu: { nvml_library: \"/nonexistent/libnvidia-ml.so.1\" }\n";
    let vg = Vramguard::start(config, None, &[]);
    vg.wait_ready();
    let first = vg.metrics();
    let t0 = first.value("vramguard_last_sample_timestamp_seconds", &[]).unwrap();
    let m = vg.wait_metrics("several samples", Duration::from_secs(20), |m| {
        m.value("vramguard_last_sample_timestamp_seconds", &[]).unwrap() >= t0 + 1.0
    });
    assert_eq!(m.value("vramguard_gpus", &[]), Some(0.0));
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(0.0));
    assert!(!m.has("vramguard_gpu_memory_used_bytes"));
    let logs = vg.logs();
    assert_eq!(logs.matches("GPU-less host").count(), 1, "{logs}");
    assert!(!logs.contains("ERROR") && !logs.contains("WARN"), "{logs}");
}

/// `gpu.enabled: false`: no gpu collector series at all, and zero GPUs.
#[test]
fn gpu_disabled_has_no_gpu_collector() {
    let vg = Vramguard::start("sample_interval: \"250ms\"\ngpu: { enabled: false }\n", None, &[]);
    vg.wait_ready();
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpus", &[]), Some(0.0));
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), None);
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "host")]), Some(1.0));
}

/// A hung NVML call does not stall the sampler: snapshots keep coming with the gpu collector
/// marked failed, and the GPU returns when the driver answers again.
#[test]
fn hung_nvml_call_times_out() {
    let hung = format!("{}hang_ms 4000\n", "[gpu]\nmemory_total 1073741824\n");
    let vg = Vramguard::with_fake("[gpu]\nmemory_total 1073741824\n", "500ms");
    vg.wait_ready();
    vg.wait_metrics("the GPU", Duration::from_secs(10), |m| m.value("vramguard_gpus", &[]) == Some(1.0));
    vg.set_scenario(&hung);
    let m = vg.wait_metrics("the gpu collector to time out", Duration::from_secs(20), |m| {
        m.value("vramguard_collector_success", &[("collector", "gpu")]) == Some(0.0)
    });
    let t1 = m.value("vramguard_last_sample_timestamp_seconds", &[]).unwrap();
    let later = vg.wait_metrics("the sampler to keep going", Duration::from_secs(20), |m| {
        m.value("vramguard_last_sample_timestamp_seconds", &[]).unwrap() >= t1 + 1.0
    });
    assert_eq!(later.value("vramguard_collector_success", &[("collector", "host")]), Some(1.0));
    assert_eq!(later.value("vramguard_collector_success", &[("collector", "gpu")]), Some(0.0));
    assert!(!later.has("vramguard_gpu_info"), "{}", later.text);
    vg.set_scenario("[gpu]\nmemory_total 1073741824\n");
    vg.wait_metrics("the GPU to return", Duration::from_secs(30), |m| {
        m.value("vramguard_collector_success", &[("collector", "gpu")]) == Some(1.0)
            && m.value("vramguard_gpus", &[]) == Some(1.0)
    });
}

/// Readiness is 503 until the first snapshot exists, then 200 for good.
#[test]
fn ready_only_after_first_snapshot() {
    // NVML init hangs for 3 s and the interval (the collector timeout) is 2 s, so the first
    // snapshot cannot exist for about 2 s after the listener is up.
    let vg = Vramguard::with_fake("init_hang_ms 3000\n[gpu]\n", "2s");
    let (status, _) = vg.get("/-/ready");
    assert_eq!(status, 503);
    assert_eq!(vg.get("/-/healthy").0, 200);
    let (status, body) = vg.get("/metrics");
    assert_eq!(status, 200);
    assert!(!Metrics::parse(&body).has("vramguard_gpus"), "no snapshot yet: {body}");
    vg.wait_ready();
    assert_eq!(vg.get("/-/ready").0, 200);
}

/// SIGTERM stops vramguard with exit status 0 within 2 s, also while the XID event thread is
/// waiting inside NVML.
#[test]
fn sigterm_exits_zero_quickly() {
    let mut vg = Vramguard::with_fake(&two_gpus(false, 1), "250ms");
    vg.wait_ready();
    vg.wait_until("the XID thread to wait", Duration::from_secs(10), || vg.logs().contains("watching XID events"));
    let (status, took) = vg.terminate(Duration::from_secs(5));
    let status = status.expect("vramguard exited");
    assert!(status.success(), "{status:?}; logs:\n{}", vg.logs());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(vg.logs().contains("stopped"));
}

/// The landing page links the endpoints; unknown paths get a JSON 404.
#[test]
fn landing_page_and_404() {
    let vg = Vramguard::with_fake(&two_gpus(false, 1), "250ms");
    let (status, body) = vg.get("/");
    assert_eq!(status, 200);
    for link in ["/metrics", "/-/healthy", "/-/ready"] {
        assert!(body.contains(&format!("href=\"{link}\"")), "{body}");
    }
    let (status, body) = vg.get("/no/such/path");
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["detail"].as_str().unwrap().contains("/no/such/path"));
}

/// Series whose values depend on the machine or the moment; the golden file leaves them out.
const VOLATILE: &[&str] = &[
    "process_",
    "vramguard_cpu_usage_ratio",
    "vramguard_memory_",
    "vramguard_cgroup_memory_limit_bytes",
    "vramguard_collector_duration_seconds",
    "vramguard_last_sample_timestamp_seconds",
    "vramguard_build_info",
    "vramguard_config_last_reload_success_timestamp_seconds",
];

/// Series whose labels are fixed but whose value is a time: the golden file keeps the line with
/// the value replaced.
const TIMESTAMPS: &[&str] = &["vramguard_gpu_xid_last_timestamp_seconds{"];

fn stable_lines(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let name = line.trim_start_matches("# HELP ").trim_start_matches("# TYPE ");
            !VOLATILE.iter().any(|v| name.starts_with(v))
        })
        .map(|l| match l.rsplit_once(' ') {
            Some((series, _)) if TIMESTAMPS.iter().any(|t| l.starts_with(t)) => format!("{series} <unix time>\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// The exposition for a fixed scenario matches tests/golden/two_gpus.metrics.
/// Regenerate with `UPDATE_GOLDEN=1 cargo test --test exporter golden`.
#[test]
fn golden_metrics() {
    let vg = Vramguard::with_fake(&two_gpus(false, 999_999_998), "250ms");
    vg.wait_ready();
    // The XID arrives on its own thread; the snapshot after it is the one to compare.
    let m = vg.wait_metrics("the scripted XID", Duration::from_secs(10), |m| m.has("vramguard_gpu_xid_errors_total"));
    let text = stable_lines(&m.text);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/two_gpus.metrics");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        eprintln!("updated {}", path.display());
        return;
    }
    let golden = std::fs::read_to_string(&path).expect("golden file exists (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(text, golden, "exposition differs from {}", path.display());
}

/// The live exposition passes `promtool check metrics` (promtool required when CI is set).
#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool on PATH (apt-get install prometheus)")]
fn promtool_accepts_exposition() {
    if !require_tool("promtool") {
        return;
    }
    let vg = Vramguard::with_fake(&two_gpus(false, std::process::id()), "250ms");
    vg.wait_ready();
    // Every series of the scenario, the XID's (delivered by the event thread) included.
    let text = vg
        .wait_metrics("the scripted XID", Duration::from_secs(10), |m| {
            m.has("vramguard_gpu_xid_last_timestamp_seconds") && m.has("vramguard_gpu_pcie_throughput_bytes_per_second")
        })
        .text;
    common::promtool_check_metrics(&text);
}

/// A reading the GPU does not support has no series at all; it is never reported as 0.
#[test]
fn unsupported_readings_are_omitted() {
    let vg = Vramguard::with_fake(
        "[gpu]\nmemory_total 8589934592\ntemperature unsupported\npower_mw unsupported\nutilization_gpu unsupported\n",
        "250ms",
    );
    vg.wait_ready();
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_gpus", &[]), Some(1.0));
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_memory_total_bytes", &[("gpu", "0")]), Some(8589934592.0));
    for absent in ["vramguard_gpu_temperature_celsius", "vramguard_gpu_power_watts", "vramguard_gpu_utilization_ratio"]
    {
        assert!(!m.has(absent), "{absent} should be omitted:\n{}", m.text);
    }
}

fn proc_stat_busy_idle() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal (guest is already counted in user)
    let idle = fields[3] + fields[4];
    let busy: u64 = fields[..8].iter().sum::<u64>() - idle;
    (busy, idle)
}

fn meminfo_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU and RAM agree with /proc. With every core kept busy, the very first sample reports a
/// busy machine, which the since-boot average of an idle CI box would not.
#[test]
fn host_metrics_match_proc() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let burners: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (b0, i0) = proc_stat_busy_idle();
    // The one test of the real host source: no scripted figures.
    let vg = Vramguard::start(
        "sample_interval: \"1s\"\nhost: { scripted_file: null }\ngpu: { enabled: false }\n",
        None,
        &[],
    );
    vg.wait_ready();
    let first = vg.metrics();
    let (b1, i1) = proc_stat_busy_idle();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    let proc_ratio = (b1 - b0) as f64 / ((b1 - b0) + (i1 - i0)).max(1) as f64;
    let cpu = first.value("vramguard_cpu_usage_ratio", &[]).unwrap();
    assert!(proc_ratio > 0.7, "burners did not load the machine: /proc/stat says {proc_ratio}");
    assert!(cpu > 0.7, "first sample reports {cpu} while /proc/stat says {proc_ratio}");

    let total = first.value("vramguard_memory_total_bytes", &[]).unwrap();
    assert_eq!(total, (meminfo_kib("MemTotal") * 1024) as f64);
    let available = first.value("vramguard_memory_available_bytes", &[]).unwrap();
    let proc_available = (meminfo_kib("MemAvailable") * 1024) as f64;
    assert!((available - proc_available).abs() / total < 0.05, "{available} vs {proc_available}");
    let used = first.value("vramguard_memory_used_bytes", &[]).unwrap();
    assert_eq!(used, total - available);
}

/// The shipped config.yaml on this GPU-less machine: CPU and RAM served, no GPU series,
/// `vramguard_gpus 0`, the gpu collector at 0, and promtool finds nothing to complain about.
#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool on PATH (apt-get install prometheus)")]
fn shipped_config_on_gpu_less_host() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.current_dir(dir.path()).arg("--config").arg(&config).args(["--listen", "127.0.0.1:0"]);
    let scenario = dir.path().join("no-scenario");
    let vg = Vramguard::spawn(cmd, dir, &scenario);
    vg.wait_ready();
    let m = vg.metrics();
    assert!(m.has("vramguard_cpu_usage_ratio"));
    assert!(m.value("vramguard_memory_total_bytes", &[]).unwrap() > 0.0);
    if m.value("vramguard_collector_success", &[("collector", "gpu")]) == Some(1.0) {
        eprintln!("SKIPPED GPU-less assertions: this machine has a working NVML");
    } else {
        assert_eq!(m.value("vramguard_gpus", &[]), Some(0.0));
        assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(0.0));
        assert!(!m.has("vramguard_gpu_info"));
    }
    if require_tool("promtool") {
        common::promtool_check_metrics(&m.text);
    }
}

//! The readings users of nvidia_gpu_exporter and dcgm-exporter expect (power limit, energy,
//! fans, memory bandwidth, video engines, PCIe, held-back time, performance state, XID times,
//! per-process SM load), end to end: the real binary, nvml-wrapper and the fake NVML.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{GIB, Vramguard};

const G0: [(&str, &str); 2] = [("gpu", "0"), ("uuid", "GPU-00000000-0000-0000-0000-000000000000")];
const G1: [(&str, &str); 2] = [("gpu", "1"), ("uuid", "GPU-00000000-0000-0000-0000-000000000001")];

/// Every series this file is about, by name.
const NEW_SERIES: [&str; 13] = [
    "vramguard_gpu_power_limit_watts",
    "vramguard_gpu_energy_joules_total",
    "vramguard_gpu_fan_speed_ratio",
    "vramguard_gpu_memory_bandwidth_utilization_ratio",
    "vramguard_gpu_encoder_utilization_ratio",
    "vramguard_gpu_decoder_utilization_ratio",
    "vramguard_gpu_pcie_throughput_bytes_per_second",
    "vramguard_gpu_pcie_link_generation",
    "vramguard_gpu_pcie_link_width",
    "vramguard_gpu_throttle_seconds_total",
    "vramguard_gpu_performance_state",
    "vramguard_gpu_xid_last_timestamp_seconds",
    "vramguard_gpu_process_sm_utilization_ratio",
];

/// GPU 0 reports everything, runs this test (35 % of the SMs) and an idle process; GPU 1 is a
/// fanless board that reports power and thermal held-back time only, and no process samples.
fn scenario(energy_mj: u64, power_ns: u64) -> String {
    let me = std::process::id();
    format!(
        "[gpu]\nmemory_total {}\nmemory_used {}\nutilization_gpu 80\nutilization_memory 20\n\
         process {me} {}\nprocess 999999999 {}\nprocess_sm {me} 35\n\
         power_limit_mw 320000\nenergy_mj {energy_mj}\nfans 45,50\nencoder_utilization 12\ndecoder_utilization 3\n\
         pcie_tx_kbps 1000\npcie_rx_kbps 250000\npcie_link_gen 4\npcie_link_width 16\npstate 2\n\
         violation_power_ns {power_ns}\nviolation_thermal_ns 250000000\nviolation_sync_boost_ns 0\n\
         violation_board_limit_ns 0\nviolation_low_utilization_ns 1000000000\nviolation_reliability_ns 0\n\
         xid 31 1\n\
         [gpu]\nmemory_total {}\nutilization_gpu 0\nutilization_memory 55\nfans none\npstate 8\n\
         violation_power_ns 0\nviolation_thermal_ns 0\nprocess_utilization unsupported\n",
        24 * GIB,
        4 * GIB,
        3 * GIB,
        GIB,
        48 * GIB,
    )
}

/// Each reading comes out in base units, with the labels the peers' users chart by; what a board
/// does not report has no series.
#[test]
fn every_reading_in_base_units() {
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let vg = Vramguard::with_fake(&scenario(123_456_789, 5_000_000_000), "250ms");
    vg.wait_ready();
    let m = vg.wait_metrics("the scripted XID", Duration::from_secs(10), |m| {
        m.has("vramguard_gpu_xid_last_timestamp_seconds")
    });
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let with = |g: [(&'static str, &'static str); 2], k: &'static str, v: &'static str| [g[0], g[1], (k, v)];
    assert_eq!(m.value("vramguard_gpu_power_limit_watts", &G0), Some(320.0));
    assert_eq!(m.value("vramguard_gpu_energy_joules_total", &G0), Some(123_456.789));
    assert_eq!(m.value("vramguard_gpu_fan_speed_ratio", &with(G0, "fan", "0")), Some(0.45));
    assert_eq!(m.value("vramguard_gpu_fan_speed_ratio", &with(G0, "fan", "1")), Some(0.5));
    assert_eq!(m.value("vramguard_gpu_memory_bandwidth_utilization_ratio", &G0), Some(0.2));
    assert_eq!(m.value("vramguard_gpu_memory_bandwidth_utilization_ratio", &G1), Some(0.55));
    assert_eq!(m.value("vramguard_gpu_encoder_utilization_ratio", &G0), Some(0.12));
    assert_eq!(m.value("vramguard_gpu_decoder_utilization_ratio", &G0), Some(0.03));
    let pcie = "vramguard_gpu_pcie_throughput_bytes_per_second";
    assert_eq!(m.value(pcie, &with(G0, "direction", "tx")), Some(1_024_000.0));
    assert_eq!(m.value(pcie, &with(G0, "direction", "rx")), Some(256_000_000.0));
    assert_eq!(m.value("vramguard_gpu_pcie_link_generation", &G0), Some(4.0));
    assert_eq!(m.value("vramguard_gpu_pcie_link_width", &G0), Some(16.0));
    let held = "vramguard_gpu_throttle_seconds_total";
    assert_eq!(m.value(held, &with(G0, "reason", "power")), Some(5.0));
    assert_eq!(m.value(held, &with(G0, "reason", "thermal")), Some(0.25));
    assert_eq!(m.value(held, &with(G0, "reason", "low_utilization")), Some(1.0));
    assert_eq!(m.find(held, &G0).len(), 6, "{}", m.text);
    assert_eq!(m.value("vramguard_gpu_performance_state", &G0), Some(2.0));
    assert_eq!(m.value("vramguard_gpu_performance_state", &G1), Some(8.0));
    let xid_at = m.value("vramguard_gpu_xid_last_timestamp_seconds", &with(G0, "xid", "31")).unwrap();
    assert!((before - 1.0..=after + 1.0).contains(&xid_at), "{before} <= {xid_at} <= {after}");
    // Per-process SM load: this test's 35 %, and 0 for the process NVML sampled no activity of.
    let me = std::process::id().to_string();
    let sm = "vramguard_gpu_process_sm_utilization_ratio";
    assert_eq!(m.value(sm, &[G0[0], ("pid", &me)]), Some(0.35));
    assert_eq!(m.value(sm, &[G0[0], ("pid", "999999999")]), Some(0.0));
    // GPU 1: no fans, no power limit, energy, video engines or PCIe traffic, two reasons only.
    for absent in [
        "vramguard_gpu_fan_speed_ratio",
        "vramguard_gpu_power_limit_watts",
        "vramguard_gpu_energy_joules_total",
        "vramguard_gpu_encoder_utilization_ratio",
        pcie,
        "vramguard_gpu_pcie_link_width",
    ] {
        assert!(m.find(absent, &G1).is_empty(), "{absent} on GPU 1:\n{}", m.text);
    }
    assert_eq!(m.find(held, &G1).len(), 2, "{}", m.text);
    assert_eq!(m.value("vramguard_gpu_healthy", &G0), Some(1.0));

    // The same figures in the stats answer, null where the board has none.
    let (status, stats) = vg.get_json("/api/v1/system/stats");
    assert_eq!(status, 200);
    let g0 = &stats["gpus"][0];
    assert_eq!(g0["power_limit_w"], 320.0);
    assert_eq!(g0["energy_j"], 123_456.8);
    assert_eq!(g0["fan_percent"], 50.0);
    assert_eq!(g0["encoder_percent"], 12.0);
    assert_eq!(g0["decoder_percent"], 3.0);
    assert_eq!(g0["pcie_tx_bytes_per_s"], 1_024_000.0);
    assert_eq!(g0["pcie_rx_bytes_per_s"], 256_000_000.0);
    assert_eq!(g0["pstate"], 2);
    let g1 = &stats["gpus"][1];
    for null in ["power_limit_w", "energy_j", "fan_percent", "encoder_percent", "pcie_tx_bytes_per_s"] {
        assert!(g1[null].is_null(), "{null}: {g1}");
    }
    assert_eq!(g1["pstate"], 8);
}

/// A board that supports none of the readings (the fake's defaults) exposes none of their
/// series, its stats fields are null, and it stays healthy. It runs a process (whose VRAM is
/// published, but no SM load: the board does not sample processes, and that is not 0) and has an
/// XID scripted that it cannot report (no event registration, so no XID time either).
#[test]
fn a_board_without_any_of_them() {
    let vg = Vramguard::with_fake(
        "[gpu]\nmemory_total 8589934592\nutilization_gpu unsupported\nprocess 4242 1073741824\n\
         xid_events unsupported\nxid 31 1\n",
        "250ms",
    );
    vg.wait_ready();
    // A few passes, so an XID thread or a later reading would have had time to show.
    vg.wait_metrics("the process's VRAM", Duration::from_secs(5), |m| {
        m.value("vramguard_gpu_process_memory_used_bytes", &[("pid", "4242")]) == Some(GIB as f64)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_healthy", &[("gpu", "0")]), Some(1.0));
    assert_eq!(m.value("vramguard_gpu_process_memory_used_bytes", &[("pid", "4242")]), Some(GIB as f64));
    for absent in NEW_SERIES {
        assert!(!m.has(absent), "{absent} should be omitted:\n{}", m.text);
    }
    let (_, stats) = vg.get_json("/api/v1/system/stats");
    let g = &stats["gpus"][0];
    for null in [
        "power_limit_w",
        "energy_j",
        "fan_percent",
        "encoder_percent",
        "decoder_percent",
        "pcie_tx_bytes_per_s",
        "pcie_rx_bytes_per_s",
        "pstate",
    ] {
        assert!(g.as_object().unwrap().contains_key(null) && g[null].is_null(), "{null}: {g}");
    }
}

/// Per-process SM load is the mean of NVML's samples of the process since the previous pass
/// (two samples, 20 % and 60 %: 0.4), and a process that turns busy between nvml-wrapper's
/// count and its read (NVML's INSUFFICIENT_SIZE, scripted on every pass) does not cost the pass
/// its reading.
#[test]
fn process_sm_load_is_the_mean_of_the_samples_and_survives_a_race() {
    let vg = Vramguard::with_fake(
        "[gpu]\nmemory_total 8589934592\nutilization_gpu 50\nprocess 4242 1073741824\nprocess 4343 1073741824\n\
         process_sm 4242 20\nprocess_sm 4242 60\nprocess_sm_race 1\n",
        "250ms",
    );
    vg.wait_ready();
    std::thread::sleep(Duration::from_millis(600));
    let m = vg.metrics();
    let sm = "vramguard_gpu_process_sm_utilization_ratio";
    assert_eq!(m.value(sm, &[("pid", "4242")]), Some(0.4), "{}", m.text);
    assert_eq!(m.value(sm, &[("pid", "4343")]), Some(0.0), "{}", m.text);
}

/// A real driver waits 20 ms per direction for each PCIe reading. With 8 GPUs at 100 ms each
/// (1.6 s of PCIe waiting per pass if every GPU were read every pass, past the 500 ms timeout)
/// the collector keeps succeeding, and every GPU's throughput appears within a few passes.
#[test]
fn slow_pcie_readings_do_not_stall_the_sampler() {
    let gpu = "[gpu]\nmemory_total 8589934592\nutilization_gpu 10\npcie_tx_kbps 1000\npcie_rx_kbps 2000\npcie_window_ms 100\n";
    let vg = Vramguard::with_fake(&gpu.repeat(8), "250ms");
    vg.wait_ready();
    let pcie = "vramguard_gpu_pcie_throughput_bytes_per_second";
    let m = vg.wait_metrics("every GPU's PCIe reading", Duration::from_secs(15), |m| {
        m.find(pcie, &[("direction", "rx")]).len() == 8
    });
    for gpu in 0..8 {
        let index = gpu.to_string();
        assert_eq!(m.value(pcie, &[("gpu", &index), ("direction", "tx")]), Some(1_024_000.0));
    }
    // Several more passes: none timed out.
    std::thread::sleep(Duration::from_secs(2));
    let m = vg.metrics();
    assert_eq!(m.value("vramguard_collector_success", &[("collector", "gpu")]), Some(1.0), "{}", m.text);
    let last = m.value("vramguard_collector_duration_seconds", &[("collector", "gpu")]).unwrap();
    assert!(last < 0.5, "a pass took {last} s");
}

/// Energy and held-back time never go down while vramguard runs, even when NVML's counters
/// start again from 0 (a driver reload): the count before the drop is carried.
#[test]
fn counters_never_go_down_across_a_driver_reload() {
    let energy = |m: &common::Metrics| m.value("vramguard_gpu_energy_joules_total", &G0);
    let power = |m: &common::Metrics| m.value("vramguard_gpu_throttle_seconds_total", &[G0[0], ("reason", "power")]);
    let vg = Vramguard::with_fake(&scenario(1_000_000, 4_000_000_000), "250ms");
    vg.wait_ready();
    vg.wait_metrics("the first counts", Duration::from_secs(5), |m| energy(m) == Some(1000.0));
    vg.set_scenario(&scenario(1_500_000, 6_000_000_000));
    vg.wait_metrics("the counts to grow", Duration::from_secs(5), |m| energy(m) == Some(1500.0));
    // The driver reloads: NVML counts from 0 again.
    vg.set_scenario(&scenario(200_000, 500_000_000));
    let m = vg.wait_metrics("the counts after the reload", Duration::from_secs(5), |m| energy(m) != Some(1500.0));
    assert_eq!(energy(&m), Some(1700.0), "{}", m.text);
    assert_eq!(power(&m), Some(6.5), "{}", m.text);
    vg.set_scenario(&scenario(300_000, 1_000_000_000));
    let m = vg.wait_metrics("the counts to grow again", Duration::from_secs(5), |m| energy(m) != Some(1700.0));
    assert_eq!(energy(&m), Some(1800.0));
    assert_eq!(power(&m), Some(7.0));
}

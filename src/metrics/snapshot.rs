//! The series of one snapshot: the host, each GPU (identity, load, VRAM, temperature, power,
//! processes), their fault readings ([`super::faults`]), the peers' readings
//! ([`super::telemetry`]) and the collectors. Unavailable
//! readings produce no sample.

use super::family::{Family, family, sample};
use super::{faults, telemetry};
use crate::snapshot::{HostStats, Snapshot};

/// Series derived from one snapshot. Unavailable readings produce no sample.
pub(super) fn snapshot_families(s: &Snapshot) -> Vec<Family> {
    let mut out = s.host.as_ref().map(host_families).unwrap_or_default();
    out.push(family("vramguard_gpus", "Number of GPUs visible now.", vec![sample(&[], s.gpus.len() as f64)]));
    out.extend(gpu_families(s));
    out.extend(faults::families(s));
    out.extend(telemetry::families(s));
    out.extend(collector_families(s));
    out
}

fn host_families(h: &HostStats) -> Vec<Family> {
    let mut out = Vec::new();
    {
        out.push(family(
            "vramguard_cpu_usage_ratio",
            "Whole-machine CPU busy fraction over the last sample interval.",
            vec![sample(&[], h.cpu_usage_ratio)],
        ));
        out.push(family(
            "vramguard_memory_total_bytes",
            "RAM size in bytes.",
            vec![sample(&[], h.memory_total_bytes as f64)],
        ));
        out.push(family(
            "vramguard_memory_used_bytes",
            "RAM in use in bytes (total minus available).",
            vec![sample(&[], h.memory_used_bytes() as f64)],
        ));
        out.push(family(
            "vramguard_memory_available_bytes",
            "RAM available for new work in bytes.",
            vec![sample(&[], h.memory_available_bytes as f64)],
        ));
        if let Some(limit) = h.cgroup_memory_limit_bytes {
            out.push(family(
                "vramguard_cgroup_memory_limit_bytes",
                "Memory limit of vramguard's cgroup in bytes, when below host RAM.",
                vec![sample(&[], limit as f64)],
            ));
        }
    }
    out
}

/// Each GPU's identity, load, VRAM, temperature, power and processes.
fn gpu_families(s: &Snapshot) -> Vec<Family> {
    let mut out = Vec::new();
    let driver = s.driver_version.as_deref().unwrap_or("");
    let mut info = Vec::new();
    let mut util = Vec::new();
    let (mut total, mut used, mut free) = (Vec::new(), Vec::new(), Vec::new());
    let (mut temp, mut power, mut procs, mut proc_sm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for g in &s.gpus {
        let index = g.index.to_string();
        let id: [(&str, &str); 2] = [("gpu", &index), ("uuid", &g.uuid)];
        info.push(sample(
            &[
                ("gpu", &index),
                ("uuid", &g.uuid),
                ("name", g.name.as_deref().unwrap_or("")),
                ("pci_bus_id", g.pci_bus_id.as_deref().unwrap_or("")),
                ("driver_version", driver),
            ],
            1.0,
        ));
        if let Some(v) = g.utilization_ratio {
            util.push(sample(&id, v));
        }
        if let Some(m) = g.memory {
            total.push(sample(&id, m.total_bytes as f64));
            used.push(sample(&id, m.used_bytes as f64));
            free.push(sample(&id, m.free_bytes as f64));
        }
        if let Some(v) = g.temperature_celsius {
            temp.push(sample(&id, v));
        }
        if let Some(v) = g.power_watts {
            power.push(sample(&id, v));
        }
        for p in g.processes.iter().flatten() {
            let pid = p.pid.to_string();
            let labels = [
                ("gpu", index.as_str()),
                ("uuid", &g.uuid),
                ("pid", &pid),
                ("process", p.name.as_deref().unwrap_or("")),
            ];
            procs.push(sample(&labels, p.used_bytes as f64));
            if let Some(ratio) = p.sm_utilization_ratio {
                proc_sm.push(sample(&labels, ratio));
            }
        }
    }
    out.push(family("vramguard_gpu_info", "GPU identity; the value is always 1.", info));
    out.push(family("vramguard_gpu_utilization_ratio", "GPU SM busy fraction.", util));
    out.push(family("vramguard_gpu_memory_total_bytes", "VRAM capacity in bytes.", total));
    out.push(family("vramguard_gpu_memory_used_bytes", "VRAM allocated in bytes.", used));
    out.push(family("vramguard_gpu_memory_free_bytes", "VRAM free in bytes.", free));
    out.push(family("vramguard_gpu_temperature_celsius", "GPU core temperature in degrees Celsius.", temp));
    out.push(family("vramguard_gpu_power_watts", "GPU board power draw in watts.", power));
    out.push(family("vramguard_gpu_process_memory_used_bytes", "VRAM held by a compute process in bytes.", procs));
    out.push(family(
        "vramguard_gpu_process_sm_utilization_ratio",
        "SM busy fraction of a compute process since the previous sample, mean of NVML's samples (0 when none: idle).",
        proc_sm,
    ));
    out
}

fn collector_families(s: &Snapshot) -> Vec<Family> {
    let mut out = Vec::new();
    let mut success = Vec::new();
    let mut duration = Vec::new();
    for c in &s.collectors {
        success.push(sample(&[("collector", c.name)], if c.success { 1.0 } else { 0.0 }));
        duration.push(sample(&[("collector", c.name)], c.duration.as_secs_f64()));
    }
    out.push(family("vramguard_collector_success", "1 if the collector's last sample succeeded, else 0.", success));
    out.push(family("vramguard_collector_duration_seconds", "How long the collector's last sample took.", duration));
    out.push(family(
        "vramguard_last_sample_timestamp_seconds",
        "Unix time of the snapshot being served.",
        vec![sample(&[], s.timestamp_seconds())],
    ));
    out
}

//! Per-GPU fault series: ECC, row remapping, XIDs, clock event reasons, clocks and the fault
//! health verdict. A reading the board does not support has no series at all.

use super::family::{Family, counter, counter_family, family, push_some, sample};
use crate::snapshot::{Snapshot, THROTTLE_REASONS};

/// The fault families of one snapshot.
pub(super) fn families(s: &Snapshot) -> Vec<Family> {
    let (mut ecc, mut remapped, mut pending, mut failed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut xids, mut throttle, mut clocks, mut healthy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut xid_last = Vec::new();
    for g in &s.gpus {
        let index = g.index.to_string();
        let id: [(&str, &str); 2] = [("gpu", &index), ("uuid", &g.uuid)];
        let with = |key: &'static str, value: &'static str| [id[0], id[1], (key, value)];
        let f = &g.faults;
        push_some(&mut ecc, &with("type", "corrected"), f.ecc_corrected.map(|n| n as f64));
        push_some(&mut ecc, &with("type", "uncorrected"), f.ecc_uncorrected.map(|n| n as f64));
        if let Some(r) = f.remapped_rows {
            remapped.push(sample(&with("type", "correctable"), f64::from(r.correctable)));
            remapped.push(sample(&with("type", "uncorrectable"), f64::from(r.uncorrectable)));
            pending.push(sample(&id, f64::from(u8::from(r.pending))));
            failed.push(sample(&id, f64::from(u8::from(r.failed))));
        }
        for x in &f.xids {
            let code = x.xid.to_string();
            xids.push(counter(&[id[0], id[1], ("xid", &code)], x.count as f64));
            xid_last.push(sample(&[id[0], id[1], ("xid", &code)], crate::time::unix(x.last_seen)));
        }
        if let Some(bits) = f.throttle_reasons {
            for (reason, bit) in THROTTLE_REASONS {
                throttle.push(sample(&with("reason", reason), f64::from(u8::from(bits & bit != 0))));
            }
        }
        push_some(&mut clocks, &with("clock", "sm"), f.sm_clock_hz.map(|hz| hz as f64));
        push_some(&mut clocks, &with("clock", "memory"), f.memory_clock_hz.map(|hz| hz as f64));
        healthy.push(sample(&id, f64::from(u8::from(g.health.healthy))));
    }
    vec![
        counter_family(
            "vramguard_gpu_ecc_errors_total",
            "ECC errors since the driver loaded (NVML volatile counters), by corrected or uncorrected.",
            ecc,
        ),
        family(
            "vramguard_gpu_remapped_rows",
            "GPU memory rows remapped, by the kind of error that caused it.",
            remapped,
        ),
        family("vramguard_gpu_remap_pending", "1 while a row remap waits for a GPU reset.", pending),
        family("vramguard_gpu_remap_failed", "1 if a row remap failed (no spare rows left).", failed),
        counter_family(
            "vramguard_gpu_xid_errors_total",
            "XID error events seen since vramguard started, by XID code.",
            xids,
        ),
        family(
            "vramguard_gpu_xid_last_timestamp_seconds",
            "Unix time the latest XID error event of each code arrived.",
            xid_last,
        ),
        family(
            "vramguard_gpu_throttle_reason",
            "Clock event (throttle) reasons as a state set: 1 for each active reason.",
            throttle,
        ),
        family("vramguard_gpu_clock_hertz", "Current SM and memory clocks in hertz.", clocks),
        family(
            "vramguard_gpu_healthy",
            "1 if the GPU may take new work, 0 while a fault takes it out of placement.",
            healthy,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::snapshot::{GpuFaults, GpuHealth, GpuStats, RemappedRows, XidSeen};

    fn gpu(faults: GpuFaults, healthy: bool) -> GpuStats {
        GpuStats {
            index: 0,
            uuid: "GPU-0".to_owned(),
            name: None,
            pci_bus_id: None,
            utilization_ratio: None,
            memory: None,
            temperature_celsius: None,
            power_watts: None,
            processes: None,
            faults,
            telemetry: crate::snapshot::GpuTelemetry::default(),
            health: GpuHealth { healthy, ..GpuHealth::default() },
        }
    }

    fn render(g: GpuStats) -> String {
        let s = Snapshot::of_gpus(UNIX_EPOCH, vec![g]);
        crate::metrics::family::encode(families(&s))
    }

    #[test]
    fn every_reading_in_base_units() {
        let text = render(gpu(
            GpuFaults {
                ecc_corrected: Some(7),
                ecc_uncorrected: Some(1),
                remapped_rows: Some(RemappedRows { correctable: 2, uncorrectable: 1, pending: true, failed: false }),
                throttle_reasons: Some(0x40),
                sm_clock_hz: Some(1_980_000_000),
                memory_clock_hz: Some(2_619_000_000),
                xids: vec![XidSeen { xid: 79, count: 1, last_seen: UNIX_EPOCH + Duration::from_secs(1) }],
            },
            false,
        ));
        for line in [
            "# TYPE vramguard_gpu_ecc_errors_total counter",
            "vramguard_gpu_ecc_errors_total{gpu=\"0\",uuid=\"GPU-0\",type=\"corrected\"} 7",
            "vramguard_gpu_ecc_errors_total{gpu=\"0\",uuid=\"GPU-0\",type=\"uncorrected\"} 1",
            "vramguard_gpu_remapped_rows{gpu=\"0\",uuid=\"GPU-0\",type=\"uncorrectable\"} 1",
            "vramguard_gpu_remap_pending{gpu=\"0\",uuid=\"GPU-0\"} 1",
            "vramguard_gpu_remap_failed{gpu=\"0\",uuid=\"GPU-0\"} 0",
            "# TYPE vramguard_gpu_xid_errors_total counter",
            "vramguard_gpu_xid_errors_total{gpu=\"0\",uuid=\"GPU-0\",xid=\"79\"} 1",
            "vramguard_gpu_xid_last_timestamp_seconds{gpu=\"0\",uuid=\"GPU-0\",xid=\"79\"} 1",
            "vramguard_gpu_throttle_reason{gpu=\"0\",uuid=\"GPU-0\",reason=\"hw_thermal_slowdown\"} 1",
            "vramguard_gpu_throttle_reason{gpu=\"0\",uuid=\"GPU-0\",reason=\"gpu_idle\"} 0",
            "vramguard_gpu_clock_hertz{gpu=\"0\",uuid=\"GPU-0\",clock=\"sm\"} 1980000000",
            "vramguard_gpu_clock_hertz{gpu=\"0\",uuid=\"GPU-0\",clock=\"memory\"} 2619000000",
            "vramguard_gpu_healthy{gpu=\"0\",uuid=\"GPU-0\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    /// A board without ECC, remapping, clocks or throttle reasons has none of those series,
    /// and is healthy.
    #[test]
    fn unsupported_readings_have_no_series() {
        let text = render(gpu(GpuFaults::default(), true));
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
            ["vramguard_gpu_healthy{gpu=\"0\",uuid=\"GPU-0\"} 1"],
            "{text}"
        );
    }
}

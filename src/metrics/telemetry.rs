//! Per-GPU series that users of nvidia_gpu_exporter and dcgm-exporter chart and alert on: power
//! limit, energy, fans, memory-bandwidth and codec load, PCIe, held-back time and performance
//! state. A reading the board does not support has no series at all.

use super::family::{Family, counter, counter_family, family, push_some, sample};
use crate::snapshot::Snapshot;

/// The telemetry families of one snapshot.
pub(super) fn families(s: &Snapshot) -> Vec<Family> {
    let (mut limit, mut energy, mut fans, mut bandwidth) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut encoder, mut decoder, mut pcie, mut generation) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut width, mut throttle, mut pstate) = (Vec::new(), Vec::new(), Vec::new());
    for g in &s.gpus {
        let index = g.index.to_string();
        let id: [(&str, &str); 2] = [("gpu", &index), ("uuid", &g.uuid)];
        let t = &g.telemetry;
        let gauge = |into: &mut Vec<_>, value: Option<f64>| push_some(into, &id, value);
        gauge(&mut limit, t.power_limit_watts);
        gauge(&mut bandwidth, t.memory_bandwidth_ratio);
        gauge(&mut encoder, t.encoder_ratio);
        gauge(&mut decoder, t.decoder_ratio);
        gauge(&mut generation, t.pcie_link_generation.map(f64::from));
        gauge(&mut width, t.pcie_link_width.map(f64::from));
        gauge(&mut pstate, t.performance_state.map(f64::from));
        gauge(&mut energy, t.energy_joules);
        for (fan, ratio) in &t.fan_ratios {
            let fan = fan.to_string();
            fans.push(sample(&[id[0], id[1], ("fan", &fan)], *ratio));
        }
        for (direction, value) in [("tx", t.pcie_tx_bytes_per_second), ("rx", t.pcie_rx_bytes_per_second)] {
            push_some(&mut pcie, &[id[0], id[1], ("direction", direction)], value);
        }
        for (reason, seconds) in &t.throttle_seconds {
            throttle.push(counter(&[id[0], id[1], ("reason", reason)], *seconds));
        }
    }
    vec![
        family("vramguard_gpu_power_limit_watts", "Enforced GPU power limit in watts.", limit),
        counter_family(
            "vramguard_gpu_energy_joules_total",
            "Energy the GPU consumed since the driver loaded, in joules (kept monotonic across a driver reload while vramguard runs).",
            energy,
        ),
        family("vramguard_gpu_fan_speed_ratio", "Fan speed as a fraction of its maximum, by fan.", fans),
        family(
            "vramguard_gpu_memory_bandwidth_utilization_ratio",
            "Fraction of the last sample period during which GPU memory was being read or written.",
            bandwidth,
        ),
        family("vramguard_gpu_encoder_utilization_ratio", "Video encoder busy fraction.", encoder),
        family("vramguard_gpu_decoder_utilization_ratio", "Video decoder busy fraction.", decoder),
        family(
            "vramguard_gpu_pcie_throughput_bytes_per_second",
            "PCIe traffic in bytes per second over NVML's 20 ms window, by direction (tx: sent by the GPU).",
            pcie,
        ),
        family("vramguard_gpu_pcie_link_generation", "Current PCIe link generation.", generation),
        family("vramguard_gpu_pcie_link_width", "Current PCIe link width in lanes.", width),
        counter_family(
            "vramguard_gpu_throttle_seconds_total",
            "Seconds the GPU's clocks were held back since the driver loaded, by reason (NVML violation time).",
            throttle,
        ),
        family("vramguard_gpu_performance_state", "GPU performance state, 0 (P0, fastest) to 15.", pstate),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::snapshot::{GpuFaults, GpuHealth, GpuStats, GpuTelemetry};

    fn render(telemetry: GpuTelemetry) -> String {
        let g = GpuStats {
            index: 0,
            uuid: "GPU-0".to_owned(),
            name: None,
            pci_bus_id: None,
            utilization_ratio: None,
            memory: None,
            temperature_celsius: None,
            power_watts: None,
            processes: None,
            faults: GpuFaults::default(),
            telemetry,
            health: GpuHealth::default(),
        };
        let s = Snapshot::of_gpus(UNIX_EPOCH, vec![g]);
        crate::metrics::family::encode(families(&s))
    }

    #[test]
    fn every_reading_in_base_units() {
        let text = render(GpuTelemetry {
            power_limit_watts: Some(450.0),
            energy_joules: Some(123_456.789),
            fan_ratios: vec![(0, 0.45), (1, 0.5)],
            memory_bandwidth_ratio: Some(0.2),
            encoder_ratio: Some(0.1),
            decoder_ratio: Some(0.0),
            pcie_tx_bytes_per_second: Some(2048.0),
            pcie_rx_bytes_per_second: Some(1024.0),
            pcie_link_generation: Some(4),
            pcie_link_width: Some(16),
            throttle_seconds: vec![("power", 12.5), ("thermal", 0.0)],
            performance_state: Some(2),
        });
        for line in [
            "vramguard_gpu_power_limit_watts{gpu=\"0\",uuid=\"GPU-0\"} 450",
            "# TYPE vramguard_gpu_energy_joules_total counter",
            "vramguard_gpu_energy_joules_total{gpu=\"0\",uuid=\"GPU-0\"} 123456.789",
            "vramguard_gpu_fan_speed_ratio{gpu=\"0\",uuid=\"GPU-0\",fan=\"1\"} 0.5",
            "vramguard_gpu_memory_bandwidth_utilization_ratio{gpu=\"0\",uuid=\"GPU-0\"} 0.2",
            "vramguard_gpu_encoder_utilization_ratio{gpu=\"0\",uuid=\"GPU-0\"} 0.1",
            "vramguard_gpu_decoder_utilization_ratio{gpu=\"0\",uuid=\"GPU-0\"} 0",
            "vramguard_gpu_pcie_throughput_bytes_per_second{gpu=\"0\",uuid=\"GPU-0\",direction=\"tx\"} 2048",
            "vramguard_gpu_pcie_throughput_bytes_per_second{gpu=\"0\",uuid=\"GPU-0\",direction=\"rx\"} 1024",
            "vramguard_gpu_pcie_link_generation{gpu=\"0\",uuid=\"GPU-0\"} 4",
            "vramguard_gpu_pcie_link_width{gpu=\"0\",uuid=\"GPU-0\"} 16",
            "# TYPE vramguard_gpu_throttle_seconds_total counter",
            "vramguard_gpu_throttle_seconds_total{gpu=\"0\",uuid=\"GPU-0\",reason=\"power\"} 12.5",
            "vramguard_gpu_throttle_seconds_total{gpu=\"0\",uuid=\"GPU-0\",reason=\"thermal\"} 0",
            "vramguard_gpu_performance_state{gpu=\"0\",uuid=\"GPU-0\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    /// A board that supports none of them has none of their series (never a 0).
    #[test]
    fn unsupported_readings_have_no_series() {
        assert_eq!(render(GpuTelemetry::default()), "");
    }
}

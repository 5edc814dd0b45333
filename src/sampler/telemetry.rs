//! The readings other GPU exporters publish, on the collector's pass: power limit, energy, fans,
//! memory-bandwidth and codec load, PCIe traffic and link, held-back (violation) time,
//! performance state, and each process's SM load.
//!
//! Each reading goes through the GPU collector's `optional`, so a board that lacks one leaves it
//! `None` (or empty) and only a lost GPU fails the device.
//!
//! **Counters.** NVML's energy and violation times count from when the driver loaded, so a
//! driver reload under a running vramguard sends them back towards 0. Prometheus would read
//! that drop as a counter reset and cope, but the series would still go down between two
//! samples of the same vramguard. The reader therefore keeps, per GPU UUID and counter, the
//! last raw value and what it had reached before any reset: the published value is that
//! offset plus the raw one, and never goes down while vramguard runs. A restart of vramguard
//! starts again from NVML's raw figure, which Prometheus handles as the reset it is.
//!
//! **PCIe throughput.** A real driver answers `nvmlDeviceGetPcieThroughput` only after sampling
//! the link for 20 ms, per direction: 40 ms of waiting per GPU, 320 ms at 8 GPUs and past the
//! sampler's timeout beyond that. So a pass spends at most [`PCIE_BUDGET`] on it, taking the GPUs
//! whose reading is oldest first (at least one per pass), and every other GPU keeps its last
//! reading: on a box with many GPUs each figure is refreshed every few passes instead of every
//! pass, and no pass waits longer than the budget plus one GPU's window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::{PcieUtilCounter, PerformancePolicy, PerformanceState};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::gpu::{milliwatts_to_watts, optional, percent_to_ratio};
use crate::snapshot::{GpuStats, GpuTelemetry, VIOLATION_REASONS};

/// Longest a pass spends starting PCIe throughput reads (see the module's note): with a real
/// driver's 40 ms per GPU, three GPUs per pass.
const PCIE_BUDGET: Duration = Duration::from_millis(100);

/// NVML's violation policies, in the order of [`VIOLATION_REASONS`].
const POLICIES: [PerformancePolicy; 6] = [
    PerformancePolicy::Power,
    PerformancePolicy::Thermal,
    PerformancePolicy::SyncBoost,
    PerformancePolicy::BoardLimit,
    PerformancePolicy::LowUtilization,
    PerformancePolicy::Reliability,
];

/// State kept across passes: counter offsets and the newest process-utilization sample seen.
#[derive(Default)]
pub(super) struct TelemetryReader {
    /// (UUID, counter) → (last raw value, sum of the raw values reached before each reset).
    counters: HashMap<(String, &'static str), (u64, u64)>,
    /// UUID → newest process-utilization timestamp seen (µs), so each pass asks only for
    /// samples taken since the previous one.
    last_sample: HashMap<String, u64>,
    /// UUID → the last PCIe reading (TX, RX in bytes/s) and when it was taken.
    pcie: HashMap<String, Pcie>,
}

/// One GPU's last PCIe throughput reading.
struct Pcie {
    taken: Instant,
    tx: Option<f64>,
    rx: Option<f64>,
}

impl TelemetryReader {
    /// Every telemetry reading of `device`. `memory_busy` is NVML's memory utilization, already
    /// read with the SM utilization in one call.
    pub(super) fn read(
        &mut self,
        uuid: &str,
        device: &Device<'_>,
        memory_busy: Option<u32>,
    ) -> Result<GpuTelemetry, NvmlError> {
        let energy_mj = optional(device.total_energy_consumption())?;
        let mut throttle_seconds = Vec::new();
        for (reason, policy) in VIOLATION_REASONS.into_iter().zip(POLICIES) {
            if let Some(v) = optional(device.violation_status(policy))? {
                let ns = self.monotonic(uuid, reason, v.violation_time);
                throttle_seconds.push((reason, ns as f64 / 1e9));
            }
        }
        Ok(GpuTelemetry {
            power_limit_watts: optional(device.enforced_power_limit())?.map(milliwatts_to_watts),
            energy_joules: energy_mj.map(|mj| self.monotonic(uuid, "energy", mj) as f64 / 1000.0),
            fan_ratios: fans(device)?,
            memory_bandwidth_ratio: memory_busy.map(percent_to_ratio),
            encoder_ratio: optional(device.encoder_utilization())?.map(|u| percent_to_ratio(u.utilization)),
            decoder_ratio: optional(device.decoder_utilization())?.map(|u| percent_to_ratio(u.utilization)),
            // Filled in by `pcie` once every GPU has been read.
            pcie_tx_bytes_per_second: None,
            pcie_rx_bytes_per_second: None,
            pcie_link_generation: optional(device.current_pcie_link_gen())?,
            pcie_link_width: optional(device.current_pcie_link_width())?,
            throttle_seconds,
            performance_state: optional(device.performance_state())?.and_then(pstate_number),
        })
    }

    /// Each process's SM busy fraction since the previous pass, by pid: the mean of NVML's
    /// samples of it taken since then (NVML samples every ~167 ms). `None` when the board does
    /// not sample per-process utilization. A pid without a sample was idle (NVML keeps samples
    /// of busy processes only), so callers read a missing pid as 0.
    pub(super) fn process_sm(
        &mut self,
        uuid: &str,
        device: &Device<'_>,
    ) -> Result<Option<HashMap<u32, f64>>, NvmlError> {
        let since = self.last_sample.get(uuid).copied();
        let mut result = device.process_utilization_stats(since);
        if matches!(result, Err(NvmlError::InsufficientSize(_))) {
            // A process became busy between nvml-wrapper's count and its read: ask again once.
            result = device.process_utilization_stats(since);
        }
        let samples = match result {
            Ok(samples) => samples,
            // NVML's answer when no process was busy since `since`.
            Err(NvmlError::NotFound) => return Ok(Some(HashMap::new())),
            Err(e) => {
                // Unsupported (or still racing): no reading; a lost GPU: the device fails.
                optional::<()>(Err(e))?;
                return Ok(None);
            }
        };
        let mut sums: HashMap<u32, (u32, u32)> = HashMap::new();
        for s in &samples {
            let (total, n) = sums.entry(s.pid).or_insert((0, 0));
            *total += s.sm_util.min(100);
            *n += 1;
        }
        if let Some(latest) = samples.iter().map(|s| s.timestamp).max() {
            self.last_sample.insert(uuid.to_owned(), latest);
        }
        Ok(Some(sums.into_iter().map(|(pid, (total, n))| (pid, f64::from(total) / f64::from(n) / 100.0)).collect()))
    }

    /// Fills every GPU's PCIe throughput: fresh readings for the GPUs read longest ago, as many
    /// as [`PCIE_BUDGET`] allows (at least one), the last reading for the rest. A GPU's
    /// reading that fails is no reading; a lost GPU shows on the next pass's other calls.
    pub(super) fn pcie(&mut self, nvml: &Nvml, gpus: &mut [GpuStats]) {
        self.pcie.retain(|uuid, _| gpus.iter().any(|g| &g.uuid == uuid));
        let mut order: Vec<usize> = (0..gpus.len()).collect();
        order.sort_by_key(|&i| self.pcie.get(&gpus[i].uuid).map(|p| p.taken));
        let start = Instant::now();
        for (n, i) in order.into_iter().enumerate() {
            if n > 0 && start.elapsed() >= PCIE_BUDGET {
                break;
            }
            let Ok(device) = nvml.device_by_index(gpus[i].index) else { continue };
            let read = |counter| optional(device.pcie_throughput(counter)).ok().flatten().map(kib_per_second);
            let tx = read(PcieUtilCounter::Send);
            let rx = read(PcieUtilCounter::Receive);
            self.pcie.insert(gpus[i].uuid.clone(), Pcie { taken: Instant::now(), tx, rx });
        }
        for g in gpus {
            if let Some(p) = self.pcie.get(&g.uuid) {
                g.telemetry.pcie_tx_bytes_per_second = p.tx;
                g.telemetry.pcie_rx_bytes_per_second = p.rx;
            }
        }
    }

    /// `raw` made monotonic across resets of NVML's counter (see the module's note).
    fn monotonic(&mut self, uuid: &str, counter: &'static str, raw: u64) -> u64 {
        let (last, before) = self.counters.entry((uuid.to_owned(), counter)).or_insert((raw, 0));
        if raw < *last {
            *before += *last;
        }
        *last = raw;
        *before + raw
    }
}

/// Each fan's speed by fan index; a board without fans (0) or without the query has none. One
/// unreadable fan costs its own series only.
fn fans(device: &Device<'_>) -> Result<Vec<(u32, f64)>, NvmlError> {
    let count = optional(device.num_fans())?.unwrap_or(0);
    let mut out = Vec::with_capacity(count as usize);
    for fan in 0..count {
        if let Some(percent) = optional(device.fan_speed(fan))? {
            out.push((fan, percent_to_ratio(percent)));
        }
    }
    Ok(out)
}

/// NVML documents PCIe throughput as KB/s; a KB is taken as 1024 bytes (docs/metrics.md).
fn kib_per_second(kib: u32) -> f64 {
    f64::from(kib) * 1024.0
}

/// P0 … P15 as a number; unknown is no reading.
fn pstate_number(state: PerformanceState) -> Option<u8> {
    use PerformanceState::*;
    let n = match state {
        Zero => 0,
        One => 1,
        Two => 2,
        Three => 3,
        Four => 4,
        Five => 5,
        Six => 6,
        Seven => 7,
        Eight => 8,
        Nine => 9,
        Ten => 10,
        Eleven => 11,
        Twelve => 12,
        Thirteen => 13,
        Fourteen => 14,
        Fifteen => 15,
        Unknown => return None,
    };
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_never_go_down_across_a_reset() {
        let mut r = TelemetryReader::default();
        assert_eq!(r.monotonic("GPU-0", "energy", 1000), 1000);
        assert_eq!(r.monotonic("GPU-0", "energy", 1500), 1500);
        // The driver reloaded: NVML starts again from 0.
        assert_eq!(r.monotonic("GPU-0", "energy", 200), 1700);
        assert_eq!(r.monotonic("GPU-0", "energy", 300), 1800);
        // Each GPU and counter on its own.
        assert_eq!(r.monotonic("GPU-1", "energy", 50), 50);
        assert_eq!(r.monotonic("GPU-0", "power", 7), 7);
    }

    #[test]
    fn units() {
        assert_eq!(kib_per_second(2), 2048.0);
        assert_eq!(pstate_number(PerformanceState::Zero), Some(0));
        assert_eq!(pstate_number(PerformanceState::Fifteen), Some(15));
        assert_eq!(pstate_number(PerformanceState::Unknown), None);
    }
}

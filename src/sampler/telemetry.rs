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

use std::collections::HashMap;

use nvml_wrapper::Device;
use nvml_wrapper::enum_wrappers::device::{PcieUtilCounter, PerformancePolicy, PerformanceState};
use nvml_wrapper::error::NvmlError;

use super::gpu::{milliwatts_to_watts, optional, percent_to_ratio};
use crate::snapshot::{GpuTelemetry, VIOLATION_REASONS};

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
            pcie_tx_bytes_per_second: optional(device.pcie_throughput(PcieUtilCounter::Send))?.map(kib_per_second),
            pcie_rx_bytes_per_second: optional(device.pcie_throughput(PcieUtilCounter::Receive))?.map(kib_per_second),
            pcie_link_generation: optional(device.current_pcie_link_gen())?,
            pcie_link_width: optional(device.current_pcie_link_width())?,
            throttle_seconds,
            performance_state: optional(device.performance_state())?.and_then(pstate_number),
        })
    }

    /// Each process's SM busy fraction since the previous pass, by pid: `None` when the board
    /// does not sample per-process utilization. A pid without a sample was idle (NVML keeps
    /// samples of busy processes only), so callers read a missing pid as 0.
    pub(super) fn process_sm(
        &mut self,
        uuid: &str,
        device: &Device<'_>,
    ) -> Result<Option<HashMap<u32, f64>>, NvmlError> {
        let since = self.last_sample.get(uuid).copied();
        let samples = match device.process_utilization_stats(since) {
            Ok(samples) => samples,
            // NVML's answer when no process was busy since `since`.
            Err(NvmlError::NotFound) => return Ok(Some(HashMap::new())),
            Err(e) => {
                // Unsupported: no reading; a lost GPU: the device fails.
                optional::<()>(Err(e))?;
                return Ok(None);
            }
        };
        let mut newest: HashMap<u32, (u64, f64)> = HashMap::new();
        for s in &samples {
            let entry = newest.entry(s.pid).or_insert((0, 0.0));
            if s.timestamp >= entry.0 {
                *entry = (s.timestamp, percent_to_ratio(s.sm_util));
            }
        }
        if let Some(latest) = samples.iter().map(|s| s.timestamp).max() {
            self.last_sample.insert(uuid.to_owned(), latest);
        }
        Ok(Some(newest.into_iter().map(|(pid, (_, ratio))| (pid, ratio)).collect()))
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

/// NVML reports PCIe throughput in KiB/s.
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

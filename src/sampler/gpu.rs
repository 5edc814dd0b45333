//! GPU collector: per-GPU identity, utilization, VRAM, temperature, power, per-process VRAM,
//! fault readings (`faults.rs`) and the peers' readings (`telemetry.rs`) through nvml-wrapper,
//! plus the XID counts of the event thread (`xid.rs`).
//!
//! "No NVML here" is a state, not an error: the collector reports failure (so
//! `vramguard_collector_success{collector="gpu"}` is 0) and logs once at info. NVML is
//! (re-)initialised with exponential backoff, both when it could not be loaded and when a GPU
//! fell off the bus, so a recovered driver or GPU comes back without a restart. GPUs that still
//! answer keep being served while another one is lost.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::procfs::ProcReader;
use super::telemetry::TelemetryReader;
use super::topology::TopologyReader;
use super::xid::XidWatcher;
use super::{Collector, GpuReading, Reading, faults};
use crate::snapshot::{GpuHealth, GpuMemory, GpuProcess, GpuStats};

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// NVML handle plus the retry schedule.
pub(crate) struct GpuCollector {
    library: Option<PathBuf>,
    per_process: bool,
    nvml: Option<Nvml>,
    next_attempt: Instant,
    backoff: Duration,
    last_init_error: Option<String>,
    xids: XidWatcher,
    procs: ProcReader,
    telemetry: TelemetryReader,
    topology: TopologyReader,
}

impl GpuCollector {
    /// A collector that loads NVML on its first pass (`library` overrides the search path).
    pub(crate) fn new(library: Option<PathBuf>, per_process: bool) -> Self {
        Self {
            per_process,
            nvml: None,
            next_attempt: Instant::now(),
            backoff: BACKOFF_START,
            last_init_error: None,
            xids: XidWatcher::new(library.clone()),
            procs: ProcReader::default(),
            telemetry: TelemetryReader::default(),
            topology: TopologyReader::default(),
            library,
        }
    }

    /// One pass over every GPU.
    fn read(&mut self) -> Result<GpuReading, String> {
        if self.nvml.is_none() {
            if Instant::now() < self.next_attempt {
                return Err(self.last_init_error.clone().unwrap_or_else(|| "NVML not initialised".to_owned()));
            }
            match self.init() {
                Ok(nvml) => self.nvml = Some(nvml),
                Err(e) => {
                    self.schedule_retry();
                    return Err(e);
                }
            }
        }
        let nvml = self.nvml.as_ref().expect("initialised above");
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                // The library itself stopped answering: start over with a fresh init.
                self.nvml = None;
                self.schedule_retry();
                return Err(format!("nvmlDeviceGetCount failed: {e}"));
            }
        };
        let mut reading = read_all(nvml, count, self.per_process, &mut self.procs, &mut self.telemetry);
        if reading.partial_error.is_none() {
            self.backoff = BACKOFF_START;
            self.next_attempt = Instant::now();
        } else if Instant::now() >= self.next_attempt {
            // A lost GPU may only come back after NVML is re-initialised (as after a driver
            // reset). The old handle stays in use until the new one is up, so healthy GPUs are
            // never missing from a snapshot because of the retry.
            self.schedule_retry();
            if let Ok(fresh) = self.init() {
                self.nvml = Some(fresh);
                let nvml = self.nvml.as_ref().expect("set just now");
                if let Ok(count) = nvml.device_count() {
                    reading = read_all(nvml, count, self.per_process, &mut self.procs, &mut self.telemetry);
                }
            }
        }
        if let Some(nvml) = &self.nvml {
            reading.topology = self.topology.read(nvml, &reading.gpus);
        }
        let uuids: Vec<String> = reading.gpus.iter().map(|g| g.uuid.clone()).collect();
        self.xids.follow(&uuids);
        for g in &mut reading.gpus {
            g.faults.xids = self.xids.seen(&g.uuid);
        }
        Ok(reading)
    }

    /// Loads and initialises NVML, logging a change of state once rather than every attempt.
    fn init(&mut self) -> Result<Nvml, String> {
        let mut builder = Nvml::builder();
        if let Some(lib) = &self.library {
            builder.lib_path(OsStr::new(lib.as_os_str()));
        }
        match builder.init() {
            Ok(nvml) => {
                if self.last_init_error.take().is_some() {
                    tracing::info!("NVML initialised; GPU metrics available again");
                }
                Ok(nvml)
            }
            Err(e) => {
                let absent = matches!(e, NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound);
                let message = if absent {
                    format!("NVML library not found ({e}); running as a GPU-less host")
                } else {
                    format!("NVML initialisation failed: {e}")
                };
                if self.last_init_error.as_deref() != Some(message.as_str()) {
                    if absent {
                        tracing::info!(library = ?self.library, "{message}");
                    } else {
                        tracing::warn!(library = ?self.library, "{message}; retrying with backoff");
                    }
                }
                self.last_init_error = Some(message.clone());
                Err(message)
            }
        }
    }

    fn schedule_retry(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

fn read_all(
    nvml: &Nvml,
    count: u32,
    per_process: bool,
    procs: &mut ProcReader,
    telemetry: &mut TelemetryReader,
) -> GpuReading {
    let mut reading = GpuReading { driver_version: nvml.sys_driver_version().ok(), ..GpuReading::default() };
    let mut failed = Vec::new();
    procs.begin_pass();
    for index in 0..count {
        match read_device(nvml, index, per_process, procs, telemetry) {
            Ok(gpu) => reading.gpus.push(gpu),
            Err(e) => failed.push(format!("GPU {index}: {e}")),
        }
    }
    telemetry.pcie(nvml, &mut reading.gpus);
    if !failed.is_empty() {
        reading.partial_error = Some(failed.join("; "));
    }
    reading
}

/// Reads one device. Identity or a lost GPU fails the device; any single reading that is not
/// supported is left out and the rest is kept.
fn read_device(
    nvml: &Nvml,
    index: u32,
    per_process: bool,
    procs: &mut ProcReader,
    telemetry: &mut TelemetryReader,
) -> Result<GpuStats, NvmlError> {
    let device = nvml.device_by_index(index)?;
    let uuid = device.uuid()?;
    let utilization = optional(device.utilization_rates())?;
    let memory = optional(device.memory_info())?.map(|m| GpuMemory {
        total_bytes: m.total,
        used_bytes: m.used,
        free_bytes: m.free,
    });
    let processes = if per_process {
        let sm = telemetry.process_sm(&uuid, &device)?;
        optional(device.running_compute_processes())?.map(|running| {
            running
                .into_iter()
                .filter_map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => {
                        let (name, lineage) = procs.lineage(p.pid);
                        let sm_utilization_ratio = sm.as_ref().map(|by_pid| by_pid.get(&p.pid).copied().unwrap_or(0.0));
                        Some(GpuProcess { pid: p.pid, name, used_bytes: bytes, lineage, sm_utilization_ratio })
                    }
                    // NVML cannot see this process's memory (e.g. under some virtualisation):
                    // omit it rather than report 0.
                    UsedGpuMemory::Unavailable => None,
                })
                .collect()
        })
    } else {
        None
    };
    let telemetry = telemetry.read(&uuid, &device, utilization.as_ref().map(|u| u.memory))?;
    Ok(GpuStats {
        index,
        uuid,
        name: optional(device.name())?,
        pci_bus_id: optional(device.pci_info())?.map(|p| p.bus_id),
        utilization_ratio: utilization.as_ref().map(|u| percent_to_ratio(u.gpu)),
        memory,
        temperature_celsius: optional(device.temperature(TemperatureSensor::Gpu))?.map(f64::from),
        power_watts: optional(device.power_usage())?.map(milliwatts_to_watts),
        processes,
        faults: faults::read(nvml, &device)?,
        telemetry,
        // Judged by the sampler once the snapshot is complete.
        health: GpuHealth::default(),
    })
}

/// Turns "this reading is not available" into `None` and keeps real failures as errors.
pub(super) fn optional<T>(r: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(
            NvmlError::NotSupported
            | NvmlError::NoPermission
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::NoData,
        ) => Ok(None),
        Err(e @ (NvmlError::GpuLost | NvmlError::Uninitialized | NvmlError::DriverNotLoaded)) => Err(e),
        // Anything else on one reading (an unexpected code, a bad string) costs that reading only.
        Err(e) => {
            tracing::debug!(error = %e, "NVML reading unavailable");
            Ok(None)
        }
    }
}

/// NVML reports utilization in whole percent.
pub(crate) fn percent_to_ratio(percent: u32) -> f64 {
    f64::from(percent.min(100)) / 100.0
}

/// NVML reports power in milliwatts.
pub(crate) fn milliwatts_to_watts(mw: u32) -> f64 {
    f64::from(mw) / 1000.0
}

impl Collector for GpuCollector {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn collect(&mut self) -> Result<Reading, String> {
        self.read().map(Reading::Gpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_conversions() {
        assert_eq!(percent_to_ratio(0), 0.0);
        assert_eq!(percent_to_ratio(35), 0.35);
        assert_eq!(percent_to_ratio(100), 1.0);
        assert_eq!(percent_to_ratio(250), 1.0);
        assert_eq!(milliwatts_to_watts(215_500), 215.5);
        assert_eq!(milliwatts_to_watts(0), 0.0);
    }

    #[test]
    fn unsupported_readings_are_absent_but_lost_gpu_is_an_error() {
        assert_eq!(optional::<u32>(Err(NvmlError::NotSupported)).unwrap(), None);
        assert_eq!(optional(Ok(5u32)).unwrap(), Some(5));
        assert!(matches!(optional::<u32>(Err(NvmlError::GpuLost)), Err(NvmlError::GpuLost)));
    }

    #[test]
    fn missing_library_fails_cleanly_and_backs_off() {
        let mut c = GpuCollector::new(Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")), true);
        let err = c.read().unwrap_err();
        assert!(err.contains("GPU-less"), "{err}");
        // Within the backoff window the same reason comes back without another load attempt.
        assert_eq!(c.read().unwrap_err(), err);
        assert!(c.backoff > BACKOFF_START);
    }
}

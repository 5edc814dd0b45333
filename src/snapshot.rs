//! The immutable picture of the machine that the sampler publishes and everyone else reads.
//! Plain data only: no handles, no I/O. A reading that could not be taken is `None` and is
//! omitted downstream, never turned into 0.

use std::time::{Duration, SystemTime};

/// One sample of the whole machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When the sample was taken.
    pub taken_at: SystemTime,
    /// Host readings; `None` when the host collector failed this time.
    pub host: Option<HostStats>,
    /// GPUs that answered, ordered by NVML index. Lost GPUs are absent.
    pub gpus: Vec<GpuStats>,
    /// NVML driver version, when NVML is loaded.
    pub driver_version: Option<String>,
    /// How each collector fared; a disabled collector is absent.
    pub collectors: Vec<CollectorStatus>,
}

/// Host CPU and memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStats {
    /// Busy fraction of all CPUs since the previous sample (0–1).
    pub cpu_usage_ratio: f64,
    /// RAM size, bytes.
    pub memory_total_bytes: u64,
    /// RAM available for new work, bytes.
    pub memory_available_bytes: u64,
    /// The cgroup memory limit, when one applies and is below host RAM.
    pub cgroup_memory_limit_bytes: Option<u64>,
}

impl HostStats {
    /// RAM in use: total − available (what `free` calls used, plus reclaimable caches excluded).
    pub fn memory_used_bytes(&self) -> u64 {
        self.memory_total_bytes.saturating_sub(self.memory_available_bytes)
    }

    /// RAM in use as a fraction of RAM size (0–1): what the RAM threshold is compared with.
    pub fn memory_used_ratio(&self) -> f64 {
        self.memory_used_bytes() as f64 / self.memory_total_bytes as f64
    }
}

/// One GPU as NVML saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStats {
    /// NVML index.
    pub index: u32,
    /// NVML UUID, e.g. `GPU-8f6c…`.
    pub uuid: String,
    /// Product name.
    pub name: Option<String>,
    /// PCI bus id, e.g. `00000000:01:00.0`.
    pub pci_bus_id: Option<String>,
    /// SM busy fraction (0–1).
    pub utilization_ratio: Option<f64>,
    /// VRAM.
    pub memory: Option<GpuMemory>,
    /// Core temperature, °C.
    pub temperature_celsius: Option<f64>,
    /// Board power draw, W.
    pub power_watts: Option<f64>,
    /// Compute processes and their VRAM; `None` when not collected or not available.
    pub processes: Option<Vec<GpuProcess>>,
}

/// VRAM of one GPU, bytes, as NVML's v2 memory query reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    /// Capacity.
    pub total_bytes: u64,
    /// Allocated by processes (what nvidia-smi shows as used; excludes the driver's reserve).
    pub used_bytes: u64,
    /// Free for new allocations.
    pub free_bytes: u64,
}

/// A compute process holding VRAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    /// Process id (in vramguard's pid namespace when visible).
    pub pid: u32,
    /// Command name from /proc, when readable.
    pub name: Option<String>,
    /// VRAM it holds, bytes.
    pub used_bytes: u64,
}

/// Outcome of one collector in one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorStatus {
    /// `host` or `gpu`.
    pub name: &'static str,
    /// Whether everything it should read was read.
    pub success: bool,
    /// Wall time the collection took (up to the timeout).
    pub duration: Duration,
    /// Why it failed, for logs and the health report.
    pub error: Option<String>,
}

impl Snapshot {
    /// Unix time of the sample, seconds.
    pub fn timestamp_seconds(&self) -> f64 {
        crate::time::unix(self.taken_at)
    }
}

/// The latest snapshot, as the sampler publishes it; `None` until the first sample is complete.
pub type SnapshotRx = tokio::sync::watch::Receiver<Option<std::sync::Arc<Snapshot>>>;

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
    /// How closely pairs of GPUs are connected, where NVML reports it: (index, index, level)
    /// with the lower index first and NVML's `nvmlGpuTopologyLevel_t` figure, 0 (same board) to
    /// 50 (across CPU sockets); empty where NVML does not say.
    pub topology: Vec<(u32, u32, u8)>,
}

impl Snapshot {
    /// A snapshot holding `gpus` alone, taken at `taken_at`: no host reading, driver version,
    /// collector status or topology (the collectors fill those in).
    pub fn of_gpus(taken_at: SystemTime, gpus: Vec<GpuStats>) -> Self {
        Self { taken_at, host: None, gpus, driver_version: None, collectors: vec![], topology: vec![] }
    }
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
    /// Fault readings: ECC, row remapping, clock slowdowns, XID events.
    pub faults: GpuFaults,
    /// The readings other GPU exporters publish: power limit, energy, fans, codecs, PCIe,
    /// throttle time, performance state.
    pub telemetry: GpuTelemetry,
    /// Fault health judged from `faults` when the snapshot was taken.
    pub health: GpuHealth,
}

/// What NVML says about a GPU's faults. Every reading the board does not support is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuFaults {
    /// Corrected ECC errors since the driver loaded (volatile counter); `None` without ECC.
    pub ecc_corrected: Option<u64>,
    /// Uncorrected ECC errors since the driver loaded (volatile counter); `None` without ECC.
    pub ecc_uncorrected: Option<u64>,
    /// Row remapping state (Ampere and newer data-center boards).
    pub remapped_rows: Option<RemappedRows>,
    /// NVML's clock event (throttle) reasons bitmask; names in [`THROTTLE_REASONS`].
    pub throttle_reasons: Option<u64>,
    /// SM clock, Hz.
    pub sm_clock_hz: Option<u64>,
    /// Memory clock, Hz.
    pub memory_clock_hz: Option<u64>,
    /// XIDs seen since vramguard started watching, by code; empty when none (or not watched).
    pub xids: Vec<XidSeen>,
}

/// The readings nvidia_gpu_exporter and dcgm-exporter users expect, one NVML call each. Every
/// reading the board does not support is `None` (or empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuTelemetry {
    /// The enforced power limit, W.
    pub power_limit_watts: Option<f64>,
    /// Energy since the driver loaded, J; kept monotonic across a driver reload while vramguard
    /// runs (the sampler adds the count before a reset).
    pub energy_joules: Option<f64>,
    /// (fan index, speed as a fraction of its maximum) for each fan NVML reads; empty without
    /// fans or support.
    pub fan_ratios: Vec<(u32, f64)>,
    /// Memory (bandwidth) busy fraction: NVML's memory utilization.
    pub memory_bandwidth_ratio: Option<f64>,
    /// Video encoder busy fraction.
    pub encoder_ratio: Option<f64>,
    /// Video decoder busy fraction.
    pub decoder_ratio: Option<f64>,
    /// PCIe bytes sent by the GPU per second (NVML measures a 20 ms window).
    pub pcie_tx_bytes_per_second: Option<f64>,
    /// PCIe bytes received by the GPU per second.
    pub pcie_rx_bytes_per_second: Option<f64>,
    /// Current PCIe link generation.
    pub pcie_link_generation: Option<u32>,
    /// Current PCIe link width (lanes).
    pub pcie_link_width: Option<u32>,
    /// Seconds the GPU was held back, by reason (labels of [`VIOLATION_REASONS`]), for the
    /// reasons the board reports; monotonic like `energy_joules`.
    pub throttle_seconds: Vec<(&'static str, f64)>,
    /// Performance state, 0 (fastest) to 15; `None` when unsupported or unknown.
    pub performance_state: Option<u8>,
}

/// The violation (held-back time) reasons vramguard reports, in NVML's policy order
/// (`NVML_PERF_POLICY_POWER` = 0 ... `NVML_PERF_POLICY_RELIABILITY` = 5).
pub const VIOLATION_REASONS: [&str; 6] =
    ["power", "thermal", "sync_boost", "board_limit", "low_utilization", "reliability"];

/// Row remapping counters and flags (`nvmlDeviceGetRemappedRows`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemappedRows {
    /// Rows remapped because of correctable errors.
    pub correctable: u32,
    /// Rows remapped because of uncorrectable errors.
    pub uncorrectable: u32,
    /// A remap waits for the next GPU reset.
    pub pending: bool,
    /// A remap failed: no spare row was left.
    pub failed: bool,
}

/// One XID code seen on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidSeen {
    /// The XID code (999 is NVML's "unknown").
    pub xid: u64,
    /// Events with this code since vramguard started.
    pub count: u64,
    /// When the latest one arrived.
    pub last_seen: SystemTime,
}

/// The clock event reasons vramguard reports, by label and NVML bit.
pub const THROTTLE_REASONS: [(&str, u64); 7] = [
    ("gpu_idle", 0x1),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
];

/// A GPU's fault health. A GPU without fault readings is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuHealth {
    /// Whether new work may be placed on it.
    pub healthy: bool,
    /// Why not, each "what, what to do" (e.g. "row remap pending, reset the GPU").
    pub reasons: Vec<String>,
    /// What slows it down without making it unhealthy (hardware or thermal slowdown).
    pub warnings: Vec<String>,
    /// The strongest remedy its reasons call for.
    pub remedy: Option<Remedy>,
}

impl Default for GpuHealth {
    fn default() -> Self {
        Self { healthy: true, reasons: Vec::new(), warnings: Vec::new(), remedy: None }
    }
}

/// What an operator should do with an unhealthy GPU, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Remedy {
    /// Stop new work and find the cause before trusting it again.
    Drain,
    /// Drain, then reset the GPU (or reboot).
    Reset,
    /// Take it out of service and return it to the vendor.
    Rma,
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
#[derive(Debug, Clone, PartialEq)]
pub struct GpuProcess {
    /// Process id as NVML reports it (in vramguard's pid namespace when vramguard sees the host's
    /// processes).
    pub pid: u32,
    /// Command name from /proc, when readable.
    pub name: Option<String>,
    /// VRAM it holds, bytes.
    pub used_bytes: u64,
    /// The process itself, then its parent, its parent's parent, ... as far as `/proc` shows
    /// them: what a lease's pids are matched against. Just the process (its `pid`, nothing
    /// else known) when `/proc` has no entry for it.
    pub lineage: Vec<ProcessIdentity>,
    /// Its SM busy fraction since the previous sample: the mean of NVML's process utilization
    /// samples of it taken since then (0 when NVML had none, as NVML samples only busy processes);
    /// `None` when the board does not report per-process utilization.
    pub sm_utilization_ratio: Option<f64>,
}

impl GpuProcess {
    /// A process `/proc` says nothing about (a scripted one, or one in a pid namespace vramguard
    /// cannot see): known by its pid only.
    pub fn unresolved(pid: u32, name: Option<String>, used_bytes: u64) -> Self {
        Self { pid, name, used_bytes, lineage: vec![ProcessIdentity::bare(pid)], sm_utilization_ratio: None }
    }
}

/// Who one process is, in the terms a client in any pid namespace can name it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Its pid in vramguard's namespace.
    pub pid: u32,
    /// Its pid in its own, innermost pid namespace (the last `NSpid:` entry); what a job in a
    /// container calls itself.
    pub ns_pid: u32,
    /// The inode of that namespace (`/proc/<pid>/ns/pid`); `None` when it could not be read
    /// (another user's process, without root or `CAP_SYS_PTRACE`).
    pub pid_namespace: Option<u64>,
    /// When it started, clock ticks after boot (field 22 of `/proc/<pid>/stat`): the same figure
    /// in every namespace, so it tells a pid apart from a reused one.
    pub start_time: Option<u64>,
}

impl ProcessIdentity {
    /// A process known only by its pid in vramguard's namespace.
    pub fn bare(pid: u32) -> Self {
        Self { pid, ns_pid: pid, pid_namespace: None, start_time: None }
    }
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

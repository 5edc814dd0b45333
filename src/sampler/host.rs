//! Host collector: CPU busy ratio and RAM from sysinfo, the cgroup memory limit from /sys.

use std::time::{Duration, Instant};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use super::{Collector, Reading, cgroup};
use crate::snapshot::HostStats;

/// Holds the sysinfo handle between samples: CPU usage is a difference of two readings.
pub(crate) struct HostCollector {
    system: Option<System>,
    /// Whether a CPU reading exists to diff against.
    primed: bool,
    /// The cgroup memory limit and when it was read: it walks several files from the process's
    /// cgroup to the root, and a container's limit changes rarely, so it is read again only after
    /// [`CGROUP_REREAD`].
    cgroup_limit: Option<(Option<u64>, Instant)>,
}

/// How long a cgroup memory limit read is used before it is read again.
const CGROUP_REREAD: Duration = Duration::from_secs(10);

impl HostCollector {
    /// A collector that has read nothing yet.
    pub(crate) fn new() -> Self {
        Self { system: None, primed: false, cgroup_limit: None }
    }

    /// Reads CPU and memory. The first call takes two CPU readings 200 ms apart so it reports
    /// the recent busy ratio rather than the average since boot.
    fn read(&mut self) -> Result<HostStats, String> {
        if self.system.is_none() {
            let kind = RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram());
            self.system = Some(System::new_with_specifics(kind).map_err(|e| format!("sysinfo: {e}"))?);
        }
        let system = self.system.as_mut().expect("set just above");
        if !self.primed {
            system.refresh_cpu_usage();
            std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
            self.primed = true;
        }
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = system.total_memory();
        if total == 0 {
            return Err("sysinfo reported 0 bytes of RAM".to_owned());
        }
        let cpu_usage_ratio = percent_to_ratio(system.global_cpu_usage());
        let memory_available_bytes = system.available_memory().min(total);
        let cgroup_memory_limit_bytes = match self.cgroup_limit {
            Some((limit, at)) if at.elapsed() < CGROUP_REREAD => limit,
            _ => {
                let limit = cgroup::memory_limit(total);
                self.cgroup_limit = Some((limit, Instant::now()));
                limit
            }
        };
        Ok(HostStats { cpu_usage_ratio, memory_total_bytes: total, memory_available_bytes, cgroup_memory_limit_bytes })
    }
}

impl Collector for HostCollector {
    fn name(&self) -> &'static str {
        "host"
    }

    fn collect(&mut self) -> Result<Reading, String> {
        self.read().map(Reading::Host)
    }
}

/// sysinfo reports CPU as 0–100; the exposition wants 0–1. Clamped because rounding in the
/// kernel's tick counts can push a fully busy machine a hair past 100.
pub(crate) fn percent_to_ratio(percent: f32) -> f64 {
    if percent.is_finite() { (f64::from(percent) / 100.0).clamp(0.0, 1.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_becomes_a_clamped_ratio() {
        assert_eq!(percent_to_ratio(0.0), 0.0);
        assert!((percent_to_ratio(37.5) - 0.375).abs() < 1e-9);
        assert_eq!(percent_to_ratio(100.4), 1.0);
        assert_eq!(percent_to_ratio(-1.0), 0.0);
    }

    /// A real reading on this machine: RAM and CPU are plausible and the first sample is not
    /// the since-boot average (it cannot be exactly 0 busy and 0 idle at once).
    #[test]
    fn collects_this_host() {
        let mut c = HostCollector::new();
        let s = c.read().expect("host collector works on Linux");
        assert!(s.memory_total_bytes > 0);
        assert!(s.memory_available_bytes <= s.memory_total_bytes);
        assert!((0.0..=1.0).contains(&s.cpu_usage_ratio));
        let again = c.read().expect("second sample");
        assert_eq!(again.memory_total_bytes, s.memory_total_bytes);
    }
}

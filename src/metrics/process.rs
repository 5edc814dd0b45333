//! vramguard's own process series (`process_*`, the names every Prometheus client library uses):
//! CPU seconds, memory, threads, open and maximum file descriptors, start time.
//!
//! Reading them is most of what a scrape would cost (several `/proc` files, about as long as the
//! rest of the scrape together), so they are read at most once per [`REREAD`]: scrapes closer
//! together than that get the same values, at most a second old, which no Prometheus scrape
//! interval can tell apart. `/proc/self` is opened once; a read takes its `stat` and lists its
//! `fd` directory through that handle. The descriptor limit changes only by `prlimit` from
//! outside, so `limits` is read again only after [`LIMITS_REREAD`].

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use procfs::process::{LimitValue, Process};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::family::proto::{counter, counter_family, family, sample};

/// How long one read of the process series is served.
pub(super) const REREAD: Duration = Duration::from_secs(1);
/// How long a read of the descriptor limit is used.
const LIMITS_REREAD: Duration = Duration::from_secs(10);

const CPU: (&str, &str) = ("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.");
const OPEN_FDS: (&str, &str) = ("process_open_fds", "Number of open file descriptors.");
const MAX_FDS: (&str, &str) = ("process_max_fds", "Maximum number of open file descriptors.");
const VIRTUAL: (&str, &str) = ("process_virtual_memory_bytes", "Virtual memory size in bytes.");
const RESIDENT: (&str, &str) = ("process_resident_memory_bytes", "Resident memory size in bytes.");
const START: (&str, &str) = ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.");
const THREADS: (&str, &str) = ("process_threads", "Number of OS threads in the process.");

/// The collector for this process.
pub(super) struct ProcessCollector {
    process: Process,
    ticks_per_second: f64,
    page_size: f64,
    start_time: Option<f64>,
    max_fds: Mutex<Option<(Option<u64>, Instant)>>,
    last: Mutex<Option<(Vec<MetricFamily>, Instant)>>,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    /// `None` where there is no `/proc/self` (not Linux, or /proc not mounted).
    pub(super) fn for_self() -> Option<Self> {
        let process = Process::myself().ok()?;
        let ticks_per_second = procfs::ticks_per_second() as f64;
        let start_time = match (process.stat(), procfs::boot_time_secs()) {
            (Ok(stat), Ok(boot)) => Some(stat.starttime as f64 / ticks_per_second + boot as f64),
            _ => None,
        };
        let descs = [CPU, OPEN_FDS, MAX_FDS, VIRTUAL, RESIDENT, START, THREADS]
            .iter()
            .filter_map(|(name, help)| {
                Desc::new((*name).to_owned(), (*help).to_owned(), vec![], Default::default()).ok()
            })
            .collect();
        Some(Self {
            process,
            ticks_per_second,
            page_size: procfs::page_size() as f64,
            start_time,
            max_fds: Mutex::new(None),
            last: Mutex::new(None),
            descs,
        })
    }

    fn max_fds(&self) -> Option<u64> {
        let mut kept = self.max_fds.lock().unwrap_or_else(PoisonError::into_inner);
        match *kept {
            Some((max, at)) if at.elapsed() < LIMITS_REREAD => max,
            _ => {
                let max = match self.process.limits().map(|l| l.max_open_files.soft_limit) {
                    Ok(LimitValue::Value(n)) => Some(n),
                    // Unlimited or unreadable: no series rather than a made-up number.
                    _ => None,
                };
                *kept = Some((max, Instant::now()));
                max
            }
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.as_ref() {
            Some((families, at)) if at.elapsed() < REREAD => families.clone(),
            _ => {
                let families = self.read();
                *last = Some((families.clone(), Instant::now()));
                families
            }
        }
    }
}

impl ProcessCollector {
    fn read(&self) -> Vec<MetricFamily> {
        let gauge = |(name, help): (&str, &str), v: f64| family(name, help, vec![sample(&[], v)]);
        let mut out = Vec::with_capacity(7);
        if let Ok(stat) = self.process.stat() {
            let cpu = (stat.utime + stat.stime) as f64 / self.ticks_per_second;
            out.push(counter_family(CPU.0, CPU.1, vec![counter(&[], cpu)]));
            out.push(gauge(VIRTUAL, stat.vsize as f64));
            out.push(gauge(RESIDENT, stat.rss as f64 * self.page_size));
            out.push(gauge(THREADS, stat.num_threads as f64));
        }
        if let Ok(n) = self.process.fd_count() {
            out.push(gauge(OPEN_FDS, n as f64));
        }
        if let Some(max) = self.max_fds() {
            out.push(gauge(MAX_FDS, max as f64));
        }
        if let Some(start) = self.start_time {
            out.push(gauge(START, start));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series of this very process, with plausible values (other tests run in this process
    /// too, so nothing is compared across two reads).
    #[test]
    fn reads_this_process() {
        let c = ProcessCollector::for_self().expect("/proc/self on Linux");
        let value = |families: &[MetricFamily], name: &str| {
            let f = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{name} present"));
            let m = &f.get_metric()[0];
            if name.ends_with("_total") { m.get_counter().get_value() } else { m.get_gauge().get_value() }
        };
        let before = c.collect();
        assert!(value(&before, "process_resident_memory_bytes") > 1e6);
        assert!(value(&before, "process_virtual_memory_bytes") >= value(&before, "process_resident_memory_bytes"));
        assert!(value(&before, "process_open_fds") >= 3.0);
        assert!(value(&before, "process_max_fds") >= value(&before, "process_open_fds"));
        assert!(value(&before, "process_start_time_seconds") > 1.5e9);
        assert!(value(&before, "process_cpu_seconds_total") >= 0.0);
        assert!(value(&before, "process_threads") >= 1.0);
        assert_eq!(before.len(), 7, "every series present");
        assert_eq!(c.desc().len(), 7);
    }
}

//! The sampler: the only code that touches hardware. On every tick it runs each source on the
//! blocking pool, bounds it by a timeout, and publishes one immutable [`Snapshot`] through a
//! `watch` channel. Readers always see a whole snapshot and never wait on sysinfo or NVML.
//!
//! Every source implements [`Collector`]: a name and `collect() -> Reading`. The list of sources
//! is built once from the config ([`Sampler::new`]); each reading then fills its part of the
//! snapshot ([`Reading::apply`]). A source's state lives behind a `std::sync::Mutex` that the
//! blocking task takes with `try_lock`: if a previous call is still stuck inside NVML, the next
//! tick reports the collector as failed at once instead of piling up threads behind it.
//!
//! Once a snapshot is assembled, every GPU gets its fault health from the one pure rule,
//! [`crate::policy::gpu_health::judge`], at the snapshot's time, so a fatal XID's window
//! expires on the first sample after it ends.

mod cgroup;
mod faults;
mod gpu;
mod host;
mod procfs;
mod scripted;
mod telemetry;
mod topology;
mod xid;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::config::{Config, GpuHealthConfig};
use crate::policy::gpu_health;
use crate::snapshot::{CollectorStatus, GpuStats, HostStats, Snapshot, SnapshotRx};

pub(crate) use gpu::GpuCollector;
pub(crate) use host::HostCollector;
pub(crate) use procfs::{client_identity, own_pid_namespace};
pub(crate) use scripted::ScriptedHost;

/// One source of readings. `collect` runs on a blocking thread and may block (NVML does).
pub(crate) trait Collector: Send + 'static {
    /// The `collector` label value and the name in health messages.
    fn name(&self) -> &'static str;
    /// Reads the hardware once. An `Err` marks the collector failed for this sample.
    fn collect(&mut self) -> Result<Reading, String>;
}

/// What one collector read.
#[derive(Debug)]
pub(crate) enum Reading {
    /// Host CPU and memory.
    Host(HostStats),
    /// Every GPU that answered.
    Gpu(GpuReading),
}

/// What the GPU collector read in one pass.
#[derive(Debug, Default)]
pub(crate) struct GpuReading {
    /// Devices that answered.
    pub(crate) gpus: Vec<GpuStats>,
    /// NVML's driver version.
    pub(crate) driver_version: Option<String>,
    /// Set when some device could not be read (lost GPU): the rest is still served.
    pub(crate) partial_error: Option<String>,
    /// GPU pairs and how closely they are connected (see [`Snapshot::topology`]).
    pub(crate) topology: Vec<(u32, u32, u8)>,
}

impl Reading {
    /// Puts this reading into `snapshot`; a partial GPU reading also marks its collector failed.
    fn apply(self, snapshot: &mut Snapshot, status: &mut CollectorStatus) {
        match self {
            Reading::Host(h) => snapshot.host = Some(h),
            Reading::Gpu(g) => {
                if let Some(err) = g.partial_error {
                    status.success = false;
                    status.error = Some(err);
                }
                snapshot.gpus = g.gpus;
                snapshot.driver_version = g.driver_version;
                snapshot.topology = g.topology;
            }
        }
    }
}

type Source = Arc<Mutex<Box<dyn Collector>>>;

/// The sampler loop and its sources.
pub(crate) struct Sampler {
    interval: Duration,
    timeout: Duration,
    sources: Vec<(&'static str, Source)>,
    gpu_health: GpuHealthConfig,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
}

impl Sampler {
    /// Builds the sources the config asks for. Nothing is read until [`Sampler::run`].
    pub(crate) fn new(config: &Config) -> (Self, SnapshotRx) {
        let mut sources: Vec<Box<dyn Collector>> = Vec::new();
        sources.push(match &config.host.scripted_file {
            Some(path) => Box::new(ScriptedHost::new(path.clone())),
            None => Box::new(HostCollector::new()),
        });
        if config.gpu.enabled {
            sources.push(Box::new(GpuCollector::new(config.gpu.nvml_library.clone(), config.gpu.per_process)));
        }
        let (tx, rx) = watch::channel(None);
        let interval = config.sample_interval.0;
        let sampler = Self {
            interval,
            // A collection that cannot finish within one interval is late for its own snapshot;
            // the floor leaves room for the host collector's first 200 ms CPU window.
            timeout: interval.max(Duration::from_millis(500)),
            sources: sources.into_iter().map(|c| (c.name(), Arc::new(Mutex::new(c)))).collect(),
            gpu_health: config.gpu_health.clone(),
            tx,
        };
        (sampler, rx)
    }

    /// Samples until `stop` resolves.
    pub(crate) async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticker.tick() => {}
            }
            let snapshot = self.sample_once().await;
            self.tx.send_replace(Some(Arc::new(snapshot)));
        }
    }

    /// Runs every source once, all at the same time, and assembles a snapshot.
    async fn sample_once(&self) -> Snapshot {
        let taken_at = SystemTime::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let started: Vec<_> = self.sources.iter().map(|(name, source)| (*name, spawn(source))).collect();
        let mut snapshot = Snapshot::of_gpus(taken_at, Vec::new());
        for (name, (start, task)) in started {
            let result = match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => Err(format!("collector panicked: {join}")),
                Err(_) => Err(format!("timed out after {} ms", self.timeout.as_millis())),
            };
            let mut status = CollectorStatus { name, success: true, duration: start.elapsed(), error: None };
            match result {
                Ok(reading) => reading.apply(&mut snapshot, &mut status),
                Err(e) => {
                    tracing::debug!(collector = name, error = %e, "collector failed");
                    status.success = false;
                    status.error = Some(e);
                }
            }
            snapshot.collectors.push(status);
        }
        for g in &mut snapshot.gpus {
            g.health = gpu_health::judge(&g.faults, &self.gpu_health, taken_at);
        }
        snapshot
    }
}

/// Starts one collection on the blocking pool under the source's lock.
fn spawn(source: &Source) -> (Instant, tokio::task::JoinHandle<Result<Reading, String>>) {
    let source = Arc::clone(source);
    let start = Instant::now();
    let task = tokio::task::spawn_blocking(move || match source.try_lock() {
        Ok(mut c) => c.collect(),
        Err(std::sync::TryLockError::WouldBlock) => {
            Err("previous collection is still running (hung driver call)".to_owned())
        }
        // A panic inside a collector poisons its lock; its state may be half-updated, but
        // every field is overwritten on the next pass, so keep going with it.
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().collect(),
    });
    (start, task)
}

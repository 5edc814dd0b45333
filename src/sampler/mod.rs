//! The sampler: the only code that touches hardware. On every tick it runs each collector on
//! the blocking pool, bounds it by a timeout, and publishes one immutable [`Snapshot`] through a
//! `watch` channel. Readers always see a whole snapshot and never wait on sysinfo or NVML.
//!
//! Each collector's state lives behind a `std::sync::Mutex` that the blocking task takes with
//! `try_lock`: if a previous call is still stuck inside NVML, the next tick reports the
//! collector as failed at once instead of piling up threads behind it.

mod cgroup;
mod gpu;
mod host;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::config::Config;
use crate::snapshot::{CollectorStatus, GpuStats, Snapshot};

pub use gpu::GpuCollector;
pub use host::HostCollector;

/// Latest snapshot; `None` until the first sample is complete.
pub type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;

/// What the GPU collector read in one pass.
#[derive(Debug, Default)]
pub struct GpuReading {
    /// Devices that answered.
    pub gpus: Vec<GpuStats>,
    /// NVML's driver version.
    pub driver_version: Option<String>,
    /// Set when some device could not be read (lost GPU): the rest is still served.
    pub partial_error: Option<String>,
}

/// The sampler loop and its collectors.
pub struct Sampler {
    interval: Duration,
    timeout: Duration,
    host: Arc<Mutex<HostCollector>>,
    gpu: Option<Arc<Mutex<GpuCollector>>>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
}

impl Sampler {
    /// Builds the collectors the config asks for. Nothing is read until [`Sampler::run`].
    pub fn new(config: &Config) -> (Self, SnapshotRx) {
        let (tx, rx) = watch::channel(None);
        let gpu = config
            .gpu
            .enabled
            .then(|| Arc::new(Mutex::new(GpuCollector::new(config.gpu.nvml_library.clone(), config.gpu.per_process))));
        let interval = config.sample_interval.0;
        let sampler = Self {
            interval,
            // A collection that cannot finish within one interval is late for its own snapshot;
            // the floor leaves room for the host collector's first 200 ms CPU window.
            timeout: interval.max(Duration::from_millis(500)),
            host: Arc::new(Mutex::new(HostCollector::new())),
            gpu,
            tx,
        };
        (sampler, rx)
    }

    /// Samples until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
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

    /// Runs every collector once and assembles a snapshot.
    pub async fn sample_once(&self) -> Snapshot {
        let taken_at = SystemTime::now();
        let host_fut = run_blocking("host", &self.host, self.timeout, HostCollector::collect);
        let gpu_fut = async {
            match &self.gpu {
                Some(gpu) => Some(run_blocking("gpu", gpu, self.timeout, GpuCollector::collect).await),
                None => None,
            }
        };
        let ((host, host_status), gpu) = tokio::join!(host_fut, gpu_fut);
        let mut collectors = vec![host_status];
        let mut snapshot = Snapshot { taken_at, host, gpus: Vec::new(), driver_version: None, collectors: Vec::new() };
        if let Some((reading, mut status)) = gpu {
            if let Some(reading) = reading {
                if let Some(err) = reading.partial_error {
                    status.success = false;
                    status.error = Some(err);
                }
                snapshot.gpus = reading.gpus;
                snapshot.driver_version = reading.driver_version;
            }
            collectors.push(status);
        }
        for c in &collectors {
            if let Some(err) = &c.error {
                tracing::debug!(collector = c.name, error = %err, "collector failed");
            }
        }
        snapshot.collectors = collectors;
        snapshot
    }
}

/// Runs `f` on the blocking pool under the collector's lock, bounded by `timeout`.
async fn run_blocking<C, T>(
    name: &'static str,
    collector: &Arc<Mutex<C>>,
    timeout: Duration,
    f: fn(&mut C) -> Result<T, String>,
) -> (Option<T>, CollectorStatus)
where
    C: Send + 'static,
    T: Send + 'static,
{
    let start = Instant::now();
    let collector = Arc::clone(collector);
    let task = tokio::task::spawn_blocking(move || match collector.try_lock() {
        Ok(mut c) => f(&mut c),
        Err(std::sync::TryLockError::WouldBlock) => {
            Err("previous collection is still running (hung driver call)".to_owned())
        }
        // A panic inside a collector poisons its lock; its state may be half-updated, but
        // every field is overwritten on the next pass, so keep going with it.
        Err(std::sync::TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
    });
    let result = match tokio::time::timeout(timeout, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(format!("collector panicked: {join}")),
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    };
    let duration = start.elapsed();
    match result {
        Ok(v) => (Some(v), CollectorStatus { name, success: true, duration, error: None }),
        Err(e) => (None, CollectorStatus { name, success: false, duration, error: Some(e) }),
    }
}

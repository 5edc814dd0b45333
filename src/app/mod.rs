//! The service layer: everything the HTTP handlers call, and the background tasks that keep the
//! state honest. [`AppState`] is a thin composition of parts, each owning its state behind a
//! narrow API; the files are listed lowest first, and each uses only the ones above it in this
//! list (`tests/architecture.rs` checks it, and that nothing but this file implements
//! `AppState`):
//!
//! - [`error`]: [`ServiceError`], which the HTTP edge maps to status codes; [`OpenError`].
//! - [`access`]: the configured tokens, their roles, and who a caller is.
//! - [`decision_memo`]: decisions kept until their inputs change (the [`decision_memo::Stamp`]).
//! - `book`: the lease book and the observed peaks.
//! - `inputs`: everything a decision reads, and consistent [`View`]s of it.
//! - `writer`: the one write path to the store, and lease ends that wait for it.
//! - `lease_thread`: the one thread that runs every lease critical section and commits their
//!   writes in groups.
//! - [`lease_terms`]: what a lease request asks, how requests and releases end, whose lease it is.
//! - [`ledger`]: generation leases: the critical section that decides and records, reaping.
//! - [`queue`]: waiting admission: requests held until they fit, decided again on every change.
//! - [`decisions`]: health, resource-check and the metrics exposition on the live view.
//! - [`settings`]: partial updates and resets of the optimization settings and constraints.
//! - [`records`]: history points (the recorder, `stats/save`, queries) and observed peaks.
//! - `reload`: applying a configuration reloaded on SIGHUP.

pub(crate) mod error;
pub(crate) mod access;
pub(crate) mod decision_memo;
mod book;
mod inputs;
mod writer;
mod lease_thread;
pub(crate) mod lease_terms;
pub(crate) mod ledger;
pub(crate) mod queue;
pub(crate) mod decisions;
pub(crate) mod settings;
pub(crate) mod records;
mod reload;

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use tokio::sync::watch;

use crate::config::{Config, HistoryBackend};
use crate::history::prometheus::PrometheusSource;
use crate::leases::{LeaseBook, whole_gangs};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SnapshotRx};
use crate::store::{Store, StoreError};
use crate::time::now_unix;
pub(crate) use access::Caller;
pub use access::Credentials;
use book::Book;
use decisions::Decisions;
pub(crate) use error::{OpenError, ServiceError};
use inputs::Inputs;
use lease_thread::LeaseThread;
use ledger::Ledger;
use queue::Queue;
use records::Records;
use settings::Settings;
use writer::Writer;

/// Shared, cheaply cloned state of the service: a clone is one reference count, however much
/// the state holds (every request and background task clones it).
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

/// The parts an [`AppState`] is made of.
struct Parts {
    inputs: Arc<Inputs>,
    writer: Arc<Writer>,
    ledger: Ledger,
    queue: Arc<Queue>,
    decisions: Decisions,
    settings: Settings,
    records: Arc<Records>,
    metrics: Arc<Metrics>,
    /// WebSocket subscribers now.
    subscribers: Arc<AtomicU32>,
    /// Flips to true when the server shuts down (WebSockets close on it).
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// Opens the state store under `config.state_dir` and loads what it holds: settings changed
    /// through the API, live leases and observed peaks. A store that cannot be read is an error
    /// naming it.
    pub fn open(
        config: Config,
        snapshots: SnapshotRx,
        credentials: Credentials,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, OpenError> {
        let mut store = Store::open(&config.state_dir)?;
        let live = settings::load_live(&store, &config)?;
        let (leases, partial) = whole_gangs(store.load_leases()?);
        if !partial.is_empty() {
            // Ranks of a gang stored in part (a savepoint makes that unlikely): ended, not held.
            tracing::warn!(leases = partial.len(), "ending the stored ranks of a gang that is not whole");
            store.end_leases(&partial, &[])?;
            store.commit_batch()?;
        }
        let leases = LeaseBook::from_leases(leases);
        let observations = store.load_observations()?;
        let reader = store.reader()?;
        let prometheus = match (&config.history.backend, &config.history.prometheus_url) {
            (HistoryBackend::Prometheus, Some(url)) => Some(
                PrometheusSource::new(url, &config.history.prometheus_selector, config.history.prometheus_timeout.0)
                    .map_err(OpenError::PrometheusSource)?,
            ),
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        metrics.record_reload(true, now_unix());
        let store_status = store.status();
        metrics.register(store_status.collectors());
        let inputs = Arc::new(Inputs::new(
            snapshots,
            config,
            credentials,
            live,
            |version| Book::new(leases, observations, version),
            store_status,
        ));
        let writer = Arc::new(Writer::new(store, Arc::clone(&inputs)));
        let thread = LeaseThread::start(Arc::clone(&writer)).map_err(OpenError::LeaseThread)?;
        let ledger = Ledger::new(Arc::clone(&inputs), Arc::clone(&writer), thread, Arc::clone(&metrics));
        let queue = Queue::new(ledger.clone(), Arc::clone(&inputs), Arc::clone(&metrics));
        Ok(Self(Arc::new(Parts {
            decisions: Decisions::new(Arc::clone(&inputs), Arc::clone(&queue), Arc::clone(&metrics)),
            settings: Settings::new(Arc::clone(&inputs), Arc::clone(&writer)),
            records: Arc::new(Records::new(Arc::clone(&inputs), Arc::clone(&writer), reader, prometheus)),
            inputs,
            writer,
            ledger,
            queue,
            metrics,
            subscribers: Arc::new(AtomicU32::new(0)),
            shutdown,
        })))
    }

    /// Opens the store the way a start would, and reads everything a start reads, then closes
    /// it: whether vramguard would start on it (`--reset-state` moves it aside only if not).
    pub fn check_store(config: &Config) -> Result<(), StoreError> {
        let store = Store::open(&config.state_dir)?;
        settings::load_live(&store, config)?;
        store.load_leases()?;
        store.load_observations()?;
        Ok(())
    }

    /// Starts the background tasks (the lease reaper, the sample follower, the queue's
    /// dispatcher, the history recorder); each ends when `stop` flips.
    pub(crate) fn spawn_background(&self, stop: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(records::recorder(Arc::clone(&self.0.records), stop.clone())),
            tokio::spawn(ledger::reaper(self.0.ledger.clone(), stop.clone())),
            tokio::spawn(follow_samples(self.clone(), stop.clone())),
            tokio::spawn(queue::dispatcher(Arc::clone(&self.0.queue), stop.clone())),
        ]
    }

    /// Generation leases.
    pub(crate) fn ledger(&self) -> &Ledger {
        &self.0.ledger
    }

    /// Waiting admission.
    pub(crate) fn queue(&self) -> &Arc<Queue> {
        &self.0.queue
    }

    /// Health, resource-check and the exposition.
    pub(crate) fn decisions(&self) -> &Decisions {
        &self.0.decisions
    }

    /// The optimization settings and constraints.
    pub(crate) fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// History and observed peaks.
    pub(crate) fn records(&self) -> &Records {
        &self.0.records
    }

    /// Counters, histograms and the exposition renderer.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// WebSocket subscribers now.
    pub(crate) fn subscribers(&self) -> &AtomicU32 {
        &self.0.subscribers
    }

    /// Flips to true when the server shuts down.
    pub(crate) fn shutdown(&self) -> watch::Receiver<bool> {
        self.0.shutdown.clone()
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.0.inputs.config()
    }

    /// The tokens in force.
    pub(crate) fn credentials(&self) -> Arc<Credentials> {
        self.0.inputs.credentials()
    }

    /// The latest snapshot.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.0.inputs.snapshot()
    }

    /// New snapshots as they come.
    pub(crate) fn snapshots(&self) -> SnapshotRx {
        self.0.inputs.snapshots.clone()
    }

    /// Puts `next` (validated) and its tokens in force. Returns the keys that changed but need a
    /// restart; those keep their running values.
    pub(crate) async fn reload(
        &self,
        next: Config,
        credentials: Credentials,
    ) -> Result<Vec<&'static str>, ServiceError> {
        reload::reload(&self.0.inputs, &self.0.writer, next, credentials).await
    }
}

/// On every new sample: the live leases' processes are followed on it (peaks, overruns), then,
/// when a scrape is due before the next sample (by the rhythm of the last scrapes: Prometheus
/// scrapes every 5-60 s, vramguard samples every second), the exposition of that sample is
/// rendered ahead, so the scrape finds it ready instead of rendering it on the request path. The
/// rendering is the scrape's own ([`Decisions::render_metrics`]), kept under the same inputs; a
/// scrape that finds them changed since renders afresh, as before.
async fn follow_samples(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut snapshots = state.0.inputs.snapshots.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
        state.ledger().observe(&snapshot, crate::time::now_unix());
        if state.decisions().scrape_due(state.config().sample_interval.0) {
            let _ = state.decisions().render_metrics();
        }
    }
}

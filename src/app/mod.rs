//! The service layer: everything the HTTP handlers call, and the background tasks that keep the
//! state honest. It owns the shared state, gives every decision one consistent [`View`], and is
//! the only place that writes the store.
//!
//! - [`AppState`]: the shared state and the one write path ([`AppState::write`]).
//! - [`ledger`]: generation leases: the critical section that decides and records, reaping.
//! - [`queue`]: waiting admission: requests held until they fit, decided again on every change.
//! - [`reload`]: applying a configuration reloaded on SIGHUP.
//! - [`settings`]: partial updates and resets of the optimization settings and constraints.
//! - [`decisions`]: health, resource-check and the metrics exposition on the live view.
//! - [`decision_memo`]: decisions (resource-check answers, the policy's part of `/metrics`) kept
//!   until their inputs change (the [`decision_memo::Stamp`]); no HTTP in it.
//! - `lease_thread`: the one thread that runs every lease critical section and commits their
//!   writes in groups.
//! - [`history`]: the embedded history recorder, `stats/save` and history queries.
//! - [`error`]: [`ServiceError`], which the HTTP edge maps to status codes.
//! - [`access`]: the configured tokens, their roles, and who a caller is.
//! - [`store_health`]: what happens while the store does not take writes: lease ends that are
//!   not yet durable, retried in the background; the failure logged once.

pub mod access;
pub mod decision_memo;
mod lease_thread;
pub mod decisions;
pub mod error;
pub mod ledger;
pub mod history;
pub mod queue;
pub mod reload;
pub mod settings;
pub mod store_health;

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::watch;

use crate::config::{Config, Constraints, HistoryBackend, Optimization, validate_constraints, validate_optimization};
use crate::history::prometheus::PrometheusSource;
use crate::leases::{Lease, LeaseBook, LeaseUsage, outstanding_by_gpu, usage};
use crate::limits::MAX_VRAM_GB;
use crate::metrics::Metrics;
use crate::policy::estimate::EstimateKey;
use crate::policy::{Context, Overrun};
use crate::snapshot::{Snapshot, SnapshotRx};
use crate::store::{Store, StoreError, StoreStatus};
use crate::time::now_unix;
pub use access::{Caller, Credentials};
pub use error::{OpenError, ServiceError};

/// The settings the API can change, as they are now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Live {
    /// Optimization settings.
    pub settings: Optimization,
    /// Resource constraints.
    pub constraints: Constraints,
}

/// Shared, cheaply cloned state of the service: a clone is one reference count, however much
/// the state holds (every request and background task clones it).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What an [`AppState`] shares.
pub struct SharedState {
    /// The latest snapshot (None before the first sample).
    pub snapshots: SnapshotRx,
    /// Process metrics, counters and the exposition renderer.
    pub metrics: Arc<Metrics>,
    /// The configuration in force: the one vramguard started with, or the last one SIGHUP
    /// loaded. Replaced whole, so a reader holds one consistent copy.
    config: Arc<RwLock<Arc<Config>>>,
    /// The configured tokens and their roles; replaced on reload.
    credentials: Arc<RwLock<Arc<Credentials>>>,
    /// Whether the store takes writes (read without the writers' lock).
    store_status: Arc<StoreStatus>,
    /// Lease ends (releases, expiries) already out of the book whose store write failed; retried
    /// on every reaper tick until the store takes them.
    pending_ends: Arc<Mutex<store_health::PendingEnds>>,
    /// Lease ends written into the open batch, durable when it commits.
    batch_ends: Arc<Mutex<store_health::PendingEnds>>,
    /// Prometheus history source, when `history.backend` is `prometheus`.
    pub prometheus: Option<PrometheusSource>,
    /// WebSocket subscribers now.
    pub subscribers: Arc<AtomicU32>,
    /// Flips to true when the server shuts down (WebSockets close on it).
    pub shutdown: watch::Receiver<bool>,
    /// Live settings and constraints. A std lock: held for a copy, never across an await.
    live: Arc<RwLock<Live>>,
    /// The state store. Writers take this lock on a blocking thread for the whole
    /// read-validate-write-publish sequence, so concurrent updates are serialised.
    store: Arc<Mutex<Store>>,
    /// Generation leases. Changed only under the store lock (after the store write); read by
    /// every decision for the active count and the VRAM reservations.
    leases: Arc<RwLock<LeaseBook>>,
    /// A second connection to the store for history reads, so a long query never holds the
    /// writers' lock.
    history_reader: Arc<Mutex<Store>>,
    /// Observed peaks (key, GiB), newest first; replaced whole on every change so a view holds
    /// a cheap `Arc` of it.
    observed: Arc<RwLock<Observed>>,
    /// Generation requests waiting for room, oldest first.
    queue: Arc<Mutex<queue::WaitQueue>>,
    /// Wakes the queue's dispatcher: a release, an expiry, a settings change, a waiter.
    queue_wake: Arc<tokio::sync::Notify>,
    /// The thread that runs lease critical sections and commits them in groups.
    committer: lease_thread::Committer,
    /// Bumped after every change of the live settings, the configuration, the lease book or the
    /// observed peaks: part of the [`decision_memo::Stamp`] kept answers are checked against.
    inputs_version: std::sync::atomic::AtomicU64,
    /// Resource-check answers kept between changes of their inputs.
    kept_checks: decision_memo::Kept<decisions::CheckAnswer>,
    /// The policy's part of the exposition, kept likewise.
    kept_policy: decision_memo::Kept<Arc<crate::metrics::PolicyText>>,
}

/// Observed peaks (key, GiB), newest first.
pub type Observed = Arc<Vec<(EstimateKey, f64)>>;

/// The newest `OBSERVED_IN_MEMORY` of `observations` (newest first), as decisions read them.
fn in_memory(observations: Vec<crate::store::Observation>) -> Vec<(EstimateKey, f64)> {
    let mut observed: Vec<(EstimateKey, f64)> = observations.into_iter().map(|o| (o.key, o.peak_vram_gb)).collect();
    observed.truncate(OBSERVED_IN_MEMORY);
    observed
}

/// Observed peaks kept in memory: far more than any `learning.window` needs.
const OBSERVED_IN_MEMORY: usize = 10_000;

/// A consistent copy of everything a decision reads.
#[derive(Debug, Clone)]
pub struct View {
    /// Latest snapshot.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Live settings and constraints.
    pub live: Live,
    /// Live leases, oldest first, with what each uses and still owes.
    pub leases: Vec<(Lease, LeaseUsage)>,
    /// GiB still owed per GPU to live leases.
    pub outstanding: Vec<(u32, f64)>,
    /// Live leases whose jobs use more than they reserved.
    pub overruns: Vec<Overrun>,
    /// Observed peaks, newest first.
    pub observed: Observed,
    /// Live leases.
    pub active: u32,
    /// Why the state store does not take writes, while it does not.
    pub store_problem: Option<String>,
    /// When the view was taken, Unix seconds.
    pub now: f64,
}

impl View {
    /// The policy's input built from this view, for the default workload profile.
    pub fn context<'a>(&'a self, config: &'a Config) -> Context<'a> {
        self.context_for(config, crate::config::DEFAULT_WORKLOAD)
    }

    /// The policy's input for the workload profile `workload` (the default one if unknown:
    /// callers check names first, see [`AppState::check_workload`]).
    pub fn context_for<'a>(&'a self, config: &'a Config, workload: &'a str) -> Context<'a> {
        let (workload_name, profile) = match config.profile(workload) {
            Some(p) => (workload, p),
            None => (crate::config::DEFAULT_WORKLOAD, &config.workload),
        };
        Context {
            snapshot: self.snapshot.as_deref(),
            constraints: &self.live.constraints,
            settings: &self.live.settings,
            workload: profile,
            workload_name,
            observed: &self.observed,
            learning: &config.learning,
            gpu_enabled: config.gpu.enabled,
            outstanding: &self.outstanding,
            overruns: &self.overruns,
            active_generations: Some(self.active),
            store_problem: self.store_problem.as_deref(),
            now: self.now,
        }
    }
}

impl AppState {
    /// Opens the state store under `config.state_dir` and loads what it holds: settings changed
    /// through the API and live leases. A store that cannot be read is an error naming it.
    pub fn open(
        config: Config,
        snapshots: SnapshotRx,
        credentials: Credentials,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, OpenError> {
        let store = Store::open(&config.state_dir)?;
        let live = load_live(&store, &config)?;
        let leases = LeaseBook::from_leases(store.load_leases()?);
        let observed = in_memory(store.load_observations()?);
        let history_reader = Arc::new(Mutex::new(store.reader()?));
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
        Ok(Self(Arc::new(SharedState {
            history_reader,
            prometheus,
            subscribers: Arc::new(AtomicU32::new(0)),
            shutdown,
            leases: Arc::new(RwLock::new(leases)),
            snapshots,
            metrics,
            config: Arc::new(RwLock::new(Arc::new(config))),
            live: Arc::new(RwLock::new(live)),
            store: Arc::new(Mutex::new(store)),
            credentials: Arc::new(RwLock::new(Arc::new(credentials))),
            store_status,
            pending_ends: Arc::default(),
            batch_ends: Arc::default(),
            observed: Arc::new(RwLock::new(Arc::new(observed))),
            queue: Arc::default(),
            queue_wake: Arc::default(),
            committer: lease_thread::Committer::start().map_err(OpenError::LeaseThread)?,
            inputs_version: Default::default(),
            kept_checks: Default::default(),
            kept_policy: Default::default(),
        })))
    }

    /// The tokens in force.
    pub fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(&self.credentials.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Opens the store the way a start would, and reads everything a start reads, then closes
    /// it: whether vramguard would start on it (`--reset-state` moves it aside only if not).
    pub fn check_store(config: &Config) -> Result<(), StoreError> {
        let store = Store::open(&config.state_dir)?;
        load_live(&store, config)?;
        store.load_leases()?;
        store.load_observations()?;
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the live settings and constraints.
    pub fn live(&self) -> Live {
        *self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }

    /// A consistent copy of what a decision reads, at `now`.
    pub fn view_at(&self, now: f64) -> View {
        let snapshot = self.snapshot();
        let book = self.leases.read().unwrap_or_else(PoisonError::into_inner);
        let live = book.live(now);
        let used = usage(&live, snapshot.as_deref());
        let overruns = live
            .iter()
            .zip(&used)
            .filter_map(|(l, u)| {
                let used_gb = u.used_gb?;
                // Health warns while the job holds more than it reserved; the lease's `overrun`
                // flag keeps the history, so a past overrun does not keep the warning up.
                (used_gb > l.vram_reserved_gb + 0.01).then(|| Overrun {
                    label: l.label().to_owned(),
                    used_gb,
                    reserved_gb: l.vram_reserved_gb,
                })
            })
            .collect();
        let outstanding = outstanding_by_gpu(&used);
        let leases: Vec<(Lease, LeaseUsage)> = live.into_iter().cloned().zip(used).collect();
        View {
            active: leases.len() as u32,
            snapshot,
            live: self.live(),
            leases,
            outstanding,
            overruns,
            observed: Arc::clone(&self.observed.read().unwrap_or_else(PoisonError::into_inner)),
            store_problem: self.store_status.problem(),
            now,
        }
    }

    /// A consistent copy of what a decision reads, now.
    pub fn view(&self) -> View {
        self.view_at(now_unix())
    }

    /// Runs `f` with the state store on a blocking thread, holding the writers' lock for all of
    /// it. Every write that is not a lease's goes through here, so read-decide-write sequences
    /// are serialised and a rejected or failed one leaves nothing half done. Such a write needs
    /// its own transaction, so the open batch of lease writes is committed first. `what` names
    /// the operation in the log if the blocking task itself fails.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.with_store(what, move |st, store| {
            // A failed batch is answered to its own waiters; this write goes on regardless.
            let _ = st.commit_leases(store);
            f(st, store)
        })
        .await
    }

    /// Runs `f` with the store under the writers' lock on a blocking thread, as it is.
    async fn with_store<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let state = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut store = state.store.lock().unwrap_or_else(PoisonError::into_inner);
            f(&state, &mut store)
        })
        .await
        .map_err(|e| ServiceError::failed(what, e))?;
        self.log_store_transition();
        result
    }

    /// Runs lease writes `f` on the commit thread, into the open batch under the writers' lock,
    /// and returns once the batch holding them is committed, with every lease write that came in
    /// meanwhile, by one fsync (group commit, see [`commit`]). Returns `f`'s result and whether
    /// its writes are durable (`Ok(())` also when it wrote nothing).
    pub(crate) async fn batched<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<(T, Result<(), ServiceError>), ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: lease_thread::Job = Box::new(move |st, store| {
            let before = store.batch_marker();
            let out = f(st, store);
            let wrote = store.batch_marker() != before;
            Box::new(move |durable| {
                let durable = if wrote { durable.clone() } else { Ok(()) };
                let _ = tx.send(out.map(|o| (o, durable)));
            })
        });
        if !self.committer.submit(self.clone(), job) {
            return Err(ServiceError::failed(what, "the commit thread has stopped"));
        }
        rx.await.map_err(|e| ServiceError::failed(what, e))?
    }

    /// Runs lease writes `f` on the commit thread without waiting for them; a failure is logged
    /// (for work nobody is waiting on, like ending a lease whose waiter left).
    pub(crate) fn submit(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store) -> Result<(), ServiceError> + Send + 'static,
    ) {
        let job: lease_thread::Job = Box::new(move |st, store| {
            let out = f(st, store);
            Box::new(move |durable| {
                if let Err(e) = out.and(durable.clone()) {
                    tracing::warn!(error = %e, "{what}");
                }
            })
        });
        if !self.committer.submit(self.clone(), job) {
            tracing::warn!("{what}: the commit thread has stopped");
        }
    }

    /// Runs a read of the history store on a blocking thread, off the writers' lock.
    pub(crate) async fn read_history<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let reader = Arc::clone(&self.history_reader);
        tokio::task::spawn_blocking(move || {
            let reader = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&reader)
        })
        .await
        .map_err(|e| ServiceError::failed("history query failed", e))?
        .map_err(|e| ServiceError::failed("could not read the history", e))
    }
}

/// The live settings: API overrides from the store where present, else config.yaml. An override
/// that no longer validates is an error naming the store, not a silent reset.
fn load_live(store: &Store, config: &Config) -> Result<Live, StoreError> {
    let invalid = |key: &str, message: String| StoreError::Invalid {
        path: store.path().to_owned(),
        key: key.to_owned(),
        message,
    };
    let settings = store.load_override::<Optimization>(settings::OPTIMIZATION_KEY)?.unwrap_or(config.optimization);
    validate_optimization(&settings, MAX_VRAM_GB).map_err(|(f, m)| invalid("optimization", format!("{f}: {m}")))?;
    let constraints = store.load_override::<Constraints>(settings::CONSTRAINTS_KEY)?.unwrap_or(config.constraints);
    validate_constraints(&constraints).map_err(|(f, m)| invalid("constraints", format!("{f}: {m}")))?;
    if settings != config.optimization || constraints != config.constraints {
        tracing::info!(store = %store.path().display(), "using settings changed through the API (DELETE resets them)");
    }
    Ok(Live { settings, constraints })
}

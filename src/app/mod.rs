//! The service layer: everything the HTTP handlers call, and the background tasks that keep the
//! state honest. It owns the shared state, gives every decision one consistent [`View`], and is
//! the only place that writes the store.
//!
//! - [`AppState`]: the shared state and the one write path ([`AppState::write`]).
//! - [`ledger`]: generation leases: the critical section that decides and records, reaping.
//! - [`settings`]: partial updates and resets of the optimization settings and constraints.
//! - [`decisions`]: health, resource-check and the metrics exposition on the live view.
//! - [`history`]: the embedded history recorder, `stats/save` and history queries.
//! - [`error`]: [`ServiceError`], which the HTTP edge maps to status codes.

pub mod decisions;
pub mod error;
pub mod ledger;
pub mod history;
pub mod settings;

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::watch;

use crate::config::{Config, Constraints, HistoryBackend, Optimization, validate_constraints, validate_optimization};
use crate::history::prometheus::PrometheusSource;
use crate::leases::LeaseBook;
use crate::limits::MAX_VRAM_GB;
use crate::metrics::Metrics;
use crate::policy::Context;
use crate::snapshot::{Snapshot, SnapshotRx};
use crate::store::{Store, StoreError};
use crate::time::now_unix;
pub use error::ServiceError;

/// The settings the API can change, as they are now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Live {
    /// Optimization settings.
    pub settings: Optimization,
    /// Resource constraints.
    pub constraints: Constraints,
}

/// Shared, cheaply cloned state of the service.
#[derive(Clone)]
pub struct AppState {
    /// The latest snapshot (None before the first sample).
    pub snapshots: SnapshotRx,
    /// Process metrics, counters and the exposition renderer.
    pub metrics: Arc<Metrics>,
    /// The configuration vramguard started with.
    pub config: Arc<Config>,
    /// Bearer token for writes, when configured.
    pub token: Option<Arc<str>>,
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
}

/// A consistent copy of everything a decision reads.
#[derive(Debug, Clone)]
pub struct View {
    /// Latest snapshot.
    pub snapshot: Option<Arc<Snapshot>>,
    /// Live settings and constraints.
    pub live: Live,
    /// GiB reserved per GPU by leases within their grace period.
    pub reservations: Vec<(u32, f64)>,
    /// Live leases.
    pub active: u32,
    /// When the view was taken, Unix seconds.
    pub now: f64,
}

impl View {
    /// The policy's input built from this view.
    pub fn context<'a>(&'a self, config: &'a Config) -> Context<'a> {
        Context {
            snapshot: self.snapshot.as_deref(),
            constraints: &self.live.constraints,
            settings: &self.live.settings,
            workload: &config.workload,
            gpu_enabled: config.gpu.enabled,
            reservations: &self.reservations,
            active_generations: Some(self.active),
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
        token: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, StoreError> {
        let store = Store::open(&config.state_dir)?;
        let live = load_live(&store, &config)?;
        let leases = LeaseBook::from_leases(store.load_leases()?);
        let history_reader = Arc::new(Mutex::new(store.reader()?));
        let prometheus = match (&config.history.backend, &config.history.prometheus_url) {
            (HistoryBackend::Prometheus, Some(url)) => Some(
                PrometheusSource::new(url, &config.history.prometheus_selector, config.history.prometheus_timeout.0)
                    .map_err(|message| StoreError::Invalid {
                        path: store.path().to_owned(),
                        key: "history.prometheus_url".to_owned(),
                        message,
                    })?,
            ),
            _ => None,
        };
        Ok(Self {
            history_reader,
            prometheus,
            subscribers: Arc::new(AtomicU32::new(0)),
            shutdown,
            leases: Arc::new(RwLock::new(leases)),
            snapshots,
            metrics: Arc::new(Metrics::new()),
            config: Arc::new(config),
            live: Arc::new(RwLock::new(live)),
            store: Arc::new(Mutex::new(store)),
            token: token.map(Arc::from),
        })
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
        let book = self.leases.read().unwrap_or_else(PoisonError::into_inner);
        View {
            snapshot: self.snapshot(),
            live: self.live(),
            reservations: book.reservations(now, self.config.leases.reservation_grace.0),
            active: book.active(now),
            now,
        }
    }

    /// A consistent copy of what a decision reads, now.
    pub fn view(&self) -> View {
        self.view_at(now_unix())
    }

    /// Runs `f` with the state store on a blocking thread, holding the writers' lock for all of
    /// it. Every write goes through here, so read-decide-write sequences are serialised and a
    /// rejected or failed one leaves nothing half done. `what` names the operation in the log
    /// if the blocking task itself fails.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = state.store.lock().unwrap_or_else(PoisonError::into_inner);
            f(&state, &mut store)
        })
        .await
        .map_err(|e| ServiceError::failed(what, e))?
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

//! The HTTP surface: one router, built by [`app`], that tests drive in-process and the server
//! binds to a socket. Handlers are thin: they read the latest snapshot and the live settings,
//! call a pure function in [`crate::policy`], and shape the answer.
//!
//! | method | path | handler | purpose |
//! |---|---|---|---|
//! | GET | `/` | [`admin::landing`] | landing page with links |
//! | GET | `/metrics` | [`admin::metrics`] | Prometheus exposition of the snapshot |
//! | GET | `/-/healthy` | [`admin::healthy`] | liveness: 200 while the process answers |
//! | GET | `/-/ready` | [`admin::ready`] | 503 until the first snapshot, then 200 |
//! | GET | `/api/v1/system/stats` | [`stats::get_stats`] | current snapshot as JSON |
//! | GET | `/api/v1/system/stats/history` | [`history::get_history`] | time series for charts |
//! | POST | `/api/v1/system/stats/save` | [`history::save`] | durably record the current snapshot |
//! | GET | `/api/v1/system/stats/ws` | [`stream::ws`] | WebSocket: one stats message per sample |
//! | GET, POST, DELETE | `/api/v1/system/optimization` | [`settings`] | optimization settings |
//! | GET, POST, DELETE | `/api/v1/system/constraints` | [`settings`] | resource constraints |
//! | GET | `/api/v1/system/health` | [`decisions::get_health`] | health report |
//! | GET | `/api/v1/system/resource-check` | [`decisions::resource_check`] | admission query |
//! | POST, GET | `/api/v1/system/generations` | [`generations`] | take a lease (atomic admission); list |
//! | POST | `/api/v1/system/generations/{id}/heartbeat` | [`generations::heartbeat`] | extend a lease |
//! | DELETE | `/api/v1/system/generations/{id}` | [`generations::release`] | release a lease |
//! | GET | `/api/v1/openapi.json` | [`openapi`] | OpenAPI 3.1 document of the JSON API |
//!
//! Everything else answers 404 (or 405 for a known path) with a JSON `detail`. With
//! `auth.token_file` set, POST and DELETE under `/api/` need the bearer token ([`auth`]).

pub mod admin;
pub mod auth;
pub mod body;
pub mod decisions;
pub mod error;
pub mod generations;
pub mod history;
pub mod openapi;
pub mod settings;
pub mod stats;
pub mod stream;

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::config::HistoryBackend;
use crate::config::{Config, Constraints, Optimization};
use crate::history::prometheus::PrometheusSource;
use crate::leases::LeaseBook;
use crate::metrics::Metrics;
use crate::policy::Context;
use crate::sampler::SnapshotRx;
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::store::StoreError;
use error::ApiError;
use tokio::sync::watch;

/// The settings the API can change, as they are now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Live {
    /// Optimization settings.
    pub settings: Optimization,
    /// Resource constraints.
    pub constraints: Constraints,
}

/// Shared, cheaply cloned state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The latest snapshot (None before the first sample).
    pub snapshots: SnapshotRx,
    /// Process metrics, counters and the exposition renderer.
    pub metrics: Arc<Metrics>,
    /// The configuration vramguard started with.
    pub config: Arc<Config>,
    /// Live settings and constraints. A std lock: held for a copy, never across an await.
    pub live: Arc<RwLock<Live>>,
    /// The state store. Writers take this lock on a blocking thread for the whole
    /// read-validate-write-publish sequence, so concurrent updates are serialised.
    pub store: Arc<Mutex<Store>>,
    /// Bearer token for writes, when configured.
    pub token: Option<Arc<str>>,
    /// Generation leases. Changed only under the store lock (after the store write); read by
    /// every decision for the active count and the VRAM reservations.
    pub leases: Arc<RwLock<LeaseBook>>,
    /// A second connection to the store for history reads, so a long query never holds the
    /// writers' lock.
    pub history_reader: Arc<Mutex<Store>>,
    /// Prometheus history source, when `history.backend` is `prometheus`.
    pub prometheus: Option<PrometheusSource>,
    /// WebSocket subscribers now.
    pub subscribers: Arc<AtomicU32>,
    /// Flips to true when the server shuts down (WebSockets close on it).
    pub shutdown: watch::Receiver<bool>,
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
        }
    }
}

/// Wall-clock Unix seconds: lease times must keep counting across a restart.
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl AppState {
    /// State for a service whose store and live values were loaded by the caller.
    pub fn new(
        config: Config,
        snapshots: SnapshotRx,
        store: Store,
        live: Live,
        leases: LeaseBook,
        token: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, StoreError> {
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
        *self.live.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }

    /// A consistent copy of what a decision reads, at `now`.
    pub fn view_at(&self, now: f64) -> View {
        let book = self.leases.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        View {
            snapshot: self.snapshot(),
            live: self.live(),
            reservations: book.reservations(now, self.config.leases.reservation_grace.0),
            active: book.active(now),
        }
    }

    /// A consistent copy of what a decision reads, now.
    pub fn view(&self) -> View {
        self.view_at(now_seconds())
    }

    /// Runs `f` with the state store on a blocking thread, holding the writers' lock for all of
    /// it. Every write goes through here, so read-decide-write sequences are serialised and a
    /// rejected or failed one leaves nothing half done. `what` names the operation in the log
    /// if the blocking task itself fails.
    pub async fn write<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&AppState, &mut Store) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = state.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&state, &mut store)
        })
        .await
        .map_err(|e| ApiError::internal(what, e))?
    }
}

/// The router with every endpoint.
pub fn app(state: AppState) -> Router {
    let (api, _doc) = openapi::api_router().split_for_parts();
    Router::new()
        .route("/", get(admin::landing))
        .route("/metrics", get(admin::metrics))
        .route("/-/healthy", get(admin::healthy))
        .route("/-/ready", get(admin::ready))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/system/stats/ws", get(stream::ws))
        .merge(api)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(DefaultBodyLimit::max(body::BODY_LIMIT))
        .with_state(state)
}

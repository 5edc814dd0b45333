//! The HTTP surface: one router, built by [`app`], that tests drive in-process and the server
//! binds to a socket.
//!
//! | method | path         | handler                 | purpose                                 |
//! |--------|--------------|-------------------------|-----------------------------------------|
//! | GET    | `/`          | [`admin::landing`]      | landing page with links                 |
//! | GET    | `/metrics`   | [`admin::metrics`]      | Prometheus exposition of the snapshot   |
//! | GET    | `/-/healthy` | [`admin::healthy`]      | liveness: 200 while the process answers |
//! | GET    | `/-/ready`   | [`admin::ready`]        | 503 until the first snapshot, then 200  |
//!
//! Everything else answers 404 (or 405 for a known path) with a JSON `detail`.

pub mod admin;
pub mod error;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::routing::get;

use crate::config::{Config, Constraints};
use crate::metrics::Metrics;
use crate::sampler::SnapshotRx;

/// Shared, cheaply cloned state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The latest snapshot (None before the first sample).
    pub snapshots: SnapshotRx,
    /// Process metrics and the exposition renderer.
    pub metrics: Arc<Metrics>,
    /// The configuration vramguard started with.
    pub config: Arc<Config>,
    /// Live constraints. A std lock: it is held for a copy, never across an await.
    pub constraints: Arc<RwLock<Constraints>>,
}

impl AppState {
    /// State for a freshly started service.
    pub fn new(config: Config, snapshots: SnapshotRx) -> Self {
        Self {
            snapshots,
            metrics: Arc::new(Metrics::new()),
            constraints: Arc::new(RwLock::new(config.constraints)),
            config: Arc::new(config),
        }
    }

    /// A copy of the live constraints.
    pub fn constraints(&self) -> Constraints {
        *self.constraints.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The router with every endpoint.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(admin::landing))
        .route("/metrics", get(admin::metrics))
        .route("/-/healthy", get(admin::healthy))
        .route("/-/ready", get(admin::ready))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

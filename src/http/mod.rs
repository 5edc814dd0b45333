//! The HTTP surface: one router, built by [`app`], that tests drive in-process and the server
//! serves on its listener. Handlers are thin: they parse the request, call the service layer
//! ([`crate::app`]), and shape the answer; [`error::ApiError`] is the one error type here.
//!
//! | method | path | handler | purpose |
//! |---|---|---|---|
//! | GET | `/` | [`page`] | the live page: GPUs, charts, leases, what-if, editors |
//! | GET | `/assets/...` | [`page`] | the page's scripts, styles and vendored uPlot (embedded) |
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
//! | GET | `/api/v1/system/generations/queue` | [`generations::queue`] | requests waiting for room |
//! | POST | `/api/v1/system/generations/{id}/heartbeat` | [`generations::heartbeat`] | extend a lease |
//! | DELETE | `/api/v1/system/generations/{id}` | [`generations::release`] | release a lease (`?peak_vram_gb=`) |
//! | GET, DELETE | `/api/v1/system/observations` | [`observations`] | observed peaks behind learned estimates |
//! | GET | `/api/v1/system/workloads` | [`workloads::list`] | workload profiles with their defaults and estimates |
//! | GET | `/api/v1/openapi.json` | [`openapi`] | OpenAPI 3.1 document of the JSON API |
//!
//! Everything else answers 404 (or 405 for a known path) with a JSON `detail`. Before routing,
//! one layer ([`edge`]) runs [`host_check`], which refuses foreign `Host`s, cross-origin writes and
//! WebSockets, and bodies declared over the limit, then [`auth`]: with tokens configured, writes
//! under `/api/` (and with `auth.protect_reads`, reads) need a bearer token of the right role.
//!
//! The files below are declared lowest first: each uses only the ones declared before it, and none
//! uses this file (`tests/architecture.rs` checks it).

pub(crate) mod error;
pub(crate) mod body;
pub(crate) mod wire;
pub(crate) mod check_json;
pub(crate) mod host_check;
pub(crate) mod auth;
pub(crate) mod edge;
pub(crate) mod stats;
pub(crate) mod stream;
pub(crate) mod history;
pub(crate) mod decisions;
pub(crate) mod lease_wire;
pub(crate) mod generations;
pub(crate) mod observations;
pub(crate) mod workloads;
pub(crate) mod settings;
pub(crate) mod admin;
pub(crate) mod page;
pub(crate) mod openapi;

use std::convert::Infallible;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::Response;
use axum::routing::get;
use tower::{Layer, Service};

pub(crate) use crate::app::AppState;
use crate::limits::BODY_LIMIT;

/// Every endpoint behind the edge: what tests drive in-process and the server serves. The edge
/// and the body limit wrap the router as a whole: `Router::layer` would wrap each route again,
/// which costs a boxed clone of the layered route and a boxed future per layer and request.
pub fn app(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static> + Clone + Send + Sync + 'static
{
    let (api, _doc) = openapi::api_router().split_for_parts();
    let router = Router::new()
        .route("/metrics", get(admin::metrics))
        .route("/-/healthy", get(admin::healthy))
        .route("/-/ready", get(admin::ready))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/system/stats/ws", get(stream::ws))
        .merge(api)
        .merge(page::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state.clone());
    // Outermost: a request from the wrong Host or Origin, or without the token it needs, meets
    // nothing else.
    edge::Edge::layer(state).layer(DefaultBodyLimit::max(BODY_LIMIT).layer(router))
}

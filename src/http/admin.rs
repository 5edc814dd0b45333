//! Operator endpoints: metrics, liveness and readiness.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// `GET /metrics`: renders the latest snapshot; never touches hardware.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.decisions().scrape();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `GET /-/healthy`: the process is up and serving.
pub(crate) async fn healthy() -> &'static str {
    "vramguard is healthy.\n"
}

/// `GET /-/ready`: 200 once a snapshot exists. A snapshot never goes away, so readiness never
/// flips back; collectors that fail later show in `vramguard_collector_success` instead.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if state.snapshot().is_some() {
        (StatusCode::OK, "vramguard is ready.\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "vramguard is not ready: no sample yet.\n")
            .into_response()
    }
}

//! Operator endpoints: landing page, metrics, liveness and readiness.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;

/// `GET /`: a page of links, so a person who opens the port in a browser finds their way.
pub async fn landing() -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vramguard</title></head>\n<body>\n\
         <h1>vramguard {}</h1>\n<p>Prometheus exporter and admission sidecar for GPU generation pipelines.</p>\n\
         <ul>\n<li><a href=\"/metrics\">/metrics</a> Prometheus exposition</li>\n\
         <li><a href=\"/-/healthy\">/-/healthy</a> liveness</li>\n\
         <li><a href=\"/-/ready\">/-/ready</a> readiness (after the first sample)</li>\n\
         </ul>\n</body></html>\n",
        crate::metrics::VERSION
    ))
}

/// `GET /metrics`: renders the latest snapshot; never touches hardware.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    let body = state.metrics.render(snapshot.as_deref(), &state.constraints());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `GET /-/healthy`: the process is up and serving.
pub async fn healthy() -> &'static str {
    "vramguard is healthy.\n"
}

/// `GET /-/ready`: 200 once a snapshot exists. A snapshot never goes away, so readiness never
/// flips back; collectors that fail later show in `vramguard_collector_success` instead.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.snapshots.borrow().is_some() {
        (StatusCode::OK, "vramguard is ready.\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "vramguard is not ready: no sample yet.\n")
            .into_response()
    }
}

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
         <li><a href=\"/api/v1/system/stats\">/api/v1/system/stats</a> current readings (JSON)</li>\n\
         <li><a href=\"/api/v1/system/stats/history\">/api/v1/system/stats/history</a> history for charts</li>\n\
         <li><a href=\"/api/v1/system/health\">/api/v1/system/health</a> health report</li>\n\
         <li><a href=\"/api/v1/system/resource-check\">/api/v1/system/resource-check</a> may a generation start now?</li>\n\
         <li><a href=\"/api/v1/system/optimization\">/api/v1/system/optimization</a> optimization settings</li>\n\
         <li><a href=\"/api/v1/system/constraints\">/api/v1/system/constraints</a> resource constraints</li>\n\
         <li><a href=\"/api/v1/system/generations\">/api/v1/system/generations</a> generation leases</li>\n\
         <li><a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a> OpenAPI document</li>\n\
         </ul>\n</body></html>\n",
        crate::metrics::VERSION
    ))
}

/// `GET /metrics`: renders the latest snapshot; never touches hardware.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.render_metrics();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `GET /-/healthy`: the process is up and serving.
pub async fn healthy() -> &'static str {
    "vramguard is healthy.\n"
}

/// `GET /-/ready`: 200 once a snapshot exists. A snapshot never goes away, so readiness never
/// flips back; collectors that fail later show in `vramguard_collector_success` instead.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.snapshot().is_some() {
        (StatusCode::OK, "vramguard is ready.\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "vramguard is not ready: no sample yet.\n")
            .into_response()
    }
}

//! `ApiError`: the one error type of the HTTP surface. Every rejection is a JSON body
//! `{"detail": "..."}` with a 4xx status; nothing a client sends produces a 5xx.

use axum::Json;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A rejected request, with the sentence the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong and what is allowed.
    pub detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    detail: &'a str,
}

impl ApiError {
    /// 400 with a detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, detail: detail.into() }
    }

    /// 404 with a detail.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, detail: detail.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(Body { detail: &self.detail })).into_response()
    }
}

/// Fallback for unknown paths.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}; see / for the list", uri.path()))
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        detail: format!("method {method} is not allowed on {}", uri.path()),
    }
}

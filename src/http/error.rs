//! `ApiError`: the one error type of the HTTP surface. Every rejection is a JSON body
//! `{"detail": "..."}` with a 4xx status; nothing a client sends produces a 5xx.

use axum::Json;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::app::ServiceError;

/// `Retry-After` of a 503, seconds.
pub(crate) const RETRY_AFTER_SECONDS: &str = "5";

/// A rejected request, with the sentence the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong and what is allowed.
    pub detail: String,
}

/// The JSON body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What was wrong and what is allowed.
    pub detail: String,
}

impl ApiError {
    /// 400 with a detail.
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, detail: detail.into() }
    }

    /// 404 with a detail.
    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, detail: detail.into() }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            // Starting, not failing.
            ServiceError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            // Not the client's fault, and not for good: the store may take writes again.
            ServiceError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, detail: e.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { detail: self.detail })).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        // Every 503 is a condition that passes (starting, a full queue or subscriber list, a
        // store that does not take writes): say when to ask again.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

/// Fallback for unknown paths.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}; see / for the list", uri.path()))
}

/// Fallback for a known path with the wrong method.
pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        detail: format!("method {method} is not allowed on {}", uri.path()),
    }
}

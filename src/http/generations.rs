//! `/api/v1/system/generations`: take, list, extend and release generation leases. The critical
//! section that makes admission hold under concurrency is the service layer's
//! ([`crate::app::ledger`]); these handlers parse and shape.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::body::{Allowed, JsonBody};
use super::error::{ApiError, ErrorBody};
use crate::app::ledger::{Acquired, LeaseAsk};
use crate::leases::Lease;
use crate::policy::admission::ResourceCheck;
use crate::time::rfc3339_unix;

/// Body of `POST /generations`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// VRAM the job needs, GiB; default: the workload estimate.
    #[schema(exclusive_minimum = 0.0, maximum = 1024.0)]
    pub vram_required_gb: Option<f64>,
    /// The worker already holds its model: only activations, VAE and overhead count.
    pub model_loaded: Option<bool>,
    /// Only this GPU index may be used.
    #[schema(minimum = 0, maximum = 1023)]
    pub gpu: Option<u32>,
    /// Lease lifetime, seconds (10–86400; default `leases.default_ttl`).
    #[schema(minimum = 10, maximum = 86400)]
    pub ttl_seconds: Option<u64>,
    /// Who holds the lease (at most 128 characters), for the listing.
    #[schema(max_length = 128)]
    pub client: Option<String>,
}

impl Allowed for LeaseRequest {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("vram_required_gb", "a number above 0 up to 1024 (GiB)"),
        ("model_loaded", "true or false"),
        ("gpu", "a GPU index (integer)"),
        ("ttl_seconds", "integers 10 to 86400"),
        ("client", "a string of at most 128 characters"),
    ];
}

/// Body of a heartbeat: optionally a new lifetime.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// New lifetime from now, seconds (10–86400); default: the lease's own.
    #[schema(minimum = 10, maximum = 86400)]
    pub ttl_seconds: Option<u64>,
}

impl Allowed for HeartbeatRequest {
    const FIELDS: &'static [(&'static str, &'static str)] = &[("ttl_seconds", "integers 10 to 86400")];
}

/// The GPU a lease is placed on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseGpu {
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
}

/// A lease as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseBody {
    /// Lease id: 32 hex digits.
    pub id: String,
    /// Where the job goes; null on a host without GPUs.
    pub gpu: Option<LeaseGpu>,
    /// VRAM promised to the job, GiB.
    pub vram_reserved_gb: f64,
    /// When it was granted (RFC 3339 UTC).
    pub granted_at: String,
    /// When it lapses without a heartbeat (RFC 3339 UTC).
    pub expires_at: String,
    /// Lifetime a heartbeat renews, seconds.
    pub ttl_seconds: u64,
    /// Who holds it.
    pub client: Option<String>,
}

impl From<&Lease> for LeaseBody {
    fn from(l: &Lease) -> Self {
        Self {
            id: l.id.clone(),
            gpu: l.gpu_index.map(|index| LeaseGpu { index, uuid: l.gpu_uuid.clone().unwrap_or_default() }),
            vram_reserved_gb: l.vram_reserved_gb,
            granted_at: rfc3339_unix(l.granted_at),
            expires_at: rfc3339_unix(l.expires_at),
            ttl_seconds: l.ttl_seconds,
            client: l.client.clone(),
        }
    }
}

/// 201: the lease and the resource-check it passed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseGranted {
    /// Lease id.
    pub id: String,
    /// Where the job goes.
    pub gpu: Option<LeaseGpu>,
    /// VRAM promised, GiB.
    pub vram_reserved_gb: f64,
    /// When it lapses without a heartbeat (RFC 3339 UTC).
    pub expires_at: String,
    /// The decision that admitted it.
    pub resource_check: ResourceCheck,
}

/// 409: why not, with the decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseRefused {
    /// The blocking issues in one sentence.
    pub detail: String,
    /// The decision that refused it.
    pub resource_check: ResourceCheck,
}

/// Answer of `GET /generations`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseList {
    /// Live leases, oldest first.
    pub leases: Vec<LeaseBody>,
    /// How many there are.
    pub active_generations: u32,
    /// The live limit.
    pub max_concurrent_generations: u32,
}

/// Takes a generation lease if resources allow: 201 with the lease, or 409 with the reasons.
#[utoipa::path(post, path = "/api/v1/system/generations", tag = "leases",
    request_body = LeaseRequest,
    responses(
        (status = 201, body = LeaseGranted), (status = 409, body = LeaseRefused),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub async fn acquire(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<LeaseRequest>,
) -> Result<Response, ApiError> {
    let ask = LeaseAsk {
        vram_required_gb: req.vram_required_gb,
        model_loaded: req.model_loaded.unwrap_or(false),
        gpu: req.gpu,
        ttl_seconds: req.ttl_seconds,
        client: req.client,
    };
    Ok(match state.acquire(ask).await? {
        Acquired::Granted(lease, check) => {
            let body = LeaseBody::from(&lease);
            let granted = LeaseGranted {
                id: body.id,
                gpu: body.gpu,
                vram_reserved_gb: body.vram_reserved_gb,
                expires_at: body.expires_at,
                resource_check: check,
            };
            (StatusCode::CREATED, Json(granted)).into_response()
        }
        Acquired::Refused(check) => {
            let detail = format!("generation refused: {}", check.blocking_issues.join("; "));
            (StatusCode::CONFLICT, Json(LeaseRefused { detail, resource_check: check })).into_response()
        }
    })
}

/// Live leases.
#[utoipa::path(get, path = "/api/v1/system/generations", tag = "leases",
    responses((status = 200, body = LeaseList)))]
pub async fn list(State(state): State<AppState>) -> Json<LeaseList> {
    let leases: Vec<LeaseBody> = state.live_leases().iter().map(LeaseBody::from).collect();
    Json(LeaseList {
        active_generations: leases.len() as u32,
        leases,
        max_concurrent_generations: state.live().constraints.max_concurrent_generations,
    })
}

/// Extends a live lease by its TTL (or the one given) from now.
#[utoipa::path(post, path = "/api/v1/system/generations/{id}/heartbeat", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    request_body(content = Option<HeartbeatRequest>, description = "Optional new lifetime"),
    responses(
        (status = 200, body = LeaseBody), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Option<JsonBody<HeartbeatRequest>>,
) -> Result<Json<LeaseBody>, ApiError> {
    let ttl = body.and_then(|JsonBody(b)| b.ttl_seconds);
    let lease = state.heartbeat(id, ttl).await?;
    Ok(Json(LeaseBody::from(&lease)))
}

/// Releases a lease: 204, or 404 when unknown or already expired.
#[utoipa::path(delete, path = "/api/v1/system/generations/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 204, description = "Released"), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn release(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.release(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

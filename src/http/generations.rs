//! Generation leases: admission that holds under concurrency (SPEC §3.2).
//!
//! `POST /generations` runs the resource-check decision and, if it admits, records the lease in
//! the same critical section: the store lock, taken on a blocking thread, covers reaping,
//! reading the lease book, deciding, the durable insert and publishing the lease. N callers
//! racing for the last slot therefore get exactly the free slots. The only I/O inside is the
//! state-store write; the snapshot and settings are in-memory copies.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{Allowed, JsonBody};
use super::decisions::validate_required;
use super::error::{ApiError, ErrorBody};
use super::{AppState, now_seconds};
use crate::leases::{Lease, is_valid_id, new_id};
use crate::policy::admission::{CheckRequest, ResourceCheck, resource_check};
use crate::snapshot::rfc3339;
use crate::store::Store;

/// Shortest and longest lease lifetimes, seconds.
pub const TTL_RANGE: (u64, u64) = (10, 86_400);
/// Longest `client` name.
pub const CLIENT_MAX_CHARS: usize = 128;

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
            granted_at: rfc3339(to_time(l.granted_at)),
            expires_at: rfc3339(to_time(l.expires_at)),
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

fn to_time(secs: f64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs.max(0.0))
}

/// Removes lapsed leases from the store and the book; returns how many. Called with the store
/// lock held, so it logs nothing: the only I/O in the critical section is the store write.
fn reap(state: &AppState, store: &mut Store, now: f64) -> Result<usize, ApiError> {
    let expired = book(state).expired(now);
    if expired.is_empty() {
        return Ok(0);
    }
    store.delete_leases(&expired).map_err(|e| ApiError::internal("could not write the state store", e))?;
    let mut book = book_mut(state);
    for id in &expired {
        book.remove(id);
    }
    Ok(expired.len())
}

/// Reaps lapsed leases; run by the server on a timer.
pub async fn reap_expired(state: &AppState) {
    match state.write("reaping leases failed", |st, store| reap(st, store, now_seconds())).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "expired generation leases reaped"),
        Err(e) => tracing::warn!(error = %e.detail, "reaping leases failed"),
    }
}

/// Runs `f` in the lease critical section: under the store lock, after reaping lapsed leases,
/// with one `now` for everything it decides.
async fn critical<T: Send + 'static>(
    state: &AppState,
    what: &'static str,
    f: impl FnOnce(&AppState, &mut Store, f64) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    state
        .write(what, move |st, store| {
            let now = now_seconds();
            reap(st, store, now)?;
            f(st, store, now)
        })
        .await
}

fn book(state: &AppState) -> std::sync::RwLockReadGuard<'_, crate::leases::LeaseBook> {
    state.leases.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn book_mut(state: &AppState) -> std::sync::RwLockWriteGuard<'_, crate::leases::LeaseBook> {
    state.leases.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn no_live_lease(id: &str) -> ApiError {
    ApiError::not_found(format!("no live lease with id {id}; it was released or expired"))
}

fn validate_ttl(ttl: Option<u64>) -> Result<(), ApiError> {
    match ttl {
        Some(t) if !(TTL_RANGE.0..=TTL_RANGE.1).contains(&t) => Err(ApiError::bad_request(format!(
            "ttl_seconds: {t} is out of range; allowed integers {} to {}",
            TTL_RANGE.0, TTL_RANGE.1
        ))),
        _ => Ok(()),
    }
}

fn validate(req: &LeaseRequest) -> Result<(), ApiError> {
    validate_required(req.vram_required_gb)?;
    validate_ttl(req.ttl_seconds)?;
    if let Some(c) = &req.client
        && c.chars().count() > CLIENT_MAX_CHARS
    {
        return Err(ApiError::bad_request(format!(
            "client: {} characters is too long; allowed at most {CLIENT_MAX_CHARS}",
            c.chars().count()
        )));
    }
    Ok(())
}

enum Outcome {
    Granted(Lease, ResourceCheck),
    Refused(ResourceCheck),
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
    validate(&req)?;
    let outcome = critical(&state, "lease decision failed", move |st, store, now| {
        let view = st.view_at(now);
        let check = resource_check(
            &view.context(&st.config),
            &CheckRequest {
                vram_required_gb: req.vram_required_gb,
                model_loaded: req.model_loaded.unwrap_or(false),
                gpu: req.gpu,
            },
        );
        if !check.can_start_generation {
            return Ok(Outcome::Refused(check));
        }
        let ttl = req.ttl_seconds.unwrap_or_else(|| st.config.leases.default_ttl.0.as_secs());
        let lease = Lease {
            id: new_id(),
            gpu_index: check.gpu.as_ref().map(|g| g.index),
            gpu_uuid: check.gpu.as_ref().map(|g| g.uuid.clone()),
            vram_reserved_gb: check.vram_required_gb,
            granted_at: now,
            expires_at: now + ttl as f64,
            ttl_seconds: ttl,
            client: req.client,
        };
        store.put_lease(&lease).map_err(|e| ApiError::internal("could not write the state store", e))?;
        book_mut(st).insert(lease.clone());
        Ok(Outcome::Granted(lease, check))
    })
    .await?;
    Ok(match outcome {
        Outcome::Granted(lease, check) => {
            state.metrics.record_decision(true, check.primary_reason());
            tracing::info!(id = %lease.id, gpu = ?lease.gpu_index, gb = lease.vram_reserved_gb, client = ?lease.client, "generation lease granted");
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
        Outcome::Refused(check) => {
            state.metrics.record_decision(false, check.primary_reason());
            let detail = format!("generation refused: {}", check.blocking_issues.join("; "));
            (StatusCode::CONFLICT, Json(LeaseRefused { detail, resource_check: check })).into_response()
        }
    })
}

/// Live leases.
#[utoipa::path(get, path = "/api/v1/system/generations", tag = "leases",
    responses((status = 200, body = LeaseList)))]
pub async fn list(State(state): State<AppState>) -> Json<LeaseList> {
    let now = now_seconds();
    let leases: Vec<LeaseBody> = book(&state).live(now).into_iter().map(LeaseBody::from).collect();
    Json(LeaseList {
        active_generations: leases.len() as u32,
        leases,
        max_concurrent_generations: state.live().constraints.max_concurrent_generations,
    })
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no lease with id {id:?}; lease ids are 32 lowercase hex digits")))
    }
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
    check_id(&id)?;
    let ttl = body.and_then(|JsonBody(b)| b.ttl_seconds);
    validate_ttl(ttl)?;
    let lease = critical(&state, "heartbeat failed", move |st, store, now| {
        let mut lease = book(st).get_live(&id, now).cloned().ok_or_else(|| no_live_lease(&id))?;
        if let Some(t) = ttl {
            lease.ttl_seconds = t;
        }
        lease.expires_at = now + lease.ttl_seconds as f64;
        store.put_lease(&lease).map_err(|e| ApiError::internal("could not write the state store", e))?;
        book_mut(st).insert(lease.clone());
        Ok(lease)
    })
    .await?;
    Ok(Json(LeaseBody::from(&lease)))
}

/// Releases a lease: 204, or 404 when unknown or already expired.
#[utoipa::path(delete, path = "/api/v1/system/generations/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 204, description = "Released"), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn release(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    let id_for_log = id.clone();
    critical(&state, "release failed", move |st, store, now| {
        if book(st).get_live(&id, now).is_none() {
            return Err(no_live_lease(&id));
        }
        store
            .delete_leases(std::slice::from_ref(&id))
            .map_err(|e| ApiError::internal("could not write the state store", e))?;
        book_mut(st).remove(&id);
        Ok(())
    })
    .await?;
    tracing::info!(id = %id_for_log, "generation lease released");
    Ok(StatusCode::NO_CONTENT)
}

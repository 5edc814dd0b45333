//! `/api/v1/system/generations`: take, list, extend and release generation leases. The critical
//! section that makes admission hold under concurrency is the service layer's
//! ([`crate::app::ledger`]); these handlers parse and shape.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::body::{JsonBody, QueryParams};
use super::error::{ApiError, ErrorBody};
use super::lease_wire::{
    HeartbeatRequest, LeaseBody, LeaseConflict, LeaseGranted, LeaseList, LeaseRefused, LeaseRequest, QueueList,
    ReleasePending, ReleaseQuery, WaitingBody,
};
use crate::app::AppState;
use crate::app::Caller;
use crate::app::lease_terms::{HungUp, LeaseAsk, Processes, Released};
use crate::app::queue::{Admission, retry_after_seconds};
use crate::leases::{Attribution, LeaseUsage, Outcome};
use crate::limits;
use crate::policy::gang::Pins;
use crate::policy::phases::SizeAsk;
use crate::time::rfc3339_unix;
use crate::units::round2;

/// Takes a generation lease if resources allow: 201 with the lease, or 409 with the reasons.
/// With `wait_seconds`, a refusal that can clear waits in the admission queue first; a 409 after
/// waiting carries `queue_position` and `Retry-After`.
#[utoipa::path(post, path = "/api/v1/system/generations", tag = "leases",
    request_body = LeaseRequest,
    responses(
        (status = 201, body = LeaseGranted),
        (status = 409, body = LeaseConflict, description = "Refused by the decision (resource_check says why), or a pid another live lease lists (detail names it)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "A reader token may not take leases"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 503, body = ErrorBody,
            description = "The admission queue is full, or the state store cannot record the lease (Retry-After)"),
    ))]
pub(crate) async fn acquire(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    hung_up: Option<Extension<HungUp>>,
    JsonBody(req): JsonBody<LeaseRequest>,
) -> Result<Response, ApiError> {
    let hung_up = hung_up.map(|Extension(h)| h);
    let ask = LeaseAsk {
        vram_required_gb: req.vram_required_gb,
        model_loaded: req.model_loaded.unwrap_or(false),
        gpu: req.gpu,
        ttl_seconds: req.ttl_seconds,
        client: req.client,
        processes: Processes { pids: req.pids, pid_namespace: req.pid_namespace, pid_start_times: req.pid_start_times },
        workload: req.workload,
        size: SizeAsk { width: req.width, height: req.height, frames: req.frames },
        owner: caller.owner().map(str::to_owned),
        hung_up,
        holds_own: false,
        gpus: req.gpus.unwrap_or(1),
        pins: match &req.gpu_indices {
            Some(list) => Some(Pins::new(list).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "gpu_indices: {} indices; allowed {}",
                    list.len(),
                    limits::GPU_INDICES_WORDS
                ))
            })?),
            None => None,
        },
    };
    Ok(match state.queue().acquire_waiting(ask, req.wait_seconds.unwrap_or(0.0)).await? {
        Admission::Granted(lease, check) => {
            let mut ranks = state.ledger().generation_now(&lease.id);
            if ranks.is_empty() {
                // Lapsed or released in the instant since: shown as granted, all owed.
                let owed = LeaseUsage {
                    id: lease.id.clone(),
                    gpu_index: lease.gpu_index,
                    used_gb: None,
                    outstanding_gb: lease.vram_reserved_gb,
                    attribution: Attribution::Growth,
                };
                ranks.push((*lease, owed));
            }
            let granted = LeaseGranted { lease: LeaseBody::of(&ranks), resource_check: (&check).into() };
            (StatusCode::CREATED, Json(granted)).into_response()
        }
        Admission::Refused { check, queue_position } => {
            let detail = format!("generation refused: {}", check.blocking_issues.join("; "));
            let body = Json(LeaseRefused { detail, resource_check: (&check).into(), queue_position });
            match queue_position {
                Some(_) => {
                    let retry = retry_after_seconds(queue_position).to_string();
                    (StatusCode::CONFLICT, [(header::RETRY_AFTER, retry)], body).into_response()
                }
                None => (StatusCode::CONFLICT, body).into_response(),
            }
        }
        Admission::Failed(e) => return Err(e.into()),
        Admission::QueueFull { waiting } => {
            let detail = format!(
                "the admission queue is full ({waiting} generations waiting, queue.max_waiting); try again later"
            );
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], Json(ErrorBody { detail })).into_response()
        }
    })
}

/// The generation requests waiting for room, first in line first. Waiting requests are kept in
/// memory only: a restart drops them.
#[utoipa::path(get, path = "/api/v1/system/generations/queue", tag = "leases",
    responses((status = 200, body = QueueList),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn queue(State(state): State<AppState>) -> Json<QueueList> {
    let waiting = state
        .queue()
        .waiting_list()
        .into_iter()
        .map(|w| WaitingBody {
            position: w.position,
            client: w.client,
            vram_required_gb: w.vram_required_gb.map(round2),
            workload: w.workload,
            waited_seconds: round2(w.waited_seconds),
            deadline: rfc3339_unix(w.deadline),
            gpus: w.gpus,
            holding: w.holding,
        })
        .collect();
    Json(QueueList { policy: state.config().queue.policy.as_str(), waiting })
}

/// Live leases; each one's id only for its owner and admin tokens.
#[utoipa::path(get, path = "/api/v1/system/generations", tag = "leases",
    responses((status = 200, body = LeaseList),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Json<LeaseList> {
    // A gang is one generation: one body with its GPUs.
    let leases: Vec<LeaseBody> =
        state.ledger().generations_now().iter().map(|ranks| LeaseBody::seen_by(ranks, &caller)).collect();
    Json(LeaseList {
        active_generations: leases.len() as u32,
        leases,
        max_concurrent_generations: state.settings().live().constraints.max_concurrent_generations,
    })
}

/// Extends a live lease by its TTL (or the one given) from now.
#[utoipa::path(post, path = "/api/v1/system/generations/{id}/heartbeat", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    request_body(content = Option<HeartbeatRequest>, description = "Optional new lifetime"),
    responses(
        (status = 200, body = LeaseBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A pid another live lease lists"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Another client's lease, or a reader token"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 503, body = ErrorBody,
            description = "The state store cannot record the extension; the lease is unchanged (Retry-After)"),
    ))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Option<JsonBody<HeartbeatRequest>>,
) -> Result<Json<LeaseBody>, ApiError> {
    let (ttl, processes) = body
        .map(|JsonBody(b)| {
            let processes =
                Processes { pids: b.pids, pid_namespace: b.pid_namespace, pid_start_times: b.pid_start_times };
            (b.ttl_seconds, processes)
        })
        .unwrap_or_default();
    let lease = state.ledger().heartbeat(id, ttl, processes, caller).await?;
    let ranks = state.ledger().generation_now(&lease.id);
    if ranks.is_empty() {
        return Err(ApiError::not_found("the lease expired just now"));
    }
    Ok(Json(LeaseBody::of(&ranks)))
}

/// Releases a lease: 204, or 404 when unknown or already expired. The slot is free in either
/// 2xx: 202 when the state store did not take the release yet (vramguard retries it until it
/// does; a restart before then brings the lease back until its TTL ends).
#[utoipa::path(delete, path = "/api/v1/system/generations/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id"), ReleaseQuery),
    responses((status = 204, description = "Released"),
        (status = 202, body = ReleasePending, description = "Released in memory; not yet durable, retrying"),
        (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Another client's lease, or a reader token")))]
pub(crate) async fn release(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ReleaseQuery>,
) -> Result<Response, ApiError> {
    let outcome = match q.outcome.as_deref() {
        None => Outcome::Ok,
        Some(word) => Outcome::of_release(word).ok_or_else(|| {
            ApiError::bad_request(format!("outcome: {word:?} is not an outcome; allowed {}", Outcome::RELEASED_WORDS))
        })?,
    };
    Ok(match state.ledger().release(id.clone(), outcome, q.peak_vram_gb, caller).await? {
        Released::Durable => StatusCode::NO_CONTENT.into_response(),
        Released::InMemory(problem) => {
            let detail = format!(
                "lease {id} released in memory: its slot is free; not yet durable ({problem}); vramguard retries the \
                 write until the store takes it"
            );
            (StatusCode::ACCEPTED, Json(ReleasePending { detail })).into_response()
        }
    })
}

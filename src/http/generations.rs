//! `/api/v1/system/generations`: take, list, extend and release generation leases. The critical
//! section that makes admission hold under concurrency is the service layer's
//! ([`crate::app::ledger`]); these handlers parse and shape.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{Allowed, JsonBody, QueryParams, de};
use super::error::{ApiError, ErrorBody};
use super::wire::ResourceCheck;
use crate::app::AppState;
use crate::app::Caller;
use crate::app::lease_terms::{HungUp, LeaseAsk, Processes, Released};
use crate::app::queue::{Admission, retry_after_seconds};
use crate::leases::{Attribution, Lease, LeaseUsage, Outcome};
use crate::limits;
use crate::policy::phases::SizeAsk;
use crate::time::rfc3339_unix;
use crate::units::round2;

/// A process id, as the OpenAPI document describes it (Linux hands out at most 2^22).
#[derive(ToSchema)]
#[schema(value_type = u32, minimum = 1, maximum = 4194304)]
#[allow(dead_code)] // a schema only: never built, its field never read
pub(crate) struct Pid(pub u32);

/// A process's start time, as the OpenAPI document describes it.
#[derive(ToSchema)]
#[schema(value_type = u64, minimum = 0, maximum = 9223372036854775807_i64)]
#[allow(dead_code)] // a schema only: never built, its field never read
pub(crate) struct StartTime(pub u64);

/// Body of `POST /generations`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseRequest {
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
    /// Processes doing the job (1-64 positive integers): their VRAM on the lease's GPU is
    /// attributed to the lease.
    #[schema(value_type = Option<Vec<Pid>>, min_items = 1, max_items = 64)]
    pub pids: Option<Vec<u32>>,
    /// The pid namespace `pids` are numbered in: the inode of the caller's `/proc/self/ns/pid`
    /// (`os.stat("/proc/self/ns/pid").st_ino`). Default: vramguard's own namespace.
    #[schema(minimum = 1, maximum = 4294967295_i64)]
    pub pid_namespace: Option<u64>,
    /// Each pid's start time, in the order of `pids`: field 22 of `/proc/<pid>/stat`. Matches a
    /// process whose namespace vramguard cannot read (it runs unprivileged).
    #[schema(value_type = Option<Vec<StartTime>>, max_items = 64)]
    pub pid_start_times: Option<Vec<u64>>,
    /// Workload profile name (config `workloads` or a built-in profile; default `default`).
    pub workload: Option<String>,
    /// Video width, pixels (16–4096, multiples of 16); default: the profile's.
    #[schema(minimum = 16, maximum = 4096, multiple_of = 16)]
    pub width: Option<u32>,
    /// Video height, pixels (16–4096, multiples of 16); default: the profile's.
    #[schema(minimum = 16, maximum = 4096, multiple_of = 16)]
    pub height: Option<u32>,
    /// Frames (1–1001); default: the profile's.
    #[schema(minimum = 1, maximum = 1001)]
    pub frames: Option<u32>,
    /// Seconds to wait for room when the refusal can clear (0–300, decimals allowed; default 0:
    /// answer at once).
    #[schema(minimum = 0.0, maximum = 300.0)]
    pub wait_seconds: Option<f64>,
}

impl Allowed for LeaseRequest {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("vram_required_gb", limits::REQUIRED_GB_WORDS),
        ("model_loaded", "true or false"),
        ("gpu", "a GPU index (integer)"),
        ("ttl_seconds", limits::TTL_WORDS),
        ("client", "a string of at most 128 characters"),
        ("pids", limits::PIDS_WORDS),
        ("pid_namespace", limits::PID_NAMESPACE_WORDS),
        ("pid_start_times", limits::PID_START_TIMES_WORDS),
        ("workload", "the name of a workload profile"),
        ("width", limits::SIDE_WORDS),
        ("height", limits::SIDE_WORDS),
        ("frames", limits::FRAMES_WORDS),
        ("wait_seconds", limits::WAIT_SECONDS_WORDS),
    ];
}

/// Body of a heartbeat: optionally a new lifetime.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatRequest {
    /// New lifetime from now, seconds (10–86400); default: the lease's own.
    #[schema(minimum = 10, maximum = 86400)]
    pub ttl_seconds: Option<u64>,
    /// More processes of the job (a worker's children), added to the lease's.
    #[schema(value_type = Option<Vec<Pid>>, min_items = 1, max_items = 64)]
    pub pids: Option<Vec<u32>>,
    /// The pid namespace `pids` are numbered in (as in a lease request); must be the lease's
    /// once it has pids. Default: the lease's.
    #[schema(minimum = 1, maximum = 4294967295_i64)]
    pub pid_namespace: Option<u64>,
    /// Each pid's start time, in the order of `pids` (as in a lease request).
    #[schema(value_type = Option<Vec<StartTime>>, max_items = 64)]
    pub pid_start_times: Option<Vec<u64>>,
}

impl Allowed for HeartbeatRequest {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("ttl_seconds", limits::TTL_WORDS),
        ("pids", limits::PIDS_WORDS),
        ("pid_namespace", limits::PID_NAMESPACE_WORDS),
        ("pid_start_times", limits::PID_START_TIMES_WORDS),
    ];
}

/// Query of a release.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReleaseQuery {
    /// The job's own measured peak VRAM, GiB (e.g. `torch.cuda.max_memory_reserved()`),
    /// recorded as an observation with `source: "client"`.
    #[serde(default, deserialize_with = "de::opt_f64")]
    #[param(value_type = Option<f64>, exclusive_minimum = 0.0, maximum = 1024.0)]
    pub peak_vram_gb: Option<f64>,
    /// How the job ended: `ok` (default), `oom` (out of memory: it needed more than its peak,
    /// which is learned with `learning.oom_margin`), `error` or `cancelled` (nothing is
    /// learned).
    #[param(value_type = Option<String>, pattern = "^(ok|oom|error|cancelled)$")]
    pub outcome: Option<String>,
}

impl Allowed for ReleaseQuery {
    const FIELDS: &'static [(&'static str, &'static str)] =
        &[("peak_vram_gb", limits::REQUIRED_GB_WORDS), ("outcome", Outcome::RELEASED_WORDS)];
}

/// The GPU a lease is placed on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LeaseGpu {
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
}

/// A lease as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LeaseBody {
    /// Lease id: 32 hex digits. In the listing, null unless the caller owns the lease or holds
    /// an admin token (the id is what heartbeats and releases it).
    pub id: Option<String>,
    /// Name of the token that took it; null when vramguard had no tokens.
    pub owner: Option<String>,
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
    /// Processes attributed to it.
    pub pids: Vec<u32>,
    /// VRAM its pids hold now, GiB; null without pids.
    pub vram_used_gb: Option<f64>,
    /// Highest VRAM its pids held while it was live, GiB; null without pids.
    pub vram_peak_gb: Option<f64>,
    /// Reserved VRAM the job has not used yet, GiB: it counts against the GPU.
    pub vram_outstanding_gb: f64,
    /// Its pids used more than it reserved.
    pub overrun: bool,
    /// How its use is counted: `pids` once any of its processes (the listed pids and their
    /// descendants) was seen holding VRAM on its GPU, else `growth` (the GPU's used VRAM since
    /// its grant).
    pub attribution: &'static str,
    /// The value for `CUDA_VISIBLE_DEVICES` that makes the lease's GPU the job's device 0: its
    /// UUID, which CUDA accepts whatever its device order (NVML's index, `gpu.index`, is PCI
    /// bus order; CUDA's default order is fastest first). Null on a host without GPUs.
    pub cuda_visible_devices: Option<String>,
    /// The pid namespace its pids are numbered in (inode); null: vramguard's own.
    pub pid_namespace: Option<u64>,
}

impl From<&(Lease, LeaseUsage)> for LeaseBody {
    fn from((l, u): &(Lease, LeaseUsage)) -> Self {
        let with_pids = !l.pids.is_empty();
        Self {
            id: Some(l.id.clone()),
            owner: l.owner.clone(),
            gpu: l.gpu_index.map(|index| LeaseGpu { index, uuid: l.gpu_uuid.clone().unwrap_or_default() }),
            vram_reserved_gb: l.vram_reserved_gb,
            granted_at: rfc3339_unix(l.granted_at),
            expires_at: rfc3339_unix(l.expires_at),
            ttl_seconds: l.ttl_seconds,
            client: l.client.clone(),
            pids: l.pids.clone(),
            vram_used_gb: if with_pids { u.used_gb.map(round2) } else { None },
            vram_peak_gb: if with_pids { l.vram_peak_gb.map(round2) } else { None },
            vram_outstanding_gb: round2(u.outstanding_gb),
            overrun: l.overrun || u.used_gb.is_some_and(|used| used > l.vram_reserved_gb + 0.01),
            attribution: u.attribution.as_str(),
            cuda_visible_devices: l.gpu_uuid.clone(),
            pid_namespace: l.pid_namespace,
        }
    }
}

impl LeaseBody {
    /// The lease as `caller` may see it: without its id unless the caller owns it or is an
    /// admin.
    fn seen_by(pair: &(Lease, LeaseUsage), caller: &Caller) -> Self {
        let mut body = Self::from(pair);
        if !caller.may_act_on(pair.0.owner.as_deref()) {
            body.id = None;
        }
        body
    }
}

/// 202: released in memory, not yet in the store.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ReleasePending {
    /// That the slot is free, why the release is not durable yet, and that it is retried.
    pub detail: String,
}

/// 201: the lease and the resource-check it passed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LeaseGranted {
    /// The lease, as the listing shows it.
    #[serde(flatten)]
    pub lease: LeaseBody,
    /// The decision that admitted it.
    pub resource_check: ResourceCheck,
}

/// A 409 of a lease request, as the OpenAPI document describes it: refused by the decision, or a
/// pid another live lease already lists.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only: the handlers answer with one of the two bodies directly
pub(crate) enum LeaseConflict {
    /// Resources do not allow the job: the decision says why.
    Refused(Box<LeaseRefused>),
    /// A listed pid belongs to another live lease: `detail` names it.
    PidTaken(PidTaken),
}

/// A 409 for a pid another live lease lists: just the `detail` (no decision was made).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema only: the error edge writes this shape
pub(crate) struct PidTaken {
    /// Names the pid and the lease that lists it.
    pub detail: String,
}

/// 409: why not, with the decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LeaseRefused {
    /// The blocking issues in one sentence.
    pub detail: String,
    /// The decision that refused it (for a request that waited: the last one).
    pub resource_check: ResourceCheck,
    /// For a request that waited to its deadline: its 1-based place in the queue then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
}

/// One waiting request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WaitingBody {
    /// 1-based place in the queue.
    pub position: usize,
    /// Who asked.
    pub client: Option<String>,
    /// What it needs, GiB (its own figure, else what its last decision assumed; null before
    /// its first decision).
    pub vram_required_gb: Option<f64>,
    /// Workload profile.
    pub workload: String,
    /// How long it has waited, seconds.
    pub waited_seconds: f64,
    /// When it stops waiting (RFC 3339 UTC).
    pub deadline: String,
}

/// Answer of `GET /generations/queue`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct QueueList {
    /// `fifo` or `backfill` (config `queue.policy`).
    pub policy: &'static str,
    /// Waiting requests, first in line first.
    pub waiting: Vec<WaitingBody>,
}

/// Answer of `GET /generations`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LeaseList {
    /// Live leases, oldest first.
    pub leases: Vec<LeaseBody>,
    /// How many there are.
    pub active_generations: u32,
    /// The live limit.
    pub max_concurrent_generations: u32,
}

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
    };
    Ok(match state.queue().acquire_waiting(ask, req.wait_seconds.unwrap_or(0.0)).await? {
        Admission::Granted(lease, check) => {
            let with_usage = state.ledger().lease_now(&lease.id).unwrap_or_else(|| {
                let owed = LeaseUsage {
                    id: lease.id.clone(),
                    gpu_index: lease.gpu_index,
                    used_gb: None,
                    outstanding_gb: lease.vram_reserved_gb,
                    attribution: Attribution::Growth,
                };
                (*lease, owed)
            });
            let granted = LeaseGranted { lease: LeaseBody::from(&with_usage), resource_check: (&check).into() };
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
        })
        .collect();
    Json(QueueList { policy: state.config().queue.policy.as_str(), waiting })
}

/// Live leases; each one's id only for its owner and admin tokens.
#[utoipa::path(get, path = "/api/v1/system/generations", tag = "leases",
    responses((status = 200, body = LeaseList),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Json<LeaseList> {
    let leases: Vec<LeaseBody> = state.ledger().live_leases().iter().map(|l| LeaseBody::seen_by(l, &caller)).collect();
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
    let with_usage =
        state.ledger().lease_now(&lease.id).ok_or_else(|| ApiError::not_found("the lease expired just now"))?;
    Ok(Json(LeaseBody::from(&with_usage)))
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

//! The bodies of `/api/v1/system/generations`: requests, leases as the API shows them (a gang
//! as one lease with its GPUs), refusals and the queue.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{Allowed, de};
use super::wire::ResourceCheck;
use crate::app::Caller;
use crate::leases::{Lease, LeaseUsage, Outcome};
use crate::limits;
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
    /// GPUs the one job is sharded over (1–16; default 1): each gets its rank's share, all at
    /// once or none; `vram_required_gb`, when given, is per GPU.
    #[schema(minimum = 1, maximum = 16)]
    pub gpus: Option<u32>,
    /// The GPUs the ranks must use, rank 0 first (as many as `gpus`).
    #[schema(max_items = 16)]
    pub gpu_indices: Option<Vec<u32>>,
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
        ("gpus", limits::GANG_WORDS),
        ("gpu_indices", limits::GPU_INDICES_WORDS),
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

/// A lease as the API shows it. A job on several GPUs (a gang) is one lease: `gpu` is rank 0's,
/// the figures are the totals over its GPUs, and `gpus` has each one's.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LeaseBody {
    /// Lease id: 32 hex digits. In the listing, null unless the caller owns the lease or holds
    /// an admin token (the id is what heartbeats and releases it).
    pub id: Option<String>,
    /// Name of the token that took it; null when vramguard had no tokens.
    pub owner: Option<String>,
    /// Where the job goes (rank 0's GPU for a gang); null on a host without GPUs.
    pub gpu: Option<LeaseGpu>,
    /// Every GPU the job holds, rank 0 first, each with its own figures (one entry for a
    /// one-GPU lease; none on a host without GPUs).
    pub gpus: Vec<LeaseRank>,
    /// VRAM promised to the job, GiB (over all its GPUs).
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
    /// VRAM its pids hold now, GiB (over all its GPUs that have a reading); null without pids.
    pub vram_used_gb: Option<f64>,
    /// Highest VRAM its pids held while it was live, GiB (each GPU's highest, added up over
    /// the GPUs seen so far); null without pids or before any was seen.
    pub vram_peak_gb: Option<f64>,
    /// Reserved VRAM the job has not used yet, GiB (over all its GPUs): it counts against them.
    pub vram_outstanding_gb: f64,
    /// Its pids used more than it reserved (on any of its GPUs).
    pub overrun: bool,
    /// How its use is counted: `pids` once any of its processes (the listed pids and their
    /// descendants) was seen holding VRAM on its GPU, else `growth` (the GPU's used VRAM since
    /// its grant); for a gang, `growth` while any GPU is counted so.
    pub attribution: &'static str,
    /// The value for `CUDA_VISIBLE_DEVICES`: the job's GPUs' UUIDs, comma-separated in rank
    /// order, so rank N's device N is its GPU. UUIDs, which CUDA accepts whatever its device
    /// order (NVML's index, `gpu.index`, is PCI bus order; CUDA's default order is fastest
    /// first). Null on a host without GPUs.
    pub cuda_visible_devices: Option<String>,
    /// The pid namespace its pids are numbered in (inode); null: vramguard's own.
    pub pid_namespace: Option<u64>,
}

/// One GPU of a lease, with what the job's rank there reserved, uses and still owes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct LeaseRank {
    /// The rank (0 decodes the video); 0 for a one-GPU lease.
    pub rank: u32,
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
    /// VRAM promised to this rank, GiB.
    pub vram_reserved_gb: f64,
    /// VRAM the job's processes hold on this GPU, GiB; null without pids.
    pub vram_used_gb: Option<f64>,
    /// Reserved VRAM not used yet on this GPU, GiB.
    pub vram_outstanding_gb: f64,
    /// `pids` or `growth`, on this GPU.
    pub attribution: &'static str,
}

impl LeaseBody {
    /// The body of one generation: its leases with their usage, rank 0 first (one for a lease
    /// on one GPU).
    pub(crate) fn of(ranks: &[(Lease, LeaseUsage)]) -> Self {
        let (l, u) = &ranks[0];
        let with_pids = !l.pids.is_empty();
        // Over the GPUs that have a figure; null only when none has one yet.
        let total = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>());
        let used = total(ranks.iter().filter_map(|(_, u)| u.used_gb).collect());
        let peak = total(ranks.iter().filter_map(|(l, _)| l.vram_peak_gb).collect());
        let growth = ranks.iter().any(|(_, u)| u.attribution.as_str() == "growth");
        let uuids: Vec<&str> = ranks.iter().filter_map(|(l, _)| l.gpu_uuid.as_deref()).collect();
        Self {
            id: Some(l.gang_id().to_owned()),
            owner: l.owner.clone(),
            gpu: l.gpu_index.map(|index| LeaseGpu { index, uuid: l.gpu_uuid.clone().unwrap_or_default() }),
            gpus: ranks
                .iter()
                .filter_map(|(l, u)| {
                    Some(LeaseRank {
                        rank: l.rank(),
                        index: l.gpu_index?,
                        uuid: l.gpu_uuid.clone().unwrap_or_default(),
                        vram_reserved_gb: round2(l.vram_reserved_gb),
                        vram_used_gb: if with_pids { u.used_gb.map(round2) } else { None },
                        vram_outstanding_gb: round2(u.outstanding_gb),
                        attribution: u.attribution.as_str(),
                    })
                })
                .collect(),
            vram_reserved_gb: if ranks.len() == 1 {
                l.vram_reserved_gb
            } else {
                round2(ranks.iter().map(|(l, _)| l.vram_reserved_gb).sum())
            },
            granted_at: rfc3339_unix(l.granted_at),
            expires_at: rfc3339_unix(l.expires_at),
            ttl_seconds: l.ttl_seconds,
            client: l.client.clone(),
            pids: l.pids.clone(),
            vram_used_gb: if with_pids { used.map(round2) } else { None },
            vram_peak_gb: if with_pids { peak.map(round2) } else { None },
            vram_outstanding_gb: round2(ranks.iter().map(|(_, u)| u.outstanding_gb).sum()),
            overrun: ranks
                .iter()
                .any(|(l, u)| l.overrun || u.used_gb.is_some_and(|used| used > l.vram_reserved_gb + 0.01)),
            attribution: if growth { "growth" } else { u.attribution.as_str() },
            cuda_visible_devices: (!uuids.is_empty()).then(|| uuids.join(",")),
            pid_namespace: l.pid_namespace,
        }
    }

    /// The generation as `caller` may see it: without its id unless the caller owns it or is an
    /// admin.
    pub(crate) fn seen_by(ranks: &[(Lease, LeaseUsage)], caller: &Caller) -> Self {
        let mut body = Self::of(ranks);
        if !caller.may_act_on(ranks[0].0.owner.as_deref()) {
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
    /// GPUs the job needs (above 1: a gang).
    pub gpus: u32,
    /// For a gang that nothing may pass any more (first in line under `fifo`, or past
    /// `queue.max_bypass` under `backfill`): the GPUs that would take one of its ranks now, held
    /// for it until all of its GPUs fit. Empty otherwise.
    pub holding: Vec<u32>,
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

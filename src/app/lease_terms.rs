//! The terms of a lease, apart from the ledger that keeps them: what a client asks for and the
//! checks on it, how a request and a release end, whose lease it is, and the observation a lease
//! leaves when it ends.

use super::access::Caller;
use super::error::ServiceError;
use super::inputs::View;
use crate::leases::{Attribution, GangTie, Lease, Outcome, gpu_used_gb, is_valid_id, new_id};
use crate::limits;
use crate::policy::admission::{CheckRequest, ResourceCheck};
use crate::policy::estimate::EstimateKey;
use crate::policy::gang::Pins;
use crate::policy::phases::SizeAsk;
use crate::store::Observation;

/// What a client asks for when it takes a lease.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LeaseAsk {
    /// VRAM the job needs, GiB; `None` uses the workload estimate.
    pub vram_required_gb: Option<f64>,
    /// The worker already holds its model.
    pub model_loaded: bool,
    /// Only this GPU index may be used.
    pub gpu: Option<u32>,
    /// Lifetime, seconds; `None` uses `leases.default_ttl`.
    pub ttl_seconds: Option<u64>,
    /// Who holds the lease.
    pub client: Option<String>,
    /// Processes doing the job, as the client names them.
    pub processes: Processes,
    /// Workload profile name; `None` is `default`.
    pub workload: Option<String>,
    /// The video's size; what is left out is the profile's.
    pub size: SizeAsk,
    /// The name of the token asking (recorded as the lease's owner); `None` without tokens.
    pub owner: Option<String>,
    /// Set by the server when the client's connection reached its end: nothing is granted to
    /// a client that hung up.
    pub hung_up: Option<HungUp>,
    /// GPUs the one job is sharded over (1: one GPU).
    pub gpus: u32,
    /// The GPUs its ranks must use, rank 0 first.
    pub pins: Option<Pins>,
    /// Set by the waiting queue for the gang GPUs are held for: its decision does not count its
    /// own hold as owed.
    pub holds_own: bool,
}

/// Whether a client closed its side of the connection: what the server's reads saw, or what a
/// look at the socket shows now.
#[derive(Clone, Default)]
pub(crate) struct HungUp {
    seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    probe: Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl HungUp {
    /// A flag that `probe` (a look at the connection now) may also raise.
    pub(crate) fn with_probe(probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self { seen: Default::default(), probe: Some(std::sync::Arc::new(probe)) }
    }

    /// Notes that a read found the end of the client's stream.
    pub(crate) fn set(&self) {
        self.seen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the client closed its side.
    pub(crate) fn is_set(&self) -> bool {
        self.seen.load(std::sync::atomic::Ordering::SeqCst) || self.probe.as_ref().is_some_and(|p| p())
    }
}

impl std::fmt::Debug for HungUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HungUp").field("seen", &self.seen).finish_non_exhaustive()
    }
}

impl PartialEq for HungUp {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.seen, &other.seen)
    }
}

impl LeaseAsk {
    /// The resource-check question this request asks.
    pub(crate) fn request(&self) -> CheckRequest {
        CheckRequest {
            vram_required_gb: self.vram_required_gb,
            model_loaded: self.model_loaded,
            // One pinned GPU is the one-GPU pin, as on resource-check.
            gpu: self.gpu.or_else(|| self.pins.filter(|_| self.gpus <= 1).map(|p| p.as_slice()[0])),
            size: self.size,
            gpus: self.gpus.max(1),
            pins: self.pins.filter(|_| self.gpus > 1),
        }
    }

    /// Checks every field against its limit; the error names the field.
    pub(crate) fn validate(&self) -> Result<(), ServiceError> {
        if let Some(v) = self.vram_required_gb {
            limits::check_required_gb(v).map_err(|m| invalid("vram_required_gb", m))?;
        }
        check_ttl(self.ttl_seconds)?;
        self.size.validate().map_err(ServiceError::Invalid)?;
        limits::in_range(self.gpus, &limits::GANG).map_err(|m| invalid("gpus", m))?;
        if let Some(p) = &self.pins {
            limits::check_pins(self.gpus, p.as_slice()).map_err(|m| invalid("gpu_indices", m))?;
        }
        if self.gpus > 1 && self.gpu.is_some() {
            return Err(invalid("gpu", "names one GPU; a job on several GPUs pins them with gpu_indices".to_owned()));
        }
        if self.gpu.is_some() && self.pins.is_some() {
            return Err(invalid("gpu", "and gpu_indices both pin GPUs; send one of them".to_owned()));
        }
        if let Some(c) = &self.client {
            limits::check_client(c).map_err(|m| invalid("client", m))?;
        }
        self.processes.validate()
    }
}

/// The processes a client names for its job, in a lease request or a heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Processes {
    /// Process ids (1-64 positive integers), or none.
    pub pids: Option<Vec<u32>>,
    /// The pid namespace they are numbered in (its inode); `None`: vramguard's own.
    pub pid_namespace: Option<u64>,
    /// Each pid's start time (field 22 of `/proc/<pid>/stat`), in the order of `pids`.
    pub pid_start_times: Option<Vec<u64>>,
}

impl Processes {
    /// Checks every field against its limit; the error names the field.
    pub(crate) fn validate(&self) -> Result<(), ServiceError> {
        if let Some(p) = &self.pids {
            limits::check_pids(p).map_err(|m| invalid("pids", m))?;
        }
        if let Some(ns) = self.pid_namespace {
            limits::check_pid_namespace(ns).map_err(|m| invalid("pid_namespace", m))?;
        }
        if let Some(t) = &self.pid_start_times {
            limits::check_pid_start_times(t, self.pids.as_deref()).map_err(|m| invalid("pid_start_times", m))?;
        }
        Ok(())
    }

    /// Adds these processes to `lease`'s (a heartbeat adds a worker's children). One lease's
    /// pids share one namespace: a lease without pids takes the namespace given; one with pids
    /// keeps its own, and a different one is refused. Pids sent without a namespace are
    /// numbered in the lease's.
    pub(crate) fn add_to(self, lease: &mut Lease) -> Result<(), ServiceError> {
        if let Some(ns) = self.pid_namespace
            && lease.pid_namespace != Some(ns)
        {
            if !lease.pids.is_empty() {
                let theirs = lease.pid_namespace.map_or_else(|| "vramguard's own".to_owned(), |n| n.to_string());
                return Err(invalid(
                    "pid_namespace",
                    format!(
                        "{ns} differs from the namespace of the lease's pids ({theirs}); one lease's pids share one namespace"
                    ),
                ));
            }
            lease.pid_namespace = Some(ns);
        }
        let pids = self.pids.unwrap_or_default();
        if pids.is_empty() {
            return Ok(());
        }
        for (i, pid) in pids.iter().enumerate() {
            if !lease.pids.contains(pid) {
                lease.pids.push(*pid);
            }
            if let Some(t) = self.pid_start_times.as_ref().and_then(|t| t.get(i)) {
                lease.pid_start_times.insert(*pid, *t);
            }
        }
        limits::check_pids(&lease.pids).map_err(|m| invalid("pids", format!("with the lease's own: {m}")))
    }
}

/// How a release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Released {
    /// Out of the book and out of the store.
    Durable,
    /// Out of the book (its slot is free), but the store did not take the write, for the reason
    /// given; it is retried until the store does.
    InMemory(String),
}

/// The outcome of a lease request.
#[derive(Debug, Clone)]
pub(crate) enum Acquired {
    /// Admitted: the lease and the decision that admitted it.
    Granted(Box<Lease>, ResourceCheck),
    /// Refused: the decision that refused it.
    Refused(ResourceCheck),
}

pub(super) fn invalid(field: &str, message: String) -> ServiceError {
    ServiceError::Invalid(format!("{field}: {message}"))
}

pub(super) fn check_ttl(ttl: Option<u64>) -> Result<(), ServiceError> {
    match ttl {
        Some(t) => limits::check_ttl_seconds(t).map_err(|m| invalid("ttl_seconds", m)),
        None => Ok(()),
    }
}

/// How a lease ended, for the observation it leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum End {
    /// Released with the job's outcome and the client's own peak, if it sent one.
    Released(Outcome, Option<f64>),
    /// Expired without a release.
    Expired,
}

impl End {
    /// How the job ended.
    pub(super) fn outcome(self) -> Outcome {
        match self {
            End::Released(outcome, _) => outcome,
            End::Expired => Outcome::Expired,
        }
    }
}

/// What a lease's end teaches: an observation of its peak, or why there is none (the
/// `reason` label of `vramguard_observations_skipped_total`). An implausible client peak is
/// both: recorded (with `used: false`) and counted as skipped.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Learned {
    Observed(Observation),
    Skipped(&'static str),
    Implausible(Observation),
}

/// What a client's own peak is held against.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct Evidence {
    /// The model's estimate for the lease's key, GiB.
    pub model_gb: Option<f64>,
    /// `learning.min_ratio`.
    pub min_ratio: f64,
    /// The lease's GPU's memory, GiB.
    pub gpu_total_gb: Option<f64>,
}

impl Evidence {
    /// Whether a client's `peak` may count: not below what NVML saw of the job's processes (or,
    /// with nothing seen, below `min_ratio` of the model); above twice the reservation or the
    /// GPU's memory only when NVML saw about as much.
    fn plausible(&self, peak: f64, lease: &Lease) -> bool {
        let seen = lease.vram_peak_gb.filter(|_| lease.seen);
        let low = match seen {
            Some(n) => peak >= n - 0.01,
            None => self.model_gb.is_none_or(|m| peak >= self.min_ratio * m),
        };
        let ceiling = (2.0 * lease.vram_reserved_gb).min(self.gpu_total_gb.unwrap_or(f64::INFINITY));
        let high = peak <= ceiling || seen.is_some_and(|n| peak <= n * 1.1 + 0.01);
        low && high
    }
}

/// The observation a lease's end records: the client's peak when given, else the peak
/// vramguard saw its processes hold. Only from a job that finished or died of out-of-memory:
/// one that failed otherwise or was stopped says nothing of its size, and an expired lease only
/// how far its job got before it stopped heartbeating. Never from a lease whose processes were
/// not seen holding VRAM: their zero is not the job's need.
pub(super) fn observation(lease: &Lease, end: End, now: f64, evidence: &Evidence) -> Learned {
    let outcome = end.outcome();
    if !matches!(outcome, Outcome::Ok | Outcome::Oom) {
        return Learned::Skipped(outcome.as_str());
    }
    if lease.gang.is_some() {
        // Estimates are learned per GPU; a gang's per-rank figures come from the model.
        return Learned::Skipped("gang");
    }
    let (peak, source) = match (end, lease.vram_peak_gb) {
        (End::Released(_, Some(p)), _) => (p, "client"),
        (_, Some(p)) if lease.seen && !lease.pids.is_empty() => (p, "nvml"),
        _ => return Learned::Skipped("not_seen"),
    };
    let used = source == "nvml" || evidence.plausible(peak, lease);
    let o = Observation {
        key: lease.grant.clone(),
        peak_vram_gb: peak,
        source: source.to_owned(),
        outcome,
        used,
        recorded_at: now,
    };
    if used { Learned::Observed(o) } else { Learned::Implausible(o) }
}

/// The leases an admitting decision makes, rank 0 first: one lease, or one per rank of a gang,
/// each on its GPU with its rank's figure (rank 0's id is the gang's). Each starts with the
/// request's processes (a gang's ranks share the job's process tree; what each GPU's processes
/// hold counts for the rank there) and the growth rule's baseline on its own GPU.
pub(super) fn leases_for(
    check: &ResourceCheck,
    ask: &LeaseAsk,
    view: &View,
    now: f64,
    ttl: u64,
    grant: EstimateKey,
) -> Result<Vec<Lease>, ServiceError> {
    let places: Vec<(Option<u32>, Option<String>, f64)> = if check.ranks.is_empty() {
        vec![(check.gpu.as_ref().map(|g| g.index), check.gpu.as_ref().map(|g| g.uuid.clone()), check.required_gb)]
    } else {
        check.ranks.iter().map(|r| (Some(r.index), Some(r.uuid.clone()), r.need_gb)).collect()
    };
    let size = places.len() as u32;
    let gang_id = new_id();
    let mut leases = Vec::with_capacity(places.len());
    for (rank, (gpu_index, gpu_uuid, reserved)) in places.into_iter().enumerate() {
        let mut lease = Lease {
            id: if rank == 0 { gang_id.clone() } else { new_id() },
            gpu_index,
            gpu_uuid,
            vram_reserved_gb: reserved,
            granted_at: now,
            expires_at: now + ttl as f64,
            ttl_seconds: ttl,
            client: ask.client.clone(),
            pids: Vec::new(),
            pid_namespace: None,
            pid_start_times: Default::default(),
            seen: false,
            unattributed_used_at_grant_gb: gpu_index.and_then(|g| baseline(view, g)),
            vram_peak_gb: None,
            overrun: false,
            grant: grant.clone(),
            owner: ask.owner.clone(),
            gang: (size > 1).then(|| GangTie { id: gang_id.clone(), rank: rank as u32, size }),
        };
        ask.processes.clone().add_to(&mut lease)?;
        leases.push(lease);
    }
    Ok(leases)
}

/// The growth rule's baseline on GPU `gpu`: its used VRAM now less what leases' attributed
/// processes hold there.
fn baseline(view: &View, gpu: u32) -> Option<f64> {
    let used = gpu_used_gb(view.snapshot.as_deref()?, gpu)?;
    let attributed: f64 = view
        .leases
        .iter()
        .filter(|(l, u)| l.gpu_index == Some(gpu) && u.attribution == Attribution::Pids)
        .filter_map(|(_, u)| u.used_gb)
        .sum();
    Some((used - attributed).max(0.0))
}

/// A process counts for one live lease at a time, the one that listed it first: `lease` may not
/// list a pid (in its namespace) that another of `live` lists.
pub(super) fn check_unshared(lease: &Lease, live: &[&Lease]) -> Result<(), ServiceError> {
    let own = crate::sampler::own_pid_namespace();
    for (ns, pid) in lease.listed(own) {
        // The ranks of one gang list the same processes (the job's process tree).
        let others = |o: &&&Lease| o.gang_id() != lease.gang_id();
        if let Some(other) = live.iter().filter(others).find(|o| o.listed(own).any(|p| p == (ns, pid))) {
            return Err(ServiceError::Conflict(format!(
                "pids: process {pid} is already listed by the live lease {}; a process counts for one lease at a time \
                 (release that lease first, or list the processes of this job only)",
                other.label()
            )));
        }
    }
    Ok(())
}

pub(super) fn check_id(id: &str) -> Result<(), ServiceError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ServiceError::NotFound(format!("no lease with id {id:?}; lease ids are 32 lowercase hex digits")))
    }
}

pub(super) fn no_live_lease(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no live lease with id {id}; it was released or expired"))
}

pub(super) fn store_failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::store(e)
}

/// Clients act on their own leases only; admins (and everyone while vramguard has no tokens) on
/// any. `what` is the verb for the answer.
pub(super) fn check_owner(caller: &Caller, lease: &Lease, what: &str) -> Result<(), ServiceError> {
    if caller.may_act_on(lease.owner.as_deref()) {
        return Ok(());
    }
    let whose = match &lease.owner {
        Some(owner) => format!("belongs to token {owner:?}"),
        None => "was taken while vramguard had no tokens, so it has no owner".to_owned(),
    };
    Err(ServiceError::Forbidden(format!(
        "lease {} {whose}; {} may {what} only its own leases (an admin token may {what} any)",
        lease.id,
        caller.describe()
    )))
}

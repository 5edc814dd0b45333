//! Generation leases: the in-memory book of who holds a generation slot and which VRAM was
//! promised to them. Pure data and arithmetic on explicit `now` values and snapshots;
//! persistence is the store's job and the critical section that changes the book is
//! [`crate::app::ledger`].
//!
//! A lease's reservation counts against its GPU for its whole life, less what the job already
//! uses ([`usage`]): once its processes (its pids and their descendants) were seen holding VRAM,
//! what they hold on the lease's GPU; until then, or without pids, the growth of the GPU's used
//! VRAM since the grant, shared among its unattributed leases, oldest first.

mod usage;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::policy::estimate::EstimateKey;
use crate::snapshot::{ProcessIdentity, Snapshot};

pub(crate) use usage::{Attribution, LeaseUsage, gpu_used_gb, held_gb, outstanding_by_gpu, usage};

/// One granted lease. Times are Unix seconds, so they keep counting across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// 32 lowercase hex digits.
    pub id: String,
    /// GPU index the job was placed on (None on a GPU-less host).
    pub gpu_index: Option<u32>,
    /// That GPU's UUID.
    pub gpu_uuid: Option<String>,
    /// VRAM promised to the job, GiB.
    pub vram_reserved_gb: f64,
    /// When it was granted.
    pub granted_at: f64,
    /// When it lapses unless a heartbeat extends it.
    pub expires_at: f64,
    /// Lifetime a heartbeat renews, seconds.
    pub ttl_seconds: u64,
    /// Free-form name of the caller.
    pub client: Option<String>,
    /// Processes doing the job, with their descendants; their VRAM on the lease's GPU is the
    /// job's use.
    pub pids: Vec<u32>,
    /// The pid namespace `pids` are numbered in (the inode of the client's `/proc/self/ns/pid`);
    /// `None`: vramguard's own.
    pub pid_namespace: Option<u64>,
    /// Start times the client sent for its pids (field 22 of `/proc/<pid>/stat`): they match a
    /// process whose namespace vramguard may not read, and tell a pid from a reused one.
    pub pid_start_times: BTreeMap<u32, u64>,
    /// Some of its processes were seen holding VRAM on its GPU: it is counted by what they hold
    /// (attribution `pids`) rather than by the GPU's growth.
    pub seen: bool,
    /// The GPU's used VRAM when the lease was granted, less what leases' pids held on it then,
    /// GiB: the baseline of the growth rule, which leaves attributed processes out on both ends.
    pub unattributed_used_at_grant_gb: Option<f64>,
    /// Highest VRAM its pids held while it was live, GiB.
    pub vram_peak_gb: Option<f64>,
    /// Its pids once held more than it reserved (counted once).
    pub overrun: bool,
    /// What the decision assumed: workload profile, settings and `model_loaded` at grant time,
    /// the key of the observation its peak becomes.
    pub grant: EstimateKey,
    /// The name of the token that took it; `None` when vramguard had no tokens.
    pub owner: Option<String>,
    /// For one rank of a generation sharded over several GPUs (a gang): which gang and rank.
    /// Every rank is a lease of its own on its own GPU (so each is attributed, counted and owed
    /// there like any lease); rank 0's id is the gang's, the one its client acts on.
    pub gang: Option<GangTie>,
}

/// A lease's place in its gang.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangTie {
    /// The gang's id: rank 0's lease id.
    pub id: String,
    /// This lease's rank, 0 first.
    pub rank: u32,
    /// How many ranks (GPUs) the gang has.
    pub size: u32,
}

/// How a generation ended: what its release said, or its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// It finished.
    Ok,
    /// It died of out-of-memory: it needed more than it got.
    Oom,
    /// It failed otherwise.
    Error,
    /// It was stopped (a signal, a cancelled task).
    Cancelled,
    /// Its lease lapsed without a release.
    Expired,
}

impl Outcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [Outcome; 5] = [Outcome::Ok, Outcome::Oom, Outcome::Error, Outcome::Cancelled, Outcome::Expired];
    /// What a release may say (an expiry is vramguard's to say).
    pub const RELEASED_WORDS: &'static str = "one of ok, oom, error, cancelled";

    /// The API's and the metric label's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Oom => "oom",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::Expired => "expired",
        }
    }

    /// The outcome a release names; `None` for anything else (`expired` included).
    pub fn of_release(word: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| *o != Outcome::Expired && o.as_str() == word)
    }

    /// Any outcome by its word, as the store keeps it.
    pub fn parse(word: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == word)
    }
}

impl Lease {
    /// Whether the lease still holds a slot at `now`.
    pub fn is_live(&self, now: f64) -> bool {
        self.expires_at > now
    }

    /// The id its client acts on: its gang's, else its own.
    pub fn gang_id(&self) -> &str {
        self.gang.as_ref().map_or(&self.id, |g| &g.id)
    }

    /// Its rank in its gang; 0 for a lease on one GPU.
    pub fn rank(&self) -> u32 {
        self.gang.as_ref().map_or(0, |g| g.rank)
    }

    /// Whether it counts as a generation of its own: a lease on one GPU, or a gang's rank 0 (a
    /// gang is one generation against `max_concurrent_generations`).
    pub fn is_generation(&self) -> bool {
        self.gang.as_ref().is_none_or(|g| g.rank == 0)
    }

    /// The name health, the page and logs use: its client, else its owner's token, else its
    /// GPU; never its id, which only its owner and admins may see (with no tokens the id is all
    /// a release needs).
    pub fn label(&self) -> String {
        match (&self.client, &self.owner, self.gpu_index) {
            (Some(c), _, _) => c.clone(),
            (None, Some(o), _) => format!("of token {o:?}"),
            (None, None, Some(g)) => format!("(unnamed) on GPU {g}"),
            (None, None, None) => "(unnamed)".to_owned(),
        }
    }

    /// The processes it lists, each as (pid namespace, pid); `own` is vramguard's namespace,
    /// which a lease without one counts in.
    pub(crate) fn listed(&self, own: Option<u64>) -> impl Iterator<Item = (Option<u64>, u32)> + '_ {
        let ns = self.pid_namespace.or(own);
        self.pids.iter().map(move |p| (ns, *p))
    }
}

impl Lease {
    /// Whether `who` (one process of a lineage) is one of the processes the lease lists: by its
    /// pid in the lease's namespace, and that namespace's inode where vramguard can read it,
    /// else the start time the client sent. A start time that differs is another process that
    /// reused the pid.
    pub(crate) fn lists(&self, who: &ProcessIdentity) -> bool {
        let pid = match self.pid_namespace {
            None => who.pid,
            Some(_) => who.ns_pid,
        };
        if !self.pids.contains(&pid) {
            return false;
        }
        let sent = self.pid_start_times.get(&pid).copied();
        if let (Some(sent), Some(seen)) = (sent, who.start_time)
            && sent != seen
        {
            return false;
        }
        match (self.pid_namespace, who.pid_namespace) {
            (None, _) => true,
            (Some(ns), Some(seen)) => ns == seen,
            (Some(_), None) => sent.is_some() && who.start_time.is_some(),
        }
    }
}

/// Every lease known, by id.
#[derive(Debug, Default, Clone)]
pub(crate) struct LeaseBook {
    leases: BTreeMap<String, Lease>,
}

impl LeaseBook {
    /// A book holding `leases`.
    pub(crate) fn from_leases(leases: impl IntoIterator<Item = Lease>) -> Self {
        Self { leases: leases.into_iter().map(|l| (l.id.clone(), l)).collect() }
    }

    /// Leases live at `now`, oldest first.
    pub(crate) fn live(&self, now: f64) -> Vec<&Lease> {
        let mut v: Vec<&Lease> = self.leases.values().filter(|l| l.is_live(now)).collect();
        v.sort_by(|a, b| a.granted_at.total_cmp(&b.granted_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Follows the processes of live leases on `snapshot`: marks leases whose processes hold
    /// VRAM as seen, raises their peaks, and marks those holding more than they reserved.
    /// Returns the leases that overran just now (each once).
    pub(crate) fn observe(&mut self, snapshot: &Snapshot, now: f64) -> Vec<Lease> {
        let live: Vec<&Lease> = self.live(now).into_iter().filter(|l| !l.pids.is_empty()).collect();
        let gpus: BTreeSet<u32> = live.iter().filter_map(|l| l.gpu_index).collect();
        let mut readings: Vec<(String, f64)> = Vec::new();
        for gpu in gpus {
            let on_gpu: Vec<&Lease> = live.iter().copied().filter(|l| l.gpu_index == Some(gpu)).collect();
            let Some(held) = held_gb(snapshot, gpu, &on_gpu) else { continue };
            readings.extend(on_gpu.iter().zip(held).map(|(l, gb)| (l.id.clone(), gb)));
        }
        // Gangs that had overrun before this sample: a gang overruns once, whichever rank.
        let mut gangs_overran: BTreeSet<String> =
            self.leases.values().filter(|l| l.overrun && l.gang.is_some()).map(|l| l.gang_id().to_owned()).collect();
        let mut overran = Vec::new();
        for (id, used) in readings {
            let Some(l) = self.leases.get_mut(&id) else { continue };
            l.seen |= used > 0.0;
            if !l.seen {
                continue;
            }
            l.vram_peak_gb = Some(l.vram_peak_gb.map_or(used, |p| p.max(used)));
            // A hundredth of a GiB of slack: rounding in a client's figure is not an overrun.
            if !l.overrun && used > l.vram_reserved_gb + 0.01 {
                l.overrun = true;
                if l.gang.is_none() || gangs_overran.insert(l.gang_id().to_owned()) {
                    overran.push(l.clone());
                }
            }
        }
        overran
    }

    /// Ids of leases that lapsed by `now`.
    pub(crate) fn expired(&self, now: f64) -> Vec<String> {
        self.leases.values().filter(|l| !l.is_live(now)).map(|l| l.id.clone()).collect()
    }

    /// A live lease by id.
    pub(crate) fn get_live(&self, id: &str, now: f64) -> Option<&Lease> {
        self.leases.get(id).filter(|l| l.is_live(now))
    }

    /// The leases of the generation `id` names, rank order: the lease alone, or every rank of
    /// the gang it belongs to (any rank's id names the gang).
    pub(crate) fn generation(&self, id: &str) -> Vec<&Lease> {
        let Some(lease) = self.leases.get(id) else { return Vec::new() };
        if lease.gang.is_none() {
            return vec![lease];
        }
        let gang = lease.gang_id();
        let mut ranks: Vec<&Lease> = self.leases.values().filter(|l| l.gang_id() == gang).collect();
        ranks.sort_by_key(|l| l.rank());
        ranks
    }

    /// Adds or replaces a lease.
    pub(crate) fn insert(&mut self, lease: Lease) {
        self.leases.insert(lease.id.clone(), lease);
    }

    /// Applies a heartbeat's fields of `renewed` (lifetime and processes) to the book's own copy
    /// of the lease, keeping what the sample follower wrote (peak, seen, overrun), and returns the
    /// result; `None` if the lease is gone.
    pub(crate) fn renew(&mut self, renewed: &Lease) -> Option<Lease> {
        let l = self.leases.get_mut(&renewed.id)?;
        l.expires_at = renewed.expires_at;
        l.ttl_seconds = renewed.ttl_seconds;
        l.pids.clone_from(&renewed.pids);
        l.pid_namespace = renewed.pid_namespace;
        l.pid_start_times.clone_from(&renewed.pid_start_times);
        Some(l.clone())
    }

    /// Removes a lease.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Lease> {
        self.leases.remove(id)
    }
}

/// Stored leases without the gangs stored in part (fewer ranks than the gang's size, or no rank
/// 0): such a gang describes no job vramguard could hold or release as one. Returns the leases
/// to keep and the ids of the ranks to end.
pub(crate) fn whole_gangs(leases: Vec<Lease>) -> (Vec<Lease>, Vec<String>) {
    let whole = |l: &Lease| match &l.gang {
        None => true,
        Some(g) => {
            let ranks: BTreeSet<u32> =
                leases.iter().filter(|o| o.gang_id() == g.id).filter_map(|o| o.gang.as_ref().map(|t| t.rank)).collect();
            ranks.len() == g.size as usize && ranks.contains(&0)
        }
    };
    let keep: Vec<bool> = leases.iter().map(whole).collect();
    let (mut kept, mut ended) = (Vec::new(), Vec::new());
    for (lease, whole) in leases.into_iter().zip(keep) {
        if whole {
            kept.push(lease);
        } else {
            ended.push(lease.id);
        }
    }
    (kept, ended)
}

/// A fresh lease id: 128 random bits from the kernel, as 32 hex digits.
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source (never on Linux): time and a counter still give unique ids in-process.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [HEX[usize::from(b >> 4)] as char, HEX[usize::from(b & 15)] as char]).collect()
}

/// Whether `id` has the shape of a lease id.
pub(crate) fn is_valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests;

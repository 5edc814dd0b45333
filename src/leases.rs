//! Generation leases: the in-memory book of who holds a generation slot and which VRAM was
//! promised to them. Pure data and arithmetic on explicit `now` values and snapshots;
//! persistence is the store's job and the critical section that changes the book is
//! [`crate::app::ledger`].
//!
//! A lease's reservation counts against its GPU for its whole life, less what the job already
//! uses ([`usage`]): with `pids`, what those processes hold on the lease's GPU; without, the
//! growth of the GPU's used VRAM since the grant, shared among its unattributed leases, oldest
//! first.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::policy::estimate::EstimateKey;
use crate::snapshot::{ProcessIdentity, Snapshot};
use crate::units::gib;

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

/// What a live lease uses and still owes, from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaseUsage {
    /// Lease id.
    pub id: String,
    /// Its GPU.
    pub gpu_index: Option<u32>,
    /// VRAM its processes hold now, GiB; `None` without pids (or without a reading).
    pub used_gb: Option<f64>,
    /// Reserved VRAM not used yet: what still counts against the GPU.
    pub outstanding_gb: f64,
    /// How `outstanding_gb` was counted.
    pub attribution: Attribution,
}

/// How a lease's use is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attribution {
    /// By what its processes hold: some were seen holding VRAM on its GPU.
    Pids,
    /// By the growth of the GPU's used VRAM since its grant: it has no pids, or none of them
    /// has been seen holding VRAM (not started yet, or in a pid namespace vramguard cannot
    /// match).
    Growth,
}

impl Attribution {
    /// The name in lease bodies.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Attribution::Pids => "pids",
            Attribution::Growth => "growth",
        }
    }
}

impl Lease {
    /// Whether the lease still holds a slot at `now`.
    pub fn is_live(&self, now: f64) -> bool {
        self.expires_at > now
    }

    /// The name health and logs use: its client, else its id.
    pub fn label(&self) -> &str {
        self.client.as_deref().unwrap_or(&self.id)
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

/// VRAM the processes of each of `leases` hold on GPU `gpu_index` in `snapshot`, GiB, in the
/// order of `leases` (oldest first); `None` when the GPU or its process list is not in the
/// snapshot. A process counts once: for the lease listing its nearest ancestor (itself first),
/// the oldest of them on a tie.
pub(crate) fn held_gb(snapshot: &Snapshot, gpu_index: u32, leases: &[&Lease]) -> Option<Vec<f64>> {
    let gpu = snapshot.gpus.iter().find(|g| g.index == gpu_index)?;
    let procs = gpu.processes.as_ref()?;
    let mut bytes = vec![0u64; leases.len()];
    for p in procs {
        let owner = p.lineage.iter().find_map(|who| leases.iter().position(|l| !l.pids.is_empty() && l.lists(who)));
        if let Some(i) = owner {
            bytes[i] += p.used_bytes;
        }
    }
    Some(bytes.into_iter().map(gib).collect())
}

/// The GPU's used VRAM (total − free, as the policy counts it), GiB.
pub(crate) fn gpu_used_gb(snapshot: &Snapshot, gpu_index: u32) -> Option<f64> {
    let m = snapshot.gpus.iter().find(|g| g.index == gpu_index)?.memory?;
    Some(gib(m.total_bytes.saturating_sub(m.free_bytes)))
}

/// What each of `live` uses and still owes on `snapshot`, in the order of `live`. Without a snapshot reading for a
/// lease's GPU, the whole reservation is outstanding (fail closed).
pub(crate) fn usage(live: &[&Lease], snapshot: Option<&Snapshot>) -> Vec<LeaseUsage> {
    let mut out: Vec<LeaseUsage> = Vec::with_capacity(live.len());
    let gpus: BTreeSet<u32> = live.iter().filter_map(|l| l.gpu_index).collect();
    for l in live.iter().filter(|l| l.gpu_index.is_none()) {
        let attribution = Attribution::Growth;
        out.push(LeaseUsage { id: l.id.clone(), gpu_index: None, used_gb: None, outstanding_gb: 0.0, attribution });
    }
    for gpu in gpus {
        let mut on_gpu: Vec<&Lease> = live.iter().copied().filter(|l| l.gpu_index == Some(gpu)).collect();
        on_gpu.sort_by(|a, b| a.granted_at.total_cmp(&b.granted_at).then(a.id.cmp(&b.id)));
        let held = snapshot.and_then(|s| held_gb(s, gpu, &on_gpu));
        let mut attributed_gb = 0.0;
        let mut unattributed: Vec<&Lease> = Vec::new();
        for (i, l) in on_gpu.iter().enumerate() {
            let used = held.as_ref().map(|h| h[i]).filter(|_| !l.pids.is_empty());
            // Counted by its processes once they were seen holding VRAM; until then (or never, as
            // for a job vramguard cannot match) by the growth rule, so a job whose VRAM shows
            // under no listed pid is not owed its reservation on top of the GPU's used memory.
            if !(l.seen || used.is_some_and(|u| u > 0.0)) {
                unattributed.push(l);
                continue;
            }
            attributed_gb += used.unwrap_or(0.0);
            let outstanding = (l.vram_reserved_gb - used.unwrap_or(0.0)).max(0.0);
            let attribution = Attribution::Pids;
            out.push(LeaseUsage {
                id: l.id.clone(),
                gpu_index: Some(gpu),
                used_gb: used,
                outstanding_gb: outstanding,
                attribution,
            });
        }
        // Unattributed leases, oldest first, share the growth of the GPU's unattributed use (used
        // less what attributed leases' processes hold) since the oldest one's grant.
        let baseline = unattributed.iter().filter_map(|l| l.unattributed_used_at_grant_gb).reduce(f64::min);
        let now_used = snapshot.and_then(|s| gpu_used_gb(s, gpu));
        let mut pool = match (now_used, baseline) {
            (Some(n), Some(b)) => (n - b - attributed_gb).max(0.0),
            _ => 0.0,
        };
        for l in unattributed {
            let used = pool.min(l.vram_reserved_gb);
            pool -= used;
            let position = on_gpu.iter().position(|o| o.id == l.id);
            let pids_hold = held.as_ref().zip(position).map(|(h, i)| h[i]).filter(|_| !l.pids.is_empty());
            out.push(LeaseUsage {
                id: l.id.clone(),
                gpu_index: Some(gpu),
                used_gb: pids_hold,
                outstanding_gb: l.vram_reserved_gb - used,
                attribution: Attribution::Growth,
            });
        }
    }
    let mut by_id: BTreeMap<String, LeaseUsage> = out.into_iter().map(|u| (u.id.clone(), u)).collect();
    live.iter().filter_map(|l| by_id.remove(&l.id)).collect()
}

/// GiB still owed per GPU index, summed over `usage`.
pub(crate) fn outstanding_by_gpu(usage: &[LeaseUsage]) -> Vec<(u32, f64)> {
    let mut by: BTreeMap<u32, f64> = BTreeMap::new();
    for u in usage {
        if let Some(g) = u.gpu_index {
            *by.entry(g).or_default() += u.outstanding_gb;
        }
    }
    by.into_iter().collect()
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
                overran.push(l.clone());
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

    /// Adds or replaces a lease.
    pub(crate) fn insert(&mut self, lease: Lease) {
        self.leases.insert(lease.id.clone(), lease);
    }

    /// Applies a heartbeat's fields of `renewed` (lifetime and processes) to the book's own copy
    /// of the lease, keeping what the tracker wrote (peak, seen, overrun), and returns the
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
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::snapshot::{GpuMemory, GpuProcess, GpuStats};

    const G: u64 = 1 << 30;

    pub(crate) fn lease(id: &str, gpu: u32, gb: f64, granted: f64, expires: f64) -> Lease {
        Lease {
            id: id.to_owned(),
            gpu_index: Some(gpu),
            gpu_uuid: None,
            vram_reserved_gb: gb,
            granted_at: granted,
            expires_at: expires,
            ttl_seconds: 60,
            client: None,
            pids: Vec::new(),
            pid_namespace: None,
            pid_start_times: BTreeMap::new(),
            seen: false,
            unattributed_used_at_grant_gb: None,
            vram_peak_gb: None,
            overrun: false,
            grant: EstimateKey::default(),
            owner: None,
        }
    }

    fn snapshot(total: u64, used: u64, procs: &[(u32, u64)]) -> Snapshot {
        Snapshot {
            taken_at: UNIX_EPOCH + Duration::from_secs(1000),
            host: None,
            gpus: vec![GpuStats {
                index: 0,
                uuid: "GPU-0".to_owned(),
                name: None,
                pci_bus_id: None,
                utilization_ratio: None,
                memory: Some(GpuMemory { total_bytes: total, used_bytes: used, free_bytes: total - used }),
                temperature_celsius: None,
                power_watts: None,
                processes: Some(procs.iter().map(|(pid, b)| GpuProcess::unresolved(*pid, None, *b)).collect()),
                faults: Default::default(),
                health: Default::default(),
            }],
            driver_version: None,
            collectors: vec![],
        }
    }

    #[test]
    fn live_active_and_expired_follow_now() {
        let book = LeaseBook::from_leases([lease("a", 0, 1.0, 0.0, 100.0), lease("b", 0, 1.0, 0.0, 50.0)]);
        assert_eq!(book.live(10.0).len(), 2);
        assert_eq!(book.live(50.0).len(), 1); // at expires_at it has lapsed
        assert_eq!(book.expired(60.0), vec!["b".to_owned()]);
        assert!(book.get_live("b", 60.0).is_none());
        assert!(book.get_live("a", 60.0).is_some());
    }

    /// With pids: what the processes hold is used, the rest of the reservation is owed for the
    /// lease's whole life.
    #[test]
    fn attributed_leases_owe_what_their_pids_do_not_hold() {
        let a = Lease { pids: vec![42], ..lease("a", 0, 12.0, 0.0, 1e9) };
        let s = snapshot(24 * G, 10 * G, &[(42, 8 * G), (7, 2 * G)]);
        let u = usage(&[&a], Some(&s));
        assert_eq!(u[0].used_gb, Some(8.0));
        assert_eq!(u[0].outstanding_gb, 4.0);
        assert_eq!(outstanding_by_gpu(&u), vec![(0, 4.0)]);
        // Not yet loaded: all of it is owed; grown past the reservation: nothing is.
        let s = snapshot(24 * G, 2 * G, &[(7, 2 * G)]);
        assert_eq!(usage(&[&a], Some(&s))[0].outstanding_gb, 12.0);
        let s = snapshot(24 * G, 15 * G, &[(42, 13 * G)]);
        assert_eq!(usage(&[&a], Some(&s))[0].outstanding_gb, 0.0);
    }

    /// Without pids: the GPU's growth since the grant is the lease's use, oldest lease first.
    #[test]
    fn unattributed_leases_share_the_growth_oldest_first() {
        let a = Lease { unattributed_used_at_grant_gb: Some(2.0), ..lease("a", 0, 12.0, 1.0, 1e9) };
        let b = Lease { unattributed_used_at_grant_gb: Some(2.0), ..lease("b", 0, 3.0, 2.0, 1e9) };
        let s = snapshot(24 * G, 10 * G, &[]);
        let u = usage(&[&b, &a], Some(&s));
        let owed: BTreeMap<&str, f64> = u.iter().map(|x| (x.id.as_str(), x.outstanding_gb)).collect();
        assert_eq!(owed["a"], 4.0);
        assert_eq!(owed["b"], 3.0);
        // Growth beyond A's reservation spills to B.
        let s = snapshot(24 * G, 15 * G, &[]);
        let owed: Vec<f64> = usage(&[&a, &b], Some(&s)).iter().map(|x| x.outstanding_gb).collect();
        assert_eq!(owed, vec![0.0, 2.0]);
        // No snapshot: everything is owed.
        assert_eq!(usage(&[&a], None)[0].outstanding_gb, 12.0);
    }

    /// An attributed job already loaded when an unattributed lease was granted is in its
    /// baseline; only what attributed processes gained since may be subtracted, not all of it.
    #[test]
    fn attributed_use_already_in_the_baseline_is_not_subtracted_twice() {
        let a = Lease { pids: vec![42], ..lease("a", 0, 8.0, 0.0, 1e9) };
        // At B's grant: 10 GiB used, 8 of them A's pids: B's baseline is 2 GiB.
        let b = Lease { unattributed_used_at_grant_gb: Some(2.0), ..lease("b", 0, 6.0, 1.0, 1e9) };
        // B's job has loaded 5 GiB; A still holds 8.
        let s = snapshot(24 * G, 15 * G, &[(42, 8 * G)]);
        let u = usage(&[&a, &b], Some(&s));
        assert_eq!(u[1].outstanding_gb, 1.0);
        // A's job grows by 2 GiB: that is A's, not B's.
        let s = snapshot(24 * G, 17 * G, &[(42, 10 * G)]);
        assert_eq!(usage(&[&a, &b], Some(&s))[1].outstanding_gb, 1.0);
    }

    #[test]
    fn peaks_rise_and_overruns_are_reported_once() {
        let mut book = LeaseBook::from_leases([Lease { pids: vec![42], ..lease("a", 0, 12.0, 0.0, 1e9) }]);
        assert!(book.observe(&snapshot(24 * G, 9 * G, &[(42, 9 * G)]), 1.0).is_empty());
        assert!(book.observe(&snapshot(24 * G, 5 * G, &[(42, 5 * G)]), 2.0).is_empty());
        assert_eq!(book.get_live("a", 3.0).unwrap().vram_peak_gb, Some(9.0));
        let over = book.observe(&snapshot(24 * G, 13 * G, &[(42, 13 * G)]), 3.0);
        assert_eq!(over.len(), 1);
        assert!(book.observe(&snapshot(24 * G, 14 * G, &[(42, 14 * G)]), 4.0).is_empty());
        let a = book.get_live("a", 5.0).unwrap();
        assert!(a.overrun);
        assert_eq!(a.vram_peak_gb, Some(14.0));
    }

    /// A 24 GiB GPU where `procs` (lineage, bytes) hold VRAM, `used` in all.
    fn snapshot_of(used: u64, procs: Vec<(Vec<ProcessIdentity>, u64)>) -> Snapshot {
        let mut s = snapshot(24 * G, used, &[]);
        s.gpus[0].processes = Some(
            procs
                .into_iter()
                .map(|(lineage, b)| GpuProcess { pid: lineage[0].pid, name: None, used_bytes: b, lineage })
                .collect(),
        );
        s
    }

    const NS: u64 = 4_026_532_175;

    fn in_container(pid: u32, ns_pid: u32, ns: Option<u64>, start: u64) -> ProcessIdentity {
        ProcessIdentity { pid, ns_pid, pid_namespace: ns, start_time: Some(start) }
    }

    #[test]
    fn a_pid_is_matched_in_its_own_namespace_by_inode_or_start_time() {
        let job = Lease { pids: vec![1], pid_namespace: Some(NS), ..lease("a", 0, 12.0, 0.0, 1e9) };
        // Host pid 5000 is pid 1 of namespace NS.
        assert!(job.lists(&in_container(5000, 1, Some(NS), 900)));
        assert!(!job.lists(&in_container(5000, 1, Some(NS + 1), 900)), "pid 1 of another container");
        assert!(
            !job.lists(&in_container(1, 1, None, 5)),
            "vramguard's pid 1, namespace unreadable, no start time sent"
        );
        // Unprivileged: the namespace cannot be read; the start time the client sent decides.
        let timed = Lease { pid_start_times: BTreeMap::from([(1, 900)]), ..job.clone() };
        assert!(timed.lists(&in_container(5000, 1, None, 900)));
        assert!(!timed.lists(&in_container(6000, 1, None, 901)));
        // Without a namespace the pid is vramguard's; a differing start time is a reused pid.
        let host =
            Lease { pids: vec![5000], pid_start_times: BTreeMap::from([(5000, 900)]), ..lease("b", 0, 1.0, 0.0, 1e9) };
        assert!(host.lists(&in_container(5000, 1, Some(NS), 900)));
        assert!(!host.lists(&in_container(5000, 1, Some(NS), 77)));
    }

    /// The failure this replaces: a job that calls itself pid 1 was not matched, its VRAM was
    /// counted as the GPU's and its whole reservation again on top.
    #[test]
    fn a_job_in_a_container_is_counted_once() {
        let a = Lease { pids: vec![1], pid_namespace: Some(NS), ..lease("a", 0, 12.0, 0.0, 1e9) };
        let s = snapshot_of(
            10 * G,
            vec![(vec![in_container(5000, 1, Some(NS), 900)], 8 * G), (vec![ProcessIdentity::bare(7)], 2 * G)],
        );
        let u = usage(&[&a], Some(&s));
        assert_eq!((u[0].used_gb, u[0].outstanding_gb, u[0].attribution), (Some(8.0), 4.0, Attribution::Pids));
    }

    #[test]
    fn a_child_holding_vram_is_its_parents_lease() {
        let a = Lease { pids: vec![300], ..lease("a", 0, 12.0, 0.0, 1e9) };
        let child = vec![ProcessIdentity::bare(301), ProcessIdentity::bare(300), ProcessIdentity::bare(1)];
        let s = snapshot_of(8 * G, vec![(child, 6 * G)]);
        assert_eq!(usage(&[&a], Some(&s))[0].used_gb, Some(6.0));
        let mut book = LeaseBook::from_leases([a]);
        book.observe(&s, 1.0);
        let a = book.get_live("a", 1.0).unwrap();
        assert!(a.seen);
        assert_eq!(a.vram_peak_gb, Some(6.0));
    }

    /// A worker's lease lists the worker; a job's lease lists one of its children: the child's
    /// VRAM is the job's (the nearest listed ancestor), and counts once.
    #[test]
    fn a_process_counts_for_the_lease_of_its_nearest_listed_ancestor_only() {
        let worker = Lease { pids: vec![100], ..lease("w", 0, 4.0, 0.0, 1e9) };
        let job = Lease { pids: vec![101], ..lease("j", 0, 8.0, 1.0, 1e9) };
        let child = vec![ProcessIdentity::bare(101), ProcessIdentity::bare(100)];
        let s = snapshot_of(6 * G, vec![(child, 6 * G)]);
        assert_eq!(held_gb(&s, 0, &[&worker, &job]), Some(vec![0.0, 6.0]));
    }

    /// Listed pids never seen holding VRAM (not started yet, or not matchable): the growth rule
    /// counts the lease, so the job's VRAM under an unmatched pid is not owed twice.
    #[test]
    fn leases_whose_processes_were_never_seen_are_counted_by_growth() {
        let a = Lease { pids: vec![1], unattributed_used_at_grant_gb: Some(2.0), ..lease("a", 0, 12.0, 0.0, 1e9) };
        let s = snapshot_of(10 * G, vec![(vec![ProcessIdentity::bare(5000)], 8 * G)]);
        let u = usage(&[&a], Some(&s));
        assert_eq!((u[0].used_gb, u[0].outstanding_gb, u[0].attribution), (Some(0.0), 4.0, Attribution::Growth));
        let mut book = LeaseBook::from_leases([a]);
        book.observe(&s, 1.0);
        assert!(!book.get_live("a", 1.0).unwrap().seen);
    }

    #[test]
    fn ids_are_unique_and_well_formed() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(is_valid_id(&a), "{a}");
        assert!(!is_valid_id("xyz"));
        assert!(!is_valid_id(&a.to_uppercase()));
    }
}

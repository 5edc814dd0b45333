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
        gang: None,
    }
}

fn snapshot(total: u64, used: u64, procs: &[(u32, u64)]) -> Snapshot {
    Snapshot {
        topology: Vec::new(),
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
            telemetry: Default::default(),
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
            .map(|(lineage, b)| GpuProcess {
                pid: lineage[0].pid,
                name: None,
                used_bytes: b,
                lineage,
                sm_utilization_ratio: None,
            })
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
    assert!(!job.lists(&in_container(1, 1, None, 5)), "vramguard's pid 1, namespace unreadable, no start time sent");
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

/// A worker's lease lists the worker; a later lease lists one of its children: the child's VRAM
/// counts once, for the lease that listed the process first (issue #27: a request listing a pid
/// another live lease lists is refused; a descendant's cannot be told apart up front, so the
/// older lease keeps it).
#[test]
fn a_process_counts_for_the_oldest_lease_that_lists_it_or_an_ancestor() {
    let worker = Lease { pids: vec![100], ..lease("w", 0, 4.0, 0.0, 1e9) };
    let job = Lease { pids: vec![101], ..lease("j", 0, 8.0, 1.0, 1e9) };
    let child = vec![ProcessIdentity::bare(101), ProcessIdentity::bare(100)];
    let s = snapshot_of(6 * G, vec![(child, 6 * G)]);
    assert_eq!(held_gb(&s, 0, &[&worker, &job]), Some(vec![6.0, 0.0]));
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

#[test]
fn a_gang_stored_in_part_is_not_kept() {
    let rank = |id: &str, gang: &str, rank: u32, size: u32| Lease {
        gang: Some(GangTie { id: gang.to_owned(), rank, size }),
        ..lease(id, rank, 10.0, 0.0, 100.0)
    };
    let stored = vec![
        lease("single", 0, 5.0, 0.0, 100.0),
        rank("whole", "whole", 0, 2),
        rank("whole-1", "whole", 1, 2),
        // Rank 1 of a three-rank gang is missing; of another, rank 0.
        rank("part", "part", 0, 3),
        rank("part-2", "part", 2, 3),
        rank("headless-1", "headless", 1, 2),
    ];
    let (kept, ended) = whole_gangs(stored);
    let kept: Vec<&str> = kept.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(kept, ["single", "whole", "whole-1"]);
    assert_eq!(ended, ["part", "part-2", "headless-1"]);
}

#[test]
fn a_gang_overruns_once_whichever_ranks_do() {
    let mut book = LeaseBook::default();
    for (id, gpu, r) in [("g", 0, 0), ("g-1", 1, 1)] {
        book.insert(Lease {
            pids: vec![42],
            gang: Some(GangTie { id: "g".to_owned(), rank: r, size: 2 }),
            ..lease(id, gpu, 4.0, 0.0, 100.0)
        });
    }
    let who = vec![ProcessIdentity { pid: 42, ns_pid: 42, pid_namespace: None, start_time: None }];
    let mut s = snapshot_of(8 * G, vec![(who, 6 * G)]);
    let second = s.gpus[0].clone();
    s.gpus.push(GpuStats { index: 1, uuid: "GPU-1".to_owned(), ..second });
    let overran = book.observe(&s, 1.0);
    assert_eq!(overran.len(), 1, "two ranks overran, one gang: {overran:?}");
    assert!(book.observe(&s, 2.0).is_empty(), "and only once");
}

//! Who the processes on the GPUs are, from `/proc`: each one's name, its pid in its own pid
//! namespace, that namespace, its start time, and the same for every ancestor. NVML reports
//! pids in the host's namespace; a job in a container knows itself by another pid (often 1),
//! and a job's CUDA work may run in a child. Leases are matched against these lineages
//! ([`crate::leases`]), so the sampler reads them afresh on every pass: a child started or
//! re-parented since the last sample is followed at once.
//!
//! Only world-readable files are needed (`status` for the name, parent and `NSpid:`, `stat` for
//! the start time) except the namespace link `/proc/<pid>/ns/pid`, which needs root or
//! `CAP_SYS_PTRACE` for another user's process. A process in vramguard's own namespace (one
//! `NSpid:` entry) is known to share vramguard's namespace without reading that link.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::snapshot::ProcessIdentity;

/// Ancestors followed at most: deeper trees are cut there (real ones are a handful deep).
const MAX_DEPTH: usize = 64;

/// What one `/proc/<pid>` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcEntry {
    pub(super) name: Option<String>,
    pub(super) parent: u32,
    pub(super) identity: ProcessIdentity,
}

/// Reads process entries under `/proc`, remembering each for one pass (GPUs share ancestors).
#[derive(Debug, Default)]
pub(super) struct ProcReader {
    pass: HashMap<u32, Option<ProcEntry>>,
}

impl ProcReader {
    /// Starts a pass: what was read before may have changed.
    pub(super) fn begin_pass(&mut self) {
        self.pass.clear();
    }

    /// The process and its ancestors, nearest first, with its name; just its pid when `/proc`
    /// has no entry for it.
    pub(super) fn lineage(&mut self, pid: u32) -> (Option<String>, Vec<ProcessIdentity>) {
        let Some(first) = self.entry(pid) else { return (None, vec![ProcessIdentity::bare(pid)]) };
        let name = first.name.clone();
        let mut lineage = vec![first.identity];
        let mut parent = first.parent;
        while parent != 0 && lineage.len() < MAX_DEPTH && !lineage.iter().any(|i| i.pid == parent) {
            let Some(entry) = self.entry(parent) else { break };
            lineage.push(entry.identity);
            parent = entry.parent;
        }
        (name, lineage)
    }

    fn entry(&mut self, pid: u32) -> Option<ProcEntry> {
        if let Some(known) = self.pass.get(&pid) {
            return known.clone();
        }
        let entry = self.read(pid);
        self.pass.insert(pid, entry.clone());
        entry
    }

    fn read(&self, pid: u32) -> Option<ProcEntry> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let status = parse_status(&status)?;
        let start_time = std::fs::read_to_string(dir.join("stat")).ok().as_deref().and_then(start_time);
        let pid_namespace =
            if status.ns_depth == 1 { own_pid_namespace() } else { namespace_inode(&dir.join("ns/pid")) };
        Some(ProcEntry {
            name: status.name,
            parent: status.parent,
            identity: ProcessIdentity { pid, ns_pid: status.ns_pid.unwrap_or(pid), pid_namespace, start_time },
        })
    }
}

/// The fields of `/proc/<pid>/status` attribution needs.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    name: Option<String>,
    parent: u32,
    /// Innermost `NSpid:` entry (kernels before 4.1 have no such line).
    ns_pid: Option<u32>,
    /// How many namespaces `NSpid:` lists, from the one `/proc` was mounted in down.
    ns_depth: usize,
}

fn parse_status(text: &str) -> Option<Status> {
    let mut name = None;
    let mut parent = None;
    let mut ns: Vec<u32> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match key {
            "Name" => name = (!value.is_empty()).then(|| value.to_owned()),
            "PPid" => parent = value.parse().ok(),
            "NSpid" => ns = value.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
            _ => {}
        }
    }
    Some(Status { name, parent: parent?, ns_pid: ns.last().copied(), ns_depth: ns.len().max(1) })
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields 3, 4, ... follow; the 22nd is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// How a client names one of its own processes to vramguard: the inode of the pid namespace it
/// sees processes in (its own `/proc/self/ns/pid`) and `pid`'s start time, each `None` when
/// `/proc` does not say (`vramguard run` sends them with its child's pid).
pub(crate) fn client_identity(pid: u32) -> (Option<u64>, Option<u64>) {
    let ns = own_pid_namespace();
    let start = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(start_time);
    (ns, start)
}

/// vramguard's own pid namespace, read once (readable by any user): the namespace of a lease's
/// pids when it names none, and of every process with a single `NSpid:` entry.
pub(crate) fn own_pid_namespace() -> Option<u64> {
    static OWN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| namespace_inode(Path::new("/proc/self/ns/pid")))
}

/// The inode a namespace link (`pid:[4026531836]`) names.
fn namespace_inode(link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    let target = target.to_str()?;
    target.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t51234\nNgid:\t0\nPid:\t51234\nPPid:\t51200\nTracerPid:\t0\nNSpid:\t51234\t1\nNSpgid:\t51234\t1\n";

    #[test]
    fn status_gives_name_parent_and_the_innermost_pid() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!(s, Status { name: Some("python3".into()), parent: 51200, ns_pid: Some(1), ns_depth: 2 });
        let host = parse_status("Name:\tsh\nPPid:\t1\nNSpid:\t77\n").unwrap();
        assert_eq!((host.ns_pid, host.ns_depth), (Some(77), 1));
        assert_eq!(parse_status("Name:\tx\n"), None, "no parent line: not a status file");
    }

    #[test]
    fn the_start_time_is_counted_after_the_last_parenthesis() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(start_time(stat), Some(987_654));
        assert_eq!(start_time("4242 (short) S 1"), None);
    }

    #[test]
    fn this_process_and_its_parents_are_read_from_proc() {
        let mut reader = ProcReader::default();
        reader.begin_pass();
        let me = std::process::id();
        let (name, lineage) = reader.lineage(me);
        assert!(name.is_some());
        assert_eq!(lineage[0].pid, me);
        assert!(lineage[0].start_time.is_some());
        assert_eq!(lineage[0].pid_namespace, namespace_inode(Path::new("/proc/self/ns/pid")));
        let parent = parse_status(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap().parent;
        if parent != 0 {
            assert_eq!(lineage[1].pid, parent, "the parent follows the process");
        }
        let (_, gone) = reader.lineage(u32::MAX - 1);
        assert_eq!(gone, vec![ProcessIdentity::bare(u32::MAX - 1)]);
    }
}

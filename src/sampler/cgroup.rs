//! The memory limit of the cgroup vramguard runs in (v2 `memory.max`, v1
//! `memory.limit_in_bytes`). A container's RAM ceiling is what admission must respect, and
//! node_exporter does not report it.

use std::path::{Path, PathBuf};

/// The effective limit in bytes, if one applies and is below `host_total`.
pub(crate) fn memory_limit(host_total: u64) -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_from(&membership, Path::new("/sys/fs/cgroup"), host_total, |p| std::fs::read_to_string(p).ok())
}

/// Pure core of [`memory_limit`]: `membership` is /proc/self/cgroup, `root` the cgroup mount,
/// `read` reads a file. The tightest limit on the path from the process's cgroup to the root
/// applies. Inside a container the recorded path often does not exist in its own mount
/// namespace; then the mount's root files are the container's own cgroup.
pub(crate) fn limit_from(
    membership: &str,
    root: &Path,
    host_total: u64,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    let mut candidates: Vec<(PathBuf, &str)> = Vec::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            candidates.push((root.join(rel), "memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push((root.join("memory").join(rel), "memory.limit_in_bytes"));
        }
    }
    let mut best: Option<u64> = None;
    for (dir, file) in candidates {
        let mut dir = dir.as_path();
        loop {
            if let Some(limit) = read(&dir.join(file)).as_deref().and_then(parse_limit) {
                best = Some(best.map_or(limit, |b| b.min(limit)));
            }
            if dir == root || dir == root.join("memory") {
                break;
            }
            match dir.parent() {
                Some(p) if p.starts_with(root) => dir = p,
                _ => break,
            }
        }
    }
    best.filter(|&limit| limit < host_total)
}

/// `max` (v2) means no limit; v1 writes "no limit" as a huge page-aligned number, which the
/// caller's comparison with host RAM drops.
fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" { None } else { t.parse().ok() }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn reader(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = files.iter().map(|(p, c)| (PathBuf::from(p), (*c).to_owned())).collect();
        move |p: &Path| map.get(p).cloned()
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn v2_limit_below_host_ram_is_reported() {
        let read = reader(&[("/sys/fs/cgroup/app/memory.max", "4294967296\n")]);
        assert_eq!(limit_from("0::/app\n", Path::new("/sys/fs/cgroup"), 16 * GIB, read), Some(4 * GIB));
    }

    #[test]
    fn v2_max_means_no_limit() {
        let read = reader(&[("/sys/fs/cgroup/app/memory.max", "max\n")]);
        assert_eq!(limit_from("0::/app\n", Path::new("/sys/fs/cgroup"), 16 * GIB, read), None);
    }

    #[test]
    fn v2_parent_limit_applies_to_child() {
        let read = reader(&[("/sys/fs/cgroup/a/b/memory.max", "max"), ("/sys/fs/cgroup/a/memory.max", "2147483648")]);
        assert_eq!(limit_from("0::/a/b\n", Path::new("/sys/fs/cgroup"), 16 * GIB, read), Some(2 * GIB));
    }

    #[test]
    fn v1_unlimited_is_dropped_and_limited_is_kept() {
        let membership = "4:memory:/docker/abc\n0::/\n";
        let unlimited = reader(&[("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")]);
        assert_eq!(limit_from(membership, Path::new("/sys/fs/cgroup"), 16 * GIB, unlimited), None);
        let limited = reader(&[("/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "1073741824")]);
        assert_eq!(limit_from(membership, Path::new("/sys/fs/cgroup"), 16 * GIB, limited), Some(GIB));
    }

    #[test]
    fn limit_at_or_above_host_ram_is_not_a_limit() {
        let read = reader(&[("/sys/fs/cgroup/memory.max", "17179869184")]);
        assert_eq!(limit_from("0::/\n", Path::new("/sys/fs/cgroup"), 16 * GIB, read), None);
    }
}

//! Every accepted range in one place, with the sentence that names it. The config loader and the
//! API both check values here, so a value the config accepts the API accepts too, and every
//! rejection says what is allowed in the same words.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Lease lifetimes, seconds (API `ttl_seconds`, config `leases.default_ttl`).
pub(crate) const TTL_SECONDS: RangeInclusive<u64> = 10..=86_400;
/// The largest VRAM figure accepted anywhere, GiB: above any GPU made. Also the ceiling of
/// `max_vram_usage_gb` while no GPU is known.
pub(crate) const MAX_VRAM_GB: f64 = 1024.0;
/// Thresholds are fractions.
pub(crate) const THRESHOLD: RangeInclusive<f64> = 0.1..=1.0;
/// Generation leases allowed at once.
pub(crate) const CONCURRENCY: RangeInclusive<u32> = 1..=10;
/// [`CONCURRENCY`] as the API's field list reads it (a unit test holds the two together).
pub(crate) const CONCURRENCY_WORDS: &str = "integers 1 to 10";
/// VAE decode tile edge, pixels.
pub(crate) const TILE_SIZE: RangeInclusive<u32> = 128..=512;
/// The sentences of the API's field lists (`&'static`, so written out; the unit test
/// `written_out_ranges_match_their_ranges` holds each to its range).
pub(crate) const REQUIRED_GB_WORDS: &str = "a number above 0 up to 1024 (GiB)";
/// [`TTL_SECONDS`] in the API's field lists.
pub(crate) const TTL_WORDS: &str = "integers 10 to 86400";
/// [`MAX_PIDS`] and [`MAX_PID`] in the API's field lists.
pub(crate) const PIDS_WORDS: &str = "a list of 1 to 64 process ids (integers 1 to 4194304)";
/// [`WAIT_SECONDS`] in the API's field lists.
pub(crate) const WAIT_SECONDS_WORDS: &str = "a number 0 to 300 (seconds, decimals allowed)";
/// [`TILE_SIZE`] in the API's field lists.
pub(crate) const TILE_SIZE_WORDS: &str = "integers 128 to 512";
/// [`THRESHOLD`] in the API's field lists.
pub(crate) const THRESHOLD_WORDS: &str = "fractions 0.1 to 1.0";
/// The VRAM warning threshold in the API's field lists: [`THRESHOLD_WORDS`] and its order.
pub(crate) const VRAM_WARNING_WORDS: &str = "fractions 0.1 to 1.0, not above vram_critical_threshold";
/// The VRAM critical threshold in the API's field lists: [`THRESHOLD_WORDS`] and its order.
pub(crate) const VRAM_CRITICAL_WORDS: &str = "fractions 0.1 to 1.0, not below vram_warning_threshold";
/// Longest lease `client` name, characters.
pub(crate) const CLIENT_MAX_CHARS: usize = 128;
/// Largest accepted request body, bytes.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;
/// Points one history answer may hold.
pub(crate) const HISTORY_MAX_POINTS: RangeInclusive<u32> = 1..=10_000;
/// [`HISTORY_MAX_POINTS`] as the API's field list reads it.
pub(crate) const HISTORY_MAX_POINTS_WORDS: &str = "integers 1 to 10000";
/// History points returned when the query does not say.
pub(crate) const HISTORY_DEFAULT_POINTS: u32 = 1000;
/// A range of durations and how config.yaml writes its ends, for the sentence.
pub(crate) struct Durations {
    pub(crate) range: RangeInclusive<Duration>,
    pub(crate) words: &'static str,
}

impl Durations {
    /// `value` (shown as the config wrote it) within the range.
    pub(crate) fn check(&self, value: Duration, shown: impl std::fmt::Display) -> Result<(), String> {
        if self.range.contains(&value) {
            Ok(())
        } else {
            Err(format!("{shown} is out of range; allowed {}", self.words))
        }
    }
}

const fn durations(from: Duration, to: Duration, words: &'static str) -> Durations {
    Durations { range: from..=to, words }
}

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// Sampling period: sysinfo needs 200 ms between CPU refreshes to compute a busy ratio.
pub(crate) const SAMPLE_INTERVAL: Durations =
    durations(Duration::from_millis(200), Duration::from_secs(HOUR), "200ms to 1h");
/// History recording period (at most its retention, checked beside it).
pub(crate) const HISTORY_INTERVAL: Durations = durations(Duration::from_secs(1), Duration::MAX, "at least 1s");
/// How long one query to the Prometheus history backend may take.
pub(crate) const PROMETHEUS_TIMEOUT: Durations =
    durations(Duration::from_millis(100), Duration::from_secs(60), "100ms to 1m");
/// Header-read and keep-alive idle timeouts.
pub(crate) const CONNECTION_TIMEOUT: Durations =
    durations(Duration::from_secs(1), Duration::from_secs(HOUR), "1s to 1h");
/// How long a head of the queue may be overtaken under `backfill`.
pub(crate) const MAX_BYPASS: Durations = durations(Duration::ZERO, Duration::from_secs(DAY), "0s to 24h");
/// `queue.max_wait`: an operator's cap on [`WAIT_SECONDS`].
pub(crate) const MAX_WAIT: Durations = durations(Duration::ZERO, Duration::from_secs(300), "0s to 5m");
/// `leases.default_ttl`: [`TTL_SECONDS`] as config.yaml writes it (whole seconds).
pub(crate) const DEFAULT_TTL: Durations =
    durations(Duration::from_secs(*TTL_SECONDS.start()), Duration::from_secs(*TTL_SECONDS.end()), "10s to 24h");
/// WebSocket subscribers at once.
pub(crate) const SUBSCRIBERS: RangeInclusive<u32> = 1..=10_000;
/// HTTP connections open at once (config `http.max_connections`).
pub(crate) const CONNECTIONS: RangeInclusive<u32> = 1..=100_000;
/// Threads answering requests (config `http.worker_threads`).
pub(crate) const WORKER_THREADS: RangeInclusive<u32> = 1..=64;
/// Generation requests waiting at once (config `queue.max_waiting`).
pub(crate) const WAITING: RangeInclusive<u32> = 1..=100_000;
/// Observed peaks an estimate needs (`learning.min_samples`) and may use (`learning.window`).
pub(crate) const LEARNING_SAMPLES: RangeInclusive<u32> = 1..=1000;
/// `learning.margin`: the fraction added to an observed peak.
pub(crate) const LEARNING_MARGIN: RangeInclusive<f64> = 0.0..=1.0;
/// Observations kept in all, whatever the keys (each key keeps its newest `learning.window`).
pub(crate) const OBSERVATIONS_KEPT: u32 = 10_000;
/// `limit` of the observations listing.
pub(crate) const OBSERVATIONS_LIMIT: RangeInclusive<u32> = 1..=10_000;
/// The observations listing's `limit` in the API's field lists.
pub(crate) const OBSERVATIONS_LIMIT_WORDS: &str = "integers 1 to 10000";
/// `learning.min_ratio`: the least fraction of the model a learned estimate may be.
pub(crate) const MIN_RATIO: RangeInclusive<f64> = 0.0..=1.0;
/// `learning.oom_margin`: how much more than its peak an out-of-memory job is taken to need.
pub(crate) const OOM_MARGIN: RangeInclusive<f64> = 0.0..=4.0;
/// A workload component's size, billions of parameters.
pub(crate) const PARAMS_BILLIONS_MAX: f64 = 10_000.0;
/// Longest host name in `http.allowed_hosts` (DNS).
pub(crate) const HOST_NAME_MAX_CHARS: usize = 253;
/// How long one request may wait for room, seconds (API `wait_seconds`): long waits are made of
/// repeated requests, so no connection is held open for longer than this.
pub(crate) const WAIT_SECONDS: RangeInclusive<f64> = 0.0..=300.0;

/// `wait_seconds`: 0 to 300, decimals allowed.
pub(crate) fn check_wait_seconds(value: f64) -> Result<(), String> {
    if value.is_finite() && WAIT_SECONDS.contains(&value) {
        Ok(())
    } else {
        Err(format!("{value} is out of range; allowed 0 to 300 (seconds, decimals allowed)"))
    }
}

/// XID codes: NVIDIA's catalogue runs well below 999, which NVML itself uses for "unknown".
pub(crate) const XID: RangeInclusive<u64> = 1..=999;
/// How long a fatal XID may keep a GPU unhealthy.
pub(crate) const XID_WINDOW: Durations = durations(Duration::from_secs(1), Duration::from_secs(30 * DAY), "1s to 30d");
/// XIDs that mean the GPU needs a reset or worse (NVIDIA's XID catalogue and GPU memory error
/// management guide): 48 double-bit ECC, 61/62 internal micro-controller halt, 63/64 ECC page
/// retirement or row remapping event/failure, 74 NVLink, 79 fallen off the bus, 92 high
/// single-bit ECC rate, 94/95 contained/uncontained ECC error, 119/120 GSP timeout/error.
pub(crate) const DEFAULT_FATAL_XIDS: [u64; 12] = [48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120];

/// A list of fatal XIDs: each a known code, none twice. An error names the position.
pub(crate) fn check_fatal_xids(xids: &[u64]) -> Result<(), (usize, String)> {
    for (i, x) in xids.iter().enumerate() {
        if !XID.contains(x) {
            return Err((
                i,
                format!(
                    "{x} is not an XID; allowed integers {} to {} (an empty list makes no XID fatal)",
                    XID.start(),
                    XID.end()
                ),
            ));
        }
        if xids[..i].contains(x) {
            return Err((i, format!("{x} is listed twice; list each XID once")));
        }
    }
    Ok(())
}

/// A threshold fraction; a percentage typed by mistake gets a hint.
pub(crate) fn check_threshold(value: f64) -> Result<(), String> {
    if value.is_finite() && THRESHOLD.contains(&value) {
        return Ok(());
    }
    let hint = if value > 1.0 && value <= 100.0 {
        format!("; thresholds are fractions; did you mean {}?", value / 100.0)
    } else {
        String::new()
    };
    Err(format!("{value} is out of range; allowed {} to {}{hint}", THRESHOLD.start(), THRESHOLD.end()))
}

/// A concurrency limit.
pub(crate) fn check_concurrency(n: u32) -> Result<(), String> {
    in_range(n, &CONCURRENCY)
}

/// A VAE tile edge.
pub(crate) fn check_tile_size(n: u32) -> Result<(), String> {
    in_range(n, &TILE_SIZE)
}

/// A lease lifetime in whole seconds.
pub(crate) fn check_ttl_seconds(t: u64) -> Result<(), String> {
    in_range(t, &TTL_SECONDS)
}

/// A job's VRAM requirement, GiB.
pub(crate) fn check_required_gb(v: f64) -> Result<(), String> {
    if v > 0.0 && v <= MAX_VRAM_GB {
        Ok(())
    } else {
        Err(format!("{v} is out of range; allowed above 0 up to {MAX_VRAM_GB} (GiB)"))
    }
}

/// A VRAM budget, GiB, up to `max_gb` (the largest GPU, or [`MAX_VRAM_GB`] without one).
pub(crate) fn check_budget_gb(v: f64, max_gb: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 && v <= max_gb {
        Ok(())
    } else {
        Err(format!("{v} is out of range; allowed above 0 up to {max_gb:.1}"))
    }
}

/// Most processes one lease may name.
pub(crate) const MAX_PIDS: usize = 64;
/// The largest process id Linux can hand out (`PID_MAX_LIMIT`, 2^22).
pub(crate) const MAX_PID: u32 = 4_194_304;

/// A lease's processes: 1 to 64 positive integers.
pub(crate) fn check_pids(pids: &[u32]) -> Result<(), String> {
    if pids.is_empty() || pids.len() > MAX_PIDS {
        return Err(format!("{} processes; allowed a list of 1 to {MAX_PIDS} positive integers", pids.len()));
    }
    if let Some(bad) = pids.iter().find(|p| **p == 0 || **p > MAX_PID) {
        return Err(format!("{bad} is not a process id; allowed a list of 1 to {MAX_PIDS} integers 1 to {MAX_PID}"));
    }
    Ok(())
}

/// A video's width and height, pixels: multiples of 16 (the VAEs' and patches' strides).
pub(crate) const SIDE: RangeInclusive<u32> = 16..=4096;
/// `width` and `height` in the API's field lists.
pub(crate) const SIDE_WORDS: &str = "integers 16 to 4096, multiples of 16";
/// A video's frame count.
pub(crate) const FRAMES: RangeInclusive<u32> = 1..=1001;
/// `frames` in the API's field lists.
pub(crate) const FRAMES_WORDS: &str = "integers 1 to 1001";

/// Most GPUs one generation (a gang) may take.
pub(crate) const MAX_GANG: u32 = 16;
/// GPUs one generation asks for.
pub(crate) const GANG: RangeInclusive<u32> = 1..=MAX_GANG;
/// `gpus` in the API's field lists.
pub(crate) const GANG_WORDS: &str = "integers 1 to 16";
/// `gpu_indices` in the API's field lists.
pub(crate) const GPU_INDICES_WORDS: &str =
    "distinct GPU indices (integers), as many as `gpus`, rank 0 first; comma-separated in a query";

/// A gang's pinned GPUs: as many as it has ranks, each once.
pub(crate) fn check_pins(gpus: u32, indices: &[u32]) -> Result<(), String> {
    if indices.len() != gpus as usize {
        return Err(format!("{} indices for {gpus} GPUs; allowed {GPU_INDICES_WORDS}", indices.len()));
    }
    if let Some(dup) = indices.iter().enumerate().find(|(i, v)| indices[..*i].contains(v)).map(|(_, v)| v) {
        return Err(format!("GPU {dup} is listed twice; allowed {GPU_INDICES_WORDS}"));
    }
    Ok(())
}

/// One side of a video.
pub(crate) fn check_side(v: u32) -> Result<(), String> {
    if SIDE.contains(&v) && v.is_multiple_of(16) {
        Ok(())
    } else {
        Err(format!("{v} is out of range; allowed {SIDE_WORDS}"))
    }
}

/// A video's size: the field at fault and why.
pub(crate) fn check_geometry(width: u32, height: u32, frames: u32) -> Result<(), (&'static str, String)> {
    check_side(width).map_err(|m| ("width", m))?;
    check_side(height).map_err(|m| ("height", m))?;
    in_range(frames, &FRAMES).map_err(|m| ("frames", m))
}

/// `pid_namespace` in the API's field lists.
pub(crate) const PID_NAMESPACE_WORDS: &str = "an integer 1 to 4294967295: the inode of the caller's /proc/self/ns/pid";
/// The largest namespace inode (the kernel's are 32-bit).
pub(crate) const MAX_NAMESPACE: u64 = 4_294_967_295;
/// `pid_start_times` in the API's field lists.
pub(crate) const PID_START_TIMES_WORDS: &str =
    "a list of integers 0 to 9223372036854775807, one per pid in `pids`: field 22 of /proc/<pid>/stat";
/// The largest start time (what a signed 64-bit JSON integer holds).
pub(crate) const MAX_START_TIME: u64 = i64::MAX as u64;

/// A pid namespace's inode: 1 to 2^32 − 1.
pub(crate) fn check_pid_namespace(ns: u64) -> Result<(), String> {
    if (1..=MAX_NAMESPACE).contains(&ns) {
        Ok(())
    } else {
        Err(format!("{ns} is not a namespace inode; allowed {PID_NAMESPACE_WORDS}"))
    }
}

/// Start times of `pids`: one each.
pub(crate) fn check_pid_start_times(times: &[u64], pids: Option<&[u32]>) -> Result<(), String> {
    if let Some(t) = times.iter().find(|t| **t > MAX_START_TIME) {
        return Err(format!("{t} is out of range; allowed {PID_START_TIMES_WORDS}"));
    }
    match pids {
        Some(p) if p.len() == times.len() => Ok(()),
        Some(p) => Err(format!("{} start times for {} pids; allowed {PID_START_TIMES_WORDS}", times.len(), p.len())),
        None => Err(format!("sent without pids; allowed {PID_START_TIMES_WORDS}")),
    }
}

/// A lease's `client` name.
pub(crate) fn check_client(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n <= CLIENT_MAX_CHARS {
        Ok(())
    } else {
        Err(format!("{n} characters is too long; allowed at most {CLIENT_MAX_CHARS}"))
    }
}

/// Longest token name.
pub(crate) const TOKEN_NAME_MAX_CHARS: usize = 64;

/// A token's name (`auth.tokens[].name`): it becomes a lease's owner, in answers and logs, so
/// plain characters only.
pub(crate) fn check_token_name(name: &str) -> Result<(), String> {
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if name.is_empty() || name.len() > TOKEN_NAME_MAX_CHARS || !plain {
        return Err(format!(
            "{name:?} is not a token name; allowed 1 to {TOKEN_NAME_MAX_CHARS} letters, digits, '.', '_', '@' or '-'"
        ));
    }
    Ok(())
}

/// An integer within `range`, in the one sentence every integer range uses.
pub(crate) fn in_range<T: PartialOrd + std::fmt::Display>(v: T, range: &RangeInclusive<T>) -> Result<(), String> {
    if range.contains(&v) { Ok(()) } else { Err(format!("{v} is out of range; allowed {}", integers(range))) }
}

/// How an integer range reads in a sentence: `integers 1 to 10`.
pub(crate) fn integers<T: std::fmt::Display>(range: &RangeInclusive<T>) -> String {
    format!("integers {} to {}", range.start(), range.end())
}

/// A fraction or amount within `range` (finite).
pub(crate) fn within(v: f64, range: &RangeInclusive<f64>) -> Result<(), String> {
    if v.is_finite() && range.contains(&v) {
        Ok(())
    } else {
        Err(format!("{v} is out of range; allowed {} to {}", range.start(), range.end()))
    }
}

/// A host name or IP address of `http.allowed_hosts`.
pub(crate) fn check_host_name(h: &str) -> Result<(), String> {
    let plain = h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if h.is_empty() || h.len() > HOST_NAME_MAX_CHARS || !plain {
        return Err(format!("{h:?} is not a host name; allowed letters, digits, '-', '.', and an IP address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sentences written out as constants (for `&'static` field lists) say what the ranges
    /// say.
    #[test]
    fn written_out_ranges_match_their_ranges() {
        assert_eq!(CONCURRENCY_WORDS, integers(&CONCURRENCY));
        assert_eq!(FRAMES_WORDS, integers(&FRAMES));
        assert_eq!(GANG_WORDS, integers(&GANG));
        assert_eq!(OBSERVATIONS_LIMIT_WORDS, integers(&OBSERVATIONS_LIMIT));
        assert_eq!(SIDE_WORDS, format!("{}, multiples of 16", integers(&SIDE)));
        assert_eq!(REQUIRED_GB_WORDS, format!("a number above 0 up to {MAX_VRAM_GB} (GiB)"));
        assert_eq!(TTL_WORDS, integers(&TTL_SECONDS));
        assert_eq!(PIDS_WORDS, format!("a list of 1 to {MAX_PIDS} process ids (integers 1 to {MAX_PID})"));
        assert_eq!(
            WAIT_SECONDS_WORDS,
            format!("a number {} to {} (seconds, decimals allowed)", WAIT_SECONDS.start(), WAIT_SECONDS.end())
        );
        assert_eq!(TILE_SIZE_WORDS, integers(&TILE_SIZE));
        assert_eq!(THRESHOLD_WORDS, format!("fractions {:.1} to {:.1}", THRESHOLD.start(), THRESHOLD.end()));
        assert!(VRAM_WARNING_WORDS.starts_with(THRESHOLD_WORDS) && VRAM_CRITICAL_WORDS.starts_with(THRESHOLD_WORDS));
        assert_eq!(HISTORY_MAX_POINTS_WORDS, integers(&HISTORY_MAX_POINTS));
        assert_eq!(DEFAULT_TTL.range, Duration::from_secs(10)..=Duration::from_secs(86_400));
        assert!(SUBSCRIBERS.contains(&10_000) && !SUBSCRIBERS.contains(&10_001));
    }

    #[test]
    fn messages_name_the_range() {
        assert!(check_threshold(85.0).unwrap_err().contains("did you mean 0.85?"));
        assert!(check_threshold(0.05).unwrap_err().contains("allowed 0.1 to 1"));
        assert!(check_threshold(f64::NAN).is_err());
        assert_eq!(check_threshold(0.1), Ok(()));
        assert!(check_concurrency(0).unwrap_err().contains("integers 1 to 10"));
        assert!(check_tile_size(64).unwrap_err().contains("128 to 512"));
        assert!(check_ttl_seconds(9).unwrap_err().contains("10 to 86400"));
        assert_eq!(check_ttl_seconds(86_400), Ok(()));
        assert!(check_required_gb(0.0).is_err());
        assert_eq!(check_required_gb(1024.0), Ok(()));
        assert!(check_budget_gb(17.0, 16.0).unwrap_err().contains("up to 16.0"));
        assert!(check_client(&"x".repeat(129)).unwrap_err().contains("at most 128"));
        assert_eq!(check_fatal_xids(&DEFAULT_FATAL_XIDS), Ok(()));
        assert_eq!(check_fatal_xids(&[]), Ok(()));
        assert!(check_fatal_xids(&[1000]).unwrap_err().1.contains("1 to 999"));
        assert_eq!(check_fatal_xids(&[79, 31, 79]).unwrap_err().0, 2);
    }
}

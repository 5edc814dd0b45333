//! The `/metrics` exposition: the latest snapshot and the live policy values rendered in the
//! Prometheus text format. Nothing here reads hardware; a scrape costs a walk over one snapshot.
//!
//! Snapshot series are built fresh on every scrape (like node_exporter's const metrics), so a
//! GPU that disappears, or a reading that becomes unavailable, simply has no series, rather than
//! lingering in a registry with its last value.

mod faults;
mod process;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge as GaugeMetric, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Constraints;
use crate::policy::health::HealthStatus;
use crate::snapshot::Snapshot;
use crate::units::GIB;

/// Version and revision for `vramguard_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision the binary was built from.
pub const REVISION: &str = env!("VRAMGUARD_REVISION");

/// Process metrics and other registered collectors, plus the snapshot renderer.
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    overruns: IntCounter,
    waits: HistogramVec,
    reload_ok: GaugeMetric,
    reload_at: GaugeMetric,
    /// The snapshot's own series, encoded once per sample: the snapshot they came from (held,
    /// so its address cannot be reused by a later one) and the text.
    snapshot_text: Mutex<Option<(Arc<Snapshot>, Arc<str>)>>,
    /// Bumped by every change of a series this struct owns (counters, the wait histogram, the
    /// reload gauges), after the change.
    changes: AtomicU64,
    /// The last exposition, served again while nothing in it can have changed.
    body: Mutex<Option<Body>>,
}

/// An exposition as sent, and what it was rendered from (held, so compared by pointer safely).
struct Body {
    bytes: Bytes,
    changes: u64,
    outside: u64,
    policy: Arc<PolicyText>,
    snapshot_text: Option<Arc<str>>,
    at: Instant,
}

/// How long a rendered exposition is served while nothing else changed: the process series in
/// it are read at most this often anyway ([`process`]).
const BODY_REUSE: Duration = process::REREAD;

/// What live leases and the estimates add to an exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseFigures {
    /// GiB still owed to live leases per GPU index (GPUs absent here owe nothing).
    pub outstanding: Vec<(u32, f64)>,
    /// The current estimate per workload profile: name, source (`model`|`observed`), GiB.
    pub estimates: Vec<(String, &'static str, f64)>,
    /// Generation requests waiting for room.
    pub waiting: usize,
    /// Per workload profile: how many more generations of its estimate would be admitted now
    /// (empty before the first sample).
    pub that_fit: Vec<(String, u32)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the process collector (CPU seconds, RSS, open fds of vramguard itself).
    pub fn new() -> Self {
        let registry = Registry::new();
        if let Some(pc) = process::ProcessCollector::for_self() {
            // Registration only fails on a duplicate, which cannot happen on a fresh registry.
            registry.register(Box::new(pc)).expect("fresh registry accepts the process collector");
        }
        let decisions = IntCounterVec::new(
            Opts::new(
                "vramguard_admission_decisions_total",
                "Admission decisions (resource-checks and lease requests) by result and the first refusal reason.",
            ),
            &["result", "reason"],
        )
        .expect("valid metric definition");
        registry.register(Box::new(decisions.clone())).expect("fresh registry accepts the decision counter");
        // Start the common series at 0 so rate() works from the first decision.
        decisions.with_label_values(&["admitted", "none"]);
        for reason in ["vram", "cpu", "ram", "concurrency", "no_gpu", "queue"] {
            decisions.with_label_values(&["refused", reason]);
        }
        let overruns = IntCounter::new(
            "vramguard_lease_overruns_total",
            "Generation leases whose processes used more VRAM than they reserved (each lease once).",
        )
        .expect("valid metric definition");
        registry.register(Box::new(overruns.clone())).expect("fresh registry accepts the overrun counter");
        let waits = HistogramVec::new(
            HistogramOpts::new(
                "vramguard_admission_wait_seconds",
                "Time from a generation request to its answer, by result: admitted, refused, timed_out (waited to its deadline), queue_full, failed (the store did not take the grant).",
            )
            .buckets(vec![0.005, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            &["result"],
        )
        .expect("valid metric definition");
        registry.register(Box::new(waits.clone())).expect("fresh registry accepts the wait histogram");
        // Named as Prometheus names its own, so the same alert rules work for both.
        let reload_ok = GaugeMetric::new(
            "vramguard_config_last_reload_successful",
            "Whether the last configuration reload (SIGHUP) succeeded; 1 at start.",
        )
        .expect("valid metric definition");
        let reload_at = GaugeMetric::new(
            "vramguard_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or SIGHUP).",
        )
        .expect("valid metric definition");
        registry.register(Box::new(reload_ok.clone())).expect("fresh registry accepts the reload gauge");
        registry.register(Box::new(reload_at.clone())).expect("fresh registry accepts the reload time");
        Self {
            registry,
            decisions,
            overruns,
            waits,
            reload_ok,
            reload_at,
            snapshot_text: Mutex::new(None),
            changes: AtomicU64::new(0),
            body: Mutex::new(None),
        }
    }

    /// Adds series kept elsewhere (the store's status) to every exposition.
    pub fn register(&self, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
        for c in collectors {
            // Only a duplicate name fails, and each owner registers once.
            self.registry.register(c).expect("a collector registered once");
        }
    }

    /// Records a configuration load: at start, or a SIGHUP reload that succeeded or failed.
    pub fn record_reload(&self, ok: bool, now_unix: f64) {
        self.reload_ok.set(if ok { 1.0 } else { 0.0 });
        if ok {
            self.reload_at.set(now_unix);
        }
        self.changed();
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Records how long a generation request took to be answered, and how it ended.
    pub fn record_wait(&self, result: &str, seconds: f64) {
        self.waits.with_label_values(&[result]).observe(seconds);
        self.changed();
    }

    /// Counts one lease that overran its reservation.
    pub fn record_overrun(&self) {
        self.overruns.inc();
        self.changed();
    }

    /// Counts one admission decision.
    pub fn record_decision(&self, admitted: bool, reason: &str) {
        self.count(&self.decision_counter(admitted, reason));
    }

    /// Counts one decision on a counter from [`Metrics::decision_counter`].
    pub fn count(&self, decision: &IntCounter) {
        decision.inc();
        self.changed();
    }

    /// A decision counter, to count answers under later without looking it up again.
    pub fn decision_counter(&self, admitted: bool, reason: &str) -> IntCounter {
        let result = if admitted { "admitted" } else { "refused" };
        self.decisions.with_label_values(&[result, reason])
    }

    /// Renders the whole exposition, encoding everything afresh.
    pub fn render(
        &self,
        snapshot: Option<&Snapshot>,
        constraints: &Constraints,
        health: Option<HealthStatus>,
        active_generations: u32,
        leases: &LeaseFigures,
    ) -> String {
        let policy = self.policy_text(snapshot, constraints, health, active_generations, leases);
        let text = snapshot.map(|s| encode(snapshot_families(s)));
        self.render_with(&policy, text.as_deref())
    }

    /// The whole exposition from the policy's part (see [`Metrics::policy_text`], kept by the
    /// caller while its inputs hold) and the snapshot's series, encoded once per sample. A
    /// scrape itself only gathers and encodes what changes between scrapes (counters, the wait
    /// histogram, process metrics, the store's gauges), and not even that when none of it
    /// changed since the last scrape within [`BODY_REUSE`]: then the same bytes go out again.
    /// `outside` stands for the registered series kept elsewhere (the store's write errors).
    pub fn render_cached(&self, snapshot: Option<&Arc<Snapshot>>, policy: &Arc<PolicyText>, outside: u64) -> Bytes {
        let changes = self.changes.load(Ordering::Acquire);
        let snapshot_text = snapshot.map(|s| self.snapshot_text(s));
        let mut body = self.body.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = body.as_ref()
            && b.changes == changes
            && b.outside == outside
            && Arc::ptr_eq(&b.policy, policy)
            && match (&b.snapshot_text, &snapshot_text) {
                (Some(a), Some(c)) => Arc::ptr_eq(a, c),
                (None, None) => true,
                _ => false,
            }
            && b.at.elapsed() < BODY_REUSE
        {
            return b.bytes.clone();
        }
        let bytes = Bytes::from(self.render_with(policy, snapshot_text.as_deref()));
        *body = Some(Body {
            bytes: bytes.clone(),
            changes,
            outside,
            policy: Arc::clone(policy),
            snapshot_text,
            at: Instant::now(),
        });
        bytes
    }

    fn snapshot_text(&self, s: &Arc<Snapshot>) -> Arc<str> {
        let mut cache = self.snapshot_text.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.as_ref() {
            Some((cached, text)) if Arc::ptr_eq(cached, s) => Arc::clone(text),
            _ => {
                let text: Arc<str> = Arc::from(encode(snapshot_families(s)));
                *cache = Some((Arc::clone(s), Arc::clone(&text)));
                text
            }
        }
    }

    /// The registry's families and the policy's, merged in name order, then `snapshot_text`
    /// (the snapshot's series, already encoded). Each block is sorted by name; no family is in
    /// two blocks, so each stays contiguous.
    fn render_with(&self, policy: &PolicyText, snapshot_text: Option<&str>) -> String {
        let gathered: Vec<(String, String)> =
            self.registry.gather().into_iter().filter_map(|f| Some((f.name().to_owned(), encode_one(f)?))).collect();
        let mut blocks: Vec<&(String, String)> = gathered.iter().chain(policy.0.iter()).collect();
        blocks.sort_by(|a, b| a.0.cmp(&b.0));
        let size = blocks.iter().map(|b| b.1.len()).sum::<usize>() + snapshot_text.map_or(0, str::len);
        let mut out = String::with_capacity(size);
        for (_, text) in blocks {
            out.push_str(text);
        }
        if let Some(text) = snapshot_text {
            out.push_str(text);
        }
        out
    }

    /// The policy's part of the exposition: estimates, outstanding VRAM, the queue, what
    /// fits, the live thresholds, active leases, health and the build. A function of the
    /// decision inputs only, so a caller keeps it while they hold.
    pub fn policy_text(
        &self,
        snapshot: Option<&Snapshot>,
        constraints: &Constraints,
        health: Option<HealthStatus>,
        active_generations: u32,
        leases: &LeaseFigures,
    ) -> PolicyText {
        let mut families = Vec::new();
        families.push(family(
            "vramguard_estimate_bytes",
            "VRAM one generation of the workload profile is estimated to need under the live settings.",
            leases
                .estimates
                .iter()
                .map(|(name, source, gb)| sample(&[("workload", name), ("source", source)], gb * GIB))
                .collect(),
        ));
        if let Some(s) = snapshot {
            let owed = s
                .gpus
                .iter()
                .filter(|g| g.memory.is_some())
                .map(|g| {
                    let gb =
                        leases.outstanding.iter().filter(|(i, _)| *i == g.index).fold(0.0, |acc, (_, gb)| acc + gb);
                    let index = g.index.to_string();
                    sample(&[("gpu", &index), ("uuid", &g.uuid)], (gb * GIB).round())
                })
                .collect();
            families.push(family(
                "vramguard_gpu_memory_outstanding_bytes",
                "VRAM live generation leases reserved and have not used yet, in bytes: it counts against the GPU.",
                owed,
            ));
        }
        families.push(family(
            "vramguard_admission_waiting",
            "Generation requests waiting in the admission queue for room.",
            vec![sample(&[], leases.waiting as f64)],
        ));
        families.push(family(
            "vramguard_generations_that_fit",
            "How many more generations of the workload's current estimate would be admitted now, placed greedily on the GPUs.",
            leases.that_fit.iter().map(|(name, n)| sample(&[("workload", name)], f64::from(*n))).collect(),
        ));
        families.extend(policy_families(constraints));
        families.push(family(
            "vramguard_active_generations",
            "Generation leases held now.",
            vec![sample(&[], f64::from(active_generations))],
        ));
        if let Some(status) = health {
            families.push(family(
                "vramguard_health_status",
                "Health status as a state set: 1 for the current status, 0 for the others.",
                HealthStatus::ALL
                    .iter()
                    .map(|s| sample(&[("status", s.as_str())], if *s == status { 1.0 } else { 0.0 }))
                    .collect(),
            ));
        }
        families.push(family(
            "vramguard_build_info",
            "A metric with a constant 1 labelled by vramguard's version and git revision.",
            vec![sample(&[("version", VERSION), ("revision", REVISION)], 1.0)],
        ));
        PolicyText(families.into_iter().filter_map(|f| Some((f.name().to_owned(), encode_one(f)?))).collect())
    }
}

/// The policy's part of an exposition, encoded: (family name, text) per family.
#[derive(Debug, Clone, Default)]
pub struct PolicyText(Vec<(String, String)>);

/// The text format of one family; `None` for one without samples.
fn encode_one(family: MetricFamily) -> Option<String> {
    if family.get_metric().is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(256);
    // Encoding into a Vec cannot fail for a well-formed family.
    TextEncoder::new().encode(std::slice::from_ref(&family), &mut out).expect("text encoding into memory");
    Some(String::from_utf8(out).expect("the text encoder writes UTF-8"))
}

/// The text format of `families` (empty ones dropped), sorted by name.
fn encode(mut families: Vec<MetricFamily>) -> String {
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::with_capacity(8 * 1024);
    // Encoding into a Vec cannot fail for well-formed families.
    TextEncoder::new().encode(&families, &mut out).expect("text encoding into memory");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn policy_families(c: &Constraints) -> Vec<MetricFamily> {
    vec![
        family(
            "vramguard_threshold_ratio",
            "Live resource constraint thresholds (fractions 0-1), so alert rules follow API changes.",
            vec![
                sample(&[("resource", "vram"), ("level", "warning")], c.vram_warning_threshold),
                sample(&[("resource", "vram"), ("level", "critical")], c.vram_critical_threshold),
                sample(&[("resource", "cpu"), ("level", "warning")], c.cpu_warning_threshold),
                sample(&[("resource", "ram"), ("level", "warning")], c.ram_warning_threshold),
            ],
        ),
        family(
            "vramguard_max_concurrent_generations",
            "Live limit on generation leases held at once.",
            vec![sample(&[], f64::from(c.max_concurrent_generations))],
        ),
    ]
}

/// Series derived from one snapshot. Unavailable readings produce no sample.
pub fn snapshot_families(s: &Snapshot) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    if let Some(h) = &s.host {
        out.push(family(
            "vramguard_cpu_usage_ratio",
            "Whole-machine CPU busy fraction over the last sample interval.",
            vec![sample(&[], h.cpu_usage_ratio)],
        ));
        out.push(family(
            "vramguard_memory_total_bytes",
            "RAM size in bytes.",
            vec![sample(&[], h.memory_total_bytes as f64)],
        ));
        out.push(family(
            "vramguard_memory_used_bytes",
            "RAM in use in bytes (total minus available).",
            vec![sample(&[], h.memory_used_bytes() as f64)],
        ));
        out.push(family(
            "vramguard_memory_available_bytes",
            "RAM available for new work in bytes.",
            vec![sample(&[], h.memory_available_bytes as f64)],
        ));
        if let Some(limit) = h.cgroup_memory_limit_bytes {
            out.push(family(
                "vramguard_cgroup_memory_limit_bytes",
                "Memory limit of vramguard's cgroup in bytes, when below host RAM.",
                vec![sample(&[], limit as f64)],
            ));
        }
    }

    out.push(family("vramguard_gpus", "Number of GPUs visible now.", vec![sample(&[], s.gpus.len() as f64)]));

    let driver = s.driver_version.as_deref().unwrap_or("");
    let mut info = Vec::new();
    let mut util = Vec::new();
    let (mut total, mut used, mut free) = (Vec::new(), Vec::new(), Vec::new());
    let (mut temp, mut power, mut procs) = (Vec::new(), Vec::new(), Vec::new());
    for g in &s.gpus {
        let index = g.index.to_string();
        let id: [(&str, &str); 2] = [("gpu", &index), ("uuid", &g.uuid)];
        info.push(sample(
            &[
                ("gpu", &index),
                ("uuid", &g.uuid),
                ("name", g.name.as_deref().unwrap_or("")),
                ("pci_bus_id", g.pci_bus_id.as_deref().unwrap_or("")),
                ("driver_version", driver),
            ],
            1.0,
        ));
        if let Some(v) = g.utilization_ratio {
            util.push(sample(&id, v));
        }
        if let Some(m) = g.memory {
            total.push(sample(&id, m.total_bytes as f64));
            used.push(sample(&id, m.used_bytes as f64));
            free.push(sample(&id, m.free_bytes as f64));
        }
        if let Some(v) = g.temperature_celsius {
            temp.push(sample(&id, v));
        }
        if let Some(v) = g.power_watts {
            power.push(sample(&id, v));
        }
        for p in g.processes.iter().flatten() {
            let pid = p.pid.to_string();
            procs.push(sample(
                &[("gpu", &index), ("uuid", &g.uuid), ("pid", &pid), ("process", p.name.as_deref().unwrap_or(""))],
                p.used_bytes as f64,
            ));
        }
    }
    out.push(family("vramguard_gpu_info", "GPU identity; the value is always 1.", info));
    out.push(family("vramguard_gpu_utilization_ratio", "GPU SM busy fraction.", util));
    out.push(family("vramguard_gpu_memory_total_bytes", "VRAM capacity in bytes.", total));
    out.push(family("vramguard_gpu_memory_used_bytes", "VRAM allocated in bytes.", used));
    out.push(family("vramguard_gpu_memory_free_bytes", "VRAM free in bytes.", free));
    out.push(family("vramguard_gpu_temperature_celsius", "GPU core temperature in degrees Celsius.", temp));
    out.push(family("vramguard_gpu_power_watts", "GPU board power draw in watts.", power));
    out.push(family("vramguard_gpu_process_memory_used_bytes", "VRAM held by a compute process in bytes.", procs));
    out.extend(faults::families(s));

    let mut success = Vec::new();
    let mut duration = Vec::new();
    for c in &s.collectors {
        success.push(sample(&[("collector", c.name)], if c.success { 1.0 } else { 0.0 }));
        duration.push(sample(&[("collector", c.name)], c.duration.as_secs_f64()));
    }
    out.push(family("vramguard_collector_success", "1 if the collector's last sample succeeded, else 0.", success));
    out.push(family("vramguard_collector_duration_seconds", "How long the collector's last sample took.", duration));
    out.push(family(
        "vramguard_last_sample_timestamp_seconds",
        "Unix time of the snapshot being served.",
        vec![sample(&[], s.timestamp_seconds())],
    ));
    out
}

/// One counter sample.
fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::from_label(sample(labels, 0.0).take_label());
    m.set_counter(c);
    m
}

/// A counter family.
fn counter_family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = family(name, help, metrics);
    f.set_field_type(MetricType::COUNTER);
    f
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(MetricType::GAUGE);
    f.set_metric(metrics);
    f
}

fn sample(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name((*k).to_owned());
                l.set_value((*v).to_owned());
                l
            })
            .collect(),
    );
    m.set_gauge(g);
    m
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::snapshot::{CollectorStatus, GpuMemory, GpuStats, HostStats};

    fn gpu(index: u32) -> GpuStats {
        GpuStats {
            index,
            uuid: format!("GPU-{index}"),
            name: Some("Test \"GPU\"".to_owned()),
            pci_bus_id: Some("00000000:01:00.0".to_owned()),
            utilization_ratio: Some(0.5),
            memory: Some(GpuMemory { total_bytes: 100, used_bytes: 40, free_bytes: 60 }),
            temperature_celsius: None,
            power_watts: Some(120.5),
            processes: None,
            faults: Default::default(),
            health: Default::default(),
        }
    }

    fn snapshot(gpus: Vec<GpuStats>) -> Snapshot {
        Snapshot {
            taken_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            host: Some(HostStats {
                cpu_usage_ratio: 0.25,
                memory_total_bytes: 1000,
                memory_available_bytes: 600,
                cgroup_memory_limit_bytes: None,
            }),
            gpus,
            driver_version: Some("550.1".to_owned()),
            collectors: vec![
                CollectorStatus { name: "host", success: true, duration: Duration::from_millis(2), error: None },
                CollectorStatus { name: "gpu", success: true, duration: Duration::from_millis(3), error: None },
            ],
        }
    }

    /// An unavailable reading has no series at all (never a 0), and label values are escaped.
    #[test]
    fn unavailable_readings_are_omitted() {
        let text = Metrics::new().render(
            Some(&snapshot(vec![gpu(0)])),
            &Constraints::default(),
            None,
            0,
            &LeaseFigures::default(),
        );
        assert!(!text.contains("vramguard_gpu_temperature_celsius"), "{text}");
        assert!(text.contains("vramguard_gpu_power_watts{gpu=\"0\",uuid=\"GPU-0\"} 120.5"), "{text}");
        assert!(text.contains("name=\"Test \\\"GPU\\\"\""), "{text}");
        assert!(text.contains("vramguard_memory_used_bytes 400"), "{text}");
        assert!(!text.contains("vramguard_cgroup_memory_limit_bytes"), "{text}");
    }

    /// The policy gauges carry the live constraint values.
    #[test]
    fn thresholds_follow_constraints() {
        let c = Constraints { vram_critical_threshold: 0.9, max_concurrent_generations: 3, ..Constraints::default() };
        let text = Metrics::new().render(None, &c, None, 0, &LeaseFigures::default());
        assert!(text.contains("vramguard_threshold_ratio{resource=\"vram\",level=\"critical\"} 0.9"), "{text}");
        assert!(text.contains("vramguard_max_concurrent_generations 3"), "{text}");
        assert!(!text.contains("vramguard_gpus"), "no snapshot yet: {text}");
    }

    /// A lost GPU takes its series with it and the GPU count drops.
    #[test]
    fn gpu_count_follows_snapshot() {
        let text = Metrics::new().render(
            Some(&snapshot(vec![gpu(0), gpu(1)])),
            &Constraints::default(),
            None,
            0,
            &LeaseFigures::default(),
        );
        assert!(text.contains("vramguard_gpus 2"));
        let text = Metrics::new().render(
            Some(&snapshot(vec![gpu(1)])),
            &Constraints::default(),
            None,
            0,
            &LeaseFigures::default(),
        );
        assert!(text.contains("vramguard_gpus 1"));
        assert!(!text.contains("gpu=\"0\""));
    }
}

//! The `/metrics` exposition: the latest snapshot and the live policy values rendered in the
//! Prometheus text format. Nothing here reads hardware; a scrape costs a walk over one snapshot.
//!
//! Snapshot series are built fresh on every scrape (like node_exporter's const metrics), so a
//! GPU that disappears, or a reading that becomes unavailable, simply has no series, rather than
//! lingering in a registry with its last value.

//!
//! - [`exposition`]: the whole text, reused while nothing in it changed.
//! - [`policy`]: the policy's part (estimates, outstanding VRAM, the queue, thresholds, health),
//!   kept by the caller while its inputs hold.
//! - [`snapshot`] (with `faults` and `telemetry`): the series of one snapshot, encoded once per
//!   sample.
//! - `family`: the builders every part uses.
//! - `process`: vramguard's own `process_*` series.

mod exposition;
mod family;
mod faults;
mod policy;
mod process;
mod snapshot;
mod telemetry;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{Gauge as GaugeMetric, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::leases::Outcome;
use crate::snapshot::Snapshot;
pub use policy::LeaseFigures;
pub(crate) use policy::PolicyText;

/// Version and revision for `vramguard_build_info`.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision the binary was built from.
pub(crate) const REVISION: &str = env!("VRAMGUARD_REVISION");

/// Process metrics and other registered collectors, plus the snapshot renderer.
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    /// The series of `decisions` every decision counts under (its other ones are looked up).
    decided: Vec<(bool, &'static str, IntCounter)>,
    overruns: IntCounter,
    finished: IntCounterVec,
    skipped: IntCounterVec,
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
    body: Mutex<Option<exposition::Body>>,
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
        let (decisions, decided) = decision_counters(&registry);
        let overruns = IntCounter::new(
            "vramguard_lease_overruns_total",
            "Generation leases whose processes used more VRAM than they reserved (each lease once).",
        )
        .expect("valid metric definition");
        registry.register(Box::new(overruns.clone())).expect("fresh registry accepts the overrun counter");
        let finished = counter_vec(
            &registry,
            "vramguard_generations_finished_total",
            "Generation leases ended, by how the job ended: ok, oom (out of memory), error, cancelled (as its release said) or expired (no release).",
            "outcome",
            &Outcome::ALL.map(Outcome::as_str),
        );
        let skipped = counter_vec(
            &registry,
            "vramguard_observations_skipped_total",
            "Lease ends that taught the estimates nothing, by reason: not_seen (its processes were never seen holding VRAM and the client sent no peak), implausible (the client's peak was not borne out by what vramguard saw or the model), error, cancelled, expired, gang (a generation on several GPUs: its per-rank figures come from the model).",
            "reason",
            &SKIP_REASONS,
        );
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
            decided,
            overruns,
            finished,
            skipped,
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

    /// Counts one generation's end: how it ended, and why it taught nothing if it did not.
    pub fn record_finished(&self, outcome: Outcome, skipped: Option<&str>) {
        self.finished.with_label_values(&[outcome.as_str()]).inc();
        if let Some(reason) = skipped {
            self.skipped.with_label_values(&[reason]).inc();
        }
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
        if let Some((_, _, counter)) = self.decided.iter().find(|(a, r, _)| *a == admitted && *r == reason) {
            return counter.clone();
        }
        let result = if admitted { "admitted" } else { "refused" };
        self.decisions.with_label_values(&[result, reason])
    }
}

/// `vramguard_admission_decisions_total`, registered, with the series every decision counts
/// under started at 0 (so `rate()` works from the first decision) and kept at hand, so that a
/// decision counts without a lookup by its labels.
fn decision_counters(registry: &Registry) -> (IntCounterVec, Vec<(bool, &'static str, IntCounter)>) {
    let decisions = IntCounterVec::new(
        Opts::new(
            "vramguard_admission_decisions_total",
            "Admission decisions (resource-checks and lease requests) by result and the first refusal reason.",
        ),
        &["result", "reason"],
    )
    .expect("valid metric definition");
    registry.register(Box::new(decisions.clone())).expect("fresh registry accepts the decision counter");
    let decided = std::iter::once((true, "none"))
        .chain(["vram", "cpu", "ram", "concurrency", "no_gpu", "queue"].map(|r| (false, r)))
        .map(|(admitted, reason)| {
            let result = if admitted { "admitted" } else { "refused" };
            (admitted, reason, decisions.with_label_values(&[result, reason]))
        })
        .collect();
    (decisions, decided)
}

/// Why a lease's end may teach nothing (the `reason` label of
/// `vramguard_observations_skipped_total`).
pub(crate) const SKIP_REASONS: [&str; 6] = ["not_seen", "implausible", "error", "cancelled", "expired", "gang"];

/// A registered counter family with one label, its `values` started at 0 so `rate()` and
/// `increase()` work from the first event.
fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let counters = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric definition");
    registry.register(Box::new(counters.clone())).expect("a fresh registry accepts each family once");
    for v in values {
        counters.with_label_values(&[v]);
    }
    counters
}

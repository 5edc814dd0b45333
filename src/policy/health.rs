//! The health report (SPEC §4.1): CPU and RAM at or above their warning thresholds, any GPU's
//! VRAM at or above warning or critical, GPU faults (an unhealthy GPU is an issue, critical once
//! no healthy GPU is left; a hardware slowdown is a warning), and failing collectors.

use super::admission::CheckRequest;
use super::verdict::{self, HostVerdict, VramLevel};
use super::{Context, gpu_health};
use crate::config::Constraints;
use crate::time::{rfc3339, rfc3339_unix};
use crate::units::round1;

/// Overall status, worst first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum HealthStatus {
    /// Nothing at or above a threshold.
    #[default]
    Healthy,
    /// Something at or above a warning threshold, a collector failing, an unhealthy GPU while
    /// a healthy one is left, or a GPU slowing itself down.
    Warning,
    /// A GPU at or above the critical VRAM threshold, or no healthy GPU left.
    Critical,
}

impl HealthStatus {
    /// Every status, for the state-set metric.
    pub const ALL: [HealthStatus; 3] = [HealthStatus::Healthy, HealthStatus::Warning, HealthStatus::Critical];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }
}

/// Details of the report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SystemInfo {
    /// CPU busy, percent; null when the host collector failed.
    pub cpu_percent: Option<f64>,
    /// RAM used, percent; null when the host collector failed.
    pub ram_percent: Option<f64>,
    /// The highest per-GPU VRAM use, percent (0 without a GPU).
    pub vram_percent: f64,
    /// Problems: high CPU or RAM, critical VRAM, unhealthy GPUs, failing collectors.
    pub issues: Vec<String>,
    /// VRAM above the warning level, lease overruns, GPUs slowing themselves down.
    pub warnings: Vec<String>,
    /// What would help, with numbers.
    pub recommendations: Vec<String>,
    /// The live constraints the report was judged against.
    pub resource_constraints: Constraints,
    /// Generation leases held now (where leases are tracked).
    pub active_generations: Option<u32>,
    /// Whether a generation slot is free (where leases are tracked). All slots taken is not a
    /// health problem, so it does not change the status.
    pub concurrency_available: Option<bool>,
}

/// The answer of `GET /api/v1/system/health`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Health {
    /// healthy, warning or critical.
    pub status: HealthStatus,
    /// One sentence.
    pub message: String,
    /// When the snapshot was taken (RFC 3339 UTC).
    pub timestamp: String,
    /// Details.
    pub system_info: SystemInfo,
}

/// What a report found so far: its status and its sentences, in the order they are found.
#[derive(Debug, Default)]
struct Findings {
    status: HealthStatus,
    issues: Vec<String>,
    warnings: Vec<String>,
    recommendations: Vec<String>,
}

impl Findings {
    fn at_least(&mut self, status: HealthStatus) {
        self.status = self.status.max(status);
    }

    fn issue(&mut self, status: HealthStatus, text: String) {
        self.issues.push(text);
        self.at_least(status);
    }

    fn warning(&mut self, text: String) {
        self.warnings.push(text);
        self.at_least(HealthStatus::Warning);
    }

    /// The seed's message texts, exactly.
    fn message(&self) -> String {
        if !self.issues.is_empty() {
            format!("Issues detected: {}", self.issues.join(", "))
        } else if !self.warnings.is_empty() {
            format!("Warnings: {}", self.warnings.join(", "))
        } else {
            "System is running normally".to_owned()
        }
    }

    fn into_report(self, ctx: &Context<'_>, timestamp: String, figures: [Option<f64>; 2], vram: f64) -> Health {
        Health {
            status: self.status,
            message: self.message(),
            timestamp,
            system_info: SystemInfo {
                cpu_percent: figures[0].map(|v| round1(v * 100.0)),
                ram_percent: figures[1].map(|v| round1(v * 100.0)),
                vram_percent: round1(vram * 100.0),
                issues: self.issues,
                warnings: self.warnings,
                recommendations: self.recommendations,
                resource_constraints: *ctx.constraints,
                active_generations: ctx.active_generations,
                concurrency_available: verdict::slot_free(ctx),
            },
        }
    }
}

/// Judges the latest snapshot against the live constraints.
pub(crate) fn health(ctx: &Context<'_>) -> Health {
    let mut found = Findings::default();
    let Some(snapshot) = ctx.snapshot else {
        found.issue(HealthStatus::Warning, "No resource sample yet".to_owned());
        store_issue(ctx, &mut found);
        // The report is about no sample at all: date it when it was made.
        return found.into_report(ctx, rfc3339_unix(ctx.now), [None, None], 0.0);
    };
    let cpu = verdict::cpu(ctx);
    let ram = verdict::ram(ctx);
    host_load(&mut found, "CPU", &cpu, "let running work finish before starting more");
    host_load(&mut found, "RAM", &ram, "free host memory; model offloading moves weights into RAM");
    let worst = vram(ctx, &mut found);
    gpu_faults(snapshot, &mut found);
    for o in ctx.overruns {
        found.warning(format!(
            "Generation lease {} uses {:.1} GB, more than the {:.1} GB it reserved",
            o.label, o.used_gb, o.reserved_gb
        ));
        found.recommendations.push(format!(
            "Lease {} overran its reservation: ask for at least {:.1} GB for this job, or lower its settings",
            o.label,
            (o.used_gb * 10.0).ceil() / 10.0
        ));
    }
    for col in snapshot.collectors.iter().filter(|c| !c.success) {
        let why = col.error.as_deref().unwrap_or("unknown error");
        found.issue(HealthStatus::Warning, format!("Collector {} failing: {why}", col.name));
    }
    store_issue(ctx, &mut found);
    found.into_report(ctx, rfc3339(snapshot.taken_at), [cpu.value, ram.value], worst)
}

/// CPU or RAM at or above its warning threshold: an issue, and what to do (`advice`).
fn host_load(found: &mut Findings, what: &str, v: &HostVerdict, advice: &str) {
    let Some(value) = v.value.filter(|_| v.over()) else { return };
    found.issue(HealthStatus::Warning, format!("High {what} usage"));
    found.recommendations.push(format!(
        "{what} is at {:.1}% (warning at {:.0}%): {advice}",
        value * 100.0,
        v.threshold * 100.0
    ));
}

/// The fullest GPU against the VRAM thresholds, with savings to recommend at a warning or
/// worse; returns its usage (0 without GPUs).
fn vram(ctx: &Context<'_>, found: &mut Findings) -> f64 {
    let c = ctx.constraints;
    let gpus = ctx.gpus();
    if gpus.is_empty() {
        if ctx.gpu_enabled {
            found.issue(
                HealthStatus::Warning,
                "No GPU visible: VRAM cannot be checked and admission refuses generations".to_owned(),
            );
        }
        return 0.0;
    }
    let worst = gpus.iter().map(|g| g.usage()).fold(0.0_f64, f64::max);
    let level = verdict::vram_level(worst, c);
    match level {
        VramLevel::Critical => {
            found.issue(HealthStatus::Critical, "Critical VRAM usage - generation may fail".to_owned())
        }
        VramLevel::Warning => found.warning("High VRAM usage - consider optimization".to_owned()),
        VramLevel::Normal => {}
    }
    if level >= VramLevel::Warning {
        let est = ctx.estimate(false, None);
        let job = CheckRequest::default().job(ctx);
        let savings = super::search::search_scaled(
            ctx.workload,
            &job,
            false,
            est.gb,
            &gpus,
            c.vram_critical_threshold,
            est.scale,
        );
        found.recommendations.extend(savings.into_iter().map(|r| r.text));
    }
    worst
}

/// A store that does not take writes is critical: no lease can be granted or renewed, and no
/// setting changed, until it does.
fn store_issue(ctx: &Context<'_>, found: &mut Findings) {
    let Some(problem) = ctx.store_problem else { return };
    found.issue(HealthStatus::Critical, format!("State store failing: {problem}"));
    found.recommendations.push(
        "Writes answer 503 and releases are kept in memory until the store takes writes again: free disk space \
         or make the state directory writable; a deleted database needs a restart (restore it, or --reset-state)"
            .to_owned(),
    );
}

/// Each unhealthy GPU is an issue with what to do about it: critical when no healthy GPU is
/// left to place work on, a warning otherwise. A hardware slowdown is a warning.
fn gpu_faults(snapshot: &crate::snapshot::Snapshot, found: &mut Findings) {
    let sick: Vec<_> = snapshot.gpus.iter().filter(|g| !g.health.healthy).collect();
    for g in &sick {
        found.issues.push(gpu_health::describe(g.index, &g.health));
        found.recommendations.extend(gpu_health::recommendation(g.index, &g.health));
    }
    if !sick.is_empty() {
        let none_left = sick.len() == snapshot.gpus.len();
        found.at_least(if none_left { HealthStatus::Critical } else { HealthStatus::Warning });
    }
    for g in snapshot.gpus.iter().filter(|g| !g.health.warnings.is_empty()) {
        for w in &g.health.warnings {
            found.warning(format!("GPU {} {w}", g.index));
        }
        found.recommendations.push(format!(
            "GPU {} runs below its clocks to protect itself: check its cooling, airflow and power delivery",
            g.index
        ));
        found.at_least(HealthStatus::Warning);
    }
}

//! The health report (SPEC §4.1): CPU and RAM at or above their warning thresholds, any GPU's
//! VRAM at or above warning or critical, GPU faults (an unhealthy GPU is an issue, critical once
//! no healthy GPU is left; a hardware slowdown is a warning), and failing collectors.

use serde::Serialize;
use utoipa::ToSchema;

use super::verdict::{self, VramLevel};
use super::{Context, estimate, gpu_health};
use crate::config::Constraints;
use crate::time::{rfc3339, rfc3339_unix};
use crate::units::round1;

/// Overall status, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Nothing at or above a threshold.
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
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SystemInfo {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_generations: Option<u32>,
    /// Whether a generation slot is free (where leases are tracked). All slots taken is not a
    /// health problem, so it does not change the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_available: Option<bool>,
}

/// The answer of `GET /api/v1/system/health`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Health {
    /// healthy, warning or critical.
    pub status: HealthStatus,
    /// One sentence.
    pub message: String,
    /// When the snapshot was taken (RFC 3339 UTC).
    pub timestamp: String,
    /// Details.
    pub system_info: SystemInfo,
}

/// Judges the latest snapshot against the live constraints.
pub fn health(ctx: &Context<'_>) -> Health {
    let c = ctx.constraints;
    let mut status = HealthStatus::Healthy;
    let mut issues = Vec::new();
    let mut warnings = Vec::new();
    let mut recommendations = Vec::new();
    let Some(snapshot) = ctx.snapshot else {
        issues.push("No resource sample yet".to_owned());
        status = HealthStatus::Warning;
        store_issue(ctx, &mut issues, &mut recommendations, &mut status);
        return Health {
            status,
            message: format!("Issues detected: {}", issues.join(", ")),
            // The report is about no sample at all: date it when it was made.
            timestamp: rfc3339_unix(ctx.now),
            system_info: SystemInfo {
                cpu_percent: None,
                ram_percent: None,
                vram_percent: 0.0,
                issues,
                warnings,
                recommendations,
                resource_constraints: *c,
                active_generations: ctx.active_generations,
                concurrency_available: verdict::slot_free(ctx),
            },
        };
    };

    let cpu = verdict::cpu(ctx);
    let ram = verdict::ram(ctx);
    if let Some(v) = cpu.value
        && cpu.over()
    {
        issues.push("High CPU usage".to_owned());
        recommendations.push(format!(
            "CPU is at {:.1}% (warning at {:.0}%): let running work finish before starting more",
            v * 100.0,
            c.cpu_warning_threshold * 100.0
        ));
        status = status.max(HealthStatus::Warning);
    }
    if let Some(v) = ram.value
        && ram.over()
    {
        issues.push("High RAM usage".to_owned());
        recommendations.push(format!(
            "RAM is at {:.1}% (warning at {:.0}%): free host memory; model offloading moves weights into RAM",
            v * 100.0,
            c.ram_warning_threshold * 100.0
        ));
        status = status.max(HealthStatus::Warning);
    }

    let gpus = ctx.gpus();
    let worst = gpus.iter().map(|g| g.usage()).fold(0.0_f64, f64::max);
    if !gpus.is_empty() {
        let level = verdict::vram_level(worst, c);
        match level {
            VramLevel::Critical => {
                issues.push("Critical VRAM usage - generation may fail".to_owned());
                status = status.max(HealthStatus::Critical);
            }
            VramLevel::Warning => {
                warnings.push("High VRAM usage - consider optimization".to_owned());
                status = status.max(HealthStatus::Warning);
            }
            VramLevel::Normal => {}
        }
        if level >= VramLevel::Warning {
            let est = ctx.estimate(false);
            let found = estimate::search_scaled(
                ctx.workload,
                ctx.settings,
                false,
                est.gb,
                &gpus,
                c.vram_critical_threshold,
                est.scale,
            );
            recommendations.extend(found.into_iter().map(|r| r.text));
        }
    } else if ctx.gpu_enabled {
        issues.push("No GPU visible: VRAM cannot be checked and admission refuses generations".to_owned());
        status = status.max(HealthStatus::Warning);
    }
    gpu_faults(snapshot, &mut issues, &mut warnings, &mut recommendations, &mut status);
    for o in ctx.overruns {
        warnings.push(format!(
            "Generation lease {} uses {:.1} GB, more than the {:.1} GB it reserved",
            o.label, o.used_gb, o.reserved_gb
        ));
        recommendations.push(format!(
            "Lease {} overran its reservation: ask for at least {:.1} GB for this job, or lower its settings",
            o.label,
            (o.used_gb * 10.0).ceil() / 10.0
        ));
        status = status.max(HealthStatus::Warning);
    }
    for col in snapshot.collectors.iter().filter(|c| !c.success) {
        let why = col.error.as_deref().unwrap_or("unknown error");
        issues.push(format!("Collector {} failing: {why}", col.name));
        status = status.max(HealthStatus::Warning);
    }
    store_issue(ctx, &mut issues, &mut recommendations, &mut status);

    // The seed's texts, exactly.
    let message = if !issues.is_empty() {
        format!("Issues detected: {}", issues.join(", "))
    } else if !warnings.is_empty() {
        format!("Warnings: {}", warnings.join(", "))
    } else {
        "System is running normally".to_owned()
    };
    Health {
        status,
        message,
        timestamp: rfc3339(snapshot.taken_at),
        system_info: SystemInfo {
            cpu_percent: cpu.value.map(|v| round1(v * 100.0)),
            ram_percent: ram.value.map(|v| round1(v * 100.0)),
            vram_percent: round1(worst * 100.0),
            issues,
            warnings,
            recommendations,
            resource_constraints: *c,
            active_generations: ctx.active_generations,
            concurrency_available: verdict::slot_free(ctx),
        },
    }
}

/// A store that does not take writes is critical: no lease can be granted or renewed, and no
/// setting changed, until it does.
fn store_issue(
    ctx: &Context<'_>,
    issues: &mut Vec<String>,
    recommendations: &mut Vec<String>,
    status: &mut HealthStatus,
) {
    let Some(problem) = ctx.store_problem else { return };
    issues.push(format!("State store failing: {problem}"));
    recommendations.push(
        "Writes answer 503 and releases are kept in memory until the store takes writes again: free disk space \
         or make the state directory writable; a deleted database needs a restart (restore it, or --reset-state)"
            .to_owned(),
    );
    *status = (*status).max(HealthStatus::Critical);
}

/// Each unhealthy GPU is an issue with what to do about it: critical when no healthy GPU is
/// left to place work on, a warning otherwise. A hardware slowdown is a warning.
fn gpu_faults(
    snapshot: &crate::snapshot::Snapshot,
    issues: &mut Vec<String>,
    warnings: &mut Vec<String>,
    recommendations: &mut Vec<String>,
    status: &mut HealthStatus,
) {
    let sick: Vec<_> = snapshot.gpus.iter().filter(|g| !g.health.healthy).collect();
    for g in &sick {
        issues.push(gpu_health::describe(g.index, &g.health));
        recommendations.extend(gpu_health::recommendation(g.index, &g.health));
    }
    if !sick.is_empty() {
        let none_left = sick.len() == snapshot.gpus.len();
        *status = (*status).max(if none_left { HealthStatus::Critical } else { HealthStatus::Warning });
    }
    for g in snapshot.gpus.iter().filter(|g| !g.health.warnings.is_empty()) {
        for w in &g.health.warnings {
            warnings.push(format!("GPU {} {w}", g.index));
        }
        recommendations.push(format!(
            "GPU {} runs below its clocks to protect itself: check its cooling, airflow and power delivery",
            g.index
        ));
        *status = (*status).max(HealthStatus::Warning);
    }
}

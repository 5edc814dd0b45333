//! The admission decision (SPEC §4.2): may a generation start now, on which GPU, and if not,
//! what blocks it and what would help.
//!
//! For each GPU, `projected = (used + reserved + required) / total`; a GPU fits when
//! `projected < vram_critical_threshold`, and the job must also be within `max_vram_usage_gb`.
//! Among fitting GPUs the one with the most free VRAM is chosen. CPU and RAM must be under their
//! warning thresholds, and (where leases are tracked) a slot must be free. With no GPU visible
//! VRAM is unavailable — fail closed — unless `gpu.enabled: false` says the host has none on
//! purpose. A GPU with a fault ([`super::gpu_health`]) takes no new work: it is never a
//! candidate, and when no healthy GPU is left (or the pinned one is unhealthy) the refusal says
//! which GPU and why.

use std::borrow::Cow;

use super::gang::{self, Pins, RankPlace};
use super::phases::{self, SizeAsk};
use super::verdict::{self, HostVerdict, VramLevel, at_or_above, fits_under};
use super::{Context, GpuView, best_gpu, gpu_health, search, top_holders};
use crate::config::{Optimization, Quantization};
use crate::units::{dec0, dec1, gib, round1, round2};

/// What the client asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CheckRequest {
    /// The job's own VRAM figure, GiB; `None` uses the workload estimate.
    pub vram_required_gb: Option<f64>,
    /// The worker already holds its model, so the weights need no new VRAM.
    pub model_loaded: bool,
    /// Only this GPU may be used.
    pub gpu: Option<u32>,
    /// The video's size; what is left out is the profile's.
    pub size: SizeAsk,
    /// GPUs the one job is sharded over (0 or 1: one GPU); see [`super::gang`].
    pub gpus: u32,
    /// The GPUs a gang must use, rank 0 first.
    pub pins: Option<Pins>,
}

impl CheckRequest {
    /// The job this request asks about under the live settings.
    pub(crate) fn job(&self, ctx: &Context<'_>) -> search::Job {
        search::Job { settings: *ctx.settings, geometry: self.size.resolve(ctx.workload), sized: self.size.given() }
    }
}

/// vramguard's estimate for the job a decision was about.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEstimate {
    /// The profile's name.
    pub workload: String,
    /// The video's size.
    pub geometry: phases::Geometry,
    /// The estimate, GiB (model or observed, as `estimate_source` says).
    pub gb: f64,
}

/// Why a decision refused, for `vramguard_admission_decisions_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not enough VRAM, or over the VRAM budget.
    Vram,
    /// CPU at or above its threshold (or unknown).
    Cpu,
    /// RAM at or above its threshold (or unknown).
    Ram,
    /// Every generation slot is taken.
    Concurrency,
    /// No GPU visible while `gpu.enabled` is true, or none of them healthy.
    NoGpu,
    /// Other requests wait ahead and may not be overtaken.
    Queue,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Vram => "vram",
            Reason::Cpu => "cpu",
            Reason::Ram => "ram",
            Reason::Concurrency => "concurrency",
            Reason::NoGpu => "no_gpu",
            Reason::Queue => "queue",
        }
    }
}

/// Which resources allow the job.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStatus {
    /// Some GPU fits the job within the budget.
    pub vram_available: bool,
    /// CPU under its warning threshold.
    pub cpu_available: bool,
    /// RAM under its warning threshold.
    pub ram_available: bool,
    /// A generation slot is free (reported where leases are tracked).
    pub concurrency_available: Option<bool>,
}

/// Usage the decision saw.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentUsage {
    /// VRAM use of the GPU in `gpu` (the chosen one, or the best candidate), percent.
    pub vram_percent: f64,
    /// CPU busy, percent; null when the host collector failed.
    pub cpu_percent: Option<f64>,
    /// RAM used, percent; null when the host collector failed.
    pub ram_percent: Option<f64>,
    /// Generation leases held now (reported where leases are tracked).
    pub active_generations: Option<u32>,
}

/// The GPU a job goes to, or the best candidate when none fits.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenGpu {
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
    /// Free VRAM after reservations, GiB.
    pub free_gb: f64,
    /// VRAM use if the job starts there, percent.
    pub projected_percent: f64,
}

/// The answer of `GET /api/v1/system/resource-check` (and the heart of a lease decision).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceCheck {
    /// All resources allow the job.
    pub can_start_generation: bool,
    /// Per-resource verdicts.
    pub resource_status: ResourceStatus,
    /// The usage the verdicts rest on.
    pub current_usage: CurrentUsage,
    /// Why it cannot start; empty when it can.
    pub blocking_issues: Vec<String>,
    /// One sentence.
    pub message: Cow<'static, str>,
    /// Setting changes with their savings and costs, or what to wait for.
    pub recommendations: Vec<String>,
    /// Chosen GPU, or the best candidate; null without a GPU.
    pub gpu: Option<ChosenGpu>,
    /// The VRAM the decision assumed, GiB (rounded for display).
    pub vram_required_gb: f64,
    /// Where vramguard's estimate for this workload and these settings comes from: `model` or
    /// `observed` (peaks of finished generations).
    pub estimate_source: &'static str,
    /// Observations behind the estimate (0 for the model).
    pub estimate_samples: usize,
    /// The job the estimate is of: its profile and video size, and the estimate, GiB.
    pub estimate: JobEstimate,
    /// The same, unrounded: what a lease reserves (per GPU; rank 0's for a gang).
    pub required_gb: f64,
    /// Where each rank of a gang goes, rank 0 first, when it fits; empty for one GPU.
    pub ranks: Vec<RankPlace>,
    /// For a gang that does not fit yet: the GPUs that would take one of its ranks now.
    pub gang_fitting: Vec<u32>,
    /// Why it refused, first reason first (feeds the decision counter).
    pub reasons: Vec<Reason>,
    /// The refusal cannot clear by waiting (no GPU, an unknown pinned GPU, a job larger than
    /// every GPU or than `max_vram_usage_gb`): a waiting request is refused at once.
    pub lasting: bool,
}

impl ResourceCheck {
    /// The reason label for the decision counter: `none` when admitted.
    pub fn primary_reason(&self) -> &'static str {
        self.reasons.first().map_or("none", |r| r.as_str())
    }

    /// Refused, but only for reasons that can clear (VRAM, a slot, CPU, RAM): worth waiting.
    pub fn may_clear(&self) -> bool {
        !self.can_start_generation && !self.lasting
    }

    /// Refuses a decision that would have admitted, for `text`, keeping what it saw.
    pub fn refuse(&mut self, reason: Reason, text: String) {
        self.can_start_generation = false;
        self.blocking_issues.insert(0, text);
        self.reasons.insert(0, reason);
        self.message = format!("Cannot start generation: {}", self.blocking_issues.join(", ")).into();
    }
}

/// What the checks found, in the order the client reads it.
#[derive(Default)]
pub(super) struct Findings {
    pub(super) blocking: Vec<String>,
    pub(super) recommendations: Vec<String>,
    pub(super) reasons: Vec<Reason>,
    pub(super) lasting: bool,
}

impl Findings {
    pub(super) fn block(&mut self, reason: Reason, text: String) {
        self.blocking.push(text);
        self.reasons.push(reason);
    }
}

/// Decides whether a generation can start now.
pub fn resource_check(ctx: &Context<'_>, req: &CheckRequest) -> ResourceCheck {
    let est = ctx.estimate(req.model_loaded, Some(req.size.resolve(ctx.workload)));
    let mut f = Findings::default();
    // A gang's figures come from the model's per-rank estimate (no learned estimate is per rank).
    let (required, estimate_gb, estimate_source, estimate_samples, vram_available, chosen, ranks, gang_fitting) =
        if req.gpus > 1 {
            let g = gang::check_vram(ctx, req, &mut f);
            (g.required, g.estimate_gb, "model", 0, g.ok, g.chosen, g.ranks, g.fitting)
        } else {
            let required = req.vram_required_gb.unwrap_or(est.gb);
            let (ok, chosen) = check_vram(ctx, req, required, est.scale, &mut f);
            (required, est.gb, est.source.as_str(), est.samples, ok, chosen, Vec::new(), Vec::new())
        };
    let cpu = verdict::cpu(ctx);
    let ram = verdict::ram(ctx);
    let cpu_available = check_cpu(ctx, &cpu, &mut f);
    // Offloading's own need is judged once RAM is under its threshold (one RAM refusal at a time).
    let ram_available = check_ram(ctx, &ram, &mut f) && check_offload_ram(ctx, req, &mut f);
    let concurrency_available = check_slots(ctx, &mut f);

    let can_start = vram_available && cpu_available && ram_available && concurrency_available.unwrap_or(true);
    // The seed's texts, exactly; which GPU is in `gpu`.
    let message = if can_start {
        Cow::Borrowed("Resources available for generation")
    } else {
        Cow::Owned(format!("Cannot start generation: {}", f.blocking.join(", ")))
    };
    ResourceCheck {
        can_start_generation: can_start,
        resource_status: ResourceStatus { vram_available, cpu_available, ram_available, concurrency_available },
        current_usage: CurrentUsage {
            vram_percent: chosen.as_ref().map_or(0.0, |g| round1(g.usage() * 100.0)),
            cpu_percent: cpu.value.map(|v| round1(v * 100.0)),
            ram_percent: ram.value.map(|v| round1(v * 100.0)),
            active_generations: ctx.active_generations,
        },
        blocking_issues: f.blocking,
        message,
        recommendations: f.recommendations,
        gpu: chosen.map(|g| ChosenGpu {
            index: g.index,
            uuid: g.uuid.to_owned(),
            free_gb: round2(g.free_gb()),
            projected_percent: round1(g.projected(required) * 100.0),
        }),
        vram_required_gb: round2(required),
        estimate_source,
        estimate_samples,
        estimate: JobEstimate {
            workload: ctx.workload_name.to_owned(),
            geometry: req.size.resolve(ctx.workload),
            gb: estimate_gb,
        },
        required_gb: required,
        ranks,
        gang_fitting,
        reasons: f.reasons,
        lasting: f.lasting,
    }
}

/// VRAM: some candidate GPU stays under critical with the job, and the job is within budget.
/// Returns the verdict and the chosen GPU (or the best candidate when none fits).
fn check_vram<'a>(
    ctx: &Context<'a>,
    req: &CheckRequest,
    required: f64,
    scale: f64,
    f: &mut Findings,
) -> (bool, Option<GpuView<'a>>) {
    let c = ctx.constraints;
    // The one place unhealthy GPUs leave placement: nothing below sees them as candidates.
    let unhealthy: Vec<(u32, String)> = gpu_health::out_of_placement(ctx.snapshot)
        .into_iter()
        .filter(|(i, _)| req.gpu.is_none_or(|pin| pin == *i))
        .collect();
    let mut candidates = ctx.gpus();
    candidates.retain(|g| req.gpu.is_none_or(|pin| pin == g.index) && !unhealthy.iter().any(|(i, _)| *i == g.index));
    let fits = |g: &&GpuView<'_>| fits_under(g.projected(required), c.vram_critical_threshold);
    let best_fitting = best_gpu(candidates.iter().filter(fits)).copied();
    let any_fits = best_fitting.is_some();
    let chosen = best_fitting.or_else(|| best_gpu(&candidates).copied());
    if ctx.snapshot.is_none() {
        f.block(Reason::NoGpu, "No resource sample yet; vramguard is starting".to_owned());
        return (false, chosen);
    }
    if candidates.is_empty() {
        return (no_candidate(ctx, req, &ctx.gpus(), unhealthy, f), chosen);
    }
    let within_budget = required <= ctx.settings.max_vram_usage_gb;
    // Not even an empty candidate GPU would take it: no release can make room.
    let larger_than_every_gpu =
        !candidates.iter().any(|g| fits_under(required / g.total_gb, c.vram_critical_threshold));
    f.lasting = !within_budget || larger_than_every_gpu;
    if !any_fits {
        let g = chosen.as_ref().expect("candidates is not empty");
        f.blocking.push(too_full(g, required, c));
        // Say why the other GPUs were not tried.
        f.blocking.extend(unhealthy.into_iter().map(|(_, text)| text));
    }
    if !within_budget {
        f.blocking.push(format!(
            "Generation needs {} GB, more than max_vram_usage_gb {}",
            dec1(required),
            dec1(ctx.settings.max_vram_usage_gb)
        ));
        if any_fits {
            f.recommendations.push(format!(
                "Raise max_vram_usage_gb to {} or more: the GPU has room (projected VRAM {}%)",
                dec1((required * 10.0).ceil() / 10.0),
                dec0(chosen.as_ref().map_or(0.0, |g| g.projected(required) * 100.0))
            ));
        }
    }
    let ok = any_fits && within_budget;
    if !ok {
        f.reasons.push(Reason::Vram);
    }
    let warns = chosen.as_ref().is_some_and(|g| at_or_above(g.projected(required), c.vram_warning_threshold));
    if !ok || warns {
        recommend_changes(ctx, req, required, scale, &candidates, ok, f);
    }
    (ok, chosen)
}

/// No GPU may take the job: none enabled on purpose (fine), only unhealthy ones, or none
/// visible (lasting). Returns whether VRAM allows the job.
fn no_candidate(
    ctx: &Context<'_>,
    req: &CheckRequest,
    all: &[GpuView<'_>],
    unhealthy: Vec<(u32, String)>,
    f: &mut Findings,
) -> bool {
    if !(ctx.gpu_enabled || req.gpu.is_some()) {
        // gpu.enabled: false — this host runs generations without a GPU on purpose.
        return true;
    }
    if !unhealthy.is_empty() {
        f.blocking.extend(unhealthy.into_iter().map(|(_, text)| text));
        f.reasons.push(Reason::NoGpu);
        return false;
    }
    let visible: Vec<String> = all.iter().map(|g| g.index.to_string()).collect();
    let text = match req.gpu {
        Some(pin) if !all.is_empty() => format!("GPU {pin} is not visible (visible: {})", visible.join(", ")),
        _ => "No GPU visible: NVML reports no usable GPU, so VRAM cannot be checked".to_owned(),
    };
    f.block(Reason::NoGpu, text);
    f.lasting = true;
    false
}

/// Why the best candidate `g` cannot take a job of `required` GiB.
fn too_full(g: &GpuView<'_>, required: f64, c: &crate::config::Constraints) -> String {
    if verdict::vram_level(g.usage(), c) == VramLevel::Critical {
        format!("VRAM usage too high ({}%)", dec1(g.usage() * 100.0))
    } else if g.reserved_gb > 0.005 {
        format!(
            "Not enough free VRAM for this generation (needs {} GB; GPU {} has {} GB free, {} GB of it promised to running generations)",
            dec1(required),
            g.index,
            dec1(g.total_gb - g.used_gb),
            dec1(g.reserved_gb)
        )
    } else {
        format!(
            "Not enough free VRAM for this generation (needs {} GB; GPU {} has {} GB below the {}% limit)",
            dec1(required),
            g.index,
            dec1(g.headroom_gb(c.vram_critical_threshold)),
            dec0(c.vram_critical_threshold * 100.0)
        )
    }
}

/// Setting changes that would make the job fit (or leave more room), and, when none would and
/// an emptier GPU would, the processes holding the VRAM.
fn recommend_changes(
    ctx: &Context<'_>,
    req: &CheckRequest,
    required: f64,
    scale: f64,
    candidates: &[GpuView<'_>],
    ok: bool,
    f: &mut Findings,
) {
    let critical = ctx.constraints.vram_critical_threshold;
    let found =
        search::search_scaled(ctx.workload, &req.job(ctx), req.model_loaded, required, candidates, critical, scale);
    let any_fits = found.iter().any(|r| r.fits);
    f.recommendations.extend(found.into_iter().map(|r| r.text));
    // Naming the processes that hold VRAM only helps if the job fits an emptier GPU.
    let freeing_helps = candidates.iter().any(|g| fits_under((g.reserved_gb + required) / g.total_gb, critical));
    if !ok
        && !any_fits
        && freeing_helps
        && let Some(holders) = ctx.snapshot.and_then(|s| top_holders(s, 3))
    {
        f.recommendations.push(holders);
    }
}

fn check_cpu(ctx: &Context<'_>, cpu: &HostVerdict, f: &mut Findings) -> bool {
    if cpu.allows() {
        return true;
    }
    match cpu.value {
        Some(v) => {
            f.block(Reason::Cpu, format!("CPU usage too high ({}%)", dec1(v * 100.0)));
            f.recommendations.push(format!(
                "CPU is at {}% (limit {}%): wait for CPU-heavy work to finish before starting",
                dec1(v * 100.0),
                dec0(cpu.threshold * 100.0)
            ));
        }
        None if ctx.snapshot.is_some() => {
            f.block(Reason::Cpu, "CPU usage unknown: the host collector failed".to_owned());
        }
        None => {}
    }
    false
}

fn check_ram(ctx: &Context<'_>, ram: &HostVerdict, f: &mut Findings) -> bool {
    if ram.allows() {
        return true;
    }
    let host = ctx.snapshot.and_then(|s| s.host.as_ref());
    match (ram.value, host) {
        (Some(v), Some(h)) => {
            f.block(Reason::Ram, format!("RAM usage too high ({}%)", dec1(v * 100.0)));
            f.recommendations.push(format!(
                "RAM is at {}% (limit {}%, {} GB available): free host memory before starting",
                dec1(v * 100.0),
                dec0(ram.threshold * 100.0),
                dec1(gib(h.memory_available_bytes))
            ));
        }
        _ if ctx.snapshot.is_some() => {
            f.block(Reason::Ram, "RAM usage unknown: the host collector failed".to_owned());
        }
        _ => {}
    }
    false
}

/// Host RAM for what offloading moves off the GPU (every weight but the VAE, while another
/// phase runs): it must fit in available RAM, or the cgroup's limit where lower. A worker that
/// holds its model already holds that RAM.
fn check_offload_ram(ctx: &Context<'_>, req: &CheckRequest, f: &mut Findings) -> bool {
    let Some(host) = ctx.snapshot.and_then(|s| s.host.as_ref()) else { return true };
    // A sharded gang does not offload; a replicated one offloads a copy per rank.
    let sharded = req.gpus > 1 && ctx.workload.multi_gpu.shard;
    if req.model_loaded || !ctx.settings.enable_offload || sharded {
        return true;
    }
    let copies = f64::from(req.gpus.max(1));
    let need = phases::host_ram_gb(ctx.workload, ctx.settings) * copies;
    let available = gib(host.memory_available_bytes.min(host.cgroup_memory_limit_bytes.unwrap_or(u64::MAX)));
    if need <= available {
        return true;
    }
    f.block(Reason::Ram, format!("Offloading needs ~{} GB of host RAM; {} GB available", dec1(need), dec1(available)));
    if ctx.settings.quantization != Quantization::Int8 {
        let int8 = Optimization { quantization: Quantization::Int8, ..*ctx.settings };
        let smaller = phases::host_ram_gb(ctx.workload, &int8) * copies;
        let verdict = if smaller <= available { "fits" } else { "does not fit" };
        f.recommendations.push(format!(
            "Switch to int8 quantization: offloading then needs ~{} GB of host RAM ({verdict})",
            dec1(smaller)
        ));
    }
    let resident = Optimization { enable_offload: false, ..*ctx.settings };
    let vram = phases::need_gb(ctx.workload, &resident, false, req.size.resolve(ctx.workload));
    f.recommendations.push(format!(
        "Disable model offloading on a GPU that can hold every weight: the job then needs ~{} GB of VRAM and no host RAM for weights",
        dec1(vram)
    ));
    false
}

/// Concurrency, where leases are tracked.
fn check_slots(ctx: &Context<'_>, f: &mut Findings) -> Option<bool> {
    let free = verdict::slot_free(ctx)?;
    if !free {
        let (active, max) = (ctx.active_generations.unwrap_or(0), ctx.constraints.max_concurrent_generations);
        f.block(Reason::Concurrency, format!("Concurrent generation limit reached ({active}/{max})"));
        f.recommendations.push(format!(
            "{active} of {max} generation slots are in use: wait for one to finish or raise max_concurrent_generations"
        ));
    }
    Some(free)
}

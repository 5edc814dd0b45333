//! The JSON shapes of the service's own types: each struct here is what its namesake in
//! `config`, `policy` or `history` looks like on the wire, with its OpenAPI schema (the component
//! takes the struct's name, so the document names the same types as before). The pure layers
//! know nothing of the API: changing a body means changing it here, and a `From` says how.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{config, history, policy};

/// Resource constraints: thresholds are fractions 0.1–1.0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
// As config.yaml reads them: the schema shows the defaults and refuses unknown keys.
#[serde(deny_unknown_fields, default)]
pub(crate) struct Constraints {
    /// Generation leases allowed at once (1–10).
    pub max_concurrent_generations: u32,
    /// VRAM fraction at or above which health warns.
    pub vram_warning_threshold: f64,
    /// VRAM fraction at or above which health is critical and admission refuses.
    pub vram_critical_threshold: f64,
    /// CPU busy fraction at or above which health warns and admission refuses.
    pub cpu_warning_threshold: f64,
    /// RAM fraction at or above which health warns and admission refuses.
    pub ram_warning_threshold: f64,
}

impl Default for Constraints {
    fn default() -> Self {
        config::Constraints::default().into()
    }
}

impl From<config::Constraints> for Constraints {
    fn from(c: config::Constraints) -> Self {
        Self {
            max_concurrent_generations: c.max_concurrent_generations,
            vram_warning_threshold: c.vram_warning_threshold,
            vram_critical_threshold: c.vram_critical_threshold,
            cpu_warning_threshold: c.cpu_warning_threshold,
            ram_warning_threshold: c.ram_warning_threshold,
        }
    }
}

/// Weight precision of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Quantization {
    /// 2 bytes a parameter.
    Fp16,
    /// 2 bytes a parameter (same memory as fp16, wider exponent).
    Bf16,
    /// 1 byte a parameter.
    Int8,
}

impl From<config::Quantization> for Quantization {
    fn from(q: config::Quantization) -> Self {
        match q {
            config::Quantization::Fp16 => Self::Fp16,
            config::Quantization::Bf16 => Self::Bf16,
            config::Quantization::Int8 => Self::Int8,
        }
    }
}

impl From<Quantization> for config::Quantization {
    fn from(q: Quantization) -> Self {
        match q {
            Quantization::Fp16 => Self::Fp16,
            Quantization::Bf16 => Self::Bf16,
            Quantization::Int8 => Self::Int8,
        }
    }
}

/// Optimization settings of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Optimization {
    /// Weight precision.
    pub quantization: Quantization,
    /// Move offloadable components (the text encoder) to the CPU.
    pub enable_offload: bool,
    /// VAE decode tile edge in pixels (128–512), while `vae_tiling` is on.
    pub vae_tile_size: u32,
    /// Decode the VAE in tiles of `vae_tile_size` (diffusers' tiling); false: whole frames, as
    /// Wan's own scripts decode.
    pub vae_tiling: bool,
    /// Most VRAM one generation may use, GiB.
    pub max_vram_usage_gb: f64,
}

impl Default for Optimization {
    fn default() -> Self {
        config::Optimization::default().into()
    }
}

impl From<config::Optimization> for Optimization {
    fn from(o: config::Optimization) -> Self {
        Self {
            quantization: o.quantization.into(),
            enable_offload: o.enable_offload,
            vae_tile_size: o.vae_tile_size,
            vae_tiling: o.vae_tiling,
            max_vram_usage_gb: o.max_vram_usage_gb,
        }
    }
}

/// Which resources allow the job.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct ResourceStatus {
    /// Some GPU fits the job within the budget.
    pub vram_available: bool,
    /// CPU under its warning threshold.
    pub cpu_available: bool,
    /// RAM under its warning threshold.
    pub ram_available: bool,
    /// A generation slot is free (reported where leases are tracked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_available: Option<bool>,
}

/// Usage the decision saw.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct CurrentUsage {
    /// VRAM use of the GPU in `gpu` (the chosen one, or the best candidate), percent.
    pub vram_percent: f64,
    /// CPU busy, percent; null when the host collector failed.
    pub cpu_percent: Option<f64>,
    /// RAM used, percent; null when the host collector failed.
    pub ram_percent: Option<f64>,
    /// Generation leases held now (reported where leases are tracked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_generations: Option<u32>,
}

/// The GPU a job goes to, or the best candidate when none fits.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct ChosenGpu {
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
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct ResourceCheck {
    /// All resources allow the job.
    pub can_start_generation: bool,
    /// Per-resource verdicts.
    pub resource_status: ResourceStatus,
    /// The usage the verdicts rest on.
    pub current_usage: CurrentUsage,
    /// Why it cannot start; empty when it can.
    pub blocking_issues: Vec<String>,
    /// One sentence.
    pub message: String,
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
    /// The job the decision was about and vramguard's estimate of it.
    pub estimate: EstimateBody,
    /// Where each rank of a job on several GPUs (`gpus` above 1) would go, rank 0 first; only
    /// when it fits now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<RankGpu>>,
}

/// One rank of a job sharded over several GPUs, and its GPU.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct RankGpu {
    /// The rank (0 decodes the video).
    pub rank: u32,
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
    /// What the rank needs there, GiB.
    pub vram_required_gb: f64,
    /// Free VRAM there after reservations, GiB.
    pub free_gb: f64,
    /// VRAM use there with the rank, percent.
    pub projected_percent: f64,
}

/// vramguard's estimate of one job: its profile, its video size (what the request gave, the
/// profile's where left out), and the estimate with where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct EstimateBody {
    /// Workload profile.
    pub workload: String,
    /// Video width, pixels.
    pub width: u32,
    /// Video height, pixels.
    pub height: u32,
    /// Frames.
    pub frames: u32,
    /// vramguard's estimate, GiB (the decision used the request's own figure when it gave one).
    pub vram_required_gb: f64,
    /// `model` or `observed`.
    pub source: &'static str,
    /// Observations behind it (0 for the model).
    pub samples: usize,
}

impl From<&policy::admission::ResourceCheck> for ResourceCheck {
    fn from(c: &policy::admission::ResourceCheck) -> Self {
        let (s, u) = (&c.resource_status, &c.current_usage);
        Self {
            can_start_generation: c.can_start_generation,
            resource_status: ResourceStatus {
                vram_available: s.vram_available,
                cpu_available: s.cpu_available,
                ram_available: s.ram_available,
                concurrency_available: s.concurrency_available,
            },
            current_usage: CurrentUsage {
                vram_percent: u.vram_percent,
                cpu_percent: u.cpu_percent,
                ram_percent: u.ram_percent,
                active_generations: u.active_generations,
            },
            blocking_issues: c.blocking_issues.clone(),
            message: c.message.to_string(),
            recommendations: c.recommendations.clone(),
            gpu: c.gpu.as_ref().map(|g| ChosenGpu {
                index: g.index,
                uuid: g.uuid.clone(),
                free_gb: g.free_gb,
                projected_percent: g.projected_percent,
            }),
            vram_required_gb: c.vram_required_gb,
            estimate_source: c.estimate_source,
            estimate_samples: c.estimate_samples,
            estimate: EstimateBody {
                workload: c.estimate.workload.clone(),
                width: c.estimate.geometry.width,
                height: c.estimate.geometry.height,
                frames: c.estimate.geometry.frames,
                vram_required_gb: crate::units::round2(c.estimate.gb),
                source: c.estimate_source,
                samples: c.estimate_samples,
            },
            gpus: (!c.ranks.is_empty()).then(|| {
                c.ranks
                    .iter()
                    .map(|r| RankGpu {
                        rank: r.rank,
                        index: r.index,
                        uuid: r.uuid.clone(),
                        vram_required_gb: crate::units::round2(r.need_gb),
                        free_gb: crate::units::round2(r.free_gb),
                        projected_percent: crate::units::round1(r.projected * 100.0),
                    })
                    .collect()
            }),
        }
    }
}

/// Overall status, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HealthStatus {
    /// Nothing at or above a threshold.
    Healthy,
    /// Something at or above a warning threshold, a collector failing, an unhealthy GPU while
    /// a healthy one is left, or a GPU slowing itself down.
    Warning,
    /// A GPU at or above the critical VRAM threshold, or no healthy GPU left.
    Critical,
}

/// Details of the report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_generations: Option<u32>,
    /// Whether a generation slot is free (where leases are tracked). All slots taken is not a
    /// health problem, so it does not change the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_available: Option<bool>,
}

/// The answer of `GET /api/v1/system/health`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
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

impl From<policy::health::Health> for Health {
    fn from(h: policy::health::Health) -> Self {
        let i = h.system_info;
        Self {
            status: match h.status {
                policy::health::HealthStatus::Healthy => HealthStatus::Healthy,
                policy::health::HealthStatus::Warning => HealthStatus::Warning,
                policy::health::HealthStatus::Critical => HealthStatus::Critical,
            },
            message: h.message,
            timestamp: h.timestamp,
            system_info: SystemInfo {
                cpu_percent: i.cpu_percent,
                ram_percent: i.ram_percent,
                vram_percent: i.vram_percent,
                issues: i.issues,
                warnings: i.warnings,
                recommendations: i.recommendations,
                resource_constraints: i.resource_constraints.into(),
                active_generations: i.active_generations,
                concurrency_available: i.concurrency_available,
            },
        }
    }
}

/// One GPU's figures in a point of history: its own utilization and VRAM %, each the mean of the
/// readings it had over the point's samples. A reading the GPU lacked is null (and left out of
/// a bucket's mean), never 0.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct GpuHistoryPoint {
    /// NVML index (the `gpu` label of the metrics).
    pub index: u32,
    /// SM busy, percent.
    pub gpu_percent: Option<f64>,
    /// VRAM allocated, percent of this GPU's capacity.
    pub vram_percent: Option<f64>,
}

impl From<history::GpuHistoryPoint> for GpuHistoryPoint {
    fn from(g: history::GpuHistoryPoint) -> Self {
        Self { index: g.index, gpu_percent: g.gpu_percent, vram_percent: g.vram_percent }
    }
}

/// One point of history: the seed's nine stats fields, and the GPUs one by one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct HistoryPoint {
    /// CPU busy, percent.
    pub cpu_percent: Option<f64>,
    /// RAM in use, GiB.
    pub ram_used_gb: Option<f64>,
    /// RAM size, GiB.
    pub ram_total_gb: Option<f64>,
    /// RAM in use, percent.
    pub ram_percent: Option<f64>,
    /// Mean GPU busy, percent.
    pub gpu_percent: f64,
    /// VRAM allocated over all GPUs, MiB.
    pub vram_used_mb: f64,
    /// VRAM capacity over all GPUs, MiB.
    pub vram_total_mb: f64,
    /// VRAM allocated, percent.
    pub vram_percent: f64,
    /// When (RFC 3339 UTC); for a bucket, the mean time of its samples.
    pub timestamp: String,
}

impl From<&history::HistoryPoint> for HistoryPoint {
    /// The nine fields (a point's GPUs go out separately, where an answer has them).
    fn from(p: &history::HistoryPoint) -> Self {
        Self {
            cpu_percent: p.cpu_percent,
            ram_used_gb: p.ram_used_gb,
            ram_total_gb: p.ram_total_gb,
            ram_percent: p.ram_percent,
            gpu_percent: p.gpu_percent,
            vram_used_mb: p.vram_used_mb,
            vram_total_mb: p.vram_total_mb,
            vram_percent: p.vram_percent,
            timestamp: p.timestamp.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::admission as domain;

    /// Figures the decision did not have are left out of the JSON (the seed's answer had no such
    /// keys); what only the service needs (the unrounded figure, the reasons) never goes out.
    #[test]
    fn a_decision_goes_out_as_the_seed_shaped_it() {
        let check = domain::ResourceCheck {
            can_start_generation: true,
            resource_status: domain::ResourceStatus {
                vram_available: true,
                cpu_available: true,
                ram_available: true,
                concurrency_available: None,
            },
            current_usage: domain::CurrentUsage {
                vram_percent: 10.0,
                cpu_percent: None,
                ram_percent: Some(20.0),
                active_generations: None,
            },
            blocking_issues: vec![],
            message: "Resources available for generation".into(),
            recommendations: vec![],
            gpu: None,
            vram_required_gb: 9.5,
            estimate_source: "model",
            estimate_samples: 0,
            estimate: domain::JobEstimate {
                workload: "default".to_owned(),
                geometry: crate::policy::phases::Geometry { width: 832, height: 480, frames: 81 },
                gb: 11.234,
            },
            required_gb: 9.4999,
            ranks: vec![],
            gang_fitting: vec![],
            reasons: vec![],
            lasting: false,
        };
        let json = serde_json::to_value(ResourceCheck::from(&check)).unwrap();
        assert!(json["resource_status"].get("concurrency_available").is_none(), "{json}");
        assert!(json["current_usage"].get("active_generations").is_none(), "{json}");
        assert_eq!(json["current_usage"]["cpu_percent"], serde_json::Value::Null, "unknown, not 0: {json}");
        assert_eq!(json["vram_required_gb"], 9.5);
        for internal in ["required_gb", "reasons", "lasting", "ranks", "gpus"] {
            assert!(json.get(internal).is_none(), "{internal} went out: {json}");
        }
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 11, "{keys:?}");
        assert_eq!(
            json["estimate"],
            serde_json::json!({"workload": "default", "width": 832, "height": 480, "frames": 81,
                               "vram_required_gb": 11.23, "source": "model", "samples": 0})
        );
    }

    #[test]
    fn settings_go_out_with_their_names() {
        let json = serde_json::to_value(Optimization::from(config::Optimization::default())).unwrap();
        assert_eq!(json["quantization"], "bf16");
        let q: Quantization = serde_json::from_str("\"int8\"").unwrap();
        assert_eq!(config::Quantization::from(q), config::Quantization::Int8);
    }
}

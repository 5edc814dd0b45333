//! `/api/v1/system/optimization` and `/api/v1/system/constraints`: read, partially update, and
//! reset to config.yaml. The merge, validation and durable write are the service layer's
//! ([`crate::app::settings`]); a rejected update changes nothing.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{Allowed, JsonBody};
use super::error::{ApiError, ErrorBody};
use super::wire::{Constraints, Optimization, Quantization};
use crate::app::AppState;
use crate::app::settings::OptimizationSummary;
use crate::limits;
use crate::units::round2;

/// A partial update of the optimization settings; omitted fields keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OptimizationPatch {
    /// fp16, bf16 or int8.
    pub quantization: Option<Quantization>,
    /// Move offloadable components to the CPU.
    pub enable_offload: Option<bool>,
    /// VAE decode tile edge, pixels.
    #[schema(minimum = 128, maximum = 512)]
    pub vae_tile_size: Option<u32>,
    /// Decode the VAE in tiles of `vae_tile_size`; false: whole frames (Wan's own decode).
    pub vae_tiling: Option<bool>,
    /// Most VRAM one generation may use, GiB (at most the largest GPU's VRAM).
    #[schema(exclusive_minimum = 0.0, maximum = 1024.0)]
    pub max_vram_usage_gb: Option<f64>,
}

impl From<OptimizationPatch> for crate::app::settings::OptimizationPatch {
    fn from(p: OptimizationPatch) -> Self {
        Self {
            quantization: p.quantization.map(Into::into),
            enable_offload: p.enable_offload,
            vae_tile_size: p.vae_tile_size,
            vae_tiling: p.vae_tiling,
            max_vram_usage_gb: p.max_vram_usage_gb,
        }
    }
}

/// A partial update of the constraints; omitted fields keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConstraintsPatch {
    /// Generation leases allowed at once.
    #[schema(minimum = 1, maximum = 10)]
    pub max_concurrent_generations: Option<u32>,
    /// VRAM fraction at which health warns.
    #[schema(minimum = 0.1, maximum = 1.0)]
    pub vram_warning_threshold: Option<f64>,
    /// VRAM fraction at which health is critical and admission refuses.
    #[schema(minimum = 0.1, maximum = 1.0)]
    pub vram_critical_threshold: Option<f64>,
    /// CPU busy fraction at which health warns and admission refuses.
    #[schema(minimum = 0.1, maximum = 1.0)]
    pub cpu_warning_threshold: Option<f64>,
    /// RAM used fraction at which health warns and admission refuses.
    #[schema(minimum = 0.1, maximum = 1.0)]
    pub ram_warning_threshold: Option<f64>,
}

impl From<ConstraintsPatch> for crate::app::settings::ConstraintsPatch {
    fn from(p: ConstraintsPatch) -> Self {
        Self {
            max_concurrent_generations: p.max_concurrent_generations,
            vram_warning_threshold: p.vram_warning_threshold,
            vram_critical_threshold: p.vram_critical_threshold,
            cpu_warning_threshold: p.cpu_warning_threshold,
            ram_warning_threshold: p.ram_warning_threshold,
        }
    }
}

impl Allowed for OptimizationPatch {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("quantization", "one of fp16, bf16, int8"),
        ("enable_offload", "true or false"),
        ("vae_tile_size", limits::TILE_SIZE_WORDS),
        ("vae_tiling", "true or false"),
        ("max_vram_usage_gb", "a number above 0 up to the largest GPU's VRAM in GiB"),
    ];
}

impl Allowed for ConstraintsPatch {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("max_concurrent_generations", limits::CONCURRENCY_WORDS),
        ("vram_warning_threshold", limits::VRAM_WARNING_WORDS),
        ("vram_critical_threshold", limits::VRAM_CRITICAL_WORDS),
        ("cpu_warning_threshold", limits::THRESHOLD_WORDS),
        ("ram_warning_threshold", limits::THRESHOLD_WORDS),
    ];
}

/// Answer of a settings update.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct OptimizationUpdated {
    /// "Optimization settings updated successfully" (or reset).
    pub message: String,
    /// The settings now in force.
    pub settings: Optimization,
    /// VRAM allocated over all GPUs now, GiB.
    pub current_vram_usage_gb: f64,
    /// VRAM one generation needs with these settings, GiB.
    pub estimated_vram_need_gb: f64,
    /// VRAM these settings save against fp16, no offload, tile 512, GiB.
    pub estimated_vram_savings_gb: f64,
    /// Where the estimate comes from: `model` or `observed`.
    pub estimate_source: String,
    /// Observations behind the estimate (0 for the model).
    pub estimate_samples: usize,
    /// What the admission check would advise with these settings.
    pub recommendations: Vec<String>,
}

/// Answer of `GET /constraints`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConstraintsBody {
    /// The constraints now in force.
    pub constraints: Constraints,
    /// A sentence per field.
    pub description: BTreeMap<String, String>,
}

/// Answer of a constraints update.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConstraintsUpdated {
    /// "Resource constraints updated successfully" (or reset).
    pub message: String,
    /// All five constraints now in force.
    pub updated_constraints: Constraints,
}

/// The optimization settings now in force.
#[utoipa::path(get, path = "/api/v1/system/optimization", tag = "settings",
    responses((status = 200, body = Optimization),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn get_optimization(State(state): State<AppState>) -> Json<Optimization> {
    Json(state.settings().live().settings.into())
}

/// Updates any subset of the optimization settings.
#[utoipa::path(post, path = "/api/v1/system/optimization", tag = "settings",
    request_body = OptimizationPatch,
    responses(
        (status = 200, body = OptimizationUpdated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The token's role may not make this write"), (status = 503, body = ErrorBody, description = "The state store cannot take writes now; nothing was changed (Retry-After)"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub(crate) async fn post_optimization(
    State(state): State<AppState>,
    JsonBody(patch): JsonBody<OptimizationPatch>,
) -> Result<Json<OptimizationUpdated>, ApiError> {
    let summary = state.settings().update_optimization(patch.into()).await?;
    Ok(Json(optimization_answer(summary, "Optimization settings updated successfully")))
}

/// Puts the optimization settings back to config.yaml.
#[utoipa::path(delete, path = "/api/v1/system/optimization", tag = "settings",
    responses((status = 200, body = OptimizationUpdated), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The token's role may not make this write"), (status = 503, body = ErrorBody, description = "The state store cannot take writes now; nothing was changed (Retry-After)")))]
pub(crate) async fn delete_optimization(State(state): State<AppState>) -> Result<Json<OptimizationUpdated>, ApiError> {
    let summary = state.settings().reset_optimization().await?;
    Ok(Json(optimization_answer(summary, "Optimization settings reset to config.yaml")))
}

/// The constraints now in force, with a sentence per field.
#[utoipa::path(get, path = "/api/v1/system/constraints", tag = "settings",
    responses((status = 200, body = ConstraintsBody),
        (status = 401, body = ErrorBody, description = "auth.protect_reads is on and no valid token was sent")))]
pub(crate) async fn get_constraints(State(state): State<AppState>) -> Json<ConstraintsBody> {
    let c = state.settings().live().constraints;
    let concurrency =
        format!("Generation leases allowed at once ({}-{}).", limits::CONCURRENCY.start(), limits::CONCURRENCY.end());
    let description = [
        ("max_concurrent_generations", concurrency.as_str()),
        ("vram_warning_threshold", "Any GPU's VRAM use at or above this fraction makes health a warning."),
        (
            "vram_critical_threshold",
            "Any GPU's VRAM use at or above this fraction is critical; admission refuses a job that would reach it.",
        ),
        ("cpu_warning_threshold", "CPU busy at or above this fraction warns and blocks new generations."),
        ("ram_warning_threshold", "RAM use at or above this fraction warns and blocks new generations."),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Json(ConstraintsBody { constraints: c.into(), description })
}

/// Updates any subset of the constraints; VRAM warning must stay at or below critical.
#[utoipa::path(post, path = "/api/v1/system/constraints", tag = "settings",
    request_body = ConstraintsPatch,
    responses(
        (status = 200, body = ConstraintsUpdated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The token's role may not make this write"), (status = 503, body = ErrorBody, description = "The state store cannot take writes now; nothing was changed (Retry-After)"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub(crate) async fn post_constraints(
    State(state): State<AppState>,
    JsonBody(patch): JsonBody<ConstraintsPatch>,
) -> Result<Json<ConstraintsUpdated>, ApiError> {
    let live = state.settings().update_constraints(patch.into()).await?;
    Ok(Json(ConstraintsUpdated {
        message: "Resource constraints updated successfully".to_owned(),
        updated_constraints: live.constraints.into(),
    }))
}

/// Puts the constraints back to config.yaml.
#[utoipa::path(delete, path = "/api/v1/system/constraints", tag = "settings",
    responses((status = 200, body = ConstraintsUpdated), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The token's role may not make this write"), (status = 503, body = ErrorBody, description = "The state store cannot take writes now; nothing was changed (Retry-After)")))]
pub(crate) async fn delete_constraints(State(state): State<AppState>) -> Result<Json<ConstraintsUpdated>, ApiError> {
    let live = state.settings().reset_constraints().await?;
    Ok(Json(ConstraintsUpdated {
        message: "Resource constraints reset to config.yaml".to_owned(),
        updated_constraints: live.constraints.into(),
    }))
}

fn optimization_answer(s: OptimizationSummary, message: &str) -> OptimizationUpdated {
    OptimizationUpdated {
        message: message.to_owned(),
        settings: s.settings.into(),
        current_vram_usage_gb: round2(s.current_vram_usage_gb),
        estimated_vram_need_gb: round2(s.estimated_vram_need_gb),
        estimated_vram_savings_gb: round2(s.estimated_vram_savings_gb),
        estimate_source: s.estimate_source.to_owned(),
        estimate_samples: s.estimate_samples,
        recommendations: s.recommendations,
    }
}

//! `/api/v1/system/optimization` and `/api/v1/system/constraints`: read, partially update, and
//! reset to config.yaml. An update is validated after the merge, written to the state store in
//! one transaction, and only then published and acknowledged; a rejected update changes nothing.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{Allowed, JsonBody};
use super::error::{ApiError, ErrorBody};
use super::{AppState, Live};
use crate::config::{
    Constraints, MAX_VRAM_BUDGET_WITHOUT_GPU_GB, Optimization, Quantization, validate_constraints,
    validate_optimization,
};
use crate::policy::admission::{CheckRequest, resource_check};
use crate::policy::{GIB, estimate, round2};

const OPTIMIZATION_KEY: &str = "optimization";
const CONSTRAINTS_KEY: &str = "constraints";

/// A partial update of the optimization settings; omitted fields keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizationPatch {
    /// fp16, bf16 or int8.
    pub quantization: Option<Quantization>,
    /// Move offloadable components to the CPU.
    pub enable_offload: Option<bool>,
    /// VAE decode tile edge, pixels.
    #[schema(minimum = 128, maximum = 512)]
    pub vae_tile_size: Option<u32>,
    /// Most VRAM one generation may use, GiB (at most the largest GPU's VRAM).
    #[schema(exclusive_minimum = 0.0, maximum = 1024.0)]
    pub max_vram_usage_gb: Option<f64>,
}

impl Allowed for OptimizationPatch {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("quantization", "one of fp16, bf16, int8"),
        ("enable_offload", "true or false"),
        ("vae_tile_size", "integers 128 to 512"),
        ("max_vram_usage_gb", "a number above 0 up to the largest GPU's VRAM in GiB"),
    ];
}

/// A partial update of the constraints; omitted fields keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConstraintsPatch {
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

impl Allowed for ConstraintsPatch {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("max_concurrent_generations", "integers 1 to 10"),
        ("vram_warning_threshold", "fractions 0.1 to 1.0, not above vram_critical_threshold"),
        ("vram_critical_threshold", "fractions 0.1 to 1.0, not below vram_warning_threshold"),
        ("cpu_warning_threshold", "fractions 0.1 to 1.0"),
        ("ram_warning_threshold", "fractions 0.1 to 1.0"),
    ];
}

/// Answer of a settings update.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OptimizationUpdated {
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
    /// What the admission check would advise with these settings.
    pub recommendations: Vec<String>,
}

/// Answer of `GET /constraints`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConstraintsBody {
    /// The constraints now in force.
    pub constraints: Constraints,
    /// A sentence per field.
    pub description: BTreeMap<String, String>,
}

/// Answer of a constraints update.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConstraintsUpdated {
    /// "Resource constraints updated successfully" (or reset).
    pub message: String,
    /// All five constraints now in force.
    pub updated_constraints: Constraints,
}

/// The optimization settings now in force.
#[utoipa::path(get, path = "/api/v1/system/optimization", tag = "settings",
    responses((status = 200, body = Optimization)))]
pub async fn get_optimization(State(state): State<AppState>) -> Json<Optimization> {
    Json(state.live().settings)
}

/// Updates any subset of the optimization settings.
#[utoipa::path(post, path = "/api/v1/system/optimization", tag = "settings",
    request_body = OptimizationPatch,
    responses(
        (status = 200, body = OptimizationUpdated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub async fn post_optimization(
    State(state): State<AppState>,
    JsonBody(patch): JsonBody<OptimizationPatch>,
) -> Result<Json<OptimizationUpdated>, ApiError> {
    let max_budget = largest_gpu_gb(&state);
    let live = update(&state, move |live| {
        let s = &mut live.settings;
        if let Some(v) = patch.quantization {
            s.quantization = v;
        }
        if let Some(v) = patch.enable_offload {
            s.enable_offload = v;
        }
        if let Some(v) = patch.vae_tile_size {
            s.vae_tile_size = v;
        }
        if let Some(v) = patch.max_vram_usage_gb {
            s.max_vram_usage_gb = v;
        }
        validate_optimization(s, max_budget)
            .map_err(|(field, message)| ApiError::bad_request(format!("{field}: {message}")))?;
        Ok(Persist::Save(OPTIMIZATION_KEY, serde_json::to_value(*s).expect("settings serialise")))
    })
    .await?;
    Ok(Json(optimization_answer(&state, &live, "Optimization settings updated successfully")))
}

/// Puts the optimization settings back to config.yaml.
#[utoipa::path(delete, path = "/api/v1/system/optimization", tag = "settings",
    responses((status = 200, body = OptimizationUpdated), (status = 401, body = ErrorBody)))]
pub async fn delete_optimization(State(state): State<AppState>) -> Result<Json<OptimizationUpdated>, ApiError> {
    let defaults = state.config.optimization;
    let live = update(&state, move |live| {
        live.settings = defaults;
        Ok(Persist::Delete(OPTIMIZATION_KEY))
    })
    .await?;
    Ok(Json(optimization_answer(&state, &live, "Optimization settings reset to config.yaml")))
}

/// The constraints now in force, with a sentence per field.
#[utoipa::path(get, path = "/api/v1/system/constraints", tag = "settings",
    responses((status = 200, body = ConstraintsBody)))]
pub async fn get_constraints(State(state): State<AppState>) -> Json<ConstraintsBody> {
    let c = state.live().constraints;
    let description = [
        ("max_concurrent_generations", "Generation leases allowed at once (1-10)."),
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
    Json(ConstraintsBody { constraints: c, description })
}

/// Updates any subset of the constraints; VRAM warning must stay at or below critical.
#[utoipa::path(post, path = "/api/v1/system/constraints", tag = "settings",
    request_body = ConstraintsPatch,
    responses(
        (status = 200, body = ConstraintsUpdated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub async fn post_constraints(
    State(state): State<AppState>,
    JsonBody(patch): JsonBody<ConstraintsPatch>,
) -> Result<Json<ConstraintsUpdated>, ApiError> {
    let live = update(&state, move |live| {
        let c = &mut live.constraints;
        if let Some(v) = patch.max_concurrent_generations {
            c.max_concurrent_generations = v;
        }
        if let Some(v) = patch.vram_warning_threshold {
            c.vram_warning_threshold = v;
        }
        if let Some(v) = patch.vram_critical_threshold {
            c.vram_critical_threshold = v;
        }
        if let Some(v) = patch.cpu_warning_threshold {
            c.cpu_warning_threshold = v;
        }
        if let Some(v) = patch.ram_warning_threshold {
            c.ram_warning_threshold = v;
        }
        validate_constraints(c).map_err(|(field, message)| ApiError::bad_request(format!("{field}: {message}")))?;
        Ok(Persist::Save(CONSTRAINTS_KEY, serde_json::to_value(*c).expect("constraints serialise")))
    })
    .await?;
    Ok(Json(ConstraintsUpdated {
        message: "Resource constraints updated successfully".to_owned(),
        updated_constraints: live.constraints,
    }))
}

/// Puts the constraints back to config.yaml.
#[utoipa::path(delete, path = "/api/v1/system/constraints", tag = "settings",
    responses((status = 200, body = ConstraintsUpdated), (status = 401, body = ErrorBody)))]
pub async fn delete_constraints(State(state): State<AppState>) -> Result<Json<ConstraintsUpdated>, ApiError> {
    let defaults = state.config.constraints;
    let live = update(&state, move |live| {
        live.constraints = defaults;
        Ok(Persist::Delete(CONSTRAINTS_KEY))
    })
    .await?;
    Ok(Json(ConstraintsUpdated {
        message: "Resource constraints reset to config.yaml".to_owned(),
        updated_constraints: live.constraints,
    }))
}

/// What an update writes to the store.
enum Persist {
    Save(&'static str, serde_json::Value),
    Delete(&'static str),
}

/// Applies `change` to a copy of the live values, makes it durable, then publishes it. Under the
/// store lock, so updates are serialised and a failed validation or write leaves both the store
/// and the live values untouched.
async fn update(
    state: &AppState,
    change: impl FnOnce(&mut Live) -> Result<Persist, ApiError> + Send + 'static,
) -> Result<Live, ApiError> {
    state
        .write("settings update failed", move |state, store| {
            let mut next = state.live();
            let result = match change(&mut next)? {
                Persist::Save(key, value) => store.save_override(key, &value, super::now_seconds()),
                Persist::Delete(key) => store.delete_override(key),
            };
            result.map_err(|e| ApiError::internal("could not write the state store", e))?;
            *state.live.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
            Ok(next)
        })
        .await
}

/// The largest GPU's VRAM in GiB, or the no-GPU ceiling.
fn largest_gpu_gb(state: &AppState) -> f64 {
    state
        .snapshot()
        .and_then(|s| s.gpus.iter().filter_map(|g| g.memory).map(|m| m.total_bytes).max())
        .map_or(MAX_VRAM_BUDGET_WITHOUT_GPU_GB, |b| b as f64 / GIB)
}

fn optimization_answer(state: &AppState, live: &Live, message: &str) -> OptimizationUpdated {
    let view = super::View { live: *live, ..state.view() };
    let used: u64 =
        view.snapshot.iter().flat_map(|s| s.gpus.iter()).filter_map(|g| g.memory).map(|m| m.used_bytes).sum();
    let ctx = view.context(&state.config);
    let check = resource_check(&ctx, &CheckRequest::default());
    OptimizationUpdated {
        message: message.to_owned(),
        settings: live.settings,
        current_vram_usage_gb: round2(used as f64 / GIB),
        estimated_vram_need_gb: round2(estimate::need_gb(&state.config.workload, &live.settings, false)),
        estimated_vram_savings_gb: round2(estimate::savings_gb(&state.config.workload, &live.settings)),
        recommendations: check.recommendations,
    }
}

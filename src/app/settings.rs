//! Settings changed through the API: partial updates merged into the live values, validated
//! after the merge, written to the state store in one transaction, and only then published. A
//! rejected update changes nothing.

use std::sync::Arc;

use super::error::ServiceError;
use super::inputs::{Inputs, Live};
use super::writer::Writer;
use crate::config::{Config, Constraints, Optimization, Quantization, validate_constraints, validate_optimization};
use crate::limits::MAX_VRAM_GB;
use crate::policy::admission::{CheckRequest, resource_check};
use crate::policy::estimate;
use crate::store::{Store, StoreError};
use crate::time::now_unix;
use crate::units::gib;

/// Store key of the optimization override.
pub(crate) const OPTIMIZATION_KEY: &str = "optimization";
/// Store key of the constraints override.
pub(crate) const CONSTRAINTS_KEY: &str = "constraints";

/// A partial update of the optimization settings; omitted fields keep their value.
#[derive(Debug, Clone, Default)]
pub(crate) struct OptimizationPatch {
    /// fp16, bf16 or int8.
    pub quantization: Option<Quantization>,
    /// Move offloadable components to the CPU.
    pub enable_offload: Option<bool>,
    /// VAE decode tile edge, pixels.
    pub vae_tile_size: Option<u32>,
    /// Decode the VAE in tiles.
    pub vae_tiling: Option<bool>,
    /// Most VRAM one generation may use, GiB (at most the largest GPU's VRAM).
    pub max_vram_usage_gb: Option<f64>,
}

/// A partial update of the constraints; omitted fields keep their value.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConstraintsPatch {
    /// Generation leases allowed at once.
    pub max_concurrent_generations: Option<u32>,
    /// VRAM fraction at which health warns.
    pub vram_warning_threshold: Option<f64>,
    /// VRAM fraction at which health is critical and admission refuses.
    pub vram_critical_threshold: Option<f64>,
    /// CPU busy fraction at which health warns and admission refuses.
    pub cpu_warning_threshold: Option<f64>,
    /// RAM used fraction at which health warns and admission refuses.
    pub ram_warning_threshold: Option<f64>,
}

/// What the optimization settings mean now, for the answer of an update.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OptimizationSummary {
    /// The settings now in force.
    pub settings: Optimization,
    /// VRAM allocated over all GPUs now, GiB.
    pub current_vram_usage_gb: f64,
    /// VRAM one generation needs with these settings, GiB.
    pub estimated_vram_need_gb: f64,
    /// VRAM these settings save against fp16, no offload, tile 512, GiB.
    pub estimated_vram_savings_gb: f64,
    /// `model` or `observed`.
    pub estimate_source: &'static str,
    /// Observations behind the estimate.
    pub estimate_samples: usize,
    /// What the admission check would advise with these settings.
    pub recommendations: Vec<String>,
}

/// What an update writes to the store.
enum Persist {
    Save(&'static str, serde_json::Value),
    Delete(&'static str),
}

fn rejected((field, message): (&str, String)) -> ServiceError {
    ServiceError::Invalid(format!("{field}: {message}"))
}

/// The live settings and constraints, as the API changes them.
pub(crate) struct Settings {
    inputs: Arc<Inputs>,
    writer: Arc<Writer>,
}

impl Settings {
    pub(crate) fn new(inputs: Arc<Inputs>, writer: Arc<Writer>) -> Self {
        Self { inputs, writer }
    }

    /// The live settings and constraints now.
    pub(crate) fn live(&self) -> Live {
        self.inputs.live()
    }

    /// Merges `patch` into the optimization settings.
    pub(crate) async fn update_optimization(
        &self,
        patch: OptimizationPatch,
    ) -> Result<OptimizationSummary, ServiceError> {
        let max_budget = self.largest_gpu_gb();
        let live = self
            .update(move |live| {
                let s = &mut live.settings;
                s.quantization = patch.quantization.unwrap_or(s.quantization);
                s.enable_offload = patch.enable_offload.unwrap_or(s.enable_offload);
                s.vae_tile_size = patch.vae_tile_size.unwrap_or(s.vae_tile_size);
                s.vae_tiling = patch.vae_tiling.unwrap_or(s.vae_tiling);
                s.max_vram_usage_gb = patch.max_vram_usage_gb.unwrap_or(s.max_vram_usage_gb);
                // A budget sent now must fit the largest GPU; one kept from before (the
                // configured default, 80 GiB) is not judged again against this machine's GPUs.
                let cap = if patch.max_vram_usage_gb.is_some() { max_budget } else { MAX_VRAM_GB };
                validate_optimization(s, cap).map_err(rejected)?;
                Ok(Persist::Save(OPTIMIZATION_KEY, serde_json::to_value(*s).expect("settings serialise")))
            })
            .await?;
        Ok(self.optimization_summary(&live))
    }

    /// Puts the optimization settings back to config.yaml.
    pub(crate) async fn reset_optimization(&self) -> Result<OptimizationSummary, ServiceError> {
        let defaults = self.inputs.config().optimization;
        let live = self
            .update(move |live| {
                live.settings = defaults;
                Ok(Persist::Delete(OPTIMIZATION_KEY))
            })
            .await?;
        Ok(self.optimization_summary(&live))
    }

    /// Merges `patch` into the constraints; VRAM warning must stay at or below critical.
    pub(crate) async fn update_constraints(&self, patch: ConstraintsPatch) -> Result<Live, ServiceError> {
        self.update(move |live| {
            let c = &mut live.constraints;
            c.max_concurrent_generations = patch.max_concurrent_generations.unwrap_or(c.max_concurrent_generations);
            c.vram_warning_threshold = patch.vram_warning_threshold.unwrap_or(c.vram_warning_threshold);
            c.vram_critical_threshold = patch.vram_critical_threshold.unwrap_or(c.vram_critical_threshold);
            c.cpu_warning_threshold = patch.cpu_warning_threshold.unwrap_or(c.cpu_warning_threshold);
            c.ram_warning_threshold = patch.ram_warning_threshold.unwrap_or(c.ram_warning_threshold);
            validate_constraints(c).map_err(rejected)?;
            Ok(Persist::Save(CONSTRAINTS_KEY, serde_json::to_value(*c).expect("constraints serialise")))
        })
        .await
    }

    /// Puts the constraints back to config.yaml.
    pub(crate) async fn reset_constraints(&self) -> Result<Live, ServiceError> {
        let defaults = self.inputs.config().constraints;
        self.update(move |live| {
            live.constraints = defaults;
            Ok(Persist::Delete(CONSTRAINTS_KEY))
        })
        .await
    }

    /// Applies `change` to a copy of the live values, makes it durable, then publishes it. Under
    /// the store lock, so updates are serialised and a failed validation or write leaves both the
    /// store and the live values untouched.
    async fn update(
        &self,
        change: impl FnOnce(&mut Live) -> Result<Persist, ServiceError> + Send + 'static,
    ) -> Result<Live, ServiceError> {
        let inputs = Arc::clone(&self.inputs);
        self.writer
            .write("settings update failed", move |store| {
                let mut next = inputs.live();
                let result = match change(&mut next)? {
                    Persist::Save(key, value) => store.save_override(key, &value, now_unix()),
                    Persist::Delete(key) => store.delete_override(key),
                };
                result.map_err(ServiceError::store)?;
                inputs.set_live(next);
                inputs.room_may_have_freed();
                Ok(next)
            })
            .await
    }

    /// The largest GPU's VRAM in GiB (the ceiling of a budget), or the no-GPU ceiling.
    fn largest_gpu_gb(&self) -> f64 {
        self.inputs
            .snapshot()
            .and_then(|s| s.gpus.iter().filter_map(|g| g.memory).map(|m| m.total_bytes).max())
            .map_or(MAX_VRAM_GB, gib)
    }

    fn optimization_summary(&self, live: &Live) -> OptimizationSummary {
        let view = super::inputs::View { live: *live, ..self.inputs.view() };
        let used: u64 =
            view.snapshot.iter().flat_map(|s| s.gpus.iter()).filter_map(|g| g.memory).map(|m| m.used_bytes).sum();
        let config = self.inputs.config();
        let ctx = view.context(&config);
        let check = resource_check(&ctx, &CheckRequest::default());
        let est = ctx.estimate(false, None);
        let size = crate::policy::phases::Geometry::of(&config.workload);
        OptimizationSummary {
            settings: live.settings,
            current_vram_usage_gb: gib(used),
            estimated_vram_need_gb: est.gb,
            estimated_vram_savings_gb: est.scale * estimate::savings_gb(&config.workload, &live.settings, size),
            estimate_source: est.source.as_str(),
            estimate_samples: est.samples,
            recommendations: check.recommendations,
        }
    }
}

/// The live settings: API overrides from the store where present, else config.yaml. An override
/// that no longer validates is an error naming the store, not a silent reset.
pub(crate) fn load_live(store: &Store, config: &Config) -> Result<Live, StoreError> {
    let invalid = |key: &str, message: String| StoreError::Invalid {
        path: store.path().to_owned(),
        key: key.to_owned(),
        message,
    };
    let settings = store.load_override::<Optimization>(OPTIMIZATION_KEY)?.unwrap_or(config.optimization);
    validate_optimization(&settings, MAX_VRAM_GB).map_err(|(f, m)| invalid("optimization", format!("{f}: {m}")))?;
    let constraints = store.load_override::<Constraints>(CONSTRAINTS_KEY)?.unwrap_or(config.constraints);
    validate_constraints(&constraints).map_err(|(f, m)| invalid("constraints", format!("{f}: {m}")))?;
    if settings != config.optimization || constraints != config.constraints {
        tracing::info!(store = %store.path().display(), "using settings changed through the API (DELETE resets them)");
    }
    Ok(Live { settings, constraints })
}

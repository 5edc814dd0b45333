//! The pipeline's sections: resource constraints, optimization settings, workload profiles,
//! leases and learning; their defaults and the range checks the API shares with the loader.

use serde::{Deserialize, Serialize};

use super::Dur;
use crate::limits;

/// Resource constraints: thresholds are fractions 0.1–1.0.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
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

/// Weight precision of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 2 bytes a parameter.
    Fp16,
    /// 2 bytes a parameter (same memory as fp16, wider exponent).
    Bf16,
    /// 1 byte a parameter.
    Int8,
}

/// Optimization settings of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Optimization {
    /// Weight precision.
    pub quantization: Quantization,
    /// Move offloadable components (the text encoder) to the CPU.
    pub enable_offload: bool,
    /// VAE decode tile edge in pixels (128–512), while `vae_tiling` is on.
    pub vae_tile_size: u32,
    /// Decode the VAE in tiles of `vae_tile_size` (diffusers' `enable_tiling`); off: whole
    /// frames, as Wan's own scripts decode.
    pub vae_tiling: bool,
    /// Most VRAM one generation may use, GiB.
    pub max_vram_usage_gb: f64,
}

/// Generation leases.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// Lease lifetime when the client does not ask for one.
    pub default_ttl: Dur,
    /// Removed in wave 2: only read so that an old config gets a clear error naming it.
    #[serde(skip_serializing, deserialize_with = "present")]
    pub reservation_grace: Option<serde_norway::Value>,
}

/// `Some` for any value the key holds, null included: an emptied key is still present, and still
/// a removed one. An absent key keeps the `default` (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_norway::Value>, D::Error> {
    serde_norway::Value::deserialize(d).map(Some)
}

/// Estimates learned from the peaks of finished generations.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Observations of the current key needed before they replace the model.
    pub min_samples: u32,
    /// How many of the newest observations of a key count.
    pub window: u32,
    /// Safety margin on the highest observed peak (0.10 = +10 %).
    pub margin: f64,
    /// How much more than its peak a job that died of out-of-memory is taken to need (0.25 =
    /// +25 %): it needed more than it got, by an amount nobody measured.
    pub oom_margin: f64,
    /// The least fraction of the model's estimate a learned estimate may be, and a client's own
    /// peak must reach to count when vramguard saw none of the job's VRAM.
    pub min_ratio: f64,
    /// Workload profiles whose learned estimates may go below `min_ratio` of the model (an
    /// admin's word that the model overstates them).
    pub below_min_ratio: Vec<String>,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self { min_samples: 3, window: 20, margin: 0.10, oom_margin: 0.25, min_ratio: 0.5, below_min_ratio: Vec::new() }
    }
}

impl Default for Constraints {
    fn default() -> Self {
        Self {
            max_concurrent_generations: 2,
            vram_warning_threshold: 0.85,
            vram_critical_threshold: 0.95,
            cpu_warning_threshold: 0.90,
            ram_warning_threshold: 0.90,
        }
    }
}

impl Default for Optimization {
    fn default() -> Self {
        Self {
            quantization: Quantization::Bf16,
            enable_offload: true,
            vae_tile_size: 256,
            vae_tiling: true,
            max_vram_usage_gb: 80.0,
        }
    }
}

impl Default for LeasesConfig {
    fn default() -> Self {
        Self { default_ttl: Dur::secs(900), reservation_grace: None }
    }
}

/// Checks constraint ranges and the warning ≤ critical rule; returns (field, sentence) on error.
/// Shared by the config loader and the constraints API so both accept exactly the same values.
pub(crate) fn validate_constraints(c: &Constraints) -> Result<(), (&'static str, String)> {
    limits::check_concurrency(c.max_concurrent_generations).map_err(|m| ("max_concurrent_generations", m))?;
    for (field, value) in [
        ("vram_warning_threshold", c.vram_warning_threshold),
        ("vram_critical_threshold", c.vram_critical_threshold),
        ("cpu_warning_threshold", c.cpu_warning_threshold),
        ("ram_warning_threshold", c.ram_warning_threshold),
    ] {
        limits::check_threshold(value).map_err(|m| (field, m))?;
    }
    if c.vram_warning_threshold > c.vram_critical_threshold {
        return Err((
            "vram_warning_threshold",
            format!(
                "{} is above vram_critical_threshold {}; the warning level must not exceed the critical level",
                c.vram_warning_threshold, c.vram_critical_threshold
            ),
        ));
    }
    Ok(())
}

/// Checks optimization ranges; `max_budget_gb` is the largest GPU's VRAM (or 1024 without one).
pub(crate) fn validate_optimization(o: &Optimization, max_budget_gb: f64) -> Result<(), (&'static str, String)> {
    limits::check_tile_size(o.vae_tile_size).map_err(|m| ("vae_tile_size", m))?;
    limits::check_budget_gb(o.max_vram_usage_gb, max_budget_gb).map_err(|m| ("max_vram_usage_gb", m))
}

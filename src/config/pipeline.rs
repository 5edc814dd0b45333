//! The pipeline's sections: resource constraints, optimization settings, workload profiles,
//! leases and learning; their defaults and the range checks the API shares with the loader.

use serde::{Deserialize, Serialize};

use super::Dur;
use crate::error::ConfigError;
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
    /// VAE decode tile edge in pixels (128–512).
    pub vae_tile_size: u32,
    /// Most VRAM one generation may use, GiB.
    pub max_vram_usage_gb: f64,
}

/// One model component whose weights sit in VRAM.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// What it is, for messages.
    pub name: String,
    /// Parameter count in billions.
    pub params_billions: f64,
    /// Whether `enable_offload` moves it to the CPU.
    pub offloadable: bool,
}

/// The VRAM profile of one generation (SPEC §4.3).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// What the profile describes.
    pub name: String,
    /// Components kept on the GPU.
    pub components: Vec<Component>,
    /// Peak activation memory of a denoising step, GiB.
    pub activations_gb: f64,
    /// VAE decode memory at `vae_reference_tile_size`, GiB; scales with tile area.
    pub vae_decode_gb: f64,
    /// Tile edge at which `vae_decode_gb` was measured.
    pub vae_reference_tile_size: u32,
    /// CUDA context, allocator slack and other fixed cost, GiB.
    pub overhead_gb: f64,
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
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self { min_samples: 3, window: 20, margin: 0.10, oom_margin: 0.25 }
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
        Self { quantization: Quantization::Bf16, enable_offload: true, vae_tile_size: 256, max_vram_usage_gb: 12.0 }
    }
}

impl Default for Workload {
    /// Wan2.2 TI2V-5B at 720p; the sources of each figure are in config.yaml.
    fn default() -> Self {
        Self {
            name: "Wan2.2 TI2V-5B, 1280x704, 121 frames".to_owned(),
            components: vec![
                Component { name: "transformer".to_owned(), params_billions: 5.0, offloadable: false },
                Component { name: "umt5-xxl text encoder".to_owned(), params_billions: 5.7, offloadable: true },
            ],
            activations_gb: 1.0,
            vae_decode_gb: 0.75,
            vae_reference_tile_size: 256,
            overhead_gb: 0.75,
        }
    }
}

impl Default for LeasesConfig {
    fn default() -> Self {
        Self { default_ttl: Dur::secs(900), reservation_grace: None }
    }
}

impl Workload {
    pub(super) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        for (i, c) in self.components.iter().enumerate() {
            if !(c.params_billions.is_finite()
                && c.params_billions > 0.0
                && c.params_billions <= limits::PARAMS_BILLIONS_MAX)
            {
                return bad(
                    format!("{prefix}.components[{i}].params_billions"),
                    format!(
                        "{} is out of range; allowed above 0 up to {}",
                        c.params_billions,
                        limits::PARAMS_BILLIONS_MAX
                    ),
                );
            }
        }
        for (key, value) in [
            ("activations_gb", self.activations_gb),
            ("vae_decode_gb", self.vae_decode_gb),
            ("overhead_gb", self.overhead_gb),
        ] {
            if !(value.is_finite() && (0.0..=limits::MAX_VRAM_GB).contains(&value)) {
                return bad(
                    format!("{prefix}.{key}"),
                    format!("{value} is out of range; allowed 0 to {}", limits::MAX_VRAM_GB),
                );
            }
        }
        if let Err(message) = limits::check_tile_size(self.vae_reference_tile_size) {
            return bad(format!("{prefix}.vae_reference_tile_size"), message);
        }
        Ok(())
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

//! The VRAM estimate of one generation (SPEC §4.3) and the search for setting changes that make
//! a job fit. Pure functions of the workload profile, the settings, the observed peaks of
//! finished generations and a view of the GPUs.
//!
//! The phase model ([`super::phases`]) is the fallback; [`super::search`] looks for changes that
//! make a job fit. With at least
//! `learning.min_samples` observations of the same key (profile, quantization, offload, tile,
//! `model_loaded`) among the newest `learning.window`, the estimate is the highest observed peak
//! plus `learning.margin`; recommendations then scale the model's savings by observed / model.
//! A job that died of out-of-memory needed more than its peak: it counts as peak ×
//! (1 + `learning.oom_margin`), and one such observation in the window is enough, never below
//! the model.

use serde::{Deserialize, Serialize};

use crate::config::{LearningConfig, Optimization, Quantization, Workload};

use super::phases::Geometry;

/// Bytes a parameter takes in VRAM. bf16 and fp16 are both 2 bytes: bf16 trades mantissa for
/// exponent range, not memory (the seed claimed otherwise).
pub(crate) fn bytes_per_param(q: Quantization) -> f64 {
    match q {
        Quantization::Fp16 | Quantization::Bf16 => 2.0,
        Quantization::Int8 => 1.0,
    }
}

pub(crate) use super::phases::need_gb;

/// What a generation is estimated under: the key of an observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateKey {
    /// Workload profile name (`default` unless the request named one).
    pub workload: String,
    /// The optimization settings in force (`max_vram_usage_gb` is not part of the key).
    pub settings: Optimization,
    /// The worker already held its model.
    pub model_loaded: bool,
    /// The video's size; `None` (keys recorded before sizes were asked for): the profile's own.
    #[serde(default)]
    pub geometry: Option<Geometry>,
}

impl Default for EstimateKey {
    /// The default profile under the default settings, without `model_loaded`: what a lease
    /// stored before wave 2 is taken to have been granted under.
    fn default() -> Self {
        Self {
            workload: crate::config::DEFAULT_WORKLOAD.to_owned(),
            settings: Optimization::default(),
            model_loaded: false,
            geometry: None,
        }
    }
}

impl EstimateKey {
    /// Same profile, quantization, offload, tiling, `model_loaded` and video size (`None` is
    /// `profile_size`, the profile's own).
    pub fn same(&self, other: &EstimateKey, profile_size: Geometry) -> bool {
        self.workload == other.workload
            && self.model_loaded == other.model_loaded
            && self.settings.quantization == other.settings.quantization
            && self.settings.enable_offload == other.settings.enable_offload
            && self.settings.vae_tiling == other.settings.vae_tiling
            && (!self.settings.vae_tiling || self.settings.vae_tile_size == other.settings.vae_tile_size)
            && self.geometry.unwrap_or(profile_size) == other.geometry.unwrap_or(profile_size)
    }

    /// The video size this key stands for.
    pub fn size(&self, workload: &Workload) -> Geometry {
        self.geometry.unwrap_or_else(|| Geometry::of(workload))
    }
}

/// One observed peak of a finished generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// GiB.
    pub gb: f64,
    /// The job died of out-of-memory at this peak.
    pub oom: bool,
}

/// Where an estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateSource {
    /// The workload model.
    Model,
    /// Observed peaks of finished generations.
    Observed,
}

impl EstimateSource {
    /// The API's and the metric label's word.
    pub fn as_str(self) -> &'static str {
        match self {
            EstimateSource::Model => "model",
            EstimateSource::Observed => "observed",
        }
    }
}

/// The estimate of one generation's VRAM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// GiB.
    pub gb: f64,
    /// Model or observed.
    pub source: EstimateSource,
    /// Observations of the key among the newest `learning.window` (0 for the model).
    pub samples: usize,
    /// Observed / model (1 for the model): scales the model's savings in recommendations.
    pub scale: f64,
}

/// The estimate for `key` from `observed` (key and peak, newest first), else the model.
pub(crate) fn estimate(
    workload: &Workload,
    key: &EstimateKey,
    observed: &[(EstimateKey, Peak)],
    learning: &LearningConfig,
) -> Estimate {
    let size = key.size(workload);
    let model = need_gb(workload, &key.settings, key.model_loaded, size);
    let peaks: Vec<Peak> =
        observed.iter().filter(|(k, _)| k.same(key, size)).take(learning.window as usize).map(|(_, p)| *p).collect();
    let oom = peaks.iter().any(|p| p.oom);
    if (peaks.len() < learning.min_samples as usize && !oom) || peaks.is_empty() {
        return Estimate { gb: model, source: EstimateSource::Model, samples: peaks.len(), scale: 1.0 };
    }
    let top = peaks.iter().map(|p| if p.oom { p.gb * (1.0 + learning.oom_margin) } else { p.gb }).fold(0.0, f64::max);
    let mut gb = top * (1.0 + learning.margin);
    if oom {
        // Out of memory says "more than this", not how much: the model's figure stands if larger.
        gb = gb.max(model);
    }
    if !learning.below_min_ratio.contains(&key.workload) {
        // Evidence may lower the model's figure, not talk it down to nothing.
        gb = gb.max(learning.min_ratio * model);
    }
    let scale = if model > 0.0 { gb / model } else { 1.0 };
    Estimate { gb, source: EstimateSource::Observed, samples: peaks.len(), scale }
}

/// The settings that savings are measured against: fp16, no offload, tile 512.
pub(crate) fn baseline(settings: &Optimization) -> Optimization {
    Optimization { quantization: Quantization::Fp16, enable_offload: false, vae_tile_size: 512, ..*settings }
}

/// How much the current settings save against the baseline for a job of `geometry`, GiB.
pub(crate) fn savings_gb(workload: &Workload, settings: &Optimization, geometry: Geometry) -> f64 {
    need_gb(workload, &baseline(settings), false, geometry) - need_gb(workload, settings, false, geometry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::profiles;

    fn workload() -> Workload {
        profiles::builtin("wan2.2-ti2v-5b").unwrap()
    }

    fn size() -> Geometry {
        Geometry::of(&workload())
    }

    fn settings(q: Quantization, offload: bool, tile: u32) -> Optimization {
        Optimization { quantization: q, enable_offload: offload, vae_tile_size: tile, ..Optimization::default() }
    }

    fn key() -> EstimateKey {
        EstimateKey { workload: "default".to_owned(), ..EstimateKey::default() }
    }

    #[test]
    fn bf16_and_fp16_save_the_same_and_int8_saves_more() {
        let w = workload();
        let fp16 = savings_gb(&w, &settings(Quantization::Fp16, false, 512), size());
        let bf16 = savings_gb(&w, &settings(Quantization::Bf16, false, 512), size());
        let int8 = savings_gb(&w, &settings(Quantization::Int8, false, 512), size());
        assert_eq!(fp16, 0.0);
        assert_eq!(bf16, fp16);
        // Without offload every weight is resident: int8 halves the transformer's and the text
        // encoder's bytes (5.00e9 + 5.68e9 parameters save as many bytes).
        assert!((int8 - 10.68e9 / crate::units::GIB).abs() < 1e-9, "{int8}");
    }

    #[test]
    fn tiles_bound_the_decode() {
        let w = workload();
        let whole = need_gb(&w, &Optimization { vae_tiling: false, ..Optimization::default() }, false, size());
        let t512 = need_gb(&w, &settings(Quantization::Bf16, true, 512), false, size());
        let t256 = need_gb(&w, &settings(Quantization::Bf16, true, 256), false, size());
        assert!(whole > t512 && t512 >= t256, "{whole} {t512} {t256}");
    }

    #[test]
    fn shipped_profile_fits_the_default_budget() {
        let c = crate::config::Config::default();
        let need = need_gb(&c.workload, &c.optimization, false, Geometry::of(&c.workload));
        assert!(need <= c.optimization.max_vram_usage_gb, "{need}");
        // With tiling it fits a 24 GiB card below 95 %; Wan's whole-frame decode does not.
        assert!(need < 0.95 * 24.0 - 0.5, "{need}");
        let whole = need_gb(
            &c.workload,
            &Optimization { vae_tiling: false, ..c.optimization },
            false,
            Geometry::of(&c.workload),
        );
        assert!(whole > 0.95 * 24.0 - 0.5, "{whole}");
    }

    #[test]
    fn observed_peaks_replace_the_model_from_min_samples() {
        let w = workload();
        let key = key();
        let learning = LearningConfig::default();
        let other = EstimateKey { model_loaded: true, ..key.clone() };
        let mut seen = vec![(key.clone(), ok(13.0)), (other.clone(), ok(30.0)), (key.clone(), ok(10.0))];
        let e = estimate(&w, &key, &seen, &learning);
        assert_eq!((e.source, e.samples), (EstimateSource::Model, 2));
        assert_eq!(e.gb, need_gb(&w, &key.settings, false, size()));
        seen.push((key.clone(), ok(9.5)));
        let e = estimate(&w, &key, &seen, &learning);
        assert_eq!((e.source, e.samples), (EstimateSource::Observed, 3));
        assert!((e.gb - 14.3).abs() < 1e-9, "{}", e.gb);
        // Only the newest `window` count (with no floor under the learned figure).
        let narrow = LearningConfig { window: 3, min_samples: 2, min_ratio: 0.0, ..learning };
        let e = estimate(
            &w,
            &key,
            &[(key.clone(), ok(5.0)), (key.clone(), ok(6.0)), (key.clone(), ok(7.0)), (key.clone(), ok(20.0))],
            &narrow,
        );
        assert_eq!(e.samples, 3);
        assert!((e.gb - 7.7).abs() < 1e-9);
    }

    /// Issue #23, must show 4: runs at another size do not teach this size's estimate; a key
    /// without a size stands for the profile's own.
    #[test]
    fn learned_estimates_are_kept_per_video_size() {
        let w = profiles::builtin("wan2.2-t2v-a14b").unwrap();
        let p480 = Geometry { width: 832, height: 480, frames: 81 };
        let at = |g: Geometry| EstimateKey { geometry: Some(g), ..key() };
        let runs = vec![(at(Geometry::of(&w)), ok(61.0)); 3];
        let learning = LearningConfig::default();
        let e480 = estimate(&w, &at(p480), &runs, &learning);
        assert_eq!((e480.source, e480.samples), (EstimateSource::Model, 0));
        assert_eq!(e480.gb, need_gb(&w, &key().settings, false, p480));
        let e720 = estimate(&w, &EstimateKey { geometry: None, ..key() }, &runs, &learning);
        assert_eq!(e720.source, EstimateSource::Observed);
    }

    /// Issue #27: peaks talked down (three of 0.01 GiB) leave the estimate at `min_ratio` of the
    /// model, unless an admin lets that profile go below it.
    #[test]
    fn a_learned_estimate_is_never_below_min_ratio_of_the_model() {
        let w = workload();
        let key = key();
        let model = need_gb(&w, &key.settings, false, size());
        let tiny = vec![(key.clone(), ok(0.01)); 3];
        let learning = LearningConfig::default();
        assert_eq!(estimate(&w, &key, &tiny, &learning).gb, 0.5 * model);
        let trusted = LearningConfig { below_min_ratio: vec!["default".to_owned()], ..learning };
        assert!(estimate(&w, &key, &tiny, &trusted).gb < 0.1);
    }

    fn ok(gb: f64) -> Peak {
        Peak { gb, oom: false }
    }

    /// Issue #22: one out-of-memory end at 10 GiB lifts the estimate to at least 12.5 GiB at once,
    /// and never below the model.
    #[test]
    fn one_out_of_memory_end_raises_the_estimate_at_once() {
        let w = workload();
        let key = key();
        let learning = LearningConfig { margin: 0.0, ..LearningConfig::default() };
        let model = need_gb(&w, &key.settings, false, size());
        let big = model + 10.0;
        let e = estimate(&w, &key, &[(key.clone(), Peak { gb: big, oom: true })], &learning);
        assert_eq!((e.source, e.samples), (EstimateSource::Observed, 1));
        assert!((e.gb - big * 1.25).abs() < 1e-9, "{}", e.gb);
        let small = estimate(&w, &key, &[(key.clone(), Peak { gb: 1.0, oom: true })], &learning);
        assert_eq!(small.gb, model, "an OOM at a low peak does not talk the model down");
        // Among finished runs, the OOM's peak counts with its margin.
        let mixed = [(key.clone(), ok(big + 1.0)), (key.clone(), Peak { gb: big, oom: true }), (key.clone(), ok(2.0))];
        assert!((estimate(&w, &key, &mixed, &learning).gb - big * 1.25).abs() < 1e-9);
    }
}

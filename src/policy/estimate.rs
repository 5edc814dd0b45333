//! The VRAM estimate of one generation (SPEC §4.3) and the search for setting changes that make
//! a job fit. Pure functions of the workload profile, the settings, the observed peaks of
//! finished generations and a view of the GPUs.
//!
//! The model (weights + activations + VAE decode + overhead) is the fallback. With at least
//! `learning.min_samples` observations of the same key (profile, quantization, offload, tile,
//! `model_loaded`) among the newest `learning.window`, the estimate is the highest observed peak
//! plus `learning.margin`; recommendations then scale the model's savings by observed / model.
//! A job that died of out-of-memory needed more than its peak: it counts as peak ×
//! (1 + `learning.oom_margin`), and one such observation in the window is enough, never below
//! the model.

use serde::{Deserialize, Serialize};

use crate::config::{LearningConfig, Optimization, Quantization, Workload};

use super::GpuView;
use super::verdict::fits_under;
use crate::units::GIB;

/// Bytes a parameter takes in VRAM. bf16 and fp16 are both 2 bytes: bf16 trades mantissa for
/// exponent range, not memory (the seed claimed otherwise).
pub(crate) fn bytes_per_param(q: Quantization) -> f64 {
    match q {
        Quantization::Fp16 | Quantization::Bf16 => 2.0,
        Quantization::Int8 => 1.0,
    }
}

/// Weights of the components left on the GPU, GiB.
pub(crate) fn weights_gb(workload: &Workload, settings: &Optimization) -> f64 {
    workload
        .components
        .iter()
        .filter(|c| !(settings.enable_offload && c.offloadable))
        .map(|c| c.params_billions * 1e9 * bytes_per_param(settings.quantization) / GIB)
        .sum()
}

/// VAE decode memory at the configured tile size, GiB (scales with tile area).
pub(crate) fn vae_gb(workload: &Workload, settings: &Optimization) -> f64 {
    let ratio = f64::from(settings.vae_tile_size) / f64::from(workload.vae_reference_tile_size);
    workload.vae_decode_gb * ratio * ratio
}

/// VRAM one generation needs, GiB. A worker that already holds its model (`model_loaded`)
/// needs only activations, VAE decode and overhead.
pub(crate) fn need_gb(workload: &Workload, settings: &Optimization, model_loaded: bool) -> f64 {
    let weights = if model_loaded { 0.0 } else { weights_gb(workload, settings) };
    weights + workload.activations_gb + vae_gb(workload, settings) + workload.overhead_gb
}

/// What a generation is estimated under: the key of an observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateKey {
    /// Workload profile name (`default` unless the request named one).
    pub workload: String,
    /// The optimization settings in force (`max_vram_usage_gb` is not part of the key).
    pub settings: Optimization,
    /// The worker already held its model.
    pub model_loaded: bool,
}

impl Default for EstimateKey {
    /// The default profile under the default settings, without `model_loaded`: what a lease
    /// stored before wave 2 is taken to have been granted under.
    fn default() -> Self {
        Self {
            workload: crate::config::DEFAULT_WORKLOAD.to_owned(),
            settings: Optimization::default(),
            model_loaded: false,
        }
    }
}

impl EstimateKey {
    /// Same profile, quantization, offload, tile and `model_loaded`.
    pub fn same(&self, other: &EstimateKey) -> bool {
        self.workload == other.workload
            && self.model_loaded == other.model_loaded
            && self.settings.quantization == other.settings.quantization
            && self.settings.enable_offload == other.settings.enable_offload
            && self.settings.vae_tile_size == other.settings.vae_tile_size
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
    let model = need_gb(workload, &key.settings, key.model_loaded);
    let peaks: Vec<Peak> =
        observed.iter().filter(|(k, _)| k.same(key)).take(learning.window as usize).map(|(_, p)| *p).collect();
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
    let scale = if model > 0.0 { gb / model } else { 1.0 };
    Estimate { gb, source: EstimateSource::Observed, samples: peaks.len(), scale }
}

/// The settings that savings are measured against: fp16, no offload, tile 512.
pub(crate) fn baseline(settings: &Optimization) -> Optimization {
    Optimization { quantization: Quantization::Fp16, enable_offload: false, vae_tile_size: 512, ..*settings }
}

/// How much the current settings save against the baseline, GiB.
pub(crate) fn savings_gb(workload: &Workload, settings: &Optimization) -> f64 {
    need_gb(workload, &baseline(settings), false) - need_gb(workload, settings, false)
}

/// One setting change the search may propose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Offload,
    SmallerTile(u32),
    Int8,
}

impl Change {
    fn label(self) -> String {
        match self {
            Change::Offload => "Enable model offloading".to_owned(),
            Change::SmallerTile(t) => format!("Reduce VAE tile size to {t}"),
            Change::Int8 => "Switch to int8 quantization".to_owned(),
        }
    }

    fn cost(self) -> &'static str {
        match self {
            Change::Offload => "slower steps",
            Change::SmallerTile(_) => "slower VAE decode",
            Change::Int8 => "possible quality loss",
        }
    }

    fn apply(self, s: &mut Optimization) {
        match self {
            Change::Offload => s.enable_offload = true,
            Change::SmallerTile(t) => s.vae_tile_size = t,
            Change::Int8 => s.quantization = Quantization::Int8,
        }
    }
}

fn available_changes(s: &Optimization) -> Vec<Change> {
    let mut out = Vec::new();
    if !s.enable_offload {
        out.push(Change::Offload);
    }
    if s.vae_tile_size > 128 {
        out.push(Change::SmallerTile((s.vae_tile_size / 2).max(128)));
    }
    if s.quantization != Quantization::Int8 {
        out.push(Change::Int8);
    }
    out
}

/// What the search found for one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The sentence shown to the client.
    pub text: String,
    /// VRAM it saves, GiB.
    pub saves_gb: f64,
    /// Whether the job would then fit (GPU under the critical threshold and within the budget).
    pub fits: bool,
}

/// Tries each single change and each pair against the live GPUs and says what each saves, what
/// it costs and whether the job would then fit. `required_gb` is what the job needs now (the
/// estimate, or the client's own figure, from which a change's saving is subtracted).
pub fn search(
    workload: &Workload,
    settings: &Optimization,
    model_loaded: bool,
    required_gb: f64,
    gpus: &[GpuView],
    critical: f64,
) -> Vec<Recommendation> {
    search_scaled(workload, settings, model_loaded, required_gb, gpus, critical, 1.0)
}

/// [`search`] with the model's savings multiplied by `scale` (observed / model).
pub(crate) fn search_scaled(
    workload: &Workload,
    settings: &Optimization,
    model_loaded: bool,
    required_gb: f64,
    gpus: &[GpuView],
    critical: f64,
    scale: f64,
) -> Vec<Recommendation> {
    let current = need_gb(workload, settings, model_loaded);
    let singles = available_changes(settings);
    let mut combos: Vec<Vec<Change>> = singles.iter().map(|c| vec![*c]).collect();
    for (i, a) in singles.iter().enumerate() {
        for b in &singles[i + 1..] {
            combos.push(vec![*a, *b]);
        }
    }
    let mut found: Vec<(usize, Recommendation)> = Vec::new();
    for combo in combos {
        let mut s = *settings;
        for c in &combo {
            c.apply(&mut s);
        }
        let saves = scale * (current - need_gb(workload, &s, model_loaded));
        if saves < 0.05 {
            continue;
        }
        let after = (required_gb - saves).max(0.0);
        let within_budget = after <= settings.max_vram_usage_gb;
        let label = combo.iter().map(|c| c.label()).collect::<Vec<_>>().join(" + ");
        let cost = combo.iter().map(|c| c.cost()).collect::<Vec<_>>().join(" and ");
        let (fits, outcome) = match super::best_gpu(gpus) {
            Some(g) => {
                let projected = g.projected(after);
                let gpu_fits = fits_under(projected, critical);
                let verdict = match (gpu_fits, within_budget) {
                    (true, true) => "fits".to_owned(),
                    (true, false) => format!("over max_vram_usage_gb {:.1}", settings.max_vram_usage_gb),
                    _ => "does not fit".to_owned(),
                };
                (gpu_fits && within_budget, format!("projected VRAM {:.0}% ({verdict})", projected * 100.0))
            }
            None => (false, format!("needs {after:.1} GB (no GPU visible)")),
        };
        found.push((
            combo.len(),
            Recommendation { text: format!("{label}: saves ~{saves:.1} GB, {cost}; {outcome}"), saves_gb: saves, fits },
        ));
    }
    // What fits first; among those the fewest changes (least cost), then the biggest saving.
    found.sort_by(|(na, a), (nb, b)| b.fits.cmp(&a.fits).then(na.cmp(nb)).then(b.saves_gb.total_cmp(&a.saves_gb)));
    found.into_iter().map(|(_, r)| r).take(4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Component;

    fn workload() -> Workload {
        Workload {
            name: "test".to_owned(),
            components: vec![
                Component { name: "transformer".to_owned(), params_billions: 5.0, offloadable: false },
                Component { name: "text encoder".to_owned(), params_billions: 5.7, offloadable: true },
            ],
            activations_gb: 1.0,
            vae_decode_gb: 0.75,
            vae_reference_tile_size: 256,
            overhead_gb: 0.75,
        }
    }

    fn settings(q: Quantization, offload: bool, tile: u32) -> Optimization {
        Optimization { quantization: q, enable_offload: offload, vae_tile_size: tile, max_vram_usage_gb: 24.0 }
    }

    #[test]
    fn bf16_and_fp16_save_the_same_and_int8_saves_more() {
        let w = workload();
        let fp16 = savings_gb(&w, &settings(Quantization::Fp16, false, 512));
        let bf16 = savings_gb(&w, &settings(Quantization::Bf16, false, 512));
        let int8 = savings_gb(&w, &settings(Quantization::Int8, false, 512));
        assert_eq!(fp16, 0.0);
        assert_eq!(bf16, fp16);
        // int8 halves the weight bytes: 10.7e9 parameters save 10.7e9 bytes.
        assert!((int8 - 10.7e9 / GIB).abs() < 1e-9, "{int8}");
    }

    #[test]
    fn offload_subtracts_the_offloadable_components() {
        let w = workload();
        let on = need_gb(&w, &settings(Quantization::Bf16, true, 256), false);
        let off = need_gb(&w, &settings(Quantization::Bf16, false, 256), false);
        assert!((off - on - 5.7e9 * 2.0 / GIB).abs() < 1e-9);
    }

    #[test]
    fn tile_memory_scales_with_area() {
        let w = workload();
        let t128 = vae_gb(&w, &settings(Quantization::Bf16, true, 128));
        let t256 = vae_gb(&w, &settings(Quantization::Bf16, true, 256));
        let t512 = vae_gb(&w, &settings(Quantization::Bf16, true, 512));
        assert_eq!(t256, 0.75);
        assert_eq!(t512, 4.0 * t256);
        assert_eq!(t128, t256 / 4.0);
    }

    #[test]
    fn model_loaded_leaves_out_the_weights() {
        let w = workload();
        let s = settings(Quantization::Bf16, true, 256);
        assert!((need_gb(&w, &s, true) - (1.0 + 0.75 + 0.75)).abs() < 1e-12);
    }

    #[test]
    fn shipped_profile_fits_the_default_budget() {
        let c = crate::config::Config::default();
        let need = need_gb(&c.workload, &c.optimization, false);
        assert!(need <= c.optimization.max_vram_usage_gb, "{need}");
        // The calibration the config.yaml comment states.
        let full = need_gb(&c.workload, &baseline(&c.optimization), false);
        assert!(full > 24e9 / GIB, "{full}");
        let offloaded_512 = need_gb(&c.workload, &Optimization { vae_tile_size: 512, ..c.optimization }, false);
        assert!(offloaded_512 < 22.0, "{offloaded_512}");
    }

    fn gpu(total_gb: f64, used_gb: f64) -> GpuView {
        GpuView { index: 0, uuid: "GPU-0".to_owned(), total_gb, used_gb, reserved_gb: 0.0 }
    }

    #[test]
    fn observed_peaks_replace_the_model_from_min_samples() {
        let w = workload();
        let key =
            EstimateKey { workload: "default".to_owned(), settings: Optimization::default(), model_loaded: false };
        let learning = LearningConfig::default();
        let other = EstimateKey { model_loaded: true, ..key.clone() };
        let mut seen = vec![(key.clone(), ok(13.0)), (other.clone(), ok(30.0)), (key.clone(), ok(10.0))];
        let e = estimate(&w, &key, &seen, &learning);
        assert_eq!((e.source, e.samples), (EstimateSource::Model, 2));
        assert_eq!(e.gb, need_gb(&w, &key.settings, false));
        seen.push((key.clone(), ok(9.5)));
        let e = estimate(&w, &key, &seen, &learning);
        assert_eq!((e.source, e.samples), (EstimateSource::Observed, 3));
        assert!((e.gb - 14.3).abs() < 1e-9, "{}", e.gb);
        // Only the newest `window` count.
        let narrow = LearningConfig { window: 3, min_samples: 2, ..learning };
        let e = estimate(
            &w,
            &key,
            &[(key.clone(), ok(5.0)), (key.clone(), ok(6.0)), (key.clone(), ok(7.0)), (key.clone(), ok(20.0))],
            &narrow,
        );
        assert_eq!(e.samples, 3);
        assert!((e.gb - 7.7).abs() < 1e-9);
    }

    fn ok(gb: f64) -> Peak {
        Peak { gb, oom: false }
    }

    /// Issue #22: one out-of-memory end at 10 GiB lifts the estimate to at least 12.5 GiB at once,
    /// and never below the model.
    #[test]
    fn one_out_of_memory_end_raises_the_estimate_at_once() {
        let w = workload();
        let key =
            EstimateKey { workload: "default".to_owned(), settings: Optimization::default(), model_loaded: false };
        let learning = LearningConfig { margin: 0.0, ..LearningConfig::default() };
        let model = need_gb(&w, &key.settings, false);
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

    #[test]
    fn search_reports_savings_costs_and_fit() {
        let w = workload();
        let s = settings(Quantization::Fp16, false, 512);
        let need = need_gb(&w, &s, false); // 24.68 GiB
        let recs = search(&w, &s, false, need, &[gpu(24.0, 2.0)], 0.95);
        assert!(!recs.is_empty());
        // The first one fits, and offload alone (saving 10.6 GiB) is a single change that fits.
        assert!(recs[0].fits, "{recs:?}");
        let offload = recs.iter().find(|r| r.text.starts_with("Enable model offloading:")).expect("offload");
        assert!(offload.text.contains("saves ~10.6 GB, slower steps; projected VRAM"), "{}", offload.text);
        assert!(offload.text.ends_with("(fits)"), "{}", offload.text);
        // Singles before pairs among the fitting ones.
        let first_pair = recs.iter().position(|r| r.text.contains(" + "));
        if let Some(p) = first_pair {
            assert!(recs[..p].iter().all(|r| r.fits) || !recs[p].fits);
        }
    }

    #[test]
    fn search_says_when_nothing_fits() {
        let w = workload();
        let s = settings(Quantization::Bf16, true, 128);
        let need = need_gb(&w, &s, false);
        let recs = search(&w, &s, false, need, &[gpu(8.0, 6.0)], 0.95);
        assert_eq!(recs.len(), 1, "{recs:?}"); // only int8 is left to try
        assert!(recs[0].text.starts_with("Switch to int8 quantization: saves ~4.7 GB, possible quality loss"));
        assert!(recs[0].text.ends_with("(does not fit)"), "{}", recs[0].text);
        assert!(!recs[0].fits);
    }
}

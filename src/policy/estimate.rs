//! The VRAM estimate of one generation (SPEC §4.3) and the search for setting changes that make
//! a job fit. Pure functions of the workload profile, the settings, the observed peaks of
//! finished generations and a view of the GPUs.
//!
//! The phase model ([`super::phases`]) is the fallback. With at least
//! `learning.min_samples` observations of the same key (profile, quantization, offload, tile,
//! `model_loaded`) among the newest `learning.window`, the estimate is the highest observed peak
//! plus `learning.margin`; recommendations then scale the model's savings by observed / model.
//! A job that died of out-of-memory needed more than its peak: it counts as peak ×
//! (1 + `learning.oom_margin`), and one such observation in the window is enough, never below
//! the model.

use serde::{Deserialize, Serialize};

use crate::config::{LearningConfig, Optimization, Quantization, Workload};

use super::GpuView;
use super::phases::{self, Geometry};
use super::verdict::fits_under;

/// Bytes a parameter takes in VRAM. bf16 and fp16 are both 2 bytes: bf16 trades mantissa for
/// exponent range, not memory (the seed claimed otherwise).
pub(crate) fn bytes_per_param(q: Quantization) -> f64 {
    match q {
        Quantization::Fp16 | Quantization::Bf16 => 2.0,
        Quantization::Int8 => 1.0,
    }
}

/// VRAM one generation of `workload` at `geometry` needs, GiB (the phase model).
pub(crate) fn need_gb(workload: &Workload, settings: &Optimization, model_loaded: bool, geometry: Geometry) -> f64 {
    phases::need_gb(workload, settings, model_loaded, geometry)
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

/// What a job is: the settings it runs under and the video it renders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Job {
    /// The live optimization settings.
    pub settings: Optimization,
    /// The video's size.
    pub geometry: Geometry,
    /// The request named the size: the search may then offer a smaller video too.
    pub sized: bool,
}

/// One change the search may propose: a setting, or (for a request that named its size) the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Offload,
    SmallerTile(u32),
    Tiling,
    Int8,
    Resolution(u32, u32),
    Frames(u32),
}

impl Change {
    fn label(self, job: &Job) -> String {
        match self {
            Change::Offload => "Enable model offloading".to_owned(),
            Change::SmallerTile(t) => format!("Reduce VAE tile size to {t}"),
            Change::Tiling => format!("Enable VAE tiling (tile {})", job.settings.vae_tile_size),
            Change::Int8 => "Switch to int8 quantization".to_owned(),
            Change::Resolution(w, h) => format!("Render at {w}×{h}"),
            Change::Frames(f) => format!("Render {f} frames instead of {}", job.geometry.frames),
        }
    }

    fn cost(self) -> Option<&'static str> {
        match self {
            Change::Offload => Some("slower steps"),
            Change::SmallerTile(_) | Change::Tiling => Some("slower VAE decode"),
            Change::Int8 => Some("possible quality loss"),
            Change::Resolution(..) | Change::Frames(_) => None,
        }
    }

    /// A smaller video costs what the job was for: offered after every setting.
    fn changes_the_job(self) -> bool {
        matches!(self, Change::Resolution(..) | Change::Frames(_))
    }

    fn apply(self, job: &mut Job) {
        match self {
            Change::Offload => job.settings.enable_offload = true,
            Change::SmallerTile(t) => job.settings.vae_tile_size = t,
            Change::Tiling => job.settings.vae_tiling = true,
            Change::Int8 => job.settings.quantization = Quantization::Int8,
            Change::Resolution(w, h) => (job.geometry.width, job.geometry.height) = (w, h),
            Change::Frames(f) => job.geometry.frames = f,
        }
    }
}

/// 480P, Wan's smaller size: 832×480 (or 480×832 upright).
const SMALLER_SIDES: (u32, u32) = (832, 480);

fn available_changes(job: &Job) -> Vec<Change> {
    let s = &job.settings;
    let mut out = Vec::new();
    if !s.enable_offload {
        out.push(Change::Offload);
    }
    if !s.vae_tiling {
        out.push(Change::Tiling);
    } else if s.vae_tile_size > 128 {
        out.push(Change::SmallerTile((s.vae_tile_size / 2).max(128)));
    }
    if s.quantization != Quantization::Int8 {
        out.push(Change::Int8);
    }
    if job.sized {
        let g = job.geometry;
        let (long, short) = SMALLER_SIDES;
        let (w, h) = if g.width >= g.height { (long, short) } else { (short, long) };
        if u64::from(w) * u64::from(h) < u64::from(g.width) * u64::from(g.height) {
            out.push(Change::Resolution(w, h));
        }
        // About five eighths of the frames, kept at 4k + 1 as Wan's VAE takes them (81 → 49).
        let target = (g.frames * 5).div_ceil(8);
        let fewer = (target.saturating_sub(1) / 4) * 4 + 1;
        if fewer < g.frames {
            out.push(Change::Frames(fewer));
        }
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
    job: &Job,
    model_loaded: bool,
    required_gb: f64,
    gpus: &[GpuView],
    critical: f64,
) -> Vec<Recommendation> {
    search_scaled(workload, job, model_loaded, required_gb, gpus, critical, 1.0)
}

/// [`search`] with the model's savings multiplied by `scale` (observed / model).
pub(crate) fn search_scaled(
    workload: &Workload,
    job: &Job,
    model_loaded: bool,
    required_gb: f64,
    gpus: &[GpuView],
    critical: f64,
    scale: f64,
) -> Vec<Recommendation> {
    let need = |j: &Job| need_gb(workload, &j.settings, model_loaded, j.geometry);
    let current = need(job);
    let singles = available_changes(job);
    let mut combos: Vec<Vec<Change>> = singles.iter().map(|c| vec![*c]).collect();
    for (i, a) in singles.iter().enumerate() {
        for b in &singles[i + 1..] {
            combos.push(vec![*a, *b]);
        }
    }
    let max_gb = job.settings.max_vram_usage_gb;
    let mut found: Vec<(bool, usize, Recommendation)> = Vec::new();
    for combo in combos {
        let mut changed = *job;
        for c in &combo {
            c.apply(&mut changed);
        }
        let saves = scale * (current - need(&changed));
        if saves < 0.05 {
            continue;
        }
        let after = (required_gb - saves).max(0.0);
        let within_budget = after <= max_gb;
        let label = combo.iter().map(|c| c.label(job)).collect::<Vec<_>>().join(" + ");
        let costs: Vec<&str> = combo.iter().filter_map(|c| c.cost()).collect();
        let cost = if costs.is_empty() { String::new() } else { format!(", {}", costs.join(" and ")) };
        let (fits, outcome) = match super::best_gpu(gpus) {
            Some(g) => {
                let projected = g.projected(after);
                let gpu_fits = fits_under(projected, critical);
                let verdict = match (gpu_fits, within_budget) {
                    (true, true) => "fits".to_owned(),
                    (true, false) => format!("over max_vram_usage_gb {max_gb:.1}"),
                    _ => "does not fit".to_owned(),
                };
                (gpu_fits && within_budget, format!("projected VRAM {:.0}% ({verdict})", projected * 100.0))
            }
            None => (false, format!("needs {after:.1} GB (no GPU visible)")),
        };
        let smaller_job = combo.iter().any(|c| c.changes_the_job());
        found.push((
            smaller_job,
            combo.len(),
            Recommendation { text: format!("{label}: saves ~{saves:.1} GB{cost}; {outcome}"), saves_gb: saves, fits },
        ));
    }
    // What fits first; then settings before a smaller video (cheaper in quality last); then
    // the fewest changes (least cost), then the biggest saving.
    found.sort_by(|(ja, na, a), (jb, nb, b)| {
        b.fits.cmp(&a.fits).then(ja.cmp(jb)).then(na.cmp(nb)).then(b.saves_gb.total_cmp(&a.saves_gb))
    });
    found.into_iter().map(|(_, _, r)| r).take(4).collect()
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

    fn gpu(total_gb: f64, used_gb: f64) -> GpuView {
        GpuView { index: 0, uuid: "GPU-0".to_owned(), total_gb, used_gb, reserved_gb: 0.0 }
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

    fn job(s: Optimization, sized: bool) -> Job {
        Job { settings: s, geometry: size(), sized }
    }

    #[test]
    fn search_reports_savings_costs_and_fit() {
        let w = workload();
        let s = settings(Quantization::Fp16, false, 512);
        let need = need_gb(&w, &s, false, size());
        let recs = search(&w, &job(s, false), false, need, &[gpu(24.0, 2.0)], 0.95);
        assert!(!recs.is_empty());
        assert!(recs[0].fits, "{recs:?}");
        let offload = recs.iter().find(|r| r.text.starts_with("Enable model offloading")).expect("offload");
        assert!(offload.text.contains("slower steps; projected VRAM"), "{}", offload.text);
        assert!(recs.iter().all(|r| !r.text.contains("Render")), "no smaller video unless the size was asked");
    }

    /// A request that named its size may be offered a smaller video, after every setting.
    #[test]
    fn a_smaller_video_is_offered_last() {
        let w = profiles::builtin("wan2.2-t2v-a14b").unwrap();
        let s = Optimization { vae_tiling: false, ..Optimization::default() };
        let j = Job { settings: s, geometry: Geometry::of(&w), sized: true };
        let need = need_gb(&w, &s, false, j.geometry);
        let recs = search(&w, &j, false, need, &[gpu(48.0, 0.0)], 0.95);
        let at480 = recs.iter().position(|r| r.text.starts_with("Render at 832×480: saves ~")).expect("480P");
        assert!(recs[at480].fits && recs[at480].text.ends_with("(fits)"), "{recs:?}");
        assert!(recs[..at480].iter().all(|r| !r.text.contains("Render") && r.fits), "{recs:?}");
        let frames = available_changes(&j);
        assert!(frames.contains(&Change::Frames(49)), "{frames:?}");
    }

    #[test]
    fn search_says_when_nothing_fits() {
        let w = workload();
        let s = settings(Quantization::Bf16, true, 128);
        let need = need_gb(&w, &s, false, size());
        let recs = search(&w, &job(s, false), false, need, &[gpu(8.0, 6.0)], 0.95);
        assert_eq!(recs.len(), 1, "{recs:?}"); // only int8 is left to try
        assert!(recs[0].text.starts_with("Switch to int8 quantization: saves ~"), "{}", recs[0].text);
        assert!(recs[0].text.ends_with("(does not fit)"), "{}", recs[0].text);
        assert!(!recs[0].fits);
    }
}

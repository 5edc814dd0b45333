//! The search for changes that make a job fit: each setting change (offload, VAE tiling or a
//! smaller tile, int8) and, for a request that named its video's size, a smaller video, alone and
//! in pairs, each with what it saves, what it costs and whether the job would then fit.

use std::fmt::Write as _;

use super::GpuView;
use super::estimate::need_gb;
use super::phases::Geometry;
use super::verdict::fits_under;
use crate::config::{Optimization, Quantization, Workload};
use crate::units::{dec0, dec1};

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
    /// Writes what the change does onto `text`.
    fn label(self, job: &Job, text: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self {
            Change::Offload => text.write_str("Enable model offloading"),
            Change::SmallerTile(t) => write!(text, "Reduce VAE tile size to {t}"),
            Change::Tiling => write!(text, "Enable VAE tiling (tile {})", job.settings.vae_tile_size),
            Change::Int8 => text.write_str("Switch to int8 quantization"),
            Change::Resolution(w, h) => write!(text, "Render at {w}×{h}"),
            Change::Frames(f) => write!(text, "Render {f} frames instead of {}", job.geometry.frames),
        };
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
    gpus: &[GpuView<'_>],
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
    gpus: &[GpuView<'_>],
    critical: f64,
    scale: f64,
) -> Vec<Recommendation> {
    let need = |j: &Job| need_gb(workload, &j.settings, model_loaded, j.geometry);
    let current = need(job);
    let singles = available_changes(job);
    let pairs =
        singles.iter().enumerate().flat_map(|(i, a)| singles[i + 1..].iter().map(move |b| [Some(*a), Some(*b)]));
    let combos = singles.iter().map(|c| [Some(*c), None]).chain(pairs);
    let max_gb = job.settings.max_vram_usage_gb;
    let best = super::best_gpu(gpus);
    // The figures first, the sentences only for the few kept.
    let mut found: Vec<Found> = combos
        .filter_map(|combo| {
            let mut changed = *job;
            combo.iter().flatten().for_each(|c| c.apply(&mut changed));
            let saves = scale * (current - need(&changed));
            if saves < 0.05 {
                return None;
            }
            let after = (required_gb - saves).max(0.0);
            let within_budget = after <= max_gb;
            let projected = best.map(|g| {
                let p = g.projected(after);
                (p, fits_under(p, critical))
            });
            let fits = projected.is_some_and(|(_, gpu_fits)| gpu_fits) && within_budget;
            let smaller_job = combo.iter().flatten().any(|c| c.changes_the_job());
            Some(Found { combo, saves, after, within_budget, projected, fits, smaller_job })
        })
        .collect();
    // What fits first; then settings before a smaller video (cheaper in quality last); then
    // the fewest changes (least cost), then the biggest saving.
    found.sort_by(|a, b| {
        b.fits
            .cmp(&a.fits)
            .then(a.smaller_job.cmp(&b.smaller_job))
            .then(a.changes().cmp(&b.changes()))
            .then(b.saves.total_cmp(&a.saves))
    });
    found
        .iter()
        .take(4)
        .map(|f| Recommendation { text: f.sentence(job, max_gb), saves_gb: f.saves, fits: f.fits })
        .collect()
}

/// One change or pair the search tried, with what it would do.
struct Found {
    combo: [Option<Change>; 2],
    saves: f64,
    /// What the job would need after it, GiB.
    after: f64,
    within_budget: bool,
    /// The roomiest GPU's VRAM use with the job after it, and whether that is under the
    /// critical threshold; `None` without a GPU.
    projected: Option<(f64, bool)>,
    fits: bool,
    smaller_job: bool,
}

impl Found {
    fn changes(&self) -> usize {
        self.combo.iter().flatten().count()
    }

    /// "<changes>: saves ~<GB> GB[, <costs>]; <outcome>".
    fn sentence(&self, job: &Job, max_gb: f64) -> String {
        let mut text = String::with_capacity(128);
        for (i, c) in self.combo.iter().flatten().enumerate() {
            if i > 0 {
                text.push_str(" + ");
            }
            c.label(job, &mut text);
        }
        // Writing to a String cannot fail.
        let _ = write!(text, ": saves ~{} GB", dec1(self.saves));
        for (i, cost) in self.combo.iter().flatten().filter_map(|c| c.cost()).enumerate() {
            text.push_str(if i == 0 { ", " } else { " and " });
            text.push_str(cost);
        }
        match self.projected {
            Some((projected, gpu_fits)) => {
                let _ = write!(text, "; projected VRAM {}% (", dec0(projected * 100.0));
                let _ = match (gpu_fits, self.within_budget) {
                    (true, true) => text.write_str("fits"),
                    (true, false) => write!(text, "over max_vram_usage_gb {}", dec1(max_gb)),
                    _ => text.write_str("does not fit"),
                };
                text.push(')');
            }
            None => {
                let _ = write!(text, "; needs {} GB (no GPU visible)", dec1(self.after));
            }
        }
        text
    }
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

    fn gpu(total_gb: f64, used_gb: f64) -> GpuView<'static> {
        GpuView { index: 0, uuid: "GPU-0", total_gb, used_gb, reserved_gb: 0.0 }
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

    /// Every part of a sentence, pairs and budgets included, as clients have read them.
    #[test]
    fn every_sentence_is_written_in_full() {
        let w = workload();
        let s = Optimization { max_vram_usage_gb: 12.0, ..settings(Quantization::Fp16, false, 512) };
        let need = need_gb(&w, &s, false, size());
        let texts = |gpus: &[GpuView<'_>]| -> Vec<String> {
            search(&w, &job(s, false), false, need, gpus, 0.95).into_iter().map(|r| r.text).collect()
        };
        let costs = [
            "slower steps",
            "possible quality loss",
            "slower steps and possible quality loss",
            "slower steps and slower VAE decode",
        ];
        let changes = [
            "Enable model offloading: saves ~10.6 GB",
            "Switch to int8 quantization: saves ~9.9 GB",
            "Enable model offloading + Switch to int8 quantization: saves ~15.2 GB",
            "Enable model offloading + Reduce VAE tile size to 256: saves ~10.6 GB",
        ];
        let on_gpu = ["91%", "93%", "71%", "91%"].map(|p| format!("projected VRAM {p} (over max_vram_usage_gb 12.0)"));
        let no_gpu = ["19.8", "20.4", "15.1", "19.8"].map(|gb| format!("needs {gb} GB (no GPU visible)"));
        let expect = |outcomes: [String; 4]| -> Vec<String> {
            (0..4).map(|i| format!("{}, {}; {}", changes[i], costs[i], outcomes[i])).collect()
        };
        assert_eq!(texts(&[gpu(24.0, 2.0)]), expect(on_gpu));
        assert_eq!(texts(&[]), expect(no_gpu));
    }
}

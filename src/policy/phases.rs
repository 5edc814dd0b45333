//! The phase model of one generation's VRAM (issue #23). Wan's pipelines, like diffusers'
//! offloading, hold one phase at a time: the text encoder encodes the prompt, then one
//! denoising expert runs its steps, then the VAE decodes the latents. The peak is the largest
//! phase, plus the CUDA context:
//!
//! ```text
//! peak = max(text, denoise, decode) + overhead
//! text    = text encoder weights (none with offload when it runs on the CPU) [+ image encoder]
//! denoise = one expert's weights + activation_bytes × tokens × dim
//! decode  = VAE weights (fp32) + decode_bytes_per_pixel × pixels in flight + the video (fp32 RGB)
//! tokens  = latent frames × (height / stride / patch_h) × (width / stride / patch_w) / patch_t
//! latent frames = (frames − 1) / temporal_stride + 1
//! pixels in flight = temporal_stride × (tile² with vae_tiling, else width × height)
//! ```
//!
//! The VAE stays on the GPU throughout (it is small, and Wan keeps it there). Without offload
//! nothing leaves the GPU: every phase also carries every other component's weights. A worker
//! that already holds its model (`model_loaded`) needs no new VRAM for weights. The constants of
//! the built-in profiles and their sources are in [`crate::config::profiles`].

use serde::{Deserialize, Serialize};

use super::estimate::bytes_per_param;
use crate::config::{Optimization, Workload};
use crate::units::GIB;

/// The size of the video a job renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Geometry {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Frames.
    pub frames: u32,
}

impl Geometry {
    /// The profile's own size.
    pub fn of(workload: &Workload) -> Self {
        Self { width: workload.width, height: workload.height, frames: workload.frames }
    }
}

/// The size a request asked for: each part it left out is the profile's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SizeAsk {
    /// Pixels.
    pub width: Option<u32>,
    /// Pixels.
    pub height: Option<u32>,
    /// Frames.
    pub frames: Option<u32>,
}

impl SizeAsk {
    /// Whether the request named any part of its size.
    pub fn given(&self) -> bool {
        self.width.is_some() || self.height.is_some() || self.frames.is_some()
    }

    /// The size asked for, the profile's where left out.
    pub fn resolve(&self, workload: &Workload) -> Geometry {
        Geometry {
            width: self.width.unwrap_or(workload.width),
            height: self.height.unwrap_or(workload.height),
            frames: self.frames.unwrap_or(workload.frames),
        }
    }

    /// Checks each part given; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v {
                crate::limits::check_side(v).map_err(|m| format!("{field}: {m}"))?;
            }
        }
        if let Some(f) = self.frames {
            crate::limits::in_range(f, &crate::limits::FRAMES).map_err(|m| format!("frames: {m}"))?;
        }
        Ok(())
    }
}

/// What each phase holds, GiB, without the overhead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Phases {
    pub text: f64,
    pub denoise: f64,
    pub decode: f64,
}

impl Phases {
    /// The largest phase.
    pub(crate) fn peak(&self) -> f64 {
        self.text.max(self.denoise).max(self.decode)
    }
}

fn gb(params_billions: f64, bytes: f64) -> f64 {
    params_billions * 1e9 * bytes / GIB
}

/// Transformer tokens of one denoising step.
pub(crate) fn tokens(workload: &Workload, g: Geometry) -> f64 {
    let (vae, [pt, ph, pw]) = (&workload.vae, workload.transformer.patch);
    let latent_frames = (g.frames.saturating_sub(1) / vae.temporal_stride + 1).div_ceil(pt);
    let latent_h = g.height.div_ceil(vae.spatial_stride).div_ceil(ph);
    let latent_w = g.width.div_ceil(vae.spatial_stride).div_ceil(pw);
    f64::from(latent_frames) * f64::from(latent_h) * f64::from(latent_w)
}

/// Weights by component under `settings`, GiB: (text encoder, image encoder, one expert, all
/// experts, VAE).
fn weights(workload: &Workload, settings: &Optimization) -> (f64, f64, f64, f64, f64) {
    let b = bytes_per_param(settings.quantization);
    let t = &workload.transformer;
    let expert = gb(t.params_billions, b);
    (
        gb(workload.text_encoder.params_billions, b),
        gb(workload.image_encoder_params_billions, b),
        expert,
        expert * f64::from(t.experts),
        gb(workload.vae.params_billions, 4.0),
    )
}

/// What each phase of one generation of `workload` at `g` holds under `settings`.
pub(crate) fn phases(workload: &Workload, settings: &Optimization, model_loaded: bool, g: Geometry) -> Phases {
    let (text_w, image_w, expert_w, experts_w, vae_w) = weights(workload, settings);
    let t = &workload.transformer;
    let activations = t.activation_bytes * tokens(workload, g) * f64::from(t.dim) / GIB;
    let decode_work = decode_work_gb(workload, settings, g);
    // Weights on the GPU in each phase (none new for a worker that holds its model).
    let (text_on, denoise_on, decode_on) = match (model_loaded, settings.enable_offload) {
        (true, _) => (0.0, 0.0, 0.0),
        (false, true) => {
            let text = if workload.text_encoder.cpu_when_offloading { 0.0 } else { text_w };
            (text + image_w + vae_w, expert_w + vae_w, vae_w)
        }
        (false, false) => {
            let all = text_w + image_w + experts_w + vae_w;
            (all, all, all)
        }
    };
    Phases { text: text_on, denoise: denoise_on + activations, decode: decode_on + decode_work }
}

/// VRAM one generation needs, GiB: its largest phase plus the overhead.
pub(crate) fn need_gb(workload: &Workload, settings: &Optimization, model_loaded: bool, g: Geometry) -> f64 {
    phases(workload, settings, model_loaded, g).peak() + workload.overhead_gb
}

/// What each GPU of a generation sharded over `gpus` GPUs needs, GiB: rank 0, which alone
/// decodes the video, and each other rank. One GPU: both are [`need_gb`].
///
/// ```text
/// sharded (multi_gpu.shard): rank = (text encoder + every expert in fp32) / gpus
///                                   + image encoder + VAE + fixed_gb
///                                   + max(sequence_bytes × tokens × dim, rank 0: decode work)
///                                   + overhead
/// replicated:               rank = the one-GPU phases with the denoising activations over gpus
///                                   (the sequence is split); only rank 0 decodes
/// ```
///
/// A sharded run does not offload (Wan's FSDP runs keep every shard on its GPU), whatever
/// `enable_offload` says; a worker that holds its model needs no new VRAM for weights.
pub(crate) fn rank_need_gb(
    workload: &Workload,
    settings: &Optimization,
    model_loaded: bool,
    g: Geometry,
    gpus: u32,
) -> RankNeed {
    if gpus <= 1 {
        let one = need_gb(workload, settings, model_loaded, g);
        return RankNeed { rank0: one, other: one };
    }
    let n = f64::from(gpus);
    let m = &workload.multi_gpu;
    let t = &workload.transformer;
    let (text_w, image_w, _, _, vae_w) = weights(workload, settings);
    let decode_work = decode_work_gb(workload, settings, g);
    if m.shard {
        // fp32: Wan converts the transformer's dtype only without FSDP (config::profiles).
        let experts_fp32 = gb(t.params_billions, 4.0) * f64::from(t.experts);
        let weights = if model_loaded { 0.0 } else { (text_w + experts_fp32) / n + image_w + vae_w };
        let sequence = m.sequence_bytes * tokens(workload, g) * f64::from(t.dim) / GIB;
        let base = weights + m.fixed_gb + workload.overhead_gb;
        return RankNeed { rank0: base + sequence.max(decode_work), other: base + sequence };
    }
    let p = phases(workload, settings, model_loaded, g);
    let activations = t.activation_bytes * tokens(workload, g) * f64::from(t.dim) / GIB;
    let denoise = p.denoise - activations + activations / n;
    let other = p.text.max(denoise) + workload.overhead_gb;
    RankNeed { rank0: other.max(p.decode + workload.overhead_gb), other }
}

/// What each GPU of a gang needs, GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RankNeed {
    /// Rank 0 (it alone decodes the video).
    pub rank0: f64,
    /// Every other rank.
    pub other: f64,
}

impl RankNeed {
    /// What rank `rank` needs.
    pub(crate) fn of(&self, rank: usize) -> f64 {
        if rank == 0 { self.rank0 } else { self.other }
    }
}

/// The VAE decode's working memory and the decoded video, GiB (weights not included).
fn decode_work_gb(workload: &Workload, settings: &Optimization, g: Geometry) -> f64 {
    let side = if settings.vae_tiling {
        f64::from(settings.vae_tile_size).powi(2).min(f64::from(g.width) * f64::from(g.height))
    } else {
        f64::from(g.width) * f64::from(g.height)
    };
    let in_flight = f64::from(workload.vae.temporal_stride) * side;
    let video = f64::from(g.frames) * f64::from(g.width) * f64::from(g.height) * 3.0 * 4.0 / GIB;
    workload.vae.decode_bytes_per_pixel * in_flight / GIB + video
}

/// Host RAM offloading needs, GiB: what it moves off the GPU (the text encoder, the image
/// encoder and every expert, which all wait in host memory while another phase runs); 0 without
/// offload.
pub(crate) fn host_ram_gb(workload: &Workload, settings: &Optimization) -> f64 {
    if !settings.enable_offload {
        return 0.0;
    }
    let (text_w, image_w, _, experts_w, _) = weights(workload, settings);
    text_w + image_w + experts_w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::profiles;

    fn wan(name: &str) -> Workload {
        profiles::builtin(name).unwrap()
    }

    fn published() -> Optimization {
        Optimization { vae_tiling: false, ..Optimization::default() }
    }

    #[test]
    fn tokens_follow_the_geometry() {
        let a14b = wan("wan2.2-t2v-a14b");
        // 81 frames → 21 latent frames; 832×480 / 8 / 2 → 52 × 30.
        assert_eq!(tokens(&a14b, Geometry { width: 832, height: 480, frames: 81 }), 21.0 * 30.0 * 52.0);
        assert_eq!(tokens(&a14b, Geometry { width: 1280, height: 720, frames: 81 }), 21.0 * 45.0 * 80.0);
        // TI2V-5B: the Wan2.2 VAE's 16× stride, 121 frames → 31 latent frames.
        assert_eq!(tokens(&wan("wan2.2-ti2v-5b"), Geometry::of(&wan("wan2.2-ti2v-5b"))), 31.0 * 22.0 * 40.0);
    }

    #[test]
    fn the_largest_phase_wins() {
        let five = wan("wan2.2-ti2v-5b");
        let p = phases(&five, &published(), false, Geometry::of(&five));
        assert!(p.decode > p.denoise && p.denoise > p.text, "{p:?}");
        assert_eq!(p.peak(), p.decode);
        let a14b = wan("wan2.2-t2v-a14b");
        let p = phases(&a14b, &published(), false, Geometry::of(&a14b));
        assert!(p.denoise > p.decode && p.denoise > p.text, "{p:?}");
        // Tiling shrinks the decode below the denoising phase.
        let tiled = phases(&five, &Optimization::default(), false, Geometry::of(&five));
        assert!(tiled.decode < tiled.denoise, "{tiled:?}");
    }

    #[test]
    fn without_offload_every_phase_carries_every_weight() {
        let a14b = wan("wan2.2-t2v-a14b");
        let g = Geometry::of(&a14b);
        let on = phases(&a14b, &published(), false, g);
        let off = phases(&a14b, &Optimization { enable_offload: false, ..published() }, false, g);
        let (text_w, _, expert_w, experts_w, _) = weights(&a14b, &published());
        assert!((off.denoise - on.denoise - (text_w + experts_w - expert_w)).abs() < 1e-9);
        assert!(off.text >= text_w + experts_w);
        assert!(host_ram_gb(&a14b, &Optimization { enable_offload: false, ..published() }) == 0.0);
        assert!((host_ram_gb(&a14b, &published()) - (text_w + experts_w)).abs() < 1e-9);
        let loaded = phases(&a14b, &published(), true, g);
        assert!((on.denoise - loaded.denoise - (expert_w + weights(&a14b, &published()).4)).abs() < 1e-9);
    }

    /// Must show 4 of issue #24: the Wan2.2 table's 4- and 8-GPU per-GPU peaks, within 10 %, under
    /// the table's settings (A14B: FSDP, no offload; TI2V-5B: offload, bf16, T5 on the CPU).
    #[test]
    fn the_published_multi_gpu_peaks_are_reproduced() {
        let (p480, p720, p704) = ((832, 480, 81), (1280, 720, 81), (1280, 704, 121));
        for (name, (w, h, f), gpus, published_gb) in [
            ("wan2.2-t2v-a14b", p480, 4, 40.9),
            ("wan2.2-t2v-a14b", p480, 8, 26.3),
            ("wan2.2-t2v-a14b", p720, 4, 51.7),
            ("wan2.2-t2v-a14b", p720, 8, 37.0),
            ("wan2.2-i2v-a14b", p480, 4, 40.8),
            ("wan2.2-i2v-a14b", p480, 8, 26.1),
            ("wan2.2-i2v-a14b", p720, 4, 51.6),
            ("wan2.2-i2v-a14b", p720, 8, 37.0),
            ("wan2.2-ti2v-5b", p704, 4, 22.6),
            ("wan2.2-ti2v-5b", p704, 8, 22.6),
        ] {
            let need = rank_need_gb(&wan(name), &published(), false, Geometry { width: w, height: h, frames: f }, gpus);
            let peak = need.rank0.max(need.other);
            let off = (peak - published_gb).abs() / published_gb;
            assert!(off < 0.10, "{name} {w}x{h} on {gpus}: {peak:.2} vs {published_gb} ({:.1} %)", off * 100.0);
        }
    }

    #[test]
    fn rank_zero_carries_the_decode_and_one_gpu_is_the_single_figure() {
        let five = wan("wan2.2-ti2v-5b");
        let g = Geometry::of(&five);
        let need = rank_need_gb(&five, &published(), false, g, 4);
        assert!(need.rank0 > need.other, "{need:?}");
        assert_eq!(need.of(0), need.rank0);
        assert_eq!(need.of(3), need.other);
        let one = rank_need_gb(&five, &published(), false, g, 1);
        assert_eq!(one.rank0, need_gb(&five, &published(), false, g));
        // Sharding: more GPUs, less each; a loaded model needs no weights.
        let a14b = wan("wan2.2-t2v-a14b");
        let g = Geometry::of(&a14b);
        let (four, eight) =
            (rank_need_gb(&a14b, &published(), false, g, 4), rank_need_gb(&a14b, &published(), false, g, 8));
        assert!(eight.other < four.other);
        assert!(rank_need_gb(&a14b, &published(), true, g, 4).other < four.other - 20.0);
    }

    /// Must show 1 of issue #23: the Wan2.2 table's single-GPU peaks, within 10 %.
    #[test]
    fn the_published_wan_peaks_are_reproduced() {
        for (name, (w, h, f), published_gb) in [
            ("wan2.2-ti2v-5b", (1280, 704, 121), 22.9),
            ("wan2.2-t2v-a14b", (832, 480, 81), 41.3),
            ("wan2.2-t2v-a14b", (1280, 720, 81), 59.8),
            ("wan2.2-i2v-a14b", (832, 480, 81), 41.0),
            ("wan2.2-i2v-a14b", (1280, 720, 81), 59.7),
            ("wan2.1-t2v-1.3b", (832, 480, 81), 8.19),
        ] {
            let got = need_gb(&wan(name), &published(), false, Geometry { width: w, height: h, frames: f });
            let off = (got - published_gb).abs() / published_gb;
            assert!(off < 0.10, "{name} {w}x{h}x{f}: {got:.2} vs {published_gb} ({:.1} %)", off * 100.0);
        }
    }
}

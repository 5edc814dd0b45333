//! Built-in workload profiles of the Wan models, from their published architecture and
//! calibrated against their authors' published peaks.
//!
//! Sources (each constant below names its own):
//! - [W22] Wan-Video/Wan2.2 @ 42bf4cfa, `wan/configs/wan_ti2v_5B.py` (dim 3072 :21, ffn_dim 14336
//!   :22, num_layers 30 :25, patch_size :20, vae_stride (4, 16, 16) :17, frame_num 121 :36),
//!   `wan_t2v_A14B.py` (dim 5120 :21, ffn_dim 13824 :22, num_layers 40 :25, low/high-noise
//!   experts :30-31), `wan_i2v_A14B.py`, `shared_config.py` (umt5_xxl in bf16 :9-10, frame_num
//!   81 :20); `wan/modules/model.py` (the block's layers :101-217; no image cross-attention for
//!   Wan2.2 I2V, which concatenates latent channels :444-445).
//! - [W21] Wan-Video/Wan2.1 @ 9737cba9, `wan/configs/wan_t2v_1_3B.py`, `wan_t2v_14B.py`,
//!   `wan_i2v_14B.py` (image cross-attention k_img/v_img, `wan/modules/model.py:187-200`).
//! - [T22] the Wan2.2 README's table "Computational Efficiency on Different GPUs" (single GPU:
//!   TI2V-5B 1280×704×121 22.9, T2V-A14B 832×480×81 41.3 and 1280×720×81 59.8, I2V-A14B 41.0 and
//!   59.7; see `../shared/research/wan22-published-peaks.md`), read as GiB: the figures are
//!   PyTorch allocator peaks, which PyTorch and nvidia-smi report in binary units.
//! - [R21] the Wan2.1 README: "The T2V-1.3B model requires only 8.19 GB VRAM" (832×480, 81
//!   frames, `--offload_model True --t5_cpu`).
//!
//! Transformer parameters are counted from the config's dimensions (attention q/k/v/o for self-
//! and cross-attention, the FFN, norms and modulation per block, plus the patch, text, time and
//! head layers; `dit_params` in the tests does the count): 14.29 B for a 14B-class expert
//! (dim 5120, ffn 13824, 40 layers), 5.00 B for TI2V-5B (3072, 14336, 30), 1.42 B for 1.3B
//! (1536, 8960, 30); Wan2.1 I2V-14B adds image cross-attention (k_img, v_img per block): 16.39 B.
//! The text encoder is umT5-XXL's encoder: `models_t5_umt5-xxl-enc-bf16.pth` is 11.36 GB at 2
//! bytes a parameter, 5.68 B. The VAEs: `Wan2.1_VAE.pth` 508 MB and `Wan2.2_VAE.pth` 2.82 GB of
//! fp32, 0.127 B and 0.705 B. Wan2.1 I2V's CLIP (`open-clip-xlm-roberta-large-vit-huge-14`,
//! 4.77 GB of fp32): 1.19 B.
//!
//! Calibration (GiB; `policy::phases` has the model):
//! - `ACTIVATION_BYTES` = 90.6 bytes per token per unit of width: T2V-A14B's 720P and 480P peaks
//!   differ by 18.5 with the same weights resident, over 75,600 − 32,760 tokens of width 5120.
//!   The same constant predicts T2V-1.3B at 480P at 8.11 against [R21]'s 8.19.
//! - `WAN22_DECODE_BYTES_PER_PIXEL` = 5,451: TI2V-5B's 22.9 is its VAE decode (the step users
//!   report running out of memory in on 24 GB cards; the denoising phase at the constant above
//!   is 19.8): 22.9 less the CUDA overhead, the VAE's weights and the decoded video (fp32), over
//!   one latent frame of whole 1280×704 frames. The decoder's own tensors, counted on a CPU
//!   (its causal-conv cache 7,137.5 bytes per frame pixel plus a 1.85 GB chunk), are about half
//!   of that; the rest is taken to be the GPU's convolution workspaces and allocator slack,
//!   which only a GPU run shows.
//! - `WAN21_DECODE_BYTES_PER_PIXEL` = 2,044: no published peak is a Wan2.1-VAE decode, so it is
//!   Wan2.2's figure scaled by the decoders' base widths (96 / 256), within the bound [R21] sets
//!   (at most 4,447, or T2V-1.3B would peak above 8.19 at 480P).
//! - `OVERHEAD_GB` = 0.75: the CUDA context and cuBLAS workspaces, which PyTorch's peaks leave
//!   out and a GPU holds anyway (0.3–1 GiB).
//!
//! Several GPUs (a gang; `policy::phases::rank_need_gb`), against [T22]'s 4- and 8-GPU columns
//! (per-GPU peaks; the table's notes: 14B models `--ulysses_size 4/8 --dit_fsdp --t5_fsdp`, no
//! offload; TI2V-5B `--ulysses_size 4/8 --offload_model True --convert_model_dtype --t5_cpu`):
//! - The sharded weights: [W22] `wan/text2video.py:140-166` converts the transformer's dtype
//!   "only without FSDP", so FSDP shards hold the fp32 checkpoint: two 14.29 B experts at 4 bytes
//!   plus umT5-XXL in bf16 [W22 shared_config.py:9-10] = 117.05 GiB, over N ranks. This alone
//!   explains the table's drop from 4 to 8 GPUs (117.05 / 8 = 14.6; T2V-A14B 480P 40.9 → 26.3,
//!   720P 51.7 → 37.0).
//! - `FSDP.sequence_bytes` = 52.6 bytes per token per unit of width, held whatever N: the 720P and
//!   480P columns differ by the same 10.8 GiB at 4 and at 8 GPUs, over 75,600 − 32,760 tokens of
//!   width 5120. Wan computes the time embeddings for the whole sequence in fp32 before splitting
//!   it, and `torch.chunk` keeps views of them [W22 `wan/distributed/sequence_parallel.py:99-122`]:
//!   `e` (4 bytes) and `e0` (6 × 4 bytes) account for 28 of the 52.6; the patch embeddings and
//!   their padded copy (bf16) for 4 more; the rest is transient. The split part (each rank's
//!   blocks over 1/N of the tokens) does not show in the peaks and is left out.
//! - `FSDP.fixed_gb` = 2.21: what each rank holds beyond that, the CUDA context and the VAE —
//!   FSDP's gathered units in bf16 (the root's embeddings and heads, 0.43 GiB, and one block,
//!   0.65 GiB, for a 14B-class expert) and NCCL's buffers. Least squares over the four T2V-A14B
//!   figures with the weights fixed by the architecture; all eight A14B figures then agree within
//!   0.7 %.
//! - TI2V-5B's runs did not shard: every rank holds its model as on one GPU, with offload, and
//!   rank 0 decodes the video, whose decode is the single-GPU peak (22.9 modelled, 22.6 in both
//!   columns).

use super::workload::{MultiGpu, TextEncoder, Transformer, Vae, Workload};

/// The profile the shipped configuration uses.
pub(crate) const DEFAULT: &str = "wan2.2-ti2v-5b";

/// Every built-in profile's name.
pub(crate) const NAMES: [&str; 6] =
    ["wan2.2-ti2v-5b", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b"];

const ACTIVATION_BYTES: f64 = 90.6;
const WAN22_DECODE_BYTES_PER_PIXEL: f64 = 5_451.0;
const WAN21_DECODE_BYTES_PER_PIXEL: f64 = 2_044.0;
const OVERHEAD_GB: f64 = 0.75;
/// Wan's FSDP multi-GPU runs (see the module's note).
pub(crate) const FSDP: MultiGpu = MultiGpu { shard: true, sequence_bytes: 52.6, fixed_gb: 2.21 };
/// Every rank holds the whole model; only the sequence is split (TI2V-5B's published runs).
const REPLICATED: MultiGpu = MultiGpu { shard: false, sequence_bytes: 0.0, fixed_gb: 0.0 };
const UMT5_XXL_BILLIONS: f64 = 5.68;
/// [W21]/[W22] `patch_size = (1, 2, 2)` for every model.
const PATCH: [u32; 3] = [1, 2, 2];

/// The Wan2.1 VAE: `vae_stride = (4, 8, 8)` [W21] [W22 A14B].
const WAN21_VAE: Vae = Vae {
    params_billions: 0.127,
    temporal_stride: 4,
    spatial_stride: 8,
    decode_bytes_per_pixel: WAN21_DECODE_BYTES_PER_PIXEL,
};
/// The Wan2.2 VAE: `vae_stride = (4, 16, 16)` [W22 TI2V-5B].
const WAN22_VAE: Vae = Vae {
    params_billions: 0.705,
    temporal_stride: 4,
    spatial_stride: 16,
    decode_bytes_per_pixel: WAN22_DECODE_BYTES_PER_PIXEL,
};

fn expert(params_billions: f64, experts: u32, dim: u32) -> Transformer {
    Transformer { params_billions, experts, dim, patch: PATCH, activation_bytes: ACTIVATION_BYTES }
}

fn profile(
    name: &str,
    (width, height, frames): (u32, u32, u32),
    t5_cpu: bool,
    clip: f64,
    dit: Transformer,
    vae: Vae,
    multi_gpu: MultiGpu,
) -> Workload {
    Workload {
        name: name.to_owned(),
        width,
        height,
        frames,
        text_encoder: TextEncoder { params_billions: UMT5_XXL_BILLIONS, cpu_when_offloading: t5_cpu },
        image_encoder_params_billions: clip,
        transformer: dit,
        vae,
        overhead_gb: OVERHEAD_GB,
        multi_gpu,
    }
}

/// Every built-in profile, by name, built once.
static BUILT_IN: std::sync::LazyLock<Vec<(&'static str, Workload)>> =
    std::sync::LazyLock::new(|| NAMES.iter().map(|n| (*n, make(n).expect("every name is built in"))).collect());

/// The built-in profile `name`, if there is one.
pub(crate) fn builtin(name: &str) -> Option<Workload> {
    get(name).cloned()
}

/// The built-in profile `name`, shared.
pub(crate) fn get(name: &str) -> Option<&'static Workload> {
    BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, w)| w)
}

fn make(name: &str) -> Option<Workload> {
    Some(match name {
        // 1280×704, 121 frames at 24 fps [W22 wan_ti2v_5B.py, `frame_num`]; [T22] ran it with
        // `--t5_cpu`.
        "wan2.2-ti2v-5b" => {
            profile("Wan2.2 TI2V-5B", (1280, 704, 121), true, 0.0, expert(5.00, 1, 3072), WAN22_VAE, REPLICATED)
        }
        // Two experts (high-noise, low-noise), one active per step [W22 wan_t2v_A14B.py,
        // `boundary`]; 81 frames; [T22] ran them without `--t5_cpu`.
        "wan2.2-t2v-a14b" => {
            profile("Wan2.2 T2V-A14B", (1280, 720, 81), false, 0.0, expert(14.29, 2, 5120), WAN21_VAE, FSDP)
        }
        // Image conditioning is concatenated latents, no CLIP [W22 wan_i2v_A14B.py].
        "wan2.2-i2v-a14b" => {
            profile("Wan2.2 I2V-A14B", (1280, 720, 81), false, 0.0, expert(14.29, 2, 5120), WAN21_VAE, FSDP)
        }
        "wan2.1-t2v-1.3b" => {
            profile("Wan2.1 T2V-1.3B", (832, 480, 81), true, 0.0, expert(1.42, 1, 1536), WAN21_VAE, FSDP)
        }
        "wan2.1-t2v-14b" => {
            profile("Wan2.1 T2V-14B", (1280, 720, 81), false, 0.0, expert(14.29, 1, 5120), WAN21_VAE, FSDP)
        }
        "wan2.1-i2v-14b" => {
            profile("Wan2.1 I2V-14B", (1280, 720, 81), false, 1.19, expert(16.39, 1, 5120), WAN21_VAE, FSDP)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of a Wan DiT from its config: per block, self- and cross-attention (q, k, v, o
    /// with biases, and q/k norms), image cross-attention for Wan2.1 I2V, the FFN, the
    /// cross-attention norm and the modulation; then the patch, text, time and head layers.
    fn dit_params(dim: f64, ffn: f64, layers: f64, in_dim: f64, image: bool) -> f64 {
        let attention = 4.0 * (dim * dim + dim) + 2.0 * dim;
        let image_attention = if image { 2.0 * (dim * dim + dim) + dim } else { 0.0 };
        let block = 2.0 * attention + image_attention + 2.0 * dim + (2.0 * dim * ffn + ffn + dim) + 6.0 * dim;
        let patch = in_dim * 4.0 * dim + dim;
        let text = 4096.0 * dim + dim + dim * dim + dim;
        let time = 256.0 * dim + dim + dim * dim + dim + dim * 6.0 * dim + 6.0 * dim;
        let head = dim * 16.0 * 4.0 + 16.0 * 4.0 + 2.0 * dim;
        layers * block + patch + text + time + head
    }

    #[test]
    fn transformer_sizes_are_those_of_the_published_configs() {
        let close = |got: f64, want: f64| (got / 1e9 - want).abs() < 0.01 * want;
        assert!(close(dit_params(5120.0, 13824.0, 40.0, 16.0, false), 14.29));
        assert!(close(dit_params(3072.0, 14336.0, 30.0, 48.0, false), 5.00));
        assert!(close(dit_params(1536.0, 8960.0, 30.0, 16.0, false), 1.42));
        assert!(close(dit_params(5120.0, 13824.0, 40.0, 36.0, true), 16.39));
    }

    #[test]
    fn every_name_is_built_in_and_valid() {
        for name in NAMES {
            let w = builtin(name).unwrap_or_else(|| panic!("{name}"));
            w.validate(name).unwrap();
        }
        assert!(builtin("wan3").is_none());
        assert!(NAMES.contains(&DEFAULT));
    }
}

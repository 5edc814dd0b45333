//! Workload profiles: what one generation's pipeline holds in VRAM, phase by phase, and the video
//! size it derives activations from. The numbers of the built-in profiles and where each comes
//! from are in [`super::profiles`]; the model that turns a profile into gigabytes is
//! [`crate::policy::phases`].

use serde::{Deserialize, Deserializer, Serialize};

use super::profiles;
use crate::error::ConfigError;
use crate::limits;

/// The VRAM profile of one generation: its components, the phases that hold them, and the
/// default size of the video it renders.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// What the profile describes.
    pub name: String,
    /// Default video width, pixels (a request may ask for another).
    pub width: u32,
    /// Default video height, pixels.
    pub height: u32,
    /// Default number of frames.
    pub frames: u32,
    /// The text encoder: on the GPU while prompts are encoded.
    pub text_encoder: TextEncoder,
    /// An image encoder (CLIP) run before denoising, billions of parameters; 0 when none.
    #[serde(default)]
    pub image_encoder_params_billions: f64,
    /// The denoising transformer.
    pub transformer: Transformer,
    /// The VAE that decodes the latents into frames.
    pub vae: Vae,
    /// CUDA context, cuBLAS workspaces and allocator slack, GiB.
    pub overhead_gb: f64,
    /// How one generation runs across several GPUs (a gang); the default is Wan's FSDP way.
    #[serde(default)]
    pub multi_gpu: MultiGpu,
}

/// How a sharded generation holds the model on each of its GPUs (its ranks). The figures of the
/// built-in profiles and their sources are in [`super::profiles`].
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiGpu {
    /// `true`: the transformer and the text encoder are sharded across the ranks (Wan's
    /// `--dit_fsdp --t5_fsdp`, no offload; Wan keeps a sharded transformer's weights in fp32).
    /// `false`: every rank holds the whole model under the pipeline's settings and only the
    /// sequence is split (Ulysses alone).
    pub shard: bool,
    /// What each rank holds per token of the whole sequence per unit of width, whatever the
    /// number of ranks (full-sequence tensors made before the sequence is split), bytes.
    pub sequence_bytes: f64,
    /// What each rank holds besides weights and tokens (gathered shards, communication
    /// buffers), GiB.
    pub fixed_gb: f64,
}

impl Default for MultiGpu {
    /// Wan's published multi-GPU runs of its 14B-class models (see [`super::profiles`]).
    fn default() -> Self {
        profiles::FSDP
    }
}

/// The text encoder (umT5-XXL in every Wan model).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoder {
    /// Billions of parameters.
    pub params_billions: f64,
    /// With `enable_offload`, it runs on the CPU and never takes VRAM (Wan's `--t5_cpu`, which
    /// the published runs of this profile used); otherwise it is moved off after encoding.
    #[serde(default)]
    pub cpu_when_offloading: bool,
}

/// The denoising transformer (DiT).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Transformer {
    /// Billions of parameters of one expert.
    pub params_billions: f64,
    /// Experts (Wan2.2 A14B: 2, a high-noise and a low-noise one); one is active at a time.
    #[serde(default = "one")]
    pub experts: u32,
    /// Hidden width (`dim`).
    pub dim: u32,
    /// Patch size over (latent frames, height, width).
    pub patch: [u32; 3],
    /// Working memory of a denoising step, bytes per token per unit of width.
    pub activation_bytes: f64,
}

/// The video VAE.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vae {
    /// Billions of parameters (held in fp32, as Wan runs its VAE).
    pub params_billions: f64,
    /// Frames per latent frame (after the first).
    pub temporal_stride: u32,
    /// Pixels per latent pixel, each way.
    pub spatial_stride: u32,
    /// Working memory of the decode, bytes per output pixel in flight (one latent frame's
    /// `temporal_stride` frames, whole or one tile at a time).
    pub decode_bytes_per_pixel: f64,
}

fn one() -> u32 {
    1
}

impl Default for Workload {
    /// The shipped default: Wan2.2 TI2V-5B at 1280×704, 121 frames.
    fn default() -> Self {
        profiles::builtin(profiles::DEFAULT).expect("the default profile is built in")
    }
}

/// Keys of the wave-2 profile shape, refused with a pointer to the new one.
const OLD_SHAPE: [&str; 4] = ["components", "activations_gb", "vae_decode_gb", "vae_reference_tile_size"];

/// Reads a profile: a built-in profile's name, or a whole profile. A profile in the wave-2
/// shape is refused, naming what replaced it.
pub(super) fn deserialize_profile<'de, D: Deserializer<'de>>(d: D) -> Result<Workload, D::Error> {
    use serde::de::Error;
    let value = serde_norway::Value::deserialize(d)?;
    if let Some(name) = value.as_str() {
        return profiles::builtin(name).ok_or_else(|| {
            D::Error::custom(format!("{name:?} is not a built-in profile; built in: {}", profiles::NAMES.join(", ")))
        });
    }
    if let Some(map) = value.as_mapping()
        && let Some(old) = OLD_SHAPE.iter().find(|k| map.contains_key(**k))
    {
        return Err(D::Error::custom(format!(
            "`{old}` belongs to the profile shape before wave 3; name a built-in profile ({}) or describe \
             text_encoder, transformer and vae (see config.yaml)",
            profiles::NAMES.join(", ")
        )));
    }
    Workload::deserialize(value).map_err(D::Error::custom)
}

/// [`deserialize_profile`] for the `workloads` map.
pub(super) fn deserialize_profiles<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Workload>, D::Error> {
    #[derive(Deserialize)]
    struct One(#[serde(deserialize_with = "deserialize_profile")] Workload);
    let map = std::collections::BTreeMap::<String, One>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, One(w))| (k, w)).collect())
}

impl Workload {
    pub(super) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| Err(ConfigError::Invalid { key: format!("{prefix}.{key}"), message });
        for (key, value) in [
            ("text_encoder.params_billions", self.text_encoder.params_billions),
            ("image_encoder_params_billions", self.image_encoder_params_billions),
            ("transformer.params_billions", self.transformer.params_billions),
            ("vae.params_billions", self.vae.params_billions),
        ] {
            if !(value.is_finite() && (0.0..=limits::PARAMS_BILLIONS_MAX).contains(&value)) {
                return bad(key, format!("{value} is out of range; allowed 0 to {}", limits::PARAMS_BILLIONS_MAX));
            }
        }
        for (key, value) in [
            ("transformer.activation_bytes", self.transformer.activation_bytes),
            ("vae.decode_bytes_per_pixel", self.vae.decode_bytes_per_pixel),
        ] {
            if !(value.is_finite() && (0.0..=1e6).contains(&value)) {
                return bad(key, format!("{value} is out of range; allowed 0 to 1000000 (bytes)"));
            }
        }
        for (key, value) in [("overhead_gb", self.overhead_gb), ("multi_gpu.fixed_gb", self.multi_gpu.fixed_gb)] {
            if !(value.is_finite() && (0.0..=limits::MAX_VRAM_GB).contains(&value)) {
                return bad(key, format!("{value} is out of range; allowed 0 to {}", limits::MAX_VRAM_GB));
            }
        }
        let sequence = self.multi_gpu.sequence_bytes;
        if !(sequence.is_finite() && (0.0..=1e6).contains(&sequence)) {
            return bad(
                "multi_gpu.sequence_bytes",
                format!("{sequence} is out of range; allowed 0 to 1000000 (bytes)"),
            );
        }
        for (key, value, range) in [
            ("transformer.experts", self.transformer.experts, 1..=16),
            ("transformer.dim", self.transformer.dim, 1..=65_536),
            ("vae.temporal_stride", self.vae.temporal_stride, 1..=64),
            ("vae.spatial_stride", self.vae.spatial_stride, 1..=64),
        ] {
            limits::in_range(value, &range)
                .map_err(|m| ConfigError::Invalid { key: format!("{prefix}.{key}"), message: m })?;
        }
        if let Some(p) = self.transformer.patch.iter().find(|p| !(1..=16).contains(*p)) {
            return bad("transformer.patch", format!("{p} is out of range; allowed three integers 1 to 16"));
        }
        limits::check_geometry(self.width, self.height, self.frames)
            .map_err(|(field, m)| ConfigError::Invalid { key: format!("{prefix}.{field}"), message: m })
    }
}

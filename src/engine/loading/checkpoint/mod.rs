//! Single-file checkpoints (the original LDM / SGM layouts that AUTOMATIC1111 and Civitai use):
//! loads a `.safetensors` file safely, detects SD1 / SD2 / SDXL from its keys, and renames its
//! UNet, VAE and text encoders to the diffusers layout so the rest of the engine loads every model
//! the same way (`VarBuilder::from_tensors` over diffusers names). Standalone VAE files (the
//! `--vae` override) are read by [`load_vae_file`].
//!
//! Pickled checkpoints (`.ckpt`, `.pt`, ...) are refused: unpickling can run arbitrary code.
//! The renaming follows the behaviour of diffusers' single-file conversion; names in the
//! checkpoint that fit no known layout are returned in [`Converted::unknown_keys`] rather than
//! silently dropped, so the caller can warn.

mod clip;
mod file;
mod unet;
mod vae;
mod vae_file;

pub(crate) use file::load as load_weight_file;
pub(crate) use unet::map_key as map_sgm_unet_key;

#[cfg(test)]
mod sdxl_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::error::{EngineError, Result};

// Not called by the model loader: single files without a config folder use the presets.
#[cfg_attr(not(test), allow(unused_imports))]
pub use unet::infer_unet_layout;
pub use vae_file::load_vae_file;

/// The model family of a single-file checkpoint, as told by its text-encoder keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Stable Diffusion 1.x: OpenAI CLIP ViT-L text encoder (`cond_stage_model.transformer.*`).
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (`cond_stage_model.model.*`).
    Sd2,
    /// SDXL base and its fine-tunes: CLIP ViT-L (`conditioner.embedders.0.transformer.*`) and
    /// OpenCLIP ViT-bigG (`conditioner.embedders.1.model.*`).
    Sdxl,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Sd1 => "sd1",
            Architecture::Sd2 => "sd2",
            Architecture::Sdxl => "sdxl",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the UNet renaming needs from the diffusers `unet/config.json` (or from
/// [`infer_unet_layout`]): the LDM block numbering depends on all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UNetLayout {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// Per down block: does it carry attention (`CrossAttnDownBlock2D`)?
    pub down_has_attention: Vec<bool>,
    /// Per up block, in diffusers order: does it carry attention (`CrossAttnUpBlock2D`)?
    pub up_has_attention: Vec<bool>,
}

impl UNetLayout {
    /// Builds the layout from the config's fields; a block has attention when its type name
    /// contains `CrossAttn` (`CrossAttnDownBlock2D`, `CrossAttnUpBlock2D`).
    pub fn from_block_types(
        block_out_channels: Vec<usize>,
        layers_per_block: usize,
        down_block_types: &[impl AsRef<str>],
        up_block_types: &[impl AsRef<str>],
    ) -> Self {
        fn attn(types: &[impl AsRef<str>]) -> Vec<bool> {
            types
                .iter()
                .map(|t| t.as_ref().contains("CrossAttn"))
                .collect()
        }
        UNetLayout {
            block_out_channels,
            layers_per_block,
            down_has_attention: attn(down_block_types),
            up_has_attention: attn(up_block_types),
        }
    }
}

/// A checkpoint renamed to the diffusers layout; each map is ready for
/// `VarBuilder::from_tensors`. Tensors keep the dtype they were stored in, on the CPU.
pub struct Converted {
    #[cfg_attr(not(test), allow(dead_code))] // what the tests check the detection by
    pub architecture: Architecture,
    /// `UNet2DConditionModel` names (as in `unet/diffusion_pytorch_model.safetensors`).
    pub unet: HashMap<String, Tensor>,
    /// `AutoencoderKL` names; empty when the checkpoint carries no VAE.
    pub vae: HashMap<String, Tensor>,
    /// CLIP text-model names as in `text_encoder/model.safetensors`: `embeddings.*`,
    /// `encoder.layers.N.*`, `final_layer_norm.*` (no `text_model.` prefix). For SDXL this is
    /// CLIP ViT-L.
    pub text_encoder: HashMap<String, Tensor>,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG) with `CLIPTextModelWithProjection` names
    /// as in `text_encoder_2/model.safetensors`: `text_model.embeddings.*`,
    /// `text_model.encoder.layers.N.*`, `text_model.final_layer_norm.*` and
    /// `text_projection.weight`. `None` for SD1 and SD2.
    pub text_encoder_2: Option<HashMap<String, Tensor>>,
    /// Encoder layers in `text_encoder`, for its config's `num_hidden_layers`. SD1 and SDXL: all
    /// the checkpoint holds. SD2: one fewer, since SD2 conditions on the penultimate layer and
    /// its successor is dropped.
    pub text_encoder_layers: Option<usize>,
    /// Encoder layers in `text_encoder_2` (all the checkpoint holds: SDXL takes the context from
    /// the penultimate layer but the pooled output from the last); `None` without one.
    pub text_encoder_2_layers: Option<usize>,
    /// The v-prediction markers the checkpoint carries.
    pub prediction: PredictionMarkers,
    /// Checkpoint keys that fit no known layout (sorted); the caller decides whether to warn.
    #[cfg_attr(not(test), allow(dead_code))]
    pub unknown_keys: Vec<String>,
}

/// Marker key of v-prediction checkpoints (NoobAI-style SDXL fine-tunes).
pub(crate) const V_PRED_KEY: &str = "v_pred";
/// Marker key of zero-terminal-SNR training (`rescale_betas_zero_snr`).
pub(crate) const ZTSNR_KEY: &str = "ztsnr";

/// What a checkpoint says about its noise prediction through empty marker tensors, the keys
/// A1111 and ComfyUI read: `v_pred` (the UNet predicts v, not epsilon) and `ztsnr` (it was
/// trained with zero-terminal-SNR betas). Both absent means nothing is said: an epsilon model,
/// unless a config says otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PredictionMarkers {
    pub v_pred: bool,
    pub ztsnr: bool,
}

impl PredictionMarkers {
    /// Reads the markers from a checkpoint's (full) keys.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        keys.into_iter()
            .fold(PredictionMarkers::default(), |found, key| {
                PredictionMarkers {
                    v_pred: found.v_pred || key == V_PRED_KEY,
                    ztsnr: found.ztsnr || key == ZTSNR_KEY,
                }
            })
    }
}

const SDXL_PREFIX: &str = "conditioner.embedders.";
/// The SDXL refiner's only text encoder (OpenCLIP ViT-bigG as embedder 0).
const SDXL_REFINER_PREFIX: &str = "conditioner.embedders.0.model.";

/// Tells SD1, SD2 and SDXL apart by their text-encoder keys. The SDXL refiner, whose only text
/// encoder is OpenCLIP ViT-bigG at `conditioner.embedders.0.model.*`, is refused: it cannot make
/// an image on its own.
pub fn detect_architecture<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Architecture> {
    let (mut sd1, mut sd2, mut sdxl, mut sdxl_g, mut refiner) = (false, false, false, false, false);
    let mut seen: Vec<String> = Vec::new();
    for key in keys {
        sdxl |= key.starts_with(SDXL_PREFIX);
        sdxl_g |= key.starts_with(clip::SDXL_G_PREFIX);
        refiner |= key.starts_with(SDXL_REFINER_PREFIX);
        sd2 |= key.starts_with(clip::SD2_PREFIX);
        sd1 |= key.starts_with(clip::SD1_PREFIX);
        // Remember a few distinct top-level groups for the error message.
        let group = key.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        if seen.len() < 8 && !seen.contains(&group) {
            seen.push(group);
        }
    }
    seen.sort();
    let groups = if seen.is_empty() {
        "none".to_string()
    } else {
        seen.join(", ")
    };
    match (sdxl, sd2, sd1) {
        (true, _, _) if sdxl_g => Ok(Architecture::Sdxl),
        (true, _, _) if refiner => Err(EngineError::Model(format!(
            "the checkpoint is an SDXL refiner checkpoint (its only text encoder is \
             {SDXL_REFINER_PREFIX}*); limner runs base models (SDXL base and its fine-tunes, \
             SD 1.x, SD 2.x): load the base model instead"
        ))),
        (true, _, _) => Err(EngineError::Model(format!(
            "the checkpoint has {SDXL_PREFIX}* keys but neither SDXL base's text encoders \
             ({}*, {}*) nor the refiner's; found key groups: {groups}",
            clip::SDXL_L_PREFIX,
            clip::SDXL_G_PREFIX,
        ))),
        (_, true, _) => Ok(Architecture::Sd2),
        (_, _, true) => Ok(Architecture::Sd1),
        _ => {
            let hint = if seen.iter().any(|g| {
                g.starts_with("down_blocks") || g.starts_with("text_model") || g == "encoder.layers"
            }) {
                "; it looks like one component of a diffusers folder: point at the folder instead"
            } else {
                ""
            };
            Err(EngineError::Model(format!(
                "cannot tell the architecture: no text encoder keys ({}, {} or {}); found key \
                 groups: {groups}{hint}",
                clip::SD1_PREFIX,
                clip::SD2_PREFIX,
                SDXL_PREFIX,
            )))
        }
    }
}

/// Loads and converts a single-file checkpoint; see [`load_tensors`] and [`convert`].
#[cfg(test)]
pub fn load_single_file(path: &Path, layout: &UNetLayout) -> Result<Converted> {
    convert(load_tensors(path)?, layout)
}

/// Highest `N + 1` over keys `{head}N.*`, or 0 when there are none: how many numbered
/// blocks (layers, up blocks, ...) a checkpoint holds under `head`.
fn block_count<'a>(keys: impl IntoIterator<Item = &'a str>, head: &str) -> usize {
    keys.into_iter()
        .filter_map(|k| {
            k.strip_prefix(head)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

/// Reads every tensor of a `.safetensors` file onto the CPU, in its stored dtype, under its
/// original names. Refuses pickles by extension and by content, and names the file and the
/// problem for missing, truncated or corrupt files. Empty tensors and the prediction markers
/// ([`PredictionMarkers`]) load whatever their dtype, as empty tensors.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    file::load(path, "single-file checkpoint")
}

/// Top-level keys that carry no weights the diffusers pipeline uses: the training noise
/// schedule (SGM checkpoints such as SDXL-Turbo store theirs as `denoiser.sigmas`), EMA copies,
/// loss-function parameters.
fn is_ignored(key: &str) -> bool {
    const EXACT: [&str; 17] = [
        "denoiser.sigmas",
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "lvlb_weights",
        "model_ema.decay",
        "model_ema.num_updates",
    ];
    EXACT.contains(&key)
        || key.starts_with("model_ema.")
        || key.starts_with("first_stage_model.loss.")
}

/// Keys of SDXL-shaped checkpoints trained for an EDM noise schedule (Playground v2.5's
/// `edm_mean`/`edm_std`, CosXL's `edm_vpred.*`); run as DDPM models they give noise.
fn is_edm_marker(key: &str) -> bool {
    matches!(key, "edm_mean" | "edm_std") || key.starts_with("edm_vpred.")
}

/// Where each text encoder of a family lives in a checkpoint.
fn text_prefixes(architecture: Architecture) -> (&'static str, Option<&'static str>) {
    match architecture {
        Architecture::Sd1 => (clip::SD1_PREFIX, None),
        Architecture::Sd2 => (clip::SD2_PREFIX, None),
        Architecture::Sdxl => (clip::SDXL_L_PREFIX, Some(clip::SDXL_G_PREFIX)),
    }
}

/// Renames an original-layout checkpoint (full keys, as loaded by [`load_tensors`]) to diffusers
/// names, checking the UNet against `layout`. SDXL base checkpoints (the SGM layout) give both
/// text encoders; the prediction markers are reported, never as unknown keys.
pub fn convert(tensors: HashMap<String, Tensor>, layout: &UNetLayout) -> Result<Converted> {
    let architecture = detect_architecture(tensors.keys().map(String::as_str))?;
    if let Some(key) = tensors.keys().find(|k| is_edm_marker(k)) {
        return Err(EngineError::Model(format!(
            "the checkpoint carries `{key}`: it was trained for an EDM noise schedule \
             (Playground v2.5, CosXL), which limner does not run"
        )));
    }
    if !tensors.keys().any(|k| k.starts_with(unet::PREFIX)) {
        return Err(EngineError::Model(format!(
            "the checkpoint has no UNet weights ({}*)",
            unet::PREFIX
        )));
    }
    unet::check_block_counts(tensors.keys().map(String::as_str), layout)?;
    let prediction = PredictionMarkers::from_keys(tensors.keys().map(String::as_str));

    let (text_prefix, text_2_prefix) = text_prefixes(architecture);
    let mut unet = HashMap::new();
    let mut vae_parts = Vec::new();
    let mut text_parts = Vec::new();
    let mut text_2_parts = Vec::new();
    let mut unknown_keys = Vec::new();
    for (key, tensor) in tensors {
        if let Some(rest) = key.strip_prefix(unet::PREFIX) {
            match unet::map_key(rest, layout.layers_per_block) {
                Some(name) => {
                    unet.insert(name, tensor);
                }
                None => unknown_keys.push(key),
            }
        } else if let Some(rest) = key.strip_prefix(vae::PREFIX) {
            if !is_ignored(&key) {
                vae_parts.push((rest.to_string(), tensor));
            }
        } else if let Some(rest) = key.strip_prefix(text_prefix) {
            text_parts.push((rest.to_string(), tensor));
        } else if let Some(rest) = text_2_prefix.and_then(|p| key.strip_prefix(p)) {
            text_2_parts.push((rest.to_string(), tensor));
        } else if !is_ignored(&key) && !file::MARKER_KEYS.contains(&key.as_str()) {
            unknown_keys.push(key);
        }
    }
    unet::check_layout(&unet, layout)?;

    let (vae, vae_unknown) = vae::convert(vae_parts)?;
    unknown_keys.extend(
        vae_unknown
            .into_iter()
            .map(|k| format!("{}{k}", vae::PREFIX)),
    );
    if text_parts.is_empty() {
        return Err(EngineError::Model(format!(
            "the {architecture} checkpoint has no {text_prefix}* text encoder"
        )));
    }
    let text = match architecture {
        Architecture::Sd2 => clip::convert_sd2(text_parts)?,
        _ => clip::convert_sd1(text_parts),
    };
    unknown_keys.extend(
        text.unknown
            .into_iter()
            .map(|k| format!("{text_prefix}{k}")),
    );
    let text_2 = match text_2_prefix {
        Some(prefix) => {
            let text_2 = clip::convert_sdxl_g(text_2_parts)?;
            unknown_keys.extend(text_2.unknown.into_iter().map(|k| format!("{prefix}{k}")));
            Some((text_2.tensors, text_2.layers))
        }
        None => None,
    };
    unknown_keys.sort();
    let (text_encoder_2, text_encoder_2_layers) = text_2.unzip();
    Ok(Converted {
        architecture,
        unet,
        vae,
        text_encoder: text.tensors,
        text_encoder_2,
        text_encoder_layers: Some(text.layers),
        text_encoder_2_layers,
        prediction,
        unknown_keys,
    })
}

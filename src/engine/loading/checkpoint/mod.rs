//! Single-file checkpoints (the original LDM layout that AUTOMATIC1111 and Civitai use):
//! loads a `.safetensors` file safely, detects SD1 / SD2 / SDXL from its keys, and renames its
//! UNet, VAE and text encoder to the diffusers layout so the rest of the engine loads every model
//! the same way (`VarBuilder::from_tensors` over diffusers names).
//!
//! Pickled checkpoints (`.ckpt`, `.pt`, ...) are refused: unpickling can run arbitrary code.
//! The renaming follows the behaviour of diffusers' single-file conversion; names in the
//! checkpoint that fit no known layout are returned in [`Converted::unknown_keys`] rather than
//! silently dropped, so the caller can warn.

mod clip;
mod unet;
mod vae;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::engine::error::{EngineError, Result};

#[cfg(test)]
pub use unet::infer_unet_layout;

/// The model family of a single-file checkpoint, as told by its text-encoder keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Stable Diffusion 1.x: OpenAI CLIP ViT-L text encoder (`cond_stage_model.transformer.*`).
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (`cond_stage_model.model.*`).
    Sd2,
    /// SDXL: two text encoders under `conditioner.embedders.*`.
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
    /// `encoder.layers.N.*`, `final_layer_norm.*` (no `text_model.` prefix).
    pub text_encoder: HashMap<String, Tensor>,
    /// SDXL's second text encoder; `None` for SD1 and SD2.
    #[cfg_attr(not(test), allow(dead_code))] // kept for SDXL, not loaded yet
    pub text_encoder_2: Option<HashMap<String, Tensor>>,
    /// Encoder layers in `text_encoder` (`num_hidden_layers`). For SD2 this is one fewer than
    /// the checkpoint holds: SD2 conditions on the penultimate layer, whose successor is dropped.
    pub text_encoder_layers: Option<usize>,
    /// Checkpoint keys that fit no known layout (sorted); the caller decides whether to warn.
    #[cfg_attr(not(test), allow(dead_code))]
    pub unknown_keys: Vec<String>,
}

const SDXL_PREFIX: &str = "conditioner.embedders.";

/// Tells SD1, SD2 and SDXL apart by their text-encoder keys.
pub fn detect_architecture<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Architecture> {
    let (mut sd1, mut sd2, mut sdxl) = (false, false, false);
    let mut seen: Vec<String> = Vec::new();
    for key in keys {
        sdxl |= key.starts_with(SDXL_PREFIX);
        sd2 |= key.starts_with(clip::SD2_PREFIX);
        sd1 |= key.starts_with(clip::SD1_PREFIX);
        // Remember a few distinct top-level groups for the error message.
        let group = key.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        if seen.len() < 8 && !seen.contains(&group) {
            seen.push(group);
        }
    }
    match (sdxl, sd2, sd1) {
        (true, _, _) => Ok(Architecture::Sdxl),
        (_, true, _) => Ok(Architecture::Sd2),
        (_, _, true) => Ok(Architecture::Sd1),
        _ => {
            seen.sort();
            let hint = if seen.iter().any(|g| {
                g.starts_with("down_blocks") || g.starts_with("text_model") || g == "encoder.layers"
            }) {
                "; it looks like one component of a diffusers folder: point at the folder instead"
            } else {
                ""
            };
            Err(EngineError::Model(format!(
                "cannot tell the architecture: no text encoder keys ({}, {} or {}); found key \
                 groups: {}{hint}",
                clip::SD1_PREFIX,
                clip::SD2_PREFIX,
                SDXL_PREFIX,
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                },
            )))
        }
    }
}

/// Loads and converts a single-file checkpoint; see [`load_tensors`] and [`convert`].
#[cfg(test)]
pub fn load_single_file(path: &Path, layout: &UNetLayout) -> Result<Converted> {
    convert(load_tensors(path)?, layout)
}

/// Extensions of PyTorch pickle files.
const PICKLE_EXTENSIONS: [&str; 6] = ["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

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

fn pickle_refusal(path: &Path) -> EngineError {
    EngineError::Model(format!(
        "{}: pickled checkpoints (.ckpt) are not supported because loading them can run \
         arbitrary code; convert it to .safetensors first on a machine where you trust the file \
         (e.g. in Python: `safetensors.torch.save_file(torch.load(path, weights_only=True)\
         [\"state_dict\"], \"model.safetensors\")`)",
        path.display()
    ))
}

/// Reads every tensor of a `.safetensors` file onto the CPU, in its stored dtype, under its
/// original names. Refuses pickles by extension and by content, and names the file and the
/// problem for missing, truncated or corrupt files.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if extension.is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.as_str())) {
        return Err(pickle_refusal(path));
    }
    check_safetensors_header(path)?;
    let corrupt = |e: candle_core::Error| {
        EngineError::Model(format!(
            "{}: truncated or corrupt safetensors file: {e}",
            path.display()
        ))
    };
    // SAFETY: the mapping is only read while this function runs, and every tensor is copied
    // into its own CPU buffer by `load` before the map is dropped. The remaining risk (another
    // process truncating the file meanwhile) is the one every mmap-based loader accepts.
    let file = unsafe { MmapedSafetensors::new(path) }.map_err(corrupt)?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let tensor = view
            .load(&Device::Cpu)
            .map_err(|e| EngineError::Model(format!("{}: tensor {name}: {e}", path.display())))?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// Looks at the first bytes: a safetensors file starts with a little-endian u64 header length
/// and a JSON object; PyTorch files start with a zip (`PK`) or pickle (`0x80`) signature.
fn check_safetensors_header(path: &Path) -> Result<()> {
    let name = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            EngineError::Model(format!("single-file checkpoint {name} not found"))
        }
        _ => EngineError::Model(format!("cannot open {name}: {e}")),
    })?;
    let size = file
        .metadata()
        .map_err(|e| EngineError::Model(format!("cannot read {name}: {e}")))?
        .len();
    let mut head = Vec::with_capacity(9);
    file.by_ref()
        .take(9)
        .read_to_end(&mut head)
        .map_err(|e| EngineError::Model(format!("cannot read {name}: {e}")))?;
    if head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80) {
        return Err(pickle_refusal(path));
    }
    let Some((len_bytes, rest)) = head.split_first_chunk::<8>() else {
        return Err(EngineError::Model(format!(
            "{name} is not a safetensors file: only {size} bytes long"
        )));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    if rest.first() != Some(&b'{') {
        return Err(EngineError::Model(format!(
            "{name} is not a safetensors file (it does not start with a JSON header)"
        )));
    }
    if header_len > size - 8 {
        return Err(EngineError::Model(format!(
            "{name} is truncated: its header alone claims {header_len} bytes but the file has {size}"
        )));
    }
    Ok(())
}

/// Top-level keys that carry no weights the diffusers pipeline uses: the training noise
/// schedule, EMA copies, loss-function parameters.
fn is_ignored(key: &str) -> bool {
    const EXACT: [&str; 16] = [
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

/// Renames an original-layout checkpoint (full keys, as loaded by [`load_tensors`]) to diffusers
/// names, checking the UNet against `layout`.
pub fn convert(tensors: HashMap<String, Tensor>, layout: &UNetLayout) -> Result<Converted> {
    let architecture = detect_architecture(tensors.keys().map(String::as_str))?;
    if architecture == Architecture::Sdxl {
        return Err(EngineError::Model(
            "SDXL single-file checkpoints are not supported yet; use the diffusers folder layout"
                .to_string(),
        ));
    }
    if !tensors.keys().any(|k| k.starts_with(unet::PREFIX)) {
        return Err(EngineError::Model(format!(
            "the checkpoint has no UNet weights ({}*)",
            unet::PREFIX
        )));
    }
    unet::check_block_counts(tensors.keys().map(String::as_str), layout)?;

    let text_prefix = match architecture {
        Architecture::Sd2 => clip::SD2_PREFIX,
        _ => clip::SD1_PREFIX,
    };
    let mut unet = HashMap::new();
    let mut vae_parts = Vec::new();
    let mut text_parts = Vec::new();
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
        } else if !is_ignored(&key) {
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
    let text = match architecture {
        Architecture::Sd2 => clip::convert_sd2(text_parts)?,
        _ => clip::convert_sd1(text_parts),
    };
    unknown_keys.extend(
        text.unknown
            .into_iter()
            .map(|k| format!("{text_prefix}{k}")),
    );
    unknown_keys.sort();
    Ok(Converted {
        architecture,
        unet,
        vae,
        text_encoder: text.tensors,
        text_encoder_2: None,
        text_encoder_layers: Some(text.layers),
        unknown_keys,
    })
}

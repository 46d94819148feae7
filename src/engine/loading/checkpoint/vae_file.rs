//! Standalone VAE files, for the VAE override (`--vae`, weights.toml `vae = ...`, A1111's
//! `sd_vae`): the files people share (`sdxl_vae.safetensors`, `vae-ft-mse-840000-ema-pruned`,
//! fp16-fix VAEs) in the LDM layout, with or without a `first_stage_model.` prefix, and diffusers'
//! own `vae/diffusion_pytorch_model.safetensors`, all renamed to diffusers `AutoencoderKL` names.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use super::vae;
use crate::engine::error::{EngineError, Result};

/// Keys a VAE file may carry that are no part of the model: the training loss (LPIPS and the
/// discriminator) and EMA bookkeeping; A1111 drops the same.
fn is_training_leftover(key: &str) -> bool {
    key.starts_with("loss.") || matches!(key, "model_ema.decay" | "model_ema.num_updates")
}

/// The two naming schemes of a VAE file, told apart by their block names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `encoder.down.N.block.M`, `decoder.up.N`, `*.mid.block_1`, `*.mid.attn_1`.
    Ldm,
    /// `encoder.down_blocks.N.resnets.M`, `decoder.up_blocks.N`, `*.mid_block`.
    Diffusers,
}

fn layout_of(key: &str) -> Option<Layout> {
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let block = rest.split('.').next()?;
    match block {
        "down" | "up" | "mid" | "norm_out" => Some(Layout::Ldm),
        "down_blocks" | "up_blocks" | "mid_block" | "conv_norm_out" => Some(Layout::Diffusers),
        _ => None,
    }
}

/// Loads a standalone VAE file and returns its tensors under diffusers `AutoencoderKL` names
/// (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`), in their stored dtype on the
/// CPU. Pickles are refused as for checkpoints. A full checkpoint works too: its
/// `first_stage_model.*` (the baked-in VAE) is taken and the rest left alone.
pub fn load_vae_file(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = super::file::load(path, "VAE file")?;
    let (vae, unknown) = convert_vae_file(tensors)
        .map_err(|e| EngineError::Model(format!("VAE file {}: {e}", path.display())))?;
    if !unknown.is_empty() {
        tracing::warn!(
            file = %path.display(),
            count = unknown.len(),
            first = %unknown[..unknown.len().min(5)].join(", "),
            "ignoring VAE file keys that fit no VAE layout"
        );
    }
    Ok(vae)
}

/// Renames the tensors of a VAE file; returns the diffusers-named map and the keys that fit
/// neither layout (sorted).
pub(crate) fn convert_vae_file(
    tensors: HashMap<String, Tensor>,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let prefixed = tensors.keys().any(|k| k.starts_with(vae::PREFIX));
    let mut groups: Vec<String> = Vec::new();
    let mut parts = Vec::with_capacity(tensors.len());
    for (key, tensor) in tensors {
        let stripped = match key.strip_prefix(vae::PREFIX) {
            Some(rest) => rest.to_string(),
            // The rest of a full checkpoint, not the VAE.
            None if prefixed => continue,
            None => key,
        };
        if is_training_leftover(&stripped) {
            continue;
        }
        let group = stripped.split('.').next().unwrap_or_default().to_string();
        if groups.len() < 8 && !groups.contains(&group) {
            groups.push(group);
        }
        parts.push((stripped, tensor));
    }
    let has = |layout| parts.iter().any(|(k, _)| layout_of(k) == Some(layout));
    let (vae, mut unknown) = match (has(Layout::Ldm), has(Layout::Diffusers)) {
        (true, false) => vae::convert(parts)?,
        (false, true) => rename_diffusers(parts)?,
        (true, true) => return Err(EngineError::Model(
            "it mixes LDM (encoder.down.N, decoder.up.N) and diffusers (encoder.down_blocks.N, \
                 decoder.up_blocks.N) names"
                .to_string(),
        )),
        (false, false) => {
            groups.sort();
            return Err(EngineError::Model(format!(
                "no VAE weights found: expected encoder.* and decoder.* in LDM names \
                 (encoder.down.N, decoder.up.N, optionally under {}) or diffusers names \
                 (encoder.down_blocks.N, decoder.up_blocks.N); found key groups: {}",
                vae::PREFIX,
                if groups.is_empty() {
                    "none".to_string()
                } else {
                    groups.join(", ")
                }
            )));
        }
    };
    for side in ["encoder", "decoder"] {
        if !vae.keys().any(|k| k.starts_with(&format!("{side}."))) {
            return Err(EngineError::Model(format!(
                "it has no {side} weights; a VAE override needs both the encoder and the decoder"
            )));
        }
    }
    unknown.sort();
    Ok((vae, unknown))
}

/// diffusers names pass through; the attention names of diffusers before 0.14 (`query`, `key`,
/// `value`, `proj_attn`), which diffusers still renames on load, become today's.
fn rename_diffusers(
    parts: Vec<(String, Tensor)>,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let mut out = HashMap::with_capacity(parts.len());
    let mut unknown = Vec::new();
    for (key, tensor) in parts {
        let root = key.split('.').next().unwrap_or_default();
        if !matches!(
            root,
            "encoder" | "decoder" | "quant_conv" | "post_quant_conv"
        ) {
            unknown.push(key);
            continue;
        }
        let pieces: Vec<&str> = key.split('.').collect();
        let legacy = match pieces.as_slice() {
            [side, "mid_block", "attentions", n, old, leaf] => {
                let new = match *old {
                    "query" => "to_q",
                    "key" => "to_k",
                    "value" => "to_v",
                    "proj_attn" => "to_out.0",
                    _ => "",
                };
                (!new.is_empty()).then(|| format!("{side}.mid_block.attentions.{n}.{new}.{leaf}"))
            }
            _ => None,
        };
        match legacy {
            Some(name) => {
                let tensor = if name.ends_with(".weight") {
                    vae::squeeze_1x1(tensor)?
                } else {
                    tensor
                };
                out.insert(name, tensor);
            }
            None => {
                out.insert(key, tensor);
            }
        }
    }
    Ok((out, unknown))
}

//! UNet names: the original LDM `model.diffusion_model.*` layout -> diffusers'
//! `UNet2DConditionModel` names, the block arithmetic that needs `layers_per_block`, the checks
//! that the checkpoint agrees with the config, and a best-effort layout guess from the keys.
//!
//! LDM numbers its blocks flatly: `input_blocks.0` is `conv_in`, then each down block contributes
//! `layers_per_block` entries (a resnet at `.0`, its attention at `.1`) plus one downsampler entry
//! (`.0.op`), except the last block. `output_blocks` hold `layers_per_block + 1` entries per up
//! block (resnet `.0`, attention `.1`, and the upsampler `.1.conv` or `.2.conv` on the last entry).

use std::collections::{BTreeSet, HashMap};

use candle_core::Tensor;

use super::UNetLayout;
use crate::engine::error::{EngineError, Result};

/// Every UNet key of a single-file checkpoint starts with this.
pub(crate) const PREFIX: &str = "model.diffusion_model.";

/// Maps one UNet key (with [`PREFIX`] already stripped) to its diffusers name, or `None` when it
/// is not part of any layout we know (the caller reports it as unknown).
pub(crate) fn map_key(key: &str, layers_per_block: usize) -> Option<String> {
    let per_down = layers_per_block + 1;
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["time_embed", "0", leaf] => Some(format!("time_embedding.linear_1.{leaf}")),
        ["time_embed", "2", leaf] => Some(format!("time_embedding.linear_2.{leaf}")),
        // SDXL's `text_time` embedding of the pooled text and the size conditioning.
        ["label_emb", "0", "0", leaf] => Some(format!("add_embedding.linear_1.{leaf}")),
        ["label_emb", "0", "2", leaf] => Some(format!("add_embedding.linear_2.{leaf}")),
        ["out", "0", leaf] => Some(format!("conv_norm_out.{leaf}")),
        ["out", "2", leaf] => Some(format!("conv_out.{leaf}")),
        ["input_blocks", "0", "0", leaf] => Some(format!("conv_in.{leaf}")),
        ["input_blocks", index, sub, rest @ ..] => {
            let index: usize = index.parse().ok()?;
            // index 0 is conv_in, handled above; anything else under 0 is unknown.
            let flat = index.checked_sub(1)?;
            let (block, layer) = (flat / per_down, flat % per_down);
            match (*sub, layer == layers_per_block) {
                ("0", true) => match rest {
                    ["op", leaf] => Some(format!("down_blocks.{block}.downsamplers.0.conv.{leaf}")),
                    _ => None,
                },
                ("0", false) => {
                    resnet(rest).map(|r| format!("down_blocks.{block}.resnets.{layer}.{r}"))
                }
                ("1", false) => {
                    attention(rest).map(|a| format!("down_blocks.{block}.attentions.{layer}.{a}"))
                }
                _ => None,
            }
        }
        ["middle_block", "0", rest @ ..] => {
            resnet(rest).map(|r| format!("mid_block.resnets.0.{r}"))
        }
        ["middle_block", "1", rest @ ..] => {
            attention(rest).map(|a| format!("mid_block.attentions.0.{a}"))
        }
        ["middle_block", "2", rest @ ..] => {
            resnet(rest).map(|r| format!("mid_block.resnets.1.{r}"))
        }
        ["output_blocks", index, sub, rest @ ..] => {
            let index: usize = index.parse().ok()?;
            let (block, layer) = (index / per_down, index % per_down);
            match (*sub, rest) {
                ("0", _) => resnet(rest).map(|r| format!("up_blocks.{block}.resnets.{layer}.{r}")),
                // The upsampler sits after the resnet (and after the attention when there is
                // one), always on the block's last entry; attention blocks have no `conv` child.
                ("1" | "2", ["conv", leaf]) if layer == layers_per_block => {
                    Some(format!("up_blocks.{block}.upsamplers.0.conv.{leaf}"))
                }
                ("1", _) => {
                    attention(rest).map(|a| format!("up_blocks.{block}.attentions.{layer}.{a}"))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// LDM `ResBlock` parameter names -> diffusers `ResnetBlock2D` names.
fn resnet(rest: &[&str]) -> Option<String> {
    let renamed = match rest {
        ["in_layers", "0", leaf] => format!("norm1.{leaf}"),
        ["in_layers", "2", leaf] => format!("conv1.{leaf}"),
        ["emb_layers", "1", leaf] => format!("time_emb_proj.{leaf}"),
        ["out_layers", "0", leaf] => format!("norm2.{leaf}"),
        ["out_layers", "3", leaf] => format!("conv2.{leaf}"),
        ["skip_connection", leaf] => format!("conv_shortcut.{leaf}"),
        _ => return None,
    };
    Some(renamed)
}

/// LDM `SpatialTransformer` names are already diffusers' `Transformer2DModel` names; only the
/// set of children is checked. SD2's linear `proj_in`/`proj_out` are 2-D and stay 2-D.
fn attention(rest: &[&str]) -> Option<String> {
    match rest.first() {
        Some(&("norm" | "proj_in" | "proj_out" | "transformer_blocks")) if rest.len() >= 2 => {
            Some(rest.join("."))
        }
        _ => None,
    }
}

/// Highest `N + 1` over keys `{PREFIX}{group}.N.*`, or 0 when there are none.
fn flat_count<'a>(keys: impl IntoIterator<Item = &'a str>, group: &str) -> usize {
    super::block_count(keys, &format!("{PREFIX}{group}."))
}

/// Checks, before renaming, that the checkpoint's flat block counts are what the config implies:
/// a wrong `layers_per_block` would otherwise shift every name silently.
pub(crate) fn check_block_counts<'a>(
    keys: impl IntoIterator<Item = &'a str> + Clone,
    layout: &UNetLayout,
) -> Result<()> {
    let blocks = layout.block_out_channels.len();
    if blocks == 0 || layout.layers_per_block == 0 {
        return Err(EngineError::Model(format!(
            "UNet config: block_out_channels ({blocks} entries) and layers_per_block ({}) must \
             both be at least 1",
            layout.layers_per_block
        )));
    }
    if layout.down_has_attention.len() != blocks || layout.up_has_attention.len() != blocks {
        return Err(EngineError::Model(format!(
            "UNet config: {blocks} block_out_channels but {} down and {} up block types",
            layout.down_has_attention.len(),
            layout.up_has_attention.len()
        )));
    }
    let expected = blocks * (layout.layers_per_block + 1);
    for group in ["input_blocks", "output_blocks"] {
        let found = flat_count(keys.clone(), group);
        if found != expected {
            return Err(EngineError::Model(format!(
                "checkpoint UNet has {found} {group} but the config ({blocks} blocks, \
                 layers_per_block {}) implies {expected}; the config does not describe this \
                 checkpoint",
                layout.layers_per_block
            )));
        }
    }
    Ok(())
}

/// Checks the renamed UNet against the config: which blocks carry attention and the channel
/// count of each down block. A mismatch means the config folder belongs to another model.
pub(crate) fn check_layout(unet: &HashMap<String, Tensor>, layout: &UNetLayout) -> Result<()> {
    for (side, flags) in [
        ("down", &layout.down_has_attention),
        ("up", &layout.up_has_attention),
    ] {
        for (block, &config_says) in flags.iter().enumerate() {
            let head = format!("{side}_blocks.{block}.attentions.");
            let has = unet.keys().any(|k| k.starts_with(&head));
            if has != config_says {
                return Err(EngineError::Model(format!(
                    "UNet {side} block {block}: the checkpoint {} attention but the config says \
                     it {}",
                    if has { "has" } else { "has no" },
                    if config_says { "has" } else { "has none" }
                )));
            }
        }
    }
    for (block, &channels) in layout.block_out_channels.iter().enumerate() {
        let name = format!("down_blocks.{block}.resnets.0.conv2.weight");
        let found = unet.get(&name).map(|t| t.dims().first().copied());
        match found {
            Some(Some(c)) if c == channels => {}
            Some(c) => {
                return Err(EngineError::Model(format!(
                    "UNet down block {block} has {} channels in the checkpoint but \
                     block_out_channels[{block}] = {channels} in the config",
                    c.map_or_else(|| "no".to_string(), |c| c.to_string())
                )))
            }
            None => {
                return Err(EngineError::Model(format!(
                    "checkpoint UNet lacks {PREFIX}input_blocks entry for {name}"
                )))
            }
        }
    }
    Ok(())
}

/// Best-effort guess of the UNet layout from checkpoint keys and shapes (full keys, with the
/// `model.diffusion_model.` prefix), for when no config folder is given. `None` when the keys do
/// not form a consistent LDM UNet. SDXL's SGM keys are the same LDM names: its first down block
/// without attention and its deeper transformers (`transformer_blocks.K`) need nothing apart.
#[cfg_attr(not(test), allow(dead_code))] // for single files without a config folder
pub fn infer_unet_layout<'a>(
    shapes: impl IntoIterator<Item = (&'a str, &'a [usize])>,
) -> Option<UNetLayout> {
    let shapes: HashMap<&str, &[usize]> = shapes
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    let keys = || shapes.keys().copied();
    let inputs = flat_count(keys(), "input_blocks");
    let outputs = flat_count(keys(), "output_blocks");
    let downsamplers: BTreeSet<usize> = keys()
        .filter_map(|k| {
            let rest = k.strip_prefix(PREFIX)?.strip_prefix("input_blocks.")?;
            let (index, tail) = rest.split_once('.')?;
            tail.starts_with("0.op.").then(|| index.parse().ok())?
        })
        .collect();
    // The first downsampler closes down block 0, right after its `layers_per_block` entries
    // (and conv_in); with a single block there is none and every entry but conv_in is a layer.
    let layers_per_block = match downsamplers.first() {
        Some(&first) => first.checked_sub(1)?,
        None => inputs.checked_sub(1)?,
    };
    if layers_per_block == 0 {
        return None;
    }
    let per_block = layers_per_block + 1;
    let blocks = outputs / per_block;
    if blocks == 0 || outputs % per_block != 0 || inputs != blocks * per_block {
        return None;
    }
    let mut block_out_channels = Vec::with_capacity(blocks);
    let mut down_has_attention = Vec::with_capacity(blocks);
    let mut up_has_attention = Vec::with_capacity(blocks);
    for block in 0..blocks {
        let first_down = 1 + block * per_block;
        let conv2 = format!("{PREFIX}input_blocks.{first_down}.0.out_layers.3.weight");
        block_out_channels.push(*shapes.get(conv2.as_str())?.first()?);
        let down_attn = format!("{PREFIX}input_blocks.{first_down}.1.");
        down_has_attention.push(keys().any(|k| k.starts_with(&down_attn)));
        let up_attn = format!("{PREFIX}output_blocks.{}.1.", block * per_block);
        let up_conv = format!("{up_attn}conv.");
        up_has_attention.push(keys().any(|k| k.starts_with(&up_attn) && !k.starts_with(&up_conv)));
    }
    Some(UNetLayout {
        block_out_channels,
        layers_per_block,
        down_has_attention,
        up_has_attention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_arithmetic_follows_layers_per_block() {
        // SD1.5 proper: layers_per_block 2, so input_blocks 3 is down block 0's downsampler and
        // input_blocks 4 the first resnet of down block 1.
        assert_eq!(
            map_key("input_blocks.3.0.op.weight", 2).as_deref(),
            Some("down_blocks.0.downsamplers.0.conv.weight")
        );
        assert_eq!(
            map_key("input_blocks.4.0.skip_connection.bias", 2).as_deref(),
            Some("down_blocks.1.resnets.0.conv_shortcut.bias")
        );
        assert_eq!(
            map_key("input_blocks.11.0.emb_layers.1.weight", 2).as_deref(),
            Some("down_blocks.3.resnets.1.time_emb_proj.weight")
        );
        // With one layer per block the same flat index means something else.
        assert_eq!(
            map_key("input_blocks.4.0.op.weight", 1).as_deref(),
            Some("down_blocks.1.downsamplers.0.conv.weight")
        );
        assert_eq!(
            map_key("input_blocks.3.0.in_layers.2.weight", 1).as_deref(),
            Some("down_blocks.1.resnets.0.conv1.weight")
        );
        assert_eq!(
            map_key("output_blocks.8.2.conv.weight", 2).as_deref(),
            Some("up_blocks.2.upsamplers.0.conv.weight")
        );
        assert_eq!(
            map_key("output_blocks.2.1.conv.bias", 2).as_deref(),
            Some("up_blocks.0.upsamplers.0.conv.bias")
        );
        assert_eq!(
            map_key(
                "output_blocks.7.1.transformer_blocks.0.attn2.to_k.weight",
                2
            )
            .as_deref(),
            Some("up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight")
        );
    }

    #[test]
    fn misplaced_or_foreign_keys_are_not_mapped() {
        // A resnet where the downsampler must be, an upsampler mid-block, stray names.
        assert_eq!(map_key("input_blocks.3.0.in_layers.0.weight", 2), None);
        assert_eq!(map_key("output_blocks.1.1.conv.weight", 2), None);
        assert_eq!(map_key("input_blocks.1.1.something.weight", 2), None);
        assert_eq!(map_key("input_blocks.x.0.op.weight", 2), None);
        assert_eq!(map_key("middle_block.3.in_layers.0.weight", 2), None);
        assert_eq!(map_key("time_embed.1.weight", 2), None);
    }

    #[test]
    fn bad_layouts_are_refused_with_a_reason() {
        let layout = UNetLayout {
            block_out_channels: vec![32, 64],
            layers_per_block: 2,
            down_has_attention: vec![true],
            up_has_attention: vec![false, true],
        };
        let keys = ["model.diffusion_model.input_blocks.0.0.weight"];
        let err = check_block_counts(keys.iter().copied(), &layout).unwrap_err();
        assert!(err.to_string().contains("1 down"), "{err}");
    }
}

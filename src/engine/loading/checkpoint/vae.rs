//! VAE names: the original LDM `first_stage_model.*` layout -> diffusers' `AutoencoderKL` names.
//!
//! Two things are more than renames: the decoder's `up.N` blocks are numbered from the lowest
//! resolution in LDM but from the highest in diffusers (so `up.{n-1-i}` becomes `up_blocks.i`),
//! and the mid-block attention's q/k/v/proj_out are 1x1 convolutions in LDM but linear layers in
//! diffusers, so their `[C, C, 1, 1]` weights become `[C, C]`.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::engine::error::Result;

/// Every VAE key of a single-file checkpoint starts with this.
pub(crate) const PREFIX: &str = "first_stage_model.";

/// Renames the VAE tensors (keys with [`PREFIX`] stripped). Returns the diffusers-named map and
/// the original (stripped) keys that did not map.
pub(crate) fn convert(
    tensors: Vec<(String, Tensor)>,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let up_blocks = super::block_count(tensors.iter().map(|(k, _)| k.as_str()), "decoder.up.");
    let mut out = HashMap::with_capacity(tensors.len());
    let mut unknown = Vec::new();
    for (key, tensor) in tensors {
        match map_key(&key, up_blocks) {
            Some((name, linear)) => {
                let tensor = if linear { squeeze_1x1(tensor)? } else { tensor };
                out.insert(name, tensor);
            }
            None => unknown.push(key),
        }
    }
    Ok((out, unknown))
}

/// `[C_out, C_in, 1, 1]` conv weight -> `[C_out, C_in]` linear weight; anything else unchanged
/// (some converted checkpoints already store them 2-D, and biases are 1-D).
pub(crate) fn squeeze_1x1(tensor: Tensor) -> Result<Tensor> {
    match *tensor.dims() {
        [out, inp, 1, 1] => Ok(tensor.reshape((out, inp))?),
        _ => Ok(tensor),
    }
}

/// Maps one stripped VAE key; the flag says the tensor must become a linear weight.
fn map_key(key: &str, up_blocks: usize) -> Option<(String, bool)> {
    let parts: Vec<&str> = key.split('.').collect();
    let plain = |s: String| Some((s, false));
    match parts.as_slice() {
        [conv @ ("quant_conv" | "post_quant_conv"), leaf] => plain(format!("{conv}.{leaf}")),
        [side @ ("encoder" | "decoder"), rest @ ..] => {
            let (name, linear) = map_side(side, rest, up_blocks)?;
            Some((format!("{side}.{name}"), linear))
        }
        _ => None,
    }
}

fn map_side(side: &str, rest: &[&str], up_blocks: usize) -> Option<(String, bool)> {
    let plain = |s: String| Some((s, false));
    match (side, rest) {
        (_, [conv @ ("conv_in" | "conv_out"), leaf]) => plain(format!("{conv}.{leaf}")),
        (_, ["norm_out", leaf]) => plain(format!("conv_norm_out.{leaf}")),
        ("encoder", ["down", n, "block", m, tail @ ..]) => {
            let (n, m) = (index(n)?, index(m)?);
            plain(format!("down_blocks.{n}.resnets.{m}.{}", resnet(tail)?))
        }
        ("encoder", ["down", n, "downsample", "conv", leaf]) => plain(format!(
            "down_blocks.{}.downsamplers.0.conv.{leaf}",
            index(n)?
        )),
        ("decoder", ["up", n, "block", m, tail @ ..]) => {
            let (n, m) = (reversed(n, up_blocks)?, index(m)?);
            plain(format!("up_blocks.{n}.resnets.{m}.{}", resnet(tail)?))
        }
        ("decoder", ["up", n, "upsample", "conv", leaf]) => plain(format!(
            "up_blocks.{}.upsamplers.0.conv.{leaf}",
            reversed(n, up_blocks)?
        )),
        (_, ["mid", "block_1", tail @ ..]) => {
            plain(format!("mid_block.resnets.0.{}", resnet(tail)?))
        }
        (_, ["mid", "block_2", tail @ ..]) => {
            plain(format!("mid_block.resnets.1.{}", resnet(tail)?))
        }
        (_, ["mid", "attn_1", part, leaf]) => {
            let (name, linear) = match *part {
                "norm" => ("group_norm", false),
                "q" => ("to_q", true),
                "k" => ("to_k", true),
                "v" => ("to_v", true),
                "proj_out" => ("to_out.0", true),
                _ => return None,
            };
            Some((
                format!("mid_block.attentions.0.{name}.{leaf}"),
                linear && *leaf == "weight",
            ))
        }
        _ => None,
    }
}

fn index(s: &str) -> Option<usize> {
    s.parse().ok()
}

/// LDM decoder block `n` (lowest resolution first) -> diffusers up block (highest first).
fn reversed(n: &str, up_blocks: usize) -> Option<usize> {
    up_blocks.checked_sub(index(n)? + 1)
}

/// LDM VAE `ResnetBlock` names are diffusers' except the 1x1 shortcut.
fn resnet(tail: &[&str]) -> Option<String> {
    match tail {
        [part @ ("norm1" | "conv1" | "norm2" | "conv2"), leaf] => Some(format!("{part}.{leaf}")),
        ["nin_shortcut", leaf] => Some(format!("conv_shortcut.{leaf}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn decoder_blocks_are_reversed_and_attention_becomes_linear() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::arange(0f32, 16., &dev)?.reshape((4, 4, 1, 1))?;
        let tensors = vec![
            (
                "decoder.up.0.block.1.nin_shortcut.weight".to_string(),
                Tensor::zeros(2, DType::F32, &dev)?,
            ),
            (
                "decoder.up.2.upsample.conv.bias".to_string(),
                Tensor::zeros(2, DType::F32, &dev)?,
            ),
            ("encoder.mid.attn_1.q.weight".to_string(), q.clone()),
            (
                "encoder.mid.attn_1.q.bias".to_string(),
                Tensor::zeros(4, DType::F32, &dev)?,
            ),
            (
                "decoder.mid.attn_1.proj_out.weight".to_string(),
                q.reshape((4, 4))?,
            ),
            (
                "encoder.down.0.block.0.weird.weight".to_string(),
                Tensor::zeros(2, DType::F32, &dev)?,
            ),
        ];
        let (out, unknown) = convert(tensors)?;
        assert!(out.contains_key("decoder.up_blocks.2.resnets.1.conv_shortcut.weight"));
        assert!(out.contains_key("decoder.up_blocks.0.upsamplers.0.conv.bias"));
        let to_q = &out["encoder.mid_block.attentions.0.to_q.weight"];
        assert_eq!(to_q.dims(), &[4, 4]);
        assert_eq!(
            to_q.flatten_all()?.to_vec1::<f32>()?,
            q.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(out["encoder.mid_block.attentions.0.to_q.bias"].dims(), &[4]);
        assert_eq!(
            out["decoder.mid_block.attentions.0.to_out.0.weight"].dims(),
            &[4, 4]
        );
        assert_eq!(
            unknown,
            vec!["encoder.down.0.block.0.weird.weight".to_string()]
        );
        Ok(())
    }
}

//! Text-encoder names: SD1's Hugging Face CLIP (`cond_stage_model.transformer.*`), SD2's
//! OpenCLIP (`cond_stage_model.model.*`) and SDXL's pair (`conditioner.embedders.0.transformer.*`,
//! `conditioner.embedders.1.model.*`) -> the names of the diffusers files.
//!
//! Naming convention of the output: a `CLIPTextModel` (SD1, SD2, SDXL's first encoder) has the
//! names of transformers 5's `text_encoder/model.safetensors` (`embeddings.*`, `encoder.layers.N.*`,
//! `final_layer_norm.*`, no `text_model.` prefix); SDXL's `CLIPTextModelWithProjection` has those
//! of `text_encoder_2/model.safetensors` (`text_model.*` plus `text_projection.weight`).

use std::collections::HashMap;

use candle_core::Tensor;

use crate::engine::error::{EngineError, Result};

/// SD1 text-encoder keys start with this (Hugging Face `CLIPTextModel` names below it).
pub(crate) const SD1_PREFIX: &str = "cond_stage_model.transformer.";
/// SD2 text-encoder keys start with this (OpenCLIP names below it).
pub(crate) const SD2_PREFIX: &str = "cond_stage_model.model.";
/// SDXL's first text encoder (CLIP ViT-L, Hugging Face names below it, like SD1's).
pub(crate) const SDXL_L_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// SDXL's second text encoder (OpenCLIP ViT-bigG names below it, like SD2's).
pub(crate) const SDXL_G_PREFIX: &str = "conditioner.embedders.1.model.";

/// A converted text encoder: the diffusers-named tensors, its number of layers, and the
/// stripped keys that did not map.
pub(crate) struct TextEncoder {
    pub tensors: HashMap<String, Tensor>,
    pub layers: usize,
    pub unknown: Vec<String>,
}

/// SD1: the names are already Hugging Face CLIP names; older checkpoints put them under
/// `text_model.`, which the diffusers file does not, so it is stripped.
pub(crate) fn convert_sd1(tensors: Vec<(String, Tensor)>) -> TextEncoder {
    let mut out = HashMap::with_capacity(tensors.len());
    let mut unknown = Vec::new();
    for (key, tensor) in tensors {
        let name = key.strip_prefix("text_model.").unwrap_or(&key);
        match name.split('.').next() {
            // A buffer (0..77) that the model rebuilds; diffusers drops it too.
            _ if name == "embeddings.position_ids" => {}
            Some("embeddings" | "encoder" | "final_layer_norm") => {
                out.insert(name.to_string(), tensor);
            }
            _ => unknown.push(key),
        }
    }
    let layers = super::block_count(out.keys().map(String::as_str), "encoder.layers.");
    TextEncoder {
        tensors: out,
        layers,
        unknown,
    }
}

/// SD2: OpenCLIP names, fused q/k/v. Like diffusers, SD2 conditions on the penultimate layer
/// (followed by the final layer norm), so the last residual block is dropped and the encoder
/// reports one layer fewer than the checkpoint holds.
pub(crate) fn convert_sd2(tensors: Vec<(String, Tensor)>) -> Result<TextEncoder> {
    let blocks = resblock_count(&tensors);
    if blocks < 2 {
        return Err(EngineError::Model(format!(
            "OpenCLIP text encoder ({SD2_PREFIX}transformer.resblocks.*) has {blocks} blocks; \
             SD2 needs at least 2 because it uses the penultimate one"
        )));
    }
    let open_clip = convert_open_clip(tensors, SD2_PREFIX, Some(blocks - 1))?;
    Ok(TextEncoder {
        tensors: open_clip.tensors,
        layers: blocks - 1,
        unknown: open_clip.unknown,
    })
}

/// SDXL's second encoder (OpenCLIP ViT-bigG) -> transformers `CLIPTextModelWithProjection`
/// names, as its diffusers `text_encoder_2/model.safetensors` has them: everything under
/// `text_model.`, plus `text_projection.weight`. Unlike SD2 every layer is kept: SDXL reads the
/// penultimate hidden state for the context but the last one (after the final norm) for the
/// pooled output.
pub(crate) fn convert_sdxl_g(tensors: Vec<(String, Tensor)>) -> Result<TextEncoder> {
    let layers = resblock_count(&tensors);
    let open_clip = convert_open_clip(tensors, SDXL_G_PREFIX, None)?;
    let mut out: HashMap<String, Tensor> = open_clip
        .tensors
        .into_iter()
        .map(|(k, t)| (format!("text_model.{k}"), t))
        .collect();
    match open_clip.projection {
        // OpenCLIP computes `x @ text_projection` ([width, proj]); a linear layer stores the
        // transpose ([proj, width]). Square projections (bigG's 1280 x 1280) show no difference
        // in shape, so the key's form decides, as in diffusers and ComfyUI.
        Some((Projection::Matrix, p)) => {
            out.insert("text_projection.weight".into(), p.t()?.contiguous()?);
        }
        Some((Projection::Linear, p)) => {
            out.insert("text_projection.weight".into(), p);
        }
        None => {
            return Err(EngineError::Model(format!(
                "SDXL checkpoint lacks {SDXL_G_PREFIX}text_projection, which the pooled text \
                 embedding needs"
            )))
        }
    }
    Ok(TextEncoder {
        tensors: out,
        layers,
        unknown: open_clip.unknown,
    })
}

/// How many `transformer.resblocks.N` an OpenCLIP encoder holds.
fn resblock_count(tensors: &[(String, Tensor)]) -> usize {
    super::block_count(
        tensors.iter().map(|(k, _)| k.as_str()),
        "transformer.resblocks.",
    )
}

/// The form `text_projection` was stored in: OpenCLIP's matrix, or an already linear weight.
enum Projection {
    Matrix,
    Linear,
}

struct OpenClip {
    /// Hugging Face CLIP text-model names, without the `text_model.` prefix.
    tensors: HashMap<String, Tensor>,
    projection: Option<(Projection, Tensor)>,
    unknown: Vec<String>,
}

/// OpenCLIP text-tower names (keys with `origin` stripped) -> Hugging Face CLIP names, splitting
/// the fused q/k/v projections. Block `skip` (if any) is left out.
fn convert_open_clip(
    tensors: Vec<(String, Tensor)>,
    origin: &str,
    skip: Option<usize>,
) -> Result<OpenClip> {
    let mut out = HashMap::with_capacity(tensors.len());
    let mut projection = None;
    let mut unknown = Vec::new();
    for (key, tensor) in tensors {
        let parts: Vec<&str> = key.split('.').collect();
        let name = match parts.as_slice() {
            ["token_embedding", leaf] => format!("embeddings.token_embedding.{leaf}"),
            ["positional_embedding"] => "embeddings.position_embedding.weight".to_string(),
            ["ln_final", leaf] => format!("final_layer_norm.{leaf}"),
            ["text_projection"] => {
                projection = Some((Projection::Matrix, tensor));
                continue;
            }
            ["text_projection", "weight"] => {
                projection = Some((Projection::Linear, tensor));
                continue;
            }
            // The image-text similarity temperature and the causal mask buffer: never weights
            // of the text model.
            ["logit_scale" | "attn_mask"] => continue,
            ["transformer", "resblocks", n, rest @ ..] => {
                let Ok(n) = n.parse::<usize>() else {
                    unknown.push(key);
                    continue;
                };
                if Some(n) == skip {
                    continue;
                }
                let layer = format!("encoder.layers.{n}");
                match rest {
                    ["attn", fused @ ("in_proj_weight" | "in_proj_bias")] => {
                        let leaf = if *fused == "in_proj_weight" {
                            "weight"
                        } else {
                            "bias"
                        };
                        for (proj, part) in ["q_proj", "k_proj", "v_proj"]
                            .into_iter()
                            .zip(split_qkv(&tensor, origin, &key)?)
                        {
                            out.insert(format!("{layer}.self_attn.{proj}.{leaf}"), part);
                        }
                        continue;
                    }
                    _ => match resblock(rest) {
                        Some(inner) => format!("{layer}.{inner}"),
                        None => {
                            unknown.push(key);
                            continue;
                        }
                    },
                }
            }
            _ => {
                unknown.push(key);
                continue;
            }
        };
        out.insert(name, tensor);
    }
    Ok(OpenClip {
        tensors: out,
        projection,
        unknown,
    })
}

/// OpenCLIP residual-block names -> Hugging Face CLIP encoder-layer names (q/k/v handled apart).
fn resblock(rest: &[&str]) -> Option<String> {
    let renamed = match rest {
        ["ln_1", leaf] => format!("layer_norm1.{leaf}"),
        ["ln_2", leaf] => format!("layer_norm2.{leaf}"),
        ["attn", "out_proj", leaf] => format!("self_attn.out_proj.{leaf}"),
        ["mlp", "c_fc", leaf] => format!("mlp.fc1.{leaf}"),
        ["mlp", "c_proj", leaf] => format!("mlp.fc2.{leaf}"),
        _ => return None,
    };
    Some(renamed)
}

/// Splits a fused `[3C, ...]` projection into its q, k and v thirds along dim 0.
fn split_qkv(fused: &Tensor, origin: &str, key: &str) -> Result<[Tensor; 3]> {
    let rows = fused.dims().first().copied().unwrap_or(0);
    if rows == 0 || rows % 3 != 0 {
        return Err(EngineError::Model(format!(
            "{origin}{key} has shape {:?}; its first dimension must be 3 x width",
            fused.dims()
        )));
    }
    let c = rows / 3;
    Ok([
        fused.narrow(0, 0, c)?.contiguous()?,
        fused.narrow(0, c, c)?.contiguous()?,
        fused.narrow(0, 2 * c, c)?.contiguous()?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("f32 tensor")
    }

    #[test]
    fn sd1_strips_text_model_and_drops_position_ids() -> Result<()> {
        let dev = Device::Cpu;
        let t = || Tensor::zeros(3, DType::F32, &dev);
        let te = convert_sd1(vec![
            ("text_model.embeddings.position_ids".into(), t()?),
            ("text_model.encoder.layers.11.mlp.fc1.bias".into(), t()?),
            ("final_layer_norm.weight".into(), t()?),
            ("logit_scale".into(), t()?),
        ]);
        let mut keys: Vec<_> = te.tensors.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["encoder.layers.11.mlp.fc1.bias", "final_layer_norm.weight"]
        );
        assert_eq!(te.layers, 12);
        assert_eq!(te.unknown, ["logit_scale"]);
        Ok(())
    }

    #[test]
    fn sd2_splits_qkv_and_drops_the_last_block() -> Result<()> {
        let dev = Device::Cpu;
        let width = 4;
        let (q, k, v) = (
            Tensor::randn(0f32, 1., (width, width), &dev)?,
            Tensor::randn(0f32, 1., (width, width), &dev)?,
            Tensor::randn(0f32, 1., (width, width), &dev)?,
        );
        let bias = Tensor::randn(0f32, 1., 3 * width, &dev)?;
        let mut tensors = vec![
            (
                "token_embedding.weight".to_string(),
                Tensor::zeros((10, width), DType::F32, &dev)?,
            ),
            (
                "positional_embedding".to_string(),
                Tensor::zeros((7, width), DType::F32, &dev)?,
            ),
            (
                "ln_final.weight".to_string(),
                Tensor::ones(width, DType::F32, &dev)?,
            ),
            (
                "text_projection".to_string(),
                Tensor::zeros((width, width), DType::F32, &dev)?,
            ),
            (
                "logit_scale".to_string(),
                Tensor::zeros((), DType::F32, &dev)?,
            ),
        ];
        for n in 0..3 {
            let p = format!("transformer.resblocks.{n}");
            tensors.push((
                format!("{p}.attn.in_proj_weight"),
                Tensor::cat(&[&q, &k, &v], 0)?,
            ));
            tensors.push((format!("{p}.attn.in_proj_bias"), bias.clone()));
            tensors.push((format!("{p}.attn.out_proj.weight"), q.clone()));
            tensors.push((format!("{p}.ln_1.bias"), bias.clone()));
            tensors.push((format!("{p}.mlp.c_fc.weight"), q.clone()));
            tensors.push((format!("{p}.mlp.c_proj.bias"), bias.clone()));
        }
        let te = convert_sd2(tensors)?;
        assert!(te.unknown.is_empty(), "{:?}", te.unknown);
        assert_eq!(te.layers, 2);
        let out = &te.tensors;
        assert!(!out.keys().any(|k| k.starts_with("encoder.layers.2.")));
        assert_eq!(
            values(&out["encoder.layers.1.self_attn.q_proj.weight"]),
            values(&q)
        );
        assert_eq!(
            values(&out["encoder.layers.1.self_attn.k_proj.weight"]),
            values(&k)
        );
        assert_eq!(
            values(&out["encoder.layers.0.self_attn.v_proj.weight"]),
            values(&v)
        );
        assert_eq!(
            out["encoder.layers.0.self_attn.v_proj.weight"].dims(),
            &[width, width]
        );
        let b = values(&bias);
        assert_eq!(
            values(&out["encoder.layers.0.self_attn.k_proj.bias"]),
            b[width..2 * width]
        );
        for name in [
            "embeddings.token_embedding.weight",
            "embeddings.position_embedding.weight",
            "final_layer_norm.weight",
            "encoder.layers.0.self_attn.out_proj.weight",
            "encoder.layers.1.layer_norm1.bias",
            "encoder.layers.1.mlp.fc1.weight",
            "encoder.layers.1.mlp.fc2.bias",
        ] {
            assert!(out.contains_key(name), "missing {name}");
        }
        // Per kept block: q/k/v weights and biases (6) plus the 4 plain tensors; plus 3 globals.
        assert_eq!(out.len(), 3 + 2 * (6 + 4));
        Ok(())
    }

    #[test]
    fn sd2_refuses_a_fused_projection_that_is_not_three_parts() -> Result<()> {
        let dev = Device::Cpu;
        let mut tensors = Vec::new();
        for n in 0..2 {
            tensors.push((
                format!("transformer.resblocks.{n}.attn.in_proj_bias"),
                Tensor::zeros(5, DType::F32, &dev)?,
            ));
        }
        let err = convert_sd2(tensors).err().expect("must fail");
        assert!(err.to_string().contains("in_proj_bias"), "{err}");
        Ok(())
    }

    #[test]
    fn sdxl_g_takes_an_already_linear_projection_as_it_is() -> Result<()> {
        let dev = Device::Cpu;
        let linear = Tensor::randn(0f32, 1., (3, 4), &dev)?;
        let te = convert_sdxl_g(vec![
            ("text_projection.weight".into(), linear.clone()),
            ("ln_final.bias".into(), Tensor::zeros(4, DType::F32, &dev)?),
        ])?;
        assert_eq!(
            values(&te.tensors["text_projection.weight"]),
            values(&linear)
        );
        assert!(te.tensors.contains_key("text_model.final_layer_norm.bias"));
        assert_eq!(te.layers, 0);
        Ok(())
    }
}

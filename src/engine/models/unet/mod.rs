//! Our UNet (diffusers' `UNet2DConditionModel`), built from the model's `config.json` with
//! diffusers' weight names, running on the fused kernels.
//!
//! The block list comes from the config, so per-block transformer depth, linear projections,
//! blocks without attention and per-block head counts are read, not assumed: SD 1.x, SD 2.x and
//! the tiny fixture are the same code. The forward pass takes [`UNetInputs`], so later
//! conditioning is a field, not a fork: SDXL's added `text_time` embedding is [`AddedConditioning`].
//! Cancellation is checked after every resnet and transformer, so a cancelled job lets go of
//! the engine within one block, not one step.

mod embeddings;
mod transformer;

use candle_core::{DType, Result as CResult, Tensor};
use candle_nn::VarBuilder;

use super::layers::{upsample_nearest, Conv2d, GroupNorm};
use super::resnet::{ResnetBlock2D, ResnetConfig};
use super::weights::{visit_child, VisitWeights, WeightFn};
use crate::engine::architecture::UNetConfig;
use crate::engine::cancel::CancelToken;
use crate::engine::error::{EngineError, Result};
use embeddings::{timestep_features, TimestepEmbedding};
use transformer::{Transformer2D, TransformerConfig};

/// One UNet evaluation's inputs.
pub struct UNetInputs<'a> {
    /// Latents (B, C, H, W).
    pub sample: &'a Tensor,
    pub timestep: f64,
    /// Text conditioning (B, tokens, context_dim).
    pub context: &'a Tensor,
    /// SDXL's added conditioning; required by models that have it, refused by others.
    pub added: Option<&'a AddedConditioning>,
}

/// SDXL's `text_time` conditioning: the pooled text embedding and the six micro-conditioning
/// ids `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]` (height first).
#[derive(Debug, Clone)]
pub struct AddedConditioning {
    /// (B, pooled width): one row per sample, matching the context's batch.
    pub text_embeds: Tensor,
    pub time_ids: [f64; 6],
}

/// `add_time_proj` (sinusoidal features of each id) + `add_embedding` (linear, SiLU, linear).
#[derive(Debug, Clone)]
struct TextTimeEmbedding {
    time_dim: usize,
    embedding: TimestepEmbedding,
}

impl TextTimeEmbedding {
    fn forward(&self, added: &AddedConditioning, c: &UNetConfig, dtype: DType) -> Result<Tensor> {
        let device = added.text_embeds.device();
        let batch = added.text_embeds.dim(0)?;
        let ids = added
            .time_ids
            .iter()
            .map(|&v| {
                timestep_features(v, 1, self.time_dim, c.flip_sin_to_cos, c.freq_shift, device)
            })
            .collect::<CResult<Vec<_>>>()?;
        let ids = Tensor::cat(&ids, 1)?.repeat((batch, 1))?;
        let text = added.text_embeds.to_dtype(DType::F32)?;
        Ok(self
            .embedding
            .forward(&Tensor::cat(&[&text, &ids], 1)?, dtype)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2D>,
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let mut h = self.resnet.forward(x, Some(temb))?;
        check(cancel)?;
        if let Some(attn) = &self.attention {
            h = attn.forward(&h, ctx)?;
            check(cancel)?;
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
struct DownBlock {
    layers: Vec<Layer>,
    downsample: Option<Conv2d>,
}

#[derive(Debug, Clone)]
struct UpBlock {
    layers: Vec<Layer>,
    upsample: Option<Conv2d>,
}

fn check(cancel: &CancelToken) -> Result<()> {
    if cancel.is_cancelled() {
        Err(EngineError::Cancelled)
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct UNet {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    text_time: Option<TextTimeEmbedding>,
    down: Vec<DownBlock>,
    mid: (ResnetBlock2D, Option<Transformer2D>, ResnetBlock2D),
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNetConfig,
    dtype: DType,
}

impl UNet {
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> CResult<Self> {
        let c = config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let temb = 4 * ch[0];
        let groups = c.norm_num_groups;
        let resnet = |cin, cout, scale| ResnetConfig {
            cin,
            cout,
            temb: Some(temb),
            groups,
            eps: c.norm_eps,
            output_scale_factor: scale,
        };
        let transformer = |channels, i: usize| TransformerConfig {
            channels,
            heads: c.heads(i),
            depth: c.transformer_depth(i),
            context_dim: c.context_dim_of(i),
            groups,
            linear_projection: c.use_linear_projection,
        };

        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let attn = c.has_cross_attention(i);
            let layers = (0..c.layers_per_block)
                .map(|j| {
                    let r = resnet(if j == 0 { cin } else { ch[i] }, ch[i], 1.0);
                    Ok(Layer {
                        resnet: ResnetBlock2D::new(vb.pp(format!("resnets.{j}")), r)?,
                        attention: if attn {
                            Some(Transformer2D::new(
                                vb.pp(format!("attentions.{j}")),
                                transformer(ch[i], i),
                            )?)
                        } else {
                            None
                        },
                    })
                })
                .collect::<CResult<Vec<_>>>()?;
            let downsample = if i + 1 < n {
                Some(Conv2d::new(
                    vb.pp("downsamplers.0.conv"),
                    ch[i],
                    ch[i],
                    3,
                    2,
                    c.downsample_padding,
                )?)
            } else {
                None
            };
            down.push(DownBlock { layers, downsample });
        }

        let last = ch[n - 1];
        let mvb = vb.pp("mid_block");
        let mid_scale = c.mid_block_scale_factor;
        let mid = (
            ResnetBlock2D::new(mvb.pp("resnets.0"), resnet(last, last, mid_scale))?,
            if c.mid_block_has_attention() {
                Some(Transformer2D::new(
                    mvb.pp("attentions.0"),
                    transformer(last, n - 1),
                )?)
            } else {
                None
            },
            ResnetBlock2D::new(mvb.pp("resnets.1"), resnet(last, last, mid_scale))?,
        );

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut prev = rev[0];
        for i in 0..n {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let out = rev[i];
            let skip_in = rev[(i + 1).min(n - 1)];
            let block = n - 1 - i;
            let attn = c.up_block_types[i].starts_with("CrossAttn");
            let count = c.layers_per_block + 1;
            let layers = (0..count)
                .map(|j| {
                    let skip = if j + 1 == count { skip_in } else { out };
                    let cin = if j == 0 { prev } else { out };
                    Ok(Layer {
                        resnet: ResnetBlock2D::new(
                            vb.pp(format!("resnets.{j}")),
                            resnet(cin + skip, out, 1.0),
                        )?,
                        attention: if attn {
                            Some(Transformer2D::new(
                                vb.pp(format!("attentions.{j}")),
                                transformer(out, block),
                            )?)
                        } else {
                            None
                        },
                    })
                })
                .collect::<CResult<Vec<_>>>()?;
            let upsample = if i + 1 < n {
                Some(Conv2d::same3(vb.pp("upsamplers.0.conv"), out, out)?)
            } else {
                None
            };
            up.push(UpBlock { layers, upsample });
            prev = out;
        }

        let text_time = match c.text_time() {
            Some((time_dim, pooled)) => Some(TextTimeEmbedding {
                time_dim,
                embedding: TimestepEmbedding::new(
                    vb.pp("add_embedding"),
                    pooled + 6 * time_dim,
                    temb,
                )?,
            }),
            None => None,
        };
        Ok(Self {
            conv_in: Conv2d::same3(vb.pp("conv_in"), c.in_channels, ch[0])?,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?,
            text_time,
            down,
            mid,
            up,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, ch[0], c.norm_eps)?,
            conv_out: Conv2d::same3(vb.pp("conv_out"), ch[0], c.out_channels)?,
            config: config.clone(),
            dtype: vb.dtype(),
        })
    }

    /// One evaluation; the output has the sample's shape. Errors with `Cancelled` within one
    /// block of `cancel` being set.
    pub fn forward(&self, inputs: &UNetInputs, cancel: &CancelToken) -> Result<Tensor> {
        let _span = tracing::trace_span!("unet").entered();
        let out = crate::engine::kernels::attention::with_cancel(cancel, || {
            self.forward_inner(inputs, cancel)
        });
        match out {
            // A kernel that stopped for the flag fails with a tensor error: report why.
            Err(_) if cancel.is_cancelled() => Err(EngineError::Cancelled),
            other => other,
        }
    }

    fn forward_inner(&self, inputs: &UNetInputs, cancel: &CancelToken) -> Result<Tensor> {
        let c = &self.config;
        let x = inputs.sample.to_dtype(self.dtype)?;
        let ctx = inputs.context.to_dtype(self.dtype)?;
        let batch = x.dim(0)?;
        let x = if c.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x
        };
        let t = timestep_features(
            inputs.timestep,
            batch,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
            x.device(),
        )?;
        let mut temb = self.time_embedding.forward(&t, self.dtype)?;
        match (&self.text_time, inputs.added) {
            (Some(tt), Some(added)) => {
                if added.text_embeds.dim(0)? != batch {
                    return Err(EngineError::Model(format!(
                        "{} pooled text rows for a batch of {batch}",
                        added.text_embeds.dim(0)?
                    )));
                }
                temb = (temb + tt.forward(added, c, self.dtype)?)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(EngineError::Model(
                    "this UNet needs SDXL's pooled text and size conditioning".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(EngineError::Model(
                    "this UNet takes no added (SDXL) conditioning".into(),
                ))
            }
        }
        // Every resnet takes silu(temb); compute it once.
        let temb = candle_nn::ops::silu(&temb)?;

        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for layer in &block.layers {
                h = layer.forward(&h, &temb, &ctx, cancel)?;
                skips.push(h.clone());
            }
            if let Some(ds) = &block.downsample {
                h = ds.forward(&h)?;
                skips.push(h.clone());
            }
        }

        h = self.mid.0.forward(&h, Some(&temb))?;
        if let Some(attn) = &self.mid.1 {
            h = attn.forward(&h, &ctx)?;
        }
        h = self.mid.2.forward(&h, Some(&temb))?;
        check(cancel)?;

        for block in &self.up {
            for layer in &block.layers {
                let skip = skips.pop().ok_or_else(|| {
                    EngineError::Model("UNet up blocks need more skips than made".into())
                })?;
                h = layer.forward(&Tensor::cat(&[&h, &skip], 1)?, &temb, &ctx, cancel)?;
            }
            if let Some(us) = &block.upsample {
                // To the next skip's size: odd latent sizes round down on the way down.
                let (th, tw) = match skips.last() {
                    Some(s) => (s.dim(2)?, s.dim(3)?),
                    None => (2 * h.dim(2)?, 2 * h.dim(3)?),
                };
                h = us.forward(&upsample_nearest(&h, th, tw)?)?;
            }
        }
        let h = self.norm_out.forward_silu(&h)?;
        Ok(self.conv_out.forward(&h)?)
    }
}

impl VisitWeights for UNet {
    /// diffusers' module names: `conv_in`, `time_embedding.*`, `add_embedding.*` (SDXL),
    /// `down_blocks.i.{resnets,attentions}.j.*`, `down_blocks.i.downsamplers.0.conv`,
    /// `mid_block.*`, `up_blocks.i.*` with `upsamplers.0.conv`, `conv_out`.
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> CResult<()> {
        visit_child(&mut self.conv_in, prefix, "conv_in", f)?;
        visit_child(&mut self.time_embedding, prefix, "time_embedding", f)?;
        if let Some(tt) = &mut self.text_time {
            visit_child(&mut tt.embedding, prefix, "add_embedding", f)?;
        }
        let layers = |layers: &mut [Layer], block: &str, f: &mut WeightFn| -> CResult<()> {
            for (j, layer) in layers.iter_mut().enumerate() {
                visit_child(&mut layer.resnet, block, &format!("resnets.{j}"), f)?;
                visit_child(&mut layer.attention, block, &format!("attentions.{j}"), f)?;
            }
            Ok(())
        };
        for (i, block) in self.down.iter_mut().enumerate() {
            let name = format!("{prefix}down_blocks.{i}.");
            layers(&mut block.layers, &name, f)?;
            visit_child(&mut block.downsample, &name, "downsamplers.0.conv", f)?;
        }
        let mid = format!("{prefix}mid_block.");
        visit_child(&mut self.mid.0, &mid, "resnets.0", f)?;
        visit_child(&mut self.mid.1, &mid, "attentions.0", f)?;
        visit_child(&mut self.mid.2, &mid, "resnets.1", f)?;
        for (i, block) in self.up.iter_mut().enumerate() {
            let name = format!("{prefix}up_blocks.{i}.");
            layers(&mut block.layers, &name, f)?;
            visit_child(&mut block.upsample, &name, "upsamplers.0.conv", f)?;
        }
        visit_child(&mut self.conv_out, prefix, "conv_out", f)
    }
}

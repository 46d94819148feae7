//! The VAE (diffusers `AutoencoderKL`) on our layers and kernels. The posterior's mean and std
//! are exposed (candle's `AutoEncoderKL` hides them and samples with its global RNG) so one
//! seeded noise source decides every random draw in img2img.

use candle_core::{Result as CResult, Tensor};
use candle_nn::VarBuilder;

use super::attention::SpatialSelfAttention;
use super::layers::{upsample_nearest, Conv2d, GroupNorm};
use super::resnet::{ResnetBlock2D, ResnetConfig};
use crate::engine::architecture::VaeConfig;
use crate::engine::error::Result;

const EPS: f64 = 1e-6;

fn resnet(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> CResult<ResnetBlock2D> {
    ResnetBlock2D::new(
        vb,
        ResnetConfig {
            cin,
            cout,
            temb: None,
            groups,
            eps: EPS,
            output_scale_factor: 1.0,
        },
    )
}

/// resnet, attention, resnet.
struct MidBlock {
    first: ResnetBlock2D,
    attn: SpatialSelfAttention,
    second: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> CResult<Self> {
        Ok(Self {
            first: resnet(vb.pp("resnets.0"), channels, channels, groups)?,
            attn: SpatialSelfAttention::new(vb.pp("attentions.0"), channels, groups, EPS)?,
            second: resnet(vb.pp("resnets.1"), channels, channels, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let h = self.first.forward(x, None)?;
        let h = self.attn.forward(&h)?;
        self.second.forward(&h, None)
    }
}

struct Stage {
    resnets: Vec<ResnetBlock2D>,
    /// Encoder: stride-2 conv after a (0, 1, 0, 1) pad; decoder: 2x nearest, then conv.
    resample: Option<Conv2d>,
}

struct Encoder {
    conv_in: Conv2d,
    down: Vec<Stage>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> CResult<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let last = ch[ch.len() - 1];
        let mut down = Vec::with_capacity(ch.len());
        for i in 0..ch.len() {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { cin } else { ch[i] };
                    resnet(vb.pp(format!("resnets.{j}")), c, ch[i], g)
                })
                .collect::<CResult<Vec<_>>>()?;
            let resample = if i + 1 < ch.len() {
                Some(Conv2d::new(
                    vb.pp("downsamplers.0.conv"),
                    ch[i],
                    ch[i],
                    3,
                    2,
                    0,
                )?)
            } else {
                None
            };
            down.push(Stage { resnets, resample });
        }
        Ok(Self {
            conv_in: Conv2d::same3(vb.pp("conv_in"), cfg.in_channels, ch[0])?,
            down,
            mid: MidBlock::new(vb.pp("mid_block"), last, g)?,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), g, last, EPS)?,
            conv_out: Conv2d::same3(vb.pp("conv_out"), last, 2 * cfg.latent_channels)?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for stage in &self.down {
            for r in &stage.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(conv) = &stage.resample {
                h = conv.forward(&h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<Stage>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> CResult<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut up = Vec::with_capacity(rev.len());
        for i in 0..rev.len() {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let cin = if i == 0 { rev[0] } else { rev[i - 1] };
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let c = if j == 0 { cin } else { rev[i] };
                    resnet(vb.pp(format!("resnets.{j}")), c, rev[i], g)
                })
                .collect::<CResult<Vec<_>>>()?;
            let resample = if i + 1 < rev.len() {
                Some(Conv2d::same3(vb.pp("upsamplers.0.conv"), rev[i], rev[i])?)
            } else {
                None
            };
            up.push(Stage { resnets, resample });
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: Conv2d::same3(vb.pp("conv_in"), cfg.latent_channels, rev[0])?,
            mid: MidBlock::new(vb.pp("mid_block"), rev[0], g)?,
            up,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), g, first, EPS)?,
            conv_out: Conv2d::same3(vb.pp("conv_out"), first, cfg.out_channels)?,
        })
    }

    fn forward(&self, z: &Tensor) -> CResult<Tensor> {
        let _span = tracing::trace_span!("vae_decode").entered();
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for stage in &self.up {
            for r in &stage.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(conv) = &stage.resample {
                let (hh, ww) = (h.dim(2)?, h.dim(3)?);
                h = conv.forward(&upsample_nearest(&h, 2 * hh, 2 * ww)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

/// The encoder posterior: a diagonal Gaussian per latent cell.
pub struct Posterior {
    pub mean: Tensor,
    pub std: Tensor,
}

pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(vb: VarBuilder, config: VaeConfig) -> Result<Self> {
        let lc = config.latent_channels;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &config)?,
            decoder: Decoder::new(vb.pp("decoder"), &config)?,
            quant_conv: if config.use_quant_conv {
                Some(Conv2d::pointwise(vb.pp("quant_conv"), 2 * lc, 2 * lc)?)
            } else {
                None
            },
            post_quant_conv: if config.use_post_quant_conv {
                Some(Conv2d::pointwise(vb.pp("post_quant_conv"), lc, lc)?)
            } else {
                None
            },
            config,
        })
    }

    /// Image in [-1, 1], NCHW -> posterior over (unscaled) latents.
    pub fn encode(&self, image: &Tensor) -> Result<Posterior> {
        let mut h = self.encoder.forward(image)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        let lc = self.config.latent_channels;
        let mean = h.narrow(1, 0, lc)?;
        // diffusers clamps the log-variance so exp() stays finite on odd inputs.
        let logvar = h.narrow(1, lc, lc)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(Posterior { mean, std })
    }

    /// Unscaled latents -> image in about [-1, 1], NCHW.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(latents)?,
            None => latents.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }
}

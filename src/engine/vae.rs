//! The VAE (diffusers `AutoencoderKL`) assembled from candle's public blocks. candle's own
//! `AutoEncoderKL` hides the posterior's mean and std and samples with its global RNG; img2img
//! needs both exposed so one seeded noise source decides every random draw.

use candle_core::{Module, Tensor};
use candle_nn as nn;
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
    UpDecoderBlock2D, UpDecoderBlock2DConfig,
};

use super::config::VaeConfig;
use super::error::Result;

const EPS: f64 = 1e-6;

fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<nn::Conv2d> {
    let cfg = nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    nn::conv2d(cin, cout, 3, cfg, vb)
}

fn mid_block(
    channels: usize,
    groups: usize,
    vb: VarBuilder,
) -> candle_core::Result<UNetMidBlock2D> {
    let cfg = UNetMidBlock2DConfig {
        resnet_eps: EPS,
        output_scale_factor: 1.,
        attn_num_head_channels: None,
        resnet_groups: Some(groups),
        ..Default::default()
    };
    UNetMidBlock2D::new(vb, channels, None, cfg)
}

struct Encoder {
    conv_in: nn::Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let last = ch[ch.len() - 1];
        let down = (0..ch.len())
            .map(|i| {
                let block_cfg = DownEncoderBlock2DConfig {
                    num_layers: cfg.layers_per_block,
                    resnet_eps: EPS,
                    resnet_groups: cfg.norm_num_groups,
                    add_downsample: i + 1 < ch.len(),
                    downsample_padding: 0,
                    ..Default::default()
                };
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                DownEncoderBlock2D::new(vb.pp(format!("down_blocks.{i}")), cin, ch[i], block_cfg)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3(cfg.in_channels, ch[0], vb.pp("conv_in"))?,
            down,
            mid: mid_block(last, cfg.norm_num_groups, vb.pp("mid_block"))?,
            norm_out: nn::group_norm(cfg.norm_num_groups, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(last, 2 * cfg.latent_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down {
            xs = block.forward(&xs)?;
        }
        let xs = self.norm_out.forward(&self.mid.forward(&xs, None)?)?;
        self.conv_out.forward(&nn::ops::silu(&xs)?)
    }
}

struct Decoder {
    conv_in: nn::Conv2d,
    mid: UNetMidBlock2D,
    up: Vec<UpDecoderBlock2D>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let up = (0..rev.len())
            .map(|i| {
                let block_cfg = UpDecoderBlock2DConfig {
                    num_layers: cfg.layers_per_block + 1,
                    resnet_eps: EPS,
                    resnet_groups: cfg.norm_num_groups,
                    add_upsample: i + 1 < rev.len(),
                    ..Default::default()
                };
                let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                UpDecoderBlock2D::new(vb.pp(format!("up_blocks.{i}")), cin, rev[i], block_cfg)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: conv3(cfg.latent_channels, rev[0], vb.pp("conv_in"))?,
            mid: mid_block(rev[0], cfg.norm_num_groups, vb.pp("mid_block"))?,
            up,
            norm_out: nn::group_norm(cfg.norm_num_groups, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(first, cfg.out_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.mid.forward(&self.conv_in.forward(xs)?, None)?;
        for block in &self.up {
            xs = block.forward(&xs)?;
        }
        let xs = self.norm_out.forward(&xs)?;
        self.conv_out.forward(&nn::ops::silu(&xs)?)
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
    quant_conv: Option<nn::Conv2d>,
    post_quant_conv: Option<nn::Conv2d>,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(vb: VarBuilder, config: VaeConfig) -> Result<Self> {
        let lc = config.latent_channels;
        let conv1 = |c: usize, name: &str| nn::conv2d(c, c, 1, Default::default(), vb.pp(name));
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &config)?,
            decoder: Decoder::new(vb.pp("decoder"), &config)?,
            quant_conv: if config.use_quant_conv {
                Some(conv1(2 * lc, "quant_conv")?)
            } else {
                None
            },
            post_quant_conv: if config.use_post_quant_conv {
                Some(conv1(lc, "post_quant_conv")?)
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

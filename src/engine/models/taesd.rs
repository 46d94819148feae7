//! TAESD, the tiny autoencoder (diffusers `AutoencoderTiny`, madebyollin's taesd.py) on our
//! layers and kernels: a few 3x3 convolutions per scale and no attention, so a decode costs a
//! small fraction of the VAE's. It works in the UNet's own (scaled) latent space, which is what
//! makes it a preview decoder and a fast final decoder alike.
//!
//! Both weight layouts are read through one builder: diffusers names its layers
//! `encoder.layers.{k}` / `decoder.layers.{i}`, the original files name them `{k}` / `{i + 1}`
//! (the original decoder's layer 0 is its input clamp, which has no weights).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::layers::{upsample_nearest, Conv2d};

/// The shape of a TAESD: diffusers' `AutoencoderTiny` config keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TaesdConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub upsampling_scaling_factor: usize,
    /// Latents the pipeline hands over are divided by this first (1.0 for SD and SDXL).
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl Default for TaesdConfig {
    /// The published taesd / taesdxl: width 64, 4 latent channels.
    fn default() -> Self {
        Self::original(64, 4)
    }
}

impl TaesdConfig {
    /// taesd.py's fixed structure at `width` channels (what the original files hold).
    pub fn original(width: usize, latent_channels: usize) -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels,
            encoder_block_out_channels: vec![width; 4],
            decoder_block_out_channels: vec![width; 4],
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            upsampling_scaling_factor: 2,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }

    /// What this implementation runs: ReLU, nearest x2 upsampling, matching stage lists.
    pub fn check(&self) -> std::result::Result<(), String> {
        let stages = |c: &[usize], b: &[usize], what: &str| {
            if c.is_empty() || c.len() != b.len() || c.contains(&0) {
                Err(format!(
                    "{what}: block_out_channels {c:?} and num blocks {b:?} must be non-empty \
                     lists of the same length"
                ))
            } else {
                Ok(())
            }
        };
        stages(
            &self.encoder_block_out_channels,
            &self.num_encoder_blocks,
            "encoder",
        )?;
        stages(
            &self.decoder_block_out_channels,
            &self.num_decoder_blocks,
            "decoder",
        )?;
        if self.act_fn != "relu" {
            return Err(format!("act_fn {:?} (only relu is supported)", self.act_fn));
        }
        if self.upsample_fn != "nearest" || self.upsampling_scaling_factor != 2 {
            return Err(format!(
                "upsampling {:?} x{} (only nearest x2 is supported)",
                self.upsample_fn, self.upsampling_scaling_factor
            ));
        }
        if self.latent_channels == 0 || self.scaling_factor.is_nan() || self.scaling_factor <= 0.0 {
            return Err("latent_channels and scaling_factor must be positive".into());
        }
        Ok(())
    }
}

/// `relu(conv(relu(conv(relu(conv(x))))) + skip(x))`; the skip is the identity when the
/// channel counts match (it has no weights then).
struct Block {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl Block {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            convs: [
                Conv2d::same3(vb.pp("conv.0"), cin, cout)?,
                Conv2d::same3(vb.pp("conv.2"), cout, cout)?,
                Conv2d::same3(vb.pp("conv.4"), cout, cout)?,
            ],
            skip: if cin == cout {
                None
            } else {
                Some(Conv2d::without_bias(vb.pp("skip"), cin, cout, 1, 1, 0)?)
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.convs[0].forward(x)?.relu()?;
        let h = self.convs[1].forward(&h)?.relu()?;
        let h = self.convs[2].forward(&h)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        (h + skip)?.relu()
    }
}

/// One layer of the encoder's or decoder's `nn.Sequential`.
enum Layer {
    Conv(Conv2d),
    Block(Block),
    Relu,
    Upsample,
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Conv(c) => c.forward(x),
            Layer::Block(b) => b.forward(x),
            Layer::Relu => x.relu(),
            Layer::Upsample => {
                let (h, w) = (x.dim(2)?, x.dim(3)?);
                upsample_nearest(x, 2 * h, 2 * w)
            }
        }
    }
}

/// Builds the layers in order, naming each by its index plus `offset`.
struct Layers<'a> {
    vb: VarBuilder<'a>,
    offset: usize,
    layers: Vec<Layer>,
}

impl Layers<'_> {
    fn vb(&self) -> VarBuilder<'_> {
        self.vb.pp((self.layers.len() + self.offset).to_string())
    }

    fn conv(&mut self, cin: usize, cout: usize, stride: usize, bias: bool) -> Result<()> {
        let vb = self.vb();
        let conv = if bias {
            Conv2d::new(vb, cin, cout, 3, stride, 1)?
        } else {
            Conv2d::without_bias(vb, cin, cout, 3, stride, 1)?
        };
        self.layers.push(Layer::Conv(conv));
        Ok(())
    }

    fn blocks(&mut self, n: usize, channels: usize) -> Result<()> {
        for _ in 0..n {
            let block = Block::new(self.vb(), channels, channels)?;
            self.layers.push(Layer::Block(block));
        }
        Ok(())
    }

    fn push(&mut self, layer: Layer) {
        self.layers.push(layer);
    }

    fn run(layers: &[Layer], x: Tensor) -> Result<Tensor> {
        layers.iter().try_fold(x, |h, l| l.forward(&h))
    }
}

/// Image in [0, 1] -> latents.
pub struct TaesdEncoder {
    layers: Vec<Layer>,
}

impl TaesdEncoder {
    /// `vb` at the encoder's layer list (`encoder.layers`, or the original file's root).
    pub fn new(vb: VarBuilder, cfg: &TaesdConfig) -> Result<Self> {
        let mut l = Layers {
            vb,
            offset: 0,
            layers: vec![],
        };
        let ch = &cfg.encoder_block_out_channels;
        for (i, (&c, &n)) in ch.iter().zip(&cfg.num_encoder_blocks).enumerate() {
            if i == 0 {
                l.conv(cfg.in_channels, c, 1, true)?;
            } else {
                l.conv(c, c, 2, false)?;
            }
            l.blocks(n, c)?;
        }
        l.conv(ch[ch.len() - 1], cfg.latent_channels, 1, true)?;
        Ok(Self { layers: l.layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("taesd_encode").entered();
        Layers::run(&self.layers, x.clone())
    }
}

/// Latents -> image in about [0, 1] (unclamped).
pub struct TaesdDecoder {
    layers: Vec<Layer>,
}

impl TaesdDecoder {
    /// `vb` at the decoder's layer list; `offset` 1 for the original files, whose layer 0 is
    /// the input clamp.
    pub fn new(vb: VarBuilder, cfg: &TaesdConfig, offset: usize) -> Result<Self> {
        let mut l = Layers {
            vb,
            offset,
            layers: vec![],
        };
        let ch = &cfg.decoder_block_out_channels;
        l.conv(cfg.latent_channels, ch[0], 1, true)?;
        l.push(Layer::Relu);
        for (i, (&c, &n)) in ch.iter().zip(&cfg.num_decoder_blocks).enumerate() {
            l.blocks(n, c)?;
            let last = i + 1 == ch.len();
            if !last {
                l.push(Layer::Upsample);
            }
            let cout = if last { cfg.out_channels } else { c };
            l.conv(c, cout, 1, last)?;
        }
        Ok(Self { layers: l.layers })
    }

    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("taesd_decode").entered();
        // The input clamp: latents beyond +-3 saturate.
        let z = ((z / 3.0)?.tanh()? * 3.0)?;
        Layers::run(&self.layers, z)
    }
}

/// A loaded TAESD: always a decoder, an encoder when its weights were there.
pub struct Taesd {
    pub config: TaesdConfig,
    pub decoder: TaesdDecoder,
    pub encoder: Option<TaesdEncoder>,
}

impl Taesd {
    /// Scaled latents (the UNet's) -> image in about [-1, 1], as diffusers'
    /// `decode(latents / scaling_factor)`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = if self.config.scaling_factor == 1.0 && self.config.shift_factor == 0.0 {
            latents.clone()
        } else {
            ((latents / self.config.scaling_factor)? + self.config.shift_factor)?
        };
        self.decoder.forward(&z)?.affine(2.0, -1.0)
    }

    /// Image in [-1, 1] -> latents, as diffusers' `encode(image).latents` (deterministic: no
    /// posterior). `None` without encoder weights.
    pub fn encode(&self, image: &Tensor) -> Option<Result<Tensor>> {
        let enc = self.encoder.as_ref()?;
        Some(image.affine(0.5, 0.5).and_then(|x| enc.forward(&x)))
    }
}

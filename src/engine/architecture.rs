//! Model architecture read from the model's own files: diffusers `config.json`s for the UNet,
//! VAE and text encoder, and the pipeline's `model_index.json`. Nothing here is a preset: a
//! non-standard model (the tiny test fixture, SD 2.x, fine-tunes) is described by its files.

use std::path::Path;

use serde::Deserialize;

use crate::engine::error::{EngineError, Result};

/// Reads and parses one JSON config file, naming the file in any error.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Model(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::Model(format!("invalid JSON in {}: {e}", path.display())))
}

/// The pipeline's `model_index.json`, for the one flag the engine reads from it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelIndex {
    /// SDXL pipelines: an empty negative prompt is zeros rather than an encoded "".
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
}

/// Reads `model_index.json` of a diffusers folder; a folder without one gets the defaults.
pub(crate) fn read_model_index(dir: &Path) -> Result<ModelIndex> {
    let path = dir.join("model_index.json");
    if path.is_file() {
        read_json(&path)
    } else {
        Ok(ModelIndex::default())
    }
}

/// A value diffusers lets be either one number for every block or one per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Option<usize> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }
}

/// diffusers `UNet2DConditionModel` config (the fields that shape the network).
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// diffusers reads this as the number of heads when `num_attention_heads` is null.
    #[serde(default)]
    pub attention_head_dim: Option<PerBlock>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: PerBlock,
    #[serde(default)]
    pub transformer_layers_per_block: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "eps5")]
    pub norm_eps: f64,
    /// SDXL's added conditioning: "text_time" (pooled text embedding plus the six size /
    /// crop micro-conditioning ids). No other kind is supported.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each micro-conditioning id's sinusoidal embedding (SDXL: 256).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of the added embedding: pooled width + 6 x `addition_time_embed_dim`.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
}

fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn thirty_two() -> usize {
    32
}
fn eps5() -> f64 {
    1e-5
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.check().map_err(|m| {
            EngineError::Model(format!("unsupported UNet config {}: {m}", path.display()))
        })?;
        Ok(cfg)
    }

    /// Rejects shapes our UNet cannot build, with a message naming the field.
    fn check(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{n} block_out_channels but {} down and {} up block types",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") => {
                let (Some(t), Some(p)) = (
                    self.addition_time_embed_dim,
                    self.projection_class_embeddings_input_dim,
                ) else {
                    return Err(
                        "addition_embed_type text_time needs addition_time_embed_dim and \
                                projection_class_embeddings_input_dim"
                            .into(),
                    );
                };
                if t == 0 || t % 2 != 0 || p <= 6 * t {
                    return Err(format!(
                        "projection_class_embeddings_input_dim {p} must exceed 6 x \
                         addition_time_embed_dim {t} (an even, non-zero width)"
                    ));
                }
            }
            Some(other) => return Err(format!("addition_embed_type '{other}' is not supported")),
        }
        for (i, t) in self.down_block_types.iter().enumerate() {
            let mirrored = &self.up_block_types[n - 1 - i];
            if t.starts_with("CrossAttn") != mirrored.starts_with("CrossAttn") {
                return Err(format!(
                    "up block {} ({mirrored}) does not mirror down block {i} ({t})",
                    n - 1 - i
                ));
            }
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let heads = self.heads(i);
            if heads == 0 || c % heads != 0 || c % self.norm_num_groups != 0 {
                return Err(format!(
                    "block {i}: {c} channels do not split into {heads} heads / {} groups",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }

    /// Number of attention heads of block `i`, read the way diffusers reads it.
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref())
            .and_then(|h| h.get(i))
            .unwrap_or(8)
    }

    pub fn has_cross_attention(&self, i: usize) -> bool {
        self.down_block_types
            .get(i)
            .is_some_and(|t| t.starts_with("CrossAttn"))
    }

    pub fn context_dim(&self) -> usize {
        self.cross_attention_dim.get(0).unwrap_or(768)
    }

    /// Cross-attention input width of block `i` (one value for all blocks in every SD model).
    pub fn context_dim_of(&self, i: usize) -> usize {
        self.cross_attention_dim
            .get(i)
            .unwrap_or_else(|| self.context_dim())
    }

    /// Transformer blocks per attention of block `i` (SDXL's `transformer_layers_per_block`).
    pub fn transformer_depth(&self, i: usize) -> usize {
        self.transformer_layers_per_block
            .as_ref()
            .and_then(|t| t.get(i))
            .unwrap_or(1)
    }

    /// diffusers' default mid block (`UNetMidBlock2DCrossAttn`) has a transformer;
    /// `UNetMidBlock2D` has none.
    /// SDXL's added conditioning, when the model has it: (time id width, pooled text width).
    pub fn text_time(&self) -> Option<(usize, usize)> {
        match (
            self.addition_embed_type.as_deref(),
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) {
            (Some("text_time"), Some(t), Some(p)) => Some((t, p - 6 * t)),
            _ => None,
        }
    }

    pub fn mid_block_has_attention(&self) -> bool {
        self.mid_block_type
            .as_deref()
            .is_none_or(|t| t.contains("CrossAttn"))
    }
}

/// diffusers `AutoencoderKL` config.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// The VAE overflows in f16 (SDXL's): run it in f32 when the model is loaded in f16.
    #[serde(default)]
    pub force_upcast: bool,
}

fn three() -> usize {
    3
}
fn sd_scale() -> f64 {
    0.18215
}

impl VaeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        if cfg.block_out_channels.is_empty()
            || cfg
                .block_out_channels
                .iter()
                .any(|c| c % cfg.norm_num_groups != 0)
        {
            return Err(EngineError::Model(format!(
                "unsupported VAE config {}: block_out_channels {:?} with {} groups",
                path.display(),
                cfg.block_out_channels,
                cfg.norm_num_groups
            )));
        }
        Ok(cfg)
    }

    /// Pixels per latent cell: each down block but the last halves the size.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Activation of the CLIP MLP: OpenAI CLIP (SD 1.x) uses quick_gelu, OpenCLIP (SD 2.x) gelu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    QuickGelu,
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh")]
    Gelu,
}

/// transformers `CLIPTextConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "seventy_seven")]
    pub max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: ClipActivation,
    #[serde(default = "eps5")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (transformers writes it for every CLIP config; only weights
    /// that have a projection use it).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn seventy_seven() -> usize {
    77
}
fn quick_gelu() -> ClipActivation {
    ClipActivation::QuickGelu
}

impl ClipConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(EngineError::Model(format!(
                "unsupported text encoder config {}: hidden_size {} not divisible by {} heads",
                path.display(),
                cfg.hidden_size,
                cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-sd15/model"
    );

    #[test]
    fn reads_fixture_configs() {
        let unet = UNetConfig::load(&Path::new(FIXTURE).join("unet/config.json")).unwrap();
        assert_eq!(unet.block_out_channels, vec![32, 64, 64]);
        assert_eq!(unet.heads(0), 4);
        assert!(unet.has_cross_attention(1) && !unet.has_cross_attention(2));
        assert_eq!(unet.transformer_depth(0), 1);
        assert_eq!(unet.context_dim_of(1), 32);
        assert!(unet.mid_block_has_attention());
        let vae = VaeConfig::load(&Path::new(FIXTURE).join("vae/config.json")).unwrap();
        assert_eq!(vae.downscale(), 8);
        let clip = ClipConfig::load(&Path::new(FIXTURE).join("text_encoder/config.json")).unwrap();
        assert_eq!(clip.hidden_act, ClipActivation::QuickGelu);
        assert_eq!(clip.num_hidden_layers, 2);
    }

    #[test]
    fn rejects_unbuildable_unet() {
        let mut unet: UNetConfig = serde_json::from_str(
            r#"{"block_out_channels":[32,64],"down_block_types":["CrossAttnDownBlock2D","DownBlock2D"],
                "up_block_types":["UpBlock2D","CrossAttnUpBlock2D"],"attention_head_dim":3,"cross_attention_dim":32}"#,
        )
        .unwrap();
        assert!(unet.check().unwrap_err().contains("heads"));
        unet.attention_head_dim = Some(PerBlock::One(4));
        assert!(unet.check().is_ok());
        unet.up_block_types.reverse();
        assert!(unet.check().unwrap_err().contains("mirror"));
    }
}

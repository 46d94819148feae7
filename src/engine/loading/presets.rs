//! The built-in architectures (SD 1.5, SD 2.1, SDXL base): diffusers configs compiled in for
//! single files without a `--config` folder and for `random:ARCH` benchmark models, and the
//! configs of a diffusers folder read the same way.

use std::path::Path;

use crate::engine::architecture::{read_json, read_model_index, ClipConfig, UNetConfig, VaeConfig};
use crate::engine::error::{EngineError, Result};
use crate::engine::samplers::SchedulerConfig;
use crate::engine::text::{ClipTokenizer, PadToken};

pub(super) struct Preset {
    unet: &'static str,
    vae: &'static str,
    text_encoder: &'static str,
    /// SDXL's second encoder (its tokenizer pads with `!`).
    text_encoder_2: Option<&'static str>,
    scheduler: &'static str,
    pad: &'static str,
}

pub(super) const SD15: Preset = Preset {
    unet: include_str!("../presets/sd15/unet.json"),
    vae: include_str!("../presets/sd15/vae.json"),
    text_encoder: include_str!("../presets/sd15/text_encoder.json"),
    text_encoder_2: None,
    scheduler: include_str!("../presets/sd15/scheduler.json"),
    pad: "<|endoftext|>",
};

pub(super) const SD21: Preset = Preset {
    unet: include_str!("../presets/sd21/unet.json"),
    vae: include_str!("../presets/sd21/vae.json"),
    text_encoder: include_str!("../presets/sd21/text_encoder.json"),
    text_encoder_2: None,
    scheduler: include_str!("../presets/sd21/scheduler.json"),
    pad: "!",
};

pub(super) const SDXL: Preset = Preset {
    unet: include_str!("../presets/sdxl/unet.json"),
    vae: include_str!("../presets/sdxl/vae.json"),
    text_encoder: include_str!("../presets/sdxl/text_encoder.json"),
    text_encoder_2: Some(include_str!("../presets/sdxl/text_encoder_2.json")),
    scheduler: include_str!("../presets/sdxl/scheduler.json"),
    pad: "<|endoftext|>",
};

/// The built-in CLIP vocabulary with `pad` as its padding token.
fn preset_tokenizer(pad: &str) -> Result<ClipTokenizer> {
    ClipTokenizer::from_bytes(CLIP_VOCAB, CLIP_MERGES, PadToken::Token(pad.to_string()))
}

/// A component's configs, from a diffusers folder describing the model or else the preset.
pub(super) struct Configs {
    pub(super) unet: UNetConfig,
    pub(super) vae: VaeConfig,
    pub(super) text_encoder: ClipConfig,
    pub(super) tokenizer: ClipTokenizer,
    /// SDXL: the second encoder's config and tokenizer.
    pub(super) text_encoder_2: Option<(ClipConfig, ClipTokenizer)>,
    pub(super) scheduler: SchedulerConfig,
    pub(super) force_zeros_for_empty_prompt: bool,
}

impl Configs {
    pub(super) fn from_preset(preset: &Preset) -> Result<Self> {
        Ok(Self {
            unet: parse_preset(preset.unet)?,
            vae: parse_preset(preset.vae)?,
            text_encoder: parse_preset(preset.text_encoder)?,
            tokenizer: preset_tokenizer(preset.pad)?,
            text_encoder_2: match preset.text_encoder_2 {
                Some(te2) => Some((parse_preset(te2)?, preset_tokenizer("!")?)),
                None => None,
            },
            scheduler: parse_preset(preset.scheduler)?,
            force_zeros_for_empty_prompt: preset.text_encoder_2.is_some(),
        })
    }

    /// An SDXL folder is one with a second text encoder, or whose UNet takes SDXL's added
    /// conditioning (then a missing `text_encoder_2/` is an error naming it).
    pub(super) fn from_dir(dir: &Path) -> Result<Self> {
        let index = read_model_index(dir)?;
        let unet = UNetConfig::load(&dir.join("unet/config.json"))?;
        let sdxl = dir.join("text_encoder_2").is_dir() || unet.text_time().is_some();
        Ok(Self {
            unet,
            vae: VaeConfig::load(&dir.join("vae/config.json"))?,
            text_encoder: ClipConfig::load(&dir.join("text_encoder/config.json"))?,
            tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
            text_encoder_2: if sdxl {
                Some((
                    ClipConfig::load(&dir.join("text_encoder_2/config.json"))?,
                    ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?,
                ))
            } else {
                None
            },
            scheduler: read_json(&dir.join("scheduler/scheduler_config.json"))?,
            force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt.unwrap_or(sdxl),
        })
    }
}

const CLIP_VOCAB: &[u8] = include_bytes!("../presets/clip/vocab.json");
const CLIP_MERGES: &[u8] = include_bytes!("../presets/clip/merges.txt");

fn parse_preset<T: for<'de> serde::Deserialize<'de>>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| EngineError::Model(format!("bad built-in preset: {e}")))
}

//! TAESD in the engine: which decoder a request paints its final image with ("vae" or
//! "taesd"), where the TAESD files of each model family are (`MODELS_DIR/taesd/` for SD 1.x and
//! 2.x, `MODELS_DIR/taesdxl/` for SDXL), and loading them from either layout: diffusers'
//! `AutoencoderTiny` folder (`config.json` + `diffusion_pytorch_model.safetensors`) or
//! madebyollin's `taesd_decoder.safetensors` / `taesd_encoder.safetensors`, whose width and
//! latent channels are read from the tensor shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use super::error::{EngineError, Result};
use super::loading::checkpoint::Architecture;
use super::models::taesd::{Taesd, TaesdConfig, TaesdDecoder, TaesdEncoder};

/// The folders under the models directory `limner pull taesd` / `limner pull taesdxl` fill.
pub const TAESD_DIR: &str = "taesd";
pub const TAESDXL_DIR: &str = "taesdxl";

/// What decodes a request's final latents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// The model's VAE (or the VAE override).
    #[default]
    Vae,
    /// The family's TAESD: a fraction of the VAE's time, a little softer.
    Taesd,
}

impl Decoder {
    /// "vae" or "taesd" (any case); anything else is an error naming `decoder`.
    pub fn parse(value: &str) -> Result<Decoder> {
        match value.trim().to_ascii_lowercase().as_str() {
            "vae" => Ok(Decoder::Vae),
            "taesd" => Ok(Decoder::Taesd),
            other => Err(EngineError::invalid(
                "decoder",
                format!("unknown decoder {other:?}; use \"vae\" or \"taesd\""),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decoder::Vae => "vae",
            Decoder::Taesd => "taesd",
        }
    }
}

/// Where one family's TAESD comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TaesdSource {
    /// A folder in either layout, or an original `*_decoder.safetensors` file.
    Path(PathBuf),
    /// Full-size random weights, beside `random:` models for benchmarks.
    Random,
}

/// The TAESD of each family; `None` = that family has none (previews fall back to the cheap
/// latent approximation, and `decoder: taesd` is refused).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaesdPaths {
    /// taesd: SD 1.x and 2.x latents.
    pub sd: Option<TaesdSource>,
    /// taesdxl: SDXL latents.
    pub sdxl: Option<TaesdSource>,
}

impl TaesdPaths {
    /// `models_dir/taesd/` and `models_dir/taesdxl/`, each where it exists.
    pub fn in_models_dir(models_dir: &Path) -> Self {
        let at = |name: &str| {
            let dir = models_dir.join(name);
            dir.is_dir().then_some(TaesdSource::Path(dir))
        };
        Self {
            sd: at(TAESD_DIR),
            sdxl: at(TAESDXL_DIR),
        }
    }

    /// Random full-size TAESDs for both families.
    pub fn random() -> Self {
        Self {
            sd: Some(TaesdSource::Random),
            sdxl: Some(TaesdSource::Random),
        }
    }

    /// The TAESD of `arch`'s latents: the source and the name it is pulled under.
    fn for_arch(&self, arch: Architecture) -> (Option<&TaesdSource>, &'static str) {
        match arch {
            Architecture::Sdxl => (self.sdxl.as_ref(), TAESDXL_DIR),
            Architecture::Sd1 | Architecture::Sd2 => (self.sd.as_ref(), TAESD_DIR),
        }
    }

    /// Loads the TAESD for `arch`, or says why there is none (for the `decoder` error). A
    /// broken file does not stop the model from loading: it is logged and reported the same way.
    pub(crate) fn load_for(
        &self,
        arch: Architecture,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Taesd, String> {
        let (source, name) = self.for_arch(arch);
        let Some(source) = source else {
            return Err(format!(
                "no TAESD for {} models: run `limner pull {name}` (it goes to MODELS_DIR/{name}/)",
                arch.as_str()
            ));
        };
        load(source, dtype, device).map_err(|e| {
            let e = e.to_string();
            tracing::warn!(error = %e, "cannot load the TAESD; previews use the latent approximation");
            e
        })
    }
}

/// Loads a TAESD in either layout onto `device` as `dtype` (half-precision files convert).
pub fn load(source: &TaesdSource, dtype: DType, device: &Device) -> Result<Taesd> {
    match source {
        TaesdSource::Random => random(dtype, device),
        TaesdSource::Path(p) if p.is_file() => {
            let encoder = sibling_encoder(p);
            load_original(p, encoder.as_deref(), dtype, device)
        }
        TaesdSource::Path(dir) => load_dir(dir, dtype, device),
    }
}

fn model_err(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("TAESD {}: {what}", path.display()))
}

/// A folder: the diffusers layout when its `config.json` is there, else the original files.
fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Taesd> {
    let config = dir.join("config.json");
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    if config.is_file() && weights.is_file() {
        return load_diffusers(dir, dtype, device);
    }
    let decoder = find_suffix(dir, "_decoder.safetensors").ok_or_else(|| {
        model_err(
            dir,
            "neither a diffusers AutoencoderTiny (config.json + diffusion_pytorch_model.safetensors) \
             nor a *_decoder.safetensors file is here",
        )
    })?;
    let encoder = find_suffix(dir, "_encoder.safetensors");
    load_original(&decoder, encoder.as_deref(), dtype, device)
}

/// The first file of `dir` (by name) ending in `suffix`.
fn find_suffix(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// `x_decoder.safetensors` -> `x_encoder.safetensors` when it exists.
fn sibling_encoder(decoder: &Path) -> Option<PathBuf> {
    let name = decoder.file_name()?.to_str()?;
    let enc = decoder.with_file_name(name.replace("_decoder.", "_encoder."));
    (enc != decoder && enc.is_file()).then_some(enc)
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| model_err(path, format!("cannot read the weights: {e}")))
}

/// diffusers' `AutoencoderTiny`: `config.json` and one weight file.
pub fn load_diffusers(dir: &Path, dtype: DType, device: &Device) -> Result<Taesd> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| model_err(&config_path, format!("cannot read it: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| model_err(&config_path, format!("invalid JSON: {e}")))?;
    if let Some(class) = value.get("_class_name").and_then(|c| c.as_str()) {
        if class != "AutoencoderTiny" {
            return Err(model_err(
                &config_path,
                format!("is a {class} config, not AutoencoderTiny"),
            ));
        }
    }
    let config: TaesdConfig = serde_json::from_value(value)
        .map_err(|e| model_err(&config_path, format!("invalid AutoencoderTiny config: {e}")))?;
    config.check().map_err(|e| model_err(&config_path, e))?;
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let vb = VarBuilder::from_tensors(read_tensors(&weights)?, dtype, device);
    let decoder = TaesdDecoder::new(vb.pp("decoder.layers"), &config, 0)
        .map_err(|e| model_err(&weights, format!("decoder: {e}")))?;
    let encoder = TaesdEncoder::new(vb.pp("encoder.layers"), &config)
        .map_err(|e| model_err(&weights, format!("encoder: {e}")))?;
    Ok(Taesd {
        config,
        decoder,
        encoder: Some(encoder),
    })
}

/// The dims of `key` in `tensors`, or an error naming the file and the tensor.
fn dims(tensors: &HashMap<String, Tensor>, key: &str, path: &Path) -> Result<Vec<usize>> {
    let t = tensors.get(key).ok_or_else(|| {
        model_err(
            path,
            format!("no tensor {key:?}: not a taesd.py Encoder/Decoder file"),
        )
    })?;
    Ok(t.dims().to_vec())
}

/// madebyollin's files: width and latent channels from the decoder's first conv (`1.weight`,
/// `[C, latent, 3, 3]`); the encoder, when given, must agree (`0.weight` `[C, 3, 3, 3]`,
/// `14.weight` `[latent, C, 3, 3]`).
pub fn load_original(
    decoder: &Path,
    encoder: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> Result<Taesd> {
    let dec = read_tensors(decoder)?;
    let d = dims(&dec, "1.weight", decoder)?;
    if d.len() != 4 || d[2] != 3 || d[3] != 3 {
        return Err(model_err(
            decoder,
            format!("1.weight is {d:?}, expected [width, latent_channels, 3, 3]"),
        ));
    }
    let config = TaesdConfig::original(d[0], d[1]);
    let decoder_net = TaesdDecoder::new(VarBuilder::from_tensors(dec, dtype, device), &config, 1)
        .map_err(|e| model_err(decoder, e))?;
    let encoder_net = match encoder {
        Some(path) => {
            let enc = read_tensors(path)?;
            let first = dims(&enc, "0.weight", path)?;
            let last = dims(&enc, "14.weight", path)?;
            if first.first() != Some(&d[0]) || last.first() != Some(&d[1]) {
                return Err(model_err(
                    path,
                    format!(
                        "0.weight {first:?} / 14.weight {last:?} do not match the decoder's \
                         width {} and {} latent channels",
                        d[0], d[1]
                    ),
                ));
            }
            let vb = VarBuilder::from_tensors(enc, dtype, device);
            Some(TaesdEncoder::new(vb, &config).map_err(|e| model_err(path, e))?)
        }
        None => None,
    };
    Ok(Taesd {
        config,
        decoder: decoder_net,
        encoder: encoder_net,
    })
}

/// The published shape (width 64, 4 latent channels) with random weights.
fn random(dtype: DType, device: &Device) -> Result<Taesd> {
    let config = TaesdConfig::default();
    let vb = super::loading::random_builder(dtype, device);
    let what = Path::new("random:taesd");
    Ok(Taesd {
        decoder: TaesdDecoder::new(vb.pp("decoder.layers"), &config, 0)
            .map_err(|e| model_err(what, e))?,
        encoder: Some(
            TaesdEncoder::new(vb.pp("encoder.layers"), &config).map_err(|e| model_err(what, e))?,
        ),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_values_parse_and_unknown_ones_name_the_field() {
        assert_eq!(Decoder::parse("VAE").unwrap(), Decoder::Vae);
        assert_eq!(Decoder::parse(" taesd ").unwrap(), Decoder::Taesd);
        match Decoder::parse("tiny") {
            Err(EngineError::InvalidInput { field, message }) => {
                assert_eq!(field, "decoder");
                assert!(message.contains("taesd"), "{message}");
            }
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_dir(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
        let bad = dir.path().join("taesd_decoder.safetensors");
        std::fs::write(&bad, b"not safetensors").unwrap();
        let e = load_dir(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap();
        assert!(e.to_string().contains("taesd_decoder.safetensors"), "{e}");
        // A safetensors file without taesd.py's tensors.
        let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("x".to_string(), t)]), &bad).unwrap();
        let e = load_dir(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap();
        assert!(e.to_string().contains("1.weight"), "{e}");
        let paths = TaesdPaths::default();
        let why = paths
            .load_for(Architecture::Sdxl, DType::F32, &Device::Cpu)
            .err()
            .unwrap();
        assert!(why.contains("limner pull taesdxl"), "{why}");
    }
}

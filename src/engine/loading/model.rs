//! Loading a whole Stable Diffusion pipeline (tokenizer, text encoder, UNet, VAE, scheduler
//! config) from a diffusers folder or a single-file checkpoint, once, onto one device.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::checkpoint::{self, Architecture, UNetLayout};
use super::model_hash::HashCache;
use super::presets::{Configs, SD15, SD21, SDXL};
use super::weights::{RandomWeights, WeightBytes};
use crate::engine::architecture::{ClipConfig, UNetConfig, VaeConfig};

use crate::engine::error::{EngineError, Result};
use crate::engine::models::clip::{ClipTextModel, SecondEncoder};
use crate::engine::models::taesd::Taesd;
use crate::engine::models::unet::UNet;
use crate::engine::models::vae::Vae;
use crate::engine::samplers::{ScheduleOverride, SchedulerConfig};
use crate::engine::taesd::TaesdPaths;
use crate::engine::text::ClipTokenizer;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
    Folder(PathBuf),
    /// An original-layout checkpoint; `config` is an optional diffusers folder describing the
    /// architecture (as diffusers' `from_single_file(config=...)`).
    SingleFile {
        file: PathBuf,
        config: Option<PathBuf>,
    },
    /// A full-size model of a built-in architecture ("sd15" or "sd21") with random weights:
    /// the real shapes and FLOPs, for benchmarks on machines without downloaded weights.
    Random(String),
}

impl ModelSource {
    /// A folder is a diffusers layout; a file is a single-file checkpoint.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(ModelSource::Folder(path.to_path_buf()))
        } else if path.is_file() {
            Ok(ModelSource::SingleFile {
                file: path.to_path_buf(),
                config: None,
            })
        } else {
            Err(EngineError::Model(format!(
                "model path {} does not exist",
                path.display()
            )))
        }
    }
}

/// How to load: device, dtype and attention options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Prefer `*.{variant}.safetensors` files (e.g. "fp16"); None picks by dtype.
    pub variant: Option<String>,
    pub use_flash_attn: bool,
    /// Tile side, in latent cells, for decodes that do not fit the memory limit whole
    /// (None = never tile). Default: 64 on the CPU (512 px tiles), 96 on GPUs.
    pub vae_tile: Option<usize>,
    /// Jobs whose estimated peak memory is over this many bytes are refused before they start
    /// (None = no limit). See [`crate::engine::memory`].
    pub max_memory: Option<u64>,
    /// Schedule settings over the model's own (prediction type, zero-terminal SNR, spacing),
    /// for checkpoints whose training cannot be read from the weights.
    pub schedule: ScheduleOverride,
    /// A VAE safetensors file (LDM or diffusers names) to decode and encode with instead of
    /// the model's own (`weights.toml` `vae`, `--vae`, A1111's `sd_vae`); None = the model's.
    pub vae: Option<PathBuf>,
    /// Where each family's TAESD is (previews, `decoder: taesd`); loaded beside the model.
    pub taesd: TaesdPaths,
}

/// Tile side (latent cells) for VAE decodes too large for the memory limit: 512 px on the CPU,
/// 768 px on GPUs. Decodes that fit are done whole.
pub fn default_vae_tile(device: &Device) -> Option<usize> {
    Some(if device.is_cpu() { 64 } else { 96 })
}

impl LoadOptions {
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            variant: None,
            use_flash_attn: false,
            vae_tile: Some(64),
            max_memory: None,
            schedule: ScheduleOverride::default(),
            vae: None,
            taesd: TaesdPaths::default(),
        }
    }
}

/// A loaded pipeline. Owned by the engine thread; never shared across threads.
pub struct StableDiffusion {
    pub name: String,
    pub architecture: Architecture,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second text encoder (OpenCLIP-G) and tokenizer.
    pub text_encoder_2: Option<SecondEncoder>,
    /// An empty negative prompt is zeros, not an encoded "" (SDXL; `model_index.json`).
    pub force_zeros_for_empty_prompt: bool,
    pub unet: UNet,
    pub unet_config: UNetConfig,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    pub device: Device,
    pub dtype: DType,
    /// The VAE's dtype: `dtype`, or f32 for a `force_upcast` VAE under f16.
    pub vae_dtype: DType,
    /// First 10 hex digits of the SHA-256 of the main weight file (A1111's "Model hash").
    pub hash: Option<String>,
    pub load_seconds: f64,
    /// See [`LoadOptions::vae_tile`].
    pub vae_tile: Option<usize>,
    /// Bytes of all loaded weights.
    pub weight_bytes: u64,
    /// See [`LoadOptions::max_memory`].
    pub max_memory: Option<u64>,
    /// The LoRAs merged in now, the base tensors they replaced and the merge cache.
    pub(crate) lora: crate::engine::lora::state::LoraState,
    /// The family's TAESD, or why there is none (the `decoder: taesd` error says it).
    pub taesd: std::result::Result<Taesd, String>,
}

/// The weight files of one component: `*.safetensors`, preferring the variant when present.
/// Sharded weights (several files) are all returned. Pickled `.bin` weights are refused.
fn weight_files(dir: &Path, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| EngineError::Model(format!("cannot read {}: {e}", dir.display())))?;
    let mut plain = vec![];
    // Ordered, so a folder of variants only always picks the same one (and keeps one hash).
    let mut variants: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut pickles = vec![];
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".safetensors") {
            // "diffusion_pytorch_model.fp16" -> variant "fp16"; shards keep their numbering.
            match stem.rsplit_once('.') {
                Some((_, v)) if !v.contains('-') => {
                    variants.entry(v.to_string()).or_default().push(path)
                }
                _ => plain.push(path),
            }
        } else if name.ends_with(".bin") || name.ends_with(".ckpt") || name.ends_with(".pt") {
            pickles.push(name);
        }
    }
    let mut chosen = match variant.and_then(|v| variants.remove(v)) {
        Some(files) => files,
        None if !plain.is_empty() => plain,
        None => variants.into_values().next().unwrap_or_default(),
    };
    if chosen.is_empty() {
        return Err(EngineError::Model(if pickles.is_empty() {
            format!("no .safetensors weights in {}", dir.display())
        } else {
            format!(
                "{} holds only pickled weights ({}); limner loads .safetensors only, because \
                 unpickling can run arbitrary code",
                dir.display(),
                pickles.join(", ")
            )
        }));
    }
    chosen.sort();
    Ok(chosen)
}

fn mmap_vb(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
    counter: &WeightBytes,
) -> Result<VarBuilder<'static>> {
    // SAFETY: the files are memory-mapped read-only; limner never writes model files while
    // they are loaded, which is the condition candle's mmap loader documents.
    let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) };
    tensors
        .map(|t| counter.builder(t, dtype, device))
        .map_err(|e| {
            EngineError::Model(format!(
                "cannot read weights {}: {e}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

fn with_context<T>(what: &str, r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| EngineError::Model(format!("{what}: {e}")))
}

/// The file whose SHA-256 is the model's hash: the checkpoint itself, or for a diffusers folder
/// the first UNet weight file (the plain one, whatever dtype loads, so a model keeps one hash).
/// `None` for random weights.
pub fn hashed_file(source: &ModelSource) -> Option<PathBuf> {
    match source {
        ModelSource::Folder(dir) => weight_files(&dir.join("unet"), None)
            .ok()
            .and_then(|files| files.into_iter().next()),
        ModelSource::SingleFile { file, .. } => Some(file.clone()),
        ModelSource::Random(_) => None,
    }
}

/// The weights of a VAE override (`--vae`, weights.toml `vae`, A1111's `sd_vae`): a VAE file in
/// the LDM or diffusers layout.
fn override_vae(
    path: &Path,
    config: &VaeConfig,
    opts: &LoadOptions,
    counter: &WeightBytes,
) -> Result<VarBuilder<'static>> {
    let weights = checkpoint::load_vae_file(path)?;
    Ok(counter.builder(weights, vae_dtype(config, opts.dtype), &opts.device))
}

/// A single file's VAE: the override when one is set, else the one baked into the checkpoint.
fn vae_weights(
    baked: HashMap<String, Tensor>,
    config: &VaeConfig,
    opts: &LoadOptions,
    counter: &WeightBytes,
    file: &Path,
) -> Result<VarBuilder<'static>> {
    if let Some(path) = &opts.vae {
        return override_vae(path, config, opts, counter);
    }
    if baked.is_empty() {
        return Err(EngineError::Model(format!(
            "{} has no VAE baked in; choose one with --vae (or `vae = ...` in weights.toml)",
            file.display()
        )));
    }
    Ok(counter.builder(baked, vae_dtype(config, opts.dtype), &opts.device))
}

/// SDXL's VAE overflows in f16 (`force_upcast`): it runs in f32 beside an f16 UNet.
fn vae_dtype(config: &VaeConfig, dtype: DType) -> DType {
    if config.force_upcast && dtype == DType::F16 {
        DType::F32
    } else {
        dtype
    }
}

fn default_variant(opts: &LoadOptions) -> Option<&str> {
    match (&opts.variant, opts.dtype) {
        (Some(v), _) => Some(v.as_str()),
        (None, DType::F16) => Some("fp16"),
        (None, DType::BF16) => Some("bf16"),
        _ => None,
    }
}

impl StableDiffusion {
    /// Loads every component. Errors name the file or tensor at fault. The model hash is
    /// computed without a persistent cache; the server uses [`StableDiffusion::load_with_hashes`].
    pub fn load(name: &str, source: &ModelSource, opts: &LoadOptions) -> Result<Self> {
        Self::load_with_hashes(name, source, opts, &HashCache::in_memory())
    }

    /// [`StableDiffusion::load`], taking the model hash from `hashes` (hashing it there if new).
    pub fn load_with_hashes(
        name: &str,
        source: &ModelSource,
        opts: &LoadOptions,
        hashes: &HashCache,
    ) -> Result<Self> {
        let started = Instant::now();
        let mut model = match source {
            ModelSource::Folder(dir) => Self::load_folder(name, dir, opts)?,
            ModelSource::SingleFile { file, config } => {
                Self::load_single_file(name, file, config.as_deref(), opts)?
            }
            ModelSource::Random(arch) => Self::random(name, arch, opts)?,
        };
        model.scheduler.apply_override(&opts.schedule);
        model.taesd = opts
            .taesd
            .load_for(model.architecture, model.dtype, &model.device);
        model.hash = hashed_file(source).and_then(|file| match hashes.hash(&file) {
            Ok(h) => Some(h.short().to_string()),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot hash the model");
                None
            }
        });
        model.load_seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            model = name,
            arch = model.architecture.as_str(),
            device = ?model.device,
            dtype = ?model.dtype,
            seconds = model.load_seconds,
            "model loaded"
        );
        Ok(model)
    }

    fn load_folder(name: &str, dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.join("unet").is_dir() {
            return Err(EngineError::Model(format!(
                "{} is not a diffusers model folder (no unet/ inside)",
                dir.display()
            )));
        }
        let variant = default_variant(opts);
        let c = Configs::from_dir(dir)?;
        let unet_files = weight_files(&dir.join("unet"), variant)?;
        let vae_files = weight_files(&dir.join("vae"), variant)?;
        let te_files = weight_files(&dir.join("text_encoder"), variant)?;
        let architecture = if c.text_encoder_2.is_some() {
            Architecture::Sdxl
        } else if c.text_encoder.hidden_size >= 1024 {
            Architecture::Sd2
        } else {
            Architecture::Sd1
        };
        let counter = WeightBytes::default();
        let vb = |files: &[PathBuf]| mmap_vb(files, opts.dtype, &opts.device, &counter);
        let text_encoder_2 = match c.text_encoder_2 {
            Some((config, tokenizer)) => {
                let files = weight_files(&dir.join("text_encoder_2"), variant)?;
                Some((config, vb(&files)?, tokenizer))
            }
            None => None,
        };
        let vae = match &opts.vae {
            Some(path) => override_vae(path, &c.vae, opts, &counter)?,
            None => mmap_vb(
                &vae_files,
                vae_dtype(&c.vae, opts.dtype),
                &opts.device,
                &counter,
            )?,
        };
        Self::assemble(
            name,
            architecture,
            c.tokenizer,
            Components {
                unet: (c.unet, vb(&unet_files)?),
                vae: (c.vae, vae),
                text_encoder: (c.text_encoder, vb(&te_files)?),
                text_encoder_2,
                counter: counter.clone(),
                force_zeros_for_empty_prompt: c.force_zeros_for_empty_prompt,
            },
            c.scheduler,
            opts,
        )
    }

    fn load_single_file(
        name: &str,
        file: &Path,
        config: Option<&Path>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let tensors = checkpoint::load_tensors(file)?;
        let architecture = checkpoint::detect_architecture(tensors.keys().map(|k| k.as_str()))
            .map_err(|e| EngineError::Model(format!("{}: {e}", file.display())))?;
        let mut c = match config {
            Some(dir) => Configs::from_dir(dir)?,
            None => Configs::from_preset(match architecture {
                Architecture::Sd1 => &SD15,
                Architecture::Sd2 => &SD21,
                Architecture::Sdxl => &SDXL,
            })?,
        };
        let layout = UNetLayout::from_block_types(
            c.unet.block_out_channels.clone(),
            c.unet.layers_per_block,
            &c.unet.down_block_types,
            &c.unet.up_block_types,
        );
        let converted = checkpoint::convert(tensors, &layout)?;
        if let Some(layers) = converted.text_encoder_layers {
            c.text_encoder.num_hidden_layers = layers;
        }
        // A v-prediction checkpoint says so (NoobAI-style `v_pred`, with `ztsnr` for zero
        // terminal SNR), as A1111 and ComfyUI read it.
        if converted.prediction.v_pred {
            c.scheduler.apply_v_prediction(converted.prediction.ztsnr);
        }
        let counter = WeightBytes::default();
        let from = |map: HashMap<String, Tensor>| counter.builder(map, opts.dtype, &opts.device);
        let text_encoder_2 = match (c.text_encoder_2, converted.text_encoder_2) {
            (Some((mut config, tokenizer)), Some(weights)) => {
                if let Some(layers) = converted.text_encoder_2_layers {
                    config.num_hidden_layers = layers;
                }
                Some((config, from(weights), tokenizer))
            }
            (None, None) => None,
            _ => {
                return Err(EngineError::Model(format!(
                    "{}: the checkpoint and its --config disagree on SDXL's second text encoder",
                    file.display()
                )))
            }
        };
        let vae = vae_weights(converted.vae, &c.vae, opts, &counter, file)?;
        Self::assemble(
            name,
            architecture,
            c.tokenizer,
            Components {
                unet: (c.unet, from(converted.unet)),
                vae: (c.vae, vae),
                text_encoder: (c.text_encoder, from(converted.text_encoder)),
                text_encoder_2,
                counter: counter.clone(),
                force_zeros_for_empty_prompt: c.force_zeros_for_empty_prompt,
            },
            c.scheduler,
            opts,
        )
    }

    fn random(name: &str, arch: &str, opts: &LoadOptions) -> Result<Self> {
        let (preset, architecture) = match arch {
            "sd15" | "sd1" => (&SD15, Architecture::Sd1),
            "sd21" | "sd2" => (&SD21, Architecture::Sd2),
            "sdxl" => (&SDXL, Architecture::Sdxl),
            other => {
                return Err(EngineError::invalid(
                    "model",
                    format!(
                        "unknown random architecture '{other}'; use random:sd15, random:sd21 \
                         or random:sdxl"
                    ),
                ))
            }
        };
        let c = Configs::from_preset(preset)?;
        // Plain tensors, not a VarMap: autograd Vars would keep every forward graph alive.
        let counter = WeightBytes::default();
        let vb = |dtype| counter.builder(RandomWeights, dtype, &opts.device);
        let vae_dtype = vae_dtype(&c.vae, opts.dtype);
        Self::assemble(
            name,
            architecture,
            c.tokenizer,
            Components {
                unet: (c.unet, vb(opts.dtype)),
                vae: (c.vae, vb(vae_dtype)),
                text_encoder: (c.text_encoder, vb(opts.dtype)),
                text_encoder_2: c
                    .text_encoder_2
                    .map(|(config, tokenizer)| (config, vb(opts.dtype), tokenizer)),
                counter: counter.clone(),
                force_zeros_for_empty_prompt: c.force_zeros_for_empty_prompt,
            },
            c.scheduler,
            opts,
        )
    }

    fn assemble(
        name: &str,
        architecture: Architecture,
        tokenizer: ClipTokenizer,
        parts: Components,
        scheduler: SchedulerConfig,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let (unet_config, unet_vb) = parts.unet;
        let (vae_config, vae_vb) = parts.vae;
        let (clip_config, te_vb) = parts.text_encoder;
        let counter = parts.counter;
        let text_encoder = ClipTextModel::new(te_vb, &clip_config)
            .map_err(|e| EngineError::Model(format!("text encoder: {e}")))?;
        let text_encoder_2 = match parts.text_encoder_2 {
            Some((config, vb, tokenizer)) => {
                let encoder = ClipTextModel::new(vb, &config)
                    .map_err(|e| EngineError::Model(format!("text encoder 2: {e}")))?;
                if !encoder.has_projection() {
                    return Err(EngineError::Model(
                        "text encoder 2 has no text_projection (SDXL's pooled output)".into(),
                    ));
                }
                Some(SecondEncoder { tokenizer, encoder })
            }
            None => None,
        };
        if unet_config.text_time().is_some() != text_encoder_2.is_some() {
            return Err(EngineError::Model(
                "the UNet's added (SDXL) conditioning and the second text encoder come together"
                    .into(),
            ));
        }
        crate::engine::kernels::attention::set_flash_attn(opts.use_flash_attn);
        let unet = with_context("UNet", UNet::new(unet_vb, &unet_config))?;
        let vae_dtype = vae_vb.dtype();
        let vae =
            Vae::new(vae_vb, vae_config).map_err(|e| EngineError::Model(format!("VAE: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            architecture,
            tokenizer,
            text_encoder,
            text_encoder_2,
            force_zeros_for_empty_prompt: parts.force_zeros_for_empty_prompt,
            unet,
            unet_config,
            vae,
            scheduler,
            device: opts.device.clone(),
            dtype: opts.dtype,
            vae_dtype,
            // Set by `load_with_hashes`, which knows the cache.
            hash: None,
            load_seconds: 0.0,
            vae_tile: opts.vae_tile,
            weight_bytes: counter.get(),
            max_memory: opts.max_memory,
            lora: Default::default(),
            // Set by `load_with_hashes`, which knows the architecture.
            taesd: Err(String::new()),
        })
    }

    /// Pixels per latent cell (8 for every Stable Diffusion VAE).
    pub fn vae_scale(&self) -> usize {
        self.vae.config.downscale()
    }

    /// What the memory estimate needs to know about this model.
    pub fn footprint(&self) -> crate::engine::memory::ModelFootprint {
        crate::engine::memory::ModelFootprint {
            weights: self.weight_bytes + self.lora.extra_bytes(),
            unet_channels: self.unet_config.block_out_channels[0],
            vae_channels: self.vae.config.block_out_channels[0],
            value_bytes: self.dtype.size_in_bytes(),
            vae_scale: self.vae_scale(),
        }
    }

    pub fn latent_channels(&self) -> usize {
        self.unet_config.in_channels
    }
}

struct Components {
    unet: (UNetConfig, VarBuilder<'static>),
    vae: (VaeConfig, VarBuilder<'static>),
    text_encoder: (ClipConfig, VarBuilder<'static>),
    /// SDXL: the second encoder's config, weights and tokenizer.
    text_encoder_2: Option<(ClipConfig, VarBuilder<'static>, ClipTokenizer)>,
    force_zeros_for_empty_prompt: bool,
    /// Counts the bytes the three builders hand out.
    counter: WeightBytes,
}

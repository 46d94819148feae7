//! What several subcommands share: choosing a model (a weights.toml name, a path, or a random
//! full-size architecture) and the device/dtype to load it on, as the engine configuration the
//! server would use for it.

use std::path::PathBuf;

use limner::engine::{
    memory_limit, Decoder, Defaults, EngineConfig, ModelSource, ModelSpec, ScheduleOverride,
    TaesdPaths,
};
use limner::portraits::DeviceClass;

/// Model selection flags.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// A model name from weights.toml, a diffusers folder, a .safetensors checkpoint, or
    /// random:sd15 / random:sd21 / random:sdxl (full-size architecture, random weights; for
    /// benchmarks).
    #[arg(long, env = "LIMNER_MODEL")]
    pub model: String,
    /// For a single-file checkpoint: a diffusers folder describing its architecture.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The model registry (default: ./weights.toml, else DATA_DIR/weights.toml, else the
    /// built-in one).
    #[arg(long, env = "LIMNER_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Where `limner pull` puts weights.
    #[arg(long, env = "LIMNER_MODELS_DIR", default_value_os_t = super::locations::default_models_dir())]
    pub models_dir: PathBuf,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, env = "LIMNER_DEVICE", default_value = "auto")]
    pub device: String,
    /// auto (f16 on GPU, f32 on CPU), f32, f16 or bf16.
    #[arg(long, env = "LIMNER_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// Use flash attention (needs the flash-attn feature and a CUDA GPU).
    #[arg(long)]
    pub flash_attn: bool,
    /// Refuse jobs estimated to need more memory: a size (12G), "auto" (90% of physical
    /// memory) or "none".
    #[arg(long, env = "LIMNER_MAX_MEMORY")]
    pub max_memory: Option<String>,
    /// Override the prediction type ("epsilon" or "v_prediction"), e.g. for SD 2.x single files
    /// (default: the weights.toml entry's `[scheduler] prediction_type`, else the model's own).
    #[arg(long)]
    pub prediction_type: Option<String>,
    /// The model was trained with zero-terminal-SNR betas (NoobAI-style v-prediction): rescale
    /// the betas and space timesteps "trailing" (default: the weights.toml entry's
    /// `[scheduler]`, else the model's own).
    #[arg(long)]
    pub zero_terminal_snr: bool,
    /// Decode with this VAE instead of the model's own: a file name in MODELS_DIR/vae/ or a
    /// .safetensors path (default: the weights.toml entry's `vae`).
    #[arg(long, env = "LIMNER_VAE")]
    pub vae: Option<String>,
    /// What decodes the final image: vae, or taesd (the family's TAESD from
    /// MODELS_DIR/taesd/ or taesdxl/; random:... models get a random full-size one).
    #[arg(long, env = "LIMNER_DECODER", default_value = "vae", value_parser = parse_decoder)]
    pub decoder: Decoder,
}

fn parse_decoder(v: &str) -> Result<Decoder, String> {
    Decoder::parse(v).map_err(|e| e.to_string())
}

/// What [`ModelArgs::source`] found.
struct Chosen {
    name: String,
    source: ModelSource,
    defaults: Defaults,
    schedule: ScheduleOverride,
    vae: Option<PathBuf>,
}

pub struct ResolvedModel {
    pub name: String,
    pub defaults: Defaults,
    /// One model, loaded as the server loads it (see `limner::engine::LocalModel::load`).
    pub config: EngineConfig,
}

impl ModelArgs {
    pub fn resolve(&self) -> anyhow::Result<ResolvedModel> {
        if self.flash_attn && !cfg!(feature = "flash-attn") {
            anyhow::bail!("--flash-attn needs a build with --features flash-attn");
        }
        // The same reading of "auto" as `limner serve`.
        let cpu = DeviceClass::from_spec(&self.device) == DeviceClass::Cpu;
        let max_memory =
            memory_limit(self.max_memory.as_deref(), cpu).map_err(|e| anyhow::anyhow!(e))?;
        let Chosen {
            name,
            source,
            defaults,
            mut schedule,
            vae,
        } = self.source()?;
        if let Some(p) = &self.prediction_type {
            schedule.prediction_type = Some(p.clone());
        }
        if self.zero_terminal_snr {
            schedule.rescale_betas_zero_snr = Some(true);
            schedule.timestep_spacing = Some("trailing".into());
        }
        // A random model's TAESD is random too: the same shapes and cost, nothing to pull.
        let taesd = match &source {
            ModelSource::Random(_) => TaesdPaths::random(),
            _ => TaesdPaths::in_models_dir(&self.models_dir),
        };
        let config = EngineConfig {
            taesd,
            decoder: self.decoder,
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            use_flash_attn: self.flash_attn,
            max_memory,
            ..EngineConfig::cpu(ModelSpec {
                name: name.clone(),
                source,
                defaults: defaults.clone(),
                schedule,
                vae,
            })
        };
        Ok(ResolvedModel {
            name,
            defaults,
            config,
        })
    }

    /// `random:ARCH`, else a weights.toml name, else a path to a folder or checkpoint.
    fn source(&self) -> anyhow::Result<Chosen> {
        let registry = super::locations::registry_for(self.weights.as_deref())?;
        let vae = match &self.vae {
            Some(v) => Some(registry.resolve_vae(v, &self.models_dir)?),
            None => None,
        };
        if let Some(arch) = self.model.strip_prefix("random:") {
            return Ok(Chosen {
                name: self.model.clone(),
                source: ModelSource::Random(arch.to_string()),
                defaults: Defaults::default(),
                schedule: ScheduleOverride::default(),
                vae,
            });
        }
        let resolved = registry.resolve(&self.model, &self.models_dir)?;
        let source = match resolved.source() {
            // --config applies to a checkpoint given by path.
            ModelSource::SingleFile { file, config } => ModelSource::SingleFile {
                file,
                config: self.config.clone().or(config),
            },
            other => other,
        };
        Ok(Chosen {
            name: resolved.name.clone(),
            source,
            defaults: resolved.defaults(),
            schedule: resolved.schedule(),
            vae: vae.or(resolved.vae),
        })
    }
}

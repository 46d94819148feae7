//! One model loaded on the caller's own thread, for one-shot commands (`limner generate`,
//! `limner bench`) that need no queue: the same configuration, loading and generation code as
//! the engine thread, plus the UNet-only timing the benchmark reports.

use std::time::Instant;

use candle_core::{DType, Tensor};

use super::conditioning::BatchConditioning;
use super::device::{describe, dtype_name};
use super::embeddings::EmbeddingLibrary;
use super::error::{EngineError, Result};
use super::generate::generate_with_loras;
use super::loading::model::{LoadOptions, StableDiffusion};
use super::loading::model_hash::HashCache;
use super::pipeline::{CancelToken, Cond, Progress};
use super::request::GenerationResult;
use super::valid::ValidRequest;
use super::worker::{load_spec, EngineConfig};

/// A loaded model, used from the thread that loaded it.
pub struct LocalModel {
    model: StableDiffusion,
    flash_attn: bool,
    embeddings: EmbeddingLibrary,
    /// Where the LoRAs a request names are looked up (the configuration's `loras_dir`).
    loras_dir: Option<std::path::PathBuf>,
    decoder: super::taesd::Decoder,
}

/// What [`LocalModel::time_unet`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct UnetTimings {
    /// Latents per UNet call (2 with classifier-free guidance).
    pub batch_per_call: usize,
    /// Wall time of each timed call, in milliseconds.
    pub each_ms: Vec<f64>,
}

impl LocalModel {
    /// Loads `config`'s default model on its device, as [`super::Engine`] would.
    pub fn load(config: &EngineConfig) -> Result<Self> {
        let spec = config
            .models
            .iter()
            .find(|m| m.name == config.default_model)
            .ok_or_else(|| EngineError::UnknownModel(config.default_model.clone()))?;
        let opts = LoadOptions::from_config(config)?;
        let model = load_spec(spec, &opts, &HashCache::in_memory())?;
        Ok(Self {
            model,
            flash_attn: config.use_flash_attn,
            embeddings: EmbeddingLibrary::new(config.embeddings_dir.clone()),
            loras_dir: config.loras_dir.clone(),
            decoder: config.decoder,
        })
    }

    pub fn name(&self) -> &str {
        &self.model.name
    }

    /// Runs a validated request (with its LoRAs merged in) and encodes its images.
    pub fn generate(
        &mut self,
        request: &ValidRequest,
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<GenerationResult> {
        let request = request.clone().with_default_decoder(self.decoder);
        let loras = super::lora::resolve(request.loras(), self.loras_dir.as_deref())?;
        generate_with_loras(
            &mut self.model,
            &self.embeddings,
            &request,
            &loras,
            progress,
            cancel,
        )
    }

    /// "cpu", "cuda" or "metal".
    pub fn device_name(&self) -> &'static str {
        describe(&self.model.device)
    }

    pub fn is_cpu(&self) -> bool {
        self.model.device.is_cpu()
    }

    /// "f32", "f16" or "bf16".
    pub fn dtype_name(&self) -> &'static str {
        dtype_name(self.model.dtype)
    }

    pub fn flash_attn(&self) -> bool {
        self.flash_attn
    }

    /// Bytes of all loaded weights.
    pub fn weight_bytes(&self) -> u64 {
        self.model.weight_bytes
    }

    /// Times one TAESD decode of random latents at `width x height`, full size and as a live
    /// preview (shrunk, see `engine::preview`): (full ms, preview ms, preview width, height).
    /// An error when the model has no TAESD.
    pub fn time_taesd(&self, width: usize, height: usize) -> Result<(f64, f64, u32, u32)> {
        let model = &self.model;
        let taesd = model.taesd()?;
        let scale = model.vae_scale();
        let latents = Tensor::randn(
            0f32,
            1.0,
            (1, model.latent_channels(), height / scale, width / scale),
            &model.device,
        )?
        .to_dtype(model.dtype)?;
        let started = Instant::now();
        let full = taesd.decode(&latents)?;
        full.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        let full_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let img = super::preview::taesd_preview(taesd, &latents)?;
        let preview_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok((full_ms, preview_ms, img.width(), img.height()))
    }

    /// Times `calls` UNet evaluations on random latents at `width x height`, guided when
    /// `cfg > 1`: no sampler, no VAE. `on_call(i, ms)` is called after each call (a warm-up is
    /// a call whose timings are thrown away).
    #[allow(clippy::too_many_arguments)]
    pub fn time_unet(
        &self,
        prompt: &str,
        negative: &str,
        width: usize,
        height: usize,
        cfg: f64,
        calls: usize,
        on_call: &mut dyn FnMut(usize, f64),
    ) -> Result<UnetTimings> {
        let model = &self.model;
        let scale = model.vae_scale();
        let (h, w) = (height / scale, width / scale);
        let (neg, pos) = model.encode_pair(negative, prompt, 0, false)?;
        let guided = cfg > 1.0;
        let conds = BatchConditioning::new(&neg, &pos, 1, guided)?;
        let cond = Cond {
            context: &conds.context,
            added: conds.added(width, height),
        };
        let batch = if guided { 2 } else { 1 };
        let latents = Tensor::randn(
            0f32,
            1.0,
            (batch, model.latent_channels(), h, w),
            &model.device,
        )?
        .to_dtype(DType::F32)?;
        let mut each_ms = Vec::with_capacity(calls);
        for i in 0..calls {
            let started = Instant::now();
            let out = model.unet_forward(&latents, 500.0, &cond)?;
            // Reading one value waits for asynchronous devices to finish.
            out.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            on_call(i, ms);
            each_ms.push(ms);
        }
        Ok(UnetTimings {
            batch_per_call: batch,
            each_ms,
        })
    }
}

//! The sampling pipelines: txt2img, img2img and hires fix, on a loaded model. Every random draw
//! comes from the caller's noise sources; progress and cancellation are checked every step.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::conditioning::BatchConditioning;
use super::error::{EngineError, Result};
use super::guidance::guided;
use super::loading::model::StableDiffusion;
use super::models::unet::{AddedConditioning, UNetInputs};
use super::noise::{draw_batch, NoisePurpose, NoiseSource};
use super::samplers::{build_sampler, img2img_start, Sampler, SamplerSpec, SchedulerConfig};

pub use super::cancel::CancelToken;

/// One denoising step done.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Steps done so far over all passes (1-based after the first step).
    pub step: usize,
    /// Steps the whole job will take (both passes of a hires job).
    pub total: usize,
    pub elapsed: Duration,
    /// Every `preview_every` steps of a request that asks for previews: the first image of the
    /// batch as it stands, one pixel per latent cell (see `engine::preview`).
    pub preview: Option<image::RgbImage>,
}

impl Progress {
    /// A step without a preview.
    pub fn new(step: usize, total: usize, elapsed: Duration) -> Self {
        Self {
            step,
            total,
            elapsed,
            preview: None,
        }
    }
}

/// The hires-fix second pass (A1111's "Enable HR" with the Latent upscaler).
#[derive(Debug, Clone, PartialEq)]
pub struct HiresPass {
    /// Scale of the latent upscale; the output is `scale` times the first pass.
    pub scale: f64,
    /// Steps of the second pass' full schedule (0 = same as the first pass).
    pub steps: usize,
    pub denoising_strength: f64,
}

/// A validated job in engine terms. Built by `request.rs` from user input, or directly by tests.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    /// diffusers' `guidance_rescale` (CFG rescale, for v-prediction models); 0 = plain CFG.
    pub guidance_rescale: f64,
    pub sampler: SamplerSpec,
    /// Replaces the model's scheduler config (tests use the reference's exact config).
    pub scheduler_override: Option<SchedulerConfig>,
    pub width: usize,
    pub height: usize,
    pub batch_size: usize,
    /// img2img: one init image in [-1, 1], `[1, 3, height, width]`.
    pub init_image: Option<Tensor>,
    pub denoising_strength: f64,
    pub hires: Option<HiresPass>,
    /// Layers of the text encoder to skip at the end (A1111 "Clip skip" minus one).
    pub clip_skip: usize,
    /// Tokenize as diffusers does (no emphasis syntax, cut at 75 tokens) instead of A1111's
    /// weighted, chunked prompts. The parity tests use it to compare with diffusers.
    pub plain_prompt: bool,
    /// Attach a latent preview to every n-th progress call (None = never).
    pub preview_every: Option<usize>,
    /// The textual-inversion embeddings the prompts may use by name; all fit this model.
    pub embeddings: Vec<std::sync::Arc<super::embeddings::Embedding>>,
    /// What decodes the final latents (the VAE, or the family's TAESD).
    pub decoder: super::taesd::Decoder,
}

/// What a pipeline run produced, before conversion to bytes.
pub struct PipelineOutput {
    /// Final latents (unscaled by the VAE factor), f32.
    #[cfg_attr(not(test), allow(dead_code))] // compared with diffusers' by the parity tests
    pub latents: Tensor,
    /// Decoded images in about [-1, 1], `[batch, 3, H, W]`, f32, before clamping.
    pub images: Tensor,
    pub timings: Timings,
    /// The embeddings the prompts used, as (name, short hash): the prompt's first, then the
    /// negative prompt's.
    pub embeddings_used: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub text_ms: f64,
    pub unet_ms_total: f64,
    pub unet_steps: usize,
    pub vae_encode_ms: f64,
    pub vae_decode_ms: f64,
    /// Time spent making previews, and how many were made.
    pub preview_ms: f64,
    pub previews: usize,
    pub total_ms: f64,
}

impl Timings {
    pub fn unet_ms_per_step(&self) -> f64 {
        if self.unet_steps == 0 {
            0.0
        } else {
            self.unet_ms_total / self.unet_steps as f64
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

struct Ctx<'a> {
    model: &'a StableDiffusion,
    noise: &'a mut [Box<dyn NoiseSource>],
    progress: &'a mut dyn FnMut(Progress),
    cancel: &'a CancelToken,
    started: Instant,
    done: usize,
    total: usize,
    preview_every: Option<usize>,
    timings: Timings,
}

impl StableDiffusion {
    /// Runs a whole job. `noise` holds one source per batch image.
    pub fn run(
        &self,
        job: &Job,
        noise: &mut [Box<dyn NoiseSource>],
        progress: &mut dyn FnMut(Progress),
        cancel: &CancelToken,
    ) -> Result<PipelineOutput> {
        if noise.len() != job.batch_size {
            return Err(EngineError::invalid(
                "batch_size",
                format!(
                    "{} noise sources for {} images",
                    noise.len(),
                    job.batch_size
                ),
            ));
        }
        let shape = super::memory::JobShape {
            width: job.width,
            height: job.height,
            batch_size: job.batch_size,
            guided: job.cfg_scale > 1.0,
            hires_scale: job.hires.as_ref().map(|h| h.scale),
        };
        super::memory::admit(
            &self.footprint(),
            &shape,
            self.vae_tile_px(),
            self.max_memory,
        )?;
        if job.decoder == super::taesd::Decoder::Taesd {
            // Refused before any step runs, not after the last one.
            self.taesd()?;
        }
        let scheduler = job.scheduler_override.as_ref().unwrap_or(&self.scheduler);
        let first = build_sampler(&job.sampler, scheduler, job.steps)?;
        // Indices into the sampler's timesteps (Heun evaluates the UNet twice per step, so its
        // list is longer than `steps`; `start_index` maps a diffusers t_start onto it).
        let first_start = match job.init_image {
            Some(_) => first.start_index(img2img_start(job.steps, job.denoising_strength)?),
            None => 0,
        };
        let second = match &job.hires {
            Some(h) => {
                let steps = if h.steps == 0 { job.steps } else { h.steps };
                let s = build_sampler(&job.sampler, scheduler, steps)?;
                // The hires pass runs at least one step, as A1111 does, even when
                // steps x strength rounds down to zero (its steps are usually implicit).
                let t_start = match img2img_start(steps, h.denoising_strength) {
                    Ok(t) => t,
                    Err(_) if h.denoising_strength > 0.0 && h.denoising_strength <= 1.0 => {
                        steps - 1
                    }
                    Err(e) => return Err(e),
                };
                let start = s.start_index(t_start);
                Some((s, start, h.scale))
            }
            None => None,
        };
        let total = (first.timesteps().len() - first_start)
            + second
                .as_ref()
                .map_or(0, |(s, start, _)| s.timesteps().len() - start);
        let mut ctx = Ctx {
            model: self,
            noise,
            progress,
            cancel,
            started: Instant::now(),
            done: 0,
            total,
            preview_every: job.preview_every.filter(|&n| n > 0),
            timings: Timings::default(),
        };

        let t = Instant::now();
        let (uncond, cond) = self.encode_pair_with(
            &job.negative_prompt,
            &job.prompt,
            job.clip_skip,
            job.plain_prompt,
            &job.embeddings,
        )?;
        let mut used: Vec<usize> = cond.used.clone();
        used.extend(uncond.used.iter().filter(|i| !cond.used.contains(i)));
        let embeddings_used = used
            .into_iter()
            .map(|i| {
                (
                    job.embeddings[i].name.clone(),
                    job.embeddings[i].hash.clone(),
                )
            })
            .collect();
        let guidance = job.cfg_scale > 1.0;
        let batch = BatchConditioning::new(&uncond, &cond, job.batch_size, guidance)?;
        ctx.timings.text_ms = ms(t);
        let guide = Guide {
            cfg: job.cfg_scale,
            rescale: job.guidance_rescale,
            guided: guidance,
        };

        let scale = self.vae.config.scaling_factor;
        let (h, w) = (job.height / self.vae_scale(), job.width / self.vae_scale());
        let latent_shape = [1, self.latent_channels(), h, w];
        let mut sampler = first;
        let mut latents = match &job.init_image {
            None => {
                let n = ctx.draw(NoisePurpose::Initial { pass: 0 }, &latent_shape)?;
                (n * sampler.init_noise_sigma())?
            }
            Some(image) => {
                let t = Instant::now();
                let image = image.to_device(&self.device)?.to_dtype(self.vae_dtype)?;
                let posterior = self.vae.encode(&image)?;
                let mean = posterior.mean.to_dtype(DType::F32)?;
                let std = posterior.std.to_dtype(DType::F32)?;
                let eps = ctx.draw(NoisePurpose::VaeSample, &latent_shape)?;
                let init = (eps.broadcast_mul(&std)?.broadcast_add(&mean)? * scale)?;
                ctx.timings.vae_encode_ms = ms(t);
                let n = ctx.draw(NoisePurpose::Initial { pass: 0 }, &latent_shape)?;
                sampler.add_noise(&init, &n, first_start)?
            }
        };
        let cond = Cond {
            context: &batch.context,
            added: batch.added(job.width, job.height),
        };
        latents = ctx.denoise(latents, &cond, sampler.as_mut(), first_start, &guide, 0)?;

        // Interrupted in the first pass: A1111 skips the hires pass and returns what it has.
        let second = second.filter(|_| !cancel.is_interrupted());
        if let Some((mut s2, start, factor)) = second {
            let th = ((h as f64 * factor).round() as usize).max(1);
            let tw = ((w as f64 * factor).round() as usize).max(1);
            // A1111's "Latent" upscaler: bilinear, no antialias, align_corners=False.
            let up = latents.upsample_bilinear2d(th, tw, false)?;
            let n = ctx.draw(
                NoisePurpose::Initial { pass: 1 },
                &[1, self.latent_channels(), th, tw],
            )?;
            let noised = s2.add_noise(&up, &n, start)?;
            // SDXL's size conditioning follows the image, as A1111's hires conditioning does.
            let s = self.vae_scale();
            let cond = Cond {
                context: &batch.context,
                added: batch.added(tw * s, th * s),
            };
            latents = ctx.denoise(noised, &cond, s2.as_mut(), start, &guide, 1)?;
        }

        let t = Instant::now();
        let images = match job.decoder {
            super::taesd::Decoder::Vae => self.decode(&latents)?,
            super::taesd::Decoder::Taesd => self.taesd_decode(&latents)?,
        };
        ctx.timings.vae_decode_ms = ms(t);
        ctx.timings.total_ms = ms(ctx.started);
        Ok(PipelineOutput {
            latents,
            images,
            timings: ctx.timings,
            embeddings_used,
        })
    }

    /// Tile side in pixels for decodes too large to do whole.
    fn vae_tile_px(&self) -> usize {
        self.vae_tile.unwrap_or(64) * self.vae_scale()
    }

    /// Scaled latents -> images in about [-1, 1], f32.
    /// Decoded whole, exactly as diffusers does, when that fits the memory limit; beyond it in
    /// blended tiles of `vae_tile` cells (bounded memory).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.vae.config.scaling_factor)?.to_dtype(self.vae_dtype)?;
        let (b, _, h, w) = z.dims4()?;
        let s = self.vae_scale();
        let whole =
            super::memory::decode_whole_fits(&self.footprint(), w * s, h * s, b, self.max_memory);
        match self.vae_tile {
            Some(tile) if !whole && (h > tile || w > tile) => {
                let images = (0..b)
                    .map(|i| {
                        super::tiled::decode_tiled(
                            &z.narrow(0, i, 1)?,
                            tile,
                            self.vae_scale(),
                            &self.device,
                            |part| self.vae.decode(part),
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&images, 0)?)
            }
            _ => Ok(self.vae.decode(&z)?.to_dtype(DType::F32)?),
        }
    }

    /// The family's TAESD when it is loaded and fits this model's latents; else a `decoder`
    /// input error saying why.
    pub fn taesd(&self) -> Result<&super::models::taesd::Taesd> {
        let t = self
            .taesd
            .as_ref()
            .map_err(|why| EngineError::invalid("decoder", why.clone()))?;
        if t.config.latent_channels != self.latent_channels() {
            return Err(EngineError::invalid(
                "decoder",
                format!(
                    "the TAESD has {} latent channels, the model {}",
                    t.config.latent_channels,
                    self.latent_channels()
                ),
            ));
        }
        Ok(t)
    }

    /// Scaled latents -> images in about [-1, 1], f32, with the TAESD (no VAE scaling: TAESD
    /// works in the UNet's latent space).
    pub fn taesd_decode(&self, latents: &Tensor) -> Result<Tensor> {
        let t = self.taesd()?;
        let z = latents.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(t.decode(&z)?.to_dtype(DType::F32)?)
    }

    /// One UNet evaluation, in the model's dtype, returning f32.
    pub fn unet_forward(&self, x: &Tensor, timestep: f64, cond: &Cond) -> Result<Tensor> {
        self.unet_forward_cancellable(x, timestep, cond, &CancelToken::new())
    }

    /// [`Self::unet_forward`] that gives up within one UNet block once `cancel` is set.
    pub fn unet_forward_cancellable(
        &self,
        x: &Tensor,
        timestep: f64,
        cond: &Cond,
        cancel: &CancelToken,
    ) -> Result<Tensor> {
        let inputs = UNetInputs {
            sample: x,
            timestep,
            context: cond.context,
            added: cond.added.as_ref(),
        };
        Ok(self.unet.forward(&inputs, cancel)?.to_dtype(DType::F32)?)
    }
}

/// What one UNet call is conditioned on: the text context and, for SDXL, the added conditioning.
pub struct Cond<'a> {
    pub context: &'a Tensor,
    pub added: Option<AddedConditioning>,
}

impl<'a> Cond<'a> {
    /// Text context only (SD 1.x/2.x).
    pub fn text(context: &'a Tensor) -> Self {
        Self {
            context,
            added: None,
        }
    }
}

/// Classifier-free guidance settings of a pass.
struct Guide {
    cfg: f64,
    rescale: f64,
    guided: bool,
}

impl Ctx<'_> {
    fn draw(&mut self, purpose: NoisePurpose, shape_one: &[usize]) -> Result<Tensor> {
        draw_batch(
            self.noise,
            purpose,
            shape_one,
            &self.model.device,
            DType::F32,
        )
    }

    fn denoise(
        &mut self,
        mut latents: Tensor,
        cond: &Cond,
        sampler: &mut dyn Sampler,
        start: usize,
        guide: &Guide,
        pass: usize,
    ) -> Result<Tensor> {
        let timesteps = sampler.timesteps().to_vec();
        let latent_one: Vec<usize> = {
            let mut d = latents.dims().to_vec();
            d[0] = 1;
            d
        };
        for (i, &t) in timesteps.iter().enumerate().skip(start) {
            // An interrupt (A1111) keeps the latents of the last finished step, as A1111's
            // samplers return their last latent; a cancel drops everything.
            if self.cancel.is_interrupted() {
                return Ok(latents);
            }
            if self.cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let began = Instant::now();
            let x = sampler.scale_model_input(&latents, i)?;
            let eps = match self.predict(&x, t, cond, guide) {
                Err(EngineError::Cancelled) if self.cancel.is_interrupted() => return Ok(latents),
                other => other?,
            };
            self.timings.unet_ms_total += ms(began);
            self.timings.unet_steps += 1;
            let noise = if sampler.needs_step_noise() {
                Some(self.draw(NoisePurpose::Step { pass, step: i }, &latent_one)?)
            } else {
                None
            };
            latents = sampler.step(&eps, i, &latents, noise.as_ref())?;
            self.done += 1;
            let preview = match self.preview_every {
                Some(n) if self.done.is_multiple_of(n) => {
                    let began = Instant::now();
                    let p = super::preview::preview(self.model, &latents)?;
                    self.timings.preview_ms += ms(began);
                    self.timings.previews += 1;
                    p
                }
                _ => None,
            };
            (self.progress)(Progress {
                preview,
                ..Progress::new(self.done, self.total, self.started.elapsed())
            });
        }
        Ok(latents)
    }

    /// The guided noise prediction for one step.
    fn predict(&self, x: &Tensor, t: f64, cond: &Cond, guide: &Guide) -> Result<Tensor> {
        if !guide.guided {
            return self.model.unet_forward_cancellable(x, t, cond, self.cancel);
        }
        let both = Tensor::cat(&[x, x], 0)?;
        let out = self
            .model
            .unet_forward_cancellable(&both, t, cond, self.cancel)?;
        let b = x.dim(0)?;
        let u = out.narrow(0, 0, b)?;
        let c = out.narrow(0, b, b)?;
        guided(&u, &c, guide.cfg, guide.rescale)
    }
}

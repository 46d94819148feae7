//! A request that passed validation, as callers see it: read-only accessors for what they show
//! or record (sizes, sampler, seeds, the hires pass), the engine's own step counts for progress
//! bars and estimates, and one way to change it (the seeds of a batch). The engine's job inside
//! stays private to the engine.

use image::RgbImage;

use super::error::Result;
use super::lora::LoraUse;
use super::output::ImageFormat;
use super::pipeline::{HiresPass, Job};
use super::samplers::img2img_start;
use super::vae::VaeChoice;

/// A request that passed validation; everything the engine thread needs but the model.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub(super) model: Option<String>,
    pub(super) job: Job,
    /// The init image resized to the job's size (img2img), kept as pixels until the engine
    /// thread turns it into a tensor.
    pub(super) init_image: Option<RgbImage>,
    pub(super) seeds: Vec<u64>,
    pub(super) format: ImageFormat,
    /// The VAE to decode with.
    pub(super) vae: VaeChoice,
    /// The prompt as sent, `<lora:...>` tags included (the job's prompt has them cut out).
    pub(super) sent_prompt: String,
    /// The LoRAs to apply: the prompt's tags, then the `loras` field, in order.
    pub(super) loras: Vec<LoraUse>,
    /// Infotext keys the engine thread adds once it knows them (`Lora hashes`).
    pub(super) infotext_extra: Vec<(String, String)>,
    /// Embeddings that must exist (a character's pinned ones).
    pub(super) embeddings: Vec<String>,
    /// The decoder asked for (None = the engine's default, [`super::EngineConfig::decoder`]).
    pub(super) decoder: Option<super::taesd::Decoder>,
}

/// One denoising pass of a request: the progress calls it makes and the latent-upscaled size
/// it paints at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassPlan {
    pub steps: usize,
    pub width: usize,
    pub height: usize,
}

/// Steps a pass runs: all of them from noise, `floor(steps * strength)` from an image (the
/// sampler's rule, including its error when that is zero).
fn pass_steps(steps: usize, strength: Option<f64>) -> Result<usize> {
    match strength {
        None => Ok(steps),
        Some(s) => Ok(steps - img2img_start(steps, s)?),
    }
}

impl ValidRequest {
    /// The model asked for (`None` = the engine's default model).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
    /// The VAE asked for.
    pub fn vae(&self) -> &VaeChoice {
        &self.vae
    }
    /// The embeddings the request requires by name.
    pub fn embeddings(&self) -> &[String] {
        &self.embeddings
    }
    /// The prompt as sent, with its `<lora:...>` tags.
    pub fn prompt(&self) -> &str {
        &self.sent_prompt
    }
    /// The LoRAs the request applies (tags first, then the `loras` field).
    pub fn loras(&self) -> &[LoraUse] {
        &self.loras
    }
    /// The infotext's prompt: as sent, plus a tag for every LoRA of the `loras` field, so the
    /// infotext alone repaints the image (A1111 appends its `sd_lora` setting the same way).
    pub fn infotext_prompt(&self) -> String {
        let mut p = self.sent_prompt.clone();
        for l in self.loras.iter().filter(|l| l.field == "loras") {
            if !p.is_empty() && !p.ends_with(char::is_whitespace) {
                p.push(' ');
            }
            p.push_str(&format!("<lora:{}:{}>", l.name, l.weight));
        }
        p
    }
    pub fn negative_prompt(&self) -> &str {
        &self.job.negative_prompt
    }
    pub fn steps(&self) -> usize {
        self.job.steps
    }
    pub fn cfg_scale(&self) -> f64 {
        self.job.cfg_scale
    }
    /// CFG rescale (0 = off).
    pub fn guidance_rescale(&self) -> f64 {
        self.job.guidance_rescale
    }
    /// The sampler as A1111 names it ("DPM++ 2M Karras").
    pub fn sampler_name(&self) -> String {
        self.job.sampler.display_name()
    }
    /// The first pass's size in pixels.
    pub fn width(&self) -> usize {
        self.job.width
    }
    pub fn height(&self) -> usize {
        self.job.height
    }
    pub fn batch_size(&self) -> usize {
        self.job.batch_size
    }
    /// A1111's "Clip skip" (1 = the last layer).
    pub fn clip_skip(&self) -> usize {
        self.job.clip_skip + 1
    }
    /// The hires-fix second pass, if any.
    pub fn hires(&self) -> Option<&HiresPass> {
        self.job.hires.as_ref()
    }
    /// The init image, resized to the request's size (img2img only).
    pub fn init_image(&self) -> Option<&RgbImage> {
        self.init_image.as_ref()
    }
    pub fn is_img2img(&self) -> bool {
        self.init_image.is_some()
    }
    /// The img2img denoising strength (`None` for txt2img).
    pub fn denoising_strength(&self) -> Option<f64> {
        self.is_img2img().then_some(self.job.denoising_strength)
    }
    /// One seed per batch image.
    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }
    /// The same request painting one image per seed (A1111's `n_iter` batches). An empty list
    /// is refused when the request runs.
    pub fn with_seeds(mut self, seeds: Vec<u64>) -> Self {
        self.job.batch_size = seeds.len();
        self.seeds = seeds;
        self
    }
    pub fn format(&self) -> ImageFormat {
        self.format
    }
    /// The decoder asked for (None = the engine's default).
    pub fn decoder(&self) -> Option<super::taesd::Decoder> {
        self.decoder
    }
    /// The same request with `decoder` where it named none (the engine's default).
    pub(crate) fn with_default_decoder(mut self, decoder: super::taesd::Decoder) -> Self {
        let d = *self.decoder.get_or_insert(decoder);
        self.job.decoder = d;
        self
    }
    /// Every how many steps progress carries a latent preview.
    pub fn preview_every(&self) -> Option<usize> {
        self.job.preview_every
    }
    /// The same request with previews every `n` steps (`None` or 0: none); the server's
    /// setting, applied when the job is queued.
    pub fn with_preview_every(mut self, n: Option<usize>) -> Self {
        self.job.preview_every = n.filter(|&n| n > 0);
        self
    }

    /// The denoising passes with the engine's step counts (those of the progress calls).
    pub fn passes(&self) -> Result<Vec<PassPlan>> {
        let job = &self.job;
        let mut out = vec![PassPlan {
            steps: pass_steps(job.steps, self.denoising_strength())?,
            width: job.width,
            height: job.height,
        }];
        if let Some(hr) = &job.hires {
            let steps = if hr.steps == 0 { job.steps } else { hr.steps };
            // Same rounding as the latent upscale (latents are 1/8 of the pixels).
            let up = |side: usize| ((side / 8) as f64 * hr.scale).round().max(1.0) as usize * 8;
            out.push(PassPlan {
                // The hires pass runs at least one step.
                steps: pass_steps(steps, Some(hr.denoising_strength))
                    .unwrap_or(1)
                    .max(1),
                width: up(job.width),
                height: up(job.height),
            });
        }
        Ok(out)
    }

    /// Denoising steps over both passes, i.e. the progress calls to expect (exact for
    /// one-evaluation samplers; Heun reports its extra evaluations too).
    pub fn expected_steps(&self) -> Result<usize> {
        Ok(self.passes()?.iter().map(|p| p.steps).sum())
    }

    /// The size of the finished images (the hires pass's when there is one).
    pub fn output_size(&self) -> Result<(usize, usize)> {
        let last = self.passes()?.pop().map(|p| (p.width, p.height));
        Ok(last.unwrap_or((self.job.width, self.job.height)))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{Defaults, GenerationRequest, HiresRequest};
    use image::RgbImage;

    fn valid(r: GenerationRequest) -> super::ValidRequest {
        r.validate(&Defaults {
            steps: 10,
            width: 64,
            height: 96,
            ..Defaults::default()
        })
        .unwrap()
    }

    #[test]
    fn passes_count_the_engines_steps_and_sizes() {
        let hires = valid(GenerationRequest {
            hires: Some(HiresRequest {
                scale: 1.5,
                denoising_strength: 0.35,
                ..Default::default()
            }),
            ..Default::default()
        });
        let p = hires.passes().unwrap();
        assert_eq!((p[0].steps, p[0].width, p[0].height), (10, 64, 96));
        // floor(10 x 0.35) steps at the latent-rounded size: 8 x 1.5 = 12 cells, 12 x 1.5 = 18.
        assert_eq!((p[1].steps, p[1].width, p[1].height), (3, 96, 144));
        assert_eq!(hires.expected_steps().unwrap(), 13);
        assert_eq!(hires.output_size().unwrap(), (96, 144));
        assert_eq!(hires.denoising_strength(), None);

        let img2img = valid(GenerationRequest {
            init_image: Some(RgbImage::new(64, 96)),
            denoising_strength: Some(0.5),
            ..Default::default()
        });
        assert_eq!(img2img.expected_steps().unwrap(), 5);
        assert_eq!(img2img.denoising_strength(), Some(0.5));
        // A strength that leaves no step is the sampler's error, naming the field.
        let none = valid(GenerationRequest {
            init_image: Some(RgbImage::new(64, 96)),
            denoising_strength: Some(0.05),
            ..Default::default()
        });
        assert!(none
            .expected_steps()
            .unwrap_err()
            .to_string()
            .contains("denoising_strength"));
    }

    #[test]
    fn with_seeds_sets_the_batch() {
        let v = valid(GenerationRequest {
            seed: Some(7),
            batch_size: Some(2),
            ..Default::default()
        });
        assert_eq!(v.seeds(), [7, 8]);
        let next = v.with_seeds(vec![9, 10, 11]);
        assert_eq!(next.seeds(), [9, 10, 11]);
        assert_eq!(next.batch_size(), 3);
    }
}

//! Typed requests in, typed results out: `GenerationRequest` (what a user or client sends) is
//! validated into a `ValidRequest` before any tensor exists, so bad sizes or ranges become
//! errors that name the field and the limit instead of candle panics.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result};
use super::infotext::InfoText;
use super::output::ImageFormat;
use super::pipeline::{HiresPass, Job, Timings};
use super::samplers::{parse_sampler, SamplerSpec};
pub use super::valid::ValidRequest;

/// Limits every request is checked against (documented in the README).
pub const MAX_SIDE: usize = 2048;
pub const MIN_SIDE: usize = 64;
pub const MAX_STEPS: usize = 150;
pub const MAX_BATCH: usize = 8;
pub const MAX_CFG: f64 = 30.0;
pub const MAX_PROMPT_CHARS: usize = 8000;
pub const MAX_HIRES_SCALE: f64 = 4.0;
pub const MAX_CLIP_SKIP: usize = 12;

/// The hires-fix options of a request (A1111's enable_hr fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HiresRequest {
    pub scale: f64,
    /// 0 = as many as the first pass.
    pub second_pass_steps: usize,
    pub denoising_strength: f64,
    /// Only "Latent" (bilinear latent upscale) is implemented.
    pub upscaler: String,
}

impl Default for HiresRequest {
    fn default() -> Self {
        Self {
            scale: 2.0,
            second_pass_steps: 0,
            denoising_strength: 0.4,
            upscaler: "Latent".into(),
        }
    }
}

/// A generation request. `None` fields take the model's defaults ([`Defaults`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationRequest {
    pub model: Option<String>,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    /// CFG rescale (diffusers' `guidance_rescale`), 0 to 1; for v-prediction models.
    pub guidance_rescale: Option<f64>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    /// -1 (or absent) = random; image `i` of a batch uses `seed + i`.
    pub seed: Option<i64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub batch_size: Option<usize>,
    /// img2img init image (already decoded by the caller).
    #[serde(skip)]
    pub init_image: Option<RgbImage>,
    pub denoising_strength: Option<f64>,
    pub hires: Option<HiresRequest>,
    /// A1111's "Clip skip" (1 = last layer).
    pub clip_skip: Option<usize>,
    pub format: Option<String>,
    /// Attach a latent preview to every n-th progress call ([`super::Progress::preview`]).
    pub preview_every: Option<usize>,
    /// A1111's `sd_vae`: "Automatic" (or absent) = the model's configured VAE, "None" = the
    /// checkpoint's own, else a VAE file name the server lists ([`super::VaeChoice`]).
    pub vae: Option<String>,
    /// LoRAs to apply besides the `<lora:name:weight>` tags in the prompts (the portrait API's
    /// `loras`, a character's pinned LoRAs). Files of [`super::LORA_DIR`] by name.
    pub loras: Vec<super::LoraRef>,
    /// Embeddings the caller requires (a character's pinned ones): each must be a file of
    /// [`super::EMBEDDING_DIR`]. Prompts use embeddings by name without listing them here.
    pub embeddings: Vec<String>,
    /// What decodes the final image: "vae" or "taesd" (None = the server's `--decoder`).
    pub decoder: Option<String>,
}

/// Per-model defaults, from weights.toml (the regeneration guide's portrait defaults otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    pub sampler: String,
    pub steps: usize,
    pub cfg_scale: f64,
    /// CFG rescale for this model (v-prediction fine-tunes use ~0.7); 0 = off.
    #[serde(default)]
    pub guidance_rescale: f64,
    pub width: usize,
    pub height: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            sampler: "Euler a".into(),
            steps: 25,
            cfg_scale: 8.0,
            guidance_rescale: 0.0,
            width: 512,
            height: 768,
        }
    }
}

fn check_side(field: &'static str, v: usize) -> Result<usize> {
    if !(MIN_SIDE..=MAX_SIDE).contains(&v) || !v.is_multiple_of(8) {
        return Err(EngineError::invalid(
            field,
            format!("must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}, got {v}"),
        ));
    }
    Ok(v)
}

fn check_range(field: &'static str, v: f64, lo: f64, hi: f64, lo_open: bool) -> Result<f64> {
    let ok = v.is_finite() && v <= hi && if lo_open { v > lo } else { v >= lo };
    if !ok {
        let open = if lo_open { "(" } else { "[" };
        return Err(EngineError::invalid(
            field,
            format!("must be in {open}{lo}, {hi}], got {v}"),
        ));
    }
    Ok(v)
}

impl GenerationRequest {
    /// Checks every field against its limit and resolves defaults and the seed.
    pub fn validate(self, defaults: &Defaults) -> Result<ValidRequest> {
        for (field, text) in [
            ("prompt", &self.prompt),
            ("negative_prompt", &self.negative_prompt),
        ] {
            let n = text.chars().count();
            if n > MAX_PROMPT_CHARS {
                return Err(EngineError::invalid(
                    field,
                    format!("at most {MAX_PROMPT_CHARS} characters, got {n}"),
                ));
            }
        }
        let (encoded_prompt, loras) = super::lora::tags::requested(&self.prompt, &self.loras)?;
        let steps = self.steps.unwrap_or(defaults.steps);
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(EngineError::invalid(
                "steps",
                format!("must be between 1 and {MAX_STEPS}, got {steps}"),
            ));
        }
        let guidance_rescale = check_range(
            "guidance_rescale",
            self.guidance_rescale.unwrap_or(defaults.guidance_rescale),
            0.0,
            1.0,
            false,
        )?;
        let cfg_scale = check_range(
            "cfg_scale",
            self.cfg_scale.unwrap_or(defaults.cfg_scale),
            0.0,
            MAX_CFG,
            false,
        )?;
        let sampler: SamplerSpec = parse_sampler(
            self.sampler.as_deref().unwrap_or(&defaults.sampler),
            self.scheduler.as_deref(),
        )?;
        let batch_size = self.batch_size.unwrap_or(1);
        if !(1..=MAX_BATCH).contains(&batch_size) {
            return Err(EngineError::invalid(
                "batch_size",
                format!("must be between 1 and {MAX_BATCH}, got {batch_size}"),
            ));
        }
        // img2img without a size takes the init image's size, rounded down to a multiple of 8.
        let init_size = self
            .init_image
            .as_ref()
            .map(|i| ((i.width() as usize) / 8 * 8, (i.height() as usize) / 8 * 8));
        let width = check_side(
            "width",
            self.width
                .or(init_size.map(|s| s.0))
                .unwrap_or(defaults.width),
        )?;
        let height = check_side(
            "height",
            self.height
                .or(init_size.map(|s| s.1))
                .unwrap_or(defaults.height),
        )?;
        let denoising_strength = match (&self.init_image, self.denoising_strength) {
            (Some(_), s) => check_range("denoising_strength", s.unwrap_or(0.75), 0.0, 1.0, true)?,
            (None, Some(s)) if self.hires.is_none() => {
                check_range("denoising_strength", s, 0.0, 1.0, true)?
            }
            _ => 0.0,
        };
        let hires = match self.hires {
            None => None,
            Some(h) => {
                if !h.upscaler.eq_ignore_ascii_case("latent") && !h.upscaler.is_empty() {
                    return Err(EngineError::invalid(
                        "hr_upscaler",
                        format!(
                            "only the 'Latent' upscaler is available, got '{}'",
                            h.upscaler
                        ),
                    ));
                }
                let scale = check_range("hr_scale", h.scale, 1.0, MAX_HIRES_SCALE, false)?;
                for (field, side) in [("hr_scale (width)", width), ("hr_scale (height)", height)] {
                    let out = (side as f64 * scale).round() as usize;
                    if out > MAX_SIDE {
                        return Err(EngineError::invalid(
                            "hr_scale",
                            format!("{field}: {side} x {scale} = {out} exceeds {MAX_SIDE}"),
                        ));
                    }
                }
                if h.second_pass_steps > MAX_STEPS {
                    return Err(EngineError::invalid(
                        "hr_second_pass_steps",
                        format!(
                            "must be between 0 and {MAX_STEPS}, got {}",
                            h.second_pass_steps
                        ),
                    ));
                }
                let strength =
                    check_range("denoising_strength", h.denoising_strength, 0.0, 1.0, true)?;
                Some(HiresPass {
                    scale,
                    steps: h.second_pass_steps,
                    denoising_strength: strength,
                })
            }
        };
        let clip_skip = self.clip_skip.unwrap_or(1);
        if !(1..=MAX_CLIP_SKIP).contains(&clip_skip) {
            return Err(EngineError::invalid(
                "clip_skip",
                format!("must be between 1 and {MAX_CLIP_SKIP}, got {clip_skip}"),
            ));
        }
        if self.preview_every == Some(0) {
            return Err(EngineError::invalid(
                "preview_every",
                "must be at least 1 (a preview every n steps)",
            ));
        }
        let decoder = self
            .decoder
            .as_deref()
            .map(super::taesd::Decoder::parse)
            .transpose()?;
        let format = match &self.format {
            Some(f) => ImageFormat::parse(f)?,
            None => ImageFormat::Png,
        };
        let embeddings = super::embeddings::check_names(self.embeddings)?;
        let base = super::noise::resolve_seed(self.seed.unwrap_or(-1));
        let seeds = (0..batch_size as u64).map(|i| base + i).collect();
        let init_image = self.init_image.map(|img| {
            if img.width() as usize == width && img.height() as usize == height {
                img
            } else {
                image::imageops::resize(
                    &img,
                    width as u32,
                    height as u32,
                    image::imageops::FilterType::Lanczos3,
                )
            }
        });
        Ok(ValidRequest {
            vae: super::vae::VaeChoice::parse(self.vae.as_deref().unwrap_or("")),
            model: self.model,
            sent_prompt: self.prompt,
            loras,
            infotext_extra: Vec::new(),
            job: Job {
                prompt: encoded_prompt,
                negative_prompt: self.negative_prompt,
                steps,
                cfg_scale,
                guidance_rescale,
                sampler,
                scheduler_override: None,
                width,
                height,
                batch_size,
                init_image: None,
                denoising_strength,
                hires,
                clip_skip: clip_skip - 1,
                plain_prompt: false,
                preview_every: self.preview_every,
                embeddings: Vec::new(),
                decoder: decoder.unwrap_or_default(),
            },
            decoder,
            init_image,
            seeds,
            format,
            embeddings,
        })
    }
}

/// One finished image.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// Encoded bytes in `format`, with A1111's parameters embedded.
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    /// A1111's infotext (the PNG `parameters` chunk).
    pub infotext: String,
    /// Decoded pixels, for thumbnails and further processing.
    pub pixels: RgbImage,
}

impl GeneratedImage {
    /// Encodes `pixels` in `request`'s format with A1111's infotext for image `seed` of it.
    pub fn encode(
        pixels: RgbImage,
        request: &ValidRequest,
        seed: u64,
        model: &str,
        hash: Option<&str>,
    ) -> Result<Self> {
        Self::encode_with_embeddings(pixels, request, seed, model, hash, &[])
    }

    /// [`Self::encode`] for a request whose prompts used `embeddings` (name, short hash).
    pub(crate) fn encode_with_embeddings(
        pixels: RgbImage,
        request: &ValidRequest,
        seed: u64,
        model: &str,
        hash: Option<&str>,
        embeddings: &[(String, String)],
    ) -> Result<Self> {
        let (width, height) = pixels.dimensions();
        let infotext = infotext_for(request, seed, width, height, model, hash, embeddings);
        let bytes = super::output::encode_image(&pixels, request.format, Some(&infotext), 95)?;
        Ok(GeneratedImage {
            bytes,
            format: request.format,
            width,
            height,
            seed,
            infotext,
            pixels,
        })
    }
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct GenerationResult {
    pub images: Vec<GeneratedImage>,
    pub model: String,
    pub sampler: String,
    pub timings: Timings,
}

/// A1111's `TI hashes` value: `name: hash, ...`, with `:` and `,` dropped from names.
fn ti_hashes(embeddings: &[(String, String)]) -> String {
    embeddings
        .iter()
        .map(|(name, hash)| format!("{}: {hash}", name.replace([':', ','], "")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The A1111 infotext for image `seed` of a job.
pub(crate) fn infotext_for(
    request: &ValidRequest,
    seed: u64,
    width: u32,
    height: u32,
    model: &str,
    hash: Option<&str>,
    embeddings: &[(String, String)],
) -> String {
    let job = &request.job;
    let img2img = request.init_image.is_some();
    let mut info = InfoText {
        prompt: request.infotext_prompt(),
        negative_prompt: job.negative_prompt.clone(),
        steps: job.steps,
        sampler: job.sampler.display_name(),
        schedule_type: None,
        cfg_scale: job.cfg_scale,
        seed: seed as i64,
        width,
        height,
        model: Some(model.to_string()),
        model_hash: hash.map(str::to_string),
        denoising_strength: None,
        hires_upscale: None,
        hires_steps: None,
        hires_upscaler: None,
        extra: Vec::new(),
    };
    if img2img {
        info.denoising_strength = Some(job.denoising_strength);
    }
    if let Some(h) = &job.hires {
        // A1111 names the first pass in Size and adds the hires keys.
        info.width = job.width as u32;
        info.height = job.height as u32;
        info.denoising_strength = Some(h.denoising_strength);
        info.hires_upscale = Some(h.scale);
        info.hires_steps = (h.steps > 0).then_some(h.steps);
        info.hires_upscaler = Some("Latent".into());
    }
    if job.clip_skip > 0 {
        info.extra
            .push(("Clip skip".into(), (job.clip_skip + 1).to_string()));
    }
    if !embeddings.is_empty() {
        info.extra.push(("TI hashes".into(), ti_hashes(embeddings)));
    }
    info.extra.extend(request.infotext_extra.iter().cloned());
    info.push_version();
    info.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> GenerationRequest {
        GenerationRequest {
            prompt: "a knight".into(),
            seed: Some(5),
            ..Default::default()
        }
    }

    fn field_of(e: EngineError) -> &'static str {
        match e {
            EngineError::InvalidInput { field, .. } => field,
            other => panic!("expected invalid input, got {other}"),
        }
    }

    #[test]
    fn defaults_and_batch_seeds() {
        let v = GenerationRequest {
            batch_size: Some(3),
            ..req()
        }
        .validate(&Defaults::default())
        .unwrap();
        assert_eq!((v.job.width, v.job.height, v.job.steps), (512, 768, 25));
        assert_eq!(v.seeds, vec![5, 6, 7]);
        assert_eq!(v.job.sampler.display_name(), "Euler a");
    }

    #[test]
    fn rejects_out_of_range_fields() {
        let d = Defaults::default();
        let cases: Vec<(GenerationRequest, &str)> = vec![
            (
                GenerationRequest {
                    width: Some(513),
                    ..req()
                },
                "width",
            ),
            (
                GenerationRequest {
                    height: Some(4096),
                    ..req()
                },
                "height",
            ),
            (
                GenerationRequest {
                    steps: Some(0),
                    ..req()
                },
                "steps",
            ),
            (
                GenerationRequest {
                    steps: Some(151),
                    ..req()
                },
                "steps",
            ),
            (
                GenerationRequest {
                    cfg_scale: Some(f64::NAN),
                    ..req()
                },
                "cfg_scale",
            ),
            (
                GenerationRequest {
                    guidance_rescale: Some(1.5),
                    ..req()
                },
                "guidance_rescale",
            ),
            (
                GenerationRequest {
                    guidance_rescale: Some(-0.1),
                    ..req()
                },
                "guidance_rescale",
            ),
            (
                GenerationRequest {
                    batch_size: Some(0),
                    ..req()
                },
                "batch_size",
            ),
            (
                GenerationRequest {
                    denoising_strength: Some(1.5),
                    ..req()
                },
                "denoising_strength",
            ),
            (
                GenerationRequest {
                    denoising_strength: Some(0.0),
                    ..req()
                },
                "denoising_strength",
            ),
            (
                GenerationRequest {
                    clip_skip: Some(0),
                    ..req()
                },
                "clip_skip",
            ),
            (
                GenerationRequest {
                    format: Some("gif".into()),
                    ..req()
                },
                "format",
            ),
            (
                GenerationRequest {
                    preview_every: Some(0),
                    ..req()
                },
                "preview_every",
            ),
            (
                GenerationRequest {
                    hires: Some(HiresRequest {
                        scale: 8.0,
                        ..Default::default()
                    }),
                    ..req()
                },
                "hr_scale",
            ),
        ];
        for (r, field) in cases {
            let e = r.validate(&d).unwrap_err();
            let msg = e.to_string();
            assert_eq!(field_of(e), field, "{msg}");
        }
        let e = GenerationRequest {
            sampler: Some("Bogus".into()),
            ..req()
        }
        .validate(&d)
        .unwrap_err();
        assert!(e.to_string().contains("Euler a"), "{e}");
    }

    #[test]
    fn img2img_takes_init_size_and_strength_default() {
        let v = GenerationRequest {
            init_image: Some(RgbImage::new(100, 75)),
            ..req()
        }
        .validate(&Defaults::default())
        .unwrap();
        assert_eq!((v.job.width, v.job.height), (96, 72));
        assert_eq!(v.init_image.unwrap().dimensions(), (96, 72));
        assert_eq!(v.job.denoising_strength, 0.75);
    }
}

//! AUTOMATIC1111's `txt2img` / `img2img` request bodies, with A1111's API defaults, and their
//! translation into an engine [`GenerationRequest`].
//!
//! Every field is optional on the wire (clients send `null` for many of them) and filled with
//! the default of A1111's API model before use; the filled body is what the reply echoes as
//! `parameters`. A1111's API defaults differ from its UI's: steps 50, CFG scale 7, 512x512,
//! sampler "Euler" (the API model's `sampler_index` default) and denoising strength 0.75.
//!
//! Fields we do not implement are accepted; when they would have changed the image they are
//! named in `notes`, which the reply puts in `info` as `limner_unsupported`. Unknown keys are
//! named there too. Only bad values of fields we do implement are refused (422).

use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::run::MAX_N_ITER;
use crate::api::error::ApiError;
use crate::engine::request::{GenerationRequest, HiresRequest, MAX_BATCH};

/// A1111's API defaults (`StableDiffusionProcessing` and the API's request model).
pub(crate) const DEFAULT_STEPS: usize = 50;
pub(crate) const DEFAULT_CFG: f64 = 7.0;
pub(crate) const DEFAULT_SIDE: usize = 512;
pub(crate) const DEFAULT_SAMPLER: &str = "Euler";
pub(crate) const DEFAULT_DENOISING: f64 = 0.75;
pub(crate) const DEFAULT_HR_SCALE: f64 = 2.0;

/// Fields shared by txt2img and img2img.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub(crate) struct Common {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub styles: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub subseed: Option<i64>,
    pub subseed_strength: Option<f64>,
    pub seed_resize_from_h: Option<i64>,
    pub seed_resize_from_w: Option<i64>,
    pub sampler_name: Option<String>,
    pub sampler_index: Option<String>,
    pub scheduler: Option<String>,
    pub batch_size: Option<usize>,
    pub n_iter: Option<usize>,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub restore_faces: Option<bool>,
    pub tiling: Option<bool>,
    pub do_not_save_samples: Option<bool>,
    pub do_not_save_grid: Option<bool>,
    pub eta: Option<f64>,
    pub denoising_strength: Option<f64>,
    pub s_min_uncond: Option<f64>,
    pub s_churn: Option<f64>,
    pub s_tmax: Option<f64>,
    pub s_tmin: Option<f64>,
    pub s_noise: Option<f64>,
    pub override_settings: Option<Map<String, Value>>,
    pub override_settings_restore_afterwards: Option<bool>,
    pub refiner_checkpoint: Option<String>,
    pub refiner_switch_at: Option<f64>,
    pub disable_extra_networks: Option<bool>,
    pub firstpass_image: Option<String>,
    pub comments: Option<Value>,
    pub force_task_id: Option<String>,
    pub script_name: Option<String>,
    pub script_args: Option<Vec<Value>>,
    pub send_images: Option<bool>,
    pub save_images: Option<bool>,
    pub alwayson_scripts: Option<Map<String, Value>>,
    pub infotext: Option<String>,
}

/// `POST /sdapi/v1/txt2img`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub(crate) struct Txt2ImgBody {
    #[serde(flatten)]
    pub common: Common,
    pub enable_hr: Option<bool>,
    pub firstphase_width: Option<usize>,
    pub firstphase_height: Option<usize>,
    pub hr_scale: Option<f64>,
    pub hr_upscaler: Option<String>,
    pub hr_second_pass_steps: Option<usize>,
    pub hr_resize_x: Option<usize>,
    pub hr_resize_y: Option<usize>,
    pub hr_checkpoint_name: Option<String>,
    pub hr_sampler_name: Option<String>,
    pub hr_scheduler: Option<String>,
    pub hr_prompt: Option<String>,
    pub hr_negative_prompt: Option<String>,
    /// Keys A1111 does not define (or we do not know); named in the notes, never echoed.
    #[serde(flatten, skip_serializing)]
    pub extra: Map<String, Value>,
}

/// `POST /sdapi/v1/img2img`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub(crate) struct Img2ImgBody {
    #[serde(flatten)]
    pub common: Common,
    pub init_images: Option<Vec<String>>,
    pub resize_mode: Option<i64>,
    pub image_cfg_scale: Option<f64>,
    pub mask: Option<String>,
    pub mask_blur_x: Option<i64>,
    pub mask_blur_y: Option<i64>,
    pub mask_blur: Option<i64>,
    pub mask_round: Option<bool>,
    pub inpainting_fill: Option<i64>,
    pub inpaint_full_res: Option<Value>,
    pub inpaint_full_res_padding: Option<i64>,
    pub inpainting_mask_invert: Option<i64>,
    pub initial_noise_multiplier: Option<f64>,
    pub latent_mask: Option<String>,
    pub include_init_images: Option<bool>,
    #[serde(flatten, skip_serializing)]
    pub extra: Map<String, Value>,
}

fn fill<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

fn set(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Common {
    /// Fills what A1111's API model fills (its other fields default to `None` there too).
    fn fill_defaults(&mut self) {
        fill(&mut self.prompt, String::new());
        fill(&mut self.negative_prompt, String::new());
        fill(&mut self.seed, -1);
        fill(&mut self.subseed, -1);
        fill(&mut self.subseed_strength, 0.0);
        fill(&mut self.seed_resize_from_h, -1);
        fill(&mut self.seed_resize_from_w, -1);
        fill(&mut self.sampler_index, DEFAULT_SAMPLER.to_string());
        fill(&mut self.batch_size, 1);
        fill(&mut self.n_iter, 1);
        fill(&mut self.steps, DEFAULT_STEPS);
        fill(&mut self.cfg_scale, DEFAULT_CFG);
        fill(&mut self.width, DEFAULT_SIDE);
        fill(&mut self.height, DEFAULT_SIDE);
        fill(&mut self.do_not_save_samples, false);
        fill(&mut self.do_not_save_grid, false);
        fill(&mut self.override_settings_restore_afterwards, true);
        fill(&mut self.disable_extra_networks, false);
        fill(&mut self.script_args, Vec::new());
        fill(&mut self.send_images, true);
        fill(&mut self.save_images, false);
        fill(&mut self.alwayson_scripts, Map::new());
    }

    /// The model named in `override_settings.sd_model_checkpoint`, if any.
    pub(crate) fn checkpoint(&self) -> Option<&str> {
        self.override_settings
            .as_ref()?
            .get("sd_model_checkpoint")?
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// The VAE named in `override_settings.sd_vae`, if any (a non-string is a 422).
    pub(crate) fn vae_override(&self) -> Result<Option<&str>, ApiError> {
        match self
            .override_settings
            .as_ref()
            .and_then(|o| o.get("sd_vae"))
        {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::validation(
                "override_settings.sd_vae",
                "must be a string: Automatic, None or a VAE file name",
            )),
        }
    }

    /// The sampler A1111 would use: `sampler_name`, else `sampler_index`, else "Euler".
    pub(crate) fn sampler(&self) -> &str {
        set(&self.sampler_name)
            .or(set(&self.sampler_index))
            .unwrap_or(DEFAULT_SAMPLER)
    }

    /// The engine request for these fields; notes what is ignored.
    fn to_request(&self, notes: &mut Vec<String>) -> Result<GenerationRequest, ApiError> {
        let n_iter = self.n_iter.unwrap_or(1);
        if !(1..=MAX_N_ITER).contains(&n_iter) {
            return Err(ApiError::validation(
                "n_iter",
                format!("must be between 1 and {MAX_N_ITER}, got {n_iter}"),
            ));
        }
        let batch_size = self.batch_size.unwrap_or(1);
        if !(1..=MAX_BATCH).contains(&batch_size) {
            return Err(ApiError::validation(
                "batch_size",
                format!("must be between 1 and {MAX_BATCH}, got {batch_size}"),
            ));
        }
        let mut note = |field: &str, why: &str| notes.push(format!("{field}: {why}"));
        // Every A1111 schedule type is implemented; an unknown one is refused (422 naming
        // `scheduler`) when the request is validated, never replaced by Automatic.
        let scheduler = set(&self.scheduler).map(str::to_string);
        if self.styles.as_ref().is_some_and(|s| !s.is_empty()) {
            note("styles", "prompt styles are not stored here; ignored");
        }
        if self.subseed_strength.is_some_and(|s| s != 0.0) {
            note("subseed_strength", "variation seeds are not implemented");
        }
        for (field, v) in [
            ("seed_resize_from_h", self.seed_resize_from_h),
            ("seed_resize_from_w", self.seed_resize_from_w),
        ] {
            if v.is_some_and(|v| v > 0) {
                note(field, "seed resizing is not implemented");
            }
        }
        for (field, v) in [
            ("restore_faces", self.restore_faces),
            ("tiling", self.tiling),
            ("save_images", self.save_images),
        ] {
            if v == Some(true) {
                note(field, "not implemented; ignored");
            }
        }
        if self.eta.is_some_and(|e| e != 1.0) {
            note(
                "eta",
                "only eta 1 (ancestral samplers' default) is implemented",
            );
        }
        for (field, v, default) in [
            ("s_churn", self.s_churn, 0.0),
            ("s_tmax", self.s_tmax, 0.0),
            ("s_tmin", self.s_tmin, 0.0),
            ("s_noise", self.s_noise, 1.0),
            ("s_min_uncond", self.s_min_uncond, 0.0),
        ] {
            if v.is_some_and(|v| v != default) {
                note(field, "sampler noise settings are not implemented");
            }
        }
        for (field, v) in [
            ("refiner_checkpoint", &self.refiner_checkpoint),
            ("firstpass_image", &self.firstpass_image),
            ("script_name", &self.script_name),
            ("infotext", &self.infotext),
        ] {
            if set(v).is_some() {
                note(field, "not implemented; ignored");
            }
        }
        if let Some(scripts) = self.alwayson_scripts.as_ref().filter(|s| !s.is_empty()) {
            let names: Vec<&str> = scripts.keys().map(String::as_str).collect();
            note(
                "alwayson_scripts",
                &format!("extensions are not available: {}", names.join(", ")),
            );
        }
        let mut clip_skip = None;
        for (key, value) in self.override_settings.iter().flatten() {
            match key.as_str() {
                // Both are applied by the caller, which knows the served models and VAEs.
                "sd_model_checkpoint" | "sd_vae" => {}
                "CLIP_stop_at_last_layers" => match value.as_u64() {
                    Some(n) => clip_skip = Some(n as usize),
                    None => {
                        return Err(ApiError::validation(
                            "override_settings.CLIP_stop_at_last_layers",
                            "must be a whole number",
                        ))
                    }
                },
                other => note(
                    &format!("override_settings.{other}"),
                    "setting not available",
                ),
            }
        }
        Ok(GenerationRequest {
            model: None,
            prompt: self.prompt.clone().unwrap_or_default(),
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            steps: Some(self.steps.unwrap_or(DEFAULT_STEPS)),
            cfg_scale: Some(self.cfg_scale.unwrap_or(DEFAULT_CFG)),
            // A1111 has no CFG rescale of its own: the model's default applies.
            guidance_rescale: None,
            sampler: Some(self.sampler().to_string()),
            scheduler,
            seed: Some(self.seed.unwrap_or(-1)),
            width: Some(self.width.unwrap_or(DEFAULT_SIDE)),
            height: Some(self.height.unwrap_or(DEFAULT_SIDE)),
            batch_size: Some(batch_size),
            init_image: None,
            denoising_strength: None,
            hires: None,
            clip_skip,
            format: Some("png".into()),
            // The server's `--preview-every` applies when the job is queued (`compat::run`);
            // `/sdapi/v1/progress` shows the latest as `current_image`.
            preview_every: None,
            vae: None,
            // A1111 names LoRAs only as `<lora:name:w>` tags, which stay in the prompt.
            loras: Vec::new(),
            embeddings: Vec::new(),
            // The server's `--decoder`.
            decoder: None,
        })
    }
}

fn note_unknown(extra: &Map<String, Value>, notes: &mut Vec<String>) {
    for key in extra.keys() {
        notes.push(format!("{key}: unknown field; ignored"));
    }
}

/// One side rounded to a multiple of 8 (A1111 sizes are multiples of 8 for SD 1.x latents).
fn round8(x: f64) -> usize {
    ((x / 8.0).round().max(1.0) as usize) * 8
}

impl Txt2ImgBody {
    pub(crate) fn fill_defaults(&mut self) {
        self.common.fill_defaults();
        fill(&mut self.enable_hr, false);
        fill(&mut self.common.denoising_strength, DEFAULT_DENOISING);
        fill(&mut self.firstphase_width, 0);
        fill(&mut self.firstphase_height, 0);
        fill(&mut self.hr_scale, DEFAULT_HR_SCALE);
        fill(&mut self.hr_second_pass_steps, 0);
        fill(&mut self.hr_resize_x, 0);
        fill(&mut self.hr_resize_y, 0);
        fill(&mut self.hr_prompt, String::new());
        fill(&mut self.hr_negative_prompt, String::new());
    }

    /// The engine request (call after [`Self::fill_defaults`]) and what it leaves out.
    pub(crate) fn to_request(&self) -> Result<(GenerationRequest, Vec<String>), ApiError> {
        let mut notes = Vec::new();
        let mut req = self.common.to_request(&mut notes)?;
        note_unknown(&self.extra, &mut notes);
        if self.enable_hr != Some(true) {
            return Ok((req, notes));
        }
        let (mut first_w, mut first_h) = (req.width.unwrap_or(0), req.height.unwrap_or(0));
        let mut target = None;
        let (fw, fh) = (
            self.firstphase_width.unwrap_or(0),
            self.firstphase_height.unwrap_or(0),
        );
        if fw > 0 || fh > 0 {
            // Legacy hires: the first pass at firstphase size, upscaled to width x height.
            let aspect = first_w as f64 / first_h.max(1) as f64;
            target = Some((first_w, first_h));
            first_w = if fw > 0 {
                fw
            } else {
                round8(fh as f64 * aspect)
            };
            first_h = if fh > 0 {
                fh
            } else {
                round8(fw as f64 / aspect)
            };
        }
        let (rx, ry) = (self.hr_resize_x.unwrap_or(0), self.hr_resize_y.unwrap_or(0));
        if rx > 0 || ry > 0 {
            let aspect = first_w as f64 / first_h.max(1) as f64;
            let x = if rx > 0 {
                rx
            } else {
                round8(ry as f64 * aspect)
            };
            let y = if ry > 0 {
                ry
            } else {
                round8(rx as f64 / aspect)
            };
            target = Some((x, y));
        }
        let scale = match target {
            None => self.hr_scale.unwrap_or(DEFAULT_HR_SCALE),
            Some((x, y)) => {
                let sx = x as f64 / first_w.max(1) as f64;
                let sy = y as f64 / first_h.max(1) as f64;
                if (sx - sy).abs() > 1e-3 {
                    notes.push(format!(
                        "hr_resize_x/hr_resize_y: {x}x{y} has another aspect than the first pass {first_w}x{first_h}; upscaled by {:.3} without cropping",
                        sx.max(sy)
                    ));
                }
                sx.max(sy)
            }
        };
        req.width = Some(first_w);
        req.height = Some(first_h);
        let upscaler = set(&self.hr_upscaler).unwrap_or("Latent");
        if upscaler != "Latent" {
            notes.push(format!(
                "hr_upscaler: '{upscaler}' is not available; used 'Latent'"
            ));
        }
        let same = |v: &Option<String>, same_word: &str, base: &str| match set(v) {
            None => true,
            Some(s) => s == same_word || s == base,
        };
        if set(&self.hr_checkpoint_name).is_some_and(|c| c != "Use same checkpoint") {
            notes.push("hr_checkpoint_name: the second pass uses the same model".into());
        }
        if !same(
            &self.hr_sampler_name,
            "Use same sampler",
            self.common.sampler(),
        ) {
            notes.push("hr_sampler_name: the second pass uses the same sampler".into());
        }
        if !same(&self.hr_scheduler, "Use same scheduler", "") {
            notes.push("hr_scheduler: the second pass uses the same scheduler".into());
        }
        let prompt = self.common.prompt.as_deref().unwrap_or("");
        let negative = self.common.negative_prompt.as_deref().unwrap_or("");
        if !same(&self.hr_prompt, prompt, prompt) {
            notes.push("hr_prompt: the second pass uses the same prompt".into());
        }
        if !same(&self.hr_negative_prompt, negative, negative) {
            notes.push("hr_negative_prompt: the second pass uses the same prompt".into());
        }
        req.hires = Some(HiresRequest {
            scale,
            second_pass_steps: self.hr_second_pass_steps.unwrap_or(0),
            denoising_strength: self.common.denoising_strength.unwrap_or(DEFAULT_DENOISING),
            upscaler: "Latent".into(),
        });
        Ok((req, notes))
    }
}

/// Resizes `img` to `w x h` as A1111's resize mode 1 ("Crop and resize") does: scale to cover,
/// then cut the middle.
pub(crate) fn crop_and_resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let scale = (w as f64 / iw.max(1) as f64).max(h as f64 / ih.max(1) as f64);
    let sw = ((iw as f64 * scale).round() as u32).max(w);
    let sh = ((ih as f64 * scale).round() as u32).max(h);
    let scaled = image::imageops::resize(img, sw, sh, image::imageops::FilterType::Lanczos3);
    image::imageops::crop_imm(&scaled, (sw - w) / 2, (sh - h) / 2, w, h).to_image()
}

impl Img2ImgBody {
    pub(crate) fn fill_defaults(&mut self) {
        self.common.fill_defaults();
        fill(&mut self.resize_mode, 0);
        fill(&mut self.common.denoising_strength, DEFAULT_DENOISING);
        fill(&mut self.mask_blur_x, 4);
        fill(&mut self.mask_blur_y, 4);
        fill(&mut self.mask_round, true);
        fill(&mut self.inpainting_fill, 0);
        fill(&mut self.inpaint_full_res, Value::Bool(true));
        fill(&mut self.inpaint_full_res_padding, 0);
        fill(&mut self.inpainting_mask_invert, 0);
        fill(&mut self.include_init_images, false);
    }

    /// The engine request without its init image (call after [`Self::fill_defaults`]), and
    /// what it leaves out. `resize_mode` 1 is applied by the caller with [`crop_and_resize`].
    pub(crate) fn to_request(&self) -> Result<(GenerationRequest, Vec<String>), ApiError> {
        let mut notes = Vec::new();
        let mut req = self.common.to_request(&mut notes)?;
        note_unknown(&self.extra, &mut notes);
        let images = self.init_images.as_deref().unwrap_or_default();
        if images.is_empty() {
            return Err(ApiError::validation(
                "init_images",
                "img2img needs at least one init image (base64 or a data: URL)",
            ));
        }
        if images.len() > 1 {
            notes.push(format!(
                "init_images: {} images sent; every image of the batch starts from the first",
                images.len()
            ));
        }
        match self.resize_mode.unwrap_or(0) {
            0 | 1 => {}
            2 | 3 => notes.push(format!(
                "resize_mode: {} is not implemented; used 0 (just resize)",
                self.resize_mode.unwrap_or(0)
            )),
            other => {
                return Err(ApiError::validation(
                    "resize_mode",
                    format!("must be 0, 1, 2 or 3, got {other}"),
                ))
            }
        }
        if set(&self.mask).is_some() {
            notes.push("mask: inpainting is not implemented; the whole image was redrawn".into());
        }
        if set(&self.latent_mask).is_some() {
            notes.push("latent_mask: inpainting is not implemented".into());
        }
        if self.initial_noise_multiplier.is_some_and(|m| m != 1.0) {
            notes.push("initial_noise_multiplier: not implemented; used 1".into());
        }
        req.denoising_strength = Some(self.common.denoising_strength.unwrap_or(DEFAULT_DENOISING));
        Ok((req, notes))
    }
}

#[cfg(test)]
#[path = "a1111_request_tests.rs"]
mod tests;

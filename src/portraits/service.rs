//! The portrait service: prepares portrait jobs from character profiles (prompt, template, model,
//! The regeneration guide's settings, validation) and runs them (paint, store the image and its thumbnail,
//! record the portrait in history as current).
//!
//! Preparation and running are separate so the HTTP layer can refuse a bad request (4xx) before
//! it takes a place in the GPU queue. Writing is all-or-nothing: files first, then the history
//! row; if the row cannot be written the files are removed again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use super::backend::ImageBackend;
use super::error::PortraitError;
use super::estimate::{passes, SpeedBook};
use super::image_store::{image_key, thumbnail_key, ImageStore, ImageStoreError};
use super::options::{
    check_text, GenerateOptions, Method, PortraitOutcome, PreparedPortrait, StyleModels,
    DEFAULT_REGENERATE_STRENGTH, MAX_REGENERATE_STRENGTH, MIN_REGENERATE_STRENGTH,
};
use super::prompt::{build_prompt, join_parts};
use super::templates::{PortraitTemplate, PortraitTemplates, DEFAULT_STYLE};
use crate::characters::{validate, CharacterProfile, CharacterStore, NewPortrait, PortraitRecord};
use crate::engine::{
    decode_image, encode_image, thumbnail, CancelToken, EngineError, GenerationRequest,
    HiresRequest, ImageFormat, LoraRef, Progress, ValidRequest, MAX_LORAS,
};

/// Longest side of a portrait thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

/// The regeneration guide's hires fix: on, Latent upscaler, denoise 0.4; x2 is A1111's default scale.
const HIRES_SCALE: f64 = 2.0;
const HIRES_STRENGTH: f64 = 0.4;

struct Inner {
    store: Arc<dyn CharacterStore>,
    images: Arc<dyn ImageStore>,
    backend: Arc<dyn ImageBackend>,
    templates: PortraitTemplates,
    styles: StyleModels,
    /// Measured speed per model, for estimates.
    speed: Arc<SpeedBook>,
    /// One lock per character with a run writing right now, so two runs of the same character
    /// never interleave "read current, write files, record" (entries are dropped when unused).
    writing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Portrait generation and regeneration for characters of a store. Cheap to clone.
#[derive(Clone)]
pub struct PortraitService {
    inner: Arc<Inner>,
}

/// The networks a portrait is painted with: the character's pinned LoRAs and embeddings, then
/// the request's (validated here, errors naming `loras[i]...`). A LoRA named by both keeps its
/// pinned place and takes the request's weight; names match case-insensitively, as the engine
/// finds files.
fn networks(
    profile: Option<&CharacterProfile>,
    opts: &GenerateOptions,
) -> Result<(Vec<LoraRef>, Vec<String>), PortraitError> {
    let asked = validate::loras("loras", &opts.loras)?;
    let asked_embeddings = validate::embeddings("embeddings", &opts.embeddings)?;
    let (mut loras, mut embeddings) = profile.map_or_else(Default::default, |p| {
        (p.loras.clone(), p.embeddings.clone())
    });
    let pinned = loras.len();
    for l in asked {
        match loras
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(&l.name))
        {
            Some(p) => p.weight = l.weight,
            None => loras.push(l),
        }
    }
    if loras.len() > MAX_LORAS {
        return Err(PortraitError::validation(
            "loras",
            format!(
                "at most {MAX_LORAS} LoRAs together with the character's {pinned} pinned ones \
                 (got {})",
                loras.len()
            ),
        ));
    }
    for e in asked_embeddings {
        if !embeddings.iter().any(|p| p.eq_ignore_ascii_case(&e)) {
            embeddings.push(e);
        }
    }
    Ok((loras, embeddings))
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

impl PortraitService {
    pub fn new(
        store: Arc<dyn CharacterStore>,
        images: Arc<dyn ImageStore>,
        backend: Arc<dyn ImageBackend>,
        templates: PortraitTemplates,
        styles: StyleModels,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                images,
                backend,
                templates,
                styles,
                speed: Arc::default(),
                writing: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn CharacterStore> {
        &self.inner.store
    }

    pub fn images(&self) -> &Arc<dyn ImageStore> {
        &self.inner.images
    }

    pub fn backend(&self) -> &Arc<dyn ImageBackend> {
        &self.inner.backend
    }

    pub fn templates(&self) -> &PortraitTemplates {
        &self.inner.templates
    }

    /// The running speed measurements the estimates come from.
    pub fn speed(&self) -> &Arc<SpeedBook> {
        &self.inner.speed
    }

    /// The art styles requests may name.
    pub fn art_styles(&self) -> Vec<&str> {
        self.inner.templates.styles()
    }

    /// The model a style paints with: the request's, else the source portrait's (regeneration),
    /// the template's, the `weights.toml` style map's, in that order (only models the backend
    /// knows), else the backend's default model.
    fn pick_model(
        &self,
        explicit: Option<&str>,
        inherited: Option<&str>,
        style: &str,
        template: &PortraitTemplate,
    ) -> Result<String, PortraitError> {
        let known = self.inner.backend.model_names();
        if let Some(m) = explicit {
            if known.iter().any(|k| k == m) {
                return Ok(m.to_string());
            }
            return Err(PortraitError::validation(
                "model",
                format!("unknown model {m:?}; known models: {}", known.join(", ")),
            ));
        }
        let candidates = [
            inherited,
            template.model.as_deref(),
            self.inner.styles.model_for(style),
        ];
        Ok(candidates
            .into_iter()
            .flatten()
            .find(|c| known.iter().any(|k| k == c))
            .map(str::to_string)
            .unwrap_or_else(|| self.inner.backend.default_model()))
    }

    /// The final prompt and negative prompt for a profile (or, for estimates, none) painted
    /// by `model`: the style's template, with the tags of the model's prompt family where it
    /// has a `prompts/families/` file (Pony, Illustrious, NoobAI).
    fn prompts(
        &self,
        model: &str,
        template: &PortraitTemplate,
        profile: Option<&CharacterProfile>,
        additions: &[Option<&str>],
        extra_negative: Option<&str>,
    ) -> (String, String) {
        let extra = join_parts(additions.iter().flatten());
        let subject = profile.map_or_else(String::new, |p| build_prompt(p, Some(&extra)));
        let family = self
            .inner
            .styles
            .family(model)
            .and_then(|f| self.inner.templates.family(f));
        if let Some(tags) = family {
            let gender = profile.map(|p| p.gender.as_str());
            return template.render_for_family(tags, gender, &subject, extra_negative);
        }
        let prompt = template.render(&subject);
        let negative = join_parts([
            template.negative_prompt.as_str(),
            extra_negative.unwrap_or(""),
        ]);
        (prompt, negative)
    }

    fn base_request(
        &self,
        model: &str,
        prompt: String,
        negative: String,
        opts: &GenerateOptions,
        (loras, embeddings): (Vec<LoraRef>, Vec<String>),
    ) -> GenerationRequest {
        GenerationRequest {
            loras,
            embeddings,
            model: Some(model.to_string()),
            prompt,
            negative_prompt: negative,
            steps: opts.steps,
            cfg_scale: opts.cfg_scale,
            guidance_rescale: opts.guidance_rescale,
            sampler: opts.sampler.clone(),
            scheduler: opts.scheduler.clone(),
            seed: opts.seed,
            width: opts.width,
            height: opts.height,
            batch_size: Some(1),
            format: Some("png".into()),
            decoder: opts.decoder.clone(),
            ..Default::default()
        }
    }

    fn validate(&self, model: &str, req: GenerationRequest) -> Result<ValidRequest, PortraitError> {
        let defaults = match self.inner.backend.defaults(Some(model)) {
            Ok(d) => d,
            Err(EngineError::UnknownModel(m)) => {
                return Err(PortraitError::validation(
                    "model",
                    format!("unknown model {m:?}"),
                ))
            }
            // No model to paint with (none pulled): bad input is still named first.
            Err(unavailable @ EngineError::Unavailable(_)) => {
                req.validate(&Default::default())?;
                return Err(unavailable.into());
            }
            Err(other) => return Err(other.into()),
        };
        Ok(req.validate(&defaults)?)
    }

    fn prepared(
        character_id: &str,
        request: ValidRequest,
        method: Method,
        art_style: String,
        model: String,
        source: Option<PortraitRecord>,
    ) -> Result<PreparedPortrait, PortraitError> {
        let expected = request.expected_steps()?;
        let seed = request.seeds().first().copied().unwrap_or_default();
        let mut parameters = json!({
            "method": method.as_str(),
            "art_style": art_style,
            "model": model,
            "sampler": request.sampler_name(),
            "steps": request.steps(),
            "cfg_scale": request.cfg_scale(),
            "guidance_rescale": request.guidance_rescale(),
            "width": request.width(),
            "height": request.height(),
            "seed": seed,
            "hires": request.hires().is_some(),
        });
        if let (Some(hr), Value::Object(map)) = (request.hires(), &mut parameters) {
            map.insert("hr_scale".into(), json!(hr.scale));
            map.insert("hr_second_pass_steps".into(), json!(hr.steps));
            map.insert("hr_upscaler".into(), json!("Latent"));
            map.insert("hr_denoising_strength".into(), json!(hr.denoising_strength));
        }
        let denoising_strength = request.denoising_strength();
        if let (Some(s), Value::Object(map)) = (denoising_strength, &mut parameters) {
            map.insert("denoising_strength".into(), json!(s));
        }
        // Recorded in history, so a portrait says which LoRAs painted it.
        if let Value::Object(map) = &mut parameters {
            if !request.loras().is_empty() {
                let loras: Vec<Value> = request
                    .loras()
                    .iter()
                    .map(|l| json!({"name": l.name, "weight": l.weight}))
                    .collect();
                map.insert("loras".into(), json!(loras));
            }
            if !request.embeddings().is_empty() {
                map.insert("embeddings".into(), json!(request.embeddings()));
            }
        }
        if let (Some(src), Value::Object(map)) = (&source, &mut parameters) {
            map.insert("source_portrait_id".into(), json!(src.id));
        }
        Ok(PreparedPortrait {
            character_id: character_id.to_string(),
            prompt: request.prompt().to_string(),
            negative_prompt: request.negative_prompt().to_string(),
            request,
            method,
            art_style,
            model,
            parameters,
            source,
            denoising_strength,
            expected_steps: expected,
        })
    }

    /// Validates a txt2img portrait of a character: profile -> prompt -> template, the style's
    /// model, the regeneration guide's defaults under the model's and the request's. The caller
    /// has the profile already (it checked access with it), so it is not read again.
    pub fn prepare_generate(
        &self,
        profile: &CharacterProfile,
        opts: GenerateOptions,
    ) -> Result<PreparedPortrait, PortraitError> {
        self.prepare_txt2img(Some(profile), opts)
    }

    /// [`Self::prepare_generate`] for `profile`, or for no character (estimates).
    pub(super) fn prepare_txt2img(
        &self,
        profile: Option<&CharacterProfile>,
        opts: GenerateOptions,
    ) -> Result<PreparedPortrait, PortraitError> {
        check_text(
            "custom_prompt_additions",
            opts.custom_prompt_additions.as_deref(),
        )?;
        check_text("negative_prompt", opts.negative_prompt.as_deref())?;
        let style = non_empty(opts.art_style.as_deref()).unwrap_or(DEFAULT_STYLE);
        let template = self.inner.templates.get(style)?;
        let style = template.style.clone();
        let model = self.pick_model(opts.model.as_deref(), None, &style, template)?;
        let (prompt, negative) = match profile {
            Some(_) => self.prompts(
                &model,
                template,
                profile,
                &[opts.custom_prompt_additions.as_deref()],
                opts.negative_prompt.as_deref(),
            ),
            None => self.prompts(&model, template, None, &[], None),
        };
        let hires = opts
            .hires
            .or(self.inner.styles.hires_fix(&model))
            .unwrap_or(true);
        let networks = networks(profile, &opts)?;
        let mut req = self.base_request(&model, prompt, negative, &opts, networks);
        req.hires = hires.then(|| HiresRequest {
            scale: opts.hr_scale.unwrap_or(HIRES_SCALE),
            second_pass_steps: opts.hr_second_pass_steps.unwrap_or(0),
            denoising_strength: opts.hr_denoising_strength.unwrap_or(HIRES_STRENGTH),
            upscaler: "Latent".into(),
        });
        let request = self.validate(&model, req)?;
        let id = profile.map_or("", |p| p.id.as_str());
        Self::prepared(id, request, Method::Txt2Img, style, model, None)
    }

    /// Validates the regeneration guide's regeneration: img2img from the character's current portrait with
    /// `new_prompt` added to the profile's prompt, at `denoising_strength` (0.1-0.9, default
    /// 0.2), same size, no hires fix; style and model default to the current portrait's.
    pub fn prepare_regenerate(
        &self,
        profile: &CharacterProfile,
        new_prompt: &str,
        denoising_strength: Option<f64>,
        opts: GenerateOptions,
    ) -> Result<PreparedPortrait, PortraitError> {
        if new_prompt.trim().is_empty() {
            return Err(PortraitError::validation(
                "newPrompt",
                "must not be empty (describe the variation, e.g. \"same character but ...\")",
            ));
        }
        check_text("newPrompt", Some(new_prompt))?;
        check_text(
            "custom_prompt_additions",
            opts.custom_prompt_additions.as_deref(),
        )?;
        check_text("negative_prompt", opts.negative_prompt.as_deref())?;
        let networks = networks(Some(profile), &opts)?;
        let strength = denoising_strength.unwrap_or(DEFAULT_REGENERATE_STRENGTH);
        if !(MIN_REGENERATE_STRENGTH..=MAX_REGENERATE_STRENGTH).contains(&strength) {
            return Err(PortraitError::validation(
                "denoisingStrength",
                format!(
                    "must be between {MIN_REGENERATE_STRENGTH} and {MAX_REGENERATE_STRENGTH}, \
                     got {strength}"
                ),
            ));
        }
        let no_portrait = || {
            PortraitError::Conflict(format!(
                "character {:?} has no current portrait to regenerate from; generate one first",
                profile.id
            ))
        };
        let current = profile
            .current_portrait_id
            .as_deref()
            .ok_or_else(no_portrait)?;
        let source = match self.inner.store.get_portrait(current) {
            Ok(p) => p,
            Err(crate::characters::StoreError::NotFound { .. }) => return Err(no_portrait()),
            Err(e) => return Err(e.into()),
        };
        let bytes = self
            .inner
            .images
            .get(&source.file_path)
            .map_err(|e| match e {
                ImageStoreError::NotFound(_) | ImageStoreError::InvalidKey { .. } => {
                    PortraitError::Conflict(format!(
                        "the current portrait's image {:?} is not in the image store; \
                         generate a new portrait first",
                        source.file_path
                    ))
                }
                other => other.into(),
            })?;
        let init = decode_image(&bytes).map_err(|e| {
            PortraitError::Storage(format!(
                "the current portrait's image {:?} cannot be decoded: {e}",
                source.file_path
            ))
        })?;

        // The request's style wins; otherwise the source's (if still known), then the default.
        let (template, inherit) = match non_empty(opts.art_style.as_deref()) {
            Some(s) => (self.inner.templates.get(s)?, false),
            None => match source
                .art_style
                .as_deref()
                .map(|s| self.inner.templates.get(s))
            {
                Some(Ok(t)) => (t, true),
                _ => (self.inner.templates.get(DEFAULT_STYLE)?, false),
            },
        };
        let style = template.style.clone();
        let inherited = if inherit {
            source.model.as_deref()
        } else {
            None
        };
        let model = self.pick_model(opts.model.as_deref(), inherited, &style, template)?;
        let (prompt, negative) = self.prompts(
            &model,
            template,
            Some(profile),
            &[Some(new_prompt), opts.custom_prompt_additions.as_deref()],
            opts.negative_prompt.as_deref(),
        );
        let mut req = self.base_request(&model, prompt, negative, &opts, networks);
        req.init_image = Some(init);
        req.denoising_strength = Some(strength);
        let request = self
            .validate(&model, req)
            .map_err(PortraitError::for_regenerate)?;
        Self::prepared(
            &profile.id,
            request,
            Method::Img2ImgConsistency,
            style,
            model,
            Some(source),
        )
        .map_err(PortraitError::for_regenerate)
    }

    /// Paints a prepared portrait (blocking), stores the image and its thumbnail, and records it
    /// as the character's current portrait. On any error nothing is left behind.
    pub fn run(
        &self,
        prepared: PreparedPortrait,
        progress: Box<dyn FnMut(Progress) + Send>,
        cancel: &CancelToken,
    ) -> Result<PortraitOutcome, PortraitError> {
        if cancel.is_cancelled() {
            return Err(PortraitError::Cancelled);
        }
        let PreparedPortrait {
            character_id,
            request,
            method,
            art_style,
            model: resolved,
            prompt,
            negative_prompt,
            mut parameters,
            source,
            ..
        } = prepared;
        let started = Instant::now();
        let meter = self.inner.speed.meter(&resolved, passes(&request));
        let progress = meter.wrap(progress);
        let result = self.inner.backend.generate(request, progress, cancel);
        meter.finish(result.is_ok());
        let result = result?;
        let generation_time_ms = started.elapsed().as_millis() as u64;
        let model = result.model;
        let image = result.images.into_iter().next().ok_or_else(|| {
            PortraitError::Engine(EngineError::Model("the engine returned no image".into()))
        })?;
        // A job cancelled while its last step ran (e.g. the client gave up) leaves no portrait.
        if cancel.is_cancelled() {
            return Err(PortraitError::Cancelled);
        }
        let thumb = encode_image(
            &thumbnail(&image.pixels, THUMBNAIL_SIDE),
            ImageFormat::Png,
            None,
            90,
        )?;
        if let Value::Object(map) = &mut parameters {
            map.insert("model".into(), json!(model));
            map.insert("output_width".into(), json!(image.width));
            map.insert("output_height".into(), json!(image.height));
        }
        let file_id = uuid::Uuid::new_v4().simple().to_string();
        let new = NewPortrait {
            character_id: character_id.clone(),
            file_path: image_key(&character_id, &file_id),
            thumbnail_path: Some(thumbnail_key(&character_id, &file_id)),
            prompt: prompt.clone(),
            negative_prompt: negative_prompt.clone(),
            parameters: Some(parameters.clone()),
            seed: Some(image.seed),
            model: Some(model.clone()),
            art_style: Some(art_style.clone()),
            parent_portrait_id: source.map(|s| s.id),
        };
        let (record, previous) = self.with_character_lock(&character_id, || {
            self.write_portrait(&new, &image.bytes, &thumb)
        })?;
        Ok(PortraitOutcome {
            record,
            previous,
            prompt_used: prompt,
            negative_prompt,
            seed: image.seed,
            parameters,
            generation_time_ms,
            art_style,
            model,
            method: method.as_str(),
        })
    }

    /// Writes both files and the history row, in that order; undoes the files if a later
    /// step fails. Returns the new record and the portrait that was current before.
    fn write_portrait(
        &self,
        new: &NewPortrait,
        image: &[u8],
        thumb: &[u8],
    ) -> Result<(PortraitRecord, Option<PortraitRecord>), PortraitError> {
        let store = &self.inner.store;
        let images = &self.inner.images;
        let profile = store.get_character(&new.character_id)?;
        let previous = match profile.current_portrait_id.as_deref() {
            Some(id) => store.get_portrait(id).ok(),
            None => None,
        };
        let thumb_key = new.thumbnail_path.as_deref().unwrap_or_default();
        images.put(&new.file_path, image)?;
        if let Err(e) = images.put(thumb_key, thumb) {
            let _ = images.delete(&new.file_path);
            return Err(e.into());
        }
        match store.add_portrait(new, true) {
            Ok(record) => Ok((record, previous)),
            Err(e) => {
                for key in [new.file_path.as_str(), thumb_key] {
                    if let Err(del) = images.delete(key) {
                        tracing::warn!(key, error = %del, "could not remove an unrecorded portrait file");
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Runs `f` holding the character's write lock; the lock entry is dropped once unused.
    fn with_character_lock<T>(&self, character_id: &str, f: impl FnOnce() -> T) -> T {
        let lock = {
            let mut map = self.inner.writing.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(character_id.to_string()).or_default().clone()
        };
        let out = {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            f()
        };
        let mut map = self.inner.writing.lock().unwrap_or_else(|e| e.into_inner());
        drop(lock);
        // Clones are only taken under the map lock, so a count of 1 (the map's) means unused.
        if map
            .get(character_id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(character_id);
        }
        out
    }

    /// The bytes of a stored image (a portrait or a thumbnail), for media serving.
    pub fn image_bytes(&self, key: &str) -> Result<Vec<u8>, PortraitError> {
        Ok(self.inner.images.get(key)?)
    }

    /// Deletes the files of a deleted character (the paths `CharacterStore::delete_character`
    /// returned). Paths that are not image-store keys (e.g. legacy absolute paths) are left
    /// alone; every file is attempted and the first failure is reported.
    pub fn delete_character_files(&self, paths: &[String]) -> Result<(), PortraitError> {
        let mut first = None;
        for p in paths {
            match self.inner.images.delete(p) {
                Ok(()) => {}
                Err(ImageStoreError::InvalidKey { .. }) => {
                    tracing::warn!(path = p.as_str(), "not an image store key; file left alone");
                }
                Err(e) => {
                    first.get_or_insert(PortraitError::from(e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

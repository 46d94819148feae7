//! The seam between portraits and the engine: [`ImageBackend`], implemented by the real
//! [`Engine`] and by [`FakeBackend`], a fast deterministic painter for tests of everything
//! above the engine (HTTP, jobs, history) that behaves like the engine where it matters: one
//! progress call per denoising step, cancellation checked every step, the same output sizes,
//! encoding and infotext.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};

use crate::engine::{
    find_network, match_vae_name, CancelToken, Defaults, EmbeddingInfo, Engine, EngineError,
    EngineState, GeneratedImage, GenerationResult, ModelHash, NetworkFile, Progress, Timings,
    VaeChoice, ValidRequest,
};

/// Something that paints validated requests.
pub trait ImageBackend: Send + Sync + 'static {
    /// Blocking; runs on a job thread. `progress` is called once per denoising step.
    fn generate(
        &self,
        request: ValidRequest,
        progress: Box<dyn FnMut(Progress) + Send>,
        cancel: &CancelToken,
    ) -> Result<GenerationResult, EngineError>;
    /// The defaults of `model` (or of the default model).
    fn defaults(&self, model: Option<&str>) -> Result<Defaults, EngineError>;
    fn state(&self) -> EngineState;
    fn model_names(&self) -> Vec<String>;
    fn default_model(&self) -> String;
    /// The hash of `model`'s weight file (A1111's `sha256` / `shorthash`) if it is known
    /// already; never waits for one to be computed.
    fn model_hash(&self, model: &str) -> Option<ModelHash>;
    /// The VAE files requests may name (A1111's `sd_vae`), by file name.
    fn vae_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// The LoRA files requests may name (`MODELS_DIR/loras/`), as of now.
    fn loras(&self) -> Vec<NetworkFile> {
        Vec::new()
    }
    /// The embedding files prompts may use (`MODELS_DIR/embeddings/`), as of now.
    fn embeddings(&self) -> Vec<EmbeddingInfo> {
        Vec::new()
    }
}

impl ImageBackend for Engine {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Box<dyn FnMut(Progress) + Send>,
        cancel: &CancelToken,
    ) -> Result<GenerationResult, EngineError> {
        Engine::generate(self, request, progress, cancel.clone())
    }

    fn defaults(&self, model: Option<&str>) -> Result<Defaults, EngineError> {
        Engine::defaults(self, model)
    }

    fn state(&self) -> EngineState {
        Engine::state(self)
    }

    fn model_names(&self) -> Vec<String> {
        self.models().iter().map(|m| m.name.clone()).collect()
    }

    fn default_model(&self) -> String {
        Engine::default_model(self).to_string()
    }

    fn model_hash(&self, model: &str) -> Option<ModelHash> {
        Engine::model_hash(self, model)
    }

    fn vae_names(&self) -> Vec<String> {
        Engine::vae_names(self)
    }

    fn loras(&self) -> Vec<NetworkFile> {
        Engine::loras(self)
    }

    fn embeddings(&self) -> Vec<EmbeddingInfo> {
        Engine::embeddings(self)
    }
}

/// The backend of a server started without any model: it knows no model and answers every
/// generation with `EngineError::Unavailable(hint)`, so requests still validate and the
/// reply says how to get a model.
pub struct NoModelBackend {
    hint: String,
}

impl NoModelBackend {
    pub fn new(hint: impl Into<String>) -> Self {
        Self { hint: hint.into() }
    }
}

impl ImageBackend for NoModelBackend {
    fn generate(
        &self,
        _request: ValidRequest,
        _progress: Box<dyn FnMut(Progress) + Send>,
        _cancel: &CancelToken,
    ) -> Result<GenerationResult, EngineError> {
        Err(EngineError::Unavailable(self.hint.clone()))
    }

    fn defaults(&self, _model: Option<&str>) -> Result<Defaults, EngineError> {
        Err(EngineError::Unavailable(self.hint.clone()))
    }

    fn state(&self) -> EngineState {
        EngineState::NoModel(self.hint.clone())
    }

    fn model_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn default_model(&self) -> String {
        String::new()
    }

    fn model_hash(&self, _model: &str) -> Option<ModelHash> {
        None
    }
}

/// A fake engine: paints a deterministic pattern (from the seed, the prompt and, for img2img,
/// the init image) at the size the real engine would produce. Counts its calls and remembers the
/// last request so tests can check what was asked.
pub struct FakeBackend {
    models: Vec<(String, Defaults)>,
    /// Model name -> hash, for the models given one.
    hashes: Vec<(String, ModelHash)>,
    default_model: String,
    /// The VAE file names it accepts, as the engine's `MODELS_DIR/vae/` listing.
    vaes: Vec<String>,
    /// The LoRA and embedding files it accepts, as the engine's folders would list them.
    loras: Vec<NetworkFile>,
    embeddings: Vec<EmbeddingInfo>,
    step_delay: Duration,
    failure: Mutex<Option<String>>,
    state: Mutex<EngineState>,
    calls: AtomicUsize,
    completed: AtomicUsize,
    last: Mutex<Option<ValidRequest>>,
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeBackend {
    /// One model, `fake-model`, with the regeneration guide's defaults; ready; no delay.
    pub fn new() -> Self {
        Self {
            models: vec![("fake-model".into(), Defaults::default())],
            hashes: Vec::new(),
            default_model: "fake-model".into(),
            vaes: Vec::new(),
            loras: Vec::new(),
            embeddings: Vec::new(),
            step_delay: Duration::ZERO,
            failure: Mutex::new(None),
            state: Mutex::new(EngineState::Ready),
            calls: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            last: Mutex::new(None),
        }
    }

    /// Sleeps this long in every denoising step (to test queues, progress and cancellation).
    pub fn with_step_delay(mut self, delay: Duration) -> Self {
        self.step_delay = delay;
        self
    }

    /// Every generation fails with `EngineError::Model(message)`.
    pub fn with_failure(self, message: impl Into<String>) -> Self {
        self.set_failure(Some(message.into()));
        self
    }

    /// Replaces the defaults of every model known so far.
    pub fn with_defaults(mut self, defaults: Defaults) -> Self {
        for (_, d) in &mut self.models {
            *d = defaults.clone();
        }
        self
    }

    /// Adds (or replaces) a model.
    pub fn with_model(mut self, name: &str, defaults: Defaults) -> Self {
        self.models.retain(|(n, _)| n != name);
        self.models.push((name.to_string(), defaults));
        self
    }

    /// Gives `name` a weight-file hash (full lowercase hex), as the engine knows one once the
    /// file is hashed.
    pub fn with_model_hash(mut self, name: &str, sha256: &str) -> Self {
        self.hashes.retain(|(n, _)| n != name);
        self.hashes.push((
            name.to_string(),
            ModelHash {
                sha256: sha256.to_ascii_lowercase(),
            },
        ));
        self
    }

    /// Accepts the VAE file `name` (`x.safetensors`), as if it were in `MODELS_DIR/vae/`.
    pub fn with_vae(mut self, name: &str) -> Self {
        self.vaes.push(name.to_string());
        self
    }

    /// Accepts the LoRA `name`, as if `MODELS_DIR/loras/name.safetensors` existed.
    pub fn with_lora(mut self, name: &str) -> Self {
        self.loras.push(NetworkFile {
            name: name.to_string(),
            path: format!("loras/{name}.safetensors").into(),
        });
        self
    }

    /// Accepts the embedding `name` (one 768-wide vector, an SD 1.x text encoder's), as if
    /// `MODELS_DIR/embeddings/name.safetensors` existed.
    pub fn with_embedding(mut self, name: &str) -> Self {
        self.embeddings.push(EmbeddingInfo {
            name: name.to_string(),
            path: format!("embeddings/{name}.safetensors").into(),
            vectors: 1,
            shape: vec![1, 768],
            dim: 768,
            fits: true,
            error: None,
        });
        self
    }

    /// Like the engine: a LoRA or embedding the request names that no file provides is
    /// refused before painting, naming it.
    fn check_networks(&self, request: &ValidRequest) -> Result<(), EngineError> {
        for l in request.loras() {
            if find_network(&self.loras, &l.name).is_none() {
                return Err(EngineError::invalid(
                    "loras",
                    format!(
                        "unknown LoRA {:?} (not in the models folder's loras/)",
                        l.name
                    ),
                ));
            }
        }
        let embeddings: Vec<NetworkFile> = self
            .embeddings
            .iter()
            .map(|e| NetworkFile {
                name: e.name.clone(),
                path: e.path.clone(),
            })
            .collect();
        for e in request.embeddings() {
            if find_network(&embeddings, e).is_none() {
                return Err(EngineError::invalid(
                    "embeddings",
                    format!("unknown embedding {e:?} (not in the models folder's embeddings/)"),
                ));
            }
        }
        Ok(())
    }

    /// Makes `name` (added with [`FakeBackend::with_model`] if unknown) the default model.
    pub fn with_default_model(mut self, name: &str) -> Self {
        if !self.models.iter().any(|(n, _)| n == name) {
            self.models.push((name.to_string(), Defaults::default()));
        }
        self.default_model = name.to_string();
        self
    }

    /// Turns failing on (`Some(message)`) or off at run time.
    pub fn set_failure(&self, message: Option<String>) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = message;
    }

    /// What `state()` reports from now on.
    pub fn set_state(&self, state: EngineState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// How many generations were started.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// How many generations finished with an image.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }

    /// The most recent request received.
    pub fn last_request(&self) -> Option<ValidRequest> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn model_defaults(&self, name: &str) -> Result<&Defaults, EngineError> {
        self.models
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .ok_or_else(|| EngineError::UnknownModel(name.to_string()))
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser: cheap and well spread.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Blocks of colour from `key` over a gradient; blended with `init` by `strength` for img2img.
fn paint(key: u64, w: u32, h: u32, init: Option<(&RgbImage, f64)>) -> RgbImage {
    let init = init.map(|(img, s)| {
        let img = if img.dimensions() == (w, h) {
            img.clone()
        } else {
            image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle)
        };
        (img, s)
    });
    RgbImage::from_fn(w, h, |x, y| {
        let block = mix(key ^ ((u64::from(x / 8) << 32) | u64::from(y / 8)));
        let pattern = [
            ((x * 255 / w.max(1)) as u8).wrapping_add(block as u8 / 4),
            ((y * 255 / h.max(1)) as u8).wrapping_add((block >> 8) as u8 / 4),
            (block >> 16) as u8,
        ];
        match &init {
            None => Rgb(pattern),
            Some((img, s)) => {
                let base = img.get_pixel(x, y).0;
                Rgb(std::array::from_fn(|i| {
                    (f64::from(base[i]) * (1.0 - s) + f64::from(pattern[i]) * s).round() as u8
                }))
            }
        }
    })
}

impl ImageBackend for FakeBackend {
    fn generate(
        &self,
        request: ValidRequest,
        mut progress: Box<dyn FnMut(Progress) + Send>,
        cancel: &CancelToken,
    ) -> Result<GenerationResult, EngineError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(request.clone());
        let started = Instant::now();
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let model = request
            .model()
            .map_or_else(|| self.default_model.clone(), str::to_string);
        self.model_defaults(&model)?;
        // Like the engine: a VAE name it does not list is refused before painting.
        if let VaeChoice::Named(name) = request.vae() {
            if match_vae_name(self.vaes.iter().map(String::as_str), name).is_none() {
                return Err(EngineError::invalid("vae", format!("unknown VAE {name:?}")));
            }
        }
        self.check_networks(&request)?;
        if let Some(why) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(EngineError::Model(why));
        }
        let total = request.expected_steps()?;
        let (w, h) = request.output_size()?;
        let (w, h) = (w as u32, h as u32);
        for step in 1..=total {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            let mut p = Progress::new(step, total, started.elapsed());
            // Like the engine: a latent-sized (1/8) preview every n steps when asked.
            if request.preview_every().is_some_and(|n| step % n == 0) {
                p.preview = Some(RgbImage::from_pixel(
                    (w / 8).max(1),
                    (h / 8).max(1),
                    Rgb([step as u8, 64, 128]),
                ));
            }
            progress(p);
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            request.prompt(),
            request.negative_prompt(),
            request.steps(),
            &model,
        )
            .hash(&mut hasher);
        let prompt_key = hasher.finish();
        let images = request
            .seeds()
            .iter()
            .map(|&seed| {
                let init = request.init_image().zip(request.denoising_strength());
                let pixels = paint(mix(prompt_key ^ mix(seed)), w, h, init);
                let hash = self.model_hash(&model);
                let short = hash.as_ref().map(ModelHash::short);
                GeneratedImage::encode(pixels, &request, seed, &model, short)
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        self.completed.fetch_add(1, Ordering::SeqCst);
        let total_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(GenerationResult {
            images,
            model,
            sampler: request.sampler_name(),
            timings: Timings {
                unet_steps: total,
                total_ms,
                ..Timings::default()
            },
        })
    }

    fn defaults(&self, model: Option<&str>) -> Result<Defaults, EngineError> {
        self.model_defaults(model.unwrap_or(&self.default_model))
            .cloned()
    }

    fn state(&self) -> EngineState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|(n, _)| n.clone()).collect()
    }

    fn default_model(&self) -> String {
        self.default_model.clone()
    }

    fn model_hash(&self, model: &str) -> Option<ModelHash> {
        self.hashes
            .iter()
            .find(|(n, _)| n == model)
            .map(|(_, h)| h.clone())
    }

    fn vae_names(&self) -> Vec<String> {
        self.vaes.clone()
    }

    fn loras(&self) -> Vec<NetworkFile> {
        self.loras.clone()
    }

    fn embeddings(&self) -> Vec<EmbeddingInfo> {
        self.embeddings.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{decode_image, read_parameters, GenerationRequest, HiresRequest};
    use std::sync::Arc;

    fn small() -> Defaults {
        Defaults {
            steps: 6,
            width: 64,
            height: 96,
            ..Defaults::default()
        }
    }

    fn req(seed: i64) -> GenerationRequest {
        GenerationRequest {
            prompt: "a dwarf".into(),
            seed: Some(seed),
            ..Default::default()
        }
    }

    fn run(b: &FakeBackend, r: GenerationRequest) -> (GenerationResult, Vec<Progress>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let out = b
            .generate(
                r.validate(&small()).unwrap(),
                Box::new(move |p| s.lock().unwrap().push(p)),
                &CancelToken::new(),
            )
            .unwrap();
        let p = seen.lock().unwrap().clone();
        (out, p)
    }

    #[test]
    fn deterministic_sized_and_tagged() {
        let b = FakeBackend::new().with_defaults(small());
        let (a, steps) = run(&b, req(7));
        let (again, _) = run(&b, req(7));
        let (other, _) = run(&b, req(8));
        assert_eq!(a.images[0].bytes, again.images[0].bytes);
        assert_ne!(a.images[0].bytes, other.images[0].bytes);
        assert_eq!(
            steps.iter().map(|p| p.step).collect::<Vec<_>>(),
            (1..=6).collect::<Vec<_>>()
        );
        assert!(steps.iter().all(|p| p.total == 6));
        let img = decode_image(&a.images[0].bytes).unwrap();
        assert_eq!(img.dimensions(), (64, 96));
        let info = read_parameters(&a.images[0].bytes).unwrap();
        assert!(info.starts_with("a dwarf\n"), "{info}");
        assert!(info.contains("Seed: 7"), "{info}");
        assert_eq!(b.calls(), 3);
        assert_eq!(b.completed(), 3);
    }

    #[test]
    fn hires_scales_and_adds_second_pass_steps() {
        let b = FakeBackend::new().with_defaults(small());
        let r = GenerationRequest {
            hires: Some(HiresRequest {
                scale: 2.0,
                denoising_strength: 0.5,
                ..Default::default()
            }),
            ..req(1)
        };
        let (out, steps) = run(&b, r);
        assert_eq!((out.images[0].width, out.images[0].height), (128, 192));
        // 6 first-pass steps + floor(6 * 0.5) second-pass steps.
        assert_eq!(steps.len(), 9);
    }

    #[test]
    fn cancel_and_failure() {
        let b = FakeBackend::new()
            .with_defaults(small())
            .with_step_delay(Duration::from_millis(1));
        let cancel = CancelToken::new();
        let c = cancel.clone();
        let steps = Arc::new(AtomicUsize::new(0));
        let s = steps.clone();
        let r = b.generate(
            req(1).validate(&small()).unwrap(),
            Box::new(move |p| {
                s.store(p.step, Ordering::SeqCst);
                if p.step == 2 {
                    c.cancel();
                }
            }),
            &cancel,
        );
        assert!(matches!(r, Err(EngineError::Cancelled)));
        assert_eq!(steps.load(Ordering::SeqCst), 2);
        b.set_failure(Some("boom".into()));
        let r = b.generate(
            req(1).validate(&small()).unwrap(),
            Box::new(|_| {}),
            &CancelToken::new(),
        );
        assert!(matches!(r, Err(EngineError::Model(m)) if m == "boom"));
        assert_eq!(b.completed(), 0);
        assert!(matches!(
            b.defaults(Some("nope")),
            Err(EngineError::UnknownModel(_))
        ));
    }
}

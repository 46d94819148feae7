//! The engine thread: one OS thread owns the device and the loaded models and serves typed
//! requests from a channel. Everyone else holds a cheap, cloneable [`Engine`]; nothing
//! outside this thread ever touches a tensor.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use candle_core::Device;

use super::device::{parse_dtype, select_device};
use super::embeddings::{list_embeddings, EmbeddingInfo, EmbeddingLibrary};
use super::error::{EngineError, Result};
use super::generate::generate_with_loras;
use super::loading::model::{
    default_vae_tile, hashed_file, LoadOptions, ModelSource, StableDiffusion,
};
use super::loading::model_hash::{HashCache, ModelHash};
use super::pipeline::{CancelToken, Progress};
use super::request::{Defaults, GenerationResult, ValidRequest};
use super::samplers::ScheduleOverride;
use super::taesd::{Decoder, TaesdPaths};
use super::vae::{find_vae, VaeChoice, VaeFile};

/// A model the engine may load, by name.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub source: ModelSource,
    pub defaults: Defaults,
    /// Schedule settings over the model's own (e.g. v-prediction for an SD 2.x single file).
    pub schedule: ScheduleOverride,
    /// The VAE file this model decodes with unless a request picks another (`weights.toml`
    /// `vae`, `--vae`); None = the checkpoint's own.
    pub vae: Option<PathBuf>,
}

/// How the engine starts.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub models: Vec<ModelSpec>,
    /// Loaded at start and used when a request names no model.
    pub default_model: String,
    /// "auto", "cpu", "cuda", "cuda:N", "metal".
    pub device: String,
    /// "auto", "f32", "f16", "bf16".
    pub dtype: String,
    pub use_flash_attn: bool,
    /// Refuse jobs whose estimated peak memory is over this many bytes (None = no limit).
    pub max_memory: Option<u64>,
    /// How many models stay loaded at once; the least recently used is dropped first. A
    /// model loaded with two VAEs counts twice.
    pub max_loaded: usize,
    /// The VAE files requests may name (A1111's `sd_vae`): `MODELS_DIR/vae/*.safetensors`.
    pub vaes: Vec<VaeFile>,
    /// Where LoRA files live (`MODELS_DIR/loras/`, rescanned by `refresh-loras`); None = none.
    pub loras_dir: Option<PathBuf>,
    /// Where textual-inversion embeddings live (`MODELS_DIR/embeddings/`); None = none.
    pub embeddings_dir: Option<PathBuf>,
    /// Each family's TAESD (`MODELS_DIR/taesd/`, `MODELS_DIR/taesdxl/`): previews, and the
    /// final decode of `decoder: taesd` requests.
    pub taesd: TaesdPaths,
    /// What decodes a request that names no decoder (`limner serve --decoder`).
    pub decoder: Decoder,
}

impl EngineConfig {
    /// One model on the CPU in f32, kept loaded, no memory limit: the engine of the tests and
    /// benches; the CLI starts from it with its own device flags.
    pub fn cpu(model: ModelSpec) -> Self {
        EngineConfig {
            default_model: model.name.clone(),
            models: vec![model],
            device: "cpu".into(),
            dtype: "f32".into(),
            use_flash_attn: false,
            max_memory: None,
            max_loaded: 1,
            vaes: Vec::new(),
            loras_dir: None,
            embeddings_dir: None,
            taesd: TaesdPaths::default(),
            decoder: Decoder::Vae,
        }
    }
}

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineState {
    Loading,
    Ready,
    Failed(String),
    /// The server runs without any model (none pulled yet); the text says how to get one.
    NoModel(String),
}

type Reply = Box<dyn FnOnce(Result<GenerationResult>) + Send>;
type ProgressFn = Box<dyn FnMut(Progress) + Send>;

enum Command {
    Generate {
        request: Box<ValidRequest>,
        progress: ProgressFn,
        cancel: CancelToken,
        reply: Reply,
        /// The caller's span and subscriber, entered while the request runs so engine log
        /// lines name its job and go where the caller's do.
        span: tracing::Span,
        dispatch: tracing::Dispatch,
    },
}

/// A cheap handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    state: Arc<(Mutex<EngineState>, Condvar)>,
    models: Arc<Vec<ModelSpec>>,
    default_model: String,
    hashes: Arc<HashCache>,
    vaes: Arc<Vec<VaeFile>>,
    loras_dir: Option<PathBuf>,
    embeddings_dir: Option<PathBuf>,
    /// The text encoders' widths of each model loaded so far (what embeddings must fit).
    text_widths: TextWidths,
}

/// Model name -> its text encoders' widths, filled in by the engine thread as models load.
type TextWidths = Arc<Mutex<HashMap<String, Vec<usize>>>>;

impl Engine {
    /// Starts the engine thread; it selects the device and loads the default model in the
    /// background. Use [`Engine::wait_ready`] to block until that is done. Model hashes
    /// are kept in memory only; see [`Engine::spawn_with_hashes`].
    pub fn spawn(config: EngineConfig) -> Result<Self> {
        Self::spawn_with_hashes(config, Arc::new(HashCache::in_memory()))
    }

    /// [`Engine::spawn`] with a model hash cache (the data directory's): every served
    /// model not in it yet is hashed on a background thread.
    pub fn spawn_with_hashes(config: EngineConfig, hashes: Arc<HashCache>) -> Result<Self> {
        if !config.models.iter().any(|m| m.name == config.default_model) {
            return Err(EngineError::UnknownModel(config.default_model));
        }
        let (tx, rx) = mpsc::channel();
        let state = Arc::new((Mutex::new(EngineState::Loading), Condvar::new()));
        let handle = Self {
            tx,
            state: state.clone(),
            models: Arc::new(config.models.clone()),
            default_model: config.default_model.clone(),
            hashes: hashes.clone(),
            vaes: Arc::new(config.vaes.clone()),
            loras_dir: config.loras_dir.clone(),
            embeddings_dir: config.embeddings_dir.clone(),
            text_widths: TextWidths::default(),
        };
        let widths = handle.text_widths.clone();
        thread::Builder::new()
            .name("limner-engine".into())
            .spawn(move || engine_main(config, rx, state, hashes, widths))
            .map_err(EngineError::Io)?;
        for spec in handle.models.iter() {
            handle.model_hash(&spec.name);
        }
        Ok(handle)
    }

    pub fn state(&self) -> EngineState {
        self.state
            .0
            .lock()
            .map(|s| s.clone())
            .unwrap_or(EngineState::Failed("poisoned".into()))
    }

    /// Blocks until the default model is loaded (Ok) or failed to load (the reason).
    pub fn wait_ready(&self) -> Result<()> {
        let (lock, cv) = &*self.state;
        let mut s = lock
            .lock()
            .map_err(|_| EngineError::Unavailable("poisoned".into()))?;
        while *s == EngineState::Loading {
            s = cv
                .wait(s)
                .map_err(|_| EngineError::Unavailable("poisoned".into()))?;
        }
        match &*s {
            EngineState::Failed(why) => Err(EngineError::Unavailable(why.clone())),
            _ => Ok(()),
        }
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// The hash of a served model's weight file if it is known; never waits for one (a file
    /// not hashed yet, or changed since, is queued for the background hasher).
    pub fn model_hash(&self, name: &str) -> Option<ModelHash> {
        let spec = self.models.iter().find(|m| m.name == name)?;
        self.hashes.cached_or_schedule(&hashed_file(&spec.source)?)
    }

    /// The files of the embeddings folder, each with its shape and whether it fits the default
    /// model's text encoders (read from the files' headers on the caller's thread; nothing fits
    /// before the default model has loaded).
    pub fn embeddings(&self) -> Vec<EmbeddingInfo> {
        let widths = self
            .text_widths
            .lock()
            .ok()
            .and_then(|w| w.get(&self.default_model).cloned());
        list_embeddings(self.embeddings_dir.as_deref(), widths.as_deref())
    }

    /// The VAE files requests may name, by file name.
    pub fn vae_names(&self) -> Vec<String> {
        self.vaes.iter().map(|v| v.name.clone()).collect()
    }

    /// The LoRA files of the LoRA folder, scanned on every call so that files added since
    /// start-up are listed (and `refresh-loras` has nothing to rebuild).
    pub fn loras(&self) -> Vec<super::NetworkFile> {
        self.loras_dir
            .as_deref()
            .map(super::scan_network_dir)
            .unwrap_or_default()
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// The defaults of the named model (or the default model).
    pub fn defaults(&self, model: Option<&str>) -> Result<Defaults> {
        let name = model.unwrap_or(&self.default_model);
        self.models
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.defaults.clone())
            .ok_or_else(|| EngineError::UnknownModel(name.to_string()))
    }

    /// Queues a request; `reply` is called on the engine thread with the result. The request
    /// runs inside the caller's current tracing span.
    pub fn submit(
        &self,
        request: ValidRequest,
        progress: impl FnMut(Progress) + Send + 'static,
        cancel: CancelToken,
        reply: impl FnOnce(Result<GenerationResult>) + Send + 'static,
    ) -> Result<()> {
        self.tx
            .send(Command::Generate {
                request: Box::new(request),
                progress: Box::new(progress),
                cancel,
                reply: Box::new(reply),
                span: tracing::Span::current(),
                dispatch: tracing::dispatcher::get_default(Clone::clone),
            })
            .map_err(|_| EngineError::Unavailable("the engine thread has stopped".into()))
    }

    /// Runs a request and waits for its result.
    pub fn generate(
        &self,
        request: ValidRequest,
        progress: impl FnMut(Progress) + Send + 'static,
        cancel: CancelToken,
    ) -> Result<GenerationResult> {
        let (tx, rx) = mpsc::channel();
        self.submit(request, progress, cancel, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv()
            .map_err(|_| EngineError::Unavailable("the engine thread dropped the request".into()))?
    }
}

fn set_state(state: &(Mutex<EngineState>, Condvar), new: EngineState) {
    if let Ok(mut s) = state.0.lock() {
        *s = new;
    }
    state.1.notify_all();
}

/// Loaded models, least recently used first, keyed by model name and VAE file (switching a
/// model's VAE loads it again with that VAE).
struct Loaded {
    models: Vec<(LoadedKey, StableDiffusion)>,
    max: usize,
    hashes: Arc<HashCache>,
    widths: TextWidths,
}

type LoadedKey = (String, Option<PathBuf>);

impl Loaded {
    fn get(
        &mut self,
        spec: &ModelSpec,
        vae: Option<PathBuf>,
        opts: &LoadOptions,
    ) -> Result<&mut StableDiffusion> {
        let key = (spec.name.clone(), vae);
        if let Some(i) = self.models.iter().position(|(k, _)| *k == key) {
            let entry = self.models.remove(i);
            self.models.push(entry);
        } else {
            while self.models.len() >= self.max.max(1) {
                let ((name, _), _) = self.models.remove(0);
                tracing::info!(model = name, "unloading least recently used model");
            }
            let model = load_with_vae(spec, key.1.clone(), opts, &self.hashes)?;
            if let Ok(mut w) = self.widths.lock() {
                w.insert(spec.name.clone(), model.text_widths());
            }
            self.models.push((key, model));
        }
        let last = self.models.len() - 1;
        Ok(&mut self.models[last].1)
    }
}

/// The VAE file `choice` means for `spec`: its configured one, the checkpoint's own (None), or
/// a served VAE file by name (an unknown name is a `vae` input error).
pub(crate) fn chosen_vae(
    spec: &ModelSpec,
    choice: &VaeChoice,
    vaes: &[VaeFile],
) -> Result<Option<PathBuf>> {
    match choice {
        VaeChoice::Automatic => Ok(spec.vae.clone()),
        VaeChoice::Baked => Ok(None),
        VaeChoice::Named(name) => match find_vae(vaes, name) {
            Some(v) => Ok(Some(v.path.clone())),
            None => {
                let known: Vec<&str> = vaes.iter().map(|v| v.name.as_str()).collect();
                Err(EngineError::invalid(
                    "vae",
                    format!(
                        "unknown VAE {name:?}; use Automatic, None or one of: {}",
                        if known.is_empty() {
                            "(no VAE files in the models folder's vae/)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ))
            }
        },
    }
}

/// Loads one model of the configuration with `opts` (its prediction type and VAE from the
/// spec).
pub(crate) fn load_spec(
    spec: &ModelSpec,
    opts: &LoadOptions,
    hashes: &HashCache,
) -> Result<StableDiffusion> {
    load_with_vae(spec, spec.vae.clone(), opts, hashes)
}

/// [`load_spec`] with the VAE file `vae` (None = the checkpoint's own).
fn load_with_vae(
    spec: &ModelSpec,
    vae: Option<PathBuf>,
    opts: &LoadOptions,
    hashes: &HashCache,
) -> Result<StableDiffusion> {
    let mut opts = opts.clone();
    opts.schedule = spec.schedule.clone();
    opts.vae = vae;
    StableDiffusion::load_with_hashes(&spec.name, &spec.source, &opts, hashes)
}

fn engine_main(
    config: EngineConfig,
    rx: mpsc::Receiver<Command>,
    state: Arc<(Mutex<EngineState>, Condvar)>,
    hashes: Arc<HashCache>,
    widths: TextWidths,
) {
    let opts = match LoadOptions::from_config(&config) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "engine failed to start");
            set_state(&state, EngineState::Failed(e.to_string()));
            // Keep answering so callers get the reason instead of a hang.
            for Command::Generate { reply, .. } in rx {
                reply(Err(EngineError::Unavailable(e.to_string())));
            }
            return;
        }
    };
    let specs: HashMap<String, ModelSpec> = config
        .models
        .iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    let mut loaded = Loaded {
        models: Vec::new(),
        max: config.max_loaded,
        hashes,
        widths,
    };
    let embeddings = EmbeddingLibrary::new(config.embeddings_dir.clone());
    let first = catch_unwind(AssertUnwindSafe(|| {
        let spec = &specs[&config.default_model];
        loaded.get(spec, spec.vae.clone(), &opts).map(|_| ())
    }));
    match first {
        Ok(Ok(())) => set_state(&state, EngineState::Ready),
        Ok(Err(e)) => set_state(&state, EngineState::Failed(e.to_string())),
        Err(_) => set_state(
            &state,
            EngineState::Failed("panic while loading the model".into()),
        ),
    }
    for command in rx {
        let Command::Generate {
            request,
            mut progress,
            cancel,
            reply,
            span,
            dispatch,
        } = command;
        tracing::dispatcher::with_default(&dispatch, || {
            let _entered = span.enter();
            if cancel.is_cancelled() {
                reply(Err(EngineError::Cancelled));
                return;
            }
            let result = serve_one(
                &config,
                &mut loaded,
                &opts,
                &embeddings,
                &request,
                &mut *progress,
                &cancel,
            );
            reply(result);
        });
    }
}

/// Runs one request on the engine thread; a panic becomes an error and the thread lives on.
fn serve_one(
    config: &EngineConfig,
    loaded: &mut Loaded,
    opts: &LoadOptions,
    embeddings: &EmbeddingLibrary,
    request: &ValidRequest,
    progress: &mut dyn FnMut(Progress),
    cancel: &CancelToken,
) -> Result<GenerationResult> {
    let name = request
        .model
        .clone()
        .unwrap_or_else(|| config.default_model.clone());
    tracing::info!(
        model = name,
        width = request.job.width,
        height = request.job.height,
        steps = request.job.steps,
        batch = request.seeds.len(),
        "painting"
    );
    catch_unwind(AssertUnwindSafe(|| {
        let spec = config
            .models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| EngineError::UnknownModel(name.clone()))?;
        let vae = chosen_vae(spec, &request.vae, &config.vaes)?;
        let loras = crate::engine::lora::resolve(&request.loras, config.loras_dir.as_deref())?;
        let model = loaded.get(spec, vae, opts)?;
        let request = request.clone().with_default_decoder(config.decoder);
        let out = generate_with_loras(model, embeddings, &request, &loras, progress, cancel)?;
        tracing::info!(ms = out.timings.total_ms.round(), "painted");
        Ok(out)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        tracing::error!(
            panic = what,
            "generation panicked; the engine keeps running"
        );
        Err(EngineError::Model(format!("internal engine error: {what}")))
    })
}

impl LoadOptions {
    /// The one way from an engine configuration to load options: the engine thread and the
    /// CLI's [`super::LocalModel`] both load through it.
    pub(crate) fn from_config(config: &EngineConfig) -> Result<Self> {
        let device: Device = select_device(&config.device)?;
        let vae_tile = default_vae_tile(&device);
        let dtype = parse_dtype(&config.dtype, &device)?;
        Ok(LoadOptions {
            device,
            dtype,
            variant: None,
            use_flash_attn: config.use_flash_attn,
            vae_tile,
            max_memory: config.max_memory,
            schedule: ScheduleOverride::default(),
            // Per model: set from the spec (or the request) when each model is loaded.
            vae: None,
            taesd: config.taesd.clone(),
        })
    }
}

#[cfg(test)]
mod vae_tests {
    use super::*;

    #[test]
    fn a_request_picks_the_configured_the_baked_or_a_named_vae() {
        let spec = ModelSpec {
            name: "m".into(),
            source: ModelSource::Folder(PathBuf::from("m")),
            defaults: Defaults::default(),
            schedule: ScheduleOverride::default(),
            vae: Some(PathBuf::from("/models/vae/fix.safetensors")),
        };
        let vaes = vec![VaeFile {
            name: "mse.safetensors".into(),
            path: PathBuf::from("/models/vae/mse.safetensors"),
        }];
        assert_eq!(
            chosen_vae(&spec, &VaeChoice::Automatic, &vaes).unwrap(),
            spec.vae
        );
        assert_eq!(chosen_vae(&spec, &VaeChoice::Baked, &vaes).unwrap(), None);
        assert_eq!(
            chosen_vae(&spec, &VaeChoice::Named("MSE".into()), &vaes).unwrap(),
            Some(PathBuf::from("/models/vae/mse.safetensors"))
        );
        match chosen_vae(&spec, &VaeChoice::Named("gone".into()), &vaes) {
            Err(EngineError::InvalidInput { field, message }) => {
                assert_eq!(field, "vae");
                assert!(message.contains("mse.safetensors"), "{message}");
            }
            other => panic!("expected a vae input error, got {other:?}"),
        }
    }
}

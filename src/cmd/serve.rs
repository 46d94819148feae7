//! `limner serve`: one configuration (flags > environment > config file > defaults), the engine
//! thread, the store, the job queue and the router, bound to an address and shut down
//! gracefully on SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use limner::api::disk::DiskGuard;
use limner::api::{self, AppState, Inner};
use limner::auth::{is_loopback_bind, TokenStore, UrlSigner};
use limner::characters::{CharacterStore, SqliteStore};
use limner::engine::worker::{EngineConfig, EngineHandle, ModelSpec};
use limner::jobs::{JobQueue, QueueConfig, SqliteJobStore};
use limner::portraits::{
    device_defaults, DeviceClass, ImageBackend, LocalImageStore, NoModelBackend, PortraitService,
    StyleModels,
};
use limner::registry::Registry;

use super::locations::{load_registry, load_templates, Lookup};

/// Every server setting; `None` means "not given here" so sources can be layered.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to bind. Anything but loopback requires authentication.
    #[arg(long, env = "LIMNER_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "LIMNER_PORT")]
    pub port: Option<u16>,
    /// Where the database and images live (default: ./data in a checkout, else
    /// $XDG_DATA_HOME/limner or ~/.local/share/limner).
    #[arg(long, env = "LIMNER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The model used when a request names none (a weights.toml name or a path). Default: the
    /// first model of weights.toml that is downloaded, else the tiny test model.
    #[arg(long, env = "LIMNER_MODEL")]
    pub model: Option<String>,
    /// More models to serve by name (comma-separated); default: every downloaded one.
    #[arg(long, env = "LIMNER_MODELS", value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// The model registry (default: ./weights.toml, else DATA_DIR/weights.toml, else the
    /// built-in one).
    #[arg(long, env = "LIMNER_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Where pulled models live (default: ./models in a checkout, else DATA_DIR/models).
    #[arg(long, env = "LIMNER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Portrait templates, one TOML file per art style (default: ./prompts, else
    /// DATA_DIR/prompts, else the built-in ones).
    #[arg(long, env = "LIMNER_PROMPTS_DIR")]
    pub prompts_dir: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N, metal.
    #[arg(long, env = "LIMNER_DEVICE")]
    pub device: Option<String>,
    /// auto (f16 on GPU, f32 on CPU), f32, f16, bf16.
    #[arg(long, env = "LIMNER_DTYPE")]
    pub dtype: Option<String>,
    #[arg(long, env = "LIMNER_FLASH_ATTN", num_args = 0..=1, default_missing_value = "true")]
    pub flash_attn: Option<bool>,
    /// Jobs estimated to need more memory than this are refused with 422 too_large before
    /// they start: a size (12G, 800M), "auto" (90% of physical memory) or "none".
    #[arg(long, env = "LIMNER_MAX_MEMORY")]
    pub max_memory: Option<String>,
    /// Models kept loaded at once (least recently used is dropped).
    #[arg(long, env = "LIMNER_MAX_LOADED")]
    pub max_loaded: Option<usize>,
    /// Generations that may wait in the queue; more are refused with 429.
    #[arg(long, env = "LIMNER_QUEUE_DEPTH")]
    pub queue_depth: Option<usize>,
    /// Generations running at once per device.
    #[arg(long, env = "LIMNER_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// How long a finished job stays readable at /api/jobs/{id}: whole seconds or a number
    /// with s, m, h or d (default 24h).
    #[arg(long, env = "LIMNER_JOB_RETENTION")]
    pub job_retention: Option<String>,
    /// Seconds a synchronous generation waits before it is cancelled (504).
    #[arg(long, env = "LIMNER_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// Seconds a signed media URL stays valid.
    #[arg(long, env = "LIMNER_MEDIA_URL_TTL")]
    pub media_url_ttl: Option<u64>,
    /// Serve without authentication (only allowed on a loopback address).
    #[arg(long, env = "LIMNER_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub no_auth: Option<bool>,
    /// Writes are refused with 507 while the data directory's disk has less free space than
    /// this (a size such as 512M or 2G; default 0 = only a really full disk refuses them).
    #[arg(long, env = "LIMNER_MIN_FREE_SPACE")]
    pub min_free_space: Option<String>,
}

/// The layered, complete configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub model: Option<String>,
    pub models: Option<Vec<String>>,
    /// `None`: the built-in `weights.toml`.
    pub weights: Option<PathBuf>,
    pub models_dir: PathBuf,
    /// `None`: the built-in templates.
    pub prompts_dir: Option<PathBuf>,
    pub device: String,
    pub dtype: String,
    pub flash_attn: bool,
    pub max_memory: Option<String>,
    pub max_loaded: usize,
    pub queue_depth: usize,
    pub concurrency: usize,
    /// `--job-retention` as given (parsed, with its error, when the queue is built).
    pub job_retention: Option<String>,
    pub request_timeout: Duration,
    pub media_url_ttl: u64,
    pub no_auth: bool,
    pub min_free_space: Option<String>,
}

impl ServeConfig {
    /// Reads a TOML config file with the same keys as the flags (snake_case).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
    }

    /// `self` (flags and environment) over `file` over the defaults `lookup` finds.
    pub fn layer(self, file: ServeConfig, lookup: &Lookup) -> Settings {
        macro_rules! pick {
            ($f:ident, $default:expr) => {
                self.$f
                    .clone()
                    .or(file.$f.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        let data_dir = pick!(data_dir, lookup.data_dir());
        Settings {
            host: pick!(host, "127.0.0.1".into()),
            port: pick!(port, 8000),
            model: self.model.clone().or(file.model.clone()),
            models: self.models.clone().or(file.models.clone()),
            weights: self
                .weights
                .clone()
                .or(file.weights.clone())
                .or_else(|| lookup.weights(&data_dir)),
            models_dir: pick!(models_dir, lookup.models_dir(&data_dir)),
            prompts_dir: self
                .prompts_dir
                .clone()
                .or(file.prompts_dir.clone())
                .or_else(|| lookup.prompts_dir(&data_dir)),
            data_dir,
            device: pick!(device, "auto".into()),
            dtype: pick!(dtype, "auto".into()),
            flash_attn: pick!(flash_attn, false),
            max_memory: self.max_memory.clone().or(file.max_memory.clone()),
            max_loaded: pick!(max_loaded, 2),
            queue_depth: pick!(queue_depth, 8),
            concurrency: pick!(concurrency, 1),
            job_retention: self.job_retention.clone().or(file.job_retention.clone()),
            request_timeout: Duration::from_secs(pick!(request_timeout, 60)),
            media_url_ttl: pick!(media_url_ttl, 3600),
            no_auth: pick!(no_auth, false),
            min_free_space: self.min_free_space.clone().or(file.min_free_space.clone()),
        }
    }
}

/// Which models to serve: explicit names, else every model of weights.toml whose files are
/// here; the default model first. Returns (default name, specs), or `None` when no model was
/// named and none is pulled (the server then runs without one, see [`no_model_hint`]).
fn model_specs(
    s: &Settings,
    registry: &Registry,
) -> anyhow::Result<Option<(String, Vec<ModelSpec>)>> {
    let spec = |name: &str| -> anyhow::Result<ModelSpec> {
        let r = registry.resolve(name, &s.models_dir)?;
        Ok(ModelSpec {
            name: r.name.clone(),
            source: r.source(),
            defaults: r.defaults(),
            prediction_type: None,
        })
    };
    let mut specs: Vec<ModelSpec> = vec![];
    let wanted: Vec<String> = match &s.models {
        Some(list) => list.clone(),
        None => registry
            .names()
            .filter(|n| registry.resolve(n, &s.models_dir).is_ok())
            .map(str::to_string)
            .collect(),
    };
    for name in &wanted {
        match spec(name) {
            Ok(m) => specs.push(m),
            Err(e) if s.models.is_none() => tracing::debug!(model = name, error = %e, "skipped"),
            Err(e) => return Err(e),
        }
    }
    let default = match &s.model {
        Some(m) => {
            let m = spec(m)?;
            let name = m.name.clone();
            if !specs.iter().any(|x| x.name == name) {
                specs.insert(0, m);
            }
            name
        }
        None => {
            // Prefer a real model; the tiny test model paints noise.
            let real = specs
                .iter()
                .find(|m| m.name != "tiny-fixture")
                .or(specs.first());
            match real {
                Some(m) => m.name.clone(),
                None => return Ok(None),
            }
        }
    };
    if default == "tiny-fixture" {
        tracing::warn!("serving the tiny random-weight test model (images are noise); run `limner pull dreamshaper-8` for portraits");
    }
    Ok(Some((default, specs)))
}

/// What a server without any model says in `/health` and to every generation request.
fn no_model_hint(s: &Settings) -> String {
    format!(
        "no model is installed (looked in {}): run `limner pull sd-turbo` (quick on a CPU) or \
         `limner pull dreamshaper-8`, then restart `limner serve`; or pass --model PATH",
        s.models_dir.display()
    )
}

/// Everything `serve` builds before binding, also used by tests that start a real server.
pub struct Built {
    pub state: AppState,
    pub admin_token: Option<String>,
}

/// Builds the state: store, tokens, engine thread (loading in the background), queue, service.
pub fn build(s: &Settings) -> anyhow::Result<Built> {
    if s.no_auth && !is_loopback_bind(&s.host) {
        anyhow::bail!(
            "refusing to serve {} without authentication: --no-auth is only allowed on a loopback address (127.0.0.1, ::1)",
            s.host
        );
    }
    // A bad size is a start-up error before any model loads.
    min_free_bytes(s)?;
    std::fs::create_dir_all(&s.data_dir)?;
    let store = SqliteStore::open_in_data_dir(&s.data_dir)?;
    let db_path = store
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| s.data_dir.join(limner::characters::DB_FILE_NAME));
    let (tokens, admin_token) = if s.no_auth {
        (None, None)
    } else {
        let t = TokenStore::open(&db_path).map_err(|e| anyhow::anyhow!(e))?;
        let admin = t.ensure_admin().map_err(|e| anyhow::anyhow!(e))?;
        (Some(t), admin)
    };
    let signer = UrlSigner::load_or_create(&s.data_dir.join("secret.key"), s.media_url_ttl)?;
    let templates = load_templates(s.prompts_dir.as_deref())?;
    let registry = load_registry(s.weights.as_deref())?;
    let Some((default_model, mut specs)) = model_specs(s, &registry)? else {
        let hint = no_model_hint(s);
        tracing::warn!("{hint}");
        let backend: Arc<dyn ImageBackend> = Arc::new(NoModelBackend::new(hint));
        return finish_build(
            s,
            store,
            tokens,
            signer,
            templates,
            backend,
            StyleModels::new(),
        )
        .map(|state| Built { state, admin_token });
    };
    let served: Vec<String> = specs.iter().map(|m| m.name.clone()).collect();
    let mut styles = StyleModels::from_registry(&registry, &served);
    // Defaults that finish on this device: the regeneration guide's on a GPU, cheaper on a CPU.
    let device = DeviceClass::from_spec(&s.device);
    for spec in &mut specs {
        let entry_hires = registry.get(&spec.name).and_then(|e| e.defaults.hires_fix);
        let (defaults, hires) = device_defaults(spec.defaults.clone(), entry_hires, device);
        spec.defaults = defaults;
        styles = styles.with_hires_fix(&spec.name, hires);
    }
    let config = EngineConfig {
        models: specs,
        default_model,
        device: s.device.clone(),
        dtype: s.dtype.clone(),
        use_flash_attn: s.flash_attn,
        max_memory: limner::engine::memory::resolve_limit(
            s.max_memory.as_deref(),
            device == DeviceClass::Cpu,
        )
        .map_err(|e| anyhow::anyhow!(e))?,
        max_loaded: s.max_loaded,
    };
    // Model hashes (A1111's `[hash]` titles) are cached in the data dir, computed in the background.
    let hashes = Arc::new(limner::engine::loading::model_hash::HashCache::open(
        &s.data_dir,
    ));
    let engine = EngineHandle::spawn_with_hashes(config, hashes)?;
    let backend: Arc<dyn ImageBackend> = Arc::new(engine);
    let state = finish_build(s, store, tokens, signer, templates, backend, styles)?;
    Ok(Built { state, admin_token })
}

/// The part of [`build`] after the backend: media store, portrait service, queue, state.
fn finish_build(
    s: &Settings,
    store: SqliteStore,
    tokens: Option<TokenStore>,
    signer: UrlSigner,
    templates: limner::portraits::PortraitTemplates,
    backend: Arc<dyn ImageBackend>,
    styles: StyleModels,
) -> anyhow::Result<AppState> {
    let store: Arc<dyn CharacterStore> = Arc::new(store);
    let images = Arc::new(LocalImageStore::new(s.data_dir.join("media")));
    let portraits = PortraitService::new(store.clone(), images, backend.clone(), templates, styles);
    portraits
        .speed()
        .set_device(DeviceClass::from_spec(&s.device).as_str());
    let jobs = open_jobs(s)?;
    Ok(AppState::new(Inner {
        store,
        portraits,
        backend,
        jobs,
        tokens,
        signer,
        request_timeout: s.request_timeout,
    })
    .with_disk_guard(DiskGuard::with_reserve(&s.data_dir, min_free_bytes(s)?)))
}

/// The job queue over the job records in the data directory's database (the character store
/// opened it first and applied the migrations).
fn open_jobs(s: &Settings) -> anyhow::Result<JobQueue> {
    let retention = match s.job_retention.as_deref() {
        None => limner::jobs::DEFAULT_RETENTION,
        Some(text) => {
            limner::jobs::parse_duration(text).map_err(|e| anyhow::anyhow!("job_retention: {e}"))?
        }
    };
    let db = s.data_dir.join(limner::characters::DB_FILE_NAME);
    let store = SqliteJobStore::open(&db).map_err(|e| anyhow::anyhow!(e))?;
    let config = QueueConfig {
        max_queued: s.queue_depth,
        concurrency: s.concurrency,
        retention,
        ..Default::default()
    };
    Ok(JobQueue::open(config, Arc::new(store))?)
}

/// `--min-free-space` in bytes (0 when unset or off).
fn min_free_bytes(s: &Settings) -> anyhow::Result<u64> {
    Ok(match s.min_free_space.as_deref().map(str::trim) {
        None | Some("") | Some("none") | Some("off") => 0,
        Some(size) => limner::engine::memory::parse_size(size)
            .map_err(|e| anyhow::anyhow!("min_free_space: {e}"))?,
    })
}

/// Binds and serves until SIGTERM / Ctrl-C, then stops accepting, lets running jobs finish for
/// a grace period, cancels the rest and exits.
pub async fn serve(s: Settings) -> anyhow::Result<()> {
    let built = build(&s)?;
    let addr: SocketAddr = format!("{}:{}", s.host, s.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            format!("{}:{}", s.host, s.port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .map_err(|e| anyhow::anyhow!("bad bind address {}:{}: {e}", s.host, s.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {addr}: {e}"))?;
    let local = listener.local_addr()?;
    // One line scripts and tests can wait for.
    println!("limner listening on http://{local}");
    if let Some(token) = &built.admin_token {
        println!("admin token (shown once, keep it): {token}");
        println!("sign in: http://{local}/?token={token}");
    }
    let state = built.state.clone();
    let app = api::app(state.clone()).layer(api::trace::trace_layer());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down: no new jobs; waiting for running ones");
    state.jobs.shutdown(false);
    if tokio::time::timeout(Duration::from_secs(30), state.jobs.drained())
        .await
        .is_err()
    {
        state.jobs.shutdown(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), state.jobs.drained()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Arguments of `limner serve`: every setting can also come from the environment (LIMNER_*)
/// or a TOML config file with the same keys.
#[derive(clap::Args)]
pub struct Args {
    /// A TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "LIMNER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ServeConfig,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    let settings = args.settings.layer(file, &Lookup::from_env());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("limner-http")
        .build()?;
    runtime.block_on(serve(settings))
}

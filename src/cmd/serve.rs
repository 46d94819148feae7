//! `limner serve`: from one [`ServeConfig`] (flags > environment > config file > defaults, see
//! `config`), the engine thread, the store, the job queue and the router, bound to an address
//! and shut down gracefully on SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use limner::api::disk::DiskGuard;
use limner::api::{self, AppState, Inner};
use limner::auth::{TokenStore, UrlSigner};
use limner::characters::{CharacterStore, SqliteStore};
use limner::engine::{Engine, EngineConfig, ModelSpec};
use limner::jobs::{JobQueue, SqliteJobStore};
use limner::portraits::{
    device_defaults, DeviceClass, ImageBackend, LocalImageStore, NoModelBackend, PortraitService,
    StyleModels,
};
use limner::registry::Registry;

use super::locations::{load_registry, load_templates};

mod config;
#[cfg(test)]
mod config_tests;

pub use config::{Flags, ServeConfig};

/// Which models to serve: explicit names, else every model of weights.toml whose files are
/// here; the default model first. Returns (default name, specs), or `None` when no model was
/// named and none is pulled (the server then runs without one, see [`no_model_hint`]).
fn model_specs(
    s: &ServeConfig,
    registry: &Registry,
) -> anyhow::Result<Option<(String, Vec<ModelSpec>)>> {
    // --vae is checked once, up front: a typo stops the server instead of every model.
    let forced_vae = match &s.vae {
        Some(v) => Some(
            registry
                .resolve_vae(v, &s.models_dir)
                .map_err(|e| anyhow::anyhow!("--vae (vae, LIMNER_VAE): {e}"))?,
        ),
        None => None,
    };
    let spec = |name: &str| -> anyhow::Result<ModelSpec> {
        let r = registry.resolve(name, &s.models_dir)?;
        Ok(ModelSpec {
            name: r.name.clone(),
            source: r.source(),
            defaults: r.defaults(),
            schedule: r.schedule(),
            vae: forced_vae.clone().or(r.vae),
        })
    };
    let mut specs: Vec<ModelSpec> = vec![];
    let wanted: Vec<String> = match &s.models {
        Some(list) => list.clone(),
        None => registry.names().map(str::to_string).collect(),
    };
    for name in &wanted {
        match spec(name) {
            Ok(m) => specs.push(m),
            // Not named, so not pulled is fine: only the models that are here are served.
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
fn no_model_hint(s: &ServeConfig) -> String {
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
pub fn build(s: &ServeConfig) -> anyhow::Result<Built> {
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
    // Read once here; everything after borrows it.
    let registry = load_registry(s.weights.as_deref())?;
    let device = DeviceClass::from_spec(&s.device);
    let (backend, styles) = backend(s, &registry, device)?;
    let store: Arc<dyn CharacterStore> = Arc::new(store);
    let images = Arc::new(LocalImageStore::new(s.data_dir.join("media")));
    let portraits = PortraitService::new(store.clone(), images, backend.clone(), templates, styles);
    portraits.speed().set_device(device.as_str());
    // The job records live in the same database; the character store applied the migrations.
    let job_store = SqliteJobStore::open(&db_path).map_err(|e| anyhow::anyhow!(e))?;
    let jobs = JobQueue::open(s.queue.clone(), Arc::new(job_store))?;
    let state = AppState::new(Inner {
        store,
        portraits,
        backend,
        jobs,
        tokens,
        signer,
        request_timeout: s.request_timeout,
    })
    .with_disk_guard(DiskGuard::with_reserve(&s.data_dir, s.min_free_space))
    .with_preview_every(s.preview_every);
    Ok(Built { state, admin_token })
}

/// The engine thread on the served models with their per-device defaults, and the art style ->
/// model map; without any model, a backend that says how to get one.
fn backend(
    s: &ServeConfig,
    registry: &Registry,
    device: DeviceClass,
) -> anyhow::Result<(Arc<dyn ImageBackend>, StyleModels)> {
    let Some((default_model, mut specs)) = model_specs(s, registry)? else {
        let hint = no_model_hint(s);
        tracing::warn!("{hint}");
        return Ok((Arc::new(NoModelBackend::new(hint)), StyleModels::new()));
    };
    let served: Vec<String> = specs.iter().map(|m| m.name.clone()).collect();
    let mut styles = StyleModels::from_registry(registry, &served, s.style_architecture);
    // Defaults that finish on this device: the regeneration guide's on a GPU, cheaper on a CPU.
    for spec in &mut specs {
        let entry = registry.get(&spec.name);
        let entry_hires = entry.and_then(|e| e.defaults.hires_fix);
        let native = entry.map_or(0, |e| e.architecture.native_pixels());
        let (defaults, hires) = device_defaults(spec.defaults.clone(), entry_hires, device, native);
        spec.defaults = defaults;
        styles = styles.with_hires_fix(&spec.name, hires);
    }
    let config = EngineConfig {
        models: specs,
        default_model,
        device: s.device.clone(),
        dtype: s.dtype.clone(),
        use_flash_attn: s.flash_attn,
        max_memory: limner::engine::memory_limit(
            Some(s.max_memory.as_str()),
            device == DeviceClass::Cpu,
        )
        .map_err(|e| anyhow::anyhow!(e))?,
        max_loaded: s.max_loaded,
        vaes: limner::engine::scan_vae_dir(&s.models_dir.join(limner::engine::VAE_DIR)),
        loras_dir: Some(s.models_dir.join(limner::engine::LORA_DIR)),
        embeddings_dir: Some(s.models_dir.join(limner::engine::EMBEDDING_DIR)),
        taesd: limner::engine::TaesdPaths::in_models_dir(&s.models_dir),
        decoder: s.decoder,
    };
    if s.decoder == limner::engine::Decoder::Taesd
        && config.taesd == limner::engine::TaesdPaths::default()
    {
        tracing::warn!(
            "--decoder taesd, but {} has no taesd/ or taesdxl/: run `limner pull taesd` (or \
             taesdxl); requests that name no decoder are refused until then",
            s.models_dir.display()
        );
    }
    // Model hashes (A1111's `[hash]` titles) are cached in the data dir, computed in the background.
    let hashes = Arc::new(limner::engine::HashCache::open(&s.data_dir));
    let engine = Engine::spawn_with_hashes(config, hashes)?;
    Ok((Arc::new(engine), styles))
}

/// Binds and serves until SIGTERM / Ctrl-C, then stops accepting, lets running jobs finish for
/// a grace period, cancels the rest and exits.
pub async fn serve(s: ServeConfig) -> anyhow::Result<()> {
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
    // Bound before the state is built: opening the job queue fails the unfinished jobs it finds
    // as "server restarted", and a second `serve` that cannot get the port must not do that to
    // the jobs of the server that has it.
    let built = build(&s)?;
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
/// or a TOML config file with the same keys (see [`config::SETTINGS`]).
#[derive(clap::Args)]
pub struct Args {
    /// A TOML file with any of the settings below, keys in snake_case (flags and environment
    /// win over it).
    #[arg(long, env = "LIMNER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Flags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = ServeConfig::from_process(args.flags, args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("limner-http")
        .build()?;
    runtime.block_on(serve(config))
}

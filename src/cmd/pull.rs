//! `limner pull NAME`: downloads a hub model named in `weights.toml` into `models/NAME/`, once,
//! so that no request ever downloads anything. Files go through the Hugging Face cache (hf-hub,
//! resumable, shared with Python tools), are hard-linked or copied into the model folder with
//! the repo's relative paths, and are checked (non-empty, JSON parses, safetensors headers
//! parse and match the file size, sha256 where weights.toml pins one) before
//! `.limner-pulled.json` marks the folder complete. The weights' sha256 go into the data
//! directory's model hash cache, so the server shows A1111 model hashes without re-reading them.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};
use limner::engine::{sha256_file, HashCache};
use limner::registry::{LoraEntry, ModelSource, Registry, PULLED_MARKER};
use serde::Serialize;

/// Arguments of `limner pull`.
#[derive(clap::Args)]
pub struct Args {
    /// The model's name in weights.toml (e.g. dreamshaper-8, sd-turbo).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the registry's models and whether each is pulled, instead of pulling.
    #[arg(long)]
    pub list: bool,
    /// The model registry to read (default: ./weights.toml, else DATA_DIR/weights.toml, else
    /// the built-in one).
    #[arg(long, env = "LIMNER_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Where models live; the model lands in MODELS_DIR/NAME/ (default: ./models in a
    /// checkout, else DATA_DIR/models).
    #[arg(long, env = "LIMNER_MODELS_DIR", default_value_os_t = super::locations::default_models_dir())]
    pub models_dir: PathBuf,
    /// The server's data directory: the hashes computed while checking the weights are
    /// cached there, so `limner serve` need not read multi-GB files again.
    #[arg(long, env = "LIMNER_DATA_DIR", default_value_os_t = super::locations::default_data_dir())]
    pub data_dir: PathBuf,
}

/// `limner pull --help`'s list of the names the built-in weights.toml knows (added by `main`
/// only when help is shown, so other runs never parse the built-in registry for it).
pub fn built_in_models() -> String {
    let mut text = String::from("Models of the built-in weights.toml:\n");
    if let Ok(registry) = Registry::embedded() {
        for (name, entry) in registry.models() {
            text.push_str(&format!("  {name:<20} {}\n", entry.description));
        }
        for (name, entry) in registry.decoders() {
            text.push_str(&format!("  {name:<20} {}\n", entry.description));
        }
        for (name, lora) in registry.loras() {
            text.push_str(&format!("  {name:<20} {} (LoRA)\n", lora.description));
        }
    }
    text
}

/// `limner pull --list`: one line per model, with whether its files are here.
fn list(registry: &Registry, models_dir: &Path) {
    let models = registry
        .models()
        .iter()
        .map(|(n, e)| (n, &e.description, &e.source));
    let decoders = registry
        .decoders()
        .iter()
        .map(|(n, e)| (n, &e.description, &e.source));
    for (name, description, source) in models.chain(decoders) {
        let here = match source {
            ModelSource::Hub { .. } => registry
                .local_dir(name, models_dir)
                .join(PULLED_MARKER)
                .is_file(),
            ModelSource::Path { path } => registry.source_path(path).exists(),
            ModelSource::File { file, .. } => registry.source_path(file).exists(),
        };
        let state = if here { "pulled" } else { "-" };
        println!("{name:<20} {state:<7} {description}");
    }
    for (name, lora) in registry.loras() {
        let here = lora.local_path(name, models_dir).is_file();
        let state = if here { "pulled" } else { "-" };
        println!("{name:<20} {state:<7} {} (LoRA)", lora.description);
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let registry = super::locations::registry_for(args.weights.as_deref())?;
    let Some(name) = args.name.as_deref().filter(|_| !args.list) else {
        list(&registry, &args.models_dir);
        return Ok(());
    };
    match pull(
        &registry,
        name,
        &args.models_dir,
        &HubOptions {
            hash_cache: Some(args.data_dir.clone()),
            ..HubOptions::from_env()
        },
    )? {
        PullOutcome::NothingToPull(message) => println!("{message}"),
        PullOutcome::Pulled(record) => {
            let total: u64 = record.files.iter().map(|f| f.size).sum();
            println!(
                "pulled {} ({} files, {:.1} MiB) from {} at commit {} into {}",
                record.name,
                record.files.len(),
                total as f64 / (1024.0 * 1024.0),
                record.repo,
                record.commit.as_deref().unwrap_or("(unknown)"),
                record.location.display(),
            );
        }
    }
    Ok(())
}

/// How to talk to the hub; tests point `endpoint` at a closed port and `cache_dir` at a temp dir.
#[derive(Debug, Clone, Default)]
pub(crate) struct HubOptions {
    pub endpoint: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub progress: bool,
    /// The data directory whose model hash cache learns the pulled weights' hashes.
    pub hash_cache: Option<PathBuf>,
}

impl HubOptions {
    /// `HF_HOME` / `HF_ENDPOINT` are read by hf-hub; `HF_TOKEN` (for gated repos) by us, since
    /// hf-hub 0.4 only reads the token file that `huggingface-cli login` writes.
    fn from_env() -> HubOptions {
        HubOptions {
            token: std::env::var("HF_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
            progress: true,
            ..HubOptions::default()
        }
    }
}

pub(crate) enum PullOutcome {
    /// A local source: the message says so.
    NothingToPull(String),
    Pulled(PulledRecord),
}

/// The content of `.limner-pulled.json`.
#[derive(Debug, Serialize)]
pub(crate) struct PulledRecord {
    pub name: String,
    pub repo: String,
    pub revision: String,
    /// The commit the revision pointed to, read from the hub cache's snapshot folder.
    pub commit: Option<String>,
    pub pulled_at: String,
    pub files: Vec<FileRecord>,
    /// Where the files went (the model's folder, or a LoRA's file).
    #[serde(skip)]
    pub location: PathBuf,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct FileRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

pub(crate) fn pull(
    registry: &Registry,
    name: &str,
    models_dir: &Path,
    opts: &HubOptions,
) -> anyhow::Result<PullOutcome> {
    if let Some(lora) = registry.loras().get(name) {
        return pull_lora(name, lora, models_dir, opts);
    }
    let (source, sha256) = registry.pull_source(name)?;
    let (repo_id, revision, files) = match source {
        ModelSource::Path { path } => {
            return Ok(PullOutcome::NothingToPull(format!(
                "model '{name}' is the local folder {}; there is nothing to pull",
                registry.source_path(path).display()
            )))
        }
        ModelSource::File { file, .. } => {
            return Ok(PullOutcome::NothingToPull(format!(
                "model '{name}' is the local file {}; there is nothing to pull (place the file there by hand)",
                registry.source_path(file).display()
            )))
        }
        ModelSource::Hub {
            repo,
            revision,
            files,
        } => (repo, revision, files),
    };

    // The folder is created by the first installed file, so a failed first download leaves
    // nothing behind that looks like a half-pulled model.
    let dest = registry.local_dir(name, models_dir);
    // A stale marker would claim a complete folder while we replace its files.
    match std::fs::remove_file(dest.join(PULLED_MARKER)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("removing the old pull marker")
        }
        _ => {}
    }

    let repo = hub_repo(opts, repo_id, revision)?;

    let hashes = opts.hash_cache.as_deref().map(HashCache::open);
    let mut commit = None;
    let mut records = Vec::with_capacity(files.len());
    for file in files {
        // `get` uses the hub cache when the file is already there, else downloads it with an
        // indicatif progress bar.
        let cached = repo
            .get(file)
            .map_err(|e| hub_error(name, repo_id, revision, file, &dest, &e))?;
        commit = commit.or_else(|| snapshot_commit(&cached, file));
        let record = install_file(&cached, &dest, file, sha256.get(file).map(String::as_str))
            .with_context(|| format!("model '{name}': {file}"))?;
        if let (Some(hashes), true) = (&hashes, file.ends_with(".safetensors")) {
            hashes.record(&dest.join(file), &record.sha256);
        }
        if opts.progress {
            eprintln!("  ok  {file} ({} bytes)", record.size);
        }
        records.push(record);
    }

    let record = PulledRecord {
        name: name.to_string(),
        repo: repo_id.clone(),
        revision: revision.clone(),
        commit,
        pulled_at: chrono::Utc::now().to_rfc3339(),
        files: records,
        location: dest.clone(),
    };
    let json = serde_json::to_vec_pretty(&record)?;
    write_atomically(&dest.join(PULLED_MARKER), &json)?;
    Ok(PullOutcome::Pulled(record))
}

/// The hub client for one repo at one revision.
fn hub_repo(opts: &HubOptions, repo_id: &str, revision: &str) -> anyhow::Result<ApiRepo> {
    let mut builder = ApiBuilder::from_env().with_progress(opts.progress);
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(dir) = &opts.cache_dir {
        builder = builder.with_cache_dir(dir.clone());
    }
    if let Some(token) = &opts.token {
        builder = builder.with_token(Some(token.clone()));
    }
    let api = builder
        .build()
        .context("setting up the Hugging Face hub client")?;
    Ok(api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    )))
}

/// `limner pull` of a `[loras.NAME]` entry: its one file, checked, at
/// `MODELS_DIR/loras/NAME.safetensors` (installed atomically, so the file's presence is the
/// mark of a complete pull).
fn pull_lora(
    name: &str,
    lora: &LoraEntry,
    models_dir: &Path,
    opts: &HubOptions,
) -> anyhow::Result<PullOutcome> {
    let target = lora.local_path(name, models_dir);
    let (dir, file_name) = match (target.parent(), target.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(file_name)) => (dir, file_name),
        _ => bail!("LoRA '{name}': no file name for {}", target.display()),
    };
    let repo = hub_repo(opts, &lora.repo, &lora.revision)?;
    let cached = repo
        .get(&lora.file)
        .map_err(|e| hub_error(name, &lora.repo, &lora.revision, &lora.file, dir, &e))?;
    let commit = snapshot_commit(&cached, &lora.file);
    let record = install_file(&cached, dir, file_name, None)
        .with_context(|| format!("LoRA '{name}': {}", lora.file))?;
    if let Some(hashes) = opts.hash_cache.as_deref().map(HashCache::open) {
        hashes.record(&target, &record.sha256);
    }
    Ok(PullOutcome::Pulled(PulledRecord {
        name: name.to_string(),
        repo: lora.repo.clone(),
        revision: lora.revision.clone(),
        commit,
        pulled_at: chrono::Utc::now().to_rfc3339(),
        files: vec![record],
        location: target,
    }))
}

/// Turns an hf-hub error into a message that says what to do.
fn hub_error(
    name: &str,
    repo: &str,
    revision: &str,
    file: &str,
    dest: &Path,
    e: &ApiError,
) -> anyhow::Error {
    let text = e.to_string();
    // ureq 2 writes HTTP statuses as "<url>: status code N"; anything else is the network.
    if text.contains("status code 401") || text.contains("status code 403") {
        anyhow::anyhow!(
            "the Hugging Face hub refused {repo}/{file} ({text}); the repo may be gated or private: \
             accept its license on huggingface.co and set HF_TOKEN to an access token"
        )
    } else if text.contains("status code 404") {
        anyhow::anyhow!(
            "{file} was not found in {repo} at revision '{revision}' ({text}); \
             check model '{name}' in weights.toml"
        )
    } else {
        anyhow::anyhow!(
            "could not reach the Hugging Face hub to download {repo}/{file}: {text}; \
             limner pull needs network access once; copy the files into {}/ by hand instead",
            dest.display()
        )
    }
}

/// The commit of a hub-cache snapshot path `.../snapshots/<commit>/<file>`.
fn snapshot_commit(cached: &Path, file: &str) -> Option<String> {
    let mut dir = cached;
    for _ in file.split('/') {
        dir = dir.parent()?;
    }
    let commit = dir.file_name()?.to_str()?;
    let is_snapshot = dir.parent()?.file_name()? == "snapshots";
    (is_snapshot && commit.chars().all(|c| c.is_ascii_hexdigit())).then(|| commit.to_string())
}

/// Places the cached file at `dest/file` (hard link, else copy; atomically) and checks it.
fn install_file(
    cached: &Path,
    dest: &Path,
    file: &str,
    sha256: Option<&str>,
) -> anyhow::Result<FileRecord> {
    // The cache's snapshot entry is a symlink to a blob; link the blob itself.
    let blob =
        std::fs::canonicalize(cached).with_context(|| format!("resolving {}", cached.display()))?;
    let target = dest.join(file);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = target.with_file_name(format!(
        ".{}.partial",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
    ));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&blob, &tmp).is_err() {
        std::fs::copy(&blob, &tmp)
            .with_context(|| format!("copying {} to {}", blob.display(), tmp.display()))?;
    }
    let record = match verify_file(&tmp, file, sha256) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &target).with_context(|| format!("moving into {}", target.display()))?;
    Ok(record)
}

/// Checks one file: non-empty; JSON parses; a safetensors header parses and accounts for the
/// whole file; the sha256 matches when one is expected.
fn verify_file(
    path: &Path,
    file: &str,
    expected_sha256: Option<&str>,
) -> anyhow::Result<FileRecord> {
    let size = std::fs::metadata(path)?.len();
    if size == 0 {
        bail!("{file} is empty");
    }
    if file.ends_with(".json") {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .with_context(|| format!("{file} is not valid JSON"))?;
    }
    if file.ends_with(".safetensors") {
        check_safetensors(path, size)
            .with_context(|| format!("{file} is not a valid safetensors file"))?;
    }
    let sha256 = sha256_file(path).with_context(|| format!("hashing {file}"))?;
    if let Some(want) = expected_sha256 {
        if !sha256.eq_ignore_ascii_case(want) {
            bail!("{file} has sha256 {sha256}, but weights.toml expects {want}");
        }
    }
    Ok(FileRecord {
        path: file.to_string(),
        size,
        sha256,
    })
}

/// Parses the safetensors header (8-byte little-endian length, then JSON) and checks that the
/// tensors' byte ranges end exactly at the end of the file, which catches truncated downloads.
fn check_safetensors(path: &Path, size: u64) -> anyhow::Result<()> {
    const MAX_HEADER: u64 = 100 * 1024 * 1024;
    let mut f = File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .context("shorter than its 8-byte header length")?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n.saturating_add(8) > size {
        bail!("header length {n} does not fit a {size}-byte file");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).context("header is not a JSON object")?;
    let mut end = 0u64;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)))
            .with_context(|| format!("tensor {name} has no data_offsets"))?;
        if offsets.0 > offsets.1 {
            bail!("tensor {name} has data_offsets {offsets:?} in the wrong order");
        }
        end = end.max(offsets.1);
    }
    let expected = 8 + n + end;
    if expected != size {
        bail!(
            "tensors need {expected} bytes but the file has {size} (truncated or corrupt download)"
        );
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.partial");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;

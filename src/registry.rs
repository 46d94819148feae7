//! The named-model registry: `weights.toml` says which models exist, where their files come
//! from (a Hugging Face repo at a revision, a local diffusers folder or a single checkpoint
//! file), which art styles each serves and its default settings. [`Registry::resolve`] turns a
//! name or a path into files on disk for the engine to load; it never downloads (`limner pull`
//! does that, once, outside any request).
//!
//! Parsing is strict: unknown keys are errors, and every error names the model and the field,
//! because a typo in `weights.toml` should fail at startup, not as a missing image later.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::engine::EngineError;
pub use decoders::DecoderEntry;
pub use family::{Architecture, Family, SchedulerOverrides};
use locate::locate_path;
pub use loras::LoraEntry;
use parse::{invalid, is_safetensors, parse_entry};

mod decoders;
mod family;
mod locate;
mod loras;
mod parse;

/// The file `limner pull` writes into a model's folder once every file is in place.
pub const PULLED_MARKER: &str = ".limner-pulled.json";

/// Everything that can go wrong reading the registry or resolving a model.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, or a top-level shape problem.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// One model's entry is wrong; `field` is its dotted path inside the entry.
    #[error("model '{model}': invalid {field}: {message}")]
    Invalid {
        model: String,
        field: String,
        message: String,
    },
    #[error("unknown model '{name}'; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error("model '{name}' is not downloaded yet ({detail}); run: limner pull {name}")]
    NotPulled { name: String, detail: String },
    /// A path given (or configured) as a model is missing or is not a model we can load.
    #[error("model path {path}: {message}")]
    BadPath { path: PathBuf, message: String },
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownModel { name, .. } => EngineError::UnknownModel(name),
            other => EngineError::Model(other.to_string()),
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Where a model's files come from. Relative paths are relative to the folder holding
/// `weights.toml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSource {
    /// Files of a Hugging Face repo at a revision (commit, tag or branch), in the repo's layout.
    Hub {
        repo: String,
        revision: String,
        files: Vec<String>,
    },
    /// A local diffusers folder (or a single `.safetensors` file).
    Path { path: PathBuf },
    /// A local single-file checkpoint, with an optional diffusers folder for its configs
    /// (diffusers' `from_single_file(config=...)`).
    File {
        file: PathBuf,
        config: Option<PathBuf>,
    },
}

/// Settings a request falls back to when it does not give its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelDefaults {
    pub sampler: Option<String>,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub hires_fix: Option<bool>,
}

/// One `[models.NAME]` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEntry {
    pub description: String,
    pub architecture: Architecture,
    /// Art styles this model serves, lowercased (each style belongs to at most one model of
    /// each architecture; see [`Registry::style_model`]).
    pub styles: Vec<String>,
    pub source: ModelSource,
    pub defaults: ModelDefaults,
    /// The prompt family (the architecture's when the entry names none).
    pub family: Family,
    /// `vae = "..."`: the VAE to decode with instead of the checkpoint's own: a file name in
    /// `MODELS_DIR/vae/` or a path (relative to the folder of `weights.toml`).
    pub vae: Option<String>,
    /// `[models.NAME.scheduler]`.
    pub scheduler: SchedulerOverrides,
    /// Expected sha256 (lowercase hex) of hub files, checked by `limner pull`.
    pub sha256: BTreeMap<String, String>,
}

/// Where the engine finds a model's files.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    /// A diffusers folder (model_index.json, unet/, vae/, ...).
    Diffusers(PathBuf),
    /// An original-layout checkpoint, with an optional diffusers folder for its configs.
    SingleFile {
        file: PathBuf,
        config: Option<PathBuf>,
    },
}

/// A model name or path turned into files on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModel {
    /// The registry name, or the file/folder name for a bare path.
    pub name: String,
    pub location: ModelLocation,
    /// The registry entry when resolved by name (defaults, architecture hint).
    pub entry: Option<ModelEntry>,
    /// The entry's `vae`, found on disk.
    pub vae: Option<PathBuf>,
}

/// The repo's `weights.toml`, compiled in: the registry when no file is given or found.
pub const EMBEDDED_WEIGHTS: &str = include_str!("../weights.toml");

/// All models of a `weights.toml`.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    models: BTreeMap<String, ModelEntry>,
    /// `[decoders.NAME]`: pulled like models, never served as one.
    decoders: BTreeMap<String, DecoderEntry>,
    /// `[loras.NAME]`: LoRA files `limner pull` fetches into `MODELS_DIR/loras/`.
    loras: BTreeMap<String, LoraEntry>,
    /// Relative source paths are resolved against this (the folder of `weights.toml`).
    base_dir: PathBuf,
}

impl Registry {
    /// Reads and checks a `weights.toml`; relative source paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Registry> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Registry::parse(&text, &path.display().to_string())?.with_base_dir(base))
    }

    /// The registry compiled into the binary ([`EMBEDDED_WEIGHTS`]); relative source paths
    /// (the test model's) stay relative to the working directory.
    pub fn embedded() -> Result<Registry> {
        Registry::parse(EMBEDDED_WEIGHTS, "the built-in weights.toml")
    }

    /// Parses registry text; relative source paths stay relative to the working directory
    /// until [`Registry::with_base_dir`] says otherwise.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<Registry> {
        Registry::parse(text, "weights.toml")
    }

    fn parse(text: &str, origin: &str) -> Result<Registry> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| RegistryError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        for key in doc.keys() {
            if key != "models" && key != "decoders" && key != "loras" {
                return Err(RegistryError::Parse {
                    origin: origin.to_string(),
                    message: format!(
                        "unknown top-level key '{key}'; only [models.NAME], [decoders.NAME] and \
                         [loras.NAME] tables are allowed"
                    ),
                });
            }
        }
        let mut models = BTreeMap::new();
        if let Some(v) = doc.get("models") {
            let table = v.as_table().ok_or_else(|| RegistryError::Parse {
                origin: origin.to_string(),
                message: "'models' must be a table of [models.NAME] entries".to_string(),
            })?;
            for (name, entry) in table {
                models.insert(name.clone(), parse_entry(name, entry)?);
            }
        }
        // Each style maps to one model per architecture, so "realistic -> which checkpoint" is
        // never ambiguous once the preferred architecture is known.
        let mut owner: BTreeMap<(&str, Architecture), &str> = BTreeMap::new();
        for (name, entry) in &models {
            for style in &entry.styles {
                if let Some(first) = owner.insert((style, entry.architecture), name) {
                    return Err(invalid(
                        name,
                        "styles",
                        format!(
                            "style '{style}' is already served by the {} model '{first}' \
                             (each style has one model per architecture)",
                            entry.architecture
                        ),
                    ));
                }
            }
        }
        let decoders = match doc.get("decoders") {
            Some(v) => decoders::parse_decoders(v, origin, &models)?,
            None => BTreeMap::new(),
        };
        let loras = match doc.get("loras") {
            Some(v) => loras::parse_loras(v, &models)?,
            None => BTreeMap::new(),
        };
        if let Some(name) = loras.keys().find(|n| decoders.contains_key(*n)) {
            return Err(invalid(name, "entry", "is both a decoder and a LoRA"));
        }
        Ok(Registry {
            models,
            decoders,
            loras,
            base_dir: PathBuf::new(),
        })
    }

    /// Resolves relative source paths against `dir` from now on.
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Registry {
        self.base_dir = dir.into();
        self
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    pub fn models(&self) -> &BTreeMap<String, ModelEntry> {
        &self.models
    }

    /// The `[loras.NAME]` entries.
    pub fn loras(&self) -> &BTreeMap<String, LoraEntry> {
        &self.loras
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    pub fn decoders(&self) -> &BTreeMap<String, DecoderEntry> {
        &self.decoders
    }

    /// What `limner pull NAME` fetches for a model or a decoder entry: its source and the
    /// sha256 it pins; an unknown name lists both kinds.
    pub fn pull_source(&self, name: &str) -> Result<(&ModelSource, &BTreeMap<String, String>)> {
        if let Some(e) = self.models.get(name) {
            return Ok((&e.source, &e.sha256));
        }
        if let Some(d) = self.decoders.get(name) {
            return Ok((&d.source, &d.sha256));
        }
        let known: Vec<&str> = self
            .names()
            .chain(self.decoders.keys().map(String::as_str))
            .collect();
        Err(RegistryError::UnknownModel {
            name: name.to_string(),
            known: known.join(", "),
        })
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.get(name)
    }

    /// Like [`Registry::get`], but an unknown name is an error listing the known ones.
    pub fn entry(&self, name: &str) -> Result<&ModelEntry> {
        self.models.get(name).ok_or_else(|| self.unknown(name))
    }

    fn unknown(&self, name: &str) -> RegistryError {
        let known: Vec<&str> = self.names().collect();
        RegistryError::UnknownModel {
            name: name.to_string(),
            known: if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            },
        }
    }

    /// The model that serves an art style (case-insensitive), preferring the SD 1.5 ones (the
    /// default of `limner serve --style-architecture`).
    pub fn model_for_style(&self, style: &str) -> Option<(&str, &ModelEntry)> {
        self.style_model(style, Architecture::Sd1, |_| true)
    }

    /// The model that paints `style` (case-insensitive) among those `served` accepts: the one
    /// of architecture `prefer` claiming it, else the first claiming it in
    /// [`Architecture::ALL`] order (so serving only SDXL models still maps every style).
    pub fn style_model(
        &self,
        style: &str,
        prefer: Architecture,
        served: impl Fn(&str) -> bool,
    ) -> Option<(&str, &ModelEntry)> {
        let style = style.trim().to_lowercase();
        let rank = |a: Architecture| {
            if a == prefer {
                0
            } else {
                1 + Architecture::ALL.iter().position(|x| *x == a).unwrap_or(0)
            }
        };
        self.models
            .iter()
            .filter(|(n, e)| e.styles.contains(&style) && served(n))
            .min_by_key(|(_, e)| rank(e.architecture))
            .map(|(n, e)| (n.as_str(), e))
    }

    /// Every style some model claims, sorted.
    pub fn styles(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .models
            .values()
            .flat_map(|e| e.styles.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Where `limner pull` puts a hub model: `models_dir/NAME/`, mirroring the repo's files.
    pub fn local_dir(&self, name: &str, models_dir: &Path) -> PathBuf {
        models_dir.join(name)
    }

    /// A source path as written in `weights.toml`, made relative to its folder.
    pub fn source_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Turns a registry name, a diffusers folder or a `.safetensors` file into files on disk.
    /// A registry name wins over a same-named path. Hub models must have been pulled.
    pub fn resolve(&self, name_or_path: &str, models_dir: &Path) -> Result<ResolvedModel> {
        if let Some(entry) = self.models.get(name_or_path) {
            let location = self.locate_entry(name_or_path, entry, models_dir)?;
            let vae = match &entry.vae {
                Some(v) => Some(self.resolve_vae(v, models_dir).map_err(|e| match e {
                    RegistryError::BadPath { path, message } => RegistryError::BadPath {
                        path,
                        message: format!("the vae of model '{name_or_path}': {message}"),
                    },
                    other => other,
                })?),
                None => None,
            };
            return Ok(ResolvedModel {
                name: name_or_path.to_string(),
                location,
                entry: Some(entry.clone()),
                vae,
            });
        }
        let path = Path::new(name_or_path);
        let looks_like_path = path.exists()
            || path.components().count() > 1
            || path.extension().is_some()
            || matches!(
                path.components().next(),
                Some(Component::CurDir | Component::ParentDir | Component::RootDir)
            );
        if !looks_like_path {
            return Err(self.unknown(name_or_path));
        }
        let location = locate_path(path)?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name_or_path)
            .to_string();
        Ok(ResolvedModel {
            name,
            location,
            entry: None,
            vae: None,
        })
    }

    /// A VAE given by `weights.toml` or `--vae`: a file name in `MODELS_DIR/vae/` (with or
    /// without `.safetensors`), else a `.safetensors` path (relative to this file's folder).
    pub fn resolve_vae(&self, value: &str, models_dir: &Path) -> Result<PathBuf> {
        let dir = models_dir.join(crate::engine::VAE_DIR);
        let found = crate::engine::scan_vae_dir(&dir);
        crate::engine::locate_vae(&found, value, &self.base_dir).ok_or_else(|| {
            RegistryError::BadPath {
                path: PathBuf::from(value),
                message: format!(
                    "no such VAE: neither a .safetensors file in {} nor a .safetensors path",
                    dir.display()
                ),
            }
        })
    }

    fn locate_entry(
        &self,
        name: &str,
        entry: &ModelEntry,
        models_dir: &Path,
    ) -> Result<ModelLocation> {
        match &entry.source {
            ModelSource::Path { path } => locate_path(&self.source_path(path)),
            ModelSource::File { file, config } => {
                let file = self.source_path(file);
                if !file.is_file() {
                    return Err(RegistryError::BadPath {
                        path: file,
                        message: format!("the checkpoint file of model '{name}' is not there; place it there (see models/README.md)"),
                    });
                }
                let config = config.as_ref().map(|c| self.source_path(c));
                if let Some(c) = &config {
                    if !c.is_dir() {
                        return Err(RegistryError::BadPath {
                            path: c.clone(),
                            message: format!("the config folder of model '{name}' is not there"),
                        });
                    }
                }
                Ok(ModelLocation::SingleFile { file, config })
            }
            ModelSource::Hub { files, .. } => {
                let dir = self.local_dir(name, models_dir);
                if !dir.is_dir() {
                    return Err(RegistryError::NotPulled {
                        name: name.to_string(),
                        detail: format!("{} does not exist", dir.display()),
                    });
                }
                let missing: Vec<&str> = files
                    .iter()
                    .filter(|f| !dir.join(f).is_file())
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    return Err(RegistryError::NotPulled {
                        name: name.to_string(),
                        detail: format!("{} lacks {}", dir.display(), missing.join(", ")),
                    });
                }
                if files.iter().any(|f| f == "model_index.json") {
                    Ok(ModelLocation::Diffusers(dir))
                } else {
                    // Validation guarantees exactly one top-level checkpoint here.
                    let file = files
                        .iter()
                        .find(|f| !f.contains('/') && is_safetensors(Path::new(f)))
                        .map(|f| dir.join(f))
                        .ok_or_else(|| {
                            invalid(name, "source.files", "no checkpoint file listed")
                        })?;
                    Ok(ModelLocation::SingleFile { file, config: None })
                }
            }
        }
    }
}

impl std::str::FromStr for Registry {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Registry::parse(s, "weights.toml")
    }
}

#[cfg(test)]
mod tests;

impl ResolvedModel {
    /// Where the engine loads this model from.
    pub fn source(&self) -> crate::engine::loading::model::ModelSource {
        use crate::engine::loading::model::ModelSource as Engine;
        match &self.location {
            ModelLocation::Diffusers(dir) => Engine::Folder(dir.clone()),
            ModelLocation::SingleFile { file, config } => Engine::SingleFile {
                file: file.clone(),
                config: config.clone(),
            },
        }
    }

    /// The entry's `[scheduler]` keys (prediction type, zero-terminal SNR, spacing), if any.
    /// A turbo architecture without a spacing of its own gets "trailing": SD-Turbo and
    /// SDXL-Turbo were distilled to start at t = 999, which 1-4 steps reach only with trailing
    /// spacing (their diffusers configs say so; single files and re-uploads may not, and
    /// linspace would run one step at t = 0 and leading at t = 1).
    pub fn schedule(&self) -> crate::engine::ScheduleOverride {
        match &self.entry {
            Some(e) => crate::engine::ScheduleOverride {
                prediction_type: e.scheduler.prediction_type.clone(),
                rescale_betas_zero_snr: e.scheduler.rescale_betas_zero_snr,
                timestep_spacing: e
                    .scheduler
                    .timestep_spacing
                    .clone()
                    .or_else(|| e.architecture.is_turbo().then(|| "trailing".to_string())),
            },
            None => Default::default(),
        }
    }

    /// The entry's defaults over the regeneration guide's portrait defaults (512x768, 25 steps, CFG 8, Euler a).
    pub fn defaults(&self) -> crate::engine::request::Defaults {
        let mut d = crate::engine::request::Defaults::default();
        if let Some(e) = &self.entry {
            let m = &e.defaults;
            if let Some(s) = &m.sampler {
                d.sampler = s.clone();
            }
            if let Some(s) = m.steps {
                d.steps = s;
            }
            if let Some(c) = m.cfg_scale {
                d.cfg_scale = c;
            }
            if let Some(w) = m.width {
                d.width = w as usize;
            }
            if let Some(h) = m.height {
                d.height = h as usize;
            }
        }
        d
    }
}

//! `limner serve`'s one configuration: the table of every setting (`settings.toml`: file key,
//! kind, default, help; the flag and `LIMNER_*` variable follow from the key) and
//! [`ServeConfig`], resolved once from flags > environment >
//! `--config` file > defaults. A bad value stops the server before it starts, naming where the
//! value came from and the limit it broke.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};
use limner::auth::is_loopback_bind;
use limner::jobs::{QueueConfig, MAX_CONCURRENCY, MAX_QUEUED};
use limner::registry::Architecture;
use serde::Deserialize;

use crate::cmd::locations::Lookup;

/// How a setting is given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Value,
    /// `--flag` alone means true; `--flag=false` is accepted too.
    Switch,
    /// Comma-separated, or the flag given several times.
    List,
}

/// One setting of `limner serve`, as `settings.toml` describes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// The config-file key (snake_case).
    pub key: String,
    /// `--key` with dashes.
    #[serde(skip)]
    pub flag: String,
    /// `LIMNER_KEY`.
    #[serde(skip)]
    pub env: String,
    /// The default as `--help` and the README state it. Settings resolved with
    /// [`Layers::or_default`] parse it, so the text is the value.
    pub default: String,
    pub help: String,
    #[serde(default)]
    kind: Kind,
}

#[derive(Deserialize)]
struct Table {
    setting: Vec<Setting>,
}

/// Every setting, from `settings.toml` (compiled in; the tests parse it, so it cannot fail at
/// run time).
pub static SETTINGS: LazyLock<Vec<Setting>> = LazyLock::new(|| {
    let table: Table =
        toml::from_str(include_str!("settings.toml")).expect("settings.toml is well-formed");
    let mut settings = table.setting;
    for s in &mut settings {
        s.flag = s.key.replace('_', "-");
        s.env = format!("LIMNER_{}", s.key.to_uppercase());
    }
    settings
});

/// Limits stated once, for the checks and their messages alike.
const MAX_LOADED: usize = 64;
const MAX_TIMEOUT_SECS: u64 = 86_400;
const MAX_URL_TTL_SECS: u64 = 365 * 86_400;
const MAX_PREVIEW_EVERY: usize = 1000;

fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

impl Setting {
    fn arg(&'static self) -> Arg {
        // The value name clap derives from a field: the variable without its prefix.
        let name = self.env.trim_start_matches("LIMNER_");
        let arg = Arg::new(self.key.as_str())
            .long(self.flag.as_str())
            .value_name(name)
            .help(format!(
                "{} [env: {}] [default: {}]",
                self.help, self.env, self.default
            ));
        match self.kind {
            Kind::Value => arg,
            Kind::Switch => arg
                .num_args(0..=1)
                .default_missing_value("true")
                .value_name("BOOL"),
            Kind::List => arg.action(ArgAction::Append).value_delimiter(','),
        }
    }
}

/// Where a layer of values came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Flags,
    Env,
    File(PathBuf),
}

/// The settings one source gives, by key (a list's items joined with commas).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    origin: Origin,
    values: BTreeMap<&'static str, String>,
}

/// A setting that cannot be used, or a config file that cannot be read; the message names the
/// flag, variable or file key and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Layer {
    fn new(origin: Origin) -> Layer {
        Layer {
            origin,
            values: BTreeMap::new(),
        }
    }

    /// The `LIMNER_*` variables `var` finds; empty ones count as not set.
    pub fn from_env(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Layer, ConfigError> {
        let mut layer = Layer::new(Origin::Env);
        for s in SETTINGS.iter() {
            let Some(raw) = var(&s.env) else { continue };
            let text = raw
                .into_string()
                .map_err(|_| ConfigError(format!("{} is not valid UTF-8", s.env)))?;
            if !text.trim().is_empty() {
                layer.values.insert(&s.key, text);
            }
        }
        Ok(layer)
    }

    /// A TOML config file with any of the settings' keys.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Layer::from_toml(&text, path)
    }

    /// Parses config-file text; `path` is only named in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Layer, ConfigError> {
        let file = path.display();
        let table: toml::Table = text
            .parse()
            .map_err(|e| ConfigError(format!("invalid config file {file}: {e}")))?;
        let mut layer = Layer::new(Origin::File(path.to_path_buf()));
        for (key, value) in &table {
            let Some(s) = find(key) else {
                let known: Vec<&str> = SETTINGS.iter().map(|s| s.key.as_str()).collect();
                return Err(ConfigError(format!(
                    "unknown key '{key}' in config file {file}; the keys are: {}",
                    known.join(", ")
                )));
            };
            let text = match value {
                toml::Value::String(v) => Some(v.clone()),
                toml::Value::Integer(v) => Some(v.to_string()),
                toml::Value::Float(v) => Some(v.to_string()),
                toml::Value::Boolean(v) => Some(v.to_string()),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .map(|items| items.join(",")),
                _ => None,
            };
            let text = text.ok_or_else(|| {
                ConfigError(format!(
                    "{key} in config file {file} must be a string, a number, true/false or a \
                     list of strings"
                ))
            })?;
            layer.values.insert(&s.key, text);
        }
        Ok(layer)
    }

    /// A bad value: where it came from, then `message` (which names the key and the limit).
    fn error(&self, s: &Setting, raw: &str, message: &str) -> ConfigError {
        let given = match &self.origin {
            Origin::Flags => format!("--{} {raw:?}", s.flag),
            Origin::Env => format!("{}={raw:?}", s.env),
            Origin::File(path) => format!("{} = {raw:?} in {}", s.key, path.display()),
        };
        ConfigError(format!("invalid {given}: {} {message}", s.key))
    }
}

/// `serve`'s flags: clap arguments made from [`SETTINGS`], read back as a [`Layer`].
#[derive(Debug, Clone)]
pub struct Flags(pub Layer);

impl clap::FromArgMatches for Flags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut layer = Layer::new(Origin::Flags);
        for s in SETTINGS.iter() {
            if let Some(values) = m.get_many::<String>(&s.key) {
                let values: Vec<&str> = values.map(String::as_str).collect();
                layer.values.insert(&s.key, values.join(","));
            }
        }
        Ok(Flags(layer))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for Flags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(SETTINGS.iter().map(Setting::arg))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Layers in precedence order; the first that gives a setting wins.
struct Layers<'a>(&'a [Layer]);

impl Layers<'_> {
    /// The winning value of `key`, parsed; `None` when no layer gives it.
    fn get<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let s = find(key).ok_or_else(|| ConfigError(format!("no setting '{key}'")))?;
        for layer in self.0 {
            if let Some(raw) = layer.values.get(s.key.as_str()) {
                return parse(raw.trim())
                    .map(Some)
                    .map_err(|m| layer.error(s, raw, &m));
            }
        }
        Ok(None)
    }

    /// [`Self::get`], else the table's default parsed the same way.
    fn or_default<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        if let Some(v) = self.get(key, &parse)? {
            return Ok(v);
        }
        let s = find(key).ok_or_else(|| ConfigError(format!("no setting '{key}'")))?;
        parse(&s.default).map_err(|m| ConfigError(format!("default of {key}: {m}")))
    }
}

/// Every server setting, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// `None`: the first pulled model.
    pub model: Option<String>,
    /// `None`: every pulled model.
    pub models: Option<Vec<String>>,
    /// `None`: each model's own VAE (its weights.toml `vae`, else the checkpoint's).
    pub vae: Option<String>,
    /// What decodes a request that names no decoder.
    pub decoder: limner::engine::Decoder,
    /// The architecture whose models paint the art styles.
    pub style_architecture: Architecture,
    /// `None`: the built-in `weights.toml`.
    pub weights: Option<PathBuf>,
    pub models_dir: PathBuf,
    /// `None`: the built-in templates.
    pub prompts_dir: Option<PathBuf>,
    pub device: String,
    pub dtype: String,
    pub flash_attn: bool,
    /// Checked here; turned into bytes by the engine's rule, which depends on the device.
    pub max_memory: String,
    pub max_loaded: usize,
    pub queue: QueueConfig,
    pub request_timeout: Duration,
    /// Steps between live previews; 0 = none.
    pub preview_every: usize,
    pub media_url_ttl: u64,
    pub no_auth: bool,
    /// Bytes; 0 = only a really full disk refuses writes.
    pub min_free_space: u64,
}

impl ServeConfig {
    /// Reads the process's flags, `LIMNER_*` variables and config file (`--config`, which
    /// `LIMNER_CONFIG` may also give) over the defaults `lookup` finds.
    pub fn from_process(flags: Flags, config_file: Option<&Path>) -> anyhow::Result<ServeConfig> {
        let mut layers = vec![flags.0, Layer::from_env(|k| std::env::var_os(k))?];
        if let Some(path) = config_file {
            layers.push(Layer::from_file(path)?);
        }
        Ok(ServeConfig::resolve(&layers, &Lookup::from_env())?)
    }

    /// The one place settings are resolved: `layers` in precedence order, then the defaults.
    pub fn resolve(layers: &[Layer], lookup: &Lookup) -> Result<ServeConfig, ConfigError> {
        let l = Layers(layers);
        let data_dir = l
            .get("data_dir", path)?
            .unwrap_or_else(|| lookup.data_dir());
        let queue_defaults = QueueConfig::default();
        let config = ServeConfig {
            host: l.or_default("host", text)?,
            port: l.or_default("port", number(0, u16::MAX))?,
            model: l.get("model", text)?,
            models: l.get("models", list)?,
            vae: l.get("vae", text)?,
            decoder: l.or_default("decoder", decoder)?,
            style_architecture: l.or_default("style_architecture", architecture)?,
            weights: l
                .get("weights", path)?
                .or_else(|| lookup.weights(&data_dir)),
            models_dir: match l.get("models_dir", path)? {
                Some(dir) => dir,
                None => lookup.models_dir(&data_dir),
            },
            prompts_dir: l
                .get("prompts_dir", path)?
                .or_else(|| lookup.prompts_dir(&data_dir)),
            device: l.or_default("device", device)?,
            dtype: l.or_default("dtype", dtype)?,
            flash_attn: l.or_default("flash_attn", switch)?,
            max_memory: l.or_default("max_memory", memory)?,
            max_loaded: l.or_default("max_loaded", number(1, MAX_LOADED))?,
            queue: QueueConfig {
                max_queued: l.or_default("queue_depth", number(0, MAX_QUEUED))?,
                concurrency: l.or_default("concurrency", number(1, MAX_CONCURRENCY))?,
                retention: l.or_default("job_retention", retention)?,
                ..queue_defaults
            },
            request_timeout: Duration::from_secs(
                l.or_default("request_timeout", number(1, MAX_TIMEOUT_SECS))?,
            ),
            preview_every: l.or_default("preview_every", number(0, MAX_PREVIEW_EVERY))?,
            media_url_ttl: l.or_default("media_url_ttl", number(1, MAX_URL_TTL_SECS))?,
            no_auth: l.or_default("no_auth", switch)?,
            min_free_space: l.or_default("min_free_space", free_space)?,
            data_dir,
        };
        config.check()?;
        Ok(config)
    }

    /// Rules between settings.
    fn check(&self) -> Result<(), ConfigError> {
        if self.no_auth && !is_loopback_bind(&self.host) {
            return Err(ConfigError(format!(
                "refusing to serve {} without authentication: --no-auth (no_auth, \
                 LIMNER_NO_AUTH) is only allowed on a loopback address (127.0.0.1, ::1)",
                self.host
            )));
        }
        if self.flash_attn && !cfg!(feature = "flash-attn") {
            return Err(ConfigError(
                "flash_attn (--flash-attn, LIMNER_FLASH_ATTN) needs a build with --features \
                 flash-attn"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn text(v: &str) -> Result<String, String> {
    if v.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(v.to_string())
    }
}

fn path(v: &str) -> Result<PathBuf, String> {
    text(v).map(PathBuf::from)
}

fn list(v: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = v.split(',').map(|i| i.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err("must be a comma-separated list of model names, none of them empty".into());
    }
    Ok(items)
}

/// A whole number from `min` to `max`.
fn number<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    move |v| {
        v.parse::<T>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
    }
}

/// How long finished jobs stay readable: seconds or a number with s, m, h or d, up to
/// the queue's limit.
fn retention(v: &str) -> Result<Duration, String> {
    let max = limner::jobs::MAX_RETENTION;
    let d = limner::jobs::parse_duration(v)?;
    if d > max {
        return Err(format!("must be at most {} days", max.as_secs() / 86_400));
    }
    Ok(d)
}

fn architecture(v: &str) -> Result<Architecture, String> {
    let v = v.to_ascii_lowercase();
    Architecture::ALL
        .into_iter()
        .find(|a| a.as_str() == v)
        .ok_or_else(|| {
            let all: Vec<&str> = Architecture::ALL.iter().map(|a| a.as_str()).collect();
            format!("must be one of {}", all.join(", "))
        })
}

fn decoder(v: &str) -> Result<limner::engine::Decoder, String> {
    limner::engine::Decoder::parse(v).map_err(|_| "must be vae or taesd".into())
}

fn switch(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// What the engine's `select_device` accepts; whether the device exists is its business.
fn device(v: &str) -> Result<String, String> {
    let d = v.to_ascii_lowercase();
    let cuda_ordinal = d
        .strip_prefix("cuda:")
        .is_some_and(|n| n.parse::<usize>().is_ok());
    if matches!(d.as_str(), "auto" | "cpu" | "cuda" | "metal") || cuda_ordinal {
        Ok(d)
    } else {
        Err("must be auto, cpu, cuda, cuda:N or metal".into())
    }
}

/// What the engine's `parse_dtype` accepts.
fn dtype(v: &str) -> Result<String, String> {
    let d = v.to_ascii_lowercase();
    match d.as_str() {
        "auto" | "f32" | "fp32" | "float32" | "f16" | "fp16" | "float16" | "half" | "bf16"
        | "bfloat16" => Ok(d),
        _ => Err("must be auto, f32, f16 or bf16".into()),
    }
}

fn memory(v: &str) -> Result<String, String> {
    // `cpu: false` checks the text without measuring the machine.
    limner::engine::memory_limit(Some(v), false)
        .map(|_| v.to_string())
        .map_err(|e| {
            let e = e.trim_start_matches("max_memory: ");
            format!("must be a size (12G, 800M), none or auto: {e}")
        })
}

fn free_space(v: &str) -> Result<u64, String> {
    match v.to_ascii_lowercase().as_str() {
        "none" | "off" => Ok(0),
        size => limner::engine::parse_size(size)
            .map_err(|e| format!("must be a size (512M, 2G), 0 or none: {e}")),
    }
}

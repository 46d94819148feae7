//! Reading `weights.toml` entries: every key checked by hand (not serde) so each error names
//! the model and the dotted field, and unknown keys are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    Architecture, Family, ModelDefaults, ModelEntry, ModelSource, RegistryError, Result,
    SchedulerOverrides,
};

pub(super) fn invalid(model: &str, field: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        model: model.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

pub(super) fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

/// Rejects keys other than `allowed` in a table, naming the first stray one.
pub(super) fn check_keys(
    model: &str,
    prefix: &str,
    table: &toml::Table,
    allowed: &[&str],
) -> Result<()> {
    for key in table.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(invalid(
                model,
                &format!("{prefix}{key}"),
                format!("unknown key; allowed keys: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

pub(super) fn get_str(
    model: &str,
    field: &str,
    t: &toml::Table,
    key: &str,
) -> Result<Option<String>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(
            model,
            field,
            format!("expected a string, found {}", type_name(v)),
        )),
    }
}

fn get_bool(model: &str, field: &str, t: &toml::Table, key: &str) -> Result<Option<bool>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(
            model,
            field,
            format!("expected true or false, found {}", type_name(v)),
        )),
    }
}

fn get_str_list(
    model: &str,
    field: &str,
    t: &toml::Table,
    key: &str,
) -> Result<Option<Vec<String>>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(invalid(
                    model,
                    field,
                    format!(
                        "expected a list of strings, found a {} in it",
                        type_name(other)
                    ),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(v) => Err(invalid(
            model,
            field,
            format!("expected a list of strings, found {}", type_name(v)),
        )),
    }
}

fn get_int(
    model: &str,
    field: &str,
    t: &toml::Table,
    key: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) if (min..=max).contains(i) => Ok(Some(*i)),
        Some(toml::Value::Integer(i)) => Err(invalid(
            model,
            field,
            format!("{i} is outside {min}..={max}"),
        )),
        Some(v) => Err(invalid(
            model,
            field,
            format!("expected an integer, found {}", type_name(v)),
        )),
    }
}

/// A path inside a repo or model folder: relative, `/`-separated, no `..`, no empty parts.
fn check_repo_file(model: &str, field: &str, f: &str) -> Result<()> {
    let ok = !f.is_empty()
        && !f.starts_with('/')
        && !f.contains('\\')
        && f.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        return Err(invalid(
            model,
            field,
            format!("'{f}' must be a relative path inside the repo (no '..', no leading '/')"),
        ));
    }
    if is_pickle(Path::new(f)) {
        return Err(invalid(
            model,
            field,
            format!("'{f}' is a pickled checkpoint; limner loads only .safetensors"),
        ));
    }
    Ok(())
}

/// Pickled PyTorch files can run code when loaded; we refuse them everywhere.
pub(super) fn is_pickle(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("ckpt" | "pt" | "pth" | "bin" | "pkl")
    )
}

pub(super) fn is_safetensors(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

pub(super) fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            "name",
            "model names are used as folder names: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        ))
    }
}

pub(super) fn parse_source(model: &str, v: &toml::Value) -> Result<ModelSource> {
    parse_source_as(model, v, true)
}

/// `pipeline`: a model's hub files must form a diffusers pipeline or one checkpoint; other
/// entries (decoders) list whatever files they need.
pub(super) fn parse_source_as(model: &str, v: &toml::Value, pipeline: bool) -> Result<ModelSource> {
    let t = v.as_table().ok_or_else(|| {
        invalid(
            model,
            "source",
            format!("expected a table, found {}", type_name(v)),
        )
    })?;
    let kinds = ["hub", "path", "file"]
        .iter()
        .filter(|k| t.contains_key(**k))
        .count();
    if kinds != 1 {
        return Err(invalid(
            model,
            "source",
            "give exactly one of hub = \"owner/repo\", path = \"folder\", file = \"x.safetensors\"",
        ));
    }
    if let Some(repo) = get_str(model, "source.hub", t, "hub")? {
        check_keys(model, "source.", t, &["hub", "revision", "files"])?;
        let parts: Vec<&str> = repo.split('/').collect();
        let repo_ok = parts.len() == 2
            && parts.iter().all(|p| {
                !p.is_empty()
                    && !p.starts_with('.')
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        if !repo_ok {
            return Err(invalid(
                model,
                "source.hub",
                format!("'{repo}' is not a hub repo id of the form owner/name"),
            ));
        }
        let revision = get_str(model, "source.revision", t, "revision")?
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    model,
                    "source.revision",
                    "required for hub sources (a commit, a tag, or \"main\")",
                )
            })?;
        let files = get_str_list(model, "source.files", t, "files")?
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                invalid(
                    model,
                    "source.files",
                    "required: the list of repo files to download",
                )
            })?;
        for (i, f) in files.iter().enumerate() {
            check_repo_file(model, "source.files", f)?;
            if files[..i].contains(f) {
                return Err(invalid(
                    model,
                    "source.files",
                    format!("'{f}' is listed twice"),
                ));
            }
        }
        let diffusers = files.iter().any(|f| f == "model_index.json");
        let single = files
            .iter()
            .filter(|f| !f.contains('/') && is_safetensors(Path::new(f)))
            .count();
        if pipeline && !diffusers && single != 1 {
            return Err(invalid(
                model,
                "source.files",
                "list model_index.json and the component files (diffusers layout), or exactly one top-level .safetensors checkpoint",
            ));
        }
        return Ok(ModelSource::Hub {
            repo,
            revision,
            files,
        });
    }
    if let Some(path) = get_str(model, "source.path", t, "path")? {
        check_keys(model, "source.", t, &["path"])?;
        if path.trim().is_empty() {
            return Err(invalid(model, "source.path", "must not be empty"));
        }
        return Ok(ModelSource::Path {
            path: PathBuf::from(path),
        });
    }
    check_keys(model, "source.", t, &["file", "config"])?;
    let file = get_str(model, "source.file", t, "file")?.unwrap_or_default();
    let file = PathBuf::from(file);
    if is_pickle(&file) {
        return Err(invalid(
            model,
            "source.file",
            "pickled checkpoints (.ckpt/.pt/.bin) are refused; convert to .safetensors",
        ));
    }
    if !is_safetensors(&file) {
        return Err(invalid(
            model,
            "source.file",
            format!("'{}' must be a .safetensors file", file.display()),
        ));
    }
    let config = get_str(model, "source.config", t, "config")?.map(PathBuf::from);
    Ok(ModelSource::File { file, config })
}

fn parse_defaults(model: &str, arch: Architecture, v: &toml::Value) -> Result<ModelDefaults> {
    let t = v.as_table().ok_or_else(|| {
        invalid(
            model,
            "defaults",
            format!("expected a table, found {}", type_name(v)),
        )
    })?;
    check_keys(
        model,
        "defaults.",
        t,
        &[
            "sampler",
            "steps",
            "cfg_scale",
            "width",
            "height",
            "hires_fix",
        ],
    )?;
    let sampler = get_str(model, "defaults.sampler", t, "sampler")?;
    if sampler.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return Err(invalid(model, "defaults.sampler", "must not be empty"));
    }
    let max_steps = if arch.is_turbo() { 4 } else { 150 };
    let steps = get_int(model, "defaults.steps", t, "steps", 1, max_steps)?.map(|s| s as usize);
    let cfg_scale = match t.get("cfg_scale") {
        None => None,
        Some(toml::Value::Float(f)) => Some(*f),
        Some(toml::Value::Integer(i)) => Some(*i as f64),
        Some(v) => {
            return Err(invalid(
                model,
                "defaults.cfg_scale",
                format!("expected a number, found {}", type_name(v)),
            ))
        }
    };
    let max_cfg = if arch.is_turbo() { 1.0 } else { 30.0 };
    if let Some(c) = cfg_scale {
        if !(0.0..=max_cfg).contains(&c) {
            return Err(invalid(
                model,
                "defaults.cfg_scale",
                format!("{c} is outside 0..={max_cfg}"),
            ));
        }
    }
    let side = |key: &str| -> Result<Option<u32>> {
        let field = format!("defaults.{key}");
        let v = get_int(model, &field, t, key, 64, 2048)?;
        match v {
            Some(x) if x % 8 != 0 => Err(invalid(
                model,
                &field,
                format!("{x} is not a multiple of 8"),
            )),
            other => Ok(other.map(|x| x as u32)),
        }
    };
    let width = side("width")?;
    let height = side("height")?;
    let hires_fix = get_bool(model, "defaults.hires_fix", t, "hires_fix")?;
    Ok(ModelDefaults {
        sampler,
        steps,
        cfg_scale,
        width,
        height,
        hires_fix,
    })
}

pub(super) fn parse_entry(model: &str, v: &toml::Value) -> Result<ModelEntry> {
    check_name(model)?;
    let t = v.as_table().ok_or_else(|| {
        invalid(
            model,
            "entry",
            format!("expected a table, found {}", type_name(v)),
        )
    })?;
    check_keys(
        model,
        "",
        t,
        &[
            "description",
            "architecture",
            "styles",
            "source",
            "defaults",
            "sha256",
            "family",
            "vae",
            "scheduler",
        ],
    )?;
    let description = get_str(model, "description", t, "description")?.unwrap_or_default();
    let arch_name = get_str(model, "architecture", t, "architecture")?.ok_or_else(|| {
        invalid(
            model,
            "architecture",
            format!("required: one of {}", arch_names()),
        )
    })?;
    let architecture = Architecture::ALL
        .into_iter()
        .find(|a| a.as_str() == arch_name)
        .ok_or_else(|| {
            invalid(
                model,
                "architecture",
                format!("'{arch_name}' is not one of {}", arch_names()),
            )
        })?;
    let mut styles = Vec::new();
    for s in get_str_list(model, "styles", t, "styles")?.unwrap_or_default() {
        let s = s.trim().to_lowercase();
        if s.is_empty() {
            return Err(invalid(model, "styles", "a style must not be empty"));
        }
        if !styles.contains(&s) {
            styles.push(s);
        }
    }
    let source = parse_source(
        model,
        t.get("source")
            .ok_or_else(|| invalid(model, "source", "required"))?,
    )?;
    let defaults = match t.get("defaults") {
        Some(d) => parse_defaults(model, architecture, d)?,
        None => ModelDefaults::default(),
    };
    let sha256 = parse_sha256(model, t, &source)?;
    let family = match get_str(model, "family", t, "family")? {
        None => Family::of(architecture),
        Some(name) => parse_family(model, architecture, &name)?,
    };
    let vae = get_str(model, "vae", t, "vae")?;
    if let Some(v) = &vae {
        check_vae(model, v)?;
    }
    let scheduler = match t.get("scheduler") {
        Some(v) => parse_scheduler(model, v)?,
        None => SchedulerOverrides::default(),
    };
    Ok(ModelEntry {
        description,
        architecture,
        styles,
        source,
        defaults,
        sha256,
        family,
        vae,
        scheduler,
    })
}

pub(super) fn arch_names() -> String {
    Architecture::ALL.map(Architecture::as_str).join(", ")
}

fn parse_family(model: &str, arch: Architecture, name: &str) -> Result<Family> {
    let names = Family::ALL.map(Family::as_str).join(", ");
    let family = Family::parse(name)
        .ok_or_else(|| invalid(model, "family", format!("'{name}' is not one of {names}")))?;
    if !family.fits(arch) {
        return Err(invalid(
            model,
            "family",
            format!("a {arch} model cannot be of the {family} family"),
        ));
    }
    Ok(family)
}

/// A VAE is a `.safetensors` file like the checkpoints (never a pickle).
fn check_vae(model: &str, vae: &str) -> Result<()> {
    let p = Path::new(vae.trim());
    if vae.trim().is_empty() {
        return Err(invalid(model, "vae", "must not be empty"));
    }
    if is_pickle(p) {
        return Err(invalid(
            model,
            "vae",
            "pickled VAEs (.pt/.ckpt/.bin) can run code when loaded and are refused; convert it to .safetensors",
        ));
    }
    if p.extension().is_some() && !is_safetensors(p) {
        return Err(invalid(
            model,
            "vae",
            format!("'{vae}' must be a .safetensors file (or a name in MODELS_DIR/vae/)"),
        ));
    }
    Ok(())
}

fn parse_scheduler(model: &str, v: &toml::Value) -> Result<SchedulerOverrides> {
    let t = v.as_table().ok_or_else(|| {
        invalid(
            model,
            "scheduler",
            format!("expected a table, found {}", type_name(v)),
        )
    })?;
    check_keys(
        model,
        "scheduler.",
        t,
        &[
            "prediction_type",
            "rescale_betas_zero_snr",
            "timestep_spacing",
        ],
    )?;
    let one_of = |key: &str, allowed: &[&str]| -> Result<Option<String>> {
        let field = format!("scheduler.{key}");
        match get_str(model, &field, t, key)? {
            Some(v) if !allowed.contains(&v.as_str()) => Err(invalid(
                model,
                &field,
                format!("'{v}' is not one of {}", allowed.join(", ")),
            )),
            other => Ok(other),
        }
    };
    let prediction_type = one_of("prediction_type", &SchedulerOverrides::PREDICTION_TYPES)?;
    let timestep_spacing = one_of("timestep_spacing", &SchedulerOverrides::TIMESTEP_SPACINGS)?;
    let rescale_betas_zero_snr = get_bool(
        model,
        "scheduler.rescale_betas_zero_snr",
        t,
        "rescale_betas_zero_snr",
    )?;
    Ok(SchedulerOverrides {
        prediction_type,
        rescale_betas_zero_snr,
        timestep_spacing,
    })
}

/// `sha256 = { "file" = "hex" }`: only for hub sources, only for listed files.
pub(super) fn parse_sha256(
    model: &str,
    t: &toml::Table,
    source: &ModelSource,
) -> Result<BTreeMap<String, String>> {
    let mut sha256 = BTreeMap::new();
    if let Some(v) = t.get("sha256") {
        let table = v
            .as_table()
            .ok_or_else(|| invalid(model, "sha256", "expected a table of \"file\" = \"hex\""))?;
        let files = match source {
            ModelSource::Hub { files, .. } => files,
            _ => {
                return Err(invalid(
                    model,
                    "sha256",
                    "only hub sources are checked by limner pull",
                ))
            }
        };
        for (file, hex) in table {
            let field = format!("sha256.\"{file}\"");
            if !files.contains(file) {
                return Err(invalid(model, &field, "not one of source.files"));
            }
            let hex = hex
                .as_str()
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(model, &field, "expected 64 hex digits"));
            }
            sha256.insert(file.clone(), hex);
        }
    }
    Ok(sha256)
}

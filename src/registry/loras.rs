//! `[loras.NAME]` tables of `weights.toml`: LoRA files on the hub that `limner pull NAME` puts
//! into `MODELS_DIR/loras/NAME.safetensors`, where prompts name them (`<lora:NAME:1>`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::parse::{arch_names, check_keys, check_name, get_str, invalid, parse_source, type_name};
use super::{Architecture, ModelSource, Result};
use crate::engine::networks::LORA_DIR;

/// One `[loras.NAME]` table: a single `.safetensors` file of a hub repo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraEntry {
    pub description: String,
    /// The base models it was trained for (sd1, sd2, sdxl; a turbo architecture is its base's).
    pub architecture: Architecture,
    pub repo: String,
    pub revision: String,
    /// The file's path in the repo.
    pub file: String,
}

impl LoraEntry {
    /// Where `limner pull` installs it and the engine finds it by `name`.
    pub fn local_path(&self, name: &str, models_dir: &Path) -> PathBuf {
        models_dir
            .join(LORA_DIR)
            .join(format!("{name}.safetensors"))
    }
}

/// Parses the `loras` table; names must not clash with `models`' (one `limner pull NAME`).
pub(super) fn parse_loras(
    v: &toml::Value,
    models: &BTreeMap<String, super::ModelEntry>,
) -> Result<BTreeMap<String, LoraEntry>> {
    let table = v
        .as_table()
        .ok_or_else(|| invalid("loras", "loras", "must be a table of [loras.NAME] entries"))?;
    let mut out = BTreeMap::new();
    for (name, entry) in table {
        if models.contains_key(name) {
            return Err(invalid(
                name,
                "loras",
                "a [models] entry has the same name; `limner pull` needs one meaning per name",
            ));
        }
        out.insert(name.clone(), parse_lora(name, entry)?);
    }
    Ok(out)
}

fn parse_lora(name: &str, v: &toml::Value) -> Result<LoraEntry> {
    check_name(name)?;
    let t = v.as_table().ok_or_else(|| {
        invalid(
            name,
            "entry",
            format!("expected a table, found {}", type_name(v)),
        )
    })?;
    check_keys(name, "", t, &["description", "architecture", "source"])?;
    let description = get_str(name, "description", t, "description")?.unwrap_or_default();
    let arch = get_str(name, "architecture", t, "architecture")?.unwrap_or_default();
    let architecture = Architecture::ALL
        .into_iter()
        .find(|a| a.as_str() == arch)
        .ok_or_else(|| {
            invalid(
                name,
                "architecture",
                format!("'{arch}' is not one of {}", arch_names()),
            )
        })?;
    let source = t
        .get("source")
        .ok_or_else(|| invalid(name, "source", "required: { hub, revision, files }"))?;
    let ModelSource::Hub {
        repo,
        revision,
        mut files,
    } = parse_source(name, source)?
    else {
        return Err(invalid(
            name,
            "source",
            "a LoRA entry downloads from the hub: { hub = \"owner/repo\", revision, files = [\"x.safetensors\"] }",
        ));
    };
    if files.len() != 1 || !files[0].ends_with(".safetensors") {
        return Err(invalid(
            name,
            "source.files",
            "list exactly one .safetensors file (the LoRA weights)",
        ));
    }
    Ok(LoraEntry {
        description,
        architecture,
        repo,
        revision,
        file: files.remove(0),
    })
}

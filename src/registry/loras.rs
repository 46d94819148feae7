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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::{Architecture, Registry};

    #[test]
    fn the_repo_lcm_loras_are_lora_entries() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let reg = Registry::load(&root.join("weights.toml")).unwrap();
        for (name, arch, repo) in [
            (
                "lcm-lora-sdv1-5",
                Architecture::Sd1,
                "latent-consistency/lcm-lora-sdv1-5",
            ),
            (
                "lcm-lora-sdxl",
                Architecture::Sdxl,
                "latent-consistency/lcm-lora-sdxl",
            ),
        ] {
            let lora = &reg.loras()[name];
            assert_eq!((lora.architecture, lora.repo.as_str()), (arch, repo));
            assert_eq!(lora.file, "pytorch_lora_weights.safetensors");
            assert_eq!(
                lora.local_path(name, Path::new("m")),
                Path::new("m/loras").join(format!("{name}.safetensors"))
            );
            assert!(reg.get(name).is_none(), "a LoRA is not a model");
        }
    }

    #[test]
    fn bad_lora_entries_name_the_entry_and_field() {
        let cases: Vec<(String, &str)> = vec![
            (
                r#"[loras.l]
               architecture = "sd1"
               source = { hub = "o/r", revision = "main", files = ["a.safetensors", "b.json"] }"#
                    .into(),
                "model 'l': invalid source.files: list exactly one .safetensors file",
            ),
            (
                r#"[loras.l]
               architecture = "sd1"
               source = { path = "loras/x.safetensors" }"#
                    .into(),
                "model 'l': invalid source: a LoRA entry downloads from the hub",
            ),
            (
                r#"[loras.l]
               architecture = "sd9"
               source = { hub = "o/r", revision = "main", files = ["a.safetensors"] }"#
                    .into(),
                "model 'l': invalid architecture: 'sd9' is not one of sd1, sd2",
            ),
            (
                r#"[models.m]
               architecture = "sd1"
               source = { path = "x" }
               [loras.m]
               architecture = "sd1"
               source = { hub = "o/r", revision = "main", files = ["a.safetensors"] }"#
                    .into(),
                "model 'm': invalid loras: a [models] entry has the same name",
            ),
            (
                r#"[loras.l]
               architecture = "sd1"
               strength = 1
               source = { hub = "o/r", revision = "main", files = ["a.safetensors"] }"#
                    .into(),
                "model 'l': invalid strength: unknown key",
            ),
        ];
        for (text, want) in &cases {
            let err = Registry::from_str(text).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }
}

//! `[decoders.NAME]` entries of weights.toml: files `limner pull` fetches that are not models
//! to serve (the TAESDs), parsed apart from the models so no decoder is ever served as one.

use std::collections::BTreeMap;

use serde::Serialize;

use super::parse::{
    check_keys, check_name, get_str, invalid, parse_sha256, parse_source_as, type_name,
};
use super::{ModelEntry, ModelSource, RegistryError, Result};

/// One `[decoders.NAME]` table: files `limner pull NAME` fetches into `MODELS_DIR/NAME/` that
/// are not a model to serve (the TAESDs `taesd` and `taesdxl`, which the engine finds there).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecoderEntry {
    pub description: String,
    /// Always [`ModelSource::Hub`].
    pub source: ModelSource,
    pub sha256: BTreeMap<String, String>,
}

/// The `decoders` table: every entry, none named like a model.
pub(super) fn parse_decoders(
    v: &toml::Value,
    origin: &str,
    models: &BTreeMap<String, ModelEntry>,
) -> Result<BTreeMap<String, DecoderEntry>> {
    let table = v.as_table().ok_or_else(|| RegistryError::Parse {
        origin: origin.to_string(),
        message: "'decoders' must be a table of [decoders.NAME] entries".to_string(),
    })?;
    let mut decoders = BTreeMap::new();
    for (name, entry) in table {
        if models.contains_key(name) {
            return Err(invalid(name, "entry", "is both a model and a decoder"));
        }
        decoders.insert(name.clone(), parse_decoder_entry(name, entry)?);
    }
    Ok(decoders)
}

/// A `[decoders.NAME]` entry: a hub repo `limner pull NAME` fetches into `MODELS_DIR/NAME/`
/// (the TAESDs), not a model to serve.
fn parse_decoder_entry(name: &str, v: &toml::Value) -> Result<DecoderEntry> {
    check_name(name)?;
    let t = v.as_table().ok_or_else(|| {
        invalid(
            name,
            "entry",
            format!("expected a table, found {}", type_name(v)),
        )
    })?;
    check_keys(name, "", t, &["description", "source", "sha256"])?;
    let source = parse_source_as(
        name,
        t.get("source")
            .ok_or_else(|| invalid(name, "source", "required"))?,
        false,
    )?;
    if !matches!(source, ModelSource::Hub { .. }) {
        return Err(invalid(
            name,
            "source",
            "a decoder entry is a hub source (hub, revision, files)",
        ));
    }
    Ok(DecoderEntry {
        description: get_str(name, "description", t, "description")?.unwrap_or_default(),
        sha256: parse_sha256(name, t, &source)?,
        source,
    })
}

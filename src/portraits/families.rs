//! Per-family prompt tags, from `prompts/families/<family>.toml`: SDXL fine-tunes trained on
//! booru tags want their own vocabulary instead of A1111's SD 1.5 quality tags (Pony's
//! `score_9, score_8_up, ...` and `source_*` tags; Illustrious' and NoobAI's `masterpiece, best
//! quality, ..., absurdres` with danbooru's `1girl` / `1boy`). A portrait painted by a model of
//! such a family (`family = "pony"` in `weights.toml`) keeps its art style's framing but gets
//! the family's tags in place of the style's `{quality}`, and the family's negative tags before
//! the style's. Families without a file (sd1, sd2, sdxl) render the style's template unchanged.
//!
//! Each file holds `quality` (required), `negative_prompt`, and the tables `[styles]` (art style
//! -> tags after the quality tags, e.g. Pony's `anime = "source_anime"`) and `[gender]` (the
//! profile's gender, lowercased -> a tag such as `1girl`). A file whose name is not a family, or
//! with an unknown key, is an error naming the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::template_error::TemplateError;
use crate::registry::Family;

/// The folder under the templates folder that holds the family files.
pub const FAMILIES_DIR: &str = "families";

/// The repo's `prompts/families/*.toml`, compiled in (a test checks the list against the folder).
pub(super) const EMBEDDED_FAMILIES: &[(&str, &str)] = &[
    (
        "illustrious",
        include_str!("../../prompts/families/illustrious.toml"),
    ),
    ("noobai", include_str!("../../prompts/families/noobai.toml")),
    ("pony", include_str!("../../prompts/families/pony.toml")),
];

/// One family's tags.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyTags {
    #[serde(default)]
    pub description: String,
    /// Replaces the style's `{quality}` tags.
    pub quality: String,
    /// Comes before the style's negative prompt.
    #[serde(default)]
    pub negative_prompt: String,
    /// Art style -> tags placed after the quality tags.
    #[serde(default)]
    pub styles: BTreeMap<String, String>,
    /// Gender (lowercased, as profiles spell it: male, female, non-binary) -> tag.
    #[serde(default)]
    pub gender: BTreeMap<String, String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl FamilyTags {
    /// Parses one family file; `file` is named in errors. `family` must be a known family.
    pub fn parse(family: &str, file: &Path, text: &str) -> Result<(Family, Self), TemplateError> {
        let invalid = |line: usize, message: String| TemplateError::Invalid {
            file: file.to_path_buf(),
            line,
            message,
        };
        let known = || Family::ALL.map(Family::as_str).join(", ");
        let family = Family::parse(family).ok_or_else(|| {
            invalid(
                1,
                format!(
                    "'{family}' is not a model family; family files are named after one of {}",
                    known()
                ),
            )
        })?;
        let mut tags: FamilyTags = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            invalid(line, e.message().trim().to_string())
        })?;
        for value in [&tags.quality, &tags.negative_prompt]
            .into_iter()
            .chain(tags.styles.values())
            .chain(tags.gender.values())
        {
            if let Some(i) = value.find(['{', '}']) {
                let line = text
                    .find(value.as_str())
                    .map_or(1, |o| line_of(text, o + i));
                return Err(invalid(
                    line,
                    "placeholders are only allowed in style templates".into(),
                ));
            }
        }
        tags.styles = std::mem::take(&mut tags.styles)
            .into_iter()
            .map(|(k, v)| (k.trim().to_lowercase(), v))
            .collect();
        tags.gender = std::mem::take(&mut tags.gender)
            .into_iter()
            .map(|(k, v)| (k.trim().to_lowercase(), v))
            .collect();
        Ok((family, tags))
    }
}

/// The family files of `dir/families/` (none when that folder does not exist).
pub(super) fn load_families(dir: &Path) -> Result<BTreeMap<Family, FamilyTags>, TemplateError> {
    let dir = dir.join(FAMILIES_DIR);
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let io = |path: &Path, e: std::io::Error| TemplateError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for file in files {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
        let (family, tags) = FamilyTags::parse(&stem, &file, &text)?;
        out.insert(family, tags);
    }
    Ok(out)
}

/// The family files compiled into the binary.
pub(super) fn embedded_families() -> Result<BTreeMap<Family, FamilyTags>, TemplateError> {
    EMBEDDED_FAMILIES
        .iter()
        .map(|(name, text)| {
            let file = PathBuf::from(format!("(built-in) prompts/{FAMILIES_DIR}/{name}.toml"));
            FamilyTags::parse(name, &file, text)
        })
        .collect()
}

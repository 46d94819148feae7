//! Per-art-style prompt templates, loaded from `prompts/*.toml` at start (data, editable without
//! recompiling); the repo's own files are also compiled in, so the binary works without them
//! ([`PortraitTemplates::embedded`]). Each file names its style by its stem (`fantasy.toml` -> `fantasy`) and holds:
//!
//! - `template`: the portrait framing with a `{subject}` placeholder (the prompt built from the
//!   profile, required) and an optional `{quality}` placeholder;
//! - `quality`: quality tags (the regeneration guide's "masterpiece, best quality, ..., detailed face");
//! - `negative_prompt`: what the image must not show;
//! - `model` (optional): the model this style prefers over the `weights.toml` style map;
//! - `description` (optional): free text for model/style listings.
//!
//! A broken file (TOML syntax, unknown key, unknown placeholder, no `{subject}`) is an error that
//! names the file and the line, so a typo stops the server at start instead of painting nonsense.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::error::PortraitError;
use super::families::{embedded_families, load_families, FamilyTags};
use super::prompt::{clean_parts, join_parts};
pub use super::template_error::TemplateError;
use crate::registry::Family;

/// The style used when a request names none; its file (`default.toml`) must exist.
pub const DEFAULT_STYLE: &str = "default";

/// The repo's `prompts/*.toml`, compiled in: what `serve` uses when no templates folder is given
/// or found. A unit test checks this list against the folder, so a new file cannot be forgotten.
const EMBEDDED: &[(&str, &str)] = &[
    ("anime", include_str!("../../prompts/anime.toml")),
    ("cartoon", include_str!("../../prompts/cartoon.toml")),
    ("default", include_str!("../../prompts/default.toml")),
    ("fantasy", include_str!("../../prompts/fantasy.toml")),
    ("realistic", include_str!("../../prompts/realistic.toml")),
];

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Subject,
    Quality,
}

/// One art style's template.
#[derive(Debug, Clone, PartialEq)]
pub struct PortraitTemplate {
    pub style: String,
    pub description: String,
    pub quality: String,
    pub negative_prompt: String,
    /// The model this style prefers, if the file names one.
    pub model: Option<String>,
    /// The template text as written (for listings).
    pub template: String,
    segments: Vec<Segment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default)]
    description: Option<String>,
    template: Spanned<String>,
    #[serde(default)]
    quality: Option<Spanned<String>>,
    #[serde(default)]
    negative_prompt: Option<Spanned<String>>,
    #[serde(default)]
    model: Option<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of `needle` inside the source of a value spanning `span` (the value's first line
/// when it cannot be found, e.g. because it was written with escapes).
fn line_in_span(text: &str, span: &Range<usize>, needle: &str) -> usize {
    let offset = text
        .get(span.clone())
        .and_then(|src| src.find(needle))
        .map_or(span.start, |i| span.start + i);
    line_of(text, offset)
}

/// Splits template text into literal text and placeholders; the error is (offending token,
/// message).
fn parse_segments(t: &str) -> Result<Vec<Segment>, (String, String)> {
    let mut out = Vec::new();
    let mut rest = t;
    loop {
        let Some(o) = rest.find(['{', '}']) else {
            if !rest.is_empty() {
                out.push(Segment::Text(rest.to_string()));
            }
            return Ok(out);
        };
        if rest[o..].starts_with('}') {
            return Err(("}".into(), "'}' without a matching '{'".into()));
        }
        let Some(len) = rest[o + 1..]
            .find(['{', '}'])
            .filter(|&i| rest[o + 1 + i..].starts_with('}'))
        else {
            return Err(("{".into(), "'{' is never closed with '}'".into()));
        };
        let c = o + 1 + len;
        if o > 0 {
            out.push(Segment::Text(rest[..o].to_string()));
        }
        out.push(match &rest[o + 1..c] {
            "subject" => Segment::Subject,
            "quality" => Segment::Quality,
            other => {
                return Err((
                    rest[o..=c].to_string(),
                    format!(
                        "unknown placeholder {{{other}}} in template; \
                         known placeholders: {{subject}}, {{quality}}"
                    ),
                ))
            }
        });
        rest = &rest[c + 1..];
    }
}

impl PortraitTemplate {
    /// Parses one template file's text; `file` is only used in error messages.
    pub fn parse(style: &str, file: &Path, text: &str) -> Result<Self, TemplateError> {
        let invalid = |line: usize, message: String| TemplateError::Invalid {
            file: file.to_path_buf(),
            line,
            message,
        };
        let raw: RawTemplate = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            invalid(line, e.message().trim().to_string())
        })?;
        let span = raw.template.span();
        let template = raw.template.into_inner();
        let segments = parse_segments(&template)
            .map_err(|(token, msg)| invalid(line_in_span(text, &span, &token), msg))?;
        if !segments.contains(&Segment::Subject) {
            return Err(invalid(
                line_of(text, span.start),
                "template has no {subject} placeholder (where the character's description goes)"
                    .into(),
            ));
        }
        let plain = |field: &str, v: Option<Spanned<String>>| -> Result<String, TemplateError> {
            let Some(v) = v else {
                return Ok(String::new());
            };
            let span = v.span();
            let v = v.into_inner();
            if let Some(i) = v.find(['{', '}']) {
                let token = &v[i..i + 1];
                return Err(invalid(
                    line_in_span(text, &span, token),
                    format!("'{token}' in {field}: placeholders are only allowed in template"),
                ));
            }
            Ok(join_parts([v]))
        };
        let quality = plain("quality", raw.quality)?;
        let negative_prompt = plain("negative_prompt", raw.negative_prompt)?;
        Ok(Self {
            style: style.to_string(),
            description: raw.description.unwrap_or_default().trim().to_string(),
            quality,
            negative_prompt,
            model: raw
                .model
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty()),
            template,
            segments,
        })
    }

    /// The final prompt: the framing with `subject` and the quality tags filled in, commas and
    /// whitespace normalised. `subject` is inserted verbatim (it is never re-scanned for
    /// placeholders).
    pub fn render(&self, subject: &str) -> String {
        self.render_with_quality(subject, &self.quality)
    }

    /// [`Self::render`] with other quality tags (a model family's), put where `{quality}` is,
    /// or first when the template has no `{quality}`.
    pub fn render_with_quality(&self, subject: &str, quality: &str) -> String {
        let mut s = String::new();
        if !self.segments.contains(&Segment::Quality) {
            s.push_str(quality);
            s.push_str(", ");
        }
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => s.push_str(t),
                Segment::Subject => s.push_str(subject),
                Segment::Quality => s.push_str(quality),
            }
        }
        join_parts([s])
    }

    /// The prompt and negative prompt of this template for the model family `tags`: the style's framing with
    /// this family's quality, style and gender tags in place of `{quality}`, and this family's
    /// negative tags, then the style's and `extra_negative`, each tag once.
    pub fn render_for_family(
        &self,
        tags: &FamilyTags,
        gender: Option<&str>,
        subject: &str,
        extra_negative: Option<&str>,
    ) -> (String, String) {
        let style = tags.styles.get(&self.style).map(String::as_str);
        let gender = gender.and_then(|g| tags.gender.get(&g.trim().to_lowercase()));
        let quality = join_parts([
            tags.quality.as_str(),
            gender.map_or("", String::as_str),
            style.unwrap_or(""),
        ]);
        let prompt = self.render_with_quality(subject, &quality);
        let negative = unique_tags([
            tags.negative_prompt.as_str(),
            self.negative_prompt.as_str(),
            extra_negative.unwrap_or(""),
        ]);
        (prompt, negative)
    }
}

/// Every art style's template, by style name, and the model families' tags.
#[derive(Debug, Clone)]
pub struct PortraitTemplates {
    by_style: BTreeMap<String, PortraitTemplate>,
    families: BTreeMap<Family, FamilyTags>,
}

fn normalize_style(style: &str) -> String {
    style.trim().to_lowercase()
}

impl PortraitTemplates {
    /// Loads every `*.toml` file of `dir` (other files are ignored). `default.toml` is required.
    pub fn load_dir(dir: &Path) -> Result<Self, TemplateError> {
        let io = |path: &Path, e: std::io::Error| TemplateError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| io(dir, e)))
            .collect::<Result<_, _>>()?;
        files.retain(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file());
        files.sort();
        let mut by_style = BTreeMap::new();
        for file in files {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let style = normalize_style(&stem);
            let ok_name = !style.is_empty()
                && style
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok_name {
                return Err(TemplateError::Invalid {
                    file,
                    line: 1,
                    message: "a template's file name is its style: use only a-z, 0-9, '-', '_'"
                        .into(),
                });
            }
            let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
            let t = PortraitTemplate::parse(&style, &file, &text)?;
            if by_style.insert(style.clone(), t).is_some() {
                return Err(TemplateError::Invalid {
                    file,
                    line: 1,
                    message: format!(
                        "style '{style}' is defined twice (file names differ only in case)"
                    ),
                });
            }
        }
        if !by_style.contains_key(DEFAULT_STYLE) {
            return Err(TemplateError::MissingDefault {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self {
            by_style,
            families: load_families(dir)?,
        })
    }

    /// The templates compiled into the binary (the repo's `prompts/` folder at build time).
    pub fn embedded() -> Result<Self, TemplateError> {
        let templates = EMBEDDED
            .iter()
            .map(|(style, text)| {
                let file = PathBuf::from(format!("(built-in) prompts/{style}.toml"));
                PortraitTemplate::parse(style, &file, text)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_templates(templates).with_families(embedded_families()?))
    }

    /// Replaces the model families' tags.
    pub fn with_families(mut self, families: BTreeMap<Family, FamilyTags>) -> Self {
        self.families = families;
        self
    }

    /// The tags of `family`, if it has a file.
    pub fn family(&self, family: Family) -> Option<&FamilyTags> {
        self.families.get(&family)
    }

    /// The families with tags, sorted.
    pub fn families(&self) -> Vec<Family> {
        self.families.keys().copied().collect()
    }

    /// Builds the set from already parsed templates (tests, embedded defaults).
    pub fn from_templates(templates: impl IntoIterator<Item = PortraitTemplate>) -> Self {
        Self {
            by_style: templates
                .into_iter()
                .map(|t| (normalize_style(&t.style), t))
                .collect(),
            families: BTreeMap::new(),
        }
    }

    /// The known style names, sorted.
    pub fn styles(&self) -> Vec<&str> {
        self.by_style.keys().map(String::as_str).collect()
    }

    /// The template of `style` (case-insensitive); an unknown style is an `art_style` validation
    /// error listing the known ones.
    pub fn get(&self, style: &str) -> Result<&PortraitTemplate, PortraitError> {
        self.by_style
            .get(&normalize_style(style))
            .ok_or_else(|| PortraitError::Validation {
                field: "art_style".into(),
                message: format!(
                    "unknown art style {:?}; known styles: {}",
                    style.trim(),
                    self.styles().join(", ")
                ),
            })
    }
}

/// `join_parts`, keeping only the first of tags that repeat (any case).
fn unique_tags<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for part in parts {
        for tag in clean_parts(part) {
            if seen.insert(tag.to_lowercase()) {
                out.push(tag);
            }
        }
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_prompts() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts")
    }

    #[test]
    fn repo_templates_load_and_render() {
        let t = PortraitTemplates::load_dir(&repo_prompts()).unwrap();
        for style in ["default", "fantasy", "realistic", "anime", "cartoon"] {
            let tpl = t.get(style).unwrap();
            let out = tpl.render("Garrick, stern, male");
            assert!(out.contains("Garrick, stern, male"), "{style}: {out}");
            assert!(out.contains("detailed face"), "{style}: {out}");
            assert!(!out.contains('{') && !out.contains(",,"), "{style}: {out}");
            assert!(!tpl.negative_prompt.is_empty(), "{style}");
        }
        assert_eq!(t.get(" Fantasy ").unwrap().style, "fantasy");
        let e = t.get("vaporwave").unwrap_err();
        assert_eq!(e.field(), Some("art_style"));
        assert!(e.to_string().contains("realistic"), "{e}");
    }

    #[test]
    fn embedded_templates_are_the_repo_folder() {
        let embedded = PortraitTemplates::embedded().unwrap();
        let folder = PortraitTemplates::load_dir(&repo_prompts()).unwrap();
        assert_eq!(embedded.styles(), folder.styles());
        for style in folder.styles() {
            let (a, b) = (embedded.get(style).unwrap(), folder.get(style).unwrap());
            assert_eq!(a.template, b.template, "{style}");
            assert_eq!(a.quality, b.quality, "{style}");
            assert_eq!(a.negative_prompt, b.negative_prompt, "{style}");
            assert_eq!(a.model, b.model, "{style}");
        }
        assert_eq!(embedded.families(), folder.families());
        for family in folder.families() {
            assert_eq!(embedded.family(family), folder.family(family), "{family}");
        }
        assert_eq!(
            folder.families(),
            [Family::Pony, Family::Illustrious, Family::Noobai]
        );
    }

    #[test]
    fn render_does_not_expand_placeholders_in_the_subject() {
        let t = PortraitTemplate::parse(
            "x",
            Path::new("x.toml"),
            "template = \"{quality}, portrait of {subject}\"\nquality = \"best quality\"\n",
        )
        .unwrap();
        assert_eq!(
            t.render("a {quality} knight"),
            "best quality, portrait of a {quality} knight"
        );
        let bare = PortraitTemplate::parse(
            "x",
            Path::new("x.toml"),
            "template = \"{quality}, {subject}\"",
        )
        .unwrap();
        // Empty quality leaves no dangling comma.
        assert_eq!(bare.render("elf"), "elf");
    }

    fn write_bad(name: &str, body: &str) -> (tempfile::TempDir, TemplateError) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "template = \"portrait of {subject}\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(name), body).unwrap();
        let e = PortraitTemplates::load_dir(dir.path()).unwrap_err();
        (dir, e)
    }

    fn assert_invalid(e: &TemplateError, file: &str, line: usize, needle: &str) {
        match e {
            TemplateError::Invalid {
                file: f,
                line: l,
                message,
            } => {
                assert!(f.ends_with(file), "{e}");
                assert_eq!(*l, line, "{e}");
                assert!(message.contains(needle), "{e}");
            }
            other => panic!("expected an invalid-file error, got {other}"),
        }
        let shown = e.to_string();
        assert!(shown.contains(&format!("{file}:{line}:")), "{shown}");
    }

    #[test]
    fn bad_toml_names_file_and_line() {
        let (_d, e) = write_bad(
            "broken.toml",
            "# a comment\ntemplate = \"portrait of {subject}\"\nquality = \"unterminated\n",
        );
        assert_invalid(&e, "broken.toml", 3, "");
    }

    #[test]
    fn unknown_placeholder_names_file_and_line() {
        let (_d, e) = write_bad(
            "odd.toml",
            "quality = \"best\"\n\ntemplate = \"\"\"\nportrait of {subject},\n{lighting}\"\"\"\n",
        );
        assert_invalid(&e, "odd.toml", 5, "{lighting}");
    }

    #[test]
    fn missing_subject_names_file_and_line() {
        let (_d, e) = write_bad(
            "nosubj.toml",
            "\nquality = \"best\"\ntemplate = \"{quality}, a knight\"\n",
        );
        assert_invalid(&e, "nosubj.toml", 3, "{subject}");
    }

    #[test]
    fn unknown_key_and_missing_default() {
        let (_d, e) = write_bad(
            "typo.toml",
            "template = \"{subject}\"\nnegative = \"blurry\"\n",
        );
        assert_invalid(&e, "typo.toml", 2, "negative");
        let (_d, e) = write_bad(
            "brace.toml",
            "template = \"{subject}\"\nquality = \"a }\"\n",
        );
        assert_invalid(&e, "brace.toml", 2, "'}'");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fantasy.toml"), "template = \"{subject}\"").unwrap();
        assert!(matches!(
            PortraitTemplates::load_dir(dir.path()),
            Err(TemplateError::MissingDefault { .. })
        ));
        assert!(matches!(
            PortraitTemplates::load_dir(&dir.path().join("nope")),
            Err(TemplateError::Io { .. })
        ));
    }
}

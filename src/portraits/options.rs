//! The portrait service's inputs and outputs: per-request overrides ([`GenerateOptions`]), a
//! validated job waiting to run ([`PreparedPortrait`]), the result ([`PortraitOutcome`]) and the
//! art style -> model map ([`StyleModels`]) taken from `weights.toml`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::characters::PortraitRecord;
use crate::engine::request::ValidRequest;
use crate::registry::Registry;

/// Seed 001's regeneration strength range and default (`denoisingStrength`).
pub const MIN_REGENERATE_STRENGTH: f64 = 0.1;
pub const MAX_REGENERATE_STRENGTH: f64 = 0.9;
pub const DEFAULT_REGENERATE_STRENGTH: f64 = 0.2;
/// Longest `custom_prompt_additions` / `newPrompt`, in characters.
pub const MAX_ADDITIONS_CHARS: usize = 1000;

/// Per-request overrides; `None` takes the model's defaults (`weights.toml`), which fall back to
/// seed 001's (512x768, 25 steps, CFG 8, Euler a, hires fix x2 with the Latent upscaler at 0.4).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// A style from `prompts/` (default: `default`; regeneration: the current portrait's style).
    pub art_style: Option<String>,
    pub custom_prompt_additions: Option<String>,
    /// Appended to the template's negative prompt.
    pub negative_prompt: Option<String>,
    /// A model name the engine knows; default: the style's model.
    pub model: Option<String>,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    /// -1 or absent = random.
    pub seed: Option<i64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Hires fix on/off (ignored by regeneration, which never upscales).
    pub hires: Option<bool>,
    pub hr_scale: Option<f64>,
    pub hr_second_pass_steps: Option<usize>,
    pub hr_denoising_strength: Option<f64>,
}

/// How a portrait was painted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    #[serde(rename = "txt2img")]
    Txt2Img,
    /// Seed 001's regeneration: img2img from the current portrait.
    #[serde(rename = "img2img_consistency")]
    Img2ImgConsistency,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Txt2Img => "txt2img",
            Method::Img2ImgConsistency => "img2img_consistency",
        }
    }
}

/// A validated portrait job, ready for [`super::PortraitService::run`].
#[derive(Debug, Clone)]
pub struct PreparedPortrait {
    pub(crate) character_id: String,
    pub(crate) request: ValidRequest,
    pub(crate) method: Method,
    pub(crate) art_style: String,
    pub(crate) model: String,
    pub(crate) prompt: String,
    pub(crate) negative_prompt: String,
    pub(crate) parameters: Value,
    /// The portrait a regeneration starts from.
    pub(crate) source: Option<PortraitRecord>,
    pub(crate) denoising_strength: Option<f64>,
    pub(crate) expected_steps: usize,
}

impl PreparedPortrait {
    pub fn character_id(&self) -> &str {
        &self.character_id
    }
    pub fn method(&self) -> Method {
        self.method
    }
    pub fn art_style(&self) -> &str {
        &self.art_style
    }
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The final prompt sent to the engine.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }
    pub fn negative_prompt(&self) -> &str {
        &self.negative_prompt
    }
    /// The resolved seed (a random one is drawn at preparation).
    pub fn seed(&self) -> u64 {
        self.request.seeds.first().copied().unwrap_or_default()
    }
    /// Sampler, steps, CFG, size, seed, hires and denoise settings as recorded in history.
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }
    /// The portrait a regeneration starts from (`None` for txt2img).
    pub fn source_portrait(&self) -> Option<&PortraitRecord> {
        self.source.as_ref()
    }
    /// The img2img strength of a regeneration.
    pub fn denoising_strength(&self) -> Option<f64> {
        self.denoising_strength
    }
    /// How many progress callbacks (denoising steps over all passes) the job will report.
    pub fn expected_steps(&self) -> usize {
        self.expected_steps
    }
    /// The engine request (e.g. to inspect the init image in tests).
    pub fn request(&self) -> &ValidRequest {
        &self.request
    }
}

/// A finished portrait: recorded in history and current.
#[derive(Debug, Clone, Serialize)]
pub struct PortraitOutcome {
    pub record: PortraitRecord,
    /// The portrait that was current before (still in history).
    pub previous: Option<PortraitRecord>,
    pub prompt_used: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub parameters: Value,
    pub generation_time_ms: u64,
    pub art_style: String,
    pub model: String,
    /// "txt2img" or "img2img_consistency".
    pub method: &'static str,
}

/// Which model paints which art style (seed 001: realistic -> a photoreal checkpoint, fantasy /
/// anime / cartoon -> an illustration checkpoint), and each model's hires-fix preference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StyleModels {
    styles: BTreeMap<String, String>,
    hires_fix: BTreeMap<String, bool>,
}

impl StyleModels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `styles = [...]` of `weights.toml` and every model's `hires_fix` default, for the
    /// models in `served` (the ones the engine was started with); styles of other models fall
    /// back to the default model.
    pub fn from_registry(registry: &Registry, served: &[String]) -> Self {
        let mut m = Self::new();
        for (name, entry) in registry.models() {
            if !served.contains(name) {
                continue;
            }
            for style in &entry.styles {
                // Registry::model_for_style is the authority on which model owns a style.
                if let Some((owner, _)) = registry.model_for_style(style) {
                    m.styles.insert(style.to_lowercase(), owner.to_string());
                }
            }
            if let Some(h) = entry.defaults.hires_fix {
                m.hires_fix.insert(name.clone(), h);
            }
        }
        m
    }

    /// Maps `style` (case-insensitive) to `model`.
    pub fn with_style(mut self, style: &str, model: &str) -> Self {
        self.styles
            .insert(style.trim().to_lowercase(), model.to_string());
        self
    }

    /// Whether `model` paints with the hires fix by default.
    pub fn with_hires_fix(mut self, model: &str, on: bool) -> Self {
        self.hires_fix.insert(model.to_string(), on);
        self
    }

    pub fn model_for(&self, style: &str) -> Option<&str> {
        self.styles
            .get(&style.trim().to_lowercase())
            .map(String::as_str)
    }

    pub fn hires_fix(&self, model: &str) -> Option<bool> {
        self.hires_fix.get(model).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_models_from_the_repo_registry() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights.toml");
        let reg = Registry::load(&path).unwrap();
        let all: Vec<String> = reg.names().map(str::to_string).collect();
        let m = StyleModels::from_registry(&reg, &all);
        let realistic = m.model_for("Realistic").unwrap();
        let fantasy = m.model_for("fantasy").unwrap();
        assert_ne!(realistic, fantasy);
        assert_eq!(m.model_for("anime"), Some(fantasy));
        assert_eq!(
            m.hires_fix(fantasy),
            reg.get(fantasy).and_then(|e| e.defaults.hires_fix)
        );
        assert_eq!(m.model_for("no-such-style"), None);
        // Only served models take styles.
        let only_fantasy = StyleModels::from_registry(&reg, &[fantasy.to_string()]);
        assert_eq!(only_fantasy.model_for("fantasy"), Some(fantasy));
        assert_eq!(only_fantasy.model_for("realistic"), None);
    }
}

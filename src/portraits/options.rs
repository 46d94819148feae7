//! The portrait service's inputs and outputs: per-request overrides ([`GenerateOptions`]), a
//! validated job waiting to run ([`PreparedPortrait`]), the result ([`PortraitOutcome`]), the
//! art style -> model map ([`StyleModels`]) taken from `weights.toml`, and the per-device
//! defaults ([`device_defaults`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::PortraitError;
use crate::characters::PortraitRecord;
use crate::engine::{Defaults, ValidRequest};
use crate::registry::{Architecture, Family, Registry};

/// The regeneration guide's regeneration strength range and default (`denoisingStrength`).
pub const MIN_REGENERATE_STRENGTH: f64 = 0.1;
pub const MAX_REGENERATE_STRENGTH: f64 = 0.9;
pub const DEFAULT_REGENERATE_STRENGTH: f64 = 0.2;
/// Longest `custom_prompt_additions` / `newPrompt`, in characters.
pub const MAX_ADDITIONS_CHARS: usize = 1000;

/// Where portraits are painted, for the defaults: what finishes in reasonable time differs by
/// two orders of magnitude between a GPU and a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    Cpu,
    Gpu,
}

impl DeviceClass {
    /// The class of a `--device` value: "cpu", or "auto" in a build without a GPU backend, is
    /// the CPU; anything else a GPU.
    pub fn from_spec(spec: &str) -> DeviceClass {
        let spec = spec.trim().to_ascii_lowercase();
        let gpu_built = cfg!(feature = "cuda") || cfg!(feature = "metal");
        match spec.as_str() {
            "cpu" => DeviceClass::Cpu,
            "" | "auto" if !gpu_built => DeviceClass::Cpu,
            _ => DeviceClass::Gpu,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Cpu => "cpu",
            DeviceClass::Gpu => "gpu",
        }
    }
}

/// Refuses free text (prompt additions, a negative prompt) over [`MAX_ADDITIONS_CHARS`].
pub(super) fn check_text(field: &str, text: Option<&str>) -> Result<(), PortraitError> {
    let n = text.map_or(0, |t| t.chars().count());
    if n > MAX_ADDITIONS_CHARS {
        return Err(PortraitError::validation(
            field,
            format!("at most {MAX_ADDITIONS_CHARS} characters, got {n}"),
        ));
    }
    Ok(())
}

/// On a CPU, portraits default to at most this many pixels (512x512's), or the model's training
/// resolution when that is larger (SDXL's 1024x1024: at half its size SDXL paints broken
/// anatomy, so it keeps 832x1216 and costs minutes per step), keeping the model's aspect ratio:
/// an SD 1.5 step at 512x512 takes ~15 s on 2 cores, at 1024x1536 minutes.
pub const CPU_MAX_PIXELS: usize = 512 * 512;
/// ... and at most this many steps (Euler a converges well before the regeneration guide's 25).
pub const CPU_MAX_STEPS: usize = 20;

/// A model's portrait defaults on `device`: `model` (its `weights.toml` defaults over the
/// regeneration guide's) and its hires-fix preference (default on) unchanged on a GPU; on a
/// CPU no hires fix, at most [`CPU_MAX_STEPS`] steps and [`CPU_MAX_PIXELS`] pixels (so 512x768
/// becomes 416x624). Models whose defaults are already that cheap (SD-Turbo's 512x512 in one
/// step, the tiny test model) keep them. Explicit request values always win over these.
pub fn device_defaults(
    model: Defaults,
    hires: Option<bool>,
    device: DeviceClass,
    native_pixels: usize,
) -> (Defaults, bool) {
    if device == DeviceClass::Gpu {
        return (model, hires.unwrap_or(true));
    }
    let mut d = model;
    d.steps = d.steps.min(CPU_MAX_STEPS);
    let pixels = d.width * d.height;
    let cap = CPU_MAX_PIXELS.max(native_pixels);
    if pixels > cap {
        let scale = (cap as f64 / pixels as f64).sqrt();
        // Multiples of 8 (the latent grid), rounded down so the area stays under the cap.
        let side = |v: usize| (((v as f64 * scale) as usize) / 8 * 8).max(64);
        d.width = side(d.width);
        d.height = side(d.height);
    }
    (d, false)
}

/// Per-request overrides; `None` takes the model's defaults (`weights.toml`), which fall back to
/// The regeneration guide's (512x768, 25 steps, CFG 8, Euler a, hires fix x2 with the Latent upscaler at 0.4).
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
    /// CFG rescale 0-1 (for v-prediction models); default: the model's.
    pub guidance_rescale: Option<f64>,
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
    /// LoRAs for this portrait (`[{name, weight}]`, weight default 1), added to the
    /// character's pinned ones; for a name in both, this weight wins. `<lora:name:w>` tags in
    /// the prompt texts work too (the engine reads them).
    pub loras: Vec<crate::engine::LoraRef>,
    /// Embeddings this portrait requires, added to the character's pinned ones.
    pub embeddings: Vec<String>,
    /// "vae" or "taesd" (the family's TAESD: faster on a CPU); default: the server's `--decoder`.
    pub decoder: Option<String>,
}

/// How a portrait was painted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    #[serde(rename = "txt2img")]
    Txt2Img,
    /// The regeneration guide's regeneration: img2img from the current portrait.
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
    /// The same portrait with live previews every `n` steps (`None`: none).
    pub fn with_preview_every(mut self, n: Option<usize>) -> Self {
        self.request = self.request.with_preview_every(n);
        self
    }
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
        self.request.seeds().first().copied().unwrap_or_default()
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

/// Which model paints which art style (the regeneration guide: realistic -> a photoreal checkpoint, fantasy /
/// anime / cartoon -> an illustration checkpoint), and each model's hires-fix preference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StyleModels {
    styles: BTreeMap<String, String>,
    hires_fix: BTreeMap<String, bool>,
    families: BTreeMap<String, Family>,
}

impl StyleModels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `styles = [...]` of `weights.toml`, every model's `hires_fix` default and prompt
    /// family, for the models in `served` (the ones the engine was started with). A style
    /// goes to its served model of architecture `prefer`, else to another architecture's
    /// ([`Registry::style_model`]); styles no served model claims fall back to the default
    /// model.
    pub fn from_registry(registry: &Registry, served: &[String], prefer: Architecture) -> Self {
        let mut m = Self::new();
        let is_served = |n: &str| served.iter().any(|s| s == n);
        for style in registry.styles() {
            if let Some((owner, _)) = registry.style_model(style, prefer, is_served) {
                m.styles.insert(style.to_string(), owner.to_string());
            }
        }
        for (name, entry) in registry.models() {
            if !is_served(name) {
                continue;
            }
            if let Some(h) = entry.defaults.hires_fix {
                m.hires_fix.insert(name.clone(), h);
            }
            m.families.insert(name.clone(), entry.family);
        }
        m
    }

    /// Gives `model` a prompt family.
    pub fn with_family(mut self, model: &str, family: Family) -> Self {
        self.families.insert(model.to_string(), family);
        self
    }

    /// The prompt family of `model`, when the registry knows it (a bare path does not).
    pub fn family(&self, model: &str) -> Option<Family> {
        self.families.get(model).copied()
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
    fn a_gpu_keeps_the_regeneration_guide_and_a_cpu_gets_defaults_that_finish() {
        let guide = Defaults::default();
        let (gpu, gpu_hires) = device_defaults(guide.clone(), None, DeviceClass::Gpu, SD1);
        assert_eq!((gpu.clone(), gpu_hires), (guide.clone(), true));
        assert_eq!((gpu.width, gpu.height, gpu.steps), (512, 768, 25));

        let (cpu, cpu_hires) = device_defaults(guide.clone(), Some(true), DeviceClass::Cpu, SD1);
        assert!(!cpu_hires);
        assert!(cpu.width * cpu.height <= CPU_MAX_PIXELS, "{cpu:?}");
        assert!(cpu.steps <= CPU_MAX_STEPS && cpu.steps < guide.steps);
        assert_eq!(cpu.width % 8 + cpu.height % 8, 0);
        // Portrait aspect kept (2:3 within rounding).
        let aspect = cpu.height as f64 / cpu.width as f64;
        assert!((aspect - 1.5).abs() < 0.02, "{cpu:?}");
        assert_eq!(
            (cpu.sampler, cpu.cfg_scale),
            (guide.sampler, guide.cfg_scale)
        );

        // Cheap models keep their own defaults.
        let turbo = Defaults {
            sampler: "Euler a".into(),
            steps: 1,
            cfg_scale: 0.0,
            guidance_rescale: 0.0,
            width: 512,
            height: 512,
        };
        assert_eq!(
            device_defaults(turbo.clone(), Some(false), DeviceClass::Cpu, SD1),
            (turbo, false)
        );
    }

    const SD1: usize = 512 * 512;

    #[test]
    fn a_cpu_never_shrinks_a_model_below_its_training_resolution() {
        let sdxl = Defaults {
            steps: 28,
            width: 832,
            height: 1216,
            ..Defaults::default()
        };
        let (cpu, hires) =
            device_defaults(sdxl.clone(), Some(false), DeviceClass::Cpu, 1024 * 1024);
        assert_eq!((cpu.width, cpu.height, hires), (832, 1216, false));
        assert_eq!(cpu.steps, CPU_MAX_STEPS);
        // Bigger than SDXL's own area (a hires-sized default) still comes down to it.
        let huge = Defaults {
            width: 1536,
            height: 2304,
            ..sdxl
        };
        let (cpu, _) = device_defaults(huge, None, DeviceClass::Cpu, 1024 * 1024);
        assert!(cpu.width * cpu.height <= 1024 * 1024, "{cpu:?}");
        assert!(cpu.width * cpu.height > CPU_MAX_PIXELS, "{cpu:?}");
    }

    #[test]
    fn device_class_of_a_device_flag() {
        assert_eq!(DeviceClass::from_spec("cpu"), DeviceClass::Cpu);
        assert_eq!(DeviceClass::from_spec("CUDA:1"), DeviceClass::Gpu);
        assert_eq!(DeviceClass::from_spec("metal"), DeviceClass::Gpu);
        let auto = if cfg!(feature = "cuda") || cfg!(feature = "metal") {
            DeviceClass::Gpu
        } else {
            DeviceClass::Cpu
        };
        assert_eq!(DeviceClass::from_spec("auto"), auto);
    }

    #[test]
    fn style_models_from_the_repo_registry() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights.toml");
        let reg = Registry::load(&path).unwrap();
        let all: Vec<String> = reg.names().map(str::to_string).collect();
        let m = StyleModels::from_registry(&reg, &all, Architecture::Sd1);
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
        let only_fantasy =
            StyleModels::from_registry(&reg, &[fantasy.to_string()], Architecture::Sd1);
        assert_eq!(only_fantasy.model_for("fantasy"), Some(fantasy));
        assert_eq!(only_fantasy.model_for("realistic"), None);
        // The SD 1.5 map stays the default; SDXL preferred moves every style to SDXL models,
        // with their families.
        assert_eq!(m.model_for("fantasy"), Some("dreamshaper-8"));
        assert_eq!(m.family("dreamshaper-8"), Some(Family::Sd1));
        let xl = StyleModels::from_registry(&reg, &all, Architecture::Sdxl);
        assert_eq!(xl.model_for("anime"), Some("illustrious-xl"));
        assert_eq!(xl.model_for("realistic"), Some("realvis-xl-5"));
        assert_eq!(xl.family("illustrious-xl"), Some(Family::Illustrious));
        assert_eq!(xl.hires_fix("illustrious-xl"), Some(false));
    }
}

//! What a `weights.toml` entry says about a model beyond its files: its architecture, its
//! prompt family (which tags its portrait prompts get) and overrides of its scheduler config
//! (v-prediction models whose checkpoint does not say so).

use serde::Serialize;

/// The model family; the loader still reads the real shape from the model's own files, this
/// says what the entry is meant to be (and lets defaults be checked against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    Sd1,
    Sd2,
    Sdxl,
    /// SD 2.1-shaped, distilled for 1-4 steps without classifier-free guidance.
    SdTurbo,
    /// SDXL-shaped, distilled the same way (SDXL-Turbo: 512x512, 1-4 steps, no CFG).
    SdxlTurbo,
}

impl Architecture {
    pub const ALL: [Architecture; 5] = [
        Architecture::Sd1,
        Architecture::Sd2,
        Architecture::Sdxl,
        Architecture::SdTurbo,
        Architecture::SdxlTurbo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Sd1 => "sd1",
            Architecture::Sd2 => "sd2",
            Architecture::Sdxl => "sdxl",
            Architecture::SdTurbo => "sd-turbo",
            Architecture::SdxlTurbo => "sdxl-turbo",
        }
    }

    /// Pixels of the resolution the family was trained at: below it images fall apart, so a
    /// CPU's cheaper portrait defaults never shrink a model under it.
    pub fn native_pixels(self) -> usize {
        match self {
            Architecture::Sd1 | Architecture::SdTurbo | Architecture::SdxlTurbo => 512 * 512,
            Architecture::Sd2 => 768 * 768,
            Architecture::Sdxl => 1024 * 1024,
        }
    }

    /// Distilled for 1-4 steps without guidance (the defaults are checked against that).
    pub fn is_turbo(self) -> bool {
        matches!(self, Architecture::SdTurbo | Architecture::SdxlTurbo)
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The prompt family of a model: SD 1.x/2.x and SDXL base read natural captions with A1111
/// quality tags, while tag-trained SDXL fine-tunes want their own vocabulary (Pony's
/// `score_9, ...`, Illustrious' and NoobAI's danbooru quality tags). Picks the
/// `prompts/families/<family>.toml` tags of portrait prompts; families without a file keep the
/// style's own template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Sd1,
    Sd2,
    Sdxl,
    Pony,
    Illustrious,
    Noobai,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Sd1,
        Family::Sd2,
        Family::Sdxl,
        Family::Pony,
        Family::Illustrious,
        Family::Noobai,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
            Family::Pony => "pony",
            Family::Illustrious => "illustrious",
            Family::Noobai => "noobai",
        }
    }

    pub fn parse(name: &str) -> Option<Family> {
        let name = name.trim().to_ascii_lowercase();
        Family::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The family of a model of `arch` whose entry names none.
    pub fn of(arch: Architecture) -> Family {
        match arch {
            Architecture::Sd1 => Family::Sd1,
            Architecture::Sd2 | Architecture::SdTurbo => Family::Sd2,
            Architecture::Sdxl | Architecture::SdxlTurbo => Family::Sdxl,
        }
    }

    /// Whether a model of `arch` can be of this family (the fine-tune families are SDXL's).
    pub fn fits(self, arch: Architecture) -> bool {
        match self {
            Family::Pony | Family::Illustrious | Family::Noobai => arch == Architecture::Sdxl,
            other => other == Family::of(arch),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[models.NAME.scheduler]`: values that replace the model's own scheduler config, under
/// diffusers' names, for checkpoints that do not say them (A1111 reads a `v_pred` / `ztsnr` key
/// some single files carry; others need to be told).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SchedulerOverrides {
    /// "epsilon" or "v_prediction".
    pub prediction_type: Option<String>,
    /// Zero-terminal-SNR betas (NoobAI-style v-prediction models).
    pub rescale_betas_zero_snr: Option<bool>,
    /// "leading", "trailing" or "linspace".
    pub timestep_spacing: Option<String>,
}

impl SchedulerOverrides {
    pub const PREDICTION_TYPES: [&'static str; 2] = ["epsilon", "v_prediction"];
    pub const TIMESTEP_SPACINGS: [&'static str; 3] = ["leading", "trailing", "linspace"];

    pub fn is_empty(&self) -> bool {
        *self == SchedulerOverrides::default()
    }
}

//! AUTOMATIC1111's sampler and scheduler names: parsing (aliases, case-insensitive, a trailing
//! scheduler label split off as A1111 >= 1.9 does), the canonical names written to infotext, and
//! the lists `/sdapi/v1/samplers` and `/sdapi/v1/schedulers` return.

use std::fmt;

use serde::Serialize;

use crate::engine::error::{EngineError, Result};

/// The update rule of a sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    DpmPp2m,
    DpmPpSde,
    DpmPp2mSde,
    DpmPp2mSdeHeun,
    DpmPp3mSde,
    EulerA,
    Euler,
    Lms,
    Heun,
    Dpm2,
    Dpm2A,
    Restart,
    Ddim,
    UniPc,
    /// Latent consistency models (LCM-LoRA, LCM-distilled checkpoints).
    Lcm,
}

/// How the noise levels are spread over the steps (A1111's "Schedule type"), with A1111's
/// definitions (`modules/sd_schedulers.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SchedulerKind {
    /// The sampler's own schedule: diffusers' for the diffusers samplers (Karras, exponential or
    /// beta sigmas only if the model's scheduler config asks), A1111's default for the others.
    #[default]
    Automatic,
    Uniform,
    /// Karras et al. (2022) sigmas, rho = 7.
    Karras,
    Exponential,
    /// Polynomial in log sigma, rho = 1.
    Polyexponential,
    SgmUniform,
    KlOptimal,
    AlignYourSteps,
    Simple,
    Normal,
    Ddim,
    /// Beta(0.6, 0.6) quantiles (A1111's default alpha and beta).
    Beta,
}

/// A parsed sampler choice: the update rule and the noise schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SamplerSpec {
    pub kind: SamplerKind,
    pub scheduler: SchedulerKind,
}

/// One entry of `/sdapi/v1/samplers`; `options` holds A1111's option flags as strings, as its
/// API model does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SamplerInfo {
    pub name: String,
    pub aliases: Vec<String>,
    pub options: Vec<(String, String)>,
}

/// One entry of `/sdapi/v1/schedulers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerInfo {
    pub name: String,
    pub label: String,
    pub aliases: Vec<String>,
    pub default_rho: f64,
    pub need_inner_model: bool,
}

impl SamplerKind {
    /// Every sampler, in A1111's list order (its timestep samplers DDIM and UniPC, then LCM).
    pub const ALL: [SamplerKind; 15] = [
        SamplerKind::DpmPp2m,
        SamplerKind::DpmPpSde,
        SamplerKind::DpmPp2mSde,
        SamplerKind::DpmPp2mSdeHeun,
        SamplerKind::DpmPp3mSde,
        SamplerKind::EulerA,
        SamplerKind::Euler,
        SamplerKind::Lms,
        SamplerKind::Heun,
        SamplerKind::Dpm2,
        SamplerKind::Dpm2A,
        SamplerKind::Restart,
        SamplerKind::Ddim,
        SamplerKind::UniPc,
        SamplerKind::Lcm,
    ];

    /// The canonical A1111 name.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::DpmPp2m => "DPM++ 2M",
            SamplerKind::DpmPpSde => "DPM++ SDE",
            SamplerKind::DpmPp2mSde => "DPM++ 2M SDE",
            SamplerKind::DpmPp2mSdeHeun => "DPM++ 2M SDE Heun",
            SamplerKind::DpmPp3mSde => "DPM++ 3M SDE",
            SamplerKind::EulerA => "Euler a",
            SamplerKind::Euler => "Euler",
            SamplerKind::Lms => "LMS",
            SamplerKind::Heun => "Heun",
            SamplerKind::Dpm2 => "DPM2",
            SamplerKind::Dpm2A => "DPM2 a",
            SamplerKind::Restart => "Restart",
            SamplerKind::Ddim => "DDIM",
            SamplerKind::UniPc => "UniPC",
            SamplerKind::Lcm => "LCM",
        }
    }

    /// Other accepted names: A1111's aliases first, then k-diffusion's function names and the
    /// spellings other clients use.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            SamplerKind::DpmPp2m => &["k_dpmpp_2m", "dpmpp_2m", "sample_dpmpp_2m"],
            SamplerKind::DpmPpSde => &["k_dpmpp_sde", "dpmpp_sde", "sample_dpmpp_sde"],
            SamplerKind::DpmPp2mSde => &["k_dpmpp_2m_sde", "dpmpp_2m_sde", "sample_dpmpp_2m_sde"],
            SamplerKind::DpmPp2mSdeHeun => &["k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"],
            SamplerKind::DpmPp3mSde => &["k_dpmpp_3m_sde", "dpmpp_3m_sde", "sample_dpmpp_3m_sde"],
            SamplerKind::EulerA => &[
                "k_euler_a",
                "k_euler_ancestral",
                "euler_ancestral",
                "Euler Ancestral",
                "euler_a",
                "sample_euler_ancestral",
            ],
            SamplerKind::Euler => &["k_euler", "sample_euler"],
            SamplerKind::Lms => &["k_lms", "sample_lms"],
            SamplerKind::Heun => &["k_heun", "sample_heun"],
            SamplerKind::Dpm2 => &["k_dpm_2", "dpm_2", "sample_dpm_2"],
            SamplerKind::Dpm2A => &["k_dpm_2_a", "dpm_2_ancestral", "sample_dpm_2_ancestral"],
            SamplerKind::Restart => &["restart"],
            SamplerKind::Ddim => &[],
            SamplerKind::UniPc => &["uni_pc"],
            SamplerKind::Lcm => &["k_lcm", "sample_lcm"],
        }
    }

    /// What "Automatic" means for the samplers that have no diffusers counterpart: A1111's
    /// default schedule for them. `None`: the diffusers schedule (see `SchedulerKind::Automatic`).
    pub fn automatic_schedule(self) -> Option<SchedulerKind> {
        match self {
            SamplerKind::DpmPpSde
            | SamplerKind::Dpm2
            | SamplerKind::Dpm2A
            | SamplerKind::Restart => Some(SchedulerKind::Karras),
            SamplerKind::DpmPp2mSde | SamplerKind::DpmPp2mSdeHeun | SamplerKind::DpmPp3mSde => {
                Some(SchedulerKind::Exponential)
            }
            _ => None,
        }
    }

    /// A1111 runs these with one more step and drops the next-to-last sigma.
    pub fn discards_next_to_last_sigma(self) -> bool {
        matches!(
            self,
            SamplerKind::Dpm2 | SamplerKind::Dpm2A | SamplerKind::DpmPp3mSde
        )
    }

    /// A1111's option flags for this sampler, as its API lists them (values as strings).
    pub fn options(self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(s) = self.automatic_schedule() {
            out.push(("scheduler", s.name().to_string()));
        }
        if self.discards_next_to_last_sigma() {
            out.push(("discard_next_to_last_sigma", "True".to_string()));
        }
        if matches!(
            self,
            SamplerKind::Heun
                | SamplerKind::Dpm2
                | SamplerKind::Dpm2A
                | SamplerKind::DpmPpSde
                | SamplerKind::Restart
        ) {
            out.push(("second_order", "True".to_string()));
        }
        if matches!(
            self,
            SamplerKind::DpmPpSde
                | SamplerKind::DpmPp2mSde
                | SamplerKind::DpmPp2mSdeHeun
                | SamplerKind::DpmPp3mSde
        ) {
            out.push(("brownian_noise", "True".to_string()));
        }
        if self == SamplerKind::DpmPp2mSdeHeun {
            out.push(("solver_type", "heun".to_string()));
        }
        out
    }

    /// DDIM walks its own integer timesteps (A1111 ignores the schedule for it too).
    pub fn supports_scheduler(self) -> bool {
        !matches!(self, SamplerKind::Ddim)
    }
}

impl SchedulerKind {
    /// A1111's list, in its order. (A1111's experimental "Karras Exponential" is not offered.)
    pub const ALL: [SchedulerKind; 12] = [
        SchedulerKind::Automatic,
        SchedulerKind::Uniform,
        SchedulerKind::Karras,
        SchedulerKind::Exponential,
        SchedulerKind::Polyexponential,
        SchedulerKind::SgmUniform,
        SchedulerKind::KlOptimal,
        SchedulerKind::AlignYourSteps,
        SchedulerKind::Simple,
        SchedulerKind::Normal,
        SchedulerKind::Ddim,
        SchedulerKind::Beta,
    ];

    /// A1111's internal name ("karras").
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Automatic => "automatic",
            SchedulerKind::Uniform => "uniform",
            SchedulerKind::Karras => "karras",
            SchedulerKind::Exponential => "exponential",
            SchedulerKind::Polyexponential => "polyexponential",
            SchedulerKind::SgmUniform => "sgm_uniform",
            SchedulerKind::KlOptimal => "kl_optimal",
            SchedulerKind::AlignYourSteps => "align_your_steps",
            SchedulerKind::Simple => "simple",
            SchedulerKind::Normal => "normal",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Beta => "beta",
        }
    }

    /// A1111's label ("Karras"), written to infotext as "Schedule type".
    pub fn label(self) -> &'static str {
        match self {
            SchedulerKind::Automatic => "Automatic",
            SchedulerKind::Uniform => "Uniform",
            SchedulerKind::Karras => "Karras",
            SchedulerKind::Exponential => "Exponential",
            SchedulerKind::Polyexponential => "Polyexponential",
            SchedulerKind::SgmUniform => "SGM Uniform",
            SchedulerKind::KlOptimal => "KL Optimal",
            SchedulerKind::AlignYourSteps => "Align Your Steps",
            SchedulerKind::Simple => "Simple",
            SchedulerKind::Normal => "Normal",
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::Beta => "Beta",
        }
    }

    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            SchedulerKind::SgmUniform => &["SGMUniform"],
            _ => &[],
        }
    }

    /// A1111's `default_rho` (-1: the schedule has no rho).
    pub fn default_rho(self) -> f64 {
        match self {
            SchedulerKind::Karras => 7.0,
            SchedulerKind::Polyexponential => 1.0,
            _ => -1.0,
        }
    }

    /// Whether A1111 builds it from the model's training sigmas rather than sigma_min/max only.
    pub fn need_inner_model(self) -> bool {
        matches!(
            self,
            SchedulerKind::Uniform
                | SchedulerKind::SgmUniform
                | SchedulerKind::Simple
                | SchedulerKind::Normal
                | SchedulerKind::Ddim
                | SchedulerKind::Beta
        )
    }

    /// The spellings that select it: name, label and aliases.
    fn spellings(self) -> impl Iterator<Item = &'static str> {
        [self.name(), self.label()]
            .into_iter()
            .chain(self.aliases().iter().copied())
    }

    fn parse(word: &str) -> Option<Self> {
        let w = normalize(word);
        Self::ALL
            .into_iter()
            .find(|s| s.spellings().any(|n| normalize(n) == w))
    }
}

impl SamplerSpec {
    /// A spec; a scheduler the sampler cannot use is dropped, as A1111 ignores it for DDIM.
    pub fn new(kind: SamplerKind, scheduler: SchedulerKind) -> Self {
        let scheduler = if kind.supports_scheduler() {
            scheduler
        } else {
            SchedulerKind::Automatic
        };
        Self { kind, scheduler }
    }

    /// The name written to infotext and shown to users: "Euler a", "DPM++ 2M Karras",
    /// "Euler SGM Uniform" (A1111 reads a trailing schedule label off a sampler name).
    pub fn display_name(&self) -> String {
        match self.scheduler {
            SchedulerKind::Automatic => self.kind.name().to_string(),
            s => format!("{} {}", self.kind.name(), s.label()),
        }
    }
}

impl Default for SamplerSpec {
    /// "Euler a", the portrait default.
    fn default() -> Self {
        Self::new(SamplerKind::EulerA, SchedulerKind::Automatic)
    }
}

impl fmt::Display for SamplerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name())
    }
}

/// Lower case with runs of whitespace collapsed, so "  euler   A " finds "Euler a".
fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Legacy aliases (older A1111 lists) that name a sampler and a schedule at once.
const COMBINED_ALIASES: [(&str, SamplerKind, SchedulerKind); 11] = [
    ("k_dpmpp_2m_ka", SamplerKind::DpmPp2m, SchedulerKind::Karras),
    ("k_lms_ka", SamplerKind::Lms, SchedulerKind::Karras),
    ("k_dpm_2_ka", SamplerKind::Dpm2, SchedulerKind::Karras),
    ("k_dpm_2_a_ka", SamplerKind::Dpm2A, SchedulerKind::Karras),
    (
        "k_dpmpp_sde_ka",
        SamplerKind::DpmPpSde,
        SchedulerKind::Karras,
    ),
    (
        "k_dpmpp_2m_sde_ka",
        SamplerKind::DpmPp2mSde,
        SchedulerKind::Karras,
    ),
    (
        "k_dpmpp_2m_sde_heun_ka",
        SamplerKind::DpmPp2mSdeHeun,
        SchedulerKind::Karras,
    ),
    (
        "k_dpmpp_2m_sde_heun_exp",
        SamplerKind::DpmPp2mSdeHeun,
        SchedulerKind::Exponential,
    ),
    (
        "k_dpmpp_3m_sde_ka",
        SamplerKind::DpmPp3mSde,
        SchedulerKind::Karras,
    ),
    (
        "k_dpmpp_3m_sde_exp",
        SamplerKind::DpmPp3mSde,
        SchedulerKind::Exponential,
    ),
    (
        "k_dpmpp_2m_sde_exp",
        SamplerKind::DpmPp2mSde,
        SchedulerKind::Exponential,
    ),
];

fn lookup(name: &str) -> Option<(SamplerKind, Option<SchedulerKind>)> {
    let n = normalize(name);
    if let Some(kind) = SamplerKind::ALL
        .into_iter()
        .find(|k| normalize(k.name()) == n || k.aliases().iter().any(|a| normalize(a) == n))
    {
        return Some((kind, None));
    }
    COMBINED_ALIASES
        .into_iter()
        .find(|(alias, _, _)| *alias == n)
        .map(|(_, kind, sched)| (kind, Some(sched)))
}

/// A sampler name with a trailing schedule label or alias ("DPM++ 2M SDE Karras",
/// "Euler SGM Uniform"), split as A1111's `get_sampler_and_scheduler` does.
fn split_scheduler_suffix(name: &str) -> Option<(SamplerKind, SchedulerKind)> {
    let n = normalize(name);
    SchedulerKind::ALL.into_iter().find_map(|sched| {
        sched.spellings().find_map(|spelling| {
            let head = n.strip_suffix(&format!(" {}", normalize(spelling)))?;
            let (kind, implied) = lookup(head)?;
            Some((kind, implied.unwrap_or(sched)))
        })
    })
}

fn known_names() -> String {
    let mut names: Vec<String> = SamplerKind::ALL
        .iter()
        .map(|k| k.name().to_string())
        .collect();
    names.push(SamplerSpec::new(SamplerKind::DpmPp2m, SchedulerKind::Karras).display_name());
    names.join(", ")
}

/// `label (name)` for every scheduler, for error messages.
fn known_schedulers_text() -> String {
    SchedulerKind::ALL
        .iter()
        .map(|s| format!("{} ({})", s.label(), s.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses an A1111 sampler name and optional scheduler ("Schedule type"). A schedule label at
/// the end of the name ("DPM++ 2M Karras") wins over the `scheduler` argument, as in A1111;
/// an empty or missing scheduler means Automatic. An unknown scheduler is an error naming the
/// `scheduler` field and the accepted values, never a silent fallback.
pub fn parse_sampler(name: &str, scheduler: Option<&str>) -> Result<SamplerSpec> {
    let unknown = || EngineError::UnknownSampler {
        name: name.to_string(),
        known: known_names(),
    };
    let explicit = match scheduler.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(SchedulerKind::parse(s).ok_or_else(|| {
            EngineError::invalid(
                "scheduler",
                format!(
                    "unknown scheduler '{s}'; accepted: {}",
                    known_schedulers_text()
                ),
            )
        })?),
    };
    let (kind, from_name) = match lookup(name) {
        Some(found) => found,
        None => {
            let (kind, sched) = split_scheduler_suffix(name).ok_or_else(unknown)?;
            (kind, Some(sched))
        }
    };
    let scheduler = from_name.or(explicit).unwrap_or_default();
    Ok(SamplerSpec::new(kind, scheduler))
}

/// The samplers for `/sdapi/v1/samplers`.
pub fn known_samplers() -> Vec<SamplerInfo> {
    SamplerKind::ALL
        .iter()
        .map(|k| SamplerInfo {
            name: k.name().to_string(),
            aliases: k.aliases().iter().map(|a| a.to_string()).collect(),
            options: k
                .options()
                .into_iter()
                .map(|(key, v)| (key.to_string(), v))
                .collect(),
        })
        .collect()
}

/// The schedulers for `/sdapi/v1/schedulers`.
pub fn known_schedulers() -> Vec<SchedulerInfo> {
    SchedulerKind::ALL
        .iter()
        .map(|s| SchedulerInfo {
            name: s.name().to_string(),
            label: s.label().to_string(),
            aliases: s.aliases().iter().map(|a| a.to_string()).collect(),
            default_rho: s.default_rho(),
            need_inner_model: s.need_inner_model(),
        })
        .collect()
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod tests;

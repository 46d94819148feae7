//! AUTOMATIC1111's sampler and scheduler names: parsing (aliases, case-insensitive, a trailing
//! scheduler word split off as A1111 >= 1.9 does), the canonical names written to infotext, and
//! the lists `/sdapi/v1/samplers` and `/sdapi/v1/schedulers` return.

use std::fmt;

use serde::Serialize;

use crate::engine::error::{EngineError, Result};

/// The update rule of a sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    EulerA,
    Euler,
    Lms,
    Heun,
    Ddim,
    DpmPp2m,
    UniPc,
}

/// How the noise levels are spread over the steps (A1111's "Schedule type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SchedulerKind {
    /// The sampler's own schedule, with Karras sigmas only if the model's scheduler config asks.
    #[default]
    Automatic,
    /// Karras et al. (2022) sigmas, rho = 7.
    Karras,
}

/// A parsed sampler choice: the update rule and the noise schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SamplerSpec {
    pub kind: SamplerKind,
    pub scheduler: SchedulerKind,
}

/// One entry of `/sdapi/v1/samplers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SamplerInfo {
    pub name: String,
    pub aliases: Vec<String>,
}

/// One entry of `/sdapi/v1/schedulers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulerInfo {
    pub name: String,
    pub label: String,
    pub aliases: Vec<String>,
}

impl SamplerKind {
    /// Every sampler, in the order the API lists them.
    pub const ALL: [SamplerKind; 7] = [
        SamplerKind::EulerA,
        SamplerKind::Euler,
        SamplerKind::Lms,
        SamplerKind::Heun,
        SamplerKind::Ddim,
        SamplerKind::DpmPp2m,
        SamplerKind::UniPc,
    ];

    /// The canonical A1111 name.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::EulerA => "Euler a",
            SamplerKind::Euler => "Euler",
            SamplerKind::Lms => "LMS",
            SamplerKind::Heun => "Heun",
            SamplerKind::Ddim => "DDIM",
            SamplerKind::DpmPp2m => "DPM++ 2M",
            SamplerKind::UniPc => "UniPC",
        }
    }

    /// Other names clients use (A1111's k-diffusion names among them).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            SamplerKind::EulerA => &[
                "k_euler_a",
                "k_euler_ancestral",
                "euler_ancestral",
                "Euler Ancestral",
                "euler_a",
            ],
            SamplerKind::Euler => &["k_euler"],
            SamplerKind::Lms => &["k_lms"],
            SamplerKind::Heun => &["k_heun"],
            SamplerKind::Ddim => &[],
            SamplerKind::DpmPp2m => &["k_dpmpp_2m", "dpmpp_2m"],
            SamplerKind::UniPc => &[],
        }
    }

    /// DDIM walks its own integer timesteps; the others accept Karras sigmas.
    pub fn supports_scheduler(self) -> bool {
        !matches!(self, SamplerKind::Ddim)
    }
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 2] = [SchedulerKind::Automatic, SchedulerKind::Karras];

    /// A1111's internal name ("karras").
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Automatic => "automatic",
            SchedulerKind::Karras => "karras",
        }
    }

    /// A1111's label ("Karras"), written to infotext as "Schedule type".
    pub fn label(self) -> &'static str {
        match self {
            SchedulerKind::Automatic => "Automatic",
            SchedulerKind::Karras => "Karras",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        let w = normalize(word);
        Self::ALL
            .into_iter()
            .find(|s| w == s.name() || w == normalize(s.label()))
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

    /// The name written to infotext and shown to users: "Euler a", "DPM++ 2M Karras".
    pub fn display_name(&self) -> String {
        match self.scheduler {
            SchedulerKind::Automatic => self.kind.name().to_string(),
            SchedulerKind::Karras => format!("{} Karras", self.kind.name()),
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

/// Legacy aliases that name a sampler and a schedule at once.
const COMBINED_ALIASES: [(&str, SamplerKind, SchedulerKind); 2] = [
    ("k_dpmpp_2m_ka", SamplerKind::DpmPp2m, SchedulerKind::Karras),
    ("k_lms_ka", SamplerKind::Lms, SchedulerKind::Karras),
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

fn known_names() -> String {
    let mut names: Vec<String> = SamplerKind::ALL
        .iter()
        .map(|k| k.name().to_string())
        .collect();
    names.push(SamplerSpec::new(SamplerKind::DpmPp2m, SchedulerKind::Karras).display_name());
    names.join(", ")
}

/// Parses an A1111 sampler name and optional scheduler ("Schedule type"). A scheduler word at
/// the end of the name ("DPM++ 2M Karras") wins over the `scheduler` argument, as in A1111;
/// an empty or missing scheduler means Automatic.
pub fn parse_sampler(name: &str, scheduler: Option<&str>) -> Result<SamplerSpec> {
    let unknown = || EngineError::UnknownSampler {
        name: name.to_string(),
        known: known_names(),
    };
    let explicit = match scheduler.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(SchedulerKind::parse(s).ok_or_else(|| {
            let known: Vec<&str> = SchedulerKind::ALL.iter().map(|s| s.label()).collect();
            EngineError::invalid(
                "scheduler",
                format!(
                    "unknown scheduler '{s}'; known schedulers: {}",
                    known.join(", ")
                ),
            )
        })?),
    };
    let (kind, from_name) = match lookup(name) {
        Some(found) => found,
        None => {
            let trimmed = name.trim();
            let (head, tail) = trimmed
                .rsplit_once(char::is_whitespace)
                .ok_or_else(unknown)?;
            let sched = SchedulerKind::parse(tail).ok_or_else(unknown)?;
            let (kind, implied) = lookup(head).ok_or_else(unknown)?;
            (kind, Some(implied.unwrap_or(sched)))
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
            aliases: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: SamplerKind, scheduler: SchedulerKind) -> SamplerSpec {
        SamplerSpec { kind, scheduler }
    }

    #[test]
    fn names_and_aliases_parse_case_insensitively() {
        use SamplerKind::*;
        use SchedulerKind::*;
        for (name, want) in [
            ("Euler a", spec(EulerA, Automatic)),
            ("euler A", spec(EulerA, Automatic)),
            ("k_euler_a", spec(EulerA, Automatic)),
            ("Euler Ancestral", spec(EulerA, Automatic)),
            ("euler_ancestral", spec(EulerA, Automatic)),
            ("Euler", spec(Euler, Automatic)),
            ("K_EULER", spec(Euler, Automatic)),
            ("ddim", spec(Ddim, Automatic)),
            ("DPM++ 2M", spec(DpmPp2m, Automatic)),
            ("k_dpmpp_2m", spec(DpmPp2m, Automatic)),
            ("DPM++ 2M Karras", spec(DpmPp2m, Karras)),
            ("dpm++  2m   karras", spec(DpmPp2m, Karras)),
            ("k_dpmpp_2m_ka", spec(DpmPp2m, Karras)),
            ("Euler Karras", spec(Euler, Karras)),
            ("Heun", spec(Heun, Automatic)),
            ("LMS Karras", spec(Lms, Karras)),
            ("UniPC", spec(UniPc, Automatic)),
        ] {
            assert_eq!(parse_sampler(name, None).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn scheduler_argument_and_suffix_combine_like_a1111() {
        let p = parse_sampler("DPM++ 2M", Some("Karras")).unwrap();
        assert_eq!(p, parse_sampler("DPM++ 2M Karras", None).unwrap());
        assert_eq!(p.display_name(), "DPM++ 2M Karras");
        let p = parse_sampler("DPM++ 2M Karras", Some("Automatic")).unwrap();
        assert_eq!(p.scheduler, SchedulerKind::Karras);
        let p = parse_sampler("Euler a", Some("")).unwrap();
        assert_eq!(p.display_name(), "Euler a");
        assert_eq!(
            parse_sampler("Euler", Some("karras"))
                .unwrap()
                .display_name(),
            "Euler Karras"
        );
        // DDIM ignores schedules, as A1111 does.
        assert_eq!(
            parse_sampler("DDIM", Some("Karras"))
                .unwrap()
                .display_name(),
            "DDIM"
        );
    }

    #[test]
    fn unknown_sampler_lists_the_known_ones() {
        let err = parse_sampler("PLMS", None).unwrap_err();
        assert!(err.is_client_error());
        let text = err.to_string();
        assert!(text.contains("PLMS"));
        for name in [
            "Euler a",
            "Euler",
            "DDIM",
            "DPM++ 2M",
            "DPM++ 2M Karras",
            "Heun",
            "LMS",
        ] {
            assert!(text.contains(name), "{text} should list {name}");
        }
        assert!(matches!(
            parse_sampler("Euler Exponential", None),
            Err(EngineError::UnknownSampler { .. })
        ));
        assert!(matches!(
            parse_sampler("", None),
            Err(EngineError::UnknownSampler { .. })
        ));
        assert!(matches!(
            parse_sampler("Karras", None),
            Err(EngineError::UnknownSampler { .. })
        ));
    }

    #[test]
    fn unknown_scheduler_is_an_invalid_field() {
        let err = parse_sampler("Euler", Some("Polyexponential")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("scheduler") && text.contains("Karras"),
            "{text}"
        );
    }

    #[test]
    fn lists_cover_every_sampler_and_scheduler() {
        let samplers = known_samplers();
        assert_eq!(samplers.len(), SamplerKind::ALL.len());
        for info in &samplers {
            assert!(parse_sampler(&info.name, None).is_ok());
            for alias in &info.aliases {
                assert_eq!(
                    parse_sampler(alias, None).unwrap().kind,
                    parse_sampler(&info.name, None).unwrap().kind
                );
            }
        }
        let labels: Vec<String> = known_schedulers().into_iter().map(|s| s.label).collect();
        assert_eq!(labels, vec!["Automatic", "Karras"]);
    }
}

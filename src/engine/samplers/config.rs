//! The scheduler configuration diffusers writes (`scheduler/scheduler_config.json`) and the
//! training noise schedule (betas, cumulative alphas) every sampler derives from it.

use serde::Deserialize;

use crate::engine::error::{EngineError, Result};

/// Scheduler settings as diffusers names them. Every field has diffusers' default, and fields
/// we do not use (`_class_name`, `solver_order`, `thresholding`, ...) are ignored, so the config of
/// any diffusers scheduler (PNDM, DDIM, Euler, DPM-Solver, ...) can be read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// "linear" | "scaled_linear" | "squaredcos_cap_v2".
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    /// "epsilon" | "v_prediction" | "sample".
    pub prediction_type: String,
    /// "linspace" | "leading" | "trailing"; `None` means the sampler's own diffusers default.
    pub timestep_spacing: Option<String>,
    pub steps_offset: usize,
    /// DDIM only: clamp the predicted original sample to `±clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// DDIM only: the "previous" alpha of the last step is 1 instead of `alphas_cumprod[0]`.
    pub set_alpha_to_one: bool,
    pub rescale_betas_zero_snr: bool,
    /// `None`: no Karras sigmas unless the A1111 scheduler asks for them.
    pub use_karras_sigmas: Option<bool>,
    /// Exponential sigmas for the "Automatic" schedule (diffusers' `use_exponential_sigmas`).
    pub use_exponential_sigmas: Option<bool>,
    /// Beta(0.6, 0.6) sigmas for the "Automatic" schedule (diffusers' `use_beta_sigmas`).
    pub use_beta_sigmas: Option<bool>,
    /// "zero" | "sigma_min"; `None` = "zero".
    pub final_sigmas_type: Option<String>,
    /// DPM-Solver: first order on the last step(s) when there are fewer than 15 steps.
    pub lower_order_final: bool,
    /// DPM-Solver: always first order on the last step.
    pub euler_at_final: bool,
    /// DPM-Solver: drop the noisiest timesteps whose log-SNR is below this (`None` = -inf).
    pub lambda_min_clipped: Option<f64>,
    /// The diffusers scheduler class the config was written for ("LCMScheduler" selects
    /// diffusers' LCM timesteps for the LCM sampler's Automatic schedule).
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// LCM: the distillation schedule's length the inference timesteps are taken from (50).
    pub original_inference_steps: Option<usize>,
    /// LCM: the timestep multiplier of the consistency boundary conditions (10).
    pub timestep_scaling: Option<f64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".to_string(),
            trained_betas: None,
            prediction_type: "epsilon".to_string(),
            timestep_spacing: None,
            steps_offset: 0,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            rescale_betas_zero_snr: false,
            use_karras_sigmas: None,
            use_exponential_sigmas: None,
            use_beta_sigmas: None,
            final_sigmas_type: None,
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: None,
            class_name: None,
            original_inference_steps: None,
            timestep_scaling: None,
        }
    }
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prediction {
    Epsilon,
    Velocity,
    Sample,
}

/// How inference timesteps are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

/// The noise level of the last training timestep under zero-terminal-SNR betas (see
/// `SchedulerConfig::alphas_cumprod`).
pub(crate) const ZERO_SNR_SIGMA_MAX: f64 = 4096.0;

/// Largest training schedule we accept; real models use 1000.
const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// Schedule settings a user gives over the model's own `scheduler_config.json` (weights.toml's
/// `[models.NAME.scheduler]`, `--prediction-type`, `--zero-terminal-snr`), for checkpoints that
/// do not say how they were trained. None = the model's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleOverride {
    /// "epsilon" | "v_prediction".
    pub prediction_type: Option<String>,
    pub rescale_betas_zero_snr: Option<bool>,
    /// "linspace" | "leading" | "trailing".
    pub timestep_spacing: Option<String>,
}

impl SchedulerConfig {
    /// Parses a diffusers scheduler config. Python's `json.dumps` writes `-Infinity` for
    /// DPM-Solver's default `lambda_min_clipped`, which strict JSON rejects, so such tokens are
    /// read as `null` (the field's default) first.
    #[cfg(test)]
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(&python_json_to_strict(text))
            .map_err(|e| EngineError::Model(format!("scheduler config: {e}")))
    }

    /// Reads `scheduler/scheduler_config.json` (or any file holding such a config).
    #[cfg(test)]
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
        Self::from_json(&text)
    }

    /// Marks the model as a v-prediction model, as a single-file checkpoint's empty marker
    /// tensors say (`v_pred`, and `ztsnr` for zero-terminal-SNR training; A1111 and ComfyUI
    /// read the same keys). With `ztsnr` the betas are rescaled to zero terminal SNR and the
    /// timesteps spaced "trailing", which is what diffusers configs of such models (NoobAI's)
    /// say: a run must start at the last training timestep, the one with no signal left, or
    /// the images come out washed-out grey. A1111 (k-diffusion's uniform schedule, linear in t
    /// from 999 to 0) and ComfyUI ("normal" likewise; "simple" is exactly trailing) start there
    /// too; SDXL's own "leading" spacing would start at 876 (8 steps). Without `ztsnr` only
    /// the prediction type changes (v-prediction models with ordinary betas, SD 2.x-style).
    /// (A1111 and ComfyUI put the finite stand-in for the last alpha at 4.9e-8, sigma ~4519;
    /// this follows diffusers' 2^-24, sigma 4096.)
    pub(crate) fn apply_v_prediction(&mut self, ztsnr: bool) {
        self.prediction_type = "v_prediction".to_string();
        if ztsnr {
            self.rescale_betas_zero_snr = true;
            self.timestep_spacing = Some("trailing".to_string());
        }
    }

    /// Applies what the user set over what the model's files say.
    pub(crate) fn apply_override(&mut self, o: &ScheduleOverride) {
        if let Some(p) = &o.prediction_type {
            self.prediction_type = p.clone();
        }
        if let Some(z) = o.rescale_betas_zero_snr {
            self.rescale_betas_zero_snr = z;
        }
        if let Some(s) = &o.timestep_spacing {
            self.timestep_spacing = Some(s.clone());
        }
    }

    pub(crate) fn prediction(&self) -> Result<Prediction> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::Velocity),
            "sample" => Ok(Prediction::Sample),
            other => Err(EngineError::invalid(
                "prediction_type",
                format!("'{other}' is not one of epsilon, v_prediction, sample"),
            )),
        }
    }

    /// The configured spacing, or `default` (each diffusers scheduler has its own).
    pub(crate) fn spacing(&self, default: Spacing) -> Result<Spacing> {
        match self.timestep_spacing.as_deref() {
            None => Ok(default),
            Some("linspace") => Ok(Spacing::Linspace),
            Some("leading") => Ok(Spacing::Leading),
            Some("trailing") => Ok(Spacing::Trailing),
            Some(other) => Err(EngineError::invalid(
                "timestep_spacing",
                format!("'{other}' is not one of linspace, leading, trailing"),
            )),
        }
    }

    /// True when the schedule ends at sigma 0 (diffusers' `final_sigmas_type="zero"`).
    pub(crate) fn final_sigma_zero(&self) -> Result<bool> {
        match self.final_sigmas_type.as_deref() {
            None | Some("zero") => Ok(true),
            Some("sigma_min") => Ok(false),
            Some(other) => Err(EngineError::invalid(
                "final_sigmas_type",
                format!("'{other}' is not one of zero, sigma_min"),
            )),
        }
    }

    /// The training betas, validated, zero-SNR rescaled when configured.
    pub(crate) fn betas(&self) -> Result<Vec<f64>> {
        let betas = match &self.trained_betas {
            Some(b) => b.clone(),
            None => {
                let n = self.num_train_timesteps;
                if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
                    return Err(EngineError::invalid(
                        "num_train_timesteps",
                        format!("{n} is outside 2..={MAX_TRAIN_TIMESTEPS}"),
                    ));
                }
                for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                    if !(v > 0.0 && v < 1.0) {
                        return Err(EngineError::invalid(
                            field,
                            format!("{v} is outside (0, 1)"),
                        ));
                    }
                }
                match self.beta_schedule.as_str() {
                    "linear" => linspace(self.beta_start, self.beta_end, n),
                    "scaled_linear" => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                        .into_iter()
                        .map(|b| b * b)
                        .collect(),
                    "squaredcos_cap_v2" => cosine_betas(n),
                    other => {
                        return Err(EngineError::invalid(
                            "beta_schedule",
                            format!(
                                "'{other}' is not one of linear, scaled_linear, squaredcos_cap_v2"
                            ),
                        ))
                    }
                }
            }
        };
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&betas.len()) {
            return Err(EngineError::invalid(
                "trained_betas",
                format!("{} values; 2..={MAX_TRAIN_TIMESTEPS} needed", betas.len()),
            ));
        }
        if let Some(bad) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
            return Err(EngineError::invalid(
                "trained_betas",
                format!("beta {bad} is outside (0, 1)"),
            ));
        }
        Ok(if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        })
    }

    /// Cumulative products of `1 - beta`. With zero-SNR rescaling the last one is 0, which gives
    /// an infinite sigma; sigma-based samplers ask for a finite stand-in instead. diffusers puts
    /// `2^-24` there, whose sigma `sqrt(2^24 - 1)` its float32 arithmetic gives as exactly 4096
    /// (the float64 value, 4095.99988, rounds to the float32 below it). At that noise level the
    /// first step cancels numbers of size ~4096 x the noise, so one float32 ulp of sigma_max
    /// moves the result by ~1e-3; the stand-in here is `1 / (1 + 4096²)`, whose sigma is 4096.
    pub(crate) fn alphas_cumprod(&self, finite_last_sigma: bool) -> Result<Vec<f64>> {
        let mut acc = 1.0;
        let mut out: Vec<f64> = self
            .betas()?
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        if finite_last_sigma && self.rescale_betas_zero_snr {
            if let Some(last) = out.last_mut() {
                *last = 1.0 / (1.0 + ZERO_SNR_SIGMA_MAX * ZERO_SNR_SIGMA_MAX);
            }
        }
        Ok(out)
    }
}

/// numpy's `linspace(start, stop, num)` (endpoint included), value for value: `i * step + start`
/// with the last element set to `stop`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// The "squaredcos_cap_v2" (Nichol & Dhariwal cosine) betas, capped at 0.999.
fn cosine_betas(n: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// Lin et al. 2023: shift and scale sqrt(alphas_cumprod) so the last timestep has zero SNR while
/// the first keeps its value, then recover the betas.
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let sqrt_bar: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let first = sqrt_bar[0];
    let last = sqrt_bar[sqrt_bar.len() - 1];
    let bar: Vec<f64> = sqrt_bar
        .iter()
        .map(|s| ((s - last) * first / (first - last)).powi(2))
        .collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for w in bar.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

/// Rewrites the non-standard tokens Python's `json` module emits (`NaN`, `Infinity`,
/// `-Infinity`) to `null`, leaving string contents alone, so serde_json can read diffusers'
/// config files and reference data.
pub fn python_json_to_strict(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if c == '\\' {
                let mut it = rest.chars();
                out.push(c);
                it.next();
                if let Some(escaped) = it.next() {
                    out.push(escaped);
                    rest = &rest[c.len_utf8() + escaped.len_utf8()..];
                } else {
                    rest = &rest[c.len_utf8()..];
                }
                continue;
            }
            if c == '"' {
                in_string = false;
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_pndm_config() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-sd15/model/scheduler/scheduler_config.json"
        );
        let c = SchedulerConfig::from_file(std::path::Path::new(path)).unwrap();
        assert_eq!(c.beta_schedule, "scaled_linear");
        assert_eq!(c.steps_offset, 1);
        assert!(!c.set_alpha_to_one);
        assert_eq!(c.timestep_spacing, None);
        assert_eq!(c.prediction().unwrap(), Prediction::Epsilon);
    }

    #[test]
    fn defaults_are_diffusers_defaults() {
        let c = SchedulerConfig::from_json("{}").unwrap();
        assert_eq!(c.num_train_timesteps, 1000);
        assert_eq!(c.beta_start, 0.0001);
        assert_eq!(c.beta_end, 0.02);
        assert_eq!(c.beta_schedule, "linear");
        assert!(c.set_alpha_to_one);
        assert!(c.final_sigma_zero().unwrap());
    }

    #[test]
    fn python_infinity_is_read_as_null_outside_strings() {
        let text = r#"{"lambda_min_clipped": -Infinity, "x": "NaN \" Infinity", "y": [NaN]}"#;
        let strict = python_json_to_strict(text);
        assert_eq!(
            strict,
            r#"{"lambda_min_clipped": null, "x": "NaN \" Infinity", "y": [null]}"#
        );
        let c = SchedulerConfig::from_json(text).unwrap();
        assert_eq!(c.lambda_min_clipped, None);
    }

    #[test]
    fn linear_and_scaled_linear_betas_match_closed_forms() {
        let mut c = SchedulerConfig {
            num_train_timesteps: 11,
            beta_start: 0.01,
            beta_end: 0.11,
            ..Default::default()
        };
        let b = c.betas().unwrap();
        assert!((b[5] - 0.06).abs() < 1e-15 && (b[10] - 0.11).abs() < 1e-15);
        c.beta_schedule = "scaled_linear".into();
        let b = c.betas().unwrap();
        let mid = (0.01f64.sqrt() + 0.11f64.sqrt()) / 2.0;
        assert!((b[5] - mid * mid).abs() < 1e-15);
        let ac = c.alphas_cumprod(false).unwrap();
        assert!((ac[1] - (1.0 - b[0]) * (1.0 - b[1])).abs() < 1e-15);
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero_and_keeps_the_first_alpha() {
        let c = SchedulerConfig {
            beta_schedule: "scaled_linear".into(),
            beta_start: 0.00085,
            beta_end: 0.012,
            rescale_betas_zero_snr: true,
            ..Default::default()
        };
        let plain = SchedulerConfig {
            rescale_betas_zero_snr: false,
            ..c.clone()
        };
        let ac = c.alphas_cumprod(false).unwrap();
        let ac_plain = plain.alphas_cumprod(false).unwrap();
        assert!(ac[999].abs() < 1e-12);
        assert!((ac[0] - ac_plain[0]).abs() < 1e-12);
        let stand_in = c.alphas_cumprod(true).unwrap()[999];
        assert!((stand_in - 2f64.powi(-24)).abs() < 1e-14, "{stand_in}");
        assert_eq!(((1.0 - stand_in) / stand_in).sqrt() as f32, 4096.0);
    }

    #[test]
    fn reads_a_noobai_style_v_prediction_config() {
        let c = SchedulerConfig::from_json(
            r#"{"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
                "rescale_betas_zero_snr": true, "timestep_spacing": "trailing",
                "steps_offset": 1}"#,
        )
        .unwrap();
        assert_eq!(c.prediction().unwrap(), Prediction::Velocity);
        assert!(c.rescale_betas_zero_snr);
        assert_eq!(c.spacing(Spacing::Leading).unwrap(), Spacing::Trailing);
    }

    #[test]
    fn checkpoint_markers_set_v_prediction_and_zero_snr() {
        // SDXL base's config, as a single-file SDXL checkpoint gets it.
        let base = SchedulerConfig {
            beta_schedule: "scaled_linear".into(),
            beta_start: 0.00085,
            beta_end: 0.012,
            steps_offset: 1,
            timestep_spacing: Some("leading".into()),
            ..Default::default()
        };
        let mut v = base.clone();
        v.apply_v_prediction(false);
        assert_eq!(v.prediction().unwrap(), Prediction::Velocity);
        assert!(!v.rescale_betas_zero_snr);
        assert_eq!(v.timestep_spacing.as_deref(), Some("leading"));
        let mut z = base.clone();
        z.apply_v_prediction(true);
        assert_eq!(z.prediction().unwrap(), Prediction::Velocity);
        assert!(z.rescale_betas_zero_snr);
        assert_eq!(z.spacing(Spacing::Leading).unwrap(), Spacing::Trailing);
        // The rest of the model's schedule is kept.
        assert_eq!(
            (z.beta_start, z.steps_offset),
            (base.beta_start, base.steps_offset)
        );
        let last = z.alphas_cumprod(true).unwrap()[999];
        assert_eq!(((1.0 - last) / last).sqrt() as f32, 4096.0);
    }

    #[test]
    fn bad_values_name_their_field() {
        let c = SchedulerConfig {
            beta_schedule: "cubic".into(),
            ..Default::default()
        };
        assert!(c.betas().unwrap_err().to_string().contains("beta_schedule"));
        let c = SchedulerConfig {
            prediction_type: "flow".into(),
            ..Default::default()
        };
        assert!(c
            .prediction()
            .unwrap_err()
            .to_string()
            .contains("prediction_type"));
        let c = SchedulerConfig {
            trained_betas: Some(vec![0.1]),
            ..Default::default()
        };
        assert!(c.betas().unwrap_err().to_string().contains("trained_betas"));
        let c = SchedulerConfig {
            timestep_spacing: Some("random".into()),
            ..Default::default()
        };
        assert!(c
            .spacing(Spacing::Linspace)
            .unwrap_err()
            .to_string()
            .contains("timestep_spacing"));
    }
}

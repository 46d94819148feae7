//! LCM (latent consistency models, used with LCM-LoRA and LCM-distilled checkpoints): A1111's
//! "LCM" sampler (`modules/sd_samplers_lcm.py`) and diffusers' `LCMScheduler`.
//!
//! Both evaluate the model on the distillation schedule's timesteps only (50 of the 1000,
//! `t = 20 i + 19`), turn its prediction into the consistency function's output
//! `c_out·x0 + c_skip·x` (boundary conditions with the timestep scaled by 10), and re-noise that
//! to the next step's level with the step's fresh noise (none after the last step). They differ
//! in which timesteps a run visits:
//! - A1111 (the Automatic schedule, and every A1111 schedule type): sigmas from the 50-entry
//!   table (Automatic = its uniform schedule, `linspace` in the table's index), each evaluated
//!   at the table timestep nearest in log sigma; the sample lives in k-diffusion's
//!   `x0 + sigma·eps` form, so `c_skip` multiplies that.
//! - diffusers (Automatic when the model's scheduler config is an `LCMScheduler`'s):
//!   `floor(linspace(0, 50, steps, endpoint=False))` indices into the table from the top,
//!   on the variance-preserving sample. At one step both evaluate t = 999 alone.

use candle_core::Tensor;

use super::names::SchedulerKind;
use super::noise_schedules::{a1111_sigmas, train_sigmas, TrainSigmas};
use super::ops::lin;
use super::stepper::{need, Evaluation, Level, Setup, Stepper, Update};
use crate::engine::error::{EngineError, Result};

/// The update rule: the consistency output, re-noised to the next evaluation's level.
pub(crate) struct Lcm {
    timesteps: Vec<f64>,
    /// The level to re-noise to after each step; `None` where the run ends (sigma 0).
    next: Vec<Option<Level>>,
    timestep_scaling: f64,
}

pub(crate) type LcmSampler = Stepper<Lcm>;

/// diffusers' `get_scalings_for_boundary_condition_discrete` (A1111's `get_scaled_out`):
/// `(c_skip, c_out)` at `timestep`, with `sigma_data = 0.5`.
pub(crate) fn boundary_scalings(timestep: f64, timestep_scaling: f64) -> (f64, f64) {
    let sigma_data2 = 0.25;
    let scaled = timestep * timestep_scaling;
    let c_skip = sigma_data2 / (scaled * scaled + sigma_data2);
    let c_out = scaled / (scaled * scaled + sigma_data2).sqrt();
    (c_skip, c_out)
}

impl Update for Lcm {
    const SEQUENTIAL: bool = false;

    fn needs_step_noise(&self) -> bool {
        true
    }

    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let (c_skip, c_out) = boundary_scalings(self.timesteps[e.step], self.timestep_scaling);
        let denoised = lin(&[(&e.x0, c_out), (&e.x, c_skip)])?;
        match self.next[e.step] {
            None => Ok(denoised),
            Some(level) => level.add_noise(&denoised, need(e.noise.as_ref(), "LCM")?),
        }
    }
}

/// The training timestep of each entry of the distillation table, lowest first:
/// A1111's `timesteps - 1 - x * skip_steps` read from the top (19, 39, ..., 999 for 50 of 1000).
fn table_timesteps(num_train: usize, original: usize) -> Vec<usize> {
    let k = num_train / original;
    (0..original)
        .map(|i| num_train - 1 - k * (original - 1 - i))
        .collect()
}

impl LcmSampler {
    pub(crate) fn new(setup: &Setup) -> Result<Self> {
        let config = setup.config;
        let ac = config.alphas_cumprod(true)?;
        let num_train = ac.len();
        let original = config.original_inference_steps.unwrap_or(50);
        if !(1..=num_train).contains(&original) {
            return Err(EngineError::invalid(
                "original_inference_steps",
                format!("{original} is outside 1..={num_train} (the training timesteps)"),
            ));
        }
        let table = table_timesteps(num_train, original);
        let scaling = config.timestep_scaling.unwrap_or(10.0);
        let diffusers = setup.scheduler == SchedulerKind::Automatic
            && config.class_name.as_deref() == Some("LCMScheduler");
        if diffusers {
            diffusers_plan(setup, &ac, &table, scaling)
        } else {
            a1111_plan(setup, &ac, &table, scaling)
        }
    }
}

/// diffusers' `LCMScheduler.set_timesteps` and `step`, on the variance-preserving sample.
fn diffusers_plan(setup: &Setup, ac: &[f64], table: &[usize], scaling: f64) -> Result<LcmSampler> {
    let (steps, original) = (setup.steps, table.len());
    if steps > original {
        return Err(EngineError::invalid(
            "steps",
            format!("{steps} is more than LCM's {original} distillation timesteps (original_inference_steps)"),
        ));
    }
    let stride = original as f64 / steps as f64;
    let timesteps: Vec<f64> = (0..steps)
        .map(|i| table[original - 1 - (i as f64 * stride).floor() as usize] as f64)
        .collect();
    // diffusers keeps alphas_cumprod in float32.
    let level = |t: f64| {
        let a = ac[t as usize] as f32;
        Level::AlphaSigma(f64::from(a.sqrt()), f64::from((1.0 - a).sqrt()))
    };
    let levels: Vec<Level> = timesteps.iter().map(|t| level(*t)).collect();
    let next = (0..steps)
        .map(|i| timesteps.get(i + 1).map(|t| level(*t)))
        .collect();
    let rule = Lcm {
        timesteps: timesteps.clone(),
        next,
        timestep_scaling: scaling,
    };
    let prediction = setup.config.prediction()?;
    Ok(Stepper::assemble(timesteps, levels, prediction, 1.0, rule))
}

/// A1111's `LCMCompVisDenoiser` and `sample_lcm`: the schedule type's sigmas over the
/// 50-entry table, each evaluated at the table timestep nearest in log sigma.
fn a1111_plan(setup: &Setup, ac: &[f64], table: &[usize], scaling: f64) -> Result<LcmSampler> {
    let all = train_sigmas(ac);
    let table_sigmas: Vec<f64> = table.iter().map(|t| all[*t] as f32 as f64).collect();
    let log_table: Vec<f64> = table_sigmas.iter().map(|s| s.ln()).collect();
    let train = TrainSigmas::new(table_sigmas);
    let mut sigmas = a1111_sigmas(setup.scheduler, setup.steps, &train);
    sigmas.iter_mut().for_each(|s| *s = *s as f32 as f64);
    let evaluations = sigmas.len() - 1;
    let timesteps: Vec<f64> = sigmas[..evaluations]
        .iter()
        .map(|s| table[nearest_entry(s.ln(), &log_table)] as f64)
        .collect();
    let levels = sigmas[..evaluations]
        .iter()
        .map(|s| Level::Sigma(*s))
        .collect();
    let next = sigmas[1..]
        .iter()
        .map(|s| (*s > 0.0).then_some(Level::Sigma(*s)))
        .collect();
    let rule = Lcm {
        timesteps: timesteps.clone(),
        next,
        timestep_scaling: scaling,
    };
    let prediction = setup.config.prediction()?;
    Ok(Stepper::assemble(
        timesteps, levels, prediction, sigmas[0], rule,
    ))
}

/// A1111's `sigma_to_t` index: the table entry nearest in log sigma. A sigma halfway between
/// two entries in log (an odd step count's middle step lands there) is a tie that A1111's
/// float32 `argmin` resolves to the first, lower entry; float64 rounding here could pick either,
/// so distances within `TIE` count as equal and the lower entry wins.
fn nearest_entry(log_sigma: f64, log_table: &[f64]) -> usize {
    const TIE: f64 = 1e-6;
    let mut best = (0, f64::INFINITY);
    for (j, l) in log_table.iter().enumerate() {
        let d = (log_sigma - l).abs();
        if d < best.1 - TIE {
            best = (j, d);
        }
    }
    best.0
}

#[cfg(test)]
#[path = "lcm_tests.rs"]
mod tests;

//! Samplers (diffusers-equivalent schedulers and k-diffusion samplers under AUTOMATIC1111
//! names) and A1111's noise schedules.
//!
//! A sampler is built per job for a number of steps; the pipeline calls it step by step.
//! Schedules (timesteps, sigmas) are computed in f64 exactly as diffusers computes them for the
//! same `scheduler_config`; the update rules are diffusers' (Euler, Euler ancestral, DDIM,
//! DPM-Solver++ 2M, Heun, LMS, UniPC) applied with candle tensor ops. The samplers diffusers
//! lacks (DPM2, DPM2 a, DPM++ SDE / 2M SDE / 3M SDE, Restart) follow k-diffusion on A1111's
//! schedules. LCM is A1111's (diffusers' `LCMScheduler` for models whose config names it). Every A1111 schedule type can be combined with every sampler but DDIM.

mod beta_dist;
mod config;
mod ddim;
mod dpmpp;
mod euler;
mod heun;
mod kdiffusion;
mod kplan;
mod lcm;
mod lms;
mod names;
mod noise_schedules;
mod ops;
mod schedule;
mod stepper;
mod unipc;

#[cfg(test)]
mod exactness_tests;
#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod schedule_parity_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod zero_snr_tests;

use candle_core::Tensor;

use super::error::{EngineError, Result};

pub use config::python_json_to_strict;
pub use config::{ScheduleOverride, SchedulerConfig};
#[cfg(test)]
pub use names::SchedulerKind;
pub use names::{known_samplers, known_schedulers, parse_sampler, SamplerKind, SamplerSpec};

/// Most steps a job may ask for (A1111's UI limit).
pub const MAX_STEPS: usize = 150;

/// One denoising schedule and its update rule, built per job.
///
/// Contract with the pipeline:
/// - `timesteps()[i]` is what the UNet receives at step `i` (fractional for sigma-based samplers).
/// - latents start as `noise * init_noise_sigma()` (txt2img) or `add_noise(init, noise, start)`
///   (img2img, `start = t_start`), then for `i in start..steps`:
///   `eps = unet(scale_model_input(x, i), timesteps()[i])`, with CFG applied by the pipeline, and
///   `x = step(eps, i, x, noise)` where `noise` is `Some(standard normal like x)` exactly when
///   `needs_step_noise()` (drawn on every step, the last one included).
/// - multistep history counts only the steps actually taken, so an img2img run starting at
///   `start > 0` behaves as diffusers does after `set_begin_index`.
pub trait Sampler: Send {
    fn timesteps(&self) -> &[f64];
    fn init_noise_sigma(&self) -> f64;
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;
    fn needs_step_noise(&self) -> bool;
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;

    /// Model evaluations per nominal step: 1, except Heun (2), whose `timesteps()` interleave
    /// as diffusers' `HeunDiscreteScheduler` does (`2 * steps - 1` entries, the last step being
    /// a plain Euler step to sigma 0). The denoising loop therefore runs over
    /// `start_index(t_start)..timesteps().len()`, which is `t_start..steps` for every other
    /// sampler.
    fn order(&self) -> usize {
        1
    }

    /// Index into `timesteps()` where a run that skips the first `t_start` nominal steps (img2img)
    /// begins; also the `step` to pass to `add_noise`.
    fn start_index(&self, t_start: usize) -> usize {
        t_start * self.order()
    }
}

/// Builds the sampler `spec` names for `steps` steps of the model whose scheduler is `config`.
/// With `SchedulerKind::Automatic`, the diffusers samplers use Karras (or exponential, beta)
/// sigmas only if `config` says so, and the k-diffusion samplers A1111's default for them;
/// any other schedule is A1111's.
pub fn build_sampler(
    spec: &SamplerSpec,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Sampler>> {
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(EngineError::invalid(
            "steps",
            format!("{steps} is outside 1..={MAX_STEPS}"),
        ));
    }
    let train = config
        .trained_betas
        .as_ref()
        .map_or(config.num_train_timesteps, Vec::len);
    if steps > train {
        return Err(EngineError::invalid(
            "steps",
            format!("{steps} is more than the model's {train} training timesteps"),
        ));
    }
    let setup = stepper::Setup {
        config,
        steps,
        scheduler: spec.scheduler,
    };
    Ok(match spec.kind {
        SamplerKind::Euler => Box::new(euler::EulerSampler::new(&setup, false)?),
        SamplerKind::EulerA => Box::new(euler::EulerSampler::new(&setup, true)?),
        SamplerKind::Ddim => Box::new(ddim::DdimSampler::new(&setup)?),
        SamplerKind::DpmPp2m => Box::new(dpmpp::DpmppSampler::new(&setup)?),
        SamplerKind::Heun => Box::new(heun::HeunSampler::new(&setup)?),
        SamplerKind::Lms => Box::new(lms::LmsSampler::new(&setup)?),
        SamplerKind::UniPc => Box::new(unipc::UniPcSampler::new(&setup)?),
        SamplerKind::Lcm => Box::new(lcm::LcmSampler::new(&setup)?),
        SamplerKind::Dpm2
        | SamplerKind::Dpm2A
        | SamplerKind::DpmPpSde
        | SamplerKind::DpmPp2mSde
        | SamplerKind::DpmPp2mSdeHeun
        | SamplerKind::DpmPp3mSde
        | SamplerKind::Restart => Box::new(kdiffusion::KSampler::new(&setup, spec.kind)?),
    })
}

/// The first nominal step of an img2img run: `steps - floor(steps * strength)` (diffusers'
/// `t_start`). `strength` must lie in (0, 1] and leave at least one step to run.
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(EngineError::invalid(
            "denoising_strength",
            format!("{strength} is outside (0, 1]"),
        ));
    }
    let run = (steps as f64 * strength).floor() as usize;
    if run == 0 {
        return Err(EngineError::invalid(
            "denoising_strength",
            format!(
                "{strength} leaves no step of {steps} to run; at least {:.4} is needed",
                1.0 / steps.max(1) as f64
            ),
        ));
    }
    Ok(steps - run.min(steps))
}

//! What the variance-preserving multistep samplers (DPM-Solver++ 2M, UniPC) share: diffusers'
//! multistep schedule, samples of the form `alpha_t x0 + sigma_t eps` (no input scaling, unit
//! initial noise), the data prediction, and the rule that steps come one after another. Each
//! sampler supplies only its update rule.

use candle_core::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::names::SchedulerKind;
use super::ops::{self, alpha_sigma, check_next, check_step, lin};
use super::schedule::{multistep_schedule, SigmaSchedule};
use super::Sampler;
use crate::engine::error::Result;

/// The schedule and bookkeeping every VP multistep sampler has.
pub(crate) struct VpState {
    pub schedule: SigmaSchedule,
    pub prediction: Prediction,
    last_step: Option<usize>,
}

/// A multistep update rule: the next sample from `x` (f32) and its data prediction `x0`.
pub(crate) trait VpUpdate: Send {
    fn update(&mut self, state: &VpState, x: Tensor, x0: Tensor, step: usize) -> Result<Tensor>;
}

/// A VP multistep sampler: the shared state and its update rule.
pub(crate) struct VpMultistep<U> {
    pub state: VpState,
    pub rule: U,
}

impl<U: VpUpdate> VpMultistep<U> {
    /// diffusers' multistep schedule for `config` (linspace spacing unless configured).
    pub(crate) fn build(
        config: &SchedulerConfig,
        steps: usize,
        scheduler: SchedulerKind,
        lambda_min_clipped: Option<f64>,
        rule: U,
    ) -> Result<Self> {
        let spacing = config.spacing(Spacing::Linspace)?;
        let schedule = multistep_schedule(
            config,
            spacing,
            steps,
            scheduler,
            config.final_sigma_zero()?,
            lambda_min_clipped,
        )?;
        Ok(Self {
            state: VpState {
                schedule,
                prediction: config.prediction()?,
                last_step: None,
            },
            rule,
        })
    }
}

impl<U: VpUpdate> Sampler for VpMultistep<U> {
    fn timesteps(&self) -> &[f64] {
        &self.state.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.state.schedule.timesteps.len())?;
        Ok(sample.clone())
    }

    fn needs_step_noise(&self) -> bool {
        false
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(step, self.state.schedule.timesteps.len())?;
        check_next(step, self.state.last_step)?;
        let dtype = sample.dtype();
        let x = ops::f32(sample)?;
        let out = ops::f32(model_output)?;
        let (alpha, sigma) = alpha_sigma(self.state.schedule.sigmas[step]);
        let x0 = ops::x0_at_alpha_sigma(self.state.prediction, &out, &x, alpha, sigma)?;
        let prev = self.rule.update(&self.state, x, x0, step)?;
        self.state.last_step = Some(step);
        Ok(prev.to_dtype(dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.state.schedule.timesteps.len())?;
        let (a, s) = alpha_sigma(self.state.schedule.sigmas[step]);
        lin(&[(original, a), (noise, s)])
    }
}

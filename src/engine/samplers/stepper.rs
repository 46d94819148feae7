//! The one implementation of `Sampler`: what every sampler shares (the step bookkeeping, the
//! UNet input scaling, the data prediction, `add_noise`, f32 arithmetic) around the update rule
//! each sampler module supplies, and the schedule setup the rules build on.

use candle_core::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::names::SchedulerKind;
use super::ops::{self, check_next, check_step, lin};
use super::schedule::{multistep_schedule, sigma_schedule, SigmaSchedule};
use super::Sampler;
use crate::engine::error::{EngineError, Result};

/// How the sample at one evaluation is made of the data `x0` and the noise `eps`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    /// k-diffusion's `x = x0 + sigma·eps`; the UNet sees `x / sqrt(sigma² + 1)`.
    Sigma(f64),
    /// The variance-preserving `x = alpha·x0 + sigma·eps`, which the UNet sees as it is.
    AlphaSigma(f64, f64),
}

impl Level {
    fn model_input(self, sample: &Tensor) -> Result<Tensor> {
        match self {
            Level::Sigma(sigma) => ops::scale_by_sigma(sample, sigma),
            Level::AlphaSigma(..) => Ok(sample.clone()),
        }
    }

    fn x0(self, prediction: Prediction, out: &Tensor, x: &Tensor) -> Result<Tensor> {
        match self {
            Level::Sigma(sigma) => ops::x0_at_sigma(prediction, out, x, sigma),
            Level::AlphaSigma(a, s) => ops::x0_at_alpha_sigma(prediction, out, x, a, s),
        }
    }

    pub(crate) fn add_noise(self, original: &Tensor, noise: &Tensor) -> Result<Tensor> {
        match self {
            Level::Sigma(sigma) => Ok((original + noise.affine(sigma, 0.0)?)?),
            Level::AlphaSigma(a, s) => lin(&[(original, a), (noise, s)]),
        }
    }
}

/// One UNet evaluation as an update rule receives it, all in f32.
pub(crate) struct Evaluation {
    pub step: usize,
    /// The sample the UNet was evaluated at.
    pub x: Tensor,
    /// The UNet's output (after CFG).
    pub out: Tensor,
    /// The data prediction from the two.
    pub x0: Tensor,
    /// The step's standard normal, when `needs_step_noise`.
    pub noise: Option<Tensor>,
}

/// A sampler's update rule: the next sample from one evaluation.
pub(crate) trait Update: Send {
    /// Whether steps must come one after another (the rule keeps a history).
    const SEQUENTIAL: bool = true;

    fn needs_step_noise(&self) -> bool {
        false
    }

    /// See `Sampler::order`.
    fn order(&self) -> usize {
        1
    }

    /// See `Sampler::start_index`.
    fn start_index(&self, t_start: usize) -> usize {
        t_start * self.order()
    }

    fn update(&mut self, eval: Evaluation) -> Result<Tensor>;
}

/// A sampler: per evaluation its timestep and noise level, and the update rule.
pub(crate) struct Stepper<U> {
    timesteps: Vec<f64>,
    levels: Vec<Level>,
    prediction: Prediction,
    init_noise_sigma: f64,
    last_step: Option<usize>,
    pub rule: U,
}

impl<U: Update> Stepper<U> {
    /// `levels[i]` is the noise level of the sample at evaluation `i`, one per timestep.
    pub(crate) fn assemble(
        timesteps: Vec<f64>,
        levels: Vec<Level>,
        prediction: Prediction,
        init_noise_sigma: f64,
        rule: U,
    ) -> Self {
        debug_assert_eq!(timesteps.len(), levels.len());
        Self {
            timesteps,
            levels,
            prediction,
            init_noise_sigma,
            last_step: None,
            rule,
        }
    }

    fn level(&self, step: usize) -> Result<Level> {
        check_step(step, self.timesteps.len())?;
        Ok(self.levels[step])
    }
}

impl<U: Update> Sampler for Stepper<U> {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        self.level(step)?.model_input(sample)
    }

    fn needs_step_noise(&self) -> bool {
        self.rule.needs_step_noise()
    }

    fn order(&self) -> usize {
        self.rule.order()
    }

    fn start_index(&self, t_start: usize) -> usize {
        self.rule.start_index(t_start)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let level = self.level(step)?;
        if U::SEQUENTIAL {
            check_next(step, self.last_step)?;
        }
        let dtype = sample.dtype();
        let x = ops::f32(sample)?;
        let out = ops::f32(model_output)?;
        let x0 = level.x0(self.prediction, &out, &x)?;
        let noise = noise.map(ops::f32).transpose()?;
        let next = self.rule.update(Evaluation {
            step,
            x,
            out,
            x0,
            noise,
        })?;
        self.last_step = Some(step);
        Ok(next.to_dtype(dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        self.level(step)?.add_noise(original, noise)
    }
}

/// `noise`, or an error naming the sampler that needs it.
pub(crate) fn need<'a>(noise: Option<&'a Tensor>, name: &str) -> Result<&'a Tensor> {
    noise.ok_or_else(|| {
        EngineError::invalid(
            "noise",
            format!("{name} needs a noise tensor on every step"),
        )
    })
}

/// What a sampler is built from: the model's scheduler config, the step count and the
/// schedule type asked for.
pub(crate) struct Setup<'a> {
    pub config: &'a SchedulerConfig,
    pub steps: usize,
    pub scheduler: SchedulerKind,
}

impl Setup<'_> {
    /// diffusers' sigma schedule of the Euler-type samplers (linspace unless configured) and
    /// the initial noise sigma that goes with it.
    pub(crate) fn sigmas(&self, final_zero: bool) -> Result<(SigmaSchedule, f64)> {
        let spacing = self.config.spacing(Spacing::Linspace)?;
        let schedule =
            sigma_schedule(self.config, spacing, self.steps, self.scheduler, final_zero)?;
        let init_noise_sigma = ops::sigma_init_noise(spacing, &schedule.sigmas);
        Ok((schedule, init_noise_sigma))
    }

    /// An Euler-type sampler on `sigmas(final_zero)`, one evaluation per step; the rule is made
    /// from the schedule's sigmas.
    pub(crate) fn sigma_stepper<U: Update>(
        &self,
        final_zero: bool,
        rule: impl FnOnce(Vec<f64>) -> U,
    ) -> Result<Stepper<U>> {
        let (schedule, init_noise_sigma) = self.sigmas(final_zero)?;
        self.on_sigmas(schedule, init_noise_sigma, rule)
    }

    /// A sampler in k-diffusion's form evaluating at `schedule.timesteps`, the sample at each
    /// evaluation at the noise level of the same index in `schedule.sigmas` (which may be
    /// longer); the rule is made from those sigmas.
    pub(crate) fn on_sigmas<U: Update>(
        &self,
        schedule: SigmaSchedule,
        init_noise_sigma: f64,
        rule: impl FnOnce(Vec<f64>) -> U,
    ) -> Result<Stepper<U>> {
        let SigmaSchedule { timesteps, sigmas } = schedule;
        let levels = sigmas[..timesteps.len()]
            .iter()
            .map(|s| Level::Sigma(*s))
            .collect();
        let prediction = self.config.prediction()?;
        let rule = rule(sigmas);
        let stepper = Stepper::assemble(timesteps, levels, prediction, init_noise_sigma, rule);
        Ok(stepper)
    }

    /// A variance-preserving multistep sampler (DPM-Solver++ 2M, UniPC) on diffusers'
    /// multistep schedule (linspace unless configured): samples `alpha_t x0 + sigma_t eps`,
    /// unscaled input, unit initial noise. The rule is made from the schedule.
    pub(crate) fn vp_multistep<U: Update>(
        &self,
        lambda_min_clipped: Option<f64>,
        rule: impl FnOnce(SigmaSchedule) -> U,
    ) -> Result<Stepper<U>> {
        let spacing = self.config.spacing(Spacing::Linspace)?;
        let final_zero = self.config.final_sigma_zero()?;
        let (config, steps, scheduler) = (self.config, self.steps, self.scheduler);
        let schedule = multistep_schedule(
            config,
            spacing,
            steps,
            scheduler,
            final_zero,
            lambda_min_clipped,
        )?;
        let levels = schedule.sigmas[..schedule.timesteps.len()]
            .iter()
            .map(|s| {
                let (a, s) = ops::alpha_sigma(*s);
                Level::AlphaSigma(a, s)
            })
            .collect();
        let ts = schedule.timesteps.clone();
        Ok(Stepper::assemble(
            ts,
            levels,
            config.prediction()?,
            1.0,
            rule(schedule),
        ))
    }
}

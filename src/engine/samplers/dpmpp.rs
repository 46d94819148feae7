//! DPM++ 2M: diffusers' `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`,
//! `solver_type="midpoint"`, `solver_order=2` (what AUTOMATIC1111's "DPM++ 2M" is).

use candle_core::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::names::SchedulerKind;
use super::ops::{self, alpha_sigma, check_next, check_step, lambda, lin};
use super::schedule::{multistep_schedule, SigmaSchedule};
use super::Sampler;
use crate::engine::error::Result;

/// Below this many steps the last step drops to first order (diffusers' `lower_order_final`).
const LOWER_ORDER_BELOW: usize = 15;

pub(crate) struct DpmppSampler {
    schedule: SigmaSchedule,
    prediction: Prediction,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    /// The data prediction of the previous step taken.
    previous_x0: Option<Tensor>,
    last_step: Option<usize>,
}

impl DpmppSampler {
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        scheduler: SchedulerKind,
    ) -> Result<Self> {
        let spacing = config.spacing(Spacing::Linspace)?;
        let schedule = multistep_schedule(
            config,
            spacing,
            steps,
            scheduler,
            config.final_sigma_zero()?,
            config.lambda_min_clipped,
        )?;
        Ok(Self {
            // A1111 schedules define their own end, so look at it rather than the config.
            final_zero: schedule.sigmas.last() == Some(&0.0),
            schedule,
            prediction: config.prediction()?,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            previous_x0: None,
            last_step: None,
        })
    }
}

impl Sampler for DpmppSampler {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.schedule.timesteps.len())?;
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
        let n = self.schedule.timesteps.len();
        check_step(step, n)?;
        check_next(step, self.last_step)?;
        let dtype = sample.dtype();
        let x = ops::f32(sample)?;
        let out = ops::f32(model_output)?;
        let sigmas = &self.schedule.sigmas;
        let (s0, s_next) = (sigmas[step], sigmas[step + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(s0);
        let (alpha_t, sigma_t) = alpha_sigma(s_next);
        let x0 = ops::x0_at_alpha_sigma(self.prediction, &out, &x, alpha_s0, sigma_s0)?;

        // The last step is first order for stability (and must be when it lands on sigma 0).
        // diffusers' `lower_order_second` only turns third order into second, so it does not
        // apply at order 2.
        let short = self.lower_order_final && n < LOWER_ORDER_BELOW;
        let first_order_final = step == n - 1 && (self.euler_at_final || short || self.final_zero);
        let h = lambda(s_next) - lambda(s0);
        // alpha_t * (e^-h - 1); at sigma 0 (h = inf) this is -1 and the step lands on x0.
        let phi = alpha_t * ((-h).exp() - 1.0);
        let ratio = sigma_t / sigma_s0;
        let prev = match &self.previous_x0 {
            Some(x0_prev) if !first_order_final => {
                // Second order (midpoint): D1 extrapolates the data prediction in lambda.
                let s1 = sigmas[step - 1];
                let r0 = (lambda(s0) - lambda(s1)) / h;
                let d1 = ((&x0 - x0_prev)? / r0)?;
                lin(&[(&x, ratio), (&x0, -phi), (&d1, -0.5 * phi)])?
            }
            _ => lin(&[(&x, ratio), (&x0, -phi)])?,
        };
        self.previous_x0 = Some(x0);
        self.last_step = Some(step);
        Ok(prev.to_dtype(dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.schedule.timesteps.len())?;
        let (a, s) = alpha_sigma(self.schedule.sigmas[step]);
        lin(&[(original, a), (noise, s)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sd() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            steps_offset: 1,
            ..Default::default()
        }
    }

    fn value(t: &Tensor) -> f64 {
        t.to_vec1::<f32>().unwrap()[0] as f64
    }

    /// Closed forms written in alpha/sigma terms (not lambda): first order is
    /// `x_t = (σ_t/σ_s) x + α_t (1 - σ_t α_s / (σ_s α_t)) x0`.
    #[test]
    fn first_then_second_order_match_closed_forms() {
        let mut s = DpmppSampler::new(&sd(), 20, SchedulerKind::Automatic).unwrap();
        let sig = s.schedule.sigmas.clone();
        let vp = |k: f64| (1.0 / (k * k + 1.0).sqrt(), k / (k * k + 1.0).sqrt());
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.6f32], &dev).unwrap();
        let e0 = Tensor::new(&[0.2f32], &dev).unwrap();
        let (a0, g0) = vp(sig[0]);
        let (a1, g1) = vp(sig[1]);
        let x0_0 = (0.6 - g0 * 0.2) / a0;
        let want1 = g1 / g0 * 0.6 + a1 * (1.0 - g1 * a0 / (g0 * a1)) * x0_0;
        let x1 = s.step(&e0, 0, &x, None).unwrap();
        assert!((value(&x1) - want1).abs() < 1e-5);

        let e1 = Tensor::new(&[-0.3f32], &dev).unwrap();
        let (a2, g2) = vp(sig[2]);
        let x0_1 = (value(&x1) - g1 * -0.3) / a1;
        let l = |a: f64, g: f64| (a / g).ln();
        let h = l(a2, g2) - l(a1, g1);
        let r0 = (l(a1, g1) - l(a0, g0)) / h;
        let c = a2 * (1.0 - g2 * a1 / (g1 * a2));
        let want2 = g2 / g1 * value(&x1) + c * x0_1 + 0.5 * c * (x0_1 - x0_0) / r0;
        let x2 = s.step(&e1, 1, &x1, None).unwrap();
        assert!((value(&x2) - want2).abs() < 1e-4);
        // Skipping a step would corrupt the history.
        assert!(s.step(&e1, 3, &x2, None).is_err());
    }

    #[test]
    fn final_step_lands_on_the_data_prediction() {
        let mut s = DpmppSampler::new(&sd(), 4, SchedulerKind::Automatic).unwrap();
        let dev = Device::Cpu;
        let x = Tensor::new(&[1.0f32], &dev).unwrap();
        let e = Tensor::new(&[0.5f32], &dev).unwrap();
        let mut cur = x;
        for i in 0..3 {
            cur = s.step(&e, i, &cur, None).unwrap();
        }
        let (a, g) = alpha_sigma(s.schedule.sigmas[3]);
        let want = (value(&cur) - g * 0.5) / a;
        let last = s.step(&e, 3, &cur, None).unwrap();
        assert!((value(&last) - want).abs() < 1e-5);
    }

    #[test]
    fn img2img_start_is_first_order_and_add_noise_is_variance_preserving() {
        let mut s = DpmppSampler::new(&sd(), 10, SchedulerKind::Automatic).unwrap();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.8f32], &dev).unwrap();
        let eps = Tensor::new(&[-0.5f32], &dev).unwrap();
        let xt = s.add_noise(&x0, &eps, 4).unwrap();
        let (a, g) = alpha_sigma(s.schedule.sigmas[4]);
        assert!((value(&xt) - (a * 0.8 - g * 0.5)).abs() < 1e-6);
        // The exact eps makes a first-order step land on add_noise at the next sigma.
        let next = s.step(&eps, 4, &xt, None).unwrap();
        let want = s.add_noise(&x0, &eps, 5).unwrap();
        assert!((value(&next) - value(&want)).abs() < 1e-5);
    }
}

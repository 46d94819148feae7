//! Heun's second-order method: diffusers' `HeunDiscreteScheduler`. Each step but the last
//! evaluates the UNet twice, so timesteps and sigmas are interleaved (see `Sampler::order`).

use candle_core::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::names::SchedulerKind;
use super::ops::{self, check_next, check_step};
use super::schedule::sigma_schedule;
use super::Sampler;
use crate::engine::error::{EngineError, Result};

/// The Euler predictor's results, kept for the corrector evaluation.
struct Predictor {
    derivative: Tensor,
    dt: f64,
    sample: Tensor,
}

pub(crate) struct HeunSampler {
    /// `[t0, t1, t1, t2, t2, ..., t(n-1), t(n-1)]`: `2n - 1` evaluations.
    timesteps: Vec<f64>,
    /// `[s0, s1, s1, ..., s(n-1), s(n-1), 0]`: `2n` entries.
    sigmas: Vec<f64>,
    prediction: Prediction,
    init_noise_sigma: f64,
    predictor: Option<Predictor>,
    last_step: Option<usize>,
}

impl HeunSampler {
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        scheduler: SchedulerKind,
    ) -> Result<Self> {
        let spacing = config.spacing(Spacing::Linspace)?;
        let base = sigma_schedule(config, spacing, steps, scheduler, true)?;
        let n = base.timesteps.len();
        let mut timesteps = Vec::with_capacity(2 * n);
        let mut sigmas = Vec::with_capacity(2 * n + 1);
        timesteps.push(base.timesteps[0]);
        sigmas.push(base.sigmas[0]);
        for i in 1..n {
            timesteps.extend([base.timesteps[i]; 2]);
            sigmas.extend([base.sigmas[i]; 2]);
        }
        sigmas.push(base.sigmas[n]);
        Ok(Self {
            init_noise_sigma: ops::sigma_init_noise(spacing, &base.sigmas),
            timesteps,
            sigmas,
            prediction: config.prediction()?,
            predictor: None,
            last_step: None,
        })
    }
}

impl Sampler for HeunSampler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        ops::scale_by_sigma(sample, self.sigmas[step])
    }

    fn needs_step_noise(&self) -> bool {
        false
    }

    fn order(&self) -> usize {
        2
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        check_next(step, self.last_step)?;
        // Even indices are predictor (Euler) evaluations, odd ones correctors.
        if step.is_multiple_of(2) != self.predictor.is_none() {
            return Err(EngineError::invalid(
                "step",
                format!("Heun step {step} is out of phase; runs start at an even index"),
            ));
        }
        let dtype = sample.dtype();
        let x = ops::f32(sample)?;
        let out = ops::f32(model_output)?;
        let prev = match self.predictor.take() {
            None => {
                let (sigma, sigma_next) = (self.sigmas[step], self.sigmas[step + 1]);
                let x0 = ops::x0_at_sigma(self.prediction, &out, &x, sigma)?;
                let derivative = ((&x - &x0)? / sigma)?;
                let dt = sigma_next - sigma;
                let prev = (&x + derivative.affine(dt, 0.0)?)?;
                self.predictor = Some(Predictor {
                    derivative,
                    dt,
                    sample: x,
                });
                prev
            }
            Some(p) => {
                // The corrector evaluates at the predicted point, whose sigma is sigmas[step].
                let sigma_next = self.sigmas[step];
                let x0 = ops::x0_at_sigma(self.prediction, &out, &x, sigma_next)?;
                let derivative = ((&x - &x0)? / sigma_next)?;
                let mean = ((p.derivative + derivative)? / 2.0)?;
                (p.sample + mean.affine(p.dt, 0.0)?)?
            }
        };
        self.last_step = Some(step);
        Ok(prev.to_dtype(dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        Ok((original + noise.affine(self.sigmas[step], 0.0)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn value(t: &Tensor) -> f64 {
        t.to_vec1::<f32>().unwrap()[0] as f64
    }

    #[test]
    fn interleaves_and_averages_the_two_slopes() {
        let cfg = SchedulerConfig {
            beta_schedule: "scaled_linear".into(),
            beta_start: 0.00085,
            beta_end: 0.012,
            ..Default::default()
        };
        let mut s = HeunSampler::new(&cfg, 4, SchedulerKind::Automatic).unwrap();
        assert_eq!(s.timesteps().len(), 7);
        assert_eq!(s.timesteps()[1], s.timesteps()[2]);
        assert_eq!(s.start_index(2), 4);
        let (s0, s1) = (s.sigmas[0], s.sigmas[1]);
        let dev = Device::Cpu;
        let x = Tensor::new(&[1.0f32], &dev).unwrap();
        let e1 = Tensor::new(&[0.4f32], &dev).unwrap();
        let mid = s.step(&e1, 0, &x, None).unwrap();
        assert!((value(&mid) - (1.0 + 0.4 * (s1 - s0))).abs() < 1e-5);
        let e2 = Tensor::new(&[0.2f32], &dev).unwrap();
        let out = s.step(&e2, 1, &mid, None).unwrap();
        // Epsilon prediction: both derivatives are the eps values themselves.
        assert!((value(&out) - (1.0 + 0.3 * (s1 - s0))).abs() < 1e-5);
        // Index 2 is a predictor step again; calling it twice is out of phase.
        let _ = s.step(&e1, 2, &out, None).unwrap();
        assert!(s.step(&e1, 3, &out, None).is_ok());
        let mut fresh = HeunSampler::new(&cfg, 4, SchedulerKind::Automatic).unwrap();
        assert!(fresh.step(&e1, 1, &x, None).is_err());
    }
}

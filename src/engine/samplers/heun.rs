//! Heun's second-order method: diffusers' `HeunDiscreteScheduler`. Each step but the last
//! evaluates the UNet twice, so timesteps and sigmas are interleaved (see `Sampler::order`).

use candle_core::Tensor;

use super::schedule::SigmaSchedule;
use super::stepper::{Evaluation, Setup, Stepper, Update};
use crate::engine::error::{EngineError, Result};

/// The Euler predictor's results, kept for the corrector evaluation.
struct Predictor {
    derivative: Tensor,
    dt: f64,
    sample: Tensor,
}

pub(crate) struct Heun {
    /// `[s0, s1, s1, ..., s(n-1), s(n-1), 0]`: `2n` entries, one per evaluation and the last.
    sigmas: Vec<f64>,
    predictor: Option<Predictor>,
}

pub(crate) type HeunSampler = Stepper<Heun>;

impl HeunSampler {
    pub(crate) fn new(setup: &Setup) -> Result<Self> {
        let (base, init_noise_sigma) = setup.sigmas(true)?;
        let n = base.timesteps.len();
        // `[t0, t1, t1, t2, t2, ..., t(n-1), t(n-1)]`: `2n - 1` evaluations.
        let mut timesteps = Vec::with_capacity(2 * n);
        let mut sigmas = Vec::with_capacity(2 * n + 1);
        timesteps.push(base.timesteps[0]);
        sigmas.push(base.sigmas[0]);
        for i in 1..n {
            timesteps.extend([base.timesteps[i]; 2]);
            sigmas.extend([base.sigmas[i]; 2]);
        }
        sigmas.push(base.sigmas[n]);
        let interleaved = SigmaSchedule { timesteps, sigmas };
        setup.on_sigmas(interleaved, init_noise_sigma, |sigmas| Heun {
            sigmas,
            predictor: None,
        })
    }
}

impl Update for Heun {
    fn order(&self) -> usize {
        2
    }

    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let Evaluation { step, x, x0, .. } = e;
        // Even indices are predictor (Euler) evaluations, odd ones correctors.
        if step.is_multiple_of(2) != self.predictor.is_none() {
            return Err(EngineError::invalid(
                "step",
                format!("Heun step {step} is out of phase; runs start at an even index"),
            ));
        }
        Ok(match self.predictor.take() {
            None => {
                let (sigma, sigma_next) = (self.sigmas[step], self.sigmas[step + 1]);
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
                let derivative = ((&x - &x0)? / self.sigmas[step])?;
                let mean = ((p.derivative + derivative)? / 2.0)?;
                (p.sample + mean.affine(p.dt, 0.0)?)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::samplers::config::SchedulerConfig;
    use crate::engine::samplers::test_support::{sd, setup, value};
    use crate::engine::samplers::Sampler;
    use candle_core::Device;

    #[test]
    fn interleaves_and_averages_the_two_slopes() {
        let cfg = SchedulerConfig {
            steps_offset: 0,
            ..sd()
        };
        let mut s = HeunSampler::new(&setup(&cfg, 4)).unwrap();
        assert_eq!(s.timesteps().len(), 7);
        assert_eq!(s.timesteps()[1], s.timesteps()[2]);
        assert_eq!(s.start_index(2), 4);
        let (s0, s1) = (s.rule.sigmas[0], s.rule.sigmas[1]);
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
        let mut fresh = HeunSampler::new(&setup(&cfg, 4)).unwrap();
        assert!(fresh.step(&e1, 1, &x, None).is_err());
    }
}

//! Euler and Euler ancestral ("Euler a"): diffusers' `EulerDiscreteScheduler` (no churn) and
//! `EulerAncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::names::SchedulerKind;
use super::ops::{self, check_step};
use super::schedule::{sigma_schedule, SigmaSchedule};
use super::Sampler;
use crate::engine::error::{EngineError, Result};

/// Euler's method on the probability-flow ODE in sigma; the ancestral variant steps down to
/// `sigma_down` and adds fresh noise of size `sigma_up` so the marginal noise level is right.
pub(crate) struct EulerSampler {
    schedule: SigmaSchedule,
    prediction: Prediction,
    init_noise_sigma: f64,
    ancestral: bool,
}

impl EulerSampler {
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        scheduler: SchedulerKind,
        ancestral: bool,
    ) -> Result<Self> {
        let spacing = config.spacing(Spacing::Linspace)?;
        // diffusers' ancestral scheduler always ends at sigma 0.
        let final_zero = ancestral || config.final_sigma_zero()?;
        let schedule = sigma_schedule(config, spacing, steps, scheduler, final_zero)?;
        Ok(Self {
            init_noise_sigma: ops::sigma_init_noise(spacing, &schedule.sigmas),
            schedule,
            prediction: config.prediction()?,
            ancestral,
        })
    }
}

/// `(sigma_up, sigma_down)` for an ancestral step from `from` to `to`.
pub(crate) fn ancestral_sigmas(from: f64, to: f64) -> (f64, f64) {
    let up = (to * to * (from * from - to * to) / (from * from))
        .max(0.0)
        .sqrt();
    let down = (to * to - up * up).max(0.0).sqrt();
    (up, down)
}

impl Sampler for EulerSampler {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.schedule.timesteps.len())?;
        ops::scale_by_sigma(sample, self.schedule.sigmas[step])
    }

    fn needs_step_noise(&self) -> bool {
        self.ancestral
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(step, self.schedule.timesteps.len())?;
        let dtype = sample.dtype();
        let x = ops::f32(sample)?;
        let out = ops::f32(model_output)?;
        let sigma = self.schedule.sigmas[step];
        let sigma_next = self.schedule.sigmas[step + 1];
        let x0 = ops::x0_at_sigma(self.prediction, &out, &x, sigma)?;
        let derivative = ((&x - &x0)? / sigma)?;
        let prev = if self.ancestral {
            let noise = noise.ok_or_else(|| {
                EngineError::invalid("noise", "Euler a needs a noise tensor on every step")
            })?;
            let (up, down) = ancestral_sigmas(sigma, sigma_next);
            let moved = (&x + derivative.affine(down - sigma, 0.0)?)?;
            (moved + ops::f32(noise)?.affine(up, 0.0)?)?
        } else {
            (&x + derivative.affine(sigma_next - sigma, 0.0)?)?
        };
        Ok(prev.to_dtype(dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.schedule.timesteps.len())?;
        let sigma = self.schedule.sigmas[step];
        Ok((original + noise.affine(sigma, 0.0)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sd15() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            steps_offset: 1,
            ..Default::default()
        }
    }

    fn close(a: &Tensor, b: &[f32], tol: f32) {
        let a = a.to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn euler_step_is_x_plus_eps_times_dsigma() {
        // With epsilon prediction the derivative is eps itself: x' = x + eps * (s_next - s).
        let mut s = EulerSampler::new(&sd15(), 8, SchedulerKind::Automatic, false).unwrap();
        let (s0, s1) = (s.schedule.sigmas[2], s.schedule.sigmas[3]);
        let dev = Device::Cpu;
        let x = Tensor::new(&[1.0f32, -2.0], &dev).unwrap();
        let eps = Tensor::new(&[0.5f32, 0.25], &dev).unwrap();
        let got = s.step(&eps, 2, &x, None).unwrap();
        let d = (s1 - s0) as f32;
        close(&got, &[1.0 + 0.5 * d, -2.0 + 0.25 * d], 1e-5);
        assert!(!s.needs_step_noise());
    }

    #[test]
    fn ancestral_step_uses_sigma_down_and_sigma_up() {
        let mut s = EulerSampler::new(&sd15(), 8, SchedulerKind::Automatic, true).unwrap();
        let (s0, s1) = (s.schedule.sigmas[1], s.schedule.sigmas[2]);
        let up = (s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0)).sqrt();
        let down = (s1 * s1 - up * up).sqrt();
        // Marginal noise is preserved: down² + up² = s1².
        assert!((down * down + up * up - s1 * s1).abs() < 1e-9);
        let dev = Device::Cpu;
        let x = Tensor::new(&[3.0f32], &dev).unwrap();
        let eps = Tensor::new(&[1.5f32], &dev).unwrap();
        let z = Tensor::new(&[-0.8f32], &dev).unwrap();
        let got = s.step(&eps, 1, &x, Some(&z)).unwrap();
        let want = 3.0 + 1.5 * (down - s0) + (-0.8) * up;
        close(&got, &[want as f32], 1e-4);
        assert!(s.needs_step_noise());
        assert!(s.step(&eps, 1, &x, None).is_err());
        // The last step lands exactly on the denoised sample, whatever the noise.
        let got = s.step(&eps, 7, &x, Some(&z)).unwrap();
        let sl = s.schedule.sigmas[7];
        close(&got, &[(3.0 - sl * 1.5) as f32], 1e-4);
    }

    #[test]
    fn scaling_init_sigma_and_add_noise_follow_sigma() {
        let s = EulerSampler::new(&sd15(), 8, SchedulerKind::Automatic, false).unwrap();
        let sig = s.schedule.sigmas[0];
        assert_eq!(s.init_noise_sigma(), sig);
        assert!(
            sig > 14.0 && sig < 15.0,
            "SD's sigma_max is ~14.6, got {sig}"
        );
        let dev = Device::Cpu;
        let x = Tensor::new(&[2.0f32], &dev).unwrap();
        let n = Tensor::new(&[-1.0f32], &dev).unwrap();
        let scaled = s.scale_model_input(&x, 0).unwrap();
        close(&scaled, &[(2.0 / (sig * sig + 1.0).sqrt()) as f32], 1e-6);
        let s3 = s.schedule.sigmas[3];
        close(&s.add_noise(&x, &n, 3).unwrap(), &[(2.0 - s3) as f32], 1e-5);
        assert!(s.scale_model_input(&x, 8).is_err());
    }

    #[test]
    fn leading_spacing_raises_init_noise_sigma() {
        let cfg = SchedulerConfig {
            timestep_spacing: Some("leading".into()),
            ..sd15()
        };
        let s = EulerSampler::new(&cfg, 10, SchedulerKind::Automatic, false).unwrap();
        let m = s.schedule.sigmas[0];
        assert_eq!(s.timesteps()[0], 901.0);
        assert!((s.init_noise_sigma() - (m * m + 1.0).sqrt()).abs() < 1e-12);
    }
}

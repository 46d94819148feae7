//! Euler and Euler ancestral ("Euler a"): diffusers' `EulerDiscreteScheduler` (no churn) and
//! `EulerAncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::stepper::{need, Evaluation, Setup, Stepper, Update};
use crate::engine::error::Result;

/// Euler's method on the probability-flow ODE in sigma; the ancestral variant steps down to
/// `sigma_down` and adds fresh noise of size `sigma_up` so the marginal noise level is right.
pub(crate) struct Euler {
    sigmas: Vec<f64>,
    ancestral: bool,
}

pub(crate) type EulerSampler = Stepper<Euler>;

impl EulerSampler {
    pub(crate) fn new(setup: &Setup, ancestral: bool) -> Result<Self> {
        // diffusers' ancestral scheduler always ends at sigma 0.
        let final_zero = ancestral || setup.config.final_sigma_zero()?;
        setup.sigma_stepper(final_zero, |sigmas| Euler { sigmas, ancestral })
    }
}

/// `(sigma_up, sigma_down)` for an ancestral step from `from` to `to`, in float32 with
/// diffusers' formulas: next to a zero-SNR sigma_max (4096) `to² - up²` cancels almost all its
/// digits, and diffusers' float32 result (8 trailing steps: 0.04622 where the exact value is
/// 0.04627) is what its images are made with. Over 2..40 steps the float32 formula gives
/// diffusers' sigma_down exactly at most steps (torch's float32 sqrt is not correctly rounded,
/// which accounts for the rest); float64 misses the first one by a median 1.5e-4 (relative)
/// and up to 56%.
pub(crate) fn ancestral_sigmas(from: f64, to: f64) -> (f64, f64) {
    let (from, to) = (from as f32, to as f32);
    let up = (to * to * (from * from - to * to) / (from * from))
        .max(0.0)
        .sqrt();
    let down = (to * to - up * up).max(0.0).sqrt();
    (f64::from(up), f64::from(down))
}

impl Update for Euler {
    const SEQUENTIAL: bool = false;

    fn needs_step_noise(&self) -> bool {
        self.ancestral
    }

    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let (sigma, sigma_next) = (self.sigmas[e.step], self.sigmas[e.step + 1]);
        let derivative = ((&e.x - &e.x0)? / sigma)?;
        if !self.ancestral {
            return Ok((&e.x + derivative.affine(sigma_next - sigma, 0.0)?)?);
        }
        let noise = need(e.noise.as_ref(), "Euler a")?;
        let (up, down) = ancestral_sigmas(sigma, sigma_next);
        let moved = (&e.x + derivative.affine(down - sigma, 0.0)?)?;
        Ok((moved + noise.affine(up, 0.0)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::samplers::config::SchedulerConfig;
    use crate::engine::samplers::test_support::{sd, setup};
    use crate::engine::samplers::Sampler;
    use candle_core::Device;

    fn close(a: &Tensor, b: &[f32], tol: f32) {
        let a = a.to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn euler_step_is_x_plus_eps_times_dsigma() {
        // With epsilon prediction the derivative is eps itself: x' = x + eps * (s_next - s).
        let mut s = EulerSampler::new(&setup(&sd(), 8), false).unwrap();
        let (s0, s1) = (s.rule.sigmas[2], s.rule.sigmas[3]);
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
        let mut s = EulerSampler::new(&setup(&sd(), 8), true).unwrap();
        let (s0, s1) = (s.rule.sigmas[1], s.rule.sigmas[2]);
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
        let sl = s.rule.sigmas[7];
        close(&got, &[(3.0 - sl * 1.5) as f32], 1e-4);
    }

    #[test]
    fn scaling_init_sigma_and_add_noise_follow_sigma() {
        let s = EulerSampler::new(&setup(&sd(), 8), false).unwrap();
        let sig = s.rule.sigmas[0];
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
        let s3 = s.rule.sigmas[3];
        close(&s.add_noise(&x, &n, 3).unwrap(), &[(2.0 - s3) as f32], 1e-5);
        assert!(s.scale_model_input(&x, 8).is_err());
    }

    #[test]
    fn leading_spacing_raises_init_noise_sigma() {
        let cfg = SchedulerConfig {
            timestep_spacing: Some("leading".into()),
            ..sd()
        };
        let s = EulerSampler::new(&setup(&cfg, 10), false).unwrap();
        let m = s.rule.sigmas[0];
        assert_eq!(s.timesteps()[0], 901.0);
        assert!((s.init_noise_sigma() - (m * m + 1.0).sqrt()).abs() < 1e-12);
    }
}

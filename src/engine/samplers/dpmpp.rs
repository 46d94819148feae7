//! DPM++ 2M: diffusers' `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`,
//! `solver_type="midpoint"`, `solver_order=2` (what AUTOMATIC1111's "DPM++ 2M" is).

use candle_core::Tensor;

use super::ops::{alpha_sigma, lambda, lin};
use super::schedule::SigmaSchedule;
use super::stepper::{Evaluation, Setup, Stepper, Update};
use crate::engine::error::Result;

/// Below this many steps the last step drops to first order (diffusers' `lower_order_final`).
const LOWER_ORDER_BELOW: usize = 15;

/// DPM-Solver++ 2M's update rule.
pub(crate) struct Dpmpp2m {
    schedule: SigmaSchedule,
    lower_order_final: bool,
    euler_at_final: bool,
    /// The data prediction of the previous step taken.
    previous_x0: Option<Tensor>,
}

pub(crate) type DpmppSampler = Stepper<Dpmpp2m>;

impl DpmppSampler {
    pub(crate) fn new(setup: &Setup) -> Result<Self> {
        let config = setup.config;
        setup.vp_multistep(config.lambda_min_clipped, |schedule| Dpmpp2m {
            schedule,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            previous_x0: None,
        })
    }
}

impl Update for Dpmpp2m {
    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let Evaluation { step, x, x0, .. } = e;
        let sigmas = &self.schedule.sigmas;
        let n = self.schedule.timesteps.len();
        let (s0, s_next) = (sigmas[step], sigmas[step + 1]);
        let (_, sigma_s0) = alpha_sigma(s0);
        let (alpha_t, sigma_t) = alpha_sigma(s_next);
        // The last step is first order for stability (and must be when it lands on sigma 0;
        // A1111 schedules define their own end, so look at it rather than the config).
        // diffusers' `lower_order_second` only turns third order into second, so it does not
        // apply at order 2.
        let short = self.lower_order_final && n < LOWER_ORDER_BELOW;
        let first_order_final = step == n - 1 && (self.euler_at_final || short || s_next == 0.0);
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
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::samplers::test_support::{sd, setup, value};
    use crate::engine::samplers::Sampler;
    use candle_core::Device;

    /// Closed forms written in alpha/sigma terms (not lambda): first order is
    /// `x_t = (σ_t/σ_s) x + α_t (1 - σ_t α_s / (σ_s α_t)) x0`.
    #[test]
    fn first_then_second_order_match_closed_forms() {
        let mut s = DpmppSampler::new(&setup(&sd(), 20)).unwrap();
        let sig = s.rule.schedule.sigmas.clone();
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
        let mut s = DpmppSampler::new(&setup(&sd(), 4)).unwrap();
        let dev = Device::Cpu;
        let x = Tensor::new(&[1.0f32], &dev).unwrap();
        let e = Tensor::new(&[0.5f32], &dev).unwrap();
        let mut cur = x;
        for i in 0..3 {
            cur = s.step(&e, i, &cur, None).unwrap();
        }
        let (a, g) = alpha_sigma(s.rule.schedule.sigmas[3]);
        let want = (value(&cur) - g * 0.5) / a;
        let last = s.step(&e, 3, &cur, None).unwrap();
        assert!((value(&last) - want).abs() < 1e-5);
    }

    #[test]
    fn img2img_start_is_first_order_and_add_noise_is_variance_preserving() {
        let mut s = DpmppSampler::new(&setup(&sd(), 10)).unwrap();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.8f32], &dev).unwrap();
        let eps = Tensor::new(&[-0.5f32], &dev).unwrap();
        let xt = s.add_noise(&x0, &eps, 4).unwrap();
        let (a, g) = alpha_sigma(s.rule.schedule.sigmas[4]);
        assert!((value(&xt) - (a * 0.8 - g * 0.5)).abs() < 1e-6);
        // The exact eps makes a first-order step land on add_noise at the next sigma.
        let next = s.step(&eps, 4, &xt, None).unwrap();
        let want = s.add_noise(&x0, &eps, 5).unwrap();
        assert!((value(&next) - value(&want)).abs() < 1e-5);
    }
}

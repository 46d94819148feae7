//! Linear multistep (LMS, order 4): diffusers' `LMSDiscreteScheduler`.

use candle_core::Tensor;

use super::ops::lin;
use super::stepper::{Evaluation, Setup, Stepper, Update};
use crate::engine::error::Result;

const ORDER: usize = 4;

pub(crate) struct Lms {
    sigmas: Vec<f64>,
    /// Derivatives of the steps taken, oldest first, at most `ORDER`.
    derivatives: Vec<Tensor>,
}

pub(crate) type LmsSampler = Stepper<Lms>;

impl LmsSampler {
    pub(crate) fn new(setup: &Setup) -> Result<Self> {
        setup.sigma_stepper(true, |sigmas| Lms {
            sigmas,
            derivatives: Vec::new(),
        })
    }
}

impl Lms {
    /// The weight of the derivative taken `current` steps ago: the integral over
    /// `[sigma_t, sigma_(t+1)]` of its Lagrange basis polynomial through the last `order` sigmas.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = &self.sigmas;
        let basis = |tau: f64| {
            (0..order)
                .filter(|k| *k != current)
                .map(|k| (tau - s[t - k]) / (s[t - current] - s[t - k]))
                .product::<f64>()
        };
        gauss_legendre_3(basis, s[t], s[t + 1])
    }
}

/// Three-point Gauss-Legendre quadrature: exact for polynomials up to degree 5, and the basis
/// polynomials here have degree at most 3 (diffusers integrates the same ones with scipy's quad).
fn gauss_legendre_3(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    let half = (b - a) / 2.0;
    let mid = (a + b) / 2.0;
    let x = (3.0f64 / 5.0).sqrt();
    half * (5.0 / 9.0 * f(mid - half * x) + 8.0 / 9.0 * f(mid) + 5.0 / 9.0 * f(mid + half * x))
}

impl Update for Lms {
    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let Evaluation { step, x, x0, .. } = e;
        self.derivatives.push(((&x - &x0)? / self.sigmas[step])?);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        // The order grows with the steps actually taken. (diffusers takes it from the step index,
        // so its img2img runs start with an order-4 weight on a single derivative and leave the
        // first steps under-denoised; A1111's k-diffusion LMS counts taken steps, as we do.)
        let order = self.derivatives.len();
        let mut terms: Vec<(&Tensor, f64)> = vec![(&x, 1.0)];
        for (current, d) in self.derivatives.iter().rev().enumerate() {
            terms.push((d, self.coefficient(order, step, current)));
        }
        lin(&terms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::samplers::config::SchedulerConfig;
    use crate::engine::samplers::test_support::{sd, setup, value};
    use crate::engine::samplers::Sampler;
    use candle_core::Device;

    fn sampler() -> LmsSampler {
        let cfg = SchedulerConfig {
            steps_offset: 0,
            ..sd()
        };
        LmsSampler::new(&setup(&cfg, 10)).unwrap()
    }

    #[test]
    fn quadrature_is_exact_for_cubics() {
        let got = gauss_legendre_3(|x| x * x * x - 2.0 * x + 1.0, -1.0, 2.0);
        // ∫ x³ - 2x + 1 from -1 to 2 = 15/4 - 3 + 3.
        assert!((got - 3.75).abs() < 1e-12);
    }

    #[test]
    fn first_step_is_euler_and_second_is_two_step_adams() {
        let mut s = sampler();
        let sg = s.rule.sigmas.clone();
        let dev = Device::Cpu;
        let x = Tensor::new(&[1.0f32], &dev).unwrap();
        let e0 = Tensor::new(&[0.5f32], &dev).unwrap();
        let x1 = s.step(&e0, 0, &x, None).unwrap();
        assert!((value(&x1) - (1.0 + 0.5 * (sg[1] - sg[0]))).abs() < 1e-5);
        // Order 2: the derivative is linear in sigma through (s1, d1) and (s0, d0); integrate
        // it over [s1, s2] by hand: h*(d1 + (d1 - d0) * h / (2 (s1 - s0))).
        let e1 = Tensor::new(&[0.3f32], &dev).unwrap();
        let x2 = s.step(&e1, 1, &x1, None).unwrap();
        let h = sg[2] - sg[1];
        let want = value(&x1) + h * (0.3 + (0.3 - 0.5) * h / (2.0 * (sg[1] - sg[0])));
        assert!((value(&x2) - want).abs() < 1e-4);
    }

    #[test]
    fn weights_of_a_full_order_step_sum_to_the_interval() {
        // Lagrange basis polynomials sum to 1, so the weights sum to sigma_(t+1) - sigma_t.
        let s = sampler();
        let sg = &s.rule.sigmas;
        let total: f64 = (0..4).map(|c| s.rule.coefficient(4, 6, c)).sum();
        assert!((total - (sg[7] - sg[6])).abs() < 1e-9);
    }
}

//! UniPC (predictor-corrector, data prediction, B(h) = e^h - 1, order 2): diffusers'
//! `UniPCMultistepScheduler` with its defaults (`solver_type="bh2"`, `predict_x0`,
//! `lower_order_final`, corrector on every step).

use candle_core::Tensor;

use super::ops::{alpha_sigma, lambda, lin};
use super::schedule::SigmaSchedule;
use super::stepper::{Evaluation, Setup, Stepper, Update};
use crate::engine::error::Result;

const SOLVER_ORDER: usize = 2;

/// UniPC's predictor-corrector rule.
pub(crate) struct UniPc {
    schedule: SigmaSchedule,
    lower_order_final: bool,
    /// Data predictions of the last steps taken, newest last, at most `SOLVER_ORDER`.
    outputs: Vec<Tensor>,
    /// The sample the previous predictor started from (the corrector re-solves from it).
    last_sample: Option<Tensor>,
    /// The order the previous predictor used; the corrector uses the same.
    this_order: usize,
}

pub(crate) type UniPcSampler = Stepper<UniPc>;

/// `(h_phi_1, B_h, b)` of UniPC's bh2 variant for step size `h` in log-SNR and order `order`.
fn coefficients(h: f64, order: usize) -> (f64, f64, Vec<f64>) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (h_phi_1, b_h, b)
}

impl UniPcSampler {
    pub(crate) fn new(setup: &Setup) -> Result<Self> {
        setup.vp_multistep(None, |schedule| UniPc {
            schedule,
            lower_order_final: setup.config.lower_order_final,
            outputs: Vec::new(),
            last_sample: None,
            this_order: 1,
        })
    }
}

impl UniPc {
    /// Re-solves the previous step from `last` using the new data prediction `model_t`.
    fn correct(&self, model_t: &Tensor, last: &Tensor, step: usize) -> Result<Tensor> {
        let sg = &self.schedule.sigmas;
        let (alpha_t, sigma_t) = alpha_sigma(sg[step]);
        let (_, sigma_s0) = alpha_sigma(sg[step - 1]);
        let h = lambda(sg[step]) - lambda(sg[step - 1]);
        let m0 = &self.outputs[self.outputs.len() - 1];
        let (h_phi_1, b_h, b) = coefficients(h, self.this_order);
        let d1_t = (model_t - m0)?;
        let mut terms: Vec<(&Tensor, f64)> =
            vec![(last, sigma_t / sigma_s0), (m0, -alpha_t * h_phi_1)];
        let d1;
        if self.this_order == 2 {
            // Solve [[1, 1], [rk, 1]] · rho = b for the two corrector weights.
            let m1 = &self.outputs[self.outputs.len() - 2];
            let rk = (lambda(sg[step - 2]) - lambda(sg[step - 1])) / h;
            d1 = ((m1 - m0)? / rk)?;
            let rho0 = (b[0] - b[1]) / (1.0 - rk);
            let rho1 = b[0] - rho0;
            terms.push((&d1, -alpha_t * b_h * rho0));
            terms.push((&d1_t, -alpha_t * b_h * rho1));
        } else {
            terms.push((&d1_t, -alpha_t * b_h * 0.5));
        }
        lin(&terms)
    }

    /// Predicts the next sample from `x` with the stored data predictions.
    fn predict(&self, x: &Tensor, step: usize, order: usize) -> Result<Tensor> {
        let sg = &self.schedule.sigmas;
        let (alpha_t, sigma_t) = alpha_sigma(sg[step + 1]);
        let (_, sigma_s0) = alpha_sigma(sg[step]);
        let h = lambda(sg[step + 1]) - lambda(sg[step]);
        let m0 = &self.outputs[self.outputs.len() - 1];
        let (h_phi_1, b_h, _) = coefficients(h, order);
        let mut terms: Vec<(&Tensor, f64)> =
            vec![(x, sigma_t / sigma_s0), (m0, -alpha_t * h_phi_1)];
        let d1;
        if order == 2 {
            let m1 = &self.outputs[self.outputs.len() - 2];
            let rk = (lambda(sg[step - 1]) - lambda(sg[step])) / h;
            d1 = ((m1 - m0)? / rk)?;
            // diffusers fixes rho_p = 0.5 at order 2.
            terms.push((&d1, -alpha_t * b_h * 0.5));
        }
        lin(&terms)
    }
}

impl Update for UniPc {
    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let Evaluation { step, x, x0, .. } = e;
        let n = self.schedule.timesteps.len();
        // The data prediction came from the uncorrected sample, as in diffusers.
        let x = match &self.last_sample {
            Some(last) => self.correct(&x0, last, step)?,
            None => x,
        };
        self.outputs.push(x0);
        if self.outputs.len() > SOLVER_ORDER {
            self.outputs.remove(0);
        }
        let mut order = if self.lower_order_final {
            SOLVER_ORDER.min(n - step)
        } else {
            SOLVER_ORDER
        };
        // Warm-up: never more history than steps taken; a step onto sigma 0 must be first
        // order (h is infinite).
        order = order.min(self.outputs.len());
        if self.schedule.sigmas[step + 1] == 0.0 {
            order = 1;
        }
        self.this_order = order;
        let prev = self.predict(&x, step, order)?;
        self.last_sample = Some(x);
        Ok(prev)
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
    fn bh2_coefficients_match_their_series() {
        // b1 = (phi_1(hh) / hh - 1) / B(h) with hh = -h: for h = 0.5 computed from exp directly.
        let h = 0.5f64;
        let (p1, bh, b) = coefficients(h, 2);
        let e = (-h).exp() - 1.0;
        assert!((p1 - e).abs() < 1e-15 && (bh - e).abs() < 1e-15);
        let k1 = e / -h - 1.0;
        assert!((b[0] - k1 / e).abs() < 1e-12);
        let k2 = k1 / -h - 0.5;
        assert!((b[1] - 2.0 * k2 / e).abs() < 1e-12);
    }

    #[test]
    fn corrector_is_the_trapezoid_rule_and_predictor_extrapolates() {
        // Order-1 corrector with rho = 1/2 and B(h) = e^-h - 1 reduces to
        // x1 = (s1/s0) x0 + a1 (1 - e^-h) (m0 + m1) / 2; the order-2 predictor adds
        // -a2 B(h2) / 2 * (m0 - m1) / r with r = (lambda0 - lambda1) / h2.
        let cfg = SchedulerConfig {
            steps_offset: 0,
            ..sd()
        };
        let mut s = UniPcSampler::new(&setup(&cfg, 10)).unwrap();
        let sg = s.rule.schedule.sigmas.clone();
        let vp = |k: f64| (1.0 / (k * k + 1.0).sqrt(), k / (k * k + 1.0).sqrt());
        let lam = |k: f64| (1.0 / k).ln();
        let dev = Device::Cpu;
        let x_0 = 0.9;
        let (e0, e1) = (0.4, -0.2);
        let t = |v: f64| Tensor::new(&[v as f32], &dev).unwrap();
        let (a0, g0) = vp(sg[0]);
        let (a1, g1) = vp(sg[1]);
        let (a2, g2) = vp(sg[2]);
        let m0 = (x_0 - g0 * e0) / a0;
        let h1 = lam(sg[1]) - lam(sg[0]);
        let x1_pred = g1 / g0 * x_0 + a1 * (1.0 - (-h1).exp()) * m0;
        let x1 = s.step(&t(e0), 0, &t(x_0), None).unwrap();
        assert!((value(&x1) - x1_pred).abs() < 1e-5);
        // The data prediction at step 1 uses the uncorrected sample.
        let m1 = (x1_pred - g1 * e1) / a1;
        let x1_corr = g1 / g0 * x_0 + a1 * (1.0 - (-h1).exp()) * (m0 + m1) / 2.0;
        let h2 = lam(sg[2]) - lam(sg[1]);
        let r = (lam(sg[0]) - lam(sg[1])) / h2;
        let b_h = (-h2).exp() - 1.0;
        let want = g2 / g1 * x1_corr - a2 * b_h * m1 - a2 * b_h * 0.5 * (m0 - m1) / r;
        let x2 = s.step(&t(e1), 1, &x1, None).unwrap();
        assert!((value(&x2) - want).abs() < 1e-4, "{} vs {want}", value(&x2));
    }

    #[test]
    fn exact_data_predictions_are_reproduced() {
        // If every model call returns the true eps of a fixed x0 (so the data prediction is
        // constant), predictor and corrector both keep the sample on the noising path
        // alpha_t*x0 + sigma_t*eps_dir for the same direction; the last step returns x0.
        let cfg = SchedulerConfig {
            steps_offset: 0,
            ..sd()
        };
        let mut s = UniPcSampler::new(&setup(&cfg, 6)).unwrap();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.7f32], &dev).unwrap();
        let eps = Tensor::new(&[-1.3f32], &dev).unwrap();
        let mut x = s.add_noise(&x0, &eps, 0).unwrap();
        for i in 0..6 {
            x = s.step(&eps, i, &x, None).unwrap();
            if i < 5 {
                let want = s.add_noise(&x0, &eps, i + 1).unwrap();
                assert!((value(&x) - value(&want)).abs() < 1e-4, "step {i}");
            }
        }
        assert!((value(&x) - 0.7).abs() < 1e-4);
    }
}

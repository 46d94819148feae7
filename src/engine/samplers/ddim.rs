//! DDIM with eta 0 (deterministic, as AUTOMATIC1111 runs it): diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::config::{Prediction, Spacing};
use super::ops::lin;
use super::schedule::{timesteps, TimestepRule};
use super::stepper::{Evaluation, Level, Setup, Stepper, Update};
use crate::engine::error::{EngineError, Result};

pub(crate) struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// The "previous" cumulative alpha after the last step.
    final_alpha_cumprod: f64,
    /// diffusers steps back by `num_train // steps` whatever the spacing.
    step_ratio: usize,
    prediction: Prediction,
    clip: Option<f64>,
}

pub(crate) type DdimSampler = Stepper<Ddim>;

impl DdimSampler {
    pub(crate) fn new(setup: &Setup) -> Result<Self> {
        let (config, steps) = (setup.config, setup.steps);
        let alphas_cumprod = config.alphas_cumprod(false)?;
        let n = alphas_cumprod.len();
        let spacing = config.spacing(Spacing::Leading)?;
        let ts = timesteps(
            TimestepRule::Ddim,
            spacing,
            n,
            n,
            steps,
            config.steps_offset,
        );
        if let Some(t) = ts.iter().find(|t| **t < 0.0 || **t >= n as f64) {
            return Err(EngineError::invalid(
                "steps_offset",
                format!("timestep {t} falls outside the {n} training timesteps"),
            ));
        }
        let prediction = config.prediction()?;
        // Zero-SNR betas make the last cumulative alpha exactly 0: there the sample is pure
        // noise and a noise prediction says nothing about the image (diffusers divides by 0).
        if prediction == Prediction::Epsilon {
            if let Some(t) = ts.iter().find(|t| alphas_cumprod[**t as usize] <= 0.0) {
                return Err(EngineError::invalid(
                    "sampler",
                    format!(
                        "DDIM cannot run an epsilon-prediction model at timestep {t}, where \
                         zero-terminal-SNR betas leave no signal; use a v_prediction model, \
                         leading spacing, or another sampler"
                    ),
                ));
            }
        }
        // Timesteps were checked to lie in 0..n above.
        let levels = ts
            .iter()
            .map(|t| {
                let a = alphas_cumprod[*t as usize];
                Level::AlphaSigma(a.sqrt(), (1.0 - a).sqrt())
            })
            .collect();
        let rule = Ddim {
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            step_ratio: n / steps,
            timesteps: ts.clone(),
            alphas_cumprod,
            prediction,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        };
        Ok(Stepper::assemble(ts, levels, prediction, 1.0, rule))
    }
}

impl Update for Ddim {
    const SEQUENTIAL: bool = false;

    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let Evaluation {
            step, x, out, x0, ..
        } = e;
        let t = self.timesteps[step] as usize;
        let a_t = self.alphas_cumprod[t];
        let a_prev = match t.checked_sub(self.step_ratio) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        };
        let b_t = 1.0 - a_t;
        let eps = match self.prediction {
            Prediction::Epsilon => out,
            Prediction::Sample => lin(&[(&x, 1.0 / b_t.sqrt()), (&out, -a_t.sqrt() / b_t.sqrt())])?,
            Prediction::Velocity => lin(&[(&out, a_t.sqrt()), (&x, b_t.sqrt())])?,
        };
        let x0 = match self.clip {
            Some(range) => x0.clamp(-range, range)?,
            None => x0,
        };
        // eta = 0: no variance term, the direction pointing to x_t is all of (1 - a_prev).
        lin(&[(&x0, a_prev.sqrt()), (&eps, (1.0 - a_prev).sqrt())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::samplers::config::SchedulerConfig;
    use crate::engine::samplers::test_support::{self, setup, value};
    use crate::engine::samplers::Sampler;
    use candle_core::Device;

    fn sd() -> SchedulerConfig {
        SchedulerConfig {
            set_alpha_to_one: false,
            ..test_support::sd()
        }
    }

    #[test]
    fn deterministic_step_matches_the_ddim_formula() {
        // Hand-computed cumulative alphas from the betas, independent of the sampler.
        let cfg = sd();
        let ac = cfg.alphas_cumprod(false).unwrap();
        let mut s = DdimSampler::new(&setup(&cfg, 10)).unwrap();
        assert_eq!(s.timesteps()[0], 901.0);
        let (a_t, a_p) = (ac[901], ac[801]);
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.7f32], &dev).unwrap();
        let e = Tensor::new(&[-0.4f32], &dev).unwrap();
        let x0 = (0.7 - (1.0 - a_t).sqrt() * -0.4) / a_t.sqrt();
        let want = a_p.sqrt() * x0 + (1.0 - a_p).sqrt() * -0.4;
        assert!((value(&s.step(&e, 0, &x, None).unwrap()) - want).abs() < 1e-5);
        // Last step (t = 1) goes to alphas_cumprod[0] since set_alpha_to_one is false.
        let a_t = ac[1];
        let x0 = (0.7 - (1.0 - a_t).sqrt() * -0.4) / a_t.sqrt();
        let want = ac[0].sqrt() * x0 + (1.0 - ac[0]).sqrt() * -0.4;
        assert!((value(&s.step(&e, 9, &x, None).unwrap()) - want).abs() < 1e-5);
    }

    #[test]
    fn v_prediction_step_and_add_noise_are_consistent() {
        // A sample built by add_noise from x0 and eps, with the exact v target, must step to
        // add_noise(x0, eps) at the previous timestep.
        let cfg = SchedulerConfig {
            prediction_type: "v_prediction".into(),
            ..sd()
        };
        let ac = cfg.alphas_cumprod(false).unwrap();
        let mut s = DdimSampler::new(&setup(&cfg, 10)).unwrap();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.9f32, -0.3], &dev).unwrap();
        let eps = Tensor::new(&[-1.1f32, 0.6], &dev).unwrap();
        let xt = s.add_noise(&x0, &eps, 3).unwrap();
        let a = ac[s.timesteps()[3] as usize];
        let v = lin(&[(&eps, a.sqrt()), (&x0, -(1.0 - a).sqrt())]).unwrap();
        let prev = s.step(&v, 3, &xt, None).unwrap();
        let want = s.add_noise(&x0, &eps, 4).unwrap();
        let d = (prev - want).unwrap().abs().unwrap().max(0).unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        assert_eq!(s.init_noise_sigma(), 1.0);
    }
}

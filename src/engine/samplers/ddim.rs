//! DDIM with eta 0 (deterministic, as AUTOMATIC1111 runs it): diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::ops::{self, check_step, lin};
use super::schedule::{timesteps, TimestepRule};
use super::Sampler;
use crate::engine::error::{EngineError, Result};

pub(crate) struct DdimSampler {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// The "previous" cumulative alpha after the last step.
    final_alpha_cumprod: f64,
    /// diffusers steps back by `num_train // steps` whatever the spacing.
    step_ratio: usize,
    prediction: Prediction,
    clip: Option<f64>,
}

impl DdimSampler {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
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
        Ok(Self {
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            step_ratio: n / steps,
            timesteps: ts,
            alphas_cumprod,
            prediction: config.prediction()?,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        })
    }

    fn alpha_at(&self, step: usize) -> f64 {
        // Timesteps were checked to lie in 0..n when the sampler was built.
        self.alphas_cumprod[self.timesteps[step] as usize]
    }
}

impl Sampler for DdimSampler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
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
        check_step(step, self.timesteps.len())?;
        let dtype = sample.dtype();
        let x = ops::f32(sample)?;
        let out = ops::f32(model_output)?;
        let t = self.timesteps[step] as usize;
        let a_t = self.alpha_at(step);
        let a_prev = match t.checked_sub(self.step_ratio) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        };
        let b_t = 1.0 - a_t;
        let (mut x0, eps) = match self.prediction {
            Prediction::Epsilon => (
                lin(&[(&x, 1.0 / a_t.sqrt()), (&out, -b_t.sqrt() / a_t.sqrt())])?,
                out.clone(),
            ),
            Prediction::Sample => (
                out.clone(),
                lin(&[(&x, 1.0 / b_t.sqrt()), (&out, -a_t.sqrt() / b_t.sqrt())])?,
            ),
            Prediction::Velocity => (
                lin(&[(&x, a_t.sqrt()), (&out, -b_t.sqrt())])?,
                lin(&[(&out, a_t.sqrt()), (&x, b_t.sqrt())])?,
            ),
        };
        if let Some(range) = self.clip {
            x0 = x0.clamp(-range, range)?;
        }
        // eta = 0: no variance term, the direction pointing to x_t is all of (1 - a_prev).
        let prev = lin(&[(&x0, a_prev.sqrt()), (&eps, (1.0 - a_prev).sqrt())])?;
        Ok(prev.to_dtype(dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let a = self.alpha_at(step);
        lin(&[(original, a.sqrt()), (noise, (1.0 - a).sqrt())])
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
            set_alpha_to_one: false,
            ..Default::default()
        }
    }

    fn value(t: &Tensor) -> f32 {
        t.to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn deterministic_step_matches_the_ddim_formula() {
        // Hand-computed cumulative alphas from the betas, independent of the sampler.
        let cfg = sd();
        let ac = cfg.alphas_cumprod(false).unwrap();
        let mut s = DdimSampler::new(&cfg, 10).unwrap();
        assert_eq!(s.timesteps()[0], 901.0);
        let (a_t, a_p) = (ac[901], ac[801]);
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.7f32], &dev).unwrap();
        let e = Tensor::new(&[-0.4f32], &dev).unwrap();
        let x0 = (0.7 - (1.0 - a_t).sqrt() * -0.4) / a_t.sqrt();
        let want = a_p.sqrt() * x0 + (1.0 - a_p).sqrt() * -0.4;
        assert!((value(&s.step(&e, 0, &x, None).unwrap()) as f64 - want).abs() < 1e-5);
        // Last step (t = 1) goes to alphas_cumprod[0] since set_alpha_to_one is false.
        let a_t = ac[1];
        let x0 = (0.7 - (1.0 - a_t).sqrt() * -0.4) / a_t.sqrt();
        let want = ac[0].sqrt() * x0 + (1.0 - ac[0]).sqrt() * -0.4;
        assert!((value(&s.step(&e, 9, &x, None).unwrap()) as f64 - want).abs() < 1e-5);
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
        let mut s = DdimSampler::new(&cfg, 10).unwrap();
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

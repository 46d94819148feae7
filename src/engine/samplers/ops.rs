//! Small tensor and bookkeeping helpers the sampler update rules share.

use candle_core::{DType, Tensor};

use super::config::{Prediction, Spacing};
use crate::engine::error::{EngineError, Result};

/// `Σ cᵢ·tᵢ`. Coefficients are computed in f64 and applied as scalar multiplies.
pub(crate) fn lin(terms: &[(&Tensor, f64)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (t, c) in terms {
        let scaled = t.affine(*c, 0.0)?;
        acc = Some(match acc {
            None => scaled,
            Some(a) => (a + scaled)?,
        });
    }
    acc.ok_or_else(|| EngineError::invalid("terms", "no tensors to combine"))
}

/// Update rules run in f32 (as diffusers upcasts in its Euler-type schedulers), whatever dtype
/// the UNet runs in; results go back to the sample's dtype.
pub(crate) fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// Rejects a step index outside the schedule instead of panicking on an index.
pub(crate) fn check_step(step: usize, len: usize) -> Result<()> {
    if step >= len {
        return Err(EngineError::invalid(
            "step",
            format!("step {step} is outside the schedule of {len} steps"),
        ));
    }
    Ok(())
}

/// Multistep samplers keep a history, so steps must come one after another.
pub(crate) fn check_next(step: usize, previous: Option<usize>) -> Result<()> {
    match previous {
        Some(p) if step != p + 1 => Err(EngineError::invalid(
            "step",
            format!("step {step} called after step {p}; steps must be consecutive"),
        )),
        _ => Ok(()),
    }
}

/// The denoised sample predicted at noise level `sigma` for k-diffusion-style samplers (Euler,
/// Heun, LMS), where the sample is `x0 + sigma * eps`.
pub(crate) fn x0_at_sigma(
    prediction: Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f64,
) -> Result<Tensor> {
    match prediction {
        Prediction::Epsilon => lin(&[(sample, 1.0), (model_output, -sigma)]),
        Prediction::Velocity => {
            // diffusers' `c_out`, `c_skip` in float32: at sigma 4096, `sigma² + 1` is 2^24 there.
            let s = sigma as f32;
            let s2 = s * s + 1.0;
            let c_out = -s / s2.sqrt();
            lin(&[
                (model_output, f64::from(c_out)),
                (sample, f64::from(1.0 / s2)),
            ])
        }
        Prediction::Sample => Ok(model_output.clone()),
    }
}

/// The denoised sample for variance-preserving samplers (DPM-Solver++, UniPC), where the sample
/// is `alpha_t * x0 + sigma_t * eps`.
pub(crate) fn x0_at_alpha_sigma(
    prediction: Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_t: f64,
    sigma_t: f64,
) -> Result<Tensor> {
    match prediction {
        Prediction::Epsilon => lin(&[(sample, 1.0 / alpha_t), (model_output, -sigma_t / alpha_t)]),
        Prediction::Velocity => lin(&[(sample, alpha_t), (model_output, -sigma_t)]),
        Prediction::Sample => Ok(model_output.clone()),
    }
}

/// `(alpha_t, sigma_t)` of the variance-preserving process at k-diffusion noise level `sigma`.
pub(crate) fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Log-SNR `ln(alpha_t) - ln(sigma_t)`; +inf at sigma 0.
pub(crate) fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

/// Euler-type schedulers start from noise of the largest sigma; with "leading" spacing diffusers
/// uses `sqrt(sigma² + 1)` instead.
pub(crate) fn sigma_init_noise(spacing: Spacing, sigmas: &[f64]) -> f64 {
    let max = sigmas.iter().copied().fold(0.0, f64::max);
    match spacing {
        Spacing::Leading => (max * max + 1.0).sqrt(),
        Spacing::Linspace | Spacing::Trailing => max,
    }
}

/// `sample / sqrt(sigma² + 1)`, the UNet input scaling of k-diffusion-style samplers.
pub(crate) fn scale_by_sigma(sample: &Tensor, sigma: f64) -> Result<Tensor> {
    Ok(sample.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn v_prediction_recovers_x0() {
        // Build a sample from known x0 and eps at sigma, then its v target; x0 must come back.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.3f32, -1.2, 2.0], &dev).unwrap();
        let eps = Tensor::new(&[1.0f32, 0.5, -0.7], &dev).unwrap();
        let sigma = 2.5f64;
        let (a, s) = alpha_sigma(sigma);
        // k-diffusion sample x = x0 + sigma*eps; VP sample = a*x; v = a*eps - s*x0.
        let x = lin(&[(&x0, 1.0), (&eps, sigma)]).unwrap();
        let v = lin(&[(&eps, a), (&x0, -s)]).unwrap();
        let got = x0_at_sigma(Prediction::Velocity, &v, &x, sigma).unwrap();
        let diff = (got - &x0).unwrap().abs().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let vp = x.affine(a, 0.0).unwrap();
        let got = x0_at_alpha_sigma(Prediction::Velocity, &v, &vp, a, s).unwrap();
        let diff = (got - &x0).unwrap().abs().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let got = x0_at_alpha_sigma(Prediction::Epsilon, &eps, &vp, a, s).unwrap();
        let diff = (got - &x0).unwrap().abs().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn steps_out_of_range_or_out_of_order_are_errors() {
        assert!(check_step(3, 3).is_err());
        assert!(check_step(2, 3).is_ok());
        assert!(check_next(5, Some(3)).is_err());
        assert!(check_next(4, Some(3)).is_ok());
        assert!(check_next(7, None).is_ok());
    }

    #[test]
    fn init_noise_sigma_depends_on_spacing() {
        let s = [14.0, 3.0, 0.0];
        assert_eq!(sigma_init_noise(Spacing::Linspace, &s), 14.0);
        assert_eq!(sigma_init_noise(Spacing::Leading, &s), 197f64.sqrt());
    }
}

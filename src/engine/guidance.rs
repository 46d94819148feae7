//! Classifier-free guidance, with the optional CFG rescale (`guidance_rescale`) that
//! zero-terminal-SNR v-prediction models need, as diffusers' `rescale_noise_cfg` applies it.

use candle_core::{DType, Tensor, D};

use super::error::{EngineError, Result};

/// The guided model output `u + cfg * (c - u)`; with `rescale` (phi) > 0 it is then pulled
/// towards the conditional output's spread (Lin et al. 2023, section 3.4):
/// `phi * out * std(c) / std(out) + (1 - phi) * out`, the std taken per sample over all but
/// the batch axis, unbiased (N - 1), as torch's `std` is. It acts on whatever the model
/// predicts (v for v-prediction models), before the sampler's step.
///
/// `rescale` 0 is plain guidance, bit for bit. `rescale` must lie in [0, 1]. A sample whose
/// guided output is constant (std 0) is left as it is rather than divided by zero.
pub(crate) fn guided(uncond: &Tensor, cond: &Tensor, cfg: f64, rescale: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&rescale) {
        return Err(EngineError::invalid(
            "guidance_rescale",
            format!("{rescale} is outside 0..=1"),
        ));
    }
    let out = (uncond + ((cond - uncond)? * cfg)?)?;
    if rescale == 0.0 {
        return Ok(out);
    }
    let dtype = out.dtype();
    let out32 = out.to_dtype(DType::F32)?;
    let ratio = (per_sample_std(cond)? / per_sample_std(&out32)?)?;
    // std(out) = 0 gives inf or NaN: no spread to rescale, so a ratio of 1.
    let ratio: Vec<f32> = ratio
        .to_vec1::<f32>()?
        .into_iter()
        .map(|r| if r.is_finite() { r } else { 1.0 })
        .collect();
    let mut shape = vec![1; out.rank()];
    shape[0] = ratio.len();
    let ratio = Tensor::from_vec(ratio, shape, out.device())?;
    let rescaled = out32.broadcast_mul(&ratio)?;
    let mixed = (rescaled.affine(rescale, 0.0)? + out32.affine(1.0 - rescale, 0.0)?)?;
    Ok(mixed.to_dtype(dtype)?)
}

/// Unbiased standard deviation of each sample (axis 0) over the rest, accumulated in f64 as
/// torch accumulates a float32 std on the CPU, rounded to f32.
fn per_sample_std(t: &Tensor) -> Result<Tensor> {
    let flat = t.to_dtype(DType::F64)?.flatten_from(1)?;
    let n = flat.dim(1)?;
    if n < 2 {
        return Err(EngineError::invalid(
            "guidance_rescale",
            format!("needs at least 2 values per sample to take a spread, got {n}"),
        ));
    }
    let centred = flat.broadcast_sub(&flat.mean_keepdim(D::Minus1)?)?;
    let var = (centred.sqr()?.sum(D::Minus1)? / (n - 1) as f64)?;
    Ok(var.sqrt()?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::Value;

    fn cases() -> Vec<Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/guidance-rescale/reference.json"
        );
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("reference.json"))
                .expect("JSON");
        doc["cases"].as_array().expect("cases").clone()
    }

    fn tensor(v: &Value, shape: &[usize]) -> Tensor {
        let data: Vec<f32> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn matches_diffusers_rescale_noise_cfg() {
        let all = cases();
        assert!(all.len() >= 3);
        for case in all {
            let shape: Vec<usize> = case["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let u = tensor(&case["uncond"], &shape);
            let c = tensor(&case["cond"], &shape);
            let (cfg, phi) = (
                case["cfg"].as_f64().unwrap(),
                case["guidance_rescale"].as_f64().unwrap(),
            );
            let got = values(&guided(&u, &c, cfg, phi).unwrap());
            let want = values(&tensor(&case["expected"], &shape));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-6 * scale,
                    "shape {shape:?} cfg {cfg} phi {phi} [{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn rescale_zero_is_plain_guidance_bit_for_bit() {
        let dev = Device::Cpu;
        let u = Tensor::new(&[[0.3f32, -1.7, 2.25], [0.01, 5.5, -0.4]], &dev).unwrap();
        let c = Tensor::new(&[[1.1f32, 0.2, -0.9], [0.7, 4.0, 0.33]], &dev).unwrap();
        let plain = (&u + ((&c - &u).unwrap() * 7.5).unwrap()).unwrap();
        assert_eq!(values(&guided(&u, &c, 7.5, 0.0).unwrap()), values(&plain));
    }

    #[test]
    fn full_rescale_gives_each_sample_the_conditional_spread() {
        // With phi 1 every sample's std becomes its conditional output's std.
        let dev = Device::Cpu;
        let u = Tensor::new(&[[0.0f32, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 2.0]], &dev).unwrap();
        let c = Tensor::new(&[[0.5f32, 0.5, 2.5, 2.0], [3.0, -1.0, 0.0, 2.0]], &dev).unwrap();
        let out = guided(&u, &c, 4.0, 1.0).unwrap();
        let got = values(&per_sample_std(&out).unwrap());
        let want = values(&per_sample_std(&c).unwrap());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5 * w, "{got:?} vs {want:?}");
        }
        // Sample 0 by hand: unbiased std of [0.5, 0.5, 2.5, 2.0] = sqrt(3.1875 / 3).
        assert!((want[0] - (3.1875f32 / 3.0).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn a_constant_output_is_left_alone_and_bad_rescale_is_refused() {
        let dev = Device::Cpu;
        let u = Tensor::new(&[[2.0f32, 2.0, 2.0]], &dev).unwrap();
        let out = guided(&u, &u, 3.0, 0.7).unwrap();
        assert_eq!(values(&out), vec![2.0, 2.0, 2.0]);
        for bad in [-0.1, 1.5, f64::NAN] {
            let err = guided(&u, &u, 3.0, bad).unwrap_err();
            assert!(err.is_client_error());
            assert!(err.to_string().contains("guidance_rescale"), "{err}");
        }
    }
}

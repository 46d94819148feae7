//! Every random draw of a generation comes from one `NoiseSource`, so a seed fixes the image and
//! tests can inject the exact tensors a reference implementation used.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::error::Result;

/// What a draw is for; replaying sources (tests) use it to hand out the right tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoisePurpose {
    /// The starting noise of a pass (txt2img latents, or the noise img2img adds). `pass` is 0
    /// for the first pass and 1 for the hires second pass.
    Initial { pass: usize },
    /// The VAE posterior sample of an img2img init image.
    VaeSample,
    /// Ancestral noise for denoising step `step` of pass `pass`.
    Step { pass: usize, step: usize },
}

/// A source of standard-normal noise for ONE image. Draws are f32 on the CPU; the pipeline moves
/// them to the device, so a seed gives the same noise on every device.
pub trait NoiseSource: Send {
    fn draw(&mut self, purpose: NoisePurpose, shape: &[usize]) -> Result<Tensor>;
}

/// Noise from a seeded ChaCha8 stream: the same seed gives the same draws on every platform.
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn draw(&mut self, _purpose: NoisePurpose, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}

/// Turns a request seed into the seed of image `i` of a batch (A1111: `seed + i`); -1 means
/// random, resolved once per request so the reply can report it.
pub fn resolve_seed(seed: i64) -> u64 {
    if seed < 0 {
        // Keep random seeds within 32 bits so they print, paste and round-trip through JSON
        // clients that parse numbers as doubles.
        rand::random::<u32>() as u64
    } else {
        seed as u64
    }
}

/// Draws one tensor per image and stacks them: image `i` of a batch always gets its own
/// stream, so batch item `i` equals a single image generated with seed `seed + i`.
pub fn draw_batch(
    sources: &mut [Box<dyn NoiseSource>],
    purpose: NoisePurpose,
    shape_one: &[usize],
    device: &Device,
    dtype: candle_core::DType,
) -> Result<Tensor> {
    let parts = sources
        .iter_mut()
        .map(|s| s.draw(purpose, shape_one))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?.to_device(device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_other_seed_other_noise() {
        let shape = [1, 4, 3, 2];
        let a = SeededNoise::new(7)
            .draw(NoisePurpose::Initial { pass: 0 }, &shape)
            .unwrap();
        let b = SeededNoise::new(7)
            .draw(NoisePurpose::Initial { pass: 0 }, &shape)
            .unwrap();
        let c = SeededNoise::new(8)
            .draw(NoisePurpose::Initial { pass: 0 }, &shape)
            .unwrap();
        let va: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(va, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // Roughly standard normal.
        let many = SeededNoise::new(1)
            .draw(NoisePurpose::VaeSample, &[20000])
            .unwrap();
        let v: Vec<f32> = many.to_vec1().unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }

    #[test]
    fn random_seed_is_non_negative_and_fixed_seed_kept() {
        assert_eq!(resolve_seed(42), 42);
        assert!(resolve_seed(-1) <= u32::MAX as u64);
    }
}

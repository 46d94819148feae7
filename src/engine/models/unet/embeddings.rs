//! The UNet's timestep embedding: diffusers' sinusoidal `Timesteps` followed by the two-layer
//! `TimestepEmbedding` MLP.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::engine::models::layers::Linear;
use crate::engine::models::weights::{visit_child, VisitWeights, WeightFn};

/// Sinusoidal features of `t` for each of `batch` samples, `dim` wide, computed in f32 the way
/// diffusers' `get_timestep_embedding` computes them so fractional timesteps match.
pub fn timestep_features(
    t: f64,
    batch: usize,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let t = t as f32;
    let mut row = vec![0f32; dim];
    for i in 0..half {
        let exponent = -(10000f32.ln()) * i as f32 / (half as f32 - freq_shift as f32);
        let arg = t * exponent.exp();
        let (sin, cos) = ((arg as f64).sin() as f32, (arg as f64).cos() as f32);
        if flip_sin_to_cos {
            row[i] = cos;
            row[half + i] = sin;
        } else {
            row[i] = sin;
            row[half + i] = cos;
        }
    }
    Tensor::from_vec(row, (1, dim), device)?.repeat((batch, 1))
}

/// `linear_1 -> SiLU -> linear_2`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, cin: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(vb.pp("linear_1"), cin, dim, true)?,
            linear_2: Linear::new(vb.pp("linear_2"), dim, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let h = candle_nn::ops::silu(&self.linear_1.forward(&x.to_dtype(dtype)?)?)?;
        self.linear_2.forward(&h)
    }
}

impl VisitWeights for TimestepEmbedding {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        visit_child(&mut self.linear_1, prefix, "linear_1", f)?;
        visit_child(&mut self.linear_2, prefix, "linear_2", f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_cos_then_sin_when_flipped() {
        let f = timestep_features(500.0, 2, 8, true, 0.0, &Device::Cpu).unwrap();
        assert_eq!(f.dims(), &[2, 8]);
        let v = f.to_vec2::<f32>().unwrap();
        // i = 0: frequency 1, so cos(500) then sin(500).
        assert!((v[0][0] - 500f32.cos()).abs() < 1e-5);
        assert!((v[1][4] - 500f32.sin()).abs() < 1e-5);
        let g = timestep_features(0.0, 1, 4, false, 1.0, &Device::Cpu).unwrap();
        assert_eq!(g.to_vec2::<f32>().unwrap()[0], vec![0.0, 0.0, 1.0, 1.0]);
    }
}

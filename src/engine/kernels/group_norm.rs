//! GroupNorm with an optional fused SiLU, in two passes over each group: the statistics (mean,
//! then the variance about it, accumulated in f64), then one pass that normalizes, applies the
//! per-channel affine and the activation, and writes the output. candle's version makes five
//! full-size temporaries and a separate SiLU.

use candle_core::{DType, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{multiversion, run_cpu3, vmath, Input, Kernel3};

/// `GroupNorm(groups, eps)` with weight `gamma` and bias `beta` over dim 1 of `x` (N, C, ...),
/// followed by SiLU when `silu`.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 || groups == 0 || !dims[1].is_multiple_of(groups) {
        candle_core::bail!("group_norm: {dims:?} does not split into {groups} groups");
    }
    let norm = Norm { groups, eps, silu };
    if x.device().is_cpu() {
        return run_cpu3([x, gamma, beta], norm);
    }
    reference(x, gamma, beta, norm)
}

/// What a GroupNorm computes besides its weights: `groups` over dim 1, `eps`, and whether a
/// SiLU follows.
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

/// GroupNorm from plain candle ops (statistics in f32), for GPUs and the tests.
pub fn reference(x: &Tensor, gamma: &Tensor, beta: &Tensor, norm: Norm) -> Result<Tensor> {
    let Norm { groups, eps, silu } = norm;
    let dtype = x.dtype();
    let dims = x.dims().to_vec();
    let (n, c) = (dims[0], dims[1]);
    let xs = x.to_dtype(DType::F32)?.reshape((n, groups, ()))?;
    let mean = xs.mean_keepdim(2)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let mut affine = vec![1usize; dims.len()];
    affine[1] = c;
    let y = normed
        .reshape(dims.as_slice())?
        .broadcast_mul(&gamma.to_dtype(DType::F32)?.reshape(affine.as_slice())?)?
        .broadcast_add(&beta.to_dtype(DType::F32)?.reshape(affine.as_slice())?)?;
    let y = if silu { candle_nn::ops::silu(&y)? } else { y };
    y.to_dtype(dtype)
}

/// Sum of `f(x)` over `x`: eight f32 lanes over runs of 256 values, each run folded into f64,
/// so the sum is both vectorized and accurate.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for run in x.chunks(256) {
        let mut acc = [0f32; 8];
        let mut chunks = run.chunks_exact(8);
        for c in &mut chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += f(*v);
            }
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>();
        total += chunks.remainder().iter().map(|&v| f(v) as f64).sum::<f64>();
    }
    total
}

#[inline(always)]
fn stats_body(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v) / n;
    let m = mean as f32;
    let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
    (mean, var)
}

multiversion!(fn stats(x: &[f32]) -> (f64, f64) => stats_body);

#[inline(always)]
fn normalize_body(x: &[f32], y: &mut [f32], mean: f32, scale: f32, beta: f32, silu: bool) {
    // (x - mean) first: folding the mean into a shift would cancel badly for large means.
    if silu {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = vmath::silu((v - mean) * scale + beta);
        }
    } else {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (v - mean) * scale + beta;
        }
    }
}

multiversion!(fn normalize(x: &[f32], y: &mut [f32], mean: f32, scale: f32, beta: f32, silu: bool) => normalize_body);

impl Kernel3 for Norm {
    const NAME: &'static str = "group-norm-cpu";

    fn run(&self, [(x, l1), (gamma, _), (beta, _)]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let dims = l1.shape().dims();
        let c = dims[1];
        let spatial: usize = dims[2..].iter().product();
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!("group_norm: {c} channels but {} weights", gamma.len());
        }
        let cpg = c / self.groups;
        let group_len = cpg * spatial;
        let mut out = vec![0f32; x.len()];
        if group_len == 0 {
            return Ok((out, l1.shape().clone()));
        }
        out.par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len))
            .enumerate()
            .for_each(|(i, (y, xg))| {
                let (mean, var) = stats(xg);
                let rstd = 1.0 / (var + self.eps).sqrt();
                let c0 = (i % self.groups) * cpg;
                for ch in 0..cpg {
                    let scale = (gamma[c0 + ch] as f64 * rstd) as f32;
                    let r = ch * spatial..(ch + 1) * spatial;
                    let (m, b) = (mean as f32, beta[c0 + ch]);
                    normalize(&xg[r.clone()], &mut y[r], m, scale, b, self.silu);
                }
            });
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::seeded_randn;
    use candle_core::Device;

    fn check(shape: &[usize], groups: usize, silu: bool, offset: f32) {
        let c = shape[1];
        let seed = shape.iter().fold(groups as u64, |s, &n| s * 31 + n as u64);
        let x = seeded_randn(seed, shape, offset, 3.0);
        let gamma = seeded_randn(seed + 1, c, 1.0, 0.5);
        let beta = seeded_randn(seed + 2, c, 0.0, 0.5);
        // The reference runs in f64, so a large mean tests our precision, not candle's.
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let norm = Norm {
            groups,
            eps: 1e-5,
            silu,
        };
        let want = reference(&f64s(&x), &f64s(&gamma), &f64s(&beta), norm)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let got = group_norm(&x, groups, &gamma, &beta, 1e-5, silu).unwrap();
        let err = crate::engine::kernels::max_abs_diff(&got, &want);
        // With a mean of 1000, f32 itself rounds x - mean to ~3e-5; a one-pass variance would
        // be off by ~1e-2.
        let tol = if offset.abs() > 100.0 { 2e-4 } else { 5e-5 };
        assert!(err < tol, "{shape:?} groups {groups} silu {silu}: {err}");
    }

    #[test]
    fn matches_candle_ops_with_and_without_silu() {
        check(&[2, 64, 9, 7], 32, false, 0.0);
        check(&[2, 64, 9, 7], 32, true, 0.0);
        check(&[1, 32, 33], 8, true, 0.0);
        // A large mean tests the two-pass variance (one-pass E[x²]-E[x]² loses it in f32).
        check(&[1, 8, 64, 64], 4, false, 1000.0);
    }

    #[test]
    fn rejects_groups_that_do_not_divide_channels() {
        let x = Tensor::zeros((1, 6, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones(6, DType::F32, &Device::Cpu).unwrap();
        assert!(group_norm(&x, 4, &w, &w, 1e-5, false).is_err());
    }
}

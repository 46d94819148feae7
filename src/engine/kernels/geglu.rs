//! GEGLU, the feed-forward gate of every UNet transformer block: `a * gelu(g)` where the
//! projection's output is `[a | g]` along the last dim, in one pass with no chunk copies.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, multiversion, vmath, widened};

/// `x`: (..., 2I) -> (..., I).
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    let last = x.dim(D::Minus1)?;
    if last % 2 != 0 {
        candle_core::bail!("geglu: last dim {last} is odd");
    }
    if x.device().is_cpu() {
        return widened(&[x], |t| t[0].apply_op1_no_bwd(&GegluCpu));
    }
    reference(x)
}

/// GEGLU from candle ops.
pub fn reference(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let a = x.narrow(D::Minus1, 0, half)?;
    let g = x.narrow(D::Minus1, half, half)?;
    a * g.gelu_erf()?
}

struct GegluCpu;

#[inline(always)]
fn row_body(x: &[f32], y: &mut [f32]) {
    let (a, g) = x.split_at(y.len());
    for ((o, &a), &g) in y.iter_mut().zip(a).zip(g) {
        *o = a * vmath::gelu(g);
    }
}

multiversion!(fn row(x: &[f32], y: &mut [f32]) => row_body);

impl CustomOp1 for GegluCpu {
    fn name(&self) -> &'static str {
        "geglu-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut dims = l.shape().dims().to_vec();
        let width = *dims.last().unwrap_or(&0);
        let half = width / 2;
        *dims.last_mut().expect("rank >= 1") = half;
        let mut out = vec![0f32; x.len() / 2];
        if half > 0 {
            // Rows grouped so each task is large enough to be worth scheduling.
            let rows_per_task = (1 << 16) / width + 1;
            out.par_chunks_mut(half * rows_per_task)
                .zip(x.par_chunks(width * rows_per_task))
                .for_each(|(y, x)| {
                    for (yr, xr) in y.chunks_mut(half).zip(x.chunks(width)) {
                        row(xr, yr);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_gelu_erf() {
        let x = crate::engine::kernels::seeded_randn(7, (2, 37, 2 * 160), 0.0, 3.0);
        let want = reference(&x).unwrap();
        let got = geglu(&x).unwrap();
        assert_eq!(got.dims(), &[2, 37, 160]);
        let err = crate::engine::kernels::max_abs_diff(&got, &want);
        assert!(err < 1e-5, "{err}");
        let odd = Tensor::zeros((1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(geglu(&odd).is_err());
    }
}

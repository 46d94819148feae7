//! Linear projections on the CPU as one gemm against the weight stored transposed,
//! (in, out) row-major, at load: the gemm then streams both operands along their rows, and the
//! bias is the accumulator's starting value instead of a second pass.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::{gemm_into, run_cpu3, Input, Kernel3};

/// `x` (rows, in) · `wt` (in, out) + `bias` (out).
pub fn linear_t(x: &Tensor, wt: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, cin) = x.dims2()?;
    let (win, cout) = wt.dims2()?;
    if win != cin || bias.dims1()? != cout {
        candle_core::bail!(
            "linear: x {:?}, wᵀ {:?}, bias {:?}",
            x.dims(),
            wt.dims(),
            bias.dims()
        );
    }
    if x.device().is_cpu() {
        return run_cpu3([x, wt, bias], LinearCpu);
    }
    x.matmul(wt)?.broadcast_add(bias)
}

struct LinearCpu;

impl Kernel3 for LinearCpu {
    const NAME: &'static str = "linear-cpu";

    fn run(&self, [(x, l1), (wt, l2), (bias, _)]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let (rows, cin) = l1.shape().dims2()?;
        let cout = l2.shape().dims2()?.1;
        let mut out = vec![0f32; rows * cout];
        if cout == 0 || rows == 0 {
            return Ok((out, Shape::from((rows, cout))));
        }
        out.par_chunks_mut(cout * 64)
            .for_each(|block| block.chunks_mut(cout).for_each(|r| r.copy_from_slice(bias)));
        // SAFETY: (rows x cin) · (cin x cout) into (rows x cout), every buffer that size.
        unsafe { gemm_into(out.as_mut_ptr(), cout, x, wt.as_ptr(), rows, cout, cin) };
        Ok((out, Shape::from((rows, cout))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::seeded_randn;

    #[test]
    fn matches_candle_matmul() {
        let x = seeded_randn(1, (37, 20), 0.0, 1.0);
        let w = seeded_randn(2, (13, 20), 0.0, 1.0);
        let b = seeded_randn(3, 13, 0.0, 1.0);
        let want = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let got = linear_t(&x, &wt, &b).unwrap();
        let err = crate::engine::kernels::max_abs_diff(&got, &want);
        assert!(err < 1e-4, "{err}");
        assert!(linear_t(&x, &w, &b).is_err());
    }
}

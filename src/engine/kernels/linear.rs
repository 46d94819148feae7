//! Linear projections on the CPU as one gemm against the weight stored transposed,
//! (in, out) row-major, at load: the gemm then streams both operands along their rows, and the
//! bias is the accumulator's starting value instead of a second pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{f32_slice, threads, widened};

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
        return widened(&[x, wt, bias], |t| {
            t[0].apply_op3_no_bwd(&t[1], &t[2], &LinearCpu)
        });
    }
    x.matmul(wt)?.broadcast_add(bias)
}

struct LinearCpu;

impl CustomOp3 for LinearCpu {
    fn name(&self) -> &'static str {
        "linear-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        let (rows, cin) = l1.shape().dims2()?;
        let cout = l2.shape().dims2()?.1;
        let mut out = vec![0f32; rows * cout];
        if cout == 0 || rows == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((rows, cout))));
        }
        out.par_chunks_mut(cout * 64)
            .for_each(|block| block.chunks_mut(cout).for_each(|r| r.copy_from_slice(bias)));
        // SAFETY: (rows x cin) · (cin x cout) into (rows x cout), every buffer that size.
        unsafe {
            gemm::gemm(
                rows,
                cout,
                cin,
                out.as_mut_ptr(),
                1,
                cout as isize,
                true,
                x.as_ptr(),
                1,
                cin as isize,
                wt.as_ptr(),
                1,
                cout as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(threads()),
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, cout))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_matmul() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (37, 20), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (13, 20), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 13, &dev).unwrap();
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

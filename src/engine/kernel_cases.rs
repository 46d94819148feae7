//! The fused CPU kernels beside the plain candle ops they replace, at SD 1.5's second-level
//! shapes (32x32 latent cells at 512 px, 640 channels, batch 2), as ready-to-run cases for
//! benchmarks: the inputs are made here so no tensor crosses the facade.

use candle_core::{Device, Tensor};

use super::error::Result;
use super::kernels::{self, attention, conv, geglu, group_norm, Conv2dParams};

/// One kernel (or its reference) on fixed inputs.
pub struct KernelCase {
    /// What runs, e.g. "geglu 2x1024x5120 (fused)".
    pub name: &'static str,
    run: Box<dyn Fn() -> Result<()>>,
}

impl KernelCase {
    /// Runs the kernel once (the output is dropped).
    pub fn run(&self) -> Result<()> {
        (self.run)()
    }
}

fn randn(shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1f32, shape, &Device::Cpu)?)
}

fn case(name: &'static str, f: impl Fn() -> candle_core::Result<Tensor> + 'static) -> KernelCase {
    KernelCase {
        name,
        run: Box::new(move || Ok(f().map(drop)?)),
    }
}

/// Every fused kernel and its reference, big enough to show the speed, small enough to time
/// quickly.
pub fn kernel_cases() -> Result<Vec<KernelCase>> {
    let (q, k, v) = (
        randn(&[2, 1024, 640])?,
        randn(&[2, 1024, 640])?,
        randn(&[2, 1024, 640])?,
    );
    let scale = 1.0 / 80f64.sqrt();
    let ctx = randn(&[2, 77, 640])?;
    let x = randn(&[2, 640, 32, 32])?;
    let (gamma, beta) = (randn(&[640])?, randn(&[640])?);
    let h = randn(&[2, 1024, 5120])?;
    let tokens = randn(&[8192, 320])?;
    let lw = randn(&[2560, 320])?;
    let lwt = lw.t()?.contiguous()?;
    let lb = randn(&[2560])?;
    let w = (randn(&[640, 640, 3, 3])? * 0.02)?;
    let bias = randn(&[640])?;
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    Ok(vec![
        case("attention self 1024 tokens, 8x80 (fused)", {
            let (q, k, v) = (q.clone(), k.clone(), v.clone());
            move || kernels::attention(&q, &k, &v, 8, scale)
        }),
        case("attention self 1024 tokens, 8x80 (candle ops)", {
            let (q, k, v) = (q.clone(), k.clone(), v);
            move || attention::reference(&q, &k, &v, 8, scale)
        }),
        case("attention cross 1024x77 (fused)", move || {
            kernels::attention(&q, &ctx, &ctx, 8, scale)
        }),
        case("group_norm+silu 2x640x32x32 (fused)", {
            let (x, gamma, beta) = (x.clone(), gamma.clone(), beta.clone());
            move || kernels::group_norm(&x, 32, &gamma, &beta, 1e-5, true)
        }),
        case("group_norm+silu 2x640x32x32 (candle ops)", {
            let x = x.clone();
            move || {
                group_norm::reference(
                    &x,
                    &gamma,
                    &beta,
                    group_norm::Norm {
                        groups: 32,
                        eps: 1e-5,
                        silu: true,
                    },
                )
            }
        }),
        case("geglu 2x1024x5120 (fused)", {
            let h = h.clone();
            move || kernels::geglu(&h)
        }),
        case("geglu 2x1024x5120 (candle ops)", move || {
            geglu::reference(&h)
        }),
        case(
            "linear 8192x320 -> 2560 (gemm, weight stored transposed)",
            {
                let (tokens, lb) = (tokens.clone(), lb.clone());
                move || kernels::linear_t(&tokens, &lwt, &lb)
            },
        ),
        case("linear 8192x320 -> 2560 (candle matmul)", move || {
            tokens.matmul(&lw.t()?)?.broadcast_add(&lb)
        }),
        case("conv3x3 640->640 32x32 (winograd)", {
            let (x, w, bias) = (x.clone(), w.clone(), bias.clone());
            move || kernels::conv2d(&x, &w, &bias, p)
        }),
        case("conv3x3 640->640 32x32 (im2col)", {
            let (x, w, bias) = (x.clone(), w.clone(), bias.clone());
            move || kernels::conv2d_direct(&x, &w, &bias, p)
        }),
        case("conv3x3 640->640 32x32 (candle)", move || {
            conv::reference(&x, &w, &bias, p)
        }),
    ])
}

//! 2-D convolution as banded im2col + one gemm per band, straight from and to NCHW.
//!
//! The weight's own (Cout, Cin*kh*kw) row-major layout is the gemm's left operand, so nothing is
//! re-laid out per call (candle copies the kernel and the input to NHWC on every call). The
//! im2col buffer covers a band of output rows sized to a fixed budget and is reused between
//! calls, so a 1024x1536 VAE convolution needs 64 MB of scratch, not 7 GB, and touches no fresh
//! pages. 1x1 convolutions skip im2col entirely.

use std::cell::RefCell;

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::{gemm_into, run_cpu3, Input, Kernel3};

/// im2col scratch per band, in f32 elements (64 MB).
const BAND_ELEMS: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

/// `x` (N, Cin, H, W) * `weight` (Cout, Cin, kh, kw) + `bias` (Cout). On the CPU, 3x3 stride-1
/// padding-1 convolutions use Winograd F(2x2, 3x3); the rest im2col + gemm.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    conv2d_with(x, weight, bias, p, true)
}

/// [`conv2d`] without Winograd: the direct (im2col) path, for tests and benchmarks.
pub fn conv2d_direct(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    p: Conv2dParams,
) -> Result<Tensor> {
    conv2d_with(x, weight, bias, p, false)
}

fn conv2d_with(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    p: Conv2dParams,
    winograd: bool,
) -> Result<Tensor> {
    let (_, cin, _, _) = x.dims4()?;
    let (cout, wcin, _, _) = weight.dims4()?;
    if wcin != cin || bias.dims1()? != cout || p.stride == 0 {
        candle_core::bail!(
            "conv2d: input {:?}, weight {:?}, bias {:?}, stride {}",
            x.dims(),
            weight.dims(),
            bias.dims(),
            p.stride
        );
    }
    if x.device().is_cpu() {
        let op = ConvCpu { p, winograd };
        return run_cpu3([x, weight, bias], op);
    }
    reference(x, weight, bias, p)
}

/// candle's own convolution plus the bias.
pub fn reference(x: &Tensor, weight: &Tensor, bias: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    let y = x.conv2d(weight, p.padding, p.stride, 1, 1)?;
    y.broadcast_add(&bias.reshape((1, (), 1, 1))?)
}

struct ConvCpu {
    p: Conv2dParams,
    winograd: bool,
}

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Fills `col` (K rows of `rows * wo` values) with the im2col of output rows `oh0..oh0+rows`.
#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    col: &mut [f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (oh0, rows, wo): (usize, usize, usize),
    p: Conv2dParams,
) {
    let band = rows * wo;
    let (s, pad) = (p.stride, p.padding as isize);
    col.par_chunks_mut(band).enumerate().for_each(|(kk, dst)| {
        let ci = kk / (kh * kw);
        let (i, j) = ((kk / kw) % kh, kk % kw);
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for r in 0..rows {
            let ih = ((oh0 + r) * s + i) as isize - pad;
            let out = &mut dst[r * wo..(r + 1) * wo];
            if ih < 0 || ih >= h as isize {
                out.fill(0.0);
                continue;
            }
            let src = &plane[ih as usize * w..(ih as usize + 1) * w];
            if s == 1 {
                // Valid output columns read src[ow + j - pad]; the rest are padding.
                let lo = (pad - j as isize).clamp(0, wo as isize) as usize;
                let hi = (w as isize + pad - j as isize).clamp(lo as isize, wo as isize) as usize;
                out[..lo].fill(0.0);
                let start = (lo as isize + j as isize - pad) as usize;
                out[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                out[hi..].fill(0.0);
            } else {
                for (ow, o) in out.iter_mut().enumerate() {
                    let iw = (ow * s + j) as isize - pad;
                    *o = if iw < 0 || iw >= w as isize {
                        0.0
                    } else {
                        src[iw as usize]
                    };
                }
            }
        }
    });
}

impl Kernel3 for ConvCpu {
    const NAME: &'static str = "conv2d-cpu";

    fn run(&self, [(x, l1), (wt, l2), (bias, _)]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let p = self.p;
        let (n, cin, h, w) = l1.shape().dims4()?;
        let (cout, _, kh, kw) = l2.shape().dims4()?;
        let (hp, wp) = (h + 2 * p.padding, w + 2 * p.padding);
        if hp < kh || wp < kw {
            candle_core::bail!("conv2d: {kh}x{kw} kernel larger than padded {hp}x{wp} input");
        }
        let (ho, wo) = ((hp - kh) / p.stride + 1, (wp - kw) / p.stride + 1);
        let k = cin * kh * kw;
        let plane = ho * wo;
        let mut out = vec![0f32; n * cout * plane];
        let three = kh == 3 && kw == 3 && p.stride == 1 && p.padding == 1;
        if self.winograd && three && super::winograd::worthwhile(n, h, w) {
            super::winograd::conv3x3(x, wt, bias, (n, cin, h, w), cout, &mut out);
            return Ok((out, Shape::from((n, cout, ho, wo))));
        }
        // Bias first, so the gemm accumulates onto it.
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(i, o)| o.fill(bias[i % cout]));
        let pointwise = kh == 1 && kw == 1 && p.stride == 1 && p.padding == 0;
        let band_rows = (BAND_ELEMS / (k * wo).max(1)).clamp(1, ho);
        COLUMNS.with(|cell| {
            let mut col = cell.borrow_mut();
            for b in 0..n {
                let xb = &x[b * cin * h * w..(b + 1) * cin * h * w];
                let ob = &mut out[b * cout * plane..(b + 1) * cout * plane];
                if pointwise {
                    // SAFETY: (cout x k) · (k x plane) into (cout x plane), all in bounds.
                    unsafe { gemm_into(ob.as_mut_ptr(), plane, wt, xb.as_ptr(), cout, plane, k) };
                    continue;
                }
                let mut oh0 = 0;
                while oh0 < ho {
                    let rows = band_rows.min(ho - oh0);
                    let band = rows * wo;
                    if col.len() < k * band {
                        col.resize(k * band, 0.0);
                    }
                    im2col(
                        xb,
                        &mut col[..k * band],
                        (h, w),
                        (kh, kw),
                        (oh0, rows, wo),
                        p,
                    );
                    // SAFETY: writes columns oh0*wo..oh0*wo+band of every output row.
                    unsafe {
                        gemm_into(
                            ob.as_mut_ptr().add(oh0 * wo),
                            plane,
                            wt,
                            col.as_ptr(),
                            cout,
                            band,
                            k,
                        )
                    };
                    oh0 += rows;
                }
            }
        });
        Ok((out, Shape::from((n, cout, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::seeded_randn;

    fn check(n: usize, cin: usize, cout: usize, hw: (usize, usize), k: usize, p: Conv2dParams) {
        let seed = (n * 100_003 + cin * 1009 + cout * 101 + hw.0 * 13 + hw.1 * 7 + k) as u64;
        let x = seeded_randn(seed, (n, cin, hw.0, hw.1), 0.0, 1.0);
        let w = seeded_randn(seed + 1, (cout, cin, k, k), 0.0, 0.2);
        let b = seeded_randn(seed + 2, cout, 0.0, 1.0);
        let want = reference(&x, &w, &b, p).unwrap();
        let direct = conv2d_direct(&x, &w, &b, p).unwrap();
        let got = conv2d(&x, &w, &b, p).unwrap();
        assert_eq!(got.dims(), want.dims(), "{p:?}");
        assert_eq!(direct.dims(), want.dims(), "{p:?}");
        let direct_err = crate::engine::kernels::max_abs_diff(&direct, &want);
        assert!(
            direct_err < 1e-4,
            "direct {n}x{cin}->{cout} {hw:?} k{k} {p:?}: {direct_err}"
        );
        let err = crate::engine::kernels::max_abs_diff(&got, &want);
        assert!(err < 1e-4, "{n}x{cin}->{cout} {hw:?} k{k} {p:?}: {err}");
    }

    #[test]
    fn matches_candle_conv2d() {
        let same = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        check(2, 5, 7, (9, 11), 3, same);
        check(1, 3, 4, (1, 1), 3, same);
        // The UNet's downsampler: stride 2, padding 1; the VAE encoder's: stride 2, padding 0.
        check(
            2,
            4,
            6,
            (8, 9),
            3,
            Conv2dParams {
                stride: 2,
                padding: 1,
            },
        );
        check(
            1,
            4,
            6,
            (9, 8),
            3,
            Conv2dParams {
                stride: 2,
                padding: 0,
            },
        );
        check(
            2,
            6,
            3,
            (5, 7),
            1,
            Conv2dParams {
                stride: 1,
                padding: 0,
            },
        );
    }

    #[test]
    fn winograd_matches_direct_conv_at_odd_sizes() {
        // Odd sides leave half tiles at the right and bottom edges.
        let same = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        assert!(super::super::winograd::worthwhile(2, 33, 31));
        for (h, w) in [(33, 31), (45, 23), (32, 32), (64, 17)] {
            check(2, 9, 5, (h, w), 3, same);
        }
        // Below the threshold: the direct path, also right.
        assert!(!super::super::winograd::worthwhile(1, 7, 5));
        check(2, 9, 5, (7, 5), 3, same);
        // Enough channels that gemm blocking and the parallel transforms both engage.
        check(1, 96, 80, (48, 40), 3, same);
    }

    #[test]
    fn bands_cover_large_images() {
        // Enough output rows that the im2col band splits the image.
        let p = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        // im2col: 16M / (128 * 9 * 300) = 48 rows per band; Winograd: 54 tile rows of 60.
        const { assert!(BAND_ELEMS / (128 * 9 * 300) < 120) };
        assert!(super::super::winograd::band_rows(128, 8, 300) < 60);
        check(1, 128, 8, (120, 300), 3, p);
    }
}

//! Scaled dot-product attention that never materializes the N x N score matrix.
//!
//! CPU: a fused flash-attention kernel. Each task owns one (batch, head, query block); it walks
//! the keys in blocks, computing `S = Q Kᵀ` with gemm, an online softmax (running max and sum,
//! vectorized exp) and `O += P V`, so the working set is one `BQ x BK` score block per thread
//! whatever the sequence length. Other devices: query-chunked attention from candle ops whose
//! score buffer stays under a fixed budget, or flash-attn on CUDA when that feature is built.
//!
//! Tensors stay in the `(batch, tokens, heads * head_dim)` layout the projections produce, so
//! no transposes are needed before or after.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Result, Shape, Tensor, D};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{multiversion, run_cpu3, vmath, Input, Kernel3, SharedMut};
use crate::engine::cancel::CancelToken;

/// Query rows per task.
const BQ: usize = 128;
/// Keys per score block.
const BK: usize = 512;
/// Upper bound, in bytes, of the score buffer of the non-CPU fallback per chunk.
const CHUNK_SCORE_BYTES: usize = 256 << 20;

static FLASH_ATTN: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The cancel flag of the job running on this thread, if any (see [`with_cancel`]).
    static CANCEL: std::cell::RefCell<Option<CancelToken>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `token` as this thread's cancel flag: attention calls inside give up between
/// key blocks once it is set (an attention call over a 2048x2048 image takes minutes on a CPU,
/// longer than a client waits), and fail with an error the caller maps to `Cancelled`.
pub fn with_cancel<T>(token: &CancelToken, f: impl FnOnce() -> T) -> T {
    let previous = CANCEL.with(|c| c.replace(Some(token.clone())));
    let out = f();
    CANCEL.with(|c| *c.borrow_mut() = previous);
    out
}

/// Lets CUDA half-precision attention use the flash-attn kernels (in builds with the
/// `flash-attn` feature); set from the model's load options.
pub fn set_flash_attn(on: bool) {
    FLASH_ATTN.store(on, Ordering::Relaxed);
}

/// `softmax(q kᵀ * scale) v` per head. `q`: (B, Nq, H*D); `k`, `v`: (B, Nk, H*D); the result is
/// (B, Nq, H*D).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, _, hd) = q.dims3()?;
    let (bk, nk, hdk) = k.dims3()?;
    if bk != b || hdk != hd || v.dims3()? != (b, nk, hd) || heads == 0 || hd % heads != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q.device().is_cpu() {
        let op = FlashAttnCpu {
            heads,
            scale: scale as f32,
            cancel: CANCEL.with(|c| c.borrow().clone()),
        };
        return run_cpu3([q, k, v], op);
    }
    #[cfg(feature = "flash-attn")]
    if FLASH_ATTN.load(Ordering::Relaxed)
        && q.device().is_cuda()
        && q.dtype() != candle_core::DType::F32
    {
        let nq = q.dim(1)?;
        let split = |t: &Tensor, n| t.reshape((b, n, heads, hd / heads));
        let out = candle_flash_attn::flash_attn(
            &split(q, nq)?,
            &split(k, nk)?,
            &split(v, nk)?,
            scale as f32,
            false,
        )?;
        return out.reshape((b, nq, hd));
    }
    chunked(q, k, v, heads, scale, CHUNK_SCORE_BYTES)
}

/// Attention with candle ops, in query chunks whose scores fit `budget` bytes.
pub fn chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    budget: usize,
) -> Result<Tensor> {
    let (b, nq, hd) = q.dims3()?;
    let nk = k.dim(1)?;
    let d = hd / heads;
    let split = |t: &Tensor, n| t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous();
    // f16 scores overflow for some models (SD 2.x's `upcast_attention`): scores in f32.
    let dtype = q.dtype();
    let wide = |t: Tensor| {
        if dtype == candle_core::DType::F16 {
            t.to_dtype(candle_core::DType::F32)
        } else {
            Ok(t)
        }
    };
    let (q, k, v) = (wide(split(q, nq)?)?, wide(split(k, nk)?)?, split(v, nk)?);
    let kt = k.t()?;
    let per_row = b * heads * nk * q.dtype().size_in_bytes();
    let rows = (budget / per_row.max(1)).clamp(1, nq);
    let mut parts = Vec::with_capacity(nq.div_ceil(rows));
    let mut start = 0;
    while start < nq {
        let len = rows.min(nq - start);
        let qc = q.narrow(2, start, len)?;
        let scores = (qc.matmul(&kt)? * scale)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        parts.push(p.matmul(&v)?);
        start += len;
    }
    Tensor::cat(&parts, 2)?
        .transpose(1, 2)?
        .reshape((b, nq, hd))
}

/// Plain attention (full score matrix), the reference the kernel is tested against.
pub fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, nq, hd) = q.dims3()?;
    let nk = k.dim(1)?;
    let d = hd / heads;
    let split = |t: &Tensor, n| t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (split(q, nq)?, split(k, nk)?, split(v, nk)?);
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, nq, hd))
}

struct FlashAttnCpu {
    heads: usize,
    scale: f32,
    cancel: Option<CancelToken>,
}

/// Geometry of one call, shared by all tasks.
#[derive(Clone, Copy)]
struct Geometry {
    nk: usize,
    hd: usize,
    d: usize,
    scale: f32,
}

impl FlashAttnCpu {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }
}

impl Kernel3 for FlashAttnCpu {
    const NAME: &'static str = "flash-attn-cpu";

    fn run(&self, [(q, l1), (k, l2), (v, _)]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let (b, nq, hd) = l1.shape().dims3()?;
        let nk = l2.shape().dims3()?.1;
        let g = Geometry {
            nk,
            hd,
            d: hd / self.heads,
            scale: self.scale,
        };
        let mut out = vec![0f32; b * nq * hd];
        let dst = SharedMut(out.as_mut_ptr());
        let qblocks = nq.div_ceil(BQ);
        let tasks = b * self.heads * qblocks;
        (0..tasks).into_par_iter().for_each(|t| {
            if self.cancelled() {
                return;
            }
            let qb = t % qblocks;
            let bh = t / qblocks;
            let (bi, h) = (bh / self.heads, bh % self.heads);
            let q0 = qb * BQ;
            let rows = BQ.min(nq - q0);
            SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let base_q = (bi * nq + q0) * hd + h * g.d;
                let base_kv = bi * nk * hd + h * g.d;
                // SAFETY: task (bi, h, qb) writes only rows q0..q0+rows, columns of head h.
                let out_ptr = unsafe { dst.get().add(base_q) };
                block(
                    &g,
                    &q[base_q..],
                    &k[base_kv..],
                    &v[base_kv..],
                    rows,
                    out_ptr,
                    &mut scratch,
                );
            });
        });
        if self.cancelled() {
            candle_core::bail!("attention cancelled");
        }
        Ok((out, Shape::from((b, nq, hd))))
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

multiversion!(fn softmax_rows(s: &mut [f32], cols: usize, m: &mut [f32], l: &mut [f32], acc: &mut [f32], d: usize) => softmax_rows_body);

/// Online-softmax update of one score block: exponentiates `s` in place against each row's new
/// running max, rescales the row's accumulator and running sum.
#[inline(always)]
fn softmax_rows_body(
    s: &mut [f32],
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    d: usize,
) {
    for (i, row) in s.chunks_exact_mut(cols).enumerate() {
        let block_max = vmath::max(row);
        let m_new = m[i].max(block_max);
        let alpha = vmath::exp(m[i] - m_new);
        let sum = vmath::exp_sub_sum(row, m_new);
        l[i] = l[i] * alpha + sum;
        m[i] = m_new;
        if alpha != 1.0 {
            for a in &mut acc[i * d..(i + 1) * d] {
                *a *= alpha;
            }
        }
    }
}

/// One (batch, head, query block) task. `q`, `k`, `v` start at the task's first element; rows
/// are `hd` apart. Writes `rows x d` outputs at `out` with row stride `hd`.
fn block(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: usize,
    out: *mut f32,
    scratch: &mut Vec<f32>,
) {
    let d = g.d;
    let need = rows * d * 2 + rows * BK + rows * 2;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (qs, rest) = scratch.split_at_mut(rows * d);
    let (acc, rest) = rest.split_at_mut(rows * d);
    let (s, rest) = rest.split_at_mut(rows * BK);
    let (m, rest) = rest.split_at_mut(rows);
    let l = &mut rest[..rows];
    // The scale is folded into Q once instead of into every score.
    for i in 0..rows {
        for (dst, src) in qs[i * d..(i + 1) * d]
            .iter_mut()
            .zip(&q[i * g.hd..i * g.hd + d])
        {
            *dst = src * g.scale;
        }
    }
    acc.fill(0.0);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let hd = g.hd as isize;
    let mut k0 = 0;
    while k0 < g.nk {
        let cols = BK.min(g.nk - k0);
        let s = &mut s[..rows * cols];
        // SAFETY: every pointer and stride below stays inside its buffer: S is rows x cols,
        // Q rows x d, K/V rows k0..k0+cols of this head (row stride hd), acc rows x d.
        unsafe {
            // S = Qs · K_blockᵀ
            gemm::gemm(
                rows,
                cols,
                d,
                s.as_mut_ptr(),
                1,
                cols as isize,
                false,
                qs.as_ptr(),
                1,
                d as isize,
                k.as_ptr().add(k0 * g.hd),
                hd,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        softmax_rows(s, cols, m, l, acc, d);
        unsafe {
            // acc += P · V_block
            gemm::gemm(
                rows,
                d,
                cols,
                acc.as_mut_ptr(),
                1,
                d as isize,
                true,
                s.as_ptr(),
                1,
                cols as isize,
                v.as_ptr().add(k0 * g.hd),
                1,
                hd,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        k0 += cols;
    }
    for i in 0..rows {
        let inv = 1.0 / l[i];
        for j in 0..d {
            // SAFETY: row i of this task's output block, inside the output buffer.
            unsafe { *out.add(i * g.hd + j) = acc[i * d + j] * inv };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    use crate::engine::kernels::{max_abs_diff as max_err, seeded_randn};

    fn case(b: usize, nq: usize, nk: usize, heads: usize, d: usize, spread: f32) {
        let seed = (b * 1_000_003 + nq * 1009 + nk * 31 + heads * 7 + d) as u64;
        let q = seeded_randn(seed, (b, nq, heads * d), 0.0, spread);
        let k = seeded_randn(seed + 1, (b, nk, heads * d), 0.0, spread);
        let v = seeded_randn(seed + 2, (b, nk, heads * d), 0.0, 1.0);
        let scale = 1.0 / (d as f64).sqrt();
        // The truth in f64: an f32 reference rounds large logits as much as the kernels do.
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let want = reference(&f64s(&q), &f64s(&k), &f64s(&v), heads, scale)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        // f32 rounds a logit x by about |x|·2^-24 and exp(x - max) moves by that much relative,
        // so the bound grows with the logits' standard deviation (spread² · √d): about 1e-6 is
        // seen at spread 1 and 5e-5 at spread 12, d 16 (logits near 600).
        let tol = 1e-5 + 2e-7 * spread * spread * (d as f32).sqrt();
        let got = attention(&q, &k, &v, heads, scale).unwrap();
        assert_eq!(got.dims(), want.dims());
        let err = max_err(&got, &want);
        assert!(
            err < tol,
            "b{b} nq{nq} nk{nk} h{heads} d{d}: max error {err} (bound {tol})"
        );
        let ch = chunked(&q, &k, &v, heads, scale, 4096).unwrap();
        let ch_err = max_err(&ch, &want);
        assert!(ch_err < tol, "chunked fallback: {ch_err} (bound {tol})");
    }

    #[test]
    fn self_attention_matches_reference_at_block_edges() {
        // Lengths below, at, and across the query and key blocks, none a multiple of 8.
        for n in [1, 7, 127, 128, 129, 513, 1100] {
            case(2, n, n, 2, 8, 1.0);
        }
    }

    #[test]
    fn cross_attention_matches_reference() {
        // SD's text context: 77 tokens (and 154 for two chunks), UNet head sizes 40/64/80.
        case(2, 300, 77, 8, 40, 1.0);
        case(1, 64, 154, 4, 64, 1.0);
        case(2, 33, 77, 1, 80, 1.0);
    }

    #[test]
    fn large_scores_stay_finite() {
        // Large logits exercise the running max: a naive exp would overflow.
        case(1, 200, 700, 2, 16, 12.0);
    }

    #[test]
    fn vae_single_head_and_half_precision() {
        case(1, 256, 256, 1, 64, 1.0);
        let q = seeded_randn(40, (1, 40, 32), 0.0, 1.0);
        let want = reference(&q, &q, &q, 4, 0.3).unwrap();
        let half = q.to_dtype(DType::F16).unwrap();
        let got = attention(&half, &half, &half, 4, 0.3).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        assert!(max_err(&got.to_dtype(DType::F32).unwrap(), &want) < 1e-2);
    }

    #[test]
    fn a_cancelled_job_stops_attention() {
        let q = Tensor::randn(0f32, 1.0, (1, 300, 16), &Device::Cpu).unwrap();
        let token = CancelToken::new();
        assert!(with_cancel(&token, || attention(&q, &q, &q, 2, 0.25)).is_ok());
        token.cancel();
        let err = with_cancel(&token, || attention(&q, &q, &q, 2, 0.25)).unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        // Outside the scope the flag no longer applies.
        assert!(attention(&q, &q, &q, 2, 0.25).is_ok());
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 4, 12), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 5, 8), DType::F32, &dev).unwrap();
        assert!(attention(&q, &k, &k, 2, 1.0).is_err());
        assert!(attention(&q, &q, &q, 5, 1.0).is_err());
    }
}

//! Fused CPU kernels for the diffusion models, each with a plain-candle fallback for the other
//! devices: memory-efficient attention, GroupNorm(+SiLU), GEGLU and convolution.
//!
//! Why our own: candle's CPU ops materialize the full attention score matrix (38.65 GB at
//! 1024x1536), make five temporaries per GroupNorm and re-lay out every convolution kernel on
//! every call. Each kernel here reads its input once or twice and writes its output once.
//! Every kernel is checked against plain candle ops in its unit tests.

pub mod attention;
pub mod conv;
pub mod geglu;
pub mod group_norm;
pub mod linear;
pub mod vmath;
mod winograd;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

pub use attention::attention;
pub use conv::{conv2d, conv2d_direct, Conv2dParams};
pub use geglu::geglu;
pub use group_norm::group_norm;
pub use linear::linear_t;

/// The f32 slice of a contiguous CPU storage, or an error naming the op.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: expected f32 storage"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Runs `f` on f32 CPU tensors: half-precision inputs are widened first and the result narrowed
/// back, so the kernels have one precise code path.
pub(crate) fn widened(
    inputs: &[&Tensor],
    f: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    let dtype = inputs[0].dtype();
    let wide = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let out = f(&wide)?;
    if dtype == DType::F32 {
        Ok(out)
    } else {
        out.to_dtype(dtype)
    }
}

/// One input of a [`Kernel3`]: its contiguous f32 values and its layout.
pub(crate) type Input<'a> = (&'a [f32], &'a Layout);

/// A CPU kernel over three f32 tensors: candle's `CustomOp3` without the storage plumbing,
/// which [`run_cpu3`] supplies once for all of them.
pub(crate) trait Kernel3 {
    /// The op's name in candle's errors.
    const NAME: &'static str;

    /// The output values and their shape.
    fn run(&self, inputs: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)>;
}

/// Adapts a [`Kernel3`] to candle's custom-op interface.
struct Op3<K>(K);

impl<K: Kernel3> CustomOp3 for Op3<K> {
    fn name(&self) -> &'static str {
        K::NAME
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
        let inputs = [
            (f32_slice(s1, l1, K::NAME)?, l1),
            (f32_slice(s2, l2, K::NAME)?, l2),
            (f32_slice(s3, l3, K::NAME)?, l3),
        ];
        let (out, shape) = self.0.run(inputs)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Runs `kernel` on three CPU tensors (half precision widened to f32 around it).
pub(crate) fn run_cpu3<K: Kernel3>(inputs: [&Tensor; 3], kernel: K) -> Result<Tensor> {
    let op = Op3(kernel);
    widened(&inputs, |t| t[0].apply_op3_no_bwd(&t[1], &t[2], &op))
}

/// A raw pointer that parallel tasks may share because each writes a disjoint part of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
// SAFETY: only used by kernels whose tasks write disjoint index ranges.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole Send + Sync wrapper).
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Threads the kernels split work over (candle's own setting, so both agree).
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// dst (m x n, row stride `dst_rs`) += lhs (m x k, row-major) · rhs (k x n, row-major).
///
/// # Safety
/// `dst` must hold `m` rows of `dst_rs` with `n <= dst_rs`, and `rhs` `k * n` values.
pub(crate) unsafe fn gemm_into(
    dst: *mut f32,
    dst_rs: usize,
    lhs: &[f32],
    rhs: *const f32,
    m: usize,
    n: usize,
    k: usize,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        true,
        lhs.as_ptr(),
        1,
        k as isize,
        rhs,
        1,
        n as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        Parallelism::Rayon(threads()),
    );
}

/// Whether AVX2 and FMA can be used (checked once by std, then a relaxed load).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Calls `$body` (an `#[inline(always)]` function) compiled for AVX2+FMA when the CPU has them,
/// so its loops vectorize 8-wide, and as plain code elsewhere.
macro_rules! multiversion {
    (fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:path) => {
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { $body($($arg),*) }
                if $crate::engine::kernels::has_avx2() {
                    // SAFETY: the CPU supports the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Seeded normal samples for the kernels' tests: a failure reproduces, and a bound that holds
/// once holds every run (unseeded inputs once tripped a tight bound in CI).
#[cfg(test)]
pub(crate) fn seeded_randn<S: Into<candle_core::Shape>>(
    seed: u64,
    shape: S,
    mean: f32,
    std: f32,
) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let shape = shape.into();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(mean, std).expect("a finite, non-negative spread");
    let data: Vec<f32> = (0..shape.elem_count())
        .map(|_| normal.sample(&mut rng))
        .collect();
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu).expect("as many values as the shape")
}

/// Largest absolute difference between two tensors of one shape, for the kernels' tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}

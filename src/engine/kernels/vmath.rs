//! Branch-free vector math (exp, SiLU, GELU) written so the compiler vectorizes it: range
//! reduction with a rounding constant instead of `floor`, polynomials instead of libm calls.

use super::multiversion;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// exp(x) to about 2 ulp for x in [-87, 88]; inputs outside are clamped (exp(-87) ~ 1.6e-38,
/// which is zero for every use here: softmax weights and sigmoids).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    y * f32::from_bits(((bits + 127) << 23) as u32)
}

/// x * sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// erf(x), Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = 1.061_405_4_f32;
    let p = p * t - 1.453_152_1;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_74;
    let p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// The exact (erf) GELU that diffusers' GEGLU and `F.gelu` use.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn exp_sub_sum_body(x: &mut [f32], m: f32) -> f32 {
    // Eight partial sums keep the reduction vectorizable.
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = exp(*v - m);
            *a += *v;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
        s += *v;
    }
    s
}

multiversion!(fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 => exp_sub_sum_body);

#[inline(always)]
fn max_body(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in chunks.remainder() {
        m = m.max(*v);
    }
    m
}

multiversion!(fn max(x: &[f32]) -> f32 => max_body);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_over_its_range() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn erf_and_gelu_match_reference_values() {
        // erf values from tables; gelu(x) = x * Phi(x).
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-3.0) + 0.004_049_6).abs() < 1e-6);
        assert!((silu(2.0) - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn exp_sub_sum_and_max_handle_remainders() {
        let mut v: Vec<f32> = (0..19).map(|i| i as f32 * 0.3 - 2.0).collect();
        let m = max(&v);
        assert_eq!(m, 18.0 * 0.3 - 2.0);
        let want: f32 = v.iter().map(|x| (x - m).exp()).sum();
        let got = exp_sub_sum(&mut v, m);
        assert!((got - want).abs() < 1e-5);
        assert!((v[18] - 1.0).abs() < 1e-6);
    }
}

//! Winograd F(2x2, 3x3) for the stride-1, padding-1 3x3 convolutions that carry most of the
//! UNet's and the VAE's FLOPs: 16 multiplies per 2x2 output tile per channel pair instead of 36,
//! so the gemm work drops 2.25x.
//!
//! Each call: transform the weights (`U = G g Gᵀ`, 16 matrices of Cout x Cin), transform the
//! input tiles (`V = Bᵀ d B`, 16 matrices of Cin x tiles), run 16 gemms `M = U V`, and
//! transform back (`Y = Aᵀ M A`, plus the bias). Tiles are processed in bands of tile rows so
//! the scratch stays bounded at any image size, and the buffers are reused between calls.
//! The weight transform is redone per call (it costs ~1/T of the gemm) so no second copy of
//! the weights is kept resident.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::{multiversion, threads, SharedMut};

/// Floats of V (and of M) per band.
const BAND_ELEMS: usize = 16 << 20;

thread_local! {
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// U[xi][k][c] = (G g Gᵀ)[xi] for weight g (Cout, Cin, 3, 3).
fn transform_weights(w: &[f32], cout: usize, cin: usize, u: &mut [f32]) {
    let plane = cout * cin;
    let dst = SharedMut(u.as_mut_ptr());
    (0..cout).into_par_iter().for_each(|k| {
        for c in 0..cin {
            let g = &w[(k * cin + c) * 9..(k * cin + c) * 9 + 9];
            // t = G g (4x3), then U = t Gᵀ (4x4).
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            for (i, row) in t.iter().enumerate() {
                let (a, b, c2) = (row[0], row[1], row[2]);
                let vals = [a, 0.5 * (a + b + c2), 0.5 * (a - b + c2), c2];
                for (j, v) in vals.iter().enumerate() {
                    // SAFETY: (xi, k, c) is written by task k only, inside u.
                    unsafe { *dst.get().add((i * 4 + j) * plane + k * cin + c) = *v };
                }
            }
        }
    });
}

/// Input tiles of one channel plane for tile rows `tr0..tr0+rows` into V rows of channel `c`.
/// Row-wise: the vertical half of `Bᵀ d B` runs over whole (zero-padded) image rows, the
/// horizontal half over each tile's four columns, so there are no per-pixel bounds checks.
#[inline(always)]
fn transform_input_body(
    plane: &[f32],
    (h, w): (usize, usize),
    (tr0, rows, tw): (usize, usize, usize),
    v: SharedMut,
    (c, cin, band): (usize, usize, usize),
    pad: &mut Vec<f32>,
) {
    // Four padded rows (one zero column left, two right) and four combined rows.
    let pw = 2 * tw + 2;
    pad.clear();
    pad.resize(8 * pw, 0.0);
    let (src, t) = pad.split_at_mut(4 * pw);
    for r in 0..rows {
        let y0 = 2 * (tr0 + r) as isize - 1;
        for i in 0..4 {
            let row = &mut src[i * pw..(i + 1) * pw];
            let y = y0 + i as isize;
            if y < 0 || y >= h as isize {
                row.fill(0.0);
            } else {
                row[1..1 + w].copy_from_slice(&plane[y as usize * w..(y as usize + 1) * w]);
            }
        }
        // t = Bᵀ d over whole rows.
        {
            let (r0, rest) = src.split_at(pw);
            let (r1, rest) = rest.split_at(pw);
            let (r2, r3) = rest.split_at(pw);
            let (t0, rest) = t.split_at_mut(pw);
            let (t1, rest) = rest.split_at_mut(pw);
            let (t2, t3) = rest.split_at_mut(pw);
            for x in 0..pw {
                t0[x] = r0[x] - r2[x];
                t1[x] = r1[x] + r2[x];
                t2[x] = r2[x] - r1[x];
                t3[x] = r1[x] - r3[x];
            }
        }
        // V = t B, tile by tile.
        for i in 0..4 {
            let ti = &t[i * pw..(i + 1) * pw];
            // SAFETY: channel c's rows of the 16 matrices belong to this task; each row has
            // `band` >= (r + 1) * tw entries.
            let dst = |j: usize| unsafe {
                std::slice::from_raw_parts_mut(
                    v.get().add(((i * 4 + j) * cin + c) * band + r * tw),
                    tw,
                )
            };
            let (d0, d1, d2, d3) = (dst(0), dst(1), dst(2), dst(3));
            for tc in 0..tw {
                let x = 2 * tc;
                let (a, b, cc, d) = (ti[x], ti[x + 1], ti[x + 2], ti[x + 3]);
                d0[tc] = a - cc;
                d1[tc] = b + cc;
                d2[tc] = cc - b;
                d3[tc] = b - d;
            }
        }
    }
}

multiversion!(fn transform_input(plane: &[f32], hw: (usize, usize), rows: (usize, usize, usize), v: SharedMut, idx: (usize, usize, usize), pad: &mut Vec<f32>) => transform_input_body);

/// Y = Aᵀ M A + bias for output channel `k`, tile rows `tr0..`, into its output plane.
#[inline(always)]
fn transform_output_body(
    m: &[f32],
    out: SharedMut,
    (h, w): (usize, usize),
    (tr0, rows, tw): (usize, usize, usize),
    (k, cout, band): (usize, usize, usize),
    bias: f32,
    s: &mut Vec<f32>,
) {
    s.clear();
    s.resize(8 * tw, 0.0);
    for r in 0..rows {
        let at =
            |xi: usize| &m[(xi * cout + k) * band + r * tw..(xi * cout + k) * band + (r + 1) * tw];
        // s = Aᵀ M over the tile row: s[o][j][tile] for output row o, column j.
        for j in 0..4 {
            let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
            let (lo, hi) = s.split_at_mut(4 * tw);
            let (s0, s1) = (&mut lo[j * tw..(j + 1) * tw], &mut hi[j * tw..(j + 1) * tw]);
            for tc in 0..tw {
                s0[tc] = m0[tc] + m1[tc] + m2[tc];
                s1[tc] = m1[tc] - m2[tc] - m3[tc];
            }
        }
        for o in 0..2 {
            let y = 2 * (tr0 + r) + o;
            if y >= h {
                continue;
            }
            let so = &s[o * 4 * tw..(o + 1) * 4 * tw];
            // SAFETY: row y of plane k, inside the output; task k only.
            let row = unsafe { std::slice::from_raw_parts_mut(out.get().add(y * w), w) };
            for tc in 0..tw {
                let (a, b, c, d) = (so[tc], so[tw + tc], so[2 * tw + tc], so[3 * tw + tc]);
                row[2 * tc] = a + b + c + bias;
                if 2 * tc + 1 < w {
                    row[2 * tc + 1] = b - c - d + bias;
                }
            }
        }
    }
}

multiversion!(fn transform_output(m: &[f32], out: SharedMut, hw: (usize, usize), rows: (usize, usize, usize), idx: (usize, usize, usize), bias: f32, s: &mut Vec<f32>) => transform_output_body);

/// Whether Winograd pays off: with few tiles the per-call weight transform costs as much as
/// the gemm it saves, so small feature maps (SD's 16x16 and 8x8 levels) stay on im2col.
pub(crate) fn worthwhile(n: usize, h: usize, w: usize) -> bool {
    n * h.div_ceil(2) * w.div_ceil(2) >= 512
}

/// Tile rows per band for an image `w` pixels wide, so V and M stay under [`BAND_ELEMS`].
pub(crate) fn band_rows(cin: usize, cout: usize, w: usize) -> usize {
    (BAND_ELEMS / (16 * cin.max(cout) * w.div_ceil(2)).max(1)).max(1)
}

/// out (N, Cout, H, W) = conv3x3(x (N, Cin, H, W), w, stride 1, padding 1) + bias.
pub(crate) fn conv3x3(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    (n, cin, h, wd): (usize, usize, usize, usize),
    cout: usize,
    out: &mut [f32],
) {
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let band_rows = band_rows(cin, cout, wd).clamp(1, th);
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let (u, v, m) = &mut *scratch;
        if u.len() < 16 * cout * cin {
            u.resize(16 * cout * cin, 0.0);
        }
        transform_weights(w, cout, cin, u);
        for b in 0..n {
            let xb = &x[b * cin * h * wd..(b + 1) * cin * h * wd];
            let ob = SharedMut(out[b * cout * h * wd..].as_mut_ptr());
            let mut tr0 = 0;
            while tr0 < th {
                let rows = band_rows.min(th - tr0);
                let band = rows * tw;
                if v.len() < 16 * cin * band {
                    v.resize(16 * cin * band, 0.0);
                }
                if m.len() < 16 * cout * band {
                    m.resize(16 * cout * band, 0.0);
                }
                let vp = SharedMut(v.as_mut_ptr());
                (0..cin).into_par_iter().for_each_init(Vec::new, |pad, c| {
                    let plane = &xb[c * h * wd..(c + 1) * h * wd];
                    transform_input(plane, (h, wd), (tr0, rows, tw), vp, (c, cin, band), pad);
                });
                for xi in 0..16 {
                    // SAFETY: M[xi] (cout x band) = U[xi] (cout x cin) · V[xi] (cin x band).
                    unsafe {
                        gemm::gemm(
                            cout,
                            band,
                            cin,
                            m.as_mut_ptr().add(xi * cout * band),
                            1,
                            band as isize,
                            false,
                            u.as_ptr().add(xi * cout * cin),
                            1,
                            cin as isize,
                            v.as_ptr().add(xi * cin * band),
                            1,
                            band as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::Rayon(threads()),
                        );
                    }
                }
                let mref = &m[..16 * cout * band];
                (0..cout).into_par_iter().for_each_init(Vec::new, |buf, k| {
                    // SAFETY: plane k of image b.
                    let plane = SharedMut(unsafe { ob.get().add(k * h * wd) });
                    let idx = (k, cout, band);
                    transform_output(mref, plane, (h, wd), (tr0, rows, tw), idx, bias[k], buf);
                });
                tr0 += rows;
            }
        }
    });
}

//! Tiled VAE decoding: large latents are decoded in overlapping tiles whose overlaps are
//! blended with linear ramps, so memory stays bounded (candle's CPU decoder needs tens of GB for
//! a whole 512x768 image). Small latents are decoded whole, exactly as diffusers does, so the
//! parity references are untouched.

use candle_core::{DType, Device, Tensor};

use super::error::Result;

/// Evenly spaced tile starts covering `len` with tiles of `tile` that overlap by at least
/// `min_overlap`.
pub(crate) fn tile_starts(len: usize, tile: usize, min_overlap: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let stride = tile.saturating_sub(min_overlap).max(1);
    let n = (len - tile).div_ceil(stride) + 1;
    (0..n)
        .map(|k| ((k * (len - tile)) as f64 / (n - 1) as f64).round() as usize)
        .collect()
}

/// Blend weights along one axis of tile `k`: 1 inside, ramping down over the overlap with each
/// neighbour (in output pixels).
fn axis_weights(starts: &[usize], k: usize, tile_px: usize, scale: usize) -> Vec<f32> {
    let start = starts[k] * scale;
    let end = start + tile_px;
    let before = (k > 0).then(|| (starts[k - 1] * scale + tile_px).saturating_sub(start));
    let after = starts.get(k + 1).map(|&n| end.saturating_sub(n * scale));
    (0..tile_px)
        .map(|i| {
            let mut w = 1.0f32;
            if let Some(ov) = before.filter(|&o| o > 0) {
                if i < ov {
                    w = w.min((i + 1) as f32 / (ov + 1) as f32);
                }
            }
            if let Some(ov) = after.filter(|&o| o > 0) {
                if i >= tile_px - ov {
                    w = w.min((tile_px - i) as f32 / (ov + 1) as f32);
                }
            }
            w
        })
        .collect()
}

/// Decodes `latents` (`[1, C, h, w]`) tile by tile with `decode`, which maps a latent tile to an
/// image tile `scale` times larger. Returns `[1, 3, h*scale, w*scale]` f32 on `device`.
pub(crate) fn decode_tiled(
    latents: &Tensor,
    tile: usize,
    scale: usize,
    device: &Device,
    decode: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = latents.dims4()?;
    let overlap = (tile / 4).max(1);
    let ys = tile_starts(h, tile, overlap);
    let xs = tile_starts(w, tile, overlap);
    let (th, tw) = (tile.min(h), tile.min(w));
    let (oh, ow) = (h * scale, w * scale);
    let mut acc = vec![0f32; 3 * oh * ow];
    let mut wsum = vec![0f32; oh * ow];
    for (ky, &y0) in ys.iter().enumerate() {
        let wy = axis_weights(&ys, ky, th * scale, scale);
        for (kx, &x0) in xs.iter().enumerate() {
            let wx = axis_weights(&xs, kx, tw * scale, scale);
            let part = latents.narrow(2, y0, th)?.narrow(3, x0, tw)?;
            let img = decode(&part)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?;
            let pix: Vec<f32> = img.flatten_all()?.to_vec1()?;
            let (ph, pw) = (th * scale, tw * scale);
            for c in 0..3 {
                for y in 0..ph {
                    let row = (c * oh + y0 * scale + y) * ow + x0 * scale;
                    for x in 0..pw {
                        let wgt = wy[y] * wx[x];
                        acc[row + x] += pix[(c * ph + y) * pw + x] * wgt;
                        if c == 0 {
                            wsum[(y0 * scale + y) * ow + x0 * scale + x] += wgt;
                        }
                    }
                }
            }
        }
    }
    for c in 0..3 {
        for i in 0..oh * ow {
            acc[c * oh * ow + i] /= wsum[i].max(f32::MIN_POSITIVE);
        }
    }
    Ok(Tensor::from_vec(acc, (1, 3, oh, ow), &Device::Cpu)?.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis_with_overlap() {
        assert_eq!(tile_starts(20, 32, 8), vec![0]);
        for (len, tile, ov) in [(96, 32, 8), (100, 32, 8), (33, 32, 8), (192, 64, 16)] {
            let s = tile_starts(len, tile, ov);
            assert_eq!(s[0], 0);
            assert_eq!(s.last().unwrap() + tile, len, "ends at the edge");
            for pair in s.windows(2) {
                assert!(pair[1] > pair[0]);
                assert!(pair[0] + tile >= pair[1] + ov, "overlap >= {ov}: {s:?}");
            }
        }
    }

    #[test]
    fn tiles_of_an_identity_decoder_reassemble_the_input_exactly() {
        // A "decoder" that upsamples by nearest neighbour: blending must give back exactly the
        // whole-image result, whatever the tiling.
        let z = Tensor::randn(0f32, 1f32, (1, 3, 40, 56), &Device::Cpu).unwrap();
        let up = |t: &Tensor| -> Result<Tensor> {
            let (_, _, h, w) = t.dims4()?;
            Ok(t.upsample_nearest2d(h * 2, w * 2)?)
        };
        let whole = up(&z).unwrap();
        let tiled = decode_tiled(&z, 16, 2, &Device::Cpu, up).unwrap();
        let diff: f32 = (whole - tiled)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-5, "max diff {diff}");
    }
}

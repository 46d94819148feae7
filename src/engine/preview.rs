//! Live previews without the VAE. With the family's TAESD loaded, a TAESD decode of the
//! latents shrunk so the longest side is at most [`PREVIEW_LATENT_SIDE`] cells (a 256 px
//! image; shrinking first makes it cheap enough for every step, see the README's measurements).
//! Without one, A1111's "Approx cheap": a fixed linear map from the four SD latent channels to
//! RGB, one pixel per latent cell. The pixels leave the engine, the tensor never does.

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::error::Result;
use super::loading::model::StableDiffusion;
use super::models::taesd::Taesd;
use super::pixels::to_rgb_images;

/// Longest side, in latent cells, of what a TAESD preview decodes: 32 cells = 256 px.
pub(crate) const PREVIEW_LATENT_SIDE: usize = 32;

/// The preview of the first image of `latents` (scaled, as the sampler holds them): TAESD
/// when the model has one, else the cheap approximation.
pub(crate) fn preview(model: &StableDiffusion, latents: &Tensor) -> Result<Option<RgbImage>> {
    match model.taesd() {
        Ok(t) => taesd_preview(t, &latents.to_dtype(model.dtype)?).map(Some),
        Err(_) => latent_preview(latents),
    }
}

/// The latents shrunk (area average when the factor divides them, else bilinear) so neither
/// side is over [`PREVIEW_LATENT_SIDE`] cells.
pub(crate) fn preview_latents(latents: &Tensor) -> Result<Tensor> {
    let first = latents.narrow(0, 0, 1)?;
    let (_, _, h, w) = first.dims4()?;
    let f = h.max(w).div_ceil(PREVIEW_LATENT_SIDE);
    if f <= 1 {
        return Ok(first);
    }
    if h.is_multiple_of(f) && w.is_multiple_of(f) {
        return Ok(first.avg_pool2d(f)?);
    }
    Ok(first.upsample_bilinear2d(h.div_ceil(f), w.div_ceil(f), false)?)
}

/// The TAESD decode of [`preview_latents`], as RGB8.
pub(crate) fn taesd_preview(taesd: &Taesd, latents: &Tensor) -> Result<RgbImage> {
    let images = taesd.decode(&preview_latents(latents)?)?;
    let mut rgb = to_rgb_images(&images)?;
    Ok(rgb.remove(0))
}

/// Latent channel -> (R, G, B) weights for SD 1.x/2.x latents (A1111's `cheap_approximation`).
const LATENT_RGB: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// The first image of a `[batch, 4, h, w]` latent batch as an `w x h` RGB preview; `None` for
/// latents of another channel count, whose colours this map does not know.
pub(crate) fn latent_preview(latents: &Tensor) -> Result<Option<RgbImage>> {
    let (_, c, h, w) = latents.dims4()?;
    if c != LATENT_RGB.len() {
        return Ok(None);
    }
    let first = latents.get(0)?.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        image::Rgb(std::array::from_fn(|rgb| {
            let v: f32 = (0..c).map(|ch| first[ch][y][x] * LATENT_RGB[ch][rgb]).sum();
            // [-1, 1] -> [0, 255], as A1111 maps its previews.
            (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8
        }))
    });
    Ok(Some(img))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_pixel_per_latent_cell_through_the_linear_map() {
        // Channel 0 = 1 everywhere, the rest 0: every pixel is row 0 of the map.
        let mut data = vec![0f32; 2 * 4 * 3 * 5];
        data[..15].fill(1.0);
        let t = Tensor::from_vec(data, (2, 4, 3, 5), &Device::Cpu).unwrap();
        let img = latent_preview(&t).unwrap().unwrap();
        assert_eq!(img.dimensions(), (5, 3));
        let px = |v: f32| (((v + 1.0) / 2.0) * 255.0).round() as u8;
        assert_eq!(img.get_pixel(4, 2).0, [px(0.298), px(0.207), px(0.208)]);
        let other = Tensor::zeros((1, 16, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(latent_preview(&other).unwrap().is_none());
    }
}

//! Live previews without the VAE: A1111's "Approx cheap", a fixed linear map from the four SD
//! latent channels to RGB, one pixel per latent cell. Cheap enough to run every few steps; the
//! pixels leave the engine, the tensor never does.

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::error::Result;

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

//! Conversions between image tensors in [-1, 1] and RGB8 images: what the VAE and TAESD
//! decodes become, and what an init image becomes before the VAE encodes it.

use candle_core::{DType, Tensor};

use super::error::{EngineError, Result};

/// Images in [-1, 1] `[batch, 3, H, W]` -> RGB8 images, as diffusers' postprocess does.
pub fn to_rgb_images(images: &Tensor) -> Result<Vec<image::RgbImage>> {
    let (b, _, h, w) = images.dims4()?;
    let pixels = ((images.to_dtype(DType::F32)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .affine(255.0, 0.0)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((0, 2, 3, 1))?
        .contiguous()?;
    (0..b)
        .map(|i| {
            let data = pixels.get(i)?.flatten_all()?.to_vec1::<u8>()?;
            image::RgbImage::from_raw(w as u32, h as u32, data)
                .ok_or_else(|| EngineError::Model("image buffer has the wrong size".into()))
        })
        .collect()
}

/// An RGB8 image -> `[1, 3, H, W]` f32 in [-1, 1], the VAE's input range.
pub fn from_rgb_image(img: &image::RgbImage) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let t = Tensor::from_vec(
        img.as_raw().clone(),
        (h as usize, w as usize, 3),
        &candle_core::Device::Cpu,
    )?
    .permute((2, 0, 1))?
    .to_dtype(DType::F32)?
    .affine(2.0 / 255.0, -1.0)?
    .unsqueeze(0)?;
    Ok(t)
}

//! Live previews on their way to clients: how often jobs ask the engine for one, and how the
//! engine's preview image becomes the small `data:` URL that a job's `preview` event and
//! `GET /api/jobs/{id}` carry. Encoding happens once per preview on the job's thread, so what
//! it costs does not depend on how many clients watch or how fast they read.

use base64::Engine as _;
use image::RgbImage;

use crate::engine::{encode_image, thumbnail, ImageFormat, Progress};
use crate::jobs::{JobContext, JobPreview};

/// Every how many steps a job's progress carries a preview unless `--preview-every` says
/// otherwise: often enough to watch a portrait form, cheap beside a denoising step.
pub const DEFAULT_PREVIEW_EVERY: usize = 2;

/// The longest side of a preview as clients get it; bigger ones are scaled down.
pub const PREVIEW_MAX_SIDE: u32 = 256;

/// A PNG up to this size is sent as it is; a bigger one goes as JPEG when that is smaller
/// (a noisy mid-denoise picture compresses badly as PNG).
const PNG_BUDGET: usize = 24 * 1024;
const JPEG_QUALITY: u8 = 80;

/// The engine's preview at step `step` of `total`, as clients get it: scaled down to at most
/// [`PREVIEW_MAX_SIDE`], encoded as PNG (or JPEG when that is smaller for a big one), as a data
/// URL. `None` only if encoding failed, which a preview can do without.
pub(crate) fn job_preview(step: usize, total: usize, img: &RgbImage) -> Option<JobPreview> {
    let small = thumbnail(img, PREVIEW_MAX_SIDE);
    let mut bytes = encode_image(&small, ImageFormat::Png, None, 0).ok()?;
    let mut format = ImageFormat::Png;
    if bytes.len() > PNG_BUDGET {
        if let Ok(jpeg) = encode_image(&small, ImageFormat::Jpeg, None, JPEG_QUALITY) {
            if jpeg.len() < bytes.len() {
                (bytes, format) = (jpeg, ImageFormat::Jpeg);
            }
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    Some(JobPreview {
        step,
        total,
        width: small.width(),
        height: small.height(),
        image: format!("data:{};base64,{b64}", format.mime_type()),
    })
}

/// The progress callback of a job that paints one picture: step i/N to the queue, and each
/// preview the engine attaches to the job's preview slot.
pub(crate) fn reporter(ctx: JobContext) -> Box<dyn FnMut(Progress) + Send> {
    Box::new(move |p: Progress| {
        ctx.progress(p.step, p.total);
        if let Some(preview) = p.preview.and_then(|img| job_preview(p.step, p.total, &img)) {
            ctx.preview(preview);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(p: &JobPreview) -> RgbImage {
        let (head, b64) = p.image.split_once(',').unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mime = if bytes.starts_with(b"\x89PNG") {
            "image/png"
        } else {
            "image/jpeg"
        };
        assert_eq!(head, format!("data:{mime};base64"));
        crate::engine::decode_image(&bytes).unwrap()
    }

    #[test]
    fn a_small_preview_stays_a_png_of_its_own_size() {
        let img = RgbImage::from_pixel(64, 96, image::Rgb([10, 20, 30]));
        let p = job_preview(3, 10, &img).unwrap();
        assert_eq!((p.step, p.total, p.width, p.height), (3, 10, 64, 96));
        assert!(p.image.starts_with("data:image/png;base64,"));
        assert_eq!(decoded(&p).dimensions(), (64, 96));
    }

    #[test]
    fn a_big_noisy_preview_is_scaled_down_and_kept_small() {
        // Noise: the worst case for PNG, what a picture looks like early in denoising.
        let mut x: u32 = 1;
        let img = RgbImage::from_fn(768, 512, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
        });
        let p = job_preview(1, 20, &img).unwrap();
        assert_eq!((p.width, p.height), (256, 171));
        assert_eq!(decoded(&p).dimensions(), (256, 171));
        assert!(
            p.image.starts_with("data:image/jpeg;base64,"),
            "noise goes as JPEG"
        );
        // 256x171 noise is ~130 KB raw; what goes out is a fraction of that.
        assert!(p.image.len() < 100 * 1024, "{} bytes", p.image.len());
    }
}

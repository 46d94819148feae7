//! Memory admission: before a job runs, the engine estimates its peak memory (weights plus the
//! working memory of the largest UNet call and of the VAE decode at this size, batch and hires
//! pass) and refuses the job with [`EngineError::TooLarge`] when that is over the limit, so no
//! request can abort or OOM the process.
//!
//! The per-cell coefficients were measured with `limner bench` on the full-size SD 1.5 model
//! (peak RSS minus the weights, f32 on the CPU) and rounded up; see the README's benchmark notes.

use super::error::{EngineError, Result};

/// The sizes of a job that decide its memory: first-pass size, images, guidance, hires scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobShape {
    pub width: usize,
    pub height: usize,
    pub batch_size: usize,
    /// Classifier-free guidance doubles the UNet batch.
    pub guided: bool,
    /// The hires pass' scale, if there is one.
    pub hires_scale: Option<f64>,
}

/// Working bytes of one UNet sample per latent cell, per channel of the first block (f32).
/// Covers the skip connections, the widest transformer's GEGLU tensors and conv scratch.
const UNET_BYTES_PER_CELL_CHANNEL: f64 = 200.0;
/// Working bytes of the VAE decoder per output pixel, per channel of its first block (f32).
const VAE_BYTES_PER_PIXEL_CHANNEL: f64 = 26.0;
/// Fixed overhead: allocator slack, the text encoder's activations, thread stacks, buffers.
const BASE_BYTES: u64 = 512 << 20;

/// The shape facts an estimate needs, read from a loaded model.
#[derive(Debug, Clone, Copy)]
pub struct ModelFootprint {
    /// Bytes of all loaded weights.
    pub weights: u64,
    /// Channels of the UNet's first block (320 for SD 1.x/2.x/XL).
    pub unet_channels: usize,
    /// Channels of the VAE decoder's last (full-resolution) block.
    pub vae_channels: usize,
    /// Bytes per activation value (4 for f32, 2 for f16/bf16).
    pub value_bytes: usize,
    /// Pixels per latent cell along a side (8).
    pub vae_scale: usize,
}

/// What a job is estimated to need at its peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub weights: u64,
    pub unet: u64,
    pub vae: u64,
    pub peak: u64,
}

/// Output size of the last pass: the first pass' size times the hires scale, as the pipeline
/// computes it (whole latent cells).
fn final_size(job: &JobShape, vae_scale: usize) -> (usize, usize) {
    match job.hires_scale {
        Some(scale) => {
            let cell = |v: usize| ((v / vae_scale) as f64 * scale).round() as usize * vae_scale;
            (cell(job.width), cell(job.height))
        }
        None => (job.width, job.height),
    }
}

/// Working bytes of a whole-image VAE decode of `images` images of `w` x `h` pixels.
pub fn vae_whole_bytes(m: &ModelFootprint, w: usize, h: usize, images: usize) -> u64 {
    let value = m.value_bytes as f64 / 4.0;
    (VAE_BYTES_PER_PIXEL_CHANNEL * m.vae_channels as f64 * (w * h * images) as f64 * value) as u64
}

/// Whether decoding the whole image at once stays under `limit`; otherwise the pipeline decodes
/// in tiles of `tile_px` (with a blended overlap, so about 2.25 tiles' worth at once).
pub fn decode_whole_fits(
    m: &ModelFootprint,
    w: usize,
    h: usize,
    images: usize,
    limit: Option<u64>,
) -> bool {
    limit.is_none_or(|l| m.weights + vae_whole_bytes(m, w, h, images) + BASE_BYTES <= l)
}

pub fn estimate(
    m: &ModelFootprint,
    job: &JobShape,
    tile_px: usize,
    limit: Option<u64>,
) -> Estimate {
    let (w, h) = final_size(job, m.vae_scale);
    let cells = (w / m.vae_scale * (h / m.vae_scale)) as f64;
    let guided = if job.guided { 2 } else { 1 };
    let samples = (job.batch_size * guided) as f64;
    let value = m.value_bytes as f64 / 4.0;
    let unet =
        (UNET_BYTES_PER_CELL_CHANNEL * m.unet_channels as f64 * cells * samples * value) as u64;
    let vae = if decode_whole_fits(m, w, h, job.batch_size, limit) {
        vae_whole_bytes(m, w, h, job.batch_size)
    } else {
        let t = tile_px.min(w.max(h));
        (vae_whole_bytes(m, t, t, 1) as f64 * 2.25) as u64
    };
    Estimate {
        weights: m.weights,
        unet,
        vae,
        peak: m.weights + unet.max(vae) + BASE_BYTES,
    }
}

/// Refuses a job whose estimate is over `limit` (None = no limit).
pub fn admit(
    m: &ModelFootprint,
    job: &JobShape,
    tile_px: usize,
    limit: Option<u64>,
) -> Result<Estimate> {
    let e = estimate(m, job, tile_px, limit);
    match limit {
        Some(limit) if e.peak > limit => {
            let (w, h) = final_size(job, m.vae_scale);
            let what = if job.hires_scale.is_some() {
                format!(
                    "{}x{} with a hires pass to {w}x{h}, batch {}",
                    job.width, job.height, job.batch_size
                )
            } else {
                format!("{w}x{h}, batch {}", job.batch_size)
            };
            Err(EngineError::TooLarge {
                what,
                estimate: e.peak,
                weights: e.weights,
                limit,
            })
        }
        _ => Ok(e),
    }
}

/// The default limit: 90% of the machine's physical memory (`MemTotal`), leaving room for the
/// server and the OS. None where it cannot be read.
pub fn machine_limit() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024 / 10 * 9)
}

/// The limit a setting asks for: "none"/"off" = no limit, a size = that size, unset or "auto" =
/// [`machine_limit`] on the CPU and no limit on a GPU (whose memory is not the machine's; give
/// the card's size there).
pub fn resolve_limit(setting: Option<&str>, cpu: bool) -> std::result::Result<Option<u64>, String> {
    match setting.map(str::trim) {
        None | Some("") | Some("auto") => Ok(if cpu { machine_limit() } else { None }),
        Some("none") | Some("off") | Some("unlimited") => Ok(None),
        Some(size) => parse_size(size)
            .map(Some)
            .map_err(|e| format!("max_memory: {e}")),
    }
}

/// Parses a size such as "12G", "12GiB", "800M" or a plain byte count.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 12G or 800M"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    Ok((value * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(w: usize, h: usize, hires: Option<f64>) -> JobShape {
        JobShape {
            width: w,
            height: h,
            batch_size: 1,
            guided: true,
            hires_scale: hires,
        }
    }

    const SD15: ModelFootprint = ModelFootprint {
        weights: 4 << 30,
        unet_channels: 320,
        vae_channels: 128,
        value_bytes: 4,
        vae_scale: 8,
    };

    #[test]
    fn hires_pass_sets_the_size_and_limits_refuse_with_numbers() {
        let small = estimate(&SD15, &job(512, 768, None), 512, None);
        let hires = estimate(&SD15, &job(512, 768, Some(2.0)), 512, None);
        assert!(hires.unet > 3 * small.unet && hires.peak > small.peak);
        let err = admit(&SD15, &job(1024, 1024, Some(2.0)), 512, Some(12 << 30)).unwrap_err();
        let text = err.to_string();
        assert!(err.is_client_error());
        assert!(
            text.contains("2048x2048") && text.contains("12.0 GiB"),
            "{text}"
        );
        assert!(admit(&SD15, &job(512, 512, None), 512, Some(12 << 30)).is_ok());
        assert!(admit(&SD15, &job(4096, 4096, None), 512, None).is_ok());
    }

    #[test]
    fn decode_is_whole_when_it_fits_and_tiled_beyond() {
        let whole = estimate(&SD15, &job(2048, 2048, None), 512, None);
        assert!(decode_whole_fits(&SD15, 2048, 2048, 1, None));
        assert!(!decode_whole_fits(&SD15, 2048, 2048, 1, Some(8 << 30)));
        let tiled = estimate(&SD15, &job(2048, 2048, None), 512, Some(8 << 30));
        assert!(tiled.vae * 4 < whole.vae);
        assert!(decode_whole_fits(&SD15, 512, 512, 1, Some(8 << 30)));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("12G").unwrap(), 12 << 30);
        assert_eq!(parse_size("800MiB").unwrap(), 800 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(machine_limit().is_some_and(|b| b > 1 << 28));
        assert_eq!(resolve_limit(None, true).unwrap(), machine_limit());
        assert_eq!(resolve_limit(Some("auto"), false).unwrap(), None);
        assert_eq!(resolve_limit(Some("none"), true).unwrap(), None);
        assert_eq!(resolve_limit(Some("2G"), false).unwrap(), Some(2 << 30));
        assert!(resolve_limit(Some("2 elephants"), true)
            .unwrap_err()
            .contains("max_memory"));
    }
}

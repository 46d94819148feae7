//! Image files in and out: encodes generated images as PNG (with A1111's `parameters` text
//! chunk), JPEG or WebP (with the same text in EXIF `UserComment`, where A1111 puts it), reads
//! the parameters back, makes thumbnails, and decodes init images for img2img.

use std::io::Cursor;

use image::{ImageDecoder, ImageEncoder, RgbImage};

use super::error::EngineError;

/// Largest init image side we decode; bigger images are refused before pixels are allocated.
pub const MAX_DECODE_SIDE: u32 = 8192;

/// The keyword A1111 writes its generation parameters under.
pub const PARAMETERS_KEYWORD: &str = "parameters";

/// The encodings we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// Parses `png`, `jpeg`/`jpg`, `webp` (any case, leading dot allowed).
    pub fn parse(s: &str) -> Result<ImageFormat, EngineError> {
        match s
            .trim()
            .trim_start_matches('.')
            .to_ascii_lowercase()
            .as_str()
        {
            "png" => Ok(ImageFormat::Png),
            "jpeg" | "jpg" => Ok(ImageFormat::Jpeg),
            "webp" => Ok(ImageFormat::Webp),
            other => Err(EngineError::invalid(
                "format",
                format!("unknown image format '{other}'; known formats: png, jpeg, webp"),
            )),
        }
    }

    /// The format a file name asks for through its extension.
    pub fn from_path(path: &std::path::Path) -> Result<ImageFormat, EngineError> {
        let ext = path.extension().and_then(|e| e.to_str()).ok_or_else(|| {
            EngineError::invalid(
                "format",
                format!(
                    "'{}' has no extension; use .png, .jpg or .webp",
                    path.display()
                ),
            )
        })?;
        ImageFormat::parse(ext)
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        }
    }

    /// The MIME type to serve the bytes with.
    pub fn mime_type(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageFormat::parse(s)
    }
}

fn encode_failed(format: &str, e: impl std::fmt::Display) -> EngineError {
    // Encoding an in-memory RGB buffer only fails on a bug or an absurd size, not on user input.
    EngineError::Io(std::io::Error::other(format!(
        "{format} encoding failed: {e}"
    )))
}

/// Encodes `img`. `parameters` (A1111's infotext) goes into a PNG text chunk, or into EXIF
/// `UserComment` for JPEG and WebP. `quality` (1-100) applies to JPEG only; WebP is lossless,
/// the only WebP encoding the `image` crate offers.
pub fn encode_image(
    img: &RgbImage,
    format: ImageFormat,
    parameters: Option<&str>,
    quality: u8,
) -> Result<Vec<u8>, EngineError> {
    if img.width() == 0 || img.height() == 0 {
        return Err(EngineError::invalid(
            "image",
            "image has zero width or height",
        ));
    }
    let mut out = Vec::new();
    match format {
        ImageFormat::Png => encode_png(img, parameters, &mut out)?,
        ImageFormat::Jpeg => {
            let q = quality.clamp(1, 100);
            let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q);
            if let Some(text) = parameters {
                enc.set_exif_metadata(exif_user_comment(text))
                    .map_err(|e| encode_failed("jpeg", e))?;
            }
            enc.write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| encode_failed("jpeg", e))?;
        }
        ImageFormat::Webp => {
            let mut enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            if let Some(text) = parameters {
                enc.set_exif_metadata(exif_user_comment(text))
                    .map_err(|e| encode_failed("webp", e))?;
            }
            enc.write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| encode_failed("webp", e))?;
        }
    }
    Ok(out)
}

fn encode_png(
    img: &RgbImage,
    parameters: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<(), EngineError> {
    let mut enc = png::Encoder::new(&mut *out, img.width(), img.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(text) = parameters {
        // PIL (and so A1111) writes tEXt when the text is Latin-1 and iTXt (UTF-8) otherwise.
        let latin1 = text.chars().all(|c| (c as u32) <= 0xFF);
        let result = if latin1 {
            enc.add_text_chunk(PARAMETERS_KEYWORD.to_string(), text.to_string())
        } else {
            enc.add_itxt_chunk(PARAMETERS_KEYWORD.to_string(), text.to_string())
        };
        result.map_err(|e| encode_failed("png", e))?;
    }
    let mut writer = enc.write_header().map_err(|e| encode_failed("png", e))?;
    writer
        .write_image_data(img.as_raw())
        .map_err(|e| encode_failed("png", e))?;
    writer.finish().map_err(|e| encode_failed("png", e))?;
    Ok(())
}

/// The `parameters` text of a PNG, from tEXt, zTXt or iTXt (compressed or not). `None` when the
/// bytes are not a PNG or carry no such chunk.
pub fn read_png_parameters(bytes: &[u8]) -> Option<String> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    // Text chunks before IDAT are read with the header; A1111 and we write them there.
    let reader = decoder.read_info().ok()?;
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS_KEYWORD)
    {
        return Some(t.text.clone());
    }
    if let Some(t) = info
        .compressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS_KEYWORD)
    {
        return t.get_text().ok();
    }
    info.utf8_text
        .iter()
        .find(|t| t.keyword == PARAMETERS_KEYWORD)
        .and_then(|t| t.get_text().ok())
}

/// The parameters text of any image we can read: PNG text chunks, or the EXIF `UserComment` of
/// a JPEG or WebP (A1111's place for them). What `/sdapi/v1/png-info` needs.
pub fn read_parameters(bytes: &[u8]) -> Option<String> {
    if bytes.starts_with(b"\x89PNG") {
        return read_png_parameters(bytes);
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let mut decoder = reader.into_decoder().ok()?;
    let exif = decoder.exif_metadata().ok()??;
    read_exif_user_comment(&exif)
}

/// A minimal big-endian EXIF block: IFD0 pointing to an Exif IFD holding only `UserComment`,
/// encoded as piexif's `UserComment.dump(text, encoding="unicode")` (A1111's call) encodes it.
fn exif_user_comment(text: &str) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    for unit in text.encode_utf16() {
        comment.extend_from_slice(&unit.to_be_bytes());
    }
    // Layout: header (8) | IFD0: count(2) + 1 entry(12) + next(4) = 18 | Exif IFD: 18 | data.
    let exif_ifd_offset: u32 = 8 + 18;
    let data_offset: u32 = exif_ifd_offset + 18;
    let mut out = Vec::with_capacity(data_offset as usize + comment.len());
    out.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    // IFD0: ExifIFDPointer (0x8769), LONG, 1.
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0x8769u16.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&exif_ifd_offset.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    // Exif IFD: UserComment (0x9286), UNDEFINED, n bytes at data_offset.
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0x9286u16.to_be_bytes());
    out.extend_from_slice(&7u16.to_be_bytes());
    out.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    out.extend_from_slice(&data_offset.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&comment);
    out
}

/// Finds `UserComment` in an EXIF block (either byte order, with or without the `Exif\0\0`
/// prefix) and decodes it as piexif's `UserComment.load` does (ASCII, UNICODE = UTF-16).
fn read_exif_user_comment(exif: &[u8]) -> Option<String> {
    let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let big = match tiff.get(0..2)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(o..o.checked_add(2)?)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<usize> {
        let b: [u8; 4] = tiff.get(o..o.checked_add(4)?)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        } as usize)
    };
    // Returns (count, value offset) of `tag` in the IFD at `ifd`.
    let find = |ifd: usize, tag: u16| -> Option<(usize, usize)> {
        let n = u16_at(ifd)? as usize;
        (0..n).find_map(|i| {
            let e = ifd + 2 + 12 * i;
            (u16_at(e)? == tag).then(|| Some((u32_at(e + 4)?, e + 8)))?
        })
    };
    let (_, ptr) = find(u32_at(4)?, 0x8769)?;
    let (count, value_at) = find(u32_at(ptr)?, 0x9286)?;
    // Values over four bytes live at the offset stored in the entry.
    let start = if count > 4 {
        u32_at(value_at)?
    } else {
        value_at
    };
    let data = tiff.get(start..start.checked_add(count)?)?;
    let (prefix, body) = data.split_at(8.min(data.len()));
    match prefix {
        b"UNICODE\0" => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| {
                    let b = [c[0], c[1]];
                    if big {
                        u16::from_be_bytes(b)
                    } else {
                        u16::from_le_bytes(b)
                    }
                })
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        _ => Some(
            String::from_utf8_lossy(body)
                .trim_end_matches('\0')
                .to_string(),
        ),
    }
}

/// Shrinks `img` so its longer side is at most `max_side`, keeping the aspect ratio (Lanczos3).
/// Images already small enough are returned unchanged; neither side goes below 1 pixel.
pub fn thumbnail(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let max_side = max_side.max(1);
    if w <= max_side && h <= max_side {
        return img.clone();
    }
    let scale = max_side as f64 / w.max(h) as f64;
    let tw = ((w as f64 * scale).round() as u32).clamp(1, max_side);
    let th = ((h as f64 * scale).round() as u32).clamp(1, max_side);
    image::imageops::resize(img, tw, th, image::imageops::FilterType::Lanczos3)
}

/// Decodes an init image (PNG, JPEG or WebP; alpha dropped). Undecodable or oversized input is
/// an `init_image` error.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, EngineError> {
    let bad = |msg: String| EngineError::invalid("init_image", msg);
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(bad(
            "not a PNG, JPEG or WebP image (unrecognized file header)".to_string(),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => bad(format!(
            "image is larger than {MAX_DECODE_SIDE}x{MAX_DECODE_SIDE} pixels or too big to decode: {e}"
        )),
        other => bad(format!("cannot decode image: {other}")),
    })?;
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        })
    }

    #[test]
    fn parses_formats() {
        assert_eq!(ImageFormat::parse("PNG").ok(), Some(ImageFormat::Png));
        assert_eq!(ImageFormat::parse("jpg").ok(), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::parse("jpeg").ok(), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::parse(".webp").ok(), Some(ImageFormat::Webp));
        let err = ImageFormat::parse("gif").unwrap_err().to_string();
        assert!(
            err.contains("format") && err.contains("gif") && err.contains("webp"),
            "{err}"
        );
        let p = std::path::Path::new("out/portrait.JPG");
        assert_eq!(ImageFormat::from_path(p).ok(), Some(ImageFormat::Jpeg));
        assert!(ImageFormat::from_path(std::path::Path::new("noext")).is_err());
    }

    #[test]
    fn png_round_trips_pixels_and_latin1_parameters_as_text() {
        let img = gradient(24, 16);
        let text =
            "a knight, café\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 24x16";
        let bytes = encode_image(&img, ImageFormat::Png, Some(text), 90).unwrap();
        assert_eq!(read_png_parameters(&bytes).as_deref(), Some(text));
        assert_eq!(read_parameters(&bytes).as_deref(), Some(text));
        let info = png::Decoder::new(Cursor::new(&bytes)).read_info().unwrap();
        assert_eq!(info.info().uncompressed_latin1_text.len(), 1);
        assert!(info.info().utf8_text.is_empty());
        assert_eq!(decode_image(&bytes).unwrap(), img);
    }

    #[test]
    fn png_uses_itxt_for_non_latin1_parameters() {
        let img = gradient(8, 8);
        let text = "龍の騎士 — dragon knight 🐉\nSteps: 4, Sampler: Euler a, CFG scale: 0, Seed: 9, Size: 8x8";
        let bytes = encode_image(&img, ImageFormat::Png, Some(text), 90).unwrap();
        let info = png::Decoder::new(Cursor::new(&bytes)).read_info().unwrap();
        assert!(info.info().uncompressed_latin1_text.is_empty());
        assert_eq!(info.info().utf8_text.len(), 1);
        assert_eq!(read_png_parameters(&bytes).as_deref(), Some(text));
    }

    #[test]
    fn reads_compressed_text_chunks() {
        // Written with the png crate directly, as other tools may write them.
        let img = gradient(4, 4);
        for compressed_itxt in [false, true] {
            let mut out = Vec::new();
            let mut enc = png::Encoder::new(&mut out, 4, 4);
            enc.set_color(png::ColorType::Rgb);
            if compressed_itxt {
                let mut chunk = png::text_metadata::ITXtChunk::new("parameters", "zipped ✓");
                chunk.compress_text().unwrap();
                enc.add_itxt_chunk("other".into(), "x".into()).unwrap();
                let mut w = enc.write_header().unwrap();
                w.write_text_chunk(&chunk).unwrap();
                w.write_image_data(img.as_raw()).unwrap();
                w.finish().unwrap();
            } else {
                enc.add_ztxt_chunk("parameters".into(), "zipped latin".into())
                    .unwrap();
                let mut w = enc.write_header().unwrap();
                w.write_image_data(img.as_raw()).unwrap();
                w.finish().unwrap();
            }
            let want = if compressed_itxt {
                "zipped ✓"
            } else {
                "zipped latin"
            };
            assert_eq!(read_png_parameters(&out).as_deref(), Some(want));
        }
    }

    #[test]
    fn png_without_parameters_reads_none() {
        let bytes = encode_image(&gradient(4, 4), ImageFormat::Png, None, 90).unwrap();
        assert_eq!(read_png_parameters(&bytes), None);
        assert_eq!(read_png_parameters(b"not a png"), None);
    }

    #[test]
    fn jpeg_and_webp_decode_to_the_right_size_and_keep_parameters() {
        let img = gradient(40, 24);
        let text =
            "an orc monk, ünïcode\nSteps: 25, Sampler: Euler a, CFG scale: 8, Seed: 3, Size: 40x24";
        for format in [ImageFormat::Jpeg, ImageFormat::Webp] {
            let bytes = encode_image(&img, format, Some(text), 85).unwrap();
            let back = decode_image(&bytes).unwrap();
            assert_eq!(back.dimensions(), (40, 24), "{format:?}");
            assert_eq!(read_parameters(&bytes).as_deref(), Some(text), "{format:?}");
            if format == ImageFormat::Webp {
                assert_eq!(back, img, "lossless webp keeps pixels");
            }
        }
        assert!(encode_image(&img, ImageFormat::Jpeg, None, 85)
            .unwrap()
            .starts_with(&[0xFF, 0xD8]));
    }

    #[test]
    fn jpeg_quality_changes_size() {
        let img = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * y) as u8, (x ^ y) as u8 * 4, (x * 3) as u8])
        });
        let low = encode_image(&img, ImageFormat::Jpeg, None, 10).unwrap();
        let high = encode_image(&img, ImageFormat::Jpeg, None, 95).unwrap();
        assert!(low.len() < high.len());
    }

    #[test]
    fn thumbnail_keeps_aspect() {
        assert_eq!(thumbnail(&gradient(512, 768), 256).dimensions(), (171, 256));
        assert_eq!(thumbnail(&gradient(768, 512), 256).dimensions(), (256, 171));
        assert_eq!(thumbnail(&gradient(100, 50), 256).dimensions(), (100, 50));
        assert_eq!(thumbnail(&gradient(1000, 2), 10).dimensions(), (10, 1));
        assert_eq!(thumbnail(&gradient(30, 30), 0).dimensions(), (1, 1));
    }

    #[test]
    fn garbage_is_an_init_image_error() {
        for bytes in [&b""[..], b"garbage bytes", b"\x89PNG\r\n\x1a\nbroken"] {
            match decode_image(bytes) {
                Err(EngineError::InvalidInput { field, .. }) => assert_eq!(field, "init_image"),
                other => panic!("expected init_image error, got {other:?}"),
            }
        }
    }

    #[test]
    fn exif_reader_handles_little_endian_and_ascii() {
        // Little-endian TIFF with an ASCII-coded comment, as other tools write it.
        let mut t = b"II\x2a\0\x08\0\0\0".to_vec();
        t.extend_from_slice(&1u16.to_le_bytes());
        t.extend_from_slice(&0x8769u16.to_le_bytes());
        t.extend_from_slice(&4u16.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&26u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        let comment = b"ASCII\0\0\0hello world";
        t.extend_from_slice(&1u16.to_le_bytes());
        t.extend_from_slice(&0x9286u16.to_le_bytes());
        t.extend_from_slice(&7u16.to_le_bytes());
        t.extend_from_slice(&(comment.len() as u32).to_le_bytes());
        t.extend_from_slice(&44u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(comment);
        assert_eq!(read_exif_user_comment(&t).as_deref(), Some("hello world"));
        let mut prefixed = b"Exif\0\0".to_vec();
        prefixed.extend_from_slice(&t);
        assert_eq!(
            read_exif_user_comment(&prefixed).as_deref(),
            Some("hello world")
        );
        assert_eq!(read_exif_user_comment(&t[..30]), None);
        assert_eq!(read_exif_user_comment(b"junk"), None);
    }
}

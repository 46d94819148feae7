//! [`MediaPortraitFiles`]: the media store side of `limner migrate`. A legacy portrait file is
//! read, checked to be a PNG, JPEG or WebP image, thumbnailed like a generated portrait, and
//! stored under `portraits/<character>/legacy-<hash>.<ext>` (the hash is of the legacy path, so a
//! re-run lands on the same key). The bytes are kept exactly as they were.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::image_store::{image_key, thumbnail_key};
use super::image_store::{validate_key, ImageStore};
use super::service::THUMBNAIL_SIDE;
use crate::characters::{PortraitFiles, PreparedFile};
use crate::engine::output::{decode_image, encode_image, thumbnail, ImageFormat};
use crate::engine::EngineError;

/// The largest legacy portrait file copied, in bytes.
pub const MAX_LEGACY_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Legacy portraits into an [`ImageStore`].
pub struct MediaPortraitFiles {
    images: Arc<dyn ImageStore>,
}

impl MediaPortraitFiles {
    pub fn new(images: Arc<dyn ImageStore>) -> Self {
        Self { images }
    }
}

/// The key extension of an image's format, from its bytes (not from the legacy file name).
fn extension(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes).ok()? {
        image::ImageFormat::Png => Some("png"),
        image::ImageFormat::Jpeg => Some("jpg"),
        image::ImageFormat::WebP => Some("webp"),
        _ => None,
    }
}

fn file_id(identity: &str) -> String {
    let digest = Sha256::digest(identity.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("legacy-{hex}")
}

impl PortraitFiles for MediaPortraitFiles {
    fn prepare(
        &self,
        character_id: &str,
        identity: &str,
        path: &Path,
    ) -> Result<PreparedFile, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("cannot read: {e}"))?
            .len();
        if size > MAX_LEGACY_FILE_BYTES {
            return Err(format!(
                "{size} bytes, more than the {MAX_LEGACY_FILE_BYTES} bytes a portrait may have"
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let ext = extension(&bytes).ok_or("not a PNG, JPEG or WebP image")?;
        let pixels = decode_image(&bytes).map_err(|e| match e {
            EngineError::InvalidInput { message, .. } => message,
            other => other.to_string(),
        })?;
        let thumb = encode_image(
            &thumbnail(&pixels, THUMBNAIL_SIDE),
            ImageFormat::Png,
            None,
            90,
        )
        .map_err(|e| format!("cannot make its thumbnail: {e}"))?;
        let id = file_id(identity);
        let png_key = image_key(character_id, &id);
        let key = match png_key.strip_suffix(".png") {
            Some(stem) => format!("{stem}.{ext}"),
            None => png_key,
        };
        Ok(PreparedFile {
            key,
            thumbnail_key: thumbnail_key(character_id, &id),
            bytes,
            thumbnail: thumb,
        })
    }

    fn is_stored(&self, key: &str) -> bool {
        validate_key(key).is_ok() && self.images.exists(key).unwrap_or(false)
    }

    fn write(&self, file: &PreparedFile) -> Result<(), String> {
        self.images
            .put(&file.key, &file.bytes)
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.images.put(&file.thumbnail_key, &file.thumbnail) {
            let _ = self.images.delete(&file.key);
            return Err(e.to_string());
        }
        Ok(())
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), String> {
        let bytes = self.images.get(from).map_err(|e| e.to_string())?;
        self.images.put(to, &bytes).map_err(|e| e.to_string())
    }

    fn delete(&self, key: &str) {
        if let Err(e) = self.images.delete(key) {
            tracing::warn!(key, error = %e, "could not remove a migrated portrait file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portraits::LocalImageStore;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 9]));
        encode_image(&img, ImageFormat::Png, None, 90).unwrap()
    }

    #[test]
    fn keys_are_stable_and_bytes_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = MediaPortraitFiles::new(Arc::new(LocalImageStore::new(dir.path().join("m"))));
        let src = dir.path().join("a.png");
        let bytes = png(600, 300);
        std::fs::write(&src, &bytes).unwrap();
        let a = files.prepare("thorin_01", "/x/a.png", &src).unwrap();
        let b = files.prepare("thorin_01", "/x/a.png", &src).unwrap();
        assert_eq!(
            (a.key.as_str(), a.thumbnail_key.as_str()),
            (b.key.as_str(), b.thumbnail_key.as_str())
        );
        assert!(a.key.starts_with("portraits/thorin_01/legacy-") && a.key.ends_with(".png"));
        assert_ne!(
            files.prepare("thorin_01", "/x/b.png", &src).unwrap().key,
            a.key
        );
        assert!(!files.is_stored(&a.key));
        files.write(&a).unwrap();
        assert!(files.is_stored(&a.key) && files.is_stored(&a.thumbnail_key));
        assert_eq!(files.images.get(&a.key).unwrap(), bytes);
        let thumb = image::load_from_memory(&a.thumbnail).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (THUMBNAIL_SIDE, 128));
        assert!(!files.is_stored("/abs/legacy/path.png"));
    }

    #[test]
    fn non_images_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let files = MediaPortraitFiles::new(Arc::new(LocalImageStore::new(dir.path().join("m"))));
        let src = dir.path().join("fake.png");
        std::fs::write(&src, b"png bytes").unwrap();
        let err = files.prepare("c", "id", &src).unwrap_err();
        assert!(err.contains("not a PNG, JPEG or WebP"), "{err}");
        let err = files
            .prepare("c", "id", &dir.path().join("gone.png"))
            .unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }
}

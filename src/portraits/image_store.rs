//! Where portrait files live: the [`ImageStore`] seam (put/get/delete/exists under relative
//! keys) and [`LocalImageStore`], a folder under the data directory (`<data-dir>/media`).
//!
//! Keys are checked before they touch the file system (relative, `/`-separated, a small
//! charset, no `.`/`..` segments, no hidden names), so no key can reach outside the root. Writes
//! go to a hidden temp file, are fsynced and renamed into place: a reader sees either the old
//! file or the whole new one, never half of it. An object store (S3/GCS) would implement the same
//! trait with the same keys.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// What can go wrong in an image store.
#[derive(Debug, Error)]
pub enum ImageStoreError {
    /// The key is not a safe relative key (the reason says which rule it breaks).
    #[error("invalid image key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("image {0:?} not found")]
    NotFound(String),
    /// The disk is full (ENOSPC) or the user's quota is spent (EDQUOT); nothing was kept.
    #[error("no space left to store image {key:?}: {message}")]
    StorageFull { key: String, message: String },
    #[error("image store i/o error on {key:?}: {message}")]
    Io { key: String, message: String },
}

/// True when an I/O error means "no space left": a full disk or an exhausted quota. Used for
/// every file limner writes, so all of them answer 507 rather than 500.
pub fn is_storage_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    if matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
        return true;
    }
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return code == libc::ENOSPC || code == libc::EDQUOT;
    }
    false
}

/// Files under relative keys such as `portraits/<character>/<file>.png`.
pub trait ImageStore: Send + Sync {
    /// Stores `bytes` under `key`, replacing any earlier file atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ImageStoreError>;
    fn get(&self, key: &str) -> Result<Vec<u8>, ImageStoreError>;
    /// Removes `key`; a key that does not exist is not an error.
    fn delete(&self, key: &str) -> Result<(), ImageStoreError>;
    fn exists(&self, key: &str) -> Result<bool, ImageStoreError>;
    /// The local folder the files live in, if any (for free-space reports).
    fn local_root(&self) -> Option<&Path> {
        None
    }
}

/// Checks that `key` is a safe relative key: segments of `[A-Za-z0-9._-]` separated by `/`, none
/// empty, none starting with `.` (so `.`/`..`, hidden files and our temp files are unreachable).
pub fn validate_key(key: &str) -> Result<(), ImageStoreError> {
    let bad = |reason: &str| ImageStoreError::InvalidKey {
        key: key.chars().take(80).collect(),
        reason: reason.to_string(),
    };
    if key.is_empty() {
        return Err(bad("must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad(&format!("longer than {MAX_KEY_LEN} bytes")));
    }
    if key.starts_with('/') {
        return Err(bad("must be relative (starts with '/')"));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err(bad("has an empty path segment"));
        }
        if segment.starts_with('.') {
            return Err(bad("a path segment starts with '.'"));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(&format!(
                "character {c:?} is not allowed (only A-Z a-z 0-9 . _ - and '/')"
            )));
        }
    }
    Ok(())
}

/// An [`ImageStore`] in a local folder.
#[derive(Debug, Clone)]
pub struct LocalImageStore {
    root: PathBuf,
}

impl LocalImageStore {
    /// A store rooted at `root` (created on the first write), usually `<data-dir>/media`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a valid key maps to (for servers that stream files themselves).
    pub fn path_for(&self, key: &str) -> Result<PathBuf, ImageStoreError> {
        validate_key(key)?;
        Ok(key.split('/').fold(self.root.clone(), |p, s| p.join(s)))
    }
}

fn io_err(key: &str, what: &str, e: impl std::fmt::Display) -> ImageStoreError {
    ImageStoreError::Io {
        key: key.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Like [`io_err`], but a full disk becomes [`ImageStoreError::StorageFull`].
fn write_err(key: &str, what: &str, e: std::io::Error) -> ImageStoreError {
    if is_storage_full(&e) {
        ImageStoreError::StorageFull {
            key: key.to_string(),
            message: format!("{what}: {e}"),
        }
    } else {
        io_err(key, what, e)
    }
}

impl ImageStore for LocalImageStore {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ImageStoreError> {
        let path = self.path_for(key)?;
        let dir = path
            .parent()
            .ok_or_else(|| io_err(key, "resolve folder", "no parent folder"))?;
        fs::create_dir_all(dir).map_err(|e| write_err(key, "create folder", e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Hidden (leading '.') so no valid key can ever name a temp file.
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            // Data on disk before the rename makes it visible; otherwise a crash could leave a
            // complete-looking name over an empty file.
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(key, "write", e));
        }
        // The rename itself is durable once the folder is synced (not possible on Windows).
        #[cfg(unix)]
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, ImageStoreError> {
        let path = self.path_for(key)?;
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ImageStoreError::NotFound(key.to_string()))
            }
            Err(e) => Err(io_err(key, "read", e)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), ImageStoreError> {
        let path = self.path_for(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(key, "delete", e)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, ImageStoreError> {
        let path = self.path_for(key)?;
        Ok(path.is_file())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

/// Keeps a character id usable as one key segment (ids are UUIDs, but imported ones may not be).
fn key_segment(id: &str) -> String {
    let last = id.chars().count().saturating_sub(1);
    let s: String = id
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let inner_dot = c == '.' && i != 0 && i != last;
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || inner_dot {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

/// The image store key of a portrait file: `portraits/<character>/<file>.png`.
pub fn image_key(character_id: &str, file_id: &str) -> String {
    format!(
        "portraits/{}/{}.png",
        key_segment(character_id),
        key_segment(file_id)
    )
}

/// The key of its thumbnail: `portraits/<character>/<file>.thumb.png`.
pub fn thumbnail_key(character_id: &str, file_id: &str) -> String {
    format!(
        "portraits/{}/{}.thumb.png",
        key_segment(character_id),
        key_segment(file_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_replace_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalImageStore::new(dir.path().join("media"));
        let key = "portraits/abc-123/p1.png";
        assert!(!store.exists(key).unwrap());
        store.put(key, b"first").unwrap();
        assert_eq!(store.get(key).unwrap(), b"first");
        store.put(key, b"second, longer").unwrap();
        assert_eq!(store.get(key).unwrap(), b"second, longer");
        assert!(store.exists(key).unwrap());
        let on_disk = dir.path().join("media/portraits/abc-123/p1.png");
        assert_eq!(fs::read(on_disk).unwrap(), b"second, longer");
        // No temp file is left next to it.
        let names: Vec<_> = fs::read_dir(dir.path().join("media/portraits/abc-123"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["p1.png".to_string()]);
        store.delete(key).unwrap();
        assert!(!store.exists(key).unwrap());
        assert!(matches!(store.get(key), Err(ImageStoreError::NotFound(_))));
        // Deleting again is fine.
        store.delete(key).unwrap();
    }

    #[test]
    fn a_full_disk_is_storage_full() {
        // A real ENOSPC: /dev/full refuses every write with it.
        #[cfg(target_os = "linux")]
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let e = f
                .write_all(&[0u8; 4096])
                .and_then(|_| f.sync_all())
                .unwrap_err();
            assert!(is_storage_full(&e), "{e:?}");
            assert!(matches!(
                write_err("k.png", "write", e),
                ImageStoreError::StorageFull { .. }
            ));
        }
        for code in [libc::ENOSPC, libc::EDQUOT] {
            assert!(is_storage_full(&std::io::Error::from_raw_os_error(code)));
        }
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!is_storage_full(&denied));
        assert!(matches!(
            write_err("k.png", "write", denied),
            ImageStoreError::Io { .. }
        ));
    }

    #[test]
    fn refuses_keys_that_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("media");
        let store = LocalImageStore::new(&root);
        fs::write(dir.path().join("secret.txt"), b"secret").unwrap();
        for key in [
            "",
            "../secret.txt",
            "portraits/../../secret.txt",
            "/etc/passwd",
            "portraits//x.png",
            "portraits/./x.png",
            "portraits/.hidden.png",
            "portraits\\..\\secret.txt",
            "C:/x.png",
            "portraits/x y.png",
            "portraits/ü.png",
        ] {
            for result in [
                store.get(key).map(|_| ()),
                store.put(key, b"x"),
                store.delete(key),
                store.exists(key).map(|_| ()),
            ] {
                assert!(
                    matches!(result, Err(ImageStoreError::InvalidKey { .. })),
                    "{key:?} was accepted: {result:?}"
                );
            }
        }
        let long = "a".repeat(MAX_KEY_LEN + 1);
        assert!(validate_key(&long).is_err());
        // Nothing was written outside (or inside) the root.
        assert_eq!(fs::read(dir.path().join("secret.txt")).unwrap(), b"secret");
        assert!(!root.exists());
    }
}

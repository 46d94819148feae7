//! A1111's model hash: the SHA-256 of a model's weight file, shown as its first 10 hex digits
//! (A1111's `shorthash`, the infotext's `Model hash`, the `[hash]` of a model title).
//!
//! Checkpoints are gigabytes, so every hash goes through one [`HashCache`], kept in
//! `model-hashes.json` in the data directory and keyed by canonical path, size and modification
//! time (as A1111's `cache.json` is keyed by mtime): a file is hashed once, and again only when
//! it changes. `limner pull` records the hashes it computes while checking downloads; the
//! server hashes missing ones on a background thread and never makes a request wait for one.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The cache's file name inside the data directory.
pub const CACHE_FILE: &str = "model-hashes.json";

/// The full SHA-256 (lowercase hex) of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_rest(&mut std::fs::File::open(path)?)
}

/// The SHA-256 (lowercase hex) of what is left to read from `file`, in 1 MiB chunks (A1111's
/// LoRA hash skips the safetensors header this way).
pub(crate) fn sha256_rest(file: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A model file's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelHash {
    /// Full lowercase hex (A1111's `sha256`).
    pub sha256: String,
}

impl ModelHash {
    /// The first 10 hex digits (A1111's `shorthash`).
    pub fn short(&self) -> &str {
        &self.sha256[..10.min(self.sha256.len())]
    }
}

/// What identifies one version of a file: its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    stamp: Stamp,
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    /// Canonical path -> hash of the version seen.
    files: BTreeMap<String, Entry>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    /// Canonical paths being hashed now (by a request to [`HashCache::hash`] or the worker).
    busy: HashSet<PathBuf>,
    /// Files waiting for the background worker, and whether it runs.
    queue: VecDeque<PathBuf>,
    worker: bool,
}

/// Hashes of model files, computed at most once per file version. Cheap to share (`Arc`).
pub struct HashCache {
    /// `None`: kept in memory only.
    file: Option<PathBuf>,
    state: Mutex<State>,
    done: Condvar,
}

/// A file's canonical path (the cache key) and current stamp.
fn identify(path: &Path) -> Option<(PathBuf, Stamp)> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&canonical).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    let stamp = Stamp {
        size: meta.len(),
        mtime_ns: u64::try_from(mtime.as_nanos()).ok()?,
    };
    Some((canonical, stamp))
}

fn key(canonical: &Path) -> String {
    canonical.to_string_lossy().into_owned()
}

fn read_cache_file(path: &Path) -> BTreeMap<String, Entry> {
    let Ok(bytes) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    match serde_json::from_slice::<CacheFile>(&bytes) {
        Ok(c) => c.files,
        Err(e) => {
            // Only a cache: a damaged one costs re-hashing, never a failed start.
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable model hash cache");
            BTreeMap::new()
        }
    }
}

impl HashCache {
    /// A cache that lives only as long as the process (tests, `limner generate`).
    pub fn in_memory() -> HashCache {
        HashCache {
            file: None,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    /// The cache of a data directory ([`CACHE_FILE`] inside it; created on the first hash).
    pub fn open(data_dir: &Path) -> HashCache {
        let file = data_dir.join(CACHE_FILE);
        let entries = read_cache_file(&file);
        HashCache {
            file: Some(file),
            state: Mutex::new(State {
                entries,
                ..State::default()
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hash of `path` if this version of the file was hashed before. Never reads the
    /// file's contents (only its metadata), so it is safe on a request path.
    pub fn cached(&self, path: &Path) -> Option<ModelHash> {
        let (canonical, stamp) = identify(path)?;
        Self::lookup(&self.lock(), &canonical, stamp)
    }

    fn lookup(state: &State, canonical: &Path, stamp: Stamp) -> Option<ModelHash> {
        state
            .entries
            .get(&key(canonical))
            .filter(|e| e.stamp == stamp)
            .map(|e| ModelHash {
                sha256: e.sha256.clone(),
            })
    }

    /// The hash of `path`: cached, or computed now (blocking; waits when another thread is
    /// already hashing the same file rather than reading it twice).
    pub fn hash(&self, path: &Path) -> std::io::Result<ModelHash> {
        let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "cannot stat");
        let (canonical, stamp) = loop {
            let (canonical, stamp) = identify(path).ok_or_else(not_found)?;
            let mut state = self.lock();
            if let Some(h) = Self::lookup(&state, &canonical, stamp) {
                return Ok(h);
            }
            if state.busy.insert(canonical.clone()) {
                break (canonical, stamp);
            }
            drop(
                self.done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        };
        let result = sha256_file(&canonical);
        let mut state = self.lock();
        state.busy.remove(&canonical);
        self.done.notify_all();
        let sha256 = result?;
        // A file rewritten while it was read has no stable hash to remember.
        if identify(&canonical).map(|(_, s)| s) == Some(stamp) {
            self.store(&mut state, &canonical, stamp, &sha256);
        }
        Ok(ModelHash { sha256 })
    }

    /// Records a hash computed elsewhere (`limner pull` hashes every file it checks).
    pub fn record(&self, path: &Path, sha256: &str) {
        if let Some((canonical, stamp)) = identify(path) {
            let mut state = self.lock();
            self.store(&mut state, &canonical, stamp, &sha256.to_ascii_lowercase());
        }
    }

    fn store(&self, state: &mut State, canonical: &Path, stamp: Stamp, sha256: &str) {
        let entry = Entry {
            stamp,
            sha256: sha256.to_string(),
        };
        state.entries.insert(key(canonical), entry);
        if let Some(file) = &self.file {
            if let Err(e) = self.persist(file, state) {
                tracing::warn!(file = %file.display(), error = %e, "cannot save the model hash cache");
            }
        }
    }

    /// Writes the cache atomically, keeping entries another process (a `limner pull` while
    /// the server runs) wrote since this one was read.
    fn persist(&self, file: &Path, state: &mut State) -> std::io::Result<()> {
        for (k, v) in read_cache_file(file) {
            state.entries.entry(k).or_insert(v);
        }
        let json = serde_json::to_vec_pretty(&CacheFile {
            files: state.entries.clone(),
        })?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension(format!("json.{}.partial", std::process::id()));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, file).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// The hash of `path` if known; otherwise queues it for the background worker and answers
    /// `None` at once (the next call after the worker is done answers the hash).
    pub fn cached_or_schedule(self: &Arc<Self>, path: &Path) -> Option<ModelHash> {
        let (canonical, stamp) = identify(path)?;
        let mut state = self.lock();
        if let Some(h) = Self::lookup(&state, &canonical, stamp) {
            return Some(h);
        }
        if state.busy.contains(&canonical) || state.queue.contains(&canonical) {
            return None;
        }
        state.queue.push_back(canonical);
        if !state.worker {
            state.worker = true;
            let cache = self.clone();
            let spawned = std::thread::Builder::new()
                .name("limner-model-hash".into())
                .spawn(move || cache.work());
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the model hashing thread");
                state.worker = false;
                state.queue.clear();
            }
        }
        None
    }

    /// The background worker: one file at a time, so several models never compete for the disk.
    fn work(&self) {
        loop {
            let next = {
                let mut state = self.lock();
                match state.queue.pop_front() {
                    Some(p) => p,
                    None => {
                        state.worker = false;
                        return;
                    }
                }
            };
            match self.hash(&next) {
                Ok(h) => tracing::info!(file = %next.display(), hash = h.short(), "model hashed"),
                Err(e) => tracing::warn!(file = %next.display(), error = %e, "cannot hash model"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn write(path: &Path, bytes: &[u8], mtime_s: u64) {
        std::fs::write(path, bytes).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_s))
            .unwrap();
    }

    #[test]
    fn hashes_match_sha256_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.safetensors");
        write(&model, b"weights", 1_700_000_000);
        let independent: String = sha2::Sha256::digest(b"weights")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let cache = HashCache::open(dir.path());
        assert_eq!(cache.cached(&model), None);
        let h = cache.hash(&model).unwrap();
        assert_eq!(h.sha256, independent);
        assert_eq!(h.short(), &independent[..10]);
        assert!(dir.path().join(CACHE_FILE).is_file());
        // Another process reads it without hashing.
        let again = HashCache::open(dir.path());
        assert_eq!(again.cached(&model), Some(h));
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.safetensors");
        write(&model, b"one", 1_700_000_000);
        let cache = HashCache::open(dir.path());
        let first = cache.hash(&model).unwrap();
        // Same size, new mtime.
        write(&model, b"two", 1_700_000_100);
        assert_eq!(cache.cached(&model), None);
        let second = cache.hash(&model).unwrap();
        assert_ne!(first, second);
        assert_eq!(second.sha256, sha256_file(&model).unwrap());
        // New size, same mtime.
        write(&model, b"three", 1_700_000_100);
        assert_eq!(cache.cached(&model), None);
    }

    #[test]
    fn a_damaged_cache_file_is_ignored_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CACHE_FILE), b"{not json").unwrap();
        let model = dir.path().join("m.safetensors");
        write(&model, b"w", 1_700_000_000);
        let cache = HashCache::open(dir.path());
        cache.hash(&model).unwrap();
        assert!(HashCache::open(dir.path()).cached(&model).is_some());
    }

    #[test]
    fn a_folder_is_hashed_by_its_plain_unet_file_whatever_dtype_loads() {
        use crate::engine::loading::model::{hashed_file, ModelSource};
        let dir = tempfile::tempdir().unwrap();
        let unet = dir.path().join("unet");
        std::fs::create_dir_all(&unet).unwrap();
        let source = ModelSource::Folder(dir.path().to_path_buf());
        for v in ["fp16", "bf16"] {
            std::fs::write(
                unet.join(format!("diffusion_pytorch_model.{v}.safetensors")),
                v,
            )
            .unwrap();
        }
        // Variants only: always the same one.
        let only_variants = unet.join("diffusion_pytorch_model.bf16.safetensors");
        for _ in 0..8 {
            assert_eq!(hashed_file(&source).as_ref(), Some(&only_variants));
        }
        let plain = unet.join("diffusion_pytorch_model.safetensors");
        std::fs::write(&plain, "f32").unwrap();
        assert_eq!(hashed_file(&source), Some(plain));
        let file = dir.path().join("x.safetensors");
        let single = ModelSource::SingleFile {
            file: file.clone(),
            config: None,
        };
        assert_eq!(hashed_file(&single), Some(file));
        assert_eq!(hashed_file(&ModelSource::Random("sd15".into())), None);
    }

    #[test]
    fn the_background_worker_fills_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.safetensors");
        write(&model, b"w", 1_700_000_000);
        let cache = Arc::new(HashCache::in_memory());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let h = loop {
            if let Some(h) = cache.cached_or_schedule(&model) {
                break h;
            }
            assert!(std::time::Instant::now() < deadline, "never hashed");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(h.sha256, sha256_file(&model).unwrap());
    }
}

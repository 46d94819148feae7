//! The data directory's disk: how much is free (statvfs), the `--min-free-space` floor under
//! which writes answer 507 before touching the disk, and a reserve file that keeps room for
//! deletes when the disk runs full.
//!
//! A SQLite delete needs a little space too (its pages go to the WAL before the database), so
//! on a really full disk even a DELETE would fail and nothing could be freed. The reserve file
//! (`<data-dir>/.limner-reserve`, up to 4 MiB of incompressible bytes) is removed as soon as a
//! write hits a full disk or a delete finds the disk nearly full; while it is gone the disk
//! counts as full and writes are refused, so the space it freed stays for deletes. Once enough
//! space is back the file is re-created and writes are accepted again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

/// The reserve file's name inside the data directory.
pub const RESERVE_FILE: &str = ".limner-reserve";
/// The largest reserve file; a delete needs a few pages, so this is generous.
pub const MAX_RESERVE_BYTES: u64 = 4 << 20;

/// Free and total bytes of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use (`f_bavail`).
    pub free: u64,
    pub total: u64,
}

/// The file system holding `path` (or its nearest existing ancestor).
pub fn space_of(path: &Path) -> Option<Space> {
    let existing = path.ancestors().find(|p| p.exists())?;
    statvfs(existing)
}

#[cfg(unix)]
fn statvfs(path: &Path) -> Option<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `out` is a plain C struct statvfs fills.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut out) } != 0 {
        return None;
    }
    let unit = out.f_frsize as u64;
    Some(Space {
        free: (out.f_bavail as u64).saturating_mul(unit),
        total: (out.f_blocks as u64).saturating_mul(unit),
    })
}

#[cfg(not(unix))]
fn statvfs(_: &Path) -> Option<Space> {
    None
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[derive(Default)]
struct Full {
    /// Set when a write hit a full disk; cleared once space came back.
    since: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    what: Option<String>,
}

/// Free-space policy and state for one data directory.
pub struct DiskGuard {
    dir: Option<PathBuf>,
    min_free: u64,
    /// The reserve file, when this guard keeps one.
    reserve: Option<PathBuf>,
    full: Mutex<Full>,
}

impl DiskGuard {
    /// Measures `dir` and refuses writes under `min_free` bytes, without a reserve file (for
    /// in-process servers whose folders are temporary).
    pub fn measuring(dir: Option<PathBuf>, min_free: u64) -> Self {
        DiskGuard {
            dir,
            min_free,
            reserve: None,
            full: Mutex::new(Full::default()),
        }
    }

    /// The guard `limner serve` uses: [`Self::measuring`] plus the reserve file in `data_dir`,
    /// created now when there is room for it (a failure is logged, never fatal).
    pub fn with_reserve(data_dir: &Path, min_free: u64) -> Self {
        let guard = DiskGuard {
            reserve: Some(data_dir.join(RESERVE_FILE)),
            ..Self::measuring(Some(data_dir.to_path_buf()), min_free)
        };
        guard.recover();
        guard
    }

    pub fn space(&self) -> Option<Space> {
        space_of(self.dir.as_deref()?)
    }

    /// The reserve file's size on this file system: 1/16 of it, at most [`MAX_RESERVE_BYTES`].
    fn reserve_size(&self, space: Space) -> u64 {
        (space.total / 16).min(MAX_RESERVE_BYTES) / 4096 * 4096
    }

    /// Free space under which the disk counts as nearly full.
    fn low_water(&self, space: Space) -> u64 {
        self.min_free.max(self.reserve_size(space)).max(1 << 20)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Full> {
        self.full.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_full(&self) -> bool {
        self.lock().since.is_some()
    }

    fn reserve_present(&self) -> bool {
        self.reserve.as_deref().is_some_and(Path::is_file)
    }

    /// Writes the reserve file (random bytes, so compressing file systems keep its blocks) to a
    /// temporary name and renames it; a partial file is removed so it never eats the last
    /// bytes of a disk.
    fn create_reserve(&self, path: &Path, size: u64) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let mut chunk = vec![0u8; 64 << 10];
            let mut left = size;
            while left > 0 {
                rand::thread_rng().fill_bytes(&mut chunk);
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn release_reserve(&self) {
        if let Some(path) = self.reserve.as_deref().filter(|p| p.is_file()) {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::warn!(
                    file = %path.display(),
                    "disk nearly full: released the reserve file so deletes can free space"
                ),
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot release the reserve file")
                }
            }
        }
    }

    /// A write failed because the disk is full: remember it and free the reserve for deletes.
    pub fn note_full(&self, what: &str) {
        {
            let mut full = self.lock();
            let now = Utc::now();
            full.since.get_or_insert(now);
            full.last = Some(now);
            full.what = Some(what.chars().take(300).collect());
        }
        self.release_reserve();
    }

    /// Leaves the full state once there is room for the reserve file and some headroom above
    /// `min_free`, re-creating the file first.
    pub fn recover(&self) {
        let Some(space) = self.space() else { return };
        let size = self.reserve_size(space);
        let missing = self.reserve.is_some() && !self.reserve_present();
        let need = self.low_water(space) + if missing { size } else { 0 };
        if space.free < need {
            return;
        }
        if let (Some(path), true) = (self.reserve.as_deref(), missing && size > 0) {
            if let Err(e) = self.create_reserve(path, size) {
                tracing::warn!(file = %path.display(), error = %e, "cannot create the reserve file");
                return;
            }
        }
        let mut full = self.lock();
        if full.since.take().is_some() {
            tracing::info!(free = %mib(space.free), "disk space is back; writes are accepted again");
        }
    }

    /// Before a write: Err(507) while the disk is full or under the `min_free` floor.
    pub fn check_write(&self) -> Result<(), ApiError> {
        if self.is_full() {
            self.recover();
        }
        let space = self.space();
        let since = self.lock().since;
        if let Some(since) = since {
            let free = space
                .map(|s| mib(s.free))
                .unwrap_or_else(|| "unknown".into());
            return Err(ApiError::insufficient_storage(format!(
                "a write hit a full disk at {}; {free} free now, not enough to accept writes again",
                since.to_rfc3339()
            )));
        }
        match space {
            Some(s) if s.free < self.min_free => Err(ApiError::insufficient_storage(format!(
                "{} free on the data directory's disk, under the min_free_space floor of {}",
                mib(s.free),
                mib(self.min_free)
            ))),
            _ => Ok(()),
        }
    }

    /// True while free space is under the `min_free` floor.
    pub fn under_floor(&self) -> bool {
        self.space().is_some_and(|s| s.free < self.min_free)
    }

    /// Before a delete: on a (nearly) full disk, free the reserve so the delete can commit.
    pub fn before_delete(&self) {
        let nearly_full = self.space().is_some_and(|s| s.free < self.low_water(s));
        if self.is_full() || nearly_full {
            self.release_reserve();
        }
    }

    /// `/health`'s `disk` object, and whether it degrades the server.
    pub fn report(&self) -> (Value, bool) {
        let space = self.space();
        let full = self.lock();
        let state = match space {
            _ if full.since.is_some() => "full",
            Some(s) if s.free < self.low_water(s) => "low",
            Some(_) => "ok",
            None => "unknown",
        };
        let v = json!({
            "state": state,
            "path": self.dir.as_ref().map(|d| d.display().to_string()),
            "free_bytes": space.map(|s| s.free),
            "total_bytes": space.map(|s| s.total),
            "min_free_bytes": self.min_free,
            "reserve_bytes": match (&self.reserve, space) {
                (Some(_), Some(s)) if self.reserve_present() => self.reserve_size(s),
                _ => 0,
            },
            "writes_accepted": full.since.is_none()
                && space.is_none_or(|s| s.free >= self.min_free),
            "full_since": full.since.map(|t| t.to_rfc3339()),
            "last_full_at": full.last.map(|t| t.to_rfc3339()),
            "last_full_error": full.what,
        });
        (v, matches!(state, "full" | "low"))
    }
}

/// Which requests write: POST, PUT and PATCH, except under the compat prefixes (A1111's writes
/// nothing to disk; OpenAI's checks for itself, only for `response_format=url`).
fn writes(method: &Method, path: &str) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !path.starts_with("/sdapi/")
        && !path.starts_with("/v1/")
}

/// The router layer: refuses writes on a full disk, frees the reserve before deletes, and
/// records every 507 a handler answered (a write that really hit a full disk).
pub(crate) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let disk = state.disk().clone();
    let method = req.method().clone();
    if writes(&method, req.uri().path()) {
        let d = disk.clone();
        match tokio::task::spawn_blocking(move || d.check_write()).await {
            Ok(Err(refused)) => {
                // Read the body before answering: a reply sent while the client is still
                // sending can reach it as a closed connection instead of a 507.
                let _ = axum::body::to_bytes(req.into_body(), super::MAX_BODY_BYTES).await;
                return refused.into_response();
            }
            Ok(Ok(())) => {}
            Err(e) => return ApiError::internal(e.to_string()).into_response(),
        }
    }
    let deleting = method == Method::DELETE;
    if deleting {
        let d = disk.clone();
        let _ = tokio::task::spawn_blocking(move || d.before_delete()).await;
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::INSUFFICIENT_STORAGE {
        let d = disk.clone();
        let what = format!("{method} answered 507");
        // Under the floor, the floor explains the 507 (a handler checked it); otherwise a
        // write really hit a full disk.
        let _ = tokio::task::spawn_blocking(move || {
            if !d.under_floor() {
                d.note_full(&what)
            }
        })
        .await;
    } else if deleting && resp.status().is_success() {
        // Space was freed: maybe enough to re-create the reserve (off the reply's path).
        tokio::task::spawn_blocking(move || disk.recover());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_refuses_writes_and_the_reserve_comes_and_goes() {
        let dir = tempfile::tempdir().unwrap();
        let space = space_of(dir.path()).expect("statvfs works here");
        assert!(space.total >= space.free && space.free > 0);
        let reserve = dir.path().join(RESERVE_FILE);

        let guard = DiskGuard::with_reserve(dir.path(), 0);
        assert!(guard.check_write().is_ok());
        assert!(reserve.is_file(), "the reserve file is created at start");
        let (report, degraded) = guard.report();
        assert_eq!(report["state"], "ok");
        assert!(!degraded);
        assert_eq!(report["free_bytes"], space_of(dir.path()).unwrap().free);

        // A write that hit a full disk: the reserve is released, writes are refused until
        // space is back (here it is: recover() re-creates the file).
        guard.note_full("test");
        assert!(!reserve.exists());
        let (report, degraded) = guard.report();
        assert_eq!(report["state"], "full");
        assert!(degraded);
        assert!(report["last_full_at"].is_string());
        guard.recover();
        assert!(reserve.is_file());
        assert!(guard.check_write().is_ok());
        assert_eq!(guard.report().0["state"], "ok");

        // A floor above the real free space: every write is refused with 507, naming both.
        let high = DiskGuard::measuring(Some(dir.path().to_path_buf()), u64::MAX / 2);
        let e = high.check_write().unwrap_err();
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(e.message.contains("min_free_space"), "{}", e.message);
        let (report, degraded) = high.report();
        assert_eq!(report["state"], "low");
        assert_eq!(report["writes_accepted"], false);
        assert!(degraded);
    }

    #[test]
    fn only_writes_outside_the_compat_apis_are_checked_by_the_layer() {
        assert!(writes(&Method::POST, "/api/characters"));
        assert!(writes(&Method::PATCH, "/api/characters/x"));
        assert!(!writes(&Method::DELETE, "/api/characters/x"));
        assert!(!writes(&Method::GET, "/api/characters"));
        assert!(!writes(&Method::POST, "/sdapi/v1/txt2img"));
        assert!(!writes(&Method::POST, "/v1/images/generations"));
    }
}

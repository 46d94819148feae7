//! Runs one compat generation as a job of the shared queue: `n_iter` engine calls of one batch
//! each (A1111's "batch count"), progress over all of them, A1111's interrupt (stop, keep what is
//! done: the batch being painted stops denoising and is decoded from its current latents, as
//! A1111 returns what it has) and skip (drop the current batch, go on), and the client's disconnect (cancel).
//!
//! The images travel back to the waiting handler in the job's typed result; the job's record
//! keeps only a summary (counts, the model), never the images.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use image::RgbImage;
use serde_json::{json, Value};

use super::CompatState;
use crate::api::error::ApiResult;
use crate::api::AppState;
use crate::auth::Principal;
use crate::engine::{CancelToken, EngineError, GeneratedImage, Progress, ValidRequest};
use crate::jobs::{JobId, JobOutput, JobSpec, JobStatus};

/// The most batches one A1111 request may ask for (`n_iter`).
pub(crate) const MAX_N_ITER: usize = 16;

/// A compat job between submission and its reply, as `/sdapi/v1/progress`, `/interrupt` and
/// `/skip` see it.
pub(crate) struct ActiveJob {
    id: OnceLock<JobId>,
    pub owner: String,
    /// "txt2img", "img2img" or "openai".
    pub kind: &'static str,
    pub n_iter: usize,
    /// A1111's `job_timestamp` (`%Y%m%d%H%M%S`, UTC).
    pub timestamp: String,
    interrupted: AtomicBool,
    skip: AtomicBool,
    /// The token of the batch being painted, so an interrupt reaches the engine at once.
    batch: Mutex<Option<CancelToken>>,
    /// The latest latent preview of the batch being painted (`current_image`).
    preview: Mutex<Option<RgbImage>>,
}

impl ActiveJob {
    pub(crate) fn id(&self) -> Option<&JobId> {
        self.id.get()
    }

    pub(crate) fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        if let Some(batch) = &*self.batch.lock().unwrap_or_else(PoisonError::into_inner) {
            batch.interrupt();
        }
    }

    pub(crate) fn skip(&self) {
        self.skip.store(true, Ordering::SeqCst);
    }

    /// The latest preview, if the engine sent one yet.
    pub(crate) fn preview(&self) -> Option<RgbImage> {
        self.preview
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

/// What a compat request asks the engine for.
pub(crate) struct CompatJob {
    pub kind: &'static str,
    /// One batch; batch `k` uses the seeds shifted by `k * batch_size`.
    pub request: ValidRequest,
    pub n_iter: usize,
}

/// What came back.
pub(crate) struct CompatOutput {
    pub images: Vec<GeneratedImage>,
    /// The model that painted (the backend's name for it).
    pub model: String,
    /// Seeds of every planned image, painted or not (A1111's `all_seeds`).
    pub all_seeds: Vec<u64>,
    pub interrupted: bool,
    pub skipped_batches: usize,
    pub timestamp: String,
}

/// Removes a job from the active list however the handler ends (reply, error, disconnect).
struct Registered {
    compat: Arc<CompatState>,
    job: Arc<ActiveJob>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.compat.active().retain(|j| !Arc::ptr_eq(j, &self.job));
    }
}

/// Seeds of batch `k`.
fn batch_seeds(base: &[u64], k: usize) -> Vec<u64> {
    let shift = (k * base.len()) as u64;
    base.iter().map(|s| s.saturating_add(shift)).collect()
}

struct Painted {
    images: Vec<GeneratedImage>,
    model: String,
    interrupted: bool,
    skipped: usize,
}

impl JobOutput for Painted {
    fn record(&self) -> Value {
        json!({
            "images": self.images.len(),
            "model": self.model,
            "interrupted": self.interrupted,
            "skipped_batches": self.skipped,
        })
    }
}

/// Queues the job and waits for it (up to the server's request timeout).
pub(crate) async fn run(
    state: &AppState,
    compat: &Arc<CompatState>,
    owner: &str,
    job: CompatJob,
) -> ApiResult<CompatOutput> {
    let n_iter = job.n_iter.clamp(1, MAX_N_ITER);
    let base_seeds = job.request.seeds().to_vec();
    let all_seeds: Vec<u64> = (0..n_iter)
        .flat_map(|k| batch_seeds(&base_seeds, k))
        .collect();
    let active = Arc::new(ActiveJob {
        id: OnceLock::new(),
        owner: owner.to_string(),
        kind: job.kind,
        n_iter,
        timestamp: chrono::Utc::now().format("%Y%m%d%H%M%S").to_string(),
        interrupted: AtomicBool::new(false),
        skip: AtomicBool::new(false),
        batch: Mutex::new(None),
        preview: Mutex::new(None),
    });
    let backend = state.backend.clone();
    let flags = active.clone();
    // The server's preview cadence, for `current_image`.
    let request = job.request.with_preview_every(state.preview_every());
    let requested_model = request.model().map(str::to_string);
    // The record keeps what identifies the request, not the (possibly base64) init image.
    let spec = JobSpec::new(
        format!("compat.{}", job.kind),
        format!("compat {}", job.kind),
    )
    .owner(owner)
    .request(json!({
        "model": requested_model,
        "seeds": base_seeds,
        "n_iter": n_iter,
    }));
    let handle = state.jobs.submit(spec, move |ctx| {
        let job_cancel = ctx.cancel_token();
        let mut painted = Painted {
            images: Vec::new(),
            model: String::new(),
            interrupted: false,
            skipped: 0,
        };
        for k in 0..n_iter {
            if job_cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            if flags.is_interrupted() {
                painted.interrupted = true;
                break;
            }
            let batch = request.clone().with_seeds(batch_seeds(request.seeds(), k));
            // The engine watches this batch's own token, so a skip stops only this batch;
            // the progress callback (once per step) forwards every reason to stop to it.
            let batch_cancel = CancelToken::new();
            *flags.batch.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(batch_cancel.clone());
            if flags.is_interrupted() {
                painted.interrupted = true;
                break;
            }
            let progress = {
                let ctx = ctx.clone();
                let flags = flags.clone();
                let job_cancel = job_cancel.clone();
                let batch_cancel = batch_cancel.clone();
                Box::new(move |p: Progress| {
                    ctx.progress(k * p.total + p.step, n_iter * p.total);
                    if let Some(img) = p.preview {
                        *flags.preview.lock().unwrap_or_else(PoisonError::into_inner) = Some(img);
                    }
                    if job_cancel.is_cancelled() || flags.skip.swap(false, Ordering::SeqCst) {
                        batch_cancel.cancel();
                    } else if flags.is_interrupted() {
                        batch_cancel.interrupt();
                    }
                })
            };
            match backend.generate(batch, progress, &batch_cancel) {
                Ok(result) => {
                    painted.model = result.model;
                    painted.images.extend(result.images);
                    if flags.is_interrupted() {
                        painted.interrupted = true;
                        break;
                    }
                }
                Err(EngineError::Cancelled) if !job_cancel.is_cancelled() => {
                    if flags.is_interrupted() {
                        painted.interrupted = true;
                        break;
                    }
                    painted.skipped += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(painted)
    })?;
    let id = handle.id().clone();
    let _ = active.id.set(id.clone());
    compat.active().push(active.clone());
    let _registered = Registered {
        compat: compat.clone(),
        job: active.clone(),
    };
    // A client that goes away drops this future, and the guard cancels its job.
    let guard = state.jobs.guard(&id);
    let result = handle.wait(state.request_timeout).await;
    guard.disarm();
    let painted = result?;
    // Nothing painted (interrupted before the first batch): name the model that was asked for.
    let model = if painted.model.is_empty() {
        requested_model.unwrap_or_else(|| state.backend.default_model())
    } else {
        painted.model
    };
    Ok(CompatOutput {
        images: painted.images,
        model,
        all_seeds,
        interrupted: painted.interrupted,
        skipped_batches: painted.skipped,
        timestamp: active.timestamp.clone(),
    })
}

/// The compat jobs `caller` may see (admins: all; others: their own), oldest first, with their
/// queue status; jobs the queue no longer knows are left out.
pub(crate) fn visible_jobs(
    state: &AppState,
    compat: &CompatState,
    caller: &Principal,
) -> Vec<(Arc<ActiveJob>, JobStatus)> {
    let jobs: Vec<Arc<ActiveJob>> = compat
        .active()
        .iter()
        .filter(|j| caller.is_admin() || j.owner == caller.user)
        .cloned()
        .collect();
    jobs.into_iter()
        .filter_map(|j| {
            // Unanswered jobs are live, so memory has them: no database read here.
            let status = state.jobs.live_status(j.id()?.as_str())?;
            Some((j, status))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_continue_the_seed_sequence() {
        assert_eq!(batch_seeds(&[10, 11], 0), vec![10, 11]);
        assert_eq!(batch_seeds(&[10, 11], 2), vec![14, 15]);
        assert_eq!(batch_seeds(&[u64::MAX], 1), vec![u64::MAX]);
    }
}

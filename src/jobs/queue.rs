//! The queue's shell: a cheap, cloneable handle around the pure [`QueueState`] that runs admitted
//! jobs on their own OS threads, writes every transition to the [`JobStore`], fans events out to
//! subscribers and applies cancellation. Every decision (who starts, who waits, who is refused)
//! is made by the state under one mutex, and the record of a transition is written under that
//! same mutex, so a reader never sees the record and the live state disagree. Typed submission
//! and the handles are in `handle.rs`.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::WatchStream;

use super::config::QueueConfig;
use super::events::JobEvents;
use super::sqlite::SqliteJobStore;
use super::state::{Admission, CancelOutcome, QueueState};
use super::store::{JobRecord, JobStore, JobStoreError};
use super::types::{
    JobEvent, JobFailure, JobId, JobPreview, JobSpec, JobStatus, QueueError, QueueMetrics,
    QueueOpenError,
};
use crate::engine::pipeline::CancelToken;

/// The type-erased work of a job: runs on its own thread and returns what its record keeps.
pub(crate) type JobFn = Box<dyn FnOnce(JobContext) -> Result<Value, JobFailure> + Send + 'static>;

/// Progress reaches the record at most this often (plus the last step), so a fast sampler does
/// not turn every step into a database write.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often finishing jobs also delete records past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A bounded, first-come-first-served job queue that runs at most `concurrency` jobs at once.
/// Clones share the same queue.
#[derive(Clone)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Mutex<Shared>,
    /// Woken whenever a running job ends, for [`JobQueue::drained`].
    finished: Notify,
    store: Arc<dyn JobStore>,
    retention: Duration,
    last_prune: Mutex<Instant>,
}

struct Shared {
    state: QueueState,
    /// Queued and running jobs only; an entry goes away with the job's terminal event, which
    /// also drops its subscribers' senders so their streams end.
    live: HashMap<JobId, Live>,
}

struct Live {
    /// Present while queued; taken when the job starts.
    job: Option<JobFn>,
    cancel: CancelToken,
    subscribers: Vec<UnboundedSender<JobEvent>>,
    /// The latest preview. A watch, not the subscribers' queues: it holds one value, so a slow
    /// reader skips to the newest preview instead of piling images up, and the job never waits.
    preview: watch::Sender<Option<Arc<JobPreview>>>,
    /// Entered on the job's thread, so its log lines name the job.
    span: tracing::Span,
    /// When progress last reached the record.
    persisted: Option<Instant>,
}

/// A job taken out of the table, ready to run on its own thread.
struct Launch {
    id: JobId,
    job: JobFn,
    cancel: CancelToken,
    span: tracing::Span,
}

impl Shared {
    /// Sends `event` to the job's subscribers; a terminal event also removes the job's live
    /// entry, which is returned so the caller drops it (and the closure inside) after unlocking.
    fn emit(&mut self, id: &JobId, event: JobEvent) -> Option<Live> {
        let terminal = event.is_terminal();
        if let Some(live) = self.live.get_mut(id) {
            live.subscribers.retain(|s| s.send(event.clone()).is_ok());
        }
        if terminal {
            self.live.remove(id)
        } else {
            None
        }
    }

    /// Tells waiting jobs their new positions.
    fn emit_moves(&mut self, moved: Vec<(JobId, usize)>) {
        for (id, position) in moved {
            self.emit(&id, JobEvent::Queued { position });
        }
    }
}

/// Logs a record write that failed: the live state stays right, and a job whose record lags
/// is settled by the restart policy at the next start.
fn logged<T>(what: &str, id: &str, r: Result<T, JobStoreError>) -> Option<T> {
    r.map_err(|e| tracing::error!(job = id, "could not record {what}: {e}"))
        .ok()
}

impl JobQueue {
    /// A queue whose records live in a private in-memory database (tests, tools).
    pub fn new(config: QueueConfig) -> Result<Self, QueueOpenError> {
        Self::open(config, Arc::new(SqliteJobStore::in_memory()?))
    }

    /// A queue over durable records. Jobs that a previous process left queued or running end
    /// as failed "server restarted" (why not re-run: see the README's "Jobs"), and records past
    /// the retention are deleted.
    pub fn open(config: QueueConfig, store: Arc<dyn JobStore>) -> Result<Self, QueueOpenError> {
        config.validate()?;
        let restarted = store.fail_unfinished(&JobFailure::restarted(), Utc::now())?;
        if !restarted.is_empty() {
            tracing::warn!(
                jobs = restarted.len(),
                "jobs left queued or running by the previous run failed as 'server restarted'"
            );
        }
        let retention = config.retention;
        store.prune(Utc::now() - retention)?;
        let last_seq = store.max_seq()?;
        Ok(JobQueue {
            inner: Arc::new(Inner {
                shared: Mutex::new(Shared {
                    state: QueueState::new(config, last_seq),
                    live: HashMap::new(),
                }),
                finished: Notify::new(),
                store,
                retention,
                last_prune: Mutex::new(Instant::now()),
            }),
        })
    }

    /// Admits a type-erased job under `span` (see `handle.rs` for the typed front).
    pub(crate) fn submit_erased(
        &self,
        id: JobId,
        spec: JobSpec,
        job: JobFn,
        span: tracing::Span,
    ) -> Result<(), QueueError> {
        let cancel = CancelToken::new();
        let launch = {
            let mut shared = self.inner.lock();
            let admission = shared.state.submit(
                id.clone(),
                spec.label,
                spec.kind,
                spec.owner,
                Instant::now(),
            )?;
            let Some(status) = shared.state.status(id.as_str(), Instant::now()) else {
                return Err(QueueError::Storage(JobStoreError::Database(
                    "the admitted job vanished".into(),
                )));
            };
            let record = JobRecord {
                request: spec.request,
                ..JobRecord::from_status(&status)
            };
            if let Err(e) = self.inner.store.insert(&record) {
                shared.state.withdraw(id.as_str());
                return Err(QueueError::Storage(e));
            }
            let (stored, launch) = match admission {
                Admission::Start => (
                    None,
                    Some(Launch {
                        id: id.clone(),
                        job,
                        cancel: cancel.clone(),
                        span: span.clone(),
                    }),
                ),
                Admission::Queued { .. } => (Some(job), None),
            };
            shared.live.insert(
                id,
                Live {
                    job: stored,
                    cancel,
                    subscribers: Vec::new(),
                    preview: watch::Sender::new(None),
                    span,
                    persisted: None,
                },
            );
            launch
        };
        if let Some(l) = launch {
            launch_all(&self.inner, vec![l]);
        }
        Ok(())
    }

    /// A snapshot of the job while it is queued, running or recently finished, from memory
    /// only: never touches the database, so it is fine on an async thread.
    pub fn live_status(&self, id: &str) -> Option<JobStatus> {
        self.inner.lock().state.status(id, Instant::now())
    }

    /// A snapshot of the job from memory, else from its record (finished within the
    /// retention, or before a restart). May read the database: call it off the async threads.
    pub fn status(&self, id: &str) -> Option<JobStatus> {
        if let Some(s) = self.live_status(id) {
            return Some(s);
        }
        self.inner.recorded(id).map(|r| r.status(Utc::now()))
    }

    /// The running job's latest preview, from memory (none once it finished: the result
    /// replaces it).
    pub fn preview(&self, id: &str) -> Option<Arc<JobPreview>> {
        self.inner.lock().live.get(id)?.preview.borrow().clone()
    }

    /// The job's events from now on, preceded by its current state (`queued` with its position,
    /// or `started` and the latest `progress` and `preview`, or the terminal event). The stream
    /// ends after the terminal event; for a job known only from its record, right after
    /// catching up. `None` for an unknown or expired job. May read the database, like
    /// [`Self::status`].
    pub fn subscribe(&self, id: &str) -> Option<JobEvents> {
        let (tx, rx) = unbounded_channel();
        let mut previews = None;
        let events = {
            let mut shared = self.inner.lock();
            match shared.state.catch_up(id, Instant::now()) {
                Some(events) => {
                    // A finished job has no live entry: `tx` is dropped below and the stream
                    // ends after catching up.
                    if let Some(live) = shared.live.get_mut(id) {
                        live.subscribers.push(tx.clone());
                        let mut latest = live.preview.subscribe();
                        // A late subscriber gets the latest preview once, then the new ones.
                        if latest.borrow().is_some() {
                            latest.mark_changed();
                        }
                        previews = Some(WatchStream::from_changes(latest));
                    }
                    events
                }
                None => {
                    drop(shared);
                    JobRecord::catch_up(&self.inner.recorded(id)?)
                }
            }
        };
        for event in events {
            // The receiver is still in hand, so the send cannot fail.
            let _ = tx.send(event);
        }
        Some(JobEvents::new(rx, previews))
    }

    /// Cancels the job on request: a waiting job is removed and never runs; a running job's
    /// cancel token is set and it ends as cancelled. False when the job is unknown or finished.
    pub fn cancel(&self, id: &str) -> bool {
        self.cancel_with(id, JobFailure::cancelled("cancelled by request"))
    }

    /// [`Self::cancel`] with the reason the job's status and events will carry.
    pub fn cancel_with(&self, id: &str, reason: JobFailure) -> bool {
        let mut shared = self.inner.lock();
        match shared.state.cancel(id, reason, Instant::now()) {
            CancelOutcome::Removed { event, moved } => {
                let id = JobId::from(id);
                self.inner.record_finish(&shared, &id);
                let removed = shared.emit(&id, event);
                shared.emit_moves(moved);
                drop(shared);
                drop(removed);
                true
            }
            CancelOutcome::Signal => {
                if let Some(live) = shared.live.get(id) {
                    live.cancel.cancel();
                }
                true
            }
            CancelOutcome::NotActive => false,
        }
    }

    /// Counts for `/health`.
    pub fn metrics(&self) -> QueueMetrics {
        self.inner.lock().state.metrics()
    }

    /// Stops accepting jobs and cancels every waiting one; with `cancel_running`, running jobs
    /// are asked to stop too (otherwise they finish). Await [`Self::drained`] afterwards.
    pub fn shutdown(&self, cancel_running: bool) {
        let reason = JobFailure::cancelled("the server is shutting down");
        let mut shared = self.inner.lock();
        let outcome = shared.state.shutdown(reason.clone(), Instant::now());
        let mut removed = Vec::new();
        for (id, event) in outcome.removed {
            self.inner.record_finish(&shared, &id);
            removed.extend(shared.emit(&id, event));
        }
        if cancel_running {
            for id in outcome.running {
                if shared
                    .state
                    .cancel(id.as_str(), reason.clone(), Instant::now())
                    == CancelOutcome::Signal
                {
                    if let Some(live) = shared.live.get(&id) {
                        live.cancel.cancel();
                    }
                }
            }
        }
        drop(shared);
        drop(removed);
    }

    /// Resolves once no job is running.
    pub async fn drained(&self) {
        loop {
            let notified = self.inner.finished.notified();
            tokio::pin!(notified);
            // Registered before the check, so a job ending in between still wakes us.
            notified.as_mut().enable();
            if self.metrics().running == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobQueue")
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl Inner {
    /// Poison-tolerant: a panic elsewhere must not take the whole queue down with it.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job's record, unless it finished longer ago than the retention (it may not be
    /// pruned yet, but it is gone as far as clients are concerned).
    fn recorded(&self, id: &str) -> Option<JobRecord> {
        let record = logged("a read", id, self.store.get(id))??;
        let cutoff = Utc::now() - self.retention;
        match record.finished_at {
            Some(at) if at < cutoff => None,
            _ => Some(record),
        }
    }

    /// Writes a job's terminal snapshot (called under the lock, right after the state settled).
    fn record_finish(&self, shared: &Shared, id: &JobId) {
        if let Some(status) = shared.state.status(id.as_str(), Instant::now()) {
            logged("the outcome", id.as_str(), self.store.finish(&status));
        }
    }

    /// Records a job's outcome and hands back the jobs that take its slot.
    fn finish(&self, id: &JobId, outcome: Result<Value, JobFailure>) -> Vec<Launch> {
        let mut shared = self.lock();
        let Some(finished) = shared.state.finish(id.as_str(), outcome, Instant::now()) else {
            return Vec::new();
        };
        if let Some(status) = &finished.status {
            logged("the outcome", id.as_str(), self.store.finish(status));
        }
        let removed = shared.emit(id, finished.event);
        shared.emit_moves(finished.moved);
        let mut launches = Vec::new();
        for next in finished.started {
            let started_at = shared
                .state
                .status(next.as_str(), Instant::now())
                .and_then(|s| s.started_at)
                .unwrap_or_else(Utc::now);
            if logged(
                "the start",
                next.as_str(),
                self.store.claim(next.as_str(), started_at),
            ) == Some(false)
            {
                tracing::warn!(job = %next, "the job's record was not queued when it started");
            }
            shared.emit(&next, JobEvent::Started);
            let Some(live) = shared.live.get_mut(&next) else {
                continue;
            };
            if let Some(job) = live.job.take() {
                launches.push(Launch {
                    id: next,
                    job,
                    cancel: live.cancel.clone(),
                    span: live.span.clone(),
                });
            }
        }
        drop(shared);
        drop(removed);
        self.finished.notify_waiters();
        self.maybe_prune();
        launches
    }

    /// Deletes expired records, at most once per [`PRUNE_EVERY`].
    fn maybe_prune(&self) {
        {
            let mut last = self
                .last_prune
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() < PRUNE_EVERY {
                return;
            }
            *last = Instant::now();
        }
        logged(
            "pruning",
            "-",
            self.store.prune(Utc::now() - self.retention),
        );
    }
}

/// Starts each job on its own named thread. A thread that cannot be spawned fails its job, which
/// may hand the slot to further jobs; the loop works through those too.
fn launch_all(inner: &Arc<Inner>, mut pending: Vec<Launch>) {
    while let Some(Launch {
        id,
        job,
        cancel,
        span,
    }) = pending.pop()
    {
        let ctx = JobContext {
            inner: Arc::clone(inner),
            id: id.clone(),
            cancel,
        };
        let runner = Arc::clone(inner);
        let spawned = std::thread::Builder::new()
            .name(format!("limner-job-{}", id.as_str().get(..8).unwrap_or("")))
            .spawn(move || {
                let _entered = span.enter();
                run_job(runner, ctx, job)
            });
        if let Err(e) = spawned {
            let failure = JobFailure::internal(format!("could not start a job thread: {e}"));
            pending.extend(inner.finish(&id, Err(failure)));
        }
    }
}

fn run_job(inner: Arc<Inner>, ctx: JobContext, job: JobFn) {
    let id = ctx.id.clone();
    tracing::debug!("job started");
    let outcome = catch_unwind(AssertUnwindSafe(move || job(ctx))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        tracing::error!("job panicked: {what}");
        Err(JobFailure::internal(format!("the job panicked: {what}")))
    });
    match &outcome {
        Ok(_) => tracing::info!("job done"),
        Err(f) => tracing::info!(kind = %f.kind, "job ended: {}", f.message),
    }
    let next = inner.finish(&id, outcome);
    launch_all(&inner, next);
}

/// What a running job gets: its id, a progress reporter and its cancel token. Cloneable so the
/// progress reporter can move into a `'static` callback.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
    id: JobId,
    cancel: CancelToken,
}

impl JobContext {
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// Reports that step `step` of `total` is done (call once per denoising step). The record
    /// hears of it at most every [`PROGRESS_EVERY`], and always of the last step.
    pub fn progress(&self, step: usize, total: usize) {
        let persist = {
            let mut shared = self.inner.lock();
            if !shared.state.progress(self.id.as_str(), step, total) {
                return;
            }
            let elapsed_ms = shared.state.elapsed_ms(self.id.as_str(), Instant::now());
            shared.emit(
                &self.id,
                JobEvent::Progress {
                    step,
                    total,
                    elapsed_ms,
                },
            );
            let Some(live) = shared.live.get_mut(&self.id) else {
                return;
            };
            let due = step >= total
                || live
                    .persisted
                    .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
            if due {
                live.persisted = Some(Instant::now());
            }
            due
        };
        if persist {
            // Outside the lock; the store ignores progress of a job no longer running.
            logged(
                "progress",
                self.id.as_str(),
                self.inner.store.progress(self.id.as_str(), step, total),
            );
        }
    }

    /// Publishes a preview of the running job, replacing the previous one. Costs a lock and a
    /// pointer swap, whoever is (or is not) reading: subscribers pick it up at their own pace.
    pub fn preview(&self, preview: JobPreview) {
        let shared = self.inner.lock();
        if let Some(live) = shared.live.get(&self.id) {
            live.preview.send_replace(Some(Arc::new(preview)));
        }
    }

    /// The token the engine checks before every step; set when the job is cancelled.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

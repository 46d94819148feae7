//! The queue's shell: a cheap, cloneable handle around the pure [`QueueState`] that runs admitted
//! jobs on their own OS threads, fans events out to subscribers and applies cancellation.
//! Every decision (who starts, who waits, who is refused) is made by the state under one mutex;
//! this file only carries those decisions out.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Notify;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::guard::CancelOnDrop;
use super::state::{Admission, CancelOutcome, QueueState};
use super::types::{
    JobEvent, JobFailure, JobId, JobState, JobStatus, QueueConfig, QueueConfigError, QueueError,
    QueueMetrics, WaitError,
};
use crate::engine::pipeline::CancelToken;

/// The work a job does: runs on a blocking thread, reports progress through its context and
/// must stop soon after the context's cancel token is set.
pub type JobFn = Box<dyn FnOnce(JobContext) -> Result<Value, JobFailure> + Send + 'static>;

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
}

/// A job taken out of the table, ready to run on its own thread.
type Launch = (JobId, JobFn, CancelToken);

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

impl JobQueue {
    /// A queue with the given limits; fails naming the setting that is out of range.
    pub fn new(config: QueueConfig) -> Result<Self, QueueConfigError> {
        config.validate()?;
        Ok(JobQueue {
            inner: Arc::new(Inner {
                shared: Mutex::new(Shared {
                    state: QueueState::new(config),
                    live: HashMap::new(),
                }),
                finished: Notify::new(),
            }),
        })
    }

    /// Accepts a job, or refuses it when `max_queued` jobs are already waiting. The job starts
    /// at once when a slot is free and nobody is waiting.
    pub fn submit<F>(
        &self,
        label: impl Into<String>,
        owner: Option<String>,
        job: F,
    ) -> Result<JobId, QueueError>
    where
        F: FnOnce(JobContext) -> Result<Value, JobFailure> + Send + 'static,
    {
        let job: JobFn = Box::new(job);
        let id = JobId::new_random();
        let cancel = CancelToken::new();
        let launch = {
            let mut shared = self.inner.lock();
            let admission = shared
                .state
                .submit(id.clone(), label.into(), owner, Instant::now())?;
            let (stored, launch) = match admission {
                Admission::Start => (None, Some((id.clone(), job, cancel.clone()))),
                Admission::Queued { .. } => (Some(job), None),
            };
            shared.live.insert(
                id.clone(),
                Live {
                    job: stored,
                    cancel,
                    subscribers: Vec::new(),
                },
            );
            launch
        };
        if let Some(l) = launch {
            launch_all(&self.inner, vec![l]);
        }
        Ok(id)
    }

    /// A snapshot of the job, while it is queued, running or recently finished.
    pub fn status(&self, id: &str) -> Option<JobStatus> {
        self.inner.lock().state.status(id, Instant::now())
    }

    /// The job's events from now on, preceded by its current state (`queued` with its position,
    /// or `started` and the latest `progress`, or the terminal event). The stream ends after the
    /// terminal event. `None` for an unknown or forgotten job.
    pub fn subscribe(&self, id: &str) -> Option<JobEvents> {
        let mut shared = self.inner.lock();
        let events = shared.state.catch_up(id, Instant::now())?;
        let (tx, rx) = unbounded_channel();
        for event in events {
            // The receiver is still in hand, so the send cannot fail.
            let _ = tx.send(event);
        }
        // A finished job has no live entry: dropping `tx` here ends the stream after catch-up.
        if let Some(live) = shared.live.get_mut(id) {
            live.subscribers.push(tx);
        }
        Some(JobEvents(UnboundedReceiverStream::new(rx)))
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

    /// Waits for the job's result. When `timeout` passes first the job is cancelled (reason
    /// `timeout`) and [`WaitError::Timeout`] returned, unless it finished in that very moment.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Value, WaitError> {
        let job_id = JobId::from(id);
        let mut events = self
            .subscribe(id)
            .ok_or_else(|| WaitError::NotFound(job_id.clone()))?;
        let waited = tokio::time::timeout(timeout, async {
            while let Some(event) = events.next().await {
                if let Some(outcome) = terminal_outcome(event) {
                    return outcome;
                }
            }
            Err(WaitError::Failed(JobFailure::internal(
                "the job's event stream ended without an outcome",
            )))
        })
        .await;
        match waited {
            Ok(outcome) => outcome,
            Err(_) => {
                let reason = JobFailure::timeout(format!(
                    "no result within {} s; the job was cancelled",
                    timeout.as_secs_f64()
                ));
                if !self.cancel_with(id, reason) {
                    if let Some(JobStatus {
                        state: JobState::Done,
                        result: Some(result),
                        ..
                    }) = self.status(id)
                    {
                        return Ok(result);
                    }
                }
                Err(WaitError::Timeout {
                    id: job_id,
                    waited: timeout,
                })
            }
        }
    }

    /// A guard that cancels the job when dropped before [`CancelOnDrop::disarm`]; hold it across
    /// a synchronous request so a client that goes away takes its job with it.
    pub fn guard(&self, id: &JobId) -> CancelOnDrop {
        CancelOnDrop::new(self.clone(), id.clone())
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

fn terminal_outcome(event: JobEvent) -> Option<Result<Value, WaitError>> {
    match event {
        JobEvent::Done { result } => Some(Ok(result)),
        JobEvent::Failed { error } => Some(Err(WaitError::Failed(error))),
        JobEvent::Cancelled { error } => Some(Err(WaitError::Cancelled(error))),
        _ => None,
    }
}

impl Inner {
    /// Poison-tolerant: a panic elsewhere must not take the whole queue down with it.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a job's outcome and hands back the jobs that take its slot.
    fn finish(&self, id: &JobId, outcome: Result<Value, JobFailure>) -> Vec<Launch> {
        let mut shared = self.lock();
        let Some(finished) = shared.state.finish(id.as_str(), outcome, Instant::now()) else {
            return Vec::new();
        };
        let removed = shared.emit(id, finished.event);
        shared.emit_moves(finished.moved);
        let mut launches = Vec::new();
        for next in finished.started {
            shared.emit(&next, JobEvent::Started);
            let Some(live) = shared.live.get_mut(&next) else {
                continue;
            };
            if let Some(job) = live.job.take() {
                launches.push((next, job, live.cancel.clone()));
            }
        }
        drop(shared);
        drop(removed);
        self.finished.notify_waiters();
        launches
    }
}

/// Starts each job on its own named thread. A thread that cannot be spawned fails its job, which
/// may hand the slot to further jobs; the loop works through those too.
fn launch_all(inner: &Arc<Inner>, mut pending: Vec<Launch>) {
    while let Some((id, job, cancel)) = pending.pop() {
        let ctx = JobContext {
            inner: Arc::clone(inner),
            id: id.clone(),
            cancel,
        };
        let runner = Arc::clone(inner);
        let spawned = std::thread::Builder::new()
            .name(format!("limner-job-{}", id.as_str().get(..8).unwrap_or("")))
            .spawn(move || run_job(runner, ctx, job));
        if let Err(e) = spawned {
            let failure = JobFailure::internal(format!("could not start a job thread: {e}"));
            pending.extend(inner.finish(&id, Err(failure)));
        }
    }
}

fn run_job(inner: Arc<Inner>, ctx: JobContext, job: JobFn) {
    let id = ctx.id.clone();
    let outcome = catch_unwind(AssertUnwindSafe(move || job(ctx))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        tracing::error!(job = %id, "job panicked: {what}");
        Err(JobFailure::internal(format!("the job panicked: {what}")))
    });
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

    /// Reports that step `step` of `total` is done (call once per denoising step).
    pub fn progress(&self, step: usize, total: usize) {
        let mut shared = self.inner.lock();
        if shared.state.progress(self.id.as_str(), step, total) {
            let elapsed_ms = shared.state.elapsed_ms(self.id.as_str(), Instant::now());
            shared.emit(
                &self.id,
                JobEvent::Progress {
                    step,
                    total,
                    elapsed_ms,
                },
            );
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

/// A job's events, in order, ending after the terminal one.
pub struct JobEvents(UnboundedReceiverStream<JobEvent>);

impl Stream for JobEvents {
    type Item = JobEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobEvent>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

impl fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobEvents")
    }
}

//! Typed jobs: [`JobQueue::submit`] takes a closure returning the caller's own `Result<T, E>`,
//! and the [`JobHandle`] it returns waits for exactly that value, so the handler that owns the
//! HTTP shape builds its reply on the async side. What goes into the durable record is decided
//! by two small traits the domain types implement: [`JobOutput`] (the result reference) and
//! [`JobError`] (the failure). Also [`CancelOnDrop`], which cancels the job of a synchronous
//! request whose client went away.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::oneshot;

use super::queue::{JobContext, JobFn, JobQueue};
use super::types::{JobEvent, JobFailure, JobId, JobSpec, QueueError};

/// A job's result as its record keeps it: a small reference (a portrait id, a count), never the
/// bytes or the reply, which the API rebuilds from it.
pub trait JobOutput: Send + 'static {
    fn record(&self) -> Value;
}

/// A job's error as its record keeps it: the failure kind (which also picks the HTTP status,
/// in the API's one table) and the message.
pub trait JobError: Send + 'static {
    fn failure(&self) -> JobFailure;
}

/// Untyped jobs (tests, tools) record their JSON as it is.
impl JobOutput for Value {
    fn record(&self) -> Value {
        self.clone()
    }
}

impl JobError for JobFailure {
    fn failure(&self) -> JobFailure {
        self.clone()
    }
}

/// Why [`JobHandle::wait`] returned no result.
#[derive(Debug, PartialEq, Error)]
pub enum WaitError<E> {
    /// The job's own error, as its closure returned it.
    #[error("job failed: {0}")]
    Job(E),
    #[error("no job {0}")]
    NotFound(JobId),
    /// The wait ran out; the job has been cancelled.
    #[error("job {id} did not finish within {} s and was cancelled", waited.as_secs_f64())]
    Timeout { id: JobId, waited: Duration },
    /// Cancelled (on request, by shutdown); `kind` is `cancelled` or `timeout`.
    #[error("job cancelled: {0}")]
    Cancelled(JobFailure),
    /// Failed outside its own code: it panicked or its thread could not start.
    #[error("job failed: {0}")]
    Failed(JobFailure),
}

/// A submitted job: its id, and a waiter for its typed outcome. Dropping it leaves the job
/// alone (an asynchronous submission is followed by id).
#[derive(Debug)]
pub struct JobHandle<T, E> {
    id: JobId,
    queue: JobQueue,
    outcome: oneshot::Receiver<Result<T, E>>,
}

impl JobQueue {
    /// Accepts a job, or refuses it when `max_queued` jobs are already waiting (or its record
    /// cannot be written). The job starts at once when a slot is free and nobody is waiting. It
    /// runs inside a `job` span (id, kind), a child of the caller's current span.
    pub fn submit<T, E, F>(&self, spec: JobSpec, job: F) -> Result<JobHandle<T, E>, QueueError>
    where
        T: JobOutput,
        E: JobError,
        F: FnOnce(JobContext) -> Result<T, E> + Send + 'static,
    {
        let id = JobId::new_random();
        let span = tracing::info_span!("job", id = %id, kind = %spec.kind);
        let (tx, rx) = oneshot::channel();
        let erased: JobFn = Box::new(move |ctx| {
            let outcome = job(ctx);
            let record = match &outcome {
                Ok(t) => Ok(t.record()),
                Err(e) => Err(e.failure()),
            };
            // Sent before the queue settles the job, so a waiter that sees the terminal event
            // finds the value here. Nobody waiting (an async job) is fine.
            let _ = tx.send(outcome);
            record
        });
        self.submit_erased(id.clone(), spec, erased, span)?;
        Ok(JobHandle {
            id,
            queue: self.clone(),
            outcome: rx,
        })
    }

    /// A guard that cancels the job when dropped before [`CancelOnDrop::disarm`]; hold it across
    /// a synchronous request so a client that goes away takes its job with it.
    pub fn guard(&self, id: &JobId) -> CancelOnDrop {
        CancelOnDrop {
            queue: self.clone(),
            id: id.clone(),
            armed: true,
        }
    }
}

impl<T, E> JobHandle<T, E> {
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// Waits for the job's outcome. When `timeout` passes first the job is cancelled (reason
    /// `timeout`) and [`WaitError::Timeout`] returned, unless it finished in that very moment.
    pub async fn wait(mut self, timeout: Duration) -> Result<T, WaitError<E>> {
        let id = self.id.clone();
        let mut events = self
            .queue
            .subscribe(id.as_str())
            .ok_or_else(|| WaitError::NotFound(id.clone()))?;
        let terminal = tokio::time::timeout(timeout, async {
            while let Some(event) = events.next().await {
                if event.is_terminal() {
                    return Some(event);
                }
            }
            None
        })
        .await;
        match terminal {
            Ok(Some(JobEvent::Cancelled { error })) => Err(WaitError::Cancelled(error)),
            Ok(Some(JobEvent::Done { .. })) => match self.outcome.try_recv() {
                Ok(Ok(value)) => Ok(value),
                _ => Err(WaitError::Failed(JobFailure::internal(
                    "the job finished but its result went missing",
                ))),
            },
            Ok(Some(JobEvent::Failed { error })) => match self.outcome.try_recv() {
                Ok(Err(e)) => Err(WaitError::Job(e)),
                _ => Err(WaitError::Failed(error)),
            },
            Ok(_) => Err(WaitError::Failed(JobFailure::internal(
                "the job's event stream ended without an outcome",
            ))),
            Err(_) => {
                let reason = JobFailure::timeout(format!(
                    "no result within {} s; the job was cancelled",
                    timeout.as_secs_f64()
                ));
                if !self.queue.cancel_with(id.as_str(), reason) {
                    if let Ok(Ok(value)) = self.outcome.try_recv() {
                        return Ok(value);
                    }
                }
                Err(WaitError::Timeout {
                    id,
                    waited: timeout,
                })
            }
        }
    }
}

/// Cancels its job on drop unless [`CancelOnDrop::disarm`]ed first. Cancelling a job that has
/// already finished does nothing, so dropping late is harmless.
#[must_use = "the job is cancelled as soon as the guard is dropped"]
#[derive(Debug)]
pub struct CancelOnDrop {
    queue: JobQueue,
    id: JobId,
    armed: bool,
}

impl CancelOnDrop {
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The request finished normally (or handed the job to someone else): leave the job alone.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.queue.cancel_with(
                self.id.as_str(),
                JobFailure::cancelled("the client disconnected"),
            );
        }
    }
}

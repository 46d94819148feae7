//! The job queue between HTTP requests and the engine: a bounded, first-come-first-served queue
//! that runs at most `concurrency` blocking jobs at once, reports their progress as events,
//! cancels them on request, on timeout or when their client goes away, and remembers finished
//! jobs for a while so clients can poll for results.
//!
//! It knows nothing about images, characters or HTTP: a job is a closure that gets a
//! [`JobContext`] (progress reporter and cancel token) and returns JSON or a [`JobFailure`].
//! The rules live in the pure `state` module; [`JobQueue`] is the thread-and-channel shell.

mod guard;
mod queue;
mod state;
mod types;

pub use guard::CancelOnDrop;
pub use queue::{JobContext, JobEvents, JobFn, JobQueue};
pub use types::{
    FailureKind, JobEvent, JobFailure, JobId, JobState, JobStatus, QueueConfig, QueueConfigError,
    QueueError, QueueMetrics, WaitError, MAX_CONCURRENCY, MAX_QUEUED,
};

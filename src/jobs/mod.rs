//! The job queue between HTTP requests and the engine: a bounded, first-come-first-served queue
//! that runs at most `concurrency` blocking jobs at once, reports their progress as events,
//! cancels them on request, on timeout or when their client goes away, and keeps a durable
//! record of every job (SQLite) so its id answers after a restart, for a configurable retention.
//!
//! It knows nothing about images, characters or HTTP: a job is a closure that gets a
//! [`JobContext`] (progress and preview reporter, cancel token; a preview arrives already encoded
//! and is passed on as it is) and returns its caller's own
//! `Result<T, E>`; the record keeps what [`JobOutput`] and [`JobError`] make of it. The rules
//! live in the pure `state` module; [`JobQueue`] is the thread-and-channel shell, `events` the
//! subscribers' streams (with the latest-only previews), `handle` the
//! typed front, `store`/`sqlite` the records.

mod config;
mod events;
mod handle;
mod queue;
mod sqlite;
mod state;
mod store;
mod types;

pub use config::{
    parse_duration, QueueConfig, QueueConfigError, DEFAULT_RETENTION, MAX_CONCURRENCY, MAX_QUEUED,
    MAX_RETENTION,
};
pub use events::JobEvents;
pub use handle::{CancelOnDrop, JobError, JobHandle, JobOutput, WaitError};
pub use queue::{JobContext, JobQueue};
pub use sqlite::SqliteJobStore;
pub use store::{JobRecord, JobStore, JobStoreError, JobStoreResult};
pub use types::{
    FailureKind, JobEvent, JobFailure, JobId, JobPreview, JobSpec, JobState, JobStatus, QueueError,
    QueueMetrics, QueueOpenError,
};

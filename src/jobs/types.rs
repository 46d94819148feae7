//! The queue's vocabulary: job ids, failures, events, status snapshots, settings and errors.
//! Everything here is plain data (serde-serializable where a client will see it) so the API layer
//! can hand it out as JSON or Server-Sent Events without reshaping.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::engine::EngineError;

/// A job's id: a v4 uuid string. Cheap to clone; looks up by `&str` in maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Arc<str>);

// By hand: serde's `Arc` support sits behind its `rc` feature, which nothing else needs.
impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| JobId(s.into()))
    }
}

impl JobId {
    pub(crate) fn new_random() -> Self {
        JobId(uuid::Uuid::new_v4().to_string().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        JobId(s.into())
    }
}

/// Why a job did not produce a result; one variant per way the API may want to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Cancelled on request (DELETE, a disconnected client, shutdown).
    Cancelled,
    /// Cancelled because a synchronous caller stopped waiting.
    Timeout,
    /// The job's input was refused by the code it ran (a 4xx in the API).
    Invalid,
    /// The job needs more memory than the engine allows (422 `too_large`); refused before it
    /// started.
    TooLarge,
    /// The engine failed (a 5xx).
    Engine,
    /// Saving or loading the job's data failed (a 5xx).
    Storage,
    /// The disk is full: the job's result could not be saved (507).
    InsufficientStorage,
    /// A bug: the job panicked or could not be started.
    Internal,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Cancelled => "cancelled",
            FailureKind::Timeout => "timeout",
            FailureKind::Invalid => "invalid",
            FailureKind::TooLarge => "too_large",
            FailureKind::Engine => "engine",
            FailureKind::Storage => "storage",
            FailureKind::InsufficientStorage => "insufficient_storage",
            FailureKind::Internal => "internal",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed or cancelled job's reason, as the client sees it: `{kind, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{kind}: {message}")]
pub struct JobFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl JobFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        JobFailure {
            kind,
            message: message.into(),
        }
    }
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Cancelled, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Timeout, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Invalid, message)
    }
    pub fn engine(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Engine, message)
    }
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Storage, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Internal, message)
    }
}

/// So a job closure can `?` engine calls: cancellation stays cancellation and request errors
/// stay client errors.
impl From<EngineError> for JobFailure {
    fn from(e: EngineError) -> Self {
        let kind = match &e {
            EngineError::Cancelled => FailureKind::Cancelled,
            EngineError::TooLarge { .. } => FailureKind::TooLarge,
            e if e.is_client_error() => FailureKind::Invalid,
            _ => FailureKind::Engine,
        };
        JobFailure::new(kind, e.to_string())
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    /// True once the job will never change again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// One thing that happened to a job, in the order it happened. A stream of these ends right
/// after the first terminal event (`done`, `failed`, `cancelled`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// Waiting; sent again whenever the 1-based position changes.
    Queued {
        position: usize,
    },
    /// Took a slot and is running.
    Started,
    /// Finished denoising step `step` of `total`.
    Progress {
        step: usize,
        total: usize,
        elapsed_ms: u64,
    },
    Done {
        result: Value,
    },
    Failed {
        error: JobFailure,
    },
    /// Cancelled before it finished; `error.kind` is `cancelled` or `timeout`.
    Cancelled {
        error: JobFailure,
    },
}

impl JobEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Queued { .. } => "queued",
            JobEvent::Started => "started",
            JobEvent::Progress { .. } => "progress",
            JobEvent::Done { .. } => "done",
            JobEvent::Failed { .. } => "failed",
            JobEvent::Cancelled { .. } => "cancelled",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobEvent::Done { .. } | JobEvent::Failed { .. } | JobEvent::Cancelled { .. }
        )
    }
}

/// A snapshot of one job for `GET /api/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub id: JobId,
    pub label: String,
    /// Who submitted it (for authorization by the API layer); never interpreted here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub state: JobState,
    /// 1-based admission order; jobs start in increasing `seq` (first come, first served).
    pub seq: u64,
    /// 1-based place in the queue, only while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    pub step: usize,
    pub total: usize,
    /// Time spent running so far (or in all, once finished); 0 while queued.
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Counters for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueMetrics {
    pub queued: usize,
    pub running: usize,
    pub max_queued: usize,
    pub concurrency: usize,
    /// Totals since start.
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Submissions refused because the queue was full.
    pub rejected: u64,
    /// Average run time of recent jobs, when any finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_job_ms: Option<u64>,
    /// False once shutdown began.
    pub accepting: bool,
}

/// How big the queue is and how many jobs run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Jobs allowed to wait (running ones not counted); one more is refused as full.
    pub max_queued: usize,
    /// Jobs running at the same time (one per device is the default).
    pub concurrency: usize,
    /// Finished jobs remembered for polling: at most this many ...
    pub keep_finished: usize,
    /// ... and none older than this.
    #[serde(with = "secs")]
    pub keep_finished_for: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_queued: 8,
            concurrency: 1,
            keep_finished: 1000,
            keep_finished_for: Duration::from_secs(3600),
        }
    }
}

pub const MAX_CONCURRENCY: usize = 64;
pub const MAX_QUEUED: usize = 10_000;

impl QueueConfig {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), QueueConfigError> {
        let check = |field: &'static str, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(QueueConfigError {
                    field,
                    value,
                    min,
                    max,
                })
            }
        };
        check("concurrency", self.concurrency, 1, MAX_CONCURRENCY)?;
        check("max_queued", self.max_queued, 0, MAX_QUEUED)?;
        check("keep_finished", self.keep_finished, 1, 1_000_000)?;
        Ok(())
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A queue setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid queue setting {field} = {value}: must be between {min} and {max}")]
pub struct QueueConfigError {
    pub field: &'static str,
    pub value: usize,
    pub min: usize,
    pub max: usize,
}

/// Why a job was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueueError {
    /// `max_queued` jobs are already waiting (maps to 429 with `Retry-After`).
    #[error("the job queue is full ({max_queued} jobs waiting); retry in {retry_after_secs} s")]
    Full {
        max_queued: usize,
        retry_after_secs: u64,
    },
    /// The server is shutting down (maps to 503).
    #[error("the job queue is shutting down and accepts no new jobs")]
    ShuttingDown,
}

/// Why [`super::JobQueue::wait`] returned without a result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WaitError {
    #[error("no job {0}")]
    NotFound(JobId),
    /// The wait ran out; the job has been cancelled.
    #[error("job {id} did not finish within {} s and was cancelled", waited.as_secs_f64())]
    Timeout { id: JobId, waited: Duration },
    #[error("job failed: {0}")]
    Failed(JobFailure),
    #[error("job cancelled: {0}")]
    Cancelled(JobFailure),
}

//! The queue's vocabulary: job ids, failures, events, status snapshots and errors.
//! Everything here is plain data (serde-serializable where a client will see it) so the API layer
//! can hand it out as JSON or Server-Sent Events without reshaping.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

use super::config::QueueConfigError;

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
    /// The job's input was refused by the code it ran (422 in the API).
    Invalid,
    /// Something the job needs does not exist (any more), e.g. its character was deleted while
    /// the job waited (404, as before the job).
    NotFound,
    /// The state of the data does not allow it (409).
    Conflict,
    /// The job needs more memory than the engine allows (422 `too_large`); refused before it
    /// started.
    TooLarge,
    /// The engine failed (a 5xx).
    Engine,
    /// The engine is not available (no model, still loading, failed to load: 503).
    Unavailable,
    /// The job was queued or running when the server stopped; it never finished and will not
    /// (see the README's "Jobs" section for why it is not re-run).
    Restarted,
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
            FailureKind::NotFound => "not_found",
            FailureKind::Conflict => "conflict",
            FailureKind::TooLarge => "too_large",
            FailureKind::Engine => "engine",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Restarted => "restarted",
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

/// A failed or cancelled job's reason, as the client sees it: `{kind, message, field?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{kind}: {message}")]
pub struct JobFailure {
    pub kind: FailureKind,
    pub message: String,
    /// The request field at fault, for `invalid` failures that know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl JobFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        JobFailure {
            kind,
            message: message.into(),
            field: None,
        }
    }
    pub fn with_field(mut self, field: Option<impl Into<String>>) -> Self {
        self.field = field.map(Into::into);
        self
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
    /// The failure every job that was queued or running when the server stopped ends with.
    pub fn restarted() -> Self {
        Self::new(
            FailureKind::Restarted,
            "server restarted: the job was queued or running when the server stopped, and did \
             not finish; submit it again",
        )
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
    /// A live preview of the picture as it stands. Only the latest counts: a subscriber that
    /// reads slowly skips older ones (see [`super::JobEvents`]).
    Preview(#[serde(serialize_with = "shared_preview")] Arc<JobPreview>),
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
            JobEvent::Preview(_) => "preview",
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

/// A running job's latest preview, already encoded by the code that ran the job (the queue never
/// looks inside the image). Kept in memory only, never in the job's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobPreview {
    /// The step (of `total`) the preview shows.
    pub step: usize,
    pub total: usize,
    pub width: u32,
    pub height: u32,
    /// A `data:` URL (`data:image/png;base64,...` or `data:image/jpeg;base64,...`).
    pub image: String,
}

// By hand, like `JobId`: serde's `Arc` support sits behind its `rc` feature.
fn shared_preview<S: serde::Serializer>(p: &Arc<JobPreview>, s: S) -> Result<S::Ok, S::Error> {
    p.as_ref().serialize(s)
}

/// A snapshot of one job for `GET /api/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub id: JobId,
    pub label: String,
    /// What sort of job it is (e.g. `portrait.generate`), as given at submission.
    pub kind: String,
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
    /// The job's record could not be written, so it was not accepted.
    #[error("the job could not be recorded: {0}")]
    Storage(JobStoreError),
}

/// What a submission is, for its record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// What sort of job it is (`portrait.generate`, `compat.txt2img`...).
    pub kind: String,
    /// A short human description ("portrait 1234").
    pub label: String,
    /// Who submitted it (for authorization by the API layer); never interpreted here.
    pub owner: Option<String>,
    /// The validated request as JSON, for the record (never image bytes).
    pub request: Value,
}

impl JobSpec {
    pub fn new(kind: impl Into<String>, label: impl Into<String>) -> Self {
        JobSpec {
            kind: kind.into(),
            label: label.into(),
            owner: None,
            request: Value::Null,
        }
    }
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
    pub fn request(mut self, request: Value) -> Self {
        self.request = request;
        self
    }
}

/// Why a queue could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueueOpenError {
    #[error(transparent)]
    Config(#[from] QueueConfigError),
    #[error("job records: {0}")]
    Store(#[from] JobStoreError),
}

/// A record store failure (here, with the other errors, so the store depends on the
/// vocabulary and not the other way round).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobStoreError {
    /// The disk is full (the API answers 507).
    #[error("the disk is full: {0}")]
    Full(String),
    #[error("database error: {0}")]
    Database(String),
}

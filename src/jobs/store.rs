//! Where job records live: the [`JobStore`] trait the queue writes every transition through,
//! and the record it reads back once a job is no longer in memory (finished long ago, or before
//! a restart). The SQLite implementation is in `sqlite.rs`; the trait is shaped so a shared
//! database can serve several nodes later: a job moves from queued to running only through
//! [`JobStore::claim`], which succeeds for exactly one caller.

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use super::types::JobStoreError;
use super::types::{JobEvent, JobFailure, JobId, JobState, JobStatus};

pub type JobStoreResult<T> = Result<T, JobStoreError>;

/// A job as its record holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub owner: Option<String>,
    pub kind: String,
    pub label: String,
    /// The validated request, for the record (never image bytes).
    pub request: Value,
    pub state: JobState,
    pub step: usize,
    pub total: usize,
    /// What the job produced, as its output type chose to record it (a reference, not the
    /// reply: the API rebuilds that).
    pub result: Option<Value>,
    pub error: Option<JobFailure>,
    pub seq: u64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// The status snapshot of a job that is not in memory: no queue position (only the live
    /// queue knows it), elapsed time from the timestamps.
    pub fn status(&self, now: DateTime<Utc>) -> JobStatus {
        let elapsed_ms = match (self.started_at, self.finished_at) {
            (Some(s), Some(f)) => (f - s).num_milliseconds(),
            (Some(s), None) => (now - s).num_milliseconds(),
            _ => 0,
        };
        JobStatus {
            id: self.id.clone(),
            label: self.label.clone(),
            kind: self.kind.clone(),
            owner: self.owner.clone(),
            state: self.state,
            seq: self.seq,
            position: None,
            step: self.step,
            total: self.total,
            elapsed_ms: u64::try_from(elapsed_ms).unwrap_or(0),
            result: self.result.clone(),
            error: self.error.clone(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

/// Durable job records. Every method is one short transaction; implementations must be safe to
/// call from any thread.
pub trait JobStore: Send + Sync + 'static {
    /// Records a newly admitted job (queued, or running when it took a free slot at once).
    fn insert(&self, job: &JobRecord) -> JobStoreResult<()>;

    /// Moves a queued job to running, atomically: true for the one caller that moved it, false
    /// when it was not queued (already claimed, cancelled, or unknown).
    fn claim(&self, id: &str, started_at: DateTime<Utc>) -> JobStoreResult<bool>;

    /// The latest finished step of a running job.
    fn progress(&self, id: &str, step: usize, total: usize) -> JobStoreResult<()>;

    /// Writes a job's terminal state, step, result or error and timestamps (from `status`).
    fn finish(&self, status: &JobStatus) -> JobStoreResult<()>;

    /// The record of `id`, if there is one.
    fn get(&self, id: &str) -> JobStoreResult<Option<JobRecord>>;

    /// Ends every job still queued or running with `failure` (state failed, finished now) and
    /// returns their ids: called at start-up, before any job of this process exists.
    fn fail_unfinished(
        &self,
        failure: &JobFailure,
        now: DateTime<Utc>,
    ) -> JobStoreResult<Vec<JobId>>;

    /// Deletes jobs that finished before `cutoff`; returns how many.
    fn prune(&self, cutoff: DateTime<Utc>) -> JobStoreResult<usize>;

    /// The highest `seq` recorded (0 when none), so admission order continues across restarts.
    fn max_seq(&self) -> JobStoreResult<u64>;
}

impl JobRecord {
    /// The record of a job as a status snapshot describes it (request left empty).
    pub(crate) fn from_status(s: &JobStatus) -> JobRecord {
        JobRecord {
            id: s.id.clone(),
            owner: s.owner.clone(),
            kind: s.kind.clone(),
            label: s.label.clone(),
            request: Value::Null,
            state: s.state,
            step: s.step,
            total: s.total,
            result: s.result.clone(),
            error: s.error.clone(),
            seq: s.seq,
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }

    /// The catch-up of a job known only from its record.
    pub(crate) fn catch_up(&self) -> Vec<JobEvent> {
        let r = self;
        let failure = || r.error.clone().unwrap_or_else(JobFailure::restarted);
        match r.state {
            JobState::Done => vec![JobEvent::Done {
                result: r.result.clone().unwrap_or(Value::Null),
            }],
            JobState::Failed => vec![JobEvent::Failed { error: failure() }],
            JobState::Cancelled => vec![JobEvent::Cancelled { error: failure() }],
            // Unfinished in the record but not in this process (another node's job).
            JobState::Queued => vec![JobEvent::Queued { position: 1 }],
            JobState::Running => vec![JobEvent::Started],
        }
    }
}

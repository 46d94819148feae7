//! The queue's pure state: admission and the capacity check, FIFO order and positions, slot
//! accounting, job transitions and the bounded memory of finished jobs. No threads, channels or
//! closures live here, so every rule is unit-tested directly; the [`super::JobQueue`] shell holds
//! this behind a mutex and turns the returned outcomes into thread starts and events.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::config::QueueConfig;
use super::types::{JobEvent, JobFailure, JobId, JobState, JobStatus, QueueError, QueueMetrics};

/// How many recent run times feed the Retry-After estimate.
const RECENT_RUNS: usize = 20;

struct JobRecord {
    label: String,
    kind: String,
    owner: Option<String>,
    seq: u64,
    state: JobState,
    step: usize,
    total: usize,
    created_at: DateTime<Utc>,
    started: Option<(Instant, DateTime<Utc>)>,
    finished: Option<(Instant, DateTime<Utc>)>,
    result: Option<Value>,
    error: Option<JobFailure>,
    /// Set when a running job was asked to stop; becomes its error if it then fails.
    cancel_reason: Option<JobFailure>,
}

impl JobRecord {
    fn elapsed(&self, now: Instant) -> Duration {
        match (self.started, self.finished) {
            (Some((s, _)), Some((f, _))) => f.saturating_duration_since(s),
            (Some((s, _)), None) => now.saturating_duration_since(s),
            _ => Duration::ZERO,
        }
    }
}

/// What became of a submission that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A slot was free: the job is already marked running; start it now.
    Start,
    /// It waits at this 1-based position.
    Queued { position: usize },
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CancelOutcome {
    /// It was waiting and is now cancelled (terminal event included); the jobs that were behind
    /// it moved up to the given positions.
    Removed {
        event: JobEvent,
        moved: Vec<(JobId, usize)>,
    },
    /// It is running: set its cancel token; it ends when its closure returns.
    Signal,
    /// Unknown or already finished: nothing to do.
    NotActive,
}

/// What finishing a job did: its terminal event and final snapshot (for its record), the jobs
/// that took the freed slot, and the new positions of those still waiting.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Finished {
    pub event: JobEvent,
    pub status: Option<JobStatus>,
    pub started: Vec<JobId>,
    pub moved: Vec<(JobId, usize)>,
}

/// Queued jobs removed by shutdown, and the running ones the caller may signal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shutdown {
    pub removed: Vec<(JobId, JobEvent)>,
    pub running: Vec<JobId>,
}

pub(crate) struct QueueState {
    config: QueueConfig,
    jobs: HashMap<JobId, JobRecord>,
    /// Waiting jobs, front first.
    queue: VecDeque<JobId>,
    running: usize,
    /// Finished jobs in the order they finished, oldest first, for eviction.
    finished: VecDeque<JobId>,
    recent_runs: VecDeque<Duration>,
    next_seq: u64,
    accepting: bool,
    done: u64,
    failed: u64,
    cancelled: u64,
    rejected: u64,
}

impl QueueState {
    /// `config` must already be validated. Admission numbers continue after `last_seq` (the
    /// highest one recorded before a restart).
    pub(crate) fn new(config: QueueConfig, last_seq: u64) -> Self {
        QueueState {
            config,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            running: 0,
            finished: VecDeque::new(),
            recent_runs: VecDeque::new(),
            next_seq: last_seq + 1,
            accepting: true,
            done: 0,
            failed: 0,
            cancelled: 0,
            rejected: 0,
        }
    }

    /// Admits a job: straight into a free slot when nobody is waiting, else to the back of the
    /// queue, else refused. Deciding the slot here (not when a thread gets around to it) keeps
    /// the capacity check exact.
    pub(crate) fn submit(
        &mut self,
        id: JobId,
        label: String,
        kind: String,
        owner: Option<String>,
        now: Instant,
    ) -> Result<Admission, QueueError> {
        self.prune(now);
        if !self.accepting {
            return Err(QueueError::ShuttingDown);
        }
        let can_start = self.queue.is_empty() && self.running < self.config.concurrency;
        if !can_start && self.queue.len() >= self.config.max_queued {
            self.rejected += 1;
            return Err(QueueError::Full {
                max_queued: self.config.max_queued,
                retry_after_secs: self.retry_after_secs(now),
            });
        }
        let mut record = JobRecord {
            label,
            kind,
            owner,
            seq: self.next_seq,
            state: JobState::Queued,
            step: 0,
            total: 0,
            created_at: Utc::now(),
            started: None,
            finished: None,
            result: None,
            error: None,
            cancel_reason: None,
        };
        self.next_seq += 1;
        let admission = if can_start {
            record.state = JobState::Running;
            record.started = Some((now, Utc::now()));
            self.running += 1;
            Admission::Start
        } else {
            self.queue.push_back(id.clone());
            Admission::Queued {
                position: self.queue.len(),
            }
        };
        self.jobs.insert(id, record);
        Ok(admission)
    }

    /// Takes back a job admitted a moment ago (its record could not be written): as if it had
    /// never been submitted, except that its `seq` stays used.
    pub(crate) fn withdraw(&mut self, id: &str) {
        let Some(record) = self.jobs.remove(id) else {
            return;
        };
        match record.state {
            JobState::Queued => self.queue.retain(|q| q.as_str() != id),
            JobState::Running => self.running = self.running.saturating_sub(1),
            _ => {}
        }
    }

    /// Records a finished denoising step; false when the job is not running.
    pub(crate) fn progress(&mut self, id: &str, step: usize, total: usize) -> bool {
        match self.jobs.get_mut(id) {
            Some(r) if r.state == JobState::Running => {
                r.step = step;
                r.total = total;
                true
            }
            _ => false,
        }
    }

    /// Cancels a waiting job outright, or marks a running one as asked to stop with `reason`
    /// (the first reason wins).
    pub(crate) fn cancel(&mut self, id: &str, reason: JobFailure, now: Instant) -> CancelOutcome {
        let Some(record) = self.jobs.get_mut(id) else {
            return CancelOutcome::NotActive;
        };
        match record.state {
            JobState::Queued => {
                let Some(index) = self.queue.iter().position(|q| q.as_str() == id) else {
                    return CancelOutcome::NotActive;
                };
                let Some(job_id) = self.queue.remove(index) else {
                    return CancelOutcome::NotActive;
                };
                let event = self.settle(&job_id, Err(reason), now);
                let moved = self.positions_from(index);
                CancelOutcome::Removed { event, moved }
            }
            JobState::Running => {
                record.cancel_reason.get_or_insert(reason);
                CancelOutcome::Signal
            }
            _ => CancelOutcome::NotActive,
        }
    }

    /// A running job's closure returned: record the outcome, free its slot and fill it from the
    /// front of the queue. `None` when the job was not running (a bug in the caller).
    pub(crate) fn finish(
        &mut self,
        id: &str,
        outcome: Result<Value, JobFailure>,
        now: Instant,
    ) -> Option<Finished> {
        let record = self.jobs.get(id)?;
        if record.state != JobState::Running {
            return None;
        }
        let job_id = self.jobs.get_key_value(id)?.0.clone();
        self.running = self.running.saturating_sub(1);
        let event = self.settle(&job_id, outcome, now);
        let mut started = Vec::new();
        while self.running < self.config.concurrency {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            if let Some(r) = self.jobs.get_mut(&next) {
                r.state = JobState::Running;
                r.started = Some((now, Utc::now()));
            }
            self.running += 1;
            started.push(next);
        }
        let moved = if started.is_empty() {
            Vec::new()
        } else {
            self.positions_from(0)
        };
        // Before pruning, which may forget it at once (a retention of 0).
        let status = self.status(id, now);
        self.prune(now);
        Some(Finished {
            event,
            status,
            started,
            moved,
        })
    }

    /// Stops admitting jobs and cancels every waiting one.
    pub(crate) fn shutdown(&mut self, reason: JobFailure, now: Instant) -> Shutdown {
        self.accepting = false;
        let waiting: Vec<JobId> = self.queue.drain(..).collect();
        let removed = waiting
            .into_iter()
            .map(|id| {
                let event = self.settle(&id, Err(reason.clone()), now);
                (id, event)
            })
            .collect();
        let running = self
            .jobs
            .iter()
            .filter(|(_, r)| r.state == JobState::Running)
            .map(|(id, _)| id.clone())
            .collect();
        Shutdown { removed, running }
    }

    /// Moves a queued or running job to its terminal state and returns its terminal event.
    /// A failure after a cancel request counts as cancelled with the request's reason; a result
    /// that arrives anyway is kept, because the work (and its side effects) did complete.
    fn settle(&mut self, id: &JobId, outcome: Result<Value, JobFailure>, now: Instant) -> JobEvent {
        let Some(r) = self.jobs.get_mut(id) else {
            return JobEvent::Failed {
                error: JobFailure::internal(format!("job {id} vanished")),
            };
        };
        let was_running = r.state == JobState::Running;
        r.finished = Some((now, Utc::now()));
        let event = match outcome {
            Ok(value) => {
                r.state = JobState::Done;
                r.result = Some(value.clone());
                self.done += 1;
                JobEvent::Done { result: value }
            }
            Err(failure) => {
                let cancelled = match (&r.cancel_reason, was_running) {
                    (Some(reason), _) => Some(reason.clone()),
                    (None, false) => Some(failure.clone()),
                    (None, true) => None,
                };
                match cancelled {
                    Some(error) => {
                        r.state = JobState::Cancelled;
                        r.error = Some(error.clone());
                        self.cancelled += 1;
                        JobEvent::Cancelled { error }
                    }
                    None => {
                        r.state = JobState::Failed;
                        r.error = Some(failure.clone());
                        self.failed += 1;
                        JobEvent::Failed { error: failure }
                    }
                }
            }
        };
        if was_running && r.state != JobState::Cancelled {
            if self.recent_runs.len() == RECENT_RUNS {
                self.recent_runs.pop_front();
            }
            self.recent_runs.push_back(r.elapsed(now));
        }
        self.finished.push_back(id.clone());
        event
    }

    /// The positions of waiting jobs from queue index `from` on.
    fn positions_from(&self, from: usize) -> Vec<(JobId, usize)> {
        self.queue
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, id)| (id.clone(), i + 1))
            .collect()
    }

    /// Forgets the oldest finished jobs beyond the count and age limits.
    fn prune(&mut self, now: Instant) {
        while let Some(oldest) = self.finished.front() {
            let expired = self
                .jobs
                .get(oldest)
                .and_then(|r| r.finished)
                .is_none_or(|(at, _)| now.saturating_duration_since(at) > self.config.retention);
            if self.finished.len() <= self.config.keep_finished && !expired {
                break;
            }
            if let Some(id) = self.finished.pop_front() {
                self.jobs.remove(&id);
            }
        }
    }

    /// Seconds until a place in the queue is likely to free up: the average recent run time
    /// spread over the slots, at least 1. With no history, the longest current run stands in.
    pub(crate) fn retry_after_secs(&self, now: Instant) -> u64 {
        let typical = self.average_run().unwrap_or_else(|| {
            self.jobs
                .values()
                .filter(|r| r.state == JobState::Running)
                .map(|r| r.elapsed(now))
                .max()
                .unwrap_or(Duration::ZERO)
        });
        let per_slot = typical.as_secs_f64() / self.config.concurrency.max(1) as f64;
        (per_slot.ceil() as u64).max(1)
    }

    fn average_run(&self) -> Option<Duration> {
        if self.recent_runs.is_empty() {
            return None;
        }
        let sum: Duration = self.recent_runs.iter().sum();
        Some(sum / self.recent_runs.len() as u32)
    }

    pub(crate) fn position(&self, id: &str) -> Option<usize> {
        self.queue
            .iter()
            .position(|q| q.as_str() == id)
            .map(|i| i + 1)
    }

    /// The events that bring a late subscriber up to date.
    pub(crate) fn catch_up(&self, id: &str, now: Instant) -> Option<Vec<JobEvent>> {
        let r = self.jobs.get(id)?;
        Some(match r.state {
            JobState::Queued => vec![JobEvent::Queued {
                position: self.position(id).unwrap_or(1),
            }],
            JobState::Running if r.step > 0 => vec![
                JobEvent::Started,
                JobEvent::Progress {
                    step: r.step,
                    total: r.total,
                    elapsed_ms: millis(r.elapsed(now)),
                },
            ],
            JobState::Running => vec![JobEvent::Started],
            JobState::Done => vec![JobEvent::Done {
                result: r.result.clone().unwrap_or(Value::Null),
            }],
            JobState::Failed => vec![JobEvent::Failed {
                error: r
                    .error
                    .clone()
                    .unwrap_or_else(|| JobFailure::internal("unknown")),
            }],
            JobState::Cancelled => vec![JobEvent::Cancelled {
                error: r
                    .error
                    .clone()
                    .unwrap_or_else(|| JobFailure::cancelled("cancelled")),
            }],
        })
    }

    /// Milliseconds a running job has run.
    pub(crate) fn elapsed_ms(&self, id: &str, now: Instant) -> u64 {
        self.jobs.get(id).map_or(0, |r| millis(r.elapsed(now)))
    }

    pub(crate) fn status(&self, id: &str, now: Instant) -> Option<JobStatus> {
        let (key, r) = self.jobs.get_key_value(id)?;
        Some(JobStatus {
            id: key.clone(),
            label: r.label.clone(),
            kind: r.kind.clone(),
            owner: r.owner.clone(),
            state: r.state,
            seq: r.seq,
            position: self.position(id),
            step: r.step,
            total: r.total,
            elapsed_ms: millis(r.elapsed(now)),
            result: r.result.clone(),
            error: r.error.clone(),
            created_at: r.created_at,
            started_at: r.started.map(|(_, at)| at),
            finished_at: r.finished.map(|(_, at)| at),
        })
    }

    pub(crate) fn metrics(&self) -> QueueMetrics {
        QueueMetrics {
            queued: self.queue.len(),
            running: self.running,
            max_queued: self.config.max_queued,
            concurrency: self.config.concurrency,
            done: self.done,
            failed: self.failed,
            cancelled: self.cancelled,
            rejected: self.rejected,
            avg_job_ms: self.average_run().map(millis),
            accepting: self.accepting,
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

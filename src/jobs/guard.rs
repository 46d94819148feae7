//! Cancels a job when a synchronous request goes away: axum drops a handler's future when the
//! client disconnects, and with it this guard, so nobody keeps painting for an empty room.

use super::queue::JobQueue;
use super::types::{JobFailure, JobId};

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
    pub(crate) fn new(queue: JobQueue, id: JobId) -> Self {
        CancelOnDrop {
            queue,
            id,
            armed: true,
        }
    }

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

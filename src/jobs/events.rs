//! A job's event stream as subscribers read it: the queued events (unbounded, they are history
//! a client needs in order) merged with the job's preview watch (one slot, so previews never pile
//! up behind a slow reader).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::{UnboundedReceiverStream, WatchStream};

use super::types::{JobEvent, JobPreview};

/// A job's events, in order, ending after the terminal one. Previews come from the job's watch:
/// only the newest one not yet read, ahead of the queued events (so a preview painted before the
/// end always precedes the terminal event).
pub struct JobEvents {
    events: UnboundedReceiverStream<JobEvent>,
    /// `None` for a job that had finished when subscribed, or once its watch closed.
    previews: Option<WatchStream<Option<Arc<JobPreview>>>>,
    ended: bool,
}

impl JobEvents {
    pub(super) fn new(
        events: UnboundedReceiver<JobEvent>,
        previews: Option<WatchStream<Option<Arc<JobPreview>>>>,
    ) -> Self {
        JobEvents {
            events: UnboundedReceiverStream::new(events),
            previews,
            ended: false,
        }
    }
}

impl Stream for JobEvents {
    type Item = JobEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobEvent>> {
        if self.ended {
            return Poll::Ready(None);
        }
        while let Some(previews) = self.previews.as_mut() {
            match Pin::new(previews).poll_next(cx) {
                Poll::Ready(Some(Some(p))) => return Poll::Ready(Some(JobEvent::Preview(p))),
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) => self.previews = None,
                Poll::Pending => break,
            }
        }
        let next = Pin::new(&mut self.events).poll_next(cx);
        if let Poll::Ready(Some(ev)) = &next {
            if ev.is_terminal() {
                self.ended = true;
                self.previews = None;
            }
        }
        next
    }
}

impl fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobEvents")
    }
}

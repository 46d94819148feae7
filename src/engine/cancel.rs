//! The stop flag a job shares with the engine: checked between denoising steps and between the
//! UNet's blocks, so a stopped job releases the engine quickly.
//!
//! Two strengths: `cancel` abandons the job (no result; our `DELETE /api/jobs/{id}` and a
//! client that goes away), `interrupt` is A1111's `/sdapi/v1/interrupt` (stop denoising now and
//! decode what the latents hold, so the request still answers with an image).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

const RUNNING: u8 = 0;
const INTERRUPTED: u8 = 1;
const CANCELLED: u8 = 2;

#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicU8>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Abandons the work; wins over an earlier interrupt.
    pub fn cancel(&self) {
        self.0.store(CANCELLED, Ordering::SeqCst);
    }

    /// Stops the work but keeps its result so far; no effect once cancelled.
    pub fn interrupt(&self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, INTERRUPTED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether the work must stop now, for either reason (what long loops check).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) != RUNNING
    }

    /// Stopped by an interrupt (and not cancelled): the caller wants what is done so far.
    pub fn is_interrupted(&self) -> bool {
        self.0.load(Ordering::SeqCst) == INTERRUPTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_wins_over_interrupt() {
        let t = CancelToken::new();
        assert!(!t.is_cancelled() && !t.is_interrupted());
        t.interrupt();
        assert!(t.is_cancelled() && t.is_interrupted());
        t.cancel();
        assert!(t.is_cancelled() && !t.is_interrupted());
        t.interrupt();
        assert!(!t.is_interrupted(), "a cancelled job stays cancelled");
    }
}

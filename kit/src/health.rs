//! Readiness of a daemon as a whole: starting, ready, draining.
//!
//! `/readyz` reports it so load balancers (and, for rtcd, the proxies) stop sending new work
//! while a daemon starts or drains; `/healthz` only says the process answers.

use std::sync::atomic::{AtomicU8, Ordering};

/// Lifecycle phase, shared by every interface that admits new work.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

/// One phase of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listeners are being set up; not ready.
    Starting,
    /// Accepting new work.
    Ready,
    /// Shutting down: existing work finishes, new work is refused.
    Draining,
}

impl Health {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Marks the daemon ready (no effect once draining).
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the daemon draining; irreversible.
    pub fn set_draining(&self) {
        self.0.store(2, Ordering::Release);
    }

    /// Whether new work is accepted.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready
    }
}

impl Phase {
    /// The word `/readyz` answers with: `starting`, `ready` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

//! Readiness: starting, ready, draining. `/readyz` reports it so a load balancer stops
//! sending new connections before a drain; `/healthz` only says the process answers.

use std::sync::atomic::{AtomicU8, Ordering};

/// The lifecycle phase, shared by every listener.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Health {
    /// Ready for new sessions (no effect once draining).
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Draining: new sessions are refused; irreversible.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// Whether new sessions are accepted.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire) == READY
    }

    /// `starting`, `ready` or `draining`.
    pub fn label(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            STARTING => "starting",
            READY => "ready",
            _ => "draining",
        }
    }
}

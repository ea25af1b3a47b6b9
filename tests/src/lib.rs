//! Harness for the workspace's end-to-end tests: start real daemons in-process (or as real
//! processes) on loopback with ephemeral ports and temporary data directories, real webrtc-rs
//! participants, and real Chromium pages.
//!
//! Modules are per component; the tests themselves live in `tests/e2e/` (the fast tier) and
//! `tests/long/` (the long tier), two test binaries sharing this library.

pub mod bridge;
pub mod browser;
pub mod coturn;
pub mod daemon;
pub mod firefox;
pub mod flow;
pub mod media;
pub mod netns;
pub mod oidc;
pub mod proxy;
pub mod relay;
pub mod shaping;
pub mod webhook;

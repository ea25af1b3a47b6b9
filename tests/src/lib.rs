//! Harness for the workspace's end-to-end tests: start real daemons in-process (or as real
//! processes) on loopback with ephemeral ports and temporary data directories, real webrtc-rs
//! participants, and real Chromium pages.
//!
//! Modules are per component; the tests themselves live in `tests/e2e/` (the fast tier) and
//! `tests/long/` (the long tier), two test binaries sharing this library.

pub mod bridge;
pub mod browser;
pub mod clip;
pub mod coturn;
pub mod daemon;
pub mod etcd;
pub mod firefox;
pub mod flow;
pub mod media;
pub mod mountns;
pub mod netns;
pub mod oidc;
pub mod proxy;
pub mod recording;
pub mod relay;
pub mod shaping;
pub mod webhook;

/// Prints the logs of the daemons a test runs in-process (rtcd-dev's rtcd and proxy) when
/// `RTCD_E2E_LOG` is set, as a `tracing` filter (e.g. `rtcd::sfu=debug`): what a developer
/// chasing a failing call needs, off by default (the suite's output stays readable). Once per
/// process; later calls do nothing.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("RTCD_E2E_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

//! End-to-end tests of the workspace, the long tier: real browsers (Chromium, Firefox ESR),
//! coturn, failover of killed processes across hosts, the load tool's smoke runs, the aiortc
//! interop clients, and calls or churn of a minute or more. Same rules as the fast tier (`tests/e2e/`): loopback or namespaces the
//! tests create, ephemeral ports, temporary data directories.
//!
//! The browser calls (`calls::`, `call_page::`, `devices::`, `turn::`'s calls and `weak_link::`) run one at a time: each runs up to three
//! browsers with fake 30 fps cameras, and on a 2-core machine CPU starvation would look like
//! media stalls. cargo-nextest's test group `browser-calls` (`.config/nextest.toml`) does it
//! without holding a test thread; with plain `cargo test`, run them with `--test-threads=1`
//! (scripts/test.sh does either).

mod browser;
mod call_page;
mod calls;
mod cluster;
mod devices;
mod e2ee;
mod failover;
mod interop;
mod leaks;
mod loadgen;
mod negotiation;
mod recording;
mod recording_crash;
mod recording_sync;
mod turn;
mod weak_link;

//! The service kit: what rtcd and the proxy both need to run as network daemons, written once.
//!
//! Both daemons depend on this crate and on `rtcd-proto`, and on nothing else of each other:
//! dependencies point one way (daemons -> kit), so the kit must never depend on `rtcd` or
//! `rtcd-proxy`, nor hold anything specific to media or to end-user signaling.
//!
//! Today it holds the configuration loader ([`config`]: defaults, TOML, environment), the HTTP
//! accept loop ([`listener`]: TLS, deadlines against slow clients,
//! connection caps, bounded drain), its TLS set-up ([`tls`]) and the rate limits ([`rate`]). It is meant to take, one
//! module each, the other pieces the two daemons still write twice (issue 16, "One service
//! kit"): logging set-up, signal
//! handling, health endpoints and the secret wrapper. When moving one in: give it a module
//! here, keep daemon-specific policy (setting names, limits, defaults) in the daemon and pass
//! it in, report errors with a `thiserror` type, and delete both old copies in the same change
//! (`duplicates` should no longer pair them).

pub mod config;
pub mod listener;
pub mod rate;
pub mod tls;

//! The service kit: what rtcd and the proxy both need to run as network daemons, written once.
//!
//! Both daemons depend on this crate and on `rtcd-proto`, and on nothing else of each other:
//! dependencies point one way (daemons -> kit), so the kit must never depend on `rtcd` or
//! `rtcd-proxy`, nor hold anything specific to media or to end-user signaling.
//!
//! It holds, one module each: the configuration loader ([`config`]: defaults, TOML,
//! environment), readiness ([`health`]), the HTTP accept loop ([`listener`]: deadlines against
//! slow clients, connection caps, bounded drain) and its TLS set-up ([`tls`]), log set-up
//! ([`logging`]), signal handling ([`signal`]), the async `main` ([`runtime`]), the rate limits ([`rate`]), the boxed queues sessions talk through ([`queue`]) and the secret
//! wrapper with its weakness rule ([`secret`]), and the cluster store several hosts agree through
//! ([`cluster`]: etcd, or one process's memory). What the two
//! daemons still write twice belongs here too (issue 16, "One service kit"). When moving one
//! in: give it a module here, keep daemon-specific policy (setting names, limits, defaults)
//! in the daemon and pass it in, report errors with a `thiserror` type, and delete both old
//! copies in the same change
//! (`duplicates` should no longer pair them).

pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod listener;
pub mod logging;
pub mod queue;
pub mod rate;
pub mod runtime;
pub mod secret;
pub mod signal;
pub mod tls;

//! The service kit: what rtcd and the proxy both need from a network service and would
//! otherwise write twice. The two daemons share nothing else but `proto`; this crate knows
//! nothing of media, signaling, tokens or the store.
//!
//! Today: [`listener`], the HTTP accept loop (TLS, timeouts against slow clients, connection
//! caps, bounded graceful drain). The config loader, logging set-up and signal handling are
//! still written per daemon and belong here next (issue 16, "One service kit").

pub mod listener;

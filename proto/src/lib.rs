//! The wire contract between signaling proxies (rtcd's clients, one per tenant platform) and
//! rtcd. Generated code lives here, and the [`rules`] both sides state (policy bounds, role
//! names, SDP directions), written once; conversions to domain types belong to the consumers
//! (`rtcd::signaling::convert`, the proxy's relay), so the contract never depends on either side.
//!
//! The `.proto` file (`proto/rtcd/v1/signaling.proto`) is the documentation of record: every
//! message and field is commented there, including why the RPC is one bidirectional stream per
//! session.

#![warn(missing_docs)]

pub mod codec;
pub mod rules;

/// Version 1 of the signaling contract (`rtcd.v1`). Breaking changes go to `v2` side by side.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("rtcd.v1");
}

//! End-to-end tests of the workspace: one test binary, one module per area, every test on
//! loopback with ephemeral ports and its own temporary data directory.

mod affiliation;
mod browser;
mod calls;
mod dev;
mod edges;
mod failover;
mod forwarding;
mod grpc_tls;
mod interop;
mod lifecycle;
mod loadgen;
mod lobby;
mod negotiation;
mod oidc;
mod process;
mod proxy_auth;
mod registry;
mod relay;
mod resume;
mod rooms;
mod rooms_rtcd;
mod rtcp;
mod signaling;
mod slow_clients;
mod turn;
mod webhooks;

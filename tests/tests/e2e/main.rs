//! End-to-end tests: one binary, one module per area.

mod forwarding;
mod grpc_tls;
mod signaling;

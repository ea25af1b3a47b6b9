//! End-to-end tests of the workspace, the fast tier: one module per area, every test on
//! loopback with ephemeral ports and its own temporary data directory, everything in-process
//! or a few short-lived processes, seconds a test. Real browsers, TURN servers, killed-host
//! failover, the load tool's runs, the aiortc clients and minute-long calls or churn are the
//! long tier (`tests/long/`).

mod affiliation;
mod cluster;
mod cluster_moderation;
mod cluster_store;
mod dev;
mod e2ee;
mod edges;
mod etcd_harness;
mod forwarding;
mod grpc_tls;
mod lifecycle;
mod lobby;
mod negotiation;
mod oidc;
mod process;
mod proxy_auth;
mod recording_api;
mod recording_codecs;
mod recording_disk;
mod registry;
mod relay;
mod resume;
mod rooms;
mod rooms_rtcd;
mod rtcp;
mod signaling;
mod slow_clients;
mod webhooks;

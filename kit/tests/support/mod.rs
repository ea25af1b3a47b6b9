//! Shared helpers for kit's integration tests.

pub mod etcd;

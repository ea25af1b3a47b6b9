//! Harness for the end-to-end tests (media: in-process rtcd + webrtc-rs participants over gRPC).

pub mod media;

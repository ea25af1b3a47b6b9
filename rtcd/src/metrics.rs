//! Prometheus metrics: one registry per running daemon, typed handles for each module.
//!
//! Names are prefixed `rtcd_`. Label values are always from small fixed sets (route names,
//! outcomes) so that an attacker cannot create series; per-client labels use registered
//! client IDs only, which an admin controls.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `rtcd_auth_attempts_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `basic`, `bearer`, `admin`, `login`.
    pub method: &'static str,
    /// `ok`, `cached`, `failed`, `rate_limited`, `busy`.
    pub outcome: &'static str,
}

/// Labels of `rtcd_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route (`/register`...) or `other`.
    pub route: &'static str,
    /// The status code.
    pub status: u16,
}

/// Every metric rtcd exports. Clone the `Arc` into whoever records.
pub struct Metrics {
    registry: Registry,
    /// Authentication attempts by method and outcome.
    pub auth_attempts: Family<AuthLabels, Counter>,
    /// Wall time of each bcrypt hash or verify, in seconds.
    pub bcrypt_seconds: Histogram,
    /// bcrypt computations running or waiting for a slot.
    pub bcrypt_pending: Gauge,
    /// Clients in the registry.
    pub clients_registered: Gauge,
    /// HTTP requests by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("rtcd");
        let auth_attempts = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_attempts",
            "Authentication attempts by method and outcome",
            auth_attempts.clone(),
        );
        let bcrypt_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "bcrypt_seconds",
            "Time spent in one bcrypt hash or verify",
            bcrypt_seconds.clone(),
        );
        let bcrypt_pending = Gauge::default();
        registry.register(
            "bcrypt_pending",
            "bcrypt computations running or queued",
            bcrypt_pending.clone(),
        );
        let clients_registered = Gauge::default();
        registry.register(
            "clients_registered",
            "Clients in the registry",
            clients_registered.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP API requests by route and status",
            http_requests.clone(),
        );
        Arc::new(Self {
            registry,
            auth_attempts,
            bcrypt_seconds,
            bcrypt_pending,
            clients_registered,
            http_requests,
        })
    }

    /// Records one authentication attempt.
    pub fn auth(&self, method: &'static str, outcome: &'static str) {
        self.auth_attempts
            .get_or_create(&AuthLabels { method, outcome })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

//! Prometheus metrics (`proxy_*`). Label values come from fixed sets (message types, close
//! labels, failure reasons), never from client input, so clients cannot create series.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `proxy_messages_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// `in` (client to proxy) or `out`.
    pub direction: &'static str,
    /// The message `type`, or `invalid`.
    pub kind: &'static str,
}

/// A single `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A stable snake_case label.
    pub reason: &'static str,
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Joined (authenticated) sessions.
    pub sessions: Gauge,
    /// Messages by direction and type.
    pub messages: Family<MessageLabels, Counter>,
    /// Token rejections by reason.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Closes by reason.
    pub closes: Family<ReasonLabel, Counter>,
    /// Time to open a session on the media server (placement, login if needed, stream, Joined).
    pub relay_join_seconds: Histogram,
    /// Client offer relayed -> media server answer delivered: what the relay adds to a
    /// negotiation, media server included.
    pub relay_answer_seconds: Histogram,
    /// Media server hosts by health (`ready`, `unready`, `unknown`), as of the last scrape.
    pub rtcd_hosts: Family<HealthLabel, Gauge>,
    /// Each media server host's load level as this replica's placement sees it (0 idle .. 3
    /// busy, 4 at capacity: no new rooms), as of the last scrape. Replicas that disagree
    /// place new rooms differently.
    pub rtcd_host_load_level: Family<HostLabel, Gauge>,
    /// Joins placed in cluster mode by outcome (copied from the relay at each scrape).
    pub cluster_placements: Family<OutcomeLabel, Counter>,
    /// How long the copy of the hosts' announcements has not followed the cluster store.
    pub cluster_hosts_stale_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Connections the HTTP listeners closed or answered 408 to protect themselves.
    pub http_connections_cut: rtcd_kit::listener::Cuts,
    /// Tasks alive on the proxy's runtime, refreshed on every scrape (a leak shows as a count
    /// that keeps climbing while sessions come and go).
    pub runtime_alive_tasks: Gauge,
    /// Affiliation hook decisions by outcome (`ok`, `lowered`, `denied`, `error`, `cached`):
    /// `error` climbing means joins are refused (or admitted unchecked) because of the hook.
    pub affiliation_checks: Family<OutcomeLabel, Counter>,
}

/// A single `outcome` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// A stable snake_case label from a fixed set.
    pub outcome: &'static str,
}

/// Labels of `proxy_rtcd_host_load_level`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    /// The host's address as the proxy discovered it.
    pub host: String,
}

/// Labels of `proxy_rtcd_hosts`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    /// `ready`, `unready` or `unknown`.
    pub health: &'static str,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("proxy");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted",
            connections_total.clone(),
        );
        let sessions = Gauge::default();
        registry.register("sessions", "Joined sessions", sessions.clone());
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Signaling messages by direction and type",
            messages.clone(),
        );
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Rejected tokens by reason",
            auth_failures.clone(),
        );
        let closes = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "closes",
            "Connections closed by the proxy, by reason",
            closes.clone(),
        );
        // 1 ms .. ~16 s: joins include a login on a cold host; answers include rtcd's gathering.
        let relay_join_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "relay_join_seconds",
            "Time to open a session on the media server",
            relay_join_seconds.clone(),
        );
        let relay_answer_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "relay_answer_seconds",
            "Client offer relayed to the media server's answer delivered",
            relay_answer_seconds.clone(),
        );
        let rtcd_hosts = Family::<HealthLabel, Gauge>::default();
        registry.register(
            "rtcd_hosts",
            "Media server hosts by health",
            rtcd_hosts.clone(),
        );
        let rtcd_host_load_level = Family::<HostLabel, Gauge>::default();
        registry.register(
            "rtcd_host_load_level",
            "Media server hosts' load levels as placement sees them (4 = at capacity)",
            rtcd_host_load_level.clone(),
        );
        let cluster_placements = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "cluster_placements",
            "Joins placed through the cluster store's room claims, by outcome",
            cluster_placements.clone(),
        );
        let cluster_hosts_stale_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cluster_hosts_stale_seconds",
            "How long the copy of the hosts' announcements has not followed the cluster store",
            cluster_hosts_stale_seconds.clone(),
        );
        let http_connections_cut = rtcd_kit::listener::Cuts::default();
        http_connections_cut.register(&mut registry);
        let runtime_alive_tasks = Gauge::default();
        registry.register(
            "runtime_alive_tasks",
            "Tokio tasks alive in the proxy's runtime (refreshed on scrape)",
            runtime_alive_tasks.clone(),
        );
        let affiliation_checks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "affiliation_checks",
            "Join-time affiliation hook decisions by outcome",
            affiliation_checks.clone(),
        );
        Arc::new(Self {
            affiliation_checks,
            http_connections_cut,
            runtime_alive_tasks,
            registry,
            relay_join_seconds,
            relay_answer_seconds,
            rtcd_hosts,
            rtcd_host_load_level,
            cluster_placements,
            cluster_hosts_stale_seconds,
            connections,
            connections_total,
            sessions,
            messages,
            auth_failures,
            closes,
        })
    }

    /// Counts a message.
    pub fn message(&self, direction: &'static str, kind: &'static str) {
        self.messages
            .get_or_create(&MessageLabels { direction, kind })
            .inc();
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        // Outside a runtime (unit tests) the gauge keeps its last value.
        if let Some(alive) = rtcd_kit::runtime::alive_tasks() {
            self.runtime_alive_tasks.set(alive);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

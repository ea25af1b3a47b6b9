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

/// Labels of `rtcd_declared_client_changes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeclaredChangeLabels {
    /// `created`, `key_rotated`, `adopted`, `removed`.
    pub change: &'static str,
}

/// Labels of `rtcd_declared_reconciliations_total` and `rtcd_lobby_waits_ended_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error` (the file was not applied: see the log); for
    /// `rtcd_lobby_waits_ended_total`, how the wait ended.
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

/// Labels carrying only the tenant (registered client ID, admin-controlled cardinality).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// The registered client ID.
    pub client_id: String,
}

/// Labels of per-kind media metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The registered client ID.
    pub client_id: String,
    /// `audio`, `video` or `screen`.
    pub kind: &'static str,
}

/// Labels of `rtcd_sfu_dropped_packets_total` and `rtcd_sfu_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The registered client ID.
    pub client_id: String,
    /// A fixed reason or error type (`muted`, `not_permitted`, `invalid_argument`...).
    pub reason: &'static str,
}

/// Labels of the adaptive video counters (`rtcd_sfu_track_pauses_total`,
/// `rtcd_sfu_layer_changes_total`, `rtcd_sfu_probes_total`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdaptiveLabels {
    /// The registered client ID.
    pub client_id: String,
    /// Pauses: `bandwidth` or `hidden`. Layer changes: `up` or `down`. Probes: `proved` or
    /// `failed` (RTX copies), `trial_proved` or `trial_failed` (a paused track resumed on trial).
    pub what: &'static str,
}

/// Labels of `rtcd_media_dropped_datagrams_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `worker_behind` (the owning media worker's queue was full: the host is out of CPU),
    /// `socket_full` (the kernel dropped it: the port's receive buffer was full because the
    /// worker that reads it was behind, the same cause) or `no_session` (nothing on the port
    /// matched the datagram: stale peers, scans).
    pub reason: &'static str,
}

/// Labels of `rtcd_webhook_events_dropped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookDropLabels {
    /// `queue_full` (the SFU's queue to the dispatcher), `pending_full`
    /// (`webhooks.max_pending_events`) or `unconfigured` (the tenant has no webhook URLs).
    pub reason: &'static str,
}

/// Labels of `rtcd_webhook_deliveries_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookDeliveryLabels {
    /// The registered client ID.
    pub client_id: String,
    /// `delivered` (2xx), `retried` (a failed attempt that will be retried) or `failed`
    /// (given up after `webhooks.max_attempts`).
    pub outcome: &'static str,
}

/// The webhook dispatcher's metrics.
pub struct WebhookMetrics {
    /// Events not delivered on purpose, by reason.
    pub events_dropped: Family<WebhookDropLabels, Counter>,
    /// Delivery attempts by client and outcome.
    pub deliveries: Family<WebhookDeliveryLabels, Counter>,
    /// Deliveries (event x URL) queued or in flight.
    pub pending: Gauge,
    /// From an event reaching the dispatcher to its 2xx, in seconds (retries included).
    pub delivery_seconds: Histogram,
}

impl WebhookMetrics {
    /// Counts one event dropped for `reason`.
    pub fn dropped(&self, reason: &'static str) {
        self.events_dropped
            .get_or_create(&WebhookDropLabels { reason })
            .inc();
    }

    /// Counts one delivery attempt's `outcome` for `client_id`.
    pub fn delivery(&self, client_id: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&WebhookDeliveryLabels {
                client_id: client_id.to_owned(),
                outcome,
            })
            .inc();
    }

    /// How many events were dropped for `reason` so far (tests, diagnostics).
    pub fn dropped_count(&self, reason: &'static str) -> u64 {
        self.events_dropped
            .get_or_create(&WebhookDropLabels { reason })
            .get()
    }

    /// How many attempts of `client_id` ended in `outcome` so far (tests, diagnostics).
    pub fn delivery_count(&self, client_id: &str, outcome: &'static str) -> u64 {
        self.deliveries
            .get_or_create(&WebhookDeliveryLabels {
                client_id: client_id.to_owned(),
                outcome,
            })
            .get()
    }
}

/// The SFU's and signaling's metrics, all labelled by client ID.
pub struct SfuMetrics {
    /// Live sessions.
    pub sessions: Family<ClientLabels, Gauge>,
    /// Live calls.
    pub calls: Family<ClientLabels, Gauge>,
    /// Published tracks being received, by kind.
    pub tracks_in: Family<KindLabels, Gauge>,
    /// Tracks being sent to subscribers, by kind.
    pub tracks_out: Family<KindLabels, Gauge>,
    /// RTP packets written to subscribers (one per subscriber).
    pub forwarded_packets: Family<KindLabels, Counter>,
    /// RTP payload bytes written to subscribers.
    pub forwarded_bytes: Family<KindLabels, Counter>,
    /// Packets not forwarded, by reason.
    pub dropped_packets: Family<ReasonLabels, Counter>,
    /// Keyframe requests (PLI) sent to publishers.
    pub pli_sent: Family<ClientLabels, Counter>,
    /// Packets subscribers NACKed after they had left the retransmission buffer: each such
    /// NACK costs a keyframe, so a steady rise says `rtc.nack_buffer_ms` is too short for the
    /// subscribers' round trips.
    pub nack_unrepairable: Family<ClientLabels, Counter>,
    /// Errors by type (signaling and media).
    pub errors: Family<ReasonLabels, Counter>,
    /// Time from peer connection creation to `connected`, in seconds.
    pub connect_seconds: Histogram,
    /// Video tracks paused towards a subscriber, by why.
    pub track_pauses: Family<AdaptiveLabels, Counter>,
    /// A subscriber's allowed layer of a track raised or lowered (resumes and pauses included).
    pub layer_changes: Family<AdaptiveLabels, Counter>,
    /// Probes of subscribers' links, by outcome.
    pub probes: Family<AdaptiveLabels, Counter>,
    /// RTX copies of video sent to subscribers to probe their links: what probing costs, in
    /// packets beside `forwarded_packets`.
    pub probe_packets: Family<ClientLabels, Counter>,
    /// Dynacast messages to publishers (`layers_wanted`).
    pub layers_wanted: Family<ClientLabels, Counter>,
    /// Subscribers' bandwidth estimates at each allocation, in bits per second.
    pub subscriber_estimate_bits: Histogram,
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
    /// Changes applied from the declared-clients file, by kind: how an operator sees that a
    /// rotation or removal reached a host.
    pub declared_changes: Family<DeclaredChangeLabels, Counter>,
    /// Applications of the declared-clients file (start and SIGHUP), by outcome: alert on
    /// `error`, a reload that left the registry as it was.
    pub declared_reconciliations: Family<OutcomeLabels, Counter>,
    /// HTTP requests by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Connections the HTTP listeners closed or answered 408 to protect themselves.
    pub http_connections_cut: rtcd_kit::listener::Cuts,
    /// The SFU's metrics.
    pub sfu: SfuMetrics,
    /// Datagrams on the media port dropped before a session saw them, by reason (no client
    /// label: the receiving worker drops them before it knows whose they are).
    pub media_dropped: Family<DropLabels, Counter>,
    /// From the start of a media worker's round (when the packets it forwards are written) to
    /// the end of its flush to the socket, in seconds: how late a busy host sends. The
    /// estimators towards subscribers take the flush's end as those packets' departure
    /// (`engine::bwe::Departures`), so the lag is not read as queueing on the path.
    pub media_send_lag: Histogram,
    /// The webhook dispatcher's metrics.
    pub webhook: WebhookMetrics,
    /// Joins refused because they would open a new room on a host at its capacity
    /// (`rtc.max_sessions`): proxies placed those rooms elsewhere. Steady growth means the
    /// fleet needs another host.
    pub new_rooms_refused: Counter,
    /// Rooms being recorded on this host now.
    pub recordings_active: Gauge,
    /// Packets of recorded tracks left out of their recordings because the writer could not
    /// keep up (a full queue: the disk is too slow) or they never arrived; counted when a
    /// recording stops. Growth from a full queue means the recordings' disk is too slow.
    pub recording_dropped_packets: Counter,
    /// Sessions waiting to enter a room (wait-for-host or the lobby): people a moderator or a
    /// host has not let in yet.
    pub lobby_waiting: Gauge,
    /// How waits ended, by outcome (`admitted`, `denied`, `left`, `timeout`, `refused`): many
    /// `timeout`s mean rooms whose hosts do not come or lobbies nobody watches.
    pub lobby_ended: Family<OutcomeLabels, Counter>,
    /// Sessions parked: their proxy's stream broke, their media flows on, and a proxy may
    /// resume them within `rtc.resume_grace_seconds`. A spike is a proxy that died.
    pub sessions_parked: Gauge,
    /// How parked sessions ended their wait (`resumed`, `expired`, `ended`, `overflow`) and
    /// resumptions refused (`refused`): many `expired` mean clients that do not come back
    /// within the grace period (or proxies that do not resume).
    pub session_resumes: Family<OutcomeLabels, Counter>,
    /// 1 while this host holds its lease in the cluster store and its announcement is
    /// written (cluster mode only; 0 while the store is out of reach or before the first lease).
    pub cluster_announced: Gauge,
    /// Lease grants, renewals and announcement writes that failed (the store out of reach).
    pub cluster_lease_failures: Counter,
    /// Placement claims of ended rooms this host released.
    pub cluster_claims_released: Counter,
    /// Placement claims naming this host, as its last claim sweep counted them (every three
    /// lease TTLs; cluster mode only).
    pub cluster_claims_held: Gauge,
    /// Wall time of each call to the cluster store (etcd), failover and retries included.
    pub cluster_store_seconds: Histogram,
    /// Seconds this host's copy of the cluster's bans, revocations and room policies has not
    /// followed the store (0 while it does; cluster mode only). Past `cluster.stale_limit_s`
    /// new joins are refused.
    pub cluster_moderation_stale_seconds: Gauge,
    /// Joins refused because the copy of bans and revocations was too old to check them
    /// against (fail closed; the store out of reach of this host).
    pub cluster_joins_unchecked: Counter,
    /// Tasks alive on the runtime that renders the metrics, refreshed on every scrape: a
    /// count that keeps climbing while sessions come and go is a leak (the e2e leak check
    /// asserts it returns to its baseline).
    pub runtime_alive_tasks: Gauge,
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
        let declared_changes = Family::<DeclaredChangeLabels, Counter>::default();
        registry.register(
            "declared_client_changes",
            "Changes applied from the declared-clients file, by kind",
            declared_changes.clone(),
        );
        let declared_reconciliations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "declared_reconciliations",
            "Applications of the declared-clients file, by outcome",
            declared_reconciliations.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP API requests by route and status",
            http_requests.clone(),
        );
        let http_connections_cut = rtcd_kit::listener::Cuts::default();
        http_connections_cut.register(&mut registry);
        let sfu = SfuMetrics {
            sessions: Family::default(),
            calls: Family::default(),
            tracks_in: Family::default(),
            tracks_out: Family::default(),
            forwarded_packets: Family::default(),
            forwarded_bytes: Family::default(),
            dropped_packets: Family::default(),
            pli_sent: Family::default(),
            nack_unrepairable: Family::default(),
            errors: Family::default(),
            connect_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            track_pauses: Family::default(),
            layer_changes: Family::default(),
            probes: Family::default(),
            probe_packets: Family::default(),
            layers_wanted: Family::default(),
            // 50 kbit/s to 6.4 Mbit/s.
            subscriber_estimate_bits: Histogram::new(exponential_buckets(50_000.0, 2.0, 8)),
        };
        let sub = registry.sub_registry_with_prefix("sfu");
        sub.register("sessions", "Live sessions", sfu.sessions.clone());
        sub.register("calls", "Live calls", sfu.calls.clone());
        sub.register(
            "tracks_in",
            "Published tracks received, by kind",
            sfu.tracks_in.clone(),
        );
        sub.register(
            "tracks_out",
            "Tracks sent to subscribers, by kind",
            sfu.tracks_out.clone(),
        );
        sub.register(
            "forwarded_packets",
            "RTP packets forwarded to subscribers",
            sfu.forwarded_packets.clone(),
        );
        sub.register(
            "forwarded_bytes",
            "RTP payload bytes forwarded to subscribers",
            sfu.forwarded_bytes.clone(),
        );
        sub.register(
            "dropped_packets",
            "RTP packets not forwarded, by reason",
            sfu.dropped_packets.clone(),
        );
        sub.register(
            "pli_sent",
            "Keyframe requests sent to publishers",
            sfu.pli_sent.clone(),
        );
        sub.register(
            "nack_unrepairable",
            "Packets subscribers NACKed that had left the retransmission buffer",
            sfu.nack_unrepairable.clone(),
        );
        sub.register(
            "errors",
            "Signaling and media errors by type",
            sfu.errors.clone(),
        );
        sub.register(
            "connect_seconds",
            "Peer connection creation to connected",
            sfu.connect_seconds.clone(),
        );
        sub.register(
            "track_pauses",
            "Video tracks paused towards a subscriber, by reason",
            sfu.track_pauses.clone(),
        );
        sub.register(
            "layer_changes",
            "Subscribers' allowed layers raised or lowered",
            sfu.layer_changes.clone(),
        );
        sub.register(
            "probes",
            "Probes of subscribers' links, by outcome",
            sfu.probes.clone(),
        );
        sub.register(
            "probe_packets",
            "RTX copies sent to probe subscribers' links",
            sfu.probe_packets.clone(),
        );
        sub.register(
            "layers_wanted",
            "Dynacast messages telling publishers which layers to send",
            sfu.layers_wanted.clone(),
        );
        sub.register(
            "subscriber_estimate_bits",
            "Subscribers' bandwidth estimates at each allocation (bits per second)",
            sfu.subscriber_estimate_bits.clone(),
        );
        let media_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "media_dropped_datagrams",
            "Datagrams on the media port dropped before a session saw them, by reason",
            media_dropped.clone(),
        );
        let media_send_lag = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register(
            "media_send_lag_seconds",
            "A media worker's round: from its start to the end of its flush to the socket",
            media_send_lag.clone(),
        );
        // Registered at the top level (not a sub-registry): the e2e docs check derives names
        // from these calls and only knows the `sfu` sub-registry.
        let webhook = WebhookMetrics {
            events_dropped: Family::default(),
            deliveries: Family::default(),
            pending: Gauge::default(),
            delivery_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        };
        registry.register(
            "webhook_events_dropped",
            "Room events not delivered on purpose, by reason",
            webhook.events_dropped.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by client and outcome",
            webhook.deliveries.clone(),
        );
        registry.register(
            "webhook_pending",
            "Webhook deliveries (event x URL) queued or in flight",
            webhook.pending.clone(),
        );
        registry.register(
            "webhook_delivery_seconds",
            "Room event accepted to its 2xx, retries included",
            webhook.delivery_seconds.clone(),
        );
        let recordings_active = Gauge::default();
        registry.register(
            "recordings_active",
            "Rooms being recorded on this host",
            recordings_active.clone(),
        );
        let recording_dropped_packets = Counter::default();
        registry.register(
            "recording_dropped_packets",
            "Packets of recorded tracks left out of their recordings (counted at stop)",
            recording_dropped_packets.clone(),
        );
        let new_rooms_refused = Counter::default();
        registry.register(
            "new_rooms_refused",
            "Joins refused because they would open a new room on a host at capacity",
            new_rooms_refused.clone(),
        );
        let lobby_waiting = Gauge::default();
        registry.register(
            "lobby_waiting",
            "Sessions waiting to enter a room (wait-for-host or lobby)",
            lobby_waiting.clone(),
        );
        let lobby_ended = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "lobby_waits_ended",
            "Waits to enter a room that ended, by outcome",
            lobby_ended.clone(),
        );
        let sessions_parked = Gauge::default();
        registry.register(
            "sessions_parked",
            "Sessions whose proxy stream broke, kept for a resume",
            sessions_parked.clone(),
        );
        let session_resumes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "session_resumes",
            "Parked sessions by how their wait ended, and refused resumes",
            session_resumes.clone(),
        );
        let cluster_announced = Gauge::default();
        registry.register(
            "cluster_announced",
            "1 while this host is announced in the cluster store under a live lease",
            cluster_announced.clone(),
        );
        let cluster_lease_failures = Counter::default();
        registry.register(
            "cluster_lease_failures",
            "Failed lease grants, renewals and announcement writes in the cluster store",
            cluster_lease_failures.clone(),
        );
        let cluster_claims_released = Counter::default();
        registry.register(
            "cluster_claims_released",
            "Placement claims of ended rooms released by this host",
            cluster_claims_released.clone(),
        );
        let cluster_claims_held = Gauge::default();
        registry.register(
            "cluster_claims_held",
            "Placement claims naming this host at its last claim sweep",
            cluster_claims_held.clone(),
        );
        let cluster_store_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        registry.register(
            "cluster_store_seconds",
            "Wall time of each call to the cluster store, failover and retries included",
            cluster_store_seconds.clone(),
        );
        let cluster_moderation_stale_seconds = Gauge::default();
        registry.register(
            "cluster_moderation_stale_seconds",
            "Seconds this host's copy of bans, revocations and room policies has not followed the cluster store",
            cluster_moderation_stale_seconds.clone(),
        );
        let cluster_joins_unchecked = Counter::default();
        registry.register(
            "cluster_joins_unchecked",
            "Joins refused because the copy of bans and revocations was too old to check them",
            cluster_joins_unchecked.clone(),
        );
        let runtime_alive_tasks = Gauge::default();
        registry.register(
            "runtime_alive_tasks",
            "Tokio tasks alive in rtcd's runtime (refreshed on scrape)",
            runtime_alive_tasks.clone(),
        );
        Arc::new(Self {
            recordings_active,
            recording_dropped_packets,
            new_rooms_refused,
            lobby_waiting,
            lobby_ended,
            sessions_parked,
            session_resumes,
            cluster_announced,
            cluster_lease_failures,
            cluster_claims_released,
            cluster_moderation_stale_seconds,
            cluster_joins_unchecked,
            cluster_claims_held,
            cluster_store_seconds,
            sfu,
            webhook,
            media_dropped,
            media_send_lag,
            runtime_alive_tasks,
            registry,
            auth_attempts,
            bcrypt_seconds,
            bcrypt_pending,
            clients_registered,
            declared_changes,
            declared_reconciliations,
            http_requests,
            http_connections_cut,
        })
    }

    /// Records one authentication attempt.
    pub fn auth(&self, method: &'static str, outcome: &'static str) {
        self.auth_attempts
            .get_or_create(&AuthLabels { method, outcome })
            .inc();
    }

    /// The registry in Prometheus text format (refreshing the runtime gauges first).
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

//! Configuration: one typed tree for the whole daemon, loaded from TOML, overridden by
//! `RTCD_<SECTION>_<KEY>` environment variables, validated before anything binds a port.
//!
//! The TOML layout follows Mattermost rtcd's (`[api.http]`, `[api.security]`, `[store]`,
//! `[logger]`) so operators can carry their knowledge over. Environment names are derived
//! mechanically from the TOML path: `api.security.admin_secret_key` is
//! `RTCD_API_SECURITY_ADMIN_SECRET_KEY`. The environment is passed in as a map (never read
//! from inside this module) so tests can run in parallel without touching the process env.
//!
//! Every value has a default; `deploy/rtcd.sample.toml` documents each key and a test keeps
//! that file parseable and complete.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "RTCD_";

/// Everything rtcd can be told at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP API (admin, registration, health) and its security settings.
    pub api: ApiConfig,
    /// Where the client registry lives on disk.
    pub store: StoreConfig,
    /// `[clients]`: clients declared from a file and reconciled into the registry at start.
    pub clients: ClientsConfig,
    /// Log level and format.
    pub logger: LoggerConfig,
    /// `[grpc]`: the signaling listener proxies connect to.
    pub grpc: GrpcConfig,
    /// `[rtc]`: the SFU's ICE transport and limits.
    pub rtc: RtcConfig,
    /// `[webhooks]`: delivery of room events to the tenants' endpoints.
    pub webhooks: WebhooksConfig,
    /// `[recording]`: where and how rooms are recorded (off unless enabled).
    pub recording: RecordingSettings,
    /// `[cluster]`: the etcd cluster this host announces itself in (off when empty).
    pub cluster: rtcd_kit::cluster::Settings,
}

/// `[webhooks]`: how room events reach the URLs each tenant configures (through its proxy,
/// `Rooms.ConfigureWebhooks`; the URLs and secrets themselves are never in this file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Whether this host delivers webhooks at all; when off, `ConfigureWebhooks` is refused
    /// and the SFU emits no events.
    pub enabled: bool,
    /// Lets tenants' URLs name loopback, private, link-local and CGNAT addresses. Off in
    /// production: a tenant could otherwise make rtcd call the operator's internal services.
    pub allow_private_addresses: bool,
    /// Events the SFU may queue for the dispatcher; when full, new events are dropped and
    /// counted (`reason="queue_full"`) rather than slowing media.
    pub queue_capacity: usize,
    /// Deliveries (event x URL) waiting or in flight, across all rooms; beyond it new ones
    /// are dropped and counted (`reason="pending_full"`). Bounds memory while a receiver is down.
    pub max_pending_events: usize,
    /// Attempts per event and URL before it is given up (counted, logged).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled on each further one (with jitter).
    pub initial_backoff_ms: u64,
    /// Longest wait between two attempts.
    pub max_backoff_seconds: u64,
    /// One attempt (connect, request, response) must complete within this.
    pub timeout_seconds: u64,
    /// Requests in flight at once across all rooms (one per room and URL at most).
    pub max_concurrency: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_private_addresses: false,
            queue_capacity: 10_000,
            max_pending_events: 100_000,
            max_attempts: 10,
            initial_backoff_ms: 500,
            max_backoff_seconds: 30,
            timeout_seconds: 5,
            max_concurrency: 32,
        }
    }
}

impl WebhooksConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value, max) in [
            ("webhooks.queue_capacity", self.queue_capacity, 1_000_000),
            (
                "webhooks.max_pending_events",
                self.max_pending_events,
                10_000_000,
            ),
            ("webhooks.max_concurrency", self.max_concurrency, 1024),
        ] {
            if !(1..=max).contains(&value) {
                return Err(invalid(key, format!("must be between 1 and {max}")));
            }
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid(
                "webhooks.max_attempts",
                "must be between 1 and 100".into(),
            ));
        }
        if !(1..=60_000).contains(&self.initial_backoff_ms) {
            return Err(invalid(
                "webhooks.initial_backoff_ms",
                "must be between 1 and 60000".into(),
            ));
        }
        if !(1..=3600).contains(&self.max_backoff_seconds)
            || self.max_backoff_seconds * 1000 < self.initial_backoff_ms
        {
            return Err(invalid(
                "webhooks.max_backoff_seconds",
                "must be between 1 and 3600 and at least initial_backoff_ms".into(),
            ));
        }
        if !(1..=60).contains(&self.timeout_seconds) {
            return Err(invalid(
                "webhooks.timeout_seconds",
                "must be between 1 and 60".into(),
            ));
        }
        Ok(())
    }
}

/// `[recording]`: per-track recordings of rooms on this host's disk (`docs/recording.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingSettings {
    /// Whether rooms may be recorded here. Off by default: recordings are personal data, and
    /// a host must be given a disk for them on purpose.
    pub enabled: bool,
    /// Where recordings are written (created with mode 0700; required when enabled). One
    /// directory per tenant, one per recording inside it.
    pub directory: String,
    /// A recording is not started, and one in progress stops cleanly, when the directory's
    /// filesystem has less free space than this.
    pub min_free_bytes: u64,
    /// A recording stops by itself after this long.
    pub max_duration_seconds: u64,
    /// Packets queued per recording for its writer thread; when the disk cannot keep up the
    /// newest are dropped (the files skip to the next keyframe, the manifest says
    /// `degraded`), never the call's media.
    pub queue_packets: usize,
}

impl Default for RecordingSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            directory: String::new(),
            min_free_bytes: 1 << 30,
            max_duration_seconds: 4 * 3600,
            queue_packets: 8192,
        }
    }
}

impl RecordingSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.directory.trim().is_empty() {
            return Err(invalid(
                "recording.directory",
                "must be set when recording is enabled".into(),
            ));
        }
        if !(60..=7 * 24 * 3600).contains(&self.max_duration_seconds) {
            return Err(invalid(
                "recording.max_duration_seconds",
                "must be between 60 and 604800".into(),
            ));
        }
        if !(256..=1_000_000).contains(&self.queue_packets) {
            return Err(invalid(
                "recording.queue_packets",
                "must be between 256 and 1000000".into(),
            ));
        }
        Ok(())
    }

    /// The recorder's settings.
    pub fn recorder(&self) -> crate::recording::RecordingConfig {
        crate::recording::RecordingConfig {
            directory: self.directory.clone().into(),
            min_free_bytes: self.min_free_bytes,
            max_duration: std::time::Duration::from_secs(self.max_duration_seconds),
            queue_packets: self.queue_packets,
        }
    }
}

/// `[grpc]`: the signaling service's own listener (separate from the HTTP API so that it can be
/// exposed to proxies while the admin API stays internal).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// `host:port` or `:port`. Loopback by default, like the HTTP API.
    pub listen_address: String,
    /// PEM certificate chain; with `tls_key_file` it turns on TLS (rustls).
    pub tls_cert_file: String,
    /// PEM private key matching `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM CA bundle; when set (TLS required), proxies must present a client certificate it signed.
    pub tls_client_ca_file: String,
    /// Largest gRPC message accepted, in bytes (an SDP plus framing).
    pub max_message_bytes: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:8047".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            max_message_bytes: 256 * 1024,
        }
    }
}

/// `[rtc]`: how the SFU reaches peers, and what one tenant may consume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// The IP the single ICE UDP socket binds to.
    pub ice_address_udp: String,
    /// The single UDP port every session shares (UDP mux); 0 = ephemeral (tests).
    pub ice_port_udp: u16,
    /// Also accept ICE over TCP (RFC 6544, passive) on this port of `ice_address_udp`, for
    /// clients whose networks block UDP. -1 = off (the default); 0 = ephemeral (tests).
    pub ice_port_tcp: i32,
    /// Public IPs advertised instead of the interface addresses (NAT 1:1), comma-separated.
    pub ice_host_override: String,
    /// Network interfaces whose addresses are advertised; empty = all.
    pub ice_interfaces: Vec<String>,
    /// Advertise loopback candidates (only for tests and single-host development).
    pub include_loopback_candidates: bool,
    /// Receive and send buffer of the shared UDP socket, in bytes (0 = the kernel default).
    /// Every session's media arrives on this one socket: with the default (~208 KiB) a burst of
    /// video frames overflows it long before the CPU is busy. The kernel caps it at
    /// `net.core.rmem_max` / `wmem_max`; rtcd warns when it got less.
    pub udp_buffer_bytes: usize,
    /// While the shared UDP port takes 8,000 datagrams a second or more, how long (in
    /// microseconds, 0..5000; 0 = never) the worker that reads it waits after a read that
    /// drained it before the next, so a batch gathers: fewer wake-ups and system calls per
    /// packet (one-to-one calls about 13 % cheaper at 1000, docs/benchmarks.md) for at most
    /// that much latency per packet (0.7-1 ms more at the median), only on a busy host.
    pub read_coalesce_us: u64,
    /// Packets kept per published video track, once for all its subscribers, to answer their
    /// NACKs (rounded up to a power of two, 64..32768); packets older than `nack_buffer_ms` are
    /// dropped in any case, so memory follows the bitrate.
    pub nack_buffer_packets: usize,
    /// How long a forwarded video packet stays answerable, in milliseconds (100..5000). The
    /// retransmission buffers are most of a publishing participant's memory. A loss older than
    /// this is repaired by a keyframe, which rtcd asks the publisher for as soon as a NACK names
    /// a packet it no longer has.
    pub nack_buffer_ms: u64,
    /// Sessions one call may hold.
    pub max_sessions_per_call: usize,
    /// Sessions one client (tenant) may hold across all its calls.
    pub max_sessions_per_client: usize,
    /// This host's capacity, in sessions (0 = none): at or above it, joins that would open a
    /// new room are refused (RESOURCE_EXHAUSTED "host capacity"), so proxies place new rooms
    /// on other hosts, while rooms already here keep taking joins (up to the per-call limit).
    /// `/system` reports the fraction used (`load`), which proxies weight placement by.
    pub max_sessions: usize,
    /// Tracks one session may publish.
    pub max_tracks_per_session: usize,
    /// Largest SDP accepted, in bytes.
    pub max_sdp_bytes: usize,
    /// Shortest interval between two keyframe requests sent for one layer of a published track
    /// (a request inside it waits for the keyframe asked for, or for the interval's end when
    /// that keyframe came before it: `sfu::keyframes`).
    pub keyframe_request_interval_ms: u64,
    /// Whether each subscriber's bandwidth estimate decides which simulcast layer of each video
    /// it gets, and pauses video that does not fit (docs/adaptive-video.md). On by default: a
    /// participant on a weak link otherwise loses its video for tens of seconds and its audio
    /// with it. Off, every subscriber gets the best layer sending, and no estimate is made
    /// towards subscribers (nothing would read it: `PeerSettings::estimation`), which saves
    /// about 0.8 us of work per packet sent.
    pub adaptive_video: bool,
    /// Silence on a session's connection after which it counts as disconnected (it may still
    /// recover; nothing is torn down yet). Silence: no answered connectivity check, no media,
    /// no RTCP (late checks alone never end a session whose media flows).
    pub ice_disconnected_timeout_ms: u64,
    /// Further silence after "disconnected" before the connection counts as failed: the session
    /// is then closed and its tracks withdrawn. Shorter = dead peers freed sooner, but a
    /// network hiccup of that length ends the call for that user.
    pub ice_failed_timeout_ms: u64,
    /// On shutdown, how long calls may continue before they are closed with reason "shutdown".
    pub drain_timeout_seconds: u64,
    /// The RTP packets per second this host should forward at most (0 = not counted): its
    /// share in use is part of the load proxies weight placement by (`GET /system`
    /// `forwarding_used`), so hosts forwarding more get fewer new rooms. Never a hard limit.
    pub max_forwarded_packets_per_second: u64,
    /// On shutdown, whether running calls stay until they end or the drain timeout (`finish`),
    /// or are moved to other hosts at once (`migrate`: every session is closed with reason
    /// "migrate", and clients rejoin; all of a room's participants land on one new host).
    pub drain_mode: DrainMode,
    /// How long a session whose signaling stream broke without a `Leave` (its proxy died or
    /// restarted) lives on, peer connection and media included, waiting for a proxy to
    /// `Resume` it. 0 = a session ends with its stream.
    pub resume_grace_seconds: u64,
}

/// What a draining rtcd does with the calls it hosts (`rtc.drain_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainMode {
    /// Calls continue until they end or `drain_timeout_seconds`, then close ("shutdown").
    Finish,
    /// Calls are closed at once with reason "migrate"; clients rejoin on another host.
    Migrate,
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            ice_address_udp: "0.0.0.0".into(),
            ice_port_udp: 8443,
            ice_port_tcp: -1,
            ice_host_override: String::new(),
            ice_interfaces: Vec::new(),
            include_loopback_candidates: false,
            udp_buffer_bytes: 4 * 1024 * 1024,
            read_coalesce_us: 1000,
            nack_buffer_packets: 1024,
            nack_buffer_ms: 500,
            max_sessions_per_call: 50,
            max_sessions_per_client: 1000,
            max_sessions: 0,
            max_tracks_per_session: 4,
            max_sdp_bytes: 64 * 1024,
            keyframe_request_interval_ms: 500,
            adaptive_video: true,
            // The defaults of the first releases (webrtc-rs 0.17's own), kept so that upgrading
            // changes nothing.
            ice_disconnected_timeout_ms: 5_000,
            ice_failed_timeout_ms: 25_000,
            drain_timeout_seconds: 30,
            max_forwarded_packets_per_second: 0,
            drain_mode: DrainMode::Finish,
            resume_grace_seconds: 15,
        }
    }
}

/// `[api]`: the HTTP API and who may use it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `[api.http]`: the public listener.
    pub http: HttpConfig,
    /// `[api.security]`: admin, self-registration, bcrypt and rate limits.
    pub security: SecurityConfig,
    /// `[api.metrics]`: the internal listener for Prometheus.
    pub metrics: MetricsConfig,
}

/// `[api.http]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` (or rtcd-style `:port` for all interfaces). Loopback by default: exposing
    /// the API is a decision the operator makes, with TLS.
    pub listen_address: String,
    /// PEM certificate chain; with `tls_key_file` it turns on HTTPS (rustls).
    pub tls_cert_file: String,
    /// PEM private key matching `tls_cert_file`.
    pub tls_key_file: String,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: u64,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_timeout_seconds: u64,
    /// A connection's TLS handshake and request head must arrive within this (also the
    /// longest idle wait between kept-alive requests): a slowloris is cut, not kept.
    pub header_timeout_seconds: u64,
    /// From a request's head to its response, body included; a trickled body gets 408.
    pub request_timeout_seconds: u64,
    /// Connections open at once, on each HTTP listener (API and metrics); over it new ones
    /// are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one address (IPv6: one /64). Proxies and admin tools
    /// make a handful; one host must not take every connection.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:8045".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            max_body_bytes: 16 * 1024,
            shutdown_timeout_seconds: 10,
            header_timeout_seconds: 10,
            request_timeout_seconds: 30,
            max_connections: 1024,
            max_connections_per_ip: 128,
        }
    }
}

impl HttpConfig {
    /// The listener bounds these settings give (validated by [`Config::validate`]).
    pub fn listener_limits(&self) -> rtcd_kit::listener::Limits {
        rtcd_kit::listener::Limits {
            header_timeout: Duration::from_secs(self.header_timeout_seconds),
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
}

/// `[api.security]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Whether HTTP basic auth with `admin_secret_key` as the password grants admin rights.
    pub enable_admin: bool,
    /// The admin password (at least 32 bytes). Prefer the environment variable over the file.
    pub admin_secret_key: String,
    /// Lets anyone who can reach the API register a *new* client ID (never overwrite one).
    pub allow_self_registration: bool,
    /// Lifetime of bearer tokens issued by `/login`.
    pub session_ttl_seconds: u64,
    /// bcrypt cost for stored key hashes (4-31); 10 costs ~60 ms per hash on this class of CPU.
    pub bcrypt_cost: u32,
    /// How many bcrypt computations may run at once (0 = half the CPUs, at least 1).
    pub bcrypt_concurrency: usize,
    /// How many bcrypt requests may wait for a slot before new ones are refused with 503.
    pub bcrypt_queue: usize,
    /// How long a verified (client ID, key) pair is remembered so that bcrypt is not re-run.
    pub auth_cache_ttl_seconds: u64,
    /// Failed authentications allowed in a burst, per client ID and per source address.
    pub failed_auth_burst: u32,
    /// Sustained failed authentications allowed per minute, per client ID and per source address.
    pub failed_auth_per_minute: u32,
    /// Self-registrations allowed per minute per source address (admins are not limited).
    pub self_registrations_per_minute: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            enable_admin: false,
            admin_secret_key: String::new(),
            allow_self_registration: false,
            session_ttl_seconds: 24 * 60 * 60,
            bcrypt_cost: 10,
            bcrypt_concurrency: 0,
            bcrypt_queue: 64,
            auth_cache_ttl_seconds: 10 * 60,
            failed_auth_burst: 10,
            failed_auth_per_minute: 10,
            self_registrations_per_minute: 10,
        }
    }
}

impl std::fmt::Debug for SecurityConfig {
    /// Hand-written so the admin secret can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("enable_admin", &self.enable_admin)
            .field(
                "admin_secret_key",
                &if self.admin_secret_key.is_empty() {
                    "<unset>"
                } else {
                    "<redacted>"
                },
            )
            .field("allow_self_registration", &self.allow_self_registration)
            .field("session_ttl_seconds", &self.session_ttl_seconds)
            .field("bcrypt_cost", &self.bcrypt_cost)
            .field("bcrypt_concurrency", &self.bcrypt_concurrency)
            .field("bcrypt_queue", &self.bcrypt_queue)
            .field("auth_cache_ttl_seconds", &self.auth_cache_ttl_seconds)
            .field("failed_auth_burst", &self.failed_auth_burst)
            .field("failed_auth_per_minute", &self.failed_auth_per_minute)
            .field(
                "self_registrations_per_minute",
                &self.self_registrations_per_minute,
            )
            .finish()
    }
}

/// `[api.metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A separate, unauthenticated listener for `/metrics` (and `/healthz`, `/readyz`). Keep it
    /// on loopback or an internal network; empty disables it. `/metrics` on the public
    /// listener always requires admin auth.
    pub listen_address: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:8046".into(),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the sled database holding the client registry. Persistent by default
    /// (Mattermost rtcd defaults to /tmp and loses every registration on reboot).
    pub data_source: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_source: "/var/lib/rtcd/db".into(),
        }
    }
}

/// `[clients]`: clients declared by the operator instead of registered through the API, so
/// that many hosts share one list (a Kubernetes Secret or systemd credential mounted on each)
/// and nobody has to call `POST /register` on every host. See `docs/registration.md`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsConfig {
    /// File of `client_id:auth_key` lines (`#` comments and blank lines allowed), readable by
    /// its owner only (mode 0400 or 0600). Reconciled into the registry at start: missing
    /// clients are created, changed keys rotated, clients dropped from the file removed; again
    /// on SIGHUP. Empty (the default) = no declared clients; API registrations are never
    /// touched.
    pub declared_file: String,
}

/// `[logger]`: the service kit's, the same in both daemons.
pub use rtcd_kit::logging::LoggerConfig;

/// Why the configuration could not be loaded; each message names the key or variable at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or an environment variable could not be read (the service kit's loader).
    #[error(transparent)]
    Load(#[from] rtcd_kit::config::LoadError),
    /// A value parsed but is not acceptable.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The TOML path of the setting, e.g. `api.security.admin_secret_key`.
        key: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// How rtcd's variables are named.
const SOURCE: rtcd_kit::config::Source<'static> = rtcd_kit::config::Source {
    prefix: ENV_PREFIX,
    sample: "deploy/rtcd.sample.toml",
};

impl Config {
    /// Loads defaults, then the TOML file (if any), then `RTCD_*` overrides from `env`, then
    /// validates. `env` is usually `rtcd_kit::config::process_env()`; variables without the prefix are ignored,
    /// unknown `RTCD_*` variables are an error (a typo must not silently do nothing).
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_table(rtcd_kit::config::read_file(path)?, path, env)
    }

    /// [`Config::load`] from the file's text (`path` only names it in errors): how the fuzz
    /// targets and their corpus replay (`crate::fuzzing`) run the whole loader without files.
    pub fn from_text(
        text: &str,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_table(rtcd_kit::config::parse(text, path)?, path, env)
    }

    fn from_table(
        table: toml::Table,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if let Some((key, why)) = removed_setting(&table) {
            return Err(invalid(key, format!("was removed: {why}; delete it")));
        }
        let config: Config = rtcd_kit::config::overlay(table, path, SOURCE, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule that serde cannot express. Called by `load`; call it again after
    /// changing a loaded config in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_listen_address(&self.api.http.listen_address)
            .map_err(|message| invalid("api.http.listen_address", message))?;
        if !self.api.metrics.listen_address.is_empty() {
            parse_listen_address(&self.api.metrics.listen_address)
                .map_err(|message| invalid("api.metrics.listen_address", message))?;
        }
        let http = &self.api.http;
        rtcd_kit::tls::check_settings(&http.tls_cert_file, &http.tls_key_file).map_err(
            |(setting, message)| match setting {
                rtcd_kit::tls::Setting::Cert => invalid("api.http.tls_cert_file", message),
                rtcd_kit::tls::Setting::Key => invalid("api.http.tls_key_file", message),
            },
        )?;
        if !(1024..=16 * 1024 * 1024).contains(&http.max_body_bytes) {
            return Err(invalid(
                "api.http.max_body_bytes",
                "must be between 1024 and 16777216".into(),
            ));
        }
        http.listener_limits().check().map_err(|(bound, message)| {
            use rtcd_kit::listener::Bound;
            let key = match bound {
                Bound::HeaderTimeout => "api.http.header_timeout_seconds",
                Bound::RequestTimeout => "api.http.request_timeout_seconds",
                Bound::Connections => "api.http.max_connections_per_ip",
            };
            invalid(key, message.into())
        })?;
        let sec = &self.api.security;
        if sec.enable_admin
            && let Some(why) = crate::auth::weak_secret(&sec.admin_secret_key)
        {
            return Err(invalid(
                "api.security.admin_secret_key",
                format!("{why} (required when enable_admin is true)"),
            ));
        }
        if !(4..=31).contains(&sec.bcrypt_cost) {
            return Err(invalid(
                "api.security.bcrypt_cost",
                "must be between 4 and 31".into(),
            ));
        }
        if sec.session_ttl_seconds == 0 || sec.session_ttl_seconds > 30 * 24 * 3600 {
            return Err(invalid(
                "api.security.session_ttl_seconds",
                "must be between 1 and 2592000 (30 days)".into(),
            ));
        }
        if sec.auth_cache_ttl_seconds > 24 * 3600 {
            return Err(invalid(
                "api.security.auth_cache_ttl_seconds",
                "must be at most 86400".into(),
            ));
        }
        if sec.bcrypt_queue == 0 {
            return Err(invalid(
                "api.security.bcrypt_queue",
                "must be at least 1".into(),
            ));
        }
        if sec.failed_auth_burst == 0 || sec.failed_auth_per_minute == 0 {
            return Err(invalid(
                "api.security.failed_auth_burst",
                "failed_auth_burst and failed_auth_per_minute must be at least 1".into(),
            ));
        }
        if sec.allow_self_registration && sec.self_registrations_per_minute == 0 {
            return Err(invalid(
                "api.security.self_registrations_per_minute",
                "must be at least 1 when allow_self_registration is true".into(),
            ));
        }
        self.validate_media()?;
        self.webhooks.validate()?;
        self.recording.validate()?;
        if self.store.data_source.trim().is_empty() {
            return Err(invalid("store.data_source", "must name a directory".into()));
        }
        let declared = &self.clients.declared_file;
        if !declared.is_empty() && declared.trim() != declared {
            return Err(invalid(
                "clients.declared_file",
                "must be empty or a path without leading or trailing spaces".into(),
            ));
        }
        self.logger
            .validate()
            .map_err(|message| invalid("logger.level", message))?;
        self.cluster
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if self.cluster.enabled() && self.advertised_ip().is_none() {
            return Err(invalid(
                "cluster.advertise_address",
                "must be set when grpc.listen_address listens on every interface: the proxies need an address to reach this host at".into(),
            ));
        }
        Ok(())
    }

    /// The address this host announces in cluster mode: `cluster.advertise_address`, else
    /// `grpc.listen_address`'s when it is a specific one.
    pub fn advertised_ip(&self) -> Option<std::net::IpAddr> {
        if !self.cluster.advertise_address.is_empty() {
            return self.cluster.advertise_address.parse().ok();
        }
        parse_listen_address(&self.grpc.listen_address)
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
    }

    fn validate_media(&self) -> Result<(), ConfigError> {
        let grpc = &self.grpc;
        parse_listen_address(&grpc.listen_address)
            .map_err(|message| invalid("grpc.listen_address", message))?;
        if grpc.tls_cert_file.is_empty() != grpc.tls_key_file.is_empty() {
            return Err(invalid(
                "grpc.tls_cert_file",
                "tls_cert_file and tls_key_file must be set together".into(),
            ));
        }
        if !grpc.tls_client_ca_file.is_empty() && grpc.tls_cert_file.is_empty() {
            return Err(invalid(
                "grpc.tls_client_ca_file",
                "client certificates need TLS: set tls_cert_file and tls_key_file".into(),
            ));
        }
        if !(4096..=16 * 1024 * 1024).contains(&grpc.max_message_bytes) {
            return Err(invalid(
                "grpc.max_message_bytes",
                "must be between 4096 and 16777216".into(),
            ));
        }
        let rtc = &self.rtc;
        if !(-1..=65535).contains(&rtc.ice_port_tcp) {
            return Err(invalid(
                "rtc.ice_port_tcp",
                "must be a port (0 = ephemeral) or -1 (off)".into(),
            ));
        }
        rtc.ice_address_udp
            .parse::<std::net::IpAddr>()
            .map_err(|_| invalid("rtc.ice_address_udp", "must be an IP address".into()))?;
        for ip in rtc
            .ice_host_override
            .split(',')
            .filter(|s| !s.trim().is_empty())
        {
            ip.trim().parse::<std::net::IpAddr>().map_err(|_| {
                invalid(
                    "rtc.ice_host_override",
                    format!("`{ip}` is not an IP address"),
                )
            })?;
        }
        for (key, value) in [
            ("rtc.max_sessions_per_call", rtc.max_sessions_per_call),
            ("rtc.max_sessions_per_client", rtc.max_sessions_per_client),
            ("rtc.max_tracks_per_session", rtc.max_tracks_per_session),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if rtc.udp_buffer_bytes != 0
            && !(65_536..=256 * 1024 * 1024).contains(&rtc.udp_buffer_bytes)
        {
            return Err(invalid(
                "rtc.udp_buffer_bytes",
                "must be 0 (kernel default) or between 65536 and 268435456".into(),
            ));
        }
        if rtc.read_coalesce_us > 5000 {
            return Err(invalid(
                "rtc.read_coalesce_us",
                "must be between 0 (never) and 5000".into(),
            ));
        }
        if !(64..=32_768).contains(&rtc.nack_buffer_packets) {
            return Err(invalid(
                "rtc.nack_buffer_packets",
                "must be between 64 and 32768".into(),
            ));
        }
        if !(100..=5000).contains(&rtc.nack_buffer_ms) {
            return Err(invalid(
                "rtc.nack_buffer_ms",
                "must be between 100 and 5000".into(),
            ));
        }
        if !(1024..=1024 * 1024).contains(&rtc.max_sdp_bytes)
            || rtc.max_sdp_bytes > grpc.max_message_bytes
        {
            return Err(invalid(
                "rtc.max_sdp_bytes",
                "must be between 1024 and 1048576 and at most grpc.max_message_bytes".into(),
            ));
        }
        // 0 would mean "never" to webrtc-rs: a vanished peer would hold its session forever.
        for (key, value) in [
            (
                "rtc.ice_disconnected_timeout_ms",
                rtc.ice_disconnected_timeout_ms,
            ),
            ("rtc.ice_failed_timeout_ms", rtc.ice_failed_timeout_ms),
        ] {
            if !(1..=MAX_ICE_TIMEOUT_MS).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between 1 and {MAX_ICE_TIMEOUT_MS} (ms)"),
                ));
            }
        }
        // A parked session holds a peer connection and its forwarding with nobody to tell; a
        // long grace would keep ghosts in calls.
        if rtc.resume_grace_seconds > 300 {
            return Err(invalid(
                "rtc.resume_grace_seconds",
                "must be between 0 (off) and 300".into(),
            ));
        }
        Ok(())
    }

    /// The gRPC signaling listener's socket address (validated).
    pub fn grpc_addr(&self) -> SocketAddr {
        parse_listen_address(&self.grpc.listen_address).expect("validated by Config::validate")
    }

    /// The public listener's socket address (validated).
    pub fn http_addr(&self) -> SocketAddr {
        parse_listen_address(&self.api.http.listen_address).expect("validated by Config::validate")
    }

    /// The metrics listener's socket address, if enabled (validated).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let addr = &self.api.metrics.listen_address;
        (!addr.is_empty())
            .then(|| parse_listen_address(addr).expect("validated by Config::validate"))
    }
}

/// Settings of earlier releases that no longer exist (`section.key`), with why: a config file
/// that still sets one gets this reason instead of serde's bare "unknown field".
const REMOVED: &[(&str, &str)] = &[
    (
        "rtc.engine",
        "rtcd has one media engine (webrtc-rs 0.21's sans-IO core); the v1 engine is gone",
    ),
    (
        "rtc.ice_servers",
        "rtcd is ICE-lite and learns no server-reflexive address; advertise a public IP with \
         rtc.ice_host_override",
    ),
    (
        "rtc.ice_keepalive_interval_ms",
        "rtcd is ICE-lite: clients send the checks that keep a connection alive",
    ),
];

fn removed_setting(table: &toml::Table) -> Option<(&'static str, &'static str)> {
    REMOVED.iter().copied().find(|(path, _)| {
        let (section, key) = path.split_once('.').expect("section.key");
        table
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(key))
    })
}

/// Longest ICE timeout accepted (10 minutes).
const MAX_ICE_TIMEOUT_MS: u64 = 600_000;

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

/// Accepts `ip:port`, `[v6]:port` and rtcd's `:port` (all IPv4 interfaces).
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    rtcd_kit::config::parse_listen_address(s, "127.0.0.1:8045")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn listener_bounds_are_checked_and_named() {
        let base = [("RTCD_API_SECURITY_ENABLE_ADMIN", "false")];
        for (var, value, key) in [
            (
                "RTCD_API_HTTP_HEADER_TIMEOUT_SECONDS",
                "0",
                "api.http.header_timeout_seconds",
            ),
            (
                "RTCD_API_HTTP_REQUEST_TIMEOUT_SECONDS",
                "601",
                "api.http.request_timeout_seconds",
            ),
            (
                "RTCD_API_HTTP_MAX_CONNECTIONS",
                "0",
                "api.http.max_connections_per_ip",
            ),
            (
                "RTCD_API_HTTP_MAX_CONNECTIONS",
                "100",
                "api.http.max_connections_per_ip",
            ),
        ] {
            let e = Config::load(None, env(&[base[0], (var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{var}={value}: {e}");
        }
    }

    #[test]
    fn defaults_are_valid_and_least_privilege() {
        let c = Config::load(None, env(&[])).unwrap();
        assert!(!c.api.security.enable_admin);
        assert!(!c.api.security.allow_self_registration);
        assert!(c.http_addr().ip().is_loopback());
        assert!(c.metrics_addr().unwrap().ip().is_loopback());
        assert!(!c.store.data_source.starts_with("/tmp"));
    }

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let c = Config::load(
            None,
            env(&[
                ("RTCD_API_SECURITY_ENABLE_ADMIN", "true"),
                (
                    "RTCD_API_SECURITY_ADMIN_SECRET_KEY",
                    "0123456789abcdef0123456789abcdef",
                ),
                ("RTCD_API_SECURITY_BCRYPT_COST", "12"),
                ("RTCD_STORE_DATA_SOURCE", "/srv/rtcd"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert!(c.api.security.enable_admin);
        assert_eq!(c.api.security.bcrypt_cost, 12);
        assert_eq!(c.store.data_source, "/srv/rtcd");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = Config::load(None, env(&[("RTCD_API_SECURITY_BCRYPT_COST", "ten")])).unwrap_err();
        assert!(
            e.to_string().contains("RTCD_API_SECURITY_BCRYPT_COST"),
            "{e}"
        );
        let e = Config::load(None, env(&[("RTCD_API_SECURITY_ADMIN_SECRT_KEY", "x")])).unwrap_err();
        assert!(
            e.to_string().contains("RTCD_API_SECURITY_ADMIN_SECRT_KEY"),
            "{e}"
        );
        let e =
            Config::load(None, env(&[("RTCD_API_SECURITY_ENABLE_ADMIN", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let e = Config::load(None, env(&[("RTCD_API_SECURITY_ENABLE_ADMIN", "true")])).unwrap_err();
        assert!(
            e.to_string().contains("api.security.admin_secret_key"),
            "{e}"
        );
        let e =
            Config::load(None, env(&[("RTCD_API_HTTP_LISTEN_ADDRESS", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("api.http.listen_address"), "{e}");
        let e = Config::load(None, env(&[("RTCD_API_HTTP_TLS_CERT_FILE", "/x.pem")])).unwrap_err();
        assert!(e.to_string().contains("api.http.tls_key_file"), "{e}");
        let e = Config::load(None, env(&[("RTCD_LOGGER_LEVEL", "info,[")])).unwrap_err();
        assert!(e.to_string().contains("logger.level"), "{e}");
        let e = Config::load(None, env(&[("RTCD_RTC_UDP_BUFFER_BYTES", "1000")])).unwrap_err();
        assert!(e.to_string().contains("rtc.udp_buffer_bytes"), "{e}");
        Config::load(None, env(&[("RTCD_RTC_UDP_BUFFER_BYTES", "0")])).unwrap();
        let e = Config::load(None, env(&[("RTCD_RTC_READ_COALESCE_US", "5001")])).unwrap_err();
        assert!(e.to_string().contains("rtc.read_coalesce_us"), "{e}");
        let c = Config::load(None, env(&[("RTCD_RTC_READ_COALESCE_US", "0")])).unwrap();
        assert_eq!(c.rtc.read_coalesce_us, 0);
        assert_eq!(
            Config::load(None, env(&[])).unwrap().rtc.read_coalesce_us,
            1000
        );
        let e = Config::load(None, env(&[("RTCD_RTC_NACK_BUFFER_PACKETS", "8")])).unwrap_err();
        assert!(e.to_string().contains("rtc.nack_buffer_packets"), "{e}");
        let e = Config::load(None, env(&[("RTCD_RTC_NACK_BUFFER_MS", "50")])).unwrap_err();
        assert!(e.to_string().contains("rtc.nack_buffer_ms"), "{e}");
        let c = Config::load(None, env(&[("RTCD_RTC_NACK_BUFFER_MS", "1000")])).unwrap();
        assert_eq!(c.rtc.nack_buffer_ms, 1000);
        assert_eq!(
            Config::load(None, env(&[])).unwrap().rtc.nack_buffer_ms,
            500
        );
    }

    #[test]
    fn ice_timeouts_have_defaults_and_are_validated() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(
            (
                c.rtc.ice_disconnected_timeout_ms,
                c.rtc.ice_failed_timeout_ms
            ),
            (5_000, 25_000)
        );
        let c = Config::load(
            None,
            env(&[
                ("RTCD_RTC_ICE_DISCONNECTED_TIMEOUT_MS", "800"),
                ("RTCD_RTC_ICE_FAILED_TIMEOUT_MS", "700"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rtc.ice_failed_timeout_ms, 700);
        let e = Config::load(None, env(&[("RTCD_RTC_ICE_FAILED_TIMEOUT_MS", "0")])).unwrap_err();
        assert!(e.to_string().contains("rtc.ice_failed_timeout_ms"), "{e}");
        let e = Config::load(
            None,
            env(&[("RTCD_RTC_ICE_DISCONNECTED_TIMEOUT_MS", "600001")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("rtc.ice_disconnected_timeout_ms"),
            "{e}"
        );
    }

    #[test]
    fn webhook_settings_have_defaults_and_are_validated() {
        let c = Config::load(None, env(&[])).unwrap();
        assert!(c.webhooks.enabled && !c.webhooks.allow_private_addresses);
        assert_eq!(
            (c.webhooks.queue_capacity, c.webhooks.max_pending_events),
            (10_000, 100_000)
        );
        let c = Config::load(
            None,
            env(&[
                ("RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true"),
                ("RTCD_WEBHOOKS_MAX_ATTEMPTS", "3"),
            ]),
        )
        .unwrap();
        assert!(c.webhooks.allow_private_addresses);
        assert_eq!(c.webhooks.max_attempts, 3);
        for (var, value, key) in [
            (
                "RTCD_WEBHOOKS_QUEUE_CAPACITY",
                "0",
                "webhooks.queue_capacity",
            ),
            ("RTCD_WEBHOOKS_MAX_ATTEMPTS", "0", "webhooks.max_attempts"),
            (
                "RTCD_WEBHOOKS_TIMEOUT_SECONDS",
                "61",
                "webhooks.timeout_seconds",
            ),
            (
                "RTCD_WEBHOOKS_MAX_CONCURRENCY",
                "0",
                "webhooks.max_concurrency",
            ),
            (
                "RTCD_WEBHOOKS_INITIAL_BACKOFF_MS",
                "40000",
                "webhooks.max_backoff_seconds",
            ),
        ] {
            let e = Config::load(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{var}={value}: {e}");
        }
    }

    #[test]
    fn removed_settings_say_why_instead_of_unknown_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtcd.toml");
        for (line, key) in [
            ("engine = \"v1\"", "rtc.engine"),
            ("ice_servers = []", "rtc.ice_servers"),
            (
                "ice_keepalive_interval_ms = 2000",
                "rtc.ice_keepalive_interval_ms",
            ),
        ] {
            std::fs::write(&path, format!("[rtc]\n{line}\n")).unwrap();
            let e = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("was removed"), "{e}");
        }
        // The environment cannot set them either (an unknown variable is an error).
        assert!(Config::load(None, env(&[("RTCD_RTC_ENGINE", "v2")])).is_err());
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtcd.toml");
        std::fs::write(&path, "[api.http]\nlisten_adress = \":8045\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(e.to_string().contains("listen_adress"), "{e}");
        std::fs::write(&path, "[api.security]\nbcrypt_cost = \"high\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(e.to_string().contains("bcrypt_cost"), "{e}");
    }

    #[test]
    fn declared_clients_file_is_off_by_default_and_set_from_the_environment() {
        assert_eq!(Config::default().clients.declared_file, "");
        let c = Config::load(
            None,
            env(&[("RTCD_CLIENTS_DECLARED_FILE", "/run/secrets/rtcd/clients")]),
        )
        .unwrap();
        assert_eq!(c.clients.declared_file, "/run/secrets/rtcd/clients");
        let e = Config::load(None, env(&[("RTCD_CLIENTS_DECLARED_FILE", " /x ")])).unwrap_err();
        assert!(e.to_string().contains("clients.declared_file"), "{e}");
    }

    #[test]
    fn rtcd_style_port_only_address() {
        assert_eq!(
            parse_listen_address(":8045").unwrap(),
            "0.0.0.0:8045".parse::<SocketAddr>().unwrap()
        );
    }

    /// Issue 16 #10: the sample's placeholder admin secret and obviously weak ones are
    /// refused at start, naming the key.
    #[test]
    fn sample_and_weak_admin_secrets_are_refused() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rtcd.sample.toml");
        let e = Config::load(Some(&sample), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api.security.admin_secret_key") && e.contains("placeholder"),
            "{e}"
        );
        for weak in [
            "REPLACE-ME-with-at-least-32-random-bytes".to_string(),
            "a".repeat(32),
            "-".repeat(64),
        ] {
            let e = Config::load(
                None,
                env(&[
                    ("RTCD_API_SECURITY_ENABLE_ADMIN", "true"),
                    ("RTCD_API_SECURITY_ADMIN_SECRET_KEY", &weak),
                ]),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("api.security.admin_secret_key"), "{weak}: {e}");
        }
        // A real one still passes, and an unused weak one (admin off) is not an error.
        Config::load(
            None,
            env(&[
                ("RTCD_API_SECURITY_ENABLE_ADMIN", "true"),
                (
                    "RTCD_API_SECURITY_ADMIN_SECRET_KEY",
                    "test-admin-secret-0123456789abcdef",
                ),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn sample_config_parses_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rtcd.sample.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let sample: toml::Table = text.parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let want = rtcd_kit::config::variables(&defaults, ENV_PREFIX);
        let have = rtcd_kit::config::variables(&sample, ENV_PREFIX);
        let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
        assert!(missing.is_empty(), "sample config lacks {missing:?}");
        // The sample enables admin with a placeholder the operator must replace: it must parse.
        let _: Config = toml::Value::Table(sample).try_into().unwrap();
    }
}

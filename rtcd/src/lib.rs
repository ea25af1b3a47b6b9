//! rtcd, the media daemon: the registry of its clients (one signaling proxy deployment per
//! platform, a "tenant"), the HTTP API admins and clients use to manage them, and the
//! authentication every later interface (gRPC signaling, the SFU) relies on.
//!
//! # Layout
//!
//! * [`config`]: the typed configuration, TOML + `RTCD_*` environment, validated at start.
//! * [`auth`]: client IDs, keys, bcrypt hashes in sled ([`auth::store`]), verification cache,
//!   bearer tokens, rate limits, audit log. Knows nothing of HTTP or gRPC.
//! * [`api`]: the warp HTTP API (Mattermost rtcd wire format) and the single error-to-status
//!   mapping; the listeners (TCP / TLS, deadlines, connection caps, graceful shutdown) are the
//!   service kit's (`rtcd_kit::listener`, `rtcd_kit::tls`).
//! * [`grpc`]: the boundary both gRPC services share: caller authentication, proto <->
//!   domain conversions, errors as statuses.
//! * [`signaling`]: the gRPC service proxies use (authenticated per RPC, tenant-scoped).
//! * [`rooms`]: the gRPC room-management service on the same port (list, remove and ban,
//!   mute, role and permission changes, end room, revoke), over the SFU and [`moderation`]
//!   (bans and revocations, durable in the same sled database as the clients).
//! * [`sfu`]: calls, sessions and RTP forwarding (knows no gRPC, proto, auth or WebRTC library).
//! * [`webhook`]: room events (from the SFU) POSTed, signed, to each tenant's URLs.
//! * [`media`]: the media types below both the engine and the SFU (the SFU's RTP packet, the
//!   SDP reading it needs), so the engine imports nothing from the SFU.
//! * [`engine`]: the media engine v2: everything that touches the WebRTC library and the media
//!   sockets ([`engine::net`]: rtcd's own batched UDP, demultiplexing and ICE-TCP).
//! * [`health`] (the kit's), [`system`], [`metrics`]: readiness, host load, Prometheus registry.
//! * [`cli`]: the `rtcd` command line (serve, dev, clients add / remove / list).
//! * [`Rtcd`]: the composition root. `start` builds store -> auth -> declared clients
//!   ([`auth::declared`]) -> listeners; `shutdown`
//!   undoes it in reverse and flushes the store last.

#![warn(missing_docs)]

pub mod api;

/// The git commit rtcd was built from (`build.rs`), or `unknown` (a build without git).
/// `GET /version` and `rtcd --version` both report it.
pub const BUILD_HASH: &str = match option_env!("RTCD_BUILD_HASH") {
    Some(hash) => hash,
    None => "unknown",
};

/// When rtcd was built (UTC, RFC 3339), or `unknown`.
pub const BUILD_DATE: &str = match option_env!("RTCD_BUILD_DATE") {
    Some(date) => date,
    None => "unknown",
};
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
/// Parsers of outside input as the fuzz targets and their corpus replay call them (not an API).
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod lobby;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod moderation;
pub mod recording;
pub mod rooms;
pub mod sfu;
pub mod signaling;
pub mod system;
pub mod webhook;

/// Readiness (the service kit's, shared with the proxy).
pub use rtcd_kit::health;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::auth::{AuthError, AuthService, ClientStore, StoreError};
use crate::config::Config;
use crate::health::Health;
use crate::lobby::Lobby;
use crate::metrics::Metrics;
use crate::moderation::ModerationStore;
use crate::rooms::RoomsService;
use crate::sfu::{Sfu, SfuConfig};
use crate::signaling::SignalingService;
use crate::system::SystemLoad;
use crate::webhook::Webhooks;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The registry could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The auth service could not be built.
    #[error("auth service: {0}")]
    Auth(#[from] AuthError),
    /// The declared-clients file (`clients.declared_file`) is unreadable, too open, malformed
    /// or conflicts with an API registration; the message names the file and line, never a key.
    #[error(transparent)]
    Declared(#[from] auth::declared::DeclaredError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] rtcd_kit::tls::TlsError),
    /// The SFU could not start (ICE UDP socket, media engine).
    #[error("sfu: {0}")]
    Sfu(#[from] sfu::SfuError),
    /// `[recording]`'s directory is unusable.
    #[error("recording: {0}")]
    Recording(String),
    /// The webhook HTTP client could not be built (TLS backend).
    #[error("webhooks: {0}")]
    Webhooks(#[source] reqwest::Error),
    /// The gRPC listener could not be set up (TLS files, bind).
    #[error("grpc: {0}")]
    Grpc(String),
    /// `[cluster]` names a store that cannot be used (an unreadable TLS file).
    #[error("cluster: {0}")]
    Cluster(#[from] rtcd_kit::cluster::StoreError),
}

/// A running daemon. Drop does not stop it; call [`Rtcd::shutdown`].
pub struct Rtcd {
    config: Config,
    health: Arc<Health>,
    auth: AuthService,
    metrics: Arc<Metrics>,
    http_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    grpc_addr: SocketAddr,
    sfu: Sfu,
    lobby: Lobby,
    webhooks: Webhooks,
    grpc_cancel: CancellationToken,
    grpc_server: JoinHandle<()>,
    relays: tokio_util::task::TaskTracker,
    cancel: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    /// This host's announcement in the cluster store (`[cluster]`), if on.
    announcer: Option<cluster::Announcer>,
}

impl Rtcd {
    /// Opens the store, builds the services and binds every listener. Returns once the
    /// daemon is ready (`/readyz` answers 200).
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let health = Arc::new(Health::default());
        let metrics = Metrics::new();
        let store = ClientStore::open(Path::new(&config.store.data_source))?;
        let disk = moderation::Disk::open(store.database())?;
        // Cluster mode: the client registry and the moderation decisions live in the cluster
        // store (docs/cluster.md); this host follows copies of them.
        let cluster_store: Option<Arc<dyn rtcd_kit::cluster::Store>> = if config.cluster.enabled() {
            Some(Arc::new(
                rtcd_kit::cluster::Etcd::connect(&config.cluster)?
                    .with_round_trips(metrics.cluster_store_seconds.clone()),
            ))
        } else {
            None
        };
        let store = match &cluster_store {
            Some(cluster) => {
                store
                    .shared_in(
                        cluster.clone(),
                        &config.cluster.key_prefix,
                        config.cluster.request_timeout(),
                    )
                    .await
            }
            None => store,
        };
        let security = config.api.security.clone();
        let auth = {
            let metrics = metrics.clone();
            tokio::task::spawn_blocking(move || AuthService::new(store, security, metrics))
                .await
                .map_err(|_| AuthError::Internal)??
        };
        // Before anything serves: a proxy must never see a host where its declared key is
        // not (yet) valid, or where a removed client still is.
        if !config.clients.declared_file.is_empty() {
            auth.reconcile_declared(Path::new(&config.clients.declared_file))
                .await?;
        }
        // Everything that can fail comes first (listeners bound, SFU and gRPC started), and
        // nothing serves until all of it succeeded: a failed start leaves no listener serving
        // and no task holding the store (dropping the SFU stops its threads).
        let drain = Duration::from_secs(config.api.http.shutdown_timeout_seconds);
        let http = &config.api.http;
        let tls = if http.tls_cert_file.is_empty() {
            None
        } else {
            Some(rtcd_kit::tls::server_config(
                Path::new(&http.tls_cert_file),
                Path::new(&http.tls_key_file),
            )?)
        };
        let http_listener = bind(config.http_addr()).await?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.http_addr(),
                source,
            })?;
        let metrics_listener = match config.metrics_addr() {
            Some(addr) => {
                let listener = bind(addr).await?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some((listener, bound))
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        // Before the SFU, which emits into the webhook queue from its first call.
        let (webhooks, events) =
            Webhooks::start(&config.webhooks, metrics.clone()).map_err(StartError::Webhooks)?;
        let sfu = Sfu::new(sfu_config(&config.rtc)?, metrics.clone(), events).await?;
        if config.recording.enabled {
            let directory = std::path::PathBuf::from(&config.recording.directory);
            // Also marks recordings a killed rtcd left unfinished as interrupted.
            let library = recording::Library::open(directory.clone())
                .map_err(|e| StartError::Recording(format!("{}: {e}", directory.display())))?;
            sfu.enable_recording(sfu::RecordingSetup {
                config: config.recording.recorder(),
                library: Arc::new(library),
                host: host_name(),
            });
            tracing::info!(directory = %directory.display(), "recording enabled");
        }
        // Bans, revocations and room policies: in cluster mode a copy, complete before this
        // host serves (waited for one request deadline at most: until it is, joins are
        // refused, not admitted unchecked).
        let moderation: ModerationStore = match &cluster_store {
            Some(store) => {
                let shared = Arc::new(moderation::Shared::start(
                    store.clone(),
                    config.cluster.stale_limit(),
                    config.cluster.request_timeout(),
                    metrics.cluster_joins_unchecked.clone(),
                ));
                if !shared.synced(config.cluster.request_timeout()).await {
                    tracing::warn!(
                        "cannot read bans and revocations from the cluster store yet; joins are refused until they are read"
                    );
                }
                shared
                    .adopt(&disk, &config.cluster.key_prefix, moderation::unix_now())
                    .await;
                shared.into()
            }
            None => disk.into(),
        };
        let grpc_cancel = CancellationToken::new();
        let lobby = Lobby::with_metrics(metrics.clone());
        let signaling = SignalingService::new(
            auth.clone(),
            sfu.clone(),
            moderation.clone(),
            lobby.clone(),
            signaling::resume::Parking::new(
                Duration::from_secs(config.rtc.resume_grace_seconds),
                Some(metrics.clone()),
            ),
        );
        let relays = signaling.relays();
        let (grpc_addr, grpc_server) = start_grpc(
            &config,
            signaling,
            RoomsService::new(
                auth.clone(),
                sfu.clone(),
                moderation.clone(),
                webhooks.clone(),
                lobby.clone(),
            ),
            grpc_cancel.clone(),
        )
        .await?;

        let cancel = CancellationToken::new();
        let purger = moderation::spawn_purger(moderation.clone(), cancel.child_token());
        let load = Arc::new(SystemLoad::default());
        let announce = load.clone();
        let capacity = sfu.clone();
        load.spawn_sampler(
            cancel.child_token(),
            config.rtc.max_forwarded_packets_per_second,
            move || system::Usage {
                capacity_used: capacity.capacity_used(),
                forwarded_packets: capacity.forwarded_packets(),
            },
        );
        let state = ApiState {
            auth: auth.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            load,
            max_body_bytes: config.api.http.max_body_bytes,
        };
        if tls.is_none() && !http_addr.ip().is_loopback() {
            tracing::warn!(%http_addr, "the HTTP API listens beyond loopback without TLS: client keys and the admin secret cross the network in clear; set api.http.tls_cert_file / tls_key_file");
        }
        let limits = config.api.http.listener_limits();
        let options = |tls, listener| rtcd_kit::listener::Options {
            tls,
            limits,
            observer: metrics.http_connections_cut.observer(listener),
            shutdown: cancel.clone(),
            drain,
        };
        let mut servers = vec![purger];
        if let Some(follower) = auth.spawn_registry_follower(cancel.child_token()) {
            servers.push(follower);
        }
        if let Some(shared) = moderation.shared() {
            servers.push(rooms::decisions::spawn(
                shared.clone(),
                sfu.clone(),
                lobby.clone(),
                metrics.clone(),
                cancel.child_token(),
            ));
        }
        servers.push(rtcd_kit::listener::serve(
            http_listener,
            options(tls, "api"),
            rtcd_kit::listener::routes_handler(api::public_routes(state.clone())),
        ));
        if let Some((listener, _)) = metrics_listener {
            servers.push(rtcd_kit::listener::serve(
                listener,
                options(None, "metrics"),
                rtcd_kit::listener::routes_handler(api::internal_routes(state)),
            ));
        }
        health.set_ready();
        // Announced once ready: a proxy that learns of the host may place rooms on it at once.
        let announcer = match (config.advertised_ip(), cluster_store) {
            (Some(address), Some(store)) => Some({
                let (rooms_sfu, rooms_lobby) = (sfu.clone(), lobby.clone());
                let rooms: cluster::RoomPresence = Arc::new(move |tenant: &str, room: &str| {
                    let (tenant, call) = (sfu::TenantId::new(tenant), sfu::CallId::new(room));
                    rooms::has_room(&rooms_sfu, &rooms_lobby, &tenant, &call)
                });
                cluster::Announcer::start(
                    &config.cluster,
                    store,
                    rtcd_kit::cluster::HostAnnouncement {
                        address,
                        grpc_port: grpc_addr.port(),
                        api_port: http_addr.port(),
                        load: 0.0,
                        media_load: 0.0,
                        draining: false,
                    },
                    announce,
                    health.clone(),
                    rooms,
                    metrics.clone(),
                )
                .await?
            }),
            _ => None,
        };
        tracing::info!(%http_addr, ?metrics_addr, %grpc_addr, ice_udp = %sfu.udp_addr(), ice_tcp = ?sfu.tcp_addr(), store = %config.store.data_source, clients = auth.store().len(), "rtcd ready");
        Ok(Self {
            config,
            health,
            auth,
            metrics,
            http_addr,
            metrics_addr,
            grpc_addr,
            sfu,
            lobby,
            webhooks,
            grpc_cancel,
            grpc_server,
            relays,
            cancel,
            servers,
            announcer,
        })
    }

    /// The bound address of the public HTTP API (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound address of the internal metrics listener, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound address of the gRPC signaling listener (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The SFU (for tests and admin queries: session and call counts, ICE socket address).
    pub fn sfu(&self) -> &Sfu {
        &self.sfu
    }

    /// The webhook service (the `Rooms` gRPC service configures tenants' URLs through it).
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// The authentication service (the gRPC signaling service authenticates through it).
    pub fn auth(&self) -> &AuthService {
        &self.auth
    }

    /// The lifecycle phase shared by every interface.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The configuration the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Graceful shutdown: not ready and no new joins; running calls continue until they end or
    /// `rtc.drain_timeout_seconds`, then close with reason "shutdown" (or, with
    /// `rtc.drain_mode = "migrate"`, close at once with reason "migrate"); their last webhook
    /// events get up to [`WEBHOOK_DRAIN`] to be delivered; then the listeners stop
    /// (in-flight HTTP requests bounded by `api.http.shutdown_timeout_seconds`) and the store is
    /// flushed.
    pub async fn shutdown(self) {
        self.health.set_draining();
        if let Some(announcer) = &self.announcer {
            announcer.draining().await;
        }
        // Nobody waiting can be let in any more: they rejoin elsewhere at once.
        self.sfu.start_draining();
        self.lobby.close_all();
        match self.config.rtc.drain_mode {
            config::DrainMode::Finish => {
                let drain = Duration::from_secs(self.config.rtc.drain_timeout_seconds);
                self.sfu.drain(drain, "shutdown").await;
            }
            // Everyone at once, so that each room's participants rejoin together and land on
            // one new host (a room moved piecemeal could be split between two).
            config::DrainMode::Migrate => self.sfu.drain(Duration::ZERO, "migrate").await,
        }
        // The rooms are gone, so are their recordings: their files are being completed (and
        // `recording_ready` queued) before the webhooks drain.
        if !self.sfu.recordings_complete(Duration::from_secs(10)).await {
            tracing::warn!("recordings were not complete within 10 s of the drain");
        }
        // The sessions are closed; their relay tasks (which hold the store) finish at once.
        self.relays.close();
        if tokio::time::timeout(Duration::from_secs(5), self.relays.wait())
            .await
            .is_err()
        {
            tracing::warn!("session relay tasks did not finish within 5 s of the drain");
        }
        self.webhooks.shutdown(WEBHOOK_DRAIN).await;
        if let Some(announcer) = self.announcer {
            announcer.withdraw().await;
        }
        self.grpc_cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.grpc_server)
            .await
            .is_err()
        {
            tracing::warn!("gRPC listener did not stop within 5 s");
        }
        self.cancel.cancel();
        for server in self.servers {
            let _ = server.await;
        }
        if let Err(e) = self.auth.store().flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!("rtcd stopped");
    }
}

/// How long shutdown keeps delivering webhook events after the SFU drained (the calls' last
/// `participant_left` / `room_finished`); what is left then is abandoned, and logged.
pub const WEBHOOK_DRAIN: Duration = Duration::from_secs(5);

/// This host's name, for recording manifests.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rtcd".into())
}

fn sfu_config(rtc: &config::RtcConfig) -> Result<SfuConfig, StartError> {
    let ip: std::net::IpAddr = rtc
        .ice_address_udp
        .parse()
        .map_err(|_| sfu::SfuError::InvalidArgument("rtc.ice_address_udp".into()))?;
    Ok(SfuConfig {
        udp_addr: SocketAddr::new(ip, rtc.ice_port_udp),
        ice_tcp_port: u16::try_from(rtc.ice_port_tcp).ok(),
        host_override: rtc
            .ice_host_override
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        interfaces: rtc.ice_interfaces.clone(),
        include_loopback: rtc.include_loopback_candidates,
        udp_buffer_bytes: rtc.udp_buffer_bytes,
        read_coalesce: Duration::from_micros(rtc.read_coalesce_us),
        nack_buffer_packets: rtc.nack_buffer_packets,
        nack_buffer_age: std::time::Duration::from_millis(rtc.nack_buffer_ms),
        max_sessions_per_call: rtc.max_sessions_per_call,
        max_sessions: rtc.max_sessions,
        max_sessions_per_tenant: rtc.max_sessions_per_client,
        max_tracks_per_session: rtc.max_tracks_per_session,
        max_sdp_bytes: rtc.max_sdp_bytes,
        keyframe_interval: Duration::from_millis(rtc.keyframe_request_interval_ms),
        adaptive_video: rtc.adaptive_video,
        ice_disconnected_timeout: Duration::from_millis(rtc.ice_disconnected_timeout_ms),
        ice_failed_timeout: Duration::from_millis(rtc.ice_failed_timeout_ms),
    })
}

/// Binds the gRPC listener (TLS / mTLS when configured) and serves signaling and room
/// management (same port, same limits) until `cancel`.
async fn start_grpc(
    config: &Config,
    service: SignalingService,
    rooms: RoomsService,
    cancel: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let grpc = &config.grpc;
    let mut builder = Server::builder();
    if !grpc.tls_cert_file.is_empty() {
        let read = |p: &str| std::fs::read(p).map_err(|e| StartError::Grpc(format!("{p}: {e}")));
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read(&grpc.tls_cert_file)?,
            read(&grpc.tls_key_file)?,
        ));
        if !grpc.tls_client_ca_file.is_empty() {
            tls = tls.client_ca_root(Certificate::from_pem(read(&grpc.tls_client_ca_file)?));
        }
        builder = builder
            .tls_config(tls)
            .map_err(|e| StartError::Grpc(e.to_string()))?;
    }
    let listener = bind(config.grpc_addr()).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.grpc_addr(),
        source,
    })?;
    if grpc.tls_cert_file.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "gRPC signaling listens beyond loopback without TLS: client keys cross the network in clear; set grpc.tls_cert_file / tls_key_file");
    }
    let incoming = grpc_incoming(listener);
    let router = builder
        .add_service(service.into_server(grpc.max_message_bytes))
        .add_service(rooms.into_server(grpc.max_message_bytes));
    let handle = tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    Ok((addr, handle))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// The gRPC server's connections, without Nagle's algorithm. tonic sets `TCP_NODELAY` only on
/// connections it accepts itself; on a listener handed to it the option stays off, and an answer
/// or event written while an earlier frame was unacknowledged waited for the proxy's delayed
/// ACK: 40 ms added to one offer/answer round in ten (the load tool's join p95 was 52 ms
/// against Janus's 18).
fn grpc_incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    #[tokio::test]
    async fn grpc_connections_are_accepted_without_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::grpc_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}

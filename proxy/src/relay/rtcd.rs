//! The rtcd relay: [`Relay`] over rtcd's gRPC signaling contract (`rtcd.v1`).
//!
//! * Hosts: `rtcd.url`'s host name is resolved every `resolve_interval_seconds`; each address
//!   is one rtcd host (a literal IP is a single host). Health comes from each host's
//!   `GET /readyz` on its HTTP API (`rtcd.api_port`), and a room is placed by rendezvous
//!   hashing over the ready hosts ([`crate::placement`]), so every proxy replica picks the same
//!   host without shared state.
//! * Transport: one tonic `Channel` (one HTTP/2 connection) per host, TLS when the URL is
//!   `https` (CA bundle, server name and client certificate from config); one bidirectional
//!   stream per client session.
//! * Authentication: the proxy logs in to each host's `POST /login` with its client ID and
//!   auth key and sends the bearer token as `authorization` metadata; a stream refused with
//!   UNAUTHENTICATED (token expired, rtcd restarted) triggers one re-login and retry.
//! * Sessions: rtcd session IDs are `<instance>-<proxy session>` with a random instance part,
//!   so replicas sharing one client ID never collide in rtcd's tenant namespace.
//!
//! rtcd's `SessionClosed` reaches the session as [`RelayEvent::Closed`] with its reason (the
//! session tells a failed media connection from a lost media server by it). When a stream ends
//! without one (rtcd died or became unreachable), the event channel just closes and the session
//! reports `media_server_lost`.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtcd_proto::v1 as pb;
use rtcd_proto::v1::rooms_client::RoomsClient;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{
    BoxFuture, EndReason, JoinRequest, LINK_CAPACITY, MediaEnd, Relay, RelayCommand, RelayError,
    RelayEvent, RelayLink, Resumed, Waiting,
};
use crate::config::RtcdConfig;
use crate::placement::{HostHealth, HostSet};
use crate::policy::{Permissions, Role, TrackSource};
use crate::protocol::{Candidate, Identity, Participant, RoomName};
use crate::rooms::{
    BanInfo, ControlError, LobbyEntry, ParticipantInfo, Revocation, RoomControl, RoomDetail,
    RoomPolicy, RoomSummary, TrackInfo,
};

/// How long a host may take to say whether it has a room before placement goes on without it.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after opening a new room the relay looks whether another replica opened it
/// elsewhere at the same moment.
const SPLIT_CHECK_DELAY: Duration = Duration::from_secs(2);

/// How long opening a stream and receiving `Joined` may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Re-login this long before a bearer token's announced expiry.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// Why the relay could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RtcdRelayError {
    /// A file named in `[rtcd]` could not be read.
    #[error("{key}: {message}")]
    Config {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// One rtcd host: its gRPC channel and its HTTP API (health, login).
struct Host {
    /// One HTTP/2 connection, shared by every session placed here.
    channel: Channel,
    /// `scheme://name-or-ip:api_port`.
    api: String,
    /// For `api`; under TLS it resolves the service name to this host's address.
    http: reqwest::Client,
}

/// TLS material from config, kept to build each host's clients.
#[derive(Default)]
struct TlsMaterial {
    /// PEM CA bundle; None = web PKI roots.
    ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key (mutual TLS).
    client: Option<(Vec<u8>, Vec<u8>)>,
}

struct Login {
    token: String,
    renew_at: Instant,
}

/// The rtcd implementation of [`Relay`].
pub struct RtcdRelay {
    client_id: String,
    auth_key: String,
    instance: String,
    tls: TlsMaterial,
    hosts: Arc<HostSet>,
    /// Host key (`ip:grpc_port`, identical on every replica) -> the host.
    channels: Mutex<HashMap<String, Arc<Host>>>,
    logins: tokio::sync::Mutex<HashMap<String, Login>>,
    /// `[webhooks]`: sent to every host after each login and when a host becomes ready.
    webhooks: Mutex<Option<pb::ConfigureWebhooksRequest>>,
    /// `rtcd.cpu_weighted_placement`.
    cpu_weighted: bool,
    /// Itself, for the background checks a join starts (see [`RtcdRelay::heal`]).
    this: std::sync::Weak<RtcdRelay>,
}

impl RtcdRelay {
    /// Builds the relay and starts host discovery and health probing (stopped by `cancel`).
    /// Returns once the first resolution and probe have run, so a join right after start can
    /// already be placed.
    pub async fn start(
        config: &RtcdConfig,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, RtcdRelayError> {
        let auth_key = if config.auth_key_file.is_empty() {
            config.auth_key.expose().to_owned()
        } else {
            std::fs::read_to_string(&config.auth_key_file)
                .map_err(|e| RtcdRelayError::Config {
                    key: "rtcd.auth_key_file",
                    message: e.to_string(),
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        };
        let read = |key: &'static str, path: &str| {
            std::fs::read(path).map_err(|e| RtcdRelayError::Config {
                key,
                message: format!("{path}: {e}"),
            })
        };
        let mut tls = TlsMaterial::default();
        if !config.ca_file.is_empty() {
            let ca = read("rtcd.ca_file", &config.ca_file)?;
            reqwest::Certificate::from_pem(&ca).map_err(|e| RtcdRelayError::Config {
                key: "rtcd.ca_file",
                message: e.to_string(),
            })?;
            tls.ca_pem = Some(ca);
        }
        if !config.client_cert_file.is_empty() {
            let cert = read("rtcd.client_cert_file", &config.client_cert_file)?;
            let key = read("rtcd.client_key_file", &config.client_key_file)?;
            let mut pem = cert.clone();
            pem.extend_from_slice(&key);
            reqwest::Identity::from_pem(&pem).map_err(|e| RtcdRelayError::Config {
                key: "rtcd.client_cert_file",
                message: e.to_string(),
            })?;
            tls.client = Some((cert, key));
        }
        let mut discoveries = Vec::new();
        for entry in config.urls() {
            let url = reqwest::Url::parse(entry).map_err(|e| RtcdRelayError::Config {
                key: "rtcd.url",
                message: format!("{entry}: {e}"),
            })?;
            let host_name = url
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let server_name = if config.server_name.is_empty() {
                host_name.clone()
            } else {
                config.server_name.clone()
            };
            discoveries.push(Discovery {
                https: url.scheme() == "https",
                grpc_port: url.port_or_known_default().unwrap_or(443),
                api_port: config.api_port,
                host_name,
                server_name,
                last: Mutex::new(Vec::new()),
            });
        }
        let mut instance = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut instance);
        let relay = Arc::new_cyclic(|this| Self {
            client_id: config.client_id.clone(),
            auth_key,
            instance: instance.iter().map(|b| format!("{b:02x}")).collect(),
            tls,
            hosts: Arc::new(HostSet::default()),
            channels: Mutex::new(HashMap::new()),
            logins: tokio::sync::Mutex::new(HashMap::new()),
            webhooks: Mutex::new(None),
            cpu_weighted: config.cpu_weighted_placement,
            this: this.clone(),
        });
        relay.refresh_hosts(&discoveries).await;
        relay.probe().await;
        let weak = Arc::downgrade(&relay);
        let (resolve_every, probe_every) = (
            Duration::from_secs(config.resolve_interval_seconds.max(1)),
            Duration::from_secs(config.health_interval_seconds.max(1)),
        );
        tokio::spawn(async move {
            let mut resolve = tokio::time::interval(resolve_every);
            let mut probe = tokio::time::interval(probe_every);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = resolve.tick() => {
                        let Some(relay) = weak.upgrade() else { return };
                        relay.refresh_hosts(&discoveries).await;
                    }
                    _ = probe.tick() => {
                        let Some(relay) = weak.upgrade() else { return };
                        relay.probe().await;
                    }
                }
            }
        });
        Ok(relay)
    }

    /// The candidate hosts and their health (for `/readyz` and metrics).
    pub fn hosts(&self) -> &HostSet {
        &self.hosts
    }

    async fn refresh_hosts(&self, discoveries: &[Discovery]) {
        let mut found: Vec<(String, &Discovery, IpAddr)> = Vec::new();
        for d in discoveries {
            let addrs: Vec<IpAddr> = match d.host_name.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => {
                    match tokio::net::lookup_host((d.host_name.as_str(), d.grpc_port)).await {
                        Ok(addrs) => {
                            let addrs: Vec<IpAddr> = addrs
                                .map(|a| a.ip())
                                .collect::<BTreeSet<_>>()
                                .into_iter()
                                .collect();
                            *d.last
                                .lock()
                                .expect("resolution cache lock is never poisoned") = addrs.clone();
                            addrs
                        }
                        Err(e) => {
                            // Keep the last known hosts: a DNS hiccup must not empty the pool.
                            tracing::warn!(host = %d.host_name, error = %e, "cannot resolve rtcd hosts");
                            d.last
                                .lock()
                                .expect("resolution cache lock is never poisoned")
                                .clone()
                        }
                    }
                }
            };
            for ip in addrs {
                found.push((SocketAddr::new(ip, d.grpc_port).to_string(), d, ip));
            }
        }
        {
            let mut channels = self
                .channels
                .lock()
                .expect("channel map lock is never poisoned");
            channels.retain(|key, _| found.iter().any(|(k, _, _)| k == key));
            for (key, d, ip) in &found {
                if channels.contains_key(key) {
                    continue;
                }
                match self.connect(d, *ip) {
                    Ok(host) => {
                        channels.insert(key.clone(), Arc::new(host));
                    }
                    Err(e) => tracing::warn!(host = %key, error = %e, "cannot set up rtcd host"),
                }
            }
        }
        self.hosts.set_hosts(found.into_iter().map(|(k, _, _)| k));
    }

    /// The channel (connected lazily) and API client for the host at `ip`.
    fn connect(&self, d: &Discovery, ip: IpAddr) -> Result<Host, String> {
        let literal = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let scheme = if d.https { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{literal}:{}", d.grpc_port))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(4))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        let api = if d.https {
            let mut tls = ClientTlsConfig::new().domain_name(d.server_name.clone());
            match &self.tls.ca_pem {
                Some(ca) => {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
                    let cert = reqwest::Certificate::from_pem(ca).map_err(|e| e.to_string())?;
                    http = http
                        .add_root_certificate(cert)
                        .tls_built_in_root_certs(false);
                }
                None => tls = tls.with_webpki_roots(),
            }
            if let Some((cert, key)) = &self.tls.client {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
                let mut pem = cert.clone();
                pem.extend_from_slice(key);
                http = http.identity(reqwest::Identity::from_pem(&pem).map_err(|e| e.to_string())?);
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
            // Certificates name the service, so the API is addressed by that name, pinned to
            // this host's address.
            http = http.resolve(&d.server_name, SocketAddr::new(ip, d.api_port));
            format!("https://{}:{}", d.server_name, d.api_port)
        } else {
            format!("http://{literal}:{}", d.api_port)
        };
        Ok(Host {
            channel: endpoint.connect_lazy(),
            api,
            http: http.build().map_err(|e| e.to_string())?,
        })
    }

    /// Probes every host's `/readyz` concurrently and records the results.
    async fn probe(&self) {
        let hosts: Vec<(String, Arc<Host>)> = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned")
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        let probes = hosts.into_iter().map(|(key, host)| async move {
            let ready = host
                .http
                .get(format!("{}/readyz", host.api))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            let load = if ready {
                system_load(&host, self.cpu_weighted).await
            } else {
                None
            };
            (
                key,
                if ready {
                    HostHealth::Ready
                } else {
                    HostHealth::Unready
                },
                load,
            )
        });
        for (key, health, load) in futures_util::future::join_all(probes).await {
            if let Some(load) = load
                && self.hosts.set_load(&key, load)
            {
                tracing::debug!(host = %key, load, level = crate::placement::level_of(load), "rtcd host load level changed");
            }
            if self.hosts.set_health(&key, health) {
                tracing::info!(host = %key, ?health, "rtcd host health changed");
                if health == HostHealth::Ready {
                    // A host that comes (back) up may be a restarted rtcd, which keeps webhook
                    // settings in memory only.
                    self.push_webhooks(&key).await;
                }
            }
        }
    }

    /// A bearer token for `host`, logging in if there is none, it is near expiry, or `renew`.
    async fn token(&self, key: &str, host: &Host, renew: bool) -> Result<String, RelayError> {
        let (token, fresh) = self.login(key, host, renew).await?;
        if fresh {
            // Every login may follow an rtcd restart, and rtcd keeps webhook settings in
            // memory only: send them before any session of ours can produce an event there.
            self.send_webhooks(key, host, &token).await;
        }
        Ok(token)
    }

    /// The cached bearer token for `host`, or a new one from `POST /login` (then `true`).
    async fn login(
        &self,
        key: &str,
        host: &Host,
        renew: bool,
    ) -> Result<(String, bool), RelayError> {
        let api = host.api.as_str();
        let mut logins = self.logins.lock().await;
        if !renew
            && let Some(login) = logins.get(key)
            && login.renew_at > Instant::now()
        {
            return Ok((login.token.clone(), false));
        }
        let response = host
            .http
            .post(format!("{api}/login"))
            .json(&serde_json::json!({"clientID": self.client_id, "authKey": self.auth_key}))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    suspect(&self.hosts, key, "its HTTP API does not answer");
                }
                RelayError::Unavailable(format!("media server login failed: {e}"))
            })?;
        let status = response.status();
        if !status.is_success() {
            tracing::error!(host = %api, %status, "rtcd refused this proxy's credentials (is rtcd.client_id registered on every rtcd host?)");
            return Err(RelayError::Unavailable(format!(
                "media server login refused ({status})"
            )));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| RelayError::Unavailable(format!("media server login: {e}")))?;
        let token = body["bearerToken"]
            .as_str()
            .ok_or_else(|| RelayError::Unavailable("media server login: no bearerToken".into()))?
            .to_owned();
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lifetime = Duration::from_secs(
            body["expiresAt"]
                .as_u64()
                .unwrap_or(now_unix + 300)
                .saturating_sub(now_unix),
        );
        let renew_at = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        logins.insert(
            key.to_owned(),
            Login {
                token: token.clone(),
                renew_at,
            },
        );
        Ok((token, true))
    }

    /// Sends `[webhooks]` to the host at `key` (logging in if needed).
    async fn push_webhooks(&self, key: &str) {
        if self.webhooks_request().is_none() {
            return;
        }
        let host = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned")
            .get(key)
            .cloned();
        if let Some(host) = host
            && let Ok((token, _)) = self.login(key, &host, false).await
        {
            self.send_webhooks(key, &host, &token).await;
        }
    }

    fn webhooks_request(&self) -> Option<pb::ConfigureWebhooksRequest> {
        self.webhooks
            .lock()
            .expect("webhook settings lock is never poisoned")
            .clone()
    }

    async fn send_webhooks(&self, key: &str, host: &Host, token: &str) {
        let Some(request) = self.webhooks_request() else {
            return;
        };
        let mut client = RoomsClient::new(host.channel.clone());
        match client.configure_webhooks(authed(token, request)).await {
            Ok(_) => tracing::debug!(host = %key, "webhook settings sent"),
            // The secret is never in the status text: rtcd's messages name the URL or rule.
            Err(status) => {
                tracing::warn!(host = %key, code = ?status.code(), error = %status.message(), "rtcd refused this proxy's [webhooks] settings; room events from it are not delivered")
            }
        }
    }

    /// The host `room` lives on or is placed on (sessions and room administration alike), or
    /// why there is none. With several ready hosts, they are asked first whether they have the
    /// room (`Rooms.HasRoom`): placement is weighted by load, and a room placed while the
    /// weights were different must be found where it is, not opened a second time.
    async fn place(&self, room: &str) -> Result<(String, Arc<Host>), &'static str> {
        self.place_found(room, &[])
            .await
            .map(|(key, host, _)| (key, host))
    }

    /// [`RtcdRelay::place`] among the ready hosts not in `except`, and whether the room was
    /// found on its host (false: the host is where a new room goes).
    async fn place_found(
        &self,
        room: &str,
        except: &[String],
    ) -> Result<(String, Arc<Host>, bool), &'static str> {
        let ready: Vec<_> = self
            .all_hosts(true)
            .into_iter()
            .filter(|(k, _)| !except.contains(k))
            .collect();
        if ready.len() > 1
            && let Some((key, host)) = self.locate(room, &ready).await
        {
            return Ok((key, host, true));
        }
        let key = self
            .hosts
            .place_except(room, except)
            .ok_or("no media server is ready")?;
        let host = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned")
            .get(&key)
            .cloned()
            .ok_or("media server went away")?;
        Ok((key, host, false))
    }

    /// The ready host that has `room` (sessions or people waiting), if any answers so within
    /// [`LOCATE_TIMEOUT`]; a host that does not answer is skipped (its room, if any, is lost
    /// with it, and the passive health check will mark it). If several have it (a split, see
    /// [`RtcdRelay::heal`]), the one with the smallest key, which every replica agrees on; the
    /// others are told to move the room there.
    async fn locate(
        &self,
        room: &str,
        hosts: &[(String, Arc<Host>)],
    ) -> Option<(String, Arc<Host>)> {
        let mut present = self.present(room, hosts).await;
        present.sort_by(|a, b| a.0.cmp(&b.0));
        if present.len() > 1 {
            self.spawn_heal(room, Duration::ZERO);
        }
        present.into_iter().next()
    }

    /// The hosts among `hosts` that say they have `room` within [`LOCATE_TIMEOUT`].
    async fn present(&self, room: &str, hosts: &[(String, Arc<Host>)]) -> Vec<(String, Arc<Host>)> {
        let request = pb::HasRoomRequest {
            call_id: room.to_owned(),
        };
        let asks = hosts.iter().map(|(key, host)| {
            let request = request.clone();
            async move {
                let answer =
                    tokio::time::timeout(
                        LOCATE_TIMEOUT,
                        self.rooms_call(key, host, request, |mut c, r| async move {
                            c.has_room(r).await
                        }),
                    )
                    .await;
                matches!(answer, Ok(Ok(pb::HasRoomResponse { present: true })))
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        hosts
            .iter()
            .zip(answers)
            .filter(|(_, present)| *present)
            .map(|((k, h), _)| (k.clone(), h.clone()))
            .collect()
    }

    /// Checks `room` again after `delay` (in the background) and heals a split.
    fn spawn_heal(&self, room: &str, delay: Duration) {
        if let Some(relay) = self.this.upgrade() {
            let room = room.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                relay.heal(&room).await;
            });
        }
    }

    /// Two replicas that place the first joins of a new room at the same moment, while they
    /// see different load levels (probes seconds apart), can open it on two hosts: a split
    /// room, whose two halves do not see each other. When `room` is on several ready hosts,
    /// it stays on the one with the smallest key (every replica agrees on it, whatever the
    /// loads) and the others close their sessions of it ("moved", `Rooms.MoveRoom`); those
    /// clients rejoin and [`RtcdRelay::locate`] finds the room on that host.
    async fn heal(&self, room: &str) {
        let ready = self.all_hosts(true);
        if ready.len() < 2 {
            return;
        }
        let mut present = self.present(room, &ready).await;
        if present.len() < 2 {
            return;
        }
        present.sort_by(|a, b| a.0.cmp(&b.0));
        let request = pb::MoveRoomRequest {
            call_id: room.to_owned(),
        };
        for (key, host) in &present[1..] {
            let moved = self
                .rooms_call(key, host, request.clone(), |mut c, r| async move {
                    c.move_room(r).await
                })
                .await;
            tracing::info!(room, from = %key, to = %present[0].0, moved = ?moved.map(|r| r.sessions_closed), "a room opened on two hosts at once; moving it to one");
        }
    }

    /// [`RtcdRelay::place`] for room administration.
    async fn host_for(&self, room: &str) -> Result<(String, Arc<Host>), ControlError> {
        self.place(room)
            .await
            .map_err(|e| ControlError::Unavailable(e.into()))
    }

    /// Every known host (`ready_only`: only those that answer `/readyz`).
    fn all_hosts(&self, ready_only: bool) -> Vec<(String, Arc<Host>)> {
        let channels = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned");
        self.hosts
            .snapshot()
            .into_iter()
            .filter(|(_, h)| !ready_only || *h == HostHealth::Ready)
            .filter_map(|(k, _)| channels.get(&k).map(|h| (k, h.clone())))
            .collect()
    }

    /// One `rtcd.v1.Rooms` call on a host with this proxy's bearer token, logging in again
    /// once if rtcd no longer knows the token.
    async fn rooms_call<Req, Resp, F, Fut>(
        &self,
        key: &str,
        host: &Host,
        request: Req,
        call: F,
    ) -> Result<Resp, ControlError>
    where
        Req: Clone,
        F: Fn(RoomsClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut renew = false;
        loop {
            let token = self
                .token(key, host, renew)
                .await
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
            let client = RoomsClient::new(host.channel.clone());
            let result =
                tokio::time::timeout(JOIN_TIMEOUT, call(client, authed(&token, request.clone())))
                    .await
                    .map_err(|_| {
                        ControlError::Unavailable("the media server did not answer in time".into())
                    })?;
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unauthenticated && !renew => {
                    renew = true;
                }
                Err(status) => return Err(control_error(&status)),
            }
        }
    }

    /// Opens the session's stream on the host its room is placed on. A host that cannot be
    /// reached is marked unready at once (passive health: the probe marks it ready again when
    /// it answers `/readyz`), and the join is placed again, on the next host, rather than
    /// failing: after a host dies, rejoining clients land on a live one without waiting for
    /// the next probe.
    async fn open(&self, request: &JoinRequest) -> Result<RelayLink, RelayError> {
        let room = request.grant.room.as_str();
        if let Some((session, secret)) = request
            .resume
            .as_ref()
            .and_then(|t| parse_resume_token(t.expose()))
        {
            // The session lives where its room is. Anything but a resumed session (it expired,
            // its host is gone, the token is stale) falls through to an ordinary join: the
            // client then builds a new peer connection.
            if let Ok((key, host)) = self.place(room).await {
                match self
                    .resume_on(request, &key, &host, &session, &secret)
                    .await
                {
                    Ok(link) => return Ok(link),
                    Err(e) => {
                        tracing::debug!(session = %request.session, host = %key, error = %e, "no session to resume; joining afresh")
                    }
                }
            }
        }
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<RelayError> = None;
        loop {
            let (key, host, found) = match self.place_found(room, &tried).await {
                Ok(placed) => placed,
                Err(e) => {
                    return Err(match last {
                        Some(RelayError::Unavailable(_)) | None if !tried.is_empty() => {
                            RelayError::Unavailable(format!(
                                "no reachable media server (tried {})",
                                tried.join(", ")
                            ))
                        }
                        Some(e) => e,
                        None => RelayError::Unavailable(e.into()),
                    });
                }
            };
            match self.open_on(request, &key, &host).await {
                // Only a host now counted unready (it failed at the transport level) is left
                // for another: a room whose host merely answered an error stays where it is.
                Err(RelayError::Unavailable(e)) if !self.hosts.is_ready(&key) => {
                    tracing::info!(session = %request.session, host = %key, error = %e, "rtcd host unreachable; placing the join again");
                    tried.push(key);
                    last = Some(RelayError::Unavailable(e));
                }
                // The host is at capacity for new rooms (the room is not there: rooms already
                // on a host are found by `place` and always taken): count it full until its
                // next probe, and place the room on another host.
                Err(RelayError::HostCapacity(e)) => {
                    self.hosts.set_load(&key, 1.0);
                    tracing::info!(session = %request.session, host = %key, "rtcd host at capacity; placing the new room on another host");
                    tried.push(key);
                    last = Some(RelayError::Refused(e));
                }
                Ok(link) => {
                    // A room opened here just now may have been opened at the same moment
                    // elsewhere by another replica: look again once both joins have landed.
                    if !found && self.all_hosts(true).len() > 1 {
                        self.spawn_heal(room, SPLIT_CHECK_DELAY);
                    }
                    return Ok(link);
                }
                other => return other,
            }
        }
    }

    /// [`RtcdRelay::open`] on one host.
    async fn open_on(
        &self,
        request: &JoinRequest,
        key: &str,
        host: &Host,
    ) -> Result<RelayLink, RelayError> {
        let room = request.grant.room.as_str();
        let session_id = format!("{}-{}", self.instance, request.session.0);
        let grant = &request.grant;
        let join = pb::ClientSignal {
            signal: Some(pb::client_signal::Signal::Join(pb::Join {
                call_id: room.to_owned(),
                session_id: session_id.clone(),
                user_id: grant.identity.as_str().to_owned(),
                display_name: display_name(grant.name.as_deref()),
                permissions: Some(permissions_to_pb(&grant.permissions)),
                role: grant.role.as_str().to_owned(),
                token: Some(token_info(grant)),
                policy: Some(policy_to_pb(request.policy)),
            })),
        };
        let (to_rtcd, inbound, first) = self.start_stream(key, host, join).await?;
        match first {
            // Joined at once, or held by the room's policy (admitted later, `Admitted`).
            Some(
                first @ (pb::server_signal::Signal::Joined(_)
                | pb::server_signal::Signal::Waiting(_)),
            ) => {
                let (waiting, resume_token) = match first {
                    pb::server_signal::Signal::Waiting(w) => (
                        Some(Waiting {
                            reason: w.reason,
                            timeout_seconds: w.timeout_seconds,
                        }),
                        None,
                    ),
                    pb::server_signal::Signal::Joined(j) => (
                        None,
                        (!j.resume_secret.is_empty())
                            .then(|| resume_token(&session_id, &j.resume_secret)),
                    ),
                    _ => (None, None),
                };
                tracing::debug!(session = %request.session, rtcd_session = %session_id, host = %key, waiting = ?waiting, "session opened on rtcd");
                let (hosts, key) = (self.hosts.clone(), key.to_owned());
                let lost = move || suspect(&hosts, &key, "a session's stream broke");
                let mut link =
                    spawn_pumps(to_rtcd, inbound, EventTranslator::new(session_id), lost);
                link.waiting = waiting;
                link.resume_token = resume_token;
                Ok(link)
            }
            Some(pb::server_signal::Signal::SessionClosed(c)) => Err(RelayError::Refused(c.reason)),
            Some(pb::server_signal::Signal::Error(e)) => Err(RelayError::Refused(e.message)),
            _ => Err(RelayError::Unavailable(
                "media server ended the stream".into(),
            )),
        }
    }

    /// Takes over the parked session `session` on `host` (its stream broke with the proxy that
    /// held it); `Refused` / `Unavailable` when it cannot be, and the caller joins afresh.
    async fn resume_on(
        &self,
        request: &JoinRequest,
        key: &str,
        host: &Host,
        session: &str,
        secret: &str,
    ) -> Result<RelayLink, RelayError> {
        let grant = &request.grant;
        let resume = pb::ClientSignal {
            signal: Some(pb::client_signal::Signal::Resume(pb::Resume {
                call_id: grant.room.as_str().to_owned(),
                session_id: session.to_owned(),
                user_id: grant.identity.as_str().to_owned(),
                secret: secret.to_owned(),
                token: Some(token_info(grant)),
            })),
        };
        let (to_rtcd, inbound, first) = self.start_stream(key, host, resume).await?;
        let Some(pb::server_signal::Signal::Resumed(resumed)) = first else {
            return Err(RelayError::Unavailable(
                "media server did not resume the session".into(),
            ));
        };
        tracing::info!(session = %request.session, rtcd_session = %session, host = %key, "session resumed on rtcd");
        let mut translator = EventTranslator::new(session.to_owned());
        let participants = translator.seed(&resumed.participants);
        let (hosts, key) = (self.hosts.clone(), key.to_owned());
        let lost = move || suspect(&hosts, &key, "a session's stream broke");
        let mut link = spawn_pumps(to_rtcd, inbound, translator, lost);
        link.resume_token = Some(resume_token(session, secret));
        link.resumed = Some(Resumed {
            participants,
            role: role_from(&resumed.role),
            permissions: permissions_from_pb(resumed.permissions),
        });
        Ok(link)
    }

    /// Opens a session stream on `host` with `first` as its first message and reads rtcd's
    /// first answer (`None`: the stream ended). Logs in again once if the bearer token was
    /// refused; a host that does not answer in [`JOIN_TIMEOUT`], or whose endpoint is
    /// unavailable, is counted unready.
    async fn start_stream(
        &self,
        key: &str,
        host: &Host,
        first: pb::ClientSignal,
    ) -> Result<
        (
            mpsc::Sender<pb::ClientSignal>,
            tonic::Streaming<pb::ServerSignal>,
            Option<pb::server_signal::Signal>,
        ),
        RelayError,
    > {
        let mut renew = false;
        loop {
            let token = self.token(key, host, renew).await?;
            let (to_rtcd, outbound) = mpsc::channel(LINK_CAPACITY);
            to_rtcd
                .try_send(first.clone())
                .expect("a fresh channel has room");
            let mut call = tonic::Request::new(ReceiverStream::new(outbound));
            let value = format!("Bearer {token}").parse().map_err(|_| {
                RelayError::Unavailable("media server token is not a header value".into())
            })?;
            call.metadata_mut().insert("authorization", value);
            let mut client = SignalingClient::new(host.channel.clone());
            let opened = tokio::time::timeout(JOIN_TIMEOUT, async {
                let mut inbound = client.session(call).await?.into_inner();
                let first = inbound.message().await?;
                Ok::<_, tonic::Status>((inbound, first))
            })
            .await
            .map_err(|_| {
                suspect(&self.hosts, key, "it did not answer a join in time");
                RelayError::Unavailable("media server did not answer the join in time".into())
            })?;
            match opened {
                Ok((inbound, first)) => {
                    return Ok((to_rtcd, inbound, first.and_then(|m| m.signal)));
                }
                Err(status) if status.code() == tonic::Code::Unauthenticated && !renew => {
                    renew = true
                }
                Err(status) => {
                    if status.code() == tonic::Code::Unavailable {
                        suspect(&self.hosts, key, "its gRPC endpoint does not answer");
                    }
                    return Err(status_to_error(&status));
                }
            }
        }
    }
}

/// The token facts rtcd checks revocations against.
fn token_info(grant: &crate::auth::Grant) -> pb::TokenInfo {
    pb::TokenInfo {
        issued_at: grant.issued_at.unwrap_or(0),
        token_id: grant.token_id.clone().unwrap_or_default(),
        expires_at: grant.expires_at,
    }
}

/// Longest resume token accepted from a client (a real one is about 100 bytes).
const MAX_RESUME_TOKEN_BYTES: usize = 512;

/// What a client presents to resume its session: `r1.<base64url(rtcd session ID)>.<rtcd's
/// resume secret>`. It names no host (the session is found where its room is) and is worth
/// nothing without the end user's own valid token for the same identity and room, which rtcd
/// checks along with the secret.
fn resume_token(session: &str, secret: &str) -> crate::config::Secret {
    use base64::Engine as _;
    let session = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(session);
    crate::config::Secret::new(format!("r1.{session}.{secret}"))
}

/// The rtcd session ID and secret of a resume token; `None` for anything malformed.
fn parse_resume_token(token: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    if token.len() > MAX_RESUME_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (Some("r1"), Some(session), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let session = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(session)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())?;
    if session.is_empty()
        || secret.is_empty()
        || !secret
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return None;
    }
    Some((session, secret.to_owned()))
}

/// The load a host's placement weight comes from, from its `/system`: its share of capacity in
/// use, its share of its forwarding budget, and (with `cpu`) its CPU use; forwarding and CPU
/// alone never count as full (below 1.0): they shrink a host's share of new rooms, only
/// capacity closes it to them. `None` when it
/// cannot be read, which keeps the previous level.
async fn system_load(host: &Host, cpu: bool) -> Option<f64> {
    let body: serde_json::Value = host
        .http
        .get(format!("{}/system", host.api))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let read = |key| body.get(key).and_then(serde_json::Value::as_f64);
    let capacity = read("capacity_used").unwrap_or(0.0);
    let cpu_load = if cpu {
        read("cpu_load").unwrap_or(0.0).min(0.99)
    } else {
        0.0
    };
    // The host's forwarding budget, when its operator set one: like CPU, it weights placement
    // but never closes the host.
    let forwarding = read("forwarding_used").unwrap_or(0.0).min(0.99);
    Some(capacity.max(cpu_load).max(forwarding))
}

/// Marks a host that failed at the transport level unready until its next good probe.
fn suspect(hosts: &HostSet, key: &str, why: &str) {
    if hosts.set_health(key, HostHealth::Unready) {
        tracing::info!(host = %key, why, "rtcd host unreachable; new rooms go elsewhere until it answers /readyz again");
    }
}

impl RtcdRelay {
    /// One `rtcd.v1.Rooms` call on the host `room` is placed on; also returns that host's key.
    async fn on_room_host<Req, Resp, F, Fut>(
        &self,
        room: &RoomName,
        request: Req,
        call: F,
    ) -> Result<(String, Resp), ControlError>
    where
        Req: Clone,
        F: Fn(RoomsClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let (key, host) = self.host_for(room.as_str()).await?;
        let response = self.rooms_call(&key, &host, request, call).await?;
        Ok((key, response))
    }

    /// The same call on every known host (ready or not) but `except`, concurrently; see
    /// [`gathered`] for how the answers combine.
    async fn on_every_host<Req, Resp, F, Fut>(
        &self,
        except: Option<&str>,
        request: Req,
        call: F,
        ignore_not_found: bool,
    ) -> Result<Vec<Resp>, ControlError>
    where
        Req: Clone,
        F: Fn(RoomsClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let hosts: Vec<_> = self
            .all_hosts(false)
            .into_iter()
            .filter(|(k, _)| Some(k.as_str()) != except)
            .collect();
        let calls = hosts
            .iter()
            .map(|(key, host)| self.rooms_call(key, host, request.clone(), &call));
        gathered(
            &hosts,
            futures_util::future::join_all(calls).await,
            ignore_not_found,
        )
    }
}

/// What a call made on every known host returned: the results of the hosts that answered,
/// or `Unavailable` naming those that did not (the calls are idempotent: the caller retries).
fn gathered<Resp>(
    hosts: &[(String, Arc<Host>)],
    results: Vec<Result<Resp, ControlError>>,
    ignore_not_found: bool,
) -> Result<Vec<Resp>, ControlError> {
    let mut answers = Vec::new();
    let mut failed = Vec::new();
    for ((key, _), result) in hosts.iter().zip(results) {
        match result {
            Ok(r) => answers.push(r),
            Err(ControlError::Unavailable(e)) => failed.push(format!("{key}: {e}")),
            Err(ControlError::NotFound(_)) if ignore_not_found => {}
            Err(e) => return Err(e),
        }
    }
    if !failed.is_empty() {
        return Err(ControlError::Unavailable(format!(
            "stored on {} of {} media servers; retry (failed: {})",
            hosts.len() - failed.len(),
            hosts.len(),
            failed.join("; ")
        )));
    }
    Ok(answers)
}

/// A request with the bearer token as `authorization` metadata.
fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// An rtcd status from a `Rooms` call as the proxy's error.
fn control_error(status: &tonic::Status) -> ControlError {
    use tonic::Code;
    let message = status.message().to_owned();
    match status.code() {
        Code::NotFound => ControlError::NotFound(message),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ControlError::Invalid(message)
        }
        Code::PermissionDenied => ControlError::Forbidden(message),
        code => ControlError::Unavailable(format!("{code:?}: {message}")),
    }
}

fn participant_from(p: pb::ParticipantInfo) -> ParticipantInfo {
    ParticipantInfo {
        session_id: p.session_id,
        identity: p.user_id,
        name: p.display_name,
        role: p.role,
        permissions: permissions_from_pb(p.permissions),
        joined_at_ms: p.joined_at_ms,
        tracks: p
            .tracks
            .into_iter()
            .filter_map(|t| {
                Some(TrackInfo {
                    source: source_of(t.kind())?,
                    track_id: t.track_id,
                    muted: t.muted,
                })
            })
            .collect(),
    }
}

impl RoomControl for RtcdRelay {
    fn list_rooms(&self) -> BoxFuture<'_, Result<Vec<RoomSummary>, ControlError>> {
        Box::pin(async move {
            let hosts = self.all_hosts(true);
            let calls = hosts.iter().map(|(key, host)| {
                self.rooms_call(key, host, pb::ListRoomsRequest {}, |mut c, r| async move {
                    c.list_rooms(r).await
                })
            });
            let mut rooms = Vec::new();
            for result in futures_util::future::join_all(calls).await {
                for r in result?.rooms {
                    rooms.push(RoomSummary {
                        name: r.call_id,
                        created_at_ms: r.created_at_ms,
                        participant_count: r.participant_count,
                    });
                }
            }
            rooms.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(rooms)
        })
    }

    fn get_room<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> BoxFuture<'a, Result<RoomDetail, ControlError>> {
        Box::pin(async move {
            let request = pb::GetRoomRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move { c.get_room(r).await })
                .await?;
            Ok(RoomDetail {
                name: r.call_id,
                created_at_ms: r.created_at_ms,
                participant_count: r.participant_count,
                participants: r.participants.into_iter().map(participant_from).collect(),
            })
        })
    }

    fn remove<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        ban_seconds: u64,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<i64>), ControlError>> {
        Box::pin(async move {
            let request = pb::RemoveParticipantRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
                ban_seconds,
                reason: reason.to_owned(),
            };
            let remove =
                |mut c: RoomsClient<Channel>, r| async move { c.remove_participant(r).await };
            let (key, r) = self.on_room_host(room, request.clone(), remove).await?;
            if ban_seconds > 0 {
                // The ban is recorded on every host too: if this one dies and the room is
                // placed elsewhere, the user must still be kept out there.
                self.on_every_host(Some(&key), request, remove, true)
                    .await?;
            }
            Ok((
                r.sessions_closed,
                (r.banned_until > 0).then_some(r.banned_until),
            ))
        })
    }

    fn mute<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        source: TrackSource,
        request_unmute: bool,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::MuteTrackRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
                kind: kind_of(source) as i32,
            };
            let (_, r) = if request_unmute {
                self.on_room_host(room, request, |mut c, r| async move {
                    c.request_unmute(r).await
                })
                .await?
            } else {
                self.on_room_host(
                    room,
                    request,
                    |mut c, r| async move { c.mute_track(r).await },
                )
                .await?
            };
            Ok(r.sessions)
        })
    }

    fn update<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        role: Role,
        permissions: Permissions,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::UpdateParticipantRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
                role: role.as_str().to_owned(),
                permissions: Some(permissions_to_pb(&permissions)),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move {
                    c.update_participant(r).await
                })
                .await?;
            Ok(r.sessions)
        })
    }

    fn end<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::EndRoomRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move { c.end_room(r).await })
                .await?;
            Ok(r.sessions_closed)
        })
    }

    fn bans<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<Vec<BanInfo>, ControlError>> {
        Box::pin(async move {
            let request = pb::ListBansRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(
                    room,
                    request,
                    |mut c, r| async move { c.list_bans(r).await },
                )
                .await?;
            Ok(r.bans
                .into_iter()
                .map(|b| BanInfo {
                    room: b.call_id,
                    identity: b.user_id,
                    until: b.until,
                    reason: b.reason,
                    created_at: b.created_at,
                })
                .collect())
        })
    }

    fn unban<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            let request = pb::UnbanRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
            };
            let unban = |mut c: RoomsClient<Channel>, r| async move { c.unban(r).await };
            // The room's host says whether there was a ban; the others only follow.
            let (key, _) = self.on_room_host(room, request.clone(), unban).await?;
            self.on_every_host(Some(&key), request, unban, true).await?;
            Ok(())
        })
    }

    fn revoke<'a>(
        &'a self,
        revocation: &'a Revocation,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::RevokeRequest {
                user_id: revocation.identity.clone().unwrap_or_default(),
                issued_before: revocation.issued_before.unwrap_or(0),
                token_id: revocation.token_id.clone().unwrap_or_default(),
                token_expires_at: revocation.token_expires_at.unwrap_or(0),
            };
            // Every known host, ready or not: a revocation must hold wherever the user joins
            // next.
            if self.all_hosts(false).is_empty() {
                return Err(ControlError::Unavailable("no media server is known".into()));
            }
            let answers = self
                .on_every_host(
                    None,
                    request,
                    |mut c, r| async move { c.revoke(r).await },
                    false,
                )
                .await?;
            Ok(answers.iter().map(|r| r.sessions_closed).sum())
        })
    }

    fn lobby<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> BoxFuture<'a, Result<Vec<LobbyEntry>, ControlError>> {
        Box::pin(async move {
            let request = pb::ListLobbyRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(
                    room,
                    request,
                    |mut c, r| async move { c.list_lobby(r).await },
                )
                .await?;
            Ok(r.waiting
                .into_iter()
                .map(|w| LobbyEntry {
                    identity: Identity::new(w.user_id),
                    name: (!w.display_name.is_empty()).then_some(w.display_name),
                    role: Some(role_from(&w.role)),
                    reason: w.reason,
                    since_ms: w.since_ms,
                })
                .collect())
        })
    }

    fn decide<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        admit: bool,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::LobbyDecisionRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
            };
            // The waiting sessions are held by the room's host only.
            let (_, r) = if admit {
                self.on_room_host(room, request, |mut c, r| async move { c.admit(r).await })
                    .await?
            } else {
                self.on_room_host(room, request, |mut c, r| async move { c.deny(r).await })
                    .await?
            };
            Ok(r.sessions)
        })
    }

    fn policy<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<RoomPolicy, ControlError>> {
        Box::pin(async move {
            let request = pb::GetRoomPolicyRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move {
                    c.get_room_policy(r).await
                })
                .await?;
            Ok(policy_from_pb(r))
        })
    }

    fn set_policy<'a>(
        &'a self,
        room: &'a RoomName,
        change: RoomPolicy,
        reset: bool,
    ) -> BoxFuture<'a, Result<RoomPolicy, ControlError>> {
        Box::pin(async move {
            // Merged once, at the room's host, then written whole to every host: hosts that
            // missed an earlier change cannot end up with a different policy.
            let current = if reset {
                RoomPolicy::default()
            } else {
                self.policy(room).await?
            };
            let merged = change.over(current);
            let request = pb::SetRoomPolicyRequest {
                call_id: room.as_str().to_owned(),
                policy: Some(policy_to_pb(merged)),
                reset: true,
            };
            let set = |mut c: RoomsClient<Channel>, r| async move { c.set_room_policy(r).await };
            // The room's host first: it applies the policy to those waiting there now.
            let (key, r) = self.on_room_host(room, request.clone(), set).await?;
            self.on_every_host(Some(&key), request, set, false).await?;
            Ok(policy_from_pb(r))
        })
    }
}

/// A room policy for the wire.
fn policy_to_pb(p: RoomPolicy) -> pb::RoomPolicy {
    pb::RoomPolicy {
        wait_for_host: p.wait_for_host,
        lobby: p.lobby,
        guests_allowed: p.guests_allowed,
        wait_timeout_seconds: p.wait_timeout_seconds,
        opened_by: p.opened_by.map(|o| match o {
            crate::rooms::Opener::Moderator => pb::RoomOpener::Moderator as i32,
            crate::rooms::Opener::Member => pb::RoomOpener::Member as i32,
        }),
    }
}

/// A room policy from the wire.
fn policy_from_pb(p: pb::RoomPolicy) -> RoomPolicy {
    RoomPolicy {
        wait_for_host: p.wait_for_host,
        lobby: p.lobby,
        guests_allowed: p.guests_allowed,
        wait_timeout_seconds: p.wait_timeout_seconds,
        opened_by: p.opened_by.and_then(|o| {
            match pb::RoomOpener::try_from(o).unwrap_or(pb::RoomOpener::Unspecified) {
                pb::RoomOpener::Unspecified => None,
                pb::RoomOpener::Moderator => Some(crate::rooms::Opener::Moderator),
                pb::RoomOpener::Member => Some(crate::rooms::Opener::Member),
            }
        }),
    }
}

impl Relay for RtcdRelay {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<RelayLink, RelayError>> {
        Box::pin(async move { self.open(&request).await })
    }

    fn rooms(&self) -> Option<&dyn RoomControl> {
        Some(self)
    }

    fn set_webhooks(&self, urls: Vec<String>, secret: crate::config::Secret) {
        *self
            .webhooks
            .lock()
            .expect("webhook settings lock is never poisoned") =
            Some(pb::ConfigureWebhooksRequest {
                secret: if urls.is_empty() {
                    String::new()
                } else {
                    secret.expose().to_owned()
                },
                urls,
            });
    }

    fn host_levels(&self) -> Vec<(String, u8)> {
        self.hosts.levels()
    }

    fn host_health(&self) -> Option<(usize, usize, usize)> {
        let mut counts = (0, 0, 0);
        for (_, health) in self.hosts.snapshot() {
            match health {
                HostHealth::Ready => counts.0 += 1,
                HostHealth::Unready => counts.1 += 1,
                HostHealth::Unknown => counts.2 += 1,
            }
        }
        Some(counts)
    }
}

/// One entry of `rtcd.url`.
struct Discovery {
    https: bool,
    host_name: String,
    server_name: String,
    grpc_port: u16,
    api_port: u16,
    /// The last successful resolution, kept when DNS fails.
    last: Mutex<Vec<IpAddr>>,
}

/// A refusing status as the relay's error: decided by the typed `JoinRefused` in its details,
/// then by its code; the message is only carried along, for the client and the logs. An rtcd
/// older than the typed refusals sends none (UNSPECIFIED): its refusals are plain
/// `media_refused` (see `JoinRefusal` in signaling.proto).
fn status_to_error(status: &tonic::Status) -> RelayError {
    use tonic::Code;
    let message = status.message().to_owned();
    let typed = <pb::JoinRefused as prost::Message>::decode(status.details())
        .map(|r| r.reason())
        .unwrap_or_default();
    match typed {
        pb::JoinRefusal::LobbyFull => return RelayError::LobbyFull(message),
        pb::JoinRefusal::Banned => return RelayError::Banned(message),
        pb::JoinRefusal::Revoked => return RelayError::Revoked(message),
        pb::JoinRefusal::GuestsNotAllowed => return RelayError::GuestsNotAllowed(message),
        pb::JoinRefusal::HostCapacity => return RelayError::HostCapacity(message),
        pb::JoinRefusal::Unspecified => {}
    }
    match status.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::AlreadyExists => RelayError::Refused(status.message().to_owned()),
        _ => RelayError::Unavailable(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// How long, after relaying `Leave`, the pumps keep both directions of rtcd's stream open
/// (until rtcd's `SessionClosed` or the stream's end): dropping the response stream resets the
/// HTTP/2 stream and ending the request stream tells rtcd "disconnected", and either can
/// overtake the `Leave` on its way, so rtcd would log the session as "disconnected" instead
/// of "leave".
const LEAVE_DRAIN: Duration = Duration::from_secs(2);

/// Starts the two halves of a joined session's stream and returns the session's ends.
/// `own_session` is this session's rtcd session ID (rtcd's participant events about it are
/// not relayed: a client is not its own remote participant).
fn spawn_pumps(
    to_rtcd: mpsc::Sender<pb::ClientSignal>,
    mut inbound: tonic::Streaming<pb::ServerSignal>,
    mut translator: EventTranslator,
    lost: impl FnOnce() + Send + 'static,
) -> RelayLink {
    let (commands, mut command_rx) = mpsc::channel::<RelayCommand>(LINK_CAPACITY);
    let (event_tx, events) = mpsc::channel::<RelayEvent>(LINK_CAPACITY);
    // Whether the command pump relayed a `Leave`, known once it has stopped sending.
    let (left_tx, left_rx) = tokio::sync::oneshot::channel::<bool>();
    // Dropped by the event pump when it stops (after reading rtcd's close, following a Leave).
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut left = false;
        while let Some(command) = command_rx.recv().await {
            let leaving = matches!(command, RelayCommand::Leave);
            let Some(signal) = translate_command(command) else {
                continue;
            };
            if to_rtcd
                .send(pb::ClientSignal {
                    signal: Some(signal),
                })
                .await
                .is_err()
            {
                break;
            }
            if leaving {
                left = true;
                break;
            }
        }
        let _ = left_tx.send(left);
        if left {
            // Keep the request stream open until rtcd has closed the session: ending it right
            // after the Leave races rtcd's "disconnected" (the end of the stream) against its
            // "leave" (the message), and the session's reason would be a coin toss.
            let _ = tokio::time::timeout(LEAVE_DRAIN, drained_rx).await;
        }
        // Dropping `to_rtcd` ends the request stream; without a Leave rtcd removes the
        // session as "disconnected".
    });
    tokio::spawn(async move {
        let _drained = drained_tx;
        loop {
            let message = tokio::select! {
                _ = event_tx.closed() => {
                    drain_after_leave(&mut inbound, left_rx).await;
                    return;
                }
                m = inbound.message() => m,
            };
            let signal = match message {
                Ok(Some(pb::ServerSignal {
                    signal: Some(signal),
                })) => signal,
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(status) => {
                    // The stream broke without rtcd's SessionClosed: rtcd died or became
                    // unreachable, and the session's rejoin must not be placed there again.
                    tracing::debug!(code = ?status.code(), "rtcd stream ended");
                    lost();
                    return;
                }
            };
            for event in translator.translate(signal) {
                let closed = matches!(event, RelayEvent::Closed { .. });
                if event_tx.send(event).await.is_err() || closed {
                    return;
                }
            }
        }
    });
    RelayLink {
        commands,
        events,
        waiting: None,
        resume_token: None,
        resumed: None,
    }
}

/// Once the session has dropped its events: if it left, keep reading rtcd's stream until
/// rtcd closes it (bounded by [`LEAVE_DRAIN`]) so the `Leave` is read before the stream ends.
async fn drain_after_leave(
    inbound: &mut tonic::Streaming<pb::ServerSignal>,
    left: tokio::sync::oneshot::Receiver<bool>,
) {
    let _ = tokio::time::timeout(LEAVE_DRAIN, async {
        if left.await != Ok(true) {
            return;
        }
        while let Ok(Some(m)) = inbound.message().await {
            if matches!(m.signal, Some(pb::server_signal::Signal::SessionClosed(_))) {
                return;
            }
        }
    })
    .await;
}

/// rtcd's events for one session as the session's [`RelayEvent`]s, with the state that takes:
/// the current speakers (rtcd reports each session's changes, clients get the whole list) and
/// the sessions of each user (rtcd announces sessions, clients see identities).
struct EventTranslator {
    own_session: String,
    speaking: BTreeSet<(String, String)>,
    /// user ID -> that user's sessions in the call (other than this one).
    sessions_by_user: HashMap<String, BTreeSet<String>>,
}

impl EventTranslator {
    fn new(own_session: String) -> Self {
        Self {
            own_session,
            speaking: BTreeSet::new(),
            sessions_by_user: HashMap::new(),
        }
    }

    /// Records the participants a resumed session's call has now (`Resumed`), without events:
    /// the client is told them in its `joined`. Returns them one per identity.
    fn seed(&mut self, participants: &[pb::ParticipantEvent]) -> Vec<Participant> {
        let mut out: Vec<Participant> = Vec::new();
        for p in participants {
            if p.session_id == self.own_session {
                continue;
            }
            let sessions = self.sessions_by_user.entry(p.user_id.clone()).or_default();
            if sessions.is_empty() {
                out.push(Participant {
                    identity: Identity::new(p.user_id.clone()),
                    name: (!p.display_name.is_empty()).then(|| p.display_name.clone()),
                    role: None,
                });
            }
            sessions.insert(p.session_id.clone());
        }
        out
    }

    /// Zero or more events for one rtcd signal. [`RelayEvent::Closed`] is always last.
    fn translate(&mut self, signal: pb::server_signal::Signal) -> Vec<RelayEvent> {
        use pb::server_signal::Signal;
        let event = match signal {
            // The first `Joined` is read when the stream opens; a later one admits a session
            // that waited.
            Signal::Joined(j) => RelayEvent::Admitted {
                resume_token: (!j.resume_secret.is_empty())
                    .then(|| resume_token(&self.own_session, &j.resume_secret)),
            },
            // Only ever the first message of a resumed stream, read when it opens.
            Signal::Waiting(_) | Signal::Resumed(_) => return Vec::new(),
            Signal::LobbyRequest(e) => RelayEvent::LobbyRequest(Participant {
                identity: Identity::new(e.user_id),
                name: (!e.display_name.is_empty()).then_some(e.display_name),
                role: Some(role_from(&e.role)),
            }),
            Signal::LobbyLeft(e) => RelayEvent::LobbyLeft {
                identity: Identity::new(e.user_id),
                outcome: e.outcome,
            },
            Signal::Answer(d) => RelayEvent::Answer(d.sdp),
            Signal::NegotiationNeeded(n) => RelayEvent::NegotiationNeeded {
                audio: n.audio,
                video: n.video,
            },
            Signal::Candidate(c) => RelayEvent::Candidate(Candidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index.and_then(|i| u16::try_from(i).ok()),
                username_fragment: None,
            }),
            Signal::ParticipantJoined(p) => {
                if p.session_id == self.own_session {
                    return Vec::new();
                }
                let sessions = self.sessions_by_user.entry(p.user_id.clone()).or_default();
                let first = sessions.is_empty();
                sessions.insert(p.session_id);
                if !first {
                    return Vec::new();
                }
                RelayEvent::ParticipantJoined(Participant {
                    identity: Identity::new(p.user_id),
                    name: (!p.display_name.is_empty()).then_some(p.display_name),
                    role: None,
                })
            }
            Signal::ParticipantLeft(p) => {
                let Some(sessions) = self.sessions_by_user.get_mut(&p.user_id) else {
                    return Vec::new();
                };
                if !sessions.remove(&p.session_id) || !sessions.is_empty() {
                    return Vec::new();
                }
                self.sessions_by_user.remove(&p.user_id);
                self.speaking.retain(|(_, user)| *user != p.user_id);
                RelayEvent::ParticipantLeft(Identity::new(p.user_id))
            }
            Signal::TrackPublished(t) => {
                let Some(source) = source_of(t.kind()) else {
                    tracing::debug!(kind = t.kind, "track of an unknown kind not relayed");
                    return Vec::new();
                };
                RelayEvent::TrackPublished {
                    identity: Identity::new(t.user_id),
                    track_id: t.track_id,
                    source,
                    mid: t.mid,
                }
            }
            Signal::TrackRemoved(t) => RelayEvent::TrackUnpublished {
                identity: Identity::new(t.user_id),
                track_id: t.track_id,
            },
            Signal::VoiceActivity(v) => {
                let key = (v.session_id, v.user_id);
                if v.speaking {
                    self.speaking.insert(key);
                } else {
                    self.speaking.remove(&key);
                }
                let mut speakers: Vec<Identity> = Vec::new();
                for (_, user) in &self.speaking {
                    if !speakers.iter().any(|s| s.as_str() == user) {
                        speakers.push(Identity::new(user.clone()));
                    }
                }
                RelayEvent::VoiceActivity(speakers)
            }
            Signal::MuteChanged(m) => match source_of(m.kind()) {
                Some(source) => RelayEvent::MuteChanged {
                    identity: Identity::new(m.user_id),
                    source,
                    muted: m.muted,
                },
                None => return Vec::new(),
            },
            Signal::PermissionsChanged(p) => RelayEvent::PermissionsChanged {
                role: role_from(&p.role),
                permissions: permissions_from_pb(p.permissions),
            },
            Signal::MutedByModerator(m) => match source_of(m.kind()) {
                Some(source) => RelayEvent::MutedByModerator(source),
                None => return Vec::new(),
            },
            Signal::UnmuteRequested(m) => match source_of(m.kind()) {
                Some(source) => RelayEvent::UnmuteRequested(source),
                None => return Vec::new(),
            },
            Signal::Error(e) => RelayEvent::Error {
                code: error_label(e.code),
                message: e.message,
            },
            Signal::SessionClosed(c) => {
                tracing::debug!(reason = %c.reason, end = ?c.end(), "rtcd closed the session");
                RelayEvent::Closed {
                    reason: EndReason {
                        end: MediaEnd::from(c.end()),
                        text: c.reason,
                    },
                }
            }
        };
        vec![event]
    }
}

/// One client command as the rtcd signal it maps to, if any.
fn translate_command(command: RelayCommand) -> Option<pb::client_signal::Signal> {
    use pb::client_signal::Signal;
    Some(match command {
        RelayCommand::Offer { sdp, tracks } => Signal::Offer(pb::SessionDescription {
            sdp,
            tracks: tracks
                .into_iter()
                .map(|(mid, source)| (mid, kind_of(source) as i32))
                .collect(),
        }),
        RelayCommand::Candidate(c) => Signal::Candidate(pb::IceCandidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index.map(u32::from),
        }),
        RelayCommand::Mute { source, muted } => Signal::Mute(pb::Mute {
            kind: kind_of(source) as i32,
            muted,
        }),
        // The offer's `tracks` name the screen's sections; nothing to announce beforehand.
        RelayCommand::ScreenShare(true) => return None,
        RelayCommand::ScreenShare(false) => Signal::ScreenShare(pb::ScreenShare {
            on: false,
            track_id: String::new(),
        }),
        RelayCommand::UpdateGrant(grant) => {
            Signal::UpdatePermissions(permissions_to_pb(&grant.permissions))
        }
        RelayCommand::Token {
            issued_at,
            token_id,
            expires_at,
        } => Signal::Token(pb::TokenInfo {
            issued_at: issued_at.unwrap_or(0),
            token_id: token_id.unwrap_or_default(),
            expires_at,
        }),
        RelayCommand::Leave => Signal::Leave(pb::Leave {}),
    })
}

/// Permissions as rtcd.v1 carries them.
fn permissions_to_pb(p: &Permissions) -> pb::Permissions {
    pb::Permissions {
        publish_audio: p.publish_audio,
        publish_video: p.publish_video,
        publish_screen: p.publish_screen,
        subscribe: p.subscribe,
    }
}

/// rtcd.v1 permissions as the proxy's.
fn permissions_from_pb(p: Option<pb::Permissions>) -> Permissions {
    let p = p.unwrap_or_default();
    Permissions {
        publish_audio: p.publish_audio,
        publish_video: p.publish_video,
        publish_screen: p.publish_screen,
        subscribe: p.subscribe,
    }
}

/// rtcd's limit on a display name, in bytes.
const MAX_DISPLAY_NAME_BYTES: usize = 256;

/// A display name as rtcd takes it: names are up to 256 characters, rtcd keeps 256 bytes, so a
/// long name in a wide script is cut at a character boundary (it is only shown, never matched).
fn display_name(name: Option<&str>) -> String {
    let name = name.unwrap_or_default();
    let mut end = name.len().min(MAX_DISPLAY_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// A role name from rtcd (as the proxy sent it at join or in an update); unknown names are
/// read as the least privileged role.
fn role_from(name: &str) -> Role {
    match name {
        "moderator" => Role::Moderator,
        "member" => Role::Member,
        _ => Role::Guest,
    }
}

/// The rtcd kind of a client source.
fn kind_of(source: TrackSource) -> pb::TrackKind {
    match source {
        TrackSource::Microphone => pb::TrackKind::Audio,
        TrackSource::Camera => pb::TrackKind::Video,
        TrackSource::Screen => pb::TrackKind::Screen,
        TrackSource::ScreenAudio => pb::TrackKind::ScreenAudio,
    }
}

/// The client source of an rtcd kind.
fn source_of(kind: pb::TrackKind) -> Option<TrackSource> {
    match kind {
        pb::TrackKind::Audio => Some(TrackSource::Microphone),
        pb::TrackKind::Video => Some(TrackSource::Camera),
        pb::TrackKind::Screen => Some(TrackSource::Screen),
        pb::TrackKind::ScreenAudio => Some(TrackSource::ScreenAudio),
        pb::TrackKind::Unspecified => None,
    }
}

/// The client-facing error code for an rtcd error status code.
fn error_label(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::InvalidArgument => "bad_sdp",
        tonic::Code::PermissionDenied => "forbidden",
        tonic::Code::ResourceExhausted => "media_limit",
        tonic::Code::FailedPrecondition => "bad_message",
        _ => "media_error",
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn resume_tokens_round_trip_and_anything_else_is_refused() {
        let token = resume_token("a1b2c3-42", "SeCrEt_-0123456789");
        assert!(!format!("{token:?}").contains("SeCrEt"), "never printed");
        assert_eq!(
            parse_resume_token(token.expose()),
            Some(("a1b2c3-42".to_owned(), "SeCrEt_-0123456789".to_owned()))
        );
        let long = format!("r1.{}.x", "A".repeat(600));
        for bad in [
            "",
            "r1",
            "r1..secret",
            "r1.YWI.",
            "r2.YWI.secret",
            "r1.YWI.sec.ret",
            "r1.!!!.secret",
            "r1.YWI.sec ret",
            "r1./w.secret",
            long.as_str(),
        ] {
            assert_eq!(parse_resume_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn display_names_are_cut_to_rtcds_256_bytes_at_a_character_boundary() {
        assert_eq!(display_name(None), "");
        assert_eq!(display_name(Some("Alice")), "Alice");
        let wide = "é".repeat(200); // 400 bytes
        let cut = display_name(Some(&wide));
        assert_eq!((cut.len(), cut.chars().count()), (256, 128));
        let odd = format!("a{}", "é".repeat(200));
        assert_eq!(display_name(Some(&odd)).len(), 255);
    }
    use super::*;
    use pb::server_signal::Signal;

    fn participant(session: &str, user: &str, name: &str) -> pb::ParticipantEvent {
        pb::ParticipantEvent {
            session_id: session.into(),
            user_id: user.into(),
            display_name: name.into(),
        }
    }

    #[test]
    fn offer_carries_declared_sources_as_track_kinds() {
        let tracks = [
            ("0", TrackSource::Microphone),
            ("1", TrackSource::Camera),
            ("2", TrackSource::Screen),
            ("3", TrackSource::ScreenAudio),
        ]
        .into_iter()
        .map(|(m, s)| (m.to_owned(), s))
        .collect();
        let Some(pb::client_signal::Signal::Offer(d)) = translate_command(RelayCommand::Offer {
            sdp: "v=0\r\n".into(),
            tracks,
        }) else {
            panic!("an offer is relayed as an offer");
        };
        assert_eq!(d.sdp, "v=0\r\n");
        let mut kinds: Vec<(&str, i32)> = d.tracks.iter().map(|(m, k)| (m.as_str(), *k)).collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            [
                ("0", pb::TrackKind::Audio as i32),
                ("1", pb::TrackKind::Video as i32),
                ("2", pb::TrackKind::Screen as i32),
                ("3", pb::TrackKind::ScreenAudio as i32),
            ]
        );
    }

    #[test]
    fn screen_share_start_sends_nothing_and_stop_withdraws() {
        assert_eq!(translate_command(RelayCommand::ScreenShare(true)), None);
        assert_eq!(
            translate_command(RelayCommand::ScreenShare(false)),
            Some(pb::client_signal::Signal::ScreenShare(pb::ScreenShare {
                on: false,
                track_id: String::new()
            }))
        );
    }

    #[test]
    fn screen_audio_mute_is_relayed_with_its_own_kind() {
        assert_eq!(
            translate_command(RelayCommand::Mute {
                source: TrackSource::ScreenAudio,
                muted: true
            }),
            Some(pb::client_signal::Signal::Mute(pb::Mute {
                kind: pb::TrackKind::ScreenAudio as i32,
                muted: true
            }))
        );
    }

    #[test]
    fn refreshed_grant_becomes_update_permissions() {
        let grant = crate::auth::Grant {
            identity: Identity::new("alice"),
            tenant: None,
            name: None,
            room: crate::protocol::RoomName::parse("r").unwrap(),
            role: crate::policy::Role::Member,
            permissions: crate::policy::Permissions {
                publish_audio: true,
                publish_video: false,
                publish_screen: true,
                subscribe: true,
            },
            expires_at: 0,
            issued_at: None,
            token_id: None,
            key_id: String::new(),
        };
        assert_eq!(
            translate_command(RelayCommand::UpdateGrant(grant)),
            Some(pb::client_signal::Signal::UpdatePermissions(
                pb::Permissions {
                    publish_audio: true,
                    publish_video: false,
                    publish_screen: true,
                    subscribe: true,
                }
            ))
        );
        assert_eq!(
            translate_command(RelayCommand::Leave),
            Some(pb::client_signal::Signal::Leave(pb::Leave {}))
        );
    }

    #[test]
    fn negotiation_needed_answer_and_closed_translate() {
        let mut t = EventTranslator::new("me".into());
        assert_eq!(
            t.translate(Signal::NegotiationNeeded(pb::NegotiationNeeded {
                audio: 2,
                video: 3
            })),
            [RelayEvent::NegotiationNeeded { audio: 2, video: 3 }]
        );
        assert_eq!(
            t.translate(Signal::Answer(pb::SessionDescription {
                sdp: "v=0".into(),
                tracks: Default::default()
            })),
            [RelayEvent::Answer("v=0".into())]
        );
        assert_eq!(
            t.translate(Signal::SessionClosed(pb::SessionClosed {
                reason: "peer connection failed".into(),
                end: pb::SessionEnd::PeerConnectionFailed as i32,
            })),
            [RelayEvent::Closed {
                reason: EndReason {
                    end: MediaEnd::PeerConnectionFailed,
                    text: "peer connection failed".into()
                }
            }]
        );
        // An older rtcd: no typed end, whatever the prose says.
        assert_eq!(
            t.translate(Signal::SessionClosed(pb::SessionClosed {
                reason: "banned".into(),
                end: 0,
            })),
            [RelayEvent::Closed {
                reason: EndReason {
                    end: MediaEnd::Unspecified,
                    text: "banned".into()
                }
            }]
        );
    }

    #[test]
    fn track_events_carry_mid_and_screen_audio() {
        let mut t = EventTranslator::new("me".into());
        let event = |kind: pb::TrackKind| pb::TrackEvent {
            session_id: "s2".into(),
            user_id: "bob".into(),
            kind: kind as i32,
            track_id: "t9".into(),
            display_name: "Bob".into(),
            mid: "4".into(),
        };
        assert_eq!(
            t.translate(Signal::TrackPublished(event(pb::TrackKind::ScreenAudio))),
            [RelayEvent::TrackPublished {
                identity: Identity::new("bob"),
                track_id: "t9".into(),
                source: TrackSource::ScreenAudio,
                mid: "4".into(),
            }]
        );
        assert!(
            t.translate(Signal::TrackPublished(event(pb::TrackKind::Unspecified)))
                .is_empty()
        );
        assert_eq!(
            t.translate(Signal::TrackRemoved(event(pb::TrackKind::Video))),
            [RelayEvent::TrackUnpublished {
                identity: Identity::new("bob"),
                track_id: "t9".into(),
            }]
        );
        assert_eq!(
            t.translate(Signal::MuteChanged(pb::MuteEvent {
                session_id: "s2".into(),
                user_id: "bob".into(),
                kind: pb::TrackKind::ScreenAudio as i32,
                muted: true,
            })),
            [RelayEvent::MuteChanged {
                identity: Identity::new("bob"),
                source: TrackSource::ScreenAudio,
                muted: true,
            }]
        );
    }

    #[test]
    fn participants_are_announced_once_per_identity_and_leave_with_their_last_session() {
        let mut t = EventTranslator::new("me".into());
        // Our own session is not a remote participant.
        assert!(
            t.translate(Signal::ParticipantJoined(participant("me", "alice", "A")))
                .is_empty()
        );
        // A listener who publishes nothing is announced.
        assert_eq!(
            t.translate(Signal::ParticipantJoined(participant("s2", "bob", "Bob"))),
            [RelayEvent::ParticipantJoined(Participant {
                identity: Identity::new("bob"),
                name: Some("Bob".into()),
                role: None,
            })]
        );
        // Bob's second device: same identity, not announced again.
        assert!(
            t.translate(Signal::ParticipantJoined(participant("s3", "bob", "Bob")))
                .is_empty()
        );
        // A nameless participant has no name.
        assert_eq!(
            t.translate(Signal::ParticipantJoined(participant("s4", "carol", ""))),
            [RelayEvent::ParticipantJoined(Participant {
                identity: Identity::new("carol"),
                name: None,
                role: None,
            })]
        );
        // Bob's first session leaves: he is still here.
        assert!(
            t.translate(Signal::ParticipantLeft(participant("s2", "bob", "Bob")))
                .is_empty()
        );
        // An unknown session leaving changes nothing.
        assert!(
            t.translate(Signal::ParticipantLeft(participant("s9", "bob", "Bob")))
                .is_empty()
        );
        assert!(
            t.translate(Signal::ParticipantLeft(participant("s9", "dave", "")))
                .is_empty()
        );
        // His last session leaves: he left.
        assert_eq!(
            t.translate(Signal::ParticipantLeft(participant("s3", "bob", "Bob"))),
            [RelayEvent::ParticipantLeft(Identity::new("bob"))]
        );
        // And may come back.
        assert_eq!(
            t.translate(Signal::ParticipantJoined(participant("s5", "bob", "Bob")))
                .len(),
            1
        );
    }

    #[test]
    fn speakers_are_identities_once_each() {
        let mut t = EventTranslator::new("me".into());
        let va = |session: &str, user: &str, speaking| {
            Signal::VoiceActivity(pb::VoiceActivity {
                session_id: session.into(),
                user_id: user.into(),
                speaking,
            })
        };
        t.translate(va("s2", "bob", true));
        assert_eq!(
            t.translate(va("s3", "bob", true)),
            [RelayEvent::VoiceActivity(vec![Identity::new("bob")])]
        );
        assert_eq!(
            t.translate(va("s2", "bob", false)),
            [RelayEvent::VoiceActivity(vec![Identity::new("bob")])]
        );
        assert_eq!(
            t.translate(va("s3", "bob", false)),
            [RelayEvent::VoiceActivity(vec![])]
        );
    }
}

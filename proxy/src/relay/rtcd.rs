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
//! When a stream ends without the client having left (rtcd died, drained, or closed the
//! session), the event channel closes and the session reports `media_server_lost`.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtcd_proto::v1 as pb;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{
    BoxFuture, JoinRequest, LINK_CAPACITY, Relay, RelayCommand, RelayError, RelayEvent, RelayLink,
};
use crate::config::RtcdConfig;
use crate::placement::{HostHealth, HostSet};
use crate::policy::TrackSource;
use crate::protocol::{Candidate, Identity, Participant};

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
    hosts: HostSet,
    /// Host key (`ip:grpc_port`, identical on every replica) -> the host.
    channels: Mutex<HashMap<String, Arc<Host>>>,
    logins: tokio::sync::Mutex<HashMap<String, Login>>,
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
        let relay = Arc::new(Self {
            client_id: config.client_id.clone(),
            auth_key,
            instance: instance.iter().map(|b| format!("{b:02x}")).collect(),
            tls,
            hosts: HostSet::default(),
            channels: Mutex::new(HashMap::new()),
            logins: tokio::sync::Mutex::new(HashMap::new()),
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
            (
                key,
                if ready {
                    HostHealth::Ready
                } else {
                    HostHealth::Unready
                },
            )
        });
        for (key, health) in futures_util::future::join_all(probes).await {
            if self.hosts.set_health(&key, health) {
                tracing::info!(host = %key, ?health, "rtcd host health changed");
            }
        }
    }

    /// A bearer token for `host`, logging in if there is none, it is near expiry, or `renew`.
    async fn token(&self, key: &str, host: &Host, renew: bool) -> Result<String, RelayError> {
        let api = host.api.as_str();
        let mut logins = self.logins.lock().await;
        if !renew
            && let Some(login) = logins.get(key)
            && login.renew_at > Instant::now()
        {
            return Ok(login.token.clone());
        }
        let response = host
            .http
            .post(format!("{api}/login"))
            .json(&serde_json::json!({"clientID": self.client_id, "authKey": self.auth_key}))
            .send()
            .await
            .map_err(|e| RelayError::Unavailable(format!("media server login failed: {e}")))?;
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
        Ok(token)
    }

    async fn open(&self, request: &JoinRequest) -> Result<RelayLink, RelayError> {
        let room = request.grant.room.as_str();
        let key = self
            .hosts
            .place(room)
            .ok_or_else(|| RelayError::Unavailable("no media server is ready".into()))?;
        let host = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned")
            .get(&key)
            .cloned()
            .ok_or_else(|| RelayError::Unavailable("media server went away".into()))?;
        let session_id = format!("{}-{}", self.instance, request.session.0);
        let grant = &request.grant;
        let join = pb::ClientSignal {
            signal: Some(pb::client_signal::Signal::Join(pb::Join {
                call_id: room.to_owned(),
                session_id: session_id.clone(),
                user_id: grant.identity.as_str().to_owned(),
                display_name: grant.name.clone().unwrap_or_default(),
                permissions: Some(pb::Permissions {
                    publish_audio: grant.permissions.publish_audio,
                    publish_video: grant.permissions.publish_video,
                    publish_screen: grant.permissions.publish_screen,
                    subscribe: grant.permissions.subscribe,
                }),
            })),
        };
        let mut renew = false;
        loop {
            let token = self.token(&key, &host, renew).await?;
            let (to_rtcd, outbound) = mpsc::channel(LINK_CAPACITY);
            to_rtcd
                .try_send(join.clone())
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
                RelayError::Unavailable("media server did not answer the join in time".into())
            })?;
            match opened {
                Ok((
                    inbound,
                    Some(pb::ServerSignal {
                        signal: Some(pb::server_signal::Signal::Joined(_)),
                    }),
                )) => {
                    tracing::debug!(session = %request.session, rtcd_session = %session_id, host = %key, "joined on rtcd");
                    return Ok(spawn_pumps(to_rtcd, inbound));
                }
                Ok((
                    _,
                    Some(pb::ServerSignal {
                        signal: Some(pb::server_signal::Signal::SessionClosed(c)),
                    }),
                )) => {
                    return Err(RelayError::Refused(c.reason));
                }
                Ok((
                    _,
                    Some(pb::ServerSignal {
                        signal: Some(pb::server_signal::Signal::Error(e)),
                    }),
                )) => {
                    return Err(RelayError::Refused(e.message));
                }
                Ok(_) => {
                    return Err(RelayError::Unavailable(
                        "media server ended the stream".into(),
                    ));
                }
                Err(status) if status.code() == tonic::Code::Unauthenticated && !renew => {
                    renew = true
                }
                Err(status) => return Err(status_to_error(&status)),
            }
        }
    }
}

impl Relay for RtcdRelay {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<RelayLink, RelayError>> {
        Box::pin(async move { self.open(&request).await })
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

fn status_to_error(status: &tonic::Status) -> RelayError {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::AlreadyExists => RelayError::Refused(status.message().to_owned()),
        _ => RelayError::Unavailable(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Starts the two halves of a joined session's stream and returns the session's ends.
fn spawn_pumps(
    to_rtcd: mpsc::Sender<pb::ClientSignal>,
    mut inbound: tonic::Streaming<pb::ServerSignal>,
) -> RelayLink {
    let (commands, mut command_rx) = mpsc::channel::<RelayCommand>(LINK_CAPACITY);
    let (event_tx, events) = mpsc::channel::<RelayEvent>(LINK_CAPACITY);
    tokio::spawn(async move {
        let mut screen_pending = false;
        while let Some(command) = command_rx.recv().await {
            let leaving = matches!(command, RelayCommand::Leave);
            for signal in translate_command(command, &mut screen_pending) {
                if to_rtcd
                    .send(pb::ClientSignal {
                        signal: Some(signal),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if leaving {
                return;
            }
        }
        // The session is gone: dropping `to_rtcd` ends the request stream and rtcd removes it.
    });
    tokio::spawn(async move {
        let mut speaking: BTreeSet<(String, String)> = BTreeSet::new();
        // rtcd knows participants by their tracks: a user's first track means they are here,
        // their last withdrawn track that they left.
        let mut tracks_by_user: HashMap<String, BTreeSet<String>> = HashMap::new();
        loop {
            let message = tokio::select! {
                _ = event_tx.closed() => return,
                m = inbound.message() => m,
            };
            let signal = match message {
                Ok(Some(pb::ServerSignal {
                    signal: Some(signal),
                })) => signal,
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "rtcd stream ended");
                    return;
                }
            };
            let event = match signal {
                pb::server_signal::Signal::Joined(_) => continue,
                pb::server_signal::Signal::Answer(d) => RelayEvent::Answer(d.sdp),
                // Interim (the proxy's relay of the new negotiation lands separately).
                pb::server_signal::Signal::NegotiationNeeded(_)
                | pb::server_signal::Signal::ParticipantJoined(_)
                | pb::server_signal::Signal::ParticipantLeft(_) => continue,
                pb::server_signal::Signal::Candidate(c) => RelayEvent::Candidate(Candidate {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_mline_index: c.sdp_mline_index.and_then(|i| u16::try_from(i).ok()),
                    username_fragment: None,
                }),
                pb::server_signal::Signal::TrackPublished(t) => {
                    let Some(source) = source_of(t.kind()) else {
                        continue;
                    };
                    let tracks = tracks_by_user.entry(t.user_id.clone()).or_default();
                    if tracks.is_empty() {
                        let joined = RelayEvent::ParticipantJoined(Participant {
                            identity: Identity::new(t.user_id.clone()),
                            name: (!t.display_name.is_empty()).then(|| t.display_name.clone()),
                            role: None,
                        });
                        if event_tx.send(joined).await.is_err() {
                            return;
                        }
                    }
                    tracks.insert(t.track_id.clone());
                    RelayEvent::TrackPublished {
                        identity: Identity::new(t.user_id),
                        track_id: t.track_id,
                        source,
                    }
                }
                pb::server_signal::Signal::TrackRemoved(t) => {
                    let removed = RelayEvent::TrackUnpublished {
                        identity: Identity::new(t.user_id.clone()),
                        track_id: t.track_id.clone(),
                    };
                    if event_tx.send(removed).await.is_err() {
                        return;
                    }
                    let left = tracks_by_user.get_mut(&t.user_id).is_some_and(|tracks| {
                        tracks.remove(&t.track_id);
                        tracks.is_empty()
                    });
                    if !left {
                        continue;
                    }
                    tracks_by_user.remove(&t.user_id);
                    RelayEvent::ParticipantLeft(Identity::new(t.user_id))
                }
                pb::server_signal::Signal::VoiceActivity(v) => {
                    let key = (v.session_id, v.user_id);
                    if v.speaking {
                        speaking.insert(key);
                    } else {
                        speaking.remove(&key);
                    }
                    let mut speakers: Vec<Identity> = Vec::new();
                    for (_, user) in &speaking {
                        if !speakers.iter().any(|s| s.as_str() == user) {
                            speakers.push(Identity::new(user.clone()));
                        }
                    }
                    RelayEvent::VoiceActivity(speakers)
                }
                pb::server_signal::Signal::MuteChanged(m) => match source_of(m.kind()) {
                    Some(source) => RelayEvent::MuteChanged {
                        identity: Identity::new(m.user_id),
                        source,
                        muted: m.muted,
                    },
                    None => continue,
                },
                pb::server_signal::Signal::Error(e) => RelayEvent::Error {
                    code: error_label(e.code),
                    message: e.message,
                },
                pb::server_signal::Signal::SessionClosed(c) => {
                    tracing::debug!(reason = %c.reason, "rtcd closed the session");
                    return;
                }
            };
            if event_tx.send(event).await.is_err() {
                return;
            }
        }
    });
    RelayLink { commands, events }
}

/// One client command as zero or more rtcd signals.
fn translate_command(
    command: RelayCommand,
    screen_pending: &mut bool,
) -> Vec<pb::client_signal::Signal> {
    use pb::client_signal::Signal;
    match command {
        RelayCommand::Offer { sdp, tracks } => {
            let mut out = Vec::new();
            if *screen_pending
                && let Some(track_id) = tracks
                    .iter()
                    .find(|(_, s)| **s == TrackSource::Screen)
                    .and_then(|(mid, _)| msid_track(&sdp, mid))
            {
                *screen_pending = false;
                out.push(Signal::ScreenShare(pb::ScreenShare { on: true, track_id }));
            }
            out.push(Signal::Offer(pb::SessionDescription {
                sdp,
                tracks: Default::default(),
            }));
            out
        }
        RelayCommand::Answer { .. } => Vec::new(),
        RelayCommand::Candidate(c) => vec![Signal::Candidate(pb::IceCandidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index.map(u32::from),
        })],
        RelayCommand::Mute { source, muted } => {
            let kind = match source {
                TrackSource::Microphone => pb::TrackKind::Audio,
                TrackSource::Camera => pb::TrackKind::Video,
                TrackSource::Screen => pb::TrackKind::Screen,
                // rtcd has no separate screen-audio kind yet: nothing to mute there.
                TrackSource::ScreenAudio => return Vec::new(),
            };
            vec![Signal::Mute(pb::Mute {
                kind: kind as i32,
                muted,
            })]
        }
        RelayCommand::ScreenShare(true) => {
            *screen_pending = true;
            Vec::new()
        }
        RelayCommand::ScreenShare(false) => {
            *screen_pending = false;
            vec![Signal::ScreenShare(pb::ScreenShare {
                on: false,
                track_id: String::new(),
            })]
        }
        // Permissions travel with the join; rtcd has no in-session update yet, and the proxy
        // keeps enforcing the refreshed grant on every message.
        RelayCommand::UpdateGrant(_) => Vec::new(),
        RelayCommand::Leave => vec![Signal::Leave(pb::Leave {})],
    }
}

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

/// The MediaStreamTrack id (`a=msid:<stream> <track>`) of the media section with `mid`.
fn msid_track(sdp: &str, mid: &str) -> Option<String> {
    let mut in_section = false;
    let mut section_mid = None;
    let mut section_track = None;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("m=") {
            if in_section && section_mid.as_deref() == Some(mid) {
                return section_track;
            }
            in_section = true;
            section_mid = None;
            section_track = None;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            section_mid = Some(m.trim().to_owned());
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            section_track = msid.split_whitespace().nth(1).map(str::to_owned);
        }
    }
    (in_section && section_mid.as_deref() == Some(mid))
        .then_some(section_track)
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:stream mic-track\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:stream cam-track\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=msid:screenstream screen-track\r\n";

    #[test]
    fn msid_of_each_section() {
        assert_eq!(msid_track(SDP, "0").as_deref(), Some("mic-track"));
        assert_eq!(msid_track(SDP, "2").as_deref(), Some("screen-track"));
        assert_eq!(msid_track(SDP, "9"), None);
    }

    #[test]
    fn screen_share_is_announced_with_its_track_before_the_offer() {
        let mut pending = false;
        assert!(translate_command(RelayCommand::ScreenShare(true), &mut pending).is_empty());
        let tracks = [("2".to_owned(), TrackSource::Screen)]
            .into_iter()
            .collect();
        let out = translate_command(
            RelayCommand::Offer {
                sdp: SDP.into(),
                tracks,
            },
            &mut pending,
        );
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], pb::client_signal::Signal::ScreenShare(s) if s.on && s.track_id == "screen-track")
        );
        assert!(matches!(&out[1], pb::client_signal::Signal::Offer(_)));
        assert!(!pending);
        let out = translate_command(
            RelayCommand::Offer {
                sdp: SDP.into(),
                tracks: Default::default(),
            },
            &mut pending,
        );
        assert_eq!(
            out.len(),
            1,
            "no announcement without a pending screen share"
        );
    }
}

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
//! rtcd's `SessionClosed` reaches the session as [`RelayEvent::Closed`] with its typed end (the
//! session tells a failed media connection from a lost media server by it). When a stream ends
//! without one (rtcd died or became unreachable), the event channel just closes and the session
//! reports `media_server_lost`.
//!
//! This module holds the relay itself (its hosts, configuration and the [`Relay`] seam); one
//! concern a file below it: `discovery` (hosts, health, logins, webhooks), `placement` (which
//! host a room lives on, healing split rooms), `admin` (room administration, [`RoomControl`]),
//! `streams` (a session's stream: open, resume, refusals, pumps) and `translate` (relay
//! vocabulary <-> `rtcd.v1`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtcd_proto::v1 as pb;
use rtcd_proto::v1::rooms_client::RoomsClient;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
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
use crate::protocol::{Candidate, Identity, Participant, PauseReason, RoomName};
use crate::rooms::{
    BanInfo, ControlError, FileRead, LobbyEntry, ParticipantInfo, PolicyRefusal, RecordingFile,
    RecordingInfo, RecordingRefusal, RecordingState, RecordingStop, Revocation, RoomControl,
    RoomDetail, RoomPolicy, RoomSummary, TrackInfo,
};
use rtcd_kit::cluster::{
    Created, Etcd, HOSTS_PREFIX, HostAnnouncement, Replica, Settings as ClusterSettings, Store,
    StoreError, announcement_key, claim_key,
};

mod admin;
mod discovery;
mod placement;
mod streams;
mod translate;

use admin::*;
use discovery::*;
use streams::*;
use translate::*;

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
    /// The cluster store, in cluster mode (set once at start).
    cluster: std::sync::OnceLock<ClusterLink>,
}

/// How long a moderation call waits for this proxy's copy to show the decision it wrote.
const MODERATION_SETTLE: Duration = Duration::from_secs(2);

/// What the relay holds of the cluster store (docs/cluster.md).
struct ClusterLink {
    /// The store itself: room placement claims (`claims/<client id>/<room>`).
    store: Arc<dyn Store>,
    /// The watched copy of the hosts' announcements, whose leases claims are bound to.
    hosts: Arc<Replica>,
    /// The watched copy of the moderation decisions (bans, cut-offs, denied token IDs): joins
    /// and refreshes they refuse are refused here, before placement and before `refreshed`;
    /// rtcd checks every join again with its own copy, and is the one that fails closed.
    moderation: Replica,
    /// Placements by outcome (`ClusterStatus::placements`' order).
    placements: [std::sync::atomic::AtomicU64; 4],
}

/// The outcomes of a placement in cluster mode, as counted.
#[derive(Debug, Clone, Copy)]
enum Placement {
    Found = 0,
    Claimed = 1,
    Moved = 2,
    Fallback = 3,
}

impl ClusterLink {
    fn count(&self, outcome: Placement) {
        self.placements[outcome as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RtcdRelay {
    /// After a moderation decision this proxy asked a host to write (cluster mode): waits,
    /// one request deadline at most, until this proxy's copy shows `key` as the store holds it
    /// now, so its own next check (a join, a refresh) sees the decision it just answered for.
    async fn settle_moderation(&self, key: &str) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if let Ok(Some(entry)) = cluster.store.get(key).await
            && !cluster
                .moderation
                .caught_up(entry.mod_revision, MODERATION_SETTLE)
                .await
        {
            tracing::debug!(key, "this proxy's copy of the moderation decisions lags");
        }
    }

    /// What the cluster's moderation decisions say of `grant` (its ban from the room when
    /// `joining`, its token's revocation either way), by this proxy's copy; `None` without a
    /// cluster store. The rule is the kit's, the one rtcd applies.
    fn refusal(&self, grant: &crate::auth::Grant, joining: bool) -> Option<RelayError> {
        use rtcd_kit::cluster::moderation::{Refusal, refusal_in};
        let cluster = self.cluster.get()?;
        let refusal = refusal_in(
            &cluster.moderation,
            &self.client_id,
            joining.then_some(grant.room.as_str()),
            grant.identity.as_str(),
            grant.issued_at.unwrap_or(0),
            grant.token_id.as_deref().unwrap_or_default(),
            crate::auth::unix_now(),
        )?;
        tracing::info!(target: "audit", identity = grant.identity.as_str(), room = grant.room.as_str(), ?refusal, joining, "refused by the cluster's moderation decisions");
        Some(match refusal {
            Refusal::Banned { until } => {
                RelayError::Banned(format!("banned from this call until {until}"))
            }
            Refusal::CutOff { issued_before } => RelayError::Revoked(format!(
                "revoked: this user's tokens issued before {issued_before} are no longer valid"
            )),
            Refusal::TokenDenied => RelayError::Revoked("revoked: this token was revoked".into()),
        })
    }

    /// Builds the relay and starts host discovery through `rtcd.url`'s DNS and health probing
    /// (stopped by `cancel`). Returns once the first resolution and probe have run, so a join
    /// right after start can already be placed.
    pub async fn start(
        config: &RtcdConfig,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, RtcdRelayError> {
        Self::start_with(config, &ClusterSettings::default(), cancel).await
    }

    /// [`RtcdRelay::start`], with the hosts taken from their announcements in the cluster
    /// store when `cluster` is on (docs/cluster.md): a new, draining or withdrawn host is
    /// known as soon as the store says so, and probes keep checking health and load.
    pub async fn start_with(
        config: &RtcdConfig,
        cluster: &ClusterSettings,
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
            cluster: std::sync::OnceLock::new(),
        });
        let announced = if cluster.enabled() {
            let store = Etcd::connect(cluster).map_err(|e| RtcdRelayError::Config {
                key: "cluster.etcd_endpoints",
                message: e.to_string(),
            })?;
            let template = discoveries.first().ok_or(RtcdRelayError::Config {
                key: "rtcd.url",
                message: "required with cluster.etcd_endpoints".into(),
            })?;
            let store: Arc<dyn Store> = Arc::new(store);
            let replica = Arc::new(Replica::start(store.clone(), HOSTS_PREFIX));
            // The first read of the announcements, so that a join right after start can be
            // placed; a store out of reach is waited for no longer than one request.
            if !replica.caught_up(1, cluster.request_timeout()).await {
                tracing::warn!(
                    "the cluster store did not answer at start; no rtcd host is known until it does"
                );
            }
            relay.adopt_announcements(&replica, template);
            let _ = relay.cluster.set(ClusterLink {
                moderation: Replica::start(store.clone(), rtcd_kit::cluster::moderation::PREFIX),
                store,
                hosts: replica.clone(),
                placements: Default::default(),
            });
            Some(replica)
        } else {
            relay.refresh_hosts(&discoveries).await;
            None
        };
        relay.probe().await;
        let weak = Arc::downgrade(&relay);
        let (resolve_every, probe_every) = (
            Duration::from_secs(config.resolve_interval_seconds.max(1)),
            Duration::from_secs(config.health_interval_seconds.max(1)),
        );
        tokio::spawn(async move {
            let mut resolve = tokio::time::interval(resolve_every);
            let mut probe = tokio::time::interval(probe_every);
            let mut changes = announced.as_deref().map(Replica::changes);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    // An announcement changed: adopt the hosts and probe them now (a new host
                    // takes rooms without waiting for the next probe, a draining one none).
                    Ok(()) = async { changes.as_mut().expect("only with a replica").changed().await }, if changes.is_some() => {
                        let (Some(relay), Some(replica)) = (weak.upgrade(), announced.as_ref()) else { return };
                        relay.adopt_announcements(replica, &discoveries[0]);
                        relay.probe().await;
                    }
                    _ = resolve.tick(), if announced.is_none() => {
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
}

impl Relay for RtcdRelay {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<RelayLink, RelayError>> {
        Box::pin(async move {
            if let Some(refused) = self.refusal(&request.grant, true) {
                return Err(refused);
            }
            self.open(&request).await
        })
    }

    fn refused_token(&self, grant: &crate::auth::Grant) -> Option<RelayError> {
        self.refusal(grant, false)
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

    fn cluster_status(&self) -> Option<super::ClusterStatus> {
        let cluster = self.cluster.get()?;
        let n = |p: Placement| {
            cluster.placements[p as usize].load(std::sync::atomic::Ordering::Relaxed)
        };
        Some(super::ClusterStatus {
            placements: [
                ("found", n(Placement::Found)),
                ("claimed", n(Placement::Claimed)),
                ("moved", n(Placement::Moved)),
                ("fallback", n(Placement::Fallback)),
            ],
            hosts_stale_seconds: cluster.hosts.stale_for(Instant::now()).as_secs_f64(),
        })
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

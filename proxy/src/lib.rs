//! rtcd-proxy: the service end users' browsers and apps connect to. It verifies the
//! platform's JWTs, enforces what each token permits on every signaling message, and relays
//! what passes to the rtcd hosting the room.
//!
//! # Layout
//!
//! * [`config`]: the typed configuration, TOML + `PROXY_*` environment, validated at start.
//! * [`auth`]: JWT verification (HS secrets by `kid`, PEM public keys, JWKS file / URL) into a
//!   [`auth::Grant`], or an [`auth::AuthError`] naming the exact reason; the platform's
//!   join-time hook that may lower a grant ([`auth::affiliation`]).
//! * [`policy`]: permissions and the pure SDP inspection deciding what a session may send.
//! * [`protocol`]: the JSON messages of the client WebSocket (see `docs/protocol.md`).
//! * [`close`]: the single mapping from every failure to its WebSocket close code.
//! * [`session`]: one WebSocket from upgrade to close: the sans-IO protocol machine
//!   ([`session::machine`]) and the task pumping its socket, with its rate limits (the service
//!   kit's `rtcd_kit::rate`).
//! * [`room_policy`]: a room's entry policy as a value (configuration, protocol, API and relay
//!   speak it; it depends on nothing of the proxy).
//! * [`relay`]: the seam to the media server (the rtcd gRPC relay implements [`relay::Relay`]).
//! * [`server`]: routes and the `/ws` upgrade, served by the service kit's listener
//!   (`rtcd_kit::listener`, `rtcd_kit::tls`); [`health`], [`metrics`]; [`cli`].
//! * [`turn`]: TURN REST credentials for clients, and the probe checking them against coturn.
//! * [`web`]: the browser SDK and demo call page, embedded in the binary.
//! * [`Proxy`]: the composition root: `start` binds and serves, `shutdown` drains.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod close;
pub mod config;
pub mod dev;
/// Parsers of outside input as the fuzz targets and their corpus replay call them (not an API).
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod placement;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod room_policy;
pub mod rooms;
pub mod server;
pub mod session;
pub mod turn;
pub mod web;

/// Readiness (the service kit's, shared with rtcd).
pub use rtcd_kit::health;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::session::ProxyState;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A key could not be loaded.
    #[error("auth: {0}")]
    Keys(String),
    /// The TLS certificate or key is unusable.
    #[error("tls: {0}")]
    Tls(#[from] rtcd_kit::tls::TlsError),
    /// A TURN server refused the proxy's own credentials at start: users would find out in
    /// calls that never connect.
    #[error("turn: {0}")]
    Turn(String),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running proxy. Call [`Proxy::shutdown`] to stop it.
pub struct Proxy {
    state: Arc<ProxyState>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    listeners: Vec<JoinHandle<()>>,
    sessions: TaskTracker,
    stop_accepting: CancellationToken,
}

impl Proxy {
    /// Loads keys (and the JWKS), binds the listeners, and serves. `relay` is the media
    /// server connection; `None` runs the proxy without media (joins get `media_unavailable`).
    pub async fn start(config: Config, relay: Option<Arc<dyn Relay>>) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let verifier = Arc::new(
            Verifier::new(&config.auth, config.limits.max_token_bytes).map_err(StartError::Keys)?,
        );
        verifier.warm_up().await;
        let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
            (c, k) if !c.is_empty() && !k.is_empty() => {
                Some(rtcd_kit::tls::server_config(Path::new(c), Path::new(k))?)
            }
            _ => None,
        };
        let turn = turn::Turn::from_config(&config.turn)
            .map_err(StartError::Turn)?
            .map(Arc::new);
        if let Some(turn) = &turn {
            start_turn_probes(turn, config.turn.probe_interval_seconds).await?;
        }
        let issuer = auth::api::TokenIssuer::from_config(&config)
            .map_err(StartError::Keys)?
            .map(Arc::new);
        if let Some(relay) = &relay {
            let secret = config.webhooks.signing_secret().map_err(StartError::Keys)?;
            relay.set_webhooks(config.webhooks.urls.clone(), secret);
        }
        let affiliation = auth::affiliation::Affiliation::from_config(
            &config.auth.affiliation,
            &config.auth.permissions,
        )
        .map_err(StartError::Keys)?
        .map(Arc::new);
        let health = Arc::new(Health::default());
        let state = Arc::new(
            ProxyState::new(
                config.clone(),
                verifier,
                relay,
                Metrics::new(),
                health.clone(),
                CancellationToken::new(),
            )
            .with_turn(turn)
            .with_token_issuer(issuer)
            .with_affiliation(affiliation),
        );
        // Both listeners are bound before either serves: a failed start leaves nothing serving.
        let listener = bind(config.listen_addr()).await?;
        let addr = local_addr(&listener, config.listen_addr())?;
        let metrics_listener = match config.metrics_addr() {
            Some(want) => {
                let listener = bind(want).await?;
                let bound = local_addr(&listener, want)?;
                Some((listener, bound))
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        if tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "serving ws:// beyond loopback: tokens cross the network in clear and browsers refuse cameras; set server.tls_cert_file / tls_key_file");
        }
        let stop_accepting = CancellationToken::new();
        let drain = Duration::from_secs(config.server.shutdown_timeout_seconds);
        let sessions = TaskTracker::new();
        let limits = config.server.listener_limits();
        let options = |tls, listener| rtcd_kit::listener::Options {
            tls,
            limits,
            observer: state.metrics.http_connections_cut.observer(listener),
            shutdown: stop_accepting.clone(),
            drain,
        };
        let mut listeners = vec![rtcd_kit::listener::serve(
            listener,
            options(tls, "public"),
            server::handler(
                server::public_routes(state.clone()),
                Some(server::Upgrades {
                    state: state.clone(),
                    sessions: sessions.clone(),
                }),
            ),
        )];
        if let Some((listener, _)) = metrics_listener {
            listeners.push(rtcd_kit::listener::serve(
                listener,
                options(None, "metrics"),
                server::handler(server::internal_routes(state.clone()), None),
            ));
        }
        health.set_ready();
        tracing::info!(%addr, ?metrics_addr, media = state.relay.is_some(), "rtcd-proxy ready");
        Ok(Self {
            state,
            addr,
            metrics_addr,
            listeners,
            sessions,
            stop_accepting,
        })
    }

    /// The public listener's bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics listener's bound address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Metrics, for tests and embedding.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// Graceful drain: not ready, stop accepting, every session closes with `going_away`
    /// (1001), bounded by `server.shutdown_timeout_seconds`.
    pub async fn shutdown(self) {
        self.state.health.set_draining();
        self.stop_accepting.cancel();
        self.state.shutdown.cancel();
        self.sessions.close();
        let drain = Duration::from_secs(self.state.config.server.shutdown_timeout_seconds);
        if tokio::time::timeout(drain, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(?drain, "sessions still open after the drain timeout");
        }
        for listener in self.listeners {
            let _ = listener.await;
        }
        tracing::info!("rtcd-proxy stopped");
    }
}

/// Probes every TURN URL once: a server that refuses the proxy's credentials (401: the shared
/// secret differs) stops the start, with the URL and the fix in the error; an unreachable one
/// is only logged (it may come up later). Then re-probes every `interval_seconds` (0: never),
/// which `/readyz` and the logs report.
async fn start_turn_probes(
    turn: &Arc<turn::Turn>,
    interval_seconds: u64,
) -> Result<(), StartError> {
    let failures = turn.probe_all().await;
    let unauthorized: Vec<String> = failures
        .iter()
        .filter(|e| matches!(e, turn::ProbeError::Unauthorized { .. }))
        .map(ToString::to_string)
        .collect();
    if !unauthorized.is_empty() {
        return Err(StartError::Turn(unauthorized.join("; ")));
    }
    if interval_seconds > 0 {
        let turn = Arc::downgrade(turn);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(interval_seconds));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Ends with the proxy (the last strong reference is in its state).
                let Some(turn) = turn.upgrade() else { break };
                turn.probe_all().await;
            }
        });
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}

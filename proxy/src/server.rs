//! HTTP surface: the `/ws` upgrade, the room service API ([`crate::api`]), health and metrics
//! routes.
//!
//! The accept loop that serves them (TLS, timeouts against slow clients, connection caps, drain) is the
//! service kit's (`rtcd_kit::listener`); every request carries the peer address as its
//! [`PeerAddr`] extension, which the limits key on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::task::TaskTracker;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use rtcd_kit::listener::PeerAddr;

use crate::session::{self, ProxyState, UpgradeTokens};

/// `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(header: Option<String>) -> Option<String> {
    let header = header?;
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Passes when a route is switched on in the configuration, else rejects as not found, so a
/// route that is off looks exactly like one that does not exist.
pub(crate) fn switched_on(on: bool) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::any()
        .and_then(move || async move {
            if on {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

/// Public routes besides `/ws` (which [`serve`] upgrades itself): `/healthz`, `/readyz`, the
/// web client ([`crate::web`]) and `/dev/token` in development mode.
pub fn public_routes(
    state: Arc<ProxyState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let config = state.config.clone();
    crate::api::routes(state.clone())
        .or(health_routes(state))
        .unify()
        .or(crate::dev::routes(config))
        .unify()
        .or(crate::web::routes())
        .recover(not_found)
}

/// Where `GET /ws` upgrades go: the sessions' shared state and the tracker drain waits on.
#[derive(Clone)]
pub struct Upgrades {
    /// Shared session state.
    pub state: Arc<ProxyState>,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

/// Answers a `/ws` request: validates the WebSocket handshake (RFC 6455 §4.2.1), reads
/// the tokens of the upgrade request, applies the admission limits, and hands the upgraded
/// connection to a session task. warp's own `ws()` filter is not used because it cannot
/// set tungstenite's read buffer, whose 128 KiB default would dominate an idle session.
fn upgrade(
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    upgrades: &Upgrades,
) -> warp::reply::Response {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let refuse = |status: StatusCode, message: &'static str| error_reply(status, message);
    if req.method() != hyper::Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /ws with a WebSocket upgrade",
        );
    }
    let headers = req.headers();
    let has_token = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(http::header::CONNECTION, "upgrade")
        || !has_token(http::header::UPGRADE, "websocket")
    {
        return refuse(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut response = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 required",
        );
        response.headers_mut().insert(
            http::header::SEC_WEBSOCKET_VERSION,
            http::HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = req.uri().query().and_then(|q| {
        reqwest::Url::parse(&format!("http://query/?{q}"))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == "jwt")
            .map(|(_, v)| v.into_owned())
    });
    let tokens = UpgradeTokens {
        header: bearer(header),
        query,
    };
    let state = upgrades.state.clone();
    let admitted = state.admit(peer.ip());
    let on_upgrade = hyper::upgrade::on(&mut req);
    upgrades.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = session::socket_config(state.config.limits.max_message_bytes);
                let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    hyper_util::rt::TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    Some(config),
                )
                .await;
                session::run(socket, state, peer.ip(), tokens, admitted).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut response =
        warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS).into_response();
    let h = response.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

/// Internal routes: `/metrics`, `/healthz`, `/readyz`.
pub fn internal_routes(
    state: Arc<ProxyState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let metrics = {
        let state = state.clone();
        warp::path!("metrics").and(warp::get()).map(move || {
            if let Some((ready, unready, unknown)) =
                state.relay.as_ref().and_then(|r| r.host_health())
            {
                for (health, n) in [("ready", ready), ("unready", unready), ("unknown", unknown)] {
                    let label = crate::metrics::HealthLabel { health };
                    state.metrics.rtcd_hosts.get_or_create(&label).set(n as i64);
                }
            }
            if let Some(relay) = state.relay.as_ref() {
                // Hosts come and go with DNS: only the current ones are reported.
                state.metrics.rtcd_host_load_level.clear();
                for (host, level) in relay.host_levels() {
                    let label = crate::metrics::HostLabel { host };
                    state
                        .metrics
                        .rtcd_host_load_level
                        .get_or_create(&label)
                        .set(i64::from(level));
                }
            }
            if let Some(cluster) = state.relay.as_ref().and_then(|r| r.cluster_status()) {
                for (outcome, n) in cluster.placements {
                    let label = crate::metrics::OutcomeLabel { outcome };
                    state
                        .metrics
                        .cluster_placements
                        .get_or_create(&label)
                        .inner()
                        .store(n, std::sync::atomic::Ordering::Relaxed);
                }
                state
                    .metrics
                    .cluster_hosts_stale_seconds
                    .set(cluster.hosts_stale_seconds);
            }
            warp::reply::with_header(
                state.metrics.encode(),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        })
    };
    metrics.or(health_routes(state)).recover(not_found)
}

fn health_routes(
    state: Arc<ProxyState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let turn = state.turn.clone();
    rtcd_kit::health::routes(state.health.clone(), move |body: &mut serde_json::Value| {
        // The last TURN probe per URL: reported, but not part of readiness (a proxy whose
        // TURN server is down still serves everyone who does not need the relay).
        if let Some(turn) = &turn {
            body["turn"] = turn
                .status()
                .into_iter()
                .map(|(url, (status, detail))| {
                    (url, serde_json::json!({"status": status, "detail": detail}))
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
    })
}

async fn not_found(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let status = if rejection.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        // e.g. GET /ws without an Upgrade header.
        StatusCode::BAD_REQUEST
    };
    Ok(error_reply(
        status,
        status.canonical_reason().unwrap_or("error"),
    ))
}

/// The one HTTP error shape, the same as rtcd's: `{"code": "<status>", "error": message}`,
/// the status as a string. rtcd's shape is the one kept (not the number the proxy used to
/// send) because rtcd's is Mattermost rtcd's, which existing clients of its API parse.
fn error_reply(status: StatusCode, message: &str) -> warp::reply::Response {
    let body = serde_json::json!({ "code": status.as_u16().to_string(), "error": message });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// The listener handler (what `rtcd_kit::listener::serve` takes): `filter`, and with
/// `upgrades` the WebSocket upgrade at `/ws` (upgraded sessions leave the listener's
/// connection counts; [`crate::session`] bounds them).
pub fn handler<F, R>(
    filter: F,
    upgrades: Option<Upgrades>,
) -> impl Fn(hyper::Request<hyper::body::Incoming>) -> rtcd_kit::listener::BoxedResponse
+ Clone
+ Send
+ Sync
+ 'static
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    F::Future: Send,
    R: Reply,
{
    let routes = rtcd_kit::listener::routes_handler(filter);
    move |req| {
        let ws = upgrades
            .as_ref()
            .filter(|_| req.uri().path() == "/ws")
            .cloned();
        match (ws, req.extensions().get::<PeerAddr>().copied()) {
            (Some(upgrades), Some(PeerAddr(peer))) => {
                let response = upgrade(req, peer, &upgrades);
                Box::pin(async move { response })
            }
            // The listener gives every request its peer address; without one there is
            // nothing to key the limits on.
            (Some(_), None) => {
                let response = error_reply(StatusCode::INTERNAL_SERVER_ERROR, "no peer address");
                Box::pin(async move { response })
            }
            (None, _) => routes(req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc".into())).as_deref(), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ".into())).as_deref(), Some("abc"));
        assert_eq!(bearer(Some("Basic abc".into())), None);
        assert_eq!(bearer(Some("Bearer ".into())), None);
        assert_eq!(bearer(None), None);
    }
}

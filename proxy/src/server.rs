//! HTTP surface: the `/ws` upgrade, health and metrics routes, and the accept loop that
//! serves them over TCP or TLS.
//!
//! warp 0.4 has no TLS, so the accept loop is ours: accept, rustls handshake under a timeout
//! (a silent client cannot pin a task), then hyper's HTTP/1 driver with upgrades (WebSocket).
//! Each request carries the peer address as a [`PeerAddr`] extension, which the limits key on.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::session::{self, ProxyState, UpgradeTokens};

/// The remote address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Time allowed for the TLS handshake and the HTTP request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(header: Option<String>) -> Option<String> {
    let header = header?;
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Public routes: `GET /ws` (WebSocket), `/healthz`, `/readyz`, and the web client
/// ([`crate::web`]).
pub fn public_routes(
    state: Arc<ProxyState>,
    sessions: TaskTracker,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let ws = warp::path!("ws")
        .and(warp::get())
        .and(warp::ws())
        .and(warp::ext::get::<PeerAddr>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state.clone())
        .map(
            move |ws: warp::ws::Ws,
                  peer: PeerAddr,
                  authorization: Option<String>,
                  query: HashMap<String, String>,
                  state: Arc<ProxyState>| {
                let ip = peer.0.ip();
                let admitted = state.admit(ip);
                let tokens = UpgradeTokens {
                    header: bearer(authorization),
                    query: query.get("jwt").cloned(),
                };
                let max = state.config.limits.max_message_bytes;
                let sessions = sessions.clone();
                ws.max_message_size(max)
                    .max_frame_size(max)
                    .on_upgrade(move |socket| {
                        sessions.track_future(session::run(socket, state, ip, tokens, admitted))
                    })
            },
        );
    ws.or(health_routes(state))
        .or(crate::web::routes())
        .recover(not_found)
}

/// Internal routes: `/metrics`, `/healthz`, `/readyz`.
pub fn internal_routes(
    state: Arc<ProxyState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let metrics = {
        let state = state.clone();
        warp::path!("metrics").and(warp::get()).map(move || {
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
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let status = if state.health.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(format!("{}\n", state.health.label()), status).into_response()
    });
    healthz.or(readyz).unify()
}

async fn not_found(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let status = if rejection.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        // e.g. GET /ws without an Upgrade header.
        StatusCode::BAD_REQUEST
    };
    let body = serde_json::json!({ "code": status.as_u16(), "error": status.canonical_reason() });
    Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
}

/// Serves `filter` on `listener` until `shutdown`; then stops accepting and gives in-flight
/// HTTP requests up to `drain` (upgraded WebSockets are drained by their sessions).
pub fn serve<F, R>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    filter: F,
    shutdown: CancellationToken,
    drain: Duration,
) -> JoinHandle<()>
where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    F::Future: Send,
    R: Reply,
{
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT);
        let http = Arc::new(http.http1_only());
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let routes = warp::service(filter.clone());
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    let mut routes = routes.clone();
                    async move { routes.call(req).await }
                },
            );
            let (http, tls, watcher) = (http.clone(), tls.clone(), graceful.watcher());
            tokio::spawn(async move {
                let result = match tls {
                    None => {
                        let conn = http.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(tls) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let conn = http
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service);
                                watcher.watch(conn.into_owned()).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "HTTP requests still running after the drain timeout; dropping them"
            );
        }
    })
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

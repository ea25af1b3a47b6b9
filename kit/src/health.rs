//! Readiness of a daemon as a whole: starting, ready, draining.
//!
//! `/readyz` reports it so load balancers (and, for rtcd, the proxies) stop sending new work
//! while a daemon starts or drains; `/healthz` only says the process answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use warp::Filter as _;
use warp::Reply as _;

/// Lifecycle phase, shared by every interface that admits new work.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

/// One phase of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listeners are being set up; not ready.
    Starting,
    /// Accepting new work.
    Ready,
    /// Shutting down: existing work finishes, new work is refused.
    Draining,
}

impl Health {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Marks the daemon ready (no effect once draining).
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the daemon draining; irreversible.
    pub fn set_draining(&self) {
        self.0.store(2, Ordering::Release);
    }

    /// Whether new work is accepted.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready
    }
}

impl Phase {
    /// The word `/readyz` answers with: `starting`, `ready` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// `GET /healthz` (`200 {"status":"ok"}` while the process answers) and `GET /readyz` (`200`
/// when ready, `503` while starting or draining; `{"status": phase}`), the same JSON in both
/// daemons so one probe or dashboard reads both. `details` may add fields to the readiness
/// body (the proxy reports its TURN probes there); it does not change the status.
pub fn routes<D>(
    health: Arc<Health>,
    details: D,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone
where
    D: Fn(&mut serde_json::Value) + Clone + Send + Sync + 'static,
{
    let healthz = warp::path!("healthz").and(warp::get()).map(|| {
        warp::reply::with_status(
            warp::reply::json(&serde_json::json!({"status": "ok"})),
            warp::http::StatusCode::OK,
        )
        .into_response()
    });
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let phase = health.phase();
        let status = if phase == Phase::Ready {
            warp::http::StatusCode::OK
        } else {
            warp::http::StatusCode::SERVICE_UNAVAILABLE
        };
        let mut body = serde_json::json!({"status": phase.as_str()});
        details(&mut body);
        warp::reply::with_status(warp::reply::json(&body), status).into_response()
    });
    healthz.or(readyz).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET path` over a real socket: (status, JSON body).
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        let status = reply[9..12].parse().unwrap();
        let body = reply.split("\r\n\r\n").nth(1).unwrap();
        (status, serde_json::from_str(body).unwrap())
    }

    #[tokio::test]
    async fn readiness_follows_the_phase_and_carries_details() {
        let health = Arc::new(Health::default());
        let routes = routes(health.clone(), |body: &mut serde_json::Value| {
            body["extra"] = 1.into();
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = warp::service(routes);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = crate::listener::serve(
            listener,
            crate::listener::Options {
                tls: None,
                limits: crate::listener::Limits::default(),
                observer: Arc::new(|_| {}),
                shutdown: shutdown.clone(),
                drain: std::time::Duration::from_secs(1),
            },
            move |req| {
                let mut service = service.clone();
                async move {
                    use tower_service::Service as _;
                    match service.call(req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            },
        );
        assert_eq!(
            get(addr, "/healthz").await,
            (200, serde_json::json!({"status": "ok"}))
        );
        assert_eq!(
            get(addr, "/readyz").await,
            (503, serde_json::json!({"status": "starting", "extra": 1}))
        );
        health.set_ready();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        health.set_draining();
        health.set_ready();
        assert_eq!(
            get(addr, "/readyz").await,
            (503, serde_json::json!({"status": "draining", "extra": 1}))
        );
        shutdown.cancel();
        server.await.unwrap();
    }
}

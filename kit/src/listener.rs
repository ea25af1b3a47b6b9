//! The HTTP accept loop both daemons serve their listeners with: TCP or TLS, HTTP/1.1 with
//! upgrades (the proxy's WebSocket), bounded against slow and greedy clients, drained with a
//! bound on shutdown.
//!
//! warp 0.4 has neither TLS nor an exported acceptor, so the loop is ours. What a client can
//! hold is bounded three ways, because each alone leaves a slowloris a way in:
//! - **time before the first request**: the TLS handshake and the first request head must
//!   arrive within [`Limits::header_timeout`] of the accept (a client that connects and says
//!   nothing, or trickles a head byte by byte, is cut); between keep-alive requests hyper's
//!   own header timeout applies the same bound;
//! - **time per request**: from its head to the response, [`Limits::request_timeout`] (a body
//!   trickled byte by byte gets `408` and the connection closes);
//! - **connections held at once**: [`Limits::max_connections`] in all and
//!   [`Limits::max_connections_per_ip`] per source address (IPv6 per /64, the smallest block
//!   one host gets), so one host cannot take the descriptors every other client needs. Over
//!   a cap the connection is closed at accept, before any TLS or HTTP work.
//!
//! HTTP/2 is not offered: nothing needs it on these listeners (gRPC has its own), and its
//! streams would need bounds of their own. Upgraded connections (WebSocket) leave the counts
//! once upgraded; the proxy's sessions bound them ([limits] there).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warp::Reply as _;

use crate::rate::AddrKey;

/// The remote address of the connection a request arrived on; every request carries it as an
/// extension (rate limits and audit lines key on it).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The response type handlers produce (warp's).
pub type Response = warp::reply::Response;

/// What one client may hold on a listener (module docs say why each exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TLS handshake plus the first request head, counted from the accept; also the longest
    /// wait for the next head on a kept-alive connection.
    pub header_timeout: Duration,
    /// From a request's head to its response (reading the body included).
    pub request_timeout: Duration,
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6: one /64).
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_ip: 64,
        }
    }
}

/// Which of [`Limits`] a daemon's setting is out of range (the daemon names its setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// [`Limits::header_timeout`]: 1 to 300 s.
    HeaderTimeout,
    /// [`Limits::request_timeout`]: 1 to 600 s.
    RequestTimeout,
    /// [`Limits::max_connections`] / [`Limits::max_connections_per_ip`]: at least 1 each, the
    /// per-address cap at most the total.
    Connections,
}

impl Limits {
    /// Checks the bounds at start, so a zero or absurd setting is a clear error rather than a
    /// listener that cuts every client.
    pub fn check(&self) -> Result<(), (Bound, &'static str)> {
        let seconds = |d: Duration| d.as_secs_f64();
        if !(1.0..=300.0).contains(&seconds(self.header_timeout)) {
            return Err((Bound::HeaderTimeout, "must be between 1 and 300 seconds"));
        }
        if !(1.0..=600.0).contains(&seconds(self.request_timeout)) {
            return Err((Bound::RequestTimeout, "must be between 1 and 600 seconds"));
        }
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.max_connections_per_ip > self.max_connections
        {
            return Err((
                Bound::Connections,
                "both connection caps must be at least 1, and the per-address cap at most the total",
            ));
        }
        Ok(())
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// [`Limits::max_connections`].
    Total,
    /// [`Limits::max_connections_per_ip`].
    PerAddress,
}

/// What the listener did to a client, told to the daemon (its metrics count them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection closed at accept by a cap.
    Refused(Refusal),
    /// A connection cut because its TLS handshake or request head did not arrive in time.
    HeadTimeout,
    /// A request answered `408` because it did not complete in time.
    RequestTimeout,
}

impl Event {
    /// A stable snake_case name for metrics labels: `max_connections`,
    /// `max_connections_per_ip`, `head_timeout`, `request_timeout`.
    pub fn label(self) -> &'static str {
        match self {
            Event::Refused(Refusal::Total) => "max_connections",
            Event::Refused(Refusal::PerAddress) => "max_connections_per_ip",
            Event::HeadTimeout => "head_timeout",
            Event::RequestTimeout => "request_timeout",
        }
    }
}

/// Receives [`Event`]s; called on the accept loop or a connection's task, so it must be cheap.
pub type Observer = Arc<dyn Fn(Event) + Send + Sync>;

/// Labels of a daemon's `<prefix>_http_connections_cut_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CutLabels {
    /// The listener's name in the daemon (`api`, `public`, `metrics`).
    pub listener: &'static str,
    /// [`Event::label`].
    pub reason: &'static str,
}

/// The counter both daemons export as `<prefix>_http_connections_cut_total`: connections
/// their listeners closed at accept, cut for a late head, or answered 408.
#[derive(Debug, Clone, Default)]
pub struct Cuts(
    prometheus_client::metrics::family::Family<
        CutLabels,
        prometheus_client::metrics::counter::Counter,
    >,
);

impl Cuts {
    /// Registers the counter as `http_connections_cut` in `registry` (whose prefix names the
    /// daemon).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "http_connections_cut",
            "Connections the HTTP listeners closed at accept (over a cap), cut for a late request head, or answered 408 (request too slow), by listener and reason",
            self.0.clone(),
        );
    }

    /// An [`Observer`] counting what the listener named `listener` reports.
    pub fn observer(&self, listener: &'static str) -> Observer {
        let family = self.0.clone();
        Arc::new(move |event: Event| {
            family
                .get_or_create(&CutLabels {
                    listener,
                    reason: event.label(),
                })
                .inc();
        })
    }
}

/// How a listener is served; [`serve`] takes it whole.
pub struct Options {
    /// rustls configuration for HTTPS; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What one client may hold.
    pub limits: Limits,
    /// Told about refusals and timeouts.
    pub observer: Observer,
    /// Cancelled to stop accepting and start the drain.
    pub shutdown: CancellationToken,
    /// How long in-flight requests get after `shutdown` before their connections are dropped.
    pub drain: Duration,
}

/// Serves `handler` on `listener` until `options.shutdown`; the returned task ends once the
/// drain finished or timed out. Each request carries a [`PeerAddr`] extension.
pub fn serve<H, F>(listener: TcpListener, options: Options, handler: H) -> JoinHandle<()>
where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let Options {
        tls,
        limits,
        observer,
        shutdown,
        drain,
    } = options;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let admission = Arc::new(Admission::new(limits));
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let http = Arc::new(http.http1_only());
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = match admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    tracing::debug!(%peer, ?refusal, "connection refused at accept");
                    observer(Event::Refused(refusal));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let connection = Connection {
                peer,
                limits,
                http: http.clone(),
                observer: observer.clone(),
                watcher: graceful.watcher(),
                _slot: slot,
            };
            let deadline = tokio::time::Instant::now() + limits.header_timeout;
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                match acceptor {
                    None => connection.drive(tcp, deadline, handler).await,
                    Some(acceptor) => {
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => connection.drive(stream, deadline, handler).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                (connection.observer)(Event::HeadTimeout);
                            }
                        }
                    }
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
                "requests still running after the drain timeout; closing their connections"
            );
        }
    })
}

/// A handler for [`serve`] that answers with the warp filter `routes`.
pub fn routes_handler<F, R>(
    routes: F,
) -> impl Fn(hyper::Request<Incoming>) -> BoxedResponse + Clone + Send + Sync + 'static
where
    F: warp::Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    F::Future: Send,
    R: warp::Reply,
{
    let service = warp::service(routes);
    move |req| {
        let mut service = service.clone();
        Box::pin(async move {
            use tower_service::Service as _;
            match service.call(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    }
}

/// The future a [`routes_handler`] returns.
pub type BoxedResponse = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

/// One accepted connection and what it needs to be served.
struct Connection {
    peer: SocketAddr,
    limits: Limits,
    http: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    observer: Observer,
    watcher: hyper_util::server::graceful::Watcher,
    /// Held until the connection ends (or is upgraded): its place in the counts.
    _slot: Slot,
}

impl Connection {
    /// Serves HTTP on `io` until the client leaves, is cut for slowness, or upgrades.
    async fn drive<I, H, F>(self, io: I, deadline: tokio::time::Instant, handler: H)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let Connection {
            peer,
            limits,
            http,
            observer,
            watcher,
            _slot,
        } = self;
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let (started, observer) = (started.clone(), observer.clone());
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                started.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(PeerAddr(peer));
                let (handler, observer) = (handler.clone(), observer.clone());
                async move {
                    match tokio::time::timeout(limits.request_timeout, handler(req)).await {
                        Ok(response) => Ok::<_, Infallible>(response),
                        Err(_) => {
                            tracing::debug!(%peer, "request not completed in time");
                            observer(Event::RequestTimeout);
                            Ok(request_timeout_reply())
                        }
                    }
                }
            })
        };
        let conn = http.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = watcher.watch(conn.into_owned());
        tokio::pin!(conn);
        let result = tokio::select! {
            result = &mut conn => result,
            _ = tokio::time::sleep_until(deadline) => {
                if !started.load(Ordering::Relaxed) {
                    // Dropping the connection closes the socket.
                    tracing::debug!(%peer, "no request head in time");
                    observer(Event::HeadTimeout);
                    return;
                }
                conn.await
            }
        };
        if let Err(e) = result {
            let timed_out = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout);
            if timed_out {
                observer(Event::HeadTimeout);
            }
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// `408` in both daemons' error shape; `Connection: close`, since the rest of a trickled body
/// would otherwise be read as the next request.
fn request_timeout_reply() -> Response {
    let body = serde_json::json!({ "code": "408", "error": "request not completed in time" });
    let mut response =
        warp::reply::with_status(warp::reply::json(&body), http::StatusCode::REQUEST_TIMEOUT)
            .into_response();
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Open-connection counts; one per listener. The per-address map never holds more entries
/// than there are open connections (an entry goes when its count reaches zero), so its
/// memory is bounded by [`Limits::max_connections`].
struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_block: HashMap<AddrKey, usize>,
}

impl Admission {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let block = AddrKey::new(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.limits.max_connections {
            return Err(Refusal::Total);
        }
        let held = counts.per_block.entry(block).or_insert(0);
        if *held >= self.limits.max_connections_per_ip {
            return Err(Refusal::PerAddress);
        }
        *held += 1;
        counts.total += 1;
        Ok(Slot {
            admission: self.clone(),
            block,
        })
    }
}

/// A connection's place in the counts, given back when dropped.
struct Slot {
    admission: Arc<Admission>,
    block: AddrKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total -= 1;
        if let Some(held) = counts.per_block.get_mut(&self.block) {
            *held -= 1;
            if *held == 0 {
                counts.per_block.remove(&self.block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpSocket, TcpStream};
    use warp::Filter as _;

    use super::*;

    #[test]
    fn counts_per_address_block_and_in_total_and_gives_places_back() {
        let admission = Arc::new(Admission::new(Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        }));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(same_64).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerAddress));
        let _third = admission.admit(other).unwrap();
        assert_eq!(admission.admit(other).err(), Some(Refusal::Total));
        drop(first);
        let _again = admission.admit(a).unwrap();
        assert_eq!(admission.counts.lock().unwrap().per_block.len(), 2);
    }

    struct Server {
        addr: SocketAddr,
        events: Arc<Mutex<Vec<Event>>>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    /// A real listener on loopback with short bounds: `POST /echo` answers the body's length
    /// (so it reads the body), anything else 200.
    async fn server(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let shutdown = CancellationToken::new();
        let routes = warp::path("echo")
            .and(warp::body::bytes())
            .map(|b: bytes::Bytes| b.len().to_string())
            .or(warp::any().map(|| "ok".to_owned()))
            .unify();
        let task = serve(
            listener,
            Options {
                tls: None,
                limits,
                observer: Arc::new(move |e| seen.lock().unwrap().push(e)),
                shutdown: shutdown.clone(),
                drain: Duration::from_secs(1),
            },
            routes_handler(routes),
        );
        Server {
            addr,
            events,
            shutdown,
            task,
        }
    }

    fn short() -> Limits {
        Limits {
            header_timeout: Duration::from_millis(800),
            request_timeout: Duration::from_millis(800),
            max_connections: 8,
            max_connections_per_ip: 3,
        }
    }

    async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Reads until the server closes (or 10 s pass, which fails the test); returns what came.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the server kept a slow connection open");
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get(addr: SocketAddr, source: &str) -> String {
        let mut stream = connect_from(source, addr).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_to_close(&mut stream).await
    }

    #[tokio::test]
    async fn a_silent_client_is_cut_after_the_header_timeout() {
        let server = server(short()).await;
        let started = Instant::now();
        let mut silent = connect_from("127.0.0.1", server.addr).await;
        assert_eq!(read_to_close(&mut silent).await, "");
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert!(server.events.lock().unwrap().contains(&Event::HeadTimeout));
        server.shutdown.cancel();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_head_trickled_byte_by_byte_is_cut() {
        let server = server(short()).await;
        let mut slow = connect_from("127.0.0.1", server.addr).await;
        let trickle = async {
            for byte in
                b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            {
                if slow.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        assert!(
            trickle.await,
            "a trickled head was still accepted after 4 s"
        );
        server.shutdown.cancel();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_body_trickled_byte_by_byte_gets_408_and_the_connection_closes() {
        let server = server(short()).await;
        let mut slow = connect_from("127.0.0.1", server.addr).await;
        slow.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
        let (mut reader, mut writer) = slow.split();
        let trickle = async {
            for _ in 0..100 {
                if writer.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let read = async {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let reply = tokio::select! {
            reply = read => reply,
            _ = trickle => panic!("the trickled body was read to its end"),
        };
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("request not completed in time"), "{reply}");
        assert!(
            server
                .events
                .lock()
                .unwrap()
                .contains(&Event::RequestTimeout)
        );
        // A complete request is still served.
        assert!(get(server.addr, "127.0.0.1").await.ends_with("ok"));
        server.shutdown.cancel();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_connection() {
        let server = server(Limits {
            header_timeout: Duration::from_secs(5),
            ..short()
        })
        .await;
        // Three silent connections from one address fill its share...
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from("127.0.0.2", server.addr).await);
        }
        // ...(wait until the loop accepted them)...
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ...a fourth is closed at once, long before the header timeout...
        let started = Instant::now();
        let mut fourth = connect_from("127.0.0.2", server.addr).await;
        assert_eq!(read_to_close(&mut fourth).await, "");
        assert!(started.elapsed() < Duration::from_secs(4));
        // ...while another address is served.
        assert!(get(server.addr, "127.0.0.3").await.ends_with("ok"));
        assert!(
            server
                .events
                .lock()
                .unwrap()
                .contains(&Event::Refused(Refusal::PerAddress))
        );
        // Places come back when connections end.
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(get(server.addr, "127.0.0.2").await.ends_with("ok"));
        server.shutdown.cancel();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn the_total_cap_holds_across_addresses() {
        let server = server(Limits {
            header_timeout: Duration::from_secs(5),
            max_connections: 4,
            ..short()
        })
        .await;
        let mut held = Vec::new();
        for source in ["127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"] {
            held.push(connect_from(source, server.addr).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut over = connect_from("127.0.0.8", server.addr).await;
        assert_eq!(read_to_close(&mut over).await, "");
        let refused = AtomicUsize::new(0);
        for e in server.events.lock().unwrap().iter() {
            if *e == Event::Refused(Refusal::Total) {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        assert_eq!(refused.into_inner(), 1);
        server.shutdown.cancel();
        server.task.await.unwrap();
    }
}

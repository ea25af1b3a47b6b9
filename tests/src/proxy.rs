//! Harness for rtcd-proxy end-to-end tests: a real proxy on 127.0.0.1:0, a real WebSocket
//! client (tokio-tungstenite), token minting with the test keys in `tests/fixtures/proxy`, and
//! a real HTTP server serving a JWKS whose content a test can change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rtcd_proxy::Proxy;
use rtcd_proxy::config::{Config, KeyConfig, Secret};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};

/// The HS secret of key `hs1` (test only).
pub const HS_SECRET: &str = "e2e-test-secret-0123456789abcdef0123456789";
/// Issuer and audience the test proxy accepts.
pub const ISSUER: &str = "e2e-platform";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "rtcd-proxy";
/// How long a test waits for any single proxy reaction.
pub const STEP: Duration = Duration::from_secs(10);

/// A file in `tests/fixtures/proxy`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/proxy")
        .join(name)
}

/// Unix seconds now.
pub fn now() -> i64 {
    rtcd_proxy::auth::unix_now()
}

/// A config with HS key `hs1`, RSA key `rsa-a`, EC key `ec`, Ed25519 key `ed`, generous
/// limits (so the token matrix is not rate limited), loopback listeners on port 0.
pub fn base_config() -> Config {
    let mut c = Config::default();
    c.server.listen_address = "127.0.0.1:0".into();
    c.server.metrics_listen_address = "127.0.0.1:0".into();
    c.server.shutdown_timeout_seconds = 5;
    c.auth.issuers = vec![ISSUER.into()];
    c.auth.audiences = vec![AUDIENCE.into()];
    c.auth.leeway_seconds = 30;
    c.auth.max_lifetime_seconds = 3600;
    let key = |kid: &str, alg: &str, file: &str| KeyConfig {
        kid: kid.into(),
        algorithms: vec![alg.into()],
        public_key_file: fixture(file).display().to_string(),
        ..Default::default()
    };
    c.auth.keys = vec![
        KeyConfig {
            kid: "hs1".into(),
            algorithms: vec!["HS256".into(), "HS384".into()],
            secret: Secret::new(HS_SECRET),
            ..Default::default()
        },
        key("rsa-a", "RS256", "rsa-a.pub.pem"),
        key("ec", "ES256", "ec.pub.pem"),
        key("ed", "EdDSA", "ed.pub.pem"),
    ];
    c.limits.failed_auth_burst = 1000;
    c.limits.failed_auth_per_minute = 1000;
    c.limits.connection_burst = 1000;
    c.limits.connections_per_minute = 1000;
    c
}

/// Starts a proxy with `config` (validated first, as the binary does), without media.
pub async fn start(config: Config) -> anyhow::Result<Proxy> {
    start_with_relay(config, None).await
}

/// Starts a proxy with `config` and a relay.
pub async fn start_with_relay(
    config: Config,
    relay: Option<Arc<dyn rtcd_proxy::relay::Relay>>,
) -> anyhow::Result<Proxy> {
    config.validate().context("test config")?;
    Ok(Proxy::start(config, relay).await?)
}

/// Starts a proxy with `config` relaying to the in-process `rtcd`, where it is registered as
/// client `client_id` first: the whole media path through the proxy in one process. The relay
/// stops with `cancel`.
pub async fn start_relaying_to(
    mut config: Config,
    rtcd: &crate::daemon::TestRtcd,
    client_id: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Proxy> {
    let key = crate::daemon::key_for(client_id);
    rtcd.register_key(client_id, &key).await?;
    config.rtcd = rtcd_proxy::config::RtcdConfig {
        url: format!("http://{}", rtcd.grpc_addr()),
        client_id: client_id.into(),
        auth_key: Secret::new(key),
        api_port: rtcd.rtcd.http_addr().port(),
        health_interval_seconds: 1,
        ..Default::default()
    };
    let relay = rtcd_proxy::relay::rtcd::RtcdRelay::start(&config.rtcd, cancel.clone()).await?;
    start_with_relay(config, Some(relay)).await
}

/// Claims for `sub` in `room`, valid for 10 minutes, issued now.
pub fn claims(sub: &str, room: &str) -> Value {
    let t = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "room": room, "iat": t, "nbf": t, "exp": t + 600})
}

/// Signs `claims` with HS key `hs1`.
pub fn hs_token(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        Some("hs1"),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
}

/// Signs `claims` with a fixture private key.
pub fn pem_token(alg: Algorithm, kid: &str, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture(key_file)).expect("fixture key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no fixture for {other:?}"),
    }
    .expect("fixture key parses");
    sign(alg, Some(kid), claims, &key)
}

/// Signs with any key and header.
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signing")
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A byte stream the client speaks WebSocket over (TCP, or TLS over TCP).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// How a connection ended, or the message that came instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A JSON text message.
    Message(Value),
    /// A close frame (code, reason).
    Closed(u16, String),
    /// The connection dropped without a close frame.
    Dropped(String),
}

/// A WebSocket client.
pub struct Client {
    ws: Ws,
}

impl Client {
    /// Connects to `ws://addr/ws` (plus `query`), with optional extra headers.
    pub async fn connect(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        Self::handshake(Box::new(tcp), &format!("ws://{addr}/ws{query}"), headers).await
    }

    /// [`Client::connect`] from the local address `source` (e.g. one of many 127.x.y.z, as
    /// clients behind many addresses).
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> anyhow::Result<Self> {
        let socket = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(addr).await?;
        Self::handshake(Box::new(tcp), &format!("ws://{addr}/ws"), &[]).await
    }

    /// Connects to `wss://localhost:port/ws`, trusting only the CA in `ca_file`.
    pub async fn connect_tls(addr: SocketAddr, ca_file: &std::path::Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Self::handshake(
            Box::new(tls),
            &format!("wss://localhost:{}/ws", addr.port()),
            &[],
        )
        .await
    }

    async fn handshake(
        io: Box<dyn Io>,
        url: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut request = url.into_client_request()?;
        for (k, v) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes())?,
                http::HeaderValue::from_str(v)?,
            );
        }
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(64 << 20);
        config.max_frame_size = Some(64 << 20);
        let (ws, _) = tokio::time::timeout(
            STEP,
            tokio_tungstenite::client_async_with_config(request, io, Some(config)),
        )
        .await
        .context("WebSocket handshake timed out")??;
        Ok(Self { ws })
    }

    /// Waits `quiet` without reading or writing anything (not even pong replies).
    pub async fn stay_silent(&mut self, quiet: Duration) {
        tokio::time::sleep(quiet).await;
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, value: &Value) -> anyhow::Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// Sends one raw frame (masked, as a client must): invalid UTF-8 in a text frame, or one
    /// fragment of a message, which the typed messages cannot express.
    pub async fn send_frame(&mut self, frame: Frame) -> anyhow::Result<()> {
        Ok(self.ws.send(Message::Frame(frame)).await?)
    }

    /// Sends `total` bytes of text as one message in `fragment`-byte frames (a text frame,
    /// then continuation frames), each written out before the next with `pause` between them,
    /// as a browser on a real network does. Stops at the first write error (the proxy may
    /// close while the rest is in flight) and returns how many fragments went out.
    pub async fn send_fragmented(
        &mut self,
        total: usize,
        fragment: usize,
        pause: Duration,
    ) -> usize {
        let chunk = bytes::Bytes::from(vec![b'a'; fragment]);
        let count = total.div_ceil(fragment);
        for i in 0..count {
            let opcode = if i == 0 {
                OpCode::Data(OpData::Text)
            } else {
                OpCode::Data(OpData::Continue)
            };
            let frame = Frame::message(chunk.clone(), opcode, i + 1 == count);
            if self.ws.send(Message::Frame(frame)).await.is_err() {
                return i;
            }
            tokio::time::sleep(pause).await;
        }
        count
    }

    /// The next JSON message or the close, skipping pings.
    pub async fn next(&mut self) -> anyhow::Result<Event> {
        loop {
            let frame = tokio::time::timeout(STEP, self.ws.next())
                .await
                .context("no reaction from the proxy")?;
            return Ok(match frame {
                None => Event::Dropped("stream ended".into()),
                Some(Err(e)) => Event::Dropped(e.to_string()),
                Some(Ok(Message::Text(t))) => Event::Message(serde_json::from_str(&t)?),
                Some(Ok(Message::Close(Some(f)))) => {
                    Event::Closed(f.code.into(), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => Event::Closed(1005, String::new()),
                Some(Ok(_)) => continue,
            });
        }
    }

    /// Reads until the close frame; returns (code, reason, messages seen before it).
    pub async fn closed(&mut self) -> anyhow::Result<(u16, String, Vec<Value>)> {
        let mut seen = Vec::new();
        loop {
            match self.next().await? {
                Event::Message(m) => seen.push(m),
                Event::Closed(code, reason) => return Ok((code, reason, seen)),
                Event::Dropped(e) => bail!("dropped without a close frame: {e}; saw {seen:?}"),
            }
        }
    }

    /// The next message, which must be JSON of `type`.
    pub async fn expect(&mut self, kind: &str) -> anyhow::Result<Value> {
        match self.next().await? {
            Event::Message(m) if m["type"] == kind => Ok(m),
            other => bail!("expected `{kind}`, got {other:?}"),
        }
    }

    /// The next message of `type`, skipping other messages (an `error` fails).
    pub async fn until(&mut self, kind: &str) -> anyhow::Result<Value> {
        loop {
            match self.next().await? {
                Event::Message(m) if m["type"] == kind => return Ok(m),
                Event::Message(m) if m["type"] == "error" => bail!("error: {m}"),
                Event::Message(_) => continue,
                other => bail!("expected `{kind}`, got {other:?}"),
            }
        }
    }
}

/// The outcome of a join attempt.
#[derive(Debug)]
pub enum JoinOutcome {
    /// `joined` (the message).
    Joined(Value),
    /// `waiting` (the message): the room's policy holds the session.
    Waiting(Value),
    /// Closed with (code, reason, the `error` message's `message` if any).
    Refused(u16, String, Option<String>),
}

impl JoinOutcome {
    /// The close code, 0 when joined, 1 (no close code) when waiting.
    pub fn code(&self) -> u16 {
        match self {
            JoinOutcome::Joined(_) => 0,
            JoinOutcome::Waiting(_) => 1,
            JoinOutcome::Refused(code, ..) => *code,
        }
    }
}

/// Connects, sends `join` (token in the message if given), reports what happened.
pub async fn join(
    addr: SocketAddr,
    token: Option<&str>,
    room: &str,
) -> anyhow::Result<(Client, JoinOutcome)> {
    join_with(addr, "", &[], token, room).await
}

/// The close code of a join attempt (0 when joined).
pub async fn join_code(addr: SocketAddr, token: &str, room: &str) -> anyhow::Result<u16> {
    Ok(join(addr, Some(token), room).await?.1.code())
}

/// [`join`] with a query string and headers.
pub async fn join_with(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
    token: Option<&str>,
    room: &str,
) -> anyhow::Result<(Client, JoinOutcome)> {
    let mut client = Client::connect(addr, query, headers).await?;
    let mut message = json!({"type": "join", "room": room});
    if let Some(t) = token {
        message["token"] = t.into();
    }
    client.send(&message).await?;
    let outcome = match client.next().await? {
        Event::Message(m) if m["type"] == "joined" => JoinOutcome::Joined(m),
        Event::Message(m) if m["type"] == "waiting" => JoinOutcome::Waiting(m),
        Event::Message(m) if m["type"] == "error" => {
            let detail = m["message"].as_str().map(str::to_owned);
            let (code, reason, _) = client.closed().await?;
            JoinOutcome::Refused(code, reason, detail)
        }
        Event::Closed(code, reason) => JoinOutcome::Refused(code, reason, None),
        other => bail!("unexpected answer to join: {other:?}"),
    };
    Ok((client, outcome))
}

/// A real HTTP server on 127.0.0.1 serving a JWKS at `/jwks` whose content tests change.
pub struct JwksServer {
    /// Its address.
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl JwksServer {
    /// Serves a set made of the given fixture JWK files.
    pub async fn start(jwk_files: &[&str]) -> anyhow::Result<Self> {
        use warp::Filter as _;
        let body = Arc::new(Mutex::new(jwks(jwk_files)));
        let hits = Arc::new(AtomicUsize::new(0));
        let route = {
            let (body, hits) = (body.clone(), hits.clone());
            warp::path!("jwks").map(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let text = body.lock().expect("lock").clone();
                warp::reply::with_header(text, "content-type", "application/json")
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async {
                    let _ = rx.await;
                })
                .run(),
        );
        Ok(Self {
            addr,
            body,
            hits,
            _shutdown: tx,
        })
    }

    /// The JWKS URL.
    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Replaces the served set.
    pub fn set(&self, jwk_files: &[&str]) {
        *self.body.lock().expect("lock") = jwks(jwk_files);
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A JWKS document of fixture JWK files.
pub fn jwks(files: &[&str]) -> String {
    let keys: Vec<Value> = files
        .iter()
        .map(|f| {
            serde_json::from_str(&std::fs::read_to_string(fixture(f)).expect("jwk fixture"))
                .expect("jwk json")
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// Environment for the proxy binary: HS key `hs1`, the test issuer / audience, loopback on
/// port 0 without a metrics listener.
pub fn process_env() -> Vec<(String, String)> {
    let keys = format!(r#"[{{"kid":"hs1","algorithms":["HS256"],"secret":"{HS_SECRET}"}}]"#);
    [
        ("PROXY_SERVER_LISTEN_ADDRESS", "127.0.0.1:0"),
        ("PROXY_SERVER_METRICS_LISTEN_ADDRESS", ""),
        ("PROXY_AUTH_ISSUERS", ISSUER),
        ("PROXY_AUTH_AUDIENCES", AUDIENCE),
        ("PROXY_AUTH_KEYS", &keys),
        ("PROXY_LOGGER_LEVEL", "warn,rtcd_proxy=info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// [`process_env`] with every admission limit out of the way, for benchmarks and the load tool:
/// what they measure is the load, not the limiter.
pub fn unlimited_process_env() -> Vec<(String, String)> {
    let mut env = process_env();
    for (k, v) in [
        ("PROXY_LIMITS_CONNECTION_BURST", "100000"),
        ("PROXY_LIMITS_CONNECTIONS_PER_MINUTE", "1000000"),
        ("PROXY_LIMITS_MESSAGE_BURST", "100000"),
        ("PROXY_LIMITS_MESSAGES_PER_SECOND", "100000"),
        ("PROXY_LIMITS_MAX_CONNECTIONS", "100000"),
        ("PROXY_LIMITS_MAX_SESSIONS_PER_USER", "0"),
        ("PROXY_LIMITS_IDLE_TIMEOUT_SECONDS", "3600"),
        ("PROXY_LIMITS_PING_INTERVAL_SECONDS", "600"),
        // A join storm from one address holds many not-yet-upgraded connections at once.
        ("PROXY_SERVER_MAX_HTTP_CONNECTIONS", "100000"),
        ("PROXY_SERVER_MAX_HTTP_CONNECTIONS_PER_IP", "100000"),
    ] {
        env.push((k.into(), v.into()));
    }
    env
}

/// Runs the proxy binary at `binary` (`serve`) with exactly `env`; returns the child once it
/// logged readiness, and the address it listens on. Its stderr keeps being drained.
pub fn spawn_process(
    binary: &str,
    env: &[(String, String)],
) -> anyhow::Result<(std::process::Child, SocketAddr)> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(binary)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the proxy exited before it was ready"))??;
        if line.contains("rtcd-proxy ready")
            && let Some(rest) = line.split("addr=").nth(1)
        {
            break rest.split_whitespace().next().unwrap_or_default().parse()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

/// A TCP load balancer on 127.0.0.1 in front of proxy replicas, as a platform runs one: each
/// new connection goes to the first backend that accepts it (so when one replica is down or
/// restarting, clients reconnect to another). Connections already open are never moved: when
/// their replica dies, they break, as behind a real balancer.
pub struct Balancer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Starts balancing over `backends` (tried in order for each connection).
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let backends = backends.clone();
                tokio::spawn(async move {
                    for backend in backends {
                        if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                    // No replica up: the client sees the connection refused-like close.
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port that was free on 127.0.0.1 a moment ago, for a process that must come back on the
/// same address after a restart.
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port on 127.0.0.1");
        if claim_port(port) {
            return port;
        }
    }
}

/// Records `port` as handed to a test; false if one already had it. Ports picked free and
/// bound later (shared by hosts on several loopback addresses, or kept across a restart) could
/// otherwise go to two tests running in parallel.
///
/// The claim is an abstract Unix socket named after the port, bound and kept until the process
/// exits: under cargo-nextest every test is a process of its own, so a list in this process
/// would not see the others' claims, while a name in the abstract namespace is seen by every
/// process of the same network namespace (the one `scripts/test.sh` runs the suite in, or a
/// test's own, whose ports are its own too) and goes away with its process.
pub fn claim_port(port: u16) -> bool {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    static CLAIMS: Mutex<Vec<UnixDatagram>> = Mutex::new(Vec::new());
    let name = format!("rtcd-e2e-port-{port}");
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("an abstract socket name");
    match UnixDatagram::bind_addr(&addr) {
        Ok(claim) => {
            CLAIMS.lock().unwrap_or_else(|p| p.into_inner()).push(claim);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => false,
        Err(e) => panic!("cannot claim port {port} (abstract socket @{name}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

    use super::*;

    #[test]
    fn a_claimed_port_is_refused_to_this_process_and_seen_by_any_other() {
        let port = free_port();
        assert!(
            !claim_port(port),
            "a second claim of {port} in this process"
        );
        // What another process (another nextest test) would try: the same abstract name.
        let name = format!("rtcd-e2e-port-{port}");
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let err = UnixDatagram::bind_addr(&addr).expect_err("the claim is namespace-wide");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}

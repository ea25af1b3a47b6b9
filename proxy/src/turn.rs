//! TURN credentials for clients on UDP-hostile networks (issue 15), and the probe that checks
//! the proxy's own credentials against every configured TURN server.
//!
//! rtcd is ICE-lite and only ever offers host (or 1:1 NAT) candidates, so a client that cannot
//! reach its UDP (or ICE-TCP) port needs a relay. The proxy hands each session short-lived
//! credentials in coturn's `use-auth-secret` scheme (the "TURN REST API",
//! draft-uberti-behave-turn-rest): username `<expiry unix seconds>:<identity>`, password
//! `base64(HMAC-SHA1(secret, username))`. coturn verifies them with the same shared secret
//! and refuses them after the expiry, so nothing has to be provisioned per user and a leaked
//! credential is worthless after its lifetime.
//!
//! A wrong shared secret would otherwise show up only as calls that never connect for the
//! users who need the relay; [`probe`] performs a real TURN Allocate with the proxy's own
//! credentials (then releases it), at start (a 401 stops the proxy) and periodically (the
//! result is in `/readyz` and the metrics). The STUN/TURN client here is the minimum needed
//! for that (RFC 5389 / 5766 long-term credentials over UDP, TCP or TLS).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::config::{Secret, TurnConfig};

/// One ICE server entry as browsers take it (`RTCIceServer`): the URLs that share one
/// credential.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// `<expiry>:<identity>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
}

impl std::fmt::Debug for IceServer {
    // The credential is a bearer secret for the relay until it expires: kept out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// Credentials issued to one session, and when they stop working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedServers {
    /// The servers (one entry: all URLs share the credential).
    pub servers: Vec<IceServer>,
    /// Unix seconds after which coturn refuses new allocations with them.
    pub expires_at: i64,
}

/// The transport a TURN URL names (RFC 7065).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TurnTransport {
    /// `turn:…?transport=udp` (the default for `turn:`).
    Udp,
    /// `turn:…?transport=tcp`.
    Tcp,
    /// `turns:` (TLS over TCP).
    Tls,
}

impl TurnTransport {
    /// `udp`, `tcp` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// A parsed `turn:` / `turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    /// As configured (what clients get).
    pub raw: String,
    /// Host name or IP address (without IPv6 brackets).
    pub host: String,
    /// Port (default 3478 for `turn:`, 5349 for `turns:`).
    pub port: u16,
    /// Transport.
    pub transport: TurnTransport,
}

impl TurnUrl {
    /// Parses `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port][?transport=tcp]`
    /// (RFC 7065). Anything else is refused with the reason, so a typo fails at start.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (secure, rest) = if let Some(rest) = raw.strip_prefix("turns:") {
            (true, rest)
        } else if let Some(rest) = raw.strip_prefix("turn:") {
            (false, rest)
        } else {
            return Err(format!(
                "`{raw}` is not a turn: or turns: URL (e.g. turn:turn.example.com:3478?transport=udp)"
            ));
        };
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match query {
            None => None,
            Some("transport=udp") => Some(TurnTransport::Udp),
            Some("transport=tcp") => Some(TurnTransport::Tcp),
            Some(q) => {
                return Err(format!(
                    "`{raw}`: the only query is transport=udp or transport=tcp, not `{q}`"
                ));
            }
        };
        let transport = match (secure, transport) {
            (true, Some(TurnTransport::Udp)) => {
                return Err(format!(
                    "`{raw}`: turns: is TLS over TCP; DTLS (turns over udp) is not supported by browsers"
                ));
            }
            (true, _) => TurnTransport::Tls,
            (false, t) => t.unwrap_or(TurnTransport::Udp),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{raw}`: unclosed [ in an IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{raw}`: `{host}` is not an IPv6 address"));
            }
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let valid_host = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !valid_host {
            return Err(format!("`{raw}`: `{host}` is not a host name or address"));
        }
        let port = match port {
            None => {
                if secure {
                    5349
                } else {
                    3478
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{raw}`: `{p}` is not a port"))?,
        };
        Ok(Self {
            raw: raw.to_owned(),
            host: host.to_owned(),
            port,
            transport,
        })
    }
}

/// The TURN REST credential for `identity`, valid until `expires_at`: username
/// `expires_at:identity`, password base64(HMAC-SHA1(secret, username)), as coturn's
/// `use-auth-secret` checks it.
pub fn rest_credential(secret: &[u8], identity: &str, expires_at: i64) -> (String, String) {
    let username = format!("{expires_at}:{identity}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// What the last probe of one URL found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// Not probed yet.
    Unknown,
    /// An allocation succeeded with the proxy's credentials.
    Ok,
    /// The server refused the proxy's credentials (401): the shared secret differs.
    Unauthorized,
    /// Something else went wrong (unreachable, timeout, TLS, another error code).
    Failed,
}

/// The TURN side of the proxy: signs credentials with the first secret, and remembers the last
/// probe result per URL.
pub struct Turn {
    urls: Vec<TurnUrl>,
    /// The signing secret (the first of `turn.secrets`); the others only matter to coturn.
    secret: Secret,
    lifetime: Duration,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    status: Mutex<BTreeMap<String, (ProbeStatus, String)>>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("urls", &self.urls)
            .field("secret", &self.secret)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The server answered 401 to an authenticated Allocate: the proxy's secret is not one
    /// coturn accepts.
    #[error(
        "{url} refused the proxy's TURN credentials (401 Unauthorized, realm `{realm}`): turn.secrets[0] is not one of the server's static-auth-secret values"
    )]
    Unauthorized {
        /// The URL probed.
        url: String,
        /// The server's realm.
        realm: String,
    },
    /// Another STUN error code.
    #[error("{url} refused the allocation: {code} {reason}")]
    Refused {
        /// The URL probed.
        url: String,
        /// STUN error code.
        code: u16,
        /// The server's reason phrase.
        reason: String,
    },
    /// No answer, connection refused, TLS failure, malformed answer.
    #[error("{url}: {message}")]
    Unreachable {
        /// The URL probed.
        url: String,
        /// What happened.
        message: String,
    },
}

impl ProbeError {
    fn status(&self) -> ProbeStatus {
        match self {
            Self::Unauthorized { .. } => ProbeStatus::Unauthorized,
            _ => ProbeStatus::Failed,
        }
    }
}

impl Turn {
    /// From a validated `[turn]`; `None` when no TURN server is configured.
    pub fn from_config(config: &TurnConfig) -> Result<Option<Self>, String> {
        if config.urls.is_empty() {
            return Ok(None);
        }
        let urls = config
            .urls
            .iter()
            .map(|u| TurnUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let secret = config
            .signing_secret()?
            .ok_or_else(|| "turn.secrets: no secret".to_owned())?;
        let tls = probe_tls_config(&config.probe_ca_file)?;
        let status = urls
            .iter()
            .map(|u| (u.raw.clone(), (ProbeStatus::Unknown, String::new())))
            .collect();
        Ok(Some(Self {
            urls,
            secret,
            lifetime: Duration::from_secs(config.credential_lifetime_seconds),
            timeout: Duration::from_secs(config.probe_timeout_seconds),
            tls,
            status: Mutex::new(status),
        }))
    }

    /// Credentials for `identity`, valid from `now` for the configured lifetime.
    pub fn issue(&self, identity: &str, now: i64) -> IssuedServers {
        let expires_at = now + self.lifetime.as_secs() as i64;
        let (username, credential) =
            rest_credential(self.secret.expose().as_bytes(), identity, expires_at);
        IssuedServers {
            servers: vec![IceServer {
                urls: self.urls.iter().map(|u| u.raw.clone()).collect(),
                username,
                credential,
            }],
            expires_at,
        }
    }

    /// How long after issuing credentials a session gets new ones: at three quarters of their
    /// lifetime, so a client has a quarter of it (an hour with the default four) to apply them
    /// before anything it allocates afresh would be refused.
    pub fn refresh_after(&self) -> Duration {
        self.lifetime * 3 / 4
    }

    /// The configured URLs.
    pub fn urls(&self) -> &[TurnUrl] {
        &self.urls
    }

    /// Probes every URL once with credentials of its own (identity `rtcd-proxy-probe`) and
    /// records the outcome. Returns each failure.
    pub async fn probe_all(&self) -> Vec<ProbeError> {
        let (username, password) = rest_credential(
            self.secret.expose().as_bytes(),
            "rtcd-proxy-probe",
            crate::auth::unix_now() + 300,
        );
        let results = futures_util::future::join_all(
            self.urls
                .iter()
                .map(|url| probe(url, &username, &password, self.timeout, &self.tls)),
        )
        .await;
        let mut failures = Vec::new();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for (url, result) in self.urls.iter().zip(results) {
            let (new, detail) = match &result {
                Ok(()) => (ProbeStatus::Ok, String::new()),
                Err(e) => (e.status(), e.to_string()),
            };
            let old = status.insert(url.raw.clone(), (new.clone(), detail));
            let changed = old.is_none_or(|(s, _)| s != new);
            match result {
                Ok(()) if changed => {
                    tracing::info!(url = %url.raw, "TURN server accepts the proxy's credentials")
                }
                Ok(()) => {}
                Err(e) => {
                    if changed {
                        tracing::error!(url = %url.raw, error = %e, "TURN probe failed: clients behind UDP-blocking networks cannot relay through this server");
                    }
                    failures.push(e);
                }
            }
        }
        failures
    }

    /// The last probe result per URL: (status, detail).
    pub fn status(&self) -> BTreeMap<String, (ProbeStatus, String)> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The TLS client configuration of `turns:` probes: the CA bundle in `ca_file`, or the web PKI
/// roots when it is empty.
pub fn probe_tls_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let pem =
            std::fs::read(ca_file).map_err(|e| format!("turn.probe_ca_file {ca_file}: {e}"))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("turn.probe_ca_file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("turn.probe_ca_file: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "turn.probe_ca_file {ca_file}: no certificate in it"
            ));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(tls))
}

// ---- a minimal STUN / TURN client (RFC 5389, RFC 5766) --------------------------------------

const MAGIC_COOKIE: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const SUCCESS: u16 = 0x0100;
const ERROR: u16 = 0x0110;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_LIFETIME: u16 = 0x000D;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
const UDP_PROTOCOL: u8 = 17;

/// A STUN message being built: header plus attributes.
struct Request {
    bytes: Vec<u8>,
    tid: [u8; 12],
}

impl Request {
    fn new(method: u16) -> Self {
        let tid: [u8; 12] = rand::random();
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&method.to_be_bytes());
        bytes.extend_from_slice(&0u16.to_be_bytes());
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&tid);
        Self { bytes, tid }
    }

    fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        self.bytes.extend_from_slice(&kind.to_be_bytes());
        self.bytes
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(value);
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
        self.set_length(self.bytes.len() - 20);
        self
    }

    fn set_length(&mut self, len: usize) {
        self.bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 with the long-term key over the message, whose
    /// length already counts the attribute).
    fn integrity(mut self, key: &[u8]) -> Self {
        self.set_length(self.bytes.len() - 20 + 24);
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
        mac.update(&self.bytes);
        let digest = mac.finalize().into_bytes();
        self.attr(ATTR_MESSAGE_INTEGRITY, &digest)
    }
}

/// A parsed STUN response: its class and the attributes the probe reads.
#[derive(Debug, Default)]
struct Response {
    class: u16,
    error: Option<(u16, String)>,
    realm: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
}

fn parse_response(bytes: &[u8], tid: &[u8; 12]) -> Result<Option<Response>, String> {
    if bytes.len() < 20 || bytes[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err("not a STUN message".into());
    }
    if &bytes[8..20] != tid {
        return Ok(None); // a late answer to an earlier transmission
    }
    let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
    let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    if bytes.len() < 20 + len {
        return Err("truncated STUN message".into());
    }
    let mut response = Response {
        class: kind & 0x0110,
        ..Response::default()
    };
    let mut at = 20;
    while at + 4 <= 20 + len {
        let t = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let l = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let value = bytes
            .get(at + 4..at + 4 + l)
            .ok_or("truncated STUN attribute")?;
        match t {
            ATTR_ERROR_CODE if l >= 4 => {
                let code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
                response.error = Some((code, String::from_utf8_lossy(&value[4..]).into_owned()));
            }
            ATTR_REALM => response.realm = Some(value.to_vec()),
            ATTR_NONCE => response.nonce = Some(value.to_vec()),
            _ => {}
        }
        at += 4 + l.div_ceil(4) * 4;
    }
    Ok(Some(response))
}

/// One STUN transaction over a connected transport.
trait Transport {
    async fn transact(&mut self, request: &Request, timeout: Duration) -> Result<Response, String>;
}

struct Udp(tokio::net::UdpSocket);

impl Transport for Udp {
    async fn transact(&mut self, request: &Request, timeout: Duration) -> Result<Response, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rto = Duration::from_millis(250);
        let mut buf = vec![0u8; 2048];
        loop {
            self.0
                .send(&request.bytes)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let wait = (tokio::time::Instant::now() + rto).min(deadline);
            loop {
                match tokio::time::timeout_at(wait, self.0.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        if let Some(r) = parse_response(&buf[..n], &request.tid)? {
                            return Ok(r);
                        }
                    }
                    Ok(Err(e)) => return Err(format!("receive: {e}")),
                    Err(_) => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no answer within {} s", timeout.as_secs()));
            }
            rto *= 2;
        }
    }
}

/// STUN over a byte stream (TCP or TLS): messages are self-delimiting (RFC 5389 §7.2.2).
struct Stream<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for Stream<S> {
    async fn transact(&mut self, request: &Request, timeout: Duration) -> Result<Response, String> {
        let io = async {
            self.0
                .write_all(&request.bytes)
                .await
                .map_err(|e| format!("send: {e}"))?;
            self.0.flush().await.map_err(|e| format!("send: {e}"))?;
            loop {
                let mut header = [0u8; 20];
                self.0
                    .read_exact(&mut header)
                    .await
                    .map_err(|e| format!("receive: {e}"))?;
                let len = u16::from_be_bytes([header[2], header[3]]) as usize;
                let mut message = header.to_vec();
                message.resize(20 + len, 0);
                self.0
                    .read_exact(&mut message[20..])
                    .await
                    .map_err(|e| format!("receive: {e}"))?;
                if let Some(r) = parse_response(&message, &request.tid)? {
                    return Ok(r);
                }
            }
        };
        tokio::time::timeout(timeout, io)
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
    }
}

/// Performs a TURN Allocate on `url` with the long-term credential (`username`, `password`),
/// then releases the allocation (Refresh with lifetime 0). `Ok` means the server accepted the
/// credential; a 401 to the authenticated request is [`ProbeError::Unauthorized`].
pub async fn probe(
    url: &TurnUrl,
    username: &str,
    password: &str,
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(), ProbeError> {
    let unreachable = |message: String| ProbeError::Unreachable {
        url: url.raw.clone(),
        message,
    };
    let addr: SocketAddr = tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| unreachable("name resolution timed out".into()))?
    .map_err(|e| unreachable(format!("cannot resolve {}: {e}", url.host)))?
    .next()
    .ok_or_else(|| unreachable(format!("{} has no address", url.host)))?;
    match url.transport {
        TurnTransport::Udp => {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let socket = tokio::net::UdpSocket::bind(bind)
                .await
                .map_err(|e| unreachable(format!("bind: {e}")))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| unreachable(format!("connect: {e}")))?;
            allocate(&mut Udp(socket), url, username, password, timeout).await
        }
        TurnTransport::Tcp | TurnTransport::Tls => {
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| unreachable("TCP connect timed out".into()))?
                .map_err(|e| unreachable(format!("TCP connect to {addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            if url.transport == TurnTransport::Tcp {
                return allocate(&mut Stream(tcp), url, username, password, timeout).await;
            }
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| unreachable(format!("TLS server name {}: {e}", url.host)))?;
            let stream = tokio::time::timeout(
                timeout,
                tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| unreachable("TLS handshake timed out".into()))?
            .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
            allocate(&mut Stream(stream), url, username, password, timeout).await
        }
    }
}

async fn allocate(
    transport: &mut impl Transport,
    url: &TurnUrl,
    username: &str,
    password: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let protocol = |message: String| ProbeError::Unreachable {
        url: url.raw.clone(),
        message,
    };
    let first = Request::new(ALLOCATE).attr(ATTR_REQUESTED_TRANSPORT, &[UDP_PROTOCOL, 0, 0, 0]);
    let challenge = transport
        .transact(&first, timeout)
        .await
        .map_err(&protocol)?;
    if challenge.class == SUCCESS {
        return Err(protocol(
            "the server allocated without authentication: it is not configured with use-auth-secret".into(),
        ));
    }
    let (Some(realm), Some(mut nonce)) = (challenge.realm, challenge.nonce) else {
        return Err(protocol(format!(
            "expected a 401 challenge with realm and nonce, got {:?}",
            challenge.error
        )));
    };
    let key = {
        use md5::Digest as _;
        let mut md5 = md5::Md5::new();
        md5.update(username.as_bytes());
        md5.update(b":");
        md5.update(&realm);
        md5.update(b":");
        md5.update(password.as_bytes());
        md5.finalize()
    };
    let signed = |method: u16, nonce: &[u8]| {
        let request = Request::new(method);
        let request = if method == ALLOCATE {
            request.attr(ATTR_REQUESTED_TRANSPORT, &[UDP_PROTOCOL, 0, 0, 0])
        } else {
            request.attr(ATTR_LIFETIME, &0u32.to_be_bytes())
        };
        request
            .attr(ATTR_USERNAME, username.as_bytes())
            .attr(ATTR_REALM, &realm)
            .attr(ATTR_NONCE, nonce)
            .integrity(&key)
    };
    // One retry for 438 Stale Nonce (the server may rotate nonces between the two requests).
    for _ in 0..2 {
        let answer = transport
            .transact(&signed(ALLOCATE, &nonce), timeout)
            .await
            .map_err(&protocol)?;
        match (answer.class, answer.error) {
            (SUCCESS, _) => {
                // Release it: a probe must not hold relay ports. Best effort.
                let _ = transport
                    .transact(&signed(REFRESH, &nonce), Duration::from_secs(2))
                    .await;
                return Ok(());
            }
            (ERROR, Some((401, _))) => {
                return Err(ProbeError::Unauthorized {
                    url: url.raw.clone(),
                    realm: String::from_utf8_lossy(&realm).into_owned(),
                });
            }
            (ERROR, Some((438, _))) => {
                nonce = answer.nonce.unwrap_or(nonce);
            }
            (_, Some((code, reason))) => {
                return Err(ProbeError::Refused {
                    url: url.raw.clone(),
                    code,
                    reason,
                });
            }
            (class, None) => {
                return Err(protocol(format!(
                    "unexpected STUN class {class:#06x} without an error code"
                )));
            }
        }
    }
    Err(protocol("stale nonce twice in a row".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 29 #10: every `turns:` URL the docs and samples show (parsed as the proxy parses
    /// them) uses the port the shipped coturn configuration listens on for TLS, and every
    /// `turn:` URL its plain port, so copying both gives URLs something listens on.
    #[test]
    fn documented_turn_urls_use_the_sample_coturn_ports() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let conf = std::fs::read_to_string(root.join("deploy/coturn/turnserver.conf")).unwrap();
        let setting = |key: &str| -> u16 {
            conf.lines()
                .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{key} in turnserver.conf"))
                .trim()
                .parse()
                .unwrap()
        };
        let (plain, tls) = (setting("listening-port"), setting("tls-listening-port"));
        let mut seen = 0;
        for file in [
            "docs/turn.md",
            "docs/protocol.md",
            "deploy/proxy.sample.toml",
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            for (at, _) in text.match_indices("turn.example.com:") {
                let start = text[..at].rfind(['"', '`', ' ']).map_or(0, |i| i + 1);
                let end = at
                    + text[at..]
                        .find(['"', '`', ' ', ',', ']', '\n'])
                        .unwrap_or(text.len() - at);
                let url = &text[start..end];
                let parsed = TurnUrl::parse(url).unwrap_or_else(|e| panic!("{file}: {url}: {e}"));
                let want = match parsed.transport {
                    TurnTransport::Tls => tls,
                    _ => plain,
                };
                assert_eq!(parsed.port, want, "{file}: {url}");
                seen += 1;
            }
        }
        assert!(seen >= 6, "only {seen} example URLs found");
    }

    #[test]
    fn urls_parse_with_rfc7065_defaults_and_junk_is_refused() {
        let u = TurnUrl::parse("turn:turn.example.com").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("turn.example.com", 3478, TurnTransport::Udp)
        );
        let u = TurnUrl::parse("turn:10.0.0.1:3479?transport=tcp").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("10.0.0.1", 3479, TurnTransport::Tcp)
        );
        let u = TurnUrl::parse("turns:turn.example.com:443?transport=tcp").unwrap();
        assert_eq!((u.port, u.transport), (443, TurnTransport::Tls));
        let u = TurnUrl::parse("turns:[2001:db8::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("2001:db8::1", 5349, TurnTransport::Tls)
        );
        for bad in [
            "stun:x",
            "https://x",
            "turn:",
            "turn:x:0",
            "turn:x:99999",
            "turn:x?transport=sctp",
            "turns:x?transport=udp",
            "turn:[nothost]:3478",
            "turn:a b:3478",
            "turn:x:3478?transport=udp&y=1",
        ] {
            assert!(TurnUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    /// The credential coturn computes for `use-auth-secret`: the vector is computed with
    /// `openssl dgst -sha1 -hmac` (independent of this code):
    /// `printf '1700000000:alice' | openssl dgst -sha1 -hmac 'north' -binary | base64`.
    #[test]
    fn rest_credential_matches_coturns_scheme() {
        let (user, pass) = rest_credential(b"north", "alice", 1_700_000_000);
        assert_eq!(user, "1700000000:alice");
        assert_eq!(pass, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    }

    #[test]
    fn issued_credentials_carry_every_url_and_hide_the_password_from_debug() {
        let config = TurnConfig {
            urls: vec![
                "turn:t.example:3478?transport=udp".into(),
                "turns:t.example:5349?transport=tcp".into(),
            ],
            secrets: vec![Secret::new("a-long-enough-turn-secret-for-the-test")],
            credential_lifetime_seconds: 600,
            ..TurnConfig::default()
        };
        let turn = Turn::from_config(&config).unwrap().unwrap();
        let issued = turn.issue("bob", 1000);
        assert_eq!(issued.expires_at, 1600);
        assert_eq!(issued.servers.len(), 1);
        assert_eq!(issued.servers[0].urls.len(), 2);
        assert_eq!(issued.servers[0].username, "1600:bob");
        let debug = format!("{issued:?} {turn:?}");
        assert!(
            !debug.contains(&issued.servers[0].credential)
                && !debug.contains("a-long-enough-turn-secret"),
            "{debug}"
        );
        assert_eq!(turn.refresh_after(), Duration::from_secs(450));
    }

    #[test]
    fn stun_messages_round_trip_the_fields_the_probe_reads() {
        let r = Request::new(ALLOCATE).attr(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        assert_eq!(r.bytes.len(), 28);
        assert_eq!(u16::from_be_bytes([r.bytes[2], r.bytes[3]]), 8);
        let tid = r.tid;
        // A 401 answer with realm and nonce, built by hand.
        let mut answer = Request::new(0x0113);
        answer.tid = tid;
        answer.bytes[8..20].copy_from_slice(&tid);
        let answer = answer
            .attr(ATTR_ERROR_CODE, &[0, 0, 4, 1, b'U', b'n'])
            .attr(ATTR_REALM, b"rtcd.test")
            .attr(ATTR_NONCE, b"abc");
        let parsed = parse_response(&answer.bytes, &tid).unwrap().unwrap();
        assert_eq!(parsed.class, ERROR);
        assert_eq!(parsed.error, Some((401, "Un".into())));
        assert_eq!(parsed.realm.as_deref(), Some(&b"rtcd.test"[..]));
        assert_eq!(parsed.nonce.as_deref(), Some(&b"abc"[..]));
        assert!(parse_response(&answer.bytes, &[0; 12]).unwrap().is_none());
        assert!(parse_response(&answer.bytes[..10], &tid).is_err());
        // The integrity attribute is counted in the length it covers.
        let signed = Request::new(ALLOCATE).integrity(b"key");
        assert_eq!(u16::from_be_bytes([signed.bytes[2], signed.bytes[3]]), 24);
    }
}

//! Who may talk to rtcd: the client registry and the authentication service every interface
//! (HTTP basic, bearer tokens from `/login`, gRPC metadata) goes through.
//!
//! A client is one proxy deployment of one platform (a tenant). It registers a client ID and
//! an auth key; only a bcrypt hash of the key is stored ([`store`]). Authentication is built
//! so that an attacker cannot burn the CPU media needs:
//!
//! * a successful (client ID, key) verification is remembered as an HMAC under a per-process
//!   random key, so steady-state authentication is one HMAC, and a wrong key can never match
//!   (it produces a different MAC); unregistering drops the entry;
//! * bcrypt runs on the blocking pool behind a semaphore ([`SecurityConfig::bcrypt_concurrency`])
//!   with a bounded queue, never on the async workers;
//! * failed attempts are rate-limited per client ID and per source address ([`LimitKey`], with
//!   the service kit's keyed limiter) and refused *before* any hash is computed; unknown
//!   client IDs cost the same bcrypt as known ones, so timing does not reveal which IDs exist;
//! * the admin secret is compared in constant time.
//!
//! Nothing here knows HTTP or gRPC: callers pass parsed [`Credentials`] and a source address.
//! Outcomes are logged on the `audit` target, with client ID and address, never a key.

pub mod declared;
pub mod store;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::config::SecurityConfig;
use crate::metrics::Metrics;
use rtcd_kit::rate::{AddrKey, KeyedLimiter, Limited, Quota};
pub use store::{ClientRecord, ClientStore, Database, StoreError};

/// Shortest auth key accepted (Mattermost rtcd's `MinKeyLen`); also the admin secret's minimum.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest auth key accepted: bcrypt uses only the first 72 bytes, so longer keys are refused
/// rather than silently truncated.
pub const MAX_KEY_BYTES: usize = 72;
/// Longest client ID.
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Bearer tokens kept per client; a new login beyond this evicts that client's oldest token.
/// Several are allowed because several proxy replicas share one client ID.
const MAX_TOKENS_PER_CLIENT: usize = 64;
/// Bytes of randomness in a bearer token (256 bits).
const TOKEN_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Keys each limiter tracks at most (under 200 bytes each, client IDs included: at most about
/// 20 MB per limiter). Past it, full buckets are forgotten, and if none is full new keys pass
/// untracked: the bcrypt concurrency cap still bounds the CPU an attacker with many addresses
/// or IDs can take.
const MAX_TRACKED_KEYS: usize = 100_000;

/// What a limiter counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A source address (IPv6 grouped by /64, so one host cannot rotate through its block).
    Addr(AddrKey),
    /// A client ID (defeats attackers who rotate addresses).
    Client(String),
}

impl LimitKey {
    /// The key for a source address.
    pub fn addr(ip: IpAddr) -> Self {
        LimitKey::Addr(AddrKey::new(ip))
    }
}

/// rtcd's limiters: keyed by address or client ID, with the memory bound above.
type Limiter = KeyedLimiter<LimitKey>;

/// Why an authentication-related request failed. Mapped to HTTP in `api::reply` and to gRPC
/// status codes by the signaling service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The client ID breaks the format rules; the message says which.
    #[error("invalid clientID: {0}")]
    InvalidClientId(&'static str),
    /// The auth key breaks the length rules; the message says which.
    #[error("invalid authKey: {0}")]
    InvalidKey(String),
    /// Missing, malformed or wrong credentials. Deliberately says nothing more.
    #[error("authentication failed")]
    Unauthenticated,
    /// Authenticated, but not allowed to do this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The client ID is taken; registration never overwrites.
    #[error("client {0} is already registered")]
    Conflict(ClientId),
    /// No such client.
    #[error("client {0} is not registered")]
    NotFound(ClientId),
    /// Too many failures from this address or for this client ID.
    #[error("too many failed attempts, retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// When a new attempt may succeed.
        retry_after: Duration,
    },
    /// The bcrypt queue is full: the daemon protects its CPU for media.
    #[error("authentication is overloaded, retry shortly")]
    Busy,
    /// The registry failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or a crashed worker; details are in the log.
    #[error("internal error")]
    Internal,
}

/// An empty bucket in one of the limiters: the caller reports when to retry.
impl From<Limited> for AuthError {
    fn from(Limited { retry_after }: Limited) -> Self {
        AuthError::RateLimited { retry_after }
    }
}

/// A validated client ID: 1-64 characters of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        if s.is_empty() {
            return Err(AuthError::InvalidClientId("must not be empty"));
        }
        if s.len() > MAX_CLIENT_ID_LEN {
            return Err(AuthError::InvalidClientId("must be at most 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(AuthError::InvalidClientId(
                "may contain only A-Z, a-z, 0-9, '.', '_' and '-'",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

/// A secret string (auth key, admin secret, bearer token) that never prints and compares in
/// constant time: the service kit's, shared with the proxy.
pub use rtcd_kit::secret::Secret;

/// Checks an auth key against the length rules.
pub fn validate_key(key: &Secret) -> Result<(), AuthError> {
    let len = key.expose().len();
    if len < MIN_KEY_BYTES {
        return Err(AuthError::InvalidKey(format!(
            "must be at least {MIN_KEY_BYTES} bytes, got {len}"
        )));
    }
    if len > MAX_KEY_BYTES {
        return Err(AuthError::InvalidKey(format!(
            "must be at most {MAX_KEY_BYTES} bytes (bcrypt ignores the rest), got {len}"
        )));
    }
    Ok(())
}

/// Why a configured secret must not be used, if it must not (the kit's rule: a sample
/// placeholder, shorter than [`MIN_KEY_BYTES`], or one character repeated). Checked at start
/// (config validation). Registered client keys are checked by [`validate_key`] instead.
pub fn weak_secret(secret: &str) -> Option<String> {
    rtcd_kit::secret::weakness(secret.as_bytes(), MIN_KEY_BYTES)
}

/// Generates a fresh auth key: 32 random bytes, base64url (43 characters).
pub fn generate_key() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Reads a secret from `path`, or creates it there ([`generate_key`], mode 0600) on first use:
/// how development setups keep generated secrets across restarts without printing them.
pub fn secret_file(path: &std::path::Path) -> std::io::Result<Secret> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Secret::new(text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = generate_key();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            std::io::Write::write_all(&mut file, secret.expose().as_bytes())?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// Credentials as presented by a caller, parsed from an `Authorization` value.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `Basic base64(user:password)`: client ID and auth key, or anything and the admin secret.
    Basic {
        /// The user part (a client ID; ignored for the admin, as in Mattermost rtcd).
        user: String,
        /// The password part.
        password: Secret,
    },
    /// `Bearer <token>` from `/login`.
    Bearer(Secret),
}

impl Credentials {
    /// Parses an `Authorization` header (or gRPC `authorization` metadata) value.
    pub fn from_authorization(value: &str) -> Result<Self, AuthError> {
        let (scheme, rest) = value
            .trim()
            .split_once(' ')
            .ok_or(AuthError::Unauthenticated)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| AuthError::Unauthenticated)?;
            let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Unauthenticated)?;
            let (user, password) = decoded.split_once(':').ok_or(AuthError::Unauthenticated)?;
            Ok(Credentials::Basic {
                user: user.to_owned(),
                password: Secret::new(password),
            })
        } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            Ok(Credentials::Bearer(Secret::new(rest)))
        } else {
            Err(AuthError::Unauthenticated)
        }
    }
}

/// Who an authenticated caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator, via the admin secret.
    Admin,
    /// A registered client (tenant).
    Client(ClientId),
}

impl Principal {
    /// The client ID, or `admin`, for logs.
    pub fn label(&self) -> &str {
        match self {
            Principal::Admin => "admin",
            Principal::Client(id) => id.as_str(),
        }
    }
}

/// A bearer token issued by [`AuthService::login`].
#[derive(Debug, Clone)]
pub struct BearerToken {
    /// The token; shown to the client once.
    pub token: Secret,
    /// When it stops working.
    pub expires_at: SystemTime,
}

struct Verified {
    mac: [u8; 32],
    expires: Instant,
}

struct Session {
    client: ClientId,
    issued: Instant,
    expires: Instant,
}

/// Verified keys and live bearer tokens, behind one lock so that invalidation on unregister is
/// atomic with respect to a concurrent verification inserting a fresh entry.
#[derive(Default)]
struct State {
    verified: HashMap<ClientId, Verified>,
    /// SHA-256 of the token -> session; the raw token is never kept.
    sessions: HashMap<[u8; 32], Session>,
}

struct Inner {
    store: ClientStore,
    config: SecurityConfig,
    admin_digest: Option<[u8; 32]>,
    mac_key: [u8; 32],
    state: Mutex<State>,
    failures_by_addr: Limiter,
    failures_by_client: Limiter,
    self_registrations: Limiter,
    bcrypt_slots: Arc<Semaphore>,
    bcrypt_pending: Arc<AtomicUsize>,
    dummy_hash: String,
    metrics: Arc<Metrics>,
}

/// The authentication service. Cheap to clone; every interface shares one.
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

impl AuthService {
    /// Builds the service over an opened store. Computes one dummy bcrypt hash (used to make
    /// unknown client IDs cost as much as known ones), so call it at start, not per request.
    pub fn new(
        store: ClientStore,
        config: SecurityConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuthError> {
        let admin_digest = (config.enable_admin && !config.admin_secret_key.is_empty())
            .then(|| Sha256::digest(config.admin_secret_key.as_bytes()).into());
        let mut mac_key = [0u8; 32];
        rand::rng().fill_bytes(&mut mac_key);
        let dummy_hash = bcrypt::hash(generate_key().expose(), config.bcrypt_cost)
            .map_err(|_| AuthError::Internal)?;
        let concurrency = match config.bcrypt_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        metrics.clients_registered.set(store.len() as i64);
        let failed_auth =
            Quota::per_minute(config.failed_auth_burst, config.failed_auth_per_minute);
        Ok(Self {
            inner: Arc::new(Inner {
                failures_by_addr: Limiter::new(failed_auth, MAX_TRACKED_KEYS),
                failures_by_client: Limiter::new(failed_auth, MAX_TRACKED_KEYS),
                self_registrations: Limiter::new(
                    Quota::per_minute(
                        config.self_registrations_per_minute,
                        config.self_registrations_per_minute,
                    ),
                    MAX_TRACKED_KEYS,
                ),
                bcrypt_slots: Arc::new(Semaphore::new(concurrency)),
                bcrypt_pending: Arc::new(AtomicUsize::new(0)),
                store,
                config,
                admin_digest,
                mac_key,
                state: Mutex::new(State::default()),
                dummy_hash,
                metrics,
            }),
        })
    }

    /// The underlying store (for health checks and shutdown flushing).
    pub fn store(&self) -> &ClientStore {
        &self.inner.store
    }

    /// Whether anyone may register a new client without credentials.
    pub fn self_registration_allowed(&self) -> bool {
        self.inner.config.allow_self_registration
    }

    /// Registers `id` with `key`. `caller` is who authenticated (None if no credentials were
    /// given): the admin may always register; anyone may if self-registration is on. A taken
    /// ID is a conflict, never an overwrite. Returns only after the record is on disk.
    pub async fn register(
        &self,
        caller: Option<&Principal>,
        id: ClientId,
        key: Secret,
        origin: IpAddr,
    ) -> Result<(), AuthError> {
        let result = self.register_inner(caller, &id, &key, origin).await;
        audit(
            "register",
            Some(&id),
            caller,
            origin,
            result.as_ref().map(|_| ()),
        );
        result
    }

    async fn register_inner(
        &self,
        caller: Option<&Principal>,
        id: &ClientId,
        key: &Secret,
        origin: IpAddr,
    ) -> Result<(), AuthError> {
        let inner = &self.inner;
        match caller {
            Some(Principal::Admin) => {}
            _ if inner.config.allow_self_registration => {
                inner
                    .self_registrations
                    .take(&LimitKey::addr(origin), Instant::now())?;
            }
            Some(Principal::Client(_)) => {
                return Err(AuthError::Forbidden("only the admin may register clients"));
            }
            None => return Err(AuthError::Unauthenticated),
        }
        validate_key(key)?;
        // Cheap pre-check so a conflict costs no bcrypt; insert_new below is the real guard.
        if inner.store.get(id)?.is_some() {
            return Err(AuthError::Conflict(id.clone()));
        }
        self.insert_new(id, key, false).await?;
        self.commit().await
    }

    /// The registration path shared by the API and declared clients: hashes `key` (bcrypt,
    /// on the blocking pool) and inserts the record only if `id` is absent (a conflict is an
    /// error, never an overwrite). The caller validated `key` and commits.
    async fn insert_new(
        &self,
        id: &ClientId,
        key: &Secret,
        declared: bool,
    ) -> Result<(), AuthError> {
        let record = ClientRecord {
            v: 1,
            hash: self.hash_key(key).await?,
            created_unix: unix_now(),
            declared,
        };
        if !self.inner.store.insert_new(id, &record).await? {
            return Err(AuthError::Conflict(id.clone()));
        }
        Ok(())
    }

    /// bcrypt hash of `key` at the configured cost, on the blocking pool.
    async fn hash_key(&self, key: &Secret) -> Result<String, AuthError> {
        let cost = self.inner.config.bcrypt_cost;
        let key_owned = key.clone();
        self.bcrypt(move || bcrypt::hash(key_owned.expose(), cost))
            .await?
            .map_err(|_| AuthError::Internal)
    }

    /// Removes `id`. The admin may remove anyone, a client only itself. Its cached
    /// verification and bearer tokens stop working before this returns.
    pub async fn unregister(
        &self,
        caller: &Principal,
        id: ClientId,
        origin: IpAddr,
    ) -> Result<(), AuthError> {
        let result = self.unregister_inner(caller, &id).await;
        audit(
            "unregister",
            Some(&id),
            Some(caller),
            origin,
            result.as_ref().map(|_| ()),
        );
        result
    }

    async fn unregister_inner(&self, caller: &Principal, id: &ClientId) -> Result<(), AuthError> {
        let inner = &self.inner;
        match caller {
            Principal::Admin => {}
            Principal::Client(own) if own == id => {}
            Principal::Client(_) => {
                return Err(AuthError::Forbidden("a client may unregister only itself"));
            }
        }
        let removed = inner.store.remove(id).await?;
        self.forget(id);
        if !removed {
            return Err(AuthError::NotFound(id.clone()));
        }
        self.commit().await
    }

    /// Makes a registry change durable before it is acknowledged, and updates the gauge.
    async fn commit(&self) -> Result<(), AuthError> {
        let store = &self.inner.store;
        store.flush().await?;
        self.inner
            .metrics
            .clients_registered
            .set(store.len() as i64);
        Ok(())
    }

    /// Drops every cached verification and bearer token of `id`.
    fn forget(&self, id: &ClientId) {
        let mut state = self
            .inner
            .state
            .lock()
            .expect("auth state lock is never poisoned");
        state.verified.remove(id);
        state.sessions.retain(|_, s| &s.client != id);
    }

    /// Verifies `id` + `key` and issues a bearer token valid for `session_ttl_seconds`.
    pub async fn login(
        &self,
        id: ClientId,
        key: Secret,
        origin: IpAddr,
    ) -> Result<BearerToken, AuthError> {
        let result = self.login_inner(&id, &key, origin).await;
        let principal = Principal::Client(id.clone());
        audit(
            "login",
            Some(&id),
            result.as_ref().ok().map(|_| &principal),
            origin,
            result.as_ref().map(|_| ()),
        );
        result
    }

    async fn login_inner(
        &self,
        id: &ClientId,
        key: &Secret,
        origin: IpAddr,
    ) -> Result<BearerToken, AuthError> {
        let record = self.verify_client_key(id, key, origin, "login").await?;
        let mut raw = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let ttl = Duration::from_secs(self.inner.config.session_ttl_seconds);
        let now = Instant::now();
        let mut state = self
            .inner
            .state
            .lock()
            .expect("auth state lock is never poisoned");
        // Re-check under the lock: an unregister that raced this login must win.
        if !self.still_registered_with(id, &record)? {
            return Err(AuthError::Unauthenticated);
        }
        state.sessions.retain(|_, s| s.expires > now);
        let mut own: Vec<([u8; 32], Instant)> = state
            .sessions
            .iter()
            .filter(|(_, s)| &s.client == id)
            .map(|(k, s)| (*k, s.issued))
            .collect();
        if own.len() >= MAX_TOKENS_PER_CLIENT {
            own.sort_by_key(|(_, issued)| *issued);
            for (k, _) in own.iter().take(own.len() + 1 - MAX_TOKENS_PER_CLIENT) {
                state.sessions.remove(k);
            }
        }
        state.sessions.insert(
            Sha256::digest(token.as_bytes()).into(),
            Session {
                client: id.clone(),
                issued: now,
                expires: now + ttl,
            },
        );
        Ok(BearerToken {
            token: Secret::new(token),
            expires_at: SystemTime::now() + ttl,
        })
    }

    /// Authenticates a caller. Success from the cache or a bearer token costs no bcrypt.
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        origin: IpAddr,
    ) -> Result<Principal, AuthError> {
        match credentials {
            Credentials::Basic { user, password } => {
                if let Some(digest) = &self.inner.admin_digest {
                    let presented: [u8; 32] = Sha256::digest(password.expose().as_bytes()).into();
                    if bool::from(presented.ct_eq(digest)) {
                        self.inner.metrics.auth("admin", "ok");
                        return Ok(Principal::Admin);
                    }
                }
                let id = match ClientId::parse(user) {
                    Ok(id) => id,
                    Err(_) => {
                        let err = self.fail_fast(origin, None, "basic");
                        audit("authenticate", None, None, origin, Err(&err));
                        return Err(err);
                    }
                };
                self.verify_client_key(&id, password, origin, "basic")
                    .await?;
                Ok(Principal::Client(id))
            }
            Credentials::Bearer(token) => {
                let digest: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
                let now = Instant::now();
                {
                    let state = self
                        .inner
                        .state
                        .lock()
                        .expect("auth state lock is never poisoned");
                    if let Some(session) = state.sessions.get(&digest).filter(|s| s.expires > now) {
                        self.inner.metrics.auth("bearer", "ok");
                        return Ok(Principal::Client(session.client.clone()));
                    }
                }
                let err = self.fail_fast(origin, None, "bearer");
                audit("authenticate", None, None, origin, Err(&err));
                Err(err)
            }
        }
    }

    /// Cluster mode: follows the registry's copy and drops the cached verifications and
    /// bearer tokens of every client whose record another host changed or removed (a key
    /// rotated or a client unregistered through any host ends its tokens on every host within
    /// the watch's delay), keeping the registered-clients gauge current; until `cancel`.
    /// `None` with the sled registry.
    pub fn spawn_registry_follower(
        &self,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let registry = self.inner.store.shared()?.clone();
        let auth = self.clone();
        Some(tokio::spawn(async move {
            let mut changes = registry.changes();
            let mut known = registry.versions();
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let now = registry.versions();
                for (id, revision) in &known {
                    if now.get(id) != Some(revision) {
                        auth.forget(id);
                    }
                }
                auth.inner.metrics.clients_registered.set(now.len() as i64);
                known = now;
            }
        }))
    }

    /// Lists registered clients (for the admin CLI and API).
    pub fn list(&self) -> Result<Vec<ClientId>, AuthError> {
        Ok(self.inner.store.list()?)
    }

    /// The cache-then-bcrypt check of a client key. Returns the record that matched.
    async fn verify_client_key(
        &self,
        id: &ClientId,
        key: &Secret,
        origin: IpAddr,
        method: &'static str,
    ) -> Result<ClientRecord, AuthError> {
        let inner = &self.inner;
        let mac = self.mac(id, key);
        let now = Instant::now();
        {
            let state = inner
                .state
                .lock()
                .expect("auth state lock is never poisoned");
            if let Some(v) = state.verified.get(id)
                && v.expires > now
                && bool::from(v.mac.ct_eq(&mac))
            {
                drop(state);
                if let Some(record) = inner.store.get(id)? {
                    inner.metrics.auth(method, "cached");
                    return Ok(record);
                }
            }
        }
        let addr_key = LimitKey::addr(origin);
        let client_key = LimitKey::Client(id.to_string());
        let limited = inner
            .failures_by_addr
            .check(&addr_key, now)
            .and_then(|()| inner.failures_by_client.check(&client_key, now));
        if let Err(limited) = limited {
            inner.metrics.auth(method, "rate_limited");
            let err = AuthError::from(limited);
            audit("authenticate", Some(id), None, origin, Err(&err));
            return Err(err);
        }
        if validate_key(key).is_err() {
            let err = self.fail_fast(origin, Some(id), method);
            audit("authenticate", Some(id), None, origin, Err(&err));
            return Err(err);
        }
        let record = inner.store.get(id)?;
        let hash = record
            .as_ref()
            .map_or_else(|| inner.dummy_hash.clone(), |r| r.hash.clone());
        let key_owned = key.clone();
        let matched = match self
            .bcrypt(move || bcrypt::verify(key_owned.expose(), &hash))
            .await
        {
            Ok(result) => result.unwrap_or(false),
            Err(e) => {
                inner.metrics.auth(method, "busy");
                return Err(e);
            }
        };
        match record {
            Some(record) if matched => {
                let mut state = inner
                    .state
                    .lock()
                    .expect("auth state lock is never poisoned");
                // Cache only if the client was not unregistered (or re-registered) meanwhile.
                if self.still_registered_with(id, &record)? {
                    let ttl = Duration::from_secs(inner.config.auth_cache_ttl_seconds);
                    state.verified.insert(
                        id.clone(),
                        Verified {
                            mac,
                            expires: Instant::now() + ttl,
                        },
                    );
                }
                drop(state);
                inner.failures_by_client.reset(&client_key);
                inner.metrics.auth(method, "ok");
                Ok(record)
            }
            _ => {
                let _ = inner.failures_by_addr.take(&addr_key, Instant::now());
                let _ = inner.failures_by_client.take(&client_key, Instant::now());
                inner.metrics.auth(method, "failed");
                let err = AuthError::Unauthenticated;
                audit("authenticate", Some(id), None, origin, Err(&err));
                Err(err)
            }
        }
    }

    /// A failure decided without bcrypt (malformed input, unknown token): still counted, and
    /// refused as rate-limited when the budget is spent so probing stays bounded.
    fn fail_fast(&self, origin: IpAddr, id: Option<&ClientId>, method: &'static str) -> AuthError {
        let inner = &self.inner;
        let now = Instant::now();
        let mut limited = inner.failures_by_addr.take(&LimitKey::addr(origin), now);
        if let Some(id) = id {
            limited = limited.and(
                inner
                    .failures_by_client
                    .take(&LimitKey::Client(id.to_string()), now),
            );
        }
        match limited {
            Ok(()) => {
                inner.metrics.auth(method, "failed");
                AuthError::Unauthenticated
            }
            Err(limited) => {
                inner.metrics.auth(method, "rate_limited");
                AuthError::from(limited)
            }
        }
    }

    fn still_registered_with(
        &self,
        id: &ClientId,
        record: &ClientRecord,
    ) -> Result<bool, AuthError> {
        Ok(self
            .inner
            .store
            .get(id)?
            .is_some_and(|now| now.hash == record.hash))
    }

    fn mac(&self, id: &ClientId, key: &Secret) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(&self.inner.mac_key).expect("HMAC accepts any key length");
        mac.update(id.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(key.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Runs `work` (a bcrypt hash or verify) on the blocking pool, at most
    /// `bcrypt_concurrency` at a time, with at most `bcrypt_queue` callers waiting.
    async fn bcrypt<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let inner = &self.inner;
        let pending = inner.bcrypt_pending.clone();
        if pending.fetch_add(1, Ordering::SeqCst) >= inner.config.bcrypt_queue {
            pending.fetch_sub(1, Ordering::SeqCst);
            return Err(AuthError::Busy);
        }
        inner.metrics.bcrypt_pending.inc();
        let guard = PendingGuard {
            pending,
            metrics: inner.metrics.clone(),
        };
        let permit = inner
            .bcrypt_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Internal)?;
        let metrics = inner.metrics.clone();
        // The permit and the pending count move into the blocking task: if the caller goes away
        // (client disconnected), the slot stays taken until the hash really finishes.
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = work();
            metrics
                .bcrypt_seconds
                .observe(started.elapsed().as_secs_f64());
            drop(permit);
            drop(guard);
            out
        })
        .await
        .map_err(|_| AuthError::Internal)
    }
}

struct PendingGuard {
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.metrics.bcrypt_pending.dec();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One audit line per security decision: event, client, caller, address, outcome. Never a key.
fn audit(
    event: &'static str,
    id: Option<&ClientId>,
    caller: Option<&Principal>,
    origin: IpAddr,
    result: Result<(), &AuthError>,
) {
    let client_id = id.map_or("-", ClientId::as_str);
    let caller = caller.map_or("-", Principal::label);
    match result {
        Ok(_) => {
            tracing::info!(target: "audit", event, client_id, caller, remote_addr = %origin, outcome = "ok")
        }
        Err(e) => {
            tracing::warn!(target: "audit", event, client_id, caller, remote_addr = %origin, outcome = outcome_label(e), reason = %e)
        }
    }
}

fn outcome_label(e: &AuthError) -> &'static str {
    match e {
        AuthError::InvalidClientId(_) | AuthError::InvalidKey(_) => "invalid",
        AuthError::Unauthenticated => "unauthenticated",
        AuthError::Forbidden(_) => "forbidden",
        AuthError::Conflict(_) => "conflict",
        AuthError::NotFound(_) => "not_found",
        AuthError::RateLimited { .. } => "rate_limited",
        AuthError::Busy => "busy",
        AuthError::Store(_) | AuthError::Internal => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rules() {
        assert!(ClientId::parse("mattermost-prod_1.eu").is_ok());
        assert!(ClientId::parse(&"a".repeat(64)).is_ok());
        assert!(ClientId::parse("").is_err());
        assert!(ClientId::parse(&"a".repeat(65)).is_err());
        for bad in ["a b", "a/b", "a:b", "é", "a\0"] {
            assert!(ClientId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_rules() {
        assert!(validate_key(&Secret::new("k".repeat(31))).is_err());
        assert!(validate_key(&Secret::new("k".repeat(32))).is_ok());
        assert!(validate_key(&Secret::new("k".repeat(72))).is_ok());
        assert!(validate_key(&Secret::new("k".repeat(73))).is_err());
        assert_eq!(generate_key().expose().len(), 43);
    }

    #[test]
    fn authorization_parsing() {
        let basic = base64::engine::general_purpose::STANDARD.encode("client:pass:with:colons");
        match Credentials::from_authorization(&format!("Basic {basic}")).unwrap() {
            Credentials::Basic { user, password } => {
                assert_eq!(user, "client");
                assert_eq!(password.expose(), "pass:with:colons");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Credentials::from_authorization("bearer abc").unwrap(),
            Credentials::Bearer(_)
        ));
        for bad in [
            "",
            "Basic",
            "Basic !!!",
            "Bearer ",
            "Digest abc",
            "Basic bm9jb2xvbg==",
        ] {
            assert!(Credentials::from_authorization(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}

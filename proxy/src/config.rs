//! Configuration: one typed tree, loaded from TOML, overridden by `PROXY_<SECTION>_<KEY>`
//! environment variables, validated before any port is bound.
//!
//! Environment names come from the TOML path of each key in the *default* tree
//! (`auth.leeway_seconds` is `PROXY_AUTH_LEEWAY_SECONDS`), so a new field gets its variable for
//! free. Lists take `a,b,c` or a JSON array; `auth.keys` (an array of tables) takes a JSON array
//! of objects. The environment is passed in, never read here, so tests stay parallel-safe.
//! `deploy/proxy.sample.toml` documents every key; a test keeps it complete.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::policy::Capability;
use crate::room_policy::{MAX_WAIT_TIMEOUT_SECONDS, Opener, RoomPolicy};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "PROXY_";

/// Shortest HS secret accepted: RFC 7518 §3.2 asks for at least the hash output size.
pub const MIN_HS_SECRET_BYTES: usize = 32;

/// Why `secret` must not be used, if it must not (the service kit's rule, shared with rtcd: a
/// sample placeholder, shorter than [`MIN_HS_SECRET_BYTES`], or one character repeated).
/// Checked at start for every secret the proxy is configured with.
pub fn weak_secret(secret: &[u8]) -> Option<String> {
    rtcd_kit::secret::weakness(secret, MIN_HS_SECRET_BYTES)
}

/// A secret read from config: never printed by `{:?}` (the service kit's, shared with rtcd).
pub use rtcd_kit::secret::Secret;

/// Everything the proxy is told at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and TLS.
    pub server: ServerConfig,
    /// What a client may send and how fast.
    pub limits: LimitsConfig,
    /// Which tokens are accepted and what they grant.
    pub auth: AuthConfig,
    /// The media daemon sessions are relayed to.
    pub rtcd: RtcdConfig,
    /// TURN servers clients may relay through, and their credentials (docs/turn.md).
    pub turn: TurnConfig,
    /// The room service API for the platform's backend (docs/api.md).
    pub api: ApiConfig,
    /// Where rtcd delivers this tenant's room events (docs/webhooks.md).
    pub webhooks: WebhooksConfig,
    /// Who may enter rooms, and when: wait-for-host, lobby, guest access (docs/protocol.md).
    pub rooms: RoomsConfig,
    /// Log level and format.
    pub logger: LoggerConfig,
    /// The etcd cluster the rtcd hosts announce themselves in (docs/cluster.md; off when
    /// empty: hosts come from `rtcd.url`'s DNS).
    pub cluster: rtcd_kit::cluster::Settings,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener for `/ws`, `/healthz`, `/readyz` (`ip:port`, `[v6]:port` or `:port`).
    pub listen_address: String,
    /// PEM certificate chain; with `tls_key_file` the listener speaks `wss` (browsers need a
    /// secure context for cameras off localhost).
    pub tls_cert_file: String,
    /// PEM private key matching `tls_cert_file`.
    pub tls_key_file: String,
    /// Internal listener for `/metrics` (plus health); empty disables it. Keep it private.
    pub metrics_listen_address: String,
    /// On SIGTERM, how long sessions get to finish before they are cut.
    pub shutdown_timeout_seconds: u64,
    /// DEVELOPMENT ONLY: serve `GET /dev/token?room=R&name=N`, which mints a moderator token
    /// for anyone who asks. Needs an HS key in `[[auth.keys]]`.
    pub dev_tokens: bool,
    /// A connection's TLS handshake and request head (the WebSocket upgrade request too) must
    /// arrive within this; also the longest idle wait between kept-alive requests.
    pub header_timeout_seconds: u64,
    /// From a request's head to its response, body included; a trickled body gets 408.
    pub request_timeout_seconds: u64,
    /// HTTP connections open at once on each listener, before any upgrade (WebSocket
    /// sessions are counted by `limits.max_connections` once upgraded).
    pub max_http_connections: usize,
    /// HTTP connections open at once from one address (IPv6: one /64), before any upgrade.
    pub max_http_connections_per_ip: usize,
}

impl ServerConfig {
    /// The listener bounds these settings give (validated by [`Config::validate`]).
    pub fn listener_limits(&self) -> rtcd_kit::listener::Limits {
        rtcd_kit::listener::Limits {
            header_timeout: Duration::from_secs(self.header_timeout_seconds),
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            max_connections: self.max_http_connections,
            max_connections_per_ip: self.max_http_connections_per_ip,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:8080".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            metrics_listen_address: "127.0.0.1:8081".into(),
            shutdown_timeout_seconds: 10,
            dev_tokens: false,
            header_timeout_seconds: 10,
            request_timeout_seconds: 30,
            max_http_connections: 4096,
            max_http_connections_per_ip: 64,
        }
    }
}

/// `[limits]`: everything an anonymous client can make the proxy spend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest token accepted; checked before any parsing.
    pub max_token_bytes: usize,
    /// Sustained messages per second per connection.
    pub messages_per_second: u32,
    /// Messages a connection may send in a burst.
    pub message_burst: u32,
    /// New connections per minute per source address (IPv6 per /64).
    pub connections_per_minute: u32,
    /// New connections a source address may open in a burst.
    pub connection_burst: u32,
    /// Refused join tokens per minute per source address. Refused `refresh` tokens are
    /// counted per session instead (`session::MAX_REFUSED_REFRESHES`).
    pub failed_auth_per_minute: u32,
    /// Refused join tokens a source address may have in a burst.
    pub failed_auth_burst: u32,
    /// Open WebSocket connections in total; beyond it new ones are refused.
    pub max_connections: usize,
    /// Simultaneous sessions of one identity (0 = unlimited).
    pub max_sessions_per_user: usize,
    /// Time allowed between upgrade and the `join` message.
    pub join_timeout_seconds: u64,
    /// Interval of WebSocket pings sent by the proxy.
    pub ping_interval_seconds: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_seconds: u64,
    /// A frame that cannot be written for this long means the client stopped reading: the
    /// session is dropped (close 4009 `slow_client`).
    pub send_timeout_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_token_bytes: 8 * 1024,
            messages_per_second: 20,
            message_burst: 50,
            connections_per_minute: 60,
            connection_burst: 20,
            failed_auth_per_minute: 10,
            failed_auth_burst: 10,
            max_connections: 10_000,
            max_sessions_per_user: 4,
            join_timeout_seconds: 10,
            ping_interval_seconds: 20,
            idle_timeout_seconds: 60,
            send_timeout_seconds: 10,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted `iss` values (Jitsi's application ID). `*` accepts any issuer.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; the token must name one. `*` accepts any audience.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_seconds: u64,
    /// Longest token lifetime accepted (`exp - iat`, or `exp - now` without `iat`; `nbf`
    /// only gates "not before" and is never the start, see `auth::check_lifetime`).
    pub max_lifetime_seconds: u64,
    /// Whether `room: "*"` (any room) is honoured, as Jitsi does.
    pub allow_wildcard_room: bool,
    /// Whether `?jwt=` on the WebSocket URL is accepted (URLs end up in access logs).
    pub allow_query_token: bool,
    /// What happens when a session's token expires: `keep` or `refresh`.
    pub expiry_policy: ExpiryPolicy,
    /// With `refresh`: how long before expiry `token_expiring` is sent.
    pub refresh_warning_seconds: u64,
    /// HS secrets and PEM public keys, selected by `kid`.
    pub keys: Vec<KeyConfig>,
    /// A JSON Web Key Set (a platform's own key server). Its cache and refetch settings also
    /// govern the OIDC provider's key set.
    pub jwks: JwksConfig,
    /// Tokens from an OpenID Connect provider (Keycloak, ...), found by discovery.
    pub oidc: OidcConfig,
    /// What each role may do unless the token overrides it.
    pub permissions: PermissionsConfig,
    /// The platform's join-time hook that may lower what a token grants (docs/affiliation.md).
    pub affiliation: AffiliationConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway_seconds: 30,
            max_lifetime_seconds: 24 * 3600,
            allow_wildcard_room: false,
            allow_query_token: false,
            expiry_policy: ExpiryPolicy::Refresh,
            refresh_warning_seconds: 60,
            keys: Vec::new(),
            jwks: JwksConfig::default(),
            oidc: OidcConfig::default(),
            permissions: PermissionsConfig::default(),
            affiliation: AffiliationConfig::default(),
        }
    }
}

/// What the proxy does when the token of a live session expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryPolicy {
    /// The token gates the join only (LiveKit, Jitsi); the session lives on.
    Keep,
    /// `token_expiring` before expiry; without an in-band `refresh` the session is closed.
    Refresh,
}

/// One `[[auth.keys]]` entry: exactly one of `secret`, `secret_file`, `public_key_file`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    /// The `kid` header that selects this key. A token without `kid` is accepted only when
    /// exactly one key is configured.
    pub kid: String,
    /// Algorithms this key may verify; must all belong to the key's family.
    pub algorithms: Vec<String>,
    /// HS shared secret (prefer `secret_file` or the environment).
    pub secret: Secret,
    /// File holding the HS shared secret (trailing newline ignored).
    pub secret_file: String,
    /// PEM public key (RSA, EC P-256 or Ed25519).
    pub public_key_file: String,
}

/// `[auth.jwks]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksConfig {
    /// A local JWKS file, re-read on an unknown `kid`.
    pub file: String,
    /// A JWKS URL (`https://…/protocol/openid-connect/certs`), fetched and cached.
    pub url: String,
    /// Algorithms JWKS keys may verify.
    pub algorithms: Vec<String>,
    /// Age after which the cached set is refetched even without an unknown `kid`.
    pub cache_seconds: u64,
    /// Minimum time between two refetches (an unknown `kid` cannot make the proxy hammer
    /// the provider).
    pub min_refetch_seconds: u64,
    /// Timeout of one fetch.
    pub fetch_timeout_seconds: u64,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            file: String::new(),
            url: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            cache_seconds: 3600,
            min_refetch_seconds: 30,
            fetch_timeout_seconds: 5,
        }
    }
}

/// `[auth.oidc]`: an OpenID Connect provider trusted by its issuer URL. Its tokens are told
/// apart from platform tokens by their `iss` (exactly `issuer`), verified only with the keys
/// its discovery document's `jwks_uri` publishes, and mapped to a role by configuration
/// instead of our own `role` / `room` claims (see `docs/oidc.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer, exactly as the provider writes it in `iss` (e.g. Keycloak's
    /// `https://idp.example/realms/x`). Empty: OIDC is off. Discovery reads
    /// `<issuer>/.well-known/openid-configuration`, whose `issuer` must equal this string.
    pub issuer: String,
    /// Accepted audiences: one must appear in one of `audience_claims`. Required: it keeps
    /// tokens the provider minted for other applications out.
    pub audiences: Vec<String>,
    /// Claims searched for `audiences`: `aud` (RFC 9068), and `azp` for Keycloak, whose
    /// access tokens carry the client id in `azp` and often only `account` in `aud`.
    pub audience_claims: Vec<String>,
    /// Algorithms the provider's keys may verify (public-key algorithms only).
    pub algorithms: Vec<String>,
    /// Claim (dotted path) holding the user's identity.
    pub identity_claim: String,
    /// Claim (dotted path) holding the display name; missing is fine.
    pub name_claim: String,
    /// Claims (dotted paths, e.g. `realm_access.roles`, `resource_access.web.roles`,
    /// `groups`) whose string values are matched against `roles` and `capabilities`.
    pub role_claims: Vec<String>,
    /// Which provider values make which role. The highest role any value maps to wins.
    pub roles: OidcRolesConfig,
    /// Capabilities granted on top of the role's by provider values.
    pub capabilities: OidcCapabilitiesConfig,
    /// The role of a user none of whose values is mapped: `deny` (refused, close 4116),
    /// `guest` or `member`.
    pub unmapped_role: UnmappedRole,
    /// Claim (dotted path) naming the room(s) the token is for; empty = the room comes from
    /// the `join` message alone. When set, a join naming another room is refused (4111).
    pub room_claim: String,
    /// Discovery is retried with exponential backoff (from 1 s) up to this interval while the
    /// provider is unreachable.
    pub discovery_retry_max_seconds: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audiences: Vec::new(),
            audience_claims: vec!["aud".into()],
            algorithms: vec![
                "RS256".into(),
                "PS256".into(),
                "ES256".into(),
                "EdDSA".into(),
            ],
            identity_claim: "sub".into(),
            name_claim: "preferred_username".into(),
            role_claims: vec!["realm_access.roles".into(), "groups".into()],
            roles: OidcRolesConfig::default(),
            capabilities: OidcCapabilitiesConfig::default(),
            unmapped_role: UnmappedRole::Deny,
            room_claim: String::new(),
            discovery_retry_max_seconds: 60,
        }
    }
}

impl OidcConfig {
    /// Whether an OIDC provider is configured.
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }
}

/// `[auth.oidc.roles]`: provider values (roles, groups) per role of ours.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcRolesConfig {
    /// Values that make a moderator.
    pub moderator: Vec<String>,
    /// Values that make a member.
    pub member: Vec<String>,
    /// Values that make a guest.
    pub guest: Vec<String>,
}

/// `[auth.oidc.capabilities]`: provider values granting one capability each, on top of the
/// role's `[auth.permissions]` (never taking any away).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcCapabilitiesConfig {
    /// Values granting `publish_audio`.
    pub publish_audio: Vec<String>,
    /// Values granting `publish_video`.
    pub publish_video: Vec<String>,
    /// Values granting `publish_screen`.
    pub publish_screen: Vec<String>,
    /// Values granting `subscribe`.
    pub subscribe: Vec<String>,
    /// Values granting `record` (moderators only use it).
    pub record: Vec<String>,
}

impl OidcCapabilitiesConfig {
    /// Each capability with its values.
    pub fn entries(&self) -> [(Capability, &[String]); 5] {
        [
            (Capability::PublishAudio, &self.publish_audio),
            (Capability::PublishVideo, &self.publish_video),
            (Capability::PublishScreen, &self.publish_screen),
            (Capability::Subscribe, &self.subscribe),
            (Capability::Record, &self.record),
        ]
    }
}

/// What an OIDC user without a mapped role gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedRole {
    /// Refused at join (default deny).
    Deny,
    /// Joins as a guest.
    Guest,
    /// Joins as a member.
    Member,
}

/// `[auth.permissions]`: capability lists per role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionsConfig {
    /// `role: "moderator"` or Jitsi `context.user.moderator: true`.
    pub moderator: Vec<Capability>,
    /// `role: "member"` or Jitsi `context.user.moderator: false`.
    pub member: Vec<Capability>,
    /// `role: "guest"`.
    pub guest: Vec<Capability>,
    /// A token with no role at all: treated as a member with these capabilities (default
    /// deny: none).
    pub no_role: Vec<Capability>,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        use Capability::*;
        Self {
            moderator: vec![PublishAudio, PublishVideo, PublishScreen, Subscribe],
            member: vec![PublishAudio, PublishVideo, Subscribe],
            guest: vec![Subscribe],
            no_role: Vec::new(),
        }
    }
}

/// `[auth.affiliation]`: an HTTP hook of the platform's, asked at every join whether this
/// user may join this room and with what role. A token says what its issuer meant when it was
/// minted; the platform may know better by now (a Matrix room's admins changed, a member was
/// removed from a group), so the hook may **lower** the role and capabilities, or refuse the
/// join, but never raise anything (docs/affiliation.md). `url` empty: no hook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffiliationConfig {
    /// `https://` (or `http://`) endpoint the proxy POSTs to; empty = off.
    pub url: String,
    /// HMAC-SHA256 secret signing each request (`Rtcd-Signature`, as rtcd signs webhooks),
    /// 32-256 bytes (prefer `secret_file` or the environment). Never logged.
    pub secret: Secret,
    /// File holding the secret (trailing newline ignored).
    pub secret_file: String,
    /// How long one call may take, connection included, before it counts as failed.
    pub timeout_ms: u64,
    /// What a failed call (timeout, unreachable, non-2xx, malformed reply) means.
    pub fallback: AffiliationFallback,
    /// How long an answer is reused for the same identity, tenant, room, role and
    /// permissions (0 = ask every time). Failures are never cached.
    pub cache_seconds: u64,
}

impl Default for AffiliationConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: Secret::default(),
            secret_file: String::new(),
            timeout_ms: 2000,
            fallback: AffiliationFallback::Refuse,
            cache_seconds: 30,
        }
    }
}

impl AffiliationConfig {
    /// Whether a hook is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The signing secret from `secret` or `secret_file`.
    pub fn signing_secret(&self) -> Result<Secret, String> {
        secret_or_file(&self.secret, &self.secret_file)
    }
}

/// What a join gets when the affiliation hook cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffiliationFallback {
    /// Refuse the join (close 4120 `affiliation_unavailable`): the safe default, since the
    /// hook exists to take rights away.
    Refuse,
    /// Admit with what the token grants, unchanged (availability over the hook's word).
    Token,
}

impl AffiliationFallback {
    /// The config spelling, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AffiliationFallback::Refuse => "refuse",
            AffiliationFallback::Token => "token",
        }
    }
}

/// The secret given inline, or read from `file` when that is set (trailing newline ignored).
fn secret_or_file(secret: &Secret, file: &str) -> Result<Secret, String> {
    if file.is_empty() {
        return Ok(secret.clone());
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

/// `[rtcd]`: the media daemons rooms are placed on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcdConfig {
    /// `http://` or `https://` gRPC endpoints of rtcd, comma-separated; empty = no media server
    /// (joins get `media_unavailable`). Each entry is a static host, or a host name whose
    /// addresses are re-resolved every `resolve_interval_seconds` (each address one rtcd host);
    /// rooms are spread over the ready hosts by rendezvous hashing.
    pub url: String,
    /// The client ID this proxy is registered under in rtcd.
    pub client_id: String,
    /// Its auth key (prefer `auth_key_file` or the environment).
    pub auth_key: Secret,
    /// File holding the auth key.
    pub auth_key_file: String,
    /// PEM CA bundle for an `https` URL (empty = the platform's web PKI roots).
    pub ca_file: String,
    /// TLS server name, when it differs from the URL's host.
    pub server_name: String,
    /// Optional client certificate (mutual TLS).
    pub client_cert_file: String,
    /// Key of `client_cert_file`.
    pub client_key_file: String,
    /// Port of rtcd's HTTP API on every host (`/readyz` for health, `/login` for tokens).
    pub api_port: u16,
    /// How often each host's `/readyz` is probed.
    pub health_interval_seconds: u64,
    /// How often `url`'s host name is resolved again.
    pub resolve_interval_seconds: u64,
    /// Whether a host's CPU use (from its `/system`, read with each probe) weights where new
    /// rooms go: a busier host gets a smaller share. Capacity (`rtc.max_sessions` at rtcd)
    /// always counts, and only a host at capacity gets none.
    pub cpu_weighted_placement: bool,
}

impl RtcdConfig {
    /// The entries of `url`.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty())
    }
}

impl Default for RtcdConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            auth_key: Secret::default(),
            auth_key_file: String::new(),
            ca_file: String::new(),
            server_name: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            api_port: 8045,
            health_interval_seconds: 5,
            resolve_interval_seconds: 10,
            cpu_weighted_placement: true,
        }
    }
}

/// Shortest TURN credential lifetime accepted: a client needs time to apply refreshed
/// credentials (they are re-issued at three quarters of the lifetime).
pub const MIN_TURN_LIFETIME_SECONDS: u64 = 60;
/// Longest TURN credential lifetime accepted: a leaked credential relays through the server
/// until it expires, so hours, not days (Mattermost caps at under a week, LiveKit uses 4 h).
pub const MAX_TURN_LIFETIME_SECONDS: u64 = 24 * 3600;

/// `[turn]`: TURN servers (coturn with `use-auth-secret`) handed to clients with short-lived
/// credentials, for networks that block UDP to rtcd (docs/turn.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// `turn:host:3478?transport=udp`, `turn:host:3478?transport=tcp`,
    /// `turns:host:5349?transport=tcp` (RFC 7065). Empty: no TURN (joined carries no
    /// `ice_servers`). All share the credentials, so list servers sharing one secret.
    pub urls: Vec<String>,
    /// Shared secrets (coturn's `static-auth-secret`). Credentials are signed with the first;
    /// the rest are listed for rotation bookkeeping only (coturn accepts all of them). Prefer
    /// `secrets_file` or `PROXY_TURN_SECRETS`.
    pub secrets: Vec<Secret>,
    /// File with one secret per line (first line signs); instead of `secrets`.
    pub secrets_file: String,
    /// How long issued credentials are valid; re-issued (`ice_servers` message) at three
    /// quarters of it. 60 s to 24 h.
    pub credential_lifetime_seconds: u64,
    /// How often each URL is probed with a real TURN Allocate (0 = only at start). At start
    /// a 401 (the secret is wrong) stops the proxy; later results go to `/readyz` and logs.
    pub probe_interval_seconds: u64,
    /// Timeout of one probe.
    pub probe_timeout_seconds: u64,
    /// PEM CA bundle to verify `turns:` servers while probing ("" = web PKI roots).
    pub probe_ca_file: String,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secrets: Vec::new(),
            secrets_file: String::new(),
            credential_lifetime_seconds: 4 * 3600,
            probe_interval_seconds: 60,
            probe_timeout_seconds: 5,
            probe_ca_file: String::new(),
        }
    }
}

impl TurnConfig {
    /// The secrets from `secrets` or `secrets_file`, in order.
    pub fn all_secrets(&self) -> Result<Vec<Secret>, String> {
        if self.secrets_file.is_empty() {
            return Ok(self.secrets.clone());
        }
        let text = std::fs::read_to_string(&self.secrets_file)
            .map_err(|e| format!("{}: {e}", self.secrets_file))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(Secret::new)
            .collect())
    }

    /// The secret credentials are signed with (the first), if any.
    pub fn signing_secret(&self) -> Result<Option<Secret>, String> {
        Ok(self.all_secrets()?.into_iter().next())
    }
}

/// Longest server token (`api` claim) the room service API accepts, whatever is configured:
/// a leaked backend credential must die quickly.
pub const MAX_API_TOKEN_LIFETIME_SECONDS: u64 = 3600;

/// `[api]`: the room service API (`/api/v1/...` on the public listener, docs/api.md). Callers
/// are the platform's backend, authenticated by short-lived JWTs signed with the platform's
/// keys (`[[auth.keys]]`, `[auth.jwks]`) that carry an `api` claim listing their scopes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API at all.
    pub enabled: bool,
    /// Longest lifetime (`exp - iat`) of a server token; at most 3600.
    pub max_token_lifetime_seconds: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// The `[[auth.keys]]` entry (`kid`) that signs tokens issued by
    /// `POST /api/v1/rooms/{room}/tokens`; empty = token issuing is off. An HS key signs with
    /// its secret; an RS / ES / EdDSA key needs `token_signing_key_file`.
    pub token_signing_kid: String,
    /// PEM private key matching `token_signing_kid`'s public key (asymmetric keys only).
    pub token_signing_key_file: String,
    /// Lifetime of issued tokens when the request does not ask for one; never above
    /// `auth.max_lifetime_seconds`.
    pub issued_token_lifetime_seconds: u64,
    /// Whether the platform and moderators may ask a participant to unmute (`request_unmute`).
    /// Off by default: a prompt to turn on a microphone is the kind of pressure some platforms
    /// do not want to allow.
    pub allow_remote_unmute: bool,
    /// Ban length for an in-call `ban` that names none (seconds).
    pub default_ban_seconds: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_token_lifetime_seconds: 600,
            max_body_bytes: 16 * 1024,
            token_signing_kid: String::new(),
            token_signing_key_file: String::new(),
            issued_token_lifetime_seconds: 3600,
            allow_remote_unmute: false,
            default_ban_seconds: 3600,
        }
    }
}

/// `[webhooks]`: this tenant's webhook endpoints. Every proxy replica sends them to every rtcd
/// host after logging in; the rtcd hosting a room delivers its events (docs/webhooks.md), so
/// all replicas of one deployment must share these settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// `https://` (or `http://`) endpoints, at most 4; empty = no webhooks.
    pub urls: Vec<String>,
    /// The HMAC-SHA256 signing secret, 32-256 bytes (prefer `secret_file` or the environment).
    pub secret: Secret,
    /// File holding the secret.
    pub secret_file: String,
}

impl WebhooksConfig {
    /// The signing secret from `secret` or `secret_file`.
    pub fn signing_secret(&self) -> Result<Secret, String> {
        secret_or_file(&self.secret, &self.secret_file)
    }
}

/// `[rooms]`: the entry policy of this tenant's rooms, sent to rtcd with every join. A policy
/// set later through the API or by a moderator is stored at rtcd and overrides these field by
/// field. Every replica of one deployment must share these settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Participants who cannot open the room (`opened_by`) wait until someone who can is in
    /// it.
    pub wait_for_host: bool,
    /// Who opens a room under `wait_for_host`: `moderator`, or `member` (anyone who is not a
    /// guest: the Jitsi + Keycloak rule, guests enter once a signed-in user is there).
    pub opened_by: Opener,
    /// Participants who are not moderators knock, and a moderator admits or denies them.
    pub lobby: bool,
    /// Participants with role `guest` may join.
    pub guests_allowed: bool,
    /// How long a participant may wait before the session is closed (1-86400).
    pub wait_timeout_seconds: u32,
    /// The media server records the room from its first join (docs/api.md, "Recordings").
    pub record: bool,
    /// The room's media is end-to-end encrypted by its clients (docs/e2ee.md); never with
    /// `record`.
    pub e2ee: bool,
    /// Per-room exceptions, by room name (`[rooms.overrides."standup"]`): set fields replace
    /// the defaults above for that room.
    pub overrides: BTreeMap<String, RoomPolicy>,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            wait_for_host: false,
            opened_by: Opener::Moderator,
            lobby: false,
            guests_allowed: true,
            wait_timeout_seconds: 600,
            record: false,
            e2ee: false,
            overrides: BTreeMap::new(),
        }
    }
}

impl RoomsConfig {
    /// The configured policy of `room`: its override over the defaults.
    pub fn policy_for(&self, room: &str) -> RoomPolicy {
        let defaults = RoomPolicy {
            wait_for_host: Some(self.wait_for_host),
            lobby: Some(self.lobby),
            guests_allowed: Some(self.guests_allowed),
            wait_timeout_seconds: Some(self.wait_timeout_seconds),
            opened_by: Some(self.opened_by),
            record: Some(self.record),
            e2ee: Some(self.e2ee),
        };
        match self.overrides.get(room) {
            Some(o) => o.over(defaults),
            None => defaults,
        }
    }
}

/// `[logger]`: the service kit's, the same in both daemons.
pub use rtcd_kit::logging::LoggerConfig;

/// Why the configuration could not be loaded; every message names the key or variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or an environment variable could not be read (the service kit's loader).
    #[error(transparent)]
    Load(#[from] rtcd_kit::config::LoadError),
    /// A value parsed but is unacceptable.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// TOML path, e.g. `auth.keys[0].secret`.
        key: String,
        /// What is expected.
        message: String,
    },
}

/// How the proxy's variables are named.
const SOURCE: rtcd_kit::config::Source<'static> = rtcd_kit::config::Source {
    prefix: ENV_PREFIX,
    sample: "deploy/proxy.sample.toml",
};

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Defaults, then the file, then `PROXY_*` variables from `env`, then validation.
    /// Unknown `PROXY_*` variables are errors: a typo must not silently do nothing.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_table(rtcd_kit::config::read_file(path)?, path, env)
    }

    /// [`Config::load`] from the file's text (`path` only names it in errors): how the fuzz
    /// targets and their corpus replay (`crate::fuzzing`) run the whole loader without files.
    pub fn from_text(
        text: &str,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_table(rtcd_kit::config::parse(text, path)?, path, env)
    }

    fn from_table(
        table: toml::Table,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config: Config = rtcd_kit::config::overlay(table, path, SOURCE, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Every rule serde cannot express. Key files are read here too, so a bad path fails at
    /// start rather than at the first join.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        parse_listen_address(&s.listen_address).map_err(|m| invalid("server.listen_address", m))?;
        if !s.metrics_listen_address.is_empty() {
            parse_listen_address(&s.metrics_listen_address)
                .map_err(|m| invalid("server.metrics_listen_address", m))?;
        }
        rtcd_kit::tls::check_settings(&s.tls_cert_file, &s.tls_key_file).map_err(
            |(setting, message)| match setting {
                rtcd_kit::tls::Setting::Cert => invalid("server.tls_cert_file", message),
                rtcd_kit::tls::Setting::Key => invalid("server.tls_key_file", message),
            },
        )?;
        s.listener_limits().check().map_err(|(bound, message)| {
            use rtcd_kit::listener::Bound;
            let key = match bound {
                Bound::HeaderTimeout => "server.header_timeout_seconds",
                Bound::RequestTimeout => "server.request_timeout_seconds",
                Bound::Connections => "server.max_http_connections_per_ip",
            };
            invalid(key, message)
        })?;
        let l = &self.limits;
        let positive: [(&str, u64); 11] = [
            ("limits.send_timeout_seconds", l.send_timeout_seconds),
            ("limits.max_message_bytes", l.max_message_bytes as u64),
            ("limits.max_token_bytes", l.max_token_bytes as u64),
            ("limits.messages_per_second", l.messages_per_second.into()),
            ("limits.message_burst", l.message_burst.into()),
            (
                "limits.connections_per_minute",
                l.connections_per_minute.into(),
            ),
            ("limits.connection_burst", l.connection_burst.into()),
            (
                "limits.failed_auth_per_minute",
                l.failed_auth_per_minute.into(),
            ),
            ("limits.failed_auth_burst", l.failed_auth_burst.into()),
            ("limits.max_connections", l.max_connections as u64),
            ("limits.join_timeout_seconds", l.join_timeout_seconds),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_token_bytes > l.max_message_bytes {
            return Err(invalid(
                "limits.max_token_bytes",
                "must not exceed limits.max_message_bytes",
            ));
        }
        if l.ping_interval_seconds == 0 || l.idle_timeout_seconds <= l.ping_interval_seconds {
            return Err(invalid(
                "limits.idle_timeout_seconds",
                "must be greater than limits.ping_interval_seconds (which must be at least 1)",
            ));
        }
        self.validate_auth()?;
        self.validate_rtcd()?;
        self.validate_turn()?;
        self.validate_api()?;
        self.validate_rooms()?;
        self.logger
            .validate()
            .map_err(|message| invalid("logger.level", message))?;
        self.cluster
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if self.cluster.enabled() && self.rtcd.url.is_empty() {
            return Err(invalid(
                "rtcd.url",
                "required with cluster.etcd_endpoints: its scheme and TLS server name apply to every announced host (its host name is not resolved)",
            ));
        }
        if !self.cluster.advertise_address.is_empty() {
            return Err(invalid(
                "cluster.advertise_address",
                "is rtcd's setting (the address a media host announces); leave it empty here",
            ));
        }
        Ok(())
    }

    fn validate_rooms(&self) -> Result<(), ConfigError> {
        let r = &self.rooms;
        if r.wait_timeout_seconds == 0 || r.wait_timeout_seconds > MAX_WAIT_TIMEOUT_SECONDS {
            return Err(invalid(
                "rooms.wait_timeout_seconds",
                format!("must be 1-{MAX_WAIT_TIMEOUT_SECONDS}"),
            ));
        }
        if r.record && r.e2ee {
            return Err(invalid(
                "rooms.e2ee",
                "an end-to-end encrypted room cannot be recorded: not with rooms.record",
            ));
        }
        for (room, policy) in &r.overrides {
            crate::protocol::RoomName::parse(room)
                .map_err(|m| invalid("rooms.overrides", format!("{room:?}: {m}")))?;
            policy
                .validate()
                .map_err(|m| invalid("rooms.overrides", format!("{room:?}: {m}")))?;
            // As it applies: an override may set one and the defaults the other.
            if r.policy_for(room).records_encrypted() {
                return Err(invalid(
                    "rooms.overrides",
                    format!(
                        "{room:?}: an end-to-end encrypted room cannot be recorded (record with e2ee)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_api(&self) -> Result<(), ConfigError> {
        let a = &self.api;
        if a.max_token_lifetime_seconds == 0
            || a.max_token_lifetime_seconds > MAX_API_TOKEN_LIFETIME_SECONDS
        {
            return Err(invalid(
                "api.max_token_lifetime_seconds",
                format!("must be 1-{MAX_API_TOKEN_LIFETIME_SECONDS}"),
            ));
        }
        if !(1024..=1024 * 1024).contains(&a.max_body_bytes) {
            return Err(invalid("api.max_body_bytes", "must be 1024-1048576"));
        }
        if a.issued_token_lifetime_seconds == 0
            || a.issued_token_lifetime_seconds > self.auth.max_lifetime_seconds
        {
            return Err(invalid(
                "api.issued_token_lifetime_seconds",
                "must be 1 to auth.max_lifetime_seconds",
            ));
        }
        if a.default_ban_seconds == 0 || a.default_ban_seconds > 366 * 24 * 3600 {
            return Err(invalid(
                "api.default_ban_seconds",
                "must be 1 s to one year",
            ));
        }
        if !a.token_signing_kid.is_empty() {
            let Some(key) = self.auth.keys.iter().find(|k| k.kid == a.token_signing_kid) else {
                return Err(invalid(
                    "api.token_signing_kid",
                    "names no [[auth.keys]] entry (issued tokens must verify here)",
                ));
            };
            let hmac = key.public_key_file.is_empty();
            if !hmac && a.token_signing_key_file.is_empty() {
                return Err(invalid(
                    "api.token_signing_key_file",
                    "the signing key is asymmetric: give its PEM private key",
                ));
            }
            if !a.token_signing_key_file.is_empty() {
                std::fs::metadata(&a.token_signing_key_file)
                    .map_err(|e| invalid("api.token_signing_key_file", e.to_string()))?;
            }
            if self.auth.issuers.iter().all(|i| i == "*")
                || self.auth.audiences.iter().all(|i| i == "*")
            {
                return Err(invalid(
                    "api.token_signing_kid",
                    "issued tokens need a concrete issuer and audience: auth.issuers and auth.audiences must name one",
                ));
            }
        }
        let w = &self.webhooks;
        if w.urls.len() > 4 {
            return Err(invalid("webhooks.urls", "at most 4 endpoints"));
        }
        for url in &w.urls {
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(invalid(
                    "webhooks.urls",
                    format!("{url}: not an http(s) URL"),
                ));
            }
        }
        if !w.urls.is_empty() {
            let secret = w
                .signing_secret()
                .map_err(|e| invalid("webhooks.secret_file", e))?;
            if let Some(why) = weak_secret(secret.expose().as_bytes()) {
                return Err(invalid("webhooks.secret", why));
            }
            if secret.expose().len() > 256 {
                return Err(invalid("webhooks.secret", "at most 256 bytes"));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let platform_keys = !a.keys.is_empty() || !a.jwks.file.is_empty() || !a.jwks.url.is_empty();
        // With only an OIDC provider, platform issuers and audiences have nothing to apply to.
        if platform_keys || !a.oidc.enabled() {
            for (key, list) in [
                ("auth.issuers", &a.issuers),
                ("auth.audiences", &a.audiences),
            ] {
                if list.is_empty() || list.iter().any(|v| v.trim().is_empty()) {
                    return Err(invalid(
                        key,
                        "list the accepted values (non-empty strings); \"*\" accepts any, deliberately",
                    ));
                }
            }
        }
        if a.max_lifetime_seconds == 0 {
            return Err(invalid("auth.max_lifetime_seconds", "must be at least 1"));
        }
        if a.leeway_seconds > 300 {
            return Err(invalid("auth.leeway_seconds", "must be at most 300"));
        }
        if !platform_keys && !a.oidc.enabled() {
            return Err(invalid(
                "auth.keys",
                "no verification key: configure [[auth.keys]], auth.jwks.file, auth.jwks.url or auth.oidc.issuer",
            ));
        }
        self.validate_oidc()?;
        let mut kids = std::collections::HashSet::new();
        for (i, key) in a.keys.iter().enumerate() {
            let at = |field: &str| format!("auth.keys[{i}].{field}");
            if key.kid.trim().is_empty() {
                return Err(invalid(
                    at("kid"),
                    "must be set (tokens select keys by kid)",
                ));
            }
            if !kids.insert(key.kid.as_str()) {
                return Err(invalid(at("kid"), format!("duplicate kid `{}`", key.kid)));
            }
            crate::auth::keys::StaticKey::from_config(key)
                .map_err(|m| invalid(at(m.field), m.message))?;
        }
        if !a.jwks.url.is_empty() {
            let url = reqwest::Url::parse(&a.jwks.url)
                .map_err(|e| invalid("auth.jwks.url", e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid("auth.jwks.url", "must be http:// or https://"));
            }
        }
        crate::auth::keys::parse_algorithms(&a.jwks.algorithms)
            .and_then(|algs| {
                if algs.iter().any(|alg| {
                    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
                }) {
                    Err("JWKS keys are public keys: HS algorithms are not allowed".into())
                } else {
                    Ok(())
                }
            })
            .map_err(|m| invalid("auth.jwks.algorithms", m))?;
        if a.jwks.fetch_timeout_seconds == 0 {
            return Err(invalid(
                "auth.jwks.fetch_timeout_seconds",
                "must be at least 1",
            ));
        }
        self.validate_affiliation()
    }

    fn validate_affiliation(&self) -> Result<(), ConfigError> {
        let h = &self.auth.affiliation;
        if !h.enabled() {
            return Ok(());
        }
        let ok = reqwest::Url::parse(&h.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(invalid(
                "auth.affiliation.url",
                "must be an http:// or https:// URL (or empty: no hook)",
            ));
        }
        let secret = h
            .signing_secret()
            .map_err(|e| invalid("auth.affiliation.secret_file", e))?;
        if secret.is_empty() {
            return Err(invalid(
                "auth.affiliation.secret",
                "set secret or secret_file: every request is signed",
            ));
        }
        if let Some(why) = weak_secret(secret.expose().as_bytes()) {
            return Err(invalid("auth.affiliation.secret", why));
        }
        if secret.expose().len() > 256 {
            return Err(invalid("auth.affiliation.secret", "at most 256 bytes"));
        }
        if !(1..=30_000).contains(&h.timeout_ms) {
            return Err(invalid(
                "auth.affiliation.timeout_ms",
                "must be 1-30000 (a join waits for it)",
            ));
        }
        if h.cache_seconds > 3600 {
            return Err(invalid(
                "auth.affiliation.cache_seconds",
                "must be 0-3600 (a lowered role must not outlive the platform's change by long)",
            ));
        }
        Ok(())
    }

    fn validate_oidc(&self) -> Result<(), ConfigError> {
        let o = &self.auth.oidc;
        if !o.enabled() {
            return Ok(());
        }
        let url = reqwest::Url::parse(&o.issuer)
            .map_err(|e| invalid("auth.oidc.issuer", format!("`{}`: {e}", o.issuer)))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(invalid(
                "auth.oidc.issuer",
                "must be an http(s) URL without query or fragment, exactly as in the tokens' `iss`",
            ));
        }
        if self.auth.issuers.iter().any(|i| i == &o.issuer) {
            return Err(invalid(
                "auth.issuers",
                "lists the OIDC issuer too: its tokens are verified under [auth.oidc] only; remove it from auth.issuers",
            ));
        }
        if o.audiences.is_empty() || o.audiences.iter().any(|v| v.trim().is_empty() || v == "*") {
            return Err(invalid(
                "auth.oidc.audiences",
                "list the accepted audiences (e.g. the client id); no wildcard: the provider mints tokens for other applications too",
            ));
        }
        let bad_path = |p: &String| p.is_empty() || p.split('.').any(str::is_empty);
        if o.audience_claims.is_empty() || o.audience_claims.iter().any(bad_path) {
            return Err(invalid(
                "auth.oidc.audience_claims",
                "list the claims searched for the audience, e.g. [\"aud\"] or [\"aud\", \"azp\"]",
            ));
        }
        for (key, path) in [
            ("auth.oidc.identity_claim", &o.identity_claim),
            ("auth.oidc.name_claim", &o.name_claim),
        ] {
            if bad_path(path) {
                return Err(invalid(key, "a claim path like `sub` or `a.b`"));
            }
        }
        if !o.room_claim.is_empty() && bad_path(&o.room_claim) {
            return Err(invalid(
                "auth.oidc.room_claim",
                "a claim path like `room` or `a.b`, or empty",
            ));
        }
        if o.role_claims.iter().any(bad_path) {
            return Err(invalid(
                "auth.oidc.role_claims",
                "claim paths like `realm_access.roles` or `groups` (dots separate levels)",
            ));
        }
        let mapped = !o.role_claims.is_empty()
            && [&o.roles.moderator, &o.roles.member, &o.roles.guest]
                .iter()
                .any(|v| !v.is_empty());
        if !mapped && o.unmapped_role == UnmappedRole::Deny {
            return Err(invalid(
                "auth.oidc.roles",
                "no provider value maps to a role (set role_claims and roles.moderator / member / guest) while unmapped_role = \"deny\": every OIDC user would be refused",
            ));
        }
        crate::auth::keys::parse_algorithms(&o.algorithms)
            .and_then(|algs| {
                if algs.iter().any(|alg| {
                    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
                }) {
                    Err("a provider's published keys are public keys: HS algorithms are not allowed".into())
                } else {
                    Ok(())
                }
            })
            .map_err(|m| invalid("auth.oidc.algorithms", m))?;
        if o.discovery_retry_max_seconds == 0 {
            return Err(invalid(
                "auth.oidc.discovery_retry_max_seconds",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_rtcd(&self) -> Result<(), ConfigError> {
        let r = &self.rtcd;
        if r.url.is_empty() {
            return Ok(());
        }
        let mut schemes = std::collections::BTreeSet::new();
        for entry in r.urls() {
            let url = reqwest::Url::parse(entry)
                .map_err(|e| invalid("rtcd.url", format!("{entry}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(
                    "rtcd.url",
                    "each entry must be http://host:port or https://host:port",
                ));
            }
            schemes.insert(url.scheme().to_owned());
        }
        if schemes.len() > 1 {
            return Err(invalid("rtcd.url", "mixes http and https entries"));
        }
        if r.api_port == 0 || r.health_interval_seconds == 0 || r.resolve_interval_seconds == 0 {
            return Err(invalid(
                "rtcd.api_port",
                "api_port, health_interval_seconds and resolve_interval_seconds must be at least 1",
            ));
        }
        if r.client_id.is_empty() {
            return Err(invalid("rtcd.client_id", "required when rtcd.url is set"));
        }
        let (key_name, key) = if !r.auth_key_file.is_empty() {
            if !r.auth_key.is_empty() {
                return Err(invalid(
                    "rtcd.auth_key_file",
                    "set auth_key or auth_key_file, not both",
                ));
            }
            let text = std::fs::read_to_string(&r.auth_key_file)
                .map_err(|e| invalid("rtcd.auth_key_file", format!("{}: {e}", r.auth_key_file)))?;
            (
                "rtcd.auth_key_file",
                text.trim_end_matches(['\r', '\n']).to_owned(),
            )
        } else {
            ("rtcd.auth_key", r.auth_key.expose().to_owned())
        };
        if key.is_empty() {
            return Err(invalid(
                "rtcd.auth_key",
                "required when rtcd.url is set, at least 32 bytes",
            ));
        }
        if let Some(why) = weak_secret(key.as_bytes()) {
            return Err(invalid(key_name, why));
        }
        for (key, file) in [
            ("rtcd.ca_file", &r.ca_file),
            ("rtcd.client_cert_file", &r.client_cert_file),
            ("rtcd.client_key_file", &r.client_key_file),
        ] {
            if !file.is_empty() && !Path::new(file).is_file() {
                return Err(invalid(key, format!("{file} is not a readable file")));
            }
        }
        if r.client_cert_file.is_empty() != r.client_key_file.is_empty() {
            return Err(invalid(
                "rtcd.client_key_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        Ok(())
    }

    fn validate_turn(&self) -> Result<(), ConfigError> {
        let t = &self.turn;
        let secrets_key = if t.secrets_file.is_empty() {
            "turn.secrets"
        } else {
            "turn.secrets_file"
        };
        if !t.secrets_file.is_empty() && !t.secrets.is_empty() {
            return Err(invalid(
                "turn.secrets_file",
                "set secrets or secrets_file, not both",
            ));
        }
        let secrets = t.all_secrets().map_err(|m| invalid(secrets_key, m))?;
        if t.urls.is_empty() {
            if !secrets.is_empty() {
                return Err(invalid(
                    "turn.urls",
                    "a TURN secret is set but no TURN URL: list the servers (turn:host:3478?transport=udp, ...)",
                ));
            }
            return Ok(());
        }
        for (i, url) in t.urls.iter().enumerate() {
            crate::turn::TurnUrl::parse(url).map_err(|m| invalid(format!("turn.urls[{i}]"), m))?;
        }
        if secrets.is_empty() {
            return Err(invalid(
                secrets_key,
                "required with turn.urls: coturn's static-auth-secret (the first signs)",
            ));
        }
        for (i, secret) in secrets.iter().enumerate() {
            if let Some(why) = weak_secret(secret.expose().as_bytes()) {
                return Err(invalid(format!("{secrets_key}[{i}]"), why));
            }
        }
        if !(MIN_TURN_LIFETIME_SECONDS..=MAX_TURN_LIFETIME_SECONDS)
            .contains(&t.credential_lifetime_seconds)
        {
            return Err(invalid(
                "turn.credential_lifetime_seconds",
                format!(
                    "must be between {MIN_TURN_LIFETIME_SECONDS} and {MAX_TURN_LIFETIME_SECONDS} (24 h), got {}",
                    t.credential_lifetime_seconds
                ),
            ));
        }
        if t.probe_timeout_seconds == 0 || t.probe_timeout_seconds > 60 {
            return Err(invalid(
                "turn.probe_timeout_seconds",
                "must be between 1 and 60",
            ));
        }
        if !t.probe_ca_file.is_empty() && !Path::new(&t.probe_ca_file).is_file() {
            return Err(invalid(
                "turn.probe_ca_file",
                format!("{} is not a readable file", t.probe_ca_file),
            ));
        }
        Ok(())
    }

    /// The public listener's address (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        parse_listen_address(&self.server.listen_address).expect("validated")
    }

    /// The metrics listener's address, if enabled (validated).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let a = &self.server.metrics_listen_address;
        (!a.is_empty()).then(|| parse_listen_address(a).expect("validated"))
    }
}

/// `ip:port`, `[v6]:port`, or `:port` for every IPv4 interface.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    rtcd_kit::config::parse_listen_address(s, "127.0.0.1:8080")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> Vec<(String, String)> {
        env(&[
            ("PROXY_AUTH_ISSUERS", "my-app"),
            ("PROXY_AUTH_AUDIENCES", "rtcd-proxy, other"),
            (
                "PROXY_AUTH_KEYS",
                &format!(r#"[{{"kid":"k1","algorithms":["HS256"],"secret":"{SECRET}"}}]"#),
            ),
        ])
    }

    #[test]
    fn room_policies_layer_overrides_over_defaults_and_bad_ones_are_named() {
        let text = "[rooms]\nlobby = true\nwait_timeout_seconds = 60\n\
                    [rooms.overrides.\"open-house\"]\nlobby = false\nguests_allowed = false\n";
        let config = Config::from_text(text, Some(Path::new("p.toml")), minimal()).unwrap();
        let standup = config.rooms.policy_for("standup");
        assert_eq!(
            (
                standup.lobby,
                standup.guests_allowed,
                standup.wait_timeout_seconds
            ),
            (Some(true), Some(true), Some(60))
        );
        let open = config.rooms.policy_for("open-house");
        assert_eq!(
            (open.lobby, open.guests_allowed, open.wait_timeout_seconds),
            (Some(false), Some(false), Some(60))
        );
        // The environment overrides the defaults like any other key.
        let mut vars = minimal();
        vars.push(("PROXY_ROOMS_WAIT_FOR_HOST".into(), "true".into()));
        let config = Config::from_text("", Some(Path::new("p.toml")), vars).unwrap();
        assert_eq!(config.rooms.policy_for("x").wait_for_host, Some(true));
        assert_eq!(config.rooms.policy_for("x").e2ee, Some(false));
        // One room encrypted, the others recorded: fine.
        let text = "[rooms]\nrecord = true\n[rooms.overrides.\"x\"]\nrecord = false\ne2ee = true\n";
        let config = Config::from_text(text, Some(Path::new("p.toml")), minimal()).unwrap();
        assert_eq!(config.rooms.policy_for("x").e2ee, Some(true));
        assert_eq!(config.rooms.policy_for("y").e2ee, Some(false));
        for (bad, key) in [
            (
                "[rooms]\nwait_timeout_seconds = 0\n",
                "rooms.wait_timeout_seconds",
            ),
            (
                "[rooms.overrides.\"x\"]\nwait_timeout_seconds = 100000\n",
                "rooms.overrides",
            ),
            (
                "[rooms.overrides.\"bad room\"]\nlobby = true\n",
                "rooms.overrides",
            ),
            ("[rooms.overrides.\"x\"]\nlobbby = true\n", "lobbby"),
            // An end-to-end encrypted room is never recorded: not both, however they combine.
            ("[rooms]\nrecord = true\ne2ee = true\n", "rooms.e2ee"),
            (
                "[rooms]\nrecord = true\n[rooms.overrides.\"x\"]\ne2ee = true\n",
                "rooms.overrides",
            ),
        ] {
            let e = Config::from_text(bad, Some(Path::new("p.toml")), minimal()).unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn listener_bounds_are_checked_and_named() {
        for (var, value, key) in [
            (
                "PROXY_SERVER_HEADER_TIMEOUT_SECONDS",
                "0",
                "server.header_timeout_seconds",
            ),
            (
                "PROXY_SERVER_REQUEST_TIMEOUT_SECONDS",
                "601",
                "server.request_timeout_seconds",
            ),
            (
                "PROXY_SERVER_MAX_HTTP_CONNECTIONS_PER_IP",
                "0",
                "server.max_http_connections_per_ip",
            ),
            (
                "PROXY_SERVER_MAX_HTTP_CONNECTIONS",
                "10",
                "server.max_http_connections_per_ip",
            ),
        ] {
            let mut vars = minimal();
            vars.push((var.into(), value.into()));
            let e = Config::load(None, vars).unwrap_err().to_string();
            assert!(e.contains(key), "{var}={value}: {e}");
        }
        let c = Config::load(None, minimal()).unwrap();
        assert_eq!(
            c.server.listener_limits(),
            rtcd_kit::listener::Limits::default()
        );
    }

    #[test]
    fn defaults_need_keys_and_name_the_key() {
        let e = Config::load(None, env(&[])).unwrap_err();
        assert!(e.to_string().contains("auth.issuers"), "{e}");
        let mut vars = minimal();
        vars.retain(|(k, _)| k != "PROXY_AUTH_KEYS");
        let e = Config::load(None, vars).unwrap_err();
        assert!(e.to_string().contains("auth.keys"), "{e}");
    }

    #[test]
    fn env_overrides_are_typed_and_secrets_redacted() {
        let mut vars = minimal();
        vars.extend(env(&[
            ("PROXY_LIMITS_MAX_MESSAGE_BYTES", "131072"),
            ("PROXY_AUTH_ALLOW_WILDCARD_ROOM", "yes"),
            ("PROXY_AUTH_PERMISSIONS_NO_ROLE", "subscribe"),
            ("PROXY_AUTH_EXPIRY_POLICY", "keep"),
            ("HOME", "/root"),
        ]));
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.limits.max_message_bytes, 131072);
        assert!(c.auth.allow_wildcard_room);
        assert_eq!(c.auth.audiences, ["rtcd-proxy", "other"]);
        assert_eq!(c.auth.permissions.no_role, [Capability::Subscribe]);
        assert_eq!(c.auth.expiry_policy, ExpiryPolicy::Keep);
        assert_eq!(c.auth.keys[0].secret.expose(), SECRET);
        assert!(
            !format!("{c:?}").contains(SECRET),
            "Debug must not print secrets"
        );
        assert!(!c.auth.allow_query_token, "query tokens are off by default");
    }

    /// `[auth.affiliation]`: off unless a URL is set; typed from the environment like every
    /// other key; its secret is checked at start and never printed.
    #[test]
    fn affiliation_hook_settings() {
        let off = Config::load(None, minimal()).unwrap();
        assert!(!off.auth.affiliation.enabled(), "no url: no hook");
        assert_eq!(off.auth.affiliation.fallback, AffiliationFallback::Refuse);
        let hook_secret = "hook-secret-0123456789abcdef0123456789";
        let mut vars = minimal();
        vars.extend(env(&[
            (
                "PROXY_AUTH_AFFILIATION_URL",
                "https://platform.example/hooks/join",
            ),
            ("PROXY_AUTH_AFFILIATION_SECRET", hook_secret),
            ("PROXY_AUTH_AFFILIATION_TIMEOUT_MS", "750"),
            ("PROXY_AUTH_AFFILIATION_FALLBACK", "token"),
            ("PROXY_AUTH_AFFILIATION_CACHE_SECONDS", "0"),
        ]));
        let c = Config::load(None, vars.clone()).unwrap();
        let h = &c.auth.affiliation;
        assert!(h.enabled());
        assert_eq!(
            (h.timeout_ms, h.fallback, h.cache_seconds),
            (750, AffiliationFallback::Token, 0)
        );
        assert_eq!(h.signing_secret().unwrap().expose(), hook_secret);
        assert!(
            !format!("{c:?}").contains(hook_secret),
            "Debug must not print secrets"
        );
        // From a file, trailing newline ignored.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook-secret");
        std::fs::write(&file, format!("{hook_secret}\n")).unwrap();
        let mut from_file = vars.clone();
        from_file.retain(|(k, _)| k != "PROXY_AUTH_AFFILIATION_SECRET");
        from_file.push((
            "PROXY_AUTH_AFFILIATION_SECRET_FILE".into(),
            file.display().to_string(),
        ));
        let c = Config::load(None, from_file).unwrap();
        assert_eq!(
            c.auth.affiliation.signing_secret().unwrap().expose(),
            hook_secret
        );
        for (var, value, needle) in [
            (
                "PROXY_AUTH_AFFILIATION_URL",
                "ftp://platform/x",
                "auth.affiliation.url",
            ),
            (
                "PROXY_AUTH_AFFILIATION_URL",
                "not a url",
                "auth.affiliation.url",
            ),
            (
                "PROXY_AUTH_AFFILIATION_SECRET",
                "",
                "auth.affiliation.secret",
            ),
            (
                "PROXY_AUTH_AFFILIATION_SECRET",
                "short",
                "at least 32 bytes",
            ),
            (
                "PROXY_AUTH_AFFILIATION_SECRET",
                "REPLACE-ME-with-at-least-32-random-bytes",
                "placeholder",
            ),
            (
                "PROXY_AUTH_AFFILIATION_SECRET_FILE",
                "/nonexistent/secret",
                "auth.affiliation.secret_file",
            ),
            (
                "PROXY_AUTH_AFFILIATION_TIMEOUT_MS",
                "0",
                "auth.affiliation.timeout_ms",
            ),
            (
                "PROXY_AUTH_AFFILIATION_TIMEOUT_MS",
                "60000",
                "auth.affiliation.timeout_ms",
            ),
            (
                "PROXY_AUTH_AFFILIATION_CACHE_SECONDS",
                "86400",
                "auth.affiliation.cache_seconds",
            ),
            ("PROXY_AUTH_AFFILIATION_FALLBACK", "allow", "fallback"),
        ] {
            let mut bad = vars.clone();
            bad.retain(|(k, _)| k != var);
            bad.push((var.into(), value.into()));
            let e = Config::load(None, bad).unwrap_err().to_string();
            assert!(
                e.contains(needle),
                "{var}={value}: `{e}` should name {needle}"
            );
            assert!(!e.contains(hook_secret), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_key_or_variable() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "PROXY_LIMITS_MAX_MESSAGE_BYTES",
                "big",
                "PROXY_LIMITS_MAX_MESSAGE_BYTES",
            ),
            ("PROXY_AUTH_LEEWAY_SECS", "1", "PROXY_AUTH_LEEWAY_SECS"),
            (
                "PROXY_SERVER_LISTEN_ADDRESS",
                "nowhere",
                "server.listen_address",
            ),
            (
                "PROXY_SERVER_TLS_CERT_FILE",
                "/x.pem",
                "server.tls_key_file",
            ),
            (
                "PROXY_LIMITS_MAX_TOKEN_BYTES",
                "1000000",
                "limits.max_token_bytes",
            ),
            (
                "PROXY_AUTH_JWKS_ALGORITHMS",
                "HS256",
                "auth.jwks.algorithms",
            ),
            ("PROXY_AUTH_JWKS_URL", "ftp://x/jwks", "auth.jwks.url"),
            ("PROXY_RTCD_URL", "https://rtcd:8045", "rtcd.client_id"),
            ("PROXY_AUTH_EXPIRY_POLICY", "forever", "expiry_policy"),
            ("PROXY_AUTH_PERMISSIONS_GUEST", "fly", "fly"),
            ("PROXY_LOGGER_LEVEL", "info,[", "logger.level"),
        ];
        for (var, value, needle) in cases {
            let mut vars = minimal();
            vars.push((var.to_string(), value.to_string()));
            let e = Config::load(None, vars).unwrap_err().to_string();
            assert!(
                e.contains(needle),
                "{var}={value}: `{e}` should name {needle}"
            );
        }
    }

    /// Issue 16 #10: the sample's placeholder and obviously weak secrets are refused at
    /// start, naming the key, whether given inline, by file or for the rtcd link.
    #[test]
    fn sample_and_weak_secrets_are_refused() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/proxy.sample.toml");
        let e = Config::load(Some(&sample), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.keys[0].secret") && e.contains("placeholder"),
            "{e}"
        );
        let weak = [
            "REPLACE-ME-with-at-least-32-random-bytes".to_string(),
            "x".repeat(40),
            "0".repeat(32),
        ];
        for secret in &weak {
            let mut vars = minimal();
            vars.retain(|(k, _)| k != "PROXY_AUTH_KEYS");
            vars.push((
                "PROXY_AUTH_KEYS".into(),
                format!(r#"[{{"kid":"a","algorithms":["HS256"],"secret":"{secret}"}}]"#),
            ));
            let e = Config::load(None, vars).unwrap_err().to_string();
            assert!(e.contains("auth.keys[0].secret"), "{secret}: {e}");
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("hs");
            std::fs::write(&file, format!("{secret}\n")).unwrap();
            let mut vars = minimal();
            vars.retain(|(k, _)| k != "PROXY_AUTH_KEYS");
            vars.push((
                "PROXY_AUTH_KEYS".into(),
                format!(
                    r#"[{{"kid":"a","algorithms":["HS256"],"secret_file":"{}"}}]"#,
                    file.display()
                ),
            ));
            let e = Config::load(None, vars).unwrap_err().to_string();
            assert!(e.contains("auth.keys[0].secret_file"), "{secret}: {e}");
            let mut vars = minimal();
            vars.push(("PROXY_RTCD_URL".into(), "http://127.0.0.1:8443".into()));
            vars.push(("PROXY_RTCD_CLIENT_ID".into(), "proxy".into()));
            vars.push(("PROXY_RTCD_AUTH_KEY".into(), secret.clone()));
            let e = Config::load(None, vars).unwrap_err().to_string();
            assert!(e.contains("rtcd.auth_key"), "{secret}: {e}");
        }
    }

    #[test]
    fn key_entries_are_checked() {
        let cases: &[(&str, &str)] = &[
            (
                r#"[{"kid":"a","algorithms":["HS256"],"secret":"short"}]"#,
                "auth.keys[0].secret",
            ),
            (
                r#"[{"kid":"a","algorithms":["RS256"],"secret":"0123456789abcdef0123456789abcdef"}]"#,
                "auth.keys[0].algorithms",
            ),
            (
                r#"[{"kid":"a","algorithms":["none"],"secret":"0123456789abcdef0123456789abcdef"}]"#,
                "auth.keys[0].algorithms",
            ),
            (
                r#"[{"kid":"a","algorithms":["RS256"],"public_key_file":"/nonexistent.pem"}]"#,
                "auth.keys[0].public_key_file",
            ),
            (
                r#"[{"kid":"","algorithms":["HS256"],"secret":"0123456789abcdef0123456789abcdef"}]"#,
                "auth.keys[0].kid",
            ),
            (r#"[{"kid":"a","algorithms":["HS256"]}]"#, "auth.keys[0]"),
        ];
        for (keys, needle) in cases {
            let mut vars = minimal();
            vars.retain(|(k, _)| k != "PROXY_AUTH_KEYS");
            vars.push(("PROXY_AUTH_KEYS".into(), keys.to_string()));
            let e = Config::load(None, vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{keys}: `{e}` should name {needle}");
        }
    }

    fn oidc_only() -> Vec<(String, String)> {
        env(&[
            ("PROXY_AUTH_OIDC_ISSUER", "https://idp.example/realms/meet"),
            ("PROXY_AUTH_OIDC_AUDIENCES", "rtc-web"),
            ("PROXY_AUTH_OIDC_AUDIENCE_CLAIMS", "aud,azp"),
            ("PROXY_AUTH_OIDC_ROLES_MODERATOR", "rtc-moderator"),
            ("PROXY_AUTH_OIDC_UNMAPPED_ROLE", "guest"),
        ])
    }

    #[test]
    fn oidc_alone_is_enough_and_its_settings_are_checked() {
        let c = Config::load(None, oidc_only()).unwrap();
        assert!(c.auth.oidc.enabled());
        assert_eq!(c.auth.oidc.audience_claims, ["aud", "azp"]);
        assert_eq!(c.auth.oidc.roles.moderator, ["rtc-moderator"]);
        assert_eq!(c.auth.oidc.unmapped_role, UnmappedRole::Guest);
        assert!(c.auth.issuers.is_empty() && c.auth.keys.is_empty());
        let cases: &[(&str, &str, &str)] = &[
            ("PROXY_AUTH_OIDC_ISSUER", "idp.example", "auth.oidc.issuer"),
            (
                "PROXY_AUTH_OIDC_ISSUER",
                "ftp://idp.example",
                "auth.oidc.issuer",
            ),
            (
                "PROXY_AUTH_OIDC_ISSUER",
                "https://idp.example/?x=1",
                "auth.oidc.issuer",
            ),
            ("PROXY_AUTH_OIDC_AUDIENCES", "", "auth.oidc.audiences"),
            ("PROXY_AUTH_OIDC_AUDIENCES", "*", "auth.oidc.audiences"),
            (
                "PROXY_AUTH_OIDC_AUDIENCE_CLAIMS",
                "",
                "auth.oidc.audience_claims",
            ),
            (
                "PROXY_AUTH_OIDC_ROLE_CLAIMS",
                "realm_access..roles",
                "auth.oidc.role_claims",
            ),
            (
                "PROXY_AUTH_OIDC_ROOM_CLAIM",
                ".room",
                "auth.oidc.room_claim",
            ),
            (
                "PROXY_AUTH_OIDC_IDENTITY_CLAIM",
                "",
                "auth.oidc.identity_claim",
            ),
            (
                "PROXY_AUTH_OIDC_ALGORITHMS",
                "RS256,HS256",
                "auth.oidc.algorithms",
            ),
            // Deny is fine while some value is mapped.
            ("PROXY_AUTH_OIDC_UNMAPPED_ROLE", "deny", ""),
            (
                "PROXY_AUTH_OIDC_UNMAPPED_ROLE",
                "moderator",
                "unmapped_role",
            ),
            (
                "PROXY_AUTH_OIDC_DISCOVERY_RETRY_MAX_SECONDS",
                "0",
                "discovery_retry_max_seconds",
            ),
            (
                "PROXY_AUTH_ISSUERS",
                "https://idp.example/realms/meet",
                "auth.issuers",
            ),
        ];
        for (var, value, needle) in cases {
            let mut vars = oidc_only();
            vars.retain(|(k, _)| k != var);
            vars.push((var.to_string(), value.to_string()));
            if *var == "PROXY_AUTH_ISSUERS" {
                vars.extend(minimal().into_iter().filter(|(k, _)| k != var));
            }
            match Config::load(None, vars) {
                Ok(_) => assert!(needle.is_empty(), "{var}={value} should be refused"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        !needle.is_empty() && e.contains(needle),
                        "{var}={value}: `{e}` should name {needle:?}"
                    );
                }
            }
        }
        // Unmapped users denied while nothing is mapped: every user would be refused.
        let mut vars = oidc_only();
        vars.retain(|(k, _)| {
            !k.starts_with("PROXY_AUTH_OIDC_ROLES") && !k.ends_with("UNMAPPED_ROLE")
        });
        let e = Config::load(None, vars).unwrap_err().to_string();
        assert!(e.contains("auth.oidc.roles"), "{e}");
        // Platform keys next to OIDC still need their issuers and audiences.
        let mut vars = oidc_only();
        vars.push((
            "PROXY_AUTH_JWKS_URL".into(),
            "https://keys.example/jwks".into(),
        ));
        let e = Config::load(None, vars).unwrap_err().to_string();
        assert!(e.contains("auth.issuers"), "{e}");
    }

    /// Issue 15: `[turn]` is validated at start (URLs parsed, a secret required and strong,
    /// the lifetime bounded), and its secrets never show in `{:?}` or in an error.
    #[test]
    fn turn_settings_are_checked_and_secrets_stay_hidden() {
        const TURN_SECRET: &str = "f00dfeedcafe0123456789abcdef0123456789";
        let turn = |extra: &[(&str, &str)]| {
            let mut vars = minimal();
            vars.push((
                "PROXY_TURN_URLS".into(),
                "turn:turn.example.com:3478?transport=udp,turns:turn.example.com:443?transport=tcp"
                    .into(),
            ));
            vars.push(("PROXY_TURN_SECRETS".into(), TURN_SECRET.into()));
            for (k, v) in extra {
                vars.retain(|(key, _)| key != k);
                vars.push((k.to_string(), v.to_string()));
            }
            Config::load(None, vars)
        };
        let c = turn(&[]).unwrap();
        assert_eq!(c.turn.urls.len(), 2);
        assert_eq!(c.turn.credential_lifetime_seconds, 4 * 3600);
        assert_eq!(c.turn.secrets[0].expose(), TURN_SECRET);
        assert!(
            !format!("{c:?}").contains(TURN_SECRET),
            "Debug prints a TURN secret"
        );
        let cases: &[(&str, &str, &str)] = &[
            ("PROXY_TURN_URLS", "stun:turn.example.com", "turn.urls[0]"),
            (
                "PROXY_TURN_URLS",
                "turn:x:3478,turns:x?transport=udp",
                "turn.urls[1]",
            ),
            ("PROXY_TURN_SECRETS", "", "turn.secrets"),
            ("PROXY_TURN_SECRETS", "short", "turn.secrets[0]"),
            (
                "PROXY_TURN_SECRETS",
                "REPLACE-ME-with-at-least-32-random-bytes",
                "turn.secrets[0]",
            ),
            (
                "PROXY_TURN_CREDENTIAL_LIFETIME_SECONDS",
                "30",
                "turn.credential_lifetime_seconds",
            ),
            (
                "PROXY_TURN_CREDENTIAL_LIFETIME_SECONDS",
                "604800",
                "turn.credential_lifetime_seconds",
            ),
            (
                "PROXY_TURN_PROBE_TIMEOUT_SECONDS",
                "0",
                "turn.probe_timeout_seconds",
            ),
            (
                "PROXY_TURN_PROBE_CA_FILE",
                "/nonexistent.pem",
                "turn.probe_ca_file",
            ),
            (
                "PROXY_TURN_SECRETS_FILE",
                "/nonexistent",
                "turn.secrets_file",
            ),
        ];
        for (var, value, needle) in cases {
            let e = turn(&[(var, value)]).unwrap_err().to_string();
            assert!(
                e.contains(needle),
                "{var}={value}: `{e}` should name {needle}"
            );
            assert!(!e.contains(TURN_SECRET), "{e} leaks the secret");
        }
        // A secret without URLs is a mistake too.
        let mut vars = minimal();
        vars.push(("PROXY_TURN_SECRETS".into(), TURN_SECRET.into()));
        let e = Config::load(None, vars).unwrap_err().to_string();
        assert!(e.contains("turn.urls"), "{e}");
        // Secrets from a file, one per line, the first signs.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("turn-secrets");
        std::fs::write(&file, format!("{TURN_SECRET}\n{TURN_SECRET}-old\n")).unwrap();
        let c = turn(&[
            ("PROXY_TURN_SECRETS", ""),
            ("PROXY_TURN_SECRETS_FILE", &file.display().to_string()),
        ])
        .unwrap();
        assert_eq!(
            c.turn.signing_secret().unwrap().unwrap().expose(),
            TURN_SECRET
        );
        assert_eq!(c.turn.all_secrets().unwrap().len(), 2);
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, "[auth]\nleway_seconds = 3\n").unwrap();
        let e = Config::load(Some(&path), minimal()).unwrap_err();
        assert!(e.to_string().contains("leway_seconds"), "{e}");
    }

    #[test]
    fn sample_config_parses_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/proxy.sample.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let sample: toml::Table = text.parse().unwrap();
        let want = rtcd_kit::config::variables(
            &toml::Table::try_from(Config::default()).unwrap(),
            ENV_PREFIX,
        );
        let have = rtcd_kit::config::variables(&sample, ENV_PREFIX);
        let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
        assert!(missing.is_empty(), "sample config lacks {missing:?}");
        let config: Config = toml::Value::Table(sample).try_into().unwrap();
        // Every field of a key entry is shown in the sample too.
        let fields = [
            "kid",
            "algorithms",
            "secret",
            "secret_file",
            "public_key_file",
        ];
        for field in fields {
            assert!(
                text.lines().any(|l| l
                    .trim_start()
                    .trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{field} ="))),
                "sample lacks auth.keys field {field}"
            );
        }
        assert!(!config.auth.keys.is_empty());
    }
}

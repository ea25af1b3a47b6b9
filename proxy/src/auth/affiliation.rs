//! The join-time affiliation hook: after a token verifies, the platform is asked whether this
//! user may join this room, and with what role, and may **lower** what the token grants.
//!
//! A token says what its issuer meant when it was minted. The platform may know better by the
//! time the user joins: a Matrix room's admins changed, a member left a group, a room was
//! locked. So the operator may configure `[auth.affiliation]`, and every join is checked with
//! one signed `POST` (docs/affiliation.md). The reply can only take rights away: the effective
//! role is the lower of the token's and the hook's (moderator > member > guest), the effective
//! capabilities are the token's intersected with the hook's list (and, when the role was
//! lowered, with that role's `[auth.permissions]`). Nothing the hook says raises anything, so a
//! compromised or buggy hook can refuse service but never grant rights the token lacks.
//!
//! Requests are signed exactly as rtcd signs webhooks (`Rtcd-Signature: t=<unix>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>">`), so a platform checks both with the same code. Answers are
//! cached briefly per (identity, tenant, room, token role, token permissions), bounded in
//! size; failures are never cached. When the hook fails, `fallback` decides: refuse the join
//! (close 4120, the default) or admit with the token's grant unchanged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{AuthError, Grant, unix_now};
use crate::config::{AffiliationConfig, AffiliationFallback, PermissionsConfig, Secret};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::policy::{Capability, Permissions, Role};

/// The header carrying the request's signature: the same name and format as rtcd's webhooks,
/// so one verification routine serves both.
pub const SIGNATURE_HEADER: &str = "Rtcd-Signature";

/// The `type` of every request body, so a receiver sharing one endpoint (or one secret) with
/// webhooks can tell the two apart.
pub const REQUEST_TYPE: &str = "affiliation_check";

/// Largest reply read; a real one is a few dozen bytes.
pub const MAX_REPLY_BYTES: usize = 16 * 1024;

/// Most answers cached at once (about 200 bytes each: 2 MB). Past it, expired entries go
/// first, then the oldest.
pub const MAX_CACHE_ENTRIES: usize = 10_000;

/// Longest `reason` kept from a refusal (it is shown to the user, in the `error` message).
pub const MAX_REASON_CHARS: usize = 200;

/// At most one WARN line per this interval for failing calls; the others go to DEBUG and
/// are counted in the next WARN (every refusal is still one audit line of the session).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;

/// Why one call to the hook failed. The `Display` text never holds the URL (it may carry a
/// credential in its query) nor anything from the reply beyond its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// No complete answer within `timeout_ms`.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// Connection refused, DNS failure, TLS failure, reset.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A status other than 2xx (redirects are not followed: the request is signed for its URL).
    #[error("answered HTTP {0}")]
    Status(u16),
    /// A body above [`MAX_REPLY_BYTES`].
    #[error("reply larger than {MAX_REPLY_BYTES} bytes")]
    TooLarge,
    /// Not the JSON object the hook must answer (unknown field, unknown role or capability).
    #[error("malformed reply: {0}")]
    Malformed(String),
}

impl HookError {
    /// What the user is told (close 4120): which kind of failure, no detail from the platform.
    fn public(&self) -> String {
        match self {
            HookError::Timeout(_) => "timed out".into(),
            HookError::Unreachable(_) => "unreachable".into(),
            HookError::Status(code) => format!("HTTP {code}"),
            HookError::TooLarge | HookError::Malformed(_) => "malformed reply".into(),
        }
    }
}

/// What the hook allows, as an upper bound on a grant. The default bounds nothing (no hook, or
/// the `token` fallback). Kept for the session so a `refresh` token cannot raise the role the
/// hook lowered at join.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceiling {
    /// The highest role allowed; `None`: the token's.
    pub role: Option<Role>,
    /// The capabilities allowed; `None`: the token's.
    pub capabilities: Option<Permissions>,
}

/// moderator > member > guest.
fn rank(role: Role) -> u8 {
    match role {
        Role::Guest => 0,
        Role::Member => 1,
        Role::Moderator => 2,
    }
}

/// The capabilities both grant.
fn both(a: Permissions, b: Permissions) -> Permissions {
    Permissions {
        publish_audio: a.publish_audio && b.publish_audio,
        publish_video: a.publish_video && b.publish_video,
        publish_screen: a.publish_screen && b.publish_screen,
        subscribe: a.subscribe && b.subscribe,
        record: a.record && b.record,
    }
}

/// The `[auth.permissions]` list of `role`.
fn role_defaults(defaults: &PermissionsConfig, role: Role) -> Permissions {
    Permissions::from_capabilities(match role {
        Role::Moderator => &defaults.moderator,
        Role::Member => &defaults.member,
        Role::Guest => &defaults.guest,
    })
}

/// The capabilities `p` grants, in their wire spelling order.
fn capability_list(p: Permissions) -> Vec<Capability> {
    [
        Capability::PublishAudio,
        Capability::PublishVideo,
        Capability::PublishScreen,
        Capability::Subscribe,
        Capability::Record,
    ]
    .into_iter()
    .filter(|c| p.allows(*c))
    .collect()
}

impl Ceiling {
    /// `grant` lowered to this ceiling; never raised. A lower role also drops whatever its
    /// `[auth.permissions]` list lacks: a moderator token's extras (say `publish_screen`) do not
    /// survive a downgrade to member unless members get them too.
    pub fn apply(&self, mut grant: Grant, defaults: &PermissionsConfig) -> Grant {
        if let Some(role) = self.role
            && rank(role) < rank(grant.role)
        {
            grant.role = role;
            grant.permissions = both(grant.permissions, role_defaults(defaults, role));
        }
        if let Some(caps) = self.capabilities {
            grant.permissions = both(grant.permissions, caps);
        }
        grant
    }
}

/// The hook's answer: a ceiling, or a refusal with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admit, within this ceiling.
    Allow(Ceiling),
    /// Refuse (close 4119); the reason is shown to the user.
    Deny(String),
}

/// The reply body: `{"role": "member", "capabilities": [...]}` (both optional) or
/// `{"allow": false, "reason": "..."}`. Unknown fields are refused: a misspelt
/// `capabilites` silently ignored would leave the user with more than the platform meant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    allow: Option<bool>,
    reason: Option<String>,
    role: Option<Role>,
    capabilities: Option<Vec<Capability>>,
}

/// Parses a reply body into a verdict.
pub fn parse_reply(body: &[u8]) -> Result<Verdict, HookError> {
    let reply: Reply =
        serde_json::from_slice(body).map_err(|e| HookError::Malformed(e.to_string()))?;
    if reply.allow == Some(false) {
        let reason: String = reply
            .reason
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON_CHARS)
            .collect();
        let reason = if reason.trim().is_empty() {
            "not allowed in this room".to_owned()
        } else {
            reason
        };
        return Ok(Verdict::Deny(reason));
    }
    Ok(Verdict::Allow(Ceiling {
        role: reply.role,
        capabilities: reply
            .capabilities
            .map(|caps| Permissions::from_capabilities(&caps)),
    }))
}

/// The request body. The verified grant is all that is kept of a token (not its raw claims).
#[derive(Debug, Serialize)]
struct Request<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    identity: &'a str,
    tenant: Option<&'a str>,
    name: Option<&'a str>,
    room: &'a str,
    role: Role,
    capabilities: Vec<Capability>,
    expires_at: i64,
}

/// The request body for `grant`.
pub fn request_body(grant: &Grant) -> Vec<u8> {
    let request = Request {
        kind: REQUEST_TYPE,
        identity: grant.identity.as_str(),
        tenant: grant.tenant.as_deref(),
        name: grant.name.as_deref(),
        room: grant.room.as_str(),
        role: grant.role,
        capabilities: capability_list(grant.permissions),
        expires_at: grant.expires_at,
    };
    serde_json::to_vec(&request).expect("a struct of strings and enums serializes")
}

/// The `Rtcd-Signature` value for `body` sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<lowercase hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = format!("t={timestamp},v1=");
    for b in mac.finalize().into_bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What an answer is cached under: what the request said, minus the display name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    identity: String,
    tenant: Option<String>,
    room: String,
    role: u8,
    permissions: u8,
}

impl CacheKey {
    fn of(grant: &Grant) -> Self {
        let permissions = capability_list(grant.permissions)
            .into_iter()
            .fold(0u8, |bits, cap| bits | 1 << cap as u8);
        Self {
            identity: grant.identity.as_str().to_owned(),
            tenant: grant.tenant.clone(),
            room: grant.room.as_str().to_owned(),
            role: rank(grant.role),
            permissions,
        }
    }
}

/// Recent answers, bounded by [`MAX_CACHE_ENTRIES`]. The clock is passed in so tests need no
/// sleeping.
struct Cache {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<CacheKey, (Instant, Verdict)>,
}

impl Cache {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Verdict> {
        match self.entries.get(key) {
            Some((at, verdict)) if now.duration_since(*at) < self.ttl => Some(verdict.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: CacheKey, verdict: Verdict, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, (now, verdict));
    }
}

/// Keeps failure logging at one WARN per [`WARN_INTERVAL`]: a hook that is down must be seen
/// by the operator, without one line per join flooding the log.
#[derive(Default)]
struct WarnGate {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnGate {
    /// `Some(lines suppressed since the last WARN)` when this failure may WARN.
    fn open(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.duration_since(at) < WARN_INTERVAL => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// The configured hook. Cheap to share behind an `Arc`; one per proxy.
pub struct Affiliation {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Secret,
    timeout: Duration,
    fallback: AffiliationFallback,
    defaults: PermissionsConfig,
    cache: Mutex<Cache>,
    warnings: WarnGate,
}

impl std::fmt::Debug for Affiliation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affiliation")
            .field("host", &self.url.host_str())
            .field("timeout", &self.timeout)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl Affiliation {
    /// The hook `[auth.affiliation]` describes, or `None` when its `url` is empty. Reads
    /// `secret_file`; the config was validated before.
    pub fn from_config(
        config: &AffiliationConfig,
        defaults: &PermissionsConfig,
    ) -> Result<Option<Self>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let url =
            reqwest::Url::parse(&config.url).map_err(|e| format!("auth.affiliation.url: {e}"))?;
        let secret = config
            .signing_secret()
            .map_err(|e| format!("auth.affiliation.secret_file: {e}"))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(16)
            .user_agent(concat!("rtcd-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("auth.affiliation: {e}"))?;
        tracing::info!(
            host = url.host_str().unwrap_or_default(),
            timeout_ms = config.timeout_ms,
            fallback = config.fallback.as_str(),
            cache_seconds = config.cache_seconds,
            "affiliation hook configured"
        );
        Ok(Some(Self {
            client,
            url,
            secret,
            timeout,
            fallback: config.fallback,
            defaults: defaults.clone(),
            cache: Mutex::new(Cache::new(
                Duration::from_secs(config.cache_seconds),
                MAX_CACHE_ENTRIES,
            )),
            warnings: WarnGate::default(),
        }))
    }

    /// Checks a verified `grant` with the hook (or its cached answer): the grant lowered to
    /// what the platform allows, with the ceiling to keep for later refreshes; or why the join
    /// is refused (4119 denied, 4120 hook failed with fallback `refuse`). Counted in
    /// `proxy_affiliation_checks_total`.
    pub async fn admit(
        &self,
        grant: Grant,
        metrics: &Metrics,
    ) -> Result<(Grant, Ceiling), AuthError> {
        let count = |outcome: &'static str| {
            metrics
                .affiliation_checks
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
        };
        let key = CacheKey::of(&grant);
        let cached = self.lock_cache().get(&key, Instant::now());
        let verdict = match cached {
            Some(verdict) => {
                count("cached");
                verdict
            }
            None => match self.ask(&grant).await {
                Ok(verdict) => {
                    self.lock_cache()
                        .insert(key, verdict.clone(), Instant::now());
                    count(match &verdict {
                        Verdict::Deny(_) => "denied",
                        Verdict::Allow(c) if c.apply(grant.clone(), &self.defaults) != grant => {
                            "lowered"
                        }
                        Verdict::Allow(_) => "ok",
                    });
                    verdict
                }
                Err(e) => {
                    count("error");
                    self.log_failure(&grant, &e);
                    return match self.fallback {
                        AffiliationFallback::Token => Ok((grant, Ceiling::default())),
                        AffiliationFallback::Refuse => {
                            Err(AuthError::AffiliationUnavailable(e.public()))
                        }
                    };
                }
            },
        };
        match verdict {
            Verdict::Deny(reason) => Err(AuthError::AffiliationDenied(reason)),
            Verdict::Allow(ceiling) => Ok((ceiling.apply(grant, &self.defaults), ceiling)),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Every critical section is a map operation: a panic cannot leave it half-done.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One signed call.
    async fn ask(&self, grant: &Grant) -> Result<Verdict, HookError> {
        let body = request_body(grant);
        let signed = signature(self.secret.expose().as_bytes(), unix_now(), &body);
        let call = async {
            let mut response = self
                .client
                .post(self.url.clone())
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .header(SIGNATURE_HEADER, signed)
                .body(body)
                .send()
                .await
                .map_err(|e| self.transport(e))?;
            if !response.status().is_success() {
                return Err(HookError::Status(response.status().as_u16()));
            }
            let mut reply = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(e))? {
                if reply.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(HookError::TooLarge);
                }
                reply.extend_from_slice(&chunk);
            }
            parse_reply(&reply)
        };
        // reqwest's own timeout covers the same span; this one also bounds anything it might
        // not (a reply trickled in tiny chunks).
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(HookError::Timeout(self.timeout.as_millis() as u64)))
    }

    /// A reqwest error as a [`HookError`], without the URL.
    fn transport(&self, e: reqwest::Error) -> HookError {
        if e.is_timeout() {
            return HookError::Timeout(self.timeout.as_millis() as u64);
        }
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        // The innermost cause says what happened ("connection refused"); bounded depth.
        for _ in 0..4 {
            let Some(s) = source else { break };
            text = s.to_string();
            source = s.source();
        }
        HookError::Unreachable(text)
    }

    fn log_failure(&self, grant: &Grant, e: &HookError) {
        let fallback = self.fallback.as_str();
        match self.warnings.open(Instant::now()) {
            Some(suppressed) => {
                tracing::warn!(host = self.url.host_str().unwrap_or_default(), room = %grant.room.as_str(), error = %e, fallback, suppressed, "affiliation hook failed")
            }
            None => {
                tracing::debug!(room = %grant.room.as_str(), error = %e, fallback, "affiliation hook failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Identity, RoomName};

    fn grant(role: Role, caps: &[Capability]) -> Grant {
        Grant {
            identity: Identity::new("@alice:example.org"),
            tenant: Some("matrix".into()),
            name: Some("Alice".into()),
            room: RoomName::parse("standup").unwrap(),
            role,
            permissions: Permissions::from_capabilities(caps),
            expires_at: 1_800_000_600,
            key_id: "k1".into(),
            issued_at: Some(1_800_000_000),
            token_id: None,
        }
    }

    use Capability::*;
    const ALL: [Capability; 4] = [PublishAudio, PublishVideo, PublishScreen, Subscribe];

    fn ceiling(body: &str) -> Ceiling {
        match parse_reply(body.as_bytes()).unwrap() {
            Verdict::Allow(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_moderator_lowered_to_member_gets_the_members_capabilities() {
        let defaults = PermissionsConfig::default();
        let g = ceiling(r#"{"role": "member"}"#).apply(grant(Role::Moderator, &ALL), &defaults);
        assert_eq!(g.role, Role::Member);
        assert_eq!(
            g.permissions,
            Permissions::from_capabilities(&[PublishAudio, PublishVideo, Subscribe]),
            "publish_screen is not a member's by default"
        );
        // Down to guest: receive only.
        let g = ceiling(r#"{"role": "guest"}"#).apply(grant(Role::Moderator, &ALL), &defaults);
        assert_eq!(
            (g.role, g.permissions),
            (Role::Guest, Permissions::from_capabilities(&[Subscribe]))
        );
    }

    #[test]
    fn nothing_is_ever_raised() {
        let defaults = PermissionsConfig::default();
        let member = grant(Role::Member, &[PublishAudio, Subscribe]);
        let g = ceiling(r#"{"role": "moderator", "capabilities": ["publish_audio", "publish_video", "publish_screen", "subscribe"]}"#)
            .apply(member.clone(), &defaults);
        assert_eq!(
            g, member,
            "a moderator answer for a member token stays member"
        );
        let guest = grant(Role::Guest, &[Subscribe]);
        assert_eq!(
            ceiling(r#"{"role": "member"}"#).apply(guest.clone(), &defaults),
            guest
        );
        // An empty reply bounds nothing.
        assert_eq!(ceiling("{}").apply(member.clone(), &defaults), member);
        assert_eq!(
            ceiling(r#"{"allow": true}"#).apply(member.clone(), &defaults),
            member
        );
    }

    #[test]
    fn capabilities_are_intersected() {
        let defaults = PermissionsConfig::default();
        let g = ceiling(r#"{"capabilities": ["subscribe", "publish_screen"]}"#).apply(
            grant(Role::Member, &[PublishAudio, PublishVideo, Subscribe]),
            &defaults,
        );
        assert_eq!(g.role, Role::Member);
        assert_eq!(g.permissions, Permissions::from_capabilities(&[Subscribe]));
        let g = ceiling(r#"{"capabilities": []}"#).apply(grant(Role::Moderator, &ALL), &defaults);
        assert_eq!(
            (g.role, g.permissions),
            (Role::Moderator, Permissions::default())
        );
        // Role and capabilities together: both bounds hold.
        let g =
            ceiling(r#"{"role": "member", "capabilities": ["publish_audio", "publish_screen"]}"#)
                .apply(grant(Role::Moderator, &ALL), &defaults);
        assert_eq!(
            (g.role, g.permissions),
            (
                Role::Member,
                Permissions::from_capabilities(&[PublishAudio])
            )
        );
    }

    #[test]
    fn a_lowered_role_keeps_only_what_the_token_and_the_role_both_grant() {
        // The token withdrew video from a moderator; lowered to member, video stays off.
        let defaults = PermissionsConfig::default();
        let g = ceiling(r#"{"role": "member"}"#).apply(
            grant(Role::Moderator, &[PublishAudio, PublishScreen, Subscribe]),
            &defaults,
        );
        assert_eq!(
            g.permissions,
            Permissions::from_capabilities(&[PublishAudio, Subscribe])
        );
    }

    #[test]
    fn refusals_and_reasons() {
        assert_eq!(
            parse_reply(br#"{"allow": false, "reason": "not in the room\u0007"}"#).unwrap(),
            Verdict::Deny("not in the room".into())
        );
        assert_eq!(
            parse_reply(br#"{"allow": false, "role": "moderator"}"#).unwrap(),
            Verdict::Deny("not allowed in this room".into())
        );
        let long = format!(r#"{{"allow": false, "reason": "{}"}}"#, "x".repeat(1000));
        let Verdict::Deny(reason) = parse_reply(long.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn malformed_replies_are_failures() {
        for bad in [
            "",
            "null",
            "[]",
            "not json",
            r#"{"role": "admin"}"#,
            r#"{"role": "Moderator"}"#,
            r#"{"capabilities": ["fly"]}"#,
            r#"{"capabilities": "subscribe"}"#,
            r#"{"capabilites": ["subscribe"]}"#,
            r#"{"allow": "no"}"#,
        ] {
            assert!(
                matches!(parse_reply(bad.as_bytes()), Err(HookError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn signature_is_rtcds_webhook_scheme() {
        let secret = b"whsec-0123456789abcdef0123456789abcdef";
        let body = br#"{"id":"evt_1","type":"room_started"}"#;
        let header = signature(secret, 1_700_000_000, body);
        // The same HMAC computed independently, over "<t>.<body>".
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(b"1700000000.");
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header, format!("t=1700000000,v1={hex}"));
        // The test vector of docs/webhooks.md: platforms check both with the same code.
        assert_eq!(
            signature(
                b"0123456789abcdef0123456789abcdef",
                1_700_000_000,
                br#"{"id":"evt_0"}"#
            ),
            "t=1700000000,v1=e49abeae89eacca131b9e31f2ea6eaa80e1dcf1d603a0ed2359ce26056b2d20a"
        );
        assert_ne!(header, signature(secret, 1_700_000_001, body));
        assert_ne!(
            header,
            signature(b"another-secret-0123456789abcdef", 1_700_000_000, body)
        );
    }

    #[test]
    fn request_body_carries_the_grant() {
        let body: serde_json::Value = serde_json::from_slice(&request_body(&grant(
            Role::Moderator,
            &[PublishAudio, Subscribe],
        )))
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "affiliation_check",
                "identity": "@alice:example.org",
                "tenant": "matrix",
                "name": "Alice",
                "room": "standup",
                "role": "moderator",
                "capabilities": ["publish_audio", "subscribe"],
                "expires_at": 1_800_000_600,
            })
        );
    }

    #[test]
    fn cache_hits_until_expiry_and_per_key() {
        let mut cache = Cache::new(Duration::from_secs(30), 100);
        let t0 = Instant::now();
        let member = grant(Role::Member, &[Subscribe]);
        let key = CacheKey::of(&member);
        let verdict = Verdict::Deny("no".into());
        assert_eq!(cache.get(&key, t0), None);
        cache.insert(key.clone(), verdict.clone(), t0);
        assert_eq!(
            cache.get(&key, t0 + Duration::from_secs(29)),
            Some(verdict.clone())
        );
        assert_eq!(cache.get(&key, t0 + Duration::from_secs(30)), None);
        assert!(cache.entries.is_empty(), "an expired entry is dropped");
        // Another role or other permissions are another question.
        cache.insert(key.clone(), verdict.clone(), t0);
        let moderator = CacheKey::of(&grant(Role::Moderator, &[Subscribe]));
        let more = CacheKey::of(&grant(Role::Member, &[Subscribe, PublishAudio]));
        assert_eq!(cache.get(&moderator, t0), None);
        assert_eq!(cache.get(&more, t0), None);
        // A display name is not part of the question.
        let mut renamed = member.clone();
        renamed.name = Some("Alice B.".into());
        assert_eq!(cache.get(&CacheKey::of(&renamed), t0), Some(verdict));
        // cache_seconds = 0: nothing is kept.
        let mut off = Cache::new(Duration::ZERO, 100);
        off.insert(key.clone(), Verdict::Deny("no".into()), t0);
        assert_eq!(off.get(&key, t0), None);
    }

    #[test]
    fn cache_is_bounded_expired_first_then_oldest() {
        let mut cache = Cache::new(Duration::from_secs(30), 3);
        let t0 = Instant::now();
        let key = |i: usize| {
            let mut g = grant(Role::Member, &[]);
            g.identity = Identity::new(format!("user-{i}"));
            CacheKey::of(&g)
        };
        let allow = Verdict::Allow(Ceiling::default());
        cache.insert(key(0), allow.clone(), t0);
        cache.insert(key(1), allow.clone(), t0 + Duration::from_secs(10));
        cache.insert(key(2), allow.clone(), t0 + Duration::from_secs(20));
        // Full: the oldest goes.
        cache.insert(key(3), allow.clone(), t0 + Duration::from_secs(21));
        assert_eq!(cache.entries.len(), 3);
        assert!(!cache.entries.contains_key(&key(0)));
        // Later, both 1 and 2 have expired: they go, not only the oldest.
        cache.insert(key(4), allow.clone(), t0 + Duration::from_secs(50));
        assert_eq!(cache.entries.len(), 2);
        assert!(cache.entries.contains_key(&key(3)) && cache.entries.contains_key(&key(4)));
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_skipped() {
        let gate = WarnGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.open(t0), Some(0));
        assert_eq!(gate.open(t0 + Duration::from_secs(1)), None);
        assert_eq!(gate.open(t0 + Duration::from_secs(2)), None);
        assert_eq!(gate.open(t0 + WARN_INTERVAL), Some(2));
    }

    #[test]
    fn hook_errors_tell_the_user_only_the_kind() {
        assert_eq!(
            HookError::Unreachable("10.0.0.7:80: connection refused".into()).public(),
            "unreachable"
        );
        assert_eq!(
            HookError::Malformed("unknown field `x`".into()).public(),
            "malformed reply"
        );
        assert_eq!(HookError::Status(503).public(), "HTTP 503");
    }

    #[tokio::test]
    async fn unreachable_hook_follows_the_fallback_and_is_not_cached() {
        // A port nothing listens on: bind one, note it, close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = AffiliationConfig {
            url: format!("http://{addr}/check"),
            secret: Secret::new("0123456789abcdef0123456789abcdef-affiliation"),
            timeout_ms: 1000,
            ..AffiliationConfig::default()
        };
        let defaults = PermissionsConfig::default();
        let metrics = Metrics::new();
        let hook = Affiliation::from_config(&config, &defaults)
            .unwrap()
            .unwrap();
        let g = grant(Role::Moderator, &ALL);
        let e = hook.admit(g.clone(), &metrics).await.unwrap_err();
        assert_eq!(e, AuthError::AffiliationUnavailable("unreachable".into()));
        assert!(
            hook.lock_cache().entries.is_empty(),
            "failures are not cached"
        );
        config.fallback = AffiliationFallback::Token;
        let hook = Affiliation::from_config(&config, &defaults)
            .unwrap()
            .unwrap();
        assert_eq!(
            hook.admit(g.clone(), &metrics).await.unwrap(),
            (g, Ceiling::default())
        );
        assert!(
            metrics
                .encode()
                .contains(r#"proxy_affiliation_checks_total{outcome="error"} 2"#)
        );
        assert!(
            !format!("{hook:?}").contains("0123456789abcdef"),
            "the secret is never printed"
        );
    }
}

//! An OpenID Connect provider trusted by its issuer URL: discovery, its key set, and the
//! mapping from its claims to a [`Grant`].
//!
//! Discovery (OpenID Connect Discovery 1.0 §4) reads `<issuer>/.well-known/openid-configuration`
//! once, checks that the document's `issuer` is the configured string exactly (§4.3: anything
//! else would let one provider speak for another) and takes its `jwks_uri`. The key set then
//! lives in the same [`JwksCache`] as `[auth.jwks]`: cached, refetched on an unknown `kid`
//! (key rotation) at most once per `auth.jwks.min_refetch_seconds`, served stale while the
//! provider is unreachable.
//!
//! A provider that is down when the proxy starts does not stop it: discovery is retried in the
//! background with exponential backoff (and on demand, rate-limited, when a token arrives),
//! and until it succeeds the provider's tokens are refused with `keys_unavailable` (4115).
//!
//! Provider tokens carry no `role` or `room` of ours: the role comes from configured claim
//! paths (`realm_access.roles`, `groups`, ...) whose values map to moderator / member / guest,
//! the highest mapped role winning; the room comes from the join, or must be listed in a
//! configured room claim.

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::keys::{self, JwksCache, VerifyingKey};
use super::{AuthError, Grant, check_claim_length, check_identity_length, check_lifetime};
use crate::config::{AuthConfig, OidcConfig, UnmappedRole};
use crate::policy::{Permissions, Role};
use crate::protocol::{Identity, RoomName};

/// Largest discovery document accepted (a provider's is a few KiB).
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

/// First delay before discovery is retried; doubled up to `discovery_retry_max_seconds`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Why discovery failed. Reported in logs and, while no key is known, in the detail of
/// `keys_unavailable`; mapped to [`AuthError::KeysUnavailable`] in one place
/// ([`OidcProvider::key`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The document could not be fetched (connection refused, timeout, HTTP status, size).
    #[error("discovery failed: {0}")]
    Fetch(String),
    /// The body is not a JSON object with string `issuer` and `jwks_uri`.
    #[error("discovery document at {url} is not valid: {message}")]
    Invalid {
        /// Where it came from.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The document names another issuer than the configured one (OIDC Discovery §4.3).
    #[error(
        "discovery document issuer `{found}` is not the configured auth.oidc.issuer `{expected}` (they must be equal, character for character)"
    )]
    IssuerMismatch {
        /// `auth.oidc.issuer`.
        expected: String,
        /// The document's `issuer`.
        found: String,
    },
    /// `jwks_uri` is missing, not a URL, or plain http under an https issuer.
    #[error("discovery document has no usable jwks_uri: {0}")]
    BadJwksUri(String),
}

#[derive(Default)]
struct Discovery {
    /// The provider's key set, once discovery succeeded.
    jwks: Option<Arc<JwksCache>>,
    attempted_at: Option<Instant>,
    last_error: Option<DiscoveryError>,
}

/// One OIDC provider: its discovery state, its keys, and the claim mapping.
pub struct OidcProvider {
    config: OidcConfig,
    /// `auth.jwks`, whose cache and refetch settings the provider's key set shares.
    jwks_settings: crate::config::JwksConfig,
    allowed: Vec<Algorithm>,
    client: reqwest::Client,
    discovery_url: reqwest::Url,
    state: RwLock<Discovery>,
    discovering: tokio::sync::Mutex<()>,
    /// Stops the background retry loop when the provider is dropped.
    stop: CancellationToken,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl OidcProvider {
    /// Prepares the provider from validated configuration (nothing is fetched yet).
    pub fn new(rules: &AuthConfig) -> Result<Self, String> {
        let config = rules.oidc.clone();
        let allowed =
            keys::parse_algorithms(&config.algorithms).map_err(|e| format!("auth.oidc: {e}"))?;
        let discovery_url = reqwest::Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            config.issuer.trim_end_matches('/')
        ))
        .map_err(|e| format!("auth.oidc.issuer: {e}"))?;
        Ok(Self {
            client: keys::http_client(rules.jwks.fetch_timeout_seconds)?,
            jwks_settings: rules.jwks.clone(),
            allowed,
            discovery_url,
            config,
            state: RwLock::new(Discovery::default()),
            discovering: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
        })
    }

    /// The configured issuer: tokens whose `iss` is exactly this are the provider's.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Discovery> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether discovery succeeded (the key set location is known).
    pub fn discovered(&self) -> bool {
        self.read().jwks.is_some()
    }

    /// Discovers now unless it is done, or was attempted less than `min_refetch` ago (when
    /// `force` is false). Returns the last attempt's error, if discovery has not succeeded.
    pub async fn discover(&self, force: bool) -> Result<(), DiscoveryError> {
        let started = Instant::now();
        let _guard = self.discovering.lock().await;
        {
            let state = self.read();
            if state.jwks.is_some() {
                return Ok(());
            }
            let min = Duration::from_secs(self.jwks_settings.min_refetch_seconds);
            if let (Some(at), Some(e)) = (state.attempted_at, &state.last_error)
                && (at >= started || (!force && at.elapsed() < min))
            {
                return Err(e.clone());
            }
        }
        let result = self.fetch_discovery().await;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.attempted_at = Some(Instant::now());
        match result {
            Ok(jwks_uri) => {
                tracing::info!(issuer = %self.config.issuer, %jwks_uri, "OIDC provider discovered");
                let cache = JwksCache::for_url(
                    self.client.clone(),
                    jwks_uri,
                    self.allowed.clone(),
                    &self.jwks_settings,
                );
                state.jwks = Some(Arc::new(cache));
                state.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "OIDC discovery failed; its tokens are refused (keys_unavailable) until it succeeds");
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn fetch_discovery(&self) -> Result<reqwest::Url, DiscoveryError> {
        let url = &self.discovery_url;
        let body = keys::get_json(&self.client, url, MAX_DISCOVERY_BYTES)
            .await
            .map_err(DiscoveryError::Fetch)?;
        let invalid = |message: &str| DiscoveryError::Invalid {
            url: url.to_string(),
            message: message.to_owned(),
        };
        let doc: Value =
            serde_json::from_slice(&body).map_err(|_| invalid("not a JSON document"))?;
        let found = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `issuer` string"))?;
        if found != self.config.issuer {
            return Err(DiscoveryError::IssuerMismatch {
                expected: self.config.issuer.clone(),
                found: found.chars().take(256).collect(),
            });
        }
        let raw = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| DiscoveryError::BadJwksUri("missing".into()))?;
        let jwks_uri =
            reqwest::Url::parse(raw).map_err(|e| DiscoveryError::BadJwksUri(e.to_string()))?;
        let secure_issuer = self.config.issuer.starts_with("https://");
        match jwks_uri.scheme() {
            "https" => {}
            "http" if !secure_issuer => {}
            other => {
                return Err(DiscoveryError::BadJwksUri(format!(
                    "`{other}` URL under an {} issuer",
                    if secure_issuer { "https" } else { "http" }
                )));
            }
        }
        Ok(jwks_uri)
    }

    /// First discovery and key fetch; on failure, keeps retrying in the background with
    /// exponential backoff until it succeeds or the provider is dropped. Never fails: a
    /// provider that is down must not keep the proxy from starting.
    pub async fn warm_up(self: &Arc<Self>) {
        match self.discover(true).await {
            Ok(()) => self.fetch_keys().await,
            Err(_) => {
                let weak = Arc::downgrade(self);
                let stop = self.stop.clone();
                let max = Duration::from_secs(self.config.discovery_retry_max_seconds);
                tokio::spawn(retry_discovery(weak, stop, max));
            }
        }
    }

    async fn fetch_keys(&self) {
        let jwks = self.read().jwks.clone();
        if let Some(jwks) = jwks {
            // A failure is logged by the cache and retried on the first token.
            let _ = jwks.refresh(true).await;
        }
    }

    /// The provider's key for `kid`. Before discovery succeeded: `keys_unavailable`, after an
    /// on-demand (rate-limited) discovery attempt.
    pub async fn key(&self, kid: Option<&str>) -> Result<VerifyingKey, AuthError> {
        let known = self.read().jwks.clone();
        let jwks = match known {
            Some(jwks) => jwks,
            None => {
                if let Err(e) = self.discover(false).await {
                    return Err(AuthError::KeysUnavailable(format!(
                        "OIDC provider {} not discovered yet: {e}",
                        self.config.issuer
                    )));
                }
                self.read().jwks.clone().expect("discovered")
            }
        };
        match jwks.find(kid).await? {
            Some(key) => Ok(key),
            None if kid.is_none() => Err(AuthError::UnknownKey(
                "the token has no kid and the provider publishes several keys".into(),
            )),
            None => Err(AuthError::UnknownKey(
                "the OIDC provider publishes no key with this kid".into(),
            )),
        }
    }

    /// Turns the verified claims of one of the provider's tokens into a grant for `room`.
    pub fn grant(
        &self,
        claims: &Value,
        room: &RoomName,
        now: i64,
        key_id: String,
        rules: &AuthConfig,
    ) -> Result<Grant, AuthError> {
        let c = &self.config;
        let date = |name: &'static str| match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => super::numeric_date(name, Some(v.as_f64().unwrap_or(f64::NAN))),
        };
        let exp = date("exp")?.ok_or(AuthError::MissingClaim("exp".into()))?;
        let iat = date("iat")?;
        check_lifetime(
            rules.leeway_seconds,
            rules.max_lifetime_seconds,
            exp,
            date("nbf")?,
            iat,
            now,
        )?;
        if claims.get("iss").and_then(Value::as_str) != Some(c.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        let audience_ok = c.audience_claims.iter().any(|path| {
            strings_at(claims, path)
                .iter()
                .any(|v| c.audiences.iter().any(|a| a == v))
        });
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        if !c.room_claim.is_empty() {
            let rooms = strings_at(claims, &c.room_claim);
            for r in &rooms {
                check_claim_length(&c.room_claim, r)?;
            }
            if !rooms.iter().any(|r| *r == room.as_str()) {
                return Err(AuthError::WrongRoom);
            }
        }
        let bounded = |what: &str, v: &str| check_claim_length(what, v).map(|()| v.to_owned());
        let identity = match lookup(claims, &c.identity_claim).and_then(Value::as_str) {
            Some(id) => {
                check_identity_length(&c.identity_claim, id)?;
                id.to_owned()
            }
            None => return Err(AuthError::MissingClaim(c.identity_claim.clone().into())),
        };
        let name = match lookup(claims, &c.name_claim).and_then(Value::as_str) {
            Some(n) => Some(bounded(&c.name_claim, n)?),
            None => None,
        };
        let values: Vec<&str> = c
            .role_claims
            .iter()
            .flat_map(|path| strings_at(claims, path))
            .collect();
        let (role, permissions) = self.map_role(&values, rules)?;
        Ok(Grant {
            identity: Identity::new(identity),
            tenant: None,
            name,
            room: room.clone(),
            role,
            permissions,
            expires_at: exp,
            key_id,
            issued_at: iat,
            token_id: claims
                .get("jti")
                .and_then(Value::as_str)
                .filter(|j| !j.is_empty() && j.len() <= 128)
                .map(str::to_owned),
        })
    }

    /// The role and permissions provider `values` map to: the highest role any value is
    /// listed under, else `unmapped_role`; then capabilities granted by values on top.
    pub fn map_role(
        &self,
        values: &[&str],
        rules: &AuthConfig,
    ) -> Result<(Role, Permissions), AuthError> {
        let roles = &self.config.roles;
        let has = |list: &[String]| values.iter().any(|v| list.iter().any(|l| l == v));
        let role = if has(&roles.moderator) {
            Role::Moderator
        } else if has(&roles.member) {
            Role::Member
        } else if has(&roles.guest) {
            Role::Guest
        } else {
            match self.config.unmapped_role {
                UnmappedRole::Deny => return Err(AuthError::RoleUnmapped),
                UnmappedRole::Guest => Role::Guest,
                UnmappedRole::Member => Role::Member,
            }
        };
        let perms = &rules.permissions;
        let base = match role {
            Role::Moderator => &perms.moderator,
            Role::Member => &perms.member,
            Role::Guest => &perms.guest,
        };
        let mut permissions = Permissions::from_capabilities(base);
        for (cap, list) in self.config.capabilities.entries() {
            if has(list) {
                permissions.set(cap, true);
            }
        }
        Ok((role, permissions))
    }
}

async fn retry_discovery(provider: Weak<OidcProvider>, stop: CancellationToken, max: Duration) {
    let mut delay = FIRST_RETRY.min(max);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        let Some(provider) = provider.upgrade() else {
            return;
        };
        if provider.discover(true).await.is_ok() {
            provider.fetch_keys().await;
            return;
        }
        delay = (delay * 2).min(max);
    }
}

/// The value at a dotted claim path (`realm_access.roles`); keys cannot contain dots.
fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |node, key| node.get(key))
}

/// The strings at a claim path: a string is one value, an array its string elements;
/// anything else (numbers, objects, absent) none.
fn strings_at<'a>(claims: &'a Value, path: &str) -> Vec<&'a str> {
    match lookup(claims, path) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OidcRolesConfig;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://idp.example/realms/x";

    fn rules() -> AuthConfig {
        let mut r = AuthConfig::default();
        r.oidc.issuer = ISSUER.into();
        r.oidc.audiences = vec!["rtc-web".into()];
        r.oidc.audience_claims = vec!["aud".into(), "azp".into()];
        r.oidc.role_claims = vec![
            "realm_access.roles".into(),
            "resource_access.rtc-web.roles".into(),
            "groups".into(),
        ];
        r.oidc.roles = OidcRolesConfig {
            moderator: vec!["rtc-moderator".into(), "moderator".into()],
            member: vec!["rtc-member".into()],
            guest: vec!["/guests".into()],
        };
        r.oidc.capabilities.publish_screen = vec!["presenter".into()];
        r
    }

    fn claims() -> Value {
        json!({"iss": ISSUER, "aud": "account", "azp": "rtc-web", "sub": "u-1",
               "preferred_username": "Ann", "iat": NOW, "exp": NOW + 300,
               "realm_access": {"roles": ["offline_access", "rtc-member"]}})
    }

    fn grant(rules: &AuthConfig, claims: &Value, room: &str) -> Result<Grant, AuthError> {
        OidcProvider::new(rules).unwrap().grant(
            claims,
            &RoomName::parse(room).unwrap(),
            NOW,
            "k".into(),
            rules,
        )
    }

    fn with(mut v: Value, path: &str, x: Value) -> Value {
        let mut node = &mut v;
        let keys: Vec<&str> = path.split('.').collect();
        for key in &keys[..keys.len() - 1] {
            node = node
                .as_object_mut()
                .unwrap()
                .entry(*key)
                .or_insert(json!({}));
        }
        if x.is_null() {
            node.as_object_mut().unwrap().remove(keys[keys.len() - 1]);
        } else {
            node[keys[keys.len() - 1]] = x;
        }
        v
    }

    #[test]
    fn discovery_url_follows_the_issuer_path() {
        let p = OidcProvider::new(&rules()).unwrap();
        assert_eq!(
            p.discovery_url.as_str(),
            "https://idp.example/realms/x/.well-known/openid-configuration"
        );
        let mut r = rules();
        r.oidc.issuer = format!("{ISSUER}/");
        let p = OidcProvider::new(&r).unwrap();
        assert_eq!(
            p.discovery_url.as_str(),
            "https://idp.example/realms/x/.well-known/openid-configuration"
        );
    }

    #[test]
    fn keycloak_member_by_azp_with_name() {
        let g = grant(&rules(), &claims(), "r1").unwrap();
        assert_eq!(g.identity.as_str(), "u-1");
        assert_eq!(g.name.as_deref(), Some("Ann"));
        assert_eq!(g.role, Role::Member);
        assert!(g.permissions.publish_video && !g.permissions.publish_screen);
        assert_eq!(g.room.as_str(), "r1");
        assert_eq!(g.expires_at, NOW + 300);
    }

    #[test]
    fn audience_is_searched_in_the_configured_claims_only() {
        let mut only_aud = rules();
        only_aud.oidc.audience_claims = vec!["aud".into()];
        assert_eq!(
            grant(&only_aud, &claims(), "r1").unwrap_err(),
            AuthError::WrongAudience
        );
        let listed = with(claims(), "aud", json!(["account", "rtc-web"]));
        grant(&only_aud, &listed, "r1").unwrap();
        let other = with(claims(), "azp", json!("other-app"));
        assert_eq!(
            grant(&rules(), &other, "r1").unwrap_err(),
            AuthError::WrongAudience
        );
    }

    #[test]
    fn issuer_must_match_exactly() {
        for iss in [
            json!(format!("{ISSUER}/")),
            json!(null),
            json!("https://evil"),
        ] {
            let c = with(claims(), "iss", iss.clone());
            assert_eq!(
                grant(&rules(), &c, "r1").unwrap_err(),
                AuthError::WrongIssuer,
                "{iss}"
            );
        }
    }

    #[test]
    fn highest_mapped_role_wins_whatever_the_order() {
        let c = with(claims(), "groups", json!(["/guests"]));
        assert_eq!(grant(&rules(), &c, "r1").unwrap().role, Role::Member);
        let c = with(
            with(claims(), "realm_access.roles", json!([])),
            "resource_access.rtc-web.roles",
            json!(["moderator"]),
        );
        let c = with(c, "groups", json!(["/guests"]));
        let g = grant(&rules(), &c, "r1").unwrap();
        assert_eq!(g.role, Role::Moderator);
        assert!(g.permissions.publish_screen);
        let c = with(claims(), "realm_access.roles", json!("/guests"));
        assert_eq!(grant(&rules(), &c, "r1").unwrap().role, Role::Guest);
    }

    #[test]
    fn unmapped_users_get_the_configured_role_default_deny() {
        let c = with(claims(), "realm_access.roles", json!(["offline_access"]));
        assert_eq!(
            grant(&rules(), &c, "r1").unwrap_err(),
            AuthError::RoleUnmapped
        );
        let c2 = with(claims(), "realm_access", json!(null));
        assert_eq!(
            grant(&rules(), &c2, "r1").unwrap_err(),
            AuthError::RoleUnmapped
        );
        let mut guests = rules();
        guests.oidc.unmapped_role = UnmappedRole::Guest;
        let g = grant(&guests, &c, "r1").unwrap();
        assert_eq!(g.role, Role::Guest);
        assert!(g.permissions.subscribe && !g.permissions.publish_audio);
    }

    #[test]
    fn capabilities_add_to_the_role() {
        let c = with(claims(), "groups", json!(["presenter"]));
        let g = grant(&rules(), &c, "r1").unwrap();
        assert_eq!(g.role, Role::Member);
        assert!(g.permissions.publish_screen);
    }

    #[test]
    fn room_claim_when_configured() {
        let mut r = rules();
        r.oidc.room_claim = "rtc.room".into();
        assert_eq!(
            grant(&r, &claims(), "r1").unwrap_err(),
            AuthError::WrongRoom,
            "configured but absent"
        );
        let c = with(claims(), "rtc.room", json!("r1"));
        grant(&r, &c, "r1").unwrap();
        assert_eq!(grant(&r, &c, "r2").unwrap_err(), AuthError::WrongRoom);
        let c = with(claims(), "rtc.room", json!(["r1", "r2"]));
        grant(&r, &c, "r2").unwrap();
        let c = with(claims(), "rtc.room", json!("*"));
        assert_eq!(
            grant(&r, &c, "r1").unwrap_err(),
            AuthError::WrongRoom,
            "no wildcard"
        );
    }

    /// Issue 16 #2: the configured room claim's values are bounded like every claim.
    #[test]
    fn room_claim_values_are_length_checked() {
        let mut r = rules();
        r.oidc.room_claim = "rtc.room".into();
        let c = with(claims(), "rtc.room", json!(["r1", "r".repeat(300)]));
        assert!(matches!(grant(&r, &c, "r1"), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn time_and_identity_claims() {
        let c = with(claims(), "exp", json!(NOW - 60));
        assert!(matches!(
            grant(&rules(), &c, "r1"),
            Err(AuthError::Expired { .. })
        ));
        let c = with(claims(), "exp", json!(null));
        assert_eq!(
            grant(&rules(), &c, "r1").unwrap_err(),
            AuthError::MissingClaim("exp".into())
        );
        let c = with(claims(), "exp", json!("soon"));
        assert!(matches!(
            grant(&rules(), &c, "r1"),
            Err(AuthError::Malformed(_))
        ));
        let c = with(claims(), "sub", json!(null));
        assert_eq!(
            grant(&rules(), &c, "r1").unwrap_err(),
            AuthError::MissingClaim("sub".into())
        );
        let c = with(claims(), "preferred_username", json!("x".repeat(300)));
        assert!(matches!(
            grant(&rules(), &c, "r1"),
            Err(AuthError::Malformed(_))
        ));
    }
}

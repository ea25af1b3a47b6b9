//! Token verification: from a JWT and the room a client asks for to a [`Grant`] (who, where,
//! with what permissions), or an [`AuthError`] saying exactly why not.
//!
//! Signatures are checked by `jsonwebtoken`; everything else (header sanity, `none`, the
//! per-key algorithm allow-list, time claims with leeway, lifetime cap, issuer / audience
//! lists, room scope, role and permissions) is checked here so every failure has its own
//! variant, mapped once to a WebSocket close code in [`crate::close`]. The token text is
//! never logged.

pub mod affiliation;
pub mod api;
pub mod keys;
pub mod oidc;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::policy::{Capability, Permissions, Role};
use crate::protocol::{Identity, RoomName};
use keys::KeyRing;
use oidc::OidcProvider;

/// Why a token was refused. One variant per reason a client (or its operator) can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was presented.
    #[error("no token: send it in the join message or an Authorization: Bearer header")]
    Missing,
    /// Larger than `limits.max_token_bytes`; refused before parsing.
    #[error("token too large: {size} bytes, at most {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// Not a compact JWS, or its header / claims are not the expected JSON.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg` is `none`, unknown, or not allowed for the key (e.g. an HS token naming an RSA
    /// key: algorithm confusion).
    #[error("algorithm not accepted: {0}")]
    AlgorithmRejected(String),
    /// No configured or published key has the token's `kid`.
    #[error("unknown signing key: {0}")]
    UnknownKey(String),
    /// The key set could not be fetched and nothing is cached; retrying later may work.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    /// The signature does not match (forged, tampered or signed with another key).
    #[error("bad signature")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("token expired {ago} s ago")]
    Expired {
        /// Seconds since `exp`.
        ago: i64,
    },
    /// `nbf` (or `iat`) is in the future beyond the leeway.
    #[error("token not valid for another {wait} s")]
    NotYetValid {
        /// Seconds until it becomes valid (without leeway).
        wait: i64,
    },
    /// Lifetime above `auth.max_lifetime_seconds`.
    #[error("token lifetime {lifetime} s exceeds the maximum of {max} s")]
    TooLongLived {
        /// `exp - iat` (or `exp - now`).
        lifetime: i64,
        /// The cap.
        max: u64,
    },
    /// `iss` is missing or not an accepted issuer.
    #[error("issuer not accepted")]
    WrongIssuer,
    /// `aud` is missing or names no accepted audience.
    #[error("audience not accepted")]
    WrongAudience,
    /// The token's `room` does not cover the requested room.
    #[error("token not valid for this room")]
    WrongRoom,
    /// `room: "*"` while `auth.allow_wildcard_room` is off.
    #[error("wildcard room tokens are not accepted here")]
    WildcardRoom,
    /// A required claim is absent (`exp`, `room`, `sub`, or the OIDC identity claim).
    #[error("missing claim `{0}`")]
    MissingClaim(Cow<'static, str>),
    /// A refresh token for another identity or room than the session's.
    #[error("refresh token is for another identity or room")]
    IdentityMismatch,
    /// An OIDC token whose role claims map to no role here, while `auth.oidc.unmapped_role`
    /// is `deny`: the user is known to the provider but not allowed in calls.
    #[error("none of the token's roles or groups is mapped to a role on this proxy")]
    RoleUnmapped,
    /// A server token (it has an `api` claim) presented to join a call: backend credentials
    /// are for the room service API only, so a leaked one cannot be used to sit in a call.
    #[error(
        "this is a server token (`api` claim) for the room service API; join with a user's token"
    )]
    ServerToken,
    /// The media server refused the token as revoked (an identity cut-off after it was issued,
    /// or its `jti` on the deny-list).
    #[error("token revoked")]
    Revoked,
    /// The platform's affiliation hook refused this user in this room (`allow: false`); the
    /// text is the hook's `reason`, shown to the user. The token itself is fine.
    #[error("the platform refused this join: {0}")]
    AffiliationDenied(String),
    /// The affiliation hook failed (timeout, unreachable, error status, malformed reply) and
    /// `auth.affiliation.fallback` is `refuse`; temporary, and not the user's fault.
    #[error("the platform's membership check is unavailable ({0}); retry later")]
    AffiliationUnavailable(String),
}

impl AuthError {
    /// A stable label for metrics and the close reason (`expired`, `bad_signature`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::TooLarge { .. } => "token_too_large",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::AlgorithmRejected(_) => "token_algorithm_rejected",
            AuthError::UnknownKey(_) => "token_unknown_key",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::Expired { .. } => "token_expired",
            AuthError::NotYetValid { .. } => "token_not_yet_valid",
            AuthError::TooLongLived { .. } => "token_too_long_lived",
            AuthError::WrongIssuer => "token_wrong_issuer",
            AuthError::WrongAudience => "token_wrong_audience",
            AuthError::WrongRoom => "token_wrong_room",
            AuthError::WildcardRoom => "token_wildcard_room",
            AuthError::MissingClaim(_) => "token_missing_claim",
            AuthError::IdentityMismatch => "token_identity_mismatch",
            AuthError::RoleUnmapped => "token_role_unmapped",
            AuthError::ServerToken => "token_is_server_token",
            AuthError::Revoked => "token_revoked",
            AuthError::AffiliationDenied(_) => "affiliation_denied",
            AuthError::AffiliationUnavailable(_) => "affiliation_unavailable",
        }
    }
}

/// What a verified token grants for one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who: `context.user.id`, else `sub`.
    pub identity: Identity,
    /// Jitsi-style tenant / domain: `sub` when `context.user.id` carries the identity.
    pub tenant: Option<String>,
    /// Display name (`context.user.name` or `name`).
    pub name: Option<String>,
    /// The room the grant is for (the requested one, covered by the token).
    pub room: RoomName,
    /// Role, which chose the base permissions.
    pub role: Role,
    /// Effective permissions (role defaults plus token overrides).
    pub permissions: Permissions,
    /// `exp` as Unix seconds.
    pub expires_at: i64,
    /// The `kid` that verified it (for audit logs; never the token).
    pub key_id: String,
    /// `iat`, if the token has one: rtcd compares it with the identity's revocation cut-off.
    pub issued_at: Option<i64>,
    /// `jti`, if the token has one: rtcd checks it against the revoked-token list.
    pub token_id: Option<String>,
}

/// `aud` and `room` may be one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let slice: &[String] = match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        };
        slice.iter().map(String::as_str)
    }
}

/// Jitsi encodes booleans as JSON booleans or as strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LooseBool {
    Bool(bool),
    Text(String),
}

impl LooseBool {
    /// `true` / `false`, as JSON booleans or exactly those strings. Anything else (`"yes"`,
    /// `"True"`, `""`) is refused rather than read as "absent": an issuer that means
    /// "moderator" by it would otherwise get the no-role defaults silently, and one that
    /// means "not a moderator" might not next time. A malformed token (4101) says so.
    fn value(&self) -> Result<bool, AuthError> {
        match self {
            LooseBool::Bool(b) => Ok(*b),
            LooseBool::Text(t) => match t.as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(AuthError::Malformed(
                    "`context.user.moderator` must be true or false".into(),
                )),
            },
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct UserContext {
    id: Option<String>,
    name: Option<String>,
    moderator: Option<LooseBool>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    user: Option<UserContext>,
}

/// The claims this proxy reads; unknown claims are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    iss: Option<String>,
    aud: Option<OneOrMany>,
    sub: Option<String>,
    room: Option<OneOrMany>,
    role: Option<String>,
    name: Option<String>,
    context: Option<Context>,
    permissions: Option<BTreeMap<Capability, bool>>,
    jti: Option<String>,
    /// Present only in server tokens, which are refused here.
    api: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// Longest identity, name or room claim kept.
const MAX_CLAIM_CHARS: usize = 256;

/// Longest identity, in bytes: the media server's limit on a user ID. Refused at the token,
/// with the token's own close code, rather than by the media server after `joined`.
pub const MAX_IDENTITY_BYTES: usize = 128;

/// Identities are 1-[`MAX_IDENTITY_BYTES`] bytes (docs/protocol.md §2).
pub(crate) fn check_identity_length(what: &str, v: &str) -> Result<(), AuthError> {
    if v.is_empty() || v.len() > MAX_IDENTITY_BYTES {
        Err(AuthError::Malformed(format!(
            "`{what}` (the identity) must be 1-{MAX_IDENTITY_BYTES} bytes"
        )))
    } else {
        Ok(())
    }
}

/// Name and room claims are 1-[`MAX_CLAIM_CHARS`] characters (docs/protocol.md §2).
fn check_claim_length(what: &str, v: &str) -> Result<(), AuthError> {
    if v.is_empty() || v.chars().count() > MAX_CLAIM_CHARS {
        Err(AuthError::Malformed(format!(
            "`{what}` must be 1-{MAX_CLAIM_CHARS} characters"
        )))
    } else {
        Ok(())
    }
}

/// Verifies tokens against the configured keys and rules. Cheap to share behind an `Arc`.
///
/// A token whose (unverified) `iss` is exactly the OIDC issuer is checked only with the OIDC
/// provider's keys and rules; every other token with the platform's (`[[auth.keys]]`,
/// `[auth.jwks]`). So the provider's keys never verify a platform token and vice versa, and
/// both kinds of token can be accepted side by side.
pub struct Verifier {
    keys: KeyRing,
    /// Whether any platform key source is configured.
    platform_keys: bool,
    oidc: Option<Arc<OidcProvider>>,
    rules: AuthConfig,
    max_token_bytes: usize,
}

fn numeric_date(name: &'static str, v: Option<f64>) -> Result<Option<i64>, AuthError> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x.abs() < 1e12 => Ok(Some(x.floor() as i64)),
        Some(_) => Err(AuthError::Malformed(format!(
            "`{name}` is not a valid date"
        ))),
    }
}

impl Verifier {
    /// Builds the verifier; reads key files (errors name the key entry).
    pub fn new(rules: &AuthConfig, max_token_bytes: usize) -> Result<Self, String> {
        let oidc = if rules.oidc.enabled() {
            Some(Arc::new(OidcProvider::new(rules)?))
        } else {
            None
        };
        Ok(Self {
            keys: KeyRing::new(&rules.keys, &rules.jwks)?,
            platform_keys: !rules.keys.is_empty()
                || !rules.jwks.url.is_empty()
                || !rules.jwks.file.is_empty(),
            oidc,
            rules: rules.clone(),
            max_token_bytes,
        })
    }

    /// Loads the JWKS and discovers the OIDC provider, if any. Failures are logged, never
    /// fatal: lookups retry, and OIDC discovery keeps retrying in the background.
    pub async fn warm_up(&self) {
        self.keys.warm_up().await;
        if let Some(oidc) = &self.oidc {
            oidc.warm_up().await;
        }
    }

    /// The OIDC provider, if one is configured.
    pub fn oidc(&self) -> Option<&OidcProvider> {
        self.oidc.as_deref()
    }

    /// The rules (for the CLI's explanations).
    pub fn rules(&self) -> &AuthConfig {
        &self.rules
    }

    /// Size, header shape, `alg` (never `none`) and `crit` checks every token passes before
    /// any key is looked up; returns the parsed header and algorithm.
    fn check_header(&self, token: &str) -> Result<(JoseHeader, Algorithm), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge {
                size: token.len(),
                max: self.max_token_bytes,
            });
        }
        let header = parse_header(token)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::AlgorithmRejected(
                "`none` (unsigned tokens)".into(),
            ));
        }
        let alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| AuthError::AlgorithmRejected(format!("unsupported `{}`", header.alg)))?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed(
                "unsupported critical header parameters".into(),
            ));
        }
        Ok((header, alg))
    }

    /// Checks `token` for `room` at Unix time `now`.
    pub async fn verify(&self, token: &str, room: &RoomName, now: i64) -> Result<Grant, AuthError> {
        let (header, alg) = self.check_header(token)?;
        let issuer = self.oidc.as_ref().map(|_| unverified_issuer(token));
        if let Some(oidc) = &self.oidc
            && issuer.as_ref().and_then(Option::as_deref) == Some(oidc.issuer())
        {
            let key = oidc.key(header.kid.as_deref()).await?;
            let claims: serde_json::Value = decode(token, &key, alg)?;
            if !claims.is_object() {
                return Err(AuthError::Malformed("claims are not a JSON object".into()));
            }
            return oidc.grant(&claims, room, now, key.kid, &self.rules);
        }
        if !self.platform_keys {
            // Only an OIDC provider is trusted here, and this token is not from it.
            return Err(AuthError::WrongIssuer);
        }
        // With both an OIDC provider and platform keys, an `iss` that is neither the
        // provider's nor one of `auth.issuers` is 4109 at once, as on an OIDC-only proxy (a
        // mistyped provider issuer would otherwise be "unknown key", looked up among the
        // platform's keys it was never meant for). The signature is not checked first: the
        // answer says only which issuers are accepted.
        if let Some(iss) = issuer
            && !self.rules.issuers.iter().any(|i| i == "*")
            && !iss.is_some_and(|iss| self.rules.issuers.contains(&iss))
        {
            return Err(AuthError::WrongIssuer);
        }
        let key = self.keys.find(header.kid.as_deref()).await?;
        let claims: Claims = decode(token, &key, alg)?;
        if claims.api.is_some() {
            return Err(AuthError::ServerToken);
        }
        self.check_claims(claims, room, now, key.kid)
    }

    /// Checks `iss` and `aud` against the accepted lists (`"*"` accepts any).
    fn check_issuer_audience(
        &self,
        iss: Option<&str>,
        aud: Option<&OneOrMany>,
    ) -> Result<(), AuthError> {
        let rules = &self.rules;
        let any = |list: &[String]| list.iter().any(|v| v == "*");
        if !any(&rules.issuers) {
            let iss = iss.ok_or(AuthError::WrongIssuer)?;
            if !rules.issuers.iter().any(|i| i == iss) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if !any(&rules.audiences) {
            let aud = aud.ok_or(AuthError::WrongAudience)?;
            if !aud.iter().any(|a| rules.audiences.iter().any(|r| r == a)) {
                return Err(AuthError::WrongAudience);
            }
        }
        Ok(())
    }

    fn check_claims(
        &self,
        claims: Claims,
        room: &RoomName,
        now: i64,
        key_id: String,
    ) -> Result<Grant, AuthError> {
        let rules = &self.rules;
        let exp = numeric_date("exp", claims.exp)?.ok_or(AuthError::MissingClaim("exp".into()))?;
        let nbf = numeric_date("nbf", claims.nbf)?;
        let iat = numeric_date("iat", claims.iat)?;
        check_lifetime(
            rules.leeway_seconds,
            rules.max_lifetime_seconds,
            exp,
            nbf,
            iat,
            now,
        )?;
        self.check_issuer_audience(claims.iss.as_deref(), claims.aud.as_ref())?;
        let rooms = claims
            .room
            .as_ref()
            .ok_or(AuthError::MissingClaim("room".into()))?;
        let mut wildcard = false;
        let mut covered = false;
        for r in rooms.iter() {
            // Every entry is bounded, not only the one that matches: an oversized list entry
            // is a broken issuer, and the documented limit holds for the whole claim.
            check_claim_length("room", r)?;
            if r == "*" {
                wildcard = true;
            } else if r == room.as_str() {
                covered = true;
            }
        }
        if !covered {
            match (wildcard, rules.allow_wildcard_room) {
                (true, true) => {}
                (true, false) => return Err(AuthError::WildcardRoom),
                (false, _) => return Err(AuthError::WrongRoom),
            }
        }
        self.finish(claims, room, exp, iat, key_id)
    }

    fn finish(
        &self,
        claims: Claims,
        room: &RoomName,
        exp: i64,
        iat: Option<i64>,
        key_id: String,
    ) -> Result<Grant, AuthError> {
        let token_id = match claims.jti {
            Some(j) if j.is_empty() || j.len() > 128 => {
                return Err(AuthError::Malformed("`jti` must be 1-128 bytes".into()));
            }
            j => j,
        };
        let user = claims.context.and_then(|c| c.user).unwrap_or_default();
        let bounded = |what: &str, v: String| check_claim_length(what, &v).map(|()| v);
        let identity = |what: &str, v: String| check_identity_length(what, &v).map(|()| v);
        let (identity, tenant) = match (user.id, claims.sub) {
            (Some(id), sub) => (identity("context.user.id", id)?, sub),
            (None, Some(sub)) => (identity("sub", sub)?, None),
            (None, None) => return Err(AuthError::MissingClaim("sub".into())),
        };
        let name = match user.name.or(claims.name) {
            Some(n) => Some(bounded("name", n)?),
            None => None,
        };
        let perms = &self.rules.permissions;
        let moderator = user.moderator.as_ref().map(LooseBool::value).transpose()?;
        let (role, base) = match (claims.role.as_deref(), moderator) {
            (Some("moderator"), _) | (None, Some(true)) => (Role::Moderator, &perms.moderator),
            (Some("member"), _) | (None, Some(false)) => (Role::Member, &perms.member),
            (Some("guest"), _) => (Role::Guest, &perms.guest),
            (Some(other), _) => {
                return Err(AuthError::Malformed(format!(
                    "unknown role `{}` (moderator, member or guest)",
                    other.chars().take(32).collect::<String>()
                )));
            }
            (None, None) => (Role::Member, &perms.no_role),
        };
        let mut permissions = Permissions::from_capabilities(base);
        for (cap, on) in claims.permissions.unwrap_or_default() {
            permissions.set(cap, on);
        }
        Ok(Grant {
            identity: Identity::new(identity),
            tenant,
            name,
            room: room.clone(),
            role,
            permissions,
            expires_at: exp,
            key_id,
            issued_at: iat,
            token_id,
        })
    }

    /// Checks a refresh token for a live session: valid, for the same room, identity and
    /// tenant.
    pub async fn verify_refresh(
        &self,
        current: &Grant,
        token: &str,
        now: i64,
    ) -> Result<Grant, AuthError> {
        let next = self.verify(token, &current.room, now).await?;
        if next.identity != current.identity || next.tenant != current.tenant {
            return Err(AuthError::IdentityMismatch);
        }
        Ok(next)
    }
}

/// `exp` (with leeway), `nbf` / `iat` not in the future (with leeway), and the lifetime cap.
///
/// The lifetime is `exp - iat`, or `exp - now` when the token has no `iat`. `nbf` is never
/// used as the start: it only says "not before", and issuers that pre-date `nbf` (or reuse
/// one for a series of tokens) would otherwise see a short-lived token refused as
/// long-lived (4108). Without `iat` we cannot know when the token was minted, so the cap
/// bounds what is left of it, which is what it protects (how long a leaked token works).
fn check_lifetime(
    leeway_seconds: u64,
    max_lifetime_seconds: u64,
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
    now: i64,
) -> Result<(), AuthError> {
    let leeway = leeway_seconds as i64;
    if now > exp + leeway {
        return Err(AuthError::Expired { ago: now - exp });
    }
    for not_before in [nbf, iat].into_iter().flatten() {
        if not_before > now + leeway {
            return Err(AuthError::NotYetValid {
                wait: not_before - now,
            });
        }
    }
    let start = iat.unwrap_or(now);
    let lifetime = exp - start;
    if lifetime > max_lifetime_seconds as i64 {
        return Err(AuthError::TooLongLived {
            lifetime,
            max: max_lifetime_seconds,
        });
    }
    Ok(())
}

/// Checks the signature with `key` (whose algorithm list must allow `alg`) and decodes the
/// claims; every failure mapped to its [`AuthError`].
fn decode<T: serde::de::DeserializeOwned>(
    token: &str,
    key: &keys::VerifyingKey,
    alg: Algorithm,
) -> Result<T, AuthError> {
    if !key.algorithms.contains(&alg) {
        return Err(AuthError::AlgorithmRejected(format!(
            "{alg:?} is not allowed for this key"
        )));
    }
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<T>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAlgorithm | K::MissingAlgorithm => {
                    AuthError::AlgorithmRejected(format!("{alg:?} is not allowed for this key"))
                }
                K::Json(_) => AuthError::Malformed("claims are not the expected JSON".into()),
                // A signature that is not base64url (a tampered last character, say) is a
                // signature that does not verify: when header and payload decode, that is
                // where the error was, and "not a compact JWS" would send the operator
                // looking at the token's shape instead of its signature.
                K::Base64(_) if header_and_payload_decode(token) => AuthError::BadSignature,
                K::Base64(_) | K::Utf8(_) | K::InvalidToken => {
                    AuthError::Malformed("not a compact JWS".into())
                }
                // A signature of the wrong shape for the key (e.g. ECDSA bytes) is still a
                // signature that does not verify.
                _ => AuthError::BadSignature,
            }
        })
}

/// Whether the first two parts of a compact JWS are base64url (so a decoding error is in the
/// signature).
fn header_and_payload_decode(token: &str) -> bool {
    let mut parts = token.split('.');
    parts.by_ref().take(2).all(|part| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .is_ok()
    })
}

/// The `iss` of a token's payload before any verification: it only selects which keys and
/// rules apply (the provider's or the platform's); the signature is checked with those keys
/// and the claim again after that.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

fn parse_header(token: &str) -> Result<JoseHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("header is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("header is not a JSON object with `alg`".into()))
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyConfig, Secret};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    /// The HS secret of key `k1` (shared with `api`'s tests).
    pub(super) const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    /// The tests' clock.
    pub(super) const NOW: i64 = 1_800_000_000;

    /// Issuer `app`, audience `proxy`, HS256 key `k1`.
    pub(super) fn rules() -> AuthConfig {
        AuthConfig {
            issuers: vec!["app".into()],
            audiences: vec!["proxy".into()],
            keys: vec![KeyConfig {
                kid: "k1".into(),
                algorithms: vec!["HS256".into()],
                secret: Secret::new(SECRET),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn base() -> serde_json::Value {
        json!({"iss":"app","aud":"proxy","sub":"alice","room":"r1","exp":NOW+600,"iat":NOW})
    }

    /// `claims` signed with key `k1`.
    pub(super) fn sign(claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        encode(&h, claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn room(r: &str) -> RoomName {
        RoomName::parse(r).unwrap()
    }

    async fn check(
        rules: AuthConfig,
        claims: serde_json::Value,
        r: &str,
    ) -> Result<Grant, AuthError> {
        Verifier::new(&rules, 8192)
            .unwrap()
            .verify(&sign(&claims), &room(r), NOW)
            .await
    }

    fn with(mut v: serde_json::Value, k: &str, x: serde_json::Value) -> serde_json::Value {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x;
        }
        v
    }

    #[tokio::test]
    async fn good_token_grants_member_of_no_role_defaults() {
        let g = check(rules(), base(), "r1").await.unwrap();
        assert_eq!(g.identity.as_str(), "alice");
        assert_eq!(g.role, Role::Member);
        assert_eq!(
            g.permissions,
            Permissions::default(),
            "no role = default deny"
        );
        assert_eq!(g.expires_at, NOW + 600);
        assert_eq!(g.key_id, "k1");
    }

    #[tokio::test]
    async fn time_claims_with_leeway() {
        let r = rules(); // leeway 30
        let e = check(r.clone(), with(base(), "exp", json!(NOW - 31)), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::Expired { ago: 31 });
        check(r.clone(), with(base(), "exp", json!(NOW - 29)), "r1")
            .await
            .unwrap();
        let e = check(r.clone(), with(base(), "nbf", json!(NOW + 31)), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::NotYetValid { wait: 31 });
        check(r.clone(), with(base(), "nbf", json!(NOW + 29)), "r1")
            .await
            .unwrap();
        let e = check(r.clone(), with(base(), "iat", json!(NOW + 100)), "r1")
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::NotYetValid { .. }));
        let e = check(r.clone(), with(base(), "exp", json!(null)), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::MissingClaim("exp".into()));
        let e = check(r.clone(), with(base(), "exp", json!("soon")), "r1")
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)));
        let e = check(r.clone(), with(base(), "exp", json!(NOW + 86_401)), "r1")
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::TooLongLived { .. }));
        // Without iat the remaining lifetime counts.
        let no_iat = with(with(base(), "iat", json!(null)), "exp", json!(NOW + 86_401));
        assert!(matches!(
            check(r, no_iat, "r1").await,
            Err(AuthError::TooLongLived { .. })
        ));
    }

    /// Issue 16 #1: without `iat` the lifetime counts from now; an old `nbf` only says
    /// "not before" and must not make a short-lived token look long-lived.
    #[tokio::test]
    async fn lifetime_without_iat_counts_from_now_not_from_nbf() {
        let old_nbf = with(
            with(base(), "iat", json!(null)),
            "nbf",
            json!(NOW - 30 * 86_400),
        );
        let g = check(rules(), old_nbf, "r1").await.unwrap();
        assert_eq!(g.expires_at, NOW + 600);
        // With `iat`, the lifetime is still exp - iat, whatever nbf says.
        let old_iat = with(base(), "iat", json!(NOW - 86_400));
        assert!(matches!(
            check(rules(), old_iat, "r1").await,
            Err(AuthError::TooLongLived {
                lifetime: 87_000,
                ..
            })
        ));
    }

    /// Issue 16 #2: room claims are held to the same 256-character bound as `sub`, in a list
    /// or alone, even when another entry covers the room.
    #[tokio::test]
    async fn room_claims_are_length_checked() {
        let long = "r".repeat(300);
        for room in [json!(long), json!(["r1", long]), json!([long, "*"])] {
            let e = check(rules(), with(base(), "room", room.clone()), "r1")
                .await
                .unwrap_err();
            assert!(matches!(e, AuthError::Malformed(_)), "{room}: {e:?}");
        }
        let e = check(rules(), with(base(), "room", json!(["r1", ""])), "r1")
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)), "empty room: {e:?}");
        let at_limit = "r".repeat(256);
        check(rules(), with(base(), "room", json!(["r1", at_limit])), "r1")
            .await
            .unwrap();
    }

    /// Identities are held to the media server's 128-byte limit on user IDs (bytes, not
    /// characters), whichever claim carries them; names keep 256 characters.
    #[tokio::test]
    async fn identities_are_at_most_128_bytes() {
        let at_limit = "u".repeat(128);
        let grant = check(rules(), with(base(), "sub", json!(at_limit)), "r1")
            .await
            .unwrap();
        assert_eq!(grant.identity.as_str().len(), 128);
        let wide = "é".repeat(65); // 130 bytes, 65 characters
        for (claim, value) in [("sub", "u".repeat(129)), ("sub", wide.clone())] {
            let e = check(rules(), with(base(), claim, json!(value)), "r1")
                .await
                .unwrap_err();
            assert!(
                matches!(&e, AuthError::Malformed(m) if m.contains("1-128 bytes")),
                "{e:?}"
            );
        }
        let jitsi = with(
            base(),
            "context",
            json!({"user": {"id": "u".repeat(129), "name": "n"}}),
        );
        assert!(matches!(
            check(rules(), jitsi, "r1").await.unwrap_err(),
            AuthError::Malformed(_)
        ));
        let long_name = with(base(), "name", json!("é".repeat(256)));
        check(rules(), long_name, "r1").await.unwrap();
    }

    /// Issue 16 #8: `context.user.moderator` is a boolean or "true"/"false"; anything else
    /// is a malformed token, not silently "absent" (which would pick the no-role defaults).
    #[tokio::test]
    async fn unrecognised_moderator_values_are_malformed() {
        for value in [
            json!("yes"),
            json!("True"),
            json!(""),
            json!(1),
            json!(null),
        ] {
            let claims = with(base(), "context", json!({"user": {"moderator": value}}));
            let result = check(rules(), claims, "r1").await;
            if value.is_null() {
                // JSON null is the claim's absence.
                assert_eq!(result.unwrap().permissions, Permissions::default());
            } else {
                assert!(
                    matches!(result, Err(AuthError::Malformed(_))),
                    "{value}: {result:?}"
                );
            }
        }
        // Even next to a `role`, which would otherwise win.
        let claims = with(
            with(base(), "role", json!("member")),
            "context",
            json!({"user": {"moderator": "yes"}}),
        );
        assert!(matches!(
            check(rules(), claims, "r1").await,
            Err(AuthError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn issuer_and_audience_lists() {
        let e = check(rules(), with(base(), "iss", json!("evil")), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::WrongIssuer);
        let e = check(rules(), with(base(), "iss", json!(null)), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::WrongIssuer);
        let e = check(rules(), with(base(), "aud", json!(["a", "b"])), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::WrongAudience);
        check(rules(), with(base(), "aud", json!(["a", "proxy"])), "r1")
            .await
            .unwrap();
        let e = check(rules(), with(base(), "aud", json!("*")), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::WrongAudience, "a token's * is not a wildcard");
        let mut open = rules();
        open.audiences = vec!["*".into()];
        open.issuers = vec!["*".into()];
        check(
            open,
            with(with(base(), "aud", json!(null)), "iss", json!("x")),
            "r1",
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn room_scope() {
        assert_eq!(
            check(rules(), base(), "r2").await.unwrap_err(),
            AuthError::WrongRoom
        );
        let list = with(base(), "room", json!(["r1", "r2"]));
        check(rules(), list.clone(), "r2").await.unwrap();
        assert_eq!(
            check(rules(), list, "r3").await.unwrap_err(),
            AuthError::WrongRoom
        );
        let star = with(base(), "room", json!("*"));
        assert_eq!(
            check(rules(), star.clone(), "r9").await.unwrap_err(),
            AuthError::WildcardRoom
        );
        let mut wild = rules();
        wild.allow_wildcard_room = true;
        assert_eq!(check(wild, star, "r9").await.unwrap().room.as_str(), "r9");
        let e = check(rules(), with(base(), "room", json!(null)), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::MissingClaim("room".into()));
    }

    #[tokio::test]
    async fn jitsi_context_identity_name_and_moderator() {
        let claims = with(
            base(),
            "context",
            json!({"user": {"id": "u-42", "name": "Alice A.", "moderator": "true"}}),
        );
        let g = check(rules(), claims, "r1").await.unwrap();
        assert_eq!(g.identity.as_str(), "u-42");
        assert_eq!(g.tenant.as_deref(), Some("alice"));
        assert_eq!(g.name.as_deref(), Some("Alice A."));
        assert_eq!(g.role, Role::Moderator);
        assert!(g.permissions.publish_screen);
        let claims = with(base(), "context", json!({"user": {"moderator": false}}));
        let g = check(rules(), claims, "r1").await.unwrap();
        assert_eq!(g.role, Role::Member);
        assert!(g.permissions.publish_video && !g.permissions.publish_screen);
        let e = check(rules(), with(base(), "sub", json!(null)), "r1")
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::MissingClaim("sub".into()));
    }

    #[tokio::test]
    async fn roles_and_capability_overrides() {
        let g = check(rules(), with(base(), "role", json!("guest")), "r1")
            .await
            .unwrap();
        assert_eq!(
            g.permissions,
            Permissions::from_capabilities(&[Capability::Subscribe])
        );
        let claims = with(
            with(base(), "role", json!("member")),
            "permissions",
            json!({"publish_screen": true, "publish_video": false}),
        );
        let g = check(rules(), claims, "r1").await.unwrap();
        assert!(
            g.permissions.publish_screen
                && !g.permissions.publish_video
                && g.permissions.publish_audio
        );
        // `record` is off unless the token grants it (no role's default list has it).
        assert!(!g.permissions.record);
        let claims = with(
            with(base(), "role", json!("moderator")),
            "permissions",
            json!({"record": true}),
        );
        let g = check(rules(), claims, "r1").await.unwrap();
        assert!(g.permissions.record && g.permissions.publish_screen);
        let e = check(rules(), with(base(), "role", json!("admin")), "r1")
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)));
        let e = check(
            rules(),
            with(base(), "permissions", json!({"fly": true})),
            "r1",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)));
    }

    #[tokio::test]
    async fn header_checks_before_any_key_work() {
        let v = Verifier::new(&rules(), 64).unwrap();
        let r = room("r1");
        assert_eq!(v.verify("", &r, NOW).await.unwrap_err(), AuthError::Missing);
        assert!(matches!(
            v.verify(&"a".repeat(65), &r, NOW).await,
            Err(AuthError::TooLarge { size: 65, max: 64 })
        ));
        let v = Verifier::new(&rules(), 8192).unwrap();
        for garbage in ["x", "a.b", "a.b.c.d", "!!.e30.x", "e30.e30.x"] {
            assert!(
                matches!(
                    v.verify(garbage, &r, NOW).await,
                    Err(AuthError::Malformed(_))
                ),
                "{garbage}"
            );
        }
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","kid":"k1"}"#),
            b64(&base().to_string())
        );
        assert!(matches!(
            v.verify(&none, &r, NOW).await,
            Err(AuthError::AlgorithmRejected(_))
        ));
        let rs = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(&base().to_string())
        );
        assert!(matches!(
            v.verify(&rs, &r, NOW).await,
            Err(AuthError::AlgorithmRejected(_))
        ));
        let unknown = format!("{}.{}.sig", b64(r#"{"alg":"HS256","kid":"zz"}"#), b64("{}"));
        assert!(matches!(
            v.verify(&unknown, &r, NOW).await,
            Err(AuthError::UnknownKey(_))
        ));
        let good = sign(&base());
        let (head, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let tampered = format!(
            "{head}.{}.{sig}",
            b64(&with(base(), "sub", json!("mallory")).to_string())
        );
        assert_eq!(
            v.verify(&tampered, &r, NOW).await.unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[tokio::test]
    async fn refresh_must_keep_identity() {
        let v = Verifier::new(&rules(), 8192).unwrap();
        let g = v.verify(&sign(&base()), &room("r1"), NOW).await.unwrap();
        let later = with(base(), "exp", json!(NOW + 1200));
        assert_eq!(
            v.verify_refresh(&g, &sign(&later), NOW)
                .await
                .unwrap()
                .expires_at,
            NOW + 1200
        );
        let other = with(base(), "sub", json!("bob"));
        assert_eq!(
            v.verify_refresh(&g, &sign(&other), NOW).await.unwrap_err(),
            AuthError::IdentityMismatch
        );
        let other_room = with(base(), "room", json!("r2"));
        assert_eq!(
            v.verify_refresh(&g, &sign(&other_room), NOW)
                .await
                .unwrap_err(),
            AuthError::WrongRoom
        );
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let set = json!({"keys": [
            {"kty":"RSA","kid":"enc","use":"enc","alg":"RSA-OAEP","n":"sXch","e":"AQAB"},
            {"kty":"oct","kid":"sym","k":"c2VjcmV0"},
            {"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"},
            {"kty":"weird","kid":"w"}
        ]});
        let keys = keys::parse_jwks(
            set.to_string().as_bytes(),
            &[Algorithm::RS256, Algorithm::EdDSA],
        )
        .unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed"]);
        assert_eq!(keys["ed"].algorithms, vec![Algorithm::EdDSA]);
        assert!(keys::parse_jwks(b"[]", &[Algorithm::RS256]).is_err());
    }
}

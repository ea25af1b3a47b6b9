//! Server credentials for the room service API: verifying the platform backend's tokens
//! ([`Verifier::verify_api`] -> [`ApiGrant`]) and signing the participant tokens it asks for
//! ([`TokenIssuer`]).
//!
//! A server token is a short-lived JWT signed with one of the platform's keys (the same
//! `[[auth.keys]]` / `[auth.jwks]` that sign join tokens) whose `api` claim lists its scopes.
//! The claim is what separates the two kinds: a join token (no `api`) is refused by the API
//! with [`ApiAuthError::UserToken`], and a server token is refused at `join`
//! ([`AuthError::ServerToken`]), so neither credential works where the other belongs.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::{
    AuthError, OneOrMany, Verifier, check_claim_length, check_lifetime, decode, numeric_date,
};
use crate::config::Config;
use crate::policy::{Permissions, Role};
use crate::protocol::{Identity, RoomName};

/// What a server token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// List rooms, read a room's participants and bans (`rooms:read`).
    #[serde(rename = "rooms:read")]
    RoomsRead,
    /// Remove, ban, mute, change permissions, end rooms, lift bans, revoke tokens
    /// (`rooms:admin`; implies `rooms:read`).
    #[serde(rename = "rooms:admin")]
    RoomsAdmin,
    /// Issue participant tokens (`tokens:issue`).
    #[serde(rename = "tokens:issue")]
    TokensIssue,
}

impl Scope {
    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RoomsRead => "rooms:read",
            Scope::RoomsAdmin => "rooms:admin",
            Scope::TokensIssue => "tokens:issue",
        }
    }
}

/// A verified server token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiGrant {
    /// `sub`: who the backend says it is (audit lines name it).
    pub subject: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// `room` claim: the rooms the token is limited to; `None` = every room of this tenant.
    pub rooms: Option<Vec<String>>,
    /// The `kid` that verified it.
    pub key_id: String,
}

impl ApiGrant {
    /// Whether the token has `scope` (`rooms:admin` implies `rooms:read`).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (scope == Scope::RoomsRead && self.scopes.contains(&Scope::RoomsAdmin))
    }

    /// Whether the token covers `room`.
    pub fn covers(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room || r == "*"))
    }

    /// Whether the token is limited to some rooms (then tenant-wide actions are refused).
    pub fn room_limited(&self) -> bool {
        self.rooms
            .as_ref()
            .is_some_and(|rooms| !rooms.iter().any(|r| r == "*"))
    }
}

/// Why a server token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiAuthError {
    /// The token itself failed (signature, expiry, issuer...): the same reasons as at join.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// A valid token without an `api` claim: an end user's join token.
    #[error(
        "this is a user's join token; the room service API takes a server token (a JWT with an `api` claim)"
    )]
    UserToken,
    /// The `api` claim is not a list of known scopes.
    #[error("`api` must be a list of scopes (rooms:read, rooms:admin, tokens:issue)")]
    BadScopes,
    /// Lifetime above `api.max_token_lifetime_seconds`.
    #[error("server token lifetime {lifetime} s exceeds the maximum of {max} s")]
    TooLongLived {
        /// `exp - iat`.
        lifetime: i64,
        /// The cap.
        max: u64,
    },
}

impl ApiAuthError {
    /// The stable error code of the API's JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiAuthError::Token(e) => e.reason(),
            ApiAuthError::UserToken => "user_token",
            ApiAuthError::BadScopes => "bad_scopes",
            ApiAuthError::TooLongLived { .. } => "token_too_long_lived",
        }
    }
}

/// The claims of a server token.
#[derive(Debug, Deserialize)]
struct ApiClaims {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    iss: Option<String>,
    aud: Option<OneOrMany>,
    sub: Option<String>,
    room: Option<OneOrMany>,
    api: Option<serde_json::Value>,
}

impl Verifier {
    /// Checks a server token at Unix time `now`, against the platform's keys only (an OIDC
    /// provider's tokens are end users', never the backend's). `max_lifetime` is
    /// `api.max_token_lifetime_seconds`; a token without `iat` counts its lifetime from now.
    pub async fn verify_api(
        &self,
        token: &str,
        now: i64,
        max_lifetime: u64,
    ) -> Result<ApiGrant, ApiAuthError> {
        let (header, alg) = self.check_header(token)?;
        if !self.platform_keys {
            return Err(AuthError::WrongIssuer.into());
        }
        let key = self.keys.find(header.kid.as_deref()).await?;
        let claims: ApiClaims = decode(token, &key, alg)?;
        let exp = numeric_date("exp", claims.exp)?.ok_or(AuthError::MissingClaim("exp".into()))?;
        let nbf = numeric_date("nbf", claims.nbf)?;
        let iat = numeric_date("iat", claims.iat)?;
        check_lifetime(self.rules.leeway_seconds, u64::MAX / 4, exp, nbf, iat, now)?;
        let lifetime = exp - iat.unwrap_or(now);
        if lifetime > max_lifetime as i64 {
            return Err(ApiAuthError::TooLongLived {
                lifetime,
                max: max_lifetime,
            });
        }
        self.check_issuer_audience(claims.iss.as_deref(), claims.aud.as_ref())?;
        let Some(api) = claims.api else {
            return Err(ApiAuthError::UserToken);
        };
        let scopes: Vec<Scope> =
            serde_json::from_value(api).map_err(|_| ApiAuthError::BadScopes)?;
        let subject = claims.sub.ok_or(AuthError::MissingClaim("sub".into()))?;
        check_claim_length("sub", &subject)?;
        let rooms = match claims.room {
            None => None,
            Some(r) => {
                let rooms: Vec<String> = r.iter().map(str::to_owned).collect();
                for room in &rooms {
                    check_claim_length("room", room)?;
                }
                Some(rooms)
            }
        };
        Ok(ApiGrant {
            subject,
            scopes,
            rooms,
            key_id: key.kid,
        })
    }
}

/// What a participant token should say (`POST /api/v1/rooms/{room}/tokens`).
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The room.
    pub room: RoomName,
    /// `sub`.
    pub identity: Identity,
    /// `name`, if any.
    pub name: Option<String>,
    /// `role`.
    pub role: Role,
    /// Explicit permissions (`permissions` claim), else the role's defaults apply at join.
    pub permissions: Option<Permissions>,
    /// Seconds until `exp`.
    pub lifetime: u64,
}

/// A signed token.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// Its `exp` (Unix seconds).
    pub expires_at: i64,
    /// Its `jti` (for revoking this one token).
    pub token_id: String,
}

/// Signs participant tokens with the key named by `api.token_signing_kid`, in exactly the
/// shape this proxy verifies (so `joined` works with them, and so would any replica).
pub struct TokenIssuer {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
    issuer: String,
    audience: String,
    /// Default lifetime.
    pub default_lifetime: u64,
    /// Longest lifetime (`auth.max_lifetime_seconds`).
    pub max_lifetime: u64,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// The issuer from config, or `None` when issuing is off. Errors name the setting.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let api = &config.api;
        if api.token_signing_kid.is_empty() {
            return Ok(None);
        }
        let entry = config
            .auth
            .keys
            .iter()
            .find(|k| k.kid == api.token_signing_kid)
            .ok_or("api.token_signing_kid: names no [[auth.keys]] entry")?;
        let algs = super::keys::parse_algorithms(&entry.algorithms)
            .map_err(|e| format!("auth.keys {}: {e}", entry.kid))?;
        let alg = algs[0];
        let key = if api.token_signing_key_file.is_empty() {
            let secret = super::keys::secret_bytes(entry)
                .map_err(|e| format!("auth.keys {}: {e:?}", entry.kid))?;
            EncodingKey::from_secret(&secret)
        } else {
            let pem = std::fs::read(&api.token_signing_key_file)
                .map_err(|e| format!("api.token_signing_key_file: {e}"))?;
            let parsed = match alg.family() {
                jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Hmac => {
                    return Err(
                        "api.token_signing_key_file: the key is HS; leave the file empty".into(),
                    );
                }
            };
            parsed
                .map_err(|e| format!("api.token_signing_key_file: not a private key in PEM: {e}"))?
        };
        let concrete = |list: &[String], what: &str| {
            list.iter().find(|v| *v != "*").cloned().ok_or(format!(
                "{what} must name a concrete value for issued tokens"
            ))
        };
        Ok(Some(Self {
            key,
            alg,
            kid: entry.kid.clone(),
            issuer: concrete(&config.auth.issuers, "auth.issuers")?,
            audience: concrete(&config.auth.audiences, "auth.audiences")?,
            default_lifetime: api.issued_token_lifetime_seconds,
            max_lifetime: config.auth.max_lifetime_seconds,
        }))
    }

    /// Signs a token for `req` at Unix time `now`, with a fresh random `jti`.
    pub fn issue(&self, req: &TokenRequest, now: i64) -> Result<IssuedToken, String> {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
        let token_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let lifetime = req.lifetime.min(self.max_lifetime);
        let expires_at = now + lifetime as i64;
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": req.identity.as_str(),
            "room": req.room.as_str(),
            "role": req.role.as_str(),
            "iat": now,
            "nbf": now,
            "exp": expires_at,
            "jti": token_id,
        });
        if let Some(name) = &req.name {
            claims["name"] = name.clone().into();
        }
        if let Some(p) = &req.permissions {
            claims["permissions"] = serde_json::to_value(p).map_err(|e| e.to_string())?;
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())?;
        Ok(IssuedToken {
            token,
            expires_at,
            token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::{NOW, rules, sign};
    use serde_json::json;

    fn config() -> Config {
        let mut c = Config {
            auth: rules(),
            ..Default::default()
        };
        c.api.token_signing_kid = "k1".into();
        c
    }

    fn verifier() -> Verifier {
        Verifier::new(&config().auth, 8192).unwrap()
    }

    fn server(api: serde_json::Value) -> serde_json::Value {
        json!({"iss":"app","aud":"proxy","sub":"backend","iat":NOW,"exp":NOW+300,"api":api})
    }

    #[tokio::test]
    async fn server_tokens_carry_scopes_and_rooms() {
        let v = verifier();
        let g = v
            .verify_api(&sign(&server(json!(["rooms:admin"]))), NOW, 600)
            .await
            .unwrap();
        assert!(g.has(Scope::RoomsAdmin) && g.has(Scope::RoomsRead));
        assert!(!g.has(Scope::TokensIssue));
        assert!(g.covers("any") && !g.room_limited());
        let mut claims = server(json!(["rooms:read"]));
        claims["room"] = json!(["a", "b"]);
        let g = v.verify_api(&sign(&claims), NOW, 600).await.unwrap();
        assert!(g.covers("a") && !g.covers("c") && g.room_limited());
        assert!(!g.has(Scope::RoomsAdmin));
    }

    #[tokio::test]
    async fn join_and_server_tokens_are_not_interchangeable() {
        let v = verifier();
        let join =
            json!({"iss":"app","aud":"proxy","sub":"alice","room":"r1","exp":NOW+300,"iat":NOW});
        assert_eq!(
            v.verify_api(&sign(&join), NOW, 600).await.unwrap_err(),
            ApiAuthError::UserToken
        );
        let mut server_with_room = server(json!(["rooms:admin"]));
        server_with_room["room"] = json!("r1");
        let room = RoomName::parse("r1").unwrap();
        assert_eq!(
            v.verify(&sign(&server_with_room), &room, NOW)
                .await
                .unwrap_err(),
            AuthError::ServerToken
        );
    }

    #[tokio::test]
    async fn bad_server_tokens_are_refused_with_their_reason() {
        let v = verifier();
        let cases = [
            (server(json!(["rooms:everything"])), "bad_scopes"),
            (server(json!("rooms:admin")), "bad_scopes"),
            (
                {
                    let mut c = server(json!(["rooms:read"]));
                    c["exp"] = json!(NOW + 3000);
                    c
                },
                "token_too_long_lived",
            ),
            (
                {
                    let mut c = server(json!(["rooms:read"]));
                    c["exp"] = json!(NOW - 100);
                    c["iat"] = json!(NOW - 200);
                    c
                },
                "token_expired",
            ),
            (
                {
                    let mut c = server(json!(["rooms:read"]));
                    c["iss"] = json!("other");
                    c
                },
                "token_wrong_issuer",
            ),
            (
                {
                    let mut c = server(json!(["rooms:read"]));
                    c.as_object_mut().unwrap().remove("sub");
                    c
                },
                "token_missing_claim",
            ),
        ];
        for (claims, reason) in cases {
            let e = v.verify_api(&sign(&claims), NOW, 600).await.unwrap_err();
            assert_eq!(e.code(), reason, "{claims}");
        }
        let mut forged = sign(&server(json!(["rooms:admin"])));
        let last = forged.pop();
        forged.push(if last == Some('A') { 'Q' } else { 'A' });
        let e = v.verify_api(&forged, NOW, 600).await.unwrap_err();
        assert_eq!(e.code(), "token_bad_signature");
        assert_eq!(
            v.verify_api("", NOW, 600).await.unwrap_err().code(),
            "token_missing"
        );
    }

    #[tokio::test]
    async fn issued_tokens_verify_as_join_tokens_with_their_claims() {
        let issuer = TokenIssuer::from_config(&config()).unwrap().unwrap();
        let room = RoomName::parse("standup").unwrap();
        let issued = issuer
            .issue(
                &TokenRequest {
                    room: room.clone(),
                    identity: Identity::new("carol"),
                    name: Some("Carol".into()),
                    role: Role::Guest,
                    permissions: None,
                    lifetime: 120,
                },
                NOW,
            )
            .unwrap();
        assert_eq!(issued.expires_at, NOW + 120);
        let grant = verifier().verify(&issued.token, &room, NOW).await.unwrap();
        assert_eq!(grant.identity.as_str(), "carol");
        assert_eq!(grant.role, Role::Guest);
        assert_eq!(grant.name.as_deref(), Some("Carol"));
        assert_eq!(grant.issued_at, Some(NOW));
        assert_eq!(grant.token_id.as_deref(), Some(issued.token_id.as_str()));
        let other = RoomName::parse("other").unwrap();
        assert_eq!(
            verifier()
                .verify(&issued.token, &other, NOW)
                .await
                .unwrap_err(),
            AuthError::WrongRoom
        );
    }
}

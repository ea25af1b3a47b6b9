//! Verification keys: HS secrets and PEM public keys from config, and a JSON Web Key Set
//! from a file or URL, all selected by the token's `kid`.
//!
//! Every key carries its own algorithm allow-list, and a key's family is fixed when it is
//! loaded (a secret is HMAC, a PEM or JWK is RSA / EC / Ed), so an HS token can never be
//! checked against a public key ("algorithm confusion"): the allow-list refuses it first.
//!
//! The JWKS is cached. An unknown `kid` triggers a refetch (a provider rotated its keys), but
//! at most once per `min_refetch_seconds`, so forged `kid`s cannot make the proxy hammer the
//! provider; concurrent misses share one fetch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthError;
use crate::config::{JwksConfig, KeyConfig, weak_secret};

/// Largest JWKS document accepted (a provider's set is a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A config entry that cannot become a key, with the field at fault.
#[derive(Debug)]
pub struct FieldError {
    /// Field of the `[[auth.keys]]` entry, e.g. `secret`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// Parses algorithm names; `none` and unknown names are errors, and so is an empty list.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("list at least one algorithm".into());
    }
    names
        .iter()
        .map(|name| {
            if name.trim().eq_ignore_ascii_case("none") {
                return Err("`none` is never accepted".to_owned());
            }
            Algorithm::from_str(name.trim()).map_err(|_| format!("unknown algorithm `{name}`"))
        })
        .collect()
}

/// One key that can verify signatures, with the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The `kid` it answers to (may be empty for a JWKS key without one).
    pub kid: String,
    /// The algorithms allowed with this key, all of the key's own family.
    pub algorithms: Vec<Algorithm>,
    /// The key material.
    pub key: Arc<DecodingKey>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Keys given directly in `[[auth.keys]]`.
pub struct StaticKey;

impl StaticKey {
    /// Reads and checks one `[[auth.keys]]` entry (reading the files it names).
    pub fn from_config(config: &KeyConfig) -> Result<VerifyingKey, FieldError> {
        let algorithms =
            parse_algorithms(&config.algorithms).map_err(|m| field_error("algorithms", m))?;
        let sources = [
            !config.secret.is_empty(),
            !config.secret_file.is_empty(),
            !config.public_key_file.is_empty(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(field_error(
                "secret",
                "set exactly one of secret, secret_file, public_key_file",
            ));
        }
        let family = algorithms[0].family();
        if algorithms.iter().any(|a| a.family() != family) {
            return Err(field_error(
                "algorithms",
                "all algorithms of one key must belong to one family (HS, RS/PS, ES or EdDSA)",
            ));
        }
        let hmac = family == jsonwebtoken::AlgorithmFamily::Hmac;
        let key = if !config.public_key_file.is_empty() {
            if hmac {
                return Err(field_error(
                    "algorithms",
                    "a public key cannot verify HS algorithms (that is algorithm confusion)",
                ));
            }
            let pem = std::fs::read(&config.public_key_file).map_err(|e| {
                field_error(
                    "public_key_file",
                    format!("{}: {e}", config.public_key_file),
                )
            })?;
            let parsed = match family {
                jsonwebtoken::AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                jsonwebtoken::AlgorithmFamily::Hmac => unreachable!("rejected above"),
            };
            parsed.map_err(|e| {
                field_error(
                    "public_key_file",
                    format!(
                        "{} is not a {family:?} public key in PEM: {e}",
                        config.public_key_file
                    ),
                )
            })?
        } else {
            if !hmac {
                return Err(field_error(
                    "algorithms",
                    "a shared secret can only verify HS256, HS384 or HS512",
                ));
            }
            let secret = secret_bytes(config)?;
            DecodingKey::from_secret(&secret)
        };
        Ok(VerifyingKey {
            kid: config.kid.clone(),
            algorithms,
            key: Arc::new(key),
        })
    }
}

/// The shared secret of an HS `[[auth.keys]]` entry (from `secret` or `secret_file`),
/// refused when weak. Verification and token issuing (`auth::api`) read it the same way.
pub fn secret_bytes(config: &KeyConfig) -> Result<Vec<u8>, FieldError> {
    let secret = if config.secret_file.is_empty() {
        config.secret.expose().as_bytes().to_vec()
    } else {
        let mut bytes = std::fs::read(&config.secret_file)
            .map_err(|e| field_error("secret_file", format!("{}: {e}", config.secret_file)))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        bytes
    };
    if let Some(why) = weak_secret(&secret) {
        let field = if config.secret_file.is_empty() {
            "secret"
        } else {
            "secret_file"
        };
        return Err(field_error(field, format!("an HS secret {why}")));
    }
    Ok(secret)
}

/// Where a JWKS comes from.
#[derive(Debug, Clone)]
enum JwksOrigin {
    File(PathBuf),
    Url(reqwest::Client, reqwest::Url),
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, VerifyingKey>,
    loaded_at: Option<Instant>,
    attempted_at: Option<Instant>,
    last_error: Option<String>,
}

/// A cached JWKS with rate-limited refresh.
pub struct JwksCache {
    origin: JwksOrigin,
    allowed: Vec<Algorithm>,
    cache_for: Duration,
    min_refetch: Duration,
    state: RwLock<JwksState>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    /// Builds the cache (nothing is fetched yet; see [`JwksCache::refresh`]).
    pub fn new(config: &JwksConfig) -> Result<Option<Self>, String> {
        let origin = if !config.url.is_empty() {
            let url = reqwest::Url::parse(&config.url).map_err(|e| e.to_string())?;
            JwksOrigin::Url(http_client(config.fetch_timeout_seconds)?, url)
        } else if !config.file.is_empty() {
            JwksOrigin::File(PathBuf::from(&config.file))
        } else {
            return Ok(None);
        };
        Ok(Some(Self::with_origin(
            origin,
            parse_algorithms(&config.algorithms)?,
            config,
        )))
    }

    /// A cache of the set at `url` (an OIDC provider's `jwks_uri`), with the refresh settings
    /// of `config` and the algorithms `allowed`.
    pub fn for_url(
        client: reqwest::Client,
        url: reqwest::Url,
        allowed: Vec<Algorithm>,
        config: &JwksConfig,
    ) -> Self {
        Self::with_origin(JwksOrigin::Url(client, url), allowed, config)
    }

    fn with_origin(origin: JwksOrigin, allowed: Vec<Algorithm>, config: &JwksConfig) -> Self {
        Self {
            origin,
            allowed,
            cache_for: Duration::from_secs(config.cache_seconds),
            min_refetch: Duration::from_secs(config.min_refetch_seconds),
            state: RwLock::new(JwksState::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, JwksState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// How many keys are cached (for logs and readiness).
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The only cached key, when there is exactly one (tokens without `kid`).
    fn single(&self) -> Option<VerifyingKey> {
        let state = self.read();
        (state.keys.len() == 1).then(|| state.keys.values().next().cloned())?
    }

    /// Fetches the set now, unless another task just did or the rate limit forbids it.
    /// Returns the error of the last attempt, if it failed.
    pub async fn refresh(&self, force_ignore_rate_limit: bool) -> Result<(), String> {
        let started = Instant::now();
        let _guard = self.fetching.lock().await;
        {
            let state = self.read();
            if let Some(at) = state.attempted_at {
                // Someone fetched while we waited for the lock: use their result.
                if at >= started {
                    return state.last_error.clone().map_or(Ok(()), Err);
                }
                if !force_ignore_rate_limit && at.elapsed() < self.min_refetch {
                    return state.last_error.clone().map_or(Ok(()), Err);
                }
            }
        }
        let result = self.fetch().await;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.attempted_at = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), origin = ?self.origin_label(), "JWKS loaded");
                state.keys = keys;
                state.loaded_at = Some(Instant::now());
                state.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, origin = ?self.origin_label(), "JWKS fetch failed; keeping the cached keys");
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn origin_label(&self) -> String {
        match &self.origin {
            JwksOrigin::File(p) => p.display().to_string(),
            JwksOrigin::Url(_, u) => u.to_string(),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, VerifyingKey>, String> {
        let body = match &self.origin {
            JwksOrigin::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
            JwksOrigin::Url(client, url) => get_json(client, url, MAX_JWKS_BYTES).await?,
        };
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
        }
        parse_jwks(&body, &self.allowed)
    }

    /// The key for `kid`, refetching (rate-limited) when it is unknown or the cache is old.
    pub async fn find(&self, kid: Option<&str>) -> Result<Option<VerifyingKey>, AuthError> {
        let lookup = |this: &Self| match kid {
            Some(kid) => this.read().keys.get(kid).cloned(),
            None => this.single(),
        };
        let stale = self
            .read()
            .loaded_at
            .is_none_or(|at| at.elapsed() >= self.cache_for);
        if let Some(key) = lookup(self)
            && !stale
        {
            return Ok(Some(key));
        }
        let refreshed = self.refresh(false).await;
        match (lookup(self), refreshed) {
            (Some(key), _) => Ok(Some(key)),
            (None, Err(e)) if self.read().loaded_at.is_none() => Err(AuthError::KeysUnavailable(e)),
            (None, _) => Ok(None),
        }
    }
}

/// The HTTP client for key and discovery fetches: one timeout per request, few redirects.
pub fn http_client(timeout_seconds: u64) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_seconds))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| e.to_string())
}

/// `GET url` for a JSON document of at most `max` bytes; errors name the URL.
pub async fn get_json(
    client: &reqwest::Client,
    url: &reqwest::Url,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", why(&e)))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: status {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: {}", why(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("GET {url}: larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a request failed, in the words an operator needs (docs/oidc.md: "connection refused",
/// "timed out", a TLS or DNS error): reqwest's own message only says "error sending request
/// for url (...)", so the innermost cause is named, after what failed.
fn why(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let cause = root.to_string();
    if std::ptr::addr_eq(root, e as &dyn std::error::Error)
        || cause.contains("error sending request")
    {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}

/// Parses a JWKS, keeping the signature keys it can use; others (encryption keys, unknown
/// types, symmetric keys, algorithms outside `allowed`) are skipped with a log line.
pub fn parse_jwks(
    body: &[u8],
    allowed: &[Algorithm],
) -> Result<HashMap<String, VerifyingKey>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = HashMap::new();
    for raw in set.keys {
        let kid = raw
            .get("kid")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        match jwk_to_key(&raw, allowed) {
            Ok(Some(key)) => {
                out.insert(kid, key);
            }
            Ok(None) => tracing::debug!(%kid, "JWKS key skipped: not a usable signature key"),
            Err(e) => tracing::warn!(%kid, error = %e, "JWKS key skipped"),
        }
    }
    Ok(out)
}

fn jwk_to_key(
    raw: &serde_json::Value,
    allowed: &[Algorithm],
) -> Result<Option<VerifyingKey>, String> {
    if raw
        .get("use")
        .and_then(|v| v.as_str())
        .is_some_and(|u| u != "sig")
    {
        return Ok(None);
    }
    let declared = match raw.get("alg").and_then(|v| v.as_str()) {
        Some(name) => match Algorithm::from_str(name) {
            Ok(alg) => Some(alg),
            // e.g. RSA-OAEP: an encryption key.
            Err(_) => return Ok(None),
        },
        None => None,
    };
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Symmetric keys never come from a published key set.
        _ => return Ok(None),
    };
    let algorithms: Vec<Algorithm> = family
        .into_iter()
        .filter(|a| allowed.contains(a) && declared.is_none_or(|d| d == *a))
        .collect();
    if algorithms.is_empty() {
        return Ok(None);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Some(VerifyingKey {
        kid: jwk.common.key_id.clone().unwrap_or_default(),
        algorithms,
        key: Arc::new(key),
    }))
}

/// Every key the proxy trusts.
pub struct KeyRing {
    statics: HashMap<String, VerifyingKey>,
    jwks: Option<JwksCache>,
}

impl KeyRing {
    /// Loads the static keys and prepares the JWKS cache (call [`KeyRing::warm_up`] to fetch).
    pub fn new(keys: &[KeyConfig], jwks: &JwksConfig) -> Result<Self, String> {
        let mut statics = HashMap::new();
        for (i, config) in keys.iter().enumerate() {
            let key = StaticKey::from_config(config)
                .map_err(|e| format!("auth.keys[{i}].{}: {}", e.field, e.message))?;
            statics.insert(config.kid.clone(), key);
        }
        Ok(Self {
            statics,
            jwks: JwksCache::new(jwks).map_err(|e| format!("auth.jwks: {e}"))?,
        })
    }

    /// First JWKS load; a failure is logged and retried on demand, not fatal (the provider
    /// may come up after the proxy).
    pub async fn warm_up(&self) {
        if let Some(jwks) = &self.jwks {
            let _ = jwks.refresh(true).await;
        }
    }

    /// The key a token names. A token without `kid` is accepted only when the proxy has
    /// exactly one key, so it is never ambiguous.
    pub async fn find(&self, kid: Option<&str>) -> Result<VerifyingKey, AuthError> {
        if let Some(kid) = kid {
            if let Some(key) = self.statics.get(kid) {
                return Ok(key.clone());
            }
            if let Some(jwks) = &self.jwks
                && let Some(key) = jwks.find(Some(kid)).await?
            {
                return Ok(key);
            }
            return Err(AuthError::UnknownKey("no key with this kid".into()));
        }
        match (&self.jwks, self.statics.len()) {
            (None, 1) => Ok(self.statics.values().next().cloned().expect("len is 1")),
            (Some(jwks), 0) => jwks.find(None).await?.ok_or_else(|| {
                AuthError::UnknownKey(
                    "the token has no kid and the key set has several keys".into(),
                )
            }),
            _ => Err(AuthError::UnknownKey(
                "the token has no kid and several keys are configured".into(),
            )),
        }
    }
}

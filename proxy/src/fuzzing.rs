//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and for replaying their
//! corpora in this crate's unit tests (stable), so that both run exactly the code the proxy
//! runs on outside input. Each function takes raw bytes, parses and validates them as the
//! proxy does, and returns a `Result`: any panic, hang or unbounded allocation is a bug. Not an
//! API: the functions exist for fuzzing and replay only (see `docs/fuzzing.md`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::oidc::OidcProvider;
use crate::auth::{AuthError, Grant, Verifier, keys};
use crate::config::{AuthConfig, Config, ConfigError, KeyConfig, Secret};
use crate::policy::{
    Capability, MediaSection, Permissions, PolicyError, TrackSource, authorize_sdp,
};
use crate::protocol::{ClientMessage, RoomName};

/// Why a fuzzed input was refused. The fuzzers only need "an error, not a panic"; the
/// variants keep the underlying error so a replayed input can be explained.
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    /// Not UTF-8 where the transport guarantees text (WebSocket text frames, JSON strings).
    #[error("not UTF-8")]
    NotText,
    /// An input the harness refuses to run (e.g. a config naming a device file to read).
    #[error("skipped: {0}")]
    Skipped(&'static str),
    /// Not a client message.
    #[error("not a valid message: {0}")]
    Message(#[from] serde_json::Error),
    /// A message field the session refuses (a bad room name).
    #[error("refused: {0}")]
    Refused(String),
    /// Refused by the SDP policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Refused by token verification.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Refused by the config loader.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key set the proxy cannot read.
    #[error("jwks: {0}")]
    Jwks(String),
}

impl From<rtcd_kit::fuzzing::Refused> for FuzzError {
    fn from(refused: rtcd_kit::fuzzing::Refused) -> Self {
        match refused {
            rtcd_kit::fuzzing::Refused::NotText => FuzzError::NotText,
            rtcd_kit::fuzzing::Refused::Skipped(why) => FuzzError::Skipped(why),
        }
    }
}

/// Everything a member may do except screen sharing: both "allowed" and "forbidden" outcomes
/// of the policy are reachable.
fn member() -> Permissions {
    Permissions::from_capabilities(&[
        Capability::PublishAudio,
        Capability::PublishVideo,
        Capability::Subscribe,
    ])
}

/// `proxy_message` target: one WebSocket text frame, parsed as the session does
/// ([`ClientMessage`]), then the checks a message gets before it is relayed: the room name of a
/// `join`, the SDP policy of an `offer` (for a member).
pub fn client_message(data: &[u8]) -> Result<ClientMessage, FuzzError> {
    let text = std::str::from_utf8(data).map_err(|_| FuzzError::NotText)?;
    let message: ClientMessage = serde_json::from_str(text)?;
    match &message {
        ClientMessage::Join { room, .. } => {
            RoomName::parse(room).map_err(FuzzError::Refused)?;
        }
        ClientMessage::Offer { sdp, tracks } => {
            authorize_sdp(sdp, tracks, &member())?;
        }
        _ => {}
    }
    Ok(message)
}

/// `sdp_policy` target: an SDP, optionally preceded by a line `#tracks mid=source ...`
/// (source: microphone, camera, screen, screen_audio) declaring track sources by mid as an
/// `offer`'s `tracks` does; decided by [`authorize_sdp`] for a member.
pub fn sdp_policy(data: &[u8]) -> Result<Vec<MediaSection>, FuzzError> {
    let text = std::str::from_utf8(data).map_err(|_| FuzzError::NotText)?;
    let (declared, sdp) = match text.strip_prefix("#tracks") {
        Some(rest) => {
            let (line, sdp) = rest.split_once('\n').unwrap_or((rest, ""));
            let declared: BTreeMap<String, TrackSource> = line
                .split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .filter_map(|(mid, source)| {
                    let source = serde_json::from_value(source.into()).ok()?;
                    Some((mid.to_owned(), source))
                })
                .collect();
            (declared, sdp)
        }
        None => (BTreeMap::new(), text),
    };
    Ok(authorize_sdp(sdp, &declared, &member())?)
}

/// The fuzzing clock: tokens in the corpus are valid at this instant (2027-01-15).
pub const NOW: i64 = 1_800_000_000;
/// The HS256 secret of the fuzzing key `k1` (the corpus's tokens are signed with it).
pub const SECRET: &str = "fuzzing-secret-0123456789abcdef-0123456789";
/// The issuer the fuzzing OIDC provider trusts.
pub const OIDC_ISSUER: &str = "https://idp.example/realms/x";
/// The room every fuzzed token is checked for.
const ROOM: &str = "r1";

/// The platform rules: issuer `app`, audience `proxy`, key `k1` (HS256, [`SECRET`]).
fn rules() -> AuthConfig {
    let mut rules = AuthConfig {
        issuers: vec!["app".into()],
        audiences: vec!["proxy".into()],
        keys: vec![KeyConfig {
            kid: "k1".into(),
            algorithms: vec!["HS256".into()],
            secret: Secret::new(SECRET),
            ..Default::default()
        }],
        ..Default::default()
    };
    rules.oidc.audiences = vec!["rtc-web".into()];
    rules.oidc.audience_claims = vec!["aud".into(), "azp".into()];
    rules.oidc.roles.member = vec!["rtc-member".into()];
    rules.oidc.roles.moderator = vec!["rtc-moderator".into()];
    rules.oidc.capabilities.publish_screen = vec!["presenter".into()];
    rules
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| Verifier::new(&rules(), 8 * 1024).expect("the fuzzing rules are valid"))
}

/// The OIDC provider's claim mapping, without discovery (nothing is fetched).
fn oidc() -> &'static (OidcProvider, AuthConfig) {
    static OIDC: OnceLock<(OidcProvider, AuthConfig)> = OnceLock::new();
    OIDC.get_or_init(|| {
        let mut rules = rules();
        rules.oidc.issuer = OIDC_ISSUER.into();
        let provider = OidcProvider::new(&rules).expect("the fuzzing OIDC rules are valid");
        (provider, rules)
    })
}

/// Signs `header.payload` with HS256 and [`SECRET`]: a compact JWS whose signature verifies,
/// so the fuzzer reaches the claims checks behind the signature.
pub fn sign(header: &[u8], payload: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!("{}.{}", b64.encode(header), b64.encode(payload));
    let mut mac =
        Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

/// What the `jwt` target verified.
#[derive(Debug)]
pub enum JwtOutcome {
    /// A token (or claims set) was accepted.
    Grant(Grant),
    /// A key set was read; this many keys are usable.
    Keys(usize),
}

/// `jwt` target. The first byte selects what the rest is:
/// * `0`: a token string, through the whole [`Verifier::verify`] (fixed HS256 key `k1`, room
///   `r1`, time [`NOW`]): header, algorithm rules, key lookup, signature, claims;
/// * `1`: claims bytes, signed with the header `{"alg":"HS256","kid":"k1"}`, then verified;
/// * `2`: a header, a newline, claims bytes: both signed, then verified;
/// * `3`: claims JSON through the OIDC provider's claim mapping;
/// * anything else: a JWKS document through the key set parser.
pub fn jwt(data: &[u8]) -> Result<JwtOutcome, FuzzError> {
    let Some((&mode, rest)) = data.split_first() else {
        return Err(AuthError::Missing.into());
    };
    let room = RoomName::parse(ROOM).map_err(FuzzError::Refused)?;
    let token = match mode {
        0 => std::str::from_utf8(rest)
            .map_err(|_| FuzzError::NotText)?
            .to_owned(),
        1 => sign(br#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#, rest),
        2 => {
            let at = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            sign(&rest[..at], rest.get(at + 1..).unwrap_or_default())
        }
        3 => {
            let claims: serde_json::Value = serde_json::from_slice(rest)?;
            let (provider, rules) = oidc();
            let grant = provider.grant(&claims, &room, NOW, "k".into(), rules)?;
            return Ok(JwtOutcome::Grant(grant));
        }
        _ => {
            let allowed = keys::parse_algorithms(&["RS256".into(), "ES256".into(), "EdDSA".into()])
                .map_err(FuzzError::Jwks)?;
            let keys = keys::parse_jwks(rest, &allowed).map_err(FuzzError::Jwks)?;
            return Ok(JwtOutcome::Keys(keys.len()));
        }
    };
    let grant = block_on(verifier().verify(&token, &room, NOW))?;
    Ok(JwtOutcome::Grant(grant))
}

/// Runs a verification to completion. With static keys it never waits on I/O; the runtime is
/// per thread and reused (building one per input would dominate the fuzzer's time).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// `proxy_config` target: TOML text, then after the first NUL byte `PROXY_*=value` lines as the
/// environment, through the whole loader ([`Config::from_text`]: TOML, environment overlay,
/// typed decoding, validation).
pub fn config(data: &[u8]) -> Result<Config, FuzzError> {
    let (text, env) = rtcd_kit::fuzzing::config_input(data)?;
    Ok(Config::from_text(text, Some(Path::new("fuzz.toml")), env)?)
}

#[cfg(test)]
mod tests {
    //! Replays every file of `fuzz/corpus/<target>/` through the target's entry function: the
    //! fuzz targets run (briefly) in every `cargo test`, on stable, so they cannot rot, and
    //! every crash ever found stays a regression test.

    use rtcd_kit::fuzzing::replay;

    #[test]
    fn proxy_message_corpus_replays() {
        assert!(replay("proxy_message", super::client_message) > 0);
    }

    #[test]
    fn sdp_policy_corpus_replays() {
        assert!(replay("sdp_policy", super::sdp_policy) > 0);
    }

    #[test]
    fn jwt_corpus_replays() {
        assert!(replay("jwt", super::jwt) > 0);
    }

    #[test]
    fn proxy_config_corpus_replays() {
        assert!(replay("proxy_config", super::config) > 0);
    }

    #[test]
    fn config_inputs_naming_devices_are_skipped_but_comments_may() {
        let e = super::config(b"[auth.jwks]\nfile = \"/proc/self/mem\"\n").unwrap_err();
        assert!(matches!(e, super::FuzzError::Skipped(_)), "{e}");
        let e = super::config(b"\0PROXY_AUTH_JWKS_FILE=/dev/stdin\n").unwrap_err();
        assert!(matches!(e, super::FuzzError::Skipped(_)), "{e}");
        let ok = super::config(
            b"# head -c 32 /dev/urandom\n[auth.oidc]\nissuer = \"https://idp.example\"\n\
              audiences = [\"a\"]\n[auth.oidc.roles]\nmember = [\"m\"]\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn signed_claims_reach_the_claims_checks() {
        let claims = format!(
            r#"{{"iss":"app","aud":"proxy","sub":"alice","room":"r1","exp":{},"iat":{}}}"#,
            super::NOW + 600,
            super::NOW
        );
        let mut input = vec![1u8];
        input.extend_from_slice(claims.as_bytes());
        assert!(matches!(
            super::jwt(&input),
            Ok(super::JwtOutcome::Grant(_))
        ));
        let mut token = vec![0u8];
        token.extend_from_slice(
            super::sign(br#"{"alg":"HS256","kid":"k1"}"#, claims.as_bytes()).as_bytes(),
        );
        assert!(matches!(
            super::jwt(&token),
            Ok(super::JwtOutcome::Grant(_))
        ));
    }
}

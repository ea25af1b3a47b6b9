//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and for replaying their
//! corpora in this crate's unit tests (stable), so that both run exactly the code a daemon runs
//! on outside input. Each function takes raw bytes, parses and validates them as rtcd does, and
//! returns a `Result`: any panic, hang or unbounded allocation is a bug. Not an API: the
//! functions exist for fuzzing and replay only (see `docs/fuzzing.md`).

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use prost::Message as _;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtcd_proto::v1 as pb;

use crate::api::JsonBody;
use crate::api::reply::ApiError;
use crate::auth::{ClientId, Credentials, validate_key};
use crate::config::{Config, ConfigError};
use crate::media::sdp;
use crate::sfu::{SessionCommand, SfuError, TenantId, TrackKind};

/// Why a fuzzed input was refused. The fuzzers only need "an error, not a panic"; the
/// variants keep the underlying error so a replayed input can be explained.
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    /// Not UTF-8 where the transport guarantees text (HTTP header values, gRPC strings).
    #[error("not UTF-8")]
    NotText,
    /// An input the harness refuses to run (e.g. a config naming a device file to read).
    #[error("skipped: {0}")]
    Skipped(&'static str),
    /// Refused by the HTTP API.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Refused by the config loader.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Refused by signaling or the SFU's checks.
    #[error(transparent)]
    Sfu(#[from] SfuError),
    /// Not a protobuf message of the expected type.
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
    /// Refused by the media engine's SDP parser.
    #[error("engine: {0}")]
    Engine(String),
}

impl From<rtcd_kit::fuzzing::Refused> for FuzzError {
    fn from(refused: rtcd_kit::fuzzing::Refused) -> Self {
        match refused {
            rtcd_kit::fuzzing::Refused::NotText => FuzzError::NotText,
            rtcd_kit::fuzzing::Refused::Skipped(why) => FuzzError::Skipped(why),
        }
    }
}

/// What the HTTP API reads from one request: the `Authorization` header and the JSON body.
#[derive(Debug)]
pub struct HttpInput {
    /// The parsed header, if there was one.
    pub credentials: Option<Credentials>,
    /// `clientID` of the body (all of `/register`, `/unregister` and `/login` need it).
    pub client_id: ClientId,
}

/// `rtcd_http` target: the first line (up to `\n`) is an `Authorization` header value (empty:
/// none), the rest the body of a `/register`, `/unregister` or `/login` request. Runs the
/// header parser (Basic and Bearer) and the body's field checks (JSON object, `clientID`,
/// `authKey` length rules), everything that happens before the store or bcrypt.
pub fn http_request(data: &[u8]) -> Result<HttpInput, FuzzError> {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let credentials = if header.is_empty() {
        None
    } else {
        let header = std::str::from_utf8(header).map_err(|_| FuzzError::NotText)?;
        let credentials = Credentials::from_authorization(header).map_err(ApiError::from)?;
        if let Credentials::Basic { user, .. } = &credentials {
            // What `AuthService::authenticate` does first with a non-admin password.
            ClientId::parse(user).map_err(ApiError::from)?;
        }
        Some(credentials)
    };
    let request = JsonBody::parse(&Bytes::copy_from_slice(body))?;
    let client_id = request.client_id()?;
    if let Ok(key) = request.auth_key() {
        validate_key(&key).map_err(ApiError::from)?;
    }
    Ok(HttpInput {
        credentials,
        client_id,
    })
}

/// `rtcd_config` target: TOML text, then after the first NUL byte `RTCD_*=value` lines, through
/// the whole loader ([`Config::from_text`]: TOML, removed settings, environment overlay,
/// typed decoding, validation).
pub fn config(data: &[u8]) -> Result<Config, FuzzError> {
    let (text, env) = rtcd_kit::fuzzing::config_input(data)?;
    Ok(Config::from_text(text, Some(Path::new("fuzz.toml")), env)?)
}

/// The largest SDP rtcd accepts by default (`rtc.max_sdp_bytes`).
const MAX_SDP_BYTES: usize = 64 * 1024;

/// `rtcd_sdp` target: an offer as a proxy relays it. An optional first line
/// `#tracks mid=kind ...` (kind: audio, video, screen, screen_audio) declares track kinds by
/// mid; the rest is the SDP. Runs what the SFU does before and around the engine: the offer
/// checks ([`crate::sfu::check_offer`]), the codec trimming, the engine's SDP parser, and the
/// answer polishing over the same text.
pub fn sdp_offer(data: &[u8]) -> Result<Vec<sdp::Section>, FuzzError> {
    let text = std::str::from_utf8(data).map_err(|_| FuzzError::NotText)?;
    let (declared, offer) = match text.strip_prefix("#tracks") {
        Some(rest) => {
            let (line, offer) = rest.split_once('\n').unwrap_or((rest, ""));
            let declared = line
                .split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .filter_map(|(mid, kind)| Some((mid.to_owned(), track_kind(kind)?)))
                .collect();
            (declared, offer)
        }
        None => (HashMap::new(), text),
    };
    offer_checks(offer, &declared)
}

fn track_kind(s: &str) -> Option<TrackKind> {
    Some(match s {
        "audio" => TrackKind::Audio,
        "video" => TrackKind::Video,
        "screen" => TrackKind::Screen,
        "screen_audio" => TrackKind::ScreenAudio,
        _ => return None,
    })
}

/// The SFU's offer path short of a live session (see [`sdp_offer`]).
fn offer_checks(
    offer: &str,
    declared: &HashMap<String, TrackKind>,
) -> Result<Vec<sdp::Section>, FuzzError> {
    let sections = crate::sfu::check_offer(offer, declared, MAX_SDP_BYTES)?;
    let trimmed = crate::engine::peer::trim_offer(offer);
    let text = trimmed.as_deref().unwrap_or(offer);
    RTCSessionDescription::offer(text.to_owned()).map_err(|e| FuzzError::Engine(e.to_string()))?;
    let current: HashMap<String, sdp::Msid> = sections
        .iter()
        .map(|s| {
            let msid = sdp::Msid {
                stream: "s1".into(),
                track: format!("s1-{}", s.mid),
            };
            (s.mid.clone(), msid)
        })
        .collect();
    // rtcd polishes its own answer, whose sections and mids come from this offer.
    sdp::polish_answer(text, &current, &sdp::unsent_extensions(&sections));
    Ok(sections)
}

/// What a `ClientSignal` became.
#[derive(Debug)]
pub enum Signal {
    /// A valid `Join`.
    Join(crate::sfu::JoinRequest),
    /// A valid command after the join.
    Command(SessionCommand),
    /// A valid refreshed token.
    Token(crate::sfu::TokenMeta),
}

/// `grpc_convert` target: arbitrary bytes decoded as the `rtcd.v1.ClientSignal` a proxy streams,
/// then converted as the signaling service does (`Join` into a join request, anything else into
/// a session command; an offer then through the SFU's offer checks).
pub fn client_signal(data: &[u8]) -> Result<Signal, FuzzError> {
    use crate::grpc::convert;
    let message = pb::ClientSignal::decode(data)?;
    match message.signal {
        None => Err(SfuError::InvalidArgument("empty ClientSignal".into()).into()),
        Some(pb::client_signal::Signal::Join(join)) => Ok(Signal::Join(convert::join_request(
            TenantId::new("fuzz"),
            join,
        )?)),
        Some(signal) => {
            let command = match convert::command(signal)? {
                convert::ClientCommand::Session(command) => command,
                convert::ClientCommand::Token(token) => return Ok(Signal::Token(token)),
            };
            if let SessionCommand::Offer { sdp, tracks } = &command {
                offer_checks(sdp, tracks)?;
            }
            Ok(Signal::Command(command))
        }
    }
}

#[cfg(test)]
mod tests {
    //! Replays every file of `fuzz/corpus/<target>/` through the target's entry function: the
    //! fuzz targets run (briefly) in every `cargo test`, on stable, so they cannot rot, and
    //! every crash ever found stays a regression test.

    use rtcd_kit::fuzzing::replay;

    #[test]
    fn rtcd_http_corpus_replays() {
        assert!(replay("rtcd_http", super::http_request) > 0);
    }

    #[test]
    fn rtcd_config_corpus_replays() {
        assert!(replay("rtcd_config", super::config) > 0);
    }

    #[test]
    fn rtcd_sdp_corpus_replays() {
        assert!(replay("rtcd_sdp", super::sdp_offer) > 0);
    }

    #[test]
    fn grpc_convert_corpus_replays() {
        assert!(replay("grpc_convert", super::client_signal) > 0);
    }

    #[test]
    fn config_inputs_naming_devices_are_skipped_but_comments_may() {
        let e = super::config(b"[api.http]\ntls_cert_file = \"/dev/zero\"\n").unwrap_err();
        assert!(matches!(e, super::FuzzError::Skipped(_)), "{e}");
        let e = super::config(b"\0RTCD_GRPC_TLS_CLIENT_CA_FILE=/dev/stdin\n").unwrap_err();
        assert!(matches!(e, super::FuzzError::Skipped(_)), "{e}");
        let ok = super::config(b"# head -c 32 /dev/urandom\n[logger]\nlevel = \"debug\"\n");
        assert!(ok.is_ok(), "{ok:?}");
    }
}

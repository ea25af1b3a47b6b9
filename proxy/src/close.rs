//! Why a WebSocket session ends, and the one mapping from each reason to its close code.
//!
//! Codes 4000-4099 are session and limit reasons, 4100-4199 token reasons (one per
//! [`AuthError`] variant), so a client can tell "fix your token" from "slow down" from "try
//! again" by range. The close reason text is the stable label (at most 123 bytes, as RFC 6455
//! allows); details go in the `error` message sent just before the close.

use crate::auth::AuthError;
use crate::relay::{MediaEnd, RelayError};

/// Every reason the proxy closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `leave`.
    Normal,
    /// The proxy is shutting down; reconnect (to another replica).
    GoingAway,
    /// Unparseable JSON, unknown `type`, a second `join`, or a message before `join`.
    BadMessage,
    /// No `join` within `limits.join_timeout_seconds`.
    JoinTimeout,
    /// Nothing received within `limits.idle_timeout_seconds`.
    IdleTimeout,
    /// A message above `limits.max_message_bytes`.
    MessageTooLarge,
    /// Over the per-connection message rate.
    RateLimited,
    /// Over the per-address connection rate or the global connection cap.
    TooManyConnections,
    /// Too many failed authentications from this address; retry later.
    TooManyAuthFailures,
    /// The identity already has `limits.max_sessions_per_user` sessions.
    TooManySessions,
    /// The media server hosting the session went away.
    MediaServerLost,
    /// The client stopped reading: a frame could not be written in `limits.send_timeout_seconds`.
    SlowClient,
    /// The client's own media connection to the media server failed (rtcd closed the session
    /// with "peer connection failed"); the media server is fine, so this is not
    /// [`CloseReason::MediaServerLost`]: telling the user "the server is gone" would send them
    /// looking in the wrong place (their network or TURN settings).
    MediaConnectionFailed,
    /// The platform or a moderator removed this participant (no ban: rejoining is allowed).
    Removed,
    /// The participant is banned from the room: removed with a ban, or refused at join while
    /// the ban lasts. Do not rejoin automatically.
    Banned,
    /// The platform or a moderator ended the room for everyone.
    RoomEnded,
    /// The room does not allow guests, and the token's role is `guest`.
    GuestsNotAllowed,
    /// A moderator turned this participant away from the lobby.
    LobbyDenied,
    /// No moderator came within the room's wait timeout (wait-for-host).
    HostTimeout,
    /// Nobody admitted this participant within the room's wait timeout (lobby).
    LobbyTimeout,
    /// The room's waiting list is full (500 sessions wait to enter): refused at the door.
    LobbyFull,
    /// The token was refused (or a refresh failed, or the token expired in session).
    Auth(AuthError),
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::BadMessage => 4000,
            CloseReason::JoinTimeout => 4001,
            CloseReason::IdleTimeout => 4002,
            CloseReason::MessageTooLarge => 4003,
            CloseReason::RateLimited => 4004,
            CloseReason::TooManyConnections => 4005,
            CloseReason::TooManyAuthFailures => 4006,
            CloseReason::TooManySessions => 4007,
            CloseReason::MediaServerLost => 4008,
            CloseReason::SlowClient => 4009,
            CloseReason::MediaConnectionFailed => 4010,
            CloseReason::Removed => 4011,
            CloseReason::Banned => 4012,
            CloseReason::RoomEnded => 4013,
            CloseReason::GuestsNotAllowed => 4014,
            CloseReason::LobbyDenied => 4015,
            CloseReason::HostTimeout => 4016,
            CloseReason::LobbyTimeout => 4017,
            CloseReason::LobbyFull => 4018,
            CloseReason::Auth(e) => match e {
                AuthError::Missing => 4100,
                AuthError::Malformed(_) => 4101,
                AuthError::TooLarge { .. } => 4102,
                AuthError::AlgorithmRejected(_) => 4103,
                AuthError::UnknownKey(_) => 4104,
                AuthError::BadSignature => 4105,
                AuthError::Expired { .. } => 4106,
                AuthError::NotYetValid { .. } => 4107,
                AuthError::TooLongLived { .. } => 4108,
                AuthError::WrongIssuer => 4109,
                AuthError::WrongAudience => 4110,
                AuthError::WrongRoom => 4111,
                AuthError::WildcardRoom => 4112,
                AuthError::MissingClaim(_) => 4113,
                AuthError::IdentityMismatch => 4114,
                AuthError::KeysUnavailable(_) => 4115,
                AuthError::RoleUnmapped => 4116,
                AuthError::ServerToken => 4117,
                AuthError::Revoked => 4118,
                AuthError::AffiliationDenied(_) => 4119,
                AuthError::AffiliationUnavailable(_) => 4120,
            },
        }
    }

    /// The close reason text: a stable snake_case label, also the `error` code.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::GoingAway => "going_away",
            CloseReason::BadMessage => "bad_message",
            CloseReason::JoinTimeout => "join_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MessageTooLarge => "message_too_large",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::TooManyAuthFailures => "too_many_auth_failures",
            CloseReason::TooManySessions => "too_many_sessions",
            CloseReason::MediaServerLost => "media_server_lost",
            CloseReason::SlowClient => "slow_client",
            CloseReason::MediaConnectionFailed => "media_connection_failed",
            CloseReason::Removed => "removed",
            CloseReason::Banned => "banned",
            CloseReason::RoomEnded => "room_ended",
            CloseReason::GuestsNotAllowed => "guests_not_allowed",
            CloseReason::LobbyDenied => "lobby_denied",
            CloseReason::HostTimeout => "host_timeout",
            CloseReason::LobbyTimeout => "lobby_timeout",
            CloseReason::LobbyFull => "lobby_full",
            CloseReason::Auth(e) => e.reason(),
        }
    }

    /// Every reason with a representative value, for the docs test and the CLI.
    pub fn all() -> Vec<CloseReason> {
        vec![
            CloseReason::Normal,
            CloseReason::GoingAway,
            CloseReason::BadMessage,
            CloseReason::JoinTimeout,
            CloseReason::IdleTimeout,
            CloseReason::MessageTooLarge,
            CloseReason::RateLimited,
            CloseReason::TooManyConnections,
            CloseReason::TooManyAuthFailures,
            CloseReason::TooManySessions,
            CloseReason::MediaServerLost,
            CloseReason::SlowClient,
            CloseReason::MediaConnectionFailed,
            CloseReason::Removed,
            CloseReason::Banned,
            CloseReason::RoomEnded,
            CloseReason::GuestsNotAllowed,
            CloseReason::LobbyDenied,
            CloseReason::HostTimeout,
            CloseReason::LobbyTimeout,
            CloseReason::LobbyFull,
            CloseReason::Auth(AuthError::Missing),
            CloseReason::Auth(AuthError::Malformed(String::new())),
            CloseReason::Auth(AuthError::TooLarge { size: 0, max: 0 }),
            CloseReason::Auth(AuthError::AlgorithmRejected(String::new())),
            CloseReason::Auth(AuthError::UnknownKey(String::new())),
            CloseReason::Auth(AuthError::BadSignature),
            CloseReason::Auth(AuthError::Expired { ago: 0 }),
            CloseReason::Auth(AuthError::NotYetValid { wait: 0 }),
            CloseReason::Auth(AuthError::TooLongLived {
                lifetime: 0,
                max: 0,
            }),
            CloseReason::Auth(AuthError::WrongIssuer),
            CloseReason::Auth(AuthError::WrongAudience),
            CloseReason::Auth(AuthError::WrongRoom),
            CloseReason::Auth(AuthError::WildcardRoom),
            CloseReason::Auth(AuthError::MissingClaim("exp".into())),
            CloseReason::Auth(AuthError::IdentityMismatch),
            CloseReason::Auth(AuthError::KeysUnavailable(String::new())),
            CloseReason::Auth(AuthError::RoleUnmapped),
            CloseReason::Auth(AuthError::ServerToken),
            CloseReason::Auth(AuthError::Revoked),
            CloseReason::Auth(AuthError::AffiliationDenied(String::new())),
            CloseReason::Auth(AuthError::AffiliationUnavailable(String::new())),
        ]
    }
}

/// How a session the media server ended is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaClose {
    /// Close with this reason; the detail goes in the `error` before the close.
    Close(CloseReason, &'static str),
    /// The media server is gone for this session: send `media_server_lost` with this message,
    /// then close 4008 ([`CloseReason::MediaServerLost`]); a rejoin places the room again.
    Lost(String),
}

/// The close of a session whose media server ended it: `end` is the media server's typed
/// reason and `reason` its prose (`None`: the stream ended without one, the media server died
/// or became unreachable). Only the type decides; the prose is only quoted to the client.
/// A moderation or lobby end closes with its own code, a failed media connection with 4010
/// (the client's problem, not the server's), and everything else, an unknown or untyped
/// (older media server) end included, is "the media server is gone for this session".
pub fn media_end(end: MediaEnd, reason: Option<&str>) -> MediaClose {
    let close = |reason, detail| MediaClose::Close(reason, detail);
    match end {
        MediaEnd::Removed => close(CloseReason::Removed, "you were removed from the room"),
        MediaEnd::Banned => close(
            CloseReason::Banned,
            "you were removed from the room and banned from it",
        ),
        MediaEnd::RoomEnded => close(CloseReason::RoomEnded, "the room was ended for everyone"),
        MediaEnd::LobbyDenied => close(
            CloseReason::LobbyDenied,
            "a moderator did not let you into the room",
        ),
        MediaEnd::HostTimeout => close(
            CloseReason::HostTimeout,
            "no moderator joined the room in time",
        ),
        MediaEnd::LobbyTimeout => close(
            CloseReason::LobbyTimeout,
            "nobody let you into the room in time",
        ),
        MediaEnd::GuestsNotAllowed => close(
            CloseReason::GuestsNotAllowed,
            "this room no longer allows guests",
        ),
        MediaEnd::Revoked => close(
            CloseReason::Auth(AuthError::Revoked),
            "your token was revoked",
        ),
        MediaEnd::PeerConnectionFailed => close(
            CloseReason::MediaConnectionFailed,
            "your media connection to the media server failed (no ICE or DTLS traffic \
             got through); the media server is fine: rejoin, and check the network or \
             TURN settings if it happens again",
        ),
        // Planned: the host drains (its calls ran out of drain time, or it moves them).
        MediaEnd::Shutdown | MediaEnd::Migrate => MediaClose::Lost(
            "the media server hosting this room is being taken out of service; rejoining \
             moves the call to another media server"
                .into(),
        ),
        MediaEnd::Moved => MediaClose::Lost(
            "this room was moved to another media server; rejoin to follow it".into(),
        ),
        MediaEnd::Unspecified
        | MediaEnd::Leave
        | MediaEnd::ClosedByClient
        | MediaEnd::Disconnected => MediaClose::Lost(match reason {
            Some(reason) => format!("the media server closed this session ({reason}); rejoin"),
            None => "the media server hosting this room is gone; rejoin".into(),
        }),
    }
}

/// The close of a join the media server refused for a reason of its own (ban, revocation,
/// guests, full lobby); `None` for the others, which the session reports as an `error` and
/// serves without media.
pub fn join_refused(e: &RelayError) -> Option<CloseReason> {
    match e {
        RelayError::Banned(_) => Some(CloseReason::Banned),
        RelayError::Revoked(_) => Some(CloseReason::Auth(AuthError::Revoked)),
        RelayError::LobbyFull(_) => Some(CloseReason::LobbyFull),
        RelayError::GuestsNotAllowed(_) => Some(CloseReason::GuestsNotAllowed),
        RelayError::Unavailable(_) | RelayError::Refused(_) | RelayError::HostCapacity(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ends_close_with_their_own_codes() {
        let code = |end| match media_end(end, Some("x")) {
            MediaClose::Close(reason, _) => reason.code(),
            MediaClose::Lost(_) => CloseReason::MediaServerLost.code(),
        };
        let expected = [
            (MediaEnd::Removed, 4011),
            (MediaEnd::Banned, 4012),
            (MediaEnd::RoomEnded, 4013),
            (MediaEnd::GuestsNotAllowed, 4014),
            (MediaEnd::LobbyDenied, 4015),
            (MediaEnd::HostTimeout, 4016),
            (MediaEnd::LobbyTimeout, 4017),
            (MediaEnd::Revoked, 4118),
            (MediaEnd::PeerConnectionFailed, 4010),
            (MediaEnd::Shutdown, 4008),
            (MediaEnd::Migrate, 4008),
            (MediaEnd::Moved, 4008),
            (MediaEnd::Leave, 4008),
            (MediaEnd::ClosedByClient, 4008),
            (MediaEnd::Disconnected, 4008),
            (MediaEnd::Unspecified, 4008),
        ];
        for (end, want) in expected {
            assert_eq!(code(end), want, "{end:?}");
        }
        // Untyped (an older media server): lost, whatever the prose says, and quoted.
        assert_eq!(
            media_end(MediaEnd::Unspecified, Some("banned")),
            MediaClose::Lost("the media server closed this session (banned); rejoin".into())
        );
        assert_eq!(
            media_end(MediaEnd::Unspecified, None),
            MediaClose::Lost("the media server hosting this room is gone; rejoin".into())
        );
    }

    #[test]
    fn relays_that_know_only_rtcds_names_type_them_by_the_contracts_table() {
        use crate::relay::EndReason;
        let typed = |name: &str| EndReason::from(name).end;
        assert_eq!(
            typed("peer connection failed"),
            MediaEnd::PeerConnectionFailed
        );
        assert_eq!(typed("banned"), MediaEnd::Banned);
        assert_eq!(typed("shutdown"), MediaEnd::Shutdown);
        assert_eq!(typed("host timeout"), MediaEnd::HostTimeout);
        assert_eq!(typed("something new"), MediaEnd::Unspecified);
        assert_eq!(EndReason::from("moved").to_string(), "moved");
    }

    #[test]
    fn typed_join_refusals_close_and_the_rest_do_not() {
        let close = |e: RelayError| join_refused(&e).map(|r| r.code());
        assert_eq!(close(RelayError::Banned("b".into())), Some(4012));
        assert_eq!(close(RelayError::Revoked("r".into())), Some(4118));
        assert_eq!(close(RelayError::LobbyFull("l".into())), Some(4018));
        assert_eq!(close(RelayError::GuestsNotAllowed("g".into())), Some(4014));
        assert_eq!(close(RelayError::Refused("x".into())), None);
        assert_eq!(close(RelayError::HostCapacity("x".into())), None);
        assert_eq!(close(RelayError::Unavailable("x".into())), None);
    }

    #[test]
    fn codes_and_labels_are_unique_and_documented() {
        let all = CloseReason::all();
        let mut codes: Vec<_> = all.iter().map(CloseReason::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "every reason has its own code");
        let mut labels: Vec<_> = all.iter().map(CloseReason::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len(), "every reason has its own label");
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
        )
        .unwrap();
        for reason in &all {
            let row = format!("| {} | `{}` |", reason.code(), reason.label());
            assert!(doc.contains(&row), "docs/protocol.md lacks the row `{row}`");
        }
    }
}

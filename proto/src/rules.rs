//! Rules both sides of the contract state: a proxy checks them before it asks rtcd, and rtcd
//! enforces them when asked, so each is written once, here, beside the messages they govern,
//! and neither side can drift from the other. Plain values and functions only (and the
//! generated enums they name): no daemon's domain types, and no IO.

/// The load level at which a media host takes no new rooms (`load` 1.0 and above).
pub const FULL_LOAD_LEVEL: u8 = 4;

/// The coarse level of a media host's `load` (the larger of its CPU use and its share of its
/// capacity; `/system` and its cluster announcement carry it): 0-0.25 is level 0, ...,
/// 0.75-1.0 level 3, 1.0 and above [`FULL_LOAD_LEVEL`]; an unreadable load counts as idle.
/// Coarse, so that proxy replicas reading loads seconds apart place alike, and so that a host
/// rewrites its announcement only when its level changes.
pub fn load_level(load: f64) -> u8 {
    if !load.is_finite() || load <= 0.0 {
        return 0;
    }
    // Bounded by FULL_LOAD_LEVEL: the cast cannot truncate.
    (load * f64::from(FULL_LOAD_LEVEL))
        .floor()
        .min(f64::from(FULL_LOAD_LEVEL)) as u8
}

/// Longest wait a room policy may set (`RoomPolicy.wait_timeout_seconds`): a day.
pub const MAX_WAIT_TIMEOUT_SECONDS: u32 = 86_400;

/// A room policy's wait timeout when none is set.
pub const DEFAULT_WAIT_TIMEOUT_SECONDS: u32 = 600;

/// Sessions one room may hold waiting to enter; a Join beyond it is refused
/// (`JoinRefused` LOBBY_FULL).
pub const MAX_WAITING_PER_ROOM: usize = 500;

/// The most views one `TrackViews` may carry (a session receives at most a few dozen tracks);
/// the proxy refuses more, rtcd too.
pub const MAX_TRACK_VIEWS: usize = 64;

/// The role of a room's hosts: it opens rooms under `wait_for_host`, gets lobby requests and
/// may admit.
pub const MODERATOR_ROLE: &str = "moderator";

/// The role that a room's `guests_allowed` applies to.
pub const GUEST_ROLE: &str = "guest";

/// The typed end of a `SessionClosed` reason as rtcd names it (`SESSION_END_UNSPECIFIED` for
/// a name without a value of its own). rtcd types its ends with it at its signaling boundary;
/// relays that know only the name (in-process ones, test doubles) type it the same way.
pub fn session_end(reason: &str) -> crate::v1::SessionEnd {
    use crate::v1::SessionEnd as End;
    match reason {
        "leave" => End::Leave,
        "closed by client" => End::ClosedByClient,
        "peer connection failed" => End::PeerConnectionFailed,
        "disconnected" => End::Disconnected,
        "shutdown" => End::Shutdown,
        "migrate" => End::Migrate,
        "moved" => End::Moved,
        "removed" => End::Removed,
        "banned" => End::Banned,
        "room ended" => End::RoomEnded,
        "revoked" => End::Revoked,
        "lobby denied" => End::LobbyDenied,
        "host timeout" => End::HostTimeout,
        "lobby timeout" => End::LobbyTimeout,
        "guests not allowed" => End::GuestsNotAllowed,
        _ => End::Unspecified,
    }
}

/// A policy's `wait_timeout_seconds` out of 1..=[`MAX_WAIT_TIMEOUT_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutOutOfRange;

impl std::fmt::Display for WaitTimeoutOutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wait_timeout_seconds must be 1-{MAX_WAIT_TIMEOUT_SECONDS}"
        )
    }
}

impl std::error::Error for WaitTimeoutOutOfRange {}

/// Checks a policy's wait timeout, if it sets one.
pub fn check_wait_timeout(seconds: Option<u32>) -> Result<(), WaitTimeoutOutOfRange> {
    match seconds {
        Some(t) if t == 0 || t > MAX_WAIT_TIMEOUT_SECONDS => Err(WaitTimeoutOutOfRange),
        _ => Ok(()),
    }
}

/// Which permission publishing a track of a kind needs (`Permissions` in the contract): a
/// microphone `publish_audio`, a camera `publish_video`, a screen share and its sound
/// `publish_screen`. The proxy's policy decides with this table; rtcd's SFU, which must not
/// depend on the contract, keeps the same rule on its own types and a test at rtcd's gRPC
/// boundary (`grpc::convert`) holds it to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRight {
    /// `Permissions.publish_audio`.
    Audio,
    /// `Permissions.publish_video`.
    Video,
    /// `Permissions.publish_screen`.
    Screen,
}

/// The permission a track of `kind` needs; `None` for `TRACK_KIND_UNSPECIFIED` (never valid).
pub fn publish_right(kind: crate::v1::TrackKind) -> Option<PublishRight> {
    use crate::v1::TrackKind;
    match kind {
        TrackKind::Audio => Some(PublishRight::Audio),
        TrackKind::Video => Some(PublishRight::Video),
        TrackKind::Screen | TrackKind::ScreenAudio => Some(PublishRight::Screen),
        TrackKind::Unspecified => None,
    }
}

/// Whether a track of `kind` travels in an audio media section (else a video one).
pub fn is_audio(kind: crate::v1::TrackKind) -> bool {
    matches!(
        kind,
        crate::v1::TrackKind::Audio | crate::v1::TrackKind::ScreenAudio
    )
}

/// An SDP direction attribute (RFC 8866 section 6.7), from the SDP writer's point of view:
/// how the proxy (authorizing a client's SDP) and rtcd (answering it) read the same line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sends and receives (also the default without an attribute).
    SendRecv,
    /// Only sends.
    SendOnly,
    /// Only receives.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The direction an `a=` attribute's value names, if it is one.
    pub fn parse(attribute: &str) -> Option<Self> {
        match attribute {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }

    /// Whether the writer of the SDP receives media on this section.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    /// Whether the writer of the SDP sends media on this section.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeouts_are_one_second_to_a_day() {
        assert_eq!(check_wait_timeout(None), Ok(()));
        assert_eq!(check_wait_timeout(Some(1)), Ok(()));
        assert_eq!(check_wait_timeout(Some(86_400)), Ok(()));
        assert_eq!(check_wait_timeout(Some(0)), Err(WaitTimeoutOutOfRange));
        assert_eq!(check_wait_timeout(Some(86_401)), Err(WaitTimeoutOutOfRange));
        assert_eq!(
            WaitTimeoutOutOfRange.to_string(),
            "wait_timeout_seconds must be 1-86400"
        );
    }

    #[test]
    fn directions_parse_and_say_who_sends() {
        let all = [
            ("sendrecv", true, true),
            ("sendonly", true, false),
            ("recvonly", false, true),
            ("inactive", false, false),
        ];
        for (text, sends, receives) in all {
            let d = Direction::parse(text).unwrap();
            assert_eq!((d.sends(), d.receives()), (sends, receives), "{text}");
        }
        assert_eq!(Direction::parse("mid:0"), None);
        assert_eq!(Direction::parse("SENDRECV"), None);
    }
}

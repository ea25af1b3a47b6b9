//! The seam between a client session and the media server hosting its room.
//!
//! A session calls [`Relay::join`] once it holds a [`Grant`]; the relay answers with a
//! [`RelayLink`]: a bounded command channel (session -> media server) and a bounded event
//! channel (media server -> session). That pair maps one-to-one onto a bidirectional gRPC
//! stream per session, which is how the rtcd relay will implement it. The session has already
//! applied the permission policy to every command it sends; the grant travels in the
//! [`JoinRequest`] so the media server enforces the same permissions on media.
//!
//! [`rtcd::RtcdRelay`] implements it over rtcd's gRPC signaling; without `rtcd.url` the proxy
//! runs with `relay = None` and answers joins with `media_unavailable` (see `session`).

pub mod rtcd;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::auth::Grant;
use crate::policy::TrackSource;
use crate::protocol::{Candidate, Identity, Participant, SessionId};

/// Capacity of each direction of a [`RelayLink`]. Overflow policy: the sender awaits (the
/// session stops reading its socket, which back-pressures the client); a session whose
/// events back up past this is too slow and is dropped by the relay.
pub const LINK_CAPACITY: usize = 64;

/// What the media server needs to admit a session.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The proxy's session.
    pub session: SessionId,
    /// Who, where, with which permissions.
    pub grant: Grant,
    /// The room's entry policy from this proxy's configuration (`[rooms]`); a policy stored
    /// at the media server overrides it field by field.
    pub policy: crate::rooms::RoomPolicy,
    /// The client's resume token (from its previous `joined`): take that session over if the
    /// media server still holds it for this identity and room, else join afresh.
    pub resume: Option<crate::config::Secret>,
}

/// Client actions, already authorized by the policy layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayCommand {
    /// The client's offer, with its declared track sources.
    Offer {
        /// SDP.
        sdp: String,
        /// Sources by mid.
        tracks: BTreeMap<String, TrackSource>,
    },
    /// A client ICE candidate.
    Candidate(Candidate),
    /// A source muted (`true`) or unmuted.
    Mute {
        /// Which.
        source: TrackSource,
        /// Muted?
        muted: bool,
    },
    /// How the client shows video tracks it receives (validated: at most
    /// [`crate::protocol::MAX_TRACK_VIEWS`], bounded strings).
    TrackViews(Vec<crate::protocol::TrackView>),
    /// Screen share announced on (`true`) or off. Off withdraws the screen and screen-audio
    /// tracks; on needs nothing from rtcd (the offer's `tracks` name the screen's sections).
    ScreenShare(bool),
    /// Permissions changed after a token refresh. Boxed: a grant is the largest command by far
    /// (176 bytes against 80), and every session's command queue allocates 32 slots of the
    /// largest up front.
    UpdateGrant(Box<Grant>),
    /// The session's token was replaced by a refresh: the media server checks it against its
    /// revocations.
    Token {
        /// `iat`.
        issued_at: Option<i64>,
        /// `jti`.
        token_id: Option<String>,
        /// `exp`.
        expires_at: i64,
    },
    /// The client left; the stream ends after this.
    Leave,
}

/// Media server events for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The media server wants to send a different set of tracks: the client should offer
    /// again with at least this many receiving sections of each kind.
    NegotiationNeeded {
        /// Receiving audio sections needed.
        audio: u32,
        /// Receiving video sections needed.
        video: u32,
    },
    /// The answer to the client's offer.
    Answer(String),
    /// A media server ICE candidate.
    Candidate(Candidate),
    /// Someone is in the room (announced once per identity, whatever their session count).
    ParticipantJoined(Participant),
    /// Someone left (their last session ended).
    ParticipantLeft(Identity),
    /// Someone's role changed (a moderator granted or revoked one).
    ParticipantUpdated(Participant),
    /// A track was published.
    TrackPublished {
        /// Publisher.
        identity: Identity,
        /// Track ID.
        track_id: String,
        /// Source.
        source: TrackSource,
        /// The media section (mid) of the client's SDP that carries it.
        mid: String,
    },
    /// A track was removed.
    TrackUnpublished {
        /// Publisher.
        identity: Identity,
        /// Track ID.
        track_id: String,
    },
    /// Mute state changed.
    MuteChanged {
        /// Who.
        identity: Identity,
        /// Which source.
        source: TrackSource,
        /// Muted?
        muted: bool,
    },
    /// Current speakers.
    VoiceActivity(Vec<Identity>),
    /// The platform or a moderator changed this session's role and permissions.
    PermissionsChanged {
        /// The new role.
        role: crate::policy::Role,
        /// The new permissions.
        permissions: crate::policy::Permissions,
    },
    /// The platform or a moderator muted one of this session's sources.
    MutedByModerator(TrackSource),
    /// Dynacast: the simulcast layers (rids) of this session's own track on section `mid` that
    /// anyone receives now.
    LayersWanted {
        /// The publishing section.
        mid: String,
        /// The rids to send.
        rids: Vec<String>,
    },
    /// The media server paused a track this session receives (`Some(reason)`) or sends it
    /// again (`None`), without renegotiating.
    TrackPaused {
        /// The section that carries it.
        mid: String,
        /// Its track ID.
        track_id: String,
        /// Why; `None`: resumed.
        reason: Option<crate::protocol::PauseReason>,
    },
    /// The platform or a moderator asks this session's user to unmute a source.
    UnmuteRequested(TrackSource),
    /// The room is being recorded (a recording started, or this session joined one that
    /// records).
    RecordingStarted {
        /// The recording.
        recording_id: String,
        /// When it started (Unix milliseconds).
        started_at_ms: i64,
        /// Who started it.
        started_by: String,
    },
    /// The room's recording stopped.
    RecordingStopped {
        /// The recording.
        recording_id: String,
        /// Why.
        reason: crate::rooms::RecordingStop,
    },
    /// A session that waited (see [`RelayLink::waiting`]) was admitted: the client may now
    /// negotiate media. Carries the session's resume token, as [`RelayLink::resume_token`].
    Admitted {
        /// See [`RelayLink::resume_token`].
        resume_token: Option<crate::config::Secret>,
        /// See [`RelayLink::e2ee`].
        e2ee: bool,
    },
    /// Moderators only: someone knocks at the lobby.
    LobbyRequest(crate::protocol::Participant),
    /// Moderators only: a knocker left the lobby.
    LobbyLeft {
        /// Who.
        identity: Identity,
        /// `admitted`, `denied`, `left`, `timeout` or `refused`.
        outcome: String,
    },
    /// The media server refused one client message; the session continues.
    Error {
        /// The client-facing error code (`bad_sdp`, `forbidden`, ...).
        code: &'static str,
        /// Details from the media server.
        message: String,
    },
    /// The media server closed the session; the event channel ends right after. Without
    /// this event, a closed channel means the media server was lost.
    Closed {
        /// Why (`"peer connection failed".into()`, `"shutdown".into()`, ...).
        reason: EndReason,
    },
}

/// Why the media server ended a session: its typed end, which the session decides on
/// ([`crate::close::media_end`]), and its prose, for logs and the client's
/// `media_server_lost` message only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndReason {
    /// The typed end.
    pub end: MediaEnd,
    /// The media server's words.
    pub text: String,
}

/// A reason as rtcd names it (`"peer connection failed"`, ...), typed by the contract's one
/// table of names (`rtcd_proto::rules::session_end`): for relays that know only the name.
impl From<&str> for EndReason {
    fn from(name: &str) -> Self {
        EndReason {
            end: MediaEnd::from(rtcd_proto::rules::session_end(name)),
            text: name.to_owned(),
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<rtcd_proto::v1::SessionEnd> for MediaEnd {
    fn from(end: rtcd_proto::v1::SessionEnd) -> Self {
        use rtcd_proto::v1::SessionEnd as End;
        match end {
            End::Unspecified => MediaEnd::Unspecified,
            End::Leave => MediaEnd::Leave,
            End::ClosedByClient => MediaEnd::ClosedByClient,
            End::PeerConnectionFailed => MediaEnd::PeerConnectionFailed,
            End::Disconnected => MediaEnd::Disconnected,
            End::Shutdown => MediaEnd::Shutdown,
            End::Migrate => MediaEnd::Migrate,
            End::Moved => MediaEnd::Moved,
            End::Removed => MediaEnd::Removed,
            End::Banned => MediaEnd::Banned,
            End::RoomEnded => MediaEnd::RoomEnded,
            End::Revoked => MediaEnd::Revoked,
            End::LobbyDenied => MediaEnd::LobbyDenied,
            End::HostTimeout => MediaEnd::HostTimeout,
            End::LobbyTimeout => MediaEnd::LobbyTimeout,
            End::GuestsNotAllowed => MediaEnd::GuestsNotAllowed,
        }
    }
}

/// Why the media server ended a session (rtcd's typed `SessionEnd`). The session maps it to
/// its close code in one place, [`crate::close::media_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEnd {
    /// No reason of its own (an older media server, or one this proxy does not know): the
    /// media server lost the session, and the client rejoins.
    Unspecified,
    /// The session left (`leave`).
    Leave,
    /// Closed through the media server's API (`closed by client`).
    ClosedByClient,
    /// This session's own media connection failed (no ICE or DTLS traffic from the client);
    /// the media server itself is fine.
    PeerConnectionFailed,
    /// The signaling stream ended without a leave and was not resumed in time.
    Disconnected,
    /// The media server drained (`shutdown`).
    Shutdown,
    /// The media server drains and moves its calls (`migrate`).
    Migrate,
    /// The room lives on another media server now (`moved`).
    Moved,
    /// Removed by the platform or a moderator, without a ban.
    Removed,
    /// Removed with a ban.
    Banned,
    /// The room was ended for everyone.
    RoomEnded,
    /// The session's token was revoked.
    Revoked,
    /// A moderator turned the waiting session away.
    LobbyDenied,
    /// No moderator came in time.
    HostTimeout,
    /// Nobody admitted the waiting session in time.
    LobbyTimeout,
    /// Guests were turned off while the guest waited.
    GuestsNotAllowed,
}

/// A joined session's connection to its media server. When `events` ends without a `Leave`
/// having been sent and without [`RelayEvent::Closed`], the media server was lost.
#[derive(Debug)]
pub struct RelayLink {
    /// Session -> media server (boxed slots, as every session queue: [`rtcd_kit::queue`]).
    pub commands: rtcd_kit::queue::Sender<RelayCommand>,
    /// Media server -> session.
    pub events: rtcd_kit::queue::Receiver<RelayEvent>,
    /// Set when the session must wait before it enters (the room's policy): it is admitted
    /// when [`RelayEvent::Admitted`] arrives, or closed.
    pub waiting: Option<Waiting>,
    /// What the client presents to resume this session through any proxy replica after its
    /// signaling connection is lost (`None`: the media server does not offer resumption).
    pub resume_token: Option<crate::config::Secret>,
    /// Set when the join resumed an earlier session instead of opening a new one: the peer
    /// connection lives on, and this is the session as the media server has it now.
    pub resumed: Option<Resumed>,
    /// The room is end-to-end encrypted, as the media server applies its policy (known once
    /// the session entered: for one that waits, [`RelayEvent::Admitted`] says it).
    pub e2ee: bool,
}

/// A session taken over from the media server after its signaling was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The other participants now (one entry per identity).
    pub participants: Vec<Participant>,
    /// The session's role now (a moderator may have changed it).
    pub role: crate::policy::Role,
    /// The session's permissions now.
    pub permissions: crate::policy::Permissions,
}

/// Why a session waits before entering, and for how long at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `host` or `lobby`.
    pub reason: String,
    /// Closed after this long.
    pub timeout_seconds: u32,
}

/// Why a join could not be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// No media server is configured or reachable; the client may retry later.
    #[error("media server unavailable: {0}")]
    Unavailable(String),
    /// The media server refused the join.
    #[error("media server refused the join: {0}")]
    Refused(String),
    /// The user is banned from the room.
    #[error("{0}")]
    Banned(String),
    /// The token was revoked.
    #[error("{0}")]
    Revoked(String),
    /// The room does not allow guests.
    #[error("{0}")]
    GuestsNotAllowed(String),
    /// The room's waiting list is full (rtcd's typed `JOIN_REFUSAL_LOBBY_FULL`).
    #[error("{0}")]
    LobbyFull(String),
    /// The media server is at its capacity for new rooms (rtcd's typed
    /// `JOIN_REFUSAL_HOST_CAPACITY`): the relay places the room on another host, and only
    /// when none is left does the client see it, as any other refusal.
    #[error("media server refused the join: {0}")]
    HostCapacity(String),
}

impl RelayError {
    /// The `error` code sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            RelayError::Unavailable(_) => "media_unavailable",
            RelayError::Refused(_) | RelayError::HostCapacity(_) => "media_refused",
            RelayError::Banned(_) => "banned",
            RelayError::Revoked(_) => "token_revoked",
            RelayError::GuestsNotAllowed(_) => "guests_not_allowed",
            RelayError::LobbyFull(_) => "lobby_full",
        }
    }
}

/// What a relay in cluster mode reports of the cluster store (docs/cluster.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterStatus {
    /// Joins placed by outcome since start: `found` (the room's claim named a ready host),
    /// `claimed` (a new room claimed), `moved` (a claim on a gone or unready host replaced),
    /// `fallback` (the store out of reach: placed without it).
    pub placements: [(&'static str, u64); 4],
    /// How long the copy of the hosts' announcements has not followed the store (0 while it
    /// does).
    pub hosts_stale_seconds: f64,
}

/// A boxed, sendable future (the trait is object-safe without extra dependencies).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Connects sessions to media servers. Implemented by the rtcd gRPC relay.
pub trait Relay: Send + Sync + 'static {
    /// Places the session's room on a media server and opens its stream.
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<RelayLink, RelayError>>;

    /// Whether a refreshed token of the session's user is refused by what this relay knows of
    /// revocations (cluster mode: the proxy's copy of the decisions in etcd), so the refresh
    /// is answered 4118 at once rather than `refreshed` and then closed by the media server.
    /// `None` when it knows of none (the media server still checks).
    fn refused_token(&self, _grant: &crate::auth::Grant) -> Option<RelayError> {
        None
    }

    /// Media server hosts as (ready, unready, unknown), for metrics; None if not applicable.
    fn host_health(&self) -> Option<(usize, usize, usize)> {
        None
    }

    /// Each media server host's placement load level (see `placement::level_of`), for metrics.
    fn host_levels(&self) -> Vec<(String, u8)> {
        Vec::new()
    }

    /// The cluster store as this relay sees it (cluster mode only), for metrics.
    fn cluster_status(&self) -> Option<ClusterStatus> {
        None
    }

    /// Room administration on the media servers, if this relay offers it.
    fn rooms(&self) -> Option<&dyn crate::rooms::RoomControl> {
        None
    }

    /// This tenant's webhook settings, sent to every media server the relay logs in to
    /// (`[webhooks]`; empty `urls` turns them off). Called once, before serving.
    fn set_webhooks(&self, _urls: Vec<String>, _secret: crate::config::Secret) {}
}

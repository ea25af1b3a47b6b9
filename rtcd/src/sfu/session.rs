//! A session as signaling sees it: the commands it sends ([`SessionCommand`]), the events it
//! relays ([`SessionEvent`]) and the handle that ties them to one session ([`SessionHandle`]).
//! These are the SFU's own types, so neither signaling nor proto ever touches the media engine.
//!
//! Negotiation: the client makes every offer; rtcd only answers. When the set of tracks a
//! session should receive changes, rtcd asks the client to offer (`NegotiationNeeded`, with how
//! many receiving sections of each kind it needs) and places the tracks in its answer. One
//! offerer means one ICE role assignment and no glare (`docs/protocol.md`).

use std::collections::HashMap;

use rtcd_kit::queue;
use tokio::sync::oneshot;

use super::{Participant, Permissions, SessionId, SfuError, TrackKind, UserId};

/// An ICE candidate as trickled over signaling: the `candidate:` attribute value and the media
/// section it belongs to (by mid or by index; rtcd uses one transport for all, so either works).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The candidate attribute (`candidate:...`); an empty one ends the client's candidates.
    pub candidate: String,
    /// The media section's mid.
    pub sdp_mid: Option<String>,
    /// The media section's index.
    pub sdp_mline_index: Option<u16>,
}

/// Commands from signaling. Sent through [`SessionHandle`].
#[derive(Debug)]
pub enum SessionCommand {
    /// The client's SDP offer, with what it sends on each sending section (by mid; sections
    /// not named carry a microphone or a camera).
    Offer {
        /// The SDP.
        sdp: String,
        /// Declared kinds by mid.
        tracks: HashMap<String, TrackKind>,
    },
    /// A trickled client candidate.
    Candidate(Candidate),
    /// Mute or unmute the session's tracks of a kind.
    Mute {
        /// Which kind.
        kind: TrackKind,
        /// Drop (true) or forward (false).
        muted: bool,
    },
    /// Screen share on (with the MediaStreamTrack id to expect) or off.
    ScreenShare {
        /// On or off.
        on: bool,
        /// The screen track's id (when on).
        track_id: String,
    },
    /// The session's permissions changed (a refreshed token): tracks no longer allowed stop.
    UpdatePermissions(Permissions),
    /// Adaptive stream: how the client shows video tracks it receives. rtcd sends no layer
    /// above what a view needs and pauses a hidden track (`docs/adaptive-video.md`).
    TrackViews(Vec<TrackView>),
    /// The user leaves.
    Leave,
}

/// How a client shows one video track it receives (see [`SessionCommand::TrackViews`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackView {
    /// The section (mid) of the session's SDP that receives the track.
    pub mid: String,
    /// The track id the client means (as in `TrackPublished`): a view of a track the section
    /// no longer carries is ignored. Empty: whatever the section carries.
    pub track_id: String,
    /// Whether the track is shown at all.
    pub visible: bool,
    /// The size it is shown at, in device pixels; `None` when unknown (any layer).
    pub size: Option<(u32, u32)>,
}

/// The most views one [`SessionCommand::TrackViews`] may carry (a session receives at most a
/// few dozen tracks): the contract's `rules::MAX_TRACK_VIEWS` (a test in `grpc::convert` holds
/// the two equal).
pub const MAX_TRACK_VIEWS: usize = 64;

/// A track of another session, as shown to this session.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    /// The publishing session.
    pub session: SessionId,
    /// The publishing user.
    pub user: UserId,
    /// The publishing session's display name.
    pub display_name: String,
    /// What it is.
    pub kind: TrackKind,
    /// Its msid track id in our SDP.
    pub track_id: String,
    /// The section (mid) of this session's SDP that carries it (empty once withdrawn).
    pub mid: String,
}

/// A call's recording as its sessions hear of it (`recording_started` / `recording_stopped`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingNotice {
    /// The recording.
    pub recording_id: String,
    /// When it started (Unix milliseconds).
    pub started_at_ms: i64,
    /// Who started it.
    pub started_by: String,
    /// Why it stopped (`recording_stopped` only).
    pub reason: Option<rtcd_recording::manifest::StopReason>,
}

/// Events for signaling to relay to the client.
#[derive(Debug)]
pub enum SessionEvent {
    /// Answer to the client's offer.
    Answer(String),
    /// The tracks to send changed: the client should offer with at least this many receiving
    /// sections of each kind.
    NegotiationNeeded {
        /// Receiving audio sections needed.
        audio: u32,
        /// Receiving video sections needed.
        video: u32,
    },
    /// A trickled candidate of ours.
    Candidate(Candidate),
    /// A track the client will now receive.
    TrackPublished(TrackInfo),
    /// A track the client no longer receives.
    TrackRemoved(TrackInfo),
    /// A session is in the call (sent for those already there, then for each arrival).
    ParticipantJoined(Participant),
    /// A session left the call.
    ParticipantLeft(Participant),
    /// Another session's role changed (a moderator or the platform updated it).
    ParticipantUpdated(Participant),
    /// Another session started or stopped speaking.
    VoiceActivity {
        /// Who.
        session: SessionId,
        /// Their user.
        user: UserId,
        /// Started (true) or stopped.
        speaking: bool,
    },
    /// Another session muted or unmuted one of its tracks.
    MuteChanged {
        /// Who.
        session: SessionId,
        /// Their user.
        user: UserId,
        /// Which track kind.
        kind: TrackKind,
        /// Muted (true) or unmuted.
        muted: bool,
    },
    /// This session's role and permissions were changed by the platform or a moderator;
    /// tracks no longer allowed have already stopped.
    PermissionsChanged {
        /// The new role.
        role: String,
        /// The new permissions.
        permissions: Permissions,
    },
    /// A moderator muted this session's own tracks of a kind: their packets are dropped until
    /// the session unmutes them itself.
    MutedByModerator {
        /// Which kind.
        kind: TrackKind,
    },
    /// A moderator asks this session's user to unmute a kind; nothing changed.
    UnmuteRequested {
        /// Which kind.
        kind: TrackKind,
    },
    /// rtcd stopped sending a video track this session receives (`Some(reason)`), or sends it
    /// again (`None`), without renegotiating (the subscriber's allocator,
    /// [`crate::sfu::allocation`]).
    TrackPaused {
        /// The section that carries it.
        mid: String,
        /// Its track id in our SDP.
        track_id: String,
        /// Why it is paused; `None`: resumed.
        reason: Option<crate::sfu::allocation::PauseReason>,
    },
    /// Dynacast: which simulcast layers (rids) of this session's own track, sent on section
    /// `mid`, any subscriber needs now; the client may stop encoding the others until they are
    /// named again.
    LayersWanted {
        /// The section of this session's offer that publishes the track.
        mid: String,
        /// The rids to send.
        rids: Vec<String>,
    },
    /// A recoverable error about one command.
    Error(SfuError),
    /// The session ended; nothing follows.
    Closed {
        /// Why.
        reason: String,
    },
    /// The call records (sent when it starts, and to a session joining while it records).
    RecordingStarted(RecordingNotice),
    /// The call's recording stopped.
    RecordingStopped(RecordingNotice),
}

/// The worker's end of a session's event queue (boxed slots: [`rtcd_kit::queue`]).
pub(crate) type EventSender = queue::Sender<SessionEvent>;

/// A session's events as signaling reads them; the queue ends after [`SessionEvent::Closed`].
pub type SessionEvents = queue::Receiver<SessionEvent>;

/// Signaling's handle to a session. Dropping it ends the session ("disconnected").
pub struct SessionHandle {
    commands: queue::Sender<SessionCommand>,
    _alive: oneshot::Sender<()>,
}

impl SessionHandle {
    /// The handle over a session's command queue and liveness signal (the shard's bridge task
    /// holds the other ends).
    pub(crate) fn new(commands: queue::Sender<SessionCommand>, alive: oneshot::Sender<()>) -> Self {
        Self {
            commands,
            _alive: alive,
        }
    }

    /// Queues a command. Waits if the session is behind (backpressure on this session's stream only).
    pub async fn send(&self, command: SessionCommand) -> Result<(), SfuError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SfuError::Closed)
    }
}

//! The client wire protocol: JSON text frames, one object per frame, tagged by `type`.
//! `docs/protocol.md` is the reference for client authors; this file is its source of truth.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{Permissions, Role, TrackSource};
use crate::rooms::RoomPolicy;
use crate::turn::IceServer;

/// A room name as clients send it: 1-128 characters of `A-Z a-z 0-9 - _ . ~ @ :`.
/// `*` is never a room (it is the token wildcard).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    /// Validates a requested room name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~@:".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("a room is 1-128 characters of A-Z a-z 0-9 - _ . ~ @ :".into())
        }
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who a participant is, as the token says (`context.user.id` or `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Identity(String);

impl Identity {
    /// Wraps a verified identity.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The identity.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One WebSocket session on this proxy, unique per process (logs, relay streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// How the client shows one video track it receives (`track_views`, adaptive stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackView {
    /// The media section (mid) of the client's SDP that receives the track.
    pub mid: String,
    /// The track's id (`track_published.track_id`): a view that crosses a renegotiation giving
    /// the section another track is ignored. Absent: whatever the section carries.
    #[serde(default)]
    pub track_id: Option<String>,
    /// Whether the track is shown at all (false: the media server pauses it).
    pub visible: bool,
    /// The width it is drawn at, in device pixels (absent or 0: unknown, any quality).
    #[serde(default)]
    pub width: u32,
    /// The height it is drawn at, in device pixels.
    #[serde(default)]
    pub height: u32,
}

/// The most views one `track_views` message may carry (the contract's rule).
pub use rtcd_proto::rules::MAX_TRACK_VIEWS;

/// An ICE candidate in the browser's `RTCIceCandidateInit` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The `candidate:` line; empty means end of candidates.
    pub candidate: String,
    /// The media section's mid.
    #[serde(default, rename = "sdpMid", skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The media section's index.
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    /// The ICE username fragment.
    #[serde(
        default,
        rename = "usernameFragment",
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// Everything a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message: enter a room. `token` may be omitted when it came in the
    /// `Authorization` header (or `?jwt=` where enabled).
    Join {
        /// The JWT.
        #[serde(default)]
        token: Option<String>,
        /// The room to enter.
        room: String,
        /// The `resume_token` of this client's previous `joined`, after its connection was
        /// lost: the session (and its peer connection) is taken over if the media server
        /// still holds it; `joined.resumed` says whether it was.
        #[serde(default)]
        resume: Option<crate::config::Secret>,
    },
    /// An SDP offer: the client makes every offer (after `joined`, to publish or unpublish,
    /// and after each `negotiation_needed`).
    Offer {
        /// The SDP.
        sdp: String,
        /// What each sending media section carries, by mid (cameras are assumed otherwise).
        #[serde(default)]
        tracks: BTreeMap<String, TrackSource>,
    },
    /// Obsolete: the media server never offers. Parsed (so an old client gets a clear
    /// `bad_message` error instead of a closed connection) and refused.
    Answer {
        /// The SDP.
        sdp: String,
        /// As in `offer`.
        #[serde(default)]
        tracks: BTreeMap<String, TrackSource>,
    },
    /// A trickled ICE candidate (`RTCIceCandidateInit` fields).
    Candidate {
        /// The `candidate:` line; empty means end of candidates.
        candidate: String,
        /// The media section's mid.
        #[serde(default, rename = "sdpMid")]
        sdp_mid: Option<String>,
        /// The media section's index.
        #[serde(default, rename = "sdpMLineIndex")]
        sdp_mline_index: Option<u16>,
        /// The ICE username fragment.
        #[serde(default, rename = "usernameFragment")]
        username_fragment: Option<String>,
    },
    /// Stop sending a source (the track stays negotiated).
    Mute {
        /// Which source.
        source: TrackSource,
    },
    /// Resume sending a source.
    Unmute {
        /// Which source.
        source: TrackSource,
    },
    /// Adaptive stream: how the client shows video tracks it receives (sizes, visibility);
    /// the media server sends nothing above what a view needs and pauses hidden tracks.
    TrackViews {
        /// One per track whose view changed (at most [`MAX_TRACK_VIEWS`]).
        views: Vec<TrackView>,
    },
    /// Announce a screen share starting (before its offer).
    ScreenShareStart {},
    /// Announce a screen share ending.
    ScreenShareStop {},
    /// Leave the room; the proxy closes with 1000.
    Leave {},
    /// Application-level keepalive (for clients that cannot see WebSocket pings).
    Ping {
        /// Echoed in the pong.
        #[serde(default)]
        id: Option<u64>,
    },
    /// A new token for the same identity and room (answer to `token_expiring`).
    Refresh {
        /// The JWT.
        token: String,
    },
    /// A moderator acts on the room (moderators only; others get `forbidden`).
    Moderate {
        /// What to do.
        action: ModerationAction,
        /// The participant acted on (every action but `end_room`).
        #[serde(default)]
        identity: Option<String>,
        /// `mute` / `request_unmute`: which source.
        #[serde(default)]
        source: Option<TrackSource>,
        /// `ban`: how long (seconds; the proxy's `api.default_ban_seconds` if absent).
        #[serde(default)]
        ban_seconds: Option<u64>,
        /// `kick` / `ban`: why (kept with the ban; at most 256 bytes).
        #[serde(default)]
        reason: Option<String>,
        /// `set_policy`: the fields to change.
        #[serde(default)]
        policy: Option<RoomPolicy>,
        /// `set_policy`: clear the room's stored policy first.
        #[serde(default)]
        reset: bool,
    },
}

/// Why the media server stopped sending a track to this participant (`track_paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// Even its lowest quality does not fit in what this participant's connection carries now
    /// (after audio and higher-priority video); it resumes on its own when it fits.
    Bandwidth,
    /// The participant said it does not show the track.
    Hidden,
}

/// What a moderator can do from inside the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModerationAction {
    /// Remove a participant (they may rejoin).
    Kick,
    /// Remove a participant and keep them out for `ban_seconds`.
    Ban,
    /// Mute a participant's source (they may unmute themselves).
    Mute,
    /// Ask a participant to unmute a source (if the operator allows it).
    RequestUnmute,
    /// End the room for everyone.
    EndRoom,
    /// Make a participant a moderator (with the moderator role's permissions).
    GrantModerator,
    /// Make a moderator a member again (with the member role's permissions).
    RevokeModerator,
    /// Let someone waiting in the lobby in.
    Admit,
    /// Turn someone waiting in the lobby away.
    Deny,
    /// Change the room's entry policy (`policy`, optionally `reset`).
    SetPolicy,
    /// Start recording the room (needs the `record` permission).
    StartRecording,
    /// Stop the room's recording (needs the `record` permission).
    StopRecording,
}

impl ModerationAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModerationAction::Kick => "kick",
            ModerationAction::Ban => "ban",
            ModerationAction::Mute => "mute",
            ModerationAction::RequestUnmute => "request_unmute",
            ModerationAction::EndRoom => "end_room",
            ModerationAction::GrantModerator => "grant_moderator",
            ModerationAction::RevokeModerator => "revoke_moderator",
            ModerationAction::Admit => "admit",
            ModerationAction::Deny => "deny",
            ModerationAction::SetPolicy => "set_policy",
            ModerationAction::StartRecording => "start_recording",
            ModerationAction::StopRecording => "stop_recording",
        }
    }
}

impl ClientMessage {
    /// The `type` value, for metrics and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Offer { .. } => "offer",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Unmute { .. } => "unmute",
            ClientMessage::TrackViews { .. } => "track_views",
            ClientMessage::ScreenShareStart {} => "screen_share_start",
            ClientMessage::ScreenShareStop {} => "screen_share_stop",
            ClientMessage::Leave {} => "leave",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Refresh { .. } => "refresh",
            ClientMessage::Moderate { .. } => "moderate",
        }
    }
}

/// A participant as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Participant {
    /// Identity from the token.
    pub identity: Identity,
    /// Display name, if the token has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Role, when the source of the event knows it (rtcd does not: its events carry identity
    /// and display name only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// Everything the proxy may send.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The token was accepted for the room.
    Joined {
        /// This session.
        session_id: SessionId,
        /// The room.
        room: RoomName,
        /// The verified identity.
        identity: Identity,
        /// Display name.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Jitsi-style tenant (`sub` when `context.user.id` gave the identity).
        #[serde(skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// Role.
        role: Role,
        /// Effective permissions.
        permissions: Permissions,
        /// Token expiry, Unix seconds.
        expires_at: i64,
        /// Whether a media server is attached (false: offers get `media_unavailable`).
        media: bool,
        /// TURN servers with this session's credentials (`RTCIceServer` shape), when the
        /// proxy has `[turn]` configured; re-issued by `ice_servers` before they expire.
        #[serde(skip_serializing_if = "Option::is_none")]
        ice_servers: Option<Vec<IceServer>>,
        /// When the credentials in `ice_servers` expire (Unix seconds).
        #[serde(skip_serializing_if = "Option::is_none")]
        ice_servers_expires_at: Option<i64>,
        /// Present this in `join.resume` to take the session over after a lost connection
        /// (any proxy replica, within the media server's grace period).
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_token: Option<crate::config::Secret>,
        /// True when this join resumed the earlier session: keep the peer connection (media
        /// never stopped); `participants` is the call now.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
        /// With `resumed`: every other participant now (events missed while disconnected
        /// are not repeated; tracks and negotiation events are).
        #[serde(skip_serializing_if = "Option::is_none")]
        participants: Option<Vec<Participant>>,
        /// The room is end-to-end encrypted (docs/e2ee.md): the client encrypts every frame
        /// it sends and decrypts every frame it receives, with keys its platform gives it.
        e2ee: bool,
    },
    /// New TURN credentials, before the previous ones expire: apply them to the peer
    /// connection (`setConfiguration`) so any new relay allocation uses them.
    IceServers {
        /// The servers with fresh credentials.
        ice_servers: Vec<IceServer>,
        /// When they expire (Unix seconds).
        expires_at: i64,
    },
    /// A request was refused; the session continues unless a close follows.
    Error {
        /// Stable machine-readable code (see docs/protocol.md).
        code: &'static str,
        /// Human-readable detail.
        message: String,
        /// The `type` of the client message that caused it, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<&'static str>,
    },
    /// The media server wants to send a different set of tracks: offer again with at least
    /// this many receiving sections of each kind (docs/protocol.md section 4a).
    NegotiationNeeded {
        /// Receiving audio sections needed.
        audio: u32,
        /// Receiving video sections needed.
        video: u32,
    },
    /// The media server's answer to the client's offer.
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// A media server ICE candidate.
    Candidate {
        /// The candidate.
        #[serde(flatten)]
        candidate: Candidate,
    },
    /// The room's policy holds this session before it enters (instead of `joined`, which
    /// follows once it is admitted). Only `ping`, `refresh` and `leave` are accepted until then.
    Waiting {
        /// The room.
        room: RoomName,
        /// `host`: no moderator is in the room yet; `lobby`: a moderator must admit you.
        reason: String,
        /// The session is closed (4016 / 4017) if it still waits after this long.
        timeout_seconds: u32,
    },
    /// Moderators only: someone knocks at the lobby (answer with `moderate` `admit` / `deny`).
    LobbyRequest {
        /// Who.
        #[serde(flatten)]
        participant: Participant,
    },
    /// Moderators only: a knocker left the lobby.
    LobbyLeft {
        /// Who.
        identity: Identity,
        /// `admitted`, `denied`, `left` (gave up or disconnected), `timeout`, `refused`
        /// (guests were turned off while they waited).
        outcome: String,
    },
    /// Someone entered the room.
    ParticipantJoined {
        /// Who.
        participant: Participant,
    },
    /// Someone's role changed.
    ParticipantUpdated {
        /// Who, with their role now.
        participant: Participant,
    },
    /// Someone left.
    ParticipantLeft {
        /// Who.
        identity: Identity,
    },
    /// A participant published a track.
    TrackPublished {
        /// Publisher.
        identity: Identity,
        /// Track ID (the stream's `msid` track).
        track_id: String,
        /// What it is.
        source: TrackSource,
        /// The media section of the preceding answer that carries it: clients map received
        /// tracks by mid, because browsers do not keep the sender's track ids.
        mid: String,
    },
    /// A participant stopped a track.
    TrackUnpublished {
        /// Publisher.
        identity: Identity,
        /// Track ID.
        track_id: String,
    },
    /// A participant muted or unmuted a source.
    MuteChanged {
        /// Who.
        identity: Identity,
        /// Which source.
        source: TrackSource,
        /// Now muted?
        muted: bool,
    },
    /// Who is speaking now (loudest first); empty when silence.
    VoiceActivity {
        /// Speakers.
        speakers: Vec<Identity>,
    },
    /// The token expires soon; send `refresh` before `expires_at`.
    TokenExpiring {
        /// Unix seconds.
        expires_at: i64,
    },
    /// A `refresh` was accepted.
    Refreshed {
        /// The new expiry, Unix seconds.
        expires_at: i64,
        /// Permissions of the new token.
        permissions: Permissions,
    },
    /// The media server hosting the room is gone; rejoin to be placed on another.
    MediaServerLost {
        /// Why.
        message: String,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's `id`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The platform or a moderator changed this participant's role and permissions; tracks
    /// no longer allowed have already stopped being forwarded. A later `refresh` keeps these.
    PermissionsChanged {
        /// The new role.
        role: Role,
        /// The new permissions.
        permissions: Permissions,
    },
    /// The platform or a moderator muted one of this participant's sources: the media server
    /// drops it. Show it as muted; the user may unmute (`unmute`) if still allowed.
    MutedByModerator {
        /// Which source.
        source: TrackSource,
    },
    /// The platform or a moderator asks the user to unmute a source. Nothing changes unless
    /// the user agrees (the client then sends `unmute`).
    UnmuteRequested {
        /// Which source.
        source: TrackSource,
    },
    /// The media server stopped sending a video track to this participant, without
    /// renegotiating: its section stays, nothing arrives on it until `track_resumed`.
    TrackPaused {
        /// The section that carries it.
        mid: String,
        /// Its track ID (as in `track_published`).
        track_id: String,
        /// Why.
        reason: PauseReason,
    },
    /// A paused track is sent again (from a keyframe).
    TrackResumed {
        /// The section that carries it.
        mid: String,
        /// Its track ID.
        track_id: String,
    },
    /// Dynacast: which simulcast layers (`rids`) of this participant's own track on section
    /// `mid` anyone receives now; the others may stop being encoded until named again.
    LayersWanted {
        /// The publishing section.
        mid: String,
        /// The rids to send.
        rids: Vec<String>,
    },
    /// A `moderate` request was carried out.
    Moderated {
        /// The action.
        action: ModerationAction,
        /// The participant acted on.
        #[serde(skip_serializing_if = "Option::is_none")]
        identity: Option<Identity>,
        /// Sessions affected.
        sessions: u32,
        /// `start_recording` / `stop_recording`: the recording.
        #[serde(skip_serializing_if = "Option::is_none")]
        recording_id: Option<String>,
    },
    /// The room is being recorded: sent to every participant when a recording starts, and
    /// right after `joined` to one joining (or resuming) while it records. Show it: the
    /// participants' consent depends on it.
    RecordingStarted {
        /// The recording.
        recording_id: String,
        /// When it started (Unix milliseconds).
        started_at_ms: i64,
        /// Who started it: a moderator's identity, `policy` (the room records by policy), or
        /// "" (the platform).
        started_by: String,
    },
    /// The room's recording stopped.
    RecordingStopped {
        /// The recording.
        recording_id: String,
        /// Why.
        reason: crate::rooms::RecordingStop,
    },
}

impl ServerMessage {
    /// The `type` value, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Joined { .. } => "joined",
            ServerMessage::IceServers { .. } => "ice_servers",
            ServerMessage::Error { .. } => "error",
            ServerMessage::NegotiationNeeded { .. } => "negotiation_needed",
            ServerMessage::Answer { .. } => "answer",
            ServerMessage::Candidate { .. } => "candidate",
            ServerMessage::Waiting { .. } => "waiting",
            ServerMessage::LobbyRequest { .. } => "lobby_request",
            ServerMessage::LobbyLeft { .. } => "lobby_left",
            ServerMessage::ParticipantJoined { .. } => "participant_joined",
            ServerMessage::ParticipantUpdated { .. } => "participant_updated",
            ServerMessage::ParticipantLeft { .. } => "participant_left",
            ServerMessage::TrackPublished { .. } => "track_published",
            ServerMessage::TrackUnpublished { .. } => "track_unpublished",
            ServerMessage::MuteChanged { .. } => "mute_changed",
            ServerMessage::VoiceActivity { .. } => "voice_activity",
            ServerMessage::TokenExpiring { .. } => "token_expiring",
            ServerMessage::Refreshed { .. } => "refreshed",
            ServerMessage::MediaServerLost { .. } => "media_server_lost",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::PermissionsChanged { .. } => "permissions_changed",
            ServerMessage::MutedByModerator { .. } => "muted_by_moderator",
            ServerMessage::UnmuteRequested { .. } => "unmute_requested",
            ServerMessage::Moderated { .. } => "moderated",
            ServerMessage::TrackPaused { .. } => "track_paused",
            ServerMessage::TrackResumed { .. } => "track_resumed",
            ServerMessage::LayersWanted { .. } => "layers_wanted",
            ServerMessage::RecordingStarted { .. } => "recording_started",
            ServerMessage::RecordingStopped { .. } => "recording_stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_parse_and_junk_is_refused() {
        let m: ClientMessage =
            serde_json::from_value(json!({"type":"join","token":"t","room":"r"})).unwrap();
        assert_eq!(m.kind(), "join");
        let m: ClientMessage = serde_json::from_value(
            json!({"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}),
        )
        .unwrap();
        assert!(
            matches!(m, ClientMessage::Candidate { ref sdp_mid, .. } if sdp_mid.as_deref() == Some("0"))
        );
        let m: ClientMessage =
            serde_json::from_value(json!({"type":"offer","sdp":"v=0","tracks":{"1":"screen"}}))
                .unwrap();
        assert!(
            matches!(m, ClientMessage::Offer { ref tracks, .. } if tracks["1"] == TrackSource::Screen)
        );
        for bad in [
            json!({"type":"teleport"}),
            json!({"room":"r"}),
            json!({"type":"join"}),
            json!({"type":"mute","source":"nose"}),
            json!({"type":"leave","extra":1}),
            json!([1, 2]),
        ] {
            assert!(
                serde_json::from_value::<ClientMessage>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn server_messages_are_tagged() {
        let v = serde_json::to_value(ServerMessage::Pong { id: Some(7) }).unwrap();
        assert_eq!(v, json!({"type":"pong","id":7}));
        let v = serde_json::to_value(ServerMessage::Error {
            code: "forbidden",
            message: "no".into(),
            request: Some("offer"),
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"error","code":"forbidden","message":"no","request":"offer"})
        );
    }

    #[test]
    fn negotiation_and_track_events_serialize_as_documented() {
        let v =
            serde_json::to_value(ServerMessage::NegotiationNeeded { audio: 2, video: 1 }).unwrap();
        assert_eq!(v, json!({"type":"negotiation_needed","audio":2,"video":1}));
        let v = serde_json::to_value(ServerMessage::TrackPublished {
            identity: Identity::new("bob"),
            track_id: "t1".into(),
            source: TrackSource::ScreenAudio,
            mid: "3".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"track_published","identity":"bob","track_id":"t1","source":"screen_audio","mid":"3"})
        );
        let m: ClientMessage =
            serde_json::from_value(json!({"type":"answer","sdp":"v=0"})).unwrap();
        assert_eq!(
            m.kind(),
            "answer",
            "an obsolete answer parses, to be refused politely"
        );
    }

    #[test]
    fn ice_servers_serialize_in_rtc_ice_server_shape() {
        let v = serde_json::to_value(ServerMessage::IceServers {
            ice_servers: vec![IceServer {
                urls: vec!["turn:t.example:3478?transport=udp".into()],
                username: "1600:bob".into(),
                credential: "c3VwZXI=".into(),
            }],
            expires_at: 1600,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"ice_servers","expires_at":1600,"ice_servers":[{"urls":["turn:t.example:3478?transport=udp"],"username":"1600:bob","credential":"c3VwZXI="}]})
        );
    }

    #[test]
    fn room_names() {
        assert!(RoomName::parse("daily-standup_2026.11").is_ok());
        for bad in ["", "*", "a b", "a/b", &"x".repeat(129), "é"] {
            assert!(RoomName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recording_actions_parse_and_recording_events_serialize() {
        for (action, want) in [
            ("start_recording", ModerationAction::StartRecording),
            ("stop_recording", ModerationAction::StopRecording),
        ] {
            let m: ClientMessage =
                serde_json::from_value(json!({"type": "moderate", "action": action})).unwrap();
            match m {
                ClientMessage::Moderate {
                    action, identity, ..
                } => assert_eq!((action, identity), (want, None)),
                other => panic!("{other:?}"),
            }
            assert_eq!(want.as_str(), action);
        }
        assert!(
            serde_json::from_value::<ClientMessage>(
                json!({"type": "moderate", "action": "start_recording", "format": "mp4"})
            )
            .is_err(),
            "unknown fields are refused"
        );
        let started = ServerMessage::RecordingStarted {
            recording_id: "rec_abc".into(),
            started_at_ms: 1_764_500_000_123,
            started_by: "mia".into(),
        };
        assert_eq!(started.kind(), "recording_started");
        assert_eq!(
            serde_json::to_value(started).unwrap(),
            json!({"type": "recording_started", "recording_id": "rec_abc", "started_at_ms": 1_764_500_000_123_i64, "started_by": "mia"})
        );
        let stopped = ServerMessage::RecordingStopped {
            recording_id: "rec_abc".into(),
            reason: crate::rooms::RecordingStop::RoomFinished,
        };
        assert_eq!(stopped.kind(), "recording_stopped");
        assert_eq!(
            serde_json::to_value(stopped).unwrap(),
            json!({"type": "recording_stopped", "recording_id": "rec_abc", "reason": "room_finished"})
        );
    }
}

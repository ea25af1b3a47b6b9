//! Room administration: what the platform's backend (the room service API, `crate::api`) and
//! in-call moderators (the `moderate` message, `crate::session`) may do to a room, carried out
//! at the rtcd that hosts it.
//!
//! Both callers go through [`perform`], so an action means the same thing whoever asks, and
//! every action is one audit line (who, what, target, outcome) on the `audit` target. Room
//! state is authoritative at rtcd: this module holds none, so any proxy replica can serve any
//! action. [`RoomControl`] is the seam to rtcd (implemented by `relay::rtcd::RtcdRelay`).

use serde::{Deserialize, Serialize};

use crate::policy::{Permissions, Role, TrackSource};
use crate::protocol::{Identity, RoomName};
use crate::relay::BoxFuture;

pub use crate::room_policy::{MAX_WAIT_TIMEOUT_SECONDS, Opener, RoomPolicy};

/// Someone waiting to enter a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LobbyEntry {
    /// Their identity (admit and deny act on it).
    pub identity: Identity,
    /// Their display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Their role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `host` (waiting for a moderator) or `lobby` (waiting to be admitted).
    pub reason: String,
    /// Since when (Unix milliseconds).
    pub since_ms: i64,
}

/// A room as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    /// The room name.
    pub name: String,
    /// When its first participant joined (Unix milliseconds).
    pub created_at_ms: i64,
    /// Sessions in it now.
    pub participant_count: u32,
}

/// A track a participant publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackInfo {
    /// Its id (`track_id` in `track_published`).
    pub track_id: String,
    /// What it is.
    pub source: TrackSource,
    /// Whether the media server drops its packets.
    pub muted: bool,
}

/// One session of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantInfo {
    /// The media server's session ID.
    pub session_id: String,
    /// The identity from the token.
    pub identity: String,
    /// Display name ("" if none).
    pub name: String,
    /// Role now.
    pub role: String,
    /// Permissions now.
    pub permissions: Permissions,
    /// When the session joined (Unix milliseconds).
    pub joined_at_ms: i64,
    /// Published tracks.
    pub tracks: Vec<TrackInfo>,
}

/// A room with its participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomDetail {
    /// The room name.
    pub name: String,
    /// When its first participant joined (Unix milliseconds).
    pub created_at_ms: i64,
    /// Sessions in it now.
    pub participant_count: u32,
    /// One entry per session, by join time.
    pub participants: Vec<ParticipantInfo>,
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanInfo {
    /// The room.
    pub room: String,
    /// The banned identity.
    pub identity: String,
    /// Expiry (Unix seconds).
    pub until: i64,
    /// Why, as given.
    pub reason: String,
    /// When it was made (Unix seconds).
    pub created_at: i64,
}

/// Tokens to revoke (tenant-wide).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// With `issued_before`: every token of this identity issued before then.
    #[serde(default)]
    pub identity: Option<String>,
    /// Unix seconds; defaults to now when `identity` is given.
    #[serde(default)]
    pub issued_before: Option<i64>,
    /// One token by its `jti`.
    #[serde(default)]
    pub token_id: Option<String>,
    /// When that token expires (Unix seconds; how long the entry is kept).
    #[serde(default)]
    pub token_expires_at: Option<i64>,
}

/// Whether a recording still records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written.
    Recording,
    /// Complete: every file is closed.
    Stopped,
}

/// Why a recording stopped (`stop_reason`, and `reason` in `recording_stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStop {
    /// Stopped through the API or by a moderator.
    Requested,
    /// Everybody left, or the room was ended.
    RoomFinished,
    /// It reached the media server's longest recording.
    MaxDuration,
    /// The media server's disk filled up.
    DiskFull,
    /// A write failed.
    Error,
    /// The media server stopped (drained or shut down) while it recorded.
    Shutdown,
    /// The media server was killed while it recorded; its files play up to their last seconds.
    Interrupted,
}

impl RecordingStop {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStop::Requested => "requested",
            RecordingStop::RoomFinished => "room_finished",
            RecordingStop::MaxDuration => "max_duration",
            RecordingStop::DiskFull => "disk_full",
            RecordingStop::Error => "error",
            RecordingStop::Shutdown => "shutdown",
            RecordingStop::Interrupted => "interrupted",
        }
    }
}

/// One file of a recording: one published track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingFile {
    /// Its name within the recording.
    pub name: String,
    /// Size in bytes (it grows while the recording records).
    pub bytes: u64,
    /// Media duration (milliseconds).
    pub duration_ms: u64,
    /// The publisher's identity.
    pub identity: String,
    /// The publishing session (the media server's session ID, as in `GET /rooms/{room}`).
    pub session_id: String,
    /// What the track is (absent for a kind this proxy does not know).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<TrackSource>,
    /// `opus`, `vp8`, `vp9`, `av1` or `h264`.
    pub codec: String,
    /// Its first frame on the recording's common clock (Unix milliseconds).
    pub start_ms: i64,
    /// Where the API serves its bytes ([`file_url`]).
    pub url: String,
}

/// A recording of a room: one segment, on the media server that wrote it (a room that moved
/// host while it recorded has one segment per host, each its own entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingInfo {
    /// Its ID (`rec_` and 26 base32 characters).
    pub recording_id: String,
    /// The room.
    pub room: String,
    /// Whether it still records.
    pub state: RecordingState,
    /// When it started (Unix milliseconds).
    pub started_at_ms: i64,
    /// When it stopped (Unix milliseconds; absent while recording).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_ms: Option<i64>,
    /// Why it stopped (absent while recording).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<RecordingStop>,
    /// Who started it: a moderator's identity, `policy` (the room's `record` policy), or ""
    /// (the platform, through the API).
    pub started_by: String,
    /// Its part: 1, or more when the room moved to another media server while it recorded.
    pub segment: u32,
    /// Some media could not be written in time and was left out.
    pub degraded: bool,
    /// Total size of its files, manifest included.
    pub bytes: u64,
    /// Its files (absent in lists: get the recording). `manifest.json` is not listed; it is
    /// always there, at [`file_url`] with its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<RecordingFile>>,
    /// The media server holding this segment (the relay's host key; never shown).
    #[serde(skip)]
    pub host: String,
}

/// Where the API serves a recording's file: the path of
/// `GET /api/v1/rooms/{room}/recordings/{id}/files/{name}`, with `?segment=` when the
/// recording has more than one segment (names are percent-encoded).
pub fn file_url(room: &str, recording_id: &str, segment: u32, name: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // RFC 3986 unreserved characters stay; room names add `@` and `:`, path-safe too.
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    const ROOM: &AsciiSet = &SEGMENT.remove(b'@').remove(b':');
    let mut url = format!(
        "/api/v1/rooms/{}/recordings/{}/files/{}",
        utf8_percent_encode(room, ROOM),
        utf8_percent_encode(recording_id, SEGMENT),
        utf8_percent_encode(name, SEGMENT)
    );
    if segment > 1 {
        url.push_str(&format!("?segment={segment}"));
    }
    url
}

/// Bytes of a recording's file, as the media server streams them.
pub struct FileRead {
    /// The file's size when the read started.
    pub size: u64,
    /// The bytes asked for, in order; an error ends them. Bounded: the media server's chunks
    /// are at most 256 KiB and are read only as fast as this receiver takes them.
    pub chunks: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, ControlError>>,
}

impl std::fmt::Debug for FileRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRead")
            .field("size", &self.size)
            .finish()
    }
}

/// Why the media server refused a recording call (its `RecordingRefused` details; NO_ROOM is
/// [`ControlError::NotFound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingRefusal {
    /// The room already records (one recording at a time).
    AlreadyRecording,
    /// The room records nothing.
    NotRecording,
    /// The recording still records: stop it before deleting it.
    StillRecording,
    /// Recording is off on the media server hosting the room.
    Disabled,
    /// The media server has less free space than its floor.
    DiskFull,
    /// The room's media is end-to-end encrypted: the server cannot read it.
    Encrypted,
}

impl RecordingRefusal {
    /// The stable code (API `reason`, WebSocket `error` code).
    pub fn code(self) -> &'static str {
        match self {
            RecordingRefusal::AlreadyRecording => "already_recording",
            RecordingRefusal::NotRecording => "not_recording",
            RecordingRefusal::StillRecording => "still_recording",
            RecordingRefusal::Disabled => "recording_disabled",
            RecordingRefusal::DiskFull => "disk_full",
            RecordingRefusal::Encrypted => "encrypted",
        }
    }
}

/// Why an action could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such room, participant or ban in this tenant.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is malformed (the media server's or our own checks).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The action is not allowed here (e.g. remote unmute is off).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No media server is reachable (or none is configured).
    #[error("media server unavailable: {0}")]
    Unavailable(String),
    /// The media server refused a recording call; the text is its message.
    #[error("{code}: {1}", code = .0.code())]
    Recording(RecordingRefusal, String),
    /// The media server refused a policy change the room's state does not allow; the text is
    /// its message.
    #[error("{code}: {1}", code = .0.code())]
    Policy(PolicyRefusal, String),
}

/// Why the media server refused a policy change (its `PolicyRefused` details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRefusal {
    /// `e2ee` would change while someone is in the room or waits to enter it.
    E2eeLocked,
}

impl PolicyRefusal {
    /// The stable code (API `reason`, WebSocket `error` code).
    pub fn code(self) -> &'static str {
        match self {
            PolicyRefusal::E2eeLocked => "e2ee_locked",
        }
    }
}

impl ControlError {
    /// The stable error code (API JSON bodies, WebSocket `error` messages).
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::NotFound(_) => "not_found",
            ControlError::Invalid(_) => "bad_request",
            ControlError::Forbidden(_) => "forbidden",
            ControlError::Unavailable(_) => "media_unavailable",
            ControlError::Recording(refusal, _) => refusal.code(),
            ControlError::Policy(refusal, _) => refusal.code(),
        }
    }
}

/// The media servers' room administration (`rtcd.v1.Rooms`), tenant-scoped by the relay's
/// credentials.
pub trait RoomControl: Send + Sync {
    /// Every room of this tenant on every media server.
    fn list_rooms(&self) -> BoxFuture<'_, Result<Vec<RoomSummary>, ControlError>>;
    /// One room (on the host it is placed on).
    fn get_room<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> BoxFuture<'a, Result<RoomDetail, ControlError>>;
    /// Removes every session of `identity`; bans for `ban_seconds` if non-zero. Returns the
    /// sessions closed and the ban's expiry.
    fn remove<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        ban_seconds: u64,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<i64>), ControlError>>;
    /// Mutes (`request == false`) or asks to unmute (`request == true`) a source.
    fn mute<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        source: TrackSource,
        request_unmute: bool,
    ) -> BoxFuture<'a, Result<u32, ControlError>>;
    /// Sets role and permissions live.
    fn update<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        role: Role,
        permissions: Permissions,
    ) -> BoxFuture<'a, Result<u32, ControlError>>;
    /// Ends the room.
    fn end<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<u32, ControlError>>;
    /// Bans in force in a room.
    fn bans<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<Vec<BanInfo>, ControlError>>;
    /// Lifts a ban.
    fn unban<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<(), ControlError>>;
    /// Revokes tokens on every media server; returns live sessions closed.
    fn revoke<'a>(&'a self, revocation: &'a Revocation)
    -> BoxFuture<'a, Result<u32, ControlError>>;
    /// Who waits to enter the room, oldest first.
    fn lobby<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> BoxFuture<'a, Result<Vec<LobbyEntry>, ControlError>>;
    /// Admits (`admit`) or denies a user waiting to enter; returns the sessions decided.
    /// Idempotent.
    fn decide<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        admit: bool,
    ) -> BoxFuture<'a, Result<u32, ControlError>>;
    /// The policy stored for the room (set through the API or by a moderator).
    fn policy<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<RoomPolicy, ControlError>>;
    /// Merges `change` into the stored policy (cleared first with `reset`) on every media
    /// server, so it holds wherever the room is placed; returns the stored policy.
    fn set_policy<'a>(
        &'a self,
        room: &'a RoomName,
        change: RoomPolicy,
        reset: bool,
    ) -> BoxFuture<'a, Result<RoomPolicy, ControlError>>;
    /// Starts recording the room (on the host it is placed on); `requested_by` is a
    /// moderator's identity, or "" for the platform.
    fn start_recording<'a>(
        &'a self,
        _room: &'a RoomName,
        _requested_by: &'a str,
    ) -> BoxFuture<'a, Result<RecordingInfo, ControlError>> {
        Box::pin(async { Err(ControlError::Unavailable(NO_RECORDING.into())) })
    }
    /// Stops the room's recording; returns it complete.
    fn stop_recording<'a>(
        &'a self,
        _room: &'a RoomName,
        _requested_by: &'a str,
    ) -> BoxFuture<'a, Result<RecordingInfo, ControlError>> {
        Box::pin(async { Err(ControlError::Unavailable(NO_RECORDING.into())) })
    }
    /// The room's recordings on every media server, one entry per segment, newest first,
    /// without their files.
    fn recordings<'a>(
        &'a self,
        _room: &'a RoomName,
    ) -> BoxFuture<'a, Result<Vec<RecordingInfo>, ControlError>> {
        Box::pin(async { Err(ControlError::Unavailable(NO_RECORDING.into())) })
    }
    /// Every segment of one recording (any room: the caller checks it), with its files,
    /// from every media server; empty if none has it.
    fn recording<'a>(
        &'a self,
        _recording_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RecordingInfo>, ControlError>> {
        Box::pin(async { Err(ControlError::Unavailable(NO_RECORDING.into())) })
    }
    /// Deletes these segments (as [`RoomControl::recording`] found them) and their files;
    /// returns the bytes freed.
    fn delete_recording<'a>(
        &'a self,
        _segments: &'a [RecordingInfo],
    ) -> BoxFuture<'a, Result<u64, ControlError>> {
        Box::pin(async { Err(ControlError::Unavailable(NO_RECORDING.into())) })
    }
    /// Reads `length` bytes (0: to the end) of a file of `segment` from `offset`.
    fn read_recording_file<'a>(
        &'a self,
        _segment: &'a RecordingInfo,
        _name: &'a str,
        _offset: u64,
        _length: u64,
    ) -> BoxFuture<'a, Result<FileRead, ControlError>> {
        Box::pin(async { Err(ControlError::Unavailable(NO_RECORDING.into())) })
    }
}

/// Why a relay without recording refuses recording calls.
const NO_RECORDING: &str = "this media relay does not record";

/// Who asks.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The platform's backend (the server token's `sub`).
    Api {
        /// `sub`.
        subject: String,
    },
    /// A moderator in the call.
    Moderator {
        /// Their identity.
        identity: Identity,
        /// Their proxy session.
        session: String,
    },
}

impl Actor {
    /// Who asks, as the media server keeps it with a recording (`started_by`): a moderator's
    /// identity, or "" for the platform.
    pub(crate) fn requested_by(&self) -> &str {
        match self {
            Actor::Api { .. } => "",
            Actor::Moderator { identity, .. } => identity.as_str(),
        }
    }

    /// How audit lines name the actor (`api:<sub>`, `moderator:<identity>@<session>`).
    pub(crate) fn describe(&self) -> String {
        match self {
            Actor::Api { subject } => format!("api:{subject}"),
            Actor::Moderator { identity, session } => {
                format!("moderator:{}@{session}", identity.as_str())
            }
        }
    }
}

/// An action on a room.
#[derive(Debug, Clone)]
pub enum Action {
    /// End the room for everyone.
    EndRoom,
    /// Remove a participant, banning for `ban_seconds` if non-zero.
    Remove {
        /// Who.
        identity: Identity,
        /// Ban length (0 = none).
        ban_seconds: u64,
        /// Why (kept with the ban).
        reason: String,
    },
    /// Mute a participant's source.
    Mute {
        /// Who.
        identity: Identity,
        /// Which.
        source: TrackSource,
    },
    /// Ask a participant to unmute a source.
    RequestUnmute {
        /// Who.
        identity: Identity,
        /// Which.
        source: TrackSource,
    },
    /// Set a participant's role and permissions.
    Update {
        /// Who.
        identity: Identity,
        /// New role.
        role: Role,
        /// New permissions.
        permissions: Permissions,
    },
    /// Lift a ban.
    Unban {
        /// Who.
        identity: Identity,
    },
    /// Let someone waiting in the lobby in.
    Admit {
        /// Who.
        identity: Identity,
    },
    /// Turn someone waiting in the lobby away.
    Deny {
        /// Who.
        identity: Identity,
    },
    /// Change the room's entry policy.
    SetPolicy {
        /// The fields to change.
        change: RoomPolicy,
        /// Clear the stored policy first.
        reset: bool,
        /// This proxy's configured policy for the room (`[rooms]` and its override): a change
        /// whose result over it would set both `record` and `e2ee` is refused (`encrypted`).
        configured: RoomPolicy,
    },
    /// Start recording the room.
    StartRecording,
    /// Stop the room's recording.
    StopRecording,
}

impl Action {
    /// The audit / metrics label.
    pub fn name(&self) -> &'static str {
        match self {
            Action::EndRoom => "end_room",
            Action::Remove { ban_seconds: 0, .. } => "remove",
            Action::Remove { .. } => "ban",
            Action::Mute { .. } => "mute",
            Action::RequestUnmute { .. } => "request_unmute",
            Action::Update { .. } => "update_participant",
            Action::Unban { .. } => "unban",
            Action::Admit { .. } => "admit",
            Action::Deny { .. } => "deny",
            Action::SetPolicy { .. } => "set_policy",
            Action::StartRecording => "start_recording",
            Action::StopRecording => "stop_recording",
        }
    }

    fn target(&self) -> Option<&Identity> {
        match self {
            Action::EndRoom
            | Action::SetPolicy { .. }
            | Action::StartRecording
            | Action::StopRecording => None,
            Action::Admit { identity } | Action::Deny { identity } => Some(identity),
            Action::Remove { identity, .. }
            | Action::Mute { identity, .. }
            | Action::RequestUnmute { identity, .. }
            | Action::Update { identity, .. }
            | Action::Unban { identity } => Some(identity),
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Sessions affected (closed, muted, asked or updated).
    pub sessions: u32,
    /// The ban's expiry (Unix seconds), for a ban.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub banned_until: Option<i64>,
    /// The recording started or stopped (the API answers with it).
    #[serde(skip)]
    pub recording: Option<RecordingInfo>,
}

/// Longest ban accepted (one year, as rtcd enforces).
pub const MAX_BAN_SECONDS: u64 = 365 * 24 * 3600;

/// Carries out `action` on `room` for `actor` and writes its audit line. `allow_remote_unmute`
/// is `api.allow_remote_unmute`. Authorization (scopes, moderator role) is the caller's.
pub async fn perform(
    control: &dyn RoomControl,
    actor: &Actor,
    room: &RoomName,
    action: Action,
    allow_remote_unmute: bool,
) -> Result<Outcome, ControlError> {
    let name = action.name();
    let target = action.target().map(|i| i.as_str().to_owned());
    let result = run(control, actor, room, action, allow_remote_unmute).await;
    // docs/api.md "Audit": strings are `&str` fields (quoted in the text format, plain JSON
    // strings with `[logger] json`), counts are numbers; `sessions` only when it succeeded.
    // The participant acted on is `identity`, never `target`: the JSON format flattens the
    // event's fields next to its own `target` ("audit"), and one of the two would be lost.
    let (outcome, sessions) = match &result {
        Ok(o) => ("ok", Some(o.sessions)),
        Err(e) => (e.code(), None),
    };
    let recording_id = match &result {
        Ok(Outcome {
            recording: Some(r), ..
        }) => Some(r.recording_id.as_str()),
        _ => None,
    };
    tracing::info!(
        target: "audit",
        actor = actor.describe().as_str(),
        action = name,
        room = room.as_str(),
        identity = target.as_deref().unwrap_or(""),
        outcome,
        sessions,
        recording_id,
        "room action"
    );
    result
}

async fn run(
    control: &dyn RoomControl,
    actor: &Actor,
    room: &RoomName,
    action: Action,
    allow_remote_unmute: bool,
) -> Result<Outcome, ControlError> {
    let sessions = |n| Outcome {
        sessions: n,
        ..Outcome::default()
    };
    let recorded = |r: RecordingInfo| Outcome {
        recording: Some(r),
        ..Outcome::default()
    };
    match action {
        Action::EndRoom => control.end(room).await.map(sessions),
        Action::Remove {
            identity,
            ban_seconds,
            reason,
        } => {
            if ban_seconds > MAX_BAN_SECONDS {
                return Err(ControlError::Invalid(format!(
                    "ban_seconds is at most {MAX_BAN_SECONDS} (one year)"
                )));
            }
            if reason.len() > 256 {
                return Err(ControlError::Invalid("reason is at most 256 bytes".into()));
            }
            let (n, until) = control
                .remove(room, &identity, ban_seconds, &reason)
                .await?;
            Ok(Outcome {
                sessions: n,
                banned_until: until,
                recording: None,
            })
        }
        Action::Mute { identity, source } => control
            .mute(room, &identity, source, false)
            .await
            .map(sessions),
        Action::RequestUnmute { identity, source } => {
            if !allow_remote_unmute {
                return Err(ControlError::Forbidden(
                    "remote unmute requests are off on this proxy (api.allow_remote_unmute)".into(),
                ));
            }
            control
                .mute(room, &identity, source, true)
                .await
                .map(sessions)
        }
        Action::Update {
            identity,
            role,
            permissions,
        } => control
            .update(room, &identity, role, permissions)
            .await
            .map(sessions),
        Action::Unban { identity } => control.unban(room, &identity).await.map(|()| sessions(0)),
        Action::Admit { identity } => control.decide(room, &identity, true).await.map(sessions),
        Action::Deny { identity } => control.decide(room, &identity, false).await.map(sessions),
        Action::SetPolicy {
            change,
            reset,
            configured,
        } => {
            change.validate().map_err(ControlError::Invalid)?;
            // The media server checks the same over what it knows of the room (the policy of
            // its last join there); a room not yet opened there is only known here.
            if change.record.is_some() || change.e2ee.is_some() || reset {
                let stored = if reset {
                    RoomPolicy::default()
                } else {
                    control.policy(room).await?
                };
                if change.over(stored).over(configured).records_encrypted() {
                    return Err(ControlError::Recording(
                        RecordingRefusal::Encrypted,
                        "an end-to-end encrypted room cannot be recorded: not record with e2ee"
                            .into(),
                    ));
                }
            }
            control
                .set_policy(room, change, reset)
                .await
                .map(|_| sessions(0))
        }
        Action::StartRecording => control
            .start_recording(room, actor.requested_by())
            .await
            .map(recorded),
        Action::StopRecording => control
            .stop_recording(room, actor.requested_by())
            .await
            .map(recorded),
    }
}

/// Revokes tokens for the backend, with its audit line.
pub async fn revoke(
    control: &dyn RoomControl,
    actor: &Actor,
    revocation: &Revocation,
) -> Result<Outcome, ControlError> {
    let result = control.revoke(revocation).await;
    let (outcome, sessions) = match &result {
        Ok(n) => ("ok", Some(*n)),
        Err(e) => (e.code(), None),
    };
    tracing::info!(
        target: "audit",
        actor = actor.describe().as_str(),
        action = "revoke",
        identity = revocation.identity.as_deref().unwrap_or(""),
        token_id = revocation.token_id.as_deref().unwrap_or(""),
        outcome,
        sessions,
        "room action"
    );
    result.map(|n| Outcome {
        sessions: n,
        ..Outcome::default()
    })
}

/// Deletes a recording of `room` for the backend (every segment, on every media server that
/// holds one), with its audit line: `not_found` when no media server has it for this room.
/// Returns the bytes freed.
pub async fn delete_recording(
    control: &dyn RoomControl,
    actor: &Actor,
    room: &RoomName,
    recording_id: &str,
) -> Result<u64, ControlError> {
    let result = async {
        let segments = of_room(control.recording(recording_id).await?, room, recording_id)?;
        control.delete_recording(&segments).await
    }
    .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    tracing::info!(
        target: "audit",
        actor = actor.describe().as_str(),
        action = "delete_recording",
        room = room.as_str(),
        identity = "",
        outcome,
        recording_id,
        "room action"
    );
    result
}

/// The segments of a recording that belong to `room`: another room's recording (or one no
/// media server has) is `NotFound`, exactly alike, so IDs cannot be probed across rooms.
pub fn of_room(
    segments: Vec<RecordingInfo>,
    room: &RoomName,
    recording_id: &str,
) -> Result<Vec<RecordingInfo>, ControlError> {
    let mine: Vec<RecordingInfo> = segments
        .into_iter()
        .filter(|s| s.room == room.as_str())
        .collect();
    if mine.is_empty() {
        return Err(ControlError::NotFound(format!(
            "no recording {recording_id} of this room"
        )));
    }
    Ok(mine)
}

//! The SFU: calls, their sessions and the forwarding of every published track to the other
//! sessions of the same call.
//!
//! # Ownership and threading
//!
//! * [`Sfu`] is a cheap handle. Its registry (calls, sessions per tenant, limits, draining)
//!   sits behind one std mutex that is only held for map updates, never across an `.await`.
//! * The media itself lives in [`shard`]: a call is owned by one worker thread, which holds
//!   its sessions' peer connections (the [`crate::engine`] seam), down-tracks and
//!   retransmission buffers, and forwards packets with no lock shared with signaling. What a
//!   worker decides about its calls is [`room`], sans-IO: the worker only carries it out.
//! * Signaling talks to a session through [`SessionHandle`] / [`SessionEvent`] ([`session`]),
//!   the SFU's own types: nothing of the WebRTC library shows outside `engine`.
//!
//! Calls and sessions are keyed by the tenant (the authenticated client, opaque here), so two
//! tenants using the same IDs never meet. This module knows nothing of gRPC, proto or auth.

pub mod allocation;
pub mod downtrack;
pub mod events;
pub mod keyframes;
pub mod negotiation;
mod recording;
pub mod retransmit;
mod room;
pub mod session;
mod shard;
pub mod voice;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::media::packet::MediaKind;
use crate::media::sdp;
use crate::metrics::Metrics;
pub use recording::RecordingSetup;
pub use session::{
    Candidate, MAX_TRACK_VIEWS, SessionCommand, SessionEvent, SessionEvents, SessionHandle,
    TrackView,
};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Wraps a value already validated by the caller (or by [`JoinRequest::validate`]).
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            /// The raw string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// The tenant (an authenticated rtcd client); the namespace of every call and session.
    TenantId
);
id_type!(
    /// A call (room), unique within a tenant.
    CallId
);
id_type!(
    /// A session (one peer connection), unique within a call.
    SessionId
);
id_type!(
    /// An end user; informational (events name the user of a track).
    UserId
);

/// What a session publishes; decides permissions, metrics labels and event contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Microphone (Opus).
    Audio,
    /// Camera (VP8 / H.264).
    Video,
    /// Screen share (video).
    Screen,
    /// A screen share's sound (audio): muted and withdrawn on its own, never a microphone.
    ScreenAudio,
}

impl TrackKind {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
            TrackKind::Screen => "screen",
            TrackKind::ScreenAudio => "screen_audio",
        }
    }

    /// Whether it travels in an audio media section (else a video one).
    pub fn is_audio(self) -> bool {
        matches!(self, TrackKind::Audio | TrackKind::ScreenAudio)
    }
}

impl From<TrackKind> for MediaKind {
    /// Cameras and screen shares are video; microphones and screen audio are audio.
    fn from(kind: TrackKind) -> Self {
        match kind {
            TrackKind::Audio | TrackKind::ScreenAudio => MediaKind::Audio,
            TrackKind::Video | TrackKind::Screen => MediaKind::Video,
        }
    }
}

/// What a session may do; everything defaults to "no" (least privilege).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    /// May publish a microphone track.
    pub publish_audio: bool,
    /// May publish a camera track.
    pub publish_video: bool,
    /// May publish a screen-share track.
    pub publish_screen: bool,
    /// May receive the other sessions' tracks.
    pub subscribe: bool,
}

impl Permissions {
    /// Whether a track of this kind may be forwarded from this session.
    pub fn may_publish(&self, kind: TrackKind) -> bool {
        match kind {
            TrackKind::Audio => self.publish_audio,
            TrackKind::Video => self.publish_video,
            TrackKind::Screen | TrackKind::ScreenAudio => self.publish_screen,
        }
    }
}

/// A request to join a call.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Whose namespace.
    pub tenant: TenantId,
    /// The call to join (created if absent).
    pub call: CallId,
    /// The new session.
    pub session: SessionId,
    /// The end user.
    pub user: UserId,
    /// Shown to others; not interpreted.
    pub display_name: String,
    /// What the session may do.
    pub permissions: Permissions,
    /// The participant's role as the platform names it (not interpreted; listed and changed
    /// by room management).
    pub role: String,
    /// The token that admitted the session, for revocations.
    pub token: TokenMeta,
}

/// What rtcd keeps of the token that admitted a session (never the token itself): enough to
/// close the session when the token is revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenMeta {
    /// `iat` (Unix seconds); 0 when the token has none.
    pub issued_at: i64,
    /// `jti`, empty when the token has none.
    pub token_id: String,
}

impl TokenMeta {
    /// Whether an identity cut-off at `issued_before` revokes this token: it was issued
    /// before, or does not say when (a token without `iat` cannot prove it is newer).
    pub fn revoked_by(&self, issued_before: i64) -> bool {
        rtcd_kit::cluster::moderation::revoked_by(self.issued_at, issued_before)
    }
}

/// Longest call, session or user ID accepted.
pub const MAX_ID_BYTES: usize = 128;
/// Longest role accepted.
pub const MAX_ROLE_BYTES: usize = 32;

impl JoinRequest {
    /// Rejects empty or oversized IDs before anything is allocated for them.
    pub fn validate(&self) -> Result<(), SfuError> {
        for (what, value) in [
            ("call_id", self.call.as_str()),
            ("session_id", self.session.as_str()),
            ("user_id", self.user.as_str()),
        ] {
            if value.is_empty() || value.len() > MAX_ID_BYTES {
                return Err(SfuError::InvalidArgument(format!(
                    "{what} must be 1-{MAX_ID_BYTES} bytes"
                )));
            }
        }
        if self.display_name.len() > 256 {
            return Err(SfuError::InvalidArgument(
                "display_name must be at most 256 bytes".into(),
            ));
        }
        if self.role.len() > MAX_ROLE_BYTES {
            return Err(SfuError::InvalidArgument(format!(
                "role must be at most {MAX_ROLE_BYTES} bytes"
            )));
        }
        if self.token.token_id.len() > MAX_ID_BYTES {
            return Err(SfuError::InvalidArgument(format!(
                "token_id must be at most {MAX_ID_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

/// The `LimitReached` name of the host capacity: signaling types the refusal by it
/// (`JoinRefused` HOST_CAPACITY) and the proxy places the new room on another host.
pub const HOST_CAPACITY: &str = "host capacity for new rooms (rtc.max_sessions)";

/// Why an SFU operation failed. Signaling maps this to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// Bad input from the client (malformed SDP, bad IDs, oversized SDP, bad candidate).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A message that is valid but not now (answer without an offer, second join...).
    #[error("out of order: {0}")]
    OutOfOrder(String),
    /// No such call or session in the caller's namespace.
    #[error("no such session")]
    NotFound,
    /// The session ID is already in use in this call.
    #[error("session already exists in this call")]
    AlreadyExists,
    /// A limit (sessions per call or client, tracks per session) was reached.
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The daemon is draining: no new sessions.
    #[error("rtcd is shutting down; join another instance")]
    Draining,
    /// The session has ended; no more commands are taken.
    #[error("session closed")]
    Closed,
    /// A webrtc-rs failure that is not the client's fault.
    #[error("media engine error: {0}")]
    Media(String),
    /// A recording request that cannot be carried out now.
    #[error("{0}")]
    Recording(RecordingRefusal),
}

/// Why a recording request was refused (typed across gRPC as `RecordingRefusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordingRefusal {
    /// The room already records: one recording of a room at a time.
    #[error("the room is already being recorded")]
    AlreadyRecording,
    /// The room records nothing.
    #[error("the room is not being recorded")]
    NotRecording,
    /// Nobody is in the room on this host.
    #[error("nobody is in the room")]
    NoRoom,
    /// Recording is off on this host.
    #[error("recording is not enabled on this host")]
    Disabled,
    /// Less free space than the host's floor.
    #[error("not enough free disk space to record")]
    DiskFull,
    /// The room's media is end-to-end encrypted.
    #[error("the room is end-to-end encrypted: the server cannot read its media")]
    Encrypted,
    /// The recording is still being written.
    #[error("the recording is still being written; stop it first")]
    StillRecording,
}

impl SfuError {
    /// A short, fixed label for the errors-by-type metric.
    pub fn kind(&self) -> &'static str {
        match self {
            SfuError::InvalidArgument(_) => "invalid_argument",
            SfuError::OutOfOrder(_) => "out_of_order",
            SfuError::NotFound => "not_found",
            SfuError::AlreadyExists => "already_exists",
            SfuError::LimitReached(_) => "limit",
            SfuError::Draining => "draining",
            SfuError::Closed => "closed",
            SfuError::Media(_) => "media",
            SfuError::Recording(_) => "recording",
        }
    }
}

/// Checks a client offer before either engine applies it: its size, and that every kind the
/// client declared (by mid) names an audio or video section of the matching media. Returns the
/// offer's sections.
pub(crate) fn check_offer(
    sdp: &str,
    declared: &HashMap<String, TrackKind>,
    max_sdp_bytes: usize,
) -> Result<Vec<sdp::Section>, SfuError> {
    if sdp.len() > max_sdp_bytes {
        return Err(SfuError::InvalidArgument(format!(
            "SDP is {} bytes; the limit is {max_sdp_bytes}",
            sdp.len()
        )));
    }
    let sections = sdp::sections(sdp);
    for (mid, kind) in declared {
        let media = sections.iter().find(|s| &s.mid == mid).map(|s| s.media);
        let fits = match media {
            Some(sdp::Media::Audio) => kind.is_audio(),
            Some(sdp::Media::Video) => !kind.is_audio(),
            _ => false,
        };
        if !fits {
            return Err(SfuError::InvalidArgument(format!(
                "tracks: mid {mid:?} is not an {} section of the offer",
                if kind.is_audio() { "audio" } else { "video" }
            )));
        }
    }
    Ok(sections)
}

/// The SFU settings (from `[rtc]`; the SFU keeps its own struct so it does not depend on the
/// configuration file's layout).
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The single UDP socket's address (port 0 = ephemeral).
    pub udp_addr: std::net::SocketAddr,
    /// The ICE-TCP port on the same IP (0 = ephemeral), or none.
    pub ice_tcp_port: Option<u16>,
    /// NAT 1:1 IPs advertised instead of interface addresses.
    pub host_override: Vec<String>,
    /// Interfaces to gather on; empty = all.
    pub interfaces: Vec<String>,
    /// Advertise loopback candidates.
    pub include_loopback: bool,
    /// SO_RCVBUF / SO_SNDBUF of the shared socket (0 = kernel default).
    pub udp_buffer_bytes: usize,
    /// How long worker 0 lets a busy port fill after a read that drained it (zero: never).
    pub read_coalesce: std::time::Duration,
    /// Retransmission buffer per video down-track, in packets (rounded up to a power of two).
    pub nack_buffer_packets: usize,
    /// How long a packet stays in it.
    pub nack_buffer_age: std::time::Duration,
    /// Sessions per call.
    pub max_sessions_per_call: usize,
    /// Sessions per tenant.
    pub max_sessions_per_tenant: usize,
    /// Host capacity in sessions, above which no new call is opened (0 = none).
    pub max_sessions: usize,
    /// Published tracks per session.
    pub max_tracks_per_session: usize,
    /// Largest SDP accepted.
    pub max_sdp_bytes: usize,
    /// Minimum interval between keyframe requests to one track.
    pub keyframe_interval: Duration,
    /// Whether subscribers' bandwidth estimates drive their allocators
    /// ([`allocation`]); without, every subscriber gets the best layer sending.
    pub adaptive_video: bool,
    /// ICE silence before a connection counts as disconnected.
    pub ice_disconnected_timeout: Duration,
    /// Further silence before it counts as failed (the session then ends).
    pub ice_failed_timeout: Duration,
}

/// A session of a call as other sessions see it (the roster entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// The session.
    pub session: SessionId,
    /// Its user.
    pub user: UserId,
    /// Its display name.
    pub display_name: String,
    /// Its role now (as joined, or as last updated).
    pub role: String,
}

struct SessionEntry {
    close: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    /// Whose session (revocations name users).
    user: UserId,
    /// The token that admitted it (or its latest refresh).
    token: TokenMeta,
}

struct CallState {
    sessions: HashMap<SessionId, SessionEntry>,
    /// When its first session joined (Unix milliseconds).
    created_at_ms: i64,
}

/// One of a tenant's calls, as [`Sfu::list_rooms`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    /// The call.
    pub call: CallId,
    /// When its first session joined (Unix milliseconds).
    pub created_at_ms: i64,
    /// Sessions in it.
    pub participants: usize,
}

/// A call and who is in it, as [`Sfu::room`] shows it (from the worker that owns the call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomDetail {
    /// The call.
    pub call: CallId,
    /// When its first session joined (Unix milliseconds).
    pub created_at_ms: i64,
    /// Its sessions, by join time.
    pub participants: Vec<ParticipantDetail>,
}

/// One session of a call, for room management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantDetail {
    /// The session.
    pub session: SessionId,
    /// Its user.
    pub user: UserId,
    /// Its display name.
    pub display_name: String,
    /// Its role (as joined or last updated).
    pub role: String,
    /// Its permissions now.
    pub permissions: Permissions,
    /// When it joined (Unix milliseconds).
    pub joined_at_ms: i64,
    /// The tracks it publishes now.
    pub tracks: Vec<PublishedTrack>,
}

/// A track a session publishes, for room management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTrack {
    /// Its msid track id in subscribers' SDP.
    pub track_id: String,
    /// What it is.
    pub kind: TrackKind,
    /// Whether its packets are dropped (muted by the user or a moderator).
    pub muted: bool,
}

/// What a moderator does to a user's sessions in a call ([`Sfu::moderate`]); carried out by
/// the worker thread that owns the call, so it applies between two packets.
#[derive(Debug, Clone)]
pub enum Moderation {
    /// Close every session of the user: reason "removed", or "banned" with the ban's expiry
    /// (Unix seconds), announced as `ParticipantRemoved` before the usual leave.
    Remove {
        /// Whose sessions.
        user: UserId,
        /// The ban's expiry, if banned.
        banned_until: Option<i64>,
    },
    /// Mute the user's tracks of a kind (they may unmute themselves later).
    Mute {
        /// Whose tracks.
        user: UserId,
        /// Which kind.
        kind: TrackKind,
    },
    /// Ask the user to unmute a kind; changes nothing.
    RequestUnmute {
        /// Whom.
        user: UserId,
        /// Which kind.
        kind: TrackKind,
    },
    /// Replace the user's role and permissions; tracks no longer allowed stop at once.
    Update {
        /// Whose sessions.
        user: UserId,
        /// The new role.
        role: String,
        /// The new permissions.
        permissions: Permissions,
    },
    /// Close every session of the call with reason "room ended".
    End,
    /// Close every session of the call with reason "moved": the room lives on another host
    /// (it was opened on two at once), and its clients rejoin there.
    Move,
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Default)]
struct Registry {
    calls: HashMap<(TenantId, CallId), CallState>,
    per_tenant: HashMap<TenantId, usize>,
    sessions: usize,
}

pub(crate) struct SfuInner {
    /// The media threads (built once in [`Sfu::new`]).
    shards: shard::Shards,
    pub config: SfuConfig,
    pub metrics: Arc<Metrics>,
    registry: Mutex<Registry>,
    draining: AtomicBool,
    empty: watch::Sender<usize>,
    /// Recording, once enabled ([`Sfu::enable_recording`]).
    recording: recording::RecordingSlot,
    /// Where room events go (the workers have their own clones): `recording_ready` comes from
    /// a recording's writer thread.
    room_events: Option<events::RoomEventSink>,
}

/// The SFU handle: join sessions, close them, drain. Clone it freely.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<SfuInner>,
}

impl Sfu {
    /// Binds the shared ICE UDP socket (and the ICE-TCP port) and starts the media threads.
    /// Room events (for webhooks) go to `room_events` when given.
    pub async fn new(
        config: SfuConfig,
        metrics: Arc<Metrics>,
        room_events: Option<events::RoomEventSink>,
    ) -> Result<Self, SfuError> {
        let shards = shard::Shards::start(&config, metrics.clone(), room_events.clone()).await?;
        Ok(Self {
            inner: Arc::new(SfuInner {
                shards,
                config,
                metrics,
                registry: Mutex::default(),
                draining: AtomicBool::new(false),
                empty: watch::channel(0).0,
                recording: Default::default(),
                room_events,
            }),
        })
    }

    /// The local address of the shared ICE UDP socket.
    pub fn udp_addr(&self) -> std::net::SocketAddr {
        self.inner.shards.local_addr()
    }

    /// The ICE-TCP port's address, if it listens (`rtc.ice_port_tcp`).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.shards.tcp_addr()
    }

    /// Creates the session (and the call if needed) and starts its actor. The receiver yields the
    /// session's events and ends after [`SessionEvent::Closed`].
    pub async fn join(&self, req: JoinRequest) -> Result<(SessionHandle, SessionEvents), SfuError> {
        req.validate()?;
        let close = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let created_at_ms;
        {
            let mut reg = self.registry();
            if self.inner.draining.load(Ordering::Acquire) {
                return Err(SfuError::Draining);
            }
            let tenant_count = reg.per_tenant.get(&req.tenant).copied().unwrap_or(0);
            if tenant_count >= self.inner.config.max_sessions_per_tenant {
                return Err(SfuError::LimitReached("sessions per client"));
            }
            let key = (req.tenant.clone(), req.call.clone());
            let new_call = !reg.calls.contains_key(&key);
            let capacity = self.inner.config.max_sessions;
            if new_call && capacity > 0 && reg.sessions >= capacity {
                self.inner.metrics.new_rooms_refused.inc();
                return Err(SfuError::LimitReached(HOST_CAPACITY));
            }
            let call = reg.calls.entry(key).or_insert_with(|| CallState {
                sessions: HashMap::new(),
                created_at_ms: unix_ms(),
            });
            created_at_ms = call.created_at_ms;
            if call.sessions.contains_key(&req.session) {
                return Err(SfuError::AlreadyExists);
            }
            if call.sessions.len() >= self.inner.config.max_sessions_per_call {
                return Err(SfuError::LimitReached("sessions per call"));
            }
            call.sessions.insert(
                req.session.clone(),
                SessionEntry {
                    close: close.clone(),
                    reason: reason.clone(),
                    user: req.user.clone(),
                    token: req.token.clone(),
                },
            );
            *reg.per_tenant.entry(req.tenant.clone()).or_default() += 1;
            reg.sessions += 1;
            let n = reg.sessions;
            drop(reg);
            self.inner.empty.send_replace(n);
            if new_call {
                self.inner
                    .metrics
                    .sfu
                    .calls
                    .get_or_create(&tenant_label(&req.tenant))
                    .inc();
            }
        }
        let started = self
            .inner
            .shards
            .join(
                self.inner.clone(),
                req.clone(),
                created_at_ms,
                close,
                reason,
            )
            .await;
        match started {
            Ok(pair) => Ok(pair),
            Err(e) => {
                self.inner
                    .remove_session(&req.tenant, &req.call, &req.session);
                Err(e)
            }
        }
    }

    /// Closes one of the tenant's sessions with `reason`. `NotFound` if the tenant has no such
    /// session, whoever else does.
    pub fn close(
        &self,
        tenant: &TenantId,
        call: &CallId,
        session: &SessionId,
        reason: &str,
    ) -> Result<(), SfuError> {
        let reg = self.registry();
        let entry = reg
            .calls
            .get(&(tenant.clone(), call.clone()))
            .and_then(|c| c.sessions.get(session))
            .ok_or(SfuError::NotFound)?;
        close_entry(entry, reason);
        Ok(())
    }

    /// Records a refreshed token for a live session (later revocations are judged on it).
    pub fn update_token(
        &self,
        tenant: &TenantId,
        call: &CallId,
        session: &SessionId,
        token: TokenMeta,
    ) -> Result<(), SfuError> {
        let mut reg = self.registry();
        let entry = reg
            .calls
            .get_mut(&(tenant.clone(), call.clone()))
            .and_then(|c| c.sessions.get_mut(session))
            .ok_or(SfuError::NotFound)?;
        entry.token = token;
        Ok(())
    }

    /// Closes, with reason "revoked", every session of the tenant admitted by a revoked token:
    /// `user`'s sessions whose token was issued before the cut-off (or is undated), and every
    /// session whose token has ID `token_id` (when not empty). Returns how many.
    pub fn revoke(
        &self,
        tenant: &TenantId,
        cutoff: Option<(&UserId, i64)>,
        token_id: &str,
    ) -> usize {
        let reg = self.registry();
        let mut closed = 0;
        for ((t, _), call) in &reg.calls {
            if t != tenant {
                continue;
            }
            for entry in call.sessions.values() {
                let by_cutoff = cutoff.is_some_and(|(user, issued_before)| {
                    &entry.user == user && entry.token.revoked_by(issued_before)
                });
                let by_id = !token_id.is_empty() && entry.token.token_id == token_id;
                if (by_cutoff || by_id) && !entry.close.is_cancelled() {
                    close_entry(entry, "revoked");
                    closed += 1;
                }
            }
        }
        closed
    }

    /// The tenant's calls on this host, sorted by call ID.
    pub fn list_rooms(&self, tenant: &TenantId) -> Vec<RoomSummary> {
        let reg = self.registry();
        let mut rooms: Vec<RoomSummary> = reg
            .calls
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, call), state)| RoomSummary {
                call: call.clone(),
                created_at_ms: state.created_at_ms,
                participants: state.sessions.len(),
            })
            .collect();
        rooms.sort_by(|a, b| a.call.cmp(&b.call));
        rooms
    }

    /// One of the tenant's calls with its sessions and their tracks, as the worker that owns
    /// it sees them now. `NotFound` if the tenant has no such call.
    pub async fn room(&self, tenant: &TenantId, call: &CallId) -> Result<RoomDetail, SfuError> {
        self.inner.shards.describe(tenant, call).await
    }

    /// Carries out a moderator's action on one of the tenant's calls; returns the number of
    /// sessions it applied to. `NotFound` if the tenant has no such call, or (for the actions
    /// naming a user) the user has no session in it.
    pub async fn moderate(
        &self,
        tenant: &TenantId,
        call: &CallId,
        action: Moderation,
    ) -> Result<usize, SfuError> {
        self.inner.shards.moderate(tenant, call, action).await
    }

    /// Refuses new joins from now on; existing sessions continue.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether new joins are refused ([`Sfu::start_draining`]).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The share of this host's capacity in use (sessions / `max_sessions`), 0.0 without a
    /// capacity; may exceed 1.0 (rooms already here keep growing).
    pub fn capacity_used(&self) -> f64 {
        match self.inner.config.max_sessions {
            0 => 0.0,
            cap => self.registry().sessions as f64 / cap as f64,
        }
    }

    /// RTP packets forwarded to subscribers since start (for the host's load).
    pub fn forwarded_packets(&self) -> u64 {
        self.inner.shards.forwarded_packets()
    }

    /// Whether the tenant has this call here (one registry lookup, no worker round trip).
    pub fn has_call(&self, tenant: &TenantId, call: &CallId) -> bool {
        self.registry()
            .calls
            .contains_key(&(tenant.clone(), call.clone()))
    }

    /// Sessions alive right now.
    pub fn session_count(&self) -> usize {
        self.registry().sessions
    }

    /// Calls alive right now.
    pub fn call_count(&self) -> usize {
        self.registry().calls.len()
    }

    /// Waits until no session is left, or `timeout`; then closes whatever remains with `reason`
    /// and waits (bounded) for those sessions to finish their cleanup.
    pub async fn drain(&self, timeout: Duration, reason: &str) {
        self.start_draining();
        let mut rx = self.inner.empty.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        {
            let reg = self.registry();
            for call in reg.calls.values() {
                for entry in call.sessions.values() {
                    close_entry(entry, reason);
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|n| *n == 0)).await;
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.registry()
    }
}

fn close_entry(entry: &SessionEntry, reason: &str) {
    let mut slot = entry.reason.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some(reason.to_owned());
    }
    entry.close.cancel();
}

pub(crate) fn tenant_label(tenant: &TenantId) -> crate::metrics::ClientLabels {
    crate::metrics::ClientLabels {
        client_id: tenant.as_str().to_owned(),
    }
}

impl SfuInner {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock would be a bug in a few lines of map code; the maps
        // stay consistent, so keep serving rather than poisoning every later join.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called once by each session when it ends (and by `join` if the session never started).
    pub(crate) fn remove_session(&self, tenant: &TenantId, call: &CallId, session: &SessionId) {
        let mut reg = self.registry();
        let key = (tenant.clone(), call.clone());
        let mut removed = false;
        let mut call_gone = false;
        if let Some(state) = reg.calls.get_mut(&key) {
            removed = state.sessions.remove(session).is_some();
            if state.sessions.is_empty() {
                reg.calls.remove(&key);
                call_gone = true;
            }
        }
        if removed {
            reg.sessions -= 1;
            if let Some(n) = reg.per_tenant.get_mut(tenant) {
                *n -= 1;
                if *n == 0 {
                    reg.per_tenant.remove(tenant);
                }
            }
        }
        let n = reg.sessions;
        drop(reg);
        if call_gone {
            self.metrics
                .sfu
                .calls
                .get_or_create(&tenant_label(tenant))
                .dec();
        }
        self.empty.send_replace(n);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Room management and room events through the real media threads (no media: sessions
    //! that never offer are enough to join, be moderated and leave).

    use super::events::{RoomEvent, RoomEventKind, RoomEventSink};
    use super::*;

    pub(crate) fn config() -> SfuConfig {
        SfuConfig {
            udp_addr: "127.0.0.1:0".parse().expect("literal address"),
            ice_tcp_port: None,
            host_override: Vec::new(),
            interfaces: Vec::new(),
            include_loopback: true,
            udp_buffer_bytes: 0,
            read_coalesce: Duration::ZERO,
            nack_buffer_packets: 64,
            nack_buffer_age: crate::sfu::retransmit::MAX_AGE,
            max_sessions_per_call: 8,
            max_sessions_per_tenant: 8,
            max_sessions: 0,
            max_tracks_per_session: 4,
            max_sdp_bytes: 64 * 1024,
            keyframe_interval: Duration::from_secs(1),
            adaptive_video: true,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(5),
        }
    }

    pub(crate) fn join(session: &str, issued_at: i64) -> JoinRequest {
        JoinRequest {
            tenant: TenantId::new("t"),
            call: CallId::new("c"),
            session: SessionId::new(session),
            user: UserId::new(format!("user-{session}")),
            display_name: session.into(),
            permissions: Permissions {
                subscribe: true,
                ..Permissions::default()
            },
            role: "member".into(),
            token: TokenMeta {
                issued_at,
                token_id: format!("jti-{session}"),
            },
        }
    }

    #[tokio::test]
    async fn at_capacity_new_calls_are_refused_and_existing_ones_still_grow() {
        let metrics = Metrics::new();
        let sfu = Sfu::new(
            SfuConfig {
                max_sessions: 2,
                ..config()
            },
            metrics.clone(),
            None,
        )
        .await
        .expect("the SFU starts on loopback");
        let (_a, _) = sfu.join(join("a", 1)).await.expect("a opens call c");
        assert_eq!(sfu.capacity_used(), 0.5);
        let (_b, _) = sfu.join(join("b", 1)).await.expect("b joins call c");
        let other = JoinRequest {
            call: CallId::new("other"),
            ..join("x", 1)
        };
        match sfu.join(other).await {
            Err(SfuError::LimitReached(what)) => assert_eq!(what, HOST_CAPACITY),
            other => panic!("a new call opened at capacity: {:?}", other.map(|_| ())),
        }
        assert_eq!(metrics.new_rooms_refused.get(), 1);
        let (_c, _) = sfu
            .join(join("c", 1))
            .await
            .expect("the existing call still takes joins");
        assert_eq!(sfu.capacity_used(), 1.5);
    }

    /// The session's events until it closes (bounded wait), and the close reason.
    async fn until_closed(rx: &mut SessionEvents) -> (Vec<SessionEvent>, String) {
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the session closes")
                .expect("Closed comes before the end of the stream");
            if let SessionEvent::Closed { reason } = event {
                return (seen, reason);
            }
            seen.push(event);
        }
    }

    fn drain(rx: &mut SessionEvents) -> Vec<SessionEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn moderation_applies_to_the_users_sessions_and_room_events_come_in_order() {
        let (tx, mut room_events) = tokio::sync::mpsc::channel::<RoomEvent>(64);
        let sink = RoomEventSink::new(tx, Default::default());
        let sfu = Sfu::new(config(), Metrics::new(), Some(sink))
            .await
            .expect("the SFU starts on loopback");
        let (t, c) = (TenantId::new("t"), CallId::new("c"));
        let (_a, mut a) = sfu.join(join("a", 100)).await.expect("a joins");
        let (_b, mut b) = sfu.join(join("b", 100)).await.expect("b joins");
        let (_c, mut cc) = sfu.join(join("c", 100)).await.expect("c joins");
        let rooms = sfu.list_rooms(&t);
        assert_eq!(rooms.len(), 1);
        assert_eq!((rooms[0].call.as_str(), rooms[0].participants), ("c", 3));
        assert!(sfu.list_rooms(&TenantId::new("other")).is_empty());
        assert!(matches!(
            sfu.room(&TenantId::new("other"), &c).await,
            Err(SfuError::NotFound)
        ));

        // Moderator mute: the target is told, the others see the usual mute change.
        let user_b = UserId::new("user-b");
        let mute = Moderation::Mute {
            user: user_b.clone(),
            kind: TrackKind::Audio,
        };
        assert_eq!(sfu.moderate(&t, &c, mute).await.expect("mute"), 1);
        let ask = Moderation::RequestUnmute {
            user: user_b.clone(),
            kind: TrackKind::Audio,
        };
        assert_eq!(sfu.moderate(&t, &c, ask).await.expect("ask"), 1);
        let update = Moderation::Update {
            user: user_b.clone(),
            role: "guest".into(),
            permissions: Permissions::default(),
        };
        assert_eq!(sfu.moderate(&t, &c, update).await.expect("update"), 1);
        let nobody = Moderation::Mute {
            user: UserId::new("nobody"),
            kind: TrackKind::Audio,
        };
        assert!(matches!(
            sfu.moderate(&t, &c, nobody).await,
            Err(SfuError::NotFound)
        ));
        let room = sfu.room(&t, &c).await.expect("the room");
        let b_detail = room
            .participants
            .iter()
            .find(|p| p.session.as_str() == "b")
            .expect("b is listed");
        assert_eq!(b_detail.role, "guest");
        assert_eq!(b_detail.permissions, Permissions::default());
        assert_eq!(
            room.participants
                .iter()
                .map(|p| p.session.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"],
            "by join time"
        );
        let b_saw = drain(&mut b);
        assert!(b_saw.iter().any(|e| matches!(
            e,
            SessionEvent::MutedByModerator {
                kind: TrackKind::Audio
            }
        )));
        assert!(b_saw.iter().any(|e| matches!(
            e,
            SessionEvent::UnmuteRequested {
                kind: TrackKind::Audio
            }
        )));
        assert!(b_saw.iter().any(
            |e| matches!(e, SessionEvent::PermissionsChanged { role, .. } if role == "guest")
        ));
        assert!(drain(&mut a).iter().any(|e| matches!(
            e,
            SessionEvent::MuteChanged { session, muted: true, .. } if session.as_str() == "b"
        )));

        // Revocation by cut-off: c's token is older.
        assert_eq!(sfu.revoke(&t, Some((&UserId::new("user-c"), 200)), ""), 1);
        assert_eq!(until_closed(&mut cc).await.1, "revoked");
        assert_eq!(sfu.revoke(&t, Some((&UserId::new("user-a"), 50)), ""), 0);

        // Removal with a ban, then the end of the room.
        let remove = Moderation::Remove {
            user: user_b,
            banned_until: Some(99),
        };
        assert_eq!(sfu.moderate(&t, &c, remove).await.expect("remove"), 1);
        assert_eq!(until_closed(&mut b).await.1, "banned");
        assert_eq!(sfu.moderate(&t, &c, Moderation::End).await.expect("end"), 1);
        assert_eq!(until_closed(&mut a).await.1, "room ended");
        assert!(matches!(
            sfu.moderate(&t, &c, Moderation::End).await,
            Err(SfuError::NotFound)
        ));

        let mut events = Vec::new();
        while let Ok(e) = room_events.try_recv() {
            events.push(e);
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        assert!(
            events
                .iter()
                .all(|e| e.room_instance == events[0].room_instance
                    && e.tenant == t
                    && e.call == c)
        );
        let shape: Vec<String> = events
            .iter()
            .map(|e| match &e.kind {
                RoomEventKind::RoomStarted => "started".to_owned(),
                RoomEventKind::RoomFinished => "finished".to_owned(),
                RoomEventKind::ParticipantJoined(p) => format!("joined {}", p.session),
                RoomEventKind::ParticipantLeft {
                    participant,
                    reason,
                } => format!("left {} {reason}", participant.session),
                RoomEventKind::ParticipantRemoved {
                    participant,
                    banned_until,
                } => format!("removed {} {banned_until:?}", participant.session),
                RoomEventKind::TrackPublished { track_id, .. } => format!("published {track_id}"),
                RoomEventKind::TrackUnpublished { track_id, .. } => {
                    format!("unpublished {track_id}")
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "started",
                "joined a",
                "joined b",
                "joined c",
                "left c revoked",
                "removed b Some(99)",
                "left b banned",
                "left a room ended",
                "finished",
            ]
        );
        assert_eq!(sfu.session_count(), 0);
        assert_eq!(sfu.call_count(), 0);
    }
}

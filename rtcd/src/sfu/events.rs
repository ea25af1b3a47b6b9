//! What happens to a room, as the platform hears of it (webhooks): [`RoomEvent`].
//!
//! The worker thread that owns a call emits its events, so one room's events leave in the
//! order they happened and carry a per-room sequence number from one counter. They go into a
//! bounded queue without waiting ([`RoomEventSink::emit`]): a full queue drops the event and
//! counts it (the receiver sees the gap in `seq`); media and signaling never wait on delivery.
//! This module knows nothing of HTTP or signing; `crate::webhook` consumes the queue.

use tokio::sync::mpsc;

use super::{CallId, SessionId, TenantId, TrackKind, UserId};

/// A session as room events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventParticipant {
    /// The session.
    pub session: SessionId,
    /// Its user.
    pub user: UserId,
    /// Its display name.
    pub display_name: String,
    /// Its role (as joined, or as last updated).
    pub role: String,
}

/// Which event.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEventKind {
    /// The first session joined (always `seq` 1 of a room instance).
    RoomStarted,
    /// The last session left; nothing follows for this room instance.
    RoomFinished,
    /// A session joined.
    ParticipantJoined(EventParticipant),
    /// A session left, for `reason` (as in `SessionClosed`: "leave", "removed", "banned"...).
    ParticipantLeft {
        /// Who.
        participant: EventParticipant,
        /// Why.
        reason: String,
    },
    /// A session was removed by the platform or a moderator (sent before its
    /// `ParticipantLeft`).
    ParticipantRemoved {
        /// Who.
        participant: EventParticipant,
        /// The ban's expiry (Unix seconds), if banned.
        banned_until: Option<i64>,
    },
    /// A session published a track.
    TrackPublished {
        /// Who.
        participant: EventParticipant,
        /// Its msid track id.
        track_id: String,
        /// What it is.
        kind: TrackKind,
    },
    /// A published track was withdrawn (unpublished, not allowed any more, or its session left).
    TrackUnpublished {
        /// Who.
        participant: EventParticipant,
        /// Its msid track id.
        track_id: String,
        /// What it is.
        kind: TrackKind,
    },
    /// The room started recording.
    RecordingStarted {
        /// The recording.
        recording_id: String,
        /// Who started it.
        started_by: String,
    },
    /// The room's recording stopped (its files are being completed: `RecordingReady` follows).
    RecordingStopped {
        /// The recording.
        recording_id: String,
        /// Why.
        reason: rtcd_recording::manifest::StopReason,
    },
    /// A recording's files are complete: what the platform copies. Emitted by the recording's
    /// writer, possibly after `RoomFinished`: outside the room's sequence (`seq` 0).
    RecordingReady {
        /// The final manifest.
        manifest: Box<rtcd_recording::manifest::Manifest>,
        /// The recording's size on disk, manifest included.
        bytes: u64,
    },
}

/// One event of one room.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomEvent {
    /// Whose room.
    pub tenant: TenantId,
    /// Which room.
    pub call: CallId,
    /// This instance of the room (a room that ends and starts again is a new instance, and its
    /// `seq` starts at 1 again): unique per rtcd process and room start.
    pub room_instance: String,
    /// 1, 2, 3... within the room instance, in the order the events happened.
    pub seq: u64,
    /// When it happened (Unix milliseconds).
    pub at_ms: i64,
    /// What happened.
    pub kind: RoomEventKind,
}

/// Where room events go: a bounded queue that never blocks the emitter.
#[derive(Debug, Clone)]
pub struct RoomEventSink {
    tx: mpsc::Sender<RoomEvent>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl RoomEventSink {
    /// A sink over `tx`; events that find it full are counted on `dropped` and lost.
    pub fn new(
        tx: mpsc::Sender<RoomEvent>,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self { tx, dropped }
    }

    /// Queues an event, or drops and counts it if the queue is full (or its consumer is gone).
    pub fn emit(&self, event: RoomEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }
}

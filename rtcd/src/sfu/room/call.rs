//! A call and the tracks published in it.

use std::collections::HashMap;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::{CallKey, SessionKey};
use crate::engine::peer::{Codec, HeaderExtension, TrackKey};
use crate::sfu::negotiation::TrackId;
use crate::sfu::retransmit::RetransmitBuffer;
use crate::sfu::session::TrackInfo;
use crate::sfu::voice::VoiceDetector;
use crate::sfu::{CallId, TenantId};

/// Counters a published track updates per packet, resolved once.
pub(super) struct TrackCounters {
    pub forwarded: Counter,
    pub bytes: Counter,
    pub muted: Counter,
}

/// A track a session publishes, as its call sees it.
pub(super) struct Published {
    pub owner: SessionKey,
    pub key: TrackKey,
    pub info: TrackInfo,
    pub ssrc: u32,
    /// The simulcast layer (rid) that opened it, `None` without simulcast. Until the room
    /// forwards layers, a simulcast track is forwarded as that one layer (`ssrc`); the other
    /// layers' packets are dropped before the buffer (their sequence spaces are unrelated).
    pub rid: Option<String>,
    pub codecs: Vec<Codec>,
    pub extensions: Vec<HeaderExtension>,
    pub muted: bool,
    /// Video only: the packets subscribers may NACK, each stored once.
    pub buffer: Option<RetransmitBuffer>,
    /// (session, slot index) of every session that receives it.
    pub subscribers: Vec<(SessionKey, usize)>,
    pub vad: Option<(u8, VoiceDetector)>,
    pub last_pli: Option<Instant>,
    pub counters: TrackCounters,
}

/// One call: its sessions in join order and its published tracks.
pub(super) struct Call {
    /// Whose call and which: the key of `Rooms::call_ids`.
    pub names: (TenantId, CallId),
    pub members: Vec<SessionKey>,
    pub tracks: HashMap<TrackId, Published>,
    /// When its first session joined (Unix milliseconds).
    pub created_at_ms: i64,
    /// This instance of the room, for room events (unique per process and room start).
    pub instance: String,
    /// The last room event's sequence number.
    pub seq: u64,
    /// Whether room events go anywhere.
    pub events: bool,
}

impl Call {
    pub(super) fn new(
        names: (TenantId, CallId),
        created_at_ms: i64,
        worker: usize,
        key: CallKey,
        events: bool,
    ) -> Self {
        Self {
            instance: format!("{created_at_ms:x}-{worker:x}-{key:x}"),
            created_at_ms,
            seq: 0,
            events,
            names,
            members: Vec::new(),
            tracks: HashMap::new(),
        }
    }
}

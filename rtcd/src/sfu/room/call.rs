//! A call and the tracks published in it.

use rustc_hash::FxHashMap;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::{CallKey, SessionKey};
use crate::engine::peer::{Codec, HeaderExtension, TrackKey};
use crate::sfu::allocation::RateMeter;
use crate::sfu::keyframes::KeyframeGate;
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
    /// RTX copies of this track sent to probe subscribers' links.
    pub probe_packets: Counter,
}

/// A layer of a published track: the one stream of a track without simulcast, or one
/// simulcast layer (rid) with its own SSRC and sequence space.
pub(super) struct Layer {
    /// Its rid; `None` for the single layer of a track without simulcast.
    pub rid: Option<String>,
    /// Its SSRC (0 while the layer has not arrived yet).
    pub ssrc: u32,
    /// Video only: the packets subscribers may NACK, each stored once.
    pub buffer: Option<RetransmitBuffer>,
    /// Video only: when to ask the publisher for its keyframe (bounded, see the module).
    pub keyframes: KeyframeGate,
    /// When its latest packet arrived (a layer silent for [`LAYER_SILENCE`] has stopped).
    pub last_packet: Option<Instant>,
    /// What it sends (what a subscriber's link needs for it).
    pub rate: RateMeter,
    /// Whether the publisher was last told to send it (dynacast: every layer is, at first).
    pub wanted: bool,
    /// Since when no subscriber needs it, while the publisher still sends it: it is told to stop
    /// [`DYNACAST_HOLD`] later (on one of the layer's own packets).
    pub unwanted_since: Option<Instant>,
    /// Its picture size (width, height), as its latest keyframe announced it (VP8; `None`
    /// where the codec's size is not read): what adaptive stream compares a subscriber's view
    /// with.
    pub size: Option<(u16, u16)>,
}

/// How long a layer nobody needs keeps being sent before its publisher is told to stop
/// encoding it: allocations move for a moment (a subscriber's estimate dips, a tile is resized),
/// and restarting a layer costs a keyframe.
pub(super) const DYNACAST_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// A simulcast layer silent this long has stopped (the publisher paused it or lost its
/// uplink): its subscribers move to another layer at once.
pub(super) const LAYER_SILENCE: std::time::Duration = std::time::Duration::from_secs(1);

impl Layer {
    /// Whether it sends now.
    pub fn active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_SILENCE)
    }
}

/// A track a session publishes, as its call sees it.
pub(super) struct Published {
    pub owner: SessionKey,
    pub key: TrackKey,
    pub info: TrackInfo,
    pub ssrc: u32,
    /// Its layers, lowest quality first: one without simulcast (whatever SSRC it sends
    /// with), else one per rid of the section. Each subscriber's down-track forwards one.
    pub layers: Vec<Layer>,
    pub codecs: Vec<Codec>,
    pub extensions: Vec<HeaderExtension>,
    pub muted: bool,
    /// (session, slot index) of every session that receives it.
    pub subscribers: Vec<(SessionKey, usize)>,
    pub vad: Option<(u8, VoiceDetector)>,
    pub counters: TrackCounters,
    /// Whether it is written to the call's recording.
    pub recorded: super::recording::Recorded,
}

impl Published {
    /// Whether it has simulcast layers (rids).
    pub fn simulcast(&self) -> bool {
        self.layers.first().is_some_and(|l| l.rid.is_some())
    }

    /// The index of the layer a packet of `ssrc` belongs to: without simulcast, the one
    /// layer whatever the SSRC (a source restarting keeps its buffer, as before layers).
    pub fn layer_of(&self, ssrc: u32) -> Option<usize> {
        if self.simulcast() {
            self.layers.iter().position(|l| l.ssrc == ssrc && ssrc != 0)
        } else {
            (!self.layers.is_empty()).then_some(0)
        }
    }

    /// The SSRC of its top layer (what a recording writes); 0 while that layer has not
    /// arrived.
    pub fn top_ssrc(&self) -> u32 {
        self.layers.last().map_or(self.ssrc, |l| l.ssrc)
    }

    /// The SSRC a new subscriber starts on: the highest layer sending now, else the highest
    /// known, else the SSRC that opened the track.
    pub fn start_ssrc(&self, now: Instant) -> u32 {
        if !self.simulcast() {
            return self.ssrc;
        }
        let known = self.layers.iter().rev().filter(|l| l.ssrc != 0);
        known
            .clone()
            .find(|l| l.active(now))
            .or(known.clone().next())
            .map_or(self.ssrc, |l| l.ssrc)
    }
}

/// One call: its sessions in join order and its published tracks.
pub(super) struct Call {
    /// Whose call and which: the key of `Rooms::call_ids`.
    pub names: (TenantId, CallId),
    pub members: Vec<SessionKey>,
    /// The call's published tracks, keyed by our own counter (a fast hash, looked up per
    /// packet; no client picks the keys).
    pub tracks: FxHashMap<TrackId, Published>,
    /// When its first session joined (Unix milliseconds).
    pub created_at_ms: i64,
    /// This instance of the room, for room events (unique per process and room start).
    pub instance: String,
    /// The last room event's sequence number.
    pub seq: u64,
    /// Whether room events go anywhere.
    pub events: bool,
    /// Its recording, while it records.
    pub recording: Option<super::recording::CallRecording>,
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
            tracks: FxHashMap::default(),
            recording: None,
        }
    }
}

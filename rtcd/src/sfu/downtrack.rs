//! The down-track: what one subscriber receives of one track, rewritten so that it looks like
//! one continuous stream of the subscriber's own, whatever the SFU drops and whichever source
//! feeds it.
//!
//! The engine calls [`DownTrack::forward`] for every packet of the track (of every layer, for
//! a simulcast track) and sends the copies it is told to send, each with the payload
//! [`RtpHeaderOut::payload`] gives; it calls [`DownTrack::on_nack`] (or
//! [`DownTrack::on_nack_layers`], with one retransmission buffer per layer) for the
//! subscriber's NACKs, [`DownTrack::poll_keyframe_request`] to learn which source SSRC to send
//! a PLI and when, and reads [`DownTrack::sender_stats`] for sender reports. Pure state, no IO,
//! no clock of its own: time is always passed in.
//!
//! # Layers
//!
//! A simulcast track arrives as up to three layers, each a source SSRC with its own sequence,
//! timestamp and (VP8) picture numbering. A down-track forwards one of them, the current
//! source. [`DownTrack::set_target_layer`] names another: the current layer keeps flowing
//! (no freeze) while the target's keyframe is asked for, and the first packet of that
//! keyframe is the switch point. From it on the subscriber gets the new layer on the same
//! SSRC, its sequence numbers following on without a gap, its timestamps one frame interval
//! (or the wall-clock time, if longer) after the last, and its VP8 picture ID, TL0PICIDX and
//! KEYIDX continuing the previous layer's ([`crate::media::vp8`]): to the subscriber's decoder,
//! one stream whose resolution changed at a keyframe. [`DownTrack::switch_source`] remains the
//! hard switch (another publisher's track on a reused slot): it drops the current source at
//! once and passes the new source's VP8 numbers through unchanged, as it always did.
//!
//! Codecs: VP8 is renumbered as above (the payload is copied only for a subscriber whose
//! down-track changed layer; everyone else shares the received `Bytes`). H.264 needs nothing in
//! its payload. VP9 and AV1 work as a single layer; switching between their simulcast layers
//! keeps sequence numbers and timestamps continuous, but VP9's picture ID / TL0PICIDX and AV1's
//! dependency descriptor are not renumbered yet.
//!
//! # Sequence numbers
//!
//! Output = source + offset (in extended, unwrapped sequence space). The offset is chosen when
//! the stream (re)starts (first packet, keyframe after a switch of source or a resume) so the
//! output continues at the last output + 1. A packet the SFU drops in order (padding, an
//! unmapped payload type) lowers the offset by one, so the subscriber sees no gap it would
//! NACK, while a packet lost upstream still shows as a gap (the publisher's retransmission
//! fills it later). Each such run of drops is remembered, so that a late packet is mapped with
//! the offset in force at its own position, not renumbered in arrival order.
//!
//! # Timestamps
//!
//! Output = source + offset, the offset chosen only when the source changes: the new source
//! continues from the last output timestamp plus the wall-clock time since it was sent, in the
//! track's clock rate (what `rebase` does by heuristics for the current engine). A pause and
//! resume of the same source keeps the offset, since the source's own clock kept running.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::retransmit::{
    CapacityError, EXTENDED_BASE, RetransmitBuffer, check_capacity, unwrap_seq,
};
use crate::media::packet::{MediaKind, MediaPacket, RtpHeaderOut};
use crate::media::vp8::{Vp8Continuity, Vp8Rewrite};

/// Sent-packet history of a video down-track (output seq → source seq), for NACKs.
pub const DEFAULT_VIDEO_HISTORY: usize = 512;
/// Sent-packet history of an audio down-track (Opus is rarely NACKed).
pub const DEFAULT_AUDIO_HISTORY: usize = 64;
/// The same packet is resent at most once per this interval (a round-trip guess) until
/// [`DownTrack::set_rtt`] gives a measured one.
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// While a down-track waits for a keyframe, it asks again this often (a PLI may be lost).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// How long a hole in the output (a source packet lost before the SFU) waits for the publisher's
/// retransmission before the down-track closes it with padding. rtcd NACKs the publisher at once
/// and its retransmission normally arrives within a round trip; past this it will not come (the
/// publisher left, restarted its stream, or forgot its history). A receiver that only NACKs
/// (aiortc, and any stack whose jitter buffer waits for every sequence number) would otherwise
/// hold every later frame behind the hole until its buffer overflows: 15-17 s of frozen video.
pub const HOLE_PATIENCE: Duration = Duration::from_millis(300);
/// How long a video section that carried a track waits before the next track starts on it
/// ([`DownTrack::switch_source`]). rtcd sends a track as soon as its answer goes out, but the
/// client accepts it only once it has applied that answer, and signaling (through the proxy,
/// over TCP) usually arrives after the media. What arrives before is lost for good for a client
/// that drops it after decrypting (aiortc, on a section whose receiver is not enabled yet): its
/// SRTP replay check then refuses the same packet resent, and aiortc cannot route RTX when it
/// receives several videos, so its jitter buffer waited behind the hole until 128 packets piled
/// up: a visitor's camera was never decoded in 1 run of 5-7 of the interop test (the keyframe
/// arrived 7 ms before the answer was applied). A new section needs no wait: a receiver that
/// starts there starts at the first packet it gets, and asks for a keyframe.
pub const REUSE_SETTLE: Duration = Duration::from_millis(250);
/// Holes (runs of output sequence numbers) remembered for closing; on overflow the oldest is
/// closed at once.
const MAX_HOLES: usize = 16;
/// Sequence numbers queued to be closed at once (NACKed positions that nothing can repair).
const MAX_URGENT_FILLS: usize = 64;

/// Layers switched away from (seamlessly, [`DownTrack::set_target_layer`]) whose packets
/// NACKs may still ask for: a subscriber NACKs within a round trip, long before a fifth switch.
const MAX_PREVIOUS_LAYERS: usize = 4;
/// The frame interval assumed at a layer switch before one was seen (30 frames a second).
const DEFAULT_FRAME_RATE: u32 = 30;

/// Runs of in-order drops remembered for mapping late packets. A late packet older than the
/// oldest remembered run is dropped.
const MAX_DROP_RUNS: usize = 8;
/// "None" in the payload-type tables.
const NO_PT: u8 = 0xff;

/// A down-track or one of its maps was configured with an impossible value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DownTrackError {
    /// The history ring must be a power of two (16 to 32 768).
    #[error("history: {0}")]
    History(#[from] CapacityError),
    /// A clock rate of 0 Hz cannot carry time across a switch of source.
    #[error("clock rate must not be 0")]
    ZeroClockRate,
    /// RTP payload types are 7 bits.
    #[error("payload type {0} is out of range (0-127)")]
    PayloadType(u8),
    /// Header-extension id 0 does not exist (RFC 8285).
    #[error("header-extension id 0 is reserved")]
    ExtensionId,
}

/// Source payload type → the subscriber's payload type (and its RTX payload type, RFC 4588
/// `apt=`), one entry per codec both sides negotiated. Built by the caller by matching codecs
/// (name, clock rate, channels, and the fmtp parameters that matter, e.g. H.264
/// `profile-level-id` and `packetization-mode`) between the publisher's and the subscriber's
/// SDP. Packets of an unmapped payload type are not forwarded.
#[derive(Clone)]
pub struct PayloadTypeMap {
    out: [u8; 128],
    rtx: [u8; 128],
}

impl Default for PayloadTypeMap {
    fn default() -> Self {
        Self {
            out: [NO_PT; 128],
            rtx: [NO_PT; 128],
        }
    }
}

impl PayloadTypeMap {
    /// An empty map (forwards nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `source` to the subscriber's `subscriber` payload type, with the subscriber's RTX
    /// payload type for it if it negotiated RTX for that codec.
    pub fn insert(
        &mut self,
        source: u8,
        subscriber: u8,
        rtx: Option<u8>,
    ) -> Result<(), DownTrackError> {
        for pt in [Some(source), Some(subscriber), rtx].into_iter().flatten() {
            if pt > 127 {
                return Err(DownTrackError::PayloadType(pt));
            }
        }
        self.out[usize::from(source)] = subscriber;
        self.rtx[usize::from(source)] = rtx.unwrap_or(NO_PT);
        Ok(())
    }

    /// The subscriber's RTX payload type for one of its own (media) payload types.
    pub fn rtx_of(&self, subscriber: u8) -> Option<u8> {
        (0..128)
            .find(|&i| self.out[i] == subscriber && self.rtx[i] != NO_PT)
            .map(|i| self.rtx[i])
    }

    /// The subscriber's payload type and RTX payload type for a source payload type.
    pub fn get(&self, source: u8) -> Option<(u8, Option<u8>)> {
        let i = usize::from(source & 0x7f);
        let out = self.out[i];
        (source < 128 && out != NO_PT).then(|| (out, (self.rtx[i] != NO_PT).then_some(self.rtx[i])))
    }
}

impl std::fmt::Debug for PayloadTypeMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries((0..128u8).filter_map(|pt| self.get(pt).map(|m| (pt, m))))
            .finish()
    }
}

/// Source header-extension id → the subscriber's id for the same URI; ids not in the map are
/// dropped. Map only end-to-end extensions (audio level, video orientation, playout delay,
/// abs-capture-time, dependency descriptor, color space...): per-hop ones (transport-cc,
/// abs-send-time, mid, rid, repaired-rid) belong to the subscriber's transport and are written
/// by the engine.
#[derive(Clone)]
pub struct ExtensionMap {
    out: [u8; 256],
}

impl Default for ExtensionMap {
    fn default() -> Self {
        Self { out: [0; 256] }
    }
}

impl ExtensionMap {
    /// An empty map (drops every extension).
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps the publisher's extension `source` id to the subscriber's `subscriber` id.
    pub fn insert(&mut self, source: u8, subscriber: u8) -> Result<(), DownTrackError> {
        if source == 0 || subscriber == 0 {
            return Err(DownTrackError::ExtensionId);
        }
        self.out[usize::from(source)] = subscriber;
        Ok(())
    }

    /// The subscriber's id for a source id.
    pub fn get(&self, source: u8) -> Option<u8> {
        Some(self.out[usize::from(source)]).filter(|&id| id != 0)
    }
}

impl std::fmt::Debug for ExtensionMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries((0..=255u8).filter_map(|id| self.get(id).map(|o| (id, o))))
            .finish()
    }
}

/// Everything a down-track needs to know about its subscriber, from the subscriber's SDP.
#[derive(Debug, Clone)]
pub struct DownTrackConfig {
    /// Audio or video (video waits for keyframes).
    pub kind: MediaKind,
    /// The SSRC the subscriber receives this track on.
    pub ssrc: u32,
    /// The subscriber's RTX SSRC for it, if RTX was negotiated (RFC 4588).
    pub rtx_ssrc: Option<u32>,
    /// The codec clock rate (90 000 for video, 48 000 for Opus).
    pub clock_rate: u32,
    /// Source → subscriber payload types.
    pub payload_types: PayloadTypeMap,
    /// Source → subscriber header-extension ids.
    pub extensions: ExtensionMap,
    /// The first output sequence number (random by default, RFC 3550 §5.1).
    pub initial_sequence: u16,
    /// The first output timestamp (random by default).
    pub initial_timestamp: u32,
    /// The RTX stream's first sequence number (random by default).
    pub initial_rtx_sequence: u16,
    /// Packets of sent history kept for NACKs (power of two, 16 to 32 768).
    pub history: usize,
}

impl DownTrackConfig {
    /// A configuration with random initial numbers, the default history for `kind`, no RTX and
    /// empty maps (fill `payload_types` and `extensions`).
    pub fn new(kind: MediaKind, ssrc: u32, clock_rate: u32) -> Self {
        Self {
            kind,
            ssrc,
            rtx_ssrc: None,
            clock_rate,
            payload_types: PayloadTypeMap::new(),
            extensions: ExtensionMap::new(),
            initial_sequence: rand::random(),
            initial_timestamp: rand::random(),
            initial_rtx_sequence: rand::random(),
            history: match kind {
                MediaKind::Audio => DEFAULT_AUDIO_HISTORY,
                MediaKind::Video => DEFAULT_VIDEO_HISTORY,
            },
        }
    }
}

/// Why [`DownTrack::forward`] did not forward a packet (for metrics; none is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The packet is not from the down-track's current source (e.g. still in flight from the
    /// source it was switched away from).
    OtherSource,
    /// The down-track is paused.
    Paused,
    /// Video after a start, switch or resume: nothing is forwarded before a keyframe.
    WaitingForKeyframe,
    /// The subscriber has no payload type for the packet's codec.
    UnmappedPayloadType,
    /// Padding only (the publisher probing bandwidth), not media.
    Padding,
    /// Late: from before the stream's (re)start, older than the reorder window, or in a range
    /// the down-track has already skipped.
    Stale,
    /// A new track on a section that carried one, during [`REUSE_SETTLE`].
    Settling,
    /// Already forwarded.
    Duplicate,
    /// A packet of the layer a switch is pending to ([`DownTrack::set_target_layer`]), before
    /// that layer's keyframe: the current layer is forwarded meanwhile.
    PendingLayer,
}

/// The verdict of [`DownTrack::forward`] on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Send the packet's payload with this header to the subscriber.
    Send(RtpHeaderOut),
    /// Do not send it.
    Drop(DropReason),
}

impl Forward {
    /// The header to send with, if any.
    pub fn header(self) -> Option<RtpHeaderOut> {
        match self {
            Forward::Send(h) => Some(h),
            Forward::Drop(_) => None,
        }
    }
}

/// One packet to send again, produced by [`DownTrack::on_nack`].
#[derive(Debug, Clone)]
pub struct Retransmission<'a> {
    /// The header: the original output header, or the RTX stream's header (RTX SSRC, RTX
    /// payload type, RTX sequence number, original timestamp and marker).
    pub header: RtpHeaderOut,
    /// The source packet (for [`RtpHeaderOut::extensions`]).
    pub packet: &'a MediaPacket,
    /// The payload to send, final: the original `Bytes` (shared; a copy only when its VP8
    /// numbers were rewritten, exactly as first sent), or for RTX a new buffer with the
    /// original output sequence number (2 octets) before that payload.
    pub payload: Bytes,
    /// Whether this is an RTX packet.
    pub rtx: bool,
}

/// Counters for the subscriber's sender reports (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Packets sent on the main SSRC (forwarded and resent).
    pub packets: u64,
    /// Payload octets sent on the main SSRC (no headers, no padding).
    pub octets: u64,
    /// Packets sent on the RTX SSRC.
    pub rtx_packets: u64,
    /// Payload octets sent on the RTX SSRC (including the 2-octet original sequence number).
    pub rtx_octets: u64,
    /// The newest output timestamp and the wall clock it was sent at: a consistent RTP/NTP
    /// pair for a sender report (see [`DownTrack::rtp_timestamp_at`]).
    pub last_timestamp: Option<(u32, Instant)>,
}

/// What the history remembers of one sent packet.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    valid: bool,
    out_seq: u16,
    src_seq: u16,
    /// The source generation (bumped on a switch) the packet came from.
    generation: u16,
    /// When it was last resent, in ms since the down-track's epoch + 1 (0: never).
    resent_ms: u32,
    /// The output timestamp it was sent with (a padding packet closing a hole after it reuses
    /// it, so that it joins that frame rather than forming an empty frame of its own).
    timestamp: u32,
    /// The subscriber's payload type it was sent with.
    payload_type: u8,
    /// Padding sent in place of a packet that could not be had: a NACK for it gets padding
    /// again, never another packet.
    filled: bool,
    /// The VP8 numbers it was sent with, when renumbered: a retransmission carries the same.
    vp8: Option<Vp8Rewrite>,
}

/// A run of output sequence numbers that carried nothing (lost before the SFU), waiting for the
/// publisher's retransmission until `due_ms` (see [`HOLE_PATIENCE`]).
#[derive(Debug, Clone, Copy)]
struct Hole {
    from: u64,
    to: u64,
    due_ms: u32,
    /// The source generation it opened in.
    generation: u16,
}

/// A packet closing a hole in the subscriber's sequence space ([`DownTrack::poll_fill`]): RTP
/// padding on the subscriber's SSRC, or an empty RTX packet ([`Fill::osn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// The header: for padding, the subscriber's SSRC, the hole's sequence number, the timestamp
    /// and payload type of the packet before it (the packet carries no payload, only RTP
    /// padding); for RTX, the RTX stream's SSRC, payload type and next sequence number, with
    /// that timestamp.
    pub header: RtpHeaderOut,
    /// `Some(n)`: an RTX packet whose payload is the original sequence number `n` and nothing
    /// after it, for a number under which something was sent already (a NACKed packet that
    /// cannot be resent). SRTP derives its keystream (AES-CM) and nonce (AES-GCM) from SSRC and
    /// sequence number, so a padding packet there would reuse them with other bytes: with GCM,
    /// enough for an eavesdropper to recover the authentication key and alter packets
    /// undetected. The receiver restores an empty packet numbered `n`, which closes the hole as
    /// padding would. Without negotiated RTX such a number is not closed at all.
    pub osn: Option<u16>,
    /// Whether the hole is in the current source's stream: the frame it belonged to is lost and
    /// the subscriber's decoder needs a keyframe (ask the publisher). A hole left by a previous
    /// source needs none: the new source starts with a keyframe anyway.
    pub current: bool,
}

/// An output sequence number to close at once ([`DownTrack::poll_fill`]).
#[derive(Debug, Clone, Copy)]
struct Urgent {
    ext: u64,
    /// It belongs to the current source.
    current: bool,
    /// Something went out under it already, or may have (older than the history): it is never
    /// sent again on the media SSRC with other bytes (see [`Fill::osn`]).
    used: bool,
}

/// A run of source sequence numbers the down-track skipped in order (the offset was lowered
/// across it).
#[derive(Debug, Clone, Copy, Default)]
struct DropRun {
    start: u64,
    end: u64,
    /// The sequence offset in force before the run.
    delta_before: u64,
}

/// The wait of a new track on a section that carried one ([`REUSE_SETTLE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Nothing to wait for.
    Done,
    /// To wait, from the next packet or keyframe request on.
    Due,
    /// Waiting until then.
    Until(Instant),
}

/// How the timestamp offset is chosen at the next (re)start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimestampStart {
    /// The first packet ever: start at the configured initial timestamp.
    Initial,
    /// A new source: continue from the last output timestamp plus the wall-clock gap.
    Continue,
    /// The same source after a pause: keep the offset.
    Keep,
    /// Another layer of the same track, while the current one was still flowing: like
    /// `Continue`, but at least one frame interval on, since the last frame sent and the new
    /// layer's keyframe are often the same captured picture, milliseconds apart.
    Layer,
}

/// One subscriber's view of one track. See the module documentation.
#[derive(Debug)]
pub struct DownTrack {
    kind: MediaKind,
    ssrc: u32,
    rtx_ssrc: Option<u32>,
    clock_rate: u32,
    payload_types: PayloadTypeMap,
    extensions: ExtensionMap,

    source_ssrc: u32,
    /// The layer to switch to at its next keyframe ([`DownTrack::set_target_layer`]).
    target: Option<u32>,
    /// Bumped on every switch of source, so the history never answers for an old source.
    generation: u16,
    /// `(generation, source SSRC)` of the layers switched away from seamlessly, newest last:
    /// their packets still answer NACKs (from their own buffers).
    previous_layers: [(u16, u32); MAX_PREVIOUS_LAYERS],
    previous_layer_count: usize,
    /// The newest spacing between two frames seen (in clock-rate units), for a layer switch.
    frame_interval: u32,
    /// Keeps VP8 picture IDs, TL0PICIDX and KEYIDX continuous across layer switches.
    vp8: Vp8Continuity,
    paused: bool,
    /// Whether the current source's mapping is established.
    anchored: bool,
    /// Video waiting for a keyframe before it (re)starts.
    need_keyframe: bool,
    /// A new track on a section that carried one waits [`REUSE_SETTLE`] from its first packet
    /// or keyframe request.
    settle: Settle,
    keyframe_requested_at: Option<Instant>,
    ts_start: TimestampStart,

    /// Newest extended source sequence number seen in order (forwarded or skipped).
    src_highest: u64,
    /// Oldest extended source sequence number a late packet may still be mapped for.
    valid_from: u64,
    /// Output = source + seq_delta (wrapping, extended).
    seq_delta: u64,
    drop_runs: [DropRun; MAX_DROP_RUNS],
    drop_run_count: usize,
    /// Newest extended output sequence number (the first output is this + 1 at the start).
    out_highest: u64,
    /// The first extended output sequence number (nothing before it was ever sent).
    out_first: u64,
    /// The first output of the current source (a hole before it can never be repaired).
    gen_start: u64,
    /// Holes of the output waiting for the publisher's retransmission, oldest first.
    holes: std::collections::VecDeque<Hole>,
    /// Output sequence numbers to close at the next [`DownTrack::poll_fill`].
    urgent: std::collections::VecDeque<Urgent>,
    ts_delta: u32,
    rtx_sequence: u16,

    history: Box<[Sent]>,
    mask: u64,
    resend_interval: Duration,
    /// The reference of the history's millisecond clock (the first `now` seen).
    epoch: Option<Instant>,
    stats: SenderStats,
}

impl DownTrack {
    /// A down-track fed by the source track `source_ssrc`. Video starts waiting for a keyframe
    /// (see [`DownTrack::poll_keyframe_request`]).
    pub fn new(config: DownTrackConfig, source_ssrc: u32) -> Result<Self, DownTrackError> {
        check_capacity(config.history)?;
        if config.clock_rate == 0 {
            return Err(DownTrackError::ZeroClockRate);
        }
        Ok(Self {
            kind: config.kind,
            ssrc: config.ssrc,
            rtx_ssrc: config.rtx_ssrc,
            clock_rate: config.clock_rate,
            payload_types: config.payload_types,
            extensions: config.extensions,
            source_ssrc,
            target: None,
            generation: 0,
            previous_layers: [(0, 0); MAX_PREVIOUS_LAYERS],
            previous_layer_count: 0,
            frame_interval: config.clock_rate / DEFAULT_FRAME_RATE,
            vp8: Vp8Continuity::default(),
            paused: false,
            anchored: false,
            need_keyframe: config.kind == MediaKind::Video,
            settle: Settle::Done,
            keyframe_requested_at: None,
            ts_start: TimestampStart::Initial,
            src_highest: 0,
            valid_from: 0,
            seq_delta: 0,
            drop_runs: [DropRun::default(); MAX_DROP_RUNS],
            drop_run_count: 0,
            out_highest: (EXTENDED_BASE + u64::from(config.initial_sequence)).wrapping_sub(1),
            out_first: EXTENDED_BASE + u64::from(config.initial_sequence),
            gen_start: EXTENDED_BASE + u64::from(config.initial_sequence),
            holes: std::collections::VecDeque::with_capacity(MAX_HOLES),
            urgent: std::collections::VecDeque::new(),
            ts_delta: config.initial_timestamp,
            rtx_sequence: config.initial_rtx_sequence,
            history: vec![Sent::default(); config.history].into_boxed_slice(),
            mask: config.history as u64 - 1,
            resend_interval: DEFAULT_RESEND_INTERVAL,
            epoch: None,
            stats: SenderStats::default(),
        })
    }

    /// The subscriber's SSRC for this track.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The subscriber's RTX SSRC, if negotiated.
    pub fn rtx_ssrc(&self) -> Option<u32> {
        self.rtx_ssrc
    }

    /// The SSRC of the source track currently forwarded (where PLIs and FIRs go).
    pub fn source_ssrc(&self) -> u32 {
        self.source_ssrc
    }

    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// Whether the down-track is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Re-points the down-track at another source track (the same subscriber SSRC carries it
    /// from now on). Packets of the previous source are dropped from now; video waits for the
    /// new source's keyframe (ask for it: [`DownTrack::poll_keyframe_request`]); sequence
    /// numbers and timestamps continue where the previous source left off. NACKs for packets
    /// of the previous source are no longer answered.
    ///
    /// A pending layer switch ([`DownTrack::set_target_layer`]) is cancelled. VP8 picture IDs
    /// are not renumbered across this switch (they pass through as the new source writes
    /// them, as before layers existed): the subscriber's decoder restarts at the new source's
    /// keyframe, and a track that never changes layer keeps its zero-copy path.
    pub fn switch_source(&mut self, source_ssrc: u32) {
        self.change_source(source_ssrc);
        self.vp8.pass_through();
        // What the previous sources sent is not answered any more.
        self.previous_layer_count = 0;
        self.settle = if self.kind == MediaKind::Video && source_ssrc != 0 && self.stats.packets > 0
        {
            Settle::Due
        } else {
            Settle::Done
        };
        if self.stats.last_timestamp.is_some() {
            self.ts_start = TimestampStart::Continue;
        }
        self.restart();
    }

    /// Asks to switch to another layer of the same track (another source SSRC) without a
    /// freeze: the current layer keeps flowing until the first packet of a keyframe of
    /// `source_ssrc` arrives, and the switch happens at that packet (see
    /// [`DownTrack::forward`]). Meanwhile [`DownTrack::poll_keyframe_request`] asks for that
    /// keyframe, and packets of other layers are dropped. The subscriber sees one stream: its
    /// SSRC, sequence numbers, timestamps and VP8 picture IDs, TL0PICIDX and KEYIDX continue
    /// across the switch, and its NACKs for packets sent before it are still answered (see
    /// [`DownTrack::on_nack_layers`]).
    ///
    /// The current layer as target cancels a pending switch; a new target replaces it. Use
    /// [`DownTrack::switch_layer_now`] instead when the current layer has stopped (nothing
    /// would flow while waiting).
    ///
    /// Codecs: H.264 needs nothing but sequence numbers and timestamps (its switch point is
    /// an IDR or SPS). VP9 and AV1 are forwarded as a single layer today; switching between
    /// their simulcast layers works for sequence numbers and timestamps, but VP9's picture ID
    /// and TL0PICIDX and AV1's dependency descriptor (frame numbers, template ids) are not
    /// renumbered yet, so a receiver may drop frames after such a switch until they are.
    pub fn set_target_layer(&mut self, source_ssrc: u32) {
        if source_ssrc == self.source_ssrc {
            self.target = None;
            return;
        }
        if self.target != Some(source_ssrc) {
            self.target = Some(source_ssrc);
            // Ask for the new layer's keyframe at once.
            self.keyframe_requested_at = None;
        }
    }

    /// The layer a switch is pending to, if any.
    pub fn target_layer(&self) -> Option<u32> {
        self.target
    }

    /// Switches to another layer of the same track at once, for when the current layer stopped
    /// (the publisher paused it): like [`DownTrack::switch_source`], video waits for the new
    /// layer's keyframe, but numbering continues as after [`DownTrack::set_target_layer`]
    /// (VP8 picture IDs included) and the previous layer's packets still answer NACKs.
    pub fn switch_layer_now(&mut self, source_ssrc: u32) {
        if source_ssrc == self.source_ssrc {
            self.target = None;
            return;
        }
        self.switch_layer(source_ssrc);
    }

    /// Makes `source_ssrc` the current layer, continuing the subscriber's stream seamlessly.
    fn switch_layer(&mut self, source_ssrc: u32) {
        if self.previous_layer_count == MAX_PREVIOUS_LAYERS {
            self.previous_layers.copy_within(1.., 0);
            self.previous_layer_count -= 1;
        }
        self.previous_layers[self.previous_layer_count] = (self.generation, self.source_ssrc);
        self.previous_layer_count += 1;
        self.change_source(source_ssrc);
        self.vp8.next_layer();
        if self.stats.last_timestamp.is_some() {
            self.ts_start = TimestampStart::Layer;
        }
        self.restart();
    }

    /// Points the down-track at `source_ssrc` as a new generation (the history tells the two
    /// apart), cancelling any pending layer switch.
    fn change_source(&mut self, source_ssrc: u32) {
        self.source_ssrc = source_ssrc;
        self.target = None;
        self.generation = self.generation.wrapping_add(1);
    }

    /// The source ended (its track was withdrawn): nothing more will come from it, so the holes
    /// it left close at once ([`DownTrack::poll_fill`]) and NACKs for what it sent are answered
    /// with padding. Forwarding resumes only after [`DownTrack::switch_source`].
    pub fn detach(&mut self) {
        self.switch_source(0);
    }

    /// Replaces the payload type and extension id maps: a slot reused for a track of another
    /// publisher (whose payload types and extension ids may differ) keeps its down-track, so its
    /// SSRC, sequence numbers and timestamps run on, with the new source's maps.
    pub fn set_maps(&mut self, payload_types: PayloadTypeMap, extensions: ExtensionMap) {
        self.payload_types = payload_types;
        self.extensions = extensions;
    }

    /// Pauses (mute, or the subscriber does not want the track now) or resumes forwarding.
    /// Packets are dropped while paused; on resume the stream continues without a sequence gap
    /// and, for video, from the next keyframe.
    pub fn set_paused(&mut self, paused: bool) {
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        if paused {
            return;
        }
        if self.anchored {
            self.ts_start = TimestampStart::Keep;
            self.restart();
        } else {
            // Still waiting: ask again at once, the request before the pause may be stale.
            self.keyframe_requested_at = None;
        }
    }

    /// Forgets the current source's mapping: the next packet accepted (a keyframe for video)
    /// starts it again right after the last output.
    fn restart(&mut self) {
        // Nothing can fill the holes before the restart any more (late packets from before it
        // are stale): they close at once, and the new start begins a new run of numbers.
        self.gen_start = self.out_highest.wrapping_add(1);
        for hole in &mut self.holes {
            hole.due_ms = 0;
        }
        self.anchored = false;
        self.need_keyframe = self.kind == MediaKind::Video;
        self.keyframe_requested_at = None;
        self.drop_run_count = 0;
    }

    /// Tells the down-track the subscriber's round-trip time (from its receiver reports), which
    /// sets how often the same packet may be resent.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.resend_interval = rtt.clamp(Duration::from_millis(10), Duration::from_secs(1));
    }

    /// Whether the down-track is waiting for a keyframe of its source (and not paused).
    pub fn wants_keyframe(&self) -> bool {
        self.need_keyframe && !self.paused
    }

    /// The source SSRC to send a PLI to now, if the down-track waits for a keyframe and has not
    /// asked within [`KEYFRAME_REQUEST_INTERVAL`]: the target layer's while a layer switch is
    /// pending (its keyframe is the switch point; the current layer needs none, it is flowing),
    /// else the current source's. Call it after `new`, `switch_source`, `set_target_layer`,
    /// `set_paused(false)` and periodically (e.g. on every packet or timer tick); the engine
    /// should still throttle PLIs per source across all of its down-tracks.
    pub fn poll_keyframe_request(&mut self, now: Instant) -> Option<u32> {
        if self.paused || self.settling(now) {
            return None;
        }
        let ssrc = match self.target {
            Some(target) if self.kind == MediaKind::Video => target,
            _ if self.need_keyframe => self.source_ssrc,
            _ => return None,
        };
        if let Some(at) = self.keyframe_requested_at
            && now.saturating_duration_since(at) < KEYFRAME_REQUEST_INTERVAL
        {
            return None;
        }
        self.keyframe_requested_at = Some(now);
        Some(ssrc)
    }

    /// Decides what the subscriber gets of `pkt` (a packet of the track, received at about
    /// `now`): the header to send it with (send its payload with [`RtpHeaderOut::payload`]),
    /// or why not.
    ///
    /// With a layer switch pending, the first packet of a keyframe of the target layer is the
    /// switch point: it is forwarded right after the last packet of the previous layer, and
    /// from then on only the new layer is (a late packet of the previous layer is dropped as
    /// another source, never renumbered into the new layer's sequence).
    pub fn forward(&mut self, pkt: &MediaPacket, now: Instant) -> Forward {
        if pkt.ssrc != self.source_ssrc {
            if self.target != Some(pkt.ssrc) {
                return Forward::Drop(DropReason::OtherSource);
            }
            if self.paused {
                return Forward::Drop(DropReason::Paused);
            }
            if self.kind == MediaKind::Video && !pkt.keyframe {
                return Forward::Drop(DropReason::PendingLayer);
            }
            // Not on a packet that would not be forwarded: the switch waits for one that is.
            if let Err(reason) = self.media_payload_type(pkt) {
                return Forward::Drop(reason);
            }
            self.switch_layer(pkt.ssrc);
        }
        if self.paused {
            return Forward::Drop(DropReason::Paused);
        }
        if !self.anchored {
            if self.settling(now) {
                return Forward::Drop(DropReason::Settling);
            }
            if self.need_keyframe && !pkt.keyframe {
                return Forward::Drop(DropReason::WaitingForKeyframe);
            }
            let pt = match self.media_payload_type(pkt) {
                Ok(pt) => pt,
                Err(reason) => return Forward::Drop(reason),
            };
            if self.stats.packets == 0 && self.kind == MediaKind::Video {
                // The stream's very first packet: a padding packet just before it (sent right
                // after it) gives the subscriber the sequence number it follows, so that if the
                // keyframe's first packet is lost a receiver that only NACKs sees the gap and
                // asks for it. Without it, that receiver cannot know the keyframe began earlier
                // and waits for the publisher's next keyframe.
                self.close_now(self.out_first.wrapping_sub(1), false, false);
            }
            self.anchor(pkt, now);
            let ext = self.src_highest;
            return self.emit(ext.wrapping_add(self.seq_delta), pkt, pt, now);
        }

        let ext = unwrap_seq(self.src_highest, pkt.sequence);
        if ext > self.src_highest {
            return match self.media_payload_type(pkt) {
                Ok(pt) => {
                    self.src_highest = ext;
                    self.emit(ext.wrapping_add(self.seq_delta), pkt, pt, now)
                }
                Err(reason) => {
                    self.skip_in_order(ext);
                    Forward::Drop(reason)
                }
            };
        }

        // Late (reordered, or retransmitted by the publisher) or a duplicate.
        if ext < self.valid_from || self.src_highest - ext > self.mask {
            return Forward::Drop(DropReason::Stale);
        }
        let Some(delta) = self.delta_at(ext) else {
            return Forward::Drop(DropReason::Stale);
        };
        let pt = match self.media_payload_type(pkt) {
            Ok(pt) => pt,
            Err(reason) => return Forward::Drop(reason),
        };
        let out_ext = ext.wrapping_add(delta);
        let sent = &self.history[(out_ext & self.mask) as usize];
        if sent.valid && sent.out_seq == out_ext as u16 {
            return Forward::Drop(DropReason::Duplicate);
        }
        self.emit(out_ext, pkt, pt, now)
    }

    /// Whether a new track on a section that carried one still waits ([`REUSE_SETTLE`]); the
    /// wait starts at the first call. When it ends the keyframe is asked for at once.
    fn settling(&mut self, now: Instant) -> bool {
        match self.settle {
            Settle::Done => false,
            Settle::Due => {
                self.settle = Settle::Until(now + REUSE_SETTLE);
                true
            }
            Settle::Until(until) if now < until => true,
            Settle::Until(_) => {
                self.settle = Settle::Done;
                self.keyframe_requested_at = None;
                false
            }
        }
    }

    /// The subscriber's payload type for a packet worth forwarding.
    fn media_payload_type(&self, pkt: &MediaPacket) -> Result<u8, DropReason> {
        let Some((pt, _)) = self.payload_types.get(pkt.payload_type) else {
            return Err(DropReason::UnmappedPayloadType);
        };
        if pkt.is_padding_only() {
            return Err(DropReason::Padding);
        }
        Ok(pt)
    }

    /// (Re)starts the current source's mapping at `pkt`: its output follows the last output.
    fn anchor(&mut self, pkt: &MediaPacket, now: Instant) {
        let ext = EXTENDED_BASE + u64::from(pkt.sequence);
        self.src_highest = ext;
        self.valid_from = ext;
        self.seq_delta = self.out_highest.wrapping_add(1).wrapping_sub(ext);
        self.gen_start = self.out_highest.wrapping_add(1);
        self.drop_run_count = 0;
        let out_ts = match (self.ts_start, self.stats.last_timestamp) {
            (start @ (TimestampStart::Continue | TimestampStart::Layer), Some((last, at))) => {
                let gap = now.saturating_duration_since(at).as_nanos()
                    * u128::from(self.clock_rate)
                    / 1_000_000_000;
                let min = if start == TimestampStart::Layer {
                    self.frame_interval.max(1)
                } else {
                    1
                };
                Some(last.wrapping_add((gap.min(u128::from(u32::MAX)) as u32).max(min)))
            }
            (TimestampStart::Keep, _) => None,
            // The first packet: ts_delta holds the configured initial timestamp.
            _ => Some(self.ts_delta),
        };
        if let Some(out_ts) = out_ts {
            self.ts_delta = out_ts.wrapping_sub(pkt.timestamp);
        }
        self.ts_start = TimestampStart::Keep;
        self.anchored = true;
        self.need_keyframe = false;
        self.keyframe_requested_at = None;
    }

    /// Skips an in-order source packet without leaving a gap in the output.
    fn skip_in_order(&mut self, ext: u64) {
        let open = self.drop_run_count > 0
            && self.drop_runs[self.drop_run_count - 1].end == self.src_highest;
        if open {
            // Extend the run, swallowing any upstream gap inside it.
            self.seq_delta = self.seq_delta.wrapping_sub(ext - self.src_highest);
            self.drop_runs[self.drop_run_count - 1].end = ext;
        } else {
            if self.drop_run_count == MAX_DROP_RUNS {
                // Forget the oldest run: late packets up to its end can no longer be mapped.
                self.valid_from = self.valid_from.max(self.drop_runs[0].end + 1);
                self.drop_runs.copy_within(1.., 0);
                self.drop_run_count -= 1;
            }
            self.drop_runs[self.drop_run_count] = DropRun {
                start: ext,
                end: ext,
                delta_before: self.seq_delta,
            };
            self.drop_run_count += 1;
            self.seq_delta = self.seq_delta.wrapping_sub(1);
        }
        self.src_highest = ext;
    }

    /// The sequence offset in force at a late packet's position, or `None` if the down-track
    /// skipped that position.
    fn delta_at(&self, ext: u64) -> Option<u64> {
        let mut delta = self.seq_delta;
        for run in self.drop_runs[..self.drop_run_count].iter().rev() {
            if ext > run.end {
                break;
            }
            if ext >= run.start {
                return None;
            }
            delta = run.delta_before;
        }
        Some(delta)
    }

    /// Records and counts one forwarded packet and builds its header.
    fn emit(&mut self, out_ext: u64, pkt: &MediaPacket, pt: u8, now: Instant) -> Forward {
        let ts = pkt.timestamp.wrapping_add(self.ts_delta);
        if out_ext > self.out_highest {
            // Slots of output numbers skipped (upstream loss) must not answer NACKs.
            let from = (self.out_highest + 1).max(out_ext.saturating_sub(self.mask));
            for e in from..out_ext {
                self.history[(e & self.mask) as usize].valid = false;
            }
            if from < out_ext {
                let due_ms = self
                    .millis(now)
                    .wrapping_add(HOLE_PATIENCE.as_millis() as u32)
                    .max(1);
                self.note_hole(from, out_ext - 1, due_ms);
            }
            self.out_highest = out_ext;
        }
        let vp8 = pkt.vp8.as_ref().and_then(|d| self.vp8.map(d));
        self.history[(out_ext & self.mask) as usize] = Sent {
            valid: true,
            out_seq: out_ext as u16,
            src_seq: pkt.sequence,
            generation: self.generation,
            resent_ms: 0,
            timestamp: ts,
            payload_type: pt,
            filled: false,
            vp8,
        };
        let newer = match self.stats.last_timestamp {
            Some((last, _)) => {
                let ahead = ts.wrapping_sub(last);
                // The spacing of frames, for the next layer switch (not a jump of a restart).
                if ahead > 0 && ahead <= self.clock_rate / 5 {
                    self.frame_interval = ahead;
                }
                ahead as i32 >= 0
            }
            None => true,
        };
        if newer {
            self.stats.last_timestamp = Some((ts, now));
        }
        self.stats.packets += 1;
        self.stats.octets += pkt.payload.len() as u64;
        self.epoch.get_or_insert(now);
        let mut header = self.header(out_ext as u16, ts, pt, pkt);
        header.set_vp8(vp8);
        Forward::Send(header)
    }

    /// The subscriber's header for `pkt`: its SSRC, the given numbers, mapped extensions.
    fn header(&self, seq: u16, ts: u32, pt: u8, pkt: &MediaPacket) -> RtpHeaderOut {
        let mut h = RtpHeaderOut::new(self.ssrc, seq, ts, pt, pkt.marker);
        for (i, (id, _)) in pkt.extensions.iter().enumerate() {
            if let Some(out) = self.extensions.get(id) {
                h.push_extension(out, i);
            }
        }
        h
    }

    /// Milliseconds since the epoch + 1 (never 0), wrapping after 49 days.
    fn millis(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        (now.saturating_duration_since(epoch).as_millis() as u32)
            .wrapping_add(1)
            .max(1)
    }

    /// Answers the subscriber's NACK (RFC 4585 generic NACK, already expanded to sequence
    /// numbers): for each output sequence number still in the history and whose source packet
    /// is still in `buf` (the current source's buffer), `out` gets one retransmission, as RTX
    /// if negotiated. Numbers resent within the last round trip are ignored, and so are holes
    /// of the current source (lost before the SFU) while the publisher may still resend them
    /// (they close with padding after [`HOLE_PATIENCE`] if it does not).
    ///
    /// Numbers that were sent but cannot be resent (older than the history, their packet gone
    /// from `buf`, or from a previous source) and holes a previous source left are queued to be
    /// closed ([`DownTrack::poll_fill`], call it next: holes with padding, sent numbers with an
    /// empty RTX packet, [`Fill::osn`]): a receiver whose jitter buffer waits for every
    /// sequence number would otherwise stall behind them. Returns how
    /// many of the numbers belonged to the current source and cannot be repaired: the
    /// subscriber's decoder waits for a keyframe, which the caller should ask the publisher for
    /// now (a browser asks by itself only seconds later: Chromium took 2.5 to 8.5 s after an ICE
    /// restart outlasted the buffer).
    pub fn on_nack<'b>(
        &mut self,
        lost: impl IntoIterator<Item = u16>,
        buf: &'b RetransmitBuffer,
        now: Instant,
        out: impl FnMut(Retransmission<'b>),
    ) -> usize {
        self.on_nack_layers(lost, |_| Some(buf), now, out)
    }

    /// [`DownTrack::on_nack`] for a track with layers, each with its own retransmission
    /// buffer: `buffers` gives the buffer of a source SSRC. Packets sent from a layer the
    /// down-track has since switched away from ([`DownTrack::set_target_layer`],
    /// [`DownTrack::switch_layer_now`], up to the last four) are resent from that layer's
    /// buffer with the very header and VP8 numbers they were first sent with; the subscriber
    /// saw one stream, so it may well NACK across the switch.
    pub fn on_nack_layers<'b>(
        &mut self,
        lost: impl IntoIterator<Item = u16>,
        buffers: impl Fn(u32) -> Option<&'b RetransmitBuffer>,
        now: Instant,
        mut out: impl FnMut(Retransmission<'b>),
    ) -> usize {
        if self.stats.packets == 0 {
            return 0;
        }
        let now_ms = self.millis(now);
        let interval_ms = self.resend_interval.as_millis() as u32;
        let mut unrepairable = 0;
        for seq in lost {
            let ext = unwrap_seq(self.out_highest, seq);
            if ext > self.out_highest || ext < self.out_first {
                continue;
            }
            let old = ext < self.gen_start;
            if self.out_highest - ext > self.mask {
                if !old {
                    unrepairable += 1;
                }
                self.close_now(ext, !old, true);
                continue;
            }
            let slot = (ext & self.mask) as usize;
            let sent = self.history[slot];
            if sent.resent_ms != 0 && now_ms.wrapping_sub(sent.resent_ms) < interval_ms {
                continue;
            }
            if !sent.valid || sent.out_seq != seq {
                // A hole: nothing was sent there. A previous source will never fill it; the
                // current one may (its hole closes by itself after HOLE_PATIENCE).
                if old {
                    self.close_now(ext, false, false);
                }
                continue;
            }
            let current = sent.generation == self.generation;
            let source = if current {
                Some(self.source_ssrc)
            } else {
                self.previous_layers[..self.previous_layer_count]
                    .iter()
                    .find(|(g, _)| *g == sent.generation)
                    .map(|(_, ssrc)| *ssrc)
            };
            let Some(source) = source.filter(|_| !sent.filled) else {
                self.close_now(ext, false, true);
                continue;
            };
            let Some(pkt) = buffers(source)
                .and_then(|buf| buf.get(sent.src_seq))
                .filter(|pkt| pkt.ssrc == source)
            else {
                // Lost for good. Only the current layer's loss needs a keyframe: a previous
                // layer's frames are behind the keyframe the switch started at.
                if current {
                    unrepairable += 1;
                }
                self.close_now(ext, current, true);
                continue;
            };
            let Some((pt, rtx_pt)) = self.payload_types.get(pkt.payload_type) else {
                continue;
            };
            self.history[slot].resent_ms = now_ms;
            let mut header = self.header(seq, sent.timestamp, pt, pkt);
            header.set_vp8(sent.vp8);
            let payload = header.payload(pkt);
            match (self.rtx_ssrc, rtx_pt) {
                (Some(rtx_ssrc), Some(rtx_pt)) => {
                    let mut rtx = BytesMut::with_capacity(2 + payload.len());
                    rtx.put_u16(seq);
                    rtx.put_slice(&payload);
                    header.ssrc = rtx_ssrc;
                    header.payload_type = rtx_pt;
                    header.sequence = self.next_rtx(rtx.len());
                    out(Retransmission {
                        header,
                        packet: pkt,
                        payload: rtx.freeze(),
                        rtx: true,
                    });
                }
                _ => {
                    // Without RTX: the packet rebuilt on the media SSRC, as libwebrtc and Janus
                    // resend without RTX. Its payload is the same; only its transport-wide
                    // number differs, which with AES-GCM is a second header under one nonce
                    // (docs/engine-v2.md, "Retransmission without RTX"). Every browser
                    // negotiates RTX.
                    self.stats.packets += 1;
                    self.stats.octets += payload.len() as u64;
                    out(Retransmission {
                        header,
                        packet: pkt,
                        payload,
                        rtx: false,
                    });
                }
            }
        }
        unrepairable
    }

    /// An RTX copy of a packet just forwarded (`header`, what [`DownTrack::forward`] returned
    /// for `pkt`), to probe the subscriber's link: it carries a transport-wide sequence number
    /// like any packet, so the subscriber's feedback reports it, and the receiver drops it as a
    /// duplicate of what it already has. `None` without negotiated RTX (a copy on the media
    /// SSRC would repeat a sequence number). Allocates the copy: only while probing.
    pub fn probe_copy(
        &mut self,
        header: &RtpHeaderOut,
        pkt: &MediaPacket,
    ) -> Option<(RtpHeaderOut, Bytes)> {
        let rtx_ssrc = self.rtx_ssrc?;
        let (_, Some(rtx_pt)) = self.payload_types.get(pkt.payload_type)? else {
            return None;
        };
        let payload = header.payload(pkt);
        let mut rtx = BytesMut::with_capacity(2 + payload.len());
        rtx.put_u16(header.sequence);
        rtx.put_slice(&payload);
        let mut copy = *header;
        copy.ssrc = rtx_ssrc;
        copy.payload_type = rtx_pt;
        copy.sequence = self.next_rtx(rtx.len());
        Some((copy, rtx.freeze()))
    }

    /// Remembers the output run `from..=to` as a hole to close at `due_ms` (0: at once).
    fn note_hole(&mut self, from: u64, to: u64, due_ms: u32) {
        if let Some(last) = self.holes.back_mut()
            && last.to + 1 == from
            && last.due_ms == due_ms
        {
            last.to = to;
            return;
        }
        if self.holes.len() >= MAX_HOLES {
            // Too many at once: the oldest closes now rather than being forgotten, and past
            // twice the bound (nobody polled) it is dropped.
            if self.holes.len() >= 2 * MAX_HOLES {
                self.holes.pop_front();
            }
            if let Some(oldest) = self.holes.iter_mut().find(|h| h.due_ms != 0) {
                oldest.due_ms = 0;
            }
        }
        self.holes.push_back(Hole {
            from,
            to,
            due_ms,
            generation: self.generation,
        });
    }

    /// Queues output `ext` to be closed at the next [`DownTrack::poll_fill`]; `used`: something
    /// was (or may have been) sent under it already.
    fn close_now(&mut self, ext: u64, current: bool, used: bool) {
        if self.urgent.len() < MAX_URGENT_FILLS && !self.urgent.iter().any(|u| u.ext == ext) {
            self.urgent.push_back(Urgent { ext, current, used });
        }
    }

    /// The RTX stream's sequence number for the next RTX packet (`octets` of payload, counted
    /// in the sender stats): retransmissions, probes and empty fills share the one sequence.
    fn next_rtx(&mut self, octets: usize) -> u16 {
        let seq = self.rtx_sequence;
        self.rtx_sequence = seq.wrapping_add(1);
        self.stats.rtx_packets += 1;
        self.stats.rtx_octets += octets as u64;
        seq
    }

    /// The empty RTX packet closing output `ext`, under which something was sent already (see
    /// [`Fill::osn`]); `None` without negotiated RTX for its codec.
    fn rtx_fill(&mut self, ext: u64, current: bool, now_ms: u32) -> Option<Fill> {
        let rtx_ssrc = self.rtx_ssrc?;
        if ext > self.out_highest {
            return None;
        }
        let (timestamp, payload_type) = self.sent_near(ext)?;
        let rtx_pt = self.payload_types.rtx_of(payload_type)?;
        let header = RtpHeaderOut::new(rtx_ssrc, self.next_rtx(2), timestamp, rtx_pt, false);
        if self.out_highest - ext <= self.mask {
            let sent = &mut self.history[(ext & self.mask) as usize];
            if sent.valid && sent.out_seq == ext as u16 {
                sent.resent_ms = now_ms;
            }
        }
        Some(Fill {
            header,
            current,
            osn: Some(ext as u16),
        })
    }

    /// Whether holes wait to be closed (a cheap check for the forwarding path).
    pub fn has_holes(&self) -> bool {
        !self.holes.is_empty() || !self.urgent.is_empty()
    }

    /// The next padding packet to send now, closing a hole in the subscriber's sequence space
    /// that nothing else will fill: a hole of the current source after [`HOLE_PATIENCE`], any
    /// hole a previous source left, and what [`DownTrack::on_nack`] found unrepairable. Call it
    /// until `None` after `forward`, `on_nack` and `switch_source`. A receiver that only NACKs
    /// (and whose jitter buffer waits for every number) then moves on to the next frame, or to
    /// the keyframe the caller asks for when [`Fill::current`] says so. The filled number is
    /// recorded as sent, so a late retransmission from the publisher is not forwarded after it
    /// (the subscriber's SRTP replay check would drop it anyway). What [`DownTrack::on_nack`]
    /// found unrepairable under a number already sent is closed by an empty RTX packet
    /// instead ([`Fill::osn`]), or not at all without RTX.
    pub fn poll_fill(&mut self, now: Instant) -> Option<Fill> {
        // While a new track waits on a reused section, nothing goes out on it: a client that
        // has not applied the answer would lose what closes the holes, for good.
        if !self.has_holes() || self.stats.packets == 0 || self.settling(now) {
            return None;
        }
        let now_ms = self.millis(now);
        loop {
            let (ext, current) = if let Some(u) = self.urgent.pop_front() {
                if u.used {
                    match self.rtx_fill(u.ext, u.current, now_ms) {
                        Some(fill) => return Some(fill),
                        None => continue,
                    }
                }
                (u.ext, u.current)
            } else {
                let hole = self.holes.front_mut()?;
                let due = hole.due_ms == 0 || now_ms.wrapping_sub(hole.due_ms) as i32 >= 0;
                if !due {
                    return None;
                }
                let ext = hole.from;
                let current = hole.generation == self.generation;
                if hole.from == hole.to {
                    self.holes.pop_front();
                } else {
                    hole.from += 1;
                }
                // Filled meanwhile by a late packet: nothing to close.
                let sent = self.history[(ext & self.mask) as usize];
                if sent.valid && sent.out_seq == ext as u16 {
                    continue;
                }
                (ext, current)
            };
            if ext > self.out_highest || self.out_highest - ext > self.mask {
                continue;
            }
            let Some((timestamp, payload_type)) = self.sent_near(ext) else {
                continue;
            };
            self.history[(ext & self.mask) as usize] = Sent {
                valid: true,
                out_seq: ext as u16,
                src_seq: 0,
                generation: self.generation,
                resent_ms: now_ms,
                timestamp,
                payload_type,
                filled: true,
                vp8: None,
            };
            self.stats.packets += 1;
            let header = RtpHeaderOut::new(self.ssrc, ext as u16, timestamp, payload_type, false);
            return Some(Fill {
                header,
                current,
                osn: None,
            });
        }
    }

    /// The timestamp and payload type of the packet sent at or nearest before output `ext`
    /// (what a padding packet there carries).
    fn sent_near(&self, ext: u64) -> Option<(u32, u8)> {
        let oldest = self
            .out_highest
            .saturating_sub(self.mask)
            .max(self.out_first);
        let mut e = ext;
        while e >= oldest {
            let sent = self.history[(e & self.mask) as usize];
            if sent.valid && sent.out_seq == e as u16 {
                return Some((sent.timestamp, sent.payload_type));
            }
            if e == 0 || ext - e >= 64 {
                break;
            }
            e -= 1;
        }
        // Nothing sent near it: the newest packet's.
        let newest = self.history[(self.out_highest & self.mask) as usize];
        newest
            .valid
            .then_some((newest.timestamp, newest.payload_type))
    }

    /// Counters and the newest RTP/wall-clock pair, for the subscriber's sender report.
    pub fn sender_stats(&self) -> SenderStats {
        self.stats
    }

    /// The output RTP timestamp corresponding to wall-clock `now` (the newest output timestamp
    /// advanced by the time since it was sent): the RTP time of a sender report sent at `now`,
    /// paired with `now`'s NTP time. `None` before anything was sent.
    pub fn rtp_timestamp_at(&self, now: Instant) -> Option<u32> {
        let (ts, at) = self.stats.last_timestamp?;
        let elapsed = now.saturating_duration_since(at).as_nanos() * u128::from(self.clock_rate)
            / 1_000_000_000;
        Some(ts.wrapping_add(elapsed as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::packet::{HeaderExtensions, VideoCodec};
    use crate::media::vp8::{KEYIDX_MASK, PICTURE_ID_MASK_15, Vp8Descriptor};

    const SRC: u32 = 0x1111_1111;
    const SRC2: u32 = 0x2222_2222;
    const SRC3: u32 = 0x3333_3333;
    const SUB: u32 = 0xaaaa_aaaa;
    const SUB_RTX: u32 = 0xbbbb_bbbb;
    const VIDEO_PT: u8 = 96;
    const OUT_PT: u8 = 100;
    const OUT_RTX_PT: u8 = 101;
    const FIRST_SEQ: u16 = 1000;
    const FIRST_TS: u32 = 50_000;
    const FRAME: Duration = Duration::from_millis(33);
    const FRAME_TS: u32 = 2970;

    fn config(kind: MediaKind) -> DownTrackConfig {
        let mut c = DownTrackConfig::new(
            kind,
            SUB,
            if kind == MediaKind::Video {
                90_000
            } else {
                48_000
            },
        );
        c.payload_types
            .insert(VIDEO_PT, OUT_PT, Some(OUT_RTX_PT))
            .unwrap();
        c.extensions.insert(1, 3).unwrap();
        c.extensions.insert(2, 5).unwrap();
        c.initial_sequence = FIRST_SEQ;
        c.initial_timestamp = FIRST_TS;
        c.initial_rtx_sequence = 7;
        c
    }

    fn track(kind: MediaKind) -> DownTrack {
        DownTrack::new(config(kind), SRC).unwrap()
    }

    /// A one-packet frame of `ssrc` with sequence `seq`, timestamp `ts`.
    fn pkt(ssrc: u32, seq: u16, ts: u32, keyframe: bool, at: Instant) -> MediaPacket {
        let mut p = MediaPacket::new(
            ssrc,
            seq,
            ts,
            VIDEO_PT,
            Bytes::from(vec![seq as u8; 20]),
            at,
        );
        p.keyframe = keyframe;
        p.marker = true;
        p
    }

    /// Forwards and returns the output (sequence, timestamp), or the drop reason.
    fn fwd(dt: &mut DownTrack, p: &MediaPacket) -> Result<(u16, u32), DropReason> {
        match dt.forward(p, p.arrival) {
            Forward::Send(h) => {
                assert_eq!(h.ssrc, SUB);
                assert_eq!(h.payload_type, OUT_PT);
                Ok((h.sequence, h.timestamp))
            }
            Forward::Drop(r) => Err(r),
        }
    }

    fn seq(dt: &mut DownTrack, p: &MediaPacket) -> Result<u16, DropReason> {
        fwd(dt, p).map(|(s, _)| s)
    }

    /// A video down-track already started at source seq 100 / ts 9000 at `t0`.
    fn started(t0: Instant) -> DownTrack {
        let mut dt = track(MediaKind::Video);
        assert_eq!(seq(&mut dt, &pkt(SRC, 100, 9000, true, t0)), Ok(FIRST_SEQ));
        dt
    }

    fn nacked(
        dt: &mut DownTrack,
        seqs: &[u16],
        buf: &RetransmitBuffer,
        now: Instant,
    ) -> Vec<(RtpHeaderOut, Bytes, bool)> {
        nacked_and_unrepairable(dt, seqs, buf, now).0
    }

    fn nacked_and_unrepairable(
        dt: &mut DownTrack,
        seqs: &[u16],
        buf: &RetransmitBuffer,
        now: Instant,
    ) -> (Vec<(RtpHeaderOut, Bytes, bool)>, usize) {
        let mut got = Vec::new();
        let unrepairable = dt.on_nack(seqs.iter().copied(), buf, now, |r| {
            got.push((r.header, r.payload, r.rtx))
        });
        (got, unrepairable)
    }

    #[test]
    fn config_is_checked() {
        let mut c = config(MediaKind::Video);
        c.history = 100;
        assert_eq!(
            DownTrack::new(c, SRC).unwrap_err(),
            DownTrackError::History(CapacityError(100))
        );
        let mut c = config(MediaKind::Video);
        c.clock_rate = 0;
        assert_eq!(
            DownTrack::new(c, SRC).unwrap_err(),
            DownTrackError::ZeroClockRate
        );
        let mut m = PayloadTypeMap::new();
        assert_eq!(
            m.insert(128, 96, None),
            Err(DownTrackError::PayloadType(128))
        );
        assert_eq!(
            m.insert(96, 96, Some(200)),
            Err(DownTrackError::PayloadType(200))
        );
        assert_eq!(m.get(96), None);
        m.insert(96, 98, None).unwrap();
        assert_eq!(m.get(96), Some((98, None)));
        assert_eq!(m.get(96 + 128), None);
        let mut e = ExtensionMap::new();
        assert_eq!(e.insert(0, 1), Err(DownTrackError::ExtensionId));
        assert_eq!(e.insert(1, 0), Err(DownTrackError::ExtensionId));
        e.insert(200, 4).unwrap();
        assert_eq!(e.get(200), Some(4));
        assert_eq!(e.get(3), None);
    }

    #[test]
    fn a_new_track_on_a_section_that_carried_one_waits_before_anything_goes_out() {
        let t0 = Instant::now();
        // A fresh section starts at once: its receiver starts at whatever it gets first.
        let mut dt = track(MediaKind::Video);
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC));
        assert_eq!(seq(&mut dt, &pkt(SRC, 100, 9000, true, t0)), Ok(FIRST_SEQ));
        // A resume is the same track on a section the client receives already: no wait.
        dt.set_paused(true);
        dt.set_paused(false);
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC));
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 9000 + FRAME_TS, true, t0 + FRAME)),
            Ok(FIRST_SEQ + 1)
        );
        // Source 102 is lost upstream: a hole, then the track ends.
        assert_eq!(
            seq(
                &mut dt,
                &pkt(SRC, 103, 9000 + 3 * FRAME_TS, false, t0 + FRAME * 3)
            ),
            Ok(FIRST_SEQ + 3)
        );
        let _ = std::iter::from_fn(|| dt.poll_fill(t0 + FRAME * 3)).count(); // the lead-in
        dt.switch_source(SRC2);
        // For REUSE_SETTLE from the first packet or poll: nothing, not even the padding that
        // closes the previous track's hole, and no keyframe request.
        let t1 = t0 + FRAME * 4;
        for (i, at) in [t1, t1 + REUSE_SETTLE / 2, t1 + REUSE_SETTLE - FRAME]
            .into_iter()
            .enumerate()
        {
            assert_eq!(dt.poll_keyframe_request(at), None);
            assert!(dt.poll_fill(at).is_none());
            assert_eq!(
                seq(&mut dt, &pkt(SRC2, 7 + i as u16, 1 + i as u32, true, at)),
                Err(DropReason::Settling)
            );
        }
        // Then the hole closes, the keyframe is asked for at once, and the track starts at its
        // next keyframe right after the last number sent.
        let t2 = t1 + REUSE_SETTLE;
        assert_eq!(
            fills(&mut dt, t2),
            vec![(FIRST_SEQ + 2, FIRST_TS + FRAME_TS, false)]
        );
        assert_eq!(dt.poll_keyframe_request(t2), Some(SRC2));
        assert_eq!(
            seq(&mut dt, &pkt(SRC2, 10, 4, false, t2)),
            Err(DropReason::WaitingForKeyframe)
        );
        assert_eq!(seq(&mut dt, &pkt(SRC2, 11, 5, true, t2)), Ok(FIRST_SEQ + 4));
        // Audio never waits (no keyframe, and a lost packet costs 20 ms).
        let mut audio = track(MediaKind::Audio);
        assert_eq!(seq(&mut audio, &pkt(SRC, 1, 960, false, t0)), Ok(FIRST_SEQ));
        audio.switch_source(SRC2);
        assert_eq!(
            seq(&mut audio, &pkt(SRC2, 1, 960, false, t0)),
            Ok(FIRST_SEQ + 1)
        );
    }

    #[test]
    fn video_waits_for_a_keyframe_without_a_sequence_gap() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        assert!(dt.wants_keyframe());
        for s in 10..15 {
            let p = pkt(SRC, s, u32::from(s) * FRAME_TS, false, t0);
            assert_eq!(seq(&mut dt, &p), Err(DropReason::WaitingForKeyframe));
        }
        let at = t0 + FRAME;
        assert_eq!(
            fwd(&mut dt, &pkt(SRC, 15, 15 * FRAME_TS, true, at)),
            Ok((FIRST_SEQ, FIRST_TS))
        );
        assert!(!dt.wants_keyframe());
        // The next packet follows on directly; its timestamp keeps the source's spacing.
        assert_eq!(
            fwd(&mut dt, &pkt(SRC, 16, 16 * FRAME_TS, false, at + FRAME)),
            Ok((FIRST_SEQ + 1, FIRST_TS + FRAME_TS))
        );
        // Late packets from before the start are not forwarded.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 14, 14 * FRAME_TS, false, at)),
            Err(DropReason::Stale)
        );
    }

    #[test]
    fn keyframe_requests_on_start_repeat_and_stop_at_the_keyframe() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC));
        assert_eq!(
            dt.poll_keyframe_request(t0 + Duration::from_millis(100)),
            None
        );
        let t1 = t0 + KEYFRAME_REQUEST_INTERVAL;
        assert_eq!(dt.poll_keyframe_request(t1), Some(SRC));
        seq(&mut dt, &pkt(SRC, 1, 0, true, t1)).unwrap();
        assert!(!dt.wants_keyframe());
        assert_eq!(dt.poll_keyframe_request(t1 + Duration::from_secs(5)), None);
    }

    #[test]
    fn audio_starts_at_once_and_never_asks_for_keyframes() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Audio);
        assert!(!dt.wants_keyframe());
        assert_eq!(dt.poll_keyframe_request(t0), None);
        assert_eq!(
            fwd(&mut dt, &pkt(SRC, 500, 123_456, false, t0)),
            Ok((FIRST_SEQ, FIRST_TS))
        );
        assert_eq!(
            fwd(&mut dt, &pkt(SRC, 501, 123_456 + 960, false, t0)),
            Ok((FIRST_SEQ + 1, FIRST_TS + 960))
        );
    }

    #[test]
    fn upstream_loss_stays_a_gap_and_is_filled_later() {
        let t0 = Instant::now();
        let mut dt = started(t0);
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 0, false, t0)),
            Ok(FIRST_SEQ + 1)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 104, 0, false, t0)),
            Ok(FIRST_SEQ + 4)
        );
        // The publisher's retransmissions arrive late and fill the gap in place.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 103, 0, false, t0)),
            Ok(FIRST_SEQ + 3)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 102, 0, false, t0)),
            Ok(FIRST_SEQ + 2)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 105, 0, false, t0)),
            Ok(FIRST_SEQ + 5)
        );
    }

    #[test]
    fn reordered_packets_keep_their_order_and_duplicates_are_dropped() {
        let t0 = Instant::now();
        let mut dt = started(t0);
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 102, 0, false, t0)),
            Ok(FIRST_SEQ + 2)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 0, false, t0)),
            Ok(FIRST_SEQ + 1)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 0, false, t0)),
            Err(DropReason::Duplicate)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 102, 0, false, t0)),
            Err(DropReason::Duplicate)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 100, 0, true, t0)),
            Err(DropReason::Duplicate)
        );
        // Older than the reorder window (the history size): dropped.
        let mut dt = started(t0);
        seq(&mut dt, &pkt(SRC, 100 + 600, 0, false, t0)).unwrap();
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 150, 0, false, t0)),
            Err(DropReason::Stale)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 300, 0, false, t0)),
            Ok(FIRST_SEQ + 200)
        );
    }

    #[test]
    fn sfu_drops_leave_no_gap_and_late_packets_map_at_their_position() {
        let t0 = Instant::now();
        let mut dt = started(t0);
        let mut padding = pkt(SRC, 102, 0, false, t0);
        padding.payload = Bytes::new();
        padding.padding = 200;
        // 101 is lost upstream for now, 102 is padding, 103 unmapped, 104 media.
        assert_eq!(seq(&mut dt, &padding), Err(DropReason::Padding));
        let mut unmapped = pkt(SRC, 103, 0, false, t0);
        unmapped.payload_type = 127;
        assert_eq!(
            seq(&mut dt, &unmapped),
            Err(DropReason::UnmappedPayloadType)
        );
        // The upstream gap (101) stays visible, the two skipped packets leave none.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 104, 0, false, t0)),
            Ok(FIRST_SEQ + 2)
        );
        // 101 arrives late: it takes its place before the skipped run.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 0, false, t0)),
            Ok(FIRST_SEQ + 1)
        );
        // Late copies of skipped packets stay skipped.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 102, 0, false, t0)),
            Err(DropReason::Stale)
        );
        // More skips after a gap inside a run: 106 skipped, 107 lost, 108 skipped, 109 media.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 105, 0, false, t0)),
            Ok(FIRST_SEQ + 3)
        );
        let mut p = pkt(SRC, 106, 0, false, t0);
        p.payload_type = 127;
        seq(&mut dt, &p).unwrap_err();
        p.sequence = 108;
        seq(&mut dt, &p).unwrap_err();
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 109, 0, false, t0)),
            Ok(FIRST_SEQ + 4)
        );
        // 107 was swallowed by the run: the subscriber never saw a gap for it.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 107, 0, false, t0)),
            Err(DropReason::Stale)
        );
        // Many separate runs: the oldest are forgotten, and late packets before them dropped.
        // Each round: s skipped, s + 1 lost upstream, s + 2 forwarded.
        let mut s = 110;
        let mut last = 0;
        for _ in 0..MAX_DROP_RUNS + 2 {
            p.sequence = s;
            seq(&mut dt, &p).unwrap_err();
            last = seq(&mut dt, &pkt(SRC, s + 2, 0, false, t0)).unwrap();
            s += 3;
        }
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 111, 0, false, t0)),
            Err(DropReason::Stale)
        );
        // The newest runs are remembered: the last round's lost packet fills the gap just
        // before the last forwarded one.
        assert_eq!(seq(&mut dt, &pkt(SRC, s - 2, 0, false, t0)), Ok(last - 1));
        assert_eq!(
            seq(&mut dt, &pkt(SRC, s - 3, 0, false, t0)),
            Err(DropReason::Stale)
        );
    }

    #[test]
    fn sequence_numbers_wrap_on_both_sides() {
        let t0 = Instant::now();
        let mut c = config(MediaKind::Audio);
        c.initial_sequence = 65_534;
        let mut dt = DownTrack::new(c, SRC).unwrap();
        let mut out = Vec::new();
        for s in [65_533u16, 65_534, 65_535, 0, 2, 1, 3] {
            out.push(seq(&mut dt, &pkt(SRC, s, 0, false, t0)).unwrap());
        }
        assert_eq!(out, vec![65_534, 65_535, 0, 1, 3, 2, 4]);
        // Timestamps wrap too.
        let mut dt = DownTrack::new(
            DownTrackConfig {
                initial_timestamp: u32::MAX - 10,
                ..config(MediaKind::Audio)
            },
            SRC,
        )
        .unwrap();
        assert_eq!(
            fwd(&mut dt, &pkt(SRC, 1, 5, false, t0)).unwrap().1,
            u32::MAX - 10
        );
        assert_eq!(fwd(&mut dt, &pkt(SRC, 2, 965, false, t0)).unwrap().1, 949);
    }

    #[test]
    fn a_switch_of_source_continues_sequence_and_clock() {
        let t0 = Instant::now();
        let mut dt = started(t0);
        let mut last = (FIRST_SEQ, FIRST_TS);
        for i in 1..10u16 {
            let at = t0 + FRAME * u32::from(i);
            last = fwd(
                &mut dt,
                &pkt(SRC, 100 + i, 9000 + u32::from(i) * FRAME_TS, false, at),
            )
            .unwrap();
        }
        assert_eq!(last, (FIRST_SEQ + 9, FIRST_TS + 9 * FRAME_TS));
        let last_at = t0 + FRAME * 9;

        dt.switch_source(SRC2);
        assert_eq!(dt.source_ssrc(), SRC2);
        assert!(dt.wants_keyframe());
        // The section carried a track: the new one waits REUSE_SETTLE (the client may not have
        // applied the answer yet), keyframes included, and is asked for its keyframe after.
        assert_eq!(dt.poll_keyframe_request(last_at), None);
        assert_eq!(
            seq(&mut dt, &pkt(SRC2, 6999, 900_000, true, last_at)),
            Err(DropReason::Settling)
        );
        let settled = last_at + REUSE_SETTLE;
        assert_eq!(dt.poll_keyframe_request(settled), Some(SRC2));
        // Still in flight from the old source: dropped.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 110, 0, false, settled)),
            Err(DropReason::OtherSource)
        );
        // The new source, before its keyframe: dropped.
        assert_eq!(
            seq(&mut dt, &pkt(SRC2, 7000, 1_000_000, false, settled)),
            Err(DropReason::WaitingForKeyframe)
        );
        // Its keyframe 500 ms after the last output: +45 000 at 90 kHz, seq + 1.
        let at = last_at + Duration::from_millis(500);
        assert_eq!(
            fwd(&mut dt, &pkt(SRC2, 7003, 4_000_000_000, true, at)),
            Ok((last.0 + 1, last.1 + 45_000))
        );
        assert!(!dt.wants_keyframe());
        assert_eq!(
            fwd(
                &mut dt,
                &pkt(SRC2, 7004, 4_000_000_000 + FRAME_TS, false, at + FRAME)
            ),
            Ok((last.0 + 2, last.1 + 45_000 + FRAME_TS))
        );
        // New-source packets from before its keyframe stay out.
        assert_eq!(
            seq(&mut dt, &pkt(SRC2, 7002, 1_000_000, false, at)),
            Err(DropReason::Stale)
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 111, 0, true, at)),
            Err(DropReason::OtherSource)
        );
    }

    #[test]
    fn an_audio_switch_needs_no_keyframe() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Audio);
        fwd(&mut dt, &pkt(SRC, 1, 960, false, t0)).unwrap();
        dt.switch_source(SRC2);
        assert!(!dt.wants_keyframe());
        let at = t0 + Duration::from_millis(20);
        assert_eq!(
            fwd(&mut dt, &pkt(SRC2, 40_000, 7, false, at)),
            Ok((FIRST_SEQ + 1, FIRST_TS + 960))
        );
    }

    #[test]
    fn a_switch_before_anything_was_sent_starts_at_the_initial_numbers() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        dt.switch_source(SRC2);
        assert_eq!(
            fwd(
                &mut dt,
                &pkt(SRC2, 9, 77, true, t0 + Duration::from_secs(3))
            ),
            Ok((FIRST_SEQ, FIRST_TS))
        );
    }

    #[test]
    fn payload_types_and_extensions_are_mapped() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        let mut p = pkt(SRC, 1, 0, true, t0);
        let mut e = HeaderExtensions::new();
        e.push(2, Bytes::from_static(b"two"));
        e.push(1, Bytes::from_static(b"one"));
        p.extensions = e;
        let Forward::Send(h) = dt.forward(&p, t0) else {
            panic!("not forwarded");
        };
        assert_eq!(h.payload_type, OUT_PT);
        assert!(h.marker);
        let ext: Vec<_> = h.extensions(&p).map(|(id, v)| (id, &v[..])).collect();
        assert_eq!(ext, vec![(5, &b"two"[..]), (3, &b"one"[..])]);
        assert_eq!(h.extension_count(), 2);

        // An id the subscriber did not negotiate is left out.
        let mut p = pkt(SRC, 2, 0, true, t0);
        let mut e = HeaderExtensions::new();
        e.push(4, Bytes::from_static(b"unknown"));
        e.push(1, Bytes::from_static(b"one"));
        p.extensions = e;
        let Forward::Send(h) = dt.forward(&p, t0) else {
            panic!("not forwarded");
        };
        let ext: Vec<_> = h.extensions(&p).map(|(id, v)| (id, &v[..])).collect();
        assert_eq!(ext, vec![(3, &b"one"[..])]);
        assert_eq!(h.extension_count(), 1);
    }

    #[test]
    fn a_pause_leaves_no_gap_and_resumes_at_a_keyframe_on_the_same_clock() {
        let t0 = Instant::now();
        let mut dt = started(t0);
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 9000 + FRAME_TS, false, t0)),
            Ok(FIRST_SEQ + 1)
        );
        dt.set_paused(true);
        assert!(dt.is_paused());
        for s in 102..200 {
            assert_eq!(
                seq(&mut dt, &pkt(SRC, s, 0, s % 10 == 0, t0)),
                Err(DropReason::Paused)
            );
        }
        // Paused: no keyframe wanted.
        assert!(!dt.wants_keyframe());
        assert_eq!(dt.poll_keyframe_request(t0), None);
        dt.set_paused(false);
        assert!(dt.wants_keyframe());
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC));
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 200, 0, false, t0)),
            Err(DropReason::WaitingForKeyframe)
        );
        // The source's clock ran on during the pause, and so does the output's.
        let ts = 9000 + 100 * FRAME_TS;
        assert_eq!(
            fwd(&mut dt, &pkt(SRC, 201, ts, true, t0)),
            Ok((FIRST_SEQ + 2, FIRST_TS + 100 * FRAME_TS))
        );
        // Paused and resumed before the first keyframe: asks again at once.
        let mut dt = track(MediaKind::Video);
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC));
        dt.set_paused(true);
        dt.set_paused(false);
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC));
        // Audio resumes at the next packet.
        let mut dt = track(MediaKind::Audio);
        seq(&mut dt, &pkt(SRC, 5, 0, false, t0)).unwrap();
        dt.set_paused(true);
        seq(&mut dt, &pkt(SRC, 6, 960, false, t0)).unwrap_err();
        dt.set_paused(false);
        assert!(!dt.wants_keyframe());
        assert_eq!(
            fwd(&mut dt, &pkt(SRC, 9, 4 * 960, false, t0)),
            Ok((FIRST_SEQ + 1, FIRST_TS + 4 * 960))
        );
    }

    /// A started down-track that forwarded source 100..=110 (out FIRST_SEQ..=FIRST_SEQ+10),
    /// all kept in a buffer.
    fn with_buffer(t0: Instant, capacity: usize) -> (DownTrack, RetransmitBuffer) {
        let mut dt = started(t0);
        let mut buf = RetransmitBuffer::new(capacity).unwrap();
        buf.insert(pkt(SRC, 100, 9000, true, t0));
        for s in 101..=110u16 {
            let p = pkt(SRC, s, 9000 + u32::from(s - 100) * FRAME_TS, false, t0);
            dt.forward(&p, t0).header().unwrap();
            buf.insert(p);
        }
        (dt, buf)
    }

    #[test]
    fn a_nack_is_answered_from_the_buffer_with_the_original_header() {
        let t0 = Instant::now();
        let mut c = config(MediaKind::Video);
        c.payload_types.insert(VIDEO_PT, OUT_PT, None).unwrap();
        let mut dt = DownTrack::new(c, SRC).unwrap();
        let mut buf = RetransmitBuffer::new(16).unwrap();
        let mut p = pkt(SRC, 100, 9000, true, t0);
        p.extensions.push(1, Bytes::from_static(b"x"));
        let Forward::Send(original) = dt.forward(&p, t0) else {
            panic!()
        };
        buf.insert(p.clone());
        let before = dt.sender_stats();
        let got = nacked(&mut dt, &[FIRST_SEQ], &buf, t0 + Duration::from_millis(40));
        assert_eq!(got.len(), 1);
        let (h, payload, rtx) = &got[0];
        assert!(!rtx);
        assert_eq!(*h, original);
        // The very same bytes, not a copy.
        assert_eq!(payload.as_ptr(), p.payload.as_ptr());
        let after = dt.sender_stats();
        assert_eq!(after.packets, before.packets + 1);
        assert_eq!(after.octets, before.octets + 20);
    }

    #[test]
    fn a_nack_with_rtx_sends_the_original_sequence_number_first() {
        let t0 = Instant::now();
        let mut c = config(MediaKind::Video);
        c.rtx_ssrc = Some(SUB_RTX);
        let mut dt = DownTrack::new(c, SRC).unwrap();
        let mut buf = RetransmitBuffer::new(16).unwrap();
        for s in 100..105u16 {
            let p = pkt(SRC, s, 9000 + u32::from(s - 100) * FRAME_TS, s == 100, t0);
            dt.forward(&p, t0).header().unwrap();
            buf.insert(p);
        }
        let got = nacked(&mut dt, &[FIRST_SEQ + 2, FIRST_SEQ + 4], &buf, t0);
        assert_eq!(got.len(), 2);
        let (h, payload, rtx) = &got[0];
        assert!(rtx);
        assert_eq!(h.ssrc, SUB_RTX);
        assert_eq!(h.payload_type, OUT_RTX_PT);
        assert_eq!(h.sequence, 7);
        assert_eq!(h.timestamp, FIRST_TS + 2 * FRAME_TS);
        assert_eq!(&payload[..2], &(FIRST_SEQ + 2).to_be_bytes());
        assert_eq!(&payload[2..], &[102u8; 20][..]);
        assert_eq!(got[1].0.sequence, 8);
        assert_eq!(&got[1].1[..2], &(FIRST_SEQ + 4).to_be_bytes());
        let stats = dt.sender_stats();
        assert_eq!((stats.rtx_packets, stats.rtx_octets), (2, 44));
        assert_eq!(stats.packets, 5);
    }

    /// Every padding packet `dt` has to send at `now`: (sequence, timestamp, current).
    fn fills(dt: &mut DownTrack, now: Instant) -> Vec<(u16, u32, bool)> {
        std::iter::from_fn(|| dt.poll_fill(now))
            .map(|f| match f.osn {
                // Padding under a number never used.
                None => {
                    assert_eq!((f.header.ssrc, f.header.payload_type), (SUB, OUT_PT));
                    (f.header.sequence, f.header.timestamp, f.current)
                }
                // An empty RTX packet for a number already used on the media SSRC.
                Some(osn) => {
                    assert_eq!(
                        (f.header.ssrc, f.header.payload_type),
                        (SUB_RTX, OUT_RTX_PT)
                    );
                    (osn, f.header.timestamp, f.current)
                }
            })
            .collect()
    }

    /// [`started`], with the padding before its first packet sent.
    fn led_in(t0: Instant) -> DownTrack {
        let mut dt = started(t0);
        assert_eq!(fills(&mut dt, t0), vec![(FIRST_SEQ - 1, FIRST_TS, false)]);
        dt
    }

    /// [`led_in`], for a subscriber that negotiated RTX.
    fn led_in_with_rtx(t0: Instant) -> DownTrack {
        let mut c = config(MediaKind::Video);
        c.rtx_ssrc = Some(SUB_RTX);
        let mut dt = DownTrack::new(c, SRC).unwrap();
        assert_eq!(seq(&mut dt, &pkt(SRC, 100, 9000, true, t0)), Ok(FIRST_SEQ));
        assert_eq!(fills(&mut dt, t0), vec![(FIRST_SEQ - 1, FIRST_TS, false)]);
        dt
    }

    #[test]
    fn a_video_stream_starts_with_padding_before_its_keyframe() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        assert!(dt.poll_fill(t0).is_none());
        assert_eq!(seq(&mut dt, &pkt(SRC, 100, 9000, true, t0)), Ok(FIRST_SEQ));
        // One padding packet numbered just before the keyframe, with its timestamp: a receiver
        // that loses the keyframe's first packet still sees a gap to NACK.
        assert_eq!(fills(&mut dt, t0), vec![(FIRST_SEQ - 1, FIRST_TS, false)]);
        // Only at the very start: a switch or a resume continues a known sequence.
        dt.switch_source(SRC2);
        assert_eq!(dt.poll_keyframe_request(t0), None);
        let t1 = t0 + REUSE_SETTLE;
        assert_eq!(seq(&mut dt, &pkt(SRC2, 5, 1, true, t1)), Ok(FIRST_SEQ + 1));
        assert!(fills(&mut dt, t1).is_empty());
        // Audio starts without one (nobody NACKs audio).
        let mut audio = track(MediaKind::Audio);
        assert_eq!(seq(&mut audio, &pkt(SRC, 1, 0, false, t0)), Ok(FIRST_SEQ));
        assert!(fills(&mut audio, t0).is_empty());
    }

    #[test]
    fn a_hole_the_publisher_does_not_repair_closes_with_padding_after_the_patience() {
        let t0 = Instant::now();
        let mut dt = led_in_with_rtx(t0);
        // Source 101 is lost before the SFU: output FIRST_SEQ + 1 is a hole.
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 102, 9000 + FRAME_TS * 2, false, t0)),
            Ok(FIRST_SEQ + 2)
        );
        assert!(dt.has_holes());
        // The publisher may still resend it: a NACK for it is not answered, nothing closes.
        let buf = RetransmitBuffer::new(64).unwrap();
        assert!(nacked(&mut dt, &[FIRST_SEQ + 1], &buf, t0).is_empty());
        assert!(fills(&mut dt, t0 + HOLE_PATIENCE / 2).is_empty());
        // It does not: padding closes the hole, with the timestamp of the packet before it, and
        // the frame is lost (current source: ask for a keyframe).
        assert_eq!(
            fills(&mut dt, t0 + HOLE_PATIENCE),
            vec![(FIRST_SEQ + 1, FIRST_TS, true)]
        );
        assert!(!dt.has_holes());
        // The late original is not forwarded after the padding; a NACK gets it closed again,
        // by an empty RTX packet this time (the number is used on the media SSRC now).
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 9000 + FRAME_TS, false, t0)),
            Err(DropReason::Duplicate)
        );
        let later = t0 + HOLE_PATIENCE + Duration::from_secs(1);
        assert!(nacked(&mut dt, &[FIRST_SEQ + 1], &buf, later).is_empty());
        assert_eq!(
            fills(&mut dt, later),
            vec![(FIRST_SEQ + 1, FIRST_TS, false)]
        );
    }

    /// SRTP derives its keystream (AES-CM) and nonce (AES-GCM) from SSRC and sequence number: a
    /// number something went out under must never carry other bytes on the media SSRC. What a
    /// NACK finds unrepairable there is closed by an empty RTX packet (its own, fresh number),
    /// or, without RTX, not at all; numbers never used are still closed with padding.
    #[test]
    fn a_number_already_used_on_the_media_ssrc_is_never_padded() {
        let t0 = Instant::now();
        for rtx in [true, false] {
            let mut dt = if rtx { led_in_with_rtx(t0) } else { led_in(t0) };
            let buf = RetransmitBuffer::new(64).unwrap();
            // FIRST_SEQ + 1 is a hole (never used); FIRST_SEQ + 2 is sent.
            assert_eq!(
                seq(&mut dt, &pkt(SRC, 102, 9000 + FRAME_TS * 2, false, t0)),
                Ok(FIRST_SEQ + 2)
            );
            let at = t0 + HOLE_PATIENCE;
            let filled: Vec<_> = std::iter::from_fn(|| dt.poll_fill(at)).collect();
            assert_eq!(filled.len(), 1);
            assert_eq!((filled[0].header.ssrc, filled[0].osn), (SUB, None));
            assert_eq!(filled[0].header.sequence, FIRST_SEQ + 1);
            // The sent packet is NACKed and gone from the buffer (empty here); the padded one
            // is NACKed again too.
            let later = at + Duration::from_secs(1);
            let (resent, unrepairable) =
                nacked_and_unrepairable(&mut dt, &[FIRST_SEQ + 1, FIRST_SEQ + 2], &buf, later);
            assert_eq!((resent.len(), unrepairable), (0, 1));
            let closed: Vec<_> = std::iter::from_fn(|| dt.poll_fill(later)).collect();
            assert!(closed.iter().all(|f| f.header.ssrc != SUB), "{closed:?}");
            if rtx {
                let osns: Vec<_> = closed.iter().map(|f| f.osn).collect();
                assert_eq!(osns, [Some(FIRST_SEQ + 1), Some(FIRST_SEQ + 2)]);
                // Each on the RTX stream's next number.
                assert_eq!(closed[1].header.sequence, closed[0].header.sequence + 1);
            } else {
                assert!(closed.is_empty());
            }
        }
    }

    #[test]
    fn a_hole_the_publisher_repairs_in_time_is_not_padded() {
        let t0 = Instant::now();
        let mut dt = led_in(t0);
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 103, 9000 + FRAME_TS * 3, false, t0)),
            Ok(FIRST_SEQ + 3)
        );
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 101, 9000 + FRAME_TS, false, t1)),
            Ok(FIRST_SEQ + 1)
        );
        // 102 never comes: only it is closed.
        assert_eq!(
            fills(&mut dt, t0 + HOLE_PATIENCE),
            vec![(FIRST_SEQ + 2, FIRST_TS + FRAME_TS, true)]
        );
    }

    #[test]
    fn holes_a_previous_source_left_close_at_the_switch_and_its_packets_are_padded_on_nack() {
        let t0 = Instant::now();
        let mut dt = led_in_with_rtx(t0);
        let mut buf = RetransmitBuffer::new(64).unwrap();
        buf.insert(pkt(SRC, 100, 9000, true, t0));
        // 101 lost upstream (hole at FIRST_SEQ + 1); 102 sent (and, say, lost downstream).
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 102, 9000 + FRAME_TS * 2, false, t0)),
            Ok(FIRST_SEQ + 2)
        );
        // The publisher leaves; the slot carries another track. Nothing goes out on the section
        // until the settle is over (the client may not have applied the answer yet).
        dt.switch_source(SRC2);
        let t1 = t0 + Duration::from_millis(10);
        assert!(fills(&mut dt, t1).is_empty());
        let t1 = t1 + REUSE_SETTLE;
        assert_eq!(fills(&mut dt, t1), vec![(FIRST_SEQ + 1, FIRST_TS, false)]);
        // The new track starts right after, with a keyframe: no number in between.
        assert_eq!(seq(&mut dt, &pkt(SRC2, 7, 1, true, t1)), Ok(FIRST_SEQ + 3));
        // NACKs for the old track's packets are answered with empty RTX packets (its packets
        // are gone, and their numbers were used), not with the new track's, and do not ask the
        // new publisher for a keyframe.
        let (resent, unrepairable) =
            nacked_and_unrepairable(&mut dt, &[FIRST_SEQ, FIRST_SEQ + 2], &buf, t1);
        assert_eq!((resent.len(), unrepairable), (0, 0));
        assert_eq!(
            fills(&mut dt, t1),
            vec![
                (FIRST_SEQ, FIRST_TS, false),
                (FIRST_SEQ + 2, FIRST_TS + FRAME_TS * 2, false)
            ]
        );
    }

    #[test]
    fn a_packet_gone_from_the_buffer_is_padded_and_counted_unrepairable() {
        let t0 = Instant::now();
        let mut dt = led_in_with_rtx(t0);
        let mut buf = RetransmitBuffer::new(16).unwrap();
        buf.insert(pkt(SRC, 100, 9000, true, t0));
        for s in 101..=110u16 {
            let p = pkt(SRC, s, 9000 + u32::from(s - 100) * FRAME_TS, false, t0);
            dt.forward(&p, t0).header().unwrap();
            buf.insert(p);
        }
        for s in 111..140u16 {
            let p = pkt(SRC, s, 0, false, t0);
            dt.forward(&p, t0).header().unwrap();
            buf.insert(p);
        }
        let (resent, unrepairable) = nacked_and_unrepairable(&mut dt, &[FIRST_SEQ + 1], &buf, t0);
        assert_eq!((resent.len(), unrepairable), (0, 1));
        let got = fills(&mut dt, t0);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].2), (FIRST_SEQ + 1, true));
    }

    #[test]
    fn holes_are_bounded() {
        let t0 = Instant::now();
        let mut dt = led_in(t0);
        // Every other packet lost, far more holes than remembered.
        for i in 1..200u16 {
            dt.forward(&pkt(SRC, 100 + 2 * i, 0, false, t0), t0);
        }
        assert!(dt.holes.len() <= 2 * MAX_HOLES);
        // Closing them all is bounded too.
        assert!(fills(&mut dt, t0 + HOLE_PATIENCE).len() <= 2 * MAX_HOLES);
    }

    #[test]
    fn nacks_for_unknown_or_evicted_packets_are_ignored_and_the_unrepairable_counted() {
        let t0 = Instant::now();
        let (mut dt, buf) = with_buffer(t0, 16);
        // Never sent (future), from before the start (far and near): not sent, so nothing the
        // subscriber lost.
        assert_eq!(
            nacked_and_unrepairable(
                &mut dt,
                &[FIRST_SEQ + 11, FIRST_SEQ.wrapping_sub(1000), FIRST_SEQ - 1],
                &buf,
                t0
            ),
            (Vec::new(), 0)
        );
        // A gap (lost upstream) is not in the history: the publisher may still resend it.
        let p = pkt(SRC, 113, 0, false, t0);
        dt.forward(&p, t0).header().unwrap();
        assert_eq!(
            nacked_and_unrepairable(&mut dt, &[FIRST_SEQ + 11, FIRST_SEQ + 12], &buf, t0),
            (Vec::new(), 0)
        );
        // In the history but evicted from the buffer: unrepairable.
        let (mut dt, mut buf) = with_buffer(t0, 16);
        for s in 111..140u16 {
            let p = pkt(SRC, s, 0, false, t0);
            dt.forward(&p, t0).header().unwrap();
            buf.insert(p);
        }
        let (resent, unrepairable) = nacked_and_unrepairable(
            &mut dt,
            &[FIRST_SEQ + 1, FIRST_SEQ + 2, FIRST_SEQ + 39],
            &buf,
            t0,
        );
        assert_eq!((resent.len(), unrepairable), (1, 2));
        // Sent, but older than the history ring: unrepairable too.
        let mut c = config(MediaKind::Video);
        c.history = 16;
        let mut dt = DownTrack::new(c, SRC).unwrap();
        for s in 0..40u16 {
            dt.forward(&pkt(SRC, s, 0, s == 0, t0), t0)
                .header()
                .unwrap();
        }
        assert_eq!(
            nacked_and_unrepairable(&mut dt, &[FIRST_SEQ + 2], &buf, t0).1,
            1
        );
        // Nothing sent yet: nothing to answer.
        let mut fresh = track(MediaKind::Video);
        assert_eq!(
            nacked_and_unrepairable(&mut fresh, &[FIRST_SEQ], &buf, t0),
            (Vec::new(), 0)
        );
    }

    #[test]
    fn the_same_packet_is_resent_at_most_once_per_round_trip() {
        let t0 = Instant::now();
        let (mut dt, buf) = with_buffer(t0, 16);
        let n = FIRST_SEQ + 3;
        assert_eq!(nacked(&mut dt, &[n, n], &buf, t0).len(), 1);
        assert!(nacked(&mut dt, &[n], &buf, t0 + Duration::from_millis(50)).is_empty());
        // Another packet is not held back.
        assert_eq!(
            nacked(&mut dt, &[n + 1], &buf, t0 + Duration::from_millis(50)).len(),
            1
        );
        assert_eq!(
            nacked(&mut dt, &[n], &buf, t0 + DEFAULT_RESEND_INTERVAL).len(),
            1
        );
        // A measured RTT replaces the guess.
        dt.set_rtt(Duration::from_millis(300));
        let t1 = t0 + DEFAULT_RESEND_INTERVAL * 3;
        assert!(nacked(&mut dt, &[n], &buf, t1).is_empty());
        assert_eq!(
            nacked(&mut dt, &[n], &buf, t0 + Duration::from_millis(400)).len(),
            1
        );
    }

    #[test]
    fn nacks_for_a_previous_source_are_ignored() {
        let t0 = Instant::now();
        let (mut dt, buf) = with_buffer(t0, 16);
        dt.switch_source(SRC2);
        assert_eq!(dt.poll_keyframe_request(t0), None, "settling");
        assert!(nacked(&mut dt, &[FIRST_SEQ + 5], &buf, t0).is_empty());
        // The new source's packets (after the settle) are answered from its own buffer.
        let t1 = t0 + REUSE_SETTLE;
        let mut buf2 = RetransmitBuffer::new(16).unwrap();
        let p = pkt(SRC2, 50, 0, true, t1);
        assert_eq!(seq(&mut dt, &p), Ok(FIRST_SEQ + 11));
        buf2.insert(p);
        assert!(nacked(&mut dt, &[FIRST_SEQ + 5], &buf2, t1).is_empty());
        assert_eq!(nacked(&mut dt, &[FIRST_SEQ + 11], &buf2, t1).len(), 1);
    }

    #[test]
    fn sender_stats_give_a_consistent_rtp_wall_clock_pair() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        assert_eq!(dt.rtp_timestamp_at(t0), None);
        assert_eq!(dt.sender_stats(), SenderStats::default());
        seq(&mut dt, &pkt(SRC, 1, 0, true, t0)).unwrap();
        let at = t0 + FRAME;
        seq(&mut dt, &pkt(SRC, 2, FRAME_TS, false, at)).unwrap();
        // A reordered older frame does not move the pair back.
        seq(&mut dt, &pkt(SRC, 4, 3 * FRAME_TS, false, at)).unwrap();
        seq(&mut dt, &pkt(SRC, 3, 2 * FRAME_TS, false, at + FRAME)).unwrap();
        let s = dt.sender_stats();
        assert_eq!((s.packets, s.octets), (4, 80));
        assert_eq!(s.last_timestamp, Some((FIRST_TS + 3 * FRAME_TS, at)));
        assert_eq!(
            dt.rtp_timestamp_at(at + Duration::from_secs(1)),
            Some(FIRST_TS + 3 * FRAME_TS + 90_000)
        );
    }

    // ---- Simulcast layers -------------------------------------------------------------

    /// The temporal pattern of a VP8 layer with three temporal layers (L1T3), restarted by
    /// every keyframe.
    const TEMPORAL: [u8; 4] = [0, 2, 1, 2];

    /// One simulcast layer of a VP8 publisher: its own SSRC and its own sequence, timestamp,
    /// picture ID, TL0PICIDX and KEYIDX spaces.
    struct Layer {
        ssrc: u32,
        seq: u16,
        ts: u32,
        /// `None`: the layer writes no picture ID; `Some(false)`: 7 bits.
        wide: Option<bool>,
        pic: u16,
        tl0: u8,
        keyidx: u8,
        tpos: usize,
    }

    impl Layer {
        fn new(ssrc: u32, seq: u16, ts: u32, pic: u16, tl0: u8, keyidx: u8) -> Self {
            Self {
                ssrc,
                seq,
                ts,
                wide: Some(true),
                pic,
                tl0,
                keyidx,
                tpos: 0,
            }
        }

        /// The next frame, captured at `at`: two packets, the first starting the frame.
        fn frame(&mut self, keyframe: bool, at: Instant) -> Vec<MediaPacket> {
            if keyframe {
                self.tpos = 0;
                self.keyidx = self.keyidx.wrapping_add(1) & KEYIDX_MASK;
            }
            let tid = TEMPORAL[self.tpos % TEMPORAL.len()];
            self.tpos += 1;
            if tid == 0 {
                self.tl0 = self.tl0.wrapping_add(1);
            }
            self.ts = self.ts.wrapping_add(FRAME_TS);
            let packets = (0..2)
                .map(|i| {
                    let mut b = Vec::new();
                    match self.wide {
                        None => b.push(if i == 0 { 0x10 } else { 0x00 }),
                        Some(wide) => {
                            b.push(if i == 0 { 0x90 } else { 0x80 });
                            b.push(0xf0); // I L T K
                            if wide {
                                self.pic &= PICTURE_ID_MASK_15;
                                b.extend_from_slice(&(0x8000 | self.pic).to_be_bytes());
                            } else {
                                self.pic &= 0x7f;
                                b.push(self.pic as u8);
                            }
                            b.push(self.tl0);
                            b.push(tid << 6 | u8::from(tid > 0) << 5 | self.keyidx);
                        }
                    }
                    if i == 0 {
                        // The VP8 frame tag: P = 0 on a key frame.
                        b.push(if keyframe { 0x50 } else { 0x51 });
                    }
                    b.extend_from_slice(&[0xab; 10]);
                    let mut p =
                        MediaPacket::new(self.ssrc, self.seq, self.ts, VIDEO_PT, b.into(), at)
                            .with_codec(Some(VideoCodec::Vp8));
                    p.marker = i == 1;
                    self.seq = self.seq.wrapping_add(1);
                    p
                })
                .collect();
            // Every frame is a new picture.
            self.pic = self.pic.wrapping_add(1);
            packets
        }
    }

    /// What the subscriber got of one packet: sequence, timestamp, and its VP8 descriptor as
    /// the subscriber's decoder reads it (TID from the payload too).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Got {
        seq: u16,
        ts: u32,
        vp8: Vp8Descriptor,
        tid: u8,
        keyframe: bool,
    }

    fn got(h: &RtpHeaderOut, p: &MediaPacket) -> Got {
        assert_eq!(h.ssrc, SUB);
        let payload = h.payload(p);
        let vp8 = Vp8Descriptor::parse(&payload).expect("a whole descriptor");
        Got {
            seq: h.sequence,
            ts: h.timestamp,
            vp8,
            tid: payload.get(5).map_or(0, |tk| tk >> 6),
            keyframe: p.keyframe,
        }
    }

    #[test]
    fn switches_up_and_down_between_three_layers_at_their_keyframes_only() {
        let t0 = Instant::now();
        // Unrelated number spaces, some about to wrap.
        let mut layers = [
            Layer::new(SRC, 65_531, u32::MAX - 3 * FRAME_TS, 0x7ffd, 254, 30),
            Layer::new(SRC2, 1_000, 77, 100, 7, 3),
            Layer::new(SRC3, 40_000, 2_000_000_000, 5_000, 128, 0),
        ];
        let ssrcs = [SRC, SRC2, SRC3];
        // The subscriber's numbers wrap too, mid-run.
        let mut c = config(MediaKind::Video);
        c.initial_sequence = 65_500;
        c.initial_timestamp = u32::MAX - 10 * FRAME_TS;
        let mut dt = DownTrack::new(c, SRC).unwrap();
        // (frame, layer): when the SFU asks for a layer.
        let targets = [(3, 2), (10, 1), (17, 0), (24, 2), (30, 2)];
        // (frame, layer): keyframes, including ones of layers that are not the target.
        let keyframes = [
            (0, 0),
            (6, 2),
            (9, 1),
            (12, 2),
            (14, 1),
            (20, 0),
            (22, 1),
            (27, 2),
        ];
        let mut current = 0;
        let mut switches = Vec::new();
        let mut out: Vec<(usize, Got)> = Vec::new();
        for f in 0..36usize {
            let at = t0 + FRAME * f as u32;
            if let Some(&(_, l)) = targets.iter().find(|(tf, _)| *tf == f) {
                dt.set_target_layer(ssrcs[l]);
                assert_eq!(
                    dt.target_layer(),
                    (l != current).then_some(ssrcs[l]),
                    "frame {f}"
                );
            }
            for (l, layer) in layers.iter_mut().enumerate() {
                let key = keyframes.contains(&(f, l));
                for p in layer.frame(key, at) {
                    let target = dt.target_layer();
                    match dt.forward(&p, at) {
                        Forward::Send(h) => {
                            if l != current {
                                // Only ever at the target's keyframe.
                                assert_eq!(target, Some(ssrcs[l]), "frame {f} layer {l}");
                                assert!(p.keyframe, "frame {f} layer {l}");
                                current = l;
                                switches.push((f, l));
                            }
                            assert_eq!(dt.source_ssrc(), ssrcs[l]);
                            out.push((f, got(&h, &p)));
                        }
                        Forward::Drop(reason) => {
                            assert_ne!(l, current, "frame {f}: the current layer flows");
                            let expected = if target == Some(ssrcs[l]) {
                                DropReason::PendingLayer
                            } else {
                                DropReason::OtherSource
                            };
                            assert_eq!(reason, expected, "frame {f} layer {l}");
                        }
                    }
                }
            }
        }
        assert_eq!(switches, [(6, 2), (14, 1), (20, 0), (27, 2)]);
        assert_eq!(dt.target_layer(), None);
        assert_eq!(out[0].1.seq, 65_500);
        assert!(out.iter().any(|(_, g)| g.seq == 0), "the sequence wrapped");
        assert!(
            out.iter().any(|(_, g)| g.ts < FRAME_TS * 20),
            "the clock wrapped"
        );

        // No freeze: every frame time has output, pending switches included.
        for f in 0..36 {
            assert!(
                out.iter().any(|(of, _)| *of == f),
                "nothing sent at frame {f}"
            );
        }
        // One continuous stream.
        for w in out.windows(2) {
            let ((_, a), (f, b)) = (w[0], w[1]);
            assert_eq!(b.seq, a.seq.wrapping_add(1), "frame {f}: {a:?} -> {b:?}");
            let pa = a.vp8.picture_id.unwrap();
            let pb = b.vp8.picture_id.unwrap();
            assert!(pb.wide);
            if b.ts == a.ts {
                // The second packet of a frame: the same numbers.
                assert_eq!(a.vp8, b.vp8, "frame {f}");
                continue;
            }
            // A new frame: one frame interval on, the next picture, TL0PICIDX on at base
            // layer frames, KEYIDX on at keyframes.
            assert_eq!(
                b.ts,
                a.ts.wrapping_add(FRAME_TS),
                "frame {f}: {a:?} -> {b:?}"
            );
            assert_eq!(pb.value, (pa.value + 1) & PICTURE_ID_MASK_15, "frame {f}");
            let tl0_step = u8::from(b.tid == 0);
            assert_eq!(
                b.vp8.tl0picidx.unwrap(),
                a.vp8.tl0picidx.unwrap().wrapping_add(tl0_step),
                "frame {f}: {a:?} -> {b:?}"
            );
            let key_step = u8::from(b.keyframe);
            assert_eq!(
                b.vp8.keyidx.unwrap(),
                (a.vp8.keyidx.unwrap() + key_step) & KEYIDX_MASK,
                "frame {f}"
            );
        }
        // The first layer went through untouched; the keyframes counted 31 (the first
        // layer's own), then on by one at each later one: the four switches and the current
        // layer's own keyframe at frame 12.
        let keyidx: Vec<u8> = out
            .iter()
            .filter(|(_, g)| g.keyframe)
            .map(|(_, g)| g.vp8.keyidx.unwrap())
            .collect();
        assert_eq!(keyidx, [31, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_pending_switch_keeps_the_current_layer_and_asks_the_target_for_a_keyframe() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        let mut l0 = Layer::new(SRC, 10, 1000, 1, 1, 1);
        let mut l1 = Layer::new(SRC2, 20, 2000, 2, 2, 2);
        let mut l2 = Layer::new(SRC3, 30, 3000, 3, 3, 3);
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC));
        for p in l0.frame(true, t0) {
            dt.forward(&p, t0).header().unwrap();
        }
        // Flowing, no switch pending: nothing to ask.
        assert_eq!(dt.poll_keyframe_request(t0), None);

        dt.set_target_layer(SRC2);
        assert!(!dt.wants_keyframe(), "the current layer needs none");
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC2));
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(dt.poll_keyframe_request(soon), None);
        // The target's keyframe is lost: its later packets and delta frames do not switch.
        let lost = l1.frame(true, soon);
        assert_eq!(
            dt.forward(&lost[1], soon),
            Forward::Drop(DropReason::PendingLayer)
        );
        for p in l1.frame(false, soon) {
            assert_eq!(
                dt.forward(&p, soon),
                Forward::Drop(DropReason::PendingLayer)
            );
        }
        for p in l0.frame(false, soon) {
            dt.forward(&p, soon).header().unwrap();
        }
        // So it asks again, once per interval.
        let later = t0 + KEYFRAME_REQUEST_INTERVAL;
        assert_eq!(dt.poll_keyframe_request(later), Some(SRC2));
        assert_eq!(dt.poll_keyframe_request(later), None);

        // Another target: asked at once, and only that one.
        dt.set_target_layer(SRC3);
        assert_eq!(dt.target_layer(), Some(SRC3));
        assert_eq!(dt.poll_keyframe_request(later), Some(SRC3));
        // Setting the same target again does not ask again.
        dt.set_target_layer(SRC3);
        assert_eq!(dt.poll_keyframe_request(later), None);
        // Paused: nobody is asked.
        dt.set_paused(true);
        let much_later = later + Duration::from_secs(2);
        assert_eq!(dt.poll_keyframe_request(much_later), None);
        // A keyframe of the target while paused does not switch.
        let kf = l2.frame(true, much_later);
        assert_eq!(
            dt.forward(&kf[0], much_later),
            Forward::Drop(DropReason::Paused)
        );
        dt.set_paused(false);
        assert_eq!(dt.poll_keyframe_request(much_later), Some(SRC3));
        // The switch (the paused resume also wanted the current layer's keyframe: the
        // target's serves).
        for p in l2.frame(true, much_later) {
            dt.forward(&p, much_later).header().unwrap();
        }
        assert_eq!(dt.source_ssrc(), SRC3);
        assert_eq!(dt.target_layer(), None);
        assert!(!dt.wants_keyframe());
        assert_eq!(
            dt.poll_keyframe_request(much_later + Duration::from_secs(5)),
            None
        );
    }

    #[test]
    fn the_current_layer_as_target_cancels_a_pending_switch() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        let mut l0 = Layer::new(SRC, 10, 1000, 1, 1, 1);
        let mut l1 = Layer::new(SRC2, 20, 2000, 2, 2, 2);
        for p in l0.frame(true, t0) {
            dt.forward(&p, t0).header().unwrap();
        }
        dt.set_target_layer(SRC2);
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC2));
        dt.set_target_layer(SRC);
        assert_eq!(dt.target_layer(), None);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(dt.poll_keyframe_request(later), None);
        for p in l1.frame(true, later) {
            assert_eq!(
                dt.forward(&p, later),
                Forward::Drop(DropReason::OtherSource)
            );
        }
        for p in l0.frame(false, later) {
            dt.forward(&p, later).header().unwrap();
        }
        assert_eq!(dt.source_ssrc(), SRC);
        // A hard switch cancels a pending one too.
        dt.set_target_layer(SRC2);
        dt.switch_source(SRC3);
        assert_eq!(dt.target_layer(), None);
        assert_eq!(dt.poll_keyframe_request(later), None, "settling");
        assert_eq!(dt.poll_keyframe_request(later + REUSE_SETTLE), Some(SRC3));
    }

    #[test]
    fn late_packets_around_the_switch_point_are_never_renumbered_into_the_new_layer() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        let mut l0 = Layer::new(SRC, 65_534, 1000, 1, 1, 1);
        let mut l1 = Layer::new(SRC2, 65_530, 2000, 2, 2, 2);
        let f0 = l0.frame(true, t0);
        let f1 = l0.frame(false, t0 + FRAME);
        let mut sent = Vec::new();
        sent.push(dt.forward(&f0[0], t0).header().unwrap().sequence);
        sent.push(dt.forward(&f1[0], t0).header().unwrap().sequence);
        dt.set_target_layer(SRC2);
        let _ = l1.frame(false, t0);
        let k = l1.frame(true, t0 + FRAME);
        // The keyframe's second packet overtakes its first: not a switch point.
        assert_eq!(
            dt.forward(&k[1], t0 + FRAME),
            Forward::Drop(DropReason::PendingLayer)
        );
        sent.push(dt.forward(&k[0], t0 + FRAME).header().unwrap().sequence);
        assert_eq!(dt.source_ssrc(), SRC2);
        // The old layer's late packets (reordered, or its retransmissions), older and newer
        // than the switch, are dropped.
        for p in [&f0[1], &f1[1]] {
            assert_eq!(
                dt.forward(p, t0 + FRAME),
                Forward::Drop(DropReason::OtherSource)
            );
        }
        for p in l0.frame(false, t0 + FRAME * 2) {
            assert_eq!(
                dt.forward(&p, t0 + FRAME * 2),
                Forward::Drop(DropReason::OtherSource)
            );
        }
        // The new layer's packets from before its keyframe are stale; after it they follow.
        let before = pkt(SRC2, 65_531, 0, false, t0);
        assert_eq!(seq(&mut dt, &before), Err(DropReason::Stale));
        for p in l1.frame(false, t0 + FRAME * 2) {
            sent.push(dt.forward(&p, t0 + FRAME * 2).header().unwrap().sequence);
        }
        // The old layer's 65 535 never came: a gap (closed with padding, since nothing can
        // fill it after the switch). The keyframe's second packet, which came before the
        // switch, is a hole too, never reused by another packet.
        let expected: Vec<u16> = [0u16, 2, 3, 5, 6]
            .iter()
            .map(|d| FIRST_SEQ.wrapping_add(*d))
            .collect();
        assert_eq!(sent, expected);
        // (Before the first keyframe: the lead-in padding every video stream starts with.)
        let filled: Vec<(u16, bool)> = fills(&mut dt, t0 + FRAME * 2)
            .into_iter()
            .map(|(seq, _, current)| (seq, current))
            .collect();
        assert_eq!(filled, [(FIRST_SEQ - 1, false), (FIRST_SEQ + 1, false)]);
        // Its late retransmission from the publisher fills it in place.
        assert_eq!(
            dt.forward(&k[1], t0 + FRAME * 2)
                .header()
                .map(|h| h.sequence),
            Some(FIRST_SEQ + 4)
        );
    }

    /// Retransmission buffers per layer, as the SFU keeps them.
    struct Buffers(Vec<(u32, RetransmitBuffer)>);

    impl Buffers {
        fn new(ssrcs: &[u32]) -> Self {
            Self(
                ssrcs
                    .iter()
                    .map(|&s| (s, RetransmitBuffer::new(128).unwrap()))
                    .collect(),
            )
        }

        fn of(&self, ssrc: u32) -> Option<&RetransmitBuffer> {
            self.0.iter().find(|(s, _)| *s == ssrc).map(|(_, b)| b)
        }

        fn insert(&mut self, p: MediaPacket) {
            if let Some((_, b)) = self.0.iter_mut().find(|(s, _)| *s == p.ssrc) {
                b.insert(p);
            }
        }
    }

    #[test]
    fn a_retransmission_from_before_a_switch_carries_its_original_numbers() {
        let t0 = Instant::now();
        let mut c = config(MediaKind::Video);
        c.rtx_ssrc = Some(SUB_RTX);
        let mut dt = DownTrack::new(c, SRC).unwrap();
        let mut layers = [
            Layer::new(SRC, 100, 1000, 500, 10, 1),
            Layer::new(SRC2, 200, 2000, 9000, 20, 2),
            Layer::new(SRC3, 300, 3000, 20_000, 30, 3),
        ];
        let mut bufs = Buffers::new(&[SRC, SRC2, SRC3]);
        // (output seq) -> (header, payload) as first sent.
        let mut first = std::collections::HashMap::new();
        let mut at = t0;
        // Three frames of each layer in turn: 0 -> 1 -> 2.
        for (l, ssrc) in [(0, SRC), (1, SRC2), (2, SRC3)] {
            if l > 0 {
                dt.set_target_layer(ssrc);
            }
            for i in 0..3 {
                at += FRAME;
                for p in layers[l].frame(i == 0, at) {
                    let h = dt.forward(&p, at).header().unwrap();
                    first.insert(h.sequence, (h, h.payload(&p)));
                    bufs.insert(p);
                }
            }
        }
        assert_eq!(first.len(), 18);
        // The lead-in padding before the first keyframe; nothing else.
        assert_eq!(fills(&mut dt, at).len(), 1);
        // Layer 1 was renumbered (it continued layer 0's numbers).
        let renumbered = FIRST_SEQ + 7;
        assert!(first[&renumbered].0.vp8().is_some());
        assert_ne!(
            Vp8Descriptor::parse(&first[&renumbered].1)
                .unwrap()
                .picture_id,
            bufs.of(SRC2)
                .unwrap()
                .get(201)
                .unwrap()
                .vp8
                .unwrap()
                .picture_id
        );

        // NACKs across both switches: every one answered from its own layer, as RTX whose
        // original sequence number and payload are those first sent.
        let lost = [FIRST_SEQ + 1, FIRST_SEQ + 7, FIRST_SEQ + 8, FIRST_SEQ + 15];
        let mut resent = Vec::new();
        let unrepairable = dt.on_nack_layers(
            lost,
            |ssrc| bufs.of(ssrc),
            at,
            |r| resent.push((r.header, r.payload, r.rtx)),
        );
        assert_eq!(unrepairable, 0);
        assert_eq!(resent.len(), lost.len());
        for ((h, payload, rtx), seq) in resent.iter().zip(lost) {
            assert!(rtx);
            assert_eq!(h.ssrc, SUB_RTX);
            let (orig, orig_payload) = &first[&seq];
            assert_eq!(&payload[..2], &seq.to_be_bytes());
            assert_eq!(&payload[2..], &orig_payload[..], "seq {seq}");
            assert_eq!(h.timestamp, orig.timestamp);
            assert_eq!(h.vp8(), orig.vp8());
        }
        assert!(dt.poll_fill(at).is_none());

        // With the single-buffer API (the current layer's buffer only), a previous layer's
        // packet cannot be had: padded, but not counted as needing a keyframe.
        let later = at + Duration::from_secs(1);
        let (got, unrepairable) =
            nacked_and_unrepairable(&mut dt, &[FIRST_SEQ + 8], bufs.of(SRC3).unwrap(), later);
        assert!(got.is_empty());
        assert_eq!(unrepairable, 0);
        assert_eq!(fills(&mut dt, later).len(), 1);
        // The current layer's packets still are answered from it.
        let (got, _) =
            nacked_and_unrepairable(&mut dt, &[FIRST_SEQ + 14], bufs.of(SRC3).unwrap(), later);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].1[2..], &first[&(FIRST_SEQ + 14)].1[..]);
    }

    #[test]
    fn a_hard_switch_still_forgets_the_previous_layers() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        let mut l0 = Layer::new(SRC, 100, 1000, 500, 10, 1);
        let mut l1 = Layer::new(SRC2, 200, 2000, 9000, 20, 2);
        let mut buf = RetransmitBuffer::new(64).unwrap();
        for p in l0.frame(true, t0) {
            dt.forward(&p, t0).header().unwrap();
            buf.insert(p);
        }
        dt.switch_layer_now(SRC2);
        assert!(dt.wants_keyframe());
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC2));
        // The stopped layer's packets still answer (the seamless numbering kept them).
        assert_eq!(nacked(&mut dt, &[FIRST_SEQ + 1], &buf, t0).len(), 1);
        for p in l1.frame(true, t0 + FRAME) {
            let h = dt.forward(&p, t0 + FRAME).header().unwrap();
            // The picture ID continues the stopped layer's; the clock moves on by the wall
            // clock, at least one frame (30 a second assumed: no spacing was seen yet).
            let g = got(&h, &p);
            assert_eq!(g.vp8.picture_id.unwrap().value, 501);
            assert_eq!(g.ts, FIRST_TS + 90_000 / 30);
        }
        // A switch of source (another publisher) forgets them, as before layers existed.
        dt.switch_source(SRC3);
        let later = t0 + Duration::from_secs(1);
        assert!(nacked(&mut dt, &[FIRST_SEQ + 1], &buf, later).is_empty());
    }

    #[test]
    fn a_track_that_never_changes_layer_is_never_copied() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        let mut l0 = Layer::new(SRC, 100, 1000, 500, 10, 1);
        let mut l1 = Layer::new(SRC2, 200, 2000, 9000, 20, 2);
        for i in 0..5 {
            for p in l0.frame(i == 0, t0) {
                let h = dt.forward(&p, t0).header().unwrap();
                assert_eq!(h.vp8(), None);
                assert_eq!(h.payload(&p).as_ptr(), p.payload.as_ptr());
            }
        }
        // A switch of source (a slot reused for another publisher) passes the new source's
        // numbers through, as it always did: still no copy.
        dt.switch_source(SRC2);
        assert_eq!(dt.poll_keyframe_request(t0), None);
        let t1 = t0 + REUSE_SETTLE;
        for i in 0..5 {
            for p in l1.frame(i == 0, t1) {
                let h = dt.forward(&p, t1).header().unwrap();
                assert_eq!(h.vp8(), None);
                assert_eq!(h.payload(&p).as_ptr(), p.payload.as_ptr());
            }
        }
        // A layer switch renumbers, so copies.
        dt.set_target_layer(SRC);
        for p in l0.frame(true, t0) {
            let h = dt.forward(&p, t0).header().unwrap();
            assert!(h.vp8().is_some());
            assert_ne!(h.payload(&p).as_ptr(), p.payload.as_ptr());
        }
    }

    #[test]
    fn picture_ids_continue_across_layers_without_one_or_with_7_bits() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        let mut l0 = Layer::new(SRC, 100, 1000, 0x7ffe, 10, 1);
        let mut l1 = Layer::new(SRC2, 200, 2000, 0, 20, 2);
        l1.wide = None;
        let mut l2 = Layer::new(SRC3, 300, 3000, 90, 30, 3);
        l2.wide = Some(false);
        let mut pics = Vec::new();
        let run = |dt: &mut DownTrack, layer: &mut Layer, pics: &mut Vec<Option<(u16, bool)>>| {
            if layer.ssrc != dt.source_ssrc() {
                dt.set_target_layer(layer.ssrc);
            }
            for i in 0..3 {
                for p in layer.frame(i == 0, t0) {
                    let h = dt.forward(&p, t0).header().unwrap();
                    if p.marker {
                        let d = Vp8Descriptor::parse(&h.payload(&p)).unwrap();
                        pics.push(d.picture_id.map(|p| (p.value, p.wide)));
                    }
                }
            }
        };
        run(&mut dt, &mut l0, &mut pics);
        run(&mut dt, &mut l1, &mut pics);
        run(&mut dt, &mut l2, &mut pics);
        run(&mut dt, &mut l0, &mut pics);
        assert_eq!(
            pics,
            [
                // 15 bits, wrapping.
                Some((0x7ffe, true)),
                Some((0x7fff, true)),
                Some((0, true)),
                // No picture ID on this layer: none written.
                None,
                None,
                None,
                // 7 bits: the low bits of the counter, continuing.
                Some((1, false)),
                Some((2, false)),
                Some((3, false)),
                // 15 bits again, continuing (modulo 128, the narrower width's range).
                Some((4, true)),
                Some((5, true)),
                Some((6, true)),
            ]
        );
    }

    #[test]
    fn garbage_vp8_payloads_and_random_switching_never_panic_nor_repeat_a_number() {
        let mut s: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let t0 = Instant::now();
        let ssrcs = [SRC, SRC2, SRC3];
        let (mut forwarded, mut switched) = (0, 0);
        for round in 0..20 {
            let mut dt = track(MediaKind::Video);
            let mut bufs = Buffers::new(&ssrcs);
            let mut seqs = [next() as u16, next() as u16, next() as u16];
            let mut sent = std::collections::HashSet::new();
            let mut at = t0;
            for _ in 0..3000 {
                at += Duration::from_millis(next() % 5);
                match next() % 100 {
                    0..=2 => dt.set_target_layer(ssrcs[(next() % 3) as usize]),
                    3 => dt.switch_layer_now(ssrcs[(next() % 3) as usize]),
                    4 => dt.set_paused(next() % 2 == 0),
                    5..=7 => {
                        let lost: Vec<u16> = (0..4).map(|_| next() as u16).collect();
                        let near = (0..4)
                            .map(|_| (FIRST_SEQ as u64 + sent.len() as u64 - next() % 40) as u16);
                        dt.on_nack_layers(
                            lost.into_iter().chain(near),
                            |ssrc| bufs.of(ssrc),
                            at,
                            |_| (),
                        );
                    }
                    _ => {
                        let l = (next() % 3) as usize;
                        // Mostly in order, sometimes late or ahead (a loss); the source
                        // numbers wrap. The output stays well within one wrap of its own, so
                        // any number seen twice is a repeat.
                        let seq = match next() % 10 {
                            0 => seqs[l].wrapping_sub((next() % 50) as u16),
                            1 => {
                                seqs[l] = seqs[l].wrapping_add((next() % 100) as u16);
                                seqs[l]
                            }
                            _ => {
                                seqs[l] = seqs[l].wrapping_add(1);
                                seqs[l]
                            }
                        };
                        let len = (next() % 14) as usize;
                        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                        if next() % 4 == 0 && !bytes.is_empty() {
                            // Make some of them keyframe starts.
                            bytes[0] = 0x10;
                            if bytes.len() > 1 {
                                bytes[1] &= 0xfe;
                            }
                        }
                        let p = MediaPacket::new(
                            ssrcs[l],
                            seq,
                            next() as u32,
                            VIDEO_PT,
                            bytes.into(),
                            at,
                        )
                        .with_codec(Some(VideoCodec::Vp8));
                        let current = dt.source_ssrc();
                        let target = dt.target_layer();
                        if let Forward::Send(h) = dt.forward(&p, at) {
                            assert!(
                                p.ssrc == current || (Some(p.ssrc) == target && p.keyframe),
                                "round {round}"
                            );
                            forwarded += 1;
                            switched += usize::from(p.ssrc != current);
                            assert!(sent.insert(h.sequence), "round {round}: {h:?} twice");
                            let out = h.payload(&p);
                            assert_eq!(out.len(), p.payload.len());
                        }
                        bufs.insert(p);
                    }
                }
                let _ = dt.poll_keyframe_request(at);
                // Padding may repeat a number (a NACKed one that cannot be resent); a forwarded
                // packet never takes a number padding took.
                while let Some(fill) = dt.poll_fill(at) {
                    sent.insert(fill.header.sequence);
                }
            }
        }
        // The loop did exercise what it claims to.
        assert!(forwarded > 5_000, "{forwarded} forwarded");
        assert!(switched > 100, "{switched} layer switches");
    }

    #[test]
    fn a_target_before_anything_was_sent_starts_at_whichever_keyframe_comes_first() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Video);
        dt.set_target_layer(SRC2);
        // Asked for first: the target (the current layer would be switched away from anyway).
        assert_eq!(dt.poll_keyframe_request(t0), Some(SRC2));
        assert_eq!(
            fwd(&mut dt, &pkt(SRC2, 9, 77, true, t0 + FRAME)),
            Ok((FIRST_SEQ, FIRST_TS))
        );
        assert_eq!(dt.source_ssrc(), SRC2);
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 9, 77, true, t0 + FRAME)),
            Err(DropReason::OtherSource)
        );
    }

    #[test]
    fn an_audio_layer_switch_needs_no_keyframe_and_asks_for_none() {
        let t0 = Instant::now();
        let mut dt = track(MediaKind::Audio);
        for i in 0..5u16 {
            let at = t0 + Duration::from_millis(20) * u32::from(i);
            fwd(&mut dt, &pkt(SRC, i, u32::from(i) * 960, false, at)).unwrap();
        }
        dt.set_target_layer(SRC2);
        assert_eq!(dt.poll_keyframe_request(t0), None);
        let at = t0 + Duration::from_millis(100);
        // The same instant as the last packet: one packet interval on.
        assert_eq!(
            fwd(
                &mut dt,
                &pkt(SRC2, 40_000, 7, false, at - Duration::from_millis(20))
            ),
            Ok((FIRST_SEQ + 5, FIRST_TS + 5 * 960))
        );
        assert_eq!(
            fwd(&mut dt, &pkt(SRC2, 40_001, 7 + 960, false, at)),
            Ok((FIRST_SEQ + 6, FIRST_TS + 6 * 960))
        );
        assert_eq!(
            seq(&mut dt, &pkt(SRC, 5, 5 * 960, false, at)),
            Err(DropReason::OtherSource)
        );
    }
}

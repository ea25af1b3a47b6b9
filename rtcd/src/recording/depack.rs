//! From RTP packets to whole frames, per codec, without decoding.
//!
//! Two stages, both pure (no I/O, no clock of their own: time comes from the packets'
//! `arrival`), so that every case is unit-tested:
//!
//! * [`Reorder`] puts a track's packets back in sequence order. A missing packet is waited for
//!   a bounded time ([`GIVE_UP_AFTER`], or until [`GIVE_UP_PACKETS`] newer ones arrived), since
//!   the SFU's NACK path may still repair it; then it is given up and reported as
//!   [`Ordered::Lost`].
//! * A [`Depacketizer`] (one per codec) strips the payload descriptors and joins the packets of
//!   one frame. A frame with a missing packet is never written: a video track then drops every
//!   frame until the next keyframe and raises [`Depacketizer::take_wants_keyframe`], so the
//!   file never holds a frame its decoder cannot reconstruct.
//!
//! Nothing here allocates per packet: the reorder ring and the frame buffers are allocated once
//! per track and reused.

use std::time::{Duration, Instant};

use rtcd_recording::manifest::Codec;

use crate::media::packet::MediaPacket;

/// The reorder ring's size: how far ahead of the oldest missing packet a packet may be and
/// still be kept. Twice [`GIVE_UP_PACKETS`], so a gap is always given up before the ring wraps.
const WINDOW: u64 = 128;

/// A missing packet is given up once this many newer packets arrived (the NACK path repairs a
/// loss within a round trip or two; a video keyframe can be ~100 packets, so this is a bound,
/// not a typical wait).
pub(crate) const GIVE_UP_PACKETS: u64 = 64;

/// A missing packet is given up once it was waited for this long (a few NACK round trips).
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_millis(300);

/// Where unwrapped sequence numbers start: far enough from 0 that packets reordered before the
/// first one received still unwrap to positive numbers.
const SEQUENCE_BASE: u64 = 1 << 32;

/// What [`Reorder`] hands on, in sequence order.
#[derive(Debug)]
pub(crate) enum Ordered {
    /// The next packet.
    Packet(MediaPacket),
    /// This many packets are missing here and were given up.
    Lost(u64),
}

/// A bounded reorder buffer for one track: packets in, packets in unwrapped sequence order
/// out, with losses reported.
pub(crate) struct Reorder {
    /// `WINDOW` slots, indexed by unwrapped sequence number modulo `WINDOW`.
    slots: Vec<Option<MediaPacket>>,
    /// The next sequence number to hand on (unwrapped); `None` before the first packet.
    next: Option<u64>,
    /// The highest sequence number seen (unwrapped): the reference for unwrapping.
    highest: u64,
    /// How many slots hold a packet.
    buffered: usize,
    /// When the current gap was first waited for.
    waiting_since: Option<Instant>,
}

impl Default for Reorder {
    fn default() -> Self {
        Self {
            slots: (0..WINDOW).map(|_| None).collect(),
            next: None,
            highest: 0,
            buffered: 0,
            waiting_since: None,
        }
    }
}

impl Reorder {
    /// Unwraps a 16-bit sequence number next to the highest seen.
    fn unwrap_sequence(&self, sequence: u16) -> u64 {
        let delta = i64::from(sequence.wrapping_sub(self.highest as u16) as i16);
        (self.highest as i64 + delta).max(0) as u64
    }

    fn slot(&mut self, sequence: u64) -> &mut Option<MediaPacket> {
        &mut self.slots[(sequence % WINDOW) as usize]
    }

    /// Takes one packet; hands on every packet that is now in order (and losses given up).
    /// Late packets (their place already handed on or given up) and duplicates are ignored.
    pub(crate) fn push(&mut self, packet: MediaPacket, out: &mut impl FnMut(Ordered)) {
        let now = packet.arrival;
        let next = match self.next {
            Some(next) => next,
            None => {
                let first = SEQUENCE_BASE + u64::from(packet.sequence);
                self.highest = first;
                self.next = Some(first);
                first
            }
        };
        let sequence = self.unwrap_sequence(packet.sequence);
        if sequence < next {
            return;
        }
        if sequence >= next + WINDOW {
            // Too far ahead to keep alongside what is waiting: give up the oldest gaps.
            self.skip_to(sequence + 1 - WINDOW, sequence, out);
        }
        self.highest = self.highest.max(sequence);
        let slot = self.slot(sequence);
        if slot.is_some() {
            return;
        }
        *slot = Some(packet);
        self.buffered += 1;
        self.drain(out);
        if self.buffered > 0 {
            self.waiting_since.get_or_insert(now);
            let next = self.next.unwrap_or(sequence);
            if self.highest - next >= GIVE_UP_PACKETS {
                self.give_up_gap(now, out);
            }
        } else {
            self.waiting_since = None;
        }
    }

    /// Gives up a gap waited for longer than [`GIVE_UP_AFTER`] (called on the writer's tick, so
    /// a loss at the end of a burst is not waited for forever).
    pub(crate) fn poll(&mut self, now: Instant, out: &mut impl FnMut(Ordered)) {
        while let Some(since) = self.waiting_since {
            if now.saturating_duration_since(since) < GIVE_UP_AFTER {
                return;
            }
            self.give_up_gap(now, out);
        }
    }

    /// Hands on everything buffered, reporting the gaps (the track or the recording ends).
    pub(crate) fn flush(&mut self, out: &mut impl FnMut(Ordered)) {
        let target = self.highest + 1;
        if self.next.is_some() {
            self.skip_to(target, target, out);
        }
        self.waiting_since = None;
    }

    /// Hands on what is in order from `next`.
    fn drain(&mut self, out: &mut impl FnMut(Ordered)) {
        let Some(mut next) = self.next else {
            return;
        };
        while let Some(packet) = self.slot(next).take() {
            self.buffered -= 1;
            next += 1;
            out(Ordered::Packet(packet));
        }
        self.next = Some(next);
    }

    /// Gives up the missing run at `next`, then hands on what follows it in order.
    fn give_up_gap(&mut self, now: Instant, out: &mut impl FnMut(Ordered)) {
        let Some(mut next) = self.next else {
            return;
        };
        let mut lost = 0;
        while next <= self.highest && self.slots[(next % WINDOW) as usize].is_none() {
            lost += 1;
            next += 1;
        }
        self.next = Some(next);
        if lost > 0 {
            out(Ordered::Lost(lost));
        }
        self.drain(out);
        // The next gap (if any) is waited for afresh: its packets may still be on the way.
        self.waiting_since = (self.buffered > 0).then_some(now);
    }

    /// Hands on (or gives up) everything before `target`; once nothing is buffered, gives up
    /// everything before `jump` (at least `target`) as one loss.
    fn skip_to(&mut self, target: u64, jump: u64, out: &mut impl FnMut(Ordered)) {
        let Some(mut next) = self.next else {
            return;
        };
        let mut lost = 0;
        while next < target && self.buffered > 0 {
            match self.slot(next).take() {
                Some(packet) => {
                    if lost > 0 {
                        out(Ordered::Lost(lost));
                        lost = 0;
                    }
                    self.buffered -= 1;
                    out(Ordered::Packet(packet));
                }
                None => lost += 1,
            }
            next += 1;
        }
        let target = target.max(jump);
        if next < target && self.buffered == 0 {
            // Nothing buffered: a jump (a long loss, or the sender restarted its numbering).
            lost += target - next;
            next = target;
        }
        if lost > 0 {
            out(Ordered::Lost(lost));
        }
        self.next = Some(next);
        self.drain(out);
        if self.buffered == 0 {
            self.waiting_since = None;
        }
    }
}

/// One whole frame, borrowed from its depacketizer until the next packet.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    /// The frame as the container stores it (payload descriptors stripped; AV1 in the low
    /// overhead bitstream format; H.264 in AVCC form, each NAL unit after its 4-byte length).
    pub data: &'a [u8],
    /// Its RTP timestamp.
    pub timestamp: u32,
    /// Whether a decoder can start at it (always true for audio).
    pub keyframe: bool,
    /// The picture size, when the keyframe's header (or the payload descriptor) says it.
    pub size: Option<(u16, u16)>,
    /// When its first packet arrived at rtcd.
    pub arrival: Instant,
    /// A keyframe's decoder configuration, else empty. AV1: the sequence header OBU (the
    /// file's `av1C` is built from it). H.264: the `avcC` itself (from the latest SPS and PPS).
    pub config: &'a [u8],
}

/// A codec's depacketizer: ordered packets (and losses) in, whole frames out.
pub(crate) enum Depacketizer {
    /// Opus: one packet is one frame.
    Opus,
    /// VP8, RFC 7741.
    Vp8(Vp8),
    /// VP9, RFC 9628.
    Vp9(Vp9),
    /// AV1, the AOM RTP payload format.
    Av1(Av1),
    /// H.264, RFC 6184 packetization mode 1.
    H264(H264),
}

impl Depacketizer {
    /// The depacketizer of `codec`.
    pub(crate) fn new(codec: Codec) -> Self {
        match codec {
            Codec::Opus => Self::Opus,
            Codec::Vp8 => Self::Vp8(Vp8::default()),
            Codec::Vp9 => Self::Vp9(Vp9::default()),
            Codec::Av1 => Self::Av1(Av1::default()),
            Codec::H264 => Self::H264(H264::default()),
        }
    }

    /// The next packet in sequence order; calls `out` with the frame it completes, if any.
    pub(crate) fn packet(&mut self, packet: &MediaPacket, out: &mut impl FnMut(Frame<'_>)) {
        match self {
            Self::Opus => {
                if !packet.payload.is_empty() {
                    out(Frame {
                        data: &packet.payload,
                        timestamp: packet.timestamp,
                        keyframe: true,
                        size: None,
                        arrival: packet.arrival,
                        config: &[],
                    });
                }
            }
            Self::Vp8(d) => d.packet(packet, out),
            Self::Vp9(d) => d.packet(packet, out),
            Self::Av1(d) => d.packet(packet, out),
            Self::H264(d) => d.packet(packet, out),
        }
    }

    /// Packets are missing here: the frame being assembled is dropped, and video waits for a
    /// keyframe. (Opus decodes from any packet: nothing to do.)
    pub(crate) fn lost(&mut self) {
        match self {
            Self::Opus => {}
            Self::Vp8(d) => d.frame.lost(),
            Self::Vp9(d) => d.frame.lost(),
            Self::Av1(d) => d.frame.lost(),
            Self::H264(d) => d.frame.lost(),
        }
    }

    /// Whether a keyframe is wanted since the last call (the track started, or frames were
    /// lost and the track waits for one).
    pub(crate) fn take_wants_keyframe(&mut self) -> bool {
        let gate = match self {
            Self::Opus => return false,
            Self::Vp8(d) => &mut d.frame.gate,
            Self::Vp9(d) => &mut d.frame.gate,
            Self::Av1(d) => &mut d.frame.gate,
            Self::H264(d) => &mut d.frame.gate,
        };
        std::mem::take(&mut gate.wants)
    }
}

/// The keyframe rule of a video track: from the start, and after any loss, only a keyframe
/// lets frames through.
struct Gate {
    need_keyframe: bool,
    wants: bool,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            need_keyframe: true,
            wants: true,
        }
    }
}

impl Gate {
    fn loss(&mut self) {
        self.need_keyframe = true;
        self.wants = true;
    }

    /// Whether a whole frame may be written.
    fn admit(&mut self, keyframe: bool) -> bool {
        if keyframe {
            self.need_keyframe = false;
        } else if self.need_keyframe {
            // Asked again while waiting: the first request (or its keyframe) may have been lost.
            self.wants = true;
        }
        !self.need_keyframe
    }
}

/// The frame being assembled, common to the video codecs.
#[derive(Default)]
struct Assembly {
    buf: Vec<u8>,
    /// A frame is in progress and intact.
    active: bool,
    timestamp: u32,
    keyframe: bool,
    size: Option<(u16, u16)>,
    arrival: Option<Instant>,
    gate: Gate,
}

impl Assembly {
    fn begin(&mut self, packet: &MediaPacket) {
        if self.active {
            // The previous frame never ended (its last packet's marker is missing).
            self.gate.loss();
        }
        self.buf.clear();
        self.active = true;
        self.timestamp = packet.timestamp;
        self.keyframe = false;
        self.size = None;
        self.arrival = Some(packet.arrival);
    }

    /// A packet that cannot be part of the frame in progress: drop it, wait for a keyframe.
    fn broken(&mut self) {
        if self.active {
            self.active = false;
            self.gate.loss();
        }
    }

    fn lost(&mut self) {
        self.active = false;
        self.gate.loss();
    }

    /// Whether `packet` continues the frame in progress.
    fn continues(&self, packet: &MediaPacket) -> bool {
        self.active && packet.timestamp == self.timestamp
    }

    fn complete(&mut self, config: &[u8], out: &mut impl FnMut(Frame<'_>)) {
        self.active = false;
        if self.gate.admit(self.keyframe) {
            out(Frame {
                data: &self.buf,
                timestamp: self.timestamp,
                keyframe: self.keyframe,
                size: self.size,
                arrival: self.arrival.unwrap_or_else(Instant::now),
                config,
            });
        }
    }
}

/// A byte cursor that never reads out of bounds.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        (self.at + n <= self.bytes.len()).then(|| self.at += n)
    }

    fn u16_be(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    /// An unsigned LEB128 number (AV1), at most 8 bytes.
    fn leb128(&mut self) -> Option<usize> {
        let mut value: u64 = 0;
        for i in 0..8 {
            let b = self.u8()?;
            value |= u64::from(b & 0x7f) << (i * 7);
            if b & 0x80 == 0 {
                return usize::try_from(value).ok();
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.at.min(self.bytes.len())..];
        self.at = self.bytes.len();
        s
    }
}

/// VP8 (RFC 7741): a frame is the packets of one timestamp, from the one with S = 1 and
/// PID = 0 to the one with the marker.
#[derive(Default)]
pub(crate) struct Vp8 {
    frame: Assembly,
}

/// The VP8 payload descriptor's length, and whether the packet starts a frame (S = 1,
/// PID = 0).
fn vp8_descriptor(p: &[u8]) -> Option<(usize, bool)> {
    let mut c = Cursor::new(p);
    let b0 = c.u8()?;
    if b0 & 0x80 != 0 {
        let x = c.u8()?;
        if x & 0x80 != 0 {
            let pic = c.u8()?;
            if pic & 0x80 != 0 {
                c.skip(1)?;
            }
        }
        if x & 0x40 != 0 {
            c.skip(1)?;
        }
        if x & 0x30 != 0 {
            c.skip(1)?;
        }
    }
    Some((c.at, b0 & 0x10 != 0 && b0 & 0x07 == 0))
}

impl Vp8 {
    fn packet(&mut self, packet: &MediaPacket, out: &mut impl FnMut(Frame<'_>)) {
        let p = &packet.payload[..];
        let Some((len, start)) = vp8_descriptor(p) else {
            self.frame.broken();
            return;
        };
        let data = &p[len..];
        if start {
            self.frame.begin(packet);
            // RFC 6386 §9.1: the frame tag's P bit is 0 on a keyframe.
            self.frame.keyframe = data.first().is_some_and(|tag| tag & 0x01 == 0);
            if self.frame.keyframe {
                self.frame.size =
                    crate::media::packet::keyframe_size(crate::media::packet::VideoCodec::Vp8, p);
            }
        } else if !self.frame.continues(packet) {
            self.frame.broken();
            return;
        }
        self.frame.buf.extend_from_slice(data);
        if packet.marker {
            self.frame.complete(&[], out);
        }
    }
}

/// VP9 (RFC 9628): a picture is the packets of one timestamp, ending with the marker; each of
/// its spatial layers' frames runs from a packet with B to one with E. A picture of one frame
/// (Chrome without SVC) is written as it is; one of several frames as a superframe (the frames
/// followed by a superframe index), which is how VP9 stores several frames in one block.
#[derive(Default)]
pub(crate) struct Vp9 {
    frame: Assembly,
    /// The sizes of the picture's complete layer frames.
    sizes: [usize; 8],
    frames: usize,
    /// A layer frame is in progress, starting at this offset of the buffer.
    layer_start: Option<usize>,
}

/// What a VP9 payload descriptor says.
struct Vp9Descriptor {
    len: usize,
    inter: bool,
    begin: bool,
    end: bool,
    spatial: u8,
    /// The largest spatial layer's size, from a scalability structure with Y.
    size: Option<(u16, u16)>,
}

fn vp9_descriptor(p: &[u8]) -> Option<Vp9Descriptor> {
    let mut c = Cursor::new(p);
    let b0 = c.u8()?;
    let (picture_id, inter, layers, flexible) = (
        b0 & 0x80 != 0,
        b0 & 0x40 != 0,
        b0 & 0x20 != 0,
        b0 & 0x10 != 0,
    );
    let (begin, end, ss) = (b0 & 0x08 != 0, b0 & 0x04 != 0, b0 & 0x02 != 0);
    if picture_id && c.u8()? & 0x80 != 0 {
        c.skip(1)?;
    }
    let mut spatial = 0;
    if layers {
        spatial = (c.u8()? >> 1) & 0x07;
        if !flexible {
            c.skip(1)?; // TL0PICIDX
        }
    }
    if flexible && inter {
        // Up to three reference indices, each with N (more follow) as its last bit.
        for _ in 0..3 {
            if c.u8()? & 0x01 == 0 {
                break;
            }
        }
    }
    let mut size = None;
    if ss {
        let b = c.u8()?;
        let layers = usize::from(b >> 5) + 1;
        if b & 0x10 != 0 {
            for _ in 0..layers {
                size = Some((c.u16_be()?, c.u16_be()?));
            }
        }
        if b & 0x08 != 0 {
            let groups = c.u8()?;
            for _ in 0..groups {
                let g = c.u8()?;
                c.skip(usize::from((g >> 2) & 0x03))?;
            }
        }
    }
    Some(Vp9Descriptor {
        len: c.at,
        inter,
        begin,
        end,
        spatial,
        size: size.filter(|&(w, h)| w > 0 && h > 0),
    })
}

/// What a VP9 frame's uncompressed header says of it (VP9 bitstream specification, 6.2).
#[derive(Debug, PartialEq, Eq)]
enum Vp9Header {
    /// A keyframe (frame_type 0, with its sync code), and its size.
    Key((u16, u16)),
    /// An inter or intra-only frame, or one that shows an earlier frame again.
    NotKey,
}

/// Reads the start of a VP9 frame's uncompressed header; `None` when it is not one (no frame
/// marker, a keyframe without its sync code, too short). The recorder checks the payload
/// descriptor's P bit against it: a sender that marks every frame as not inter-predicted
/// (webrtc-rs's payloader does) would otherwise have a file resume at a delta frame after a
/// loss. Only where the media can be read: recording refuses end-to-end encrypted rooms.
fn vp9_header(frame: &[u8]) -> Option<Vp9Header> {
    let mut b = Bits {
        bytes: frame,
        bit: 0,
    };
    if b.read(2)? != 2 {
        return None;
    }
    let low = b.read(1)?;
    let profile = (b.read(1)? << 1) | low;
    if profile == 3 {
        b.read(1)?;
    }
    // show_existing_frame, then frame_type (0: KEY_FRAME).
    if b.read(1)? == 1 || b.read(1)? == 1 {
        return Some(Vp9Header::NotKey);
    }
    // show_frame, error_resilient_mode, frame_sync_code.
    b.read(2)?;
    if b.read(24)? != 0x49_83_42 {
        return None;
    }
    // color_config.
    if profile >= 2 {
        b.read(1)?;
    }
    let rgb = b.read(3)? == 7;
    let subsampling = profile == 1 || profile == 3;
    match (rgb, subsampling) {
        (false, false) => b.read(1)?,
        (false, true) => b.read(4)?,
        (true, true) => b.read(1)?,
        (true, false) => 0,
    };
    let width = u16::try_from(b.read(16)? + 1).ok()?;
    let height = u16::try_from(b.read(16)? + 1).ok()?;
    Some(Vp9Header::Key((width, height)))
}

impl Vp9 {
    fn packet(&mut self, packet: &MediaPacket, out: &mut impl FnMut(Frame<'_>)) {
        let Some(d) = vp9_descriptor(&packet.payload) else {
            self.frame.broken();
            return;
        };
        let data = &packet.payload[d.len..];
        if !self.frame.continues(packet) {
            if !(d.begin && d.spatial == 0) {
                self.frame.broken();
                return;
            }
            self.frame.begin(packet);
            self.frames = 0;
            self.layer_start = None;
            let header = vp9_header(data);
            self.frame.keyframe = !d.inter && header != Some(Vp9Header::NotKey);
            self.frame.size = match header {
                Some(Vp9Header::Key(size)) => d.size.or(Some(size)),
                _ => d.size,
            };
        }
        if d.begin {
            if self.layer_start.is_some() {
                self.frame.broken();
                return;
            }
            self.layer_start = Some(self.frame.buf.len());
        }
        let Some(start) = self.layer_start else {
            self.frame.broken();
            return;
        };
        self.frame.buf.extend_from_slice(data);
        if d.end {
            self.layer_start = None;
            if self.frames == self.sizes.len() {
                self.frame.broken();
                return;
            }
            self.sizes[self.frames] = self.frame.buf.len() - start;
            self.frames += 1;
        }
        if packet.marker {
            if self.layer_start.is_some() || self.frames == 0 {
                self.frame.broken();
                return;
            }
            if self.frames > 1 {
                self.superframe_index();
            }
            self.frame.complete(&[], out);
        }
    }

    /// Appends the VP9 superframe index (VP9 bitstream spec, annex B) for the picture's frames.
    fn superframe_index(&mut self) {
        let largest = self.sizes[..self.frames].iter().copied().max().unwrap_or(0);
        let mag = match largest {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xff_ffff => 3,
            _ => 4,
        };
        let marker = 0xc0 | ((mag as u8 - 1) << 3) | (self.frames as u8 - 1);
        self.frame.buf.push(marker);
        for &size in &self.sizes[..self.frames] {
            self.frame
                .buf
                .extend_from_slice(&(size as u32).to_le_bytes()[..mag]);
        }
        self.frame.buf.push(marker);
    }
}

/// AV1 (AOM "RTP Payload Format for AV1"): a temporal unit is the packets of one timestamp,
/// ending with the marker. Each packet holds OBU elements (the first may continue the previous
/// packet's last, Z; the last may continue in the next, Y); the temporal unit is rebuilt in the
/// low overhead bitstream format (every OBU with `obu_has_size_field` and its size), without
/// temporal delimiters, tile lists and padding, as Matroska stores AV1.
#[derive(Default)]
pub(crate) struct Av1 {
    frame: Assembly,
    /// The OBU being assembled from fragments.
    obu: Vec<u8>,
    /// The last OBU element continues in the next packet.
    fragment_open: bool,
    /// The temporal unit's sequence header OBU (rewritten with its size field).
    sequence_header: Vec<u8>,
}

/// OBU types (AV1 spec §6.2.2) the recorder cares about.
const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_TILE_LIST: u8 = 8;
const OBU_PADDING: u8 = 15;

impl Av1 {
    fn packet(&mut self, packet: &MediaPacket, out: &mut impl FnMut(Frame<'_>)) {
        let mut c = Cursor::new(&packet.payload);
        let Some(aggregation) = c.u8() else {
            self.frame.broken();
            return;
        };
        let (z, y) = (aggregation & 0x80 != 0, aggregation & 0x40 != 0);
        let count = usize::from((aggregation >> 4) & 0x03);
        let new_sequence = aggregation & 0x08 != 0;
        if !self.frame.continues(packet) {
            if z {
                // Continues an OBU whose start was lost.
                self.frame.broken();
                return;
            }
            self.frame.begin(packet);
            self.frame.keyframe = new_sequence;
            self.fragment_open = false;
            self.sequence_header.clear();
        } else if z != self.fragment_open {
            self.frame.broken();
            return;
        }
        let mut index = 0;
        while c.at < c.bytes.len() {
            index += 1;
            let element = if count == 0 || index < count {
                match c.leb128().and_then(|n| c.take(n)) {
                    Some(e) => e,
                    None => {
                        self.frame.broken();
                        return;
                    }
                }
            } else {
                c.rest()
            };
            if !(index == 1 && z) {
                self.obu.clear();
            }
            self.obu.extend_from_slice(element);
            let last = c.at >= c.bytes.len();
            if last && y {
                self.fragment_open = true;
                break;
            }
            self.fragment_open = false;
            if self.push_obu().is_none() {
                self.frame.broken();
                return;
            }
        }
        if packet.marker {
            if self.fragment_open {
                self.frame.broken();
                return;
            }
            if !self.sequence_header.is_empty() {
                self.frame.keyframe = true;
                self.frame.size = av1_max_frame_size(&self.sequence_header);
            }
            self.frame.complete(&self.sequence_header, out);
        }
    }

    /// Appends the complete OBU in `self.obu` to the temporal unit, with its size field.
    fn push_obu(&mut self) -> Option<()> {
        let mut c = Cursor::new(&self.obu);
        let header = c.u8()?;
        let kind = (header >> 3) & 0x0f;
        let extension = if header & 0x04 != 0 {
            Some(c.u8()?)
        } else {
            None
        };
        let payload = if header & 0x02 != 0 {
            let n = c.leb128()?;
            c.take(n)?
        } else {
            c.rest()
        };
        if matches!(kind, OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING) {
            return Some(());
        }
        let start = self.frame.buf.len();
        let buf = &mut self.frame.buf;
        buf.push(header | 0x02);
        buf.extend(extension);
        write_leb128(buf, payload.len());
        buf.extend_from_slice(payload);
        if kind == OBU_SEQUENCE_HEADER {
            self.sequence_header.clear();
            self.sequence_header
                .extend_from_slice(&self.frame.buf[start..]);
        }
        Some(())
    }
}

fn write_leb128(buf: &mut Vec<u8>, mut value: usize) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            buf.push(b);
            return;
        }
        buf.push(b | 0x80);
    }
}

/// H.264 (RFC 6184, packetization mode 1, the one rtcd negotiates): an access unit is the
/// packets of one timestamp, ending with the marker (or, when a sender leaves the marker out,
/// where the next timestamp starts: the reorder buffer reported no loss in between, so it is
/// whole). Single NAL unit packets, STAP-A (24) and FU-A (28) are taken apart; the interleaved
/// mode's types (STAP-B, MTAP, FU-B) break the unit, reserved types (0, 30, 31) are skipped.
/// The unit is written in AVCC form (each NAL unit after its 4-byte big-endian length), SPS
/// and PPS included (a decoder takes a mid-stream change from them). A unit is a keyframe when
/// it holds an IDR slice (type 5) and an SPS and a PPS are known: the latest ones make the
/// file's `avcC`.
#[derive(Default)]
pub(crate) struct H264 {
    frame: Assembly,
    /// A FU-A NAL unit is open: where its length field is in the buffer.
    fu_start: Option<usize>,
    /// The latest SPS and PPS NAL units (header included).
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// The `avcC` of `sps` and `pps` (empty until both are known).
    config: Vec<u8>,
    /// The picture size the SPS says.
    size: Option<(u16, u16)>,
}

/// H.264 NAL unit types (ITU-T H.264 table 7-1; RFC 6184 §5.2) the recorder cares about.
const NAL_SLICE: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Whether a NAL unit of type `kind`, whose header is followed by `next`, can open an access
/// unit (H.264 §7.4.1.2.3): the non-VCL units that precede a picture, or the first slice of a
/// picture (`first_mb_in_slice` is 0, coded as a single 1 bit).
fn h264_opens_unit(kind: u8, next: Option<&u8>) -> bool {
    match kind {
        NAL_SLICE | NAL_IDR => next.is_some_and(|b| b & 0x80 != 0),
        NAL_SEI | NAL_SPS | NAL_PPS | NAL_AUD | 14..=18 => true,
        _ => false,
    }
}

/// Whether an RTP payload starts an access unit (its first NAL unit opens one).
fn h264_packet_opens_unit(p: &[u8]) -> bool {
    let Some(&header) = p.first() else {
        return false;
    };
    match header & 0x1f {
        // STAP-A: header, size (2), then the first NAL unit.
        NAL_STAP_A => p
            .get(3)
            .is_some_and(|h| h264_opens_unit(h & 0x1f, p.get(4))),
        // FU-A: the start fragment of a NAL unit that opens one.
        NAL_FU_A => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && h264_opens_unit(fu & 0x1f, p.get(2))),
        kind => h264_opens_unit(kind, p.get(1)),
    }
}

impl H264 {
    fn packet(&mut self, packet: &MediaPacket, out: &mut impl FnMut(Frame<'_>)) {
        let p = &packet.payload[..];
        if self.frame.active && packet.timestamp != self.frame.timestamp {
            // The unit's marker never came, yet no packet is missing: it is whole unless a
            // fragmented NAL unit is still open.
            if self.fu_start.is_none() {
                self.complete(out);
            } else {
                self.frame.broken();
            }
        }
        if !self.frame.continues(packet) {
            if !h264_packet_opens_unit(p) {
                // The middle of a unit whose start was lost (or never seen): skipped.
                self.frame.broken();
                return;
            }
            self.frame.begin(packet);
            self.fu_start = None;
        }
        if self.push(p).is_none() {
            self.frame.broken();
            return;
        }
        if packet.marker {
            if self.fu_start.is_some() {
                self.frame.broken();
                return;
            }
            self.complete(out);
        }
    }

    /// Appends the packet's NAL units (or fragment) to the unit; `None` when it is malformed
    /// or of a type the recorder does not take.
    fn push(&mut self, p: &[u8]) -> Option<()> {
        let mut c = Cursor::new(p);
        let header = c.u8()?;
        let buf = &mut self.frame.buf;
        match header & 0x1f {
            1..=23 => {
                if self.fu_start.is_some() {
                    return None;
                }
                push_nal(buf, p);
            }
            NAL_STAP_A => {
                if self.fu_start.is_some() {
                    return None;
                }
                while c.at < c.bytes.len() {
                    let n = usize::from(c.u16_be()?);
                    let nal = c.take(n)?;
                    if nal.is_empty() {
                        return None;
                    }
                    push_nal(buf, nal);
                }
            }
            NAL_FU_A => {
                let fu = c.u8()?;
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                match (start, self.fu_start) {
                    (true, None) => {
                        self.fu_start = Some(buf.len());
                        buf.extend_from_slice(&[0; 4]);
                        buf.push((header & 0xe0) | (fu & 0x1f));
                    }
                    (false, Some(_)) => {}
                    // A start inside an open unit, or a fragment without its start.
                    _ => return None,
                }
                buf.extend_from_slice(c.rest());
                if end {
                    let at = self.fu_start.take()?;
                    let len = u32::try_from(buf.len() - at - 4).ok()?;
                    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
            }
            // Reserved (RFC 6184 table 1): ignored.
            0 | 30 | 31 => {}
            // STAP-B, MTAP16, MTAP24, FU-B: interleaved mode only, never negotiated.
            _ => return None,
        }
        Some(())
    }

    /// The unit is whole: notes its SPS / PPS / IDR, hands it on through the keyframe gate.
    fn complete(&mut self, out: &mut impl FnMut(Frame<'_>)) {
        if self.frame.buf.is_empty() {
            self.frame.active = false;
            return;
        }
        let mut idr = false;
        let mut changed = false;
        let mut c = Cursor::new(&self.frame.buf);
        while c.at < c.bytes.len() {
            let Some(nal) = c
                .take(4)
                .and_then(|n| c.take(u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize))
            else {
                break;
            };
            let target = match nal.first().map(|h| h & 0x1f) {
                Some(NAL_IDR) => {
                    idr = true;
                    continue;
                }
                Some(NAL_SPS) => &mut self.sps,
                Some(NAL_PPS) => &mut self.pps,
                _ => continue,
            };
            if target.as_slice() != nal {
                target.clear();
                target.extend_from_slice(nal);
                changed = true;
            }
        }
        if changed {
            self.size = h264_sps_size(&self.sps);
            self.config.clear();
            if let Some(private) = h264_codec_private(&self.sps, &self.pps) {
                self.config = private;
            }
        }
        self.frame.keyframe = idr && !self.config.is_empty();
        self.frame.size = if self.frame.keyframe { self.size } else { None };
        let config = if self.frame.keyframe {
            &self.config[..]
        } else {
            &[]
        };
        self.frame.complete(config, out);
    }
}

/// Appends a NAL unit in AVCC form (its 4-byte big-endian length, then the unit).
fn push_nal(buf: &mut Vec<u8>, nal: &[u8]) {
    buf.extend_from_slice(&(nal.len() as u32).to_be_bytes());
    buf.extend_from_slice(nal);
}

/// The Matroska `CodecPrivate` of H.264 (`avcC`, ISO/IEC 14496-15 §5.3.3.1): version 1, the
/// SPS's profile, compatibility and level, 4-byte NAL lengths, one SPS, one PPS. `None` when
/// either is missing or too short.
pub(crate) fn h264_codec_private(sps: &[u8], pps: &[u8]) -> Option<Vec<u8>> {
    if sps.len() < 4 || pps.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(11 + sps.len() + pps.len());
    out.extend_from_slice(&[1, sps[1], sps[2], sps[3], 0xff, 0xe1]);
    out.extend_from_slice(&u16::try_from(sps.len()).ok()?.to_be_bytes());
    out.extend_from_slice(sps);
    out.push(1);
    out.extend_from_slice(&u16::try_from(pps.len()).ok()?.to_be_bytes());
    out.extend_from_slice(pps);
    Some(out)
}

/// The picture size an SPS NAL unit (header included) says, cropping applied (H.264 §7.3.2.1).
pub(crate) fn h264_sps_size(sps: &[u8]) -> Option<(u16, u16)> {
    // The RBSP: emulation prevention bytes (0x03 after two zeros) removed.
    let mut rbsp = Vec::with_capacity(sps.len());
    let mut zeros = 0;
    for &b in sps.get(1..)? {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut b = Bits {
        bytes: &rbsp,
        bit: 0,
    };
    let profile = b.read(8)?;
    b.read(16)?; // constraint flags, level
    b.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = b.ue()?;
        if chroma_format == 3 && b.read(1)? == 1 {
            chroma_format = 0; // separate colour planes: cropped like monochrome
        }
        b.ue()?; // bit_depth_luma_minus8
        b.ue()?; // bit_depth_chroma_minus8
        b.read(1)?; // qpprime_y_zero_transform_bypass_flag
        if b.read(1)? == 1 {
            // seq_scaling_matrix_present_flag: the lists are skipped (§7.3.2.1.1.1).
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if b.read(1)? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + b.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    b.ue()?; // log2_max_frame_num_minus4
    match b.ue()? {
        0 => {
            b.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            b.read(1)?;
            b.se()?;
            b.se()?;
            for _ in 0..b.ue()? {
                b.se()?;
            }
        }
        _ => {}
    }
    b.ue()?; // max_num_ref_frames
    b.read(1)?; // gaps_in_frame_num_value_allowed_flag
    // u64: nothing a (hostile) SPS says can overflow.
    let width_mbs = u64::from(b.ue()?) + 1;
    let height_units = u64::from(b.ue()?) + 1;
    let frame_mbs_only = u64::from(b.read(1)?);
    if frame_mbs_only == 0 {
        b.read(1)?; // mb_adaptive_frame_field_flag
    }
    b.read(1)?; // direct_8x8_inference_flag
    let mut width = width_mbs * 16;
    let mut height = (2 - frame_mbs_only) * height_units * 16;
    if b.read(1)? == 1 {
        let (sub_width, sub_height) = match chroma_format {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let unit_x = if chroma_format == 0 { 1 } else { sub_width };
        let unit_y = (2 - frame_mbs_only) * if chroma_format == 0 { 1 } else { sub_height };
        let mut crop = || b.ue().map(u64::from);
        let (left, right, top, bottom) = (crop()?, crop()?, crop()?, crop()?);
        width = width.checked_sub(unit_x * (left + right))?;
        height = height.checked_sub(unit_y * (top + bottom))?;
    }
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?)).filter(|&(w, h)| w > 0 && h > 0)
}

/// Reads bits, most significant first.
struct Bits<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.bytes.get(self.bit / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.bit % 8)) & 1);
            self.bit += 1;
        }
        Some(v)
    }
    /// An unsigned Exp-Golomb number (H.264 §9.1), at most 31 leading zeros.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.read(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.read(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    /// A signed Exp-Golomb number (H.264 §9.1.1).
    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// The payload of a sequence header OBU written by [`Av1::push_obu`] (header, size, payload).
fn av1_sequence_payload(obu: &[u8]) -> Option<&[u8]> {
    let mut c = Cursor::new(obu);
    let header = c.u8()?;
    if header & 0x04 != 0 {
        c.skip(1)?;
    }
    let n = c.leb128()?;
    c.take(n)
}

/// The profile, first operating point's level and tier of a sequence header OBU, and the
/// bit reader positioned after the operating points (AV1 spec §5.5.1). `None` when it carries
/// timing or decoder model information (not parsed: WebRTC encoders do not send it).
fn av1_sequence_start(obu: &[u8]) -> Option<(u8, u8, u8, Bits<'_>)> {
    let mut b = Bits {
        bytes: av1_sequence_payload(obu)?,
        bit: 0,
    };
    let profile = b.read(3)? as u8;
    b.read(1)?; // still_picture
    let reduced = b.read(1)? == 1;
    if reduced {
        let level = b.read(5)? as u8;
        return Some((profile, level, 0, b));
    }
    if b.read(1)? == 1 {
        return None; // timing_info_present_flag
    }
    let initial_display_delay = b.read(1)? == 1;
    let points = b.read(5)? + 1;
    let (mut level0, mut tier0) = (0, 0);
    for i in 0..points {
        b.read(12)?; // operating_point_idc
        let level = b.read(5)? as u8;
        let tier = if level > 7 { b.read(1)? as u8 } else { 0 };
        if initial_display_delay && b.read(1)? == 1 {
            b.read(4)?;
        }
        if i == 0 {
            (level0, tier0) = (level, tier);
        }
    }
    Some((profile, level0, tier0, b))
}

/// The maximum frame size a sequence header OBU announces.
fn av1_max_frame_size(obu: &[u8]) -> Option<(u16, u16)> {
    let (_, _, _, mut b) = av1_sequence_start(obu)?;
    let wbits = b.read(4)? + 1;
    let hbits = b.read(4)? + 1;
    let w = b.read(wbits)? + 1;
    let h = b.read(hbits)? + 1;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

/// The Matroska `CodecPrivate` of AV1 (`av1C`, AV1-ISOBMFF §2.3) for a sequence header OBU:
/// version 1, profile, level, tier, then 8-bit 4:2:0 (what WebRTC encoders send; the decoder
/// reads the real values from the sequence header, which follows as the config OBU).
pub(crate) fn av1_codec_private(obu: &[u8]) -> Vec<u8> {
    let (profile, level, tier) = av1_sequence_start(obu)
        .map(|(p, l, t, _)| (p, l, t))
        .unwrap_or((0, 31, 0));
    let mut out = Vec::with_capacity(4 + obu.len());
    out.push(0x81);
    out.push((profile << 5) | (level & 0x1f));
    // tier, high_bitdepth 0, twelve_bit 0, monochrome 0, subsampling_x 1, subsampling_y 1.
    out.push((tier << 7) | 0x0c);
    out.push(0);
    out.extend_from_slice(obu);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::h264_rtp::{fu_a, stap_a};
    use bytes::Bytes;

    fn packet(sequence: u16, timestamp: u32, marker: bool, payload: Vec<u8>) -> MediaPacket {
        let mut p = MediaPacket::new(
            1,
            sequence,
            timestamp,
            96,
            Bytes::from(payload),
            Instant::now(),
        );
        p.marker = marker;
        p
    }

    fn order(r: &mut Reorder, packets: Vec<MediaPacket>) -> Vec<String> {
        let mut got = Vec::new();
        for p in packets {
            r.push(p, &mut |o| {
                got.push(match o {
                    Ordered::Packet(p) => format!("{}", p.sequence),
                    Ordered::Lost(n) => format!("lost{n}"),
                })
            });
        }
        got
    }

    fn seqs(list: &[u16]) -> Vec<MediaPacket> {
        list.iter().map(|&s| packet(s, 0, false, vec![1])).collect()
    }

    #[test]
    fn reorder_passes_in_order_and_sorts_reordered() {
        let mut r = Reorder::default();
        assert_eq!(order(&mut r, seqs(&[10, 11, 12])), ["10", "11", "12"]);
        assert_eq!(order(&mut r, seqs(&[14, 13, 15])), ["13", "14", "15"]);
    }

    #[test]
    fn reorder_drops_duplicates_and_late_packets() {
        let mut r = Reorder::default();
        assert_eq!(order(&mut r, seqs(&[1, 1, 2, 1, 3, 3])), ["1", "2", "3"]);
        // 5 is buffered; a second 5 is a duplicate too.
        assert_eq!(order(&mut r, seqs(&[5, 5, 4])), ["4", "5"]);
    }

    #[test]
    fn reorder_wraps_the_sequence_number() {
        let mut r = Reorder::default();
        assert_eq!(
            order(&mut r, seqs(&[65534, 0, 65535, 1])),
            ["65534", "65535", "0", "1"]
        );
    }

    #[test]
    fn reorder_gives_up_after_enough_newer_packets() {
        let mut r = Reorder::default();
        let mut list = vec![0u16];
        list.extend(2..=(1 + GIVE_UP_PACKETS as u16));
        let got = order(&mut r, seqs(&list));
        assert_eq!(got[0], "0");
        assert_eq!(got[1], "lost1");
        assert_eq!(got.len(), 2 + GIVE_UP_PACKETS as usize);
        // The repaired packet arrives too late: ignored.
        assert!(order(&mut r, seqs(&[1])).is_empty());
    }

    #[test]
    fn reorder_gives_up_after_a_while_and_on_flush() {
        let mut r = Reorder::default();
        assert_eq!(order(&mut r, seqs(&[0, 2])), ["0"]);
        let mut got = Vec::new();
        let mut sink = |o: Ordered| {
            got.push(match o {
                Ordered::Packet(p) => format!("{}", p.sequence),
                Ordered::Lost(n) => format!("lost{n}"),
            })
        };
        r.poll(Instant::now(), &mut sink);
        r.poll(Instant::now() + GIVE_UP_AFTER, &mut sink);
        assert_eq!(got, ["lost1", "2"]);
        let mut r = Reorder::default();
        assert_eq!(order(&mut r, seqs(&[0, 3, 5])), ["0"]);
        let mut got = Vec::new();
        r.flush(&mut |o| {
            got.push(match o {
                Ordered::Packet(p) => format!("{}", p.sequence),
                Ordered::Lost(n) => format!("lost{n}"),
            })
        });
        assert_eq!(got, ["lost2", "3", "lost1", "5"]);
    }

    #[test]
    fn reorder_survives_a_jump_in_numbering() {
        let mut r = Reorder::default();
        assert_eq!(order(&mut r, seqs(&[0, 1])), ["0", "1"]);
        assert_eq!(
            order(&mut r, seqs(&[30000, 30001])),
            ["lost29998", "30000", "30001"]
        );
    }

    /// Feeds packets through a depacketizer: (timestamp, keyframe, data) of each frame out.
    fn frames(d: &mut Depacketizer, packets: &[MediaPacket]) -> Vec<(u32, bool, Vec<u8>)> {
        let mut got = Vec::new();
        for p in packets {
            d.packet(p, &mut |f| {
                got.push((f.timestamp, f.keyframe, f.data.to_vec()))
            });
        }
        got
    }

    /// A VP8 frame in packets: descriptor with S on the first, the key bit in the frame tag.
    fn vp8_frame(seq: u16, ts: u32, key: bool, parts: usize) -> Vec<MediaPacket> {
        (0..parts)
            .map(|i| {
                let mut payload = vec![if i == 0 { 0x10 } else { 0x00 }];
                // X with a 15-bit picture ID, to exercise the descriptor's length.
                payload[0] |= 0x80;
                payload.extend([0x80, 0x80 | (ts >> 8) as u8, ts as u8]);
                if i == 0 {
                    payload.push(if key { 0x00 } else { 0x01 });
                }
                payload.extend([i as u8; 3]);
                packet(seq + i as u16, ts, i + 1 == parts, payload)
            })
            .collect()
    }

    #[test]
    fn vp8_assembles_frames_and_waits_for_a_keyframe() {
        let mut d = Depacketizer::new(Codec::Vp8);
        assert!(d.take_wants_keyframe());
        // A delta frame first: skipped, keyframe wanted.
        assert!(frames(&mut d, &vp8_frame(0, 0, false, 2)).is_empty());
        assert!(d.take_wants_keyframe());
        let got = frames(&mut d, &vp8_frame(2, 3000, true, 3));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 3000);
        assert!(got[0].1);
        // Descriptors stripped: tag byte then each part's bytes.
        assert_eq!(got[0].2, [0x00, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        let got = frames(&mut d, &vp8_frame(5, 6000, false, 2));
        assert_eq!(got.len(), 1);
        assert!(!got[0].1);
        assert!(!d.take_wants_keyframe());
    }

    #[test]
    fn vp8_drops_a_frame_with_a_loss_until_the_next_keyframe() {
        let mut d = Depacketizer::new(Codec::Vp8);
        assert_eq!(frames(&mut d, &vp8_frame(0, 0, true, 2)).len(), 1);
        d.take_wants_keyframe();
        let mut f = vp8_frame(2, 3000, false, 3);
        let last = f.pop().unwrap();
        assert!(frames(&mut d, &f).is_empty());
        d.lost();
        assert!(frames(&mut d, &[last]).is_empty());
        assert!(d.take_wants_keyframe());
        // A complete delta frame after the loss is still skipped.
        assert!(frames(&mut d, &vp8_frame(6, 6000, false, 1)).is_empty());
        let got = frames(&mut d, &vp8_frame(7, 9000, true, 2));
        assert_eq!(got.len(), 1);
        assert!(got[0].1);
        // A frame whose marker never came (the next frame starts): dropped, keyframe wanted.
        let mut f = vp8_frame(9, 12000, false, 2);
        f.pop();
        assert!(frames(&mut d, &f).is_empty());
        d.take_wants_keyframe();
        assert!(frames(&mut d, &vp8_frame(11, 15000, false, 1)).is_empty());
        assert!(d.take_wants_keyframe());
    }

    #[test]
    fn vp8_keyframe_size_and_garbage() {
        let mut d = Depacketizer::new(Codec::Vp8);
        // S, PID 0, key tag, start code, 320 x 240.
        let payload = vec![
            0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00,
        ];
        let mut sizes = Vec::new();
        d.packet(&packet(0, 0, true, payload), &mut |f| sizes.push(f.size));
        assert_eq!(sizes, [Some((320, 240))]);
        for junk in [vec![], vec![0x80], vec![0x90, 0x80]] {
            assert!(frames(&mut d, &[packet(1, 1, true, junk)]).is_empty());
        }
    }

    /// A VP9 packet: descriptor I (7-bit) P? B? E?, optionally with layer indices.
    fn vp9_packet(seq: u16, ts: u32, b: bool, e: bool, inter: bool, marker: bool) -> MediaPacket {
        let b0 = 0x80
            | if inter { 0x40 } else { 0 }
            | if b { 0x08 } else { 0 }
            | if e { 0x04 } else { 0 };
        packet(seq, ts, marker, vec![b0, 0x05, seq as u8, seq as u8])
    }

    #[test]
    fn vp9_assembles_a_picture_and_waits_for_a_keyframe_after_loss() {
        let mut d = Depacketizer::new(Codec::Vp9);
        let key = [
            vp9_packet(0, 0, true, false, false, false),
            vp9_packet(1, 0, false, true, false, true),
        ];
        let got = frames(&mut d, &key);
        assert_eq!(got, [(0, true, vec![0, 0, 1, 1])]);
        let delta = [vp9_packet(2, 3000, true, true, true, true)];
        assert_eq!(frames(&mut d, &delta).len(), 1);
        d.take_wants_keyframe();
        // The B packet of the next picture is lost.
        d.lost();
        assert!(frames(&mut d, &[vp9_packet(4, 6000, false, true, true, true)]).is_empty());
        assert!(frames(&mut d, &[vp9_packet(5, 9000, true, true, true, true)]).is_empty());
        assert!(d.take_wants_keyframe());
        assert_eq!(
            frames(&mut d, &[vp9_packet(6, 12000, true, true, false, true)]).len(),
            1
        );
    }

    #[test]
    fn vp9_two_spatial_layers_make_a_superframe() {
        let mut d = Depacketizer::new(Codec::Vp9);
        // L: TID 0, SID 0 / SID 1, non-flexible (TL0PICIDX follows).
        // The frames' bytes have no VP9 frame marker: the descriptor alone decides.
        let p0 = packet(0, 0, false, vec![0x28 | 0x04, 0x00, 0x00, 0x2a, 0x2a]);
        let p1 = packet(1, 0, true, vec![0x28 | 0x04, 0x02, 0x00, 0xbb]);
        let got = frames(&mut d, &[p0, p1]);
        assert_eq!(got.len(), 1);
        // Frames, then the index: marker 0b110_00_001, sizes 2 and 1, marker.
        assert_eq!(got[0].2, [0x2a, 0x2a, 0xbb, 0xc1, 2, 1, 0xc1]);
    }

    /// The start of a keyframe as libvpx-vp9 writes it, profile 0: marker 10, profile 00,
    /// show_existing 0, frame_type 0, show_frame 1, error_resilient 0; the sync code;
    /// color_space 010 (BT.709), range 0; 320 x 240 as (w - 1, h - 1) in 16 bits each.
    const VP9_KEY_320X240: [u8; 9] = [0x82, 0x49, 0x83, 0x42, 0x40, 0x13, 0xf0, 0x0e, 0xf0];

    #[test]
    fn vp9_frame_headers_tell_keyframes_and_their_size() {
        let key = VP9_KEY_320X240;
        assert_eq!(vp9_header(&key), Some(Vp9Header::Key((320, 240))));
        // frame_type 1 and show_existing_frame 1.
        assert_eq!(vp9_header(&[0x86, 0x00]), Some(Vp9Header::NotKey));
        assert_eq!(vp9_header(&[0x88, 0x00]), Some(Vp9Header::NotKey));
        // No frame marker, a keyframe without its sync code, cut short.
        assert_eq!(vp9_header(&[0x02, 0x49, 0x83, 0x42]), None);
        assert_eq!(
            vp9_header(&[0x82, 0x49, 0x83, 0x43, 0x40, 0, 0, 0, 0]),
            None
        );
        assert_eq!(vp9_header(&key[..6]), None);
        assert_eq!(vp9_header(&[]), None);
    }

    #[test]
    fn vp9_trusts_the_frame_header_over_a_descriptor_that_says_every_frame_is_key() {
        // A sender that never sets P (webrtc-rs's payloader): the delta frame's header says
        // so, and after a loss the file waits for the real keyframe.
        let mut key = vec![0x80 | 0x08 | 0x04, 0x05];
        key.extend(VP9_KEY_320X240);
        let delta = vec![0x80 | 0x08 | 0x04, 0x05, 0x86, 0x00, 0x11];
        let mut d = Depacketizer::new(Codec::Vp9);
        let mut out = Vec::new();
        for p in [
            packet(1, 0, true, key.clone()),
            packet(2, 3000, true, delta.clone()),
            packet(4, 9000, true, delta),
            packet(5, 12000, true, key),
        ] {
            // Packet 3 is lost: the next delta frame is not written, the keyframe after it is.
            if p.sequence == 4 {
                d.lost();
            }
            d.packet(&p, &mut |f| out.push((f.timestamp, f.keyframe, f.size)));
        }
        assert_eq!(
            out,
            [
                (0, true, Some((320, 240))),
                (3000, false, None),
                (12000, true, Some((320, 240)))
            ]
        );
    }

    #[test]
    fn vp9_scalability_structure_gives_the_size() {
        // V with N_S = 0, Y: 640 x 360.
        let d = vp9_descriptor(&[0x0e, 0x10, 0x02, 0x80, 0x01, 0x68, 0x55]).unwrap();
        assert_eq!(d.size, Some((640, 360)));
        assert_eq!(d.len, 6);
        assert!(vp9_descriptor(&[0x0e, 0x10, 0x02]).is_none());
    }

    /// An AV1 sequence header OBU (reduced still picture header: profile 0, level 8, 10-bit
    /// width and height fields for 320 x 240), with its size field.
    fn av1_sequence_header() -> Vec<u8> {
        // profile 000, still 1, reduced 1, level 01000, wbits-1 1001, hbits-1 1001,
        // w-1 = 319 (10 bits), h-1 = 239 (10 bits).
        let bits = "000 1 1 01000 1001 1001 0100111111 0011101111";
        let bits: String = bits.split_whitespace().collect();
        let mut payload = vec![0u8; bits.len().div_ceil(8)];
        for (i, c) in bits.chars().enumerate() {
            if c == '1' {
                payload[i / 8] |= 0x80 >> (i % 8);
            }
        }
        let mut obu = vec![(OBU_SEQUENCE_HEADER << 3) | 0x02, payload.len() as u8];
        obu.extend(payload);
        obu
    }

    #[test]
    fn av1_rebuilds_a_temporal_unit_from_fragments() {
        let mut d = Depacketizer::new(Codec::Av1);
        let seq = av1_sequence_header();
        // A frame OBU (type 6) without size field, split across two packets.
        let frame_obu = [0x30, 1, 2, 3, 4, 5];
        // Packet 1: N, W = 0: [len][TD], [len][seq], then the first 3 bytes, continuing (Y).
        let mut p1 = vec![0x48];
        p1.extend([2, 0x12, 0x00]); // a temporal delimiter: removed
        p1.push(seq.len() as u8);
        p1.extend(&seq);
        p1.push(3);
        p1.extend(&frame_obu[..3]);
        // Packet 2: Z, W = 1: the rest of the frame OBU.
        let mut p2 = vec![0x90];
        p2.extend(&frame_obu[3..]);
        let got = {
            let mut got = Vec::new();
            for p in [packet(0, 0, false, p1), packet(1, 0, true, p2)] {
                d.packet(&p, &mut |f| {
                    got.push((f.keyframe, f.data.to_vec(), f.config.to_vec(), f.size))
                });
            }
            got
        };
        assert_eq!(got.len(), 1);
        let (key, data, config, size) = &got[0];
        assert!(key);
        let mut want = seq.clone();
        want.extend([0x32, 5, 1, 2, 3, 4, 5]);
        assert_eq!(data, &want);
        assert_eq!(config, &seq);
        assert_eq!(*size, Some((320, 240)));
        let private = av1_codec_private(config);
        assert_eq!(&private[..4], &[0x81, 0x08, 0x0c, 0x00]);
    }

    #[test]
    fn av1_continuation_without_its_start_is_dropped() {
        let mut d = Depacketizer::new(Codec::Av1);
        // Z set on the first packet of a temporal unit: its start was lost.
        assert!(frames(&mut d, &[packet(0, 0, true, vec![0x90, 0x30, 1])]).is_empty());
        // A delta temporal unit (no N, no sequence header) before any keyframe: skipped.
        assert!(frames(&mut d, &[packet(1, 10, true, vec![0x10, 0x30, 1])]).is_empty());
        assert!(d.take_wants_keyframe());
        // Garbage never panics.
        for junk in [vec![], vec![0x00, 0xff], vec![0x20, 0x80, 0x80, 0x80]] {
            frames(&mut d, &[packet(2, 20, true, junk)]);
        }
    }

    #[test]
    fn opus_passes_every_packet_and_ignores_losses() {
        let mut d = Depacketizer::new(Codec::Opus);
        assert!(!d.take_wants_keyframe());
        let got = frames(&mut d, &[packet(0, 0, false, vec![1, 2])]);
        d.lost();
        let got2 = frames(&mut d, &[packet(2, 1920, false, vec![3])]);
        assert_eq!(got, [(0, true, vec![1, 2])]);
        assert_eq!(got2, [(1920, true, vec![3])]);
    }

    /// The SPS and PPS of libx264's baseline 320 x 240 (with an emulation prevention byte).
    const SPS_320X240: &str = "6742c00dd90141fb0110000003001000000303c0f142a480";
    const PPS: &str = "68cb83cb20";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// AVCC form of NAL units.
    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend((n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }

    /// An IDR slice and a non-IDR slice (first_mb_in_slice 0: the first bit after the header).
    const IDR: [u8; 8] = [0x65, 0x88, 1, 2, 3, 4, 5, 6];
    const DELTA: [u8; 4] = [0x41, 0x9a, 7, 8];

    /// Packets of a keyframe unit: STAP-A (SPS, PPS), then the IDR in 3 FU-As.
    fn h264_key(seq: u16, ts: u32) -> Vec<MediaPacket> {
        let (sps, pps) = (hex(SPS_320X240), hex(PPS));
        let mut payloads = vec![stap_a(&[&sps, &pps])];
        payloads.extend(fu_a(&IDR, (IDR.len() - 1).div_ceil(3)));
        let n = payloads.len();
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| packet(seq.wrapping_add(i as u16), ts, i + 1 == n, p))
            .collect()
    }

    fn h264_delta(seq: u16, ts: u32) -> MediaPacket {
        packet(seq, ts, true, DELTA.to_vec())
    }

    #[test]
    fn h264_sps_size_and_avcc() {
        assert_eq!(h264_sps_size(&hex(SPS_320X240)), Some((320, 240)));
        // libx264 high profile, 200 x 120: 13 x 8 macroblocks, cropped by 8 and 8.
        let high = hex("6764000cacd943447965c044000003000400000300f03c50a658");
        assert_eq!(h264_sps_size(&high), Some((200, 120)));
        assert_eq!(h264_sps_size(&[0x67, 0x42]), None);
        let (sps, pps) = (hex(SPS_320X240), hex(PPS));
        let private = h264_codec_private(&sps, &pps).unwrap();
        assert_eq!(&private[..8], &[1, 0x42, 0xc0, 0x0d, 0xff, 0xe1, 0, 24]);
        assert_eq!(&private[8..32], &sps[..]);
        assert_eq!(&private[32..], &[1, 0, 5, 0x68, 0xcb, 0x83, 0xcb, 0x20]);
        assert!(h264_codec_private(&sps, &[]).is_none());
    }

    #[test]
    fn h264_assembles_stap_a_and_fu_a_into_avcc() {
        let mut d = Depacketizer::new(Codec::H264);
        assert!(d.take_wants_keyframe());
        // A delta unit first: skipped.
        assert!(frames(&mut d, &[h264_delta(0, 0)]).is_empty());
        let mut got = Vec::new();
        for p in h264_key(1, 3000) {
            d.packet(&p, &mut |f| {
                got.push((f.keyframe, f.data.to_vec(), f.config.to_vec(), f.size))
            });
        }
        assert_eq!(got.len(), 1);
        let (sps, pps) = (hex(SPS_320X240), hex(PPS));
        let (key, data, config, size) = &got[0];
        assert!(key);
        assert_eq!(data, &avcc(&[&sps, &pps, &IDR]));
        assert_eq!(config, &h264_codec_private(&sps, &pps).unwrap());
        assert_eq!(*size, Some((320, 240)));
        // Wanted since the skipped delta unit; no more once the keyframe came.
        assert!(d.take_wants_keyframe());
        let got = frames(&mut d, &[h264_delta(5, 6000)]);
        assert_eq!(got, [(6000, false, avcc(&[&DELTA]))]);
        // A unit of two slices whose marker never came: handed on when the next one starts.
        let second_slice = [0x41, 0x40, 9]; // first_mb_in_slice 1: continues a picture
        let got = frames(
            &mut d,
            &[
                packet(6, 9000, false, DELTA.to_vec()),
                packet(7, 9000, false, second_slice.to_vec()),
                h264_delta(8, 12000),
            ],
        );
        assert_eq!(
            got,
            [
                (9000, false, avcc(&[&DELTA, &second_slice])),
                (12000, false, avcc(&[&DELTA]))
            ]
        );
        assert!(!d.take_wants_keyframe());
    }

    #[test]
    fn h264_reordered_and_wrapping_packets() {
        let mut d = Depacketizer::new(Codec::H264);
        let mut r = Reorder::default();
        // Sequence numbers and timestamps both wrap inside the keyframe and after it.
        let mut packets = h264_key(65534, u32::MAX - 1000);
        packets.push(h264_delta(2, 1999));
        packets.push(h264_delta(3, 4999));
        packets.swap(1, 2);
        packets.swap(4, 5);
        let mut got = Vec::new();
        for p in packets {
            r.push(p, &mut |o| match o {
                Ordered::Packet(p) => {
                    d.packet(&p, &mut |f| got.push((f.timestamp, f.keyframe)));
                }
                Ordered::Lost(_) => d.lost(),
            });
        }
        assert_eq!(got, [(u32::MAX - 1000, true), (1999, false), (4999, false)]);
    }

    #[test]
    fn h264_fu_a_with_a_lost_middle_waits_for_the_next_idr() {
        let mut d = Depacketizer::new(Codec::H264);
        assert_eq!(frames(&mut d, &h264_key(0, 0)).len(), 1);
        assert_eq!(frames(&mut d, &[h264_delta(4, 3000)]).len(), 1);
        d.take_wants_keyframe();
        // The next keyframe's middle FU-A is lost.
        let mut key = h264_key(5, 6000);
        let tail = key.split_off(2);
        assert!(frames(&mut d, &key).is_empty());
        d.lost();
        assert!(frames(&mut d, &tail[1..]).is_empty());
        assert!(d.take_wants_keyframe());
        // Whole delta units after it are skipped, and keep asking.
        assert!(frames(&mut d, &[h264_delta(9, 9000)]).is_empty());
        assert!(d.take_wants_keyframe());
        // The IDR's first fragment lost: its later fragments never start a unit.
        let key = h264_key(10, 12000);
        assert!(frames(&mut d, &key[..1]).is_empty());
        d.lost();
        assert!(frames(&mut d, &key[2..]).is_empty());
        // The STAP-A lost, the IDR whole: a keyframe on the parameter sets already known.
        let key = h264_key(14, 15000);
        d.lost();
        let got = frames(&mut d, &key[1..]);
        assert_eq!(got, [(15000, true, avcc(&[&IDR]))]);
        assert_eq!(frames(&mut d, &[h264_delta(18, 18000)]).len(), 1);
    }

    #[test]
    fn h264_idr_without_parameter_sets_and_garbage() {
        let mut d = Depacketizer::new(Codec::H264);
        // An IDR before any SPS / PPS cannot start a file.
        assert!(frames(&mut d, &[packet(0, 0, true, IDR.to_vec())]).is_empty());
        assert!(d.take_wants_keyframe());
        for junk in [
            vec![],
            vec![0x78],
            vec![0x78, 0x00, 0x09, 0x67],
            vec![0x7c],
            vec![0x7c, 0x45],
            vec![0x79, 0, 1, 2], // STAP-B
            vec![0x7d, 0x85, 1], // FU-B
        ] {
            frames(&mut d, &[packet(1, 10, true, junk)]);
        }
        assert!(h264_sps_size(&[0x67, 0x64, 0, 0, 0, 0, 0, 0]).is_none());
        // Still recovers at the next keyframe.
        assert_eq!(frames(&mut d, &h264_key(2, 3000)).len(), 1);
    }
}

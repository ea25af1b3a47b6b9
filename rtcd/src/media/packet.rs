//! The SFU's own RTP packet: what the media engine hands the SFU for every packet it receives
//! from a publisher, what the retransmission buffer keeps, and what a down-track decides for
//! each outgoing copy.
//!
//! Nothing here knows the WebRTC stack: the engine converts its stack's packet into a
//! [`MediaPacket`] once per received packet (moving the payload and extension `Bytes`, never
//! copying them), and copies a [`RtpHeaderOut`] back into its stack's packet type once per
//! subscriber. Both types are inline (no `Vec`), so the forwarding path allocates nothing.

use std::time::Instant;

use bytes::Bytes;

use super::vp8::{Vp8Descriptor, Vp8Rewrite};

/// How many header extensions a [`MediaPacket`] keeps. The engine hands over only extensions
/// that the publisher's section negotiated and that describe the media rather than the hop
/// (transport-cc, abs-send-time, mid and rid never are): today that is the audio level alone.
/// Two leave room for one that a later step may negotiate (playout delay, absolute capture
/// time, the AV1 dependency descriptor) while keeping a packet small: every slot of every
/// retransmission buffer holds one (a published camera's ring is ~64 slots), and each slot is
/// a `Bytes` (32 bytes). At sixteen the unused slots were most of a one-to-one participant's
/// memory; going from four to two took a packet from 208 to 144 bytes (2026-12-07), 4 KiB per
/// published camera.
pub const MAX_EXTENSIONS: usize = 2;

// A retransmission slot holds a whole packet inline; keep it at what it is.
const _: () = assert!(std::mem::size_of::<MediaPacket>() <= 144);

/// RFC 6464 client-to-mixer audio level, negotiated so the SFU can detect voice activity.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Audio or video: video waits for a keyframe after a start, a switch of source or a resume;
/// audio decodes from any packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio (Opus): forwarded from the first packet.
    Audio,
    /// Video: forwarded from the first keyframe.
    Video,
}

/// The video codecs whose keyframes the SFU can recognise in an RTP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// VP8, RFC 7741.
    Vp8,
    /// VP9, RFC 9628.
    Vp9,
    /// H.264, RFC 6184 (single NAL unit, STAP-A/B and FU-A/B packets).
    H264,
    /// AV1, the AOM "RTP Payload Format for AV1".
    Av1,
}

/// The header extensions of one packet, inline: up to [`MAX_EXTENSIONS`] `(id, value)` pairs in
/// arrival order. The values are `Bytes` handles on the received buffer, never copies.
#[derive(Clone, Default)]
pub struct HeaderExtensions {
    ids: [u8; MAX_EXTENSIONS],
    values: [Bytes; MAX_EXTENSIONS],
    len: u8,
}

impl HeaderExtensions {
    /// No extensions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one extension; `false` (and nothing kept) when all [`MAX_EXTENSIONS`] slots are
    /// taken, so a hostile publisher cannot make a packet grow.
    pub fn push(&mut self, id: u8, value: Bytes) -> bool {
        let i = usize::from(self.len);
        if i == MAX_EXTENSIONS {
            return false;
        }
        self.ids[i] = id;
        self.values[i] = value;
        self.len += 1;
        true
    }

    /// How many extensions are kept.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th extension (arrival order), as [`RtpHeaderOut::extensions`] refers to them.
    pub fn get_index(&self, i: usize) -> Option<(u8, &Bytes)> {
        (i < self.len()).then(|| (self.ids[i], &self.values[i]))
    }

    /// The value of extension `id`, if the packet carries it.
    pub fn get(&self, id: u8) -> Option<&Bytes> {
        self.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// The `(id, value)` pairs in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &Bytes)> + '_ {
        self.ids[..self.len()]
            .iter()
            .copied()
            .zip(self.values[..self.len()].iter())
    }
}

impl std::fmt::Debug for HeaderExtensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// One received RTP packet, parsed once by the engine and shared (by reference) by every
/// down-track and the retransmission buffer of its track.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// The publisher's SSRC: which source track this packet belongs to.
    pub ssrc: u32,
    /// The publisher's sequence number.
    pub sequence: u16,
    /// The publisher's RTP timestamp.
    pub timestamp: u32,
    /// The publisher's payload type (mapped per subscriber by the down-track).
    pub payload_type: u8,
    /// The marker bit (last packet of a video frame), forwarded unchanged.
    pub marker: bool,
    /// The header extensions, with the publisher's ids (mapped per subscriber).
    pub extensions: HeaderExtensions,
    /// The payload without padding; shared, never copied per subscriber.
    pub payload: Bytes,
    /// How many padding octets the packet carried. A packet that is only padding (bandwidth
    /// probing by the publisher) is not forwarded.
    pub padding: u8,
    /// When the engine received it (drives timestamp continuity and sender reports).
    pub arrival: Instant,
    /// Whether this packet starts a keyframe (see [`detect_keyframe`]); always `false` for
    /// audio, which needs none.
    pub keyframe: bool,
    /// The VP8 payload descriptor's numbers, for a VP8 packet whose descriptor is whole: read
    /// once here so that a down-track that renumbers them after a layer switch (see
    /// [`crate::media::vp8`]) does not parse the payload again per subscriber.
    pub vp8: Option<Vp8Descriptor>,
}

impl MediaPacket {
    /// A packet with no marker, extensions, padding or keyframe flag; set the rest with the
    /// public fields or [`MediaPacket::with_codec`].
    pub fn new(
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        payload_type: u8,
        payload: Bytes,
        arrival: Instant,
    ) -> Self {
        Self {
            ssrc,
            sequence,
            timestamp,
            payload_type,
            marker: false,
            extensions: HeaderExtensions::new(),
            payload,
            padding: 0,
            arrival,
            keyframe: false,
            vp8: None,
        }
    }

    /// Sets [`MediaPacket::keyframe`] from the payload, for a packet of `codec` (`None`: audio,
    /// never a keyframe), and for VP8 [`MediaPacket::vp8`].
    pub fn with_codec(mut self, codec: Option<VideoCodec>) -> Self {
        self.keyframe = codec.is_some_and(|c| detect_keyframe(c, &self.payload));
        self.vp8 = match codec {
            Some(VideoCodec::Vp8) => Vp8Descriptor::parse(&self.payload),
            _ => None,
        };
        self
    }

    /// The picture size a keyframe's first packet announces ([`keyframe_size`]; VP8 only).
    pub fn keyframe_size(&self) -> Option<(u16, u16)> {
        if !self.keyframe || self.vp8.is_none() {
            return None;
        }
        keyframe_size(VideoCodec::Vp8, &self.payload)
    }

    /// A packet with padding and no payload: the publisher probing bandwidth, not media.
    pub fn is_padding_only(&self) -> bool {
        self.payload.is_empty()
    }
}

/// Where one outgoing extension comes from: the subscriber's id and the index of the value in
/// the source packet's [`HeaderExtensions`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ExtensionRef {
    id: u8,
    index: u8,
}

/// The header of one outgoing copy, as a down-track decided it: the engine writes these values
/// into its stack's packet, takes the payload from the source packet (or the retransmission's
/// payload) and the extensions from [`RtpHeaderOut::extensions`]. Inline and `Copy`: no
/// allocation per subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeaderOut {
    /// The subscriber's SSRC (or its RTX SSRC for an RTX retransmission).
    pub ssrc: u32,
    /// The subscriber-side sequence number (or the RTX stream's).
    pub sequence: u16,
    /// The subscriber-side timestamp.
    pub timestamp: u32,
    /// The subscriber's payload type (or its RTX payload type).
    pub payload_type: u8,
    /// The source packet's marker bit.
    pub marker: bool,
    ext: [ExtensionRef; MAX_EXTENSIONS],
    ext_len: u8,
    /// The VP8 descriptor numbers the copy carries when they differ from the source's (after a
    /// layer switch); `None` sends the source payload as it is.
    vp8: Option<Vp8Rewrite>,
}

impl RtpHeaderOut {
    /// A header without extensions.
    pub(crate) fn new(
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        payload_type: u8,
        marker: bool,
    ) -> Self {
        Self {
            ssrc,
            sequence,
            timestamp,
            payload_type,
            marker,
            ext: [ExtensionRef::default(); MAX_EXTENSIONS],
            ext_len: 0,
            vp8: None,
        }
    }

    /// Sets the VP8 numbers the copy must carry (see [`RtpHeaderOut::payload`]).
    pub(crate) fn set_vp8(&mut self, vp8: Option<Vp8Rewrite>) {
        self.vp8 = vp8;
    }

    /// The VP8 numbers the copy carries, when they differ from the source's.
    pub fn vp8(&self) -> Option<Vp8Rewrite> {
        self.vp8
    }

    /// The payload of the outgoing copy of `source` (the packet this header was decided for):
    /// the source's shared `Bytes` (no copy) unless the down-track renumbered its VP8
    /// descriptor after a layer switch, then a copy with the new numbers. Send this, not
    /// `source.payload`, with a header from `DownTrack::forward`, or the subscriber's decoder
    /// sees the layers' own picture IDs jump at every switch. (A retransmission's payload is
    /// already final.)
    pub fn payload(&self, source: &MediaPacket) -> Bytes {
        match (self.vp8, source.vp8) {
            (Some(values), Some(d)) => d.rewrite(&source.payload, values),
            _ => source.payload.clone(),
        }
    }

    /// Adds the source packet's extension at `index` under the subscriber's `id`.
    pub(crate) fn push_extension(&mut self, id: u8, index: usize) {
        let i = usize::from(self.ext_len);
        if i < MAX_EXTENSIONS {
            self.ext[i] = ExtensionRef {
                id,
                index: index as u8,
            };
            self.ext_len += 1;
        }
    }

    /// How many extensions the outgoing copy carries.
    pub fn extension_count(&self) -> usize {
        usize::from(self.ext_len)
    }

    /// The extensions of the outgoing copy of `source` (the packet this header was decided
    /// for): `(subscriber id, value)`, unmapped ones already left out.
    pub fn extensions<'a>(
        &'a self,
        source: &'a MediaPacket,
    ) -> impl Iterator<Item = (u8, &'a Bytes)> + 'a {
        self.ext[..self.extension_count()].iter().filter_map(|r| {
            source
                .extensions
                .get_index(usize::from(r.index))
                .map(|(_, v)| (r.id, v))
        })
    }
}

/// Whether an RTP payload of `codec` starts a keyframe: the packet a down-track may start (or
/// restart) a video stream at. Malformed or truncated payloads are not keyframes.
pub fn detect_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_keyframe(payload),
        VideoCodec::Vp9 => vp9_keyframe(payload),
        VideoCodec::H264 => h264_keyframe(payload),
        VideoCodec::Av1 => av1_keyframe(payload),
    }
}

/// RFC 7741 §4.2 payload descriptor, then the VP8 frame tag (RFC 6386 §9.1): a keyframe when
/// the packet starts partition 0 (S = 1, PID = 0) and the tag's P bit is 0.
fn vp8_keyframe(p: &[u8]) -> bool {
    vp8_keyframe_tag(p).is_some()
}

/// Where the frame tag of a VP8 keyframe starts in `p` (see [`vp8_keyframe`]).
fn vp8_keyframe_tag(p: &[u8]) -> Option<usize> {
    let &b0 = p.first()?;
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    if !start || pid != 0 {
        return None;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // X: extension byte I L T K.
        let &x = p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // I: picture id, 7 or 15 bits (M).
            let &pic = p.get(i)?;
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            // L: TL0PICIDX.
            i += 1;
        }
        if x & 0x30 != 0 {
            // T or K: TID / Y / KEYIDX.
            i += 1;
        }
    }
    p.get(i).is_some_and(|tag| tag & 0x01 == 0).then_some(i)
}

/// The picture size (width, height in pixels) a keyframe's first packet announces, where the
/// codec puts it in a fixed place: VP8 (RFC 6386 §9.1: after the 3-byte frame tag, the start
/// code 9d 01 2a, then 14-bit width and height, little-endian, each with 2 scaling bits).
/// `None` for other codecs (their sizes sit in parameter sets that take a real parser), for
/// packets that do not start a keyframe, and for malformed ones.
pub fn keyframe_size(codec: VideoCodec, payload: &[u8]) -> Option<(u16, u16)> {
    if codec != VideoCodec::Vp8 {
        return None;
    }
    let tag = vp8_keyframe_tag(payload)?;
    let header = payload.get(tag + 3..tag + 10)?;
    if header[..3] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([header[3], header[4]]) & 0x3fff;
    let height = u16::from_le_bytes([header[5], header[6]]) & 0x3fff;
    (width > 0 && height > 0).then_some((width, height))
}

/// RFC 9628 §4.2 payload descriptor: a keyframe when the packet starts a frame (B), the frame
/// is not inter-picture predicted (P = 0) and, with layer indices, it is the base spatial layer.
fn vp9_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    let picture_id = b0 & 0x80 != 0;
    let inter = b0 & 0x40 != 0;
    let layers = b0 & 0x20 != 0;
    let begin = b0 & 0x08 != 0;
    if inter || !begin {
        return false;
    }
    if !layers {
        return true;
    }
    let mut i = 1;
    if picture_id {
        let Some(&pic) = p.get(i) else {
            return false;
        };
        i += if pic & 0x80 != 0 { 2 } else { 1 };
    }
    // Layer indices: TID(3) U(1) SID(3) D(1).
    p.get(i).is_some_and(|l| (l >> 1) & 0x07 == 0)
}

/// H.264 NAL unit types that start a decodable picture: an IDR slice or a sequence parameter
/// set (browsers send SPS, PPS, IDR in that order, often in one STAP-A).
fn h264_starts_keyframe(nal_type: u8) -> bool {
    matches!(nal_type, 5 | 7)
}

/// RFC 6184 §5: single NAL unit packets, STAP-A/B (§5.7.1) and the first fragment of FU-A/B
/// (§5.8).
fn h264_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    match b0 & 0x1f {
        t @ 1..=23 => h264_starts_keyframe(t),
        t @ (24 | 25) => {
            // STAP-B carries a 16-bit DON before the first unit.
            let mut i = if t == 24 { 1 } else { 3 };
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if size == 0 {
                    return false;
                }
                if h264_starts_keyframe(p[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 | 29 => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && h264_starts_keyframe(fu & 0x1f)),
        _ => false,
    }
}

/// AV1 RTP payload format §4.4 aggregation header Z Y W W N - - -: N is set on the first
/// packet of a coded video sequence (which starts with a sequence header and a key frame); Z
/// would mean the packet continues an earlier OBU, which cannot start anything.
fn av1_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|h| h & 0x08 != 0 && h & 0x80 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_and_delta_frames() {
        // Minimal descriptor (S=1, PID=0), frame tag with P=0: keyframe.
        assert!(detect_keyframe(VideoCodec::Vp8, &[0x10, 0x50, 0x42, 0x00]));
        // Same with P=1: an interframe.
        assert!(!detect_keyframe(VideoCodec::Vp8, &[0x10, 0x51, 0x42, 0x00]));
        // Not the start of partition 0.
        assert!(!detect_keyframe(VideoCodec::Vp8, &[0x00, 0x50, 0x42]));
        assert!(!detect_keyframe(VideoCodec::Vp8, &[0x11, 0x50, 0x42]));
        // X with I (15-bit picture id), L and T: the tag is at offset 6.
        let kf = [0x90, 0xe0, 0x80 | 0x12, 0x34, 0x07, 0x40, 0x50];
        assert!(detect_keyframe(VideoCodec::Vp8, &kf));
        let mut delta = kf;
        delta[6] = 0x51;
        assert!(!detect_keyframe(VideoCodec::Vp8, &delta));
        // X with a 7-bit picture id only: tag at offset 3.
        assert!(detect_keyframe(VideoCodec::Vp8, &[0x90, 0x80, 0x12, 0x50]));
        assert!(!detect_keyframe(VideoCodec::Vp8, &[0x90, 0x80, 0x12, 0x51]));
        // Truncated.
        assert!(!detect_keyframe(VideoCodec::Vp8, &[]));
        assert!(!detect_keyframe(VideoCodec::Vp8, &[0x90, 0x80]));
        assert!(!detect_keyframe(VideoCodec::Vp8, &[0x10]));
    }

    #[test]
    fn a_vp8_keyframe_announces_its_size() {
        // Descriptor with a 15-bit picture id, frame tag (P = 0), start code, 640 x 360 with
        // scaling bits set (they are not part of the size).
        let mut kf = vec![0x90, 0x80, 0x80 | 0x12, 0x34, 0x50, 0x42, 0x00];
        kf.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        kf.extend_from_slice(&(640u16 | 0x4000).to_le_bytes());
        kf.extend_from_slice(&(360u16 | 0x8000).to_le_bytes());
        assert_eq!(keyframe_size(VideoCodec::Vp8, &kf), Some((640, 360)));
        // An interframe, a wrong start code, a truncated header, another codec: no size.
        let mut delta = kf.clone();
        delta[4] = 0x51;
        assert_eq!(keyframe_size(VideoCodec::Vp8, &delta), None);
        let mut bad = kf.clone();
        bad[7] = 0x9c;
        assert_eq!(keyframe_size(VideoCodec::Vp8, &bad), None);
        assert_eq!(keyframe_size(VideoCodec::Vp8, &kf[..12]), None);
        assert_eq!(keyframe_size(VideoCodec::H264, &kf), None);
    }

    #[test]
    fn vp9_keyframe_needs_begin_no_inter_and_base_layer() {
        // B=1, P=0, no picture id, no layers.
        assert!(detect_keyframe(VideoCodec::Vp9, &[0x08, 0x00]));
        // P=1.
        assert!(!detect_keyframe(VideoCodec::Vp9, &[0x48, 0x00]));
        // Not the beginning of a frame.
        assert!(!detect_keyframe(VideoCodec::Vp9, &[0x04, 0x00]));
        // I (15-bit picture id) + L, SID 0: keyframe.
        assert!(detect_keyframe(
            VideoCodec::Vp9,
            &[0xa8, 0x81, 0x02, 0x00, 0x00], // TID 0, U 0, SID 0, D 0
        ));
        // Same, SID 1: an upper spatial layer, not a place to start.
        assert!(!detect_keyframe(
            VideoCodec::Vp9,
            &[0xa8, 0x81, 0x02, 0x02, 0x00], // SID 1
        ));
        // 7-bit picture id + L with SID 0.
        assert!(detect_keyframe(VideoCodec::Vp9, &[0xa8, 0x05, 0x00]));
        assert!(!detect_keyframe(VideoCodec::Vp9, &[0xa8, 0x05]));
        assert!(!detect_keyframe(VideoCodec::Vp9, &[]));
    }

    #[test]
    fn h264_single_stap_and_fu() {
        // Single NAL units: IDR (5) and SPS (7) start a keyframe, a non-IDR slice (1) and PPS
        // (8) do not.
        assert!(detect_keyframe(VideoCodec::H264, &[0x65, 0x88]));
        assert!(detect_keyframe(VideoCodec::H264, &[0x67, 0x42]));
        assert!(!detect_keyframe(VideoCodec::H264, &[0x41, 0x9a]));
        assert!(!detect_keyframe(VideoCodec::H264, &[0x68, 0xce]));
        // STAP-A with SEI (6) then SPS.
        let stap = [0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x67, 0x42];
        assert!(detect_keyframe(VideoCodec::H264, &stap));
        // STAP-A with two non-IDR slices.
        let stap = [0x78, 0x00, 0x02, 0x41, 0x9a, 0x00, 0x02, 0x41, 0x9b];
        assert!(!detect_keyframe(VideoCodec::H264, &stap));
        // STAP-A whose size runs past the end: no keyframe, no panic.
        assert!(!detect_keyframe(
            VideoCodec::H264,
            &[0x78, 0xff, 0xff, 0x41]
        ));
        assert!(!detect_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x00, 0x65]
        ));
        // STAP-B: a DON before the first unit.
        let stap_b = [0x79, 0x00, 0x01, 0x00, 0x02, 0x65, 0x88];
        assert!(detect_keyframe(VideoCodec::H264, &stap_b));
        // FU-A: start of an IDR, middle of an IDR, start of a non-IDR slice.
        assert!(detect_keyframe(VideoCodec::H264, &[0x7c, 0x85, 0x88]));
        assert!(!detect_keyframe(VideoCodec::H264, &[0x7c, 0x05, 0x88]));
        assert!(!detect_keyframe(VideoCodec::H264, &[0x7c, 0x81, 0x9a]));
        assert!(!detect_keyframe(VideoCodec::H264, &[0x7c]));
        assert!(!detect_keyframe(VideoCodec::H264, &[]));
    }

    #[test]
    fn av1_new_coded_video_sequence() {
        // N=1, Z=0, W=1.
        assert!(detect_keyframe(VideoCodec::Av1, &[0x18, 0x0a]));
        // N=0.
        assert!(!detect_keyframe(VideoCodec::Av1, &[0x10, 0x32]));
        // N=1 but Z=1 (continuation): not a start.
        assert!(!detect_keyframe(VideoCodec::Av1, &[0x88, 0x32]));
        assert!(!detect_keyframe(VideoCodec::Av1, &[]));
    }

    /// `n` random bytes: an encrypted frame's body looks like this to the SFU.
    fn noise(n: usize) -> Vec<u8> {
        use rand::RngCore as _;
        let mut v = vec![0; n];
        rand::rng().fill_bytes(&mut v);
        v
    }

    /// An end-to-end encrypted frame's trailer (docs/e2ee.md): tag and IV (noise), the clear
    /// count, the key index and the format byte.
    fn e2ee_trailer(clear: u8) -> Vec<u8> {
        let mut t = noise(16 + 12);
        t.extend_from_slice(&[clear, 3, 0xe1]);
        t
    }

    /// The VP8 payload descriptors a browser writes (minimal; with a 15-bit picture ID,
    /// TL0PICIDX and TID), for the first packet of a frame (S = 1, PID = 0) or a later one.
    fn vp8_descriptors(start: bool) -> [Vec<u8>; 2] {
        let s = if start { 0x10 } else { 0x00 };
        [vec![s], vec![0x80 | s, 0xe0, 0x80 | 0x12, 0x34, 0x07, 0x40]]
    }

    #[test]
    fn encrypted_vp8_frames_are_classified_by_their_clear_bytes_alone() {
        for _ in 0..200 {
            for descriptor in vp8_descriptors(true) {
                // A key frame keeps 10 bytes clear: tag (P = 0), start code, 640x360.
                let clear_key = [0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
                let mut key = descriptor.clone();
                key.extend_from_slice(&clear_key);
                key.extend(noise(1000));
                key.extend(e2ee_trailer(10));
                assert!(detect_keyframe(VideoCodec::Vp8, &key), "{key:02x?}");
                assert_eq!(keyframe_size(VideoCodec::Vp8, &key), Some((640, 360)));
                // The first packet of a key frame split at the MTU: no trailer in it.
                let first = &key[..descriptor.len() + 10 + 200];
                assert!(detect_keyframe(VideoCodec::Vp8, first));
                assert_eq!(keyframe_size(VideoCodec::Vp8, first), Some((640, 360)));
                // A delta frame keeps 3 bytes clear: its tag (P = 1).
                let mut delta = descriptor.clone();
                delta.extend_from_slice(&[0x51, 0x10, 0x00]);
                delta.extend(noise(300));
                delta.extend(e2ee_trailer(3));
                assert!(!detect_keyframe(VideoCodec::Vp8, &delta), "{delta:02x?}");
                assert_eq!(keyframe_size(VideoCodec::Vp8, &delta), None);
            }
            // Later packets of a frame are never keyframes, whatever their (encrypted) bytes.
            for descriptor in vp8_descriptors(false) {
                let mut rest = descriptor;
                rest.extend(noise(1000));
                assert!(!detect_keyframe(VideoCodec::Vp8, &rest));
                assert_eq!(keyframe_size(VideoCodec::Vp8, &rest), None);
            }
        }
    }

    #[test]
    fn encrypted_vp8_bodies_pass_a_layer_switch_rewrite_untouched() {
        for descriptor in vp8_descriptors(true) {
            let mut payload = descriptor.clone();
            payload.extend_from_slice(&[0x51, 0x10, 0x00]);
            payload.extend(noise(500));
            payload.extend(e2ee_trailer(3));
            let payload = Bytes::from(payload);
            let parsed = Vp8Descriptor::parse(&payload).expect("a whole descriptor");
            let values = crate::media::vp8::Vp8Rewrite {
                picture_id: 0x0777,
                tl0picidx: 9,
                keyidx: 0,
            };
            let out = parsed.rewrite(&payload, values);
            assert_eq!(out.len(), payload.len());
            // Only the descriptor (RTP payload header, outside the frame) may change.
            assert_eq!(out[descriptor.len()..], payload[descriptor.len()..]);
        }
    }

    #[test]
    fn encrypted_vp9_and_av1_frames_are_classified_by_their_descriptors_alone() {
        for _ in 0..200 {
            // VP9: B = 1, P = 0 (a key frame) or P = 1; AV1: N = 1 or 0. The rest is noise.
            for (codec, head, keyframe) in [
                (VideoCodec::Vp9, 0x08u8, true),
                (VideoCodec::Vp9, 0x48, false),
                (VideoCodec::Av1, 0x18, true),
                (VideoCodec::Av1, 0x10, false),
            ] {
                let mut p = vec![head];
                p.extend(noise(800));
                p.extend(e2ee_trailer(0));
                assert_eq!(detect_keyframe(codec, &p), keyframe, "{codec:?} {p:02x?}");
                assert_eq!(keyframe_size(codec, &p), None);
            }
        }
    }

    #[test]
    fn media_packet_keyframe_from_codec() {
        let t = Instant::now();
        let p = MediaPacket::new(1, 2, 3, 96, Bytes::from_static(&[0x10, 0x50]), t);
        assert!(!p.keyframe);
        assert!(p.clone().with_codec(Some(VideoCodec::Vp8)).keyframe);
        assert!(!p.clone().with_codec(None).keyframe);
        assert!(!p.is_padding_only());
    }

    #[test]
    fn extensions_are_bounded_and_mapped_by_index() {
        let mut e = HeaderExtensions::new();
        for id in 1..=MAX_EXTENSIONS as u8 {
            assert!(e.push(id, Bytes::from(vec![id])));
        }
        assert!(!e.push(99, Bytes::new()));
        assert_eq!(e.len(), MAX_EXTENSIONS);
        assert_eq!(e.get(2).map(|v| v[0]), Some(2));
        assert_eq!(e.get(99), None);

        let t = Instant::now();
        let mut p = MediaPacket::new(1, 2, 3, 96, Bytes::new(), t);
        p.extensions = e;
        let mut h = RtpHeaderOut::new(5, 6, 7, 100, true);
        h.push_extension(11, 1);
        h.push_extension(12, 0);
        let out: Vec<_> = h.extensions(&p).map(|(id, v)| (id, v[0])).collect();
        assert_eq!(out, vec![(11, 2), (12, 1)]);
    }
}

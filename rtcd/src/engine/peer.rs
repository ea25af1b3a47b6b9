//! One client's peer connection on `rtc`, driven by hand.
//!
//! A [`Peer`] performs no IO and reads no clock: the worker that owns it feeds it datagrams
//! ([`Peer::handle_datagram`]) and the time ([`Peer::handle_timeout`]), and drains what it
//! produced: datagrams to send ([`Peer::poll_transmit`]) and events ([`Peer::poll_event`]), media
//! among them. That is what lets one thread own all the peers of a call, and what lets the unit
//! tests below run whole sessions without a socket or a sleep.
//!
//! # Negotiation
//! The client makes every offer; rtcd only answers (`docs/protocol.md` §4a). rtcd is an ICE-lite
//! agent: always controlled, it only answers the client's connectivity checks, so a client that
//! moved (ICE restart, a new address) is found by its own checks and nothing here has to probe.
//! Every section of an offer in which the client receives gets a *sending slot*: a transceiver
//! whose sender has an SSRC of ours, fixed for the life of the slot, into which the SFU's
//! down-tracks write whatever source they currently forward.
//!
//! # The media path
//! `rtc`'s peer connection does SDP and ICE; media never enters its pipeline, which walked
//! every packet by value through eight handlers at every read and write (about half of rtcd's
//! CPU in a one-to-one call, issue 33). The engine runs the DTLS handshake itself (`dtls`: the
//! same certificate, the client's certificate checked against its offer's fingerprint) and
//! keeps the SRTP contexts it keys: a datagram is told apart by its first byte (RFC 7983),
//! STUN goes to `rtc`, DTLS to the handshake, SRTP and SRTCP are decrypted here, bound to the
//! client's section on their first packet (`receiving`, `rtc`'s rules), counted for reports,
//! NACKs and transport-cc feedback in place (`reception`, `arrivals`), and handed to their
//! track; what rtcd sends is counted and numbered in place and encrypted here. Media goes
//! where ICE put the path: the pair the client's last nominating check selected, once `rtc`
//! answered it. `rtc`'s own DTLS endpoint
//! is a server that never hears a record; where the client's offer leaves the role open
//! (`actpass`), the answer tells the client rtcd is the DTLS client, as `rtc` chose before.
//!
//! # Simulcast
//! A publisher may send a video section as several layers (RFC 8853: `a=rid` and
//! `a=simulcast`, each layer with its own SSRC, declared nowhere). The mid, rid and
//! repaired-rid header extensions are negotiated for video so each layer binds from its first
//! packets (`receiving`); the first layer to arrive opens the track ([`PeerEvent::TrackOpened`],
//! with the section's rids), each other one arrives as [`PeerEvent::LayerOpened`], and all
//! their packets come as the track's `Rtp` events, told apart by SSRC. Three things `rtc`
//! 0.21.1 lacks are done here: a layer's retransmissions (repaired-rid) are restored by the
//! repair interceptor (`rtx`); a keyframe is asked of the layer named
//! ([`Peer::request_keyframe`]); and a renegotiation keeps the layers bound
//! (`keep_simulcast_bindings`). A section without rids is one stream, as before.
//!
//! # Certificates
//! One DTLS certificate per process ([`Identity`]), not one per peer connection: generating a key
//! per join is the most expensive part of a join, and the fingerprint says nothing about the user.

use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::crypto::{self, SignatureScheme};
use rtc::interceptor::{Interceptor as _, Registry, StreamInfo};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_twcc_receiver_only;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCIceConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpTransceiverDirection};
use rtc::sansio::Protocol as _;
use rtc::shared::marshal::{Marshal as _, MarshalSize as _, Unmarshal as _};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::bwe::TRANSPORT_CC_URI;
use super::dtls::{Handshake, Outcome, SrtpKeys};
use super::net::demux::{PacketKind, classify};
use super::net::{Protocol, Transport};
use super::receiving;
use crate::media::packet::{MediaKind, MediaPacket, RtpHeaderOut, VideoCodec};
use crate::media::sdp;

/// Why the engine refused something. Mapped by signaling to `INVALID_ARGUMENT` (bad SDP or
/// candidate) or `INTERNAL` (everything else).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The client's SDP could not be applied (malformed, or nothing we can answer).
    #[error("invalid session description: {0}")]
    InvalidSdp(String),
    /// A trickled candidate could not be parsed or added.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    /// Certificate generation or another internal step of the WebRTC library failed.
    #[error("media engine: {0}")]
    Internal(String),
}

fn internal(err: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(err.to_string())
}

/// The process's DTLS identity: one certificate shared by every peer connection.
#[derive(Clone)]
pub struct Identity {
    certificate: RTCCertificate,
}

impl Identity {
    /// Generates an ECDSA P-256 certificate (what browsers generate for themselves).
    pub fn generate() -> Result<Self, EngineError> {
        let provider = crypto::default_provider().map_err(internal)?;
        let params = CertificateParams::new(vec!["rtcd".to_owned()]).map_err(internal)?;
        let certificate =
            RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
                .map_err(internal)?;
        Ok(Self { certificate })
    }
}

impl Identity {
    /// The certificate the engine's own DTLS handshakes present (`dtls`).
    pub(super) fn dtls_certificate(&self) -> rtc::dtls::crypto::Certificate {
        self.certificate.dtls_certificate.clone()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

/// What every peer of this process shares: where rtcd can be reached and how long it waits.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// Our host candidates: the shared UDP port and, if enabled, the ICE-TCP port (passive).
    pub candidates: Vec<Transport>,
    /// No check from the client for this long: the connection is `Disconnected`.
    pub disconnected_timeout: Duration,
    /// And for this long: `Failed`, the session ends.
    pub failed_timeout: Duration,
    /// Whether rtcd estimates what the client's link carries (send-side estimation: every
    /// packet sent numbered for transport-cc, recorded, the client's feedback folded in). Only
    /// when something reads the estimate (adaptive video): it is about 13 % of the engine's
    /// work per packet sent (`bwe::tests::cost_of_estimation_per_packet`, release, 2026-12-04:
    /// 1.95-2.07 us per packet without, 2.25-2.32 with). Without it the client
    /// receives no transport-wide sequence numbers and sends no feedback for what it receives.
    pub estimation: bool,
    /// When packets really leave, for the estimator towards the client: a media worker's
    /// clock (its rounds are flushed after they are written). `None`: a packet leaves at the
    /// `now` it is written with (tests, benches).
    pub departures: Option<super::bwe::Departures>,
}

fn kind_from_rtc(kind: RtpCodecKind) -> Option<MediaKind> {
    match kind {
        RtpCodecKind::Audio => Some(MediaKind::Audio),
        RtpCodecKind::Video => Some(MediaKind::Video),
        _ => None,
    }
}

fn kind_to_rtc(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

/// A track the client publishes, numbered by this peer in the order they opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackKey(pub u32);

/// A sending slot: one section of the client's offer in which rtcd sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub u32);

/// One negotiated codec of a section, what the down-tracks map payload types with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// Its payload type in this section.
    pub payload_type: u8,
    /// `video/VP8`, `audio/opus`, … lower-cased.
    pub mime_type: String,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// The fmtp line (H.264 profiles must match to be the same codec).
    pub fmtp: String,
    /// The payload type of its RTX (RFC 4588) companion, if one was negotiated.
    pub rtx_payload_type: Option<u8>,
}

/// One negotiated RTP header extension of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderExtension {
    /// Its id in this section.
    pub id: u8,
    /// What it is.
    pub uri: String,
}

/// A published track as the engine saw it open (on its first packet).
#[derive(Debug, Clone)]
pub struct OpenedTrack {
    /// The peer's number for it; every media event of the track carries it.
    pub track: TrackKey,
    /// The section (mid) of the client's offer that carries it.
    pub mid: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The SSRC of its first packet.
    pub ssrc: u32,
    /// The simulcast layer (RTP stream id, `a=rid`) of that first packet; `None`: a publisher
    /// sending one stream in the section (no rids), which stays one layer all its life. Each
    /// further layer of a simulcast track arrives as [`PeerEvent::LayerOpened`].
    pub rid: Option<String>,
    /// The section's simulcast layers (rids) in the offer's `a=simulcast` order, lowest
    /// quality first as the SDK sends them (`q`, `h`, `f`); empty without simulcast.
    pub rids: Vec<String>,
    /// The layers bound so far, (rid, SSRC): the opening one; the owner adds those of
    /// [`PeerEvent::LayerOpened`].
    pub layers: Vec<(String, u32)>,
    /// The section's codecs.
    pub codecs: Vec<Codec>,
    /// The section's header extensions.
    pub extensions: Vec<HeaderExtension>,
}

/// A simulcast layer of a published track, bound to the SSRC it is sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedLayer {
    /// The track it is a layer of ([`PeerEvent::TrackOpened`] came first).
    pub track: TrackKey,
    /// Its RTP stream id (`a=rid`), as the publisher named it.
    pub rid: String,
    /// The SSRC its packets carry from now on.
    pub ssrc: u32,
}

/// A sending slot as negotiated by an answer.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The slot.
    pub id: SlotId,
    /// The section (mid) of the client's offer it answers.
    pub mid: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The SSRC rtcd sends with in it, for all its life.
    pub ssrc: u32,
    /// The SSRC of its retransmissions (RFC 4588), for all its life: `Some` while the section
    /// negotiated RTX for a codec (the answer pairs the two with `a=ssrc-group:FID`). A
    /// down-track for the slot sends NACKed packets on it, as `rtx_payload_type` of the codec
    /// with the original sequence number in front of the payload; `None`: plain resends on
    /// `ssrc`.
    pub rtx_ssrc: Option<u32>,
    /// The section's codecs, as the client will decode them.
    pub codecs: Vec<Codec>,
    /// The section's header extensions.
    pub extensions: Vec<HeaderExtension>,
}

/// What a peer tells its owner. Media is an event too: the owner handles everything in order.
///
/// The media variant is the large one and by far the most frequent: boxing it would cost an
/// allocation per received packet to save queue space on the rare control events.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// No check from the client for a while; media may come back (a network change).
    Disconnected,
    /// The connection is gone for good; the session should end.
    Failed,
    /// A published track sent its first packet.
    TrackOpened(OpenedTrack),
    /// A simulcast layer of an opened track sent its first packet, or is sent with a new SSRC
    /// (a publisher restarting it). Not sent for the layer that opened the track, nor for a
    /// track without rids. Its `Rtp` events carry the track's key and the layer's SSRC.
    LayerOpened(OpenedLayer),
    /// An RTP packet of a published track, as the SFU's own packet type (keyframe flag set,
    /// only end-to-end header extensions kept).
    Rtp {
        /// Which track.
        track: TrackKey,
        /// The packet.
        packet: MediaPacket,
    },
    /// The client asks for a keyframe on a slot (PLI or FIR).
    KeyframeRequested(SlotId),
    /// The client lost packets of a slot (generic NACK): sequence numbers as the client saw them.
    Nack {
        /// Which slot.
        slot: SlotId,
        /// The lost sequence numbers.
        lost: Vec<u16>,
    },
    /// What rtcd may send this client, all slots together (media, retransmissions, padding),
    /// from the client's transport-wide congestion feedback (rtcd's estimator, see `engine::bwe`).
    /// Emitted on the first feedback and then whenever the estimate moved by 5 % or more from
    /// the last one emitted: every back-off at once, a climb every 200 ms to 1 s (1-2 events a
    /// second on a congested path, under one on a clean one). A client that never sends
    /// transport-cc feedback (it did not negotiate it) has no estimate and gets no such event.
    /// The estimate's two halves and the loss are in [`Peer::estimate`].
    BandwidthEstimate {
        /// The estimate, in bits per second.
        bits_per_second: u64,
    },
    /// The publisher's RTCP sender report for one stream of a published track: which capture
    /// time (its NTP clock) an RTP timestamp stands for. A recording puts tracks back in sync
    /// with it; nothing else needs it (rtcd sends its own reports downstream).
    SenderReport {
        /// Which track.
        track: TrackKey,
        /// The stream (a simulcast layer's SSRC, or the track's).
        ssrc: u32,
        /// The capture time, 64-bit NTP format (seconds since 1900 in the high half).
        ntp: u64,
        /// The RTP timestamp that stands for it.
        rtp_timestamp: u32,
    },
}

/// rtcd's answer to an offer, with what the caller needs beside the SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The SDP to send to the client.
    pub sdp: String,
    /// Our ICE username fragment in it (changes on an ICE restart).
    pub ufrag: String,
    /// The sending slots after this negotiation, in mid order.
    pub slots: Vec<SlotId>,
}

struct SlotState {
    slot: Slot,
    track_id: String,
    /// The mid header extension every packet of the slot carries (its id in the section, the
    /// section's mid), where the section negotiated it. RFC 8843 wants it sent at least until
    /// the receiver has the description that binds the SSRC; rtcd sends it always (a few
    /// bytes): a packet of a new section reaches the client (always the offerer) before
    /// rtcd's answer does, and Firefox, which demultiplexes such a packet by payload type
    /// while its offer is pending, gave a new camera to the section of an earlier camera,
    /// whose receiver then held the SSRC: the new section never received anything.
    mid_stamp: Option<(u8, Bytes)>,
    /// What sender reports and transport-cc numbering were told of the slot's stream (at its
    /// first packet), if anything.
    bound: Option<StreamInfo>,
}

/// A sending transceiver created for a new receiving section of an offer being applied.
struct Prepared {
    track_id: String,
    ssrc: u32,
    rtx_ssrc: Option<u32>,
    kind: MediaKind,
}

struct TrackState {
    key: TrackKey,
    receiver: RTCRtpReceiverId,
    ssrc: u32,
    /// Simulcast layers seen so far, (rid, SSRC) in the order they opened; empty without rids.
    layers: Vec<(String, u32)>,
    /// Video codec by payload type (for keyframe detection); audio has none.
    codecs: Vec<(u8, VideoCodec)>,
    /// Extension ids worth handing the SFU: negotiated on this section and about the media,
    /// not this hop (transport-cc, abs-send-time, mid and rid are rewritten or generated per
    /// hop). An id the section did not negotiate has no URI a down-track could map, so it is
    /// dropped here rather than carried in every packet and its retransmission slot.
    forwarded: [bool; 256],
}

impl TrackState {
    fn media_packet(&self, packet: rtp::Packet, now: Instant) -> MediaPacket {
        let h = packet.header;
        let codec = self
            .codecs
            .iter()
            .find(|(pt, _)| *pt == h.payload_type)
            .map(|(_, c)| *c);
        let mut out = MediaPacket::new(
            h.ssrc,
            h.sequence_number,
            h.timestamp,
            h.payload_type,
            packet.payload,
            now,
        )
        .with_codec(codec);
        out.marker = h.marker;
        out.padding = u8::from(h.padding);
        for ext in h.extensions {
            if self.forwarded[usize::from(ext.id)] {
                out.extensions.push(ext.id, ext.payload);
            }
        }
        out
    }
}

/// Requests per lost packet of a published track before rtcd gives up on it (10 at 100 ms:
/// a second, past any retransmission that could still help a live stream).
const NACKS_PER_PACKET: u16 = 10;

/// The header extensions every peer's media engine registers, by kind: what an answer of ours
/// can contain. [`trim_offer`] drops the offer's others (a browser offers about a dozen).
const NEGOTIATED_EXTENSIONS: [(RtpCodecKind, &str); 6] = [
    (RtpCodecKind::Audio, crate::media::packet::AUDIO_LEVEL_URI),
    (RtpCodecKind::Audio, TRANSPORT_CC_URI),
    (RtpCodecKind::Video, TRANSPORT_CC_URI),
    (RtpCodecKind::Video, MID_URI),
    (RtpCodecKind::Video, RID_URI),
    (RtpCodecKind::Video, REPAIRED_RID_URI),
];

/// The section a packet belongs to (RFC 8843): how rtc binds a simulcast layer's SSRC.
pub(super) const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// The simulcast layer a packet belongs to (RFC 8852 RtpStreamId).
pub(super) const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
/// The layer a retransmission (RTX) repairs (RFC 8852 RepairedRtpStreamId).
pub(super) const REPAIRED_RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

/// Header extensions that describe one hop, not the media: rewritten or generated per hop.
const HOP_EXTENSIONS: [&str; 5] = [
    TRANSPORT_CC_URI,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    MID_URI,
    RID_URI,
    REPAIRED_RID_URI,
];

fn video_codec(mime_type: &str) -> Option<VideoCodec> {
    match mime_type {
        "video/vp8" => Some(VideoCodec::Vp8),
        "video/vp9" => Some(VideoCodec::Vp9),
        "video/h264" => Some(VideoCodec::H264),
        "video/av1" => Some(VideoCodec::Av1),
        _ => None,
    }
}

/// A codec rtcd answers with, as registered in every peer's media engine.
struct TableCodec {
    kind: RtpCodecKind,
    /// The encoding name of `a=rtpmap` (`opus`, `VP8`, ...).
    name: &'static str,
    clock_rate: u32,
    channels: u16,
    fmtp: &'static str,
    /// Ours; an answer uses the offer's payload types, so these only have to be distinct.
    payload_type: u8,
    /// The payload type of its RTX companion (RFC 4588).
    rtx: Option<u8>,
}

const fn video(name: &'static str, fmtp: &'static str, payload_type: u8, rtx: u8) -> TableCodec {
    TableCodec {
        kind: RtpCodecKind::Video,
        name,
        clock_rate: 90_000,
        channels: 0,
        fmtp,
        payload_type,
        rtx: Some(rtx),
    }
}

/// What an SFU forwards between browsers, and only that: Opus; VP8, VP9 profile 0, H.264
/// constrained baseline and baseline (`42e01f`, `42001f`) in packetization mode 1, AV1; every
/// video codec with RTX. That is `rtc`'s `register_default_codecs` with the same payload types,
/// minus G.722, PCMU and PCMA (browsers send Opus, and a codec is only worth forwarding if every
/// subscriber decodes it too), H.265 (Chrome and Firefox do not offer it), VP9 profile 1 (4:4:4,
/// not offered by browsers by default), H.264 high `640032` (offered by Chrome only with a
/// hardware encoder; Safari's high is `640c1f`, which `rtc` does not count as the same profile
/// anyway) and H.264 in packetization mode 0 (one NAL unit per packet: every browser offers
/// mode 1 next to it and prefers it, and a mode-0 stream cannot carry a frame larger than one
/// packet). The browser tests negotiate Opus and VP8, the webrtc-rs e2e tests also H.264
/// `42e01f` mode 1.
///
/// Every codec here costs on every join (about 0.3 ms each with its RTX, measured): `rtc`
/// compares each codec of an offer with each of these, parsing both fmtp lines every time,
/// and each one kept in the offer makes its quadratic SDP reading longer (see [`trim_offer`]).
const CODECS: [TableCodec; 6] = [
    TableCodec {
        kind: RtpCodecKind::Audio,
        name: "opus",
        clock_rate: 48_000,
        channels: 2,
        fmtp: "minptime=10;useinbandfec=1",
        payload_type: 111,
        rtx: None,
    },
    video("VP8", "", 96, 97),
    video("VP9", "profile-id=0", 98, 99),
    video(
        "H264",
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        102,
        103,
    ),
    video(
        "H264",
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        125,
        105,
    ),
    video("AV1", "profile-id=0", 41, 106),
];

/// The RTCP feedback rtcd takes part in, for every video codec (audio: transport-cc only).
/// Not `goog-remb`: rtcd sends no REMB, congestion feedback is transport-cc.
const VIDEO_FEEDBACK: [(&str, &str); 4] = [
    ("nack", ""),
    ("nack", "pli"),
    ("ccm", "fir"),
    ("transport-cc", ""),
];

/// The media engine every peer starts from: [`CODECS`] with their feedback and the
/// transport-cc header extension, built once per process and cloned per peer (building it is
/// most of what a peer connection costs before its first offer).
fn media_template() -> Result<&'static MediaEngine, EngineError> {
    static TEMPLATE: OnceLock<Result<MediaEngine, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| build_media_template().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| EngineError::Internal(e.clone()))
}

fn build_media_template() -> Result<MediaEngine, EngineError> {
    use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters};
    let mut media = MediaEngine::default();
    for codec in &CODECS {
        let feedback = match codec.kind {
            RtpCodecKind::Video => VIDEO_FEEDBACK
                .iter()
                .map(|(typ, parameter)| RTCPFeedback {
                    typ: (*typ).to_owned(),
                    parameter: (*parameter).to_owned(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let kind = if codec.kind == RtpCodecKind::Audio {
            "audio"
        } else {
            "video"
        };
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: format!("{kind}/{}", codec.name),
                        clock_rate: codec.clock_rate,
                        channels: codec.channels,
                        sdp_fmtp_line: codec.fmtp.to_owned(),
                        rtcp_feedback: feedback,
                    },
                    payload_type: codec.payload_type,
                },
                codec.kind,
            )
            .map_err(internal)?;
        if let Some(rtx) = codec.rtx {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: "video/rtx".to_owned(),
                            clock_rate: codec.clock_rate,
                            channels: 0,
                            sdp_fmtp_line: format!("apt={}", codec.payload_type),
                            rtcp_feedback: Vec::new(),
                        },
                        payload_type: rtx,
                    },
                    codec.kind,
                )
                .map_err(internal)?;
        }
    }
    // RFC 6464 audio levels from publishers: the SFU's voice activity detection reads them.
    media
        .register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: crate::media::packet::AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )
        .map_err(internal)?;
    // transport-cc feedback (audio too) and its header extension (the feedback is `arrivals`').
    configure_twcc_receiver_only(Registry::new(), &mut media).map_err(internal)?;
    // mid, rid and repaired-rid for video: without them rtc cannot bind a simulcast layer's
    // SSRC (browsers declare none for rid layers) and its answer to a simulcast offer announces
    // `a=simulcast` without the rid extension, which Chromium rejects. An offer without rids
    // only gains the extmap lines.
    rtc::peer_connection::configuration::interceptor_registry::configure_simulcast_extension_headers(
        &mut media,
    )
    .map_err(internal)?;
    Ok(media)
}

/// The offer as `rtc` gets it: in every audio and video section, only the codecs rtcd could
/// answer with ([`CODECS`], matched as `rtc` matches them, and the RTX of a kept codec), only
/// the feedback it takes part in ([`VIDEO_FEEDBACK`], none on RTX formats) and only the header
/// extensions it registers ([`NEGOTIATED_EXTENSIONS`]). `None`: nothing to remove.
///
/// Why: `rtc` 0.21.1 rebuilds a section's whole codec map (every `rtpmap`, `fmtp` and `rtcp-fb`
/// line, re-printed and re-parsed) once per payload type of the section, in several passes, and
/// compares every offered codec with every codec of ours. That is quadratic in the size of the
/// section, and a browser offers 30 to 40 video formats with 4 or 5 feedback lines each: most
/// of a join was spent there on codecs `rtc` then drops. Every attribute line of a section is
/// re-read once per format, so the extension lines `rtc` ignores cost too. What is removed
/// here could not be in the answer, so the answer is the same (a test compares the two). A
/// section in which nothing would remain is left as it is (`rtc` rejects it as before).
pub(crate) fn trim_offer(sdp: &str) -> Option<String> {
    let lines: Vec<&str> = sdp.split_inclusive('\n').collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("m="))
        .collect();
    let first = starts.first().copied().unwrap_or(lines.len());
    let mut out = String::with_capacity(sdp.len());
    lines[..first].iter().for_each(|l| out.push_str(l));
    let mut changed = false;
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let section = &lines[start..end];
        match trim_section(section) {
            Some(trimmed) => {
                out.push_str(&trimmed);
                changed = true;
            }
            None => section.iter().for_each(|l| out.push_str(l)),
        }
    }
    changed.then_some(out)
}

/// One section for [`trim_offer`] (`lines[0]` is its `m=` line); `None`: unchanged.
fn trim_section(lines: &[&str]) -> Option<String> {
    let m_line = lines.first()?;
    let body = m_line.trim_end();
    let ending = &m_line[body.len()..];
    let mut fields = body.strip_prefix("m=")?.split(' ');
    let (media, port, proto) = (fields.next()?, fields.next()?, fields.next()?);
    let kind = match media {
        "audio" => RtpCodecKind::Audio,
        "video" => RtpCodecKind::Video,
        _ => return None,
    };
    let formats: Vec<u8> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // Payload type → (encoding name, fmtp) of the section.
    let mut names: HashMap<u8, &str> = HashMap::new();
    let mut fmtps: HashMap<u8, &str> = HashMap::new();
    for line in &lines[1..] {
        let line = line.trim_end();
        if let Some((pt, rest)) = line
            .strip_prefix("a=rtpmap:")
            .and_then(|a| a.split_once(' '))
            && let Ok(pt) = pt.parse()
        {
            names.insert(pt, rest.split('/').next().unwrap_or(rest));
        } else if let Some((pt, rest)) =
            line.strip_prefix("a=fmtp:").and_then(|a| a.split_once(' '))
            && let Ok(pt) = pt.parse()
        {
            fmtps.insert(pt, rest);
        }
    }
    let fmtp = |pt: &u8| fmtps.get(pt).copied().unwrap_or("");
    let primary: Vec<u8> = formats
        .iter()
        .copied()
        .filter(|pt| {
            names.get(pt).is_some_and(|name| {
                CODECS.iter().any(|c| {
                    c.kind == kind
                        && c.name.eq_ignore_ascii_case(name)
                        && fmtp_matches(name, c.fmtp, fmtp(pt))
                })
            })
        })
        .collect();
    let keep: Vec<u8> = formats
        .iter()
        .copied()
        .filter(|pt| {
            primary.contains(pt)
                || names.get(pt).is_some_and(|n| n.eq_ignore_ascii_case("rtx"))
                    && fmtp_param(fmtp(pt), "apt")
                        .and_then(|apt| apt.parse::<u8>().ok())
                        .is_some_and(|apt| primary.contains(&apt))
        })
        .collect();
    if keep.is_empty() {
        return None;
    }
    let mut out = String::new();
    let mut changed = keep.len() != formats.len();
    out.push_str(&format!("m={media} {port} {proto}"));
    for pt in &keep {
        out.push_str(&format!(" {pt}"));
    }
    out.push_str(ending);
    for line in &lines[1..] {
        let attr = line.trim_end();
        // `a=extmap:<id>[/<direction>] <uri> [<attributes>]`
        if let Some(uri) = attr
            .strip_prefix("a=extmap:")
            .and_then(|rest| rest.split(' ').nth(1))
            && !NEGOTIATED_EXTENSIONS.contains(&(kind, uri))
        {
            changed = true;
            continue;
        }
        let codec_line = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
            .iter()
            .find_map(|p| attr.strip_prefix(p).map(|rest| (*p, rest)));
        if let Some((prefix, rest)) = codec_line {
            let (pt, value) = rest.split_once(' ').unwrap_or((rest, ""));
            let kept = pt == "*" || pt.parse::<u8>().is_ok_and(|pt| keep.contains(&pt));
            // Feedback on an RTX format means nothing (`rtc` keeps none for it either).
            let wanted = prefix != "a=rtcp-fb:"
                || pt == "*"
                || pt.parse::<u8>().is_ok_and(|pt| primary.contains(&pt)) && {
                    let (typ, parameter) = value.split_once(' ').unwrap_or((value, ""));
                    VIDEO_FEEDBACK.contains(&(typ, parameter))
                };
            if !kept || !wanted {
                changed = true;
                continue;
            }
        }
        out.push_str(line);
    }
    changed.then_some(out)
}

/// The offer with every simulcast layer listed as sending: `None` if none is marked paused.
///
/// A publisher that stops encoding a layer (dynacast: `RTCRtpSender.setParameters` with
/// `active: false`, asked for by `layers_wanted`) marks it paused in its next offer, `~` before
/// the rid in `a=simulcast` (RFC 8853 5.1), and unmarks it when it starts again. To rtcd that is
/// not a change of the section: the layer keeps its rid, and its SSRC when it comes back. Read
/// as a change, the section lost its layers' bindings at every such renegotiation (see
/// [`keep_simulcast_bindings`]): in a three-party Chromium call, every camera stalled for 30 s
/// when the third joined. rtc gets the plain list (it would read `~f` as a rid named `~f`).
fn unpause_simulcast(sdp: &str) -> Option<String> {
    let paused = |l: &str| l.starts_with("a=simulcast:") && l.contains('~');
    if !sdp.lines().any(paused) {
        return None;
    }
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if paused(line) {
            out.extend(line.chars().filter(|c| *c != '~'));
        } else {
            out.push_str(line);
        }
    }
    Some(out)
}

/// What identifies each simulcast section of an offer (one with `a=rid` lines), by mid: its
/// msid, rids, `a=simulcast` and direction lines, sorted (offers may reorder attributes). See
/// [`keep_simulcast_bindings`].
fn simulcast_signatures(sdp: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for section in sdp.split("\nm=").skip(1) {
        let mut mid = None;
        let mut signature: Vec<&str> = Vec::new();
        let mut rids = false;
        for line in section.lines().map(str::trim_end) {
            if let Some(m) = line.strip_prefix("a=mid:") {
                mid = Some(m.to_owned());
            }
            rids |= line.starts_with("a=rid:");
            let keep = ["a=msid:", "a=rid:", "a=simulcast:"]
                .iter()
                .any(|p| line.starts_with(p))
                || ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(&line);
            if keep {
                signature.push(line);
            }
        }
        if let (Some(mid), true) = (mid, rids) {
            signature.sort_unstable();
            out.insert(mid, signature.join("\n"));
        }
    }
    out
}

/// The offer as `rtc` should read it so that the simulcast layers it bound stay bound: `None`
/// if nothing to change.
///
/// Why: `rtc` 0.21.1 re-creates every incoming track each time an answer is applied
/// (`start_rtp`), and a simulcast layer's SSRC is then forgotten until a packet of it carries
/// MID and RID again, which browsers (and str0m) stop sending once rtcd's receiver reports
/// acknowledge the SSRC: every layer was dropped after the first renegotiation (rtcd
/// renegotiates whenever someone publishes or stops). `rtc` re-creates a section's track only
/// from its `a=msid` (rids without msid make no track), so a simulcast section unchanged since
/// the last applied offer (same msid, rids, simulcast and direction) reaches `rtc` without its
/// msid, and keeps its track and the layers' SSRCs. Its `a=ssrc` / `a=ssrc-group` lines go too:
/// `rtc` ignores them beside rids, but without the msid it would take a track (and an SSRC)
/// from them (Firefox declares its layers' SSRCs). Nothing in the answer comes from these
/// lines (the `a=rid` / `a=simulcast` answer lines come from the rids, kept).
fn keep_simulcast_bindings(sdp: &str, applied: &HashMap<String, String>) -> Option<String> {
    if applied.is_empty() {
        return None;
    }
    let now = simulcast_signatures(sdp);
    let unchanged: Vec<&String> = now
        .iter()
        .filter(|(mid, sig)| applied.get(*mid) == Some(*sig) && sig.contains("a=msid:"))
        .map(|(mid, _)| mid)
        .collect();
    if unchanged.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(sdp.len());
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let strip = section.iter().any(|l| {
            l.trim_end()
                .strip_prefix("a=mid:")
                .is_some_and(|m| unchanged.iter().any(|u| u.as_str() == m))
        });
        for l in section.drain(..) {
            let declared = ["a=msid:", "a=ssrc:", "a=ssrc-group:"]
                .iter()
                .any(|p| l.starts_with(p));
            if !(strip && declared) {
                out.push_str(l);
            }
        }
    };
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    Some(out)
}

/// Whether the section `mid` of `offer` has an RTX format (after [`trim_offer`], only for a
/// codec rtcd answers with).
fn offers_rtx(offer: &str, mid: &str) -> bool {
    let mut in_section = false;
    let mut rtx = false;
    for line in offer.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            if in_section {
                break;
            }
            rtx = false;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            in_section = m.trim() == mid;
        } else if let Some((_, codec)) = line
            .strip_prefix("a=rtpmap:")
            .and_then(|a| a.split_once(' '))
        {
            rtx |= codec
                .split('/')
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("rtx"));
        }
    }
    in_section && rtx
}

/// A parameter of an fmtp line, as `rtc` reads it (`;`-separated, key case-insensitive).
fn fmtp_param<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case(key).then_some(v)
    })
}

/// Whether `rtc` 0.21.1 counts two fmtp lines of a codec as the same codec (its `fmtp` module:
/// an exact match). H.264: the same packetization mode, both given, and the same profile
/// (`profile_idc` and constraint flags: the first two bytes of `profile-level-id`); anything
/// else: no parameter with two different values.
fn fmtp_matches(name: &str, ours: &str, theirs: &str) -> bool {
    if name.eq_ignore_ascii_case("h264") {
        let profile = |line: &str| {
            let hex = fmtp_param(line, "profile-level-id")?;
            let valid = hex.len() >= 4
                && hex.len().is_multiple_of(2)
                && hex.bytes().all(|b| b.is_ascii_hexdigit());
            valid.then(|| hex[..4].to_ascii_lowercase())
        };
        let mode = |line| fmtp_param(line, "packetization-mode");
        mode(ours).is_some()
            && mode(ours) == mode(theirs)
            && profile(ours).is_some()
            && profile(ours) == profile(theirs)
    } else {
        ours.split(';').all(|p| {
            let Some((k, v)) = p.trim().split_once('=') else {
                return true;
            };
            fmtp_param(theirs, k).is_none_or(|theirs| theirs.eq_ignore_ascii_case(v))
        })
    }
}

/// RTP held while ICE restarts (see [`Peer::write_media`]): about a second of a subscriber's
/// video at 2-3 Mbit/s; a restart normally completes in one round trip.
const HELD_LIMIT: usize = 256;

/// An RTP packet with `header`'s fixed fields and `payload`, no extensions yet, built in the
/// peer's spare one ([`Peer::outgoing`], which [`Peer::write_media`] gives back): its
/// extension list keeps its allocation, where a new packet allocated one for every packet
/// sent (each carries a mid or a transport-wide number).
fn rtp_packet(spare: &mut rtp::Packet, header: &RtpHeaderOut, payload: Bytes) -> rtp::Packet {
    let mut extensions = std::mem::take(&mut spare.header.extensions);
    extensions.clear();
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker: header.marker,
            payload_type: header.payload_type,
            sequence_number: header.sequence,
            timestamp: header.timestamp,
            ssrc: header.ssrc,
            extensions,
            ..Default::default()
        },
        payload,
    }
}

/// Adds the mid header extension of the slot's section, where it negotiated one.
fn stamp_mid(state: &SlotState, packet: &mut rtp::Packet) -> Result<(), EngineError> {
    if let Some((id, mid)) = &state.mid_stamp {
        packet
            .header
            .set_extension(*id, mid.clone())
            .map_err(internal)?;
    }
    Ok(())
}

/// Whether two descriptions of a stream tell sender reports and transport-cc numbering the same
/// (what they read of it).
fn same_stream(a: &StreamInfo, b: &StreamInfo) -> bool {
    let extensions = |i: &StreamInfo| {
        i.rtp_header_extensions
            .iter()
            .map(|e| (e.id, e.uri.clone()))
            .collect::<Vec<_>>()
    };
    (
        a.ssrc,
        a.ssrc_rtx,
        a.payload_type,
        a.payload_type_rtx,
        a.clock_rate,
    ) == (
        b.ssrc,
        b.ssrc_rtx,
        b.payload_type,
        b.payload_type_rtx,
        b.clock_rate,
    ) && a.mime_type == b.mime_type
        && extensions(a) == extensions(b)
}

/// Queues `item` while ICE restarts, bounded by `limit`: past it the oldest goes (the newest
/// matter more, and a hole can still be NACKed).
fn hold<T>(queue: &mut std::collections::VecDeque<T>, limit: usize, item: T) {
    if queue.len() == limit {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// One client's peer connection. See the module docs.
///
/// It keeps none of `rtc`'s interceptors. What the client sends is counted for
/// receiver reports and NACKs (`reception`) and for transport-cc feedback (`arrivals`) after
/// the RTX repair (`rtx`, so a repair counts as an arrival); what rtcd sends is counted for its
/// sender reports (`sender_reports`) and numbered for transport-cc (`bwe::TransportCc`) as it
/// is protected. Each in place on the media path, instead of a walk of the packet by value
/// through `rtc`'s chain (`docs/benchmarks.md`, issue 33).
///
/// NACKs are answered by the SFU's down-tracks from one buffer per published track, so no NACK
/// responder (which would keep a copy per subscriber). At most [`NACKS_PER_PACKET`] requests
/// per lost packet (rtc's default is no limit: a packet the publisher cannot resend was asked
/// for every 100 ms until it aged out), and a renegotiation does not wipe the log of what was
/// lost (`reception`).
pub struct Peer {
    pc: RTCPeerConnection,
    /// Published tracks by `rtc`'s track id, which every received packet carries. Looked up per
    /// packet (as `by_ssrc` is) with a fast hash: a client can put only as many entries in
    /// either as its offer has sections and layers, so hash flooding buys it nothing.
    tracks: FxHashMap<String, TrackState>,
    next_track: u32,
    /// Sending slots by mid.
    slots: Vec<SlotState>,
    /// Numbers our slot tracks' ids (`rtcd-N`), unique for the peer's life.
    next_slot_track: u32,
    /// Mids of the applied offer's sections on which the client sends (a slot there is
    /// answered `sendrecv` / `recvonly`, not `sendonly` / `inactive`).
    client_sending: Vec<String>,
    events: std::collections::VecDeque<PeerEvent>,
    connected: bool,
    /// Answers a client's first nominating check on a new pair (see `nomination`).
    nomination: super::nomination::NominationReplay,
    /// When the client was last heard in a way that proves it is there: a connectivity check
    /// rtc answered, or SRTP / SRTCP that decrypted. rtc's own timer counts only STUN (media
    /// bypasses its ICE agent), so a client whose consent checks were late while its media
    /// flowed was failed: rtcd keeps the timer itself (`Peer::handle_timeout`).
    heard: Instant,
    /// The simulcast sections of the last applied offer, by mid (see [`keep_simulcast_bindings`]).
    simulcast: HashMap<String, String>,
    /// RTX payload type → repaired payload type of the published tracks' codecs, for the
    /// repair interceptor's simulcast layers (whose RTX rtc does not resolve).
    rtx_apt: super::rtx::AptMap,
    /// Silence after which the session fails (`disconnected_timeout + failed_timeout`).
    silence_limit: Duration,
    /// The latest `now` given (what `poll_transmit` stamps an answered check with).
    now: Instant,
    /// Set once the silence limit passed and `Failed` was reported.
    silent: bool,
    /// Whether ICE is restarting on a connection that was up (until the client's checks
    /// select a pair again).
    restarting: bool,
    /// RTP written while `restarting`, by slot, sent in order once a pair is selected again
    /// (see [`Peer::write_media`]).
    held: std::collections::VecDeque<(usize, rtp::Packet, Instant)>,
    /// The last RTP packet sent, emptied, whose extension list the next one is built with
    /// (see [`rtp_packet`]).
    outgoing: rtp::Packet,
    /// The process's certificate, for the DTLS handshake.
    certificate: rtc::dtls::crypto::Certificate,
    /// The DTLS handshake (from the first offer: its fingerprint and role decide it).
    dtls: Option<Handshake>,
    /// The SRTP contexts the handshake keyed; media flows only once they exist.
    srtp: Option<Box<SrtpKeys>>,
    /// Transport-cc feedback towards the client: when each of its packets arrived.
    arrivals: super::arrivals::Arrivals,
    /// Receiver reports and NACKs on the client's streams, kept as packets arrive.
    reception: super::reception::Reception,
    /// What `reception`, `arrivals` and `reporting` have due, reused between timeouts.
    rtcp_due: Vec<Box<dyn rtcp::Packet>>,
    /// Sender reports on the slots' streams, counted as packets are protected.
    reporting: super::sender_reports::SenderReports,
    /// Transport-wide numbering of what is sent and the estimator it feeds (with estimation).
    transport_cc: Option<Box<super::bwe::TransportCc<super::bwe::SharedEstimator>>>,
    /// Restores received retransmissions (RTX) before anything counts them.
    rtx: super::rtx::RtxRepair,
    /// The client's sending sections, rebuilt at every answer (`receiving`).
    receiving: receiving::Table<RTCRtpReceiverId>,
    /// Track id (of `tracks`) by the SSRC of every stream bound to one, with what was known
    /// of it when it was bound.
    by_ssrc: FxHashMap<u32, (String, StreamInfo)>,
    /// Where media to the client goes: the pair the client's last nominating check selected
    /// (ICE decides the path; the engine only follows it).
    path: Option<Transport>,
    /// Where the last nominating check came from (it becomes `path` once answered), and where
    /// the last check rtc answered did (the path if the client never nominates).
    nominating: Option<Transport>,
    answered: Option<Transport>,
    /// Datagrams to send, in order: rtc's (STUN), the handshake's, and the media path's.
    out: std::collections::VecDeque<(Transport, BytesMut)>,
    /// Whether rtc was handed something since its events, writes and timeout were last read
    /// (reading them walks its whole pipeline: only when it may have something).
    rtc_touched: bool,
    /// rtc's next timeout, as of the last time it was touched.
    rtc_timeout: Option<Instant>,
    /// What received packets are copied to and decrypted in: each is split off as it is done,
    /// sharing the chunk ([`make_room`]), so it does not allocate per packet. Packets sent are
    /// protected in the thread's chunk instead ([`TX`]).
    rx: BytesMut,
    /// The send-side estimate towards the client, written by the estimator (`transport_cc`).
    estimate: std::sync::Arc<super::bwe::EstimateCell>,
    /// When that estimate is worth a [`PeerEvent::BandwidthEstimate`].
    estimate_emitter: super::bwe::Emitter,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("tracks", &self.tracks.len())
            .field("slots", &self.slots.len())
            .field("connected", &self.connected)
            .finish()
    }
}

impl Peer {
    /// A new peer connection, waiting for the client's first offer.
    pub fn new(
        identity: &Identity,
        settings: &PeerSettings,
        now: Instant,
    ) -> Result<Self, EngineError> {
        let media = media_template()?.clone();
        let rtx_apt = super::rtx::AptMap::default();
        // Send-side estimation towards the client: every packet sent is numbered and recorded,
        // the client's transport-cc feedback drives the estimator (no pacer: see `bwe`).
        let estimate = std::sync::Arc::new(super::bwe::EstimateCell::default());
        let transport_cc = settings.estimation.then(|| {
            Box::new(super::bwe::transport_cc(
                estimate.clone(),
                settings.departures.clone(),
            ))
        });
        // rtc's pipeline carries no media (the engine's own path does, `dtls`): no interceptors
        // in it, and its DTLS endpoint is a server that never hears a record (see
        // `Peer::answer` for the role the client is told).
        let registry = Registry::new();
        let setting = SettingEngineBuilder::new()
            .with_lite(true)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // rtc fails a session after its failed timeout without *STUN*, even while media
            // flows (its ICE agent never sees media): its failure is off, rtcd's own silence
            // timer replaces it (`heard`). Its disconnected state stays (informational).
            .with_ice_timeouts(
                Some(settings.disconnected_timeout),
                Some(Duration::ZERO),
                None,
            )
            .build();
        let pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![identity.certificate.clone()])
                    .build(),
            )
            .with_setting_engine(setting)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(internal)?;
        let mut peer = Self {
            pc,
            tracks: FxHashMap::default(),
            next_track: 0,
            slots: Vec::new(),
            next_slot_track: 0,
            client_sending: Vec::new(),
            events: Default::default(),
            connected: false,
            nomination: Default::default(),
            heard: now,
            rtx: super::rtx::RtxRepair::new(rtx_apt.clone()),
            rtx_apt,
            simulcast: HashMap::new(),
            silence_limit: settings.disconnected_timeout + settings.failed_timeout,
            now,
            silent: false,
            restarting: false,
            held: Default::default(),
            outgoing: rtp::Packet::default(),
            certificate: identity.dtls_certificate(),
            dtls: None,
            srtp: None,
            arrivals: super::arrivals::Arrivals::new(rand::random()),
            reception: super::reception::Reception::new(rand::random(), NACKS_PER_PACKET),
            rtcp_due: Vec::new(),
            reporting: Default::default(),
            transport_cc,
            receiving: Default::default(),
            by_ssrc: FxHashMap::default(),
            path: None,
            nominating: None,
            answered: None,
            out: Default::default(),
            rtc_touched: true,
            rtc_timeout: None,
            rx: BytesMut::new(),
            estimate,
            estimate_emitter: Default::default(),
        };
        for transport in &settings.candidates {
            let candidate = host_candidate(transport)?;
            peer.pc.add_local_candidate(candidate).map_err(internal)?;
        }
        Ok(peer)
    }

    /// Applies the client's offer and returns our answer. Every section in which the client
    /// receives gets a sending slot (new sections a new one; known sections keep theirs), and
    /// every slot is answered as sending.
    pub fn apply_offer(&mut self, sdp: &str, now: Instant) -> Result<Answer, EngineError> {
        self.set_offer(sdp, now)?;
        let sending: Vec<(SlotId, bool)> = self.slots().map(|s| (s.id, true)).collect();
        for (slot, send) in sending {
            self.set_slot_sending(slot, send);
        }
        self.answer(now)
    }

    /// First half of answering: applies the client's offer and gives every new section in which
    /// the client receives a sending slot. The caller then decides which slots send this time
    /// ([`Peer::set_slot_sending`]) and answers ([`Peer::answer`]). On error nothing changed.
    pub fn set_offer(&mut self, sdp: &str, now: Instant) -> Result<(), EngineError> {
        // What rtc reads: only the formats rtcd can answer (see `trim_offer`).
        let trimmed = trim_offer(sdp);
        self.set_offer_as_given(trimmed.as_deref().unwrap_or(sdp), now)
    }

    /// [`Peer::set_offer`] without trimming.
    fn set_offer_as_given(&mut self, sdp: &str, now: Instant) -> Result<(), EngineError> {
        let unpaused = unpause_simulcast(sdp);
        let sdp = unpaused.as_deref().unwrap_or(sdp);
        let signatures = simulcast_signatures(sdp);
        let kept = keep_simulcast_bindings(sdp, &self.simulcast);
        let offer = RTCSessionDescription::offer(kept.as_deref().unwrap_or(sdp).to_owned())
            .map_err(|e| EngineError::InvalidSdp(e.to_string()))?;
        let sections = sdp::sections(sdp);
        // The DTLS role (RFC 5763 section 5: an offer says `actpass`; `active` is taken too).
        let is_client = match super::dtls::offer_setup(sdp) {
            Some("passive") => {
                return Err(EngineError::InvalidSdp(
                    "an offer must be a=setup:actpass (RFC 5763), not passive".into(),
                ));
            }
            Some("active") => false,
            _ => true,
        };
        let handshake = match &self.dtls {
            Some(_) => None,
            None => Some(Handshake::new(
                self.certificate.clone(),
                is_client,
                super::dtls::offer_fingerprints(sdp),
            )?),
        };
        let prepared = self.prepare_slots(sdp, &sections)?;
        self.rtc_touched = true;
        if let Err(e) = self.pc.set_remote_description(now, offer) {
            self.discard_unassociated(&prepared);
            return Err(EngineError::InvalidSdp(e.to_string()));
        }
        if handshake.is_some() {
            self.dtls = handshake;
        }
        self.simulcast = signatures;
        self.associate_slots(prepared);
        self.client_sending = sections
            .into_iter()
            .filter(|s| s.sends())
            .map(|s| s.mid)
            .collect();
        Ok(())
    }

    /// Rebuilds the table of the client's sending sections from rtc's receivers, and forgets
    /// the streams of sections that are gone.
    fn refresh_receiving(&mut self) {
        let mut table = receiving::Table::<RTCRtpReceiverId>::default();
        let mut track_ids: Vec<String> = Vec::new();
        let mut extensions: Vec<(String, u8)> = Vec::new();
        for id in self.pc.get_transceivers().collect::<Vec<_>>() {
            table.transceivers += 1;
            let Some(t) = self.pc.rtp_transceiver(id) else {
                continue;
            };
            let Some(mid) = t.mid().clone() else { continue };
            if !self.client_sending.contains(&mid) {
                continue;
            }
            let Some(receiver) = t.receiver() else {
                continue;
            };
            let Some(mut r) = self.pc.rtp_receiver(receiver) else {
                continue;
            };
            track_ids.push(r.track().track_id().to_string());
            let codings = r
                .track()
                .codings()
                .iter()
                .map(|c| receiving::Coding {
                    rid: c.rtp_coding_parameters.rid.clone(),
                    ssrc: c.rtp_coding_parameters.ssrc,
                    rtx_ssrc: c.rtp_coding_parameters.rtx.as_ref().map(|r| r.ssrc),
                })
                .collect();
            let params = &r.get_parameters().rtp_parameters;
            let (codecs, exts) = codecs_of(&params.codecs, &params.header_extensions);
            extensions.extend(exts.into_iter().map(|e| (e.uri, e.id)));
            table.sections.push(receiving::Section {
                mid,
                receiver,
                codings,
                payload_types: codecs.iter().map(|c| c.payload_type).collect(),
                rtx: codecs
                    .iter()
                    .filter_map(|c| Some((c.rtx_payload_type?, c.payload_type)))
                    .collect(),
            });
        }
        table.ids =
            receiving::SdesIds::from_extensions(extensions.iter().map(|(u, id)| (u.as_str(), *id)));
        self.receiving = table;
        let gone: Vec<u32> = self
            .by_ssrc
            .iter()
            .filter(|(_, (track, _))| !track_ids.contains(track))
            .map(|(ssrc, _)| *ssrc)
            .collect();
        for ssrc in gone {
            if let Some((_, info)) = self.by_ssrc.remove(&ssrc) {
                self.arrivals.unbind(&info);
                self.rtx.unbind_remote_stream(&info);
                self.reception.unbind(ssrc);
            }
        }
    }

    /// Whether `slot` is answered as sending (else `inactive`, or `recvonly` where the client
    /// also sends on that section). A slot with nothing behind it must not claim to send: the
    /// client would wait for media that never comes.
    pub fn set_slot_sending(&mut self, slot: SlotId, send: bool) {
        let Some(mid) = self.slots.get(slot.0 as usize).map(|s| s.slot.mid.clone()) else {
            return;
        };
        let client_sends = self.client_sending.contains(&mid);
        self.rtc_touched = true;
        for id in self.pc.get_transceivers().collect::<Vec<_>>() {
            let Some(mut t) = self.pc.rtp_transceiver(id) else {
                continue;
            };
            if t.mid().as_deref() == Some(mid.as_str()) {
                t.set_direction(RTCRtpTransceiverDirection::from_send_recv(
                    send,
                    client_sends,
                ));
            }
        }
    }

    /// Second half of answering: creates and applies our answer to the offer given to
    /// [`Peer::set_offer`].
    pub fn answer(&mut self, now: Instant) -> Result<Answer, EngineError> {
        self.rtc_touched = true;
        let answer = self
            .pc
            .create_answer(None)
            .map_err(|e| EngineError::InvalidSdp(e.to_string()))?;
        self.pc
            .set_local_description(now, answer)
            .map_err(|e| EngineError::InvalidSdp(e.to_string()))?;
        let sdp = self
            .pc
            .local_description()
            .ok_or_else(|| internal("no local description after answering"))?
            .sdp;
        self.refresh_slots();
        // rtc sets a receiver's codings (declared SSRCs, rids) when the answer starts it.
        self.refresh_receiving();
        // An ICE restart took effect in this negotiation: learn it now, before the next
        // packet is written into a connection without a selected pair.
        self.pump();
        let ufrag = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .ok_or_else(|| internal("answer without ice-ufrag"))?
            .trim()
            .to_owned();
        let slots = self.slots.iter().map(|s| s.slot.id).collect();
        let mut sdp = tidy_answer(&sdp);
        // rtc answers `passive` (its own DTLS endpoint is a server that hears nothing); where
        // the engine is the DTLS client, as rtc was before, the client is told so.
        if self.dtls.as_ref().is_some_and(Handshake::is_client) {
            sdp = sdp.replace("a=setup:passive", "a=setup:active");
        }
        Ok(Answer { sdp, ufrag, slots })
    }

    /// Before the offer is applied, one sending transceiver of ours per new section in which the
    /// client receives: `rtc` associates a new remote `recvonly` section with an unassociated
    /// local `sendonly` transceiver of its kind (a `sendrecv` one with a `sendrecv` one), so each
    /// slot lands on exactly such a section. (Attaching a track after the offer, with
    /// `add_track`, takes the first transceiver of the kind without a sender, which is the
    /// client's own sending section when it has one: our slot would end up on its camera.)
    fn prepare_slots(
        &mut self,
        sdp: &str,
        sections: &[sdp::Section],
    ) -> Result<Vec<Prepared>, EngineError> {
        let known: Vec<String> = self
            .pc
            .get_transceivers()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|id| self.pc.rtp_transceiver(id).and_then(|t| t.mid().clone()))
            .collect();
        let mut prepared = Vec::new();
        for section in sections {
            if section.mid.is_empty() || !section.receives() || known.contains(&section.mid) {
                continue;
            }
            let kind = match section.media {
                sdp::Media::Audio => MediaKind::Audio,
                sdp::Media::Video => MediaKind::Video,
                sdp::Media::Other => continue,
            };
            // The encoding names a codec of the section: rtc binds a sender's stream to its
            // interceptors (sender reports among them) only if that codec was negotiated.
            let codec = first_codec(sdp, &section.mid).unwrap_or_default();
            let taken: Vec<u32> = prepared
                .iter()
                .flat_map(|p: &Prepared| [Some(p.ssrc), p.rtx_ssrc])
                .flatten()
                .collect();
            let ssrc = self.fresh_ssrc(&taken);
            // Only where the client can take RTX: an RTX SSRC in the answer of a section
            // without an RTX codec would announce a stream that never comes.
            let rtx_ssrc = (kind == MediaKind::Video && offers_rtx(sdp, &section.mid)).then(|| {
                let mut taken = taken.clone();
                taken.push(ssrc);
                self.fresh_ssrc(&taken)
            });
            self.next_slot_track += 1;
            let track_id = format!("rtcd-{}", self.next_slot_track);
            let track = MediaStreamTrack::new(
                track_id.clone(),
                track_id.clone(),
                track_id.clone(),
                kind_to_rtc(kind),
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        rtx: rtx_ssrc.map(|ssrc| RTCRtpRtxParameters { ssrc }),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            );
            let direction = if section.sends() {
                RTCRtpTransceiverDirection::Sendrecv
            } else {
                RTCRtpTransceiverDirection::Sendonly
            };
            let added = self.pc.add_transceiver_from_track(
                track,
                Some(rtc::rtp_transceiver::RTCRtpTransceiverInit {
                    direction,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            );
            if let Err(e) = added {
                self.discard_unassociated(&prepared);
                return Err(internal(e));
            }
            prepared.push(Prepared {
                track_id,
                ssrc,
                rtx_ssrc,
                kind,
            });
        }
        Ok(prepared)
    }

    /// After the offer: the prepared transceivers it associated become slots (in section order);
    /// any it did not use are stopped.
    fn associate_slots(&mut self, prepared: Vec<Prepared>) {
        for id in self.pc.get_transceivers().collect::<Vec<_>>() {
            let Some(t) = self.pc.rtp_transceiver(id) else {
                continue;
            };
            let Some(mid) = t.mid().clone() else { continue };
            let Some(sender) = t.sender() else { continue };
            let Some(s) = self.pc.rtp_sender(sender) else {
                continue;
            };
            let track_id = s.track().track_id().to_string();
            let Some(p) = prepared.iter().find(|p| p.track_id == track_id) else {
                continue;
            };
            let slot = SlotId(self.slots.len() as u32);
            self.slots.push(SlotState {
                slot: Slot {
                    id: slot,
                    mid,
                    kind: p.kind,
                    ssrc: p.ssrc,
                    rtx_ssrc: p.rtx_ssrc,
                    codecs: Vec::new(),
                    extensions: Vec::new(),
                },
                track_id,
                mid_stamp: None,
                bound: None,
            });
        }
        let used: Vec<String> = self.slots.iter().map(|s| s.track_id.clone()).collect();
        let unused: Vec<Prepared> = prepared
            .into_iter()
            .filter(|p| !used.contains(&p.track_id))
            .collect();
        self.discard_unassociated(&unused);
    }

    /// Stops prepared transceivers that no section took (they would linger and be matched to a
    /// later offer's section in an order we did not choose).
    fn discard_unassociated(&mut self, prepared: &[Prepared]) {
        for id in self.pc.get_transceivers().collect::<Vec<_>>() {
            let Some(sender) = self.pc.rtp_transceiver(id).and_then(|t| t.sender()) else {
                continue;
            };
            let ours = self
                .pc
                .rtp_sender(sender)
                .is_some_and(|s| prepared.iter().any(|p| p.track_id == *s.track().track_id()));
            if ours && let Some(mut t) = self.pc.rtp_transceiver(id) {
                if t.mid().is_some() {
                    continue;
                }
                if let Err(e) = t.stop() {
                    tracing::debug!(error = %e, "stopping an unused slot transceiver failed");
                }
            }
        }
    }

    /// A random SSRC that none of our slots uses yet, for media or RTX.
    fn fresh_ssrc(&self, taken: &[u32]) -> u32 {
        loop {
            let s = rand::random::<u32>();
            if s != 0
                && !taken.contains(&s)
                && !self
                    .slots
                    .iter()
                    .any(|x| x.slot.ssrc == s || x.slot.rtx_ssrc == Some(s))
            {
                break s;
            }
        }
    }

    /// Reads back each slot's negotiated codecs and extensions after an answer.
    fn refresh_slots(&mut self) {
        for id in self.pc.get_transceivers().collect::<Vec<_>>() {
            let Some(t) = self.pc.rtp_transceiver(id) else {
                continue;
            };
            let Some(mid) = t.mid().clone() else { continue };
            let Some(index) = self.slots.iter().position(|s| s.slot.mid == mid) else {
                continue;
            };
            let Some(sender) = t.sender() else { continue };
            let Some(mut s) = self.pc.rtp_sender(sender) else {
                continue;
            };
            let parameters = s.get_parameters();
            let params = &parameters.rtp_parameters;
            let (codecs, extensions) = codecs_of(&params.codecs, &params.header_extensions);
            // What the answer announced (rtc drops the RTX SSRC of a sender when a later offer
            // has no RTX), and only while a codec can be repaired with it.
            let rtx_ssrc = parameters
                .encodings
                .first()
                .and_then(|e| e.rtp_coding_parameters.rtx.as_ref())
                .map(|rtx| rtx.ssrc)
                .filter(|_| codecs.iter().any(|c| c.rtx_payload_type.is_some()));
            let state = &mut self.slots[index];
            state.mid_stamp = extensions
                .iter()
                .find(|e| e.uri == MID_URI)
                .map(|e| (e.id, Bytes::from(mid.clone())));
            let slot = &mut state.slot;
            slot.codecs = codecs;
            slot.extensions = extensions;
            slot.rtx_ssrc = rtx_ssrc;
            if state.bound.is_some() {
                self.bind_slot(index);
            }
        }
    }

    /// The sending slots, in the order they were created.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().map(|s| &s.slot)
    }

    /// Adds a candidate the client trickled (`candidate:` line, as in the browser API).
    pub fn add_remote_candidate(
        &mut self,
        candidate: &str,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    ) -> Result<(), EngineError> {
        if candidate.is_empty() {
            return Ok(()); // end of candidates
        }
        self.pc
            .add_remote_candidate(RTCIceCandidateInit {
                candidate: candidate.to_owned(),
                sdp_mid,
                sdp_mline_index,
                username_fragment: None,
                url: None,
            })
            .map_err(|e| EngineError::InvalidCandidate(e.to_string()))
    }

    /// Feeds one received datagram (or ICE-TCP frame): STUN to rtc's ICE agent, DTLS to the
    /// handshake, SRTP and SRTCP to the engine's media path (RFC 7983's first-byte rule).
    /// Borrowed: media is decrypted straight from the receive buffer into the packet it
    /// becomes, and only STUN and DTLS (a handful per session) are copied.
    pub fn handle_datagram(&mut self, transport: Transport, data: &[u8], now: Instant) {
        self.now = self.now.max(now);
        match classify(data) {
            PacketKind::Stun => {
                let replay = self.nomination.inbound(&transport, data, now);
                self.read_stun(transport, BytesMut::from(data), now);
                // The client's nominating check, which rtc left unanswered until this response
                // validated its pair (see `nomination`).
                if let Some((transport, request)) = replay {
                    self.read_stun(transport, request, now);
                }
            }
            PacketKind::Dtls => self.read_dtls(transport, BytesMut::from(data), now),
            PacketKind::Rtp => self.read_srtp(data, now),
            _ => {}
        }
        self.pump();
    }

    /// Hands a STUN message to rtc (ICE is rtc's), noting a nominating check's origin: the pair
    /// it nominates is where media goes once rtc answers it.
    fn read_stun(&mut self, transport: Transport, data: BytesMut, now: Instant) {
        if super::nomination::is_nominating(&data) {
            self.nominating = Some(transport);
        }
        self.rtc_touched = true;
        let msg = TaggedBytesMut {
            now,
            transport: context(&transport),
            message: data,
        };
        if let Err(err) = self.pc.handle_read(msg) {
            tracing::debug!(%err, "datagram rejected");
        }
    }

    fn read_dtls(&mut self, transport: Transport, data: BytesMut, now: Instant) {
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        // Before ICE chose a path (a server's first flight answers where the client is).
        if self.path.is_none() {
            self.answered = self.answered.or(Some(transport));
        }
        let outcome = dtls.read(now, data);
        self.dtls_out();
        if let Some(outcome) = outcome {
            self.on_dtls(outcome, now);
        }
    }

    /// Queues what the handshake has to send, on the current path.
    fn dtls_out(&mut self) {
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        let to = self.path.or(self.answered);
        while let Some(data) = dtls.poll_transmit() {
            if let Some(to) = to {
                self.out.push_back((to, data));
            }
        }
    }

    fn on_dtls(&mut self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Keyed(keys) => {
                self.srtp = Some(keys);
                self.heard = self.heard.max(now);
                if !self.silent && !self.connected {
                    self.connected = true;
                    self.events.push_back(PeerEvent::Connected);
                }
            }
            Outcome::Closed | Outcome::Failed(_) => {
                if let Outcome::Failed(why) = &outcome {
                    tracing::debug!(why, "dtls failed");
                }
                self.fail();
            }
        }
    }

    /// Reports `Failed` once.
    fn fail(&mut self) {
        self.restarting = false;
        self.held.clear();
        if !self.silent {
            self.silent = true;
            self.connected = false;
            self.events.push_back(PeerEvent::Failed);
        }
    }

    /// Starts the handshake once ICE has a path, where rtcd is the DTLS client.
    fn start_dtls(&mut self, now: Instant) {
        if self.path.is_none() {
            return;
        }
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        if !dtls.waiting_to_start() {
            return;
        }
        let outcome = dtls.start(now);
        self.dtls_out();
        if let Some(outcome) = outcome {
            self.on_dtls(outcome, now);
        }
    }

    /// SRTP or SRTCP from the client: decrypted (which proves it is the client: only it has
    /// the keys), its stream bound on its first packet, counted, then to its track.
    fn read_srtp(&mut self, data: &[u8], now: Instant) {
        let Some(keys) = self.srtp.as_mut() else {
            return;
        };
        make_room(&mut self.rx, data.len(), RX_CHUNK);
        self.rx.extend_from_slice(data);
        let mut buf = self.rx.split();
        if rtc::shared::util::is_rtcp(data) {
            match keys.remote.unprotect_rtcp(&mut buf) {
                Ok(end) => buf.truncate(end),
                Err(err) => {
                    tracing::debug!(%err, "srtcp rejected");
                    return;
                }
            }
            let mut plain = buf.freeze();
            let packets = match rtcp::packet::unmarshal(&mut plain) {
                Ok(packets) if !packets.is_empty() => packets,
                _ => return,
            };
            self.heard = self.heard.max(now);
            self.read_rtcp(&packets, now);
        } else {
            match keys.remote.unprotect_rtp(&mut buf) {
                Ok(end) => buf.truncate(end),
                Err(err) => {
                    tracing::debug!(%err, "srtp rejected");
                    return;
                }
            }
            // Parsed once it proved to be the client's, from the shared chunk: rtc's parser
            // takes each header extension's value with `copy_to_bytes`, which slices a `Bytes`
            // but allocates a copy from a plain slice (one allocation per extension per packet).
            let plain = buf.freeze();
            let Ok(header) = rtp::header::Header::unmarshal(&mut plain.clone()) else {
                return;
            };
            let Some(payload) = rtp_payload(plain, header.padding) else {
                return;
            };
            let mut packet = rtp::Packet { header, payload };
            if !self.by_ssrc.contains_key(&packet.header.ssrc) {
                self.bind_stream(&packet.header);
            }
            self.rtx.repair(&mut packet);
            self.reception.receive(&packet.header, now);
            self.arrivals.record(&packet.header, now);
            self.heard = self.heard.max(now);
            self.deliver(packet, now);
        }
    }

    /// Feedback and reports from the client: transport-cc feedback to the estimator, sender
    /// reports to their track, the rest to its slot.
    fn read_rtcp(&mut self, packets: &[Box<dyn rtcp::Packet>], now: Instant) {
        if let Some(cc) = self.transport_cc.as_mut() {
            cc.on_rtcp(now, packets);
        }
        self.sender_reports(packets, now);
        self.feedback(packets);
    }

    /// Binds the stream of a packet with an unknown SSRC to its section (`receiving`), tells
    /// what counts it (the RTX repair, `reception`, `arrivals`) before its first packet (as rtc
    /// did), and opens its track or layer. A packet that belongs nowhere binds nothing (it is
    /// dropped, and nothing counted it either).
    fn bind_stream(&mut self, header: &rtp::header::Header) {
        let Some(binding) = self.receiving.bind(header) else {
            return;
        };
        if self.by_ssrc.contains_key(&binding.ssrc) {
            return; // an RTX packet of a bound stream
        }
        let Some(section) = self.receiving.sections.get(binding.section) else {
            return;
        };
        let receiver = section.receiver;
        let rtx_payload_type = section
            .rtx
            .iter()
            .find(|&(_, &apt)| apt == binding.payload_type)
            .map(|(&rtx, _)| rtx);
        let Some(mut r) = self.pc.rtp_receiver(receiver) else {
            return;
        };
        let track_id = r.track().track_id().to_string();
        let params = r.get_parameters().rtp_parameters.clone();
        let Some(codec) = params
            .codecs
            .iter()
            .find(|c| c.payload_type == binding.payload_type)
        else {
            return;
        };
        let rtx = binding.rtx_ssrc.zip(rtx_payload_type);
        let feedback = codec
            .rtp_codec
            .rtcp_feedback
            .iter()
            .map(|f| rtc::interceptor::RTCPFeedback {
                typ: f.typ.clone(),
                parameter: f.parameter.clone(),
            })
            .collect::<Vec<_>>();
        let extensions = params
            .header_extensions
            .iter()
            .map(|h| rtc::interceptor::RTPHeaderExtension {
                id: h.id,
                uri: h.uri.clone(),
            })
            .collect::<Vec<_>>();
        let info = StreamInfo {
            ssrc: binding.ssrc,
            ssrc_rtx: rtx.map(|(s, _)| s),
            ssrc_fec: None,
            payload_type: binding.payload_type,
            payload_type_rtx: rtx.map(|(_, p)| p),
            payload_type_fec: None,
            rtp_header_extensions: extensions,
            mime_type: codec.rtp_codec.mime_type.clone(),
            clock_rate: codec.rtp_codec.clock_rate,
            channels: codec.rtp_codec.channels,
            sdp_fmtp_line: codec.rtp_codec.sdp_fmtp_line.clone(),
            rtcp_feedback: feedback,
        };
        self.rtx.bind_remote_stream(&info);
        self.reception.bind(
            info.ssrc,
            info.clock_rate,
            super::nack::supports_nack(&info),
        );
        self.arrivals.bind(&info);
        self.by_ssrc.insert(binding.ssrc, (track_id.clone(), info));
        self.open_track(track_id, receiver, binding.ssrc, binding.rid);
    }

    /// A received packet, counted, to its track.
    fn deliver(&mut self, packet: rtp::Packet, now: Instant) {
        let Some((track_id, _)) = self.by_ssrc.get(&packet.header.ssrc) else {
            return;
        };
        if let Some(state) = self.tracks.get(track_id) {
            let packet = state.media_packet(packet, now);
            self.events.push_back(PeerEvent::Rtp {
                track: state.key,
                packet,
            });
        }
    }

    /// When [`Peer::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // rtc's own, read again only if it was handed something since (its events and
        // writes are left for `pump`, which the next datagram, timeout or poll runs).
        let mut next = if self.rtc_touched {
            self.pc.poll_timeout()
        } else {
            self.rtc_timeout
        };
        let mut earliest = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        earliest(self.arrivals.poll_timeout());
        earliest(self.reception.poll_timeout());
        earliest(self.reporting.poll_timeout());
        earliest(self.transport_cc.as_mut().and_then(|cc| cc.poll_timeout()));
        earliest(self.dtls.as_mut().and_then(Handshake::poll_timeout));
        if !self.silent {
            earliest(Some(self.heard + self.silence_limit));
        }
        next
    }

    /// Lets time pass: retransmissions, reports, ICE consent and timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.rtc_timeout.is_some_and(|t| t <= now) {
            self.rtc_touched = true;
            if let Err(err) = self.pc.handle_timeout(now) {
                tracing::debug!(%err, "timeout handling failed");
            }
        }
        if let Some(dtls) = self.dtls.as_mut()
            && dtls.poll_timeout().is_some_and(|t| t <= now)
        {
            let outcome = dtls.handle_timeout(now);
            self.dtls_out();
            if let Some(outcome) = outcome {
                self.on_dtls(outcome, now);
            }
        }
        if let Some(cc) = self.transport_cc.as_mut() {
            cc.handle_timeout(now);
        }
        let mut due = std::mem::take(&mut self.rtcp_due);
        self.reception.poll(now, &mut due);
        self.arrivals.poll(now, &mut due);
        self.reporting.poll(now, &mut due);
        for packet in due.drain(..) {
            // NACKs, receiver reports, transport-cc feedback and sender reports each in their
            // own RTCP packet, as rtc sent them.
            self.protect_rtcp(std::slice::from_ref(&packet));
        }
        self.rtcp_due = due;
        self.pump();
        if !self.silent && now >= self.heard + self.silence_limit {
            self.fail();
        }
    }

    /// The next datagram to send and where to.
    pub fn poll_transmit(&mut self) -> Option<(Transport, BytesMut)> {
        if self.rtc_touched {
            self.pump();
        }
        self.out.pop_front()
    }

    /// The next event, media included.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        if self.events.is_empty() {
            self.pump();
        }
        self.events.pop_front()
    }

    /// Whether ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The send-side bandwidth estimate towards the client with its delay and loss halves,
    /// once its transport-cc feedback came (see [`PeerEvent::BandwidthEstimate`]).
    pub fn estimate(&self) -> Option<super::bwe::Estimate> {
        self.estimate.get()
    }

    /// Sends one RTP packet on a slot: `header` is what the slot's down-track decided for
    /// `source` (the slot's SSRC, one of its payload types, its extension ids), `payload` the
    /// source's payload (or an RTX payload).
    pub fn send_rtp(
        &mut self,
        slot: SlotId,
        header: &RtpHeaderOut,
        source: &MediaPacket,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), EngineError> {
        let index = slot.0 as usize;
        let Some(state) = self.slots.get(index) else {
            return Err(internal("unknown slot"));
        };
        let mut packet = rtp_packet(&mut self.outgoing, header, payload);
        for (id, value) in header.extensions(source) {
            packet
                .header
                .set_extension(id, value.clone())
                .map_err(internal)?;
        }
        stamp_mid(state, &mut packet)?;
        self.write_media(index, packet, now)
    }

    /// Sends a padding-only packet on a slot (RTP padding, no payload, no extensions): what
    /// closes a hole in the subscriber's sequence space that no retransmission can fill
    /// (`DownTrack::poll_fill`). Receivers count it as the missing sequence number and drop it
    /// before decoding.
    pub fn send_padding(
        &mut self,
        slot: SlotId,
        header: &RtpHeaderOut,
        now: Instant,
    ) -> Result<(), EngineError> {
        let index = slot.0 as usize;
        if self.slots.get(index).is_none() {
            return Err(internal("unknown slot"));
        }
        let mut packet = rtp_packet(&mut self.outgoing, header, Bytes::new());
        packet.header.padding = true;
        packet.header.marker = false;
        self.write_media(index, packet, now)
    }

    /// Sends an empty RTX packet on a slot: `header` is the RTX stream's (its SSRC, payload type
    /// and sequence number), the payload the original sequence number `osn` alone. What closes
    /// a hole under a number something was already sent with (`DownTrack::poll_fill`,
    /// `Fill::osn`): the receiver restores an empty packet numbered `osn`, as if padding had
    /// come, and the media SSRC never carries two different packets under one SRTP number.
    pub fn send_rtx_fill(
        &mut self,
        slot: SlotId,
        header: &RtpHeaderOut,
        osn: u16,
        now: Instant,
    ) -> Result<(), EngineError> {
        let index = slot.0 as usize;
        let Some(state) = self.slots.get(index) else {
            return Err(internal("unknown slot"));
        };
        let mut packet = rtp_packet(
            &mut self.outgoing,
            header,
            Bytes::copy_from_slice(&osn.to_be_bytes()),
        );
        stamp_mid(state, &mut packet)?;
        self.write_media(index, packet, now)
    }

    /// Protects one outgoing RTP packet of slot `index` and queues it, counted for the sender
    /// reports and numbered for transport-cc in place (no interceptor sees it); held while ICE
    /// restarts.
    ///
    /// While ICE restarts, what is written waits for the client's checks to select a pair
    /// (usually one round trip; RFC 8445 9 wants media to go on meanwhile): a packet sent to a
    /// path the client has left is only repaired if the client NACKs it and can use the
    /// answer, and aiortc, for one, NACKs a loss once and drops RTX whose SSRC it cannot route
    /// when it receives several videos, then waits for its jitter buffer to overflow (4-8 s of
    /// frozen video). Holding the packets makes the restart lossless. Bounded by
    /// [`HELD_LIMIT`]: past it the oldest goes (the newest matter more, and the client can
    /// still NACK the hole). Nothing is sent before DTLS has keyed SRTP.
    fn write_media(
        &mut self,
        index: usize,
        mut packet: rtp::Packet,
        now: Instant,
    ) -> Result<(), EngineError> {
        if self.srtp.is_none() {
            return Ok(());
        }
        if self.restarting {
            hold(&mut self.held, HELD_LIMIT, (index, packet, now));
            return Ok(());
        }
        if self.slots.get(index).is_some_and(|s| s.bound.is_none()) {
            self.bind_slot(index);
        }
        self.reporting
            .count(&packet.header, packet.payload.len(), now);
        if let Some(cc) = self.transport_cc.as_mut() {
            cc.number(&mut packet, now);
        }
        self.protect_rtp(&packet);
        // Kept for the next packet's extension list, without what it referred to (the
        // payload and extension values hold the received packet's chunk).
        packet.payload = Bytes::new();
        packet.header.extensions.clear();
        self.outgoing = packet;
        Ok(())
    }

    /// Tells sender reports and transport-cc numbering of a slot's stream (rtc bound a sender's
    /// stream when it started, with its first codec and RTX): before its first packet
    /// ([`Peer::write_media`]), and again after a negotiation that changed what they were told
    /// ([`Peer::refresh_slots`]).
    fn bind_slot(&mut self, index: usize) {
        let Some(state) = self.slots.get_mut(index) else {
            return;
        };
        let slot = &state.slot;
        let Some(codec) = slot.codecs.first() else {
            return;
        };
        let info = StreamInfo {
            ssrc: slot.ssrc,
            ssrc_rtx: slot.rtx_ssrc.filter(|_| codec.rtx_payload_type.is_some()),
            ssrc_fec: None,
            payload_type: codec.payload_type,
            payload_type_rtx: codec.rtx_payload_type.filter(|_| slot.rtx_ssrc.is_some()),
            payload_type_fec: None,
            rtp_header_extensions: slot
                .extensions
                .iter()
                .map(|e| rtc::interceptor::RTPHeaderExtension {
                    id: u16::from(e.id),
                    uri: e.uri.clone(),
                })
                .collect(),
            mime_type: codec.mime_type.clone(),
            clock_rate: codec.clock_rate,
            channels: u16::from(slot.kind == MediaKind::Audio) * 2,
            sdp_fmtp_line: codec.fmtp.clone(),
            rtcp_feedback: Vec::new(),
        };
        if let Some(old) = &state.bound {
            if same_stream(old, &info) {
                return;
            }
            self.reporting.unbind(old.ssrc);
            if let Some(cc) = self.transport_cc.as_mut() {
                cc.unbind_local_stream(old);
            }
        }
        self.reporting.bind(info.ssrc, info.clock_rate);
        if let Some(cc) = self.transport_cc.as_mut() {
            cc.bind_local_stream(&info);
        }
        state.bound = Some(info);
    }

    /// Marshals, encrypts and queues one RTP packet towards the client.
    fn protect_rtp(&mut self, packet: &rtp::Packet) {
        let Some((keys, to)) = destination(self.restarting, &mut self.srtp, self.path) else {
            return;
        };
        let out = &mut self.out;
        TX.with_borrow_mut(|tx| {
            let size = packet.marshal_size();
            tx_room(tx, size + keys.local.rtp_overhead());
            tx.resize(size, 0);
            match packet.marshal_to(tx) {
                Ok(n) => tx.truncate(n),
                Err(err) => {
                    tx.clear();
                    tracing::debug!(%err, "rtp not marshalled");
                    return;
                }
            }
            match keys.local.protect_rtp(tx) {
                Ok(()) => out.push_back((to, tx.split())),
                Err(err) => {
                    tx.clear();
                    tracing::debug!(%err, "rtp not protected");
                }
            }
        });
    }

    /// Marshals, encrypts and queues one compound RTCP packet towards the client.
    fn protect_rtcp(&mut self, packets: &[Box<dyn rtcp::Packet>]) {
        if packets.is_empty() {
            return;
        }
        let Some((keys, to)) = destination(self.restarting, &mut self.srtp, self.path) else {
            return;
        };
        let plain = match rtcp::packet::marshal(packets) {
            Ok(plain) => plain,
            Err(err) => {
                tracing::debug!(%err, "rtcp not marshalled");
                return;
            }
        };
        let out = &mut self.out;
        TX.with_borrow_mut(|tx| {
            tx_room(tx, plain.len() + keys.local.rtcp_overhead());
            tx.extend_from_slice(&plain);
            match keys.local.protect_rtcp(tx) {
                Ok(()) => out.push_back((to, tx.split())),
                Err(err) => {
                    tx.clear();
                    tracing::debug!(%err, "rtcp not protected");
                }
            }
        });
    }

    /// Follows rtc's ICE state: the pair a nominating check selected becomes the path (and the
    /// DTLS client starts there), a restart on a connection that was up starts holding media,
    /// a selected pair sends what was held, and a failed or closed one drops it.
    fn on_ice_state(&mut self, state: RTCIceConnectionState) {
        tracing::debug!(?state, held = self.held.len(), "ice connection state");
        let now = self.now;
        match state {
            RTCIceConnectionState::Checking if self.connected => self.restarting = true,
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                if let Some(path) = self.nominating.or(self.answered) {
                    self.path = Some(path);
                }
                self.restarting = false;
                self.start_dtls(now);
                while let Some((index, packet, at)) = self.held.pop_front() {
                    if let Err(err) = self.write_media(index, packet, now.max(at)) {
                        tracing::debug!(%err, "held packet not sent");
                    }
                }
            }
            RTCIceConnectionState::Disconnected => {
                self.events.push_back(PeerEvent::Disconnected);
            }
            RTCIceConnectionState::Failed | RTCIceConnectionState::Closed => self.fail(),
            _ => {}
        }
    }

    /// Asks the publisher of `track` for a keyframe (PLI) of the stream sent with `ssrc`: a
    /// simulcast layer's keyframe is asked of that layer (the down-track waiting for it tells
    /// which, [`crate::sfu::downtrack::DownTrack::poll_keyframe_request`]). An SSRC the track
    /// does not send (a source restarted since, or a layer not opened): its current stream.
    pub fn request_keyframe(&mut self, track: TrackKey, ssrc: u32, now: Instant) {
        self.now = self.now.max(now);
        let Some(state) = self.tracks.values().find(|t| t.key == track) else {
            return;
        };
        let known = ssrc == state.ssrc || state.layers.iter().any(|(_, s)| *s == ssrc);
        let ssrc = if known { ssrc } else { state.ssrc };
        if self.srtp.is_none() {
            return;
        }
        let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        self.protect_rtcp(&[Box::new(pli)]);
    }

    /// Closes the connection (DTLS close_notify goes out with the next transmits).
    pub fn close(&mut self) {
        if let Some(dtls) = self.dtls.as_mut() {
            dtls.close(self.now);
        }
        self.dtls_out();
        self.rtc_touched = true;
        let _ = self.pc.close();
    }

    /// Moves what rtc produced since it was last touched (its answers to checks, its ICE
    /// events) into our queues, in order, and the estimate into an event when it is worth one.
    fn pump(&mut self) {
        if self.rtc_touched {
            self.rtc_touched = false;
            while let Some(msg) = self.pc.poll_write() {
                if classify(&msg.message) == PacketKind::Dtls {
                    continue; // rtc's own DTLS endpoint: the engine runs DTLS (never expected)
                }
                let protocol = match msg.transport.transport_protocol {
                    TransportProtocol::TCP => Protocol::Tcp,
                    _ => Protocol::Udp,
                };
                let transport = Transport {
                    local: msg.transport.local_addr,
                    peer: msg.transport.peer_addr,
                    protocol,
                };
                // A Binding success response: rtc authenticated a check of the client's.
                if msg.message.len() >= 20 && msg.message[..2] == [0x01, 0x01] {
                    self.heard = self.heard.max(self.now);
                    self.answered = Some(transport);
                    if self.nominating == Some(transport) && self.path.is_some() {
                        self.path = Some(transport);
                    }
                }
                self.out.push_back((transport, msg.message));
            }
            while let Some(event) = self.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) = event {
                    self.on_ice_state(state);
                }
            }
            self.rtc_timeout = self.pc.poll_timeout();
        }
        // After the reads: the feedback that moved the estimate was among them.
        if let Some(bits_per_second) = self.estimate_emitter.next(self.estimate.get(), self.now) {
            tracing::debug!(bits_per_second, "bandwidth estimate");
            self.events
                .push_back(PeerEvent::BandwidthEstimate { bits_per_second });
        }
    }

    fn open_track(
        &mut self,
        track_id: String,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<String>,
    ) {
        // rtc opens a receiver's track again after each renegotiation that keeps it: the same
        // track, not a new one (a new SSRC on it is the same source restarted). A simulcast
        // track opens once per layer (same track id and receiver, another rid): a layer of the
        // track, told apart by its rid.
        if let Some(known) = self.tracks.get_mut(&track_id)
            && known.receiver == receiver
        {
            let Some(rid) = rid else {
                known.ssrc = ssrc;
                return;
            };
            match known.layers.iter_mut().find(|(r, _)| *r == rid) {
                Some((_, bound)) if *bound == ssrc => return,
                Some((_, bound)) => *bound = ssrc,
                None => known.layers.push((rid.clone(), ssrc)),
            }
            let track = known.key;
            self.events
                .push_back(PeerEvent::LayerOpened(OpenedLayer { track, rid, ssrc }));
            return;
        }
        let mut mid = None;
        for id in self.pc.get_transceivers().collect::<Vec<_>>() {
            if let Some(t) = self.pc.rtp_transceiver(id)
                && t.receiver() == Some(receiver)
            {
                mid = t.mid().clone();
            }
        }
        let Some(mut r) = self.pc.rtp_receiver(receiver) else {
            return;
        };
        let Some(kind) = kind_from_rtc(r.track().kind()) else {
            return;
        };
        let rids: Vec<String> = r
            .track()
            .codings()
            .iter()
            .map(|c| c.rtp_coding_parameters.rid.clone())
            .filter(|rid| !rid.is_empty())
            .collect();
        let params = &r.get_parameters().rtp_parameters;
        let (codecs, extensions) = codecs_of(&params.codecs, &params.header_extensions);
        if let Ok(mut apt) = self.rtx_apt.lock() {
            for c in &codecs {
                if let Some(rtx) = c.rtx_payload_type {
                    apt.insert(rtx, c.payload_type);
                }
            }
        }
        let key = TrackKey(self.next_track);
        self.next_track += 1;
        let mut forwarded = [false; 256];
        for e in &extensions {
            forwarded[usize::from(e.id)] = !HOP_EXTENSIONS.contains(&e.uri.as_str());
        }
        self.tracks.insert(
            track_id,
            TrackState {
                key,
                receiver,
                ssrc,
                layers: rid.iter().map(|r| (r.clone(), ssrc)).collect(),
                codecs: codecs
                    .iter()
                    .filter_map(|c| Some((c.payload_type, video_codec(&c.mime_type)?)))
                    .collect(),
                forwarded,
            },
        );
        self.events.push_back(PeerEvent::TrackOpened(OpenedTrack {
            track: key,
            mid: mid.unwrap_or_default(),
            kind,
            ssrc,
            layers: rid.iter().map(|r| (r.clone(), ssrc)).collect(),
            rid,
            rids,
            codecs,
            extensions,
        }));
    }

    /// [`PeerEvent::SenderReport`] for each sender report about a stream of a published track.
    fn sender_reports(&mut self, packets: &[Box<dyn rtcp::Packet>], now: Instant) {
        use rtcp::sender_report::SenderReport;
        for sr in packets
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
        {
            self.reception.sender_report(sr, now);
            let track = self
                .tracks
                .values()
                .find(|t| t.ssrc == sr.ssrc || t.layers.iter().any(|&(_, ssrc)| ssrc == sr.ssrc));
            tracing::debug!(ssrc = sr.ssrc, known = track.is_some(), "sender report");
            if let Some(t) = track {
                self.events.push_back(PeerEvent::SenderReport {
                    track: t.key,
                    ssrc: sr.ssrc,
                    ntp: sr.ntp_time,
                    rtp_timestamp: sr.rtp_time,
                });
            }
        }
    }

    /// Keyframe requests and NACKs, each to the slot whose stream it names (a compound packet
    /// may carry feedback for several).
    fn feedback(&mut self, packets: &[Box<dyn rtcp::Packet>]) {
        use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        let slot_of = |slots: &[SlotState], ssrc: u32| {
            slots
                .iter()
                .find(|s| s.slot.ssrc == ssrc || s.slot.rtx_ssrc == Some(ssrc))
                .map(|s| s.slot.id)
        };
        for packet in packets {
            let any = packet.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                if let Some(slot) = slot_of(&self.slots, pli.media_ssrc) {
                    self.events.push_back(PeerEvent::KeyframeRequested(slot));
                }
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                let named = fir
                    .fir
                    .iter()
                    .map(|e| e.ssrc)
                    .chain(std::iter::once(fir.media_ssrc))
                    .find_map(|ssrc| slot_of(&self.slots, ssrc));
                if let Some(slot) = named {
                    self.events.push_back(PeerEvent::KeyframeRequested(slot));
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>()
                && let Some(slot) = slot_of(&self.slots, nack.media_ssrc)
            {
                let lost = nack
                    .nacks
                    .iter()
                    .flat_map(|pair| pair.packet_list())
                    .collect();
                self.events.push_back(PeerEvent::Nack { slot, lost });
            }
        }
    }
}

/// Where packets protected now go, with the keys that protect them: nowhere before DTLS keyed
/// SRTP or a pair was selected, nor while ICE restarts (the path may be one the client has
/// left: media is held, [`Peer::write_media`], reports and NACKs wait for the next ones, as they
/// did in rtc). Of the peer's fields, so the marshalling buffer and the queue stay free.
fn destination(
    restarting: bool,
    srtp: &mut Option<Box<SrtpKeys>>,
    path: Option<Transport>,
) -> Option<(&mut SrtpKeys, Transport)> {
    if restarting {
        return None;
    }
    Some((srtp.as_deref_mut()?, path?))
}

fn context(transport: &Transport) -> TransportContext {
    TransportContext {
        local_addr: transport.local,
        peer_addr: transport.peer,
        transport_protocol: match transport.protocol {
            Protocol::Udp => TransportProtocol::UDP,
            Protocol::Tcp => TransportProtocol::TCP,
        },
        ecn: None,
    }
}

/// Repairs two defects of rtc 0.21.1's answers when a client numbers a codec differently in
/// two sections (Chromium gives AV1 35 in one section and 45 in another): a payload type listed
/// twice in a section (with its `rtpmap` / `fmtp` / `rtcp-fb` lines twice), and an RTX payload
/// type whose `apt` names a payload type the section does not carry. Chromium rejects such an
/// answer section and then sends nothing on it. Our candidates in every section (rtc writes
/// them into the first bundled one only; aiortc reads the last) and `a=end-of-candidates`,
/// which rtc does not write. Every line is otherwise kept as written.
fn tidy_answer(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(line);
        }
    }
    let pt_of = |line: &str| -> Option<u8> {
        let rest = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
            .iter()
            .find_map(|p| line.strip_prefix(p))?;
        rest.split([' ', '/']).next()?.parse().ok()
    };
    // rtc writes our candidates only into the first bundled section; a client that reads them
    // from another section of the bundle (aiortc takes the last one) then has none.
    let candidates: Vec<&str> = sections
        .iter()
        .skip(1)
        .flat_map(|s| s.iter().copied())
        .filter(|l| l.starts_with("a=candidate:"))
        .fold(Vec::new(), |mut acc, l| {
            if !acc.contains(&l) {
                acc.push(l);
            }
            acc
        });
    for (index, section) in sections.into_iter().enumerate() {
        if index == 0 {
            for line in section {
                out.push_str(line);
                out.push_str("\r\n");
            }
            continue;
        }
        // Payload types in m= order, once each.
        let m_line = section.first().copied().unwrap_or_default();
        let fields: Vec<&str> = m_line.split(' ').collect();
        let mut pts: Vec<u8> = Vec::new();
        for f in fields.iter().skip(3) {
            if let Ok(pt) = f.parse::<u8>()
                && !pts.contains(&pt)
            {
                pts.push(pt);
            }
        }
        // RTX whose apt is not carried goes.
        let apt: Vec<(u8, u8)> = section
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("a=fmtp:")?;
                let (pt, params) = rest.split_once(' ')?;
                let target = params
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("apt="))?;
                Some((pt.parse().ok()?, target.parse().ok()?))
            })
            .collect();
        let orphan = |pt: u8| {
            apt.iter()
                .any(|(rtx, target)| *rtx == pt && !pts.contains(target))
        };
        let kept: Vec<u8> = pts.iter().copied().filter(|pt| !orphan(*pt)).collect();
        if fields.len() >= 3 {
            out.push_str(&fields[..3].join(" "));
            for pt in &kept {
                out.push_str(&format!(" {pt}"));
            }
            out.push_str("\r\n");
        }
        let mut seen: Vec<&str> = Vec::new();
        let has_end = section.contains(&"a=end-of-candidates");
        let has_candidates = section.iter().any(|l| l.starts_with("a=candidate:"));
        for line in section.into_iter().skip(1) {
            if let Some(pt) = pt_of(line) {
                if !kept.contains(&pt) || seen.contains(&line) {
                    continue;
                }
                seen.push(line);
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        if !has_candidates {
            for line in &candidates {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        // An ICE-lite answer carries every candidate rtcd has: say so (RFC 8840 §4.1), or
        // agents that wait for the end of candidates (aiortc) never start checking.
        if !has_end {
            out.push_str("a=end-of-candidates\r\n");
        }
    }
    out
}

/// The first media codec (not RTX, RED or FEC) of section `mid` of `sdp`.
fn first_codec(sdp: &str, mid: &str) -> Option<RTCRtpCodec> {
    let mut media = None;
    let mut codecs: Vec<(String, u32, u16)> = Vec::new();
    let mut current_mid = None;
    let mut found = None;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            if current_mid.as_deref() == Some(mid) {
                found = Some((media.take(), std::mem::take(&mut codecs)));
                break;
            }
            media = m.split_whitespace().next().map(str::to_owned);
            codecs.clear();
            current_mid = None;
        } else if let Some(v) = line.strip_prefix("a=mid:") {
            current_mid = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("a=rtpmap:") {
            let mut parts = v.split_whitespace().nth(1).unwrap_or_default().split('/');
            let name = parts.next().unwrap_or_default();
            let rate = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
            let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            if !["rtx", "red", "ulpfec", "flexfec-03"].contains(&name.to_ascii_lowercase().as_str())
            {
                codecs.push((name.to_owned(), rate, channels));
            }
        }
    }
    if found.is_none() && current_mid.as_deref() == Some(mid) {
        found = Some((media, codecs));
    }
    let (media, codecs) = found?;
    let (name, clock_rate, channels) = codecs.into_iter().next()?;
    Some(RTCRtpCodec {
        mime_type: format!("{}/{name}", media?),
        clock_rate,
        channels,
        ..Default::default()
    })
}

pub(super) fn host_candidate(transport: &Transport) -> Result<RTCIceCandidateInit, EngineError> {
    let network = match transport.protocol {
        Protocol::Udp => "udp",
        Protocol::Tcp => "tcp",
    };
    let config = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.to_owned(),
            address: transport.local.ip().to_string(),
            port: transport.local.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type: match transport.protocol {
            Protocol::Udp => Default::default(),
            Protocol::Tcp => rtc::ice::tcp_type::TcpType::Passive,
        },
    };
    let candidate = config.new_candidate_host().map_err(internal)?;
    RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(internal)
}

fn codecs_of(
    codecs: &[rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters],
    extensions: &[rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionParameters],
) -> (Vec<Codec>, Vec<HeaderExtension>) {
    let mut out: Vec<Codec> = codecs
        .iter()
        .filter(|c| !c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx"))
        .map(|c| Codec {
            payload_type: c.payload_type,
            mime_type: c.rtp_codec.mime_type.to_ascii_lowercase(),
            clock_rate: c.rtp_codec.clock_rate,
            fmtp: c.rtp_codec.sdp_fmtp_line.clone(),
            rtx_payload_type: None,
        })
        .collect();
    for rtx in codecs
        .iter()
        .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx"))
    {
        let apt = rtx
            .rtp_codec
            .sdp_fmtp_line
            .split(';')
            .find_map(|kv| kv.trim().strip_prefix("apt="))
            .and_then(|v| v.parse::<u8>().ok());
        if let Some(codec) = out.iter_mut().find(|c| Some(c.payload_type) == apt) {
            codec.rtx_payload_type = Some(rtx.payload_type);
        }
    }
    let extensions = extensions
        .iter()
        .filter_map(|e| {
            Some(HeaderExtension {
                id: u8::try_from(e.id).ok()?,
                uri: e.uri.clone(),
            })
        })
        .collect();
    (out, extensions)
}

/// The payload of a decrypted RTP packet (after its header as written, where SRTP began
/// encrypting), without its padding if its header says it has some (as `rtp::Packet::unmarshal`
/// would cut it, without parsing the header again). `None` for padding longer than the payload,
/// which `unmarshal` refuses too.
fn rtp_payload(plain: bytes::Bytes, padding: bool) -> Option<bytes::Bytes> {
    let payload = plain.slice(super::srtp::rtp_header_len(&plain)?..);
    if !padding {
        return Some(payload);
    }
    let padding = usize::from(*payload.last()?);
    let end = payload.len().checked_sub(padding)?;
    Some(payload.slice(..end))
}

thread_local! {
    /// The chunk every peer of this thread (a media worker) protects the packets it sends
    /// in, each split off as it is done. What is protected leaves by the end of the worker's
    /// round, so by the next one the chunk is free and used again without an allocation.
    /// Until 2026-12-07 each peer had a 2 KiB chunk of its own: one packet fits, so every
    /// burst (a video frame's packets go out in one round) took a new chunk per packet, and
    /// the split of a new chunk allocates its shared header too: fan-out 16's profile showed
    /// two allocations for most packets sent. One chunk per thread also leaves that 2 KiB per
    /// peer unused.
    static TX: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// The size of [`TX`]'s chunks: a round's packets of the whole worker, about 50 full ones.
/// A chunk still pinned by a packet not yet sent (one queued to an ICE-TCP connection) stays
/// until that packet goes; the thread takes a new one meanwhile.
const TX_CHUNK: usize = 64 * 1024;
/// The chunks received packets are cut from: one allocation per few packets instead of one per
/// packet. A chunk lives as long as the last packet cut from it (video waits up to half a
/// second in its retransmission buffer), so it is rarely free again; larger chunks would
/// allocate less often and hold more memory per peer.
const RX_CHUNK: usize = 4 * 1024;

/// Room for `n` more bytes in [`TX`]'s chunk, first back at its start if every packet cut
/// from it has gone (the rounds before were sent): a round's packets then stay in the chunk's
/// first kilobytes, which the cache holds, and only a round larger than the chunk takes a new
/// one. Without the rewind the cursor walked the whole chunk and each time it reached the end
/// took a new one (a packet of the round was still in it): one-to-one cost 15-30 % more CPU
/// per packet than with a chunk per peer.
fn tx_room(tx: &mut BytesMut, n: usize) {
    if tx.is_empty() {
        // False while a packet of this round is still in the chunk: it goes on from there.
        let _ = tx.try_reclaim(TX_CHUNK);
    }
    make_room(tx, n, TX_CHUNK);
}

/// Room for `n` more bytes at the end of `buf`: the chunk it was cut from again once every
/// packet cut from it has gone (no allocation), a new one of `chunk` bytes (or `n`) otherwise.
fn make_room(buf: &mut BytesMut, n: usize, chunk: usize) {
    if buf.capacity() - buf.len() < n {
        buf.reserve(n.max(chunk));
    }
}

#[cfg(test)]
mod tests {
    //! Whole sessions in memory: `rtc` clients and our [`Peer`]s exchange datagrams through a
    //! routing loop, and time is advanced by hand (5 ms steps), so minutes of media take
    //! milliseconds and nothing depends on the machine's speed.

    use super::*;
    use crate::engine::testing;
    use crate::sfu::downtrack::{DownTrack, DownTrackConfig, Forward};
    use crate::sfu::retransmit::RetransmitBuffer;
    use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
    use rtc::peer_connection::state::RTCPeerConnectionState;
    use rtc::rtp_transceiver::RTCRtpTransceiverInit;

    const SERVER: &str = "10.9.0.1:5000";

    fn settings() -> PeerSettings {
        PeerSettings {
            candidates: vec![Transport {
                local: SERVER.parse().unwrap(),
                peer: SERVER.parse().unwrap(),
                protocol: Protocol::Udp,
            }],
            disconnected_timeout: Duration::from_secs(5),
            failed_timeout: Duration::from_secs(25),
            estimation: true,
            departures: None,
        }
    }

    /// A browser-like client on `rtc`: full ICE, controlling, offers.
    struct Client {
        pc: RTCPeerConnection,
        addr: SocketAddrV,
        received: Vec<(Instant, rtp::Packet)>,
        feedback: Vec<Box<dyn rtcp::Packet>>,
        /// Whether its peer connection reached `connected` (ICE and DTLS up).
        connected: bool,
    }
    type SocketAddrV = std::net::SocketAddr;

    impl Client {
        fn new(addr: &str, now: Instant) -> Self {
            Self::build(addr, now, false)
        }

        /// A client whose offers carry the mid, rid and repaired-rid extensions (as browsers'
        /// do), for simulcast.
        fn simulcast(addr: &str, now: Instant) -> Self {
            Self::build(addr, now, true)
        }

        fn build(addr: &str, now: Instant, simulcast: bool) -> Self {
            let mut media = MediaEngine::default();
            media.register_default_codecs().unwrap();
            if simulcast {
                rtc::peer_connection::configuration::interceptor_registry::configure_simulcast_extension_headers(&mut media).unwrap();
            }
            // Default interceptors, plus the tap so the test sees the feedback it receives.
            let registry = Registry::new().with(
                rtc::interceptor::Slot::Custom(9_000),
                crate::engine::feedback::FeedbackTap::default(),
            );
            let registry = rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors(
                registry,
                &mut media,
            )
            .unwrap();
            let pc = RTCPeerConnectionBuilder::new()
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .build(now)
                .unwrap();
            let mut client = Self {
                pc,
                addr: addr.parse().unwrap(),
                received: Vec::new(),
                feedback: Vec::new(),
                connected: false,
            };
            client.add_host_candidate();
            client
        }

        /// Its host candidate at `addr`.
        fn add_host_candidate(&mut self) {
            let candidate = host_candidate(&Transport {
                local: self.addr,
                peer: self.addr,
                protocol: Protocol::Udp,
            })
            .unwrap();
            self.pc.add_local_candidate(candidate).unwrap();
        }

        fn publish_video(&mut self, ssrc: u32) {
            // As the SDK does: a send-only section per published track.
            let encodings = testing::encodings(&[("", ssrc)]);
            testing::add_sendonly(&mut self.pc, "cam", RtpCodecKind::Video, encodings);
        }

        /// Publishes a camera in three simulcast layers, `(rid, SSRC)` low to high, with no
        /// SSRC in the offer (as Chromium: the layers are known by their rids only).
        fn publish_simulcast(&mut self, layers: &[(&str, u32)]) {
            let encodings = testing::encodings(layers);
            testing::add_sendonly(&mut self.pc, "cam", RtpCodecKind::Video, encodings);
        }

        /// Sends packet `seq` of a simulcast layer, as VP8 like [`Client::send_video_as`];
        /// `ids`: the (mid, rid) extension ids and the mid to stamp (`None`: no MID / RID, as a
        /// browser once the SSRC is acknowledged).
        fn send_layer(
            &mut self,
            ssrc: u32,
            rid: &str,
            seq: u16,
            stamp: Option<&SimulcastIds>,
            now: Instant,
        ) {
            let mut packet = rtp::Packet::default();
            packet.header.version = 2;
            packet.header.payload_type = 96;
            packet.header.sequence_number = seq;
            packet.header.timestamp = u32::from(seq) * 3000;
            packet.header.marker = true;
            packet.header.ssrc = ssrc;
            let key = seq.is_multiple_of(30);
            packet.payload = Bytes::from(vec![0x10, if key { 0x00 } else { 0x01 }, 0, 0, 9, 9, 9]);
            self.write_camera(packet, stamp.map(|ids| (ids, ids.rid_id, rid)), now);
        }

        /// Writes `packet` on the camera's sender, stamped with the MID and `(id, rid)` (the
        /// rid or the repaired-rid extension) when `stamp` is given.
        fn write_camera(
            &mut self,
            mut packet: rtp::Packet,
            stamp: Option<(&SimulcastIds, u8, &str)>,
            now: Instant,
        ) {
            if let Some((ids, rid_id, rid)) = stamp {
                packet.header.extension = true;
                packet.header.extension_profile = 0xBEDE;
                packet
                    .header
                    .set_extension(ids.mid_id, Bytes::from(ids.mid.clone()))
                    .unwrap();
                packet
                    .header
                    .set_extension(rid_id, Bytes::from(rid.to_owned()))
                    .unwrap();
            }
            self.pc
                .handle_write(TaggedRTCMessage {
                    now,
                    message: RTCMessage::RtpPacket("cam".into(), packet),
                })
                .unwrap();
        }

        /// Retransmits packet `seq` of a simulcast layer as RTX on `rtx_ssrc` (RFC 4588: the
        /// original sequence number in front of the payload), MID and repaired-rid stamped or
        /// not.
        fn send_layer_rtx(
            &mut self,
            rtx_ssrc: u32,
            rid: &str,
            (rtx_seq, seq): (u16, u16),
            ids: &SimulcastIds,
            stamp: bool,
            now: Instant,
        ) {
            let mut packet = rtp::Packet::default();
            packet.header.version = 2;
            packet.header.payload_type = ids.rtx_pt;
            packet.header.sequence_number = rtx_seq;
            packet.header.timestamp = u32::from(seq) * 3000;
            packet.header.ssrc = rtx_ssrc;
            let mut payload = seq.to_be_bytes().to_vec();
            payload.extend_from_slice(&[0x10, 0x01, 0, 0, 9, 9, 9]);
            packet.payload = Bytes::from(payload);
            self.write_camera(packet, stamp.then_some((ids, ids.rrid_id, rid)), now);
        }

        fn receive(&mut self, kind: RtpCodecKind) {
            self.pc
                .add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .unwrap();
        }

        fn negotiate(&mut self, server: &mut Peer, now: Instant) -> Answer {
            let offer = self.pc.create_offer(None).unwrap();
            self.pc.set_local_description(now, offer.clone()).unwrap();
            let answer = server.apply_offer(&offer.sdp, now).unwrap();
            self.pc
                .set_remote_description(
                    now,
                    RTCSessionDescription::answer(answer.sdp.clone()).unwrap(),
                )
                .unwrap();
            answer
        }

        /// A datagram from rtcd (at [`SERVER`]) reaches the client.
        fn deliver(&mut self, data: BytesMut, now: Instant) {
            self.pc
                .handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: self.addr,
                        peer_addr: SERVER.parse().unwrap(),
                        transport_protocol: TransportProtocol::UDP,
                        ecn: None,
                    },
                    message: data,
                })
                .unwrap();
        }

        /// The client's network changes to `addr` and it restarts ICE (the caller negotiates).
        fn move_and_restart_ice(&mut self, addr: &str) {
            self.addr = addr.parse().unwrap();
            self.add_host_candidate();
            self.pc.restart_ice();
        }

        fn send_video(&mut self, seq: u16, now: Instant) {
            self.send_video_as(0xA0A0, seq, now);
        }

        fn send_video_as(&mut self, ssrc: u32, seq: u16, now: Instant) {
            let mut packet = rtp::Packet::default();
            packet.header.version = 2;
            packet.header.ssrc = 0; // filled below
            packet.header.payload_type = 96;
            packet.header.sequence_number = seq;
            packet.header.timestamp = u32::from(seq) * 3000;
            packet.header.marker = true;
            // VP8 descriptor (S=1, PID 0) and a keyframe tag every 30 packets.
            let key = seq.is_multiple_of(30);
            packet.payload = Bytes::from(vec![0x10, if key { 0x00 } else { 0x01 }, 0, 0, 9, 9, 9]);
            packet.header.ssrc = ssrc;
            self.pc
                .handle_write(TaggedRTCMessage {
                    now,
                    message: RTCMessage::RtpPacket("cam".into(), packet),
                })
                .unwrap();
        }
    }

    /// What a simulcast sender stamps: the extension ids of its offer and its section's mid.
    struct SimulcastIds {
        mid_id: u8,
        rid_id: u8,
        rrid_id: u8,
        mid: String,
        /// The RTX payload type of VP8 (96) in the offer.
        rtx_pt: u8,
    }

    impl SimulcastIds {
        /// Read from an offer (rtcd answers with the offer's ids): the section with
        /// `a=simulcast`.
        fn of(offer: &str) -> Self {
            let id = |uri: &str| {
                offer
                    .lines()
                    .find_map(|l| {
                        let (id, rest) = l.strip_prefix("a=extmap:")?.split_once(' ')?;
                        (rest.split(' ').next() == Some(uri)).then(|| id.parse().unwrap())
                    })
                    .unwrap()
            };
            let mut mid = String::new();
            for line in offer.lines() {
                if let Some(m) = line.strip_prefix("a=mid:") {
                    mid = m.to_owned();
                }
                if line.starts_with("a=simulcast:") {
                    break;
                }
            }
            let rtx_pt = offer
                .lines()
                .find_map(|l| {
                    let (pt, fmtp) = l.strip_prefix("a=fmtp:")?.split_once(' ')?;
                    (fmtp == "apt=96").then(|| pt.parse().unwrap())
                })
                .unwrap();
            Self {
                mid_id: id(MID_URI),
                rid_id: id(RID_URI),
                rrid_id: id(REPAIRED_RID_URI),
                mid,
                rtx_pt,
            }
        }
    }

    /// Moves datagrams both ways until quiet; `drop_to_client` may discard server→client
    /// datagrams (loss on the way to the client), `drop_to_server` client→server ones.
    fn route(
        client: &mut Client,
        server: &mut Peer,
        now: Instant,
        drop_to_client: &mut dyn FnMut(&[u8]) -> bool,
        drop_to_server: &mut dyn FnMut(&[u8]) -> bool,
    ) {
        let server_addr: SocketAddrV = SERVER.parse().unwrap();
        for _ in 0..8 {
            let mut moved = false;
            while let Some(msg) = client.pc.poll_write() {
                moved = true;
                if drop_to_server(&msg.message) {
                    continue;
                }
                server.handle_datagram(
                    Transport {
                        local: server_addr,
                        peer: client.addr,
                        protocol: Protocol::Udp,
                    },
                    &msg.message,
                    now,
                );
            }
            while let Some((transport, data)) = server.poll_transmit() {
                moved = true;
                assert_eq!(transport.peer, client.addr, "the answer goes to the sender");
                if drop_to_client(&data) {
                    continue;
                }
                client
                    .pc
                    .handle_read(TaggedBytesMut {
                        now,
                        transport: TransportContext {
                            local_addr: client.addr,
                            peer_addr: server_addr,
                            transport_protocol: TransportProtocol::UDP,
                            ecn: None,
                        },
                        message: data,
                    })
                    .unwrap();
            }
            while let Some(msg) = client.pc.poll_read() {
                match msg.message {
                    RTCMessage::RtpPacket(_, p) => client.received.push((now, p)),
                    RTCMessage::RtcpPacket(_, p) => client.feedback.extend(p),
                    _ => {}
                }
            }
            while let Some(e) = client.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = e {
                    client.connected = state == RTCPeerConnectionState::Connected;
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn tick(client: &mut Client, server: &mut Peer, now: Instant) {
        client.pc.handle_timeout(now).unwrap();
        server.handle_timeout(now);
    }

    /// A call in memory: alice publishes a VP8 camera, bob receives it through one slot, and the
    /// test plays the SFU's forwarding: a down-track for bob's slot, a retransmission buffer for
    /// alice's track, NACKs answered from it, keyframes requested from alice.
    struct Rig {
        t0: Instant,
        now: Instant,
        alice: Client,
        bob: Client,
        alice_s: Peer,
        bob_s: Peer,
        slot: Slot,
        vp8: Codec,
        source: Option<OpenedTrack>,
        connected: (bool, bool),
        seq: u16,
        down: Option<DownTrack>,
        buffer: RetransmitBuffer,
        /// Retransmissions sent to bob.
        resent: usize,
        /// Whether bob's down-track answers NACKs with RTX (where the slot has it).
        rtx: bool,
        /// How many of `resent` were RTX packets.
        resent_rtx: usize,
        /// Every RTP datagram rtcd sent bob: (SSRC, payload type, sequence), read from the clear
        /// SRTP header.
        wire_to_bob: Vec<(u32, u8, u16)>,
        /// Server→bob datagrams whose RTP sequence (bob's) is listed here are dropped once.
        drop_to_bob: Vec<u16>,
        /// Empty RTX packets sent to close a number already used (`Fill::osn`).
        rtx_fills: usize,
        bob_events: Vec<PeerEvent>,
        alice_events: Vec<PeerEvent>,
        /// Sequence numbers of alice's packets as rtcd's SFU got them, in arrival order.
        from_alice: Vec<u16>,
        /// Whether bob's datagrams reach rtcd at all (false: bob went silent).
        bob_online: bool,
        /// Whether bob's STUN (his consent checks) is lost on the way to rtcd, his media not.
        bob_checks_lost: bool,
    }

    impl Rig {
        fn new() -> Self {
            Self::with_settings(&settings())
        }

        /// A rig whose rtcd peers use `settings` (e.g. shorter ICE timeouts).
        fn with_settings(settings: &PeerSettings) -> Self {
            let identity = Identity::generate().unwrap();
            let now = Instant::now();
            let mut alice = Client::new("10.9.0.2:6000", now);
            let mut bob = Client::new("10.9.0.3:6000", now);
            let mut alice_s = Peer::new(&identity, settings, now).unwrap();
            let mut bob_s = Peer::new(&identity, settings, now).unwrap();
            alice.publish_video(0xA0A0);
            bob.receive(RtpCodecKind::Video);
            let a = alice.negotiate(&mut alice_s, now);
            assert!(a.slots.is_empty(), "alice receives nothing: no slot");
            assert!(a.sdp.contains("a=ice-lite"));
            let b = bob.negotiate(&mut bob_s, now);
            assert_eq!(b.slots.len(), 1);
            assert_ne!(a.ufrag, b.ufrag);
            let slot = bob_s.slots().next().unwrap().clone();
            assert_eq!(slot.kind, MediaKind::Video);
            let vp8 = slot
                .codecs
                .iter()
                .find(|c| c.mime_type == "video/vp8")
                .expect("VP8 negotiated in the slot")
                .clone();
            Self {
                t0: now,
                now,
                alice,
                bob,
                alice_s,
                bob_s,
                slot,
                vp8,
                source: None,
                connected: (false, false),
                seq: 0,
                down: None,
                buffer: RetransmitBuffer::new(512).unwrap(),
                resent: 0,
                rtx: false,
                resent_rtx: 0,
                wire_to_bob: Vec::new(),
                drop_to_bob: Vec::new(),
                rtx_fills: 0,
                from_alice: Vec::new(),
                bob_events: Vec::new(),
                alice_events: Vec::new(),
                bob_online: true,
                bob_checks_lost: false,
            }
        }

        /// Runs `steps` of 5 ms; alice sends a packet every 30 ms once connected.
        fn run(&mut self, steps: u32, mut each_second: impl FnMut(&mut Self)) {
            for step in 0..steps {
                self.now += Duration::from_millis(5);
                let now = self.now;
                tick(&mut self.alice, &mut self.alice_s, now);
                tick(&mut self.bob, &mut self.bob_s, now);
                if self.connected.0 && step % 6 == 0 {
                    self.alice.send_video(self.seq, now);
                    self.seq = self.seq.wrapping_add(1);
                }
                route(
                    &mut self.alice,
                    &mut self.alice_s,
                    now,
                    &mut |_| false,
                    &mut |_| false,
                );
                while let Some(ev) = self.alice_s.poll_event() {
                    match ev {
                        PeerEvent::Connected => self.connected.0 = true,
                        PeerEvent::TrackOpened(t) => {
                            let mut config =
                                DownTrackConfig::new(MediaKind::Video, self.slot.ssrc, 90_000);
                            if self.rtx {
                                config.rtx_ssrc = self.slot.rtx_ssrc;
                            }
                            for codec in &t.codecs {
                                if let Some(sub) = self
                                    .slot
                                    .codecs
                                    .iter()
                                    .find(|c| c.mime_type == codec.mime_type)
                                {
                                    let rtx = sub.rtx_payload_type.filter(|_| self.rtx);
                                    config
                                        .payload_types
                                        .insert(codec.payload_type, sub.payload_type, rtx)
                                        .unwrap();
                                }
                            }
                            self.down = Some(DownTrack::new(config, t.ssrc).unwrap());
                            self.source = Some(t);
                        }
                        PeerEvent::Rtp { track, packet } => {
                            assert_eq!(Some(track), self.source.as_ref().map(|s| s.track));
                            self.from_alice.push(packet.sequence);
                            if let (true, Some(down)) = (self.connected.1, self.down.as_mut())
                                && let Forward::Send(header) = down.forward(&packet, now)
                            {
                                let payload = packet.payload.clone();
                                self.bob_s
                                    .send_rtp(self.slot.id, &header, &packet, payload, now)
                                    .unwrap();
                            }
                            self.buffer.insert(packet);
                        }
                        other => self.alice_events.push(other),
                    }
                }
                if self.bob_online {
                    let checks_lost = self.bob_checks_lost;
                    let drops = &mut self.drop_to_bob;
                    let wire = &mut self.wire_to_bob;
                    route(
                        &mut self.bob,
                        &mut self.bob_s,
                        now,
                        &mut |d: &[u8]| {
                            // SRTP leaves the RTP header in clear: bytes 2..4 are the sequence,
                            // 8..12 the SSRC.
                            let rtp =
                                d.len() > 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1]);
                            let seq = if rtp {
                                u16::from_be_bytes([d[2], d[3]])
                            } else {
                                0
                            };
                            if rtp {
                                let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
                                wire.push((ssrc, d[1] & 0x7f, seq));
                            }
                            if rtp && drops.contains(&seq) {
                                drops.retain(|s| *s != seq);
                                return true;
                            }
                            false
                        },
                        &mut |d: &[u8]| {
                            // STUN (RFC 7983: first byte 0-3).
                            checks_lost && d.first().is_some_and(|b| *b < 4)
                        },
                    );
                } else {
                    while self.bob.pc.poll_write().is_some() {}
                    while self.bob_s.poll_transmit().is_some() {}
                }
                while let Some(ev) = self.bob_s.poll_event() {
                    match &ev {
                        PeerEvent::Connected => self.connected.1 = true,
                        PeerEvent::Nack { slot, lost } if *slot == self.slot.id => {
                            let mut resend = Vec::new();
                            if let Some(down) = self.down.as_mut() {
                                down.on_nack(lost.iter().copied(), &self.buffer, now, |r| {
                                    resend.push((r.header, r.packet.clone(), r.payload, r.rtx))
                                });
                            }
                            for (header, packet, payload, rtx) in resend {
                                self.bob_s
                                    .send_rtp(self.slot.id, &header, &packet, payload, now)
                                    .unwrap();
                                self.resent += 1;
                                self.resent_rtx += usize::from(rtx);
                            }
                            while let Some(fill) = self.down.as_mut().and_then(|d| d.poll_fill(now))
                            {
                                match fill.osn {
                                    Some(osn) => {
                                        self.bob_s
                                            .send_rtx_fill(self.slot.id, &fill.header, osn, now)
                                            .unwrap();
                                        self.rtx_fills += 1;
                                    }
                                    None => {
                                        self.bob_s
                                            .send_padding(self.slot.id, &fill.header, now)
                                            .unwrap();
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    self.bob_events.push(ev);
                }
                if let (Some(down), Some(source)) = (self.down.as_mut(), self.source.as_ref())
                    && down.poll_keyframe_request(now).is_some()
                {
                    self.alice_s
                        .request_keyframe(source.track, source.ssrc, now);
                }
                if step % 200 == 199 {
                    each_second(self);
                }
            }
        }
    }

    /// Counts bob's received packets per 1 s window after the first 3 s.
    fn flow_windows(rig: &mut Rig, seconds: u32) -> Vec<usize> {
        let mut windows = Vec::new();
        let mut last = rig.bob.received.len();
        rig.run(seconds * 200, |rig| {
            let n = rig.bob.received.len();
            if rig.now - rig.t0 > Duration::from_secs(3) {
                windows.push(n - last);
            }
            last = n;
        });
        windows
    }

    /// A browser's order: it joins receiving, and publishes its camera in a later offer, while
    /// rtcd already sends video on a slot of the same peer connection. The camera must open as
    /// a track of bob's (it once landed on the slot's transceiver instead).
    #[test]
    fn a_subscriber_that_starts_publishing_later_opens_its_track() {
        let mut rig = Rig::new();
        rig.run(400, |_| {});
        assert!(rig.connected.1, "bob connected");
        rig.bob.publish_video(0xB0B0);
        let answer = rig.bob.negotiate(&mut rig.bob_s, rig.now);
        assert_eq!(answer.slots.len(), 1, "still one slot: {:?}", answer.slots);
        for seq in 0..200u16 {
            let now = rig.now;
            rig.bob.send_video_as(0xB0B0, seq, now);
            rig.run(1, |_| {});
        }
        let opened: Vec<&OpenedTrack> = rig
            .bob_events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::TrackOpened(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(
            opened.len(),
            1,
            "{:?}",
            rig.bob_events
                .iter()
                .filter(|e| !matches!(e, PeerEvent::Rtp { .. }))
                .collect::<Vec<_>>()
        );
        assert_eq!((opened[0].kind, opened[0].ssrc), (MediaKind::Video, 0xB0B0));
        assert_ne!(
            opened[0].mid, rig.slot.mid,
            "the camera has its own section"
        );
        let rtp = rig
            .bob_events
            .iter()
            .filter(|e| matches!(e, PeerEvent::Rtp { .. }))
            .count();
        assert!(rtp > 150, "bob's packets reach rtcd: {rtp}");
        // And bob still receives alice on the slot.
        let before = rig.bob.received.len();
        rig.run(400, |_| {});
        assert!(rig.bob.received.len() > before + 40);
    }

    #[test]
    fn answers_list_each_payload_type_once_and_no_rtx_without_its_codec() {
        let sdp = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   a=rtpmap:111 opus/48000/2\r\na=candidate:1 1 udp 2130706431 10.0.0.1 9000 typ host\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 98 98 97 36\r\na=mid:3\r\n\
                   a=rtpmap:96 VP8/90000\r\na=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\n\
                   a=rtcp-fb:98 nack\r\na=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\n\
                   a=rtcp-fb:98 nack\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
                   a=rtpmap:36 rtx/90000\r\na=fmtp:36 apt=35\r\na=recvonly\r\n";
        let tidy = tidy_answer(sdp);
        assert!(
            tidy.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 98 97\r\n"),
            "{tidy}"
        );
        assert_eq!(tidy.matches("a=rtpmap:98 VP9/90000").count(), 1, "{tidy}");
        assert_eq!(tidy.matches("a=rtcp-fb:98 nack").count(), 1, "{tidy}");
        assert!(
            !tidy.contains("a=rtpmap:36") && !tidy.contains("apt=35"),
            "{tidy}"
        );
        assert!(
            tidy.contains("a=fmtp:97 apt=96\r\na=recvonly\r\n"),
            "{tidy}"
        );
        assert!(tidy.starts_with("v=0\r\ns=-\r\nm=audio"), "{tidy}");
        let video = &tidy[tidy.find("m=video").unwrap()..];
        assert!(
            video.ends_with(
                "a=recvonly\r\na=candidate:1 1 udp 2130706431 10.0.0.1 9000 typ host\r\n\
                 a=end-of-candidates\r\n"
            ),
            "every bundled section lists the candidates: {tidy}"
        );
        assert_eq!(tidy.matches("a=candidate:").count(), 2, "{tidy}");
        assert_eq!(tidy_answer(&tidy), tidy, "tidying twice changes nothing");
    }

    #[test]
    fn a_published_track_is_forwarded_to_a_subscriber_for_a_minute() {
        let mut rig = Rig::new();
        let windows = flow_windows(&mut rig, 60);
        assert!(rig.source.is_some(), "alice's track opened at rtcd");
        let source = rig.source.as_ref().unwrap();
        assert_eq!((source.kind, source.ssrc), (MediaKind::Video, 0xA0A0));
        assert!(!source.mid.is_empty());
        assert!(windows.len() >= 55, "{windows:?}");
        assert!(
            windows.iter().all(|&n| n >= 25),
            "bob received in every 1 s window (33 packets/s sent): {windows:?}"
        );
        let (_, first) = &rig.bob.received[0];
        assert_eq!(first.header.ssrc, rig.slot.ssrc);
        assert_eq!(first.header.payload_type, rig.vp8.payload_type);
    }

    /// Every packet rtcd sends a subscriber names the section it belongs to (the mid header
    /// extension, where the section negotiated it): a client that gets a packet before it has
    /// rtcd's answer routes it by that, not by guessing from the payload type.
    #[test]
    fn forwarded_packets_carry_the_mid_of_their_section() {
        let mut rig = Rig::new();
        flow_windows(&mut rig, 3);
        let id = rig
            .slot
            .extensions
            .iter()
            .find(|e| e.uri == MID_URI)
            .expect("the mid extension negotiated in bob's section")
            .id;
        assert!(rig.bob.received.len() > 50, "{}", rig.bob.received.len());
        for (_, p) in &rig.bob.received {
            assert_eq!(
                p.header.get_extension(id).as_deref(),
                Some(rig.slot.mid.as_bytes()),
                "{:?}",
                p.header
            );
        }
    }

    /// The sequence numbers rtcd NACKed to a client, in `feedback` it received.
    fn nacked(feedback: &[Box<dyn rtcp::Packet>]) -> Vec<u16> {
        use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        feedback
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            .flat_map(|n| n.nacks.iter().flat_map(|pair| pair.packet_list()))
            .collect()
    }

    /// Alice skips her next packet (a gap at rtcd); rtcd must ask her for it within a second.
    fn assert_the_next_gap_is_nacked(rig: &mut Rig) {
        let lost = rig.seq;
        rig.seq = rig.seq.wrapping_add(1);
        let before = rig.alice.feedback.len();
        rig.run(200, |_| {});
        let asked = nacked(&rig.alice.feedback[before..]);
        assert!(
            asked.contains(&lost),
            "alice was asked for {lost}: {asked:?}"
        );
    }

    #[test]
    fn a_packet_the_publisher_lost_is_nacked_even_across_a_renegotiation() {
        let mut rig = Rig::new();
        rig.run(1000, |_| {});
        assert_the_next_gap_is_nacked(&mut rig);
        // A gap right at a renegotiation: rtc binds the stream again on the next packet, which
        // used to start a new receive log after the gap.
        let now = rig.now;
        rig.alice.negotiate(&mut rig.alice_s, now);
        assert_the_next_gap_is_nacked(&mut rig);
    }

    #[test]
    fn a_lost_packet_is_nacked_and_resent_and_keyframe_requests_travel_both_ways() {
        let mut rig = Rig::new();
        rig.run(1000, |_| {}); // 5 s: connected, flowing
        assert!(rig.bob.received.len() > 50);
        let last = rig.bob.received.last().unwrap().1.header.sequence_number;
        let lost = last.wrapping_add(3);
        rig.drop_to_bob.push(lost);
        rig.run(400, |_| {});
        assert!(
            rig.drop_to_bob.is_empty(),
            "the packet was dropped on the way"
        );
        assert!(
            rig.resent >= 1,
            "the NACK was answered from the retransmission buffer"
        );
        assert!(
            rig.bob
                .received
                .iter()
                .any(|(_, p)| p.header.sequence_number == lost),
            "bob got {lost} after all (retransmitted)"
        );
        let nacked: Vec<u16> = rig
            .bob_events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Nack { slot, lost } if *slot == rig.slot.id => Some(lost.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            nacked.contains(&lost),
            "bob's NACK for {lost} surfaced: {nacked:?}"
        );

        // rtcd asks alice for a keyframe: her client gets a PLI for her SSRC.
        let track = rig.source.as_ref().unwrap().track;
        let before = rig.alice.feedback.len();
        rig.alice_s.request_keyframe(track, 0xA0A0, rig.now);
        rig.run(10, |_| {});
        let plis = rig.alice.feedback[before..]
            .iter()
            .filter(|p| {
                p.as_any()
                    .is::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
            })
            .count();
        assert_eq!(plis, 1, "one PLI reached alice");

        // bob asks for a keyframe on his slot: the SFU hears it.
        let sender_ssrc = 1;
        let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc,
            media_ssrc: rig.slot.ssrc,
        };
        let receiver = rig.bob.pc.get_receivers().next().unwrap();
        rig.bob
            .pc
            .rtp_receiver(receiver)
            .unwrap()
            .write_rtcp(rig.now, vec![Box::new(pli)])
            .unwrap();
        rig.bob_events.clear();
        rig.run(10, |_| {});
        assert!(
            rig.bob_events
                .iter()
                .any(|e| matches!(e, PeerEvent::KeyframeRequested(s) if *s == rig.slot.id)),
            "bob's PLI surfaced for his slot"
        );
    }

    /// Without `a=rtcp-rsize` (rtc never answers it) a client sends its feedback in compound
    /// packets that start with a report, and Chromium's report may name another stream first,
    /// or none. rtc hands a compound to the application under the first SSRC it finds in it;
    /// each NACK and keyframe request must still reach the slot it names.
    #[test]
    fn feedback_in_a_compound_packet_reaches_the_slot_it_names() {
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtcp::receiver_report::ReceiverReport;
        use rtcp::reception_report::ReceptionReport;
        use rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
        let mut rig = Rig::new();
        rig.run(400, |_| {}); // 2 s: connected, flowing
        let ours = rig.slot.ssrc;
        let other = 0xDEAD_BEEF;
        let report = |blocks: &[u32]| -> Box<dyn rtcp::Packet> {
            Box::new(ReceiverReport {
                ssrc: 1,
                reports: blocks
                    .iter()
                    .map(|&ssrc| ReceptionReport {
                        ssrc,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        };
        let pli = |media_ssrc| -> Box<dyn rtcp::Packet> {
            Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc,
            })
        };
        let nack = |media_ssrc| -> Box<dyn rtcp::Packet> {
            Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc,
                nacks: vec![NackPair {
                    packet_id: 7,
                    lost_packets: 0,
                }],
            })
        };
        let slot = rig.slot.id;
        // What bob's compound made surface: keyframe requests and NACKs for his slot.
        let mut send = |packets: Vec<Box<dyn rtcp::Packet>>| -> (usize, usize) {
            let receiver = rig.bob.pc.get_receivers().next().unwrap();
            rig.bob
                .pc
                .rtp_receiver(receiver)
                .unwrap()
                .write_rtcp(rig.now, packets)
                .unwrap();
            rig.bob_events.clear();
            rig.run(10, |_| {});
            let keyframes = rig
                .bob_events
                .iter()
                .filter(|e| matches!(e, PeerEvent::KeyframeRequested(s) if *s == slot))
                .count();
            let nacks = rig
                .bob_events
                .iter()
                .filter(|e| matches!(e, PeerEvent::Nack { slot: s, .. } if *s == slot))
                .count();
            (keyframes, nacks)
        };
        // The report's first block is about another stream, the feedback about ours.
        assert_eq!(send(vec![report(&[other, ours]), pli(ours)]), (1, 0));
        assert_eq!(send(vec![report(&[other, ours]), nack(ours)]), (0, 1));
        // A report with no blocks at all first.
        assert_eq!(send(vec![report(&[]), pli(ours), nack(ours)]), (1, 1));
        // The report names our slot first, the feedback another stream: nothing for ours.
        assert_eq!(send(vec![report(&[ours]), pli(other), nack(other)]), (0, 0));
        // Plain feedback, as before.
        assert_eq!(send(vec![pli(ours)]), (1, 0));
    }

    #[test]
    fn a_nacked_packet_is_resent_as_rtx_and_the_client_repairs_its_stream_with_it() {
        let mut rig = Rig::new();
        rig.rtx = true;
        let (ssrc, rtx_ssrc) = (
            rig.slot.ssrc,
            rig.slot.rtx_ssrc.expect("a video slot with RTX"),
        );
        assert_ne!(ssrc, rtx_ssrc);
        let rtx_pt = rig.vp8.rtx_payload_type.expect("RTX negotiated for VP8");
        let answer = rig.bob_s.pc.local_description().unwrap().sdp;
        assert!(
            answer.contains(&format!("a=ssrc-group:FID {ssrc} {rtx_ssrc}\r\n")),
            "{answer}"
        );
        assert!(answer.contains(&format!("a=ssrc:{rtx_ssrc} ")), "{answer}");

        rig.run(1000, |_| {}); // 5 s: connected, flowing
        let last = rig.bob.received.last().unwrap().1.header.sequence_number;
        let lost = last.wrapping_add(3);
        rig.drop_to_bob.push(lost);
        rig.run(400, |_| {});
        assert!(
            rig.drop_to_bob.is_empty(),
            "the packet was dropped on the way"
        );
        assert!(rig.resent_rtx >= 1, "the NACK was answered with RTX");
        assert_eq!(rig.resent, rig.resent_rtx, "and only with RTX");

        // On the wire: the retransmission went out on the RTX SSRC with the RTX payload type.
        let rtx_sent: Vec<_> = rig
            .wire_to_bob
            .iter()
            .filter(|(s, ..)| *s == rtx_ssrc)
            .collect();
        assert!(!rtx_sent.is_empty(), "an RTX datagram reached bob");
        assert!(
            rtx_sent.iter().all(|(_, pt, _)| *pt == rtx_pt),
            "{rtx_sent:?}"
        );
        assert!(
            rig.wire_to_bob
                .iter()
                .all(|(s, ..)| *s == ssrc || *s == rtx_ssrc),
            "nothing else on other SSRCs"
        );

        // At bob: rtc took it as RTX of the slot (FID group of the answer) and gave the original
        // back: the slot's SSRC, VP8, the lost sequence number, the payload without the 2-byte
        // original sequence number in front. More than once: rtc's NACK generator logs arrivals
        // by the SSRC on the wire, so a packet repaired through RTX stays "lost" to it and bob
        // NACKs it again at every interval (a limit of the rtc client, not of the answer). Once
        // the packet has left the buffer, such a NACK gets an empty RTX packet (`Fill::osn`),
        // restored as an empty packet numbered `lost`.
        let (repaired, emptied): (Vec<_>, Vec<_>) = rig
            .bob
            .received
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.header.sequence_number == lost)
            .partition(|p| !p.payload.is_empty());
        assert_eq!(emptied.len(), rig.rtx_fills);
        assert_eq!(
            repaired.len() + emptied.len(),
            rtx_sent.len(),
            "every RTX packet repaired {lost}"
        );
        assert_eq!(repaired.len(), rig.resent_rtx);
        for p in repaired {
            assert_eq!(
                (p.header.ssrc, p.header.payload_type),
                (ssrc, rig.vp8.payload_type)
            );
            assert_eq!(p.payload.len(), 7, "{:?}", p.payload);
            assert_eq!((p.payload[0], &p.payload[4..]), (0x10, &[9u8, 9, 9][..]));
        }
        assert!(
            rig.bob.received.iter().all(|(_, p)| p.header.ssrc == ssrc),
            "bob's application never sees the RTX SSRC"
        );
    }

    #[test]
    fn a_packet_that_cannot_be_resent_is_closed_by_an_empty_rtx_packet_never_on_its_number() {
        let mut rig = Rig::new();
        rig.rtx = true;
        rig.run(600, |_| {}); // 3 s: connected, flowing
        let last = rig.bob.received.last().unwrap().1.header.sequence_number;
        let lost = last.wrapping_add(1);
        rig.drop_to_bob.push(lost);
        while !rig.drop_to_bob.is_empty() {
            rig.run(1, |_| {});
        }
        // The track ends right after it went out (lost): bob's NACK finds nothing to resend.
        let source = rig.source.as_ref().unwrap().ssrc;
        rig.down.as_mut().unwrap().switch_source(source);
        rig.run(400, |_| {});
        assert!(
            rig.rtx_fills >= 1,
            "the NACK was answered with an empty RTX packet"
        );
        assert_eq!(rig.resent, 0, "nothing to resend");
        // The media SSRC carried `lost` once (the packet dropped on the way), never again.
        let ssrc = rig.slot.ssrc;
        let on_media = rig
            .wire_to_bob
            .iter()
            .filter(|(s, _, seq)| *s == ssrc && *seq == lost)
            .count();
        assert_eq!(on_media, 1);
        // Bob's stack restored the RTX packet as an empty packet numbered `lost`: the hole is
        // closed for a receiver that waits for every number.
        let closed: Vec<_> = rig
            .bob
            .received
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.header.sequence_number == lost)
            .collect();
        assert!(!closed.is_empty(), "bob got {lost}");
        assert!(
            closed
                .iter()
                .all(|p| p.header.ssrc == ssrc && p.payload.is_empty())
        );
    }

    #[test]
    fn an_ice_restart_from_a_new_address_keeps_the_subscription_flowing() {
        let mut rig = Rig::new();
        let before = flow_windows(&mut rig, 10);
        assert!(before.iter().all(|&n| n >= 25), "{before:?}");
        let old_ufrag = rig.bob_s.pc.local_description().unwrap().sdp.clone();

        // Bob's network changes: a new address, and his client restarts ICE with a new offer.
        rig.bob.move_and_restart_ice("10.9.7.7:7000");
        let now = rig.now;
        let answer = rig.bob.negotiate(&mut rig.bob_s, now);
        assert!(
            !old_ufrag.contains(&format!("a=ice-ufrag:{}", answer.ufrag)),
            "new ufrag"
        );
        assert_eq!(
            answer.slots,
            vec![rig.slot.id],
            "the subscription's slot survives"
        );
        assert_eq!(rig.bob_s.slots().next().unwrap().ssrc, rig.slot.ssrc);

        let after = flow_windows(&mut rig, 20);
        let settled = &after[3..];
        assert!(
            settled.iter().all(|&n| n >= 25),
            "bob keeps receiving at his new address: {after:?}"
        );
        assert!(
            !rig.bob_events
                .iter()
                .any(|e| matches!(e, PeerEvent::Failed)),
            "the session never failed"
        );
    }

    /// A subscriber restarting ICE from the same address loses nothing rtcd sends it while its
    /// new pair is being checked: rtc drops its selected pair at once, so rtcd holds the media
    /// and sends it when a pair is selected again, with no NACK needed (aiortc NACKs a loss
    /// once and, receiving several videos, cannot route the RTX answer).
    #[test]
    fn a_subscriber_restarting_ice_loses_nothing_sent_before_its_new_pair_is_up() {
        let mut rig = Rig::new();
        rig.run(400, |_| {});
        let ssrc = rig.slot.ssrc;
        let before = rig.wire_to_bob.iter().filter(|w| w.0 == ssrc).count();
        assert!(before > 40, "bob receives before the restart: {before}");
        rig.bob.pc.restart_ice();
        let now = rig.now;
        rig.bob.negotiate(&mut rig.bob_s, now);
        rig.run(400, |_| {});
        let seqs: Vec<u16> = rig
            .wire_to_bob
            .iter()
            .filter(|w| w.0 == ssrc)
            .map(|w| w.2)
            .collect();
        assert!(seqs.len() > before + 40, "bob receives after the restart");
        let gaps: Vec<(u16, u16)> = seqs
            .windows(2)
            .filter(|w| w[1] != w[0].wrapping_add(1))
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            gaps.is_empty(),
            "sent to bob with gaps around the restart: {gaps:?}"
        );
        assert_eq!(rig.resent, 0, "nothing had to be repaired");
    }

    /// A publisher restarting ICE goes on sending on its old pair until the new one is
    /// checked (browsers do, as RFC 8445 section 9 wants); rtc drops whatever is not STUN
    /// while it has no selected pair, so rtcd holds it and hands it over once a pair is
    /// selected: nothing alice sent meanwhile is lost (before: 0.26-0.55 s of a publisher's
    /// media through a TURN relay, at every restart).
    #[test]
    fn a_publisher_restarting_ice_loses_nothing_it_sends_before_its_new_pair_is_up() {
        let mut rig = Rig::new();
        rig.run(400, |_| {});
        assert!(
            rig.from_alice.len() > 40,
            "alice publishes before the restart"
        );
        // Alice's next packets, as she sends them on her old pair while she restarts: written
        // (and encrypted) before her own peer connection drops its pair, delivered to rtcd
        // after rtcd applied her restart.
        let mut withheld = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..10 {
            rig.now += Duration::from_millis(30);
            let now = rig.now;
            rig.alice.send_video(rig.seq, now);
            sent.push(rig.seq);
            rig.seq = rig.seq.wrapping_add(1);
            while let Some(msg) = rig.alice.pc.poll_write() {
                withheld.push(msg.message);
            }
        }
        assert!(
            withheld.len() >= 10,
            "alice wrote her packets: {}",
            withheld.len()
        );
        rig.alice.pc.restart_ice();
        let now = rig.now;
        rig.alice.negotiate(&mut rig.alice_s, now);
        let server_addr: SocketAddrV = SERVER.parse().unwrap();
        for data in withheld {
            rig.now += Duration::from_millis(5);
            let now = rig.now;
            rig.alice_s.handle_datagram(
                Transport {
                    local: server_addr,
                    peer: rig.alice.addr,
                    protocol: Protocol::Udp,
                },
                &data,
                now,
            );
        }
        rig.run(400, |_| {});
        let missing: Vec<u16> = sent
            .iter()
            .copied()
            .filter(|s| !rig.from_alice.contains(s))
            .collect();
        assert!(
            missing.is_empty(),
            "sent during the restart and lost: {missing:?} of {sent:?}"
        );
        let after = rig.from_alice.iter().filter(|&&s| s > sent[9]).count();
        assert!(after > 40, "alice publishes after the restart: {after}");
    }

    /// A client restarting ICE from the same address (a browser's `restartIce()`, or an
    /// independent stack told to): its first connectivity check with the new credentials, right
    /// after the answer, is answered, so media is back within one round trip.
    #[test]
    fn the_first_check_after_an_ice_restart_is_answered() {
        let mut rig = Rig::new();
        rig.run(400, |_| {});
        rig.bob.pc.restart_ice();
        let now = rig.now;
        let answer = rig.bob.negotiate(&mut rig.bob_s, now);
        // (transaction id, when) of bob's binding requests with his new credentials, and the
        // transaction ids of rtcd's success responses.
        let mut requests: Vec<([u8; 12], Instant)> = Vec::new();
        let mut answered: Vec<[u8; 12]> = Vec::new();
        let stun = |d: &[u8]| -> Option<(u16, [u8; 12])> {
            (d.len() >= 20 && d[0] < 4).then(|| {
                let mut id = [0u8; 12];
                id.copy_from_slice(&d[8..20]);
                (u16::from_be_bytes([d[0], d[1]]), id)
            })
        };
        for _ in 0..200 {
            rig.now += Duration::from_millis(5);
            let now = rig.now;
            tick(&mut rig.bob, &mut rig.bob_s, now);
            route(
                &mut rig.bob,
                &mut rig.bob_s,
                now,
                &mut |d| {
                    if let Some((0x0101, id)) = stun(d) {
                        answered.push(id);
                    }
                    false
                },
                &mut |d| {
                    if let Some((0x0001, id)) = stun(d)
                        && String::from_utf8_lossy(d).contains(&answer.ufrag)
                    {
                        requests.push((id, now));
                    }
                    false
                },
            );
            while rig.bob_s.poll_event().is_some() {}
        }
        let (first, sent_at) = *requests
            .first()
            .expect("bob checks with his new credentials");
        assert!(
            answered.contains(&first),
            "the first check (sent {:?} after the answer) went unanswered; {} checks, {} answers",
            sent_at - now,
            requests.len(),
            answered.len()
        );
    }

    /// Any one DTLS datagram of the handshake lost, either way, with rtcd's side driven only
    /// at the deadlines it asks for (as the worker drives it): both ends still connect, because
    /// rtc retransmits its flights. (Under 3 % loss a webrtc-rs client sometimes stayed
    /// `connecting` for 30 s in the e2e tests; this shows rtcd's side is not why.)
    #[test]
    fn dtls_handshake_survives_the_loss_of_any_one_flight() {
        let identity = Identity::generate().unwrap();
        let mut failures = Vec::new();
        for to_client in [true, false] {
            for k in 1..=8usize {
                let t0 = Instant::now();
                let mut now = t0;
                let mut bob = Client::new("10.9.0.3:6000", now);
                let mut server = Peer::new(&identity, &settings(), now).unwrap();
                bob.receive(RtpCodecKind::Video);
                bob.negotiate(&mut server, now);
                // The k-th DTLS datagram (RFC 7983: first byte 20-63) the chosen way is lost.
                let seen = std::cell::Cell::new(0usize);
                let lose = |way: bool, d: &[u8]| {
                    if way && d.first().is_some_and(|b| (20..=63).contains(b)) {
                        seen.set(seen.get() + 1);
                        return seen.get() == k;
                    }
                    false
                };
                let mut server_connected = false;
                let mut server_deadline = server.poll_timeout();
                for _ in 0..(10_000 / 5) {
                    now += Duration::from_millis(5);
                    bob.pc.handle_timeout(now).unwrap();
                    // As the worker does: only at the deadline rtc asked for.
                    if server_deadline.is_some_and(|d| d <= now) {
                        server.handle_timeout(now);
                    }
                    route(
                        &mut bob,
                        &mut server,
                        now,
                        &mut |d| lose(to_client, d),
                        &mut |d| lose(!to_client, d),
                    );
                    while let Some(e) = server.poll_event() {
                        server_connected |= matches!(e, PeerEvent::Connected);
                    }
                    server_deadline = server.poll_timeout();
                    if bob.connected && server_connected {
                        break;
                    }
                }
                let connected = (bob.connected, server_connected);
                let seen = seen.get();
                if connected != (true, true) {
                    failures.push((to_client, k, connected, seen));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "(to client, k-th DTLS datagram lost, (client, server) connected, DTLS datagrams \
             seen): {failures:?}"
        );
    }

    /// Bob (receiving video) negotiates with his offer edited by `edit`, and both sides run for
    /// up to 10 s: (the answer, Bob connected, rtcd connected).
    fn handshake_with(edit: impl Fn(&str) -> String) -> Result<(Answer, bool, bool), EngineError> {
        let identity = Identity::generate().unwrap();
        let mut now = Instant::now();
        let mut bob = Client::new("10.9.0.3:6000", now);
        let mut server = Peer::new(&identity, &settings(), now).unwrap();
        bob.receive(RtpCodecKind::Video);
        let offer = bob.pc.create_offer(None).unwrap();
        bob.pc.set_local_description(now, offer.clone()).unwrap();
        let answer = server.apply_offer(&edit(&offer.sdp), now)?;
        bob.pc
            .set_remote_description(
                now,
                RTCSessionDescription::answer(answer.sdp.clone()).unwrap(),
            )
            .unwrap();
        let mut server_connected = false;
        for _ in 0..(10_000 / 5) {
            now += Duration::from_millis(5);
            // A refused handshake leaves Bob's side in error: that is not the test's concern.
            let _ = bob.pc.handle_timeout(now);
            if server.poll_timeout().is_some_and(|d| d <= now) {
                server.handle_timeout(now);
            }
            route(&mut bob, &mut server, now, &mut |_| false, &mut |_| false);
            while let Some(e) = server.poll_event() {
                server_connected |= matches!(e, PeerEvent::Connected);
            }
            if bob.connected && server_connected {
                break;
            }
        }
        Ok((answer, bob.connected, server_connected))
    }

    /// rtcd runs DTLS itself (`dtls`): as the client where the offer leaves the choice to it
    /// (`actpass`, what every browser offers), as rtc did; as the server where the client wants
    /// to be the client (`active`); an offer that wants rtcd to be the client (`passive`) breaks
    /// RFC 5763 and is refused.
    #[test]
    fn the_dtls_role_follows_the_offer() {
        let (answer, bob, rtcd) = handshake_with(str::to_owned).unwrap();
        assert!(answer.sdp.contains("a=setup:active"), "{}", answer.sdp);
        assert_eq!((bob, rtcd), (true, true), "rtcd as the DTLS client");
        let (answer, bob, rtcd) =
            handshake_with(|o| o.replace("a=setup:actpass", "a=setup:active")).unwrap();
        assert!(answer.sdp.contains("a=setup:passive"), "{}", answer.sdp);
        assert_eq!((bob, rtcd), (true, true), "rtcd as the DTLS server");
        let refused = handshake_with(|o| o.replace("a=setup:actpass", "a=setup:passive"));
        assert!(
            matches!(refused, Err(EngineError::InvalidSdp(ref why)) if why.contains("RFC 5763")),
            "{:?}",
            refused.map(|(_, b, r)| (b, r))
        );
    }

    /// The client's certificate must be the one its offer's fingerprint names: a client whose
    /// offer names another is never connected and receives nothing (in either DTLS role), and
    /// an offer without a SHA-256 fingerprint is refused.
    #[test]
    fn a_certificate_that_does_not_match_the_offers_fingerprint_is_refused() {
        let forge = |offer: &str| {
            offer
                .lines()
                .map(|l| match l.strip_prefix("a=fingerprint:sha-256 ") {
                    // Another certificate's: the first byte changed.
                    Some(value) => {
                        let first = u8::from_str_radix(&value[..2], 16).unwrap() ^ 0xff;
                        format!("a=fingerprint:sha-256 {first:02X}{}", &value[2..])
                    }
                    None => l.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\r\n")
                + "\r\n"
        };
        let (_, _, rtcd) = handshake_with(forge).unwrap();
        assert!(
            !rtcd,
            "rtcd (the DTLS client) accepted a forged certificate"
        );
        let (_, _, rtcd) =
            handshake_with(|o| forge(o).replace("a=setup:actpass", "a=setup:active")).unwrap();
        assert!(
            !rtcd,
            "rtcd (the DTLS server) accepted a forged certificate"
        );
        let missing = handshake_with(|o| {
            o.lines()
                .filter(|l| !l.starts_with("a=fingerprint:"))
                .collect::<Vec<_>>()
                .join("\r\n")
                + "\r\n"
        });
        assert!(
            matches!(missing, Err(EngineError::InvalidSdp(_))),
            "{:?}",
            missing.map(|(_, b, r)| (b, r))
        );
    }

    /// A Binding request from `client` as an aggressively nominating controlling agent would
    /// send it (USE-CANDIDATE on its first check), with the credentials of the latest
    /// offer / answer; returns it and its transaction id.
    fn nominating_check(client: &Client, answer: &str) -> (BytesMut, [u8; 12]) {
        use rtc::ice::attributes::control::AttrControlling;
        use rtc::ice::attributes::priority::PriorityAttr;
        use rtc::ice::attributes::use_candidate::UseCandidateAttr;
        use rtc::stun::attributes::ATTR_USERNAME;
        use rtc::stun::fingerprint::FINGERPRINT;
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
        use rtc::stun::textattrs::Username;
        let value = |sdp: &str, key: &str| {
            sdp.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .trim()
                .to_owned()
        };
        let ours = client.pc.local_description().unwrap().sdp;
        let username = format!(
            "{}:{}",
            value(answer, "a=ice-ufrag:"),
            value(&ours, "a=ice-ufrag:")
        );
        let provider = rtc::crypto::default_provider().unwrap();
        let mut m = Message::new();
        m.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(ATTR_USERNAME, username)),
            Box::<UseCandidateAttr>::default(),
            Box::new(AttrControlling(7)),
            Box::new(PriorityAttr(1_000)),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                value(answer, "a=ice-pwd:"),
                provider.crypto(),
            )),
            Box::new(FINGERPRINT),
        ])
        .unwrap();
        (BytesMut::from(&m.raw[..]), m.transaction_id.0)
    }

    /// rtc's controlled agent answers a nominating check on a pair it has not validated with a
    /// triggered check of its own, not with a response (see `nomination`). After an ICE restart
    /// every pair is new: the client's first check must still be answered within a round trip,
    /// not after its retransmission timer.
    #[test]
    fn a_nominating_first_check_after_an_ice_restart_is_answered_within_a_round_trip() {
        let mut rig = Rig::new();
        rig.run(400, |_| {});
        rig.bob.pc.restart_ice();
        let now = rig.now;
        let answer = rig.bob.negotiate(&mut rig.bob_s, now);
        let server: SocketAddrV = SERVER.parse().unwrap();
        let from_bob = Transport {
            local: server,
            peer: rig.bob.addr,
            protocol: Protocol::Udp,
        };
        let (check, id) = nominating_check(&rig.bob, &answer.sdp);
        rig.bob_s.handle_datagram(from_bob, &check, now);
        // One round trip: what rtcd sends reaches bob, bob's answers reach rtcd, and back.
        let mut answered = false;
        for _ in 0..2 {
            while let Some((_, data)) = rig.bob_s.poll_transmit() {
                answered |= data.len() >= 20 && data[..2] == [0x01, 0x01] && data[8..20] == id;
                rig.bob.deliver(data, now);
            }
            // Only bob's answers go back (his own new checks would hide the fault).
            while let Some(msg) = rig.bob.pc.poll_write() {
                if msg.message.len() >= 2 && msg.message[..2] == [0x01, 0x01] {
                    rig.bob_s.handle_datagram(from_bob, &msg.message, now);
                }
            }
        }
        assert!(
            answered,
            "the nominating check went unanswered for a round trip"
        );
    }

    #[test]
    fn a_publisher_restarting_ice_at_a_new_address_is_asked_for_what_was_lost() {
        let mut rig = Rig::new();
        rig.run(1000, |_| {});
        let first = rig.seq;
        rig.from_alice.clear();
        // Alice's network changes and her client restarts ICE. rtc drops the selected pair at
        // once, so what she sends until the new pair is up is lost on the way: rtcd must ask
        // for all of it. (rtc's own client then cannot resend it: its NACK responder forgets
        // its send history on the same renegotiation. A browser keeps its history.)
        rig.alice.move_and_restart_ice("10.9.7.8:7000");
        let now = rig.now;
        rig.alice.negotiate(&mut rig.alice_s, now);
        rig.run(1000, |_| {});
        let mut got = rig.from_alice.clone();
        got.sort_unstable();
        got.dedup();
        let missing: Vec<u16> = (first..rig.seq)
            .filter(|s| got.binary_search(s).is_err())
            .collect();
        let asked = nacked(&rig.alice.feedback);
        assert!(
            missing.iter().all(|s| asked.contains(s)),
            "lost in the restart: {missing:?}, NACKed: {asked:?}"
        );
    }

    #[test]
    fn a_client_that_goes_silent_fails_after_the_timeout() {
        let mut rig = Rig::new();
        rig.run(1000, |_| {});
        assert!(rig.connected.1);
        rig.bob_online = false;
        rig.bob_events.clear();
        rig.run(200 * 40, |_| {});
        let disconnected = rig
            .bob_events
            .iter()
            .position(|e| matches!(e, PeerEvent::Disconnected));
        let failed = rig
            .bob_events
            .iter()
            .position(|e| matches!(e, PeerEvent::Failed));
        assert!(
            disconnected.is_some() && failed.is_some(),
            "{:?}",
            rig.bob_events
        );
        assert!(disconnected < failed);
    }

    /// Issue 29 #14: a client whose consent checks stop reaching rtcd (delayed by a loaded
    /// client, or lost) while its media and reports still flow keeps its session: only silence
    /// ends it. (rtc alone failed it after 30 s, counting only STUN.)
    #[test]
    fn a_client_whose_checks_are_lost_but_whose_media_flows_is_not_failed() {
        // rtcd gives up after 1 + 3 s of silence here; bob's own client (rtc's defaults) only
        // after 30 s without answers to its checks, so his media and reports go on meanwhile.
        let mut quick = settings();
        quick.disconnected_timeout = Duration::from_secs(1);
        quick.failed_timeout = Duration::from_secs(3);
        let mut rig = Rig::with_settings(&quick);
        rig.run(1000, |_| {});
        assert!(rig.connected.1);
        rig.bob_checks_lost = true;
        rig.bob_events.clear();
        let received = rig.bob.received.len();
        // 15 s: almost four times rtcd's limit.
        rig.run(200 * 15, |_| {});
        assert!(
            !rig.bob_events
                .iter()
                .any(|e| matches!(e, PeerEvent::Failed)),
            "failed while bob's reports flowed: {:?}",
            rig.bob_events
        );
        assert!(rig.bob_s.is_connected());
        assert!(
            rig.bob.received.len() > received + 400,
            "media kept flowing"
        );
        // Then he falls silent altogether: failed after the limit, as before.
        rig.bob_online = false;
        rig.run(200 * 5, |_| {});
        assert!(
            rig.bob_events
                .iter()
                .any(|e| matches!(e, PeerEvent::Failed)),
            "{:?}",
            rig.bob_events
        );
    }

    /// A Chrome-like offer, cut down: what `trim_offer` must keep and drop.
    const BROWSER_OFFER: &str = "v=0\r\n\
o=- 1 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1 2 3\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:4/recvonly urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 102 103 106 107 127 125 45 46 116 117\r\n\
a=mid:1\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\n\
a=rtcp-fb:96 transport-cc\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=rtpmap:98 VP9/90000\r\n\
a=rtcp-fb:98 nack\r\n\
a=fmtp:98 profile-id=0\r\n\
a=rtpmap:99 rtx/90000\r\n\
a=fmtp:99 apt=98\r\n\
a=rtpmap:100 VP9/90000\r\n\
a=fmtp:100 profile-id=2\r\n\
a=rtpmap:101 rtx/90000\r\n\
a=fmtp:101 apt=100\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\n\
a=fmtp:103 apt=102\r\n\
a=rtpmap:106 H264/90000\r\n\
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42E01F\r\n\
a=rtpmap:107 rtx/90000\r\n\
a=fmtp:107 apt=106\r\n\
a=rtpmap:127 H264/90000\r\n\
a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
a=rtpmap:125 rtx/90000\r\n\
a=fmtp:125 apt=127\r\n\
a=rtpmap:45 AV1/90000\r\n\
a=fmtp:45 level-idx=5;profile=0;tier=0\r\n\
a=rtpmap:46 rtx/90000\r\n\
a=fmtp:46 apt=45\r\n\
a=rtpmap:116 red/90000\r\n\
a=rtpmap:117 rtx/90000\r\n\
a=fmtp:117 apt=116\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 49\r\n\
a=mid:2\r\n\
a=rtpmap:49 H265/90000\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
a=mid:3\r\n\
a=sctp-port:5000\r\n";

    #[test]
    fn offers_reach_rtc_with_only_the_codecs_and_feedback_rtcd_can_answer() {
        let trimmed = trim_offer(BROWSER_OFFER).expect("something to trim");
        let lines: Vec<&str> = trimmed.lines().collect();
        assert!(
            lines.contains(&"m=audio 9 UDP/TLS/RTP/SAVPF 111"),
            "{trimmed}"
        );
        assert!(
            lines.contains(&"m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 102 103 106 107 45 46"),
            "VP9 profile 2, H.264 main, RED and their RTX are gone, the order is the offer's: \
             {trimmed}"
        );
        for gone in [
            "a=rtpmap:63 red/48000/2",
            "a=fmtp:63 111/111",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:110 telephone-event/48000",
            "a=fmtp:100 profile-id=2",
            "a=rtpmap:127 H264/90000",
            "a=fmtp:117 apt=116",
            "a=rtcp-fb:96 goog-remb",
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=extmap:4/recvonly urn:ietf:params:rtp-hdrext:sdes:mid",
        ] {
            assert!(!lines.contains(&gone), "{gone} dropped: {trimmed}");
        }
        for kept in [
            "a=rtcp-fb:111 transport-cc",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtcp-fb:96 nack pli",
            "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42E01F",
            "a=fmtp:45 level-idx=5;profile=0;tier=0",
            "a=fmtp:46 apt=45",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=recvonly",
            // Nothing of ours would remain: left for rtc to reject, as before.
            "m=video 9 UDP/TLS/RTP/SAVPF 49",
            "a=rtpmap:49 H265/90000",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "a=sctp-port:5000",
        ] {
            assert!(lines.contains(&kept), "{kept} kept: {trimmed}");
        }
        assert!(trimmed.ends_with("\r\n") && !trimmed.replace("\r\n", "").contains('\n'));
        assert_eq!(trim_offer(&trimmed), None, "trimming twice changes nothing");
    }

    #[test]
    fn the_h264_and_generic_fmtp_rules_are_rtcs() {
        let ours = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        assert!(fmtp_matches(
            "H264",
            ours,
            "profile-level-id=42E034;packetization-mode=1"
        ));
        assert!(!fmtp_matches(
            "H264",
            ours,
            "profile-level-id=42e01f;packetization-mode=0"
        ));
        assert!(
            !fmtp_matches("H264", ours, "profile-level-id=42e01f"),
            "mode required"
        );
        assert!(!fmtp_matches(
            "H264",
            ours,
            "packetization-mode=1;profile-level-id=42001f"
        ));
        assert!(!fmtp_matches(
            "H264",
            ours,
            "packetization-mode=1;profile-level-id=42e01"
        ));
        assert!(
            fmtp_matches("VP9", "profile-id=0", ""),
            "Firefox: no profile-id"
        );
        assert!(!fmtp_matches("VP9", "profile-id=0", "profile-id=2"));
        assert!(fmtp_matches(
            "AV1",
            "profile-id=0",
            "level-idx=5;profile=0;tier=0"
        ));
    }

    /// What `trim_offer` removes could not have been in the answer: a real browser's offer,
    /// applied trimmed and as given, is answered alike (the lines that differ between any two
    /// peers aside: ICE credentials, session id, SSRCs and stream ids).
    #[test]
    fn trimming_a_browser_offer_leaves_the_answer_unchanged() {
        let offer = include_str!("../../../tests/fixtures/chromium-offer.sdp");
        let identity = Identity::generate().unwrap();
        let now = Instant::now();
        let answer_to = |trim: bool| {
            let mut peer = Peer::new(&identity, &settings(), now).unwrap();
            if trim {
                peer.set_offer(offer, now).unwrap();
            } else {
                peer.set_offer_as_given(offer, now).unwrap();
            }
            let slots: Vec<SlotId> = peer.slots().map(|s| s.id).collect();
            for slot in slots {
                peer.set_slot_sending(slot, true);
            }
            let sdp = peer.answer(now).unwrap().sdp;
            // Per section, the lines as a sorted list: rtc writes extmap lines in hash order.
            let mut sections: Vec<Vec<String>> = vec![Vec::new()];
            for line in sdp.lines().filter(|l| {
                !["o=", "a=ice-ufrag:", "a=ice-pwd:", "a=ssrc", "a=msid:"]
                    .iter()
                    .any(|p| l.starts_with(p))
            }) {
                if line.starts_with("m=") {
                    sections.push(Vec::new());
                }
                sections.last_mut().unwrap().push(line.to_owned());
            }
            sections.iter_mut().for_each(|s| s.sort());
            sections.concat()
        };
        assert!(trim_offer(offer).is_some(), "the fixture has lines to trim");
        let (trimmed, given) = (answer_to(true), answer_to(false));
        assert_eq!(trimmed, given);
        // The answer is about something: audio and video codecs, feedback and extensions.
        for line in [
            "a=rtcp-fb:96 nack pli",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        ] {
            assert!(trimmed.iter().any(|l| l == line), "{line} in {trimmed:#?}");
        }
    }

    /// A simulcast camera's layers, low to high: (rid, SSRC).
    const LAYERS: [(&str, u32); 3] = [("q", 0x5101), ("h", 0x5102), ("f", 0x5103)];

    /// A publisher of [`LAYERS`] and its rtcd peer, connected.
    struct Simulcast {
        client: Client,
        server: Peer,
        ids: SimulcastIds,
        now: Instant,
        seq: u16,
        events: Vec<PeerEvent>,
        /// rtcd's last answer.
        answer: String,
    }

    impl Simulcast {
        fn connected() -> Self {
            let identity = Identity::generate().unwrap();
            let now = Instant::now();
            let mut client = Client::simulcast("10.9.0.2:6000", now);
            let server = Peer::new(&identity, &settings(), now).unwrap();
            client.publish_simulcast(&LAYERS);
            let mut call = Self {
                client,
                server,
                ids: SimulcastIds {
                    mid_id: 0,
                    rid_id: 0,
                    rrid_id: 0,
                    mid: String::new(),
                    rtx_pt: 0,
                },
                now,
                seq: 0,
                events: Vec::new(),
                answer: String::new(),
            };
            call.negotiate();
            for _ in 0..400 {
                call.step();
                if call.client.connected && call.server.is_connected() {
                    return call;
                }
            }
            panic!("the simulcast publisher did not connect");
        }

        fn negotiate(&mut self) {
            let offer = self.client.pc.create_offer(None).unwrap();
            self.client
                .pc
                .set_local_description(self.now, offer.clone())
                .unwrap();
            let answer = self.server.apply_offer(&offer.sdp, self.now).unwrap();
            self.client
                .pc
                .set_remote_description(
                    self.now,
                    RTCSessionDescription::answer(answer.sdp.clone()).unwrap(),
                )
                .unwrap();
            self.ids = SimulcastIds::of(&offer.sdp);
            self.answer = answer.sdp;
        }

        fn step(&mut self) {
            self.now += Duration::from_millis(5);
            tick(&mut self.client, &mut self.server, self.now);
            route(
                &mut self.client,
                &mut self.server,
                self.now,
                &mut |_| false,
                &mut |_| false,
            );
            while let Some(ev) = self.server.poll_event() {
                self.events.push(ev);
            }
        }

        /// `rounds` packets of every layer, 30 ms apart, MID and RID stamped or not.
        fn send(&mut self, rounds: u16, stamp: bool) {
            for _ in 0..rounds {
                for (rid, ssrc) in LAYERS {
                    let ids = stamp.then_some(&self.ids);
                    self.client.send_layer(ssrc, rid, self.seq, ids, self.now);
                }
                self.seq = self.seq.wrapping_add(1);
                for _ in 0..6 {
                    self.step();
                }
            }
        }

        /// Packets rtcd delivered per layer SSRC since the last call, and the tracks they
        /// were delivered as.
        fn delivered(&mut self) -> (HashMap<u32, usize>, Vec<TrackKey>) {
            let mut per_ssrc = HashMap::new();
            let mut tracks = Vec::new();
            for ev in self.events.drain(..) {
                if let PeerEvent::Rtp { track, packet } = ev {
                    *per_ssrc.entry(packet.ssrc).or_default() += 1;
                    if !tracks.contains(&track) {
                        tracks.push(track);
                    }
                }
            }
            (per_ssrc, tracks)
        }
    }

    /// Chromium's simulcast: three layers in one section, known by their rids only. They open
    /// one track (the first layer to arrive) and two layers of it, each with its SSRC, and
    /// every packet of every layer reaches the owner as that track's.
    #[test]
    fn three_simulcast_layers_open_as_one_track() {
        let mut call = Simulcast::connected();
        call.send(10, true);
        let opened: Vec<&OpenedTrack> = call
            .events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::TrackOpened(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), 1, "one track: {:?}", call.events.len());
        let track = opened[0].clone();
        let first = track.rid.clone().expect("opened by a layer");
        assert!(LAYERS.contains(&(first.as_str(), track.ssrc)), "{track:?}");
        let mut layers: Vec<(String, u32)> = call
            .events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::LayerOpened(l) => {
                    assert_eq!(l.track, track.track);
                    Some((l.rid.clone(), l.ssrc))
                }
                _ => None,
            })
            .collect();
        layers.push((first, track.ssrc));
        layers.sort_by_key(|(_, ssrc)| *ssrc);
        let expected: Vec<(String, u32)> =
            LAYERS.iter().map(|(r, s)| ((*r).to_owned(), *s)).collect();
        assert_eq!(layers, expected, "each layer once, with its SSRC");
        let (per_ssrc, tracks) = call.delivered();
        assert_eq!(tracks, vec![track.track]);
        for (_, ssrc) in LAYERS {
            assert_eq!(
                per_ssrc.get(&ssrc),
                Some(&10),
                "layer {ssrc:#x}: {per_ssrc:?}"
            );
        }
        // Once bound, a layer's packets need no MID / RID (browsers stop sending them).
        call.send(10, false);
        let (per_ssrc, _) = call.delivered();
        for (_, ssrc) in LAYERS {
            assert_eq!(
                per_ssrc.get(&ssrc),
                Some(&10),
                "layer {ssrc:#x}: {per_ssrc:?}"
            );
        }
    }

    /// A simulcast layer's retransmissions (RTX known only by MID and repaired-rid, then by
    /// their SSRC) reach the owner as the layer's packets: its SSRC, the original sequence
    /// number and payload type (rtc alone drops them).
    #[test]
    fn a_layers_retransmissions_arrive_as_the_layers_packets() {
        let mut call = Simulcast::connected();
        call.send(10, true);
        call.delivered();
        let (rid, ssrc) = LAYERS[1];
        let ids = SimulcastIds {
            mid: call.ids.mid.clone(),
            ..call.ids
        };
        let rtx = |call: &mut Simulcast, rtx_seq: u16, seq: u16, stamp: bool| {
            call.client
                .send_layer_rtx(0x6102, rid, (rtx_seq, seq), &ids, stamp, call.now);
            call.send(1, false);
            call.events
                .drain(..)
                .filter_map(|e| match e {
                    PeerEvent::Rtp { packet, .. } if packet.sequence == seq => {
                        Some((packet.ssrc, packet.payload_type, packet.payload.len()))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(rtx(&mut call, 100, 3, true), vec![(ssrc, 96, 7)]);
        assert_eq!(rtx(&mut call, 101, 4, false), vec![(ssrc, 96, 7)]);
    }

    /// A keyframe is asked of the layer a down-track waits on, not of whichever layer opened
    /// last; an SSRC the track does not send falls back to the layer that opened it.
    #[test]
    fn a_keyframe_request_goes_to_the_layer_asked_for() {
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        let mut call = Simulcast::connected();
        call.send(5, true);
        let track = call
            .events
            .iter()
            .find_map(|e| match e {
                PeerEvent::TrackOpened(t) => Some(t.clone()),
                _ => None,
            })
            .unwrap();
        let plis = |call: &mut Simulcast, ssrc: u32| {
            call.client.feedback.clear();
            call.server.request_keyframe(track.track, ssrc, call.now);
            call.send(2, false);
            call.client
                .feedback
                .iter()
                .filter_map(|p| p.as_any().downcast_ref::<PictureLossIndication>())
                .map(|p| p.media_ssrc)
                .collect::<Vec<u32>>()
        };
        for (_, ssrc) in LAYERS {
            assert_eq!(plis(&mut call, ssrc), vec![ssrc]);
        }
        assert_eq!(plis(&mut call, 0xDEAD), vec![track.ssrc]);
    }

    /// The risk of rtc's renegotiation (it forgets each rid layer's SSRC when an answer is
    /// applied and binds it again only from a packet with MID and RID): a publisher whose
    /// layers stopped carrying them, after a renegotiation that adds a section, still gets
    /// every packet of all three layers through.
    #[test]
    fn simulcast_layers_without_mid_and_rid_survive_a_renegotiation() {
        let mut call = Simulcast::connected();
        call.send(10, true);
        call.send(10, false);
        let (_, before) = call.delivered();
        let layer_lines = |answer: &str, mid: &str| {
            let mut lines: Vec<String> = section_of(answer, mid)
                .into_iter()
                .filter(|l| l.starts_with("a=rid") || l.starts_with("a=simulcast"))
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        let mid = call.ids.mid.clone();
        let first_answer = layer_lines(&call.answer, &mid);
        assert_eq!(first_answer.len(), 4, "{first_answer:?}");
        // Twice: someone publishes (a section added), then a retransmission after it all.
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            call.client.receive(kind);
            call.negotiate();
            assert_eq!(
                layer_lines(&call.answer, &mid),
                first_answer,
                "the answer still receives the layers"
            );
            call.send(20, false);
            let opened = call
                .events
                .iter()
                .filter(|e| matches!(e, PeerEvent::TrackOpened(_) | PeerEvent::LayerOpened(_)))
                .count();
            let (per_ssrc, tracks) = call.delivered();
            assert_eq!(opened, 0, "no new track, no layer re-opened");
            assert_eq!(tracks, before, "the same track");
            for (_, ssrc) in LAYERS {
                assert_eq!(
                    per_ssrc.get(&ssrc),
                    Some(&20),
                    "layer {ssrc:#x}: {per_ssrc:?}"
                );
            }
        }
        let ids = SimulcastIds {
            mid: call.ids.mid.clone(),
            ..call.ids
        };
        call.client
            .send_layer_rtx(0x6103, "f", (7, 3), &ids, true, call.now);
        call.send(1, false);
        assert!(
            call.events.iter().any(|e| matches!(e,
                PeerEvent::Rtp { packet, .. } if packet.ssrc == LAYERS[2].1 && packet.sequence == 3)),
            "a retransmission after the renegotiations"
        );
    }

    /// A layer marked paused (`~`, dynacast) is not a change of its section: the section keeps
    /// its bindings, and rtc reads the plain list of rids.
    #[test]
    fn a_paused_simulcast_layer_is_not_a_change_of_its_section() {
        let offer = simulcast_offer();
        assert_eq!(unpause_simulcast(&offer), None);
        let applied = simulcast_signatures(&offer);
        let paused = offer.replace("a=simulcast:send q;h;f", "a=simulcast:send q;~h;~f");
        let plain = unpause_simulcast(&paused).expect("paused layers");
        assert_eq!(plain, offer);
        assert_eq!(simulcast_signatures(&plain), applied);
        assert!(keep_simulcast_bindings(&plain, &applied).is_some());
    }

    /// Which offers reach rtc without a simulcast section's msid: only a section unchanged
    /// since the last applied offer (attribute order aside), never a first offer.
    #[test]
    fn only_unchanged_simulcast_sections_lose_their_msid_for_rtc() {
        let offer = simulcast_offer();
        assert_eq!(keep_simulcast_bindings(&offer, &HashMap::new()), None);
        let applied = simulcast_signatures(&offer);
        assert_eq!(applied.keys().collect::<Vec<_>>(), vec!["1"]);
        let kept = keep_simulcast_bindings(&offer, &applied).expect("unchanged: stripped");
        let camera = section_of(&kept, "1");
        assert!(
            !camera.iter().any(|l| l.starts_with("a=msid:")),
            "{camera:#?}"
        );
        assert!(camera.contains(&"a=simulcast:send q;h;f"));
        // Everything else as it was: only the camera's msid line is gone.
        let removed: Vec<&str> = offer
            .lines()
            .filter(|l| !kept.lines().any(|k| k == *l))
            .collect();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(
            section_of(&kept, "0")
                .iter()
                .any(|l| l.starts_with("a=msid:"))
        );
        // Declared SSRCs (Firefox) go too: rtc would make a track of them.
        let declared = offer.replace(
            "a=simulcast:send q;h;f\r\n",
            "a=simulcast:send q;h;f\r\na=ssrc-group:FID 1 2\r\na=ssrc:1 cname:x\r\n\
             a=ssrc:1 msid:- 2934d208-5ef2-4b55-aded-aca513f92b3c\r\n",
        );
        let kept = keep_simulcast_bindings(&declared, &applied).expect("unchanged: stripped");
        let camera = section_of(&kept, "1");
        assert!(
            !camera.iter().any(|l| l.starts_with("a=ssrc")),
            "{camera:#?}"
        );
        assert!(
            section_of(&kept, "0")
                .iter()
                .any(|l| l.starts_with("a=ssrc:"))
        );
        // Reordered attributes: still unchanged.
        let reordered = offer.replace(
            "a=rid:q send\r\na=rid:h send\r\n",
            "a=rid:h send\r\na=rid:q send\r\n",
        );
        assert_ne!(reordered, offer);
        assert!(keep_simulcast_bindings(&reordered, &applied).is_some());
        // A layer less, another track, or the section stopped: rtc must re-create the track.
        for changed in [
            offer.replace("a=simulcast:send q;h;f", "a=simulcast:send q;h"),
            offer.replace("a=msid:- 2934d208", "a=msid:- 00000000"),
            offer.replacen(
                "a=sendrecv\r\na=msid:- 2934d208",
                "a=inactive\r\na=msid:- 2934d208",
                1,
            ),
        ] {
            assert_ne!(changed, offer);
            assert_eq!(keep_simulcast_bindings(&changed, &applied), None);
        }
    }

    /// The fixture's camera section (mid 1) as Chromium offers it with three simulcast
    /// encodings: rids instead of declared SSRCs.
    fn simulcast_offer() -> String {
        let offer = include_str!("../../../tests/fixtures/chromium-offer.sdp");
        let mut out = String::new();
        let mut section = String::new();
        for line in offer.split_inclusive('\n') {
            if line.starts_with("m=") {
                section.clear();
            } else if let Some(mid) = line.strip_prefix("a=mid:") {
                section = mid.trim().to_owned();
            }
            if section == "1" && line.starts_with("a=ssrc") {
                continue;
            }
            out.push_str(line);
            if section == "1" && line.starts_with("a=mid:") {
                out.push_str("a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n");
                out.push_str("a=simulcast:send q;h;f\r\n");
            }
        }
        out
    }

    /// The lines of section `mid` of `sdp`.
    fn section_of<'a>(sdp: &'a str, mid: &str) -> Vec<&'a str> {
        let mut sections: Vec<Vec<&str>> = Vec::new();
        for line in sdp.lines() {
            if line.starts_with("m=") {
                sections.push(Vec::new());
            }
            if let Some(s) = sections.last_mut() {
                s.push(line);
            }
        }
        sections
            .into_iter()
            .find(|s| s.iter().any(|l| l.strip_prefix("a=mid:") == Some(mid)))
            .unwrap_or_default()
    }

    /// A Chromium simulcast offer gets an answer Chromium accepts: the rids received, in the
    /// offer's order, and the mid, rid and repaired-rid extensions with the offer's ids
    /// (without the rid extension Chromium rejects an answer that negotiates simulcast).
    #[test]
    fn a_simulcast_offer_is_answered_with_its_rids_and_their_header_extensions() {
        let identity = Identity::generate().unwrap();
        let now = Instant::now();
        let mut peer = Peer::new(&identity, &settings(), now).unwrap();
        let offer = simulcast_offer();
        assert!(offer.contains("a=simulcast:send q;h;f\r\n"), "{offer}");
        let answer = peer.apply_offer(&offer, now).unwrap();
        let camera = section_of(&answer.sdp, "1");
        for line in [
            "a=rid:q recv",
            "a=rid:h recv",
            "a=rid:f recv",
            "a=simulcast:recv q;h;f",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        ] {
            assert!(camera.contains(&line), "{line} in {camera:#?}");
        }
        // Audio keeps what it had: no mid extension there (rtcd registers it for video only).
        let microphone = section_of(&answer.sdp, "0");
        assert!(
            !microphone.iter().any(|l| l.contains("sdes:mid")),
            "{microphone:#?}"
        );
        // The section without simulcast answers no rids.
        let receiving = section_of(&answer.sdp, "3");
        assert!(
            !receiving
                .iter()
                .any(|l| l.starts_with("a=rid") || l.starts_with("a=simulcast"))
        );
    }

    #[test]
    fn broken_offers_and_candidates_are_clear_errors() {
        let identity = Identity::generate().unwrap();
        let now = Instant::now();
        let mut peer = Peer::new(&identity, &settings(), now).unwrap();
        assert!(matches!(
            peer.apply_offer("this is not sdp", now),
            Err(EngineError::InvalidSdp(_))
        ));
        assert!(matches!(
            peer.add_remote_candidate("candidate:garbage", Some("0".into()), None),
            Err(EngineError::InvalidCandidate(_))
        ));
    }

    #[test]
    fn a_payload_cut_after_decryption_is_what_a_second_parse_would_give() {
        use rtc::shared::marshal::{Marshal, Unmarshal};
        let mut with_extensions = rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: 7,
            timestamp: 90_000,
            ssrc: 0x1234,
            csrc: vec![1, 2],
            ..Default::default()
        };
        with_extensions
            .set_extension(1, bytes::Bytes::from_static(&[9]))
            .unwrap();
        with_extensions
            .set_extension(3, bytes::Bytes::from_static(&[1, 2, 3]))
            .unwrap();
        let plain_header = rtp::header::Header {
            version: 2,
            payload_type: 111,
            ssrc: 5,
            ..Default::default()
        };
        for header in [plain_header, with_extensions] {
            for padding in [None, Some(1u8), Some(4), Some(10)] {
                let mut header = header.clone();
                header.padding = padding.is_some();
                let mut wire = header.marshal().unwrap().to_vec();
                wire.extend_from_slice(b"payload bytes");
                if let Some(n) = padding {
                    wire.extend(std::iter::repeat_n(0, usize::from(n) - 1));
                    wire.push(n);
                }
                let wire = bytes::Bytes::from(wire);
                let parsed = rtp::Packet::unmarshal(&mut wire.clone())
                    .ok()
                    .map(|p| p.payload);
                assert_eq!(
                    rtp_payload(wire, header.padding),
                    parsed,
                    "padding {padding:?}"
                );
            }
        }
        // Padding longer than the payload, and a header longer than the packet.
        let bad = rtp::header::Header {
            version: 2,
            padding: true,
            ..Default::default()
        };
        let mut wire = bad.marshal().unwrap().to_vec();
        wire.push(200);
        assert_eq!(rtp_payload(bytes::Bytes::from(wire), bad.padding), None);
        // Twelve bytes that announce a CSRC.
        let mut short = [0x80; 12];
        short[0] = 0x81;
        assert_eq!(
            rtp_payload(bytes::Bytes::copy_from_slice(&short), false),
            None
        );
    }
}

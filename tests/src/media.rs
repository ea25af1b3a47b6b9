//! Media test harness (the in-process rtcd is [`crate::daemon::TestRtcd`]):
//! [`Participant`], a real webrtc-rs peer (the async `webrtc` 0.21 crate over the sans-IO `rtc`
//! core) that joins through the real gRPC service, publishes synthetic Opus / VP8 / H.264 RTP
//! whose payload names the sender, and records what it receives.
//!
//! Participants offer only from a stable state and ignore an rtcd offer that arrives while their
//! own is outstanding (they never roll back a local offer, so they cannot be the polite peer; the
//! glare test provokes the collision deliberately and checks rtcd's refusal).
//!
//! webrtc 0.21 facts this module rests on (sources of `webrtc` 0.21.1 / `rtc` 0.21.1):
//! * inbound RTCP stops at the interceptor chain's end unless an interceptor marks it for the
//!   application (`TrackRemoteEvent::OnRtcpPacket` / `TrackLocalEvent::OnRtcpPacket` never fire on
//!   a default chain), so an interceptor of ours ([`RtcpTap`]) counts PLIs and reports instead;
//! * a local track's packets must carry an SSRC of the track's encodings and a payload type (and
//!   header extension ids) negotiated on its section, or `RTCRtpSender::write_rtp` drops them:
//!   nothing is rewritten for the application as 0.17's `TrackLocalStaticRTP` did;
//! * the peer connection has no synchronous state getters: the states are recorded from the
//!   event handler;
//! * sockets come from the `Runtime`: the closable socket is a runtime that wraps them.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use base64::Engine;
use bytes::Bytes;
use rtc::interceptor::{Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::configure_twcc_sender_only;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::marshal::Marshal;
use rtcd_proto::v1 as pb;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::Channel;

pub use crate::clip::{Clip, ClipCodec};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::{RtpSender, RtpTransceiver};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Sender reports kept per SSRC (about one a second arrives: a minute's worth).
pub const SENDER_REPORTS_KEPT: usize = 64;

/// A peer connection's overall state, as the tests compare it (see
/// [`Participant::connection_state`]).
pub use webrtc::peer_connection::RTCPeerConnectionState;

/// Whether participants trickle candidates (false: complete SDP, like the stack check).
const TRICKLE: bool = false;

/// How long any eventual condition may take (generous: DTLS retransmits after 1 s in debug).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `Basic base64(id:key)`.
pub fn basic(id: &str, key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}"))
    )
}

/// Attaches `authorization` metadata (if any) to a request.
pub fn authorized<T>(msg: T, auth: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(auth) = auth {
        req.metadata_mut()
            .insert("authorization", auth.parse().expect("ASCII header value"));
    }
    req
}

/// Polls `check` until it returns true or [`PATIENCE`] passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow!("timed out waiting for: {what}"))
}

/// Full permissions.
pub fn all_permissions() -> pb::Permissions {
    pb::Permissions {
        publish_audio: true,
        publish_video: true,
        publish_screen: true,
        subscribe: true,
    }
}

/// May only receive (least privilege for a listener).
pub fn subscribe_only() -> pb::Permissions {
    pb::Permissions {
        subscribe: true,
        ..Default::default()
    }
}

/// A join message.
pub fn join(call: &str, session: &str, permissions: pb::Permissions) -> pb::ClientSignal {
    pb::ClientSignal {
        signal: Some(pb::client_signal::Signal::Join(pb::Join {
            call_id: call.into(),
            session_id: session.into(),
            user_id: format!("user-{session}"),
            display_name: session.into(),
            permissions: Some(permissions),
            ..Default::default()
        })),
    }
}

/// Synthetic video sends a keyframe this often (in packets), besides after each PLI.
const KEYFRAME_EVERY: u64 = 50;
/// The time between synthetic video's own keyframes at [`Participant::add_track`]'s pace.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(20 * KEYFRAME_EVERY);

/// The codec bytes before a synthetic video payload's text: a VP8 payload descriptor (start of
/// partition 0) and frame tag, or an H.264 NAL header, saying keyframe (IDR) or not. Real enough
/// for an SFU's keyframe detection; other codecs get none.
fn video_prefix(mime: &str, keyframe: bool) -> &'static [u8] {
    match (mime, keyframe) {
        ("video/vp8", true) => &[0x10, 0x00],
        ("video/vp8", false) => &[0x10, 0x01],
        ("video/h264", true) => &[0x65],
        ("video/h264", false) => &[0x41],
        _ => &[],
    }
}

/// Bytes an end-to-end encrypted frame (docs/e2ee.md) adds: GCM tag, IV, clear count, key
/// index, format byte.
const E2EE_OVERHEAD: usize = 16 + 12 + 3;

/// A VP8 frame as end-to-end encryption leaves it (docs/e2ee.md, "Frame format"), for frame
/// `n` of the publisher `ssrc`: the clear prefix (a key frame's 10 bytes: frame tag with P = 0,
/// start code, 640x360; a delta frame's 3-byte tag with P = 1), then a body of noise standing
/// for the ciphertext and tag (a function of `ssrc` and `n`, so a receiver can rebuild it),
/// then the IV (`ssrc`, timestamp, counter `n`), the clear count, key index 1 and 0xE1.
pub fn e2ee_frame(ssrc: u32, n: u32, keyframe: bool) -> Vec<u8> {
    e2ee_frame_sized(ssrc, n, keyframe, (640, 360))
}

/// [`e2ee_frame`] whose key frames announce the picture size `size` (width, height) in their
/// clear bytes.
pub fn e2ee_frame_sized(ssrc: u32, n: u32, keyframe: bool, size: (u16, u16)) -> Vec<u8> {
    let mut out: Vec<u8> = if keyframe {
        let ([w0, w1], [h0, h1]) = (size.0.to_le_bytes(), size.1.to_le_bytes());
        vec![0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, w0, w1, h0, h1]
    } else {
        vec![0x51, 0x10, 0x00]
    };
    let clear = out.len() as u8;
    // xorshift32 over (ssrc, n): bytes that look random and that no codec would parse.
    let mut x = ssrc ^ n.wrapping_mul(0x9e37_79b9) ^ 0xa5a5_a5a5;
    let body = if keyframe { 600 } else { 150 } + (n % 7) as usize;
    for _ in 0..body + 16 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&n.wrapping_mul(3000).to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&[clear, 1, 0xe1]);
    out
}

/// A received VP8 payload that carries an [`e2ee_frame`] after a one-byte descriptor: the
/// publisher's SSRC and frame number (from the IV), whether it is a key frame, and whether it
/// is byte for byte what was sent. `None` for anything else.
fn e2ee_check(payload: &[u8]) -> Option<(u32, u32, bool, bool)> {
    let frame = payload.get(vp8_descriptor_len(payload)?..)?;
    let len = frame.len();
    if len < E2EE_OVERHEAD + 3 || frame[len - 1] != 0xe1 {
        return None;
    }
    let iv = &frame[len - 15..len - 3];
    let ssrc = u32::from_be_bytes([iv[0], iv[1], iv[2], iv[3]]);
    let n = u32::from_be_bytes([iv[8], iv[9], iv[10], iv[11]]);
    let keyframe = frame[0] & 0x01 == 0;
    let size = if keyframe && len >= 10 {
        (
            u16::from_le_bytes([frame[6], frame[7]]),
            u16::from_le_bytes([frame[8], frame[9]]),
        )
    } else {
        (640, 360)
    };
    let start = payload[0] & 0x10 != 0;
    let intact = start && frame == e2ee_frame_sized(ssrc, n, keyframe, size).as_slice();
    Some((ssrc, n, keyframe, intact))
}

/// The length of the VP8 payload descriptor (RFC 7741 §4.2) at the start of `p`.
fn vp8_descriptor_len(p: &[u8]) -> Option<usize> {
    let b0 = *p.first()?;
    if b0 & 0x80 == 0 {
        return Some(1);
    }
    let x = *p.get(1)?;
    let mut i = 2;
    if x & 0x80 != 0 {
        i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    if x & 0x40 != 0 {
        i += 1;
    }
    if x & 0x30 != 0 {
        i += 1;
    }
    Some(i)
}

/// A received payload without [`video_prefix`]'s bytes.
fn strip_video_prefix<'a>(mime: &str, payload: &'a [u8]) -> &'a [u8] {
    let n = match mime.to_ascii_lowercase().as_str() {
        "video/vp8" => 2,
        "video/h264" => 1,
        _ => 0,
    };
    payload.get(n..).unwrap_or_default()
}

/// Per (sender, kind) reception statistics, from payloads `sender|kind|seq`.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    /// Distinct packets received (a retransmitted copy counts in `repeated`, not here).
    pub packets: u64,
    /// Lowest and highest sender sequence counter seen.
    pub first: u64,
    /// Highest sender sequence counter seen.
    pub last: u64,
    /// The SSRC the flow arrives on (what a NACK names).
    pub ssrc: u32,
    /// The negotiated codec's MIME type, e.g. `video/H264`.
    pub mime: String,
    /// The RTP sequence number of the latest packet, and its payload counter.
    pub latest: Option<(u16, u64)>,
    /// Payload counters that arrived more than once (retransmissions), the first 64.
    pub repeated: Vec<u64>,
    /// Recently seen payload counters: slot `n % RECENT` holds `n + 1`.
    recent: Vec<u64>,
}

/// How many recent payload counters a flow remembers to spot repeats.
const RECENT: usize = 1024;

impl Flow {
    /// Packets missing between the first and last seen.
    pub fn lost(&self) -> u64 {
        (self.last - self.first + 1).saturating_sub(self.packets)
    }

    fn record(&mut self, n: u64, seq: u16) {
        if self.recent.is_empty() {
            self.recent = vec![0; RECENT];
            self.first = n;
            self.last = n;
        }
        let slot = &mut self.recent[(n % RECENT as u64) as usize];
        if *slot == n + 1 {
            if self.repeated.len() < 64 {
                self.repeated.push(n);
            }
            return;
        }
        *slot = n + 1;
        self.packets += 1;
        self.first = self.first.min(n);
        self.last = self.last.max(n);
        self.latest = Some((seq, n));
    }
}

/// Opus as webrtc-rs registers it by default (the payload type is looked up, not assumed).
fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: Vec::new(),
    }
}

/// VP8 as webrtc-rs registers it by default.
fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".to_owned(),
        clock_rate: 90_000,
        ..Default::default()
    }
}

/// VP9 profile 0, as browsers offer it.
fn vp9() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP9".to_owned(),
        clock_rate: 90_000,
        sdp_fmtp_line: "profile-id=0".to_owned(),
        ..Default::default()
    }
}

/// AV1 (profile 0), as browsers offer it.
fn av1() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/AV1".to_owned(),
        clock_rate: 90_000,
        sdp_fmtp_line: "profile-id=0".to_owned(),
        ..Default::default()
    }
}

/// H.264 (constrained baseline, packetization mode 1: what browsers offer first).
pub fn h264() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/H264".to_owned(),
        clock_rate: 90_000,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        ..Default::default()
    }
}

/// The RFC 6464 audio level header extension, which rtcd's voice activity detection reads.
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// RFC 8843 mid header extension: with the rid, how rtcd binds a simulcast layer's SSRC.
const SDES_MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// RFC 8852 rid header extension: which simulcast layer a packet belongs to.
const SDES_RTP_STREAM_ID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// How long an offer waits for the host candidates to be in it (they are local: milliseconds).
const GATHERING: Duration = Duration::from_secs(5);

/// How a participant's peer connection is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerOptions {
    /// All ICE traffic on sockets that [`Participant::vanish`] can cut: the peer then goes
    /// silent without a DTLS close_notify, like a dead network.
    pub closable_socket: bool,
    /// Accept an SRTP packet that was already received. webrtc-rs's SRTP contexts drop such
    /// replays by default, which would hide a retransmission of a packet the peer already has;
    /// a retransmission test turns this on to see it.
    pub accept_replays: bool,
    /// NACK losses across renegotiations: webrtc-rs's NACK generator starts a new receive log
    /// at every renegotiation, so a packet lost right then is never asked for (rtcd wraps its own
    /// generator for the same reason: `rtcd::engine::StableNackGenerator`, used here too). A
    /// test that judges repairs as a correct NACK-only receiver sees them needs this.
    pub stable_nacks: bool,
    /// Keep a log of every RTP packet received ([`Participant::arrivals`]), for tests that
    /// check sequence spaces and keyframes packet by packet (off: long calls would grow it).
    pub log_packets: bool,
    /// Negotiate the mid and rid header extensions for video, which a simulcast publisher
    /// ([`Participant::add_encrypted_simulcast`]) writes on its packets so that rtcd binds
    /// each layer.
    pub simulcast: bool,
    /// Number every packet sent with the transport-wide sequence number (webrtc-rs's TWCC
    /// sender), as browsers do, so that rtcd sends transport-cc feedback on what it received
    /// ([`Participant::transport_cc_feedback`]).
    pub transport_cc: bool,
}

/// Transport-cc feedback messages a participant keeps (the latest; about 10 a second).
const TRANSPORT_CC_KEPT: usize = 1_000;

/// One RTP packet a participant received ([`PeerOptions::log_packets`]).
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the participant's track reader got it.
    pub at: Instant,
    /// The SSRC and sequence number it arrived with (RTX already unwrapped).
    pub ssrc: u32,
    pub seq: u16,
    /// `sender/kind` from its payload; empty for a packet without one (RTP padding).
    pub flow: String,
    /// Whether its payload says keyframe (VP8 / H.264 synthetic video).
    pub keyframe: bool,
}

/// What a participant, its peer connection's handler and interceptor, and its tasks share. Only
/// the participant holds it strongly: everything webrtc-rs owns holds it weakly.
#[derive(Default)]
struct Shared {
    events: Mutex<Vec<pb::server_signal::Signal>>,
    /// When each of `events` arrived.
    event_times: Mutex<Vec<Instant>>,
    /// Every RTP packet received, when [`PeerOptions::log_packets`] is set.
    arrivals: Option<Mutex<Vec<Arrival>>>,
    flows: Mutex<HashMap<String, Flow>>,
    /// The latest state the peer connection reported (0.21 has no synchronous getter).
    state: Mutex<RTCPeerConnectionState>,
    /// Codec of each payload type we offered (`video/VP8`...): what a received packet is.
    payload_types: Mutex<HashMap<u8, String>>,
    /// The remote track each received SSRC arrives on (a NACK about it is written through it).
    remotes: Mutex<HashMap<u32, Arc<dyn TrackRemote>>>,
    /// Our published tracks' SSRCs, by kind.
    published: Mutex<HashMap<String, u32>>,
    /// The media kind of every transceiver we made (0.21's transceivers do not say).
    kinds: Mutex<HashMap<RTCRtpTransceiverId, RtpCodecKind>>,
    /// Sender reports received, by the SSRC they describe (one of the flows we receive), with
    /// when each arrived on our clock; the latest [`SENDER_REPORTS_KEPT`] of each.
    sender_reports: Mutex<HashMap<u32, VecDeque<(Instant, SenderReport)>>>,
    /// Receiver report blocks received, by the SSRC they describe (one of our tracks).
    receiver_reports: Mutex<HashMap<u32, u64>>,
    /// Transport-cc feedback received, the latest [`TRANSPORT_CC_KEPT`], each with when it
    /// arrived on our clock.
    transport_cc: Mutex<VecDeque<(Instant, TransportLayerCc)>>,
    /// RFC 6464 level our audio carries (0 = loudest, 127 = silence).
    audio_level: AtomicU8,
    plis: AtomicU64,
    negotiations: AtomicU64,
    /// RTP packets received on every track ([`Participant::packets_received`]).
    packets_in: AtomicU64,
    /// End-to-end encrypted frames ([`e2ee_frame`]) received with any byte changed.
    e2ee_corrupt: AtomicU64,
    /// Per end-to-end encrypted flow (`{ssrc:08x}/e2ee`): whether the first frame received
    /// was a key frame.
    e2ee_first_keyframe: Mutex<HashMap<String, bool>>,
    closed: AtomicBool,
    /// While set, rtcd's `NegotiationNeeded` requests are ignored (the participant keeps its
    /// current sections, as a slow client would).
    hold_offers: AtomicBool,
    offers_dropped: AtomicU64,
    /// Kinds declared in every offer's `tracks`, by the MediaStreamTrack id of our track.
    declared: Mutex<HashMap<String, pb::TrackKind>>,
}

impl Shared {
    /// Counts the keyframe requests and reports in inbound RTCP ([`RtcpTap`]).
    fn note_rtcp(&self, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        for p in packets {
            let any = p.as_any();
            if any.is::<PictureLossIndication>() {
                self.plis.fetch_add(1, Ordering::Relaxed);
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                let mut reports = self.sender_reports.lock().unwrap();
                let kept = reports.entry(sr.ssrc).or_default();
                if kept.len() == SENDER_REPORTS_KEPT {
                    kept.pop_front();
                }
                kept.push_back((Instant::now(), sr.clone()));
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                let mut counts = self.receiver_reports.lock().unwrap();
                for r in &rr.reports {
                    *counts.entry(r.ssrc).or_default() += 1;
                }
            } else if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
                let mut kept = self.transport_cc.lock().unwrap();
                if kept.len() == TRANSPORT_CC_KEPT {
                    kept.pop_front();
                }
                kept.push_back((Instant::now(), cc.clone()));
            }
        }
    }
}

/// A published track's sender and the flag that stops its packet generator.
type Outgoing = (Arc<dyn RtpSender>, Arc<AtomicBool>);

enum Control {
    Renegotiate,
    Send(pb::ClientSignal),
}

/// A webrtc-rs end user joined through gRPC.
pub struct Participant {
    /// The session ID (also the payload sender tag).
    pub session: String,
    /// The peer connection.
    pub pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
    senders: Mutex<HashMap<String, Outgoing>>,
    /// The kill switch of a peer built with [`PeerOptions::closable_socket`].
    cut: Option<Arc<AtomicBool>>,
}

/// The last interceptor of every participant's chain: counts inbound PLIs, sender reports and
/// receiver report blocks into [`Shared`]. In webrtc 0.21 inbound RTCP ends at the chain's
/// terminus unless marked for the application, and then arrives per track (routed by the
/// first packet's SSRC); counting here sees all of it, after the stock interceptors.
struct RtcpTap {
    shared: Weak<Shared>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

/// Where [`RtcpTap`] sits: past the last stock slot (the jitter buffer, 13 000).
const RTCP_TAP_SLOT: usize = 14_000;

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && let Some(shared) = self.shared.upgrade()
        {
            shared.note_rtcp(packets);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.writes.pop_front()
    }
}

impl Interceptor for RtcpTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The peer connection's event handler: records the connection state and starts a reader per
/// remote track. Holds the participant's state weakly: the peer connection's driver owns the
/// handler and may outlive the participant.
struct Events {
    shared: Weak<Shared>,
}

#[tonic::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if let Some(shared) = self.shared.upgrade() {
            *shared.state.lock().unwrap() = state;
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // The handler runs on the driver: reading here would stall the connection.
        tokio::spawn(read_track(track, self.shared.clone()));
    }
}

/// The tokio runtime webrtc-rs uses by default, for [`CutRuntime`] to delegate to.
static TOKIO: TokioRuntime = TokioRuntime;

/// webrtc-rs's tokio runtime, except that the UDP sockets it wraps are [`CuttableSocket`]s
/// sharing one kill switch: 0.21 binds its sockets itself, through the runtime, so this is
/// where a peer's network can be cut.
#[derive(Debug)]
struct CutRuntime {
    cut: Arc<AtomicBool>,
}

impl Runtime for CutRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TOKIO.spawn(future)
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(CuttableSocket {
            inner: TOKIO.wrap_udp_socket(socket)?,
            cut: self.cut.clone(),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Arc<dyn AsyncTcpListener>> {
        TOKIO.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TOKIO.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TOKIO.resolve_host(host)
    }

    fn now(&self) -> Instant {
        TOKIO.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TOKIO.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TOKIO.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TOKIO.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TOKIO.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio-cuttable"
    }
}

/// A UDP socket that goes deaf and mute once `cut` is set: sends are swallowed, arrivals are
/// discarded. Closing the peer connection would not do: it says goodbye (DTLS close_notify).
#[derive(Debug)]
struct CuttableSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    cut: Arc<AtomicBool>,
}

impl AsyncUdpSocket for CuttableSocket {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(
        &self,
        cx: &mut TaskContext<'_>,
        transmit: &Transmit<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if self.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(transmit.contents.len()));
        }
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut TaskContext<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let got = self.inner.poll_recv(cx, &mut *bufs, &mut *meta);
            if !self.cut.load(Ordering::Relaxed) || !matches!(got, Poll::Ready(Ok(_))) {
                return got;
            }
        }
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

impl Drop for Participant {
    /// Stops the packet generators (they would otherwise outlive the participant) and closes the
    /// peer connection: webrtc 0.21's driver keeps running after the last handle is dropped.
    fn drop(&mut self) {
        let senders = self.senders.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, stop) in senders.values() {
            stop.store(true, Ordering::Relaxed);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pc = self.pc.clone();
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}
impl Participant {
    /// Opens the stream and joins; returns the gRPC status if rtcd refuses.
    pub async fn join(
        client: &mut SignalingClient<Channel>,
        auth: Option<&str>,
        call: &str,
        session: &str,
        permissions: pb::Permissions,
    ) -> Result<Self, tonic::Status> {
        Self::join_with(
            client,
            auth,
            call,
            session,
            permissions,
            PeerOptions::default(),
        )
        .await
    }

    /// [`Participant::join`] with a differently built peer.
    pub async fn join_with(
        client: &mut SignalingClient<Channel>,
        auth: Option<&str>,
        call: &str,
        session: &str,
        permissions: pb::Permissions,
        options: PeerOptions,
    ) -> Result<Self, tonic::Status> {
        Self::join_message(
            client,
            auth,
            session,
            join(call, session, permissions),
            options,
        )
        .await
    }

    /// Joins with any `Join` message (a role, a token, another user); `session` is the payload
    /// tag of this participant's tracks.
    pub async fn join_message(
        client: &mut SignalingClient<Channel>,
        auth: Option<&str>,
        session: &str,
        message: pb::ClientSignal,
        options: PeerOptions,
    ) -> Result<Self, tonic::Status> {
        let (out_tx, out_rx) = mpsc::channel::<pb::ClientSignal>(64);
        out_tx
            .send(message)
            .await
            .map_err(|_| tonic::Status::internal("harness"))?;
        let mut inbound = client
            .session(authorized(ReceiverStream::new(out_rx), auth))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(pb::ServerSignal {
                signal: Some(pb::server_signal::Signal::Joined(_)),
            }) => {}
            other => {
                return Err(tonic::Status::internal(format!(
                    "expected Joined, got {other:?}"
                )));
            }
        }
        Self::start(session, out_tx, inbound, options)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    /// Joins with [`subscribe_only`] rights and makes the first offer (receive only).
    pub async fn listener(
        client: &mut SignalingClient<Channel>,
        auth: &str,
        call: &str,
        session: &str,
        options: PeerOptions,
    ) -> anyhow::Result<Self> {
        let p =
            Self::join_with(client, Some(auth), call, session, subscribe_only(), options).await?;
        p.receive_only().await?;
        Ok(p)
    }

    /// Joins `room` through the proxy's WebSocket at `ws_url` with `token`: the same peer,
    /// its signaling translated to the proxy's JSON protocol ([`crate::bridge`]). `session` is
    /// the payload tag of this participant's tracks.
    pub async fn join_via_proxy(
        ws_url: &str,
        token: &str,
        room: &str,
        session: &str,
    ) -> anyhow::Result<Self> {
        let (out_tx, inbound) = crate::bridge::join(ws_url, token, room).await?;
        Self::start(session, out_tx, inbound, PeerOptions::default()).await
    }

    /// [`Participant::join_via_proxy`] over a bridge that resumes its session through the
    /// next of `ws_urls` when its connection to a proxy is lost ([`crate::bridge::join_resumable`]).
    pub async fn join_via_proxies(
        ws_urls: Vec<String>,
        token: &str,
        room: &str,
        session: &str,
    ) -> anyhow::Result<(Self, crate::bridge::Resumes)> {
        let (out_tx, inbound, resumes) =
            crate::bridge::join_resumable(ws_urls, token, room).await?;
        Ok((
            Self::start(session, out_tx, inbound, PeerOptions::default()).await?,
            resumes,
        ))
    }

    /// Creates the peer and starts the driver over an already joined signaling stream.
    async fn start<S>(
        session: &str,
        out_tx: mpsc::Sender<pb::ClientSignal>,
        inbound: S,
        options: PeerOptions,
    ) -> anyhow::Result<Self>
    where
        S: futures_util::Stream<Item = Result<pb::ServerSignal, tonic::Status>>
            + Unpin
            + Send
            + 'static,
    {
        let shared = Arc::new(Shared {
            audio_level: AtomicU8::new(10),
            arrivals: options.log_packets.then(Default::default),
            ..Default::default()
        });
        let (pc, cut) = new_peer(options, &shared).await?;
        let (control_tx, control_rx) = mpsc::channel(16);
        tokio::spawn(drive(
            pc.clone(),
            shared.clone(),
            inbound,
            out_tx,
            control_rx,
        ));
        Ok(Self {
            session: session.into(),
            pc,
            shared,
            control: control_tx,
            senders: Mutex::new(HashMap::new()),
            cut,
        })
    }

    /// Adds a synthetic track (`kind` = "audio", "video" or "screen"), sending ~50 packets/s
    /// with payload `session|kind|n`. Call [`Participant::renegotiate`] afterwards.
    pub async fn add_track(&self, kind: &str) -> anyhow::Result<()> {
        self.add_track_paced(kind, Duration::from_millis(20), 0)
            .await
    }

    /// Like [`Participant::add_track`] with a packet interval and `pad` extra payload bytes
    /// (for benchmarks).
    pub async fn add_track_paced(
        &self,
        kind: &str,
        interval: Duration,
        pad: usize,
    ) -> anyhow::Result<()> {
        let codec = if kind == "audio" || kind == "screen_audio" {
            opus()
        } else {
            vp8()
        };
        self.add_track_with(kind, codec, interval, pad).await
    }

    /// Like [`Participant::add_track_paced`] with an explicit codec (e.g. [`h264`]).
    pub async fn add_track_with(
        &self,
        kind: &str,
        codec: RTCRtpCodec,
        interval: Duration,
        pad: usize,
    ) -> anyhow::Result<()> {
        let audio = kind == "audio" || kind == "screen_audio";
        let (track, sender, ssrc) = self.local_track(kind, &codec).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let tag = format!("{}|{}|", self.session, kind);
        let mime = codec.mime_type.to_ascii_lowercase();
        let st = stop.clone();
        let shared = Arc::downgrade(&self.shared);
        let s = sender.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let padding = "x".repeat(pad);
            let mut turn = SendTurn::default();
            // Payload type and audio level extension id as negotiated.
            let mut wire = None;
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(news) = turn.look(&shared) else {
                    break;
                };
                if news.renegotiated {
                    wire = wire_format(s.as_ref(), &codec).await;
                }
                // Video is a keyframe every KEYFRAME_EVERY packets and right after a PLI, as an
                // encoder would send it: an SFU may hold a new subscriber's video until one.
                let keyframe = n.is_multiple_of(KEYFRAME_EVERY) || news.pli;
                let mut payload = if audio {
                    Vec::new()
                } else {
                    video_prefix(&mime, keyframe).to_vec()
                };
                payload.extend_from_slice(format!("{tag}{n}|{padding}").as_bytes());
                if let Some((payload_type, level_id)) = wire {
                    let mut packet = rtc::rtp::Packet {
                        header: rtc::rtp::header::Header {
                            version: 2,
                            marker: true,
                            payload_type,
                            sequence_number: n as u16,
                            timestamp: (n as u32).wrapping_mul(if audio { 960 } else { 3000 }),
                            ssrc,
                            ..Default::default()
                        },
                        payload: Bytes::from(payload),
                    };
                    if audio && let Some(id) = level_id {
                        let level = news.audio_level;
                        let ext = AudioLevelExtension {
                            level,
                            voice: level < 127,
                        };
                        if let Ok(data) = ext.marshal() {
                            let _ = packet.header.set_extension(id, data.freeze());
                        }
                    }
                    let _ = track.write_rtp(packet).await;
                }
                n += 1;
            }
        });
        self.senders
            .lock()
            .unwrap()
            .insert(kind.to_owned(), (sender, stop));
        Ok(())
    }

    /// A local track of `kind` with `codec` on a new sender (SSRC chosen here), every codec of
    /// its kind offered, and its SSRC noted as published.
    async fn local_track(
        &self,
        kind: &str,
        codec: &RTCRtpCodec,
    ) -> anyhow::Result<(Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, u32)> {
        let track_id = track_id_of(kind);
        let audio = kind == "audio" || kind == "screen_audio";
        let media_kind = if audio {
            RtpCodecKind::Audio
        } else {
            RtpCodecKind::Video
        };
        // 0.21 sends a packet only on an SSRC of the track's encodings: we choose it.
        let ssrc = next_ssrc();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            self.session.clone(),
            track_id.to_owned(),
            track_id.to_owned(),
            media_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            }],
        )));
        let local: Arc<dyn TrackLocal> = track.clone();
        let sender = self
            .pc
            .add_track(local)
            .await
            .with_context(|| format!("{}: adding {kind}", self.session))?;
        self.shared
            .kinds
            .lock()
            .unwrap()
            .insert(RTCRtpTransceiverId::from(sender.id()), media_kind);
        offer_every_codec(&self.pc, sender.as_ref(), media_kind, codec)
            .await
            .with_context(|| format!("{}: codecs of {kind}", self.session))?;
        self.shared
            .published
            .lock()
            .unwrap()
            .insert(kind.to_owned(), ssrc);
        Ok((track, sender, ssrc))
    }

    /// Adds a track (`kind` as in [`Participant::add_track`]) that sends real encoded media:
    /// `clip`'s frames in real time, looped, packetized as a browser would (VP8 or VP9 frames
    /// split at 1200 bytes, the marker on a frame's last packet; one Opus frame per packet). What it
    /// sends decodes (a recording of it can be checked with ffmpeg); its payloads carry no
    /// `session|kind|n` tag, so receivers count it only in [`Participant::packets_received`].
    /// A PLI is not answered: the clip has its own keyframes. Call
    /// [`Participant::renegotiate`] afterwards.
    pub async fn add_clip_track(&self, kind: &str, clip: Arc<Clip>) -> anyhow::Result<()> {
        let codec = match clip.codec {
            ClipCodec::Vp8 => vp8(),
            ClipCodec::Vp9 => vp9(),
            ClipCodec::Av1 => av1(),
            ClipCodec::Opus => opus(),
        };
        let (track, sender, ssrc) = self.local_track(kind, &codec).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let shared = Arc::downgrade(&self.shared);
        let s = sender.clone();
        tokio::spawn(async move {
            let mut payloader: Box<dyn rtc::rtp::packetizer::Payloader + Send> = match clip.codec {
                ClipCodec::Vp9 => Box::new(rtc::rtp::codec::vp9::Vp9Payloader::default()),
                ClipCodec::Av1 => Box::new(rtc::rtp::codec::av1::Av1Payloader::default()),
                _ => {
                    let mut vp8 = rtc::rtp::codec::vp8::Vp8Payloader::default();
                    vp8.enable_picture_id = true;
                    Box::new(vp8)
                }
            };
            let mut tick = tokio::time::interval(clip.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut seq, mut timestamp) = (0u16, 0u32);
            let (mut wire, mut turn) = (None, SendTurn::default());
            for frame in clip.frames.iter().cycle() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                let Some(news) = turn.look(&shared) else {
                    break;
                };
                if news.renegotiated {
                    wire = wire_format(s.as_ref(), &codec).await;
                }
                let payloads = if clip.is_video() {
                    payloader.payload(1200, frame).unwrap_or_default()
                } else {
                    vec![frame.clone()]
                };
                let last = payloads.len().saturating_sub(1);
                for (i, payload) in payloads.into_iter().enumerate() {
                    if let Some((payload_type, _)) = wire {
                        let packet = rtc::rtp::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                marker: i == last,
                                payload_type,
                                sequence_number: seq,
                                timestamp,
                                ssrc,
                                ..Default::default()
                            },
                            payload,
                        };
                        let _ = track.write_rtp(packet).await;
                    }
                    seq = seq.wrapping_add(1);
                }
                timestamp = timestamp.wrapping_add(clip.ticks);
            }
        });
        self.senders
            .lock()
            .unwrap()
            .insert(kind.to_owned(), (sender, stop));
        Ok(())
    }

    /// Adds a VP8 track (`kind` as in [`Participant::add_track`]) whose frames are end-to-end
    /// encrypted in the format of docs/e2ee.md as far as the server can tell: each frame one
    /// packet, the payload descriptor (S = 1) then [`e2ee_frame`] (clear prefix, a body of
    /// noise, the trailer). A key frame every `KEYFRAME_EVERY` frames and after a PLI. Receivers
    /// check every such frame byte for byte ([`Participant::e2ee_corrupt`]) and count it in the
    /// flow `"{ssrc:08x}/e2ee"` (`ssrc` the publisher's, [`Participant::published_ssrc`]).
    /// Call [`Participant::renegotiate`] afterwards.
    pub async fn add_encrypted_video(&self, kind: &str) -> anyhow::Result<()> {
        let codec = vp8();
        let (track, sender, ssrc) = self.local_track(kind, &codec).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let shared = Arc::downgrade(&self.shared);
        let s = sender.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut wire, mut turn) = (None, SendTurn::default());
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(news) = turn.look(&shared) else {
                    break;
                };
                if news.renegotiated {
                    wire = wire_format(s.as_ref(), &codec).await;
                }
                let keyframe = n.is_multiple_of(KEYFRAME_EVERY) || news.pli;
                if let Some((payload_type, _)) = wire {
                    let mut payload = vec![0x10];
                    payload.extend(e2ee_frame(ssrc, n as u32, keyframe));
                    let packet = rtc::rtp::Packet {
                        header: rtc::rtp::header::Header {
                            version: 2,
                            marker: true,
                            payload_type,
                            sequence_number: n as u16,
                            timestamp: (n as u32).wrapping_mul(3000),
                            ssrc,
                            ..Default::default()
                        },
                        payload: Bytes::from(payload),
                    };
                    let _ = track.write_rtp(packet).await;
                }
                n += 1;
            }
        });
        self.senders
            .lock()
            .unwrap()
            .insert(kind.to_owned(), (sender, stop));
        Ok(())
    }

    /// Adds a VP8 simulcast track of three layers (rids `q`, `h`, `f`; key frames announce
    /// 160x90, 320x180 and 640x360 in their clear bytes) whose frames are end-to-end encrypted
    /// as in [`Participant::add_encrypted_video`], each packet carrying the mid and rid header
    /// extensions (needs [`PeerOptions::simulcast`]) and a VP8 descriptor with a 15-bit
    /// picture ID numbered per layer (which rtcd renumbers at a layer switch). Returns the
    /// layers' SSRCs, lowest first. Call [`Participant::renegotiate`] afterwards.
    pub async fn add_encrypted_simulcast(
        &self,
        kind: &str,
        section: SimulcastSection,
    ) -> anyhow::Result<Vec<u32>> {
        const LAYERS: [(&str, (u16, u16)); 3] =
            [("q", (160, 90)), ("h", (320, 180)), ("f", (640, 360))];
        let codec = vp8();
        let track_id = track_id_of(kind);
        let ssrcs: Vec<u32> = LAYERS.iter().map(|_| next_ssrc()).collect();
        let encodings = LAYERS
            .iter()
            .zip(&ssrcs)
            .map(|((rid, _), ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: (*rid).to_owned(),
                    ssrc: Some(*ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            })
            .collect();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            self.session.clone(),
            track_id.to_owned(),
            track_id.to_owned(),
            RtpCodecKind::Video,
            encodings,
        )));
        let local: Arc<dyn TrackLocal> = track.clone();
        let sender = self
            .pc
            .add_track(local)
            .await
            .with_context(|| format!("{}: adding {kind}", self.session))?;
        let transceiver_id = RTCRtpTransceiverId::from(sender.id());
        if section == SimulcastSection::SendOnly {
            transceiver(&self.pc, transceiver_id)
                .await
                .context("the sender's transceiver is gone")?
                .set_direction(RTCRtpTransceiverDirection::Sendonly)
                .await
                .with_context(|| format!("{}: {kind} send-only", self.session))?;
        }
        self.shared
            .kinds
            .lock()
            .unwrap()
            .insert(transceiver_id, RtpCodecKind::Video);
        offer_every_codec(&self.pc, sender.as_ref(), RtpCodecKind::Video, &codec).await?;
        self.shared
            .published
            .lock()
            .unwrap()
            .insert(kind.to_owned(), ssrcs[0]);
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let shared = Arc::downgrade(&self.shared);
        let (s, pc) = (sender.clone(), self.pc.clone());
        let layers = ssrcs.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut wire, mut turn) = (None, SendTurn::default());
            let mut ids: Option<(u8, u8, String)> = None;
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(news) = turn.look(&shared) else {
                    break;
                };
                if news.renegotiated {
                    wire = wire_format(s.as_ref(), &codec).await;
                    ids = simulcast_ids(&pc, s.as_ref(), transceiver_id).await;
                }
                let keyframe = n.is_multiple_of(KEYFRAME_EVERY) || news.pli;
                if let (Some((payload_type, _)), Some((mid_id, rid_id, mid))) = (wire, &ids) {
                    for (((rid, size), ssrc), layer) in LAYERS.iter().zip(&layers).zip(0u16..) {
                        // X, I with a 15-bit picture ID, each layer its own numbering.
                        let picture = (n as u16).wrapping_add(layer * 5000) & 0x7fff;
                        let [hi, lo] = picture.to_be_bytes();
                        let mut payload = vec![0x90, 0x80, 0x80 | hi, lo];
                        payload.extend(e2ee_frame_sized(*ssrc, n as u32, keyframe, *size));
                        let mut packet = rtc::rtp::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                marker: true,
                                payload_type,
                                sequence_number: n as u16,
                                timestamp: (n as u32).wrapping_mul(3000),
                                ssrc: *ssrc,
                                ..Default::default()
                            },
                            payload: Bytes::from(payload),
                        };
                        let _ = packet
                            .header
                            .set_extension(*mid_id, Bytes::from(mid.clone().into_bytes()));
                        let _ = packet
                            .header
                            .set_extension(*rid_id, Bytes::from_static(rid.as_bytes()));
                        let _ = track.write_rtp(packet).await;
                    }
                }
                n += 1;
            }
        });
        self.senders
            .lock()
            .unwrap()
            .insert(kind.to_owned(), (sender, stop));
        Ok(ssrcs)
    }

    /// The SSRC of our published track of `kind`.
    pub fn published_ssrc(&self, kind: &str) -> Option<u32> {
        self.shared.published.lock().unwrap().get(kind).copied()
    }

    /// End-to-end encrypted frames received that differ from what was sent.
    pub fn e2ee_corrupt(&self) -> u64 {
        self.shared.e2ee_corrupt.load(Ordering::Relaxed)
    }

    /// Whether the first frame received on the end-to-end encrypted flow `flow`
    /// (`"{ssrc:08x}/e2ee"`) was a key frame (`None`: nothing received yet).
    pub fn e2ee_first_keyframe(&self, flow: &str) -> Option<bool> {
        self.shared
            .e2ee_first_keyframe
            .lock()
            .unwrap()
            .get(flow)
            .copied()
    }

    /// Every RTP packet received so far, of every track (tagged or not: real media too).
    pub fn packets_received(&self) -> u64 {
        self.shared.packets_in.load(Ordering::Relaxed)
    }

    /// Stops sending a track and removes it from the peer connection.
    pub async fn remove_track(&self, kind: &str) -> anyhow::Result<()> {
        let (sender, stop) = self
            .senders
            .lock()
            .unwrap()
            .remove(kind)
            .context("no such track")?;
        stop.store(true, Ordering::Relaxed);
        self.pc
            .remove_track(&sender)
            .await
            .with_context(|| format!("{}: removing {kind}", self.session))?;
        Ok(())
    }

    /// For a participant that publishes nothing: a receive-only audio transceiver (an offer needs
    /// a media section to set up the transport), then the first offer.
    pub async fn receive_only(&self) -> anyhow::Result<()> {
        add_receiver(&self.pc, &self.shared, RtpCodecKind::Audio).await?;
        self.renegotiate().await
    }

    /// Adds `audio` and `video` receive-only transceivers (no offer yet), as a browser that
    /// expects media does before its first offer.
    pub async fn add_receivers(&self, audio: usize, video: usize) -> anyhow::Result<()> {
        for (kind, n) in [(RtpCodecKind::Audio, audio), (RtpCodecKind::Video, video)] {
            for _ in 0..n {
                add_receiver(&self.pc, &self.shared, kind).await?;
            }
        }
        Ok(())
    }

    /// Declares what the track added as `kind` is (`tracks` of every offer from now on, by the
    /// mid of its section), e.g. `screen_audio` as [`pb::TrackKind::ScreenAudio`].
    pub fn declare(&self, kind: &str, as_kind: pb::TrackKind) {
        self.shared
            .declared
            .lock()
            .unwrap()
            .insert(track_id_of(kind).to_owned(), as_kind);
    }

    /// Offers (through the driver, so offers and answers never interleave).
    pub async fn renegotiate(&self) -> anyhow::Result<()> {
        self.control
            .send(Control::Renegotiate)
            .await
            .map_err(|_| anyhow!("driver gone"))
    }

    /// Sends a raw client message.
    pub async fn send(&self, signal: pb::client_signal::Signal) -> anyhow::Result<()> {
        self.control
            .send(Control::Send(pb::ClientSignal {
                signal: Some(signal),
            }))
            .await
            .map_err(|_| anyhow!("driver gone"))
    }

    /// Reception statistics keyed `sender/kind`.
    pub fn flows(&self) -> HashMap<String, Flow> {
        self.shared.flows.lock().unwrap().clone()
    }

    /// Packets received from `sender` of `kind`.
    pub fn received(&self, sender: &str, kind: &str) -> u64 {
        self.shared
            .flows
            .lock()
            .unwrap()
            .get(&format!("{sender}/{kind}"))
            .map_or(0, |f| f.packets)
    }

    /// Ignore (true) or follow (false) rtcd's negotiation requests from now on; returns the
    /// requests ignored so far.
    pub fn hold_offers(&self, hold: bool) -> u64 {
        self.shared.hold_offers.store(hold, Ordering::Relaxed);
        self.shared.offers_dropped.load(Ordering::Relaxed)
    }

    /// Sets the RFC 6464 level of this participant's audio from now on (0 = loudest, 127 =
    /// silence; the default is 10, i.e. talking).
    pub fn set_audio_level(&self, level: u8) {
        self.shared
            .audio_level
            .store(level.min(127), Ordering::Relaxed);
    }

    /// Asks rtcd to retransmit the latest packet received from `sender` of `kind`
    /// (a TransportLayerNack naming its SSRC and RTP sequence number); returns that packet's
    /// payload counter, which [`Flow::repeated`] then shows if it came again.
    pub async fn nack_latest(&self, sender: &str, kind: &str) -> anyhow::Result<u64> {
        let flow = self.flow(sender, kind)?;
        let (seq, n) = flow.latest.context("no packet yet")?;
        self.nack_ssrc(flow.ssrc, seq).await?;
        Ok(n)
    }

    /// Asks rtcd to retransmit packet `seq` (RTP sequence number) received from `sender` of
    /// `kind`.
    pub async fn nack(&self, sender: &str, kind: &str, seq: u16) -> anyhow::Result<()> {
        let ssrc = self.flow(sender, kind)?.ssrc;
        self.nack_ssrc(ssrc, seq).await
    }

    /// The flow from `sender` of `kind`, as it stands.
    fn flow(&self, sender: &str, kind: &str) -> anyhow::Result<Flow> {
        self.shared
            .flows
            .lock()
            .unwrap()
            .get(&format!("{sender}/{kind}"))
            .cloned()
            .context("no such flow yet")
    }

    /// A NACK for packet `seq` of the received stream `ssrc`.
    async fn nack_ssrc(&self, ssrc: u32, seq: u16) -> anyhow::Result<()> {
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: ssrc,
            nacks: vec![NackPair {
                packet_id: seq,
                lost_packets: 0,
            }],
        };
        // 0.21 writes RTCP through a sender or a receiver; this one is about a received stream.
        let track = self
            .shared
            .remotes
            .lock()
            .unwrap()
            .get(&ssrc)
            .cloned()
            .context("no remote track for the flow's SSRC")?;
        track
            .write_rtcp(vec![Box::new(nack)])
            .await
            .context("writing the NACK")?;
        Ok(())
    }

    /// Sender reports received for the SSRC `ssrc` (at most [`SENDER_REPORTS_KEPT`]).
    pub fn sender_reports(&self, ssrc: u32) -> u64 {
        self.shared
            .sender_reports
            .lock()
            .unwrap()
            .get(&ssrc)
            .map_or(0, |kept| kept.len() as u64)
    }

    /// The latest sender reports received for `ssrc`, oldest first, each with when it arrived.
    pub fn sender_report_history(&self, ssrc: u32) -> Vec<(Instant, SenderReport)> {
        self.shared
            .sender_reports
            .lock()
            .unwrap()
            .get(&ssrc)
            .map(|kept| kept.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The transport-cc feedback received (the latest [`TRANSPORT_CC_KEPT`]), oldest first,
    /// each with when it arrived ([`PeerOptions::transport_cc`]).
    pub fn transport_cc_feedback(&self) -> Vec<(Instant, TransportLayerCc)> {
        self.shared
            .transport_cc
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect()
    }

    /// Receiver reports received about this participant's `kind` track.
    pub fn receiver_reports(&self, kind: &str) -> u64 {
        let Some(ssrc) = self.shared.published.lock().unwrap().get(kind).copied() else {
            return 0;
        };
        self.shared
            .receiver_reports
            .lock()
            .unwrap()
            .get(&ssrc)
            .copied()
            .unwrap_or(0)
    }

    /// The peer connection's state as last reported by webrtc-rs (0.21's peer connection has
    /// no synchronous getter: the event handler records it).
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.shared.state.lock().unwrap()
    }

    /// Makes the peer go silent at once, as if its network died: the packet generators stop and
    /// its UDP sockets go deaf and mute, so nothing (not even a DTLS close_notify) reaches rtcd,
    /// while the gRPC stream stays open. Needs [`PeerOptions::closable_socket`].
    pub fn vanish(&self) -> anyhow::Result<()> {
        let cut = self
            .cut
            .as_ref()
            .context("joined without a closable socket")?;
        for (_, (_, stop)) in self.senders.lock().unwrap().iter() {
            stop.store(true, Ordering::Relaxed);
        }
        cut.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// PLIs the SFU sent to this participant (about its tracks).
    pub fn plis(&self) -> u64 {
        self.shared.plis.load(Ordering::Relaxed)
    }

    /// Answers to this participant's offers applied so far (every renegotiation ends with one).
    pub fn negotiations(&self) -> u64 {
        self.shared.negotiations.load(Ordering::Relaxed)
    }

    /// rtcd's messages so far, each with when it arrived.
    pub fn timed_events(&self) -> Vec<(Instant, pb::server_signal::Signal)> {
        let events = self.shared.events.lock().unwrap().clone();
        let times = self.shared.event_times.lock().unwrap().clone();
        times.into_iter().zip(events).collect()
    }

    /// Every RTP packet received so far (empty unless built with [`PeerOptions::log_packets`]).
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared
            .arrivals
            .as_ref()
            .map(|log| log.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Whether any logged packet satisfies `f` (without copying the log).
    pub fn any_arrival(&self, f: impl Fn(&Arrival) -> bool) -> bool {
        self.shared
            .arrivals
            .as_ref()
            .is_some_and(|log| log.lock().unwrap().iter().any(f))
    }

    /// Restarts ICE (new credentials in the next offer, as a browser's `restartIce()`) and
    /// offers.
    pub async fn restart_ice(&self) -> anyhow::Result<()> {
        self.pc.restart_ice().await.context("restart_ice")?;
        self.renegotiate().await
    }

    /// Every server event so far.
    pub fn events(&self) -> Vec<pb::server_signal::Signal> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Whether an event matching `f` arrived.
    pub fn saw(&self, f: impl Fn(&pb::server_signal::Signal) -> bool) -> bool {
        self.shared.events.lock().unwrap().iter().any(f)
    }

    /// Whether rtcd closed the session with `reason` (a `SessionClosed` event).
    pub fn closed_because(&self, reason: &str) -> bool {
        self.saw(|e| matches!(e, pb::server_signal::Signal::SessionClosed(c) if c.reason == reason))
    }

    /// Whether the stream has ended.
    pub fn stream_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// The error events received (code, message).
    pub fn errors(&self) -> Vec<(i32, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                pb::server_signal::Signal::Error(e) => Some((e.code, e.message)),
                _ => None,
            })
            .collect()
    }

    /// Whether the current remote description still has a sending media section for a track of
    /// `sender` (a withdrawn track's section stays, as `recvonly` / `inactive`).
    pub async fn remote_sdp_mentions(&self, sender: &str) -> bool {
        let Some(desc) = self.pc.remote_description().await else {
            return false;
        };
        desc.sdp.split("\r\nm=").any(|section| {
            section.contains(&format!("msid:{sender} "))
                && (section.contains("a=sendonly") || section.contains("a=sendrecv"))
        })
    }

    /// Waits until `sender`'s `tracks` tracks are withdrawn from this participant: as many
    /// TrackRemoved events, a renegotiation after `negotiations_before` (see
    /// [`Participant::negotiations`]), and no sending media section of theirs left in the SDP.
    pub async fn lost_tracks_of(
        &self,
        sender: &str,
        tracks: usize,
        negotiations_before: u64,
    ) -> anyhow::Result<()> {
        use pb::server_signal::Signal;
        eventually(
            &format!("{}: {tracks} removal events", self.session),
            || {
                self.events()
                    .iter()
                    .filter(|e| matches!(e, Signal::TrackRemoved(t) if t.session_id == sender))
                    .count()
                    == tracks
            },
        )
        .await?;
        eventually(&format!("{} renegotiated", self.session), || {
            self.negotiations() > negotiations_before
        })
        .await?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.remote_sdp_mentions(sender).await {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{}'s SDP still sends {sender}'s tracks",
                self.session
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Closes the peer connection (the gRPC stream stays until the participant is dropped).
    pub async fn close(&self) {
        for (_, (_, stop)) in self.senders.lock().unwrap().iter() {
            stop.store(true, Ordering::Relaxed);
        }
        let _ = self.pc.close().await;
    }
}

/// A participant of call `call` with every permission that publishes synthetic audio and video
/// (and has made its first offer): the common cast of the media tests.
pub async fn publisher(
    client: &mut SignalingClient<Channel>,
    auth: &str,
    session: &str,
) -> anyhow::Result<Participant> {
    let p = Participant::join(client, Some(auth), "call", session, all_permissions()).await?;
    p.add_track("audio").await?;
    p.add_track("video").await?;
    p.renegotiate().await?;
    Ok(p)
}

/// The section a simulcast camera is published on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulcastSection {
    /// `sendonly`, as the SDK publishes.
    SendOnly,
    /// `sendrecv` (`add_track`'s default): rtcd must send nothing of others on it, because
    /// webrtc-rs 0.21 takes the answer's `a=rid` lines as the only streams it receives there
    /// (protocol.md section 4a).
    SendRecv,
}

/// Joins `call` as `session` publishing a three-layer VP8 simulcast camera of end-to-end
/// encrypted frames ([`Participant::add_encrypted_simulcast`]) on `section`; returns the
/// participant and its layers' SSRCs, lowest first (a subscriber's flows of it are keyed
/// `{ssrc:08x}/e2ee`).
pub async fn simulcast_publisher(
    client: &mut SignalingClient<Channel>,
    auth: &str,
    call: &str,
    session: &str,
    section: SimulcastSection,
) -> anyhow::Result<(Participant, Vec<u32>)> {
    let p = Participant::join_with(
        client,
        Some(auth),
        call,
        session,
        all_permissions(),
        PeerOptions {
            simulcast: true,
            ..Default::default()
        },
    )
    .await?;
    let layers = p.add_encrypted_simulcast("video", section).await?;
    p.renegotiate().await?;
    Ok((p, layers))
}

/// Checks that every flow in `flows` (`sender/kind`) that `p` receives keeps growing in every
/// `window` for `total`: a call that stalls for one window fails, with which flow and when.
/// (A first packet proves nothing: calls once died seconds after their first frame.)
pub async fn keeps_flowing(
    p: &Participant,
    flows: &[&str],
    total: Duration,
    window: Duration,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let count = |f: &str| p.flows().get(f).map_or(0, |f| f.packets);
    let mut last: Vec<u64> = flows.iter().map(|f| count(f)).collect();
    while start.elapsed() < total {
        tokio::time::sleep(window).await;
        for (i, f) in flows.iter().enumerate() {
            let now = count(f);
            anyhow::ensure!(
                now > last[i],
                "{}: flow {f} stalled at {now} packets in the window ending {:?} after the start",
                p.session,
                start.elapsed()
            );
            last[i] = now;
        }
    }
    Ok(())
}

/// The number of media sections and the size of `p`'s current remote description (rtcd's
/// latest answer).
pub async fn remote_sdp_shape(p: &Participant) -> (usize, usize) {
    let sdp =
        p.pc.remote_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default();
    (sdp.matches("\nm=").count(), sdp.len())
}

/// The MediaStreamTrack id of a synthetic track of `kind`.
fn track_id_of(kind: &str) -> &'static str {
    match kind {
        "audio" => "mic",
        "video" => "cam",
        "screen_audio" => "screen-audio",
        _ => "screen",
    }
}

/// A fresh SSRC for a published track: unique in the process, so a track removed and added
/// again (or another participant's) never reuses one rtcd has seen.
fn next_ssrc() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0x5100_0000);
    NEXT.fetch_add(2, Ordering::Relaxed)
}

/// The payload type of `codec` and the audio level extension id (if negotiated) on `sender`'s
/// section; `None` while the sender has no such codec.
/// What a test peer's sending loop learns from its participant before each packet: whether a
/// negotiation happened since the last look (the wire format must then be read again: rtc
/// drops packets that carry anything else) and whether a PLI came in since (an encoder answers
/// with a keyframe), and the audio level its audio is to carry. `look` is `None` once the
/// participant is gone, which ends the loop.
struct SendTurn {
    negotiations_seen: u64,
    plis_seen: u64,
}

/// One [`SendTurn::look`]'s news.
struct SendNews {
    renegotiated: bool,
    pli: bool,
    audio_level: u8,
}

impl Default for SendTurn {
    fn default() -> Self {
        // No negotiation seen yet: the first look reads the wire format.
        Self {
            negotiations_seen: u64::MAX,
            plis_seen: 0,
        }
    }
}

impl SendTurn {
    fn look(&mut self, shared: &Weak<Shared>) -> Option<SendNews> {
        let shared = shared.upgrade()?;
        let negotiations = shared.negotiations.load(Ordering::Relaxed);
        let plis = shared.plis.load(Ordering::Relaxed);
        let news = SendNews {
            renegotiated: negotiations != self.negotiations_seen,
            pli: plis != self.plis_seen,
            audio_level: shared.audio_level.load(Ordering::Relaxed),
        };
        (self.negotiations_seen, self.plis_seen) = (negotiations, plis);
        Some(news)
    }
}

async fn wire_format(sender: &dyn RtpSender, codec: &RTCRtpCodec) -> Option<(u8, Option<u8>)> {
    let params = sender.get_parameters().await.ok()?;
    let codecs = &params.rtp_parameters.codecs;
    let same_mime =
        |c: &&RTCRtpCodecParameters| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type);
    let chosen = codecs
        .iter()
        .filter(same_mime)
        .find(|c| c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line)
        .or_else(|| codecs.iter().find(same_mime))?;
    let level = params
        .rtp_parameters
        .header_extensions
        .iter()
        .find(|e| e.uri == AUDIO_LEVEL_URI)
        .and_then(|e| u8::try_from(e.id).ok());
    Some((chosen.payload_type, level))
}

/// The negotiated mid and rid header extension ids of `sender`'s section, and its mid.
async fn simulcast_ids(
    pc: &Arc<dyn PeerConnection>,
    sender: &dyn RtpSender,
    transceiver_id: RTCRtpTransceiverId,
) -> Option<(u8, u8, String)> {
    let params = sender.get_parameters().await.ok()?;
    let id = |uri: &str| {
        params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == uri)
            .and_then(|e| u8::try_from(e.id).ok())
    };
    let (mid_id, rid_id) = (id(SDES_MID_URI)?, id(SDES_RTP_STREAM_ID_URI)?);
    let mid = transceiver(pc, transceiver_id)
        .await?
        .mid()
        .await
        .ok()
        .flatten()?;
    Some((mid_id, rid_id, mid))
}

/// The transceiver `id` of `pc`, if it still has it.
async fn transceiver(
    pc: &Arc<dyn PeerConnection>,
    id: RTCRtpTransceiverId,
) -> Option<Arc<dyn RtpTransceiver>> {
    pc.get_transceivers()
        .await
        .into_iter()
        .find(|t| t.id() == id)
}

/// The primary video codecs webrtc-rs registers by default (`register_default_codecs`, without
/// H.265), in its order; their RTX codecs follow them into a section by themselves.
fn default_video_codecs() -> Vec<RTCRtpCodec> {
    let video = |mime: &str, fmtp: &str| RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 90_000,
        sdp_fmtp_line: fmtp.to_owned(),
        ..Default::default()
    };
    let h264 = |mode: u8, profile: &str| {
        video(
            "video/H264",
            &format!(
                "level-asymmetry-allowed=1;packetization-mode={mode};profile-level-id={profile}"
            ),
        )
    };
    vec![
        video("video/VP8", ""),
        video("video/VP9", "profile-id=0"),
        video("video/VP9", "profile-id=1"),
        h264(1, "42001f"),
        h264(0, "42001f"),
        h264(1, "42e01f"),
        h264(0, "42e01f"),
        h264(1, "640032"),
        video("video/AV1", "profile-id=0"),
    ]
}

/// Puts `codec` first and the other default video codecs after it in the section of `sender`.
/// webrtc 0.21 offers only the track's own codec (and its RTX) in a section that sends (codec
/// preferences from the track's encodings), but the section is sendrecv and rtcd may forward
/// another publisher's video into it in any codec the section offers, as into a browser's; 0.17
/// offered them all. (`RtpSender::get_capabilities` lists only the sender's own codecs, hence
/// the list.) Audio keeps Opus alone: rtcd forwards nothing else.
async fn offer_every_codec(
    pc: &Arc<dyn PeerConnection>,
    sender: &dyn RtpSender,
    kind: RtpCodecKind,
    codec: &RTCRtpCodec,
) -> anyhow::Result<()> {
    if kind != RtpCodecKind::Video {
        return Ok(());
    }
    let others = default_video_codecs().into_iter().filter(|c| {
        !(c.mime_type.eq_ignore_ascii_case(&codec.mime_type)
            && c.sdp_fmtp_line == codec.sdp_fmtp_line)
    });
    // The payload types are the media engine's: preferences are matched by codec.
    let preferences: Vec<RTCRtpCodecParameters> = std::iter::once(codec.clone())
        .chain(others)
        .map(|rtp_codec| RTCRtpCodecParameters {
            rtp_codec,
            payload_type: 0,
        })
        .collect();
    transceiver(pc, RTCRtpTransceiverId::from(sender.id()))
        .await
        .context("the sender's transceiver is gone")?
        .set_codec_preferences(preferences)
        .await?;
    Ok(())
}

/// A receive-only transceiver of `kind`, remembered with its kind.
async fn add_receiver(
    pc: &Arc<dyn PeerConnection>,
    shared: &Shared,
    kind: RtpCodecKind,
) -> anyhow::Result<()> {
    let t = pc
        .add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await
        .with_context(|| format!("adding a receive-only {kind} transceiver"))?;
    shared.kinds.lock().unwrap().insert(t.id(), kind);
    Ok(())
}

/// A peer connection on one loopback UDP socket, with webrtc-rs's default codecs and
/// interceptors plus [`RtcpTap`], reporting to `shared`; with the kill switch of its sockets if
/// `options` asks for a closable one.
async fn new_peer(
    options: PeerOptions,
    shared: &Arc<Shared>,
) -> anyhow::Result<(Arc<dyn PeerConnection>, Option<Arc<AtomicBool>>)> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    if options.simulcast {
        for uri in [SDES_MID_URI, SDES_RTP_STREAM_ID_URI] {
            media.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                RtpCodecKind::Video,
                None,
            )?;
        }
    }
    let mut registry = register_default_interceptors(Registry::new(), &mut media)?;
    if options.transport_cc {
        registry = configure_twcc_sender_only(registry, &mut media)?;
    }
    if options.stable_nacks {
        registry = registry.with(
            Slot::NackGenerator,
            rtcd::engine::StableNackGenerator::new(
                rtc::interceptor::NackGeneratorBuilder::new().build(),
            ),
        );
    }
    let registry = registry.with(
        Slot::from(RTCP_TAP_SLOT),
        RtcpTap {
            shared: Arc::downgrade(shared),
            reads: VecDeque::new(),
            writes: VecDeque::new(),
        },
    );
    let mut settings = SettingEngineBuilder::new()
        .with_include_loopback_candidate(true)
        .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4])
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
    if options.accept_replays {
        // 0 turns the SRTP replay window off.
        settings = settings.with_srtp_replay_protection_window(0);
    }
    let cut = options
        .closable_socket
        .then(|| Arc::new(AtomicBool::new(false)));
    let runtime: Arc<dyn Runtime> = match &cut {
        Some(cut) => Arc::new(CutRuntime { cut: cut.clone() }),
        None => Arc::new(TokioRuntime),
    };
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings.build())
        .with_runtime(runtime)
        .with_handler(Arc::new(Events {
            shared: Arc::downgrade(shared),
        }))
        // One socket on loopback: the host candidate rtcd's checks answer.
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await
        .context("building the peer connection")?;
    Ok((Arc::new(pc), cut))
}

/// Reads one remote track until it ends, counting payloads `sender|kind|n` into flows.
async fn read_track(track: Arc<dyn TrackRemote>, shared: Weak<Shared>) {
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let Some(shared) = shared.upgrade() else {
            break;
        };
        shared.packets_in.fetch_add(1, Ordering::Relaxed);
        let ssrc = packet.header.ssrc;
        shared
            .remotes
            .lock()
            .unwrap()
            .entry(ssrc)
            .or_insert_with(|| track.clone());
        let mime = shared
            .payload_types
            .lock()
            .unwrap()
            .get(&packet.header.payload_type)
            .cloned()
            .unwrap_or_default();
        if mime.eq_ignore_ascii_case("video/vp8")
            && let Some((publisher, n, keyframe, intact)) = e2ee_check(&packet.payload)
        {
            if !intact {
                shared.e2ee_corrupt.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let key = format!("{publisher:08x}/e2ee");
            shared
                .e2ee_first_keyframe
                .lock()
                .unwrap()
                .entry(key.clone())
                .or_insert(keyframe);
            let mut flows = shared.flows.lock().unwrap();
            let flow = flows.entry(key).or_insert_with(|| Flow {
                ssrc,
                mime: mime.clone(),
                ..Default::default()
            });
            flow.record(u64::from(n), packet.header.sequence_number);
            continue;
        }
        let body = strip_video_prefix(&mime, &packet.payload);
        let text = String::from_utf8_lossy(body);
        let mut parts = text.split('|');
        let tag = (parts.next(), parts.next(), parts.next());
        if let Some(log) = &shared.arrivals {
            let flow = match tag {
                (Some(sender), Some(kind), Some(_)) => format!("{sender}/{kind}"),
                _ => String::new(),
            };
            // The first bytes are `video_prefix`'s: a VP8 frame tag with bit 0 clear, or an
            // H.264 IDR NAL header.
            let keyframe = !flow.is_empty()
                && match mime.to_ascii_lowercase().as_str() {
                    "video/vp8" => packet.payload.get(1).is_some_and(|tag| tag & 0x01 == 0),
                    "video/h264" => packet.payload.first() == Some(&0x65),
                    _ => false,
                };
            log.lock().unwrap().push(Arrival {
                at: Instant::now(),
                ssrc,
                seq: packet.header.sequence_number,
                flow,
                keyframe,
            });
        }
        let (Some(sender), Some(kind), Some(n)) = tag else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let mut flows = shared.flows.lock().unwrap();
        let flow = flows
            .entry(format!("{sender}/{kind}"))
            .or_insert_with(|| Flow {
                ssrc,
                mime: mime.clone(),
                ..Default::default()
            });
        flow.record(n, packet.header.sequence_number);
    }
}

/// The codec of every payload type in `sdp`'s `a=rtpmap` lines, as `kind/name` (`video/VP8`,
/// `audio/opus`): our offers use one table for every section.
fn payload_types(sdp: &str) -> HashMap<u8, String> {
    let mut kind = "";
    let mut out = HashMap::new();
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split(' ').next().unwrap_or_default();
        } else if let Some(map) = line.strip_prefix("a=rtpmap:")
            && let Some((pt, codec)) = map.split_once(' ')
            && let Ok(pt) = pt.parse::<u8>()
        {
            let name = codec.split('/').next().unwrap_or_default();
            out.insert(pt, format!("{kind}/{name}"));
        }
    }
    out
}

/// Makes an offer with its candidates and the declared kinds of our tracks, applies it and sends
/// it to rtcd.
async fn send_offer(
    pc: &Arc<dyn PeerConnection>,
    shared: &Shared,
    out: &mpsc::Sender<pb::ClientSignal>,
) -> anyhow::Result<()> {
    let offer = pc.create_offer(None).await.context("creating an offer")?;
    // Mids exist once the offer is created: name the declared tracks' sections.
    let declared = shared.declared.lock().unwrap().clone();
    let mut tracks = HashMap::new();
    for t in pc.get_transceivers().await {
        if let (Ok(Some(mid)), Ok(Some(sender))) = (t.mid().await, t.sender().await)
            && let Some(kind) = declared.get(&sender.track().track_id().await)
        {
            tracks.insert(mid, *kind as i32);
        }
    }
    pc.set_local_description(offer)
        .await
        .context("applying our offer")?;
    // Complete SDP: the driver gathers the host candidate after set_local_description and the
    // description lists candidates (and end-of-candidates) as soon as it has them.
    let deadline = tokio::time::Instant::now() + GATHERING;
    let sdp = loop {
        let sdp = pc
            .local_description()
            .await
            .context("no local description")?
            .sdp;
        if sdp.contains("a=end-of-candidates") || tokio::time::Instant::now() >= deadline {
            break sdp;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    *shared.payload_types.lock().unwrap() = payload_types(&sdp);
    out.send(pb::ClientSignal {
        signal: Some(pb::client_signal::Signal::Offer(pb::SessionDescription {
            sdp,
            tracks,
        })),
    })
    .await
    .context("signaling stream closed")?;
    Ok(())
}

/// Adds receive-only transceivers until the peer receives on at least `want` sections of
/// `kind` (rtcd's `NegotiationNeeded`; sendrecv sections count, as the protocol says).
async fn ensure_receiving(
    pc: &Arc<dyn PeerConnection>,
    shared: &Shared,
    kind: RtpCodecKind,
    want: u32,
) {
    let kinds = shared.kinds.lock().unwrap().clone();
    let mut have = 0u32;
    for t in pc.get_transceivers().await {
        if kinds.get(&t.id()) == Some(&kind)
            && matches!(
                t.direction().await,
                Ok(RTCRtpTransceiverDirection::Recvonly | RTCRtpTransceiverDirection::Sendrecv)
            )
        {
            have += 1;
        }
    }
    for _ in have..want {
        let _ = add_receiver(pc, shared, kind).await;
    }
}

/// Whether no offer or answer is outstanding. Read from the descriptions, which change under
/// the same lock as the state; the state-change events arrive later, through the driver.
async fn stable(pc: &Arc<dyn PeerConnection>) -> bool {
    pc.pending_local_description().await.is_none()
        && pc.pending_remote_description().await.is_none()
}

/// The participant's signaling loop: records rtcd's messages, applies answers, follows
/// `NegotiationNeeded` and offers whenever asked and stable, so offers and answers never
/// interleave.
async fn drive(
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    mut inbound: impl futures_util::Stream<Item = Result<pb::ServerSignal, tonic::Status>> + Unpin,
    out: mpsc::Sender<pb::ClientSignal>,
    mut control: mpsc::Receiver<Control>,
) {
    use futures_util::StreamExt as _;
    use pb::server_signal::Signal;
    let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
    let mut want_offer = false;
    loop {
        tokio::select! {
            c = control.recv() => match c {
                None => break,
                Some(Control::Send(m)) => { let _ = out.send(m).await; }
                Some(Control::Renegotiate) => want_offer = true,
            },
            m = inbound.next() => {
                let Some(Ok(pb::ServerSignal { signal: Some(signal) })) = m else { break };
                shared.events.lock().unwrap().push(signal.clone());
                shared.event_times.lock().unwrap().push(Instant::now());
                match signal {
                    Signal::Answer(d) => {
                        if let Ok(answer) = RTCSessionDescription::answer(d.sdp)
                            && pc.set_remote_description(answer).await.is_ok()
                        {
                            shared.negotiations.fetch_add(1, Ordering::Relaxed);
                        }
                        for c in pending.drain(..) { let _ = pc.add_ice_candidate(c).await; }
                    }
                    Signal::NegotiationNeeded(_) if shared.hold_offers.load(Ordering::Relaxed) => {
                        shared.offers_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Signal::NegotiationNeeded(n) => {
                        ensure_receiving(&pc, &shared, RtpCodecKind::Audio, n.audio).await;
                        ensure_receiving(&pc, &shared, RtpCodecKind::Video, n.video).await;
                        want_offer = true;
                    }
                    // rtcd's SDP already carries its candidates (it finishes host gathering before
                    // sending it); the trickled copies are recorded but only added with TRICKLE.
                    Signal::Candidate(c) if TRICKLE => {
                        let init = RTCIceCandidateInit {
                            candidate: c.candidate,
                            sdp_mid: c.sdp_mid,
                            sdp_mline_index: c.sdp_mline_index.map(|i| i as u16),
                            ..Default::default()
                        };
                        if pc.remote_description().await.is_some() {
                            let _ = pc.add_ice_candidate(init).await;
                        } else {
                            pending.push(init);
                        }
                    }
                    _ => {}
                }
            }
        }
        if want_offer && stable(&pc).await {
            want_offer = false;
            if let Err(e) = send_offer(&pc, &shared, &out).await {
                tracing::warn!("offer failed: {e:#}");
            }
        }
    }
    shared.closed.store(true, Ordering::Relaxed);
}

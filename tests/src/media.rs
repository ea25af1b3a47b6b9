//! Media test harness: an in-process rtcd with gRPC signaling and the SFU on loopback, and
//! [`Participant`], a real webrtc-rs peer that joins through the real gRPC service, publishes
//! synthetic Opus / VP8 RTP whose payload names the sender, and records what it receives.
//!
//! Participants offer only from a stable state and ignore an rtcd offer that arrives while their
//! own is outstanding (webrtc-rs 0.17 cannot roll back a local offer, so they cannot be the
//! polite peer; the glare test provokes the collision deliberately and checks rtcd's refusal).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use base64::Engine;
use bytes::Bytes;
use rtcd::auth::{ClientId, Principal, Secret};
use rtcd::config::Config;
use rtcd_proto::v1 as pb;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::Channel;
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMux, UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::signaling_state::RTCSignalingState;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use webrtc::rtp::extension::HeaderExtension;
use webrtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

/// Whether participants trickle candidates (false: complete SDP, like the stack check).
const TRICKLE: bool = false;

/// How long any eventual condition may take (generous: DTLS retransmits after 1 s in debug).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// An rtcd running in this process, with its temp store.
pub struct TestRtcd {
    /// The daemon.
    pub rtcd: rtcd::Rtcd,
    _dir: tempfile::TempDir,
}

impl TestRtcd {
    /// Starts rtcd on loopback ephemeral ports; `extra` adds or overrides `RTCD_*` variables.
    pub async fn start(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // Media settings on loopback come from the shared test environment; calls here drain
        // at once on shutdown unless a test asks otherwise.
        let mut overrides = vec![("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0")];
        overrides.extend_from_slice(extra);
        let env = crate::daemon::test_env(dir.path(), &overrides);
        let config = Config::load(None, env)?;
        if let Ok(level) = std::env::var("RTCD_TEST_LOG") {
            rtcd::logging::init(&rtcd::config::LoggerConfig { level, json: false });
        }
        let rtcd = rtcd::Rtcd::start(config).await?;
        Ok(Self { rtcd, _dir: dir })
    }

    /// The daemon and its store directory, separately (to shut down in a task while the
    /// directory outlives it).
    pub fn split(self) -> (rtcd::Rtcd, tempfile::TempDir) {
        (self.rtcd, self._dir)
    }

    /// Registers a client and returns its `authorization` value (Basic).
    pub async fn register(&self, id: &str) -> anyhow::Result<String> {
        let key = format!("{id}-key-that-is-long-enough-0123456789");
        self.rtcd
            .auth()
            .register(
                Some(&Principal::Admin),
                ClientId::parse(id)?,
                Secret::new(key.clone()),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            )
            .await?;
        Ok(basic(id, &key))
    }

    /// The gRPC endpoint.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.rtcd.grpc_addr()
    }

    /// A gRPC client (plaintext, loopback).
    pub async fn client(&self) -> anyhow::Result<SignalingClient<Channel>> {
        Ok(SignalingClient::connect(format!("http://{}", self.grpc_addr())).await?)
    }
}

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
        })),
    }
}

/// Synthetic video sends a keyframe this often (in packets), besides after each PLI.
const KEYFRAME_EVERY: u64 = 50;

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

/// H.264 (constrained baseline, packetization mode 1: what browsers offer first).
pub fn h264() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        ..Default::default()
    }
}

/// How a participant's peer connection is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerOptions {
    /// All ICE traffic on one UDP socket (a UDP mux) that [`Participant::vanish`] can cut:
    /// the peer then goes silent without a DTLS close_notify, like a dead network.
    pub closable_socket: bool,
    /// Accept an SRTP packet that was already received. webrtc-rs's SRTP sessions drop such
    /// replays by default (a 64-packet window), which would hide a retransmission of a packet
    /// the peer already has; a retransmission test turns this on to see it.
    pub accept_replays: bool,
}

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<pb::server_signal::Signal>>,
    flows: Mutex<HashMap<String, Flow>>,
    /// Sender reports received, by the SSRC they describe (one of the flows we receive).
    sender_reports: Mutex<HashMap<u32, u64>>,
    /// Receiver reports about our published tracks, by kind.
    receiver_reports: Mutex<HashMap<String, u64>>,
    /// RFC 6464 level our audio carries (0 = loudest, 127 = silence).
    audio_level: AtomicU8,
    plis: AtomicU64,
    negotiations: AtomicU64,
    closed: AtomicBool,
    /// While set, rtcd's `NegotiationNeeded` requests are ignored (the participant keeps its
    /// current sections, as a slow client would).
    hold_offers: AtomicBool,
    offers_dropped: AtomicU64,
    /// Kinds declared in every offer's `tracks`, by the MediaStreamTrack id of our track.
    declared: Mutex<HashMap<String, pb::TrackKind>>,
}

/// A published track's sender and the flag that stops its packet generator.
type Outgoing = (Arc<RTCRtpSender>, Arc<AtomicBool>);

enum Control {
    Renegotiate,
    Send(pb::ClientSignal),
}

/// A webrtc-rs end user joined through gRPC.
pub struct Participant {
    /// The session ID (also the payload sender tag).
    pub session: String,
    /// The peer connection.
    pub pc: Arc<RTCPeerConnection>,
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
    senders: Mutex<HashMap<String, Outgoing>>,
    socket: Option<Cuttable>,
}

/// The UDP mux of a peer built with [`PeerOptions::closable_socket`], and its kill switch.
struct Cuttable {
    mux: Arc<UDPMuxDefault>,
    cut: Arc<AtomicBool>,
}

/// A UDP socket that goes deaf and mute once `cut` is set: sends are swallowed, arrivals are
/// discarded. Closing webrtc-rs's UDP mux is not enough to silence a peer: its connections
/// still send through the mux's socket (ICE keepalives kept rtcd's side connected).
struct CuttableSocket {
    socket: tokio::net::UdpSocket,
    cut: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl webrtc::util::Conn for CuttableSocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        loop {
            let got = self.socket.recv_from(buf).await?;
            if !self.cut.load(Ordering::Relaxed) {
                return Ok(got);
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        if self.cut.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        if self.cut.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

impl Drop for Participant {
    /// Stops the packet generators (they would otherwise outlive the participant).
    fn drop(&mut self) {
        let senders = self.senders.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, stop) in senders.values() {
            stop.store(true, Ordering::Relaxed);
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
        let (out_tx, out_rx) = mpsc::channel::<pb::ClientSignal>(64);
        out_tx
            .send(join(call, session, permissions))
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
        let (pc, socket) = new_peer(options).await?;
        let shared = Arc::new(Shared {
            audio_level: AtomicU8::new(10),
            ..Default::default()
        });
        let (control_tx, control_rx) = mpsc::channel(16);
        record_incoming(&pc, &shared);
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
            socket,
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
        let mime = if kind == "audio" || kind == "screen_audio" {
            MIME_TYPE_OPUS
        } else {
            MIME_TYPE_VP8
        };
        let codec = RTCRtpCodecCapability {
            mime_type: mime.to_owned(),
            ..Default::default()
        };
        self.add_track_with(kind, codec, interval, pad).await
    }

    /// Like [`Participant::add_track_paced`] with an explicit codec (e.g. [`h264`]).
    pub async fn add_track_with(
        &self,
        kind: &str,
        codec: RTCRtpCodecCapability,
        interval: Duration,
        pad: usize,
    ) -> anyhow::Result<()> {
        let track_id = track_id_of(kind);
        let track = Arc::new(TrackLocalStaticRTP::new(
            codec,
            track_id.to_owned(),
            self.session.clone(),
        ));
        let local: Arc<dyn TrackLocal + Send + Sync> = track.clone();
        let sender = self.pc.add_track(local).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let our_ssrc = sender
            .get_parameters()
            .await
            .encodings
            .first()
            .map(|e| e.ssrc);
        // Count PLIs the SFU sends us, and its receiver reports about this track.
        let shared = Arc::downgrade(&self.shared);
        let s = sender.clone();
        let k = kind.to_owned();
        tokio::spawn(async move {
            while let Ok((packets, _)) = s.read_rtcp().await {
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                for p in packets {
                    let any = p.as_any();
                    if any.is::<PictureLossIndication>() {
                        shared.plis.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(rr) = any.downcast_ref::<ReceiverReport>()
                        && rr.reports.iter().any(|r| Some(r.ssrc) == our_ssrc)
                    {
                        *shared
                            .receiver_reports
                            .lock()
                            .unwrap()
                            .entry(k.clone())
                            .or_default() += 1;
                    }
                }
            }
        });
        let tag = format!("{}|{}|", self.session, kind);
        let audio = kind == "audio" || kind == "screen_audio";
        let mime = track.codec().mime_type.to_ascii_lowercase();
        let st = stop.clone();
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut n: u64 = 0;
            let ssrc = rand_ssrc(&tag);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let padding = "x".repeat(pad);
            let mut plis_seen = 0;
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                // Video is a keyframe every KEYFRAME_EVERY packets and right after a PLI, as an
                // encoder would send it: an SFU may hold a new subscriber's video until one.
                let plis = shared
                    .upgrade()
                    .map_or(0, |s| s.plis.load(Ordering::Relaxed));
                let keyframe = n.is_multiple_of(KEYFRAME_EVERY) || plis != plis_seen;
                plis_seen = plis;
                let mut payload = if audio {
                    Vec::new()
                } else {
                    video_prefix(&mime, keyframe).to_vec()
                };
                payload.extend_from_slice(format!("{tag}{n}|{padding}").as_bytes());
                let packet = webrtc::rtp::packet::Packet {
                    header: webrtc::rtp::header::Header {
                        version: 2,
                        marker: true,
                        sequence_number: n as u16,
                        timestamp: (n as u32).wrapping_mul(if audio { 960 } else { 3000 }),
                        ssrc,
                        ..Default::default()
                    },
                    payload: Bytes::from(payload),
                };
                let exts = if audio {
                    let level = shared
                        .upgrade()
                        .map_or(127, |s| s.audio_level.load(Ordering::Relaxed));
                    vec![HeaderExtension::AudioLevel(AudioLevelExtension {
                        level,
                        voice: level < 127,
                    })]
                } else {
                    Vec::new()
                };
                let _ = track.write_rtp_with_extensions(&packet, &exts).await;
                n += 1;
            }
        });
        self.senders
            .lock()
            .unwrap()
            .insert(kind.to_owned(), (sender, stop));
        Ok(())
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
        self.pc.remove_track(&sender).await?;
        Ok(())
    }

    /// For a participant that publishes nothing: a receive-only audio transceiver (an offer needs
    /// a media section to set up the transport), then the first offer.
    pub async fn receive_only(&self) -> anyhow::Result<()> {
        self.pc
            .add_transceiver_from_kind(
                RTPCodecType::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: Vec::new(),
                }),
            )
            .await?;
        self.renegotiate().await
    }

    /// Adds `audio` and `video` receive-only transceivers (no offer yet), as a browser that
    /// expects media does before its first offer.
    pub async fn add_receivers(&self, audio: usize, video: usize) -> anyhow::Result<()> {
        for (kind, n) in [(RTPCodecType::Audio, audio), (RTPCodecType::Video, video)] {
            for _ in 0..n {
                self.pc
                    .add_transceiver_from_kind(
                        kind,
                        Some(RTCRtpTransceiverInit {
                            direction: RTCRtpTransceiverDirection::Recvonly,
                            send_encodings: Vec::new(),
                        }),
                    )
                    .await?;
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
        let flow = self
            .flows()
            .remove(&format!("{sender}/{kind}"))
            .context("no such flow yet")?;
        let (seq, n) = flow.latest.context("no packet yet")?;
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: flow.ssrc,
            nacks: vec![NackPair {
                packet_id: seq,
                lost_packets: 0,
            }],
        };
        self.pc.write_rtcp(&[Box::new(nack)]).await?;
        Ok(n)
    }

    /// Sender reports received for the SSRC `ssrc`.
    pub fn sender_reports(&self, ssrc: u32) -> u64 {
        self.shared
            .sender_reports
            .lock()
            .unwrap()
            .get(&ssrc)
            .copied()
            .unwrap_or(0)
    }

    /// Receiver reports received about this participant's `kind` track.
    pub fn receiver_reports(&self, kind: &str) -> u64 {
        self.shared
            .receiver_reports
            .lock()
            .unwrap()
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Makes the peer go silent at once, as if its network died: the packet generators stop and
    /// its UDP socket closes, so nothing (not even a DTLS close_notify) reaches rtcd, while the
    /// gRPC stream stays open. Needs [`PeerOptions::closable_socket`].
    pub fn vanish(&self) -> anyhow::Result<()> {
        let socket = self
            .socket
            .as_ref()
            .context("joined without a closable socket")?;
        for (_, (_, stop)) in self.senders.lock().unwrap().iter() {
            stop.store(true, Ordering::Relaxed);
        }
        socket.cut.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// PLIs the SFU sent to this participant's tracks.
    pub fn plis(&self) -> u64 {
        self.shared.plis.load(Ordering::Relaxed)
    }

    /// Answers to this participant's offers applied so far (every renegotiation ends with one).
    pub fn negotiations(&self) -> u64 {
        self.shared.negotiations.load(Ordering::Relaxed)
    }

    /// Every server event so far.
    pub fn events(&self) -> Vec<pb::server_signal::Signal> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Whether an event matching `f` arrived.
    pub fn saw(&self, f: impl Fn(&pb::server_signal::Signal) -> bool) -> bool {
        self.shared.events.lock().unwrap().iter().any(f)
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
        if let Some(socket) = &self.socket {
            let _ = socket.mux.close().await;
        }
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

fn rand_ssrc(tag: &str) -> u32 {
    tag.bytes()
        .fold(0x9e37_79b9u32, |h, b| h.rotate_left(5) ^ u32::from(b))
}

async fn new_peer(
    options: PeerOptions,
) -> anyhow::Result<(Arc<RTCPeerConnection>, Option<Cuttable>)> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned(),
        },
        RTPCodecType::Audio,
        None,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_interface_filter(Box::new(|n: &str| n == "lo"));
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    if options.accept_replays {
        settings.disable_srtp_replay_protection(true);
    }
    let socket = if options.closable_socket {
        let cut = Arc::new(AtomicBool::new(false));
        let socket = CuttableSocket {
            socket: tokio::net::UdpSocket::bind("127.0.0.1:0").await?,
            cut: cut.clone(),
        };
        let mux = UDPMuxDefault::new(UDPMuxParams::new(socket));
        settings.set_udp_network(UDPNetwork::Muxed(mux.clone()));
        Some(Cuttable { mux, cut })
    } else {
        None
    };
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
    Ok((pc, socket))
}

fn record_incoming(pc: &Arc<RTCPeerConnection>, shared: &Arc<Shared>) {
    let shared = Arc::downgrade(shared);
    pc.on_track(Box::new(move |track, receiver, _| {
        let shared = shared.clone();
        // Sender reports from rtcd about this track (reading also drives the interceptors).
        let reports = shared.clone();
        let ssrc = track.ssrc();
        tokio::spawn(async move {
            while let Ok((packets, _)) = receiver.read_rtcp().await {
                let Some(shared) = reports.upgrade() else {
                    break;
                };
                for p in packets {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>()
                        && sr.ssrc == ssrc
                    {
                        *shared
                            .sender_reports
                            .lock()
                            .unwrap()
                            .entry(ssrc)
                            .or_default() += 1;
                    }
                }
            }
        });
        let mime = track.codec().capability.mime_type;
        tokio::spawn(async move {
            while let Ok((packet, _)) = track.read_rtp().await {
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let body = strip_video_prefix(&mime, &packet.payload);
                let text = String::from_utf8_lossy(body);
                let mut parts = text.split('|');
                let (Some(sender), Some(kind), Some(n)) =
                    (parts.next(), parts.next(), parts.next())
                else {
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
        });
        Box::pin(async {})
    }));
}

async fn send_offer(
    pc: &RTCPeerConnection,
    shared: &Shared,
    out: &mpsc::Sender<pb::ClientSignal>,
) -> anyhow::Result<()> {
    let offer = pc.create_offer(None).await?;
    // Mids exist once the offer is created: name the declared tracks' sections.
    let declared = shared.declared.lock().unwrap().clone();
    let mut tracks = HashMap::new();
    for t in pc.get_transceivers().await {
        if let (Some(mid), Some(track)) = (t.mid(), t.sender().await.track().await)
            && let Some(kind) = declared.get(track.id())
        {
            tracks.insert(mid.to_string(), *kind as i32);
        }
    }
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await?;
    let _ = gathered.recv().await;
    let sdp = pc
        .local_description()
        .await
        .context("no local description")?
        .sdp;
    out.send(pb::ClientSignal {
        signal: Some(pb::client_signal::Signal::Offer(pb::SessionDescription {
            sdp,
            tracks,
        })),
    })
    .await?;
    Ok(())
}

/// Adds receive-only transceivers until the peer receives on at least `want` sections of
/// `kind` (rtcd's `NegotiationNeeded`; sendrecv sections count, as the protocol says).
async fn ensure_receiving(pc: &RTCPeerConnection, kind: RTPCodecType, want: u32) {
    let mut have = 0u32;
    for t in pc.get_transceivers().await {
        let d = t.direction();
        if t.kind() == kind
            && matches!(
                d,
                RTCRtpTransceiverDirection::Recvonly | RTCRtpTransceiverDirection::Sendrecv
            )
        {
            have += 1;
        }
    }
    for _ in have..want {
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: Vec::new(),
        };
        let _ = pc.add_transceiver_from_kind(kind, Some(init)).await;
    }
}

async fn drive(
    pc: Arc<RTCPeerConnection>,
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
                        ensure_receiving(&pc, RTPCodecType::Audio, n.audio).await;
                        ensure_receiving(&pc, RTPCodecType::Video, n.video).await;
                        want_offer = true;
                    }
                    // rtcd's SDP already carries its candidates (it finishes host gathering before
                    // sending it); the trickled copies are recorded but only added with TRICKLE.
                    Signal::Candidate(c) if TRICKLE => {
                        let init = RTCIceCandidateInit {
                            candidate: c.candidate,
                            sdp_mid: c.sdp_mid,
                            sdp_mline_index: c.sdp_mline_index.map(|i| i as u16),
                            username_fragment: None,
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
        if want_offer && pc.signaling_state() == RTCSignalingState::Stable {
            want_offer = false;
            let _ = send_offer(&pc, &shared, &out).await;
        }
    }
    shared.closed.store(true, Ordering::Relaxed);
}

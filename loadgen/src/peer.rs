//! One simulated WebRTC endpoint: a str0m `Rtc` (sans-IO, RTP mode) driven by one tokio task
//! that owns its UDP socket. It publishes synthetic, stamped RTP at the configured rates,
//! counts what it receives (loss by sequence number, latency from the stamp), and talks to its
//! signaling adapter (ours, Janus) only through two bounded channels, so the same peer code
//! measures every target.
//!
//! Why str0m and not webrtc-rs: rtcd is built on webrtc-rs, so a webrtc-rs client would share
//! its bugs and mirror its costs; str0m is an independent stack (an interop check too), and one
//! task per peer without internal tasks or locks keeps the client cheap per packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::{Counters, StreamLoss, now_micros};

/// What a published track is, as the proxy protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Opus audio, 20 ms packets.
    Microphone,
    /// VP8 camera video.
    Camera,
    /// VP8 screen share.
    Screen,
}

impl Source {
    /// The proxy protocol's name for the source.
    pub fn name(self) -> &'static str {
        match self {
            Source::Microphone => "microphone",
            Source::Camera => "camera",
            Source::Screen => "screen",
        }
    }

    fn kind(self) -> MediaKind {
        match self {
            Source::Microphone => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }
}

/// A track a peer publishes: its rate and packet size.
#[derive(Debug, Clone, Copy)]
pub struct TrackSpec {
    /// What it is.
    pub source: Source,
    /// Packets per second (audio: 50; video: bitrate / 8 / payload size).
    pub packets_per_second: u32,
    /// RTP payload bytes per packet (the stamp included).
    pub payload_bytes: usize,
    /// Frames per second (video packets go out in per-frame bursts; audio: 50).
    pub frames_per_second: u32,
    /// One simulcast layer of a camera (an index into [`CAMERA_LAYERS`]): the layers of a
    /// camera are consecutive specs with `Some(0)`, `Some(1)`, `Some(2)`, published in one
    /// media section with one rid each. None: a track of its own (no rids).
    pub layer: Option<usize>,
}

/// A simulcast layer of the camera, as the browser SDK publishes it (`sdk/src/layers.ts`
/// `CAMERA_LAYERS`, docs/web-client.md): its rid, the picture size its keyframes announce (of a
/// 1280 x 720 capture), frame rate and bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraLayer {
    /// The rid (`a=rid:<rid> send`).
    pub rid: &'static str,
    /// Picture width in pixels (in the VP8 keyframe header).
    pub width: u16,
    /// Picture height in pixels.
    pub height: u16,
    /// Frames per second.
    pub frames_per_second: u32,
    /// Payload bitrate, kbit/s (the SDK's `maxBitrate`).
    pub kbps: u32,
}

/// The SDK's three camera layers, lowest first (the order of its `a=simulcast:send q;h;f`):
/// `q` a quarter of the capture at 15 frames a second and 50 kbit/s, `h` half at 500 kbit/s,
/// `f` the full 1280 x 720 at 1.5 Mbit/s.
pub const CAMERA_LAYERS: [CameraLayer; 3] = [
    CameraLayer {
        rid: "q",
        width: 320,
        height: 180,
        frames_per_second: 15,
        kbps: 50,
    },
    CameraLayer {
        rid: "h",
        width: 640,
        height: 360,
        frames_per_second: 30,
        kbps: 500,
    },
    CameraLayer {
        rid: "f",
        width: 1280,
        height: 720,
        frames_per_second: 30,
        kbps: 1500,
    },
];

/// The stamp at the end of every payload: magic, a tag (which simulcast layer), publisher,
/// send time. The receiver needs nothing else to compute loss (from RTP sequence numbers),
/// latency and what it received of each layer.
pub const STAMP_BYTES: usize = 16;
const MAGIC: [u8; 3] = *b"LG0";
/// The tag of a track without layers (the stamp of the tool before simulcast: `LG01`).
const PLAIN: u8 = b'1';

/// Writes the stamp into the last [`STAMP_BYTES`] of `payload`.
pub fn stamp(payload: &mut [u8], publisher: u32, sent_micros: u64) {
    stamp_layer(payload, publisher, sent_micros, None);
}

/// Writes the stamp of a packet of simulcast layer `layer` (an index into [`CAMERA_LAYERS`];
/// None: a track without layers) into the last [`STAMP_BYTES`] of `payload`.
pub fn stamp_layer(payload: &mut [u8], publisher: u32, sent_micros: u64, layer: Option<usize>) {
    let at = payload.len() - STAMP_BYTES;
    payload[at..at + 3].copy_from_slice(&MAGIC);
    payload[at + 3] = layer
        .and_then(|l| CAMERA_LAYERS.get(l))
        .map_or(PLAIN, |l| l.rid.as_bytes()[0]);
    payload[at + 4..at + 8].copy_from_slice(&publisher.to_be_bytes());
    payload[at + 8..].copy_from_slice(&sent_micros.to_be_bytes());
}

/// The simulcast layer a stamped payload belongs to (None: no stamp, or a track without
/// layers).
pub fn read_layer(payload: &[u8]) -> Option<usize> {
    let at = payload.len().checked_sub(STAMP_BYTES)?;
    if payload[at..at + 3] != MAGIC {
        return None;
    }
    let tag = payload[at + 3];
    CAMERA_LAYERS
        .iter()
        .position(|l| l.rid.as_bytes()[0] == tag)
}

/// Reads a stamp: (publisher, send time in µs), or None if the payload carries none.
pub fn read_stamp(payload: &[u8]) -> Option<(u32, u64)> {
    let at = payload.len().checked_sub(STAMP_BYTES)?;
    if payload[at..at + 3] != MAGIC {
        return None;
    }
    let publisher = u32::from_be_bytes(payload[at + 4..at + 8].try_into().ok()?);
    let sent = u64::from_be_bytes(payload[at + 8..].try_into().ok()?);
    Some((publisher, sent))
}

/// A VP8 payload of `len` bytes: a one-byte payload descriptor (start of partition), a frame
/// header (key frames carry the 10-byte key frame header with the P bit clear), then filler;
/// the stamp goes over the tail. SFUs that parse VP8 see well-formed packets.
fn vp8_payload(len: usize, first_of_frame: bool, keyframe: bool) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = if first_of_frame { 0x10 } else { 0x00 };
    if first_of_frame && len > 11 {
        if keyframe {
            // Frame tag (P = 0, version 0, show frame), start code, 640x360.
            p[1..11].copy_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        } else {
            p[1..4].copy_from_slice(&[0x11, 0x02, 0x00]);
        }
    }
    p
}

/// The numbers one VP8 encoder writes into its payload descriptors: a simulcast publisher runs
/// one per layer, each from its own start (as browsers' encoders do), which is what an SFU
/// that switches a subscriber between layers must renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Numbers {
    /// The 15-bit picture ID of the current frame.
    pub picture_id: u16,
    /// TL0PICIDX: every frame is in the base temporal layer, so it counts frames too.
    pub tl0picidx: u8,
}

impl Vp8Numbers {
    /// The numbers of the next frame.
    pub fn next(self) -> Self {
        Self {
            picture_id: (self.picture_id + 1) & 0x7fff,
            tl0picidx: self.tl0picidx.wrapping_add(1),
        }
    }
}

/// Bytes of the payload descriptor [`vp8_layer_payload`] writes.
const VP8_DESCRIPTOR: usize = 6;

/// A VP8 payload of `len` bytes as a simulcast layer's encoder sends it (RFC 7741 §4.2): the
/// descriptor with X set and I (a 15-bit picture ID), L (TL0PICIDX) and T (TID 0, layer sync,
/// KEYIDX 0), S on the first packet of a frame; the first packet of a frame then carries the
/// frame tag (RFC 6386 §9.1), and a keyframe's the keyframe header with the picture's `size`
/// (start code 9d 01 2a, 14-bit width and height, little-endian, no scaling), from which an SFU
/// learns the layer's resolution. Filler follows; the stamp goes over the tail.
pub fn vp8_layer_payload(
    len: usize,
    first_of_frame: bool,
    keyframe: bool,
    numbers: Vp8Numbers,
    size: (u16, u16),
) -> Vec<u8> {
    let mut p = vec![0u8; len];
    if len < VP8_DESCRIPTOR + 10 {
        return p;
    }
    p[0] = 0x80 | if first_of_frame { 0x10 } else { 0x00 };
    p[1] = 0xe0; // I, L, T
    p[2] = 0x80 | (numbers.picture_id >> 8) as u8 & 0x7f;
    p[3] = numbers.picture_id as u8;
    p[4] = numbers.tl0picidx;
    p[5] = 0x20; // TID 0, Y (layer sync), KEYIDX 0
    if first_of_frame {
        let at = VP8_DESCRIPTOR;
        if keyframe {
            let (w, h) = (size.0 & 0x3fff, size.1 & 0x3fff);
            // Frame tag: P = 0 (key frame), version 0, show frame, first partition 16 bytes.
            p[at..at + 6].copy_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
            p[at + 6..at + 8].copy_from_slice(&w.to_le_bytes());
            p[at + 8..at + 10].copy_from_slice(&h.to_le_bytes());
        } else {
            p[at..at + 3].copy_from_slice(&[0x11, 0x02, 0x00]);
        }
    }
    p
}

/// Signaling from the adapter to the peer.
#[derive(Debug)]
pub enum ToPeer {
    /// The remote answer to our offer.
    Answer(String),
    /// A remote offer: a Janus subscriber connection's (rtcd never offers).
    Offer(String),
    /// rtcd's `negotiation_needed` (docs/protocol.md section 4a): offer again, with at least
    /// this many receiving sections of each kind.
    NegotiationNeeded {
        /// Receiving audio sections wanted.
        audio: u32,
        /// Receiving video sections wanted.
        video: u32,
    },
    /// A trickled remote candidate (`candidate:...`; empty = end of candidates).
    Candidate(String),
}

/// Signaling from the peer to the adapter.
#[derive(Debug)]
pub enum FromPeer {
    /// Our offer, with the source of each sending mid.
    Offer {
        /// The SDP.
        sdp: String,
        /// mid -> source for the sections we send on.
        tracks: Vec<(String, Source)>,
    },
    /// Our answer to a remote offer (Janus subscriber connections only).
    Answer(String),
    /// ICE connected: the join is done (for the join-time measurement).
    Connected,
    /// The first packet of a simulcast layer arrived on receiving section `mid`: the adapter may tell the target which layer this participant
    /// wants there (ours: a `track_views` view of `size`). Sent only when the peer has a
    /// [`PeerConfig::receive_layer`].
    Receiving {
        /// The receiving section.
        mid: String,
        /// The view size that selects the wanted layer, in pixels.
        size: (u16, u16),
    },
}

/// The view size that selects layer `layer` of [`CAMERA_LAYERS`] (the layer's own picture: the
/// lowest layer at least as large). Sent once per section: a view that reaches rtcd before it
/// has read the layers' sizes applies once it reads them.
pub fn view_size(layer: usize) -> (u16, u16) {
    let l = CAMERA_LAYERS[layer.min(CAMERA_LAYERS.len() - 1)];
    (l.width, l.height)
}

/// How one peer is set up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Who publishes (goes into every stamp; unique in the run).
    pub publisher: u32,
    /// The tracks to publish.
    pub tracks: Vec<TrackSpec>,
    /// Send the first offer (with the tracks; a receive-only audio section if there are none).
    /// False for a connection that waits for the remote's offer (a Janus subscriber).
    pub offer_first: bool,
    /// Whether this connection reaching ICE connected is the participant's join (counted in
    /// [`Counters::connected`], which the ramp waits on). False for a participant's second
    /// connection (a Janus subscriber), so that the count stays one per participant.
    pub counts_as_join: bool,
    /// The address to bind and advertise (a host candidate).
    pub bind_ip: std::net::IpAddr,
    /// A video key frame every this often (the first frame is one too).
    pub keyframe_interval: Duration,
    /// The simulcast layer (an index into [`CAMERA_LAYERS`]) this participant wants of every
    /// camera it receives; None: whatever the target sends.
    pub receive_layer: Option<usize>,
}

/// What a peer reports when it stops.
pub struct PeerOutcome {
    /// Time from `started` to ICE connected, if it connected.
    pub join_time: Option<Duration>,
    /// Loss per received stream.
    pub loss: StreamLoss,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// When a track's packets are due, shared by the WebRTC peers and the raw-relay participants so
/// that both send the same pattern: one burst per frame at the track's frame rate (as an
/// encoder's output), a fractional packets-per-frame rate spread over frames, and a task that
/// fell behind skipping frames rather than bursting to catch up.
pub struct FrameClock {
    interval: Duration,
    per_frame: f64,
    /// Fractional packets carried from frame to frame.
    carry: f64,
    next: Instant,
    frames: u64,
}

impl FrameClock {
    /// A clock for `spec` whose first frame is due at `start`.
    pub fn new(spec: &TrackSpec, start: Instant) -> Self {
        let fps = spec.frames_per_second.max(1);
        Self {
            interval: Duration::from_secs(1) / fps,
            per_frame: spec.packets_per_second as f64 / fps as f64,
            carry: 0.0,
            next: start,
            frames: 0,
        }
    }

    /// When the next frame is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Frames handed out so far (the index of the next frame).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The number of packets (at least one) of the frame due at `now`, advancing to the next
    /// frame; None while it is not due.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        if now < self.next {
            return None;
        }
        let want = self.per_frame + self.carry;
        let packets = want.floor().max(1.0) as u64;
        self.carry = (want - packets as f64).max(0.0);
        self.frames += 1;
        self.next += self.interval;
        if self.next < now {
            self.next = now + self.interval;
        }
        Some(packets)
    }
}

/// Packets per second `tracks` are scheduled to send (for [`Counters::scheduled_pps`]).
fn scheduled_pps(tracks: &[Publishing]) -> u64 {
    tracks
        .iter()
        .map(|t| u64::from(t.spec.packets_per_second))
        .sum()
}

struct Publishing {
    spec: TrackSpec,
    mid: Mid,
    /// The simulcast layer's rid (None: a section with one stream).
    rid: Option<Rid>,
    /// A simulcast layer's VP8 numbers (None: the plain payload of [`vp8_payload`]).
    vp8: Option<Vp8Numbers>,
    pt: Option<Pt>,
    seq: u64,
    clock: FrameClock,
    last_keyframe: Instant,
    /// The SFU asked for a keyframe (PLI / FIR): the next frame is one, as an encoder would do.
    keyframe_requested: bool,
}

fn crypto() -> Arc<str0m::config::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<str0m::config::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// One DTLS certificate for every peer of the process, made once (`run` makes it before it times
/// anything). Each str0m peer would otherwise generate its own key and certificate with OpenSSL
/// as it joins, on the load tool's one core, which is what limits a join storm (the server's
/// core is mostly idle: docs/benchmarks.md). Servers see one certificate fingerprint per peer
/// either way (they check each peer's against its own SDP), so what is measured is unchanged.
pub fn dtls_cert() -> str0m::config::DtlsCert {
    static CERT: std::sync::OnceLock<str0m::config::DtlsCert> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        crypto()
            .dtls_provider
            .generate_certificate()
            .expect("the OpenSSL provider generates certificates")
    })
    .clone()
}

/// Runs one peer until `stop` fires or its connection fails. `started` is when the join began
/// (token minted), for the join time.
pub async fn run(
    config: PeerConfig,
    started: Instant,
    to_adapter: mpsc::Sender<FromPeer>,
    mut from_adapter: mpsc::Receiver<ToPeer>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> PeerOutcome {
    let mut peer = Peer {
        loss: StreamLoss::default(),
        join_time: None,
        counters,
        publishing: Vec::new(),
        tracks: Vec::new(),
        receiving: Vec::new(),
        pending: None,
        wanted: None,
        connected: false,
        counts_as_join: config.counts_as_join,
        receive_layer: config.receive_layer,
        views: Vec::new(),
    };
    let error = peer
        .drive(config, started, &to_adapter, &mut from_adapter, &stop)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    if peer.connected {
        // Its media stops with it.
        peer.counters
            .scheduled_pps
            .fetch_sub(scheduled_pps(&peer.publishing), Relaxed);
    }
    PeerOutcome {
        join_time: peer.join_time,
        loss: peer.loss,
        error,
    }
}

struct Peer {
    loss: StreamLoss,
    join_time: Option<Duration>,
    counters: Arc<Counters>,
    publishing: Vec<Publishing>,
    /// mid -> source of the sections we send on, repeated in every offer: rtcd takes each
    /// offer's `tracks` as the complete list.
    tracks: Vec<(String, Source)>,
    /// Our receive-only sections and their kind. Never stopped: rtcd answers an unused one
    /// `inactive` and puts a later track on it.
    receiving: Vec<(Mid, MediaKind)>,
    /// Our offer awaiting its answer.
    pending: Option<SdpPendingOffer>,
    /// The latest `NegotiationNeeded` counts not offered for yet: requests that arrive while
    /// an offer is pending are coalesced into one offer after its answer (latest counts win).
    wanted: Option<(u32, u32)>,
    /// DTLS connected (media may be sent).
    connected: bool,
    counts_as_join: bool,
    /// [`PeerConfig::receive_layer`].
    receive_layer: Option<usize>,
    /// Receiving sections a simulcast layer arrived on (their view sent): the SSRC it came
    /// with, the section.
    views: Vec<(Ssrc, Mid)>,
}

impl Peer {
    async fn drive(
        &mut self,
        config: PeerConfig,
        started: Instant,
        to_adapter: &mpsc::Sender<FromPeer>,
        from_adapter: &mut mpsc::Receiver<ToPeer>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let socket = UdpSocket::bind(SocketAddr::new(config.bind_ip, 0)).await?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(crypto())
            .set_dtls_cert(dtls_cert())
            .set_rtp_mode(true)
            .set_stats_interval(None)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp")?)
            .context("local candidate refused")?;

        if config.offer_first {
            let mut api = rtc.sdp_api();
            for (i, spec) in config.tracks.iter().enumerate() {
                // The layers of a camera share the section the first of them opens.
                let layered = spec.layer.and_then(|_| {
                    self.publishing
                        .iter()
                        .find(|p| p.spec.source == spec.source && p.rid.is_some())
                        .map(|p| p.mid)
                });
                let mid = match layered {
                    Some(mid) => mid,
                    None => {
                        // As a browser offers simulcast: `a=rid:<rid> send` per layer and
                        // `a=simulcast:send q;h;f`, lowest first; str0m adds the rid header
                        // extensions (rtp-stream-id, repaired-rtp-stream-id) to the section.
                        let simulcast = spec.layer.map(|_| {
                            let mut simulcast = Simulcast::new();
                            for t in config.tracks[i..]
                                .iter()
                                .filter(|t| t.source == spec.source)
                            {
                                if let Some(l) = t.layer.and_then(|l| CAMERA_LAYERS.get(l)) {
                                    simulcast.add_send_layer(SimulcastLayer::new(l.rid));
                                }
                            }
                            simulcast
                        });
                        let mid = api.add_media(
                            spec.source.kind(),
                            Direction::SendOnly,
                            Some(format!("lg{}", config.publisher)),
                            Some(spec.source.name().to_owned()),
                            simulcast,
                        );
                        self.tracks.push((mid.to_string(), spec.source));
                        mid
                    }
                };
                let layer = spec.layer.and_then(|l| CAMERA_LAYERS.get(l));
                self.publishing.push(Publishing {
                    spec: *spec,
                    mid,
                    rid: layer.map(|l| Rid::from(l.rid)),
                    // Each layer's encoder numbers from its own start.
                    vp8: spec.layer.map(|l| Vp8Numbers {
                        picture_id: (config.publisher as u16)
                            .wrapping_mul(7919)
                            .wrapping_add(l as u16 * 10_007)
                            & 0x7fff,
                        tl0picidx: (config.publisher as u8).wrapping_add(l as u8 * 85),
                    }),
                    pt: None,
                    seq: 0,
                    clock: FrameClock::new(spec, now),
                    last_keyframe: now,
                    keyframe_requested: false,
                });
            }
            if config.tracks.is_empty() {
                // str0m offers changes only, and an offer without sections is no change.
                let mid = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
                self.receiving.push((mid, MediaKind::Audio));
            }
            let (offer, pending) = api.apply().context("nothing to offer")?;
            self.send_offer(offer, pending, to_adapter).await?;
        } else {
            // A receive-only connection (the remote offers); publishing happens elsewhere.
            anyhow::ensure!(
                config.tracks.is_empty(),
                "a peer that does not offer cannot publish"
            );
        }

        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = loop {
                match rtc.poll_output()? {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        socket.send_to(&t.contents, t.destination).await?;
                    }
                    Output::Event(e) => self.on_event(&mut rtc, e, started, to_adapter).await?,
                }
            };
            anyhow::ensure!(rtc.is_alive(), "the peer connection closed");
            let next_media = self
                .publishing
                .iter()
                .map(|p| p.clock.next())
                .min()
                .filter(|_| self.connected)
                .unwrap_or(timeout);
            let wake = timeout.min(next_media);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                message = from_adapter.recv() => {
                    let Some(message) = message else { return Ok(()) };
                    self.on_signal(&mut rtc, message, to_adapter).await?;
                }
                received = socket.recv_from(&mut buf) => {
                    let (n, source) = received?;
                    if let Ok(contents) = buf[..n].try_into() {
                        rtc.handle_input(Input::Receive(
                            Instant::now(),
                            Receive { proto: Protocol::Udp, source, destination: local, contents },
                        ))?;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            if self.connected {
                self.send_due(&mut rtc, now, config.publisher, config.keyframe_interval);
            }
            // Every turn, not only when the last timeout is due: str0m advances its clock
            // (ICE pacing, DTLS) only through it, and an answer just applied must start the
            // connectivity checks now, not at a deadline computed before it (that cost every
            // join against an ICE-lite server, which sends no checks of its own, 500 ms).
            rtc.handle_input(Input::Timeout(now))?;
        }
    }

    async fn on_signal(
        &mut self,
        rtc: &mut Rtc,
        message: ToPeer,
        to_adapter: &mpsc::Sender<FromPeer>,
    ) -> anyhow::Result<()> {
        match message {
            ToPeer::Answer(sdp) => {
                let answer = SdpAnswer::from_sdp_string(&sdp).context("remote answer")?;
                let pending = self.pending.take().context("an answer without an offer")?;
                rtc.sdp_api()
                    .accept_answer(pending, answer)
                    .with_context(|| format!("str0m refused the answer:\n{sdp}"))?;
                // Stable again: offer for what was asked meanwhile.
                self.renegotiate(rtc, to_adapter).await?;
            }
            ToPeer::NegotiationNeeded { audio, video } => {
                self.wanted = Some((audio, video));
                self.renegotiate(rtc, to_adapter).await?;
            }
            ToPeer::Offer(sdp) => {
                let offer = SdpOffer::from_sdp_string(&sdp).context("remote offer")?;
                let answer = rtc.sdp_api().accept_offer(offer)?;
                to_adapter
                    .send(FromPeer::Answer(answer.to_sdp_string()))
                    .await
                    .context("adapter gone")?;
            }
            ToPeer::Candidate(line) => {
                let line = line.trim().trim_start_matches("a=");
                if !line.is_empty() {
                    rtc.add_remote_candidate(Candidate::from_sdp_string(line)?);
                }
            }
        }
        Ok(())
    }

    /// Offers for the latest `NegotiationNeeded`, unless an offer is pending (the answer calls
    /// this again).
    async fn renegotiate(
        &mut self,
        rtc: &mut Rtc,
        to_adapter: &mpsc::Sender<FromPeer>,
    ) -> anyhow::Result<()> {
        if self.pending.is_some() {
            return Ok(());
        }
        let Some((audio, video)) = self.wanted.take() else {
            return Ok(());
        };
        let sending: Vec<Mid> = self.publishing.iter().map(|p| p.mid).collect();
        let (offer, pending) = receiving_offer(rtc, &mut self.receiving, &sending, audio, video)?;
        self.send_offer(offer, pending, to_adapter).await
    }

    async fn send_offer(
        &mut self,
        offer: SdpOffer,
        pending: SdpPendingOffer,
        to_adapter: &mpsc::Sender<FromPeer>,
    ) -> anyhow::Result<()> {
        self.pending = Some(pending);
        to_adapter
            .send(FromPeer::Offer {
                sdp: offer.to_sdp_string(),
                tracks: self.tracks.clone(),
            })
            .await
            .context("adapter gone")
    }

    async fn on_event(
        &mut self,
        rtc: &mut Rtc,
        event: Event,
        started: Instant,
        to_adapter: &mpsc::Sender<FromPeer>,
    ) -> anyhow::Result<()> {
        match event {
            Event::RtpPacket(packet) => {
                let Some((publisher, sent)) = read_stamp(&packet.payload) else {
                    return Ok(());
                };
                let layer = read_layer(&packet.payload);
                if let Some(l) = layer.and_then(|l| self.counters.received_by_layer.get(l)) {
                    l.fetch_add(1, Relaxed);
                }
                let ssrc = packet.header.ssrc;
                if let (Some(wanted), Some(_)) = (self.receive_layer, layer)
                    && !self.views.iter().any(|v| v.0 == ssrc)
                    && let Some(mid) = rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid())
                    && !self.views.iter().any(|v| v.1 == mid)
                {
                    self.views.push((ssrc, mid));
                    let view = FromPeer::Receiving {
                        mid: mid.to_string(),
                        size: view_size(wanted),
                    };
                    to_adapter.send(view).await.context("adapter gone")?;
                }
                self.counters.received_packets.fetch_add(1, Relaxed);
                self.counters
                    .received_bytes
                    .fetch_add(packet.payload.len() as u64, Relaxed);
                self.counters
                    .latency
                    .record(now_micros().saturating_sub(sent));
                let grew = self
                    .loss
                    .packet(*packet.header.ssrc, publisher, *packet.seq_no);
                self.counters.expected_packets.fetch_add(grew, Relaxed);
            }
            // A controlling agent with one candidate pair goes straight to "completed".
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) if self.join_time.is_none() => {
                self.join_time = Some(started.elapsed());
                if self.counts_as_join {
                    self.counters.connected.fetch_add(1, Relaxed);
                }
                let _ = to_adapter.send(FromPeer::Connected).await;
            }
            // DTLS is up: SRTP keys exist, media can flow.
            Event::Connected if !self.connected => {
                self.connected = true;
                self.counters
                    .scheduled_pps
                    .fetch_add(scheduled_pps(&self.publishing), Relaxed);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                anyhow::bail!("ICE disconnected");
            }
            Event::KeyframeRequest(request) => {
                // Per layer when the request names one (a PLI to a simulcast SSRC).
                for track in self.publishing.iter_mut().filter(|t| {
                    t.mid == request.mid && (request.rid.is_none() || t.rid == request.rid)
                }) {
                    track.keyframe_requested = true;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes every packet that is due ([`FrameClock`]).
    fn send_due(&mut self, rtc: &mut Rtc, now: Instant, publisher: u32, keyframes: Duration) {
        for track in &mut self.publishing {
            if now < track.clock.next() {
                continue;
            }
            let audio = track.spec.source == Source::Microphone;
            let pt = match track.pt {
                Some(pt) => pt,
                None => {
                    let codec = if audio { Codec::Opus } else { Codec::Vp8 };
                    let Some(params) = rtc.codec_config().find(|p| p.spec().codec == codec) else {
                        continue;
                    };
                    *track.pt.insert(params.pt())
                }
            };
            let mut api = rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(track.mid, track.rid) else {
                continue;
            };
            let frame = track.clock.frames();
            let late = now.saturating_duration_since(track.clock.next());
            let Some(packets) = track.clock.due(now) else {
                continue;
            };
            self.counters.send_lag.record(late.as_micros() as u64);
            let keyframe = !audio
                && (frame == 0
                    || track.keyframe_requested
                    || now.duration_since(track.last_keyframe) >= keyframes);
            if keyframe {
                track.last_keyframe = now;
                track.keyframe_requested = false;
            }
            let rate = if audio { 48_000 } else { 90_000 };
            let time = (frame * rate / track.spec.frames_per_second.max(1) as u64) as u32;
            let layer = track.spec.layer;
            let size = layer
                .and_then(|l| CAMERA_LAYERS.get(l))
                .map_or((0, 0), |l| (l.width, l.height));
            for i in 0..packets {
                let mut payload = match track.vp8 {
                    _ if audio => vec![0xfc; track.spec.payload_bytes],
                    Some(numbers) => {
                        vp8_layer_payload(track.spec.payload_bytes, i == 0, keyframe, numbers, size)
                    }
                    None => vp8_payload(track.spec.payload_bytes, i == 0, keyframe),
                };
                stamp_layer(&mut payload, publisher, now_micros(), layer);
                let marker = audio || i + 1 == packets;
                stream.write_rtp(
                    RtpWrite::new(pt, track.seq.into(), time, now, payload)
                        .marker(marker)
                        .nackable(!audio),
                );
                track.seq += 1;
            }
            track.vp8 = track.vp8.map(Vp8Numbers::next);
            self.counters.sent_packets.fetch_add(packets, Relaxed);
        }
    }
}

/// Our offer for rtcd's `NegotiationNeeded` (docs/protocol.md section 4a), with at least
/// `audio` and `video` receiving sections: our receive-only sections (`receiving`), those the
/// last answer made `inactive` turned back to `recvonly` (str0m adopts the answer's direction
/// as its own; the protocol wants them kept receiving, for reuse), plus new `recvonly` ones for
/// the shortfall, which are added to `receiving`. `sending` are our sending sections.
fn receiving_offer(
    rtc: &mut Rtc,
    receiving: &mut Vec<(Mid, MediaKind)>,
    sending: &[Mid],
    audio: u32,
    video: u32,
) -> anyhow::Result<(SdpOffer, SdpPendingOffer)> {
    // A rejected (port 0) section never receives again; we never stop one ourselves.
    receiving.retain(|(mid, _)| rtc.media(*mid).is_some_and(|m| !m.disabled()));
    let revive: Vec<Mid> = receiving
        .iter()
        .map(|(mid, _)| *mid)
        .filter(|mid| rtc.media(*mid).map(|m| m.direction()) != Some(Direction::RecvOnly))
        .collect();
    let have = |kind: MediaKind| receiving.iter().filter(|(_, k)| *k == kind).count() as u32;
    let missing = [
        (
            MediaKind::Audio,
            audio.saturating_sub(have(MediaKind::Audio)),
        ),
        (
            MediaKind::Video,
            video.saturating_sub(have(MediaKind::Video)),
        ),
    ];
    // A section to change and change back if nothing else changes (see below).
    let any = receiving
        .iter()
        .map(|(mid, _)| *mid)
        .chain(sending.iter().copied())
        .find_map(|mid| {
            rtc.media(mid)
                .filter(|m| !m.disabled())
                .map(|m| (mid, m.direction()))
        });

    let mut api = rtc.sdp_api();
    for mid in revive {
        api.set_direction(mid, Direction::RecvOnly);
    }
    for (kind, n) in missing {
        for _ in 0..n {
            let mid = api.add_media(kind, Direction::RecvOnly, None, None, None);
            receiving.push((mid, kind));
        }
    }
    if !api.has_changes() {
        // rtcd also asks for an offer when it has enough sections but must mark one inactive
        // (a track ended) or put another track on it. str0m only offers changes, so change
        // one direction and back: the offer (built from the session, then the changes in
        // order) describes the session as it is. Neither step resets a stream: the detour
        // only adds a direction the section has no stream for.
        let (mid, direction) = any.context("no media section to offer")?;
        let detour = if direction == Direction::SendRecv {
            Direction::Inactive
        } else {
            Direction::SendRecv
        };
        api.set_direction(mid, detour);
        api.set_direction(mid, direction);
    }
    api.apply().context("str0m made no offer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtc() -> Rtc {
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(crypto())
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        let host = Candidate::host(([127, 0, 0, 1], 9).into(), "udp").unwrap();
        rtc.add_local_candidate(host).unwrap();
        rtc
    }

    /// (m-line kind, direction) of each media section of `sdp`.
    fn sections(sdp: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in sdp.lines() {
            if let Some(m) = line.strip_prefix("m=") {
                let kind = m.split_whitespace().next().unwrap_or_default();
                out.push((kind.to_owned(), "sendrecv".to_owned()));
            } else if let Some(d) = line.strip_prefix("a=")
                && ["sendrecv", "sendonly", "recvonly", "inactive"].contains(&d)
                && let Some(last) = out.last_mut()
            {
                last.1 = d.to_owned();
            }
        }
        out
    }

    /// The far side (a str0m answerer standing in for rtcd) answers `offer`; the sections
    /// whose mid is in `inactive` are answered `inactive`, as rtcd marks unused ones.
    fn answer(far: &mut Rtc, offer: &SdpOffer, inactive: &[Mid]) -> String {
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap();
        let sdp = far.sdp_api().accept_offer(offer).unwrap().to_sdp_string();
        let mut mid = String::new();
        sdp.split("\r\n")
            .map(|line| {
                if let Some(m) = line.strip_prefix("a=mid:") {
                    mid = m.to_owned();
                }
                let direction = ["a=sendrecv", "a=sendonly", "a=recvonly"].contains(&line);
                if direction && inactive.iter().any(|m| m.to_string() == mid) {
                    "a=inactive".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    fn accept(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
    }

    fn pair(kind: &str, direction: &str) -> (String, String) {
        (kind.to_owned(), direction.to_owned())
    }

    #[test]
    fn offers_keep_inactive_sections_receiving_and_add_the_shortfall() {
        let (mut client, mut far) = (rtc(), rtc());
        let mut api = client.sdp_api();
        let mic = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let first = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let sdp = answer(&mut far, &offer, &[first]);
        accept(&mut client, pending, &sdp);
        // str0m takes the answer's direction as its own: the section no longer receives.
        assert_eq!(
            client.media(first).unwrap().direction(),
            Direction::Inactive
        );

        let mut receiving = vec![(first, MediaKind::Audio)];
        let (offer, pending) = receiving_offer(&mut client, &mut receiving, &[mic], 1, 2).unwrap();
        let expected = vec![
            pair("audio", "sendonly"),
            pair("audio", "recvonly"),
            pair("video", "recvonly"),
            pair("video", "recvonly"),
        ];
        assert_eq!(sections(&offer.to_sdp_string()), expected);
        assert_eq!(receiving.len(), 3);
        let sdp = answer(&mut far, &offer, &[first]);
        accept(&mut client, pending, &sdp);

        // Enough sections, one inactive again: it is revived, nothing is added.
        let (offer, pending) = receiving_offer(&mut client, &mut receiving, &[mic], 1, 1).unwrap();
        assert_eq!(sections(&offer.to_sdp_string()), expected);
        let sdp = answer(&mut far, &offer, &[]);
        accept(&mut client, pending, &sdp);
        assert_eq!(
            client.media(first).unwrap().direction(),
            Direction::RecvOnly
        );

        // Nothing to change at all (rtcd wants a section marked inactive): str0m still offers
        // the same session, and both sides take it.
        let (offer, pending) = receiving_offer(&mut client, &mut receiving, &[mic], 1, 2).unwrap();
        assert_eq!(sections(&offer.to_sdp_string()), expected);
        let sdp = answer(&mut far, &offer, &[receiving[2].0]);
        accept(&mut client, pending, &sdp);
        assert_eq!(receiving.len(), 3);
    }

    #[test]
    fn a_publisher_without_receiving_sections_can_offer_unchanged() {
        let (mut client, mut far) = (rtc(), rtc());
        let mut api = client.sdp_api();
        let cam = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let sdp = answer(&mut far, &offer, &[]);
        accept(&mut client, pending, &sdp);
        let mut receiving = Vec::new();
        let (offer, pending) = receiving_offer(&mut client, &mut receiving, &[cam], 0, 0).unwrap();
        assert_eq!(
            sections(&offer.to_sdp_string()),
            vec![pair("video", "sendonly")]
        );
        let sdp = answer(&mut far, &offer, &[]);
        accept(&mut client, pending, &sdp);
        assert_eq!(client.media(cam).unwrap().direction(), Direction::SendOnly);
    }

    #[tokio::test]
    async fn requests_during_a_pending_offer_are_coalesced_into_one_offer_after_the_answer() {
        let (mut client, mut far) = (rtc(), rtc());
        let mut api = client.sdp_api();
        let first = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let first_answer = answer(&mut far, &offer, &[first]);
        let mut peer = Peer {
            loss: StreamLoss::default(),
            join_time: None,
            counters: Arc::new(Counters::default()),
            publishing: Vec::new(),
            tracks: Vec::new(),
            receiving: vec![(first, MediaKind::Audio)],
            pending: Some(pending),
            wanted: None,
            connected: false,
            counts_as_join: true,
            receive_layer: None,
            views: Vec::new(),
        };
        let (to_adapter, mut from_peer) = mpsc::channel(16);
        for (audio, video) in [(1, 1), (2, 1)] {
            let asked = ToPeer::NegotiationNeeded { audio, video };
            peer.on_signal(&mut client, asked, &to_adapter)
                .await
                .unwrap();
        }
        assert!(
            from_peer.try_recv().is_err(),
            "offered while one was pending"
        );

        let answered = ToPeer::Answer(first_answer);
        peer.on_signal(&mut client, answered, &to_adapter)
            .await
            .unwrap();
        let Ok(FromPeer::Offer { sdp, tracks }) = from_peer.try_recv() else {
            panic!("no offer after the answer");
        };
        assert!(tracks.is_empty());
        assert_eq!(
            sections(&sdp),
            vec![
                pair("audio", "recvonly"),
                pair("audio", "recvonly"),
                pair("video", "recvonly"),
            ],
            "the latest counts win"
        );
        assert!(from_peer.try_recv().is_err(), "one offer for both requests");
        assert!(peer.pending.is_some() && peer.wanted.is_none());
    }

    #[test]
    fn frame_clock_spreads_fractional_rates_and_skips_when_late() {
        let spec = TrackSpec {
            source: Source::Camera,
            packets_per_second: 100,
            payload_bytes: 1100,
            frames_per_second: 30,
            layer: None,
        };
        let start = Instant::now();
        let mut clock = FrameClock::new(&spec, start);
        assert_eq!(clock.due(start - Duration::from_millis(1)), None);
        // 30 frames at their due times carry 100 packets in all (3.33 per frame).
        let mut sent = 0;
        for _ in 0..30 {
            let at = clock.next();
            sent += clock.due(at).unwrap();
        }
        assert!((99..=100).contains(&sent), "{sent}");
        assert_eq!(clock.frames(), 30);
        // A second late: one frame, then the next is a frame interval away, not a backlog.
        let late = clock.next() + Duration::from_secs(1);
        assert!(clock.due(late).is_some());
        assert_eq!(clock.next(), late + Duration::from_secs(1) / 30);
    }

    /// The fields of an RFC 7741 payload descriptor, read independently of the writer:
    /// (start of partition, picture ID, TL0PICIDX, TID, offset of the VP8 payload).
    fn descriptor(p: &[u8]) -> (bool, Option<u16>, Option<u8>, Option<u8>, usize) {
        let (start, mut at) = (p[0] & 0x10 != 0, 1);
        let (mut picture_id, mut tl0, mut tid) = (None, None, None);
        if p[0] & 0x80 != 0 {
            let x = p[1];
            at = 2;
            if x & 0x80 != 0 {
                if p[at] & 0x80 != 0 {
                    picture_id = Some(u16::from_be_bytes([p[at] & 0x7f, p[at + 1]]));
                    at += 2;
                } else {
                    picture_id = Some(u16::from(p[at]));
                    at += 1;
                }
            }
            if x & 0x40 != 0 {
                tl0 = Some(p[at]);
                at += 1;
            }
            if x & 0x30 != 0 {
                tid = Some(p[at] >> 6);
                at += 1;
            }
        }
        (start, picture_id, tl0, tid, at)
    }

    #[test]
    fn layer_keyframes_carry_descriptor_numbers_and_the_picture_size() {
        let numbers = Vp8Numbers {
            picture_id: 0x7ffe,
            tl0picidx: 255,
        };
        let mut p = vp8_layer_payload(400, true, true, numbers, (320, 180));
        stamp_layer(&mut p, 7, 99, Some(0));
        let (start, picture_id, tl0, tid, at) = descriptor(&p);
        assert!(start);
        assert_eq!((picture_id, tl0, tid), (Some(0x7ffe), Some(255), Some(0)));
        // Frame tag: P bit clear (key frame), show frame; start code; 14-bit sizes.
        assert_eq!(p[at] & 0x01, 0);
        assert_eq!(&p[at + 3..at + 6], &[0x9d, 0x01, 0x2a]);
        let width = u16::from_le_bytes([p[at + 6], p[at + 7]]) & 0x3fff;
        let height = u16::from_le_bytes([p[at + 8], p[at + 9]]) & 0x3fff;
        assert_eq!((width, height), (320, 180));
        assert_eq!(read_stamp(&p), Some((7, 99)));
        assert_eq!(read_layer(&p), Some(0));

        // The next frame: numbers advance (the picture ID wraps at 15 bits), an inter frame
        // has its P bit set, and packets after the first of a frame start no partition.
        let next = numbers.next();
        assert_eq!(
            next,
            Vp8Numbers {
                picture_id: 0x7fff,
                tl0picidx: 0
            }
        );
        assert_eq!(next.next().picture_id, 0);
        let inter = vp8_layer_payload(400, true, false, next, (320, 180));
        let (start, picture_id, _, _, at) = descriptor(&inter);
        assert!(start);
        assert_eq!(picture_id, Some(0x7fff));
        assert_eq!(inter[at] & 0x01, 1);
        let middle = vp8_layer_payload(400, false, true, next, (320, 180));
        let (start, picture_id, ..) = descriptor(&middle);
        assert!(!start, "only a frame's first packet starts it");
        assert_eq!(
            picture_id,
            Some(0x7fff),
            "every packet of a frame carries its ID"
        );
    }

    #[test]
    fn stamps_tag_layers_and_plain_tracks_apart() {
        for (l, layer) in CAMERA_LAYERS.iter().enumerate() {
            let mut p = vec![0u8; 64];
            stamp_layer(&mut p, 3, 4, Some(l));
            assert_eq!(read_layer(&p), Some(l), "{}", layer.rid);
            assert_eq!(read_stamp(&p), Some((3, 4)));
        }
        let mut p = vec![0u8; 64];
        stamp(&mut p, 3, 4);
        assert_eq!(
            &p[48..52],
            b"LG01",
            "the stamp of a plain track is unchanged"
        );
        assert_eq!(read_layer(&p), None);
    }

    #[test]
    fn views_select_each_layer_by_its_own_picture() {
        // rtcd's rule (docs/protocol.md `track_views`): the lowest layer whose picture reaches
        // the view's width or height.
        let pick = |(w, h): (u16, u16)| {
            CAMERA_LAYERS
                .iter()
                .position(|l| l.width >= w || l.height >= h)
        };
        for layer in 0..CAMERA_LAYERS.len() {
            assert_eq!(pick(view_size(layer)), Some(layer));
        }
    }

    #[test]
    fn a_simulcast_camera_is_offered_as_browsers_do() {
        let mut client = rtc();
        let mut simulcast = Simulcast::new();
        for layer in CAMERA_LAYERS {
            simulcast.add_send_layer(SimulcastLayer::new(layer.rid));
        }
        let mut api = client.sdp_api();
        api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            None,
            None,
            Some(simulcast),
        );
        let (offer, _) = api.apply().unwrap();
        let sdp = offer.to_sdp_string();
        for line in [
            "a=rid:q send",
            "a=rid:h send",
            "a=rid:f send",
            "a=simulcast:send q;h;f",
        ] {
            assert!(sdp.lines().any(|l| l == line), "{line} missing:\n{sdp}");
        }
        for uri in [
            "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        ] {
            assert!(
                sdp.lines()
                    .any(|l| l.starts_with("a=extmap:") && l.ends_with(uri)),
                "{uri} missing:\n{sdp}"
            );
        }
    }

    #[test]
    fn stamps_round_trip_and_foreign_payloads_are_ignored() {
        let mut p = vp8_payload(100, true, true);
        stamp(&mut p, 42, 123_456_789);
        assert_eq!(read_stamp(&p), Some((42, 123_456_789)));
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] & 1, 0, "key frame: P bit clear");
        assert_eq!(read_stamp(&[0u8; 40]), None);
        assert_eq!(read_stamp(&[0u8; 3]), None);
    }
}

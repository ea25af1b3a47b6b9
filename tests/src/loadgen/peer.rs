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
use std::time::{Duration, Instant};

use anyhow::Context as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
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
}

/// The stamp at the end of every payload: magic, publisher, send time. The receiver needs
/// nothing else to compute loss (from RTP sequence numbers) and latency.
pub const STAMP_BYTES: usize = 16;
const MAGIC: [u8; 4] = *b"LG01";

/// Writes the stamp into the last [`STAMP_BYTES`] of `payload`.
pub fn stamp(payload: &mut [u8], publisher: u32, sent_micros: u64) {
    let at = payload.len() - STAMP_BYTES;
    payload[at..at + 4].copy_from_slice(&MAGIC);
    payload[at + 4..at + 8].copy_from_slice(&publisher.to_be_bytes());
    payload[at + 8..].copy_from_slice(&sent_micros.to_be_bytes());
}

/// Reads a stamp: (publisher, send time in µs), or None if the payload carries none.
pub fn read_stamp(payload: &[u8]) -> Option<(u32, u64)> {
    let at = payload.len().checked_sub(STAMP_BYTES)?;
    if payload[at..at + 4] != MAGIC {
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

/// Signaling from the adapter to the peer.
#[derive(Debug)]
pub enum ToPeer {
    /// The remote answer to our offer.
    Answer(String),
    /// A remote offer (renegotiation, or a subscriber connection's first offer).
    Offer(String),
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
    /// Our answer to a remote offer.
    Answer(String),
    /// ICE connected: the join is done (for the join-time measurement).
    Connected,
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

struct Publishing {
    spec: TrackSpec,
    mid: Mid,
    pt: Option<Pt>,
    seq: u64,
    clock: FrameClock,
    last_keyframe: Instant,
}

fn crypto() -> Arc<str0m::config::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<str0m::config::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
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
        pending: None,
        connected: false,
        counts_as_join: config.counts_as_join,
    };
    let error = peer
        .drive(config, started, &to_adapter, &mut from_adapter, &stop)
        .await
        .err()
        .map(|e| format!("{e:#}"));
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
    pending: Option<SdpPendingOffer>,
    /// DTLS connected (media may be sent).
    connected: bool,
    counts_as_join: bool,
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
            let mut tracks = Vec::new();
            for spec in &config.tracks {
                let mid = api.add_media(
                    spec.source.kind(),
                    Direction::SendOnly,
                    Some(format!("lg{}", config.publisher)),
                    Some(spec.source.name().to_owned()),
                    None,
                );
                tracks.push((mid.to_string(), spec.source));
                self.publishing.push(Publishing {
                    spec: *spec,
                    mid,
                    pt: None,
                    seq: 0,
                    clock: FrameClock::new(spec, now),
                    last_keyframe: now,
                });
            }
            if config.tracks.is_empty() {
                api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            }
            let (offer, pending) = api.apply().context("nothing to offer")?;
            self.pending = Some(pending);
            to_adapter
                .send(FromPeer::Offer {
                    sdp: offer.to_sdp_string(),
                    tracks,
                })
                .await
                .context("adapter gone")?;
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
                    Output::Event(e) => self.on_event(e, started, to_adapter).await?,
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
            if now >= timeout {
                rtc.handle_input(Input::Timeout(now))?;
            }
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
                rtc.sdp_api().accept_answer(pending, answer)?;
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

    async fn on_event(
        &mut self,
        event: Event,
        started: Instant,
        to_adapter: &mpsc::Sender<FromPeer>,
    ) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        match event {
            Event::RtpPacket(packet) => {
                let Some((_, sent)) = read_stamp(&packet.payload) else {
                    return Ok(());
                };
                self.counters.received_packets.fetch_add(1, Relaxed);
                self.counters
                    .received_bytes
                    .fetch_add(packet.payload.len() as u64, Relaxed);
                self.counters
                    .latency
                    .record(now_micros().saturating_sub(sent));
                self.loss.packet(*packet.header.ssrc, *packet.seq_no);
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
            Event::Connected => self.connected = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                anyhow::bail!("ICE disconnected");
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes every packet that is due ([`FrameClock`]).
    fn send_due(&mut self, rtc: &mut Rtc, now: Instant, publisher: u32, keyframes: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
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
            let Some(stream) = api.stream_tx_by_mid(track.mid, None) else {
                continue;
            };
            let frame = track.clock.frames();
            let Some(packets) = track.clock.due(now) else {
                continue;
            };
            let keyframe =
                !audio && (frame == 0 || now.duration_since(track.last_keyframe) >= keyframes);
            if keyframe {
                track.last_keyframe = now;
            }
            let rate = if audio { 48_000 } else { 90_000 };
            let time = (frame * rate / track.spec.frames_per_second.max(1) as u64) as u32;
            for i in 0..packets {
                let mut payload = if audio {
                    vec![0xfc; track.spec.payload_bytes]
                } else {
                    vp8_payload(track.spec.payload_bytes, i == 0, keyframe)
                };
                stamp(&mut payload, publisher, now_micros());
                let marker = audio || i + 1 == packets;
                stream.write_rtp(
                    RtpWrite::new(pt, track.seq.into(), time, now, payload)
                        .marker(marker)
                        .nackable(!audio),
                );
                track.seq += 1;
            }
            self.counters.sent_packets.fetch_add(packets, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_clock_spreads_fractional_rates_and_skips_when_late() {
        let spec = TrackSpec {
            source: Source::Camera,
            packets_per_second: 100,
            payload_bytes: 1100,
            frames_per_second: 30,
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

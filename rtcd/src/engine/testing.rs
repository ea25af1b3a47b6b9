//! Test support for code outside the engine: a browser-like WebRTC client on `rtc` (full ICE,
//! controlling, makes every offer) driven by hand through a plain API, so the SFU's tests can
//! run whole calls in memory without a socket and without seeing the WebRTC library's types.
//!
//! Datagrams are given and taken as rtcd's own [`Transport`] (seen from rtcd: `local` is our
//! candidate, `peer` the client), time is passed in. [`Link`] carries them between the two in
//! virtual time through a bottleneck (rate, drop-tail queue, propagation delay), for tests of
//! what rtcd does about bandwidth.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol as _;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::PeerSettings;
use super::bwe::TRANSPORT_CC_URI;
use super::net::{Protocol, Transport};
use super::peer::host_candidate;
use crate::media::packet::MediaKind;

/// rtcd's address in these tests.
pub(crate) const SERVER: &str = "10.9.0.1:5000";

/// Peer settings with one UDP candidate at [`SERVER`].
pub(crate) fn settings() -> PeerSettings {
    let server: SocketAddr = SERVER.parse().expect("a socket address");
    PeerSettings {
        candidates: vec![Transport::udp(server, server)],
        disconnected_timeout: Duration::from_secs(5),
        failed_timeout: Duration::from_secs(25),
        estimation: true,
        departures: None,
    }
}

/// One RTP packet a client received (after SRTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence: u16,
    /// The transport-wide sequence number it carried (the transport-cc header extension under
    /// the id rtcd's answer gave it), if any.
    pub transport_cc: Option<u16>,
}

/// A client. See the module docs.
pub(crate) struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    server: SocketAddr,
    /// Every RTP packet received, in order.
    pub received: Vec<Received>,
    /// RTCP packets received (PLIs, receiver reports...).
    pub feedback: usize,
    /// The media SSRC of every PLI received, in order.
    pub plis: Vec<u32>,
    /// Whether its peer connection is `connected` (ICE and DTLS up).
    pub connected: bool,
    /// Simulcast clients: the ids of the mid and rid extensions and the mid of the simulcast
    /// section, read from its latest offer (what [`Client::send_layer`] stamps).
    stamps: Option<(u8, u8, String)>,
    simulcast: bool,
    /// The transport-cc extension id of the last answer (what `received` reads).
    transport_cc_id: Option<u8>,
}

impl Client {
    /// A client at `addr` (e.g. `"10.9.0.2:6000"`) talking to [`SERVER`].
    pub(crate) fn new(addr: &str, now: Instant) -> Self {
        Self::build(addr, now, false, true)
    }

    /// A client that sends no transport-wide congestion control feedback (as aiortc): rtcd has
    /// no bandwidth estimate of it, so a test can give the SFU estimates of its own.
    pub(crate) fn without_congestion_feedback(addr: &str, now: Instant) -> Self {
        Self::build(addr, now, false, false)
    }

    /// A client whose offers carry the mid, rid and repaired-rid extensions, as browsers'
    /// do: what a simulcast publisher needs ([`Client::publish_simulcast`]).
    pub(crate) fn simulcast(addr: &str, now: Instant) -> Self {
        Self::build(addr, now, true, true)
    }

    fn build(addr: &str, now: Instant, simulcast: bool, congestion_feedback: bool) -> Self {
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("default codecs");
        if simulcast {
            rtc::peer_connection::configuration::interceptor_registry::configure_simulcast_extension_headers(&mut media)
                .expect("simulcast extensions");
        }
        // The tap surfaces the feedback it receives (PLIs) to `poll_read`, as in rtcd.
        let registry = Registry::new().with(
            rtc::interceptor::Slot::Custom(9_000),
            super::feedback::FeedbackTap::default(),
        );
        let registry = if congestion_feedback {
            register_default_interceptors(registry, &mut media).expect("interceptors")
        } else {
            use rtc::peer_connection::configuration::interceptor_registry as ir;
            ir::configure_rtcp_reports(ir::configure_nack(registry, &mut media))
        };
        let pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(now)
            .expect("a peer connection");
        let mut client = Self {
            pc,
            addr: addr.parse().expect("a socket address"),
            server: SERVER.parse().expect("a socket address"),
            received: Vec::new(),
            feedback: 0,
            plis: Vec::new(),
            connected: false,
            stamps: None,
            simulcast,
            transport_cc_id: None,
        };
        client.add_host_candidate();
        client
    }

    fn add_host_candidate(&mut self) {
        let candidate = host_candidate(&Transport::udp(self.addr, self.addr)).expect("candidate");
        self.pc
            .add_local_candidate(candidate)
            .expect("a local candidate");
    }

    /// Where the client is.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes a track (a send-only section, as the SDK does): audio `"mic"` or video
    /// `"cam"` with SSRC `ssrc`.
    pub(crate) fn publish(&mut self, kind: MediaKind, ssrc: u32) {
        let (id, codec_kind) = track_of(kind);
        add_sendonly(&mut self.pc, id, codec_kind, encodings(&[("", ssrc)]));
    }

    /// Publishes a camera in simulcast layers, `(rid, SSRC)` lowest first, declaring no SSRC
    /// (as Chromium: the layers are known by their rids). Needs [`Client::simulcast`].
    pub(crate) fn publish_simulcast(&mut self, layers: &[(&str, u32)]) {
        assert!(self.simulcast, "a simulcast client");
        add_sendonly(&mut self.pc, "cam", RtpCodecKind::Video, encodings(layers));
    }

    /// Sends packet `seq` of the simulcast layer `rid` (VP8 as [`Client::send`]), with the
    /// MID and RID header extensions when `stamp` (browsers stop once rtcd's receiver
    /// reports acknowledge the SSRC). Keyframes announce the picture size of a browser's 720p
    /// camera layer by rid: `q` 320x180, `h` 640x360, anything else 1280x720.
    pub(crate) fn send_layer(
        &mut self,
        rid: &str,
        ssrc: u32,
        seq: u16,
        size: usize,
        stamp: bool,
        now: Instant,
    ) {
        let mut packet = rtp::Packet::default();
        packet.header.version = 2;
        packet.header.sequence_number = seq;
        packet.header.ssrc = ssrc;
        packet.header.marker = true;
        packet.header.payload_type = 96;
        packet.header.timestamp = u32::from(seq) * 3000;
        let key = seq.is_multiple_of(30);
        let mut payload = vec![0x10, if key { 0x00 } else { 0x01 }, 0, 0];
        if key {
            let (w, h): (u16, u16) = match rid {
                "q" => (320, 180),
                "h" => (640, 360),
                _ => (1280, 720),
            };
            payload.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            payload.extend_from_slice(&w.to_le_bytes());
            payload.extend_from_slice(&h.to_le_bytes());
        } else {
            payload.extend_from_slice(&[9, 9, 9]);
        }
        payload.resize(size.max(payload.len()), 9);
        packet.payload = Bytes::from(payload);
        if stamp && let Some((mid_id, rid_id, mid)) = &self.stamps {
            packet.header.extension = true;
            packet.header.extension_profile = 0xBEDE;
            let _ = packet
                .header
                .set_extension(*mid_id, Bytes::from(mid.clone()));
            let _ = packet
                .header
                .set_extension(*rid_id, Bytes::from(rid.to_owned()));
        }
        let _ = self.pc.handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket("cam".into(), packet),
        });
    }

    /// Adds a receive-only section of `kind`.
    pub(crate) fn receive(&mut self, kind: MediaKind) {
        self.pc
            .add_transceiver_from_kind(
                track_of(kind).1,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .expect("a receiving transceiver");
    }

    /// A new offer, set as the local description.
    pub(crate) fn offer(&mut self, now: Instant) -> String {
        let offer = self.pc.create_offer(None).expect("an offer");
        self.pc
            .set_local_description(now, offer.clone())
            .expect("the offer applies");
        if self.simulcast {
            self.stamps = stamps_of(&offer.sdp);
        }
        offer.sdp
    }

    /// rtcd's answer to the last offer.
    pub(crate) fn answer(&mut self, sdp: &str, now: Instant) {
        let answer = RTCSessionDescription::answer(sdp.to_owned()).expect("an answer");
        self.pc
            .set_remote_description(now, answer)
            .expect("the answer applies");
        self.transport_cc_id = extension_id(sdp, TRANSPORT_CC_URI);
    }

    /// The client's network changes to `addr` and it restarts ICE (the caller negotiates).
    pub(crate) fn move_and_restart_ice(&mut self, addr: &str) {
        self.addr = addr.parse().expect("a socket address");
        self.add_host_candidate();
        self.pc.restart_ice();
    }

    /// A datagram from rtcd reaches the client.
    pub(crate) fn deliver(&mut self, data: BytesMut, now: Instant) {
        // A datagram the client cannot read is the client's business (as on a network).
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.addr,
                peer_addr: self.server,
                transport_protocol: TransportProtocol::UDP,
                ecn: None,
            },
            message: data,
        });
        self.poll();
    }

    /// The next datagram the client sends rtcd, with its path as rtcd sees it.
    pub(crate) fn poll_transmit(&mut self) -> Option<(Transport, BytesMut)> {
        let msg = self.pc.poll_write()?;
        Some((
            Transport {
                local: self.server,
                peer: self.addr,
                protocol: Protocol::Udp,
            },
            msg.message,
        ))
    }

    /// Runs the client's timers.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let _ = self.pc.handle_timeout(now);
        self.poll();
    }

    fn poll(&mut self) {
        while let Some(msg) = self.pc.poll_read() {
            match msg.message {
                RTCMessage::RtpPacket(_, p) => self.received.push(Received {
                    ssrc: p.header.ssrc,
                    payload_type: p.header.payload_type,
                    sequence: p.header.sequence_number,
                    transport_cc: self
                        .transport_cc_id
                        .and_then(|id| p.header.get_extension(id))
                        .filter(|v| v.len() == 2)
                        .map(|v| u16::from_be_bytes([v[0], v[1]])),
                }),
                RTCMessage::RtcpPacket(_, p) => {
                    self.feedback += p.len();
                    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
                    self.plis.extend(
                        p.iter()
                            .filter_map(|p| p.as_any().downcast_ref::<PictureLossIndication>())
                            .map(|p| p.media_ssrc),
                    );
                }
                _ => {}
            }
        }
        while let Some(e) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = e {
                self.connected = state == RTCPeerConnectionState::Connected;
            }
        }
    }

    /// Asks for a keyframe of what it receives with SSRC `media_ssrc` (a PLI, as a receiver
    /// whose decoder lost its picture does).
    pub(crate) fn send_pli(&mut self, media_ssrc: u32, now: Instant) {
        use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        let receiver = self.pc.get_receivers().next();
        if let Some(mut r) = receiver.and_then(|id| self.pc.rtp_receiver(id)) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            r.write_rtcp(now, vec![Box::new(pli)])
                .expect("the PLI is written");
        }
    }

    /// Sends packet `seq` of the published track of `kind` (video: VP8, a keyframe every 30
    /// packets; audio: Opus).
    pub(crate) fn send(&mut self, kind: MediaKind, ssrc: u32, seq: u16, now: Instant) {
        let mut packet = rtp::Packet::default();
        packet.header.version = 2;
        packet.header.sequence_number = seq;
        packet.header.ssrc = ssrc;
        packet.header.marker = true;
        match kind {
            MediaKind::Video => {
                packet.header.payload_type = 96;
                packet.header.timestamp = u32::from(seq) * 3000;
                // VP8 descriptor (S=1, PID 0) and a keyframe tag every 30 packets.
                let key = seq.is_multiple_of(30);
                packet.payload =
                    Bytes::from(vec![0x10, if key { 0x00 } else { 0x01 }, 0, 0, 9, 9, 9]);
            }
            MediaKind::Audio => {
                packet.header.payload_type = 111;
                packet.header.timestamp = u32::from(seq) * 960;
                packet.payload = Bytes::from_static(&[0xf8, 0xff, 0xfe]);
            }
        }
        let _ = self.pc.handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket(track_of(kind).0.into(), packet),
        });
    }
}

/// The id `sdp` gives the header extension `uri` (its first `a=extmap` line for it).
fn extension_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let (id, rest) = l.trim_end().strip_prefix("a=extmap:")?.split_once(' ')?;
        let id = id.split('/').next()?;
        (rest.split(' ').next() == Some(uri)).then(|| id.parse().ok())?
    })
}

/// The mid and rid extension ids of an offer and the mid of its simulcast section.
fn stamps_of(offer: &str) -> Option<(u8, u8, String)> {
    let id = |uri: &str| {
        offer.lines().find_map(|l| {
            let (id, rest) = l.strip_prefix("a=extmap:")?.split_once(' ')?;
            (rest.split(' ').next() == Some(uri)).then(|| id.parse().ok())?
        })
    };
    let mut mid = None;
    for line in offer.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        }
        if line.starts_with("a=simulcast:") {
            return Some((id(super::peer::MID_URI)?, id(super::peer::RID_URI)?, mid?));
        }
    }
    None
}

/// One sending encoding per `(rid, SSRC)`: a single one with rid `""`, or simulcast layers.
pub(crate) fn encodings(layers: &[(&str, u32)]) -> Vec<RTCRtpEncodingParameters> {
    layers
        .iter()
        .map(|(rid, ssrc)| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: (*rid).into(),
                ssrc: Some(*ssrc),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

/// Adds track `id` (stream `{id}-stream`) as a send-only section with `encodings`, as the SDK
/// publishes: the test clients' one way to publish.
pub(crate) fn add_sendonly(
    pc: &mut RTCPeerConnection,
    id: &str,
    kind: RtpCodecKind,
    encodings: Vec<RTCRtpEncodingParameters>,
) {
    let track = MediaStreamTrack::new(
        format!("{id}-stream"),
        id.into(),
        id.into(),
        kind,
        encodings.clone(),
    );
    pc.add_transceiver_from_track(
        track,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![],
            send_encodings: encodings,
        }),
    )
    .expect("a sending transceiver");
}

fn track_of(kind: MediaKind) -> (&'static str, RtpCodecKind) {
    match kind {
        MediaKind::Audio => ("mic", RtpCodecKind::Audio),
        MediaKind::Video => ("cam", RtpCodecKind::Video),
    }
}

/// One direction of a network path, in virtual time: a bottleneck of `rate` bits per second
/// with a drop-tail queue of `queue` bytes in front of it (like Linux `tbf` with a one-packet
/// bucket: no burst above the rate), then `delay` of propagation. Datagrams come out at the
/// instant they arrive ([`Link::poll`]); the caller delivers each with that instant, so no
/// step size of the test's clock rounds the delays that a delay-based estimator measures.
///
/// Each datagram occupies the bottleneck for its size plus [`Link::OVERHEAD`] (IPv4 and UDP
/// headers), as on a real link. An unshaped link ([`Link::unshaped`]) only delays.
#[derive(Debug)]
pub(crate) struct Link {
    /// Bottleneck rate, bits per second (`None`: unshaped).
    rate: Option<u64>,
    /// Bytes the queue holds at most; a datagram that does not fit is dropped.
    queue: usize,
    /// One-way propagation delay.
    delay: Duration,
    /// When the bottleneck has sent everything queued so far.
    busy_until: Option<Instant>,
    /// Datagrams on their way, by arrival instant (FIFO, so already in order).
    in_flight: std::collections::VecDeque<(Instant, Transport, BytesMut)>,
    /// Datagrams given to the link.
    pub sent: usize,
    /// Datagrams the full queue dropped.
    pub dropped: usize,
    /// Bytes delivered (with [`Link::OVERHEAD`]).
    pub delivered_bytes: u64,
}

impl Link {
    /// Bytes of IPv4 and UDP header each datagram carries on the wire.
    pub(crate) const OVERHEAD: usize = 28;

    /// A bottleneck of `rate` bits per second with a `queue`-byte drop-tail queue and `delay`
    /// of propagation.
    pub(crate) fn shaped(rate: u64, queue: usize, delay: Duration) -> Self {
        Self {
            rate: Some(rate.max(1)),
            queue,
            delay,
            busy_until: None,
            in_flight: Default::default(),
            sent: 0,
            dropped: 0,
            delivered_bytes: 0,
        }
    }

    /// A path that only delays.
    pub(crate) fn unshaped(delay: Duration) -> Self {
        Self {
            rate: None,
            ..Self::shaped(1, 0, delay)
        }
    }

    /// Changes the bottleneck from now on: its rate (`None`: no bottleneck) and its queue
    /// (what is queued drains at the new rate from its next datagram on). Datagrams stay in
    /// order: one sent after the change never overtakes one still queued.
    pub(crate) fn reshape(&mut self, rate: Option<u64>, queue: usize) {
        self.rate = rate.map(|r| r.max(1));
        self.queue = queue;
    }

    /// A datagram enters the link at `now`; `false`: the queue was full and dropped it.
    pub(crate) fn send(&mut self, now: Instant, transport: Transport, data: BytesMut) -> bool {
        self.sent += 1;
        let size = data.len() + Self::OVERHEAD;
        let arrival = match self.rate {
            None => now + self.delay,
            Some(rate) => {
                let start = self.busy_until.map_or(now, |b| b.max(now));
                // What is still queued ahead of this datagram, in bytes.
                let backlog = (start - now).as_secs_f64() * rate as f64 / 8.0;
                if backlog + size as f64 > self.queue as f64 {
                    self.dropped += 1;
                    return false;
                }
                let done = start + Duration::from_secs_f64(size as f64 * 8.0 / rate as f64);
                self.busy_until = Some(done);
                done + self.delay
            }
        };
        self.in_flight.push_back((arrival, transport, data));
        true
    }

    /// The next datagram that has arrived by `now`, with its arrival instant.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<(Instant, Transport, BytesMut)> {
        if self.in_flight.front()?.0 > now {
            return None;
        }
        let (at, transport, data) = self.in_flight.pop_front()?;
        self.delivered_bytes += (data.len() + Self::OVERHEAD) as u64;
        Some((at, transport, data))
    }
}

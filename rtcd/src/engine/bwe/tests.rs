//! rtcd sending video to a browser-like client through a simulated path, in virtual time:
//! the estimate the client's transport-cc feedback produces, end to end.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::engine::peer::Slot;
use crate::engine::testing::{self, Client, Link};
use crate::engine::{Identity, Peer, PeerEvent};
use crate::media::packet::{MediaKind, MediaPacket, RtpHeaderOut};

/// One-way propagation delay each way (RTT 50 ms).
const ONE_WAY: Duration = Duration::from_millis(25);
/// Payload bytes of a video packet.
const PAYLOAD: usize = 1_100;
/// Packets a second of the "camera" rtcd forwards (~1.5 Mbit/s of RTP payload).
const PPS: f64 = 170.0;
/// Frames a second: packets leave in one burst per frame, as an SFU forwards them.
const FPS: u32 = 30;

/// A subscriber's call: rtcd's [`Peer`] sending one video slot to a [`Client`] through `down`,
/// the client's datagrams (feedback, checks) coming back through `up`.
struct Call {
    t0: Instant,
    now: Instant,
    server: Peer,
    client: Client,
    down: Link,
    up: Link,
    slot: Slot,
    payload_type: u8,
    connected: Option<Instant>,
    seq: u16,
    /// Packets owed to the current frame (fractions carry over).
    credit: f64,
    source: MediaPacket,
    /// Every `BandwidthEstimate` event: (time since `t0`, bits per second).
    estimates: Vec<(Duration, u64)>,
    /// RTP packets handed to `send_rtp`.
    packets_sent: usize,
    /// The slot's transport-cc extension id.
    transport_cc_id: u8,
    /// Every RTP datagram rtcd sent: (SSRC, payload type, transport-wide sequence number),
    /// read from the clear SRTP header.
    wire: Vec<(u32, u8, Option<u16>)>,
    /// Sequence number of the slot's RTX stream.
    rtx_seq: u16,
    /// Wall-clock time spent in the server's methods (the cost measurement).
    server_time: Duration,
    /// A media worker's send lag: how long after they are written the packets of a frame
    /// leave, by frame number (`None`: when written).
    lag: Option<fn(u64) -> Duration>,
    /// The worker's clock the server's peer was given, if any.
    departures: Option<Departures>,
    /// Until when the busy worker is flushing its last round.
    busy_until: Instant,
    /// A frame is due (its time in the call, in milliseconds), not yet written.
    frame_due: Option<u64>,
    /// Frames written.
    frames: u64,
}

impl Call {
    fn new(down: Link) -> Self {
        Self::build(down, true)
    }

    fn build(down: Link, estimation: bool) -> Self {
        Self::on_worker(down, estimation, None, false)
    }

    /// A call whose packets leave `lag(frame)` after they are written, as from a busy media
    /// worker; with `clock`, the peer is told when (`Departures`), as a worker tells it.
    fn lagging(down: Link, lag: fn(u64) -> Duration, clock: bool) -> Self {
        Self::on_worker(down, true, Some(lag), clock)
    }

    fn on_worker(
        down: Link,
        estimation: bool,
        lag: Option<fn(u64) -> Duration>,
        clock: bool,
    ) -> Self {
        let now = Instant::now();
        let identity = Identity::generate().unwrap();
        let mut settings = testing::settings();
        let departures = clock.then(|| Departures::new(now));
        settings.departures = departures.clone();
        settings.estimation = estimation;
        let mut server = Peer::new(&identity, &settings, now).unwrap();
        let mut client = Client::new("10.9.0.3:6000", now);
        client.receive(MediaKind::Video);
        let offer = client.offer(now);
        let answer = server.apply_offer(&offer, now).unwrap();
        client.answer(&answer.sdp, now);
        let slot = server.slots().next().unwrap().clone();
        let payload_type = slot
            .codecs
            .iter()
            .find(|c| c.mime_type == "video/vp8")
            .expect("VP8 negotiated")
            .payload_type;
        let source = MediaPacket::new(
            0x5EED,
            0,
            0,
            payload_type,
            Bytes::from(vec![0x10; PAYLOAD]),
            now,
        );
        Self {
            t0: now,
            now,
            server,
            client,
            down,
            up: Link::unshaped(ONE_WAY),
            slot,
            payload_type,
            connected: None,
            seq: 0,
            credit: 0.0,
            source,
            estimates: Vec::new(),
            packets_sent: 0,
            transport_cc_id: 0,
            wire: Vec::new(),
            rtx_seq: 1_000,
            server_time: Duration::ZERO,
            lag,
            departures,
            busy_until: now,
            frame_due: None,
            frames: 0,
        }
        .with_transport_cc_id()
    }

    fn with_transport_cc_id(mut self) -> Self {
        self.transport_cc_id = self
            .slot
            .extensions
            .iter()
            .find(|e| e.uri.contains("transport-wide-cc"))
            .expect("transport-cc negotiated on the slot")
            .id;
        self
    }

    /// Runs until ICE and DTLS are up (media flows from then on); panics after 5 s.
    fn connect(&mut self) -> Duration {
        while self.connected.is_none() {
            assert!(self.elapsed() < Duration::from_secs(5), "connected");
            self.run(10, &fixed(0.0));
        }
        self.elapsed()
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// The last estimate emitted.
    fn estimate(&self) -> Option<u64> {
        self.estimates.last().map(|(_, e)| *e)
    }

    /// Runs `ms` milliseconds of 1 ms steps; once connected, rtcd sends `pps(estimate)`
    /// packets a second in a burst per frame.
    fn run(&mut self, ms: u64, pps: &dyn Fn(Option<u64>) -> f64) {
        let frame_every = 1_000 / u64::from(FPS);
        for _ in 0..ms {
            self.now += Duration::from_millis(1);
            let now = self.now;
            // Arrivals first, each at its own instant (all within the last millisecond).
            while let Some((at, _, data)) = self.down.poll(now) {
                self.client.deliver(data, at);
            }
            if let Some(since) = self.connected {
                let ms_in = (now - since).as_millis() as u64;
                if ms_in.is_multiple_of(frame_every) {
                    self.credit += pps(self.estimate()) / f64::from(FPS);
                    self.frame_due = Some(ms_in);
                }
            }
            // A busy worker takes nothing in until its round's flush is done (datagrams wait
            // in the socket with their arrival instants, a frame due waits too).
            if now >= self.busy_until {
                self.server_round(now);
            }
            self.client.handle_timeout(now);
            while let Some((transport, data)) = self.client.poll_transmit() {
                self.up.send(now, transport, data);
            }
            while let Some(event) = self.server.poll_event() {
                match event {
                    PeerEvent::Connected => self.connected = Some(now),
                    PeerEvent::BandwidthEstimate { bits_per_second } => {
                        self.estimates.push((now - self.t0, bits_per_second));
                    }
                    _ => {}
                }
            }
        }
    }

    /// One round of the server: datagrams in, its timers, the frame due, then everything it
    /// wrote onto the down link, leaving `lag(frame)` later when it is a busy worker (which
    /// then takes nothing in until that flush is done, and tells its clock, if it has one).
    fn server_round(&mut self, now: Instant) {
        let started = std::time::Instant::now();
        while let Some((at, transport, data)) = self.up.poll(now) {
            self.server.handle_datagram(transport, &data, at);
        }
        self.server.handle_timeout(now);
        let mut leaves = now;
        if let Some(ms_in) = self.frame_due.take() {
            if let Some(lag) = self.lag {
                leaves = now + lag(self.frames);
            }
            self.frames += 1;
            while self.credit >= 1.0 {
                self.credit -= 1.0;
                self.send_one(ms_in);
            }
        }
        let mut out = Vec::new();
        while let Some(datagram) = self.server.poll_transmit() {
            out.push(datagram);
        }
        self.server_time += started.elapsed();
        if out.is_empty() {
            return;
        }
        for (transport, data) in out {
            if let Some(rtp) = wire_rtp(&data, self.transport_cc_id) {
                self.wire.push(rtp);
            }
            self.down.send(leaves, transport, data);
        }
        self.busy_until = leaves;
        if let Some(departures) = &self.departures {
            departures.flushed(leaves);
        }
    }

    fn send_one(&mut self, ms_in: u64) {
        let timestamp = (ms_in * 90) as u32;
        let header = RtpHeaderOut::new(
            self.slot.ssrc,
            self.seq,
            timestamp,
            self.payload_type,
            false,
        );
        self.seq = self.seq.wrapping_add(1);
        let payload = self.source.payload.clone();
        self.server
            .send_rtp(self.slot.id, &header, &self.source, payload, self.now)
            .unwrap();
        self.packets_sent += 1;
    }

    /// A retransmission of `seq` on the slot's RTX stream (RFC 4588: the original sequence
    /// number in front of the payload), or with `padding` a padding-only packet on it (how
    /// Chromium probes).
    fn send_rtx(&mut self, seq: u16, padding: bool) {
        let rtx_ssrc = self.slot.rtx_ssrc.expect("RTX negotiated");
        let rtx_pt = self
            .slot
            .codecs
            .iter()
            .find(|c| c.payload_type == self.payload_type)
            .and_then(|c| c.rtx_payload_type)
            .expect("an RTX payload type for VP8");
        let header = RtpHeaderOut::new(rtx_ssrc, self.rtx_seq, 0, rtx_pt, false);
        self.rtx_seq = self.rtx_seq.wrapping_add(1);
        if padding {
            self.server
                .send_padding(self.slot.id, &header, self.now)
                .unwrap();
        } else {
            let mut payload = seq.to_be_bytes().to_vec();
            payload.extend_from_slice(&self.source.payload);
            self.server
                .send_rtp(
                    self.slot.id,
                    &header,
                    &self.source,
                    payload.into(),
                    self.now,
                )
                .unwrap();
        }
    }

    /// Estimates emitted in `from..to` (times since `t0`).
    fn estimates_between(&self, from: Duration, to: Duration) -> Vec<u64> {
        self.estimates
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, e)| *e)
            .collect()
    }

    /// One line per second for a test's output (`--nocapture`): what was emitted, the
    /// estimator's halves and the link's drops.
    fn trace(&self) -> String {
        let e = self.server.estimate();
        format!(
            "t={:>5.1}s estimate={:?} halves={:?} sent={} dropped={}",
            self.elapsed().as_secs_f64(),
            self.estimate(),
            e.map(|e| (e.delay_based, e.loss_based, e.loss)),
            self.down.sent,
            self.down.dropped,
        )
    }
}

/// An RTP datagram's SSRC, payload type and transport-wide sequence number (under extension
/// `id`), read from its header, which SRTP leaves in clear; `None`: not RTP (RTCP, STUN, DTLS).
fn wire_rtp(d: &[u8], id: u8) -> Option<(u32, u8, Option<u16>)> {
    if d.len() < 12 || d[0] >> 6 != 2 || (192..=223).contains(&d[1]) {
        return None;
    }
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    let pt = d[1] & 0x7f;
    let mut at = 12 + 4 * usize::from(d[0] & 0x0f);
    if d[0] & 0x10 == 0 || d.get(at..at + 2)? != [0xBE, 0xDE] {
        return Some((ssrc, pt, None));
    }
    let words = usize::from(u16::from_be_bytes([d[at + 2], d[at + 3]]));
    at += 4;
    let end = (at + 4 * words).min(d.len());
    let mut twcc = None;
    while at < end {
        let b = d[at];
        if b == 0 {
            at += 1;
            continue;
        }
        let (ext, len) = (b >> 4, usize::from(b & 0x0f) + 1);
        if ext == id && len == 2 && at + 3 <= end {
            twcc = Some(u16::from_be_bytes([d[at + 1], d[at + 2]]));
        }
        at += 1 + len;
    }
    Some((ssrc, pt, twcc))
}

/// Bits on the wire per video packet (payload, RTP header with the transport-cc extension,
/// SRTP tag, IP and UDP).
const WIRE_BITS: f64 = ((PAYLOAD + 12 + 8 + 10 + Link::OVERHEAD) * 8) as f64;

fn fixed(pps: f64) -> impl Fn(Option<u64>) -> f64 {
    move |_| pps
}

/// What an SFU's allocator does with the estimate: sends what it allows, up to the source's
/// rate.
fn following(max_pps: f64) -> impl Fn(Option<u64>) -> f64 {
    move |estimate| estimate.map_or(max_pps, |e| (e as f64 / WIRE_BITS).min(max_pps))
}

/// The bottleneck of these tests: 600 kbit/s, 30 KB of queue (400 ms at that rate, like a
/// home router's buffer).
fn bottleneck() -> Link {
    Link::shaped(600_000, 30_000, ONE_WAY)
}

/// Every packet rtcd sends a subscriber (media, RTX, RTX padding) carries a transport-wide
/// sequence number, one sequence over all of them, and the client's feedback about them makes
/// an estimate.
#[test]
fn every_packet_sent_carries_a_transport_wide_sequence_number() {
    let mut call = Call::new(Link::unshaped(ONE_WAY));
    call.connect();
    call.run(500, &fixed(PPS));
    for seq in 0..5 {
        call.send_rtx(seq, false);
        call.send_rtx(0, true);
    }
    call.run(1_000, &fixed(PPS));
    let rtx_ssrc = call.slot.rtx_ssrc.unwrap();
    let media: Vec<_> = call.wire.iter().filter(|w| w.0 == call.slot.ssrc).collect();
    let rtx: Vec<_> = call.wire.iter().filter(|w| w.0 == rtx_ssrc).collect();
    assert!(media.len() > 100, "media flowed: {}", media.len());
    let ssrcs: std::collections::BTreeSet<_> = call.wire.iter().map(|w| (w.0, w.1)).collect();
    assert_eq!(
        rtx.len(),
        10,
        "retransmissions and padding left: {rtx:?} {ssrcs:?} rtx {rtx_ssrc}"
    );
    let numbers: Vec<u16> = call.wire.iter().filter_map(|w| w.2).collect();
    assert_eq!(
        numbers.len(),
        call.wire.len(),
        "every RTP datagram carries the extension: {:?}",
        call.wire
            .iter()
            .filter(|w| w.2.is_none())
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "one transport-wide sequence, in order"
    );
    // And the client (rtc, as a browser) reads it on what it receives.
    let received = &call.client.received;
    assert!(
        received.iter().filter(|r| r.ssrc == call.slot.ssrc).count() > 100
            && received.iter().all(|r| r.transport_cc.is_some()),
        "the client reads the extension on every packet"
    );
    assert!(
        call.estimate().is_some(),
        "the client's feedback made an estimate"
    );
}

#[test]
fn the_emitter_announces_the_first_estimate_and_moves_of_five_percent() {
    let mut emitter = Emitter::default();
    let at = |bits_per_second| {
        Some(Estimate {
            bits_per_second,
            delay_based: bits_per_second,
            loss_based: bits_per_second,
            loss: None,
        })
    };
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    assert_eq!(emitter.next(None, t0), None, "nothing measured yet");
    assert_eq!(emitter.next(at(1_000_000), t0), Some(1_000_000));
    assert_eq!(emitter.next(at(1_040_000), ms(50)), None);
    assert_eq!(emitter.next(at(960_000), ms(100)), None);
    assert_eq!(emitter.next(at(1_050_000), ms(150)), Some(1_050_000));
    assert_eq!(
        emitter.next(at(890_000), ms(200)),
        Some(890_000),
        "a back-off"
    );
    let repeat = EMIT_REPEAT.as_millis() as u64;
    assert_eq!(emitter.next(at(890_000), ms(200 + repeat - 1)), None);
    assert_eq!(
        emitter.next(at(890_000), ms(200 + repeat)),
        Some(890_000),
        "every EMIT_REPEAT anyway"
    );
}

/// Prints the trajectory of a call, a line a second, and a summary (exploration: run with
/// `--ignored --nocapture`).
fn explore(name: &str, mut call: Call, seconds: u64, pps: &dyn Fn(Option<u64>) -> f64) -> Call {
    println!("== {name}");
    let connected = call.connect();
    println!("connected after {connected:?}");
    for _ in 0..seconds {
        call.run(1_000, pps);
        println!("{}", call.trace());
    }
    summarize(&call, connected);
    call
}

/// When the estimate first reached 750 kbit/s or less, and its time-weighted mean, minimum
/// and maximum from 5 s after `from` on.
fn summarize(call: &Call, from: Duration) {
    let first_low = call
        .estimates
        .iter()
        .find(|(at, e)| *at >= from && *e <= 750_000)
        .map(|(at, e)| (*at - from, *e));
    let start = from + Duration::from_secs(5);
    let end = call.elapsed();
    let mut weighted = 0.0;
    let (mut min, mut max) = (u64::MAX, 0);
    let mut current = call
        .estimates
        .iter()
        .rev()
        .find(|(at, _)| *at <= start)
        .map(|(_, e)| *e);
    let mut last = start;
    for (at, e) in call.estimates.iter().filter(|(at, _)| *at > start) {
        if let Some(c) = current {
            weighted += c as f64 * (*at - last).as_secs_f64();
            min = min.min(c);
            max = max.max(c);
        }
        current = Some(*e);
        last = *at;
    }
    if let Some(c) = current {
        weighted += c as f64 * (end - last).as_secs_f64();
        min = min.min(c);
        max = max.max(c);
    }
    let mean = weighted / (end - start).as_secs_f64();
    println!(
        "first <= 750 kbit/s: {first_low:?}; from 5 s: mean {mean:.0} min {min} max {max}; {} events; link sent {} dropped {} delivered {:.0} bit/s",
        call.estimates.iter().filter(|(at, _)| *at >= from).count(),
        call.down.sent,
        call.down.dropped,
        call.down.delivered_bytes as f64 * 8.0 / (end - from).as_secs_f64()
    );
}

#[test]
#[ignore]
fn explore_trajectories() {
    explore(
        "bottleneck, sender follows",
        Call::new(bottleneck()),
        60,
        &following(PPS),
    );
    explore(
        "bottleneck 50 ms queue, sender follows",
        Call::new(Link::shaped(600_000, 3_750, ONE_WAY)),
        60,
        &following(PPS),
    );
    explore(
        "bottleneck, fixed sender",
        Call::new(bottleneck()),
        20,
        &fixed(PPS),
    );
    explore(
        "unshaped, fixed sender",
        Call::new(Link::unshaped(ONE_WAY)),
        20,
        &fixed(PPS),
    );
    explore(
        "5 Mbit/s, 300 kbit/s sent",
        Call::new(Link::shaped(5_000_000, 60_000, ONE_WAY)),
        60,
        &fixed(300_000.0 / WIRE_BITS),
    );
    let mut call = explore(
        "unshaped then 600 kbit/s, sender follows",
        Call::new(Link::unshaped(ONE_WAY)),
        10,
        &following(PPS),
    );
    call.down.reshape(Some(600_000), 30_000);
    let narrowed = call.elapsed();
    for _ in 0..20 {
        call.run(1_000, &following(PPS));
        println!("{}", call.trace());
    }
    summarize(&call, narrowed);
    // And widens again: 600 kbit/s, then 5 Mbit/s.
    let mut call = explore(
        "600 kbit/s then 5 Mbit/s, sender follows",
        Call::new(bottleneck()),
        20,
        &following(PPS),
    );
    call.down.reshape(Some(5_000_000), 60_000);
    let widened = call.elapsed();
    for _ in 0..15 {
        call.run(1_000, &following(PPS));
        println!("{}", call.trace());
    }
    let sent_bps = (PPS * WIRE_BITS) as u64;
    let full = call
        .estimates
        .iter()
        .find(|(at, e)| *at >= widened && *e >= sent_bps)
        .map(|(at, e)| (*at - widened, *e));
    println!("widened: the estimate reached the source's {sent_bps} bit/s after {full:?}");
}

/// rtc 0.21.1's GCC's delay half (no longer used: kept as the record of its defect) fed the
/// reports of a 600 kbit/s bottleneck directly (no rtc pipeline): what its trend filter and
/// overuse detector make of a queue that grows by 55 ms a frame. rtcd's own detector is
/// unit-tested in `estimator::tests`.
#[test]
#[ignore]
fn explore_the_delay_half_on_a_growing_queue() {
    use rtc::interceptor::{OveruseDetector, SlopeEstimator, Usage};
    let t0 = Instant::now();
    let mut slope = SlopeEstimator::new();
    let mut detector = OveruseDetector::new();
    // The same detector given the estimate as libwebrtc compares it: times the number of
    // deltas the filter has seen, up to 60.
    let mut scaled = OveruseDetector::new();
    let mut deltas = 0u32;
    let mut first_scaled_over = None;
    let (rate, size) = (600_000.0, 1_158usize);
    let mut busy = 0.0f64; // seconds since t0 the bottleneck is busy until
    let mut queue_full_at = None;
    let mut id = 0u64;
    for frame in 0..60u64 {
        let sent = frame as f64 / 30.0;
        let mut reports = Vec::new();
        for _ in 0..6 {
            let start = busy.max(sent);
            let backlog = (start - sent) * rate / 8.0;
            let arrived = backlog + size as f64 <= 30_000.0;
            if arrived {
                busy = start + size as f64 * 8.0 / rate;
            } else {
                queue_full_at.get_or_insert(frame);
            }
            reports.push(rtc::interceptor::PacketReport {
                ssrc: 1,
                id,
                rtp_sequence_number: id as u16,
                is_twcc: true,
                twcc_sequence_number: id as u16,
                size,
                arrived,
                departure: t0 + Duration::from_secs_f64(sent),
                arrival: arrived.then(|| Duration::from_secs_f64(busy + 0.025)),
                ecn: Default::default(),
            });
            id += 1;
        }
        for r in &reports {
            if let Some(trend) = slope.accumulate(r) {
                let usage = detector.update(trend.at, trend.estimate_ms);
                deltas += 1;
                let t = trend.estimate_ms * f64::from(deltas.min(60));
                if scaled.update(trend.at, t) == Usage::Over {
                    first_scaled_over.get_or_insert((frame, t));
                }
                println!(
                    "frame {frame:>2} measured {:>6.1} ms filtered {:>6.2} ms threshold {:>5.2} {:?}{}",
                    trend.measurement_ms,
                    trend.estimate_ms,
                    detector.threshold_ms(),
                    usage,
                    if usage == Usage::Over { " <==" } else { "" }
                );
            }
        }
    }
    println!("queue first full at frame {queue_full_at:?}");
    println!("scaled as libwebrtc: first overuse at (frame, T ms) {first_scaled_over:?}");
}

/// The estimate towards a subscriber behind a 600 kbit/s bottleneck, rtcd sending what the
/// estimate allows (as the allocator will) of a 1.5 Mbit/s source: it starts at 1 Mbit/s and
/// must fall to the link's rate within 3 s of media, never far below it.
#[test]
fn the_estimate_falls_to_a_600_kbit_bottleneck_within_three_seconds() {
    let mut call = Call::new(bottleneck());
    let connected = call.connect();
    call.run(3_000, &following(PPS));
    let within = call.estimates_between(connected, connected + Duration::from_secs(3));
    assert!(
        within.iter().any(|e| (300_000..=750_000).contains(e)),
        "down to 300-750 kbit/s within 3 s: {within:?}"
    );
    call.run(27_000, &following(PPS));
    let all: Vec<u64> = call.estimates.iter().map(|(_, e)| *e).collect();
    assert!(
        all.iter().all(|e| *e >= 300_000),
        "never below half the link's rate: {all:?}"
    );
    // The halves behind it: the estimate is the lower one, and the loss the link caused is
    // known.
    let e = call.server.estimate().unwrap();
    assert_eq!(e.bits_per_second, e.delay_based.min(e.loss_based));
    assert!(e.loss.is_some(), "{e:?}");
    assert!(call.down.dropped > 0, "the queue overflowed at some point");
}

/// What a correct estimator must also do on that link: stay near the link's rate once found.
/// rtc 0.21.1's GCC did not. Its delay half never detected the queue growing (the Kalman
/// estimate of the per-group delay gradient, not scaled by the number of deltas as in
/// libwebrtc, stays under the 12.5 ms threshold while the queue grows 59 ms a frame, see
/// `explore_the_delay_half_on_a_growing_queue`), so only the loss half acted: the estimate was
/// a sawtooth between ~400 and ~975 kbit/s with a ~6 s period, each tooth filling the 400 ms
/// queue and losing 25-35 % of a second's packets. rtcd's estimator: a sawtooth of 500-660
/// kbit/s (the delay half backing off to 0.85 x what arrives, then climbing additively), no
/// loss after the first second.
#[test]
fn the_estimate_stays_near_a_600_kbit_bottleneck() {
    let mut call = Call::new(bottleneck());
    let connected = call.connect();
    call.run(30_000, &following(PPS));
    let steady = call.estimates_between(connected + Duration::from_secs(5), call.elapsed());
    assert!(
        steady.iter().all(|e| (300_000..=750_000).contains(e)),
        "300-750 kbit/s from 5 s on: {steady:?}"
    );
}

/// A sender that ignores the estimate (1.5 Mbit/s into 600 kbit/s, 60 % lost): the link still
/// delivers 600 kbit/s, and that is what the estimate should say. rtc 0.21.1's loss half
/// multiplied its target by (1 - loss / 2) every 200 ms for as long as loss lasted, whatever
/// arrived, so the estimate fell to the floor (100 kbit/s) ~3 s after media started and
/// stayed. rtcd's loss half never backs off below the acknowledged rate: ~580 kbit/s.
#[test]
fn the_estimate_under_persistent_overload_is_what_the_link_delivers() {
    let mut call = Call::new(bottleneck());
    let connected = call.connect();
    call.run(20_000, &fixed(PPS));
    let steady = call.estimates_between(connected + Duration::from_secs(5), call.elapsed());
    let last = call.estimate().unwrap_or_default();
    assert!(
        (300_000..=750_000).contains(&last) && steady.iter().all(|e| *e >= 300_000),
        "near the 600 kbit/s delivered: last {last}, from 5 s on {steady:?}"
    );
}

/// Without a bottleneck the estimate does not collapse: it rises from 1 Mbit/s past the 1.6
/// Mbit/s sent.
#[test]
fn an_unshaped_path_keeps_the_estimate_above_what_is_sent() {
    let mut call = Call::new(Link::unshaped(ONE_WAY));
    let connected = call.connect();
    call.run(10_000, &fixed(PPS));
    let all: Vec<u64> = call.estimates.iter().map(|(_, e)| *e).collect();
    assert!(
        all.iter().all(|e| *e >= 900_000),
        "no back-off on a clean path: {all:?}"
    );
    let sent_bps = (PPS * WIRE_BITS) as u64;
    // The estimate in force from 8 s on: the last one emitted before, and any emitted since
    // (none when it holds still, at 1.5 times what arrives).
    let late = call.estimates_between(connected + Duration::from_secs(8), call.elapsed());
    let last = call.estimate().unwrap_or_default();
    assert!(
        late.iter().all(|e| *e >= sent_bps) && last >= sent_bps,
        "above the {sent_bps} bit/s sent after 8 s: {late:?}, last {last}"
    );
}

/// Sending far below a path's capacity says nothing about the capacity above ~1.5 times what
/// is received: GCC (draft-ietf-rmcat-gcc, libwebrtc) caps its increase there, and finding
/// more takes probing. rtc 0.21.1's GCC had no such cap (its increase is 8 %/s of its own
/// target, the loss half 5 % per 200 ms): sending 300 kbit/s on a 5 Mbit/s link, the estimate
/// passed the link's rate after ~23 s and reached the 25 Mbit/s ceiling after ~44 s. rtcd's
/// estimator does not grow above 1.5 x 300 kbit/s + 10 kbit/s (~460 kbit/s): it stays at its
/// initial 1 Mbit/s (an estimate above the cap is kept, not lowered).
#[test]
fn an_estimate_does_not_outgrow_what_is_received() {
    let mut call = Call::new(Link::shaped(5_000_000, 60_000, ONE_WAY));
    call.connect();
    call.run(30_000, &fixed(300_000.0 / WIRE_BITS));
    let all: Vec<u64> = call.estimates.iter().map(|(_, e)| *e).collect();
    let last = call.estimate().unwrap_or_default();
    assert!(
        last <= super::INITIAL_BITRATE as u64
            && all.iter().all(|e| *e <= super::INITIAL_BITRATE as u64),
        "never above its start, a few times the 300 kbit/s received: {all:?}"
    );
}

/// Wall-clock cost of the estimation on rtcd's side: the same 100 s call at 1,000 packets a
/// second (unshaped), with and without the TWCC sender, the send history and the estimator. Run in
/// release mode: `cargo test --release -p rtcd --lib engine::bwe::tests::cost -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn cost_of_estimation_per_packet() {
    for estimation in [false, true, false, true] {
        let mut call = Call::build(Link::unshaped(ONE_WAY), estimation);
        call.connect();
        call.server_time = Duration::ZERO;
        let before = call.packets_sent;
        call.run(100_000, &fixed(1_000.0));
        let packets = call.packets_sent - before;
        println!(
            "estimation {estimation}: {packets} packets, server {:?} = {:.2} us/packet, estimate {:?}",
            call.server_time,
            call.server_time.as_secs_f64() * 1e6 / packets as f64,
            call.estimate()
        );
    }
}

/// A path that narrows mid-call (a clean path becomes 600 kbit/s): the estimate follows it
/// down within 3 s.
#[test]
fn the_estimate_follows_a_path_that_narrows() {
    let mut call = Call::new(Link::unshaped(ONE_WAY));
    call.connect();
    call.run(10_000, &following(PPS));
    let before = call.estimate().unwrap_or_default();
    assert!(before > 1_500_000, "the clean path's estimate: {before}");
    call.down.reshape(Some(600_000), 30_000);
    let narrowed = call.elapsed();
    call.run(3_000, &following(PPS));
    let after = call.estimates_between(narrowed, call.elapsed());
    assert!(
        after.iter().any(|e| *e <= 750_000),
        "down to 750 kbit/s within 3 s: {after:?}"
    );
}

/// A busy media worker's send lag, by frame: it grows 12 ms a frame for 20 frames (to 228 ms;
/// measured on a two-core host in a weak-link call: 13 ms at the median, 204 ms at the 99th
/// percentile, 564 ms at most), then the worker keeps up for 40 frames, again and again. A
/// round's packets leave that long after they were written, and the worker takes nothing in
/// meanwhile.
fn busy_worker(frame: u64) -> Duration {
    let k = frame % 60;
    Duration::from_millis(if k < 20 { k * 12 } else { 0 })
}

/// A lag that grows on rtcd's side looks, in departures taken when packets are written, like a
/// queue growing on the path: the delay half backed off on a clean path again and again, and
/// with an allocator following the estimate (sending less, so less is acknowledged, so the next
/// back-off goes lower) the estimate sank far below the link. With the worker's clock
/// (`Departures`: when each round really left) it holds at what is sent, as without a lag.
#[test]
fn a_worker_s_send_lag_is_not_read_as_queueing() {
    let sent_bps = (PPS * WIRE_BITS) as u64;
    let steady = |clock: bool| {
        let mut call = Call::lagging(Link::unshaped(ONE_WAY), busy_worker, clock);
        let connected = call.connect();
        call.run(20_000, &following(PPS));
        let from = connected + Duration::from_secs(5);
        let mut steady = call.estimates_between(from, call.elapsed());
        // The estimate in force when the window opened counts too.
        if let Some((_, e)) = call.estimates.iter().rev().find(|(at, _)| *at < from) {
            steady.push(*e);
        }
        steady
    };
    let with_clock = steady(true);
    assert!(
        with_clock.iter().all(|e| *e >= sent_bps * 9 / 10),
        "the estimate holds near the {sent_bps} bit/s sent: {with_clock:?}"
    );
    // The same call without the clock, for the record (`--nocapture`): what the fix removes.
    let without = steady(false);
    println!(
        "lowest estimate from 5 s on: with the worker's clock {:?}, without {:?}",
        with_clock.iter().min(),
        without.iter().min()
    );
}

/// The worker's clock: a packet written in a round reads as leaving when that round's flush was
/// done; a round not yet flushed, or forgotten, keeps its stamp (never later than the truth).
#[test]
fn departures_resolve_each_round_to_its_flush() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let clock = Departures::new(t0);
    let first = clock.stamp();
    clock.flushed(ms(40));
    let second = clock.stamp();
    assert_eq!(
        second,
        ms(40),
        "the next round is stamped when the last one left"
    );
    assert_eq!(clock.left(first), Some(ms(40)));
    assert_eq!(clock.left(second), None, "not flushed yet");
    // A flush that ends at the same instant still makes a round of its own.
    clock.flushed(ms(40));
    let third = clock.stamp();
    assert!(third > second);
    assert_eq!(clock.left(second), Some(third));
    for n in 0..ROUNDS_KEPT as u64 {
        clock.flushed(ms(100 + n));
    }
    assert_eq!(
        clock.left(first),
        None,
        "forgotten after {ROUNDS_KEPT} rounds"
    );
    assert_eq!(
        clock.left(ms(100 + ROUNDS_KEPT as u64 - 2)),
        Some(ms(100 + ROUNDS_KEPT as u64 - 1))
    );
}

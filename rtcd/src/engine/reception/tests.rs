use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{
    AttributedPacket, Interceptor, NackGeneratorBuilder, Packet, RTCPFeedback,
    ReceiverReportBuilder, StreamInfo, TaggedPacket,
};
use rtc::rtp::header::Header;
use rtc::sansio::Protocol;

use super::*;

const SSRC: u32 = 4242;
const MAX_NACKS: u16 = 10;

fn header(ssrc: u32, seq: u16, timestamp: u32) -> Header {
    Header {
        version: 2,
        ssrc,
        sequence_number: seq,
        timestamp,
        ..Default::default()
    }
}

fn info(ssrc: u32) -> StreamInfo {
    StreamInfo {
        ssrc,
        clock_rate: 90_000,
        rtcp_feedback: vec![RTCPFeedback {
            typ: "nack".into(),
            parameter: String::new(),
        }],
        ..Default::default()
    }
}

fn tagged(packet: Packet, now: Instant) -> TaggedPacket {
    TaggedPacket {
        now,
        transport: Default::default(),
        message: AttributedPacket::new(packet),
    }
}

/// The sequence numbers a NACK asks for.
fn asked(nack: &TransportLayerNack) -> Vec<u16> {
    nack.nacks
        .iter()
        .flat_map(|pair| pair.packet_list())
        .collect()
}

/// What one side sent at a tick: the holes asked for and the report blocks (with the
/// reporter's SSRC, which each side picks at random, left out).
#[derive(Debug, Default, PartialEq)]
struct Round {
    nacks: Vec<(u32, Vec<u16>)>,
    blocks: Vec<ReceptionReport>,
}

fn read_round(packets: impl IntoIterator<Item = Box<dyn RtcpPacket>>) -> Round {
    let mut round = Round::default();
    for packet in packets {
        let any = packet.as_any();
        if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            round.nacks.push((nack.media_ssrc, asked(nack)));
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            round.blocks.extend(rr.reports.iter().cloned());
        }
    }
    round.nacks.sort();
    round.blocks.sort_by_key(|b| b.ssrc);
    round
}

/// rtc's NACK generator and receiver reports, fed what [`Reception`] is fed.
struct Rtc {
    nack: rtc::interceptor::NackGeneratorInterceptor,
    reports: rtc::interceptor::ReceiverReportInterceptor,
}

impl Rtc {
    fn new(ssrcs: &[u32]) -> Self {
        let mut nack = NackGeneratorBuilder::new()
            .with_max_nacks_per_packet(MAX_NACKS)
            .build();
        let mut reports = ReceiverReportBuilder::new().build();
        for &ssrc in ssrcs {
            nack.bind_remote_stream(&info(ssrc));
            reports.bind_remote_stream(&info(ssrc));
        }
        Self { nack, reports }
    }

    fn receive(&mut self, header: &Header, now: Instant) {
        let packet = || {
            Packet::Rtp(rtc::rtp::Packet {
                header: header.clone(),
                payload: Bytes::from_static(&[0; 20]),
            })
        };
        self.nack.handle_read(tagged(packet(), now)).unwrap();
        self.reports.handle_read(tagged(packet(), now)).unwrap();
        while self.nack.poll_read().is_some() {}
        while self.reports.poll_read().is_some() {}
    }

    fn sender_report(&mut self, sr: SenderReport, now: Instant) {
        let packet = Packet::Rtcp(vec![Box::new(sr)]);
        self.reports.handle_read(tagged(packet, now)).unwrap();
        while self.reports.poll_read().is_some() {}
    }

    fn tick(&mut self, now: Instant) -> Round {
        self.nack.handle_timeout(now).unwrap();
        self.reports.handle_timeout(now).unwrap();
        let mut packets = Vec::new();
        for interceptor in [
            &mut self.nack as &mut dyn Interceptor,
            &mut self.reports as &mut dyn Interceptor,
        ] {
            while let Some(msg) = interceptor.poll_write() {
                if let Packet::Rtcp(p) = msg.message.packet {
                    packets.extend(p);
                }
            }
        }
        read_round(packets)
    }
}

fn tick(ours: &mut Reception, now: Instant) -> Round {
    let mut out = Vec::new();
    if ours.poll_timeout().is_some_and(|at| at <= now) {
        ours.poll(now, &mut out);
    }
    read_round(out)
}

/// A small deterministic generator (no dependency, the same run every time).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.next() % 100 < percent
    }
}

/// Ours says what rtc said, round for round: the same holes asked for the same number of
/// times, the same report blocks (highest number, cycles, losses, jitter, sender report echo),
/// through loss, bursts, reordering, duplicates, repairs that come late, a sequence number wrap
/// and a jump past the NACK log, on two streams at once.
#[test]
fn it_asks_and_reports_what_rtcs_interceptors_did() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let ssrcs = [SSRC, SSRC + 1];
    let mut rtc = Rtc::new(&ssrcs);
    let mut ours = Reception::new(1, MAX_NACKS);
    for ssrc in ssrcs {
        ours.bind(ssrc, 90_000, true);
    }
    let mut rng = Lcg(7);
    let mut next_seq = [65_000u16, 100];
    let mut late: Vec<(u32, Header, Instant)> = Vec::new();
    let (mut nacks, mut blocks) = (0, 0);
    for step in 0..3_000u32 {
        let now = t0 + ms(u64::from(step) * 5);
        for (i, &ssrc) in ssrcs.iter().enumerate() {
            let seq = next_seq[i];
            next_seq[i] = seq.wrapping_add(1);
            // A burst past the log once, on the first stream.
            if i == 0 && step == 1_500 {
                next_seq[i] = seq.wrapping_add(700);
            }
            let jitter = rng.next() % 2_000;
            let h = header(ssrc, seq, step * 450 + jitter);
            if rng.chance(6) {
                continue; // lost for good
            }
            if rng.chance(5) {
                // Repaired or reordered: arrives 20-200 ms later.
                let delay = ms(u64::from(20 + rng.next() % 180));
                late.push((ssrc, h, now + delay));
                continue;
            }
            rtc.receive(&h, now);
            ours.receive(&h, now);
            if rng.chance(2) {
                rtc.receive(&h, now); // a duplicate
                ours.receive(&h, now);
            }
        }
        let (due, kept): (Vec<_>, Vec<_>) = late.drain(..).partition(|(_, _, at)| *at <= now);
        late = kept;
        for (_, h, _) in due {
            rtc.receive(&h, now);
            ours.receive(&h, now);
        }
        if step % 300 == 150 {
            let sr = SenderReport {
                ssrc: SSRC,
                ntp_time: 0x1234_5678_9abc_def0 + u64::from(step),
                ..Default::default()
            };
            rtc.sender_report(sr.clone(), now);
            ours.sender_report(&sr, now);
        }
        let theirs = rtc.tick(now);
        let mine = tick(&mut ours, now);
        nacks += mine.nacks.len();
        blocks += mine.blocks.len();
        assert_eq!(mine, theirs, "step {step}");
    }
    // The run exercised both: NACK rounds with holes, a report a second for each stream.
    assert!(nacks > 200, "{nacks} NACKs");
    assert!(blocks >= 2 * 14, "{blocks} report blocks");
}

/// Bound again with the same NACK support (what a renegotiation does), a stream keeps its log:
/// a hole from before is still asked for. Bound with different support, it starts afresh.
#[test]
fn a_stream_bound_again_keeps_its_holes() {
    let t0 = Instant::now();
    let mut ours = Reception::new(1, MAX_NACKS);
    ours.bind(SSRC, 90_000, true);
    ours.receive(&header(SSRC, 10, 0), t0);
    ours.receive(&header(SSRC, 12, 0), t0);
    ours.bind(SSRC, 90_000, true);
    let round = tick(&mut ours, t0 + NACK_INTERVAL);
    assert_eq!(round.nacks, vec![(SSRC, vec![11])]);
    ours.bind(SSRC, 90_000, false);
    ours.bind(SSRC, 90_000, true);
    let round = tick(&mut ours, t0 + NACK_INTERVAL * 2);
    assert!(round.nacks.is_empty(), "{round:?}");
}

/// A hole is asked for at most `max_nacks` times, then given up; one that is filled is
/// forgotten at once.
#[test]
fn a_hole_is_asked_for_a_limited_number_of_times() {
    let t0 = Instant::now();
    let mut ours = Reception::new(1, 3);
    ours.bind(SSRC, 90_000, true);
    for seq in [1u16, 2, 4, 6] {
        ours.receive(&header(SSRC, seq, 0), t0);
    }
    let mut asked = Vec::new();
    for round in 1..=5u32 {
        let now = t0 + NACK_INTERVAL * round;
        if round == 2 {
            ours.receive(&header(SSRC, 5, 0), now); // 5 repaired
        }
        asked.push(tick(&mut ours, now).nacks);
    }
    let three = |seqs: Vec<u16>| vec![(SSRC, seqs)];
    assert_eq!(
        asked,
        vec![
            three(vec![3, 5]),
            three(vec![3]),
            three(vec![3]),
            vec![],
            vec![]
        ]
    );
}

/// One receiver report a second carries a block for every stream heard, none for a stream
/// bound but never heard (an RTX SSRC, say) or one unbound; a stream without NACK gets
/// reports and no NACKs; nothing goes out before the first packet.
#[test]
fn one_report_carries_every_stream_heard() {
    let t0 = Instant::now();
    let mut ours = Reception::new(77, MAX_NACKS);
    assert_eq!(ours.poll_timeout(), None);
    ours.bind(1, 90_000, false);
    ours.bind(2, 48_000, true);
    ours.bind(3, 90_000, true);
    ours.bind(4, 90_000, true);
    assert_eq!(ours.poll_timeout(), None, "nothing heard yet");
    ours.receive(&header(1, 5, 0), t0);
    ours.receive(&header(1, 7, 0), t0);
    ours.receive(&header(2, 9, 0), t0);
    ours.receive(&header(4, 1, 0), t0);
    ours.receive(&header(99, 1, 0), t0); // not bound
    ours.unbind(4);
    assert_eq!(ours.poll_timeout(), Some(t0 + NACK_INTERVAL));
    let mut out = Vec::new();
    ours.poll(t0 + REPORT_INTERVAL, &mut out);
    assert_eq!(out.len(), 1, "no NACK for stream 1 (no NACK negotiated)");
    let rr = out[0]
        .as_any()
        .downcast_ref::<ReceiverReport>()
        .expect("a receiver report");
    assert_eq!(rr.ssrc, 77);
    let blocks: Vec<_> = rr
        .reports
        .iter()
        .map(|b| (b.ssrc, b.last_sequence_number, b.fraction_lost))
        .collect();
    // Stream 1: 5 and 7 of 5..=7 arrived, one in three lost (85 / 256).
    assert_eq!(blocks, vec![(1, 7, 85), (2, 9, 0)]);
    // More than 31 streams heard: a second report.
    let mut many = Reception::new(77, MAX_NACKS);
    for ssrc in 0..40 {
        many.bind(ssrc, 90_000, false);
        many.receive(&header(ssrc, 1, 0), t0);
    }
    let mut out = Vec::new();
    many.poll(t0 + REPORT_INTERVAL, &mut out);
    let counts: Vec<_> = out
        .iter()
        .map(|p| {
            p.as_any()
                .downcast_ref::<ReceiverReport>()
                .map(|rr| rr.reports.len())
        })
        .collect();
    assert_eq!(counts, vec![Some(31), Some(9)]);
    for p in &out {
        let bytes = rtc::rtcp::packet::marshal(std::slice::from_ref(p)).expect("marshals");
        assert!(!bytes.is_empty());
    }
}

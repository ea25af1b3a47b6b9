use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{
    AttributedPacket, Interceptor, Packet, RTPHeaderExtension, StreamInfo, TaggedPacket,
    TwccReceiverBuilder,
};
use rtc::rtp::header::Header;
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, Unmarshal};

use super::*;

const SSRC: u32 = 777;
const ID: u8 = 3;
const URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

fn header(ssrc: u32, twcc: u16) -> Header {
    let mut h = Header {
        version: 2,
        ssrc,
        ..Default::default()
    };
    h.set_extension(ID, Bytes::copy_from_slice(&twcc.to_be_bytes()))
        .unwrap();
    h
}

/// What one feedback says: its counter and, per number from its base, the arrival time (us
/// since the first packet) or `None` for lost.
type Said = (u8, Vec<(u16, Option<i64>)>);

fn read(fb: &TransportLayerCc) -> Said {
    let mut states = Vec::new();
    for chunk in &fb.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(run) => {
                states.extend(std::iter::repeat_n(
                    run.packet_status_symbol,
                    usize::from(run.run_length),
                ));
            }
            PacketStatusChunk::StatusVectorChunk(v) => states.extend(v.symbol_list.iter()),
        }
    }
    states.truncate(usize::from(fb.packet_status_count));
    assert_eq!(states.len(), usize::from(fb.packet_status_count));
    let mut clock = i64::from(fb.reference_time) * REFERENCE_UNIT;
    let mut deltas = fb.recv_deltas.iter();
    let mut out = Vec::new();
    for (i, state) in states.into_iter().enumerate() {
        let seq = fb.base_sequence_number.wrapping_add(i as u16);
        if state == SymbolTypeTcc::PacketNotReceived {
            out.push((seq, None));
        } else {
            let delta = deltas.next().expect("a delta per received state");
            assert_eq!(delta.type_tcc_packet, state);
            clock += delta.delta;
            out.push((seq, Some(clock)));
        }
    }
    assert!(deltas.next().is_none(), "no delta without its state");
    (fb.fb_pkt_count, out)
}

/// The feedback in `packets`, read, after a trip through the wire format (which proves the
/// chunks are valid).
fn read_all(packets: Vec<Box<dyn RtcpPacket>>) -> Vec<Said> {
    packets
        .into_iter()
        .map(|p| {
            let fb = p
                .as_any()
                .downcast_ref::<TransportLayerCc>()
                .expect("transport-cc feedback")
                .clone();
            let wire = fb.marshal().unwrap();
            let back = TransportLayerCc::unmarshal(&mut wire.clone()).unwrap();
            assert_eq!(back.packet_status_count, fb.packet_status_count);
            read(&fb)
        })
        .collect()
}

/// The stream the tests send, with transport-cc in extension [`ID`] and an RTX SSRC.
fn info(ssrc: u32) -> StreamInfo {
    StreamInfo {
        ssrc,
        ssrc_rtx: Some(ssrc + 100),
        rtp_header_extensions: vec![RTPHeaderExtension {
            id: u16::from(ID),
            uri: URI.into(),
        }],
        ..Default::default()
    }
}

/// rtc's TWCC receiver, fed what [`Arrivals`] is fed.
struct Rtc(rtc::interceptor::TwccReceiverInterceptor);

impl Rtc {
    fn new() -> Self {
        let mut twcc = TwccReceiverBuilder::new().build();
        twcc.bind_remote_stream(&info(SSRC));
        Self(twcc)
    }

    fn receive(&mut self, header: &Header, now: Instant) {
        let packet = Packet::Rtp(rtc::rtp::Packet {
            header: header.clone(),
            payload: Bytes::from_static(&[0; 20]),
        });
        let msg = TaggedPacket {
            now,
            transport: Default::default(),
            message: AttributedPacket::new(packet),
        };
        self.0.handle_read(msg).unwrap();
        while self.0.poll_read().is_some() {}
    }

    fn tick(&mut self, now: Instant) -> Vec<Box<dyn RtcpPacket>> {
        self.0.handle_timeout(now).unwrap();
        let mut out = Vec::new();
        while let Some(msg) = self.0.poll_write() {
            if let Packet::Rtcp(packets) = msg.message.packet {
                out.extend(packets);
            }
        }
        out
    }
}

fn ours() -> Arrivals {
    let mut a = Arrivals::new(1);
    a.bind(&info(SSRC));
    a
}

/// A small deterministic generator (xorshift), so a failure repeats.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Feeds both the same arrivals and compares what each sends, tick by tick. `plan` is
/// (transport-wide number, arrival offset in us) per packet.
fn compare(plan: &[(u16, u64)], tick_us: u64) -> usize {
    let t0 = Instant::now();
    let mut rtc = Rtc::new();
    let mut ours = ours();
    let mut next = 0;
    let end = plan.iter().map(|&(_, at)| at).max().unwrap_or(0) + 300_000;
    let mut now_us = 0;
    let mut feedbacks = 0;
    while now_us <= end {
        while next < plan.len() && plan[next].1 <= now_us {
            let (seq, at) = plan[next];
            let when = t0 + Duration::from_micros(at);
            let h = header(SSRC, seq);
            rtc.receive(&h, when);
            ours.record(&h, when);
            next += 1;
        }
        let now = t0 + Duration::from_micros(now_us);
        let theirs = read_all(rtc.tick(now));
        let mut out = Vec::new();
        if ours.poll_timeout().is_some_and(|t| t <= now) {
            ours.poll(now, &mut out);
        }
        let mine = read_all(out);
        assert_eq!(mine, theirs, "at {now_us} us");
        feedbacks += mine.len();
        now_us += tick_us;
    }
    feedbacks
}

#[test]
fn in_order_arrivals_get_the_same_feedback_as_from_rtc() {
    let plan: Vec<(u16, u64)> = (0..2_000u64).map(|i| (i as u16, i * 3_000)).collect();
    assert!(compare(&plan, 10_000) > 50);
}

#[test]
fn loss_jitter_bursts_reordering_and_a_wrap_get_the_same_feedback_as_from_rtc() {
    let mut dice = Dice(0x5eed_1234_abcd_0001);
    let mut plan = Vec::new();
    let mut at = 0u64;
    let mut seq = 65_000u16; // wraps on the way
    for _ in 0..6_000 {
        seq = seq.wrapping_add(1);
        at += match dice.below(100) {
            0..=59 => dice.below(2_000),            // a burst
            60..=94 => dice.below(30_000),          // paced
            95..=98 => 60_000 + dice.below(80_000), // large deltas
            _ => 200_000,                           // a stall
        };
        if dice.below(100) < 7 {
            continue; // lost
        }
        plan.push((seq, at));
    }
    // Reordering within a few milliseconds: swap neighbours' numbers, keep arrival order.
    for i in (1..plan.len()).step_by(13) {
        let (a, b) = (plan[i - 1].0, plan[i].0);
        plan[i - 1].0 = b;
        plan[i].0 = a;
    }
    assert!(compare(&plan, 10_000) > 100);
}

#[test]
fn a_pause_longer_than_a_delta_can_say_splits_the_feedback_as_rtc_does() {
    // 9 s apart: past the largest delta (8.19 s), in one feedback interval.
    let mut plan = vec![(10u16, 0u64), (11, 1_000), (12, 2_000)];
    plan.push((13, 9_002_000));
    plan.push((14, 9_003_000));
    compare(&plan, 10_000);
    // The same inside one interval: the feedback splits before the far one.
    let mut ours = ours();
    let t0 = Instant::now();
    ours.record(&header(SSRC, 1), t0);
    ours.record(&header(SSRC, 2), t0 + Duration::from_millis(1));
    ours.last = Some(2);
    // Recorded against the same start, 9 s later, before the first feedback is due.
    ours.insert(3, 9_000_000);
    let mut out = Vec::new();
    ours.poll(t0 + FEEDBACK_INTERVAL, &mut out);
    let read = read_all(out);
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!(read[0].1.last().unwrap().0, 2);
    assert_eq!(read[1].1, vec![(3, Some(9_000_000))]);
    assert_eq!((read[0].0, read[1].0), (0, 1), "one counter for both");
}

#[test]
fn a_late_packet_is_reported_again_with_its_neighbours_and_a_duplicate_is_not() {
    let t0 = Instant::now();
    let mut ours = ours();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    ours.record(&header(SSRC, 100), ms(0));
    ours.record(&header(SSRC, 102), ms(5));
    let mut out = Vec::new();
    ours.poll(ms(100), &mut out);
    assert_eq!(
        read_all(std::mem::take(&mut out)),
        vec![(0, vec![(100, Some(0)), (101, None), (102, Some(5_000))])]
    );
    // 101 comes late: reported from it on, 102 again with it.
    ours.record(&header(SSRC, 101), ms(150));
    ours.record(&header(SSRC, 102), ms(160)); // a duplicate: ignored
    ours.poll(ms(200), &mut out);
    assert_eq!(
        read_all(std::mem::take(&mut out)),
        vec![(1, vec![(101, Some(150_000)), (102, Some(5_000))])]
    );
    // Nothing new, nothing sent.
    ours.record(&header(SSRC, 100), ms(210));
    ours.poll(ms(300), &mut out);
    assert!(out.is_empty());
}

#[test]
fn only_numbered_packets_of_a_stream_that_negotiated_it_count() {
    let t0 = Instant::now();
    let mut ours = Arrivals::new(1);
    ours.record(&header(SSRC, 1), t0);
    assert_eq!(ours.poll_timeout(), None, "no stream bound: nothing");
    ours.bind(&StreamInfo {
        rtp_header_extensions: Vec::new(),
        ..info(SSRC)
    });
    ours.record(&header(SSRC, 1), t0);
    assert_eq!(ours.poll_timeout(), None, "not negotiated: nothing");
    ours.bind(&info(SSRC));
    let mut plain = header(SSRC, 2);
    plain.extensions.clear();
    plain.extension = false;
    ours.record(&plain, t0);
    assert_eq!(ours.poll_timeout(), None, "no extension: nothing");
    // Another SSRC, not bound: the transport's id, as rtc did (an RTX stream's packets).
    ours.record(&header(SSRC + 1, 3), t0);
    assert_eq!(ours.poll_timeout(), Some(t0 + FEEDBACK_INTERVAL));
    // Bound with its stream: the RTX SSRC's packets.
    ours.record(&header(SSRC + 100, 4), t0);
    ours.unbind(&info(SSRC));
    ours.record(&header(SSRC + 1, 5), t0);
    ours.record(&header(SSRC + 100, 6), t0);
    let mut out = Vec::new();
    ours.poll(t0 + FEEDBACK_INTERVAL, &mut out);
    assert_eq!(read_all(out), vec![(0, vec![(3, Some(0)), (4, Some(0))])]);
}

#[test]
fn the_ring_forgets_what_was_reported_long_ago_and_stays_bounded() {
    let t0 = Instant::now();
    let mut ours = ours();
    let mut out = Vec::new();
    for i in 0..100_000u64 {
        let now = t0 + Duration::from_micros(i * 500);
        ours.record(&header(SSRC, i as u16), now);
        if ours.poll_timeout().is_some_and(|t| t <= now) {
            ours.poll(now, &mut out);
        }
    }
    // 500 ms at one packet per 0.5 ms, and at most what arrived since the last feedback.
    assert!(ours.times.len() <= 1_000 + 200 + 1, "{}", ours.times.len());
    ours.poll(t0 + Duration::from_secs(60), &mut out);
    let every: usize = read_all(std::mem::take(&mut out))
        .iter()
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(every, 100_000, "every packet reported once");
    // A jump far ahead starts afresh.
    ours.insert(ours.end() + MAX_TRACKED as i64 + 5, 60_000_000);
    assert_eq!(ours.times.len(), 1);
}

#[test]
fn chunks_say_every_state_in_order() {
    use SymbolTypeTcc::*;
    let mut dice = Dice(42);
    for _ in 0..2_000 {
        let len = 1 + dice.below(80) as usize;
        let mut states = Vec::new();
        while states.len() < len {
            let s = [
                PacketNotReceived,
                PacketReceivedSmallDelta,
                PacketReceivedLargeDelta,
            ][dice.below(3) as usize];
            let longest = if dice.below(4) == 0 { 30 } else { 3 };
            let run = 1 + dice.below(longest) as usize;
            states.extend(std::iter::repeat_n(s, run.min(len - states.len())));
        }
        let mut said = Vec::new();
        for chunk in chunks(&states) {
            match chunk {
                PacketStatusChunk::RunLengthChunk(r) => said.extend(std::iter::repeat_n(
                    r.packet_status_symbol,
                    usize::from(r.run_length),
                )),
                PacketStatusChunk::StatusVectorChunk(v) => {
                    let holds = match v.symbol_size {
                        SymbolSizeTypeTcc::OneBit => {
                            assert!(!v.symbol_list.contains(&PacketReceivedLargeDelta));
                            ONE_BIT
                        }
                        SymbolSizeTypeTcc::TwoBit => TWO_BIT,
                    };
                    assert!(v.symbol_list.len() <= holds);
                    said.extend(v.symbol_list)
                }
            }
        }
        assert_eq!(said, states);
    }
}

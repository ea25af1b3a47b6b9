use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{
    Attribute, AttributedPacket, RTCPFeedback, RTPHeaderExtension, Registry, StreamInfo,
};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::shared::marshal::Marshal;

use super::*;
use crate::engine::peer::{BUNDLE_SLOT, interceptors};

const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
const TCC_ID: u16 = 5;
/// What rtcd sends the client (a down-track's slot).
const SENT: u32 = 1111;
/// What the client sends rtcd (a published track) and its retransmissions.
const RECEIVED: u32 = 2222;
const RECEIVED_RTX: u32 = 3333;
const VP8: u8 = 96;
const RTX: u8 = 97;

fn stream(ssrc: u32, rtx: Option<(u32, u8)>) -> StreamInfo {
    StreamInfo {
        ssrc,
        ssrc_rtx: rtx.map(|(s, _)| s),
        payload_type: VP8,
        payload_type_rtx: rtx.map(|(_, p)| p),
        mime_type: "video/VP8".into(),
        clock_rate: 90_000,
        rtcp_feedback: ["nack", "transport-cc"]
            .map(|typ| RTCPFeedback {
                typ: typ.into(),
                parameter: String::new(),
            })
            .into(),
        rtp_header_extensions: vec![RTPHeaderExtension {
            uri: TRANSPORT_CC_URI.into(),
            id: TCC_ID,
        }],
        ..Default::default()
    }
}

/// An RTP packet; `tcc`: the client's transport-wide sequence number, if it carries one.
fn rtp(
    ssrc: u32,
    pt: u8,
    seq: u16,
    payload: Vec<u8>,
    tcc: Option<u16>,
    now: Instant,
) -> TaggedPacket {
    let mut packet = rtc::rtp::Packet::default();
    packet.header.version = 2;
    packet.header.ssrc = ssrc;
    packet.header.payload_type = pt;
    packet.header.sequence_number = seq;
    packet.header.timestamp = u32::from(seq) * 3000;
    packet.payload = Bytes::from(payload);
    if let Some(n) = tcc {
        packet
            .header
            .set_extension(TCC_ID as u8, Bytes::copy_from_slice(&n.to_be_bytes()))
            .expect("extension");
    }
    TaggedPacket {
        now,
        transport: Default::default(),
        message: AttributedPacket::new(Packet::Rtp(packet)),
    }
}

/// One line per packet that left `link` in either direction, comparable between two runs:
/// RTCP with each packet's sender SSRC masked (the TWCC receiver picks it at random) and a
/// sender report's wall-clock time, each
/// line led by the tick it left in.
fn drain(link: &mut impl Interceptor, tick: u32, into: &mut Vec<String>) {
    while let Some(msg) = link.poll_read() {
        into.push(format!("{tick} read {}", line(&msg)));
    }
    while let Some(msg) = link.poll_write() {
        into.push(format!("{tick} write {}", line(&msg)));
    }
}

fn line(msg: &TaggedPacket) -> String {
    let delivered = msg.message.has(&Attribute::DeliverToApplication);
    match &msg.message.packet {
        Packet::Rtp(p) => format!("rtp {:02x?}", p.marshal().expect("marshal").as_ref()),
        Packet::Rtcp(packets) => {
            let parts: Vec<String> = packets
                .iter()
                .map(|p| {
                    let mut bytes = rtc::rtcp::packet::marshal(std::slice::from_ref(p))
                        .expect("marshal")
                        .to_vec();
                    bytes[4..8].fill(0);
                    // A sender report's NTP time: the wall clock when the instance started.
                    if bytes[1] == 200 {
                        bytes[8..16].fill(0);
                    }
                    format!("{:02x?}", bytes)
                })
                .collect();
            format!("rtcp delivered={delivered} {}", parts.join(" "))
        }
        other => format!("{other:?}"),
    }
}

/// Three seconds of a peer's traffic through `link`: a packet sent to the client and one
/// received from it every 10 ms, four received packets lost (two repaired by RTX), a compound
/// of a receiver report and a keyframe request from the client, timeouts every tick.
fn transcript(mut link: impl Interceptor) -> Vec<String> {
    link.bind_local_stream(&stream(SENT, None));
    link.bind_remote_stream(&stream(RECEIVED, Some((RECEIVED_RTX, RTX))));
    link.bind_remote_stream(&StreamInfo {
        payload_type: RTX,
        payload_type_rtx: None,
        ..stream(RECEIVED_RTX, None)
    });
    let start = Instant::now();
    let mut out = Vec::new();
    let mut tcc = 0u16;
    for tick in 0..300u32 {
        let now = start + Duration::from_millis(u64::from(tick) * 10);
        let seq = tick as u16;
        link.handle_write(rtp(SENT, VP8, seq, vec![1; 900], None, now))
            .expect("write");
        drain(&mut link, tick, &mut out);
        if !(50..54).contains(&seq) {
            tcc += 1;
            link.handle_read(rtp(RECEIVED, VP8, seq, vec![2; 900], Some(tcc), now))
                .expect("read");
            drain(&mut link, tick, &mut out);
        }
        if tick == 80 {
            for (i, lost) in [50u16, 51].into_iter().enumerate() {
                let mut payload = lost.to_be_bytes().to_vec();
                payload.extend_from_slice(&[2; 900]);
                tcc += 1;
                link.handle_read(rtp(RECEIVED_RTX, RTX, i as u16, payload, Some(tcc), now))
                    .expect("read");
                drain(&mut link, tick, &mut out);
            }
        }
        if tick == 100 {
            let compound: Vec<Box<dyn rtc::rtcp::Packet>> = vec![
                Box::new(ReceiverReport {
                    ssrc: 77,
                    ..Default::default()
                }),
                Box::new(PictureLossIndication {
                    sender_ssrc: 77,
                    media_ssrc: SENT,
                }),
            ];
            link.handle_read(TaggedPacket {
                now,
                transport: Default::default(),
                message: AttributedPacket::new(Packet::Rtcp(compound)),
            })
            .expect("read");
            drain(&mut link, tick, &mut out);
        }
        link.handle_timeout(now).expect("timeout");
        drain(&mut link, tick, &mut out);
    }
    // Within a tick, in a stable order: the report interceptors walk their streams in a hash
    // map's order, which differs between two instances.
    out.sort();
    out
}

/// The peer's interceptors.
fn members() -> Vec<Entry> {
    interceptors()
}

fn as_chain(members: Vec<Entry>) -> impl Interceptor {
    members
        .into_iter()
        .fold(Registry::new(), |r, (slot, _, i)| r.with(slot, i))
        .build()
}

fn as_bundle(members: Vec<Entry>) -> impl Interceptor {
    let bundle: Bundle = members.into_iter().collect();
    Registry::new()
        .with(Slot::Custom(BUNDLE_SLOT), bundle)
        .build()
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| l.contains(what)).count()
}

/// The bundle is the chain, packet for packet: what each member is declared blind to (`Sees`)
/// it really passes on untouched. Checked with the peer's own interceptors, so a wrong
/// declaration (or an `rtc` that starts reading there) shows up as a different transcript: a
/// sender report that missed the packets it should count, a NACK for a packet that arrived.
#[test]
fn a_bundle_sends_and_delivers_exactly_what_the_chain_does() {
    let chain = transcript(as_chain(members()));
    let bundle = transcript(as_bundle(members()));
    // The traffic exercised the member: transport-cc feedback. (What RTCP the peer reads is
    // not the chain's to deliver: the peer drives the bundle itself and reads every packet off
    // it.)
    assert!(count(&chain, "write rtcp") >= 10, "{chain:#?}");
    assert!(
        count(&chain, "[8f, cd") > 0,
        "no transport-cc feedback in {chain:#?}"
    );
    assert_eq!(count(&chain, "read rtp"), 296 + 2);
    assert_eq!(chain.len(), bundle.len());
    for (c, b) in chain.iter().zip(&bundle) {
        assert_eq!(c, b);
    }
}

/// The same holds the other way round: declaring a member blind to what it reads changes the
/// transcript (the test above can fail).
#[test]
fn a_member_wrongly_declared_blind_changes_what_leaves() {
    let mut wrong = members();
    for (slot, sees, _) in &mut wrong {
        if *slot == Slot::TwccReceiver {
            *sees = Sees::NONE;
        }
    }
    let chain = transcript(as_chain(members()));
    let bundle = transcript(as_bundle(wrong));
    assert_ne!(chain, bundle);
    assert_eq!(
        count(&bundle, "[8f, cd"),
        0,
        "a TWCC receiver that saw nothing reports nothing"
    );
}

/// Wall-clock cost of the interceptors per packet sent, the peer's as `rtc`'s
/// chain and as a bundle, alternated: 200,000 packets each, one received for every ten sent,
/// timeouts every 10 ms. Run in release mode: `cargo test --release -p rtcd --lib
/// engine::bundle::tests::cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn cost_of_the_interceptors_per_packet_sent() {
    fn run(mut link: impl Interceptor) -> f64 {
        link.bind_local_stream(&stream(SENT, None));
        link.bind_remote_stream(&stream(RECEIVED, Some((RECEIVED_RTX, RTX))));
        let start = Instant::now();
        let began = std::time::Instant::now();
        let mut tcc = 0u16;
        let packets = 200_000u32;
        for n in 0..packets {
            // 10 packets a millisecond: the simulcast benchmark's rate per worker.
            let now = start + Duration::from_micros(u64::from(n) * 100);
            link.handle_write(rtp(SENT, VP8, n as u16, vec![1; 900], None, now))
                .expect("write");
            while link.poll_write().is_some() {}
            if n % 10 == 0 {
                tcc = tcc.wrapping_add(1);
                link.handle_read(rtp(
                    RECEIVED,
                    VP8,
                    (n / 10) as u16,
                    vec![2; 900],
                    Some(tcc),
                    now,
                ))
                .expect("read");
                while link.poll_read().is_some() {}
                while link.poll_write().is_some() {}
            }
            if n % 100 == 0 {
                link.handle_timeout(now).expect("timeout");
                while link.poll_read().is_some() {}
                while link.poll_write().is_some() {}
            }
        }
        began.elapsed().as_secs_f64() * 1e6 / f64::from(packets)
    }
    for _ in 0..2 {
        let chain = run(as_chain(members()));
        let bundle = run(as_bundle(members()));
        println!("per packet sent: chain {chain:.3} us, bundle {bundle:.3} us");
    }
}

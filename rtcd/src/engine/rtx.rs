//! The interceptor that turns a publisher's retransmissions (RTX, RFC 4588) back into the
//! packets they repair before rtc's NACK generator sees them.
//!
//! `rtc` 0.21.1 de-encapsulates RTX only after its interceptor chain, and its NACK generator
//! logs arrivals by the SSRC on the wire: a packet repaired through RTX stayed "lost" to it, and
//! rtcd asked the publisher for it again every 100 ms until it aged out of the log (19 times in
//! 2 s in a test), each answered with one more retransmission. Browsers answer NACKs with RTX, so
//! that was every repaired packet of every browser publisher. Placed nearer the wire than the
//! generator (rtc's registry docs put repair there, as its FEC decoder), this restores the
//! original packet: primary SSRC, the payload type RTX names (`apt`), the original sequence
//! number, the payload without its 2-byte prefix. Everything after it, the generator, receiver
//! reports and the application, sees one stream; rtc's own de-encapsulation then finds nothing
//! left to do.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};

/// Where it sits in the chain: after the FEC decoder (6 000), before the NACK generator (7 000).
pub(super) const SLOT: usize = 6_500;

/// What an RTX stream repairs.
#[derive(Debug, Clone, Copy)]
struct Repairs {
    rtx_payload_type: u8,
    ssrc: u32,
    payload_type: u8,
}

/// Rewrites inbound RTX packets of bound remote streams into their originals; passes
/// everything else through unchanged.
#[derive(Default)]
pub(super) struct RtxRepair {
    /// By RTX SSRC.
    streams: HashMap<u32, Repairs>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for RtxRepair {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(packet) = &mut msg.message.packet
            && let Some(r) = self.streams.get(&packet.header.ssrc)
            && packet.header.payload_type == r.rtx_payload_type
            // Shorter: padding only (a bandwidth probe), nothing to restore; rtc drops it.
            && packet.payload.len() >= 2
        {
            let original = u16::from_be_bytes([packet.payload[0], packet.payload[1]]);
            packet.header.ssrc = r.ssrc;
            packet.header.payload_type = r.payload_type;
            packet.header.sequence_number = original;
            packet.header.padding = false;
            packet.payload = packet.payload.slice(2..);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for RtxRepair {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        if let (Some(rtx), Some(rtx_payload_type)) = (info.ssrc_rtx, info.payload_type_rtx) {
            self.streams.insert(
                rtx,
                Repairs {
                    rtx_payload_type,
                    ssrc: info.ssrc,
                    payload_type: info.payload_type,
                },
            );
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        if let Some(rtx) = info.ssrc_rtx {
            self.streams.remove(&rtx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use rtc::interceptor::{
        AttributedPacket, NackGeneratorBuilder, RTCPFeedback, Registry, Slot, StreamInfo,
    };
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    use rtc::sansio::Protocol;

    use super::*;

    const SSRC: u32 = 1111;
    const RTX_SSRC: u32 = 2222;
    const VP8: u8 = 96;
    const RTX: u8 = 97;

    fn video() -> StreamInfo {
        StreamInfo {
            ssrc: SSRC,
            ssrc_rtx: Some(RTX_SSRC),
            payload_type: VP8,
            payload_type_rtx: Some(RTX),
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            rtcp_feedback: vec![RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            }],
            ..Default::default()
        }
    }

    fn rtp(ssrc: u32, payload_type: u8, seq: u16, payload: &[u8], now: Instant) -> TaggedPacket {
        let mut packet = rtc::rtp::Packet::default();
        packet.header.version = 2;
        packet.header.ssrc = ssrc;
        packet.header.payload_type = payload_type;
        packet.header.sequence_number = seq;
        packet.payload = Bytes::copy_from_slice(payload);
        TaggedPacket {
            now,
            transport: Default::default(),
            message: AttributedPacket::new(Packet::Rtp(packet)),
        }
    }

    /// RTX of `seq`: the original sequence number in front of the original payload.
    fn rtx(rtx_seq: u16, seq: u16, now: Instant) -> TaggedPacket {
        let mut payload = seq.to_be_bytes().to_vec();
        payload.extend_from_slice(&[7, 7, 7]);
        rtp(RTX_SSRC, RTX, rtx_seq, &payload, now)
    }

    #[test]
    fn rtx_of_a_bound_stream_becomes_the_original_and_the_rest_passes_unchanged() {
        let now = Instant::now();
        let mut repair = RtxRepair::default();
        repair.bind_remote_stream(&video());
        repair.handle_read(rtx(500, 42, now)).unwrap();
        repair
            .handle_read(rtp(SSRC, VP8, 43, &[1, 2], now))
            .unwrap();
        // Padding-only RTX (a probe) and RTX of an unknown stream stay as they are.
        repair
            .handle_read(rtp(RTX_SSRC, RTX, 501, &[], now))
            .unwrap();
        repair
            .handle_read(rtp(3333, RTX, 9, &[0, 5, 1], now))
            .unwrap();
        let out: Vec<(u32, u8, u16, Vec<u8>)> = std::iter::from_fn(|| repair.poll_read())
            .map(|m| match m.message.packet {
                Packet::Rtp(p) => (
                    p.header.ssrc,
                    p.header.payload_type,
                    p.header.sequence_number,
                    p.payload.to_vec(),
                ),
                _ => panic!("RTP went in, something else came out"),
            })
            .collect();
        assert_eq!(
            out,
            vec![
                (SSRC, VP8, 42, vec![7, 7, 7]),
                (SSRC, VP8, 43, vec![1, 2]),
                (RTX_SSRC, RTX, 501, vec![]),
                (3333, RTX, 9, vec![0, 5, 1]),
            ]
        );
        repair.unbind_remote_stream(&video());
        repair.handle_read(rtx(502, 44, now)).unwrap();
        let Packet::Rtp(p) = repair.poll_read().unwrap().message.packet else {
            panic!("not RTP");
        };
        assert_eq!(p.header.ssrc, RTX_SSRC, "unbound: left alone");
    }

    /// How many NACKs for `seq` a chain sends in the 2 s after packet `seq` was lost and
    /// repaired through RTX 150 ms later.
    fn nacks_for_a_repaired_packet(with_repair: bool) -> usize {
        let mut registry =
            Registry::new().with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
        if with_repair {
            registry = registry.with(Slot::Custom(SLOT), RtxRepair::default());
        }
        let mut chain = registry.build();
        chain.bind_remote_stream(&video());
        // rtc binds the repair flow as a stream of its own too, without an RTX of its own.
        chain.bind_remote_stream(&StreamInfo {
            ssrc: RTX_SSRC,
            ssrc_rtx: None,
            payload_type: RTX,
            payload_type_rtx: None,
            ..video()
        });
        let start = Instant::now();
        let mut nacks = 0;
        let lost = 10u16;
        for tick in 0..200u32 {
            let now = start + Duration::from_millis(u64::from(tick) * 10);
            let seq = tick as u16;
            if seq != lost {
                chain
                    .handle_read(rtp(SSRC, VP8, seq, &[0; 10], now))
                    .unwrap();
            }
            if tick == 25 {
                chain.handle_read(rtx(0, lost, now)).unwrap();
            }
            while chain.poll_read().is_some() {}
            chain.handle_timeout(now).unwrap();
            while let Some(out) = chain.poll_write() {
                if let Packet::Rtcp(packets) = out.message.packet {
                    for p in packets {
                        if let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() {
                            let asks = nack
                                .nacks
                                .iter()
                                .any(|pair| pair.packet_list().contains(&lost));
                            nacks += usize::from(asks);
                        }
                    }
                }
            }
        }
        nacks
    }

    #[test]
    fn a_packet_repaired_through_rtx_is_not_nacked_again() {
        let without = nacks_for_a_repaired_packet(false);
        let with = nacks_for_a_repaired_packet(true);
        assert!(without > 5, "rtc alone keeps asking: {without} NACKs");
        assert!((1..=2).contains(&with), "asked {with} times");
    }
}

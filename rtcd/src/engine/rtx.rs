//! Turns a publisher's retransmissions (RTX, RFC 4588) back into the packets they repair
//! before anything counts them (the peer applies it first; it began as an interceptor placed
//! ahead of rtc's NACK generator, and still is one for the tests that compare chains).
//!
//! `rtc` 0.21.1 de-encapsulates RTX only after its interceptor chain, and its NACK generator
//! logs arrivals by the SSRC on the wire: a packet repaired through RTX stayed "lost" to it, and
//! rtcd asked the publisher for it again every 100 ms until it aged out of the log (19 times in
//! 2 s in a test), each answered with one more retransmission. Browsers answer NACKs with RTX, so
//! that was every repaired packet of every browser publisher. Placed nearer the wire than the
//! generator (rtc's registry docs put repair there, as its FEC decoder), this restores the
//! original packet: primary SSRC, the payload type RTX names (`apt`), the original sequence
//! number, the payload without its 2-byte prefix. Everything after it, the NACK log and
//! receiver reports (`reception`) and the application, sees one stream; rtc's own
//! de-encapsulation then finds nothing left to do.
//!
//! Simulcast layers (rids) declare no SSRCs, so their RTX streams are known to nobody: rtc
//! 0.21.1 binds a layer from its MID and RID header extensions but returns early on a
//! repaired-rid (a TODO in `bind_by_rid`) and drops every retransmission of a layer. This
//! interceptor learns each layer's SSRC from its packets carrying MID and RID, and an RTX
//! packet carrying MID and repaired-rid is the retransmission of that layer: its SSRC is
//! remembered (publishers stop stamping the extensions once the SSRC is acknowledged) and its
//! packets are restored as above, with the payload type its RTX payload type repairs
//! ([`AptMap`], filled from the negotiated codecs).

use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};

use super::peer::{MID_URI, REPAIRED_RID_URI, RID_URI};

/// RTX payload type → the payload type it repairs (`apt`), of every negotiated codec with an
/// RTX companion; shared with the peer, which fills it as sections are negotiated.
pub(super) type AptMap = Arc<Mutex<HashMap<u8, u8>>>;

/// The ids of the header extensions that name a packet's section and layer.
#[derive(Debug, Clone, Copy, Default)]
struct SdesIds {
    mid: Option<u8>,
    rid: Option<u8>,
    rrid: Option<u8>,
}

/// Where a chain of rtc's (the tests') puts it: after the FEC decoder (6 000), before the NACK
/// generator (7 000). The peer applies it before its interceptors instead (`RtxRepair::repair`).
#[cfg(test)]
pub(super) const SLOT: usize = 6_500;

/// What an RTX stream repairs.
#[derive(Debug, Clone, Copy)]
struct Repairs {
    rtx_payload_type: u8,
    ssrc: u32,
    payload_type: u8,
}

/// Simulcast layers, and RTX streams, the repair remembers at most (a client sends a handful;
/// see `learn`).
const MAX_LAYERS: usize = 256;

/// Rewrites inbound RTX packets of bound remote streams into their originals; passes
/// everything else through unchanged.
#[derive(Default)]
pub(super) struct RtxRepair {
    /// By RTX SSRC, looked up for every packet with extensions (a fast hash: entries come
    /// only from layers the client declared in its packets).
    streams: FxHashMap<u32, Repairs>,
    /// Simulcast layers seen: (mid, rid) → the layer's SSRC.
    layers: HashMap<(Bytes, Bytes), u32>,
    ids: SdesIds,
    apt: AptMap,
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
        if let Packet::Rtp(packet) = &mut msg.message.packet {
            self.repair(packet);
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

impl RtxRepair {
    /// A repair interceptor that resolves RTX payload types of simulcast layers with `apt`.
    pub(super) fn new(apt: AptMap) -> Self {
        Self {
            apt,
            ..Self::default()
        }
    }

    /// Restores `packet` if it is a retransmission of a known stream (and learns layers from
    /// it). The peer calls this on every received packet before anything counts it, instead
    /// of walking the packet through one more interceptor (each walk moved it twice).
    pub(super) fn repair(&mut self, packet: &mut rtc::rtp::Packet) {
        if packet.header.extension && !self.streams.contains_key(&packet.header.ssrc) {
            self.learn(&packet.header);
        }
        if let Some(r) = self.streams.get(&packet.header.ssrc)
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
    }

    /// A packet of a stream not known as RTX, with header extensions: a layer's packet with
    /// MID and RID binds (mid, rid) to its SSRC; one with MID and repaired-rid of a known layer
    /// is that layer's RTX stream, from now on known by its SSRC.
    fn learn(&mut self, header: &rtc::rtp::header::Header) {
        let ext = |id: Option<u8>| {
            id.and_then(|id| header.get_extension(id))
                .filter(|v| !v.is_empty())
        };
        let Some(mid) = ext(self.ids.mid) else {
            return;
        };
        if let Some(rid) = ext(self.ids.rid) {
            let known = self.layers.get(&(mid.clone(), rid.clone()));
            // At most MAX_LAYERS: a client's packets name any (mid, rid) they like, and a
            // layer is forgotten only when its stream is unbound.
            if known != Some(&header.ssrc) && (known.is_some() || self.layers.len() < MAX_LAYERS) {
                // Copied out: the values are slices of the received chunk, which a key kept
                // for the layer's life would keep from being freed.
                let key = (Bytes::copy_from_slice(&mid), Bytes::copy_from_slice(&rid));
                self.layers.insert(key, header.ssrc);
            }
        } else if self.streams.len() < MAX_LAYERS
            && let Some(rrid) = ext(self.ids.rrid)
            && let Some(&ssrc) = self.layers.get(&(mid, rrid))
            && let Some(&payload_type) = self
                .apt
                .lock()
                .ok()
                .as_ref()
                .and_then(|apt| apt.get(&header.payload_type))
        {
            self.streams.insert(
                header.ssrc,
                Repairs {
                    rtx_payload_type: header.payload_type,
                    ssrc,
                    payload_type,
                },
            );
        }
    }
}

impl Interceptor for RtxRepair {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        for e in &info.rtp_header_extensions {
            let id = u8::try_from(e.id).ok();
            match e.uri.as_str() {
                MID_URI => self.ids.mid = id,
                RID_URI => self.ids.rid = id,
                REPAIRED_RID_URI => self.ids.rrid = id,
                _ => {}
            }
        }
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
        // A layer's repair flow, learned from its packets.
        self.streams.retain(|_, r| r.ssrc != info.ssrc);
        self.layers.retain(|_, ssrc| *ssrc != info.ssrc);
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

    /// Everything `repair` let through, as (SSRC, payload type, sequence, payload).
    fn drained(repair: &mut RtxRepair) -> Vec<(u32, u8, u16, Vec<u8>)> {
        std::iter::from_fn(|| repair.poll_read())
            .map(|m| match m.message.packet {
                Packet::Rtp(p) => (
                    p.header.ssrc,
                    p.header.payload_type,
                    p.header.sequence_number,
                    p.payload.to_vec(),
                ),
                _ => panic!("RTP went in, something else came out"),
            })
            .collect()
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
        let out = drained(&mut repair);
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

    /// The simulcast header extensions' ids in the layer tests.
    const MID_ID: u8 = 4;
    const RID_ID: u8 = 10;
    const RRID_ID: u8 = 11;

    /// A repair that resolves RTX of VP8, with the layer `ssrc` bound as rtc binds one:
    /// without RTX (it knows none), with the mid, rid and repaired-rid extensions.
    fn layer_repair(ssrc: u32) -> RtxRepair {
        let apt: AptMap = Arc::default();
        apt.lock().unwrap().insert(RTX, VP8);
        let mut repair = RtxRepair::new(apt);
        let ext = |uri: &str, id: u8| rtc::interceptor::RTPHeaderExtension {
            uri: uri.into(),
            id: id.into(),
        };
        repair.bind_remote_stream(&StreamInfo {
            ssrc,
            ssrc_rtx: None,
            payload_type_rtx: None,
            rtp_header_extensions: vec![
                ext(MID_URI, MID_ID),
                ext(RID_URI, RID_ID),
                ext(REPAIRED_RID_URI, RRID_ID),
            ],
            ..video()
        });
        repair
    }

    /// A simulcast layer's RTX: no SSRC declared anywhere, only MID and repaired-rid on its
    /// first packets. It is restored as the layer's packet, also once the extensions stop;
    /// a repaired-rid of an unknown layer and an RTX payload type without `apt` stay as they are.
    #[test]
    fn a_repaired_rid_retransmission_becomes_its_layers_packet() {
        const LAYER: u32 = 0x5102;
        const LAYER_RTX: u32 = 0x6102;
        let (mid_id, rid_id, rrid_id) = (MID_ID, RID_ID, RRID_ID);
        let now = Instant::now();
        let mut repair = layer_repair(LAYER);
        let stamped = |mut msg: TaggedPacket, pairs: &[(u8, &'static [u8])]| {
            if let Packet::Rtp(p) = &mut msg.message.packet {
                p.header.extension = true;
                p.header.extension_profile = 0xBEDE;
                for (id, value) in pairs {
                    p.header
                        .set_extension(*id, Bytes::from_static(value))
                        .unwrap();
                }
            }
            msg
        };
        let rtx_of = |ssrc: u32, rtx_seq: u16, seq: u16| {
            let mut payload = seq.to_be_bytes().to_vec();
            payload.extend_from_slice(&[7, 7, 7]);
            rtp(ssrc, RTX, rtx_seq, &payload, now)
        };
        // An RTX before its layer was seen cannot be placed.
        repair
            .handle_read(stamped(
                rtx_of(LAYER_RTX, 1, 5),
                &[(mid_id, b"1"), (rrid_id, b"h")],
            ))
            .unwrap();
        repair
            .handle_read(stamped(
                rtp(LAYER, VP8, 40, &[1], now),
                &[(mid_id, b"1"), (rid_id, b"h")],
            ))
            .unwrap();
        repair
            .handle_read(stamped(
                rtx_of(LAYER_RTX, 2, 38),
                &[(mid_id, b"1"), (rrid_id, b"h")],
            ))
            .unwrap();
        // Later retransmissions without extensions: known by their SSRC.
        repair.handle_read(rtx_of(LAYER_RTX, 3, 39)).unwrap();
        // Another section's rid, and an RTX payload type with no apt.
        repair
            .handle_read(stamped(
                rtx_of(0x6103, 1, 7),
                &[(mid_id, b"2"), (rrid_id, b"h")],
            ))
            .unwrap();
        repair
            .handle_read(stamped(
                rtp(0x6104, 99, 1, &[0, 9, 1], now),
                &[(mid_id, b"1"), (rrid_id, b"h")],
            ))
            .unwrap();
        let out = drained(&mut repair);
        assert_eq!(
            out,
            vec![
                (LAYER_RTX, RTX, 1, vec![0, 5, 7, 7, 7]),
                (LAYER, VP8, 40, vec![1]),
                (LAYER, VP8, 38, vec![7, 7, 7]),
                (LAYER, VP8, 39, vec![7, 7, 7]),
                (0x6103, RTX, 1, vec![0, 7, 7, 7, 7]),
                (0x6104, 99, 1, vec![0, 9, 1]),
            ]
        );
        // The layer gone: its repair flow is forgotten.
        repair.unbind_remote_stream(&StreamInfo {
            ssrc: LAYER,
            ssrc_rtx: None,
            ..video()
        });
        repair.handle_read(rtx_of(LAYER_RTX, 4, 41)).unwrap();
        let Packet::Rtp(p) = repair.poll_read().unwrap().message.packet else {
            panic!("not RTP");
        };
        assert_eq!(p.header.ssrc, LAYER_RTX, "unbound: left alone");
    }

    /// A client's packets may name any (mid, rid) and any RTX SSRC: what the repair learns
    /// from them stays bounded, and a key it keeps is its own copy, not a slice of the
    /// received packet (which would keep that packet's chunk alive with the layer).
    #[test]
    fn what_a_client_names_is_remembered_up_to_a_bound_and_copied_out_of_its_packet() {
        let (mid_id, rid_id, rrid_id) = (MID_ID, RID_ID, RRID_ID);
        let mut repair = layer_repair(1);
        let stamped = |ssrc: u32, payload_type: u8, pairs: &[(u8, Bytes)]| {
            let mut packet = rtc::rtp::Packet {
                payload: Bytes::from_static(&[0, 1, 7]),
                ..Default::default()
            };
            packet.header.ssrc = ssrc;
            packet.header.payload_type = payload_type;
            packet.header.extension = true;
            packet.header.extension_profile = 0xBEDE;
            for (id, value) in pairs {
                packet.header.set_extension(*id, value.clone()).unwrap();
            }
            packet
        };
        let received = Bytes::from_static(b"1h");
        for i in 0..10_000u32 {
            let rid = Bytes::from(format!("r{i}"));
            repair.repair(&mut stamped(
                1_000 + i,
                VP8,
                &[(mid_id, received.slice(..1)), (rid_id, rid.clone())],
            ));
            repair.repair(&mut stamped(
                100_000 + i,
                RTX,
                &[(mid_id, received.slice(..1)), (rrid_id, rid)],
            ));
        }
        assert_eq!(repair.layers.len(), MAX_LAYERS);
        assert_eq!(repair.streams.len(), MAX_LAYERS);
        let inside = received.as_ptr_range();
        for (mid, _) in repair.layers.keys() {
            assert!(
                !inside.contains(&mid.as_ptr()),
                "a key points into a packet"
            );
        }
    }

    #[test]
    fn a_packet_repaired_through_rtx_is_not_nacked_again() {
        let without = nacks_for_a_repaired_packet(false);
        let with = nacks_for_a_repaired_packet(true);
        assert!(without > 5, "rtc alone keeps asking: {without} NACKs");
        assert!((1..=2).contains(&with), "asked {with} times");
    }
}

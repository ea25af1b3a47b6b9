//! The NACK generator towards publishers, kept from forgetting what it saw.
//!
//! `rtc` 0.21.1 binds a remote stream again (without unbinding it) on the first packet after
//! every renegotiation, and its NACK generator answers each bind with a fresh receive log. A
//! packet lost just before a renegotiation, or while an ICE restart moves the publisher to a new
//! path (rtc drops the selected pair at once, so everything in flight until the new pair is up
//! is lost), therefore fell outside every log: never NACKed, unrepairable, and each subscriber's
//! video froze until its own keyframe request went round (seconds, in a browser over TURN).
//! This wrapper passes a bind on only for a stream that is not bound already with the same
//! NACK support, so the log, and with it the gap, survives the renegotiation.
//!
//! rtcd itself no longer runs rtc's generator (since 2026-12-06 its NACKs come from
//! `reception`, which keeps a rebound stream's log the same way): the wrapper is for the e2e
//! harness's webrtc-rs peers, and [`supports_nack`] is the one test of NACK support for both.

use std::collections::HashMap;
use std::time::Instant;

use rtc::interceptor::{Interceptor, NackGeneratorInterceptor, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;

/// Whether rtc's NACK generator tracks a stream described so (its own test, restated: the
/// generator keeps a log only for streams that negotiated generic NACK).
pub(super) fn supports_nack(info: &StreamInfo) -> bool {
    info.rtcp_feedback
        .iter()
        .any(|fb| fb.typ == "nack" && fb.parameter.is_empty())
}

/// rtc's NACK generator with idempotent binds (see the module docs).
pub struct StableNackGenerator {
    inner: NackGeneratorInterceptor,
    /// Bound remote streams by SSRC, with whether the generator tracks them.
    bound: HashMap<u32, bool>,
}

impl StableNackGenerator {
    /// Wraps rtc's generator.
    pub fn new(inner: NackGeneratorInterceptor) -> Self {
        Self {
            inner,
            bound: HashMap::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for StableNackGenerator {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner.handle_read(msg)
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inner.poll_read()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner.handle_write(msg)
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.inner.poll_write()
    }

    fn handle_event(&mut self, evt: ()) -> Result<(), Self::Error> {
        self.inner.handle_event(evt)
    }

    fn poll_event(&mut self) -> Option<()> {
        self.inner.poll_event()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.inner.handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close()
    }
}

impl Interceptor for StableNackGenerator {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_local_stream(info);
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_local_stream(info);
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        let nack = supports_nack(info);
        match self.bound.insert(info.ssrc, nack) {
            Some(was) if was == nack => {}
            // NACK support changed: rtc's generator would keep the old log on a bind alone.
            Some(_) => {
                self.inner.unbind_remote_stream(info);
                self.inner.bind_remote_stream(info);
            }
            None => self.inner.bind_remote_stream(info),
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.bound.remove(&info.ssrc);
        self.inner.unbind_remote_stream(info);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use rtc::interceptor::{AttributedPacket, NackGeneratorBuilder, Packet, RTCPFeedback};
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

    use super::*;

    const SSRC: u32 = 1111;

    fn video(nack: bool) -> StreamInfo {
        StreamInfo {
            ssrc: SSRC,
            payload_type: 96,
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            rtcp_feedback: if nack {
                vec![RTCPFeedback {
                    typ: "nack".into(),
                    parameter: String::new(),
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    fn rtp(seq: u16, now: Instant) -> TaggedPacket {
        let mut packet = rtc::rtp::Packet::default();
        packet.header.version = 2;
        packet.header.ssrc = SSRC;
        packet.header.payload_type = 96;
        packet.header.sequence_number = seq;
        packet.payload = Bytes::from_static(&[1, 2, 3]);
        TaggedPacket {
            now,
            transport: Default::default(),
            message: AttributedPacket::new(Packet::Rtp(packet)),
        }
    }

    /// Feeds packets 0..40 every 10 ms, except `lost`, calling `at_gap` (rtc's behaviour on a
    /// renegotiation) just before the packet after the gap; returns the sequence numbers NACKed.
    fn nacked(
        generator: &mut dyn Interceptor,
        lost: u16,
        mut at_gap: impl FnMut(&mut dyn Interceptor),
    ) -> Vec<u16> {
        generator.bind_remote_stream(&video(true));
        let start = Instant::now();
        let mut nacked = Vec::new();
        for seq in 0..40u16 {
            let now = start + Duration::from_millis(u64::from(seq) * 10);
            if seq == lost + 1 {
                at_gap(generator);
            }
            if seq != lost {
                generator.handle_read(rtp(seq, now)).unwrap();
            }
            while generator.poll_read().is_some() {}
            generator.handle_timeout(now).unwrap();
            while let Some(out) = generator.poll_write() {
                if let Packet::Rtcp(packets) = out.message.packet {
                    for p in packets {
                        if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                            nacked.extend(n.nacks.iter().flat_map(|pair| pair.packet_list()));
                        }
                    }
                }
            }
        }
        nacked
    }

    #[test]
    fn a_gap_across_a_rebind_is_nacked_only_by_the_stable_generator() {
        let rebind = |g: &mut dyn Interceptor| g.bind_remote_stream(&video(true));
        let mut plain = NackGeneratorBuilder::new().build();
        assert!(
            nacked(&mut plain, 10, rebind).is_empty(),
            "rtc's own generator forgets the gap (if this fails, rtc fixed it: drop the wrapper)"
        );
        let mut stable = StableNackGenerator::new(NackGeneratorBuilder::new().build());
        assert!(nacked(&mut stable, 10, rebind).contains(&10));
    }

    #[test]
    fn unbinding_or_changing_nack_support_still_reaches_the_generator() {
        // Unbound and bound again: a new stream, a new log (the gap before it is not asked for).
        let mut stable = StableNackGenerator::new(NackGeneratorBuilder::new().build());
        let rebound = nacked(&mut stable, 10, |g| {
            g.unbind_remote_stream(&video(true));
            g.bind_remote_stream(&video(true));
        });
        assert!(rebound.is_empty(), "{rebound:?}");
        // NACK no longer negotiated: the generator stops asking.
        let mut stable = StableNackGenerator::new(NackGeneratorBuilder::new().build());
        let without = nacked(&mut stable, 10, |g| g.bind_remote_stream(&video(false)));
        assert!(without.is_empty(), "{without:?}");
    }
}

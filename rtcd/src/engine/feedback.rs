//! The interceptor that lets feedback reach the application of an `rtc` peer connection: the
//! test client's (`testing`). rtcd's own peers read RTCP on the engine's media path, each
//! feedback packet routed by the SSRC it names (`Peer::feedback`), so they need none of this.
//!
//! `rtc` ends every inbound RTCP packet at the end of its interceptor chain unless an interceptor
//! marks it for the application. An SFU must see what subscribers ask of the streams it sends
//! them: NACKs (answered from the SFU's own retransmission buffers, not by a per-subscriber copy
//! in an interceptor) and keyframe requests (PLI, FIR: relayed to the publisher). This marks
//! exactly those, and a copy of each sender report (recordings line tracks up with them);
//! reports and congestion feedback stay with rtc's interceptors.
//!
//! rtc hands an RTCP compound to the application under the first destination SSRC of its first
//! packet. Without `a=rtcp-rsize` (rtc never answers it) clients send feedback in compounds that
//! start with a sender or receiver report, and Chromium's report may name another stream first,
//! or no stream at all: in one Chromium call 4 of 17 feedback compounds went to the wrong
//! down-track or were dropped, and under loss the video stalled for seconds. So the tap takes
//! each feedback packet out of its compound into a message of its own, which rtc routes by the
//! SSRC the feedback names. RTCP is a few packets a second per peer; the split allocates only
//! for compounds that carry feedback beside other packets.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

/// Marks inbound NACK, PLI and FIR for delivery, each in a message of its own; passes
/// everything else through unchanged.
#[derive(Default)]
pub(super) struct FeedbackTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

fn is_feedback(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<TransportLayerNack>()
        || any.is::<PictureLossIndication>()
        || any.is::<FullIntraRequest>()
}

impl FeedbackTap {
    /// Queues `msg` for the next interceptor: a lone feedback packet marked for delivery, a
    /// compound with feedback split into its reports (unmarked, for rtc's interceptors) and one
    /// marked message per feedback packet.
    fn read(&mut self, mut msg: TaggedPacket) {
        let Packet::Rtcp(packets) = &mut msg.message.packet else {
            self.reads.push_back(msg);
            return;
        };
        // A publisher's sender reports, for recordings (which capture time an RTP timestamp
        // stands for): a copy of each, without its report blocks, so that rtc routes it by
        // the stream it describes; the original stays in its compound for rtc's reports.
        let reports: Vec<SenderReport> = packets
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
            .map(|sr| SenderReport {
                reports: Vec::new(),
                profile_extensions: Default::default(),
                ..sr.clone()
            })
            .collect();
        let (now, transport) = (msg.now, msg.transport);
        for sr in reports {
            self.reads.push_back(TaggedPacket {
                now,
                transport,
                message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(sr)]))
                    .with(Attribute::DeliverToApplication),
            });
        }
        let Packet::Rtcp(packets) = &mut msg.message.packet else {
            return;
        };
        let feedback = packets.iter().filter(|p| is_feedback(p.as_ref())).count();
        if feedback == 0 {
            self.reads.push_back(msg);
            return;
        }
        if feedback == 1 && packets.len() == 1 {
            if !msg.message.has(&Attribute::DeliverToApplication) {
                msg.message.attributes.push(Attribute::DeliverToApplication);
            }
            self.reads.push_back(msg);
            return;
        }
        let (now, transport) = (msg.now, msg.transport);
        let (feedback, rest): (Vec<_>, Vec<_>) = std::mem::take(packets)
            .into_iter()
            .partition(|p| is_feedback(p.as_ref()));
        if !rest.is_empty() {
            *packets = rest;
            self.reads.push_back(msg);
        }
        for packet in feedback {
            self.reads.push_back(TaggedPacket {
                now,
                transport,
                message: AttributedPacket::new(Packet::Rtcp(vec![packet]))
                    .with(Attribute::DeliverToApplication),
            });
        }
    }
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read(msg);
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

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::source_description::SourceDescription;
    use rtc::sansio::Protocol;
    use rtc::shared::TransportContext;

    fn tagged(packets: Vec<Box<dyn rtc::rtcp::Packet>>) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(packets)),
        }
    }

    fn pli(media_ssrc: u32) -> Box<dyn rtc::rtcp::Packet> {
        Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc,
        })
    }

    fn nack(media_ssrc: u32) -> Box<dyn rtc::rtcp::Packet> {
        Box::new(TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc,
            nacks: Vec::new(),
        })
    }

    /// What the tap passed on: per message, whether it is marked for the application and the
    /// destination SSRCs of its packets (rtc routes a message by the first).
    fn passed(tap: &mut FeedbackTap) -> Vec<(bool, Vec<Vec<u32>>)> {
        std::iter::from_fn(|| tap.poll_read())
            .map(|m| {
                let Packet::Rtcp(packets) = &m.message.packet else {
                    panic!("not RTCP");
                };
                (
                    m.message.has(&Attribute::DeliverToApplication),
                    packets.iter().map(|p| p.destination_ssrc()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn feedback_leaves_its_compound_and_is_marked_alone() {
        let mut tap = FeedbackTap::default();
        let report: Box<dyn rtc::rtcp::Packet> = Box::new(ReceiverReport {
            ssrc: 1,
            reports: vec![rtc::rtcp::reception_report::ReceptionReport {
                ssrc: 30,
                ..Default::default()
            }],
            ..Default::default()
        });
        let sdes: Box<dyn rtc::rtcp::Packet> = Box::new(SourceDescription::default());
        tap.handle_read(tagged(vec![report, sdes, nack(10), pli(20)]))
            .unwrap();
        assert_eq!(
            passed(&mut tap),
            vec![
                (false, vec![vec![30], vec![]]),
                (true, vec![vec![10]]),
                (true, vec![vec![20]]),
            ]
        );
    }

    #[test]
    fn a_sender_report_reaches_the_application_as_a_copy_routed_by_its_own_stream() {
        let mut tap = FeedbackTap::default();
        let sr: Box<dyn rtc::rtcp::Packet> = Box::new(SenderReport {
            ssrc: 77,
            ntp_time: 0xe000_0000_8000_0000,
            rtp_time: 1234,
            reports: vec![rtc::rtcp::reception_report::ReceptionReport {
                ssrc: 30,
                ..Default::default()
            }],
            ..Default::default()
        });
        tap.handle_read(tagged(vec![sr, pli(20)])).unwrap();
        let out: Vec<_> = std::iter::from_fn(|| tap.poll_read()).collect();
        // The copy (marked, its own SSRC first), the compound without the PLI, the PLI.
        let Packet::Rtcp(copy) = &out[0].message.packet else {
            panic!("not RTCP");
        };
        let copy = copy[0]
            .as_any()
            .downcast_ref::<SenderReport>()
            .expect("a sender report");
        assert!(out[0].message.has(&Attribute::DeliverToApplication));
        assert_eq!(
            (copy.ssrc, copy.ntp_time, copy.rtp_time, copy.reports.len()),
            (77, 0xe000_0000_8000_0000, 1234, 0)
        );
        assert_eq!(rtc::rtcp::Packet::destination_ssrc(copy), vec![77]);
        assert!(!out[1].message.has(&Attribute::DeliverToApplication));
        assert!(out[2].message.has(&Attribute::DeliverToApplication));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn lone_feedback_is_marked_and_reports_pass_unmarked() {
        let mut tap = FeedbackTap::default();
        tap.handle_read(tagged(vec![pli(20)])).unwrap();
        tap.handle_read(tagged(vec![Box::new(ReceiverReport::default())]))
            .unwrap();
        // Two feedback packets and nothing else: a message each.
        tap.handle_read(tagged(vec![pli(20), nack(10)])).unwrap();
        assert_eq!(
            passed(&mut tap),
            vec![
                (true, vec![vec![20]]),
                (false, vec![vec![]]),
                (true, vec![vec![20]]),
                (true, vec![vec![10]]),
            ]
        );
    }
}

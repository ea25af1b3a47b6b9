//! The interceptor that lets a subscriber's feedback reach the SFU.
//!
//! `rtc` ends every inbound RTCP packet at the end of its interceptor chain unless an interceptor
//! marks it for the application. An SFU must see what subscribers ask of the streams it sends
//! them: NACKs (answered from the SFU's own retransmission buffers, not by a per-subscriber copy
//! in an interceptor) and keyframe requests (PLI, FIR: relayed to the publisher). This marks
//! exactly those compound packets; reports and congestion feedback stay with rtc's interceptors.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

/// Marks inbound NACK, PLI and FIR for delivery; passes everything through unchanged.
#[derive(Default)]
pub(super) struct FeedbackTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

fn is_feedback(packet: &Packet) -> bool {
    let Packet::Rtcp(packets) = packet else {
        return false;
    };
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<TransportLayerNack>()
            || any.is::<PictureLossIndication>()
            || any.is::<FullIntraRequest>()
    })
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if is_feedback(&msg.message.packet) && !msg.message.has(&Attribute::DeliverToApplication) {
            msg.message.attributes.push(Attribute::DeliverToApplication);
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

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

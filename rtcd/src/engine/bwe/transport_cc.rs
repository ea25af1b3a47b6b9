//! Transport-wide congestion control towards one peer: every RTP packet sent on a stream that
//! negotiated transport-cc (its RTX SSRC too; audio only beside video) gets the next
//! transport-wide sequence number and a record of when it was written and how big it was; the
//! peer's feedback (`TransportLayerCc`) is joined to those records and handed to the estimator
//! in send order.
//!
//! It replaces rtc's `TwccSenderInterceptor` and `CongestionControlInterceptor` (with its send
//! `History`), which did the same in two links of the chain. Measured in the simulcast benchmark
//! (80 subscribers, 2026-12-04): those two, their three hash maps per packet (a record, a
//! transport-wide index, an (SSRC, sequence) index, all SipHash), the copy of every RTCP batch
//! read and the moves of each packet through two more links were most of what adaptive video
//! added to rtcd's CPU per forwarded packet. Here the records are a ring indexed by the sequence
//! number itself: the feedback names packets by that number, so a record is found by
//! subtraction, and records leave from the front in send order. RFC 8888 feedback is not read:
//! rtcd never negotiates it.
//!
//! Since 2026-12-06 it is no interceptor either: the peer numbers a packet in place as it
//! protects it ([`TransportCc::number`]) and hands it the RTCP it reads
//! ([`TransportCc::on_rtcp`]). As an interceptor every packet sent walked into it by value and
//! back out, and that walk (with the sender reports', `sender_reports`) was about a tenth of
//! rtcd's CPU in one-to-one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{BandwidthEstimator, PacketReport, StreamInfo, convert_twcc};
use rtc::rtcp::Packet as RtcpPacket;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::shared::marshal::MarshalSize;

use super::Departures;

/// The header extension's URI (draft-holmer-rmcat-transport-wide-cc-extensions-01): what the
/// peer negotiates, numbers what it sends with, and reads what it receives with.
pub(in crate::engine) const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// The transport-cc extension id a stream negotiated, if any (0 is no id: RFC 8285 reserves
/// it). What rtcd sends is numbered with it, what it receives is read with it (`arrivals`).
pub(in crate::engine) fn transport_cc_id(info: &StreamInfo) -> Option<u8> {
    info.rtp_header_extensions
        .iter()
        .find(|e| e.uri == TRANSPORT_CC_URI)
        .and_then(|e| u8::try_from(e.id).ok())
        .filter(|id| *id != 0)
}

/// Records older than this that no feedback acknowledged are dropped (the packet or its
/// feedback was lost for good): feedback comes every 50-100 ms plus a round trip, and rtc's
/// history kept the same horizon.
const HORIZON: Duration = Duration::from_secs(2);

/// At most this many records: 2 s of 10 Mbit/s of full-size packets, far under the 32 768 that
/// a 16-bit transport-wide sequence number can name without ambiguity.
const MAX_RECORDS: usize = 4_096;

/// Every 16-bit number in network byte order, for [`wire`].
static WIRE: [u8; 2 << 16] = {
    let mut all = [0u8; 2 << 16];
    let mut n = 0;
    while n < 1 << 16 {
        all[2 * n] = (n >> 8) as u8;
        all[2 * n + 1] = n as u8;
        n += 1;
    }
    all
};

/// A transport-wide number as its extension's value. A static slice: the value of an extension
/// is a `Bytes`, and one copied from the stack was an allocation for every packet sent.
fn wire(number: u16) -> Bytes {
    let at = 2 * usize::from(number);
    Bytes::from_static(&WIRE[at..at + 2])
}

/// One packet sent, until feedback reported it (or it aged out).
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When it was written (or its round's stamp: [`Departures`]).
    departure: Instant,
    /// Its size on the wire before SRTP (header, extensions, payload, padding).
    size: u32,
    arrived: bool,
    /// Its arrival on the peer's clock (`None`: arrived without a time, or not reported).
    arrival: Option<Duration>,
}

/// A local stream that numbers its packets.
#[derive(Debug, Clone, Copy)]
struct Numbered {
    ssrc: u32,
    /// Its transport-cc extension id.
    id: u8,
    audio: bool,
}

/// See the module docs.
pub(in crate::engine) struct TransportCc<E> {
    estimator: E,
    /// The worker's clock, if packets leave later than they are written.
    departures: Option<Departures>,
    /// Every local stream (primary and RTX) that numbers its packets.
    streams: Vec<Numbered>,
    /// Whether a stream that is not audio is among `streams` (see [`TransportCc::number`]).
    video: bool,
    /// The next transport-wide sequence number, unwrapped.
    next: u64,
    /// Records of the packets numbered `next - sent.len()..next` not yet reported, in send
    /// order: every number given out is recorded, so the records are contiguous.
    sent: VecDeque<Sent>,
    /// The highest unwrapped number reported as arrived since the last reports were taken.
    highest_arrived: Option<u64>,
    /// Reports handed to the estimator (reused between feedback batches).
    reports: Vec<PacketReport>,
}

impl<E: BandwidthEstimator> TransportCc<E> {
    pub(in crate::engine) fn new(estimator: E, departures: Option<Departures>) -> Self {
        Self {
            estimator,
            departures,
            streams: Vec::new(),
            video: false,
            next: 0,
            sent: VecDeque::new(),
            highest_arrived: None,
            reports: Vec::new(),
        }
    }

    #[cfg(test)]
    fn estimator(&self) -> &E {
        &self.estimator
    }

    /// Records kept (for tests: the ring stays bounded).
    #[cfg(test)]
    fn outstanding(&self) -> usize {
        self.sent.len()
    }

    /// The unwrapped number of `sent[0]`.
    fn first(&self) -> u64 {
        self.next - self.sent.len() as u64
    }

    /// The extension id to number a packet of `ssrc` with, if it is numbered.
    fn extension_of(&self, ssrc: u32) -> Option<u8> {
        let stream = self.streams.iter().find(|s| s.ssrc == ssrc)?;
        (!stream.audio || self.video).then_some(stream.id)
    }

    /// Numbers `packet` if its stream negotiated transport-cc, and records it: the last thing
    /// done to a packet before it is protected, so every packet that leaves is numbered,
    /// retransmissions included.
    ///
    /// Audio is numbered only while the peer also has a video stream bound. The estimate
    /// exists to choose video layers; a peer that receives audio alone (a voice call, the
    /// listeners of a talk) has nothing to choose, and numbered audio only brings its
    /// feedback: about ten packets a second per peer, each waking a media worker, decrypted,
    /// parsed and run through the estimator. In the audio fan-out benchmark (50 listeners,
    /// two speakers) that feedback was most of what adaptive video cost, 4.4 CPU-s per
    /// million forwarded packets on top of 6.5. Once a video stream is bound (its first packet
    /// written), audio is numbered again, so the estimate of a path that carries video counts
    /// everything on it.
    pub(in crate::engine) fn number(&mut self, packet: &mut rtc::rtp::Packet, now: Instant) {
        let Some(id) = self.extension_of(packet.header.ssrc) else {
            return;
        };
        let number = self.next;
        if packet
            .header
            .set_extension(id, wire(number as u16))
            .is_err()
        {
            // Not numbered on the wire, so not recorded, and its number goes to the next
            // packet: the records stay one per number, which is how feedback finds them.
            return;
        }
        let departure = self.departures.as_ref().map_or(now, Departures::stamp);
        // Aged and surplus records leave from the front; a record never acknowledged counts
        // neither as arrived nor as lost.
        while self.sent.front().is_some_and(|s| {
            self.sent.len() >= MAX_RECORDS
                || departure.saturating_duration_since(s.departure) > HORIZON
        }) {
            self.sent.pop_front();
        }
        self.next += 1;
        self.sent.push_back(Sent {
            departure,
            size: packet.marshal_size() as u32,
            arrived: false,
            arrival: None,
        });
    }

    /// The record a feedback's 16-bit number names, if it is still kept.
    fn index_of(&self, wire: u16) -> Option<usize> {
        let offset = usize::from(wire.wrapping_sub(self.first() as u16));
        (offset < self.sent.len()).then_some(offset)
    }

    /// Marks what one feedback packet says arrived; whether it named anything kept.
    fn acknowledge(&mut self, feedback: &TransportLayerCc) -> bool {
        let mut named = false;
        for ack in convert_twcc(feedback) {
            let Some(i) = self.index_of(ack.sequence_number) else {
                continue;
            };
            named = true;
            // A packet reported lost and later arrived (a later feedback after reordering)
            // counts as arrived; never the other way round.
            if ack.arrived {
                let record = &mut self.sent[i];
                record.arrived = true;
                record.arrival = ack.arrival;
                let number = self.first() + i as u64;
                self.highest_arrived = Some(self.highest_arrived.map_or(number, |h| h.max(number)));
            }
        }
        named
    }

    /// Everything up to the highest packet reported arrived, in send order (those before it
    /// not reported arrived count as lost), out of the ring and into `self.reports`.
    fn take_reports(&mut self) {
        self.reports.clear();
        let Some(highest) = self.highest_arrived.take() else {
            return;
        };
        while self.first() <= highest {
            let number = self.first();
            let Some(s) = self.sent.pop_front() else {
                break;
            };
            self.reports.push(PacketReport {
                ssrc: 0,
                id: number,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: number as u16,
                size: s.size as usize,
                arrived: s.arrived,
                departure: s.departure,
                arrival: s.arrival,
                ecn: Default::default(),
            });
        }
    }

    /// Joins the client's transport-cc feedback among `packets` (one compound RTCP packet) to
    /// the records, and hands what it reported to the estimator.
    pub(in crate::engine) fn on_rtcp(&mut self, now: Instant, packets: &[Box<dyn RtcpPacket>]) {
        let mut named = false;
        for packet in packets {
            if let Some(feedback) = packet.as_any().downcast_ref::<TransportLayerCc>() {
                named |= self.acknowledge(feedback);
            }
        }
        if named {
            self.take_reports();
            self.estimator.on_reports(now, &self.reports);
        }
    }

    /// Lets the estimator's time pass.
    pub(in crate::engine) fn handle_timeout(&mut self, now: Instant) {
        self.estimator.handle_timeout(now);
    }

    /// When [`TransportCc::handle_timeout`] is due next.
    pub(in crate::engine) fn poll_timeout(&mut self) -> Option<Instant> {
        self.estimator.poll_timeout()
    }

    /// A stream that negotiated transport-cc is numbered, and so is its RTX SSRC: a stream is
    /// bound once per sending coding, keyed by the primary SSRC, and without its own entry every
    /// retransmission would leave unnumbered, so the estimator would see fewer bytes than are
    /// on the wire exactly when the path is losing.
    pub(in crate::engine) fn bind_local_stream(&mut self, info: &StreamInfo) {
        let Some(id) = transport_cc_id(info) else {
            return;
        };
        let audio = info
            .mime_type
            .get(..6)
            .is_some_and(|kind| kind.eq_ignore_ascii_case("audio/"));
        for ssrc in std::iter::once(info.ssrc).chain(info.ssrc_rtx) {
            self.streams.retain(|s| s.ssrc != ssrc);
            self.streams.push(Numbered { ssrc, id, audio });
        }
        self.video = self.streams.iter().any(|s| !s.audio);
    }

    pub(in crate::engine) fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.streams
            .retain(|s| s.ssrc != info.ssrc && Some(s.ssrc) != info.ssrc_rtx);
        self.video = self.streams.iter().any(|s| !s.audio);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::RTPHeaderExtension;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, SymbolTypeTcc,
    };

    /// Counts what it is told.
    #[derive(Default)]
    struct Recorder {
        batches: Vec<Vec<PacketReport>>,
    }

    impl BandwidthEstimator for Recorder {
        fn on_reports(&mut self, _now: Instant, reports: &[PacketReport]) {
            self.batches.push(reports.to_vec());
        }
        fn target_bitrate(&self) -> f64 {
            0.0
        }
    }

    fn stream(ssrc: u32, rtx: Option<u32>) -> StreamInfo {
        StreamInfo {
            ssrc,
            ssrc_rtx: rtx,
            rtp_header_extensions: vec![RTPHeaderExtension {
                uri: TRANSPORT_CC_URI.to_owned(),
                id: 3,
            }],
            ..Default::default()
        }
    }

    fn rtp(ssrc: u32, seq: u16, payload: usize, now: Instant) -> (rtc::rtp::Packet, Instant) {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc,
                sequence_number: seq,
                ..Default::default()
            },
            payload: Bytes::from(vec![0u8; payload]),
        };
        (packet, now)
    }

    /// Numbers `packet` and returns the transport-wide number it left with, if any.
    fn send(
        cc: &mut TransportCc<Recorder>,
        (mut p, now): (rtc::rtp::Packet, Instant),
    ) -> Option<u16> {
        cc.number(&mut p, now);
        let ext = p.header.get_extension(3)?;
        Some(u16::from_be_bytes([ext[0], ext[1]]))
    }

    /// Feedback from `base`: `statuses` (true: arrived, 1 ms after the previous arrival).
    fn feedback(base: u16, statuses: &[bool], now: Instant) -> (Vec<Box<dyn RtcpPacket>>, Instant) {
        let mut chunks = Vec::new();
        for &arrived in statuses {
            let symbol = if arrived {
                SymbolTypeTcc::PacketReceivedSmallDelta
            } else {
                SymbolTypeTcc::PacketNotReceived
            };
            chunks.push(PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: Default::default(),
                packet_status_symbol: symbol,
                run_length: 1,
            }));
        }
        let deltas = statuses
            .iter()
            .filter(|a| **a)
            .map(|_| RecvDelta {
                type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                delta: 1_000,
            })
            .collect();
        let fb = TransportLayerCc {
            base_sequence_number: base,
            packet_status_count: statuses.len() as u16,
            reference_time: 1,
            packet_chunks: chunks,
            recv_deltas: deltas,
            ..Default::default()
        };
        (vec![Box::new(fb)], now)
    }

    fn read(cc: &mut TransportCc<Recorder>, (packets, now): (Vec<Box<dyn RtcpPacket>>, Instant)) {
        cc.on_rtcp(now, &packets);
    }

    fn audio_stream(ssrc: u32) -> StreamInfo {
        StreamInfo {
            mime_type: "audio/opus".to_owned(),
            ..stream(ssrc, None)
        }
    }

    /// A peer that receives audio alone gets it unnumbered (so it sends no feedback to wake
    /// rtcd for); from the first video stream bound, audio is numbered with it, in one
    /// sequence, and again not once the video is unbound.
    #[test]
    fn audio_is_numbered_only_beside_video() {
        let now = Instant::now();
        let mut cc = TransportCc::new(Recorder::default(), None);
        cc.bind_local_stream(&audio_stream(20));
        assert_eq!(send(&mut cc, rtp(20, 1, 100, now)), None, "audio alone");
        cc.bind_local_stream(&stream(10, Some(11)));
        assert_eq!(send(&mut cc, rtp(10, 500, 1_000, now)), Some(0));
        assert_eq!(send(&mut cc, rtp(20, 2, 100, now)), Some(1), "beside video");
        assert_eq!(
            send(&mut cc, rtp(11, 7, 1_000, now)),
            Some(2),
            "video's RTX"
        );
        cc.unbind_local_stream(&stream(10, Some(11)));
        assert_eq!(
            send(&mut cc, rtp(20, 3, 100, now)),
            None,
            "audio alone again"
        );
        assert_eq!(cc.outstanding(), 3, "unnumbered audio leaves no record");
        let mut upper = audio_stream(30);
        upper.mime_type = "AUDIO/opus".to_owned();
        cc.bind_local_stream(&upper);
        cc.bind_local_stream(&stream(10, None));
        assert_eq!(
            send(&mut cc, rtp(30, 1, 100, now)),
            Some(3),
            "a kind in any case"
        );
    }

    #[test]
    fn numbers_bound_streams_and_their_rtx_and_leaves_others_alone() {
        let now = Instant::now();
        let mut cc = TransportCc::new(Recorder::default(), None);
        cc.bind_local_stream(&stream(10, Some(11)));
        assert_eq!(send(&mut cc, rtp(10, 500, 100, now)), Some(0));
        assert_eq!(send(&mut cc, rtp(11, 7, 100, now)), Some(1), "its RTX");
        assert_eq!(send(&mut cc, rtp(99, 1, 100, now)), None, "not bound");
        assert_eq!(send(&mut cc, rtp(10, 501, 100, now)), Some(2));
        cc.unbind_local_stream(&stream(10, Some(11)));
        assert_eq!(send(&mut cc, rtp(11, 8, 100, now)), None, "unbound");
        assert_eq!(cc.outstanding(), 3);
    }

    /// A packet whose header cannot take the extension (here a one-byte header and an id
    /// above 14) leaves unnumbered and does not use up a number: the next packet gets it, and
    /// feedback for it finds its record.
    #[test]
    fn a_packet_that_cannot_be_numbered_does_not_use_up_a_number() {
        let now = Instant::now();
        let mut cc = TransportCc::new(Recorder::default(), None);
        cc.bind_local_stream(&stream(10, None));
        let mut wide = stream(20, None);
        wide.rtp_header_extensions[0].id = 20;
        cc.bind_local_stream(&wide);
        let mut odd = rtp(20, 1, 100, now);
        odd.0.header.extension = true;
        odd.0.header.extension_profile = 0xBEDE;
        odd.0.header.extensions.push(rtc::rtp::header::Extension {
            id: 1,
            payload: Bytes::from_static(&[7]),
        });
        assert_eq!(send(&mut cc, odd), None);
        assert_eq!(send(&mut cc, rtp(10, 1, 100, now)), Some(0));
        assert_eq!(cc.outstanding(), 1);
        read(
            &mut cc,
            feedback(0, &[true], now + Duration::from_millis(30)),
        );
        let batch = &cc.estimator().batches[0];
        assert_eq!((batch.len(), batch[0].size), (1, 120));
    }

    #[test]
    fn feedback_reports_in_send_order_with_losses_before_the_highest_arrival() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(Recorder::default(), None);
        cc.bind_local_stream(&stream(10, None));
        for i in 0..5u16 {
            send(
                &mut cc,
                rtp(
                    10,
                    i,
                    100 + usize::from(i),
                    t0 + Duration::from_millis(i.into()),
                ),
            );
        }
        // 0 and 2 arrived, 1 lost, 3 and 4 not reported yet.
        read(
            &mut cc,
            feedback(0, &[true, false, true], t0 + Duration::from_millis(50)),
        );
        let batch = &cc.estimator().batches[0];
        let got: Vec<_> = batch
            .iter()
            .map(|r| {
                (
                    r.twcc_sequence_number,
                    r.arrived,
                    r.size,
                    r.arrival.is_some(),
                )
            })
            .collect();
        // Sizes are on the wire before SRTP: a 12-byte header, 8 of extension, the payload.
        assert_eq!(
            got,
            vec![
                (0, true, 120, true),
                (1, false, 121, false),
                (2, true, 122, true)
            ]
        );
        assert_eq!(batch[2].departure, t0 + Duration::from_millis(2));
        assert_eq!(cc.outstanding(), 2, "3 and 4 wait");
        // The rest, and a repeat of what was already reported (ignored).
        read(
            &mut cc,
            feedback(1, &[true, true, true, true], t0 + Duration::from_millis(90)),
        );
        let batch = &cc.estimator().batches[1];
        assert_eq!(
            batch
                .iter()
                .map(|r| r.twcc_sequence_number)
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(cc.outstanding(), 0);
    }

    #[test]
    fn numbers_go_on_the_wire_in_network_byte_order() {
        for n in [0u16, 1, 0x00ff, 0x0100, 0x1234, 0xfffe, 0xffff] {
            assert_eq!(&wire(n)[..], &n.to_be_bytes());
        }
    }

    #[test]
    fn numbers_wrap_and_records_stay_bounded() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(Recorder::default(), None);
        cc.bind_local_stream(&stream(10, None));
        for i in 0..70_000u32 {
            let at = t0 + Duration::from_micros(u64::from(i) * 100);
            send(&mut cc, rtp(10, i as u16, 50, at));
            assert!(cc.outstanding() <= MAX_RECORDS);
        }
        // The last three sent were numbered 69 997..69 999, i.e. 4 461..4 463 on the wire.
        let base = (69_997u32 % 65_536) as u16;
        read(
            &mut cc,
            feedback(base, &[true, true, true], t0 + Duration::from_secs(8)),
        );
        let batch = cc.estimator().batches.last().unwrap();
        assert_eq!(batch.last().map(|r| r.id), Some(69_999));
        assert!(batch.iter().rev().take(3).all(|r| r.arrived));
        // Records that aged out are not reported: only what was kept up to the arrivals.
        assert!(batch.len() <= MAX_RECORDS);
        assert_eq!(cc.outstanding(), 0);
    }

    #[test]
    fn records_older_than_the_horizon_leave() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(Recorder::default(), None);
        cc.bind_local_stream(&stream(10, None));
        send(&mut cc, rtp(10, 0, 50, t0));
        send(
            &mut cc,
            rtp(10, 1, 50, t0 + HORIZON + Duration::from_millis(1)),
        );
        assert_eq!(cc.outstanding(), 1);
        // Feedback for the packet that aged out names nothing kept: the estimator is not told.
        read(&mut cc, feedback(0, &[true], t0 + HORIZON * 2));
        assert!(cc.estimator().batches.is_empty());
        read(&mut cc, feedback(1, &[true], t0 + HORIZON * 2));
        assert_eq!(cc.estimator().batches.len(), 1);
        assert_eq!(cc.estimator().batches[0][0].id, 1);
    }
}

//! Sender reports (RFC 3550 6.4.1) on the streams rtcd sends a client, counted by the engine
//! on its media path.
//!
//! `rtc`'s `SenderReportInterceptor` counted the same, but as an interceptor: every packet sent
//! walked into it by value, onto its queue and back out (two moves of a few hundred bytes and a
//! SipHash lookup per packet). With the transport-cc numbering, which walked the same way, that
//! write walk was about a tenth of rtcd's CPU in one-to-one (`docs/benchmarks.md`, 2026-12-06).
//! Here the peer counts a packet in place as it protects it ([`SenderReports::count`]): a short
//! scan of the slot streams by SSRC and two additions.
//!
//! What is reported is what `rtc` reported, so receivers see no difference: one report per
//! bound stream (the primary SSRC; retransmissions are not counted, as there), every second
//! from a second after the first packet, each in its own RTCP packet; the packet and payload
//! octet counts of everything sent on the SSRC, padding-only packets included; the RTP time
//! extrapolated from the first packet of the latest frame sent in order, at the stream's clock
//! rate, paired with the wall clock at the report.

use std::time::{Duration, Instant};

use rtc::rtcp::Packet as RtcpPacket;
use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::time::SystemInstant;

/// How often every stream is reported (rtc's default, which receivers have always seen).
pub(super) const INTERVAL: Duration = Duration::from_secs(1);

/// One stream rtcd sends, with what its next report says.
#[derive(Debug)]
struct Stream {
    ssrc: u32,
    clock_rate: f64,
    /// The highest sequence number written in order so far (`None` before the first packet).
    last_sequence: Option<u16>,
    /// The RTP timestamp of the latest frame's first in-order packet, and when it was written:
    /// what a report extrapolates the RTP time from (a frame's later packets leave later, and
    /// would make the report's RTP time run ahead of the media by their spread).
    mapping: Option<(u32, Instant)>,
    packets: u32,
    octets: u32,
}

impl Stream {
    fn count(&mut self, sequence: u16, timestamp: u32, payload: usize, now: Instant) {
        let in_order = self
            .last_sequence
            .is_none_or(|last| (1..1 << 15).contains(&sequence.wrapping_sub(last)));
        if in_order {
            self.last_sequence = Some(sequence);
            if self.mapping.is_none_or(|(rtp, _)| rtp != timestamp) {
                self.mapping = Some((timestamp, now));
            }
        }
        self.packets = self.packets.wrapping_add(1);
        // RTP payloads are far below 4 GiB: the cast cannot truncate a real packet, and the
        // count wraps as RFC 3550 says it does.
        self.octets = self.octets.wrapping_add(payload as u32);
    }

    fn report(&self, now: Instant, wall: &SystemInstant) -> Option<SenderReport> {
        let (rtp, at) = self.mapping?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp_time: wall.ntp(now),
            rtp_time: rtp.wrapping_add((elapsed * self.clock_rate) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// The sender reports of one peer; see the module docs.
#[derive(Debug, Default)]
pub(super) struct SenderReports {
    /// A handful per peer (one per slot rtcd sends on): a scan beats hashing.
    streams: Vec<Stream>,
    /// When every stream is reported next: set by the first packet counted.
    next: Option<Instant>,
}

impl SenderReports {
    /// Starts counting a stream (again: a stream bound anew starts from zero, as in `rtc`).
    pub(super) fn bind(&mut self, ssrc: u32, clock_rate: u32) {
        self.unbind(ssrc);
        self.streams.push(Stream {
            ssrc,
            clock_rate: f64::from(clock_rate),
            last_sequence: None,
            mapping: None,
            packets: 0,
            octets: 0,
        });
    }

    /// Stops reporting a stream.
    pub(super) fn unbind(&mut self, ssrc: u32) {
        self.streams.retain(|s| s.ssrc != ssrc);
    }

    /// Counts one packet written towards the client (a stream not bound is not reported).
    pub(super) fn count(
        &mut self,
        header: &rtc::rtp::header::Header,
        payload: usize,
        now: Instant,
    ) {
        let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == header.ssrc) else {
            return;
        };
        stream.count(header.sequence_number, header.timestamp, payload, now);
        self.next.get_or_insert(now + INTERVAL);
    }

    /// When [`SenderReports::poll`] has something next.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The reports due at `now`, one RTCP packet per stream that has sent something, into
    /// `out`.
    pub(super) fn poll(&mut self, now: Instant, out: &mut Vec<Box<dyn RtcpPacket>>) {
        if self.next.is_none_or(|next| now < next) {
            return;
        }
        self.next = Some(now + INTERVAL);
        let wall = SystemInstant::now(now);
        for report in self.streams.iter().filter_map(|s| s.report(now, &wall)) {
            out.push(Box::new(report));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ssrc: u32, sequence: u16, timestamp: u32) -> rtc::rtp::header::Header {
        rtc::rtp::header::Header {
            version: 2,
            ssrc,
            sequence_number: sequence,
            timestamp,
            ..Default::default()
        }
    }

    fn due(reports: &mut SenderReports, now: Instant) -> Vec<SenderReport> {
        let mut out = Vec::new();
        reports.poll(now, &mut out);
        out.iter()
            .map(|p| {
                p.as_any()
                    .downcast_ref::<SenderReport>()
                    .expect("sender reports only")
                    .clone()
            })
            .collect()
    }

    #[test]
    fn nothing_is_reported_before_a_packet_and_then_every_second() {
        let t0 = Instant::now();
        let mut reports = SenderReports::default();
        reports.bind(10, 90_000);
        assert_eq!(reports.poll_timeout(), None);
        assert!(due(&mut reports, t0 + INTERVAL * 5).is_empty());
        reports.count(&header(10, 1, 1_000), 900, t0);
        assert_eq!(reports.poll_timeout(), Some(t0 + INTERVAL));
        assert!(
            due(&mut reports, t0 + INTERVAL / 2).is_empty(),
            "not yet due"
        );
        let first = due(&mut reports, t0 + INTERVAL);
        assert_eq!(first.len(), 1);
        assert_eq!(reports.poll_timeout(), Some(t0 + INTERVAL * 2));
        assert!(due(&mut reports, t0 + INTERVAL + INTERVAL / 2).is_empty());
        assert_eq!(due(&mut reports, t0 + INTERVAL * 2).len(), 1);
    }

    #[test]
    fn a_report_counts_packets_and_payload_octets_of_its_stream_only() {
        let t0 = Instant::now();
        let mut reports = SenderReports::default();
        reports.bind(10, 90_000);
        reports.bind(20, 48_000);
        for seq in 0..5u16 {
            reports.count(&header(10, seq, 3_000), 1_000, t0);
        }
        reports.count(&header(10, 5, 6_000), 0, t0); // padding only: counted, no octets
        reports.count(&header(20, 1, 960), 80, t0);
        reports.count(&header(99, 1, 960), 80, t0); // not bound (an RTX stream, say)
        let mut out = due(&mut reports, t0 + INTERVAL);
        out.sort_by_key(|r| r.ssrc);
        let counts: Vec<_> = out
            .iter()
            .map(|r| (r.ssrc, r.packet_count, r.octet_count))
            .collect();
        assert_eq!(counts, vec![(10, 6, 5_000), (20, 1, 80)]);
        reports.unbind(20);
        let out = due(&mut reports, t0 + INTERVAL * 2);
        assert_eq!(out.iter().map(|r| r.ssrc).collect::<Vec<_>>(), vec![10]);
        // Bound again: counted from zero.
        reports.bind(10, 90_000);
        assert!(
            due(&mut reports, t0 + INTERVAL * 3).is_empty(),
            "nothing sent since"
        );
    }

    /// The RTP time runs on from the first packet of the latest in-order frame at the clock
    /// rate; a late packet (a retransmission on the primary SSRC, a reordering) moves neither
    /// the mapping nor the order, but is counted.
    #[test]
    fn the_rtp_time_is_extrapolated_from_the_latest_frame_in_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut reports = SenderReports::default();
        reports.bind(10, 90_000);
        reports.count(&header(10, 100, 9_000), 500, t0);
        // The same frame's next packet 5 ms later does not move the mapping.
        reports.count(&header(10, 101, 9_000), 500, t0 + ms(5));
        // A new frame 33 ms in.
        reports.count(&header(10, 102, 12_000), 500, t0 + ms(33));
        // An old packet (a repair of 99, another frame's timestamp) late.
        reports.count(&header(10, 99, 6_000), 500, t0 + ms(40));
        let report = due(&mut reports, t0 + ms(1_033)).remove(0);
        // 1 s after the 12 000 frame's first packet at 90 kHz.
        assert_eq!(report.rtp_time, 12_000 + 90_000);
        assert_eq!(report.packet_count, 4);
        assert_eq!(report.octet_count, 2_000);
        // Timestamps and sequence numbers wrap.
        let mut reports = SenderReports::default();
        reports.bind(10, 48_000);
        reports.count(&header(10, u16::MAX, u32::MAX - 100), 10, t0);
        reports.count(&header(10, 0, 860), 10, t0 + ms(20));
        let report = due(&mut reports, t0 + ms(1_020)).remove(0);
        assert_eq!(report.rtp_time, 860 + 48_000);
    }

    /// The wall clock is the one at the report: an NTP time of now (1900 epoch), not of when
    /// the stream started.
    #[test]
    fn the_ntp_time_is_the_wall_clock_at_the_report() {
        let t0 = Instant::now();
        let mut reports = SenderReports::default();
        reports.bind(10, 90_000);
        reports.count(&header(10, 1, 1), 1, t0);
        let report = due(&mut reports, t0 + INTERVAL).remove(0);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        let ntp_seconds = report.ntp_time >> 32;
        let expected = unix.as_secs() + 2_208_988_800; // 1900 -> 1970
        assert!(
            ntp_seconds.abs_diff(expected) <= 2,
            "{ntp_seconds} vs {expected}"
        );
    }
}

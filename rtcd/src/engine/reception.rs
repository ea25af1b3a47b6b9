//! What rtcd tells a client about the streams it receives from it: receiver reports (RFC 3550
//! 6.4.2) and NACKs (RFC 4585 6.2.1), kept by the engine per stream as each packet arrives.
//!
//! `rtc`'s `ReceiverReportInterceptor` and `NackGeneratorInterceptor` kept the same, as two
//! interceptors: every received packet walked into each by value, onto its queue and back out,
//! and each looked its stream up in a SipHash map. In one-to-one, where every forwarded packet
//! is also a received one, the two were 5-6 % of rtcd's CPU (`docs/benchmarks.md`,
//! 2026-12-06). Here the peer hands each packet's header to [`Reception::receive`]: one short
//! scan by SSRC, a few bit operations.
//!
//! What publishers see is what they saw from `rtc` (its numbers and timing, restated here):
//! * **NACKs**: a log of the last [`NACK_LOG`] sequence numbers per stream that negotiated
//!   generic NACK; every [`NACK_INTERVAL`] from the first packet, each stream's holes after its
//!   last run of consecutive arrivals are asked for, each at most `max_nacks` times (then
//!   given up: the SFU's down-tracks ask for a keyframe), one NACK packet per stream. A stream
//!   bound again with the same NACK support keeps its log (`rtc` answered every bind with a
//!   fresh log, and a renegotiation lost every hole it knew: `nack`).
//! * **Receiver reports**: every [`REPORT_INTERVAL`] from the first packet, the extended highest
//!   sequence number, the loss since the last report and in total (holes under the highest
//!   number still missing at the report, repairs filled in), the interarrival jitter (RFC 3550
//!   A.8, in the stream's clock units), and the last sender report's middle bits with the delay
//!   since it arrived.
//!
//! Unlike `rtc`, one receiver report carries a block for every stream heard (up to 31, RFC
//! 3550's count), instead of one report per stream bound, and streams never heard (an RTX
//! SSRC, which the peer repairs before it gets here) get none.

use std::time::{Duration, Instant};

use rtc::rtcp::Packet as RtcpPacket;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};

/// How often receiver reports go out (rtc's default).
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often holes are asked for (rtc's default).
pub(super) const NACK_INTERVAL: Duration = Duration::from_millis(100);
/// Sequence numbers the NACK log covers (rtc's default): older holes are not asked for.
pub(super) const NACK_LOG: u16 = 512;
/// Report blocks one receiver report can carry (its 5-bit count).
const MAX_BLOCKS: usize = 31;
/// Half the sequence space: a difference below it is forward.
const HALF: u16 = 1 << 15;

/// Received flags for a window of `WORDS * 64` sequence numbers, indexed by the number itself.
#[derive(Debug, Clone)]
struct Window<const WORDS: usize>([u64; WORDS]);

impl<const WORDS: usize> Window<WORDS> {
    const SIZE: u16 = (WORDS * 64) as u16;

    fn new() -> Self {
        Self([0; WORDS])
    }

    fn position(seq: u16) -> (usize, u64) {
        let pos = usize::from(seq & (Self::SIZE - 1));
        (pos / 64, 1 << (pos % 64))
    }

    fn set(&mut self, seq: u16) {
        let (word, bit) = Self::position(seq);
        self.0[word] |= bit;
    }

    fn get(&self, seq: u16) -> bool {
        let (word, bit) = Self::position(seq);
        self.0[word] & bit != 0
    }

    /// Clears the numbers after `from` up to (not including) `to`, going forward: at most the
    /// whole window.
    fn clear_between(&mut self, from: u16, to: u16) {
        let gap = to.wrapping_sub(from).wrapping_sub(1);
        if gap >= Self::SIZE {
            self.0 = [0; WORDS];
            return;
        }
        let mut seq = from.wrapping_add(1);
        while seq != to {
            let (word, bit) = Self::position(seq);
            self.0[word] &= !bit;
            seq = seq.wrapping_add(1);
        }
    }
}

/// The NACK side of a stream: what arrived among the last [`NACK_LOG`] numbers, and how often
/// each hole was asked for.
#[derive(Debug, Clone)]
struct NackLog {
    received: Window<{ NACK_LOG as usize / 64 }>,
    /// The highest number received (`None` before the first packet).
    end: Option<u16>,
    /// The end of the run of consecutive arrivals holes are counted from.
    last_consecutive: u16,
    /// (hole, requests sent for it), for the holes still open.
    asked: Vec<(u16, u16)>,
}

impl NackLog {
    fn new() -> Self {
        Self {
            received: Window::new(),
            end: None,
            last_consecutive: 0,
            asked: Vec::new(),
        }
    }

    fn add(&mut self, seq: u16) {
        let Some(end) = self.end else {
            self.received.set(seq);
            self.end = Some(seq);
            self.last_consecutive = seq;
            return;
        };
        let ahead = seq.wrapping_sub(end);
        if ahead == 0 {
            return;
        }
        if ahead < HALF {
            self.received.clear_between(end, seq);
            self.received.set(seq);
            self.end = Some(seq);
            if self.last_consecutive.wrapping_add(1) == seq {
                self.last_consecutive = seq;
            } else if seq.wrapping_sub(self.last_consecutive) > NACK_LOG {
                // Holes older than the log are forgotten.
                self.last_consecutive = seq.wrapping_sub(NACK_LOG);
                self.fix_last_consecutive(seq);
            }
        } else {
            self.received.set(seq);
            if self.last_consecutive.wrapping_add(1) == seq {
                // A late packet that filled the oldest hole.
                self.last_consecutive = seq;
                self.fix_last_consecutive(end);
            }
        }
    }

    /// Moves `last_consecutive` over the arrivals that follow it, up to `end`.
    fn fix_last_consecutive(&mut self, end: u16) {
        let mut seq = self.last_consecutive.wrapping_add(1);
        while seq != end.wrapping_add(1) && self.received.get(seq) {
            seq = seq.wrapping_add(1);
        }
        self.last_consecutive = seq.wrapping_sub(1);
    }

    /// The holes after the last consecutive arrival, oldest first, into `out`.
    fn missing(&self, out: &mut Vec<u16>) {
        out.clear();
        let Some(end) = self.end else { return };
        if end.wrapping_sub(self.last_consecutive) >= HALF {
            return;
        }
        let mut seq = self.last_consecutive.wrapping_add(1);
        while seq != end.wrapping_add(1) {
            if !self.received.get(seq) {
                out.push(seq);
            }
            seq = seq.wrapping_add(1);
        }
    }

    /// Of the holes in `missing`, those not yet asked for `max` times, into `wanted`, counted
    /// as asked; holes no longer missing are forgotten.
    fn due(&mut self, missing: &[u16], max: u16, wanted: &mut Vec<u16>) {
        wanted.clear();
        self.asked.retain(|(seq, _)| missing.contains(seq));
        for &seq in missing {
            match self.asked.iter_mut().find(|(s, _)| *s == seq) {
                Some((_, count)) if *count >= max => {}
                Some((_, count)) => {
                    *count += 1;
                    wanted.push(seq);
                }
                None => {
                    self.asked.push((seq, 1));
                    wanted.push(seq);
                }
            }
        }
    }
}

/// The receiver report side of a stream (RFC 3550 A.3, A.8).
#[derive(Debug, Clone)]
struct Stats {
    received: Window<128>,
    /// Wraps of the highest sequence number.
    cycles: u16,
    /// The highest sequence number received, and the highest at the last report.
    last_seq: u16,
    last_report_seq: u16,
    /// The previous packet's RTP timestamp and arrival (`None` before the first packet).
    previous: Option<(u32, Instant)>,
    /// Interarrival jitter, in clock units.
    jitter: f64,
    /// The last sender report's NTP middle 32 bits and when it arrived.
    last_sender_report: Option<(u32, Instant)>,
    total_lost: u32,
}

impl Stats {
    fn new() -> Self {
        Self {
            received: Window::new(),
            cycles: 0,
            last_seq: 0,
            last_report_seq: 0,
            previous: None,
            jitter: 0.0,
            last_sender_report: None,
            total_lost: 0,
        }
    }

    fn add(&mut self, seq: u16, timestamp: u32, clock_rate: f64, now: Instant) {
        match self.previous {
            None => {
                self.last_seq = seq;
                self.last_report_seq = seq.wrapping_sub(1);
            }
            Some((previous_timestamp, previous_arrival)) => {
                let ahead = seq.wrapping_sub(self.last_seq);
                if ahead > 0 && ahead < HALF {
                    if seq < self.last_seq {
                        self.cycles = self.cycles.wrapping_add(1);
                    }
                    self.received.clear_between(self.last_seq, seq);
                    self.last_seq = seq;
                }
                // RFC 3550 A.8: the difference of relative transit times, in clock units.
                let d = now.duration_since(previous_arrival).as_secs_f64() * clock_rate
                    - f64::from(timestamp.wrapping_sub(previous_timestamp) as i32);
                self.jitter += (d.abs() - self.jitter) / 16.0;
            }
        }
        self.received.set(seq);
        self.previous = Some((timestamp, now));
    }

    fn block(&mut self, ssrc: u32, now: Instant) -> ReceptionReport {
        // The holes between the last report's highest number and this one's.
        let since = self.last_seq.wrapping_sub(self.last_report_seq);
        let lost = (1..since)
            .filter(|&k| !self.received.get(self.last_report_seq.wrapping_add(k)))
            .count() as u32;
        self.total_lost = (self.total_lost + lost).min(0xFF_FFFF);
        let fraction_lost = if since > 0 {
            (f64::from(lost * 256) / f64::from(since)) as u8
        } else {
            0
        };
        let (last_sender_report, delay) = self.last_sender_report.map_or((0, 0), |(lsr, at)| {
            let delay = now.saturating_duration_since(at).as_secs_f64() * 65_536.0;
            (lsr, delay as u32)
        });
        self.last_report_seq = self.last_seq;
        ReceptionReport {
            ssrc,
            fraction_lost,
            total_lost: self.total_lost,
            last_sequence_number: u32::from(self.cycles) << 16 | u32::from(self.last_seq),
            jitter: self.jitter as u32,
            last_sender_report,
            delay,
        }
    }
}

#[derive(Debug, Clone)]
struct Stream {
    ssrc: u32,
    clock_rate: f64,
    stats: Stats,
    /// With generic NACK negotiated.
    nack: Option<Box<NackLog>>,
}

/// A peer's receive side; see the module docs.
#[derive(Debug)]
pub(super) struct Reception {
    /// The SSRC rtcd's reports and NACKs name as their sender.
    sender_ssrc: u32,
    max_nacks: u16,
    /// A handful per peer (one per stream the client sends): a scan beats hashing.
    streams: Vec<Stream>,
    next_report: Option<Instant>,
    next_nack: Option<Instant>,
    /// Scratch lists for the NACK round (no allocation per round once grown).
    missing: Vec<u16>,
    wanted: Vec<u16>,
}

impl Reception {
    /// `max_nacks`: requests per hole before it is given up.
    pub(super) fn new(sender_ssrc: u32, max_nacks: u16) -> Self {
        Self {
            sender_ssrc,
            max_nacks,
            streams: Vec::new(),
            next_report: None,
            next_nack: None,
            missing: Vec::new(),
            wanted: Vec::new(),
        }
    }

    /// Starts keeping a stream the client sends. Bound again with the same NACK support it
    /// keeps what it knows; otherwise it starts afresh.
    pub(super) fn bind(&mut self, ssrc: u32, clock_rate: u32, nack: bool) {
        if let Some(stream) = self.streams.iter().find(|s| s.ssrc == ssrc)
            && stream.nack.is_some() == nack
        {
            return;
        }
        self.unbind(ssrc);
        self.streams.push(Stream {
            ssrc,
            clock_rate: f64::from(clock_rate),
            stats: Stats::new(),
            nack: nack.then(|| Box::new(NackLog::new())),
        });
    }

    /// Stops keeping a stream.
    pub(super) fn unbind(&mut self, ssrc: u32) {
        self.streams.retain(|s| s.ssrc != ssrc);
    }

    /// One packet received on a bound stream (others are ignored).
    pub(super) fn receive(&mut self, header: &rtc::rtp::header::Header, now: Instant) {
        let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == header.ssrc) else {
            return;
        };
        let seq = header.sequence_number;
        stream
            .stats
            .add(seq, header.timestamp, stream.clock_rate, now);
        self.next_report.get_or_insert(now + REPORT_INTERVAL);
        if let Some(log) = stream.nack.as_mut() {
            log.add(seq);
            self.next_nack.get_or_insert(now + NACK_INTERVAL);
        }
    }

    /// A sender report the client sent: its time goes back in the next receiver report.
    pub(super) fn sender_report(&mut self, report: &SenderReport, now: Instant) {
        if let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == report.ssrc) {
            stream.stats.last_sender_report = Some(((report.ntp_time >> 16) as u32, now));
        }
    }

    /// When [`Reception::poll`] has something next.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.next_report.into_iter().chain(self.next_nack).min()
    }

    /// What is due at `now`, one RTCP packet each, into `out`: a NACK per stream with holes to
    /// ask for, then the receiver report.
    pub(super) fn poll(&mut self, now: Instant, out: &mut Vec<Box<dyn RtcpPacket>>) {
        if self.next_nack.is_some_and(|at| at <= now) {
            self.next_nack = Some(now + NACK_INTERVAL);
            for stream in &mut self.streams {
                let Some(log) = stream.nack.as_mut() else {
                    continue;
                };
                log.missing(&mut self.missing);
                log.due(&self.missing, self.max_nacks, &mut self.wanted);
                if self.wanted.is_empty() {
                    continue;
                }
                out.push(Box::new(TransportLayerNack {
                    sender_ssrc: self.sender_ssrc,
                    media_ssrc: stream.ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&self.wanted),
                }));
            }
        }
        if self.next_report.is_some_and(|at| at <= now) {
            self.next_report = Some(now + REPORT_INTERVAL);
            let heard = self
                .streams
                .iter_mut()
                .filter(|s| s.stats.previous.is_some());
            let mut reports: Vec<ReceptionReport> =
                heard.map(|s| s.stats.block(s.ssrc, now)).collect();
            while !reports.is_empty() {
                let rest = reports.split_off(reports.len().min(MAX_BLOCKS));
                out.push(Box::new(ReceiverReport {
                    ssrc: self.sender_ssrc,
                    reports,
                    ..Default::default()
                }));
                reports = rest;
            }
        }
    }
}

#[cfg(test)]
mod tests;

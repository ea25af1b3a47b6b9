//! Transport-wide congestion control feedback towards a client (draft-holmer-rmcat-transport-
//! wide-cc-extensions-01, section 3.1): when each packet it numbered arrived here, so its
//! send-side estimator (Chrome's, Firefox's, aiortc's) can judge the path to rtcd.
//!
//! `rtc`'s `TwccReceiverInterceptor` did this as the last interceptor of a peer: every received
//! packet walked into it by value and out of its queue again, its stream looked up in a SipHash
//! map, and the walk was about 4 % of rtcd's CPU in one-to-one, where every forwarded packet is
//! also a received one (`docs/benchmarks.md`, 2026-12-06). Here the peer hands each packet's
//! header to [`Arrivals::record`]: a short scan for its extension id and one slot written in a
//! ring of arrival times.
//!
//! What publishers see is what they saw from `rtc` (its numbers restated here): feedback every
//! [`FEEDBACK_INTERVAL`] from the first numbered packet, each one covering the packets that
//! arrived since the previous one (from the number after the last one reported, so what was
//! lost in between is reported lost, to the last received), arrival
//! times in 250 us units against a 64 ms reference, its own feedback counter. A packet that
//! arrives late (its number below what was already reported) is reported again with its
//! neighbours, as long as they arrived within [`KEEP`] of the newest; a duplicate is not.
//! The chunks that carry the packets' states are this module's own choice (the draft allows any
//! mix): a run-length chunk for seven or more equal states, else a vector chunk.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::StreamInfo;
use rtc::rtcp::Packet as RtcpPacket;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk,
    SymbolSizeTypeTcc, SymbolTypeTcc, TransportLayerCc,
};

/// How often feedback goes out (`rtc`'s default, and Chrome's order of magnitude).
pub(super) const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
/// How long (us) an arrival is kept behind the newest one once reported: a late packet within
/// it is reported again with its neighbours.
pub(super) const KEEP: i64 = 500_000;
/// Sequence numbers the ring covers at most (older ones fall off its front).
const MAX_TRACKED: usize = 1 << 15;
/// Sequence numbers one feedback may report as lost before its first received one.
const MAX_LEADING_LOSS: i64 = 0x7FFE;
/// Units of the receive deltas (us).
const DELTA_UNIT: i64 = 250;
/// Units of the reference time (us).
const REFERENCE_UNIT: i64 = 64_000;
/// States one run-length chunk holds at most (13 bits).
const MAX_RUN: usize = 0x1FFF;
/// States in a one-bit vector chunk.
const ONE_BIT: usize = 14;
/// States in a two-bit vector chunk.
const TWO_BIT: usize = 7;
/// Not received, in the ring.
const MISSING: i64 = -1;

/// A peer's record of arrivals and its feedback schedule; see the module docs.
pub(super) struct Arrivals {
    /// Our SSRC in the feedback (any: the client does not look it up).
    sender_ssrc: u32,
    /// The extension id of each bound stream that negotiated transport-cc (its RTX SSRC too),
    /// in the order they were bound: a packet of a stream not bound is read with the id of the
    /// last one (as `rtc` did).
    ids: Vec<(u32, u8)>,
    /// The first numbered packet's arrival: the origin of arrival times.
    start: Option<Instant>,
    next_feedback: Option<Instant>,
    /// The SSRC of the last numbered packet (the feedback's media SSRC, which says nothing).
    media_ssrc: u32,
    /// The last sequence number, unwrapped.
    last: Option<i64>,
    /// Arrival times (us since `start`, or [`MISSING`]) of the numbers from `begin` on.
    times: VecDeque<i64>,
    begin: i64,
    /// The newest arrival time recorded.
    newest: i64,
    /// The first number the next feedback reports from: the one after the last received number
    /// reported (so losses after it are reported), or a late one's. A feedback is due only
    /// once something arrived at or past it.
    report_from: Option<i64>,
    /// The feedback counter.
    count: u8,
}

impl Arrivals {
    pub(super) fn new(sender_ssrc: u32) -> Self {
        Self {
            sender_ssrc,
            ids: Vec::new(),
            start: None,
            next_feedback: None,
            media_ssrc: 0,
            last: None,
            times: VecDeque::new(),
            begin: 0,
            newest: 0,
            report_from: None,
            count: 0,
        }
    }

    /// Starts reading the transport-wide numbers of a stream the client sends, and of its RTX
    /// SSRC (the repair flow in its own right, as `rtc` bound it), if it negotiated them.
    pub(super) fn bind(&mut self, info: &StreamInfo) {
        let Some(id) = super::bwe::transport_cc_id(info) else {
            return;
        };
        self.unbind(info);
        self.ids.push((info.ssrc, id));
        self.ids.extend(info.ssrc_rtx.map(|rtx| (rtx, id)));
    }

    /// Forgets a stream and its RTX SSRC (with the last one, packets of streams not bound
    /// count no more).
    pub(super) fn unbind(&mut self, info: &StreamInfo) {
        self.ids
            .retain(|&(s, _)| s != info.ssrc && Some(s) != info.ssrc_rtx);
    }

    /// One packet received (after its RTX repair): its transport-wide number, if it has one,
    /// arrived at `now`.
    pub(super) fn record(&mut self, header: &rtc::rtp::header::Header, now: Instant) {
        let bound = self.ids.iter().find(|&&(s, _)| s == header.ssrc);
        let Some(&(_, id)) = bound.or(self.ids.last()) else {
            return;
        };
        let Some(ext) = header.get_extension(id) else {
            return;
        };
        let [a, b, ..] = ext[..] else {
            return;
        };
        let seq = u16::from_be_bytes([a, b]);
        let start = *self.start.get_or_insert(now);
        self.next_feedback.get_or_insert(now + FEEDBACK_INTERVAL);
        let at =
            i64::try_from(now.saturating_duration_since(start).as_micros()).unwrap_or(i64::MAX);
        self.media_ssrc = header.ssrc;
        let seq = self.unwrap(seq);
        self.insert(seq, at);
    }

    /// `seq` in the unwrapped space, the nearer way from the last one.
    fn unwrap(&mut self, seq: u16) -> i64 {
        let unwrapped = match self.last {
            None => i64::from(seq),
            Some(last) => last + i64::from(seq.wrapping_sub(last as u16) as i16),
        };
        self.last = Some(unwrapped);
        unwrapped
    }

    fn end(&self) -> i64 {
        self.begin + self.times.len() as i64
    }

    fn insert(&mut self, seq: i64, at: i64) {
        let end = self.end();
        if self.times.is_empty() || seq >= end + MAX_TRACKED as i64 {
            // The first, or a jump past everything kept: start afresh from it.
            self.times.clear();
            self.begin = seq;
            self.times.push_back(at);
        } else if seq < self.begin {
            if (end - seq) as usize > MAX_TRACKED {
                return; // older than anything the ring can cover
            }
            for _ in seq + 1..self.begin {
                self.times.push_front(MISSING);
            }
            self.times.push_front(at);
            self.begin = seq;
        } else if seq >= end {
            for _ in end..seq {
                self.times.push_back(MISSING);
            }
            self.times.push_back(at);
            while self.times.len() > MAX_TRACKED {
                self.times.pop_front();
                self.begin += 1;
            }
        } else {
            let slot = &mut self.times[(seq - self.begin) as usize];
            if *slot != MISSING {
                return; // a duplicate
            }
            *slot = at;
        }
        self.newest = self.newest.max(at);
        let from = self.report_from.map_or(seq, |f| f.min(seq));
        self.report_from = Some(from.max(self.begin));
    }

    /// When [`Arrivals::poll`] has something next.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.next_feedback
    }

    /// The feedback due at `now`, one RTCP packet each, into `out`.
    pub(super) fn poll(&mut self, now: Instant, out: &mut Vec<Box<dyn RtcpPacket>>) {
        if self.next_feedback.is_none_or(|at| at > now) {
            return;
        }
        self.next_feedback = Some(now + FEEDBACK_INTERVAL);
        let Some(mut from) = self.report_from else {
            return;
        };
        while let Some(first) = self.first_received(from) {
            let base = from.max(first - MAX_LEADING_LOSS);
            let (feedback, next) = self.feedback(base, first);
            out.push(Box::new(feedback));
            from = next;
        }
        self.report_from = Some(from);
        self.forget_old();
    }

    /// The first number at or after `from` that arrived.
    fn first_received(&self, from: i64) -> Option<i64> {
        let skip = (from.max(self.begin) - self.begin) as usize;
        let found = self
            .times
            .range(skip.min(self.times.len())..)
            .position(|&t| t != MISSING)?;
        Some(self.begin + (skip + found) as i64)
    }

    /// One feedback from `base`, whose first received number is `first`, up to the last
    /// received number it can carry, and the number after it.
    fn feedback(&mut self, base: i64, first: i64) -> (TransportLayerCc, i64) {
        let first_at = self.times[(first - self.begin) as usize];
        let reference = first_at / REFERENCE_UNIT;
        let mut clock = reference * REFERENCE_UNIT;
        let mut states: Vec<SymbolTypeTcc> = Vec::new();
        let mut deltas: Vec<RecvDelta> = Vec::new();
        let mut next = base;
        let mut seq = base;
        while seq < self.end() {
            let at = self.times[(seq - self.begin) as usize];
            if at == MISSING {
                seq += 1;
                continue;
            }
            // Too far from the previous arrival, or past what the status count can say: the
            // next feedback starts here.
            let Ok(units) = i16::try_from(round_to_units(at - clock)) else {
                break;
            };
            let lost = (seq - next) as usize;
            if states.len() + lost >= usize::from(u16::MAX) {
                break;
            }
            // The states of the numbers lost since the last received one, then its own.
            states.resize(states.len() + lost, SymbolTypeTcc::PacketNotReceived);
            let state = if (0..=255).contains(&units) {
                SymbolTypeTcc::PacketReceivedSmallDelta
            } else {
                SymbolTypeTcc::PacketReceivedLargeDelta
            };
            let delta = i64::from(units) * DELTA_UNIT;
            states.push(state);
            deltas.push(RecvDelta {
                type_tcc_packet: state,
                delta,
            });
            clock += delta;
            seq += 1;
            next = seq;
        }
        let feedback = TransportLayerCc {
            sender_ssrc: self.sender_ssrc,
            media_ssrc: self.media_ssrc,
            base_sequence_number: base as u16,
            packet_status_count: states.len() as u16,
            reference_time: (reference & 0xFF_FFFF) as u32,
            fb_pkt_count: self.count,
            packet_chunks: chunks(&states),
            recv_deltas: deltas,
        };
        self.count = self.count.wrapping_add(1);
        (feedback, next)
    }

    /// Drops reported arrivals older than [`KEEP`] behind the newest from the ring's front.
    fn forget_old(&mut self) {
        let limit = self.newest - KEEP;
        let reported = self.report_from.unwrap_or(self.begin);
        while self.begin < reported && self.times.front().is_some_and(|&t| t <= limit) {
            self.times.pop_front();
            self.begin += 1;
        }
    }
}

/// `us` in [`DELTA_UNIT`]s, the nearest one (halves away from zero).
fn round_to_units(us: i64) -> i64 {
    if us >= 0 {
        (us + DELTA_UNIT / 2) / DELTA_UNIT
    } else {
        (us - DELTA_UNIT / 2) / DELTA_UNIT
    }
}

/// The chunks that carry `states` in order: a run-length chunk for a run of [`TWO_BIT`] or
/// more equal states, a one-bit vector where the next [`ONE_BIT`] hold no large delta, else a
/// two-bit vector. A vector at the end may list fewer states than it holds: the feedback's
/// status count tells the client where they stop.
fn chunks(states: &[SymbolTypeTcc]) -> Vec<PacketStatusChunk> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < states.len() {
        let rest = &states[i..];
        let run = rest
            .iter()
            .take(MAX_RUN)
            .take_while(|&&s| s == rest[0])
            .count();
        if run >= TWO_BIT || run == rest.len() {
            out.push(PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: rest[0],
                run_length: run as u16,
            }));
            i += run;
            continue;
        }
        let one_bit = rest.len().min(ONE_BIT);
        let (size, take) = if rest[..one_bit]
            .iter()
            .all(|&s| s != SymbolTypeTcc::PacketReceivedLargeDelta)
        {
            (SymbolSizeTypeTcc::OneBit, one_bit)
        } else {
            (SymbolSizeTypeTcc::TwoBit, rest.len().min(TWO_BIT))
        };
        out.push(PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
            type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
            symbol_size: size,
            symbol_list: rest[..take].to_vec(),
        }));
        i += take;
    }
    out
}

#[cfg(test)]
mod tests;

//! The retransmission buffer of one published source track: the last N packets it received,
//! kept once for all of its subscribers, so that a down-track can answer a subscriber's NACK
//! without asking the publisher.
//!
//! Packets are indexed by the publisher's sequence number. The buffer unwraps the 16-bit
//! sequence into a 64-bit one internally, so a lookup never confuses a packet with the one
//! 65 536 packets earlier, and packets older than the window are never returned.

use crate::media::packet::MediaPacket;

/// The default number of packets kept per source track: about 1.5 s of 2.5 Mbit/s video.
pub const DEFAULT_CAPACITY: usize = 512;

/// How long a packet stays answerable unless configured (`rtc.nack_buffer_ms`, whose default
/// is the same). A retransmission later than this arrives after the subscriber's jitter buffer
/// gave up on it (round trips beyond a few hundred ms are rare on calls), and keeping more only
/// holds memory: the ring is most of a publishing participant's footprint (half a second of
/// 1.5 Mbit/s video is ~95 KiB; a full ring of 1024 packets ~1.3 MiB). A NACK for a packet
/// past the window makes the SFU ask the publisher for a keyframe at once (`DownTrack::on_nack`
/// counts it), so a longer outage, e.g. an ICE restart, costs a keyframe, not a frozen video.
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_millis(500);

/// The smallest and largest capacities accepted: the window must stay well inside half the
/// 16-bit sequence space for "older" and "newer" to be unambiguous.
const MIN_CAPACITY: usize = 16;
/// Slots a ring starts with. It doubles (up to its capacity) when a packet would overwrite one
/// still younger than the max age, so its memory follows the track's packet rate: a slot holds
/// a whole `MediaPacket` inline (~200 bytes, ~600 before its extension slots went from 16 to
/// 4), and a full ring of 1024 was most of a participant's memory even for a low-rate camera.
const INITIAL_SLOTS: usize = 64;
const MAX_CAPACITY: usize = 1 << 15;

/// A capacity that is not a power of two within bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retransmission capacity {0} is not a power of two between 16 and 32768")]
pub struct CapacityError(pub usize);

/// Checks a ring capacity (power of two, `MIN_CAPACITY..=MAX_CAPACITY`).
pub(crate) fn check_capacity(capacity: usize) -> Result<(), CapacityError> {
    if capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(CapacityError(capacity))
    }
}

/// Unwraps a 16-bit sequence number against `reference` (an extended one): the extended value
/// nearest to it.
pub(crate) fn unwrap_seq(reference: u64, seq: u16) -> u64 {
    let diff = seq.wrapping_sub(reference as u16) as i16;
    reference.wrapping_add_signed(i64::from(diff))
}

/// The extended value the first sequence number of a stream is given: far enough from zero
/// that unwrapping never underflows.
pub(crate) const EXTENDED_BASE: u64 = 1 << 32;

/// A ring of the last packets of one source track, indexed by sequence number.
pub struct RetransmitBuffer {
    /// `slots[ext & mask]`: the packet with that extended sequence number, if kept.
    slots: Box<[Option<(u64, MediaPacket)>]>,
    mask: u64,
    /// The most slots the ring may grow to (the configured capacity).
    limit: usize,
    /// The newest extended sequence number inserted, if any.
    highest: Option<u64>,
    /// Every slot before this extended sequence number is empty (aged out or never filled).
    oldest: u64,
    /// Packets older than this (by arrival) are dropped as newer ones come.
    max_age: std::time::Duration,
}

impl RetransmitBuffer {
    /// A buffer that holds nothing and never will (for answering NACKs about a track that is
    /// gone).
    pub fn empty() -> Self {
        Self::new(MIN_CAPACITY).expect("the minimum capacity is valid")
    }

    /// A buffer of `capacity` packets (a power of two, 16 to 32 768; [`DEFAULT_CAPACITY`]).
    pub fn new(capacity: usize) -> Result<Self, CapacityError> {
        check_capacity(capacity)?;
        let initial = capacity.min(INITIAL_SLOTS);
        Ok(Self {
            slots: (0..initial).map(|_| None).collect(),
            mask: initial as u64 - 1,
            limit: capacity,
            highest: None,
            oldest: 0,
            max_age: MAX_AGE,
        })
    }

    /// Keeps packets at most `max_age` (by arrival time) instead of [`MAX_AGE`].
    pub fn with_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How many packets the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.limit
    }

    /// How many slots the ring has now (it grows with the track's packet rate).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Doubles the ring, keeping every packet in it.
    fn grow(&mut self) {
        let len = self.slots.len() * 2;
        let mask = len as u64 - 1;
        let mut slots: Box<[Option<(u64, MediaPacket)>]> = (0..len).map(|_| None).collect();
        for (ext, pkt) in self.slots.iter_mut().filter_map(Option::take) {
            slots[(ext & mask) as usize] = Some((ext, pkt));
        }
        self.slots = slots;
        self.mask = mask;
    }

    /// Keeps `pkt` (moved in: its `Bytes` are shared, not copied). A packet older than the
    /// window is not kept (`false`); a duplicate replaces the copy already kept.
    pub fn insert(&mut self, pkt: MediaPacket) -> bool {
        let ext = match self.highest {
            None => EXTENDED_BASE + u64::from(pkt.sequence),
            Some(h) => unwrap_seq(h, pkt.sequence),
        };
        let highest = match self.highest {
            Some(h) if ext <= h => {
                if h - ext > self.mask {
                    return false;
                }
                h
            }
            _ => ext,
        };
        self.highest = Some(highest);
        let arrival = pkt.arrival;
        // The slot still holds a packet younger than the max age: the ring is too small for
        // this track's rate. Grow while the capacity allows (rare: a doubling each time).
        while self.slots.len() < self.limit
            && matches!(
                &self.slots[(ext & self.mask) as usize],
                Some((e, p)) if *e != ext && arrival.saturating_duration_since(p.arrival) < self.max_age
            )
        {
            self.grow();
        }
        self.slots[(ext & self.mask) as usize] = Some((ext, pkt));
        self.age_out(highest, arrival);
        true
    }

    /// Empties the slots of packets that arrived more than `max_age` before `now`, oldest
    /// first, stopping at the first one still young: each slot is visited once per lap of the
    /// ring, so this costs O(1) per insert on average.
    fn age_out(&mut self, highest: u64, now: std::time::Instant) {
        let Some(cutoff) = now.checked_sub(self.max_age) else {
            return;
        };
        self.oldest = self.oldest.max(highest.saturating_sub(self.mask));
        while self.oldest < highest {
            let slot = &mut self.slots[(self.oldest & self.mask) as usize];
            match slot {
                Some((e, p)) if *e == self.oldest => {
                    if p.arrival >= cutoff {
                        return;
                    }
                    *slot = None;
                }
                // Never received, or already overwritten by a newer lap.
                _ => {}
            }
            self.oldest += 1;
        }
    }

    /// The packet with sequence number `seq`, if it is still in the window and was received.
    pub fn get(&self, seq: u16) -> Option<&MediaPacket> {
        let h = self.highest?;
        let ext = unwrap_seq(h, seq);
        if ext > h || h - ext > self.mask {
            return None;
        }
        match &self.slots[(ext & self.mask) as usize] {
            Some((e, pkt)) if *e == ext => Some(pkt),
            _ => None,
        }
    }

    /// The newest sequence number inserted.
    pub fn highest_sequence(&self) -> Option<u16> {
        self.highest.map(|h| h as u16)
    }
}

impl std::fmt::Debug for RetransmitBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetransmitBuffer")
            .field("capacity", &self.capacity())
            .field("highest", &self.highest_sequence())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;

    fn pkt(seq: u16) -> MediaPacket {
        MediaPacket::new(
            7,
            seq,
            u32::from(seq) * 10,
            96,
            Bytes::from(seq.to_be_bytes().to_vec()),
            Instant::now(),
        )
    }

    fn seq_of(buf: &RetransmitBuffer, seq: u16) -> Option<u16> {
        buf.get(seq).map(|p| p.sequence)
    }

    #[test]
    fn packets_older_than_the_max_age_are_dropped_as_new_ones_come() {
        let start = Instant::now();
        let mut buf = RetransmitBuffer::new(1024)
            .unwrap()
            .with_max_age(std::time::Duration::from_millis(500));
        // 100 packets per second for 2 s: only the last half second stays answerable.
        for i in 0..200u16 {
            let mut p = pkt(1000 + i);
            p.arrival = start + std::time::Duration::from_millis(u64::from(i) * 10);
            assert!(buf.insert(p));
        }
        let kept: Vec<u16> = (1000..1200)
            .filter(|&s| seq_of(&buf, s).is_some())
            .collect();
        assert_eq!(kept.first(), Some(&1149), "{kept:?}");
        assert_eq!(kept.len(), 51);
        // A late packet (reordered) is kept while it is inside the window of sequence numbers.
        let mut late = pkt(1195);
        late.arrival = start + std::time::Duration::from_millis(2_000);
        assert!(buf.insert(late));
        assert_eq!(seq_of(&buf, 1195), Some(1195));
        // The default keeps half a second.
        assert_eq!(RetransmitBuffer::new(16).unwrap().max_age, MAX_AGE);
    }

    #[test]
    fn the_ring_grows_with_the_packet_rate_up_to_its_capacity_and_keeps_every_packet() {
        let start = Instant::now();
        let feed = |buf: &mut RetransmitBuffer, per_second: u64, count: u16| {
            for i in 0..count {
                let mut p = pkt(i);
                p.arrival =
                    start + std::time::Duration::from_micros(u64::from(i) * 1_000_000 / per_second);
                assert!(buf.insert(p));
            }
        };
        // 50 packets a second (a still camera): the first 64 slots suffice.
        let mut slow = RetransmitBuffer::new(1024).unwrap();
        feed(&mut slow, 50, 500);
        assert_eq!((slow.slots(), slow.capacity()), (64, 1024));
        assert!((475..500).all(|s| seq_of(&slow, s).is_some()));
        // 300 a second: the default half second of it needs 256 slots, and nothing of that
        // half second was lost while the ring grew; a configured second needs 512.
        let mut fast = RetransmitBuffer::new(1024).unwrap();
        feed(&mut fast, 300, 1500);
        assert_eq!(fast.slots(), 256);
        assert!((1350..1500).all(|s| seq_of(&fast, s).is_some()));
        let mut longer = RetransmitBuffer::new(1024)
            .unwrap()
            .with_max_age(std::time::Duration::from_secs(1));
        feed(&mut longer, 300, 1500);
        assert_eq!(longer.slots(), 512);
        assert!((1200..1500).all(|s| seq_of(&longer, s).is_some()));
        // Faster than the capacity can hold for the max age: it stops at the capacity.
        let mut capped = RetransmitBuffer::new(128).unwrap();
        feed(&mut capped, 1000, 1000);
        assert_eq!(capped.slots(), 128);
        assert!((872..1000).all(|s| seq_of(&capped, s).is_some()));
        assert_eq!(seq_of(&capped, 871), None);
    }

    #[test]
    fn capacity_must_be_a_bounded_power_of_two() {
        assert_eq!(RetransmitBuffer::new(0).unwrap_err(), CapacityError(0));
        assert!(RetransmitBuffer::new(100).is_err());
        assert!(RetransmitBuffer::new(8).is_err());
        assert!(RetransmitBuffer::new(1 << 16).is_err());
        assert_eq!(
            RetransmitBuffer::new(DEFAULT_CAPACITY).unwrap().capacity(),
            512
        );
    }

    #[test]
    fn lookup_hits_and_misses() {
        let mut b = RetransmitBuffer::new(16).unwrap();
        assert_eq!(seq_of(&b, 0), None);
        for s in 100..110 {
            assert!(b.insert(pkt(s)));
        }
        assert_eq!(seq_of(&b, 100), Some(100));
        assert_eq!(seq_of(&b, 109), Some(109));
        // Never received, newer than the newest, older than anything kept.
        assert_eq!(seq_of(&b, 110), None);
        assert_eq!(seq_of(&b, 99), None);
        assert_eq!(seq_of(&b, 50_000), None);
        // The payload is the one inserted (shared, not copied).
        assert_eq!(&b.get(105).unwrap().payload[..], &105u16.to_be_bytes());
    }

    #[test]
    fn wraps_around_the_sequence_space() {
        let mut b = RetransmitBuffer::new(16).unwrap();
        for s in 65_530..=65_535 {
            b.insert(pkt(s));
        }
        for s in 0..5 {
            b.insert(pkt(s));
        }
        assert_eq!(b.highest_sequence(), Some(4));
        for s in (65_530..=65_535).chain(0..5) {
            assert_eq!(seq_of(&b, s), Some(s), "seq {s}");
        }
        assert_eq!(seq_of(&b, 5), None);
        assert_eq!(seq_of(&b, 65_529), None);
    }

    #[test]
    fn old_packets_are_overwritten_and_never_returned() {
        let mut b = RetransmitBuffer::new(16).unwrap();
        for s in 0..40 {
            b.insert(pkt(s));
        }
        for s in 0..24 {
            assert_eq!(seq_of(&b, s), None, "seq {s} was evicted");
        }
        for s in 24..40 {
            assert_eq!(seq_of(&b, s), Some(s));
        }
        // A jump forward leaves older slots stale: they are not returned.
        b.insert(pkt(45));
        assert_eq!(seq_of(&b, 29), None);
        assert_eq!(seq_of(&b, 30), Some(30));
        assert_eq!(seq_of(&b, 44), None);
        // A slot left over from a full cycle earlier (same 16-bit number) is not returned.
        let mut b = RetransmitBuffer::new(16).unwrap();
        b.insert(pkt(5));
        for s in (8..=65_536u32).step_by(8) {
            b.insert(pkt(s as u16));
        }
        b.insert(pkt(6));
        assert_eq!(b.highest_sequence(), Some(6));
        assert_eq!(seq_of(&b, 6), Some(6));
        assert_eq!(seq_of(&b, 5), None);
        assert_eq!(seq_of(&b, 0), Some(0));
    }

    #[test]
    fn out_of_order_inserts_fill_their_slots() {
        let mut b = RetransmitBuffer::new(16).unwrap();
        b.insert(pkt(10));
        b.insert(pkt(13));
        assert_eq!(seq_of(&b, 11), None);
        assert!(b.insert(pkt(12)));
        assert!(b.insert(pkt(11)));
        assert_eq!(b.highest_sequence(), Some(13));
        for s in 10..=13 {
            assert_eq!(seq_of(&b, s), Some(s));
        }
        // Too late: older than the window.
        for s in 14..40 {
            b.insert(pkt(s));
        }
        assert!(!b.insert(pkt(20)));
        assert_eq!(seq_of(&b, 20), None);
        assert_eq!(seq_of(&b, 39), Some(39));
        // A late one inside the window, across the wrap.
        let mut b = RetransmitBuffer::new(16).unwrap();
        b.insert(pkt(65_534));
        b.insert(pkt(1));
        assert!(b.insert(pkt(65_535)));
        assert!(b.insert(pkt(0)));
        assert_eq!(b.highest_sequence(), Some(1));
        assert_eq!(seq_of(&b, 65_535), Some(65_535));
        assert_eq!(seq_of(&b, 0), Some(0));
    }
}

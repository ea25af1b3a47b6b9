//! What the load tool counts while it runs: cheap shared counters that the progress line and
//! the time series sample every second, a lock-free latency histogram, per-stream loss from
//! RTP sequence numbers, and CPU / memory of the target processes read from `/proc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters shared by every simulated participant (relaxed atomics: they are statistics).
#[derive(Default)]
pub struct Counters {
    /// WebSocket (or API) joins accepted.
    pub joined: AtomicU64,
    /// Peers whose ICE reached "connected".
    pub connected: AtomicU64,
    /// Joins that failed (signaling error, timeout, ICE failure).
    pub failed: AtomicU64,
    /// RTP packets the publishers handed to their stack.
    pub sent_packets: AtomicU64,
    /// RTP packets (carrying a load-tool stamp) the subscribers received.
    pub received_packets: AtomicU64,
    /// Payload bytes of those packets.
    pub received_bytes: AtomicU64,
    /// Of those, the packets of each simulcast layer (by the stamp's tag; index as
    /// [`super::peer::CAMERA_LAYERS`]).
    pub received_by_layer: [AtomicU64; 3],
    /// One-way latency of received packets (send stamp to receive), in microseconds.
    pub latency: Histogram,
    /// Packets the receivers' sequence numbers say should have arrived so far (the running
    /// sum of [`StreamLoss::packet`]'s results): with `received_packets`, loss over any window
    /// (the capacity mode's per-step loss) without waiting for the peers to stop.
    pub expected_packets: AtomicU64,
    /// Packets per second the publishers whose media is flowing are scheduled to send: what
    /// `sent_packets` should grow by when the load tool keeps up (the capacity mode compares
    /// the two to tell a saturated client from a saturated target).
    pub scheduled_pps: AtomicU64,
    /// How late each frame went out against its schedule ([`super::peer::FrameClock`]), in
    /// microseconds: a single-threaded client that falls behind shows it here first.
    pub send_lag: Histogram,
}

/// A log-linear histogram of microsecond values with atomic buckets: recording is one
/// `fetch_add`, so the hot receive path takes no lock. 8 sub-buckets per power of two
/// (≤ 12.5 % error), values up to ~1 hour.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

const SUB: u32 = 8;
const BUCKETS: usize = (40 * SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < SUB as u64 {
            return value as usize;
        }
        let power = 63 - value.leading_zeros(); // >= 3
        let sub = (value >> (power - 3)) & (SUB as u64 - 1);
        (((power - 2) * SUB) as usize + sub as usize).min(BUCKETS - 1)
    }

    /// The lower bound of bucket `i` (the value reported for it).
    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB as u64 {
            return i;
        }
        let power = i / SUB as u64 + 2;
        let sub = i % SUB as u64;
        (1u64 << power) + (sub << (power - 3))
    }

    /// Records one value (microseconds).
    pub fn record(&self, micros: u64) {
        self.buckets[Self::index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the bucket counts, to diff against a later one.
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile (0..=1) of the values counted between two snapshots (`None` if empty).
    pub fn quantile_between(before: &[u64], after: &[u64], q: f64) -> Option<u64> {
        let counts: Vec<u64> = after
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        quantile(&counts, q)
    }
}

/// The `q` quantile of histogram bucket counts.
fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(Histogram::lower(i));
        }
    }
    None
}

/// Sorted-sample percentiles for small sets (join times).
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Loss accounting for the streams one subscriber receives: expected packets are the span of
/// (extended) sequence numbers seen, received the count.
///
/// A stream is an (SSRC, publisher) pair, the publisher read from the payload stamp, so the
/// SDP never has to say who sends what. That matters because rtcd reuses a receiving section
/// (and the SSRC of its sender) for another publisher's track once a track ends: keyed by SSRC
/// alone, the new publisher's sequence numbers would extend the old span and count the gap as
/// loss.
#[derive(Default)]
pub struct StreamLoss {
    /// (ssrc, publisher) -> (first seq, highest seq, received).
    streams: HashMap<(u32, u32), (u64, u64, u64)>,
}

/// Loss totals over many streams.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct LossTotals {
    /// Streams seen.
    pub streams: u64,
    /// Packets the sequence numbers say should have arrived.
    pub expected: u64,
    /// Packets that arrived (duplicates included, capped at expected per stream).
    pub received: u64,
    /// The worst single stream's loss, in percent.
    pub worst_stream_percent: f64,
}

impl StreamLoss {
    /// Counts one packet with extended sequence number `seq` that `publisher` sent on `ssrc`,
    /// and returns by how much the stream's expected count grew (its first packet: 1; a packet
    /// beyond the highest so far: the distance; a late or repeated one: 0), for
    /// [`Counters::expected_packets`].
    pub fn packet(&mut self, ssrc: u32, publisher: u32, seq: u64) -> u64 {
        let mut grew = 0;
        let entry = self.streams.entry((ssrc, publisher)).or_insert_with(|| {
            grew = 1;
            (seq, seq, 0)
        });
        if seq > entry.1 {
            grew = seq - entry.1;
        } else if seq < entry.0 {
            grew = entry.0 - seq;
        }
        entry.0 = entry.0.min(seq);
        entry.1 = entry.1.max(seq);
        entry.2 += 1;
        grew
    }

    /// Adds this subscriber's streams to `totals`.
    pub fn add_to(&self, totals: &mut LossTotals) {
        for &(first, last, received) in self.streams.values() {
            let expected = last - first + 1;
            let received = received.min(expected);
            totals.streams += 1;
            totals.expected += expected;
            totals.received += received;
            let loss = 100.0 * (expected - received) as f64 / expected as f64;
            totals.worst_stream_percent = totals.worst_stream_percent.max(loss);
        }
    }
}

/// Loss in percent over a window from the growth of the expected and received counters
/// ([`Counters::expected_packets`], [`Counters::received_packets`]); 0 when nothing was
/// expected, and never negative (duplicates and retransmissions can outnumber gaps).
pub fn window_loss_percent(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        100.0 * expected.saturating_sub(received) as f64 / expected as f64
    }
}

impl LossTotals {
    /// Lost packets in percent of expected.
    pub fn percent(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            100.0 * (self.expected - self.received) as f64 / self.expected as f64
        }
    }
}

/// A process whose CPU time and memory the run reports (rtcd, the proxy, Janus, the relay, the
/// load tool itself).
#[derive(Debug, Clone)]
pub struct Watched {
    /// A label for the report ("rtcd", "proxy", ...).
    pub name: String,
    /// Its process ID.
    pub pid: u32,
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux ABI we run on; `getconf CLK_TCK` confirms it.
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// (current RSS, peak RSS) in KiB, from `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Microseconds since a process-wide epoch: the clock the payload stamps use, shared by sender
/// and receiver because both live in this process (CLOCK_MONOTONIC underneath).
pub fn now_micros() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1_000,
            12_345,
            1_000_000,
            3_600_000_000,
        ] {
            let i = Histogram::index(v);
            assert!(i >= last, "{v}");
            last = i;
            let low = Histogram::lower(i);
            assert!(low <= v, "{v} -> {low}");
            assert!(v - low <= v / 8 + 1, "{v} -> {low}");
        }
    }

    #[test]
    fn quantiles_between_snapshots() {
        let h = Histogram::default();
        for v in 1..=100 {
            h.record(v * 10);
        }
        let before = h.snapshot();
        for _ in 0..10 {
            h.record(5_000);
        }
        let after = h.snapshot();
        let p50 = Histogram::quantile_between(&before, &after, 0.5).unwrap();
        assert!((4_096..=5_000).contains(&p50), "{p50}");
        let all = Histogram::quantile_between(&[], &after, 0.5).unwrap();
        assert!((448..=560).contains(&all), "{all}");
        assert_eq!(Histogram::quantile_between(&after, &after, 0.5), None);
    }

    #[test]
    fn loss_from_sequence_numbers() {
        let mut s = StreamLoss::default();
        for seq in (100..200).filter(|q| q % 10 != 0) {
            s.packet(7, 1, seq);
        }
        s.packet(8, 1, 5);
        let mut t = LossTotals::default();
        s.add_to(&mut t);
        // Stream 7 spans 101..=199 (99 expected) and misses 110, 120, ..., 190 (9).
        assert_eq!(t.streams, 2);
        assert_eq!(t.expected, 99 + 1);
        assert_eq!(t.received, 90 + 1);
        assert!((t.worst_stream_percent - 900.0 / 99.0).abs() < 1e-9);
        assert!((t.percent() - 9.0).abs() < 1e-9);
    }

    #[test]
    fn expected_growth_adds_up_to_the_span() {
        let mut s = StreamLoss::default();
        let mut expected = 0;
        // 10, 11, 14 (12 and 13 missing), 13 late, 9 before the first, 14 again.
        for seq in [10, 11, 14, 13, 9, 14] {
            expected += s.packet(7, 1, seq);
        }
        expected += s.packet(8, 1, 100);
        let mut t = LossTotals::default();
        s.add_to(&mut t);
        assert_eq!(expected, t.expected);
        assert_eq!(expected, 6 + 1);
        // Six distinct packets arrived of seven expected (12 never came).
        assert!((window_loss_percent(expected, 6) - 100.0 / 7.0).abs() < 1e-9);
        assert_eq!(window_loss_percent(0, 0), 0.0);
        assert_eq!(
            window_loss_percent(5, 9),
            0.0,
            "duplicates never make loss negative"
        );
    }

    #[test]
    fn a_reused_ssrc_with_another_publisher_is_another_stream() {
        // rtcd's slot keeps its SSRC when it carries the next track: publisher 1 sent 0..100,
        // then publisher 2 starts at 40_000 on the same SSRC. Nothing was lost.
        let mut s = StreamLoss::default();
        for seq in 0..100 {
            s.packet(7, 1, seq);
        }
        for seq in 40_000..40_050 {
            s.packet(7, 2, seq);
        }
        let mut t = LossTotals::default();
        s.add_to(&mut t);
        assert_eq!(t.streams, 2);
        assert_eq!((t.expected, t.received), (150, 150));
        assert_eq!(t.percent(), 0.0);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        let (rss, peak) = memory_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}

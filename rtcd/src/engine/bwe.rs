//! Send-side bandwidth estimation towards a subscriber: rtcd's own estimator, no pacer.
//!
//! Every RTP packet rtcd sends a peer (media, RTX, padding; audio only while the peer also gets
//! video: see [`TransportCc::number`]) gets a transport-wide sequence number and a record of
//! when it left ([`TransportCc`], `transport_cc.rs`, which replaced rtc's
//! `TwccSenderInterceptor` and `CongestionControlInterceptor`, and is driven by the peer on its
//! media path, no interceptor: see there why);
//! the client's transport-cc feedback, joined to those records, drives our [`Estimator`]
//! (`estimator.rs`, after draft-ietf-rmcat-gcc-02; it replaced rtc 0.21.1's `Gcc`, whose delay
//! half never detected overuse, whose loss half collapsed to its floor under persistent loss
//! and which grew without bound on a quiet path: see `docs/engine-v2.md`). The pacer
//! that rtc's `configure_congestion_control` would add is left out: pacing adds queueing delay in
//! rtcd, and the SFU decides what to send from the estimate instead (LiveKit turned pacing off
//! for the same reason).
//!
//! Besides the estimator and [`TransportCc`], two things are ours:
//! * [`SharedEstimator`] wraps it and publishes each estimate into an [`EstimateCell`] the
//!   [`Peer`] reads in `pump`, with the delay / loss halves (the peer reads the cell, not the
//!   estimator: the estimate is also what the tests and the metrics read, from one place).
//! * [`Departures`] says when a packet really left. rtc records a packet as sent at the `now` it
//!   was written with, but a media worker writes a whole round of packets (every session it
//!   touched) and sends them in one flush at the round's end: on a busy host that came 13 ms
//!   later at the median and 200 ms at the 99th percentile (`rtcd_media_send_lag_seconds`, a
//!   weak-link call on two cores). A lag that grows through a busy second reads to the delay
//!   half exactly like a queue growing on the path, and it backed off towards subscribers whose
//!   links were idle. So every recorded packet carries its round's stamp, the worker tells the
//!   clock when each round left, and the estimator reads that instant instead.
//!
//! [`Peer`]: super::Peer

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, PacketReport};

mod estimator;
mod transport_cc;

use estimator::Estimator;
pub(super) use transport_cc::{TRANSPORT_CC_URI, TransportCc, transport_cc_id};

/// Where a subscriber's estimate starts: about what one mid simulcast layer and audio need, so a
/// new subscriber is neither starved while the estimate climbs (8 %/s at most far from
/// congestion: from GCC's customary 300 kbit/s to 1.5 Mbit/s would take 20 s) nor handed a full
/// layer on a path that cannot carry it (an overshoot is corrected within a round trip or two of
/// feedback, from what was received).
pub const INITIAL_BITRATE: f64 = 1_000_000.0;

/// The floor: audio and the lowest simulcast layer (about 150 kbit/s with overhead) still fit
/// above it; below it a video call is not worth having, and a floor is what lets the estimate
/// recover from a loss burst without starting from nothing (GCC's own default).
pub const MIN_BITRATE: f64 = 100_000.0;

/// The ceiling: above what any subscriber of a call receives (several high layers and a screen
/// share). The estimator also caps itself at 1.5 times what is acknowledged, so this only bounds
/// a path that really carries that much. (rtc's GCC, which had no such cap, drifted up to here on
/// a quiet path; its default is 100 Mbit/s.)
pub const MAX_BITRATE: f64 = 25_000_000.0;

/// The latest estimate towards one peer, written by the estimator inside rtc's interceptor
/// chain and read by the peer (both on the peer's thread; atomics because the chain must be
/// `Send + Sync`).
#[derive(Debug, Default)]
pub(super) struct EstimateCell {
    /// How many feedback batches the estimator has folded in (0: nothing measured yet).
    updates: AtomicU64,
    target: AtomicU64,
    delay_based: AtomicU64,
    loss_based: AtomicU64,
    /// Loss fraction of the last loss interval, in parts per million (`u64::MAX`: not known).
    loss_ppm: AtomicU64,
}

/// A snapshot of a peer's estimate, with its two halves (see [`super::Peer::estimate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// What rtcd may send the peer, in bits per second: the lower of the two halves.
    pub bits_per_second: u64,
    /// The delay-based half (queueing delay growing: the path is full), bits per second.
    pub delay_based: u64,
    /// The loss-based half (more than 10 % lost: backs off; under 2 %: climbs), bits per second.
    pub loss_based: u64,
    /// The fraction of packets the peer reported lost over the estimator's last loss interval
    /// (at least 200 ms and 10 packets), once one was evaluated.
    pub loss: Option<f64>,
}

impl EstimateCell {
    fn publish(&self, target: f64, stats: EstimatorStats) {
        let bps = |v: f64| v.max(0.0) as u64;
        self.target.store(bps(target), Ordering::Relaxed);
        self.delay_based.store(
            bps(stats.delay_based_bitrate.unwrap_or(target)),
            Ordering::Relaxed,
        );
        self.loss_based.store(
            bps(stats.loss_based_bitrate.unwrap_or(target)),
            Ordering::Relaxed,
        );
        let loss = stats
            .packet_loss
            .map_or(u64::MAX, |l| (l.clamp(0.0, 1.0) * 1e6) as u64);
        self.loss_ppm.store(loss, Ordering::Relaxed);
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// The estimate, once at least one feedback batch was folded in.
    pub(super) fn get(&self) -> Option<Estimate> {
        if self.updates.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let loss = self.loss_ppm.load(Ordering::Relaxed);
        Some(Estimate {
            bits_per_second: self.target.load(Ordering::Relaxed),
            delay_based: self.delay_based.load(Ordering::Relaxed),
            loss_based: self.loss_based.load(Ordering::Relaxed),
            loss: (loss != u64::MAX).then(|| loss as f64 / 1e6),
        })
    }
}

/// Rounds remembered: feedback reports a packet within a few hundred milliseconds of its flush
/// (the client's feedback interval plus a round trip), and a busy worker closes at most a few
/// thousand rounds a second. A packet reported later than that keeps its stamp, which is at most
/// one round early.
const ROUNDS_KEPT: usize = 8_192;

/// When the packets of one media worker's rounds left (see the module docs). Shared by the
/// worker, which closes each round when its flush is done ([`Departures::flushed`]), and by the
/// send history and estimator of every peer on that worker (the same thread: the lock is never
/// contended, and it is taken once per round and once per feedback batch, not per packet).
#[derive(Clone)]
pub struct Departures(Arc<DepartureLog>);

struct DepartureLog {
    /// What stamps are counted from.
    epoch: Instant,
    /// The open round's stamp, in nanoseconds since `epoch`: the instant the last round left,
    /// so stamps rise with the rounds and are never later than the packets' real departure.
    open: AtomicU64,
    /// Closed rounds, oldest first: (stamp, left), both in nanoseconds since `epoch`.
    closed: Mutex<VecDeque<(u64, u64)>>,
}

impl std::fmt::Debug for Departures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Departures(..)")
    }
}

impl Departures {
    /// A worker's clock, its first round open from `now`.
    pub fn new(now: Instant) -> Self {
        Self(Arc::new(DepartureLog {
            epoch: now,
            open: AtomicU64::new(0),
            closed: Mutex::new(VecDeque::with_capacity(ROUNDS_KEPT)),
        }))
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0.epoch).as_nanos() as u64
    }

    /// The open round's packets left at `at` (the worker's flush is done): its stamp now reads
    /// as `at`, and a new round opens.
    pub fn flushed(&self, at: Instant) {
        let open = self.0.open.load(Ordering::Relaxed);
        // A stamp is unique to its round, so a later round never reads as an earlier one.
        let left = self.nanos(at).max(open + 1);
        let mut closed = self.0.closed.lock().unwrap_or_else(|p| p.into_inner());
        if closed.len() == ROUNDS_KEPT {
            closed.pop_front();
        }
        closed.push_back((open, left));
        drop(closed);
        self.0.open.store(left, Ordering::Relaxed);
    }

    /// What a packet written now is recorded with.
    fn stamp(&self) -> Instant {
        self.0.epoch + Duration::from_nanos(self.0.open.load(Ordering::Relaxed))
    }

    /// When the round stamped `stamp` left, if it is closed and still remembered, in `closed`.
    fn left_in(&self, closed: &VecDeque<(u64, u64)>, stamp: Instant) -> Option<Instant> {
        let stamp = self.nanos(stamp);
        let i = closed.binary_search_by_key(&stamp, |(s, _)| *s).ok()?;
        Some(self.0.epoch + Duration::from_nanos(closed[i].1))
    }

    /// When the round stamped `stamp` left, if it is closed and still remembered.
    #[cfg(test)]
    fn left(&self, stamp: Instant) -> Option<Instant> {
        let closed = self.0.closed.lock().unwrap_or_else(|p| p.into_inner());
        self.left_in(&closed, stamp)
    }

    /// `reports` with each departure moved to when its round left, into `out` (the rounds
    /// locked once for the batch).
    fn resolve(&self, reports: &[PacketReport], out: &mut Vec<PacketReport>) {
        let closed = self.0.closed.lock().unwrap_or_else(|p| p.into_inner());
        out.clear();
        out.extend(reports.iter().cloned().map(|mut r| {
            if let Some(left) = self.left_in(&closed, r.departure) {
                r.departure = left;
            }
            r
        }));
    }
}

/// rtcd's [`Estimator`], publishing every estimate it makes into an [`EstimateCell`].
pub(super) struct SharedEstimator {
    estimator: Estimator,
    cell: Arc<EstimateCell>,
    /// When packets really left; `None`: at the `now` they were written with.
    departures: Option<Departures>,
    /// Reports with their real departures (reused between feedback batches).
    resolved: Vec<PacketReport>,
}

impl SharedEstimator {
    pub(super) fn new(cell: Arc<EstimateCell>, departures: Option<Departures>) -> Self {
        Self {
            estimator: Estimator::new(),
            cell,
            departures,
            resolved: Vec::new(),
        }
    }
}

impl BandwidthEstimator for SharedEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        match &self.departures {
            Some(departures) => {
                departures.resolve(reports, &mut self.resolved);
                self.estimator.on_reports(now, &self.resolved);
            }
            None => self.estimator.on_reports(now, reports),
        }
        self.cell
            .publish(self.estimator.target_bitrate(), self.estimator.stats());
    }

    fn target_bitrate(&self) -> f64 {
        self.estimator.target_bitrate()
    }

    fn stats(&self) -> EstimatorStats {
        self.estimator.stats()
    }
}

/// The [`TransportCc`] driving the [`Estimator`] of a peer, the estimate going to `cell`. The
/// peer numbers and records every packet it protects with it (retransmissions included) and
/// hands it the RTCP it reads. `departures`: the worker's clock, if packets leave later than
/// they are written.
pub(super) fn transport_cc(
    cell: Arc<EstimateCell>,
    departures: Option<Departures>,
) -> TransportCc<SharedEstimator> {
    let estimator = SharedEstimator::new(cell, departures.clone());
    TransportCc::new(estimator, departures)
}

/// Emitted estimates differ from the last one emitted by at least this fraction. The estimator
/// moves its target with every feedback batch while climbing (8 %/s far from congestion, about
/// 64 kbit/s per second near it at a 50 ms RTT, the loss half 5 % per 200 ms) and at once on
/// congestion (by 15 % or more): this passes every back-off and a climb about every half
/// second to second. Measured (`explore_trajectories`): 1.4-1.5 events a second on a 600
/// kbit/s bottleneck, under one on a clean path.
const EMIT_CHANGE: f64 = 0.05;

/// An unchanged estimate is announced again this often: what the SFU decides from it also
/// depends on what changed meanwhile (the rates of the layers it forwards, the end of a hold,
/// a probe to start or to judge), so it needs the estimate now and then even when it holds
/// still. A quarter of a second: the SFU starts and judges its probes at these events, and
/// with 1 s each probe on a weak link started and ended up to a second late (issue 28). The
/// SFU decides at most every 500 ms unless the estimate fell or a probe is due, so this costs
/// events, not decisions.
pub(super) const EMIT_REPEAT: std::time::Duration = std::time::Duration::from_millis(250);

/// Decides when a peer's estimate is worth an event (see [`EMIT_CHANGE`], [`EMIT_REPEAT`]).
#[derive(Debug, Default)]
pub(super) struct Emitter {
    last: Option<(u64, Instant)>,
}

impl Emitter {
    /// The estimate to announce at `at`, if `current` moved far enough from the last announced
    /// one or that was [`EMIT_REPEAT`] ago (the first measured estimate is always announced).
    pub(super) fn next(&mut self, current: Option<Estimate>, at: Instant) -> Option<u64> {
        let now = current?.bits_per_second;
        if let Some((last, when)) = self.last {
            let moved = (now as f64 - last as f64).abs();
            if moved < last as f64 * EMIT_CHANGE && at.saturating_duration_since(when) < EMIT_REPEAT
            {
                return None;
            }
        }
        self.last = Some((now, at));
        Some(now)
    }
}

#[cfg(test)]
mod tests;

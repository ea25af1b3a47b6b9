//! rtcd's own send-side bandwidth estimator, after draft-ietf-rmcat-gcc-02 ("A Google
//! Congestion Control Algorithm for Real-Time Communication") with libwebrtc's send-side
//! refinements (a trendline instead of the draft's receive-side Kalman filter, a cap at a
//! multiple of the acknowledged rate).
//!
//! It replaces rtc 0.21.1's `Gcc`, which is broken in four ways (see `docs/engine-v2.md`): its
//! delay half never detected overuse, its loss half collapsed to the floor under persistent
//! loss whatever arrived, it grew without bound on a quiet path and it had nothing to say about
//! what was actually received.
//!
//! Three parts, all fed from one feedback batch at a time (~20 a second, never per packet):
//! * [`AckedRate`]: the bits per second the peer reported received over the last
//!   [`ACKED_WINDOW`], on the peer's own arrival clock. Every decision is anchored to it.
//! * [`Trendline`]: the delay-based detector (draft §5 "Delay-based control": pre-filtering,
//!   arrival-time filter, over-use detector): packets grouped by departure burst, the
//!   inter-group delay variation accumulated and smoothed, its least-squares slope over the
//!   last [`TREND_WINDOW`] groups compared with the draft's adaptive threshold.
//! * [`Estimator`]: the rate controllers (draft §5.5 "Rate control" and §6 "Loss-based
//!   control"), the target being the lower of the two halves, neither growing above 1.5 times
//!   the acknowledged rate (and decaying towards that when the sender sends less).
//!
//! rtcd does not probe: an estimate rises only with what is actually sent (8 %/s far from the
//! last congestion at most, and never past 1.5 x what is acknowledged). An allocator must
//! therefore not wait for a higher layer to fit before sending more than it does; see
//! `docs/engine-v2.md`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, PacketReport};

use super::{INITIAL_BITRATE, MAX_BITRATE, MIN_BITRATE};

/// The acknowledged rate is measured over this much of the peer's arrival clock: long enough
/// to hold ~15 frames (one frame more or less is a 7 % error), short enough that a back-off
/// computed from it reflects the path as it is now (libwebrtc's acknowledged-bitrate
/// estimator averages over a similar span).
const ACKED_WINDOW: Duration = Duration::from_millis(500);

/// The acknowledged rate is not known before arrivals span this much: a few frames say
/// nothing about a rate.
const ACKED_MIN_SPAN: Duration = Duration::from_millis(250);

/// A jump of the peer's arrival clock backwards by more than this is a reset (a new feedback
/// epoch), not reordering: the measurements start over.
const CLOCK_RESET: Duration = Duration::from_secs(1);

/// Packets that left within this of a group's first one form one group (draft §5.2
/// "Pre-filtering": a burst is sent within `burst_time`, 5 ms).
const BURST: Duration = Duration::from_millis(5);

/// A packet that arrives within this of its group's last one, and sooner after it than it was
/// sent, belongs to that group whatever its departure (libwebrtc's burst rule): the receiver
/// handled a backlog at once. Seen in Firefox's feedback in the three-party browser calls on
/// a loaded 2-core host (issue 28): its packet handling now and then stalls for 20-65 ms and
/// stamps what arrived meanwhile with one instant, so a group 20-65 ms late is followed by
/// groups with an arrival delta of 0 and the delay is back where it was; measured as separate
/// groups, that reads as a queue that grew by the stall and drained.
const BURST_ARRIVAL: Duration = Duration::from_millis(5);

/// A burst group spans at most this much of arrival time (libwebrtc's bound): a receiver that
/// keeps handling packets late is delay, not one backlog.
const BURST_MAX: Duration = Duration::from_millis(100);

/// Groups arriving before the group sent before them (reordered in the peer's report, or a
/// receiver clock step) carry no delay variation: skipped, and this many in a row start the
/// history over (libwebrtc's inter-arrival rule).
const REORDERED_RESET: u32 = 3;

/// A gap between two groups' arrival or departure larger than this breaks the delay history
/// (a path change or a pause): the trend starts over (libwebrtc resets its inter-arrival state
/// after 3 s).
const GROUP_GAP_MS: f64 = 3_000.0;

/// Groups the trend's least-squares slope is fitted over (libwebrtc's trendline window).
const TREND_WINDOW: usize = 20;

/// ... and over at least this much arrival time (ms) when more groups than that arrive in it.
/// A subscriber of several streams forwarded as they come (no pacer) makes 60-70 groups a
/// second, where 20 groups span 300 ms; a receiver whose arrival times jitter by several ms
/// per group (Firefox on a loaded 2-core host, issue 28: delay variation per group 1.2-1.6 ms
/// median, 7 ms 90th percentile, 17-19 ms 99th, against 0.3, 3.6 and 13 ms for the Chromium
/// subscriber of the same call) then shows slopes that cross the 6 ms threshold floor on a
/// clean path (the scaled trend peaked at 8-10.5 ms for Firefox, 4.4-5.9 ms for Chromium;
/// 4-12 false over-uses a minute per Firefox subscriber). A growing queue's slope is the same
/// over any span, while jitter averages out over a longer one. At one group a frame (30 a
/// second) 20 groups already span 660 ms, so this changes nothing there.
const TREND_SPAN_MS: f64 = 700.0;

/// The most points the trend keeps (its cost per group is linear in them).
const TREND_WINDOW_MAX: usize = 150;

/// The trend needs this many points before it has a slope.
const TREND_MIN_POINTS: usize = 3;

/// Exponential smoothing of the accumulated delay variation before the slope is fitted
/// (libwebrtc's trendline smoothing coefficient): damps the jitter of single groups.
const SMOOTHING: f64 = 0.9;

/// The slope is multiplied by the number of deltas seen (up to [`MAX_DELTAS`]) and by this
/// gain before it is compared with the threshold (libwebrtc's trendline threshold gain). The
/// slope is a dimensionless ms-per-ms; the scaled value is what the draft's threshold in ms is
/// calibrated for. Leaving this scaling out is what kept rtc's GCC from ever detecting overuse.
const TREND_GAIN: f64 = 4.0;

/// See [`TREND_GAIN`].
const MAX_DELTAS: u32 = 60;

/// The adaptive threshold's start, floor and ceiling in ms (draft §5.4 "Over-use detector":
/// `del_var_th` starts at 12.5 ms and is clamped to [6, 600] ms).
const THRESHOLD_INITIAL_MS: f64 = 12.5;
const THRESHOLD_MIN_MS: f64 = 6.0;
const THRESHOLD_MAX_MS: f64 = 600.0;

/// The threshold's adaptation gains per ms (draft §5.4: `K_u` when the estimate is above the
/// threshold, `K_d` below; these are libwebrtc's values for the trendline, which is scaled
/// differently from the draft's Kalman estimate).
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;

/// An estimate further than this above the threshold does not move it (draft §5.4: a sudden
/// large sample, e.g. a path change, must not desensitise the detector).
const MAX_ADAPT_OFFSET_MS: f64 = 15.0;

/// The threshold adapts over at most this much time per update (draft §5.4).
const MAX_ADAPT_DT_MS: f64 = 100.0;

/// Over-use is signalled once the estimate was above the threshold this long, over at least
/// two updates, and not decreasing (draft §5.4 `overuse_time_th`, 10 ms).
const OVERUSE_TIME_MS: f64 = 10.0;

/// ... and over more than this many groups in a row (libwebrtc: more than 1). Replayed on the
/// groups of two of the Firefox subscribers' calls above (`estimator::tests`), a trend over
/// 700 ms with more than 1 still concluded over-use 0 and 4-5 times a minute, with more than
/// 3 never; at one group a frame it costs one feedback report (100 ms) before a real queue is
/// detected.
const OVERUSE_MIN_COUNT: u32 = 3;

/// On over-use the delay half goes to this fraction of the acknowledged rate (draft §5.5
/// "Rate control": beta, 0.85): below what the path delivers, so the queue drains.
const BETA: f64 = 0.85;

/// One over-use takes the delay half down to no less than this fraction of where it was; a
/// congestion that lasts takes it down again once per response time (halving ten times a
/// second or so). The acknowledged rate it backs off from is only as good as the feedback
/// behind it: a receiver that was starved of CPU sends its reports late and in a burst, the
/// last second then acknowledges a fraction of what arrived, and a subscriber on an unshaped
/// link went from 1.09 Mbit/s to 106 kbit/s in one step (every camera paused, 19 s to recover;
/// seen in a weak-link browser call on a loaded host).
const MAX_CUT: f64 = 0.5;

/// Multiplicative increase per second far from the last congestion (draft §5.5: eta, at most
/// 8 % per second).
const INCREASE_PER_SECOND: f64 = 1.08;

/// Never grows above this multiple of the acknowledged rate plus [`ACKED_HEADROOM`] (libwebrtc's
/// increase limit; see [`APP_LIMITED_DECAY_PER_SECOND`] for an estimate already above it):
/// sending far below a path's capacity says nothing about the capacity above it, and an
/// estimate that drifts up on a quiet path cannot be trusted when the sender wants more.
/// Finding more than this takes probing.
const ACKED_MULTIPLE: f64 = 1.5;
const ACKED_HEADROOM: f64 = 10_000.0;

/// A half above [`ACKED_MULTIPLE`] x acknowledged (the sender sends less than it may:
/// application-limited, or a gap in what it forwards) stays where it is (this factor per
/// second: 1), as in libwebrtc, which only stops the increase there. A decay (0.95 per second
/// was tried) dragged an SFU subscriber's estimate down to 1.5 times the layer it received: on
/// a clean path its allocator then lowered it further (a layer's rate jitters past 95 % of such
/// an estimate), and every probe had to climb back from there (seen in Chromium and Firefox
/// calls: stuck at the lowest layer). A path that worsened while the sender sent little is
/// found out within a second of sending more (delay or loss).
const APP_LIMITED_DECAY_PER_SECOND: f64 = 1.0;

/// An acknowledged rate this far above the rate at the last congestion means the path changed:
/// the increase is multiplicative again (draft §5.5: "far from" the last congestion; libwebrtc
/// uses three standard deviations of the congested rate).
const FAR_FROM_CONGESTION: f64 = 1.3;

/// Added to the round trip time to get the response time of the additive increase (draft
/// §5.5: the increase near convergence is about one packet per response time, RTT + 100 ms).
const RESPONSE_MARGIN: Duration = Duration::from_millis(100);

/// Size of "one packet" for the additive increase when no packet was seen yet (draft §5.5:
/// about 1,200 bytes).
const DEFAULT_PACKET_BYTES: f64 = 1_200.0;

/// The round trip time assumed before feedback measured one.
const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// The loss half evaluates the loss over at least this much feedback (rtc's GCC and the draft
/// §6 update it per RTCP report; rtcd's client reports ~every 50-100 ms, too few packets for a
/// fraction to mean anything).
const LOSS_INTERVAL: Duration = Duration::from_millis(200);

/// ... and over at least this many packets.
const LOSS_MIN_PACKETS: u32 = 10;

/// Above this loss fraction the loss half backs off, below [`LOSS_LOW`] it grows, between it
/// holds (draft §6 "Loss-based control": 10 % and 2 %).
const LOSS_HIGH: f64 = 0.10;
const LOSS_LOW: f64 = 0.02;

/// The loss half's growth per evaluation under [`LOSS_LOW`] (draft §6: 5 %).
const LOSS_GROWTH: f64 = 1.05;

/// Feedback this late means nothing was learnt in between: the estimate does not grow for the
/// time without it (draft §5.5: the rate may only increase on evidence).
const FEEDBACK_GAP: Duration = Duration::from_secs(1);

/// An over-use backs the delay half off from the highest acknowledged rate of this last span,
/// not from the last 500 ms alone: a subscriber's rate dips for moments the path has nothing
/// to do with (a layer switch waiting for its keyframe, a track paused), and a back-off from
/// such a dip took a Firefox subscriber from 384 to 110 kbit/s in one step (acknowledged 130
/// kbit/s while its new layer waited for a keyframe), which paused all its video (issue 28).
/// A queue that really grows says the path carries less than was sent lately; at a real
/// bottleneck the acknowledged rate is the bottleneck's, dip or not.
const ACKED_PEAK_SPAN: Duration = Duration::from_secs(1);

/// What the delay-based detector concludes about the path (draft §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Usage {
    /// The queue is stable.
    Normal,
    /// The queue grows: the path is full.
    Over,
    /// The queue drains.
    Under,
}

/// Seconds of a remote-clock duration, signed against another.
fn ms_between(later: Duration, earlier: Duration) -> f64 {
    (later.as_secs_f64() - earlier.as_secs_f64()) * 1_000.0
}

/// The bits per second the peer reported receiving over the last [`ACKED_WINDOW`], measured
/// on its arrival clock (bursts leave together but arrive spread by the bottleneck: the
/// arrival clock sees the path's rate).
#[derive(Debug)]
pub(super) struct AckedRate {
    /// (arrival, bytes) of the packets in the window.
    arrivals: VecDeque<(Duration, usize)>,
    bytes: usize,
    /// The first arrival since the last reset.
    first: Option<Duration>,
    newest: Duration,
}

impl AckedRate {
    fn new() -> Self {
        Self {
            // Grown to what the window holds at the peer's rate, not reserved for the highest
            // rate: a ring this size is touched all over as it turns, and 1,024 slots reserved
            // per peer were 24 KiB of resident memory for a one-to-one call's ~80 packets.
            arrivals: VecDeque::new(),
            bytes: 0,
            first: None,
            newest: Duration::ZERO,
        }
    }

    fn push(&mut self, arrival: Duration, size: usize) {
        if self.first.is_some() && arrival + CLOCK_RESET < self.newest {
            self.arrivals.clear();
            self.bytes = 0;
            self.first = None;
        }
        if self.first.is_none() {
            self.first = Some(arrival);
            self.newest = arrival;
        }
        self.newest = self.newest.max(arrival);
        self.arrivals.push_back((arrival, size));
        self.bytes += size;
        while let Some(&(at, bytes)) = self.arrivals.front() {
            if at + ACKED_WINDOW > self.newest {
                break;
            }
            self.arrivals.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Bits per second, once arrivals span [`ACKED_MIN_SPAN`].
    pub(super) fn bps(&self) -> Option<f64> {
        let span = self.newest.checked_sub(self.first?)?;
        if span < ACKED_MIN_SPAN {
            return None;
        }
        Some(self.bytes as f64 * 8.0 / span.min(ACKED_WINDOW).as_secs_f64())
    }
}

/// A departure burst (draft §5.2).
#[derive(Debug, Clone, Copy)]
struct Group {
    first_departure: Instant,
    last_departure: Instant,
    first_arrival: Duration,
    last_arrival: Duration,
}

impl Group {
    fn new(departure: Instant, arrival: Duration) -> Self {
        Self {
            first_departure: departure,
            last_departure: departure,
            first_arrival: arrival,
            last_arrival: arrival,
        }
    }

    /// Whether a packet sent at `departure` belongs to this group: sent within [`BURST`] of
    /// its first packet, or arrived as part of a backlog handled at once ([`BURST_ARRIVAL`]).
    fn takes(&self, departure: Instant, arrival: Duration) -> bool {
        if departure.duration_since(self.first_departure) <= BURST {
            return true;
        }
        let send_delta = departure.saturating_duration_since(self.last_departure);
        let Some(arrival_delta) = arrival.checked_sub(self.last_arrival) else {
            // Arrived before the group's last packet though sent after it.
            return true;
        };
        arrival_delta < send_delta
            && arrival_delta <= BURST_ARRIVAL
            && arrival.saturating_sub(self.first_arrival) < BURST_MAX
    }
}

/// The delay-based over-use detector: inter-group delay variation, its trend, the adaptive
/// threshold (draft §5.2-5.4, with libwebrtc's trendline as the arrival-time filter).
#[derive(Debug)]
pub(super) struct Trendline {
    current: Option<Group>,
    previous: Option<Group>,
    /// Groups in a row that arrived before their predecessor (see [`REORDERED_RESET`]).
    reordered: u32,
    /// The arrival of the first group since the last reset: the x axis's origin.
    origin: Option<Duration>,
    deltas: u32,
    accumulated: f64,
    smoothed: f64,
    /// (arrival ms since `origin`, smoothed accumulated delay ms) of the last groups.
    points: VecDeque<(f64, f64)>,
    /// The last slope (ms of delay per ms).
    slope: f64,
    previous_slope: f64,
    /// The last scaled trend compared with the threshold, in ms.
    modified: f64,
    threshold: f64,
    threshold_updated: Option<f64>,
    /// ms the trend has been above the threshold (`None`: it is not).
    over_time: Option<f64>,
    over_count: u32,
    usage: Usage,
}

impl Trendline {
    pub(super) fn new() -> Self {
        Self {
            current: None,
            previous: None,
            reordered: 0,
            origin: None,
            deltas: 0,
            accumulated: 0.0,
            smoothed: 0.0,
            // Grown to what the span holds (about 20 groups at a frame a group), not reserved
            // for the most: 151 slots were 2.4 KiB per peer, all touched as the ring turned.
            points: VecDeque::new(),
            slope: 0.0,
            previous_slope: 0.0,
            modified: 0.0,
            threshold: THRESHOLD_INITIAL_MS,
            threshold_updated: None,
            over_time: None,
            over_count: 0,
            usage: Usage::Normal,
        }
    }

    /// What the detector concluded last.
    pub(super) fn usage(&self) -> Usage {
        self.usage
    }

    /// Folds in one received packet (in send order); returns the detector's conclusion when
    /// it completes a group.
    pub(super) fn on_packet(&mut self, departure: Instant, arrival: Duration) -> Option<Usage> {
        let Some(mut current) = self.current else {
            self.current = Some(Group::new(departure, arrival));
            return None;
        };
        if departure < current.first_departure {
            // Reordered across groups: its group was already measured.
            return None;
        }
        if current.takes(departure, arrival) {
            current.last_departure = current.last_departure.max(departure);
            current.last_arrival = current.last_arrival.max(arrival);
            self.current = Some(current);
            return None;
        }
        let mut usage = None;
        if let Some(previous) = self.previous {
            if current.last_arrival < previous.last_arrival {
                // Arrived before the group sent before it: no delay variation to read.
                self.reordered += 1;
                if self.reordered >= REORDERED_RESET {
                    self.reset();
                }
                self.current = Some(Group::new(departure, arrival));
                return None;
            }
            self.reordered = 0;
            usage = self.measure(previous, current);
        }
        self.previous = Some(current);
        self.current = Some(Group::new(departure, arrival));
        usage
    }

    /// The delay variation between two consecutive groups, into the trend and the detector.
    fn measure(&mut self, previous: Group, current: Group) -> Option<Usage> {
        let send_delta = current
            .last_departure
            .duration_since(previous.last_departure)
            .as_secs_f64()
            * 1_000.0;
        let arrival_delta = ms_between(current.last_arrival, previous.last_arrival);
        if !(-GROUP_GAP_MS..=GROUP_GAP_MS).contains(&arrival_delta) || send_delta > GROUP_GAP_MS {
            self.reset();
            return None;
        }
        let origin = *self.origin.get_or_insert(previous.last_arrival);
        let at = ms_between(current.last_arrival, origin);
        let variation = arrival_delta - send_delta;
        tracing::trace!(
            send_delta = format_args!("{send_delta:.3}"),
            arrival_delta = format_args!("{arrival_delta:.3}"),
            accumulated = format_args!("{:.2}", self.accumulated + variation),
            "bwe: group"
        );
        self.deltas = (self.deltas + 1).min(1_000);
        self.accumulated += variation;
        self.smoothed = SMOOTHING * self.smoothed + (1.0 - SMOOTHING) * self.accumulated;
        self.points.push_back((at, self.smoothed));
        while self.points.len() > TREND_WINDOW
            && (self.points.len() > TREND_WINDOW_MAX
                || self
                    .points
                    .get(1)
                    .is_some_and(|p| at - p.0 >= TREND_SPAN_MS))
        {
            self.points.pop_front();
        }
        if self.points.len() >= TREND_MIN_POINTS
            && let Some(slope) = least_squares_slope(&self.points)
        {
            self.slope = slope;
        }
        self.detect(send_delta, at);
        Some(self.usage)
    }

    /// Draft §5.4: the scaled trend against the adaptive threshold.
    fn detect(&mut self, send_delta: f64, at: f64) {
        if self.deltas < 2 {
            return;
        }
        let before = self.usage;
        self.detect_usage(send_delta, at);
        if self.usage != before {
            tracing::debug!(
                from = ?before,
                to = ?self.usage,
                modified = format_args!("{:.2}", self.modified),
                threshold = format_args!("{:.2}", self.threshold),
                slope = format_args!("{:.4}", self.slope),
                deltas = self.deltas,
                "bwe: usage"
            );
        }
    }

    fn detect_usage(&mut self, send_delta: f64, at: f64) {
        let modified = f64::from(self.deltas.min(MAX_DELTAS)) * self.slope * TREND_GAIN;
        self.modified = modified;
        if modified > self.threshold {
            let over = match self.over_time {
                None => send_delta / 2.0,
                Some(t) => t + send_delta,
            };
            self.over_time = Some(over);
            self.over_count += 1;
            if over > OVERUSE_TIME_MS
                && self.over_count > OVERUSE_MIN_COUNT
                && self.slope >= self.previous_slope
            {
                self.over_time = Some(0.0);
                self.over_count = 0;
                self.usage = Usage::Over;
            }
        } else if modified < -self.threshold {
            self.over_time = None;
            self.over_count = 0;
            self.usage = Usage::Under;
        } else {
            self.over_time = None;
            self.over_count = 0;
            self.usage = Usage::Normal;
        }
        self.previous_slope = self.slope;
        self.adapt(modified, at);
    }

    /// Draft §5.4's threshold adaptation: towards |m| with `K_u` above it, `K_d` below it.
    fn adapt(&mut self, modified: f64, at: f64) {
        let last = *self.threshold_updated.get_or_insert(at);
        self.threshold_updated = Some(at);
        if modified.abs() > self.threshold + MAX_ADAPT_OFFSET_MS {
            return;
        }
        let k = if modified.abs() < self.threshold {
            K_DOWN
        } else {
            K_UP
        };
        let dt = (at - last).clamp(0.0, MAX_ADAPT_DT_MS);
        self.threshold += k * (modified.abs() - self.threshold) * dt;
        self.threshold = self.threshold.clamp(THRESHOLD_MIN_MS, THRESHOLD_MAX_MS);
    }

    /// Forgets the delay history (not the threshold, which describes the path's jitter).
    fn reset(&mut self) {
        self.previous = None;
        self.reordered = 0;
        self.origin = None;
        self.deltas = 0;
        self.accumulated = 0.0;
        self.smoothed = 0.0;
        self.points.clear();
        self.slope = 0.0;
        self.previous_slope = 0.0;
        self.over_time = None;
        self.over_count = 0;
        self.usage = Usage::Normal;
        self.threshold_updated = None;
    }
}

/// A half after an update (`after`, from `before`) under the acknowledged cap: it may not grow
/// above the cap, and above it comes down by `decay` (not below the cap, nor above `after`).
fn limit(after: f64, before: f64, cap: f64, decay: f64) -> f64 {
    let grown = after.min(before.max(cap));
    if grown > cap {
        (grown * decay).max(cap)
    } else {
        grown
    }
}

/// The slope of the least-squares line through `points`, if they are not all at one x.
fn least_squares_slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    (den > 0.0).then(|| num / den)
}

/// rtcd's bandwidth estimator: the lower of a delay-based and a loss-based half, both capped
/// at [`ACKED_MULTIPLE`] times what the peer acknowledged (see the module docs).
#[derive(Debug)]
pub(super) struct Estimator {
    acked: AckedRate,
    trend: Trendline,
    delay_based: f64,
    loss_based: f64,
    /// When the delay half last moved (or was considered).
    delay_updated: Option<Instant>,
    last_decrease: Option<Instant>,
    /// The acknowledged rate when over-use was last detected: near it the increase is additive.
    congested_at: Option<f64>,
    /// Loss counted since the loss half last evaluated.
    lost: u32,
    reported: u32,
    loss_updated: Option<Instant>,
    loss: Option<f64>,
    rtt: Option<Duration>,
    /// Mean size of received packets (bytes), for the additive increase.
    packet_bytes: f64,
    last_feedback: Option<Instant>,
    /// (when, acknowledged rate) after each feedback batch over the last [`ACKED_PEAK_SPAN`].
    acked_recent: VecDeque<(Instant, f64)>,
}

impl Default for Estimator {
    fn default() -> Self {
        Self::new()
    }
}

impl Estimator {
    pub(super) fn new() -> Self {
        Self {
            acked: AckedRate::new(),
            trend: Trendline::new(),
            delay_based: INITIAL_BITRATE,
            loss_based: INITIAL_BITRATE,
            delay_updated: None,
            last_decrease: None,
            congested_at: None,
            lost: 0,
            reported: 0,
            loss_updated: None,
            loss: None,
            rtt: None,
            packet_bytes: DEFAULT_PACKET_BYTES,
            last_feedback: None,
            acked_recent: VecDeque::new(),
        }
    }

    /// The acknowledged rate, once known.
    #[cfg(test)]
    pub(super) fn acknowledged(&self) -> Option<f64> {
        self.acked.bps()
    }

    /// What the delay-based detector last concluded.
    #[cfg(test)]
    pub(super) fn usage(&self) -> Usage {
        self.trend.usage()
    }

    fn rtt(&self) -> Duration {
        self.rtt.unwrap_or(DEFAULT_RTT)
    }

    /// The delay half's rate control (draft §5.5): over-use: down to [`BETA`] times the
    /// acknowledged rate at once (but by at most [`MAX_CUT`]), then hold (again at most once
    /// per response time while it lasts); under-use: hold; normal: increase, multiplicatively
    /// far from the last congestion, additively near it.
    fn control_delay(&mut self, now: Instant, usage: Usage, acked: Option<f64>, growth_dt: f64) {
        match usage {
            Usage::Over => {
                let response = self.rtt() + RESPONSE_MARGIN;
                let due = self
                    .last_decrease
                    .is_none_or(|at| now.duration_since(at) >= response);
                if due {
                    let peak = self.acked_recent.iter().map(|(_, a)| *a).reduce(f64::max);
                    let base = peak.or(acked).unwrap_or(self.delay_based);
                    self.delay_based = self
                        .delay_based
                        .min((BETA * base).max(MAX_CUT * self.delay_based));
                    self.last_decrease = Some(now);
                    if let Some(acked) = acked {
                        self.congested_at = Some(match self.congested_at {
                            Some(c) if acked < c * FAR_FROM_CONGESTION && acked > c * 0.7 => {
                                0.9 * c + 0.1 * acked
                            }
                            _ => acked,
                        });
                    }
                    tracing::debug!(
                        target = self.delay_based,
                        ?acked,
                        threshold = self.trend.threshold,
                        "bwe: over-use, delay half backs off"
                    );
                }
            }
            Usage::Under => {}
            Usage::Normal => {
                if let (Some(c), Some(a)) = (self.congested_at, acked)
                    && a > c * FAR_FROM_CONGESTION
                {
                    self.congested_at = None;
                }
                if self.congested_at.is_some() {
                    let response = (self.rtt() + RESPONSE_MARGIN).as_secs_f64();
                    self.delay_based += self.packet_bytes * 8.0 / response * growth_dt;
                } else {
                    self.delay_based *= INCREASE_PER_SECOND.powf(growth_dt);
                }
            }
        }
    }

    /// The loss half (draft §6): over the reports of the last [`LOSS_INTERVAL`], more than 10 %
    /// lost: times (1 - loss / 2), but never below what the peer acknowledged (the path did
    /// deliver it: backing off further only starves the peer, which is how rtc's GCC ended at
    /// its floor on a path delivering 600 kbit/s); under 2 %: 5 % more; between: hold.
    fn control_loss(&mut self, now: Instant, acked: Option<f64>, may_grow: bool) {
        let due = self
            .loss_updated
            .is_none_or(|at| now.duration_since(at) >= LOSS_INTERVAL);
        if !due || self.reported < LOSS_MIN_PACKETS {
            return;
        }
        let loss = f64::from(self.lost) / f64::from(self.reported);
        self.loss = Some(loss);
        self.lost = 0;
        self.reported = 0;
        self.loss_updated = Some(now);
        if loss > LOSS_HIGH {
            let backed = self.loss_based * (1.0 - 0.5 * loss);
            self.loss_based = backed.max(acked.unwrap_or(0.0));
        } else if loss < LOSS_LOW && may_grow {
            self.loss_based *= LOSS_GROWTH;
        }
    }
}

impl Estimator {
    /// What one feedback batch looked like and what the detector made of it (trace): the
    /// shape of the peer's arrival times (their resolution, reordering, bursts) next to the
    /// trend, the threshold and the rates.
    fn log_batch(&self, now: Instant, reports: &[PacketReport]) {
        let arrivals: Vec<i64> = reports
            .iter()
            .filter(|r| r.arrived)
            .filter_map(|r| r.arrival)
            .map(|a| a.as_micros() as i64)
            .collect();
        let lost = reports.iter().filter(|r| !r.arrived).count();
        let deltas: Vec<i64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
        let negative = deltas.iter().filter(|d| **d < 0).count();
        let zero = deltas.iter().filter(|d| **d == 0).count();
        let ms_multiple = deltas.iter().filter(|d| **d % 1_000 == 0).count();
        let min = deltas.iter().min().copied().unwrap_or(0);
        let max = deltas.iter().max().copied().unwrap_or(0);
        let departures = reports
            .first()
            .zip(reports.last())
            .map(|(a, b)| b.departure.duration_since(a.departure).as_micros())
            .unwrap_or(0);
        let span = arrivals
            .iter()
            .max()
            .zip(arrivals.iter().min())
            .map_or(0, |(a, b)| a - b);
        let interval = self
            .last_feedback
            .map(|at| now.saturating_duration_since(at).as_millis());
        tracing::trace!(
            n = reports.len(),
            lost,
            deltas = deltas.len(),
            negative,
            zero,
            ms_multiple,
            min_delta_us = min,
            max_delta_us = max,
            departure_span_us = departures,
            arrival_span_us = span,
            interval_ms = ?interval,
            modified = format_args!("{:.2}", self.trend.modified),
            threshold = format_args!("{:.2}", self.trend.threshold),
            usage = ?self.trend.usage,
            acked = ?self.acked.bps().map(|b| b as u64),
            delay = self.delay_based as u64,
            loss_based = self.loss_based as u64,
            loss = ?self.loss,
            "bwe: feedback"
        );
    }
}

impl BandwidthEstimator for Estimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        let mut usage = None;
        let mut newest_departure = None;
        let (mut bytes, mut received) = (0usize, 0usize);
        for report in reports {
            self.reported = self.reported.saturating_add(1);
            let arrival = match (report.arrived, report.arrival) {
                (true, Some(arrival)) => arrival,
                (true, None) => continue,
                (false, _) => {
                    self.lost = self.lost.saturating_add(1);
                    continue;
                }
            };
            self.acked.push(arrival, report.size);
            bytes += report.size;
            received += 1;
            newest_departure = Some(
                newest_departure.map_or(report.departure, |d: Instant| d.max(report.departure)),
            );
            if let Some(u) = self.trend.on_packet(report.departure, arrival) {
                usage = Some(u);
            }
        }
        if received > 0 {
            self.packet_bytes = 0.9 * self.packet_bytes + 0.1 * (bytes as f64 / received as f64);
        }
        if let Some(departure) = newest_departure {
            let sample = now.saturating_duration_since(departure);
            self.rtt = Some(match self.rtt {
                Some(rtt) => (rtt * 7 + sample) / 8,
                None => sample,
            });
        }
        // Growth only for time covered by feedback (nothing learnt across a gap).
        let gap = self
            .last_feedback
            .map(|at| now.saturating_duration_since(at));
        let may_grow = gap.is_some_and(|g| g <= FEEDBACK_GAP);
        let elapsed = self
            .delay_updated
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        let growth_dt = if may_grow { elapsed } else { 0.0 };
        self.delay_updated = Some(now);

        let acked = self.acked.bps();
        if let Some(a) = acked {
            self.acked_recent.push_back((now, a));
        }
        while self
            .acked_recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ACKED_PEAK_SPAN)
        {
            self.acked_recent.pop_front();
        }
        let usage = usage.unwrap_or_else(|| self.trend.usage());
        let (delay_before, loss_before) = (self.delay_based, self.loss_based);
        self.control_delay(now, usage, acked, growth_dt);
        self.control_loss(now, acked, may_grow);
        // What the path just delivered with its queue not growing and almost nothing lost is
        // safe to send: a probe (rtcd's RTX copies) or a higher layer proves it at once, where
        // growth alone takes 8 % a second (from a 500 kbit/s layer to a 1.5 Mbit/s one: 14 s).
        if let Some(acked) = acked
            && usage == Usage::Normal
            && self.loss.is_none_or(|l| l < LOSS_LOW)
        {
            self.delay_based = self.delay_based.max(acked);
            self.loss_based = self.loss_based.max(acked);
        }
        if let Some(acked) = acked {
            let cap = ACKED_MULTIPLE * acked + ACKED_HEADROOM;
            let decay = APP_LIMITED_DECAY_PER_SECOND.powf(elapsed.min(1.0));
            self.delay_based = limit(self.delay_based, delay_before, cap, decay);
            self.loss_based = limit(self.loss_based, loss_before, cap, decay);
        }
        self.delay_based = self.delay_based.clamp(MIN_BITRATE, MAX_BITRATE);
        self.loss_based = self.loss_based.clamp(MIN_BITRATE, MAX_BITRATE);
        if tracing::enabled!(tracing::Level::TRACE) {
            self.log_batch(now, reports);
        }
        self.last_feedback = Some(now);
    }

    fn target_bitrate(&self) -> f64 {
        self.delay_based.min(self.loss_based)
    }

    fn stats(&self) -> EstimatorStats {
        let mut stats = EstimatorStats::default();
        stats.delay_based_bitrate = Some(self.delay_based);
        stats.loss_based_bitrate = Some(self.loss_based);
        stats.packet_loss = self.loss;
        stats.round_trip_time = self.rtt;
        stats
    }
}

#[cfg(test)]
mod tests;

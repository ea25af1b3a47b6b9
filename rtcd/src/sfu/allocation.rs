//! Which layer of each video track a subscriber receives, from what its link carries.
//!
//! One [`Allocator`] per subscriber, fed with the bandwidth estimate of its link (send-side,
//! from the transport-wide feedback it sends) and, at each decision, the video tracks it
//! subscribes to with the measured bitrate of their layers. It answers with a [`Decision`] per
//! track: the best layer it may receive, or paused with a reason. The room applies a decision
//! to the track's down-track (which switches at a keyframe) and tells the subscriber when a
//! track pauses or resumes (`docs/adaptive-video.md`).
//!
//! The rules, in order:
//! * Audio is never dropped for video: what the subscriber's audio takes comes off the budget
//!   first.
//! * Tracks are served in priority order: screen shares, then cameras of whoever spoke most
//!   recently, then the others in subscription order.
//! * Every visible track gets its lowest layer before any gets a higher one; what remains then
//!   raises tracks in priority order, each as far as it fits and it is wanted.
//! * A track whose lowest layer does not fit is paused ([`PauseReason::Bandwidth`]), and
//!   resumes when it fits again. A track nothing of which is measured yet moves nobody: it
//!   gets its lowest layer while that fits in twice the estimate beside the audio, and costs
//!   the others nothing until measured. A track flowing (at any layer)
//!   keeps its lowest layer while that fits in the whole estimate, and is paused only when the
//!   shortfall lasts [`PAUSE_GRACE`] or is deep (the lowest layers would not fit in twice the
//!   estimate): a pause freezes the picture for seconds (the hold, then a keyframe), and an
//!   estimate's dip after a loss-based back-off is often over in one. A hidden track (the
//!   subscriber said so) is paused at once.
//! * Downgrades happen at once (a link that overflows loses audio and stalls every video);
//!   upgrades and resumes wait [`UPGRADE_HOLD`] after the last downgrade the link caused (a
//!   lower estimate; not the first estimate, which is only where the estimator starts) and
//!   must fit in a smaller share of the estimate ([`RAISE_SHARE`] against [`KEEP_SHARE`]): a
//!   link at the edge of a layer does not flap between two.
//!
//! Plain data in, decisions out, time passed in: unit-tested without a network.

use std::time::{Duration, Instant};

/// The share of the estimate the current layers may use before they are lowered: the rest is
/// the margin for RTCP, retransmissions and a frame larger than average.
pub const KEEP_SHARE: f64 = 0.95;
/// The share of the estimate a higher layer (or a resumed track) must fit in to be taken.
pub const RAISE_SHARE: f64 = 0.80;
/// A shortfall is deep when the lowest layers would not fit in this share of the estimate: a
/// flowing track is then paused at once (no [`PAUSE_GRACE`]), and a track not measured yet is
/// not given its lowest layer.
pub const DEEP_SHARE: f64 = 2.0;
/// How long after a downgrade nothing is raised: the estimate is still settling.
pub const UPGRADE_HOLD: Duration = Duration::from_secs(3);
/// How long a track flowing (at any layer) keeps its lowest layer while the estimate says it
/// no longer fits (unless the shortfall is deep: see the module docs). Seen in a weak browser
/// call: a failed probe's losses took the estimate from 490 to 254 kbit/s for about a second, both
/// cameras then flowing at their lowest layer were paused, and one stayed frozen for 15 s.
/// The lowest layers are small (about 50 kbit/s each), so keeping them through a dip costs the
/// link little.
///
/// 3 s, not 2: a false over-use of a Firefox receiver backed its estimate off to 0.85 times
/// what it was sent (243 kbit/s), and 2 s later it had climbed back to 312 of the 316 its
/// lowest layers needed.
pub const PAUSE_GRACE: Duration = Duration::from_secs(3);
/// A publisher heard within this long counts as a recent speaker (its cameras come first).
/// Coarse on purpose: ordered by the instant of the last speech, two people talking in turn
/// (or a test's beeping fake microphones) swapped the priority of their cameras several times
/// a second, and every swap moved layers (a keyframe each) on constrained links.
pub const RECENT_SPEECH: Duration = Duration::from_secs(10);

/// What a layer is assumed to cost before it has been measured (a layer the publisher does not
/// send now, or one that just started): the SDK's camera layers (`docs/web-client.md`), the
/// top one at the full rate (a single-layer track's too), the lowest of several at the low
/// layer's (the SDK sends `q;f` for a camera under 960 x 540), one between at the middle's.
const NOMINAL_TOP: u64 = 1_500_000;
const NOMINAL_MIDDLE: u64 = 500_000;
const NOMINAL_LOW: u64 = 50_000;

/// What kind of video a track is: screen shares come before cameras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A screen share (served first: it is what a presentation is about).
    Screen,
    /// A camera.
    Camera,
}

/// Why a subscriber receives nothing of a video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Even its lowest layer does not fit in what the subscriber's link carries.
    Bandwidth,
    /// The subscriber does not show it.
    Hidden,
}

/// What a subscriber receives of one video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// At most this layer (index into the track's layers, lowest first).
    Layer(usize),
    /// Nothing.
    Paused(PauseReason),
}

impl Decision {
    /// Orders decisions by what they cost: a pause is below every layer.
    pub fn rank(self) -> usize {
        match self {
            Decision::Paused(_) => 0,
            Decision::Layer(l) => l + 1,
        }
    }
}

/// One video track a subscriber receives, as the allocator needs it.
#[derive(Debug, Clone, Copy)]
pub struct VideoTrack<'a> {
    /// The caller's name for it (its slot); decisions come back under it.
    pub id: usize,
    /// Screen or camera.
    pub class: Class,
    /// When its publisher last spoke (recent speakers' cameras come first).
    pub spoke: Option<Instant>,
    /// Measured bits per second of each layer, lowest first; 0 where nothing was measured.
    pub rates: &'a [u64],
    /// The best layer the subscriber wants (what its display needs); past the last layer means
    /// any.
    pub max_layer: usize,
    /// Whether the subscriber shows it at all.
    pub visible: bool,
}

impl VideoTrack<'_> {
    fn top(&self) -> Option<usize> {
        (!self.rates.is_empty()).then(|| self.max_layer.min(self.rates.len() - 1))
    }

    /// What layer `layer` costs: measured, else nominal.
    fn cost(&self, layer: usize) -> u64 {
        match self.rates.get(layer) {
            Some(&r) if r > 0 => r,
            _ if layer + 1 >= self.rates.len() => NOMINAL_TOP,
            _ if layer == 0 => NOMINAL_LOW,
            _ => NOMINAL_MIDDLE,
        }
    }
}

/// The bitrate of one stream over about the last second: two half-second buckets, so a
/// packet costs two additions and a comparison.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateMeter {
    /// Start of the current bucket.
    start: Option<Instant>,
    current: u64,
    previous: u64,
    /// A moving average of the completed buckets' rates (bits per second; 0: none yet), kept
    /// while the stream is silent: what the stream typically costs.
    typical: u64,
}

/// A [`RateMeter`] bucket.
const BUCKET: Duration = Duration::from_millis(500);

impl RateMeter {
    /// Counts a packet of `bytes` at `now`.
    pub fn add(&mut self, bytes: usize, now: Instant) {
        self.roll(now);
        self.current += bytes as u64;
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.start.get_or_insert(now);
        let age = now.saturating_duration_since(start);
        if age >= BUCKET {
            if age < 2 * BUCKET && self.current > 0 {
                let sample = self.current * 8 * 1000 / (age.as_millis().max(1) as u64);
                self.typical = if self.typical == 0 {
                    sample
                } else {
                    (self.typical * 7 + sample) / 8
                };
            }
            self.previous = if age < 2 * BUCKET { self.current } else { 0 };
            self.current = 0;
            self.start = Some(now);
        }
    }

    /// What the stream typically sends (bits per second, averaged over its last few seconds of
    /// sending; kept while it is silent): what a subscriber's link needs for it. 0 before a
    /// first half second was measured.
    pub fn typical(&self) -> u64 {
        self.typical
    }

    /// Bits per second over the last bucket and what the current one has seen (0 for a
    /// stream silent for a second).
    pub fn bits_per_second(&self, now: Instant) -> u64 {
        let Some(start) = self.start else {
            return 0;
        };
        let age = now.saturating_duration_since(start);
        let (bytes, span) = if age >= 2 * BUCKET {
            return 0;
        } else if age >= BUCKET {
            // The current bucket is over but not rolled yet (no packet since).
            (self.current, age)
        } else {
            (self.previous + self.current, BUCKET + age)
        };
        bytes * 8 * 1000 / (span.as_millis().max(1) as u64)
    }
}

/// A subscriber's allocator. See the module docs.
#[derive(Debug, Default)]
pub struct Allocator {
    /// What the subscriber's link carries (bits per second), once estimated. Without an
    /// estimate (a client that sends no transport-wide feedback) nothing is limited.
    estimate: Option<u64>,
    /// When a decision was last lowered for the link (the upgrade hold runs from then).
    lowered_at: Option<Instant>,
    /// The estimate at the last allocation: a lowering with the estimate as high as then is a
    /// change of order (another camera's publisher spoke), not the link.
    allocated_with: Option<u64>,
    /// The decision in force per track id.
    current: Vec<(usize, Decision)>,
    /// What the estimate would have to be for the next step up (a higher layer or a resumed
    /// track), when the estimate is what holds the subscriber back: the rate to probe at.
    probe: Option<u64>,
    /// Until when the first track paused for bandwidth gets its lowest layer anyway
    /// ([`Allocator::try_resume`]), and which track that is once chosen (the same one for the
    /// whole trial: re-chosen at each decision, it changed hands every second).
    trial: Option<(Instant, Option<usize>)>,
    /// See [`Allocator::probe_ceiling`].
    ceiling: Option<u64>,
    /// Since when a flowing track's lowest layer has not fit (its [`PAUSE_GRACE`] runs).
    short_since: Option<Instant>,
}

impl Allocator {
    /// A new estimate of the subscriber's link.
    pub fn set_estimate(&mut self, bits_per_second: u64) {
        self.estimate = Some(bits_per_second);
    }

    /// The latest estimate.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// The estimate the next step up needs, when the estimate is what keeps a track below what
    /// the subscriber wants (decided by the last [`Allocator::allocate`]): what to probe the
    /// link at, so that a link that can carry more is found (the estimate only proves what was
    /// sent).
    pub fn probe_target(&self) -> Option<u64> {
        self.probe
    }

    /// Until `until`, the first visible track (in priority order) paused for bandwidth gets its
    /// lowest layer although the estimate says it does not fit: the probe of a subscriber whose
    /// video is all paused. Its link then carries only audio, and an estimate proves only what
    /// was sent (it may not grow far above what is acknowledged), so without sending video it
    /// could never rise enough to resume any. At the first decision after `until` the rules
    /// apply again: the estimate, with that video's feedback in it, keeps the track or pauses
    /// it again.
    pub fn try_resume(&mut self, until: Instant) {
        self.trial = Some((until, None));
    }

    /// Forgets `id`'s decision: the next allocation decides it as a new track (its slot now
    /// carries another one).
    pub fn forget(&mut self, id: usize) {
        self.current.retain(|(i, _)| *i != id);
    }

    /// The decision in force for `id`, if any.
    pub fn decision(&self, id: usize) -> Option<Decision> {
        self.current.iter().find(|(i, _)| *i == id).map(|(_, d)| *d)
    }

    /// Decides every track again. `audio` is what the subscriber's audio takes (bits per
    /// second). Calls `changed(id, decision)` for each track whose decision changed (a track
    /// seen for the first time counts as changed); tracks not in `tracks` are forgotten.
    pub fn allocate(
        &mut self,
        audio: u64,
        tracks: &[VideoTrack<'_>],
        now: Instant,
        mut changed: impl FnMut(usize, Decision),
    ) {
        self.current
            .retain(|(id, _)| tracks.iter().any(|t| t.id == *id));
        let mut order: Vec<usize> = (0..tracks.len()).collect();
        // Screens first; then recent speakers; then subscription order (a stable sort).
        let quiet = |t: &VideoTrack<'_>| {
            t.spoke
                .is_none_or(|s| now.saturating_duration_since(s) >= RECENT_SPEECH)
        };
        // Among equals, what is sent now before what is paused: when the link carries only
        // some of them, the ones flowing keep flowing (a change of order would pause one and
        // resume another, a keyframe each and nothing decoded meanwhile: seen rotating every
        // second in a weak browser call).
        let paused = |t: &VideoTrack<'_>| matches!(self.decision(t.id), Some(Decision::Paused(_)));
        order.sort_by(|&a, &b| {
            let (a, b) = (&tracks[a], &tracks[b]);
            a.class
                .cmp(&b.class)
                .then_with(|| quiet(a).cmp(&quiet(b)))
                .then_with(|| paused(a).cmp(&paused(b)))
        });
        // A track nothing of which is measured yet (just published, its first packets not
        // in) moves nobody: its cost is a guess (the nominal rates), and acting on it is
        // worse than useless. Seen at a screen share's start in the long browser calls: the
        // share counted at its nominal 1.5 Mbit/s, both cameras were lowered for it, and 36 ms
        // later its first keyframe measured it small and they went back up; lowering them had
        // woken their publishers' stopped layers (an encoder reconfiguration in Firefox) and
        // cost two keyframes and a switch each, and a camera's picture stood still for 3-4 s.
        // Lowering would not have spared the link either: a switch takes a keyframe of the
        // lower layer, far later than the measurement. Such a track gets its lowest layer
        // while that fits in twice what the link has beside its audio (else it is paused, as a
        // flowing track would be for so deep a shortfall) and takes nothing from the others
        // until measured; the decision after its first packets places it by the rules.
        let unknown: Vec<bool> = tracks
            .iter()
            .map(|t| {
                self.estimate.is_some()
                    && t.visible
                    && t.top().is_some()
                    && t.rates.iter().all(|&r| r == 0)
                    && !matches!(self.decision(t.id), Some(Decision::Paused(_)))
            })
            .collect();
        order.retain(|&i| !unknown[i]);
        // What the subscriber wants (its views), then what its link allows of it.
        let none = vec![false; tracks.len()];
        let wanted = fit(tracks, &order, u64::MAX, &none);
        let paused_for_bandwidth = |d: &Decision| *d == Decision::Paused(PauseReason::Bandwidth);
        // A flowing track whose lowest layer no longer fits in [`KEEP_SHARE`] of the estimate
        // keeps it while it fits in the whole estimate (the margin is for the layers above the
        // lowest: a delay-based estimate runs 5-15 % under what the link carries), and for
        // [`PAUSE_GRACE`] while it would fit in twice the estimate. Not a track whose resume
        // on trial is over: the link did not confirm it.
        let tried = match self.trial {
            Some((until, id)) if now >= until => id,
            _ => None,
        };
        // Flowing means at any layer: a track lowered from a higher one straight to a pause
        // froze for seconds when a screen share started (the share, served first and not
        // measured yet, counted at its nominal rate and took the cameras' room; such a track
        // now moves nobody, above). A new track whose lowest layer is not measured yet (another
        // of its layers is) gets the same benefit of the doubt: its cost is a guess.
        let flowing = |t: &VideoTrack<'_>| {
            tried != Some(t.id)
                && match self.decision(t.id) {
                    Some(Decision::Layer(_)) => true,
                    None => t.rates.first().is_none_or(|&r| r == 0),
                    Some(Decision::Paused(_)) => false,
                }
        };
        let grace_left = self
            .short_since
            .is_none_or(|since| now.saturating_duration_since(since) < PAUSE_GRACE);
        // The tracks kept at their lowest layer that way (`kept`) take their room before the
        // others are fitted, in every share: kept, a track costs the link what it did. Found
        // by growing the set until nothing more joins it (each round can only add a track that
        // the last one's kept tracks pushed out; a few tracks, a few rounds).
        let mut kept = none.clone();
        let mut short = false;
        // What share `s` of the estimate leaves for video beside the audio.
        let budget = |e: u64, s: f64| ((e as f64 * s) as u64).saturating_sub(audio);
        let (keep, raise) = loop {
            let Some(e) = self.estimate else {
                break (wanted.clone(), wanted.clone());
            };
            let share = |s: f64| budget(e, s);
            let keep = fit(tracks, &order, share(KEEP_SHARE), &kept);
            let whole = fit(tracks, &order, share(1.0), &kept);
            let deep = fit(tracks, &order, share(DEEP_SHARE), &kept);
            let mut grown = false;
            for (i, t) in tracks.iter().enumerate() {
                if kept[i] || !flowing(t) || !paused_for_bandwidth(&keep[i]) {
                    continue;
                }
                let within = !paused_for_bandwidth(&whole[i]);
                let dip = !within && !paused_for_bandwidth(&deep[i]);
                short |= dip;
                if within || dip && grace_left {
                    kept[i] = true;
                    grown = true;
                }
            }
            if !grown {
                break (keep, fit(tracks, &order, share(RAISE_SHARE), &kept));
            }
        };
        if short {
            self.short_since.get_or_insert(now);
        } else {
            self.short_since = None;
        }
        let hold_over = self
            .lowered_at
            .is_none_or(|t| now.saturating_duration_since(t) >= UPGRADE_HOLD);
        // A resume on trial: the first track in order paused for bandwidth when it starts.
        let had_trial = self.trial.is_some();
        let trial = match self.trial {
            Some((until, chosen)) if now < until => {
                let id = chosen.or_else(|| {
                    order
                        .iter()
                        .map(|&i| &tracks[i])
                        .find(|t| {
                            t.visible
                                && t.top().is_some()
                                && self.decision(t.id)
                                    == Some(Decision::Paused(PauseReason::Bandwidth))
                        })
                        .map(|t| t.id)
                });
                self.trial = Some((until, id));
                id.and_then(|id| tracks.iter().position(|t| t.id == id && t.visible))
            }
            _ => {
                self.trial = None;
                None
            }
        };
        let mut lowered = false;
        // Only a lowering with the estimate lower than at the last allocation (or a trial that
        // ended: the link did not confirm it) starts the hold (seen: a weak link's shaping
        // lifted, the estimate climbing, one camera raised, then its publisher fell silent and
        // the layer went to another's camera; the hold that followed delayed the rest 3.7 s).
        // Nor does the first estimate: it is where the estimator starts, not what the link said
        // (a 1 Mbit/s start lowered every camera of a three-layer room at join, and the hold
        // kept them there 5-8 s on links that carried the top layers: the first seconds of
        // every call blurred).
        let link_fell = had_trial && self.trial.is_none()
            || match (self.estimate, self.allocated_with) {
                (Some(e), Some(before)) => e < before,
                (Some(_), None) => false,
                (None, _) => true,
            };
        self.allocated_with = self.estimate;
        let deep_limit = self.estimate.map_or(u64::MAX, |e| budget(e, DEEP_SHARE));
        for (i, t) in tracks.iter().enumerate() {
            let now_decided = self.decision(t.id);
            let next = match now_decided {
                _ if trial == Some(i) => Decision::Layer(0),
                _ if unknown[i] && t.cost(0) <= deep_limit => Decision::Layer(0),
                _ if unknown[i] => {
                    lowered = true;
                    Decision::Paused(PauseReason::Bandwidth)
                }
                _ if kept[i] => {
                    // Lowered to its lowest layer rather than paused: a hold when the link is
                    // why, as for any lowering.
                    lowered |= now_decided.is_some_and(|d| d.rank() > 1) && link_fell;
                    Decision::Layer(0)
                }
                // A new track that does not fit waits like one that stopped fitting.
                None => {
                    lowered |= keep[i] == Decision::Paused(PauseReason::Bandwidth);
                    keep[i]
                }
                // Lowered: the hold starts only when the link is why (a view that shrank, or
                // a track hidden, says nothing about the link).
                Some(cur) if keep[i].rank() < cur.rank() => {
                    lowered |= keep[i].rank() < wanted[i].rank() && link_fell;
                    keep[i]
                }
                // Shown again: not a raise after a downgrade for bandwidth, but during a hold
                // only its lowest layer.
                Some(Decision::Paused(PauseReason::Hidden)) if t.visible => match keep[i] {
                    _ if hold_over => raise[i],
                    Decision::Layer(_) => Decision::Layer(0),
                    paused => paused,
                },
                Some(cur) if raise[i].rank() > cur.rank() && hold_over => raise[i],
                Some(cur) => cur,
            };
            if now_decided != Some(next) {
                match self.current.iter_mut().find(|(id, _)| *id == t.id) {
                    Some((_, d)) => *d = next,
                    None => self.current.push((t.id, next)),
                }
                changed(t.id, next);
            }
        }
        if lowered {
            self.lowered_at = Some(now);
        }
        // No probe while the last downgrade is fresh: the link just said no.
        let goal = |used: u64| ((used + audio) as f64 / RAISE_SHARE).ceil() as u64;
        self.probe = self
            .estimate
            .filter(|_| hold_over && !lowered && self.short_since.is_none())
            .and_then(|_| next_step(tracks, &order, |id| self.decision(id)))
            .map(|(used, extra)| goal(used + extra));
        let want: u64 = tracks
            .iter()
            .zip(&wanted)
            .map(|(t, d)| match d {
                Decision::Layer(l) => t.cost(*l),
                Decision::Paused(_) => 0,
            })
            .sum();
        self.ceiling = self.probe.map(|_| goal(want));
    }

    /// What the estimate would have to be for every track to get what the subscriber wants
    /// (while [`Allocator::probe_target`] is some): how far a probe may aim when the last one
    /// proved its goal (doubling towards it, a link that recovers is found in a few probes).
    pub fn probe_ceiling(&self) -> Option<u64> {
        self.ceiling
    }
}

/// The first step up in priority order among `tracks` with the decisions in force: (what the
/// decisions use now, what that step adds). `None` when every track has what it wants.
fn next_step(
    tracks: &[VideoTrack<'_>],
    order: &[usize],
    decision: impl Fn(usize) -> Option<Decision>,
) -> Option<(u64, u64)> {
    let used: u64 = tracks
        .iter()
        .map(|t| match decision(t.id) {
            Some(Decision::Layer(l)) => t.cost(l),
            _ => 0,
        })
        .sum();
    // Every visible track its lowest layer before any gets a higher one: resumes first.
    let resume = order.iter().find_map(|&i| {
        let t = &tracks[i];
        t.top()?;
        (t.visible && decision(t.id)? == Decision::Paused(PauseReason::Bandwidth))
            .then(|| (used, t.cost(0)))
    });
    resume.or_else(|| {
        order.iter().find_map(|&i| {
            let t = &tracks[i];
            let top = t.top()?;
            match decision(t.id)? {
                Decision::Layer(l) if l < top => {
                    Some((used, t.cost(l + 1).saturating_sub(t.cost(l))))
                }
                _ => None,
            }
        })
    })
}

/// The decisions `budget` allows, by the rules of the module docs, indexed like `tracks`.
/// Tracks marked `kept` take their lowest layer whatever it costs (the rest of the budget, if
/// any, goes on).
fn fit(
    tracks: &[VideoTrack<'_>],
    order: &[usize],
    mut budget: u64,
    kept: &[bool],
) -> Vec<Decision> {
    let mut out = vec![Decision::Paused(PauseReason::Hidden); tracks.len()];
    // Every visible track its lowest layer first.
    for &i in order {
        let t = &tracks[i];
        if !t.visible || t.top().is_none() {
            continue;
        }
        let cost = t.cost(0);
        if cost <= budget || kept[i] {
            budget = budget.saturating_sub(cost);
            out[i] = Decision::Layer(0);
        } else {
            out[i] = Decision::Paused(PauseReason::Bandwidth);
        }
    }
    // Then each, in order, as high as it fits.
    for &i in order {
        let t = &tracks[i];
        let (Decision::Layer(mut layer), Some(top)) = (out[i], t.top()) else {
            continue;
        };
        while layer < top {
            let extra = t.cost(layer + 1).saturating_sub(t.cost(layer));
            if extra > budget {
                break;
            }
            budget -= extra;
            layer += 1;
        }
        out[i] = Decision::Layer(layer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: [u64; 3] = [150_000, 500_000, 1_500_000];

    fn camera(id: usize, rates: &[u64]) -> VideoTrack<'_> {
        VideoTrack {
            id,
            class: Class::Camera,
            spoke: None,
            rates,
            max_layer: usize::MAX,
            visible: true,
        }
    }

    /// Runs an allocation and returns every decision in force, by id.
    fn run(
        a: &mut Allocator,
        audio: u64,
        tracks: &[VideoTrack<'_>],
        now: Instant,
    ) -> Vec<Decision> {
        a.allocate(audio, tracks, now, |_, _| {});
        tracks.iter().map(|t| a.decision(t.id).unwrap()).collect()
    }

    #[test]
    fn the_rate_meter_measures_the_last_second() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        // 1,000 bytes every 10 ms: 800 kbit/s.
        for i in 0..200 {
            m.add(1_000, t0 + Duration::from_millis(10 * i));
        }
        let r = m.bits_per_second(t0 + Duration::from_millis(2_000));
        assert!((700_000..=900_000).contains(&r), "{r}");
        assert!(
            (700_000..=900_000).contains(&m.typical()),
            "{}",
            m.typical()
        );
        assert_eq!(m.bits_per_second(t0 + Duration::from_secs(4)), 0);
        // Silent: the typical rate is kept.
        m.add(1_000, t0 + Duration::from_secs(4));
        assert!(
            (700_000..=900_000).contains(&m.typical()),
            "{}",
            m.typical()
        );
    }

    #[test]
    fn without_an_estimate_everything_gets_its_best_layer() {
        let mut a = Allocator::default();
        let now = Instant::now();
        let got = run(&mut a, 0, &[camera(1, &THREE), camera(2, &[800_000])], now);
        assert_eq!(got, vec![Decision::Layer(2), Decision::Layer(0)]);
    }

    #[test]
    fn every_camera_gets_its_lowest_layer_before_any_gets_more() {
        let mut a = Allocator::default();
        a.set_estimate(600_000);
        let now = Instant::now();
        // 600k * 0.95 - 64k audio = 506k: three lowest layers (450k), nothing more fits.
        let tracks = [camera(1, &THREE), camera(2, &THREE), camera(3, &THREE)];
        assert_eq!(
            run(&mut a, 64_000, &tracks, now),
            vec![Decision::Layer(0); 3]
        );
    }

    #[test]
    fn audio_comes_off_the_budget_and_what_does_not_fit_is_paused() {
        let mut a = Allocator::default();
        a.set_estimate(300_000);
        let now = Instant::now();
        // 285k - 64k = 221k: one lowest layer (150k), the second does not fit.
        let tracks = [camera(1, &THREE), camera(2, &THREE)];
        assert_eq!(
            run(&mut a, 64_000, &tracks, now),
            vec![Decision::Layer(0), Decision::Paused(PauseReason::Bandwidth)]
        );
    }

    #[test]
    fn screens_then_recent_speakers_come_first() {
        let mut a = Allocator::default();
        a.set_estimate(2_100_000);
        let now = Instant::now();
        let mut quiet = camera(1, &THREE);
        quiet.spoke = Some(now - RECENT_SPEECH);
        let mut speaker = camera(2, &THREE);
        speaker.spoke = Some(now);
        let screen = VideoTrack {
            class: Class::Screen,
            ..camera(3, &[1_200_000])
        };
        // 1995k: all three lowest (150 + 150 + 1200 = 1500k), 495k left: the speaker to the
        // middle layer (350k more), the quiet one stays low.
        assert_eq!(
            run(&mut a, 0, &[quiet, speaker, screen], now),
            vec![Decision::Layer(0), Decision::Layer(1), Decision::Layer(0)]
        );
    }

    #[test]
    fn downgrades_are_immediate_and_upgrades_wait_for_the_hold_and_a_margin() {
        let mut a = Allocator::default();
        let t0 = Instant::now();
        let tracks = [camera(1, &THREE)];
        a.set_estimate(2_000_000);
        assert_eq!(run(&mut a, 0, &tracks, t0), vec![Decision::Layer(2)]);
        a.set_estimate(700_000);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(run(&mut a, 0, &tracks, t1), vec![Decision::Layer(1)]);
        // The link is back at once, but the hold keeps the layer.
        a.set_estimate(2_000_000);
        assert_eq!(
            run(
                &mut a,
                0,
                &tracks,
                t1 + UPGRADE_HOLD - Duration::from_millis(1)
            ),
            vec![Decision::Layer(1)]
        );
        // Past the hold, an estimate where the top layer fits KEEP_SHARE but not RAISE_SHARE
        // (1.5M / 0.95 = 1.58M < 1.7M < 1.5M / 0.8 = 1.875M) still does not raise it.
        a.set_estimate(1_700_000);
        let t2 = t1 + UPGRADE_HOLD;
        assert_eq!(run(&mut a, 0, &tracks, t2), vec![Decision::Layer(1)]);
        // ...nor does it lower a top layer already taken (the band between the two shares).
        a.set_estimate(1_900_000);
        assert_eq!(run(&mut a, 0, &tracks, t2), vec![Decision::Layer(2)]);
        a.set_estimate(1_700_000);
        assert_eq!(run(&mut a, 0, &tracks, t2), vec![Decision::Layer(2)]);
    }

    #[test]
    fn a_paused_track_resumes_when_it_fits_again_and_changes_are_reported_once() {
        let mut a = Allocator::default();
        let t0 = Instant::now();
        let tracks = [camera(1, &THREE)];
        a.set_estimate(100_000);
        let mut changes = Vec::new();
        a.allocate(0, &tracks, t0, |id, d| changes.push((id, d)));
        a.allocate(0, &tracks, t0, |id, d| changes.push((id, d)));
        assert_eq!(changes, vec![(1, Decision::Paused(PauseReason::Bandwidth))]);
        a.set_estimate(400_000);
        let t1 = t0 + Duration::from_secs(1);
        a.allocate(0, &tracks, t1, |id, d| changes.push((id, d)));
        assert_eq!(
            changes.len(),
            1,
            "not before the hold: the pause was a downgrade"
        );
        a.allocate(0, &tracks, t1 + UPGRADE_HOLD, |id, d| changes.push((id, d)));
        assert_eq!(changes[1], (1, Decision::Layer(0)));
    }

    #[test]
    fn a_flowing_lowest_layer_is_kept_through_a_short_dip_and_paused_when_it_lasts_or_is_deep() {
        let mut a = Allocator::default();
        let t0 = Instant::now();
        let low = [50_000, 600_000];
        let tracks = [camera(1, &low), camera(2, &low)];
        // Both at their lowest layer (100 kbit/s of video, 60 of audio).
        a.set_estimate(200_000);
        assert_eq!(
            run(&mut a, 60_000, &tracks, t0),
            vec![Decision::Layer(0); 2]
        );
        // A dip: 120 kbit/s leaves room for neither (54 kbit/s after audio), twice it for both.
        a.set_estimate(120_000);
        let mut changes = Vec::new();
        a.allocate(60_000, &tracks, t0, |id, d| changes.push((id, d)));
        let later = t0 + PAUSE_GRACE - Duration::from_millis(1);
        a.allocate(60_000, &tracks, later, |id, d| changes.push((id, d)));
        assert!(changes.is_empty(), "kept through the grace: {changes:?}");
        assert_eq!(a.probe_target(), None, "no probe while short");
        // Over before the grace ends: nothing happened, and a later dip has a grace of its own.
        a.set_estimate(200_000);
        run(&mut a, 60_000, &tracks, later);
        a.set_estimate(120_000);
        let dip = t0 + Duration::from_secs(10);
        assert_eq!(
            run(&mut a, 60_000, &tracks, dip),
            vec![Decision::Layer(0); 2]
        );
        // Lasting: paused (the second in order; the first still fits in 54 kbit/s).
        assert_eq!(
            run(&mut a, 60_000, &tracks, dip + PAUSE_GRACE),
            vec![Decision::Layer(0), Decision::Paused(PauseReason::Bandwidth)]
        );
        // Short of the 95 % share but within the whole estimate (165 kbit/s: 105 after audio):
        // kept however long it lasts.
        let mut a = Allocator::default();
        a.set_estimate(200_000);
        run(&mut a, 60_000, &tracks, t0);
        a.set_estimate(165_000);
        assert_eq!(
            run(&mut a, 60_000, &tracks, t0 + PAUSE_GRACE * 3),
            vec![Decision::Layer(0); 2]
        );
        // Deep (not even in twice the estimate): paused at once.
        let mut a = Allocator::default();
        a.set_estimate(200_000);
        run(&mut a, 60_000, &tracks, t0);
        a.set_estimate(50_000);
        assert_eq!(
            run(&mut a, 60_000, &tracks, t0),
            vec![Decision::Paused(PauseReason::Bandwidth); 2]
        );
    }

    /// Seen in the long browser calls with adaptive video on: a screen share starts and, counted
    /// at its nominal rate until measured, first paused both cameras (frozen until a keyframe
    /// after they came back), then, once that was fixed, lowered them for the 36 ms until its
    /// first keyframe measured it (a picture stood still for 3-4 s in Firefox). A guess moves
    /// nobody; the measurement does.
    #[test]
    fn a_new_unmeasured_screen_moves_no_camera_until_it_is_measured() {
        let mut a = Allocator::default();
        let t0 = Instant::now();
        let two = [50_000, 500_000];
        let cameras = [camera(1, &two), camera(2, &two)];
        // 1.7M: 1.36M - 120k of audio to raise in: both at their top (1.0M).
        a.set_estimate(1_700_000);
        assert_eq!(
            run(&mut a, 120_000, &cameras, t0),
            vec![Decision::Layer(1); 2]
        );
        // A screen share, not measured yet (1.5M nominal, which would not fit beside the
        // cameras in 1.7M x 0.95 - 120k = 1.495M): its lowest layer, the cameras untouched.
        let screen = |rates| VideoTrack {
            class: Class::Screen,
            ..camera(3, rates)
        };
        let t1 = t0 + Duration::from_secs(10);
        let with_screen = [cameras[0], cameras[1], screen(&[0])];
        assert_eq!(
            run(&mut a, 120_000, &with_screen, t1),
            vec![Decision::Layer(1), Decision::Layer(1), Decision::Layer(0)]
        );
        // Still not measured at the next decision (its first packets not in): the same.
        let t2 = t1 + Duration::from_millis(20);
        assert_eq!(
            run(&mut a, 120_000, &with_screen, t2),
            vec![Decision::Layer(1), Decision::Layer(1), Decision::Layer(0)]
        );
        // Measured at 300k: everything fits as it is (1.3M of 1.495M).
        let t3 = t2 + Duration::from_millis(500);
        let measured = [cameras[0], cameras[1], screen(&[300_000])];
        assert_eq!(
            run(&mut a, 120_000, &measured, t3),
            vec![Decision::Layer(1), Decision::Layer(1), Decision::Layer(0)]
        );
        // Measured at 1.2M, a share that does need the room: served first, the cameras go to
        // their lowest layers (1.2M + 2 x 50k), not paused.
        let t4 = t3 + Duration::from_millis(500);
        let heavy = [cameras[0], cameras[1], screen(&[1_200_000])];
        assert_eq!(
            run(&mut a, 120_000, &heavy, t4),
            vec![Decision::Layer(0), Decision::Layer(0), Decision::Layer(0)]
        );
        // On a weak link the guess is not given the benefit of the doubt when even twice the
        // estimate cannot carry it (1.5M > 1.2M - 120k): the new screen is paused, the cameras
        // keep their room.
        let mut a = Allocator::default();
        a.set_estimate(600_000);
        let before = run(&mut a, 120_000, &cameras, t0);
        let after = run(&mut a, 120_000, &with_screen, t1);
        assert_eq!(after[2], Decision::Paused(PauseReason::Bandwidth));
        assert_eq!(after[..2], before[..]);
    }

    #[test]
    fn the_first_estimate_lowers_without_a_hold_and_the_probe_may_follow_at_once() {
        let mut a = Allocator::default();
        let t0 = Instant::now();
        let tracks = [camera(1, &THREE), camera(2, &THREE)];
        // Joined without an estimate: the top layers.
        assert_eq!(run(&mut a, 0, &tracks, t0), vec![Decision::Layer(2); 2]);
        // The estimator's start (1 Mbit/s): lowered to what fits...
        a.set_estimate(1_000_000);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            run(&mut a, 0, &tracks, t1),
            vec![Decision::Layer(1), Decision::Layer(0)]
        );
        // ...with the next step to probe for at once, and no hold on the raise once the link
        // shows it carries more.
        assert!(a.probe_target().is_some());
        a.set_estimate(4_000_000);
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(run(&mut a, 0, &tracks, t2), vec![Decision::Layer(2); 2]);
        // A later fall is the link: the hold follows it.
        a.set_estimate(1_000_000);
        run(&mut a, 0, &tracks, t2);
        a.set_estimate(4_000_000);
        assert_eq!(
            run(&mut a, 0, &tracks, t2 + UPGRADE_HOLD / 2),
            vec![Decision::Layer(1), Decision::Layer(0)]
        );
        assert_eq!(a.probe_target(), None);
    }

    #[test]
    fn a_change_of_order_with_the_estimate_steady_starts_no_hold() {
        let mut a = Allocator::default();
        let t0 = Instant::now();
        // Room for both lowest layers and one middle (150 + 150 + 350 of 900 x 0.8).
        a.set_estimate(900_000);
        let (first, second) = (camera(1, &THREE), camera(2, &THREE));
        assert_eq!(
            run(&mut a, 0, &[first, second], t0),
            vec![Decision::Layer(1), Decision::Layer(0)]
        );
        // The second's publisher speaks: the middle layer changes hands, and with the estimate
        // as it was, no hold: a raise the estimate allows comes at once.
        let mut speaking = second;
        speaking.spoke = Some(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            run(&mut a, 0, &[first, speaking], t1),
            vec![Decision::Layer(0), Decision::Layer(1)]
        );
        a.set_estimate(2_500_000);
        assert_eq!(
            run(&mut a, 0, &[first, speaking], t1),
            vec![Decision::Layer(1), Decision::Layer(2)]
        );
        // A lower estimate is the link: the hold follows.
        a.set_estimate(900_000);
        run(&mut a, 0, &[first, speaking], t1);
        a.set_estimate(2_500_000);
        assert_eq!(
            run(&mut a, 0, &[first, speaking], t1 + UPGRADE_HOLD / 2),
            vec![Decision::Layer(0), Decision::Layer(1)]
        );
    }

    #[test]
    fn the_probe_target_is_what_the_next_step_up_needs() {
        let mut a = Allocator::default();
        let now = Instant::now();
        let tracks = [camera(1, &THREE), camera(2, &THREE)];
        // 700k * 0.95 = 665k: both lowest (300k), the first to the middle (+350k = 650k).
        a.set_estimate(700_000);
        a.allocate(0, &tracks, now, |_, _| {});
        assert_eq!(a.decision(1), Some(Decision::Layer(1)));
        assert_eq!(a.decision(2), Some(Decision::Layer(0)));
        // Next: the first camera's top layer (+1M) on the 650k in use, in RAISE_SHARE.
        assert_eq!(a.probe_target(), Some((1_650_000.0 / RAISE_SHARE) as u64));
        // Everything fits: nothing to probe for.
        a.set_estimate(10_000_000);
        a.allocate(0, &tracks, now + UPGRADE_HOLD, |_, _| {});
        assert_eq!(a.probe_target(), None);
        // Without an estimate nothing is limited, and nothing probed.
        let mut b = Allocator::default();
        b.allocate(0, &tracks, now, |_, _| {});
        assert_eq!(b.probe_target(), None);
    }

    #[test]
    fn a_hidden_track_pauses_at_once_and_a_display_size_caps_the_layer() {
        let mut a = Allocator::default();
        let now = Instant::now();
        a.set_estimate(5_000_000);
        let mut small = camera(1, &THREE);
        small.max_layer = 0;
        let mut hidden = camera(2, &THREE);
        hidden.visible = false;
        assert_eq!(
            run(&mut a, 0, &[small, hidden], now),
            vec![Decision::Layer(0), Decision::Paused(PauseReason::Hidden)]
        );
        // Hiding is not a downgrade for bandwidth: showing it again is immediate.
        hidden.visible = true;
        assert_eq!(
            run(&mut a, 0, &[small, hidden], now),
            vec![Decision::Layer(0), Decision::Layer(2)]
        );
        // Neither is a tile that shrinks: when it grows again, it gets the layer at once.
        hidden.max_layer = 1;
        assert_eq!(
            run(&mut a, 0, &[small, hidden], now),
            vec![Decision::Layer(0), Decision::Layer(1)]
        );
        small.max_layer = usize::MAX;
        hidden.max_layer = usize::MAX;
        assert_eq!(
            run(&mut a, 0, &[small, hidden], now),
            vec![Decision::Layer(2), Decision::Layer(2)]
        );
        // A drop of the estimate still holds raises back.
        a.set_estimate(1_200_000);
        assert_eq!(
            run(&mut a, 0, &[small, hidden], now),
            vec![Decision::Layer(1), Decision::Layer(1)]
        );
        a.set_estimate(5_000_000);
        assert_eq!(
            run(&mut a, 0, &[small, hidden], now + UPGRADE_HOLD / 2),
            vec![Decision::Layer(1), Decision::Layer(1)]
        );
        assert_eq!(
            run(&mut a, 0, &[small, hidden], now + UPGRADE_HOLD),
            vec![Decision::Layer(2), Decision::Layer(2)]
        );
    }

    #[test]
    fn a_resume_on_trial_sends_the_first_paused_track_until_it_ends() {
        let mut a = Allocator::default();
        let now = Instant::now();
        // 100 kbit/s with 50 kbit/s of audio: neither camera's lowest layer (150k) fits.
        a.set_estimate(100_000);
        let (first, second) = (camera(1, &THREE), camera(2, &THREE));
        let paused = Decision::Paused(PauseReason::Bandwidth);
        assert_eq!(
            run(&mut a, 50_000, &[first, second], now),
            vec![paused, paused]
        );
        let later = now + UPGRADE_HOLD;
        assert_eq!(
            run(&mut a, 50_000, &[first, second], later),
            vec![paused, paused]
        );
        assert!(
            a.probe_target().is_some(),
            "the link is what holds them back"
        );
        // On trial: the first in order gets its lowest layer, whatever the estimate says.
        a.try_resume(later + Duration::from_secs(1));
        assert_eq!(
            run(&mut a, 50_000, &[first, second], later),
            vec![Decision::Layer(0), paused]
        );
        // The same track for the whole trial, whatever the order becomes meanwhile.
        let mut speaking = second;
        speaking.spoke = Some(later);
        assert_eq!(
            run(
                &mut a,
                50_000,
                &[first, speaking],
                later + Duration::from_millis(500)
            ),
            vec![Decision::Layer(0), paused]
        );
        // The trial over and the estimate no better: paused again, and a hold starts.
        let after = later + Duration::from_secs(1);
        assert_eq!(
            run(&mut a, 50_000, &[first, second], after),
            vec![paused, paused]
        );
        a.set_estimate(5_000_000);
        assert_eq!(
            run(&mut a, 50_000, &[first, second], after + UPGRADE_HOLD / 2),
            vec![paused, paused]
        );
        // A trial the estimate confirms keeps the track: 230k leaves room to keep one lowest
        // layer (95 %), not to resume one (80 %).
        a.set_estimate(230_000);
        let later = after + UPGRADE_HOLD;
        a.try_resume(later + Duration::from_secs(1));
        assert_eq!(
            run(&mut a, 50_000, &[first, second], later),
            vec![Decision::Layer(0), paused]
        );
        assert_eq!(
            run(
                &mut a,
                50_000,
                &[first, second],
                later + Duration::from_secs(1)
            ),
            vec![Decision::Layer(0), paused]
        );
    }

    #[test]
    fn among_equals_the_track_flowing_keeps_the_room_and_resumes_come_before_raises() {
        let mut a = Allocator::default();
        let now = Instant::now();
        // Room for one lowest layer (150k) only.
        a.set_estimate(200_000);
        let (mut first, mut second) = (camera(1, &THREE), camera(2, &THREE));
        let paused = Decision::Paused(PauseReason::Bandwidth);
        // The second's publisher speaks: its camera takes the room.
        second.spoke = Some(now);
        assert_eq!(
            run(&mut a, 0, &[first, second], now),
            vec![paused, Decision::Layer(0)]
        );
        // Now both speak: equals, and the one flowing keeps flowing (subscription order alone
        // would hand the room back to the first: a pause, a resume, two keyframes).
        first.spoke = Some(now);
        let later = now + UPGRADE_HOLD;
        assert_eq!(
            run(&mut a, 0, &[first, second], later),
            vec![paused, Decision::Layer(0)]
        );
        // The next step up is the first's resume (lowest layers first), not the second's
        // middle layer.
        assert_eq!(
            a.probe_target(),
            Some(((150_000 + 150_000) as f64 / RAISE_SHARE) as u64)
        );
        assert_eq!(
            a.probe_ceiling(),
            Some(((3_000_000) as f64 / RAISE_SHARE) as u64)
        );
    }

    #[test]
    fn unmeasured_layers_cost_their_nominal_rate_and_tracks_that_left_are_forgotten() {
        let mut a = Allocator::default();
        let now = Instant::now();
        // 1.2M: the measured low layer (100k), the unmeasured middle (nominal 500k: +400k),
        // not the unmeasured top (+1M).
        a.set_estimate(1_300_000);
        let rates = [100_000, 0, 0];
        assert_eq!(
            run(&mut a, 0, &[camera(1, &rates)], now),
            vec![Decision::Layer(1)]
        );
        a.allocate(0, &[], now, |_, _| {});
        assert_eq!(a.decision(1), None);
        // Two layers (the SDK's q;f of a small camera): the low one costs the low layer's
        // nominal 50k, not the middle's.
        let mut a = Allocator::default();
        a.set_estimate(100_000);
        assert_eq!(
            run(&mut a, 0, &[camera(1, &[0, 0])], now),
            vec![Decision::Layer(0)]
        );
    }
}

//! A subscriber's video fitted to its link: the room's side of [`crate::sfu::allocation`].
//! Gathers what the allocator needs (the subscriber's tracks, their layers' measured rates,
//! who spoke last) and carries out its decisions: a layer cap per slot (the forwarding path
//! picks the best layer sending under it, `forwarding::choose_layer`), pauses and resumes of
//! down-tracks, and `TrackPaused` events for the client.

use std::time::{Duration, Instant};

use super::call::DYNACAST_HOLD;
use super::{CallKey, Rooms, SessionKey};
use crate::sfu::TrackKind;
use crate::sfu::allocation::{Class, Decision, VideoTrack};
use crate::sfu::negotiation::TrackId;
use crate::sfu::session::SessionEvent;

/// How often a subscriber's allocation is decided again while estimates keep coming (each
/// feedback report brings one, several a second): a drop below what is allocated is acted on
/// at once, anything else waits this long.
pub(super) const ALLOCATE_INTERVAL: Duration = Duration::from_millis(500);

/// Per-packet overhead on the subscriber's link beside the payload (IP, UDP, RTP header and
/// extensions, SRTP tag): what a layer costs is its payload rate plus this per packet. An
/// average, so the meters count it per packet instead of measuring each packet's headers.
pub(super) const PACKET_OVERHEAD: usize = 60;

impl Rooms {
    /// A new bandwidth estimate of `key`'s link (bits per second).
    pub(super) fn on_estimate(&mut self, key: SessionKey, bits_per_second: u64, now: Instant) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.probe.measured = Some(bits_per_second);
        let trial = m.probe.trial && m.probe.until.is_some_and(|u| now < u);
        let budget = if trial {
            bits_per_second.max(m.probe.goal)
        } else {
            bits_per_second
        };
        let dropped = m.allocator.estimate().is_some_and(|e| budget < e);
        m.allocator.set_estimate(budget);
        let due = m
            .allocated_at
            .is_none_or(|t| now.saturating_duration_since(t) >= ALLOCATE_INTERVAL);
        if due || dropped {
            self.allocate(key, now);
        }
    }

    /// Decides again which layer of each video track `key` receives, and carries it out.
    pub(super) fn allocate(&mut self, key: SessionKey, now: Instant) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.allocated_at = Some(now);
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let Some(call) = self.calls.get(&m.call) else {
            return;
        };
        // Rates per slot, then the tracks borrowing them (a few slots per subscriber; this
        // runs a few times a second, not per packet).
        let mut audio = 0;
        let mut inputs: Vec<(usize, Class, Option<Instant>, Vec<u64>)> = Vec::new();
        for (i, slot) in m.slots.iter().enumerate() {
            let Some(t) = m.negotiation.track(i).and_then(|tid| call.tracks.get(&tid)) else {
                continue;
            };
            // A muted track sends nothing to anyone: it takes no share.
            if slot.down.is_none() || t.muted {
                continue;
            }
            if t.info.kind.is_audio() {
                audio += t
                    .layers
                    .iter()
                    .map(|l| l.rate.bits_per_second(now))
                    .sum::<u64>();
                continue;
            }
            let class = if t.info.kind == TrackKind::Screen {
                Class::Screen
            } else {
                Class::Camera
            };
            let spoke = self.members.get(&t.owner).and_then(|o| o.spoke);
            // Typical rates, not the last second's: a keyframe or a layer the publisher just
            // stopped (dynacast) must not move the subscriber's layers.
            let rates = t
                .layers
                .iter()
                .map(|l| match l.rate.typical() {
                    0 => l.rate.bits_per_second(now),
                    typical => typical,
                })
                .collect();
            inputs.push((i, class, spoke, rates));
        }
        let tracks: Vec<VideoTrack<'_>> = inputs
            .iter()
            .map(|(i, class, spoke, rates)| VideoTrack {
                id: *i,
                class: *class,
                spoke: *spoke,
                rates,
                max_layer: usize::MAX,
                visible: true,
            })
            .collect();
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let mut changes = Vec::new();
        m.allocator
            .allocate(audio, &tracks, now, |slot, d| changes.push((slot, d)));
        // What the subscriber's video takes now, at the layers decided (measured rates).
        let video: u64 = tracks
            .iter()
            .map(|t| match m.allocator.decision(t.id) {
                Some(Decision::Layer(l)) => t.rates.get(l).copied().unwrap_or(0),
                _ => 0,
            })
            .sum();
        plan_probe(m, video, audio, now);
        let call = m.call;
        let mut touched: Vec<TrackId> = Vec::new();
        for (i, decision) in changes {
            if let Some(tid) = m.negotiation.track(i) {
                touched.push(tid);
            }
            let Some(ms) = m.slots.get_mut(i) else {
                continue;
            };
            let Some(down) = ms.down.as_mut() else {
                continue;
            };
            let was = ms.paused;
            match decision {
                Decision::Layer(cap) => {
                    ms.layer_cap = cap;
                    ms.paused = None;
                    down.set_paused(false);
                }
                Decision::Paused(reason) => {
                    ms.paused = Some(reason);
                    down.set_paused(true);
                }
            }
            tracing::debug!(session = %m.req.session, mid = %ms.mid, ?decision, estimate = ?m.allocator.estimate(), "allocation changed");
            if was != ms.paused
                && let Some(track_id) = m.negotiation.track(i).and_then(|tid| {
                    self.calls
                        .get(&m.call)
                        .and_then(|c| c.tracks.get(&tid))
                        .map(|t| t.info.track_id.clone())
                })
            {
                self.outputs.push_back(super::Output::Event {
                    key,
                    event: SessionEvent::TrackPaused {
                        mid: ms.mid.clone(),
                        track_id,
                        reason: ms.paused,
                    },
                });
            }
        }
        for tid in touched {
            self.update_wanted_layers(call, tid, now);
        }
    }
}

impl Rooms {
    /// Dynacast: which layers of simulcast track `tid` any subscriber needs now (the layer its
    /// allocator allows, or none while paused). A needed layer the publisher was told to stop is
    /// asked for again at once; one nobody needs any more starts its [`DYNACAST_HOLD`]
    /// (the stop itself goes out from [`Rooms::stop_unwanted_layer`]).
    pub(super) fn update_wanted_layers(&mut self, call: CallKey, tid: TrackId, now: Instant) {
        // Part of adaptive video: off, publishers encode every layer.
        if !self.config.adaptive_video {
            return;
        }
        let Some(t) = self
            .calls
            .get_mut(&call)
            .and_then(|c| c.tracks.get_mut(&tid))
        else {
            return;
        };
        if !t.simulcast() {
            return;
        }
        let mut needed = [false; MAX_LAYERS];
        for &(sub, slot) in &t.subscribers {
            let Some(ms) = self.members.get(&sub).and_then(|m| m.slots.get(slot)) else {
                continue;
            };
            if ms.paused.is_none() {
                needed[ms.layer_cap.min(t.layers.len() - 1).min(MAX_LAYERS - 1)] = true;
            }
        }
        let mut ask = false;
        for (i, layer) in t.layers.iter_mut().enumerate() {
            let need = needed.get(i).copied().unwrap_or(false);
            if need {
                layer.unwanted_since = None;
                ask |= !layer.wanted;
                layer.wanted = true;
            } else if layer.wanted {
                layer.unwanted_since.get_or_insert(now);
            }
        }
        if ask {
            self.tell_wanted_layers(call, tid);
        }
    }

    /// On a packet of layer `layer` of `tid`: the publisher is told to stop it once nobody has
    /// needed it for [`DYNACAST_HOLD`]. Per packet: a comparison unless that is due.
    pub(super) fn stop_unwanted_layer(
        &mut self,
        call: CallKey,
        tid: TrackId,
        layer: usize,
        now: Instant,
    ) {
        let Some(l) = self
            .calls
            .get_mut(&call)
            .and_then(|c| c.tracks.get_mut(&tid))
            .and_then(|t| t.layers.get_mut(layer))
        else {
            return;
        };
        if l.wanted
            && l.unwanted_since
                .is_some_and(|since| now.saturating_duration_since(since) >= DYNACAST_HOLD)
        {
            l.wanted = false;
            l.unwanted_since = None;
            self.tell_wanted_layers(call, tid);
        }
    }

    /// Tells the publisher of `tid` which of its layers to send.
    fn tell_wanted_layers(&mut self, call: CallKey, tid: TrackId) {
        let Some(t) = self.calls.get(&call).and_then(|c| c.tracks.get(&tid)) else {
            return;
        };
        let rids = t
            .layers
            .iter()
            .filter(|l| l.wanted)
            .filter_map(|l| l.rid.clone())
            .collect();
        let (owner, mid) = (t.owner, t.info.mid.clone());
        tracing::debug!(%mid, ?rids, "layers wanted");
        self.outputs.push_back(super::Output::Event {
            key: owner,
            event: SessionEvent::LayersWanted { mid, rids },
        });
    }
}

/// How long a probe lasts: long enough for a few feedback reports to show what arrived, short
/// enough that a link which cannot carry it loses little (the copies are redundant anyway).
const PROBE_DURATION: Duration = Duration::from_millis(500);
/// The wait before the first probe and after one that proved its goal; doubled after each that
/// did not, up to [`PROBE_BACKOFF_MAX`] (a weak link is not overloaded every few seconds).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(32);
/// The most a probe adds, as a multiple of the video the subscriber receives (from its 500
/// kbit/s middle layer to the 1.5 Mbit/s top takes about 3; from the lowest, about 8).
const PROBE_MAX_RATIO: f64 = 8.0;
/// How long a trial lasts (a probe of a subscriber whose video is all paused: the paused video
/// resumed as if the estimate were the goal): the resumed layer's keyframe, then long enough
/// for the estimate to grow past what it sends (a few percent a second at most).
const TRIAL_DURATION: Duration = Duration::from_secs(3);
/// A probe aims this much above its goal: what arrives is measured a little short (feedback
/// intervals, the copies' missing headers).
const PROBE_OVERSHOOT: f64 = 1.1;

/// Starts a probe of `m`'s link when its allocator's next step up needs more than the estimate
/// says (and none ran lately); judges the previous one at the first decision after it. With all
/// its video paused, the probe is a trial of the paused video (see [`Probe`]).
///
/// [`Probe`]: super::member::Probe
fn plan_probe(m: &mut super::member::Member, video: u64, audio: u64, now: Instant) {
    let probe = &mut m.probe;
    if probe.until.is_some_and(|u| now < u) {
        return;
    }
    if probe.until.take().is_some() {
        let proved = if std::mem::take(&mut probe.trial) {
            // Back to the estimate as measured, for the next decision.
            if let Some(measured) = probe.measured {
                m.allocator.set_estimate(measured);
            }
            probe.measured.is_some_and(|e| e >= probe.goal)
        } else {
            m.allocator.estimate().is_some_and(|e| e >= probe.goal)
        };
        probe.backoff = if proved {
            PROBE_INTERVAL
        } else {
            (probe.backoff * 2).clamp(PROBE_INTERVAL, PROBE_BACKOFF_MAX)
        };
        probe.next = Some(now + probe.backoff);
        tracing::debug!(session = %m.req.session, proved, goal = probe.goal, estimate = ?m.allocator.estimate(), "probe ended");
    }
    let (Some(goal), Some(estimate)) = (m.allocator.probe_target(), m.allocator.estimate()) else {
        return;
    };
    if goal <= estimate || probe.next.is_some_and(|n| now < n) {
        return;
    }
    if probe.next.is_none() {
        // The first probe of a subscriber waits PROBE_INTERVAL like any other: its first
        // estimates are still settling.
        probe.next = Some(now + PROBE_INTERVAL);
        probe.backoff = PROBE_INTERVAL;
        return;
    }
    if video == 0 {
        // All its video paused: no packet to copy, and without a probe the estimate never
        // grows past what its audio proves (1.5 x that at most), so the video would stay paused
        // for good (seen in Firefox calls, issue 28: 30 s of a camera never received). The
        // paused video itself is the probe: resumed for a trial, kept if the estimate then
        // carries it, else paused again and the next trial waits twice as long.
        probe.trial = true;
        probe.ratio = 0.0;
        probe.credit = 0.0;
        probe.goal = goal;
        probe.until = Some(now + TRIAL_DURATION);
        m.allocator.set_estimate(goal);
        tracing::debug!(session = %m.req.session, goal, estimate, "probing by resuming");
        return;
    }
    // What the link must carry during the probe is the goal: the copies make up the difference
    // from what the subscriber receives now.
    let short = goal as f64 * PROBE_OVERSHOOT - (video + audio) as f64;
    probe.ratio = (short / video as f64).clamp(0.0, PROBE_MAX_RATIO);
    probe.credit = 0.0;
    probe.goal = goal;
    probe.until = Some(now + PROBE_DURATION);
    tracing::debug!(session = %m.req.session, goal, estimate, video, ratio = probe.ratio, "probing");
}

/// At most this many simulcast layers per track are tracked for dynacast (rtcd answers at most
/// three rids, as browsers send).
const MAX_LAYERS: usize = 8;

//! A subscriber's video fitted to its link: the room's side of [`crate::sfu::allocation`].
//! Gathers what the allocator needs (the subscriber's tracks, their layers' measured rates,
//! who spoke last) and carries out its decisions: a layer cap per slot (the forwarding path
//! picks the best layer sending under it, `forwarding::choose_layer`), pauses and resumes of
//! down-tracks, and `TrackPaused` events for the client.

use std::time::{Duration, Instant};

use super::{Rooms, SessionKey};
use crate::sfu::TrackKind;
use crate::sfu::allocation::{Class, Decision, VideoTrack};
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
        let dropped = m.allocator.estimate().is_some_and(|e| bits_per_second < e);
        m.allocator.set_estimate(bits_per_second);
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
            let rates = t
                .layers
                .iter()
                .map(|l| l.rate.bits_per_second(now))
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
        for (i, decision) in changes {
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
    }
}

//! The media path: a published track's packets to its subscribers, NACKs answered from the
//! retransmission buffer, keyframes asked of publishers. Nothing here allocates per packet.

use std::time::Instant;

use super::{CallKey, Rooms, SessionKey};
use crate::engine::Peer;
use crate::engine::peer::{SlotId, TrackKey};
use crate::media::packet::MediaPacket;
use crate::sfu::downtrack::{DownTrack, Forward};
use crate::sfu::negotiation::TrackId;
use crate::sfu::retransmit::RetransmitBuffer;
use crate::sfu::session::SessionEvent;
use crate::sfu::tenant_label;
use crate::sfu::voice::VoiceDetector;

impl Rooms {
    /// One packet of a published track to every subscriber.
    pub(super) fn forward(
        &mut self,
        key: SessionKey,
        track: TrackKey,
        packet: MediaPacket,
        now: Instant,
    ) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let Some(&tid) = m.published.get(&track) else {
            // Refused (counted), or its section no longer sends.
            if let Some(counter) = m
                .opened
                .values()
                .find(|o| o.track == track)
                .and_then(|o| m.refused.get(&o.mid))
            {
                counter.inc();
            }
            return;
        };
        let call_key = m.call;
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let Some(t) = call.tracks.get_mut(&tid) else {
            return;
        };
        if t.rid.is_some() && packet.ssrc != t.ssrc {
            // Another simulcast layer: not forwarded yet (see `Published::rid`).
            return;
        }
        let mut voice = None;
        if t.muted {
            t.counters.muted.inc();
            if let Some((_, detector)) = t.vad.as_mut()
                && detector.speaking()
            {
                *detector = VoiceDetector::default();
                voice = Some(false);
            }
        } else if let Some((id, detector)) = t.vad.as_mut() {
            let level = packet
                .extensions
                .get(*id)
                .and_then(|b| b.first().copied())
                .map(|b| b & 0x7f);
            voice = level.and_then(|l| detector.observe(l));
        }
        let muted = t.muted;
        let mut want_keyframe = false;
        if !muted {
            if let Some(buffer) = t.buffer.as_mut() {
                buffer.insert(packet.clone());
            }
            let mut sent = 0u64;
            for &(sub, slot) in &t.subscribers {
                let Some(s) = self.members.get_mut(&sub) else {
                    continue;
                };
                // Before DTLS is up there are no SRTP keys: nothing can be sent yet.
                if !s.peer.is_connected() {
                    continue;
                }
                let Some(ms) = s.slots.get_mut(slot) else {
                    continue;
                };
                let Some(down) = ms.down.as_mut() else {
                    continue;
                };
                if let Forward::Send(header) = down.forward(&packet, now) {
                    if let Err(e) =
                        s.peer
                            .send_rtp(ms.id, &header, &packet, packet.payload.clone(), now)
                    {
                        tracing::debug!(error = %e, "forwarding a packet failed");
                    } else {
                        sent += 1;
                    }
                    if self.dirty_set.insert(sub) {
                        self.dirty.push(sub);
                    }
                }
                want_keyframe |= down.poll_keyframe_request(now).is_some();
                if down.has_holes() {
                    want_keyframe |= send_fills(&mut s.peer, ms.id, down, now);
                }
            }
            if sent > 0 {
                self.forwarded
                    .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                t.counters.forwarded.inc_by(sent);
                t.counters.bytes.inc_by(sent * packet.payload.len() as u64);
            }
        }
        if want_keyframe {
            self.request_keyframe(&call_key, tid, now);
        }
        if let Some(speaking) = voice
            && let Some(m) = self.members.get(&key)
        {
            let (owner_session, owner_user) = (m.req.session.clone(), m.req.user.clone());
            self.notify(&call_key, key, || SessionEvent::VoiceActivity {
                session: owner_session.clone(),
                user: owner_user.clone(),
                speaking,
            });
        }
    }

    /// A PLI to the publisher of `tid`, at most one per keyframe interval.
    pub(super) fn request_keyframe(&mut self, call: &CallKey, tid: TrackId, now: Instant) {
        let Some(t) = self
            .calls
            .get_mut(call)
            .and_then(|c| c.tracks.get_mut(&tid))
        else {
            return;
        };
        if t.info.kind.is_audio() {
            return;
        }
        if let Some(last) = t.last_pli
            && now.saturating_duration_since(last) < self.config.keyframe_interval
        {
            return;
        }
        t.last_pli = Some(now);
        let (owner, key, ssrc) = (t.owner, t.key, t.ssrc);
        if let Some(p) = self.members.get_mut(&owner) {
            p.peer.request_keyframe(key, ssrc, now);
            self.metrics
                .sfu
                .pli_sent
                .get_or_create(&tenant_label(&p.req.tenant))
                .inc();
            self.mark(owner);
        }
    }

    pub(super) fn answer_nack(
        &mut self,
        key: SessionKey,
        slot: SlotId,
        lost: Vec<u16>,
        now: Instant,
    ) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        // A slot whose track ended still answers for what it sent (with padding: the packets
        // are gone), or the subscriber's jitter buffer would wait on its last holes.
        let tid = m.negotiation.track(slot.0 as usize);
        let call = m.call;
        let Some(ms) = m.slots.get_mut(slot.0 as usize) else {
            return;
        };
        let Some(down) = ms.down.as_mut() else {
            return;
        };
        let nothing;
        let buffer = match tid.and_then(|tid| {
            self.calls
                .get(&call)
                .and_then(|c| c.tracks.get(&tid))
                .and_then(|t| t.buffer.as_ref())
        }) {
            Some(buffer) => buffer,
            None => {
                nothing = RetransmitBuffer::empty();
                &nothing
            }
        };
        let mut resend = Vec::new();
        let unrepairable = down.on_nack(lost, buffer, now, |r| resend.push(r));
        for r in resend {
            if let Err(e) = m.peer.send_rtp(ms.id, &r.header, r.packet, r.payload, now) {
                tracing::debug!(error = %e, "retransmission failed");
            }
        }
        let lost_frame = send_fills(&mut m.peer, ms.id, down, now);
        if unrepairable > 0 {
            self.metrics
                .sfu
                .nack_unrepairable
                .get_or_create(&tenant_label(&m.req.tenant))
                .inc_by(unrepairable as u64);
        }
        self.mark(key);
        // Loss the subscriber cannot repair: its decoder needs a keyframe, and waiting for its
        // own request costs seconds of frozen video.
        if let Some(tid) = tid
            && (unrepairable > 0 || lost_frame)
        {
            self.request_keyframe(&call, tid, now);
        }
    }

    /// Sends `event()` to every other session of `call` that subscribes.
    pub(super) fn notify(
        &mut self,
        call: &CallKey,
        from: SessionKey,
        event: impl Fn() -> SessionEvent,
    ) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        for &k in &c.members {
            if k == from {
                continue;
            }
            if self
                .members
                .get(&k)
                .is_some_and(|m| m.req.permissions.subscribe)
            {
                self.outputs.push_back(super::Output::Event {
                    key: k,
                    event: event(),
                });
            }
        }
    }
}

/// Sends every padding packet `down` has to close holes in its subscriber's sequence space
/// now ([`DownTrack::poll_fill`]); returns whether one closed a hole of the current source (a
/// lost frame: its publisher should be asked for a keyframe).
pub(super) fn send_fills(
    peer: &mut Peer,
    slot: SlotId,
    down: &mut DownTrack,
    now: Instant,
) -> bool {
    let mut lost_frame = false;
    while let Some(fill) = down.poll_fill(now) {
        lost_frame |= fill.current;
        if let Err(e) = peer.send_padding(slot, &fill.header, now) {
            tracing::debug!(error = %e, "padding failed");
        }
    }
    lost_frame
}

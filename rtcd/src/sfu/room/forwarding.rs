//! The media path: a published track's packets to its subscribers, NACKs answered from the
//! retransmission buffer, keyframes asked of publishers. Nothing here allocates per packet.

use std::time::Instant;

use super::allocating::PACKET_OVERHEAD;
use super::call::Layer;
use super::recording::Tap;
use super::{CallKey, Rooms, SessionKey};
use crate::engine::Peer;
use crate::engine::peer::{SlotId, TrackKey};
use crate::media::packet::MediaPacket;
use crate::sfu::downtrack::{DownTrack, Forward};
use crate::sfu::negotiation::TrackId;
use crate::sfu::session::SessionEvent;
use crate::sfu::tenant_label;
use crate::sfu::voice::VoiceDetector;

/// What a forwarded packet weighs on the subscriber's link beside its payload, as its bandwidth
/// estimate counts packets (RTP header and extensions, before SRTP): a probe's copies make up
/// what the media sent falls short of the probe's rate.
const PROBE_HEADER_BYTES: usize = 24;
/// The most RTX copies one forwarded packet is followed by: twice its share of the probe
/// (`Probe::ratio`) when the video runs behind, never more than this.
const PROBE_MAX_COPIES: f64 = 8.0;

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
        let recording = &mut call.recording;
        let Some(t) = call.tracks.get_mut(&tid) else {
            return;
        };
        let Some(layer) = t.layer_of(packet.ssrc) else {
            // A simulcast SSRC not (yet) bound to a layer.
            return;
        };
        let simulcast = t.simulcast();
        if packet.keyframe {
            // Per keyframe, not per packet: how long a keyframe request took to be answered,
            // when a subscriber's picture stalls.
            tracing::debug!(track = %t.info.track_id, layer, ssrc = packet.ssrc, seq = packet.sequence, "keyframe arrived");
            t.layers[layer].keyframes.keyframe(packet.timestamp);
        }
        let keyframe_due = t.layers[layer]
            .keyframes
            .due(now, self.config.keyframe_interval);
        let unwanted = t.layers[layer].unwanted_since.is_some();
        t.layers[layer].last_packet = Some(now);
        // A layer's picture size read for the first time: its subscribers' views are decided
        // again (a view that came before the size was known caps nothing until then, and
        // without an estimate nothing else would decide it again). A size that changes later
        // (a publisher scaling down under CPU load) waits for the next decision: switching
        // layers costs a keyframe of the publisher, the last thing a starved one needs.
        let first_size = packet
            .keyframe_size()
            .is_some_and(|size| t.layers[layer].size.replace(size).is_none());
        let sized: Vec<_> = if first_size {
            t.subscribers.iter().map(|&(sub, _)| sub).collect()
        } else {
            Vec::new()
        };
        t.layers[layer]
            .rate
            .add(packet.payload.len() + PACKET_OVERHEAD, now);
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
        let speaking = t.vad.as_ref().is_some_and(|(_, d)| d.speaking());
        let mut keyframes = std::mem::take(&mut self.keyframe_scratch);
        if keyframe_due {
            keyframes.push(packet.ssrc);
        }
        let mut recording_stopped = None;
        if let Some(rec) = recording.as_mut() {
            let tap = Tap {
                layer,
                packet: &packet,
                muted,
                voice,
            };
            if rec.tap(t, tap) {
                keyframes.push(packet.ssrc);
            }
            // It stopped on its own (maximum duration, full disk, write error): an atomic load.
            recording_stopped = rec.recorder.stopped_itself();
        }
        if !muted {
            if let Some(buffer) = t.layers[layer].buffer.as_mut() {
                buffer.insert(packet.clone());
            }
            let (mut sent, mut probes) = (0u64, 0u64);
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
                // A packet of another layer than the one forwarded: whether to move to it (or
                // away from a layer that stopped, or above the subscriber's cap).
                let before = down.source_ssrc();
                if simulcast && packet.ssrc != before {
                    let target = down.target_layer();
                    choose_layer(down, &t.layers, ms.layer_cap, now);
                    // A switch made at once is logged below as "layer switched".
                    if down.target_layer() != target && down.source_ssrc() == before {
                        tracing::debug!(session = %s.req.session, mid = %ms.mid, current = before, target = ?down.target_layer(), cap = ms.layer_cap, "layer choice");
                    }
                }
                let forwarded = down.forward(&packet, now);
                if simulcast && down.source_ssrc() != before {
                    tracing::debug!(session = %s.req.session, mid = %ms.mid, from = before, to = down.source_ssrc(), "layer switched");
                }
                if let Forward::Send(header) = forwarded {
                    let payload = header.payload(&packet);
                    let payload_len = payload.len();
                    if let Err(e) = s.peer.send_rtp(ms.id, &header, &packet, payload, now) {
                        tracing::debug!(error = %e, "forwarding a packet failed");
                    } else {
                        sent += 1;
                        if s.probe.copying(now) {
                            s.probe.carried += (payload_len + PROBE_HEADER_BYTES) as f64;
                        }
                        // A subscriber that never gets a track (issue 28): did rtcd send it?
                        if down.sender_stats().packets == 1 {
                            tracing::debug!(session = %s.req.session, mid = %ms.mid, ssrc = header.ssrc, source = packet.ssrc, payload_type = header.payload_type, "first packet forwarded");
                        }
                    }
                    // Probing the subscriber's link: RTX copies of its video whenever what it
                    // was sent falls behind the probe's rate. Paced by what was sent, not by a
                    // share of each packet: the video forwarded during a probe varied by half
                    // (64-166 kbit/s against 175 measured before it), and copies sized on it
                    // carried 60-90 % of the goal (a Firefox 140 weak page, issue 28).
                    let size = (payload_len + PROBE_HEADER_BYTES) as f64;
                    if !ms.audio && payload_len > 0 && s.probe.copying(now) {
                        let most = (2.0 * s.probe.ratio).ceil().min(PROBE_MAX_COPIES) as usize;
                        let mut copies = 0;
                        while copies < most && s.probe.owed(now) >= size {
                            let Some((copy, payload)) = down.probe_copy(&header, &packet) else {
                                break;
                            };
                            copies += 1;
                            s.probe.carried += size + 2.0;
                            match s.peer.send_rtp(ms.id, &copy, &packet, payload, now) {
                                Ok(()) => probes += 1,
                                Err(e) => tracing::debug!(error = %e, "a probe packet failed"),
                            }
                        }
                    }
                    if self.dirty_set.insert(sub) {
                        self.dirty.push(sub);
                    }
                }
                if let Some(ssrc) = down.poll_keyframe_request(now) {
                    keyframes.push(ssrc);
                }
                if down.has_holes() && send_fills(&mut s.peer, ms.id, down, now) {
                    keyframes.push(down.source_ssrc());
                }
            }
            if sent > 0 {
                self.forwarded
                    .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                t.counters.forwarded.inc_by(sent);
                t.counters.bytes.inc_by(sent * packet.payload.len() as u64);
            }
            if probes > 0 {
                t.counters.probe_packets.inc_by(probes);
            }
        }
        if unwanted {
            self.stop_unwanted_layer(call_key, tid, layer, now);
        }
        for sub in sized {
            self.allocate(sub, now);
        }
        keyframes.sort_unstable();
        keyframes.dedup();
        for &ssrc in &keyframes {
            self.request_keyframe(&call_key, tid, ssrc, now);
        }
        keyframes.clear();
        self.keyframe_scratch = keyframes;
        if let Some(reason) = recording_stopped {
            self.detach_recording(call_key, reason, now);
        }
        if speaking && let Some(m) = self.members.get_mut(&key) {
            m.spoke = Some(now);
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

    /// A PLI to the publisher of `tid` for the layer sent with `ssrc` (a down-track's current
    /// or target source), at most one per layer per keyframe interval: a request inside it is
    /// answered by the keyframe on its way, or deferred to the interval's end when that came
    /// before it ([`crate::sfu::keyframes`]).
    pub(super) fn request_keyframe(
        &mut self,
        call: &CallKey,
        tid: TrackId,
        ssrc: u32,
        now: Instant,
    ) {
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
        let Some(layer) = t.layer_of(ssrc).and_then(|i| t.layers.get_mut(i)) else {
            return;
        };
        if !layer.keyframes.request(now, self.config.keyframe_interval) {
            // Deferred: the keyframe asked for last has come and gone, this one needs a newer
            // one (sent at the interval's end); else the one on its way answers it.
            tracing::debug!(track = %t.info.track_id, ssrc, deferred = layer.keyframes.deferred(), "keyframe request held back");
            return;
        }
        tracing::debug!(track = %t.info.track_id, ssrc, "keyframe requested");
        let (owner, key) = (t.owner, t.key);
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
        // A slot whose track ended has no buffer: every number is answered as lost (padding).
        let track = tid.and_then(|tid| self.calls.get(&call).and_then(|c| c.tracks.get(&tid)));
        let buffers = |ssrc: u32| {
            track.and_then(|t| t.layer_of(ssrc).and_then(|i| t.layers[i].buffer.as_ref()))
        };
        let mut resend = Vec::new();
        let unrepairable = down.on_nack_layers(lost, buffers, now, |r| resend.push(r));
        let current = down.source_ssrc();
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
            self.request_keyframe(&call, tid, current, now);
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
        let sent = match fill.osn {
            Some(osn) => peer.send_rtx_fill(slot, &fill.header, osn, now),
            None => peer.send_padding(slot, &fill.header, now),
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "padding failed");
        }
    }
    lost_frame
}

/// Points a simulcast down-track at the layer its subscriber should get now: the best layer
/// sending at or under `cap` (the allocator's decision), else the lowest sending. A move from
/// a layer still sending happens at the new layer's next keyframe (requested); from a stopped
/// one, at once (its keyframe is waited for either way).
fn choose_layer(down: &mut DownTrack, layers: &[Layer], cap: usize, now: Instant) {
    let under_cap = layers.len().min(cap.saturating_add(1));
    let Some(desired) = (0..under_cap)
        .rev()
        .find(|&i| layers[i].active(now))
        .or_else(|| (under_cap..layers.len()).find(|&i| layers[i].active(now)))
    else {
        return;
    };
    let current = down.source_ssrc();
    let desired_ssrc = layers[desired].ssrc;
    match layers
        .iter()
        .position(|l| l.ssrc == current && current != 0)
    {
        // Already there: a pending switch elsewhere is no longer wanted.
        Some(i) if i == desired => down.set_target_layer(current),
        // Flowing: keep it until the new layer's keyframe. Waiting for a keyframe anyway (a
        // new subscriber, a loss): wait for the new layer's instead.
        Some(i) if layers[i].active(now) && !down.wants_keyframe() => {
            down.set_target_layer(desired_ssrc)
        }
        // Stopped, or a source that is no layer of this track.
        _ => down.switch_layer_now(desired_ssrc),
    }
}

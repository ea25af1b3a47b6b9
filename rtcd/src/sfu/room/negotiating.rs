//! Offers and answers: the client's receiving sections become slots, waiting tracks are placed
//! on them, and a slot starts or stops forwarding a track.

use std::collections::HashMap;
use std::time::Instant;

use super::forwarding::send_fills;
use super::member::MemberSlot;
use super::{Output, Rooms, SessionKey};
use crate::engine::peer::{Codec, HeaderExtension, SlotId};
use crate::media::packet::MediaKind;
use crate::media::sdp;
use crate::sfu::downtrack::{DownTrack, DownTrackConfig, ExtensionMap, PayloadTypeMap};
use crate::sfu::negotiation::{Offered, TrackId};
use crate::sfu::session::{SessionEvent, TrackInfo};
use crate::sfu::{SfuError, TrackKind};

impl Rooms {
    /// Asks the client for an offer with enough receiving sections for every track to send
    /// (when that is news: [`Negotiation::request`]).
    pub(super) fn negotiate(&mut self, key: SessionKey) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if let Some((audio, video)) = m.negotiation.request() {
            self.emit(key, SessionEvent::NegotiationNeeded { audio, video });
        }
    }

    /// Applies a client offer and answers it, placing every track this session should receive
    /// on a receiving section (module docs).
    pub(super) fn offer(
        &mut self,
        key: SessionKey,
        sdp: String,
        declared: HashMap<String, TrackKind>,
        now: Instant,
    ) -> Result<(), SfuError> {
        let sections = crate::sfu::check_offer(&sdp, &declared, self.config.max_sdp_bytes)?;
        let m = self.members.get_mut(&key).ok_or(SfuError::NotFound)?;
        tracing::trace!(session = %m.req.session, %sdp, "offer");
        m.peer
            .set_offer(&sdp, now)
            .map_err(|e| SfuError::InvalidArgument(format!("unusable SDP offer: {e}")))?;
        m.declared = declared;
        // New slots from the engine; sections the client no longer receives on.
        let engine_slots: Vec<(SlotId, String, bool, u32)> = m
            .peer
            .slots()
            .map(|s| (s.id, s.mid.clone(), s.kind == MediaKind::Audio, s.ssrc))
            .collect();
        for (id, mid, audio, ssrc) in engine_slots {
            let rtx_ssrc = None;
            if m.slots.iter().any(|s| s.id == id) {
                continue;
            }
            let i = m.negotiation.add_slot(audio);
            debug_assert_eq!(i, m.slots.len(), "slots are numbered alike");
            m.slots.push(MemberSlot {
                id,
                mid,
                audio,
                ssrc,
                rtx_ssrc,
                codecs: Vec::new(),
                extensions: Vec::new(),
                down: None,
                layer_cap: usize::MAX,
                paused: None,
                view: Default::default(),
            });
        }
        let offered: Vec<Offered> = m
            .slots
            .iter()
            .map(|slot| match sections.iter().find(|s| s.mid == slot.mid) {
                Some(s) if s.may_carry() => Offered::Receiving,
                Some(s) if s.receives() => Offered::SendsSimulcast,
                _ => Offered::NotReceiving,
            })
            .collect();
        let lost = m.negotiation.offer(|i| offered[i]);
        for (i, tid) in lost {
            self.unsubscribe(key, i, tid, now);
        }
        // Waiting tracks onto free slots of their media.
        let m = self.members.get_mut(&key).ok_or(SfuError::NotFound)?;
        let call_key = m.call;
        let cooling = m.negotiation.cooling();
        let mut placed = Vec::new();
        if m.req.permissions.subscribe
            && let Some(call) = self.calls.get(&call_key)
        {
            placed = m.negotiation.place(|tid| call.tracks.contains_key(&tid));
        }
        let directions: Vec<(SlotId, bool)> = m
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, m.negotiation.sends(i)))
            .collect();
        for (id, send) in directions {
            m.peer.set_slot_sending(id, send);
        }
        let answer = m
            .peer
            .answer(now)
            .map_err(|e| SfuError::InvalidArgument(format!("cannot answer this offer: {e}")))?;
        for s in m.peer.slots() {
            if let Some(ms) = m.slots.iter_mut().find(|x| x.id == s.id) {
                ms.codecs = s.codecs.clone();
                ms.extensions = s.extensions.clone();
                ms.rtx_ssrc = s.rtx_ssrc;
            }
        }
        let mut current = HashMap::new();
        if let Some(call) = self.calls.get(&call_key) {
            for (i, tid) in m.negotiation.busy() {
                let s = &m.slots[i];
                if let Some(t) = call.tracks.get(&tid) {
                    current.insert(
                        s.mid.clone(),
                        sdp::Msid {
                            stream: t.info.session.as_str().to_owned(),
                            track: t.info.track_id.clone(),
                        },
                    );
                }
            }
        }
        let answer_sdp =
            sdp::polish_answer(&answer.sdp, &current, &sdp::unsent_extensions(&sections));
        tracing::trace!(session = %m.req.session, sdp = %answer_sdp, "answer");
        self.outputs.push_back(Output::Event {
            key,
            event: SessionEvent::Answer(answer_sdp),
        });
        if m.ufrags.insert(answer.ufrag.clone()) {
            self.outputs.push_back(Output::Route {
                key,
                ufrag: answer.ufrag,
            });
        }
        let first = !m.negotiation.offered();
        m.negotiation.answered(&cooling);
        if first {
            for (c, mid, index) in std::mem::take(&mut m.pending_candidates) {
                if let Err(e) = m.peer.add_remote_candidate(&c, mid, index) {
                    self.outputs.push_back(Output::Event {
                        key,
                        event: SessionEvent::Error(SfuError::InvalidArgument(e.to_string())),
                    });
                }
            }
        }
        m.track_ids = sections
            .iter()
            .filter_map(|s| Some((s.mid.clone(), s.track_id.clone()?)))
            .collect();
        m.sending_mids = sections
            .iter()
            .filter(|s| s.sends())
            .map(|s| s.mid.clone())
            .collect();
        self.sync_publishing(key, now);
        for i in placed {
            self.subscribe(key, i, now);
        }
        if self
            .members
            .get(&key)
            .is_some_and(|m| m.negotiation.has_pending())
        {
            self.negotiate(key);
        }
        Ok(())
    }

    /// Starts forwarding the track on slot `i` of session `key` (already marked busy).
    pub(super) fn subscribe(&mut self, key: SessionKey, i: usize, now: Instant) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let Some(tid) = m.negotiation.track(i) else {
            return;
        };
        let Some(t) = self
            .calls
            .get_mut(&m.call)
            .and_then(|c| c.tracks.get_mut(&tid))
        else {
            m.negotiation.release(i);
            return;
        };
        let slot = &mut m.slots[i];
        // Whatever the allocator decided for the slot's previous track does not hold for this
        // one (decided below, once it is in place).
        slot.layer_cap = usize::MAX;
        slot.paused = None;
        slot.view = Default::default();
        m.allocator.forget(i);
        if let Some(down) = slot.down.as_mut() {
            down.set_paused(false);
        }
        let (payload_types, extensions) =
            maps(&t.codecs, &t.extensions, &slot.codecs, &slot.extensions);
        match slot.down.as_mut() {
            Some(down) => {
                down.set_maps(payload_types, extensions);
                down.switch_source(t.start_ssrc(now));
                // Holes the previous track left close now, before the new track's keyframe: a
                // receiver that waits for every sequence number would stall behind them.
                if m.peer.is_connected() {
                    send_fills(&mut m.peer, slot.id, down, now);
                }
            }
            None => {
                let kind = if slot.audio {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                };
                let clock_rate = t.codecs.first().map_or(90_000, |c| c.clock_rate);
                let mut config = DownTrackConfig::new(kind, slot.ssrc, clock_rate);
                config.rtx_ssrc = slot.rtx_ssrc;
                config.payload_types = payload_types;
                config.extensions = extensions;
                match DownTrack::new(config, t.start_ssrc(now)) {
                    Ok(d) => slot.down = Some(d),
                    Err(e) => {
                        tracing::debug!(error = %e, "no down-track for a slot");
                        m.negotiation.release(i);
                        return;
                    }
                }
            }
        }
        t.subscribers.push((key, i));
        let info = TrackInfo {
            mid: slot.mid.clone(),
            ..t.info.clone()
        };
        let muted = t.muted;
        let want_keyframe = slot
            .down
            .as_mut()
            .and_then(|d| d.poll_keyframe_request(now));
        let kind = info.kind;
        m.kind_gauge(&self.metrics, kind, false).inc();
        let (session, user) = (info.session.clone(), info.user.clone());
        let call = m.call;
        self.emit(key, SessionEvent::TrackPublished(info));
        // A late joiner learns a muted track's state with the track, not at the next change.
        if muted {
            self.emit(
                key,
                SessionEvent::MuteChanged {
                    session,
                    user,
                    kind,
                    muted: true,
                },
            );
        }
        self.allocate(key, now);
        if let Some(ssrc) = want_keyframe {
            self.request_keyframe(&call, tid, ssrc, now);
        }
    }

    /// Stops forwarding `tid` on slot `i` of `key` (the slot's state is the caller's).
    pub(super) fn unsubscribe(&mut self, key: SessionKey, i: usize, tid: TrackId, now: Instant) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let call = m.call;
        if let Some(t) = self
            .calls
            .get_mut(&call)
            .and_then(|c| c.tracks.get_mut(&tid))
        {
            t.subscribers.retain(|&(k, s)| !(k == key && s == i));
            m.kind_gauge(&self.metrics, t.info.kind, false).dec();
            self.update_wanted_layers(call, tid, now);
        }
    }

    /// Stops sending on slot `i` at once (its track is gone or no longer allowed); the next
    /// answer marks it inactive.
    pub(super) fn free_slot(&mut self, key: SessionKey, i: usize, now: Instant) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if let Some(tid) = m.negotiation.free(i) {
            self.slot_stopped(key, i, tid, now);
        }
    }

    /// Slot `i` of `key` no longer carries `tid`: forwarding stops and the client is told.
    pub(super) fn slot_stopped(&mut self, key: SessionKey, i: usize, tid: TrackId, now: Instant) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let info = self
            .calls
            .get(&m.call)
            .and_then(|c| c.tracks.get(&tid))
            .map(|t| TrackInfo {
                mid: String::new(),
                ..t.info.clone()
            });
        self.unsubscribe(key, i, tid, now);
        if let Some(m) = self.members.get_mut(&key) {
            // Nothing more comes from that track: holes it left close now.
            if let Some(ms) = m.slots.get_mut(i)
                && let Some(down) = ms.down.as_mut()
            {
                down.detach();
                if m.peer.is_connected() {
                    send_fills(&mut m.peer, ms.id, down, now);
                }
            }
            if let Some(info) = info {
                self.emit(key, SessionEvent::TrackRemoved(info));
            }
        }
    }
}

/// Source payload types and extension ids to the subscriber's, matched by codec (MIME type and,
/// where several match, format parameters) and by extension URI.
fn maps(
    source: &[Codec],
    source_ext: &[HeaderExtension],
    sub: &[Codec],
    sub_ext: &[HeaderExtension],
) -> (PayloadTypeMap, ExtensionMap) {
    let mut pts = PayloadTypeMap::new();
    for c in source {
        let same: Vec<&Codec> = sub.iter().filter(|s| s.mime_type == c.mime_type).collect();
        let chosen = same
            .iter()
            .find(|s| s.fmtp == c.fmtp)
            .or_else(|| same.first())
            .copied();
        if let Some(s) = chosen {
            let _ = pts.insert(c.payload_type, s.payload_type, s.rtx_payload_type);
        }
    }
    let mut ext = ExtensionMap::new();
    for e in source_ext {
        if let Some(s) = sub_ext.iter().find(|s| s.uri == e.uri) {
            let _ = ext.insert(e.id, s.id);
        }
    }
    (pts, ext)
}

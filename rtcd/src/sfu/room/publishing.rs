//! Tracks into and out of a call: a client's section is published (or refused) when its track
//! opens, and withdrawn when it stops sending, is no longer allowed or its session leaves.

use std::time::Instant;

use super::call::{Layer, Published, TrackCounters};
use super::{Rooms, SessionKey};
use crate::media::packet::{AUDIO_LEVEL_URI, MediaKind};
use crate::metrics::{KindLabels, ReasonLabels};
use crate::sfu::events::RoomEventKind;
use crate::sfu::keyframes::KeyframeGate;
use crate::sfu::negotiation::TrackId;
use crate::sfu::retransmit::RetransmitBuffer;
use crate::sfu::session::{SessionEvent, TrackInfo};
use crate::sfu::voice::VoiceDetector;
use crate::sfu::{SfuError, TrackKind};

impl Rooms {
    /// Follows the client's sending sections: a track whose section stopped sending is
    /// withdrawn; a section that sends again is published again.
    pub(super) fn sync_publishing(&mut self, key: SessionKey, now: Instant) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let sending = m.sending_mids.clone();
        self.unpublish(key, |t| !sending.contains(&t.info.mid), now);
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let call = self.calls.get(&m.call);
        let again: Vec<String> = m
            .opened
            .keys()
            .filter(|mid| {
                sending.contains(*mid)
                    && !m.refused.contains_key(*mid)
                    && !m.published.values().any(|tid| {
                        call.and_then(|c| c.tracks.get(tid))
                            .is_some_and(|t| &t.info.mid == *mid)
                    })
            })
            .cloned()
            .collect();
        for mid in again {
            self.publish(key, &mid);
        }
    }

    pub(super) fn publish(&mut self, key: SessionKey, mid: &str) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let Some(opened) = m.opened.get(mid).cloned() else {
            return;
        };
        let legacy_screen = opened.kind == MediaKind::Video
            && m.screen_track_id.is_some()
            && m.track_ids.get(mid) == m.screen_track_id.as_ref();
        let kind = m.declared.get(mid).copied().unwrap_or(match opened.kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video if legacy_screen => TrackKind::Screen,
            MediaKind::Video => TrackKind::Video,
        });
        let refusal = if !m.req.permissions.may_publish(kind) {
            Some(SfuError::InvalidArgument(format!(
                "this session may not publish {}",
                kind.as_str()
            )))
        } else if m.published.len() >= self.config.max_tracks_per_session {
            Some(SfuError::LimitReached("tracks per session"))
        } else {
            None
        };
        if let Some(err) = refusal {
            tracing::info!(client = %m.req.tenant, session = %m.req.session, kind = kind.as_str(), error = %err, "track refused");
            let reason = match err {
                SfuError::LimitReached(_) => "over_limit",
                _ => "not_permitted",
            };
            let counter = self
                .metrics
                .sfu
                .dropped_packets
                .get_or_create(&ReasonLabels {
                    client_id: m.req.tenant.as_str().to_owned(),
                    reason,
                })
                .clone();
            m.refused.insert(mid.to_owned(), counter);
            m.count_error(&self.metrics, &err);
            self.emit(key, SessionEvent::Error(err));
            return;
        }
        let tid = self.next_track;
        self.next_track += 1;
        let labels = KindLabels {
            client_id: m.req.tenant.as_str().to_owned(),
            kind: kind.as_str(),
        };
        let sfu = &self.metrics.sfu;
        let counters = TrackCounters {
            forwarded: sfu.forwarded_packets.get_or_create(&labels).clone(),
            bytes: sfu.forwarded_bytes.get_or_create(&labels).clone(),
            muted: sfu
                .dropped_packets
                .get_or_create(&ReasonLabels {
                    client_id: labels.client_id.clone(),
                    reason: "muted",
                })
                .clone(),
            probe_packets: sfu
                .probe_packets
                .get_or_create(&crate::metrics::ClientLabels {
                    client_id: labels.client_id.clone(),
                })
                .clone(),
        };
        let vad = (kind == TrackKind::Audio)
            .then(|| {
                opened
                    .extensions
                    .iter()
                    .find(|e| e.uri == AUDIO_LEVEL_URI)
                    .map(|e| (e.id, VoiceDetector::default()))
            })
            .flatten();
        let buffer = || {
            (opened.kind == MediaKind::Video)
                .then(|| {
                    RetransmitBuffer::new(self.config.nack_buffer_packets)
                        .ok()
                        .map(|b| b.with_max_age(self.config.nack_buffer_age))
                })
                .flatten()
        };
        let layer = |rid: Option<String>, ssrc: u32| Layer {
            rid,
            ssrc,
            buffer: buffer(),
            keyframes: KeyframeGate::default(),
            last_packet: None,
            rate: Default::default(),
            wanted: true,
            unwanted_since: None,
            size: None,
        };
        let layers: Vec<Layer> = if opened.rids.is_empty() {
            vec![layer(None, opened.ssrc)]
        } else {
            opened
                .rids
                .iter()
                .map(|rid| {
                    let ssrc = opened
                        .layers
                        .iter()
                        .find(|(r, _)| r == rid)
                        .map_or(0, |(_, s)| *s);
                    layer(Some(rid.clone()), ssrc)
                })
                .collect()
        };
        let track_id = format!("{}-{}-{}", m.req.session, kind.as_str(), tid);
        let published = Published {
            owner: key,
            key: opened.track,
            info: TrackInfo {
                session: m.req.session.clone(),
                user: m.req.user.clone(),
                display_name: m.req.display_name.clone(),
                kind,
                track_id: track_id.clone(),
                mid: mid.to_owned(),
            },
            ssrc: opened.ssrc,
            layers,
            codecs: opened.codecs.clone(),
            extensions: opened.extensions.clone(),
            muted: m.muted.contains(&kind),
            subscribers: Vec::new(),
            vad,
            counters,
            recorded: super::recording::Recorded::No,
        };
        m.published.insert(opened.track, tid);
        m.kind_gauge(&self.metrics, kind, true).inc();
        tracing::info!(session = %m.req.session, call = %m.req.call, track = %track_id, kind = kind.as_str(), "track published");
        let call_key = m.call;
        let owner = m.event_participant();
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let mut published = published;
        if call.recording.is_some() {
            published.recorded = super::recording::Recorded::Pending;
        }
        call.tracks.insert(tid, published);
        self.room_event(call_key, || RoomEventKind::TrackPublished {
            participant: owner,
            track_id,
            kind,
        });
        let Some(call) = self.calls.get(&call_key) else {
            return;
        };
        let others: Vec<SessionKey> = call.members.iter().copied().filter(|k| *k != key).collect();
        for k in others {
            if let Some(o) = self.members.get_mut(&k)
                && o.req.permissions.subscribe
            {
                o.negotiation.want(tid, kind.is_audio());
                self.negotiate(k);
            }
        }
    }

    /// Withdraws `key`'s tracks matching `which` from the call: every subscriber's slot stops
    /// at once and asks for a new offer.
    pub(super) fn unpublish(
        &mut self,
        key: SessionKey,
        which: impl Fn(&Published) -> bool,
        now: Instant,
    ) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let call_key = m.call;
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let gone: Vec<TrackId> = m
            .published
            .values()
            .copied()
            .filter(|tid| call.tracks.get(tid).is_some_and(&which))
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut affected: Vec<SessionKey> = Vec::new();
        for tid in &gone {
            let Some(t) = call.tracks.get(tid) else {
                continue;
            };
            for &(sub, slot) in &t.subscribers {
                affected.push(sub);
                let _ = slot;
            }
        }
        // Subscribers first (their slots go cooling and report TrackRemoved), then the track.
        for tid in &gone {
            let subs: Vec<(SessionKey, usize)> = self
                .calls
                .get(&call_key)
                .and_then(|c| c.tracks.get(tid))
                .map(|t| t.subscribers.clone())
                .unwrap_or_default();
            for (sub, slot) in subs {
                self.free_slot(sub, slot, now);
            }
        }
        let members: Vec<SessionKey> = self
            .calls
            .get(&call_key)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for k in members {
            if let Some(o) = self.members.get_mut(&k)
                && o.negotiation.forget(|tid| gone.contains(&tid))
            {
                affected.push(k);
            }
        }
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.published.retain(|_, tid| !gone.contains(tid));
        let owner = m.event_participant();
        let mut withdrawn = Vec::new();
        if let Some(call) = self.calls.get_mut(&call_key) {
            for tid in &gone {
                if let Some(t) = call.tracks.remove(tid) {
                    if let Some(recording) = call.recording.as_ref() {
                        recording.withdraw(&t);
                    }
                    m.kind_gauge(&self.metrics, t.info.kind, true).dec();
                    tracing::info!(session = %m.req.session, call = %m.req.call, track = %t.info.track_id, "track withdrawn");
                    withdrawn.push((t.info.track_id, t.info.kind));
                }
            }
        }
        for (track_id, kind) in withdrawn {
            let participant = owner.clone();
            self.room_event(call_key, || RoomEventKind::TrackUnpublished {
                participant,
                track_id,
                kind,
            });
        }
        affected.sort_unstable();
        affected.dedup();
        for k in affected {
            self.negotiate(k);
            self.mark(k);
        }
    }
}

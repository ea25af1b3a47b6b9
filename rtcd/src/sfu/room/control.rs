//! Session commands and room management: mute, screen share, permissions, moderation, and the
//! call as management describes it.

use std::time::Instant;

use super::{CallKey, ManageRequest, Managed, Rooms, SessionKey};
use crate::sfu::events::RoomEventKind;
use crate::sfu::negotiation::TrackId;
use crate::sfu::session::{SessionCommand, SessionEvent};
use crate::sfu::voice::VoiceDetector;
use crate::sfu::{
    CallId, Moderation, ParticipantDetail, Permissions, PublishedTrack, RoomDetail, SfuError,
    TenantId, TrackKind, UserId,
};

impl Rooms {
    pub(super) fn session_command(
        &mut self,
        key: SessionKey,
        command: SessionCommand,
        now: Instant,
    ) -> Result<(), SfuError> {
        match command {
            SessionCommand::Offer { sdp, tracks } => self.offer(key, sdp, tracks, now),
            SessionCommand::Candidate(c) => {
                let Some(m) = self.members.get_mut(&key) else {
                    return Ok(());
                };
                if c.candidate.len() > 1024 {
                    return Err(SfuError::InvalidArgument("candidate too long".into()));
                }
                if m.negotiation.offered() {
                    m.peer
                        .add_remote_candidate(&c.candidate, c.sdp_mid, c.sdp_mline_index)
                        .map_err(|e| SfuError::InvalidArgument(e.to_string()))
                } else if m.pending_candidates.len() < 64 {
                    m.pending_candidates
                        .push((c.candidate, c.sdp_mid, c.sdp_mline_index));
                    Ok(())
                } else {
                    Err(SfuError::LimitReached("candidates before the first offer"))
                }
            }
            SessionCommand::Mute { kind, muted } => {
                self.set_muted(key, kind, muted);
                Ok(())
            }
            SessionCommand::ScreenShare { on, track_id } => {
                let Some(m) = self.members.get_mut(&key) else {
                    return Ok(());
                };
                if on {
                    if !m.req.permissions.publish_screen {
                        return Err(SfuError::InvalidArgument(
                            "this session may not publish a screen share".into(),
                        ));
                    }
                    m.screen_track_id = Some(track_id);
                } else {
                    m.screen_track_id = None;
                    self.unpublish(
                        key,
                        |t| matches!(t.info.kind, TrackKind::Screen | TrackKind::ScreenAudio),
                        now,
                    );
                }
                Ok(())
            }
            SessionCommand::UpdatePermissions(p) => {
                self.set_permissions(key, p, now);
                Ok(())
            }
            SessionCommand::TrackViews(views) => self.set_views(key, views, now),
            SessionCommand::Leave => Ok(()),
        }
    }

    /// Mutes or unmutes `key`'s tracks of `kind` (and those it publishes later): their packets
    /// are dropped; the others are told.
    pub(super) fn set_muted(&mut self, key: SessionKey, kind: TrackKind, muted: bool) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if muted {
            m.muted.insert(kind);
        } else {
            m.muted.remove(&kind);
        }
        let (session, user) = (m.req.session.clone(), m.req.user.clone());
        let call_key = m.call;
        let mine: Vec<TrackId> = m.published.values().copied().collect();
        let mut stopped_speaking = false;
        if let Some(call) = self.calls.get_mut(&call_key) {
            for tid in mine {
                if let Some(t) = call.tracks.get_mut(&tid)
                    && t.info.kind == kind
                {
                    t.muted = muted;
                    if muted
                        && let Some((_, d)) = t.vad.as_mut()
                        && d.speaking()
                    {
                        *d = VoiceDetector::default();
                        stopped_speaking = true;
                    }
                }
            }
        }
        if stopped_speaking {
            let (s, u) = (session.clone(), user.clone());
            self.notify(&call_key, key, || SessionEvent::VoiceActivity {
                session: s.clone(),
                user: u.clone(),
                speaking: false,
            });
        }
        self.notify(&call_key, key, || SessionEvent::MuteChanged {
            session: session.clone(),
            user: user.clone(),
            kind,
            muted,
        });
    }

    /// Replaces `key`'s permissions: tracks no longer allowed are withdrawn at once, a lost
    /// subscription stops every slot, a new one asks for the call's tracks.
    pub(super) fn set_permissions(&mut self, key: SessionKey, p: Permissions, now: Instant) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let had_subscribe = m.req.permissions.subscribe;
        m.req.permissions = p;
        self.unpublish(key, |t| !p.may_publish(t.info.kind), now);
        if had_subscribe && !p.subscribe {
            let Some(m) = self.members.get_mut(&key) else {
                return;
            };
            for (i, tid) in m.negotiation.stop_receiving() {
                self.slot_stopped(key, i, tid, now);
            }
            self.negotiate(key);
        } else if !had_subscribe && p.subscribe {
            let Some(call_key) = self.members.get(&key).map(|m| m.call) else {
                return;
            };
            let ids: Vec<(TrackId, bool)> = self
                .calls
                .get(&call_key)
                .map(|c| {
                    c.tracks
                        .iter()
                        .filter(|(_, t)| t.owner != key)
                        .map(|(id, t)| (*id, t.info.kind.is_audio()))
                        .collect()
                })
                .unwrap_or_default();
            let Some(m) = self.members.get_mut(&key) else {
                return;
            };
            for (tid, audio) in ids {
                m.negotiation.want(tid, audio);
            }
            self.negotiate(key);
        }
    }

    /// Room management on one of these calls (see [`Moderation`]).
    pub(crate) fn manage(
        &mut self,
        tenant: TenantId,
        call: CallId,
        request: ManageRequest,
        now: Instant,
    ) -> Result<Managed, SfuError> {
        let call_key = *self
            .call_ids
            .get(&(tenant, call))
            .ok_or(SfuError::NotFound)?;
        let members = self
            .calls
            .get(&call_key)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        let of_user = |worker: &Self, user: &UserId| -> Result<Vec<SessionKey>, SfuError> {
            let keys: Vec<SessionKey> = members
                .iter()
                .copied()
                .filter(|k| worker.members.get(k).is_some_and(|m| &m.req.user == user))
                .collect();
            if keys.is_empty() {
                Err(SfuError::NotFound)
            } else {
                Ok(keys)
            }
        };
        let action = match request {
            ManageRequest::Describe => {
                return self
                    .describe(call_key)
                    .map(Managed::Room)
                    .ok_or(SfuError::NotFound);
            }
            ManageRequest::Moderate(action) => action,
            ManageRequest::StartRecording { recorder, notice } => {
                return match self.attach_recording(call_key, *recorder, notice, now) {
                    Ok(notice) => Ok(Managed::Recording(Some(notice))),
                    Err((e, recorder)) => {
                        recorder.stop(rtcd_recording::manifest::StopReason::Requested);
                        Err(e)
                    }
                };
            }
            ManageRequest::StopRecording(reason) => {
                return Ok(Managed::Recording(
                    self.detach_recording(call_key, reason, now),
                ));
            }
            ManageRequest::Recording => {
                return Ok(Managed::Recording(
                    self.calls
                        .get(&call_key)
                        .and_then(|c| c.recording.as_ref())
                        .map(|r| r.notice.clone()),
                ));
            }
        };
        let count = match action {
            Moderation::Remove { user, banned_until } => {
                let keys = of_user(self, &user)?;
                let reason = if banned_until.is_some() {
                    "banned"
                } else {
                    "removed"
                };
                for &k in &keys {
                    if let Some(participant) = self.members.get(&k).map(|m| m.event_participant()) {
                        self.room_event(call_key, || RoomEventKind::ParticipantRemoved {
                            participant,
                            banned_until,
                        });
                    }
                    self.end(k, reason.into(), now);
                }
                keys.len()
            }
            Moderation::Mute { user, kind } => {
                let keys = of_user(self, &user)?;
                for &k in &keys {
                    self.set_muted(k, kind, true);
                    if self.members.contains_key(&k) {
                        self.emit(k, SessionEvent::MutedByModerator { kind });
                    }
                }
                keys.len()
            }
            Moderation::RequestUnmute { user, kind } => {
                let keys = of_user(self, &user)?;
                for &k in &keys {
                    if self.members.contains_key(&k) {
                        self.emit(k, SessionEvent::UnmuteRequested { kind });
                    }
                }
                keys.len()
            }
            Moderation::Update {
                user,
                role,
                permissions,
            } => {
                let keys = of_user(self, &user)?;
                for &k in &keys {
                    if let Some(m) = self.members.get_mut(&k) {
                        m.req.role.clone_from(&role);
                    }
                    self.set_permissions(k, permissions, now);
                    if self.members.contains_key(&k) {
                        self.emit(
                            k,
                            SessionEvent::PermissionsChanged {
                                role: role.clone(),
                                permissions,
                            },
                        );
                    }
                    self.mark(k);
                    self.announce_update(k);
                }
                keys.len()
            }
            Moderation::End => {
                for &k in &members {
                    self.end(k, "room ended".into(), now);
                }
                members.len()
            }
            Moderation::Move => {
                for &k in &members {
                    self.end(k, "moved".into(), now);
                }
                members.len()
            }
        };
        Ok(Managed::Sessions(count))
    }

    /// The call's sessions (in join order) and their published tracks.
    fn describe(&self, call_key: CallKey) -> Option<RoomDetail> {
        let call = self.calls.get(&call_key)?;
        let participants = call
            .members
            .iter()
            .filter_map(|k| self.members.get(k))
            .map(|m| {
                let mut tids: Vec<TrackId> = m.published.values().copied().collect();
                tids.sort_unstable();
                ParticipantDetail {
                    session: m.req.session.clone(),
                    user: m.req.user.clone(),
                    display_name: m.req.display_name.clone(),
                    role: m.req.role.clone(),
                    permissions: m.req.permissions,
                    joined_at_ms: m.joined_at_ms,
                    tracks: tids
                        .iter()
                        .filter_map(|tid| call.tracks.get(tid))
                        .map(|t| PublishedTrack {
                            track_id: t.info.track_id.clone(),
                            kind: t.info.kind,
                            muted: t.muted,
                        })
                        .collect(),
                }
            })
            .collect();
        Some(RoomDetail {
            call: call.names.1.clone(),
            created_at_ms: call.created_at_ms,
            participants,
        })
    }
}

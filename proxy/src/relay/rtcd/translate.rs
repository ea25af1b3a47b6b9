//! Translation between the session's relay vocabulary and `rtcd.v1` messages: rtcd's events as
//! [`RelayEvent`]s (with the state that takes), client commands as signals, permissions, roles
//! and track kinds.

use super::*;

/// rtcd's events for one session as the session's [`RelayEvent`]s, with the state that takes:
/// the current speakers (rtcd reports each session's changes, clients get the whole list) and
/// the sessions of each user (rtcd announces sessions, clients see identities).
pub(super) struct EventTranslator {
    pub(super) own_session: String,
    pub(super) speaking: BTreeSet<(String, String)>,
    /// user ID -> that user's sessions in the call (other than this one).
    pub(super) sessions_by_user: HashMap<String, BTreeSet<String>>,
    /// user ID -> the role rtcd last named for them (relayed again only when it changes).
    pub(super) roles_by_user: HashMap<String, String>,
}

impl EventTranslator {
    pub(super) fn new(own_session: String) -> Self {
        Self {
            own_session,
            speaking: BTreeSet::new(),
            sessions_by_user: HashMap::new(),
            roles_by_user: HashMap::new(),
        }
    }

    /// Records the participants a resumed session's call has now (`Resumed`), without events:
    /// the client is told them in its `joined`. Returns them one per identity.
    pub(super) fn seed(&mut self, participants: &[pb::ParticipantEvent]) -> Vec<Participant> {
        let mut out: Vec<Participant> = Vec::new();
        for p in participants {
            if p.session_id == self.own_session {
                continue;
            }
            let sessions = self.sessions_by_user.entry(p.user_id.clone()).or_default();
            let first = sessions.is_empty();
            sessions.insert(p.session_id.clone());
            if first {
                out.push(self.participant(p));
            }
        }
        out
    }

    /// The client's view of an announced session: its user, name and role. The role is
    /// remembered as the user's (`None` when rtcd names none: an older rtcd).
    fn participant(&mut self, p: &pb::ParticipantEvent) -> Participant {
        let role = (!p.role.is_empty()).then(|| {
            self.roles_by_user.insert(p.user_id.clone(), p.role.clone());
            role_from(&p.role)
        });
        Participant {
            identity: Identity::new(p.user_id.clone()),
            name: (!p.display_name.is_empty()).then(|| p.display_name.clone()),
            role,
        }
    }

    /// Zero or more events for one rtcd signal. [`RelayEvent::Closed`] is always last.
    pub(super) fn translate(&mut self, signal: pb::server_signal::Signal) -> Vec<RelayEvent> {
        use pb::server_signal::Signal;
        let event = match signal {
            // The first `Joined` is read when the stream opens; a later one admits a session
            // that waited.
            Signal::Joined(j) => RelayEvent::Admitted {
                resume_token: (!j.resume_secret.is_empty())
                    .then(|| resume_token(&self.own_session, &j.resume_secret)),
                e2ee: j.e2ee,
            },
            // Only ever the first message of a resumed stream, read when it opens.
            Signal::Waiting(_) | Signal::Resumed(_) => return Vec::new(),
            Signal::LobbyRequest(e) => RelayEvent::LobbyRequest(Participant {
                identity: Identity::new(e.user_id),
                name: (!e.display_name.is_empty()).then_some(e.display_name),
                role: Some(role_from(&e.role)),
            }),
            Signal::LobbyLeft(e) => RelayEvent::LobbyLeft {
                identity: Identity::new(e.user_id),
                outcome: e.outcome,
            },
            Signal::Answer(d) => RelayEvent::Answer(d.sdp),
            Signal::NegotiationNeeded(n) => RelayEvent::NegotiationNeeded {
                audio: n.audio,
                video: n.video,
            },
            Signal::Candidate(c) => RelayEvent::Candidate(Candidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index.and_then(|i| u16::try_from(i).ok()),
                username_fragment: None,
            }),
            Signal::ParticipantJoined(p) => {
                if p.session_id == self.own_session {
                    return Vec::new();
                }
                let sessions = self.sessions_by_user.entry(p.user_id.clone()).or_default();
                let first = sessions.is_empty();
                sessions.insert(p.session_id.clone());
                if !first {
                    return Vec::new();
                }
                RelayEvent::ParticipantJoined(self.participant(&p))
            }
            // One per identity and change: every session of the user is updated at once.
            Signal::ParticipantUpdated(p) => {
                if p.session_id == self.own_session
                    || !self.sessions_by_user.contains_key(&p.user_id)
                    || self.roles_by_user.get(&p.user_id) == Some(&p.role)
                {
                    return Vec::new();
                }
                RelayEvent::ParticipantUpdated(self.participant(&p))
            }
            Signal::ParticipantLeft(p) => {
                let Some(sessions) = self.sessions_by_user.get_mut(&p.user_id) else {
                    return Vec::new();
                };
                if !sessions.remove(&p.session_id) || !sessions.is_empty() {
                    return Vec::new();
                }
                self.sessions_by_user.remove(&p.user_id);
                self.roles_by_user.remove(&p.user_id);
                self.speaking.retain(|(_, user)| *user != p.user_id);
                RelayEvent::ParticipantLeft(Identity::new(p.user_id))
            }
            Signal::TrackPublished(t) => {
                let Some(source) = source_of(t.kind()) else {
                    tracing::debug!(kind = t.kind, "track of an unknown kind not relayed");
                    return Vec::new();
                };
                RelayEvent::TrackPublished {
                    identity: Identity::new(t.user_id),
                    track_id: t.track_id,
                    source,
                    mid: t.mid,
                }
            }
            Signal::TrackRemoved(t) => RelayEvent::TrackUnpublished {
                identity: Identity::new(t.user_id),
                track_id: t.track_id,
            },
            Signal::VoiceActivity(v) => {
                let key = (v.session_id, v.user_id);
                if v.speaking {
                    self.speaking.insert(key);
                } else {
                    self.speaking.remove(&key);
                }
                let mut speakers: Vec<Identity> = Vec::new();
                for (_, user) in &self.speaking {
                    if !speakers.iter().any(|s| s.as_str() == user) {
                        speakers.push(Identity::new(user.clone()));
                    }
                }
                RelayEvent::VoiceActivity(speakers)
            }
            Signal::MuteChanged(m) => match source_of(m.kind()) {
                Some(source) => RelayEvent::MuteChanged {
                    identity: Identity::new(m.user_id),
                    source,
                    muted: m.muted,
                },
                None => return Vec::new(),
            },
            Signal::PermissionsChanged(p) => RelayEvent::PermissionsChanged {
                role: role_from(&p.role),
                permissions: permissions_from_pb(p.permissions),
            },
            Signal::MutedByModerator(m) => match source_of(m.kind()) {
                Some(source) => RelayEvent::MutedByModerator(source),
                None => return Vec::new(),
            },
            Signal::UnmuteRequested(m) => match source_of(m.kind()) {
                Some(source) => RelayEvent::UnmuteRequested(source),
                None => return Vec::new(),
            },
            Signal::RecordingStarted(r) => RelayEvent::RecordingStarted {
                recording_id: r.recording_id,
                started_at_ms: r.started_at_ms,
                started_by: r.started_by,
            },
            Signal::RecordingStopped(r) => RelayEvent::RecordingStopped {
                // An unspecified or newer reason: shown as the one that blames nobody.
                reason: super::admin::stop_reason_from(r.reason())
                    .unwrap_or(crate::rooms::RecordingStop::Error),
                recording_id: r.recording_id,
            },
            Signal::LayersWanted(l) => RelayEvent::LayersWanted {
                mid: l.mid,
                rids: l.rids,
            },
            Signal::TrackPaused(p) => RelayEvent::TrackPaused {
                reason: match (p.paused, p.reason()) {
                    (false, _) => None,
                    (true, pb::PauseReason::Hidden) => Some(PauseReason::Hidden),
                    // A reason this proxy does not know yet is shown as the one that needs no
                    // action from the client.
                    (true, _) => Some(PauseReason::Bandwidth),
                },
                mid: p.mid,
                track_id: p.track_id,
            },
            Signal::Error(e) => RelayEvent::Error {
                code: error_label(e.code),
                message: e.message,
            },
            Signal::SessionClosed(c) => {
                tracing::debug!(reason = %c.reason, end = ?c.end(), "rtcd closed the session");
                RelayEvent::Closed {
                    reason: EndReason {
                        end: MediaEnd::from(c.end()),
                        text: c.reason,
                    },
                }
            }
        };
        vec![event]
    }
}

/// One client command as the rtcd signal it maps to, if any.
pub(super) fn translate_command(command: RelayCommand) -> Option<pb::client_signal::Signal> {
    use pb::client_signal::Signal;
    Some(match command {
        RelayCommand::Offer { sdp, tracks } => Signal::Offer(pb::SessionDescription {
            sdp,
            tracks: tracks
                .into_iter()
                .map(|(mid, source)| (mid, kind_of(source) as i32))
                .collect(),
        }),
        RelayCommand::Candidate(c) => Signal::Candidate(pb::IceCandidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index.map(u32::from),
        }),
        RelayCommand::Mute { source, muted } => Signal::Mute(pb::Mute {
            kind: kind_of(source) as i32,
            muted,
        }),
        RelayCommand::TrackViews(views) => Signal::TrackViews(pb::TrackViews {
            views: views
                .into_iter()
                .map(|v| pb::TrackView {
                    mid: v.mid,
                    track_id: v.track_id.unwrap_or_default(),
                    visible: v.visible,
                    width: v.width,
                    height: v.height,
                })
                .collect(),
        }),
        // The offer's `tracks` name the screen's sections; nothing to announce beforehand.
        RelayCommand::ScreenShare(true) => return None,
        RelayCommand::ScreenShare(false) => Signal::ScreenShare(pb::ScreenShare {
            on: false,
            track_id: String::new(),
        }),
        RelayCommand::UpdateGrant(grant) => {
            Signal::UpdatePermissions(permissions_to_pb(&grant.permissions))
        }
        RelayCommand::Token {
            issued_at,
            token_id,
            expires_at,
        } => Signal::Token(pb::TokenInfo {
            issued_at: issued_at.unwrap_or(0),
            token_id: token_id.unwrap_or_default(),
            expires_at,
        }),
        RelayCommand::Leave => Signal::Leave(pb::Leave {}),
    })
}

/// Permissions as rtcd.v1 carries them.
pub(super) fn permissions_to_pb(p: &Permissions) -> pb::Permissions {
    pb::Permissions {
        publish_audio: p.publish_audio,
        publish_video: p.publish_video,
        publish_screen: p.publish_screen,
        subscribe: p.subscribe,
    }
}

/// rtcd.v1 permissions as the proxy's.
pub(super) fn permissions_from_pb(p: Option<pb::Permissions>) -> Permissions {
    let p = p.unwrap_or_default();
    Permissions {
        publish_audio: p.publish_audio,
        publish_video: p.publish_video,
        publish_screen: p.publish_screen,
        subscribe: p.subscribe,
        // rtcd does not carry it: the session keeps its token's (`Resume::on_permissions_changed`).
        record: false,
    }
}

/// rtcd's limit on a display name, in bytes.
pub(super) const MAX_DISPLAY_NAME_BYTES: usize = 256;

/// A display name as rtcd takes it: names are up to 256 characters, rtcd keeps 256 bytes, so a
/// long name in a wide script is cut at a character boundary (it is only shown, never matched).
pub(super) fn display_name(name: Option<&str>) -> String {
    let name = name.unwrap_or_default();
    let mut end = name.len().min(MAX_DISPLAY_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// A role name from rtcd (as the proxy sent it at join or in an update); unknown names are
/// read as the least privileged role.
pub(super) fn role_from(name: &str) -> Role {
    match name {
        "moderator" => Role::Moderator,
        "member" => Role::Member,
        _ => Role::Guest,
    }
}

/// The rtcd kind of a client source.
pub(super) fn kind_of(source: TrackSource) -> pb::TrackKind {
    source.wire_kind()
}

/// The client source of an rtcd kind.
pub(super) fn source_of(kind: pb::TrackKind) -> Option<TrackSource> {
    match kind {
        pb::TrackKind::Audio => Some(TrackSource::Microphone),
        pb::TrackKind::Video => Some(TrackSource::Camera),
        pb::TrackKind::Screen => Some(TrackSource::Screen),
        pb::TrackKind::ScreenAudio => Some(TrackSource::ScreenAudio),
        pb::TrackKind::Unspecified => None,
    }
}

/// The client-facing error code for an rtcd error status code.
pub(super) fn error_label(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::InvalidArgument => "bad_sdp",
        tonic::Code::PermissionDenied => "forbidden",
        tonic::Code::ResourceExhausted => "media_limit",
        tonic::Code::FailedPrecondition => "bad_message",
        _ => "media_error",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn display_names_are_cut_to_rtcds_256_bytes_at_a_character_boundary() {
        assert_eq!(display_name(None), "");
        assert_eq!(display_name(Some("Alice")), "Alice");
        let wide = "é".repeat(200); // 400 bytes
        let cut = display_name(Some(&wide));
        assert_eq!((cut.len(), cut.chars().count()), (256, 128));
        let odd = format!("a{}", "é".repeat(200));
        assert_eq!(display_name(Some(&odd)).len(), 255);
    }
    use super::*;
    use pb::server_signal::Signal;

    fn participant(session: &str, user: &str, name: &str) -> pb::ParticipantEvent {
        pb::ParticipantEvent {
            session_id: session.into(),
            user_id: user.into(),
            display_name: name.into(),
            role: String::new(),
        }
    }

    fn with_role(mut p: pb::ParticipantEvent, role: &str) -> pb::ParticipantEvent {
        p.role = role.into();
        p
    }

    #[test]
    fn roles_are_announced_with_each_identity_and_relayed_once_per_change() {
        let mut t = EventTranslator::new("me".into());
        let bob = |session: &str, role: &str| with_role(participant(session, "bob", "Bob"), role);
        let announced = |role| {
            [RelayEvent::ParticipantJoined(Participant {
                identity: Identity::new("bob"),
                name: Some("Bob".into()),
                role: Some(role),
            })]
        };
        let updated = |role| {
            [RelayEvent::ParticipantUpdated(Participant {
                identity: Identity::new("bob"),
                name: Some("Bob".into()),
                role: Some(role),
            })]
        };
        assert_eq!(
            t.translate(Signal::ParticipantJoined(bob("s2", "moderator"))),
            announced(Role::Moderator)
        );
        assert!(
            t.translate(Signal::ParticipantJoined(bob("s3", "moderator")))
                .is_empty()
        );
        // A revoke updates both of Bob's sessions: relayed once.
        assert_eq!(
            t.translate(Signal::ParticipantUpdated(bob("s2", "member"))),
            updated(Role::Member)
        );
        assert!(
            t.translate(Signal::ParticipantUpdated(bob("s3", "member")))
                .is_empty()
        );
        assert_eq!(
            t.translate(Signal::ParticipantUpdated(bob("s3", "moderator"))),
            updated(Role::Moderator)
        );
        // Our own session and someone never announced are not relayed.
        let me = with_role(participant("me", "alice", "A"), "member");
        assert!(t.translate(Signal::ParticipantUpdated(me)).is_empty());
        let dave = with_role(participant("s9", "dave", ""), "member");
        assert!(t.translate(Signal::ParticipantUpdated(dave)).is_empty());
        // After Bob left, coming back announces his role again.
        t.translate(Signal::ParticipantLeft(bob("s2", "")));
        t.translate(Signal::ParticipantLeft(bob("s3", "")));
        assert_eq!(
            t.translate(Signal::ParticipantJoined(bob("s4", "member"))),
            announced(Role::Member)
        );
        // A resumed session's roster carries roles too.
        let mut fresh = EventTranslator::new("me".into());
        assert_eq!(
            fresh.seed(&[bob("s2", "moderator")]),
            [Participant {
                identity: Identity::new("bob"),
                name: Some("Bob".into()),
                role: Some(Role::Moderator),
            }]
        );
    }

    #[test]
    fn offer_carries_declared_sources_as_track_kinds() {
        let tracks = [
            ("0", TrackSource::Microphone),
            ("1", TrackSource::Camera),
            ("2", TrackSource::Screen),
            ("3", TrackSource::ScreenAudio),
        ]
        .into_iter()
        .map(|(m, s)| (m.to_owned(), s))
        .collect();
        let Some(pb::client_signal::Signal::Offer(d)) = translate_command(RelayCommand::Offer {
            sdp: "v=0\r\n".into(),
            tracks,
        }) else {
            panic!("an offer is relayed as an offer");
        };
        assert_eq!(d.sdp, "v=0\r\n");
        let mut kinds: Vec<(&str, i32)> = d.tracks.iter().map(|(m, k)| (m.as_str(), *k)).collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            [
                ("0", pb::TrackKind::Audio as i32),
                ("1", pb::TrackKind::Video as i32),
                ("2", pb::TrackKind::Screen as i32),
                ("3", pb::TrackKind::ScreenAudio as i32),
            ]
        );
    }

    #[test]
    fn screen_share_start_sends_nothing_and_stop_withdraws() {
        assert_eq!(translate_command(RelayCommand::ScreenShare(true)), None);
        assert_eq!(
            translate_command(RelayCommand::ScreenShare(false)),
            Some(pb::client_signal::Signal::ScreenShare(pb::ScreenShare {
                on: false,
                track_id: String::new()
            }))
        );
    }

    #[test]
    fn track_views_cross_with_an_empty_track_id_for_any_track() {
        let view = |track_id: Option<&str>| crate::protocol::TrackView {
            mid: "3".into(),
            track_id: track_id.map(str::to_owned),
            visible: true,
            width: 320,
            height: 180,
        };
        assert_eq!(
            translate_command(RelayCommand::TrackViews(vec![view(Some("t")), view(None)])),
            Some(pb::client_signal::Signal::TrackViews(pb::TrackViews {
                views: vec![
                    pb::TrackView {
                        mid: "3".into(),
                        track_id: "t".into(),
                        visible: true,
                        width: 320,
                        height: 180
                    },
                    pb::TrackView {
                        mid: "3".into(),
                        track_id: String::new(),
                        visible: true,
                        width: 320,
                        height: 180
                    }
                ]
            }))
        );
    }

    #[test]
    fn screen_audio_mute_is_relayed_with_its_own_kind() {
        assert_eq!(
            translate_command(RelayCommand::Mute {
                source: TrackSource::ScreenAudio,
                muted: true
            }),
            Some(pb::client_signal::Signal::Mute(pb::Mute {
                kind: pb::TrackKind::ScreenAudio as i32,
                muted: true
            }))
        );
    }

    #[test]
    fn refreshed_grant_becomes_update_permissions() {
        let grant = crate::auth::Grant {
            identity: Identity::new("alice"),
            tenant: None,
            name: None,
            room: crate::protocol::RoomName::parse("r").unwrap(),
            role: crate::policy::Role::Member,
            permissions: crate::policy::Permissions {
                publish_audio: true,
                publish_video: false,
                publish_screen: true,
                subscribe: true,
                record: true,
            },
            expires_at: 0,
            issued_at: None,
            token_id: None,
            key_id: String::new(),
        };
        assert_eq!(
            translate_command(RelayCommand::UpdateGrant(Box::new(grant))),
            Some(pb::client_signal::Signal::UpdatePermissions(
                pb::Permissions {
                    publish_audio: true,
                    publish_video: false,
                    publish_screen: true,
                    subscribe: true,
                }
            ))
        );
        assert_eq!(
            translate_command(RelayCommand::Leave),
            Some(pb::client_signal::Signal::Leave(pb::Leave {}))
        );
    }

    #[test]
    fn negotiation_needed_answer_and_closed_translate() {
        let mut t = EventTranslator::new("me".into());
        assert_eq!(
            t.translate(Signal::NegotiationNeeded(pb::NegotiationNeeded {
                audio: 2,
                video: 3
            })),
            [RelayEvent::NegotiationNeeded { audio: 2, video: 3 }]
        );
        assert_eq!(
            t.translate(Signal::Answer(pb::SessionDescription {
                sdp: "v=0".into(),
                tracks: Default::default()
            })),
            [RelayEvent::Answer("v=0".into())]
        );
        assert_eq!(
            t.translate(Signal::SessionClosed(pb::SessionClosed {
                reason: "peer connection failed".into(),
                end: pb::SessionEnd::PeerConnectionFailed as i32,
            })),
            [RelayEvent::Closed {
                reason: EndReason {
                    end: MediaEnd::PeerConnectionFailed,
                    text: "peer connection failed".into()
                }
            }]
        );
        // An older rtcd: no typed end, whatever the prose says.
        assert_eq!(
            t.translate(Signal::SessionClosed(pb::SessionClosed {
                reason: "banned".into(),
                end: 0,
            })),
            [RelayEvent::Closed {
                reason: EndReason {
                    end: MediaEnd::Unspecified,
                    text: "banned".into()
                }
            }]
        );
    }

    #[test]
    fn track_events_carry_mid_and_screen_audio() {
        let mut t = EventTranslator::new("me".into());
        let event = |kind: pb::TrackKind| pb::TrackEvent {
            session_id: "s2".into(),
            user_id: "bob".into(),
            kind: kind as i32,
            track_id: "t9".into(),
            display_name: "Bob".into(),
            mid: "4".into(),
        };
        assert_eq!(
            t.translate(Signal::TrackPublished(event(pb::TrackKind::ScreenAudio))),
            [RelayEvent::TrackPublished {
                identity: Identity::new("bob"),
                track_id: "t9".into(),
                source: TrackSource::ScreenAudio,
                mid: "4".into(),
            }]
        );
        assert!(
            t.translate(Signal::TrackPublished(event(pb::TrackKind::Unspecified)))
                .is_empty()
        );
        assert_eq!(
            t.translate(Signal::TrackRemoved(event(pb::TrackKind::Video))),
            [RelayEvent::TrackUnpublished {
                identity: Identity::new("bob"),
                track_id: "t9".into(),
            }]
        );
        assert_eq!(
            t.translate(Signal::MuteChanged(pb::MuteEvent {
                session_id: "s2".into(),
                user_id: "bob".into(),
                kind: pb::TrackKind::ScreenAudio as i32,
                muted: true,
            })),
            [RelayEvent::MuteChanged {
                identity: Identity::new("bob"),
                source: TrackSource::ScreenAudio,
                muted: true,
            }]
        );
    }

    #[test]
    fn participants_are_announced_once_per_identity_and_leave_with_their_last_session() {
        let mut t = EventTranslator::new("me".into());
        // Our own session is not a remote participant.
        assert!(
            t.translate(Signal::ParticipantJoined(participant("me", "alice", "A")))
                .is_empty()
        );
        // A listener who publishes nothing is announced.
        assert_eq!(
            t.translate(Signal::ParticipantJoined(participant("s2", "bob", "Bob"))),
            [RelayEvent::ParticipantJoined(Participant {
                identity: Identity::new("bob"),
                name: Some("Bob".into()),
                role: None,
            })]
        );
        // Bob's second device: same identity, not announced again.
        assert!(
            t.translate(Signal::ParticipantJoined(participant("s3", "bob", "Bob")))
                .is_empty()
        );
        // A nameless participant has no name.
        assert_eq!(
            t.translate(Signal::ParticipantJoined(participant("s4", "carol", ""))),
            [RelayEvent::ParticipantJoined(Participant {
                identity: Identity::new("carol"),
                name: None,
                role: None,
            })]
        );
        // Bob's first session leaves: he is still here.
        assert!(
            t.translate(Signal::ParticipantLeft(participant("s2", "bob", "Bob")))
                .is_empty()
        );
        // An unknown session leaving changes nothing.
        assert!(
            t.translate(Signal::ParticipantLeft(participant("s9", "bob", "Bob")))
                .is_empty()
        );
        assert!(
            t.translate(Signal::ParticipantLeft(participant("s9", "dave", "")))
                .is_empty()
        );
        // His last session leaves: he left.
        assert_eq!(
            t.translate(Signal::ParticipantLeft(participant("s3", "bob", "Bob"))),
            [RelayEvent::ParticipantLeft(Identity::new("bob"))]
        );
        // And may come back.
        assert_eq!(
            t.translate(Signal::ParticipantJoined(participant("s5", "bob", "Bob")))
                .len(),
            1
        );
    }

    #[test]
    fn speakers_are_identities_once_each() {
        let mut t = EventTranslator::new("me".into());
        let va = |session: &str, user: &str, speaking| {
            Signal::VoiceActivity(pb::VoiceActivity {
                session_id: session.into(),
                user_id: user.into(),
                speaking,
            })
        };
        t.translate(va("s2", "bob", true));
        assert_eq!(
            t.translate(va("s3", "bob", true)),
            [RelayEvent::VoiceActivity(vec![Identity::new("bob")])]
        );
        assert_eq!(
            t.translate(va("s2", "bob", false)),
            [RelayEvent::VoiceActivity(vec![Identity::new("bob")])]
        );
        assert_eq!(
            t.translate(va("s3", "bob", false)),
            [RelayEvent::VoiceActivity(vec![])]
        );
    }

    #[test]
    fn recording_events_are_relayed_with_their_reason() {
        let mut t = EventTranslator::new("me".into());
        let started = t.translate(Signal::RecordingStarted(pb::RecordingEvent {
            recording_id: "rec_abc".into(),
            started_at_ms: 1_764_500_000_123,
            started_by: "mia".into(),
            reason: 0,
        }));
        assert_eq!(
            started,
            vec![RelayEvent::RecordingStarted {
                recording_id: "rec_abc".into(),
                started_at_ms: 1_764_500_000_123,
                started_by: "mia".into(),
            }]
        );
        for (wire, reason) in [
            (pb::RecordingStop::Requested, RecordingStop::Requested),
            (pb::RecordingStop::RoomFinished, RecordingStop::RoomFinished),
            (pb::RecordingStop::MaxDuration, RecordingStop::MaxDuration),
            (pb::RecordingStop::DiskFull, RecordingStop::DiskFull),
            (pb::RecordingStop::Error, RecordingStop::Error),
            (pb::RecordingStop::Shutdown, RecordingStop::Shutdown),
            (pb::RecordingStop::Interrupted, RecordingStop::Interrupted),
            // Unspecified (or newer than this proxy): blames nobody.
            (pb::RecordingStop::Unspecified, RecordingStop::Error),
        ] {
            let stopped = t.translate(Signal::RecordingStopped(pb::RecordingEvent {
                recording_id: "rec_abc".into(),
                reason: wire as i32,
                ..Default::default()
            }));
            assert_eq!(
                stopped,
                vec![RelayEvent::RecordingStopped {
                    recording_id: "rec_abc".into(),
                    reason,
                }],
                "{wire:?}"
            );
        }
    }
}

//! proto (`rtcd.v1`) <-> SFU types. Total in both directions: anything the SFU cannot take is an
//! `InvalidArgument` here, before it gets there.

use rtcd_proto::v1 as pb;

use crate::lobby::{Entrant, Notice, RoomPolicy};
use crate::sfu::allocation::PauseReason;
use crate::sfu::{
    CallId, Candidate, JoinRequest, MAX_ID_BYTES, Participant, Permissions, SessionCommand,
    SessionEvent, SessionId, SfuError, TenantId, TokenMeta, TrackKind, TrackView, UserId,
    session::TrackInfo,
};

/// A `Join` in the caller's namespace.
pub fn join_request(tenant: TenantId, join: pb::Join) -> Result<JoinRequest, SfuError> {
    let req = JoinRequest {
        tenant,
        call: CallId::new(join.call_id),
        session: SessionId::new(join.session_id),
        user: UserId::new(join.user_id),
        display_name: join.display_name,
        permissions: permissions(join.permissions.unwrap_or_default()),
        role: join.role,
        token: token(join.token.unwrap_or_default())?,
    };
    req.validate()?;
    Ok(req)
}

/// A room policy from the wire (unset fields stay unset).
pub fn room_policy(p: pb::RoomPolicy) -> RoomPolicy {
    RoomPolicy {
        wait_for_host: p.wait_for_host,
        lobby: p.lobby,
        guests_allowed: p.guests_allowed,
        wait_timeout_seconds: p.wait_timeout_seconds,
        opened_by: p.opened_by.and_then(|o| {
            match pb::RoomOpener::try_from(o).unwrap_or(pb::RoomOpener::Unspecified) {
                pb::RoomOpener::Unspecified => None,
                pb::RoomOpener::Moderator => Some(crate::lobby::Opener::Moderator),
                pb::RoomOpener::Member => Some(crate::lobby::Opener::Member),
            }
        }),
        record: p.record,
        e2ee: p.e2ee,
    }
}

/// A room policy for the wire.
pub fn room_policy_to(p: RoomPolicy) -> pb::RoomPolicy {
    pb::RoomPolicy {
        wait_for_host: p.wait_for_host,
        lobby: p.lobby,
        guests_allowed: p.guests_allowed,
        wait_timeout_seconds: p.wait_timeout_seconds,
        opened_by: p.opened_by.map(|o| match o {
            crate::lobby::Opener::Moderator => pb::RoomOpener::Moderator as i32,
            crate::lobby::Opener::Member => pb::RoomOpener::Member as i32,
        }),
        record: p.record,
        e2ee: p.e2ee,
    }
}

/// A lobby notice for a moderator's stream.
pub fn lobby_notice(n: Notice) -> pb::server_signal::Signal {
    use pb::server_signal::Signal;
    let event = |e: Entrant, outcome: &str| pb::LobbyEvent {
        session_id: e.session.as_str().to_owned(),
        user_id: e.user.as_str().to_owned(),
        display_name: e.display_name,
        role: e.role,
        outcome: outcome.to_owned(),
    };
    match n {
        Notice::Request(e) => Signal::LobbyRequest(event(e, "")),
        Notice::Left(e, outcome) => Signal::LobbyLeft(event(e, outcome.as_str())),
    }
}

/// A token's revocation-relevant facts (checked: the ID's length).
pub fn token(t: pb::TokenInfo) -> Result<TokenMeta, SfuError> {
    if t.token_id.len() > MAX_ID_BYTES {
        return Err(SfuError::InvalidArgument(format!(
            "token_id must be at most {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(TokenMeta {
        issued_at: t.issued_at,
        token_id: t.token_id,
    })
}

/// Permissions from the wire (every flag defaults to "no").
pub fn permissions(p: pb::Permissions) -> Permissions {
    Permissions {
        publish_audio: p.publish_audio,
        publish_video: p.publish_video,
        publish_screen: p.publish_screen,
        subscribe: p.subscribe,
    }
}

/// A track kind from the wire; an unknown or unspecified one is an `InvalidArgument`.
pub fn kind_from(k: i32) -> Result<TrackKind, SfuError> {
    match pb::TrackKind::try_from(k) {
        Ok(pb::TrackKind::Audio) => Ok(TrackKind::Audio),
        Ok(pb::TrackKind::Video) => Ok(TrackKind::Video),
        Ok(pb::TrackKind::Screen) => Ok(TrackKind::Screen),
        Ok(pb::TrackKind::ScreenAudio) => Ok(TrackKind::ScreenAudio),
        _ => Err(SfuError::InvalidArgument(format!("unknown track kind {k}"))),
    }
}

/// A track kind for the wire.
pub fn kind_to(k: TrackKind) -> i32 {
    match k {
        TrackKind::Audio => pb::TrackKind::Audio as i32,
        TrackKind::Video => pb::TrackKind::Video as i32,
        TrackKind::Screen => pb::TrackKind::Screen as i32,
        TrackKind::ScreenAudio => pb::TrackKind::ScreenAudio as i32,
    }
}

/// Permissions for the wire.
pub fn permissions_to(p: Permissions) -> pb::Permissions {
    pb::Permissions {
        publish_audio: p.publish_audio,
        publish_video: p.publish_video,
        publish_screen: p.publish_screen,
        subscribe: p.subscribe,
    }
}

/// Most declared sections in one offer (an SDP has at most a few hundred sections anyway).
const MAX_DECLARED_TRACKS: usize = 256;

/// What a client message after the join asks for.
#[derive(Debug)]
pub enum ClientCommand {
    /// Something for the session itself.
    Session(SessionCommand),
    /// A refreshed token: signaling checks it against the revocations, then records it.
    Token(TokenMeta),
}

/// A client message after the join. `Join` again is out of order.
pub fn command(signal: pb::client_signal::Signal) -> Result<ClientCommand, SfuError> {
    use pb::client_signal::Signal;
    if let Signal::Token(t) = signal {
        return Ok(ClientCommand::Token(token(t)?));
    }
    Ok(ClientCommand::Session(match signal {
        Signal::Join(_) | Signal::Resume(_) => {
            return Err(SfuError::OutOfOrder("already joined".into()));
        }
        Signal::Offer(d) => {
            if d.tracks.len() > MAX_DECLARED_TRACKS {
                return Err(SfuError::InvalidArgument(format!(
                    "tracks: at most {MAX_DECLARED_TRACKS} entries"
                )));
            }
            let tracks = d
                .tracks
                .into_iter()
                .map(|(mid, k)| Ok((mid, kind_from(k)?)))
                .collect::<Result<_, SfuError>>()?;
            SessionCommand::Offer { sdp: d.sdp, tracks }
        }
        Signal::Candidate(c) => SessionCommand::Candidate(Candidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c
                .sdp_mline_index
                .map(|i| {
                    u16::try_from(i)
                        .map_err(|_| SfuError::InvalidArgument("sdp_mline_index too large".into()))
                })
                .transpose()?,
        }),
        Signal::Leave(_) => SessionCommand::Leave,
        Signal::Mute(m) => SessionCommand::Mute {
            kind: kind_from(m.kind)?,
            muted: m.muted,
        },
        Signal::ScreenShare(s) => SessionCommand::ScreenShare {
            on: s.on,
            track_id: s.track_id,
        },
        Signal::UpdatePermissions(p) => SessionCommand::UpdatePermissions(permissions(p)),
        // The SFU refuses more than MAX_TRACK_VIEWS (the rule_tests hold it to the contract's).
        Signal::TrackViews(v) => SessionCommand::TrackViews(
            v.views
                .into_iter()
                .map(|v| TrackView {
                    mid: v.mid,
                    track_id: v.track_id,
                    visible: v.visible,
                    size: (v.width > 0 && v.height > 0).then_some((v.width, v.height)),
                })
                .collect(),
        ),
        Signal::Token(_) => unreachable!("handled above"),
    }))
}

fn track_event(t: TrackInfo) -> pb::TrackEvent {
    pb::TrackEvent {
        session_id: t.session.as_str().to_owned(),
        user_id: t.user.as_str().to_owned(),
        kind: kind_to(t.kind),
        track_id: t.track_id,
        display_name: t.display_name,
        mid: t.mid,
    }
}

fn participant(p: Participant) -> pb::ParticipantEvent {
    pb::ParticipantEvent {
        session_id: p.session.as_str().to_owned(),
        user_id: p.user.as_str().to_owned(),
        display_name: p.display_name,
        role: p.role,
    }
}

/// A recording notice for the wire.
fn recording_event(n: crate::sfu::session::RecordingNotice) -> pb::RecordingEvent {
    pb::RecordingEvent {
        recording_id: n.recording_id,
        started_at_ms: n.started_at_ms,
        started_by: n.started_by,
        reason: n.reason.map_or(0, |r| recording_stop(r) as i32),
    }
}

/// Why a recording stopped, for the wire.
pub fn recording_stop(r: rtcd_recording::manifest::StopReason) -> pb::RecordingStop {
    use rtcd_recording::manifest::StopReason as S;
    match r {
        S::Requested => pb::RecordingStop::Requested,
        S::RoomFinished => pb::RecordingStop::RoomFinished,
        S::MaxDuration => pb::RecordingStop::MaxDuration,
        S::DiskFull => pb::RecordingStop::DiskFull,
        S::Error => pb::RecordingStop::Error,
        S::Shutdown => pb::RecordingStop::Shutdown,
        S::Interrupted => pb::RecordingStop::Interrupted,
    }
}

/// An SFU event as a server message.
pub fn event(e: SessionEvent) -> pb::ServerSignal {
    use pb::server_signal::Signal;
    let signal = match e {
        SessionEvent::Answer(sdp) => Signal::Answer(pb::SessionDescription {
            sdp,
            tracks: Default::default(),
        }),
        SessionEvent::NegotiationNeeded { audio, video } => {
            Signal::NegotiationNeeded(pb::NegotiationNeeded { audio, video })
        }
        SessionEvent::Candidate(c) => Signal::Candidate(pb::IceCandidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index.map(u32::from),
        }),
        SessionEvent::TrackPublished(t) => Signal::TrackPublished(track_event(t)),
        SessionEvent::TrackRemoved(t) => Signal::TrackRemoved(track_event(t)),
        SessionEvent::ParticipantJoined(p) => Signal::ParticipantJoined(participant(p)),
        SessionEvent::ParticipantUpdated(p) => Signal::ParticipantUpdated(participant(p)),
        SessionEvent::ParticipantLeft(p) => Signal::ParticipantLeft(participant(p)),
        SessionEvent::VoiceActivity {
            session,
            user,
            speaking,
        } => Signal::VoiceActivity(pb::VoiceActivity {
            session_id: session.as_str().to_owned(),
            user_id: user.as_str().to_owned(),
            speaking,
        }),
        SessionEvent::MuteChanged {
            session,
            user,
            kind,
            muted,
        } => Signal::MuteChanged(pb::MuteEvent {
            session_id: session.as_str().to_owned(),
            user_id: user.as_str().to_owned(),
            kind: kind_to(kind),
            muted,
        }),
        SessionEvent::PermissionsChanged { role, permissions } => {
            Signal::PermissionsChanged(pb::PermissionsChanged {
                role,
                permissions: Some(permissions_to(permissions)),
            })
        }
        SessionEvent::MutedByModerator { kind } => Signal::MutedByModerator(pb::MuteEvent {
            kind: kind_to(kind),
            muted: true,
            ..Default::default()
        }),
        SessionEvent::UnmuteRequested { kind } => Signal::UnmuteRequested(pb::MuteEvent {
            kind: kind_to(kind),
            muted: false,
            ..Default::default()
        }),
        SessionEvent::TrackPaused {
            mid,
            track_id,
            reason,
        } => Signal::TrackPaused(pb::TrackPaused {
            mid,
            track_id,
            paused: reason.is_some(),
            reason: match reason {
                None => pb::PauseReason::Unspecified,
                Some(PauseReason::Bandwidth) => pb::PauseReason::Bandwidth,
                Some(PauseReason::Hidden) => pb::PauseReason::Hidden,
            } as i32,
        }),
        SessionEvent::LayersWanted { mid, rids } => {
            Signal::LayersWanted(pb::LayersWanted { mid, rids })
        }
        SessionEvent::RecordingStarted(n) => Signal::RecordingStarted(recording_event(n)),
        SessionEvent::RecordingStopped(n) => Signal::RecordingStopped(recording_event(n)),
        SessionEvent::Error(e) => error(&e),
        SessionEvent::Closed { reason } => session_closed(reason),
    };
    pb::ServerSignal {
        signal: Some(signal),
    }
}

/// A session's end as rtcd's `SessionClosed`: the SFU's reason text, kept as the prose, and
/// its typed `SessionEnd`, which proxies decide on. The one place an end becomes a type: the
/// SFU, the lobby and moderation name their reasons, and this is where those names cross the
/// contract.
pub fn session_closed(reason: String) -> pb::server_signal::Signal {
    let end = rtcd_proto::rules::session_end(&reason);
    pb::server_signal::Signal::SessionClosed(pb::SessionClosed {
        reason,
        end: end as i32,
    })
}

/// An error event carrying the gRPC code the same error would have as a status.
pub fn error(e: &SfuError) -> pb::server_signal::Signal {
    let status = super::status::from_sfu(e);
    pb::server_signal::Signal::Error(pb::Error {
        code: status.code() as i32,
        message: status.message().to_owned(),
    })
}

#[cfg(test)]
mod end_tests {
    use super::*;
    use crate::lobby::{Decision, WaitReason};
    use crate::moderation::Refusal;

    fn end_of(reason: &str) -> pb::SessionEnd {
        match session_closed(reason.to_owned()) {
            pb::server_signal::Signal::SessionClosed(c) => {
                assert_eq!(c.reason, reason, "the prose is kept");
                c.end()
            }
            other => panic!("not a SessionClosed: {other:?}"),
        }
    }

    /// Every reason rtcd closes a session with has its own typed end, whether the SFU, the
    /// lobby, moderation or signaling names it.
    #[test]
    fn every_close_reason_has_its_typed_end() {
        use pb::SessionEnd as End;
        let named = [
            ("leave", End::Leave),
            ("closed by client", End::ClosedByClient),
            ("peer connection failed", End::PeerConnectionFailed),
            ("disconnected", End::Disconnected),
            ("shutdown", End::Shutdown),
            ("migrate", End::Migrate),
            ("moved", End::Moved),
            ("removed", End::Removed),
            ("banned", End::Banned),
            ("room ended", End::RoomEnded),
            ("revoked", End::Revoked),
            ("lobby denied", End::LobbyDenied),
            ("host timeout", End::HostTimeout),
            ("lobby timeout", End::LobbyTimeout),
            ("guests not allowed", End::GuestsNotAllowed),
        ];
        for (reason, end) in named {
            assert_eq!(end_of(reason), end, "{reason}");
        }
        let domain = [
            WaitReason::Host.timeout_reason(),
            WaitReason::Lobby.timeout_reason(),
            Refusal::Banned { until: 0 }.close_reason(),
            Refusal::TokenDenied.close_reason(),
            Refusal::CutOff { issued_before: 0 }.close_reason(),
        ]
        .into_iter()
        .chain(
            [Decision::Denied, Decision::Refused, Decision::Shutdown]
                .into_iter()
                .filter_map(Decision::close_reason),
        );
        for reason in domain {
            assert_ne!(end_of(reason), End::Unspecified, "{reason}");
        }
        assert_eq!(end_of("something new"), End::Unspecified);
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;
    use rtcd_proto::rules::{PublishRight, publish_right};

    /// The SFU's bound on views per message is the contract's (it keeps its own constant: it
    /// must not depend on the contract).
    #[test]
    fn the_sfu_bounds_track_views_as_the_contract_does() {
        assert_eq!(
            crate::sfu::MAX_TRACK_VIEWS,
            rtcd_proto::rules::MAX_TRACK_VIEWS
        );
    }

    /// The SFU keeps the contract's "which permission a kind needs" rule on its own types (it
    /// must not depend on the contract); this holds the two to one rule.
    #[test]
    fn the_sfu_needs_the_permissions_the_contract_names_for_every_kind() {
        for wire in [
            pb::TrackKind::Audio,
            pb::TrackKind::Video,
            pb::TrackKind::Screen,
            pb::TrackKind::ScreenAudio,
        ] {
            let kind = kind_from(wire as i32).unwrap();
            let only = |right| {
                let mut p = Permissions::default();
                match right {
                    PublishRight::Audio => p.publish_audio = true,
                    PublishRight::Video => p.publish_video = true,
                    PublishRight::Screen => p.publish_screen = true,
                }
                p
            };
            let right = publish_right(wire).unwrap();
            assert!(only(right).may_publish(kind), "{wire:?}");
            for other in [
                PublishRight::Audio,
                PublishRight::Video,
                PublishRight::Screen,
            ] {
                if other != right {
                    assert!(!only(other).may_publish(kind), "{wire:?} with {other:?}");
                }
            }
            assert_eq!(
                kind.is_audio(),
                rtcd_proto::rules::is_audio(wire),
                "{wire:?}"
            );
        }
        assert_eq!(publish_right(pb::TrackKind::Unspecified), None);
        assert!(kind_from(pb::TrackKind::Unspecified as i32).is_err());
    }
}

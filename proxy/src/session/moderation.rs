//! A moderator's `moderate` message, decided apart from its IO: who may moderate (the
//! session's role), what each action must carry, the room action it becomes and as whom, and
//! what the client is told of the media server's result. Carrying the action out
//! ([`crate::rooms::perform`], a gRPC call) is the pump's; its result comes back here
//! ([`answer`]). The order of the checks is the protocol's: the role first (a member learns
//! nothing about the request's shape), then the request's fields, then whether a media server
//! can act at all (the pump's, [`unavailable`]).

use crate::auth::{Grant, MAX_IDENTITY_BYTES};
use crate::config::PermissionsConfig;
use crate::policy::{Permissions, Role, TrackSource};
use crate::protocol::{Identity, ModerationAction, ServerMessage, SessionId};
use crate::rooms::{Action, Actor, ControlError, Outcome, RoomPolicy};

/// The `request` of every `error` answering a `moderate`.
pub const KIND: &str = "moderate";

/// Why no media server can carry out a moderation: none is configured on this proxy.
pub const NO_MEDIA_SERVER: &str = "no media server is configured on this proxy";
/// Why no media server can carry out a moderation: the relay has no room administration.
pub const NO_ROOM_ADMINISTRATION: &str = "this media relay offers no room administration";

/// A `moderate` message's fields.
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub action: ModerationAction,
    /// The participant acted on (every action but `end_room` and `set_policy`).
    pub identity: Option<String>,
    /// `mute` / `request_unmute`: which source.
    pub source: Option<TrackSource>,
    /// `ban`: how long (seconds; `api.default_ban_seconds` if absent).
    pub ban_seconds: Option<u64>,
    /// `kick` / `ban`: why.
    pub reason: Option<String>,
    /// `set_policy`: the fields to change.
    pub policy: Option<RoomPolicy>,
    /// `set_policy`: clear the room's stored policy first.
    pub reset: bool,
}

/// The settings a moderation runs under (from the proxy's configuration).
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// `api.default_ban_seconds`: a `ban` without `ban_seconds`.
    pub default_ban_seconds: u64,
    /// `auth.permissions`: what `grant_moderator` and `revoke_moderator` give.
    pub permissions: &'a PermissionsConfig,
    /// The room's configured policy (`[rooms]` and its override), for `set_policy`.
    pub configured: crate::rooms::RoomPolicy,
}

/// Why a `moderate` is refused before it reaches the media server: each is an `error` with
/// [`ModerationError::code`], this text and `request` `moderate`; the session goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModerationError {
    /// The session's role is not `moderator`.
    #[error("only moderators may {}", .0.as_str())]
    NotModerator(ModerationAction),
    /// An action on a participant without a usable `identity`.
    #[error("`{}` needs an `identity` (1-128 bytes)", .0.as_str())]
    NeedsIdentity(ModerationAction),
    /// `set_policy` with neither `policy` nor `reset`.
    #[error("`set_policy` needs a `policy` (or `reset`)")]
    NeedsPolicy,
    /// `mute` / `request_unmute` without a `source`.
    #[error("`{}` needs a `source`", .0.as_str())]
    NeedsSource(ModerationAction),
    /// A moderator whose token does not grant `record` starts or stops a recording, or sets
    /// the room's `record` policy.
    #[error("`{}` needs the `record` permission", .0.as_str())]
    NeedsRecordPermission(ModerationAction),
}

impl ModerationError {
    /// The `error` code (docs/protocol.md): `forbidden` for the role, `bad_message` for the
    /// request's shape.
    pub fn code(&self) -> &'static str {
        match self {
            ModerationError::NotModerator(_) | ModerationError::NeedsRecordPermission(_) => {
                "forbidden"
            }
            _ => "bad_message",
        }
    }

    /// The `error` the client receives.
    pub fn message(&self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code(),
            message: self.to_string(),
            request: Some(KIND),
        }
    }
}

/// A moderation the session may ask for: what the media server is asked, as whom, and what
/// [`answer`] needs to tell the client.
#[derive(Debug, Clone)]
pub struct Permitted {
    /// The client's action (echoed in `moderated`).
    pub action: ModerationAction,
    /// The participant acted on (echoed in `moderated`).
    pub target: Option<Identity>,
    /// What [`crate::rooms::perform`] carries out.
    pub room_action: Action,
    /// Who asks (for the media server's audit and the proxy's audit line).
    pub actor: Actor,
}

/// The moderator acting from session `session` with `grant`.
pub fn actor(grant: &Grant, session: SessionId) -> Actor {
    Actor::Moderator {
        identity: grant.identity.clone(),
        session: session.to_string(),
    }
}

/// Whether the session holding `grant` may carry out `request`, and as what room action.
pub fn decide(
    request: Request,
    grant: &Grant,
    session: SessionId,
    rules: Rules<'_>,
) -> Result<Permitted, ModerationError> {
    let Request {
        action,
        identity,
        source,
        ban_seconds,
        reason,
        policy,
        reset,
    } = request;
    if grant.role != Role::Moderator {
        return Err(ModerationError::NotModerator(action));
    }
    // Recording is a right of its own, even among moderators: starting one (or making the
    // room record by policy) records everyone.
    let records = matches!(
        action,
        ModerationAction::StartRecording | ModerationAction::StopRecording
    ) || policy.is_some_and(|p| p.record.is_some());
    if records && !grant.permissions.record {
        return Err(ModerationError::NeedsRecordPermission(action));
    }
    let target = match (action, identity) {
        (
            ModerationAction::EndRoom
            | ModerationAction::SetPolicy
            | ModerationAction::StartRecording
            | ModerationAction::StopRecording,
            _,
        ) => None,
        (_, Some(id)) if !id.is_empty() && id.len() <= MAX_IDENTITY_BYTES => {
            Some(Identity::new(id))
        }
        _ => return Err(ModerationError::NeedsIdentity(action)),
    };
    if action == ModerationAction::SetPolicy && policy.is_none() && !reset {
        return Err(ModerationError::NeedsPolicy);
    }
    let needs_source = matches!(
        action,
        ModerationAction::Mute | ModerationAction::RequestUnmute
    );
    let source = match (needs_source, source) {
        (true, None) => return Err(ModerationError::NeedsSource(action)),
        (_, source) => source,
    };
    // Present whenever the action names a participant: checked just above.
    let who = || target.clone().ok_or(ModerationError::NeedsIdentity(action));
    let which = || source.ok_or(ModerationError::NeedsSource(action));
    let room_action = match action {
        ModerationAction::EndRoom => Action::EndRoom,
        ModerationAction::Kick => Action::Remove {
            identity: who()?,
            ban_seconds: 0,
            reason: reason.unwrap_or_default(),
        },
        ModerationAction::Ban => Action::Remove {
            identity: who()?,
            ban_seconds: ban_seconds.unwrap_or(rules.default_ban_seconds).max(1),
            reason: reason.unwrap_or_default(),
        },
        ModerationAction::Mute => Action::Mute {
            identity: who()?,
            source: which()?,
        },
        ModerationAction::RequestUnmute => Action::RequestUnmute {
            identity: who()?,
            source: which()?,
        },
        ModerationAction::GrantModerator => Action::Update {
            identity: who()?,
            role: Role::Moderator,
            permissions: Permissions::from_capabilities(&rules.permissions.moderator),
        },
        ModerationAction::RevokeModerator => Action::Update {
            identity: who()?,
            role: Role::Member,
            permissions: Permissions::from_capabilities(&rules.permissions.member),
        },
        ModerationAction::Admit => Action::Admit { identity: who()? },
        ModerationAction::Deny => Action::Deny { identity: who()? },
        ModerationAction::SetPolicy => Action::SetPolicy {
            change: policy.unwrap_or_default(),
            reset,
            configured: rules.configured,
        },
        ModerationAction::StartRecording => Action::StartRecording,
        ModerationAction::StopRecording => Action::StopRecording,
    };
    Ok(Permitted {
        action,
        target,
        room_action,
        actor: actor(grant, session),
    })
}

/// The `error` of a permitted moderation no media server can carry out (`detail`:
/// [`NO_MEDIA_SERVER`] or [`NO_ROOM_ADMINISTRATION`]).
pub fn unavailable(detail: &str) -> ServerMessage {
    ServerMessage::Error {
        code: "media_unavailable",
        message: detail.to_owned(),
        request: Some(KIND),
    }
}

/// What the client is told of the media server's result: `moderated` with the sessions
/// affected, or the refusal as an `error` with its stable code.
pub fn answer(
    action: ModerationAction,
    target: Option<Identity>,
    result: Result<Outcome, ControlError>,
) -> ServerMessage {
    match result {
        Ok(outcome) => ServerMessage::Moderated {
            action,
            identity: target,
            sessions: outcome.sessions,
            recording_id: outcome.recording.map(|r| r.recording_id),
        },
        Err(e) => ServerMessage::Error {
            code: e.code(),
            message: e.to_string(),
            request: Some(KIND),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Capability;
    use crate::protocol::RoomName;
    use serde_json::json;

    fn grant(role: Role) -> Grant {
        Grant {
            identity: Identity::new("mia"),
            tenant: None,
            name: None,
            room: RoomName::parse("standup").unwrap(),
            role,
            permissions: Permissions::from_capabilities(&[Capability::Subscribe]),
            expires_at: 1_700_000_600,
            key_id: "k1".into(),
            issued_at: None,
            token_id: None,
        }
    }

    fn request(action: ModerationAction) -> Request {
        Request {
            action,
            identity: Some("kate".into()),
            source: Some(TrackSource::Microphone),
            ban_seconds: None,
            reason: None,
            policy: None,
            reset: false,
        }
    }

    const ALL: [ModerationAction; 10] = [
        ModerationAction::Kick,
        ModerationAction::Ban,
        ModerationAction::Mute,
        ModerationAction::RequestUnmute,
        ModerationAction::EndRoom,
        ModerationAction::GrantModerator,
        ModerationAction::RevokeModerator,
        ModerationAction::Admit,
        ModerationAction::Deny,
        ModerationAction::SetPolicy,
    ];

    fn permissions() -> PermissionsConfig {
        PermissionsConfig {
            moderator: vec![Capability::PublishAudio, Capability::Subscribe],
            member: vec![Capability::Subscribe],
            ..Default::default()
        }
    }

    fn decide_as(role: Role, request: Request) -> Result<Permitted, ModerationError> {
        let perms = permissions();
        let rules = Rules {
            default_ban_seconds: 3600,
            permissions: &perms,
            configured: crate::rooms::RoomPolicy::default(),
        };
        decide(request, &grant(role), SessionId(7), rules)
    }

    fn refusal(e: ModerationError) -> serde_json::Value {
        serde_json::to_value(e.message()).unwrap()
    }

    #[test]
    fn only_moderators_may_moderate_and_others_get_forbidden() {
        for role in [Role::Member, Role::Guest] {
            for action in ALL {
                let e = decide_as(role, request(action)).unwrap_err();
                assert_eq!(e, ModerationError::NotModerator(action));
                assert_eq!(
                    refusal(e),
                    json!({
                        "type": "error",
                        "code": "forbidden",
                        "message": format!("only moderators may {}", action.as_str()),
                        "request": "moderate",
                    })
                );
            }
            // The role is checked first: a malformed request from a member is still forbidden.
            let mut bare = request(ModerationAction::Kick);
            bare.identity = None;
            assert_eq!(
                decide_as(role, bare).unwrap_err(),
                ModerationError::NotModerator(ModerationAction::Kick)
            );
        }
        assert!(decide_as(Role::Moderator, request(ModerationAction::Kick)).is_ok());
    }

    #[test]
    fn a_request_without_what_its_action_needs_is_a_bad_message() {
        let bad = |request: Request| refusal(decide_as(Role::Moderator, request).unwrap_err());
        let error = |message: &str| json!({"type": "error", "code": "bad_message", "message": message, "request": "moderate"});
        for action in ALL {
            if matches!(
                action,
                ModerationAction::EndRoom | ModerationAction::SetPolicy
            ) {
                continue;
            }
            let needs = error(&format!(
                "`{}` needs an `identity` (1-128 bytes)",
                action.as_str()
            ));
            let mut r = request(action);
            r.identity = None;
            assert_eq!(bad(r), needs, "{action:?} without identity");
            let mut r = request(action);
            r.identity = Some(String::new());
            assert_eq!(bad(r), needs, "{action:?} with an empty identity");
            let mut r = request(action);
            r.identity = Some("x".repeat(MAX_IDENTITY_BYTES + 1));
            assert_eq!(bad(r), needs, "{action:?} with a too long identity");
            let mut r = request(action);
            r.identity = Some("x".repeat(MAX_IDENTITY_BYTES));
            assert!(
                decide_as(Role::Moderator, r).is_ok(),
                "{action:?} at the limit"
            );
        }
        for action in [ModerationAction::Mute, ModerationAction::RequestUnmute] {
            let mut r = request(action);
            r.source = None;
            assert_eq!(
                bad(r),
                error(&format!("`{}` needs a `source`", action.as_str()))
            );
        }
        let mut r = request(ModerationAction::SetPolicy);
        r.identity = None;
        assert_eq!(bad(r), error("`set_policy` needs a `policy` (or `reset`)"));
        // `reset` alone is a policy change; `end_room` and `set_policy` name nobody.
        let mut r = request(ModerationAction::SetPolicy);
        r.reset = true;
        let permitted = decide_as(Role::Moderator, r).unwrap();
        assert_eq!(permitted.target, None);
        assert!(matches!(
            permitted.room_action,
            Action::SetPolicy { reset: true, .. }
        ));
        let mut r = request(ModerationAction::EndRoom);
        r.identity = None;
        let permitted = decide_as(Role::Moderator, r).unwrap();
        assert_eq!(permitted.target, None);
        assert!(matches!(permitted.room_action, Action::EndRoom));
    }

    #[test]
    fn a_moderators_action_is_forwarded_as_its_room_action_and_actor() {
        let kate = Identity::new("kate");
        let forwarded = |request: Request| decide_as(Role::Moderator, request).unwrap();
        let mut r = request(ModerationAction::Kick);
        r.reason = Some("spam".into());
        let p = forwarded(r);
        assert_eq!(
            (p.action, p.target.as_ref()),
            (ModerationAction::Kick, Some(&kate))
        );
        match (&p.room_action, &p.actor) {
            (
                Action::Remove {
                    identity,
                    ban_seconds: 0,
                    reason,
                },
                Actor::Moderator {
                    identity: who,
                    session,
                },
            ) => {
                assert_eq!((identity, reason.as_str()), (&kate, "spam"));
                assert_eq!((who.as_str(), session.as_str()), ("mia", "s7"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.actor.describe(), "moderator:mia@s7");
        // A ban lasts what it says, the configured default without, and at least a second.
        for (asked, lasts) in [(Some(60), 60), (None, 3600), (Some(0), 1)] {
            let mut r = request(ModerationAction::Ban);
            r.ban_seconds = asked;
            match forwarded(r).room_action {
                Action::Remove { ban_seconds, .. } => assert_eq!(ban_seconds, lasts, "{asked:?}"),
                other => panic!("{other:?}"),
            }
        }
        match forwarded(request(ModerationAction::Mute)).room_action {
            Action::Mute { identity, source } => {
                assert_eq!((identity, source), (kate.clone(), TrackSource::Microphone))
            }
            other => panic!("{other:?}"),
        }
        match forwarded(request(ModerationAction::RequestUnmute)).room_action {
            Action::RequestUnmute { identity, source } => {
                assert_eq!((identity, source), (kate.clone(), TrackSource::Microphone))
            }
            other => panic!("{other:?}"),
        }
        // Moderator and member get their configured permissions.
        let perms = permissions();
        for (action, want_role, want) in [
            (
                ModerationAction::GrantModerator,
                Role::Moderator,
                &perms.moderator,
            ),
            (
                ModerationAction::RevokeModerator,
                Role::Member,
                &perms.member,
            ),
        ] {
            match forwarded(request(action)).room_action {
                Action::Update {
                    identity,
                    role,
                    permissions,
                } => {
                    assert_eq!(identity, kate);
                    assert_eq!(role, want_role);
                    assert_eq!(permissions, Permissions::from_capabilities(want));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            forwarded(request(ModerationAction::Admit)).room_action,
            Action::Admit { identity } if identity == kate
        ));
        assert!(matches!(
            forwarded(request(ModerationAction::Deny)).room_action,
            Action::Deny { identity } if identity == kate
        ));
        let mut r = request(ModerationAction::SetPolicy);
        let change = RoomPolicy {
            lobby: Some(false),
            ..Default::default()
        };
        r.policy = Some(change);
        match forwarded(r).room_action {
            Action::SetPolicy {
                change: got, reset, ..
            } => {
                assert_eq!((got, reset), (change, false))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_result_becomes_what_the_client_receives() {
        let kate = Some(Identity::new("kate"));
        let ok = answer(
            ModerationAction::Kick,
            kate.clone(),
            Ok(Outcome {
                sessions: 2,
                ..Outcome::default()
            }),
        );
        assert_eq!(
            serde_json::to_value(ok).unwrap(),
            json!({"type": "moderated", "action": "kick", "identity": "kate", "sessions": 2})
        );
        let ended = answer(ModerationAction::EndRoom, None, Ok(Outcome::default()));
        assert_eq!(
            serde_json::to_value(ended).unwrap(),
            json!({"type": "moderated", "action": "end_room", "sessions": 0})
        );
        for (e, code) in [
            (ControlError::NotFound("kate".into()), "not_found"),
            (ControlError::Invalid("reason".into()), "bad_request"),
            (
                ControlError::Forbidden("remote unmute is off".into()),
                "forbidden",
            ),
            (
                ControlError::Unavailable("down".into()),
                "media_unavailable",
            ),
        ] {
            let message = e.to_string();
            assert_eq!(
                answer(ModerationAction::Mute, kate.clone(), Err(e)),
                ServerMessage::Error {
                    code,
                    message,
                    request: Some("moderate"),
                }
            );
        }
        assert_eq!(
            serde_json::to_value(unavailable(NO_MEDIA_SERVER)).unwrap(),
            json!({"type": "error", "code": "media_unavailable", "message": "no media server is configured on this proxy", "request": "moderate"})
        );
        assert_eq!(
            unavailable(NO_ROOM_ADMINISTRATION),
            ServerMessage::Error {
                code: "media_unavailable",
                message: "this media relay offers no room administration".into(),
                request: Some("moderate"),
            }
        );
    }

    #[test]
    fn recording_needs_a_moderator_with_the_record_permission() {
        let recorder = |role: Role, record: bool| {
            let mut g = grant(role);
            g.permissions.record = record;
            g
        };
        let perms = permissions();
        let rules = Rules {
            default_ban_seconds: 3600,
            permissions: &perms,
            configured: crate::rooms::RoomPolicy::default(),
        };
        let bare = |action| Request {
            action,
            identity: None,
            source: None,
            ban_seconds: None,
            reason: None,
            policy: None,
            reset: false,
        };
        for action in [
            ModerationAction::StartRecording,
            ModerationAction::StopRecording,
        ] {
            // A moderator without `record`: forbidden, naming the permission.
            let e = decide(
                bare(action),
                &recorder(Role::Moderator, false),
                SessionId(7),
                rules,
            )
            .unwrap_err();
            assert_eq!(e, ModerationError::NeedsRecordPermission(action));
            assert_eq!(
                refusal(e),
                json!({
                    "type": "error",
                    "code": "forbidden",
                    "message": format!("`{}` needs the `record` permission", action.as_str()),
                    "request": "moderate",
                })
            );
            // A member (or guest) with `record`: still not a moderator.
            for role in [Role::Member, Role::Guest] {
                assert_eq!(
                    decide(bare(action), &recorder(role, true), SessionId(7), rules).unwrap_err(),
                    ModerationError::NotModerator(action)
                );
            }
            // A moderator with it: the room action, naming nobody.
            let p = decide(
                bare(action),
                &recorder(Role::Moderator, true),
                SessionId(7),
                rules,
            )
            .unwrap();
            assert_eq!((p.action, p.target), (action, None));
            match (action, p.room_action) {
                (ModerationAction::StartRecording, Action::StartRecording)
                | (ModerationAction::StopRecording, Action::StopRecording) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(p.actor.requested_by(), "mia");
        }
        // The `record` policy records everyone too: the same permission.
        let mut r = bare(ModerationAction::SetPolicy);
        r.policy = Some(RoomPolicy {
            record: Some(true),
            ..Default::default()
        });
        assert_eq!(
            decide(r, &recorder(Role::Moderator, false), SessionId(7), rules).unwrap_err(),
            ModerationError::NeedsRecordPermission(ModerationAction::SetPolicy)
        );
        let mut r = bare(ModerationAction::SetPolicy);
        r.policy = Some(RoomPolicy {
            record: Some(false),
            ..Default::default()
        });
        assert!(decide(r, &recorder(Role::Moderator, true), SessionId(7), rules).is_ok());
        // Other policy fields need no `record`.
        let mut r = bare(ModerationAction::SetPolicy);
        r.policy = Some(RoomPolicy {
            lobby: Some(true),
            ..Default::default()
        });
        assert!(decide(r, &recorder(Role::Moderator, false), SessionId(7), rules).is_ok());
    }

    #[test]
    fn recording_results_and_refusals_reach_the_client() {
        let recording = crate::rooms::RecordingInfo {
            recording_id: "rec_abc".into(),
            room: "standup".into(),
            state: crate::rooms::RecordingState::Recording,
            started_at_ms: 1,
            stopped_at_ms: None,
            stop_reason: None,
            started_by: "mia".into(),
            segment: 1,
            degraded: false,
            bytes: 0,
            files: Some(Vec::new()),
            host: "h".into(),
        };
        let ok = answer(
            ModerationAction::StartRecording,
            None,
            Ok(Outcome {
                recording: Some(recording),
                ..Outcome::default()
            }),
        );
        assert_eq!(
            serde_json::to_value(ok).unwrap(),
            json!({"type": "moderated", "action": "start_recording", "sessions": 0, "recording_id": "rec_abc"})
        );
        use crate::rooms::RecordingRefusal as R;
        for (refusal, code) in [
            (R::AlreadyRecording, "already_recording"),
            (R::NotRecording, "not_recording"),
            (R::StillRecording, "still_recording"),
            (R::Disabled, "recording_disabled"),
            (R::DiskFull, "disk_full"),
            (R::Encrypted, "encrypted"),
        ] {
            let e = ControlError::Recording(refusal, "said rtcd".into());
            assert_eq!(
                serde_json::to_value(answer(ModerationAction::StartRecording, None, Err(e)))
                    .unwrap(),
                json!({"type": "error", "code": code, "message": format!("{code}: said rtcd"), "request": "moderate"})
            );
        }
    }
}

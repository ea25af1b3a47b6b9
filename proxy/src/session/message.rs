//! What a client message means once the session has joined: answered at once (`pong`, or an
//! `error` when it does not fit the session's phase or permissions), relayed to the media
//! server as an authorized command, handed to the refresh or moderation steps (their IO is
//! the pump's), or the end of the session (`leave`). Decided from the message, the session's
//! phase ([`Machine::accepts`]) and its permissions; the pump does what [`Step`] says.

use super::machine::{Close, Machine};
use super::moderation;
use crate::close::CloseReason;
use crate::policy::{Capability, Permissions, PolicyError, TrackSource, authorize_sdp};
use crate::protocol::{Candidate, ClientMessage, MAX_TRACK_VIEWS, ServerMessage};
use crate::relay::RelayCommand;

/// What the pump does with one message of a joined session.
#[derive(Debug)]
pub enum Step {
    /// Send this to the client; the session goes on.
    Reply(ServerMessage),
    /// The permission policy refused the message: send [`refusal`] (logged as such).
    Refused {
        /// Why.
        error: PolicyError,
        /// The message's `type`.
        kind: &'static str,
    },
    /// Relay this authorized command to the media server (`kind`: the message's `type`, for
    /// the `media_unavailable` error when there is none).
    Forward {
        /// The command.
        command: RelayCommand,
        /// The message's `type`.
        kind: &'static str,
    },
    /// Verify this refresh token (the pump's: keys may be fetched).
    Refresh(String),
    /// Carry out this moderation ([`moderation::decide`], then the pump's call).
    Moderate(moderation::Request),
    /// End the session.
    Close(Close),
}

/// The `error` code of a policy refusal (docs/protocol.md).
pub fn policy_code(error: &PolicyError) -> &'static str {
    match error {
        PolicyError::Forbidden { .. } => "forbidden",
        PolicyError::MalformedSdp(_) => "bad_sdp",
        PolicyError::BadTrack(_) => "bad_track",
    }
}

/// The `error` a policy refusal of a `kind` message sends.
pub fn refusal(error: &PolicyError, kind: &'static str) -> ServerMessage {
    ServerMessage::Error {
        code: policy_code(error),
        message: error.to_string(),
        request: Some(kind),
    }
}

fn error(code: &'static str, message: &str, kind: &'static str) -> Step {
    Step::Reply(ServerMessage::Error {
        code,
        message: message.to_owned(),
        request: Some(kind),
    })
}

fn forbid(kind: &'static str, action: String, capability: Capability) -> Step {
    Step::Refused {
        error: PolicyError::Forbidden { action, capability },
        kind,
    }
}

/// The longest `mid` or `track_id` a view may name (SDP mids and track ids are short tokens).
const MAX_VIEW_ID_BYTES: usize = 64;

/// What `message` means for a joined session in `machine`'s phase, holding `perms`.
pub fn step(machine: &Machine, message: ClientMessage, perms: &Permissions) -> Step {
    let kind = message.kind();
    if !machine.accepts(&message) {
        return error(
            "not_admitted",
            "you are waiting to enter the room; only ping, refresh and leave are accepted \
             until `joined`",
            kind,
        );
    }
    let command = match message {
        ClientMessage::Join { .. } => {
            return error(
                "bad_message",
                "already joined; open another connection for another room",
                kind,
            );
        }
        ClientMessage::Ping { id } => return Step::Reply(ServerMessage::Pong { id }),
        // The media server is told as the session ends (the pump's `release_media`).
        ClientMessage::Leave {} => {
            return Step::Close(Close {
                reason: CloseReason::Normal,
                detail: None,
            });
        }
        ClientMessage::Refresh { token } => return Step::Refresh(token),
        ClientMessage::Moderate {
            action,
            identity,
            source,
            ban_seconds,
            reason,
            policy,
            reset,
        } => {
            return Step::Moderate(moderation::Request {
                action,
                identity,
                source,
                ban_seconds,
                reason,
                policy,
                reset,
            });
        }
        ClientMessage::Offer { sdp, tracks } => match authorize_sdp(&sdp, &tracks, perms) {
            Ok(_) => RelayCommand::Offer { sdp, tracks },
            Err(error) => return Step::Refused { error, kind },
        },
        ClientMessage::Answer { .. } => {
            // An old client answering a server offer that can no longer come: say so
            // instead of relaying SDP the media server would not expect.
            return error(
                "bad_message",
                "the media server never offers; see negotiation_needed",
                kind,
            );
        }
        ClientMessage::Candidate {
            candidate,
            sdp_mid,
            sdp_mline_index,
            username_fragment,
        } => RelayCommand::Candidate(Candidate {
            candidate,
            sdp_mid,
            sdp_mline_index,
            username_fragment,
        }),
        ClientMessage::Mute { source } => RelayCommand::Mute {
            source,
            muted: true,
        },
        ClientMessage::Unmute { source } => {
            if !perms.allows(source.capability()) {
                return forbid(
                    kind,
                    format!("unmute {}", source.as_str()),
                    source.capability(),
                );
            }
            RelayCommand::Mute {
                source,
                muted: false,
            }
        }
        ClientMessage::ScreenShareStart {} => {
            if !perms.allows(TrackSource::Screen.capability()) {
                return forbid(kind, "share a screen".into(), Capability::PublishScreen);
            }
            RelayCommand::ScreenShare(true)
        }
        ClientMessage::ScreenShareStop {} => RelayCommand::ScreenShare(false),
        ClientMessage::TrackViews { views } => {
            if views.is_empty() || views.len() > MAX_TRACK_VIEWS {
                return error(
                    "bad_message",
                    &format!("track_views: 1 to {MAX_TRACK_VIEWS} views"),
                    kind,
                );
            }
            let oversized = views.iter().any(|v| {
                v.mid.is_empty()
                    || v.mid.len() > MAX_VIEW_ID_BYTES
                    || v.track_id
                        .as_ref()
                        .is_some_and(|t| t.len() > MAX_VIEW_ID_BYTES)
            });
            if oversized {
                return error(
                    "bad_message",
                    &format!("track_views: mid and track_id of 1 to {MAX_VIEW_ID_BYTES} bytes"),
                    kind,
                );
            }
            RelayCommand::TrackViews(views)
        }
    };
    Step::Forward { command, kind }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::time::Instant;

    use super::*;
    use crate::config::ExpiryPolicy;
    use crate::policy::fixtures::{listener, member};
    use crate::protocol::ModerationAction;
    use crate::session::machine::Settings;

    fn machine(admitted: bool) -> Machine {
        let s = Duration::from_secs(1);
        let settings = Settings {
            join_timeout: 10 * s,
            idle_timeout: 60 * s,
            ping_interval: 20 * s,
            max_message_bytes: 1024,
            messages_per_second: 10,
            message_burst: 10,
            expiry_policy: ExpiryPolicy::Keep,
            refresh_warning_seconds: 60,
            leeway_seconds: 30,
        };
        let mut m = Machine::new(settings, Instant::now());
        m.on_joined(1_700_000_000, admitted);
        m
    }

    fn parse(v: serde_json::Value) -> ClientMessage {
        serde_json::from_value(v).unwrap()
    }

    fn reply(step: Step) -> serde_json::Value {
        match step {
            Step::Reply(message) => serde_json::to_value(message).unwrap(),
            other => panic!("not a reply: {other:?}"),
        }
    }

    fn forwarded(step: Step) -> RelayCommand {
        match step {
            Step::Forward { command, .. } => command,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    fn refused(step: Step) -> serde_json::Value {
        match step {
            Step::Refused { error, kind } => serde_json::to_value(refusal(&error, kind)).unwrap(),
            other => panic!("not refused: {other:?}"),
        }
    }

    /// An offer sending a microphone on mid 0.
    fn offer() -> serde_json::Value {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n";
        json!({"type": "offer", "sdp": sdp, "tracks": {"0": "microphone"}})
    }

    #[test]
    fn some_messages_are_answered_at_once() {
        let m = machine(true);
        let p = member();
        assert_eq!(
            reply(step(&m, parse(json!({"type": "ping", "id": 7})), &p)),
            json!({"type": "pong", "id": 7})
        );
        assert_eq!(
            reply(step(&m, parse(json!({"type": "join", "room": "r"})), &p)),
            json!({"type": "error", "code": "bad_message", "request": "join",
                   "message": "already joined; open another connection for another room"})
        );
        assert_eq!(
            reply(step(&m, parse(json!({"type": "answer", "sdp": "v=0"})), &p)),
            json!({"type": "error", "code": "bad_message", "request": "answer",
                   "message": "the media server never offers; see negotiation_needed"})
        );
    }

    #[test]
    fn leave_closes_1000_and_refresh_and_moderate_go_to_their_steps() {
        let m = machine(true);
        let p = member();
        match step(&m, parse(json!({"type": "leave"})), &p) {
            Step::Close(close) => {
                assert_eq!((close.reason.code(), close.detail), (1000, None))
            }
            other => panic!("{other:?}"),
        }
        match step(&m, parse(json!({"type": "refresh", "token": "t2"})), &p) {
            Step::Refresh(token) => assert_eq!(token, "t2"),
            other => panic!("{other:?}"),
        }
        let moderate = json!({"type": "moderate", "action": "ban", "identity": "kate",
                              "ban_seconds": 60, "reason": "spam"});
        match step(&m, parse(moderate), &p) {
            Step::Moderate(r) => {
                assert_eq!(r.action, ModerationAction::Ban);
                assert_eq!(r.identity.as_deref(), Some("kate"));
                assert_eq!(
                    (r.ban_seconds, r.reason.as_deref()),
                    (Some(60), Some("spam"))
                );
                assert_eq!((r.source, r.policy, r.reset), (None, None, false));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_waiting_session_is_told_it_is_not_admitted() {
        let m = machine(false);
        let p = member();
        for (message, kind) in [
            (offer(), "offer"),
            (json!({"type": "mute", "source": "microphone"}), "mute"),
            (
                json!({"type": "moderate", "action": "end_room"}),
                "moderate",
            ),
        ] {
            assert_eq!(
                reply(step(&m, parse(message), &p)),
                json!({"type": "error", "code": "not_admitted", "request": kind,
                       "message": "you are waiting to enter the room; only ping, refresh and leave are accepted until `joined`"})
            );
        }
        assert!(matches!(
            step(&m, parse(json!({"type": "ping"})), &p),
            Step::Reply(ServerMessage::Pong { id: None })
        ));
        assert!(matches!(
            step(&m, parse(json!({"type": "refresh", "token": "t"})), &p),
            Step::Refresh(_)
        ));
        assert!(matches!(
            step(&m, parse(json!({"type": "leave"})), &p),
            Step::Close(_)
        ));
    }

    #[test]
    fn track_views_are_relayed_for_anyone_and_bounded() {
        let m = machine(true);
        let views = json!({"type": "track_views", "views": [
            {"mid": "3", "track_id": "t1", "visible": true, "width": 640, "height": 360},
            {"mid": "4", "visible": false}
        ]});
        // A listener receives video too: its views are its own business.
        match forwarded(step(&m, parse(views), &listener())) {
            RelayCommand::TrackViews(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(
                    (v[0].track_id.as_deref(), v[0].width, v[0].height),
                    (Some("t1"), 640, 360)
                );
                assert_eq!(
                    (v[1].visible, v[1].width, v[1].track_id.clone()),
                    (false, 0, None)
                );
            }
            other => panic!("{other:?}"),
        }
        let view = json!({"mid": "3", "visible": true});
        let long = json!({"mid": "x".repeat(65), "visible": true});
        for bad in [
            json!({"type": "track_views", "views": []}),
            json!({"type": "track_views", "views": vec![view; MAX_TRACK_VIEWS + 1]}),
            json!({"type": "track_views", "views": [long]}),
            json!({"type": "track_views", "views": [{"mid": "", "visible": true}]}),
        ] {
            let answer = reply(step(&m, parse(bad), &member()));
            assert_eq!(
                (&answer["code"], &answer["request"]),
                (&json!("bad_message"), &json!("track_views"))
            );
        }
    }

    #[test]
    fn media_messages_are_relayed_as_the_permissions_allow() {
        let m = machine(true);
        // An offer publishing a microphone: relayed for a member, refused for a listener.
        match step(&m, parse(offer()), &member()) {
            Step::Forward {
                command: RelayCommand::Offer { tracks, .. },
                kind,
            } => {
                assert_eq!(kind, "offer");
                assert_eq!(tracks.get("0"), Some(&TrackSource::Microphone));
            }
            other => panic!("{other:?}"),
        }
        let refusal = refused(step(&m, parse(offer()), &listener()));
        assert_eq!(
            (&refusal["code"], &refusal["request"]),
            (&json!("forbidden"), &json!("offer"))
        );
        let bad = json!({"type": "offer", "sdp": "not sdp", "tracks": {}});
        assert_eq!(refused(step(&m, parse(bad), &member()))["code"], "bad_sdp");
        // Muting is always allowed; unmuting needs the source's permission.
        let mute = json!({"type": "mute", "source": "microphone"});
        assert_eq!(
            forwarded(step(&m, parse(mute), &listener())),
            RelayCommand::Mute {
                source: TrackSource::Microphone,
                muted: true
            }
        );
        let unmute = json!({"type": "unmute", "source": "microphone"});
        assert_eq!(
            forwarded(step(&m, parse(unmute.clone()), &member())),
            RelayCommand::Mute {
                source: TrackSource::Microphone,
                muted: false
            }
        );
        let refusal = refused(step(&m, parse(unmute), &listener()));
        assert_eq!(
            (&refusal["code"], &refusal["request"]),
            (&json!("forbidden"), &json!("unmute"))
        );
        assert!(
            refusal["message"]
                .as_str()
                .unwrap()
                .contains("unmute microphone")
        );
        // A screen share needs publish_screen to start, nothing to stop.
        let start = json!({"type": "screen_share_start"});
        assert_eq!(
            refused(step(&m, parse(start.clone()), &member()))["code"],
            "forbidden"
        );
        let mut sharer = member();
        sharer.set(Capability::PublishScreen, true);
        assert_eq!(
            forwarded(step(&m, parse(start), &sharer)),
            RelayCommand::ScreenShare(true)
        );
        assert_eq!(
            forwarded(step(
                &m,
                parse(json!({"type": "screen_share_stop"})),
                &listener()
            )),
            RelayCommand::ScreenShare(false)
        );
        let candidate = json!({"type": "candidate", "candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host",
                               "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"});
        assert_eq!(
            forwarded(step(&m, parse(candidate), &listener())),
            RelayCommand::Candidate(Candidate {
                candidate: "candidate:1 1 udp 1 192.0.2.1 9 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: Some("u".into()),
            })
        );
    }
}

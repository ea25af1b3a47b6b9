//! What a media server event means for the session: most go to the client as they are (one
//! server message each); a few change the session first (the end of the session, the room
//! letting a waiting session in, a live role change) or are timed (the answer to an offer),
//! and the pump does that before sending. Decided from the event alone.

use crate::config::Secret;
use crate::policy::{Permissions, Role};
use crate::protocol::ServerMessage;
use crate::relay::{MediaEnd, RelayEvent};

/// What the pump does with one relay event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Send this to the client.
    Send(ServerMessage),
    /// The media server ended the session's stream: `end` its typed reason, `reason` its
    /// prose (`None`: the stream ended without one); [`super::machine::Machine::on_media_closed`].
    Closed {
        /// The typed reason.
        end: MediaEnd,
        /// The prose, quoted to the client.
        reason: Option<String>,
    },
    /// The room let the session in (`joined` follows if it was waiting), with the token that
    /// resumes it and whether the room is end-to-end encrypted.
    Admitted(Option<Secret>, bool),
    /// The platform or a moderator changed the role and permissions: the session holds them
    /// ([`super::resume::Resume::on_permissions_changed`]), then the client is told.
    PermissionsChanged {
        /// The new role.
        role: Role,
        /// The new permissions.
        permissions: Permissions,
    },
    /// The answer to the client's offer (the pump times the round trip), then `answer`.
    Answer(String),
}

/// What `event` means (`None`: the relay stream ended).
pub fn classify(event: Option<RelayEvent>) -> Event {
    let Some(event) = event else {
        return Event::Closed {
            end: MediaEnd::Unspecified,
            reason: None,
        };
    };
    Event::Send(match event {
        RelayEvent::Closed { reason } => {
            return Event::Closed {
                end: reason.end,
                reason: Some(reason.text),
            };
        }
        RelayEvent::Admitted { resume_token, e2ee } => {
            return Event::Admitted(resume_token, e2ee);
        }
        RelayEvent::PermissionsChanged { role, permissions } => {
            return Event::PermissionsChanged { role, permissions };
        }
        RelayEvent::Answer(sdp) => return Event::Answer(sdp),
        RelayEvent::LobbyRequest(participant) => ServerMessage::LobbyRequest { participant },
        RelayEvent::LobbyLeft { identity, outcome } => {
            ServerMessage::LobbyLeft { identity, outcome }
        }
        RelayEvent::NegotiationNeeded { audio, video } => {
            ServerMessage::NegotiationNeeded { audio, video }
        }
        RelayEvent::Candidate(candidate) => ServerMessage::Candidate { candidate },
        RelayEvent::ParticipantJoined(participant) => {
            ServerMessage::ParticipantJoined { participant }
        }
        RelayEvent::ParticipantLeft(identity) => ServerMessage::ParticipantLeft { identity },
        RelayEvent::ParticipantUpdated(participant) => {
            ServerMessage::ParticipantUpdated { participant }
        }
        RelayEvent::TrackPublished {
            identity,
            track_id,
            source,
            mid,
        } => ServerMessage::TrackPublished {
            identity,
            track_id,
            source,
            mid,
        },
        RelayEvent::TrackUnpublished { identity, track_id } => {
            ServerMessage::TrackUnpublished { identity, track_id }
        }
        RelayEvent::MuteChanged {
            identity,
            source,
            muted,
        } => ServerMessage::MuteChanged {
            identity,
            source,
            muted,
        },
        RelayEvent::VoiceActivity(speakers) => ServerMessage::VoiceActivity { speakers },
        RelayEvent::MutedByModerator(source) => ServerMessage::MutedByModerator { source },
        RelayEvent::LayersWanted { mid, rids } => ServerMessage::LayersWanted { mid, rids },
        RelayEvent::TrackPaused {
            mid,
            track_id,
            reason: Some(reason),
        } => ServerMessage::TrackPaused {
            mid,
            track_id,
            reason,
        },
        RelayEvent::TrackPaused {
            mid,
            track_id,
            reason: None,
        } => ServerMessage::TrackResumed { mid, track_id },
        RelayEvent::UnmuteRequested(source) => ServerMessage::UnmuteRequested { source },
        RelayEvent::RecordingStarted {
            recording_id,
            started_at_ms,
            started_by,
        } => ServerMessage::RecordingStarted {
            recording_id,
            started_at_ms,
            started_by,
        },
        RelayEvent::RecordingStopped {
            recording_id,
            reason,
        } => ServerMessage::RecordingStopped {
            recording_id,
            reason,
        },
        RelayEvent::Error { code, message } => ServerMessage::Error {
            code,
            message,
            request: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::{Capability, TrackSource};
    use crate::protocol::{Identity, Participant};
    use crate::relay::EndReason;

    fn sent(event: RelayEvent) -> serde_json::Value {
        match classify(Some(event)) {
            Event::Send(message) => serde_json::to_value(message).unwrap(),
            other => panic!("not sent as is: {other:?}"),
        }
    }

    #[test]
    fn the_end_of_the_stream_and_a_typed_end_close_the_session() {
        assert_eq!(
            classify(None),
            Event::Closed {
                end: MediaEnd::Unspecified,
                reason: None
            }
        );
        assert_eq!(
            classify(Some(RelayEvent::Closed {
                reason: EndReason::from("banned")
            })),
            Event::Closed {
                end: MediaEnd::Banned,
                reason: Some("banned".into())
            }
        );
    }

    #[test]
    fn admission_role_changes_and_answers_go_through_the_session_first() {
        let token = Some(Secret::new("r"));
        assert_eq!(
            classify(Some(RelayEvent::Admitted {
                resume_token: token.clone(),
                e2ee: true,
            })),
            Event::Admitted(token, true)
        );
        let permissions = Permissions::from_capabilities(&[Capability::Subscribe]);
        assert_eq!(
            classify(Some(RelayEvent::PermissionsChanged {
                role: Role::Guest,
                permissions
            })),
            Event::PermissionsChanged {
                role: Role::Guest,
                permissions
            }
        );
        assert_eq!(
            classify(Some(RelayEvent::Answer("v=0".into()))),
            Event::Answer("v=0".into())
        );
    }

    #[test]
    fn the_rest_reach_the_client_as_they_are() {
        let kate = || Identity::new("kate");
        assert_eq!(
            sent(RelayEvent::NegotiationNeeded { audio: 2, video: 1 }),
            json!({"type": "negotiation_needed", "audio": 2, "video": 1})
        );
        assert_eq!(
            sent(RelayEvent::ParticipantJoined(Participant {
                identity: kate(),
                name: None,
                role: None
            }))["type"],
            "participant_joined"
        );
        assert_eq!(
            sent(RelayEvent::ParticipantLeft(kate())),
            json!({"type": "participant_left", "identity": "kate"})
        );
        assert_eq!(
            sent(RelayEvent::MuteChanged {
                identity: kate(),
                source: TrackSource::Microphone,
                muted: true
            }),
            json!({"type": "mute_changed", "identity": "kate", "source": "microphone", "muted": true})
        );
        assert_eq!(
            sent(RelayEvent::MutedByModerator(TrackSource::Camera)),
            json!({"type": "muted_by_moderator", "source": "camera"})
        );
        assert_eq!(
            sent(RelayEvent::UnmuteRequested(TrackSource::Microphone)),
            json!({"type": "unmute_requested", "source": "microphone"})
        );
        assert_eq!(
            sent(RelayEvent::LobbyLeft {
                identity: kate(),
                outcome: "admitted".into()
            }),
            json!({"type": "lobby_left", "identity": "kate", "outcome": "admitted"})
        );
        // The media server's own errors answer no request of the client's.
        assert_eq!(
            sent(RelayEvent::Error {
                code: "media_unavailable",
                message: "down".into()
            }),
            json!({"type": "error", "code": "media_unavailable", "message": "down"})
        );
        for event in [
            RelayEvent::Candidate(crate::protocol::Candidate {
                candidate: String::new(),
                sdp_mid: None,
                sdp_mline_index: None,
                username_fragment: None,
            }),
            RelayEvent::TrackPublished {
                identity: kate(),
                track_id: "t".into(),
                source: TrackSource::Camera,
                mid: "1".into(),
            },
            RelayEvent::TrackUnpublished {
                identity: kate(),
                track_id: "t".into(),
            },
            RelayEvent::VoiceActivity(vec![kate()]),
            RelayEvent::LobbyRequest(Participant {
                identity: kate(),
                name: None,
                role: Some(Role::Member),
            }),
        ] {
            assert!(matches!(classify(Some(event)), Event::Send(_)));
        }
    }
}

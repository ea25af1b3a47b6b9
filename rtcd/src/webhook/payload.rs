//! The JSON body of a webhook request (`docs/webhooks.md` documents it field by field).
//!
//! The body is encoded once per event, when the dispatcher accepts it: every URL and every
//! retry gets the same bytes, so the event id and the signed content are stable.

use serde::Serialize;

use crate::sfu::events::{EventParticipant, RoomEvent, RoomEventKind};

/// The `type` of an event as the body names it.
pub fn event_type(kind: &RoomEventKind) -> &'static str {
    match kind {
        RoomEventKind::RoomStarted => "room_started",
        RoomEventKind::RoomFinished => "room_finished",
        RoomEventKind::ParticipantJoined(_) => "participant_joined",
        RoomEventKind::ParticipantLeft { .. } => "participant_left",
        RoomEventKind::ParticipantRemoved { .. } => "participant_removed",
        RoomEventKind::TrackPublished { .. } => "track_published",
        RoomEventKind::TrackUnpublished { .. } => "track_unpublished",
        RoomEventKind::RecordingStarted { .. } => "recording_started",
        RoomEventKind::RecordingStopped { .. } => "recording_stopped",
        RoomEventKind::RecordingReady { .. } => "recording_ready",
    }
}

/// A fresh event id: `evt_` and 128 random bits in hex. Unique without coordination, so a
/// receiver can deduplicate retries (and redeliveries) by it.
pub fn new_event_id() -> String {
    format!("evt_{:032x}", rand::random::<u128>())
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    created_at: i64,
    room: Room<'a>,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    participant: Option<Participant<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    track: Option<Track<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    banned_until: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<Recording<'a>>,
}

/// A recording as webhooks name it: its id always; the rest in `recording_ready`.
#[derive(Serialize)]
struct Recording<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<rtcd_recording::manifest::StopReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<RecordingFile<'a>>>,
}

/// One file of a ready recording.
#[derive(Serialize)]
struct RecordingFile<'a> {
    name: &'a str,
    bytes: u64,
    duration_ms: u64,
    identity: &'a str,
    session_id: &'a str,
    source: rtcd_recording::manifest::Source,
    codec: rtcd_recording::manifest::Codec,
    start_ms: f64,
}

impl<'a> Recording<'a> {
    fn id(id: &'a str) -> Self {
        Recording {
            id,
            started_by: None,
            stop_reason: None,
            segment: None,
            started_at: None,
            stopped_at: None,
            degraded: None,
            bytes: None,
            files: None,
        }
    }
}

#[derive(Serialize)]
struct Room<'a> {
    name: &'a str,
    instance: &'a str,
}

#[derive(Serialize)]
struct Participant<'a> {
    session_id: &'a str,
    identity: &'a str,
    name: &'a str,
    role: &'a str,
}

#[derive(Serialize)]
struct Track<'a> {
    id: &'a str,
    kind: &'static str,
}

impl<'a> From<&'a EventParticipant> for Participant<'a> {
    fn from(p: &'a EventParticipant) -> Self {
        Participant {
            session_id: p.session.as_str(),
            identity: p.user.as_str(),
            name: &p.display_name,
            role: &p.role,
        }
    }
}

/// The body of `event` under the id `id`.
pub fn encode(id: &str, event: &RoomEvent) -> Vec<u8> {
    let mut body = Body {
        id,
        kind: event_type(&event.kind),
        created_at: event.at_ms,
        room: Room {
            name: event.call.as_str(),
            instance: &event.room_instance,
        },
        seq: event.seq,
        participant: None,
        track: None,
        reason: None,
        banned_until: None,
        recording: None,
    };
    match &event.kind {
        RoomEventKind::RoomStarted | RoomEventKind::RoomFinished => {}
        RoomEventKind::ParticipantJoined(participant) => {
            body.participant = Some(participant.into());
        }
        RoomEventKind::ParticipantLeft {
            participant,
            reason,
        } => {
            body.participant = Some(participant.into());
            body.reason = Some(reason);
        }
        RoomEventKind::ParticipantRemoved {
            participant,
            banned_until,
        } => {
            body.participant = Some(participant.into());
            body.banned_until = *banned_until;
        }
        RoomEventKind::TrackPublished {
            participant,
            track_id,
            kind,
        }
        | RoomEventKind::TrackUnpublished {
            participant,
            track_id,
            kind,
        } => {
            body.participant = Some(participant.into());
            body.track = Some(Track {
                id: track_id,
                kind: kind.as_str(),
            });
        }
        RoomEventKind::RecordingStarted {
            recording_id,
            started_by,
        } => {
            body.recording = Some(Recording {
                started_by: Some(started_by),
                ..Recording::id(recording_id)
            });
        }
        RoomEventKind::RecordingStopped {
            recording_id,
            reason,
        } => {
            body.recording = Some(Recording {
                stop_reason: Some(*reason),
                ..Recording::id(recording_id)
            });
        }
        RoomEventKind::RecordingReady { manifest, bytes } => {
            body.recording = Some(Recording {
                started_by: Some(&manifest.started_by),
                stop_reason: manifest.stop_reason,
                segment: Some(manifest.segment),
                started_at: Some(manifest.started_at_ms),
                stopped_at: manifest.stopped_at_ms,
                degraded: Some(manifest.degraded),
                bytes: Some(*bytes),
                files: Some(
                    manifest
                        .tracks
                        .iter()
                        .map(|t| RecordingFile {
                            name: &t.file,
                            bytes: t.bytes,
                            duration_ms: t.duration_ms,
                            identity: &t.participant.user,
                            session_id: &t.participant.session,
                            source: t.source,
                            codec: t.codec,
                            start_ms: t.start_ms,
                        })
                        .collect(),
                ),
                ..Recording::id(&manifest.recording_id)
            });
        }
    }
    // Strings, integers and options of them only: serialization cannot fail.
    serde_json::to_vec(&body).expect("webhook body is plain JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::{CallId, SessionId, TenantId, TrackKind, UserId};

    fn event(kind: RoomEventKind) -> RoomEvent {
        RoomEvent {
            tenant: TenantId::new("acme"),
            call: CallId::new("standup"),
            room_instance: "ri_1".into(),
            seq: 7,
            at_ms: 1_700_000_000_123,
            kind,
        }
    }

    fn alice() -> EventParticipant {
        EventParticipant {
            session: SessionId::new("s1"),
            user: UserId::new("alice"),
            display_name: "Alice \"A\"".into(),
            role: "moderator".into(),
        }
    }

    fn json(kind: RoomEventKind) -> serde_json::Value {
        serde_json::from_slice(&encode("evt_x", &event(kind))).unwrap()
    }

    #[test]
    fn fields_per_event_type() {
        let v = json(RoomEventKind::RoomStarted);
        assert_eq!(
            v,
            serde_json::json!({"id": "evt_x", "type": "room_started", "created_at": 1_700_000_000_123_i64,
                "room": {"name": "standup", "instance": "ri_1"}, "seq": 7})
        );
        let v = json(RoomEventKind::ParticipantLeft {
            participant: alice(),
            reason: "leave".into(),
        });
        assert_eq!(v["type"], "participant_left");
        assert_eq!(
            v["participant"],
            serde_json::json!({"session_id": "s1", "identity": "alice", "name": "Alice \"A\"", "role": "moderator"})
        );
        assert_eq!(v["reason"], "leave");
        assert!(v.get("track").is_none() && v.get("banned_until").is_none());
        let v = json(RoomEventKind::ParticipantRemoved {
            participant: alice(),
            banned_until: Some(1_700_003_600),
        });
        assert_eq!(
            (v["type"].as_str(), v["banned_until"].as_i64()),
            (Some("participant_removed"), Some(1_700_003_600))
        );
        let v = json(RoomEventKind::ParticipantRemoved {
            participant: alice(),
            banned_until: None,
        });
        assert!(v.get("banned_until").is_none());
        let v = json(RoomEventKind::TrackUnpublished {
            participant: alice(),
            track_id: "t1".into(),
            kind: TrackKind::ScreenAudio,
        });
        assert_eq!(v["type"], "track_unpublished");
        assert_eq!(
            v["track"],
            serde_json::json!({"id": "t1", "kind": "screen_audio"})
        );
        assert_eq!(
            json(RoomEventKind::ParticipantJoined(alice()))["type"],
            "participant_joined"
        );
        assert_eq!(json(RoomEventKind::RoomFinished)["type"], "room_finished");
    }

    #[test]
    fn event_ids_are_unique_and_prefixed() {
        let (a, b) = (new_event_id(), new_event_id());
        assert_ne!(a, b);
        assert!(a.starts_with("evt_") && a.len() == 36, "{a}");
    }
}

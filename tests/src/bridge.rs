//! Lets the webrtc-rs [`crate::media::Participant`] join through the proxy's WebSocket instead
//! of rtcd's gRPC: the same peer, signaling translated between the proxy's JSON protocol
//! (docs/protocol.md) and the `rtcd.v1` messages the participant speaks.

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use rtcd_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::protocol::Message;

/// The inbound half, shaped like a tonic stream.
pub type Inbound = ReceiverStream<Result<pb::ServerSignal, tonic::Status>>;

/// Opens `/ws` at `url`, joins `room` with `token`, and returns the outbound sender and the
/// inbound stream once the proxy answered `joined` with a media server attached.
pub async fn join(
    url: &str,
    token: &str,
    room: &str,
) -> anyhow::Result<(mpsc::Sender<pb::ClientSignal>, Inbound)> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("WebSocket connect")?;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(
        json!({"type": "join", "room": room, "token": token}).to_string(),
    ))
    .await?;
    joined(&mut stream).await?;
    let (out_tx, mut out_rx) = mpsc::channel::<pb::ClientSignal>(64);
    let (in_tx, in_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(signal) = out_rx.recv().await {
            let Some(value) = signal.signal.as_ref().and_then(client_json) else {
                continue;
            };
            if sink.send(Message::text(value.to_string())).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    tokio::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            if let Message::Close(Some(close)) = &frame {
                // The proxy's close code and label, as a harness `SessionClosed`
                // ("4012 banned"), so tests can see why a bridged session ended.
                let reason = format!("{} {}", u16::from(close.code), close.reason);
                let _ = in_tx
                    .send(Ok(pb::ServerSignal {
                        signal: Some(pb::server_signal::Signal::SessionClosed(
                            pb::SessionClosed { reason },
                        )),
                    }))
                    .await;
                return;
            }
            let Message::Text(text) = frame else { continue };
            let Ok(msg) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(signal) = server_signal(&msg)
                && in_tx
                    .send(Ok(pb::ServerSignal {
                        signal: Some(signal),
                    }))
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    Ok((out_tx, ReceiverStream::new(in_rx)))
}

/// Reads the proxy's answers to `join` until `joined` with a media server attached (bounded):
/// an `error`, a join without media, a close or silence is an error saying which.
pub async fn joined<S>(stream: &mut S) -> anyhow::Result<()>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
            .await
            .context("no answer to join")?
            .context("closed before joined")??;
        let Message::Text(text) = frame else { continue };
        let msg: Value = serde_json::from_str(&text)?;
        match msg["type"].as_str() {
            Some("joined") if msg["media"] == true => return Ok(()),
            Some("joined") => bail!("joined without a media server: {msg}"),
            Some("error") => bail!("join refused: {msg}"),
            _ => {}
        }
    }
}

/// A harness signal as a proxy client message (None for what the proxy protocol lacks).
pub fn client_json(signal: &pb::client_signal::Signal) -> Option<Value> {
    use pb::client_signal::Signal;
    Some(match signal {
        Signal::Offer(d) => {
            let tracks: serde_json::Map<String, Value> = d
                .tracks
                .iter()
                .filter_map(|(mid, k)| Some((mid.clone(), json!(source_name(*k)?))))
                .collect();
            json!({"type": "offer", "sdp": d.sdp, "tracks": tracks})
        }
        Signal::Candidate(c) => json!({
            "type": "candidate",
            "candidate": c.candidate,
            "sdpMid": c.sdp_mid,
            "sdpMLineIndex": c.sdp_mline_index,
        }),
        Signal::Leave(_) => json!({"type": "leave"}),
        Signal::Mute(m) => {
            let source = source_name(m.kind)?;
            json!({"type": if m.muted { "mute" } else { "unmute" }, "source": source})
        }
        Signal::ScreenShare(s) => {
            json!({"type": if s.on { "screen_share_start" } else { "screen_share_stop" }})
        }
        // The proxy takes permission changes from refreshed tokens, not from clients.
        Signal::Join(_) | Signal::UpdatePermissions(_) | Signal::Token(_) => return None,
    })
}

/// The proxy protocol's source name of an rtcd.v1 track kind.
fn source_name(kind: i32) -> Option<&'static str> {
    Some(match pb::TrackKind::try_from(kind).ok()? {
        pb::TrackKind::Audio => "microphone",
        pb::TrackKind::Video => "camera",
        pb::TrackKind::Screen => "screen",
        pb::TrackKind::ScreenAudio => "screen_audio",
        pb::TrackKind::Unspecified => return None,
    })
}

/// A proxy server message as a harness signal (None for what rtcd.v1 lacks).
pub fn server_signal(msg: &Value) -> Option<pb::server_signal::Signal> {
    use pb::server_signal::Signal;
    let text = |k: &str| msg[k].as_str().unwrap_or_default().to_owned();
    let kind = |source: &str| match source {
        "microphone" => pb::TrackKind::Audio,
        "camera" => pb::TrackKind::Video,
        "screen" => pb::TrackKind::Screen,
        "screen_audio" => pb::TrackKind::ScreenAudio,
        _ => pb::TrackKind::Unspecified,
    } as i32;
    let count = |k: &str| {
        msg[k]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    Some(match msg["type"].as_str()? {
        "answer" => Signal::Answer(pb::SessionDescription {
            sdp: text("sdp"),
            tracks: Default::default(),
        }),
        "negotiation_needed" => Signal::NegotiationNeeded(pb::NegotiationNeeded {
            audio: count("audio"),
            video: count("video"),
        }),
        "participant_joined" => Signal::ParticipantJoined(pb::ParticipantEvent {
            session_id: String::new(),
            user_id: msg["participant"]["identity"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            display_name: msg["participant"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }),
        "participant_left" => Signal::ParticipantLeft(pb::ParticipantEvent {
            user_id: text("identity"),
            ..Default::default()
        }),
        "candidate" => Signal::Candidate(pb::IceCandidate {
            candidate: text("candidate"),
            sdp_mid: msg["sdpMid"].as_str().map(str::to_owned),
            sdp_mline_index: msg["sdpMLineIndex"].as_u64().map(|i| i as u32),
        }),
        "track_published" => Signal::TrackPublished(pb::TrackEvent {
            session_id: String::new(),
            user_id: text("identity"),
            kind: kind(&text("source")),
            track_id: text("track_id"),
            mid: text("mid"),
            ..Default::default()
        }),
        "track_unpublished" => Signal::TrackRemoved(pb::TrackEvent {
            session_id: String::new(),
            user_id: text("identity"),
            kind: 0,
            track_id: text("track_id"),
            ..Default::default()
        }),
        "mute_changed" => Signal::MuteChanged(pb::MuteEvent {
            user_id: text("identity"),
            kind: kind(&text("source")),
            muted: msg["muted"].as_bool().unwrap_or_default(),
            ..Default::default()
        }),
        "muted_by_moderator" => Signal::MutedByModerator(pb::MuteEvent {
            kind: kind(&text("source")),
            muted: true,
            ..Default::default()
        }),
        "unmute_requested" => Signal::UnmuteRequested(pb::MuteEvent {
            kind: kind(&text("source")),
            ..Default::default()
        }),
        "permissions_changed" => {
            let flag = |k: &str| msg["permissions"][k].as_bool().unwrap_or_default();
            Signal::PermissionsChanged(pb::PermissionsChanged {
                role: text("role"),
                permissions: Some(pb::Permissions {
                    publish_audio: flag("publish_audio"),
                    publish_video: flag("publish_video"),
                    publish_screen: flag("publish_screen"),
                    subscribe: flag("subscribe"),
                }),
            })
        }
        "error" => Signal::Error(pb::Error {
            code: 0,
            message: format!("{}: {}", text("code"), text("message")),
        }),
        _ => return None,
    })
}

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
    let (ws, _) = connect_and_join(url, token, room, None).await?;
    let (mut sink, mut stream) = ws.split();
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
                            pb::SessionClosed {
                                reason,
                                ..Default::default()
                            },
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

/// What a [`join_resumable`] bridge did after losing its connection: one entry per reconnect,
/// `true` when the proxy said `joined.resumed`, `false` when it opened a new session instead.
pub type Resumes = std::sync::Arc<std::sync::Mutex<Vec<bool>>>;

/// Like [`join`], but behaving as docs/protocol.md asks of a client when its signaling
/// connection is lost (the proxy shut down with 1001, or the connection dropped without a close
/// frame): it reconnects to the next of `urls` (as a load balancer in front of proxy replicas
/// would pick another) with `join.resume`, while the peer's media carries on. A reconnect that
/// does not resume ends the bridged session ("resume failed"), since this peer does not build a
/// new peer connection; every reconnect is recorded in the returned [`Resumes`].
pub async fn join_resumable(
    urls: Vec<String>,
    token: &str,
    room: &str,
) -> anyhow::Result<(mpsc::Sender<pb::ClientSignal>, Inbound, Resumes)> {
    let (mut ws, joined_msg) = connect_and_join(&urls[0], token, room, None).await?;
    let mut resume_token = joined_msg["resume_token"]
        .as_str()
        .context("joined has no resume_token")?
        .to_owned();
    let (out_tx, mut out_rx) = mpsc::channel::<pb::ClientSignal>(64);
    let (in_tx, in_rx) = mpsc::channel(64);
    let resumes: Resumes = Default::default();
    let log = resumes.clone();
    let (token, room) = (token.to_owned(), room.to_owned());
    tokio::spawn(async move {
        let mut next_url = 1;
        loop {
            // Until the connection is lost (or the bridged session ends: return).
            loop {
                tokio::select! {
                    signal = out_rx.recv() => {
                        let Some(signal) = signal else {
                            let _ = ws.send(Message::Close(None)).await;
                            return;
                        };
                        let Some(value) = signal.signal.as_ref().and_then(client_json) else {
                            continue;
                        };
                        // A send that fails means the connection is gone: the read side sees it.
                        let _ = ws.send(Message::text(value.to_string())).await;
                    }
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Close(Some(close)))) if u16::from(close.code) != 1001 => {
                            let reason = format!("{} {}", u16::from(close.code), close.reason);
                            let _ = in_tx.send(Ok(closed(reason))).await;
                            return;
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(Message::Text(text))) => {
                            let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
                            if let Some(signal) = server_signal(&msg)
                                && in_tx.send(Ok(pb::ServerSignal { signal: Some(signal) })).await.is_err()
                            {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
            // Reconnect with the resume token, trying the replicas in turn for a few seconds.
            let mut attempt = 0;
            let rejoined = loop {
                let url = &urls[next_url % urls.len()];
                next_url += 1;
                match connect_and_join(url, &token, &room, Some(&resume_token)).await {
                    Ok(ok) => break Some(ok),
                    Err(_) if attempt < 40 => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(_) => break None,
                }
            };
            let Some((next_ws, msg)) = rejoined else {
                let _ = in_tx
                    .send(Ok(closed("resume failed: no proxy answered".into())))
                    .await;
                return;
            };
            let resumed = msg["resumed"] == true;
            log.lock().unwrap().push(resumed);
            if !resumed {
                let _ = in_tx
                    .send(Ok(closed(format!("resume failed: {msg}"))))
                    .await;
                return;
            }
            if let Some(t) = msg["resume_token"].as_str() {
                resume_token = t.to_owned();
            }
            ws = next_ws;
        }
    });
    Ok((out_tx, ReceiverStream::new(in_rx), resumes))
}

/// The proxy connection of a bridged session.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws` at `url` and joins (resuming with `resume`); returns the socket and `joined`
/// once the proxy answered it with a media server attached (bounded): an `error`, a join
/// without media, a close or silence is an error saying which.
pub async fn connect_and_join(
    url: &str,
    token: &str,
    room: &str,
    resume: Option<&str>,
) -> anyhow::Result<(Socket, Value)> {
    // Without Nagle, as browsers open their WebSockets.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .context("WebSocket connect")?;
    let mut join = json!({"type": "join", "room": room, "token": token});
    if let Some(resume) = resume {
        join["resume"] = json!(resume);
    }
    ws.send(Message::text(join.to_string())).await?;
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(20), ws.next())
            .await
            .context("no answer to join")?
            .context("closed before joined")??;
        let Message::Text(text) = frame else { continue };
        let msg: Value = serde_json::from_str(&text)?;
        match msg["type"].as_str() {
            Some("joined") if msg["media"] == true => return Ok((ws, msg)),
            Some("joined") => bail!("joined without a media server: {msg}"),
            Some("error") => bail!("join refused: {msg}"),
            _ => {}
        }
    }
}

fn closed(reason: String) -> pb::ServerSignal {
    pb::ServerSignal {
        signal: Some(pb::server_signal::Signal::SessionClosed(
            pb::SessionClosed {
                reason,
                ..Default::default()
            },
        )),
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
        Signal::TrackViews(v) => {
            let views: Vec<Value> = v
                .views
                .iter()
                .map(|v| {
                    let mut view = json!({
                        "mid": v.mid, "visible": v.visible, "width": v.width, "height": v.height,
                    });
                    if !v.track_id.is_empty() {
                        view["track_id"] = json!(v.track_id);
                    }
                    view
                })
                .collect();
            json!({"type": "track_views", "views": views})
        }
        // The proxy takes permission changes from refreshed tokens, not from clients.
        Signal::Join(_) | Signal::Resume(_) | Signal::UpdatePermissions(_) | Signal::Token(_) => {
            return None;
        }
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
            role: msg["participant"]["role"]
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
        "layers_wanted" => Signal::LayersWanted(pb::LayersWanted {
            mid: text("mid"),
            rids: msg["rids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        "track_paused" | "track_resumed" => Signal::TrackPaused(pb::TrackPaused {
            mid: text("mid"),
            track_id: text("track_id"),
            paused: msg["type"] == "track_paused",
            reason: match msg["reason"].as_str() {
                Some("bandwidth") => pb::PauseReason::Bandwidth,
                Some("hidden") => pb::PauseReason::Hidden,
                _ => pb::PauseReason::Unspecified,
            } as i32,
        }),
        "error" => Signal::Error(pb::Error {
            code: 0,
            message: format!("{}: {}", text("code"), text("message")),
        }),
        _ => return None,
    })
}

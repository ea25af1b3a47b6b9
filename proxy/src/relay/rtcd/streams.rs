//! Session streams: opening (or resuming) a session's bidirectional stream on its host, placing
//! a join again when a host is unreachable or full, typing refusals, and the two pumps between
//! the session and the stream.

use super::*;

impl RtcdRelay {
    /// Opens the session's stream on the host its room is placed on. A host that cannot be
    /// reached is marked unready at once (passive health: the probe marks it ready again when
    /// it answers `/readyz`), and the join is placed again, on the next host, rather than
    /// failing: after a host dies, rejoining clients land on a live one without waiting for
    /// the next probe.
    pub(super) async fn open(&self, request: &JoinRequest) -> Result<RelayLink, RelayError> {
        let room = request.grant.room.as_str();
        if let Some((session, secret)) = request
            .resume
            .as_ref()
            .and_then(|t| parse_resume_token(t.expose()))
        {
            // The session lives where its room is. Anything but a resumed session (it expired,
            // its host is gone, the token is stale) falls through to an ordinary join: the
            // client then builds a new peer connection.
            if let Ok((key, host)) = self.place(room).await {
                match self
                    .resume_on(request, &key, &host, &session, &secret)
                    .await
                {
                    Ok(link) => return Ok(link),
                    Err(e) => {
                        tracing::debug!(session = %request.session, host = %key, error = %e, "no session to resume; joining afresh")
                    }
                }
            }
        }
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<RelayError> = None;
        loop {
            let (key, host, found) = match self.place_found(room, &tried).await {
                Ok(placed) => placed,
                Err(e) => {
                    return Err(match last {
                        Some(RelayError::Unavailable(_)) | None if !tried.is_empty() => {
                            RelayError::Unavailable(format!(
                                "no reachable media server (tried {})",
                                tried.join(", ")
                            ))
                        }
                        Some(e) => e,
                        None => RelayError::Unavailable(e.into()),
                    });
                }
            };
            match self.open_on(request, &key, &host).await {
                // Only a host now counted unready (it failed at the transport level) is left
                // for another: a room whose host merely answered an error stays where it is.
                Err(RelayError::Unavailable(e)) if !self.hosts.is_ready(&key) => {
                    tracing::info!(session = %request.session, host = %key, error = %e, "rtcd host unreachable; placing the join again");
                    tried.push(key);
                    last = Some(RelayError::Unavailable(e));
                }
                // The host is at capacity for new rooms (the room is not there: rooms already
                // on a host are found by `place` and always taken): count it full until its
                // next probe, and place the room on another host.
                Err(RelayError::HostCapacity(e)) => {
                    self.hosts.set_load(&key, 1.0);
                    tracing::info!(session = %request.session, host = %key, "rtcd host at capacity; placing the new room on another host");
                    tried.push(key);
                    last = Some(RelayError::Refused(e));
                }
                Ok(link) => {
                    // A room opened here just now may have been opened at the same moment
                    // elsewhere by another replica: look again once both joins have landed.
                    if !found && self.all_hosts(true).len() > 1 {
                        self.spawn_heal(room, SPLIT_CHECK_DELAY);
                    }
                    return Ok(link);
                }
                other => return other,
            }
        }
    }

    /// [`RtcdRelay::open`] on one host.
    pub(super) async fn open_on(
        &self,
        request: &JoinRequest,
        key: &str,
        host: &Host,
    ) -> Result<RelayLink, RelayError> {
        let room = request.grant.room.as_str();
        let session_id = format!("{}-{}", self.instance, request.session.0);
        let grant = &request.grant;
        let join = pb::ClientSignal {
            signal: Some(pb::client_signal::Signal::Join(pb::Join {
                call_id: room.to_owned(),
                session_id: session_id.clone(),
                user_id: grant.identity.as_str().to_owned(),
                display_name: display_name(grant.name.as_deref()),
                permissions: Some(permissions_to_pb(&grant.permissions)),
                role: grant.role.as_str().to_owned(),
                token: Some(token_info(grant)),
                policy: Some(policy_to_pb(request.policy)),
            })),
        };
        let (to_rtcd, inbound, first) = self.start_stream(key, host, join).await?;
        match first {
            // Joined at once, or held by the room's policy (admitted later, `Admitted`).
            Some(
                first @ (pb::server_signal::Signal::Joined(_)
                | pb::server_signal::Signal::Waiting(_)),
            ) => {
                let (waiting, resume_token, e2ee) = match first {
                    pb::server_signal::Signal::Waiting(w) => (
                        Some(Waiting {
                            reason: w.reason,
                            timeout_seconds: w.timeout_seconds,
                        }),
                        None,
                        false,
                    ),
                    pb::server_signal::Signal::Joined(j) => (
                        None,
                        (!j.resume_secret.is_empty())
                            .then(|| resume_token(&session_id, &j.resume_secret)),
                        j.e2ee,
                    ),
                    _ => (None, None, false),
                };
                tracing::debug!(session = %request.session, rtcd_session = %session_id, host = %key, waiting = ?waiting, "session opened on rtcd");
                let (hosts, key) = (self.hosts.clone(), key.to_owned());
                let lost = move || suspect(&hosts, &key, "a session's stream broke");
                let mut link =
                    spawn_pumps(to_rtcd, inbound, EventTranslator::new(session_id), lost);
                link.waiting = waiting;
                link.resume_token = resume_token;
                link.e2ee = e2ee;
                Ok(link)
            }
            Some(pb::server_signal::Signal::SessionClosed(c)) => Err(RelayError::Refused(c.reason)),
            Some(pb::server_signal::Signal::Error(e)) => Err(RelayError::Refused(e.message)),
            _ => Err(RelayError::Unavailable(
                "media server ended the stream".into(),
            )),
        }
    }

    /// Takes over the parked session `session` on `host` (its stream broke with the proxy that
    /// held it); `Refused` / `Unavailable` when it cannot be, and the caller joins afresh.
    pub(super) async fn resume_on(
        &self,
        request: &JoinRequest,
        key: &str,
        host: &Host,
        session: &str,
        secret: &str,
    ) -> Result<RelayLink, RelayError> {
        let grant = &request.grant;
        let resume = pb::ClientSignal {
            signal: Some(pb::client_signal::Signal::Resume(pb::Resume {
                call_id: grant.room.as_str().to_owned(),
                session_id: session.to_owned(),
                user_id: grant.identity.as_str().to_owned(),
                secret: secret.to_owned(),
                token: Some(token_info(grant)),
            })),
        };
        let (to_rtcd, inbound, first) = self.start_stream(key, host, resume).await?;
        let Some(pb::server_signal::Signal::Resumed(resumed)) = first else {
            return Err(RelayError::Unavailable(
                "media server did not resume the session".into(),
            ));
        };
        tracing::info!(session = %request.session, rtcd_session = %session, host = %key, "session resumed on rtcd");
        let mut translator = EventTranslator::new(session.to_owned());
        let participants = translator.seed(&resumed.participants);
        let (hosts, key) = (self.hosts.clone(), key.to_owned());
        let lost = move || suspect(&hosts, &key, "a session's stream broke");
        let mut link = spawn_pumps(to_rtcd, inbound, translator, lost);
        link.resume_token = Some(resume_token(session, secret));
        link.e2ee = resumed.e2ee;
        link.resumed = Some(Resumed {
            participants,
            role: role_from(&resumed.role),
            permissions: permissions_from_pb(resumed.permissions),
        });
        Ok(link)
    }

    /// Opens a session stream on `host` with `first` as its first message and reads rtcd's
    /// first answer (`None`: the stream ended). Logs in again once if the bearer token was
    /// refused; a host that does not answer in [`JOIN_TIMEOUT`], or whose endpoint is
    /// unavailable, is counted unready.
    pub(super) async fn start_stream(
        &self,
        key: &str,
        host: &Host,
        first: pb::ClientSignal,
    ) -> Result<
        (
            mpsc::Sender<Box<pb::ClientSignal>>,
            tonic::Streaming<pb::ServerSignal>,
            Option<pb::server_signal::Signal>,
        ),
        RelayError,
    > {
        let mut renew = false;
        loop {
            let token = self.token(key, host, renew).await?;
            // Boxed in the queue: a channel allocates its first block of 32 slots up front, and
            // unboxed (192 bytes each) that is 6 KiB per session for a queue mostly empty.
            let (to_rtcd, outbound) = mpsc::channel::<Box<pb::ClientSignal>>(LINK_CAPACITY);
            to_rtcd
                .try_send(Box::new(first.clone()))
                .expect("a fresh channel has room");
            let outbound = ReceiverStream::new(outbound).map(|signal| *signal);
            let mut call = tonic::Request::new(outbound);
            let value = format!("Bearer {token}").parse().map_err(|_| {
                RelayError::Unavailable("media server token is not a header value".into())
            })?;
            call.metadata_mut().insert("authorization", value);
            let mut client = SignalingClient::new(host.channel.clone());
            let opened = tokio::time::timeout(JOIN_TIMEOUT, async {
                let mut inbound = client.session(call).await?.into_inner();
                let first = inbound.message().await?;
                Ok::<_, tonic::Status>((inbound, first))
            })
            .await
            .map_err(|_| {
                suspect(&self.hosts, key, "it did not answer a join in time");
                RelayError::Unavailable("media server did not answer the join in time".into())
            })?;
            match opened {
                Ok((inbound, first)) => {
                    return Ok((to_rtcd, inbound, first.and_then(|m| m.signal)));
                }
                Err(status) if status.code() == tonic::Code::Unauthenticated && !renew => {
                    renew = true
                }
                Err(status) => {
                    if status.code() == tonic::Code::Unavailable {
                        suspect(&self.hosts, key, "its gRPC endpoint does not answer");
                    }
                    return Err(status_to_error(&status));
                }
            }
        }
    }
}

/// The token facts rtcd checks revocations against.
pub(super) fn token_info(grant: &crate::auth::Grant) -> pb::TokenInfo {
    pb::TokenInfo {
        issued_at: grant.issued_at.unwrap_or(0),
        token_id: grant.token_id.clone().unwrap_or_default(),
        expires_at: grant.expires_at,
    }
}

/// Longest resume token accepted from a client (a real one is about 100 bytes).
pub(super) const MAX_RESUME_TOKEN_BYTES: usize = 512;

/// What a client presents to resume its session: `r1.<base64url(rtcd session ID)>.<rtcd's
/// resume secret>`. It names no host (the session is found where its room is) and is worth
/// nothing without the end user's own valid token for the same identity and room, which rtcd
/// checks along with the secret.
pub(super) fn resume_token(session: &str, secret: &str) -> crate::config::Secret {
    use base64::Engine as _;
    let session = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(session);
    crate::config::Secret::new(format!("r1.{session}.{secret}"))
}

/// The rtcd session ID and secret of a resume token; `None` for anything malformed.
pub(super) fn parse_resume_token(token: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    if token.len() > MAX_RESUME_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (Some("r1"), Some(session), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let session = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(session)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())?;
    if session.is_empty()
        || secret.is_empty()
        || !secret
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return None;
    }
    Some((session, secret.to_owned()))
}

/// A refusing status as the relay's error: decided by the typed `JoinRefused` in its details,
/// then by its code; the message is only carried along, for the client and the logs. An rtcd
/// older than the typed refusals sends none (UNSPECIFIED): its refusals are plain
/// `media_refused` (see `JoinRefusal` in signaling.proto).
pub(super) fn status_to_error(status: &tonic::Status) -> RelayError {
    use tonic::Code;
    let message = status.message().to_owned();
    let typed = <pb::JoinRefused as prost::Message>::decode(status.details())
        .map(|r| r.reason())
        .unwrap_or_default();
    match typed {
        pb::JoinRefusal::LobbyFull => return RelayError::LobbyFull(message),
        pb::JoinRefusal::Banned => return RelayError::Banned(message),
        pb::JoinRefusal::Revoked => return RelayError::Revoked(message),
        pb::JoinRefusal::GuestsNotAllowed => return RelayError::GuestsNotAllowed(message),
        pb::JoinRefusal::HostCapacity => return RelayError::HostCapacity(message),
        pb::JoinRefusal::Unspecified => {}
    }
    match status.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::AlreadyExists => RelayError::Refused(status.message().to_owned()),
        _ => RelayError::Unavailable(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// How long, after relaying `Leave`, the pumps keep both directions of rtcd's stream open
/// (until rtcd's `SessionClosed` or the stream's end): dropping the response stream resets the
/// HTTP/2 stream and ending the request stream tells rtcd "disconnected", and either can
/// overtake the `Leave` on its way, so rtcd would log the session as "disconnected" instead
/// of "leave".
pub(super) const LEAVE_DRAIN: Duration = Duration::from_secs(2);

/// Starts the two halves of a joined session's stream and returns the session's ends.
/// `own_session` is this session's rtcd session ID (rtcd's participant events about it are
/// not relayed: a client is not its own remote participant).
pub(super) fn spawn_pumps(
    to_rtcd: mpsc::Sender<Box<pb::ClientSignal>>,
    mut inbound: tonic::Streaming<pb::ServerSignal>,
    mut translator: EventTranslator,
    lost: impl FnOnce() + Send + 'static,
) -> RelayLink {
    let (commands, mut command_rx) = rtcd_kit::queue::channel::<RelayCommand>(LINK_CAPACITY);
    let (event_tx, events) = rtcd_kit::queue::channel::<RelayEvent>(LINK_CAPACITY);
    // Whether the command pump relayed a `Leave`, known once it has stopped sending.
    let (left_tx, left_rx) = tokio::sync::oneshot::channel::<bool>();
    // Dropped by the event pump when it stops (after reading rtcd's close, following a Leave).
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut left = false;
        while let Some(command) = command_rx.recv().await {
            let leaving = matches!(command, RelayCommand::Leave);
            let Some(signal) = translate_command(command) else {
                continue;
            };
            if to_rtcd
                .send(Box::new(pb::ClientSignal {
                    signal: Some(signal),
                }))
                .await
                .is_err()
            {
                break;
            }
            if leaving {
                left = true;
                break;
            }
        }
        let _ = left_tx.send(left);
        if left {
            // Keep the request stream open until rtcd has closed the session: ending it right
            // after the Leave races rtcd's "disconnected" (the end of the stream) against its
            // "leave" (the message), and the session's reason would be a coin toss.
            let _ = tokio::time::timeout(LEAVE_DRAIN, drained_rx).await;
        }
        // Dropping `to_rtcd` ends the request stream; without a Leave rtcd removes the
        // session as "disconnected".
    });
    tokio::spawn(async move {
        let _drained = drained_tx;
        loop {
            let message = tokio::select! {
                _ = event_tx.closed() => {
                    drain_after_leave(&mut inbound, left_rx).await;
                    return;
                }
                m = inbound.message() => m,
            };
            let signal = match message {
                Ok(Some(pb::ServerSignal {
                    signal: Some(signal),
                })) => signal,
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(status) => {
                    // The stream broke without rtcd's SessionClosed: rtcd died or became
                    // unreachable, and the session's rejoin must not be placed there again.
                    tracing::debug!(code = ?status.code(), "rtcd stream ended");
                    lost();
                    return;
                }
            };
            for event in translator.translate(signal) {
                let closed = matches!(event, RelayEvent::Closed { .. });
                if event_tx.send(event).await.is_err() || closed {
                    return;
                }
            }
        }
    });
    RelayLink {
        commands,
        events,
        waiting: None,
        resume_token: None,
        resumed: None,
        e2ee: false,
    }
}

/// Once the session has dropped its events: if it left, keep reading rtcd's stream until
/// rtcd closes it (bounded by [`LEAVE_DRAIN`]) so the `Leave` is read before the stream ends.
pub(super) async fn drain_after_leave(
    inbound: &mut tonic::Streaming<pb::ServerSignal>,
    left: tokio::sync::oneshot::Receiver<bool>,
) {
    let _ = tokio::time::timeout(LEAVE_DRAIN, async {
        if left.await != Ok(true) {
            return;
        }
        while let Ok(Some(m)) = inbound.message().await {
            if matches!(m.signal, Some(pb::server_signal::Signal::SessionClosed(_))) {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_round_trip_and_anything_else_is_refused() {
        let token = resume_token("a1b2c3-42", "SeCrEt_-0123456789");
        assert!(!format!("{token:?}").contains("SeCrEt"), "never printed");
        assert_eq!(
            parse_resume_token(token.expose()),
            Some(("a1b2c3-42".to_owned(), "SeCrEt_-0123456789".to_owned()))
        );
        let long = format!("r1.{}.x", "A".repeat(600));
        for bad in [
            "",
            "r1",
            "r1..secret",
            "r1.YWI.",
            "r2.YWI.secret",
            "r1.YWI.sec.ret",
            "r1.!!!.secret",
            "r1.YWI.sec ret",
            "r1./w.secret",
            long.as_str(),
        ] {
            assert_eq!(parse_resume_token(bad), None, "{bad}");
        }
    }
}

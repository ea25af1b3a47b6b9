//! Room administration: `RoomControl` over `rtcd.v1.Rooms` on the host a room is placed on (or
//! on every host), and the conversions it needs.

use super::*;

impl RtcdRelay {
    /// One `rtcd.v1.Rooms` call on a host with this proxy's bearer token, logging in again
    /// once if rtcd no longer knows the token.
    pub(super) async fn rooms_call<Req, Resp, F, Fut>(
        &self,
        key: &str,
        host: &Host,
        request: Req,
        call: F,
    ) -> Result<Resp, ControlError>
    where
        Req: Clone,
        F: Fn(RoomsClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut renew = false;
        loop {
            let token = self
                .token(key, host, renew)
                .await
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
            let client = RoomsClient::new(host.channel.clone());
            let result =
                tokio::time::timeout(JOIN_TIMEOUT, call(client, authed(&token, request.clone())))
                    .await
                    .map_err(|_| {
                        ControlError::Unavailable("the media server did not answer in time".into())
                    })?;
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unauthenticated && !renew => {
                    renew = true;
                }
                Err(status) => return Err(control_error(&status)),
            }
        }
    }
}

impl RtcdRelay {
    /// One `rtcd.v1.Rooms` call on the host `room` is placed on; also returns that host's key.
    pub(super) async fn on_room_host<Req, Resp, F, Fut>(
        &self,
        room: &RoomName,
        request: Req,
        call: F,
    ) -> Result<(String, Resp), ControlError>
    where
        Req: Clone,
        F: Fn(RoomsClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let (key, host) = self.host_for(room.as_str()).await?;
        let response = self.rooms_call(&key, &host, request, call).await?;
        Ok((key, response))
    }

    /// The same call on every known host (ready or not) but `except`, concurrently; see
    /// [`gathered`] for how the answers combine.
    pub(super) async fn on_every_host<Req, Resp, F, Fut>(
        &self,
        except: Option<&str>,
        request: Req,
        call: F,
        ignore_not_found: bool,
    ) -> Result<Vec<Resp>, ControlError>
    where
        Req: Clone,
        F: Fn(RoomsClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let hosts: Vec<_> = self
            .all_hosts(false)
            .into_iter()
            .filter(|(k, _)| Some(k.as_str()) != except)
            .collect();
        let calls = hosts
            .iter()
            .map(|(key, host)| self.rooms_call(key, host, request.clone(), &call));
        gathered(
            &hosts,
            futures_util::future::join_all(calls).await,
            ignore_not_found,
        )
    }
}

impl RtcdRelay {
    /// Whether the hosts share bans, revocations and room policies through the cluster store
    /// (cluster mode): a decision is then written once, by the host that takes it, and every
    /// other host follows it from the store (docs/cluster.md), instead of being written to
    /// every host by this proxy.
    fn shares_state(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// A revocation in cluster mode: stored once, by the first ready host that takes it (the
    /// next one if a host cannot be reached); then asked of the other ready hosts only for
    /// the sessions they close at once (each would close them within a second anyway, from the
    /// store, so one that fails is logged, not reported). The sessions closed, summed.
    async fn revoke_shared<F, Fut>(
        &self,
        request: pb::RevokeRequest,
        revoke: F,
    ) -> Result<u32, ControlError>
    where
        F: Fn(RoomsClient<Channel>, tonic::Request<pb::RevokeRequest>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::RevokeResponse>, tonic::Status>>,
    {
        let hosts = self.all_hosts(true);
        let mut failed = Vec::new();
        let mut stored = None;
        for (i, (key, host)) in hosts.iter().enumerate() {
            match self.rooms_call(key, host, request.clone(), &revoke).await {
                Ok(r) => {
                    stored = Some((i, r.sessions_closed));
                    break;
                }
                Err(ControlError::Unavailable(e)) => failed.push(format!("{key}: {e}")),
                Err(e) => return Err(e),
            }
        }
        let Some((first, mut closed)) = stored else {
            return Err(ControlError::Unavailable(if failed.is_empty() {
                "no media server is ready".into()
            } else {
                format!(
                    "no media server could store it; retry (failed: {})",
                    failed.join("; ")
                )
            }));
        };
        let others = hosts
            .iter()
            .skip(first + 1)
            .map(|(key, host)| self.rooms_call(key, host, request.clone(), &revoke));
        for (result, (key, _)) in futures_util::future::join_all(others)
            .await
            .into_iter()
            .zip(hosts.iter().skip(first + 1))
        {
            match result {
                Ok(r) => closed += r.sessions_closed,
                Err(e) => {
                    tracing::info!(host = %key, error = %e, "a host did not take a revocation at once; it follows it from the cluster store")
                }
            }
        }
        Ok(closed)
    }
}

/// What a call made on every known host returned: the results of the hosts that answered,
/// or `Unavailable` naming those that did not (the calls are idempotent: the caller retries).
pub(super) fn gathered<Resp>(
    hosts: &[(String, Arc<Host>)],
    results: Vec<Result<Resp, ControlError>>,
    ignore_not_found: bool,
) -> Result<Vec<Resp>, ControlError> {
    let mut answers = Vec::new();
    let mut failed = Vec::new();
    for ((key, _), result) in hosts.iter().zip(results) {
        match result {
            Ok(r) => answers.push(r),
            Err(ControlError::Unavailable(e)) => failed.push(format!("{key}: {e}")),
            Err(ControlError::NotFound(_)) if ignore_not_found => {}
            Err(e) => return Err(e),
        }
    }
    if !failed.is_empty() {
        return Err(ControlError::Unavailable(format!(
            "stored on {} of {} media servers; retry (failed: {})",
            hosts.len() - failed.len(),
            hosts.len(),
            failed.join("; ")
        )));
    }
    Ok(answers)
}

/// A request with the bearer token as `authorization` metadata.
pub(super) fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// An rtcd status from a `Rooms` call as the proxy's error.
pub(super) fn control_error(status: &tonic::Status) -> ControlError {
    use tonic::Code;
    let message = status.message().to_owned();
    match status.code() {
        Code::NotFound => ControlError::NotFound(message),
        // Recording calls say why in the details (`RecordingRefused`).
        Code::FailedPrecondition => match recording_refusal(status) {
            Some(Ok(refusal)) => ControlError::Recording(refusal, message),
            Some(Err(())) => ControlError::NotFound(message),
            None => match policy_refusal(status) {
                Some(refusal) => ControlError::Policy(refusal, message),
                None => ControlError::Invalid(message),
            },
        },
        Code::InvalidArgument | Code::OutOfRange => ControlError::Invalid(message),
        Code::PermissionDenied => ControlError::Forbidden(message),
        code => ControlError::Unavailable(format!("{code:?}: {message}")),
    }
}

/// The typed refusal of a recording call (`rtcd.v1.RecordingRefused` in the status's
/// details): `Err(())` for NO_ROOM (nobody in the room: the API's `not_found`), `None` when
/// the details carry none (another FAILED_PRECONDITION).
fn recording_refusal(status: &tonic::Status) -> Option<Result<RecordingRefusal, ()>> {
    use pb::RecordingRefusal as R;
    if status.details().is_empty() {
        return None;
    }
    let refused = <pb::RecordingRefused as prost::Message>::decode(status.details()).ok()?;
    Some(Ok(
        match R::try_from(refused.reason).unwrap_or(R::Unspecified) {
            R::Unspecified => return None,
            R::NoRoom => return Some(Err(())),
            R::AlreadyRecording => RecordingRefusal::AlreadyRecording,
            R::NotRecording => RecordingRefusal::NotRecording,
            R::StillRecording => RecordingRefusal::StillRecording,
            R::Disabled => RecordingRefusal::Disabled,
            R::DiskFull => RecordingRefusal::DiskFull,
            R::Encrypted => RecordingRefusal::Encrypted,
        },
    ))
}

/// The typed refusal of a policy change (`rtcd.v1.PolicyRefused` in the status's details);
/// `None` when the details carry none.
fn policy_refusal(status: &tonic::Status) -> Option<PolicyRefusal> {
    use pb::PolicyRefusal as R;
    if status.details().is_empty() {
        return None;
    }
    let refused = <pb::PolicyRefused as prost::Message>::decode(status.details()).ok()?;
    match R::try_from(refused.reason).unwrap_or(R::Unspecified) {
        R::Unspecified => None,
        R::E2eeLocked => Some(PolicyRefusal::E2eeLocked),
    }
}

/// A recording from the wire, held by host `host`; `with_files`: the answer of
/// `GetRecording`, `StartRecording` or `StopRecording` (a list's entries carry none).
pub(super) fn recording_from(r: pb::Recording, host: &str, with_files: bool) -> RecordingInfo {
    let state = match r.state() {
        pb::RecordingState::Recording => RecordingState::Recording,
        pb::RecordingState::Stopped => RecordingState::Stopped,
        pb::RecordingState::Unspecified if r.stopped_at_ms > 0 => RecordingState::Stopped,
        pb::RecordingState::Unspecified => RecordingState::Recording,
    };
    let files = with_files.then(|| {
        r.files
            .iter()
            .map(|f| RecordingFile {
                url: crate::rooms::file_url(&r.call_id, &r.recording_id, r.segment, &f.name),
                name: f.name.clone(),
                bytes: f.bytes,
                duration_ms: f.duration_ms,
                identity: f.user_id.clone(),
                session_id: f.session_id.clone(),
                source: source_of(f.kind()),
                codec: f.codec.clone(),
                start_ms: f.start_ms,
            })
            .collect()
    });
    RecordingInfo {
        stop_reason: stop_reason_from(r.stop_reason()),
        stopped_at_ms: (r.stopped_at_ms > 0).then_some(r.stopped_at_ms),
        recording_id: r.recording_id,
        room: r.call_id,
        state,
        started_at_ms: r.started_at_ms,
        started_by: r.started_by,
        segment: r.segment.max(1),
        degraded: r.degraded,
        bytes: r.bytes,
        files,
        host: host.to_owned(),
    }
}

/// Why a recording stopped, from the wire (`None`: unspecified, i.e. it records).
pub(super) fn stop_reason_from(reason: pb::RecordingStop) -> Option<RecordingStop> {
    use pb::RecordingStop as S;
    Some(match reason {
        S::Unspecified => return None,
        S::Requested => RecordingStop::Requested,
        S::RoomFinished => RecordingStop::RoomFinished,
        S::MaxDuration => RecordingStop::MaxDuration,
        S::DiskFull => RecordingStop::DiskFull,
        S::Error => RecordingStop::Error,
        S::Shutdown => RecordingStop::Shutdown,
        S::Interrupted => RecordingStop::Interrupted,
    })
}

impl RtcdRelay {
    /// The same call on every ready host, concurrently: each answer with its host's key.
    /// Hosts that answer NOT_FOUND are left out; a host that cannot be reached fails the
    /// whole call (a recording there would be missing from the answer).
    async fn on_ready_hosts<Req, Resp, F, Fut>(
        &self,
        request: Req,
        call: F,
    ) -> Result<Vec<(String, Resp)>, ControlError>
    where
        Req: Clone,
        F: Fn(RoomsClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let hosts = self.all_hosts(true);
        if hosts.is_empty() {
            return Err(ControlError::Unavailable("no media server is ready".into()));
        }
        let calls = hosts
            .iter()
            .map(|(key, host)| self.rooms_call(key, host, request.clone(), &call));
        let results = futures_util::future::join_all(calls).await;
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        for ((key, _), result) in hosts.iter().zip(results) {
            match result {
                Ok(r) => answers.push((key.clone(), r)),
                Err(ControlError::NotFound(_)) => {}
                Err(ControlError::Unavailable(e)) => failed.push(format!("{key}: {e}")),
                Err(e) => return Err(e),
            }
        }
        if !failed.is_empty() {
            return Err(ControlError::Unavailable(format!(
                "{} of {} media servers did not answer; retry (failed: {})",
                failed.len(),
                hosts.len(),
                failed.join("; ")
            )));
        }
        Ok(answers)
    }

    /// The host a segment is on, by its key (Unavailable if it is no longer known).
    fn host_by_key(&self, key: &str) -> Result<Arc<Host>, ControlError> {
        self.all_hosts(false)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, h)| h)
            .ok_or_else(|| {
                ControlError::Unavailable(format!(
                    "the media server holding this recording ({key}) is not known now"
                ))
            })
    }
}

pub(super) fn participant_from(p: pb::ParticipantInfo) -> ParticipantInfo {
    ParticipantInfo {
        session_id: p.session_id,
        identity: p.user_id,
        name: p.display_name,
        role: p.role,
        permissions: permissions_from_pb(p.permissions),
        joined_at_ms: p.joined_at_ms,
        tracks: p
            .tracks
            .into_iter()
            .filter_map(|t| {
                Some(TrackInfo {
                    source: source_of(t.kind())?,
                    track_id: t.track_id,
                    muted: t.muted,
                })
            })
            .collect(),
    }
}

impl RoomControl for RtcdRelay {
    fn list_rooms(&self) -> BoxFuture<'_, Result<Vec<RoomSummary>, ControlError>> {
        Box::pin(async move {
            let hosts = self.all_hosts(true);
            let calls = hosts.iter().map(|(key, host)| {
                self.rooms_call(key, host, pb::ListRoomsRequest {}, |mut c, r| async move {
                    c.list_rooms(r).await
                })
            });
            let mut rooms = Vec::new();
            for result in futures_util::future::join_all(calls).await {
                for r in result?.rooms {
                    rooms.push(RoomSummary {
                        name: r.call_id,
                        created_at_ms: r.created_at_ms,
                        participant_count: r.participant_count,
                    });
                }
            }
            rooms.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(rooms)
        })
    }

    fn get_room<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> BoxFuture<'a, Result<RoomDetail, ControlError>> {
        Box::pin(async move {
            let request = pb::GetRoomRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move { c.get_room(r).await })
                .await?;
            Ok(RoomDetail {
                name: r.call_id,
                created_at_ms: r.created_at_ms,
                participant_count: r.participant_count,
                participants: r.participants.into_iter().map(participant_from).collect(),
            })
        })
    }

    fn remove<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        ban_seconds: u64,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(u32, Option<i64>), ControlError>> {
        Box::pin(async move {
            let request = pb::RemoveParticipantRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
                ban_seconds,
                reason: reason.to_owned(),
            };
            let remove =
                |mut c: RoomsClient<Channel>, r| async move { c.remove_participant(r).await };
            let (key, r) = self.on_room_host(room, request.clone(), remove).await?;
            if ban_seconds > 0 && self.shares_state() {
                use rtcd_kit::cluster::moderation::{BANS, key};
                let (client, room, user) = (&self.client_id, room.as_str(), identity.as_str());
                self.settle_moderation(&key(BANS, &[client, room, user]))
                    .await;
            } else if ban_seconds > 0 {
                // The ban is recorded on every host too: if this one dies and the room is
                // placed elsewhere, the user must still be kept out there.
                self.on_every_host(Some(&key), request, remove, true)
                    .await?;
            }
            Ok((
                r.sessions_closed,
                (r.banned_until > 0).then_some(r.banned_until),
            ))
        })
    }

    fn mute<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        source: TrackSource,
        request_unmute: bool,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::MuteTrackRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
                kind: kind_of(source) as i32,
            };
            let (_, r) = if request_unmute {
                self.on_room_host(room, request, |mut c, r| async move {
                    c.request_unmute(r).await
                })
                .await?
            } else {
                self.on_room_host(
                    room,
                    request,
                    |mut c, r| async move { c.mute_track(r).await },
                )
                .await?
            };
            Ok(r.sessions)
        })
    }

    fn update<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        role: Role,
        permissions: Permissions,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::UpdateParticipantRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
                role: role.as_str().to_owned(),
                permissions: Some(permissions_to_pb(&permissions)),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move {
                    c.update_participant(r).await
                })
                .await?;
            Ok(r.sessions)
        })
    }

    fn end<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::EndRoomRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move { c.end_room(r).await })
                .await?;
            Ok(r.sessions_closed)
        })
    }

    fn bans<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<Vec<BanInfo>, ControlError>> {
        Box::pin(async move {
            let request = pb::ListBansRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(
                    room,
                    request,
                    |mut c, r| async move { c.list_bans(r).await },
                )
                .await?;
            Ok(r.bans
                .into_iter()
                .map(|b| BanInfo {
                    room: b.call_id,
                    identity: b.user_id,
                    until: b.until,
                    reason: b.reason,
                    created_at: b.created_at,
                })
                .collect())
        })
    }

    fn unban<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            let request = pb::UnbanRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
            };
            let unban = |mut c: RoomsClient<Channel>, r| async move { c.unban(r).await };
            // The room's host says whether there was a ban; the others only follow.
            let (key, _) = self.on_room_host(room, request.clone(), unban).await?;
            if !self.shares_state() {
                self.on_every_host(Some(&key), request, unban, true).await?;
            }
            Ok(())
        })
    }

    fn revoke<'a>(
        &'a self,
        revocation: &'a Revocation,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::RevokeRequest {
                user_id: revocation.identity.clone().unwrap_or_default(),
                issued_before: revocation.issued_before.unwrap_or(0),
                token_id: revocation.token_id.clone().unwrap_or_default(),
                token_expires_at: revocation.token_expires_at.unwrap_or(0),
            };
            let revoke = |mut c: RoomsClient<Channel>, r| async move { c.revoke(r).await };
            if self.shares_state() {
                use rtcd_kit::cluster::moderation::{CUTOFFS, TOKENS, key};
                let closed = self.revoke_shared(request.clone(), revoke).await?;
                let client = self.client_id.as_str();
                if !request.user_id.is_empty() {
                    self.settle_moderation(&key(CUTOFFS, &[client, &request.user_id]))
                        .await;
                }
                if !request.token_id.is_empty() {
                    self.settle_moderation(&key(TOKENS, &[client, &request.token_id]))
                        .await;
                }
                return Ok(closed);
            }
            // Every known host, ready or not: a revocation must hold wherever the user joins
            // next.
            if self.all_hosts(false).is_empty() {
                return Err(ControlError::Unavailable("no media server is known".into()));
            }
            let answers = self.on_every_host(None, request, revoke, false).await?;
            Ok(answers.iter().map(|r| r.sessions_closed).sum())
        })
    }

    fn lobby<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> BoxFuture<'a, Result<Vec<LobbyEntry>, ControlError>> {
        Box::pin(async move {
            let request = pb::ListLobbyRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(
                    room,
                    request,
                    |mut c, r| async move { c.list_lobby(r).await },
                )
                .await?;
            Ok(r.waiting
                .into_iter()
                .map(|w| LobbyEntry {
                    identity: Identity::new(w.user_id),
                    name: (!w.display_name.is_empty()).then_some(w.display_name),
                    role: Some(role_from(&w.role)),
                    reason: w.reason,
                    since_ms: w.since_ms,
                })
                .collect())
        })
    }

    fn decide<'a>(
        &'a self,
        room: &'a RoomName,
        identity: &'a Identity,
        admit: bool,
    ) -> BoxFuture<'a, Result<u32, ControlError>> {
        Box::pin(async move {
            let request = pb::LobbyDecisionRequest {
                call_id: room.as_str().to_owned(),
                user_id: identity.as_str().to_owned(),
            };
            // The waiting sessions are held by the room's host only.
            let (_, r) = if admit {
                self.on_room_host(room, request, |mut c, r| async move { c.admit(r).await })
                    .await?
            } else {
                self.on_room_host(room, request, |mut c, r| async move { c.deny(r).await })
                    .await?
            };
            Ok(r.sessions)
        })
    }

    fn policy<'a>(&'a self, room: &'a RoomName) -> BoxFuture<'a, Result<RoomPolicy, ControlError>> {
        Box::pin(async move {
            let request = pb::GetRoomPolicyRequest {
                call_id: room.as_str().to_owned(),
            };
            let (_, r) = self
                .on_room_host(room, request, |mut c, r| async move {
                    c.get_room_policy(r).await
                })
                .await?;
            Ok(policy_from_pb(r))
        })
    }

    fn set_policy<'a>(
        &'a self,
        room: &'a RoomName,
        change: RoomPolicy,
        reset: bool,
    ) -> BoxFuture<'a, Result<RoomPolicy, ControlError>> {
        Box::pin(async move {
            // Merged once, at the room's host, then written whole to every host: hosts that
            // missed an earlier change cannot end up with a different policy.
            let current = if reset {
                RoomPolicy::default()
            } else {
                self.policy(room).await?
            };
            let merged = change.over(current);
            let request = pb::SetRoomPolicyRequest {
                call_id: room.as_str().to_owned(),
                policy: Some(policy_to_pb(merged)),
                reset: true,
            };
            let set = |mut c: RoomsClient<Channel>, r| async move { c.set_room_policy(r).await };
            // The room's host first: it applies the policy to those waiting there now.
            let (key, r) = self.on_room_host(room, request.clone(), set).await?;
            if !self.shares_state() {
                self.on_every_host(Some(&key), request, set, false).await?;
            }
            Ok(policy_from_pb(r))
        })
    }

    fn start_recording<'a>(
        &'a self,
        room: &'a RoomName,
        requested_by: &'a str,
    ) -> BoxFuture<'a, Result<RecordingInfo, ControlError>> {
        Box::pin(async move {
            let request = pb::StartRecordingRequest {
                call_id: room.as_str().to_owned(),
                requested_by: requested_by.to_owned(),
            };
            let (key, r) = self
                .on_room_host(room, request, |mut c, r| async move {
                    c.start_recording(r).await
                })
                .await?;
            Ok(recording_from(r, &key, true))
        })
    }

    fn stop_recording<'a>(
        &'a self,
        room: &'a RoomName,
        requested_by: &'a str,
    ) -> BoxFuture<'a, Result<RecordingInfo, ControlError>> {
        Box::pin(async move {
            let request = pb::StopRecordingRequest {
                call_id: room.as_str().to_owned(),
                requested_by: requested_by.to_owned(),
            };
            let (key, r) = self
                .on_room_host(room, request, |mut c, r| async move {
                    c.stop_recording(r).await
                })
                .await?;
            Ok(recording_from(r, &key, true))
        })
    }

    fn recordings<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> BoxFuture<'a, Result<Vec<RecordingInfo>, ControlError>> {
        Box::pin(async move {
            // A recording outlives its room, and a room that moved host has a segment on
            // each: every ready host is asked.
            let request = pb::ListRecordingsRequest {
                call_id: room.as_str().to_owned(),
            };
            let answers = self
                .on_ready_hosts(
                    request,
                    |mut c, r| async move { c.list_recordings(r).await },
                )
                .await?;
            let mut all: Vec<RecordingInfo> = answers
                .into_iter()
                .flat_map(|(key, r)| {
                    r.recordings
                        .into_iter()
                        .map(move |rec| recording_from(rec, &key, false))
                })
                .filter(|r| r.room == room.as_str())
                .collect();
            newest_first(&mut all);
            Ok(all)
        })
    }

    fn recording<'a>(
        &'a self,
        recording_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RecordingInfo>, ControlError>> {
        Box::pin(async move {
            let request = pb::GetRecordingRequest {
                recording_id: recording_id.to_owned(),
            };
            let answers = self
                .on_ready_hosts(request, |mut c, r| async move { c.get_recording(r).await })
                .await?;
            let mut all: Vec<RecordingInfo> = answers
                .into_iter()
                .map(|(key, r)| recording_from(r, &key, true))
                .collect();
            newest_first(&mut all);
            Ok(all)
        })
    }

    fn delete_recording<'a>(
        &'a self,
        segments: &'a [RecordingInfo],
    ) -> BoxFuture<'a, Result<u64, ControlError>> {
        Box::pin(async move {
            let mut freed = 0;
            for segment in segments {
                let host = self.host_by_key(&segment.host)?;
                let request = pb::DeleteRecordingRequest {
                    recording_id: segment.recording_id.clone(),
                };
                let r = self
                    .rooms_call(&segment.host, &host, request, |mut c, r| async move {
                        c.delete_recording(r).await
                    })
                    .await?;
                freed += r.bytes;
            }
            Ok(freed)
        })
    }

    fn read_recording_file<'a>(
        &'a self,
        segment: &'a RecordingInfo,
        name: &'a str,
        offset: u64,
        length: u64,
    ) -> BoxFuture<'a, Result<FileRead, ControlError>> {
        Box::pin(async move {
            let host = self.host_by_key(&segment.host)?;
            let request = pb::ReadRecordingFileRequest {
                recording_id: segment.recording_id.clone(),
                name: name.to_owned(),
                offset,
                length,
            };
            let mut renew = false;
            let mut stream = loop {
                let token = self
                    .token(&segment.host, &host, renew)
                    .await
                    .map_err(|e| ControlError::Unavailable(e.to_string()))?;
                let mut client = RoomsClient::new(host.channel.clone());
                let opened = tokio::time::timeout(
                    JOIN_TIMEOUT,
                    client.read_recording_file(authed(&token, request.clone())),
                )
                .await
                .map_err(|_| {
                    ControlError::Unavailable("the media server did not answer in time".into())
                })?;
                match opened {
                    Ok(response) => break response.into_inner(),
                    Err(status) if status.code() == tonic::Code::Unauthenticated && !renew => {
                        renew = true;
                    }
                    Err(status) => return Err(control_error(&status)),
                }
            };
            // The first chunk says the file's size (and may carry bytes).
            let first = tokio::time::timeout(JOIN_TIMEOUT, stream.message())
                .await
                .map_err(|_| {
                    ControlError::Unavailable("the media server did not answer in time".into())
                })?
                .map_err(|status| control_error(&status))?;
            let size = first.as_ref().map_or(0, |c| c.size);
            // Two chunks (512 KiB at most) between the media server and the HTTP client: the
            // gRPC stream is read only as fast as the client takes the bytes, and the task
            // ends (dropping the stream) as soon as the client goes away.
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                if let Some(chunk) = first
                    && !chunk.data.is_empty()
                    && tx.send(Ok(chunk.data.into())).await.is_err()
                {
                    return;
                }
                loop {
                    let next = match stream.message().await {
                        Ok(Some(chunk)) if chunk.data.is_empty() => continue,
                        Ok(Some(chunk)) => Ok(chunk.data.into()),
                        Ok(None) => return,
                        Err(status) => Err(control_error(&status)),
                    };
                    let failed = next.is_err();
                    if tx.send(next).await.is_err() || failed {
                        return;
                    }
                }
            });
            Ok(FileRead { size, chunks: rx })
        })
    }
}

/// Recordings newest first (segments of one recording: the latest first).
fn newest_first(recordings: &mut [RecordingInfo]) {
    recordings.sort_by(|a, b| {
        (b.started_at_ms, b.segment, &b.recording_id).cmp(&(
            a.started_at_ms,
            a.segment,
            &a.recording_id,
        ))
    });
}

/// A room policy for the wire.
pub(super) fn policy_to_pb(p: RoomPolicy) -> pb::RoomPolicy {
    pb::RoomPolicy {
        wait_for_host: p.wait_for_host,
        lobby: p.lobby,
        guests_allowed: p.guests_allowed,
        wait_timeout_seconds: p.wait_timeout_seconds,
        opened_by: p.opened_by.map(|o| match o {
            crate::rooms::Opener::Moderator => pb::RoomOpener::Moderator as i32,
            crate::rooms::Opener::Member => pb::RoomOpener::Member as i32,
        }),
        record: p.record,
        e2ee: p.e2ee,
    }
}

/// A room policy from the wire.
pub(super) fn policy_from_pb(p: pb::RoomPolicy) -> RoomPolicy {
    RoomPolicy {
        wait_for_host: p.wait_for_host,
        lobby: p.lobby,
        guests_allowed: p.guests_allowed,
        wait_timeout_seconds: p.wait_timeout_seconds,
        opened_by: p.opened_by.and_then(|o| {
            match pb::RoomOpener::try_from(o).unwrap_or(pb::RoomOpener::Unspecified) {
                pb::RoomOpener::Unspecified => None,
                pb::RoomOpener::Moderator => Some(crate::rooms::Opener::Moderator),
                pb::RoomOpener::Member => Some(crate::rooms::Opener::Member),
            }
        }),
        record: p.record,
        e2ee: p.e2ee,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: pb::RecordingRefusal) -> tonic::Status {
        let details = prost::Message::encode_to_vec(&pb::RecordingRefused {
            reason: reason as i32,
        });
        tonic::Status::with_details(tonic::Code::FailedPrecondition, "said rtcd", details.into())
    }

    #[test]
    fn recording_refusals_are_mapped_from_their_details() {
        use pb::RecordingRefusal as P;
        for (wire, want) in [
            (P::AlreadyRecording, RecordingRefusal::AlreadyRecording),
            (P::NotRecording, RecordingRefusal::NotRecording),
            (P::StillRecording, RecordingRefusal::StillRecording),
            (P::Disabled, RecordingRefusal::Disabled),
            (P::DiskFull, RecordingRefusal::DiskFull),
            (P::Encrypted, RecordingRefusal::Encrypted),
        ] {
            assert_eq!(
                control_error(&refused(wire)),
                ControlError::Recording(want, "said rtcd".into()),
                "{wire:?}"
            );
        }
        // Nobody in the room: the routes' `not_found`.
        assert_eq!(
            control_error(&refused(P::NoRoom)),
            ControlError::NotFound("said rtcd".into())
        );
        // A FAILED_PRECONDITION without (or with an unspecified) refusal stays a bad request.
        for status in [
            tonic::Status::failed_precondition("said rtcd"),
            refused(P::Unspecified),
        ] {
            assert_eq!(
                control_error(&status),
                ControlError::Invalid("said rtcd".into())
            );
        }
        assert_eq!(
            control_error(&tonic::Status::not_found("no such recording")),
            ControlError::NotFound("no such recording".into())
        );
        // A refused policy change is typed apart (its reason is not field 1).
        let details = prost::Message::encode_to_vec(&pb::PolicyRefused {
            reason: pb::PolicyRefusal::E2eeLocked as i32,
        });
        let locked = tonic::Status::with_details(
            tonic::Code::FailedPrecondition,
            "said rtcd",
            details.into(),
        );
        assert_eq!(
            control_error(&locked),
            ControlError::Policy(crate::rooms::PolicyRefusal::E2eeLocked, "said rtcd".into())
        );
    }

    #[test]
    fn a_recording_from_the_wire_names_its_files_urls() {
        let wire = pb::Recording {
            recording_id: "rec_abc".into(),
            call_id: "stand:up".into(),
            state: pb::RecordingState::Stopped as i32,
            started_at_ms: 1000,
            stopped_at_ms: 5000,
            stop_reason: pb::RecordingStop::RoomFinished as i32,
            started_by: "".into(),
            segment: 2,
            degraded: true,
            bytes: 42,
            files: vec![pb::RecordingFile {
                name: "alice 1-microphone.webm".into(),
                bytes: 40,
                duration_ms: 4000,
                session_id: "s1".into(),
                user_id: "alice".into(),
                kind: pb::TrackKind::Audio as i32,
                codec: "opus".into(),
                start_ms: 1010,
            }],
        };
        let r = recording_from(wire.clone(), "10.0.0.1:50051", true);
        assert_eq!(r.host, "10.0.0.1:50051");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "recording_id": "rec_abc", "room": "stand:up", "state": "stopped",
                "started_at_ms": 1000, "stopped_at_ms": 5000, "stop_reason": "room_finished",
                "started_by": "", "segment": 2, "degraded": true, "bytes": 42,
                "files": [{
                    "name": "alice 1-microphone.webm", "bytes": 40, "duration_ms": 4000,
                    "identity": "alice", "session_id": "s1", "source": "microphone",
                    "codec": "opus", "start_ms": 1010,
                    "url": "/api/v1/rooms/stand:up/recordings/rec_abc/files/alice%201-microphone.webm?segment=2",
                }],
            })
        );
        // A list's entry: no files; a recording that records: no stop.
        let mut recording = wire;
        recording.state = pb::RecordingState::Recording as i32;
        recording.stopped_at_ms = 0;
        recording.stop_reason = 0;
        recording.segment = 1;
        let json = serde_json::to_value(recording_from(recording, "h", false)).unwrap();
        assert_eq!(json["state"], "recording");
        for absent in ["files", "stopped_at_ms", "stop_reason", "host"] {
            assert!(json.get(absent).is_none(), "{absent}");
        }
    }
}

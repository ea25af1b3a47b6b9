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
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ControlError::Invalid(message)
        }
        Code::PermissionDenied => ControlError::Forbidden(message),
        code => ControlError::Unavailable(format!("{code:?}: {message}")),
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
        record: None,
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
    }
}

//! The room-management gRPC service (`rtcd.v1.Rooms`): what a platform's backend (through its
//! proxy) needs to run rooms it does not host itself — list rooms and who is in them, remove
//! and ban, mute or ask to unmute, change a participant's role and permissions live, end a
//! room, list and lift bans, revoke tokens.
//!
//! Why here: a room lives on exactly one rtcd, so this rtcd is the authority on its sessions
//! and tracks; the live state comes from the SFU (the worker thread that owns the call answers,
//! so an action applies between two packets), and what must outlive the process (bans,
//! cut-offs, denied token IDs) goes to [`crate::moderation`] and is durable before the RPC
//! returns. Every RPC is authenticated like signaling (`grpc::tenant_of`) and
//! scoped to the caller: another tenant's room, participant or ban is NOT_FOUND. Each
//! management action leaves one INFO line on the `audit` target (client, call, user, action,
//! outcome). Errors are mapped once, in [`status`].

pub mod decisions;
pub(crate) mod recordings;
mod status;

use rtcd_proto::v1 as pb;
use rtcd_proto::v1::rooms_server::Rooms;
use tonic::{Request, Response, Status};

use crate::auth::{AuthService, StoreError};
use crate::grpc::convert;
use crate::lobby::{Lobby, LobbyError};
use crate::moderation::{ModerationStore, unix_now};
use crate::sfu::{
    CallId, MAX_ID_BYTES, MAX_ROLE_BYTES, Moderation, RoomDetail, Sfu, SfuError, TenantId, UserId,
};
use crate::webhook::{WebhookError, Webhooks};

/// Longest ban: a year.
pub const MAX_BAN_SECONDS: u64 = 365 * 24 * 3600;
/// Longest reason kept with a ban.
pub const MAX_REASON_BYTES: usize = 256;

/// Why a room-management request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoomsError {
    /// The request is malformed (empty or oversized IDs, unknown kind, too long a ban...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Nothing of that name in the caller's namespace.
    #[error("{0}")]
    NotFound(&'static str),
    /// The SFU refused or failed.
    #[error(transparent)]
    Sfu(#[from] SfuError),
    /// The moderation store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The webhook settings were refused.
    #[error(transparent)]
    Webhooks(#[from] WebhookError),
    /// A room policy was refused.
    #[error(transparent)]
    Lobby(#[from] LobbyError),
    /// A read beyond the end of a file.
    #[error("{0}")]
    OutOfRange(String),
}

/// The service; cheap to clone (every member is a handle).
#[derive(Clone)]
pub struct RoomsService {
    auth: AuthService,
    sfu: Sfu,
    moderation: ModerationStore,
    webhooks: Webhooks,
    lobby: Lobby,
    /// Bytes per `RecordingChunk` (from the gRPC message limit: [`recordings::chunk_for`]).
    chunk: usize,
}

impl RoomsService {
    /// A service over the daemon's auth, SFU, moderation store, webhook delivery and the
    /// rooms' entry gates (shared with signaling, which holds the waiting sessions).
    pub fn new(
        auth: AuthService,
        sfu: Sfu,
        moderation: ModerationStore,
        webhooks: Webhooks,
        lobby: Lobby,
    ) -> Self {
        Self {
            auth,
            sfu,
            moderation,
            webhooks,
            lobby,
            chunk: recordings::chunk_for(256 * 1024),
        }
    }

    /// The tonic server wrapper, with the message size limit applied in both directions.
    pub fn into_server(mut self, max_message_bytes: usize) -> pb::rooms_server::RoomsServer<Self> {
        self.chunk = recordings::chunk_for(max_message_bytes);
        pb::rooms_server::RoomsServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    async fn tenant<T>(&self, req: &Request<T>) -> Result<TenantId, Status> {
        crate::grpc::tenant_of(&self.auth, req).await
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        req: &pb::RemoveParticipantRequest,
    ) -> Result<pb::RemoveParticipantResponse, RoomsError> {
        let call = call_id(&req.call_id)?;
        let user = user_id(&req.user_id)?;
        if req.reason.len() > MAX_REASON_BYTES {
            return Err(invalid(format!(
                "reason must be at most {MAX_REASON_BYTES} bytes"
            )));
        }
        if req.ban_seconds > MAX_BAN_SECONDS {
            return Err(invalid(format!(
                "ban_seconds must be at most {MAX_BAN_SECONDS} (a year)"
            )));
        }
        // Held until the removal below is done: this host applies its own ban (and counts).
        let mut applying = None;
        let banned_until = if req.ban_seconds > 0 {
            let now = unix_now();
            // Bounded above: fits an i64.
            let until = now.saturating_add(req.ban_seconds as i64);
            applying = Some(
                self.moderation
                    .ban(tenant, &call, &user, until, &req.reason, now)
                    .await?,
            );
            Some(until)
        } else {
            None
        };
        let closed = match self
            .sfu
            .moderate(tenant, &call, Moderation::Remove { user, banned_until })
            .await
        {
            Ok(n) => n,
            // A ban may name a user who is not (or no longer) in the room.
            Err(SfuError::NotFound) if banned_until.is_some() => 0,
            Err(e) => return Err(e.into()),
        };
        drop(applying);
        Ok(pb::RemoveParticipantResponse {
            sessions_closed: count(closed),
            banned_until: banned_until.unwrap_or(0),
        })
    }

    async fn mute(
        &self,
        tenant: &TenantId,
        req: &pb::MuteTrackRequest,
        ask: bool,
    ) -> Result<pb::MuteTrackResponse, RoomsError> {
        let call = call_id(&req.call_id)?;
        let user = user_id(&req.user_id)?;
        let kind = convert::kind_from(req.kind).map_err(|_| invalid("unknown track kind"))?;
        let action = if ask {
            Moderation::RequestUnmute { user, kind }
        } else {
            Moderation::Mute { user, kind }
        };
        let n = self.sfu.moderate(tenant, &call, action).await?;
        Ok(pb::MuteTrackResponse { sessions: count(n) })
    }

    async fn update(
        &self,
        tenant: &TenantId,
        req: &pb::UpdateParticipantRequest,
    ) -> Result<pb::UpdateParticipantResponse, RoomsError> {
        let call = call_id(&req.call_id)?;
        let user = user_id(&req.user_id)?;
        if req.role.len() > MAX_ROLE_BYTES {
            return Err(invalid(format!(
                "role must be at most {MAX_ROLE_BYTES} bytes"
            )));
        }
        let permissions = convert::permissions(req.permissions.unwrap_or_default());
        let n = self
            .sfu
            .moderate(
                tenant,
                &call,
                Moderation::Update {
                    user: user.clone(),
                    role: req.role.clone(),
                    permissions,
                },
            )
            .await?;
        // A promoted moderator admits those waiting for a host; a demoted one stops getting
        // lobby requests.
        self.lobby.set_role(tenant, &call, &user, &req.role);
        Ok(pb::UpdateParticipantResponse { sessions: count(n) })
    }

    async fn end(
        &self,
        tenant: &TenantId,
        req: &pb::EndRoomRequest,
    ) -> Result<pb::EndRoomResponse, RoomsError> {
        let call = call_id(&req.call_id)?;
        let n = self.sfu.moderate(tenant, &call, Moderation::End).await?;
        Ok(pb::EndRoomResponse {
            sessions_closed: count(n),
        })
    }

    async fn lift(
        &self,
        tenant: &TenantId,
        req: &pb::UnbanRequest,
    ) -> Result<pb::UnbanResponse, RoomsError> {
        let call = call_id(&req.call_id)?;
        let user = user_id(&req.user_id)?;
        if !self
            .moderation
            .unban(tenant, &call, &user, unix_now())
            .await?
        {
            return Err(RoomsError::NotFound("no such ban"));
        }
        Ok(pb::UnbanResponse {})
    }

    async fn revoke_tokens(
        &self,
        tenant: &TenantId,
        req: &pb::RevokeRequest,
    ) -> Result<pb::RevokeResponse, RoomsError> {
        let by_user = !req.user_id.is_empty() || req.issued_before != 0;
        if !by_user && req.token_id.is_empty() {
            return Err(invalid("give user_id with issued_before, or token_id"));
        }
        let cutoff = if by_user {
            let user = user_id(&req.user_id)?;
            if req.issued_before <= 0 {
                return Err(invalid(
                    "issued_before must be a positive Unix time with user_id",
                ));
            }
            let (in_force, applying) = self
                .moderation
                .raise_cutoff(tenant, &user, req.issued_before)
                .await?;
            Some((user, in_force, applying))
        } else {
            None
        };
        if req.token_id.len() > MAX_ID_BYTES {
            return Err(invalid(format!(
                "token_id must be at most {MAX_ID_BYTES} bytes"
            )));
        }
        let denied = if req.token_id.is_empty() {
            None
        } else {
            Some(
                self.moderation
                    .deny_token(tenant, &req.token_id, req.token_expires_at, unix_now())
                    .await?,
            )
        };
        let closed = self.sfu.revoke(
            tenant,
            cutoff.as_ref().map(|(u, t, _)| (u, *t)),
            &req.token_id,
        );
        drop((cutoff, denied));
        Ok(pb::RevokeResponse {
            sessions_closed: count(closed),
        })
    }
}

impl RoomsService {
    async fn set_policy(
        &self,
        tenant: &TenantId,
        req: &pb::SetRoomPolicyRequest,
    ) -> Result<pb::RoomPolicy, RoomsError> {
        let call = call_id(&req.call_id)?;
        let change = convert::room_policy(req.policy.unwrap_or_default());
        change.validate()?;
        self.check_e2ee(tenant, &call, change, req.reset)?;
        let (stored, applying) = self
            .moderation
            .set_policy(tenant, &call, change, req.reset)
            .await?;
        self.lobby.policy_changed(tenant, &call, stored);
        drop(applying);
        Ok(convert::room_policy_to(stored))
    }

    /// Refuses a change that would leave the room both recorded and end-to-end encrypted
    /// (the server cannot read what it would record), or that would turn end-to-end encryption
    /// on or off while anyone is in the room or waits to enter it here: those inside would
    /// go on sending as they do (docs/e2ee.md). Both read the policy as it applies (stored over
    /// the room's last Join policy here). Checked before the store is written; two changes
    /// racing each other are as likely to interleave as for any other field.
    fn check_e2ee(
        &self,
        tenant: &TenantId,
        call: &CallId,
        change: crate::lobby::RoomPolicy,
        reset: bool,
    ) -> Result<(), RoomsError> {
        let before = self.moderation.policy(tenant, call)?;
        let base = if reset {
            crate::lobby::RoomPolicy::default()
        } else {
            before
        };
        let join = self.lobby.join_policy(tenant, call);
        let (was, will) = (before.over(join), change.over(base).over(join));
        if will.encrypted() && will.recorded() {
            return Err(SfuError::Recording(crate::sfu::RecordingRefusal::Encrypted).into());
        }
        if was.encrypted() != will.encrypted() && has_room(&self.sfu, &self.lobby, tenant, call) {
            return Err(LobbyError::E2eeLocked.into());
        }
        Ok(())
    }

    fn decide(
        &self,
        tenant: &TenantId,
        req: &pb::LobbyDecisionRequest,
        admit: bool,
    ) -> Result<pb::LobbyDecisionResponse, RoomsError> {
        let call = call_id(&req.call_id)?;
        let user = user_id(&req.user_id)?;
        let n = if admit {
            self.lobby.admit(tenant, &call, &user)
        } else {
            self.lobby.deny(tenant, &call, &user)
        };
        Ok(pb::LobbyDecisionResponse { sessions: count(n) })
    }
}

/// Whether this host has `tenant`'s `call`: sessions in it, or people waiting to enter it.
/// What `Rooms.HasRoom` answers (a draining host aside), and what a host keeps the room's
/// placement claim for in cluster mode (`crate::cluster`).
pub fn has_room(sfu: &Sfu, lobby: &Lobby, tenant: &TenantId, call: &CallId) -> bool {
    sfu.has_call(tenant, call) || lobby.has_room(tenant, call)
}

fn invalid(m: impl Into<String>) -> RoomsError {
    RoomsError::InvalidArgument(m.into())
}

fn id(what: &str, value: &str) -> Result<(), RoomsError> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(invalid(format!("{what} must be 1-{MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

fn call_id(value: &str) -> Result<CallId, RoomsError> {
    id("call_id", value)?;
    Ok(CallId::new(value))
}

fn user_id(value: &str) -> Result<UserId, RoomsError> {
    id("user_id", value)?;
    Ok(UserId::new(value))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// At most 128 bytes of a caller-supplied ID for the log (an oversized one is refused anyway).
fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_ID_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One audit line per management action (the `audit` target, as authentication's).
fn audit<T>(
    tenant: &TenantId,
    call: &str,
    user: &str,
    action: &'static str,
    result: &Result<T, RoomsError>,
) {
    let (call, user) = (clip(call), clip(user));
    match result {
        Ok(_) => {
            tracing::info!(target: "audit", client = %tenant, call, user, action, outcome = "ok")
        }
        Err(e) => {
            tracing::info!(target: "audit", client = %tenant, call, user, action, outcome = status::outcome(e), reason = %e)
        }
    }
}

fn reply<T>(result: Result<T, RoomsError>) -> Result<Response<T>, Status> {
    result
        .map(Response::new)
        .map_err(|e| status::from_rooms(&e))
}

fn room(detail: RoomDetail) -> pb::Room {
    pb::Room {
        call_id: detail.call.as_str().to_owned(),
        created_at_ms: detail.created_at_ms,
        participant_count: count(detail.participants.len()),
        participants: detail
            .participants
            .into_iter()
            .map(|p| pb::ParticipantInfo {
                session_id: p.session.as_str().to_owned(),
                user_id: p.user.as_str().to_owned(),
                display_name: p.display_name,
                role: p.role,
                permissions: Some(convert::permissions_to(p.permissions)),
                joined_at_ms: p.joined_at_ms,
                tracks: p
                    .tracks
                    .into_iter()
                    .map(|t| pb::PublishedTrack {
                        track_id: t.track_id,
                        kind: convert::kind_to(t.kind),
                        muted: t.muted,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Rooms for RoomsService {
    type ReadRecordingFileStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::RecordingChunk, Status>>;

    async fn start_recording(
        &self,
        request: Request<pb::StartRecordingRequest>,
    ) -> Result<Response<pb::Recording>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.start_recording_of(&tenant, &req).await;
        audit(
            &tenant,
            &req.call_id,
            &req.requested_by,
            "start_recording",
            &result,
        );
        reply(result)
    }

    async fn stop_recording(
        &self,
        request: Request<pb::StopRecordingRequest>,
    ) -> Result<Response<pb::Recording>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.stop_recording_of(&tenant, &req).await;
        audit(
            &tenant,
            &req.call_id,
            &req.requested_by,
            "stop_recording",
            &result,
        );
        reply(result)
    }

    async fn list_recordings(
        &self,
        request: Request<pb::ListRecordingsRequest>,
    ) -> Result<Response<pb::ListRecordingsResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        reply(self.list_recordings_of(&tenant, &req).await)
    }

    async fn get_recording(
        &self,
        request: Request<pb::GetRecordingRequest>,
    ) -> Result<Response<pb::Recording>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        reply(self.get_recording_of(&tenant, &req).await)
    }

    async fn delete_recording(
        &self,
        request: Request<pb::DeleteRecordingRequest>,
    ) -> Result<Response<pb::DeleteRecordingResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.delete_recording_of(&tenant, &req).await;
        audit(&tenant, "", &req.recording_id, "delete_recording", &result);
        reply(result)
    }

    async fn read_recording_file(
        &self,
        request: Request<pb::ReadRecordingFileRequest>,
    ) -> Result<Response<Self::ReadRecordingFileStream>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        reply(
            self.read_recording_file_of(&tenant, &req)
                .await
                .map(tokio_stream::wrappers::ReceiverStream::new),
        )
    }

    async fn list_rooms(
        &self,
        request: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let rooms = self
            .sfu
            .list_rooms(&tenant)
            .into_iter()
            .map(|r| pb::Room {
                call_id: r.call.as_str().to_owned(),
                created_at_ms: r.created_at_ms,
                participant_count: count(r.participants),
                participants: Vec::new(),
            })
            .collect();
        Ok(Response::new(pb::ListRoomsResponse { rooms }))
    }

    async fn get_room(
        &self,
        request: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::Room>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = async {
            let call = call_id(&req.call_id)?;
            Ok(room(self.sfu.room(&tenant, &call).await?))
        }
        .await;
        reply(result)
    }

    async fn remove_participant(
        &self,
        request: Request<pb::RemoveParticipantRequest>,
    ) -> Result<Response<pb::RemoveParticipantResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.remove(&tenant, &req).await;
        audit(
            &tenant,
            &req.call_id,
            &req.user_id,
            "remove_participant",
            &result,
        );
        reply(result)
    }

    async fn mute_track(
        &self,
        request: Request<pb::MuteTrackRequest>,
    ) -> Result<Response<pb::MuteTrackResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.mute(&tenant, &req, false).await;
        audit(&tenant, &req.call_id, &req.user_id, "mute_track", &result);
        reply(result)
    }

    async fn request_unmute(
        &self,
        request: Request<pb::MuteTrackRequest>,
    ) -> Result<Response<pb::MuteTrackResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.mute(&tenant, &req, true).await;
        audit(
            &tenant,
            &req.call_id,
            &req.user_id,
            "request_unmute",
            &result,
        );
        reply(result)
    }

    async fn update_participant(
        &self,
        request: Request<pb::UpdateParticipantRequest>,
    ) -> Result<Response<pb::UpdateParticipantResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.update(&tenant, &req).await;
        audit(
            &tenant,
            &req.call_id,
            &req.user_id,
            "update_participant",
            &result,
        );
        reply(result)
    }

    async fn end_room(
        &self,
        request: Request<pb::EndRoomRequest>,
    ) -> Result<Response<pb::EndRoomResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.end(&tenant, &req).await;
        audit(&tenant, &req.call_id, "", "end_room", &result);
        reply(result)
    }

    async fn list_bans(
        &self,
        request: Request<pb::ListBansRequest>,
    ) -> Result<Response<pb::ListBansResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = (|| {
            let call = if req.call_id.is_empty() {
                None
            } else {
                Some(call_id(&req.call_id)?)
            };
            let bans = self
                .moderation
                .bans(&tenant, call.as_ref(), unix_now())?
                .into_iter()
                .map(|b| pb::Ban {
                    call_id: b.call.as_str().to_owned(),
                    user_id: b.user.as_str().to_owned(),
                    until: b.until,
                    reason: b.reason,
                    created_at: b.created_at,
                })
                .collect();
            Ok(pb::ListBansResponse { bans })
        })();
        reply(result)
    }

    async fn unban(
        &self,
        request: Request<pb::UnbanRequest>,
    ) -> Result<Response<pb::UnbanResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.lift(&tenant, &req).await;
        audit(&tenant, &req.call_id, &req.user_id, "unban", &result);
        reply(result)
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.revoke_tokens(&tenant, &req).await;
        audit(&tenant, "", &req.user_id, "revoke", &result);
        reply(result)
    }

    async fn configure_webhooks(
        &self,
        request: Request<pb::ConfigureWebhooksRequest>,
    ) -> Result<Response<pb::ConfigureWebhooksResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let count = req.urls.len();
        let result = self
            .webhooks
            .configure(&tenant, req.urls, req.secret)
            .await
            .map_err(RoomsError::from);
        // The URLs and the secret stay out of the audit line: URLs may carry tokens.
        audit(&tenant, "", "", "configure_webhooks", &result);
        if result.is_ok() {
            tracing::debug!(client = %tenant, urls = count, "webhook settings applied");
        }
        reply(result.map(|()| pb::ConfigureWebhooksResponse {}))
    }

    async fn list_lobby(
        &self,
        request: Request<pb::ListLobbyRequest>,
    ) -> Result<Response<pb::ListLobbyResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = call_id(&req.call_id).map(|call| pb::ListLobbyResponse {
            waiting: self
                .lobby
                .waiting(&tenant, &call)
                .into_iter()
                .map(|w| pb::LobbyEntry {
                    session_id: w.entrant.session.as_str().to_owned(),
                    user_id: w.entrant.user.as_str().to_owned(),
                    display_name: w.entrant.display_name,
                    role: w.entrant.role,
                    reason: w.reason.as_str().to_owned(),
                    since_ms: w.since_ms,
                })
                .collect(),
        });
        reply(result)
    }

    async fn admit(
        &self,
        request: Request<pb::LobbyDecisionRequest>,
    ) -> Result<Response<pb::LobbyDecisionResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.decide(&tenant, &req, true);
        audit(&tenant, &req.call_id, &req.user_id, "admit", &result);
        reply(result)
    }

    async fn deny(
        &self,
        request: Request<pb::LobbyDecisionRequest>,
    ) -> Result<Response<pb::LobbyDecisionResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.decide(&tenant, &req, false);
        audit(&tenant, &req.call_id, &req.user_id, "deny", &result);
        reply(result)
    }

    async fn get_room_policy(
        &self,
        request: Request<pb::GetRoomPolicyRequest>,
    ) -> Result<Response<pb::RoomPolicy>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = call_id(&req.call_id).and_then(|call| {
            Ok(convert::room_policy_to(
                self.moderation.policy(&tenant, &call)?,
            ))
        });
        reply(result)
    }

    async fn set_room_policy(
        &self,
        request: Request<pb::SetRoomPolicyRequest>,
    ) -> Result<Response<pb::RoomPolicy>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = self.set_policy(&tenant, &req).await;
        audit(&tenant, &req.call_id, "", "set_room_policy", &result);
        reply(result)
    }

    async fn move_room(
        &self,
        request: Request<pb::MoveRoomRequest>,
    ) -> Result<Response<pb::MoveRoomResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        let result = async {
            let call = call_id(&req.call_id)?;
            let n = self.sfu.moderate(&tenant, &call, Moderation::Move).await?;
            Ok::<_, RoomsError>(pb::MoveRoomResponse {
                sessions_closed: count(n),
            })
        }
        .await;
        audit(&tenant, &req.call_id, "", "move_room", &result);
        reply(result)
    }

    async fn has_room(
        &self,
        request: Request<pb::HasRoomRequest>,
    ) -> Result<Response<pb::HasRoomResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        // A draining host takes no joins: its rooms are not "here" for placement, so a join
        // goes where the room's other participants are moving, not to a refusal.
        let result = call_id(&req.call_id).map(|call| pb::HasRoomResponse {
            present: !self.sfu.is_draining() && has_room(&self.sfu, &self.lobby, &tenant, &call),
        });
        reply(result)
    }
}

//! The gRPC signaling service (`rtcd.v1.Signaling`): authenticates every RPC from its
//! `authorization` metadata, scopes it to the caller's tenant, and relays between one
//! bidirectional stream and one SFU session. It holds no media state.

pub mod convert;
pub mod status;

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;

use rtcd_proto::v1 as pb;
use rtcd_proto::v1::signaling_server::Signaling;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AuthService, Credentials, Principal};
use crate::lobby::{self, Decision, Entrant, Gate, Lobby, Notice, Presence, Ticket};
use crate::moderation::{ModerationStore, Refusal, unix_now};
use crate::sfu::{CallId, JoinRequest, SessionId, Sfu, SfuError, TenantId, UserId};

/// The service; cheap to clone (every member is a handle).
#[derive(Clone)]
pub struct SignalingService {
    auth: AuthService,
    sfu: Sfu,
    moderation: ModerationStore,
    lobby: Lobby,
}

/// Who is calling: a registered client, from basic credentials or a bearer token (cached in
/// `AuthService`, so no bcrypt per RPC once verified). Admins are not tenants. Every rtcd gRPC
/// service authenticates through this one function.
pub(crate) async fn tenant_of<T>(auth: &AuthService, req: &Request<T>) -> Result<TenantId, Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("authentication failed"))?;
    let credentials = Credentials::from_authorization(header).map_err(|e| status::from_auth(&e))?;
    let origin = req
        .remote_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match auth.authenticate(&credentials, origin).await {
        Ok(Principal::Client(id)) => Ok(TenantId::new(id.as_str())),
        Ok(Principal::Admin) => Err(Status::permission_denied(
            "the admin cannot join calls; use a client's credentials",
        )),
        Err(e) => Err(status::from_auth(&e)),
    }
}

impl SignalingService {
    /// A service over the daemon's auth, SFU and moderation store (bans and revocations are
    /// checked on every join and token refresh), and the rooms' entry gates (shared with the
    /// `Rooms` service, whose admit / deny / policy calls act on them).
    pub fn new(auth: AuthService, sfu: Sfu, moderation: ModerationStore, lobby: Lobby) -> Self {
        Self {
            auth,
            sfu,
            moderation,
            lobby,
        }
    }

    /// The tonic server wrapper, with the message size limit applied in both directions.
    pub fn into_server(
        self,
        max_message_bytes: usize,
    ) -> pb::signaling_server::SignalingServer<Self> {
        pb::signaling_server::SignalingServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    async fn tenant<T>(&self, req: &Request<T>) -> Result<TenantId, Status> {
        tenant_of(&self.auth, req).await
    }
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<pb::ServerSignal, Status>> + Send>>;

/// Where a session's stream goes: the proxy's end of the response stream.
type Outbound = mpsc::Sender<Result<pb::ServerSignal, Status>>;

/// An admitted session: its SFU handle and events, and its place in the room's lobby state.
struct Admitted {
    handle: crate::sfu::SessionHandle,
    events: mpsc::Receiver<crate::sfu::SessionEvent>,
    presence: Presence,
    notices: mpsc::Receiver<Notice>,
}

/// Why a session was not admitted to the SFU.
enum NotAdmitted {
    /// Banned or revoked (checked again on admission: a wait can be long).
    Refused(Refusal),
    /// The SFU or the store failed.
    Failed(Status),
}

impl From<NotAdmitted> for Status {
    fn from(e: NotAdmitted) -> Status {
        match e {
            NotAdmitted::Refused(r) => status::from_refusal(&r),
            NotAdmitted::Failed(s) => s,
        }
    }
}

/// How a wait in the lobby or for a host ended.
enum WaitEnd {
    /// Go in.
    Admitted,
    /// Close the session with this `SessionClosed` reason.
    Closed(&'static str),
    /// The proxy's stream ended: nobody to tell.
    Gone,
}

fn signal(s: pb::server_signal::Signal) -> Result<pb::ServerSignal, Status> {
    Ok(pb::ServerSignal { signal: Some(s) })
}

fn closed(reason: &str) -> Result<pb::ServerSignal, Status> {
    signal(pb::server_signal::Signal::SessionClosed(
        pb::SessionClosed {
            reason: reason.to_owned(),
        },
    ))
}

impl SignalingService {
    /// Joins the SFU (after the bans and revocations check) and registers the session in the
    /// room's lobby state; sends `Joined`.
    async fn admit(
        &self,
        join: JoinRequest,
        entrant: &Entrant,
        tx: &Outbound,
    ) -> Result<Admitted, NotAdmitted> {
        if let Some(refusal) = self
            .moderation
            .refusal(
                &join.tenant,
                &join.call,
                &join.user,
                &join.token,
                unix_now(),
            )
            .map_err(|e| NotAdmitted::Failed(status::from_store(&e)))?
        {
            tracing::info!(target: "audit", client = %join.tenant, call = %join.call, user = %join.user, action = "join", outcome = "refused", ?refusal);
            return Err(NotAdmitted::Refused(refusal));
        }
        let (tenant, call, session, user, token) = (
            join.tenant.clone(),
            join.call.clone(),
            join.session.clone(),
            join.user.clone(),
            join.token.clone(),
        );
        let (handle, events) = self
            .sfu
            .join(join)
            .await
            .map_err(|e| NotAdmitted::Failed(status::from_sfu(&e)))?;
        // Checked again now that the session is registered: a ban or revocation written
        // between the first check and the registration (whose removal pass could not see this
        // session yet) is seen here, so no refused session stays.
        if let Ok(Some(refusal)) =
            self.moderation
                .refusal(&tenant, &call, &user, &token, unix_now())
        {
            let _ = self
                .sfu
                .close(&tenant, &call, &session, refusal.close_reason());
        }
        let (notices_tx, notices) = mpsc::channel(lobby::NOTICE_CAPACITY);
        let presence = self.lobby.present(&tenant, &call, entrant, notices_tx);
        let joined = pb::Joined {
            session_id: session.as_str().to_owned(),
        };
        let _ = tx
            .send(signal(pb::server_signal::Signal::Joined(joined)))
            .await;
        Ok(Admitted {
            handle,
            events,
            presence,
            notices,
        })
    }
}

/// Holds a session until the lobby decides, the wait times out, or the proxy gives up
/// (`Leave` or the end of its stream). Other messages are ignored: there is no peer
/// connection to apply them to yet.
async fn wait(mut ticket: Ticket, inbound: &mut Streaming<pb::ClientSignal>) -> WaitEnd {
    let deadline = tokio::time::sleep(ticket.timeout);
    tokio::pin!(deadline);
    let end = |d: Decision| match d.close_reason() {
        None => WaitEnd::Admitted,
        Some(reason) => WaitEnd::Closed(reason),
    };
    loop {
        tokio::select! {
            d = ticket.decided() => return end(d),
            _ = &mut deadline => {
                let reason = ticket.reason;
                return match ticket.time_out() {
                    Some(d) => end(d),
                    None => WaitEnd::Closed(reason.timeout_reason()),
                };
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::ClientSignal { signal: Some(pb::client_signal::Signal::Leave(_)) })) => {
                    return WaitEnd::Closed("leave");
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return WaitEnd::Gone,
            }
        }
    }
}

/// Relays between the proxy's stream and an admitted session until the session ends.
async fn relay(
    admitted: Admitted,
    mut inbound: Streaming<pb::ClientSignal>,
    tx: Outbound,
    sfu: Sfu,
    moderation: ModerationStore,
    ids: (TenantId, CallId, SessionId, UserId),
) {
    let (tenant, call, session, user) = ids;
    let Admitted {
        handle,
        mut events,
        presence,
        mut notices,
    } = admitted;
    // Unregisters from the lobby state when the session ends, however it ends.
    let _presence = presence;
    let mut handle = Some(handle);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    if tx.send(Ok(convert::event(event))).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            Some(notice) = notices.recv() => {
                if tx.send(signal(convert::lobby_notice(notice))).await.is_err() {
                    break;
                }
            }
            msg = inbound.message(), if handle.is_some() => {
                let Some(h) = handle.as_ref() else { continue };
                match msg {
                    Ok(Some(pb::ClientSignal { signal: Some(signal) })) => {
                        let result = match convert::command(signal) {
                            Ok(convert::ClientCommand::Session(cmd)) => h.send(cmd).await,
                            Ok(convert::ClientCommand::Token(token)) => {
                                match moderation.revoked(&tenant, &user, &token, unix_now()) {
                                    Ok(Some(refusal)) => {
                                        tracing::info!(target: "audit", client = %tenant, %call, %user, action = "token refresh", outcome = "revoked", ?refusal);
                                        sfu.close(&tenant, &call, &session, "revoked")
                                    }
                                    Ok(None) => sfu.update_token(&tenant, &call, &session, token),
                                    Err(e) => {
                                        tracing::error!(error = %e, "store failure on a token refresh");
                                        Err(SfuError::Media("internal error".into()))
                                    }
                                }
                            }
                            Err(e) => Err(e),
                        };
                        if let Err(e) = result {
                            let error = pb::ServerSignal { signal: Some(convert::error(&e)) };
                            if tx.send(Ok(error)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(Some(pb::ClientSignal { signal: None })) => {
                        let e = SfuError::InvalidArgument("empty ClientSignal".into());
                        let error = pb::ServerSignal { signal: Some(convert::error(&e)) };
                        if tx.send(Ok(error)).await.is_err() {
                            break;
                        }
                    }
                    // The proxy closed its side or the connection broke: dropping the
                    // handle ends the session ("disconnected"); keep relaying until Closed.
                    Ok(None) | Err(_) => handle = None,
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Signaling for SignalingService {
    type SessionStream = ServerStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::ClientSignal>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let tenant = self.tenant(&request).await?;
        let mut inbound = request.into_inner();
        let join = match inbound.message().await? {
            Some(pb::ClientSignal {
                signal: Some(pb::client_signal::Signal::Join(join)),
            }) => join,
            Some(_) => {
                return Err(Status::failed_precondition(
                    "the first message of a session must be Join",
                ));
            }
            None => return Err(Status::cancelled("stream ended before Join")),
        };
        let join_policy = convert::room_policy(join.policy.unwrap_or_default());
        join_policy
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let join = convert::join_request(tenant, join).map_err(|e| status::from_sfu(&e))?;
        let stored = self
            .moderation
            .policy(&join.tenant, &join.call)
            .map_err(|e| status::from_store(&e))?;
        let entrant = Entrant {
            session: join.session.clone(),
            user: join.user.clone(),
            display_name: join.display_name.clone(),
            role: join.role.clone(),
        };
        let ids = (
            join.tenant.clone(),
            join.call.clone(),
            join.session.clone(),
            join.user.clone(),
        );
        if self.sfu.is_draining() {
            // Checked before the lobby: nobody could let a waiter in on a draining host.
            return Err(status::from_sfu(&SfuError::Draining));
        }
        let gate = self
            .lobby
            .enter(&ids.0, &ids.1, entrant.clone(), join_policy, stored)
            .map_err(|e| {
                tracing::info!(target: "audit", client = %ids.0, call = %ids.1, user = %ids.3, action = "join", outcome = "refused", reason = %e);
                status::from_lobby(&e)
            })?;
        // Bounded: if the proxy reads slowly, the session's events wait (per-session backpressure).
        let (tx, rx) = mpsc::channel::<Result<pb::ServerSignal, Status>>(64);
        let service = self.clone();
        match gate {
            Gate::Enter => {
                let admitted = self
                    .admit(join, &entrant, &tx)
                    .await
                    .map_err(Status::from)?;
                tokio::spawn(relay(
                    admitted,
                    inbound,
                    tx,
                    service.sfu,
                    service.moderation,
                    ids,
                ));
            }
            Gate::Wait(ticket) => {
                let waiting = pb::Waiting {
                    reason: ticket.reason.as_str().to_owned(),
                    timeout_seconds: u32::try_from(ticket.timeout.as_secs()).unwrap_or(u32::MAX),
                };
                tracing::debug!(client = %ids.0, call = %ids.1, user = %ids.3, reason = waiting.reason, "session waits to enter");
                let _ = tx
                    .send(signal(pb::server_signal::Signal::Waiting(waiting)))
                    .await;
                tokio::spawn(async move {
                    match wait(ticket, &mut inbound).await {
                        WaitEnd::Admitted => {}
                        WaitEnd::Closed(reason) => {
                            tracing::info!(target: "audit", client = %ids.0, call = %ids.1, user = %ids.3, action = "join", outcome = reason, "left the waiting list");
                            let _ = tx.send(closed(reason)).await;
                            return;
                        }
                        WaitEnd::Gone => return,
                    }
                    match service.admit(join, &entrant, &tx).await {
                        Ok(admitted) => {
                            relay(admitted, inbound, tx, service.sfu, service.moderation, ids).await
                        }
                        // The stream is already open: the refusal travels as its end.
                        Err(NotAdmitted::Refused(refusal)) => {
                            let _ = tx.send(closed(refusal.close_reason())).await;
                        }
                        Err(NotAdmitted::Failed(status)) => {
                            let _ = tx.send(closed(status.message())).await;
                        }
                    }
                });
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let req = request.into_inner();
        self.sfu
            .close(
                &tenant,
                &CallId::new(req.call_id),
                &SessionId::new(req.session_id),
                "closed by client",
            )
            .map_err(|e| status::from_sfu(&e))?;
        Ok(Response::new(pb::CloseSessionResponse {}))
    }
}

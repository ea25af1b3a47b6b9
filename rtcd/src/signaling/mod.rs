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
use crate::moderation::{ModerationStore, unix_now};
use crate::sfu::{CallId, SessionId, Sfu, SfuError, TenantId};

/// The service; cheap to clone (every member is a handle).
#[derive(Clone)]
pub struct SignalingService {
    auth: AuthService,
    sfu: Sfu,
    moderation: ModerationStore,
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
    /// checked on every join and token refresh).
    pub fn new(auth: AuthService, sfu: Sfu, moderation: ModerationStore) -> Self {
        Self {
            auth,
            sfu,
            moderation,
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
        let join = convert::join_request(tenant, join).map_err(|e| status::from_sfu(&e))?;
        if let Some(refusal) = self
            .moderation
            .refusal(
                &join.tenant,
                &join.call,
                &join.user,
                &join.token,
                unix_now(),
            )
            .map_err(|e| status::from_store(&e))?
        {
            tracing::info!(target: "audit", client = %join.tenant, call = %join.call, user = %join.user, action = "join", outcome = "refused", ?refusal);
            return Err(status::from_refusal(&refusal));
        }
        let session_id = join.session.as_str().to_owned();
        let (tenant, call, session, user, token) = (
            join.tenant.clone(),
            join.call.clone(),
            join.session.clone(),
            join.user.clone(),
            join.token.clone(),
        );
        let (sfu, moderation) = (self.sfu.clone(), self.moderation.clone());
        let (handle, mut events) = self
            .sfu
            .join(join)
            .await
            .map_err(|e| status::from_sfu(&e))?;
        // Checked again now that the session is registered: a ban or revocation written
        // between the first check and the registration (whose removal pass could not see this
        // session yet) is seen here, so no refused session stays.
        if let Ok(Some(refusal)) = moderation.refusal(&tenant, &call, &user, &token, unix_now()) {
            let reason = match refusal {
                crate::moderation::Refusal::Banned { .. } => "banned",
                _ => "revoked",
            };
            let _ = sfu.close(&tenant, &call, &session, reason);
        }
        // Bounded: if the proxy reads slowly, the session's events wait (per-session backpressure).
        let (tx, rx) = mpsc::channel::<Result<pb::ServerSignal, Status>>(64);
        let joined = pb::ServerSignal {
            signal: Some(pb::server_signal::Signal::Joined(pb::Joined { session_id })),
        };
        let _ = tx.send(Ok(joined)).await;
        tokio::spawn(async move {
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
        });
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

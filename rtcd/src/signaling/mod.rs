//! The gRPC signaling service (`rtcd.v1.Signaling`): authenticates every RPC from its
//! `authorization` metadata, scopes it to the caller's tenant, and relays between one
//! bidirectional stream and one SFU session. It holds no media state.

pub mod resume;

use std::pin::Pin;

use rtcd_proto::v1 as pb;
use rtcd_proto::v1::signaling_server::Signaling;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::AuthService;
use crate::grpc::{convert, status, tenant_of};
use crate::lobby::{self, Decision, Entrant, Gate, Lobby, Notice, Presence, Ticket};
use crate::moderation::{ModerationStore, Refusal, unix_now};
use crate::sfu::{CallId, JoinRequest, SessionId, Sfu, SfuError, TenantId, UserId};
use resume::{Claim, NotResumable, Parked, Parking, Secret};

/// The service; cheap to clone (every member is a handle).
#[derive(Clone)]
pub struct SignalingService {
    auth: AuthService,
    sfu: Sfu,
    moderation: ModerationStore,
    lobby: Lobby,
    parking: Parking,
    /// Every session's relay task (joined, waiting or parked): shutdown waits for them, since
    /// they hold the store and the SFU handles until their session has ended.
    relays: TaskTracker,
}

impl SignalingService {
    /// A service over the daemon's auth, SFU and moderation store (bans and revocations are
    /// checked on every join and token refresh), and the rooms' entry gates (shared with the
    /// `Rooms` service, whose admit / deny / policy calls act on them), and where sessions
    /// whose stream broke wait to be resumed.
    pub fn new(
        auth: AuthService,
        sfu: Sfu,
        moderation: ModerationStore,
        lobby: Lobby,
        parking: Parking,
    ) -> Self {
        Self {
            auth,
            sfu,
            moderation,
            lobby,
            parking,
            relays: TaskTracker::new(),
        }
    }

    /// The sessions' relay tasks, for shutdown to wait on once the SFU has drained.
    pub fn relays(&self) -> TaskTracker {
        self.relays.clone()
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

    /// After a session is admitted: the room goes on recording if it recorded on another
    /// host a moment ago (a new segment), or starts if its policy says `record`. In the
    /// background: the join does not wait for the disk.
    fn record_by_policy(&self, tenant: &TenantId, call: &CallId, policy: bool, e2ee: bool) {
        crate::rooms::recordings::on_admitted(
            self.sfu.clone(),
            self.moderation.clone(),
            tenant.clone(),
            call.clone(),
            policy,
            e2ee,
        );
    }

    fn context(&self, ids: (TenantId, CallId, SessionId, UserId)) -> Context {
        Context {
            sfu: self.sfu.clone(),
            moderation: self.moderation.clone(),
            parking: self.parking.clone(),
            ids,
        }
    }

    /// Takes over a parked session with this stream (`Resume`): the session's relay task,
    /// parked since its last stream broke, sends `Resumed` and what the session missed, then
    /// relays on this stream. The end user's token is checked against bans and revocations
    /// again, as on a join.
    fn resume(
        &self,
        tenant: TenantId,
        resume: pb::Resume,
        inbound: Streaming<pb::ClientSignal>,
    ) -> Result<Response<ServerStream>, Status> {
        let not_found = || Status::not_found("no parked session to resume");
        let token =
            convert::token(resume.token.unwrap_or_default()).map_err(|e| status::from_sfu(&e))?;
        let (call, session, user) = (
            CallId::new(resume.call_id),
            SessionId::new(resume.session_id),
            UserId::new(resume.user_id),
        );
        match self
            .parking
            .matches(&tenant, &session, &call, &user, &resume.secret)
        {
            Ok(()) => {}
            Err(NotResumable::Off) => {
                return Err(Status::not_found("session resumption is off on this host"));
            }
            Err(NotResumable::NotFound) => return Err(not_found()),
        }
        if let Some(refusal) = self
            .moderation
            .refusal(&tenant, &call, &user, &token, unix_now())
            .map_err(|e| status::from_store(&e))?
        {
            tracing::info!(target: "audit", client = %tenant, %call, %user, action = "resume", outcome = "refused", ?refusal);
            let _ = self
                .sfu
                .close(&tenant, &call, &session, refusal.close_reason());
            return Err(status::from_refusal(&refusal));
        }
        let (tx, stream) = Outbound::channel();
        self.parking
            .take(
                &tenant,
                &session,
                &call,
                &user,
                &resume.secret,
                Claim { tx, inbound },
            )
            .map_err(|_| not_found())?;
        Ok(Response::new(stream))
    }
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<pb::ServerSignal, Status>> + Send>>;

/// Where a session's stream goes: the proxy's end of the response stream, bounded (if the proxy
/// reads slowly, the session's events wait: per-session backpressure).
///
/// Messages are boxed in the queue: a channel allocates its first block of 32 slots up front,
/// and an unboxed `Result<ServerSignal, Status>` is 136 bytes, 4.3 KiB per session for a queue
/// that mostly holds nothing.
#[derive(Debug, Clone)]
pub struct Outbound(mpsc::Sender<Result<Box<pb::ServerSignal>, Status>>);

impl Outbound {
    /// A session's queue of [`OUTBOUND_CAPACITY`] and the response stream that drains it.
    fn channel() -> (Self, ServerStream) {
        let (tx, rx) = mpsc::channel::<Result<Box<pb::ServerSignal>, Status>>(OUTBOUND_CAPACITY);
        let stream = ReceiverStream::new(rx).map(|message| message.map(|signal| *signal));
        (Self(tx), Box::pin(stream))
    }

    /// Queues one message, waiting while the queue is full. If the stream is gone, the message
    /// comes back when it was one (not an error status), for a parked session to send later.
    async fn send(
        &self,
        message: Result<pb::ServerSignal, Status>,
    ) -> Result<(), Option<pb::ServerSignal>> {
        self.0
            .send(message.map(Box::new))
            .await
            .map_err(|unsent| unsent.0.ok().map(|signal| *signal))
    }
}

/// Messages a session's response stream holds before its events wait.
const OUTBOUND_CAPACITY: usize = 64;

/// An admitted session: its SFU handle and events, its place in the room's lobby state, and
/// the secret that resumes it (when resumption is on). Outlives any one stream.
pub struct Admitted {
    handle: crate::sfu::SessionHandle,
    events: crate::sfu::SessionEvents,
    /// Unregisters from the lobby state when the session ends, however it ends.
    _presence: Presence,
    notices: rtcd_kit::queue::Receiver<Notice>,
    secret: Option<Secret>,
    /// The room is end-to-end encrypted (told again on a resume).
    e2ee: bool,
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
    signal(convert::session_closed(reason.to_owned()))
}

impl SignalingService {
    /// Joins the SFU (after the bans and revocations check) and registers the session in the
    /// room's lobby state; sends `Joined`.
    async fn admit(
        &self,
        join: JoinRequest,
        entrant: &Entrant,
        tx: &Outbound,
        e2ee: bool,
    ) -> Result<Admitted, NotAdmitted> {
        if let Some(refusal) = self
            .moderation
            .join_refusal(
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
        let (notices_tx, notices) = rtcd_kit::queue::channel(lobby::NOTICE_CAPACITY);
        let presence = self.lobby.present(&tenant, &call, entrant, notices_tx);
        let secret = self.parking.enabled().then(Secret::random);
        let joined = pb::Joined {
            session_id: session.as_str().to_owned(),
            resume_secret: secret
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
            e2ee,
        };
        let _ = tx
            .send(signal(pb::server_signal::Signal::Joined(joined)))
            .await;
        Ok(Admitted {
            handle,
            events,
            _presence: presence,
            notices,
            secret,
            e2ee,
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

/// What a session's relay works with besides its streams.
struct Context {
    sfu: Sfu,
    moderation: ModerationStore,
    parking: Parking,
    ids: (TenantId, CallId, SessionId, UserId),
}

/// How relaying over one stream ended.
enum StreamEnd {
    /// The session is over (its `SessionClosed` went out, or nobody is left to tell).
    SessionOver,
    /// The proxy's stream broke or ended without a `Leave` while the session lives on; the
    /// event that could not be sent on it, if any.
    Lost(Option<pb::ServerSignal>),
}

/// Relays between the proxy's stream and an admitted session until the session ends. When the
/// stream breaks without a `Leave`, the session is parked (resumption on) until a proxy resumes
/// it with a new stream, or it ends with its stream ("disconnected").
async fn serve(
    mut admitted: Admitted,
    mut inbound: Streaming<pb::ClientSignal>,
    mut tx: Outbound,
    cx: Context,
) {
    // Who the session is if it parks (resumption on: it has a secret).
    let parked = admitted.secret.clone().map(|secret| {
        let (tenant, call, session, user) = cx.ids.clone();
        Parked {
            tenant,
            call,
            session,
            user,
            secret,
            e2ee: admitted.e2ee,
        }
    });
    loop {
        let pending = match relay(&mut admitted, &mut inbound, &tx, &cx).await {
            StreamEnd::SessionOver => return,
            StreamEnd::Lost(pending) => pending,
        };
        let Some(who) = parked.as_ref() else {
            // Resumption off: the session ends with its stream. Dropping the handle ends it
            // ("disconnected"); relay its close if the response stream is still read.
            let Admitted {
                handle, mut events, ..
            } = admitted;
            drop(handle);
            while let Some(event) = events.recv().await {
                if tx.send(Ok(convert::event(event))).await.is_err() {
                    return;
                }
            }
            return;
        };
        match cx.parking.park(who, &mut admitted, &cx.sfu, pending).await {
            Some(Claim {
                tx: next_tx,
                inbound: next_inbound,
            }) => {
                tx = next_tx;
                inbound = next_inbound;
            }
            // Given up: dropping `admitted` ends the session ("disconnected").
            None => return,
        }
    }
}

/// Relays between one stream of the proxy's and the session until either ends.
async fn relay(
    admitted: &mut Admitted,
    inbound: &mut Streaming<pb::ClientSignal>,
    tx: &Outbound,
    cx: &Context,
) -> StreamEnd {
    let (tenant, call, session, user) = &cx.ids;
    loop {
        tokio::select! {
            event = admitted.events.recv() => match event {
                Some(event) => {
                    if let Err(e) = tx.send(Ok(convert::event(event))).await {
                        return StreamEnd::Lost(e);
                    }
                }
                None => return StreamEnd::SessionOver,
            },
            Some(notice) = admitted.notices.recv() => {
                if let Err(e) = tx.send(signal(convert::lobby_notice(notice))).await {
                    return StreamEnd::Lost(e);
                }
            }
            msg = inbound.message() => {
                let h = &admitted.handle;
                match msg {
                    Ok(Some(pb::ClientSignal { signal: Some(signal) })) => {
                        let result = match convert::command(signal) {
                            Ok(convert::ClientCommand::Session(cmd)) => h.send(cmd).await,
                            Ok(convert::ClientCommand::Token(token)) => {
                                match cx.moderation.revoked(tenant, user, &token, unix_now()) {
                                    Ok(Some(refusal)) => {
                                        tracing::info!(target: "audit", client = %tenant, %call, %user, action = "token refresh", outcome = "revoked", ?refusal);
                                        cx.sfu.close(tenant, call, session, "revoked")
                                    }
                                    Ok(None) => cx.sfu.update_token(tenant, call, session, token),
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
                            if let Err(e) = tx.send(Ok(error)).await {
                                return StreamEnd::Lost(e);
                            }
                        }
                    }
                    Ok(Some(pb::ClientSignal { signal: None })) => {
                        let e = SfuError::InvalidArgument("empty ClientSignal".into());
                        let error = pb::ServerSignal { signal: Some(convert::error(&e)) };
                        if let Err(e) = tx.send(Ok(error)).await {
                            return StreamEnd::Lost(e);
                        }
                    }
                    // The proxy closed its side or the connection broke, without a Leave (a
                    // Leave closes the session, whose close then ends this loop).
                    Ok(None) | Err(_) => return StreamEnd::Lost(None),
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
            Some(pb::ClientSignal {
                signal: Some(pb::client_signal::Signal::Resume(resume)),
            }) => return self.resume(tenant, resume, inbound),
            Some(_) => {
                return Err(Status::failed_precondition(
                    "the first message of a session must be Join or Resume",
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
        // The stored policy overrides the join's, field by field (as for entry). `e2ee` cannot
        // change while this session waits (a policy change is refused while anyone is in the
        // room or waits to enter it), so it is read once, here.
        let applying = stored.over(join_policy);
        let (auto_record, e2ee) = (applying.recorded(), applying.encrypted());
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
        let (tx, stream) = Outbound::channel();
        let service = self.clone();
        match gate {
            Gate::Enter => {
                let admitted = self
                    .admit(join, &entrant, &tx, e2ee)
                    .await
                    .map_err(Status::from)?;
                self.record_by_policy(&ids.0, &ids.1, auto_record, e2ee);
                self.relays
                    .spawn(serve(admitted, inbound, tx, service.context(ids)));
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
                self.relays.spawn(async move {
                    match wait(ticket, &mut inbound).await {
                        WaitEnd::Admitted => {}
                        WaitEnd::Closed(reason) => {
                            tracing::info!(target: "audit", client = %ids.0, call = %ids.1, user = %ids.3, action = "join", outcome = reason, "left the waiting list");
                            let _ = tx.send(closed(reason)).await;
                            return;
                        }
                        WaitEnd::Gone => return,
                    }
                    match service.admit(join, &entrant, &tx, e2ee).await {
                        Ok(admitted) => {
                            service.record_by_policy(&ids.0, &ids.1, auto_record, e2ee);
                            serve(admitted, inbound, tx, service.context(ids)).await
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
        Ok(Response::new(stream))
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

//! The session's task: owns the client socket and the relay link, `select!`s over the next
//! client frame, the relay's events, the [`Machine`]'s deadline, TURN renewal and the proxy's
//! shutdown, and does the IO the machine decides on (see `super`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use rtcd_kit::rate::{AddrKey, KeyedLimiter, Quota};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::event::{self, Event};
use super::machine::{Clock, Machine, Phase, Read, Settings, Timer};
use super::message::{self, Step};
use super::moderation::{self, ModerationError};
use super::resume::Resume;
use crate::auth::affiliation::{Affiliation, Ceiling};
use crate::auth::{AuthError, Grant, Verifier, unix_now};
use crate::close::CloseReason;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::{Metrics, ReasonLabel};
use crate::protocol::{ClientMessage, Identity, RoomName, ServerMessage, SessionId};
use crate::relay::{JoinRequest, MediaEnd, Relay, RelayCommand, RelayEvent, RelayLink};

/// How long the proxy keeps reading after sending its close frame (for the client's close
/// frame, or the end of its byte stream), so the client reads the close code instead of a
/// connection reset. Closing a TCP socket with unread data sends a reset, which can overtake
/// the close frame: a client still sending (the rest of an oversized message) then sees its
/// write fail with a reset. Bounded, because a client that never stops sending must not keep
/// its connection slot: it is held until the linger ends.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long a closing session waits to queue its `Leave` for the media server.
const LEAVE_SEND: Duration = Duration::from_millis(500);

/// Addresses each per-address limiter tracks at most (about 64 bytes each: 4 MB). Past it,
/// full buckets are forgotten, and if none is full new addresses pass untracked:
/// `limits.max_connections` still caps what an attacker with many addresses can open.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Token buckets per source address (IPv6 per /64).
pub type AddressLimiter = KeyedLimiter<AddrKey>;

/// A client connection after the HTTP upgrade.
pub type ClientSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The WebSocket settings of a client connection. The read buffer is small on purpose: it is
/// allocated (and zero-filled) for every connection up front, and tungstenite's default
/// (128 KiB) would dominate the memory of an idle session; even 4 KiB was 40 % of one (issue
/// 29 #15). It grows to the length each frame header announces, so a larger message (an
/// SDP offer) costs no extra reads, and it keeps the capacity the largest one needed.
pub fn socket_config(
    max_message_bytes: usize,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * max_message_bytes)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// What every session shares.
pub struct ProxyState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// The media relay; `None` until an rtcd relay is configured.
    pub relay: Option<Arc<dyn Relay>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Lifecycle phase.
    pub health: Arc<Health>,
    /// New connections per address.
    pub connection_limiter: AddressLimiter,
    /// Failed authentications per address.
    pub auth_failure_limiter: AddressLimiter,
    /// Cancelled on shutdown: every session closes with `going_away`.
    pub shutdown: CancellationToken,
    /// TURN credentials for clients (`None` without `[turn]`).
    pub turn: Option<Arc<crate::turn::Turn>>,
    /// Signs participant tokens for the room service API (`None` when issuing is off).
    pub token_issuer: Option<Arc<crate::auth::api::TokenIssuer>>,
    /// The platform's join-time hook that may lower a grant (`None` without
    /// `[auth.affiliation]`).
    pub affiliation: Option<Arc<Affiliation>>,
    sessions_by_user: Mutex<HashMap<(Option<String>, Identity), usize>>,
    open_connections: AtomicUsize,
    next_session: AtomicU64,
}

impl ProxyState {
    /// Builds the shared state.
    pub fn new(
        config: Arc<Config>,
        verifier: Arc<Verifier>,
        relay: Option<Arc<dyn Relay>>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> Self {
        let l = &config.limits;
        Self {
            connection_limiter: AddressLimiter::new(
                Quota::per_minute(l.connection_burst, l.connections_per_minute),
                MAX_TRACKED_ADDRESSES,
            ),
            auth_failure_limiter: AddressLimiter::new(
                Quota::per_minute(l.failed_auth_burst, l.failed_auth_per_minute),
                MAX_TRACKED_ADDRESSES,
            ),
            config,
            verifier,
            relay,
            metrics,
            health,
            shutdown,
            turn: None,
            token_issuer: None,
            affiliation: None,
            sessions_by_user: Mutex::new(HashMap::new()),
            open_connections: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
        }
    }

    /// With a token issuer for the room service API (set once, before serving).
    pub fn with_token_issuer(mut self, issuer: Option<Arc<crate::auth::api::TokenIssuer>>) -> Self {
        self.token_issuer = issuer;
        self
    }

    /// With the affiliation hook (set once, before serving).
    pub fn with_affiliation(mut self, affiliation: Option<Arc<Affiliation>>) -> Self {
        self.affiliation = affiliation;
        self
    }

    /// With TURN credentials for clients (set once, before serving).
    pub fn with_turn(mut self, turn: Option<Arc<crate::turn::Turn>>) -> Self {
        self.turn = turn;
        self
    }

    /// Admits a new connection from `ip`, or says why not (checked before the upgrade
    /// completes any work).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, CloseReason> {
        if !self.health.is_ready() {
            return Err(CloseReason::GoingAway);
        }
        if self
            .connection_limiter
            .take(&AddrKey::new(ip), Instant::now())
            .is_err()
        {
            return Err(CloseReason::TooManyConnections);
        }
        let max = self.config.limits.max_connections;
        if self.open_connections.fetch_add(1, Ordering::AcqRel) >= max {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            return Err(CloseReason::TooManyConnections);
        }
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
        Ok(ConnectionSlot(self.clone()))
    }

    fn reserve_user(self: &Arc<Self>, grant: &Grant) -> Option<UserSlot> {
        let key = (grant.tenant.clone(), grant.identity.clone());
        let max = self.config.limits.max_sessions_per_user;
        let mut map = self
            .sessions_by_user
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = map.entry(key.clone()).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            state: self.clone(),
            key,
        })
    }
}

/// An admitted connection; releases its place in the global count when dropped.
pub struct ConnectionSlot(Arc<ProxyState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

/// A session counted against its identity's limit.
struct UserSlot {
    state: Arc<ProxyState>,
    key: (Option<String>, Identity),
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self
            .state
            .sessions_by_user
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Tokens presented outside the join message, taken from the upgrade request.
#[derive(Debug, Default)]
pub struct UpgradeTokens {
    /// `Authorization: Bearer …`.
    pub header: Option<String>,
    /// `?jwt=…` (present even when disabled, so the refusal can say why).
    pub query: Option<String>,
}

struct Joined {
    grant: Grant,
    link: Option<RelayLink>,
    /// When the last client offer was relayed, until its answer comes back.
    offer_sent: Option<Instant>,
    _slot: UserSlot,
    /// Why the media server ended the session, if it did (for the "session ended" log).
    media_closed: Option<String>,
    /// When the session gets new TURN credentials (`None` without `[turn]`).
    turn_refresh_at: Option<tokio::time::Instant>,
    /// What the affiliation hook allowed at join: a refresh token is held to it too.
    ceiling: Ceiling,
    /// Resumption and the role changes that outrank the token.
    resume: Resume,
    /// The room is end-to-end encrypted (`joined.e2ee`): as the media server applies the
    /// policy, or this proxy's configuration when no media server is attached.
    e2ee: bool,
}

struct Session {
    id: SessionId,
    peer: IpAddr,
    state: Arc<ProxyState>,
    sink: SplitSink<ClientSocket, Message>,
    stream: SplitStream<ClientSocket>,
    joined: Option<Joined>,
    /// The protocol's decisions.
    machine: Machine,
}

/// What to do after handling one event.
enum Next {
    Continue,
    Close(CloseReason, Option<String>),
}

/// Runs a session to completion. `refused` closes at once (limits checked before upgrade).
pub async fn run(
    ws: ClientSocket,
    state: Arc<ProxyState>,
    peer: IpAddr,
    tokens: UpgradeTokens,
    admitted: Result<ConnectionSlot, CloseReason>,
) {
    let (sink, stream) = ws.split();
    let id = SessionId(state.next_session.fetch_add(1, Ordering::Relaxed));
    let settings = Settings::from_config(&state.config.limits, &state.config.auth);
    let mut session = Session {
        id,
        peer,
        state: state.clone(),
        sink,
        stream,
        joined: None,
        machine: Machine::new(settings, tokio::time::Instant::now()),
    };
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(reason) => {
            Box::pin(session.close(reason, None)).await;
            Box::pin(session.linger()).await;
            return;
        }
    };
    let (reason, detail) = session.serve(tokens).await;
    // The end runs boxed, like `serve`'s handlers: not part of every idle session's task.
    Box::pin(session.release_media(&reason)).await;
    let code = reason.code();
    let label = reason.label();
    Box::pin(session.close(reason, detail.clone())).await;
    if let Some(joined) = session.joined.take() {
        state.metrics.sessions.dec();
        // Why, in one line: the close code and label, the detail the client was sent, and
        // the media server's own reason when it ended the session.
        tracing::info!(
            session = %id,
            identity = %joined.grant.identity.as_str(),
            room = %joined.grant.room.as_str(),
            code,
            reason = label,
            detail = detail.as_deref().unwrap_or(""),
            media_reason = joined.media_closed.as_deref().unwrap_or(""),
            "session ended"
        );
    }
    // The per-user slot is released above; the connection slot only after the linger.
    Box::pin(session.linger()).await;
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

impl Session {
    /// Ends the session at the media server (`Leave`) unless the client may come back and
    /// resume it: when the proxy shuts down (the client reconnects to another replica) or the
    /// client vanished (its connection dropped without a close, or went silent), the stream
    /// just ends and the media server keeps the session, media flowing, for its grace period.
    async fn release_media(&mut self, reason: &CloseReason) {
        if self.machine.keeps_media(reason) {
            return;
        }
        let Some(link) = self.joined.as_ref().and_then(|j| j.link.as_ref()) else {
            return;
        };
        // Bounded: a link too backed up to take it ends without (the session then expires at
        // the media server after its grace period).
        let _ = tokio::time::timeout(LEAVE_SEND, link.commands.send(RelayCommand::Leave)).await;
    }

    async fn serve(&mut self, mut tokens: UpgradeTokens) -> (CloseReason, Option<String>) {
        let shutdown = self.state.shutdown.clone();
        loop {
            let wake = self.machine.deadline(&Clock::now());
            let turn_at = self
                .joined
                .as_ref()
                .and_then(|j| j.turn_refresh_at)
                .unwrap_or_else(far_future);
            // Every handler runs boxed: the task holds its future's largest state for the
            // whole session, and an idle session waits here, in the `select!` itself. Inline,
            // the handlers' states (a send with its timeout, a join's verification, a relay
            // event) made every idle session's task about 4 KiB (issue 29 #15).
            let next = tokio::select! {
                frame = self.stream.next() => Box::pin(self.on_frame(frame, &mut tokens)).await,
                event = next_event(&mut self.joined) => Box::pin(self.on_relay_event(event)).await,
                _ = tokio::time::sleep_until(wake) => match self.machine.on_time(&Clock::now()) {
                    Timer::Idle => Next::Continue,
                    Timer::Ping => {
                        Box::pin(self.send_frame(Message::Ping(Default::default()))).await;
                        Next::Continue
                    }
                    Timer::TokenExpiring { expires_at } => {
                        Box::pin(self.send(ServerMessage::TokenExpiring { expires_at })).await;
                        Next::Continue
                    }
                    Timer::Close(close) => Next::Close(close.reason, close.detail),
                },
                _ = tokio::time::sleep_until(turn_at) => Box::pin(self.refresh_turn()).await,
                _ = shutdown.cancelled() => {
                    let close = self.machine.on_shutdown();
                    Next::Close(close.reason, close.detail)
                }
            };
            if let Next::Close(reason, detail) = next {
                return (reason, detail);
            }
            if let Some(close) = self.machine.after_event() {
                return (close.reason, close.detail);
            }
        }
    }

    async fn send(&mut self, message: ServerMessage) {
        self.state.metrics.message("out", message.kind());
        let text = serde_json::to_string(&message).expect("server messages always serialize");
        self.send_frame(Message::text(text)).await;
    }

    /// Writes one frame, bounded by `limits.send_timeout_seconds`: a frame that cannot be
    /// written in that time means the client stopped reading, and the session is dropped
    /// rather than left blocking on its socket.
    async fn send_frame(&mut self, frame: Message) {
        if self.machine.stalled() {
            return;
        }
        let limit = Duration::from_secs(self.state.config.limits.send_timeout_seconds);
        match tokio::time::timeout(limit, self.sink.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(WsError::WriteBufferFull(_))) => {
                tracing::info!(session = %self.id, "client does not read; write buffer full");
                self.machine.on_stalled();
            }
            Ok(Err(e)) => tracing::debug!(session = %self.id, error = %e, "send failed"),
            Err(_) => {
                tracing::info!(session = %self.id, "client stopped reading; dropping the session");
                self.machine.on_stalled();
            }
        }
    }

    async fn error(&mut self, code: &'static str, message: String, request: Option<&'static str>) {
        self.send(ServerMessage::Error {
            code,
            message,
            request,
        })
        .await;
    }

    /// Sends the reason: an `error` with details, then the close frame. [`Session::linger`]
    /// then waits for the client's side of the close.
    async fn close(&mut self, reason: CloseReason, detail: Option<String>) {
        self.state
            .metrics
            .closes
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
        tracing::debug!(session = %self.id, code = reason.code(), reason = reason.label(), "closing");
        if let Some(detail) = detail {
            self.error(reason.label(), detail, None).await;
        }
        self.send_frame(Message::Close(Some(CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.label().into(),
        })))
        .await;
    }

    /// After our close frame, for at most [`CLOSE_LINGER`]: wait for the client's close
    /// frame, discarding what comes before it. If the WebSocket stream cannot be read any
    /// more (the close was for a read error: an oversized or fragmented-oversized message,
    /// invalid UTF-8, a protocol violation; tokio-tungstenite ends the stream after its first
    /// error), end our byte stream (FIN, after the close frame) and read and discard raw
    /// bytes until the client closes its side. Dropping the socket with the rest of an
    /// oversized message unread would answer with a reset instead, which is what made a
    /// fragmented oversized message sometimes end without its 4003.
    async fn linger(self) {
        if self.machine.stalled() {
            // It does not read: nothing it could see, and waiting would only hold the slot.
            return;
        }
        let deadline = tokio::time::Instant::now() + CLOSE_LINGER;
        let Session {
            sink, mut stream, ..
        } = self;
        let answered = tokio::time::timeout_at(deadline, async {
            while let Some(frame) = stream.next().await {
                if let Ok(Message::Close(_)) = frame {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        let Ok(mut ws) = sink.reunite(stream) else {
            return;
        };
        if answered {
            // The closing handshake is complete and the client sends nothing after its close
            // frame: dropping now is a clean TCP close (RFC 6455 §7.1.1: the server closes
            // first).
            let _ = tokio::time::timeout_at(deadline, ws.close(None)).await;
            return;
        }
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let io = ws.get_mut();
        let _ = tokio::time::timeout_at(deadline, io.shutdown()).await;
        // On the heap, only while lingering: an array here would be part of every session's
        // future (the task holds the largest state for the whole session), 8 KiB per idle
        // session (issue 29 #15: per-session memory had doubled).
        let mut discard = vec![0u8; 8 * 1024];
        let _ = tokio::time::timeout_at(deadline, async {
            while let Ok(n) = io.read(&mut discard).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        tokens: &mut UpgradeTokens,
    ) -> Next {
        if let Some(Err(e)) = &frame
            && !matches!(
                e,
                WsError::Capacity(_) | WsError::Utf8(_) | WsError::Protocol(_)
            )
        {
            tracing::debug!(session = %self.id, error = %e, "read failed");
        }
        let parsed = match self.machine.on_read(frame, tokio::time::Instant::now()) {
            Read::Continue => return Next::Continue,
            Read::Message(m) => m,
            Read::Close { close, invalid } => {
                if invalid {
                    self.state.metrics.message("in", "invalid");
                }
                return Next::Close(close.reason, close.detail);
            }
        };
        self.state.metrics.message("in", parsed.kind());
        if self.joined.is_none() {
            return match parsed {
                ClientMessage::Join {
                    token,
                    room,
                    resume,
                } => {
                    // Boxed, like `refresh` and `moderate`: a session's task holds its
                    // largest state for its whole life, so the rare big steps live on the
                    // heap only while they run (issue 29 #15, `size_probe`).
                    Box::pin(self.join(token, room, resume, tokens)).await
                }
                other => {
                    let close = Machine::before_join(other.kind());
                    Next::Close(close.reason, close.detail)
                }
            };
        }
        self.on_joined_message(parsed).await
    }

    async fn join(
        &mut self,
        token: Option<String>,
        room: String,
        resume: Option<crate::config::Secret>,
        tokens: &mut UpgradeTokens,
    ) -> Next {
        let room = match RoomName::parse(&room) {
            Ok(r) => r,
            Err(e) => {
                let close = Machine::bad_room(e);
                return Next::Close(close.reason, close.detail);
            }
        };
        if let Err(limited) = self
            .state
            .auth_failure_limiter
            .check(&AddrKey::new(self.peer), Instant::now())
        {
            tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), reason = CloseReason::TooManyAuthFailures.label(), "join refused");
            let close = Machine::address_locked_out(limited.retry_after);
            return Next::Close(close.reason, close.detail);
        }
        let allow_query = self.state.config.auth.allow_query_token;
        let (header, query) = (tokens.header.take(), tokens.query.take());
        // A query token was sent, but it is not what decided (disabled, or another came first).
        let query_sent = query.is_some();
        let result = match Machine::join_token(token, header, query, allow_query) {
            Ok(token) => self.state.verifier.verify(&token, &room, unix_now()).await,
            Err(_) => Err(AuthError::Missing),
        };
        let grant = match result {
            Ok(grant) => grant,
            Err(e) => {
                self.record_auth_failure(&e);
                tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), reason = e.reason(), "join refused");
                let close = Machine::token_refused(e, query_sent);
                return Next::Close(close.reason, close.detail);
            }
        };
        // The platform may lower the grant, or refuse. Not counted against the address: the
        // token was valid, so this is no token guessing (and a failing hook is not the user's
        // fault).
        let (mut grant, ceiling) = match &self.state.affiliation {
            None => (grant, Ceiling::default()),
            Some(hook) => match hook.admit(grant.clone(), &self.state.metrics).await {
                Ok(admitted) => admitted,
                Err(e) => {
                    self.count_auth_failure(&e);
                    tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = grant.identity.as_str(), room = grant.room.as_str(), reason = e.reason(), "join refused");
                    let close = Machine::token_refused(e, false);
                    return Next::Close(close.reason, close.detail);
                }
            },
        };
        let Some(slot) = self.state.reserve_user(&grant) else {
            tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = grant.identity.as_str(), room = grant.room.as_str(), reason = CloseReason::TooManySessions.label(), "join refused");
            let close = Machine::too_many_sessions(self.state.config.limits.max_sessions_per_user);
            return Next::Close(close.reason, close.detail);
        };
        let configured = self.state.config.rooms.policy_for(grant.room.as_str());
        // The media link first, so `joined.media` says whether media can flow right now.
        let (link, failure) = match &self.state.relay {
            None => (
                None,
                Some((
                    "media_unavailable",
                    "no media server is configured on this proxy".to_owned(),
                )),
            ),
            Some(relay) => {
                let started = Instant::now();
                let result = relay
                    .join(JoinRequest {
                        session: self.id,
                        grant: grant.clone(),
                        policy: configured,
                        resume,
                    })
                    .await;
                self.state
                    .metrics
                    .relay_join_seconds
                    .observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(link) => (Some(link), None),
                    Err(e) => match crate::close::join_refused(&e) {
                        Some(close) => {
                            tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = grant.identity.as_str(), room = grant.room.as_str(), reason = close.label(), "join refused");
                            // The media server's message (each of these displays as it).
                            return Next::Close(close, Some(e.to_string()));
                        }
                        None => (None, Some((e.code(), e.to_string()))),
                    },
                }
            }
        };
        // No media server to ask: the room's stored policy (kept at rtcd) is unknown, so this
        // proxy's configured one decides who may not come in (docs/protocol.md section 5b). A
        // guest of a room configured without guests is refused at the door, as rtcd would.
        let unreachable = failure
            .as_ref()
            .is_some_and(|(code, _)| *code == "media_unavailable");
        if unreachable
            && let Some(close) =
                Machine::guest_refused_offline(grant.role, configured.guests_allowed)
        {
            tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = grant.identity.as_str(), room = grant.room.as_str(), reason = close.reason.label(), "join refused");
            return Next::Close(close.reason, close.detail);
        }
        // Only now: a join the media server refused (banned, revoked, no guests) returned above
        // with its `join refused` line and never counted as a session.
        tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = grant.identity.as_str(), room = grant.room.as_str(), kid = grant.key_id.as_str(), role = grant.role.as_str(), "joined");
        self.state.metrics.sessions.inc();
        let mut link = link;
        let waiting = link.as_mut().and_then(|l| l.waiting.take());
        let resume_token = link.as_mut().and_then(|l| l.resume_token.take());
        let resumed = link.as_mut().and_then(|l| l.resumed.take());
        let e2ee = link
            .as_ref()
            .map_or(configured.e2ee.unwrap_or(false), |l| l.e2ee);
        let room = grant.room.clone();
        // The session as the media server has it, when this join resumed one.
        let resume = Resume::on_join(&mut grant, resume_token, resumed);
        if resume.resuming() {
            tracing::info!(target: "audit", session = &*self.id.to_string(), identity = grant.identity.as_str(), room = room.as_str(), "session resumed after a lost connection");
        }
        self.machine.on_joined(grant.expires_at, waiting.is_none());
        self.joined = Some(Joined {
            grant,
            link,
            offer_sent: None,
            _slot: slot,
            media_closed: None,
            turn_refresh_at: None,
            ceiling,
            resume,
            e2ee,
        });
        match waiting {
            Some(w) => {
                tracing::info!(target: "audit", session = &*self.id.to_string(), reason = &*w.reason.to_string(), "waiting to enter");
                self.send(ServerMessage::Waiting {
                    room,
                    reason: w.reason,
                    timeout_seconds: w.timeout_seconds,
                })
                .await;
            }
            None => self.enter(failure).await,
        }
        Next::Continue
    }

    /// Sends `joined` (with TURN credentials, scheduling their renewal), then the reason media
    /// is unavailable if it is.
    async fn enter(&mut self, failure: Option<(&'static str, String)>) {
        let Some(joined) = self.joined.as_mut() else {
            return;
        };
        let grant = joined.grant.clone();
        let media = joined.link.is_some();
        let turn = self
            .state
            .turn
            .as_ref()
            .map(|t| t.issue(grant.identity.as_str(), unix_now()));
        joined.turn_refresh_at = self
            .state
            .turn
            .as_ref()
            .map(|t| tokio::time::Instant::now() + t.refresh_after());
        let (ice_servers, ice_servers_expires_at) = match turn {
            Some(issued) => (Some(issued.servers), Some(issued.expires_at)),
            None => (None, None),
        };
        let resume = joined.resume.joined();
        let e2ee = joined.e2ee;
        self.send(ServerMessage::Joined {
            session_id: self.id,
            room: grant.room,
            identity: grant.identity,
            name: grant.name,
            tenant: grant.tenant,
            role: grant.role,
            permissions: grant.permissions,
            expires_at: grant.expires_at,
            media,
            ice_servers,
            ice_servers_expires_at,
            resume_token: resume.resume_token,
            resumed: resume.resumed,
            participants: resume.participants,
            e2ee,
        })
        .await;
        if let Some((code, message)) = failure {
            self.error(code, message, Some("join")).await;
        }
    }

    /// Sends fresh TURN credentials (`ice_servers`) and schedules the next ones.
    async fn refresh_turn(&mut self) -> Next {
        let (Some(turn), Some(joined)) = (self.state.turn.clone(), self.joined.as_mut()) else {
            return Next::Continue;
        };
        let issued = turn.issue(joined.grant.identity.as_str(), unix_now());
        joined.turn_refresh_at = Some(tokio::time::Instant::now() + turn.refresh_after());
        tracing::debug!(session = %self.id, expires_at = issued.expires_at, "TURN credentials re-issued");
        self.send(ServerMessage::IceServers {
            ice_servers: issued.servers,
            expires_at: issued.expires_at,
        })
        .await;
        Next::Continue
    }

    /// Counts a refused `join` token against the peer's address and in the metrics.
    fn record_auth_failure(&self, e: &AuthError) {
        // Refused once the address's budget is spent: `join` checks it before verifying.
        let _ = self
            .state
            .auth_failure_limiter
            .take(&AddrKey::new(self.peer), Instant::now());
        self.count_auth_failure(e);
    }

    /// Counts a refused token in the metrics only (refresh refusals are limited per session).
    fn count_auth_failure(&self, e: &AuthError) {
        self.state
            .metrics
            .auth_failures
            .get_or_create(&ReasonLabel { reason: e.reason() })
            .inc();
    }

    async fn on_joined_message(&mut self, message: ClientMessage) -> Next {
        let perms = self.joined.as_ref().expect("joined").grant.permissions;
        match message::step(&self.machine, message, &perms) {
            Step::Reply(reply) => self.send(reply).await,
            Step::Refused { error, kind } => {
                tracing::info!(session = %self.id, code = message::policy_code(&error), error = %error, "message refused by policy");
                self.send(message::refusal(&error, kind)).await;
            }
            Step::Forward { command, kind } => self.forward(command, Some(kind)).await,
            Step::Refresh(token) => return Box::pin(self.refresh(token)).await,
            Step::Moderate(request) => return Box::pin(self.moderate(request)).await,
            Step::Close(close) => return Next::Close(close.reason, close.detail),
        }
        Next::Continue
    }

    /// A moderator's action on their own room ([`crate::rooms::perform`], like the API's);
    /// [`moderation`] decides, this carries it out.
    async fn moderate(&mut self, request: moderation::Request) -> Next {
        let grant = self.joined.as_ref().expect("joined").grant.clone();
        let config = self.state.config.clone();
        let rules = moderation::Rules {
            default_ban_seconds: config.api.default_ban_seconds,
            permissions: &config.auth.permissions,
            configured: config.rooms.policy_for(grant.room.as_str()),
        };
        let (action, identity) = (request.action, request.identity.clone());
        let permitted = match moderation::decide(request, &grant, self.id, rules) {
            Ok(permitted) => permitted,
            Err(e) => {
                if let ModerationError::NotModerator(_) = e {
                    let actor = moderation::actor(&grant, self.id);
                    tracing::info!(target: "audit", actor = actor.describe().as_str(), action = action.as_str(), room = grant.room.as_str(), identity = identity.as_deref().unwrap_or(""), outcome = "forbidden", "room action");
                }
                self.send(e.message()).await;
                return Next::Continue;
            }
        };
        let Some(relay) = self.state.relay.clone() else {
            self.send(moderation::unavailable(moderation::NO_MEDIA_SERVER))
                .await;
            return Next::Continue;
        };
        let Some(control) = relay.rooms() else {
            self.send(moderation::unavailable(moderation::NO_ROOM_ADMINISTRATION))
                .await;
            return Next::Continue;
        };
        let result = crate::rooms::perform(
            control,
            &permitted.actor,
            &grant.room,
            permitted.room_action,
            config.api.allow_remote_unmute,
        )
        .await;
        self.send(moderation::answer(
            permitted.action,
            permitted.target,
            result,
        ))
        .await;
        Next::Continue
    }

    /// Hands an authorized command to the relay, or says there is no media server.
    async fn forward(&mut self, command: RelayCommand, kind: Option<&'static str>) {
        let sender = self
            .joined
            .as_ref()
            .and_then(|j| j.link.as_ref())
            .map(|l| l.commands.clone());
        match sender {
            Some(tx) => {
                if matches!(command, RelayCommand::Offer { .. })
                    && let Some(j) = self.joined.as_mut()
                {
                    j.offer_sent = Some(Instant::now());
                }
                if tx.send(command).await.is_err() {
                    tracing::debug!(session = %self.id, "relay stream already ended");
                }
            }
            None => {
                if let Some(kind) = kind {
                    self.error(
                        "media_unavailable",
                        "this session has no media server".into(),
                        Some(kind),
                    )
                    .await;
                }
            }
        }
    }

    async fn refresh(&mut self, token: String) -> Next {
        let current = self.joined.as_ref().expect("joined").grant.clone();
        match self
            .state
            .verifier
            .verify_refresh(&current, &token, unix_now())
            .await
        {
            Ok(grant) => {
                // Revoked by what this proxy knows (cluster mode): closed at once, 4118.
                if let Some(refused) = self
                    .state
                    .relay
                    .as_ref()
                    .and_then(|r| r.refused_token(&grant))
                {
                    tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = grant.identity.as_str(), room = grant.room.as_str(), reason = "token_revoked", "refresh refused");
                    return Next::Close(
                        CloseReason::Auth(AuthError::Revoked),
                        Some(refused.to_string()),
                    );
                }
                // "verified", not "refreshed": revocations live at the media server, which
                // checks the token next and closes the session (4118) if it is revoked.
                tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = grant.identity.as_str(), room = grant.room.as_str(), kid = grant.key_id.as_str(), role = grant.role.as_str(), expires_at = grant.expires_at, "refresh token verified");
                // Held to what the affiliation hook allowed at join.
                let Some(j) = self.joined.as_ref() else {
                    return Next::Continue;
                };
                let held = j.ceiling.apply(grant, &self.state.config.auth.permissions);
                // A live change by the platform or a moderator outranks the token's claims.
                let (grant, update) = j.resume.on_refreshed(&current, held);
                let (expires_at, permissions) = (grant.expires_at, grant.permissions);
                if let Some(j) = self.joined.as_mut() {
                    j.grant = grant.clone();
                    self.machine.on_refreshed(expires_at);
                }
                self.forward(
                    RelayCommand::Token {
                        issued_at: grant.issued_at,
                        token_id: grant.token_id.clone(),
                        expires_at: grant.expires_at,
                    },
                    None,
                )
                .await;
                if update {
                    self.forward(RelayCommand::UpdateGrant(Box::new(grant)), None)
                        .await;
                }
                self.send(ServerMessage::Refreshed {
                    expires_at,
                    permissions,
                })
                .await;
            }
            Err(e) => {
                self.count_auth_failure(&e);
                let (refused, close) = self.machine.on_refresh_refused(&e);
                tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = current.identity.as_str(), room = current.room.as_str(), reason = e.reason(), refused, "refresh refused");
                // The current token stays valid until it expires; the client may try again.
                self.error(e.reason(), e.to_string(), Some("refresh")).await;
                if let Some(close) = close {
                    tracing::info!(target: "audit", session = &*self.id.to_string(), peer = &*self.peer.to_string(), identity = current.identity.as_str(), reason = close.reason.label(), "session closed after refused refreshes");
                    return Next::Close(close.reason, close.detail);
                }
            }
        }
        Next::Continue
    }

    async fn on_relay_event(&mut self, event: Option<RelayEvent>) -> Next {
        let message = match event::classify(event) {
            Event::Closed { end, reason } => return self.media_closed(end, reason).await,
            Event::Admitted(resume_token, e2ee) => {
                let waited = match self.joined.as_mut() {
                    Some(j) => {
                        j.resume.on_admitted(resume_token);
                        j.e2ee = e2ee;
                        let waited = self.machine.phase() == Phase::Waiting;
                        self.machine.on_admitted();
                        waited
                    }
                    None => false,
                };
                if waited {
                    tracing::info!(target: "audit", session = &*self.id.to_string(), "admitted after waiting");
                    self.enter(None).await;
                }
                return Next::Continue;
            }
            Event::Answer(sdp) => {
                if let Some(sent) = self.joined.as_mut().and_then(|j| j.offer_sent.take()) {
                    self.state
                        .metrics
                        .relay_answer_seconds
                        .observe(sent.elapsed().as_secs_f64());
                }
                ServerMessage::Answer { sdp }
            }
            Event::PermissionsChanged {
                role,
                mut permissions,
            } => {
                if let Some(j) = self.joined.as_mut() {
                    tracing::info!(target: "audit", session = &*self.id.to_string(), identity = j.grant.identity.as_str(), room = j.grant.room.as_str(), role = role.as_str(), "permissions changed by the platform or a moderator");
                    j.resume
                        .on_permissions_changed(&mut j.grant, role, permissions);
                    // What the session holds now (`record` kept from the token).
                    permissions = j.grant.permissions;
                }
                ServerMessage::PermissionsChanged { role, permissions }
            }
            Event::Send(message) => message,
        };
        self.send(message).await;
        Next::Continue
    }
}

impl Session {
    /// The media server ended this session's stream: `end` is its typed `SessionClosed`
    /// reason and `reason` the prose, `None` when the stream ended without one (the media
    /// server died or became unreachable). [`Machine::on_media_closed`] decides the close.
    async fn media_closed(&mut self, end: MediaEnd, reason: Option<String>) -> Next {
        if let Some(j) = self.joined.as_mut() {
            j.link = None;
            j.media_closed = Some(reason.clone().unwrap_or_else(|| "stream lost".into()));
        }
        let (message, close) = Machine::on_media_closed(end, reason.as_deref());
        if let Some(message) = message {
            self.send(message).await;
        }
        Next::Close(close.reason, close.detail)
    }
}

/// The next relay event, or pending forever when there is no link.
async fn next_event(joined: &mut Option<Joined>) -> Option<RelayEvent> {
    match joined.as_mut().and_then(|j| j.link.as_mut()) {
        Some(link) => link.events.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod size_probe {
    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, E, F: std::future::Future>(
        _: impl FnOnce(A, B, C, D, E) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// Issue 29 #15: a session's task holds its future's largest state for the session's whole
    /// life, so that size is per-session memory of every idle session. An 8 KiB array held
    /// across an await in `linger` had doubled it (11 KiB in this build); rare big steps
    /// (`join`, `refresh`, `moderate`, the linger buffer) live on the heap only while they
    /// run. So do `serve`'s handlers and the session's end: inline, a send with its timeout
    /// or a relay event's handling made every idle task 3.5 KiB (2 KiB boxed). A regression
    /// here shows as proxy RSS per idle session in the proxy benchmark.
    #[test]
    fn an_idle_session_future_stays_small() {
        let size = future_size(super::run);
        eprintln!("session::run future: {size} bytes");
        assert!(size <= 2560, "session::run's future is {size} bytes");
    }
}

#[cfg(test)]
mod admission {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::ProxyState;
    use crate::auth::Verifier;
    use crate::close::CloseReason;
    use crate::config::{AuthConfig, Config, KeyConfig, Secret};
    use crate::health::Health;
    use crate::metrics::Metrics;

    fn proxy(max_connections: usize, connection_burst: u32) -> (Arc<ProxyState>, Arc<Health>) {
        let auth = AuthConfig {
            issuers: vec!["app".into()],
            audiences: vec!["proxy".into()],
            keys: vec![KeyConfig {
                kid: "k1".into(),
                algorithms: vec!["HS256".into()],
                secret: Secret::new("0123456789abcdef0123456789abcdef-test"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut config = Config {
            auth,
            ..Default::default()
        };
        config.limits.max_connections = max_connections;
        config.limits.connection_burst = connection_burst;
        config.limits.connections_per_minute = 1;
        let verifier = Arc::new(Verifier::new(&config.auth, 8192).unwrap());
        let health = Arc::new(Health::default());
        let state = ProxyState::new(
            Arc::new(config),
            verifier,
            None,
            Metrics::new(),
            health.clone(),
            CancellationToken::new(),
        );
        (Arc::new(state), health)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn refused(state: &Arc<ProxyState>, from: IpAddr) -> Option<u16> {
        state.admit(from).err().map(|reason| reason.code())
    }

    #[test]
    fn a_proxy_not_ready_or_draining_closes_1001() {
        let (state, health) = proxy(10, 10);
        assert_eq!(refused(&state, ip(1)), Some(1001), "starting");
        health.set_ready();
        assert_eq!(refused(&state, ip(1)), None);
        health.set_draining();
        assert_eq!(state.admit(ip(1)).err(), Some(CloseReason::GoingAway));
    }

    #[test]
    fn over_the_connection_cap_or_an_addresss_rate_closes_4005() {
        // The global cap: one open connection at most, from any address.
        let (state, health) = proxy(1, 10);
        health.set_ready();
        let first = state.admit(ip(1)).expect("admitted");
        assert_eq!(refused(&state, ip(2)), Some(4005));
        drop(first);
        assert_eq!(refused(&state, ip(2)), None, "its slot was released");
        // The per-address rate: a burst of 2, then 1 a minute, per address.
        let (state, health) = proxy(100, 2);
        health.set_ready();
        let _slots = [state.admit(ip(1)).ok(), state.admit(ip(1)).ok()];
        assert_eq!(refused(&state, ip(1)), Some(4005));
        assert_eq!(
            state.admit(ip(1)).err(),
            Some(CloseReason::TooManyConnections)
        );
        assert_eq!(refused(&state, ip(2)), None, "another address has its own");
    }
}

//! The session actor: owns one peer connection and serialises everything that touches it
//! (client commands, webrtc-rs events, changes of the call's published tracks).
//!
//! Negotiation: the client offers to publish; the actor offers when its outgoing track set
//! changes. At most one actor offer is outstanding; further changes set `needs_offer` and are
//! offered after the answer. Glare: rtcd is the impolite peer (webrtc-rs 0.17 cannot roll back
//! a local offer): a client offer that collides with rtcd's outstanding offer is refused with
//! FAILED_PRECONDITION ("glare") and rtcd's offer stands; the client rolls back (a browser's
//! setRemoteDescription does it implicitly), answers, and offers again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use super::forwarder::{self, PublishedTrack, TrackSource};
use super::{
    CallLink, CallNotice, JoinRequest, SessionId, SfuError, SfuInner, TrackKind, TrackSet, UserId,
    peer, tenant_label,
};
use crate::metrics::{KindLabels, ReasonLabels};

/// Commands from signaling. Sent through [`SessionHandle`].
#[derive(Debug)]
pub enum SessionCommand {
    /// The client's SDP offer.
    Offer(String),
    /// The client's answer to our offer.
    Answer(String),
    /// A trickled client candidate.
    Candidate(RTCIceCandidateInit),
    /// Mute or unmute the session's tracks of a kind.
    Mute {
        /// Which kind.
        kind: TrackKind,
        /// Drop (true) or forward (false).
        muted: bool,
    },
    /// Screen share on (with the MediaStreamTrack id to expect) or off.
    ScreenShare {
        /// On or off.
        on: bool,
        /// The screen track's id (when on).
        track_id: String,
    },
    /// The user leaves.
    Leave,
}

/// A track of another session, as shown to this session.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    /// The publishing session.
    pub session: SessionId,
    /// The publishing user.
    pub user: UserId,
    /// The publishing session's display name.
    pub display_name: String,
    /// What it is.
    pub kind: TrackKind,
    /// Its msid track id in our SDP.
    pub track_id: String,
}

/// Events for signaling to relay to the client.
#[derive(Debug)]
pub enum SessionEvent {
    /// Answer to the client's offer.
    Answer(String),
    /// Our offer (renegotiation).
    Offer(String),
    /// A trickled candidate of ours.
    Candidate(RTCIceCandidateInit),
    /// A track the client will now receive.
    TrackPublished(TrackInfo),
    /// A track the client no longer receives.
    TrackRemoved(TrackInfo),
    /// Another session started or stopped speaking.
    VoiceActivity {
        /// Who.
        session: SessionId,
        /// Their user.
        user: UserId,
        /// Started (true) or stopped.
        speaking: bool,
    },
    /// Another session muted or unmuted one of its tracks.
    MuteChanged {
        /// Who.
        session: SessionId,
        /// Their user.
        user: UserId,
        /// Which track kind.
        kind: TrackKind,
        /// Muted (true) or unmuted.
        muted: bool,
    },
    /// A recoverable error about one command.
    Error(SfuError),
    /// The session ended; nothing follows.
    Closed {
        /// Why.
        reason: String,
    },
}

/// Signaling's handle to a session. Dropping it ends the session ("disconnected").
pub struct SessionHandle {
    commands: mpsc::Sender<SessionCommand>,
    _alive: oneshot::Sender<()>,
}

impl SessionHandle {
    /// Queues a command. Waits if the actor is behind (backpressure on this session's stream only).
    pub async fn send(&self, command: SessionCommand) -> Result<(), SfuError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SfuError::Closed)
    }
}

/// What webrtc-rs callbacks enqueue. Bounded; on overflow the event is dropped and logged
/// (state changes are re-read from the peer connection on the next event, candidates are
/// redundant with the ones already sent).
enum PeerEvent {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Track(Arc<TrackRemote>),
}

struct Subscription {
    track: Arc<PublishedTrack>,
    sender: Arc<RTCRtpSender>,
    rtcp: CancellationToken,
}

struct Actor {
    inner: Arc<SfuInner>,
    req: JoinRequest,
    link: CallLink,
    pc: Arc<RTCPeerConnection>,
    events: mpsc::Sender<SessionEvent>,
    published: Vec<Arc<PublishedTrack>>,
    subscribed: HashMap<String, Subscription>,
    pending_keyframes: Vec<Arc<PublishedTrack>>,
    pending_candidates: Vec<RTCIceCandidateInit>,
    muted: HashSet<TrackKind>,
    screen_track_id: Option<String>,
    offer_outstanding: bool,
    needs_offer: bool,
    /// rtcd offers only after the client's first offer was answered: the client's first offer
    /// sets up the transport (and the DTLS/ICE roles), so the common join path has no glare.
    client_offered: bool,
    created: Instant,
    connected: bool,
    track_seq: u32,
    /// Set when the event queue to signaling overflowed; the session then ends.
    backlog: bool,
}

pub(crate) async fn spawn(
    inner: Arc<SfuInner>,
    req: JoinRequest,
    link: CallLink,
    close: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
) -> Result<(SessionHandle, mpsc::Receiver<SessionEvent>), SfuError> {
    let pc = inner.peers.create().await?;
    let (peer_tx, peer_rx) = mpsc::channel(256);
    install_handlers(&pc, peer_tx);
    let (cmd_tx, cmd_rx) = mpsc::channel(32);
    let (event_tx, event_rx) = mpsc::channel(256);
    let (alive_tx, alive_rx) = oneshot::channel();
    inner
        .metrics
        .sfu
        .sessions
        .get_or_create(&tenant_label(&req.tenant))
        .inc();
    let actor = Actor {
        inner,
        req,
        link,
        pc,
        events: event_tx,
        published: Vec::new(),
        subscribed: HashMap::new(),
        pending_keyframes: Vec::new(),
        pending_candidates: Vec::new(),
        muted: HashSet::new(),
        screen_track_id: None,
        offer_outstanding: false,
        needs_offer: false,
        client_offered: false,
        created: Instant::now(),
        connected: false,
        track_seq: 0,
        backlog: false,
    };
    tokio::spawn(actor.run(cmd_rx, peer_rx, alive_rx, close, reason));
    Ok((
        SessionHandle {
            commands: cmd_tx,
            _alive: alive_tx,
        },
        event_rx,
    ))
}

fn install_handlers(pc: &Arc<RTCPeerConnection>, tx: mpsc::Sender<PeerEvent>) {
    let enqueue = move |tx: &mpsc::Sender<PeerEvent>, ev: PeerEvent| {
        if tx.try_send(ev).is_err() {
            tracing::warn!("peer event queue full or closed; event dropped");
        }
    };
    let t = tx.clone();
    pc.on_ice_candidate(Box::new(move |c| {
        if let Some(init) = c.and_then(|c| c.to_json().ok()) {
            enqueue(&t, PeerEvent::Candidate(init));
        }
        Box::pin(async {})
    }));
    let t = tx.clone();
    pc.on_peer_connection_state_change(Box::new(move |s| {
        enqueue(&t, PeerEvent::State(s));
        Box::pin(async {})
    }));
    pc.on_track(Box::new(move |track, _receiver, _transceiver| {
        enqueue(&tx, PeerEvent::Track(track));
        Box::pin(async {})
    }));
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<SessionCommand>,
        mut peer_events: mpsc::Receiver<PeerEvent>,
        mut alive: oneshot::Receiver<()>,
        close: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
    ) {
        let mut tracks = self.link.tracks.subscribe();
        let mut notices = self.link.notices.subscribe();
        tracing::info!(client = %self.req.tenant, call = %self.req.call, session = %self.req.session, "session joined");
        let initial = tracks.borrow_and_update().clone();
        self.reconcile(initial).await;
        let why: String = loop {
            if self.backlog {
                break "signaling backlog".into();
            }
            tokio::select! {
                _ = close.cancelled() => {
                    let why = reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    break why.unwrap_or_else(|| "closed".into());
                }
                _ = &mut alive => break "disconnected".into(),
                cmd = commands.recv() => match cmd {
                    None => break "disconnected".into(),
                    Some(SessionCommand::Leave) => break "leave".into(),
                    Some(cmd) => {
                        if let Err(e) = self.command(cmd).await {
                            self.count_error(&e);
                            self.emit(SessionEvent::Error(e));
                        }
                    }
                },
                ev = peer_events.recv() => match ev {
                    None => break "peer connection closed".into(),
                    Some(ev) => if let Some(end) = self.peer_event(ev).await { break end },
                },
                changed = tracks.changed() => {
                    if changed.is_err() { break "call ended".into() }
                    let set = tracks.borrow_and_update().clone();
                    self.reconcile(set).await;
                }
                notice = notices.recv() => match notice {
                    Ok(CallNotice::Voice { session, user, speaking }) => {
                        if session != self.req.session && self.req.permissions.subscribe {
                            self.emit(SessionEvent::VoiceActivity { session, user, speaking });
                        }
                    }
                    Ok(CallNotice::Mute { session, user, kind, muted }) => {
                        if session != self.req.session && self.req.permissions.subscribe {
                            self.emit(SessionEvent::MuteChanged { session, user, kind, muted });
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break "call ended".into(),
                },
            }
        };
        self.finish(why).await;
    }

    async fn command(&mut self, cmd: SessionCommand) -> Result<(), SfuError> {
        match cmd {
            SessionCommand::Offer(sdp) => {
                self.check_sdp(&sdp)?;
                if self.offer_outstanding {
                    return Err(SfuError::OutOfOrder(
                        "glare: rtcd's offer is outstanding; roll back, answer it, then offer again"
                            .into(),
                    ));
                }
                let answer = peer::answer_offer(&self.pc, sdp).await?;
                self.client_offered = true;
                self.flush_candidates().await;
                self.emit(SessionEvent::Answer(answer));
                self.maybe_offer().await
            }
            SessionCommand::Answer(sdp) => {
                self.check_sdp(&sdp)?;
                if !self.offer_outstanding {
                    return Err(SfuError::OutOfOrder(
                        "answer without an outstanding offer".into(),
                    ));
                }
                peer::apply_answer(&self.pc, sdp).await?;
                self.offer_outstanding = false;
                self.flush_candidates().await;
                // The new subscribers can decode only from a keyframe.
                for track in std::mem::take(&mut self.pending_keyframes) {
                    track.request_keyframe().await;
                }
                self.maybe_offer().await
            }
            SessionCommand::Candidate(c) => {
                if c.candidate.len() > 1024 {
                    return Err(SfuError::InvalidArgument("candidate too long".into()));
                }
                if peer::has_remote_description(&self.pc).await {
                    peer::add_candidate(&self.pc, c).await
                } else if self.pending_candidates.len() < 64 {
                    self.pending_candidates.push(c);
                    Ok(())
                } else {
                    Err(SfuError::LimitReached("candidates before the first offer"))
                }
            }
            SessionCommand::Mute { kind, muted } => {
                if muted {
                    self.muted.insert(kind);
                } else {
                    self.muted.remove(&kind);
                }
                for t in self.published.iter().filter(|t| t.kind == kind) {
                    t.muted.store(muted, std::sync::atomic::Ordering::Relaxed);
                }
                // No receiver (alone in the call) is not an error.
                let _ = self.link.notices.send(CallNotice::Mute {
                    session: self.req.session.clone(),
                    user: self.req.user.clone(),
                    kind,
                    muted,
                });
                Ok(())
            }
            SessionCommand::ScreenShare { on, track_id } => {
                if on {
                    if !self.req.permissions.publish_screen {
                        return Err(SfuError::InvalidArgument(
                            "this session may not publish a screen share".into(),
                        ));
                    }
                    self.screen_track_id = Some(track_id);
                } else {
                    self.screen_track_id = None;
                    self.unpublish(|t| t.kind == TrackKind::Screen);
                }
                Ok(())
            }
            SessionCommand::Leave => Ok(()),
        }
    }

    /// Queues an event for signaling without waiting. Overflow policy: the queue (256) only
    /// fills when the proxy stops reading its stream; waiting would pin this actor (and its
    /// peer connection) forever, so the session ends with reason "signaling backlog" instead.
    fn emit(&mut self, event: SessionEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            self.backlog = true;
        }
    }

    fn check_sdp(&self, sdp: &str) -> Result<(), SfuError> {
        if sdp.len() > self.inner.config.max_sdp_bytes {
            return Err(SfuError::InvalidArgument(format!(
                "SDP is {} bytes; the limit is {}",
                sdp.len(),
                self.inner.config.max_sdp_bytes
            )));
        }
        Ok(())
    }

    async fn flush_candidates(&mut self) {
        for c in std::mem::take(&mut self.pending_candidates) {
            if let Err(e) = peer::add_candidate(&self.pc, c).await {
                self.emit(SessionEvent::Error(e));
            }
        }
    }

    async fn maybe_offer(&mut self) -> Result<(), SfuError> {
        if !self.needs_offer || self.offer_outstanding || !self.client_offered {
            return Ok(());
        }
        if self.pc.signaling_state()
            != webrtc::peer_connection::signaling_state::RTCSignalingState::Stable
        {
            return Ok(());
        }
        let sdp = peer::create_offer(&self.pc).await?;
        self.needs_offer = false;
        self.offer_outstanding = true;
        self.emit(SessionEvent::Offer(sdp));
        Ok(())
    }

    async fn peer_event(&mut self, ev: PeerEvent) -> Option<String> {
        match ev {
            PeerEvent::Candidate(c) => {
                self.emit(SessionEvent::Candidate(c));
            }
            PeerEvent::State(state) => match state {
                RTCPeerConnectionState::Connected if !self.connected => {
                    self.connected = true;
                    self.inner
                        .metrics
                        .sfu
                        .connect_seconds
                        .observe(self.created.elapsed().as_secs_f64());
                }
                RTCPeerConnectionState::Failed => return Some("peer connection failed".into()),
                RTCPeerConnectionState::Closed => return Some("peer connection closed".into()),
                _ => {}
            },
            PeerEvent::Track(remote) => self.track_arrived(remote).await,
        }
        None
    }

    async fn track_arrived(&mut self, remote: Arc<TrackRemote>) {
        let kind = match remote.kind() {
            RTPCodecType::Audio => TrackKind::Audio,
            _ if self.screen_track_id.as_deref() == Some(remote.id().as_str()) => TrackKind::Screen,
            _ => TrackKind::Video,
        };
        let refusal = if !self.req.permissions.may_publish(kind) {
            Some(SfuError::InvalidArgument(format!(
                "this session may not publish {}",
                kind.as_str()
            )))
        } else if self.published.len() >= self.inner.config.max_tracks_per_session {
            Some(SfuError::LimitReached("tracks per session"))
        } else {
            None
        };
        if let Some(err) = refusal {
            let reason = match err {
                SfuError::LimitReached(_) => "over_limit",
                _ => "not_permitted",
            };
            tracing::info!(client = %self.req.tenant, session = %self.req.session, kind = kind.as_str(), error = %err, "track refused");
            // Read and discard so the receiver's buffers and reports keep working; count it.
            let dropped = self
                .inner
                .metrics
                .sfu
                .dropped_packets
                .get_or_create(&ReasonLabels {
                    client_id: self.req.tenant.as_str().to_owned(),
                    reason,
                })
                .clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1500];
                while remote.read(&mut buf).await.is_ok() {
                    dropped.inc();
                }
            });
            self.count_error(&err);
            self.emit(SessionEvent::Error(err));
            return;
        }
        self.track_seq += 1;
        let track = forwarder::publish(
            TrackSource {
                remote,
                publisher: Arc::downgrade(&self.pc),
                tenant: self.req.tenant.clone(),
                owner: self.req.session.clone(),
                user: self.req.user.clone(),
                display_name: self.req.display_name.clone(),
                kind,
                id: format!("{}-{}-{}", self.req.session, kind.as_str(), self.track_seq),
                muted: self.muted.contains(&kind),
                keyframe_interval: self.inner.config.keyframe_interval,
            },
            &self.inner.metrics,
            self.link.notices.clone(),
        );
        self.kind_gauge(kind, true).inc();
        tracing::info!(session = %self.req.session, call = %self.req.call, track = %track.id, kind = kind.as_str(), "track published");
        self.published.push(track.clone());
        self.link.tracks.send_modify(|set| {
            let mut next = (**set).clone();
            next.push(track);
            *set = Arc::new(next);
        });
    }

    fn kind_gauge(
        &self,
        kind: TrackKind,
        incoming: bool,
    ) -> prometheus_client::metrics::gauge::Gauge {
        let labels = KindLabels {
            client_id: self.req.tenant.as_str().to_owned(),
            kind: kind.as_str(),
        };
        let family = if incoming {
            &self.inner.metrics.sfu.tracks_in
        } else {
            &self.inner.metrics.sfu.tracks_out
        };
        family.get_or_create(&labels).clone()
    }

    /// Withdraws this session's tracks matching `which` from the call and stops their forwarders.
    fn unpublish(&mut self, which: impl Fn(&PublishedTrack) -> bool) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.published)
            .into_iter()
            .partition(|t| which(t));
        self.published = kept;
        if gone.is_empty() {
            return;
        }
        for t in &gone {
            t.stop.cancel();
            self.kind_gauge(t.kind, true).dec();
        }
        self.link.tracks.send_modify(|set| {
            let next: Vec<_> = set
                .iter()
                .filter(|t| !gone.iter().any(|g| Arc::ptr_eq(g, t)))
                .cloned()
                .collect();
            *set = Arc::new(next);
        });
    }

    /// Brings this session's subscriptions in line with the call's published tracks.
    async fn reconcile(&mut self, set: TrackSet) {
        if !self.req.permissions.subscribe {
            return;
        }
        let mut changed = false;
        let stale: Vec<String> = self
            .subscribed
            .keys()
            .filter(|id| !set.iter().any(|t| &t.id == *id))
            .cloned()
            .collect();
        for id in stale {
            if let Some(sub) = self.subscribed.remove(&id) {
                self.drop_subscription(&sub).await;
                self.emit(SessionEvent::TrackRemoved(info(&sub.track)));
                changed = true;
            }
        }
        for track in set.iter() {
            if track.owner == self.req.session || self.subscribed.contains_key(&track.id) {
                continue;
            }
            let local: Arc<dyn TrackLocal + Send + Sync> = track.local.clone();
            let sender = match self.pc.add_track(local).await {
                Ok(s) => s,
                Err(e) => {
                    let err = SfuError::Media(format!("cannot add track {}: {e}", track.id));
                    self.count_error(&err);
                    tracing::warn!(session = %self.req.session, error = %err, "subscribe failed");
                    continue;
                }
            };
            let rtcp = CancellationToken::new();
            tokio::spawn(relay_rtcp(
                sender.clone(),
                Arc::downgrade(track),
                rtcp.clone(),
            ));
            track
                .subscribers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.kind_gauge(track.kind, false).inc();
            self.pending_keyframes.push(track.clone());
            self.emit(SessionEvent::TrackPublished(info(track)));
            self.subscribed.insert(
                track.id.clone(),
                Subscription {
                    track: track.clone(),
                    sender,
                    rtcp,
                },
            );
            changed = true;
        }
        if changed {
            self.needs_offer = true;
            if let Err(e) = self.maybe_offer().await {
                self.count_error(&e);
                self.emit(SessionEvent::Error(e));
            }
        }
    }

    async fn drop_subscription(&self, sub: &Subscription) {
        sub.rtcp.cancel();
        sub.track
            .subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.kind_gauge(sub.track.kind, false).dec();
        if let Err(e) = self.pc.remove_track(&sub.sender).await {
            tracing::debug!(session = %self.req.session, error = %e, "remove_track failed");
        }
    }

    fn count_error(&self, e: &SfuError) {
        tracing::debug!(client = %self.req.tenant, session = %self.req.session, error = %e, "session error");
        self.inner
            .metrics
            .sfu
            .errors
            .get_or_create(&ReasonLabels {
                client_id: self.req.tenant.as_str().to_owned(),
                reason: e.kind(),
            })
            .inc();
    }

    async fn finish(mut self, reason: String) {
        tracing::info!(client = %self.req.tenant, call = %self.req.call, session = %self.req.session, %reason, "session closed");
        self.unpublish(|_| true);
        for (_, sub) in std::mem::take(&mut self.subscribed) {
            sub.rtcp.cancel();
            sub.track
                .subscribers
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.kind_gauge(sub.track.kind, false).dec();
        }
        if let Err(e) = self.pc.close().await {
            tracing::debug!(session = %self.req.session, error = %e, "close failed");
        }
        self.inner
            .metrics
            .sfu
            .sessions
            .get_or_create(&tenant_label(&self.req.tenant))
            .dec();
        self.inner
            .remove_session(&self.req.tenant, &self.req.call, &self.req.session);
        // The receiver may be gone (client disconnected); then nobody needs the reason.
        let _ = self.events.try_send(SessionEvent::Closed { reason });
    }
}

fn info(t: &PublishedTrack) -> TrackInfo {
    TrackInfo {
        session: t.owner.clone(),
        user: t.user.clone(),
        display_name: t.display_name.clone(),
        kind: t.kind,
        track_id: t.id.clone(),
    }
}

/// Reads RTCP from one subscriber's sender: this drives the interceptors (NACK responder,
/// reports) and relays PLI / FIR to the publisher, rate-limited in [`PublishedTrack`].
async fn relay_rtcp(
    sender: Arc<RTCRtpSender>,
    track: Weak<PublishedTrack>,
    stop: CancellationToken,
) {
    loop {
        let packets = tokio::select! {
            _ = stop.cancelled() => break,
            r = sender.read_rtcp() => match r {
                Ok((packets, _)) => packets,
                Err(_) => break,
            },
        };
        let wants_keyframe = packets.iter().any(|p| {
            let any = p.as_any();
            any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
        });
        if wants_keyframe {
            let Some(track) = track.upgrade() else { break };
            track.request_keyframe().await;
        }
    }
}

//! The session actor: owns one peer connection and serialises everything that touches it
//! (client commands, webrtc-rs events, changes of the call's published tracks and roster).
//!
//! Negotiation: the client makes every offer; the actor only answers. When the set of tracks it
//! should send changes, it asks the client to offer (`NegotiationNeeded`, with how many
//! receiving sections of each kind it needs) and places the tracks in its answer. Why: ICE
//! roles follow the first offer, and Chrome (145+) switches its role when it answers a
//! renegotiation offer; webrtc-rs 0.17 implements no role-conflict resolution (RFC 8445
//! §7.3.1.1), so an rtcd offer could leave both agents controlled, each dropping the other's
//! checks, and the call died seconds later. One offerer means one role assignment, and no glare.
//!
//! Sending slots: every receiving section of the client's offer becomes a slot (a transceiver
//! whose sender always holds a track, an idle one when unused). A slot carries one forwarded
//! track at a time; when that track ends, the slot stops sending at once, is answered
//! `inactive` once (the client sees the track end), then carries the next track on the same
//! SSRC with its sequence numbers running on (see `peer::add_slot`). The SDP therefore grows
//! with the most tracks ever live at once, not with the call's history.

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
use webrtc::rtp_transceiver::RTCRtpTransceiver;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_remote::TrackRemote;

use super::forwarder::{self, PublishedTrack, TrackSource};
use super::sdp::{self, Media, Section};
use super::{
    CallLink, CallNotice, JoinRequest, Participant, Permissions, SessionId, SfuError, SfuInner,
    TrackKind, TrackSet, UserId, peer, tenant_label,
};
use crate::metrics::{KindLabels, ReasonLabels};

/// Commands from signaling. Sent through [`SessionHandle`].
#[derive(Debug)]
pub enum SessionCommand {
    /// The client's SDP offer, with what it sends on each sending section (by mid; sections
    /// not named carry a microphone or a camera).
    Offer {
        /// The SDP.
        sdp: String,
        /// Declared kinds by mid.
        tracks: HashMap<String, TrackKind>,
    },
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
    /// The session's permissions changed (a refreshed token): tracks no longer allowed stop.
    UpdatePermissions(Permissions),
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
    /// The section (mid) of this session's SDP that carries it (empty once withdrawn).
    pub mid: String,
}

/// Events for signaling to relay to the client.
#[derive(Debug)]
pub enum SessionEvent {
    /// Answer to the client's offer.
    Answer(String),
    /// The tracks to send changed: the client should offer with at least this many receiving
    /// sections of each kind.
    NegotiationNeeded {
        /// Receiving audio sections needed.
        audio: u32,
        /// Receiving video sections needed.
        video: u32,
    },
    /// A trickled candidate of ours.
    Candidate(RTCIceCandidateInit),
    /// A track the client will now receive.
    TrackPublished(TrackInfo),
    /// A track the client no longer receives.
    TrackRemoved(TrackInfo),
    /// A session is in the call (sent for those already there, then for each arrival).
    ParticipantJoined(Participant),
    /// A session left the call.
    ParticipantLeft(Participant),
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
    /// The handle over a session's command queue and liveness signal (the v2 engine's bridge
    /// holds the other ends).
    pub(crate) fn new(commands: mpsc::Sender<SessionCommand>, alive: oneshot::Sender<()>) -> Self {
        Self {
            commands,
            _alive: alive,
        }
    }

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
    /// A track the client sends, with the mid of its section.
    Track(Arc<TrackRemote>, String),
}

/// What a sending slot carries.
enum SlotState {
    /// Nothing; answered `inactive` (or `recvonly` where the client sends).
    Free,
    /// Its track just ended: answered `inactive` once before it carries another track.
    Cooling,
    /// A forwarded track.
    Busy(Arc<PublishedTrack>),
}

/// A receiving section of the client's that rtcd sends on (see the module docs).
struct Slot {
    mid: String,
    audio: bool,
    transceiver: Arc<RTCRtpTransceiver>,
    /// The client also sends on this section (it offered `sendrecv`).
    client_sends: bool,
    state: SlotState,
    /// Whose keyframe this slot's subscriber asks for (read by the slot's RTCP task).
    target: Arc<Mutex<Weak<PublishedTrack>>>,
    rtcp: CancellationToken,
}

impl Slot {
    fn track(&self) -> Option<&Arc<PublishedTrack>> {
        match &self.state {
            SlotState::Busy(t) => Some(t),
            _ => None,
        }
    }

    fn aim(&self, track: Option<&Arc<PublishedTrack>>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) =
            track.map(Arc::downgrade).unwrap_or_default();
    }
}

/// What a new session starts from, taken under the registry lock.
pub(crate) struct Start {
    pub link: CallLink,
    /// The sessions already in the call.
    pub roster: Vec<Participant>,
    /// The call's notices from the moment the roster was taken.
    pub notices: broadcast::Receiver<CallNotice>,
}

/// A slot prepared for a new section of an offer: transceiver, audio?, client sends?, track.
type Prepared = (
    Arc<RTCRtpTransceiver>,
    bool,
    bool,
    Option<Arc<PublishedTrack>>,
);

struct Actor {
    inner: Arc<SfuInner>,
    req: JoinRequest,
    link: CallLink,
    pc: Arc<RTCPeerConnection>,
    events: mpsc::Sender<SessionEvent>,
    /// This session's tracks in the call.
    published: Vec<Arc<PublishedTrack>>,
    /// Every track the client has sent, by mid: a section that stops sending and starts again
    /// (a second screen share on the same section) is published again from it.
    remotes: HashMap<String, Arc<TrackRemote>>,
    /// Sections whose track was refused (permission, limit): their packets are discarded.
    refused: HashSet<String>,
    /// The kinds the client's latest offer declared, by mid.
    declared: HashMap<String, TrackKind>,
    slots: Vec<Slot>,
    /// Tracks to send that have no slot yet.
    pending: Vec<Arc<PublishedTrack>>,
    idle_audio: Arc<TrackLocalStaticRTP>,
    idle_video: Arc<TrackLocalStaticRTP>,
    pending_candidates: Vec<RTCIceCandidateInit>,
    muted: HashSet<TrackKind>,
    screen_track_id: Option<String>,
    /// Nothing is asked of the client before its first offer was answered (that offer sets up
    /// the transport; the answer to it already carries what can be sent).
    client_offered: bool,
    /// The counts of the last `NegotiationNeeded` not yet followed by an offer.
    asked: Option<(u32, u32)>,
    /// Participants announced to the client.
    announced: HashMap<SessionId, Participant>,
    created: Instant,
    connected: bool,
    track_seq: u32,
    /// Set when the event queue to signaling overflowed; the session then ends.
    backlog: bool,
}

pub(crate) async fn spawn(
    inner: Arc<SfuInner>,
    req: JoinRequest,
    start: Start,
    close: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
) -> Result<(SessionHandle, mpsc::Receiver<SessionEvent>), SfuError> {
    let pc = inner
        .peers
        .as_ref()
        .ok_or_else(|| SfuError::Media("the v1 engine is not running".into()))?
        .create()
        .await?;
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
    let Start {
        link,
        roster,
        notices,
    } = start;
    let actor = Actor {
        inner,
        req,
        link,
        pc,
        events: event_tx,
        published: Vec::new(),
        remotes: HashMap::new(),
        refused: HashSet::new(),
        declared: HashMap::new(),
        slots: Vec::new(),
        pending: Vec::new(),
        idle_audio: peer::idle_track(true),
        idle_video: peer::idle_track(false),
        pending_candidates: Vec::new(),
        muted: HashSet::new(),
        screen_track_id: None,
        client_offered: false,
        asked: None,
        announced: HashMap::new(),
        created: Instant::now(),
        connected: false,
        track_seq: 0,
        backlog: false,
    };
    tokio::spawn(actor.run(cmd_rx, peer_rx, alive_rx, close, reason, roster, notices));
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
    pc.on_track(Box::new(move |track, _receiver, transceiver| {
        let mid = transceiver.mid().map(|m| m.to_string()).unwrap_or_default();
        enqueue(&tx, PeerEvent::Track(track, mid));
        Box::pin(async {})
    }));
}

impl Actor {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<SessionCommand>,
        mut peer_events: mpsc::Receiver<PeerEvent>,
        mut alive: oneshot::Receiver<()>,
        close: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
        roster: Vec<Participant>,
        mut notices: broadcast::Receiver<CallNotice>,
    ) {
        let mut tracks = self.link.tracks.subscribe();
        tracing::info!(client = %self.req.tenant, call = %self.req.call, session = %self.req.session, "session joined");
        for p in roster {
            self.announce(p);
        }
        let initial = tracks.borrow_and_update().clone();
        self.reconcile(initial).await;
        let why: String = loop {
            if self.backlog {
                break "signaling backlog".into();
            }
            // Biased: a `Leave` queued just before the signaling stream ends is read before
            // the end is noticed, so the session ends as "leave", not "disconnected".
            tokio::select! {
                biased;
                _ = close.cancelled() => {
                    let why = reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    break why.unwrap_or_else(|| "closed".into());
                }
                cmd = commands.recv() => match cmd {
                    None => break "disconnected".into(),
                    Some(SessionCommand::Leave) => break "leave".into(),
                    Some(cmd) => {
                        if let Err(e) = self.command(cmd, &tracks).await {
                            self.count_error(&e);
                            self.emit(SessionEvent::Error(e));
                        }
                    }
                },
                _ = &mut alive => break "disconnected".into(),
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
                    Ok(CallNotice::Joined(p)) => self.announce(p),
                    Ok(CallNotice::Left(p)) => {
                        // Its tracks were withdrawn before it left the roster: report them
                        // first, so a client never sees tracks of someone who is gone.
                        let set = tracks.borrow_and_update().clone();
                        self.reconcile(set).await;
                        self.depart(&p.session);
                    }
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
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let set = tracks.borrow_and_update().clone();
                        self.reconcile(set).await;
                        self.resync_roster();
                    }
                    Err(broadcast::error::RecvError::Closed) => break "call ended".into(),
                },
            }
        };
        self.finish(why).await;
    }

    /// Tells the client about a participant (once; never about itself).
    fn announce(&mut self, p: Participant) {
        if p.session == self.req.session || self.announced.contains_key(&p.session) {
            return;
        }
        self.announced.insert(p.session.clone(), p.clone());
        self.emit(SessionEvent::ParticipantJoined(p));
    }

    fn depart(&mut self, session: &SessionId) {
        if let Some(p) = self.announced.remove(session) {
            self.emit(SessionEvent::ParticipantLeft(p));
        }
    }

    /// After lost notices: announce from the registry's roster what the client missed.
    fn resync_roster(&mut self) {
        let roster = self.inner.roster(&self.req.tenant, &self.req.call);
        let gone: Vec<SessionId> = self
            .announced
            .keys()
            .filter(|s| !roster.iter().any(|p| &p.session == *s))
            .cloned()
            .collect();
        for s in gone {
            self.depart(&s);
        }
        for p in roster {
            self.announce(p);
        }
    }

    async fn command(
        &mut self,
        cmd: SessionCommand,
        tracks: &tokio::sync::watch::Receiver<TrackSet>,
    ) -> Result<(), SfuError> {
        match cmd {
            SessionCommand::Offer { sdp, tracks } => self.offer(sdp, tracks).await,
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
                    self.unpublish(|t| {
                        matches!(t.kind, TrackKind::Screen | TrackKind::ScreenAudio)
                    });
                }
                Ok(())
            }
            SessionCommand::UpdatePermissions(p) => {
                let had_subscribe = self.req.permissions.subscribe;
                self.req.permissions = p;
                self.unpublish(|t| !p.may_publish(t.kind));
                if had_subscribe && !p.subscribe {
                    self.pending.clear();
                    for i in 0..self.slots.len() {
                        self.free_slot(i).await;
                    }
                    self.request_negotiation();
                } else if !had_subscribe && p.subscribe {
                    let set = tracks.borrow().clone();
                    self.reconcile(set).await;
                }
                Ok(())
            }
            SessionCommand::Leave => Ok(()),
        }
    }

    /// Applies a client offer and answers it, placing every track this session should receive
    /// on a receiving section (module docs).
    async fn offer(
        &mut self,
        sdp: String,
        declared: HashMap<String, TrackKind>,
    ) -> Result<(), SfuError> {
        let sections = super::check_offer(&sdp, &declared, self.inner.config.max_sdp_bytes)?;
        // New receiving sections get a slot before the engine sees the offer (it matches
        // unassociated transceivers to new sections by kind and direction); tracks waiting for
        // a slot go straight onto them.
        let known: HashSet<String> = self
            .pc
            .get_transceivers()
            .await
            .iter()
            .filter_map(|t| t.mid().map(|m| m.to_string()))
            .collect();
        let mut prepared: Vec<Prepared> = Vec::new();
        if self.req.permissions.subscribe {
            for section in sections.iter().filter(|s| is_new_slot(s, &known)) {
                let audio = section.media == Media::Audio;
                let track = self
                    .pending
                    .iter()
                    .position(|t| t.kind.is_audio() == audio)
                    .map(|i| self.pending.remove(i));
                let local: Arc<dyn TrackLocal + Send + Sync> = match &track {
                    Some(t) => t.local.clone(),
                    None => self.idle(audio),
                };
                match peer::add_slot(&self.pc, local, section.sends()).await {
                    Ok(t) => prepared.push((t, audio, section.sends(), track)),
                    Err(e) => {
                        self.pending.extend(track);
                        self.abandon(prepared).await;
                        return Err(e);
                    }
                }
            }
        }
        if let Err(e) = peer::apply_offer(&self.pc, sdp).await {
            self.abandon(prepared).await;
            return Err(e);
        }
        self.declared = declared;
        self.asked = None;
        let mut placed: Vec<usize> = Vec::new();
        for (transceiver, audio, client_sends, track) in prepared {
            let Some(mid) = transceiver.mid().map(|m| m.to_string()) else {
                self.abandon(vec![(transceiver, audio, client_sends, track)])
                    .await;
                continue;
            };
            let busy = track.is_some();
            self.add_slot(mid, audio, transceiver, client_sends, track)
                .await;
            if busy {
                placed.push(self.slots.len() - 1);
            }
        }
        // Slots the client no longer receives on give their track back to the queue.
        let mut i = 0;
        while i < self.slots.len() {
            let section = sections.iter().find(|s| s.mid == self.slots[i].mid);
            match section {
                Some(s) if s.receives() => {
                    self.slots[i].client_sends = s.sends();
                    i += 1;
                }
                _ => {
                    let slot = self.slots.remove(i);
                    slot.rtcp.cancel();
                    placed.retain(|&p| p != i);
                    for p in placed.iter_mut().filter(|p| **p > i) {
                        *p -= 1;
                    }
                    if let SlotState::Busy(track) = slot.state {
                        self.unsubscribed(&track);
                        self.pending.push(track);
                    }
                }
            }
        }
        let cooling: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i].state, SlotState::Cooling))
            .collect();
        for i in 0..self.slots.len() {
            if self.pending.is_empty() {
                break;
            }
            if !matches!(self.slots[i].state, SlotState::Free) {
                continue;
            }
            let audio = self.slots[i].audio;
            let Some(at) = self.pending.iter().position(|t| t.kind.is_audio() == audio) else {
                continue;
            };
            let track = self.pending.remove(at);
            let slot = &self.slots[i];
            match peer::fill_slot(
                &slot.transceiver,
                track.local.clone(),
                true,
                slot.client_sends,
            )
            .await
            {
                Ok(()) => {
                    self.slots[i].aim(Some(&track));
                    self.slots[i].state = SlotState::Busy(track);
                    placed.push(i);
                }
                Err(e) => {
                    tracing::debug!(session = %self.req.session, error = %e, "slot refused a track");
                    self.pending.push(track);
                }
            }
        }
        for slot in self.slots.iter().filter(|s| s.track().is_none()) {
            slot.transceiver
                .set_direction(RTCRtpTransceiverDirection::from_send_recv(
                    false,
                    slot.client_sends,
                ))
                .await;
        }
        self.silence_trackless().await;
        self.sync_publishing(&sections);
        let current: HashMap<String, sdp::Msid> = self
            .slots
            .iter()
            .filter_map(|s| {
                s.track().map(|t| {
                    (
                        s.mid.clone(),
                        sdp::Msid {
                            stream: t.owner.as_str().to_owned(),
                            track: t.id.clone(),
                        },
                    )
                })
            })
            .collect();
        let answer = peer::answer(&self.pc).await?;
        self.emit(SessionEvent::Answer(sdp::polish_answer(&answer, &current)));
        self.client_offered = true;
        self.flush_candidates().await;
        for i in placed {
            let slot = &self.slots[i];
            let Some(track) = slot.track().cloned() else {
                continue;
            };
            track
                .subscribers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.kind_gauge(track.kind, false).inc();
            self.emit(SessionEvent::TrackPublished(info(&track, &slot.mid)));
            // A late joiner learns a muted track's state with the track, not at the next change
            // (without it, a client expects media from a muted microphone and reports it stalled).
            if track.muted.load(std::sync::atomic::Ordering::Relaxed) {
                self.emit(SessionEvent::MuteChanged {
                    session: track.owner.clone(),
                    user: track.user.clone(),
                    kind: track.kind,
                    muted: true,
                });
            }
            // The new subscriber can decode only from a keyframe.
            track.request_keyframe().await;
        }
        for i in cooling {
            if matches!(self.slots[i].state, SlotState::Cooling) {
                self.slots[i].state = SlotState::Free;
            }
        }
        if !self.pending.is_empty() {
            self.request_negotiation();
        }
        Ok(())
    }

    /// Sections the engine created on its own (the client receives there, but this session may
    /// not subscribe, or the section is not a slot) must not be answered as sending: there is
    /// nothing behind them.
    async fn silence_trackless(&self) {
        for t in self.pc.get_transceivers().await {
            let Some(mid) = t.mid() else { continue };
            if self.slots.iter().any(|s| s.mid == mid.as_str()) {
                continue;
            }
            let d = t.direction();
            if d.has_send() && t.sender().await.track().await.is_none() {
                t.set_direction(RTCRtpTransceiverDirection::from_send_recv(
                    false,
                    d.has_recv(),
                ))
                .await;
            }
        }
    }

    fn idle(&self, audio: bool) -> Arc<dyn TrackLocal + Send + Sync> {
        if audio {
            self.idle_audio.clone()
        } else {
            self.idle_video.clone()
        }
    }

    /// Undoes slots prepared for an offer that could not be applied.
    async fn abandon(&mut self, prepared: Vec<Prepared>) {
        for (transceiver, _, _, track) in prepared {
            // A stopped transceiver is inactive: the engine never matches it to a section.
            if let Err(e) = transceiver.stop().await {
                tracing::debug!(session = %self.req.session, error = %e, "stopping a slot failed");
            }
            self.pending.extend(track);
        }
    }

    async fn add_slot(
        &mut self,
        mid: String,
        audio: bool,
        transceiver: Arc<RTCRtpTransceiver>,
        client_sends: bool,
        track: Option<Arc<PublishedTrack>>,
    ) {
        let target = Arc::new(Mutex::new(Weak::new()));
        let rtcp = CancellationToken::new();
        tokio::spawn(relay_rtcp(
            transceiver.sender().await,
            target.clone(),
            rtcp.clone(),
        ));
        let slot = Slot {
            mid,
            audio,
            transceiver,
            client_sends,
            state: match track {
                Some(t) => SlotState::Busy(t),
                None => SlotState::Free,
            },
            target,
            rtcp,
        };
        slot.aim(slot.track());
        self.slots.push(slot);
    }

    /// Stops sending on slot `i` at once (its track is gone or no longer allowed); the next
    /// answer marks it inactive.
    async fn free_slot(&mut self, i: usize) {
        let SlotState::Busy(track) =
            std::mem::replace(&mut self.slots[i].state, SlotState::Cooling)
        else {
            return;
        };
        let slot = &self.slots[i];
        slot.aim(None);
        let idle = self.idle(slot.audio);
        if let Err(e) = peer::fill_slot(&slot.transceiver, idle, false, slot.client_sends).await {
            tracing::debug!(session = %self.req.session, error = %e, "idling a slot failed");
        }
        self.unsubscribed(&track);
        self.emit(SessionEvent::TrackRemoved(info(&track, "")));
    }

    /// This session no longer receives `track`: its subscriber count and gauge go down.
    fn unsubscribed(&self, track: &PublishedTrack) {
        track
            .subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.kind_gauge(track.kind, false).dec();
    }

    /// Asks the client for an offer with enough receiving sections for every track to send.
    fn request_negotiation(&mut self) {
        if !self.client_offered {
            return;
        }
        let (mut audio, mut video) = (0u32, 0u32);
        let kinds = self
            .slots
            .iter()
            .filter(|s| !matches!(s.state, SlotState::Free))
            .map(|s| s.audio)
            .chain(self.pending.iter().map(|t| t.kind.is_audio()));
        for is_audio in kinds {
            if is_audio {
                audio += 1;
            } else {
                video += 1;
            }
        }
        if self.asked == Some((audio, video)) {
            return;
        }
        self.asked = Some((audio, video));
        self.emit(SessionEvent::NegotiationNeeded { audio, video });
    }

    /// Follows the client's sending sections: a track whose section stopped sending is
    /// withdrawn; a section that sends again is published again.
    fn sync_publishing(&mut self, sections: &[Section]) {
        let sending = |mid: &str| sections.iter().any(|s| s.mid == mid && s.sends());
        self.unpublish(|t| !sending(&t.mid));
        let again: Vec<(String, Arc<TrackRemote>)> = self
            .remotes
            .iter()
            .filter(|(mid, _)| {
                sending(mid)
                    && !self.refused.contains(*mid)
                    && !self.published.iter().any(|t| &t.mid == *mid)
            })
            .map(|(m, r)| (m.clone(), r.clone()))
            .collect();
        for (mid, remote) in again {
            self.publish(remote, mid);
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

    async fn flush_candidates(&mut self) {
        for c in std::mem::take(&mut self.pending_candidates) {
            if let Err(e) = peer::add_candidate(&self.pc, c).await {
                self.emit(SessionEvent::Error(e));
            }
        }
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
            PeerEvent::Track(remote, mid) => {
                if self.remotes.contains_key(&mid) {
                    // A second stream on a known section (e.g. RTX): its track stands.
                    return None;
                }
                self.remotes.insert(mid.clone(), remote.clone());
                self.publish(remote, mid);
            }
        }
        None
    }

    /// What a track of the client is: its declared kind, else the legacy screen-share track
    /// id, else microphone or camera by media type.
    fn classify(&self, remote: &TrackRemote, mid: &str) -> TrackKind {
        if let Some(kind) = self.declared.get(mid) {
            return *kind;
        }
        match remote.kind() {
            RTPCodecType::Audio => TrackKind::Audio,
            _ if self.screen_track_id.as_deref() == Some(remote.id().as_str()) => TrackKind::Screen,
            _ => TrackKind::Video,
        }
    }

    fn publish(&mut self, remote: Arc<TrackRemote>, mid: String) {
        let kind = self.classify(&remote, &mid);
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
            self.refused.insert(mid);
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
                mid,
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
            tracing::info!(session = %self.req.session, call = %self.req.call, track = %t.id, "track withdrawn");
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

    /// Brings what this session should receive in line with the call's published tracks: ended
    /// tracks stop at once, new ones wait for the client's next offer.
    async fn reconcile(&mut self, set: TrackSet) {
        if !self.req.permissions.subscribe {
            return;
        }
        let mut changed = false;
        for i in 0..self.slots.len() {
            let ended = self.slots[i]
                .track()
                .is_some_and(|t| !set.iter().any(|s| Arc::ptr_eq(s, t)));
            if ended {
                self.free_slot(i).await;
                changed = true;
            }
        }
        let before = self.pending.len();
        self.pending
            .retain(|t| set.iter().any(|s| Arc::ptr_eq(s, t)));
        changed |= self.pending.len() != before;
        for track in set.iter() {
            let known = track.owner == self.req.session
                || self.pending.iter().any(|t| Arc::ptr_eq(t, track))
                || self
                    .slots
                    .iter()
                    .any(|s| s.track().is_some_and(|t| Arc::ptr_eq(t, track)));
            if !known {
                self.pending.push(track.clone());
                changed = true;
            }
        }
        if changed {
            self.request_negotiation();
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
        for slot in std::mem::take(&mut self.slots) {
            slot.rtcp.cancel();
            if let SlotState::Busy(track) = &slot.state {
                self.unsubscribed(track);
            }
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

/// A section of the offer that becomes a new sending slot: in use, receiving, audio or video,
/// and not yet known to the engine.
fn is_new_slot(section: &Section, known: &HashSet<String>) -> bool {
    section.receives()
        && matches!(section.media, Media::Audio | Media::Video)
        && !section.mid.is_empty()
        && !known.contains(&section.mid)
}

fn info(t: &PublishedTrack, mid: &str) -> TrackInfo {
    TrackInfo {
        session: t.owner.clone(),
        user: t.user.clone(),
        display_name: t.display_name.clone(),
        kind: t.kind,
        track_id: t.id.clone(),
        mid: mid.to_owned(),
    }
}

/// Reads RTCP from one slot's sender for the slot's life: this drives the interceptors (NACK
/// responder, reports) and relays PLI / FIR to whichever track the slot carries now,
/// rate-limited in [`PublishedTrack`].
async fn relay_rtcp(
    sender: Arc<RTCRtpSender>,
    target: Arc<Mutex<Weak<PublishedTrack>>>,
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
            let track = target.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
            if let Some(track) = track {
                track.request_keyframe().await;
            }
        }
    }
}

//! The calls of one media worker, without the worker: sessions (their [`Peer`], sending slots
//! and down-tracks), published tracks (their retransmission buffers and subscribers), mute and
//! permission state, negotiation and forwarding decisions.
//!
//! [`Rooms`] is sans-IO, as [`Peer`] is: it is fed commands, datagrams, timeouts and `now`, and
//! says what to do through [`Rooms::poll_transmit`] (datagrams to send) and
//! [`Rooms::poll_output`] (signaling events, demultiplexer routes, room events, timers, ended
//! sessions). It never touches a socket, a channel or the clock, so every scenario of a call
//! runs in a unit test in milliseconds (`tests`). The worker thread (`sfu::shard::worker`) owns
//! the queues, the timer heap and the batched sends, and carries the outputs out.
//!
//! Negotiation (`docs/protocol.md` §4a) is decided by [`Negotiation`] (which slot carries
//! which track, what waits, when to ask for an offer) and carried out here: the client makes
//! every offer; rtcd answers, placing the tracks the session should receive on the receiving
//! sections (slots) of the offer, and asks for a new offer (`NegotiationNeeded`) when it needs
//! more. A slot whose track ended stops sending at once, is answered `inactive` once, then
//! carries the next track on the same SSRC, its down-track continuing the sequence numbers and
//! timestamps.
//!
//! One concept a file: [`member`] (a session), [`call`] (a call and its published tracks),
//! `publishing` (tracks in and out of a call), `negotiating` (offers, answers, slots),
//! `forwarding` (the media path: packets, NACKs, keyframes), `control` (session commands and
//! moderation).

mod allocating;
mod call;
mod control;
mod forwarding;
mod member;
mod negotiating;
mod publishing;
mod recording;
#[cfg(test)]
mod tests;

use rustc_hash::FxHashMap;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use crate::engine::net::Transport;
use crate::engine::{EngineError, Identity, Peer, PeerEvent, PeerSettings};
use crate::metrics::Metrics;
use crate::sfu::events::{RoomEvent, RoomEventKind};
use crate::sfu::negotiation::TrackId;
use crate::sfu::session::{SessionCommand, SessionEvent};
use crate::sfu::{CallId, JoinRequest, Moderation, RoomDetail, SfuConfig, TenantId, tenant_label};
use call::Call;
use member::Member;

/// A session's routing key: the worker in the top 16 bits, a counter below.
pub(crate) type SessionKey = u64;

/// A call within one [`Rooms`] (numbered, so the forwarding path copies no strings).
type CallKey = u64;

/// What room management asks of the calls.
pub(crate) enum ManageRequest {
    /// The call's sessions and tracks.
    Describe,
    /// A moderator's action.
    Moderate(Moderation),
    /// Start writing the call to this recorder (the caller made it; refused, and stopped, if
    /// the call already records).
    StartRecording {
        recorder: Box<crate::recording::Recorder>,
        notice: crate::sfu::session::RecordingNotice,
    },
    /// Stop the call's recording.
    StopRecording(rtcd_recording::manifest::StopReason),
    /// The call's recording, if it records.
    Recording,
}

/// The answer to a [`ManageRequest`].
pub(crate) enum Managed {
    /// For `Describe`.
    Room(RoomDetail),
    /// For `Moderate`: the sessions it applied to.
    Sessions(usize),
    /// For the recording requests: the recording (started, stopped, or current).
    Recording(Option<crate::sfu::session::RecordingNotice>),
}

/// Something for the owner of [`Rooms`] to carry out, in the order it happened.
#[derive(Debug)]
pub(crate) enum Output {
    /// An event for the session's signaling stream. Delivery must not wait: a session whose
    /// queue is full has a backlog and should be ended ([`Rooms::end`], "signaling backlog").
    Event {
        key: SessionKey,
        event: SessionEvent,
    },
    /// Route STUN checks naming `ufrag` to `key` (it answered; again on an ICE restart).
    Route { key: SessionKey, ufrag: String },
    /// The session ended: forget its routes, give signaling `Closed { reason }` (the last event
    /// of the session) and release the session's place in the registry.
    Ended {
        key: SessionKey,
        tenant: TenantId,
        call: CallId,
        session: crate::sfu::SessionId,
        reason: String,
    },
    /// A room event (webhooks). `at_ms` is 0: the core has no wall clock, whoever delivers the
    /// event stamps it.
    Room(RoomEvent),
    /// Call [`Rooms::timeout`] for `key` at `at` (the session's new deadline; an earlier one
    /// for the same session is void).
    Timer { key: SessionKey, at: Instant },
}

/// What [`Rooms::new`] needs: the worker's share of the process.
pub(crate) struct Setup {
    /// The worker's number (in log lines and room instance names).
    pub index: usize,
    /// The process's DTLS certificate.
    pub identity: Identity,
    /// Our candidates and ICE timeouts, for every peer.
    pub settings: PeerSettings,
    pub metrics: Arc<Metrics>,
    pub config: SfuConfig,
    /// Whether room events go anywhere (if not, none is built).
    pub room_events: bool,
    /// Packets forwarded to subscribers, for the host's load (`GET /system`).
    pub forwarded: Arc<std::sync::atomic::AtomicU64>,
}

/// The calls of one worker. See the module docs.
pub(crate) struct Rooms {
    index: usize,
    identity: Identity,
    settings: PeerSettings,
    metrics: Arc<Metrics>,
    config: SfuConfig,
    room_events: bool,
    forwarded: Arc<std::sync::atomic::AtomicU64>,
    /// Keyed by our own counters: a fast hash, no attacker picks the keys (`FxHashMap`).
    calls: FxHashMap<CallKey, Call>,
    call_ids: HashMap<(TenantId, CallId), CallKey>,
    next_call: CallKey,
    /// Boxed: a member is ~11 KiB (its peer connection inline), and a table of them inline
    /// kept that much in each empty bucket and moved every member on each growth.
    members: FxHashMap<SessionKey, Box<Member>>,
    next_track: TrackId,
    /// Sessions with datagrams or events to drain.
    dirty: Vec<SessionKey>,
    dirty_set: HashSet<SessionKey>,
    scratch: Vec<PeerEvent>,
    /// The layer SSRCs a packet's subscribers want keyframes of (reused, no allocation per
    /// packet).
    keyframe_scratch: Vec<u32>,
    /// Datagrams to send, drained by [`Rooms::poll_transmit`] (reused: no allocation per
    /// packet once grown).
    transmits: VecDeque<(Transport, BytesMut)>,
    outputs: VecDeque<Output>,
}

impl Rooms {
    pub(crate) fn new(setup: Setup) -> Self {
        let Setup {
            index,
            identity,
            settings,
            metrics,
            config,
            room_events,
            forwarded,
        } = setup;
        Self {
            index,
            identity,
            settings,
            metrics,
            config,
            room_events,
            forwarded,
            calls: FxHashMap::default(),
            call_ids: HashMap::new(),
            next_call: 1,
            members: FxHashMap::default(),
            next_track: 1,
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            scratch: Vec::new(),
            keyframe_scratch: Vec::new(),
            transmits: VecDeque::new(),
            outputs: VecDeque::new(),
        }
    }

    /// The next datagram to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<(Transport, BytesMut)> {
        self.transmits.pop_front()
    }

    /// The next thing to carry out.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Every session, for a shutdown.
    pub(crate) fn sessions(&self) -> Vec<SessionKey> {
        self.members.keys().copied().collect()
    }

    /// The deadline last given for `key` in [`Output::Timer`], if still current.
    pub(crate) fn deadline(&self, key: SessionKey) -> Option<Instant> {
        self.members.get(&key).and_then(|m| m.deadline)
    }

    fn emit(&mut self, key: SessionKey, event: SessionEvent) {
        self.outputs.push_back(Output::Event { key, event });
    }

    fn mark(&mut self, key: SessionKey) {
        if self.dirty_set.insert(key) {
            self.dirty.push(key);
        }
    }

    /// A datagram for session `key`.
    pub(crate) fn datagram(
        &mut self,
        key: SessionKey,
        transport: Transport,
        data: &[u8],
        now: Instant,
    ) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        // The session names what the peer logs (its estimator's decisions, among others).
        let _span = tracing::debug_span!("peer", session = %m.req.session).entered();
        m.peer.handle_datagram(transport, data, now);
        self.mark(key);
    }

    /// Session `key`'s timer (given as [`Output::Timer`] at `at`) fired.
    pub(crate) fn timeout(&mut self, key: SessionKey, at: Instant, now: Instant) {
        if let Some(m) = self.members.get_mut(&key)
            && m.deadline == Some(at)
        {
            m.deadline = None;
            m.peer.handle_timeout(now);
            self.mark(key);
        }
    }

    /// Drains every touched session: its events (forwarding media to other sessions, which
    /// touches them in turn), then everything queued to send, then its next timer.
    pub(crate) fn settle(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.dirty.len() {
            let key = self.dirty[i];
            i += 1;
            self.drain_events(key, now);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            self.dirty_set.remove(key);
            let Some(m) = self.members.get_mut(key) else {
                continue;
            };
            while let Some(t) = m.peer.poll_transmit() {
                self.transmits.push_back(t);
            }
            if let Some(at) = m.peer.poll_timeout()
                && m.deadline != Some(at)
            {
                let at = at.max(now);
                m.deadline = Some(at);
                self.outputs.push_back(Output::Timer { key: *key, at });
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn drain_events(&mut self, key: SessionKey, now: Instant) {
        let mut events = std::mem::take(&mut self.scratch);
        while let Some(m) = self.members.get_mut(&key) {
            while events.len() < 64 {
                match m.peer.poll_event() {
                    Some(e) => events.push(e),
                    None => break,
                }
            }
            if events.is_empty() {
                break;
            }
            for event in events.drain(..) {
                if let Some(reason) = self.peer_event(key, event, now) {
                    self.end(key, reason, now);
                    break;
                }
            }
            events.clear();
        }
        self.scratch = events;
    }

    fn peer_event(&mut self, key: SessionKey, event: PeerEvent, now: Instant) -> Option<String> {
        match event {
            PeerEvent::Rtp { track, packet } => self.forward(key, track, packet, now),
            PeerEvent::Connected => {
                let m = self.members.get_mut(&key)?;
                if !m.connected {
                    m.connected = true;
                    self.metrics
                        .sfu
                        .connect_seconds
                        .observe(now.saturating_duration_since(m.created).as_secs_f64());
                }
            }
            PeerEvent::Disconnected => {}
            PeerEvent::Failed => return Some("peer connection failed".into()),
            PeerEvent::TrackOpened(opened) => {
                let m = self.members.get_mut(&key)?;
                tracing::debug!(session = %m.req.session, mid = %opened.mid, kind = ?opened.kind, ssrc = opened.ssrc, "track opened");
                let mid = opened.mid.clone();
                m.opened.insert(mid.clone(), opened);
                if m.sending_mids.contains(&mid) && !m.refused.contains_key(&mid) {
                    self.publish(key, &mid);
                }
            }
            PeerEvent::LayerOpened(layer) => {
                let m = self.members.get_mut(&key)?;
                tracing::debug!(session = %m.req.session, rid = %layer.rid, ssrc = layer.ssrc, "simulcast layer opened");
                // Kept with the opened track (it may be published later) and in the published
                // track, whose layer is now sent with this SSRC.
                if let Some(o) = m.opened.values_mut().find(|o| o.track == layer.track) {
                    match o.layers.iter_mut().find(|(r, _)| *r == layer.rid) {
                        Some((_, ssrc)) => *ssrc = layer.ssrc,
                        None => o.layers.push((layer.rid.clone(), layer.ssrc)),
                    }
                }
                if let Some(&tid) = m.published.get(&layer.track)
                    && let Some(l) = self
                        .calls
                        .get_mut(&m.call)
                        .and_then(|c| c.tracks.get_mut(&tid))
                        .and_then(|t| {
                            t.layers
                                .iter_mut()
                                .find(|l| l.rid.as_deref() == Some(layer.rid.as_str()))
                        })
                {
                    l.ssrc = layer.ssrc;
                }
            }
            PeerEvent::KeyframeRequested(slot) => {
                let m = self.members.get(&key)?;
                // The layer the subscriber is about to get (a pending switch), else the one
                // it gets.
                let ssrc = m
                    .slots
                    .get(slot.0 as usize)
                    .and_then(|s| s.down.as_ref())
                    .map(|d| d.target_layer().unwrap_or(d.source_ssrc()));
                if let Some(tid) = m.negotiation.track(slot.0 as usize)
                    && let Some(ssrc) = ssrc
                {
                    tracing::debug!(session = %m.req.session, slot = slot.0, ssrc, "subscriber asked for a keyframe");
                    let call = m.call;
                    self.request_keyframe(&call, tid, ssrc, now);
                }
            }
            PeerEvent::Nack { slot, lost } => self.answer_nack(key, slot, lost, now),
            PeerEvent::SenderReport {
                track,
                ssrc,
                ntp,
                rtp_timestamp,
            } => {
                let m = self.members.get(&key)?;
                let tid = *m.published.get(&track)?;
                let call = self.calls.get(&m.call)?;
                if let (Some(rec), Some(t)) = (call.recording.as_ref(), call.tracks.get(&tid)) {
                    rec.sender_report(t, ssrc, ntp, rtp_timestamp);
                }
            }
            // Adaptive video's input (off: layers follow the subscribers' views alone).
            PeerEvent::BandwidthEstimate { bits_per_second } => {
                if self.config.adaptive_video {
                    self.on_estimate(key, bits_per_second, now);
                }
            }
        }
        None
    }

    /// A new session (the registry has admitted it) joins its call. `joined_at_ms` and
    /// `call_created_ms` are wall-clock times (Unix milliseconds) the caller read.
    pub(crate) fn join(
        &mut self,
        key: SessionKey,
        req: JoinRequest,
        call_created_ms: i64,
        joined_at_ms: i64,
        now: Instant,
    ) -> Result<(), EngineError> {
        let peer = match Peer::new(&self.identity, &self.settings, now) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a peer connection");
                return Err(e);
            }
        };
        self.metrics
            .sfu
            .sessions
            .get_or_create(&tenant_label(&req.tenant))
            .inc();
        tracing::info!(client = %req.tenant, call = %req.call, session = %req.session, worker = self.index, "session joined");
        let names = (req.tenant.clone(), req.call.clone());
        let (call_key, new_call) = match self.call_ids.get(&names) {
            Some(k) => (*k, false),
            None => {
                let k = self.next_call;
                self.next_call += 1;
                self.call_ids.insert(names.clone(), k);
                (k, true)
            }
        };
        let member = Box::new(Member::new(req, call_key, peer, now, joined_at_ms));
        let me = member.participant();
        let joined = member.event_participant();
        let index = self.index;
        let events = self.room_events;
        let call = self
            .calls
            .entry(call_key)
            .or_insert_with(|| Call::new(names, call_created_ms, index, call_key, events));
        let others: Vec<SessionKey> = call.members.clone();
        call.members.push(key);
        let subscribe = member.req.permissions.subscribe;
        let pending: Vec<(TrackId, bool)> = if subscribe {
            let mut ids: Vec<(TrackId, bool)> = call
                .tracks
                .iter()
                .map(|(id, t)| (*id, t.info.kind.is_audio()))
                .collect();
            ids.sort_unstable();
            ids
        } else {
            Vec::new()
        };
        self.members.insert(key, member);
        if new_call {
            self.room_event(call_key, || RoomEventKind::RoomStarted);
        }
        self.room_event(call_key, || RoomEventKind::ParticipantJoined(joined));
        for k in others {
            let Some(other) = self.members.get_mut(&k) else {
                continue;
            };
            let them = other.participant();
            other.announced.insert(key);
            self.emit(k, SessionEvent::ParticipantJoined(me.clone()));
            if let Some(m) = self.members.get_mut(&key) {
                m.announced.insert(k);
                self.emit(key, SessionEvent::ParticipantJoined(them));
            }
        }
        if let Some(m) = self.members.get_mut(&key) {
            for (tid, audio) in pending {
                m.negotiation.want(tid, audio);
            }
        }
        self.tell_recording(call_key, key);
        self.mark(key);
        Ok(())
    }

    /// A command of session `key`'s signaling stream; a refusal goes back to it as an error.
    /// Tells every session that was told `key` joined that its role is now what its member
    /// says (`participant_updated`), so that their moderation menus follow grants and revokes.
    pub(super) fn announce_update(&mut self, key: SessionKey) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let me = m.participant();
        let Some(call) = self.calls.get(&m.call) else {
            return;
        };
        for k in call.members.clone() {
            if k != key
                && self
                    .members
                    .get(&k)
                    .is_some_and(|o| o.announced.contains(&key))
            {
                self.emit(k, SessionEvent::ParticipantUpdated(me.clone()));
            }
        }
    }

    pub(crate) fn command(&mut self, key: SessionKey, command: SessionCommand, now: Instant) {
        if !self.members.contains_key(&key) {
            return;
        }
        if let Err(e) = self.session_command(key, command, now) {
            if let Some(m) = self.members.get(&key) {
                m.count_error(&self.metrics, &e);
            }
            if self.members.contains_key(&key) {
                self.emit(key, SessionEvent::Error(e));
            }
        }
        self.mark(key);
    }

    /// Emits a room event of `call_key` with the next sequence number (built only when room
    /// events go anywhere).
    fn room_event(&mut self, call_key: CallKey, kind: impl FnOnce() -> RoomEventKind) {
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        if !call.events {
            return;
        }
        call.seq += 1;
        self.outputs.push_back(Output::Room(RoomEvent {
            tenant: call.names.0.clone(),
            call: call.names.1.clone(),
            room_instance: call.instance.clone(),
            seq: call.seq,
            at_ms: 0,
            kind: kind(),
        }));
    }

    /// Ends a session: its tracks are withdrawn, then the others learn it left.
    pub(crate) fn end(&mut self, key: SessionKey, reason: String, now: Instant) {
        if !self.members.contains_key(&key) {
            return;
        }
        self.unpublish(key, |_| true, now);
        let Some(mut m) = self.members.remove(&key) else {
            return;
        };
        tracing::info!(client = %m.req.tenant, call = %m.req.call, session = %m.req.session, %reason, "session closed");
        for (_, tid) in m.negotiation.busy() {
            if let Some(t) = self
                .calls
                .get_mut(&m.call)
                .and_then(|c| c.tracks.get_mut(&tid))
            {
                t.subscribers.retain(|&(k, _)| k != key);
                m.kind_gauge(&self.metrics, t.info.kind, false).dec();
                self.update_wanted_layers(m.call, tid, now);
            }
        }
        m.peer.close();
        while let Some(t) = m.peer.poll_transmit() {
            self.transmits.push_back(t);
        }
        let me = m.participant();
        let call_key = m.call;
        let left = m.event_participant();
        let why = reason.clone();
        self.room_event(call_key, || RoomEventKind::ParticipantLeft {
            participant: left,
            reason: why,
        });
        let mut call_gone = false;
        if let Some(call) = self.calls.get_mut(&call_key) {
            call.members.retain(|k| *k != key);
            call_gone = call.members.is_empty();
            for k in call.members.clone() {
                if let Some(o) = self.members.get_mut(&k)
                    && o.announced.remove(&key)
                {
                    self.outputs.push_back(Output::Event {
                        key: k,
                        event: SessionEvent::ParticipantLeft(me.clone()),
                    });
                }
            }
        }
        if call_gone {
            self.detach_recording(
                call_key,
                rtcd_recording::manifest::StopReason::RoomFinished,
                now,
            );
            self.room_event(call_key, || RoomEventKind::RoomFinished);
        }
        if call_gone && let Some(call) = self.calls.remove(&call_key) {
            self.call_ids.remove(&call.names);
        }
        self.metrics
            .sfu
            .sessions
            .get_or_create(&tenant_label(&m.req.tenant))
            .dec();
        self.outputs.push_back(Output::Ended {
            key,
            tenant: m.req.tenant,
            call: m.req.call,
            session: m.req.session,
            reason,
        });
    }
}

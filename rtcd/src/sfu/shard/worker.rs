//! One media worker thread: it owns a shard of calls, every session of them (its [`Peer`],
//! sending slots and down-tracks) and every published track (its retransmission buffer and
//! subscribers), and serialises everything that touches them: signaling commands, datagrams and
//! timers. Nothing here is shared with another thread, so nothing is locked.
//!
//! Negotiation (`docs/protocol.md` §4a) is decided by [`Negotiation`] (which slot carries
//! which track, what waits, when to ask for an offer) and carried out here: the client makes
//! every offer; the worker answers, placing the tracks the session should receive on the
//! receiving sections (slots) of the offer, and asks for a new offer (`NegotiationNeeded`) when
//! it needs more. A slot whose track ended stops sending at once, is answered `inactive` once,
//! then carries the next track on the same SSRC, its down-track continuing the sequence numbers
//! and timestamps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Datagram, DemuxUpdate, Joining, Manage, ManageRequest, Managed, SessionKey, TcpRoutes,
    WorkerCommand,
};
use crate::engine::net::udp::{BatchSocket, SendBatch};
use crate::engine::net::{Protocol, Transport};
use crate::engine::peer::{Codec, HeaderExtension, OpenedTrack, SlotId, TrackKey};
use crate::engine::{Identity, Peer, PeerEvent, PeerSettings};
use crate::media::packet::{AUDIO_LEVEL_URI, MediaKind, MediaPacket};
use crate::media::sdp;
use crate::metrics::{KindLabels, Metrics, ReasonLabels};
use crate::sfu::downtrack::{DownTrack, DownTrackConfig, ExtensionMap, Forward, PayloadTypeMap};
use crate::sfu::events::{EventParticipant, RoomEvent, RoomEventKind, RoomEventSink};
use crate::sfu::negotiation::{Negotiation, TrackId};
use crate::sfu::retransmit::RetransmitBuffer;
use crate::sfu::session::{SessionCommand, SessionEvent, TrackInfo};
use crate::sfu::voice::VoiceDetector;
use crate::sfu::{
    CallId, JoinRequest, Moderation, Participant, ParticipantDetail, Permissions, PublishedTrack,
    RoomDetail, SfuConfig, SfuError, SfuInner, TenantId, TrackKind, UserId, tenant_label, unix_ms,
};

/// Datagrams handled per wake-up before timers and sends get their turn.
const DATAGRAM_BATCH: usize = 64;
/// Datagrams per `sendmmsg`.
const SEND_BATCH: usize = 64;

/// A call within this worker (numbered, so the forwarding path copies no strings).
type CallKey = u64;

/// Counters a published track updates per packet, resolved once.
struct TrackCounters {
    forwarded: Counter,
    bytes: Counter,
    muted: Counter,
}

/// A track a session publishes, as its call sees it.
struct Published {
    owner: SessionKey,
    key: TrackKey,
    info: TrackInfo,
    ssrc: u32,
    codecs: Vec<Codec>,
    extensions: Vec<HeaderExtension>,
    muted: bool,
    /// Video only: the packets subscribers may NACK, each stored once.
    buffer: Option<RetransmitBuffer>,
    /// (session, slot index) of every session that receives it.
    subscribers: Vec<(SessionKey, usize)>,
    vad: Option<(u8, VoiceDetector)>,
    last_pli: Option<Instant>,
    counters: TrackCounters,
}

struct Call {
    /// Whose call and which: the key of `Worker::call_ids`.
    names: (TenantId, CallId),
    members: Vec<SessionKey>,
    tracks: HashMap<TrackId, Published>,
    /// When its first session joined (Unix milliseconds).
    created_at_ms: i64,
    /// This instance of the room, for room events (unique per process and room start).
    instance: String,
    /// The last room event's sequence number.
    seq: u64,
    /// Where room events go, if anywhere.
    events: Option<RoomEventSink>,
}

struct MemberSlot {
    id: SlotId,
    mid: String,
    audio: bool,
    ssrc: u32,
    /// The slot's RTX SSRC where the client negotiated RTX: NACK answers go there.
    rtx_ssrc: Option<u32>,
    codecs: Vec<Codec>,
    extensions: Vec<HeaderExtension>,
    down: Option<DownTrack>,
}

/// One session (one client peer connection).
struct Member {
    inner: Arc<SfuInner>,
    req: JoinRequest,
    call: CallKey,
    peer: Peer,
    events: mpsc::Sender<SessionEvent>,
    ended: CancellationToken,
    /// The receiving sections rtcd sends on; slot `i` here is slot `i` of `negotiation`.
    slots: Vec<MemberSlot>,
    /// Which track each slot carries, what waits, when to ask for an offer.
    negotiation: Negotiation,
    /// This session's published tracks, by the peer's track key.
    published: HashMap<TrackKey, TrackId>,
    /// Every track the client has opened, by mid (a section that sends again is published
    /// again from it).
    opened: HashMap<String, OpenedTrack>,
    /// Sections whose track was refused (permission, limit), with the counter of their
    /// discarded packets.
    refused: HashMap<String, Counter>,
    /// The sender's track id by mid, from the latest offer (for the legacy screen-share hint).
    track_ids: HashMap<String, String>,
    /// The track id `ScreenShare { on: true }` named (legacy clients that declare no kinds).
    screen_track_id: Option<String>,
    /// The kinds the client's latest offer declared, by mid.
    declared: HashMap<String, TrackKind>,
    /// Mids of the latest offer on which the client sends.
    sending_mids: HashSet<String>,
    muted: HashSet<TrackKind>,
    pending_candidates: Vec<(String, Option<String>, Option<u16>)>,
    announced: HashSet<SessionKey>,
    ufrags: HashSet<String>,
    created: Instant,
    /// When the session joined (Unix milliseconds).
    joined_at_ms: i64,
    connected: bool,
    backlog: bool,
    /// The worker's flag that some session has a backlog (so the worker need not scan them all).
    worker_backlog: Arc<std::sync::atomic::AtomicBool>,
    /// The deadline last put on the timer heap for this session.
    deadline: Option<Instant>,
}

impl Member {
    /// Queues an event for signaling without waiting; overflow ends the session (v1's policy:
    /// the proxy stopped reading, and waiting would pin the worker).
    fn emit(&mut self, event: SessionEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            self.backlog = true;
            self.worker_backlog
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn event_participant(&self) -> EventParticipant {
        EventParticipant {
            session: self.req.session.clone(),
            user: self.req.user.clone(),
            display_name: self.req.display_name.clone(),
            role: self.req.role.clone(),
        }
    }

    fn participant(&self) -> Participant {
        Participant {
            session: self.req.session.clone(),
            user: self.req.user.clone(),
            display_name: self.req.display_name.clone(),
        }
    }

    fn kind_gauge(&self, kind: TrackKind, incoming: bool) -> Gauge {
        let labels = KindLabels {
            client_id: self.req.tenant.as_str().to_owned(),
            kind: kind.as_str(),
        };
        let m = &self.inner.metrics.sfu;
        let family = if incoming {
            &m.tracks_in
        } else {
            &m.tracks_out
        };
        family.get_or_create(&labels).clone()
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
}

/// What every worker shares with the others and the receive thread.
#[derive(Clone)]
pub(super) struct Wiring {
    /// The shared UDP port (sends).
    pub socket: Arc<BatchSocket>,
    /// The ICE-TCP port, if it listens.
    pub tcp: Option<Arc<TcpRoutes>>,
    /// The process's DTLS certificate.
    pub identity: Identity,
    /// Our candidates and ICE timeouts, for every peer.
    pub settings: PeerSettings,
    /// Registrations for the receive thread's demultiplexer.
    pub demux: std::sync::mpsc::Sender<DemuxUpdate>,
    pub metrics: Arc<Metrics>,
    pub config: SfuConfig,
    /// This worker's forwarded packets, for the host's load (`GET /system`): one counter per
    /// worker, so workers never share its cache line.
    pub forwarded: Arc<std::sync::atomic::AtomicU64>,
}

/// A worker thread's state. See the module docs.
pub(super) struct Worker {
    index: usize,
    socket: Arc<BatchSocket>,
    tcp: Option<Arc<TcpRoutes>>,
    identity: Identity,
    settings: PeerSettings,
    demux: std::sync::mpsc::Sender<DemuxUpdate>,
    metrics: Arc<Metrics>,
    config: SfuConfig,
    calls: HashMap<CallKey, Call>,
    call_ids: HashMap<(TenantId, CallId), CallKey>,
    next_call: CallKey,
    members: HashMap<SessionKey, Member>,
    timers: BinaryHeap<Reverse<(Instant, SessionKey)>>,
    /// Sessions with datagrams or events to drain.
    dirty: Vec<SessionKey>,
    dirty_set: HashSet<SessionKey>,
    send: SendBatch,
    next_track: TrackId,
    scratch: Vec<PeerEvent>,
    /// Set when a session's event queue overflowed (see [`Member::emit`]).
    backlog: Arc<std::sync::atomic::AtomicBool>,
    /// See [`Wiring::forwarded`].
    forwarded: Arc<std::sync::atomic::AtomicU64>,
}

impl Worker {
    pub(super) fn new(index: usize, wiring: Wiring) -> Self {
        let Wiring {
            socket,
            tcp,
            identity,
            settings,
            demux,
            metrics,
            config,
            forwarded,
        } = wiring;
        Self {
            index,
            socket,
            tcp,
            identity,
            settings,
            demux,
            metrics,
            config,
            calls: HashMap::new(),
            call_ids: HashMap::new(),
            next_call: 1,
            members: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            send: SendBatch::new(SEND_BATCH),
            next_track: 1,
            scratch: Vec::new(),
            backlog: Arc::default(),
            forwarded,
        }
    }

    /// The thread's body: a single-threaded runtime whose one task owns everything.
    pub(super) fn run(
        mut self,
        mut commands: mpsc::Receiver<WorkerCommand>,
        mut datagrams: mpsc::Receiver<Datagram>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = self.index, error = %e, "media worker cannot start");
                return;
            }
        };
        runtime.block_on(async move {
            let mut inbox = Vec::with_capacity(DATAGRAM_BATCH);
            loop {
                let deadline = self.next_deadline();
                tokio::select! {
                    biased;
                    command = commands.recv() => match command {
                        Some(c) => self.command(c),
                        None => break,
                    },
                    n = datagrams.recv_many(&mut inbox, DATAGRAM_BATCH) => {
                        if n == 0 {
                            break;
                        }
                        let now = Instant::now();
                        for d in inbox.drain(..) {
                            self.datagram(d, now);
                        }
                    }
                    _ = sleep_until(deadline) => {}
                }
                self.run_timers(Instant::now());
                self.settle();
            }
            let keys: Vec<SessionKey> = self.members.keys().copied().collect();
            for key in keys {
                self.finish(key, "shutdown".into());
            }
            self.settle();
        });
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            match self.members.get(&key) {
                Some(m) if m.deadline == Some(at) => return Some(at),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    fn mark(&mut self, key: SessionKey) {
        if self.dirty_set.insert(key) {
            self.dirty.push(key);
        }
    }

    fn datagram(&mut self, d: Datagram, now: Instant) {
        let Some(m) = self.members.get_mut(&d.key) else {
            return;
        };
        m.peer.handle_datagram(d.transport, d.data, now);
        self.mark(d.key);
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(m) = self.members.get_mut(&key)
                && m.deadline == Some(at)
            {
                m.deadline = None;
                m.peer.handle_timeout(now);
                self.mark(key);
            }
        }
    }

    /// Drains every touched session: its events (forwarding media to other sessions, which
    /// touches them in turn), then everything queued to send, then its next timer.
    fn settle(&mut self) {
        let mut i = 0;
        while i < self.dirty.len() {
            let key = self.dirty[i];
            i += 1;
            self.drain_events(key);
        }
        let now = Instant::now();
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            self.dirty_set.remove(key);
            let Some(m) = self.members.get_mut(key) else {
                continue;
            };
            while let Some((transport, data)) = m.peer.poll_transmit() {
                transmit(
                    &self.socket,
                    &mut self.send,
                    self.tcp.as_deref(),
                    transport,
                    data,
                );
            }
            if let Some(at) = m.peer.poll_timeout()
                && m.deadline != Some(at)
            {
                m.deadline = Some(at);
                self.timers.push(Reverse((at.max(now), *key)));
                m.deadline = Some(at.max(now));
            }
        }
        flush(&self.socket, &mut self.send);
        self.dirty = dirty;
        self.dirty.clear();
        if self
            .backlog
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            let ended: Vec<SessionKey> = self
                .members
                .iter()
                .filter(|(_, m)| m.backlog)
                .map(|(k, _)| *k)
                .collect();
            for key in ended {
                self.finish(key, "signaling backlog".into());
            }
        }
    }

    fn drain_events(&mut self, key: SessionKey) {
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
                if let Some(reason) = self.peer_event(key, event) {
                    self.finish(key, reason);
                    break;
                }
            }
            events.clear();
        }
        self.scratch = events;
    }

    fn peer_event(&mut self, key: SessionKey, event: PeerEvent) -> Option<String> {
        let now = Instant::now();
        match event {
            PeerEvent::Rtp { track, packet } => self.forward(key, track, packet, now),
            PeerEvent::Connected => {
                let m = self.members.get_mut(&key)?;
                if !m.connected {
                    m.connected = true;
                    self.metrics
                        .sfu
                        .connect_seconds
                        .observe(m.created.elapsed().as_secs_f64());
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
            PeerEvent::TrackClosed(track) => {
                self.unpublish(key, |t| t.key == track);
            }
            PeerEvent::KeyframeRequested(slot) => {
                let m = self.members.get(&key)?;
                if let Some(tid) = m.negotiation.track(slot.0 as usize) {
                    let call = m.call;
                    self.request_keyframe(&call, tid, now);
                }
            }
            PeerEvent::Nack { slot, lost } => self.answer_nack(key, slot, lost, now),
        }
        None
    }

    /// One packet of a published track to every subscriber.
    fn forward(&mut self, key: SessionKey, track: TrackKey, packet: MediaPacket, now: Instant) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let Some(&tid) = m.published.get(&track) else {
            // Refused (counted), or its section no longer sends.
            if let Some(counter) = m
                .opened
                .values()
                .find(|o| o.track == track)
                .and_then(|o| m.refused.get(&o.mid))
            {
                counter.inc();
            }
            return;
        };
        let call_key = m.call;
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let Some(t) = call.tracks.get_mut(&tid) else {
            return;
        };
        let mut voice = None;
        if t.muted {
            t.counters.muted.inc();
            if let Some((_, detector)) = t.vad.as_mut()
                && detector.speaking()
            {
                *detector = VoiceDetector::default();
                voice = Some(false);
            }
        } else if let Some((id, detector)) = t.vad.as_mut() {
            let level = packet
                .extensions
                .get(*id)
                .and_then(|b| b.first().copied())
                .map(|b| b & 0x7f);
            voice = level.and_then(|l| detector.observe(l));
        }
        let muted = t.muted;
        let mut want_keyframe = false;
        if !muted {
            if let Some(buffer) = t.buffer.as_mut() {
                buffer.insert(packet.clone());
            }
            let mut sent = 0u64;
            for &(sub, slot) in &t.subscribers {
                let Some(s) = self.members.get_mut(&sub) else {
                    continue;
                };
                // Before DTLS is up there are no SRTP keys: nothing can be sent yet.
                if !s.peer.is_connected() {
                    continue;
                }
                let Some(ms) = s.slots.get_mut(slot) else {
                    continue;
                };
                let Some(down) = ms.down.as_mut() else {
                    continue;
                };
                if let Forward::Send(header) = down.forward(&packet, now) {
                    if let Err(e) =
                        s.peer
                            .send_rtp(ms.id, &header, &packet, packet.payload.clone(), now)
                    {
                        tracing::debug!(error = %e, "forwarding a packet failed");
                    } else {
                        sent += 1;
                    }
                    if self.dirty_set.insert(sub) {
                        self.dirty.push(sub);
                    }
                }
                want_keyframe |= down.poll_keyframe_request(now).is_some();
                if down.has_holes() {
                    want_keyframe |= send_fills(&mut s.peer, ms.id, down, now);
                }
            }
            if sent > 0 {
                self.forwarded
                    .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                t.counters.forwarded.inc_by(sent);
                t.counters.bytes.inc_by(sent * packet.payload.len() as u64);
            }
        }
        if want_keyframe {
            self.request_keyframe(&call_key, tid, now);
        }
        if let Some(speaking) = voice
            && let Some(m) = self.members.get(&key)
        {
            let (owner_session, owner_user) = (m.req.session.clone(), m.req.user.clone());
            self.notify(&call_key, key, |_| {
                Some(SessionEvent::VoiceActivity {
                    session: owner_session.clone(),
                    user: owner_user.clone(),
                    speaking,
                })
            });
        }
    }

    /// A PLI to the publisher of `tid`, at most one per keyframe interval.
    fn request_keyframe(&mut self, call: &CallKey, tid: TrackId, now: Instant) {
        let Some(t) = self
            .calls
            .get_mut(call)
            .and_then(|c| c.tracks.get_mut(&tid))
        else {
            return;
        };
        if t.info.kind.is_audio() {
            return;
        }
        if let Some(last) = t.last_pli
            && now.saturating_duration_since(last) < self.config.keyframe_interval
        {
            return;
        }
        t.last_pli = Some(now);
        let (owner, key) = (t.owner, t.key);
        if let Some(p) = self.members.get_mut(&owner) {
            p.peer.request_keyframe(key, now);
            self.metrics
                .sfu
                .pli_sent
                .get_or_create(&tenant_label(&p.req.tenant))
                .inc();
            self.mark(owner);
        }
    }

    fn answer_nack(&mut self, key: SessionKey, slot: SlotId, lost: Vec<u16>, now: Instant) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        // A slot whose track ended still answers for what it sent (with padding: the packets
        // are gone), or the subscriber's jitter buffer would wait on its last holes.
        let tid = m.negotiation.track(slot.0 as usize);
        let call = m.call;
        let Some(ms) = m.slots.get_mut(slot.0 as usize) else {
            return;
        };
        let Some(down) = ms.down.as_mut() else {
            return;
        };
        let nothing;
        let buffer = match tid.and_then(|tid| {
            self.calls
                .get(&call)
                .and_then(|c| c.tracks.get(&tid))
                .and_then(|t| t.buffer.as_ref())
        }) {
            Some(buffer) => buffer,
            None => {
                nothing = RetransmitBuffer::empty();
                &nothing
            }
        };
        let mut resend = Vec::new();
        let unrepairable = down.on_nack(lost, buffer, now, |r| resend.push(r));
        for r in resend {
            if let Err(e) = m.peer.send_rtp(ms.id, &r.header, r.packet, r.payload, now) {
                tracing::debug!(error = %e, "retransmission failed");
            }
        }
        let lost_frame = send_fills(&mut m.peer, ms.id, down, now);
        if unrepairable > 0 {
            self.metrics
                .sfu
                .nack_unrepairable
                .get_or_create(&tenant_label(&m.req.tenant))
                .inc_by(unrepairable as u64);
        }
        self.mark(key);
        // Loss the subscriber cannot repair: its decoder needs a keyframe, and waiting for its
        // own request costs seconds of frozen video.
        if let Some(tid) = tid
            && (unrepairable > 0 || lost_frame)
        {
            self.request_keyframe(&call, tid, now);
        }
    }

    /// Sends `event(member)` to every other session of `call` that subscribes.
    fn notify(
        &mut self,
        call: &CallKey,
        from: SessionKey,
        event: impl Fn(&Member) -> Option<SessionEvent>,
    ) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        for k in &c.members {
            if *k == from {
                continue;
            }
            if let Some(m) = self.members.get_mut(k)
                && m.req.permissions.subscribe
                && let Some(e) = event(m)
            {
                m.emit(e);
            }
        }
    }

    fn command(&mut self, command: WorkerCommand) {
        match command {
            WorkerCommand::Join(joining) => self.join(*joining),
            WorkerCommand::End { key, reason } => self.finish(key, reason),
            WorkerCommand::Manage(manage) => {
                let Manage {
                    tenant,
                    call,
                    request,
                    reply,
                } = *manage;
                let answer = self.manage(tenant, call, request);
                // The caller may have given up (its RPC was cancelled); nothing to undo.
                let _ = reply.send(answer);
            }
            WorkerCommand::Session { key, command } => {
                if !self.members.contains_key(&key) {
                    return;
                }
                if let Err(e) = self.session_command(key, command)
                    && let Some(m) = self.members.get_mut(&key)
                {
                    m.count_error(&e);
                    m.emit(SessionEvent::Error(e));
                }
                self.mark(key);
            }
        }
    }

    fn join(&mut self, j: Joining) {
        let now = Instant::now();
        let peer = match Peer::new(&self.identity, &self.settings, now) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a peer connection");
                j.inner
                    .remove_session(&j.req.tenant, &j.req.call, &j.req.session);
                let _ = j.events.try_send(SessionEvent::Closed {
                    reason: "media engine error".into(),
                });
                j.ended.cancel();
                return;
            }
        };
        j.inner
            .metrics
            .sfu
            .sessions
            .get_or_create(&tenant_label(&j.req.tenant))
            .inc();
        tracing::info!(client = %j.req.tenant, call = %j.req.call, session = %j.req.session, worker = self.index, "session joined");
        let names = (j.req.tenant.clone(), j.req.call.clone());
        let (call_key, new_call) = match self.call_ids.get(&names) {
            Some(k) => (*k, false),
            None => {
                let k = self.next_call;
                self.next_call += 1;
                self.call_ids.insert(names.clone(), k);
                (k, true)
            }
        };
        let member = Member {
            inner: j.inner,
            req: j.req,
            call: call_key,
            peer,
            events: j.events,
            ended: j.ended,
            slots: Vec::new(),
            negotiation: Negotiation::default(),
            published: HashMap::new(),
            opened: HashMap::new(),
            refused: HashMap::new(),
            track_ids: HashMap::new(),
            screen_track_id: None,
            declared: HashMap::new(),
            sending_mids: HashSet::new(),
            muted: HashSet::new(),
            pending_candidates: Vec::new(),
            announced: HashSet::new(),
            ufrags: HashSet::new(),
            created: now,
            joined_at_ms: unix_ms(),
            connected: false,
            backlog: false,
            worker_backlog: self.backlog.clone(),
            deadline: None,
        };
        let me = member.participant();
        let joined = member.event_participant();
        let index = self.index;
        let call = self.calls.entry(call_key).or_insert_with(|| Call {
            instance: format!("{:x}-{index:x}-{call_key:x}", j.call_created_ms),
            created_at_ms: j.call_created_ms,
            seq: 0,
            events: member.inner.room_events.clone(),
            names,
            members: Vec::new(),
            tracks: HashMap::new(),
        });
        let others: Vec<SessionKey> = call.members.clone();
        call.members.push(j.key);
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
        self.members.insert(j.key, member);
        if new_call {
            self.room_event(call_key, || RoomEventKind::RoomStarted);
        }
        self.room_event(call_key, || RoomEventKind::ParticipantJoined(joined));
        for k in others {
            let Some(other) = self.members.get_mut(&k) else {
                continue;
            };
            let them = other.participant();
            other.announced.insert(j.key);
            other.emit(SessionEvent::ParticipantJoined(me.clone()));
            if let Some(m) = self.members.get_mut(&j.key) {
                m.announced.insert(k);
                m.emit(SessionEvent::ParticipantJoined(them));
            }
        }
        if let Some(m) = self.members.get_mut(&j.key) {
            for (tid, audio) in pending {
                m.negotiation.want(tid, audio);
            }
        }
        self.mark(j.key);
    }

    fn session_command(
        &mut self,
        key: SessionKey,
        command: SessionCommand,
    ) -> Result<(), SfuError> {
        match command {
            SessionCommand::Offer { sdp, tracks } => self.offer(key, sdp, tracks),
            SessionCommand::Candidate(c) => {
                let Some(m) = self.members.get_mut(&key) else {
                    return Ok(());
                };
                if c.candidate.len() > 1024 {
                    return Err(SfuError::InvalidArgument("candidate too long".into()));
                }
                if m.negotiation.offered() {
                    m.peer
                        .add_remote_candidate(&c.candidate, c.sdp_mid, c.sdp_mline_index)
                        .map_err(|e| SfuError::InvalidArgument(e.to_string()))
                } else if m.pending_candidates.len() < 64 {
                    m.pending_candidates
                        .push((c.candidate, c.sdp_mid, c.sdp_mline_index));
                    Ok(())
                } else {
                    Err(SfuError::LimitReached("candidates before the first offer"))
                }
            }
            SessionCommand::Mute { kind, muted } => {
                self.set_muted(key, kind, muted);
                Ok(())
            }
            SessionCommand::ScreenShare { on, track_id } => {
                let Some(m) = self.members.get_mut(&key) else {
                    return Ok(());
                };
                if on {
                    if !m.req.permissions.publish_screen {
                        return Err(SfuError::InvalidArgument(
                            "this session may not publish a screen share".into(),
                        ));
                    }
                    m.screen_track_id = Some(track_id);
                } else {
                    m.screen_track_id = None;
                    self.unpublish(key, |t| {
                        matches!(t.info.kind, TrackKind::Screen | TrackKind::ScreenAudio)
                    });
                }
                Ok(())
            }
            SessionCommand::UpdatePermissions(p) => {
                self.set_permissions(key, p);
                Ok(())
            }
            SessionCommand::Leave => Ok(()),
        }
    }

    /// Mutes or unmutes `key`'s tracks of `kind` (and those it publishes later): their packets
    /// are dropped; the others are told.
    fn set_muted(&mut self, key: SessionKey, kind: TrackKind, muted: bool) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if muted {
            m.muted.insert(kind);
        } else {
            m.muted.remove(&kind);
        }
        let (session, user) = (m.req.session.clone(), m.req.user.clone());
        let call_key = m.call;
        let mine: Vec<TrackId> = m.published.values().copied().collect();
        let mut stopped_speaking = false;
        if let Some(call) = self.calls.get_mut(&call_key) {
            for tid in mine {
                if let Some(t) = call.tracks.get_mut(&tid)
                    && t.info.kind == kind
                {
                    t.muted = muted;
                    if muted
                        && let Some((_, d)) = t.vad.as_mut()
                        && d.speaking()
                    {
                        *d = VoiceDetector::default();
                        stopped_speaking = true;
                    }
                }
            }
        }
        if stopped_speaking {
            let (s, u) = (session.clone(), user.clone());
            self.notify(&call_key, key, |_| {
                Some(SessionEvent::VoiceActivity {
                    session: s.clone(),
                    user: u.clone(),
                    speaking: false,
                })
            });
        }
        self.notify(&call_key, key, |_| {
            Some(SessionEvent::MuteChanged {
                session: session.clone(),
                user: user.clone(),
                kind,
                muted,
            })
        });
    }

    /// Replaces `key`'s permissions: tracks no longer allowed are withdrawn at once, a lost
    /// subscription stops every slot, a new one asks for the call's tracks.
    fn set_permissions(&mut self, key: SessionKey, p: Permissions) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let had_subscribe = m.req.permissions.subscribe;
        m.req.permissions = p;
        self.unpublish(key, |t| !p.may_publish(t.info.kind));
        if had_subscribe && !p.subscribe {
            let Some(m) = self.members.get_mut(&key) else {
                return;
            };
            for (i, tid) in m.negotiation.stop_receiving() {
                self.slot_stopped(key, i, tid);
            }
            self.negotiate(key);
        } else if !had_subscribe && p.subscribe {
            let Some(call_key) = self.members.get(&key).map(|m| m.call) else {
                return;
            };
            let ids: Vec<(TrackId, bool)> = self
                .calls
                .get(&call_key)
                .map(|c| {
                    c.tracks
                        .iter()
                        .filter(|(_, t)| t.owner != key)
                        .map(|(id, t)| (*id, t.info.kind.is_audio()))
                        .collect()
                })
                .unwrap_or_default();
            let Some(m) = self.members.get_mut(&key) else {
                return;
            };
            for (tid, audio) in ids {
                m.negotiation.want(tid, audio);
            }
            self.negotiate(key);
        }
    }

    /// Emits a room event of `call_key` with the next sequence number (built only when room
    /// events go anywhere).
    fn room_event(&mut self, call_key: CallKey, kind: impl FnOnce() -> RoomEventKind) {
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let Some(sink) = &call.events else {
            return;
        };
        call.seq += 1;
        sink.emit(RoomEvent {
            tenant: call.names.0.clone(),
            call: call.names.1.clone(),
            room_instance: call.instance.clone(),
            seq: call.seq,
            at_ms: unix_ms(),
            kind: kind(),
        });
    }

    /// Room management on one of this worker's calls (see [`Moderation`]).
    fn manage(
        &mut self,
        tenant: TenantId,
        call: CallId,
        request: ManageRequest,
    ) -> Result<Managed, SfuError> {
        let call_key = *self
            .call_ids
            .get(&(tenant, call))
            .ok_or(SfuError::NotFound)?;
        let members = self
            .calls
            .get(&call_key)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        let of_user = |worker: &Self, user: &UserId| -> Result<Vec<SessionKey>, SfuError> {
            let keys: Vec<SessionKey> = members
                .iter()
                .copied()
                .filter(|k| worker.members.get(k).is_some_and(|m| &m.req.user == user))
                .collect();
            if keys.is_empty() {
                Err(SfuError::NotFound)
            } else {
                Ok(keys)
            }
        };
        let action = match request {
            ManageRequest::Describe => {
                return self
                    .describe(call_key)
                    .map(Managed::Room)
                    .ok_or(SfuError::NotFound);
            }
            ManageRequest::Moderate(action) => action,
        };
        let count = match action {
            Moderation::Remove { user, banned_until } => {
                let keys = of_user(self, &user)?;
                let reason = if banned_until.is_some() {
                    "banned"
                } else {
                    "removed"
                };
                for &k in &keys {
                    if let Some(participant) = self.members.get(&k).map(Member::event_participant) {
                        self.room_event(call_key, || RoomEventKind::ParticipantRemoved {
                            participant,
                            banned_until,
                        });
                    }
                    self.finish(k, reason.into());
                }
                keys.len()
            }
            Moderation::Mute { user, kind } => {
                let keys = of_user(self, &user)?;
                for &k in &keys {
                    self.set_muted(k, kind, true);
                    if let Some(m) = self.members.get_mut(&k) {
                        m.emit(SessionEvent::MutedByModerator { kind });
                    }
                }
                keys.len()
            }
            Moderation::RequestUnmute { user, kind } => {
                let keys = of_user(self, &user)?;
                for &k in &keys {
                    if let Some(m) = self.members.get_mut(&k) {
                        m.emit(SessionEvent::UnmuteRequested { kind });
                    }
                }
                keys.len()
            }
            Moderation::Update {
                user,
                role,
                permissions,
            } => {
                let keys = of_user(self, &user)?;
                for &k in &keys {
                    if let Some(m) = self.members.get_mut(&k) {
                        m.req.role.clone_from(&role);
                    }
                    self.set_permissions(k, permissions);
                    if let Some(m) = self.members.get_mut(&k) {
                        m.emit(SessionEvent::PermissionsChanged {
                            role: role.clone(),
                            permissions,
                        });
                    }
                    self.mark(k);
                }
                keys.len()
            }
            Moderation::End => {
                for &k in &members {
                    self.finish(k, "room ended".into());
                }
                members.len()
            }
            Moderation::Move => {
                for &k in &members {
                    self.finish(k, "moved".into());
                }
                members.len()
            }
        };
        Ok(Managed::Sessions(count))
    }

    /// The call's sessions (in join order) and their published tracks.
    fn describe(&self, call_key: CallKey) -> Option<RoomDetail> {
        let call = self.calls.get(&call_key)?;
        let participants = call
            .members
            .iter()
            .filter_map(|k| self.members.get(k))
            .map(|m| {
                let mut tids: Vec<TrackId> = m.published.values().copied().collect();
                tids.sort_unstable();
                ParticipantDetail {
                    session: m.req.session.clone(),
                    user: m.req.user.clone(),
                    display_name: m.req.display_name.clone(),
                    role: m.req.role.clone(),
                    permissions: m.req.permissions,
                    joined_at_ms: m.joined_at_ms,
                    tracks: tids
                        .iter()
                        .filter_map(|tid| call.tracks.get(tid))
                        .map(|t| PublishedTrack {
                            track_id: t.info.track_id.clone(),
                            kind: t.info.kind,
                            muted: t.muted,
                        })
                        .collect(),
                }
            })
            .collect();
        Some(RoomDetail {
            call: call.names.1.clone(),
            created_at_ms: call.created_at_ms,
            participants,
        })
    }

    /// Asks the client for an offer with enough receiving sections for every track to send
    /// (when that is news: [`Negotiation::request`]).
    fn negotiate(&mut self, key: SessionKey) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if let Some((audio, video)) = m.negotiation.request() {
            m.emit(SessionEvent::NegotiationNeeded { audio, video });
        }
    }

    /// Applies a client offer and answers it, placing every track this session should receive
    /// on a receiving section (module docs).
    fn offer(
        &mut self,
        key: SessionKey,
        sdp: String,
        declared: HashMap<String, TrackKind>,
    ) -> Result<(), SfuError> {
        let now = Instant::now();
        let sections = crate::sfu::check_offer(&sdp, &declared, self.config.max_sdp_bytes)?;
        let m = self.members.get_mut(&key).ok_or(SfuError::NotFound)?;
        tracing::trace!(session = %m.req.session, %sdp, "offer");
        m.peer
            .set_offer(&sdp, now)
            .map_err(|e| SfuError::InvalidArgument(format!("unusable SDP offer: {e}")))?;
        m.declared = declared;
        // New slots from the engine; sections the client no longer receives on.
        let engine_slots: Vec<(SlotId, String, bool, u32)> = m
            .peer
            .slots()
            .map(|s| (s.id, s.mid.clone(), s.kind == MediaKind::Audio, s.ssrc))
            .collect();
        for (id, mid, audio, ssrc) in engine_slots {
            let rtx_ssrc = None;
            if m.slots.iter().any(|s| s.id == id) {
                continue;
            }
            let i = m.negotiation.add_slot(audio);
            debug_assert_eq!(i, m.slots.len(), "slots are numbered alike");
            m.slots.push(MemberSlot {
                id,
                mid,
                audio,
                ssrc,
                rtx_ssrc,
                codecs: Vec::new(),
                extensions: Vec::new(),
                down: None,
            });
        }
        let receiving: Vec<bool> = m
            .slots
            .iter()
            .map(|slot| sections.iter().any(|s| s.mid == slot.mid && s.receives()))
            .collect();
        let lost = m.negotiation.offer(|i| receiving[i]);
        for (i, tid) in lost {
            self.unsubscribe(key, i, tid);
        }
        // Waiting tracks onto free slots of their media.
        let m = self.members.get_mut(&key).ok_or(SfuError::NotFound)?;
        let call_key = m.call;
        let cooling = m.negotiation.cooling();
        let mut placed = Vec::new();
        if m.req.permissions.subscribe
            && let Some(call) = self.calls.get(&call_key)
        {
            placed = m.negotiation.place(|tid| call.tracks.contains_key(&tid));
        }
        let directions: Vec<(SlotId, bool)> = m
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, m.negotiation.sends(i)))
            .collect();
        for (id, send) in directions {
            m.peer.set_slot_sending(id, send);
        }
        let answer = m
            .peer
            .answer(now)
            .map_err(|e| SfuError::InvalidArgument(format!("cannot answer this offer: {e}")))?;
        for s in m.peer.slots() {
            if let Some(ms) = m.slots.iter_mut().find(|x| x.id == s.id) {
                ms.codecs = s.codecs.clone();
                ms.extensions = s.extensions.clone();
                ms.rtx_ssrc = s.rtx_ssrc;
            }
        }
        let mut current = HashMap::new();
        if let Some(call) = self.calls.get(&call_key) {
            for (i, tid) in m.negotiation.busy() {
                let s = &m.slots[i];
                if let Some(t) = call.tracks.get(&tid) {
                    current.insert(
                        s.mid.clone(),
                        sdp::Msid {
                            stream: t.info.session.as_str().to_owned(),
                            track: t.info.track_id.clone(),
                        },
                    );
                }
            }
        }
        let answer_sdp = sdp::polish_answer(&answer.sdp, &current);
        tracing::trace!(session = %m.req.session, sdp = %answer_sdp, "answer");
        m.emit(SessionEvent::Answer(answer_sdp));
        if m.ufrags.insert(answer.ufrag.clone()) {
            if let Some(tcp) = &self.tcp {
                tcp.register(key, &answer.ufrag);
            }
            let _ = self.demux.send(DemuxUpdate::Register {
                key,
                ufrag: answer.ufrag,
            });
        }
        let first = !m.negotiation.offered();
        m.negotiation.answered(&cooling);
        if first {
            for (c, mid, index) in std::mem::take(&mut m.pending_candidates) {
                if let Err(e) = m.peer.add_remote_candidate(&c, mid, index) {
                    m.emit(SessionEvent::Error(SfuError::InvalidArgument(
                        e.to_string(),
                    )));
                }
            }
        }
        m.track_ids = sections
            .iter()
            .filter_map(|s| Some((s.mid.clone(), s.track_id.clone()?)))
            .collect();
        m.sending_mids = sections
            .iter()
            .filter(|s| s.sends())
            .map(|s| s.mid.clone())
            .collect();
        self.sync_publishing(key);
        for i in placed {
            self.subscribe(key, i, now);
        }
        if self
            .members
            .get(&key)
            .is_some_and(|m| m.negotiation.has_pending())
        {
            self.negotiate(key);
        }
        Ok(())
    }

    /// Follows the client's sending sections: a track whose section stopped sending is
    /// withdrawn; a section that sends again is published again.
    fn sync_publishing(&mut self, key: SessionKey) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let sending = m.sending_mids.clone();
        self.unpublish(key, |t| !sending.contains(&t.info.mid));
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let call = self.calls.get(&m.call);
        let again: Vec<String> = m
            .opened
            .keys()
            .filter(|mid| {
                sending.contains(*mid)
                    && !m.refused.contains_key(*mid)
                    && !m.published.values().any(|tid| {
                        call.and_then(|c| c.tracks.get(tid))
                            .is_some_and(|t| &t.info.mid == *mid)
                    })
            })
            .cloned()
            .collect();
        for mid in again {
            self.publish(key, &mid);
        }
    }

    /// Starts forwarding the track on slot `i` of session `key` (already marked busy).
    fn subscribe(&mut self, key: SessionKey, i: usize, now: Instant) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let Some(tid) = m.negotiation.track(i) else {
            return;
        };
        let Some(t) = self
            .calls
            .get_mut(&m.call)
            .and_then(|c| c.tracks.get_mut(&tid))
        else {
            m.negotiation.release(i);
            return;
        };
        let slot = &mut m.slots[i];
        let (payload_types, extensions) =
            maps(&t.codecs, &t.extensions, &slot.codecs, &slot.extensions);
        match slot.down.as_mut() {
            Some(down) => {
                down.set_maps(payload_types, extensions);
                down.switch_source(t.ssrc);
                // Holes the previous track left close now, before the new track's keyframe: a
                // receiver that waits for every sequence number would stall behind them.
                if m.peer.is_connected() {
                    send_fills(&mut m.peer, slot.id, down, now);
                }
            }
            None => {
                let kind = if slot.audio {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                };
                let clock_rate = t.codecs.first().map_or(90_000, |c| c.clock_rate);
                let mut config = DownTrackConfig::new(kind, slot.ssrc, clock_rate);
                config.rtx_ssrc = slot.rtx_ssrc;
                config.payload_types = payload_types;
                config.extensions = extensions;
                match DownTrack::new(config, t.ssrc) {
                    Ok(d) => slot.down = Some(d),
                    Err(e) => {
                        tracing::debug!(error = %e, "no down-track for a slot");
                        m.negotiation.release(i);
                        return;
                    }
                }
            }
        }
        t.subscribers.push((key, i));
        let info = TrackInfo {
            mid: slot.mid.clone(),
            ..t.info.clone()
        };
        let muted = t.muted;
        let want_keyframe = slot
            .down
            .as_mut()
            .and_then(|d| d.poll_keyframe_request(now))
            .is_some();
        let kind = info.kind;
        m.kind_gauge(kind, false).inc();
        let (session, user) = (info.session.clone(), info.user.clone());
        m.emit(SessionEvent::TrackPublished(info));
        // A late joiner learns a muted track's state with the track, not at the next change.
        if muted {
            m.emit(SessionEvent::MuteChanged {
                session,
                user,
                kind,
                muted: true,
            });
        }
        if want_keyframe {
            let call = m.call;
            self.request_keyframe(&call, tid, now);
        }
    }

    /// Stops forwarding `tid` on slot `i` of `key` (the slot's state is the caller's).
    fn unsubscribe(&mut self, key: SessionKey, i: usize, tid: TrackId) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        if let Some(t) = self
            .calls
            .get_mut(&m.call)
            .and_then(|c| c.tracks.get_mut(&tid))
        {
            t.subscribers.retain(|&(k, s)| !(k == key && s == i));
            m.kind_gauge(t.info.kind, false).dec();
        }
    }

    /// Stops sending on slot `i` at once (its track is gone or no longer allowed); the next
    /// answer marks it inactive.
    fn free_slot(&mut self, key: SessionKey, i: usize) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if let Some(tid) = m.negotiation.free(i) {
            self.slot_stopped(key, i, tid);
        }
    }

    /// Slot `i` of `key` no longer carries `tid`: forwarding stops and the client is told.
    fn slot_stopped(&mut self, key: SessionKey, i: usize, tid: TrackId) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let info = self
            .calls
            .get(&m.call)
            .and_then(|c| c.tracks.get(&tid))
            .map(|t| TrackInfo {
                mid: String::new(),
                ..t.info.clone()
            });
        self.unsubscribe(key, i, tid);
        if let Some(m) = self.members.get_mut(&key) {
            // Nothing more comes from that track: holes it left close now.
            if let Some(ms) = m.slots.get_mut(i)
                && let Some(down) = ms.down.as_mut()
            {
                down.detach();
                if m.peer.is_connected() {
                    send_fills(&mut m.peer, ms.id, down, Instant::now());
                }
            }
            if let Some(info) = info {
                m.emit(SessionEvent::TrackRemoved(info));
            }
        }
    }

    fn publish(&mut self, key: SessionKey, mid: &str) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        let Some(opened) = m.opened.get(mid).cloned() else {
            return;
        };
        let legacy_screen = opened.kind == MediaKind::Video
            && m.screen_track_id.is_some()
            && m.track_ids.get(mid) == m.screen_track_id.as_ref();
        let kind = m.declared.get(mid).copied().unwrap_or(match opened.kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video if legacy_screen => TrackKind::Screen,
            MediaKind::Video => TrackKind::Video,
        });
        let refusal = if !m.req.permissions.may_publish(kind) {
            Some(SfuError::InvalidArgument(format!(
                "this session may not publish {}",
                kind.as_str()
            )))
        } else if m.published.len() >= self.config.max_tracks_per_session {
            Some(SfuError::LimitReached("tracks per session"))
        } else {
            None
        };
        if let Some(err) = refusal {
            tracing::info!(client = %m.req.tenant, session = %m.req.session, kind = kind.as_str(), error = %err, "track refused");
            let reason = match err {
                SfuError::LimitReached(_) => "over_limit",
                _ => "not_permitted",
            };
            let counter = self
                .metrics
                .sfu
                .dropped_packets
                .get_or_create(&ReasonLabels {
                    client_id: m.req.tenant.as_str().to_owned(),
                    reason,
                })
                .clone();
            m.refused.insert(mid.to_owned(), counter);
            m.count_error(&err);
            m.emit(SessionEvent::Error(err));
            return;
        }
        let tid = self.next_track;
        self.next_track += 1;
        let labels = KindLabels {
            client_id: m.req.tenant.as_str().to_owned(),
            kind: kind.as_str(),
        };
        let sfu = &self.metrics.sfu;
        let counters = TrackCounters {
            forwarded: sfu.forwarded_packets.get_or_create(&labels).clone(),
            bytes: sfu.forwarded_bytes.get_or_create(&labels).clone(),
            muted: sfu
                .dropped_packets
                .get_or_create(&ReasonLabels {
                    client_id: labels.client_id.clone(),
                    reason: "muted",
                })
                .clone(),
        };
        let vad = (kind == TrackKind::Audio)
            .then(|| {
                opened
                    .extensions
                    .iter()
                    .find(|e| e.uri == AUDIO_LEVEL_URI)
                    .map(|e| (e.id, VoiceDetector::default()))
            })
            .flatten();
        let buffer = (opened.kind == MediaKind::Video)
            .then(|| {
                RetransmitBuffer::new(self.config.nack_buffer_packets)
                    .ok()
                    .map(|b| b.with_max_age(self.config.nack_buffer_age))
            })
            .flatten();
        let track_id = format!("{}-{}-{}", m.req.session, kind.as_str(), tid);
        let published = Published {
            owner: key,
            key: opened.track,
            info: TrackInfo {
                session: m.req.session.clone(),
                user: m.req.user.clone(),
                display_name: m.req.display_name.clone(),
                kind,
                track_id: track_id.clone(),
                mid: mid.to_owned(),
            },
            ssrc: opened.ssrc,
            codecs: opened.codecs.clone(),
            extensions: opened.extensions.clone(),
            muted: m.muted.contains(&kind),
            buffer,
            subscribers: Vec::new(),
            vad,
            last_pli: None,
            counters,
        };
        m.published.insert(opened.track, tid);
        m.kind_gauge(kind, true).inc();
        tracing::info!(session = %m.req.session, call = %m.req.call, track = %track_id, kind = kind.as_str(), "track published");
        let call_key = m.call;
        let owner = m.event_participant();
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        call.tracks.insert(tid, published);
        self.room_event(call_key, || RoomEventKind::TrackPublished {
            participant: owner,
            track_id,
            kind,
        });
        let Some(call) = self.calls.get(&call_key) else {
            return;
        };
        let others: Vec<SessionKey> = call.members.iter().copied().filter(|k| *k != key).collect();
        for k in others {
            if let Some(o) = self.members.get_mut(&k)
                && o.req.permissions.subscribe
            {
                o.negotiation.want(tid, kind.is_audio());
                self.negotiate(k);
            }
        }
    }

    /// Withdraws `key`'s tracks matching `which` from the call: every subscriber's slot stops
    /// at once and asks for a new offer.
    fn unpublish(&mut self, key: SessionKey, which: impl Fn(&Published) -> bool) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let call_key = m.call;
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let gone: Vec<TrackId> = m
            .published
            .values()
            .copied()
            .filter(|tid| call.tracks.get(tid).is_some_and(&which))
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut affected: Vec<SessionKey> = Vec::new();
        for tid in &gone {
            let Some(t) = call.tracks.get(tid) else {
                continue;
            };
            for &(sub, slot) in &t.subscribers {
                affected.push(sub);
                let _ = slot;
            }
        }
        // Subscribers first (their slots go cooling and report TrackRemoved), then the track.
        for tid in &gone {
            let subs: Vec<(SessionKey, usize)> = self
                .calls
                .get(&call_key)
                .and_then(|c| c.tracks.get(tid))
                .map(|t| t.subscribers.clone())
                .unwrap_or_default();
            for (sub, slot) in subs {
                self.free_slot(sub, slot);
            }
        }
        let members: Vec<SessionKey> = self
            .calls
            .get(&call_key)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for k in members {
            if let Some(o) = self.members.get_mut(&k)
                && o.negotiation.forget(|tid| gone.contains(&tid))
            {
                affected.push(k);
            }
        }
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.published.retain(|_, tid| !gone.contains(tid));
        let owner = m.event_participant();
        let mut withdrawn = Vec::new();
        if let Some(call) = self.calls.get_mut(&call_key) {
            for tid in &gone {
                if let Some(t) = call.tracks.remove(tid) {
                    m.kind_gauge(t.info.kind, true).dec();
                    tracing::info!(session = %m.req.session, call = %m.req.call, track = %t.info.track_id, "track withdrawn");
                    withdrawn.push((t.info.track_id, t.info.kind));
                }
            }
        }
        for (track_id, kind) in withdrawn {
            let participant = owner.clone();
            self.room_event(call_key, || RoomEventKind::TrackUnpublished {
                participant,
                track_id,
                kind,
            });
        }
        affected.sort_unstable();
        affected.dedup();
        for k in affected {
            self.negotiate(k);
            self.mark(k);
        }
    }

    /// Ends a session: its tracks are withdrawn, then the others learn it left.
    fn finish(&mut self, key: SessionKey, reason: String) {
        if !self.members.contains_key(&key) {
            return;
        }
        self.unpublish(key, |_| true);
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
                m.kind_gauge(t.info.kind, false).dec();
            }
        }
        m.peer.close();
        while let Some((transport, data)) = m.peer.poll_transmit() {
            transmit(
                &self.socket,
                &mut self.send,
                self.tcp.as_deref(),
                transport,
                data,
            );
        }
        flush(&self.socket, &mut self.send);
        let _ = self.demux.send(DemuxUpdate::Remove { key });
        if let Some(tcp) = &self.tcp {
            tcp.remove(key);
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
                    o.emit(SessionEvent::ParticipantLeft(me.clone()));
                }
            }
        }
        if call_gone {
            self.room_event(call_key, || RoomEventKind::RoomFinished);
        }
        if call_gone && let Some(call) = self.calls.remove(&call_key) {
            self.call_ids.remove(&call.names);
        }
        m.inner
            .metrics
            .sfu
            .sessions
            .get_or_create(&tenant_label(&m.req.tenant))
            .dec();
        m.inner
            .remove_session(&m.req.tenant, &m.req.call, &m.req.session);
        let _ = m.events.try_send(SessionEvent::Closed { reason });
        m.ended.cancel();
    }
}

/// Source payload types and extension ids to the subscriber's, matched by codec (MIME type and,
/// where several match, format parameters) and by extension URI.
fn maps(
    source: &[Codec],
    source_ext: &[HeaderExtension],
    sub: &[Codec],
    sub_ext: &[HeaderExtension],
) -> (PayloadTypeMap, ExtensionMap) {
    let mut pts = PayloadTypeMap::new();
    for c in source {
        let same: Vec<&Codec> = sub.iter().filter(|s| s.mime_type == c.mime_type).collect();
        let chosen = same
            .iter()
            .find(|s| s.fmtp == c.fmtp)
            .or_else(|| same.first())
            .copied();
        if let Some(s) = chosen {
            let _ = pts.insert(c.payload_type, s.payload_type, s.rtx_payload_type);
        }
    }
    let mut ext = ExtensionMap::new();
    for e in source_ext {
        if let Some(s) = sub_ext.iter().find(|s| s.uri == e.uri) {
            let _ = ext.insert(e.id, s.id);
        }
    }
    (pts, ext)
}

/// Sends every padding packet `down` has to close holes in its subscriber's sequence space
/// now ([`DownTrack::poll_fill`]); returns whether one closed a hole of the current source (a
/// lost frame: its publisher should be asked for a keyframe).
fn send_fills(peer: &mut Peer, slot: SlotId, down: &mut DownTrack, now: Instant) -> bool {
    let mut lost_frame = false;
    while let Some(fill) = down.poll_fill(now) {
        lost_frame |= fill.current;
        if let Err(e) = peer.send_padding(slot, &fill.header, now) {
            tracing::debug!(error = %e, "padding failed");
        }
    }
    lost_frame
}

/// One datagram from a peer: onto the UDP batch, or to its ICE-TCP connection.
fn transmit(
    socket: &BatchSocket,
    batch: &mut SendBatch,
    tcp: Option<&TcpRoutes>,
    transport: Transport,
    data: bytes::BytesMut,
) {
    if transport.protocol == Protocol::Tcp {
        if let Some(tcp) = tcp {
            tcp.send(transport, data.freeze());
        }
        return;
    }
    if batch.push(transport.peer, &data).is_err() {
        flush(socket, batch);
        let _ = batch.push(transport.peer, &data);
    }
}

fn flush(socket: &BatchSocket, batch: &mut SendBatch) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = socket.send_batch(batch) {
        tracing::error!(error = %e, "media UDP socket broken; media cannot be sent");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

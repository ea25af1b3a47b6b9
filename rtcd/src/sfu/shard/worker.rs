//! One media worker thread: it owns a shard of calls ([`Rooms`], the sans-IO core that holds
//! every session, slot and published track and decides everything about them) and carries out
//! what the core asks: datagrams onto the shared UDP port in `sendmmsg` batches (or onto ICE-TCP
//! connections), events into each session's signaling queue, routes to the receiving worker's
//! demultiplexer, room events to their sink, and timers on one heap. It serialises everything
//! that touches its calls: signaling commands, datagrams and timers. Nothing here is shared
//! with another thread, so nothing is locked. Worker 0 also reads the shared UDP port
//! (`receive`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::receive::Receiver;
use super::{Datagram, DemuxUpdate, Joining, Manage, SessionKey, TcpRoutes, WorkerCommand};
use crate::engine::bwe::Departures;
use crate::engine::net::udp::{BatchSocket, SendBatch};
use crate::engine::net::{Protocol, Transport};
use crate::engine::{Identity, PeerSettings};
use crate::metrics::Metrics;
use crate::sfu::events::RoomEventSink;
use crate::sfu::room::{Output, Rooms, Setup};
use crate::sfu::session::{EventSender, SessionEvent};
use crate::sfu::{SfuConfig, SfuInner, unix_ms};

/// Datagrams handled per wake-up before timers and sends get their turn.
const DATAGRAM_BATCH: usize = 64;
/// A round (settle and flush) this long is logged at debug: what `rtcd_media_send_lag_seconds`
/// counts, with the time it happened, to set beside the estimators' decisions.
const SLOW_ROUND: Duration = Duration::from_millis(5);
/// Datagrams per `sendmmsg`.
const SEND_BATCH: usize = 64;

/// A session's ends outside the core: its signaling queue and the registry it was admitted by.
struct Link {
    inner: Arc<SfuInner>,
    events: EventSender,
    /// Cancelled when the session has ended (its bridge task then stops).
    ended: CancellationToken,
}

/// What every worker shares with the others.
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
    /// Registrations for the receiving worker's demultiplexer.
    pub demux: std::sync::mpsc::Sender<DemuxUpdate>,
    pub metrics: Arc<Metrics>,
    pub config: SfuConfig,
    /// Where room events go (webhooks), if anywhere.
    pub room_events: Option<RoomEventSink>,
    /// This worker's forwarded packets, for the host's load (`GET /system`): one counter per
    /// worker, so workers never share its cache line.
    pub forwarded: Arc<std::sync::atomic::AtomicU64>,
}

/// A worker thread's state. See the module docs.
pub(super) struct Worker {
    index: usize,
    socket: Arc<BatchSocket>,
    tcp: Option<Arc<TcpRoutes>>,
    demux: std::sync::mpsc::Sender<DemuxUpdate>,
    room_events: Option<RoomEventSink>,
    rooms: Rooms,
    links: HashMap<SessionKey, Link>,
    timers: BinaryHeap<Reverse<(Instant, SessionKey)>>,
    send: SendBatch,
    /// Sessions whose signaling queue overflowed: they end (v1's policy: the proxy stopped
    /// reading, and waiting would pin the worker).
    backlog: Vec<SessionKey>,
    /// `rtcd_media_send_lag_seconds`.
    send_lag: Histogram,
    /// When each round's packets left, for the estimators of this worker's peers (if they
    /// estimate: `PeerSettings::estimation`).
    departures: Option<Departures>,
}

impl Worker {
    pub(super) fn new(index: usize, wiring: Wiring) -> Self {
        let Wiring {
            socket,
            tcp,
            identity,
            mut settings,
            demux,
            metrics,
            config,
            room_events,
            forwarded,
        } = wiring;
        let send_lag = metrics.media_send_lag.clone();
        let departures = settings.estimation.then(|| Departures::new(Instant::now()));
        settings.departures = departures.clone();
        let rooms = Rooms::new(Setup {
            index,
            identity,
            settings,
            metrics,
            config,
            room_events: room_events.is_some(),
            forwarded,
        });
        Self {
            index,
            socket,
            tcp,
            demux,
            room_events,
            rooms,
            links: HashMap::new(),
            timers: BinaryHeap::new(),
            send: SendBatch::new(SEND_BATCH),
            backlog: Vec::new(),
            send_lag,
            departures,
        }
    }

    /// The thread's body: a single-threaded runtime whose one task owns everything. With a
    /// `receiver` (worker 0), the worker also reads the shared UDP port when it is readable.
    pub(super) fn run(
        mut self,
        mut commands: mpsc::Receiver<WorkerCommand>,
        mut datagrams: mpsc::Receiver<Datagram>,
        mut receiver: Option<Receiver>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .enable_io()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = self.index, error = %e, "media worker cannot start");
                return;
            }
        };
        runtime.block_on(async move {
            // Registered with this thread's reactor (edge-triggered): read until the socket
            // says it is empty, one batch per turn of the loop.
            // `AsyncFd::with_interest` is deprecated because safe code cannot promise the
            // descriptor outlives its registration; here it does: the `AsyncFd` owns an `Arc` of
            // the socket. (tokio's own `UdpSocket` refuses a blocking socket, and the socket's
            // sends rely on blocking with a timeout; the workspace forbids `unsafe`.)
            #[allow(deprecated)]
            let mut port = receiver.as_ref().and_then(|r| {
                AsyncFd::with_interest(r.socket.clone(), Interest::READABLE)
                    .inspect_err(|e| {
                        tracing::error!(worker = self.index, error = %e, "media UDP socket cannot be watched; no more media is received");
                    })
                    .ok()
            });
            let mut inbox = Vec::with_capacity(DATAGRAM_BATCH);
            loop {
                let deadline = self.next_deadline();
                let mut read_port = false;
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
                            self.rooms.datagram(d.key, d.transport, &d.data, d.arrived.min(now));
                        }
                        // The port gets its turn too: this branch comes first, and a steady
                        // ICE-TCP stream would otherwise keep the port from being read.
                        read_port = true;
                    }
                    ready = readable(port.as_ref()) => match ready {
                        Ok(()) => read_port = true,
                        Err(e) => {
                            tracing::error!(error = %e, "media UDP socket cannot be watched; no more media is received");
                            port = None;
                        }
                    },
                    _ = sleep_until(deadline) => {}
                }
                if read_port
                    && let (Some(p), Some(r)) = (port.as_ref(), receiver.as_mut())
                    // `WouldBlock`: the socket is empty (its readiness is cleared) or was not
                    // ready; one batch per turn, so commands and timers keep theirs.
                    && let Err(e) = p.try_io(Interest::READABLE, |_| self.receive(r))
                    && e.kind() != std::io::ErrorKind::WouldBlock
                {
                    tracing::error!(error = %e, "media UDP socket broken; no more media is received");
                    port = None;
                }
                self.run_timers(Instant::now());
                self.settle();
            }
            let now = Instant::now();
            for key in self.rooms.sessions() {
                self.rooms.end(key, "shutdown".into(), now);
            }
            self.settle();
        });
    }

    /// One batch from the shared UDP port: other workers' datagrams queued to them, this
    /// worker's handled at once.
    fn receive(&mut self, receiver: &mut Receiver) -> std::io::Result<usize> {
        let rooms = &mut self.rooms;
        // `arrived` is the kernel's receive time (never after the read returned).
        receiver.receive(|key, transport, data, arrived| {
            rooms.datagram(key, transport, data, arrived);
        })
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if self.rooms.deadline(key) == Some(at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.rooms.timeout(key, at, now);
        }
    }

    /// Lets the core drain every touched session, then carries out what it asked; sessions
    /// whose signaling queue overflowed end, and what their ending asks is carried out too.
    fn settle(&mut self) {
        // Every packet written in this round leaves at the flush: the lag is how long after
        // the round started that is (the estimators read the flush's end: `Departures`).
        let started = Instant::now();
        self.rooms.settle(started);
        self.carry_out();
        let lag = started.elapsed();
        self.send_lag.observe(lag.as_secs_f64());
        if lag >= SLOW_ROUND {
            tracing::debug!(
                worker = self.index,
                lag_ms = lag.as_secs_f64() * 1e3,
                "slow media round"
            );
        }
        while !self.backlog.is_empty() {
            let now = Instant::now();
            for key in std::mem::take(&mut self.backlog) {
                self.rooms.end(key, "signaling backlog".into(), now);
            }
            self.carry_out();
        }
    }

    /// Sends what the core queued (one flush), closing the round of the estimators' clock if
    /// anything left, and delivers its outputs, in order.
    fn carry_out(&mut self) {
        let mut sent = false;
        while let Some((transport, data)) = self.rooms.poll_transmit() {
            sent = true;
            transmit(
                &self.socket,
                &mut self.send,
                self.tcp.as_deref(),
                transport,
                data,
            );
        }
        flush(&self.socket, &mut self.send);
        if sent && let Some(departures) = &self.departures {
            departures.flushed(Instant::now());
        }
        while let Some(output) = self.rooms.poll_output() {
            match output {
                Output::Event { key, event } => {
                    let Some(link) = self.links.get(&key) else {
                        continue;
                    };
                    if let Err(mpsc::error::TrySendError::Full(_)) = link.events.try_send(event)
                        && !self.backlog.contains(&key)
                    {
                        self.backlog.push(key);
                    }
                }
                Output::Route { key, ufrag } => {
                    if let Some(tcp) = &self.tcp {
                        tcp.register(key, &ufrag);
                    }
                    let _ = self.demux.send(DemuxUpdate::Register { key, ufrag });
                }
                Output::Timer { key, at } => self.timers.push(Reverse((at, key))),
                Output::Room(mut event) => {
                    if let Some(sink) = &self.room_events {
                        event.at_ms = unix_ms();
                        sink.emit(event);
                    }
                }
                Output::Ended {
                    key,
                    tenant,
                    call,
                    session,
                    reason,
                } => {
                    let _ = self.demux.send(DemuxUpdate::Remove { key });
                    if let Some(tcp) = &self.tcp {
                        tcp.remove(key);
                    }
                    self.backlog.retain(|k| *k != key);
                    if let Some(link) = self.links.remove(&key) {
                        link.inner.remove_session(&tenant, &call, &session);
                        let _ = link.events.try_send(SessionEvent::Closed { reason });
                        link.ended.cancel();
                    }
                }
            }
        }
    }

    fn command(&mut self, command: WorkerCommand) {
        let now = Instant::now();
        match command {
            WorkerCommand::Join(joining) => self.join(*joining, now),
            WorkerCommand::End { key, reason } => self.rooms.end(key, reason, now),
            WorkerCommand::Manage(manage) => {
                let Manage {
                    tenant,
                    call,
                    request,
                    reply,
                } = *manage;
                let answer = self.rooms.manage(tenant, call, request, now);
                // What it did is carried out before the caller hears of it.
                self.carry_out();
                // The caller may have given up (its RPC was cancelled); nothing to undo.
                let _ = reply.send(answer);
            }
            WorkerCommand::Session { key, command } => self.rooms.command(key, command, now),
        }
        self.carry_out();
    }

    fn join(&mut self, j: Joining, now: Instant) {
        let Joining {
            key,
            inner,
            req,
            call_created_ms,
            events,
            ended,
        } = j;
        let (tenant, call, session) = (req.tenant.clone(), req.call.clone(), req.session.clone());
        if self
            .rooms
            .join(key, req, call_created_ms, unix_ms(), now)
            .is_err()
        {
            inner.remove_session(&tenant, &call, &session);
            let _ = events.try_send(SessionEvent::Closed {
                reason: "media engine error".into(),
            });
            ended.cancel();
            return;
        }
        self.links.insert(
            key,
            Link {
                inner,
                events,
                ended,
            },
        );
    }
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

/// Readiness of the shared UDP port, if this worker reads it (never, if not).
async fn readable(port: Option<&AsyncFd<Arc<BatchSocket>>>) -> std::io::Result<()> {
    match port {
        // The guard is not kept: `try_io` on the `AsyncFd` clears readiness when it must.
        Some(port) => port.readable().await.map(drop),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

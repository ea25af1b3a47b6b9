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
use crate::engine::net::udp::{BatchSocket, SEND_CHUNK, SendBatch};
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
    /// `SfuConfig::read_coalesce`, for [`PortPace`].
    read_coalesce: Duration,
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
        let read_coalesce = config.read_coalesce;
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
            // A round's datagrams go out at most one `sendmmsg`'s worth at a time (GSO can
            // make them fewer messages than datagrams, never more).
            send: SendBatch::new(SEND_CHUNK),
            backlog: Vec::new(),
            send_lag,
            departures,
            read_coalesce,
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
            let mut pace = PortPace::new(self.read_coalesce, Instant::now());
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
                    && let Err(e) = {
                        let read = p.try_io(Interest::READABLE, |_| self.receive(r));
                        pace.read(Instant::now(), read.as_ref().map_or(0, |n| *n));
                        read
                    }
                    && e.kind() != std::io::ErrorKind::WouldBlock
                {
                    tracing::error!(error = %e, "media UDP socket broken; no more media is received");
                    port = None;
                }
                self.run_timers(Instant::now());
                self.settle();
                if let Some(pause) = pace.pause(Instant::now()) {
                    // This thread is the worker's own: nothing else waits on it meanwhile but
                    // its queues, which the pause is far shorter than.
                    std::thread::sleep(pause);
                }
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

/// Datagrams per second on the shared port from which [`PortPace`] spaces its reads: eight
/// or more gather per wait of a millisecond (the default `rtc.read_coalesce_us`). Below, a
/// wait gathers too few to pay for its own wake-up (fan-out 16, about 3,000 a second with its
/// subscribers' feedback, measured no gain at a threshold of 3,000), and a quiet host keeps its
/// latency.
const BUSY_RATE: u64 = 8_000;
/// How often [`PortPace`] measures the port's rate.
const RATE_PERIOD: Duration = Duration::from_millis(100);

/// Spaces the reads of the shared UDP port under load. A read that emptied the socket found
/// only what arrived since the previous one: at 16,000 datagrams a second spread over a hundred
/// two-person calls that is two or three, and every read is a wake-up, a `recvmmsg`, a round of
/// timers and a `sendmmsg` for them. While the port is busy the worker waits until `coalesce`
/// after such a read before the next, so a batch gathers instead (the kernel stamps each
/// datagram's arrival, so the estimators are not misled by the wait; what was read has left
/// before it). A read that filled its batch is followed at once (the socket holds more, and
/// waiting would cap the rate), and below [`BUSY_RATE`] nothing waits.
struct PortPace {
    /// How long after a read that drained the port the next waits (zero: never).
    coalesce: Duration,
    /// When the last read that drained the socket happened, while the port is busy.
    drained_at: Option<Instant>,
    /// Datagrams read since `since`.
    count: u64,
    since: Instant,
    busy: bool,
}

impl PortPace {
    fn new(coalesce: Duration, now: Instant) -> Self {
        Self {
            coalesce,
            drained_at: None,
            count: 0,
            since: now,
            busy: false,
        }
    }

    /// After a read of the port that returned `n` datagrams at `now` (0: it was empty).
    fn read(&mut self, now: Instant, n: usize) {
        self.count += n as u64;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= RATE_PERIOD {
            self.busy = u128::from(self.count) * 1_000_000 / elapsed.as_micros().max(1)
                >= u128::from(BUSY_RATE);
            self.count = 0;
            self.since = now;
        }
        self.drained_at =
            (self.busy && !self.coalesce.is_zero() && n < crate::engine::net::udp::RECV_BATCH)
                .then_some(now);
    }

    /// At the end of a round, before waiting for the port again: how long to sleep first
    /// (while it is busy, the rest of `coalesce` after a read that drained it). The round's
    /// packets have left by then.
    fn pause(&mut self, now: Instant) -> Option<Duration> {
        let resume = self.drained_at.take()? + self.coalesce;
        (resume > now).then(|| resume - now)
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
    if let Err(e) = socket.queue(batch, transport.peer, &data) {
        send_failed(&e);
    }
}

fn flush(socket: &BatchSocket, batch: &mut SendBatch) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = socket.send_batch(batch) {
        send_failed(&e);
    }
}

/// The one error an operator must act on when sending: the socket itself is broken (a
/// destination's error is counted, not logged, by `BatchSocket`).
fn send_failed(e: &std::io::Error) {
    tracing::error!(error = %e, "media UDP socket broken; media cannot be sent");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::net::udp::RECV_BATCH;

    const COALESCE: Duration = Duration::from_millis(1);

    /// A pace that has measured a busy port: `BUSY_RATE` datagrams a second over a period.
    fn busy(start: Instant) -> (PortPace, Instant) {
        busy_with(COALESCE, start)
    }

    fn busy_with(coalesce: Duration, start: Instant) -> (PortPace, Instant) {
        let mut pace = PortPace::new(coalesce, start);
        let per_read = 8;
        let reads = BUSY_RATE as usize * RATE_PERIOD.as_millis() as usize / 1000 / per_read;
        let step = RATE_PERIOD / reads as u32;
        let mut now = start;
        for _ in 0..reads {
            now += step;
            pace.read(now, per_read);
        }
        (pace, now)
    }

    #[test]
    fn a_quiet_port_is_read_as_soon_as_it_is_readable() {
        let start = Instant::now();
        let mut pace = PortPace::new(COALESCE, start);
        let mut now = start;
        // A two-person call: a datagram every 3 ms or so, each read alone.
        for _ in 0..200 {
            now += Duration::from_millis(3);
            pace.read(now, 1);
            assert_eq!(pace.pause(now + Duration::from_micros(50)), None);
        }
        assert!(!pace.busy);
    }

    #[test]
    fn a_busy_port_drained_is_left_to_fill_for_the_rest_of_the_coalescing_time() {
        let (mut pace, now) = busy(Instant::now());
        assert!(pace.busy, "{BUSY_RATE} datagrams a second count as busy");
        pace.read(now, 3);
        let done = now + Duration::from_micros(300);
        assert_eq!(
            pace.pause(done),
            Some(COALESCE - Duration::from_micros(300))
        );
        // Once: the next round (a command, a timer) does not wait again for the same read.
        assert_eq!(pace.pause(done), None);
        // A round that took longer than the coalescing time does not wait at all.
        pace.read(now, 3);
        assert_eq!(pace.pause(now + COALESCE), None);
    }

    #[test]
    fn a_full_batch_is_followed_at_once_as_the_socket_holds_more() {
        let (mut pace, now) = busy(Instant::now());
        pace.read(now, RECV_BATCH);
        assert_eq!(pace.pause(now), None);
    }

    #[test]
    fn no_coalescing_configured_never_waits() {
        let (mut pace, now) = busy_with(Duration::ZERO, Instant::now());
        assert!(pace.busy);
        pace.read(now, 1);
        assert_eq!(pace.pause(now), None);
    }

    #[test]
    fn a_port_that_quietens_stops_waiting_after_one_period() {
        let (mut pace, mut now) = busy(Instant::now());
        now += RATE_PERIOD;
        pace.read(now, 1);
        assert!(!pace.busy, "one datagram in a period is not busy");
        assert_eq!(pace.pause(now), None);
    }
}

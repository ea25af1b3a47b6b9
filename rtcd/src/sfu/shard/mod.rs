//! The v2 media engine's threads: calls sharded over worker threads, one shared UDP port.
//!
//! ```text
//!  UDP port ──recvmmsg──▶ worker 0 ──demux (ufrag, 5-tuple)──▶ its own calls ──sendmmsg/GSO──▶ UDP port
//!                            └────────────────────────────────▶ worker k ─────sendmmsg/GSO──▶ UDP port
//!                                                                  ▲
//!  signaling (tokio) ──SessionHandle──▶ bridge task ──────────────┘ commands; events go straight back
//! ```
//!
//! * A call lives on one worker ([`Shards::worker_of`]), so a call's packets never hop threads
//!   after they were read: a worker owns the [`crate::engine::Peer`]s, down-tracks and
//!   retransmission buffers of its calls, with no lock between receiving a packet and sending
//!   it to every subscriber.
//! * Worker 0 reads the UDP port (`receive`) and owns the demultiplexer; it handles its own
//!   calls' datagrams where it read them and queues the others' to their workers. Workers
//!   tell it about new and ended sessions over an unbounded control channel (a handful of
//!   messages per session, never per packet).
//! * Datagrams reach another worker over a bounded channel; when a worker falls behind, the
//!   newest datagram is dropped (as a full socket buffer would) and counted, and worker 0
//!   never waits for it.
//! * Each session keeps signaling's API ([`SessionHandle`], [`SessionCommand`],
//!   [`SessionEvent`]): a small bridge task per session forwards commands to the worker
//!   (awaiting, so a busy worker pushes back on that session's stream only) and turns a close
//!   or a dropped handle into an end of the session. Events go from the worker straight into
//!   the session's bounded event queue (overflow ends the session, as with v1).

mod receive;
mod worker;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::session::{EventSender, SessionCommand, SessionEvents, SessionHandle};
use super::{CallId, JoinRequest, Moderation, RoomDetail, SfuConfig, SfuError, SfuInner, TenantId};
use crate::engine::net::tcp::{IceTcpServer, TcpConfig, TcpHandler};
use crate::engine::net::udp::{BatchSocket, UdpConfig};
use crate::engine::net::{Inbound, Transport};
use crate::engine::{Identity, PeerSettings};

pub(crate) use super::room::{ManageRequest, Managed, SessionKey};

/// Datagrams queued per worker before the newest are dropped (about 0.1 s of 40 Mbit/s).
const DATAGRAM_QUEUE: usize = 4096;
/// Commands queued per worker before signaling waits.
const COMMAND_QUEUE: usize = 1024;

/// One received datagram for a worker.
pub(crate) struct Datagram {
    key: SessionKey,
    transport: Transport,
    data: BytesMut,
    /// When it arrived: the kernel's receive time (UDP), the read of its frame (ICE-TCP).
    /// The transport-cc feedback reports it, not when a busy worker got to the datagram.
    arrived: Instant,
}

/// What signaling asks of a worker.
pub(crate) enum WorkerCommand {
    /// A new session (the registry has admitted it).
    Join(Box<Joining>),
    /// A command of a session's signaling stream.
    Session {
        key: SessionKey,
        command: SessionCommand,
    },
    /// The session ends with this reason (leave, close, dropped handle).
    End { key: SessionKey, reason: String },
    /// Room management on a call of this worker; the answer goes back on `reply`.
    Manage(Box<Manage>),
}

/// A room-management request for the worker that owns the call.
pub(crate) struct Manage {
    tenant: TenantId,
    call: CallId,
    request: ManageRequest,
    reply: oneshot::Sender<Result<Managed, SfuError>>,
}

/// Everything a worker needs to start a session.
pub(crate) struct Joining {
    key: SessionKey,
    inner: Arc<SfuInner>,
    req: JoinRequest,
    /// When the call's first session joined (the registry's clock, Unix milliseconds).
    call_created_ms: i64,
    events: EventSender,
    /// Cancelled by the worker when the session has ended (the bridge task then stops).
    ended: CancellationToken,
}

/// What the receiving worker's demultiplexer learns from workers.
pub(crate) enum DemuxUpdate {
    /// Route STUN checks naming `ufrag` to `key` (a session answered; again on ICE restart).
    Register { key: SessionKey, ufrag: String },
    /// The session ended: forget its ufrags and 5-tuples.
    Remove { key: SessionKey },
}

/// The running v2 engine: its worker threads.
pub(crate) struct Shards {
    workers: Vec<mpsc::Sender<WorkerCommand>>,
    local_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    next_key: AtomicU64,
    /// Stops the ICE-TCP port (its accept loop and connections).
    tcp_stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Each worker's forwarded packets (see `worker::Wiring::forwarded`).
    forwarded: Vec<Arc<AtomicU64>>,
}

/// The ICE-TCP port as the workers see it: routes frames to sessions and sends on connections.
///
/// Unlike UDP, this path takes a lock per packet (two small maps): ICE-TCP is the fallback
/// for networks that block UDP, a few sessions, not the port every call shares.
pub(crate) struct TcpRoutes {
    server: Mutex<Option<Arc<IceTcpServer>>>,
    /// The listener's address, as connections report it.
    bound: SocketAddr,
    /// The address in our TCP candidate (the ICE agent matches datagrams to it).
    advertised: SocketAddr,
    ufrags: Mutex<HashMap<String, SessionKey>>,
    paths: Mutex<HashMap<Transport, SessionKey>>,
    workers: Vec<mpsc::Sender<Datagram>>,
}

impl TcpRoutes {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session answered with `ufrag`: ICE-TCP connections naming it are its own.
    pub(crate) fn register(&self, key: SessionKey, ufrag: &str) {
        Self::lock(&self.ufrags).insert(ufrag.to_owned(), key);
    }

    /// The session ended: its ufrags and connections route nowhere any more.
    pub(crate) fn remove(&self, key: SessionKey) {
        Self::lock(&self.ufrags).retain(|_, k| *k != key);
        Self::lock(&self.paths).retain(|_, k| *k != key);
    }

    /// Sends one packet the engine addressed to a TCP path.
    pub(crate) fn send(&self, transport: Transport, data: bytes::Bytes) {
        let server = Self::lock(&self.server).clone();
        let Some(server) = server else { return };
        // A connection's local address is the one the client connected to: our candidate's.
        let path = Transport::tcp(self.advertised, transport.peer);
        if let Err(e) = server.send(&path, data) {
            tracing::debug!(peer = %transport.peer, error = %e, "ICE-TCP packet dropped");
        }
    }
}

impl TcpHandler for TcpRoutes {
    fn accept(&self, transport: &Transport, ufrag: &str) -> bool {
        let key = Self::lock(&self.ufrags).get(ufrag).copied();
        match key {
            Some(key) => {
                Self::lock(&self.paths).insert(*transport, key);
                true
            }
            None => false,
        }
    }

    fn deliver(&self, inbound: Inbound) -> bool {
        let Some(key) = Self::lock(&self.paths).get(&inbound.transport).copied() else {
            return false;
        };
        let Some(inbox) = self.workers.get((key >> 48) as usize) else {
            return false;
        };
        inbox
            .try_send(Datagram {
                key,
                transport: Transport::tcp(self.advertised, inbound.transport.peer),
                data: BytesMut::from(&inbound.data[..]),
                arrived: Instant::now(),
            })
            .is_ok()
    }

    fn closed(&self, transport: &Transport) {
        Self::lock(&self.paths).remove(transport);
    }
}

impl Shards {
    /// Binds the shared UDP port (and the ICE-TCP port if configured) and starts one worker per
    /// core, the first of which reads the UDP port.
    pub(crate) async fn start(
        config: &SfuConfig,
        metrics: Arc<crate::metrics::Metrics>,
        room_events: Option<super::events::RoomEventSink>,
    ) -> Result<Self, SfuError> {
        let buffer = (config.udp_buffer_bytes > 0).then_some(config.udp_buffer_bytes);
        let socket = BatchSocket::bind(
            config.udp_addr,
            &UdpConfig {
                recv_buffer_bytes: buffer,
                send_buffer_bytes: buffer,
                ..UdpConfig::default()
            },
        )
        .map_err(|e| SfuError::Media(e.to_string()))?;
        let socket = Arc::new(socket);
        let bound = socket.local_addr();
        let advertised = SocketAddr::new(candidate_ip(config, bound.ip())?, bound.port());
        let identity = Identity::generate().map_err(|e| SfuError::Media(e.to_string()))?;
        let count = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 64);
        let (demux_tx, demux_rx) = std::sync::mpsc::channel();
        let mut workers = Vec::with_capacity(count);
        let mut inboxes = Vec::with_capacity(count);
        let mut receivers = Vec::with_capacity(count);
        for _ in 0..count {
            let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
            let (dg_tx, dg_rx) = mpsc::channel(DATAGRAM_QUEUE);
            workers.push(cmd_tx);
            inboxes.push(dg_tx);
            receivers.push((cmd_rx, dg_rx));
        }
        let mut candidates = vec![Transport::udp(advertised, advertised)];
        let tcp_stop = CancellationToken::new();
        let tcp = match config.ice_tcp_port {
            None => None,
            Some(port) => {
                let bind = SocketAddr::new(config.udp_addr.ip(), port);
                let probe = std::net::TcpListener::bind(bind).map_err(|e| {
                    SfuError::Media(format!("cannot listen on ICE-TCP {bind}: {e}"))
                })?;
                let bound = probe
                    .local_addr()
                    .map_err(|e| SfuError::Media(e.to_string()))?;
                drop(probe);
                let routes = Arc::new(TcpRoutes {
                    server: Mutex::new(None),
                    bound,
                    advertised: SocketAddr::new(advertised.ip(), bound.port()),
                    ufrags: Mutex::default(),
                    paths: Mutex::default(),
                    workers: inboxes.clone(),
                });
                let server = IceTcpServer::bind(
                    bound,
                    TcpConfig::default(),
                    routes.clone(),
                    tcp_stop.clone(),
                )
                .await
                .map_err(|e| SfuError::Media(e.to_string()))?;
                *routes.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(server));
                candidates.push(Transport::tcp(routes.advertised, routes.advertised));
                Some(routes)
            }
        };
        let settings = PeerSettings {
            candidates,
            disconnected_timeout: config.ice_disconnected_timeout,
            failed_timeout: config.ice_failed_timeout,
            // The estimate drives adaptive video and nothing else.
            estimation: config.adaptive_video,
            // Each worker sets its own clock (`Worker::new`).
            departures: None,
        };
        // Through this closure, which returns an owned counter: a `get_or_create` guard alive
        // across the next `get_or_create` of the same family deadlocks (read guard held, write
        // lock wanted).
        let dropped = |reason| {
            metrics
                .media_dropped
                .get_or_create(&crate::metrics::DropLabels { reason })
                .clone()
        };
        let drops = receive::Drops {
            behind: dropped("worker_behind"),
            unknown: dropped("no_session"),
            full: dropped("socket_full"),
        };
        let mut receiver = Some(receive::Receiver::new(
            socket.clone(),
            advertised,
            0,
            inboxes,
            demux_rx,
            drops,
        ));
        let mut threads = Vec::with_capacity(count);
        let forwarded: Vec<Arc<AtomicU64>> = (0..count).map(|_| Arc::default()).collect();
        for (index, (cmd_rx, dg_rx)) in receivers.into_iter().enumerate() {
            let receiving = receiver.take();
            let w = worker::Worker::new(
                index,
                worker::Wiring {
                    socket: socket.clone(),
                    tcp: tcp.clone(),
                    identity: identity.clone(),
                    settings: settings.clone(),
                    demux: demux_tx.clone(),
                    metrics: metrics.clone(),
                    config: config.clone(),
                    room_events: room_events.clone(),
                    forwarded: forwarded[index].clone(),
                },
            );
            let thread = std::thread::Builder::new()
                .name(format!("rtcd-media-{index}"))
                .spawn(move || w.run(cmd_rx, dg_rx, receiving))
                .map_err(|e| SfuError::Media(format!("cannot start a media worker: {e}")))?;
            threads.push(thread);
        }
        tracing::info!(udp = %bound, advertised = %advertised, tcp = ?tcp.as_ref().map(|t| t.advertised), workers = count, "media engine v2 started");
        Ok(Self {
            workers,
            local_addr: bound,
            tcp_addr: tcp.as_ref().map(|t| t.bound),
            next_key: AtomicU64::new(1),
            tcp_stop,
            threads: Mutex::new(threads),
            forwarded,
        })
    }

    /// RTP packets forwarded to subscribers since start, all workers together.
    pub(crate) fn forwarded_packets(&self) -> u64 {
        self.forwarded
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// The shared UDP port's address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The ICE-TCP port's address, if it listens.
    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The worker that owns a call: a hash of the tenant and call, so every session of the
    /// call lands on the same thread.
    fn worker_of(&self, tenant: &TenantId, call: &CallId) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut h);
        call.hash(&mut h);
        (h.finish() % self.workers.len() as u64) as usize
    }

    /// Starts a session on its call's worker and returns signaling's ends of it.
    pub(crate) async fn join(
        &self,
        inner: Arc<SfuInner>,
        req: JoinRequest,
        call_created_ms: i64,
        close: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
    ) -> Result<(SessionHandle, SessionEvents), SfuError> {
        let index = self.worker_of(&req.tenant, &req.call);
        let worker = self.workers[index].clone();
        let key = ((index as u64) << 48)
            | (self.next_key.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff);
        let (cmd_tx, cmd_rx) = rtcd_kit::queue::channel(32);
        let (event_tx, event_rx) = rtcd_kit::queue::channel(256);
        let (alive_tx, alive_rx) = oneshot::channel();
        let ended = CancellationToken::new();
        worker
            .send(WorkerCommand::Join(Box::new(Joining {
                key,
                inner,
                req,
                call_created_ms,
                events: event_tx,
                ended: ended.clone(),
            })))
            .await
            .map_err(|_| SfuError::Media("media worker stopped".into()))?;
        tokio::spawn(bridge(key, worker, cmd_rx, alive_rx, close, reason, ended));
        Ok((SessionHandle::new(cmd_tx, alive_tx), event_rx))
    }
}

impl Shards {
    /// Asks the worker that owns `call` and waits for its answer.
    async fn manage(
        &self,
        tenant: &TenantId,
        call: &CallId,
        request: ManageRequest,
    ) -> Result<Managed, SfuError> {
        let worker = &self.workers[self.worker_of(tenant, call)];
        let (reply, answer) = oneshot::channel();
        worker
            .send(WorkerCommand::Manage(Box::new(Manage {
                tenant: tenant.clone(),
                call: call.clone(),
                request,
                reply,
            })))
            .await
            .map_err(|_| SfuError::Media("media worker stopped".into()))?;
        answer
            .await
            .map_err(|_| SfuError::Media("media worker stopped".into()))?
    }

    /// The call as its worker sees it.
    pub(crate) async fn describe(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<RoomDetail, SfuError> {
        match self.manage(tenant, call, ManageRequest::Describe).await? {
            Managed::Room(room) => Ok(room),
            _ => Err(SfuError::Media("unexpected worker answer".into())),
        }
    }

    /// A recording request, carried out by the call's worker.
    pub(crate) async fn record(
        &self,
        tenant: &TenantId,
        call: &CallId,
        request: ManageRequest,
    ) -> Result<Option<crate::sfu::session::RecordingNotice>, SfuError> {
        match self.manage(tenant, call, request).await? {
            Managed::Recording(notice) => Ok(notice),
            _ => Err(SfuError::Media("unexpected worker answer".into())),
        }
    }

    /// A moderator's action, carried out by the call's worker.
    pub(crate) async fn moderate(
        &self,
        tenant: &TenantId,
        call: &CallId,
        action: Moderation,
    ) -> Result<usize, SfuError> {
        match self
            .manage(tenant, call, ManageRequest::Moderate(action))
            .await?
        {
            Managed::Sessions(n) => Ok(n),
            _ => Err(SfuError::Media("unexpected worker answer".into())),
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.tcp_stop.cancel();
        self.workers.clear();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        // Workers end when their command channels close (just now). Detached rather than
        // joined: dropping may happen on a runtime thread.
        drop(threads);
    }
}

/// Forwards one session's commands to its worker and turns a close, a `Leave` or a dropped
/// handle into the end of the session.
async fn bridge(
    key: SessionKey,
    worker: mpsc::Sender<WorkerCommand>,
    mut commands: rtcd_kit::queue::Receiver<SessionCommand>,
    mut alive: oneshot::Receiver<()>,
    close: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    ended: CancellationToken,
) {
    let why: String = loop {
        tokio::select! {
            biased;
            _ = ended.cancelled() => return,
            _ = close.cancelled() => {
                let why = reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
                break why.unwrap_or_else(|| "closed".into());
            }
            cmd = commands.recv() => match cmd {
                None => break "disconnected".into(),
                Some(SessionCommand::Leave) => break "leave".into(),
                Some(command) => {
                    if worker.send(WorkerCommand::Session { key, command }).await.is_err() {
                        return;
                    }
                }
            },
            _ = &mut alive => break "disconnected".into(),
        }
    };
    let _ = worker.send(WorkerCommand::End { key, reason: why }).await;
}

/// The address in our candidates: the bound IP, or for a wildcard bind the first NAT 1:1
/// override, else the first address of an allowed interface of the bound family. One address
/// only: without `IP_PKTINFO` rtcd cannot tell which local address a datagram reached, and the
/// ICE agent matches datagrams to candidates by exactly that.
fn candidate_ip(config: &SfuConfig, bound: IpAddr) -> Result<IpAddr, SfuError> {
    if let Some(ip) = config
        .host_override
        .iter()
        .find_map(|h| h.parse::<IpAddr>().ok())
    {
        return Ok(ip);
    }
    if !bound.is_unspecified() {
        return Ok(bound);
    }
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| SfuError::Media(format!("cannot list interfaces: {e}")))?;
    for ifa in addrs {
        if !config.interfaces.is_empty() && !config.interfaces.contains(&ifa.interface_name) {
            continue;
        }
        let Some(address) = ifa.address else { continue };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if ip.is_loopback() && !config.include_loopback {
            continue;
        }
        if ip.is_ipv4() != bound.is_ipv4() {
            continue;
        }
        if let IpAddr::V6(v6) = ip
            && (v6.segments()[0] & 0xffc0) == 0xfe80
        {
            continue; // link-local needs a scope id no candidate carries
        }
        return Ok(ip);
    }
    Err(SfuError::Media(
        "no address to advertise: set rtc.ice_address_udp or rtc.ice_host_override".into(),
    ))
}

//! Passive ICE-TCP (RFC 6544) on one TCP port, for networks that block UDP.
//!
//! Peers connect to rtcd's TCP candidate and speak RFC 4571 framing: each packet (STUN, DTLS,
//! RTP / RTCP) preceded by its 2-byte big-endian length. The first frame of an ICE-TCP
//! connection is the peer's connectivity check, a STUN Binding request whose USERNAME names
//! our session's ufrag; a connection that does not start that way, or names an ufrag no
//! session registered, is closed before it costs anything more. Limits keep the port cheap to
//! expose: a deadline for that first frame, a maximum frame size, a maximum number of
//! connections in total and per peer IP, an idle timeout.
//!
//! Received frames go to the caller's [`TcpHandler::deliver`] (which typically routes them
//! through the demux to a worker's bounded queue and says whether it had room). Each accepted
//! connection gets a [`TcpSender`] with a bounded queue, keyed by its [`Transport`], so the
//! engine can answer on the connection a packet came from; a full queue drops the packet.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::demux::binding_request_local_ufrag;
use super::{Inbound, Transport};

/// The largest packet accepted in a frame (as for UDP, [`super::udp::MAX_DATAGRAM`]). A larger
/// length prefix is not media: the connection is closed.
pub const MAX_TCP_PACKET: usize = super::udp::MAX_DATAGRAM;
/// Bytes a connection's writer gathers into one `write` (frames queued meanwhile).
const WRITE_COALESCE: usize = 16 * 1024;
/// Read buffer chunk; frames are split off it without copying.
const READ_CHUNK: usize = 16 * 1024;

/// Limits of the ICE-TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Open connections in total (validated or not); more are closed at accept.
    pub max_connections: usize,
    /// Open connections per peer IP address; more are closed at accept.
    pub max_per_ip: usize,
    /// Deadline for the first frame (a valid Binding request) after accept.
    pub first_frame_timeout: Duration,
    /// A connection that receives nothing for this long is closed (ICE consent checks arrive
    /// every few seconds on a live one).
    pub idle_timeout: Duration,
    /// A write that cannot complete for this long closes the connection (peer not reading).
    pub write_timeout: Duration,
    /// Packets queued per connection for sending; more are dropped.
    pub send_queue_packets: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_ip: 16,
            first_frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            send_queue_packets: 256,
        }
    }
}

/// What the engine decides and receives for the ICE-TCP port.
pub trait TcpHandler: Send + Sync + 'static {
    /// Whether a connection whose first frame is a Binding request for our `ufrag` may stay
    /// open (typically: a session registered it in the demux).
    fn accept(&self, transport: &Transport, ufrag: &str) -> bool;
    /// A received packet (the first is that Binding request). Returns false if it had to be
    /// dropped (a full queue); counted in [`TcpStats::inbound_dropped`]. Must not block.
    fn deliver(&self, inbound: Inbound) -> bool;
    /// An accepted connection closed (e.g. to forget its 5-tuple in the demux).
    fn closed(&self, _transport: &Transport) {}
}

/// Why the ICE-TCP port could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The listener could not bind.
    #[error("cannot listen on TCP {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// Why a packet was not queued for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TcpSendError {
    /// No open, validated connection for that transport.
    #[error("no ICE-TCP connection for this transport")]
    NoConnection,
    /// The connection's queue is full; the packet is dropped (counted).
    #[error("ICE-TCP send queue full")]
    QueueFull,
    /// Longer than a 2-byte length can frame.
    #[error("packet too large for RFC 4571 framing")]
    TooLarge,
}

/// Counters of the ICE-TCP port since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections accepted by the limits (validated or not).
    pub accepted: u64,
    /// Connections closed at accept by `max_connections` / `max_per_ip`.
    pub rejected_limit: u64,
    /// Connections closed because the first frame was not a Binding request for a registered
    /// ufrag (garbage, unknown ufrag).
    pub rejected_first_frame: u64,
    /// Connections closed by the first-frame or idle timeout.
    pub timed_out: u64,
    /// Connections closed for an oversized frame.
    pub oversized: u64,
    /// Frames delivered to the handler.
    pub delivered: u64,
    /// Frames the handler dropped.
    pub inbound_dropped: u64,
    /// Packets dropped because a connection's send queue was full.
    pub outbound_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    rejected_limit: AtomicU64,
    rejected_first_frame: AtomicU64,
    timed_out: AtomicU64,
    oversized: AtomicU64,
    delivered: AtomicU64,
    inbound_dropped: AtomicU64,
    outbound_dropped: AtomicU64,
}

/// A handle to write packets to one ICE-TCP connection (cheap to clone; keep one per path to
/// avoid the lookup of [`IceTcpServer::send`]).
#[derive(Debug, Clone)]
pub struct TcpSender {
    transport: Transport,
    tx: mpsc::Sender<Bytes>,
    counters: Arc<Counters>,
}

impl TcpSender {
    /// The connection's path.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Queues one packet (framed by the writer). Never blocks: a full queue drops it.
    pub fn send(&self, packet: Bytes) -> Result<(), TcpSendError> {
        if packet.len() > usize::from(u16::MAX) {
            return Err(TcpSendError::TooLarge);
        }
        self.tx.try_send(packet).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.counters
                    .outbound_dropped
                    .fetch_add(1, Ordering::Relaxed);
                TcpSendError::QueueFull
            }
            mpsc::error::TrySendError::Closed(_) => TcpSendError::NoConnection,
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[derive(Debug, Default)]
struct Connections {
    /// Validated connections, by path, with the id of the task that owns each.
    senders: HashMap<Transport, (u64, TcpSender)>,
    per_ip: HashMap<IpAddr, usize>,
    open: usize,
    next_id: u64,
}

struct Shared {
    config: TcpConfig,
    handler: Arc<dyn TcpHandler>,
    connections: Mutex<Connections>,
    counters: Arc<Counters>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        // A panic while holding the lock leaves plain counters and maps: still usable.
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The ICE-TCP port: an accept loop and one task (plus a writer task) per connection.
pub struct IceTcpServer {
    local: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for IceTcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceTcpServer")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl IceTcpServer {
    /// Binds `addr` and starts accepting. Stops when `cancel` fires or at
    /// [`IceTcpServer::shutdown`].
    pub async fn bind(
        addr: SocketAddr,
        config: TcpConfig,
        handler: Arc<dyn TcpHandler>,
        cancel: CancellationToken,
    ) -> Result<Self, TcpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TcpError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| TcpError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            config,
            handler,
            connections: Mutex::default(),
            counters: Arc::default(),
        });
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            shared.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        Ok(Self {
            local,
            shared,
            cancel,
            tracker,
        })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The sender of a validated connection, if it is open.
    pub fn sender(&self, transport: &Transport) -> Option<TcpSender> {
        self.shared
            .lock()
            .senders
            .get(transport)
            .map(|(_, s)| s.clone())
    }

    /// Queues `packet` on the connection of `transport` (a lookup; see [`TcpSender`]).
    pub fn send(&self, transport: &Transport, packet: Bytes) -> Result<(), TcpSendError> {
        let sender = self.sender(transport).ok_or(TcpSendError::NoConnection)?;
        sender.send(packet)
    }

    /// Open connections (validated or not).
    pub fn connections(&self) -> usize {
        self.shared.lock().open
    }

    /// The counters since start.
    pub fn stats(&self) -> TcpStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            accepted: get(&c.accepted),
            rejected_limit: get(&c.rejected_limit),
            rejected_first_frame: get(&c.rejected_first_frame),
            timed_out: get(&c.timed_out),
            oversized: get(&c.oversized),
            delivered: get(&c.delivered),
            inbound_dropped: get(&c.inbound_dropped),
            outbound_dropped: get(&c.outbound_dropped),
        }
    }

    /// Stops accepting, closes every connection and waits for their tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE / ENFILE / ENOBUFS: back off instead of spinning.
                tracing::warn!(error = %e, "ICE-TCP accept failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let id = {
            let mut conns = shared.lock();
            let per_ip = conns.per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if conns.open >= shared.config.max_connections || per_ip >= shared.config.max_per_ip {
                None
            } else {
                conns.open += 1;
                *conns.per_ip.entry(peer.ip()).or_default() += 1;
                conns.next_id += 1;
                Some(conns.next_id)
            }
        };
        let Some(id) = id else {
            shared
                .counters
                .rejected_limit
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let guard = ConnectionGuard {
            shared: shared.clone(),
            transport: Transport::tcp(local, peer),
            id,
            validated: false,
        };
        tracker.spawn(connection(
            stream,
            guard,
            cancel.child_token(),
            tracker.clone(),
        ));
    }
}

/// Releases a connection's slot (and its sender, and tells the handler) however its task ends.
struct ConnectionGuard {
    shared: Arc<Shared>,
    transport: Transport,
    id: u64,
    validated: bool,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        {
            let mut conns = self.shared.lock();
            conns.open -= 1;
            let ip = self.transport.peer.ip();
            if let Some(n) = conns.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    conns.per_ip.remove(&ip);
                }
            }
            if conns
                .senders
                .get(&self.transport)
                .is_some_and(|(id, _)| *id == self.id)
            {
                conns.senders.remove(&self.transport);
            }
        }
        if self.validated {
            self.shared.handler.closed(&self.transport);
        }
    }
}

enum FrameError {
    Eof,
    Io,
    TooLarge,
    Timeout,
    Cancelled,
}

/// Reads one RFC 4571 frame's payload, split off `buf` without copying.
async fn read_frame(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<Bytes, FrameError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if len > MAX_TCP_PACKET {
                return Err(FrameError::TooLarge);
            }
            if buf.len() >= 2 + len {
                buf.advance(2);
                return Ok(buf.split_to(len).freeze());
            }
        }
        if buf.capacity() - buf.len() < MAX_TCP_PACKET + 2 {
            // Reclaims the chunk if every frame split off it is gone, else allocates another:
            // amortised over many frames.
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            () = stop.cancelled() => return Err(FrameError::Cancelled),
            () = tokio::time::sleep_until(deadline) => return Err(FrameError::Timeout),
            read = reader.read_buf(buf) => read,
        };
        match read {
            Ok(0) => return Err(FrameError::Eof),
            Ok(_) => {}
            Err(_) => return Err(FrameError::Io),
        }
    }
}

async fn connection(
    stream: TcpStream,
    mut guard: ConnectionGuard,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let shared = guard.shared.clone();
    let counters = &shared.counters;
    let config = &shared.config;
    let transport = guard.transport;
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);

    let count_close = |e: &FrameError| match e {
        FrameError::TooLarge => {
            counters.oversized.fetch_add(1, Ordering::Relaxed);
        }
        FrameError::Timeout => {
            counters.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        FrameError::Eof | FrameError::Io | FrameError::Cancelled => {}
    };

    let first = match read_frame(&mut reader, &mut buf, config.first_frame_timeout, &stop).await {
        Ok(frame) => frame,
        Err(e) => return count_close(&e),
    };
    let accepted = binding_request_local_ufrag(&first)
        .is_ok_and(|ufrag| shared.handler.accept(&transport, ufrag));
    if !accepted {
        counters
            .rejected_first_frame
            .fetch_add(1, Ordering::Relaxed);
        return;
    }

    let (tx, rx) = mpsc::channel(config.send_queue_packets.max(1));
    let sender = TcpSender {
        transport,
        tx,
        counters: counters.clone(),
    };
    shared.lock().senders.insert(transport, (guard.id, sender));
    guard.validated = true;
    tracker.spawn(write_loop(writer, rx, stop.clone(), config.write_timeout));

    let mut frame = first;
    loop {
        if !frame.is_empty() {
            if shared.handler.deliver(Inbound {
                transport,
                data: frame,
            }) {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        frame = match read_frame(&mut reader, &mut buf, config.idle_timeout, &stop).await {
            Ok(frame) => frame,
            Err(e) => {
                count_close(&e);
                break;
            }
        };
    }
    // Ends the writer, which shuts the write side down.
    stop.cancel();
    drop(guard);
}

/// Frames queued packets, gathering what is queued into one write.
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    stop: CancellationToken,
    write_timeout: Duration,
) {
    let mut out = BytesMut::with_capacity(WRITE_COALESCE + MAX_TCP_PACKET + 2);
    loop {
        let packet = tokio::select! {
            () = stop.cancelled() => break,
            packet = rx.recv() => match packet {
                Some(packet) => packet,
                None => break,
            },
        };
        out.clear();
        frame_into(&mut out, &packet);
        while out.len() < WRITE_COALESCE {
            match rx.try_recv() {
                Ok(packet) => frame_into(&mut out, &packet),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            () = stop.cancelled() => break,
            written = tokio::time::timeout(write_timeout, writer.write_all(&out)) => written,
        };
        if !matches!(written, Ok(Ok(()))) {
            stop.cancel();
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

fn frame_into(out: &mut BytesMut, packet: &[u8]) {
    out.put_u16(packet.len() as u16);
    out.put_slice(packet);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::net::demux::{STUN_ATTR_USERNAME, STUN_BINDING_REQUEST, STUN_MAGIC_COOKIE};
    use std::collections::HashSet;
    use tokio::time::timeout;

    struct TestHandler {
        ufrags: HashSet<&'static str>,
        tx: mpsc::Sender<Inbound>,
        closed: Mutex<Vec<Transport>>,
    }

    impl TcpHandler for TestHandler {
        fn accept(&self, _transport: &Transport, ufrag: &str) -> bool {
            self.ufrags.contains(ufrag)
        }
        fn deliver(&self, inbound: Inbound) -> bool {
            self.tx.try_send(inbound).is_ok()
        }
        fn closed(&self, transport: &Transport) {
            self.closed.lock().unwrap().push(*transport);
        }
    }

    async fn server(
        config: TcpConfig,
    ) -> (IceTcpServer, mpsc::Receiver<Inbound>, Arc<TestHandler>) {
        let (tx, rx) = mpsc::channel(64);
        let handler = Arc::new(TestHandler {
            ufrags: ["good"].into_iter().collect(),
            tx,
            closed: Mutex::default(),
        });
        let server = IceTcpServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            config,
            handler.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        (server, rx, handler)
    }

    fn binding(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        msg.extend_from_slice(&[1; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    fn framed(packet: &[u8]) -> Vec<u8> {
        let mut out = (packet.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(packet);
        out
    }

    /// Whether the server closed the connection within 3 s (EOF or reset).
    async fn closed_by_server(client: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            timeout(Duration::from_secs(3), client.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
        timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("inbound in time")
            .expect("open channel")
    }

    #[tokio::test]
    async fn frames_flow_both_ways() {
        let (server, mut rx, handler) = server(TcpConfig::default()).await;
        let mut client = TcpStream::connect(server.local_addr()).await.unwrap();
        let expected = Transport::tcp(server.local_addr(), client.local_addr().unwrap());
        let stun = binding("good:peer");
        let rtp = [0x80u8, 96, 0, 1, 2, 3];
        client.write_all(&framed(&stun)).await.unwrap();
        client.write_all(&framed(&rtp)).await.unwrap();
        let first = next(&mut rx).await;
        assert_eq!(first.transport, expected);
        assert_eq!(&first.data[..], &stun[..]);
        assert_eq!(&next(&mut rx).await.data[..], &rtp[..]);

        // Server -> client, through the lookup and through a kept handle.
        server
            .send(&expected, Bytes::from_static(b"\x80one"))
            .unwrap();
        let sender = server.sender(&expected).unwrap();
        sender.send(Bytes::from_static(b"\x80\x01two")).unwrap();
        let mut got = vec![0u8; 2 + 4 + 2 + 5];
        timeout(Duration::from_secs(3), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, [framed(b"\x80one"), framed(b"\x80\x01two")].concat());
        assert_eq!(
            server.send(
                &Transport::tcp(server.local_addr(), "127.0.0.1:1".parse().unwrap()),
                Bytes::new()
            ),
            Err(TcpSendError::NoConnection)
        );

        // The client leaves: the handler hears it and the sender is gone.
        drop(client);
        for _ in 0..100 {
            if server.sender(&expected).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(server.sender(&expected).is_none());
        assert!(sender.is_closed());
        assert_eq!(*handler.closed.lock().unwrap(), [expected]);
        assert_eq!(server.stats().delivered, 2);
        assert_eq!(server.connections(), 0);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_is_reassembled() {
        let (server, mut rx, _) = server(TcpConfig::default()).await;
        let mut client = TcpStream::connect(server.local_addr()).await.unwrap();
        client.set_nodelay(true).unwrap();
        let stun = binding("good:peer");
        let bytes = [framed(&stun), framed(&[0x80; 300])].concat();
        // Byte by byte for the length prefixes, then uneven pieces.
        for piece in [&bytes[..1], &bytes[1..2], &bytes[2..7], &bytes[7..]] {
            client.write_all(piece).await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(&next(&mut rx).await.data[..], &stun[..]);
        assert_eq!(next(&mut rx).await.data.len(), 300);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn bad_connections_are_closed() {
        let (server, mut rx, _) = server(TcpConfig {
            first_frame_timeout: Duration::from_millis(200),
            ..TcpConfig::default()
        })
        .await;
        let connect = || TcpStream::connect(server.local_addr());

        // Garbage first frame (RTP, not STUN).
        let mut c = connect().await.unwrap();
        c.write_all(&framed(&[0x80; 20])).await.unwrap();
        assert!(closed_by_server(&mut c).await);
        // A Binding request for an ufrag nobody registered.
        let mut c = connect().await.unwrap();
        c.write_all(&framed(&binding("nobody:peer"))).await.unwrap();
        assert!(closed_by_server(&mut c).await);
        assert_eq!(server.stats().rejected_first_frame, 2);
        // Nothing sent: the first-frame deadline.
        let mut c = connect().await.unwrap();
        assert!(closed_by_server(&mut c).await);
        // Half a frame: the deadline too.
        let mut c = connect().await.unwrap();
        c.write_all(&[0, 40, 0, 1]).await.unwrap();
        assert!(closed_by_server(&mut c).await);
        assert_eq!(server.stats().timed_out, 2);
        // An oversized frame after a valid start.
        let mut c = connect().await.unwrap();
        c.write_all(&framed(&binding("good:peer"))).await.unwrap();
        let _ = next(&mut rx).await;
        c.write_all(&((MAX_TCP_PACKET + 1) as u16).to_be_bytes())
            .await
            .unwrap();
        assert!(closed_by_server(&mut c).await);
        assert_eq!(server.stats().oversized, 1);
        // An oversized first frame.
        let mut c = connect().await.unwrap();
        c.write_all(&[0xff, 0xff]).await.unwrap();
        assert!(closed_by_server(&mut c).await);
        assert_eq!(server.stats().oversized, 2);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn connection_limits_close_extra_connections() {
        let (server, _rx, _) = server(TcpConfig {
            max_connections: 2,
            max_per_ip: 2,
            ..TcpConfig::default()
        })
        .await;
        let a = TcpStream::connect(server.local_addr()).await.unwrap();
        let mut b = TcpStream::connect(server.local_addr()).await.unwrap();
        let mut c = TcpStream::connect(server.local_addr()).await.unwrap();
        assert!(closed_by_server(&mut c).await);
        assert_eq!(server.stats().rejected_limit, 1);
        assert_eq!(server.connections(), 2);
        // A slot frees when a connection goes.
        drop(a);
        for _ in 0..100 {
            if server.connections() < 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut d = TcpStream::connect(server.local_addr()).await.unwrap();
        d.write_all(&framed(&binding("good:x"))).await.unwrap();
        let mut buf = [0u8; 1];
        assert!(
            timeout(Duration::from_millis(300), d.read(&mut buf))
                .await
                .is_err(),
            "d stays open"
        );
        server.shutdown().await;
        // Shutdown closes the open connections, validated or not.
        assert!(closed_by_server(&mut d).await);
        assert!(closed_by_server(&mut b).await);
    }

    #[tokio::test]
    async fn per_ip_limit() {
        let (server, _rx, _) = server(TcpConfig {
            max_per_ip: 1,
            ..TcpConfig::default()
        })
        .await;
        let _a = TcpStream::connect(server.local_addr()).await.unwrap();
        let mut b = TcpStream::connect(server.local_addr()).await.unwrap();
        assert!(closed_by_server(&mut b).await);
        assert_eq!(server.stats().rejected_limit, 1);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_send_queue_drops() {
        let (server, mut rx, _) = server(TcpConfig {
            send_queue_packets: 4,
            ..TcpConfig::default()
        })
        .await;
        let mut client = TcpStream::connect(server.local_addr()).await.unwrap();
        client
            .write_all(&framed(&binding("good:peer")))
            .await
            .unwrap();
        let transport = next(&mut rx).await.transport;
        let sender = server.sender(&transport).unwrap();
        // The writer task cannot run while this (current-thread) test pushes: 4 fit.
        let results: Vec<_> = (0..6)
            .map(|_| sender.send(Bytes::from_static(b"\x80x")))
            .collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
        assert_eq!(results[5], Err(TcpSendError::QueueFull));
        assert_eq!(server.stats().outbound_dropped, 2);
        let mut got = vec![0u8; 4 * 4];
        timeout(Duration::from_secs(3), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        server.shutdown().await;
    }
}

//! The shared media UDP socket, read and written in batches.
//!
//! webrtc-rs 0.17 paid one system call (and several tokio hand-offs) per packet; the relay
//! ceiling in `docs/benchmarks.md` is set by system calls. [`BatchSocket`] amortises them:
//!
//! * the receiving worker calls [`BatchSocket::try_recv_batch`] when its reactor says the
//!   socket is readable: one `recvmmsg` returns up to [`RECV_BATCH`] datagrams into the
//!   preallocated buffers of a [`RecvBatch`] ([`BatchSocket::recv_batch`] blocks for the
//!   first one at most [`UdpConfig::read_timeout`] instead, for a thread of its own);
//! * workers fill a [`SendBatch`] and call [`BatchSocket::send_batch`]: one `sendmmsg` per
//!   up to [`SEND_CHUNK`] messages, and with UDP GSO (`UDP_SEGMENT`) consecutive datagrams to
//!   one destination with one size (the last may be shorter) become a single message the
//!   kernel splits. GSO is probed at bind and switched off for good the first time the
//!   kernel refuses it (`EIO` / `EINVAL`, e.g. a device without checksum offload); the
//!   refused datagrams are then resent one by one.
//!
//! No allocation per packet or per batch: the buffers live in the batches, and the kernel
//! message headers nix needs (`MultiHeaders`, which hold raw pointers and so are neither
//! `Send` nor `Sync`) are allocated once per thread in thread-locals, which keeps
//! [`RecvBatch`] and [`SendBatch`] `Send`. Everything goes through nix's safe wrappers: the
//! workspace forbids `unsafe`.
//!
//! Errors that concern one destination (ICMP port / host unreachable reported on a later
//! call, a route or firewall refusal, a too-large datagram) skip that datagram and are
//! counted; they never stop the loops.
//!
//! Callers get the most from GSO by pushing each destination's datagrams consecutively
//! (e.g. flushing per subscriber); a packet-major fan-out (one packet to every subscriber,
//! then the next) is still one `sendmmsg` per [`SEND_CHUNK`] datagrams.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt,
    recvmmsg, sendmmsg, sockopt,
};
use nix::sys::time::TimeSpec;

/// Datagrams one [`BatchSocket::recv_batch`] call can return (one `recvmmsg`).
pub const RECV_BATCH: usize = 32;
/// The largest datagram rtcd receives or sends. Media fits an Ethernet MTU; a larger
/// datagram is truncated by the kernel and then dropped (counted in [`UdpStats::truncated`]).
pub const MAX_DATAGRAM: usize = 2048;
/// Messages per `sendmmsg` call (a GSO message counts once, whatever its segments).
pub const SEND_CHUNK: usize = 64;
/// Segments per GSO message (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Payload bytes per GSO message: an IP datagram is at most 64 KiB with its headers.
pub const GSO_MAX_BYTES: usize = 65_000;

/// Socket options of a [`BatchSocket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// `SO_RCVBUF` to ask for (the kernel doubles it and caps it at `net.core.rmem_max`;
    /// [`BatchSocket::buffer_sizes`] reports what was granted). `None`: the system default.
    pub recv_buffer_bytes: Option<usize>,
    /// `SO_SNDBUF` to ask for (capped at `net.core.wmem_max`). `None`: the system default.
    pub send_buffer_bytes: Option<usize>,
    /// How long [`BatchSocket::recv_batch`] blocks for the first datagram before returning
    /// `Ok(0)`: a receiving thread's shutdown latency. Zero is raised to 1 ms.
    pub read_timeout: Duration,
    /// How long a send may block on a full send buffer; past it the rest of the batch is
    /// dropped (counted): a stalled socket must not stall a worker. Zero is raised to 1 ms.
    pub write_timeout: Duration,
    /// Use UDP GSO if the kernel supports it.
    pub gso: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            recv_buffer_bytes: None,
            send_buffer_bytes: None,
            read_timeout: Duration::from_millis(100),
            write_timeout: Duration::from_millis(20),
            gso: true,
        }
    }
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// The socket could not be created or bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A socket option was refused.
    #[error("UDP socket option {option}: {source}")]
    SocketOption {
        /// Which option.
        option: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The socket buffer sizes the kernel granted (what `getsockopt` reports: on Linux twice the
/// request, capped by `net.core.rmem_max` / `wmem_max`). Worth logging at start: a capped
/// receive buffer is the usual cause of loss under bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    /// `SO_RCVBUF`.
    pub recv_bytes: usize,
    /// `SO_SNDBUF`.
    pub send_bytes: usize,
}

/// Counters of one socket since bind (relaxed atomics, updated once per batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams received and returned to the caller.
    pub received: u64,
    /// Received datagrams larger than [`MAX_DATAGRAM`], dropped.
    pub truncated: u64,
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams not sent (destination errors, timeouts, a failed socket).
    pub send_dropped: u64,
    /// ICMP-reported errors seen on send or receive (port / host unreachable ...).
    pub icmp_errors: u64,
    /// Send and receive system calls.
    pub syscalls: u64,
    /// Datagrams the kernel dropped because the receive buffer was full (the reader was
    /// behind), as of the last datagram read (`SO_RXQ_OVFL`: the kernel reports its count
    /// with the next datagram it queues).
    pub overflowed: u64,
}

/// What one [`BatchSocket::send_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams dropped (see [`UdpStats::send_dropped`]).
    pub dropped: usize,
    /// `sendmmsg` calls made.
    pub syscalls: usize,
    /// Messages sent with GSO (each carrying several datagrams).
    pub gso_messages: usize,
}

#[derive(Default)]
struct Counters {
    overflowed: AtomicU64,
    received: AtomicU64,
    truncated: AtomicU64,
    sent: AtomicU64,
    send_dropped: AtomicU64,
    icmp_errors: AtomicU64,
    syscalls: AtomicU64,
}

/// One bound UDP socket shared by the workers (`Arc<BatchSocket>`):
/// every method takes `&self`; the kernel serialises concurrent calls.
#[derive(Debug)]
pub struct BatchSocket {
    socket: UdpSocket,
    local: SocketAddr,
    ipv6: bool,
    gso: AtomicBool,
    buffers: BufferSizes,
    counters: Counters,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

thread_local! {
    // Kernel message headers, one set per thread (they hold raw pointers: not Send). Receive
    // headers keep the address length the kernel wrote last, so IPv4 and IPv6 sockets need
    // their own; send headers with and without a control buffer must differ too.
    static RECV_V4: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
    static RECV_V6: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
    static SEND_PLAIN: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
    static SEND_GSO: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
}

impl BatchSocket {
    /// Binds `addr` with `config`'s buffer sizes and timeouts and probes GSO support.
    pub fn bind(addr: SocketAddr, config: &UdpConfig) -> Result<Self, UdpError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let bind_err = |source| UdpError::Bind { addr, source };
        let option = |option: &'static str| move |source| UdpError::SocketOption { option, source };
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(bind_err)?;
        if let Some(bytes) = config.recv_buffer_bytes {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(option("SO_RCVBUF"))?;
        }
        if let Some(bytes) = config.send_buffer_bytes {
            socket
                .set_send_buffer_size(bytes)
                .map_err(option("SO_SNDBUF"))?;
        }
        socket.bind(&addr.into()).map_err(bind_err)?;
        let min = Duration::from_millis(1);
        socket
            .set_read_timeout(Some(config.read_timeout.max(min)))
            .map_err(option("SO_RCVTIMEO"))?;
        socket
            .set_write_timeout(Some(config.write_timeout.max(min)))
            .map_err(option("SO_SNDTIMEO"))?;
        let buffers = BufferSizes {
            recv_bytes: socket.recv_buffer_size().map_err(option("SO_RCVBUF"))?,
            send_bytes: socket.send_buffer_size().map_err(option("SO_SNDBUF"))?,
        };
        let socket: UdpSocket = socket.into();
        let local = socket.local_addr().map_err(bind_err)?;
        // Linux >= 4.18 knows UDP_SEGMENT; older kernels answer ENOPROTOOPT.
        let gso = config.gso && getsockopt(&socket, sockopt::UdpGsoSegment).is_ok();
        // The kernel's receive time of each datagram (`RecvBatch::arrived`): what the
        // transport-cc feedback to publishers reports, so that their congestion control reads
        // the network's delay and not how long this process took to get to a datagram.
        nix::sys::socket::setsockopt(&socket, sockopt::ReceiveTimestampns, &true)
            .map_err(|e| option("SO_TIMESTAMPNS")(io::Error::from(e)))?;
        // How many datagrams the kernel dropped for a full receive buffer: the one drop of
        // media nobody else sees (`UdpStats::overflowed`).
        nix::sys::socket::setsockopt(&socket, sockopt::RxqOvfl, &1)
            .map_err(|e| option("SO_RXQ_OVFL")(io::Error::from(e)))?;
        Ok(Self {
            socket,
            local,
            ipv6: local.is_ipv6(),
            gso: AtomicBool::new(gso),
            buffers,
            counters: Counters::default(),
        })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The buffer sizes the kernel granted at bind.
    pub fn buffer_sizes(&self) -> BufferSizes {
        self.buffers
    }

    /// Whether sends currently use GSO (false if unsupported, disabled, or refused once).
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Stops using GSO on this socket (benchmarks compare both paths on one socket).
    pub fn disable_gso(&self) {
        self.gso.store(false, Ordering::Relaxed);
    }

    /// [`UdpStats::overflowed`] alone (the receiving worker reads it after every batch).
    pub fn overflowed(&self) -> u64 {
        self.counters.overflowed.load(Ordering::Relaxed)
    }

    /// The counters since bind.
    pub fn stats(&self) -> UdpStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UdpStats {
            received: get(&c.received),
            truncated: get(&c.truncated),
            sent: get(&c.sent),
            send_dropped: get(&c.send_dropped),
            icmp_errors: get(&c.icmp_errors),
            syscalls: get(&c.syscalls),
            overflowed: get(&c.overflowed),
        }
    }

    /// Receives up to [`RECV_BATCH`] datagrams with one `recvmmsg` into `batch` (its previous
    /// content is discarded) and returns how many. Blocks until the first datagram or
    /// [`UdpConfig::read_timeout`]; `Ok(0)` means nothing arrived (a timeout, an interrupted
    /// call or an ICMP error report): check for shutdown and call again. An `Err` is a broken
    /// socket. Source addresses are canonical (an IPv4-mapped IPv6 source is returned as IPv4).
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        match self.recv_with(batch, MsgFlags::MSG_WAITFORONE) {
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(0),
            other => self.received(other),
        }
    }

    /// [`Self::recv_batch`] without blocking (`MSG_DONTWAIT`), for a thread that waits for
    /// readiness itself (the receiving worker's reactor). `Err` of kind
    /// [`io::ErrorKind::WouldBlock`]: nothing is queued, wait for readiness again; `Ok(0)`:
    /// an interrupted call or an ICMP error report, call again at once (the socket may still
    /// hold datagrams); any other `Err` is a broken socket.
    pub fn try_recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        match self.recv_with(batch, MsgFlags::MSG_WAITFORONE | MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EAGAIN) => Err(io::ErrorKind::WouldBlock.into()),
            Err(Errno::EINTR) => Ok(0),
            other => self.received(other),
        }
    }

    /// Counts what one `recvmmsg` returned: datagrams, or an ICMP report (`Ok(0)`).
    fn received(&self, outcome: Result<usize, Errno>) -> io::Result<usize> {
        match outcome {
            Ok(n) => Ok(n),
            Err(e) if is_icmp_error(e) => {
                self.counters.icmp_errors.fetch_add(1, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One `recvmmsg` with `flags` into `batch`, counted.
    fn recv_with(&self, batch: &mut RecvBatch, flags: MsgFlags) -> Result<usize, Errno> {
        batch.len = 0;
        let fd = self.socket.as_raw_fd();
        let headers = if self.ipv6 { &RECV_V6 } else { &RECV_V4 };
        let mut truncated = 0u64;
        let mut overflowed = 0u32;
        let outcome = headers.with_borrow_mut(|slot| {
            let headers = slot.get_or_insert_with(|| {
                MultiHeaders::preallocate(RECV_BATCH, Some(nix::cmsg_space!(TimeSpec, u32)))
            });
            let mut buffers = batch.buffers.chunks_exact_mut(MAX_DATAGRAM);
            let mut iovs: [[IoSliceMut<'_>; 1]; RECV_BATCH] = std::array::from_fn(|_| {
                [IoSliceMut::new(
                    buffers.next().expect("RecvBatch holds RECV_BATCH buffers"),
                )]
            });
            let results = recvmmsg(fd, headers, iovs.iter_mut(), flags, None)?;
            // The kernel stamps with the wall clock; mapped to this process's monotonic one
            // by the distance between the two now (one read of each per call).
            let (mono, wall) = (Instant::now(), SystemTime::now());
            batch.received_at = mono;
            let mut shrunk = false;
            for (index, msg) in results.enumerate() {
                // nix leaves each header's control length at what the kernel last wrote into
                // it (the timestamp alone, until a drop is reported): the drop count did not
                // fit. The headers are made again for the next call, which reads the count
                // (cumulative: it comes with every datagram after the first drop).
                shrunk |= msg.flags.contains(MsgFlags::MSG_CTRUNC);
                if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                    truncated += 1;
                    continue;
                }
                let Some(peer) = msg.address.as_ref().and_then(to_std) else {
                    continue;
                };
                let mut stamped = None;
                for c in msg.cmsgs().ok().into_iter().flatten() {
                    match c {
                        ControlMessageOwned::ScmTimestampns(ts) => stamped = Some(ts),
                        // Cumulative since the socket opened (it wraps at 2^32).
                        ControlMessageOwned::RxqOvfl(n) => overflowed = overflowed.max(n),
                        _ => {}
                    }
                }
                batch.slots[batch.len] = Slot {
                    peer,
                    index: index as u8,
                    len: msg.bytes as u16,
                    age: stamped.map_or(Duration::ZERO, |ts| age(ts, wall)),
                };
                batch.len += 1;
            }
            if shrunk {
                *slot = None;
            }
            Ok::<_, Errno>(())
        });
        self.counters.syscalls.fetch_add(1, Ordering::Relaxed);
        outcome?;
        let c = &self.counters;
        if overflowed > 0 {
            c.overflowed
                .fetch_max(u64::from(overflowed), Ordering::Relaxed);
        }
        c.received.fetch_add(batch.len as u64, Ordering::Relaxed);
        if truncated > 0 {
            c.truncated.fetch_add(truncated, Ordering::Relaxed);
        }
        Ok(batch.len)
    }

    /// Sends every datagram of `batch` and clears it. Datagrams to one destination keep their
    /// order. Per-destination errors drop that datagram and go on; a send buffer still full
    /// after [`UdpConfig::write_timeout`] drops the rest (both counted in the report). `Err`
    /// only for a broken socket (the rest of the batch is dropped and counted too).
    pub fn send_batch(&self, batch: &mut SendBatch) -> io::Result<SendReport> {
        let mut report = SendReport::default();
        if self.gso.load(Ordering::Relaxed) {
            batch.group_by_destination();
        }
        let mut next = 0;
        let result = loop {
            if next >= batch.packets.len() {
                break Ok(());
            }
            let gso = self.gso.load(Ordering::Relaxed);
            let (end, segment) = batch.plan(next, gso, self.ipv6);
            match self.send_chunk(batch, segment, &mut report) {
                ChunkEnd::Done => next = end,
                ChunkEnd::GsoRefused(at) => {
                    // Resend from the refused message without GSO, for good on this socket.
                    self.gso.store(false, Ordering::Relaxed);
                    tracing::info!(local = %self.local, "UDP GSO refused by the kernel; sending datagram by datagram");
                    next = at;
                }
                ChunkEnd::DropFrom(at) => {
                    report.dropped += batch.packets.len() - at;
                    break Ok(());
                }
                ChunkEnd::Failed(at, e) => {
                    report.dropped += batch.packets.len() - at;
                    break Err(io::Error::from(e));
                }
            }
        };
        batch.clear();
        let c = &self.counters;
        c.sent.fetch_add(report.sent as u64, Ordering::Relaxed);
        c.send_dropped
            .fetch_add(report.dropped as u64, Ordering::Relaxed);
        c.syscalls
            .fetch_add(report.syscalls as u64, Ordering::Relaxed);
        result.map(|()| report)
    }

    /// Pushes one datagram onto `batch`, sending the batch first when it is full: how a
    /// sender fills a batch without ever waiting for a round's end to make room. A datagram
    /// over [`MAX_DATAGRAM`] is dropped (nothing could send it). `Err` only from that send
    /// ([`BatchSocket::send_batch`]: a broken socket); the datagram is pushed either way.
    pub fn queue(&self, batch: &mut SendBatch, dest: SocketAddr, packet: &[u8]) -> io::Result<()> {
        if batch.push(dest, packet) != Err(PushError::Full) {
            return Ok(());
        }
        let sent = self.send_batch(batch);
        let _ = batch.push(dest, packet);
        sent.map(drop)
    }

    /// Sends one datagram with one `sendto` (the per-packet baseline, and for the odd packet
    /// outside a batch). Destination errors are returned, not counted.
    pub fn send_to(&self, packet: &[u8], dest: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(packet, self.map_dest(dest))
    }

    fn map_dest(&self, dest: SocketAddr) -> SocketAddr {
        map_dest(dest, self.ipv6)
    }

    /// Sends the messages `batch.plan` prepared, one `sendmmsg` per retry.
    fn send_chunk(
        &self,
        batch: &SendBatch,
        segment: Option<u16>,
        report: &mut SendReport,
    ) -> ChunkEnd {
        let fd = self.socket.as_raw_fd();
        let messages = &batch.messages;
        let iovs: [[IoSlice<'_>; 1]; SEND_CHUNK] = std::array::from_fn(|i| {
            [IoSlice::new(messages.get(i).map_or(&[][..], |m| {
                &batch.data[m.start..m.start + m.len]
            }))]
        });
        let segment_size = segment.unwrap_or(0);
        let gso_cmsg = [ControlMessage::UdpGsoSegments(&segment_size)];
        let (headers, cmsgs): (_, &[ControlMessage<'_>]) = match segment {
            Some(_) => (&SEND_GSO, &gso_cmsg),
            None => (&SEND_PLAIN, &[]),
        };
        headers.with_borrow_mut(|headers| {
            let headers = headers.get_or_insert_with(|| {
                let cmsg = segment.map(|_| nix::cmsg_space!(u16));
                MultiHeaders::preallocate(SEND_CHUNK, cmsg)
            });
            let mut pos = 0;
            let mut refused_retried = false;
            while pos < messages.len() {
                report.syscalls += 1;
                let sent = sendmmsg(
                    fd,
                    headers,
                    &iovs[pos..messages.len()],
                    &batch.addrs[pos..],
                    cmsgs,
                    MsgFlags::empty(),
                )
                .map(Iterator::count);
                match sent {
                    Ok(0) => return ChunkEnd::DropFrom(messages[pos].first),
                    Ok(n) => {
                        for m in &messages[pos..pos + n] {
                            report.sent += m.count;
                            if m.count > 1 {
                                report.gso_messages += 1;
                            }
                        }
                        pos += n;
                        refused_retried = false;
                    }
                    Err(Errno::EINTR) => {}
                    // A pending ICMP error from an earlier datagram, reported on this call:
                    // this datagram was not sent. Try it once more.
                    Err(Errno::ECONNREFUSED) if !refused_retried => {
                        self.counters.icmp_errors.fetch_add(1, Ordering::Relaxed);
                        refused_retried = true;
                    }
                    Err(Errno::EIO | Errno::EINVAL) if segment.is_some() => {
                        return ChunkEnd::GsoRefused(messages[pos].first);
                    }
                    Err(Errno::EAGAIN | Errno::ENOBUFS | Errno::ENOMEM) => {
                        return ChunkEnd::DropFrom(messages[pos].first);
                    }
                    Err(e) if is_icmp_error(e) || is_destination_error(e) => {
                        if is_icmp_error(e) {
                            self.counters.icmp_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        report.dropped += messages[pos].count;
                        pos += 1;
                        refused_retried = false;
                    }
                    Err(e) => return ChunkEnd::Failed(messages[pos].first, e),
                }
            }
            ChunkEnd::Done
        })
    }
}

impl AsFd for BatchSocket {
    /// For socket options rtcd does not wrap (tests set `IP_RECVERR` through it).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for BatchSocket {
    /// For the receiving worker's reactor (readiness only; it reads with
    /// [`BatchSocket::try_recv_batch`]). Always the socket's own descriptor, open as long as
    /// the `BatchSocket` is.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

enum ChunkEnd {
    Done,
    /// GSO refused at this packet index.
    GsoRefused(usize),
    /// Drop the batch from this packet index (send buffer full past the timeout).
    DropFrom(usize),
    /// The socket failed at this packet index.
    Failed(usize, Errno),
}

/// Errors an ICMP message reports asynchronously on a later call.
fn is_icmp_error(e: Errno) -> bool {
    matches!(
        e,
        Errno::ECONNREFUSED
            | Errno::EHOSTUNREACH
            | Errno::ENETUNREACH
            | Errno::EHOSTDOWN
            | Errno::ENETDOWN
            | Errno::EPROTO
            | Errno::EMSGSIZE
    )
}

/// Errors about one destination (route, firewall, address family, size): skip the datagram.
fn is_destination_error(e: Errno) -> bool {
    matches!(
        e,
        Errno::EACCES
            | Errno::EPERM
            | Errno::EADDRNOTAVAIL
            | Errno::EAFNOSUPPORT
            | Errno::EINVAL
            | Errno::EDESTADDRREQ
    )
}

/// A v4 destination on a v6 socket becomes IPv4-mapped (a dual-stack socket needs it).
fn map_dest(dest: SocketAddr, ipv6: bool) -> SocketAddr {
    match dest {
        SocketAddr::V4(v4) if ipv6 => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        other => other,
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    let v6 = std::net::SocketAddrV6::from(*addr.as_sockaddr_in6()?);
    Some(match v6.ip().to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(v4.into(), v6.port()),
        None => SocketAddr::V6(v6),
    })
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    peer: SocketAddr,
    /// Which buffer (the datagram's position in the `recvmmsg` call).
    index: u8,
    len: u16,
    /// How long before the `recvmmsg` call returned the kernel received it.
    age: Duration,
}

/// The most a kernel receive time may lie before the call that returned it: a datagram
/// waits in the socket buffer for milliseconds, not seconds; an older stamp is a wall clock
/// that was set meanwhile, and the datagram counts as just received.
const MAX_AGE: Duration = Duration::from_secs(1);

/// How long before `wall` (the wall clock when `recvmmsg` returned) the kernel stamped a
/// datagram at `ts` (wall clock too): zero for a stamp from the future or older than
/// [`MAX_AGE`] (the clock was set in between).
fn age(ts: TimeSpec, wall: SystemTime) -> Duration {
    let stamped = UNIX_EPOCH + Duration::from(ts);
    match wall.duration_since(stamped) {
        Ok(age) if age <= MAX_AGE => age,
        _ => Duration::ZERO,
    }
}

/// The preallocated receive buffers: [`RECV_BATCH`] x [`MAX_DATAGRAM`] bytes, reused by
/// every receive of one thread. Create one per thread.
pub struct RecvBatch {
    buffers: Box<[u8]>,
    slots: [Slot; RECV_BATCH],
    len: usize,
    /// When the last `recvmmsg` call returned.
    received_at: Instant,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Allocates the buffers (64 KiB), once.
    pub fn new() -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            buffers: vec![0; RECV_BATCH * MAX_DATAGRAM].into_boxed_slice(),
            slots: [Slot {
                peer: unspecified,
                index: 0,
                len: 0,
                age: Duration::ZERO,
            }; RECV_BATCH],
            len: 0,
            received_at: Instant::now(),
        }
    }

    /// Datagrams from the last receive.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last receive returned nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th datagram of the last receive: its source and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let slot = self.slots[..self.len].get(i)?;
        let start = usize::from(slot.index) * MAX_DATAGRAM;
        Some((
            slot.peer,
            &self.buffers[start..start + usize::from(slot.len)],
        ))
    }

    /// The datagrams of the last receive, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// When the kernel received the `i`-th datagram of the last receive (on this process's
    /// monotonic clock); when the call returned if the kernel gave no time.
    pub fn arrived(&self, i: usize) -> Option<Instant> {
        let slot = self.slots[..self.len].get(i)?;
        Some(
            self.received_at
                .checked_sub(slot.age)
                .unwrap_or(self.received_at),
        )
    }
}

/// Why a datagram was not added to a [`SendBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The batch holds its maximum number of datagrams: send it, then push again.
    #[error("send batch full")]
    Full,
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram larger than {MAX_DATAGRAM} bytes")]
    TooLarge,
}

#[derive(Debug, Clone, Copy)]
struct Packet {
    dest: SocketAddr,
    start: usize,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Message {
    /// Index of its first packet.
    first: usize,
    /// Packets (GSO segments) in it.
    count: usize,
    start: usize,
    len: usize,
}

/// Datagrams waiting to be sent, with their destinations: a fixed capacity, allocated once
/// and reused by every [`BatchSocket::send_batch`] (which empties it). Bounded: when full,
/// [`SendBatch::push`] refuses and the caller sends before pushing more.
#[derive(Debug)]
pub struct SendBatch {
    data: Vec<u8>,
    /// Where [`SendBatch::group_by_destination`] rebuilds `data` (then swapped with it).
    regrouped: Vec<u8>,
    packets: Vec<Packet>,
    max_packets: usize,
    messages: Vec<Message>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl SendBatch {
    /// A batch for up to `max_packets` datagrams (at least 1) of up to [`MAX_DATAGRAM`]
    /// bytes; allocates `max_packets * MAX_DATAGRAM` bytes once.
    pub fn new(max_packets: usize) -> Self {
        let max_packets = max_packets.max(1);
        Self {
            data: Vec::with_capacity(max_packets * MAX_DATAGRAM),
            regrouped: Vec::with_capacity(max_packets * MAX_DATAGRAM),
            packets: Vec::with_capacity(max_packets),
            max_packets,
            messages: Vec::with_capacity(SEND_CHUNK),
            addrs: Vec::with_capacity(SEND_CHUNK),
        }
    }

    /// Appends one datagram for `dest` (copied into the batch's buffer).
    pub fn push(&mut self, dest: SocketAddr, packet: &[u8]) -> Result<(), PushError> {
        if packet.len() > MAX_DATAGRAM {
            return Err(PushError::TooLarge);
        }
        if self.packets.len() >= self.max_packets {
            return Err(PushError::Full);
        }
        let start = self.data.len();
        self.data.extend_from_slice(packet);
        self.packets.push(Packet {
            dest,
            start,
            len: packet.len(),
        });
        Ok(())
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Whether [`SendBatch::push`] would refuse with [`PushError::Full`].
    pub fn is_full(&self) -> bool {
        self.packets.len() >= self.max_packets
    }

    /// Drops every waiting datagram (keeps the buffers).
    pub fn clear(&mut self) {
        self.data.clear();
        self.packets.clear();
        self.messages.clear();
        self.addrs.clear();
    }

    /// Puts the datagrams to each destination next to each other, keeping their order: a
    /// forwarding loop queues packet 1 to subscribers A, B, C, then packet 2 to A, B, C, and
    /// only runs to one destination can share a GSO message (whose segments must also be
    /// adjacent in memory, so the bytes are copied into the new order). Sorting by
    /// (destination, position) is a stable grouping without the allocation of a stable sort.
    fn group_by_destination(&mut self) {
        let Some(first) = self.packets.first().map(|p| p.dest) else {
            return;
        };
        if self.packets.iter().all(|p| p.dest == first) {
            return;
        }
        self.packets.sort_unstable_by_key(|p| (p.dest, p.start));
        self.regrouped.clear();
        for p in &mut self.packets {
            let start = self.regrouped.len();
            self.regrouped
                .extend_from_slice(&self.data[p.start..p.start + p.len]);
            p.start = start;
        }
        std::mem::swap(&mut self.data, &mut self.regrouped);
    }

    /// Plans the next `sendmmsg` from packet `from`: up to [`SEND_CHUNK`] messages that can
    /// share one control message. With `gso`, a run of datagrams to one destination with one
    /// size (the last may be shorter) is one message; a single datagram can join a GSO call
    /// if it is no longer than the segment size (the kernel then sends it as is). Returns the
    /// packet index after the planned ones and the GSO segment size, if any.
    fn plan(&mut self, from: usize, gso: bool, ipv6: bool) -> (usize, Option<u16>) {
        self.messages.clear();
        self.addrs.clear();
        let packets = &self.packets;
        let mut segment: Option<usize> = None;
        let mut longest_single = 0;
        let mut i = from;
        while i < packets.len() && self.messages.len() < SEND_CHUNK {
            let first = packets[i];
            let size = first.len;
            let (mut count, mut len) = (1, first.len);
            if gso && size > 0 {
                while let Some(next) = packets.get(i + count) {
                    let last = packets[i + count - 1];
                    if next.dest != first.dest
                        || next.len > size
                        || next.len == 0
                        || last.len < size
                        || count >= GSO_MAX_SEGMENTS
                        || len + next.len > GSO_MAX_BYTES
                    {
                        break;
                    }
                    count += 1;
                    len += next.len;
                }
            }
            if count == 1 {
                match segment {
                    Some(s) if first.len > s => break,
                    Some(_) => {}
                    None => longest_single = longest_single.max(first.len),
                }
            } else {
                match segment {
                    None if longest_single <= size => segment = Some(size),
                    Some(s) if s == size => {}
                    _ => break,
                }
            }
            self.messages.push(Message {
                first: i,
                count,
                start: first.start,
                len,
            });
            self.addrs
                .push(Some(SockaddrStorage::from(map_dest(first.dest, ipv6))));
            i += count;
        }
        (i, segment.map(|s| s as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn receiver() -> UdpSocket {
        let socket = UdpSocket::bind(v4(0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket
    }

    fn bind(gso: bool) -> BatchSocket {
        BatchSocket::bind(
            v4(0),
            &UdpConfig {
                recv_buffer_bytes: Some(1 << 20),
                send_buffer_bytes: Some(1 << 20),
                gso,
                ..UdpConfig::default()
            },
        )
        .unwrap()
    }

    /// A payload that tells which datagram it is: `tag` then filler up to `len`.
    fn payload(tag: u8, len: usize) -> Vec<u8> {
        let mut p = vec![tag; len];
        p[0] = tag;
        p
    }

    fn recv_all(socket: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 4096];
        (0..count)
            .map(|_| {
                let (n, _) = socket.recv_from(&mut buf).expect("datagram");
                buf[..n].to_vec()
            })
            .collect()
    }

    #[test]
    fn a_datagram_arrived_when_the_kernel_received_it_not_when_it_was_read() {
        let socket = bind(false);
        let a = receiver();
        let mut batch = RecvBatch::new();
        // The kernel turns receive stamps on a moment after the first socket asks (a deferred
        // switch): until then a datagram is stamped when it is read. A running rtcd stamps
        // from its first milliseconds on; the test waits that moment out.
        a.send_to(&payload(0, 100), socket.local_addr()).unwrap();
        assert_eq!(socket.recv_batch(&mut batch).unwrap(), 1);
        std::thread::sleep(Duration::from_millis(50));
        let sent = Instant::now();
        a.send_to(&payload(1, 100), socket.local_addr()).unwrap();
        // A busy receive thread: the datagram waits in the socket buffer.
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(socket.recv_batch(&mut batch).unwrap(), 1);
        let read = Instant::now();
        let arrived = batch.arrived(0).unwrap();
        assert!(
            arrived >= sent.checked_sub(Duration::from_millis(5)).unwrap(),
            "arrived {:?} before it was sent, read {:?} after",
            sent.saturating_duration_since(arrived),
            read.duration_since(sent)
        );
        assert!(
            read.duration_since(arrived) >= Duration::from_millis(70),
            "arrived {:?} before the read",
            read.duration_since(arrived)
        );
        assert_eq!(batch.arrived(1), None);
    }

    #[test]
    fn a_kernel_stamp_from_the_future_or_long_ago_counts_as_just_received() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let stamp = |t: SystemTime| TimeSpec::from(t.duration_since(UNIX_EPOCH).unwrap());
        let ms = Duration::from_millis;
        assert_eq!(age(stamp(wall - ms(30)), wall), ms(30));
        assert_eq!(age(stamp(wall + ms(30)), wall), Duration::ZERO);
        assert_eq!(age(stamp(wall - ms(1500)), wall), Duration::ZERO);
    }

    #[test]
    fn recv_batch_returns_datagrams_with_sources() {
        let socket = bind(true);
        let a = receiver();
        let b = receiver();
        for i in 0..20u8 {
            a.send_to(&payload(i, 100 + usize::from(i)), socket.local_addr())
                .unwrap();
            b.send_to(&payload(100 + i, 50), socket.local_addr())
                .unwrap();
        }
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 40 {
            let n = socket.recv_batch(&mut batch).unwrap();
            assert!(n <= RECV_BATCH);
            assert!(n > 0, "timed out with {} of 40", got.len());
            got.extend(batch.iter().map(|(peer, data)| (peer, data.to_vec())));
        }
        let from_a: Vec<_> = got
            .iter()
            .filter(|(p, _)| *p == a.local_addr().unwrap())
            .collect();
        assert_eq!(from_a.len(), 20);
        for (i, (_, data)) in from_a.iter().enumerate() {
            assert_eq!(data.len(), 100 + i);
            assert_eq!(data[0], i as u8);
        }
        assert_eq!(socket.stats().received, 40);
    }

    #[test]
    fn datagrams_the_kernel_dropped_for_a_full_buffer_are_counted() {
        let socket = BatchSocket::bind(
            "127.0.0.1:0".parse().unwrap(),
            &UdpConfig {
                recv_buffer_bytes: Some(4096),
                ..UdpConfig::default()
            },
        )
        .unwrap();
        let a = receiver();
        for i in 0..200u8 {
            a.send_to(&payload(i, 1000), socket.local_addr()).unwrap();
        }
        let mut batch = RecvBatch::new();
        let mut queued = 0u64;
        while let Ok(n) = socket.try_recv_batch(&mut batch) {
            queued += n as u64;
        }
        assert!(queued < 200, "a 4 KiB buffer held all of them");
        // The kernel reports its count with the next datagram it queues (and with every one
        // after: the first may find no room for it in a header the drained reads shrank).
        for i in 0..2 {
            a.send_to(&payload(i, 10), socket.local_addr()).unwrap();
            assert_eq!(socket.try_recv_batch(&mut batch).unwrap(), 1);
        }
        assert_eq!(socket.overflowed(), 200 - queued);
        assert_eq!(socket.stats().overflowed, 200 - queued);
    }

    #[test]
    fn try_recv_batch_never_waits_and_says_when_the_socket_is_empty() {
        let socket = bind(true);
        let mut batch = RecvBatch::new();
        let started = Instant::now();
        let empty = socket.try_recv_batch(&mut batch).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        // The socket's read timeout (which `recv_batch` waits for) does not apply.
        assert!(started.elapsed() < Duration::from_secs(1));
        let a = receiver();
        for i in 0..(RECV_BATCH as u8 + 3) {
            a.send_to(&payload(i, 60), socket.local_addr()).unwrap();
        }
        // Loopback delivers synchronously: every datagram is queued before the first read.
        assert_eq!(socket.try_recv_batch(&mut batch).unwrap(), RECV_BATCH);
        assert_eq!(batch.get(0).unwrap().1[0], 0);
        assert_eq!(socket.try_recv_batch(&mut batch).unwrap(), 3);
        assert_eq!(batch.get(2).unwrap().1[0], RECV_BATCH as u8 + 2);
        assert!(batch.arrived(2).is_some());
        let drained = socket.try_recv_batch(&mut batch).unwrap_err();
        assert_eq!(drained.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(batch.len(), 0);
        assert_eq!(socket.stats().received, RECV_BATCH as u64 + 3);
    }

    #[test]
    fn recv_batch_times_out_with_zero() {
        let socket = BatchSocket::bind(
            v4(0),
            &UdpConfig {
                read_timeout: Duration::from_millis(50),
                ..UdpConfig::default()
            },
        )
        .unwrap();
        let mut batch = RecvBatch::new();
        let started = Instant::now();
        assert_eq!(socket.recv_batch(&mut batch).unwrap(), 0);
        assert!(batch.is_empty());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn oversized_datagram_is_dropped_and_counted() {
        let socket = bind(true);
        let peer = receiver();
        peer.send_to(&[0x80; 3000], socket.local_addr()).unwrap();
        peer.send_to(&[0x80; 10], socket.local_addr()).unwrap();
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.is_empty() {
            socket.recv_batch(&mut batch).unwrap();
            got.extend(batch.iter().map(|(_, d)| d.len()));
        }
        assert_eq!(got, [10]);
        assert_eq!(socket.stats().truncated, 1);
    }

    /// Sends runs of equal sizes, a shorter last, mixed sizes and several destinations, and
    /// checks every datagram arrives intact and in order per destination.
    fn send_mixed(socket: &BatchSocket) -> SendReport {
        let a = receiver();
        let b = receiver();
        let (da, db) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut expected_a = Vec::new();
        let mut expected_b = Vec::new();
        let mut batch = SendBatch::new(256);
        let mut push = |dest: SocketAddr, p: Vec<u8>| {
            batch.push(dest, &p).unwrap();
            if dest == da {
                expected_a.push(p);
            } else {
                expected_b.push(p);
            }
        };
        // A: 10 x 1200 + 1 x 300 (one GSO message), then B: 5 x 1200, then singles.
        for i in 0..10 {
            push(da, payload(i, 1200));
        }
        push(da, payload(10, 300));
        for i in 0..5 {
            push(db, payload(50 + i, 1200));
        }
        push(da, payload(11, 1300));
        push(db, payload(55, 200));
        for i in 0..3 {
            push(db, payload(56 + i, 900));
        }
        // 70 x 100 to A: more than GSO_MAX_SEGMENTS in one run.
        for i in 0..70 {
            push(da, payload(100 + i, 100));
        }
        let total = expected_a.len() + expected_b.len();
        let report = socket.send_batch(&mut batch).unwrap();
        assert!(batch.is_empty());
        assert_eq!(report.sent, total);
        assert_eq!(report.dropped, 0);
        assert_eq!(recv_all(&a, expected_a.len()), expected_a);
        assert_eq!(recv_all(&b, expected_b.len()), expected_b);
        report
    }

    #[test]
    fn send_batch_with_gso_delivers_every_datagram() {
        let socket = bind(true);
        let gso = socket.gso_enabled();
        let report = send_mixed(&socket);
        if gso {
            assert!(report.gso_messages >= 4, "{report:?}");
            assert!(report.syscalls < 10, "{report:?}");
        }
    }

    #[test]
    fn gso_groups_interleaved_destinations_and_keeps_each_ones_order() {
        let socket = bind(true);
        if !socket.gso_enabled() {
            return; // the kernel refused GSO: nothing to group
        }
        let sinks: Vec<UdpSocket> = (0..3).map(|_| receiver()).collect();
        let dests: Vec<SocketAddr> = sinks.iter().map(|s| s.local_addr().unwrap()).collect();
        let mut expected = vec![Vec::new(); 3];
        let mut batch = SendBatch::new(64);
        // A fan-out: packet k to every subscriber in turn.
        for k in 0..12 {
            for (d, dest) in dests.iter().enumerate() {
                let p = payload((k * 3 + d) as u8, 1100);
                batch.push(*dest, &p).unwrap();
                expected[d].push(p);
            }
        }
        let report = socket.send_batch(&mut batch).unwrap();
        assert_eq!(report.sent, 36);
        assert_eq!(
            report.gso_messages, 3,
            "one message per destination: {report:?}"
        );
        assert_eq!(report.syscalls, 1, "{report:?}");
        for (sink, expected) in sinks.iter().zip(&expected) {
            let got = recv_all(sink, expected.len());
            assert!(&got == expected, "datagrams reordered or changed");
        }
    }

    #[test]
    fn queue_sends_a_full_batch_first_and_keeps_every_datagram_in_order() {
        let socket = bind(true);
        let rx = receiver();
        let to = rx.local_addr().unwrap();
        let mut batch = SendBatch::new(4);
        for tag in 0..10u8 {
            socket.queue(&mut batch, to, &payload(tag, 100)).unwrap();
        }
        // Two full batches went out on the way; the last two wait for the caller's send.
        assert_eq!(batch.len(), 2);
        socket
            .queue(&mut batch, to, &vec![0; MAX_DATAGRAM + 1])
            .unwrap();
        assert_eq!(batch.len(), 2, "an oversized datagram is dropped");
        socket.send_batch(&mut batch).unwrap();
        let tags: Vec<u8> = recv_all(&rx, 10).iter().map(|d| d[0]).collect();
        assert_eq!(tags, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn send_batch_without_gso_delivers_every_datagram() {
        let socket = bind(false);
        assert!(!socket.gso_enabled());
        let report = send_mixed(&socket);
        assert_eq!(report.gso_messages, 0);
        assert_eq!(report.syscalls, 2, "{report:?}"); // 90 datagrams, 64 per sendmmsg
    }

    #[test]
    fn send_batch_over_ipv6_loopback() {
        let socket = BatchSocket::bind("[::1]:0".parse().unwrap(), &UdpConfig::default()).unwrap();
        let peer = UdpSocket::bind("[::1]:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut batch = SendBatch::new(8);
        for i in 0..4 {
            batch
                .push(peer.local_addr().unwrap(), &payload(i, 1000))
                .unwrap();
        }
        assert_eq!(socket.send_batch(&mut batch).unwrap().sent, 4);
        assert_eq!(recv_all(&peer, 4).len(), 4);
        peer.send_to(b"\x80hello", socket.local_addr()).unwrap();
        let mut rb = RecvBatch::new();
        while socket.recv_batch(&mut rb).unwrap() == 0 {}
        assert_eq!(
            rb.get(0),
            Some((peer.local_addr().unwrap(), &b"\x80hello"[..]))
        );
    }

    #[test]
    fn icmp_errors_do_not_stop_the_loops() {
        let socket = bind(true);
        // Make the kernel report ICMP errors on this unconnected socket (otherwise Linux
        // swallows them): the worst case for the loops.
        nix::sys::socket::setsockopt(&socket, sockopt::Ipv4RecvErr, &true).unwrap();
        let closed = {
            let s = UdpSocket::bind(v4(0)).unwrap();
            s.local_addr().unwrap()
        };
        let open = receiver();
        let dest = open.local_addr().unwrap();
        let mut batch = SendBatch::new(16);
        for round in 0..5u8 {
            batch.push(closed, &payload(round, 100)).unwrap();
            batch.push(dest, &payload(round, 100)).unwrap();
            batch.push(closed, &payload(round, 100)).unwrap();
            batch.push(dest, &payload(round, 200)).unwrap();
            socket.send_batch(&mut batch).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(
                recv_all(&open, 2),
                [payload(round, 100), payload(round, 200)]
            );
        }
        // The receive side reports a pending error as Ok(0), then gets real datagrams.
        let mut rb = RecvBatch::new();
        assert_eq!(socket.recv_batch(&mut rb).unwrap(), 0);
        let peer = receiver();
        peer.send_to(b"\x80after", socket.local_addr()).unwrap();
        let mut got = None;
        for _ in 0..50 {
            if socket.recv_batch(&mut rb).unwrap() > 0 {
                got = rb.get(0).map(|(_, d)| d.to_vec());
                break;
            }
        }
        assert_eq!(got.as_deref(), Some(&b"\x80after"[..]));
        // Linux reports the ICMP errors as a short sendmmsg count (the error itself is then
        // lost) or as ECONNREFUSED on a later call; either way the datagram after it is
        // retried and every datagram to the open port went out.
        let stats = socket.stats();
        assert_eq!(stats.sent + stats.send_dropped, 20, "{stats:?}");
        assert!(stats.sent >= 10, "{stats:?}");
    }

    #[test]
    fn buffer_sizes_are_reported_and_batches_bounded() {
        let socket = bind(true);
        let sizes = socket.buffer_sizes();
        assert!(sizes.recv_bytes > 0 && sizes.send_bytes > 0, "{sizes:?}");
        let mut batch = SendBatch::new(2);
        assert_eq!(
            batch.push(v4(9), &[0; MAX_DATAGRAM + 1]),
            Err(PushError::TooLarge)
        );
        batch.push(v4(9), &[0; 10]).unwrap();
        batch.push(v4(9), &[0; 10]).unwrap();
        assert!(batch.is_full());
        assert_eq!(batch.push(v4(9), &[0; 10]), Err(PushError::Full));
        batch.clear();
        assert!(batch.is_empty());
    }

    /// Per-packet `sendto` vs `sendmmsg` vs GSO, 16 x 1200-byte datagrams per batch to 1, 4
    /// and 16 loopback destinations. Run:
    /// `cargo test -p rtcd --lib engine::net::udp::tests::bench_send -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark: run by hand"]
    fn bench_send_paths() {
        const BATCHES: usize = 4000;
        const PER_BATCH: usize = 16;
        let packet = [0x80u8; 1200];
        let sinks: Vec<UdpSocket> = (0..16)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                    .unwrap();
                s.set_recv_buffer_size(1 << 20).unwrap();
                s.bind(&v4(0).into()).unwrap();
                s.into()
            })
            .collect();
        // Drain the sinks in the background so their queues never overflow.
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let drains: Vec<_> = sinks
            .iter()
            .map(|s| {
                let s = s.try_clone().unwrap();
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let _ = s.recv(&mut buf);
                    }
                })
            })
            .collect();
        let dests: Vec<SocketAddr> = sinks.iter().map(|s| s.local_addr().unwrap()).collect();
        // The sending thread's CPU time: on loopback it includes the receive path the
        // kernel runs in the sender's context, as a NIC's transmit path would not.
        let cpu = || {
            let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
            Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
        };
        let per_packet = |d: Duration| d.as_nanos() as f64 / (BATCHES * PER_BATCH) as f64;
        for (ndest, interleaved) in [(1usize, false), (4, false), (4, true), (16, false)] {
            // In runs (A A A A B B B B ...) or interleaved like a fan-out (A B C D A B C D ...).
            let dest_of = |i: usize| {
                if interleaved {
                    dests[i % ndest]
                } else {
                    dests[i / (PER_BATCH / ndest)]
                }
            };
            let socket = bind(false);
            let (wall, cpu0) = (Instant::now(), cpu());
            for _ in 0..BATCHES {
                for i in 0..PER_BATCH {
                    socket.send_to(&packet, dest_of(i)).unwrap();
                }
            }
            let send_to = (per_packet(wall.elapsed()), per_packet(cpu() - cpu0));
            let mut batch = SendBatch::new(PER_BATCH);
            let mut run = |socket: &BatchSocket| {
                let (wall, cpu0) = (Instant::now(), cpu());
                let mut syscalls = 0;
                for _ in 0..BATCHES {
                    for i in 0..PER_BATCH {
                        batch.push(dest_of(i), &packet).unwrap();
                    }
                    syscalls += socket.send_batch(&mut batch).unwrap().syscalls;
                }
                (
                    per_packet(wall.elapsed()),
                    per_packet(cpu() - cpu0),
                    syscalls as f64 / BATCHES as f64,
                )
            };
            let mmsg = run(&socket);
            let gso_socket = bind(true);
            let gso_on = gso_socket.gso_enabled();
            let gso = run(&gso_socket);
            let order = if interleaved {
                "interleaved"
            } else {
                "in runs"
            };
            println!(
                "{ndest:>2} dest {order:>11}: send_to {:>5.0} ns/pkt cpu ({:>5.0} wall) | sendmmsg {:>5.0} cpu ({:>5.0} wall, {:.1} calls/batch) | GSO{} {:>5.0} cpu ({:>5.0} wall, {:.1} calls/batch)",
                send_to.1,
                send_to.0,
                mmsg.1,
                mmsg.0,
                mmsg.2,
                if gso_on { "" } else { " (unsupported)" },
                gso.1,
                gso.0,
                gso.2,
            );
        }
        stop.store(true, Ordering::Relaxed);
        for d in drains {
            d.join().unwrap();
        }
    }
}

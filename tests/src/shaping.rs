//! A weak network link for one browser: a second network namespace (the "client namespace")
//! behind a delay line and a rate limit, inside the LAN namespace of [`crate::netns`].
//!
//! ```text
//!  LAN namespace (netns::run)                         client namespace (WeakLink)
//!  rtcd-dev on 10.203.0.1 ── weak0 10.204.0.1/24      weak1 10.204.0.2/24 ── Chromium
//!                            tbf (downlink) │  ▲                 │ tbf (uplink, optional)
//!                                           ▼  │  delay line     ▼
//!                                     reader thread ─► delay ─► write to weak1
//!                                     write to weak0 ◄─ delay ◄─ reader thread
//! ```
//!
//! Why this shape: this kernel's traffic control has tbf, htb and pfifo but no netem, so the
//! delay is ours; and a user-space relay that forwards raw frames between veths would need
//! checksum offload turned off (no `ethtool` here). A TUN device instead hands us complete IP
//! packets and accepts complete ones, so [`WeakLink`] joins the two namespaces with one TUN
//! device on each side ([`LAN_TUN`] and [`CLIENT_TUN`]) and two threads per direction: one reads
//! a packet and stamps its arrival, the other writes it to the other TUN at `arrival + delay`.
//! Between them a bounded queue ([`QUEUE_PACKETS`]); a packet that finds it full is dropped and
//! counted ([`LinkCounters::overflow_drops`]): with the rate limit in front the queue holds at
//! most `rate × delay` (a few dozen packets at 600 kbit/s), so a drop there means the relay fell
//! behind, not the link model.
//!
//! The rate limit is the kernel's tbf on a TUN's egress, i.e. before the delay line: the
//! downlink (what rtcd sends the weak browser) on [`LAN_TUN`], the uplink on [`CLIENT_TUN`]. A
//! bottleneck followed by propagation delay is what an access link looks like; tbf's queue and
//! drops stand for the bottleneck's buffer. [`Shaping`] says what is chosen and why; the
//! shaping can be changed or lifted mid-test ([`WeakLink::shape_downlink`],
//! [`WeakLink::shape_uplink`]).
//!
//! Nothing is forwarded by the kernel: rtcd's packets to the browser originate in the LAN
//! namespace and the browser's originate in the client namespace, each routed into its TUN; a
//! packet written to a TUN is delivered locally. So `ip_forward` is not needed, and the strict
//! reverse-path filter passes (each side's route back to the other's address is its own TUN);
//! it is turned off on both TUNs all the same, so that a packet from another source address
//! (an ICE candidate of the other namespace) is never silently dropped.
//!
//! Browsers run in the client namespace (`Browsers::behind`: chromedriver or Firefox started
//! with `nsenter --net=`, their children inherit it). Their WebDriver control does not cross
//! the weak link (it would queue behind media and its losses would stall the test, not the
//! call): chromedriver and Firefox's BiDi server listen on the client namespace's `127.0.0.1`,
//! and [`ClientNetns::expose`] forwards the same port of the LAN namespace's `127.0.0.1` to it
//! over sockets the test's own process opens in each namespace ([`ClientNetns::run`]). The
//! browser's signaling (the page, the SDK's WebSocket) and its media do cross the link, so the
//! page must come from the LAN address (rtcd-dev listening on `netns::LAN_ADDR`), with
//! `--unsafely-treat-insecure-origin-as-secure=<origin>` for Chromium's camera.
//!
//! ```ignore
//! netns::run(|| async {
//!     let stack = rtcd_dev::start(Options { listen: format!("{LAN_ADDR}:0"), .. }).await?;
//!     let origin = format!("http://{}", stack.proxy.addr());
//!     let secure = vec![format!("--unsafely-treat-insecure-origin-as-secure={origin}")];
//!     let link = WeakLink::start(LinkConfig::weak_subscriber())?; // 600 kbit/s, 2 x 25 ms
//!     let behind = Browsers::behind(&link, secure.clone());
//!     let weak = behind.page(BrowserKind::Chromium).await?; // on 10.204.0.2
//!     weak.goto(&format!("{origin}/?room=r&name=Weak")).await?;
//!     // ...
//!     link.shape_downlink(Some(Shaping::kbit(300)))?; // tc qdisc change
//!     link.shape_downlink(None)?; // tc qdisc del: lifted
//!     drop(weak);
//!     drop(behind); // browsers before the link
//!     drop(link);
//!     stack.shutdown().await;
//!     Ok(())
//! })
//! ```
//!
//! Teardown on drop: the relay threads stop (the reader's poll wakes on a closed socket pair),
//! the TUN fds close (the devices vanish with them), and the client namespace disappears with
//! its keeper thread and the last process in it (drop the browsers first: their drop kills
//! them). Needs root and `ip`, `tc` (iproute2) and `nsenter` (util-linux).

use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns;

/// The LAN namespace's end of the delay line (a TUN device; its egress is the downlink).
pub const LAN_TUN: &str = "weak0";
/// The client namespace's end (a TUN device; its egress is the uplink).
pub const CLIENT_TUN: &str = "weak1";
/// [`LAN_TUN`]'s address; the client namespace's default gateway.
pub const LAN_SIDE: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
/// The client namespace's address (on [`CLIENT_TUN`]): its browsers' host candidates.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 2);
/// Packets one direction of the delay line holds at most (see the module doc).
pub const QUEUE_PACKETS: usize = 4096;

/// A rate limit with the kernel's tbf, as `tc qdisc ... tbf rate R burst B latency L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    /// Rate in kbit/s (1000 bit/s, as tc's `kbit`), counted on whole IP packets.
    pub rate_kbit: u32,
    /// Bucket size in bytes: how much may leave at once after an idle spell.
    pub burst_bytes: u32,
    /// Longest a packet may wait in tbf's queue; tc sizes the queue from it
    /// (`rate × latency + burst`), packets beyond are dropped.
    pub latency_ms: u32,
}

impl Shaping {
    /// `rate_kbit` with a three-packet bucket and a 100 ms queue. Three full packets (4.5 kB;
    /// 60 ms at 600 kbit/s) keep the rate honest over short windows, as an access link's
    /// shaper does, while tbf (which needs `burst` >= one MTU to pass a packet at all) never
    /// stalls a full-size packet. 100 ms of queue is a moderately buffered access link: a
    /// sender that overshoots sees the delay grow first (what delay-based bandwidth
    /// estimation reacts to) and losses once the queue is full.
    pub fn kbit(rate_kbit: u32) -> Self {
        Self {
            rate_kbit,
            burst_bytes: 4500,
            latency_ms: 100,
        }
    }

    fn tc_args(&self) -> Vec<String> {
        vec![
            "tbf".into(),
            "rate".into(),
            format!("{}kbit", self.rate_kbit),
            "burst".into(),
            self.burst_bytes.to_string(),
            "latency".into(),
            format!("{}ms", self.latency_ms),
        ]
    }
}

/// How the link is built: one-way delays and the initial shaping of each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Delay added to every packet towards the client (LAN -> client).
    pub downlink_delay: Duration,
    /// Delay added to every packet from the client (client -> LAN).
    pub uplink_delay: Duration,
    /// Rate limit on what the client receives, `None` for none.
    pub downlink: Option<Shaping>,
    /// Rate limit on what the client sends, `None` for none.
    pub uplink: Option<Shaping>,
}

impl LinkConfig {
    /// Issue 28's weak subscriber: a 600 kbit/s downlink, 25 ms each way (50 ms round trip),
    /// an unshaped uplink.
    pub fn weak_subscriber() -> Self {
        Self {
            downlink_delay: Duration::from_millis(25),
            uplink_delay: Duration::from_millis(25),
            downlink: Some(Shaping::kbit(600)),
            uplink: None,
        }
    }
}

/// What one direction of the delay line has seen (cumulative).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Packets written to the far TUN.
    pub packets: AtomicU64,
    /// Their bytes (whole IP packets).
    pub bytes: AtomicU64,
    /// Packets dropped because the delay line's queue was full.
    pub overflow_drops: AtomicU64,
    /// Packets the far TUN refused (write errors).
    pub write_errors: AtomicU64,
}

/// A snapshot of [`LinkCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets delivered.
    pub packets: u64,
    /// Bytes delivered (whole IP packets).
    pub bytes: u64,
    /// Packets dropped at the full queue.
    pub overflow_drops: u64,
    /// Packets the far TUN refused.
    pub write_errors: u64,
}

impl LinkCounters {
    fn snapshot(&self) -> Counts {
        Counts {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            overflow_drops: self.overflow_drops.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

/// Work for the client namespace's keeper thread: runs there, so that sockets it opens belong
/// to the client namespace.
type Request = Box<dyn FnOnce() + Send>;

/// The client namespace: kept alive by a thread that lives in it and serves [`Request`]s.
struct ClientNamespace {
    /// `/proc/<pid>/task/<tid>/ns/net` of the keeper thread, for `nsenter --net=`.
    path: PathBuf,
    requests: Mutex<Option<std::sync::mpsc::Sender<Request>>>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl ClientNamespace {
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.requests)
            .as_ref()
            .context("the client namespace is gone")?
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .ok()
            .context("the client namespace's keeper thread has ended")?;
        rx.recv()
            .context("no answer from the client namespace's keeper thread")
    }
}

impl Drop for ClientNamespace {
    fn drop(&mut self) {
        lock(&self.requests).take();
        if let Some(keeper) = lock(&self.keeper).take() {
            let _ = keeper.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Something that runs a command in the client namespace: what a browser launcher needs.
#[derive(Clone)]
pub struct ClientNetns {
    inner: Arc<ClientNamespace>,
}

impl ClientNetns {
    /// The `nsenter` prefix that runs a program in the client namespace (network only: the
    /// program keeps the process's mount namespace, files and user).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.inner.path.display()))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `work` on a thread in the client namespace and returns its result: sockets it
    /// creates belong to that namespace (and keep to it whichever thread uses them later), e.g.
    /// `netns.run(|| std::net::UdpSocket::bind((CLIENT_ADDR, 0)))`. One at a time: keep it short.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        self.inner.run(work)
    }

    /// Makes the client namespace's `127.0.0.1:port` reachable at the returned forwarder's
    /// [`Forward::port`] on `127.0.0.1` of the calling thread's namespace (the same number if
    /// free), without crossing the weak link (see the module doc).
    pub fn expose(&self, port: u16) -> anyhow::Result<Forward> {
        Forward::start(self.inner.clone(), port)
    }
}

/// A TCP forwarder from the LAN namespace's `127.0.0.1` to a port in the client namespace;
/// stops accepting on drop (open connections end with their ends).
pub struct Forward {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Forward {
    fn start(ns: Arc<ClientNamespace>, target: u16) -> anyhow::Result<Self> {
        // The same port number when it is free here (it usually is: the namespaces are the
        // test's own): Firefox's BiDi server answers 400 to a Host header with another port.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, target))
            .or_else(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("weak-forward".into())
            .spawn(move || {
                for near in listener.incoming() {
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(near) = near else { continue };
                    match ns
                        .run(move || TcpStream::connect((Ipv4Addr::LOCALHOST, target)))
                        .and_then(|far| Ok(far?))
                    {
                        Ok(far) => splice(near, far),
                        Err(e) => {
                            eprintln!("weak link: cannot reach 127.0.0.1:{target} in the client namespace: {e:#}");
                        }
                    }
                }
            })?;
        Ok(Self {
            port,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The port on `127.0.0.1` that leads to the client namespace's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept, which then sees the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Copies bytes both ways between two connections on two threads; each direction passes on
/// the end of its stream as a half-close.
fn splice(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [(a.try_clone(), b.try_clone()), (Ok(b), Ok(a))]
        .into_iter()
        .filter_map(|(from, to)| Some((from.ok()?, to.ok()?)))
    {
        let _ = std::thread::Builder::new()
            .name("weak-splice".into())
            .spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
                let _ = from.shutdown(Shutdown::Read);
            });
    }
}

/// One direction of the delay line: a reader thread and a writer thread.
struct Direction {
    counters: Arc<LinkCounters>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl Direction {
    /// Relays packets read from `from` to `to`, each `delay` after it was read; the reader
    /// stops when `stop`'s other end is closed.
    fn start(
        name: &str,
        from: Arc<tun::Device>,
        to: Arc<tun::Device>,
        delay: Duration,
        stop: UnixStream,
    ) -> anyhow::Result<Self> {
        let counters = Arc::new(LinkCounters::default());
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE_PACKETS);
        let reader = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name(format!("weak-{name}-read"))
                .spawn(move || read_packets(&from, &stop, &tx, &counters))?
        };
        let writer = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name(format!("weak-{name}-write"))
                .spawn(move || write_packets(&to, delay, &rx, &counters))?
        };
        Ok(Self {
            counters,
            reader: Some(reader),
            writer: Some(writer),
        })
    }

    fn join(&mut self) {
        for thread in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

/// Reads packets as they come (poll on the TUN and the stop socket), stamps them and queues
/// them; a full queue drops the packet. Ends when the stop socket closes or the TUN fails.
fn read_packets(
    tun: &tun::Device,
    stop: &UnixStream,
    queue: &SyncSender<(Instant, Vec<u8>)>,
    counters: &LinkCounters,
) {
    use nix::poll::{PollFd, PollFlags, poll};
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = [
            PollFd::new(tun.as_raw_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_raw_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, -1) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        if !fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return; // POLLERR / POLLHUP: the device is gone
            }
            continue;
        }
        let n = match tun.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        match queue.try_send((Instant::now(), buf[..n].to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                counters.overflow_drops.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Writes each queued packet at its arrival + `delay` (one delay for all, so queue order is
/// due order). Ends when the reader has ended and the queue is drained.
fn write_packets(
    tun: &tun::Device,
    delay: Duration,
    queue: &Receiver<(Instant, Vec<u8>)>,
    counters: &LinkCounters,
) {
    while let Ok((arrival, packet)) = queue.recv() {
        let due = arrival + delay;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        match tun.send(&packet) {
            Ok(_) => {
                counters.packets.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A weak link for one browser (see the module doc). Create it from inside
/// [`crate::netns::run`] (one per LAN namespace: the device names and addresses are fixed);
/// drop it after the browsers that run behind it. Its methods may be called from any thread.
pub struct WeakLink {
    ns: ClientNetns,
    /// The LAN namespace (held open), so that `tc` on [`LAN_TUN`] runs there whichever
    /// thread asks.
    lan_ns: std::fs::File,
    /// Closing these wakes the readers, which then stop.
    stops: Vec<UnixStream>,
    down: Direction,
    up: Direction,
    config: Mutex<LinkConfig>,
}

impl WeakLink {
    /// Builds the client namespace, the two TUNs, the delay line and the initial shaping.
    /// The calling thread must be in the LAN namespace (any thread of [`netns::run`]'s
    /// runtime is).
    pub fn start(config: LinkConfig) -> anyhow::Result<Self> {
        // The LAN side: a TUN opened here belongs to this (the LAN) namespace.
        let lan_ns = std::fs::File::open("/proc/thread-self/ns/net")?;
        let lan = Arc::new(open_tun(LAN_TUN, LAN_SIDE)?);
        set_rp_filter(LAN_TUN)?;

        // The client side, on a keeper thread that moves into a new namespace and stays.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (requests_tx, requests_rx) = std::sync::mpsc::channel::<Request>();
        let keeper = std::thread::Builder::new()
            .name("weak-client-netns".into())
            .spawn(move || {
                let set_up = || -> anyhow::Result<(PathBuf, tun::Device)> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("unshare(CLONE_NEWNET) for the client namespace (needs root)")?;
                    netns::ip(&["link", "set", "lo", "up"])?;
                    let device = open_tun(CLIENT_TUN, CLIENT_ADDR)?;
                    netns::ip(&["route", "add", "default", "via", &LAN_SIDE.to_string()])?;
                    std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "0")?;
                    set_rp_filter(CLIENT_TUN)?;
                    let path = PathBuf::from(format!(
                        "/proc/{}/task/{}/ns/net",
                        std::process::id(),
                        nix::unistd::gettid()
                    ));
                    Ok((path, device))
                };
                let outcome = set_up();
                let ok = outcome.is_ok();
                let _ = ready_tx.send(outcome);
                if !ok {
                    return;
                }
                // Serve until the namespace's owner drops the sender.
                while let Ok(work) = requests_rx.recv() {
                    work();
                }
            })?;
        let (path, client) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = keeper.join();
                return Err(e.context("setting up the client namespace"));
            }
            Err(_) => {
                let _ = keeper.join();
                bail!("the client namespace's thread ended before it was set up");
            }
        };
        let ns = ClientNetns {
            inner: Arc::new(ClientNamespace {
                path,
                requests: Mutex::new(Some(requests_tx)),
                keeper: Mutex::new(Some(keeper)),
            }),
        };
        let client = Arc::new(client);

        let (down_stop, down_wake) = UnixStream::pair()?;
        let (up_stop, up_wake) = UnixStream::pair()?;
        let down = Direction::start(
            "down",
            lan.clone(),
            client.clone(),
            config.downlink_delay,
            down_wake,
        )?;
        let up = Direction::start("up", client, lan, config.uplink_delay, up_wake)?;
        let link = Self {
            ns,
            lan_ns,
            stops: vec![down_stop, up_stop],
            down,
            up,
            config: Mutex::new(LinkConfig {
                downlink: None,
                uplink: None,
                ..config
            }),
        };
        link.shape_downlink(config.downlink)?;
        link.shape_uplink(config.uplink)?;
        Ok(link)
    }

    /// `program` run in the LAN namespace (through the fd held open: `/proc/PID/fd/N`).
    fn in_lan(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!(
                "--net=/proc/{}/fd/{}",
                std::process::id(),
                self.lan_ns.as_raw_fd()
            ))
            .arg("--")
            .arg(program);
        command
    }

    /// The client namespace, to launch browsers in it (see `Browsers::behind`).
    pub fn netns(&self) -> &ClientNetns {
        &self.ns
    }

    /// The configuration in force (delays, current shaping).
    pub fn config(&self) -> LinkConfig {
        *lock(&self.config)
    }

    /// Sets, changes or (with `None`) lifts the downlink's rate limit (tbf on [`LAN_TUN`]).
    pub fn shape_downlink(&self, shaping: Option<Shaping>) -> anyhow::Result<()> {
        let mut config = lock(&self.config);
        let current = config.downlink;
        tc(&self.in_lan("tc"), LAN_TUN, current, shaping)?;
        config.downlink = shaping;
        Ok(())
    }

    /// Sets, changes or (with `None`) lifts the uplink's rate limit (tbf on [`CLIENT_TUN`]).
    pub fn shape_uplink(&self, shaping: Option<Shaping>) -> anyhow::Result<()> {
        let mut config = lock(&self.config);
        let current = config.uplink;
        tc(&self.ns.command("tc"), CLIENT_TUN, current, shaping)?;
        config.uplink = shaping;
        Ok(())
    }

    /// What the delay line has delivered towards the client so far.
    pub fn downlink_counts(&self) -> Counts {
        self.down.counters.snapshot()
    }

    /// What the delay line has delivered from the client so far.
    pub fn uplink_counts(&self) -> Counts {
        self.up.counters.snapshot()
    }

    /// `tc -s qdisc show dev` [`LAN_TUN`]: the downlink shaper's counters (sent, dropped,
    /// overlimits, backlog), for reports.
    pub fn downlink_qdisc(&self) -> anyhow::Result<String> {
        let out = self
            .in_lan("tc")
            .args(["-s", "qdisc", "show", "dev", LAN_TUN])
            .output()
            .context("running tc")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for WeakLink {
    fn drop(&mut self) {
        self.stops.clear();
        self.down.join();
        self.up.join();
    }
}

/// Opens TUN device `name` (no packet information header) in the calling thread's namespace,
/// gives it `addr/24` and brings it up.
fn open_tun(name: &str, addr: Ipv4Addr) -> anyhow::Result<tun::Device> {
    let mut config = tun::Configuration::default();
    // No packet information header (the crate opens with IFF_NO_PI by default); address and
    // state are set with `ip` below, the same way as the LAN namespace's.
    config.tun_name(name).platform_config(|p| {
        p.ensure_root_privileges(false);
    });
    let device =
        tun::create(&config).with_context(|| format!("opening TUN {name} (/dev/net/tun)"))?;
    netns::ip(&["addr", "add", &format!("{addr}/24"), "dev", name])?;
    netns::ip(&["link", "set", name, "up"])?;
    Ok(device)
}

/// Turns the reverse-path filter off on `dev` (in the calling thread's namespace).
fn set_rp_filter(dev: &str) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"), "0")
        .with_context(|| format!("turning rp_filter off on {dev}"))
}

/// Moves `dev`'s root qdisc from `current` to `wanted` with `tc` run by `base` (a plain `tc`,
/// or one in the client namespace).
fn tc(
    base: &Command,
    dev: &str,
    current: Option<Shaping>,
    wanted: Option<Shaping>,
) -> anyhow::Result<()> {
    let verb_and_rest: Option<Vec<String>> = match (current, wanted) {
        (None, None) => None,
        (None, Some(s)) => Some(qdisc_args("add", dev, Some(s))),
        (Some(_), Some(s)) => Some(qdisc_args("change", dev, Some(s))),
        (Some(_), None) => Some(qdisc_args("del", dev, None)),
    };
    let Some(args) = verb_and_rest else {
        return Ok(());
    };
    let mut command = Command::new(base.get_program());
    command.args(base.get_args()).args(&args);
    let out = command
        .output()
        .with_context(|| format!("running tc {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn qdisc_args(verb: &str, dev: &str, shaping: Option<Shaping>) -> Vec<String> {
    let mut args: Vec<String> = ["qdisc", verb, "dev", dev, "root"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if let Some(s) = shaping {
        args.extend(s.tc_args());
    }
    args
}

/// Writes a fake camera for Chromium's `--use-file-for-fake-video-capture=<file>` that keeps
/// an encoder busy: `frames` frames of `width` x `height` grey mosaic noise at `fps` (a Y4M file,
/// looped by Chromium), 4x4-pixel tiles of random brightness in a 64-level band. Why: the
/// built-in fake camera's picture is so simple that Chromium's VP8 sends about 500 kbit/s at
/// 640x480 whatever its bandwidth estimate allows (measured 2026-12-02: target 1.16 Mbit/s,
/// sent 480 kbit/s), too little to exceed a 600 kbit/s link. Pixel noise is too much the other
/// way: the encoder's quality scaler halves the resolution, and 320x240 is capped at
/// 600 kbit/s. Tiles give the encoder a few bits per 4x4 block and frame that it cannot predict
/// (about 1.7 Mbit/s of entropy at 640x480 and 15 fps). A 640x480 frame is 450 kB.
pub fn noise_camera(
    path: &std::path::Path,
    width: usize,
    height: usize,
    fps: u32,
    frames: usize,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    const TILE: usize = 4;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    writeln!(
        out,
        "YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg"
    )?;
    // xorshift64: deterministic, fast, and random enough for an encoder.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut luma = vec![0u8; width * height];
    let chroma = vec![128u8; (width / 2) * (height / 2)];
    let tiles_x = width.div_ceil(TILE);
    let mut row = vec![0u8; tiles_x];
    for _ in 0..frames {
        for (y, line) in luma.chunks_mut(width).enumerate() {
            if y % TILE == 0 {
                for tile in row.iter_mut() {
                    *tile = 96 + (next() % 64) as u8;
                }
            }
            for (x, pixel) in line.iter_mut().enumerate() {
                *pixel = row[x / TILE];
            }
        }
        out.write_all(b"FRAME\n")?;
        out.write_all(&luma)?;
        out.write_all(&chroma)?;
        out.write_all(&chroma)?;
    }
    out.flush()?;
    Ok(())
}

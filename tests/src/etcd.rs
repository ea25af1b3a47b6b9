//! Real etcd clusters for integration tests: the cluster client is only trustworthy if it is
//! exercised against the server it will talk to in production (elections, restarts, lost
//! members), not a mock. Blocking std only, so it works from sync and tokio tests alike.
//!
//! Indices are member positions (`0..members`); an out-of-range index panics, as in a test.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};

/// How long a member may take to report healthy: an election plus fsyncs on a slow CI disk.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// One etcd process; its ports and data dir outlive the process so it can be restarted.
struct Member {
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A throwaway etcd cluster on 127.0.0.1; every process is killed and its data removed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    bin: PathBuf,
    token: String,
    initial_cluster: String,
    /// Another address every member serves clients on (same port), if any.
    also_on: Option<std::net::Ipv4Addr>,
    // Declared last so the processes are gone before their data dirs are deleted.
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// A single-member cluster, for tests that need a server but not a quorum.
    pub fn start_one() -> anyhow::Result<EtcdCluster> {
        Self::start(1)
    }

    /// Starts `members` processes as one fresh cluster and waits until every one is healthy.
    pub fn start(members: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_also_on(members, None)
    }

    /// [`EtcdCluster::start`], every member also serving clients on `also_on` (an address of
    /// the test's own network namespace), same port: a test cuts one client's path (nftables
    /// on that address) while others reach the cluster on 127.0.0.1.
    pub fn start_also_on(
        members: usize,
        also_on: Option<std::net::Ipv4Addr>,
    ) -> anyhow::Result<EtcdCluster> {
        // Free ports are found by binding and releasing them, so another test process may take
        // one before etcd binds it: a member that exits at start is tried again on new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(members, also_on) {
                Err(e) if attempt < 3 && e.to_string().contains("exited with") => continue,
                started => return started,
            }
        }
    }

    fn start_once(
        members: usize,
        also_on: Option<std::net::Ipv4Addr>,
    ) -> anyhow::Result<EtcdCluster> {
        if members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let bin = std::env::var_os("RTCD_ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
        if !bin.is_file() {
            bail!(
                "etcd binary not found at {}: etcd-server must be installed (scripts/test.sh \
                 installs it) or RTCD_ETCD_BIN set",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("rtcd-etcd-").tempdir()?;
        let ports = free_ports(members * 2)?;
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}=http://127.0.0.1:{}", m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        // Unique per cluster so members of concurrently running tests can never join each other.
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!(
            "rtcd-test-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = EtcdCluster {
            members,
            bin,
            token,
            initial_cluster,
            also_on,
            _dir: dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new")?;
        }
        // Members only turn healthy once a leader exists, which needs them all running.
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Client URLs of all members, in index order (dead ones included).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Client URLs of all members on the other address they serve on
    /// ([`EtcdCluster::start_also_on`]); empty without one.
    pub fn endpoints_also_on(&self) -> Vec<String> {
        self.also_on.map_or_else(Vec::new, |ip| {
            self.members
                .iter()
                .map(|m| format!("http://{ip}:{}", m.client_port))
                .collect()
        })
    }

    /// The client ports of all members, in index order.
    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client_port).collect()
    }

    /// SIGKILLs member `i` (no graceful leave: this is a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Brings a killed member back on its old ports and data dir, then waits until healthy.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].child.is_some() {
            bail!("etcd member m{i} is still running; kill it first");
        }
        self.spawn(i, "existing")?;
        self.wait_healthy(i)
    }

    /// The index of the current leader, retrying up to 5 s while an election is under way.
    pub fn leader(&self) -> anyhow::Result<usize> {
        self.find_leader(Duration::from_secs(5))
    }

    /// Like [`leader`](Self::leader) with 10 s, for after the leader was killed.
    pub fn wait_for_leader(&self) -> anyhow::Result<usize> {
        self.find_leader(Duration::from_secs(10))
    }

    /// The last 50 lines of every member's log, for a failing test to print.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let text = std::fs::read_to_string(&m.log).unwrap_or_else(|e| format!("<{e}>\n"));
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- etcd m{i} ({}) ---\n", m.log.display()));
            for line in &lines[lines.len().saturating_sub(50)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn spawn(&mut self, i: usize, state: &str) -> anyhow::Result<()> {
        let m = &self.members[i];
        let log = OpenOptions::new().create(true).append(true).open(&m.log)?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let listen = match self.also_on {
            Some(ip) => format!("{client},http://{ip}:{}", m.client_port),
            None => client.clone(),
        };
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let name = format!("m{i}");
        let data_dir = m.data_dir.to_string_lossy().into_owned();
        let flags = [
            ("--name", name.as_str()),
            ("--data-dir", &data_dir),
            ("--listen-client-urls", &listen),
            ("--advertise-client-urls", &client),
            ("--listen-peer-urls", &peer),
            ("--initial-advertise-peer-urls", &peer),
            ("--initial-cluster", &self.initial_cluster),
            ("--initial-cluster-state", state),
            ("--initial-cluster-token", &self.token),
            // etcd's defaults (100 ms heartbeats, 1 s election timeout): faster elections
            // would be called spuriously on a loaded two-core CI host running other tests.
            ("--heartbeat-interval", "100"),
            ("--election-timeout", "1000"),
            ("--logger", "zap"),
            ("--log-outputs", "stderr"),
            ("--log-level", "error"),
        ];
        let mut cmd = Command::new(&self.bin);
        clear_etcd_env(&mut cmd);
        for (flag, value) in flags {
            cmd.arg(flag).arg(value);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.members[i].client_port));
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        // etcd accepts client connections before it is ready and holds them until it is (an
        // election away): short reads keep the crash check above going; doubling them lets a
        // slow box answer.
        let mut read_timeout = Duration::from_millis(200);
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                // A crashed member will never turn healthy: fail now, not after 20 s.
                if let Ok(Some(status)) = child.try_wait() {
                    self.members[i].child = None;
                    bail!("etcd member m{i} exited with {status}\n{}", self.logs());
                }
            }
            if health(addr, read_timeout).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd member m{i} not healthy after {HEALTH_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            read_timeout = (read_timeout * 2).min(Duration::from_secs(2));
            std::thread::sleep(POLL);
        }
    }

    fn find_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.leader_once() {
                Ok(Some(i)) => return Ok(i),
                Ok(None) => anyhow!("no member reports itself leader"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "no etcd leader after {timeout:?}: {last:#}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// One `etcdctl endpoint status` over the live members: the leader is the member whose own
    /// id equals the leader id it reports (followers still name a dead leader until timeout).
    fn leader_once(&self) -> anyhow::Result<Option<usize>> {
        let alive: Vec<String> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        let ctl = std::env::var_os("RTCD_ETCDCTL_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.bin.with_file_name("etcdctl"));
        let mut cmd = Command::new(&ctl);
        clear_etcd_env(&mut cmd); // Before setting ETCDCTL_API, which it would also remove.
        cmd.arg(format!("--endpoints={}", alive.join(",")))
            .args([
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", ctl.display()))?;
        // A member mid-restart makes etcdctl fail but still print the others' status.
        let statuses: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("etcdctl: {}", String::from_utf8_lossy(&out.stderr)))?;
        for s in &statuses {
            let id = s
                .pointer("/Status/header/member_id")
                .and_then(|v| v.as_u64());
            let leader = s.pointer("/Status/leader").and_then(|v| v.as_u64());
            if id.is_some() && id == leader {
                let ep = s
                    .get("Endpoint")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                return Ok((0..self.members.len()).find(|&i| self.endpoint(i) == ep));
            }
        }
        Ok(None)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Distinct free ports: all listeners are held until every port is picked so none repeats.
/// Another process could grab one before etcd binds it; rare enough for tests.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// `ETCD_*` / `ETCDCTL_*` variables in the developer's shell would override our flags.
fn clear_etcd_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
}

/// A bare HTTP/1.0 GET of `/health`: enough for one JSON line, no HTTP crate needed.
fn health(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body.contains("\"health\":\"true\""))
}

//! A real coturn (Debian's `coturn` package, `/usr/bin/turnserver`) for the TURN tests, in a
//! network namespace of its own next to the test's (issue 15).
//!
//! [`Coturn::start`] must run inside the test's namespace ([`crate::netns::run`]). It starts a
//! thread that leaves it for a fresh namespace (`unshare(CLONE_NEWNET)` moves only that
//! thread), links the two with a veth pair (`10.204.N.1` in the test's namespace, `10.204.N.2`
//! in coturn's, a default route back), and spawns `turnserver` from that thread, so the
//! process lives in coturn's namespace. The relay therefore has an address of its own, which
//! the browsers in the test's namespace do not have: a test can drop UDP to rtcd from every
//! address but the relay's (nft), exactly like a network where only the TURN server reaches
//! the media hosts. The namespace (and the veth pair) disappear with the process, which is
//! killed on drop.
//!
//! The configuration follows `deploy/coturn/turnserver.conf`: `use-auth-secret` with one or
//! more `static-auth-secret`s, UDP + TCP on 3478, TLS on 5349 (a certificate of a test CA made
//! with the `openssl` CLI for the relay's address), every private range denied as a peer
//! except the media host (`allowed-peer-ip`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use crate::netns::ip;

/// The realm of every test coturn.
pub const REALM: &str = "rtcd.test";

/// The binary (Debian package `coturn`).
pub const TURNSERVER: &str = "/usr/bin/turnserver";

/// Distinct subnets for the coturn instances of one test binary.
static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);

/// How to run one coturn.
#[derive(Debug, Clone)]
pub struct CoturnOptions {
    /// `static-auth-secret` lines (coturn accepts credentials signed with any of them).
    pub secrets: Vec<String>,
    /// The only private address relayed to (`allowed-peer-ip`): the media host.
    pub media_host: Ipv4Addr,
    /// `max-allocate-lifetime` in seconds (browsers refresh at half of a lifetime under 2 min).
    pub max_allocate_lifetime: u32,
}

/// A running turnserver in a namespace of its own; killed on drop.
pub struct Coturn {
    child: Child,
    /// coturn's address (listening and relay), in its namespace.
    pub addr: Ipv4Addr,
    /// The test namespace's end of the link.
    pub gateway: Ipv4Addr,
    dir: tempfile::TempDir,
}

impl Coturn {
    /// Starts coturn and waits until its TCP listener accepts. Call it from inside the test's
    /// namespace.
    pub async fn start(options: CoturnOptions) -> anyhow::Result<Self> {
        ensure!(
            Path::new(TURNSERVER).is_file(),
            "{TURNSERVER} not found: the TURN tests need Debian's `coturn` package (scripts/test.sh installs it: apt-get install -y coturn)"
        );
        let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        let addr = Ipv4Addr::new(10, 204, n, 2);
        let gateway = Ipv4Addr::new(10, 204, n, 1);
        let dir = tempfile::tempdir()?;
        make_pki(dir.path(), addr)?;
        let conf = dir.path().join("turnserver.conf");
        std::fs::write(&conf, config(&options, addr, dir.path()))?;
        // Its own log goes to turnserver.log (log-file); anything else it prints, here.
        let log = std::fs::File::create(dir.path().join("turnserver.out"))?;
        let (near, far) = (format!("tn{n}"), format!("tf{n}"));

        let (tid_tx, tid_rx) = std::sync::mpsc::channel::<String>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("coturn-netns".into())
            .spawn({
                let far = far.clone();
                move || -> anyhow::Result<Child> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("unshare(CLONE_NEWNET) for coturn (needs root)")?;
                    // "/proc/thread-self" -> "<pid>/task/<tid>": this thread's namespace file.
                    let me = std::fs::read_link("/proc/thread-self")?;
                    tid_tx.send(format!("/proc/{}/ns/net", me.display()))?;
                    go_rx.recv().context("the test namespace gave up")?;
                    let a = format!("{addr}/24");
                    let gw = gateway.to_string();
                    for args in [
                        &["link", "set", "lo", "up"][..],
                        &["addr", "add", &a, "dev", &far],
                        &["link", "set", &far, "up"],
                        &["route", "add", "default", "via", &gw],
                    ] {
                        ip(args)?;
                    }
                    Command::new(TURNSERVER)
                        .arg("-c")
                        .arg(&conf)
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log)
                        .spawn()
                        .context("cannot start turnserver")
                }
            })?;
        let netns = tid_rx.recv().context("coturn's namespace thread failed")?;
        let linked = (|| -> anyhow::Result<()> {
            ip(&[
                "link", "add", &near, "type", "veth", "peer", "name", &far, "netns", &netns,
            ])?;
            ip(&["addr", "add", &format!("{gateway}/24"), "dev", &near])?;
            ip(&["link", "set", &near, "up"])
        })();
        let _ = go_tx.send(());
        let child = thread
            .join()
            .map_err(|_| anyhow::anyhow!("coturn's namespace thread panicked"))??;
        let coturn = Self {
            child,
            addr,
            gateway,
            dir,
        };
        linked?;
        // Up when its TCP listener accepts (the UDP and TLS listeners open in the same step).
        let target = SocketAddr::from((addr, 3478));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(target).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "coturn did not listen on {target} within 15 s; its log:\n{}",
                    coturn.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The UDP and TLS listeners are opened by other threads: give them a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(coturn)
    }

    /// `turn:` (UDP), `turn:` (TCP) and `turns:` URLs of this server, in that order.
    pub fn urls(&self) -> Vec<String> {
        vec![
            format!("turn:{}:3478?transport=udp", self.addr),
            format!("turn:{}:3478?transport=tcp", self.addr),
            format!("turns:{}:5349?transport=tcp", self.addr),
        ]
    }

    /// The test CA that signed coturn's TLS certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Base64 SHA-256 of the TLS certificate's public key, for Chromium's
    /// `--ignore-certificate-errors-spki-list` (it trusts only what is in its NSS store).
    pub fn spki_sha256(&self) -> anyhow::Result<String> {
        spki_sha256(&self.dir.path().join("turn.pem"))
    }

    /// coturn's log so far (and what it printed outside it).
    pub fn log(&self) -> String {
        // Lossy: coturn's verbose log is not always UTF-8.
        let read = |name: &str| {
            String::from_utf8_lossy(&std::fs::read(self.dir.path().join(name)).unwrap_or_default())
                .into_owned()
        };
        read("turnserver.out") + &read("turnserver.log")
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration of `deploy/coturn/turnserver.conf`, on the test's addresses and files.
fn config(o: &CoturnOptions, addr: Ipv4Addr, dir: &Path) -> String {
    let mut c = format!(
        "listening-ip={addr}\nrelay-ip={addr}\nlistening-port=3478\ntls-listening-port=5349\n\
         min-port=49152\nmax-port=49999\nrealm={REALM}\nuse-auth-secret\n"
    );
    for s in &o.secrets {
        c.push_str(&format!("static-auth-secret={s}\n"));
    }
    c.push_str(&format!(
        "cert={d}/turn.pem\npkey={d}/turn.key\nno-tlsv1\nno-tlsv1_1\nno-dtls\n\
         fingerprint\nno-cli\nno-multicast-peers\nno-software-attribute\n\
         denied-peer-ip=0.0.0.0-0.255.255.255\n\
         denied-peer-ip=10.0.0.0-10.255.255.255\n\
         denied-peer-ip=100.64.0.0-100.127.255.255\n\
         denied-peer-ip=127.0.0.0-127.255.255.255\n\
         denied-peer-ip=169.254.0.0-169.254.255.255\n\
         denied-peer-ip=172.16.0.0-172.31.255.255\n\
         denied-peer-ip=192.168.0.0-192.168.255.255\n\
         allowed-peer-ip={media}\n\
         max-allocate-lifetime={life}\n\
         userdb={d}/turndb\npidfile={d}/turnserver.pid\nlog-file={d}/turnserver.log\nsimple-log\nno-stdout-log\nverbose\n",
        d = dir.display(),
        media = o.media_host,
        life = o.max_allocate_lifetime,
    ));
    c
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("cannot run openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// `ca.pem` / `ca.key` and `turn.pem` / `turn.key` for `addr` (IP SAN) in `dir`.
fn make_pki(dir: &Path, addr: Ipv4Addr) -> anyhow::Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=rtcd-turn-test-ca",
        "-days",
        "1",
    ]);
    openssl(dir, &ca)?;
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "turn.key",
        "-out",
        "turn.csr",
        "-subj",
        "/CN=turn.rtcd.test",
    ]);
    openssl(dir, &req)?;
    std::fs::write(
        dir.join("turn.ext"),
        format!(
            "subjectAltName=IP:{addr},DNS:turn.rtcd.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "turn.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "turn.pem",
            "-extfile",
            "turn.ext",
        ],
    )?;
    Ok(())
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate.
fn spki_sha256(cert: &Path) -> anyhow::Result<String> {
    let dir = cert.parent().context("certificate path")?;
    let name = cert.file_name().context("certificate name")?;
    let pubkey = openssl(
        dir,
        &["x509", "-in", &name.to_string_lossy(), "-noout", "-pubkey"],
    )?;
    std::fs::write(dir.join("spki.pem"), pubkey)?;
    openssl(
        dir,
        &[
            "pkey", "-pubin", "-in", "spki.pem", "-outform", "DER", "-out", "spki.der",
        ],
    )?;
    let digest = openssl(dir, &["dgst", "-sha256", "-binary", "spki.der"])?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(digest))
}

//! rtcd under test: in-process ([`TestRtcd`]) or as a child process ([`RtcdProcess`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rtcd::Rtcd;
use rtcd::auth::{ClientId, Principal, Secret};
use rtcd::config::Config;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// The admin secret every test daemon uses.
pub const ADMIN_SECRET: &str = "test-admin-secret-0123456789abcdef";

/// Environment overrides for a loopback test daemon storing its data in `dir`. bcrypt cost 4
/// keeps hashing at ~1 ms; tests that need slow hashing override it.
pub fn test_env(dir: &Path, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("RTCD_API_HTTP_LISTEN_ADDRESS", "127.0.0.1:0"),
        ("RTCD_API_METRICS_LISTEN_ADDRESS", "127.0.0.1:0"),
        ("RTCD_API_SECURITY_ENABLE_ADMIN", "true"),
        ("RTCD_API_SECURITY_ADMIN_SECRET_KEY", ADMIN_SECRET),
        ("RTCD_API_SECURITY_BCRYPT_COST", "4"),
        ("RTCD_API_HTTP_SHUTDOWN_TIMEOUT_SECONDS", "5"),
        // Media and signaling on loopback, ephemeral ports: never the machine's own address.
        ("RTCD_GRPC_LISTEN_ADDRESS", "127.0.0.1:0"),
        ("RTCD_RTC_ICE_ADDRESS_UDP", "127.0.0.1"),
        ("RTCD_RTC_ICE_PORT_UDP", "0"),
        ("RTCD_RTC_ICE_INTERFACES", "[\"lo\"]"),
        ("RTCD_RTC_INCLUDE_LOOPBACK_CANDIDATES", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push((
        "RTCD_STORE_DATA_SOURCE".into(),
        dir.join("db").display().to_string(),
    ));
    for (k, v) in overrides {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// An rtcd running inside the test process, for every kind of test: the HTTP API and the
/// registry (`base`, `internal`, [`TestRtcd::url`]) and media over gRPC signaling
/// ([`TestRtcd::register`], [`TestRtcd::client`]). One type, so that a test needing both does
/// not start two daemons and a fix to the start-up reaches every test.
pub struct TestRtcd {
    /// The daemon (taken by [`TestRtcd::stop`] or [`TestRtcd::split`]).
    pub rtcd: Rtcd,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the internal metrics listener.
    pub internal: String,
    /// The store directory when the daemon owns it ([`TestRtcd::start`]); `None` when the
    /// caller keeps it to restart on the same data ([`TestRtcd::start_in`]).
    dir: Option<tempfile::TempDir>,
}

impl TestRtcd {
    /// Starts a daemon with a store of its own, removed when it is dropped; `extra` adds or
    /// overrides `RTCD_*` variables. Calls drain at once on shutdown unless `extra` says
    /// otherwise (media tests end many calls).
    pub async fn start(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut overrides = vec![("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0")];
        overrides.extend_from_slice(extra);
        let mut rtcd = Self::start_in(dir.path(), &overrides).await?;
        rtcd.dir = Some(dir);
        Ok(rtcd)
    }

    /// Starts a daemon whose data lives in `dir` (which the caller keeps, so it can restart).
    /// `RTCD_TEST_LOG=<level>` logs the daemon to the test's output.
    pub async fn start_in(dir: &Path, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let config = Config::load(None, test_env(dir, overrides))?;
        if let Ok(level) = std::env::var("RTCD_TEST_LOG") {
            rtcd::logging::init(&rtcd::config::LoggerConfig { level, json: false });
        }
        let rtcd = Rtcd::start(config).await?;
        let base = format!("http://{}", rtcd.http_addr());
        let internal = format!(
            "http://{}",
            rtcd.metrics_addr().context("metrics listener enabled")?
        );
        Ok(Self {
            rtcd,
            base,
            internal,
            dir: None,
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful shutdown.
    pub async fn stop(self) {
        self.rtcd.shutdown().await;
    }

    /// The daemon and its own store directory, separately (to shut down in a task while the
    /// directory outlives it); `None` for a daemon started with [`TestRtcd::start_in`].
    pub fn split(self) -> (Rtcd, Option<tempfile::TempDir>) {
        (self.rtcd, self.dir)
    }

    /// Registers a client (key `<id>-key-that-is-long-enough-0123456789`) and returns its
    /// `authorization` value (Basic) for gRPC signaling.
    pub async fn register(&self, id: &str) -> anyhow::Result<String> {
        let key = format!("{id}-key-that-is-long-enough-0123456789");
        self.register_key(id, &key).await?;
        Ok(crate::media::basic(id, &key))
    }

    /// Registers client `id` with `key` directly in the registry (as the admin would).
    pub async fn register_key(&self, id: &str, key: &str) -> anyhow::Result<()> {
        self.rtcd
            .auth()
            .register(
                Some(&Principal::Admin),
                ClientId::parse(id)?,
                Secret::new(key.to_owned()),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            )
            .await?;
        Ok(())
    }

    /// The gRPC endpoint.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.rtcd.grpc_addr()
    }

    /// A gRPC client (plaintext, loopback).
    pub async fn client(&self) -> anyhow::Result<SignalingClient<Channel>> {
        Ok(SignalingClient::connect(format!("http://{}", self.grpc_addr())).await?)
    }
}

/// An HTTP client whose connections come from `source` (any 127.x.y.z works on Linux), so
/// tests can play several source addresses against per-address rate limits.
pub fn client_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client builds")
}

/// A plain loopback HTTP client.
pub fn client() -> reqwest::Client {
    client_from("127.0.0.1".parse().expect("literal address"))
}

/// The Prometheus text at `url` (a `/metrics` endpoint of either daemon).
pub async fn scrape(url: &str) -> anyhow::Result<String> {
    Ok(client().get(url).send().await?.text().await?)
}

/// The sum of every sample whose line starts with `series` in Prometheus text: a bare name
/// sums all its label sets, `name{label="x"` narrows them.
pub fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the one sample named exactly `series` (name and label set as printed, e.g.
/// `rtcd_calls` or `name{label="x"}`) in Prometheus text; `None` if absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A 32..72-byte auth key unique to `tag`.
pub fn key_for(tag: &str) -> String {
    let mut key = format!("key-{tag}-");
    while key.len() < 40 {
        key.push('x');
    }
    key.truncate(72);
    key
}

/// The rtcd CLI as a child process (the `rtcd-under-test` binary of this crate, which is
/// `rtcd::cli::main`), with stderr collected line by line.
pub struct RtcdProcess {
    /// The child.
    pub child: tokio::process::Child,
    /// Every stderr line so far arrives here.
    lines: mpsc::UnboundedReceiver<String>,
    /// All lines read so far.
    pub log: Vec<String>,
    /// The "rtcd ready" line's fields (addresses of every listener), once seen.
    pub ready_fields: Option<serde_json::Value>,
}

impl RtcdProcess {
    /// Runs `bin serve` with `env` (no inherited RTCD_* variables) and JSON debug logs.
    pub fn spawn(bin: &Path, env: &[(String, String)]) -> anyhow::Result<Self> {
        Self::spawn_wrapped(&[], bin, env)
    }

    /// Like [`RtcdProcess::spawn`], run through `wrapper` (a program and its arguments that
    /// end by executing the rest of their command line, e.g. one that restricts the process
    /// first).
    pub fn spawn_wrapped(
        wrapper: &[&str],
        bin: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
            None => tokio::process::Command::new(bin),
        };
        cmd.arg("serve")
            .env_clear()
            .envs(env.iter().cloned())
            .env("RTCD_LOGGER_JSON", "true")
            .env("RTCD_LOGGER_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stderr = child.stderr.take().context("stderr piped")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            log: Vec::new(),
            ready_fields: None,
        })
    }

    /// Waits for the "rtcd ready" line and returns the HTTP API address.
    pub async fn ready(&mut self) -> anyhow::Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .context("rtcd did not become ready within 30 s")?;
            let Some(line) = line else {
                bail!("rtcd exited before ready; log:\n{}", self.log.join("\n"))
            };
            self.log.push(line.clone());
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "rtcd ready"
            {
                let addr = v["http_addr"]
                    .as_str()
                    .context("http_addr field")?
                    .parse()?;
                self.ready_fields = Some(v);
                return Ok(addr);
            }
        }
    }

    /// An address from the ready line, e.g. `grpc_addr` or `ice_udp` (after [`Self::ready`]).
    pub fn ready_addr(&self, field: &str) -> anyhow::Result<SocketAddr> {
        let v = self.ready_fields.as_ref().context("not ready yet")?;
        let text = v[field]
            .as_str()
            .with_context(|| format!("no {field} field"))?;
        Ok(text.parse()?)
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the child.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("child still running")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Waits for exit (bounded) and drains the remaining log lines.
    pub async fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("rtcd did not exit within 30 s")??;
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await
        {
            self.log.push(line);
        }
        Ok(status)
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

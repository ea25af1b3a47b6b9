//! Target "ours": rtcd and rtcd-proxy as two real processes (so their CPU and memory are
//! measured separately), and a participant that joins exactly as a browser does: a JWT minted
//! for the room, the proxy's WebSocket, `join`, then offers, answers and candidates relayed to
//! rtcd. The client makes every offer (docs/protocol.md section 4a): the first right after
//! `joined`, then one after each `negotiation_needed`; rtcd never offers.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use super::peer::{self, FromPeer, PeerConfig, PeerOutcome, ToPeer};
use super::stats::{Counters, Watched};

/// Where the two binaries are and how rtcd's media is set up.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The rtcd binary (`rtcd` from `cargo build --release -p rtcd`, or `rtcd-under-test`).
    pub rtcd_bin: PathBuf,
    /// The proxy binary (`rtcd-proxy`, or `proxy-under-test`).
    pub proxy_bin: PathBuf,
    /// Extra `RTCD_*` settings (e.g. the ICE address and interfaces inside a network namespace).
    pub rtcd_env: Vec<(String, String)>,
    /// rtcd's log level (warn for benchmarks: logging is not what we measure).
    pub log_level: String,
    /// Run both processes under `taskset -c <cpus>` (e.g. "0"), away from the load tool's core.
    pub cpus: Option<String>,
    /// rtcd may record (`[recording]` on, into its temporary data directory).
    pub record: bool,
}

/// Starts recording every call `lg-0` .. `lg-<calls - 1>` through the proxy behind `ws_url`
/// (its room service API, a server token the spawned proxy accepts).
pub async fn record_calls(ws_url: &str, calls: usize) -> anyhow::Result<()> {
    let base = ws_url
        .strip_prefix("ws://")
        .and_then(|u| u.strip_suffix("/ws"))
        .with_context(|| format!("{ws_url} is not ws://HOST:PORT/ws"))?;
    let t = rtcd_e2e::proxy::now();
    let token = rtcd_e2e::proxy::hs_token(&json!({
        "iss": rtcd_e2e::proxy::ISSUER, "aud": rtcd_e2e::proxy::AUDIENCE, "sub": "loadgen",
        "iat": t, "exp": t + 300, "api": ["rooms:admin"],
    }));
    let client = reqwest::Client::new();
    for call in 0..calls {
        let response = client
            .post(format!("http://{base}/api/v1/rooms/lg-{call}/recordings"))
            .bearer_auth(&token)
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(
            status.as_u16() == 201,
            "starting the recording of lg-{call}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// `bin`, or `taskset -c <cpus> bin` (taskset execs, so the PID is the binary's).
fn command(bin: &std::path::Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The running pair; both processes are killed when it is dropped.
pub struct Stack {
    rtcd: Child,
    proxy: Child,
    /// `ws://.../ws` of the proxy.
    pub ws_url: String,
    /// rtcd's HTTP API (`/metrics` with the admin credentials).
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Mints the tokens the spawned proxy accepts (HS256, key `hs1`).
pub fn token(identity: &str, room: &str) -> String {
    let mut claims = rtcd_e2e::proxy::claims(identity, room);
    claims["role"] = "moderator".into();
    claims["exp"] = (rtcd_e2e::proxy::now() + 3600).into();
    rtcd_e2e::proxy::hs_token(&claims)
}

impl Stack {
    /// Starts rtcd (temp data dir, a registered client for the proxy), then the proxy linked to
    /// it, with admission limits raised so that the load, not the limiter, is what we measure.
    pub async fn start(config: &StackConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut env = rtcd_e2e::daemon::test_env(dir.path(), &[]);
        if config.record {
            env.push(("RTCD_RECORDING_ENABLED".into(), "true".into()));
            env.push((
                "RTCD_RECORDING_DIRECTORY".into(),
                dir.path().join("recordings").display().to_string(),
            ));
            env.push(("RTCD_RECORDING_MIN_FREE_BYTES".into(), "0".into()));
        }
        env.extend(config.rtcd_env.iter().cloned());
        env.push(("RTCD_LOGGER_JSON".into(), "true".into()));
        env.push((
            "RTCD_LOGGER_LEVEL".into(),
            format!("{},rtcd=info", config.log_level),
        ));
        env.push(("RTCD_RTC_MAX_SESSIONS_PER_CALL".into(), "1000".into()));
        // As many tokio workers as the CPUs they are pinned to: more workers than cores only
        // adds context switches (tokio reads TOKIO_WORKER_THREADS when none is configured).
        let workers = config.cpus.as_deref().map(cpu_count);
        if let Some(n) = workers {
            env.push(("TOKIO_WORKER_THREADS".into(), n.to_string()));
        }
        env.push(("RTCD_RTC_MAX_SESSIONS_PER_CLIENT".into(), "100000".into()));
        let mut rtcd = command(&config.rtcd_bin, config.cpus.as_deref())
            .arg("serve")
            .env_clear()
            .envs(dedup(env))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", config.rtcd_bin.display()))?;
        // Asked for more than warnings: the lines are for the person running the tool.
        let echo = !matches!(config.log_level.as_str(), "warn" | "error");
        let (http, grpc) = rtcd_ready(&mut rtcd, echo)?;

        let key = rtcd_e2e::daemon::key_for("loadgen");
        let response = reqwest::Client::new()
            .post(format!("http://{http}/register"))
            .basic_auth("admin", Some(rtcd_e2e::daemon::ADMIN_SECRET))
            .json(&json!({"clientID": "loadgen", "authKey": key}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "registering the proxy's client: {}",
            response.status()
        );

        let mut env = rtcd_e2e::proxy::unlimited_process_env();
        env.retain(|(k, _)| k != "PROXY_LOGGER_LEVEL");
        // The readiness line (with the address) is logged at info.
        let proxy_level = format!("{},rtcd_proxy=info", config.log_level);
        for (k, v) in [
            ("PROXY_LOGGER_LEVEL", proxy_level.as_str()),
            ("PROXY_RTCD_URL", &format!("http://{grpc}")),
            ("PROXY_RTCD_CLIENT_ID", "loadgen"),
            ("PROXY_RTCD_AUTH_KEY", &key),
            ("PROXY_RTCD_API_PORT", &http.port().to_string()),
        ] {
            env.push((k.to_owned(), v.to_owned()));
        }
        if let Some(n) = workers {
            env.push(("TOKIO_WORKER_THREADS".into(), n.to_string()));
        }
        let proxy_bin = config.proxy_bin.display().to_string();
        let (proxy, addr) = match rtcd_e2e::proxy::spawn_process(&proxy_bin, &env) {
            Ok(p) => p,
            Err(e) => {
                let _ = rtcd.kill();
                return Err(e.context(format!("starting {proxy_bin}")));
            }
        };
        if let Some(cpus) = &config.cpus {
            // The proxy is already running: move all of its threads.
            let status = Command::new("taskset")
                .args(["-a", "-cp", cpus, &proxy.id().to_string()])
                .stdout(Stdio::null())
                .status()?;
            anyhow::ensure!(
                status.success(),
                "taskset -a -cp {cpus} on the proxy failed"
            );
        }
        Ok(Self {
            rtcd,
            proxy,
            ws_url: format!("ws://{addr}/ws"),
            http,
            _dir: dir,
        })
    }

    /// rtcd's Prometheus text at this moment: what it counted during the run (forwarded,
    /// probe and dropped packets, layer changes), kept beside the report.
    pub async fn rtcd_metrics(&self) -> anyhow::Result<String> {
        let response = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.http))
            .basic_auth("admin", Some(rtcd_e2e::daemon::ADMIN_SECRET))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "rtcd's /metrics: {}",
            response.status()
        );
        Ok(response.text().await?)
    }

    /// The processes to measure.
    pub fn watched(&self) -> Vec<Watched> {
        vec![
            Watched {
                name: "rtcd".into(),
                pid: self.rtcd.id(),
            },
            Watched {
                name: "proxy".into(),
                pid: self.proxy.id(),
            },
        ]
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [&mut self.proxy, &mut self.rtcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPUs in a `taskset -c` list such as "0", "0,2" or "0-3".
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

/// Later settings win (the child sees each variable once).
fn dedup(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        out.retain(|(key, _)| *key != k);
        out.push((k, v));
    }
    out
}

/// Reads rtcd's JSON log until "rtcd ready"; returns (HTTP API, gRPC) addresses and keeps
/// draining stderr so the child never blocks on a full pipe, echoing ERROR lines (every line
/// with `echo`).
fn rtcd_ready(child: &mut Child, echo: bool) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let stderr = child.stderr.take().context("stderr piped")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let ready = loop {
        let Some(line) = lines.next() else {
            bail!("rtcd exited before ready:\n{}", seen.join("\n"))
        };
        let line = line?;
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "rtcd ready"
        {
            break v;
        }
        seen.push(line);
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if echo || line.contains("\"ERROR\"") {
                eprintln!("rtcd: {line}");
            }
        }
    });
    let addr = |k: &str| -> anyhow::Result<SocketAddr> {
        Ok(ready[k]
            .as_str()
            .with_context(|| format!("{k} in the ready line"))?
            .parse()?)
    };
    Ok((addr("http_addr")?, addr("grpc_addr")?))
}

/// One participant through the proxy: join, then relay between the WebSocket and the peer
/// until `stop`. Screen publishers announce the share first, as the SDK does.
pub async fn participant(
    ws_url: String,
    identity: String,
    room: String,
    config: PeerConfig,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> PeerOutcome {
    use std::sync::atomic::Ordering::Relaxed;
    let started = Instant::now();
    let failed = |counters: &Counters, e: anyhow::Error| {
        counters.failed.fetch_add(1, Relaxed);
        PeerOutcome {
            join_time: None,
            loss: Default::default(),
            error: Some(format!("{e:#}")),
        }
    };
    let ws = match join(&ws_url, &identity, &room).await {
        Ok(ws) => ws,
        Err(e) => return failed(&counters, e),
    };
    counters.joined.fetch_add(1, Relaxed);
    let (mut sink, mut stream) = ws.split();
    if config
        .tracks
        .iter()
        .any(|t| t.source == peer::Source::Screen)
        && let Err(e) = sink
            .send(Message::text(
                json!({"type": "screen_share_start"}).to_string(),
            ))
            .await
    {
        return failed(&counters, e.into());
    }

    // Bounded both ways; signaling is a handful of messages per peer, so a full channel means
    // the other side is stuck and waiting is right.
    let (to_adapter, mut from_peer) = mpsc::channel(16);
    let (to_peer, from_adapter) = mpsc::channel(16);
    let peer_stop = stop.child_token();
    let peer_task = tokio::spawn(peer::run(
        config,
        started,
        to_adapter,
        from_adapter,
        counters.clone(),
        peer_stop.clone(),
    ));
    let relay_error: Option<String> = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            out = from_peer.recv() => {
                let text = match out {
                    Some(FromPeer::Offer { sdp, tracks }) => {
                        let tracks: serde_json::Map<String, Value> = tracks
                            .into_iter()
                            .map(|(mid, s)| (mid, Value::from(s.name())))
                            .collect();
                        json!({"type": "offer", "sdp": sdp, "tracks": tracks})
                    }
                    // Only an offer from the remote makes the peer answer, and rtcd sends none.
                    Some(FromPeer::Answer(_)) => break Some("the peer answered an offer rtcd never sends".into()),
                    Some(FromPeer::Connected) => continue,
                    // The layer this participant takes, as the SDK asks for it: a view of the
                    // size the video is drawn at (docs/protocol.md section 3, `track_views`).
                    Some(FromPeer::Receiving { mid, size: (width, height) }) => json!({
                        "type": "track_views",
                        "views": [{"mid": mid, "visible": true, "width": width, "height": height}],
                    }),
                    None => break None, // the peer stopped; its outcome says why
                };
                tracing::debug!(%identity, "to proxy: {}", truncate(&text));
                if let Err(e) = sink.send(Message::text(text.to_string())).await {
                    break Some(format!("WebSocket send: {e}"));
                }
            }
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(close))) => break Some(format!("proxy closed: {close:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Some(format!("WebSocket: {e}")),
                    None => break Some("WebSocket ended".into()),
                };
                tracing::debug!(%identity, "from proxy: {}", truncate(&text));
                let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
                let field = |k: &str| msg[k].as_str().unwrap_or_default().to_owned();
                let count = |k: &str| msg[k].as_u64().and_then(|n| u32::try_from(n).ok());
                let signal = match msg["type"].as_str() {
                    Some("answer") => ToPeer::Answer(field("sdp")),
                    Some("negotiation_needed") => match (count("audio"), count("video")) {
                        (Some(audio), Some(video)) => ToPeer::NegotiationNeeded { audio, video },
                        _ => break Some(format!("malformed negotiation_needed: {msg}")),
                    },
                    Some("offer") => break Some("rtcd offered (the client makes every offer)".into()),
                    Some("candidate") => ToPeer::Candidate(field("candidate")),
                    Some("error") => break Some(format!("proxy error: {msg}")),
                    _ => continue,
                };
                if to_peer.send(signal).await.is_err() {
                    break None;
                }
            }
        }
    };
    peer_stop.cancel();
    let _ = sink
        .send(Message::text(json!({"type": "leave"}).to_string()))
        .await;
    let mut outcome = match peer_task.await {
        Ok(outcome) => outcome,
        Err(e) => return failed(&counters, e.into()),
    };
    if outcome.error.is_none() {
        outcome.error = relay_error;
    }
    if outcome.join_time.is_none() {
        counters.failed.fetch_add(1, Relaxed);
    }
    outcome
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(url: &str, identity: &str, room: &str) -> anyhow::Result<Ws> {
    let token = token(identity, room);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(40),
        rtcd_e2e::bridge::connect_and_join(url, &token, room, None),
    )
    .await
    .context("WebSocket connect and join timed out")??;
    Ok(ws)
}

fn truncate(text: &impl std::fmt::Display) -> String {
    let mut s = text.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(super::cpu_count("0"), 1);
        assert_eq!(super::cpu_count("0,2"), 2);
        assert_eq!(super::cpu_count("0-3"), 4);
        assert_eq!(super::cpu_count("0-1,4"), 3);
    }

    /// rtcd reuses a receiving section once its track ended (docs/protocol.md section 4a): the
    /// str0m client offers with that section `inactive` (answered so) and `recvonly` again, takes
    /// the answer that puts the next publisher's track on it (same slot, same SSRC), and counts the
    /// two publishers as two streams, neither with a gap counted as loss.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reused_section_switches_publisher_without_mixing_streams() -> anyhow::Result<()> {
        use std::sync::Arc;
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Duration;

        use crate::peer::{PeerConfig, Source, TrackSpec};
        use crate::stats::{Counters, LossTotals};
        use rtcd_e2e::daemon::TestRtcd;
        use tokio_util::sync::CancellationToken;

        // RUST_LOG=rtcd_loadgen=debug shows every participant's signaling.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        // rtcd and the proxy in this process: the proxy takes the tokens `token` mints.
        let rtcd = TestRtcd::start(&[]).await?;
        let relay = CancellationToken::new();
        let proxy = rtcd_e2e::proxy::start_relaying_to(
            rtcd_e2e::proxy::base_config(),
            &rtcd,
            "loadgen",
            &relay,
        )
        .await?;
        let ws_url = format!("ws://{}/ws", proxy.addr());
        let config = |publisher: u32, publishes: bool| PeerConfig {
            publisher,
            tracks: if publishes {
                vec![TrackSpec {
                    source: Source::Microphone,
                    packets_per_second: 50,
                    payload_bytes: 100,
                    frames_per_second: 50,
                    layer: None,
                }]
            } else {
                Vec::new()
            },
            offer_first: true,
            counts_as_join: true,
            bind_ip: [127, 0, 0, 1].into(),
            keyframe_interval: Duration::from_secs(2),
            receive_layer: None,
        };
        let spawn = |identity: &str, publisher: u32, publishes: bool, stop: &CancellationToken| {
            let counters = Arc::new(Counters::default());
            let task = tokio::spawn(super::participant(
                ws_url.clone(),
                identity.to_owned(),
                "reuse".to_owned(),
                config(publisher, publishes),
                counters.clone(),
                stop.clone(),
            ));
            (task, counters)
        };
        async fn grows(counters: &Counters, what: &str) -> anyhow::Result<()> {
            let from = counters.received_packets.load(Relaxed);
            for _ in 0..100 {
                if counters.received_packets.load(Relaxed) >= from + 50 {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!("{what}: no media within 10 s")
        }

        let (everyone, first_stop) = (CancellationToken::new(), CancellationToken::new());
        let (listener, heard) = spawn("listener", 1, false, &everyone);
        let (first, _) = spawn("first", 2, true, &first_stop);
        grows(&heard, "the first publisher").await?;
        first_stop.cancel();
        let first = first.await?;
        assert_eq!(first.error, None);
        // rtcd marks the section inactive after the track ended; give that round time to finish.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (second, _) = spawn("second", 3, true, &everyone);
        grows(&heard, "the second publisher on the reused section").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        everyone.cancel();
        let (listener, second) = (listener.await?, second.await?);
        assert_eq!(listener.error, None);
        assert_eq!(second.error, None);
        let mut loss = LossTotals::default();
        listener.loss.add_to(&mut loss);
        assert_eq!(loss.streams, 2, "{loss:?}");
        assert!(loss.worst_stream_percent < 20.0, "{loss:?}");
        proxy.shutdown().await;
        relay.cancel();
        rtcd.stop().await;
        Ok(())
    }
}

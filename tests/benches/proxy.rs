//! rtcd-proxy benchmarks (not timed tests): run with
//! `cargo bench -p rtcd-e2e --bench proxy` (add `--profile dev` to skip the release build).
//!
//! 1. Memory per idle authenticated WebSocket: the proxy runs as its own process; N clients
//!    connect and join (token verified, `joined` received), then the proxy's RSS growth is
//!    divided by N. Target from issue 4: under 64 KiB per connection with 10,000 open.
//! 2. The proxy's own per-message cost, WebSocket in -> parse -> policy -> WebSocket out, as
//!    round trips on one joined connection (ping -> pong, and an SDP offer through the
//!    permission policy). The rtcd relay hop is not in this build; when it lands, its
//!    overhead adds to these numbers.
//!
//! `BENCH_PROXY_CONNECTIONS` (default 10000) and `BENCH_PROXY_ROUNDS` (default 5000) scale it.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use rtcd_e2e::proxy::{Client, claims, hs_token, process_env, spawn_process};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts the proxy binary on an ephemeral loopback port with limits out of the way.
fn spawn_proxy() -> anyhow::Result<(Child, SocketAddr)> {
    let mut env = process_env();
    for (k, v) in [
        ("PROXY_LIMITS_CONNECTION_BURST", "100000"),
        ("PROXY_LIMITS_CONNECTIONS_PER_MINUTE", "100000"),
        ("PROXY_LIMITS_MESSAGE_BURST", "100000"),
        ("PROXY_LIMITS_MESSAGES_PER_SECOND", "100000"),
        ("PROXY_LIMITS_MAX_CONNECTIONS", "100000"),
        ("PROXY_LIMITS_MAX_SESSIONS_PER_USER", "0"),
        ("PROXY_LIMITS_IDLE_TIMEOUT_SECONDS", "3600"),
        ("PROXY_LIMITS_PING_INTERVAL_SECONDS", "600"),
    ] {
        env.push((k.into(), v.into()));
    }
    spawn_process(env!("CARGO_BIN_EXE_proxy-under-test"), &env)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn round_trips(addr: SocketAddr, rounds: usize) -> anyhow::Result<()> {
    let member = {
        let mut c = claims("bench-rtt", "bench");
        c["role"] = "member".into();
        c
    };
    let mut client = Client::connect(addr, "", &[]).await?;
    client
        .send(&json!({"type": "join", "room": "bench", "token": hs_token(&member)}))
        .await?;
    client.expect("joined").await?;
    client.expect("error").await?;
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n";
    for (name, message, answer) in [
        ("ping -> pong", json!({"type": "ping", "id": 1}), "pong"),
        (
            "offer -> policy -> reply",
            json!({"type": "offer", "sdp": sdp, "tracks": {"1": "camera"}}),
            "error",
        ),
    ] {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            client.send(&message).await?;
            client.expect(answer).await?;
            samples.push(t.elapsed());
        }
        samples.sort_unstable();
        println!(
            "{name:<28} n={rounds:<6} p50={:>8.1?} p99={:>8.1?} max={:>8.1?}",
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            samples[samples.len() - 1]
        );
    }
    Ok(())
}

async fn idle_memory(addr: SocketAddr, pid: u32, n: usize) -> anyhow::Result<()> {
    // Warm up allocator pools and lazy statics with a few sessions first.
    let mut clients = Vec::with_capacity(n);
    for i in 0..16 {
        let mut c = Client::connect(addr, "", &[]).await?;
        c.send(&json!({"type": "join", "room": "bench", "token": hs_token(&claims(&format!("warm-{i}"), "bench"))})).await?;
        c.expect("joined").await?;
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib(pid)?;
    let started = Instant::now();
    for i in 0..n {
        let mut c = Client::connect(addr, "", &[]).await?;
        c.send(&json!({"type": "join", "room": "bench", "token": hs_token(&claims(&format!("user-{i}"), "bench"))})).await?;
        c.expect("joined").await?;
        c.expect("error").await?; // media_unavailable: the session is fully set up
        clients.push(c);
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before) as f64) / n as f64;
    println!(
        "idle authenticated sessions n={n}: proxy RSS {before} KiB -> {after} KiB, {per:.1} KiB per connection (target < 64 KiB); opened and joined in {opened_in:.1?}"
    );
    drop(clients);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let connections = env_usize("BENCH_PROXY_CONNECTIONS", 10_000);
    let rounds = env_usize("BENCH_PROXY_ROUNDS", 5_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut child, addr) = spawn_proxy()?;
    let pid = child.id();
    let result = runtime.block_on(async {
        round_trips(addr, rounds).await?;
        idle_memory(addr, pid, connections).await
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}

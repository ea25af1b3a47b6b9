//! Forwarding cost benchmark (not a test): rtcd runs as its own process (`rtcd-under-test`),
//! one publisher sends paced VP8-sized RTP, N receive-only subscribers join; reports forwarded
//! packets per second, rtcd CPU-seconds per million forwarded packets and RSS per session.
//!
//! `cargo run -p rtcd-e2e --bin media-bench -- [N,N,...] [seconds] [pps]`
//! (publisher and subscribers share this process; only rtcd's own CPU and RSS are measured).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rtcd_e2e::media::{Participant, all_permissions, basic, eventually};
use rtcd_proto::v1::signaling_client::SignalingClient;

const ADMIN: &str = "an-admin-secret-of-at-least-32-bytes!!";

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// (CPU seconds, RSS bytes) of a process, from /proc.
fn usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    Ok((ticks as f64 / 100.0, rss_kb * 1024))
}

async fn forwarded(metrics_port: u16) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("rtcd_sfu_forwarded_packets_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(n: usize, seconds: u64, pps: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (http, grpc, metrics) = (free_port()?, free_port()?, free_port()?);
    let exe = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("rtcd-under-test");
    let child = Command::new(exe)
        .env_clear()
        .env("RTCD_STORE_DATA_SOURCE", dir.path().join("db"))
        .env("RTCD_API_HTTP_LISTEN_ADDRESS", format!("127.0.0.1:{http}"))
        .env(
            "RTCD_API_METRICS_LISTEN_ADDRESS",
            format!("127.0.0.1:{metrics}"),
        )
        .env("RTCD_API_SECURITY_ENABLE_ADMIN", "true")
        .env("RTCD_API_SECURITY_ADMIN_SECRET_KEY", ADMIN)
        .env("RTCD_API_SECURITY_BCRYPT_COST", "4")
        .env("RTCD_GRPC_LISTEN_ADDRESS", format!("127.0.0.1:{grpc}"))
        .env("RTCD_RTC_ICE_ADDRESS_UDP", "127.0.0.1")
        .env("RTCD_RTC_ICE_PORT_UDP", "0")
        .env("RTCD_RTC_ICE_INTERFACES", "[\"lo\"]")
        .env("RTCD_RTC_INCLUDE_LOOPBACK_CANDIDATES", "true")
        .env("RTCD_RTC_MAX_SESSIONS_PER_CALL", "100")
        .env("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0")
        .env("RTCD_LOGGER_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let _daemon = Daemon(child);
    let http_client = reqwest::Client::new();
    eventually("rtcd ready", || {
        std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok()
    })
    .await?;
    let reg = http_client
        .post(format!("http://127.0.0.1:{http}/register"))
        .header("authorization", basic("admin", ADMIN))
        .json(&serde_json::json!({"clientID": "bench", "authKey": "bench-key-that-is-long-enough-0123456789"}))
        .send()
        .await?;
    if !reg.status().is_success() {
        bail!("register: {}", reg.status());
    }
    let auth = basic("bench", "bench-key-that-is-long-enough-0123456789");
    let mut client = SignalingClient::connect(format!("http://127.0.0.1:{grpc}")).await?;
    let publisher =
        Participant::join(&mut client, Some(&auth), "bench", "pub", all_permissions()).await?;
    publisher
        .add_track_paced("video", Duration::from_micros(1_000_000 / pps), 1000)
        .await?;
    publisher.renegotiate().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss_before) = usage(pid)?;
    let mut subs = Vec::new();
    for i in 0..n {
        let s = Participant::join(
            &mut client,
            Some(&auth),
            "bench",
            &format!("sub{i}"),
            all_permissions(),
        )
        .await?;
        s.receive_only().await?;
        subs.push(s);
    }
    eventually("all subscribers receive", || {
        subs.iter().all(|s| s.received("pub", "video") > 0)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, _) = usage(pid)?;
    let f0 = forwarded(metrics).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, rss_after) = usage(pid)?;
    let f1 = forwarded(metrics).await?;
    let fwd = f1 - f0;
    let received: u64 = subs.iter().map(|s| s.received("pub", "video")).sum();
    println!(
        "N={n:>3}  forwarded {:>8.0} pkt/s  rtcd CPU {:>6.2} s/{seconds} s  = {:>6.2} CPU-s per million packets  RSS/session {:>6.0} KiB  (subscribers received {received} in total)",
        fwd / seconds as f64,
        cpu1 - cpu0,
        (cpu1 - cpu0) / (fwd / 1e6).max(1e-9),
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64 / 1024.0,
    );
    for s in &subs {
        s.close().await;
    }
    publisher.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ns: Vec<usize> = args
        .get(1)
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 50]);
    let seconds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let pps = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(500);
    println!("one publisher at {pps} pkt/s (1 kB payload), {seconds} s per run");
    for n in ns {
        run(n, seconds, pps).await?;
    }
    Ok(())
}

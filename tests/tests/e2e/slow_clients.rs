//! Slow and greedy clients (issue 16, "Durability under pressure"): a slowloris on rtcd's HTTP
//! API and on the proxy's public listener (HTTP and WebSocket) is cut by the listeners'
//! bounds (`header_timeout_seconds`, `request_timeout_seconds`, connection caps per address
//! and in all), while a well-behaved client from another address keeps being served.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use reqwest::StatusCode;
use rtcd_e2e::daemon::{ADMIN_SECRET, TestRtcd, client, key_for, metric_sum, scrape};
use rtcd_e2e::proxy::{JoinOutcome, base_config, claims, hs_token, join, start};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// What a slow client does after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slow {
    /// Says nothing.
    Silent,
    /// Sends a request line, then one header byte every 200 ms.
    Head,
    /// Sends a complete `POST` head announcing 4 KiB, then one body byte every 200 ms.
    Body(&'static str),
    /// Upgrades to a WebSocket, then sends one byte of a frame every 200 ms.
    WebSocketFrame,
}

/// How a slow connection ended.
#[derive(Debug)]
struct Ended {
    kind: Slow,
    /// Everything the server sent.
    received: String,
}

async fn connect_from(source: &str, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse()?, 0))?;
    Ok(socket.connect(to).await?)
}

/// Plays `kind` against `to` from `source` until the server closes the connection (an error
/// if it is still open after `bound`).
async fn slow_client(
    kind: Slow,
    source: &'static str,
    to: SocketAddr,
    bound: Duration,
) -> anyhow::Result<Ended> {
    let stream = connect_from(source, to).await?;
    let (mut reader, mut writer) = stream.into_split();
    let trickle = async move {
        let (opening, drip): (String, &[u8]) = match kind {
            Slow::Silent => (String::new(), b""),
            Slow::Head => (
                "GET /version HTTP/1.1\r\nHost: t\r\n".into(),
                b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
            Slow::Body(path) => (
                format!(
                    "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
                ),
                &[b' '; 4096],
            ),
            Slow::WebSocketFrame => (
                "GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                    .into(),
                // A masked text frame announcing 100 bytes, never completed.
                &[0x81, 0xE4, 1, 2, 3, 4, b'{', b'"', b't', b'y', b'p', b'e', b'"', b':', b'"'],
            ),
        };
        if writer.write_all(opening.as_bytes()).await.is_err() {
            return;
        }
        for byte in drip {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
        // Out of bytes to drip: hold the connection open and silent.
        std::future::pending::<()>().await;
    };
    let read = async {
        let mut received = Vec::new();
        let _ = reader.read_to_end(&mut received).await;
        String::from_utf8_lossy(&received).into_owned()
    };
    tokio::select! {
        received = tokio::time::timeout(bound, read) => match received {
            Ok(received) => Ok(Ended { kind, received }),
            Err(_) => bail!("a {kind:?} client from {source} still held its connection after {bound:?}"),
        },
        _ = trickle => unreachable!("the trickle never ends by itself"),
    }
}

/// Starts `per_address` slow clients of every kind in `kinds` from each of `sources`, all at
/// once; resolves to how each ended.
fn attack(
    kinds: &'static [Slow],
    sources: &'static [&'static str],
    per_address: usize,
    to: SocketAddr,
    bound: Duration,
) -> tokio::task::JoinSet<anyhow::Result<Ended>> {
    let mut set = tokio::task::JoinSet::new();
    for source in sources {
        for i in 0..per_address {
            let kind = kinds[i % kinds.len()];
            set.spawn(slow_client(kind, source, to, bound));
        }
    }
    set
}

#[tokio::test]
async fn rtcd_cuts_a_slowloris_and_keeps_serving_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rtcd = TestRtcd::start_in(
        dir.path(),
        &[
            ("RTCD_API_HTTP_HEADER_TIMEOUT_SECONDS", "2"),
            ("RTCD_API_HTTP_REQUEST_TIMEOUT_SECONDS", "2"),
            ("RTCD_API_HTTP_MAX_CONNECTIONS", "50"),
            ("RTCD_API_HTTP_MAX_CONNECTIONS_PER_IP", "10"),
        ],
    )
    .await?;
    let api = rtcd.rtcd.http_addr();
    // Three attacking addresses, 30 connections each: 10 held per address (30 in all, under
    // the total of 50), the rest closed at accept.
    const KINDS: &[Slow] = &[Slow::Silent, Slow::Head, Slow::Body("/register")];
    let mut slow = attack(
        KINDS,
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        30,
        api,
        Duration::from_secs(20),
    );
    // Meanwhile a proxy on another address registers and logs in, again and again.
    let mut served = 0;
    for round in 0..6 {
        let id = format!("steady-{round}");
        let key = key_for(&id);
        let register = client()
            .post(rtcd.url("/register"))
            .basic_auth("", Some(ADMIN_SECRET))
            .json(&json!({"clientID": id, "authKey": key}))
            .send()
            .await
            .context("register during the attack")?;
        ensure!(register.status() == StatusCode::CREATED, "{register:?}");
        let login = client()
            .post(rtcd.url("/login"))
            .json(&json!({"clientID": id, "authKey": key}))
            .send()
            .await
            .context("login during the attack")?;
        ensure!(login.status() == StatusCode::OK, "{login:?}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(served, 6);
    let mut timed_out_bodies = 0;
    while let Some(ended) = slow.join_next().await {
        let ended = ended??;
        if ended.kind == Slow::Body("/register") && ended.received.starts_with("HTTP/1.1 408") {
            timed_out_bodies += 1;
        }
    }
    // The bodies that were admitted got 408 (those refused at accept got nothing).
    assert!(timed_out_bodies > 0, "no trickled body was answered 408");
    let metrics = scrape(&format!("{}/metrics", rtcd.internal)).await?;
    let cut = |reason: &str| {
        metric_sum(
            &metrics,
            &format!("rtcd_http_connections_cut_total{{listener=\"api\",reason=\"{reason}\""),
        )
    };
    assert!(cut("max_connections_per_ip") >= 30.0, "{metrics}");
    assert!(cut("head_timeout") >= 1.0, "{metrics}");
    assert!(cut("request_timeout") >= 1.0, "{metrics}");
    assert_eq!(cut("max_connections"), 0.0, "{metrics}");
    rtcd.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_proxy_cuts_a_slowloris_on_http_and_websocket_and_keeps_admitting_joins()
-> anyhow::Result<()> {
    let mut config = base_config();
    config.server.header_timeout_seconds = 2;
    config.server.request_timeout_seconds = 2;
    config.server.max_http_connections = 50;
    config.server.max_http_connections_per_ip = 10;
    config.limits.join_timeout_seconds = 2;
    let proxy = start(config).await?;
    const KINDS: &[Slow] = &[Slow::Silent, Slow::Head, Slow::WebSocketFrame];
    let mut slow = attack(
        KINDS,
        &["127.0.0.5", "127.0.0.6", "127.0.0.7"],
        30,
        proxy.addr(),
        Duration::from_secs(20),
    );
    for round in 0..6 {
        let token = hs_token(&claims(&format!("steady-{round}"), "standup"));
        let (_client, outcome) = join(proxy.addr(), Some(&token), "standup")
            .await
            .context("join during the attack")?;
        ensure!(
            matches!(outcome, JoinOutcome::Joined(_)),
            "a join during the attack was refused: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut upgraded_then_closed = 0;
    while let Some(ended) = slow.join_next().await {
        let ended = ended??;
        if ended.kind == Slow::WebSocketFrame && ended.received.starts_with("HTTP/1.1 101") {
            upgraded_then_closed += 1;
        }
    }
    // Upgraded sessions trickling a frame were closed by the join deadline.
    assert!(upgraded_then_closed > 0, "no WebSocket was upgraded");
    let metrics_addr = proxy.metrics_addr().context("metrics listener")?;
    let metrics = scrape(&format!("http://{metrics_addr}/metrics")).await?;
    let cut = |reason: &str| {
        metric_sum(
            &metrics,
            &format!("proxy_http_connections_cut_total{{listener=\"public\",reason=\"{reason}\""),
        )
    };
    // Upgrades leave the counts at once, so fewer are refused here than at rtcd.
    assert!(cut("max_connections_per_ip") >= 10.0, "{metrics}");
    assert!(cut("head_timeout") >= 1.0, "{metrics}");
    assert!(
        metric_sum(&metrics, "proxy_closes_total{reason=\"join_timeout\"") >= 1.0,
        "{metrics}"
    );
    proxy.shutdown().await;
    Ok(())
}

//! The load tool's smoke runs (issue: load tool and side-by-side benchmarks): a few
//! participants for a few seconds through the real CLI, against our stack (rtcd + proxy as
//! processes) and against the raw UDP relay, so that the tool cannot rot. They assert that
//! media flowed and that the JSON report is complete, never how fast anything was.

use std::process::Stdio;

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");
const PROXY: &str = env!("CARGO_BIN_EXE_proxy-under-test");
const RELAY: &str = env!("CARGO_BIN_EXE_udp-relay");

/// Runs the CLI with `args` and returns the parsed `<out>/<name>.json` plus the Markdown.
fn loadgen(args: &[&str], out: &std::path::Path) -> anyhow::Result<(Value, String)> {
    let output = std::process::Command::new(LOADGEN)
        .args(args)
        .args([
            "--scenario",
            "smoke",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--quiet",
        ])
        .args(["--name", "run", "--out"])
        .arg(out)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "loadgen failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&std::fs::read(out.join("run.json"))?)?;
    let markdown = std::fs::read_to_string(out.join("run.md"))?;
    let svg = std::fs::read_to_string(out.join("run.svg"))?;
    anyhow::ensure!(
        svg.starts_with("<svg") && svg.ends_with("</svg>"),
        "svg: {svg}"
    );
    Ok((json, markdown))
}

/// The fields every report must have, with media having flowed to every participant.
fn assert_complete(report: &Value, processes: &[&str]) {
    let participants = report["participants"].as_u64().unwrap();
    assert_eq!(participants, 3, "{report:#}");
    assert_eq!(
        report["connected"], 3,
        "every participant connected: {report:#}"
    );
    assert_eq!(report["failed"], 0, "{report:#}");
    for q in ["p50", "p95", "p99", "max"] {
        assert!(
            report["join_ms"][q].as_f64().unwrap() > 0.0,
            "join_ms.{q}: {report:#}"
        );
    }
    assert!(
        report["forwarded_pps"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert!(report["forwarded_bits_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["expected_forwarded_pps"].as_f64().unwrap() > 0.0);
    // smoke: 3 participants, p0 sends audio+camera+screen, p1 and p2 audio: 10 streams arrive.
    assert_eq!(report["loss"]["streams"], 10, "{report:#}");
    assert!(report["loss"]["received"].as_u64().unwrap() > 0);
    assert!(
        report["loss_percent"].as_f64().unwrap() < 50.0,
        "{report:#}"
    );
    assert!(report["latency_us"]["p50"].as_u64().is_some(), "{report:#}");
    assert!(report["latency_us"]["p99"].as_u64().is_some());
    assert!(report["client_cpu_utilisation"].as_f64().is_some());
    assert!(!report["series"].as_array().unwrap().is_empty());
    let names: Vec<&str> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, processes, "{report:#}");
    for p in report["processes"].as_array().unwrap() {
        assert!(p["cpu_seconds"].as_f64().is_some(), "{p}");
        assert!(p["peak_rss_kib"].as_u64().unwrap() > 0, "{p}");
        assert!(p["rss_per_session_kib"].as_f64().is_some(), "{p}");
    }
    assert!(report["scenario"]["name"] == "smoke");
}

#[test]
fn smoke_against_our_stack() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let (report, markdown) = loadgen(
        &["--target", "ours", "--rtcd-bin", RTCD, "--proxy-bin", PROXY],
        out.path(),
    )?;
    assert_complete(&report, &["rtcd", "proxy"]);
    assert_eq!(report["target"], "ours");
    let rtcd = &report["processes"][0];
    assert!(
        rtcd["cpu_per_million_forwarded"].as_f64().unwrap() > 0.0,
        "{rtcd}"
    );
    assert!(
        markdown.contains("smoke on ours") && markdown.contains("| rtcd |"),
        "{markdown}"
    );
    Ok(())
}

#[test]
fn smoke_against_the_raw_relay() -> anyhow::Result<()> {
    let mut relay = std::process::Command::new(RELAY)
        .stdout(Stdio::piped())
        .spawn()?;
    let result = (|| {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(relay.stdout.as_mut().unwrap()),
            &mut line,
        )?;
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        let out = tempfile::tempdir()?;
        let watch = format!("udp-relay={}", relay.id());
        let (report, _) = loadgen(
            &["--target", "raw", "--relay", &addr, "--watch", &watch],
            out.path(),
        )?;
        assert_complete(&report, &["udp-relay"]);
        assert_eq!(report["target"], "raw-udp");
        anyhow::Ok(())
    })();
    let _ = relay.kill();
    let _ = relay.wait();
    result
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

    use rtcd_e2e::loadgen::ours::{self, Stack, StackConfig};
    use rtcd_e2e::loadgen::peer::{PeerConfig, Source, TrackSpec};
    use rtcd_e2e::loadgen::stats::{Counters, LossTotals};
    use tokio_util::sync::CancellationToken;

    // RUST_LOG=rtcd_e2e=debug shows every participant's signaling.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let stack = Stack::start(&StackConfig {
        rtcd_bin: RTCD.into(),
        proxy_bin: PROXY.into(),
        rtcd_env: Vec::new(),
        log_level: "warn".into(),
        cpus: None,
    })
    .await?;
    let config = |publisher: u32, publishes: bool| PeerConfig {
        publisher,
        tracks: if publishes {
            vec![TrackSpec {
                source: Source::Microphone,
                packets_per_second: 50,
                payload_bytes: 100,
                frames_per_second: 50,
            }]
        } else {
            Vec::new()
        },
        offer_first: true,
        counts_as_join: true,
        bind_ip: [127, 0, 0, 1].into(),
        keyframe_interval: Duration::from_secs(2),
    };
    let spawn = |identity: &str, publisher: u32, publishes: bool, stop: &CancellationToken| {
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(ours::participant(
            stack.ws_url.clone(),
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
    Ok(())
}

#[test]
fn bad_arguments_are_refused_clearly() -> anyhow::Result<()> {
    for (args, expected) in [
        (vec!["--scenario", "nope"], "unknown scenario"),
        (vec!["--target", "nope"], "unknown target"),
        (vec!["--target", "raw"], "--relay"),
        (vec!["--watch", "rtcd"], "--watch NAME=PID"),
        (vec!["--rtcd-env", "RTCD_NO_VALUE"], "--rtcd-env KEY=VALUE"),
        (vec!["--target-cpus", "not-a-cpu"], "taskset"),
    ] {
        let output = std::process::Command::new(LOADGEN)
            .args(&args)
            .args(["--rtcd-bin", RTCD, "--proxy-bin", PROXY, "--quiet"])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    Ok(())
}

/// A WebSocket server on 127.0.0.1 that accepts the `janus-protocol` subprotocol and answers
/// every request with `reply(request)` (no reply for `None`): the Janus target's error paths,
/// since a real Janus cannot gather candidates in the test's loopback-only namespace
/// (`tests/bench/compare.sh` runs the real one).
fn janus_speaking(
    reply: fn(&Value) -> Option<String>,
) -> anyhow::Result<(String, tokio::runtime::Runtime)> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::protocol::Message;

    // Accepts the subprotocol the way Janus does (echoes it); the signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    fn subprotocol(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
        if request.headers().get("Sec-WebSocket-Protocol")
            == Some(&HeaderValue::from_static("janus-protocol"))
        {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("janus-protocol"),
            );
        }
        Ok(response)
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("ws://{}", listener.local_addr()?);
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, subprotocol).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let request: Value = serde_json::from_str(&text).unwrap_or_default();
                    if let Some(answer) = reply(&request)
                        && ws.send(Message::text(answer)).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, runtime))
}

/// Runs the smoke scenario against `url` as a Janus target; the run itself must succeed (the
/// report says what failed), every participant failing with `expected` in the errors.
fn janus_fails_with(url: &str, expected: &str) -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let (report, markdown) = loadgen(&["--target", "janus", "--janus-url", url], out.path())?;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(45),
        "failing joins must not wait for the ramp's deadline"
    );
    assert_eq!(report["target"], "janus");
    assert_eq!(report["failed"], 3, "{report:#}");
    assert_eq!(report["connected"], 0, "{report:#}");
    let errors = report["errors"].as_array().unwrap();
    assert!(
        !errors.is_empty()
            && errors
                .iter()
                .all(|e| e.as_str().unwrap().contains(expected)),
        "{expected:?} in {errors:?}"
    );
    assert!(markdown.contains("smoke on janus"), "{markdown}");
    Ok(())
}

#[test]
fn janus_target_reports_an_unreachable_janus() -> anyhow::Result<()> {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    janus_fails_with(&format!("ws://127.0.0.1:{port}"), "Janus WebSocket connect")
}

#[test]
fn janus_target_passes_on_janus_errors_and_refuses_malformed_replies() -> anyhow::Result<()> {
    // Janus refuses the session: its reason reaches the report.
    let (url, _server) = janus_speaking(|request| {
        Some(
            serde_json::json!({
                "janus": "error",
                "transaction": request["transaction"],
                "error": {"code": 490, "reason": "Too many sessions (test)"},
            })
            .to_string(),
        )
    })?;
    janus_fails_with(
        &url,
        "Janus error 490 on create session: Too many sessions (test)",
    )?;

    // VideoRoom refuses the room (other than "already exists").
    let (url, _server) = janus_speaking(|request| {
        let transaction = &request["transaction"];
        let reply = match request["janus"].as_str() {
            Some("create") => {
                serde_json::json!({"janus": "success", "transaction": transaction, "data": {"id": 11}})
            }
            Some("attach") => {
                serde_json::json!({"janus": "success", "transaction": transaction, "data": {"id": 22}})
            }
            Some("message") => serde_json::json!({
                "janus": "success", "transaction": transaction, "sender": 22,
                "plugindata": {"plugin": "janus.plugin.videoroom", "data": {
                    "videoroom": "event", "error_code": 433, "error": "Unauthorized (test)"}},
            }),
            _ => return None,
        };
        Some(reply.to_string())
    })?;
    janus_fails_with(&url, "Janus error 433 creating room")?;

    // Garbage instead of JSON: a clear error, no panic, no hang.
    let (url, _server) = janus_speaking(|_| Some("{not json".into()))?;
    janus_fails_with(&url, "Janus sent malformed JSON")
}

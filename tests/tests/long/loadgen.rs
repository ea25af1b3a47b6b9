//! The load tool's smoke runs (issue: load tool and side-by-side benchmarks): a few
//! participants for a few seconds through the real CLI, against our stack (rtcd + proxy as
//! processes) and against the raw UDP relay, so that the tool cannot rot. They assert that
//! media flowed and that the JSON report is complete, never how fast anything was.
//!
//! The load tool is its own crate (`rtcd-loadgen`, so that this binary does not build its
//! WebRTC stack); its in-process checks are that crate's own tests.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;

const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");
const PROXY: &str = env!("CARGO_BIN_EXE_proxy-under-test");

/// A binary of the load tool's crate. `CARGO_BIN_EXE_*` exists only for this package's own
/// binaries, so it is looked up where cargo puts it, one directory above this test executable
/// (`target/debug/deps/long-…` → `target/debug/NAME`); scripts/test.sh builds it first.
fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join(name))
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?;
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build the load tool first (`cargo build -p rtcd-loadgen`, with \
         --release when testing with --release; scripts/test.sh builds it)",
        path.display()
    );
    Ok(path)
}

/// Runs the CLI with `args` and returns the parsed `<out>/<name>.json` plus the Markdown.
fn loadgen(args: &[&str], out: &std::path::Path) -> anyhow::Result<(Value, String)> {
    let output = std::process::Command::new(tool("loadgen")?)
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
    // The plain relay, then the batched one (compare.sh's target `raw-batched`).
    for (mode, label) in [(None, "raw-udp"), (Some("--batched"), "raw-batched")] {
        let mut relay = std::process::Command::new(tool("udp-relay")?)
            .args(mode)
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
            let mut args = vec!["--target", "raw", "--relay", &addr, "--watch", &watch];
            if mode.is_some() {
                args.extend(["--label", label]);
            }
            let (report, _) = loadgen(&args, out.path())?;
            assert_complete(&report, &["udp-relay"]);
            assert_eq!(report["target"], label);
            anyhow::Ok(())
        })();
        let _ = relay.kill();
        let _ = relay.wait();
        result?;
    }
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
        let output = std::process::Command::new(tool("loadgen")?)
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

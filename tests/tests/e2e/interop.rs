//! An independent client on a WebRTC stack we did not write: aiortc (Python), programmed from
//! docs/protocol.md alone (`tests/clients/aiortc_client.py`). aiortc gathers no loopback
//! candidates, so the whole call runs in a LAN namespace the test creates ([`netns`]).
//!
//! Two aiortc clients stay in a call through the real stack (rtcd-dev: rtcd + proxy) for 45 s
//! and must receive each other's camera and microphone in every 5 s window, while a third
//! comes and goes twice, so their receiving sections are asked for, filled, answered inactive
//! and reused, all through `negotiation_needed`.
//!
//! [`netns`]: rtcd_e2e::netns

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use rtcd_e2e::netns::{self, LAN_ADDR};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

/// The interpreter with aiortc (scripts/test.sh prepares a venv and sets this).
fn python() -> String {
    std::env::var("RTCD_E2E_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn client_script() -> String {
    format!("{}/clients/aiortc_client.py", env!("CARGO_MANIFEST_DIR"))
}

/// A running aiortc client; its per-second reports are collected until it exits.
struct Client {
    name: &'static str,
    child: tokio::process::Child,
    reports: tokio::task::JoinHandle<Vec<Value>>,
}

async fn token(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<String> {
    let reply: Value = http
        .get(format!("{base}/dev/token?room=interop&name={name}"))
        .send()
        .await?
        .json()
        .await?;
    reply["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no token in {reply}"))
}

async fn start_client(
    http: &reqwest::Client,
    base: &str,
    name: &'static str,
    seconds: u64,
) -> anyhow::Result<Client> {
    let token = token(http, base, name).await?;
    let mut child = tokio::process::Command::new(python())
        .arg(client_script())
        .args(["--url", &format!("{}/ws", base.replace("http", "ws"))])
        .args(["--room", "interop", "--token", &token])
        .args(["--seconds", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {} (aiortc): scripts/test.sh prepares it and sets RTCD_E2E_PYTHON",
                python()
            )
        })?;
    let stdout = child.stdout.take().context("client stdout")?;
    let reports = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut out = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                out.push(v);
            }
        }
        out
    });
    Ok(Client {
        name,
        child,
        reports,
    })
}

impl Client {
    async fn finish(mut self) -> anyhow::Result<Vec<Value>> {
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .with_context(|| format!("{} did not finish", self.name))??;
        let reports = self.reports.await?;
        anyhow::ensure!(
            status.success(),
            "{} exited with {status}: {:?}",
            self.name,
            reports.last()
        );
        for r in &reports {
            anyhow::ensure!(r.get("error").is_none(), "{}: proxy error {r}", self.name);
        }
        Ok(reports)
    }
}

/// Frames received so far of `kind` from participants whose identity starts with `who-`.
fn frames_from(report: &Value, who: &str, kind: &str) -> u64 {
    report["received"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, r)| {
            r["kind"] == kind
                && r["identity"]
                    .as_str()
                    .is_some_and(|i| i.starts_with(&format!("{who}-")))
        })
        .map(|(_, r)| r["frames"].as_u64().unwrap_or(0))
        .sum()
}

/// Every 5 s window from `from` s to `to` s of `reports` must add frames of both kinds from
/// `who`.
fn flows_in_every_window(
    name: &str,
    reports: &[Value],
    who: &str,
    from: f64,
    to: f64,
) -> anyhow::Result<()> {
    let at = |t: f64| {
        reports
            .iter()
            .rfind(|r| r["t"].as_f64().is_some_and(|x| x <= t))
            .with_context(|| format!("{name}: no report by {t} s"))
    };
    let mut t = from;
    while t + 5.0 <= to {
        for kind in ["video", "audio"] {
            let (a, b) = (
                frames_from(at(t)?, who, kind),
                frames_from(at(t + 5.0)?, who, kind),
            );
            anyhow::ensure!(
                b > a,
                "{name}: no {kind} frames from {who} between {t} s and {} s ({a} -> {b})",
                t + 5.0
            );
        }
        t += 5.0;
    }
    Ok(())
}

#[test]
fn aiortc_clients_written_from_the_protocol_document_keep_receiving_each_other()
-> anyhow::Result<()> {
    netns::run(|| async {
        let dir = tempfile::tempdir()?;
        let stack = rtcd_dev::start(rtcd_dev::Options {
            data_dir: dir.path().to_owned(),
            listen: format!("{LAN_ADDR}:0"),
            loopback: false,
            udp_port: 0,
            rtc: Vec::new(),
        })
        .await?;
        let base = format!("http://{}", stack.proxy.addr());
        // No pooled connections: the proxy may close an idle one just as it is reused.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let alice = start_client(&http, &base, "alice", 45).await?;
        let bob = start_client(&http, &base, "bob", 44).await?;
        // A third participant comes and goes twice while the two stay.
        for pause in [10, 3] {
            tokio::time::sleep(Duration::from_secs(pause)).await;
            let carol = start_client(&http, &base, "carol", 14).await?;
            let reports = carol.finish().await?;
            anyhow::ensure!(
                reports.iter().any(|r| frames_from(r, "alice", "video") > 0),
                "carol never received alice: {:?}",
                reports.last()
            );
        }
        let alice_reports = alice.finish().await?;
        let bob_reports = bob.finish().await?;
        // Connecting takes aiortc a few seconds; from then on, media in every window.
        flows_in_every_window("alice", &alice_reports, "bob", 10.0, 40.0)?;
        flows_in_every_window("bob", &bob_reports, "alice", 10.0, 40.0)?;
        for (name, reports) in [("alice", &alice_reports), ("bob", &bob_reports)] {
            // (A report names the publisher of a section only while it is published.)
            anyhow::ensure!(
                reports.iter().any(|r| frames_from(r, "carol", "video") > 0),
                "{name} never received carol's camera on a reused or added section"
            );
            anyhow::ensure!(
                reports.iter().all(|r| r["state"] != "failed"),
                "{name}'s connection failed"
            );
        }
        stack.shutdown().await;
        Ok(())
    })
}

//! An independent client on a WebRTC stack we did not write: aiortc (Python), programmed from
//! docs/protocol.md alone (`tests/clients/aiortc_client.py`). aiortc gathers no loopback
//! candidates, so the whole call runs in a LAN namespace the test creates ([`netns`]).
//!
//! Two aiortc clients stay in a call through the real stack (rtcd-dev: rtcd + proxy) for 49 s
//! and must receive each other's camera and microphone in every 5 s window, while a third
//! comes and goes three times, so their receiving sections are asked for, filled, answered
//! inactive and reused, all through `negotiation_needed`. Every visit's camera must be decoded
//! within [`FIRST_FRAME_BOUND`] of its `track_published`, on a reused section from the second
//! visit on, also by the one of the two that applies every answer [`ANSWER_DELAY`] s late.
//! Then the other restarts ICE (new credentials in an offer, docs/protocol.md §4a; aiortc has
//! no API for it, the client changes aioice's credentials itself): both keep receiving, with no
//! pause in decoded frames longer than [`RESTART_PAUSE_BOUND`].
//!
//! aiortc asks for a keyframe (PLI) only when its decoder fails or its jitter buffer overflows
//! (128 packets), never while it waits behind a hole: a hole in a section's sequence numbers or
//! a lost packet nobody repairs stalls its video for seconds (4-17 s by the stream's rate). The
//! bounds here catch what a browser would hide.
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

/// A new track must be decoded (its first frame) within this of its `track_published`: the
/// issue's bound "under normal conditions" (issue 34). A reused section's track that starts
/// without a keyframe, or after a hole in the section's sequence numbers, waits for the
/// publisher's next periodic keyframe instead (15-17 s for aiortc).
const FIRST_FRAME_BOUND: f64 = 1.0;

/// The longest pause in decoded frames (video and audio, both directions) around an ICE
/// restart. Issue 34 wants media back within 1 s of the restart; this allows 1 s more for
/// aiortc (Python, decoding in software) on 2 cores shared with the rest of the suite, while
/// still failing the 15-17 s stall of an unrepaired loss. Measured on a quiet machine: the
/// restart itself costs ~0.13 s of packets each way (from the answer until a check with the new
/// credentials succeeds) and 0.32 s of decoded audio; no other pause of 0.3 s or more occurs.
const RESTART_PAUSE_BOUND: f64 = 2.0;

/// One client applies every answer this much later than it arrives (`--answer-delay`): a slow
/// client, or signaling slower than media, as it usually is. aiortc drops what arrives on a
/// section before the answer enabling it is applied, after decrypting it, so nothing can repair
/// it: a visitor's camera on a reused section was never decoded, in 1 run of 5-7 without the
/// delay and in every run with it, until rtcd let a reused section settle
/// (`rtcd::sfu::downtrack::REUSE_SETTLE`, 250 ms).
const ANSWER_DELAY: &str = "0.1";

/// The client that restarts ICE does it this many seconds after its start (after the third
/// participant's last visit, so the pause measured is the restart's own).
const RESTART_AT: f64 = 41.0;

async fn start_client(
    http: &reqwest::Client,
    base: &str,
    name: &'static str,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<Client> {
    let token = token(http, base, name).await?;
    let mut child = tokio::process::Command::new(python())
        .arg(client_script())
        .args(["--url", &format!("{}/ws", base.replace("http", "ws"))])
        .args(["--room", "interop", "--token", &token])
        .args(["--seconds", &seconds.to_string()])
        .args(extra)
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
        .filter(|(_, r)| r["kind"] == kind && is(&r["identity"], who))
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

/// Whether a participant's `identity` is `who`'s (`who-...`: one per token).
fn is(identity: &Value, who: &str) -> bool {
    identity
        .as_str()
        .is_some_and(|i| i.starts_with(&format!("{who}-")))
}

/// The `published` entries of `who`'s tracks of `source` in a client's last report.
fn published<'a>(reports: &'a [Value], who: &str, source: &str) -> Vec<&'a Value> {
    reports
        .iter()
        .rfind(|r| r.get("published").is_some())
        .and_then(|r| r["published"].as_array())
        .into_iter()
        .flatten()
        .filter(|p| is(&p["identity"], who) && p["source"] == source)
        .collect()
}

/// Every track of `who` of `source` that `name` was told about must have been decoded within
/// `bound` s of its `track_published`.
fn decoded_soon_after_published(
    name: &str,
    reports: &[Value],
    who: &str,
    source: &str,
    bound: f64,
) -> anyhow::Result<()> {
    let mut late = Vec::new();
    for p in published(reports, who, source) {
        match p["first_frame_after"].as_f64() {
            Some(d) if d <= bound => {}
            Some(d) => late.push(format!(
                "mid {} published at {} s: first frame {d} s later",
                p["mid"], p["at"]
            )),
            None => late.push(format!(
                "mid {} published at {} s (unpublished at {}): never decoded",
                p["mid"], p["at"], p["unpublished_at"]
            )),
        }
    }
    anyhow::ensure!(
        late.is_empty(),
        "{name}: {who}'s {source} not decoded within {bound} s of track_published: {}",
        late.join("; ")
    );
    Ok(())
}

/// The longest pause between two decoded frames of `kind` from `who` that overlaps `from..to`
/// s of the client's own clock, and where it started. The sections are those `who` sent on at
/// `to` (by the last report until then: `who` may leave later); their pauses are those of the
/// last report, where a pause still going on counts up to that report. No section of `who` at
/// all is an endless pause.
fn longest_pause(reports: &[Value], who: &str, kind: &str, from: f64, to: f64) -> (f64, f64) {
    let (Some(then), Some(last)) = (
        reports
            .iter()
            .rfind(|r| r["t"].as_f64().is_some_and(|t| t <= to) && r.get("received").is_some()),
        reports.iter().rfind(|r| r.get("received").is_some()),
    ) else {
        return (f64::INFINITY, from);
    };
    let end = last["t"].as_f64().unwrap_or(0.0);
    let mut longest = (f64::INFINITY, from);
    for (mid, _) in then["received"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["kind"] == kind && is(&r["identity"], who))
    {
        if longest.0 == f64::INFINITY {
            longest.0 = 0.0;
        }
        let r = &last["received"][mid];
        let since_last = r["since_last"].as_f64().unwrap_or(f64::INFINITY);
        let ongoing = [end - since_last, since_last];
        let gaps = r["gaps"].as_array().into_iter().flatten().map(|gap| {
            [
                gap[0].as_f64().unwrap_or(0.0),
                gap[1].as_f64().unwrap_or(f64::INFINITY),
            ]
        });
        for [at, length] in gaps.chain([ongoing]) {
            if at < to && at + length > from && length > longest.0 {
                longest = (length, at);
            }
        }
    }
    longest
}

/// What a client's last report says of its receiving sections, for failure messages.
fn sections(reports: &[Value]) -> String {
    let Some(last) = reports.iter().rfind(|r| r.get("received").is_some()) else {
        return "no report".into();
    };
    last["received"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(mid, r)| {
            format!(
                "mid {mid} {} from {}: {} frames, the last {} s before the end, pauses {}",
                r["kind"], r["identity"], r["frames"], r["since_last"], r["gaps"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
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
        let restart_at = RESTART_AT.to_string();
        let alice = start_client(
            &http,
            &base,
            "alice",
            49,
            &["--ice-restart-at", &restart_at],
        )
        .await?;
        let bob = start_client(&http, &base, "bob", 48, &["--answer-delay", ANSWER_DELAY]).await?;
        // A third participant comes and goes three times while the two stay (from ~8 s to
        // ~38 s): the second and third visits are sent on reused sections.
        for pause in [8, 2, 2] {
            tokio::time::sleep(Duration::from_secs(pause)).await;
            let carol = start_client(&http, &base, "carol", 8, &[]).await?;
            let reports = carol.finish().await?;
            anyhow::ensure!(
                reports.iter().any(|r| frames_from(r, "alice", "video") > 0),
                "carol never received alice: {:?}",
                reports.last()
            );
        }
        let alice_reports = alice.finish().await?;
        let bob_reports = bob.finish().await?;

        // Every failed requirement below is collected, with its numbers, and reported at once.
        let mut failed: Vec<String> = Vec::new();

        // Every visit's camera and microphone decoded soon after its track_published.
        for (name, reports) in [("alice", &alice_reports), ("bob", &bob_reports)] {
            let cameras = published(reports, "carol", "camera");
            let mids: Vec<&str> = cameras.iter().filter_map(|p| p["mid"].as_str()).collect();
            let first_frames = |source| {
                published(reports, "carol", source)
                    .iter()
                    .map(|p| {
                        format!(
                            "{} (mid {}, {}-{} s)",
                            p["first_frame_after"], p["mid"], p["at"], p["unpublished_at"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            eprintln!(
                "{name}: first frame of carol's camera after its track_published: [{}] s, \
                 of her microphone: [{}] s",
                first_frames("camera"),
                first_frames("microphone"),
            );
            if cameras.len() < 3 {
                failed.push(format!(
                    "{name} was told of {} of carol's 3 cameras: {cameras:?}",
                    cameras.len()
                ));
            }
            if !mids.iter().enumerate().any(|(i, m)| mids[..i].contains(m)) {
                failed.push(format!(
                    "{name}: carol's cameras were never sent on a reused section: mids {mids:?}"
                ));
            }
            for source in ["camera", "microphone"] {
                if let Err(e) =
                    decoded_soon_after_published(name, reports, "carol", source, FIRST_FRAME_BOUND)
                {
                    failed.push(e.to_string());
                }
            }
        }

        // Alice's ICE restart: carried out, the first check with the new credentials answered,
        // and both directions' media continues.
        let restart = alice_reports
            .iter()
            .rfind(|r| r.get("ice_restart").is_some())
            .map(|r| r["ice_restart"].clone())
            .context("alice never restarted ICE")?;
        eprintln!("alice's ICE restart: {restart}");
        anyhow::ensure!(
            restart.get("error").is_none() && restart["checked"].is_number(),
            "alice's ICE restart failed: {restart}"
        );
        if restart["first_check_answered"] != true {
            failed.push(format!(
                "the first check with the new credentials, sent right after the answer to \
                 alice's ICE restart, went unanswered ({} checks sent, one every 100 ms, until \
                 one was answered: {restart})",
                restart["checks"]
            ));
        }
        let (offer, answer) = (
            restart["offer"].as_f64().unwrap_or_default(),
            restart["answer"].as_f64().unwrap_or_default(),
        );
        // Alice's clock -> Bob's (both report the wall clock time of their start).
        let started = |reports: &[Value]| {
            reports
                .iter()
                .find_map(|r| r["started_unix"].as_f64())
                .unwrap_or_default()
        };
        let shift = started(&alice_reports) - started(&bob_reports);
        for (name, reports, who, from, to) in [
            ("alice", &alice_reports, "bob", offer, answer + 5.0),
            (
                "bob",
                &bob_reports,
                "alice",
                offer + shift,
                answer + shift + 5.0,
            ),
        ] {
            for kind in ["video", "audio"] {
                let (pause, at) = longest_pause(reports, who, kind, from, to);
                eprintln!(
                    "{name}: longest pause in {who}'s {kind} around alice's ICE restart \
                     ({from:.1}-{to:.1} s of {name}'s clock): {pause} s from {at:.3} s"
                );
                if pause > RESTART_PAUSE_BOUND {
                    failed.push(format!(
                        "{name}: {who}'s {kind} paused {pause} s from {at:.3} s of {name}'s clock, \
                         around alice's ICE restart (offer sent at {offer} s, answer at \
                         {answer} s of alice's clock, bob's clock = alice's {shift:+.3} s; at \
                         most {RESTART_PAUSE_BOUND} s allowed; {name}'s sections at the end: {})",
                        sections(reports)
                    ));
                }
            }
        }

        // Connecting takes aiortc a few seconds; from then on, media in every window.
        for (name, reports, who) in [
            ("alice", &alice_reports, "bob"),
            ("bob", &bob_reports, "alice"),
        ] {
            if let Err(e) = flows_in_every_window(name, reports, who, 10.0, 45.0) {
                failed.push(e.to_string());
            }
            if reports.iter().any(|r| r["state"] == "failed") {
                failed.push(format!("{name}'s connection failed"));
            }
        }
        anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
        stack.shutdown().await;
        Ok(())
    })
}

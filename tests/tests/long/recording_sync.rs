//! A recording's common clock puts its tracks in sync (issue 31: "the manifest's offsets put
//! the tracks within 100 ms of each other"). Two aiortc clients (`tests/clients/
//! aiortc_marker.py`) publish a microphone that beeps and a camera that flashes white at the
//! same wall-clock instants (every [`PERIOD_MS`], for [`MARK_MS`]), both from the same
//! wall clock, so every beep and flash of both publishers happens at the same moment. Alice
//! joins first and the recording starts; Bob joins seconds later. In each of the four files
//! ffmpeg finds the markers (audio: the first 1 ms window of a beep, `astats`; video: the first
//! white frame, `signalstats`), each put on the common clock (`start_ms` + its time in the
//! file). Each beep and its flash must be within [`BOUND_MS`] of each other (lip sync), and the
//! same marker of the two publishers too. Every track must be placed by sender reports.
//!
//! The check can fail: the same markers with `start_ms` ignored (every file from 0) are seconds
//! apart across the publishers (Bob's files start seconds after Alice's), and the test asserts
//! that too, so a scenario that could not tell the difference fails.
//!
//! aiortc gathers no loopback candidates: the call runs in a LAN namespace the test creates.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rtcd::sfu::{CallId, TenantId};
use rtcd_e2e::netns::{self, LAN_ADDR};
use rtcd_e2e::recording::ffprobe;
use rtcd_recording::manifest::{ClockSource, Manifest, Source, State, StopReason, Track};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

/// rtcd-dev's proxy, as rtcd knows it (the tenant of every room of the proxy).
const TENANT: &str = "dev-proxy";
const ROOM: &str = "sync";
/// A marker every this many ms of the wall clock (`t % PERIOD_MS == 0`).
const PERIOD_MS: f64 = 3000.0;
/// Each marker lasts this long.
const MARK_MS: u32 = 100;
/// The bound: tracks within 100 ms of each other.
const BOUND_MS: f64 = 100.0;
/// A beep's first 1 ms window is at least this loud (the beep is at -6 dBFS, silence is
/// -inf; Opus spreads a little energy before the onset, far below this).
const BEEP_DBFS: f64 = -20.0;
/// A frame whose average luma is above this is white (black is 16, white 235).
const WHITE_YAVG: f64 = 128.0;
/// A beep starts after at least this much quiet (one beep is [`MARK_MS`] long).
const QUIET_BEFORE_MS: f64 = 500.0;
/// The clients' connection (ICE, DTLS) takes aiortc a few seconds.
const CONNECT_BOUND: Duration = Duration::from_secs(20);
/// Bob joins this long after the recording started: his files start seconds after Alice's,
/// at a moment that is not a multiple of the marker period.
const BOB_JOINS_AFTER: Duration = Duration::from_millis(4500);
/// How long the recording goes on after Bob is connected (four or five markers of both).
const BOTH_RECORDED: Duration = Duration::from_secs(13);

/// The interpreter with aiortc (scripts/test.sh prepares a venv and sets this).
fn python() -> String {
    std::env::var("RTCD_E2E_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A running marker client; its per-second reports, as they come.
struct Client {
    name: &'static str,
    child: tokio::process::Child,
    reports: Arc<Mutex<Vec<Value>>>,
}

impl Client {
    async fn start(http: &reqwest::Client, base: &str, name: &'static str) -> anyhow::Result<Self> {
        let reply: Value = http
            .get(format!("{base}/dev/token?room={ROOM}&name={name}"))
            .send()
            .await?
            .json()
            .await?;
        let token = reply["token"]
            .as_str()
            .with_context(|| format!("no token in {reply}"))?;
        let mut child = tokio::process::Command::new(python())
            .arg(format!(
                "{}/clients/aiortc_marker.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args(["--url", &format!("{}/ws", base.replace("http", "ws"))])
            .args(["--room", ROOM, "--token", token])
            // Longer than the test: it is stopped once the recording is.
            .args(["--seconds", "120"])
            .args(["--period-ms", &PERIOD_MS.to_string()])
            .args(["--mark-ms", &MARK_MS.to_string()])
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
        let reports = Arc::new(Mutex::new(Vec::new()));
        let collected = reports.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    collected.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        Ok(Self {
            name,
            child,
            reports,
        })
    }

    fn last_report(&self) -> Option<Value> {
        let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        for r in reports.iter() {
            if r.get("error").is_some() || r.get("closed").is_some() {
                return Some(r.clone());
            }
        }
        reports.last().cloned()
    }

    /// Waits until its peer connection is connected and both its sources are sending.
    async fn connected(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(r) = self.last_report() {
                ensure!(
                    r.get("error").is_none() && r.get("closed").is_none(),
                    "{}: {r}",
                    self.name
                );
                let sending = |kind: &str| r["markers"][kind].as_u64().unwrap_or(0) > 0;
                if r["state"] == "connected" && sending("audio_frames") && sending("video_frames") {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited with {status}: {:?}",
                    self.name,
                    self.last_report()
                );
            }
            ensure!(
                started.elapsed() < CONNECT_BOUND,
                "{} not connected and sending within {CONNECT_BOUND:?}: {:?}",
                self.name,
                self.last_report()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops it (SIGTERM: it leaves the room, as at the end of its time); its last report
    /// (what it says of its markers).
    async fn stop(mut self) -> anyhow::Result<Value> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("{} exited early with {status}", self.name);
        }
        let pid = self.child.id().context("no process id")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .with_context(|| format!("{} did not stop at SIGTERM", self.name))??;
        ensure!(status.success(), "{} exited with {status}", self.name);
        self.last_report()
            .with_context(|| format!("{} reported nothing", self.name))
    }
}

/// Runs ffprobe on a lavfi graph reading `file` with `filters`, asking for each frame's time
/// and the tag `tag`; (time in the file in ms, tag's value) per frame.
async fn frames(
    file: &Path,
    source: &str,
    filters: &str,
    tag: &str,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let path = file
        .to_str()
        .context("a recording path that is not UTF-8")?;
    ensure!(!path.contains('\''), "a quote in {path}");
    let graph = format!("{source}='{path}',{filters}");
    let entries = format!("frame=pts_time:frame_tags={tag}");
    let out = ffprobe(
        &["-f", "lavfi", "-show_entries", &entries, "-of", "csv=p=0"],
        &graph,
    )
    .await?;
    let mut frames = Vec::new();
    for line in out.lines() {
        let mut fields = line.split(',');
        let (Some(t), Some(v)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(t) = t.trim().parse::<f64>() else {
            continue;
        };
        // Silence's peak is "-inf": quieter than any threshold.
        let v = v.trim().parse::<f64>().unwrap_or(f64::NEG_INFINITY);
        frames.push((t * 1000.0, v));
    }
    ensure!(!frames.is_empty(), "ffprobe found no frames in {path}");
    Ok(frames)
}

/// The beeps' onsets in an audio file (ms of the file's time): the first 1 ms window at least
/// [`BEEP_DBFS`] loud after [`QUIET_BEFORE_MS`] of quiet (a file starting inside a beep does
/// not count it).
async fn beeps(file: &Path) -> anyhow::Result<Vec<f64>> {
    let windows = frames(
        file,
        "amovie",
        // Only the peak: astats's every other measure made this 6 times slower (10 s a file).
        "asetnsamples=n=48:p=0,astats=metadata=1:reset=1:measure_perchannel=none:measure_overall=Peak_level",
        "lavfi.astats.Overall.Peak_level",
    )
    .await?;
    let mut onsets = Vec::new();
    let mut loud_at: Option<f64> = None;
    let first = windows[0].0;
    for (t, peak) in windows {
        if peak >= BEEP_DBFS {
            let quiet_since = loud_at.unwrap_or(first);
            if t - quiet_since >= QUIET_BEFORE_MS {
                onsets.push(t);
            }
            loud_at = Some(t);
        }
    }
    Ok(onsets)
}

/// The flashes' onsets in a video file (ms of the file's time): the first white frame after a
/// dark one (a file starting on a white frame does not count it).
async fn flashes(file: &Path) -> anyhow::Result<Vec<f64>> {
    let pictures = frames(file, "movie", "signalstats", "lavfi.signalstats.YAVG").await?;
    let mut onsets = Vec::new();
    let mut was_white = true;
    for (t, yavg) in pictures {
        let white = yavg > WHITE_YAVG;
        if white && !was_white {
            onsets.push(t);
        }
        was_white = white;
    }
    Ok(onsets)
}

/// One file's markers.
struct Markers<'a> {
    track: &'a Track,
    /// Onsets in the file's own time (ms).
    in_file: Vec<f64>,
}

impl Markers<'_> {
    fn who(&self) -> &str {
        &self.track.participant.display_name
    }

    /// Marker number (common-clock time / period, rounded) -> its onset: on the common clock
    /// (`start_ms` + time in the file), or ignoring `start_ms` (`raw`), for the same markers.
    fn by_marker(&self, raw: bool) -> BTreeMap<i64, f64> {
        self.in_file
            .iter()
            .map(|&t| {
                let common = self.track.start_ms + t;
                let at = if raw { t } else { common };
                ((common / PERIOD_MS).round() as i64, at)
            })
            .collect()
    }
}

/// The largest distance between the same marker in `a` and `b`, with the number of markers
/// compared and every distance, for the report.
fn compare(a: &Markers<'_>, b: &Markers<'_>, raw: bool) -> (f64, usize, String) {
    let (a_map, b_map) = (a.by_marker(raw), b.by_marker(raw));
    let mut worst = 0.0f64;
    let mut n = 0;
    let mut shown = Vec::new();
    for (marker, ta) in &a_map {
        if let Some(tb) = b_map.get(marker) {
            let d = ta - tb;
            worst = worst.max(d.abs());
            n += 1;
            shown.push(format!("{d:+.1}"));
        }
    }
    (worst, n, shown.join(" "))
}

#[test]
fn recorded_tracks_are_in_sync_on_the_manifests_common_clock() -> anyhow::Result<()> {
    netns::run(|| async {
        rtcd_e2e::init_logs();
        let began = Instant::now();
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
        let sfu = stack.rtcd.sfu().clone();
        let (tenant, room) = (TenantId::new(TENANT), CallId::new(ROOM));

        let phase = |what: &str| eprintln!("{:6.1} s: {what}", began.elapsed().as_secs_f64());
        let mut alice = Client::start(&http, &base, "alice").await?;
        alice.connected().await?;
        phase("alice connected");
        let notice = sfu.start_recording(&tenant, &room, "test", None).await?;
        tokio::time::sleep(BOB_JOINS_AFTER).await;
        let mut bob = Client::start(&http, &base, "bob").await?;
        bob.connected().await?;
        phase("bob connected");
        tokio::time::sleep(BOTH_RECORDED).await;
        sfu.stop_recording(&tenant, &room, StopReason::Requested)
            .await?;
        phase("recording stopped");
        let alice_report = alice.stop().await?;
        let bob_report = bob.stop().await?;
        phase("clients stopped");
        stack.shutdown().await;
        phase("stack shut down");
        eprintln!("alice's markers: {}", alice_report["markers"]);
        eprintln!("bob's markers: {}", bob_report["markers"]);

        let recording = dir
            .path()
            .join("recordings")
            .join(format!("t-{TENANT}"))
            .join(&notice.recording_id);
        let manifest = Manifest::read(&recording)?;
        eprintln!("{}", serde_json::to_string_pretty(&manifest)?);
        ensure!(
            manifest.state == State::Stopped,
            "the recording is {:?}",
            manifest.state
        );
        ensure!(
            manifest.tracks.len() == 4,
            "{} tracks, not alice's and bob's microphone and camera",
            manifest.tracks.len()
        );
        for track in &manifest.tracks {
            ensure!(
                track.clock == ClockSource::SenderReport,
                "{}: start from {:?}, not from sender reports",
                track.file,
                track.clock
            );
        }

        // Every file's markers.
        let mut found: Vec<Markers<'_>> = Vec::new();
        for track in &manifest.tracks {
            let file = recording.join(&track.file);
            let in_file = if track.source.is_audio() {
                beeps(&file).await?
            } else {
                flashes(&file).await?
            };
            let markers = Markers { track, in_file };
            let common: Vec<String> = markers
                .in_file
                .iter()
                .map(|t| {
                    let at = track.start_ms + t;
                    // The common clock is rtcd's, which is the clients' wall clock here: how
                    // far each onset is from its true instant (sender to rtcd's delay, Opus's
                    // own delay, encoding), for the report.
                    let off = at - (at / PERIOD_MS).round() * PERIOD_MS;
                    format!("{t:.0} ({off:+.1})")
                })
                .collect();
            eprintln!(
                "{}: start_ms {:.1}, markers at ms of the file (and off their wall-clock \
                 instant on the common clock): {}",
                track.file,
                track.start_ms,
                common.join(", ")
            );
            ensure!(
                markers.in_file.len() >= 3,
                "{}: {} markers found, expected one every {PERIOD_MS} ms of its {} ms",
                track.file,
                markers.in_file.len(),
                track.duration_ms
            );
            // Each marker on the common clock must be identifiable (near one instant of the
            // period): a clock seconds off would pair the wrong markers.
            for t in &markers.in_file {
                let at = track.start_ms + t;
                let off = at - (at / PERIOD_MS).round() * PERIOD_MS;
                ensure!(
                    off.abs() < PERIOD_MS / 4.0,
                    "{}: a marker at {t:.0} ms of the file is {off:+.0} ms from any marker \
                     instant on the common clock",
                    track.file
                );
            }
            found.push(markers);
        }
        let of = |who: &str, audio: bool| {
            found
                .iter()
                .find(|m| m.who().starts_with(who) && m.track.source.is_audio() == audio)
                .with_context(|| {
                    format!(
                        "no {} track of {who}",
                        if audio { "audio" } else { "video" }
                    )
                })
        };
        let (alice_mic, alice_cam) = (of("alice", true)?, of("alice", false)?);
        let (bob_mic, bob_cam) = (of("bob", true)?, of("bob", false)?);
        ensure!(
            [alice_mic, alice_cam, bob_mic, bob_cam]
                .iter()
                .all(|m| matches!(m.track.source, Source::Microphone | Source::Camera)),
            "unexpected sources"
        );

        // Lip sync (audio - video per publisher) and the same marker across publishers, on the
        // common clock and with start_ms ignored.
        let pairs = [
            ("alice: beep - flash", alice_mic, alice_cam),
            ("bob: beep - flash", bob_mic, bob_cam),
            ("beep: alice - bob", alice_mic, bob_mic),
            ("flash: alice - bob", alice_cam, bob_cam),
        ];
        let mut failed = Vec::new();
        let mut raw_cross = f64::INFINITY;
        for (what, a, b) in pairs {
            let (worst, n, all) = compare(a, b, false);
            let (raw_worst, _, raw_all) = compare(a, b, true);
            eprintln!(
                "{what}: {n} markers, at most {worst:.1} ms apart on the common clock [{all}]; \
                 ignoring start_ms: at most {raw_worst:.1} ms [{raw_all}]"
            );
            if n < 3 {
                failed.push(format!("{what}: only {n} markers in both files"));
            }
            if worst > BOUND_MS {
                failed.push(format!(
                    "{what}: {worst:.1} ms apart on the common clock (at most {BOUND_MS} ms): \
                     [{all}] ms"
                ));
            }
            if what.contains("alice - bob") {
                raw_cross = raw_cross.min(raw_worst);
            }
        }
        // The scenario must be able to tell: without start_ms, Bob's markers are off by
        // about when his files started after Alice's.
        if raw_cross <= BOUND_MS {
            failed.push(format!(
                "ignoring start_ms, alice's and bob's markers are only {raw_cross:.1} ms apart: \
                 the scenario cannot tell a wrong clock from the right one"
            ));
        }
        phase("analysed");
        if !failed.is_empty() {
            // Frames a client handed to aiortc late are sent late, and aiortc's sender reports
            // pair an RTP timestamp with its send time: a starved client, not rtcd, may be why.
            failed.push(format!(
                "the clients' own timing: alice {}, bob {}",
                alice_report["markers"], bob_report["markers"]
            ));
        }
        ensure!(failed.is_empty(), "{}", failed.join("\n"));
        drop(dir);
        Ok(())
    })
}

//! Recording (issue 31) through the real stack: two Chromium pages in a call through
//! `rtcd-dev` are recorded for about 40 s while one mutes its microphone, the other turns its
//! camera off and on, and one shares its screen. Every per-track file is checked with ffprobe
//! (codec, duration against the time the track was really recorded) and decoded whole with
//! `ffmpeg -v error` (no error may be printed); the manifest must describe what happened; the
//! composite (`rtcd-compose`) must decode, last as long as the recording and carry audio.
//! In the browser-calls chain (`.config/nextest.toml`): two browsers with fake cameras.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rtcd::sfu::{CallId, TenantId};
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind};
use rtcd_e2e::netns;
use rtcd_e2e::recording::{decode_errors, ffprobe};
use rtcd_recording::manifest::{Manifest, Source, State, StopReason};
use serde_json::json;

use crate::calls::{Call, conclude, lan_stack};

/// rtcd-dev's proxy, as rtcd knows it (the tenant of every room of the demo page).
const TENANT: &str = "dev-proxy";

/// What ffprobe says of a file: its first stream's codec and the file's duration.
async fn probe(file: &Path) -> anyhow::Result<(String, f64)> {
    let out = ffprobe(
        &[
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "json",
        ],
        file,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let codec = v["streams"][0]["codec_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok((codec, duration))
}

/// When, in seconds after the recording started, each step of the scenario happened.
#[derive(Default, Debug)]
struct Timeline {
    mic_off: f64,
    mic_on: f64,
    camera_off: f64,
    camera_on: f64,
    screen_on: f64,
    screen_off: f64,
    stopped: f64,
}

#[test]
fn two_chromium_pages_are_recorded_track_by_track_and_composed() -> anyhow::Result<()> {
    netns::run(recorded_call)
}

async fn recorded_call() -> anyhow::Result<()> {
    let (dir, stack) = lan_stack(Vec::new()).await?;
    let mut call = Call::new(&stack, "recorded");
    let sfu = stack.rtcd.sfu().clone();
    let (tenant, room) = (TenantId::new(TENANT), CallId::new("recorded"));
    let mut recording_id = String::new();
    let mut timeline = Timeline::default();
    let outcome = async {
        let alice = call.join(BrowserKind::Chromium, "Alice").await?;
        let bob = call.join(BrowserKind::Chromium, "Bob").await?;
        call.plays(alice, 1).await?;
        call.plays(bob, 1).await?;
        let notice = sfu.start_recording(&tenant, &room, "test", None).await?;
        let started = Instant::now();
        let at = || started.elapsed().as_secs_f64();
        recording_id = notice.recording_id.clone();
        // Consent: both pages show the recording.
        for id in [alice, bob] {
            call.pages[id]
                .wait_for("document.body.dataset.recording === 'true'", BROWSER_STEP)
                .await
                .with_context(|| format!("{} shows no recording indicator", call.names[id]))?;
        }
        call.hold(Duration::from_secs(8)).await?;
        call.flow.source_off(alice, "microphone");
        call.click(alice, "mic").await?;
        timeline.mic_off = at();
        call.hold(Duration::from_secs(6)).await?;
        call.click(alice, "mic").await?;
        timeline.mic_on = at();
        call.flow.source_on(alice, "microphone");
        call.hold(Duration::from_secs(4)).await?;
        call.flow.source_off(bob, "camera");
        call.click(bob, "camera").await?;
        timeline.camera_off = at();
        call.hold(Duration::from_secs(5)).await?;
        call.click(bob, "camera").await?;
        timeline.camera_on = at();
        call.flow.source_on(bob, "camera");
        call.hold(Duration::from_secs(5)).await?;
        call.click(alice, "screen").await?;
        timeline.screen_on = at();
        call.flow.source_on(alice, "screen");
        call.pages[bob]
            .wait_for(
                "[...document.querySelectorAll('video[data-participant][data-source=screen]')]\
                   .filter(v => v.videoWidth > 0).length === 1",
                BROWSER_STEP,
            )
            .await
            .context("Bob does not play the shared screen")?;
        call.hold(Duration::from_secs(8)).await?;
        call.flow.source_off(alice, "screen");
        call.click(alice, "screen").await?;
        timeline.screen_off = at();
        call.hold(Duration::from_secs(3)).await?;
        sfu.stop_recording(&tenant, &room, StopReason::Requested)
            .await?;
        timeline.stopped = at();
        for id in [alice, bob] {
            call.pages[id]
                .wait_for("document.body.dataset.recording !== 'true'", BROWSER_STEP)
                .await
                .with_context(|| format!("{} still shows the recording", call.names[id]))?;
        }
        Ok(())
    }
    .await;
    conclude(call, stack, "recording", outcome).await?;
    eprintln!("timeline: {timeline:?}");

    let recording = dir
        .path()
        .join("recordings")
        .join(format!("t-{TENANT}"))
        .join(&recording_id);
    let manifest = Manifest::read(&recording)?;
    eprintln!("{}", serde_json::to_string_pretty(&manifest)?);
    ensure!(
        manifest.state == State::Stopped && manifest.stop_reason == Some(StopReason::Requested),
        "{:?} {:?}",
        manifest.state,
        manifest.stop_reason
    );
    ensure!(!manifest.degraded, "the recording says it is degraded");
    let of = |user_prefix: &str, source: Source| -> Vec<&rtcd_recording::manifest::Track> {
        manifest
            .tracks
            .iter()
            .filter(|t| t.participant.display_name.starts_with(user_prefix) && t.source == source)
            .collect()
    };
    // What each track really lasted, from the scenario's own clock (a track recorded from the
    // start lasts until the stop; the screen from its share to its end). 1 s of slack each
    // way: the first keyframe after the start, the last packets before the stop.
    let whole = timeline.stopped;
    let expected = [
        ("Alice", Source::Microphone, whole),
        ("Alice", Source::Camera, whole),
        ("Bob", Source::Microphone, whole),
        (
            "Alice",
            Source::Screen,
            timeline.screen_off - timeline.screen_on,
        ),
    ];
    let mut checked = 0;
    for (who, source, seconds) in expected {
        let tracks = of(who, source);
        ensure!(
            tracks.len() == 1,
            "{who} {source:?}: {} files",
            tracks.len()
        );
        let track = tracks[0];
        let file = recording.join(&track.file);
        let (codec, duration) = probe(&file).await?;
        let want = if source.is_audio() { "opus" } else { "vp8" };
        ensure!(codec == want, "{}: codec {codec}, not {want}", track.file);
        ensure!(
            (duration - seconds).abs() <= 1.0,
            "{}: {duration:.2} s, the track was recorded for {seconds:.2} s",
            track.file
        );
        ensure!(
            (track.duration_ms as f64 / 1000.0 - duration).abs() <= 1.0,
            "{}: the manifest says {} ms, ffprobe {duration:.2} s",
            track.file,
            track.duration_ms
        );
        let errors = decode_errors(&file).await?;
        ensure!(errors.is_empty(), "{}: {errors}", track.file);
        ensure!(track.complete, "{} is not complete", track.file);
        checked += 1;
    }
    // Bob's camera, off and on: one track throughout (a gap), or one file per time it was on.
    let bob_cameras = of("Bob", Source::Camera);
    ensure!(!bob_cameras.is_empty(), "no file of Bob's camera");
    let mut bob_seconds = 0.0;
    for track in &bob_cameras {
        let file = recording.join(&track.file);
        let (codec, duration) = probe(&file).await?;
        ensure!(codec == "vp8", "{}: codec {codec}", track.file);
        let errors = decode_errors(&file).await?;
        ensure!(errors.is_empty(), "{}: {errors}", track.file);
        bob_seconds += duration;
        checked += 1;
    }
    let off = timeline.camera_on - timeline.camera_off;
    ensure!(
        bob_seconds >= whole - off - 2.0 && bob_seconds <= whole + 1.0,
        "Bob's camera files last {bob_seconds:.2} s in all; recorded {whole:.2} s with {off:.2} s off"
    );
    // Lip sync: every track long enough to have heard one is placed by its publisher's
    // sender reports, not by when its first packet arrived.
    for track in &manifest.tracks {
        ensure!(
            track.duration_ms < 10_000
                || track.clock == rtcd_recording::manifest::ClockSource::SenderReport,
            "{}: start from {:?}, not from sender reports",
            track.file,
            track.clock
        );
    }
    // The common clock: every track recorded from the start begins within a second of the
    // recording's start (rtcd's clock), and the screen about when it was shared.
    for track in &manifest.tracks {
        let offset = (track.start_ms - manifest.started_at_ms as f64) / 1000.0;
        let expected = if matches!(track.source, Source::Screen | Source::ScreenAudio) {
            timeline.screen_on
        } else if track.source == Source::Camera
            && track.participant.display_name.starts_with("Bob")
            && offset > 2.0
        {
            timeline.camera_on
        } else {
            0.0
        };
        ensure!(
            (offset - expected).abs() <= 1.5,
            "{}: starts {offset:.2} s into the recording, expected about {expected:.2} s",
            track.file
        );
    }
    eprintln!("{checked} files checked");

    // The composite: one file that decodes, as long as the recording, with sound.
    let composite = recording.join("composite.mp4");
    let options = rtcd_recording::compose::Options {
        output: Some(composite.clone()),
        ..rtcd_recording::compose::Options::default()
    };
    let composed = Instant::now();
    rtcd_recording::compose::run(&recording, &options)?;
    eprintln!("composed in {:.1} s", composed.elapsed().as_secs_f64());
    let out = ffprobe(
        &[
            "-show_entries",
            "stream=codec_type:format=duration",
            "-of",
            "json",
        ],
        &composite,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let kinds: Vec<&str> = v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["codec_type"].as_str())
        .collect();
    ensure!(
        kinds.contains(&"video") && kinds.contains(&"audio"),
        "composite streams {kinds:?}"
    );
    let duration: f64 = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    ensure!(
        (duration - whole).abs() <= 1.5,
        "composite lasts {duration:.2} s, the recording {whole:.2} s"
    );
    let errors = decode_errors(&composite).await?;
    ensure!(errors.is_empty(), "composite: {errors}");
    let _ = json!(null);
    drop(dir);
    Ok(())
}

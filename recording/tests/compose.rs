//! `rtcd-compose` against the real ffmpeg: recordings made of ffmpeg-generated WebM files and
//! a manifest written with the crate's own type, composed by the built binary, checked with
//! ffprobe / ffmpeg. Needs `ffmpeg` and `ffprobe` in `PATH` (scripts/test.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use rtcd_recording::manifest::{
    ClockSource, Codec, Manifest, Participant, Source, State, Track, VERSION,
};

/// The common clock's origin of the test recordings (any Unix ms time).
const T0: f64 = 1_764_000_000_000.0;

fn ffmpeg(args: &[&str]) -> Output {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error"])
        .args(args)
        .output()
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A VP8 test picture of `secs` seconds.
fn video(dir: &Path, file: &str, secs: f64) {
    let path = dir.join(file);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-t",
        &secs.to_string(),
        "-c:v",
        "libvpx",
        "-b:v",
        "200k",
        "-deadline",
        "realtime",
        path.to_str().expect("utf-8 path"),
    ]);
}

/// Opus from a lavfi audio source of `secs` seconds.
fn audio(dir: &Path, file: &str, source: &str, secs: f64) {
    let path = dir.join(file);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        source,
        "-t",
        &secs.to_string(),
        "-c:a",
        "libopus",
        path.to_str().expect("utf-8 path"),
    ]);
}

fn track(file: &str, who: &str, source: Source, start_s: f64, secs: f64) -> Track {
    Track {
        file: file.to_owned(),
        participant: Participant {
            session: format!("s-{who}"),
            user: who.to_owned(),
            display_name: who.to_owned(),
        },
        track_id: file.to_owned(),
        source,
        codec: if source.is_audio() {
            Codec::Opus
        } else {
            Codec::Vp8
        },
        start_ms: T0 + start_s * 1000.0,
        clock: ClockSource::SenderReport,
        duration_ms: (secs * 1000.0) as u64,
        bytes: 0,
        frames: 0,
        keyframes: 0,
        dropped_packets: 0,
        width: None,
        height: None,
        speech: Vec::new(),
        complete: true,
    }
}

fn write_manifest(dir: &Path, tracks: Vec<Track>) {
    Manifest {
        version: VERSION,
        recording_id: "rec_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
        room: "test".to_owned(),
        segment: 1,
        host: "test".to_owned(),
        started_by: String::new(),
        started_at_ms: T0 as i64,
        stopped_at_ms: None,
        state: State::Stopped,
        stop_reason: None,
        degraded: false,
        error: None,
        tracks,
    }
    .write(dir)
    .expect("manifest written");
}

fn compose(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtcd-compose"))
        .arg(dir)
        .args(["--width", "640", "--height", "360"])
        .args(extra)
        .output()
        .expect("rtcd-compose runs")
}

fn compose_ok(dir: &Path) -> PathBuf {
    let started = Instant::now();
    let out = compose(dir, &[]);
    assert!(
        out.status.success(),
        "rtcd-compose: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = dir.join("composite.mp4");
    eprintln!(
        "composed in {:.2} s, {} bytes",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&output).expect("output exists").len()
    );
    assert!(
        !dir.join("composite.mp4.filtergraph").exists(),
        "graph file removed"
    );
    output
}

fn probe(file: &Path, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", entries, "-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn duration_s(file: &Path) -> f64 {
    probe(file, "format=duration").parse().expect("a duration")
}

/// `ffmpeg -v error -i FILE -f null -` prints nothing: the file decodes cleanly.
fn decodes_cleanly(file: &Path) {
    let out = ffmpeg(&["-i", file.to_str().expect("utf-8"), "-f", "null", "-"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn cameras_microphone_and_screen_become_one_mp4() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    video(dir, "alice-camera.webm", 10.0);
    audio(dir, "alice-mic.webm", "sine=frequency=440", 10.0);
    video(dir, "bob-camera.webm", 6.0);
    video(dir, "alice-screen.webm", 3.0);
    let mut mic = track("alice-mic.webm", "alice", Source::Microphone, 0.0, 10.0);
    mic.speech = vec![[1_000, 9_000]];
    write_manifest(
        dir,
        vec![
            track("alice-camera.webm", "alice", Source::Camera, 0.0, 10.0),
            mic,
            track("bob-camera.webm", "bob", Source::Camera, 2.0, 6.0),
            track("alice-screen.webm", "alice", Source::Screen, 4.0, 3.0),
        ],
    );
    let out = compose_ok(dir);
    assert_eq!(
        probe(&out, "stream=codec_type,codec_name"),
        "h264,video\naac,audio"
    );
    assert_eq!(
        probe(&out, "stream=width,height").lines().next(),
        Some("640,360")
    );
    let d = duration_s(&out);
    assert!((d - 10.0).abs() < 0.5, "duration {d}");
    decodes_cleanly(&out);
}

/// The times silencedetect reports as `silence_end` (where sound starts again).
fn sound_starts(file: &Path) -> Vec<f64> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "info", "-i"])
        .arg(file)
        .args(["-af", "silencedetect=noise=-40dB:d=0.05", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.split("silence_end: ").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

/// A 100 ms beep 1 s into a track that starts 1.5 s after the recording's first track is
/// heard at 2.5 s. The beep's track is incomplete and its manifest duration stale (0.5 s for
/// a 3 s file, as after a kill): rtcd-compose measures it, so the output lasts 4.5 s.
#[test]
fn beep_is_heard_at_its_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    audio(dir, "alice-mic.webm", "anullsrc=r=48000:cl=mono", 3.0);
    audio(
        dir,
        "bob-mic.webm",
        "sine=frequency=1000,volume=volume=0:enable='not(between(t,1,1.1))'",
        3.0,
    );
    let mut bob = track("bob-mic.webm", "bob", Source::Microphone, 1.5, 0.5);
    bob.complete = false;
    write_manifest(
        dir,
        vec![
            track("alice-mic.webm", "alice", Source::Microphone, 0.0, 3.0),
            bob,
        ],
    );
    let out = compose_ok(dir);
    let d = duration_s(&out);
    assert!((d - 4.5).abs() < 0.2, "duration {d}");
    // silencedetect also ends a silence at the end of the stream: not a sound.
    let starts: Vec<f64> = sound_starts(&out)
        .into_iter()
        .filter(|&t| t < d - 0.1)
        .collect();
    assert_eq!(starts.len(), 1, "one beep: {starts:?}");
    assert!((starts[0] - 2.5).abs() < 0.1, "beep at {}", starts[0]);
    decodes_cleanly(&out);
}

#[test]
fn missing_file_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    video(dir, "here.webm", 1.0);
    write_manifest(
        dir,
        vec![
            track("here.webm", "alice", Source::Camera, 0.0, 1.0),
            track("gone.webm", "bob", Source::Camera, 0.0, 1.0),
        ],
    );
    let out = compose(dir, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gone.webm") && err.contains("missing"),
        "{err}"
    );
    assert!(!dir.join("composite.mp4").exists());
}

#[test]
fn file_names_outside_the_directory_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("rec");
    std::fs::create_dir(&dir).expect("dir");
    // The file exists (one level up): the name alone is refused.
    video(tmp.path(), "outside.webm", 1.0);
    write_manifest(
        &dir,
        vec![track("../outside.webm", "eve", Source::Camera, 0.0, 1.0)],
    );
    let out = compose(&dir, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"../outside.webm\" is not a plain file name"),
        "{err}"
    );
}

#[test]
fn other_manifest_version_and_no_tracks_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write_manifest(dir, Vec::new());
    let out = compose(dir, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tracks"));

    let json = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    let json = json.replace("\"version\": 1,", "\"version\": 2,");
    std::fs::write(dir.join("manifest.json"), json).expect("write");
    let out = compose(dir, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 2"), "{err}");
}

#[test]
fn ffmpeg_failure_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(dir.join("junk.webm"), b"not a webm file").expect("write");
    write_manifest(
        dir,
        vec![track("junk.webm", "alice", Source::Camera, 0.0, 1.0)],
    );
    let out = compose(dir, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ffmpeg failed") && err.contains("junk.webm"),
        "{err}"
    );
}

//! Recordings of a call with rtcd as a real process (so it can be SIGKILLed), for the tests of
//! recordings that go wrong (`tests/long/recording_crash.rs`, `tests/e2e/recording_disk.rs`):
//! two webrtc-rs publishers sending real Opus and VP8 ([`Clip`]), rtcd's gRPC room service to
//! start and read recordings, and ffmpeg / ffprobe to judge the files.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use rtcd_proto::v1 as pb;
use rtcd_proto::v1::rooms_client::RoomsClient;
use rtcd_proto::v1::signaling_client::SignalingClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::daemon::{ADMIN_SECRET, RtcdProcess, client, key_for, test_env};
use crate::media::{Clip, Participant, all_permissions, authorized, basic, eventually};

/// The platform (client ID) whose room is recorded.
pub const TENANT: &str = "recorder-platform";

/// The room.
pub const ROOM: &str = "crash";

/// Packets each publisher must have received of the other before the recording starts (a few
/// seconds of audio and video: both directions are up).
pub const FLOWING: u64 = 150;

/// rtcd (the binary `rtcd`: the test crate's `rtcd-under-test`) on `data` (its store),
/// recording into `recordings` with `min_free_bytes`; the process and its gRPC URL.
pub async fn start_rtcd(
    rtcd: &Path,
    data: &Path,
    recordings: &Path,
    min_free_bytes: u64,
) -> anyhow::Result<(RtcdProcess, String)> {
    let directory = recordings.display().to_string();
    let floor = min_free_bytes.to_string();
    let env = test_env(
        data,
        &[
            ("RTCD_RECORDING_ENABLED", "true"),
            ("RTCD_RECORDING_DIRECTORY", &directory),
            ("RTCD_RECORDING_MIN_FREE_BYTES", &floor),
            ("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0"),
            // A small gRPC message limit: a file is served in many chunks, each of which must
            // fit with its framing.
            ("RTCD_GRPC_MAX_MESSAGE_BYTES", "65536"),
        ],
    );
    let mut process = RtcdProcess::spawn(rtcd, &env)?;
    process.ready().await?;
    let grpc = process.ready_addr("grpc_addr")?;
    Ok((process, format!("http://{grpc}")))
}

/// Registers [`TENANT`] at rtcd's admin API; its `authorization` value for gRPC.
pub async fn register(process: &RtcdProcess) -> anyhow::Result<String> {
    let http = process.ready_addr("http_addr")?;
    let key = key_for(TENANT);
    let status = client()
        .post(format!("http://{http}/register"))
        .basic_auth("", Some(ADMIN_SECRET))
        .json(&json!({"clientID": TENANT, "authKey": key}))
        .send()
        .await?
        .status();
    ensure!(status.is_success(), "registering {TENANT}: {status}");
    Ok(basic(TENANT, &key))
}

/// A participant of [`ROOM`] publishing `audio` and `video` (real Opus and VP8).
pub async fn publisher(
    grpc: &str,
    auth: &str,
    session: &str,
    audio: &Arc<Clip>,
    video: &Arc<Clip>,
) -> anyhow::Result<Participant> {
    let mut signaling = SignalingClient::connect(grpc.to_owned()).await?;
    let p = Participant::join(&mut signaling, Some(auth), ROOM, session, all_permissions())
        .await
        .map_err(|s| anyhow::anyhow!("{session} cannot join: {s}"))?;
    p.add_clip_track("audio", audio.clone()).await?;
    p.add_clip_track("video", video.clone()).await?;
    p.renegotiate().await?;
    Ok(p)
}

/// The clips both publishers send: 4 s of VP8 at `kbps` and of Opus, looped.
pub fn clips(dir: &Path, kbps: u32) -> anyhow::Result<(Arc<Clip>, Arc<Clip>)> {
    Ok((
        Arc::new(Clip::opus(dir, 4)?),
        Arc::new(Clip::vp8(dir, 4, kbps)?),
    ))
}

/// Two publishers in [`ROOM`], receiving each other.
pub async fn call(
    grpc: &str,
    auth: &str,
    audio: &Arc<Clip>,
    video: &Arc<Clip>,
) -> anyhow::Result<(Participant, Participant)> {
    let alice = publisher(grpc, auth, "alice", audio, video).await?;
    let bob = publisher(grpc, auth, "bob", audio, video).await?;
    eventually("alice and bob receive each other's media", || {
        alice.packets_received() >= FLOWING && bob.packets_received() >= FLOWING
    })
    .await?;
    Ok((alice, bob))
}

/// The room service's request to start recording [`ROOM`], as the platform `auth` asks it.
pub fn start_request(auth: &str) -> tonic::Request<pb::StartRecordingRequest> {
    authorized(
        pb::StartRecordingRequest {
            call_id: ROOM.into(),
            requested_by: String::new(),
        },
        Some(auth),
    )
}

/// The room service's request to stop recording [`ROOM`], as the platform `auth` asks it.
pub fn stop_request(auth: &str) -> tonic::Request<pb::StopRecordingRequest> {
    authorized(
        pb::StopRecordingRequest {
            call_id: ROOM.into(),
            requested_by: String::new(),
        },
        Some(auth),
    )
}

/// rtcd's room service at `grpc` (`http://…`).
pub async fn rooms(grpc: &str) -> anyhow::Result<RoomsClient<Channel>> {
    Ok(RoomsClient::connect(grpc.to_owned()).await?)
}

/// Decodes the whole file; what ffmpeg reports at level `error` (nothing for a clean file).
///
/// The decoded frames keep the file's own time base (`-enc_time_base -1`: milliseconds in
/// WebM and Matroska). By default ffmpeg restamps them at the frame rate it guesses, and two
/// frames captured a few milliseconds apart (Chromium's fake camera under load delivers such
/// bursts; measured: 1-5 ms apart at 30 fps fail, 10 ms pass) then share a timestamp in its
/// null output, which it reports as "non monotonically increasing dts to muxer": an artefact
/// of the check, not of the file, which stores them in order.
pub async fn decode_errors(file: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .await
        .context("running ffmpeg")?;
    Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// What Debian's ffprobe prints on stdout for `args` and the `input` (a file, or a graph
/// after `-f lavfi`), quiet but for errors; its stderr is the error when it fails.
pub async fn ffprobe(args: &[&str], input: impl AsRef<OsStr>) -> anyhow::Result<String> {
    let input = input.as_ref();
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(input)
        .output()
        .await
        .context("running ffprobe")?;
    ensure!(
        out.status.success(),
        "ffprobe {}: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The time of the file's last packet (seconds): how much media it holds. After a kill the
/// header's Duration is a placeholder; the packets are what plays.
pub async fn last_packet_seconds(file: &Path) -> anyhow::Result<f64> {
    ffprobe(
        &["-show_entries", "packet=pts_time", "-of", "csv=p=0"],
        file,
    )
    .await?
    .lines()
    .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
    .reduce(f64::max)
    .with_context(|| format!("{}: no packets", file.display()))
}

/// The track files (`*.webm`) in a recording's directory, by name.
pub fn track_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "webm"))
        .collect();
    files.sort();
    Ok(files)
}

/// The directory of recording `id`.
pub fn recording_dir(recordings: &Path, id: &str) -> PathBuf {
    recordings.join(format!("t-{TENANT}")).join(id)
}

/// The `recording_stopped` a participant was told, if any.
pub fn stopped_event(p: &Participant) -> Option<pb::RecordingEvent> {
    p.events().into_iter().find_map(|e| match e {
        pb::server_signal::Signal::RecordingStopped(r) => Some(r),
        _ => None,
    })
}

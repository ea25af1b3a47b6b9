//! Recording (issue 31) when things go wrong, with rtcd as a real process and two webrtc-rs
//! publishers sending real VP8 and Opus ([`Clip`]: frames ffmpeg encoded once, packetized in
//! real time, so the files decode and no encoder runs during the test):
//!
//! * `kill -9` of rtcd mid-recording: every track file written so far decodes without an
//!   error and holds the seconds recorded before the kill, less about one (the writer syncs
//!   every second); rtcd's next start on the same directory marks the recording stopped,
//!   `interrupted`, and still lists and serves its files.
//! * A disk that fills: the recording directory is a small tmpfs the test mounts in a private
//!   mount namespace of its own ([`mountns`]: nothing is mounted on the host, and the tmpfs
//!   goes away with the test even if it crashes), partly filled so that the recording reaches
//!   `recording.min_free_bytes` after a few seconds. The recording stops itself (`disk_full`,
//!   told to every session), its files are complete and decode, the call goes on, and a new
//!   recording is refused (`DISK_FULL`).
//!
//! No browser: both tests run outside the browser-calls chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rtcd_e2e::daemon::{ADMIN_SECRET, RtcdProcess, client, key_for, test_env};
use rtcd_e2e::media::{Clip, Participant, all_permissions, authorized, basic, eventually};
use rtcd_e2e::mountns::{self, Tmpfs};
use rtcd_proto::v1 as pb;
use rtcd_proto::v1::rooms_client::RoomsClient;
use rtcd_proto::v1::signaling_client::SignalingClient;
use rtcd_recording::manifest::{Manifest, State, StopReason};
use serde_json::json;
use tonic::transport::Channel;

/// The rtcd CLI of this crate, run as a process (so it can be SIGKILLed).
const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");

/// The platform (client ID) whose room is recorded.
const TENANT: &str = "recorder-platform";

/// The room.
const ROOM: &str = "crash";

/// Packets each publisher must have received of the other before the recording starts (a few
/// seconds of audio and video: both directions are up).
const FLOWING: u64 = 150;

/// rtcd on `data` (its store) recording into `recordings` with `min_free_bytes`.
async fn start_rtcd(
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
        ],
    );
    let mut process = RtcdProcess::spawn(Path::new(RTCD), &env)?;
    process.ready().await?;
    let grpc = process.ready_addr("grpc_addr")?;
    Ok((process, format!("http://{grpc}")))
}

/// Registers [`TENANT`] at rtcd's admin API; its `authorization` value for gRPC.
async fn register(process: &RtcdProcess) -> anyhow::Result<String> {
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
async fn publisher(
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
fn clips(dir: &Path, kbps: u32) -> anyhow::Result<(Arc<Clip>, Arc<Clip>)> {
    Ok((
        Arc::new(Clip::opus(dir, 4)?),
        Arc::new(Clip::vp8(dir, 4, kbps)?),
    ))
}

/// Two publishers in [`ROOM`], receiving each other.
async fn call(
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

async fn rooms(grpc: &str) -> anyhow::Result<RoomsClient<Channel>> {
    Ok(RoomsClient::connect(grpc.to_owned()).await?)
}

/// Decodes the whole file; what ffmpeg reports at level `error` (nothing for a clean file).
async fn decode_errors(file: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .await
        .context("running ffmpeg")?;
    Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// The time of the file's last packet (seconds): how much media it holds. After a kill the
/// header's Duration is a placeholder; the packets are what plays.
async fn last_packet_seconds(file: &Path) -> anyhow::Result<f64> {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .await
        .context("running ffprobe")?;
    ensure!(
        out.status.success(),
        "ffprobe {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
        .reduce(f64::max)
        .with_context(|| format!("{}: no packets", file.display()))
}

/// The track files (`*.webm`) in a recording's directory, by name.
fn track_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "webm"))
        .collect();
    files.sort();
    Ok(files)
}

/// The directory of recording `id`.
fn recording_dir(recordings: &Path, id: &str) -> PathBuf {
    recordings.join(format!("t-{TENANT}")).join(id)
}

/// The `recording_stopped` a participant was told, if any.
fn stopped_event(p: &Participant) -> Option<pb::RecordingEvent> {
    p.events().into_iter().find_map(|e| match e {
        pb::server_signal::Signal::RecordingStopped(r) => Some(r),
        _ => None,
    })
}

#[tokio::test]
async fn a_recording_survives_kill_9_and_is_marked_interrupted() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let recordings = tempfile::tempdir()?;
    let media = tempfile::tempdir()?;
    let (audio, video) = clips(media.path(), 300)?;
    // A low floor: the test measures the kill, not the host's free space.
    let floor = 64 << 20;
    let (mut process, grpc) = start_rtcd(data.path(), recordings.path(), floor).await?;
    let auth = register(&process).await?;
    let (alice, bob) = call(&grpc, &auth, &audio, &video).await?;

    let mut rooms_client = rooms(&grpc).await?;
    let started = rooms_client
        .start_recording(authorized(
            pb::StartRecordingRequest {
                call_id: ROOM.into(),
                requested_by: String::new(),
            },
            Some(&auth),
        ))
        .await?
        .into_inner();
    let id = started.recording_id.clone();
    let recorded_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    process.signal("KILL")?;
    let recorded = recorded_from.elapsed().as_secs_f64();
    let status = process.wait().await?;
    ensure!(!status.success(), "rtcd exited with {status} after SIGKILL");
    drop((alice, bob));

    let dir = recording_dir(recordings.path(), &id);
    let before = Manifest::read(&dir)?;
    ensure!(
        before.state == State::Recording,
        "the killed rtcd's manifest says {:?}",
        before.state
    );
    let files = track_files(&dir)?;
    ensure!(
        files.len() == 4,
        "two publishers, audio and video each: {files:?}"
    );
    let mut shortest = f64::MAX;
    for file in &files {
        let errors = decode_errors(file).await?;
        ensure!(errors.is_empty(), "{}: {errors}", file.display());
        let seconds = last_packet_seconds(file).await?;
        eprintln!(
            "{}: {seconds:.2} s of media, {} bytes, after {recorded:.2} s of recording",
            file.display(),
            std::fs::metadata(file)?.len()
        );
        shortest = shortest.min(seconds);
    }
    ensure!(
        shortest >= 5.0,
        "a track file holds only {shortest:.2} s of the {recorded:.2} s recorded before the kill"
    );

    // The next start finds it: stopped, interrupted, its files still there.
    let (process, grpc) = start_rtcd(data.path(), recordings.path(), floor).await?;
    let after = Manifest::read(&dir)?;
    ensure!(
        after.state == State::Stopped && after.stop_reason == Some(StopReason::Interrupted),
        "after the restart the manifest says {:?} {:?}",
        after.state,
        after.stop_reason
    );
    ensure!(after.tracks.len() == 4, "{:?}", after.tracks);
    for track in &after.tracks {
        let on_disk = std::fs::metadata(dir.join(&track.file))?.len();
        ensure!(
            !track.complete && track.bytes == on_disk,
            "{}: complete {}, {} bytes in the manifest, {on_disk} on disk",
            track.file,
            track.complete,
            track.bytes
        );
    }
    let mut rooms_client = rooms(&grpc).await?;
    let got = rooms_client
        .get_recording(authorized(
            pb::GetRecordingRequest {
                recording_id: id.clone(),
            },
            Some(&auth),
        ))
        .await?
        .into_inner();
    ensure!(
        got.state == pb::RecordingState::Stopped as i32
            && got.stop_reason == pb::RecordingStop::Interrupted as i32,
        "GetRecording: {got:?}"
    );
    ensure!(got.files.len() == 4, "GetRecording lists {:?}", got.files);
    for file in &got.files {
        let mut chunks = rooms_client
            .read_recording_file(authorized(
                pb::ReadRecordingFileRequest {
                    recording_id: id.clone(),
                    name: file.name.clone(),
                    offset: 0,
                    length: 0,
                },
                Some(&auth),
            ))
            .await?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        let on_disk = std::fs::read(dir.join(&file.name))?;
        ensure!(
            bytes == on_disk,
            "{}: {} bytes served, {} on disk",
            file.name,
            bytes.len(),
            on_disk.len()
        );
    }
    drop(process);
    Ok(())
}

#[test]
fn a_full_disk_stops_the_recording_cleanly_and_the_call_goes_on() -> anyhow::Result<()> {
    mountns::run(full_disk)
}

/// The recordings' tmpfs.
const TMPFS_BYTES: u64 = 16 << 20;
/// rtcd's floor on it.
const FLOOR: u64 = 12 << 20;
/// What the recording may write before it reaches the floor: a few seconds of the call
/// (two publishers, ~600 kbit/s of VP8 and 48 kbit/s of Opus each: ~160 kB/s).
const HEADROOM: u64 = 768 << 10;

async fn full_disk() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let recordings = tempfile::tempdir()?;
    let media = tempfile::tempdir()?;
    let (audio, video) = clips(media.path(), 600)?;
    let tmpfs = Tmpfs::mount(recordings.path(), TMPFS_BYTES)?;
    // Fill it so that the floor is HEADROOM away.
    let fill = tmpfs.available()? - FLOOR - HEADROOM;
    std::fs::write(recordings.path().join("filler"), vec![0u8; fill as usize])?;
    let free_at_start = tmpfs.available()?;
    eprintln!("tmpfs of {TMPFS_BYTES} bytes, {fill} filled, {free_at_start} free, floor {FLOOR}");

    let (mut process, grpc) = start_rtcd(data.path(), recordings.path(), FLOOR).await?;
    let outcome = async {
        let auth = register(&process).await?;
        let (alice, bob) = call(&grpc, &auth, &audio, &video).await?;
        let mut rooms_client = rooms(&grpc).await?;
        let start = || {
            authorized(
                pb::StartRecordingRequest {
                    call_id: ROOM.into(),
                    requested_by: String::new(),
                },
                Some(&auth),
            )
        };
        let started = rooms_client.start_recording(start()).await?.into_inner();
        let id = started.recording_id.clone();
        let recorded_from = Instant::now();

        // Watch the free space until both sessions are told the recording stopped.
        let mut floor_reached: Option<(Instant, u64)> = None;
        let deadline = recorded_from + Duration::from_secs(60);
        let stopped_at = loop {
            let free = tmpfs.available()?;
            if free < FLOOR && floor_reached.is_none() {
                floor_reached = Some((Instant::now(), free));
            }
            if stopped_event(&alice).is_some() && stopped_event(&bob).is_some() {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!(
                    "no recording_stopped within 60 s; {free} bytes free (floor {FLOOR}); \
                     alice saw {:?}",
                    stopped_event(&alice)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let free_at_stop = tmpfs.available()?;
        for (who, p) in [("alice", &alice), ("bob", &bob)] {
            let event = stopped_event(p).context("told")?;
            ensure!(
                event.recording_id == id && event.reason == pb::RecordingStop::DiskFull as i32,
                "{who} was told {event:?}"
            );
        }
        let (floor_at, free_at_floor) = floor_reached.context("the floor was never seen")?;
        eprintln!(
            "recorded {:.2} s; floor reached after {:.2} s ({free_at_floor} bytes free); \
             recording_stopped {:.2} s later; {free_at_stop} bytes free at the stop",
            stopped_at.duration_since(recorded_from).as_secs_f64(),
            floor_at.duration_since(recorded_from).as_secs_f64(),
            stopped_at.duration_since(floor_at).as_secs_f64(),
        );

        // The call goes on: both keep receiving each other for 5 s more.
        let (a, b) = (alice.packets_received(), bob.packets_received());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (a2, b2) = (alice.packets_received(), bob.packets_received());
        eprintln!("after the stop, in 5 s: alice received {} packets, bob {}", a2 - a, b2 - b);
        // 5 s of 50 audio packets/s and 15 video frames/s (2 packets or more each).
        ensure!(
            a2 - a >= 300 && b2 - b >= 300,
            "media after the stop: alice {} packets in 5 s, bob {}",
            a2 - a,
            b2 - b
        );

        // The manifest: stopped for a full disk, every file complete and decoding.
        let dir = recording_dir(recordings.path(), &id);
        let manifest = Manifest::read(&dir)?;
        ensure!(
            manifest.state == State::Stopped && manifest.stop_reason == Some(StopReason::DiskFull),
            "manifest: {:?} {:?} {:?}",
            manifest.state,
            manifest.stop_reason,
            manifest.error
        );
        ensure!(manifest.tracks.len() == 4, "{:?}", manifest.tracks);
        let mut written = 0;
        for track in &manifest.tracks {
            let file = dir.join(&track.file);
            ensure!(track.complete, "{} is not complete", track.file);
            let errors = decode_errors(&file).await?;
            ensure!(errors.is_empty(), "{}: {errors}", track.file);
            written += std::fs::metadata(&file)?.len();
            eprintln!(
                "{}: {} ms, {} bytes, {} frames",
                track.file, track.duration_ms, track.bytes, track.frames
            );
        }
        eprintln!("{written} bytes of track files; manifest error {:?}", manifest.error);

        // Below the floor a new recording is refused.
        let refused = match rooms_client.start_recording(start()).await {
            Ok(r) => bail!("a new recording started below the floor: {:?}", r.into_inner()),
            Err(status) => status,
        };
        let reason = <pb::RecordingRefused as prost::Message>::decode(refused.details())
            .map(|r| r.reason)
            .unwrap_or_default();
        ensure!(
            refused.code() == tonic::Code::FailedPrecondition
                && reason == pb::RecordingRefusal::DiskFull as i32,
            "a new start was refused with {refused:?}"
        );
        drop((alice, bob));
        Ok(())
    }
    .await;
    // rtcd holds files on the tmpfs: it goes first, then the tmpfs (`tmpfs`'s drop).
    let _ = process.signal("KILL");
    let _ = process.wait().await;
    drop(tmpfs);
    outcome
}


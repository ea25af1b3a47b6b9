//! Recording (issue 31) when rtcd is killed: rtcd as a real process and two webrtc-rs
//! publishers sending real VP8 and Opus ([`rtcd_e2e::media::Clip`]: frames ffmpeg encoded once,
//! packetized in real time, so the files decode and no encoder runs during the test). After a
//! `kill -9` mid-recording every track file written so far decodes without an error and holds
//! the seconds recorded before the kill, less about one (the writer syncs every second; a
//! video file also starts at the first keyframe); rtcd's next start on the same directory
//! marks the recording stopped, `interrupted`, and still lists and serves its files. (The full
//! disk is the fast tier's: `tests/e2e/recording_disk.rs`.) No browser: outside the
//! browser-calls chain.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use rtcd_e2e::media::authorized;
use rtcd_e2e::recording::{
    call, clips, decode_errors, last_packet_seconds, recording_dir, register, rooms, start_request,
    start_rtcd, track_files,
};
use rtcd_proto::v1 as pb;
use rtcd_recording::manifest::{Manifest, State, StopReason};

/// The rtcd CLI of this crate, run as a process (so it can be SIGKILLed).
const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");

/// Bytes per `ReadRecordingFile` call when the test downloads a file.
const RANGE: u64 = 128 * 1024;

#[tokio::test]
async fn a_recording_survives_kill_9_and_is_marked_interrupted() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let recordings = tempfile::tempdir()?;
    let media = tempfile::tempdir()?;
    let (audio, video) = clips(media.path(), 300)?;
    // A low floor: the test measures the kill, not the host's free space.
    let floor = 64 << 20;
    let (mut process, grpc) =
        start_rtcd(Path::new(RTCD), data.path(), recordings.path(), floor).await?;
    let auth = register(&process).await?;
    let (alice, bob) = call(&grpc, &auth, &audio, &video).await?;

    let mut rooms_client = rooms(&grpc).await?;
    let started = rooms_client
        .start_recording(start_request(&auth))
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
    let (process, grpc) =
        start_rtcd(Path::new(RTCD), data.path(), recordings.path(), floor).await?;
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
        // In ranges of 128 KiB, as the proxy's range requests read them.
        let (mut bytes, mut size) = (Vec::new(), None);
        while size.is_none_or(|size| (bytes.len() as u64) < size) {
            let mut chunks = rooms_client
                .read_recording_file(authorized(
                    pb::ReadRecordingFileRequest {
                        recording_id: id.clone(),
                        name: file.name.clone(),
                        offset: bytes.len() as u64,
                        length: RANGE,
                    },
                    Some(&auth),
                ))
                .await?
                .into_inner();
            let mut first = true;
            while let Some(chunk) = chunks.message().await? {
                if std::mem::take(&mut first) {
                    size = Some(chunk.size);
                }
                bytes.extend_from_slice(&chunk.data);
            }
            ensure!(
                !first,
                "{}: a read from {} sent nothing",
                file.name,
                bytes.len()
            );
        }
        let on_disk = std::fs::read(dir.join(&file.name))?;
        ensure!(
            bytes == on_disk,
            "{}: {} bytes served, {} on disk",
            file.name,
            bytes.len(),
            on_disk.len()
        );
        // Whole, in one read (as a download without a Range header): many chunks, each
        // within the 64 KiB message limit this rtcd runs with.
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
        let mut whole = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            whole.extend_from_slice(&chunk.data);
        }
        ensure!(
            whole == on_disk,
            "{}: {} bytes served whole, {} on disk",
            file.name,
            whole.len(),
            on_disk.len()
        );
    }
    drop(process);
    Ok(())
}

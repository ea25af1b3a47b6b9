//! Recording (issue 31) of VP9 and AV1 from real encoders: rtcd as a process, two webrtc-rs
//! publishers sending ffmpeg's test picture encoded by libvpx-vp9 (profile 0, one spatial
//! layer; [`Clip::vp9`]) or libaom (AV1; [`Clip::av1`]), and Opus, packetized by webrtc-rs.
//! The recorder's VP9 and AV1 paths had been checked only with hand-made frames: here each
//! camera's WebM must name the codec at the clip's size, hold the frames of the time
//! recorded with a keyframe a second, and decode in ffmpeg without an error. About 10 s each;
//! needs ffmpeg, as the suite has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rtcd_e2e::media::{Clip, ClipCodec};
use rtcd_e2e::recording::{
    call, decode_errors, ffprobe, recording_dir, register, rooms, start_request, start_rtcd,
    stop_request,
};
use rtcd_recording::manifest::{Codec, Manifest, State};

/// The rtcd CLI of this crate, run as a process.
const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");

/// How long the test records.
const RECORDED: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_from_a_real_encoder_is_recorded_into_webm_files_that_decode() -> anyhow::Result<()> {
    let media = tempfile::tempdir()?;
    record(Clip::vp9(media.path(), 4, 300)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_from_a_real_encoder_is_recorded_into_webm_files_that_decode() -> anyhow::Result<()> {
    let media = tempfile::tempdir()?;
    record(Clip::av1(media.path(), 4, 300)?).await
}

/// Records a call of two publishers sending `video` (and Opus) and checks both cameras' files.
async fn record(video: Clip) -> anyhow::Result<()> {
    let (codec, probed_as) = match video.codec {
        ClipCodec::Vp9 => (Codec::Vp9, "vp9"),
        ClipCodec::Av1 => (Codec::Av1, "av1"),
        other => anyhow::bail!("not a codec this test records: {other:?}"),
    };
    let data = tempfile::tempdir()?;
    let recordings = tempfile::tempdir()?;
    let media = tempfile::tempdir()?;
    let audio = Arc::new(Clip::opus(media.path(), 4)?);
    let video = Arc::new(video);
    let (mut process, grpc) = start_rtcd(RTCD.as_ref(), data.path(), recordings.path(), 0).await?;
    let outcome = async {
        let auth = register(&process).await?;
        let (alice, bob) = call(&grpc, &auth, &audio, &video).await?;
        let mut rooms_client = rooms(&grpc).await?;
        let started = rooms_client
            .start_recording(start_request(&auth))
            .await?
            .into_inner();
        tokio::time::sleep(RECORDED).await;
        rooms_client.stop_recording(stop_request(&auth)).await?;
        let dir = recording_dir(recordings.path(), &started.recording_id);
        let deadline = Instant::now() + Duration::from_secs(10);
        let manifest = loop {
            let manifest = Manifest::read(&dir)?;
            if manifest.state == State::Stopped || Instant::now() > deadline {
                break manifest;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ensure!(manifest.state == State::Stopped, "{:?}", manifest.state);
        let cameras: Vec<_> = manifest
            .tracks
            .iter()
            .filter(|t| t.codec != Codec::Opus)
            .collect();
        ensure!(cameras.len() == 2, "video tracks: {:?}", manifest.tracks);
        for track in cameras {
            let file = dir.join(&track.file);
            eprintln!(
                "{}: {:?} {:?}x{:?}, {} ms, {} frames ({} keyframes), {} bytes, {} packets dropped",
                track.file,
                track.codec,
                track.width,
                track.height,
                track.duration_ms,
                track.frames,
                track.keyframes,
                track.bytes,
                track.dropped_packets
            );
            ensure!(
                track.codec == codec && track.file.ends_with(".webm") && track.complete,
                "{track:?}"
            );
            ensure!(
                (track.width, track.height) == (Some(320), Some(240)),
                "the keyframe header's size: {track:?}"
            );
            // 15 frames a second for most of the time recorded (the file starts at the first
            // keyframe after the start: at most a second of the clip's GOP is skipped).
            let least = (RECORDED.as_secs() - 1) * 15 * 8 / 10;
            // And a keyframe a second (the clip's GOP): webrtc-rs's VP9 payloader marks every
            // frame as not inter-predicted, so only the frame headers tell them apart.
            ensure!(
                track.frames >= least && (4..=track.frames / 10).contains(&track.keyframes),
                "{} frames, {} keyframes: fewer than {least} frames, or not one keyframe in 15",
                track.frames,
                track.keyframes
            );
            let probed = ffprobe(
                &[
                    "-select_streams",
                    "v:0",
                    "-count_frames",
                    "-show_entries",
                    "stream=codec_name,width,height,nb_read_frames",
                    "-of",
                    "csv=p=0",
                ],
                &file,
            )
            .await
            .with_context(|| format!("probing {}", track.file))?;
            ensure!(
                probed.starts_with(&format!("{probed_as},320,240,")),
                "{}: ffprobe says {probed}",
                track.file
            );
            let decoded: u64 = probed
                .trim()
                .rsplit(',')
                .next()
                .unwrap_or("")
                .parse()
                .with_context(|| format!("ffprobe said {probed}"))?;
            ensure!(
                decoded == track.frames,
                "{}: ffmpeg decodes {decoded} frames, the manifest says {}",
                track.file,
                track.frames
            );
            let errors = decode_errors(&file).await?;
            ensure!(errors.is_empty(), "{}: {errors}", track.file);
        }
        drop((alice, bob));
        Ok(())
    }
    .await;
    let _ = process.signal("KILL");
    let _ = process.wait().await;
    outcome
}

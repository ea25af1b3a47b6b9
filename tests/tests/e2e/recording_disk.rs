//! Recording (issue 31) on a disk that fills: rtcd as a real process recording into a small
//! tmpfs the test mounts in a private mount namespace of its own ([`mountns`]: nothing is
//! mounted on the host, and the tmpfs goes away with the test even if it crashes), partly
//! filled so that the recording reaches `recording.min_free_bytes` after a few seconds; two
//! webrtc-rs publishers sending real VP8 and Opus ([`rtcd_e2e::media::Clip`]). The recording
//! stops itself (`disk_full`, told to every session), its files are complete and decode, the
//! call goes on, and a new recording is refused (`DISK_FULL`). About 20 s; needs root (the
//! mount namespace) and ffmpeg, as the suite has.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rtcd_e2e::mountns::{self, Tmpfs};
use rtcd_e2e::recording::{
    call, clips, decode_errors, recording_dir, register, rooms, start_request, start_rtcd,
    stopped_event,
};
use rtcd_proto::v1 as pb;
use rtcd_recording::manifest::{Manifest, State, StopReason};

/// The rtcd CLI of this crate, run as a process (in the test's mount namespace).
const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");

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

    let (mut process, grpc) =
        start_rtcd(Path::new(RTCD), data.path(), recordings.path(), FLOOR).await?;
    let outcome = async {
        let auth = register(&process).await?;
        let (alice, bob) = call(&grpc, &auth, &audio, &video).await?;
        let mut rooms_client = rooms(&grpc).await?;
        let start = || start_request(&auth);
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
        eprintln!(
            "after the stop, in 5 s: alice received {} packets, bob {}",
            a2 - a,
            b2 - b
        );
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
        eprintln!(
            "{written} bytes of track files; manifest error {:?}",
            manifest.error
        );

        // Below the floor a new recording is refused.
        let refused = match rooms_client.start_recording(start()).await {
            Ok(r) => bail!(
                "a new recording started below the floor: {:?}",
                r.into_inner()
            ),
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

//! End-to-end encrypted media through a real rtcd (docs/e2ee.md): frames whose bodies the
//! server cannot read (noise after the codec's clear bytes, the trailer at the end) reach a
//! subscriber byte for byte, starting at a key frame that rtcd found from the clear bytes
//! alone, and a subscriber that only NACKs (webrtc-rs sends no PLI of its own) gets lost
//! packets back from rtcd's retransmission buffer, unchanged.
//!
//! Simulcast layer switching is not covered here: the webrtc-rs test peers publish one
//! encoding per track. The unit tests of `rtcd::media::packet` show that a layer switch's
//! VP8 descriptor rewrite leaves an encrypted body untouched and that key frames of every
//! layer are found from the clear bytes.

use std::time::Duration;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{PATIENCE, Participant, PeerOptions, all_permissions, eventually};

/// Frames that must arrive before the checks.
const ENOUGH: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_frames_are_forwarded_and_retransmitted_byte_for_byte() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-e2ee").await?;
    let mut client = rtcd.client().await?;
    let alice = Participant::join(
        &mut client,
        Some(&auth),
        "secret",
        "alice",
        all_permissions(),
    )
    .await?;
    alice.add_encrypted_video("video").await?;
    alice.renegotiate().await?;
    let flow = format!(
        "{:08x}/e2ee",
        alice.published_ssrc("video").expect("published")
    );
    // Bob comes later: rtcd starts his copy at a key frame, found in the clear bytes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bob = Participant::listener(
        &mut client,
        &auth,
        "secret",
        "bob",
        PeerOptions {
            accept_replays: true,
            ..Default::default()
        },
    )
    .await?;
    eventually("bob receives alice's encrypted video", || {
        bob.flows().get(&flow).is_some_and(|f| f.packets >= ENOUGH)
    })
    .await?;
    assert_eq!(
        bob.e2ee_first_keyframe(&flow),
        Some(true),
        "started at a key frame"
    );
    assert_eq!(bob.e2ee_corrupt(), 0, "a forwarded frame changed");

    // Bob NACKs a frame he has: only rtcd's retransmission can bring it again, unchanged.
    let mut nacked = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        nacked.push(bob.nack_latest(&flow.replace("/e2ee", ""), "e2ee").await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let f = bob.flows().remove(&flow).expect("flow exists");
        if f.repeated.iter().any(|n| nacked.contains(n)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retransmission of any of {nacked:?}; repeats seen {:?}",
            f.repeated
        );
    }
    assert_eq!(bob.e2ee_corrupt(), 0, "a retransmitted frame changed");
    let f = bob.flows().remove(&flow).expect("flow exists");
    assert!(f.lost() <= 2, "frames lost on loopback: {}", f.lost());
    rtcd.rtcd.shutdown().await;
    Ok(())
}

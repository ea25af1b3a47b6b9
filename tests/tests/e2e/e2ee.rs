//! End-to-end encrypted media through a real rtcd (docs/e2ee.md): frames whose bodies the
//! server cannot read (noise after the codec's clear bytes, the trailer at the end) reach a
//! subscriber byte for byte, starting at a key frame that rtcd found from the clear bytes
//! alone, and a subscriber that only NACKs (webrtc-rs sends no PLI of its own) gets lost
//! packets back from rtcd's retransmission buffer, unchanged.
//!
//! A simulcast publisher's encrypted layers: rtcd switches a subscriber between them (here
//! by the size it shows the video at, matched against the picture size the key frames'
//! clear bytes announce), each switch at a key frame, the frames byte for byte (the VP8
//! descriptor, outside the frame, renumbered).

use std::time::Duration;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{
    PATIENCE, Participant, PeerOptions, SimulcastSection, all_permissions, eventually,
    simulcast_publisher,
};
use rtcd_proto::v1 as pb;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_switches_between_encrypted_simulcast_layers() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-e2ee").await?;
    let mut client = rtcd.client().await?;
    let (_alice, layers) = simulcast_publisher(
        &mut client,
        &auth,
        "secret",
        "alice",
        SimulcastSection::SendOnly,
    )
    .await?;
    let flow = |ssrc: u32| format!("{ssrc:08x}/e2ee");
    let bob =
        Participant::listener(&mut client, &auth, "secret", "bob", PeerOptions::default()).await?;
    eventually("bob receives one of alice's layers", || {
        layers
            .iter()
            .any(|l| bob.flows().get(&flow(*l)).is_some_and(|f| f.packets >= 25))
    })
    .await?;
    let mid = bob
        .events()
        .into_iter()
        .find_map(|e| match e {
            pb::server_signal::Signal::TrackPublished(t)
                if t.kind == pb::TrackKind::Video as i32 =>
            {
                Some(t.mid)
            }
            _ => None,
        })
        .expect("alice's video was announced");
    let view = |width: u32, height: u32| {
        pb::client_signal::Signal::TrackViews(pb::TrackViews {
            views: vec![pb::TrackView {
                mid: mid.clone(),
                track_id: String::new(),
                visible: true,
                width,
                height,
            }],
        })
    };
    // A thumbnail: the smallest layer fills it; then full size: the largest (loopback has the
    // bandwidth). Each layer is reached from the other, so at least one switch happens.
    for (size, layer) in [((160, 90), layers[0]), ((640, 360), layers[2])] {
        bob.send(view(size.0, size.1)).await?;
        let before = bob.flows().get(&flow(layer)).map_or(0, |f| f.packets);
        eventually(
            &format!("bob gets layer {layer:08x} for a {size:?} view"),
            || {
                bob.flows()
                    .get(&flow(layer))
                    .is_some_and(|f| f.packets >= before + 25)
            },
        )
        .await?;
        assert_eq!(
            bob.e2ee_first_keyframe(&flow(layer)),
            Some(true),
            "layer {layer:08x} started at a key frame"
        );
    }
    assert_eq!(bob.e2ee_corrupt(), 0, "a forwarded frame changed");
    let reached = layers
        .iter()
        .filter(|l| bob.flows().contains_key(&flow(**l)))
        .count();
    assert!(reached >= 2, "bob saw {reached} layers");
    rtcd.rtcd.shutdown().await;
    Ok(())
}

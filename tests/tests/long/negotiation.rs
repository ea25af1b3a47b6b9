//! The client makes every offer (docs/protocol.md §4a), for minutes: a peer that rtcd asks to
//! renegotiate again and again stays connected with media flowing in every window, and rtcd's
//! answers reuse sections so that a long-lived participant's SDP follows the live tracks, not
//! the call's history. The long tier's part of `e2e/negotiation.rs` (the same real webrtc-rs
//! peers over the real gRPC service).

use std::time::Duration;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{
    RTCPeerConnectionState, eventually, keeps_flowing, publisher, remote_sdp_shape,
};
use rtcd_proto::v1 as pb;

const WINDOW: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_renegotiated_by_rtcd_for_a_minute_stays_connected_with_media_in_every_window()
-> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let alice = publisher(&mut client, &auth, "alice").await?;
    let bob = publisher(&mut client, &auth, "bob").await?;
    eventually("alice and bob hear each other", || {
        alice.received("bob", "video") > 20 && bob.received("alice", "video") > 20
    })
    .await?;
    // For a minute, a third participant comes and goes every few seconds: every arrival and
    // departure makes rtcd ask alice and bob for a new offer.
    let checks = async {
        tokio::try_join!(
            keeps_flowing(
                &alice,
                &["bob/audio", "bob/video"],
                Duration::from_secs(60),
                WINDOW
            ),
            keeps_flowing(
                &bob,
                &["alice/audio", "alice/video"],
                Duration::from_secs(60),
                WINDOW
            ),
        )
    };
    let churn = async {
        let mut client = client.clone();
        let started = tokio::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(55) {
            n += 1;
            let carol = publisher(&mut client, &auth, &format!("carol{n}")).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(carol);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        anyhow::Ok(n)
    };
    let (flows, cycles) = tokio::join!(checks, churn);
    flows?;
    let cycles = cycles?;
    for p in [&alice, &bob] {
        assert_eq!(
            p.connection_state(),
            RTCPeerConnectionState::Connected,
            "{}",
            p.session
        );
        assert!(
            p.negotiations() >= 2 * cycles as u64,
            "{}: {} negotiations for {cycles} arrivals and departures",
            p.session,
            p.negotiations()
        );
        assert!(p.errors().is_empty(), "{}: {:?}", p.session, p.errors());
    }
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_join_leave_cycles_keep_the_sdp_bounded_by_the_live_tracks() -> anyhow::Result<()> {
    // Each guest leaves by dropping its stream. Without a resume grace that ends its session
    // at once (as when this test was written); with the default one, every guest would sit
    // parked for 15 s first, and forty of them made this the suite's longest test (10 min)
    // while testing nothing more: parking has its own tests (e2e/resume.rs).
    let rtcd = TestRtcd::start(&[("RTCD_RTC_RESUME_GRACE_SECONDS", "0")]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let alice = publisher(&mut client, &auth, "alice").await?;
    let bob = publisher(&mut client, &auth, "bob").await?;
    eventually("alice hears bob", || alice.received("bob", "video") > 20).await?;
    let mut shapes = Vec::new();
    for n in 0..40 {
        let guest = format!("guest{n}");
        let g = publisher(&mut client, &auth, &guest).await?;
        eventually(&format!("alice receives {guest}"), || {
            alice.received(&guest, "video") > 5
        })
        .await?;
        drop(g);
        eventually(&format!("{guest} withdrawn from alice"), || {
            alice.saw(|e| {
                matches!(e, pb::server_signal::Signal::ParticipantLeft(p) if p.session_id == guest)
            })
        })
        .await?;
        shapes.push(remote_sdp_shape(&alice).await);
    }
    // Alice sends 2 tracks and receives bob's 2 plus at most one guest's 2 at a time; a
    // departed guest's sections are reused, never added to.
    let (sections, bytes) = remote_sdp_shape(&alice).await;
    assert!(
        sections <= 2 + 2 + 2 + 2,
        "alice's SDP has {sections} media sections after 40 guests: {shapes:?}"
    );
    let (early_sections, early_bytes) = shapes[2];
    assert!(
        sections <= early_sections && bytes <= early_bytes + early_bytes / 4,
        "the SDP grew from {early_sections} sections / {early_bytes} B (guest 3) to {sections} / {bytes} B (guest 40): {shapes:?}"
    );
    eprintln!(
        "SDP after 40 join/leave cycles: {sections} media sections, {bytes} bytes (after 3: {early_sections}, {early_bytes} B)"
    );
    // Bob still reaches alice in every window, and alice is still connected.
    keeps_flowing(
        &alice,
        &["bob/audio", "bob/video"],
        Duration::from_secs(10),
        WINDOW,
    )
    .await?;
    assert_eq!(alice.connection_state(), RTCPeerConnectionState::Connected);
    assert!(alice.errors().is_empty(), "{:?}", alice.errors());
    rtcd.rtcd.shutdown().await;
    drop(bob);
    Ok(())
}

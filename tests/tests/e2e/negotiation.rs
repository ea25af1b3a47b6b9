//! The client makes every offer (docs/protocol.md §4a): real webrtc-rs peers over the real
//! gRPC service: who is announced, what a permission change stops. (A peer renegotiated for a
//! minute, and forty guests whose sections are reused so that a long-lived participant's SDP
//! follows the live tracks, not the call's history, are in the long tier,
//! `long/negotiation.rs`.)

use std::time::Duration;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{Participant, all_permissions, eventually, keeps_flowing, publisher};
use rtcd_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_announced_and_participants_leave_after_their_tracks() -> anyhow::Result<()> {
    use pb::server_signal::Signal;
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let alice = publisher(&mut client, &auth, "alice").await?;
    // A listener publishes nothing and is still in everyone's roster, both ways.
    let carol =
        Participant::listener(&mut client, &auth, "call", "carol", Default::default()).await?;
    let joined = |p: &Participant, who: &str| {
        p.saw(|e| matches!(e, Signal::ParticipantJoined(x) if x.session_id == who))
    };
    eventually("alice sees carol", || joined(&alice, "carol")).await?;
    eventually("carol sees alice", || joined(&carol, "alice")).await?;
    let bob = publisher(&mut client, &auth, "bob").await?;
    eventually("carol receives bob", || carol.received("bob", "video") > 10).await?;
    eventually("bob sees both", || {
        joined(&bob, "alice") && joined(&bob, "carol")
    })
    .await?;
    drop(bob);
    eventually("carol sees bob leave", || {
        carol.saw(|e| matches!(e, Signal::ParticipantLeft(x) if x.session_id == "bob"))
    })
    .await?;
    // Order: bob's tracks were withdrawn before bob left.
    let events = carol.events();
    let left = events
        .iter()
        .position(|e| matches!(e, Signal::ParticipantLeft(x) if x.session_id == "bob"))
        .unwrap_or(0);
    let removed: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Signal::TrackRemoved(t) if t.session_id == "bob"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(removed.len(), 2, "{events:?}");
    assert!(removed.iter().all(|&i| i < left), "{events:?}");
    // Every track_published named the section that carries it.
    assert!(events.iter().all(|e| match e {
        Signal::TrackPublished(t) => !t.mid.is_empty(),
        _ => true,
    }));
    rtcd.rtcd.shutdown().await;
    Ok(())
}

/// Packets of `flow` that `p` receives during `window`.
async fn growth(p: &Participant, flow: &str, window: Duration) -> u64 {
    let count = || p.flows().get(flow).map_or(0, |f| f.packets);
    let before = count();
    tokio::time::sleep(window).await;
    count() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_audio_is_its_own_kind_and_a_permission_update_stops_what_is_no_longer_allowed()
-> anyhow::Result<()> {
    use pb::server_signal::Signal;
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let alice =
        Participant::join(&mut client, Some(&auth), "call", "alice", all_permissions()).await?;
    alice.add_track("audio").await?;
    alice.add_track("screen_audio").await?;
    alice.declare("screen_audio", pb::TrackKind::ScreenAudio);
    alice.renegotiate().await?;
    let bob = Participant::listener(&mut client, &auth, "call", "bob", Default::default()).await?;
    eventually("bob receives alice", || bob.received("alice", "audio") > 10).await?;
    keeps_flowing(
        &bob,
        &["alice/audio", "alice/screen_audio"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await?;
    let kinds: Vec<i32> = bob
        .events()
        .iter()
        .filter_map(|e| match e {
            Signal::TrackPublished(t) => Some(t.kind),
            _ => None,
        })
        .collect();
    assert!(
        kinds.contains(&(pb::TrackKind::ScreenAudio as i32))
            && kinds.contains(&(pb::TrackKind::Audio as i32)),
        "{kinds:?}"
    );
    // Muting the microphone leaves the screen's sound alone.
    alice
        .send(pb::client_signal::Signal::Mute(pb::Mute {
            kind: pb::TrackKind::Audio as i32,
            muted: true,
        }))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(growth(&bob, "alice/audio", Duration::from_secs(1)).await, 0);
    keeps_flowing(
        &bob,
        &["alice/screen_audio"],
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await?;
    // A refreshed token without screen rights: the screen's sound is withdrawn and stops.
    let mut fewer = all_permissions();
    fewer.publish_screen = false;
    alice
        .send(pb::client_signal::Signal::UpdatePermissions(fewer))
        .await?;
    eventually("bob told the screen audio is gone", || {
        bob.saw(
            |e| matches!(e, Signal::TrackRemoved(t) if t.kind == pb::TrackKind::ScreenAudio as i32),
        )
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        growth(&bob, "alice/screen_audio", Duration::from_secs(1)).await,
        0
    );
    // And bob, no longer allowed to subscribe, stops receiving; unmuted audio goes nowhere.
    alice
        .send(pb::client_signal::Signal::Mute(pb::Mute {
            kind: pb::TrackKind::Audio as i32,
            muted: false,
        }))
        .await?;
    keeps_flowing(
        &bob,
        &["alice/audio"],
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await?;
    // Nothing allowed at all: no subscription either.
    let deaf = pb::Permissions::default();
    bob.send(pb::client_signal::Signal::UpdatePermissions(deaf))
        .await?;
    eventually("bob's audio withdrawn", || {
        bob.saw(|e| matches!(e, Signal::TrackRemoved(t) if t.kind == pb::TrackKind::Audio as i32))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(growth(&bob, "alice/audio", Duration::from_secs(1)).await, 0);
    assert!(alice.errors().is_empty(), "{:?}", alice.errors());
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_audio_needs_the_screen_permission() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let mut may_talk = all_permissions();
    may_talk.publish_screen = false;
    let alice = Participant::join(&mut client, Some(&auth), "call", "alice", may_talk).await?;
    alice.add_track("audio").await?;
    alice.add_track("screen_audio").await?;
    alice.declare("screen_audio", pb::TrackKind::ScreenAudio);
    alice.renegotiate().await?;
    let bob = Participant::listener(&mut client, &auth, "call", "bob", Default::default()).await?;
    eventually("bob receives alice", || bob.received("alice", "audio") > 10).await?;
    keeps_flowing(
        &bob,
        &["alice/audio"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await?;
    assert_eq!(bob.received("alice", "screen_audio"), 0);
    eventually("alice told", || {
        alice
            .errors()
            .iter()
            .any(|(_, m)| m.contains("may not publish screen_audio"))
    })
    .await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_say_msid_semantic_and_never_send_on_a_section_with_nothing_behind_it()
-> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let _alice = publisher(&mut client, &auth, "alice").await?;
    // Bob may publish but not subscribe; his receive-only section gets nothing.
    let mut no_subscribe = all_permissions();
    no_subscribe.subscribe = false;
    let bob = Participant::join(&mut client, Some(&auth), "call", "bob", no_subscribe).await?;
    bob.receive_only().await?;
    eventually("bob answered", || bob.negotiations() >= 1).await?;
    let sdp = bob
        .pc
        .remote_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or_default();
    assert!(sdp.contains("a=msid-semantic: WMS *"), "{sdp}");
    assert!(
        !sdp.contains("a=sendonly") && !sdp.contains("a=sendrecv"),
        "{sdp}"
    );
    assert!(sdp.contains("a=inactive"), "{sdp}");
    // A listener that may subscribe gets alice's tracks as sendonly sections naming them.
    let carol =
        Participant::listener(&mut client, &auth, "call", "carol", Default::default()).await?;
    eventually("carol receives alice", || {
        carol.received("alice", "video") > 5
    })
    .await?;
    let sdp = carol
        .pc
        .remote_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or_default();
    for section in sdp.split("\r\nm=").skip(1) {
        if section.contains("a=msid:alice ") {
            assert!(section.contains("a=sendonly"), "{section}");
        }
    }
    assert_eq!(sdp.matches("a=msid:alice ").count(), 2, "{sdp}");
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tracks_placed_in_one_answer_all_flow() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let _alice = publisher(&mut client, &auth, "alice").await?;
    let _bob = publisher(&mut client, &auth, "bob").await?;
    // Carol's first offer already has four receiving sections: all four tracks go into one
    // answer, each on its own new section.
    let carol = Participant::join(
        &mut client,
        Some(&auth),
        "call",
        "carol",
        rtcd_e2e::media::subscribe_only(),
    )
    .await?;
    carol.add_receivers(2, 2).await?;
    carol.renegotiate().await?;
    eventually("carol receives both", || {
        ["alice/audio", "alice/video", "bob/audio", "bob/video"]
            .iter()
            .all(|f| carol.flows().get(*f).is_some_and(|f| f.packets > 10))
    })
    .await?;
    keeps_flowing(
        &carol,
        &["alice/audio", "alice/video", "bob/audio", "bob/video"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_learns_that_a_track_is_muted_with_the_track() -> anyhow::Result<()> {
    use pb::server_signal::Signal;
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let alice = publisher(&mut client, &auth, "alice").await?;
    eventually("alice published", || rtcd.rtcd.sfu().session_count() == 1).await?;
    alice
        .send(pb::client_signal::Signal::Mute(pb::Mute {
            kind: pb::TrackKind::Audio as i32,
            muted: true,
        }))
        .await?;
    let bob = Participant::listener(&mut client, &auth, "call", "bob", Default::default()).await?;
    eventually("bob receives alice's camera", || {
        bob.received("alice", "video") > 10
    })
    .await?;
    let events = bob.events();
    let published = events.iter().position(
        |e| matches!(e, Signal::TrackPublished(t) if t.session_id == "alice" && t.kind == pb::TrackKind::Audio as i32),
    );
    let muted = events.iter().rposition(|e| {
        matches!(e, Signal::MuteChanged(m)
            if m.session_id == "alice" && m.kind == pb::TrackKind::Audio as i32 && m.muted)
    });
    assert!(
        matches!((published, muted), (Some(p), Some(m)) if p < m),
        "{events:?}"
    );
    assert_eq!(
        bob.received("alice", "audio"),
        0,
        "muted audio is not forwarded"
    );
    rtcd.rtcd.shutdown().await;
    Ok(())
}

//! SFU forwarding with real webrtc-rs peers over the real gRPC service: fan-out verified by
//! payload, late joiner + keyframe request, leave by renegotiation, mute, screen share, H.264,
//! voice activity on and off, the per-session track limit, a single-layer publisher beside a
//! simulcast one.

use std::time::Duration;

use anyhow::Context as _;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{
    Participant, PeerOptions, SimulcastSection, all_permissions, eventually, h264, keeps_flowing,
    publisher, simulcast_publisher, subscribe_only,
};
use rtcd_proto::v1 as pb;

/// Packets each flow must deliver before the check (~1 s at 50 pps).
const ENOUGH: u64 = 50;

/// Announces a screen share, then publishes it (the order a client must use).
async fn share_screen(p: &Participant) -> anyhow::Result<()> {
    p.send(pb::client_signal::Signal::ScreenShare(pb::ScreenShare {
        on: true,
        track_id: "screen".into(),
    }))
    .await?;
    p.add_track("screen").await?;
    p.renegotiate().await
}

/// Whether every error event `p` got carries `code`.
fn all_errors_are(p: &Participant, code: tonic::Code) -> bool {
    p.errors().iter().all(|(c, _)| *c == code as i32)
}

/// Waits until `p` receives audio and video from every one of `others`, checks that every one
/// of those flows keeps growing in each of three 1 s windows, that `p` receives nothing else
/// (not its own tracks) and loses at most 5 %.
async fn receives_exactly(p: &Participant, others: &[&str]) -> anyhow::Result<()> {
    let waited = eventually(&format!("{} receives {others:?}", p.session), || {
        others
            .iter()
            .all(|o| p.received(o, "audio") >= ENOUGH && p.received(o, "video") >= ENOUGH)
    })
    .await;
    if let Err(e) = waited {
        anyhow::bail!(
            "{e}: state {:?}, flows {:?}, events {:?}",
            p.connection_state(),
            p.flows(),
            p.events()
                .iter()
                .map(|e| format!("{e:?}").chars().take(120).collect::<String>())
                .collect::<Vec<_>>()
        );
    }
    let expected: Vec<String> = others
        .iter()
        .flat_map(|o| [format!("{o}/audio"), format!("{o}/video")])
        .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    keeps_flowing(p, &expected, Duration::from_secs(3), Duration::from_secs(1)).await?;
    let flows = p.flows();
    let mut keys: Vec<_> = flows.keys().cloned().collect();
    keys.sort();
    let mut want: Vec<String> = others
        .iter()
        .flat_map(|o| [format!("{o}/audio"), format!("{o}/video")])
        .collect();
    want.sort();
    assert_eq!(keys, want, "{} received the wrong set of flows", p.session);
    for (key, flow) in flows {
        let span = flow.last - flow.first + 1;
        assert!(
            flow.lost() * 20 <= span,
            "{}: flow {key} lost {} of {span}",
            p.session,
            flow.lost()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_receive_exactly_the_others_audio_and_video() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let a = publisher(&mut client, &auth, "alice").await?;
    let b = publisher(&mut client, &auth, "bob").await?;
    // Two participants.
    receives_exactly(&a, &["bob"]).await?;
    receives_exactly(&b, &["alice"]).await?;
    // Three participants.
    let c = publisher(&mut client, &auth, "carol").await?;
    receives_exactly(&a, &["bob", "carol"]).await?;
    receives_exactly(&b, &["alice", "carol"]).await?;
    receives_exactly(&c, &["alice", "bob"]).await?;
    // Track events name who and which kind.
    for p in [&a, &b] {
        assert!(p.saw(|e| matches!(e, pb::server_signal::Signal::TrackPublished(t)
            if t.session_id == "carol" && t.user_id == "user-carol" && t.kind == pb::TrackKind::Video as i32)));
    }
    // Voice activity from the audio-level extension (the synthetic audio is loud).
    eventually("voice activity", || {
        a.saw(|e| matches!(e, pb::server_signal::Signal::VoiceActivity(v) if v.session_id == "bob" && v.speaking))
    })
    .await?;
    let metrics = rtcd.rtcd.metrics().encode();
    assert!(
        metrics.contains("rtcd_sfu_forwarded_packets_total{client_id=\"tenant-a\",kind=\"video\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rtcd_sfu_sessions{client_id=\"tenant-a\"} 3"),
        "{metrics}"
    );
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_everything_and_leave_renegotiates_removal() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let a = publisher(&mut client, &auth, "alice").await?;
    let b = publisher(&mut client, &auth, "bob").await?;
    let c = publisher(&mut client, &auth, "carol").await?;
    receives_exactly(&a, &["bob", "carol"]).await?;
    let plis_before = [a.plis(), b.plis(), c.plis()];

    // A subscriber-only late joiner.
    let late =
        Participant::listener(&mut client, &auth, "call", "dave", Default::default()).await?;
    receives_exactly(&late, &["alice", "bob", "carol"]).await?;
    // Its arrival made rtcd ask every publisher for a keyframe.
    eventually("keyframe requests", || {
        a.plis() > plis_before[0] && b.plis() > plis_before[1] && c.plis() > plis_before[2]
    })
    .await?;

    // Carol leaves: the others get the removal event and a renegotiation without her tracks.
    let negotiations = [a.negotiations(), b.negotiations(), late.negotiations()];
    c.send(pb::client_signal::Signal::Leave(pb::Leave {}))
        .await?;
    eventually("carol closed", || {
        c.saw(|e| matches!(e, pb::server_signal::Signal::SessionClosed(r) if r.reason == "leave"))
    })
    .await?;
    for (p, before) in [&a, &b, &late].into_iter().zip(negotiations) {
        p.lost_tracks_of("carol", 2, before).await?;
    }
    eventually("three sessions", || rtcd.rtcd.sfu().session_count() == 3).await?;
    // Everyone else keeps flowing.
    let before = late.received("alice", "video");
    eventually("flows continue", || {
        late.received("alice", "video") > before + 20
    })
    .await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_drops_packets_and_screen_share_comes_and_goes() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let a = publisher(&mut client, &auth, "alice").await?;
    let b = publisher(&mut client, &auth, "bob").await?;
    receives_exactly(&b, &["alice"]).await?;

    // Mute alice's audio: bob's audio from alice stops while video continues.
    a.send(pb::client_signal::Signal::Mute(pb::Mute {
        kind: pb::TrackKind::Audio as i32,
        muted: true,
    }))
    .await?;
    // Packets in flight when the mute lands may still arrive: settle on video progress first.
    let v0 = b.received("alice", "video");
    eventually("video continues", || b.received("alice", "video") > v0 + 10).await?;
    let audio_muted = b.received("alice", "audio");
    let v1 = b.received("alice", "video");
    eventually("video continues more", || {
        b.received("alice", "video") > v1 + 50
    })
    .await?;
    assert_eq!(
        b.received("alice", "audio"),
        audio_muted,
        "muted audio was forwarded"
    );
    assert!(rtcd.rtcd.metrics().encode().contains("reason=\"muted\""));
    a.send(pb::client_signal::Signal::Mute(pb::Mute {
        kind: pb::TrackKind::Audio as i32,
        muted: false,
    }))
    .await?;
    eventually("audio resumes", || {
        b.received("alice", "audio") > audio_muted + 20
    })
    .await?;

    // Screen share on: bob gets a third track from alice, announced as SCREEN.
    share_screen(&a).await?;
    eventually("screen received", || {
        b.received("alice", "screen") >= ENOUGH
    })
    .await?;
    assert!(
        b.saw(|e| matches!(e, pb::server_signal::Signal::TrackPublished(t)
        if t.session_id == "alice" && t.kind == pb::TrackKind::Screen as i32))
    );
    // Screen share off: withdrawn from bob by renegotiation.
    a.send(pb::client_signal::Signal::ScreenShare(pb::ScreenShare {
        on: false,
        track_id: String::new(),
    }))
    .await?;
    eventually("screen removed", || {
        b.saw(|e| {
            matches!(e, pb::server_signal::Signal::TrackRemoved(t)
            if t.session_id == "alice" && t.kind == pb::TrackKind::Screen as i32)
        })
    })
    .await?;
    a.remove_track("screen").await?;
    a.renegotiate().await?;
    let screen = b.received("alice", "screen");
    let v2 = b.received("alice", "video");
    eventually("video after screen off", || {
        b.received("alice", "video") > v2 + 50
    })
    .await?;
    assert!(
        b.received("alice", "screen") <= screen + 5,
        "screen still forwarded"
    );

    // A session without publish rights gets nothing forwarded.
    let lurker =
        Participant::join(&mut client, Some(&auth), "call", "lurker", subscribe_only()).await?;
    lurker.add_track("audio").await?;
    lurker.renegotiate().await?;
    eventually("refused publish", || {
        lurker
            .errors()
            .iter()
            .any(|(c, _)| *c == tonic::Code::InvalidArgument as i32)
    })
    .await?;
    let v3 = b.received("alice", "video");
    eventually("time passes", || b.received("alice", "video") > v3 + 50).await?;
    assert_eq!(b.received("lurker", "audio"), 0);
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_video_is_forwarded_as_h264() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    // Alice's camera is H.264; Bob's is VP8.
    let a = Participant::join(&mut client, Some(&auth), "call", "alice", all_permissions()).await?;
    a.add_track("audio").await?;
    a.add_track_with("video", h264(), Duration::from_millis(20), 0)
        .await?;
    a.renegotiate().await?;
    let b = publisher(&mut client, &auth, "bob").await?;
    let c = Participant::listener(&mut client, &auth, "call", "carol", Default::default()).await?;
    receives_exactly(&b, &["alice"]).await?;
    receives_exactly(&a, &["bob"]).await?;
    receives_exactly(&c, &["alice", "bob"]).await?;
    for p in [&b, &c] {
        assert_eq!(p.flows()["alice/video"].mime, "video/H264", "{}", p.session);
        assert_eq!(p.flows()["alice/audio"].mime, "audio/opus", "{}", p.session);
    }
    assert_eq!(a.flows()["bob/video"].mime, "video/VP8");
    assert!(
        b.saw(|e| matches!(e, pb::server_signal::Signal::TrackPublished(t)
        if t.session_id == "alice" && t.kind == pb::TrackKind::Video as i32))
    );
    rtcd.rtcd.shutdown().await;
    Ok(())
}

/// Voice activity events about `who` seen by `p`, in order (true = speaking).
fn voice(p: &Participant, who: &str) -> Vec<bool> {
    p.events()
        .into_iter()
        .filter_map(|e| match e {
            pb::server_signal::Signal::VoiceActivity(v) if v.session_id == who => Some(v.speaking),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_activity_turns_on_and_off_with_the_audio_level() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let a = publisher(&mut client, &auth, "alice").await?;
    let b = publisher(&mut client, &auth, "bob").await?;
    // Both talk (the synthetic audio is loud by default): each hears the other start.
    eventually("alice speaking", || voice(&b, "alice") == [true]).await?;
    eventually("bob speaking", || voice(&a, "bob") == [true]).await?;
    // Alice goes silent (RFC 6464 level 127): off after rtcd's hangover, and only for her.
    a.set_audio_level(127);
    eventually("alice silent", || voice(&b, "alice") == [true, false]).await?;
    // Quiet noise (-90 dBov) is not speech either; loud again is.
    a.set_audio_level(90);
    let b_audio = b.received("alice", "audio");
    eventually("time passes", || {
        b.received("alice", "audio") > b_audio + 50
    })
    .await?;
    assert_eq!(voice(&b, "alice"), [true, false]);
    a.set_audio_level(5);
    eventually("alice speaking again", || {
        voice(&b, "alice") == [true, false, true]
    })
    .await?;
    assert_eq!(voice(&a, "bob"), [true], "bob kept talking");
    // Nobody hears themselves.
    assert!(voice(&a, "alice").is_empty() && voice(&b, "bob").is_empty());
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_beyond_the_session_limit_is_refused_and_not_forwarded() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[("RTCD_RTC_MAX_TRACKS_PER_SESSION", "2")]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let a = publisher(&mut client, &auth, "alice").await?;
    let b = publisher(&mut client, &auth, "bob").await?;
    receives_exactly(&b, &["alice"]).await?;
    // A third track (a permitted screen share) is one too many.
    share_screen(&a).await?;
    eventually("limit error", || {
        a.errors().iter().any(|(code, m)| {
            *code == tonic::Code::ResourceExhausted as i32 && m.contains("tracks per session")
        })
    })
    .await?;
    eventually("refused packets counted", || {
        rtcd.rtcd.metrics().encode().contains(
            "rtcd_sfu_dropped_packets_total{client_id=\"tenant-a\",reason=\"over_limit\"}",
        )
    })
    .await?;
    // The session otherwise keeps working both ways, and the extra track goes nowhere.
    let (v_ab, v_ba) = (b.received("alice", "video"), a.received("bob", "video"));
    eventually("media continues", || {
        b.received("alice", "video") > v_ab + 50 && a.received("bob", "video") > v_ba + 50
    })
    .await?;
    assert_eq!(b.received("alice", "screen"), 0);
    assert!(
        !b.saw(|e| matches!(e, pb::server_signal::Signal::TrackPublished(t)
        if t.session_id == "alice" && t.kind == pb::TrackKind::Screen as i32))
    );
    assert!(
        all_errors_are(&a, tonic::Code::ResourceExhausted),
        "{:?}",
        a.errors()
    );
    assert!(
        rtcd.rtcd
            .metrics()
            .encode()
            .contains("rtcd_sfu_tracks_in{client_id=\"tenant-a\",kind=\"video\"} 2"),
        "one camera each, no screen"
    );
    rtcd.rtcd.shutdown().await;
    Ok(())
}

/// Issue 28: a publisher that sends a single layer (as aiortc and older clients do) in a room
/// where another publishes a three-layer simulcast camera (send-only, as the SDK does), rtcd's
/// adaptive video on. Everyone receives the single-layer camera and microphone, and one layer
/// of the simulcast camera, and every one of those flows keeps growing in every second for
/// five seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_layer_publisher_beside_a_simulcast_one_is_received_by_everyone()
-> anyhow::Result<()> {
    single_layer_beside_simulcast(SimulcastSection::SendOnly).await
}

/// The same with the simulcast camera published on a sendrecv section, as `add_track` makes
/// it: rtcd sends nothing of Bob's on that section (webrtc-rs would drop it there) but asks
/// Alice for one receiving section more, counted as she counts them (protocol.md 4a).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulcast_publisher_on_a_sendrecv_section_receives_the_others_on_sections_of_their_own()
-> anyhow::Result<()> {
    single_layer_beside_simulcast(SimulcastSection::SendRecv).await
}

async fn single_layer_beside_simulcast(section: SimulcastSection) -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[("RTCD_RTC_ADAPTIVE_VIDEO", "true")]).await?;
    let auth = rtcd.register("tenant-mixed").await?;
    let mut client = rtcd.client().await?;
    let (alice, layers) = simulcast_publisher(&mut client, &auth, "call", "alice", section).await?;
    let bob = publisher(&mut client, &auth, "bob").await?;
    let carol =
        Participant::listener(&mut client, &auth, "call", "carol", PeerOptions::default()).await?;
    // Alice's camera at whichever layer rtcd forwards: its frames carry the layer's SSRC.
    let simulcast = |p: &Participant| -> u64 {
        let flows = p.flows();
        layers
            .iter()
            .filter_map(|l| flows.get(&format!("{l:08x}/e2ee")))
            .map(|f| f.packets)
            .sum()
    };
    let counts = || {
        [
            ("alice: bob's camera", alice.received("bob", "video")),
            ("alice: bob's microphone", alice.received("bob", "audio")),
            ("carol: bob's camera", carol.received("bob", "video")),
            ("carol: bob's microphone", carol.received("bob", "audio")),
            ("bob: alice's simulcast camera", simulcast(&bob)),
            ("carol: alice's simulcast camera", simulcast(&carol)),
        ]
    };
    eventually("everyone receives both cameras", || {
        counts().iter().all(|(_, n)| *n >= ENOUGH)
    })
    .await
    .with_context(|| format!("{:?}", counts()))?;
    let mut last = counts();
    for second in 1..=5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = counts();
        for ((what, before), (_, after)) in last.iter().zip(&now) {
            anyhow::ensure!(
                after > before,
                "{what} stalled at {after} packets in second {second}"
            );
        }
        last = now;
    }
    rtcd.rtcd.shutdown().await;
    Ok(())
}

//! Proxy loss without media loss (issue 14, item 2), with in-process proxies and rtcd and
//! webrtc-rs peers: a session whose signaling connection is lost (its proxy replica shuts down)
//! is resumed through another replica with `join.resume`, on the same peer connection, and its
//! media never stops; what cannot be resumed (a forged token, another user's, an expired grace
//! period, resumption off) opens a new session instead and disturbs nobody.

use std::net::SocketAddr;
use std::time::Duration;

use rtcd_e2e::daemon::{TestRtcd, key_for, metric_sum, scrape};
use rtcd_e2e::media::{Participant, eventually, keeps_flowing};
use rtcd_e2e::proxy::{Client, Event, JoinOutcome, join};
use rtcd_proto::v1 as pb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::rooms::{ENOUGH, publisher, replica_with, user};

async fn rtcd(extra: &[(&str, &str)]) -> TestRtcd {
    let rtcd = TestRtcd::start(extra).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    rtcd
}

async fn metric(rtcd: &TestRtcd, series: &str) -> f64 {
    let text = scrape(&format!("{}/metrics", rtcd.internal)).await.unwrap();
    metric_sum(&text, series)
}

/// Joins through `addr`, expecting `joined` at once.
async fn enters(addr: SocketAddr, sub: &str, room: &str) -> (Client, Value) {
    let (client, outcome) = join(addr, Some(&user(sub, room, "member")), room)
        .await
        .unwrap();
    match outcome {
        JoinOutcome::Joined(m) => (client, m),
        other => panic!("{sub} should enter {room}: {other:?}"),
    }
}

/// Joins through `addr` with `resume`, expecting `joined`.
async fn rejoins(addr: SocketAddr, token: &str, room: &str, resume: &str) -> (Client, Value) {
    let mut client = Client::connect(addr, "", &[]).await.unwrap();
    client
        .send(&json!({"type": "join", "room": room, "token": token, "resume": resume}))
        .await
        .unwrap();
    let joined = client.expect("joined").await.unwrap();
    (client, joined)
}

#[tokio::test]
async fn a_session_resumes_through_another_replica_when_its_proxy_shuts_down_and_media_never_stops()
{
    let rtcd = rtcd(&[("RTCD_RTC_MAX_FORWARDED_PACKETS_PER_SECOND", "100000")]).await;
    let cancel = CancellationToken::new();
    let first = replica_with(&rtcd, "tenant-a", &cancel, |_| {}).await;
    let second = replica_with(&rtcd, "tenant-a", &cancel, |_| {}).await;
    let urls = [first.addr(), second.addr()].map(|a| format!("ws://{a}/ws"));

    // Alice's client resumes through the other replica when its connection is lost; Bob stays
    // on the second replica throughout.
    let (alice, resumes) = Participant::join_via_proxies(
        urls.to_vec(),
        &user("alice", "standup", "member"),
        "standup",
        "alice",
    )
    .await
    .unwrap();
    alice.add_track("audio").await.unwrap();
    alice.add_track("video").await.unwrap();
    alice.renegotiate().await.unwrap();
    let bob = publisher(
        second.addr(),
        &user("bob", "standup", "member"),
        "standup",
        "bob",
    )
    .await;
    for (p, from) in [(&alice, "bob"), (&bob, "alice")] {
        eventually(&format!("{} receives {from}", p.session), || {
            p.received(from, "audio") > ENOUGH && p.received(from, "video") > ENOUGH
        })
        .await
        .unwrap();
    }

    // The media load is part of the host's load for placement: about 200 packets a second
    // forwarded here, against a budget of 100000.
    let system: Value = reqwest::get(rtcd.url("/system"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let forwarding = system["forwarding_used"].as_f64().unwrap();
    assert!(forwarding > 0.0005 && forwarding < 0.05, "{system}");
    assert!(system["load"].as_f64().unwrap() >= forwarding, "{system}");

    // The first replica shuts down (a rolling restart) 2 s into 8 s of one-second windows in
    // which every flow, both ways, must grow.
    let windows = async {
        let (a, b) = tokio::join!(
            keeps_flowing(
                &alice,
                &["bob/audio", "bob/video"],
                Duration::from_secs(8),
                Duration::from_secs(1)
            ),
            keeps_flowing(
                &bob,
                &["alice/audio", "alice/video"],
                Duration::from_secs(8),
                Duration::from_secs(1)
            ),
        );
        a.and(b)
    };
    let restart = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        first.shutdown().await;
    };
    let (flowed, ()) = tokio::join!(windows, restart);
    flowed.unwrap();

    // One resume, on the same peer connection (this peer cannot make another), and rtcd kept
    // the session: nobody left the call.
    assert_eq!(*resumes.lock().unwrap(), vec![true]);
    assert_eq!(
        alice.connection_state(),
        rtcd_e2e::media::RTCPeerConnectionState::Connected
    );
    assert!(
        !bob.events()
            .iter()
            .any(|e| matches!(e, pb::server_signal::Signal::ParticipantLeft(_))),
        "bob saw alice leave: {:?}",
        bob.events()
    );
    assert_eq!(
        metric(&rtcd, "rtcd_session_resumes_total{outcome=\"resumed\"}").await,
        1.0
    );
    assert_eq!(metric(&rtcd, "rtcd_sessions_parked").await, 0.0);
    assert_eq!(metric(&rtcd, "rtcd_sfu_sessions{").await, 2.0);

    // Resumed sessions work like any: Alice leaves, Bob sees it, rtcd closes her session.
    drop(alice);
    eventually("bob sees alice leave", || {
        bob.events()
            .iter()
            .any(|e| matches!(e, pb::server_signal::Signal::ParticipantLeft(_)))
    })
    .await
    .unwrap();
    second.shutdown().await;
    cancel.cancel();
    rtcd.stop().await;
}

#[tokio::test]
async fn what_cannot_be_resumed_opens_a_new_session_and_disturbs_nobody() {
    let rtcd = rtcd(&[("RTCD_RTC_RESUME_GRACE_SECONDS", "5")]).await;
    let cancel = CancellationToken::new();
    let replica = replica_with(&rtcd, "tenant-a", &cancel, |_| {}).await;
    let addr = replica.addr();
    let room = "retro";

    let (mut alice, joined) = enters(addr, "alice", room).await;
    let token = joined["resume_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("r1.") && token.len() < 200, "{token}");
    assert!(joined.get("resumed").is_none(), "{joined}");

    // Forged, malformed and other users' resume tokens: a new session, never Alice's.
    let forged = format!("{}.{}", token.rsplit_once('.').unwrap().0, "A".repeat(43));
    for (sub, resume) in [
        ("alice", forged.as_str()),
        ("alice", "r1.!!.x"),
        ("alice", &"r1.".repeat(300)),
        ("mallory", token.as_str()),
    ] {
        let (mut c, m) = rejoins(addr, &user(sub, room, "member"), room, resume).await;
        assert!(
            m.get("resumed").is_none(),
            "{sub} resumed with {resume}: {m}"
        );
        assert_ne!(m["resume_token"], json!(token));
        c.send(&json!({"type": "leave"})).await.unwrap();
        let _ = c.closed().await;
    }
    // Alice's session is untouched and was never parked.
    alice.send(&json!({"type": "ping", "id": 7})).await.unwrap();
    loop {
        match alice.next().await.unwrap() {
            Event::Message(m) if m["type"] == "pong" => break assert_eq!(m["id"], 7),
            // The fresh sessions above came and went: room events.
            Event::Message(m) => assert!(m["type"].as_str().unwrap().starts_with("participant_")),
            other => panic!("alice's session ended: {other:?}"),
        }
    }
    assert_eq!(
        metric(&rtcd, "rtcd_session_resumes_total{outcome=\"refused\"}").await,
        2.0,
        "the two well-formed tokens reached rtcd and were refused there"
    );

    // A client that closes its connection properly has left: nothing is parked.
    alice.send(&json!({"type": "leave"})).await.unwrap();
    let _ = alice.closed().await;
    eventually("alice's session is gone", || {
        rtcd.rtcd.sfu().session_count() == 0
    })
    .await
    .unwrap();
    assert_eq!(metric(&rtcd, "rtcd_sessions_parked").await, 0.0);

    // The proxy shuts down: the session is parked; after the 5 s grace a resume finds nothing,
    // and the client gets a new session instead.
    let (_carol, joined) = enters(addr, "carol", room).await;
    let carol_token = joined["resume_token"].as_str().unwrap().to_owned();
    replica.shutdown().await;
    assert_eq!(
        rtcd.rtcd.sfu().session_count(),
        1,
        "carol's session is parked"
    );
    assert_eq!(metric(&rtcd, "rtcd_sessions_parked").await, 1.0);
    let replica = replica_with(&rtcd, "tenant-a", &cancel, |_| {}).await;
    eventually("the grace period ends", || {
        rtcd.rtcd.sfu().session_count() == 0
    })
    .await
    .unwrap();
    let (_c, m) = rejoins(
        replica.addr(),
        &user("carol", room, "member"),
        room,
        &carol_token,
    )
    .await;
    assert!(m.get("resumed").is_none(), "{m}");
    assert_eq!(m["media"], true);
    assert_eq!(
        metric(&rtcd, "rtcd_session_resumes_total{outcome=\"expired\"}").await,
        1.0
    );

    // Within the grace period, the same client resumes: `joined.resumed` and the call as it is.
    let (_dave, _) = enters(replica.addr(), "dave", room).await;
    let (mut erin, joined) = enters(replica.addr(), "erin", room).await;
    let erin_token = joined["resume_token"].as_str().unwrap().to_owned();
    replica.shutdown().await;
    let replica = replica_with(&rtcd, "tenant-a", &cancel, |_| {}).await;
    let (_e, m) = rejoins(
        replica.addr(),
        &user("erin", room, "member"),
        room,
        &erin_token,
    )
    .await;
    assert_eq!(m["resumed"], true, "{m}");
    assert_eq!(m["resume_token"], json!(erin_token));
    let names: Vec<&str> = m["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["identity"].as_str())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["carol", "dave"], "{m}");
    loop {
        match erin.next().await.unwrap() {
            Event::Closed(1001, _) | Event::Dropped(_) => break,
            Event::Message(_) => {}
            other => panic!("the old connection should have been closed: {other:?}"),
        }
    }
    replica.shutdown().await;
    cancel.cancel();
    rtcd.stop().await;
}

#[tokio::test]
async fn without_a_grace_period_nothing_is_offered_or_parked() {
    let rtcd = rtcd(&[("RTCD_RTC_RESUME_GRACE_SECONDS", "0")]).await;
    let cancel = CancellationToken::new();
    let replica = replica_with(&rtcd, "tenant-a", &cancel, |_| {}).await;
    let (_alice, joined) = enters(replica.addr(), "alice", "standup").await;
    assert!(joined.get("resume_token").is_none(), "{joined}");
    replica.shutdown().await;
    eventually("the session ends with its stream", || {
        rtcd.rtcd.sfu().session_count() == 0
    })
    .await
    .unwrap();
    cancel.cancel();
    rtcd.stop().await;
}

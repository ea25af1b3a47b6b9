//! Room entry policies (issue 13) end to end: wait-for-host, the lobby and guest access, with
//! the waiting list held at rtcd, moderators on two proxy replicas, the room service API, and
//! webrtc-rs peers whose media must flow once they are let in. Also the races: two moderators
//! admitting one knocker at once, a guest a moment before the moderator, a knocker who gives
//! up, the only moderator leaving while someone waits.

use std::net::SocketAddr;
use std::time::Duration;

use rtcd_e2e::daemon::{TestRtcd, key_for};
use rtcd_e2e::media::{Participant, eventually, keeps_flowing};
use rtcd_e2e::proxy::{Client, Event, JoinOutcome, join, join_code};
use rtcd_proxy::Proxy;
use rtcd_proxy::config::Config;
use rtcd_proxy::rooms::RoomPolicy;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::rooms::{ENOUGH, admin, api, moderate, publisher, replica_with, server_token, user};

async fn rtcd() -> TestRtcd {
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    rtcd
}

async fn proxy(
    rtcd: &TestRtcd,
    cancel: &CancellationToken,
    configure: impl FnOnce(&mut Config),
) -> Proxy {
    replica_with(rtcd, "tenant-a", cancel, configure).await
}

/// Joins and expects to be held, returning the client and the `waiting` message.
async fn waits(addr: SocketAddr, sub: &str, room: &str, role: &str) -> (Client, Value) {
    let (client, outcome) = join(addr, Some(&user(sub, room, role)), room)
        .await
        .unwrap();
    match outcome {
        JoinOutcome::Waiting(w) => (client, w),
        other => panic!("{sub} should wait to enter {room}: {other:?}"),
    }
}

/// Joins and expects to enter at once.
async fn enters(addr: SocketAddr, sub: &str, room: &str, role: &str) -> Client {
    let (client, outcome) = join(addr, Some(&user(sub, room, role)), room)
        .await
        .unwrap();
    assert!(
        matches!(outcome, JoinOutcome::Joined(_)),
        "{sub} should enter {room}: {outcome:?}"
    );
    client
}

/// The next message of `kind` that `matches`, skipping others (relayed room events).
async fn next_of(client: &mut Client, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
    loop {
        match client.next().await.unwrap() {
            Event::Message(m) if m["type"] == kind && matches(&m) => return m,
            Event::Message(_) => continue,
            other => panic!("session ended while waiting for `{kind}`: {other:?}"),
        }
    }
}

/// A webrtc-rs publisher whose join may be held: joining runs in a task.
fn publisher_later(
    addr: SocketAddr,
    sub: &str,
    room: &str,
    role: &str,
) -> tokio::task::JoinHandle<Participant> {
    let (token, room, tag) = (user(sub, room, role), room.to_owned(), sub.to_owned());
    tokio::spawn(async move { publisher(addr, &token, &room, &tag).await })
}

/// Both directions between `a` and `b` deliver, and keep delivering in every 2 s window.
async fn media_flows(a: &Participant, b: &Participant) {
    let (an, bn) = (a.session.clone(), b.session.clone());
    eventually(&format!("{an} and {bn} receive each other"), || {
        a.received(&bn, "audio") >= ENOUGH && b.received(&an, "video") >= ENOUGH
    })
    .await
    .unwrap();
    let (from_b, from_a) = (
        [format!("{bn}/audio"), format!("{bn}/video")],
        [format!("{an}/audio"), format!("{an}/video")],
    );
    let (from_b, from_a): (Vec<&str>, Vec<&str>) = (
        from_b.iter().map(String::as_str).collect(),
        from_a.iter().map(String::as_str).collect(),
    );
    let window = Duration::from_secs(2);
    let total = Duration::from_secs(6);
    let (x, y) = tokio::join!(
        keeps_flowing(a, &from_b, total, window),
        keeps_flowing(b, &from_a, total, window)
    );
    x.unwrap();
    y.unwrap();
}

#[tokio::test]
async fn members_wait_for_a_moderator_enter_when_one_arrives_and_time_out_without_one() {
    let rtcd = rtcd().await;
    let cancel = CancellationToken::new();
    let proxy = proxy(&rtcd, &cancel, |c| {
        c.rooms.wait_for_host = true;
        let brief = RoomPolicy {
            wait_timeout_seconds: Some(2),
            ..RoomPolicy::default()
        };
        let members_only = RoomPolicy {
            guests_allowed: Some(false),
            ..RoomPolicy::default()
        };
        c.rooms.overrides.insert("brief".into(), brief);
        c.rooms
            .overrides
            .insert("members-only".into(), members_only);
    })
    .await;
    let addr = proxy.addr();

    // A member waits, and is told why and for how long; meanwhile only ping, refresh and
    // leave are accepted.
    let (mut mia, waiting) = waits(addr, "mia", "standup", "member").await;
    assert_eq!(
        (
            &waiting["reason"],
            &waiting["timeout_seconds"],
            &waiting["room"]
        ),
        (&json!("host"), &json!(600), &json!("standup")),
        "{waiting}"
    );
    mia.send(&json!({"type": "offer", "sdp": "v=0\r\n"}))
        .await
        .unwrap();
    let refused = mia.expect("error").await.unwrap();
    assert_eq!(refused["code"], "not_admitted", "{refused}");
    mia.send(&json!({"type": "ping", "id": 7})).await.unwrap();
    assert_eq!(mia.expect("pong").await.unwrap()["id"], 7);

    // Waiting holds no media resources: the media server has no session (and so no room) yet.
    let (status, body) = api(addr, "GET", "/api/v1/rooms/standup", Some(&admin()), None).await;
    assert_eq!(status, 404, "{body}");
    let (_, body) = api(
        addr,
        "GET",
        "/api/v1/rooms/standup/lobby",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(body["waiting"][0]["reason"], "host", "{body}");

    // A webrtc-rs member is held inside its join too.
    let bob = publisher_later(addr, "bob", "standup", "member");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!bob.is_finished(), "bob entered without a moderator");

    // The moderator arrives: both enter, and media flows both ways and keeps flowing.
    let alice = publisher(
        addr,
        &user("alice", "standup", "moderator"),
        "standup",
        "alice",
    )
    .await;
    let joined = mia.expect("joined").await.unwrap();
    assert_eq!(
        (&joined["role"], &joined["media"]),
        (&json!("member"), &json!(true))
    );
    let bob = tokio::time::timeout(Duration::from_secs(20), bob)
        .await
        .expect("bob was let in")
        .unwrap();
    media_flows(&alice, &bob).await;

    // The only moderator leaves: those inside stay, newcomers wait again.
    alice.close().await;
    drop(alice);
    let mut waited = false;
    for attempt in 0..50 {
        let (client, outcome) = join(addr, Some(&user("ned", "standup", "member")), "standup")
            .await
            .unwrap();
        match outcome {
            JoinOutcome::Waiting(w) => {
                assert_eq!(w["reason"], "host");
                waited = true;
                drop(client);
                break;
            }
            // The proxy has not seen alice leave yet.
            JoinOutcome::Joined(_) => drop(client),
            other => panic!("attempt {attempt}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(waited, "a newcomer entered with no moderator present");
    mia.send(&json!({"type": "ping"})).await.unwrap();
    next_of(&mut mia, "pong", |_| true).await;

    // No moderator within the room's timeout: closed with its own code and reason.
    let (mut kai, waiting) = waits(addr, "kai", "brief", "member").await;
    assert_eq!(waiting["timeout_seconds"], 2);
    let (code, reason, seen) = kai.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4016, "host_timeout"), "{seen:?}");
    assert!(
        seen.iter().any(|m| m["type"] == "error"),
        "the close is explained first: {seen:?}"
    );

    // Where guests are not allowed they are refused at once (before any waiting), with
    // their own code; moderators are never held.
    let (_, outcome) = join(
        addr,
        Some(&user("gus", "members-only", "guest")),
        "members-only",
    )
    .await
    .unwrap();
    match outcome {
        JoinOutcome::Refused(code, reason, detail) => {
            assert_eq!((code, reason.as_str()), (4014, "guests_not_allowed"));
            assert!(detail.is_some_and(|d| d.contains("guests")));
        }
        other => panic!("a guest entered a members-only room: {other:?}"),
    }
    let _moderator = enters(addr, "mo", "members-only", "moderator").await;
    cancel.cancel();
}

#[tokio::test]
async fn moderators_on_two_replicas_admit_and_deny_knockers_and_see_who_gives_up() {
    let rtcd = rtcd().await;
    let cancel = CancellationToken::new();
    let lobby = |c: &mut Config| c.rooms.lobby = true;
    let one = proxy(&rtcd, &cancel, lobby).await;
    let two = proxy(&rtcd, &cancel, lobby).await;

    // Moderators are never held in their own lobby.
    let mut m1 = enters(one.addr(), "mod1", "standup", "moderator").await;
    let mut m2 = enters(two.addr(), "mod2", "standup", "moderator").await;

    // A knocker: both moderators see the request, each on their own replica; the API lists it.
    let (mut kate, waiting) = waits(two.addr(), "kate", "standup", "member").await;
    assert_eq!(waiting["reason"], "lobby");
    let is = |who: &'static str| move |m: &Value| m["identity"] == who;
    let r1 = next_of(&mut m1, "lobby_request", is("kate")).await;
    assert_eq!(r1["role"], "member", "{r1}");
    next_of(&mut m2, "lobby_request", is("kate")).await;
    let (status, body) = api(
        one.addr(),
        "GET",
        "/api/v1/rooms/standup/lobby",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let waiting = body["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{body}");
    assert_eq!(
        (&waiting[0]["identity"], &waiting[0]["reason"]),
        (&json!("kate"), &json!("lobby"))
    );

    // Both moderators admit her at the same moment: one admits, the other finds it done, and
    // neither gets an error.
    let admit = json!({"action": "admit", "identity": "kate"});
    let (a1, a2) = tokio::join!(
        moderate(&mut m1, admit.clone()),
        moderate(&mut m2, admit.clone())
    );
    assert_eq!(
        (&a1["type"], &a2["type"]),
        (&json!("moderated"), &json!("moderated"))
    );
    assert_eq!(
        a1["sessions"].as_u64().unwrap() + a2["sessions"].as_u64().unwrap(),
        1,
        "{a1} {a2}"
    );
    let joined = kate.expect("joined").await.unwrap();
    assert_eq!(joined["identity"], "kate");
    for m in [&mut m1, &mut m2] {
        let left = next_of(m, "lobby_left", is("kate")).await;
        assert_eq!(left["outcome"], "admitted");
    }

    // Denied through the other replica's API: the knocker gets its own close code.
    let (mut dan, _) = waits(one.addr(), "dan", "standup", "member").await;
    let (status, body) = api(
        two.addr(),
        "POST",
        "/api/v1/rooms/standup/lobby/deny",
        Some(&admin()),
        Some(json!({"identity": "dan"})),
    )
    .await;
    assert_eq!((status, &body["sessions"]), (200, &json!(1)), "{body}");
    let (code, reason, _) = dan.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4015, "lobby_denied"));
    let (status, body) = api(
        two.addr(),
        "POST",
        "/api/v1/rooms/standup/lobby/deny",
        Some(&admin()),
        Some(json!({"identity": "dan"})),
    )
    .await;
    assert_eq!(
        (status, &body["sessions"]),
        (200, &json!(0)),
        "idempotent: {body}"
    );
    let (status, _) = api(
        two.addr(),
        "POST",
        "/api/v1/rooms/standup/lobby/admit",
        Some(&server_token(&["rooms:read"], None)),
        Some(json!({"identity": "dan"})),
    )
    .await;
    assert_eq!(status, 403, "admitting needs rooms:admin");

    // A knocker who gives up: the moderators are told, and the lobby is empty again.
    let (kim, _) = waits(two.addr(), "kim", "standup", "member").await;
    next_of(&mut m1, "lobby_request", is("kim")).await;
    drop(kim);
    let left = next_of(&mut m1, "lobby_left", is("kim")).await;
    assert_eq!(left["outcome"], "left");
    let (_, body) = api(
        one.addr(),
        "GET",
        "/api/v1/rooms/standup/lobby",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(body["waiting"], json!([]), "{body}");

    // Banned while knocking: letting her in later still refuses her (the ban is checked again
    // on admission), with the ban's own close code.
    let (mut dora, _) = waits(two.addr(), "dora", "standup", "member").await;
    let (status, body) = api(
        one.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/remove",
        Some(&admin()),
        Some(json!({"identity": "dora", "ban_seconds": 600})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = moderate(&mut m1, json!({"action": "admit", "identity": "dora"})).await;
    assert_eq!(answer["sessions"], 1, "{answer}");
    let (code, reason, _) = dora.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4012, "banned"));

    // Someone admitted re-enters without knocking while the room lives (another device, or
    // after a proxy restart), whichever replica they come through.
    let mut kate2 = enters(one.addr(), "kate", "standup", "member").await;
    // A member may not admit anyone.
    let answer = moderate(&mut kate2, json!({"action": "admit", "identity": "x"})).await;
    assert_eq!(answer["code"], "forbidden", "{answer}");

    // A webrtc-rs knocker let in by a moderator gets media both ways, and keeps it.
    let ken = publisher_later(two.addr(), "ken", "standup", "member");
    next_of(&mut m1, "lobby_request", is("ken")).await;
    let answer = moderate(&mut m1, json!({"action": "admit", "identity": "ken"})).await;
    assert_eq!(answer["sessions"], 1, "{answer}");
    let ken = tokio::time::timeout(Duration::from_secs(20), ken)
        .await
        .expect("ken was let in")
        .unwrap();
    let alice = publisher(
        one.addr(),
        &user("alice", "standup", "moderator"),
        "standup",
        "alice",
    )
    .await;
    media_flows(&alice, &ken).await;
    cancel.cancel();
}

#[tokio::test]
async fn policies_change_live_through_the_api_or_a_moderator_and_races_resolve() {
    let rtcd = rtcd().await;
    let cancel = CancellationToken::new();
    let p = proxy(&rtcd, &cancel, |_| {}).await;
    let addr = p.addr();
    let set = |room: &str, body: Value| {
        let path = format!("/api/v1/rooms/{room}/policy");
        async move { api(addr, "POST", &path, Some(&admin()), Some(body)).await }
    };

    // Nothing stored: the configured defaults apply.
    let (status, body) = api(
        addr,
        "GET",
        "/api/v1/rooms/standup/policy",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], json!({}));
    assert_eq!(
        body["effective"],
        json!({"wait_for_host": false, "lobby": false, "guests_allowed": true, "wait_timeout_seconds": 600, "opened_by": "moderator", "record": false, "e2ee": false})
    );
    // Bad requests are clear errors.
    for bad in [
        json!({"wait_timeout_seconds": 0}),
        json!({"lobby": "yes"}),
        json!({"nope": true}),
    ] {
        let (status, body) = set("standup", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/policy",
        Some(&server_token(&["rooms:read"], None)),
        Some(json!({"lobby": true})),
    )
    .await;
    assert_eq!(status, 403);

    // The API turns the lobby on; a member now knocks, a moderator does not.
    let (status, body) = set("standup", json!({"lobby": true})).await;
    assert_eq!(
        (status, &body["stored"]),
        (200, &json!({"lobby": true})),
        "{body}"
    );
    assert_eq!(body["effective"]["lobby"], true);
    let mut m1 = enters(addr, "mod1", "standup", "moderator").await;
    let (mut eve, _) = waits(addr, "eve", "standup", "member").await;
    // The moderator turns it off from inside the call: eve enters at once.
    let answer = moderate(
        &mut m1,
        json!({"action": "set_policy", "policy": {"lobby": false}}),
    )
    .await;
    assert_eq!(answer["type"], "moderated", "{answer}");
    eve.expect("joined").await.unwrap();
    let answer = moderate(
        &mut eve,
        json!({"action": "set_policy", "policy": {"lobby": true}}),
    )
    .await;
    assert_eq!(
        answer["code"], "forbidden",
        "a member may not set the policy: {answer}"
    );

    // A member promoted to moderator gets lobby requests at once.
    let (status, _) = set("standup", json!({"lobby": true})).await;
    assert_eq!(status, 200);
    let answer = moderate(
        &mut m1,
        json!({"action": "grant_moderator", "identity": "eve"}),
    )
    .await;
    assert_eq!(answer["sessions"], 1, "{answer}");
    let (mut gia, _) = waits(addr, "gia", "standup", "guest").await;
    next_of(&mut eve, "lobby_request", |m| m["identity"] == "gia").await;

    // Guests turned off while one waits: she is closed with the guests code, and the next
    // guest is refused at the door.
    let (status, body) = set("standup", json!({"guests_allowed": false})).await;
    assert_eq!(
        (status, &body["stored"]),
        (200, &json!({"lobby": true, "guests_allowed": false})),
        "{body}"
    );
    let (code, reason, _) = gia.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4014, "guests_not_allowed"));
    assert_eq!(
        join_code(addr, &user("gil", "standup", "guest"), "standup")
            .await
            .unwrap(),
        4014
    );

    // The only moderators leave while someone knocks: the knocker keeps waiting, and a
    // moderator who arrives later is shown the request and admits.
    drop(m1);
    drop(eve);
    let (mut lou, _) = waits(addr, "lou", "standup", "member").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut m3 = enters(addr, "mod3", "standup", "moderator").await;
    next_of(&mut m3, "lobby_request", |m| m["identity"] == "lou").await;
    moderate(&mut m3, json!({"action": "admit", "identity": "lou"})).await;
    lou.expect("joined").await.unwrap();

    // Reset: back to the configuration (no lobby, guests allowed).
    let (status, body) = set("standup", json!({"reset": true})).await;
    assert_eq!((status, &body["stored"]), (200, &json!({})), "{body}");
    let _gil = enters(addr, "gil", "standup", "guest").await;

    // Race: a guest joins a moment before the moderator of a wait-for-host room. Whichever
    // the host sees first, the guest ends up inside, never stuck.
    for i in 0..5 {
        let room = format!("race-{i}");
        let (status, _) = set(
            &room,
            json!({"wait_for_host": true, "wait_timeout_seconds": 30}),
        )
        .await;
        assert_eq!(status, 200);
        let guest_token = user("guest", &room, "guest");
        let guest_room = room.clone();
        let guest = tokio::spawn(async move {
            let (mut client, outcome) = join(addr, Some(&guest_token), &guest_room).await.unwrap();
            match outcome {
                JoinOutcome::Joined(_) => {}
                JoinOutcome::Waiting(_) => {
                    client.expect("joined").await.unwrap();
                }
                other => panic!("{guest_room}: {other:?}"),
            }
            client
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let _host = enters(addr, "host", &room, "moderator").await;
        let _guest = tokio::time::timeout(Duration::from_secs(20), guest)
            .await
            .unwrap_or_else(|_| panic!("{room}: the guest is stuck"))
            .unwrap();
    }
    cancel.cancel();
}

#[tokio::test]
async fn a_guest_promoted_mid_call_publishes_at_once_and_a_demoted_moderator_loses_moderation() {
    let rtcd = rtcd().await;
    let cancel = CancellationToken::new();
    let p = proxy(&rtcd, &cancel, |_| {}).await;
    let addr = p.addr();
    let alice = publisher(
        addr,
        &user("alice", "standup", "moderator"),
        "standup",
        "alice",
    )
    .await;
    // A guest, who may only receive.
    let gus = Participant::join_via_proxy(
        &format!("ws://{addr}/ws"),
        &user("gus", "standup", "guest"),
        "standup",
        "gus",
    )
    .await
    .unwrap();
    let mut m2 = enters(addr, "mod2", "standup", "moderator").await;

    // The platform promotes the guest: publishing works at once, and keeps working.
    let (status, body) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/participants/update",
        Some(&admin()),
        Some(json!({"identity": "gus", "role": "member"})),
    )
    .await;
    assert_eq!((status, &body["sessions"]), (200, &json!(1)), "{body}");
    eventually("gus is told it may publish", || {
        gus.events().into_iter().any(|e| {
            matches!(e, rtcd_proto::v1::server_signal::Signal::PermissionsChanged(p)
                if p.permissions.is_some_and(|p| p.publish_audio))
        })
    })
    .await
    .unwrap();
    gus.add_track("audio").await.unwrap();
    gus.renegotiate().await.unwrap();
    eventually("alice hears gus", || {
        alice.received("gus", "audio") >= ENOUGH
    })
    .await
    .unwrap();
    keeps_flowing(
        &alice,
        &["gus/audio"],
        Duration::from_secs(6),
        Duration::from_secs(2),
    )
    .await
    .unwrap();

    // A moderator demoted by the platform loses moderation at once.
    let (status, _) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/participants/update",
        Some(&admin()),
        Some(json!({"identity": "mod2", "role": "member"})),
    )
    .await;
    assert_eq!(status, 200);
    let changed = next_of(&mut m2, "permissions_changed", |_| true).await;
    assert_eq!(changed["role"], "member");
    let answer = moderate(&mut m2, json!({"action": "kick", "identity": "gus"})).await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    cancel.cancel();
}

#[tokio::test]
async fn those_waiting_are_sent_to_rejoin_when_the_host_shuts_down() {
    let rtcd = TestRtcd::start(&[("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0")])
        .await
        .unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let p = proxy(&rtcd, &cancel, |c| c.rooms.wait_for_host = true).await;
    let (mut mia, _) = waits(p.addr(), "mia", "standup", "member").await;
    let stopping = tokio::spawn(rtcd.stop());
    // Told at once (not after the wait timeout) that the media server is gone: the SDK
    // rejoins, and is placed on a host that can let it in.
    let (code, reason, _) = mia.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4008, "media_server_lost"));
    stopping.await.unwrap();
    cancel.cancel();
}

/// Issue 29 #3: while rtcd is unreachable the proxy's configured policy decides alone: a guest
/// of a room configured without guests is refused at the door with 4014 (not `joined` without
/// media), a member of it and a guest of a room whose override allows guests get in without
/// media (docs/protocol.md section 5b).
#[tokio::test]
async fn a_guests_off_room_refuses_guests_even_while_rtcd_is_unreachable() {
    let mut config = rtcd_e2e::proxy::base_config();
    config.rooms.guests_allowed = false;
    config.rooms.overrides.insert(
        "open".into(),
        RoomPolicy {
            guests_allowed: Some(true),
            ..RoomPolicy::default()
        },
    );
    // A real relay to an address nothing listens on.
    config.rtcd = rtcd_proxy::config::RtcdConfig {
        url: format!("http://127.0.0.1:{}", rtcd_e2e::proxy::free_port()),
        client_id: "tenant-a".into(),
        auth_key: rtcd_proxy::config::Secret::new(key_for("tenant-a")),
        health_interval_seconds: 1,
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let relay = rtcd_proxy::relay::rtcd::RtcdRelay::start(&config.rtcd, cancel.clone())
        .await
        .unwrap();
    let proxy = rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap();
    let (_guest, outcome) = join(
        proxy.addr(),
        Some(&user("gus", "standup", "guest")),
        "standup",
    )
    .await
    .unwrap();
    match outcome {
        JoinOutcome::Refused(4014, reason, detail) => {
            assert_eq!(reason, "guests_not_allowed");
            assert!(detail.unwrap_or_default().contains("unreachable"));
        }
        other => panic!("a guest of a guests-off room must be refused with 4014: {other:?}"),
    }
    for (sub, room, role) in [("mia", "standup", "member"), ("gus", "open", "guest")] {
        let (mut client, outcome) = join(proxy.addr(), Some(&user(sub, room, role)), room)
            .await
            .unwrap();
        match outcome {
            JoinOutcome::Joined(j) => assert_eq!(j["media"], false, "{j}"),
            other => panic!("{sub} ({role}) should get in without media: {other:?}"),
        }
        assert_eq!(
            client.expect("error").await.unwrap()["code"],
            "media_unavailable"
        );
    }
    proxy.shutdown().await;
    cancel.cancel();
}

/// Issue 29 #4: a full lobby is a refusal of its own, not a success without media: with 500
/// sessions knocking, the 501st gets close 4018 `lobby_full` (rtcd's typed
/// `JOIN_REFUSAL_LOBBY_FULL` crossing gRPC), while a moderator still enters, and a knocker fits
/// again once one leaves.
#[tokio::test]
async fn the_501st_knocker_is_refused_with_lobby_full() {
    let rtcd = rtcd().await;
    let cancel = CancellationToken::new();
    let proxy = proxy(&rtcd, &cancel, |c| {
        c.rooms.lobby = true;
    })
    .await;
    let mut knockers = Vec::new();
    for i in 0..500 {
        knockers.push(
            waits(proxy.addr(), &format!("k{i}"), "crowded", "member")
                .await
                .0,
        );
    }
    let (_late, outcome) = join(
        proxy.addr(),
        Some(&user("late", "crowded", "member")),
        "crowded",
    )
    .await
    .unwrap();
    match outcome {
        JoinOutcome::Refused(code, reason, detail) => {
            assert_eq!((code, reason.as_str()), (4018, "lobby_full"));
            assert!(detail.unwrap_or_default().contains("lobby full"));
        }
        other => panic!("the 501st knocker must be refused with 4018: {other:?}"),
    }
    let _host = enters(proxy.addr(), "host", "crowded", "moderator").await;
    let mut gone = knockers.pop().unwrap();
    gone.send(&json!({"type": "leave"})).await.unwrap();
    gone.closed().await.unwrap();
    // rtcd drops the leaver from the waiting list when its stream ends.
    let mut fitted = None;
    for _ in 0..50 {
        let (client, outcome) = join(
            proxy.addr(),
            Some(&user("late", "crowded", "member")),
            "crowded",
        )
        .await
        .unwrap();
        match outcome {
            JoinOutcome::Waiting(_) => {
                fitted = Some(client);
                break;
            }
            JoinOutcome::Refused(4018, ..) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("after a leave: {other:?}"),
        }
    }
    assert!(fitted.is_some(), "a knocker fits again once one left");
    proxy.shutdown().await;
    cancel.cancel();
}

/// Issue 29 #12: "trusted users open the room". With `wait_for_host` and `opened_by =
/// "member"` (configured for one room, or set through the API), a signed-in member enters at
/// once and lets in the guests waiting; with the default (`moderator`) the member waits like
/// the guest until a moderator comes. The lobby stays the moderators' either way.
#[tokio::test]
async fn a_signed_in_member_opens_the_room_only_where_the_policy_says_so() {
    let rtcd = rtcd().await;
    let cancel = CancellationToken::new();
    let p = proxy(&rtcd, &cancel, |c| {
        c.rooms.wait_for_host = true;
        c.rooms.overrides.insert(
            "open-house".into(),
            RoomPolicy {
                opened_by: Some(rtcd_proxy::rooms::Opener::Member),
                ..RoomPolicy::default()
            },
        );
    })
    .await;
    let addr = p.addr();

    // opened_by = member (configured): the guest waits for a host, the member enters at once
    // and, once in, lets the guest in.
    let (mut gus, w) = waits(addr, "gus", "open-house", "guest").await;
    assert_eq!(w["reason"], "host");
    let _mia = enters(addr, "mia", "open-house", "member").await;
    next_of(&mut gus, "joined", |_| true).await;
    let _gil = enters(addr, "gil", "open-house", "guest").await;

    // The default (moderator): the member waits like the guest.
    let (mut gia, _) = waits(addr, "gia", "standup", "guest").await;
    let (mut max, w) = waits(addr, "max", "standup", "member").await;
    assert_eq!(w["reason"], "host");
    // The platform opens this room to members through the API: the waiting member enters,
    // and with them present the guest too.
    let (status, body) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/policy",
        Some(&admin()),
        Some(json!({"opened_by": "member"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective"]["opened_by"], "member", "{body}");
    assert_eq!(body["configured"]["opened_by"], "moderator", "{body}");
    next_of(&mut max, "joined", |_| true).await;
    next_of(&mut gia, "joined", |_| true).await;
    let (status, body) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/policy",
        Some(&admin()),
        Some(json!({"opened_by": "owner"})),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    p.shutdown().await;
    cancel.cancel();
}

/// Issue 29 #13, as documented in protocol.md section 5a: the owner is whoever the platform
/// makes moderator, and moderators are peers. In a room with the lobby and wait-for-host on,
/// a moderator never knocks; another moderator can ban them (their rejoin is refused with
/// 4012, as anyone's); the platform's API lifts the ban and the owner enters again at once.
#[tokio::test]
async fn the_owner_is_the_moderator_who_never_knocks_but_a_ban_holds_until_the_platform_lifts_it() {
    let rtcd = rtcd().await;
    let cancel = CancellationToken::new();
    let p = proxy(&rtcd, &cancel, |c| {
        c.rooms.lobby = true;
        c.rooms.wait_for_host = true;
    })
    .await;
    let addr = p.addr();
    let mut owner = enters(addr, "olga", "board", "moderator").await;
    let (_kate, w) = waits(addr, "kate", "board", "member").await;
    assert_eq!(w["reason"], "lobby");
    let mut other = enters(addr, "otto", "board", "moderator").await;
    let answer = moderate(
        &mut other,
        json!({"action": "ban", "identity": "olga", "ban_seconds": 600}),
    )
    .await;
    assert_eq!(answer["type"], "moderated", "{answer}");
    let (code, reason, _) = owner.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4012, "banned"));
    assert_eq!(
        join_code(addr, &user("olga", "board", "moderator"), "board")
            .await
            .unwrap(),
        4012,
        "a ban holds for a moderator"
    );
    let (status, body) = api(
        addr,
        "POST",
        "/api/v1/rooms/board/bans/lift",
        Some(&admin()),
        Some(json!({"identity": "olga"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let _back = enters(addr, "olga", "board", "moderator").await;
    p.shutdown().await;
    cancel.cancel();
}

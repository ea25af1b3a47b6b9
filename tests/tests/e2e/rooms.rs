//! Platform integration (issue 12) end to end: the proxy's room service API and in-call
//! moderation against a real rtcd, with webrtc-rs peers joined through the proxy. Removals,
//! bans, mutes, live permission changes, ended rooms and revocations are checked on the media
//! itself (flows stop or keep growing), on what each client is told (events, close codes), and
//! across a second proxy replica and restarts of both services.

use std::net::SocketAddr;
use std::time::Duration;

use rtcd_e2e::daemon::{TestRtcd, key_for};
use rtcd_e2e::media::{Participant, eventually, keeps_flowing};
use rtcd_e2e::proxy::{AUDIENCE, ISSUER, base_config, claims, hs_token, join_code, now};
use rtcd_proto::v1 as pb;
use rtcd_proxy::Proxy;
use rtcd_proxy::config::{RtcdConfig, Secret};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Packets a flow must deliver before checks (~1 s at 50 pps).
pub(crate) const ENOUGH: u64 = 50;

/// A server token for the room service API with `scopes`, limited to `room` if given.
pub(crate) fn server_token(scopes: &[&str], room: Option<&str>) -> String {
    let t = now();
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "chat-backend", "iat": t, "exp": t + 300, "api": scopes});
    if let Some(room) = room {
        c["room"] = room.into();
    }
    hs_token(&c)
}

/// Full rights for the tests' backend.
pub(crate) fn admin() -> String {
    server_token(&["rooms:read", "rooms:admin", "tokens:issue"], None)
}

/// A join token for `sub` in `room` with `role`.
pub(crate) fn user(sub: &str, room: &str, role: &str) -> String {
    let mut c = claims(sub, room);
    c["role"] = role.into();
    hs_token(&c)
}

/// The relay settings of a proxy of tenant `client` (registered in `rtcd`).
fn relay_config(rtcd: &TestRtcd, client: &str) -> RtcdConfig {
    RtcdConfig {
        url: format!("http://{}", rtcd.grpc_addr()),
        client_id: client.into(),
        auth_key: Secret::new(key_for(client)),
        api_port: rtcd.rtcd.http_addr().port(),
        health_interval_seconds: 1,
        ..RtcdConfig::default()
    }
}

/// A proxy replica of tenant `client`, issuing tokens with key `hs1`.
async fn replica(rtcd: &TestRtcd, client: &str, cancel: &CancellationToken) -> Proxy {
    replica_with(rtcd, client, cancel, |_| {}).await
}

/// [`replica`] with more settings.
pub(crate) async fn replica_with(
    rtcd: &TestRtcd,
    client: &str,
    cancel: &CancellationToken,
    configure: impl FnOnce(&mut rtcd_proxy::config::Config),
) -> Proxy {
    let mut config = base_config();
    config.rtcd = relay_config(rtcd, client);
    config.api.token_signing_kid = "hs1".into();
    configure(&mut config);
    let relay = rtcd_proxy::relay::rtcd::RtcdRelay::start(&config.rtcd, cancel.clone())
        .await
        .unwrap();
    rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap()
}

/// One API call: (status, JSON body).
pub(crate) async fn api(
    proxy: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{proxy}{path}");
    let mut req = match method {
        "GET" => client.get(url),
        _ => client
            .post(url)
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default()),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A webrtc-rs participant joined through `proxy` that publishes audio and video.
pub(crate) async fn publisher(
    proxy: SocketAddr,
    token: &str,
    room: &str,
    tag: &str,
) -> Participant {
    let p = Participant::join_via_proxy(&format!("ws://{proxy}/ws"), token, room, tag)
        .await
        .unwrap();
    p.add_track("audio").await.unwrap();
    p.add_track("video").await.unwrap();
    p.renegotiate().await.unwrap();
    p
}

/// The proxy close ("4012 banned") a bridged participant saw, if any.
pub(crate) fn closed_with(p: &Participant) -> Option<String> {
    p.events().into_iter().find_map(|e| match e {
        pb::server_signal::Signal::SessionClosed(c) => Some(c.reason),
        _ => None,
    })
}

/// Waits until `p`'s session was closed by the proxy with `code`.
pub(crate) async fn closes_with(p: &Participant, code: u16) {
    let want = code.to_string();
    eventually(&format!("{} closed with {code}", p.session), || {
        closed_with(p).is_some_and(|r| r.starts_with(&want))
    })
    .await
    .unwrap();
}

/// Sends `moderate` from the raw client and returns the answer (`moderated` or `error`),
/// skipping relayed events.
pub(crate) async fn moderate(client: &mut rtcd_e2e::proxy::Client, m: Value) -> Value {
    let mut m = m;
    m["type"] = "moderate".into();
    client.send(&m).await.unwrap();
    loop {
        match client.next().await.unwrap() {
            rtcd_e2e::proxy::Event::Message(v)
                if v["type"] == "moderated" || v["type"] == "error" =>
            {
                return v;
            }
            rtcd_e2e::proxy::Event::Message(_) => continue,
            other => panic!("moderator's session ended: {other:?}"),
        }
    }
}

/// Asserts that `flow` of `p` has stopped: at most a few packets (in flight) in 2 s.
pub(crate) async fn stopped(p: &Participant, flow: &str) {
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (sender, kind) = flow.split_once('/').unwrap();
    let before = p.received(sender, kind);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = p.received(sender, kind);
    assert!(
        after <= before + 3,
        "{} still receives {flow}: {before} -> {after}",
        p.session
    );
}

#[tokio::test]
async fn the_api_lists_rooms_and_participants_and_refuses_what_it_must() {
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    rtcd.register_key("tenant-b", &key_for("tenant-b"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let a = replica(&rtcd, "tenant-a", &cancel).await;
    let b = replica(&rtcd, "tenant-b", &cancel).await;
    let alice = publisher(
        a.addr(),
        &user("alice", "standup", "moderator"),
        "standup",
        "alice",
    )
    .await;
    let bob = publisher(
        a.addr(),
        &user("bob", "standup", "member"),
        "standup",
        "bob",
    )
    .await;
    eventually("alice and bob receive each other", || {
        alice.received("bob", "audio") >= ENOUGH && bob.received("alice", "video") >= ENOUGH
    })
    .await
    .unwrap();
    bob.send(pb::client_signal::Signal::Mute(pb::Mute {
        kind: pb::TrackKind::Audio as i32,
        muted: true,
    }))
    .await
    .unwrap();

    let read = server_token(&["rooms:read"], None);
    let (status, body) = api(a.addr(), "GET", "/api/v1/rooms", Some(&read), None).await;
    assert_eq!(status, 200, "{body}");
    let rooms = body["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{body}");
    assert_eq!(rooms[0]["name"], "standup");
    assert_eq!(rooms[0]["participant_count"], 2);
    assert!(rooms[0]["created_at_ms"].as_i64().unwrap() > (now() - 60) * 1000);

    let mut room = Value::Null;
    for _ in 0..50 {
        let (status, body) = api(a.addr(), "GET", "/api/v1/rooms/standup", Some(&read), None).await;
        assert_eq!(status, 200, "{body}");
        room = body;
        let bob_muted = room["participants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["identity"] == "bob")
            .flat_map(|p| p["tracks"].as_array().unwrap().clone())
            .any(|t| t["source"] == "microphone" && t["muted"] == true);
        if bob_muted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let people = room["participants"].as_array().unwrap();
    assert_eq!(people.len(), 2, "{room}");
    let alice_info = people.iter().find(|p| p["identity"] == "alice").unwrap();
    assert_eq!(alice_info["role"], "moderator");
    assert_eq!(alice_info["permissions"]["publish_screen"], true);
    assert!(alice_info["joined_at_ms"].as_i64().unwrap() > 0);
    let mut sources: Vec<&str> = alice_info["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["source"].as_str().unwrap())
        .collect();
    sources.sort_unstable();
    assert_eq!(sources, ["camera", "microphone"], "{alice_info}");
    let bob_info = people.iter().find(|p| p["identity"] == "bob").unwrap();
    assert_eq!(bob_info["role"], "member");
    assert_eq!(bob_info["permissions"]["publish_screen"], false);
    let bob_mic = bob_info["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "microphone")
        .unwrap();
    assert_eq!(bob_mic["muted"], true, "{bob_info}");

    // Another tenant sees nothing of it and can touch nothing of it.
    let (status, body) = api(b.addr(), "GET", "/api/v1/rooms", Some(&admin()), None).await;
    assert_eq!((status, body["rooms"].as_array().unwrap().len()), (200, 0));
    for (method, path, body) in [
        ("GET", "/api/v1/rooms/standup", None),
        ("POST", "/api/v1/rooms/standup/end", None),
        (
            "POST",
            "/api/v1/rooms/standup/participants/remove",
            Some(json!({"identity": "bob", "ban_seconds": 0})),
        ),
        (
            "POST",
            "/api/v1/rooms/standup/participants/mute",
            Some(json!({"identity": "bob", "source": "camera"})),
        ),
        (
            "POST",
            "/api/v1/rooms/standup/participants/update",
            Some(json!({"identity": "bob", "role": "guest"})),
        ),
    ] {
        let (status, reply) = api(b.addr(), method, path, Some(&admin()), body).await;
        assert_eq!(status, 404, "tenant-b {method} {path}: {reply}");
        assert_eq!(reply["reason"], "not_found");
    }

    // Bad credentials and bad requests: each a clear error.
    let mut expired = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now() - 900, "exp": now() - 600, "api": ["rooms:read"]});
    let forged = {
        // Another last character whose data bits differ (both `A` and `Q` are a valid end
        // of a 32-byte base64url value), so the signature really changes.
        let mut t = server_token(&["rooms:read"], None);
        let last = t.pop();
        t.push(if last == Some('A') { 'Q' } else { 'A' });
        t
    };
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (None, 401, "token_missing"),
        (
            Some(user("alice", "standup", "moderator")),
            401,
            "user_token",
        ),
        (Some(forged), 401, "token_bad_signature"),
        (Some(hs_token(&expired)), 401, "token_expired"),
        (
            Some(server_token(&["tokens:issue"], None)),
            403,
            "insufficient_scope",
        ),
        (
            Some(server_token(&["rooms:read"], Some("other-room"))),
            403,
            "room_not_in_scope",
        ),
    ];
    for (token, want_status, reason) in cases {
        let (status, body) = api(
            a.addr(),
            "GET",
            "/api/v1/rooms/standup",
            token.as_deref(),
            None,
        )
        .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (want_status, Some(reason)),
            "{body}"
        );
        assert_eq!(body["code"], want_status.to_string());
    }
    expired["exp"] = json!(now() + 100_000);
    let (status, body) = api(
        a.addr(),
        "GET",
        "/api/v1/rooms",
        Some(&hs_token(&expired)),
        None,
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("token_too_long_lived"))
    );
    let (status, body) = api(
        a.addr(),
        "GET",
        "/api/v1/rooms/nobody-here",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = api(a.addr(), "GET", "/api/v1/nothing", Some(&read), None).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("no_such_route"))
    );
    let (status, _) = api(
        a.addr(),
        "GET",
        "/api/v1/rooms/bad%20room",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let path = "/api/v1/rooms/standup/participants/mute";
    for bad in [
        json!("not an object"),
        json!({"identity": "bob"}),
        json!({"identity": "bob", "source": "nose"}),
        json!({"identity": "bob", "source": "camera", "extra": 1}),
        json!({"identity": "", "source": "camera"}),
    ] {
        let (status, body) = api(a.addr(), "POST", path, Some(&admin()), Some(bad.clone())).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {body}"
        );
    }
    // A body without Content-Length (chunked) is read up to the limit, then refused.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..40).map(|_| Ok("x".repeat(1000))).collect();
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", a.addr()))
        .bearer_auth(admin())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        413,
        "a chunked body above the limit"
    );
    let resp = reqwest::Client::new()
        .delete(format!("http://{}/api/v1/rooms/standup", a.addr()))
        .bearer_auth(admin())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let huge = json!({"identity": "x".repeat(20_000), "source": "camera"});
    let (status, body) = api(a.addr(), "POST", path, Some(&admin()), Some(huge)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (413, Some("body_too_large"))
    );
    let (status, body) = api(
        a.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/remove",
        Some(&admin()),
        Some(json!({"identity": "bob", "ban_seconds": 400 * 24 * 3600})),
    )
    .await;
    assert_eq!(status, 400, "a ban above one year: {body}");
    let (status, body) = api(
        a.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/request_unmute",
        Some(&admin()),
        Some(json!({"identity": "bob", "source": "microphone"})),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("forbidden")),
        "remote unmute is off by default"
    );

    // A server token never opens a call.
    let mut server_for_room = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "room": "standup", "iat": now(), "exp": now() + 60, "api": ["rooms:admin"]});
    assert_eq!(
        join_code(a.addr(), &hs_token(&server_for_room), "standup")
            .await
            .unwrap(),
        4117
    );
    server_for_room["api"] = json!([]);
    assert_eq!(
        join_code(a.addr(), &hs_token(&server_for_room), "standup")
            .await
            .unwrap(),
        4117
    );

    // Media kept flowing through all of it.
    keeps_flowing(
        &alice,
        &["bob/video"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    alice.close().await;
    bob.close().await;
    a.shutdown().await;
    b.shutdown().await;
    cancel.cancel();
}

#[tokio::test]
async fn a_ban_holds_through_any_replica_and_restarts_of_both_services() {
    let dir = tempfile::tempdir().unwrap();
    let fast = [("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0")];
    let rtcd = TestRtcd::start_in(dir.path(), &fast).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let one = replica(&rtcd, "tenant-a", &cancel).await;
    let two = replica(&rtcd, "tenant-a", &cancel).await;
    let alice = publisher(
        one.addr(),
        &user("alice", "standup", "moderator"),
        "standup",
        "alice",
    )
    .await;
    let bob = publisher(
        two.addr(),
        &user("bob", "standup", "member"),
        "standup",
        "bob",
    )
    .await;
    eventually("alice receives bob", || {
        alice.received("bob", "audio") >= ENOUGH
    })
    .await
    .unwrap();

    // Removed without a ban through replica one: bob's media stops, he may come back.
    let (status, body) = api(
        one.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/remove",
        Some(&admin()),
        Some(json!({"identity": "bob"})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    closes_with(&bob, 4011).await;
    stopped(&alice, "bob/audio").await;
    let bob = publisher(
        two.addr(),
        &user("bob", "standup", "member"),
        "standup",
        "bob2",
    )
    .await;
    eventually("bob is back", || alice.received("bob2", "audio") >= ENOUGH)
        .await
        .unwrap();

    // Banned through replica two: closed with 4012, refused on both replicas.
    let (status, body) = api(
        two.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/remove",
        Some(&admin()),
        Some(json!({"identity": "bob", "ban_seconds": 3600, "reason": "spam"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["banned_until"].as_i64().unwrap() >= now() + 3500);
    closes_with(&bob, 4012).await;
    stopped(&alice, "bob2/audio").await;
    let bob_token = user("bob", "standup", "member");
    for proxy in [&one, &two] {
        assert_eq!(
            join_code(proxy.addr(), &bob_token, "standup")
                .await
                .unwrap(),
            4012
        );
    }
    // Other rooms are not affected by a ban in this one.
    assert_eq!(
        join_code(one.addr(), &user("bob", "other", "member"), "other")
            .await
            .unwrap(),
        0
    );
    let (status, body) = api(
        one.addr(),
        "GET",
        "/api/v1/rooms/standup/bans",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["bans"][0]["identity"], "bob", "{body}");
    assert_eq!(body["bans"][0]["reason"], "spam");
    alice.close().await;

    // Restart both services on the same data: the ban is still there.
    one.shutdown().await;
    two.shutdown().await;
    cancel.cancel();
    rtcd.stop().await;
    let rtcd = TestRtcd::start_in(dir.path(), &fast).await.unwrap();
    let cancel = CancellationToken::new();
    let three = replica(&rtcd, "tenant-a", &cancel).await;
    assert_eq!(
        join_code(three.addr(), &bob_token, "standup")
            .await
            .unwrap(),
        4012
    );
    let (status, body) = api(
        three.addr(),
        "GET",
        "/api/v1/rooms/standup/bans",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(
        (status, body["bans"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{body}"
    );
    // Lifted: bob joins again.
    let (status, body) = api(
        three.addr(),
        "POST",
        "/api/v1/rooms/standup/bans/lift",
        Some(&admin()),
        Some(json!({"identity": "bob"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        join_code(three.addr(), &bob_token, "standup")
            .await
            .unwrap(),
        0
    );
    let (status, _) = api(
        three.addr(),
        "POST",
        "/api/v1/rooms/standup/bans/lift",
        Some(&admin()),
        Some(json!({"identity": "bob"})),
    )
    .await;
    assert_eq!(status, 404, "no ban left to lift");
    three.shutdown().await;
    cancel.cancel();
    rtcd.stop().await;
}

#[tokio::test]
async fn a_permission_downgrade_stops_a_screen_share_at_once_and_the_client_is_told() {
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let proxy = replica_with(&rtcd, "tenant-a", &cancel, |c| {
        c.api.allow_remote_unmute = true
    })
    .await;
    let alice = publisher(
        proxy.addr(),
        &user("alice", "standup", "member"),
        "standup",
        "alice",
    )
    .await;
    let bob = Participant::join_via_proxy(
        &format!("ws://{}/ws", proxy.addr()),
        &user("bob", "standup", "moderator"),
        "standup",
        "bob",
    )
    .await
    .unwrap();
    bob.add_track("audio").await.unwrap();
    bob.add_track("screen").await.unwrap();
    bob.declare("screen", pb::TrackKind::Screen);
    bob.renegotiate().await.unwrap();
    eventually("alice receives bob's audio and screen", || {
        alice.received("bob", "audio") >= ENOUGH && alice.received("bob", "screen") >= ENOUGH
    })
    .await
    .unwrap();
    keeps_flowing(
        &alice,
        &["bob/audio", "bob/screen"],
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await
    .unwrap();

    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/update",
        Some(&admin()),
        Some(json!({"identity": "bob", "role": "member", "permissions": {
            "publish_audio": true, "publish_video": true, "publish_screen": false, "subscribe": true}})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    eventually("bob is told", || {
        bob.saw(|e| matches!(e, pb::server_signal::Signal::PermissionsChanged(p)
            if p.role == "member" && p.permissions.as_ref().is_some_and(|p| !p.publish_screen && p.publish_audio)))
    })
    .await
    .unwrap();
    stopped(&alice, "bob/screen").await;
    // Bob's audio is still allowed and never stopped.
    keeps_flowing(
        &alice,
        &["bob/audio"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    // The room shows the new role.
    let (_, room) = api(
        proxy.addr(),
        "GET",
        "/api/v1/rooms/standup",
        Some(&admin()),
        None,
    )
    .await;
    let bob_info = room["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["identity"] == "bob")
        .cloned()
        .unwrap();
    assert_eq!(bob_info["role"], "member", "{bob_info}");
    assert!(
        bob_info["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["source"] != "screen"),
        "{bob_info}"
    );
    // Where the operator allows it, the backend may ask bob to unmute; he is only asked.
    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/request_unmute",
        Some(&admin()),
        Some(json!({"identity": "bob", "source": "camera"})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    eventually("bob is asked to unmute his camera", || {
        bob.saw(|e| matches!(e, pb::server_signal::Signal::UnmuteRequested(m) if m.kind == pb::TrackKind::Video as i32))
    })
    .await
    .unwrap();
    alice.close().await;
    bob.close().await;
    proxy.shutdown().await;
    cancel.cancel();
}

#[tokio::test]
async fn moderators_act_from_inside_the_call_and_others_are_refused() {
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let proxy = replica(&rtcd, "tenant-a", &cancel).await;
    let (mut alice, joined) = rtcd_e2e::proxy::join(
        proxy.addr(),
        Some(&user("alice", "standup", "moderator")),
        "standup",
    )
    .await
    .unwrap();
    assert_eq!(joined.code(), 0, "{joined:?}");
    let carol = publisher(
        proxy.addr(),
        &user("carol", "standup", "member"),
        "standup",
        "carol",
    )
    .await;

    // A member may not moderate.
    let (mut dave, _) = rtcd_e2e::proxy::join(
        proxy.addr(),
        Some(&user("dave", "standup", "member")),
        "standup",
    )
    .await
    .unwrap();
    let answer = moderate(&mut dave, json!({"action": "kick", "identity": "carol"})).await;
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{answer}"
    );
    let answer = moderate(&mut dave, json!({"action": "end_room"})).await;
    assert_eq!(answer["code"], "forbidden");

    // Mute: carol is told and her microphone stops reaching the room; camera keeps going.
    let erin = publisher(
        proxy.addr(),
        &user("erin", "standup", "member"),
        "standup",
        "erin",
    )
    .await;
    eventually("erin receives carol", || {
        erin.received("carol", "audio") >= ENOUGH
    })
    .await
    .unwrap();
    let answer = moderate(
        &mut alice,
        json!({"action": "mute", "identity": "carol", "source": "microphone"}),
    )
    .await;
    assert_eq!(
        (answer["type"].as_str(), answer["sessions"].as_u64()),
        (Some("moderated"), Some(1)),
        "{answer}"
    );
    eventually("carol is told she was muted", || {
        carol.saw(|e| matches!(e, pb::server_signal::Signal::MutedByModerator(m) if m.kind == pb::TrackKind::Audio as i32))
    })
    .await
    .unwrap();
    eventually("erin sees carol muted", || {
        erin.saw(|e| matches!(e, pb::server_signal::Signal::MuteChanged(m) if m.user_id == "carol" && m.muted))
    })
    .await
    .unwrap();
    stopped(&erin, "carol/audio").await;
    keeps_flowing(
        &erin,
        &["carol/video"],
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    // Remote unmute is off here: asking is refused.
    let answer = moderate(
        &mut alice,
        json!({"action": "request_unmute", "identity": "carol", "source": "microphone"}),
    )
    .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    // Carol unmutes herself: allowed, media flows again.
    carol
        .send(pb::client_signal::Signal::Mute(pb::Mute {
            kind: pb::TrackKind::Audio as i32,
            muted: false,
        }))
        .await
        .unwrap();
    let before = erin.received("carol", "audio");
    eventually("carol's audio flows again", || {
        erin.received("carol", "audio") > before + ENOUGH
    })
    .await
    .unwrap();

    // Grant moderator to erin: she is told and can now moderate; revoke it again.
    let answer = moderate(
        &mut alice,
        json!({"action": "grant_moderator", "identity": "erin"}),
    )
    .await;
    assert_eq!(answer["type"], "moderated", "{answer}");
    eventually("erin is a moderator", || {
        erin.saw(|e| matches!(e, pb::server_signal::Signal::PermissionsChanged(p) if p.role == "moderator"))
    })
    .await
    .unwrap();
    let answer = moderate(
        &mut alice,
        json!({"action": "revoke_moderator", "identity": "erin"}),
    )
    .await;
    assert_eq!(answer["type"], "moderated", "{answer}");
    eventually("erin is a member again", || {
        erin.saw(
            |e| matches!(e, pb::server_signal::Signal::PermissionsChanged(p) if p.role == "member"),
        )
    })
    .await
    .unwrap();

    // Kick: carol leaves with 4011; an unknown identity is not_found.
    let answer = moderate(&mut alice, json!({"action": "kick", "identity": "carol"})).await;
    assert_eq!(answer["sessions"], 1, "{answer}");
    closes_with(&carol, 4011).await;
    stopped(&erin, "carol/video").await;
    // Ban from inside the call: dave leaves with 4012 and cannot come back.
    let answer = moderate(
        &mut alice,
        json!({"action": "ban", "identity": "dave", "ban_seconds": 600, "reason": "noise"}),
    )
    .await;
    assert_eq!(answer["type"], "moderated", "{answer}");
    let (code, reason, _) = dave.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4012, "banned"));
    assert_eq!(
        join_code(proxy.addr(), &user("dave", "standup", "member"), "standup")
            .await
            .unwrap(),
        4012
    );
    let answer = moderate(&mut alice, json!({"action": "kick", "identity": "nobody"})).await;
    assert_eq!(answer["code"], "not_found", "{answer}");
    let answer = moderate(&mut alice, json!({"action": "mute", "identity": "erin"})).await;
    assert_eq!(
        answer["code"], "bad_message",
        "a mute needs a source: {answer}"
    );

    // End the room: everyone, the moderator included, is closed with 4013.
    let answer = moderate(&mut alice, json!({"action": "end_room"})).await;
    assert_eq!(answer["type"], "moderated", "{answer}");
    closes_with(&erin, 4013).await;
    let (code, reason, _) = alice.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4013, "room_ended"));
    let mut gone = false;
    for _ in 0..100 {
        let (_, rooms) = api(proxy.addr(), "GET", "/api/v1/rooms", Some(&admin()), None).await;
        if rooms["rooms"].as_array().is_some_and(Vec::is_empty) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the ended room is still listed");
    erin.close().await;
    carol.close().await;
    proxy.shutdown().await;
    cancel.cancel();
}

#[tokio::test]
async fn revocations_close_live_sessions_refuse_old_tokens_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fast = [("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0")];
    let rtcd = TestRtcd::start_in(dir.path(), &fast).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let proxy = replica(&rtcd, "tenant-a", &cancel).await;
    let alice = publisher(
        proxy.addr(),
        &user("alice", "standup", "member"),
        "standup",
        "alice",
    )
    .await;

    // An issued token joins (the backend flow), and can be revoked by its id.
    let (status, issued) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/tokens",
        Some(&admin()),
        Some(json!({"identity": "carol", "name": "Carol", "role": "guest", "ttl_seconds": 600})),
    )
    .await;
    assert_eq!(status, 200, "{issued}");
    let carol_token = issued["token"].as_str().unwrap().to_owned();
    let carol = Participant::join_via_proxy(
        &format!("ws://{}/ws", proxy.addr()),
        &carol_token,
        "standup",
        "carol",
    )
    .await
    .unwrap();
    carol.receive_only().await.unwrap();
    eventually("carol (a guest) receives alice", || {
        carol.received("alice", "audio") >= ENOUGH
    })
    .await
    .unwrap();
    let (status, room) = api(
        proxy.addr(),
        "GET",
        "/api/v1/rooms/standup",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let carol_info = room["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["identity"] == "carol")
        .cloned()
        .unwrap();
    assert_eq!(
        (carol_info["role"].as_str(), carol_info["name"].as_str()),
        (Some("guest"), Some("Carol"))
    );
    // Scope: a token without tokens:issue cannot mint.
    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/tokens",
        Some(&server_token(&["rooms:admin"], None)),
        Some(json!({"identity": "mallory"})),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("insufficient_scope"))
    );

    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({"token_id": issued["token_id"], "token_expires_at": issued["expires_at"]})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    closes_with(&carol, 4118).await;
    stopped(&carol, "alice/audio").await;
    assert_eq!(
        join_code(proxy.addr(), &carol_token, "standup")
            .await
            .unwrap(),
        4118
    );

    // An identity cut-off: bob's live session (token issued before it) is closed, his old
    // token refused, a token issued after it admitted.
    let mut old = claims("bob", "standup");
    old["role"] = json!("member");
    old["iat"] = json!(now() - 30);
    old["nbf"] = json!(now() - 30);
    let old = hs_token(&old);
    let bob = publisher(proxy.addr(), &old, "standup", "bob").await;
    eventually("alice receives bob", || {
        alice.received("bob", "audio") >= ENOUGH
    })
    .await
    .unwrap();
    let cut = now() - 5;
    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({"identity": "bob", "issued_before": cut})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    closes_with(&bob, 4118).await;
    stopped(&alice, "bob/audio").await;
    assert_eq!(
        join_code(proxy.addr(), &old, "standup").await.unwrap(),
        4118
    );
    let fresh = user("bob", "standup", "member");
    assert_eq!(join_code(proxy.addr(), &fresh, "standup").await.unwrap(), 0);
    // A room-limited token may not revoke (revocations apply to every room).
    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&server_token(&["rooms:admin"], Some("standup"))),
        Some(json!({"identity": "bob"})),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("room_not_in_scope"))
    );
    let (status, _) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "a revocation names an identity or a token");
    alice.close().await;

    // Both services restart: the revocations hold.
    proxy.shutdown().await;
    cancel.cancel();
    rtcd.stop().await;
    let rtcd = TestRtcd::start_in(dir.path(), &fast).await.unwrap();
    let cancel = CancellationToken::new();
    let proxy = replica(&rtcd, "tenant-a", &cancel).await;
    assert_eq!(
        join_code(proxy.addr(), &old, "standup").await.unwrap(),
        4118
    );
    assert_eq!(
        join_code(proxy.addr(), &carol_token, "standup")
            .await
            .unwrap(),
        4118
    );
    assert_eq!(join_code(proxy.addr(), &fresh, "standup").await.unwrap(), 0);
    proxy.shutdown().await;
    cancel.cancel();
    rtcd.stop().await;
}

/// A body for `schema` (docs/openapi.json) with every property set to a valid value: the first
/// of an enum, `true`, 60, a name; `$ref`s followed.
fn full_body(spec: &Value, schema: &Value) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return full_body(spec, &spec["components"]["schemas"][name]);
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("object") => Value::Object(
            schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), full_body(spec, v)))
                .collect(),
        ),
        Some("boolean") => json!(true),
        Some("integer") => json!(60),
        Some("string") => json!("bob"),
        other => panic!("no example for a {other:?} in {schema}"),
    }
}

/// The JSON pointers of every object inside `body` (itself included), e.g. "", "/permissions".
fn object_pointers(body: &Value, at: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = body {
        out.push(at.to_owned());
        for (k, v) in map {
            object_pointers(v, &format!("{at}/{k}"), out);
        }
    }
}

/// Issue 29 #1: every request body of docs/openapi.json is `additionalProperties: false`, and
/// the proxy holds to it: the same body with one unknown field, at the top or in a nested
/// object (`permissions`), is a 400 `bad_request` naming the field, while the body without it
/// is accepted (a 503 here: the proxy has no media server, which is only asked once the body
/// parsed; tokens need none).
#[tokio::test]
async fn every_request_body_of_the_openapi_document_refuses_unknown_fields() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut config = rtcd_e2e::proxy::base_config();
    config.api.token_signing_kid = "hs1".into();
    let proxy = rtcd_e2e::proxy::start(config).await.unwrap();
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                continue;
            }
            let method = method.to_uppercase();
            let path = path.replace("{room}", "standup");
            let valid = full_body(&spec, schema);
            let (status, reply) = api(
                proxy.addr(),
                &method,
                &path,
                Some(&admin()),
                Some(valid.clone()),
            )
            .await;
            assert!(
                status == 200
                    || (status, reply["reason"].as_str()) == (503, Some("media_unavailable")),
                "{method} {path} {valid}: a valid body should pass the parser: {status} {reply}"
            );
            let mut pointers = Vec::new();
            object_pointers(&valid, "", &mut pointers);
            for pointer in pointers {
                let mut body = valid.clone();
                body.pointer_mut(&pointer).unwrap()["admin"] = json!(true);
                let (status, reply) = api(
                    proxy.addr(),
                    &method,
                    &path,
                    Some(&admin()),
                    Some(body.clone()),
                )
                .await;
                assert_eq!(
                    (status, reply["reason"].as_str()),
                    (400, Some("bad_request")),
                    "{method} {path} {body}: {reply}"
                );
                let message = reply["error"].as_str().unwrap_or_default();
                assert!(
                    message.contains("unknown field `admin`"),
                    "{method} {path}: {message}"
                );
                checked += 1;
            }
        }
    }
    // Ten bodies, plus `permissions` inside `update` and `tokens`.
    assert_eq!(checked, 12, "request bodies checked");
    proxy.shutdown().await;
}

/// The first line containing `needle`, without its timestamp, or a panic listing what was logged.
fn audit_line(text: &str, needle: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no audit line with {needle}:\n{text}"));
    line.split_once(' ')
        .map(|(_, rest)| rest.to_owned())
        .unwrap()
}

/// Issue 29 #2: the audit lines are exactly docs/api.md's format (every string quoted, counts
/// bare), a refused API token names the caller's address (not `Some(..)`), and a join the media
/// server refuses (ban, revoked token) is one `join refused` line with no `joined` before it.
#[tokio::test]
async fn audit_lines_match_the_documented_format_and_refused_joins_never_log_joined() {
    let (logs, _guard) = crate::proxy_auth::CapturedLogs::install("off,audit=info");
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let proxy = replica(&rtcd, "tenant-a", &cancel).await;
    let (status, reply) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/remove",
        Some(&admin()),
        Some(json!({"identity": "bob", "ban_seconds": 600, "reason": "spam"})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        join_code(proxy.addr(), &user("bob", "standup", "member"), "standup")
            .await
            .unwrap(),
        4012
    );
    let mut carol = claims("carol", "standup");
    carol["iat"] = json!(now() - 30);
    carol["nbf"] = json!(now() - 30);
    let carol = hs_token(&carol);
    let (status, reply) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({"identity": "carol", "issued_before": now() - 5})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        join_code(proxy.addr(), &carol, "standup").await.unwrap(),
        4118
    );
    // Issue 29 #6: a refresh with a revoked token closes the session with 4118; the proxy's
    // line says what it knew ("refresh token verified"), never "refreshed".
    let (mut dave, outcome) = rtcd_e2e::proxy::join(
        proxy.addr(),
        Some(&user("dave", "standup", "member")),
        "standup",
    )
    .await
    .unwrap();
    assert_eq!(outcome.code(), 0, "{outcome:?}");
    let mut revoked = claims("dave", "standup");
    revoked["jti"] = json!("dave-2");
    let (status, reply) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({"token_id": "dave-2", "token_expires_at": now() + 600})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    dave.send(&json!({"type": "refresh", "token": hs_token(&revoked)}))
        .await
        .unwrap();
    let (code, reason, seen) = dave.closed().await.unwrap();
    assert_eq!((code, reason.as_str()), (4118, "token_revoked"), "{seen:?}");
    let (status, _) = api(proxy.addr(), "GET", "/api/v1/rooms", Some("garbage"), None).await;
    assert_eq!(status, 401);
    let (status, reply) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/mute",
        Some(&admin()),
        Some(json!({"identity": "nobody", "source": "camera"})),
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    proxy.shutdown().await;
    cancel.cancel();
    let text = logs.text();
    assert_eq!(
        audit_line(
            &text,
            "room action actor=\"api:chat-backend\" action=\"ban\""
        ),
        " INFO audit: room action actor=\"api:chat-backend\" action=\"ban\" room=\"standup\" \
         identity=\"bob\" outcome=\"ok\" sessions=0"
    );
    assert_eq!(
        audit_line(
            &text,
            "room action actor=\"api:chat-backend\" action=\"mute\""
        ),
        " INFO audit: room action actor=\"api:chat-backend\" action=\"mute\" room=\"standup\" \
         identity=\"nobody\" outcome=\"not_found\""
    );
    assert_eq!(
        audit_line(
            &text,
            "room action actor=\"api:chat-backend\" action=\"revoke\""
        ),
        " INFO audit: room action actor=\"api:chat-backend\" action=\"revoke\" identity=\"carol\" \
         token_id=\"\" outcome=\"ok\" sessions=0"
    );
    assert_eq!(
        audit_line(&text, "API request refused"),
        " INFO audit: API request refused peer=\"127.0.0.1\" reason=\"token_malformed\""
    );
    let dave_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("identity=\"dave\""))
        .collect();
    assert!(
        dave_lines
            .iter()
            .any(|l| l.contains(" INFO audit: refresh token verified "))
            && !dave_lines.iter().any(|l| l.contains("refreshed")),
        "{dave_lines:#?}"
    );
    for (who, reason) in [("bob", "banned"), ("carol", "token_revoked")] {
        let identity = format!("identity=\"{who}\"");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&identity) && !l.contains("room action"))
            .collect();
        assert_eq!(lines.len(), 1, "{who}: {lines:#?}");
        assert!(
            lines[0].contains(" INFO audit: join refused session=\"")
                && lines[0].contains("peer=\"127.0.0.1\"")
                && lines[0].ends_with(&format!("room=\"standup\" reason=\"{reason}\"")),
            "{}",
            lines[0]
        );
    }
}

/// Issue 29 #9: the API's 429 says when to retry (`Retry-After`), and the lockout is what the
/// docs say: per address, for valid tokens too, and for WebSocket joins from that address
/// (4006, whose message says when to retry).
#[tokio::test]
async fn the_auth_lockout_has_retry_after_and_covers_valid_tokens_and_joins() {
    let mut config = rtcd_e2e::proxy::base_config();
    config.limits.failed_auth_burst = 2;
    config.limits.failed_auth_per_minute = 1;
    let proxy = rtcd_e2e::proxy::start(config).await.unwrap();
    for _ in 0..2 {
        let (status, _) = api(proxy.addr(), "GET", "/api/v1/rooms", Some("garbage"), None).await;
        assert_eq!(status, 401);
    }
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/v1/rooms", proxy.addr()))
        .bearer_auth(admin())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        429,
        "a valid token is locked out too"
    );
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One token back at one a minute: about a minute (never 0).
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "too_many_auth_failures");
    let (_c, outcome) = rtcd_e2e::proxy::join(
        proxy.addr(),
        Some(&user("alice", "standup", "member")),
        "standup",
    )
    .await
    .unwrap();
    match outcome {
        rtcd_e2e::proxy::JoinOutcome::Refused(4006, reason, detail) => {
            assert_eq!(reason, "too_many_auth_failures");
            assert!(
                detail.unwrap_or_default().contains("retry in "),
                "says when to retry"
            );
        }
        other => panic!("a valid join from a locked-out address: {other:?}"),
    }
    proxy.shutdown().await;
}

/// Issue 29 #2, the machine format docs/api.md offers: with `[logger] json = true` (the
/// service kit's JSON layout) an audit line is one object whose fields are plain JSON values
/// with the documented names, strings unquoted inside, counts as numbers.
#[tokio::test]
async fn audit_lines_in_the_json_log_format_have_the_documented_fields() {
    let logs = crate::proxy_auth::CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("off,audit=info")
        .json()
        .flatten_event(true)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut config = rtcd_e2e::proxy::base_config();
    config.api.token_signing_kid = "hs1".into();
    let proxy = rtcd_e2e::proxy::start(config).await.unwrap();
    let (status, reply) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/tokens",
        Some(&admin()),
        Some(json!({"identity": "carol", "role": "guest"})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    proxy.shutdown().await;
    let text = logs.text();
    let line: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "room action")
        .unwrap_or_else(|| panic!("no JSON room action line:\n{text}"));
    assert_eq!(line["actor"], "api:chat-backend", "{line}");
    assert_eq!(line["identity"], "carol", "{line}");
    assert_eq!(line["action"], "issue_token", "{line}");
    assert_eq!(line["room"], "standup", "{line}");
    // One `target` key, the log target: a second one (a field) would shadow one of them.
    assert_eq!(line["target"], "audit", "{line}");
    let raw = text
        .lines()
        .find(|l| l.contains("\"room action\""))
        .unwrap();
    assert_eq!(raw.matches("\"target\":").count(), 1, "{raw}");
    assert_eq!(line["outcome"], "ok", "{line}");
    assert_eq!(line["role"], "guest", "{line}");
    assert_eq!(line["token_id"], reply["token_id"], "{line}");
}

//! Call recording through the proxy, end to end (docs/api.md "Recordings", docs/protocol.md
//! section 5a): the room service API starts, stops, lists, reads and deletes recordings at a
//! real rtcd; every participant is told (`recording_started` / `recording_stopped`), a late
//! joiner too; files download whole and by range; moderators with the `record` permission
//! start and stop from inside the call, the others are refused. The platform's webhooks
//! announce the start, the stop and the finished files (`recording_ready`).
//!
//! Needs the recorder at rtcd: its recording settings are [`RECORDING`] (adjust the variable
//! names to rtcd's `[recording]` section if they differ).

use std::net::SocketAddr;
use std::time::Duration;

use rtcd_e2e::daemon::{TestRtcd, key_for};
use rtcd_e2e::media::{Participant, eventually};
use rtcd_e2e::proxy::{Client, claims, hs_token, join};
use rtcd_e2e::webhook::WebhookReceiver;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::rooms::{ENOUGH, admin, api, moderate, publisher, replica_with, server_token, user};

/// rtcd's recording settings for these tests (`RTCD_RECORDING_DIRECTORY` is added per test).
const RECORDING: &[(&str, &str)] = &[("RTCD_RECORDING_ENABLED", "true")];

/// A join token for `sub` in `room` with `role`, granting `record`.
fn recorder(sub: &str, room: &str, role: &str) -> String {
    let mut c = claims(sub, room);
    c["role"] = role.into();
    c["permissions"] = json!({"record": true});
    hs_token(&c)
}

/// The webhook receiver's signing secret.
const SECRET: &str = "recording-webhook-secret-0123456789abcdef";

/// rtcd with recording on, writing under a directory of its own, and a proxy replica that
/// configures webhooks to `receiver`.
async fn setup_with(
    cancel: &CancellationToken,
    receiver: Option<&WebhookReceiver>,
) -> (TestRtcd, tempfile::TempDir, rtcd_proxy::Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let mut env: Vec<(&str, &str)> = RECORDING.to_vec();
    env.push(("RTCD_RECORDING_DIRECTORY", &path));
    env.push(("RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true"));
    let rtcd = TestRtcd::start(&env).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    let url = receiver.map(WebhookReceiver::url);
    let proxy = replica_with(&rtcd, "tenant-a", cancel, |c| {
        if let Some(url) = url {
            c.webhooks.urls = vec![url];
            c.webhooks.secret = rtcd_proxy::config::Secret::new(SECRET);
        }
    })
    .await;
    (rtcd, dir, proxy)
}

/// [`setup_with`] without webhooks.
async fn setup(cancel: &CancellationToken) -> (TestRtcd, tempfile::TempDir, rtcd_proxy::Proxy) {
    setup_with(cancel, None).await
}

/// A raw WebSocket client joined to `room` (it sees every protocol message).
async fn client(proxy: SocketAddr, token: &str, room: &str) -> Client {
    // `join` has read `joined` already.
    let (c, _) = join(proxy, Some(token), room).await.unwrap();
    c
}

/// One API call with any method and raw headers: (status, headers, body bytes).
async fn raw(
    proxy: SocketAddr,
    method: reqwest::Method,
    path: &str,
    token: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{proxy}{path}"))
        .bearer_auth(token);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// The admin's `method path` (with `body`) is refused with `409` and `reason`.
async fn refused(addr: SocketAddr, method: &str, path: &str, body: Option<Value>, reason: &str) {
    let (status, answer) = api(addr, method, path, Some(&admin()), body).await;
    assert_eq!(
        (status, &answer["reason"]),
        (409, &json!(reason)),
        "{method} {path}: {answer}"
    );
}
#[tokio::test]
async fn the_api_records_a_room_and_everyone_is_told() {
    let cancel = CancellationToken::new();
    let receiver = WebhookReceiver::start(SECRET, 0).await.unwrap();
    let (_rtcd, _dir, proxy) = setup_with(&cancel, Some(&receiver)).await;
    let addr = proxy.addr();
    let room = "standup";
    // Media to record: two publishers; two raw clients to watch the protocol.
    let pat = publisher(addr, &user("pat", room, "member"), room, "pat").await;
    let quinn = publisher(addr, &user("quinn", room, "member"), room, "quinn").await;
    eventually("pat and quinn receive each other", || {
        pat.received("quinn", "audio") >= ENOUGH && quinn.received("pat", "video") >= ENOUGH
    })
    .await
    .unwrap();
    let mut alice = client(addr, &user("alice", room, "member"), room).await;
    let mut bob = client(addr, &user("bob", room, "member"), room).await;

    // Nobody in another room: 404 like the other routes.
    let (status, body) = api(
        addr,
        "POST",
        "/api/v1/rooms/empty/recordings",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (404, &json!("not_found")),
        "{body}"
    );
    // A reader cannot start one.
    let read = server_token(&["rooms:read"], None);
    let (status, _) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/recordings",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 403);

    let (status, started) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/recordings",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let id = started["recording_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("rec_"), "{started}");
    assert_eq!(started["room"], room);
    assert_eq!(started["state"], "recording");
    assert_eq!(started["segment"], 1);
    assert_eq!(started["started_by"], "");
    for c in [&mut alice, &mut bob] {
        let m = c.until("recording_started").await.unwrap();
        assert_eq!(m["recording_id"], id.as_str(), "{m}");
        assert!(m["started_at_ms"].as_i64().unwrap() > 0, "{m}");
    }
    // A late joiner is told right after `joined`.
    let mut carol = client(addr, &user("carol", room, "member"), room).await;
    let m = carol.until("recording_started").await.unwrap();
    assert_eq!(m["recording_id"], id.as_str());

    // One at a time.
    refused(
        addr,
        "POST",
        "/api/v1/rooms/standup/recordings",
        None,
        "already_recording",
    )
    .await;
    // Still recording: not deletable.
    let path = format!("/api/v1/rooms/standup/recordings/{id}");
    let (status, _, body) = raw(addr, reqwest::Method::DELETE, &path, &admin(), None).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, &body["reason"]),
        (409, &json!("still_recording")),
        "{body}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, stopped) = api(
        addr,
        "POST",
        "/api/v1/rooms/standup/recordings/stop",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["stop_reason"], "requested");
    for c in [&mut alice, &mut bob, &mut carol] {
        let m = c.until("recording_stopped").await.unwrap();
        assert_eq!(
            (&m["recording_id"], &m["reason"]),
            (&json!(id), &json!("requested"))
        );
    }
    refused(
        addr,
        "POST",
        "/api/v1/rooms/standup/recordings/stop",
        None,
        "not_recording",
    )
    .await;

    // Listed (without files), then got with its files: one per published track.
    let (status, list) = api(
        addr,
        "GET",
        "/api/v1/rooms/standup/recordings",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let entries = list["recordings"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["recording_id"], id.as_str());
    assert!(entries[0].get("files").is_none(), "{list}");
    let (status, got) = api(addr, "GET", &path, Some(&read), None).await;
    assert_eq!(status, 200, "{got}");
    let files = got["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        4,
        "two publishers, audio and video each: {got}"
    );
    for who in ["pat", "quinn"] {
        for source in ["microphone", "camera"] {
            assert!(
                files
                    .iter()
                    .any(|f| f["identity"] == who && f["source"] == source),
                "{who} {source}: {got}"
            );
        }
    }
    // The platform heard of it: started, stopped, then ready with the same files.
    eventually("recording_ready is delivered", || {
        receiver
            .delivered()
            .iter()
            .any(|e| e.kind() == "recording_ready")
    })
    .await
    .unwrap();
    let hooks: Vec<Value> = receiver
        .delivered()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("recording_"))
        })
        .collect();
    let kinds: Vec<&str> = hooks.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["recording_started", "recording_stopped", "recording_ready"],
        "{hooks:?}"
    );
    for hook in &hooks {
        assert_eq!(hook["recording"]["id"], id.as_str(), "{hook}");
        assert_eq!(hook["room"]["name"], room, "{hook}");
    }
    assert_eq!(hooks[1]["recording"]["stop_reason"], "requested");
    let ready = &hooks[2]["recording"];
    let ready_files = ready["files"].as_array().unwrap();
    assert_eq!(ready_files.len(), 4, "{ready}");
    for f in ready_files {
        let listed = files
            .iter()
            .find(|g| g["name"] == f["name"])
            .unwrap_or_else(|| panic!("{f} is not among the API's files"));
        assert_eq!(f["bytes"], listed["bytes"], "{f}");
        assert!(f["duration_ms"].as_u64().unwrap() > 1000, "{f}");
    }
    assert!(ready["bytes"].as_u64().unwrap() > 0, "{ready}");

    // Another room's path does not find it.
    let (status, _) = api(
        addr,
        "GET",
        &format!("/api/v1/rooms/other/recordings/{id}"),
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // A file whole, then by range: the same bytes.
    let video = files.iter().find(|f| f["source"] == "camera").unwrap();
    let url = video["url"].as_str().unwrap();
    let (status, headers, whole) = raw(addr, reqwest::Method::GET, url, &read, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "video/webm");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(whole.len() as u64, video["bytes"].as_u64().unwrap());
    assert!(whole.len() > 1000, "{} bytes", whole.len());
    assert_eq!(
        &whole[..4],
        &[0x1a, 0x45, 0xdf, 0xa3],
        "an EBML (WebM) header"
    );
    let (status, headers, part) = raw(
        addr,
        reqwest::Method::GET,
        url,
        &read,
        Some("bytes=100-599"),
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes 100-599/{}", whole.len()).as_str()
    );
    assert_eq!(part, whole[100..600]);
    let (status, _, tail) = raw(addr, reqwest::Method::GET, url, &read, Some("bytes=-10")).await;
    assert_eq!((status, tail.as_slice()), (206, &whole[whole.len() - 10..]));
    let beyond = format!("bytes={}-", whole.len());
    let (status, headers, _) = raw(addr, reqwest::Method::GET, url, &read, Some(&beyond)).await;
    assert_eq!(status, 416);
    assert_eq!(
        headers["content-range"],
        format!("bytes */{}", whole.len()).as_str()
    );
    let manifest = format!("{path}/files/manifest.json");
    let (status, headers, body) = raw(addr, reqwest::Method::GET, &manifest, &read, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["recording_id"], id.as_str());

    // Deleted: gone.
    let (status, _, body) = raw(addr, reqwest::Method::DELETE, &path, &admin(), None).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body["bytes"].as_u64().unwrap() >= whole.len() as u64,
        "{body}"
    );
    let (status, _) = api(addr, "GET", &path, Some(&read), None).await;
    assert_eq!(status, 404);
    let (_, list) = api(
        addr,
        "GET",
        "/api/v1/rooms/standup/recordings",
        Some(&read),
        None,
    )
    .await;
    assert_eq!(list["recordings"], json!([]));
    drop((pat, quinn));
    cancel.cancel();
}

#[tokio::test]
async fn moderators_with_the_record_permission_record_from_the_call() {
    let cancel = CancellationToken::new();
    let (_rtcd, _dir, proxy) = setup(&cancel).await;
    let addr = proxy.addr();
    let room = "standup";
    let pat: Participant = publisher(addr, &user("pat", room, "member"), room, "pat").await;
    let mut mia = client(addr, &recorder("mia", room, "moderator"), room).await;
    let mut max = client(addr, &user("max", room, "moderator"), room).await;
    let mut meg = client(addr, &recorder("meg", room, "member"), room).await;

    // A moderator without `record`, and a member with it: forbidden.
    for (c, who) in [(&mut max, "max"), (&mut meg, "meg")] {
        let answer = moderate(c, json!({"action": "start_recording"})).await;
        assert_eq!(
            (&answer["type"], &answer["code"]),
            (&json!("error"), &json!("forbidden")),
            "{who}: {answer}"
        );
    }
    let answer = moderate(
        &mut max,
        json!({"action": "set_policy", "policy": {"record": true}}),
    )
    .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");

    let answer = moderate(&mut mia, json!({"action": "start_recording"})).await;
    assert_eq!(answer["type"], "moderated", "{answer}");
    assert_eq!(answer["action"], "start_recording");
    let id = answer["recording_id"].as_str().unwrap().to_owned();
    for c in [&mut max, &mut meg] {
        let m = c.until("recording_started").await.unwrap();
        assert_eq!(
            (&m["recording_id"], &m["started_by"]),
            (&json!(id), &json!("mia"))
        );
    }
    let answer = moderate(&mut mia, json!({"action": "start_recording"})).await;
    assert_eq!(answer["code"], "already_recording", "{answer}");
    // Not a moderator's to stop without `record` either.
    let answer = moderate(&mut max, json!({"action": "stop_recording"})).await;
    assert_eq!(answer["code"], "forbidden", "{answer}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let answer = moderate(&mut mia, json!({"action": "stop_recording"})).await;
    assert_eq!(
        (&answer["type"], &answer["recording_id"]),
        (&json!("moderated"), &json!(id)),
        "{answer}"
    );
    for c in [&mut max, &mut meg] {
        let m = c.until("recording_stopped").await.unwrap();
        assert_eq!(m["reason"], "requested", "{m}");
    }
    let (status, got) = api(
        addr,
        "GET",
        &format!("/api/v1/rooms/standup/recordings/{id}"),
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["started_by"], "mia");
    assert!(!got["files"].as_array().unwrap().is_empty(), "{got}");
    drop(pat);
    cancel.cancel();
}

/// The `joined` of a raw client joining `room` (panics on any other outcome).
async fn joined(proxy: SocketAddr, token: &str, room: &str) -> (Client, Value) {
    match join(proxy, Some(token), room).await.unwrap() {
        (c, rtcd_e2e::proxy::JoinOutcome::Joined(m)) => (c, m),
        (_, other) => panic!("{room}: not joined: {other:?}"),
    }
}

/// docs/e2ee.md: an end-to-end encrypted room is never recorded, whichever path asks (the
/// API, a moderator, the policy's `record` at a join, a policy setting both), `joined` says
/// the room is encrypted, and `e2ee` changes only while the room is empty.
#[tokio::test]
async fn an_encrypted_room_refuses_recording_from_every_path() {
    let cancel = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let mut env: Vec<(&str, &str)> = RECORDING.to_vec();
    env.push(("RTCD_RECORDING_DIRECTORY", &path));
    let rtcd = TestRtcd::start(&env).await.unwrap();
    rtcd.register_key("tenant-a", &key_for("tenant-a"))
        .await
        .unwrap();
    // "recorded" is configured to record from its first join.
    let proxy = replica_with(&rtcd, "tenant-a", &cancel, |c| {
        c.rooms.overrides.insert(
            "recorded".into(),
            rtcd_proxy::rooms::RoomPolicy {
                record: Some(true),
                ..Default::default()
            },
        );
    })
    .await;
    let addr = proxy.addr();
    let policy = |room: &str| format!("/api/v1/rooms/{room}/policy");

    // Marked before anyone comes.
    let (status, body) = api(
        addr,
        "POST",
        &policy("secret"),
        Some(&admin()),
        Some(json!({"e2ee": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["stored"]["e2ee"], &body["effective"]["e2ee"]),
        (&json!(true), &json!(true)),
        "{body}"
    );
    // Recording by policy cannot go with it: refused, nothing stored.
    refused(
        addr,
        "POST",
        &policy("secret"),
        Some(json!({"record": true})),
        "encrypted",
    )
    .await;
    // Nor over the configuration's `record` (the proxy knows it; rtcd has not seen the room).
    refused(
        addr,
        "POST",
        &policy("recorded"),
        Some(json!({"e2ee": true})),
        "encrypted",
    )
    .await;

    // Everyone entering is told; an ordinary room says false.
    let pat = publisher(addr, &user("pat", "secret", "member"), "secret", "pat").await;
    let (mut mia, m) = joined(addr, &recorder("mia", "secret", "moderator"), "secret").await;
    assert_eq!(m["e2ee"], json!(true), "{m}");
    let (_plain, m) = joined(addr, &user("pia", "plain", "member"), "plain").await;
    assert_eq!(m["e2ee"], json!(false), "{m}");

    // The API and a moderator with `record` are refused.
    refused(
        addr,
        "POST",
        "/api/v1/rooms/secret/recordings",
        None,
        "encrypted",
    )
    .await;
    let answer = moderate(&mut mia, json!({"action": "start_recording"})).await;
    assert_eq!(answer["code"], "encrypted", "{answer}");
    let answer = moderate(
        &mut mia,
        json!({"action": "set_policy", "policy": {"record": true}}),
    )
    .await;
    assert_eq!(answer["code"], "encrypted", "{answer}");
    // Not switched off while people are in the room, by the API or a moderator.
    let answer = moderate(
        &mut mia,
        json!({"action": "set_policy", "policy": {"e2ee": false}}),
    )
    .await;
    assert_eq!(answer["code"], "e2ee_locked", "{answer}");
    refused(
        addr,
        "POST",
        &policy("secret"),
        Some(json!({"e2ee": false})),
        "e2ee_locked",
    )
    .await;
    // Nor switched on in a room with people in it.
    refused(
        addr,
        "POST",
        &policy("plain"),
        Some(json!({"e2ee": true})),
        "e2ee_locked",
    )
    .await;
    let (status, body) = api(addr, "GET", &policy("secret"), Some(&admin()), None).await;
    assert_eq!(
        (status, &body["effective"]["e2ee"]),
        (200, &json!(true)),
        "{body}"
    );

    // The policy's `record` at a join records nothing in a room stored encrypted: a proxy
    // without "recorded"'s override stores e2ee for it (rtcd has not seen the room, so the
    // combination is only seen once the other proxy's join brings its `record`).
    let bare = replica_with(&rtcd, "tenant-a", &cancel, |_| {}).await;
    let (status, body) = api(
        bare.addr(),
        "POST",
        &policy("recorded"),
        Some(&admin()),
        Some(json!({"e2ee": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let quinn = publisher(
        addr,
        &user("quinn", "recorded", "member"),
        "recorded",
        "quinn",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Nothing was recorded.
    for room in ["secret", "recorded"] {
        let (status, body) = api(
            addr,
            "GET",
            &format!("/api/v1/rooms/{room}/recordings"),
            Some(&admin()),
            None,
        )
        .await;
        assert_eq!(
            (status, &body["recordings"]),
            (200, &json!([])),
            "{room}: {body}"
        );
    }

    // Once everybody left, it may be switched off.
    for p in [&pat, &quinn] {
        p.send(rtcd_proto::v1::client_signal::Signal::Leave(
            Default::default(),
        ))
        .await
        .unwrap();
    }
    mia.send(&json!({"type": "leave"})).await.unwrap();
    drop((pat, quinn, mia));
    // Leaving is relayed at once; a session whose connection merely broke would be parked
    // for rtc.resume_grace_seconds (15 s) and still count.
    let mut last = (0, Value::Null);
    for _ in 0..100 {
        last = api(
            addr,
            "POST",
            &policy("secret"),
            Some(&admin()),
            Some(json!({"e2ee": false})),
        )
        .await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 200, "{}", last.1);
    assert_eq!(last.1["effective"]["e2ee"], json!(false), "{}", last.1);
    cancel.cancel();
}

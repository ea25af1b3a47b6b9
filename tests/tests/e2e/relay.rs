//! The proxy's rtcd relay against real rtcd daemons: host discovery, readiness, placement.
//! (Media through proxy + rtcd is covered once rtcd's signaling service lands.)

use std::time::{Duration, Instant};

use rtcd::auth::{ClientId, Principal, Secret};
use rtcd_e2e::daemon::{TestRtcd, key_for};
use rtcd_e2e::media::{Participant, keeps_flowing};
use rtcd_proxy::config::RtcdConfig;
use rtcd_proxy::placement::HostHealth;
use rtcd_proxy::relay::rtcd::RtcdRelay;
use tokio_util::sync::CancellationToken;

/// Registers client `id` (key [`key_for`]`(id)`) in `rtcd`, as an operator would for a proxy.
async fn register_proxy(rtcd: &rtcd::Rtcd, id: &str) {
    rtcd.auth()
        .register(
            Some(&Principal::Admin),
            ClientId::parse(id).unwrap(),
            Secret::new(key_for(id)),
            "127.0.0.1".parse().unwrap(),
        )
        .await
        .unwrap();
}

/// A port free on both 127.0.0.2 and 127.0.0.3, so two rtcd hosts can share one API port as
/// they would on two machines.
fn shared_port() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok()
            && rtcd_e2e::proxy::claim_port(port)
        {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

async fn host(dir: &std::path::Path, ip: &str, port: u16) -> TestRtcd {
    let addr = format!("{ip}:{port}");
    let d = TestRtcd::start_in(dir, &[("RTCD_API_HTTP_LISTEN_ADDRESS", &addr)])
        .await
        .unwrap();
    register_proxy(&d.rtcd, "proxy-1").await;
    d
}

/// One of several rtcd hosts on `ip` with the same (API, gRPC) ports as the others, as on
/// separate machines; no drain on stop; `proxy-1` registered.
async fn peer_host(
    dir: &std::path::Path,
    ip: &str,
    (api, grpc): (u16, u16),
    extra: &[(&str, &str)],
) -> TestRtcd {
    let (api_addr, grpc_addr) = (format!("{ip}:{api}"), format!("{ip}:{grpc}"));
    let mut env = vec![
        ("RTCD_API_HTTP_LISTEN_ADDRESS", api_addr.as_str()),
        ("RTCD_GRPC_LISTEN_ADDRESS", grpc_addr.as_str()),
        ("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0"),
    ];
    env.extend_from_slice(extra);
    let d = TestRtcd::start_in(dir, &env).await.unwrap();
    register_proxy(&d.rtcd, "proxy-1").await;
    d
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rooms_spread_over_ready_hosts_and_leave_a_draining_one() {
    let port = shared_port();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host(dir_a.path(), "127.0.0.2", port).await;
    let b = host(dir_b.path(), "127.0.0.3", port).await;
    let config = RtcdConfig {
        // gRPC port 9 (discard): these tests exercise discovery and health, not streams.
        url: "http://127.0.0.2:9, http://127.0.0.3:9".into(),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        api_port: port,
        health_interval_seconds: 1,
        // Placement predicted by the test: the shared machine's CPU must not weight it.
        cpu_weighted_placement: false,
        ..RtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let relay = RtcdRelay::start(&config, cancel.clone()).await.unwrap();
    let hosts = relay.hosts();
    let snapshot = hosts.snapshot();
    assert_eq!(snapshot.len(), 2, "{snapshot:?}");
    assert!(
        snapshot.iter().all(|(_, h)| *h == HostHealth::Ready),
        "{snapshot:?}"
    );

    let rooms: Vec<String> = (0..200).map(|i| format!("room-{i}")).collect();
    let placed: Vec<String> = rooms.iter().map(|r| hosts.place(r).unwrap()).collect();
    let on_a = placed.iter().filter(|h| h.starts_with("127.0.0.2")).count();
    assert!(
        (50..=150).contains(&on_a),
        "rooms spread over both hosts: {on_a} of 200 on A"
    );
    for (room, host) in rooms.iter().zip(&placed) {
        assert_eq!(
            hosts.place(room).as_ref(),
            Some(host),
            "placement is stable"
        );
    }

    // A drains (its /readyz goes away): its rooms move to B, B's rooms stay.
    a.stop().await;
    eventually("host A marked unready", || {
        hosts
            .snapshot()
            .iter()
            .any(|(k, h)| k.starts_with("127.0.0.2") && *h == HostHealth::Unready)
    })
    .await;
    for (room, host) in rooms.iter().zip(&placed) {
        let now = hosts.place(room).unwrap();
        assert!(now.starts_with("127.0.0.3"), "{room} on {now}");
        if host.starts_with("127.0.0.3") {
            assert_eq!(&now, host);
        }
    }
    b.stop().await;
    eventually("no host ready", || hosts.place("room-0").is_none()).await;
    cancel.cancel();
}

/// Moderator claims (every permission) for `sub` in `room`.
fn moderator(sub: &str, room: &str) -> String {
    let mut claims = rtcd_e2e::proxy::claims(sub, room);
    claims["role"] = "moderator".into();
    rtcd_e2e::proxy::hs_token(&claims)
}

/// A proxy relaying to `rtcd` as client `proxy-1`.
async fn proxy_for(rtcd: &TestRtcd, cancel: &CancellationToken) -> rtcd_proxy::Proxy {
    register_proxy(&rtcd.rtcd, "proxy-1").await;
    let mut config = rtcd_e2e::proxy::base_config();
    config.rtcd = RtcdConfig {
        url: format!("http://{}", rtcd.grpc_addr()),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        api_port: rtcd.rtcd.http_addr().port(),
        health_interval_seconds: 1,
        ..RtcdConfig::default()
    };
    let relay = RtcdRelay::start(&config.rtcd, cancel.clone())
        .await
        .unwrap();
    rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap()
}

#[tokio::test]
async fn participants_exchange_audio_and_video_through_proxy_and_rtcd() {
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    let cancel = CancellationToken::new();
    let proxy = proxy_for(&rtcd, &cancel).await;
    let ws = format!("ws://{}/ws", proxy.addr());
    let names = ["alice", "bob", "carol"];
    let mut people = Vec::new();
    for name in names {
        let p = Participant::join_via_proxy(&ws, &moderator(name, "standup"), "standup", name)
            .await
            .unwrap();
        p.add_track("audio").await.unwrap();
        p.add_track("video").await.unwrap();
        p.renegotiate().await.unwrap();
        people.push(p);
    }
    eventually("everyone receives the others' audio and video", || {
        people.iter().all(|p| {
            names
                .iter()
                .filter(|n| **n != p.session)
                .all(|other| p.received(other, "audio") >= 25 && p.received(other, "video") >= 25)
        })
    })
    .await;
    // And keeps arriving: every flow grows in each of three 1 s windows.
    for p in &people {
        let flows: Vec<String> = names
            .iter()
            .filter(|n| **n != p.session)
            .flat_map(|o| [format!("{o}/audio"), format!("{o}/video")])
            .collect();
        let flows: Vec<&str> = flows.iter().map(String::as_str).collect();
        keeps_flowing(p, &flows, Duration::from_secs(3), Duration::from_secs(1))
            .await
            .unwrap();
    }
    for p in &people {
        assert_eq!(
            p.received(&p.session, "audio"),
            0,
            "no echo of one's own tracks"
        );
        for (flow, stats) in p.flows() {
            assert!(
                stats.lost() <= stats.packets / 10 + 2,
                "{} lost too much on {flow}: {stats:?}",
                p.session
            );
        }
    }
    // Operators see the relay: join and offer->answer latency, and the hosts' health.
    let metrics_addr = proxy.metrics_addr().expect("internal listener");
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "proxy_relay_join_seconds_count 3",
        "proxy_rtcd_hosts{health=\"ready\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    assert!(
        !text.contains("proxy_relay_answer_seconds_count 0"),
        "answers are timed"
    );
    // rtcd's events reach the clients through the proxy.
    assert!(people[0].saw(|e| matches!(e, rtcd_proto::v1::server_signal::Signal::TrackPublished(t) if t.user_id == "bob")));
    for p in &people {
        p.close().await;
    }
    cancel.cancel();
}

#[tokio::test]
async fn a_lost_rtcd_is_reported_to_its_sessions() {
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    let cancel = CancellationToken::new();
    let proxy = proxy_for(&rtcd, &cancel).await;
    let mut client = rtcd_e2e::proxy::Client::connect(proxy.addr(), "", &[])
        .await
        .unwrap();
    client
        .send(&serde_json::json!({"type": "join", "room": "r1", "token": moderator("dave", "r1")}))
        .await
        .unwrap();
    let joined = client.expect("joined").await.unwrap();
    assert_eq!(joined["media"], true);
    let (rtcd_daemon, _dir) = rtcd.split();
    rtcd_daemon.shutdown().await;
    let lost = client.expect("media_server_lost").await.unwrap();
    assert!(
        lost["message"].as_str().unwrap().contains("media server"),
        "{lost}"
    );
    let (code, label, _) = client.closed().await.unwrap();
    assert_eq!((code, label.as_str()), (4008, "media_server_lost"));

    // With no rtcd left, a new join gets a clear error instead of hanging.
    let mut late = rtcd_e2e::proxy::Client::connect(proxy.addr(), "", &[])
        .await
        .unwrap();
    late.send(&serde_json::json!({"type": "join", "room": "r2", "token": moderator("erin", "r2")}))
        .await
        .unwrap();
    late.expect("joined").await.unwrap();
    let error = late.expect("error").await.unwrap();
    assert_eq!(error["code"], "media_unavailable", "{error}");
    cancel.cancel();
}

#[tokio::test]
async fn relay_speaks_tls_to_rtcd_and_media_still_flows() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ca.cert.pem()).unwrap();
    std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let rtcd = TestRtcd::start(&[
        ("RTCD_GRPC_TLS_CERT_FILE", cert_s),
        ("RTCD_GRPC_TLS_KEY_FILE", key_s),
        ("RTCD_API_HTTP_TLS_CERT_FILE", cert_s),
        ("RTCD_API_HTTP_TLS_KEY_FILE", key_s),
    ])
    .await
    .unwrap();
    register_proxy(&rtcd.rtcd, "proxy-tls").await;
    let mut config = rtcd_e2e::proxy::base_config();
    config.rtcd = RtcdConfig {
        url: format!("https://{}", rtcd.grpc_addr()),
        client_id: "proxy-tls".into(),
        auth_key: Secret::new(key_for("proxy-tls")),
        api_port: rtcd.rtcd.http_addr().port(),
        ca_file: cert_s.to_owned(),
        // The certificate names the service, not the address.
        server_name: "localhost".into(),
        health_interval_seconds: 1,
        ..RtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let relay = RtcdRelay::start(&config.rtcd, cancel.clone())
        .await
        .unwrap();
    assert!(
        relay
            .hosts()
            .snapshot()
            .iter()
            .all(|(_, h)| *h == HostHealth::Ready),
        "health probe over HTTPS"
    );
    let proxy = rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap();
    let ws = format!("ws://{}/ws", proxy.addr());
    let a = Participant::join_via_proxy(&ws, &moderator("ann", "secure"), "secure", "ann")
        .await
        .unwrap();
    let b = Participant::join_via_proxy(&ws, &moderator("ben", "secure"), "secure", "ben")
        .await
        .unwrap();
    for p in [&a, &b] {
        p.add_track("audio").await.unwrap();
        p.renegotiate().await.unwrap();
    }
    eventually("audio both ways over a TLS relay", || {
        a.received("ben", "audio") >= 20 && b.received("ann", "audio") >= 20
    })
    .await;
    for (p, other) in [(&a, "ben/audio"), (&b, "ann/audio")] {
        keeps_flowing(p, &[other], Duration::from_secs(3), Duration::from_secs(1))
            .await
            .unwrap();
    }
    a.close().await;
    b.close().await;
    cancel.cancel();
}

#[tokio::test]
async fn a_host_name_is_resolved_into_hosts() {
    // `localhost` comes from /etc/hosts: the name path of discovery (resolve, one host per
    // address, health, placement) without a DNS server.
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    register_proxy(&rtcd.rtcd, "proxy-1").await;
    let config = RtcdConfig {
        url: format!("http://localhost:{}", rtcd.grpc_addr().port()),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        api_port: rtcd.rtcd.http_addr().port(),
        health_interval_seconds: 1,
        resolve_interval_seconds: 1,
        ..RtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let relay = RtcdRelay::start(&config, cancel.clone()).await.unwrap();
    let expected = format!("127.0.0.1:{}", rtcd.grpc_addr().port());
    let snapshot = relay.hosts().snapshot();
    assert!(
        snapshot
            .iter()
            .any(|(host, health)| *host == expected && *health == HostHealth::Ready),
        "{snapshot:?}"
    );
    assert!(
        snapshot
            .iter()
            .all(|(host, health)| *host == expected || *health != HostHealth::Ready),
        "only the address rtcd listens on is ready: {snapshot:?}"
    );
    assert_eq!(relay.hosts().place("any-room"), Some(expected));
    // A join through the named host reaches rtcd.
    let mut proxy_config = rtcd_e2e::proxy::base_config();
    proxy_config.rtcd = config;
    let proxy = rtcd_e2e::proxy::start_with_relay(proxy_config, Some(relay))
        .await
        .unwrap();
    let mut client = rtcd_e2e::proxy::Client::connect(proxy.addr(), "", &[])
        .await
        .unwrap();
    client.send(&serde_json::json!({"type": "join", "room": "named", "token": moderator("gus", "named")})).await.unwrap();
    assert_eq!(client.expect("joined").await.unwrap()["media"], true);
    cancel.cancel();
}

#[tokio::test]
async fn a_revoked_bearer_token_is_replaced_by_a_fresh_login() {
    let rtcd = TestRtcd::start(&[]).await.unwrap();
    let cancel = CancellationToken::new();
    let proxy = proxy_for(&rtcd, &cancel).await;
    let join = |room: &'static str, user: &'static str| {
        let addr = proxy.addr();
        async move {
            let mut client = rtcd_e2e::proxy::Client::connect(addr, "", &[])
                .await
                .unwrap();
            client.send(&serde_json::json!({"type": "join", "room": room, "token": moderator(user, room)})).await.unwrap();
            client.expect("joined").await.unwrap()["media"].clone()
        }
    };
    assert_eq!(join("before", "ivy").await, true);
    // Unregistering revokes every bearer token of the client; the operator re-registers it
    // with the same key. The relay's cached token is now refused (UNAUTHENTICATED): it must
    // log in again and retry, invisibly to the user.
    let id = ClientId::parse("proxy-1").unwrap();
    rtcd.rtcd
        .auth()
        .unregister(&Principal::Admin, id, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    register_proxy(&rtcd.rtcd, "proxy-1").await;
    assert_eq!(join("after", "jay").await, true);
    let metrics = rtcd.rtcd.metrics().encode();
    for line in [
        "rtcd_auth_attempts_total{method=\"bearer\",outcome=\"failed\"} 1",
        "rtcd_auth_attempts_total{method=\"login\",outcome=\"ok\"} 2",
    ] {
        assert!(
            metrics.contains(line),
            "{line} missing: the relay must retry once with a fresh login\n{metrics}"
        );
    }
    cancel.cancel();
}

#[tokio::test]
async fn relay_presents_its_client_certificate_when_rtcd_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    super::grpc_tls::make_pki(dir.path()).unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("server.pem"), file("server.key"));
    let rtcd = TestRtcd::start(&[
        ("RTCD_GRPC_TLS_CERT_FILE", &cert),
        ("RTCD_GRPC_TLS_KEY_FILE", &key),
        ("RTCD_GRPC_TLS_CLIENT_CA_FILE", &ca),
        ("RTCD_API_HTTP_TLS_CERT_FILE", &cert),
        ("RTCD_API_HTTP_TLS_KEY_FILE", &key),
    ])
    .await
    .unwrap();
    register_proxy(&rtcd.rtcd, "proxy-1").await;
    let relay_config = |with_certificate: bool| RtcdConfig {
        url: format!("https://{}", rtcd.grpc_addr()),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        api_port: rtcd.rtcd.http_addr().port(),
        ca_file: ca.clone(),
        server_name: "localhost".into(),
        client_cert_file: if with_certificate {
            file("proxy.pem")
        } else {
            String::new()
        },
        client_key_file: if with_certificate {
            file("proxy.key")
        } else {
            String::new()
        },
        health_interval_seconds: 1,
        ..RtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    for (with_certificate, media) in [(true, true), (false, false)] {
        let mut config = rtcd_e2e::proxy::base_config();
        config.rtcd = relay_config(with_certificate);
        let relay = RtcdRelay::start(&config.rtcd, cancel.clone())
            .await
            .unwrap();
        let proxy = rtcd_e2e::proxy::start_with_relay(config, Some(relay))
            .await
            .unwrap();
        let mut client = rtcd_e2e::proxy::Client::connect(proxy.addr(), "", &[])
            .await
            .unwrap();
        client.send(&serde_json::json!({"type": "join", "room": "mtls", "token": moderator("kim", "mtls")})).await.unwrap();
        let joined = client.expect("joined").await.unwrap();
        assert_eq!(
            joined["media"], media,
            "client certificate presented: {with_certificate}"
        );
        if !media {
            assert_eq!(
                client.expect("error").await.unwrap()["code"],
                "media_unavailable"
            );
        }
        proxy.shutdown().await;
    }
    cancel.cancel();
}

/// Issue 14 (failover, first step): when the rtcd hosting a room is gone, a rejoin is placed on
/// a live host at once. The proxy marks a host it cannot reach unready itself (passive health)
/// and places the join again, instead of waiting for the next `/readyz` probe (here a minute
/// away) and answering `media_unavailable` meanwhile.
#[tokio::test]
async fn a_rejoin_after_a_host_is_gone_lands_on_a_live_host_before_the_next_probe() {
    let (api, grpc) = (shared_port(), shared_port());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = peer_host(dir_a.path(), "127.0.0.2", (api, grpc), &[]).await;
    let b = peer_host(dir_b.path(), "127.0.0.3", (api, grpc), &[]).await;
    let mut config = rtcd_e2e::proxy::base_config();
    config.rtcd = RtcdConfig {
        url: format!("http://127.0.0.2:{grpc}, http://127.0.0.3:{grpc}"),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        api_port: api,
        // No probe during the test: only the relay's own failures can move the room.
        health_interval_seconds: 600,
        // Placement predicted by the test: the shared machine's CPU must not weight it.
        cpu_weighted_placement: false,
        ..RtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let relay = RtcdRelay::start(&config.rtcd, cancel.clone())
        .await
        .unwrap();
    let hosts = relay.clone();
    let proxy = rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap();
    let room = (0..100)
        .map(|i| format!("room-{i}"))
        .find(|r| {
            hosts
                .hosts()
                .place(r)
                .is_some_and(|h| h.starts_with("127.0.0.2"))
        })
        .unwrap();
    let addr = proxy.addr();
    let join = |who: &'static str| {
        let room = room.clone();
        async move {
            let mut client = rtcd_e2e::proxy::Client::connect(addr, "", &[])
                .await
                .unwrap();
            client
                .send(&serde_json::json!({"type": "join", "room": room, "token": moderator(who, &room)}))
                .await
                .unwrap();
            let joined = client.expect("joined").await.unwrap();
            (client, joined)
        }
    };
    let (mut first, joined) = join("dave").await;
    assert_eq!(joined["media"], true, "{joined}");
    // A ban made while the room is on A is recorded on every host, so it still holds when
    // the room moves.
    let t = rtcd_e2e::proxy::now();
    let server = rtcd_e2e::proxy::hs_token(&serde_json::json!({
        "iss": rtcd_e2e::proxy::ISSUER, "aud": rtcd_e2e::proxy::AUDIENCE, "sub": "backend",
        "iat": t, "exp": t + 300, "api": ["rooms:admin"]}));
    let banned = reqwest::Client::new()
        .post(format!(
            "http://{addr}/api/v1/rooms/{room}/participants/remove"
        ))
        .bearer_auth(&server)
        .json(&serde_json::json!({"identity": "erin", "ban_seconds": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(banned.status().as_u16(), 200);

    // Host A goes away; the proxy still believes it ready (no probe for minutes).
    a.stop().await;
    let (code, _, _) = first.closed().await.unwrap();
    assert_eq!(code, 4008);
    assert!(
        hosts
            .hosts()
            .snapshot()
            .iter()
            .all(|(_, h)| *h == HostHealth::Ready),
        "no probe ran yet"
    );
    let began = Instant::now();
    let (_second, joined) = join("dave").await;
    assert_eq!(joined["media"], true, "rejoined with media: {joined}");
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "the rejoin waited {:?}",
        began.elapsed()
    );
    let now = hosts.hosts().place(&room).unwrap();
    assert!(now.starts_with("127.0.0.3"), "{room} now on {now}");
    let erin = rtcd_e2e::proxy::join_code(addr, &moderator("erin", &room), &room)
        .await
        .unwrap();
    assert_eq!(erin, 4012, "the ban made on A holds on B");
    assert!(
        hosts
            .hosts()
            .snapshot()
            .iter()
            .any(|(k, h)| k.starts_with("127.0.0.2") && *h == HostHealth::Unready),
        "host A is marked unready by the failure itself"
    );
    proxy.shutdown().await;
    b.stop().await;
    cancel.cancel();
}

/// Relay settings for the two hosts of the capacity test (CPU left out: the shared test
/// machine's CPU must not weight what the test predicts).
fn config_for_levels(grpc: u16, api: u16) -> RtcdConfig {
    RtcdConfig {
        url: format!("http://127.0.0.2:{grpc}, http://127.0.0.3:{grpc}"),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        api_port: api,
        health_interval_seconds: 600,
        cpu_weighted_placement: false,
        ..RtcdConfig::default()
    }
}

#[tokio::test]
async fn a_host_at_capacity_gets_no_new_rooms_while_its_rooms_keep_growing_where_they_are() {
    let (api, grpc) = (shared_port(), shared_port());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let capacity = |n: &'static str| [("RTCD_RTC_MAX_SESSIONS", n)];
    let a = peer_host(dir_a.path(), "127.0.0.2", (api, grpc), &capacity("1")).await;
    let b = peer_host(dir_b.path(), "127.0.0.3", (api, grpc), &capacity("0")).await;
    let mut config = rtcd_e2e::proxy::base_config();
    // No probe during the test: the hosts' own refusals and the room lookup must do it.
    config.rtcd = config_for_levels(grpc, api);
    let cancel = CancellationToken::new();
    let relay = RtcdRelay::start(&config.rtcd, cancel.clone())
        .await
        .unwrap();
    let hosts = relay.clone();
    let proxy = rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap();
    eventually("both hosts ready", || {
        let snapshot = hosts.hosts().snapshot();
        snapshot.len() == 2 && snapshot.iter().all(|(_, h)| *h == HostHealth::Ready)
    })
    .await;
    let rooms_on_a: Vec<String> = (0..200)
        .map(|i| format!("room-{i}"))
        .filter(|r| {
            hosts
                .hosts()
                .place(r)
                .is_some_and(|h| h.starts_with("127.0.0.2"))
        })
        .take(2)
        .collect();
    let addr = proxy.addr();
    let join = |who: &'static str, room: String| async move {
        let mut client = rtcd_e2e::proxy::Client::connect(addr, "", &[])
            .await
            .unwrap();
        client
            .send(
                &serde_json::json!({"type": "join", "room": room, "token": moderator(who, &room)}),
            )
            .await
            .unwrap();
        let joined = client.expect("joined").await.unwrap();
        if joined["media"] != true {
            panic!("{who}: no media: {:?}", client.next().await);
        }
        client
    };
    let calls = |d: &TestRtcd| d.rtcd.sfu().call_count();
    let sessions = |d: &TestRtcd| d.rtcd.sfu().session_count();

    // The first room goes where rendezvous puts it: A, which is then at its capacity of 1.
    let _dave = join("dave", rooms_on_a[0].clone()).await;
    assert_eq!((calls(&a), calls(&b)), (1, 0));
    // A second new room that rendezvous would also put on A: A refuses to open it, and the
    // relay places it on B instead (no probe has told it A is full).
    let _erin = join("erin", rooms_on_a[1].clone()).await;
    assert_eq!((calls(&a), calls(&b)), (1, 1), "the new room went to B");
    // The first room keeps growing on A, past its capacity, found where it is although A is
    // now counted full for new rooms.
    let _frank = join("frank", rooms_on_a[0].clone()).await;
    assert_eq!(
        (sessions(&a), sessions(&b)),
        (2, 1),
        "frank joined dave's room on A"
    );
    // And the second room keeps growing on B, although rendezvous alone says A: the relay
    // asks the hosts where the room is before placing.
    let _gina = join("gina", rooms_on_a[1].clone()).await;
    assert_eq!(
        (sessions(&a), sessions(&b)),
        (2, 2),
        "gina joined erin's room on B"
    );
    assert_eq!(a.rtcd.metrics().new_rooms_refused.get(), 1);
    // A reports itself over capacity (2 of 1; sampled once a second), which the next probe
    // turns into "full".
    let mut system = serde_json::Value::Null;
    for _ in 0..50 {
        system = reqwest::get(format!("http://127.0.0.2:{api}/system"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if system["capacity_used"] == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(system["capacity_used"], 2.0, "{system}");
    assert!(
        system["load"].as_f64().is_some_and(|l| l >= 2.0),
        "{system}"
    );
    // Another replica starting now reads it in its first probe: A is full, B idle, so A gets
    // no new rooms from it either.
    let other = RtcdRelay::start(&config_for_levels(grpc, api), cancel.clone())
        .await
        .unwrap();
    let levels = other.hosts().levels();
    let level = |ip: &str| {
        levels
            .iter()
            .find(|(k, _)| k.starts_with(ip))
            .map(|(_, l)| *l)
    };
    assert_eq!(
        (level("127.0.0.2"), level("127.0.0.3")),
        (Some(rtcd_proxy::placement::FULL), Some(0)),
        "{levels:?}"
    );
    assert!(rooms_on_a.iter().all(|r| {
        other
            .hosts()
            .place(r)
            .is_some_and(|h| h.starts_with("127.0.0.3"))
    }));
    cancel.cancel();
    drop(proxy);
    a.stop().await;
    b.stop().await;
}

/// Issue 14 #3: a room opened on two hosts at once (what two replicas placing its first joins
/// with different views of the hosts' loads can do) is moved onto one: the next join through
/// a proxy finds both halves, goes to the host every replica agrees on (the smaller key), and
/// the other host's sessions of the room are closed with "moved" so that they rejoin there.
#[tokio::test]
async fn a_room_opened_on_two_hosts_at_once_is_moved_onto_one() {
    use rtcd::sfu::{CallId, TenantId};
    let (api, grpc) = (shared_port(), shared_port());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = peer_host(dir_a.path(), "127.0.0.2", (api, grpc), &[]).await;
    let b = peer_host(dir_b.path(), "127.0.0.3", (api, grpc), &[]).await;
    // The split, made directly over rtcd's signaling with the proxy's own credentials.
    let auth = rtcd_e2e::media::basic("proxy-1", &key_for("proxy-1"));
    let permissions = rtcd_e2e::media::all_permissions();
    let on_a = Participant::join(
        &mut a.client().await.unwrap(),
        Some(&auth),
        "split",
        "half-a",
        permissions,
    )
    .await
    .unwrap();
    let on_b = Participant::join(
        &mut b.client().await.unwrap(),
        Some(&auth),
        "split",
        "half-b",
        permissions,
    )
    .await
    .unwrap();
    let (tenant, call) = (TenantId::new("proxy-1"), CallId::new("split"));
    assert!(a.rtcd.sfu().has_call(&tenant, &call) && b.rtcd.sfu().has_call(&tenant, &call));

    let mut config = rtcd_e2e::proxy::base_config();
    config.rtcd = RtcdConfig {
        url: format!("http://127.0.0.2:{grpc}, http://127.0.0.3:{grpc}"),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        api_port: api,
        health_interval_seconds: 1,
        ..RtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let relay = RtcdRelay::start(&config.rtcd, cancel.clone())
        .await
        .unwrap();
    let proxy = rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap();
    let token = moderator("frank", "split");
    let (_frank, outcome) = rtcd_e2e::proxy::join(proxy.addr(), Some(&token), "split")
        .await
        .unwrap();
    assert!(
        matches!(&outcome, rtcd_e2e::proxy::JoinOutcome::Joined(m) if m["media"] == true),
        "{outcome:?}"
    );
    eventually("B's half is moved", || {
        on_b.saw(|e| {
            matches!(e, rtcd_proto::v1::server_signal::Signal::SessionClosed(c) if c.reason == "moved")
        })
    })
    .await;
    eventually("the room is on A only", || {
        a.rtcd.sfu().has_call(&tenant, &call) && !b.rtcd.sfu().has_call(&tenant, &call)
    })
    .await;
    // A's half and the newcomer are together: two sessions there, and A's half was not touched.
    assert_eq!(a.rtcd.sfu().session_count(), 2);
    assert!(!on_a.saw(|e| matches!(e, rtcd_proto::v1::server_signal::Signal::SessionClosed(_))));
    proxy.shutdown().await;
    cancel.cancel();
    a.stop().await;
    b.stop().await;
}

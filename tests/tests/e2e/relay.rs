//! The proxy's rtcd relay against real rtcd daemons: host discovery, readiness, placement.
//! (Media through proxy + rtcd is covered once rtcd's signaling service lands.)

use std::time::{Duration, Instant};

use rtcd::auth::{ClientId, Principal, Secret};
use rtcd_e2e::daemon::{TestRtcd, key_for};
use rtcd_proxy::config::{RtcdConfig, SecretString};
use rtcd_proxy::placement::HostHealth;
use rtcd_proxy::relay::rtcd::RtcdRelay;
use tokio_util::sync::CancellationToken;

/// A port free on both 127.0.0.2 and 127.0.0.3, so two rtcd hosts can share one API port as
/// they would on two machines.
fn shared_port() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
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
    d.rtcd
        .auth()
        .register(
            Some(&Principal::Admin),
            ClientId::parse("proxy-1").unwrap(),
            Secret::new(key_for("proxy-1")),
            "127.0.0.1".parse().unwrap(),
        )
        .await
        .unwrap();
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
        auth_key: SecretString::new(key_for("proxy-1")),
        api_port: port,
        health_interval_seconds: 1,
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

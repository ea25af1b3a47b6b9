//! The cluster mode (docs/cluster.md) end to end: rtcd hosts announcing themselves in a real
//! etcd, and the proxy's relay finding them there without DNS, and without waiting for a probe
//! (probes here run once an hour): a host that starts is placed on at once, a host that drains
//! is left at once and gone when it stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtcd::auth::{ClientId, Principal, Secret};
use rtcd_e2e::daemon::{TestRtcd, key_for};
use rtcd_e2e::etcd::EtcdCluster;
use rtcd_kit::cluster::{Etcd, HOSTS_PREFIX, HostAnnouncement, Settings, Store};
use rtcd_proxy::config::RtcdConfig;
use rtcd_proxy::placement::HostHealth;
use rtcd_proxy::relay::rtcd::RtcdRelay;
use tokio_util::sync::CancellationToken;

fn cluster_settings(etcd: &EtcdCluster) -> Settings {
    Settings {
        etcd_endpoints: etcd.endpoints(),
        key_prefix: "/e2e/".into(),
        ..Settings::default()
    }
}

/// An rtcd on `ip` (gRPC and API on ports of their own) announcing itself in `etcd`, with
/// `proxy-1` registered.
async fn announced_host(dir: &std::path::Path, ip: &str, etcd: &EtcdCluster) -> TestRtcd {
    let (api, grpc) = (format!("{ip}:0"), format!("{ip}:0"));
    let endpoints = etcd.endpoints().join(",");
    let d = TestRtcd::start_in(
        dir,
        &[
            ("RTCD_API_HTTP_LISTEN_ADDRESS", api.as_str()),
            ("RTCD_GRPC_LISTEN_ADDRESS", grpc.as_str()),
            ("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0"),
            ("RTCD_CLUSTER_ETCD_ENDPOINTS", endpoints.as_str()),
            ("RTCD_CLUSTER_KEY_PREFIX", "/e2e/"),
        ],
    )
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

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn health_of(relay: &RtcdRelay, ip: &str) -> Option<HostHealth> {
    relay
        .hosts()
        .snapshot()
        .into_iter()
        .find(|(k, _)| k.starts_with(ip))
        .map(|(_, h)| h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_announced_in_etcd_are_placed_on_at_once_and_left_when_they_drain() {
    let etcd = EtcdCluster::start(1).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = announced_host(dir_a.path(), "127.0.0.2", &etcd).await;

    // What rtcd wrote: its announcement, bound to a lease.
    let store = Etcd::connect(&cluster_settings(&etcd)).unwrap();
    let listed = store.list(HOSTS_PREFIX).await.unwrap().entries;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let announced = HostAnnouncement::from_value(&listed[0].value).unwrap();
    assert_eq!(
        (
            announced.address,
            announced.grpc_port,
            announced.api_port,
            announced.draining
        ),
        (
            "127.0.0.2".parse().unwrap(),
            a.grpc_addr().port(),
            a.rtcd.http_addr().port(),
            false
        )
    );
    assert!(
        listed[0].lease.is_some(),
        "an announcement dies with its host's lease"
    );

    let config = RtcdConfig {
        // The scheme only: in cluster mode the URL's host is not resolved (port 9: discard).
        url: "http://127.0.0.1:9".into(),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        // Once an hour: every change below must come from the announcements.
        health_interval_seconds: 3600,
        resolve_interval_seconds: 3600,
        cpu_weighted_placement: false,
        ..RtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let relay: Arc<RtcdRelay> =
        RtcdRelay::start_with(&config, &cluster_settings(&etcd), cancel.clone())
            .await
            .unwrap();
    assert_eq!(
        health_of(&relay, "127.0.0.2"),
        Some(HostHealth::Ready),
        "known and probed at start"
    );
    assert_eq!(relay.hosts().snapshot().len(), 1);

    // A host that starts later is found and takes rooms without a probe interval passing.
    let b = announced_host(dir_b.path(), "127.0.0.3", &etcd).await;
    let found = eventually("host B known and ready", Duration::from_secs(5), || {
        health_of(&relay, "127.0.0.3") == Some(HostHealth::Ready)
    })
    .await;
    let rooms: Vec<String> = (0..200).map(|i| format!("room-{i}")).collect();
    let on_b = rooms
        .iter()
        .filter(|r| relay.hosts().place(r).unwrap().starts_with("127.0.0.3"))
        .count();
    assert!(
        (50..=150).contains(&on_b),
        "rooms spread over both hosts: {on_b} of 200 on B"
    );

    // B stops: its drain is announced, then its announcement withdrawn; all rooms go to A.
    let stopped = Instant::now();
    b.stop().await;
    let gone = eventually("host B gone", Duration::from_secs(5), || {
        health_of(&relay, "127.0.0.3").is_none()
    })
    .await;
    assert!(
        rooms
            .iter()
            .all(|r| relay.hosts().place(r).unwrap().starts_with("127.0.0.2"))
    );
    let listed = store.list(HOSTS_PREFIX).await.unwrap().entries;
    assert_eq!(listed.len(), 1, "B withdrew its announcement: {listed:?}");
    eprintln!(
        "host B ready at the proxy {found:?} after it started; gone {gone:?} after its stop returned ({:?} after it began)",
        stopped.elapsed()
    );

    a.stop().await;
    eventually("no host left", Duration::from_secs(5), || {
        relay.hosts().snapshot().is_empty()
    })
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn a_host_that_cannot_name_its_address_is_refused_at_start() {
    let etcd = EtcdCluster::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints().join(",");
    let refused = TestRtcd::start_in(
        dir.path(),
        &[
            ("RTCD_GRPC_LISTEN_ADDRESS", "0.0.0.0:0"),
            ("RTCD_CLUSTER_ETCD_ENDPOINTS", endpoints.as_str()),
        ],
    )
    .await;
    let message = refused.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(message.contains("cluster.advertise_address"), "{message}");
}

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

pub(crate) fn cluster_settings(etcd: &EtcdCluster) -> Settings {
    Settings {
        etcd_endpoints: etcd.endpoints(),
        key_prefix: "/e2e/".into(),
        ..Settings::default()
    }
}

/// An rtcd on `ip` (gRPC and API on ports of their own) announcing itself in `etcd`, with
/// `proxy-1` registered (in the cluster's registry, by the first host started).
pub(crate) async fn announced_host(
    dir: &std::path::Path,
    ip: &str,
    etcd: &EtcdCluster,
) -> TestRtcd {
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
            ("RTCD_CLUSTER_LEASE_TTL_S", "2"),
            // Sessions end with their streams (no parking), so rooms end when their clients go.
            ("RTCD_RTC_RESUME_GRACE_SECONDS", "0"),
        ],
    )
    .await
    .unwrap();
    // The registry is the cluster's: the first host registers `proxy-1` for all of them.
    match d
        .rtcd
        .auth()
        .register(
            Some(&Principal::Admin),
            ClientId::parse("proxy-1").unwrap(),
            Secret::new(key_for("proxy-1")),
            "127.0.0.1".parse().unwrap(),
        )
        .await
    {
        Ok(()) | Err(rtcd::auth::AuthError::Conflict(_)) => {}
        Err(e) => panic!("registering proxy-1: {e}"),
    }
    d
}

pub(crate) async fn eventually(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> bool,
) -> Duration {
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

pub(crate) fn moderator(sub: &str, room: &str) -> String {
    let mut claims = rtcd_e2e::proxy::claims(sub, room);
    claims["role"] = "moderator".into();
    rtcd_e2e::proxy::hs_token(&claims)
}

/// A proxy replica in cluster mode (its relay reads the hosts and claims from `etcd`).
pub(crate) async fn replica(etcd: &EtcdCluster, cancel: &CancellationToken) -> rtcd_proxy::Proxy {
    let mut config = rtcd_e2e::proxy::base_config();
    config.rtcd = RtcdConfig {
        url: "http://127.0.0.1:9".into(),
        client_id: "proxy-1".into(),
        auth_key: Secret::new(key_for("proxy-1")),
        health_interval_seconds: 3600,
        // The shared machine's CPU must not weight placement: the spread below is rendezvous'.
        cpu_weighted_placement: false,
        ..RtcdConfig::default()
    };
    config.cluster = cluster_settings(etcd);
    let relay = RtcdRelay::start_with(&config.rtcd, &config.cluster, cancel.clone())
        .await
        .unwrap();
    rtcd_e2e::proxy::start_with_relay(config, Some(relay))
        .await
        .unwrap()
}

pub(crate) async fn joined(
    addr: std::net::SocketAddr,
    user: &str,
    room: &str,
) -> rtcd_e2e::proxy::Client {
    let (client, outcome) = rtcd_e2e::proxy::join(addr, Some(&moderator(user, room)), room)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, rtcd_e2e::proxy::JoinOutcome::Joined(m) if m["media"] == true),
        "{user} in {room}: {outcome:?}"
    );
    client
}

/// Issue 30's placement: the first joins of 150 new rooms race through two proxy replicas
/// (one join each, at the same moment) and every room opens on exactly one of three hosts, the
/// one its claim names; rooms already claimed on a host go there whatever rendezvous hashing
/// would pick; a host that stops takes its claims with it (its lease), and a room whose
/// sessions all left has its claim released by its host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_raced_through_two_replicas_open_on_the_one_host_their_claim_names() {
    use rtcd::sfu::{CallId, TenantId};
    let etcd = EtcdCluster::start(1).unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let mut hosts = Vec::new();
    for (dir, ip) in dirs.iter().zip(ips) {
        hosts.push(announced_host(dir.path(), ip, &etcd).await);
    }
    let store = Etcd::connect(&cluster_settings(&etcd)).unwrap();
    // Thirty rooms claimed on the third host beforehand (as a join that went there would).
    let third = format!("127.0.0.4:{}", hosts[2].grpc_addr().port());
    let lease = store
        .get(&format!("{HOSTS_PREFIX}{third}"))
        .await
        .unwrap()
        .expect("the third host is announced")
        .lease;
    for i in 0..30 {
        store
            .create(
                &format!("claims/proxy-1/held-{i}"),
                third.clone().into_bytes(),
                lease,
            )
            .await
            .unwrap();
    }
    let cancel = CancellationToken::new();
    let (p1, p2) = (replica(&etcd, &cancel).await, replica(&etcd, &cancel).await);

    let mut clients = Vec::new();
    for batch in 0..3 {
        let joins = (0..50).flat_map(|i| {
            let room = format!("race-{}", batch * 50 + i);
            [
                (p1.addr(), format!("a-{room}"), room.clone()),
                (p2.addr(), format!("b-{room}"), room),
            ]
        });
        let joins: Vec<_> = joins
            .map(|(addr, user, room)| async move { joined(addr, &user, &room).await })
            .collect();
        clients.extend(futures_util::future::join_all(joins).await);
    }
    for i in 0..30 {
        clients.push(joined(p1.addr(), &format!("h-{i}"), &format!("held-{i}")).await);
    }

    let tenant = TenantId::new("proxy-1");
    let on = |room: &str| -> Vec<usize> {
        let call = CallId::new(room);
        (0..3)
            .filter(|&h| hosts[h].rtcd.sfu().has_call(&tenant, &call))
            .collect()
    };
    let mut per_host = [0; 3];
    for i in 0..150 {
        let room = format!("race-{i}");
        let where_ = on(&room);
        assert_eq!(where_.len(), 1, "{room} is open on hosts {where_:?}");
        let claim = store
            .get(&format!("claims/proxy-1/{room}"))
            .await
            .unwrap()
            .unwrap();
        let host_key = format!("{}:{}", ips[where_[0]], hosts[where_[0]].grpc_addr().port());
        assert_eq!(
            claim.value,
            host_key.as_bytes(),
            "{room}: the claim names its host"
        );
        per_host[where_[0]] += 1;
    }
    assert!(
        per_host.iter().all(|&n| n > 10),
        "rooms spread over the hosts: {per_host:?}"
    );
    for i in 0..30 {
        assert_eq!(
            on(&format!("held-{i}")),
            [2],
            "held-{i} opens where it was claimed"
        );
    }
    assert_eq!(
        hosts[0].rtcd.sfu().session_count()
            + hosts[1].rtcd.sfu().session_count()
            + hosts[2].rtcd.sfu().session_count(),
        330
    );

    // The third host stops: its lease ends and every claim on it with it; the next join of a
    // held room is claimed and opened on a survivor.
    let third_host = hosts.pop().unwrap();
    third_host.stop().await;
    let left = store.list("claims/").await.unwrap().entries;
    assert!(
        left.iter().all(|c| c.value != third.as_bytes()),
        "no claim names the stopped host"
    );
    clients.push(joined(p2.addr(), "late", "held-0").await);
    let call = CallId::new("held-0");
    assert_eq!(
        hosts
            .iter()
            .filter(|h| h.rtcd.sfu().has_call(&tenant, &call))
            .count(),
        1
    );

    // Everyone leaves: each host releases the claims of its ended rooms within two sweeps
    // (three lease times to live each: 6 s with the 2 s lease here).
    drop(clients);
    let start = Instant::now();
    loop {
        let left = store.list("claims/").await.unwrap().entries;
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} claims still held: {:?}",
            left.len(),
            left.iter().take(3).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "claims of ended rooms released {:?} after everyone left",
        start.elapsed()
    );
    p1.shutdown().await;
    p2.shutdown().await;
    cancel.cancel();
    for h in hosts {
        h.stop().await;
    }
}

/// Joins keep landing while etcd elects a new leader (issue 30: "no join fails for longer
/// than the election; calls in progress never notice"): a new room every 40 ms through one
/// replica, three etcd members, the leader killed after the 40th. Every join succeeds, within
/// the store's deadline plus a join's own time, each room opens on exactly one host, and the
/// sessions already in calls stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_go_on_through_an_etcd_leader_election() {
    use rtcd::sfu::{CallId, TenantId};
    let mut etcd = EtcdCluster::start(3).unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts = Vec::new();
    for (dir, ip) in dirs.iter().zip(["127.0.0.2", "127.0.0.3"]) {
        hosts.push(announced_host(dir.path(), ip, &etcd).await);
    }
    let cancel = CancellationToken::new();
    let proxy = replica(&etcd, &cancel).await;
    let mut clients = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut killed_at = None;
    let started = Instant::now();
    for i in 0..120 {
        if i == 40 {
            let leader = etcd.wait_for_leader().unwrap();
            etcd.kill(leader);
            killed_at = Some(started.elapsed());
        }
        let asked = Instant::now();
        clients.push(joined(proxy.addr(), &format!("u-{i}"), &format!("e-{i}")).await);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let url = format!("http://{}/metrics", proxy.metrics_addr().unwrap());
    let text = rtcd_e2e::daemon::scrape(&url).await.unwrap();
    let fallback = rtcd_e2e::daemon::metric_sum(
        &text,
        "proxy_cluster_placements_total{outcome=\"fallback\"}",
    );
    let claimed =
        rtcd_e2e::daemon::metric_sum(&text, "proxy_cluster_placements_total{outcome=\"claimed\"}");
    eprintln!(
        "leader killed at {:?}: 120 joins, slowest {slowest:?}, {claimed} claimed, {fallback} placed without the store",
        killed_at.unwrap()
    );
    // The store's deadline (2 s) and a join's own time on a loaded machine.
    assert!(slowest < Duration::from_secs(6), "a join took {slowest:?}");
    assert_eq!(claimed + fallback, 120.0, "{text}");
    let tenant = TenantId::new("proxy-1");
    for i in 0..120 {
        let call = CallId::new(format!("e-{i}"));
        let on = hosts
            .iter()
            .filter(|h| h.rtcd.sfu().has_call(&tenant, &call))
            .count();
        assert_eq!(on, 1, "e-{i} is open on {on} hosts");
    }
    let sessions: usize = hosts.iter().map(|h| h.rtcd.sfu().session_count()).sum();
    assert_eq!(
        sessions, 120,
        "every session, those from before the kill too, is still there"
    );
    proxy.shutdown().await;
    cancel.cancel();
    for h in hosts {
        h.stop().await;
    }
}

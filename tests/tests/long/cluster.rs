//! The cluster mode (issue 30, docs/cluster.md) with every part a separate process: a
//! three-member etcd (Debian's `etcd-server`), rtcd hosts and two proxy replicas (the binaries)
//! on loopback, clients joining over WebSocket and the room service API over HTTP.
//!
//! One test walks through what the issue asks of a cluster, in order: 200 new rooms whose first
//! joins race through both replicas, each on exactly one host (the one its claim names); a ban
//! and a revocation issued through the API holding on a fourth host started afterwards, and
//! through a restarted replica; the etcd leader killed during a stream of joins; and the SIGKILL of a room's host, after which the room's
//! claim moves and its participants' rejoins, through both replicas, land together on one
//! survivor. Timings are printed, not asserted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rtcd_e2e::daemon::{RtcdProcess, key_for, test_env};
use rtcd_e2e::etcd::EtcdCluster;
use rtcd_e2e::media::{authorized, basic};
use rtcd_e2e::proxy::{AUDIENCE, ISSUER, JoinOutcome, claims, hs_token, join, now};
use rtcd_kit::cluster::{Etcd, Settings, Store};
use rtcd_proto::v1 as pb;
use serde_json::{Value, json};

use crate::failover::shared_ports_on;

const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");
const PROXY: &str = env!("CARGO_BIN_EXE_proxy-under-test");
const CLIENT: &str = "proxy-1";
const PREFIX: &str = "/procs/";
const IPS: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];

/// The etcd members, the hosts (started on demand, on `IPS`) and the declared-clients file.
struct Fleet {
    etcd: EtcdCluster,
    ports: (u16, u16),
    declared: tempfile::TempDir,
    hosts: Vec<(RtcdProcess, tempfile::TempDir)>,
}

impl Fleet {
    fn endpoints(&self) -> String {
        self.etcd.endpoints().join(",")
    }

    /// Starts the next host (on `IPS[hosts.len()]`), in cluster mode.
    async fn add_host(&mut self) {
        use std::os::unix::fs::PermissionsExt as _;
        let file = self.declared.path().join("clients");
        if !file.exists() {
            std::fs::write(&file, format!("{CLIENT}:{}\n", key_for(CLIENT))).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let ip = IPS[self.hosts.len()];
        let (api, grpc) = self.ports;
        let (api_addr, grpc_addr) = (format!("{ip}:{api}"), format!("{ip}:{grpc}"));
        let (file, endpoints) = (file.display().to_string(), self.endpoints());
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(
            dir.path(),
            &[
                ("RTCD_API_HTTP_LISTEN_ADDRESS", &api_addr),
                ("RTCD_API_METRICS_LISTEN_ADDRESS", ""),
                ("RTCD_GRPC_LISTEN_ADDRESS", &grpc_addr),
                ("RTCD_CLIENTS_DECLARED_FILE", &file),
                ("RTCD_CLUSTER_ETCD_ENDPOINTS", &endpoints),
                ("RTCD_CLUSTER_KEY_PREFIX", PREFIX),
                ("RTCD_CLUSTER_LEASE_TTL_S", "3"),
                ("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0"),
            ],
        );
        let mut process = RtcdProcess::spawn(Path::new(RTCD), &env).unwrap();
        process.ready().await.unwrap();
        self.hosts.push((process, dir));
    }

    /// A proxy replica in cluster mode, as a process.
    fn replica(&self) -> (std::process::Child, SocketAddr) {
        let mut env = rtcd_e2e::proxy::unlimited_process_env();
        let (key, url, api) = (
            key_for(CLIENT),
            format!("http://{}:{}", IPS[0], self.ports.1),
            self.ports.0.to_string(),
        );
        let endpoints = self.endpoints();
        for (k, v) in [
            // In cluster mode only the scheme (and TLS name) of the URL is used.
            ("PROXY_RTCD_URL", url.as_str()),
            ("PROXY_RTCD_CLIENT_ID", CLIENT),
            ("PROXY_RTCD_AUTH_KEY", &key),
            ("PROXY_RTCD_API_PORT", &api),
            ("PROXY_RTCD_HEALTH_INTERVAL_SECONDS", "1"),
            ("PROXY_RTCD_CPU_WEIGHTED_PLACEMENT", "false"),
            ("PROXY_CLUSTER_ETCD_ENDPOINTS", &endpoints),
            ("PROXY_CLUSTER_KEY_PREFIX", PREFIX),
        ] {
            env.retain(|(key, _)| key != k);
            env.push((k.into(), v.into()));
        }
        rtcd_e2e::proxy::spawn_process(PROXY, &env).unwrap()
    }

    /// The indexes of the live hosts that have `room` (`Rooms.HasRoom`).
    async fn hosting(&self, room: &str, dead: &[usize]) -> Vec<usize> {
        let mut found = Vec::new();
        for i in (0..self.hosts.len()).filter(|i| !dead.contains(i)) {
            let url = format!("http://{}:{}", IPS[i], self.ports.1);
            let mut rooms = pb::rooms_client::RoomsClient::connect(url).await.unwrap();
            let request = authorized(
                pb::HasRoomRequest {
                    call_id: room.into(),
                },
                Some(&basic(CLIENT, &key_for(CLIENT))),
            );
            if rooms.has_room(request).await.unwrap().into_inner().present {
                found.push(i);
            }
        }
        found
    }

    /// The host a room's claim names, as `ip:grpc port`.
    async fn claim(&self, room: &str) -> Option<String> {
        let store = Etcd::connect(&Settings {
            etcd_endpoints: self.etcd.endpoints(),
            key_prefix: PREFIX.into(),
            ..Settings::default()
        })
        .unwrap();
        store
            .get(&format!("claims/{CLIENT}/{room}"))
            .await
            .unwrap()
            .map(|e| String::from_utf8(e.value).unwrap())
    }

    fn host_key(&self, i: usize) -> String {
        format!("{}:{}", IPS[i], self.ports.1)
    }
}

/// A join token for `sub` in `room` (role member) issued `age` seconds ago.
fn token(sub: &str, room: &str, age: i64) -> String {
    let mut c = claims(sub, room);
    c["role"] = "member".into();
    c["iat"] = json!(now() - age);
    c["nbf"] = json!(now() - age);
    hs_token(&c)
}

/// Waits for `client`'s close frame (the caller bounds it).
async fn alice_closed(client: &mut rtcd_e2e::proxy::Client) {
    let _ = client.closed().await;
}

fn with_media(outcome: &JoinOutcome) -> bool {
    matches!(outcome, JoinOutcome::Joined(m) if m["media"] == true)
}

/// A room service API call with full rights.
async fn api(proxy: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let t = now();
    let token = hs_token(
        &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "chat-backend",
        "iat": t, "exp": t + 300, "api": ["rooms:read", "rooms:admin"]}),
    );
    let response = reqwest::Client::new()
        .post(format!("http://{proxy}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A `Join` straight to a host's gRPC, as the proxy sends it; the refusal it gets, if any.
async fn refusal_on(fleet: &Fleet, host: usize, room: &str, user: &str, issued_at: i64) -> String {
    let url = format!("http://{}:{}", IPS[host], fleet.ports.1);
    let mut client = pb::signaling_client::SignalingClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::ClientSignal {
        signal: Some(pb::client_signal::Signal::Join(pb::Join {
            call_id: room.into(),
            session_id: format!("direct-{user}"),
            user_id: user.into(),
            permissions: Some(pb::Permissions {
                subscribe: true,
                ..Default::default()
            }),
            role: "member".into(),
            token: Some(pb::TokenInfo {
                issued_at,
                ..Default::default()
            }),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let stream = client
        .session(authorized(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Some(&basic(CLIENT, &key_for(CLIENT))),
        ))
        .await;
    let status = match stream {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status,
            Ok(Some(pb::ServerSignal {
                signal: Some(pb::server_signal::Signal::Joined(_)),
            })) => return "joined".into(),
            Ok(other) => return format!("{other:?}"),
        },
    };
    // The typed reason is in the details (the proxy reads those); its prose starts alike.
    match (status.code(), status.message()) {
        (tonic::Code::PermissionDenied, m) if m.starts_with("banned") => "Banned".into(),
        (tonic::Code::PermissionDenied, m) if m.starts_with("revoked") => "Revoked".into(),
        (code, m) => format!("{code:?}: {m}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes_places_once_shares_bans_and_moves_a_killed_hosts_room() {
    let mut fleet = Fleet {
        etcd: EtcdCluster::start(3).unwrap(),
        ports: shared_ports_on(&IPS),
        declared: tempfile::tempdir().unwrap(),
        hosts: Vec::new(),
    };
    for _ in 0..3 {
        fleet.add_host().await;
    }
    let (mut p1, a1) = fleet.replica();
    let (mut p2, mut a2) = fleet.replica();

    // 200 new rooms, the first joins of each racing through both replicas at the same moment.
    let started = Instant::now();
    let mut clients = Vec::new();
    for batch in 0..4 {
        let joins = (0..50).flat_map(|i| {
            let room = format!("race-{}", batch * 50 + i);
            [
                (a1, format!("a-{room}"), room.clone()),
                (a2, format!("b-{room}"), room),
            ]
        });
        let joins = joins.map(|(addr, user, room)| async move {
            let (client, outcome) = join(addr, Some(&token(&user, &room, 0)), &room)
                .await
                .unwrap();
            assert!(with_media(&outcome), "{user} in {room}: {outcome:?}");
            client
        });
        clients.extend(futures_util::future::join_all(joins).await);
    }
    let joined = started.elapsed();
    let mut per_host = [0usize; 3];
    for i in 0..200 {
        let room = format!("race-{i}");
        let hosting = fleet.hosting(&room, &[]).await;
        let [one] = hosting[..] else {
            panic!("{room} is open on hosts {hosting:?}");
        };
        assert_eq!(
            fleet.claim(&room).await.as_deref(),
            Some(fleet.host_key(one).as_str()),
            "{room}'s claim names its host"
        );
        per_host[one] += 1;
    }
    println!(
        "measured: 400 joins of 200 new rooms raced through two replica processes in {} ms; every room on one host, the one its claim names; per host {per_host:?}",
        joined.as_millis()
    );
    drop(clients);

    // A ban and a revocation through the room service API.
    let (mut alice, outcome) = join(a1, Some(&token("alice", "standup", 0)), "standup")
        .await
        .unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let (mut bob, outcome) = join(a2, Some(&token("bob", "standup", 0)), "standup")
        .await
        .unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let carol_old = token("carol", "standup", 30);
    let (mut carol, outcome) = join(a1, Some(&carol_old), "standup").await.unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let (status, body) = api(
        a1,
        "/api/v1/rooms/standup/participants/remove",
        json!({"identity": "bob", "ban_seconds": 3600}),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(bob.closed().await.unwrap().0, 4012);
    let (status, body) = api(
        a2,
        "/api/v1/revocations",
        json!({"identity": "carol", "issued_before": now() - 5}),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(carol.closed().await.unwrap().0, 4118);

    // A fourth host started afterwards refuses both, straight at its gRPC (the proxies would
    // place the room elsewhere).
    fleet.add_host().await;
    assert_eq!(
        refusal_on(&fleet, 3, "standup", "bob", now()).await,
        "Banned"
    );
    assert_eq!(
        refusal_on(&fleet, 3, "standup", "carol", now() - 30).await,
        "Revoked"
    );
    assert_eq!(
        refusal_on(&fleet, 3, "standup", "dave", now()).await,
        "joined"
    );
    // A replica restarted after the revocation refuses the revoked token.
    let _ = p2.kill();
    let _ = p2.wait();
    let (restarted, addr) = fleet.replica();
    p2 = restarted;
    a2 = addr;
    let (_, outcome) = join(a2, Some(&carol_old), "standup").await.unwrap();
    assert!(
        matches!(&outcome, JoinOutcome::Refused(4118, ..)),
        "{outcome:?}"
    );

    // The etcd leader killed during a stream of joins into new rooms: every join lands (the
    // claims wait out the election), and the sessions already in never notice.
    let leader = fleet.etcd.leader().unwrap();
    let stream = async {
        let mut slowest = Duration::ZERO;
        let mut kept = Vec::new();
        for i in 0..40 {
            let room = format!("election-{i}");
            let t = Instant::now();
            let (client, outcome) = join(a1, Some(&token("gina", &room, 0)), &room)
                .await
                .unwrap();
            assert!(with_media(&outcome), "{room}: {outcome:?}");
            slowest = slowest.max(t.elapsed());
            kept.push(client);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        (slowest, kept)
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        fleet.etcd.kill(leader);
    };
    let ((slowest, _kept), ()) = tokio::join!(stream, kill);
    for i in 0..40 {
        let room = format!("election-{i}");
        assert_eq!(fleet.hosting(&room, &[]).await.len(), 1, "{room}");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), alice_closed(&mut alice))
            .await
            .is_err(),
        "alice's session went on"
    );
    println!(
        "measured: etcd leader killed during 40 joins of new rooms: all joined, the slowest in {} ms",
        slowest.as_millis()
    );

    // SIGKILL of a room's host: the room's claim moves with the first rejoin, and the
    // participants' rejoins through both replicas land together on one survivor.
    let (mut erin, outcome) = join(a1, Some(&token("erin", "fail", 0)), "fail")
        .await
        .unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let (mut fred, outcome) = join(a2, Some(&token("fred", "fail", 0)), "fail")
        .await
        .unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let hosting = fleet.hosting("fail", &[]).await;
    let [victim] = hosting[..] else {
        panic!("fail is on {hosting:?}");
    };
    let killed = Instant::now();
    fleet.hosts[victim].0.signal("KILL").unwrap();
    let (erin_code, fred_code) = (
        erin.closed().await.unwrap().0,
        fred.closed().await.unwrap().0,
    );
    let noticed = killed.elapsed();
    assert_eq!((erin_code, fred_code), (4008, 4008), "media_server_lost");
    let rejoin = |addr: SocketAddr, user: &'static str| async move {
        loop {
            let (client, outcome) = join(addr, Some(&token(user, "fail", 0)), "fail")
                .await
                .unwrap();
            if with_media(&outcome) {
                return client;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(20),
                "{user} never rejoined: {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (_erin, _fred) = tokio::join!(rejoin(a1, "erin"), rejoin(a2, "fred"));
    let back = killed.elapsed();
    let hosting = fleet.hosting("fail", &[victim]).await;
    let [survivor] = hosting[..] else {
        panic!("after the kill, fail is on {hosting:?}");
    };
    assert_eq!(
        fleet.claim("fail").await.as_deref(),
        Some(fleet.host_key(survivor).as_str()),
        "the claim moved to the survivor"
    );
    println!(
        "measured: SIGKILL of host {victim}: clients told {} ms after, both rejoined on host {survivor} {} ms after",
        noticed.as_millis(),
        back.as_millis()
    );
    let _ = p1.kill();
    let _ = p1.wait();
    let _ = p2.kill();
    let _ = p2.wait();
}

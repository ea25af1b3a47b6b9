//! Bans, revocations, room policies and the client registry in cluster mode (issue 30 item 4,
//! docs/cluster.md):
//! written once to a real etcd by the host that takes the request, followed by every host from
//! its watched copy, so they hold on a host started afterwards and through a proxy restart;
//! and the fail-closed rule of a host cut off from etcd (nftables in the test's namespace).

use std::time::{Duration, Instant};

use rtcd_e2e::etcd::EtcdCluster;
use rtcd_e2e::proxy::{JoinOutcome, claims, hs_token, join, join_code, now};
use rtcd_kit::cluster::{Etcd, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster::{announced_host, cluster_settings, joined, replica};
use crate::rooms::{admin, api};

/// A join token for `sub` in `room` with `role`, issued `age` seconds ago.
fn token(sub: &str, room: &str, role: &str, age: i64) -> String {
    let mut c = claims(sub, room);
    c["role"] = role.into();
    c["iat"] = json!(now() - age);
    c["nbf"] = json!(now() - age);
    hs_token(&c)
}

/// Whether a join was admitted with a media server attached (a join no host takes is admitted
/// without one: `media: false`).
fn with_media(outcome: &JoinOutcome) -> bool {
    matches!(outcome, JoinOutcome::Joined(m) if m["media"] == true)
}

/// The close code a joined client gets within `within`.
async fn closed_within(client: &mut rtcd_e2e::proxy::Client, within: Duration) -> u16 {
    tokio::time::timeout(within, client.closed())
        .await
        .expect("closed in time")
        .expect("a close frame")
        .0
}

/// Issue 30's test: a ban, a revocation and a room policy issued through the room service API
/// are written once to etcd (no fan-out) and hold on a host started afterwards, once the host
/// that took them is gone; a proxy restarted afterwards refuses the revoked token; and a
/// decision written by another host reaches the sessions of this one (measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_written_once_hold_on_a_host_started_afterwards_and_reach_every_host() {
    let etcd = EtcdCluster::start(1).unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = announced_host(dir_a.path(), "127.0.0.2", &etcd).await;
    let cancel = CancellationToken::new();
    let proxy = replica(&etcd, &cancel).await;

    let alice = joined(proxy.addr(), "alice", "standup").await;
    let (mut bob, outcome) = join(
        proxy.addr(),
        Some(&token("bob", "standup", "member", 0)),
        "standup",
    )
    .await
    .unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let carol_old = token("carol", "other", "member", 30);
    let (mut carol, outcome) = join(proxy.addr(), Some(&carol_old), "other").await.unwrap();
    assert!(with_media(&outcome), "{outcome:?}");

    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/participants/remove",
        Some(&admin()),
        Some(json!({"identity": "bob", "ban_seconds": 3600, "reason": "spam"})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(closed_within(&mut bob, Duration::from_secs(5)).await, 4012);
    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({"identity": "carol", "issued_before": now() - 5})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(
        closed_within(&mut carol, Duration::from_secs(5)).await,
        4118
    );
    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/rooms/standup/policy",
        Some(&admin()),
        Some(json!({"guests_allowed": false})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(
        proxy.addr(),
        "GET",
        "/api/v1/rooms/standup/bans",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(
        (status, body["bans"][0]["identity"].as_str()),
        (200, Some("bob")),
        "{body}"
    );

    // Written once, in etcd, under the tenant (the proxy's client ID).
    let store = Etcd::connect(&cluster_settings(&etcd)).unwrap();
    let keys: Vec<String> = store
        .list("moderation/")
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(
        keys,
        [
            "moderation/bans/proxy-1/standup/bob",
            "moderation/cutoffs/proxy-1/carol",
            "moderation/policies/proxy-1/standup",
        ],
    );

    // A host started afterwards; the first one stops (its claims go with its lease): the
    // rooms reopen on the new host, which knows every decision made before it existed.
    let b = announced_host(dir_b.path(), "127.0.0.3", &etcd).await;
    // The client registry is the cluster's too: `proxy-1`, registered through host A, was
    // known to host B from its start (its own registration attempt was a conflict).
    assert_eq!(
        b.rtcd
            .auth()
            .list()
            .unwrap()
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>(),
        ["proxy-1"]
    );
    drop(alice);
    a.stop().await;
    let on_b = |room: &str| {
        b.rtcd.sfu().has_call(
            &rtcd::sfu::TenantId::new("proxy-1"),
            &rtcd::sfu::CallId::new(room),
        )
    };
    let alice = {
        let start = Instant::now();
        loop {
            let (client, outcome) = join(
                proxy.addr(),
                Some(&crate::cluster::moderator("alice", "standup")),
                "standup",
            )
            .await
            .unwrap();
            if with_media(&outcome) {
                break client;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "alice never rejoined: {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        on_b("standup"),
        "the room reopened on the host started later"
    );
    let bob_again = token("bob", "standup", "member", 0);
    assert_eq!(
        join_code(proxy.addr(), &bob_again, "standup")
            .await
            .unwrap(),
        4012,
        "banned on the new host"
    );
    assert_eq!(
        join_code(proxy.addr(), &carol_old, "other").await.unwrap(),
        4118,
        "revoked on the new host"
    );
    assert_eq!(
        join_code(
            proxy.addr(),
            &token("gus", "standup", "guest", 0),
            "standup"
        )
        .await
        .unwrap(),
        4014,
        "the stored policy holds on the new host"
    );
    let carol_new = token("carol", "other", "member", 0);
    let (_carol, outcome) = join(proxy.addr(), Some(&carol_new), "other").await.unwrap();
    assert!(
        with_media(&outcome),
        "a token issued after the cut-off: {outcome:?}"
    );

    // A proxy restarted after the revocation refuses the revoked token.
    proxy.shutdown().await;
    let proxy = replica(&etcd, &cancel).await;
    assert_eq!(
        join_code(proxy.addr(), &carol_old, "other").await.unwrap(),
        4118,
        "revoked through a restarted proxy"
    );

    // A decision written by another host (here: straight into the store, as a host that took
    // a revocation does) closes the sessions it concerns on this one.
    let (mut dave, outcome) = join(
        proxy.addr(),
        Some(&token("dave", "standup", "member", 10)),
        "standup",
    )
    .await
    .unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let written = Instant::now();
    store
        .put(
            "moderation/cutoffs/proxy-1/dave",
            serde_json::to_vec(&json!({"v": 1, "issued_before": now()})).unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(closed_within(&mut dave, Duration::from_secs(5)).await, 4118);
    println!(
        "measured: a cut-off written to etcd closed the session on another host {} ms later",
        written.elapsed().as_millis()
    );

    // A refresh with a revoked token is refused by the proxy's own copy at once (4118), with
    // no `refreshed` before the close.
    let mut with_jti = claims("erin", "standup");
    with_jti["role"] = "member".into();
    with_jti["jti"] = "erin-1".into();
    let (mut erin, outcome) = join(proxy.addr(), Some(&hs_token(&with_jti)), "standup")
        .await
        .unwrap();
    assert!(with_media(&outcome), "{outcome:?}");
    let (status, body) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({"token_id": "erin-2", "token_expires_at": now() + 600})),
    )
    .await;
    assert_eq!(
        (status, body["sessions"].as_u64()),
        (200, Some(0)),
        "{body}"
    );
    with_jti["jti"] = "erin-2".into();
    erin.send(&json!({"type": "refresh", "token": hs_token(&with_jti)}))
        .await
        .unwrap();
    let (code, _, seen) = tokio::time::timeout(Duration::from_secs(5), erin.closed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 4118);
    assert!(
        !seen.iter().any(|m| m["type"] == "refreshed"),
        "refused before `refreshed`: {seen:?}"
    );
    // A join with a denied token is refused by the proxy before placement.
    assert_eq!(
        join_code(proxy.addr(), &hs_token(&with_jti), "standup")
            .await
            .unwrap(),
        4118
    );

    drop(alice);
    proxy.shutdown().await;
    cancel.cancel();
    b.stop().await;
}

/// Issue 30's test: an rtcd cut off from etcd (its packets to etcd dropped by nftables in the
/// test's namespace; the proxy still reaches it) keeps its call going, refuses new joins once
/// its copy of bans and revocations is older than `cluster.stale_limit_s` (3 s here), counts
/// them, and admits joins again by itself once the path is back.
#[test]
fn a_host_cut_off_from_etcd_fails_closed_for_joins_and_recovers_by_itself() {
    use rtcd_e2e::netns::{LAN_ADDR, nft, run};
    rtcd_e2e::init_logs();
    run(|| async move {
        let etcd = EtcdCluster::start_also_on(1, Some(LAN_ADDR))?;
        let port = etcd.client_ports()[0];
        let endpoints = etcd.endpoints_also_on().join(",");
        let dir = tempfile::tempdir()?;
        let host = rtcd_e2e::daemon::TestRtcd::start_in(
            dir.path(),
            &[
                ("RTCD_GRPC_LISTEN_ADDRESS", "127.0.0.1:0"),
                ("RTCD_CLUSTER_ETCD_ENDPOINTS", endpoints.as_str()),
                ("RTCD_CLUSTER_KEY_PREFIX", "/e2e/"),
                ("RTCD_CLUSTER_LEASE_TTL_S", "2"),
                ("RTCD_CLUSTER_STALE_LIMIT_S", "3"),
                ("RTCD_CLUSTER_REQUEST_TIMEOUT_MS", "1000"),
            ],
        )
        .await?;
        let cancel = CancellationToken::new();
        // The proxy places by DNS (not a cluster member): it reaches the host whatever etcd does.
        let proxy = rtcd_e2e::proxy::start_relaying_to(
            rtcd_e2e::proxy::base_config(),
            &host,
            "proxy-1",
            &cancel,
        )
        .await?;
        let member = |sub: &str| token(sub, "standup", "member", 0);
        let (mut alice, outcome) = join(proxy.addr(), Some(&member("alice")), "standup").await?;
        anyhow::ensure!(with_media(&outcome), "{outcome:?}");
        let metrics = format!("{}/metrics", host.internal);
        let scrape = |name: &'static str| {
            let url = metrics.clone();
            async move {
                let text = rtcd_e2e::daemon::scrape(&url).await.unwrap_or_default();
                rtcd_e2e::daemon::metric_value(&text, name).unwrap_or(-1.0)
            }
        };

        nft(&format!(
            "table inet etcdcut {{\n\
               chain out {{ type filter hook output priority 0; ip daddr {LAN_ADDR} tcp dport {port} drop; ip saddr {LAN_ADDR} tcp sport {port} drop; }}\n\
             }}\n"
        ))
        .await?;
        let cut = Instant::now();
        // A join the host refuses is placed again by the proxy (the refusal is UNAVAILABLE:
        // another host might check it) and, with no other host, admitted without media.
        let refused_after = loop {
            let (_, outcome) = join(proxy.addr(), Some(&member("late")), "standup").await?;
            if !with_media(&outcome) {
                anyhow::ensure!(
                    matches!(&outcome, JoinOutcome::Joined(_)),
                    "refused otherwise: {outcome:?}"
                );
                break cut.elapsed();
            }
            anyhow::ensure!(
                cut.elapsed() < Duration::from_secs(20),
                "joins still admitted 20 s after the cut"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        anyhow::ensure!(
            refused_after >= Duration::from_secs(3),
            "refused before the bound: {refused_after:?}"
        );
        anyhow::ensure!(scrape("rtcd_cluster_joins_unchecked_total").await >= 1.0);
        // Every call to etcd is timed (the first read, the announcement, the lease, the sweeps).
        anyhow::ensure!(scrape("rtcd_cluster_store_seconds_count").await >= 1.0);
        // Published every second, in whole seconds: at least the bound less one.
        anyhow::ensure!(scrape("rtcd_cluster_moderation_stale_seconds").await >= 2.0);
        // The call in progress never noticed.
        anyhow::ensure!(
            tokio::time::timeout(Duration::from_millis(500), alice.closed())
                .await
                .is_err(),
            "alice's session survives the cut"
        );

        nft("delete table inet etcdcut").await?;
        let healed = Instant::now();
        loop {
            let (client, outcome) =
                join(proxy.addr(), Some(&member("after")), "standup").await?;
            drop(client);
            if with_media(&outcome) {
                break;
            }
            anyhow::ensure!(
                healed.elapsed() < Duration::from_secs(20),
                "joins still refused 20 s after the path came back: {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!(
            "measured: joins refused {} ms after the cut (bound 3 s), admitted again {} ms after the path came back",
            refused_after.as_millis(),
            healed.elapsed().as_millis()
        );
        // Published every second: back to 0 within a couple of seconds.
        let back = Instant::now();
        while scrape("rtcd_cluster_moderation_stale_seconds").await != 0.0 {
            anyhow::ensure!(
                back.elapsed() < Duration::from_secs(3),
                "the copy's age never went back to 0"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(alice);
        proxy.shutdown().await;
        cancel.cancel();
        host.stop().await;
        Ok(())
    })
    .unwrap();
}

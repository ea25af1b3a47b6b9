//! Webhooks as the daemon wires them: `[webhooks]` settings reach the service, the dispatcher
//! starts and stops with rtcd, its metrics are exported; and room events of real calls,
//! configured through proxy replicas, reach a real receiver (`rtcd_e2e::webhook`). Delivery
//! edge cases (give-up, overflow, SSRF, drain) are tested in `rtcd::webhook`'s unit tests.

use std::time::{Duration, Instant};

use rtcd::sfu::TenantId;
use rtcd::webhook::WebhookError;
use rtcd_e2e::daemon::{TestRtcd, scrape};
use rtcd_e2e::webhook::WebhookReceiver;

const SECRET: &str = "e2e-webhook-secret-0123456789abcdef";

#[tokio::test]
async fn the_daemon_configures_webhooks_and_refuses_loopback_by_default() {
    let receiver = WebhookReceiver::start(SECRET, 0).await.unwrap();
    let tenant = TenantId::new("acme");

    let strict = TestRtcd::start(&[]).await.unwrap();
    let e = strict
        .rtcd
        .webhooks()
        .configure(&tenant, vec![receiver.url()], SECRET.into())
        .await
        .unwrap_err();
    assert!(matches!(e, WebhookError::AddressNotAllowed { .. }), "{e:?}");
    let metrics = scrape(&format!("{}/metrics", strict.internal))
        .await
        .unwrap();
    assert!(
        metrics.contains("rtcd_webhook_events_dropped_total{reason=\"queue_full\"} 0"),
        "{metrics}"
    );
    let began = Instant::now();
    strict.stop().await;
    assert!(began.elapsed() < Duration::from_secs(10));

    let lax = TestRtcd::start(&[("RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true")])
        .await
        .unwrap();
    let webhooks = lax.rtcd.webhooks().clone();
    webhooks
        .configure(&tenant, vec![receiver.url()], SECRET.into())
        .await
        .unwrap();
    assert!(webhooks.is_configured(&tenant));
    lax.stop().await;

    let off = TestRtcd::start(&[("RTCD_WEBHOOKS_ENABLED", "false")])
        .await
        .unwrap();
    let e = off
        .rtcd
        .webhooks()
        .configure(&tenant, vec![receiver.url()], SECRET.into())
        .await
        .unwrap_err();
    assert!(matches!(e, WebhookError::Disabled), "{e:?}");
    off.stop().await;
    assert!(receiver.requests().is_empty());
}

/// Issue 12: room events from real calls through two proxy replicas reach the platform's
/// receiver signed (checked as docs/webhooks.md says, independently of rtcd's code), once
/// each, in order per room, and again after the receiver answered 500.
#[tokio::test]
async fn room_events_arrive_signed_once_in_order_per_room_and_again_after_a_500() {
    use crate::rooms::{ENOUGH, admin, api, closes_with, publisher, replica_with, user};
    use rtcd_e2e::media::eventually;
    use rtcd_proto::v1 as pb;
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    let receiver = WebhookReceiver::start(SECRET, 3).await.unwrap();
    let rtcd = TestRtcd::start(&[
        ("RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true"),
        ("RTCD_WEBHOOKS_INITIAL_BACKOFF_MS", "100"),
        ("RTCD_WEBHOOKS_MAX_BACKOFF_SECONDS", "1"),
    ])
    .await
    .unwrap();
    rtcd.register_key("tenant-a", &rtcd_e2e::daemon::key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(
            replica_with(&rtcd, "tenant-a", &cancel, |c| {
                c.webhooks.urls = vec![receiver.url()];
                c.webhooks.secret = rtcd_proxy::config::Secret::new(SECRET);
            })
            .await,
        );
    }
    let (one, two) = (replicas[0].addr(), replicas[1].addr());
    // Room r1: alice (replica one) and bob (replica two), both publishing; room r2: carol.
    let alice = publisher(one, &user("alice", "r1", "moderator"), "r1", "alice").await;
    let bob = publisher(two, &user("bob", "r1", "member"), "r1", "bob").await;
    let carol = publisher(two, &user("carol", "r2", "member"), "r2", "carol").await;
    eventually("media flows in r1", || {
        alice.received("bob", "audio") >= ENOUGH
    })
    .await
    .unwrap();
    let (status, _) = api(
        one,
        "POST",
        "/api/v1/rooms/r1/participants/remove",
        Some(&admin()),
        Some(json!({"identity": "bob"})),
    )
    .await;
    assert_eq!(status, 200);
    closes_with(&bob, 4011).await;
    for p in [&alice, &carol] {
        p.send(pb::client_signal::Signal::Leave(pb::Leave {}))
            .await
            .unwrap();
    }
    eventually("both rooms finished and were delivered", || {
        receiver
            .delivered()
            .iter()
            .filter(|e| e.kind() == "room_finished")
            .count()
            == 2
    })
    .await
    .unwrap();

    let all = receiver.requests();
    let delivered = receiver.delivered();
    assert_eq!(all.iter().filter(|r| r.status == 500).count(), 3);
    for failed in all.iter().filter(|r| r.status == 500) {
        let id = &failed.event["id"];
        assert!(
            delivered.iter().any(|d| d.event["id"] == *id),
            "event {id} answered 500 was never delivered again"
        );
    }
    // Once each: two replicas pushed the same settings; rtcd alone delivers.
    let mut ids: Vec<&str> = delivered
        .iter()
        .map(|e| e.event["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was delivered twice");
    for room in ["r1", "r2"] {
        let events: Vec<&Value> = delivered
            .iter()
            .filter(|e| e.event["room"]["name"] == room)
            .map(|e| &e.event)
            .collect();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{room}: {events:?}"
        );
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"room_started"), "{room}: {types:?}");
        assert_eq!(types.last(), Some(&"room_finished"), "{room}: {types:?}");
        let instance = &events[0]["room"]["instance"];
        assert!(events.iter().all(|e| e["room"]["instance"] == *instance));
        assert!(
            events
                .iter()
                .all(|e| e["created_at"].as_i64().unwrap() > 1_700_000_000_000)
        );
    }
    let r1: Vec<(String, String)> = delivered
        .iter()
        .filter(|e| e.event["room"]["name"] == "r1")
        .map(|e| {
            (
                e.kind().to_owned(),
                e.event["participant"]["identity"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    let at = |t: &str, who: &str| {
        r1.iter()
            .position(|(ty, id)| ty == t && id == who)
            .unwrap_or_else(|| panic!("no {t} for {who} in {r1:?}"))
    };
    assert!(at("participant_joined", "alice") < at("participant_joined", "bob"));
    assert!(at("participant_joined", "bob") < at("track_published", "bob"));
    assert!(at("participant_removed", "bob") < at("participant_left", "bob"));
    assert!(at("track_unpublished", "bob") < at("participant_left", "bob"));
    assert!(at("participant_left", "bob") < at("participant_left", "alice"));
    let kinds: std::collections::BTreeSet<&str> = delivered
        .iter()
        .filter(|e| e.kind() == "track_published" && e.event["participant"]["identity"] == "alice")
        .map(|e| e.event["track"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["audio", "video"]);
    let left = delivered
        .iter()
        .find(|e| e.kind() == "participant_left" && e.event["participant"]["identity"] == "bob")
        .unwrap();
    assert_eq!(left.event["reason"], "removed", "{:?}", left.event);
    for p in [&alice, &bob, &carol] {
        p.close().await;
    }
    for r in replicas {
        r.shutdown().await;
    }
    cancel.cancel();
}

/// Issue 29 #7: what a receiver written from docs/webhooks.md sees for a revocation: the
/// session ends with `participant_left` reason `revoked` (a documented reason) and no
/// `participant_removed` (as documented: that one is for removals); the documented example's
/// role is one of the protocol's roles.
#[tokio::test]
async fn a_revocation_ends_a_participant_as_documented() {
    use crate::rooms::{admin, api, replica_with, user};
    use rtcd_e2e::media::eventually;
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/webhooks.md"),
    )
    .unwrap();
    let example: Value = {
        let start = doc.find("```json\n").unwrap() + "```json\n".len();
        let end = start + doc[start..].find("```").unwrap();
        serde_json::from_str(&doc[start..end]).unwrap()
    };
    assert!(
        ["moderator", "member", "guest"]
            .contains(&example["participant"]["role"].as_str().unwrap()),
        "{example}"
    );
    let reasons_row = doc.lines().find(|l| l.starts_with("| `reason` |")).unwrap();

    let receiver = WebhookReceiver::start(SECRET, 0).await.unwrap();
    let rtcd = TestRtcd::start(&[("RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true")])
        .await
        .unwrap();
    rtcd.register_key("tenant-a", &rtcd_e2e::daemon::key_for("tenant-a"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let proxy = replica_with(&rtcd, "tenant-a", &cancel, |c| {
        c.webhooks.urls = vec![receiver.url()];
        c.webhooks.secret = rtcd_proxy::config::Secret::new(SECRET);
    })
    .await;
    let (_mia, outcome) =
        rtcd_e2e::proxy::join(proxy.addr(), Some(&user("mia", "r1", "member")), "r1")
            .await
            .unwrap();
    assert_eq!(outcome.code(), 0);
    let mut old = rtcd_e2e::proxy::claims("dan", "r1");
    old["iat"] = json!(rtcd_e2e::proxy::now() - 30);
    old["nbf"] = json!(rtcd_e2e::proxy::now() - 30);
    let (mut dan, outcome) =
        rtcd_e2e::proxy::join(proxy.addr(), Some(&rtcd_e2e::proxy::hs_token(&old)), "r1")
            .await
            .unwrap();
    assert_eq!(outcome.code(), 0);
    let (status, reply) = api(
        proxy.addr(),
        "POST",
        "/api/v1/revocations",
        Some(&admin()),
        Some(json!({"identity": "dan", "issued_before": rtcd_e2e::proxy::now() - 5})),
    )
    .await;
    assert_eq!(
        (status, reply["sessions"].as_u64()),
        (200, Some(1)),
        "{reply}"
    );
    assert_eq!(dan.closed().await.unwrap().0, 4118);
    eventually("dan's participant_left is delivered", || {
        receiver
            .delivered()
            .iter()
            .any(|e| e.kind() == "participant_left" && e.event["participant"]["identity"] == "dan")
    })
    .await
    .unwrap();
    let dan_events: Vec<Value> = receiver
        .delivered()
        .into_iter()
        .filter(|e| e.event["participant"]["identity"] == "dan")
        .map(|e| e.event)
        .collect();
    let left = dan_events
        .iter()
        .find(|e| e["type"] == "participant_left")
        .unwrap();
    assert_eq!(left["reason"], "revoked", "{left}");
    assert!(
        ["moderator", "member", "guest"].contains(&left["participant"]["role"].as_str().unwrap()),
        "{left}"
    );
    assert!(
        reasons_row.contains("`revoked`"),
        "docs/webhooks.md does not list the reason: {reasons_row}"
    );
    assert!(
        !dan_events
            .iter()
            .any(|e| e["type"] == "participant_removed"),
        "{dan_events:?}"
    );
    proxy.shutdown().await;
    cancel.cancel();
}

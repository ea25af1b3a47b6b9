//! The cluster store's one test suite, run against both implementations: real etcd processes
//! (Debian's `etcd-server`, started here) and the in-process store. What the layers above rely
//! on (create-if-absent races, leases that take their keys with them, watches that resume or
//! report compaction) must hold the same on both. Then what only a real cluster can show:
//! members dying, a leader killed mid-stream, an unreachable cluster answered within the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtcd_e2e::etcd::EtcdCluster;
use rtcd_kit::cluster::{
    Change, Created, Etcd, Local, Presence, PresenceState, Replica, Settings, Store, StoreError,
    Watch,
};

fn settings(endpoints: Vec<String>, prefix: &str) -> Settings {
    Settings {
        etcd_endpoints: endpoints,
        key_prefix: prefix.into(),
        request_timeout_ms: 2_000,
        ..Settings::default()
    }
}

fn etcd(cluster: &EtcdCluster, prefix: &str) -> Arc<dyn Store> {
    let s = settings(cluster.endpoints(), prefix);
    s.validate().expect("test settings are valid");
    Arc::new(Etcd::connect(&s).expect("a client for the test cluster"))
}

/// The next batch of a watch, within `within`.
async fn next(watch: &mut Watch, within: Duration) -> Result<Vec<Change>, String> {
    match tokio::time::timeout(within, watch.recv()).await {
        Ok(Some(Ok(batch))) => Ok(batch),
        Ok(Some(Err(e))) => Err(format!("error: {e}")),
        Ok(None) => Err("closed".into()),
        Err(_) => Err("nothing within the time".into()),
    }
}

/// The next batch that is not a progress notice.
async fn next_changes(watch: &mut Watch) -> Vec<Change> {
    loop {
        let batch = next(watch, Duration::from_secs(5)).await.expect("a change");
        if !batch.is_empty() {
            return batch;
        }
    }
}

// ---- the shared suite ----

async fn keys_have_revisions_and_prefixes_list_only_their_keys(store: Arc<dyn Store>) {
    let r1 = store.put("rooms/a", b"1".to_vec(), None).await.unwrap();
    let r2 = store.put("rooms/b", b"2".to_vec(), None).await.unwrap();
    store
        .put("roomsx", b"elsewhere".to_vec(), None)
        .await
        .unwrap();
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    let r3 = store.put("rooms/a", b"3".to_vec(), None).await.unwrap();
    let a = store.get("rooms/a").await.unwrap().expect("rooms/a");
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (&b"3"[..], r1, r3)
    );
    assert_eq!(store.get("rooms/none").await.unwrap(), None);

    let listing = store.list("rooms/").await.unwrap();
    let keys: Vec<&str> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["rooms/a", "rooms/b"]);
    assert!(listing.revision >= r3);

    assert!(store.delete("rooms/a").await.unwrap());
    assert!(
        !store.delete("rooms/a").await.unwrap(),
        "deleting twice finds nothing"
    );
    assert_eq!(store.get("rooms/a").await.unwrap(), None);
}

async fn many_keys_list_in_full(store: Arc<dyn Store>) {
    // More than one page of etcd's listing (500 keys).
    for i in 0..1_203 {
        store
            .put(&format!("bans/{i:05}"), vec![b'x'; 40], None)
            .await
            .unwrap();
    }
    let listing = store.list("bans/").await.unwrap();
    assert_eq!(listing.entries.len(), 1_203);
    assert!(
        listing.entries.windows(2).all(|w| w[0].key < w[1].key),
        "sorted by key"
    );
    assert_eq!(listing.entries[1_202].key, "bans/01202");
}

async fn create_has_exactly_one_winner_per_key(store: Arc<dyn Store>) {
    // 100 keys, two contenders each, all at once: what two proxy replicas placing the same new
    // rooms do.
    let mut tasks = Vec::new();
    for room in 0..100 {
        for host in ["host-1", "host-2"] {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("claims/room-{room}");
                let created = store
                    .create(&key, host.as_bytes().to_vec(), None)
                    .await
                    .unwrap();
                (room, host, created)
            }));
        }
    }
    let mut winners = std::collections::BTreeMap::new();
    let mut holders = std::collections::BTreeMap::new();
    for task in tasks {
        let (room, host, created) = task.await.unwrap();
        match created {
            Created::Won(_) => assert!(
                winners.insert(room, host).is_none(),
                "room {room}: two winners"
            ),
            Created::Taken(holder) => {
                holders.insert(room, String::from_utf8(holder.value).unwrap());
            }
        }
    }
    assert_eq!(winners.len(), 100, "every room has one winner");
    for (room, holder) in holders {
        assert_eq!(
            holder, winners[&room],
            "room {room}: the loser is told who holds it"
        );
    }
    for room in 0..100 {
        let claim = store
            .get(&format!("claims/room-{room}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claim.value, winners[&room].as_bytes());
    }
}

async fn delete_if_releases_only_the_version_it_names(store: Arc<dyn Store>) {
    let Created::Won(first) = store
        .create("claims/r", b"h1".to_vec(), None)
        .await
        .unwrap()
    else {
        panic!("a new key is won");
    };
    let second = store.put("claims/r", b"h2".to_vec(), None).await.unwrap();
    assert!(
        !store.delete_if("claims/r", first).await.unwrap(),
        "an older holder cannot release it"
    );
    assert!(store.get("claims/r").await.unwrap().is_some());
    assert!(store.delete_if("claims/r", second).await.unwrap());
    assert_eq!(store.get("claims/r").await.unwrap(), None);
    assert!(
        !store.delete_if("claims/r", second).await.unwrap(),
        "gone already"
    );
}

async fn put_if_writes_only_over_the_version_it_read(store: Arc<dyn Store>) {
    let first = store.put("bans/t/c/u", b"1".to_vec(), None).await.unwrap();
    // Two writers read `first`; the first to write wins, the other writes nothing.
    let second = store
        .put_if("bans/t/c/u", b"2".to_vec(), first)
        .await
        .unwrap()
        .expect("the version read is current");
    assert!(second > first);
    assert_eq!(
        store
            .put_if("bans/t/c/u", b"3".to_vec(), first)
            .await
            .unwrap(),
        None,
        "a writer that read an older version writes nothing"
    );
    let entry = store.get("bans/t/c/u").await.unwrap().unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.mod_revision),
        (&b"2"[..], second)
    );
    assert_eq!(entry.create_revision, first, "an update, not a new key");
    store.delete("bans/t/c/u").await.unwrap();
    assert_eq!(
        store
            .put_if("bans/t/c/u", b"4".to_vec(), second)
            .await
            .unwrap(),
        None,
        "a deleted key is not written again"
    );
    assert_eq!(store.get("bans/t/c/u").await.unwrap(), None);
}

async fn leases_take_their_keys_with_them(store: Arc<dyn Store>) {
    // Kept alive: the key outlives its time to live several times over.
    let kept = store.grant(Duration::from_secs(2)).await.unwrap();
    store
        .put("hosts/kept", b"up".to_vec(), Some(kept))
        .await
        .unwrap();
    let Created::Won(_) = store
        .create("claims/kept", b"up".to_vec(), Some(kept))
        .await
        .unwrap()
    else {
        panic!("a new claim is won");
    };
    // Not kept alive: gone after its time to live.
    let left = store.grant(Duration::from_secs(2)).await.unwrap();
    store
        .put("hosts/left", b"up".to_vec(), Some(left))
        .await
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let ttl = store.keep_alive(kept).await.unwrap();
        assert_eq!(ttl, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        store.get("hosts/kept").await.unwrap().is_some(),
        "kept alive"
    );
    let kept_entry = store.get("claims/kept").await.unwrap().unwrap();
    assert_eq!(kept_entry.lease, Some(kept));
    assert_eq!(
        store.get("hosts/left").await.unwrap(),
        None,
        "expired with its lease"
    );
    assert_eq!(
        store.keep_alive(left).await,
        Err(StoreError::LeaseExpired(left.0))
    );
    assert_eq!(
        store.put("hosts/late", b"x".to_vec(), Some(left)).await,
        Err(StoreError::LeaseExpired(left.0)),
        "a write on an expired lease is refused"
    );
    assert_eq!(store.get("hosts/late").await.unwrap(), None);

    // Revoked: its keys go at once, and revoking again is not an error.
    store.revoke(kept).await.unwrap();
    assert_eq!(store.get("hosts/kept").await.unwrap(), None);
    assert_eq!(store.get("claims/kept").await.unwrap(), None);
    store.revoke(kept).await.unwrap();
}

async fn watches_deliver_in_order_and_resume_from_a_revision(store: Arc<dyn Store>) {
    let start = store.list("bans/").await.unwrap();
    let mut watch = store.watch("bans/", start.revision + 1).await.unwrap();
    let lease = store.grant(Duration::from_secs(2)).await.unwrap();
    let r1 = store.put("bans/alice", b"1h".to_vec(), None).await.unwrap();
    store
        .put("policies/x", b"not watched".to_vec(), None)
        .await
        .unwrap();
    let r2 = store
        .put("bans/bob", b"1h".to_vec(), Some(lease))
        .await
        .unwrap();
    let r3 = store.put("bans/alice", b"2h".to_vec(), None).await.unwrap();
    store.delete("bans/alice").await.unwrap();

    // Batches may hold several revisions (etcd groups what it has); the order is what counts.
    // The lease's expiry (two seconds) is a deletion too.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(next_changes(&mut watch).await);
    }
    let described: Vec<String> = seen
        .iter()
        .map(|c| match c {
            Change::Put(e) => format!("put {} {}", e.key, String::from_utf8_lossy(&e.value)),
            Change::Delete { key, .. } => format!("delete {key}"),
        })
        .collect();
    assert_eq!(
        described,
        [
            "put bans/alice 1h",
            "put bans/bob 1h",
            "put bans/alice 2h",
            "delete bans/alice",
            "delete bans/bob"
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].revision() < w[1].revision()),
        "in order"
    );

    // A watcher that lost its stream after r2 resumes with what followed, nothing before.
    let mut resumed = store.watch("bans/", r2 + 1).await.unwrap();
    let first = next_changes(&mut resumed).await;
    assert!(
        matches!(&first[..], [Change::Put(e), ..] if e.mod_revision == r3),
        "{first:?}"
    );
    assert!(r1 < r2);
}

async fn a_replica_follows_its_prefix_from_any_start(store: Arc<dyn Store>) {
    // Written before the replica starts: a host started after a ban still sees it.
    store.put("bans/early", b"1".to_vec(), None).await.unwrap();
    store
        .put("policies/p", b"not followed".to_vec(), None)
        .await
        .unwrap();
    let replica = Replica::start(store.clone(), "bans/");
    let r = store.put("bans/late", b"2".to_vec(), None).await.unwrap();
    assert!(
        replica.caught_up(r, Duration::from_secs(5)).await,
        "the replica reaches revision {r}"
    );
    assert!(replica.synced());
    let keys: Vec<String> = replica.entries("").into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["bans/early", "bans/late"]);
    assert_eq!(
        replica.stale_for(Instant::now()),
        Duration::ZERO,
        "following"
    );

    store.delete("bans/early").await.unwrap();
    let r = store.put("bans/late", b"3".to_vec(), None).await.unwrap();
    assert!(replica.caught_up(r, Duration::from_secs(5)).await);
    assert_eq!(replica.get("bans/early"), None);
    assert_eq!(replica.get("bans/late").unwrap().value, b"3");
    assert_eq!(replica.get("policies/p"), None);
}

async fn a_presence_announces_again_after_losing_its_lease(store: Arc<dyn Store>) {
    let presence = Presence::start(store.clone(), Duration::from_secs(2));
    presence.set("hosts/h1", b"ready".to_vec()).await.unwrap();
    let mut states = presence.states();
    let first = states
        .wait_for(|s| matches!(s, PresenceState::Present(_)))
        .await
        .unwrap()
        .clone();
    let PresenceState::Present(lease) = first else {
        unreachable!()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get("hosts/h1").await.unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.get("hosts/h1").await.unwrap().unwrap().lease,
        Some(lease)
    );

    // Renewed past its time to live several times over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(store.get("hosts/h1").await.unwrap().is_some(), "kept alive");
    presence
        .set("hosts/h1", b"draining".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get("hosts/h1").await.unwrap().unwrap().value,
        b"draining"
    );

    // The lease is lost (as when the store was out of reach longer than its time to live):
    // the presence takes a new one and writes its keys again, the latest values.
    store.revoke(lease).await.unwrap();
    assert_eq!(store.get("hosts/h1").await.unwrap(), None);
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|s| matches!(s, PresenceState::Present(l) if *l != lease)),
    )
    .await
    .expect("a new lease within a renewal period")
    .unwrap()
    .clone();
    let PresenceState::Present(renewed) = again else {
        unreachable!()
    };
    let back = store
        .get("hosts/h1")
        .await
        .unwrap()
        .expect("announced again");
    assert_eq!(
        (back.value.as_slice(), back.lease),
        (&b"draining"[..], Some(renewed))
    );
    assert!(
        presence.failures() >= 1,
        "the lost lease counts as a failure"
    );

    // Closing revokes: the key goes at once.
    presence.close().await.unwrap();
    assert_eq!(store.get("hosts/h1").await.unwrap(), None);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod local {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(Arc::new(Local::new())).await;
                }
            )*
        }
        mod on_etcd {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let cluster = EtcdCluster::start(1).expect("an etcd member");
                    super::$name(etcd(&cluster, "/test/")).await;
                }
            )*
        }
    };
}

suite!(
    keys_have_revisions_and_prefixes_list_only_their_keys,
    many_keys_list_in_full,
    create_has_exactly_one_winner_per_key,
    delete_if_releases_only_the_version_it_names,
    put_if_writes_only_over_the_version_it_read,
    leases_take_their_keys_with_them,
    watches_deliver_in_order_and_resume_from_a_revision,
    a_replica_follows_its_prefix_from_any_start,
    a_presence_announces_again_after_losing_its_lease,
);

// ---- what only etcd shows ----

/// Compacts the cluster's history up to `revision` (what an operator's or etcd's own periodic
/// compaction does).
fn compact(cluster: &EtcdCluster, revision: i64) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &cluster.endpoints().join(","),
            "compact",
            &revision.to_string(),
        ])
        .output()
        .expect("etcdctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn deployments_with_different_prefixes_share_one_etcd_without_seeing_each_other() {
    let cluster = EtcdCluster::start(1).unwrap();
    let a = etcd(&cluster, "/deployment-a/");
    let b = etcd(&cluster, "/deployment-b/");
    a.put("bans/alice", b"a".to_vec(), None).await.unwrap();
    b.put("bans/alice", b"b".to_vec(), None).await.unwrap();
    assert_eq!(a.get("bans/alice").await.unwrap().unwrap().value, b"a");
    let listed = b.list("").await.unwrap();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        listed.entries[0].key, "bans/alice",
        "keys come back without the prefix"
    );
    assert_eq!(listed.entries[0].value, b"b");
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_says_so() {
    let cluster = EtcdCluster::start(1).unwrap();
    let store = etcd(&cluster, "/test/");
    let old = store.put("bans/a", b"1".to_vec(), None).await.unwrap();
    let mut last = old;
    for i in 0..5 {
        last = store.put("bans/a", vec![i], None).await.unwrap();
    }
    compact(&cluster, last);
    let mut watch = store.watch("bans/", old + 1).await.unwrap();
    let answer = next(&mut watch, Duration::from_secs(5)).await;
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| e.contains("compacted") && e.contains(&last.to_string())),
        "{answer:?}"
    );
}

#[tokio::test]
async fn an_unreachable_cluster_is_reported_within_the_deadline() {
    // Two ports nothing listens on (bound, then closed).
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let endpoints = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut s = settings(endpoints, "/test/");
    s.request_timeout_ms = 500;
    let store = Etcd::connect(&s).unwrap();
    let start = Instant::now();
    let put = store.put("k", b"v".to_vec(), None).await;
    assert!(matches!(&put, Err(StoreError::Unavailable(_))), "{put:?}");
    let watch = store.watch("k", 0).await;
    assert!(
        matches!(&watch, Err(StoreError::Unavailable(_))),
        "a watch too"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

/// A stream of claims (one every 20 ms, as joins opening rooms) through a three-member cluster
/// whose leader is killed in the middle: every call returns within its deadline, the calls that
/// fail do so only around the election, and the claims made are all there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_interrupts_claims_only_for_the_election() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let store = etcd(&cluster, "/test/");
    // A watcher on the member that will die must hear of it, not go silent.
    let leader = cluster.wait_for_leader().unwrap();
    let mut on_leader = settings(vec![cluster.endpoint(leader)], "/test/");
    on_leader.request_timeout_ms = 1_000;
    let leader_only = Etcd::connect(&on_leader).unwrap();
    let mut doomed_watch = leader_only.watch("claims/", 0).await.unwrap();

    let started = Instant::now();
    let mut killed_at = None;
    let mut won = Vec::new();
    let mut failures: Vec<(Duration, String)> = Vec::new();
    let mut slowest = Duration::ZERO;
    for room in 0..300 {
        if room == 100 {
            cluster.kill(leader);
            killed_at = Some(started.elapsed());
        }
        let asked = Instant::now();
        let claim = store
            .create(&format!("claims/room-{room}"), b"host".to_vec(), None)
            .await;
        slowest = slowest.max(asked.elapsed());
        match claim {
            Ok(Created::Won(_)) => won.push(room),
            Ok(Created::Taken(_)) => panic!("room {room} was claimed twice"),
            Err(e) => failures.push((started.elapsed(), e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = killed_at.unwrap();
    eprintln!(
        "leader killed at {killed_at:?}: {} claims won, {} failed ({:?}), slowest call {slowest:?}",
        won.len(),
        failures.len(),
        failures.iter().map(|(at, _)| *at).collect::<Vec<_>>()
    );
    assert!(
        slowest < Duration::from_millis(2_500),
        "a call took {slowest:?} (deadline 2 s)"
    );
    // Failures only between the kill and the end of the election (1 s election timeout; allow
    // generously for a loaded machine).
    for (at, e) in &failures {
        assert!(
            *at >= killed_at && *at < killed_at + Duration::from_secs(5),
            "a claim failed at {at:?}, the leader was killed at {killed_at:?}: {e}\n{}",
            cluster.logs()
        );
    }
    assert!(won.len() + failures.len() == 300);
    assert!(
        won.len() >= 250,
        "only {} of 300 claims succeeded: {failures:?}",
        won.len()
    );
    for room in &won {
        assert!(
            store
                .get(&format!("claims/room-{room}"))
                .await
                .unwrap()
                .is_some(),
            "claim {room} was acknowledged and lost"
        );
    }
    // The watch on the dead member ended (its owner would resume on another member).
    let mut ended = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match next(&mut doomed_watch, Duration::from_secs(1)).await {
            Ok(_) => continue,
            Err(e) if e.starts_with("nothing") => continue,
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "a watch on a killed member must end, not go silent");
}

/// A replica whose member dies: the copy stays (stale, and says for how long) while the others
/// move on and compact their history; when its member is back it finds its revision compacted,
/// reads the prefix afresh and is current again, by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_past_a_compaction_reads_afresh_and_recovers() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let store = etcd(&cluster, "/test/");
    store.put("bans/alice", b"1".to_vec(), None).await.unwrap();
    // The replica's member is a follower: the others keep a leader and go on without it.
    let leader = cluster.wait_for_leader().unwrap();
    let follower = (leader + 1) % 3;
    let mut own = settings(vec![cluster.endpoint(follower)], "/test/");
    own.request_timeout_ms = 1_000;
    let replica = Replica::start(Arc::new(Etcd::connect(&own).unwrap()), "bans/");
    let r = store.put("bans/bob", b"1".to_vec(), None).await.unwrap();
    assert!(replica.caught_up(r, Duration::from_secs(5)).await);

    cluster.kill(follower);
    let cut = Instant::now();
    store.delete("bans/alice").await.unwrap();
    let mut last = 0;
    for i in 0..20u8 {
        last = store.put("bans/carol", vec![i], None).await.unwrap();
    }
    compact(&cluster, last);
    // Stale since it noticed its stream broke (how soon depends on the machine's load), and
    // saying so for longer as time passes.
    let noticed = Instant::now() + Duration::from_secs(5);
    while replica.stale_for(Instant::now()).is_zero() {
        assert!(
            Instant::now() < noticed,
            "the replica never noticed its member died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = replica.stale_for(Instant::now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = replica.stale_for(Instant::now());
    assert!(
        after >= before + Duration::from_millis(250),
        "cut off for {:?}: stale for {before:?}, then {after:?} 300 ms later",
        cut.elapsed()
    );
    assert!(
        replica.get("bans/alice").is_some(),
        "the last known copy stays"
    );

    cluster.restart(follower).unwrap();
    assert!(
        replica.caught_up(last, Duration::from_secs(15)).await,
        "caught up after the restart\n{}",
        cluster.logs()
    );
    assert_eq!(
        replica.get("bans/alice"),
        None,
        "the deletion it missed is seen"
    );
    assert_eq!(replica.get("bans/carol").unwrap().value, vec![19]);
    // Following again once its watch is open (right after the fresh read).
    let deadline = Instant::now() + Duration::from_secs(5);
    while replica.stale_for(Instant::now()) > Duration::ZERO && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(replica.stale_for(Instant::now()), Duration::ZERO);
}

/// An etcd member that serves clients over TLS and requires client certificates, killed on
/// drop (started here, not by the harness: its health check speaks plain HTTP).
struct TlsMember {
    child: std::process::Child,
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 30's `[cluster]` TLS settings against a real etcd with `--client-cert-auth`: the
/// client with the deployment's CA and a client certificate reads, writes, leases and watches;
/// one without a certificate is refused within its deadline, as is one that does not trust the
/// server's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates_serves_only_certified_clients() {
    let dir = tempfile::tempdir().unwrap();
    crate::grpc_tls::make_pki(dir.path()).unwrap();
    let pki = |name: &str| dir.path().join(name).display().to_string();
    let (client_port, peer_port) = (rtcd_e2e::proxy::free_port(), rtcd_e2e::proxy::free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let child = std::process::Command::new(
        std::env::var_os("RTCD_ETCD_BIN").unwrap_or_else(|| "/usr/bin/etcd".into()),
    )
    .env_clear()
    .args(["--name", "m0", "--data-dir", &pki("data")])
    .args(["--listen-client-urls", &client_url])
    .args(["--advertise-client-urls", &client_url])
    .args(["--listen-peer-urls", &peer_url])
    .args(["--initial-advertise-peer-urls", &peer_url])
    .args(["--initial-cluster", &format!("m0={peer_url}")])
    .args([
        "--cert-file",
        &pki("server.pem"),
        "--key-file",
        &pki("server.key"),
    ])
    .args(["--trusted-ca-file", &pki("ca.pem"), "--client-cert-auth"])
    .args(["--log-level", "error", "--logger", "zap"])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("etcd runs");
    let _member = TlsMember { child };
    let with = |ca: &str, cert: &str, key: &str| {
        let s = Settings {
            etcd_endpoints: vec![client_url.clone()],
            key_prefix: "/tls/".into(),
            tls_ca_file: ca.into(),
            tls_cert_file: cert.into(),
            tls_key_file: key.into(),
            request_timeout_ms: 1_000,
            ..Settings::default()
        };
        s.validate().expect("valid TLS settings");
        Arc::new(Etcd::connect(&s).expect("a client")) as Arc<dyn Store>
    };
    let certified = with(&pki("ca.pem"), &pki("proxy.pem"), &pki("proxy.key"));
    // The member takes a moment to start: the first write is tried until it lands.
    let start = Instant::now();
    let first = loop {
        match certified.put("hosts/a", b"1".to_vec(), None).await {
            Ok(revision) => break revision,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "never served: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let replica = Replica::start(certified.clone(), "hosts/");
    assert!(replica.caught_up(first, Duration::from_secs(5)).await);
    let lease = certified.grant(Duration::from_secs(5)).await.unwrap();
    let Created::Won(second) = certified
        .create("hosts/b", b"2".to_vec(), Some(lease))
        .await
        .unwrap()
    else {
        panic!("a new key is won");
    };
    assert!(
        replica.caught_up(second, Duration::from_secs(5)).await,
        "the watch runs over TLS"
    );
    assert_eq!(replica.entries("hosts/").len(), 2);

    // Without a client certificate, and with a CA that did not sign the server's: refused.
    let uncertified = with(&pki("ca.pem"), "", "");
    let refused = uncertified.get("hosts/a").await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let other = tempfile::tempdir().unwrap();
    crate::grpc_tls::make_pki(other.path()).unwrap();
    let stranger = with(
        &other.path().join("ca.pem").display().to_string(),
        &other.path().join("proxy.pem").display().to_string(),
        &other.path().join("proxy.key").display().to_string(),
    );
    let refused = stranger.get("hosts/a").await;
    assert!(refused.is_err(), "another CA's certificate: {refused:?}");
}

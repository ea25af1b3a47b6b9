//! The etcd test harness itself: if it cannot elect, kill and restart reliably, every cluster
//! client test built on it would fail for the wrong reason.

use std::time::{Duration, Instant};

use rtcd_e2e::etcd::EtcdCluster;

#[test]
fn three_members_survive_losing_the_leader() -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start(3)?;
    assert_eq!(cluster.endpoints().len(), 3);
    let leader = cluster.leader()?;
    assert!(leader < 3, "leader index {leader} out of range");

    cluster.kill(leader);
    let started = Instant::now();
    let new_leader = cluster.wait_for_leader()?;
    assert_ne!(
        new_leader,
        leader,
        "the killed member cannot still lead\n{}",
        cluster.logs()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    cluster.restart(leader)?;
    // restart() waited for the old leader's /health; the quorum must still agree on a leader.
    let after = cluster.leader()?;
    assert!(after < 3);
    Ok(())
}

#[test]
fn single_member_is_its_own_leader() -> anyhow::Result<()> {
    let cluster = EtcdCluster::start_one()?;
    assert_eq!(cluster.leader()?, 0);
    assert_eq!(cluster.endpoint(0), cluster.endpoints()[0]);
    Ok(())
}

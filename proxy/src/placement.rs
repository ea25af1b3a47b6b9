//! Which rtcd hosts a room: rendezvous (highest-random-weight) hashing over the healthy hosts.
//!
//! Every proxy replica computes the same answer from the same host list without talking to
//! the others: each (host, room) pair gets a score from a stable hash, the highest score wins.
//! When a host leaves, only its rooms move; when one joins, it takes about 1/n of the rooms.
//!
//! [`HostSet`] keeps the candidate hosts and their health (the rtcd relay resolves them and
//! probes rtcd's `/readyz`): a draining or starting rtcd answers 503 and gets no new rooms,
//! while rooms already on it stay until their sessions end.
//!
//! Placement is weighted by load ([`weighted_pick`]): each host's `/system` `load` (the larger
//! of its CPU use and its share of `rtc.max_sessions`) is cut into coarse levels, so replicas
//! probing a few seconds apart almost always see the same level; a busier level gets a smaller
//! share of new rooms, a full one none. With equal levels the weighted pick is the plain
//! rendezvous pick. Because weights change, a room may live on a host that is not its current
//! pick: the relay asks the ready hosts where the room is (`Rooms.HasRoom`) before it places.

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

/// Load levels (the contract's rule, [`rtcd_proto::rules::load_level`]): a host at [`FULL`]
/// gets no new rooms.
pub use rtcd_proto::rules::{FULL_LOAD_LEVEL as FULL, load_level as level_of};

/// The share of new rooms a host of each level gets, relative to an idle one.
fn weight(level: u8) -> f64 {
    match level {
        0 => 1.0,
        1 => 0.75,
        2 => 0.5,
        _ => 0.25,
    }
}

/// Weighted rendezvous: the host maximising `weight / -ln(u)`, `u` the (host, room) score as
/// a fraction in (0, 1). Hosts at [`FULL`] get no new rooms unless every host is full (then
/// the plain pick: rtcd itself refuses what it cannot take). Equal levels give [`pick`]'s
/// answer, so a fleet at rest places exactly as unweighted rendezvous does.
pub fn weighted_pick<'a>(
    room: &str,
    hosts: impl IntoIterator<Item = (&'a str, u8)>,
) -> Option<&'a str> {
    let hosts: Vec<(&str, u8)> = hosts.into_iter().collect();
    let open: Vec<(&str, u8)> = hosts.iter().copied().filter(|(_, l)| *l < FULL).collect();
    let candidates = if open.is_empty() {
        hosts.iter().map(|(h, _)| (*h, 0)).collect()
    } else {
        open
    };
    let key = |h: &str, level: u8| {
        // (score + 0.5) / 2^64 is in (0, 1): ln is finite and negative.
        let u = (score(h, room) as f64 + 0.5) / 18_446_744_073_709_551_616.0;
        weight(level) / -u.ln()
    };
    candidates
        .into_iter()
        .map(|(h, l)| (key(h, l), h))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, h)| h)
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

/// What the relay knows of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostState {
    health: HostHealth,
    /// [`level_of`] its last `/system` load.
    level: u8,
}

/// The candidate rtcd hosts, keyed by their base URL, with their health and load level.
#[derive(Debug, Default, Clone)]
pub struct HostSet {
    hosts: Arc<RwLock<BTreeMap<String, HostState>>>,
}

impl HostSet {
    /// Replaces the candidate list; hosts that stay keep their health, new ones start Unknown.
    pub fn set_hosts(&self, urls: impl IntoIterator<Item = String>) {
        let mut hosts = self.hosts.write().expect("host set lock is never poisoned");
        let old = std::mem::take(&mut *hosts);
        for url in urls {
            let state = old.get(&url).copied().unwrap_or(HostState {
                health: HostHealth::Unknown,
                level: 0,
            });
            hosts.insert(url, state);
        }
    }

    /// Records a probe result (ignored for hosts no longer in the set); true if it changed.
    pub fn set_health(&self, url: &str, health: HostHealth) -> bool {
        let mut hosts = self.hosts.write().expect("host set lock is never poisoned");
        match hosts.get_mut(url) {
            Some(h) if h.health != health => {
                h.health = health;
                true
            }
            _ => false,
        }
    }

    /// Records a host's `/system` load as its level; true if the level changed.
    pub fn set_load(&self, url: &str, load: f64) -> bool {
        let level = level_of(load);
        let mut hosts = self.hosts.write().expect("host set lock is never poisoned");
        match hosts.get_mut(url) {
            Some(h) if h.level != level => {
                h.level = level;
                true
            }
            _ => false,
        }
    }

    /// Each host's load level (for metrics and tests).
    pub fn levels(&self) -> Vec<(String, u8)> {
        self.hosts
            .read()
            .expect("host set lock is never poisoned")
            .iter()
            .map(|(u, h)| (u.clone(), h.level))
            .collect()
    }

    /// The host for a new `room` among the ready ones (weighted by load), if any is ready.
    pub fn place(&self, room: &str) -> Option<String> {
        self.place_except(room, &[])
    }

    /// [`HostSet::place`] among the ready hosts not in `except` (hosts a join was just refused
    /// by or could not reach).
    pub fn place_except(&self, room: &str, except: &[String]) -> Option<String> {
        let hosts = self.hosts.read().expect("host set lock is never poisoned");
        weighted_pick(
            room,
            hosts
                .iter()
                .filter(|(u, h)| h.health == HostHealth::Ready && !except.contains(u))
                .map(|(u, h)| (u.as_str(), h.level)),
        )
        .map(str::to_owned)
    }

    /// Whether `url` is a host that answers its probes.
    pub fn is_ready(&self, url: &str) -> bool {
        self.hosts
            .read()
            .expect("host set lock is never poisoned")
            .get(url)
            .is_some_and(|h| h.health == HostHealth::Ready)
    }

    /// A snapshot of every host and its health (for `/readyz` and metrics).
    pub fn snapshot(&self) -> Vec<(String, HostHealth)> {
        self.hosts
            .read()
            .expect("host set lock is never poisoned")
            .iter()
            .map(|(u, h)| (u.clone(), h.health))
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
    fn load_levels_shift_new_rooms_away_from_busy_hosts_and_full_ones_get_none() {
        assert_eq!(
            [-1.0, 0.0, 0.2, 0.25, 0.6, 0.99, 1.0, 7.0, f64::NAN].map(level_of),
            [0, 0, 0, 1, 2, 3, FULL, FULL, 0]
        );
        let rooms: Vec<String> = (0..4000).map(|i| format!("room-{i}")).collect();
        let count = |levels: [u8; 2], host: &str| {
            rooms
                .iter()
                .filter(|r| {
                    weighted_pick(r, [("http://a", levels[0]), ("http://b", levels[1])])
                        == Some(host)
                })
                .count()
        };
        // Equal levels: exactly the plain rendezvous pick, whatever the level.
        for r in &rooms {
            let plain = pick(r, ["http://a", "http://b"]);
            assert_eq!(weighted_pick(r, [("http://a", 0), ("http://b", 0)]), plain);
            assert_eq!(weighted_pick(r, [("http://a", 2), ("http://b", 2)]), plain);
        }
        // A busy host gets fewer new rooms: 1 / (1 + 0.25) of them go to the idle one.
        let idle = count([0, 3], "http://a");
        assert!(
            (3000..=3400).contains(&idle),
            "idle host got {idle} of 4000"
        );
        // A full host gets none, unless every host is full.
        assert_eq!(count([0, FULL], "http://b"), 0);
        let all_full = count([FULL, FULL], "http://b");
        assert!((1800..=2200).contains(&all_full), "{all_full}");
        // Deterministic: every replica computes the same answer.
        assert_eq!(
            weighted_pick("r", [("http://a", 1), ("http://b", 3)]),
            weighted_pick("r", [("http://b", 3), ("http://a", 1)])
        );
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

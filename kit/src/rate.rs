//! Rate limits: token buckets, alone (one per connection) or keyed (one per source address or
//! client ID), with one shared shape per limiter ([`Quota`]).
//!
//! Buckets refill continuously; a full bucket carries no information. A [`KeyedLimiter`] keeps
//! at most `max_keys` buckets: at that size it forgets the full ones, and if none is full it
//! stops tracking new keys (they pass) rather than grow, so an attacker with many addresses
//! cannot grow memory without bound. Callers keep a global cap behind it (the proxy's
//! connection cap, rtcd's bcrypt concurrency), which still holds for untracked keys.
//!
//! Time is passed in (`now`), never read here, so that tests can step it and a caller that
//! checks several limiters sees them at one instant.
//!
//! Not the `governor` crate: its keyed limiter can neither check a key without counting an
//! event (rtcd checks before bcrypt and counts only failures; the proxy checks at `join` and
//! counts only refused tokens), nor forget one key (rtcd resets a client ID on success), nor
//! refuse to track a new key when at its cap.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The shape of a limiter's buckets: how many events at once, and how fast they come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    burst: f64,
    per_second: f64,
}

impl Quota {
    /// `burst` events at once, refilling at `per_minute` (the unit of login and connection
    /// limits). Zeros count as 1, so that a limiter always lets something through eventually;
    /// the config loaders refuse zeros before they get here.
    pub fn per_minute(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
        }
    }

    /// `burst` events at once, refilling at `per_second` (the unit of message limits). Zeros
    /// count as 1, as in [`Quota::per_minute`].
    pub fn per_second(burst: u32, per_second: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_second.max(1)),
        }
    }

    /// How long until a bucket holding `tokens` has one. At least 1 ms, so that a caller
    /// reporting it never says "retry in 0".
    fn wait_for_one(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.per_second).max(0.001))
    }
}

/// Refused: the bucket is empty. The caller decides how to say so (HTTP 429 with
/// `Retry-After`, a gRPC status, a WebSocket close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: retry in {} ms", retry_after.as_millis())]
pub struct Limited {
    /// How long until one event would be allowed again (at least 1 ms).
    pub retry_after: Duration,
}

/// A bucket's state without its shape: what a keyed limiter stores per key, so that the
/// shape is not repeated 100,000 times.
#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Level {
    fn full(quota: &Quota, now: Instant) -> Self {
        Self {
            tokens: quota.burst,
            at: now,
        }
    }

    fn tokens_at(&self, quota: &Quota, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * quota.per_second).min(quota.burst)
    }

    fn check(&self, quota: &Quota, now: Instant) -> Result<(), Limited> {
        let tokens = self.tokens_at(quota, now);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Limited {
                retry_after: quota.wait_for_one(tokens),
            })
        }
    }

    /// Takes one token; on refusal nothing changes.
    fn take(&mut self, quota: &Quota, now: Instant) -> Result<(), Limited> {
        self.check(quota, now)?;
        self.tokens = self.tokens_at(quota, now) - 1.0;
        self.at = self.at.max(now);
        Ok(())
    }

    /// When this bucket is full again (None: not within any representable time).
    fn full_at(&self, quota: &Quota) -> Option<Instant> {
        let missing = (quota.burst - self.tokens).max(0.0);
        Duration::try_from_secs_f64(missing / quota.per_second)
            .ok()
            .and_then(|d| self.at.checked_add(d))
    }
}

/// One token bucket owned by its user, e.g. the messages of one WebSocket session (no lock:
/// the session's task is its only user).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    quota: Quota,
    level: Level,
}

impl Bucket {
    /// A full bucket: a new user may use its whole burst at once.
    pub fn new(quota: Quota, now: Instant) -> Self {
        Self {
            quota,
            level: Level::full(&quota, now),
        }
    }

    /// Counts one event; refused (and nothing counted) if the bucket is empty.
    pub fn take(&mut self, now: Instant) -> Result<(), Limited> {
        self.level.take(&self.quota, now)
    }

    /// Whether one event would be allowed now, without counting it.
    pub fn check(&self, now: Instant) -> Result<(), Limited> {
        self.level.check(&self.quota, now)
    }
}

/// A source address as a limiter key: IPv6 addresses are grouped by their /64 (the smallest
/// block one subscriber gets, so one host cannot rotate through its 2^64 addresses), and an
/// IPv4-mapped IPv6 address counts as the IPv4 address it is (a dual-stack listener sees
/// IPv4 clients that way). The only way to build one, so no caller can forget the grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    /// The key `ip` counts against.
    pub fn new(ip: IpAddr) -> Self {
        Self(match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
            },
        })
    }

    /// The grouped address (an IPv4 address, or an IPv6 /64 with its host bits zero), for logs.
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> Self {
        Self::new(ip)
    }
}

/// Token buckets per key, all of one [`Quota`], shared by every connection (one lock, held
/// only for a map operation; never across an await).
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    quota: Quota,
    max_keys: usize,
    state: Mutex<Keyed<K>>,
}

#[derive(Debug)]
struct Keyed<K> {
    levels: HashMap<K, Level>,
    /// No tracked bucket is full before this, so pruning earlier would free nothing: while the
    /// map is at its cap with active keys, each new key costs a comparison, not a scan of the
    /// whole map. Only a lower bound stays valid as buckets are drained or removed.
    prune_not_before: Option<Instant>,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// A limiter of `quota` tracking at most `max_keys` keys (each costs the key plus 24 bytes
    /// of state and the map's overhead).
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        Self {
            quota,
            max_keys,
            state: Mutex::new(Keyed {
                levels: HashMap::new(),
                prune_not_before: None,
            }),
        }
    }

    /// Whether one event for `key` would be allowed now, without counting it (e.g. before
    /// doing work whose failure is what counts).
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Limited> {
        match self.lock().levels.get(key) {
            Some(level) => level.check(&self.quota, now),
            None => Ok(()),
        }
    }

    /// Counts one event for `key`; refused (and nothing counted) if its bucket is empty. A new
    /// key when the limiter is at its cap and no bucket is full passes untracked.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Limited> {
        let mut state = self.lock();
        if let Some(level) = state.levels.get_mut(key) {
            return level.take(&self.quota, now);
        }
        if state.levels.len() >= self.max_keys {
            state.prune(&self.quota, now);
            if state.levels.len() >= self.max_keys {
                return Ok(());
            }
        }
        let mut level = Level::full(&self.quota, now);
        let taken = level.take(&self.quota, now);
        state.levels.insert(key.clone(), level);
        taken
    }

    /// Forgets `key`, e.g. after a success, so that a client that fixed its key starts with a
    /// full burst.
    pub fn reset(&self, key: &K) {
        self.lock().levels.remove(key);
    }

    /// How many keys are tracked (for tests and gauges).
    pub fn len(&self) -> usize {
        self.lock().levels.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Keyed<K>> {
        // Nothing panics while the lock is held; a poisoned map is still a valid map.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Eq + Hash> Keyed<K> {
    /// Drops the full buckets (a full bucket is what an untracked key gets anyway), unless
    /// none can be full yet.
    fn prune(&mut self, quota: &Quota, now: Instant) {
        if self.prune_not_before.is_some_and(|t| now < t) {
            return;
        }
        self.levels
            .retain(|_, level| level.tokens_at(quota, now) < quota.burst);
        // Unrepresentably far (absurd quotas): look again in an hour rather than at every key.
        let far = now.checked_add(Duration::from_secs(3600));
        self.prune_not_before = self
            .levels
            .values()
            .map(|level| level.full_at(quota).or(far))
            .min()
            .flatten();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn keyed_burst_then_refuses_then_refills() {
        let l = KeyedLimiter::new(Quota::per_minute(3, 60), 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take(&"a", t0).unwrap();
        }
        let Limited { retry_after } = l.take(&"a", t0).unwrap_err();
        assert!(retry_after <= Duration::from_secs(1) && retry_after > Duration::ZERO);
        assert!(l.check(&"a", t0).is_err());
        assert!(l.check(&"b", t0).is_ok(), "keys are independent");
        assert!(l.take(&"b", t0).is_ok());
        assert!(
            l.take(&"a", t0 + 1001 * MS).is_ok(),
            "one token per second refills"
        );
        assert!(l.take(&"a", t0 + 1001 * MS).is_err(), "and only one");
        l.reset(&"a");
        assert!(l.check(&"a", t0).is_ok(), "reset forgets the key");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn check_counts_nothing_and_refusals_cost_nothing() {
        let l = KeyedLimiter::new(Quota::per_minute(1, 60), 10);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.check(&1, t0).unwrap();
        }
        assert!(l.is_empty(), "checking does not track a key");
        l.take(&1, t0).unwrap();
        for i in 0..5 {
            assert!(l.take(&1, t0 + i * 100 * MS).is_err());
        }
        assert!(
            l.take(&1, t0 + 1001 * MS).is_ok(),
            "refused events did not push the refill back"
        );
    }

    #[test]
    fn retry_after_says_when_one_token_is_back() {
        let l = KeyedLimiter::new(Quota::per_minute(1, 6), 10);
        let t0 = Instant::now();
        l.take(&"a", t0).unwrap();
        assert_eq!(
            l.take(&"a", t0).unwrap_err().retry_after,
            Duration::from_secs(10)
        );
        let later = l.check(&"a", t0 + Duration::from_secs(4)).unwrap_err();
        assert!((later.retry_after.as_secs_f64() - 6.0).abs() < 1e-6);
    }

    #[test]
    fn bucket_bursts_then_refills() {
        let t = Instant::now();
        let mut b = Bucket::new(Quota::per_second(2, 1), t);
        assert!(b.take(t).is_ok() && b.take(t).is_ok());
        assert!(b.check(t).is_err());
        assert!(b.take(t).is_err());
        assert!(b.take(t + 1001 * MS).is_ok());
        assert!(b.take(t + 1001 * MS).is_err());
    }

    #[test]
    fn zero_quotas_still_refill() {
        let t = Instant::now();
        let mut b = Bucket::new(Quota::per_minute(0, 0), t);
        assert!(b.take(t).is_ok(), "a burst of 0 counts as 1");
        assert!(b.take(t).is_err());
        assert!(b.take(t + Duration::from_secs(61)).is_ok(), "1 per minute");
    }

    #[test]
    fn ipv6_grouped_by_64_and_v4_mapped_unmapped() {
        let key = |s: &str| AddrKey::new(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(
            key("2001:db8:1:2:aaaa::1").ip(),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"), "IPv4 is not grouped");

        let l = KeyedLimiter::new(Quota::per_minute(1, 1), 10);
        let t = Instant::now();
        l.take(&key("2001:db8::1"), t).unwrap();
        assert!(l.check(&key("2001:db8::2"), t).is_err(), "same /64");
        assert!(l.take(&key("2001:db8::2"), t).is_err());
        assert!(l.take(&key("2001:db8:0:1::2"), t).is_ok(), "next /64");
    }

    #[test]
    fn memory_bound_holds_under_200_000_keys() {
        const CAP: usize = 100_000;
        let l = KeyedLimiter::new(Quota::per_minute(10, 10), CAP);
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let ip = IpAddr::V6((u128::from(i) << 64).into());
            assert!(
                l.take(&AddrKey::new(ip), t0).is_ok(),
                "first event of a key"
            );
        }
        assert_eq!(l.len(), CAP, "keys past the cap are not tracked");
        // The tracked keys are still limited; the untracked ones pass.
        let first = AddrKey::new(IpAddr::V6(0u128.into()));
        for _ in 0..9 {
            l.take(&first, t0).unwrap();
        }
        assert!(l.take(&first, t0).is_err());
        let untracked = AddrKey::new(IpAddr::V6((150_000u128 << 64).into()));
        assert!(l.check(&untracked, t0).is_ok());
        assert_eq!(l.len(), CAP);
    }

    #[test]
    fn full_buckets_are_pruned_at_the_cap() {
        let l = KeyedLimiter::new(Quota::per_minute(2, 60), 3);
        let t0 = Instant::now();
        l.take(&1, t0).unwrap();
        l.take(&2, t0).unwrap();
        l.take(&3, t0).unwrap();
        l.take(&3, t0).unwrap();
        // 1 and 2 are full again after 1 s, 3 after 2 s.
        assert!(l.take(&4, t0 + 500 * MS).is_ok());
        assert_eq!(l.len(), 3, "nothing full yet: 4 is not tracked");
        assert!(l.take(&4, t0 + 1001 * MS).is_ok());
        assert_eq!(l.len(), 2, "1 and 2 pruned, 4 tracked");
        assert!(l.check(&3, t0 + 1001 * MS).is_ok());
        l.take(&3, t0 + 1001 * MS).unwrap();
        assert!(
            l.take(&3, t0 + 1001 * MS).is_err(),
            "3 kept its state: one token refilled, two taken"
        );
    }
}

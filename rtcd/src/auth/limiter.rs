//! Token-bucket limiter keyed by client ID or source address.
//!
//! Used to stop failed authentications from turning into bcrypt work: once a key's bucket is
//! empty, attempts are refused before any hash is computed. Buckets refill continuously;
//! full buckets carry no information and are pruned, and the map is capped so that an
//! attacker with many addresses cannot grow it without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept before pruning; beyond this, unseen keys are not tracked (the bcrypt
/// concurrency cap still bounds CPU).
const MAX_TRACKED_KEYS: usize = 100_000;

/// What a limiter counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A source address; IPv6 addresses are grouped by /64, the smallest block one host gets.
    Addr(IpAddr),
    /// A client ID (defeats attackers who rotate addresses).
    Client(String),
}

impl LimitKey {
    /// The key for a source address, with IPv6 masked to its /64.
    pub fn addr(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => LimitKey::Addr(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => LimitKey::Addr(IpAddr::V4(v4)),
                None => {
                    let masked = u128::from(v6) & !((1u128 << 64) - 1);
                    LimitKey::Addr(IpAddr::V6(masked.into()))
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A set of token buckets with one shared shape (burst, refill rate).
#[derive(Debug)]
pub struct Limiter<K = LimitKey> {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    /// `burst` events at once, refilling at `per_minute`.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` if `key` has no token left, without consuming anything.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let buckets = self
            .buckets
            .lock()
            .expect("limiter lock is never poisoned: no panics inside");
        match buckets.get(key) {
            Some(bucket) => {
                let tokens = self.refilled(bucket, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(self.wait_for_one(tokens))
                }
            }
            None => Ok(()),
        }
    }

    /// Consumes one token for `key`; `Err(wait)` if there was none (nothing is consumed then).
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .expect("limiter lock is never poisoned: no panics inside");
        if buckets.len() >= MAX_TRACKED_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, b| self.refilled(b, now) < self.burst);
            if buckets.len() >= MAX_TRACKED_KEYS {
                return Ok(());
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let tokens = self.refilled(bucket, now);
        if tokens < 1.0 {
            return Err(self.wait_for_one(tokens));
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            updated: now,
        };
        Ok(())
    }

    /// Forgets `key` (e.g. after a success, so a client that fixed its key starts fresh).
    pub fn reset(&self, key: &K) {
        self.buckets
            .lock()
            .expect("limiter lock is never poisoned: no panics inside")
            .remove(key);
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    fn wait_for_one(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.per_second).max(0.001))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuses_then_refills() {
        let l: Limiter<&str> = Limiter::new(3, 60);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take(&"a", t0).unwrap();
        }
        let wait = l.take(&"a", t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(l.check(&"a", t0).is_err());
        assert!(l.check(&"b", t0).is_ok(), "keys are independent");
        assert!(
            l.take(&"a", t0 + Duration::from_millis(1001)).is_ok(),
            "one token per second refills"
        );
        l.reset(&"a");
        assert!(l.check(&"a", t0).is_ok());
    }

    #[test]
    fn ipv6_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(LimitKey::addr(a), LimitKey::addr(b));
        assert_ne!(LimitKey::addr(a), LimitKey::addr(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            LimitKey::addr(mapped),
            LimitKey::Addr("10.0.0.1".parse().unwrap())
        );
    }
}

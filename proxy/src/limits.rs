//! Rate limits: token buckets keyed by source address (connections, failed
//! authentications) or owned by one connection (messages).
//!
//! Buckets refill continuously. A keyed limiter forgets full buckets when it grows past its
//! cap, and stops tracking new keys if it is still full of active ones, so an attacker with
//! many addresses cannot grow memory without bound (the global connection cap still holds).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Keys tracked per limiter before pruning.
const MAX_KEYS: usize = 65_536;

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens refilling at `per_second`.
    pub fn new(burst: u32, per_second: f64, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second,
            level: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// Takes one token; false if empty.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.level >= 1.0 {
            self.level -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is available, without taking it.
    pub fn peek(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= 1.0
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= self.capacity
    }
}

/// Groups IPv6 addresses by /64 (what one subscriber usually gets) and unmaps IPv4.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        },
    }
}

/// Token buckets per source address.
#[derive(Debug)]
pub struct AddressLimiter {
    burst: u32,
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AddressLimiter {
    /// `burst` at once, `per_minute` sustained.
    pub fn per_minute(burst: u32, per_minute: u32) -> Self {
        Self {
            burst,
            per_second: f64::from(per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> Option<T> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = address_key(ip);
        if map.len() >= MAX_KEYS && !map.contains_key(&key) {
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= MAX_KEYS {
                return None;
            }
        }
        let bucket = map
            .entry(key)
            .or_insert_with(|| Bucket::new(self.burst, self.per_second, now));
        Some(f(bucket))
    }

    /// Counts one event for `ip`; false if over the limit.
    pub fn take(&self, ip: IpAddr, now: Instant) -> bool {
        self.with(ip, now, |b| b.take(now)).unwrap_or(true)
    }

    /// Whether `ip` is under the limit, without counting.
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&address_key(ip)) {
            Some(b) => {
                let mut b = *b;
                b.peek(now)
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_bursts_then_refills() {
        let t = Instant::now();
        let mut b = Bucket::new(2, 1.0, t);
        assert!(b.take(t) && b.take(t));
        assert!(!b.take(t));
        assert!(b.take(t + Duration::from_millis(1001)));
    }

    #[test]
    fn address_limiter_counts_per_address_and_groups_v6() {
        let l = AddressLimiter::per_minute(1, 1);
        let t = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(l.allows(a, t));
        assert!(l.take(a, t));
        assert!(!l.allows(b, t), "same /64");
        assert!(!l.take(b, t));
        assert!(l.take("127.0.0.1".parse().unwrap(), t));
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}

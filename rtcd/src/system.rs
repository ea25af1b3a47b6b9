//! Host load as reported by `GET /system`, for proxies that place calls on the least
//! loaded rtcd (Mattermost's plugin picks the host with the smallest `cpu_load`).
//!
//! A background task samples `/proc/stat` once a second; readers get the last value
//! without blocking. `cpu_load` is the busy fraction of all CPUs over the last second,
//! 0.0 (idle) to 1.0 (saturated). Mattermost rtcd reports an inverse-idle index instead;
//! both order hosts the same way, which is all the plugin uses it for. `capacity_used` is the
//! share of `rtc.max_sessions` in use, `forwarding_used` the share of
//! `rtc.max_forwarded_packets_per_second` forwarded over the last second, and `load` the
//! largest of the three: what our proxies weight placement by.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The latest load sample: CPU, capacity and forwarding shares (f64 bits).
#[derive(Debug, Default)]
pub struct SystemLoad(AtomicU64, AtomicU64, AtomicU64);

/// What the sampler reads from the SFU each second.
pub struct Usage {
    /// Share of `rtc.max_sessions` in use.
    pub capacity_used: f64,
    /// RTP packets forwarded since start.
    pub forwarded_packets: u64,
}

impl SystemLoad {
    /// Busy fraction of all CPUs over the last sampling second.
    pub fn cpu_load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Share of the host's session capacity in use (`rtc.max_sessions`; 0.0 without one).
    pub fn capacity_used(&self) -> f64 {
        f64::from_bits(self.1.load(Ordering::Relaxed))
    }

    /// Packets forwarded over the last second as a share of
    /// `rtc.max_forwarded_packets_per_second` (0.0 without one): the media load itself, which
    /// sessions alone do not show (a call of ten cameras forwards 45 times what ten
    /// one-to-one calls of audio do).
    pub fn forwarding_used(&self) -> f64 {
        f64::from_bits(self.2.load(Ordering::Relaxed))
    }

    /// What proxies weight placement by: the largest of CPU, capacity and forwarding use, so a
    /// host that is busy, nearly full or forwarding near its budget gets fewer new rooms.
    pub fn load(&self) -> f64 {
        self.cpu_load()
            .max(self.capacity_used())
            .max(self.forwarding_used())
    }

    /// Starts the sampler (CPU from /proc, the rest from `usage`, once a second); it stops
    /// when `cancel` fires. `max_forwarded_pps` 0 leaves `forwarding_used` at 0.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        cancel: CancellationToken,
        max_forwarded_pps: u64,
        usage: impl Fn() -> Usage + Send + 'static,
    ) {
        let load = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut previous = read_proc_stat().await;
            let mut forwarded = (usage().forwarded_packets, tokio::time::Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(load) = load.upgrade() else { return };
                let now = usage();
                load.1
                    .store(now.capacity_used.max(0.0).to_bits(), Ordering::Relaxed);
                let at = tokio::time::Instant::now();
                let seconds = at.duration_since(forwarded.1).as_secs_f64();
                if max_forwarded_pps > 0 && seconds > 0.0 {
                    let rate = now.forwarded_packets.saturating_sub(forwarded.0) as f64 / seconds;
                    load.2.store(
                        (rate / max_forwarded_pps as f64).to_bits(),
                        Ordering::Relaxed,
                    );
                }
                forwarded = (now.forwarded_packets, at);
                let current = read_proc_stat().await;
                if let (Some((busy0, total0)), Some((busy1, total1))) = (previous, current) {
                    let total = total1.saturating_sub(total0);
                    if total > 0 {
                        let value = busy1.saturating_sub(busy0) as f64 / total as f64;
                        load.0
                            .store(value.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
                    }
                }
                previous = current;
            }
        });
    }
}

/// (busy, total) jiffies from the aggregate `cpu` line; None where /proc is unavailable.
async fn read_proc_stat() -> Option<(u64, u64)> {
    let text = tokio::fs::read_to_string("/proc/stat").await.ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwarding_is_measured_against_its_budget_and_weighs_in_the_load() {
        let forwarded = Arc::new(AtomicU64::new(0));
        let load = Arc::new(SystemLoad::default());
        let cancel = CancellationToken::new();
        let counter = forwarded.clone();
        load.spawn_sampler(cancel.clone(), 1000, move || Usage {
            capacity_used: 0.25,
            forwarded_packets: counter.load(Ordering::Relaxed),
        });
        // 800 packets a second against a budget of 1000, for a little over two samples.
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            forwarded.fetch_add(80, Ordering::Relaxed);
        }
        let used = load.forwarding_used();
        assert!((0.6..=1.0).contains(&used), "forwarding_used {used}");
        assert_eq!(load.capacity_used(), 0.25);
        assert!(load.load() >= used);
        cancel.cancel();

        // Without a budget, forwarding is not counted however much flows.
        let unbudgeted = Arc::new(SystemLoad::default());
        let cancel = CancellationToken::new();
        let counter = forwarded.clone();
        unbudgeted.spawn_sampler(cancel.clone(), 0, move || Usage {
            capacity_used: 0.0,
            forwarded_packets: counter.load(Ordering::Relaxed),
        });
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            forwarded.fetch_add(10_000, Ordering::Relaxed);
        }
        assert_eq!(unbudgeted.forwarding_used(), 0.0);
        cancel.cancel();
    }
}

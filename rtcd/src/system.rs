//! Host load as reported by `GET /system`, for proxies that place calls on the least
//! loaded rtcd (Mattermost's plugin picks the host with the smallest `cpu_load`).
//!
//! A background task samples `/proc/stat` once a second; readers get the last value
//! without blocking. `cpu_load` is the busy fraction of all CPUs over the last second,
//! 0.0 (idle) to 1.0 (saturated). Mattermost rtcd reports an inverse-idle index instead;
//! both order hosts the same way, which is all the plugin uses it for. `capacity_used` is the
//! share of `rtc.max_sessions` in use, and `load` the larger of the two: what our proxies
//! weight placement by.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The latest load sample.
#[derive(Debug, Default)]
pub struct SystemLoad(AtomicU64, AtomicU64);

impl SystemLoad {
    /// Busy fraction of all CPUs over the last sampling second.
    pub fn cpu_load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Share of the host's session capacity in use (`rtc.max_sessions`; 0.0 without one).
    pub fn capacity_used(&self) -> f64 {
        f64::from_bits(self.1.load(Ordering::Relaxed))
    }

    /// What proxies weight placement by: the larger of CPU and capacity use, so a host that
    /// is either busy or nearly full gets fewer new rooms.
    pub fn load(&self) -> f64 {
        self.cpu_load().max(self.capacity_used())
    }

    /// Starts the sampler (CPU from /proc, capacity from `capacity_used`, once a second); it
    /// stops when `cancel` fires.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        cancel: CancellationToken,
        capacity_used: impl Fn() -> f64 + Send + 'static,
    ) {
        let load = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut previous = read_proc_stat().await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(load) = load.upgrade() else { return };
                load.1
                    .store(capacity_used().max(0.0).to_bits(), Ordering::Relaxed);
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

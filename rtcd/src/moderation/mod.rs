//! Moderation decisions that must outlive a process: bans from a call, identity cut-offs and
//! the token-id deny-list ([`store`]), and the one check every join and token refresh goes
//! through ([`ModerationStore::refusal`]). It knows sled (through [`crate::auth::Database`])
//! and the SFU's ID types, nothing of gRPC.

pub mod store;

pub use store::{Ban, ModerationStore, Refusal};

/// Now, in Unix seconds (the unit of bans, cut-offs and token times).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// How often expired bans and deny-list entries are swept.
pub const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);
/// Most entries one sweep removes (the rest wait for the next one; reads ignore them anyway).
pub const PURGE_BATCH: usize = 10_000;

/// Sweeps expired entries every [`PURGE_INTERVAL`] (on a blocking thread, at most
/// [`PURGE_BATCH`] each time) until `cancel`.
pub fn spawn_purger(
    store: ModerationStore,
    cancel: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PURGE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.purge_expired(unix_now(), PURGE_BATCH))
                .await
            {
                Ok(Ok(n)) if n > 0 => {
                    tracing::debug!(removed = n, "expired moderation entries purged")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "purging expired moderation entries failed")
                }
                Err(_) => return,
            }
        }
    })
}

//! This host in the cluster store (`[cluster]`, docs/cluster.md): its announcement (address,
//! ports, load, draining) under a lease it keeps alive, rewritten when its load level changes
//! or it starts draining, and withdrawn when it stops; and the release of the placement claims
//! (`claims/<tenant>/<room>`, written by the proxies) of its rooms that ended.
//!
//! The store being out of reach never holds rtcd up: the announcement is written whenever the
//! store answers (the kit's `Presence` retries and re-announces by itself), and calls never
//! wait on it.

use std::sync::Arc;
use std::time::Duration;

use rtcd_kit::cluster::{
    CLAIMS_PREFIX, HostAnnouncement, Presence, PresenceState, Settings, Store, StoreError,
    claimed_room,
};
use rtcd_kit::health::{Health, Phase};
use rtcd_proto::rules::load_level;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::system::SystemLoad;

/// How often the load level and the draining flag are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often the claims naming this host are compared with the rooms it has, in lease times
/// to live (30 s with the default 10 s). A claim is released when its room was absent at two
/// sweeps in a row with the claim unchanged: a claim whose first join is still on its way
/// (milliseconds) is never taken for an ended room.
const CLAIM_SWEEP_TTLS: u32 = 3;

/// Whether this host has a room (sessions in it or people waiting to enter it), by tenant and
/// room name: what `Rooms.HasRoom` answers.
pub type RoomPresence = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// How long a stop waits for the store to withdraw the announcement (after it, the lease
/// expires on its own).
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// This host's announcement, kept current.
pub struct Announcer {
    inner: Arc<Inner>,
    cancel: CancellationToken,
}

/// What the announcement is made of (shared with the task that checks for changes).
struct Inner {
    presence: Presence,
    base: HostAnnouncement,
    load: Arc<SystemLoad>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Announcer {
    /// Starts announcing `base` (its load and draining filled in as they change) in the store
    /// `settings` names. Fails only on settings the store cannot use (unreadable TLS files);
    /// an unreachable store is retried in the background.
    pub async fn start(
        settings: &Settings,
        store: Arc<dyn Store>,
        base: HostAnnouncement,
        load: Arc<SystemLoad>,
        health: Arc<Health>,
        rooms: RoomPresence,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let announcer = Self {
            inner: Arc::new(Inner {
                presence: Presence::start(store.clone(), settings.lease_ttl()),
                base,
                load,
                health,
                metrics: metrics.clone(),
            }),
            cancel: CancellationToken::new(),
        };
        let first = announcer.inner.current();
        // Kept by the presence, and written as soon as it holds a lease: waited for (one
        // request deadline at most), so that a host that says it is ready is also announced
        // when the store answers; a store out of reach does not hold the start up.
        let _ = announcer
            .inner
            .presence
            .set(&first.key(), first.to_value())
            .await;
        let mut states = announcer.inner.presence.states();
        let present = states.wait_for(|s| matches!(s, PresenceState::Present(_)));
        if tokio::time::timeout(settings.request_timeout(), present)
            .await
            .is_err()
        {
            tracing::warn!(
                key = first.key(),
                "cannot announce this host in the cluster store yet; retrying in the background"
            );
        }
        announcer.inner.report();
        announcer.spawn_checks(first.clone());
        tokio::spawn(sweep_claims(
            store,
            first.host_key(),
            rooms,
            metrics,
            settings.lease_ttl() * CLAIM_SWEEP_TTLS,
            announcer.cancel.clone(),
        ));
        Ok(announcer)
    }

    fn spawn_checks(&self, mut last: HostAnnouncement) {
        let inner = self.inner.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                inner.report();
                let now = inner.current();
                if !changed(&last, &now) {
                    continue;
                }
                // Kept by the presence even when this write fails: it is written with the next
                // lease, and tried again at the next change.
                match inner.presence.set(&now.key(), now.to_value()).await {
                    Ok(()) => tracing::debug!(
                        level = load_level(now.load),
                        draining = now.draining,
                        "host announcement updated"
                    ),
                    Err(e) => {
                        tracing::debug!(error = %e, "host announcement update failed; kept for the next lease")
                    }
                }
                last = now;
            }
        });
    }

    /// Announces the drain now (the proxies stop placing new rooms here at once, not at their
    /// next probe).
    pub async fn draining(&self) {
        let now = self.inner.current();
        if let Err(e) = self.inner.presence.set(&now.key(), now.to_value()).await {
            tracing::info!(error = %e, "could not announce the drain in the cluster store");
        }
    }

    /// Withdraws the announcement (revokes the lease); bounded by [`WITHDRAW_TIMEOUT`], after
    /// which the lease expires on its own.
    pub async fn withdraw(self) {
        self.cancel.cancel();
        match tokio::time::timeout(WITHDRAW_TIMEOUT, self.inner.presence.close()).await {
            Ok(Ok(())) => tracing::info!("host announcement withdrawn from the cluster store"),
            Ok(Err(e)) => {
                tracing::info!(error = %e, "could not withdraw the host announcement; its lease expires on its own")
            }
            Err(_) => tracing::info!(
                "the cluster store did not answer the withdrawal in time; the lease expires on its own"
            ),
        }
    }
}

impl Inner {
    /// Copies the presence's state and failure count into the metrics.
    fn report(&self) {
        let held = matches!(self.presence.state(), PresenceState::Present(_));
        self.metrics.cluster_announced.set(i64::from(held));
        self.metrics.cluster_lease_failures.inner().store(
            self.presence.failures(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The announcement as of now.
    fn current(&self) -> HostAnnouncement {
        HostAnnouncement {
            load: self.load.load(),
            media_load: self.load.capacity_used().max(self.load.forwarding_used()),
            draining: self.health.phase() == Phase::Draining,
            ..self.base.clone()
        }
    }
}

/// Releases the claims naming `host` (its host key) whose rooms ended, sweeping every `every`
/// (see [`CLAIM_SWEEP_TTLS`]).
async fn sweep_claims(
    store: Arc<dyn Store>,
    host: String,
    rooms: RoomPresence,
    metrics: Arc<Metrics>,
    every: Duration,
    cancel: CancellationToken,
) {
    // Claims (key, revision) found without their room at the previous sweep.
    let mut suspects: std::collections::HashSet<(String, i64)> = Default::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let listing = match store.list(CLAIMS_PREFIX).await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the placement claims; next sweep");
                continue;
            }
        };
        let mut absent = std::collections::HashSet::new();
        let held = listing
            .entries
            .iter()
            .filter(|c| c.value == host.as_bytes())
            .count();
        metrics
            .cluster_claims_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        for claim in listing.entries {
            if claim.value != host.as_bytes() {
                continue;
            }
            let Some((tenant, room)) = claimed_room(&claim.key) else {
                continue;
            };
            if rooms(tenant, room) {
                continue;
            }
            let seen = (claim.key.clone(), claim.mod_revision);
            if suspects.contains(&seen) {
                match store.delete_if(&claim.key, claim.mod_revision).await {
                    Ok(true) => {
                        metrics.cluster_claims_released.inc();
                        tracing::debug!(tenant, room, "placement claim of an ended room released")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot release a placement claim; next sweep")
                    }
                }
            } else {
                absent.insert(seen);
            }
        }
        suspects = absent;
    }
}

/// Whether `now` must be written: the drain, or a change of either load level (levels are
/// coarse, so a host writes a few times an hour, not every second).
fn changed(last: &HostAnnouncement, now: &HostAnnouncement) -> bool {
    last.draining != now.draining
        || load_level(last.load) != load_level(now.load)
        || load_level(last.media_load) != load_level(now.media_load)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(load: f64, media_load: f64, draining: bool) -> HostAnnouncement {
        HostAnnouncement {
            address: "10.0.0.7".parse().unwrap(),
            grpc_port: 8443,
            api_port: 8045,
            load,
            media_load,
            draining,
        }
    }

    #[test]
    fn only_a_new_level_or_the_drain_is_written() {
        let last = at(0.30, 0.10, false);
        assert!(!changed(&last, &at(0.45, 0.20, false)), "same levels");
        assert!(changed(&last, &at(0.55, 0.10, false)), "load level 1 -> 2");
        assert!(changed(&last, &at(0.30, 0.26, false)), "media level 0 -> 1");
        assert!(changed(&last, &at(0.30, 0.10, true)), "draining");
    }
}

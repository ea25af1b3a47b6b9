//! Moderation decisions that reach this host through the cluster store (cluster mode): a ban,
//! a cut-off or a denied token written by whichever host took the request closes the sessions
//! it concerns here too, and a stored policy is applied to those waiting here. The host that
//! wrote a decision applied it already; applying it again finds nothing left to close.
//!
//! Bans and policies apply within the watch's delay (milliseconds). Revocations wait
//! [`REVOCATION_GRACE`] first: a proxy asks every ready host for a revocation's sessions at
//! once (its answer counts the sessions closed), and a host that applied the decision from the
//! store a moment before its own request arrived would count nothing; a host the proxy did not
//! reach applies it after the grace.
//!
//! Also keeps `rtcd_cluster_moderation_stale_seconds` current (the copy's age, the input of
//! the fail-closed rule).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::lobby::Lobby;
use crate::metrics::Metrics;
use crate::moderation::{Decision, Shared, unix_now};
use crate::sfu::{Moderation, Sfu, SfuError};

/// How often the copy's age is published and waiting revocations looked at.
const GAUGE_EVERY: Duration = Duration::from_millis(200);

/// How long a revocation seen in the store waits before this host applies it itself (see the
/// module documentation).
pub const REVOCATION_GRACE: Duration = Duration::from_millis(500);

/// Applies every decision that appears in `shared`'s copy after its first complete read
/// (those from before concern no session of this host: it had none) until `cancel`.
pub fn spawn(
    shared: Arc<Shared>,
    sfu: Sfu,
    lobby: Lobby,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let publish_age = || {
            let age = shared.stale_for(Instant::now()).as_secs();
            metrics
                .cluster_moderation_stale_seconds
                .set(i64::try_from(age).unwrap_or(i64::MAX));
        };
        let mut tick = tokio::time::interval(GAUGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Until the first complete read nothing is applied (and no join is admitted).
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                synced = shared.synced(GAUGE_EVERY) => if synced { break },
            }
            publish_age();
        }
        let (mut seen, mut changes) = shared.changes();
        // Revocations seen, with when they are due (in the order seen).
        let mut waiting: VecDeque<(Instant, String, Decision)> = VecDeque::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    publish_age();
                    let now = Instant::now();
                    while waiting.front().is_some_and(|(due, ..)| *due <= now) {
                        let Some((_, key, decision)) = waiting.pop_front() else { break };
                        // A request on this host applies it itself (and counts).
                        if !shared.applying(&key) {
                            apply(&sfu, &lobby, decision).await;
                        }
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let revision = *changes.borrow_and_update();
                    for (key, decision) in shared.decisions_since(seen, unix_now()) {
                        match decision {
                            Decision::CutOff { .. } | Decision::TokenDenied { .. } => {
                                waiting.push_back((Instant::now() + REVOCATION_GRACE, key, decision));
                            }
                            _ => apply(&sfu, &lobby, decision).await,
                        }
                    }
                    seen = seen.max(revision);
                }
            }
        }
    })
}

/// One decision on this host's sessions.
async fn apply(sfu: &Sfu, lobby: &Lobby, decision: Decision) {
    match decision {
        Decision::Ban {
            tenant,
            call,
            user,
            until,
        } => {
            let remove = Moderation::Remove {
                user: user.clone(),
                banned_until: Some(until),
            };
            match sfu.moderate(&tenant, &call, remove).await {
                Ok(0) | Err(SfuError::NotFound) => {}
                Ok(n) => {
                    tracing::info!(target: "audit", client = %tenant, %call, %user, action = "ban", outcome = "applied from the cluster store", sessions = n)
                }
                Err(e) => {
                    tracing::warn!(client = %tenant, %call, %user, error = %e, "could not close a banned user's sessions")
                }
            }
        }
        Decision::CutOff {
            tenant,
            user,
            issued_before,
        } => {
            let n = sfu.revoke(&tenant, Some((&user, issued_before)), "");
            if n > 0 {
                tracing::info!(target: "audit", client = %tenant, %user, action = "revoke", outcome = "applied from the cluster store", sessions = n);
            }
        }
        Decision::TokenDenied { tenant, token_id } => {
            let n = sfu.revoke(&tenant, None, &token_id);
            if n > 0 {
                tracing::info!(target: "audit", client = %tenant, action = "revoke", outcome = "applied from the cluster store", sessions = n);
            }
        }
        Decision::Policy {
            tenant,
            call,
            policy,
        } => lobby.policy_changed(&tenant, &call, policy),
    }
}

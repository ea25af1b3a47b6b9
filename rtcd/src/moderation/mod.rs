//! Moderation decisions that must outlive a process: bans from a call, identity cut-offs, the
//! token-id deny-list and stored room policies, and the one check every join and token refresh
//! goes through ([`ModerationStore::refusal`]). Two stores behind one handle: rtcd's sled
//! database ([`store`], one host or the DNS multi-host mode, where the proxies write every host)
//! and the cluster store ([`shared`], `[cluster]`: written once, every host follows a copy).
//! It knows sled, the cluster store and the SFU's ID types, nothing of gRPC.

pub mod shared;
pub mod store;

use std::sync::Arc;
use std::time::Instant;

pub use rtcd_kit::cluster::moderation::RecordingRecord;
pub use shared::{Applying, Decision, Shared};
pub use store::{Ban, Disk, Refusal};

use crate::auth::StoreError;
use crate::lobby::RoomPolicy;
use crate::sfu::{CallId, TenantId, TokenMeta, UserId};

/// The moderation store of this host. Cheap to clone.
#[derive(Clone)]
pub struct ModerationStore(Backend);

#[derive(Clone)]
enum Backend {
    Disk(Disk),
    Shared(Arc<Shared>),
}

impl From<Disk> for ModerationStore {
    fn from(disk: Disk) -> Self {
        Self(Backend::Disk(disk))
    }
}

impl From<Arc<Shared>> for ModerationStore {
    fn from(shared: Arc<Shared>) -> Self {
        Self(Backend::Shared(shared))
    }
}

impl ModerationStore {
    /// The cluster store's copy, in cluster mode.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        match &self.0 {
            Backend::Shared(s) => Some(s),
            Backend::Disk(_) => None,
        }
    }

    /// Why `user` may not join (or resume in) `call` with `token` at `now`, if they may not,
    /// by what this host knows (in cluster mode: its copy, however old). The rule is the
    /// kit's (`rtcd_kit::cluster::moderation::refusal`), which the proxies apply too.
    pub fn refusal(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        token: &TokenMeta,
        now: i64,
    ) -> Result<Option<Refusal>, StoreError> {
        let ban = match &self.0 {
            Backend::Disk(d) => d.ban_of(tenant, call, user, now)?,
            Backend::Shared(s) => s.ban_of(tenant, call, user, now)?,
        };
        let (cutoff, denied) = self.revocations(tenant, user, token, now)?;
        Ok(rtcd_kit::cluster::moderation::refusal(
            ban.map(|b| b.until),
            cutoff,
            token.issued_at,
            denied,
        ))
    }

    /// The cut-off of `user` and whether `token`'s ID is denied, at `now`.
    fn revocations(
        &self,
        tenant: &TenantId,
        user: &UserId,
        token: &TokenMeta,
        now: i64,
    ) -> Result<(Option<i64>, bool), StoreError> {
        Ok(match &self.0 {
            Backend::Disk(d) => (
                d.cutoff(tenant, user)?,
                d.is_denied(tenant, &token.token_id, now)?,
            ),
            Backend::Shared(s) => (
                s.cutoff(tenant, user)?,
                s.is_denied(tenant, &token.token_id, now)?,
            ),
        })
    }

    /// [`Self::refusal`] for a new session: in cluster mode, refused with
    /// [`StoreError::Stale`] when the copy is older than `cluster.stale_limit_s` (fail closed:
    /// a ban written meanwhile could be missed). Sessions already in (resumes, token refreshes)
    /// are checked against the copy as it is: calls in progress never depend on the store.
    pub fn join_refusal(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        token: &TokenMeta,
        now: i64,
    ) -> Result<Option<Refusal>, StoreError> {
        if let Backend::Shared(s) = &self.0 {
            s.check_fresh(Instant::now())?;
        }
        self.refusal(tenant, call, user, token, now)
    }

    /// Whether `user`'s `token` is revoked at `now`: by a cut-off after its `issued_at` (a
    /// token without one, `issued_at` 0, is revoked by any cut-off) or by its ID on the
    /// deny-list.
    pub fn revoked(
        &self,
        tenant: &TenantId,
        user: &UserId,
        token: &TokenMeta,
        now: i64,
    ) -> Result<Option<Refusal>, StoreError> {
        let (cutoff, denied) = self.revocations(tenant, user, token, now)?;
        Ok(rtcd_kit::cluster::moderation::refusal(
            None,
            cutoff,
            token.issued_at,
            denied,
        ))
    }

    /// The policy stored for `call` (every field unset when none is).
    pub fn policy(&self, tenant: &TenantId, call: &CallId) -> Result<RoomPolicy, StoreError> {
        match &self.0 {
            Backend::Disk(d) => d.policy(tenant, call),
            Backend::Shared(s) => s.policy(tenant, call),
        }
    }

    /// The room's recording in progress, as its host last refreshed it.
    pub fn recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<RecordingRecord>, StoreError> {
        match &self.0 {
            Backend::Disk(d) => d.recording(tenant, call),
            Backend::Shared(s) => s.recording(tenant, call),
        }
    }

    /// Replaces (or, with `None`, removes) the room's recording in progress, durably.
    pub async fn set_recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
        record: Option<RecordingRecord>,
    ) -> Result<(), StoreError> {
        match &self.0 {
            Backend::Disk(d) => {
                d.set_recording(tenant, call, record.as_ref())?;
                d.flush().await
            }
            Backend::Shared(s) => s.set_recording(tenant, call, record).await,
        }
    }

    /// The tenant's bans in force (of one call, or of all), sorted by call then user.
    pub fn bans(
        &self,
        tenant: &TenantId,
        call: Option<&CallId>,
        now: i64,
    ) -> Result<Vec<Ban>, StoreError> {
        let mut bans = match &self.0 {
            Backend::Disk(d) => d.bans(tenant, call, now)?,
            Backend::Shared(s) => s.bans(tenant, call, now)?,
        };
        bans.sort_by(|a, b| (&a.call, &a.user).cmp(&(&b.call, &b.user)));
        Ok(bans)
    }

    /// Bans `user` from `call` until `until` (replacing an earlier ban), durably. The caller
    /// applies the ban to this host's sessions while it holds the [`Applying`] returned (the
    /// cluster's decisions task leaves it to the caller meanwhile); so for every write below.
    pub async fn ban(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        until: i64,
        reason: &str,
        now: i64,
    ) -> Result<Applying, StoreError> {
        match &self.0 {
            Backend::Disk(d) => {
                d.ban(tenant, call, user, until, reason, now)?;
                d.flush().await?;
                Ok(Applying::none())
            }
            Backend::Shared(s) => s.ban(tenant, call, user, until, reason, now).await,
        }
    }

    /// Lifts a ban, durably. False if there was none in force.
    pub async fn unban(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        now: i64,
    ) -> Result<bool, StoreError> {
        match &self.0 {
            Backend::Disk(d) => {
                let lifted = d.unban(tenant, call, user, now)?;
                if lifted {
                    d.flush().await?;
                }
                Ok(lifted)
            }
            Backend::Shared(s) => s.unban(tenant, call, user, now).await,
        }
    }

    /// Revokes `user`'s tokens issued before `issued_before` (a lower cut-off than the one in
    /// force changes nothing), durably; the cut-off in force.
    pub async fn raise_cutoff(
        &self,
        tenant: &TenantId,
        user: &UserId,
        issued_before: i64,
    ) -> Result<(i64, Applying), StoreError> {
        match &self.0 {
            Backend::Disk(d) => {
                let in_force = d.raise_cutoff(tenant, user, issued_before)?;
                d.flush().await?;
                Ok((in_force, Applying::none()))
            }
            Backend::Shared(s) => s.raise_cutoff(tenant, user, issued_before).await,
        }
    }

    /// Puts a token ID on the deny-list until its expiry (capped), durably; the expiry kept.
    pub async fn deny_token(
        &self,
        tenant: &TenantId,
        token_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(i64, Applying), StoreError> {
        match &self.0 {
            Backend::Disk(d) => {
                let kept = d.deny_token(tenant, token_id, expires_at, now)?;
                d.flush().await?;
                Ok((kept, Applying::none()))
            }
            Backend::Shared(s) => s.deny_token(tenant, token_id, expires_at, now).await,
        }
    }

    /// Merges `change` over the stored policy of `call` (over none with `reset`) and stores the
    /// result durably; the policy stored.
    pub async fn set_policy(
        &self,
        tenant: &TenantId,
        call: &CallId,
        change: RoomPolicy,
        reset: bool,
    ) -> Result<(RoomPolicy, Applying), StoreError> {
        match &self.0 {
            Backend::Disk(d) => {
                let base = if reset {
                    RoomPolicy::default()
                } else {
                    d.policy(tenant, call)?
                };
                let stored = change.over(base);
                d.set_policy(tenant, call, stored)?;
                d.flush().await?;
                Ok((stored, Applying::none()))
            }
            Backend::Shared(s) => s.set_policy(tenant, call, change, reset).await,
        }
    }

    /// Removes up to `max` expired bans and deny-list entries; how many.
    pub async fn purge_expired(&self, now: i64, max: usize) -> Result<usize, StoreError> {
        match &self.0 {
            Backend::Disk(d) => {
                let d = d.clone();
                tokio::task::spawn_blocking(move || d.purge_expired(now, max))
                    .await
                    .map_err(|_| StoreError::Corrupt("the purge task failed".into()))?
            }
            Backend::Shared(s) => s.purge_expired(now, max).await,
        }
    }
}

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

/// Sweeps expired entries every [`PURGE_INTERVAL`] (sled's on a blocking thread; at most
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
            match store.purge_expired(unix_now(), PURGE_BATCH).await {
                Ok(n) if n > 0 => {
                    tracing::debug!(removed = n, "expired moderation entries purged")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "purging expired moderation entries failed")
                }
            }
        }
    })
}

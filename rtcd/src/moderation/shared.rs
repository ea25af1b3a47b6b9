//! Bans, identity cut-offs, denied token IDs and room policies in the cluster store (`[cluster]`,
//! docs/cluster.md): written once, by the host that takes the request, and read by every host
//! from its own watched copy ([`Replica`]), so a join is checked without a round trip and a
//! host started later knows everything written before it. The key layout and the records are
//! the kit's (`rtcd_kit::cluster::moderation`, which the proxies read too); the stored room
//! policy's record is rtcd's own ([`PolicyRecord`], the sled one).
//!
//! Read-modify-writes (a cut-off is never lowered, a later deny-list expiry wins, a policy
//! change merges over the stored one) are compare-and-swaps on the version read. Expired bans
//! and deny-list entries are ignored when read and deleted by every host's sweep (`delete_if`
//! on the version seen, so two sweeping hosts or a ban renewed meanwhile lose nothing).
//!
//! A write returns once the store acknowledged it and this host's copy shows it (or, if the
//! copy lags, after one request deadline): a list right after a ban on the same host sees it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtcd_kit::cluster::{Created, Entry, Replica, Revision, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Ban;
use rtcd_kit::cluster::moderation::{
    BANS, BanRecord, CUTOFFS, CutOffRecord, DeniedRecord, POLICIES, PREFIX, RECORDINGS,
    RecordingRecord, TOKENS, ids, key, key_prefix,
};

use super::store::{Disk, PolicyRecord, Stored, deny_until, encode};
use crate::auth::StoreError;
use crate::lobby::RoomPolicy;
use crate::sfu::{CallId, TenantId, UserId};

/// How many times a read-modify-write is tried against concurrent writers of the same key.
const MAX_ATTEMPTS: usize = 16;

fn decode<T: DeserializeOwned>(entry: &Entry) -> Result<T, StoreError> {
    serde_json::from_slice(&entry.value)
        .map_err(|_| StoreError::Corrupt(format!("cluster store entry {}", entry.key)))
}

/// A moderation decision another host (or this one) wrote, for the sessions this host holds:
/// what [`Shared::decisions_since`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `user` is banned from `call` until `until`.
    Ban {
        /// The tenant.
        tenant: TenantId,
        /// The call.
        call: CallId,
        /// The user.
        user: UserId,
        /// Expiry (Unix seconds).
        until: i64,
    },
    /// `user`'s tokens issued before `issued_before` are revoked.
    CutOff {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
        /// The cut-off.
        issued_before: i64,
    },
    /// The token with this ID is revoked.
    TokenDenied {
        /// The tenant.
        tenant: TenantId,
        /// The token's ID.
        token_id: String,
    },
    /// The stored policy of `call` is now `policy`.
    Policy {
        /// The tenant.
        tenant: TenantId,
        /// The call.
        call: CallId,
        /// The policy stored.
        policy: RoomPolicy,
    },
}

/// The decisions in the cluster store and this host's copy of them.
pub struct Shared {
    store: Arc<dyn Store>,
    copy: Replica,
    /// How old the copy may be for a join to be checked against it (`cluster.stale_limit_s`).
    stale_limit: Duration,
    /// How long a write waits for the copy to show it.
    settle: Duration,
    /// Joins refused by [`Shared::check_fresh`].
    unchecked: prometheus_client::metrics::counter::Counter,
    /// Keys this host is writing and will apply itself (the room service, which counts the
    /// sessions it closes): [`Shared::decisions_since`] leaves them out meanwhile.
    applying: std::sync::Mutex<HashMap<String, usize>>,
}

/// Held by the writer of a decision until it applied it to this host's sessions; see
/// [`Shared`]'s `applying`. Dropping it hands the key back to the decisions task.
#[must_use = "hold it until the decision is applied"]
pub struct Applying {
    held: Option<(Arc<Shared>, String)>,
}

impl std::fmt::Debug for Applying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Applying")
            .field(&self.held.as_ref().map(|(_, key)| key))
            .finish()
    }
}

impl Applying {
    /// Nothing held (the sled store: no decisions task).
    pub fn none() -> Self {
        Self { held: None }
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        if let Some((shared, key)) = self.held.take() {
            let mut applying = shared.lock_applying();
            if let Some(n) = applying.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    applying.remove(&key);
                }
            }
        }
    }
}

impl Shared {
    /// Starts following the decisions in `store` (on the current tokio runtime); joins
    /// refused for an old copy are counted in `unchecked`.
    pub fn start(
        store: Arc<dyn Store>,
        stale_limit: Duration,
        settle: Duration,
        unchecked: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            copy: Replica::start(store.clone(), PREFIX),
            store,
            stale_limit,
            settle,
            unchecked,
            applying: std::sync::Mutex::default(),
        }
    }

    fn lock_applying(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `key` as written and applied by this host's caller until the guard drops.
    fn apply_own(self: &Arc<Self>, key: &str) -> Applying {
        *self.lock_applying().entry(key.to_owned()).or_default() += 1;
        Applying {
            held: Some((self.clone(), key.to_owned())),
        }
    }

    /// Waits until the copy was read in full once, at most `within`; whether it was.
    pub async fn synced(&self, within: Duration) -> bool {
        self.copy.wait_synced(within).await
    }

    /// How long the copy has not been following the store (since the start, while it never
    /// was complete).
    pub fn stale_for(&self, now: Instant) -> Duration {
        self.copy.stale_for(now)
    }

    /// Whether a join may be checked against the copy at `now`: it was complete once and has
    /// not been cut off from the store for longer than the configured bound.
    pub fn check_fresh(&self, now: Instant) -> Result<(), StoreError> {
        let age = self.copy.stale_for(now);
        if !self.copy.synced() || age > self.stale_limit {
            self.unchecked.inc();
            return Err(StoreError::Stale(age.as_secs()));
        }
        Ok(())
    }

    fn record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.copy.get(key).map(|e| decode(&e)).transpose()
    }

    /// The ban of `user` from `call` in force at `now`, per the copy.
    pub fn ban_of(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        now: i64,
    ) -> Result<Option<Ban>, StoreError> {
        let k = key(BANS, &[tenant.as_str(), call.as_str(), user.as_str()]);
        Ok(self
            .record::<BanRecord>(&k)?
            .filter(|r| r.until > now)
            .map(|r| Ban::from_record(call.clone(), user.clone(), r)))
    }

    /// The tenant's bans in force (of one call, or of all), in key order.
    pub fn bans(
        &self,
        tenant: &TenantId,
        call: Option<&CallId>,
        now: i64,
    ) -> Result<Vec<Ban>, StoreError> {
        let prefix = match call {
            Some(c) => key_prefix(BANS, &[tenant.as_str(), c.as_str()]),
            None => key_prefix(BANS, &[tenant.as_str()]),
        };
        let mut out = Vec::new();
        for entry in self.copy.entries(&prefix) {
            let record: BanRecord = decode(&entry)?;
            if record.until <= now {
                continue;
            }
            let Some([_, call, user]) =
                ids(&entry.key, BANS, 3).and_then(|p| <[String; 3]>::try_from(p).ok())
            else {
                return Err(StoreError::Corrupt(format!(
                    "cluster store key {}",
                    entry.key
                )));
            };
            out.push(Ban::from_record(
                CallId::new(call),
                UserId::new(user),
                record,
            ));
        }
        Ok(out)
    }

    /// The policy stored for `call`, per the copy.
    pub fn policy(&self, tenant: &TenantId, call: &CallId) -> Result<RoomPolicy, StoreError> {
        let k = key(POLICIES, &[tenant.as_str(), call.as_str()]);
        Ok(self
            .record::<PolicyRecord>(&k)?
            .map_or_else(RoomPolicy::default, |r| r.policy))
    }

    /// The room's recording in progress, per the copy.
    pub fn recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<RecordingRecord>, StoreError> {
        self.record::<RecordingRecord>(&key(RECORDINGS, &[tenant.as_str(), call.as_str()]))
    }

    /// Replaces (or removes) the room's recording in progress in the cluster store.
    pub async fn set_recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
        record: Option<RecordingRecord>,
    ) -> Result<(), StoreError> {
        let k = key(RECORDINGS, &[tenant.as_str(), call.as_str()]);
        self.update::<RecordingRecord, ()>(&k, |_| (record.clone(), ()))
            .await
    }

    /// The cut-off in force for `user`, per the copy.
    pub fn cutoff(&self, tenant: &TenantId, user: &UserId) -> Result<Option<i64>, StoreError> {
        let k = key(CUTOFFS, &[tenant.as_str(), user.as_str()]);
        Ok(self.record::<CutOffRecord>(&k)?.map(|r| r.issued_before))
    }

    /// Whether `token_id` is on the tenant's deny-list at `now`, per the copy.
    pub fn is_denied(
        &self,
        tenant: &TenantId,
        token_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        if token_id.is_empty() {
            return Ok(false);
        }
        let k = key(TOKENS, &[tenant.as_str(), token_id]);
        Ok(self
            .record::<DeniedRecord>(&k)?
            .is_some_and(|r| r.expires_at > now))
    }

    /// Waits (bounded) until the copy shows `revision`, so this host's next read sees its own
    /// write; the write is durable either way.
    async fn settle(&self, revision: Revision) {
        if !self.copy.caught_up(revision, self.settle).await {
            tracing::debug!(
                revision,
                "the copy of moderation decisions lags behind this host's own write"
            );
        }
    }

    /// Waits (bounded) until the copy no longer holds the version of `key` this host deleted.
    async fn settle_deleted(&self, key: &str, mod_revision: Revision) {
        let _ = self.copy.moved_past(key, mod_revision, self.settle).await;
    }

    /// A read-modify-write of `key` on its current version in the store (a linearizable read):
    /// `change` maps what is stored to what to store (`None`: delete; the same value: nothing
    /// to write) and what to return. Tried again when another writer got there first.
    async fn update<T, R>(
        &self,
        key: &str,
        change: impl Fn(Option<T>) -> (Option<T>, R),
    ) -> Result<R, StoreError>
    where
        T: DeserializeOwned + Serialize + PartialEq + Clone,
    {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.get(key).await?;
            let old = current.as_ref().map(decode::<T>).transpose()?;
            let (new, answer) = change(old.clone());
            if new == old {
                return Ok(answer);
            }
            match (new, &current) {
                (None, None) => return Ok(answer),
                (None, Some(entry)) => {
                    if self.store.delete_if(key, entry.mod_revision).await? {
                        self.settle_deleted(key, entry.mod_revision).await;
                        return Ok(answer);
                    }
                }
                (Some(value), None) => {
                    if let Created::Won(revision) =
                        self.store.create(key, encode(&value), None).await?
                    {
                        self.settle(revision).await;
                        return Ok(answer);
                    }
                }
                (Some(value), Some(entry)) => {
                    if let Some(revision) = self
                        .store
                        .put_if(key, encode(&value), entry.mod_revision)
                        .await?
                    {
                        self.settle(revision).await;
                        return Ok(answer);
                    }
                }
            }
        }
        Err(StoreError::Cluster(
            rtcd_kit::cluster::StoreError::Unavailable(format!(
                "{key} kept changing under {MAX_ATTEMPTS} attempts to update it"
            )),
        ))
    }

    /// Bans `user` from `call` until `until` (replacing any earlier ban of theirs there).
    pub async fn ban(
        self: &Arc<Self>,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        until: i64,
        reason: &str,
        now: i64,
    ) -> Result<Applying, StoreError> {
        let record = BanRecord {
            v: 1,
            until,
            reason: reason.to_owned(),
            created_at: now,
        };
        let k = key(BANS, &[tenant.as_str(), call.as_str(), user.as_str()]);
        let applying = self.apply_own(&k);
        let revision = self.store.put(&k, encode(&record), None).await?;
        self.settle(revision).await;
        Ok(applying)
    }

    /// Lifts a ban. False if there was none in force (an expired one is deleted).
    pub async fn unban(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        now: i64,
    ) -> Result<bool, StoreError> {
        let k = key(BANS, &[tenant.as_str(), call.as_str(), user.as_str()]);
        self.update::<BanRecord, bool>(&k, |old| (None, old.is_some_and(|r| r.until > now)))
            .await
    }

    /// Raises `user`'s cut-off to `issued_before` (never lowers it); the cut-off in force.
    pub async fn raise_cutoff(
        self: &Arc<Self>,
        tenant: &TenantId,
        user: &UserId,
        issued_before: i64,
    ) -> Result<(i64, Applying), StoreError> {
        let k = key(CUTOFFS, &[tenant.as_str(), user.as_str()]);
        let applying = self.apply_own(&k);
        self.update::<CutOffRecord, i64>(&k, |old| {
            let in_force = old.map_or(i64::MIN, |r| r.issued_before).max(issued_before);
            (
                Some(CutOffRecord {
                    v: 1,
                    issued_before: in_force,
                }),
                in_force,
            )
        })
        .await
        .map(|in_force| (in_force, applying))
    }

    /// Puts a token ID on the deny-list (a later expiry than the one recorded wins); the
    /// entry's expiry.
    pub async fn deny_token(
        self: &Arc<Self>,
        tenant: &TenantId,
        token_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(i64, Applying), StoreError> {
        let wanted = deny_until(expires_at, now);
        let k = key(TOKENS, &[tenant.as_str(), token_id]);
        let applying = self.apply_own(&k);
        self.update::<DeniedRecord, i64>(&k, |old| {
            let kept = old.map_or(i64::MIN, |r| r.expires_at).max(wanted);
            (
                Some(DeniedRecord {
                    v: 1,
                    expires_at: kept,
                }),
                kept,
            )
        })
        .await
        .map(|kept| (kept, applying))
    }

    /// Merges `change` over the stored policy of `call` (over none with `reset`) and stores
    /// the result (an all-unset policy removes the entry); the policy stored.
    pub async fn set_policy(
        self: &Arc<Self>,
        tenant: &TenantId,
        call: &CallId,
        change: RoomPolicy,
        reset: bool,
    ) -> Result<(RoomPolicy, Applying), StoreError> {
        let k = key(POLICIES, &[tenant.as_str(), call.as_str()]);
        let applying = self.apply_own(&k);
        self.update::<PolicyRecord, RoomPolicy>(&k, |old| {
            let base = match old {
                Some(r) if !reset => r.policy,
                _ => RoomPolicy::default(),
            };
            let stored = change.over(base);
            let record = (stored != RoomPolicy::default()).then_some(PolicyRecord {
                v: 1,
                policy: stored,
            });
            (record, stored)
        })
        .await
        .map(|stored| (stored, applying))
    }

    /// The first time this data directory enters the cluster mode under `prefix`: copies its
    /// decisions into the cluster store ([`Shared::upload`]) and records that it did, so they
    /// are never copied again (a ban lifted in the cluster since would come back). A store out
    /// of reach: logged, tried again at the next start.
    pub async fn adopt(self: &Arc<Self>, disk: &Disk, prefix: &str, now: i64) {
        let db = disk.database();
        match db.uploaded("moderation", prefix) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this host's upload marker");
                return;
            }
        }
        match self.upload(disk, now).await {
            Ok(n) => {
                tracing::info!(
                    copied = n,
                    "moderation decisions of this host copied into the cluster store"
                );
                if let Err(e) = db.mark_uploaded("moderation", prefix).await {
                    tracing::warn!(error = %e, "cannot record that this host's decisions were copied");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot copy this host's moderation decisions into the cluster store; tried again at the next start")
            }
        }
    }

    /// Copies the decisions of this host's sled store into the cluster store, never weakening
    /// one it holds: a ban or a policy only where there is none, a cut-off or a deny-list
    /// expiry only raised. How a host entering the cluster mode brings along what the proxies
    /// wrote to it (docs/operations.md, "Running the cluster mode"). How many it wrote.
    pub async fn upload(self: &Arc<Self>, from: &Disk, now: i64) -> Result<usize, StoreError> {
        let mut written = 0;
        for stored in from.everything(now)? {
            let wrote = match stored {
                Stored::Ban(ids, record) => {
                    let parts: Vec<&str> = ids.iter().map(String::as_str).collect();
                    self.create_settled(&key(BANS, &parts), encode(&record))
                        .await?
                }
                Stored::CutOff(ids, issued_before) => {
                    let (tenant, user) = (TenantId::new(&ids[0]), UserId::new(&ids[1]));
                    let before = self.copy.get(&key(CUTOFFS, &[&ids[0], &ids[1]]));
                    let _ = self.raise_cutoff(&tenant, &user, issued_before).await?;
                    self.copy.get(&key(CUTOFFS, &[&ids[0], &ids[1]])) != before
                }
                Stored::Denied(ids, expires_at) => {
                    let before = self.copy.get(&key(TOKENS, &[&ids[0], &ids[1]]));
                    let _ = self
                        .deny_token(&TenantId::new(&ids[0]), &ids[1], expires_at, now)
                        .await?;
                    self.copy.get(&key(TOKENS, &[&ids[0], &ids[1]])) != before
                }
                Stored::Policy(ids, policy) => {
                    let record = PolicyRecord { v: 1, policy };
                    self.create_settled(&key(POLICIES, &[&ids[0], &ids[1]]), encode(&record))
                        .await?
                }
            };
            written += usize::from(wrote);
        }
        Ok(written)
    }

    /// Writes `value` at `key` only if absent, then waits (bounded) for the copy to show it;
    /// whether it wrote.
    async fn create_settled(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        match self.store.create(key, value, None).await? {
            Created::Won(revision) => {
                self.settle(revision).await;
                Ok(true)
            }
            Created::Taken(_) => Ok(false),
        }
    }

    /// Deletes up to `max` expired bans and deny-list entries seen in the copy; how many.
    pub async fn purge_expired(&self, now: i64, max: usize) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for entry in self.copy.entries(BANS) {
            if decode::<BanRecord>(&entry).is_ok_and(|r| r.until <= now) {
                expired.push(entry);
            }
        }
        for entry in self.copy.entries(TOKENS) {
            if decode::<DeniedRecord>(&entry).is_ok_and(|r| r.expires_at <= now) {
                expired.push(entry);
            }
        }
        let mut removed = 0;
        for entry in expired.into_iter().take(max) {
            // Only the version seen: a ban renewed meanwhile stays.
            if self.store.delete_if(&entry.key, entry.mod_revision).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The revision the copy reflects and a receiver that sees each new one.
    pub fn changes(&self) -> (Revision, tokio::sync::watch::Receiver<Revision>) {
        (self.copy.revision(), self.copy.changes())
    }

    /// The decisions written after revision `seen` that the copy holds (expired bans and
    /// deny-list entries left out, and those this host is applying itself), in key order;
    /// deletions (a lifted ban) need no action.
    pub fn decisions_since(&self, seen: Revision, now: i64) -> Vec<(String, Decision)> {
        let mut out = Vec::new();
        let applying = self.lock_applying().clone();
        for entry in self.copy.entries(PREFIX) {
            if entry.mod_revision <= seen || applying.contains_key(&entry.key) {
                continue;
            }
            if let Some(decision) = decision(&entry, now) {
                out.push((entry.key, decision));
            }
        }
        out
    }

    /// Whether a request on this host is writing and applying `key` itself right now.
    pub fn applying(&self, key: &str) -> bool {
        self.lock_applying().contains_key(key)
    }
}

/// The decision an entry holds, if it is one in force (undecodable entries are skipped: they
/// are reported where they are read).
fn decision(entry: &Entry, now: i64) -> Option<Decision> {
    let k = entry.key.as_str();
    if let Some([t, c, u]) = ids(k, BANS, 3).and_then(|p| <[String; 3]>::try_from(p).ok()) {
        let r: BanRecord = decode(entry).ok()?;
        return (r.until > now).then(|| Decision::Ban {
            tenant: TenantId::new(t),
            call: CallId::new(c),
            user: UserId::new(u),
            until: r.until,
        });
    }
    if let Some([t, u]) = ids(k, CUTOFFS, 2).and_then(|p| <[String; 2]>::try_from(p).ok()) {
        let r: CutOffRecord = decode(entry).ok()?;
        return Some(Decision::CutOff {
            tenant: TenantId::new(t),
            user: UserId::new(u),
            issued_before: r.issued_before,
        });
    }
    if let Some([t, j]) = ids(k, TOKENS, 2).and_then(|p| <[String; 2]>::try_from(p).ok()) {
        let r: DeniedRecord = decode(entry).ok()?;
        return (r.expires_at > now).then(|| Decision::TokenDenied {
            tenant: TenantId::new(t),
            token_id: j,
        });
    }
    if let Some([t, c]) = ids(k, POLICIES, 2).and_then(|p| <[String; 2]>::try_from(p).ok()) {
        let r: PolicyRecord = decode(entry).ok()?;
        return Some(Decision::Policy {
            tenant: TenantId::new(t),
            call: CallId::new(c),
            policy: r.policy,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moderation::Refusal;
    use crate::sfu::TokenMeta;
    use rtcd_kit::cluster::Local;

    const SETTLE: Duration = Duration::from_secs(2);

    async fn shared(store: Arc<dyn Store>) -> Arc<Shared> {
        let s = Arc::new(Shared::start(
            store,
            Duration::from_secs(30),
            SETTLE,
            prometheus_client::metrics::counter::Counter::default(),
        ));
        assert!(s.synced(SETTLE).await);
        s
    }

    /// The revocation check every join and refresh makes (`ModerationStore::revoked`).
    fn revoked(
        s: &Arc<Shared>,
        t: &TenantId,
        u: &UserId,
        token: &TokenMeta,
        now: i64,
    ) -> Result<Option<Refusal>, StoreError> {
        super::super::ModerationStore::from(s.clone()).revoked(t, u, token, now)
    }

    fn token(issued_at: i64, id: &str) -> TokenMeta {
        TokenMeta {
            issued_at,
            token_id: id.into(),
        }
    }

    #[tokio::test]
    async fn a_decision_written_by_one_host_is_seen_by_another() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let (a, b) = (shared(store.clone()).await, shared(store.clone()).await);
        let (t, c, u) = (TenantId::new("t"), CallId::new("c/1"), UserId::new("u"));
        let (seen, mut changes) = b.changes();

        let applying = a.ban(&t, &c, &u, 2_000, "spam", 1_000).await.unwrap();
        // The writer reads its own write at once, and applies it itself: its decisions task
        // leaves the ban alone until the writer is done.
        assert_eq!(a.decisions_since(seen, 1_001), vec![]);
        drop(applying);
        assert_eq!(a.decisions_since(seen, 1_001).len(), 1);
        assert_eq!(a.ban_of(&t, &c, &u, 1_001).unwrap().unwrap().reason, "spam");
        changes
            .wait_for(|r| *r > seen)
            .await
            .expect("the other copy follows");
        let ban = b.ban_of(&t, &c, &u, 1_001).unwrap().unwrap();
        assert_eq!((ban.until, ban.created_at), (2_000, 1_000));
        assert!(b.ban_of(&t, &c, &u, 2_000).unwrap().is_none(), "expired");
        assert_eq!(b.bans(&t, Some(&c), 1_001).unwrap().len(), 1);
        assert_eq!(b.bans(&t, Some(&CallId::new("c")), 1_001).unwrap().len(), 0);
        assert_eq!(b.bans(&TenantId::new("t2"), None, 1_001).unwrap().len(), 0);
        assert_eq!(
            b.decisions_since(seen, 1_001),
            vec![(
                "moderation/bans/t/c%2F1/u".to_owned(),
                Decision::Ban {
                    tenant: t.clone(),
                    call: c.clone(),
                    user: u.clone(),
                    until: 2_000
                }
            )]
        );
        assert_eq!(
            b.decisions_since(seen, 2_000),
            vec![],
            "expired: nothing to do"
        );

        assert!(a.unban(&t, &c, &u, 1_001).await.unwrap());
        assert!(a.ban_of(&t, &c, &u, 1_001).unwrap().is_none());
        assert!(
            !a.unban(&t, &c, &u, 1_001).await.unwrap(),
            "nothing to lift"
        );
    }

    #[tokio::test]
    async fn cut_offs_only_rise_and_later_deny_expiries_win() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let s = shared(store).await;
        let (t, c, u) = (TenantId::new("t"), CallId::new("c"), UserId::new("u"));
        assert_eq!(s.raise_cutoff(&t, &u, 1_000).await.unwrap().0, 1_000);
        assert_eq!(s.raise_cutoff(&t, &u, 500).await.unwrap().0, 1_000);
        assert_eq!(s.raise_cutoff(&t, &u, 1_200).await.unwrap().0, 1_200);
        assert_eq!(
            revoked(&s, &t, &u, &token(1_199, ""), 0).unwrap(),
            Some(Refusal::CutOff {
                issued_before: 1_200
            })
        );
        assert_eq!(revoked(&s, &t, &u, &token(1_200, ""), 0).unwrap(), None);
        assert_eq!(
            revoked(&s, &TenantId::new("t2"), &u, &token(1, ""), 0).unwrap(),
            None,
            "another tenant's user of the same name"
        );
        assert_eq!(s.deny_token(&t, "j", 5_000, 10).await.unwrap().0, 5_000);
        assert_eq!(s.deny_token(&t, "j", 100, 10).await.unwrap().0, 5_000);
        assert_eq!(
            s.deny_token(&t, "cap", 0, 10).await.unwrap().0,
            10 + super::super::store::MAX_DENY_SECONDS
        );
        assert_eq!(
            revoked(&s, &t, &u, &token(2_000, "j"), 11).unwrap(),
            Some(Refusal::TokenDenied)
        );
        assert_eq!(
            revoked(&s, &t, &u, &token(2_000, "j"), 5_000).unwrap(),
            None
        );
        let _ = c;
    }

    #[tokio::test]
    async fn concurrent_raises_keep_the_highest_cut_off() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let s = shared(store).await;
        let (t, u) = (TenantId::new("t"), UserId::new("u"));
        let raises = (1..=20).map(|i| {
            let (s, t, u) = (s.clone(), t.clone(), u.clone());
            tokio::spawn(async move { s.raise_cutoff(&t, &u, i * 100).await.unwrap().0 })
        });
        for r in futures_util::future::join_all(raises).await {
            r.unwrap();
        }
        assert_eq!(s.raise_cutoff(&t, &u, 0).await.unwrap().0, 2_000);
    }

    #[tokio::test]
    async fn policies_merge_reset_and_go_when_all_unset() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let s = shared(store.clone()).await;
        let (t, c) = (TenantId::new("t"), CallId::new("c"));
        let lobby = RoomPolicy {
            lobby: Some(true),
            ..RoomPolicy::default()
        };
        let guests = RoomPolicy {
            guests_allowed: Some(false),
            ..RoomPolicy::default()
        };
        let _ = s.set_policy(&t, &c, lobby, false).await.unwrap();
        let (merged, _) = s.set_policy(&t, &c, guests, false).await.unwrap();
        assert_eq!(
            (merged.lobby, merged.guests_allowed),
            (Some(true), Some(false))
        );
        assert_eq!(s.policy(&t, &c).unwrap(), merged);
        let (reset, _) = s.set_policy(&t, &c, guests, true).await.unwrap();
        assert_eq!((reset.lobby, reset.guests_allowed), (None, Some(false)));
        let _ = s
            .set_policy(&t, &c, RoomPolicy::default(), true)
            .await
            .unwrap();
        assert_eq!(s.policy(&t, &c).unwrap(), RoomPolicy::default());
        assert_eq!(
            store.list(PREFIX).await.unwrap().entries,
            vec![],
            "an all-unset policy is no entry"
        );
    }

    #[tokio::test]
    async fn expired_entries_are_swept_and_renewed_ones_kept() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let s = shared(store.clone()).await;
        let (t, u) = (TenantId::new("t"), UserId::new("u"));
        let _ = s
            .ban(&t, &CallId::new("old"), &u, 1_500, "", 1_000)
            .await
            .unwrap();
        let _ = s
            .ban(&t, &CallId::new("new"), &u, 9_000, "", 1_000)
            .await
            .unwrap();
        let _ = s.deny_token(&t, "j", 1_500, 1_000).await.unwrap();
        assert_eq!(s.purge_expired(2_000, 100).await.unwrap(), 2);
        let left: Vec<String> = store
            .list(PREFIX)
            .await
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(left, vec!["moderation/bans/t/new/u".to_owned()]);
    }

    #[tokio::test]
    async fn joins_are_refused_until_the_copy_is_complete() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let unchecked = prometheus_client::metrics::counter::Counter::default();
        let s = Shared::start(store, Duration::from_secs(30), SETTLE, unchecked.clone());
        // Before the first read (the task has not run yet on this single-threaded runtime).
        assert!(matches!(
            s.check_fresh(Instant::now()),
            Err(StoreError::Stale(_))
        ));
        assert_eq!(unchecked.get(), 1);
        assert!(s.synced(SETTLE).await);
        assert!(s.check_fresh(Instant::now()).is_ok());
    }

    #[tokio::test]
    async fn a_host_brings_its_decisions_into_the_cluster_once() {
        let dir = tempfile::tempdir().unwrap();
        let clients = crate::auth::ClientStore::open(dir.path()).unwrap();
        let disk = Disk::open(clients.database()).unwrap();
        let (t, c, u) = (TenantId::new("t"), CallId::new("c"), UserId::new("u"));
        let now = 1_000;
        disk.ban(&t, &c, &u, 9_000, "spam", now).unwrap();
        disk.ban(&t, &CallId::new("gone"), &u, 900, "", 500)
            .unwrap();
        disk.raise_cutoff(&t, &u, 800).unwrap();
        disk.deny_token(&t, "j", 5_000, now).unwrap();
        let policy = RoomPolicy {
            lobby: Some(true),
            ..RoomPolicy::default()
        };
        disk.set_policy(&t, &c, policy).unwrap();

        let store: Arc<dyn Store> = Arc::new(Local::new());
        let s = shared(store.clone()).await;
        // The cluster already holds a later cut-off: it is kept.
        let _ = s.raise_cutoff(&t, &u, 950).await.unwrap();
        s.adopt(&disk, "/t/", now).await;
        assert!(s.ban_of(&t, &c, &u, now).unwrap().is_some());
        assert!(
            s.ban_of(&t, &CallId::new("gone"), &u, now)
                .unwrap()
                .is_none(),
            "expired: not copied"
        );
        assert_eq!(
            revoked(&s, &t, &u, &token(900, ""), now).unwrap(),
            Some(Refusal::CutOff { issued_before: 950 })
        );
        assert_eq!(
            revoked(&s, &t, &u, &token(2_000, "j"), now).unwrap(),
            Some(Refusal::TokenDenied)
        );
        assert_eq!(s.policy(&t, &c).unwrap(), policy);

        // Lifted in the cluster; the host adopts again (a restart): nothing comes back.
        assert!(s.unban(&t, &c, &u, now).await.unwrap());
        s.adopt(&disk, "/t/", now).await;
        assert!(s.ban_of(&t, &c, &u, now).unwrap().is_none());
        // Under another deployment prefix it is copied again.
        let other: Arc<dyn Store> = Arc::new(Local::new());
        let o = shared(other).await;
        o.adopt(&disk, "/other/", now).await;
        assert!(o.ban_of(&t, &c, &u, now).unwrap().is_some());
    }
}

//! Bans, identity cut-offs, denied token IDs and room policies in rtcd's sled database (the
//! single-host and DNS multi-host modes; `super::shared` holds them in the cluster store), one
//! tree each, in the same database (and group commit) as the client registry:
//!
//! | tree          | key                          | value (JSON, versioned)           |
//! |---------------|------------------------------|-----------------------------------|
//! | `bans`        | tenant, call, user           | `{v, until, reason, created_at}`  |
//! | `cutoffs`     | tenant, user                 | `{v, issued_before}`              |
//! | `denied_jtis` | tenant, jti                  | `{v, expires_at}`                 |
//! | `room_policies` | tenant, call               | `{v, policy}` (a [`RoomPolicy`])  |
//! | `room_recordings` | tenant, call             | a `RecordingRecord` (in progress)  |
//!
//! Each key component is its length (u16, big endian) then its bytes, so a tenant's (or a
//! call's) entries form one prefix and no ID can run into the next. Times are Unix seconds.
//! Expired bans and deny-list entries are ignored when read, removed when met, and swept in
//! bounded batches by [`Disk::purge_expired`]. Cut-offs have no expiry (a user's
//! later cut-off replaces an earlier one; an earlier never replaces a later one). Nothing
//! secret is stored: IDs, times and the moderator's reason.
//!
//! Writers call [`Disk::flush`] before they acknowledge: it is the registry's group
//! commit ([`Database::flush`]), never sled's `flush_async`. The records' JSON is the same in
//! both stores.

use serde::{Deserialize, Serialize};

use rtcd_kit::cluster::moderation::{BanRecord, CutOffRecord, DeniedRecord, RecordingRecord};

use crate::auth::{Database, StoreError};
use crate::lobby::RoomPolicy;
use crate::sfu::{CallId, TenantId, UserId};

/// A ban in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The call the user may not join.
    pub call: CallId,
    /// The user.
    pub user: UserId,
    /// Expiry (Unix seconds).
    pub until: i64,
    /// As the moderator gave it.
    pub reason: String,
    /// When it was made (Unix seconds).
    pub created_at: i64,
}

impl Ban {
    /// The ban a stored record of `user` in `call` describes (either store's: the JSON is one).
    pub(super) fn from_record(call: CallId, user: UserId, record: BanRecord) -> Self {
        Self {
            call,
            user,
            until: record.until,
            reason: record.reason,
            created_at: record.created_at,
        }
    }
}

pub use rtcd_kit::cluster::moderation::Refusal;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PolicyRecord {
    pub(super) v: u32,
    pub(super) policy: RoomPolicy,
}

/// Longest a deny-list entry is kept (a token living longer is revoked by cut-off instead).
pub const MAX_DENY_SECONDS: i64 = 30 * 24 * 3600;

/// One decision as the sled store holds it, with its key's IDs (tenant first).
pub(super) enum Stored {
    /// `[tenant, call, user]` and the ban.
    Ban(Vec<String>, BanRecord),
    /// `[tenant, user]` and the cut-off.
    CutOff(Vec<String>, i64),
    /// `[tenant, token id]` and the entry's expiry.
    Denied(Vec<String>, i64),
    /// `[tenant, call]` and the policy.
    Policy(Vec<String>, RoomPolicy),
}

/// How long a token ID stays on the deny-list: until the token's own expiry, at most
/// [`MAX_DENY_SECONDS`] from `now` (`expires_at` 0 or less = unknown: the cap).
pub(super) fn deny_until(expires_at: i64, now: i64) -> i64 {
    let cap = now.saturating_add(MAX_DENY_SECONDS);
    if expires_at <= 0 {
        cap
    } else {
        expires_at.min(cap)
    }
}

/// Handle to the four trees. Cheap to clone.
#[derive(Clone)]
pub struct Disk {
    db: Database,
    bans: sled::Tree,
    cutoffs: sled::Tree,
    denied: sled::Tree,
    policies: sled::Tree,
    recordings: sled::Tree,
}

fn key(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 2).sum());
    for p in parts {
        // IDs are validated to at most a few hundred bytes; u16 is ample.
        let len = u16::try_from(p.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&p.as_bytes()[..usize::from(len)]);
    }
    out
}

/// The components of a key made by [`key`], or `None` if it is not one.
fn parts(mut bytes: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
        let part = bytes.get(2..2 + len)?;
        out.push(String::from_utf8(part.to_vec()).ok()?);
        bytes = &bytes[2 + len..];
    }
    Some(out)
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of numbers and strings always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(super) fn corrupt(tree: &str, k: &[u8]) -> StoreError {
    StoreError::Corrupt(format!("{tree} entry {}", String::from_utf8_lossy(k)))
}

impl Disk {
    /// Opens (creating if needed) the moderation trees of rtcd's database.
    pub fn open(db: &Database) -> Result<Self, StoreError> {
        Ok(Self {
            db: db.clone(),
            bans: db.open_tree("bans")?,
            cutoffs: db.open_tree("cutoffs")?,
            denied: db.open_tree("denied_jtis")?,
            policies: db.open_tree("room_policies")?,
            recordings: db.open_tree("room_recordings")?,
        })
    }

    /// The database the trees live in.
    pub(super) fn database(&self) -> &Database {
        &self.db
    }

    /// Makes every write so far durable (the database's group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await
    }

    /// Bans `user` from `call` until `until` (replacing any earlier ban of theirs there).
    pub fn ban(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        until: i64,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let record = BanRecord {
            v: 1,
            until,
            reason: reason.to_owned(),
            created_at: now,
        };
        self.bans.insert(
            key(&[tenant.as_str(), call.as_str(), user.as_str()]),
            encode(&record),
        )?;
        Ok(())
    }

    /// The ban of `user` from `call`, if one is in force at `now` (an expired one is removed).
    pub fn ban_of(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        now: i64,
    ) -> Result<Option<Ban>, StoreError> {
        let k = key(&[tenant.as_str(), call.as_str(), user.as_str()]);
        let Some(bytes) = self.bans.get(&k)? else {
            return Ok(None);
        };
        let record: BanRecord = serde_json::from_slice(&bytes).map_err(|_| corrupt("bans", &k))?;
        if record.until <= now {
            // Only if it is still the expired record (a new ban may have replaced it).
            let _ = self
                .bans
                .compare_and_swap(&k, Some(bytes), None as Option<&[u8]>)?;
            return Ok(None);
        }
        Ok(Some(Ban::from_record(call.clone(), user.clone(), record)))
    }

    /// The policy stored for `call` (every field unset when none is).
    pub fn policy(&self, tenant: &TenantId, call: &CallId) -> Result<RoomPolicy, StoreError> {
        let k = key(&[tenant.as_str(), call.as_str()]);
        match self.policies.get(&k)? {
            None => Ok(RoomPolicy::default()),
            Some(bytes) => serde_json::from_slice::<PolicyRecord>(&bytes)
                .map(|r| r.policy)
                .map_err(|_| corrupt("room_policies", &k)),
        }
    }

    /// Replaces the policy stored for `call` (an all-unset policy removes the entry).
    pub fn set_policy(
        &self,
        tenant: &TenantId,
        call: &CallId,
        policy: RoomPolicy,
    ) -> Result<(), StoreError> {
        let k = key(&[tenant.as_str(), call.as_str()]);
        if policy == RoomPolicy::default() {
            self.policies.remove(k)?;
        } else {
            self.policies
                .insert(k, encode(&PolicyRecord { v: 1, policy }))?;
        }
        Ok(())
    }

    /// The room's recording in progress, as last refreshed.
    pub fn recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<RecordingRecord>, StoreError> {
        let k = key(&[tenant.as_str(), call.as_str()]);
        match self.recordings.get(&k)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice::<RecordingRecord>(&bytes)
                .map(Some)
                .map_err(|_| corrupt("room_recordings", &k)),
        }
    }

    /// Replaces (or, with `None`, removes) the room's recording in progress.
    pub fn set_recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
        record: Option<&RecordingRecord>,
    ) -> Result<(), StoreError> {
        let k = key(&[tenant.as_str(), call.as_str()]);
        match record {
            None => {
                self.recordings.remove(k)?;
            }
            Some(r) => {
                self.recordings.insert(k, encode(r))?;
            }
        }
        Ok(())
    }

    /// Lifts a ban. False if there was none in force.
    pub fn unban(
        &self,
        tenant: &TenantId,
        call: &CallId,
        user: &UserId,
        now: i64,
    ) -> Result<bool, StoreError> {
        let in_force = self.ban_of(tenant, call, user, now)?.is_some();
        if in_force {
            self.bans
                .remove(key(&[tenant.as_str(), call.as_str(), user.as_str()]))?;
        }
        Ok(in_force)
    }

    /// The tenant's bans in force (of one call, or of all), in no particular order.
    pub fn bans(
        &self,
        tenant: &TenantId,
        call: Option<&CallId>,
        now: i64,
    ) -> Result<Vec<Ban>, StoreError> {
        let prefix = match call {
            Some(c) => key(&[tenant.as_str(), c.as_str()]),
            None => key(&[tenant.as_str()]),
        };
        let mut out = Vec::new();
        for entry in self.bans.scan_prefix(&prefix) {
            let (k, bytes) = entry?;
            let record: BanRecord =
                serde_json::from_slice(&bytes).map_err(|_| corrupt("bans", &k))?;
            if record.until <= now {
                continue;
            }
            let Some([_, call, user]) = parts(&k).and_then(|p| <[String; 3]>::try_from(p).ok())
            else {
                return Err(corrupt("bans", &k));
            };
            out.push(Ban::from_record(
                CallId::new(call),
                UserId::new(user),
                record,
            ));
        }
        Ok(out)
    }

    /// Revokes `user`'s tokens issued before `issued_before`; a lower cut-off than the one in
    /// force changes nothing. Returns the cut-off in force afterwards.
    pub fn raise_cutoff(
        &self,
        tenant: &TenantId,
        user: &UserId,
        issued_before: i64,
    ) -> Result<i64, StoreError> {
        let k = key(&[tenant.as_str(), user.as_str()]);
        let mut in_force = issued_before;
        self.cutoffs.fetch_and_update(&k, |old| {
            let old = old
                .and_then(|b| serde_json::from_slice::<CutOffRecord>(b).ok())
                .map_or(i64::MIN, |r| r.issued_before);
            in_force = old.max(issued_before);
            Some(encode(&CutOffRecord {
                v: 1,
                issued_before: in_force,
            }))
        })?;
        Ok(in_force)
    }

    /// The cut-off in force for `user`, if any.
    pub fn cutoff(&self, tenant: &TenantId, user: &UserId) -> Result<Option<i64>, StoreError> {
        let k = key(&[tenant.as_str(), user.as_str()]);
        match self.cutoffs.get(&k)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice::<CutOffRecord>(&bytes)
                .map(|r| Some(r.issued_before))
                .map_err(|_| corrupt("cutoffs", &k)),
        }
    }

    /// Puts a token ID on the deny-list until `expires_at`, at most [`MAX_DENY_SECONDS`] from
    /// `now` (0 = unknown expiry: the cap). A later expiry than the one recorded wins. Returns
    /// the entry's expiry.
    pub fn deny_token(
        &self,
        tenant: &TenantId,
        token_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let wanted = deny_until(expires_at, now);
        let k = key(&[tenant.as_str(), token_id]);
        let mut kept = wanted;
        self.denied.fetch_and_update(&k, |old| {
            let old = old
                .and_then(|b| serde_json::from_slice::<DeniedRecord>(b).ok())
                .map_or(i64::MIN, |r| r.expires_at);
            kept = old.max(wanted);
            Some(encode(&DeniedRecord {
                v: 1,
                expires_at: kept,
            }))
        })?;
        Ok(kept)
    }

    /// Whether `token_id` is on the tenant's deny-list at `now` (an expired entry is removed).
    pub fn is_denied(
        &self,
        tenant: &TenantId,
        token_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        if token_id.is_empty() {
            return Ok(false);
        }
        let k = key(&[tenant.as_str(), token_id]);
        let Some(bytes) = self.denied.get(&k)? else {
            return Ok(false);
        };
        let record: DeniedRecord =
            serde_json::from_slice(&bytes).map_err(|_| corrupt("denied_jtis", &k))?;
        if record.expires_at <= now {
            let _ = self
                .denied
                .compare_and_swap(&k, Some(bytes), None as Option<&[u8]>)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Every decision in force at `now`, of every tenant: what a host entering the cluster
    /// mode copies into the cluster store (`super::shared::Shared::upload`).
    pub(super) fn everything(&self, now: i64) -> Result<Vec<Stored>, StoreError> {
        let mut out = Vec::new();
        let ids = |tree: &str, k: &[u8], n: usize| {
            parts(k)
                .filter(|p| p.len() == n)
                .ok_or_else(|| corrupt(tree, k))
        };
        for entry in self.bans.iter() {
            let (k, bytes) = entry?;
            let record: BanRecord =
                serde_json::from_slice(&bytes).map_err(|_| corrupt("bans", &k))?;
            if record.until > now {
                out.push(Stored::Ban(ids("bans", &k, 3)?, record));
            }
        }
        for entry in self.cutoffs.iter() {
            let (k, bytes) = entry?;
            let record: CutOffRecord =
                serde_json::from_slice(&bytes).map_err(|_| corrupt("cutoffs", &k))?;
            out.push(Stored::CutOff(ids("cutoffs", &k, 2)?, record.issued_before));
        }
        for entry in self.denied.iter() {
            let (k, bytes) = entry?;
            let record: DeniedRecord =
                serde_json::from_slice(&bytes).map_err(|_| corrupt("denied_jtis", &k))?;
            if record.expires_at > now {
                out.push(Stored::Denied(
                    ids("denied_jtis", &k, 2)?,
                    record.expires_at,
                ));
            }
        }
        for entry in self.policies.iter() {
            let (k, bytes) = entry?;
            let record: PolicyRecord =
                serde_json::from_slice(&bytes).map_err(|_| corrupt("room_policies", &k))?;
            out.push(Stored::Policy(ids("room_policies", &k, 2)?, record.policy));
        }
        Ok(out)
    }

    /// Removes up to `max` expired bans and deny-list entries; returns how many. Bounded so
    /// a periodic sweep never holds a thread for long.
    pub fn purge_expired(&self, now: i64, max: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (tree, name) in [(&self.bans, "bans"), (&self.denied, "denied_jtis")] {
            let mut expired = Vec::new();
            for entry in tree.iter() {
                if removed + expired.len() >= max {
                    break;
                }
                let (k, bytes) = entry?;
                let until = if name == "bans" {
                    serde_json::from_slice::<BanRecord>(&bytes).map(|r| r.until)
                } else {
                    serde_json::from_slice::<DeniedRecord>(&bytes).map(|r| r.expires_at)
                };
                // An undecodable entry is left for an operator to look at, not deleted.
                if until.is_ok_and(|u| u <= now) {
                    expired.push((k, bytes));
                }
            }
            for (k, bytes) in expired {
                if tree
                    .compare_and_swap(&k, Some(bytes), None as Option<&[u8]>)?
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClientStore;
    use crate::sfu::TokenMeta;

    fn ids() -> (TenantId, CallId, UserId) {
        (TenantId::new("t"), CallId::new("c"), UserId::new("u"))
    }

    fn token(issued_at: i64, id: &str) -> TokenMeta {
        TokenMeta {
            issued_at,
            token_id: id.into(),
        }
    }

    /// The check every join makes (`ModerationStore::refusal`), on this store.
    fn refusal(
        store: &Disk,
        t: &TenantId,
        c: &CallId,
        u: &UserId,
        token: &TokenMeta,
        now: i64,
    ) -> Result<Option<Refusal>, StoreError> {
        super::super::ModerationStore::from(store.clone()).refusal(t, c, u, token, now)
    }

    fn open(dir: &std::path::Path) -> (ClientStore, Disk) {
        // `ClientStore::open` waits out sled's background threads after the last handle.
        let clients = ClientStore::open(dir).unwrap();
        let store = Disk::open(clients.database()).unwrap();
        (clients, store)
    }

    #[tokio::test]
    async fn everything_survives_a_reopen_of_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (t, c, u) = ids();
        {
            let (_clients, store) = open(dir.path());
            store.ban(&t, &c, &u, 2_000, "spam", 1_000).unwrap();
            store.raise_cutoff(&t, &u, 1_500).unwrap();
            store.deny_token(&t, "jti-1", 1_800, 1_000).unwrap();
            let policy = RoomPolicy {
                lobby: Some(true),
                wait_timeout_seconds: Some(30),
                ..RoomPolicy::default()
            };
            store.set_policy(&t, &c, policy).unwrap();
            store.flush().await.unwrap();
        }
        let (_clients, store) = open(dir.path());
        let policy = store.policy(&t, &c).unwrap();
        assert_eq!(
            (
                policy.lobby,
                policy.wait_timeout_seconds,
                policy.guests_allowed
            ),
            (Some(true), Some(30), None)
        );
        assert_eq!(
            store.policy(&t, &CallId::new("other")).unwrap(),
            RoomPolicy::default()
        );
        store.set_policy(&t, &c, RoomPolicy::default()).unwrap();
        assert_eq!(store.policy(&t, &c).unwrap(), RoomPolicy::default());
        let ban = store.ban_of(&t, &c, &u, 1_001).unwrap().unwrap();
        assert_eq!(
            (ban.until, ban.reason.as_str(), ban.created_at),
            (2_000, "spam", 1_000)
        );
        assert_eq!(store.cutoff(&t, &u).unwrap(), Some(1_500));
        assert!(store.is_denied(&t, "jti-1", 1_001).unwrap());
        assert_eq!(
            refusal(&store, &t, &c, &u, &token(1_600, ""), 1_001).unwrap(),
            Some(Refusal::Banned { until: 2_000 })
        );
    }

    #[test]
    fn expired_entries_are_ignored_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let (_clients, store) = open(dir.path());
        let (t, c, u) = ids();
        store.ban(&t, &c, &u, 2_000, "", 1_000).unwrap();
        store
            .ban(&t, &CallId::new("c2"), &u, 5_000, "", 1_000)
            .unwrap();
        store.deny_token(&t, "old", 1_500, 1_000).unwrap();
        assert_eq!(store.bans(&t, None, 1_999).unwrap().len(), 2);
        assert_eq!(store.bans(&t, Some(&c), 1_999).unwrap().len(), 1);
        assert!(
            store.ban_of(&t, &c, &u, 2_000).unwrap().is_none(),
            "expired at `until`"
        );
        assert_eq!(store.bans(&t, None, 2_000).unwrap().len(), 1);
        assert!(!store.is_denied(&t, "old", 1_500).unwrap());
        store
            .ban(&t, &CallId::new("c3"), &u, 2_500, "", 1_000)
            .unwrap();
        store.deny_token(&t, "old2", 2_500, 1_000).unwrap();
        assert_eq!(store.purge_expired(3_000, 1).unwrap(), 1, "bounded");
        assert_eq!(store.purge_expired(3_000, 100).unwrap(), 1);
        assert_eq!(store.purge_expired(3_000, 100).unwrap(), 0);
        assert_eq!(
            store.bans(&t, None, 3_000).unwrap().len(),
            1,
            "c2's ban is in force"
        );
        assert!(!store.unban(&t, &c, &u, 3_000).unwrap(), "nothing to lift");
        assert!(store.unban(&t, &CallId::new("c2"), &u, 3_000).unwrap());
    }

    #[test]
    fn a_cutoff_is_never_lowered_and_revokes_older_and_undated_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (_clients, store) = open(dir.path());
        let (t, c, u) = ids();
        assert_eq!(store.raise_cutoff(&t, &u, 1_000).unwrap(), 1_000);
        assert_eq!(
            store.raise_cutoff(&t, &u, 500).unwrap(),
            1_000,
            "never lowered"
        );
        assert_eq!(store.raise_cutoff(&t, &u, 1_200).unwrap(), 1_200);
        let cut = Some(Refusal::CutOff {
            issued_before: 1_200,
        });
        assert_eq!(
            refusal(&store, &t, &c, &u, &token(1_199, ""), 0).unwrap(),
            cut
        );
        assert_eq!(
            refusal(&store, &t, &c, &u, &token(0, ""), 0).unwrap(),
            cut,
            "undated"
        );
        assert_eq!(
            refusal(&store, &t, &c, &u, &token(1_200, ""), 0).unwrap(),
            None
        );
        // Another tenant's user of the same name is untouched.
        let other = TenantId::new("t2");
        assert_eq!(
            refusal(&store, &other, &c, &u, &token(1, ""), 0).unwrap(),
            None
        );
        // The deny-list: capped at 30 days, tenant-scoped, a later expiry wins.
        assert_eq!(
            store.deny_token(&t, "j", i64::MAX, 10).unwrap(),
            10 + MAX_DENY_SECONDS
        );
        assert_eq!(
            store.deny_token(&t, "j", 100, 10).unwrap(),
            10 + MAX_DENY_SECONDS
        );
        assert_eq!(
            refusal(&store, &t, &c, &u, &token(2_000, "j"), 11).unwrap(),
            Some(Refusal::TokenDenied)
        );
        assert!(!store.is_denied(&other, "j", 11).unwrap());
    }
}

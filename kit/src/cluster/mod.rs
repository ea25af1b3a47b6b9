//! The cluster store: the state that several rtcd hosts and proxy replicas must agree on (hosts
//! that announce themselves, which host a room lives on, bans and revocations), behind one
//! trait, [`Store`], with two implementations: [`Etcd`] (a deployment with `[cluster]`
//! settings: etcd's v3 API, linearizable, its leases and watches) and [`Local`] (one process,
//! in memory, with the same semantics: the single-host mode, and a second implementation that
//! the same test suite holds to etcd's behaviour, `tests/tests/e2e/cluster_store.rs`).
//!
//! The trait is etcd's model cut to what rtcd needs, so that code above it is written once:
//! - keys are strings under the deployment's prefix (the implementation adds and strips it), each
//!   with the revision that created it and the one that last changed it; revisions grow with
//!   every change of the whole store, so "everything up to revision R" is a consistent cut;
//! - [`Store::create`] puts a key only if it does not exist, atomically (a compare-and-swap): the
//!   room placement claim, which two replicas may race for;
//! - a key may be bound to a lease ([`Store::grant`]); a lease not kept alive within its time to
//!   live expires and its keys are deleted (a host's announcement and its claims die with it);
//! - [`Store::watch`] delivers every change under a prefix after a revision, in order, so a
//!   watcher that lost its stream resumes where it was, or learns that the revision was
//!   compacted away and reads the prefix afresh ([`StoreError::Compacted`]).
//!
//! Every call has a deadline ([`Settings::request_timeout_ms`] for etcd): nothing waits forever
//! on a store that lost its quorum. Errors say whether trying again may help
//! ([`StoreError::Unavailable`]) or not.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

mod etcd;
mod hosts;
mod local;
pub mod moderation;
mod presence;
mod replica;
mod settings;

pub use etcd::Etcd;
pub use hosts::{
    CLAIMS_PREFIX, HOSTS_PREFIX, HostAnnouncement, announcement_key, claim_key, claimed_room,
};
pub use local::Local;
pub use presence::{Presence, PresenceState};
pub use replica::Replica;
pub use settings::Settings;

/// A store revision: grows by one with every change anywhere in the store.
pub type Revision = i64;

/// A future a [`Store`] method returns (boxed, so `dyn Store` can be shared by both modes).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A lease: keys bound to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// One key and its value as the store holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, without the deployment prefix.
    pub key: String,
    /// The value (the layers above store JSON).
    pub value: Vec<u8>,
    /// The revision of the change that created the key.
    pub create_revision: Revision,
    /// The revision of the change that last wrote it.
    pub mod_revision: Revision,
    /// The lease it is bound to, if any.
    pub lease: Option<LeaseId>,
}

/// Every key under a prefix, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The entries, sorted by key.
    pub entries: Vec<Entry>,
    /// The revision they were read at: a watch from `revision + 1` misses nothing.
    pub revision: Revision,
}

/// What [`Store::create`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key did not exist and now holds the value, written at this revision.
    Won(Revision),
    /// The key existed: this is what it holds (nothing was written).
    Taken(Entry),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was created or written.
    Put(Entry),
    /// The key was deleted (by a call, or because its lease expired), at `revision`.
    Delete {
        /// The key, without the prefix.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl Change {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(e) => e.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }

    /// The key it changed.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(e) => &e.key,
            Change::Delete { key, .. } => key,
        }
    }
}

/// A watch's stream of changes, in revision order, in batches (a batch may hold several
/// revisions; an empty one is a progress notice: the watch is alive). It ends, with an error or by closing, when the store
/// became unreachable, when the revision asked for was compacted away
/// ([`StoreError::Compacted`]: read the prefix afresh), or when the watcher fell behind; the
/// watcher then resumes from the revision after the last change it saw.
///
/// Bounded ([`WATCH_BUFFER`] batches). Overflow: etcd holds its stream back while the watcher
/// does not read (the events wait in etcd); [`Local`] closes a watch whose buffer is full, and
/// the watcher resumes from its history.
pub type Watch = tokio::sync::mpsc::Receiver<Result<Vec<Change>, StoreError>>;

/// How many batches of changes a [`Watch`] buffers.
pub const WATCH_BUFFER: usize = 64;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not answer in time: unreachable, without quorum, or a deadline passed.
    /// Trying again later may succeed.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for changes older than the store keeps; read the prefix afresh.
    #[error("revision {requested} was compacted (the oldest kept is {oldest})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision the store still has.
        oldest: Revision,
    },
    /// The lease expired or was revoked (its keys are gone).
    #[error("lease {0:x} expired")]
    LeaseExpired(i64),
    /// The store refused the request for good (permissions, a malformed request).
    #[error("cluster store refused the request: {0}")]
    Refused(String),
}

/// The cluster store (see the module documentation). Keys are relative to the deployment's
/// prefix; a `prefix` argument matches every key that starts with it.
pub trait Store: Send + Sync {
    /// The entry at `key`, if any (linearizable: it reflects every change acknowledged before).
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>>;
    /// Every entry under `prefix`, and the revision they were read at.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Listing>;
    /// Writes `value` at `key` (bound to `lease`, or to none), returning the revision.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreFuture<'a, Revision>;
    /// Writes `value` at `key` only if `key` does not exist, atomically.
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreFuture<'a, Created>;
    /// Writes `value` at `key` (bound to no lease) only if `key` was last written at
    /// `mod_revision`, atomically: a read-modify-write that loses to a concurrent writer
    /// writes nothing and reads again. The revision written, or `None` if the key changed or
    /// is gone.
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        mod_revision: Revision,
    ) -> StoreFuture<'a, Option<Revision>>;
    /// Deletes `key`; whether it existed.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
    /// Deletes `key` only if it was last written at `mod_revision` (so a claim is released
    /// only by whoever holds it, never after someone else took it over); whether it did.
    fn delete_if<'a>(&'a self, key: &'a str, mod_revision: Revision) -> StoreFuture<'a, bool>;
    /// A new lease with this time to live (whole seconds, at least one).
    fn grant(&self, ttl: Duration) -> StoreFuture<'_, LeaseId>;
    /// Renews `lease` for its full time to live; the time to live, or
    /// [`StoreError::LeaseExpired`] if it is gone.
    fn keep_alive(&self, lease: LeaseId) -> StoreFuture<'_, Duration>;
    /// Ends `lease` now, deleting its keys (a graceful shutdown's last word).
    fn revoke(&self, lease: LeaseId) -> StoreFuture<'_, ()>;
    /// Every change under `prefix` from revision `from` on (`from` = a [`Listing`]'s revision
    /// plus one); see [`Watch`].
    fn watch<'a>(&'a self, prefix: &'a str, from: Revision) -> StoreFuture<'a, Watch>;
}

/// A lease's time to live in whole seconds, at least one (etcd counts seconds).
fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

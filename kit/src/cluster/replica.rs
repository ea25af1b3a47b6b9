//! [`Replica`]: a prefix of the cluster store held in memory and kept current by a watch, so
//! that what every host must check on every join (bans, revocations, room policies, the hosts
//! themselves) is read without a round trip, and is still there when the store is not.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Change, Entry, Revision, Store, StoreError};

/// The longest wait between two attempts to reach the store again.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// The first wait after a failure (doubled up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// A watched copy of every key under a prefix. It reads the prefix, then follows a watch from
/// the revision it read at; when the watch breaks it resumes from the last revision it applied
/// (nothing missed, nothing applied twice), and reads the prefix afresh if that revision was
/// compacted away. While the store cannot be reached the copy stays as it was and
/// [`Replica::stale_for`] says for how long, so the caller decides what an old copy may still
/// allow (the hosts fail closed for joins they cannot check past a configured bound).
///
/// Dropping the replica stops its task.
pub struct Replica {
    shared: Arc<RwLock<Copy>>,
    changed: watch::Receiver<Revision>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Copy {
    entries: BTreeMap<String, Entry>,
    revision: Revision,
    /// When the copy was first complete (a listing applied); `None` before.
    synced_at: Option<Instant>,
    /// Since when the watch has been broken; `None` while it runs.
    broken_since: Option<Instant>,
}

impl Replica {
    /// Starts following `prefix` of `store` (on the current tokio runtime).
    pub fn start(store: Arc<dyn Store>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let shared = Arc::new(RwLock::new(Copy {
            broken_since: Some(Instant::now()),
            ..Copy::default()
        }));
        let (tx, changed) = watch::channel(0);
        let task = tokio::spawn(follow(store, prefix, shared.clone(), tx));
        Self {
            shared,
            changed,
            task,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Copy> {
        self.shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entry at `key` (relative to the store's prefix, like every key here).
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.read().entries.get(key).cloned()
    }

    /// Every entry of the copy whose key starts with `prefix`, sorted by key.
    pub fn entries(&self, prefix: &str) -> Vec<Entry> {
        self.read()
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The store revision the copy reflects (0 before the first read).
    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    /// Whether the copy was ever complete (the first read of the prefix succeeded).
    pub fn synced(&self) -> bool {
        self.read().synced_at.is_some()
    }

    /// How long the copy has not been following the store at `now` (zero while the watch
    /// runs; since the start when it never synced).
    pub fn stale_for(&self, now: Instant) -> Duration {
        self.read()
            .broken_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// A receiver that sees the revision every time the copy changes (for whoever must act on
    /// a change rather than read the copy at its next use).
    pub fn changes(&self) -> watch::Receiver<Revision> {
        self.changed.clone()
    }

    /// Waits until the copy reflects at least `revision` (what a writer got back), or
    /// `within` passes; whether it does.
    pub async fn caught_up(&self, revision: Revision, within: Duration) -> bool {
        let mut changed = self.changes();
        let wait = changed.wait_for(|r| *r >= revision);
        matches!(tokio::time::timeout(within, wait).await, Ok(Ok(_)))
    }
}

impl Replica {
    /// Waits until the copy no longer holds `key` as written at `mod_revision` (a writer
    /// deleted or replaced it), or `within` passes; whether it does.
    pub async fn moved_past(&self, key: &str, mod_revision: Revision, within: Duration) -> bool {
        let mut changed = self.changes();
        let gone = async {
            while self
                .get(key)
                .is_some_and(|e| e.mod_revision == mod_revision)
            {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        matches!(tokio::time::timeout(within, gone).await, Ok(true))
    }

    /// Waits until the copy was complete once (its first read of the prefix), or `within`
    /// passes; whether it was.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let mut changed = self.changes();
        let complete = async {
            while !self.synced() {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        matches!(tokio::time::timeout(within, complete).await, Ok(true))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The replica's task: read, follow, resume, forever.
async fn follow(
    store: Arc<dyn Store>,
    prefix: String,
    shared: Arc<RwLock<Copy>>,
    tx: watch::Sender<Revision>,
) {
    let mut retry = FIRST_RETRY;
    // Whether the next attempt must read the prefix afresh (first time, or after compaction).
    let mut reread = true;
    loop {
        if reread {
            match store.list(&prefix).await {
                Ok(listing) => {
                    let mut copy = write(&shared);
                    copy.entries = listing
                        .entries
                        .into_iter()
                        .map(|e| (e.key.clone(), e))
                        .collect();
                    copy.revision = listing.revision;
                    copy.synced_at.get_or_insert_with(Instant::now);
                    // Current as of this read; the watch below keeps it so.
                    copy.broken_since = None;
                    drop(copy);
                    tx.send_replace(listing.revision);
                    reread = false;
                }
                Err(e) => {
                    tracing::debug!(prefix, error = %e, "cannot read the cluster store's prefix");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            }
        }
        let from = read(&shared).revision + 1;
        let mut watch = match store.watch(&prefix, from).await {
            Ok(w) => w,
            Err(e) => {
                write(&shared).broken_since.get_or_insert_with(Instant::now);
                tracing::debug!(prefix, error = %e, "cannot watch the cluster store");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        write(&shared).broken_since = None;
        retry = FIRST_RETRY;
        let ended = loop {
            match watch.recv().await {
                Some(Ok(batch)) => {
                    let mut copy = write(&shared);
                    let mut last = copy.revision;
                    for change in batch {
                        // A resumed watch may repeat what was applied: only newer changes count.
                        if change.revision() <= copy.revision {
                            continue;
                        }
                        last = last.max(change.revision());
                        match change {
                            Change::Put(entry) => {
                                copy.entries.insert(entry.key.clone(), entry);
                            }
                            Change::Delete { key, .. } => {
                                copy.entries.remove(&key);
                            }
                        }
                    }
                    if last > copy.revision {
                        copy.revision = last;
                        drop(copy);
                        tx.send_replace(last);
                    }
                }
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        write(&shared).broken_since = Some(Instant::now());
        match ended {
            Some(StoreError::Compacted { requested, oldest }) => {
                tracing::info!(
                    prefix,
                    requested,
                    oldest,
                    "the cluster store compacted past this copy; reading it afresh"
                );
                reread = true;
            }
            Some(e) => {
                tracing::debug!(prefix, error = %e, "the cluster store's watch broke; resuming")
            }
            None => tracing::debug!(prefix, "the cluster store's watch closed; resuming"),
        }
        tokio::time::sleep(retry).await;
    }
}

fn write(shared: &RwLock<Copy>) -> std::sync::RwLockWriteGuard<'_, Copy> {
    shared
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read(shared: &RwLock<Copy>) -> std::sync::RwLockReadGuard<'_, Copy> {
    shared
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

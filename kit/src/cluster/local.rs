//! [`Store`] in one process's memory, with etcd's semantics (revisions, create-if-absent,
//! leases that delete their keys, watches that resume from a revision or report compaction):
//! the single-host mode, where there is nobody to agree with, and the second implementation
//! the shared test suite holds to etcd's behaviour.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    Change, Created, Entry, LeaseId, Listing, Revision, Store, StoreError, StoreFuture,
    WATCH_BUFFER, Watch, ttl_seconds,
};

/// How many changes are kept for watches that resume from a past revision (etcd keeps its
/// history until compaction; a watcher further behind reads the prefix afresh).
const HISTORY: usize = 4096;

/// How often expired leases are looked for when nothing else touches the store.
const SWEEP: Duration = Duration::from_millis(100);

/// The in-memory store. Cloning shares it.
#[derive(Clone)]
pub struct Local {
    state: Arc<Mutex<State>>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Result<Vec<Change>, StoreError>>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    keys: BTreeMap<String, Entry>,
    leases: HashMap<i64, Lease>,
    last_lease: i64,
    /// The latest changes, oldest first, for watches from a past revision.
    history: VecDeque<Change>,
    /// The newest revision dropped from `history` (0: nothing dropped yet).
    compacted: Revision,
    watchers: Vec<Watcher>,
}

impl Local {
    /// An empty store. Spawns its lease sweeper on the current tokio runtime (it ends when
    /// the last clone is dropped).
    pub fn new() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let weak: Weak<Mutex<State>> = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                lock(&state).expire(Instant::now());
            }
        });
        Self { state }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = lock(&self.state);
        state.expire(Instant::now());
        f(&mut state)
    }
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the maps half-changed in a way that matters
    // more than losing the store: keep serving.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// Deletes the keys of every lease past its deadline, one revision per lease (as etcd
    /// revokes a lease in one transaction).
    fn expire(&mut self, now: Instant) {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_lease(id);
        }
    }

    fn end_lease(&mut self, id: i64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let live: Vec<String> = lease
            .keys
            .into_iter()
            .filter(|k| {
                self.keys
                    .get(k)
                    .is_some_and(|e| e.lease == Some(LeaseId(id)))
            })
            .collect();
        if !live.is_empty() {
            self.revision += 1;
            let revision = self.revision;
            let changes = live
                .into_iter()
                .map(|key| {
                    self.keys.remove(&key);
                    Change::Delete { key, revision }
                })
                .collect();
            self.publish(changes);
        }
        true
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), StoreError> {
        match lease {
            Some(l) if !self.leases.contains_key(&l.0) => Err(StoreError::LeaseExpired(l.0)),
            _ => Ok(()),
        }
    }

    fn write(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Revision {
        self.revision += 1;
        let revision = self.revision;
        let create_revision = self.keys.get(key).map_or(revision, |e| e.create_revision);
        if let Some(previous) = self.keys.get(key).and_then(|e| e.lease)
            && Some(previous) != lease
            && let Some(l) = self.leases.get_mut(&previous.0)
        {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|l| self.leases.get_mut(&l.0)) {
            l.keys.insert(key.to_owned());
        }
        let entry = Entry {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
            lease,
        };
        self.keys.insert(key.to_owned(), entry.clone());
        self.publish(vec![Change::Put(entry)]);
        revision
    }

    fn remove(&mut self, key: &str) -> bool {
        let Some(entry) = self.keys.remove(key) else {
            return false;
        };
        if let Some(l) = entry.lease.and_then(|l| self.leases.get_mut(&l.0)) {
            l.keys.remove(key);
        }
        self.revision += 1;
        let revision = self.revision;
        self.publish(vec![Change::Delete {
            key: key.to_owned(),
            revision,
        }]);
        true
    }

    /// Records `changes` (all of one revision) and hands each watcher those under its prefix.
    /// A watcher whose buffer is full is dropped: its stream ends and it resumes from the last
    /// revision it saw (the history still has what it missed).
    fn publish(&mut self, changes: Vec<Change>) {
        self.watchers.retain(|w| {
            let mine: Vec<Change> = changes
                .iter()
                .filter(|c| c.key().starts_with(&w.prefix))
                .cloned()
                .collect();
            mine.is_empty() || w.tx.try_send(Ok(mine)).is_ok()
        });
        for change in changes {
            if self.history.len() == HISTORY
                && let Some(old) = self.history.pop_front()
            {
                self.compacted = old.revision();
            }
            self.history.push_back(change);
        }
    }
}

impl Store for Local {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        Box::pin(async move { self.with(|s| Ok(s.keys.get(key).cloned())) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Listing> {
        Box::pin(async move {
            self.with(|s| {
                let entries = s
                    .keys
                    .range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(_, e)| e.clone())
                    .collect();
                Ok(Listing {
                    entries,
                    revision: s.revision,
                })
            })
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreFuture<'a, Revision> {
        Box::pin(async move {
            self.with(|s| {
                s.check_lease(lease)?;
                Ok(s.write(key, value, lease))
            })
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreFuture<'a, Created> {
        Box::pin(async move {
            self.with(|s| {
                if let Some(holder) = s.keys.get(key) {
                    return Ok(Created::Taken(holder.clone()));
                }
                s.check_lease(lease)?;
                Ok(Created::Won(s.write(key, value, lease)))
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.with(|s| Ok(s.remove(key))) })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        mod_revision: Revision,
    ) -> StoreFuture<'a, Option<Revision>> {
        Box::pin(async move {
            self.with(|s| {
                if s.keys
                    .get(key)
                    .is_some_and(|e| e.mod_revision == mod_revision)
                {
                    Ok(Some(s.write(key, value, None)))
                } else {
                    Ok(None)
                }
            })
        })
    }

    fn delete_if<'a>(&'a self, key: &'a str, mod_revision: Revision) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.with(|s| {
                if s.keys
                    .get(key)
                    .is_some_and(|e| e.mod_revision == mod_revision)
                {
                    Ok(s.remove(key))
                } else {
                    Ok(false)
                }
            })
        })
    }

    fn grant(&self, ttl: Duration) -> StoreFuture<'_, LeaseId> {
        Box::pin(async move {
            self.with(|s| {
                let ttl = Duration::from_secs(ttl_seconds(ttl).unsigned_abs());
                s.last_lease += 1;
                let id = s.last_lease;
                s.leases.insert(
                    id,
                    Lease {
                        ttl,
                        deadline: Instant::now() + ttl,
                        keys: BTreeSet::new(),
                    },
                );
                Ok(LeaseId(id))
            })
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> StoreFuture<'_, Duration> {
        Box::pin(async move {
            self.with(|s| match s.leases.get_mut(&lease.0) {
                Some(l) => {
                    l.deadline = Instant::now() + l.ttl;
                    Ok(l.ttl)
                }
                None => Err(StoreError::LeaseExpired(lease.0)),
            })
        })
    }

    fn revoke(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.with(|s| {
                s.end_lease(lease.0);
                Ok(())
            })
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, from: Revision) -> StoreFuture<'a, Watch> {
        Box::pin(async move {
            self.with(|s| {
                let (tx, rx) = mpsc::channel(WATCH_BUFFER);
                if from > 0 && from <= s.compacted {
                    // Reported in the stream, as etcd does.
                    let _ = tx.try_send(Err(StoreError::Compacted {
                        requested: from,
                        oldest: s.compacted + 1,
                    }));
                    return Ok(rx);
                }
                // The changes since `from`, one batch per revision, as etcd delivers them.
                let mut batch: Vec<Change> = Vec::new();
                for change in s
                    .history
                    .iter()
                    .filter(|c| from > 0 && c.revision() >= from && c.key().starts_with(prefix))
                {
                    if batch
                        .first()
                        .is_some_and(|b| b.revision() != change.revision())
                    {
                        let full = std::mem::take(&mut batch);
                        if tx.try_send(Ok(full)).is_err() {
                            // More history than the buffer: the watcher resumes later.
                            return Ok(rx);
                        }
                    }
                    batch.push(change.clone());
                }
                if !batch.is_empty() && tx.try_send(Ok(batch)).is_err() {
                    return Ok(rx);
                }
                s.watchers.push(Watcher {
                    prefix: prefix.to_owned(),
                    tx,
                });
                Ok(rx)
            })
        })
    }
}

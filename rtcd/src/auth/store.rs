//! The client registry on disk: sled, tree `clients`, client ID -> bcrypt hash record. The
//! same database ([`Database`]) holds the other trees of rtcd's data directory
//! (`crate::moderation`), which share its group commit.
//!
//! Only hashes are stored, never a key. Writes are insert-if-absent (first registration wins,
//! a second one is a conflict) and callers flush before they acknowledge, so an answered
//! registration survives `kill -9`.
//!
//! Flushes are a group commit of our own on sled's blocking `flush`: sled 0.34's
//! `flush_async` deadlocks when called concurrently (sled issue 1308, fixed after the last
//! release), which froze every registration in a burst of a thousand (the e2e test
//! `process::sigkill_amid_a_thousand_concurrent_registrations_loses_no_acknowledged_one`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::ClientId;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (usually a running rtcd) holds the database lock.
    #[error(
        "the store at {0} is in use by another process (is rtcd running? use its HTTP API, or stop it first)"
    )]
    Locked(String),
    /// Any other sled or I/O failure.
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    /// A record on disk could not be decoded (corruption or a newer format).
    #[error("corrupt record for client {0}")]
    Corrupt(String),
    /// The cluster store (`[cluster]`) failed or could not be reached in time.
    #[error(transparent)]
    Cluster(#[from] rtcd_kit::cluster::StoreError),
    /// This host's copy of the cluster's bans and revocations has not followed the store for
    /// this many seconds, more than `cluster.stale_limit_s`: joins cannot be checked.
    #[error(
        "this media server cannot check bans and revocations: its copy has not been current for {0} s (cluster store out of reach)"
    )]
    Stale(u64),
}

/// What is kept per client. Versioned so the format can evolve without a migration tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Record format version (1).
    pub v: u32,
    /// bcrypt hash of the auth key (`$2b$...`).
    pub hash: String,
    /// Registration time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Created from the operator's declared-clients file (`clients.declared_file`) rather
    /// than the API: only such clients are rotated or removed by reconciliation, so a client
    /// dropped from the file goes away while API registrations are never touched. Absent in
    /// records written before the field existed (= registered through the API).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub declared: bool,
}

/// Handle to the registry database. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct ClientStore {
    db: Database,
    clients: sled::Tree,
}

/// rtcd's one sled database (its data directory) and the group commit every writer shares:
/// other stores (moderation) open their own trees here instead of a second database, so one
/// flush covers them all and one lock guards the directory.
#[derive(Clone)]
pub struct Database {
    db: sled::Db,
    commits: Arc<GroupCommit>,
}

impl Database {
    /// Opens (creating if absent) a named tree of the database.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Makes every write so far (in any tree) durable. Await it before acknowledging a change.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let commits = &self.commits;
        let ticket = commits.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let _running = commits.running.lock().await;
        if commits.durable.load(Ordering::Acquire) >= ticket {
            // A flush that started after this caller's write has finished.
            return Ok(());
        }
        // Every ticket handed out so far belongs to a write that is already in sled.
        let covered = commits.requested.load(Ordering::Acquire);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Sled(std::io::Error::other(e.to_string()).into()))??;
        commits.durable.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Blocking flush, for the CLI and shutdown paths outside a runtime.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// How long [`ClientStore::open`] waits for a directory lock held elsewhere to be released.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// One blocking flush at a time, each covering every write whose caller asked before it
/// started: a burst of N acknowledgements costs a few flushes, not N, and never runs N
/// blocking threads.
#[derive(Default)]
struct GroupCommit {
    /// Tickets handed out; a caller takes one after its write.
    requested: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
    /// Held while a flush runs.
    running: tokio::sync::Mutex<()>,
}

impl ClientStore {
    /// Opens (creating if needed) the database directory, readable by its owner only.
    ///
    /// A directory locked by someone else is retried for [`LOCK_WAIT`] before `Locked` is
    /// returned: sled's background writer threads keep the lock for a moment after the last
    /// handle in this process is dropped, so a corrected start right after a failed one (or a
    /// restart inside one process) would otherwise fail at random. Another process that really
    /// holds the store is still refused, [`LOCK_WAIT`] later.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Sled(e.into()))?;
        restrict_permissions(path);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked(path.display().to_string()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(other) => return Err(StoreError::Sled(other)),
            }
        };
        let clients = db.open_tree("clients")?;
        Ok(Self {
            db: Database {
                db,
                commits: Arc::default(),
            },
            clients,
        })
    }

    /// The database this store lives in (for the other stores of the data directory).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Inserts `record` for `id` only if `id` is absent. Returns false on conflict.
    pub fn insert_new(&self, id: &ClientId, record: &ClientRecord) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(record).expect("a record always serializes");
        Ok(self
            .clients
            .compare_and_swap(id.as_str(), None as Option<&[u8]>, Some(value))?
            .is_ok())
    }

    /// Replaces the record of `id` with `new` only if it is still `old` (compare-and-swap):
    /// how reconciliation rotates a declared client's hash without overwriting a concurrent
    /// change. Returns false if the record changed (or vanished) meanwhile.
    pub fn replace(
        &self,
        id: &ClientId,
        old: &ClientRecord,
        new: &ClientRecord,
    ) -> Result<bool, StoreError> {
        // Compared decoded, swapped against the bytes on disk: a record written by an older
        // version (another field order, no `declared`) still matches what was read.
        let Some(current) = self.clients.get(id.as_str())? else {
            return Ok(false);
        };
        let decoded: ClientRecord =
            serde_json::from_slice(&current).map_err(|_| StoreError::Corrupt(id.to_string()))?;
        if decoded != *old {
            return Ok(false);
        }
        let new = serde_json::to_vec(new).expect("a record always serializes");
        Ok(self
            .clients
            .compare_and_swap(id.as_str(), Some(current), Some(new))?
            .is_ok())
    }

    /// Every registered client with its record, sorted by ID (for reconciliation, which needs
    /// the `declared` marker).
    pub fn records(&self) -> Result<Vec<(ClientId, ClientRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.clients.iter() {
            let (key, value) = entry?;
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| ClientId::parse(s).ok())
                .ok_or_else(|| StoreError::Corrupt(String::from_utf8_lossy(&key).into_owned()))?;
            let record =
                serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(id.to_string()))?;
            out.push((id, record));
        }
        Ok(out)
    }

    /// The record of `id`, if registered.
    pub fn get(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        match self.clients.get(id.as_str())? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| StoreError::Corrupt(id.to_string())),
        }
    }

    /// Removes `id`. Returns false if it was not registered.
    pub fn remove(&self, id: &ClientId) -> Result<bool, StoreError> {
        Ok(self.clients.remove(id.as_str())?.is_some())
    }

    /// All registered client IDs, sorted.
    pub fn list(&self) -> Result<Vec<ClientId>, StoreError> {
        let mut out = Vec::new();
        for entry in self.clients.iter() {
            let (key, _) = entry?;
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| ClientId::parse(s).ok())
                .ok_or_else(|| StoreError::Corrupt(String::from_utf8_lossy(&key).into_owned()))?;
            out.push(id);
        }
        Ok(out)
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is registered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Makes every write so far durable. Await it before acknowledging a change.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await
    }

    /// Blocking flush, for the CLI and shutdown paths outside a runtime.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush_blocking()
    }
}

fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict store directory permissions to 0700");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ClientRecord {
        ClientRecord {
            v: 1,
            hash: "$2b$04$x".into(),
            created_unix: 0,
            declared: false,
        }
    }

    /// A record in an older layout (other field order, no `declared`) is read as an API
    /// registration and can still be replaced by compare-and-swap.
    #[test]
    fn legacy_records_decode_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path()).unwrap();
        let id = ClientId::parse("old").unwrap();
        store
            .clients
            .insert("old", &br#"{"created_unix":7,"hash":"$2b$04$x","v":1}"#[..])
            .unwrap();
        let old = store.get(&id).unwrap().unwrap();
        assert!(!old.declared);
        let new = ClientRecord {
            declared: true,
            ..old.clone()
        };
        assert!(store.replace(&id, &old, &new).unwrap());
        assert_eq!(store.get(&id).unwrap().unwrap(), new);
        assert!(
            !store.replace(&id, &old, &new).unwrap(),
            "stale expectation"
        );
    }

    /// Hundreds of writers flushing at once all finish (sled's own `flush_async` deadlocks
    /// here some of the time), and everything they were told is durable is there after a
    /// reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_all_finish_and_cover_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path()).unwrap();
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..500 {
            let store = store.clone();
            writers.spawn(async move {
                let id = ClientId::parse(&format!("c{i}")).unwrap();
                assert!(store.insert_new(&id, &record()).unwrap());
                store.flush().await.unwrap();
            });
        }
        let all = async {
            while let Some(done) = writers.join_next().await {
                done.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("every flush finishes");
        let flushes = store.db.commits.durable.load(Ordering::Acquire);
        assert_eq!(flushes, 500, "the last flush covers every ticket");
        drop(store);
        // `open` waits out sled's background threads, which keep the lock a moment longer.
        let reopened = ClientStore::open(dir.path());
        assert_eq!(reopened.unwrap().len(), 500);
    }
}

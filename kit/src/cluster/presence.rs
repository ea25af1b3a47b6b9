//! [`Presence`]: a process's lease in the cluster store, kept alive, and the keys that say it is
//! there (a host's announcement: its addresses, capacity, load, draining flag). The keys die
//! with the lease, so a host that stops renewing (killed, cut off) disappears from every
//! watcher's view within the lease's time to live, with nothing else to clean up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{LeaseId, Store, StoreError};

/// What [`Presence`] is doing, for metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceState {
    /// No lease yet, or the last one expired and a new one is being granted.
    Absent,
    /// The lease is held and its keys are written.
    Present(LeaseId),
}

/// A lease renewed every third of its time to live, and the keys bound to it. When the lease
/// is lost anyway (the store unreachable for longer than the time to live), a new one is
/// granted as soon as the store answers and every key is written again under it: a host that
/// was cut off announces itself again by itself.
///
/// [`Presence::close`] revokes the lease (a graceful shutdown: watchers see the keys go at
/// once, not a time to live later); dropping it stops renewing and lets the lease expire.
pub struct Presence {
    store: Arc<dyn Store>,
    keys: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    state: watch::Receiver<PresenceState>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    failures: Arc<std::sync::atomic::AtomicU64>,
}

impl Presence {
    /// Starts holding a lease of `ttl` in `store` (on the current tokio runtime).
    pub fn start(store: Arc<dyn Store>, ttl: Duration) -> Self {
        let keys = Arc::new(Mutex::new(BTreeMap::new()));
        let (tx, state) = watch::channel(PresenceState::Absent);
        let wake = Arc::new(tokio::sync::Notify::new());
        let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(hold(
            store.clone(),
            ttl,
            keys.clone(),
            tx,
            wake.clone(),
            failures.clone(),
        ));
        Self {
            store,
            keys,
            state,
            wake,
            task,
            failures,
        }
    }

    /// Sets `key` to `value` under the lease: written now if the lease is held (and again
    /// whenever a new lease replaces a lost one). An error says the write did not reach the
    /// store now; the key is still kept and written with the next lease.
    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        lock(&self.keys).insert(key.to_owned(), value.clone());
        // Copied out first: the watch's read guard must not live across the write below.
        let state = self.state.borrow().clone();
        match state {
            PresenceState::Present(lease) => {
                self.store.put(key, value, Some(lease)).await.map(drop)
            }
            PresenceState::Absent => Ok(()),
        }
        .inspect_err(|_| self.wake.notify_one())
    }

    /// What the presence is doing now.
    pub fn state(&self) -> PresenceState {
        self.state.borrow().clone()
    }

    /// A receiver of every change of state.
    pub fn states(&self) -> watch::Receiver<PresenceState> {
        self.state.clone()
    }

    /// How many renewals or grants have failed since the start (a metric).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops renewing and revokes the lease, deleting its keys now (the presence then does
    /// nothing more).
    pub async fn close(&self) -> Result<(), StoreError> {
        self.task.abort();
        let state = self.state.borrow().clone();
        match state {
            PresenceState::Present(lease) => self.store.revoke(lease).await,
            PresenceState::Absent => Ok(()),
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes every key under `lease` (copied out of the lock first: the writes await the store),
/// stopping at the first that fails.
async fn write_all(
    store: &dyn Store,
    keys: &Mutex<BTreeMap<String, Vec<u8>>>,
    lease: LeaseId,
) -> Result<(), StoreError> {
    let snapshot: Vec<(String, Vec<u8>)> = lock(keys)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in snapshot {
        store.put(&key, value, Some(lease)).await?;
    }
    Ok(())
}

async fn hold(
    store: Arc<dyn Store>,
    ttl: Duration,
    keys: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    tx: watch::Sender<PresenceState>,
    wake: Arc<tokio::sync::Notify>,
    failures: Arc<std::sync::atomic::AtomicU64>,
) {
    let renew = (ttl / 3).max(Duration::from_millis(300));
    let retry = Duration::from_millis(250).min(renew);
    let fail = |what: &str, e: &StoreError| {
        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(error = %e, "cluster lease: {what} failed");
    };
    loop {
        // Get a lease and write every key under it.
        let lease = match store.grant(ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                fail("grant", &e);
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let mut written = false;
        while !written {
            written = match write_all(store.as_ref(), &keys, lease).await {
                Ok(()) => true,
                Err(e) => {
                    fail("announcement", &e);
                    false
                }
            };
            if !written {
                tokio::time::sleep(retry).await;
                // A lease that expired meanwhile is replaced by the outer loop.
                if store.keep_alive(lease).await.is_err() {
                    break;
                }
            }
        }
        if !written {
            continue;
        }
        tx.send_replace(PresenceState::Present(lease));
        tracing::info!(lease = format_args!("{:x}", lease.0), "cluster lease held");
        // Renew until the lease is gone.
        let mut wait = renew;
        loop {
            let rewrite = tokio::select! {
                () = tokio::time::sleep(wait) => false,
                // A key failed to write: renew now, and write the keys again.
                () = wake.notified() => true,
            };
            match store.keep_alive(lease).await {
                Ok(_) => wait = renew,
                Err(StoreError::LeaseExpired(_)) => {
                    fail("renewal", &StoreError::LeaseExpired(lease.0));
                    tracing::warn!(
                        lease = format_args!("{:x}", lease.0),
                        "cluster lease expired (the store was out of reach longer than its time to live); announcing again with a new one"
                    );
                    break;
                }
                Err(e) => {
                    fail("renewal", &e);
                    // Soon again: the time to live allows about three misses in a row.
                    wait = retry;
                    continue;
                }
            }
            if rewrite && let Err(e) = write_all(store.as_ref(), &keys, lease).await {
                fail("announcement", &e);
                wake.notify_one();
                wait = retry;
            }
        }
        tx.send_replace(PresenceState::Absent);
    }
}

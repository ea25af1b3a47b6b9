//! Declared clients: the operator lists `client_id:auth_key` pairs in one file
//! (`clients.declared_file`, typically a Kubernetes Secret or a systemd credential mounted on
//! every host) and each rtcd reconciles it into its own registry at start, before serving. This
//! is how registration scales to many hosts without calling `POST /register` on each.
//!
//! The registry's model is unchanged: reconciliation goes through the same registration path
//! as the API ([`AuthService`]'s bcrypt hashing and insert-if-absent), so only bcrypt hashes
//! reach the disk. Keys never appear in logs or error messages: a malformed line is reported by
//! file and line number only.
//!
//! What reconciliation does, per client:
//!
//! * declared and absent from the store: created, marked [`ClientRecord::declared`];
//! * declared, marked, and the stored hash does not verify the declared key: the new hash
//!   replaces it (key rotation), and cached verifications and bearer tokens are dropped;
//! * declared, registered through the API with the *same* key: adopted (marked), so that the
//!   file now owns it; with a *different* key: start is refused, since reconciliation never
//!   overwrites an API registration;
//! * marked as declared but gone from the file: removed;
//! * registered through the API and not declared: never touched.
//!
//! The file must not be readable by group or others (mode 0400 or 0600): rtcd refuses to start
//! otherwise, the same way ssh refuses a private key. Reconciliation runs at start, and again
//! on SIGHUP (`crate::cli`): a file that fails on reload is logged and changes nothing.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{AuthError, AuthService, ClientId, ClientRecord, MIN_KEY_BYTES, Secret, validate_key};
use crate::metrics::{DeclaredChangeLabels, OutcomeLabels};

/// Why the declared-clients file could not be applied. Messages name the file (and line), and
/// never contain a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeclaredError {
    /// The file could not be opened or read.
    #[error("cannot read declared clients file {path}: {source}")]
    Read {
        /// The configured path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is a directory or a special file.
    #[error("declared clients file {path} is not a regular file")]
    NotAFile {
        /// The configured path.
        path: String,
    },
    /// Group or others may read (or write) the file: the keys in it are not protected.
    #[error(
        "declared clients file {path} is accessible by group or others (mode {mode:04o}); \
         restrict it to its owner (chmod 0400, or defaultMode: 0400 on a Kubernetes Secret)"
    )]
    Permissions {
        /// The configured path.
        path: String,
        /// The permission bits found.
        mode: u32,
    },
    /// A line is malformed; `reason` says how, without quoting the line.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The configured path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the key).
        reason: String,
    },
    /// The client is registered through the API with a key other than the declared one;
    /// reconciliation never overwrites an API registration.
    #[error(
        "{path}:{line}: client {id} is registered through the API with another key; \
         unregister it (POST /unregister) or declare its current key"
    )]
    RegisteredThroughApi {
        /// The configured path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// The client.
        id: ClientId,
    },
    /// The registry or bcrypt failed.
    #[error("declared clients: {0}")]
    Auth(#[from] AuthError),
}

/// One valid line of the file.
pub struct DeclaredClient {
    /// The client ID (same rules as API registration).
    pub id: ClientId,
    /// Its key (same length rules as API registration, and not weak).
    pub key: Secret,
    /// 1-based line number, for errors.
    pub line: usize,
}

/// What a reconciliation changed, for the start-up summary and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Declared clients that were absent and are now registered.
    pub created: usize,
    /// Declared clients whose key changed.
    pub rotated: usize,
    /// API registrations with the declared key, now owned by the file.
    pub adopted: usize,
    /// Previously declared clients no longer in the file.
    pub removed: usize,
    /// Declared clients already registered with the declared key.
    pub unchanged: usize,
}

/// Reads and validates the file at `path`: owner-only permissions, then every line. Nothing is
/// applied if any line is wrong.
pub fn read(path: &Path) -> Result<Vec<DeclaredClient>, DeclaredError> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = || path.display().to_string();
    // Follows symlinks: a Kubernetes Secret's files are links into a `..data` directory.
    let meta = std::fs::metadata(path).map_err(|source| DeclaredError::Read {
        path: name(),
        source,
    })?;
    if !meta.is_file() {
        return Err(DeclaredError::NotAFile { path: name() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DeclaredError::Permissions { path: name(), mode });
    }
    let bytes = std::fs::read(path).map_err(|source| DeclaredError::Read {
        path: name(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        DeclaredError::Line {
            path: name(),
            line: e.as_bytes()[..valid]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1,
            reason: "is not valid UTF-8".into(),
        }
    })?;
    // The text holds keys: parse it into secrets and let it go.
    parse(&Secret::new(text), path)
}

/// Parses the file's content (`path` only names it in errors): `client_id:auth_key` per line,
/// surrounding spaces ignored, whole-line `#` comments and blank lines skipped.
pub fn parse(text: &Secret, path: &Path) -> Result<Vec<DeclaredClient>, DeclaredError> {
    let mut out = Vec::new();
    let mut seen: HashMap<ClientId, usize> = HashMap::new();
    for (index, raw) in text.expose().lines().enumerate() {
        let line = index + 1;
        let fail = |reason: String| DeclaredError::Line {
            path: path.display().to_string(),
            line,
            reason,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((id, key)) = trimmed.split_once(':') else {
            return Err(fail("expected client_id:auth_key".into()));
        };
        let id = ClientId::parse(id.trim()).map_err(|e| match e {
            AuthError::InvalidClientId(why) => fail(format!("invalid client ID: {why}")),
            _ => fail("invalid client ID".into()),
        })?;
        let key = Secret::new(key.trim());
        validate_key(&key).map_err(|e| match e {
            AuthError::InvalidKey(why) => fail(format!("invalid auth key for client {id}: {why}")),
            _ => fail(format!("invalid auth key for client {id}")),
        })?;
        if let Some(why) = rtcd_kit::secret::weakness(key.expose().as_bytes(), MIN_KEY_BYTES) {
            return Err(fail(format!("auth key for client {id} {why}")));
        }
        if let Some(first) = seen.insert(id.clone(), line) {
            return Err(fail(format!(
                "client {id} is declared twice (first on line {first})"
            )));
        }
        out.push(DeclaredClient { id, key, line });
    }
    Ok(out)
}

/// What to do with one declared client, decided before anything is written.
enum Plan {
    Create,
    Rotate(ClientRecord),
    Adopt(ClientRecord),
    Keep,
}

impl AuthService {
    /// Whether `client` is now registered as declared with its key, as read from the store
    /// itself: another host reconciling the same file made the change this one lost a
    /// compare-and-swap to (cluster mode; with sled nothing else writes).
    async fn declared_elsewhere(&self, client: &DeclaredClient) -> Result<bool, AuthError> {
        let Some(record) = self.inner.store.fresh(&client.id).await? else {
            return Ok(false);
        };
        if !record.declared {
            return Ok(false);
        }
        let (key, hash) = (client.key.clone(), record.hash);
        Ok(self
            .bcrypt(move || bcrypt::verify(key.expose(), &hash))
            .await?
            .unwrap_or(false))
    }

    /// Replaces `client`'s record `old` with `new` (compare-and-swap): true if it did; false
    /// if another host reconciling the same file already made it so (cluster mode); a conflict
    /// if the record changed otherwise.
    async fn replace_declared(
        &self,
        client: &DeclaredClient,
        old: &ClientRecord,
        new: &ClientRecord,
    ) -> Result<bool, AuthError> {
        if self.inner.store.replace(&client.id, old, new).await? {
            return Ok(true);
        }
        if self.declared_elsewhere(client).await? {
            return Ok(false);
        }
        Err(AuthError::Conflict(client.id.clone()))
    }

    /// Reads the declared-clients file at `path` and reconciles it into the registry (see the
    /// module doc). Called at start, before any listener serves. Every line is validated, and
    /// every conflict with an API registration detected, before the first write; changes are
    /// flushed before this returns. Logs one `audit` INFO line per change.
    pub async fn reconcile_declared(&self, path: &Path) -> Result<Reconciled, DeclaredError> {
        let result = match read(path) {
            Ok(declared) => self.reconcile(path, &declared).await,
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.inner
            .metrics
            .declared_reconciliations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        result
    }

    /// [`AuthService::reconcile_declared`] on already-parsed clients.
    pub async fn reconcile(
        &self,
        path: &Path,
        declared: &[DeclaredClient],
    ) -> Result<Reconciled, DeclaredError> {
        let store = &self.inner.store;
        let mut plans = Vec::with_capacity(declared.len());
        for client in declared {
            let plan = match store.get(&client.id).map_err(AuthError::from)? {
                None => Plan::Create,
                Some(record) => {
                    let key = client.key.clone();
                    let hash = record.hash.clone();
                    // A hash that does not parse verifies nothing: treated as a wrong key.
                    let matches = self
                        .bcrypt(move || bcrypt::verify(key.expose(), &hash))
                        .await?
                        .unwrap_or(false);
                    match (record.declared, matches) {
                        (true, true) => Plan::Keep,
                        (true, false) => Plan::Rotate(record),
                        (false, true) => Plan::Adopt(record),
                        (false, false) => {
                            return Err(DeclaredError::RegisteredThroughApi {
                                path: path.display().to_string(),
                                line: client.line,
                                id: client.id.clone(),
                            });
                        }
                    }
                }
            };
            plans.push(plan);
        }

        let file = path.display().to_string();
        let mut done = Reconciled::default();
        let metrics = &self.inner.metrics;
        let changed = |id: &ClientId, change: &'static str| {
            tracing::info!(target: "audit", event = "declared", client_id = %id, change, file = %file, "declared client {change}");
            let change = if change == "key rotated" {
                "key_rotated"
            } else {
                change
            };
            metrics
                .declared_changes
                .get_or_create(&DeclaredChangeLabels { change })
                .inc();
        };
        for (client, plan) in declared.iter().zip(plans) {
            let id = &client.id;
            match plan {
                Plan::Keep => done.unchanged += 1,
                Plan::Create => match self.insert_new(id, &client.key, true).await {
                    Ok(()) => {
                        changed(id, "created");
                        done.created += 1;
                    }
                    // Another host reconciling the same file got there first (cluster mode).
                    Err(AuthError::Conflict(_)) if self.declared_elsewhere(client).await? => {
                        done.unchanged += 1;
                    }
                    Err(e) => return Err(e.into()),
                },
                Plan::Rotate(old) => {
                    let new = ClientRecord {
                        hash: self.hash_key(&client.key).await?,
                        ..old.clone()
                    };
                    if self.replace_declared(client, &old, &new).await? {
                        // The old key's cached verification and its bearer tokens end here.
                        self.forget(id);
                        changed(id, "key rotated");
                        done.rotated += 1;
                    } else {
                        done.unchanged += 1;
                    }
                }
                Plan::Adopt(old) => {
                    let new = ClientRecord {
                        declared: true,
                        ..old.clone()
                    };
                    if self.replace_declared(client, &old, &new).await? {
                        changed(id, "adopted");
                        done.adopted += 1;
                    } else {
                        done.unchanged += 1;
                    }
                }
            }
        }

        let listed: HashSet<&ClientId> = declared.iter().map(|c| &c.id).collect();
        for (id, record) in store.records().map_err(AuthError::from)? {
            if record.declared && !listed.contains(&id) {
                store.remove(&id).await.map_err(AuthError::from)?;
                self.forget(&id);
                changed(&id, "removed");
                done.removed += 1;
            }
        }
        self.commit().await?;
        tracing::info!(
            file = %file,
            created = done.created,
            rotated = done.rotated,
            adopted = done.adopted,
            removed = done.removed,
            unchanged = done.unchanged,
            "declared clients reconciled"
        );
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    use super::*;
    use crate::auth::{ClientStore, Principal};
    use crate::config::SecurityConfig;
    use crate::metrics::Metrics;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const KEY_A: &str = "declared-key-a-0123456789abcdefghijkl";
    const KEY_A2: &str = "declared-key-a-rotated-0123456789abcd";
    const KEY_B: &str = "declared-key-b-0123456789abcdefghijkl";
    const KEY_API: &str = "api-registered-key-0123456789abcdefgh";

    struct Host {
        dir: tempfile::TempDir,
        auth: AuthService,
    }

    impl Host {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = ClientStore::open(&dir.path().join("db")).unwrap();
            let config = SecurityConfig {
                bcrypt_cost: 4,
                ..SecurityConfig::default()
            };
            let auth = AuthService::new(store, config, Metrics::new()).unwrap();
            Self { dir, auth }
        }

        /// Writes `text` as the declared file with `mode` and returns its path.
        fn declare(&self, text: &str, mode: u32) -> PathBuf {
            let path = self.dir.path().join("clients");
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }

        async fn reconcile(&self, text: &str) -> Result<Reconciled, DeclaredError> {
            let path = self.declare(text, 0o400);
            self.auth.reconcile_declared(&path).await
        }

        async fn logs_in(&self, id: &str, key: &str) -> bool {
            self.auth
                .login(ClientId::parse(id).unwrap(), Secret::new(key), LOCAL)
                .await
                .is_ok()
        }

        fn record(&self, id: &str) -> Option<ClientRecord> {
            self.auth
                .store()
                .get(&ClientId::parse(id).unwrap())
                .unwrap()
        }
    }

    #[tokio::test]
    async fn creates_rotates_and_removes_declared_clients() {
        let host = Host::new();
        let done = host
            .reconcile(&format!("# tenants\n\n  alpha : {KEY_A}  \nbeta:{KEY_B}\n"))
            .await
            .unwrap();
        assert_eq!((done.created, done.unchanged), (2, 0));
        assert!(host.logs_in("alpha", KEY_A).await);
        assert!(host.logs_in("beta", KEY_B).await);
        let alpha = host.record("alpha").unwrap();
        assert!(alpha.declared);
        assert!(alpha.hash.starts_with("$2b$04$"), "a bcrypt hash");

        // Same file again: nothing changes.
        let done = host
            .reconcile(&format!("alpha:{KEY_A}\nbeta:{KEY_B}\n"))
            .await
            .unwrap();
        assert_eq!(
            done,
            Reconciled {
                unchanged: 2,
                ..Reconciled::default()
            }
        );

        // Rotation: the old key (even cached from the login above) stops working.
        let done = host
            .reconcile(&format!("alpha:{KEY_A2}\nbeta:{KEY_B}\n"))
            .await
            .unwrap();
        assert_eq!((done.rotated, done.unchanged), (1, 1));
        assert!(!host.logs_in("alpha", KEY_A).await, "old key refused");
        assert!(host.logs_in("alpha", KEY_A2).await, "new key accepted");
        assert_eq!(
            host.record("alpha").unwrap().created_unix,
            alpha.created_unix
        );

        // Removal: beta is gone from the file, so from the store.
        let done = host.reconcile(&format!("alpha:{KEY_A2}\n")).await.unwrap();
        assert_eq!((done.removed, done.unchanged), (1, 1));
        assert!(host.record("beta").is_none());
        assert!(!host.logs_in("beta", KEY_B).await);
        assert_eq!(host.auth.store().len(), 1);

        let metrics = &host.auth.inner.metrics;
        let count = |change| {
            metrics
                .declared_changes
                .get_or_create(&DeclaredChangeLabels { change })
                .get()
        };
        assert_eq!(
            (count("created"), count("key_rotated"), count("removed")),
            (2, 1, 1)
        );
        assert_eq!(metrics.clients_registered.get(), 1);
        let ok = metrics
            .declared_reconciliations
            .get_or_create(&OutcomeLabels { outcome: "ok" })
            .get();
        assert_eq!(ok, 4);
    }

    #[tokio::test]
    async fn api_registrations_are_never_touched() {
        let host = Host::new();
        host.auth
            .register(
                Some(&Principal::Admin),
                ClientId::parse("api-client").unwrap(),
                Secret::new(KEY_API),
                LOCAL,
            )
            .await
            .unwrap();
        // Not declared: survives a reconciliation, including of an empty file.
        host.reconcile(&format!("alpha:{KEY_A}\n")).await.unwrap();
        host.reconcile("# nobody\n").await.unwrap();
        assert!(host.record("alpha").is_none(), "declared then dropped");
        let record = host.record("api-client").unwrap();
        assert!(!record.declared);
        assert!(host.logs_in("api-client", KEY_API).await);

        // Declared with another key: refused before any write, naming file:line, not a key.
        let path = host.declare(&format!("alpha:{KEY_A}\napi-client:{KEY_B}\n"), 0o600);
        let e = host.auth.reconcile_declared(&path).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("{}:2:", path.display())), "{text}");
        assert!(!text.contains(KEY_B) && !text.contains(KEY_API), "{text}");
        assert!(host.record("alpha").is_none(), "nothing applied");
        assert!(host.logs_in("api-client", KEY_API).await);

        // Declared with the same key: adopted, and from then on owned by the file.
        let done = host
            .reconcile(&format!("api-client:{KEY_API}\n"))
            .await
            .unwrap();
        assert_eq!(done.adopted, 1);
        assert!(host.record("api-client").unwrap().declared);
        host.reconcile("").await.unwrap();
        assert!(host.record("api-client").is_none());
    }

    #[tokio::test]
    async fn malformed_lines_name_file_and_line_never_the_key() {
        let host = Host::new();
        let secret_tail = "0123456789abcdefghijklmnopqrstuv";
        let cases = [
            // No separator: the whole line may be a key.
            (format!("alpha:{KEY_A}\nbeta{secret_tail}\n"), 2),
            (format!("\n\nbad id:{secret_tail}\n"), 3),
            (format!("short:{}\n", &secret_tail[..20]), 1),
            (format!("long:{secret_tail}{secret_tail}{secret_tail}\n"), 1),
            ("weak:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".to_string(), 1),
            (
                "sample:REPLACE-ME-with-a-long-random-secret-0123\n".to_string(),
                1,
            ),
            (format!("#\nalpha:{KEY_A}\nalpha:{secret_tail}\n"), 3),
            (format!(":{secret_tail}\n"), 1),
        ];
        for (text, line) in cases {
            let path = host.declare(&text, 0o400);
            let e = host.auth.reconcile_declared(&path).await.unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("{}:{line}: ", path.display())),
                "{msg}"
            );
            for secret in [
                secret_tail,
                &secret_tail[..20],
                "aaaaaaaaaa",
                KEY_A,
                "REPLACE",
            ] {
                assert!(!msg.contains(secret), "{msg}");
                assert!(!format!("{e:?}").contains(secret), "{e:?}");
            }
            assert_eq!(host.auth.store().len(), 0, "nothing applied: {msg}");
        }
    }

    #[tokio::test]
    async fn files_open_to_group_or_others_are_refused() {
        let host = Host::new();
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let path = host.declare(&format!("alpha:{KEY_A}\n"), mode);
            let e = host.auth.reconcile_declared(&path).await.unwrap_err();
            assert!(matches!(e, DeclaredError::Permissions { .. }), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        assert!(host.record("alpha").is_none());
        let e = host
            .auth
            .reconcile_declared(&host.dir.path().join("absent"))
            .await
            .unwrap_err();
        assert!(matches!(e, DeclaredError::Read { .. }), "{e}");
        let e = host
            .auth
            .reconcile_declared(host.dir.path())
            .await
            .unwrap_err();
        assert!(matches!(e, DeclaredError::NotAFile { .. }), "{e}");
        for mode in [0o400, 0o600] {
            let path = host.declare(&format!("alpha:{KEY_A}\n"), mode);
            host.auth.reconcile_declared(&path).await.unwrap();
        }
    }

    /// Only bcrypt hashes reach the disk: no file of the sled directory contains a key.
    #[tokio::test]
    async fn keys_are_stored_only_as_bcrypt_hashes() {
        let host = Host::new();
        host.reconcile(&format!("alpha:{KEY_A}\nbeta:{KEY_B}\n"))
            .await
            .unwrap();
        host.reconcile(&format!("alpha:{KEY_A2}\nbeta:{KEY_B}\n"))
            .await
            .unwrap();
        host.auth.store().flush().await.unwrap();
        let mut files = 0;
        let mut stack = vec![host.dir.path().join("db")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                for key in [KEY_A, KEY_A2, KEY_B] {
                    assert!(
                        !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                        "{} holds a key in clear",
                        path.display()
                    );
                }
            }
        }
        assert!(files > 0);
        assert!(host.record("alpha").unwrap().hash.starts_with("$2b$"));
    }

    // ---- the registry in the cluster store (cluster mode), on the kit's in-memory store ----

    const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

    impl Host {
        /// A host whose registry is `cluster`'s (its sled directory of its own, or `dir`'s).
        async fn in_cluster(
            cluster: &std::sync::Arc<rtcd_kit::cluster::Local>,
            dir: Option<tempfile::TempDir>,
        ) -> Self {
            let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
            let store = ClientStore::open(&dir.path().join("db"))
                .unwrap()
                .shared_in(cluster.clone(), "/t/", SETTLE)
                .await;
            let config = SecurityConfig {
                bcrypt_cost: 4,
                ..SecurityConfig::default()
            };
            let auth = AuthService::new(store, config, Metrics::new()).unwrap();
            Self { dir, auth }
        }
    }

    async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let start = std::time::Instant::now();
        while !check().await {
            assert!(start.elapsed() < SETTLE, "timed out waiting for: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn hosts_sharing_a_registry_see_each_others_clients_and_removals() {
        let cluster = std::sync::Arc::new(rtcd_kit::cluster::Local::new());
        let (a, b) = (
            Host::in_cluster(&cluster, None).await,
            Host::in_cluster(&cluster, None).await,
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        let _follower = b.auth.spawn_registry_follower(cancel.clone()).unwrap();
        let id = ClientId::parse("alpha").unwrap();
        a.auth
            .register(
                Some(&Principal::Admin),
                id.clone(),
                Secret::new(KEY_API),
                LOCAL,
            )
            .await
            .unwrap();
        assert!(a.logs_in("alpha", KEY_API).await, "the writer at once");
        eventually("host B knows alpha", async || {
            b.logs_in("alpha", KEY_API).await
        })
        .await;
        let token = b
            .auth
            .login(id.clone(), Secret::new(KEY_API), LOCAL)
            .await
            .unwrap()
            .token;
        let bearer = crate::auth::Credentials::Bearer(token);
        assert!(b.auth.authenticate(&bearer, LOCAL).await.is_ok());
        // A second registration of the same ID through the other host is a conflict.
        assert!(matches!(
            b.auth
                .register(
                    Some(&Principal::Admin),
                    id.clone(),
                    Secret::new(KEY_A),
                    LOCAL
                )
                .await,
            Err(AuthError::Conflict(_))
        ));

        // Removed through host A: host B's bearer token and cached key stop working too.
        a.auth
            .unregister(&Principal::Admin, id.clone(), LOCAL)
            .await
            .unwrap();
        eventually("host B forgets alpha's token", async || {
            b.auth.authenticate(&bearer, LOCAL).await.is_err()
        })
        .await;
        assert!(!b.logs_in("alpha", KEY_API).await);
        assert_eq!(b.auth.list().unwrap(), vec![]);
        cancel.cancel();
    }

    #[tokio::test]
    async fn hosts_reconciling_one_declared_file_at_once_all_start() {
        let cluster = std::sync::Arc::new(rtcd_kit::cluster::Local::new());
        let hosts = [
            Host::in_cluster(&cluster, None).await,
            Host::in_cluster(&cluster, None).await,
            Host::in_cluster(&cluster, None).await,
        ];
        let text = format!("alpha:{KEY_A}\nbeta:{KEY_B}\n");
        let results =
            futures_util::future::join_all(hosts.iter().map(|h| h.reconcile(&text))).await;
        let created: usize = results.iter().map(|r| r.as_ref().unwrap().created).sum();
        assert_eq!(created, 2, "each client created once, by one host");
        for host in &hosts {
            eventually("every host knows both", async || {
                host.logs_in("alpha", KEY_A).await && host.logs_in("beta", KEY_B).await
            })
            .await;
        }
        // A rotation made by all of them at once: one rotates, the others find it done.
        let text = format!("alpha:{KEY_A2}\nbeta:{KEY_B}\n");
        let results =
            futures_util::future::join_all(hosts.iter().map(|h| h.reconcile(&text))).await;
        for r in &results {
            r.as_ref().unwrap();
        }
        eventually("the new key everywhere", async || {
            hosts[2].logs_in("alpha", KEY_A2).await
        })
        .await;
    }

    #[tokio::test]
    async fn a_host_brings_its_registrations_into_the_cluster_once() {
        let cluster = std::sync::Arc::new(rtcd_kit::cluster::Local::new());
        // Registered before the cluster mode, in the host's own sled registry.
        let before = Host::new();
        before
            .auth
            .register(
                Some(&Principal::Admin),
                ClientId::parse("old").unwrap(),
                Secret::new(KEY_API),
                LOCAL,
            )
            .await
            .unwrap();
        let Host { dir, auth } = before;
        drop(auth);
        let host = Host::in_cluster(&cluster, Some(dir)).await;
        let other = Host::in_cluster(&cluster, None).await;
        eventually("another host knows it", async || {
            other.logs_in("old", KEY_API).await
        })
        .await;
        // Removed in the cluster: a restart of the host that brought it does not bring it back.
        other
            .auth
            .unregister(&Principal::Admin, ClientId::parse("old").unwrap(), LOCAL)
            .await
            .unwrap();
        let Host { dir, auth } = host;
        drop(auth);
        let host = Host::in_cluster(&cluster, Some(dir)).await;
        assert!(!host.logs_in("old", KEY_API).await);
        assert_eq!(host.auth.list().unwrap(), vec![]);
    }
}

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
//! otherwise, the same way ssh refuses a private key. Reconciliation runs at start only; edits
//! take effect on restart.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{AuthError, AuthService, ClientId, ClientRecord, MIN_KEY_BYTES, Secret, validate_key};

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
            line: e.as_bytes()[..valid].iter().filter(|b| **b == b'\n').count() + 1,
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
    /// Reads the declared-clients file at `path` and reconciles it into the registry (see the
    /// module doc). Called at start, before any listener serves. Every line is validated, and
    /// every conflict with an API registration detected, before the first write; changes are
    /// flushed before this returns. Logs one `audit` INFO line per change.
    pub async fn reconcile_declared(&self, path: &Path) -> Result<Reconciled, DeclaredError> {
        let declared = read(path)?;
        self.reconcile(path, &declared).await
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
        let changed = |id: &ClientId, change: &'static str| {
            tracing::info!(target: "audit", event = "declared", client_id = %id, change, file = %file, "declared client {change}");
        };
        for (client, plan) in declared.iter().zip(plans) {
            let id = &client.id;
            match plan {
                Plan::Keep => done.unchanged += 1,
                Plan::Create => {
                    self.insert_new(id, &client.key, true).await?;
                    changed(id, "created");
                    done.created += 1;
                }
                Plan::Rotate(old) => {
                    let new = ClientRecord {
                        hash: self.hash_key(&client.key).await?,
                        ..old.clone()
                    };
                    if !store.replace(id, &old, &new).map_err(AuthError::from)? {
                        return Err(AuthError::Conflict(id.clone()).into());
                    }
                    // The old key's cached verification and its bearer tokens end here.
                    self.forget(id);
                    changed(id, "key rotated");
                    done.rotated += 1;
                }
                Plan::Adopt(old) => {
                    let new = ClientRecord {
                        declared: true,
                        ..old.clone()
                    };
                    if !store.replace(id, &old, &new).map_err(AuthError::from)? {
                        return Err(AuthError::Conflict(id.clone()).into());
                    }
                    changed(id, "adopted");
                    done.adopted += 1;
                }
            }
        }

        let listed: HashSet<&ClientId> = declared.iter().map(|c| &c.id).collect();
        for (id, record) in store.records().map_err(AuthError::from)? {
            if record.declared && !listed.contains(&id) {
                store.remove(&id).map_err(AuthError::from)?;
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

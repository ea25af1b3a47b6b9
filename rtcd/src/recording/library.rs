//! The recordings on disk, for the API: list, get, delete, read a file; and, when rtcd
//! starts, the recovery of the recordings it was killed in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rtcd_recording::manifest::{self, Manifest, State, StopReason};

use super::{RecordingError, RecordingId, valid_tenant, writer::create_dir};

/// The recordings under one directory; shared (`Arc`) by the gRPC services and the SFU.
pub struct Library {
    inner: Arc<Inner>,
}

struct Inner {
    directory: PathBuf,
    /// `(tenant, recording id)` of the recordings a live [`super::Recorder`] writes.
    live: Mutex<HashSet<(String, String)>>,
}

/// Marks a recording as written by a live recorder while it exists (held by its writer
/// thread, dropped when the recording is complete).
pub(crate) struct LiveGuard {
    inner: Arc<Inner>,
    key: (String, String),
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// Maps "no such file" to [`RecordingError::NotFound`].
fn not_found(e: std::io::Error) -> RecordingError {
    if e.kind() == std::io::ErrorKind::NotFound {
        RecordingError::NotFound
    } else {
        RecordingError::Io(e)
    }
}

impl Library {
    /// Opens (creating it, mode 0700) the recordings' directory, and recovers: every manifest
    /// still in state recording that no live recorder writes (rtcd was killed while it
    /// recorded) becomes stopped, with stop reason interrupted and its files' sizes read from
    /// disk. The files stay as they are: they play up to their last flush.
    ///
    /// # Errors
    ///
    /// [`RecordingError::Io`] when the directory cannot be created or read.
    pub fn open(directory: PathBuf) -> Result<Library, RecordingError> {
        create_dir(&directory)?;
        let library = Library {
            inner: Arc::new(Inner {
                directory,
                live: Mutex::new(HashSet::new()),
            }),
        };
        library.recover()?;
        Ok(library)
    }

    /// The recordings' root directory.
    pub fn directory(&self) -> &Path {
        &self.inner.directory
    }

    fn recover(&self) -> Result<(), RecordingError> {
        for entry in std::fs::read_dir(&self.inner.directory)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(tenant) = name.to_str().and_then(|n| n.strip_prefix("t-")) else {
                continue;
            };
            if !valid_tenant(tenant) {
                continue;
            }
            for (id, dir) in self.recordings(tenant) {
                if self.is_recording(tenant, &id) {
                    continue;
                }
                let Ok(mut m) = Manifest::read(&dir) else {
                    continue;
                };
                if m.state != State::Recording {
                    continue;
                }
                m.state = State::Stopped;
                m.stop_reason = Some(StopReason::Interrupted);
                for t in &mut m.tracks {
                    t.bytes = std::fs::metadata(dir.join(&t.file)).map_or(0, |m| m.len());
                    t.complete = false;
                }
                match m.write(&dir) {
                    Ok(()) => {
                        tracing::info!(recording = %id, tenant, "recording interrupted by a restart of rtcd: marked stopped")
                    }
                    Err(e) => {
                        tracing::warn!(recording = %id, tenant, error = %e, "cannot mark an interrupted recording stopped")
                    }
                }
            }
        }
        Ok(())
    }

    /// The recording directories of a tenant (those named by a valid ID).
    fn recordings(&self, tenant: &str) -> Vec<(RecordingId, PathBuf)> {
        let dir = self.inner.directory.join(format!("t-{tenant}"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let id = RecordingId::parse(e.file_name().to_str()?).ok()?;
                Some((id, e.path()))
            })
            .collect()
    }

    /// The directory of a tenant's recording (not checked to exist).
    fn path(&self, tenant: &str, id: &RecordingId) -> Result<PathBuf, RecordingError> {
        if !valid_tenant(tenant) {
            return Err(RecordingError::NotFound);
        }
        Ok(self
            .inner
            .directory
            .join(format!("t-{tenant}"))
            .join(id.as_str()))
    }

    /// The bytes a recording in `dir` takes: its files and its manifest (what the API's and
    /// the webhooks' `bytes` say).
    pub fn total_bytes(dir: &Path, m: &Manifest) -> u64 {
        let files: u64 = m
            .tracks
            .iter()
            .filter_map(|t| std::fs::metadata(dir.join(&t.file)).ok())
            .map(|m| m.len())
            .sum();
        files + std::fs::metadata(dir.join(manifest::FILE_NAME)).map_or(0, |m| m.len())
    }

    /// A tenant's recordings (of one room, if given) with their total sizes, newest first.
    pub fn list(&self, tenant: &str, room: Option<&str>) -> Vec<(Manifest, u64)> {
        if !valid_tenant(tenant) {
            return Vec::new();
        }
        let mut out: Vec<(Manifest, u64)> = self
            .recordings(tenant)
            .into_iter()
            .filter_map(|(_, dir)| {
                let m = Manifest::read(&dir).ok()?;
                if room.is_some_and(|r| r != m.room) {
                    return None;
                }
                let bytes = Self::total_bytes(&dir, &m);
                Some((m, bytes))
            })
            .collect();
        out.sort_by(|a, b| {
            b.0.started_at_ms
                .cmp(&a.0.started_at_ms)
                .then_with(|| b.0.recording_id.cmp(&a.0.recording_id))
        });
        out
    }

    /// One of a tenant's recordings with its total size.
    ///
    /// # Errors
    ///
    /// [`RecordingError::NotFound`] when the tenant has no such recording (another tenant's
    /// ID included).
    pub fn get(&self, tenant: &str, id: &RecordingId) -> Result<(Manifest, u64), RecordingError> {
        let dir = self.path(tenant, id)?;
        let m = Manifest::read(&dir).map_err(|e| match e {
            manifest::ManifestError::Io { source, .. } => not_found(source),
            other => RecordingError::Manifest(other),
        })?;
        let bytes = Self::total_bytes(&dir, &m);
        Ok((m, bytes))
    }

    /// Deletes a recording; the bytes freed.
    ///
    /// # Errors
    ///
    /// [`RecordingError::StillRecording`] while a live recorder writes it;
    /// [`RecordingError::NotFound`].
    pub fn delete(&self, tenant: &str, id: &RecordingId) -> Result<u64, RecordingError> {
        if self.is_recording(tenant, id) {
            return Err(RecordingError::StillRecording);
        }
        let (_, bytes) = self.get(tenant, id)?;
        std::fs::remove_dir_all(self.path(tenant, id)?).map_err(not_found)?;
        Ok(bytes)
    }

    /// Opens one file of a recording for reading, with its size: `manifest.json` or a file
    /// the manifest names.
    ///
    /// # Errors
    ///
    /// [`RecordingError::NotFound`] for any other name (paths, `..`), another tenant's
    /// recording, or a file not (yet) on disk.
    pub fn open_file(
        &self,
        tenant: &str,
        id: &RecordingId,
        name: &str,
    ) -> Result<(std::fs::File, u64), RecordingError> {
        let plain =
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
        if !plain {
            return Err(RecordingError::NotFound);
        }
        let dir = self.path(tenant, id)?;
        if name != manifest::FILE_NAME {
            let (m, _) = self.get(tenant, id)?;
            if !m.tracks.iter().any(|t| t.file == name) {
                return Err(RecordingError::NotFound);
            }
        }
        let file = std::fs::File::open(dir.join(name)).map_err(not_found)?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// Whether a live recorder writes this recording.
    pub fn is_recording(&self, tenant: &str, id: &RecordingId) -> bool {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(tenant.to_owned(), id.as_str().to_owned()))
    }

    /// Marks a recording live until the guard is dropped.
    pub(crate) fn register(&self, tenant: &str, id: &RecordingId) -> LiveGuard {
        let key = (tenant.to_owned(), id.as_str().to_owned());
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        LiveGuard {
            inner: self.inner.clone(),
            key,
        }
    }
}

//! Recording a call, as the room service asks for it: the file work (creating the recording,
//! checking free space) happens here, off the media threads; the call's worker then feeds the
//! recorder (`room::recording`). See `docs/recording.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rtcd_recording::manifest::StopReason;
use tokio::sync::watch;

use super::events::{RoomEvent, RoomEventKind, RoomEventSink};
use super::room::ManageRequest;
use super::session::RecordingNotice;
use super::{CallId, RecordingRefusal, Sfu, SfuError, TenantId};
use crate::recording::{
    Finished, Library, Recorder, RecordingConfig, RecordingError, RecordingId, RecordingMeta,
};

/// How long `StopRecording` waits for the files to be completed before it answers anyway
/// (the recording then shows as still recording until they are).
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// What recording needs on this host: given once, at start, when `[recording]` is enabled.
pub struct RecordingSetup {
    /// The recorder's settings.
    pub config: RecordingConfig,
    /// The recordings on disk.
    pub library: Arc<Library>,
    /// This host's name in manifests.
    pub host: String,
}

/// [`RecordingSetup`] and the recordings being completed.
pub(super) struct Recordings {
    setup: RecordingSetup,
    /// Per recording being written: becomes `true` when its files are complete.
    finishing: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl Sfu {
    /// Enables recording on this host (once; later calls are ignored).
    pub fn enable_recording(&self, setup: RecordingSetup) {
        let _ = self.inner.recording.set(Recordings {
            setup,
            finishing: Mutex::default(),
        });
    }

    /// The recordings on disk, when recording is enabled.
    pub fn recordings(&self) -> Option<&Arc<Library>> {
        self.inner.recording.get().map(|r| &r.setup.library)
    }

    /// Starts recording a call on this host: a new recording, or the next segment of one
    /// (`continuing`: the room moved here while it recorded). Refused when recording is off,
    /// nobody is in the call here, it already records, or the disk is below its floor.
    pub async fn start_recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
        started_by: &str,
        continuing: Option<(RecordingId, u32)>,
    ) -> Result<RecordingNotice, SfuError> {
        let recordings = self
            .inner
            .recording
            .get()
            .ok_or(SfuError::Recording(RecordingRefusal::Disabled))?;
        let shards = &self.inner.shards;
        match shards.record(tenant, call, ManageRequest::Recording).await {
            Ok(Some(_)) => return Err(SfuError::Recording(RecordingRefusal::AlreadyRecording)),
            Ok(None) => {}
            Err(SfuError::NotFound) => return Err(SfuError::Recording(RecordingRefusal::NoRoom)),
            Err(e) => return Err(e),
        }
        let (id, segment) = continuing.unwrap_or_else(|| (RecordingId::generate(), 1));
        let meta = RecordingMeta {
            tenant: tenant.as_str().to_owned(),
            room: call.as_str().to_owned(),
            id: id.clone(),
            segment,
            host: recordings.setup.host.clone(),
            started_by: started_by.to_owned(),
        };
        // Set when the worker refuses the recorder (a start raced another): its directory is
        // removed once the writer is done with it, and nobody hears of it.
        let discard = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = watch::channel(false);
        let on_finished = finished_callback(
            self.inner.room_events.clone(),
            tenant.clone(),
            call.clone(),
            discard.clone(),
            done_tx,
        );
        let config = recordings.setup.config.clone();
        let library = recordings.setup.library.clone();
        let recorder = tokio::task::spawn_blocking(move || {
            Recorder::start(&config, meta, &library, on_finished)
        })
        .await
        .map_err(|e| SfuError::Media(format!("recording start failed: {e}")))?
        .map_err(|e| match e {
            RecordingError::DiskFull => SfuError::Recording(RecordingRefusal::DiskFull),
            e => {
                tracing::error!(client = %tenant, call = %call, error = %e, "cannot start a recording");
                SfuError::Media(format!("cannot start the recording: {e}"))
            }
        })?;
        let notice = RecordingNotice {
            recording_id: id.as_str().to_owned(),
            started_at_ms: recorder.started_at_ms(),
            started_by: started_by.to_owned(),
            reason: None,
        };
        {
            let mut finishing = recordings
                .finishing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Those complete are no longer waited for.
            finishing.retain(|_, done| !*done.borrow());
            finishing.insert(notice.recording_id.clone(), done_rx);
        }
        let request = ManageRequest::StartRecording {
            recorder: Box::new(recorder),
            notice,
        };
        match shards.record(tenant, call, request).await {
            Ok(Some(notice)) => Ok(notice),
            Ok(None) => Err(SfuError::Media("unexpected worker answer".into())),
            Err(e) => {
                discard.store(true, Ordering::Release);
                Err(match e {
                    SfuError::NotFound => SfuError::Recording(RecordingRefusal::NoRoom),
                    e => e,
                })
            }
        }
    }

    /// Stops a call's recording and waits (bounded) until its files are complete.
    pub async fn stop_recording(
        &self,
        tenant: &TenantId,
        call: &CallId,
        reason: StopReason,
    ) -> Result<RecordingNotice, SfuError> {
        let recordings = self
            .inner
            .recording
            .get()
            .ok_or(SfuError::Recording(RecordingRefusal::Disabled))?;
        let notice = match self
            .inner
            .shards
            .record(tenant, call, ManageRequest::StopRecording(reason))
            .await
        {
            Ok(Some(notice)) => notice,
            Ok(None) | Err(SfuError::NotFound) => {
                return Err(SfuError::Recording(RecordingRefusal::NotRecording));
            }
            Err(e) => return Err(e),
        };
        let done = recordings
            .finishing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&notice.recording_id)
            .cloned();
        if let Some(mut done) = done {
            let _ = tokio::time::timeout(FINISH_WAIT, done.wait_for(|d| *d)).await;
        }
        Ok(notice)
    }

    /// Waits (at most `timeout`) until every recording that stopped has its files complete;
    /// whether they all are. For a shutdown, after the rooms are closed.
    pub async fn recordings_complete(&self, timeout: Duration) -> bool {
        let Some(recordings) = self.inner.recording.get() else {
            return true;
        };
        let pending: Vec<watch::Receiver<bool>> = recordings
            .finishing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let all = async {
            for mut done in pending {
                let _ = done.wait_for(|d| *d).await;
            }
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// The call's recording here, if it records.
    pub async fn recording_of(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> Result<Option<RecordingNotice>, SfuError> {
        match self
            .inner
            .shards
            .record(tenant, call, ManageRequest::Recording)
            .await
        {
            Err(SfuError::NotFound) => Ok(None),
            other => other,
        }
    }
}

/// What runs on the writer thread when a recording is complete: `recording_ready` for the
/// platform, and the end of the wait of whoever stopped it.
fn finished_callback(
    sink: Option<RoomEventSink>,
    tenant: TenantId,
    call: CallId,
    discard: Arc<AtomicBool>,
    done: watch::Sender<bool>,
) -> Box<dyn FnOnce(Finished) + Send> {
    Box::new(move |finished: Finished| {
        if discard.load(Ordering::Acquire) {
            if let Err(e) = std::fs::remove_dir_all(&finished.directory) {
                tracing::warn!(directory = %finished.directory.display(), error = %e, "cannot remove a refused recording");
            }
        } else if let Some(sink) = sink {
            let bytes = Library::total_bytes(&finished.directory, &finished.manifest);
            sink.emit(RoomEvent {
                tenant,
                call,
                room_instance: String::new(),
                seq: 0,
                at_ms: crate::sfu::unix_ms(),
                kind: RoomEventKind::RecordingReady {
                    manifest: Box::new(finished.manifest),
                    bytes,
                },
            });
        }
        let _ = done.send(true);
    })
}

/// Set in [`super::SfuInner`].
pub(super) type RecordingSlot = OnceLock<Recordings>;

//! The recording requests of the room service: start and stop (carried out by the SFU), list,
//! get, delete and read (the recordings on this host's disk). Files are read off the async
//! runtime and streamed in bounded chunks: a large download never sits in memory.
//!
//! A recording outlives its host: while a room records, its host refreshes a
//! `RecordingRecord` in the moderation store (the cluster store in cluster mode) every
//! [`REFRESH`]. A host that opens the room within [`CONTINUE_WITHIN`] of the last refresh
//! (the first host died and the room's clients rejoined here) continues the same recording in
//! its next segment; a requested stop removes the record.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::time::Duration;

use rtcd_proto::v1 as pb;
use rtcd_recording::manifest::{Manifest, Source, State, StopReason};
use tokio::sync::mpsc;
use tonic::Status;

use super::{RoomsError, RoomsService, call_id};
use crate::grpc::convert::recording_stop;
use crate::moderation::{ModerationStore, RecordingRecord};
use crate::recording::{Library, RecordingError, RecordingId};
use crate::sfu::session::RecordingNotice;
use crate::sfu::{CallId, RecordingRefusal, Sfu, SfuError, TenantId};

/// How often the recording host refreshes the room's `RecordingRecord`.
const REFRESH: Duration = Duration::from_secs(10);
/// A room opened this soon after its recording's last refresh continues that recording.
const CONTINUE_WITHIN: Duration = Duration::from_secs(45);

/// Largest chunk of a file in one `RecordingChunk` (smaller when `grpc.max_message_bytes` is:
/// [`chunk_for`]).
const CHUNK: usize = 256 * 1024;
/// What a `RecordingChunk` adds to its bytes (tags, lengths, `size`), with margin.
const CHUNK_FRAMING: usize = 64;

/// The chunk size for a gRPC message limit of `max_message_bytes`: a full chunk with its
/// framing must fit, or the server refuses to send it.
pub(super) fn chunk_for(max_message_bytes: usize) -> usize {
    max_message_bytes
        .saturating_sub(CHUNK_FRAMING)
        .clamp(1024, CHUNK)
}
/// Chunks read ahead of the client.
const READ_AHEAD: usize = 4;

impl RoomsService {
    pub(super) async fn start_recording_of(
        &self,
        tenant: &TenantId,
        req: &pb::StartRecordingRequest,
    ) -> Result<pb::Recording, RoomsError> {
        let call = call_id(&req.call_id)?;
        by(&req.requested_by)?;
        if self.encrypted(tenant, &call)? {
            return Err(SfuError::Recording(RecordingRefusal::Encrypted).into());
        }
        let notice = start(
            &self.sfu,
            &self.moderation,
            tenant,
            &call,
            &req.requested_by,
            None,
        )
        .await?;
        let id = parse_id(&notice.recording_id)?;
        self.recording(tenant, id, false).await
    }

    pub(super) async fn stop_recording_of(
        &self,
        tenant: &TenantId,
        req: &pb::StopRecordingRequest,
    ) -> Result<pb::Recording, RoomsError> {
        let call = call_id(&req.call_id)?;
        by(&req.requested_by)?;
        let notice = self
            .sfu
            .stop_recording(tenant, &call, StopReason::Requested)
            .await?;
        // Stopped on purpose: no other host continues it.
        if let Err(e) = self.moderation.set_recording(tenant, &call, None).await {
            tracing::warn!(client = %tenant, call = %call, error = %e, "cannot clear the room's recording record");
        }
        let id = parse_id(&notice.recording_id)?;
        self.recording(tenant, id, false).await
    }

    pub(super) async fn list_recordings_of(
        &self,
        tenant: &TenantId,
        req: &pb::ListRecordingsRequest,
    ) -> Result<pb::ListRecordingsResponse, RoomsError> {
        let room = if req.call_id.is_empty() {
            None
        } else {
            Some(call_id(&req.call_id)?.as_str().to_owned())
        };
        let library = self.library()?;
        let tenant = tenant.as_str().to_owned();
        let listed = blocking(move || Ok(library.list(&tenant, room.as_deref()))).await?;
        Ok(pb::ListRecordingsResponse {
            recordings: listed
                .into_iter()
                .map(|(m, bytes)| recording(&m, bytes, false))
                .collect(),
        })
    }

    pub(super) async fn get_recording_of(
        &self,
        tenant: &TenantId,
        req: &pb::GetRecordingRequest,
    ) -> Result<pb::Recording, RoomsError> {
        let id = parse_id(&req.recording_id)?;
        self.recording(tenant, id, true).await
    }

    pub(super) async fn delete_recording_of(
        &self,
        tenant: &TenantId,
        req: &pb::DeleteRecordingRequest,
    ) -> Result<pb::DeleteRecordingResponse, RoomsError> {
        let id = parse_id(&req.recording_id)?;
        let library = self.library()?;
        let tenant = tenant.as_str().to_owned();
        let bytes = blocking(move || library.delete(&tenant, &id)).await?;
        Ok(pb::DeleteRecordingResponse { bytes })
    }

    /// The file's chunks, read on a blocking thread `READ_AHEAD` chunks ahead of the client.
    pub(super) async fn read_recording_file_of(
        &self,
        tenant: &TenantId,
        req: &pb::ReadRecordingFileRequest,
    ) -> Result<mpsc::Receiver<Result<pb::RecordingChunk, Status>>, RoomsError> {
        let id = parse_id(&req.recording_id)?;
        if req.name.is_empty() || req.name.len() > 255 {
            return Err(RoomsError::InvalidArgument(
                "name must be 1-255 bytes".into(),
            ));
        }
        let library = self.library()?;
        let tenant = tenant.as_str().to_owned();
        let name = req.name.clone();
        let (file, size) = blocking(move || library.open_file(&tenant, &id, &name)).await?;
        if req.offset > size {
            return Err(RoomsError::OutOfRange(format!(
                "offset {} is beyond the file's {size} bytes",
                req.offset
            )));
        }
        let available = size - req.offset;
        let length = if req.length == 0 {
            available
        } else {
            req.length.min(available)
        };
        let offset = req.offset;
        let chunk = self.chunk;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::task::spawn_blocking(move || stream_file(file, size, offset, length, chunk, &tx));
        Ok(rx)
    }

    async fn recording(
        &self,
        tenant: &TenantId,
        id: RecordingId,
        files: bool,
    ) -> Result<pb::Recording, RoomsError> {
        let library = self.library()?;
        let tenant = tenant.as_str().to_owned();
        let (manifest, bytes) = blocking(move || library.get(&tenant, &id)).await?;
        Ok(recording(&manifest, bytes, files))
    }

    /// Whether `call` is end-to-end encrypted: its stored policy over the policy of its last
    /// Join here (the proxy's configuration), as a session entering now would get it.
    pub(super) fn encrypted(&self, tenant: &TenantId, call: &CallId) -> Result<bool, RoomsError> {
        let stored = self.moderation.policy(tenant, call)?;
        Ok(stored
            .over(self.lobby.join_policy(tenant, call))
            .encrypted())
    }

    fn library(&self) -> Result<std::sync::Arc<Library>, RoomsError> {
        self.sfu
            .recordings()
            .cloned()
            .ok_or(RoomsError::Sfu(SfuError::Recording(
                RecordingRefusal::Disabled,
            )))
    }
}

/// Starts recording `call` (the next segment of `continuing`), records that it does in the
/// moderation store, and keeps that record fresh while it does.
async fn start(
    sfu: &Sfu,
    moderation: &ModerationStore,
    tenant: &TenantId,
    call: &CallId,
    started_by: &str,
    continuing: Option<&RecordingRecord>,
) -> Result<RecordingNotice, RoomsError> {
    let next = continuing
        .map(|r| {
            RecordingId::parse(&r.recording_id)
                .map(|id| (id, r.segment.saturating_add(1)))
                .map_err(RoomsError::from)
        })
        .transpose()?;
    let segment = next.as_ref().map_or(1, |(_, s)| *s);
    let notice = sfu.start_recording(tenant, call, started_by, next).await?;
    let now = crate::sfu::unix_ms();
    let record = RecordingRecord {
        v: 1,
        recording_id: notice.recording_id.clone(),
        segment,
        started_by: started_by.to_owned(),
        started_at_ms: continuing.map_or(notice.started_at_ms, |r| r.started_at_ms),
        updated_at_ms: now,
    };
    if let Err(e) = moderation
        .set_recording(tenant, call, Some(record.clone()))
        .await
    {
        // The recording goes on here; only a move to another host would start a new one.
        tracing::warn!(client = %tenant, call = %call, error = %e, "cannot store the room's recording record");
    }
    tokio::spawn(refresh(
        sfu.clone(),
        moderation.clone(),
        tenant.clone(),
        call.clone(),
        record,
    ));
    Ok(notice)
}

/// Refreshes the room's recording record while this host records it; stops when it no longer
/// does (the record then ages out, unless a requested stop removed it).
async fn refresh(
    sfu: Sfu,
    moderation: ModerationStore,
    tenant: TenantId,
    call: CallId,
    mut record: RecordingRecord,
) {
    loop {
        tokio::time::sleep(REFRESH).await;
        match sfu.recording_of(&tenant, &call).await {
            Ok(Some(n)) if n.recording_id == record.recording_id => {}
            _ => return,
        }
        record.updated_at_ms = crate::sfu::unix_ms();
        if let Err(e) = moderation
            .set_recording(&tenant, &call, Some(record.clone()))
            .await
        {
            tracing::debug!(client = %tenant, call = %call, error = %e, "cannot refresh the room's recording record");
        }
    }
}

/// The room's recording record as a newly admitted session's host sees it.
#[derive(Debug, Clone, Copy)]
struct RecordSeen {
    /// Since the recording host last refreshed it (negative clocks count as 0).
    age_ms: i64,
    /// This host has a directory for that recording: it wrote it, and the room finished here.
    written_here: bool,
}

/// What an admission does about recording: the rule of [`on_admitted`], apart from its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtAdmission {
    /// Nothing to record.
    Nothing,
    /// The policy asks for recording in an end-to-end encrypted room: refused (logged).
    RefusedEncrypted,
    /// The policy asks for recording on a host where it is off (logged).
    Disabled,
    /// The room recorded on another host a moment ago: its next segment starts here.
    Continue,
    /// A new recording, started by the room's policy.
    StartByPolicy,
}

/// Decides [`AtAdmission`]. A room whose recording host stopped refreshing its record less
/// than [`CONTINUE_WITHIN`] ago moved here (that host died, the clients rejoined), so its
/// recording continues; a recording this host wrote itself ended here (everybody left) and
/// is not continued (one directory per recording and host): the policy may start a new one.
/// An encrypted room never records: the server cannot read its media.
fn at_admission(
    policy: bool,
    e2ee: bool,
    enabled: bool,
    record: Option<RecordSeen>,
) -> AtAdmission {
    let continues = record.is_some_and(|r| {
        !r.written_here
            && u128::try_from(r.age_ms.max(0)).unwrap_or(0) < CONTINUE_WITHIN.as_millis()
    });
    match (e2ee, enabled) {
        (true, _) if policy => AtAdmission::RefusedEncrypted,
        (true, _) => AtAdmission::Nothing,
        (false, false) if policy => AtAdmission::Disabled,
        (false, false) => AtAdmission::Nothing,
        (false, true) if continues => AtAdmission::Continue,
        (false, true) if policy => AtAdmission::StartByPolicy,
        (false, true) => AtAdmission::Nothing,
    }
}

/// A session was admitted to `call`: continue the room's recording if it recorded elsewhere
/// a moment ago, else start one if `policy` says to ([`at_admission`]). In the background;
/// errors are logged.
pub(crate) fn on_admitted(
    sfu: Sfu,
    moderation: ModerationStore,
    tenant: TenantId,
    call: CallId,
    policy: bool,
    e2ee: bool,
) {
    let library = sfu.recordings();
    // Read only where it can matter: an encrypted room or a host without recording never
    // continues one.
    let record = if library.is_none() || e2ee {
        None
    } else {
        moderation.recording(&tenant, &call).unwrap_or_else(|e| {
            tracing::warn!(client = %tenant, call = %call, error = %e, "cannot read the room's recording record");
            None
        })
    };
    let seen = record.as_ref().map(|r| RecordSeen {
        age_ms: crate::sfu::unix_ms().saturating_sub(r.updated_at_ms),
        written_here: match (&library, RecordingId::parse(&r.recording_id)) {
            (Some(library), Ok(id)) => library.get(tenant.as_str(), &id).is_ok(),
            _ => true,
        },
    });
    let continued = match at_admission(policy, e2ee, library.is_some(), seen) {
        AtAdmission::Nothing => return,
        AtAdmission::RefusedEncrypted => {
            tracing::info!(client = %tenant, call = %call, reason = %RecordingRefusal::Encrypted, "the room's policy asks for recording, refused");
            return;
        }
        AtAdmission::Disabled => {
            tracing::debug!(client = %tenant, call = %call, "the room's policy asks for recording, which is off on this host");
            return;
        }
        AtAdmission::Continue => record,
        AtAdmission::StartByPolicy => None,
    };
    tokio::spawn(async move {
        if let Ok(Some(_)) = sfu.recording_of(&tenant, &call).await {
            return;
        }
        let by = continued
            .as_ref()
            .map_or_else(|| "policy".to_owned(), |r| r.started_by.clone());
        match start(&sfu, &moderation, &tenant, &call, &by, continued.as_ref()).await {
            Ok(notice) => {
                if let Some(r) = &continued {
                    tracing::info!(client = %tenant, call = %call, recording = %notice.recording_id, segment = r.segment + 1, "recording continues on this host");
                }
            }
            Err(RoomsError::Sfu(SfuError::Recording(
                RecordingRefusal::AlreadyRecording | RecordingRefusal::NoRoom,
            ))) => {}
            Err(e) => {
                tracing::warn!(client = %tenant, call = %call, error = %e, "the room's recording could not start");
            }
        }
    });
}

/// Sends `length` bytes of `file` from `offset` in chunks; stops when the receiver is gone.
fn stream_file(
    mut file: std::fs::File,
    size: u64,
    offset: u64,
    length: u64,
    chunk: usize,
    tx: &mpsc::Sender<Result<pb::RecordingChunk, Status>>,
) {
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        let _ = tx.blocking_send(Err(Status::internal(format!("cannot read the file: {e}"))));
        return;
    }
    let mut left = length;
    let mut first = true;
    loop {
        let want = usize::try_from(left.min(chunk as u64)).unwrap_or(chunk);
        let mut data = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match file.read(&mut data[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx
                        .blocking_send(Err(Status::internal(format!("cannot read the file: {e}"))));
                    return;
                }
            }
        }
        data.truncate(got);
        left -= got as u64;
        let chunk = pb::RecordingChunk {
            size: if first { size } else { 0 },
            data,
        };
        first = false;
        // A file still being written was measured at open: what is on disk now may be less
        // (never: files only grow) or more; read what was asked, end early at its end.
        if tx.blocking_send(Ok(chunk)).is_err() || left == 0 || got < want {
            return;
        }
    }
}

/// Runs a library call on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RecordingError> + Send + 'static,
) -> Result<T, RoomsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RoomsError::Sfu(SfuError::Media(format!("recording task failed: {e}"))))?
        .map_err(RoomsError::from)
}

impl From<RecordingError> for RoomsError {
    fn from(e: RecordingError) -> Self {
        match e {
            RecordingError::NotFound => RoomsError::NotFound("no such recording or file"),
            RecordingError::StillRecording => {
                RoomsError::Sfu(SfuError::Recording(RecordingRefusal::StillRecording))
            }
            RecordingError::DiskFull => {
                RoomsError::Sfu(SfuError::Recording(RecordingRefusal::DiskFull))
            }
            e => {
                tracing::error!(error = %e, "recording store failure");
                RoomsError::Sfu(SfuError::Media(format!("recording store failure: {e}")))
            }
        }
    }
}

fn parse_id(value: &str) -> Result<RecordingId, RoomsError> {
    RecordingId::parse(value).map_err(|_| {
        RoomsError::InvalidArgument("recording_id must be rec_ and 26 base32 characters".into())
    })
}

/// Checks `requested_by` (a user ID, or empty).
fn by(value: &str) -> Result<(), RoomsError> {
    if value.len() > 256 {
        return Err(RoomsError::InvalidArgument(
            "requested_by must be at most 256 bytes".into(),
        ));
    }
    Ok(())
}

/// A manifest for the wire (`files` only when asked: a list stays small).
fn recording(m: &Manifest, bytes: u64, files: bool) -> pb::Recording {
    pb::Recording {
        recording_id: m.recording_id.clone(),
        call_id: m.room.clone(),
        state: match m.state {
            State::Recording => pb::RecordingState::Recording,
            State::Stopped => pb::RecordingState::Stopped,
        } as i32,
        started_at_ms: m.started_at_ms,
        stopped_at_ms: m.stopped_at_ms.unwrap_or(0),
        stop_reason: m.stop_reason.map_or(0, |r| recording_stop(r) as i32),
        started_by: m.started_by.clone(),
        segment: m.segment,
        degraded: m.degraded,
        files: if files {
            m.tracks
                .iter()
                .map(|t| pb::RecordingFile {
                    name: t.file.clone(),
                    bytes: t.bytes,
                    duration_ms: t.duration_ms,
                    session_id: t.participant.session.clone(),
                    user_id: t.participant.user.clone(),
                    kind: match t.source {
                        Source::Microphone => pb::TrackKind::Audio,
                        Source::Camera => pb::TrackKind::Video,
                        Source::Screen => pb::TrackKind::Screen,
                        Source::ScreenAudio => pb::TrackKind::ScreenAudio,
                    } as i32,
                    codec: t.codec.as_str().into(),
                    start_ms: t.start_ms.round() as i64,
                })
                .collect()
        } else {
            Vec::new()
        },
        bytes,
    }
}

#[cfg(test)]
mod tests {
    //! A recording that follows its room to another host: two SFUs (hosts) sharing one
    //! cluster store (in memory), sessions that never offer (enough to be in a room).

    use std::sync::Arc;

    use rtcd_kit::cluster::{Local, Store};

    use super::*;
    use crate::metrics::Metrics;
    use crate::moderation::Shared;
    use crate::recording::{Library, RecordingConfig};
    use crate::sfu::session::SessionEvent;
    use crate::sfu::{RecordingSetup, SessionId, Sfu};

    #[test]
    fn an_admission_continues_a_fresh_record_from_elsewhere_else_follows_the_policy() {
        use AtAdmission::*;
        let within = CONTINUE_WITHIN.as_millis() as i64 - 1;
        let elsewhere = |age_ms| {
            Some(RecordSeen {
                age_ms,
                written_here: false,
            })
        };
        let here = Some(RecordSeen {
            age_ms: 1_000,
            written_here: true,
        });
        // (policy, e2ee, enabled, record) -> decision
        let cases = [
            ((false, false, true, None), Nothing),
            ((true, false, true, None), StartByPolicy),
            ((false, false, true, elsewhere(1_000)), Continue),
            ((true, false, true, elsewhere(within)), Continue),
            // Stale: that recording ended; only the policy starts one.
            ((false, false, true, elsewhere(within + 1)), Nothing),
            ((true, false, true, elsewhere(within + 1)), StartByPolicy),
            // A clock behind the record's: as fresh as can be.
            ((false, false, true, elsewhere(-5_000)), Continue),
            // Written by this host: it ended here, never continued.
            ((false, false, true, here), Nothing),
            ((true, false, true, here), StartByPolicy),
            // Encrypted rooms never record, not even a continuation.
            ((true, true, true, None), RefusedEncrypted),
            ((false, true, true, elsewhere(1_000)), Nothing),
            ((true, true, true, elsewhere(1_000)), RefusedEncrypted),
            // Recording off on this host.
            ((true, false, false, None), Disabled),
            ((false, false, false, elsewhere(1_000)), Nothing),
        ];
        for ((policy, e2ee, enabled, record), expected) in cases {
            assert_eq!(
                at_admission(policy, e2ee, enabled, record),
                expected,
                "policy {policy}, e2ee {e2ee}, enabled {enabled}, {record:?}"
            );
        }
    }

    async fn host(store: Arc<dyn Store>, dir: &std::path::Path) -> (Sfu, ModerationStore) {
        let sfu = Sfu::new(crate::sfu::tests::config(), Metrics::new(), None)
            .await
            .expect("the SFU starts on loopback");
        let config = RecordingConfig {
            directory: dir.to_owned(),
            min_free_bytes: 0,
            max_duration: Duration::from_secs(3600),
            queue_packets: 256,
        };
        sfu.enable_recording(RecordingSetup {
            library: Arc::new(Library::open(dir.to_owned()).expect("a library")),
            config,
            host: "test".into(),
        });
        let shared = Arc::new(Shared::start(
            store,
            Duration::from_secs(30),
            Duration::from_secs(2),
            prometheus_client::metrics::counter::Counter::default(),
        ));
        assert!(shared.synced(Duration::from_secs(2)).await);
        (sfu, shared.into())
    }

    async fn recording_started(rx: &mut crate::sfu::SessionEvents) -> String {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("recording_started comes")
                .expect("the session lives");
            if let SessionEvent::RecordingStarted(n) = event {
                return n.recording_id;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_that_moves_host_goes_on_recording_in_its_next_segment() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sfu_a, mod_a) = host(store.clone(), dir_a.path()).await;
        let (sfu_b, mod_b) = host(store.clone(), dir_b.path()).await;
        let (t, c) = (TenantId::new("t"), CallId::new("c"));

        let (_a, mut a_events) = sfu_a.join(crate::sfu::tests::join("a", 100)).await.unwrap();
        let notice = start(&sfu_a, &mod_a, &t, &c, "alice", None)
            .await
            .expect("host A records");
        assert_eq!(recording_started(&mut a_events).await, notice.recording_id);
        // Host B sees the room's recording once its copy of the store has it.
        let mut seen = None;
        for _ in 0..40 {
            seen = mod_b.recording(&t, &c).unwrap();
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = seen.expect("the record reaches the other host");
        assert_eq!(
            (seen.recording_id.as_str(), seen.segment),
            (notice.recording_id.as_str(), 1)
        );

        // Host A loses the room (its clients are gone); they rejoin on host B.
        sfu_a
            .close(&t, &c, &SessionId::new("a"), "migrate")
            .unwrap();
        let (_b, mut b_events) = sfu_b.join(crate::sfu::tests::join("b", 100)).await.unwrap();
        on_admitted(
            sfu_b.clone(),
            mod_b.clone(),
            t.clone(),
            c.clone(),
            false,
            false,
        );
        assert_eq!(
            recording_started(&mut b_events).await,
            notice.recording_id,
            "the same recording"
        );
        let id = RecordingId::parse(&notice.recording_id).unwrap();
        let (manifest, _) = sfu_b.recordings().unwrap().get("t", &id).unwrap();
        assert_eq!(
            (manifest.segment, manifest.started_by.as_str()),
            (2, "alice")
        );
        let (first, _) = sfu_a.recordings().unwrap().get("t", &id).unwrap();
        assert_eq!(first.segment, 1);

        // Back on host A within the window, after B's recording was stopped on purpose: a
        // requested stop removes the record, so nothing continues.
        sfu_b
            .stop_recording(&t, &c, StopReason::Requested)
            .await
            .unwrap();
        mod_b.set_recording(&t, &c, None).await.unwrap();
        for _ in 0..40 {
            if mod_a.recording(&t, &c).unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(mod_a.recording(&t, &c).unwrap(), None);
        let (_a2, _a2_events) = sfu_a
            .join(crate::sfu::tests::join("a2", 100))
            .await
            .unwrap();
        on_admitted(
            sfu_a.clone(),
            mod_a.clone(),
            t.clone(),
            c.clone(),
            false,
            false,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sfu_a.recording_of(&t, &c).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_encrypted_room_is_not_recorded_by_policy_nor_continued() {
        let store: Arc<dyn Store> = Arc::new(Local::new());
        let dir = tempfile::tempdir().unwrap();
        let (sfu, moderation) = host(store, dir.path()).await;
        let (t, c) = (TenantId::new("t"), CallId::new("c"));
        let (_a, _events) = sfu.join(crate::sfu::tests::join("a", 100)).await.unwrap();
        // A fresh record of a recording elsewhere, and a policy that says record: neither
        // starts anything in an end-to-end encrypted room.
        let record = RecordingRecord {
            v: 1,
            recording_id: RecordingId::generate().as_str().to_owned(),
            segment: 1,
            started_by: "alice".into(),
            started_at_ms: crate::sfu::unix_ms(),
            updated_at_ms: crate::sfu::unix_ms(),
        };
        moderation
            .set_recording(&t, &c, Some(record))
            .await
            .unwrap();
        on_admitted(
            sfu.clone(),
            moderation.clone(),
            t.clone(),
            c.clone(),
            true,
            true,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sfu.recording_of(&t, &c).await.unwrap(), None);
        // The same room unencrypted would have been (the check is the flag, not the setup).
        on_admitted(sfu.clone(), moderation, t.clone(), c.clone(), true, false);
        let mut started = None;
        for _ in 0..40 {
            started = sfu.recording_of(&t, &c).await.unwrap();
            if started.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(started.is_some(), "recorded when not encrypted");
    }
}

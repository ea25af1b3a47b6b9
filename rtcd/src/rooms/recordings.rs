//! The recording requests of the room service: start and stop (carried out by the SFU), list,
//! get, delete and read (the recordings on this host's disk). Files are read off the async
//! runtime and streamed in bounded chunks: a large download never sits in memory.

use std::io::{Read as _, Seek as _, SeekFrom};

use rtcd_proto::v1 as pb;
use rtcd_recording::manifest::{Manifest, Source, State, StopReason};
use tokio::sync::mpsc;
use tonic::Status;

use super::{RoomsError, RoomsService, call_id};
use crate::grpc::convert::recording_stop;
use crate::recording::{Library, RecordingError, RecordingId};
use crate::sfu::{RecordingRefusal, SfuError, TenantId};

/// Largest chunk of a file in one `RecordingChunk`.
const CHUNK: usize = 256 * 1024;
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
        let notice = self
            .sfu
            .start_recording(tenant, &call, &req.requested_by)
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
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::task::spawn_blocking(move || stream_file(file, size, offset, length, &tx));
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

    fn library(&self) -> Result<std::sync::Arc<Library>, RoomsError> {
        self.sfu
            .recordings()
            .cloned()
            .ok_or(RoomsError::Sfu(SfuError::Recording(
                RecordingRefusal::Disabled,
            )))
    }
}

/// Sends `length` bytes of `file` from `offset` in chunks; stops when the receiver is gone.
fn stream_file(
    mut file: std::fs::File,
    size: u64,
    offset: u64,
    length: u64,
    tx: &mpsc::Sender<Result<pb::RecordingChunk, Status>>,
) {
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        let _ = tx.blocking_send(Err(Status::internal(format!("cannot read the file: {e}"))));
        return;
    }
    let mut left = length;
    let mut first = true;
    loop {
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
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
                    codec: codec_name(t.codec).into(),
                    start_ms: t.start_ms.round() as i64,
                })
                .collect()
        } else {
            Vec::new()
        },
        bytes,
    }
}

fn codec_name(c: rtcd_recording::manifest::Codec) -> &'static str {
    use rtcd_recording::manifest::Codec as C;
    match c {
        C::Opus => "opus",
        C::Vp8 => "vp8",
        C::Vp9 => "vp9",
        C::Av1 => "av1",
        C::H264 => "h264",
    }
}

//! PLACEHOLDER (replaced by the recorder core): the API the SFU is written against.
#![allow(missing_docs, dead_code, unused_variables, clippy::all)]

use std::path::PathBuf;
use std::time::Duration;

use rtcd_recording::manifest::{Codec, Manifest, Participant, Source, StopReason};

use crate::media::packet::MediaPacket;

#[derive(Debug, Clone)]
pub struct RecordingConfig {
    pub directory: PathBuf,
    pub min_free_bytes: u64,
    pub max_duration: Duration,
    pub queue_packets: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordingId(String);
impl RecordingId {
    pub fn generate() -> Self {
        unimplemented!()
    }
    pub fn parse(s: &str) -> Result<Self, RecordingError> {
        unimplemented!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct RecordingMeta {
    pub tenant: String,
    pub room: String,
    pub id: RecordingId,
    pub segment: u32,
    pub host: String,
    pub started_by: String,
}

#[derive(Debug, Clone)]
pub struct TrackMeta {
    pub participant: Participant,
    pub track_id: String,
    pub source: Source,
    pub codec: Codec,
    pub payload_type: u8,
    pub clock_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackRef(u32);

pub struct Finished {
    pub tenant: String,
    pub manifest: Manifest,
    pub directory: PathBuf,
}

pub struct Recorder;
impl Recorder {
    pub fn start(
        config: &RecordingConfig,
        meta: RecordingMeta,
        library: &Library,
        on_finished: Box<dyn FnOnce(Finished) + Send>,
    ) -> Result<Recorder, RecordingError> {
        unimplemented!()
    }
    pub fn add_track(&mut self, track: TrackMeta) -> Result<TrackRef, RecordingError> {
        unimplemented!()
    }
    pub fn packet(&self, track: TrackRef, packet: &MediaPacket) {}
    pub fn sender_report(&self, track: TrackRef, ntp: u64, rtp_timestamp: u32, received_unix_ms: f64) {}
    pub fn speaking(&self, track: TrackRef, speaking: bool) {}
    pub fn end_track(&self, track: TrackRef) {}
    pub fn wants_keyframe(&self, track: TrackRef) -> bool {
        false
    }
    pub fn stopped_itself(&self) -> Option<StopReason> {
        None
    }
    pub fn stop(self, reason: StopReason) {}
    pub fn id(&self) -> &RecordingId {
        unimplemented!()
    }
    pub fn started_at_ms(&self) -> i64 {
        0
    }
    pub fn dropped_packets(&self) -> u64 {
        0
    }
}

pub struct Library;
impl Library {
    pub fn open(directory: PathBuf) -> Result<Library, RecordingError> {
        unimplemented!()
    }
    pub fn list(&self, tenant: &str, room: Option<&str>) -> Vec<(Manifest, u64)> {
        unimplemented!()
    }
    pub fn get(&self, tenant: &str, id: &RecordingId) -> Result<(Manifest, u64), RecordingError> {
        unimplemented!()
    }
    pub fn delete(&self, tenant: &str, id: &RecordingId) -> Result<u64, RecordingError> {
        unimplemented!()
    }
    pub fn open_file(
        &self,
        tenant: &str,
        id: &RecordingId,
        name: &str,
    ) -> Result<(std::fs::File, u64), RecordingError> {
        unimplemented!()
    }
    pub fn is_recording(&self, tenant: &str, id: &RecordingId) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("less free space than the floor")]
    DiskFull,
    #[error("no such recording")]
    NotFound,
    #[error("still recording")]
    StillRecording,
    #[error("codec {0} cannot be recorded")]
    UnsupportedCodec(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad recording id")]
    InvalidId,
}

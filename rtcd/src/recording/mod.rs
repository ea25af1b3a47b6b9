//! Recording a room: each published track written to its own file (WebM; H.264 in Matroska),
//! without decoding or transcoding, and a `manifest.json` (the [`rtcd_recording::manifest`] contract) that says
//! how the files line up in time.
//!
//! # Shape
//!
//! * [`Recorder`]: owned by the SFU worker (the data plane), one per recording being written.
//!   Its per-packet calls never block: packets go through a bounded queue
//!   ([`RecordingConfig::queue_packets`]) to the recording's own writer thread; when the queue
//!   is full (the disk cannot keep up) the packet is dropped, counted, and the recording is
//!   marked degraded.
//! * The writer thread (`writer`): reorders and depacketizes (`depack`), writes the files
//!   (libwebm through the `webm` crate; H.264, which libwebm cannot name, through the small
//!   Matroska muxer in `mkv`; flushed and synced every second so that a `kill -9` leaves them
//!   playable up to the last second), keeps the manifest current, watches
//!   the disk floor and the maximum duration. It is the only code touching the files.
//! * [`Library`]: the recordings on disk, for the API (list, get, delete, read a file), and
//!   the recovery of recordings rtcd was killed in.
//!
//! Nothing here knows the SFU's internals, gRPC or the WebRTC library: the SFU hands over
//! [`MediaPacket`]s and sender report values.
//!
//! # Layout on disk
//!
//! `{directory}/t-{tenant}/{recording id}/` holds `manifest.json` and one
//! `{nn}-{source}-{user}.webm` per track (`.mkv` for H.264). The `t-` prefix keeps tenant IDs such as `.` or `..`
//! harmless; recording IDs are checked strictly ([`RecordingId::parse`]), so neither can
//! name a path outside the directory.
//!
//! H.264 goes into Matroska (`.mkv`, `V_MPEG4/ISO/AVC`) through a hand-written muxer (`mkv`):
//! libwebm muxes only WebM's codecs, and no well-kept crate writes H.264 into Matroska or MP4
//! incrementally (see that module for the crates checked).

mod clock;
mod depack;
#[cfg(test)]
mod h264_rtp;
mod library;
mod mkv;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use rtcd_recording::manifest::{Codec, Manifest, Participant, Source, StopReason};

pub use library::Library;

use crate::media::packet::MediaPacket;

/// Where and how recordings are written (the host's settings).
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// The recordings' root directory; must be the one the [`Library`] was opened over.
    pub directory: PathBuf,
    /// Free space the recordings' filesystem must keep: a recording does not start below it,
    /// and stops itself ([`StopReason::DiskFull`]) when free space falls below it.
    pub min_free_bytes: u64,
    /// A recording stops itself ([`StopReason::MaxDuration`]) after this long.
    pub max_duration: Duration,
    /// Packets queued per recording between the SFU worker and the writer thread (e.g. 4096:
    /// a few seconds of a room's media). Beyond it packets are dropped, never waited for.
    pub queue_packets: usize,
}

/// A recording's ID: `rec_` and 26 lowercase base32 characters (16 random bytes). Checked
/// strictly, so an ID is always safe as a directory name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordingId(String);

/// RFC 4648 base32, lowercase.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const ID_PREFIX: &str = "rec_";
const ID_CHARS: usize = 26;

impl RecordingId {
    /// A new random ID.
    pub fn generate() -> Self {
        let bytes: [u8; 16] = rand::random();
        let mut id = String::with_capacity(ID_PREFIX.len() + ID_CHARS);
        id.push_str(ID_PREFIX);
        let value = u128::from_be_bytes(bytes);
        // 26 characters of 5 bits = 130 bits: the 128 bits, then two zero bits (RFC 4648).
        for i in 0..ID_CHARS {
            let shift = 128i32 - 5 * (i as i32 + 1);
            let index = if shift >= 0 {
                (value >> shift) & 0x1f
            } else {
                (value << -shift) & 0x1f
            };
            id.push(BASE32[index as usize] as char);
        }
        Self(id)
    }

    /// Checks an ID from outside (an API request, a directory name).
    ///
    /// # Errors
    ///
    /// [`RecordingError::NotFound`] for anything but `rec_` and 26 base32 characters (no ID
    /// of that form can exist).
    pub fn parse(s: &str) -> Result<Self, RecordingError> {
        let rest = s.strip_prefix(ID_PREFIX).ok_or(RecordingError::NotFound)?;
        let valid = rest.len() == ID_CHARS
            && rest.bytes().all(|b| BASE32.contains(&b))
            // The last character carries 3 bits and two zero bits.
            && rest
                .bytes()
                .last()
                .and_then(|b| BASE32.iter().position(|&c| c == b))
                .is_some_and(|v| v & 0x03 == 0);
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(RecordingError::NotFound)
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RecordingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `tenant` may name a directory (`[A-Za-z0-9._-]`, 1 to 128 characters).
pub(crate) fn valid_tenant(tenant: &str) -> bool {
    (1..=128).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What the manifest says about the recording as a whole.
#[derive(Debug, Clone)]
pub struct RecordingMeta {
    /// The tenant (client ID) whose room it is: `[A-Za-z0-9._-]`.
    pub tenant: String,
    /// The room (call ID).
    pub room: String,
    /// The recording's ID (the same for each segment of a recording that moved hosts).
    pub id: RecordingId,
    /// 1, or more when the room moved to this host while it recorded.
    pub segment: u32,
    /// This host's name.
    pub host: String,
    /// Who started it (a user ID, "policy", or empty for the platform).
    pub started_by: String,
}

/// A track to record.
#[derive(Debug, Clone)]
pub struct TrackMeta {
    /// Who publishes it.
    pub participant: Participant,
    /// Its msid track ID.
    pub track_id: String,
    /// What it is.
    pub source: Source,
    /// Its codec.
    pub codec: Codec,
    /// Its RTP payload type: only packets of it are recorded (not RTX, not other codecs).
    pub payload_type: u8,
    /// Its RTP clock rate (from SDP: 48000 for Opus, 90000 for video).
    pub clock_rate: u32,
}

/// A track of a [`Recorder`]: a small handle for the per-packet calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackRef(u32);

/// A recording that is complete, as handed to `on_finished`.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its tenant.
    pub tenant: String,
    /// Its final manifest (state stopped).
    pub manifest: Manifest,
    /// Its directory.
    pub directory: PathBuf,
}

/// What went wrong starting, reading or deleting a recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// Free space is below the host's floor.
    #[error("not enough free disk space to record")]
    DiskFull,
    /// No such recording (or file) for this tenant.
    #[error("recording not found")]
    NotFound,
    /// The recording is still being written.
    #[error("the recording is still being written")]
    StillRecording,
    /// The codec cannot be written to a file without transcoding (none of [`Codec`]'s is
    /// refused today: every one has a container).
    #[error("codec {0:?} cannot be recorded")]
    UnsupportedCodec(Codec),
    /// A tenant ID that cannot name a directory.
    #[error("invalid tenant id")]
    InvalidTenant,
    /// The recording already has its maximum number of tracks (99: file names have 2 digits).
    #[error("too many tracks in one recording")]
    TooManyTracks,
    /// The recording already stopped (on its own: see [`Recorder::stopped_itself`]).
    #[error("the recording stopped")]
    Stopped,
    /// The filesystem failed.
    #[error("recording I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A manifest could not be read or written.
    #[error(transparent)]
    Manifest(#[from] rtcd_recording::manifest::ManifestError),
}

/// The most tracks one recording holds (two-digit file numbers).
const MAX_TRACKS: usize = 99;

/// What the SFU worker hands the writer thread through the bounded queue.
pub(crate) enum Event {
    Packet(u32, MediaPacket),
    SenderReport {
        track: u32,
        ntp: u64,
        rtp_timestamp: u32,
        received_unix_ms: f64,
    },
    Speaking(u32, bool, Instant),
}

/// What the SFU worker tells the writer thread outside the queue (never dropped: a few per
/// track and one stop, so this channel is bounded by the number of tracks).
pub(crate) enum Control {
    EndTrack(u32),
    Stop(StopReason),
}

/// A track's state shared by the SFU worker and the writer thread.
pub(crate) struct TrackShared {
    pub meta: TrackMeta,
    pub file: String,
    /// Set by the writer when it needs a keyframe; taken by [`Recorder::wants_keyframe`].
    pub wants_keyframe: AtomicBool,
    /// Packets dropped because the queue was full.
    pub queue_dropped: AtomicU64,
}

/// State shared by the [`Recorder`] and its writer thread.
pub(crate) struct Shared {
    /// The tracks, in the order they were added (index = [`TrackRef`]); the writer picks up
    /// new ones from here.
    pub tracks: Mutex<Vec<Arc<TrackShared>>>,
    /// Packets dropped because the queue was full, over every track.
    pub dropped: AtomicU64,
    /// Set when the queue first overflowed (the manifest's `degraded`; logged once).
    pub degraded: AtomicBool,
    /// Why the writer stopped on its own (0: it did not; else `stop_code`).
    pub stopped_itself: AtomicU8,
}

fn stop_code(reason: StopReason) -> u8 {
    match reason {
        StopReason::Requested => 1,
        StopReason::RoomFinished => 2,
        StopReason::MaxDuration => 3,
        StopReason::DiskFull => 4,
        StopReason::Error => 5,
        StopReason::Shutdown => 6,
        StopReason::Interrupted => 7,
    }
}

fn stop_from_code(code: u8) -> Option<StopReason> {
    Some(match code {
        1 => StopReason::Requested,
        2 => StopReason::RoomFinished,
        3 => StopReason::MaxDuration,
        4 => StopReason::DiskFull,
        5 => StopReason::Error,
        6 => StopReason::Shutdown,
        7 => StopReason::Interrupted,
        _ => return None,
    })
}

/// rtcd's clock in Unix milliseconds.
pub(crate) fn unix_ms_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// One recording being written; owned by the SFU worker. Dropping it stops the recording
/// ([`StopReason::Shutdown`]).
pub struct Recorder {
    id: RecordingId,
    started_at_ms: i64,
    shared: Arc<Shared>,
    events: SyncSender<Event>,
    control: std::sync::mpsc::Sender<Control>,
    /// The tracks (index = [`TrackRef`]): the recorder's own copy of `shared.tracks`, so the
    /// per-packet calls take no lock.
    tracks: Vec<Arc<TrackShared>>,
    /// `stop` was called (the drop then sends nothing).
    stopped: bool,
}

impl Recorder {
    /// Starts a recording: checks free space, creates `{directory}/t-{tenant}/{id}/`, writes
    /// the first manifest (state recording) and spawns the writer thread. `on_finished` is
    /// called once, on the writer thread, with the final manifest when the recording is
    /// complete, whatever the stop reason.
    ///
    /// # Errors
    ///
    /// [`RecordingError::DiskFull`] below [`RecordingConfig::min_free_bytes`];
    /// [`RecordingError::InvalidTenant`]; [`RecordingError::Io`] when the directory, the
    /// manifest or the thread cannot be created (or the recording's directory exists).
    pub fn start(
        config: &RecordingConfig,
        meta: RecordingMeta,
        library: &Library,
        on_finished: Box<dyn FnOnce(Finished) + Send>,
    ) -> Result<Recorder, RecordingError> {
        if !valid_tenant(&meta.tenant) {
            return Err(RecordingError::InvalidTenant);
        }
        let tenant_dir = config.directory.join(format!("t-{}", meta.tenant));
        writer::create_dir(&tenant_dir)?;
        if fs2::available_space(&tenant_dir)? < config.min_free_bytes {
            return Err(RecordingError::DiskFull);
        }
        let directory = tenant_dir.join(meta.id.as_str());
        std::fs::DirBuilder::new().mode_0700().create(&directory)?;
        let started_at_ms = unix_ms_now() as i64;
        let manifest = Manifest {
            version: rtcd_recording::manifest::VERSION,
            recording_id: meta.id.to_string(),
            room: meta.room.clone(),
            segment: meta.segment,
            host: meta.host.clone(),
            started_by: meta.started_by.clone(),
            started_at_ms,
            stopped_at_ms: None,
            state: rtcd_recording::manifest::State::Recording,
            stop_reason: None,
            degraded: false,
            error: None,
            tracks: Vec::new(),
        };
        if let Err(e) = manifest.write(&directory) {
            let _ = std::fs::remove_dir_all(&directory);
            return Err(e.into());
        }
        let shared = Arc::new(Shared {
            tracks: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            stopped_itself: AtomicU8::new(0),
        });
        let (events, events_rx): (SyncSender<Event>, Receiver<Event>) =
            std::sync::mpsc::sync_channel(config.queue_packets.max(1));
        let (control, control_rx) = std::sync::mpsc::channel();
        let live = library.register(&meta.tenant, &meta.id);
        tracing::info!(recording = %meta.id, tenant = %meta.tenant, room = %meta.room, "recording started");
        let id = meta.id.clone();
        let job = writer::Writer::new(
            config,
            meta,
            directory.clone(),
            manifest,
            shared.clone(),
            events_rx,
            control_rx,
            live,
            on_finished,
        );
        if let Err(e) = std::thread::Builder::new()
            .name(format!("rec-{}", &id.as_str()[4..12]))
            .spawn(move || job.run())
        {
            let _ = std::fs::remove_dir_all(&directory);
            return Err(e.into());
        }
        Ok(Recorder {
            id,
            started_at_ms,
            shared,
            events,
            control,
            tracks: Vec::new(),
            stopped: false,
        })
    }

    /// A new track to record; its packets are then handed to [`Recorder::packet`] with the
    /// returned handle. The manifest names it within the writer's next tick (~100 ms).
    ///
    /// # Errors
    ///
    /// [`RecordingError::TooManyTracks`]; [`RecordingError::Stopped`] when the recording
    /// already stopped itself.
    pub fn add_track(&mut self, track: TrackMeta) -> Result<TrackRef, RecordingError> {
        if self.stopped_itself().is_some() {
            return Err(RecordingError::Stopped);
        }
        let mut tracks = self.shared.tracks.lock().unwrap_or_else(|e| e.into_inner());
        if tracks.len() >= MAX_TRACKS {
            return Err(RecordingError::TooManyTracks);
        }
        let index = tracks.len() as u32;
        // H.264 goes into Matroska (libwebm writes only WebM's codecs: see `mkv`).
        let extension = if track.codec == Codec::H264 {
            "mkv"
        } else {
            "webm"
        };
        let file = format!(
            "{:02}-{}-{}.{extension}",
            index + 1,
            track.source.as_str(),
            sanitize_user(&track.participant.user)
        );
        let shared = Arc::new(TrackShared {
            meta: track,
            file,
            wants_keyframe: AtomicBool::new(false),
            queue_dropped: AtomicU64::new(0),
        });
        tracks.push(shared.clone());
        self.tracks.push(shared);
        Ok(TrackRef(index))
    }

    /// One RTP packet of the track (a clone of the SFU's packet: cloning `Bytes` is a
    /// reference count). Never blocks: when the queue is full the packet is dropped, counted
    /// ([`Recorder::dropped_packets`] and the track's `dropped_packets`) and the recording is
    /// marked degraded. Packets of another payload type (RTX, another codec) are ignored.
    pub fn packet(&self, track: TrackRef, packet: &MediaPacket) {
        let Some(shared) = self.track(track) else {
            return;
        };
        // Padding-only packets (a publisher probing its uplink on the media stream) go in
        // too: they take sequence numbers, and leaving them out would read as losses.
        if packet.payload_type != shared.meta.payload_type {
            return;
        }
        match self.events.try_send(Event::Packet(track.0, packet.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.queue_dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.shared.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(recording = %self.id, "the recording's disk cannot keep up: packets are dropped (recording degraded)");
                }
            }
            // The writer stopped on its own: nothing to record any more.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// The publisher's RTCP sender report for the track's SSRC: its NTP time (64-bit NTP
    /// format), the RTP timestamp paired with it, and when rtcd received it (Unix ms). Sets the
    /// track's `start_ms` on the publisher's clock (see the `clock` module). Dropped when the
    /// queue is full (the next report serves).
    pub fn sender_report(
        &self,
        track: TrackRef,
        ntp: u64,
        rtp_timestamp: u32,
        received_unix_ms: f64,
    ) {
        if self.track(track).is_some() {
            let _ = self.events.try_send(Event::SenderReport {
                track: track.0,
                ntp,
                rtp_timestamp,
                received_unix_ms,
            });
        }
    }

    /// Voice activity of an audio track (the manifest's `speech` intervals). Dropped when the
    /// queue is full (the recording is degraded then anyway).
    pub fn speaking(&self, track: TrackRef, speaking: bool) {
        if self.track(track).is_some() {
            let _ = self
                .events
                .try_send(Event::Speaking(track.0, speaking, Instant::now()));
        }
    }

    /// The track ended (unpublished, or its participant left): its file is completed after
    /// the packets already queued, the manifest updated; the rest of the recording goes on.
    pub fn end_track(&self, track: TrackRef) {
        if self.track(track).is_some() {
            let _ = self.control.send(Control::EndTrack(track.0));
        }
    }

    /// Whether the writer wants a keyframe for this video track since the last call (set when
    /// the track starts and whenever frames were lost: it then waits for the next keyframe).
    /// One atomic: cheap enough per packet.
    pub fn wants_keyframe(&self, track: TrackRef) -> bool {
        self.track(track)
            .is_some_and(|t| t.wants_keyframe.swap(false, Ordering::Relaxed))
    }

    /// Why the writer stopped on its own (maximum duration, disk floor, write error), once it
    /// did: the SFU polls this and then calls [`Recorder::stop`] with that reason.
    pub fn stopped_itself(&self) -> Option<StopReason> {
        stop_from_code(self.shared.stopped_itself.load(Ordering::Relaxed))
    }

    /// Packets dropped because the disk could not keep up, over every track (for a metric).
    pub fn dropped_packets(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stops the recording. Returns at once: the writer thread writes what is queued,
    /// finalizes every file, writes the final manifest (state stopped, `reason`) and calls
    /// `on_finished`.
    pub fn stop(mut self, reason: StopReason) {
        self.stopped = true;
        let _ = self.control.send(Control::Stop(reason));
    }

    /// The recording's ID.
    pub fn id(&self) -> &RecordingId {
        &self.id
    }

    /// When it started (Unix ms, the manifest's `started_at_ms`).
    pub fn started_at_ms(&self) -> i64 {
        self.started_at_ms
    }

    /// The track's shared state (the recorder's own list: no lock on the data plane).
    fn track(&self, track: TrackRef) -> Option<&TrackShared> {
        self.tracks.get(track.0 as usize).map(|t| &**t)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.control.send(Control::Stop(StopReason::Shutdown));
        }
    }
}

/// A user ID as a file name part: `[A-Za-z0-9_-]` (others become `_`), at most 32
/// characters, never empty.
pub(crate) fn sanitize_user(user: &str) -> String {
    let s: String = user
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "user".to_owned() } else { s }
}

/// `DirBuilder` with mode 0700 (recordings are private to rtcd's user).
trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt as _;
        self.mode(0o700)
    }
}

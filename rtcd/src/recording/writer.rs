//! The writer thread of one recording: the only code that touches its files.
//!
//! It takes packets from the bounded queue, puts each track's packets in order and into frames
//! (`depack`), writes the frames to the track's file (WebM through libwebm; H.264 in Matroska
//! through the `mkv` module), and keeps the manifest current. Every
//! [`TICK`] it gives up losses waited for too long; every [`FLUSH_EVERY`] it flushes and syncs
//! every file (so a `kill -9` of rtcd leaves them playable up to about a second before), checks
//! the disk floor and the maximum duration; every [`MANIFEST_EVERY`] it rewrites the manifest.
//! On stop (or when it stops itself) it writes what is queued, finalizes each file, writes the
//! final manifest and calls `on_finished`: bounded work (a few files).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtcd_recording::manifest::{self, ClockSource, Codec, Manifest, State, StopReason};
use webm::mux::{self, SegmentBuilder, SegmentMode};

use super::clock::{SenderReport, SessionOffsets, TrackClock, ntp_to_unix_ms};
use super::depack::{Depacketizer, Frame, Ordered, Reorder, av1_codec_private};
use super::library::LiveGuard;
use super::mkv::MkvFile;
use super::{
    Control, Event, Finished, RecordingConfig, RecordingMeta, Shared, TrackShared, stop_code,
    unix_ms_now,
};
use crate::media::packet::MediaPacket;

/// How often the writer wakes without packets (reorder give-ups, new tracks, stop).
const TICK: Duration = Duration::from_millis(100);
/// How often files are flushed and synced, and the disk floor and duration checked.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the manifest is rewritten while recording (sizes, durations).
const MANIFEST_EVERY: Duration = Duration::from_secs(5);
/// A file's write buffer: a second of video fits, so a flush is about one write per second.
const FILE_BUFFER: usize = 256 * 1024;
/// The picture size a video file announces when its first keyframe does not say (VP9 without
/// a scalability structure, AV1 with timing info, an SPS not understood): informational only,
/// decoders read the size from the bitstream.
const DEFAULT_SIZE: (u16, u16) = (640, 480);

/// Creates a directory (and its parents) with mode 0700.
pub(crate) fn create_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Whether an I/O error means the filesystem is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Why writing stopped on the writer's side.
enum Failure {
    DiskFull(String),
    Error(String),
}

impl Failure {
    fn io(what: &str, e: &std::io::Error) -> Self {
        if is_disk_full(e) {
            Failure::DiskFull(format!("{what}: {e}"))
        } else {
            Failure::Error(format!("{what}: {e}"))
        }
    }
}

/// A file as libwebm writes it, reachable from the writer too (to flush and sync it): libwebm
/// owns its `Write`, so both hold this handle. Only the writer thread uses it; the mutex is
/// never contended.
#[derive(Clone)]
struct Sink(Arc<Mutex<SinkInner>>);

struct SinkInner {
    file: BufWriter<File>,
    /// The last write error (libwebm reports only that a write failed).
    error: Option<std::io::Error>,
}

impl Sink {
    fn with<T>(&self, f: impl FnOnce(&mut SinkInner) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut inner = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("recording sink poisoned"))?;
        let result = f(&mut inner);
        if let Err(e) = &result {
            inner.error = Some(std::io::Error::new(e.kind(), e.to_string()));
        }
        result
    }

    /// Writes the buffer out and syncs the data to disk; the file's size.
    fn sync(&self) -> std::io::Result<u64> {
        self.with(|s| {
            s.file.flush()?;
            s.file.get_ref().sync_data()?;
            Ok(s.file.get_ref().metadata()?.len())
        })
    }

    fn take_error(&self) -> Option<std::io::Error> {
        self.0.lock().ok().and_then(|mut s| s.error.take())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.with(|s| s.file.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.with(|s| s.file.flush())
    }
}

impl Seek for Sink {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.with(|s| s.file.seek(pos))
    }
}

/// One track's file: WebM through libwebm, or (H.264, which libwebm cannot name) Matroska
/// through the `mkv` module.
enum TrackFile {
    Webm(WebmFile),
    Mkv(MkvFile),
}

impl TrackFile {
    /// Creates the file for a track whose first frame (a keyframe) is `first`.
    fn create(path: &Path, codec: Codec, first: &Frame<'_>) -> Result<Self, Failure> {
        if codec != Codec::H264 {
            return WebmFile::create(path, codec, first).map(Self::Webm);
        }
        if first.config.is_empty() {
            return Err(Failure::Error(
                "an H.264 keyframe without its SPS / PPS".into(),
            ));
        }
        let file = create_file(path)?;
        MkvFile::create(
            file,
            FILE_BUFFER,
            first.config,
            first.size.unwrap_or(DEFAULT_SIZE),
        )
        .map(Self::Mkv)
        .map_err(|e| Failure::io("starting a Matroska file", &e))
    }

    /// Appends a frame at `ns` (not before the last one, and at least a millisecond after).
    fn add(&mut self, data: &[u8], ns: u64, keyframe: bool) -> Result<(), Failure> {
        match self {
            Self::Webm(f) => f.add(data, ns, keyframe),
            Self::Mkv(f) => f
                .add(data, ns / 1_000_000, keyframe)
                .map_err(|e| Failure::io("writing a track file", &e)),
        }
    }

    /// Writes the buffer out and syncs the data to disk; the file's size.
    fn sync(&mut self) -> std::io::Result<u64> {
        match self {
            Self::Webm(f) => f.sink.sync(),
            Self::Mkv(f) => f.sync(),
        }
    }

    /// Finalizes the file and syncs it; its size.
    fn finish(self) -> Result<u64, Failure> {
        match self {
            Self::Webm(f) => f.finish(),
            Self::Mkv(f) => f
                .finish()
                .map_err(|e| Failure::io("finishing a track file", &e)),
        }
    }
}

/// Creates a track's file: new (never overwriting), private to rtcd's user.
fn create_file(path: &Path) -> Result<File, Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::io("creating a track file", &e))
}

/// One track's WebM file.
struct WebmFile {
    segment: mux::Segment<Sink>,
    track: mux::TrackNum,
    sink: Sink,
}

impl WebmFile {
    /// Creates the file for a track whose first frame is `first`.
    fn create(path: &Path, codec: Codec, first: &Frame<'_>) -> Result<Self, Failure> {
        let file = create_file(path)?;
        let sink = Sink(Arc::new(Mutex::new(SinkInner {
            file: BufWriter::with_capacity(FILE_BUFFER, file),
            error: None,
        })));
        let mux_error = |e: mux::Error| Failure::Error(format!("starting a WebM file: {e}"));
        // File mode, not Live: a clean stop then writes the Duration and the Cues (players show
        // the length and seek). Clusters still reach the disk as they close, so a `kill -9`
        // leaves a file that decodes to its last synced cluster; only its header's Duration
        // is then a placeholder (the manifest's `duration_ms` is right up to the last manifest).
        let builder = SegmentBuilder::new(mux::Writer::new(sink.clone()))
            .and_then(|b| b.set_mode(SegmentMode::File))
            .and_then(|b| b.set_writing_app("rtcd"))
            .map_err(mux_error)?;
        let (width, height) = first.size.unwrap_or(DEFAULT_SIZE);
        let (builder, track) = match codec {
            Codec::Opus => {
                let (b, t) = builder
                    .add_audio_track(48_000, 2, mux::AudioCodecId::Opus, None)
                    .map_err(mux_error)?;
                (
                    b.set_codec_private(t, &OPUS_HEAD).map_err(mux_error)?,
                    t.into(),
                )
            }
            Codec::Vp8 | Codec::Vp9 | Codec::Av1 => {
                let id = match codec {
                    Codec::Vp8 => mux::VideoCodecId::VP8,
                    Codec::Vp9 => mux::VideoCodecId::VP9,
                    _ => mux::VideoCodecId::AV1,
                };
                let (b, t) = builder
                    .add_video_track(u32::from(width), u32::from(height), id, None)
                    .map_err(mux_error)?;
                let b = if codec == Codec::Av1 && !first.config.is_empty() {
                    b.set_codec_private(t, &av1_codec_private(first.config))
                        .map_err(mux_error)?
                } else {
                    b
                };
                (b, t.into())
            }
            Codec::H264 => return Err(Failure::Error("H.264 is not written to WebM".into())),
        };
        Ok(Self {
            segment: builder.build(),
            track,
            sink,
        })
    }

    fn add(&mut self, data: &[u8], ns: u64, keyframe: bool) -> Result<(), Failure> {
        self.segment
            .add_frame(self.track, data, ns, keyframe)
            .map_err(|e| match self.sink.take_error() {
                Some(io) => Failure::io("writing a track file", &io),
                None => Failure::Error(format!("writing a track file: {e}")),
            })
    }

    /// Finalizes the file (closes its last cluster) and syncs it; its size.
    fn finish(self) -> Result<u64, Failure> {
        let sink = self.sink.clone();
        let finalized = self.segment.finalize(None).is_ok();
        let size = sink
            .sync()
            .map_err(|e| Failure::io("finishing a track file", &e))?;
        if finalized {
            Ok(size)
        } else {
            Err(Failure::Error("finalizing a track file failed".into()))
        }
    }
}

/// The Opus `CodecPrivate` (RFC 7845 §5.1 "OpusHead"): version 1, 2 channels (WebRTC's SDP
/// always says `opus/48000/2`), pre-skip 0 (RTP Opus has none), 48 kHz, gain 0, family 0.
const OPUS_HEAD: [u8; 19] = [
    b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 2, 0, 0, 0x80, 0xbb, 0, 0, 0, 0, 0,
];

/// One track as the writer keeps it.
struct TrackWriter {
    shared: Arc<TrackShared>,
    reorder: Reorder,
    out: TrackOut,
}

/// The track past the reorder buffer.
struct TrackOut {
    shared: Arc<TrackShared>,
    /// The file started since the writer last looked: the track enters the manifest.
    new_entry: bool,
    depack: Depacketizer,
    codec: Codec,
    clock_rate: u32,
    path: PathBuf,
    file: Option<TrackFile>,
    /// The file was finalized (the track ended) or failed: nothing more is written.
    closed: bool,
    /// The raw and unwrapped RTP timestamp of the last frame written.
    last_ts: Option<(u32, i64)>,
    /// The unwrapped RTP timestamp of the first frame.
    first_ts: i64,
    last_ns: u64,
    first_arrival: Option<Instant>,
    clock: Option<TrackClock>,
    report: Option<SenderReport>,
    /// Packets given up by the reorder buffer.
    lost: u64,
    speech_open: Option<u64>,
    /// The manifest entry (present once the file exists).
    entry: Option<manifest::Track>,
    /// A failure to report to the writer.
    failure: Option<Failure>,
}

impl TrackOut {
    fn ordered(&mut self, o: Ordered, base: &TimeBase) {
        match o {
            Ordered::Packet(p) => self.packet(&p, base),
            Ordered::Lost(n) => {
                self.lost += n;
                self.depack.lost();
            }
        }
    }

    fn packet(&mut self, p: &MediaPacket, base: &TimeBase) {
        // A padding-only packet has filled its place in the sequence; it carries no media.
        if self.closed || p.payload.is_empty() {
            return;
        }
        let mut depack = std::mem::replace(&mut self.depack, Depacketizer::Opus);
        depack.packet(p, &mut |f| self.frame(&f, base));
        self.depack = depack;
    }

    fn frame(&mut self, f: &Frame<'_>, base: &TimeBase) {
        if self.closed || self.failure.is_some() {
            return;
        }
        let unwrapped = match self.last_ts {
            Some((raw, u)) => u + i64::from(f.timestamp.wrapping_sub(raw) as i32),
            None => 0,
        };
        if self.file.is_none() {
            match TrackFile::create(&self.path, self.codec, f) {
                Ok(file) => self.file = Some(file),
                Err(e) => {
                    self.failure = Some(e);
                    self.closed = true;
                    return;
                }
            }
            self.first_ts = unwrapped;
            self.first_arrival = Some(f.arrival);
            let clock = TrackClock {
                clock_rate: self.clock_rate,
                first_rtp: f.timestamp,
                first_arrival_ms: base.unix_ms(f.arrival),
                report: self.report,
            };
            self.clock = Some(clock);
            let meta = &self.shared.meta;
            self.entry = Some(manifest::Track {
                file: self.shared.file.clone(),
                participant: meta.participant.clone(),
                track_id: meta.track_id.clone(),
                source: meta.source,
                codec: meta.codec,
                // The writer sets it from the session's offset at once (see `update_starts`).
                start_ms: clock.first_arrival_ms,
                clock: ClockSource::Arrival,
                duration_ms: 0,
                bytes: 0,
                frames: 0,
                keyframes: 0,
                dropped_packets: 0,
                width: None,
                height: None,
                speech: Vec::new(),
                complete: false,
            });
            self.new_entry = true;
        }
        let delta = unwrapped - self.first_ts;
        if delta < 0 || self.clock_rate == 0 {
            return;
        }
        let mut ns = (i128::from(delta) * 1_000_000_000 / i128::from(self.clock_rate)) as u64;
        if ns < self.last_ns {
            // Not monotonic (the sender's timestamps went back): the muxers would refuse it.
            return;
        }
        // WebM and Matroska count in milliseconds: two frames in one millisecond (a second frame with the
        // same RTP timestamp) would share a timecode, which players reject as a backward
        // step. The later one goes a millisecond later.
        if self.last_ts.is_some() && ns < self.last_ns + 1_000_000 {
            ns = self.last_ns + 1_000_000;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.add(f.data, ns, f.keyframe) {
            self.failure = Some(e);
            return;
        }
        self.last_ts = Some((f.timestamp, unwrapped));
        self.last_ns = ns;
        let video = !self.codec_is_audio();
        if let Some(entry) = self.entry.as_mut() {
            entry.frames += 1;
            entry.duration_ms = ns / 1_000_000;
            if video && f.keyframe {
                entry.keyframes += 1;
                if let Some((w, h)) = f.size {
                    entry.width = Some(w);
                    entry.height = Some(h);
                }
            }
        }
    }

    fn codec_is_audio(&self) -> bool {
        self.codec == Codec::Opus
    }

    /// File time (ms) of an instant: relative to the first frame's arrival.
    fn file_ms(&self, at: Instant) -> u64 {
        self.first_arrival.map_or(0, |first| {
            at.saturating_duration_since(first).as_millis() as u64
        })
    }
}

/// Maps `Instant`s onto rtcd's wall clock (Unix ms).
struct TimeBase {
    instant: Instant,
    unix_ms: f64,
}

impl TimeBase {
    fn unix_ms(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.instant) {
            Some(d) => self.unix_ms + d.as_secs_f64() * 1000.0,
            None => self.unix_ms - self.instant.duration_since(at).as_secs_f64() * 1000.0,
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    meta: RecordingMeta,
    directory: PathBuf,
    min_free_bytes: u64,
    max_duration: Duration,
    queue_packets: usize,
    manifest: Manifest,
    shared: Arc<Shared>,
    events: Receiver<Event>,
    control: Receiver<Control>,
    live: Option<LiveGuard>,
    on_finished: Option<Box<dyn FnOnce(Finished) + Send>>,
    tracks: Vec<TrackWriter>,
    /// Track indexes in the order their files started (the manifest's order).
    order: Vec<usize>,
    offsets: SessionOffsets,
    base: TimeBase,
    error: Option<String>,
}

impl Writer {
    /// The writer of a recording whose directory and first manifest exist.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &RecordingConfig,
        meta: RecordingMeta,
        directory: PathBuf,
        manifest: Manifest,
        shared: Arc<Shared>,
        events: Receiver<Event>,
        control: Receiver<Control>,
        live: LiveGuard,
        on_finished: Box<dyn FnOnce(Finished) + Send>,
    ) -> Self {
        Self {
            meta,
            directory,
            min_free_bytes: config.min_free_bytes,
            max_duration: config.max_duration,
            queue_packets: config.queue_packets.max(1),
            manifest,
            shared,
            events,
            control,
            live: Some(live),
            on_finished: Some(on_finished),
            tracks: Vec::new(),
            order: Vec::new(),
            offsets: SessionOffsets::default(),
            base: TimeBase {
                instant: Instant::now(),
                unix_ms: unix_ms_now(),
            },
            error: None,
        }
    }

    /// Runs until stopped; then finishes the recording.
    pub(crate) fn run(mut self) {
        let started = Instant::now();
        let mut next_tick = started + TICK;
        let mut next_flush = started + FLUSH_EVERY;
        let mut next_manifest = started + MANIFEST_EVERY;
        let reason = 'run: loop {
            loop {
                match self.control.try_recv() {
                    Ok(Control::EndTrack(i)) => {
                        self.drain_queue();
                        self.end_track(i as usize);
                    }
                    Ok(Control::Stop(reason)) => {
                        self.drain_queue();
                        break 'run reason;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'run StopReason::Shutdown,
                }
            }
            let now = Instant::now();
            match self
                .events
                .recv_timeout(next_tick.saturating_duration_since(now))
            {
                Ok(event) => self.event(event),
                Err(RecvTimeoutError::Timeout) => {}
                // The recorder is gone; its drop sent a stop, read at the top of the loop.
                Err(RecvTimeoutError::Disconnected) => {
                    if let Ok(Control::Stop(reason)) = self.control.try_recv() {
                        break 'run reason;
                    }
                    break 'run StopReason::Shutdown;
                }
            }
            if let Some(reason) = self.take_failure() {
                break 'run reason;
            }
            let now = Instant::now();
            if now < next_tick {
                continue;
            }
            next_tick = now + TICK;
            self.pick_up_tracks();
            for t in &mut self.tracks {
                let base = &self.base;
                let out = &mut t.out;
                t.reorder.poll(now, &mut |o| out.ordered(o, base));
                if t.out.depack.take_wants_keyframe() {
                    t.shared.wants_keyframe.store(true, Ordering::Relaxed);
                }
            }
            self.new_entries();
            if now >= next_flush {
                next_flush = now + FLUSH_EVERY;
                self.flush_files();
                if let Some(reason) = self.take_failure() {
                    break 'run reason;
                }
                match fs2::available_space(&self.directory) {
                    Ok(free) if free < self.min_free_bytes => {
                        self.error = Some(format!(
                            "free space {free} bytes below the floor of {} bytes",
                            self.min_free_bytes
                        ));
                        break 'run StopReason::DiskFull;
                    }
                    _ => {}
                }
                if now.duration_since(started) >= self.max_duration {
                    break 'run StopReason::MaxDuration;
                }
            }
            if now >= next_manifest {
                next_manifest = now + MANIFEST_EVERY;
                if let Err(e) = self.write_manifest() {
                    let failure = Failure::io("writing the manifest", &e);
                    self.tracks_failure(failure);
                    if let Some(reason) = self.take_failure() {
                        break 'run reason;
                    }
                }
            }
        };
        self.finish(reason);
    }

    /// Hands every queued event on (before a track ends or the recording stops). Bounded: at
    /// most one queue's worth, so a sender that keeps the queue full cannot hold it forever.
    fn drain_queue(&mut self) {
        for _ in 0..self.queue_packets {
            match self.events.try_recv() {
                Ok(event) => self.event(event),
                Err(_) => return,
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Packet(i, packet) => {
                if i as usize >= self.tracks.len() {
                    self.pick_up_tracks();
                }
                let Some(t) = self.tracks.get_mut(i as usize) else {
                    return;
                };
                let base = &self.base;
                let out = &mut t.out;
                t.reorder.push(packet, &mut |o| out.ordered(o, base));
                if t.out.depack.take_wants_keyframe() {
                    t.shared.wants_keyframe.store(true, Ordering::Relaxed);
                }
                if t.out.new_entry {
                    self.new_entries();
                }
            }
            Event::SenderReport {
                track,
                ntp,
                rtp_timestamp,
                received_unix_ms,
            } => {
                let Some(t) = self.track(track as usize) else {
                    return;
                };
                let report = SenderReport {
                    ntp_unix_ms: ntp_to_unix_ms(ntp),
                    rtp_timestamp,
                };
                t.out.report = Some(report);
                let first_report = t.out.clock.is_some_and(|c| c.report.is_none());
                if let Some(c) = t.out.clock.as_mut() {
                    c.report = Some(report);
                }
                let session = t.shared.meta.participant.session.clone();
                let changed = self
                    .offsets
                    .report(&session, report.ntp_unix_ms, received_unix_ms);
                if changed || first_report {
                    self.update_starts();
                }
            }
            Event::Speaking(i, speaking, at) => {
                let Some(t) = self.track(i as usize) else {
                    return;
                };
                let ms = t.out.file_ms(at);
                let out = &mut t.out;
                match (speaking, out.speech_open) {
                    (true, None) => out.speech_open = Some(ms),
                    (false, Some(from)) => {
                        out.speech_open = None;
                        if let Some(entry) = out.entry.as_mut() {
                            entry.speech.push([from, ms.max(from)]);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The writer's track `i`, picking up tracks added since.
    fn track(&mut self, i: usize) -> Option<&mut TrackWriter> {
        if i >= self.tracks.len() {
            self.pick_up_tracks();
        }
        self.tracks.get_mut(i)
    }

    fn pick_up_tracks(&mut self) {
        let new: Vec<Arc<TrackShared>> = {
            let tracks = self.shared.tracks.lock().unwrap_or_else(|e| e.into_inner());
            tracks.iter().skip(self.tracks.len()).cloned().collect()
        };
        for shared in new {
            let depack = Depacketizer::new(shared.meta.codec);
            if !shared.meta.source.is_audio() {
                shared.wants_keyframe.store(true, Ordering::Relaxed);
            }
            self.tracks.push(TrackWriter {
                reorder: Reorder::default(),
                out: TrackOut {
                    shared: shared.clone(),
                    new_entry: false,
                    depack,
                    codec: shared.meta.codec,
                    clock_rate: shared.meta.clock_rate,
                    path: self.directory.join(&shared.file),
                    file: None,
                    closed: false,
                    last_ts: None,
                    first_ts: 0,
                    last_ns: 0,
                    first_arrival: None,
                    clock: None,
                    report: None,
                    lost: 0,
                    speech_open: None,
                    entry: None,
                    failure: None,
                },
                shared,
            });
        }
    }

    /// Tracks whose file started enter the manifest (in that order), which is rewritten.
    fn new_entries(&mut self) {
        let mut any = false;
        for (i, t) in self.tracks.iter_mut().enumerate() {
            if std::mem::take(&mut t.out.new_entry) {
                self.order.push(i);
                any = true;
            }
        }
        if any {
            self.update_starts();
            if let Err(e) = self.write_manifest() {
                self.tracks_failure(Failure::io("writing the manifest", &e));
            }
        }
    }

    /// Recomputes every track's start (a session's offset or a track's first report changed).
    fn update_starts(&mut self) {
        for t in &mut self.tracks {
            let (Some(clock), Some(entry)) = (t.out.clock, t.out.entry.as_mut()) else {
                continue;
            };
            let (start, source) =
                clock.start_ms(self.offsets.get(&t.shared.meta.participant.session));
            entry.start_ms = start;
            entry.clock = source;
        }
    }

    fn end_track(&mut self, i: usize) {
        let Some(t) = self.tracks.get_mut(i) else {
            return;
        };
        if t.out.closed {
            return;
        }
        Self::close_track(t, &self.base);
        Self::finalize_track(t);
        self.new_entries();
        if let Err(e) = self.write_manifest() {
            self.tracks_failure(Failure::io("writing the manifest", &e));
        }
    }

    /// Hands on what the reorder buffer still holds.
    fn close_track(t: &mut TrackWriter, base: &TimeBase) {
        let out = &mut t.out;
        t.reorder.flush(&mut |o| out.ordered(o, base));
    }

    /// Finalizes the track's file; the manifest entry says it is complete.
    fn finalize_track(t: &mut TrackWriter) {
        t.out.closed = true;
        let Some(file) = t.out.file.take() else {
            return;
        };
        let result = file.finish();
        let out = &mut t.out;
        if let Some(entry) = out.entry.as_mut() {
            if let Some(from) = out.speech_open.take() {
                entry.speech.push([from, entry.duration_ms.max(from)]);
            }
            match result {
                Ok(bytes) => {
                    entry.bytes = bytes;
                    entry.complete = true;
                }
                Err(e) => {
                    if let Ok(m) = std::fs::metadata(&out.path) {
                        entry.bytes = m.len();
                    }
                    if out.failure.is_none() {
                        out.failure = Some(e);
                    }
                }
            }
        }
    }

    fn flush_files(&mut self) {
        for t in &mut self.tracks {
            let Some(file) = t.out.file.as_mut() else {
                continue;
            };
            match file.sync() {
                Ok(bytes) => {
                    if let Some(entry) = t.out.entry.as_mut() {
                        entry.bytes = bytes;
                    }
                }
                Err(e) => {
                    if t.out.failure.is_none() {
                        t.out.failure = Some(Failure::io("flushing a track file", &e));
                    }
                }
            }
        }
    }

    fn tracks_failure(&mut self, failure: Failure) {
        if let Some(t) = self.tracks.first_mut() {
            t.out.failure.get_or_insert(failure);
        } else {
            let (reason, message) = match failure {
                Failure::DiskFull(m) => (StopReason::DiskFull, m),
                Failure::Error(m) => (StopReason::Error, m),
            };
            self.error = Some(message);
            self.shared
                .stopped_itself
                .store(stop_code(reason), Ordering::Relaxed);
        }
    }

    /// The stop reason of the first write failure, if any (the error is kept for the manifest).
    fn take_failure(&mut self) -> Option<StopReason> {
        if let Some(reason) =
            super::stop_from_code(self.shared.stopped_itself.load(Ordering::Relaxed))
        {
            return Some(reason);
        }
        for t in &mut self.tracks {
            match t.out.failure.take() {
                Some(Failure::DiskFull(m)) => {
                    self.error = Some(m);
                    return Some(StopReason::DiskFull);
                }
                Some(Failure::Error(m)) => {
                    self.error = Some(m);
                    return Some(StopReason::Error);
                }
                None => {}
            }
        }
        None
    }

    /// The manifest as it stands.
    fn current_manifest(&mut self) -> &Manifest {
        let m = &mut self.manifest;
        m.degraded = self.shared.degraded.load(Ordering::Relaxed);
        m.error = self.error.clone();
        m.tracks.clear();
        for &i in &self.order {
            let t = &self.tracks[i];
            if let Some(entry) = &t.out.entry {
                let mut entry = entry.clone();
                // A packet dropped at the full queue also leaves a gap the reorder buffer gives
                // up: the larger count, not the sum (trailing drops leave no gap).
                entry.dropped_packets = t
                    .out
                    .lost
                    .max(t.shared.queue_dropped.load(Ordering::Relaxed));
                m.tracks.push(entry);
            }
        }
        m
    }

    fn write_manifest(&mut self) -> std::io::Result<()> {
        let directory = self.directory.clone();
        self.current_manifest()
            .write(&directory)
            .map_err(|e| match e {
                manifest::ManifestError::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            })
    }

    /// Writes what is left, finalizes every file, writes the final manifest, calls
    /// `on_finished`.
    fn finish(mut self, reason: StopReason) {
        let self_stopped = matches!(
            reason,
            StopReason::MaxDuration | StopReason::DiskFull | StopReason::Error
        ) && self.shared.stopped_itself.load(Ordering::Relaxed) == 0;
        if self_stopped {
            self.shared
                .stopped_itself
                .store(stop_code(reason), Ordering::Relaxed);
        }
        let was_stopped_itself =
            super::stop_from_code(self.shared.stopped_itself.load(Ordering::Relaxed));
        for i in 0..self.tracks.len() {
            let t = &mut self.tracks[i];
            if t.out.closed {
                continue;
            }
            Self::close_track(t, &self.base);
            Self::finalize_track(t);
        }
        self.new_entries();
        // Failures while finishing are kept for the manifest's `error`; the stop reason stays
        // the one that stopped it.
        let _ = self.take_failure();
        let reason = was_stopped_itself.unwrap_or(reason);
        match reason {
            StopReason::DiskFull | StopReason::Error => tracing::warn!(
                recording = %self.meta.id,
                tenant = %self.meta.tenant,
                room = %self.meta.room,
                reason = ?reason,
                error = self.error.as_deref().unwrap_or(""),
                "recording stopped: it cannot be written"
            ),
            _ => tracing::info!(
                recording = %self.meta.id,
                tenant = %self.meta.tenant,
                room = %self.meta.room,
                reason = ?reason,
                "recording stopped"
            ),
        }
        self.manifest.state = State::Stopped;
        self.manifest.stop_reason = Some(reason);
        self.manifest.stopped_at_ms = Some(unix_ms_now() as i64);
        if let Err(e) = self.write_manifest() {
            tracing::error!(recording = %self.meta.id, error = %e, "cannot write the recording's final manifest");
        }
        drop(self.live.take());
        if let Some(on_finished) = self.on_finished.take() {
            on_finished(Finished {
                tenant: self.meta.tenant.clone(),
                manifest: self.manifest.clone(),
                directory: self.directory.clone(),
            });
        }
    }
}

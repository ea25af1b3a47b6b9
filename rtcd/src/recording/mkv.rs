//! A minimal Matroska muxer for one H.264 video track, written as the media comes.
//!
//! # Why hand-written
//!
//! The WebM files go through libwebm (the `webm` crate), whose wrapper only takes WebM's codec
//! IDs (VP8, VP9, AV1, Opus, Vorbis): it cannot name `V_MPEG4/ISO/AVC`. The Rust crates that
//! do write H.264 were checked (2026-12): `mp4` writes its `moov` at the end (a killed file is
//! unplayable); `mse_fmp4` builds in-memory segments for Media Source Extensions and is no
//! longer maintained; `mp4e`, `muxide`, `oxideav-mkv` and `media-format-matroska` are young
//! 0.x / single-maintainer crates (one with its latest release yanked), not the well-kept
//! dependency a recorder's crash safety should rest on. What one H.264 track needs from
//! Matroska is small (EBML IDs, variable-length sizes, big-endian integers, a float), so it is
//! written here: about 200 lines, checked end to end against ffmpeg (`tests.rs`).
//!
//! # Layout (crash-safe by construction)
//!
//! ```text
//! EBML header (DocType "matroska")
//! Segment (unknown size)
//!   Info: TimestampScale 1 ms, MuxingApp / WritingApp "rtcd", a Void reserved for Duration
//!   Tracks: one TrackEntry (1, video, V_MPEG4/ISO/AVC, CodecPrivate avcC, pixel size)
//!   Cluster (unknown size): Timestamp, SimpleBlock, SimpleBlock, ...
//!   Cluster (unknown size): ...   a new one at each keyframe, or after CLUSTER_MS
//! ```
//!
//! Nothing written is ever rewritten while recording: the Segment and every Cluster have the
//! "unknown" size, which Matroska allows for live writing and ffmpeg reads (an unknown-sized
//! Cluster ends where the next top-level element starts). So whatever reached the disk is a
//! valid file up to its last whole block: a `kill -9` leaves it playable up to the writer's
//! last sync (every second). A clean stop only overwrites the reserved Void with the Duration
//! (players show the length); there are no Cues (ffmpeg seeks by reading the clusters).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

/// EBML and Matroska element IDs (RFC 8794, RFC 9559), as written (marker bits included).
mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const DURATION: u32 = 0x4489;
    pub const VOID: u32 = 0xEC;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const FLAG_LACING: u32 = 0x9C;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMESTAMP: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
}

/// A new cluster starts after this long even without a keyframe (a SimpleBlock's timestamp is
/// a signed 16-bit offset from its cluster's: at most 32.767 s).
const CLUSTER_MS: u64 = 1000;

/// The size field of an element whose end is not known when it starts ("unknown" size: all
/// value bits set, 8 bytes).
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// The Void element reserved in Info for the Duration: ID (2 bytes), size (1), float (8).
const DURATION_ELEMENT: usize = 11;

fn put_id(buf: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = (id.leading_zeros() / 8) as usize;
    buf.extend_from_slice(&bytes[skip.min(3)..]);
}

/// An element's size as an EBML variable-length integer, in the fewest bytes (the all-ones
/// value of each length is reserved for "unknown").
fn put_size(buf: &mut Vec<u8>, size: u64) {
    let mut len = 1;
    while len < 8 && size >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = size | (1u64 << (7 * len));
    buf.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

fn put_element(buf: &mut Vec<u8>, id: u32, data: &[u8]) {
    put_id(buf, id);
    put_size(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// An unsigned integer element, big-endian in the fewest bytes (at least one).
fn put_uint(buf: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = ((value.leading_zeros() / 8) as usize).min(7);
    put_element(buf, id, &bytes[skip..]);
}

/// A master element whose children `f` writes.
fn put_master(buf: &mut Vec<u8>, id: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut children = Vec::new();
    f(&mut children);
    put_element(buf, id, &children);
}

/// One H.264 track's Matroska file, written through a buffer; [`MkvFile::sync`] makes what is
/// written durable.
pub(crate) struct MkvFile {
    file: BufWriter<File>,
    /// Where the Void reserved for the Duration starts.
    duration_at: u64,
    /// The current cluster's timestamp (ms); `None` before the first block.
    cluster_ms: Option<u64>,
    /// The last two blocks' timestamps (ms): the last frame's length is estimated from them.
    last_ms: Option<u64>,
    previous_ms: Option<u64>,
    /// Reused for each block's header.
    scratch: Vec<u8>,
}

impl MkvFile {
    /// Writes the headers to `file` (opened for writing, empty): the track's `avcC`
    /// (`codec_private`) and its picture size.
    ///
    /// # Errors
    ///
    /// The file's write errors.
    pub(crate) fn create(
        file: File,
        buffer: usize,
        codec_private: &[u8],
        (width, height): (u16, u16),
    ) -> std::io::Result<Self> {
        let mut head = Vec::with_capacity(256 + codec_private.len());
        put_master(&mut head, id::EBML, |b| {
            put_uint(b, id::EBML_VERSION, 1);
            put_uint(b, id::EBML_READ_VERSION, 1);
            put_uint(b, id::EBML_MAX_ID_LENGTH, 4);
            put_uint(b, id::EBML_MAX_SIZE_LENGTH, 8);
            put_element(b, id::DOC_TYPE, b"matroska");
            put_uint(b, id::DOC_TYPE_VERSION, 4);
            put_uint(b, id::DOC_TYPE_READ_VERSION, 2);
        });
        put_id(&mut head, id::SEGMENT);
        head.extend_from_slice(&UNKNOWN_SIZE);
        let mut info = Vec::with_capacity(64);
        put_uint(&mut info, id::TIMESTAMP_SCALE, 1_000_000);
        put_element(&mut info, id::MUXING_APP, b"rtcd");
        put_element(&mut info, id::WRITING_APP, b"rtcd");
        let void_at = info.len();
        // A Void as long as the Duration element: ID, size, and 9 bytes of nothing.
        put_element(&mut info, id::VOID, &[0; DURATION_ELEMENT - 2]);
        put_id(&mut head, id::INFO);
        put_size(&mut head, info.len() as u64);
        let duration_at = head.len() + void_at;
        head.extend_from_slice(&info);
        put_master(&mut head, id::TRACKS, |b| {
            put_master(b, id::TRACK_ENTRY, |b| {
                put_uint(b, id::TRACK_NUMBER, 1);
                put_uint(b, id::TRACK_UID, rand::random::<u64>().max(1));
                put_uint(b, id::TRACK_TYPE, 1);
                put_uint(b, id::FLAG_LACING, 0);
                put_element(b, id::CODEC_ID, b"V_MPEG4/ISO/AVC");
                put_element(b, id::CODEC_PRIVATE, codec_private);
                put_master(b, id::VIDEO, |b| {
                    put_uint(b, id::PIXEL_WIDTH, u64::from(width));
                    put_uint(b, id::PIXEL_HEIGHT, u64::from(height));
                });
            });
        });
        let mut file = BufWriter::with_capacity(buffer, file);
        file.write_all(&head)?;
        Ok(Self {
            file,
            duration_at: duration_at as u64,
            cluster_ms: None,
            last_ms: None,
            previous_ms: None,
            scratch: Vec::with_capacity(32),
        })
    }

    /// Appends one frame (an access unit in AVCC form) at `ms`, which must not go back.
    ///
    /// # Errors
    ///
    /// The file's write errors.
    pub(crate) fn add(&mut self, data: &[u8], ms: u64, keyframe: bool) -> std::io::Result<()> {
        let b = &mut self.scratch;
        b.clear();
        let cluster = match self.cluster_ms {
            Some(c) if !keyframe && ms >= c && ms - c < CLUSTER_MS => c,
            _ => {
                put_id(b, id::CLUSTER);
                b.extend_from_slice(&UNKNOWN_SIZE);
                put_uint(b, id::TIMESTAMP, ms);
                self.cluster_ms = Some(ms);
                ms
            }
        };
        // SimpleBlock: track number (a 1-byte vint), timestamp relative to the cluster (i16,
        // below CLUSTER_MS), flags (keyframe), then the frame.
        put_id(b, id::SIMPLE_BLOCK);
        put_size(b, 4 + data.len() as u64);
        b.push(0x81);
        b.extend_from_slice(&((ms - cluster) as i16).to_be_bytes());
        b.push(if keyframe { 0x80 } else { 0x00 });
        self.file.write_all(b)?;
        self.file.write_all(data)?;
        self.previous_ms = self.last_ms;
        self.last_ms = Some(ms);
        Ok(())
    }

    /// Writes the buffer out and syncs the data to disk; the file's size.
    ///
    /// # Errors
    ///
    /// The file's write and sync errors.
    pub(crate) fn sync(&mut self) -> std::io::Result<u64> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        Ok(self.file.get_ref().metadata()?.len())
    }

    /// Completes the file: the Duration (the last frame's timestamp plus its estimated
    /// length) replaces the reserved Void; then syncs it. Its size.
    ///
    /// # Errors
    ///
    /// The file's write, seek and sync errors.
    pub(crate) fn finish(mut self) -> std::io::Result<u64> {
        if let Some(last) = self.last_ms {
            let frame = self.previous_ms.map_or(0, |p| last - p);
            let mut d = Vec::with_capacity(DURATION_ELEMENT);
            put_element(&mut d, id::DURATION, &((last + frame) as f64).to_be_bytes());
            debug_assert_eq!(d.len(), DURATION_ELEMENT);
            let end = self.file.stream_position()?;
            self.file.seek(SeekFrom::Start(self.duration_at))?;
            self.file.write_all(&d)?;
            self.file.seek(SeekFrom::Start(end))?;
        }
        self.sync()
    }
}

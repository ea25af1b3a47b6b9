//! `manifest.json`: what a recording holds and how its tracks line up in time.
//!
//! rtcd writes it when the recording starts, whenever a track is added or ends, and when the
//! recording stops, always whole (a temporary file renamed over the old one), so a reader
//! never sees half of it, even after a `kill -9`. Unknown fields are ignored when reading: a
//! newer rtcd may add some (`version` changes only when a field changes meaning).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The manifest's file name inside a recording's directory.
pub const FILE_NAME: &str = "manifest.json";

/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;

/// A recording (one segment of it: see [`Manifest::segment`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`VERSION`].
    pub version: u32,
    /// `rec_` and 26 lowercase base32 characters.
    pub recording_id: String,
    /// The room (call ID) as the platform named it.
    pub room: String,
    /// 1, or more when the room moved to another host while it recorded: each host writes its
    /// own segment of the same recording.
    pub segment: u32,
    /// The host that wrote this segment (rtcd's cluster name, or its hostname).
    pub host: String,
    /// Who started it (a moderator's user ID, "policy", or empty for the platform).
    pub started_by: String,
    /// When it started (Unix milliseconds, rtcd's clock).
    pub started_at_ms: i64,
    /// When it stopped (`None` while recording, or when rtcd was killed).
    pub stopped_at_ms: Option<i64>,
    /// Whether it is still written.
    pub state: State,
    /// Why it stopped (`None` while recording).
    pub stop_reason: Option<StopReason>,
    /// True when media was left out because the disk could not keep up (see
    /// [`Track::dropped_packets`]).
    pub degraded: bool,
    /// What went wrong, for people (a write error), if anything.
    pub error: Option<String>,
    /// One per published track, in the order they started.
    pub tracks: Vec<Track>,
}

/// Whether a recording is still written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Being written (or rtcd was killed while it was: see [`StopReason::Interrupted`]).
    Recording,
    /// Every file is complete.
    Stopped,
}

/// Why a recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The platform or a moderator stopped it.
    Requested,
    /// Everybody left, or the room was ended.
    RoomFinished,
    /// It reached the host's maximum duration.
    MaxDuration,
    /// Free space fell below the host's floor, or a write failed for lack of space.
    DiskFull,
    /// Another write error ([`Manifest::error`]).
    Error,
    /// rtcd stopped while it recorded.
    Shutdown,
    /// rtcd was killed while it recorded; found at its next start. The files play up to their
    /// last few seconds.
    Interrupted,
}

/// What a track is, as the room names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A microphone.
    Microphone,
    /// A camera.
    Camera,
    /// A screen share's picture.
    Screen,
    /// A screen share's sound.
    ScreenAudio,
}

impl Source {
    /// Whether it is sound.
    pub fn is_audio(self) -> bool {
        matches!(self, Source::Microphone | Source::ScreenAudio)
    }

    /// Its name in file names and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Microphone => "microphone",
            Source::Camera => "camera",
            Source::Screen => "screen",
            Source::ScreenAudio => "screen_audio",
        }
    }
}

/// A codec, as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Opus, in WebM.
    Opus,
    /// VP8, in WebM.
    Vp8,
    /// VP9, in WebM.
    Vp9,
    /// AV1, in WebM.
    Av1,
    /// H.264, in Matroska (`.mkv`; written by rtcd's own muxer: libwebm takes only WebM's
    /// codecs, see docs/recording.md).
    H264,
}

impl Codec {
    /// Its name in JSON (and the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::Vp8 => "vp8",
            Codec::Vp9 => "vp9",
            Codec::Av1 => "av1",
            Codec::H264 => "h264",
        }
    }
}

/// Who published a track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The session (one peer connection).
    pub session: String,
    /// Its user.
    pub user: String,
    /// Its display name.
    pub display_name: String,
}

/// One published track: one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// The file's name in the recording's directory.
    pub file: String,
    /// Who published it.
    pub participant: Participant,
    /// Its msid track ID.
    pub track_id: String,
    /// What it is.
    pub source: Source,
    /// Its codec.
    pub codec: Codec,
    /// The file's time 0 on the recording's common clock, in Unix milliseconds: the capture
    /// time of the file's first frame, from the publisher's RTCP sender reports (mapped onto
    /// rtcd's clock, see [`Track::clock`]). Put tracks in sync by delaying each by
    /// `start_ms - min(start_ms)`.
    pub start_ms: f64,
    /// How [`Track::start_ms`] was found.
    pub clock: ClockSource,
    /// Media time covered (the last frame's timestamp), in milliseconds; gaps (mutes, losses)
    /// are inside it, as time without frames.
    pub duration_ms: u64,
    /// The file's size in bytes.
    pub bytes: u64,
    /// Frames written.
    pub frames: u64,
    /// Video only: keyframes written (the file starts at one, and resumes at one after a loss).
    pub keyframes: u64,
    /// Packets the recording never got (lost on the way and not repaired, dropped when the
    /// disk could not keep up, or not forwarded while the track was muted); their frames were
    /// left out.
    pub dropped_packets: u64,
    /// Video: the picture size of the latest keyframe, if the codec's header says it.
    pub width: Option<u16>,
    /// Video: see `width`.
    pub height: Option<u16>,
    /// Audio only: when the participant spoke (rtcd's voice activity), as `[from, to]` in
    /// milliseconds of the file's time. What `rtcd-compose` uses to enlarge the speaker.
    pub speech: Vec<[u64; 2]>,
    /// Whether the file is complete (`false` while written, and for a track of a recording
    /// rtcd was killed in).
    pub complete: bool,
}

/// How a track's [`Track::start_ms`] was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSource {
    /// From the publisher's RTCP sender reports: the publisher's own tracks are in lip sync.
    SenderReport,
    /// From when rtcd received the first frame (the publisher sent no sender report yet).
    Arrival,
}

/// Reading or writing a manifest failed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a manifest this crate reads.
    #[error("{path}: not a recording manifest: {reason}")]
    Invalid {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(FILE_NAME);
        let shown = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Io {
            path: shown.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| ManifestError::Invalid {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if manifest.version != VERSION {
            return Err(ManifestError::Invalid {
                path: shown,
                reason: format!("version {} (this reader knows {VERSION})", manifest.version),
            });
        }
        Ok(manifest)
    }

    /// Writes `dir/manifest.json` whole: a temporary file, flushed to disk, renamed over the
    /// old one.
    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        use std::io::Write as _;
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(".manifest.json.tmp");
        let io = |source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| ManifestError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&json).map_err(io)?;
        file.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// The earliest track start (the common clock's origin), if any track started.
    pub fn origin_ms(&self) -> Option<f64> {
        self.tracks.iter().map(|t| t.start_ms).reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_json_names() {
        for c in [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::H264] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        for s in [
            Source::Microphone,
            Source::Camera,
            Source::Screen,
            Source::ScreenAudio,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}

//! `rtcd-compose`: one file a person can play, made from a recording's per-track files.
//!
//! rtcd records without transcoding (one WebM/Matroska file per track, see
//! [`crate::manifest`]); this module turns such a directory into one MP4 (H.264 + AAC) by
//! driving `ffmpeg` through its command line. It runs wherever the directory is, so the heavy
//! encoding never has to run on the media host.
//!
//! Two halves:
//!
//! - [`plan`] is pure: from a [`Manifest`] and [`Options`] it builds the inputs with their
//!   offsets, the layout over time ([`Segment`]s), the `filter_complex` graph and the output
//!   arguments. Unit tests check it in milliseconds.
//! - [`run`] reads the directory, checks the files, measures incomplete tracks, and runs
//!   ffmpeg on the plan (`-nostdin -y -v error`, stderr captured for the error).
//!
//! # Layout (`docs/recording.md` describes the same rules)
//!
//! The time from the earliest track start to the latest track end is cut into [`Segment`]s at
//! every video track's start and end and every (kept) speech interval's start and end; each
//! segment has one [`Layout`]:
//!
//! - [`Layout::Screen`] while a screen track exists: the screen(s) on the left
//!   ([`MAIN_AREA_PERCENT`] of the width), the cameras in a column beside it (more columns when
//!   there are more than [`MAX_SIDE_ROWS`]). Screens alone take the whole picture.
//! - [`Layout::Speaker`] otherwise, when someone with a visible camera spoke and there are at
//!   least two tiles: the speaker's camera in the main area, the others in the column. The
//!   speaker keeps the stage until someone else speaks (silence changes nothing); speech
//!   intervals closer than [`SPEECH_JOIN_MS`] are joined, and those shorter than
//!   [`MIN_SPEECH_MS`] ignored, so a cough does not move the picture.
//! - [`Layout::Grid`] otherwise: `ceil(sqrt(n))` columns, partial rows centred.
//! - [`Layout::Empty`] when no video track exists at that time: black.
//!
//! Each tile keeps its picture's aspect ratio (black bars). Participants with sound but no
//! camera get no tile: they are heard (a name card would need a font on the composing
//! machine, which Debian's ffmpeg cannot assume).
//!
//! # Sync and gaps
//!
//! Every input gets `-itsoffset (start_ms - min(start_ms))`, the manifest's sync rule. Video
//! is drawn on a black canvas at a constant frame rate with `overlay`, enabled only within the
//! track's span; a gap inside a track (a mute, a loss) holds the last picture, before and after
//! the track its tile is black. Audio goes through `aresample=async=1:first_pts=0`, which
//! fills the time before the track and its gaps with silence, then `amix` (`normalize=0`: a
//! voice is as loud alone as with others) and `apad` to the whole duration.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::manifest::{self, Manifest, Source};

/// The output's file name in the recording's directory when `--output` is not given.
pub const DEFAULT_OUTPUT: &str = "composite.mp4";

/// The main area's share of the width in the screen and speaker layouts, in percent.
pub const MAIN_AREA_PERCENT: u32 = 75;

/// Tiles per column beside the main area before another column is started.
pub const MAX_SIDE_ROWS: usize = 4;

/// Speech intervals of one participant closer than this are one (VAD flickers between words).
pub const SPEECH_JOIN_MS: u64 = 1_000;

/// Speech shorter than this (after joining) does not take the stage.
pub const MIN_SPEECH_MS: u64 = 1_000;

/// The audio sample rate of the output (Opus decodes at 48 kHz anyway).
const SAMPLE_RATE: u32 = 48_000;

/// How to compose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The output file; `None` is [`DEFAULT_OUTPUT`] in the recording's directory.
    pub output: Option<PathBuf>,
    /// The picture's width in pixels (even).
    pub width: u32,
    /// The picture's height in pixels (even).
    pub height: u32,
    /// Frames per second of the output (constant).
    pub fps: u32,
    /// The ffmpeg program (a path, or a name looked up in `PATH`).
    pub ffmpeg: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            output: None,
            width: 1280,
            height: 720,
            fps: 25,
            ffmpeg: PathBuf::from("ffmpeg"),
        }
    }
}

/// Composing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// `manifest.json` could not be read, is not a manifest, or is of another version.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A manifest of another format version (when the [`Manifest`] did not come from
    /// [`Manifest::read`], which refuses it too).
    #[error(
        "manifest version {found}: rtcd-compose reads version {}",
        manifest::VERSION
    )]
    UnsupportedVersion {
        /// The manifest's version.
        found: u32,
    },
    /// The manifest names no track: there is nothing to compose.
    #[error("the recording has no tracks")]
    NoTracks,
    /// Every track is empty (`duration_ms` 0): there is nothing to compose.
    #[error("the recording's tracks hold no media (every duration_ms is 0)")]
    NoMedia,
    /// A track's file name is not a plain name inside the recording's directory (it has a path
    /// separator or `..`, or is empty): refused so a manifest cannot make ffmpeg read
    /// elsewhere.
    #[error(
        "track {index}: file name {name:?} is not a plain file name in the recording's directory"
    )]
    UnsafeFileName {
        /// The track's index in the manifest.
        index: usize,
        /// The refused name.
        name: String,
    },
    /// A track's `start_ms` is not a finite number.
    #[error("track {index} ({file}): start_ms is not a finite number")]
    InvalidStart {
        /// The track's index in the manifest.
        index: usize,
        /// Its file.
        file: String,
    },
    /// A file the manifest names is not in the directory.
    #[error("{}: missing (named by manifest.json)", path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOptions(String),
    /// ffmpeg could not be started.
    #[error("could not run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file of our own (the filter graph script) could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// ffmpeg ran and failed.
    #[error("ffmpeg failed ({status}): {stderr}")]
    Ffmpeg {
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// A rectangle of the output picture, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// Which rule laid a segment out (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// No video track at that time: black.
    Empty,
    /// All video tiles in a grid.
    Grid,
    /// Screen(s) large, cameras beside.
    Screen,
    /// The active speaker large, the other cameras beside.
    Speaker,
}

/// One video track's place during a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// The track's index in the manifest.
    pub track: usize,
    /// Where it is drawn (the picture is fitted inside, keeping its aspect ratio).
    pub rect: Rect,
}

/// A stretch of time with one layout, in milliseconds from the earliest track start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Start (inclusive).
    pub from_ms: u64,
    /// End (exclusive).
    pub to_ms: u64,
    /// The rule used.
    pub layout: Layout,
    /// The video tiles, in manifest order.
    pub tiles: Vec<Tile>,
}

/// One ffmpeg input: one track's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The track's index in the manifest.
    pub track: usize,
    /// Its file name in the recording's directory (checked: a plain name).
    pub file: String,
    /// Its delay from the earliest track start (`start_ms - min(start_ms)`), in milliseconds.
    pub offset_ms: u64,
    /// Whether it is drawn (video) rather than heard (audio).
    pub video: bool,
}

/// What ffmpeg will be asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The inputs, in ffmpeg's input order (`-i` index = position here).
    pub inputs: Vec<Input>,
    /// The layout over time, covering `0..duration_ms` without gaps.
    pub segments: Vec<Segment>,
    /// The `-filter_complex` graph: outputs `[vout]` and `[aout]`.
    pub filter_complex: String,
    /// Everything after the graph except the output file: maps, codecs, `-t`.
    pub output_args: Vec<String>,
    /// From the earliest track start to the latest track end, in milliseconds.
    pub duration_ms: u64,
}

/// How [`Plan::args`] passes the graph to ffmpeg.
#[derive(Debug, Clone, Copy)]
pub enum Graph<'a> {
    /// `-filter_complex GRAPH` (to show a command a person can run).
    Inline,
    /// `-filter_complex_script FILE`: a long meeting's graph can exceed the kernel's limit on
    /// one argument (128 KiB), so [`run`] always writes it to a file.
    Script(&'a Path),
}

impl Plan {
    /// ffmpeg's arguments (without the program), reading inputs from `dir` and writing
    /// `output`.
    pub fn args(&self, dir: &Path, output: &Path, graph: Graph<'_>) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["-nostdin", "-y", "-v", "error"]
            .iter()
            .map(OsString::from)
            .collect();
        for input in &self.inputs {
            args.push("-itsoffset".into());
            args.push(seconds(input.offset_ms).into());
            args.push("-i".into());
            args.push(dir.join(&input.file).into_os_string());
        }
        match graph {
            Graph::Inline => {
                args.push("-filter_complex".into());
                args.push(self.filter_complex.clone().into());
            }
            Graph::Script(path) => {
                args.push("-filter_complex_script".into());
                args.push(path.as_os_str().to_owned());
            }
        }
        args.extend(self.output_args.iter().map(OsString::from));
        args.push(output.as_os_str().to_owned());
        args
    }
}

/// Milliseconds as ffmpeg's seconds (`12.345`).
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Refuses a file name that is not a plain name in the recording's directory.
fn check_file_name(index: usize, name: &str) -> Result<(), ComposeError> {
    let plain = !name.is_empty()
        && name != "."
        && !name.contains("..")
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0');
    if plain {
        Ok(())
    } else {
        Err(ComposeError::UnsafeFileName {
            index,
            name: name.to_owned(),
        })
    }
}

/// Builds the plan: pure, no file is touched.
///
/// Incomplete tracks (`complete: false`, e.g. rtcd was killed while recording) are used like
/// the others: their files play up to their last whole frame, and losing the end of one track
/// is better than losing the whole meeting. [`run`] first measures their real length, because
/// their `duration_ms` may be older than the file.
///
/// # Errors
///
/// [`ComposeError::UnsupportedVersion`], [`ComposeError::NoTracks`], [`ComposeError::NoMedia`],
/// [`ComposeError::UnsafeFileName`], [`ComposeError::InvalidStart`],
/// [`ComposeError::InvalidOptions`].
pub fn plan(manifest: &Manifest, options: &Options) -> Result<Plan, ComposeError> {
    check_options(options)?;
    if manifest.version != manifest::VERSION {
        return Err(ComposeError::UnsupportedVersion {
            found: manifest.version,
        });
    }
    if manifest.tracks.is_empty() {
        return Err(ComposeError::NoTracks);
    }
    for (index, track) in manifest.tracks.iter().enumerate() {
        check_file_name(index, &track.file)?;
        if !track.start_ms.is_finite() {
            return Err(ComposeError::InvalidStart {
                index,
                file: track.file.clone(),
            });
        }
    }
    // Checked above: there is a track, and every start is finite.
    let origin = manifest.origin_ms().unwrap_or(0.0);
    let spans: Vec<Span> = manifest
        .tracks
        .iter()
        .map(|t| {
            // Non-negative (origin is the minimum) and finite (checked above).
            let from = (t.start_ms - origin).round() as u64;
            Span {
                from,
                to: from.saturating_add(t.duration_ms),
            }
        })
        .collect();
    let duration_ms = spans.iter().map(|s| s.to).max().unwrap_or(0);
    if duration_ms == 0 {
        return Err(ComposeError::NoMedia);
    }

    let segments = lay_out(manifest, &spans, duration_ms, options);

    // Inputs: the video tracks that are drawn at some time, then every audio track.
    let mut inputs = Vec::new();
    for (index, track) in manifest.tracks.iter().enumerate() {
        let drawn = segments
            .iter()
            .any(|s| s.tiles.iter().any(|t| t.track == index));
        if (track.source.is_audio() || drawn) && spans[index].to > spans[index].from {
            inputs.push(Input {
                track: index,
                file: track.file.clone(),
                offset_ms: spans[index].from,
                video: !track.source.is_audio(),
            });
        }
    }

    let filter_complex = graph(&inputs, &spans, &segments, duration_ms, options);
    let output_args = [
        "-map",
        "[vout]",
        "-map",
        "[aout]",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "23",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-movflags",
        "+faststart",
        "-t",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([seconds(duration_ms)])
    .collect();
    Ok(Plan {
        inputs,
        segments,
        filter_complex,
        output_args,
        duration_ms,
    })
}

fn check_options(options: &Options) -> Result<(), ComposeError> {
    let size_ok = |v: u32| (16..=7680).contains(&v) && v.is_multiple_of(2);
    if !size_ok(options.width) || !size_ok(options.height) {
        return Err(ComposeError::InvalidOptions(format!(
            "--width {} --height {}: each must be even, 16 to 7680",
            options.width, options.height
        )));
    }
    if !(1..=120).contains(&options.fps) {
        return Err(ComposeError::InvalidOptions(format!(
            "--fps {}: must be 1 to 120",
            options.fps
        )));
    }
    Ok(())
}

/// A track's time on the common clock, in milliseconds from the earliest start: `from..to`.
#[derive(Debug, Clone, Copy)]
struct Span {
    from: u64,
    to: u64,
}

impl Span {
    fn covers(self, t: u64) -> bool {
        self.from <= t && t < self.to
    }
}

/// One participant's kept speech on the common clock.
struct Speech {
    session: String,
    span: Span,
}

/// Speech intervals of microphones, on the common clock, joined and filtered (module docs).
fn speech(manifest: &Manifest, spans: &[Span]) -> Vec<Speech> {
    let mut per_session: Vec<(String, Vec<Span>)> = Vec::new();
    for (index, track) in manifest.tracks.iter().enumerate() {
        if track.source != Source::Microphone {
            continue;
        }
        let span = spans[index];
        let session = &track.participant.session;
        let list = match per_session.iter().position(|(s, _)| s == session) {
            Some(i) => &mut per_session[i].1,
            None => {
                per_session.push((session.clone(), Vec::new()));
                // Just pushed.
                &mut per_session.last_mut().expect("just pushed").1
            }
        };
        for [from, to] in &track.speech {
            let from = span.from.saturating_add(*from).min(span.to);
            let to = span.from.saturating_add(*to).min(span.to);
            if to > from {
                list.push(Span { from, to });
            }
        }
    }
    let mut kept = Vec::new();
    for (session, mut list) in per_session {
        list.sort_by_key(|s| s.from);
        let mut joined: Vec<Span> = Vec::new();
        for s in list {
            match joined.last_mut() {
                Some(last) if s.from <= last.to.saturating_add(SPEECH_JOIN_MS) => {
                    last.to = last.to.max(s.to);
                }
                _ => joined.push(s),
            }
        }
        kept.extend(
            joined
                .into_iter()
                .filter(|s| s.to - s.from >= MIN_SPEECH_MS)
                .map(|span| Speech {
                    session: session.clone(),
                    span,
                }),
        );
    }
    kept
}

/// Cuts `0..duration_ms` into segments and lays each out.
fn lay_out(
    manifest: &Manifest,
    spans: &[Span],
    duration_ms: u64,
    options: &Options,
) -> Vec<Segment> {
    let speech = speech(manifest, spans);
    let video: Vec<usize> = (0..manifest.tracks.len())
        .filter(|&i| !manifest.tracks[i].source.is_audio())
        .collect();
    let mut cuts: Vec<u64> = vec![0, duration_ms];
    for &i in &video {
        cuts.extend([spans[i].from, spans[i].to]);
    }
    for s in &speech {
        cuts.extend([s.span.from, s.span.to]);
    }
    cuts.retain(|&c| c <= duration_ms);
    cuts.sort_unstable();
    cuts.dedup();

    let canvas = Rect {
        x: 0,
        y: 0,
        w: options.width,
        h: options.height,
    };
    let mut speaker: Option<&str> = None;
    let mut segments: Vec<Segment> = Vec::new();
    for pair in cuts.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        let visible: Vec<usize> = video
            .iter()
            .copied()
            .filter(|&i| spans[i].covers(from))
            .collect();
        let screens: Vec<usize> = visible
            .iter()
            .copied()
            .filter(|&i| manifest.tracks[i].source == Source::Screen)
            .collect();
        let cameras: Vec<usize> = visible
            .iter()
            .copied()
            .filter(|&i| manifest.tracks[i].source == Source::Camera)
            .collect();
        let has_camera = |session: &str| {
            cameras
                .iter()
                .any(|&i| manifest.tracks[i].participant.session == session)
        };
        // The speaker: kept while speaking; else whoever started speaking first; else kept
        // while their camera is on.
        let speaking: Vec<&Speech> = speech
            .iter()
            .filter(|s| s.span.covers(from) && has_camera(&s.session))
            .collect();
        if !speaking.iter().any(|s| Some(s.session.as_str()) == speaker) {
            if let Some(first) = speaking.iter().min_by_key(|s| s.span.from) {
                speaker = Some(&first.session);
            } else if !speaker.is_some_and(has_camera) {
                speaker = None;
            }
        }

        let (layout, tiles) = if visible.is_empty() {
            (Layout::Empty, Vec::new())
        } else if !screens.is_empty() {
            (Layout::Screen, main_and_side(&screens, &cameras, canvas))
        } else if let Some(session) = speaker.filter(|_| cameras.len() >= 2) {
            let (main, side): (Vec<usize>, Vec<usize>) = cameras
                .iter()
                .partition(|&&i| manifest.tracks[i].participant.session == session);
            if side.is_empty() {
                (Layout::Grid, place(&cameras, &grid(cameras.len(), canvas)))
            } else {
                (Layout::Speaker, main_and_side(&main, &side, canvas))
            }
        } else {
            (Layout::Grid, place(&visible, &grid(visible.len(), canvas)))
        };
        match segments.last_mut() {
            Some(last) if last.layout == layout && last.tiles == tiles => last.to_ms = to,
            _ => segments.push(Segment {
                from_ms: from,
                to_ms: to,
                layout,
                tiles,
            }),
        }
    }
    segments
}

/// `main` large on the left, `side` in columns on the right; `main` alone when `side` is
/// empty.
fn main_and_side(main: &[usize], side: &[usize], canvas: Rect) -> Vec<Tile> {
    if side.is_empty() {
        return place(main, &grid(main.len(), canvas));
    }
    let main_w = even(canvas.w * MAIN_AREA_PERCENT / 100);
    let main_area = Rect {
        w: main_w,
        ..canvas
    };
    let side_area = Rect {
        x: canvas.x + main_w,
        w: canvas.w - main_w,
        ..canvas
    };
    let side_cols = side.len().div_ceil(MAX_SIDE_ROWS);
    let mut tiles = place(main, &grid(main.len(), main_area));
    tiles.extend(place(side, &grid_with(side.len(), side_cols, side_area)));
    tiles.sort_by_key(|t| t.track);
    tiles
}

fn place(tracks: &[usize], rects: &[Rect]) -> Vec<Tile> {
    tracks
        .iter()
        .zip(rects)
        .map(|(&track, &rect)| Tile { track, rect })
        .collect()
}

/// `n` tiles in `ceil(sqrt(n))` columns.
fn grid(n: usize, area: Rect) -> Vec<Rect> {
    let mut cols = 1;
    while cols * cols < n {
        cols += 1;
    }
    grid_with(n, cols, area)
}

/// `n` tiles in `cols` columns filling `area`; a partial last row is centred.
fn grid_with(n: usize, cols: usize, area: Rect) -> Vec<Rect> {
    if n == 0 {
        return Vec::new();
    }
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    // Small counts (at most a few dozen tiles), so the casts cannot truncate.
    let (cols32, rows32) = (cols as u32, rows as u32);
    let w = even(area.w / cols32).max(2);
    let h = even(area.h / rows32).max(2);
    let top = area.y + even(area.h.saturating_sub(rows32 * h) / 2);
    (0..n)
        .map(|k| {
            let (row, col) = (k / cols, k % cols);
            let in_row = (n - row * cols).min(cols) as u32;
            let left = area.x + even(area.w.saturating_sub(in_row * w) / 2);
            Rect {
                x: left + col as u32 * w,
                y: top + row as u32 * h,
                w,
                h,
            }
        })
        .collect()
}

fn even(v: u32) -> u32 {
    v & !1
}

/// A value of `t` (seconds) that changes at segment ends: `if(lt(t,END1),V1,if(...,VN))`.
fn piecewise(pieces: &[(u64, u32)]) -> String {
    let mut out = String::new();
    for (to, value) in &pieces[..pieces.len().saturating_sub(1)] {
        out.push_str(&format!("if(lt(t,{}),{value},", seconds(*to)));
    }
    if let Some((_, last)) = pieces.last() {
        out.push_str(&last.to_string());
    }
    out.push_str(&")".repeat(pieces.len().saturating_sub(1)));
    out
}

/// The filter graph: `[vout]` (the canvas with every drawn track) and `[aout]` (the mix).
fn graph(
    inputs: &[Input],
    spans: &[Span],
    segments: &[Segment],
    duration_ms: u64,
    options: &Options,
) -> String {
    let d = seconds(duration_ms);
    let mut parts = vec![format!(
        "color=c=black:s={}x{}:r={}:d={d}[canvas0]",
        options.width, options.height, options.fps
    )];
    let mut canvas = 0;
    for (input_index, input) in inputs.iter().enumerate().filter(|(_, i)| i.video) {
        let rects: Vec<(u64, Rect)> = segments
            .iter()
            .filter_map(|s| {
                s.tiles
                    .iter()
                    .find(|t| t.track == input.track)
                    .map(|t| (s.to_ms, t.rect))
            })
            .collect();
        let expr = |f: fn(&Rect) -> u32| {
            piecewise(&rects.iter().map(|(to, r)| (*to, f(r))).collect::<Vec<_>>())
        };
        let (x, y, w, h) = (expr(|r| r.x), expr(|r| r.y), expr(|r| r.w), expr(|r| r.h));
        let span = spans[input.track];
        parts.push(format!(
            "[{input_index}:v]scale=w='{w}':h='{h}':force_original_aspect_ratio=decrease:\
             force_divisible_by=2:eval=frame,setsar=1[v{input_index}]"
        ));
        parts.push(format!(
            "[canvas{canvas}][v{input_index}]overlay=x='{x}+({w}-w)/2':y='{y}+({h}-h)/2':\
             eval=frame:eof_action=pass:enable='between(t,{},{})'[canvas{}]",
            seconds(span.from),
            seconds(span.to),
            canvas + 1
        ));
        canvas += 1;
    }
    parts.push(format!("[canvas{canvas}]format=yuv420p[vout]"));

    let audio: Vec<usize> = (0..inputs.len()).filter(|&i| !inputs[i].video).collect();
    let tail = format!(
        "aformat=sample_fmts=fltp:sample_rates={SAMPLE_RATE}:channel_layouts=stereo,\
         apad=whole_dur={d},atrim=duration={d}[aout]"
    );
    if audio.is_empty() {
        parts.push(format!("anullsrc=r={SAMPLE_RATE}:cl=stereo,{tail}"));
    } else {
        let mut labels = String::new();
        for &i in &audio {
            parts.push(format!(
                "[{i}:a]aresample={SAMPLE_RATE}:async=1:first_pts=0[a{i}]"
            ));
            labels.push_str(&format!("[a{i}]"));
        }
        if audio.len() == 1 {
            parts.push(format!("{labels}{tail}"));
        } else {
            parts.push(format!(
                "{labels}amix=inputs={}:normalize=0:duration=longest:dropout_transition=0,{tail}",
                audio.len()
            ));
        }
    }
    parts.join(";\n")
}

/// What [`prepare`] found: the plan and where it writes.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The plan.
    pub plan: Plan,
    /// The output file.
    pub output: PathBuf,
}

/// Reads `dir/manifest.json`, checks that every file it names is there, measures incomplete
/// tracks (their real length, when longer than their `duration_ms`), and plans.
///
/// # Errors
///
/// [`ComposeError::Manifest`], [`ComposeError::UnsafeFileName`],
/// [`ComposeError::MissingFile`], and those of [`plan`].
pub fn prepare(dir: &Path, options: &Options) -> Result<Prepared, ComposeError> {
    let mut manifest = Manifest::read(dir)?;
    for (index, track) in manifest.tracks.iter_mut().enumerate() {
        check_file_name(index, &track.file)?;
        let path = dir.join(&track.file);
        if !path.is_file() {
            return Err(ComposeError::MissingFile { path });
        }
        if !track.complete
            && let Some(ms) = measure_ms(&options.ffmpeg, &path)
        {
            track.duration_ms = track.duration_ms.max(ms);
        }
    }
    let plan = plan(&manifest, options)?;
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| dir.join(DEFAULT_OUTPUT));
    Ok(Prepared { plan, output })
}

/// The time of a file's last packet, in milliseconds, from a stream copy to nowhere (fast:
/// nothing is decoded). `None` when ffmpeg cannot tell; the manifest's value is used then.
fn measure_ms(ffmpeg: &Path, file: &Path) -> Option<u64> {
    let out = Command::new(ffmpeg)
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args([
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "null",
            "-progress",
            "pipe:1",
            "-",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("out_time_us="))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .next_back()
        .map(|us| us / 1000)
}

/// Composes `dir` into one file: [`prepare`], then ffmpeg. Returns what was done.
///
/// # Errors
///
/// Those of [`prepare`]; [`ComposeError::Spawn`] when ffmpeg cannot be started,
/// [`ComposeError::Io`] when the graph's file cannot be written next to the output,
/// [`ComposeError::Ffmpeg`] (with its stderr) when it fails.
pub fn run(dir: &Path, options: &Options) -> Result<Prepared, ComposeError> {
    let prepared = prepare(dir, options)?;
    let mut script = prepared.output.clone().into_os_string();
    script.push(".filtergraph");
    let script = PathBuf::from(script);
    std::fs::write(&script, &prepared.plan.filter_complex).map_err(|source| ComposeError::Io {
        path: script.clone(),
        source,
    })?;
    let result = Command::new(&options.ffmpeg)
        .args(
            prepared
                .plan
                .args(dir, &prepared.output, Graph::Script(&script)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    // Best effort: the graph is only useful while ffmpeg runs.
    let _ = std::fs::remove_file(&script);
    let out = result.map_err(|source| ComposeError::Spawn {
        program: options.ffmpeg.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ComposeError::Ffmpeg {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests;

//! Real encoded media for webrtc-rs participants ([`crate::media::Participant::add_clip_track`]):
//! a few seconds of VP8 and Opus made once by ffmpeg from its test sources, read back frame by
//! frame. Unlike the synthetic payloads of [`crate::media::Participant::add_track`], what a
//! clip sends decodes, so a recording of it can be judged by ffmpeg; and unlike a browser or
//! an aiortc client it costs no encoding while the test runs (frames are only packetized).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;

/// What a clip's frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipCodec {
    Vp8,
    Vp9,
    Av1,
    Opus,
}

/// Encoded frames, sent in a loop at `interval` with `ticks` RTP clock ticks between frames.
#[derive(Debug, Clone)]
pub struct Clip {
    pub codec: ClipCodec,
    /// One encoded frame each (a VP8 or VP9 frame, an Opus packet). A video clip starts with a
    /// keyframe, so the loop restarts on one.
    pub frames: Vec<Bytes>,
    /// Time between frames.
    pub interval: Duration,
    /// RTP clock ticks between frames (90 kHz video, 48 kHz Opus).
    pub ticks: u32,
}

/// Video: 320x240 at 15 fps, a keyframe every second (what a recording starts at, and what
/// the clip's loop restarts at).
const FPS: u32 = 15;

impl Clip {
    /// `seconds` of ffmpeg's `testsrc2` as VP8 at about `kbps` (realtime settings, no
    /// alternate reference frames: every frame is shown, one per RTP timestamp), written in
    /// `dir`.
    pub fn vp8(dir: &Path, seconds: u32, kbps: u32) -> anyhow::Result<Self> {
        let frames = encode_video(dir, "libvpx", LIBVPX_REALTIME, seconds, kbps)?;
        ensure!(
            frames
                .first()
                .is_some_and(|f| f.first().is_some_and(|b| b & 1 == 0)),
            "the VP8 clip does not start with a keyframe"
        );
        Ok(Self::video(ClipCodec::Vp8, frames))
    }

    /// The same as VP9 profile 0 (libvpx-vp9, one spatial layer: no superframes), a real
    /// encoder's stream for what rtcd does with VP9.
    pub fn vp9(dir: &Path, seconds: u32, kbps: u32) -> anyhow::Result<Self> {
        let frames = encode_video(dir, "libvpx-vp9", LIBVPX_REALTIME, seconds, kbps)?;
        // The uncompressed header: frame marker 0b10, profile 0 (two bits), show_existing_frame
        // 0, then frame_type 0 for a keyframe: the top five bits 0b10000.
        ensure!(
            frames
                .first()
                .is_some_and(|f| f.first().is_some_and(|b| b & 0xf8 == 0x80)),
            "the VP9 clip does not start with a profile 0 keyframe"
        );
        Ok(Self::video(ClipCodec::Vp9, frames))
    }

    /// The same as AV1 (libaom, realtime), each frame a temporal unit of OBUs with their
    /// sizes (what an IVF file holds, and what webrtc-rs's AV1 payloader takes).
    pub fn av1(dir: &Path, seconds: u32, kbps: u32) -> anyhow::Result<Self> {
        let frames = encode_video(
            dir,
            "libaom-av1",
            &[
                "-usage",
                "realtime",
                "-cpu-used",
                "8",
                "-lag-in-frames",
                "0",
            ],
            seconds,
            kbps,
        )?;
        ensure!(
            frames.first().is_some_and(|f| obu_types(f).contains(&1)),
            "the AV1 clip does not start with a sequence header"
        );
        Ok(Self::video(ClipCodec::Av1, frames))
    }

    fn video(codec: ClipCodec, frames: Vec<Bytes>) -> Self {
        Self {
            codec,
            frames,
            interval: Duration::from_secs(1) / FPS,
            ticks: 90_000 / FPS,
        }
    }

    /// Whether this is a video clip.
    pub fn is_video(&self) -> bool {
        self.codec != ClipCodec::Opus
    }

    /// `seconds` of a 440 Hz tone as Opus, 20 ms frames at 48 kbit/s, written in `dir`.
    pub fn opus(dir: &Path, seconds: u32) -> anyhow::Result<Self> {
        let file = dir.join("clip.ogg");
        ffmpeg(
            &[
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                &seconds.to_string(),
                "-c:a",
                "libopus",
                "-b:a",
                "48k",
                "-frame_duration",
                "20",
                "-f",
                "ogg",
            ],
            &file,
        )?;
        let frames = ogg_packets(&std::fs::read(&file)?)?;
        // The first two packets are the OpusHead and OpusTags headers.
        ensure!(
            frames.len() > 2 && frames[0].starts_with(b"OpusHead"),
            "not an Ogg Opus stream"
        );
        Ok(Self {
            codec: ClipCodec::Opus,
            frames: frames[2..].to_vec(),
            interval: Duration::from_millis(20),
            ticks: 960,
        })
    }
}

/// libvpx's realtime settings, without alternate reference frames: every frame is shown, one
/// per RTP timestamp.
const LIBVPX_REALTIME: &[&str] = &[
    "-deadline",
    "realtime",
    "-cpu-used",
    "8",
    "-auto-alt-ref",
    "0",
    "-lag-in-frames",
    "0",
];

/// The OBU types of a temporal unit whose OBUs all carry their size (AV1 5.3), in order.
fn obu_types(mut unit: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while let Some(&header) = unit.first() {
        let extension = usize::from(header & 0x04 != 0);
        let (mut size, mut at) = (0usize, 1 + extension);
        for i in 0..8 {
            let Some(&b) = unit.get(at) else {
                return types;
            };
            at += 1;
            size |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        types.push((header >> 3) & 0x0f);
        unit = unit.get(at + size..).unwrap_or_default();
    }
    types
}

/// `seconds` of ffmpeg's `testsrc2` through `encoder` with `settings` at about `kbps`, a
/// keyframe a second, written in `dir`; its frames.
fn encode_video(
    dir: &Path,
    encoder: &str,
    settings: &[&str],
    seconds: u32,
    kbps: u32,
) -> anyhow::Result<Vec<Bytes>> {
    let file = dir.join(format!("clip-{encoder}.ivf"));
    let size = format!("testsrc2=size=320x240:rate={FPS}");
    let rate = format!("{kbps}k");
    let gop = FPS.to_string();
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            &size,
            "-t",
            &seconds.to_string(),
            "-c:v",
            encoder,
            "-b:v",
            &rate,
            "-minrate",
            &rate,
            "-maxrate",
            &rate,
            "-g",
            &gop,
            "-keyint_min",
            &gop,
        ]
        .into_iter()
        .chain(settings.iter().copied())
        .chain(["-f", "ivf"])
        .collect::<Vec<_>>(),
        &file,
    )?;
    ivf_frames(&std::fs::read(&file)?)
}

/// Runs `ffmpeg -y ARGS OUTPUT` (quietly), failing with its error output.
fn ffmpeg(args: &[&str], output: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error"])
        .args(args)
        .arg(output)
        .output()
        .context("running ffmpeg (Debian's ffmpeg package: libvpx and libopus)")?;
    if !out.status.success() {
        bail!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The frames of an IVF file: a 32-byte header, then per frame a 12-byte header (size, little
/// endian u32; timestamp u64) and the frame.
fn ivf_frames(data: &[u8]) -> anyhow::Result<Vec<Bytes>> {
    ensure!(data.len() >= 32 && &data[..4] == b"DKIF", "not an IVF file");
    let header = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut at = header;
    let mut frames = Vec::new();
    while at + 12 <= data.len() {
        let size = u32::from_le_bytes(data[at..at + 4].try_into()?) as usize;
        let start = at + 12;
        ensure!(start + size <= data.len(), "a truncated IVF frame");
        frames.push(Bytes::copy_from_slice(&data[start..start + size]));
        at = start + size;
    }
    Ok(frames)
}

/// The packets of an Ogg stream (one logical stream): each page's segment table says where
/// its packets end (a lacing value below 255); a packet may continue on the next page.
fn ogg_packets(data: &[u8]) -> anyhow::Result<Vec<Bytes>> {
    let mut packets = Vec::new();
    let mut packet = Vec::new();
    let mut at = 0;
    while at < data.len() {
        ensure!(
            data.len() >= at + 27 && &data[at..at + 4] == b"OggS",
            "not an Ogg page at byte {at}"
        );
        let segments = usize::from(data[at + 26]);
        let table = &data[at + 27..at + 27 + segments];
        let mut body = at + 27 + segments;
        for &lacing in table {
            let len = usize::from(lacing);
            ensure!(body + len <= data.len(), "a truncated Ogg page");
            packet.extend_from_slice(&data[body..body + len]);
            body += len;
            if lacing < 255 {
                packets.push(Bytes::from(std::mem::take(&mut packet)));
            }
        }
        at = body;
    }
    Ok(packets)
}

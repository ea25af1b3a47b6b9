#!/usr/bin/env python3
"""An aiortc client (aiortc_client.py: same protocol, same reports) whose microphone and camera
carry markers at known wall-clock moments, for checking a recording's common clock.

Both sources are synthetic. The microphone is silence with a beep (1 kHz sine, half of full
scale, starting at phase 0) and the camera is black with white frames, both from every
wall-clock instant t with t % PERIOD_MS == 0 (Unix milliseconds) for MARK_MS. Two clients
started anywhere therefore mark the same instants, and a recording in lip sync shows each
beep, its flash, and the other client's beep and flash at the same moment of the common clock.

Why the sender reports describe those instants. aiortc sends, in each RTCP sender report, the
RTP timestamp of the last packet it sent and the wall-clock (NTP) time it sent it; rtcd takes
that pair as "this RTP timestamp was captured at that time". So every frame is handed to aiortc
at its own capture instant (each recv() sleeps until the frame's wall-clock time, on a grid
aligned to the wall clock), and the RTP timestamps advance exactly with that grid:
- audio: aiortc's Opus encoder ignores a frame's pts and numbers samples itself (RTP timestamp
  = samples encoded so far), so audio is a continuous run of 20 ms frames of 48 kHz, one per
  grid slot, none ever skipped (a late frame is still sent, and the next ones catch up);
- video: aiortc's RTP timestamp is the frame's pts (90 kHz), set here from the frame's
  wall-clock time (milliseconds since the first frame's, times 90), so a late frame or a
  skipped one keeps the mapping.
What remains between a marker's capture time as the sender reports say and the true one is the
time from recv() returning to the packet leaving (encoding, a few milliseconds) and, for audio,
Opus's own delay (312 samples, 6.5 ms: the decoder's first output is padding, and WebRTC
signals no pre-skip).

Reports, besides aiortc_client.py's: "markers": {"period_ms", "mark_ms", "audio_first_ms" and
"video_first_ms" (the wall-clock time of the first frame of each), "audio_frames",
"video_frames", "audio_late_max_ms" / "video_late_max_ms" (the most a frame was handed over
after its time), "video_skipped" (grid slots skipped because the client was a frame late)}.

Usage: aiortc_marker.py (aiortc_client.py's options) [--period-ms 3000] [--mark-ms 100]
"""

import asyncio
import fractions
import math
import os
import sys
import time

import array
from av import AudioFrame, VideoFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aiortc_client  # noqa: E402  (the protocol client this one extends)

SAMPLE_RATE = 48000
AUDIO_FRAME_MS = 20
AUDIO_FRAME_SAMPLES = SAMPLE_RATE * AUDIO_FRAME_MS // 1000
VIDEO_FRAME_MS = 50  # 20 fps: a marker of 100 ms is two whole frames
VIDEO_CLOCK = 90000
WIDTH, HEIGHT = 160, 120
BEEP_HZ = 1000
BEEP_AMPLITUDE = 16384  # half of full scale (-6 dBFS)
# yuv420p in video range: black is Y 16, white Y 235; chroma neutral.
BLACK, WHITE, NEUTRAL = 16, 235, 128


def now_ms():
    return time.time() * 1000.0


def next_slot(ms, step):
    """The first multiple of `step` (integer ms) at or after `ms`."""
    return int(math.ceil(ms / step)) * step


async def sleep_until(wall_ms):
    """Sleeps until the wall clock reads `wall_ms`; how late it woke up (ms, >= 0)."""
    delay = wall_ms - now_ms()
    if delay > 0:
        await asyncio.sleep(delay / 1000.0)
    return max(0.0, now_ms() - wall_ms)


class Markers:
    """The marker schedule both sources follow, and what they report of it."""

    def __init__(self, period_ms, mark_ms):
        # Frames are whole: each audio and video frame is all marker or none of it.
        for step in (AUDIO_FRAME_MS, VIDEO_FRAME_MS):
            if period_ms % step or mark_ms % step:
                raise ValueError(f"period and mark must be multiples of {step} ms")
        self.period_ms = period_ms
        self.mark_ms = mark_ms
        self.stats = {
            "period_ms": period_ms,
            "mark_ms": mark_ms,
            "audio_first_ms": None,
            "video_first_ms": None,
            "audio_frames": 0,
            "video_frames": 0,
            "audio_late_max_ms": 0.0,
            "video_late_max_ms": 0.0,
            "video_skipped": 0,
        }

    def marked(self, wall_ms):
        """Whether the instant `wall_ms` (integer ms) is inside a marker."""
        return wall_ms % self.period_ms < self.mark_ms


class MarkerMicrophone(MediaStreamTrack):
    """Silence with a beep at every marker: 20 ms frames of 48 kHz mono, on a grid of the wall
    clock, each handed over at its first sample's time."""

    kind = "audio"

    def __init__(self, markers):
        super().__init__()
        self.markers = markers
        self.first_ms = None
        self.n = 0
        # The whole beep, as signed 16-bit samples (the machine's byte order, as s16 is).
        self.beep = array.array(
            "h",
            (
                round(BEEP_AMPLITUDE * math.sin(2 * math.pi * BEEP_HZ * n / SAMPLE_RATE))
                for n in range(markers.mark_ms * SAMPLE_RATE // 1000)
            ),
        ).tobytes()
        self.silence = bytes(2 * AUDIO_FRAME_SAMPLES)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.first_ms is None:
            self.first_ms = next_slot(now_ms() + 5, AUDIO_FRAME_MS)
            self.markers.stats["audio_first_ms"] = self.first_ms
        at = self.first_ms + self.n * AUDIO_FRAME_MS
        late = await sleep_until(at)
        stats = self.markers.stats
        stats["audio_late_max_ms"] = round(max(stats["audio_late_max_ms"], late), 1)
        stats["audio_frames"] += 1
        # The grid and the marker are multiples of 20 ms: a frame is all beep or all silence.
        into = at % self.markers.period_ms
        if into < self.markers.mark_ms:
            start = 2 * (into * SAMPLE_RATE // 1000)
            samples = self.beep[start : start + 2 * AUDIO_FRAME_SAMPLES]
        else:
            samples = self.silence
        frame = AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME_SAMPLES)
        frame.planes[0].update(samples)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.n * AUDIO_FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.n += 1
        return frame


class MarkerCamera(MediaStreamTrack):
    """Black with white frames at every marker: 20 fps on a grid of the wall clock, each frame
    handed over at its time, its pts its wall-clock time since the first frame's."""

    kind = "video"

    def __init__(self, markers):
        super().__init__()
        self.markers = markers
        self.first_ms = None
        self.next_ms = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.first_ms is None:
            self.first_ms = next_slot(now_ms() + 5, VIDEO_FRAME_MS)
            self.next_ms = self.first_ms
            self.markers.stats["video_first_ms"] = self.first_ms
        at = self.next_ms
        late = await sleep_until(at)
        stats = self.markers.stats
        if late >= VIDEO_FRAME_MS:
            # A frame or more late: skip to the slot now due (the pts keeps the mapping).
            skipped = int(late // VIDEO_FRAME_MS)
            stats["video_skipped"] += skipped
            at += skipped * VIDEO_FRAME_MS
            late -= skipped * VIDEO_FRAME_MS
        self.next_ms = at + VIDEO_FRAME_MS
        stats["video_late_max_ms"] = round(max(stats["video_late_max_ms"], late), 1)
        stats["video_frames"] += 1
        luma = WHITE if self.markers.marked(at) else BLACK
        frame = VideoFrame(width=WIDTH, height=HEIGHT, format="yuv420p")
        for plane, value in zip(frame.planes, (luma, NEUTRAL, NEUTRAL)):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts = (at - self.first_ms) * (VIDEO_CLOCK // 1000)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class MarkerClient(aiortc_client.Client):
    """aiortc_client.Client publishing the marker sources."""

    def sources(self):
        self.markers = Markers(self.args.period_ms, self.args.mark_ms)
        return MarkerMicrophone(self.markers), MarkerCamera(self.markers)

    def report(self, started):
        report = super().report(started)
        markers = getattr(self, "markers", None)
        if markers is not None:
            report["markers"] = dict(markers.stats)
        return report


def add_arguments(parser):
    parser.add_argument("--period-ms", type=int, default=3000, help="a marker every PERIOD ms")
    parser.add_argument("--mark-ms", type=int, default=100, help="each marker lasts MARK ms")


if __name__ == "__main__":
    aiortc_client.run(MarkerClient, add_arguments)

#!/usr/bin/env python3
"""An independent client of rtcd-proxy, written from docs/protocol.md alone, on aiortc (a WebRTC
stack we did not write). It joins a room, publishes a synthetic camera and microphone, follows
the protocol's negotiation (section 4a: the client makes every offer; `negotiation_needed` asks
for receiving sections), maps received tracks by `mid` (from `track_published`), and records
every decoded frame and audio frame it receives.

It prints one JSON line per second to stdout ({"t": seconds, "received": {mid: {...}}}) and a
final JSON line {"done": true, ...}: the test that runs it decides what counts as continuous.
Errors from the proxy are printed as JSON lines too ({"error": ...}); a close ends the run.

Usage: aiortc_client.py --url ws://HOST:PORT/ws --room ROOM --token JWT [--seconds N]
       [--no-publish]
"""

import argparse
import asyncio
import fractions
import json
import os
import sys
import time

import websockets
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

VIDEO_CLOCK = 90000


class Camera(VideoStreamTrack):
    """A small moving picture (so the encoder has something to encode), 15 fps."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, _ = await self.next_timestamp()
        self.n += 1
        frame = VideoFrame(width=160, height=120, format="yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(self.n * 7) % 256]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class Client:
    def __init__(self, ws, publish, verbose=False):
        self.verbose = verbose
        self.ws = ws
        self.publish = publish
        # The media server bundles everything on one transport (docs/protocol.md 4a).
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.tracks_by_mid = {}  # mid -> {"identity", "source", "track_id"}
        self.received = {}  # mid -> {"kind", "frames", "first", "last", "max_gap"}
        self.offer_pending = False
        self.want_offer = False
        self.needed = (0, 0)
        self.events = []
        self.pc.on("track", self.on_track)

    async def send(self, message):
        await self.ws.send(json.dumps(message))

    def on_track(self, track):
        transceiver = next(
            (t for t in self.pc.getTransceivers() if t.receiver.track is track), None
        )
        mid = transceiver.mid if transceiver else "?"
        if self.verbose:
            print(json.dumps({"track": mid, "kind": track.kind}), file=sys.stderr, flush=True)
        asyncio.ensure_future(self.consume(mid, track))

    async def consume(self, mid, track):
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            r = self.received.setdefault(
                mid,
                {"kind": track.kind, "frames": 0, "first": now, "last": now, "max_gap": 0.0},
            )
            r["max_gap"] = max(r["max_gap"], now - r["last"])
            r["frames"] += 1
            r["last"] = now

    def add_receivers(self):
        for media, want in zip(("audio", "video"), self.needed):
            for _ in range(self.receiving(media), want):
                self.pc.addTransceiver(media, direction="recvonly")

    def receiving(self, kind):
        return sum(
            1
            for t in self.pc.getTransceivers()
            if t.kind == kind and t.direction in ("recvonly", "sendrecv")
        )

    async def offer(self):
        """Sends an offer, or remembers that one is due once the pending one is answered
        (one offer at a time; requests meanwhile fold into the next)."""
        if self.offer_pending:
            self.want_offer = True
            return
        self.want_offer = False
        await self.pc.setLocalDescription(await self.pc.createOffer())
        tracks = {}
        for t in self.pc.getTransceivers():
            if t.mid is not None and t.sender.track is not None:
                tracks[t.mid] = "microphone" if t.kind == "audio" else "camera"
        self.offer_pending = True
        await self.send({"type": "offer", "sdp": self.pc.localDescription.sdp, "tracks": tracks})

    async def on_message(self, m):
        kind = m.get("type")
        if self.verbose:
            shown = dict(m)
            print(json.dumps({"message": shown}), file=sys.stderr, flush=True)
        if kind == "joined":
            if self.publish:
                self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
                self.pc.addTransceiver(Camera(), direction="sendonly")
            else:
                # An offer needs a section to set up the transport.
                self.pc.addTransceiver("audio", direction="recvonly")
            await self.offer()
        elif kind == "answer":
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="answer"))
            self.offer_pending = False
            if self.want_offer:
                self.add_receivers()
                await self.offer()
        elif kind == "negotiation_needed":
            # Sections are added only between negotiations (aiortc then starts their
            # receivers reliably), so a request during an offer waits for its answer.
            self.want_offer = True
            self.needed = (m.get("audio", 0), m.get("video", 0))
            if not self.offer_pending:
                self.add_receivers()
                await self.offer()
        elif kind == "track_published":
            self.tracks_by_mid[m["mid"]] = {
                "identity": m["identity"],
                "source": m["source"],
                "track_id": m["track_id"],
            }
        elif kind == "track_unpublished":
            # The section's counters stay (a section is reused for the next track).
            for mid, info in list(self.tracks_by_mid.items()):
                if info["track_id"] == m["track_id"]:
                    del self.tracks_by_mid[mid]
        elif kind == "error":
            print(json.dumps({"error": m}), flush=True)
        elif kind in ("participant_joined", "participant_left"):
            self.events.append(kind)
        # candidate: aiortc's answer processing uses the candidates in rtcd's SDP.

    def report(self, started):
        now = time.monotonic()
        received = {}
        for mid, r in self.received.items():
            info = self.tracks_by_mid.get(mid, {})
            received[mid] = {
                "kind": r["kind"],
                "identity": info.get("identity"),
                "source": info.get("source"),
                "frames": r["frames"],
                "since_last": round(now - r["last"], 3),
                "max_gap": round(r["max_gap"], 3),
            }
        return {
            "t": round(now - started, 1),
            "state": self.pc.connectionState,
            "received": received,
            "participants": self.events,
        }


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--no-publish", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="log messages to stderr")
    args = parser.parse_args()
    started = time.monotonic()
    async with websockets.connect(args.url, max_size=1 << 20) as ws:
        client = Client(ws, not args.no_publish, args.verbose)
        await ws.send(json.dumps({"type": "join", "room": args.room, "token": args.token}))

        async def reader():
            async for raw in ws:
                await client.on_message(json.loads(raw))

        async def reporter():
            while time.monotonic() - started < args.seconds:
                await asyncio.sleep(1)
                print(json.dumps(client.report(started)), flush=True)
                if args.verbose:
                    for t in client.pc.getTransceivers():
                        stats = await t.receiver.getStats()
                        inbound = [
                            (s.type, getattr(s, "packetsReceived", None))
                            for s in stats.values()
                            if s.type == "inbound-rtp"
                        ]
                        print(json.dumps({"mid": t.mid, "dir": t.direction, "cur": t.currentDirection, "inbound": inbound}), file=sys.stderr, flush=True)

        read = asyncio.ensure_future(reader())
        try:
            await reporter()
        finally:
            read.cancel()
            final = client.report(started)
            final["done"] = True
            print(json.dumps(final), flush=True)
            await ws.send(json.dumps({"type": "leave"}))
            await client.pc.close()


if __name__ == "__main__":
    if os.environ.get("AIORTC_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG)
    try:
        asyncio.run(main())
    except websockets.ConnectionClosed as e:
        print(json.dumps({"closed": e.code, "reason": e.reason}), flush=True)
        sys.exit(2)

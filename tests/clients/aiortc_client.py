#!/usr/bin/env python3
"""An independent client of rtcd-proxy, written from docs/protocol.md alone, on aiortc (a WebRTC
stack we did not write). It joins a room, publishes a synthetic camera and microphone, follows
the protocol's negotiation (section 4a: the client makes every offer; `negotiation_needed` asks
for receiving sections), maps received tracks by `mid` (from `track_published`), and records
every decoded frame and audio frame it receives.

It prints one JSON line per second to stdout ({"t": seconds, "received": {mid: {...}}}) and a
final JSON line {"done": true, ...}: the test that runs it decides what counts as continuous.
Errors from the proxy are printed as JSON lines too ({"error": ...}); a close ends the run.
Besides "t" and "received" a report carries:
- "started_unix": the wall clock time of t = 0 (to line up the reports of several clients);
- per received mid, "gaps": [[t, seconds], ...], every pause of at least GAP_SECONDS between
  two decoded frames (t = the frame before the pause);
- "published": one entry per `track_published` ({mid, identity, source, track_id, at: t},
  "first_frame_after": seconds from it to the first decoded frame on that mid, null until
  then; "unpublished_at" once its `track_unpublished` came);
- with --ice-restart-at, "ice_restart": {"offer": t the offer with new credentials was sent,
  "answer": t its answer was applied, "checked": t the first check with the new credentials
  was answered, "checks": checks sent until then, "first_check_answered": bool}, or
  {"error": ...} if the restart could not be carried out.

With --answer-delay SECONDS it applies every answer that much later than it arrives (a slow
client, or signaling slower than media): what rtcd sends on a section before the answer that
enables it is applied is dropped by aiortc (after decryption, so it cannot be resent).

SIGTERM ends it before --seconds, the same way (a final report, then a leave).

Usage: aiortc_client.py --url ws://HOST:PORT/ws --room ROOM --token JWT [--seconds N]
       [--no-publish] [--ice-restart-at SECONDS] [--answer-delay SECONDS] [--verbose]
"""

import argparse
import asyncio
import fractions
import json
import os
import re
import signal
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
from aioice import stun
from aioice.utils import random_string
from av import VideoFrame

VIDEO_CLOCK = 90000
# Pauses between decoded frames this long or longer are listed in the reports (15 fps video
# normally has 67 ms between frames, audio 20 ms).
GAP_SECONDS = 0.3
# After an ICE restart's answer a check with the new credentials is sent every CHECK_SPACING
# seconds (each waits RTO = 0.5 s for its answer) until one is answered, for CHECK_GIVE_UP s.
CHECK_SPACING = 0.1
CHECK_GIVE_UP = 10.0


class IceInternalsChanged(RuntimeError):
    pass


def ice_connection(pc):
    """The aioice Connection under the peer connection's one (bundled) ICE transport.

    aiortc has no restartIce(): an ICE restart has to change the credentials of the aioice
    Connection itself, which aiortc keeps at RTCIceTransport._connection (transceiver ->
    RTCRtpReceiver.transport (RTCDtlsTransport) -> .transport (RTCIceTransport)). With
    max-bundle every section of an answered offer shares the first section's transport."""
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise IceInternalsChanged("no transceiver to find the ICE transport from")
    ice = transceivers[0].receiver.transport.transport
    # Every answered section must be on that one transport, or credentials set here would
    # not be the ones in use.
    answered = {t.receiver.transport.transport for t in transceivers if t.currentDirection}
    if answered - {ice}:
        raise IceInternalsChanged(f"{len(answered)} ICE transports: not bundled on one")
    conn = getattr(ice, "_connection", None)
    needed = (
        "_local_username",  # what local_username (offers, checks' USERNAME) reads
        "_local_password",  # what local_password (answers to incoming checks) reads
        "remote_username",  # checks' USERNAME ("remote:local"), read at every check
        "remote_password",  # checks' MESSAGE-INTEGRITY key, read at every check
        "_nominated",  # component -> the selected CandidatePair
        "build_request",  # builds a Binding request as connect() / consent checks do
    )
    missing = [a for a in needed if not hasattr(conn, a)]
    if conn is None or missing:
        raise IceInternalsChanged(
            f"aiortc/aioice internals changed: RTCIceTransport._connection={conn!r} "
            f"lacks {missing}; the ICE restart hack in aiortc_client.py needs updating"
        )
    return conn


def sdp_ice_credentials(sdp):
    """(ufrag, pwd) of an SDP: the first a=ice-ufrag / a=ice-pwd (bundled: all the same)."""
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.M)
    pwd = re.search(r"^a=ice-pwd:(\S+)", sdp, re.M)
    if not ufrag or not pwd:
        raise ValueError("SDP without a=ice-ufrag / a=ice-pwd")
    return ufrag.group(1), pwd.group(1)


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
    def __init__(self, ws, publish, started, verbose=False, answer_delay=0.0):
        self.answer_delay = answer_delay
        self.started = started
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
        self.published = []  # one entry per track_published (see the module doc)
        self.awaiting_frame = {}  # mid -> its latest published entry without a frame yet
        self.restart_due = False  # the next offer restarts ICE
        self.restart = None  # the "ice_restart" report, once a restart began
        self.restart_answer_due = False  # the pending offer is the restart's
        self.pc.on("track", self.on_track)

    def sources(self):
        """The microphone and camera tracks it publishes (a subclass may make others)."""
        return AudioStreamTrack(), Camera()

    def t(self, now=None):
        return round((time.monotonic() if now is None else now) - self.started, 3)

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
                {
                    "kind": track.kind,
                    "frames": 0,
                    "first": now,
                    "last": now,
                    "max_gap": 0.0,
                    "gaps": [],
                },
            )
            gap = now - r["last"]
            r["max_gap"] = max(r["max_gap"], gap)
            if gap >= GAP_SECONDS:
                r["gaps"].append([self.t(r["last"]), round(gap, 3)])
            r["frames"] += 1
            r["last"] = now
            published = self.awaiting_frame.pop(mid, None)
            if published is not None:
                published["first_frame_after"] = round(self.t(now) - published["at"], 3)

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
        restart = self.restart_due and self.pc.connectionState == "connected"
        if restart:
            self.restart_due = False
            ufrag, pwd = self.new_local_credentials()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        if restart:
            # aiortc writes the Connection's credentials into the offer already; a section
            # added since the last answer still has its own (soon bundled away) transport
            # with the old ones, so every section gets the new ones written in.
            sdp, n = re.subn(r"^a=ice-ufrag:\S+", f"a=ice-ufrag:{ufrag}", sdp, flags=re.M)
            sdp = re.sub(r"^a=ice-pwd:\S+", f"a=ice-pwd:{pwd}", sdp, flags=re.M)
            if n == 0 or sdp_ice_credentials(sdp) != (ufrag, pwd):
                raise IceInternalsChanged("the restart offer does not carry the new credentials")
        tracks = {}
        for t in self.pc.getTransceivers():
            if t.mid is not None and t.sender.track is not None:
                tracks[t.mid] = "microphone" if t.kind == "audio" else "camera"
        self.offer_pending = True
        if restart:
            # (Set before sending: the answer may be read while this task awaits the send.)
            self.restart_answer_due = True
            self.restart = {"offer": self.t()}
            self.debug({"ice_restart_offer": self.restart["offer"], "ufrag": ufrag})
        await self.send({"type": "offer", "sdp": sdp, "tracks": tracks})

    async def guarded(self, coroutine):
        """Runs a step of the ICE restart; its failure goes into the report, not lost."""
        try:
            await coroutine
        except Exception as e:
            self.restart = dict(self.restart or {}, error=repr(e))
            print(json.dumps({"ice_restart_error": repr(e)}), file=sys.stderr, flush=True)

    def debug(self, what):
        if self.verbose:
            print(json.dumps(what), file=sys.stderr, flush=True)

    def new_local_credentials(self):
        """An ICE restart's first half: new local credentials on the aioice Connection (what
        createOffer writes into the offer, RFC 8839 4.4.1.1.1). Checks the Connection sends
        until the answer carry "old remote ufrag:new local ufrag", signed with the old remote
        password, as the remote agent still expects; incoming checks (the media server is
        ICE-lite and sends none) would be answered with the new password."""
        conn = ice_connection(self.pc)
        ufrag, pwd = random_string(8), random_string(24)
        conn._local_username = ufrag
        conn._local_password = pwd
        if conn.local_username != ufrag or conn.local_password != pwd:
            raise IceInternalsChanged("Connection.local_username does not read _local_username")
        return ufrag, pwd

    async def apply_restart_answer(self, sdp):
        """An ICE restart's second half: aiortc's setRemoteDescription keeps the remote
        credentials of the first answer (RTCIceTransport.start() runs once), so the new ones
        are set on the Connection here, where every later check (consent, RFC 7675) reads
        them. aioice sends no check of its own until the next consent check (4-6 s later),
        and the ICE-lite server switches to the new credentials only when a check with them
        succeeds, so checks are sent on the selected pair right away, one every
        CHECK_SPACING s until one is answered."""
        conn = ice_connection(self.pc)
        old = (conn.remote_username, conn.remote_password)
        ufrag, pwd = sdp_ice_credentials(sdp)
        if (ufrag, pwd) == old or ufrag == old[0]:
            self.restart["error"] = "the answer to the ICE restart kept the old credentials"
            return
        conn.remote_username, conn.remote_password = ufrag, pwd
        pair = conn._nominated.get(1)  # component 1 (RTP and RTCP are muxed)
        if pair is None:
            raise IceInternalsChanged(f"no selected pair: Connection._nominated={conn._nominated}")
        sent = 0
        checks = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHECK_GIVE_UP

        async def check(n):
            request = conn.build_request(pair, nominate=True)
            try:
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=pwd.encode("utf8"),
                    retransmissions=0,
                )
                return n, True
            except stun.TransactionError as e:
                self.debug({"ice_restart_check": n, "failed": str(e)})
                return n, False

        try:
            while loop.time() < deadline:
                sent += 1
                checks.add(asyncio.ensure_future(check(sent)))
                done, checks = await asyncio.wait(
                    checks, timeout=CHECK_SPACING, return_when=asyncio.FIRST_COMPLETED
                )
                answered = sorted(d.result()[0] for d in done if d.result()[1])
                if answered:
                    self.restart.update(
                        checked=self.t(), checks=sent, first_check_answered=answered[0] == 1
                    )
                    self.debug({"ice_restart_checked": self.restart})
                    return
            self.restart["error"] = f"none of {sent} checks with the new credentials was answered"
        finally:
            for c in checks:
                c.cancel()

    async def on_message(self, m):
        kind = m.get("type")
        if self.verbose:
            shown = dict(m)
            print(json.dumps({"message": shown}), file=sys.stderr, flush=True)
        if kind == "joined":
            if self.publish:
                microphone, camera = self.sources()
                self.pc.addTransceiver(microphone, direction="sendonly")
                self.pc.addTransceiver(camera, direction="sendonly")
            else:
                # An offer needs a section to set up the transport.
                self.pc.addTransceiver("audio", direction="recvonly")
            await self.offer()
        elif kind == "answer":
            if self.answer_delay > 0:
                await asyncio.sleep(self.answer_delay)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="answer"))
            self.offer_pending = False
            if self.restart_answer_due:
                self.restart_answer_due = False
                self.restart["answer"] = self.t()
                asyncio.ensure_future(self.guarded(self.apply_restart_answer(m["sdp"])))
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
            entry = {
                "mid": m["mid"],
                "identity": m["identity"],
                "source": m["source"],
                "track_id": m["track_id"],
                "at": self.t(),
                "first_frame_after": None,
            }
            self.published.append(entry)
            self.awaiting_frame[m["mid"]] = entry
        elif kind == "track_unpublished":
            # The section's counters stay (a section is reused for the next track).
            for mid, info in list(self.tracks_by_mid.items()):
                if info["track_id"] == m["track_id"]:
                    del self.tracks_by_mid[mid]
            for entry in self.published:
                if entry["track_id"] == m["track_id"] and "unpublished_at" not in entry:
                    entry["unpublished_at"] = self.t()
                    if self.awaiting_frame.get(entry["mid"]) is entry:
                        del self.awaiting_frame[entry["mid"]]
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
                "gaps": r["gaps"],
            }
        report = {
            "t": round(now - started, 1),
            "started_unix": self.started_unix,
            "state": self.pc.connectionState,
            "received": received,
            "participants": self.events,
            "published": self.published,
        }
        if self.restart is not None:
            report["ice_restart"] = self.restart
        return report

    async def restart_ice_at(self, seconds):
        """Restarts ICE once, `seconds` after the start: with the next offer (at once if no
        offer is pending, else right after the pending one's answer)."""
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - self.started)))
        if self.pc.connectionState != "connected":
            self.restart = {"error": f"not connected at {seconds} s: {self.pc.connectionState}"}
            return
        self.restart_due = True
        await self.offer()


async def main(client_class=None, add_arguments=None):
    """Runs a client of `client_class` (default `Client`); `add_arguments(parser)` may add
    options, which reach the client as `client.args`."""
    client_class = client_class or Client
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--no-publish", action="store_true")
    parser.add_argument(
        "--ice-restart-at",
        type=float,
        metavar="SECONDS",
        help="restart ICE once, this many seconds after the start",
    )
    parser.add_argument(
        "--answer-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="apply every answer this much later than it arrives",
    )
    parser.add_argument("--verbose", action="store_true", help="log messages to stderr")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    started = time.monotonic()
    started_unix = time.time()
    async with websockets.connect(args.url, max_size=1 << 20) as ws:
        client = client_class(ws, not args.no_publish, started, args.verbose, args.answer_delay)
        client.args = args
        client.started_unix = round(started_unix, 3)
        await ws.send(json.dumps({"type": "join", "room": args.room, "token": args.token}))

        async def reader():
            async for raw in ws:
                try:
                    await client.on_message(json.loads(raw))
                except Exception as e:
                    # Said on stdout (the test fails on "error" lines), not lost with the task.
                    print(json.dumps({"error": {"client": repr(e)}}), flush=True)
                    raise

        # SIGTERM ends the run early, as its end would (the final report, a leave).
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)

        async def reporter():
            while time.monotonic() - started < args.seconds and not stopping.is_set():
                try:
                    await asyncio.wait_for(stopping.wait(), 1)
                except asyncio.TimeoutError:
                    pass
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
        background = []
        if args.ice_restart_at is not None:
            restart = client.guarded(client.restart_ice_at(args.ice_restart_at))
            background.append(asyncio.ensure_future(restart))
        try:
            await reporter()
        finally:
            read.cancel()
            for task in background:
                task.cancel()
            final = client.report(started)
            final["done"] = True
            print(json.dumps(final), flush=True)
            await ws.send(json.dumps({"type": "leave"}))
            await client.pc.close()


def run(client_class=None, add_arguments=None):
    """The command line entry point (see `main`)."""
    if os.environ.get("AIORTC_DEBUG"):
        import logging

        # Process id and ms since the start: the test's clients log to the same stderr.
        logging.basicConfig(
            level=logging.DEBUG,
            format="%(process)d %(relativeCreated)d %(levelname)s:%(name)s:%(message)s",
        )
    try:
        asyncio.run(main(client_class, add_arguments))
    except websockets.ConnectionClosed as e:
        print(json.dumps({"closed": e.code, "reason": e.reason}), flush=True)
        sys.exit(2)


if __name__ == "__main__":
    run()

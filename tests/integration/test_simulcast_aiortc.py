"""Simulcast without a browser: an aiortc publisher that writes three VP8 layers itself.

aiortc cannot send simulcast, so the publisher here offers it the way Chromium does (rid and
simulcast lines, the RID extension) and sends each layer's RTP by hand: its own SSRC, sequence
numbers and picture ids, the MID and RID extensions, a keyframe every half second (it does not
hear PLIs for these SSRCs). Subscribers are ordinary aiortc clients; what they decode shows
which layer they get.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import struct
import time
from collections.abc import AsyncIterator
from fractions import Fraction

import numpy as np
import pytest
import pytest_asyncio
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder
from av import VideoFrame
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from sfu.simulcast_sdp import REPAIRED_RID_URI, RID_URI
from signaling.client import Participant, SignalClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LAYERS = (("h", 640, 360), ("m", 320, 180), ("l", 160, 90))  # as offered: highest first
FPS = 15
KEYFRAME_EVERY = 8  # frames
RID_EXT_ID, REPAIRED_RID_EXT_ID = 10, 11
_HEADER = struct.Struct("!BBHII")


def simulcast_offer(offer: str) -> str:
    head, video = offer.split("m=video", 1)
    rids = [rid for rid, _, _ in LAYERS]
    return (
        head
        + "m=video"
        + video
        + f"a=extmap:{RID_EXT_ID} {RID_URI}\r\n"
        + f"a=extmap:{REPAIRED_RID_EXT_ID} {REPAIRED_RID_URI}\r\n"
        + "".join(f"a=rid:{rid} send\r\n" for rid in rids)
        + "a=simulcast:send "
        + ";".join(rids)
        + "\r\n"
    )


def extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    body += b"\x00" * (-len(body) & 3)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


class SimulcastPublisher:
    """Encodes a moving picture at three sizes and sends each as its own RTP stream."""

    def __init__(self, pc: RTCPeerConnection, payload_type: int, mid_ext_id: int) -> None:
        self.pc = pc
        self.mid = str(pc.getTransceivers()[0].mid).encode()
        self.payload_type = payload_type
        self.mid_ext_id = mid_ext_id
        self.encoders = [Vp8Encoder() for _ in LAYERS]
        self.ssrcs = [random.getrandbits(32) for _ in LAYERS]
        self.seqs = [random.getrandbits(16) for _ in LAYERS]
        self.sent = 0

    async def run(self) -> None:
        for index in range(FPS * 60):  # bounded: a minute of video at most
            started = time.monotonic()
            for layer, (rid, width, height) in enumerate(LAYERS):
                frame = self._picture(index, width, height)
                payloads, ts = self.encoders[layer].encode(
                    frame, force_keyframe=index % KEYFRAME_EVERY == 0
                )
                for i, payload in enumerate(payloads):
                    await bridge.send_raw_rtp(
                        self.pc, self._packet(layer, rid, ts, payload, i == len(payloads) - 1)
                    )
            await asyncio.sleep(max(0.0, 1 / FPS - (time.monotonic() - started)))

    @staticmethod
    def _picture(index: int, width: int, height: int) -> VideoFrame:
        image = np.full((height, width, 3), 40, dtype=np.uint8)
        x = (index * 4) % width
        image[:, x : x + max(2, width // 16)] = (200, 80, 40)  # a bar moving right
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index * (90_000 // FPS)
        frame.time_base = Fraction(1, 90_000)
        return frame

    def _packet(self, layer: int, rid: str, ts: int, payload: bytes, marker: bool) -> bytes:
        seq = self.seqs[layer]
        self.seqs[layer] = (seq + 1) & 0xFFFF
        self.sent += 1
        block = extension_block([(self.mid_ext_id, self.mid), (RID_EXT_ID, rid.encode())])
        second = (0x80 if marker else 0) | self.payload_type
        return _HEADER.pack(0x90, second, seq, ts, self.ssrcs[layer]) + block + payload


class Viewer:
    """An aiortc subscriber recording the size of every frame it decodes."""

    def __init__(self) -> None:
        self.sizes: list[tuple[float, int]] = []  # (time, width)
        self.readers: list[asyncio.Task[None]] = []
        self.client: Participant | None = None

    def on_track(self, track_id: str, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self.readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # noqa: BLE001 - the track ended
                return
            assert isinstance(frame, VideoFrame)
            self.sizes.append((time.monotonic(), frame.width))

    async def wait_width(self, width: int, timeout_s: float = 10) -> float:
        start = time.monotonic()
        seen = len(self.sizes)
        while time.monotonic() - start < timeout_s:
            if any(w == width for _, w in self.sizes[seen:]):
                return time.monotonic() - start
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {width}-wide frame in {timeout_s} s; last: {self.sizes[-3:]}")


class DecodeErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "decode" in record.getMessage():
            self.count += 1


@pytest_asyncio.fixture
async def publisher(
    server: ServerProcess, room: str
) -> AsyncIterator[tuple[str, SimulcastPublisher]]:
    signal = await SignalClient.connect(server.url)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    task: asyncio.Task[None] | None = None
    try:
        joined = await signal.request({"type": "join", "token": server.token(room, "pub")}, 10)
        assert joined["type"] == "joined"
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = simulcast_offer(pc.localDescription.sdp)
        reply = await signal.request({"type": "publish", "sdp": offer}, 10)
        answer = reply["sdp"]
        assert "a=simulcast:recv h;m;l" in answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        mid_ext = re.search(r"a=extmap:(\d+) urn:ietf:params:rtp-hdrext:sdes:mid", offer)
        video_line = re.search(r"m=video \d+ \S+ (\d+)", answer)
        assert mid_ext and video_line
        for _ in range(100):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.1)
        assert pc.connectionState == "connected"
        sender = SimulcastPublisher(pc, int(video_line.group(1)), int(mid_ext.group(1)))
        task = asyncio.ensure_future(sender.run())
        yield reply["tracks"][0]["id"], sender
    finally:
        if task is not None:
            task.cancel()
        await pc.close()
        await signal.close()


async def test_each_subscriber_decodes_the_layer_it_asked_for(
    server: ServerProcess, room: str, publisher: tuple[str, SimulcastPublisher]
) -> None:
    track_id, sender = publisher
    errors = DecodeErrors()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(errors)
    viewers = [Viewer(), Viewer()]
    try:
        for i, viewer in enumerate(viewers):
            viewer.client = await Participant.join(
                server.url, server.token(room, f"viewer{i}"), on_track=viewer.on_track
            )
            await viewer.client.wait_remote_tracks([track_id], timeout=10)
        full, thin = viewers
        assert thin.client is not None
        await full.wait_width(640)  # by default the top layer
        await thin.client.track_settings(track_id, quality="low")
        down = await thin.wait_width(160)
        await thin.client.track_settings(track_id, width=300, height=150)
        up = await thin.wait_width(320)  # the smallest layer covering 300x150
        await thin.client.track_settings(track_id, quality="high")
        await thin.wait_width(640)
        mark = time.monotonic()
        await asyncio.sleep(1.5)
        for viewer in viewers:
            widths = [w for at, w in viewer.sizes if at > mark]
            assert len(widths) >= 10 and set(widths) == {640}, widths
        assert errors.count == 0, "a switch must never hand a decoder a broken stream"
        assert sender.sent > 0
        # Bounded by this publisher's keyframe interval (533 ms): it cannot hear PLIs.
        print(f"switch down {down * 1000:.0f} ms, up {up * 1000:.0f} ms (request -> frame)")
    finally:
        logging.getLogger("aiortc.rtcrtpreceiver").removeHandler(errors)
        for viewer in viewers:
            for reader in viewer.readers:
                reader.cancel()
            if viewer.client is not None:
                await viewer.client.close()

"""Simulcast end to end: Chromium publishes three layers, two aiortc subscribers each get the
layer they ask for (or their link allows), and switch cleanly when that changes.

The layer a subscriber receives is read from the frames its own VP8 decoder produces
(width/height), so this checks what a viewer would see, not server bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from aiortc import MediaStreamTrack
from av import VideoFrame
from helpers.browser import MEASURED, open_page, poll
from helpers.server import ServerProcess
from playwright.async_api import BrowserContext

from sfu import aiortc_bridge as bridge
from sfu.rtp import is_rtcp
from signaling.client import Participant
from signaling.client.impair import Impairment, LinkModel

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(150)]

Contexts = Callable[..., Awaitable[BrowserContext]]

PUBLISH = """async ([url, token]) => {
    const { SfuConnection } = await import('/static/protocol.js');
    const stream = await navigator.mediaDevices.getUserMedia({
        audio: true, video: { width: 1280, height: 720, frameRate: 30 } });
    const connection = new SfuConnection(url, token, { reconnect: false });
    await connection.connect();
    const tracks = await connection.publish(stream.getTracks(), stream);
    window.__sim = { connection };
    return tracks.map((t) => [t.id, t.kind]);
}"""

LAYERS_SENT = """async () => {
    const pc = window.__sim.connection.publishPc;
    const out = {};
    (await pc.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) {
            out[s.rid] = [s.frameWidth || 0, s.frameHeight || 0, s.framesEncoded || 0,
                          s.bytesSent || 0, s.qualityLimitationReason || ''];
        }
    });
    return out;
}"""


@dataclass
class Viewer:
    """What one aiortc subscriber decodes of the video, and the video bytes it receives."""

    name: str
    participant: Participant | None = None
    frames: list[tuple[float, int, int]] = field(default_factory=list)  # (time, w, h)
    errors: list[BaseException] = field(default_factory=list)
    video_bytes: list[tuple[float, int]] = field(default_factory=list)
    link: LinkModel | None = None  # the subscriber's downlink, None: unimpaired
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def client(self) -> Participant:
        assert self.participant is not None
        return self.participant

    def size(self) -> tuple[int, int] | None:
        return self.frames[-1][1:] if self.frames else None

    def frames_since(self, t: float) -> int:
        return sum(1 for f in self.frames if f[0] >= t)

    def rate_since(self, t: float) -> float:
        """Video bytes per second received since ``t``."""
        window = [(at, n) for at, n in self.video_bytes if at >= t]
        if len(window) < 2:
            return 0.0
        return sum(n for _, n in window) / max(1e-3, window[-1][0] - window[0][0])


async def _read_video(viewer: Viewer, track: MediaStreamTrack) -> None:
    while True:
        try:
            frame = await track.recv()
        except Exception as exc:  # noqa: BLE001 - the track ending ends the reader
            if type(exc).__name__ != "MediaStreamError":
                viewer.errors.append(exc)
            return
        assert isinstance(frame, VideoFrame)
        viewer.frames.append((time.monotonic(), frame.width, frame.height))


async def _viewer(server: ServerProcess, room: str, name: str, video_track: str) -> Viewer:
    viewer = Viewer(name)

    def on_track(track_id: str, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            viewer.readers.append(asyncio.ensure_future(_read_video(viewer, track)))

    participant = await Participant.join(server.url, server.token(room, name), on_track=on_track)
    viewer.participant = participant
    await participant.wait_remote_tracks([video_track], timeout=15)
    assert participant.subscribe_pc is not None
    video_pts = _video_payload_types(participant)

    def tap(packet: bytes) -> None:
        if not is_rtcp(packet) and packet[1] & 0x7F in video_pts:
            viewer.video_bytes.append((time.monotonic(), len(packet)))

    bridge.tap_received_rtp(participant.subscribe_pc, tap)

    def downlink(data: bytes) -> float | None:
        link = viewer.link
        return 0.0 if link is None else link.decide(len(data), time.monotonic())

    bridge.impair_datagrams(participant.subscribe_pc, incoming=downlink)
    return viewer


def _video_payload_types(participant: Participant) -> set[int]:
    assert participant.subscribe_pc is not None
    sdp = participant.subscribe_pc.remoteDescription.sdp
    pts: set[int] = set()
    for line in sdp.splitlines():
        if line.startswith("m=video"):
            pts |= {int(p) for p in line.split()[3:]}
    return pts


async def _wait_width(
    viewer: Viewer, check: Callable[[int], bool], what: str, timeout_s: float
) -> float:
    """Seconds until ``viewer`` decodes a frame whose width passes ``check``."""
    start = time.monotonic()
    seen = len(viewer.frames)

    async def ready() -> float | None:
        for at, width, _ in viewer.frames[seen:]:
            if check(width):
                return at - start
        return None

    waited: float = await poll(ready, f"{viewer.name}: {what}", timeout_s=timeout_s)
    return waited


async def _flowing(viewer: Viewer) -> bool:
    return viewer.frames_since(time.monotonic() - 1) > 5


class DecodeErrors(logging.Handler):
    """Counts aiortc's "failed to decode" warnings (a broken stream reaching a decoder)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "decode" in record.getMessage():
            self.count += 1


def _target_changes(
    server: ServerProcess, subscriber: str, after: float
) -> list[tuple[float, int]]:
    """(seconds after ``after`` (wall clock), layer) of the server's layer choices for them."""
    changes = []
    for line in list(server.log_lines):
        if '"layer_target"' not in line or subscriber not in line:
            continue
        event = json.loads(line)
        at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        if at >= after:
            changes.append((at - after, int(event["layer"])))
    return changes


async def test_chromium_simulcast_to_two_aiortc_subscribers(
    server: ServerProcess, contexts: Contexts
) -> None:
    room = "simulcast-room"
    context = await contexts()
    publisher = await open_page(context, "publisher", server.http + "/join")
    tracks = await publisher.page.evaluate(PUBLISH, [server.url, server.token(room, "chromium")])
    video_id = next(track_id for track_id, kind in tracks if kind == "video")

    # Chromium sends all three layers once its bandwidth estimate lets it (our REMB).
    async def three_layers() -> dict[str, Any] | None:
        sent: dict[str, Any] = await publisher.page.evaluate(LAYERS_SENT)
        return sent if len(sent) == 3 and all(v[2] > 0 for v in sent.values()) else None

    layers = await poll(three_layers, "three simulcast layers sent", publisher, timeout_s=30)
    widths = sorted(v[0] for v in layers.values())
    assert widths[-1] == 1280 and widths[0] <= 320, layers

    full = await _viewer(server, room, "full", video_id)
    thin = await _viewer(server, room, "thin", video_id)
    decode_errors = DecodeErrors()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(decode_errors)
    try:
        # Default: the best layer. Asked for low: the quarter-size one.
        asked = time.monotonic()
        await thin.client.track_settings(video_id, quality="low")
        await _wait_width(full, lambda w: w == 1280, "full-size frames", 30)
        switch_down = await _wait_width(thin, lambda w: w == 320, "quarter-size frames", 15)
        await asyncio.sleep(2)
        rates = {"320x180 (l)": thin.rate_since(asked + switch_down + 0.3)}

        # A rendered size picks the smallest layer at least that large.
        asked = time.monotonic()
        await thin.client.track_settings(video_id, width=600, height=300)
        switch_up = await _wait_width(thin, lambda w: w == 640, "half-size frames", 10)
        before = len(full.frames)
        await asyncio.sleep(2)
        assert len(full.frames) - before > 10, "the other subscriber keeps its frames flowing"
        rates["640x360 (m)"] = thin.rate_since(asked + switch_up + 0.3)
        rates["1280x720 (h)"] = full.rate_since(time.monotonic() - 3)
        assert decode_errors.count == 0, "switches on request never break a decoder"

        # Its link becomes thin: loss drives it down to what fits, frames keep coming.
        await thin.client.track_settings(video_id, quality="high")
        await _wait_width(thin, lambda w: w == 1280, "back to full size", 15)
        # A 480 kbit/s link with a 200 ms drop-tail queue: the top layer does not fit.
        thin.link = Impairment(rate=480, seed=7).model()
        limited, limited_wall = time.monotonic(), time.time()
        drop_down = await _wait_width(thin, lambda w: w < 1280, "a lower layer under loss", 30)
        # aiortc's receiver NACKs a hole only when a newer one appears: a retransmission
        # lost to the same congestion leaves its jitter buffer waiting until 128 packets
        # overflow it (browsers re-NACK). Wait for that, then frames must keep flowing.
        await asyncio.sleep(3)
        await poll(lambda: _flowing(thin), "thin: lower-layer frames flowing", timeout_s=20)
        settled = time.monotonic()
        await asyncio.sleep(3)
        assert thin.frames_since(settled) > 10, "video keeps flowing on the lower layer"
        rates["thin link, lower layer"] = thin.rate_since(settled)
        # The link recovers: after some clean seconds the subscriber climbs back up.
        thin.link = None
        limited_changes = _target_changes(server, thin.client.id, limited_wall)
        was_lower = thin.size() != (1280, 720)
        climb = await _wait_width(thin, lambda w: w == 1280, "full size again", 45)
        assert full.frames_since(limited) > 30, "the unconstrained subscriber never stalled"
        for viewer in (full, thin):
            assert not viewer.errors, viewer.errors
        changes = _target_changes(server, thin.client.id, limited_wall)
        decided = changes[0][0] if changes else None
        MEASURED["simulcast_switch_s (track.settings -> first decoded frame of the layer)"] = {
            "down h->l": round(switch_down, 3),
            "up l->m": round(switch_up, 3),
        }
        MEASURED["simulcast_under_loss_s"] = {
            "server picks a lower layer": round(decided, 2) if decided is not None else None,
            "first lower-layer frame decoded": round(drop_down, 2),
            "layer changes while limited (s after limit, layer)": [
                (round(at, 1), layer) for at, layer in limited_changes
            ],
            "back to full size after the link recovers": round(climb, 1) if was_lower else None,
            "aiortc decode errors while lossy": decode_errors.count,
        }
        MEASURED["simulcast_video_bytes_per_s"] = {k: round(v) for k, v in rates.items()}
        MEASURED["simulcast_layers_published"] = layers
    finally:
        logging.getLogger("aiortc.rtcrtpreceiver").removeHandler(decode_errors)
        for viewer in (full, thin):
            await viewer.client.close()
            for reader in viewer.readers:
                reader.cancel()
        await publisher.page.close()

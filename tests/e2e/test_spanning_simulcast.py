"""Simulcast through a pipe: Chromium publishes three layers to a room's home worker, and a
subscriber the room spilled to the second worker (``--room-span-subscribers 1``) gets the
layer it asks for — every layer crosses the pipe on its own SSRC, and the spill worker's
own layer choice switches between them. The layer is read from the frames the viewer's own
VP8 decoder produces."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.test_simulcast import LAYERS_SENT, PUBLISH, Contexts, Viewer, _viewer, _wait_width
from helpers.browser import CHROMIUM, open_page, poll
from helpers.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

PORTS = (62000, 62199)
WORKER_PORTS = {"0": (62000, 62099), "1": (62100, 62199)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is not installed (scripts/test installs Debian's chromium)")
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("sfu-data")),
        [
            "--workers", "2",
            "--ice-port-range", f"{PORTS[0]}-{PORTS[1]}",
            "--room-span-subscribers", "1",
        ],
    ).start()  # fmt: skip
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "the supervisor must exit cleanly:\n" + "".join(process.log_lines[-40:])


def _worker_of(viewer: Viewer) -> str:
    pc = viewer.client.subscribe_pc
    assert pc is not None and pc.remoteDescription is not None
    ports = {
        int(m.group(1))
        for m in re.finditer(r"a=candidate:\S+ 1 udp \d+ \S+ (\d+) typ", pc.remoteDescription.sdp)
    }
    workers = {w for w, (low, high) in WORKER_PORTS.items() for p in ports if low <= p <= high}
    assert len(workers) == 1, (ports, workers)
    return workers.pop()


async def test_simulcast_layers_cross_the_pipe(server: ServerProcess, contexts: Contexts) -> None:
    room = "spanning-simulcast"
    context = await contexts()
    publisher = await open_page(context, "publisher", server.http + "/join")
    tracks = await publisher.page.evaluate(PUBLISH, [server.url, server.token(room, "chromium")])
    video_id = next(track_id for track_id, kind in tracks if kind == "video")

    async def three_layers() -> dict[str, Any] | None:
        sent: dict[str, Any] = await publisher.page.evaluate(LAYERS_SENT)
        return sent if len(sent) == 3 and all(v[2] > 0 for v in sent.values()) else None

    await poll(three_layers, "three simulcast layers sent", publisher, timeout_s=30)
    near = await _viewer(server, room, "near", video_id)  # home: the publisher and one more
    far = await _viewer(server, room, "far", video_id)  # spilled to the other worker
    try:
        assert _worker_of(near) != _worker_of(far)
        await _wait_width(far, lambda w: w == 1280, "full-size frames through the pipe", 30)
        await far.client.track_settings(video_id, quality="low")
        await _wait_width(far, lambda w: w == 320, "quarter-size frames through the pipe", 15)
        await far.client.track_settings(video_id, quality="medium")
        await _wait_width(far, lambda w: w == 640, "half-size frames through the pipe", 15)
        await _wait_width(near, lambda w: w == 1280, "the home subscriber keeps full size", 15)
        for viewer in (near, far):
            assert not viewer.errors, viewer.errors
    finally:
        for viewer in (near, far):
            await viewer.client.close()
            for reader in viewer.readers:
                reader.cancel()
        await publisher.page.close()

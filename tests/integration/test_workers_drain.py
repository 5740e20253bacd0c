"""SIGTERM/SIGINT to the supervisor of ``--workers 2``: forwarded once to every worker, calls
on both workers drain gracefully, and the supervisor exits 0 when the last one ends."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from helpers.media import FrameCounterTrack, collect
from helpers.server import ServerProcess

from signaling.client import Participant, SignalClient

pytestmark = pytest.mark.integration


async def _exited(process: ServerProcess, timeout: float) -> int:
    assert process.proc is not None
    deadline = time.monotonic() + timeout
    while (code := process.proc.poll()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the supervisor did not exit")
        await asyncio.sleep(0.05)
    return code


async def test_sigterm_drains_calls_on_every_worker(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path, ["--workers", "2", "--drain-deadline", "30"]).start()
    try:
        rooms = [f"room-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        publishers, viewers = [], []
        for room in rooms:
            publishers.append(
                await Participant.join(
                    process.url, process.token(room, "pub"), publish_tracks=[FrameCounterTrack()]
                )
            )
            viewers.append(await Participant.join(process.url, process.token(room, "view")))
        videos = []
        for viewer in viewers:
            tracks = await viewer.wait_remote_tracks(1, timeout=15)
            videos.append(next(iter(tracks.values())))
            await collect(videos[-1], 3, timeout=15)
        placed = [line for line in process.log_lines if '"room_placed"' in line]
        assert len({'"worker": "0"' in line for line in placed}) == 2, "one room per worker"

        process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for participant in publishers + viewers:
            notice = await participant.next_event("server.draining", timeout=5)
            assert 25 < notice["deadline"] <= 30
        async with aiohttp.ClientSession() as http, http.get(process.http + "/readyz") as response:
            assert response.status == 503
            assert 25 <= int(response.headers["Retry-After"]) <= 30
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await SignalClient.connect(process.url)
        assert refused.value.status == 503
        for video in videos:  # both calls go on while draining
            assert len(await collect(video, 10, timeout=5)) == 10

        await asyncio.gather(*(p.close() for p in publishers + viewers))
        assert await _exited(process, timeout=10) == 0
        drains = [line for line in process.log_lines if '"drain_requested"' in line]
        assert len(drains) == 3  # the supervisor's, and one per worker: forwarded once
        assert not any('"drain_cut_short"' in line for line in process.log_lines)
    finally:
        process.stop()


async def test_sigint_drains_faster(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path, ["--workers", "2", "--drain-deadline", "60"]).start()
    try:
        stayer = await SignalClient.connect(process.url)
        await stayer.request({"type": "join", "token": process.token("r", "x")})
        started = time.monotonic()
        process.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        notice = await stayer.next_event("server.draining", timeout=5)
        assert notice["deadline"] <= 5
        assert await stayer.wait_closed(timeout=10) == 1001
        assert await _exited(process, timeout=10) == 0
        assert time.monotonic() - started < 8
        await stayer.close()
    finally:
        process.stop()

"""Recordings with ``--workers 2``: sealed by a graceful drain; a killed worker's recording is
left alone by its restarted self and its siblings, and sealed by the next supervisor start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from helpers.probe import probe
from helpers.server import ServerProcess
from integration.test_consent_recording import _cli, _record

pytestmark = pytest.mark.integration

WORKERS = ["--workers", "2"]


def _home_pid(server: ServerProcess, room: str) -> int:
    worker = next(
        json.loads(line)["worker"]
        for line in server.log_lines
        if '"room_placed"' in line and room in line
    )
    pids = {
        json.loads(line)["worker"]: json.loads(line)["pid"]
        for line in server.log_lines
        if '"worker_ready"' in line
    }
    return int(pids[worker])


def _recordings(server: ServerProcess) -> list[dict[str, object]]:
    listed = _cli(server, "recordings", "list")
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, object]] = json.loads(listed.stdout)
    return result


def _playable_seconds(server: ServerProcess, recording_id: str, out: Path) -> float:
    exported = _cli(server, "recordings", "export", recording_id, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    result = probe(out)
    assert result.codecs == {"video": "vp8", "audio": "opus"}
    return result.duration_s


async def test_drain_seals_a_recording_made_on_a_worker(tmp_path: Path, room: str) -> None:
    server = ServerProcess(tmp_path / "data", WORKERS).start()
    agent, customer = await _record(server, room, 4.0)
    try:
        assert server.proc is not None
        server.proc.terminate()  # forwarded: the worker finishes the file as participants leave
        await customer.close()
        await agent.close()
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
    finally:
        await customer.close()
        await agent.close()
        server.stop()
    [recording] = _recordings(server)
    assert recording["state"] == "complete", recording
    assert _playable_seconds(server, str(recording["id"]), tmp_path / "r.webm") >= 3.0


async def test_killed_worker_recording_is_sealed_at_the_next_start(
    tmp_path: Path, room: str
) -> None:
    server = ServerProcess(tmp_path / "data", WORKERS).start()
    agent, customer = await _record(server, room, 4.0)
    try:
        os.kill(_home_pid(server, room), signal.SIGKILL)
        error = await customer.signal.next_event("error", timeout=20)
        assert error["code"] == "internal"
        # Restarted worker and sibling must not seal it: it may be a live recording to them.
        await asyncio.sleep(2.0)
        [left] = _recordings(server)
        assert left["state"] == "recording", left
    finally:
        await customer.close()
        await agent.close()
        assert server.stop() == 0
    again = ServerProcess(tmp_path / "data", WORKERS).start()  # the supervisor recovers
    try:
        [recording] = _recordings(again)
        assert recording["state"] == "interrupted", recording
        assert _playable_seconds(again, str(recording["id"]), tmp_path / "r.webm") >= 2.0
    finally:
        assert again.stop() == 0

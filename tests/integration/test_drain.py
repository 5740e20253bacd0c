"""Graceful drain of a real server process: SIGTERM during a call, the deadline, SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from helpers.media import FrameCounterTrack, collect
from helpers.server import ServerProcess
from helpers.webhook_receiver import WebhookReceiver

from signaling.client import Participant, SignalClient, SignalError

pytestmark = pytest.mark.integration

KEY = "drain-test-webhook-key-0123456789abcdef"


async def _exited(process: ServerProcess, timeout: float) -> int:
    assert process.proc is not None
    deadline = time.monotonic() + timeout
    while (code := process.proc.poll()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not exit")
        await asyncio.sleep(0.05)
    return code


def _shutdown_reason(process: ServerProcess) -> str:
    for line in process.log_lines:
        if '"shutting_down"' in line:
            return str(json.loads(line)["reason"])
    return ""


@pytest.mark.asyncio
async def test_sigterm_drains_a_live_call_and_exits_when_it_ends(tmp_path: Path, room: str) -> None:
    process = ServerProcess(tmp_path, ["--drain-deadline", "30"]).start()
    try:
        alice = await Participant.join(
            process.url, process.token(room, "alice"), publish_tracks=[FrameCounterTrack()]
        )
        bob = await Participant.join(process.url, process.token(room, "bob"))
        tracks = await bob.wait_remote_tracks(1, timeout=10)
        video = next(iter(tracks.values()))
        await collect(video, 3, timeout=10)

        early = await SignalClient.connect(process.url)  # open, not joined yet
        process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for participant in (alice, bob):
            notice = await participant.next_event("server.draining", timeout=5)
            assert 25 < notice["deadline"] <= 30
        async with aiohttp.ClientSession() as http:
            async with http.get(process.http + "/readyz") as response:
                assert response.status == 503
                assert 25 <= int(response.headers["Retry-After"]) <= 30
            async with http.get(process.http + "/healthz") as response:
                assert response.status == 200  # alive, just not taking joins
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await SignalClient.connect(process.url)
        assert refused.value.status == 503
        assert int(refused.value.headers["Retry-After"]) > 0  # type: ignore[index]
        # A socket opened before the drain cannot join either.
        with pytest.raises(SignalError) as late_join:
            await early.request({"type": "join", "token": process.token(room, "late")})
        assert late_join.value.code == "conflict" and late_join.value.reply["retry_after"] > 0
        assert (await early.next_event("server.draining", timeout=5))["deadline"] > 0
        assert await early.wait_closed(timeout=5) == 1001
        await early.close()
        # The call goes on while draining.
        assert len(await collect(video, 10, timeout=5)) == 10

        await alice.close()
        await asyncio.sleep(0.5)
        assert process.proc.poll() is None  # type: ignore[union-attr]  # bob is still here
        started = time.monotonic()
        await bob.close()
        assert await _exited(process, timeout=5) == 0
        assert time.monotonic() - started < 3
        assert _shutdown_reason(process) == "no participants left"
    finally:
        process.stop()


@pytest.mark.asyncio
async def test_deadline_ends_the_drain_and_events_are_flushed(tmp_path: Path, room: str) -> None:
    receiver = await WebhookReceiver(KEY).start()
    process = ServerProcess(
        tmp_path, ["--drain-deadline", "1.5", "--webhook-url", receiver.url, "--webhook-key", KEY]
    ).start()
    try:
        stayer = await SignalClient.connect(process.url)
        assert (await stayer.request({"type": "join", "token": process.token(room, "x")}))[
            "type"
        ] == "joined"
        started = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert (await stayer.next_event("server.draining", timeout=5))["deadline"] <= 1.5
        assert await stayer.wait_closed(timeout=5) == 1001  # going away, at the deadline
        await stayer.close()
        assert await _exited(process, timeout=5) == 0
        assert 1.4 < time.monotonic() - started < 4
        assert _shutdown_reason(process) == "drain deadline reached"
        # Events of the shutdown itself were delivered before the process exited.
        assert [e["event"] for e in receiver.events()][-2:] == ["participant_left", "room_finished"]
    finally:
        process.stop()
        await receiver.stop()


@pytest.mark.asyncio
async def test_sigint_drains_faster(tmp_path: Path, room: str) -> None:
    process = ServerProcess(tmp_path, ["--drain-deadline", "60"]).start()
    try:
        stayer = await SignalClient.connect(process.url)
        await stayer.request({"type": "join", "token": process.token(room, "x")})
        started = time.monotonic()
        process.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        notice = await stayer.next_event("server.draining", timeout=5)
        assert notice["deadline"] <= 5
        assert await _exited(process, timeout=10) == 0
        assert time.monotonic() - started < 7
        await stayer.close()
    finally:
        process.stop()

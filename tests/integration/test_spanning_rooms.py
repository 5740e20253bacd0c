"""A room spanning two workers: ``serve --workers 2 --room-span-subscribers 2``.

Real supervisor and worker processes, aiortc peers over loopback. The publisher and the
first two subscribers land on the room's home worker; later joins on the other worker,
which receives the room's tracks over the pipe (raw RTP on loopback UDP). Every subscriber
decodes the frame counter and the tone, the spill worker's subscribers get a keyframe
through the pipe (PLI back to the home worker), events cross the shards both ways, and
``GET /v1/rooms`` lists both workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import MediaStreamTrack
from helpers.media import (
    FrameCounterTrack,
    ToneTrack,
)
from helpers.placement import assert_decodes, served_by
from helpers.server import ServerProcess

from signaling.client import Participant

pytestmark = pytest.mark.integration

# Above the kernel's ephemeral range; apart from the other worker tests' ranges.
PORTS = (61800, 61999)
WORKER_PORTS = {"0": (61800, 61899), "1": (61900, 61999)}
T = 30.0
TONE_HZ = 660.0
GUEST_TONE_HZ = 880.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("sfu-data")),
        [
            "--workers", "2",
            "--ice-port-range", f"{PORTS[0]}-{PORTS[1]}",
            "--room-span-subscribers", "2",
        ],
    ).start()  # fmt: skip
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "the supervisor must exit cleanly:\n" + "".join(process.log_lines[-40:])


def _rooms(server: ServerProcess) -> dict[str, dict[str, Any]]:
    request = urllib.request.Request(server.http + "/v1/rooms")
    request.add_header("Authorization", "Bearer " + server.token("ops", "ops", grants=("admin",)))
    with urllib.request.urlopen(request, timeout=10) as response:
        return {room["id"]: room for room in json.loads(response.read())["rooms"]}


async def _wait_room(server: ServerProcess, room: str, participants: int) -> dict[str, Any]:
    deadline = time.monotonic() + T
    while True:
        entry = (await asyncio.to_thread(_rooms, server)).get(room)
        if entry is not None and entry["participants"] == participants:
            return entry
        assert time.monotonic() < deadline, f"room {room} never showed {participants}: {entry}"
        await asyncio.sleep(0.2)


def _worker(participant: Participant) -> str:
    return served_by(participant, WORKER_PORTS)


def _metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)", text, re.M))


async def test_room_spans_two_workers(server: ServerProcess) -> None:
    room = f"span-{uuid.uuid4().hex[:8]}"
    people: list[Participant] = []

    async def join(identity: str, tracks: list[MediaStreamTrack] | None = None) -> Participant:
        participant = await Participant.join(
            server.url, server.token(room, identity), publish_tracks=tracks or [], timeout=T
        )
        people.append(participant)
        return participant

    try:
        host = await join("host", [FrameCounterTrack(), ToneTrack(TONE_HZ)])
        video, audio = (
            next(t for t, info in host.published.items() if info["kind"] == kind)
            for kind in ("video", "audio")
        )
        near = [await join("near-1"), await join("near-2")]
        for participant in near:
            await assert_decodes(participant, video, tone=None, timeout=T)
        await asyncio.sleep(1.5)  # the keyframe the near subscribers started on is now stale
        far = [await join("far-1"), await join("far-2")]
        for participant in far:
            await participant.wait_remote_tracks([video, audio], T)  # offered: a subscribe PC
        home = _worker(host)
        assert [_worker(p) for p in near] == [home, home]
        spill = _worker(far[0])
        assert spill != home and _worker(far[1]) == spill

        # `joined` on the spill worker lists everyone and every track, as on one worker.
        assert {p["identity"] for p in far[1].joined["participants"]} == {
            "host",
            "near-1",
            "near-2",
            "far-1",
        }
        assert {t["id"] for t in far[0].joined["tracks"]} == {video, audio}
        entry = await _wait_room(server, room, 5)
        assert sorted(entry["workers"]) == ["0", "1"]

        # Media through the pipe: frames decode (a keyframe came via a PLI back through the
        # pipe: the last one was over a second old) and the tone is the tone.
        for participant in far:
            await assert_decodes(participant, video, tone=None, timeout=T)
            await assert_decodes(participant, audio, tone=TONE_HZ, timeout=T)
        assert await asyncio.to_thread(_metric, server, "sfu_pipe_keyframe_requests") >= 1
        assert await asyncio.to_thread(_metric, server, "sfu_pipe_tracks") == 2

        # Mute on the home worker is seen on the spill worker, and back.
        await host.mute(video, True)
        update = await far[0].next_event(
            "track.updated", lambda m: m["track"]["id"] == video, timeout=T
        )
        assert update["track"]["muted"] is True
        await host.mute(video, False)
        update = await far[0].next_event(
            "track.updated", lambda m: m["track"]["id"] == video, timeout=T
        )
        assert update["track"]["muted"] is False
        # Restarted on a keyframe after unmute
        await assert_decodes(far[0], video, tone=None, timeout=T)

        # A participant on the spill worker publishes: piped the other way.
        guest = far[1]
        (guest_tone,) = await guest.publish([ToneTrack(GUEST_TONE_HZ)], timeout=T)
        published = await host.next_event(
            "track.published", lambda m: m["track"]["id"] == guest_tone, timeout=T
        )
        assert published["track"]["participant"] == guest.id
        await assert_decodes(host, guest_tone, tone=GUEST_TONE_HZ, timeout=T)
        # Same worker: no pipe
        await assert_decodes(far[0], guest_tone, tone=GUEST_TONE_HZ, timeout=T)
        # The home worker hears both speakers (the guest's levels come through the pipe) and
        # both shards' clients are told.
        for listener in (near[1], far[0]):
            event = await listener.next_event(
                "speaker.changed", lambda e: set(e["speakers"]) == {host.id, guest.id}, timeout=T
            )
            assert len(event["speakers"]) == 2

        # Leaves cross the shards: on the home worker seen on the spill worker and back.
        leaving = near[0]
        await leaving.leave()
        people.remove(leaving)
        left = await far[0].next_event(
            "participant.left", lambda m: m["participant"]["id"] == leaving.id, timeout=T
        )
        assert left["participant"]["identity"] == "near-1"
        await guest.leave()
        people.remove(guest)
        gone = await host.next_event(
            "track.unpublished", lambda m: m["track"]["id"] == guest_tone, timeout=T
        )
        assert gone["track"]["participant"] == guest.id
        await host.next_event(
            "participant.left", lambda m: m["participant"]["id"] == guest.id, timeout=T
        )
        await _wait_room(server, room, 3)
        # The remaining pipe still carries media
        await assert_decodes(far[0], video, tone=None, timeout=T)

        # The home holds two now, so a fresh join would go home; a resume must still reach
        # the spill worker, which keeps far-1 (same id, same media).
        kept = far[0].id
        far[0].signal.abort()
        await asyncio.wait_for(far[0].signal.wait_closed(), T)
        assert await far[0].resume(timeout=T)
        assert far[0].id == kept and far[0].joined["resumed"] is True
        assert {p["identity"] for p in far[0].joined["participants"]} == {"host", "near-2"}
        await assert_decodes(far[0], video, tone=None, timeout=T)
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)


def _worker_pids(server: ServerProcess) -> dict[str, int]:
    """Latest PID of each worker id, from the supervisor's worker_ready log lines."""
    pids: dict[str, int] = {}
    for line in list(server.log_lines):
        if '"worker_ready"' in line:
            record = json.loads(line)
            pids[str(record["worker"])] = int(record["pid"])
    return pids


async def test_the_home_worker_dies_and_the_spill_shard_carries_on(server: ServerProcess) -> None:
    room = f"span-kill-{uuid.uuid4().hex[:8]}"
    people: list[Participant] = []

    async def join(identity: str, tracks: list[MediaStreamTrack] | None = None) -> Participant:
        participant = await Participant.join(
            server.url, server.token(room, identity), publish_tracks=tracks or [], timeout=T
        )
        people.append(participant)
        return participant

    try:
        host = await join("host", [FrameCounterTrack()])
        (video,) = host.published
        near = [await join("near-1"), await join("near-2")]
        far = await join("far")
        await far.wait_remote_tracks([video], T)
        home = _worker(host)
        assert _worker(far) != home

        os.kill(_worker_pids(server)[home], signal.SIGKILL)
        for participant in (host, *near):  # the home's clients are told to join again
            error = await participant.signal.next_event("error", timeout=T)
            assert error["code"] == "internal"
        # The spill worker's client stays, and sees the home's part of the room go.
        gone = await far.next_event(
            "track.unpublished", lambda m: m["track"]["id"] == video, timeout=T
        )
        assert gone["track"]["participant"] == host.id
        left: set[str] = set()
        for _ in range(3):
            event = await far.next_event("participant.left", timeout=T)
            left.add(event["participant"]["id"])
        assert left == {host.id, near[0].id, near[1].id}
        assert (await far.signal.request({"type": "ping"}, T))["type"] == "pong"

        # The room now lives on the spill worker: a rejoin lands there and meets far.
        back = await join("host-again", [FrameCounterTrack()])
        (again,) = back.published
        met = await far.next_event(
            "participant.joined", lambda m: m["participant"]["id"] == back.id, timeout=T
        )
        assert met["participant"]["identity"] == "host-again"
        await assert_decodes(far, again, tone=None, timeout=T)
        assert _worker(back) == _worker(far)
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)

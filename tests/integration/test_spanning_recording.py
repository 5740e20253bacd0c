"""Consent-gated recording in a room that spans two workers (``--room-span-subscribers 2``).

Real supervisor and worker processes, aiortc peers. The agent and two others are on the
room's home worker; the customer, who publishes, is spilled to the other worker. The
recording request crosses the shard link (same request id, notice, scope), the customer's
answer is handled where it is connected, its recorder runs on the spill worker (where its
media is published), both shards' clients see the same ``recording.state``, withdrawal and
the agent's ``recording.stop`` stop recorders wherever they are, and ffprobe reads the file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.media import FrameCounterTrack, ToneTrack
from helpers.placement import served_by
from helpers.probe import probe
from helpers.server import ServerProcess

from signaling.client import Participant

pytestmark = pytest.mark.integration

# Above the kernel's ephemeral range; apart from the other worker tests' ranges.
PORTS = (62400, 62599)
WORKER_PORTS = {"0": (62400, 62499), "1": (62500, 62599)}
T = 30.0
NOTICE = "This support call will be recorded for training. You may withdraw at any time."
AGENT_GRANTS = ("publish", "subscribe", "record")
STATE_KEYS = ("active", "recording", "participants", "requests")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("span-rec")),
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


def _http(server: ServerProcess, method: str, path: str) -> tuple[int, bytes]:
    token = server.token("admin-room", "admin", role="agent", grants=("admin",))
    request = urllib.request.Request(
        server.http + path, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _recordings(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    status, body = _http(server, "GET", f"/v1/recordings?room={room}")
    assert status == 200, body
    recordings: list[dict[str, Any]] = json.loads(body)["recordings"]
    return recordings


async def _sealed(server: ServerProcess, room: str, count: int) -> list[dict[str, Any]]:
    """The room's recordings once ``count`` exist and none is still being written."""
    deadline = time.monotonic() + T
    while True:
        found = await asyncio.to_thread(_recordings, server, room)
        if len(found) == count and all(r["state"] != "recording" for r in found):
            return found
        assert time.monotonic() < deadline, f"recordings never sealed: {found}"
        await asyncio.sleep(0.2)


def _worker_of(participant: Participant) -> str:
    return served_by(participant, WORKER_PORTS)


def _recorded(event: dict[str, Any], participant: Participant) -> bool:
    return any(p["id"] == participant.id for p in event["participants"])


def _state(event: dict[str, Any]) -> dict[str, Any]:
    return {key: event[key] for key in STATE_KEYS}


async def _join(
    server: ServerProcess, room: str, identity: str, *, publish: bool = False, agent: bool = False
) -> Participant:
    return await Participant.join(
        server.url,
        server.token(room, identity, role="agent", grants=AGENT_GRANTS)
        if agent
        else server.token(room, identity),
        publish_tracks=[FrameCounterTrack(), ToneTrack()] if publish else [],
        timeout=T,
    )


async def test_recording_started_before_the_spill_reaches_the_spilled_customer(
    server: ServerProcess, tmp_path: Path
) -> None:
    room = f"span-rec-{uuid.uuid4().hex[:8]}"
    people: list[Participant] = []
    try:
        agent = await _join(server, room, "agent", agent=True, publish=True)
        people.append(agent)
        people += [await _join(server, room, "near-1"), await _join(server, room, "near-2")]
        near = people[1]
        await agent.signal.request(
            {"type": "recording.start", "scope": ["audio", "video"], "notice": NOTICE}, T
        )
        asked_near = await near.next_event("consent.request", timeout=T)

        # The room is being recorded and still spills: the customer lands on the other worker.
        customer = await _join(server, room, "customer", publish=True)
        people.append(customer)
        assert _worker_of(customer) != _worker_of(agent)
        asked = await customer.next_event("consent.request", timeout=T)
        for key in ("request", "notice", "scope", "by", "purpose"):
            assert asked[key] == asked_near[key], key
        assert asked["notice"] == NOTICE and asked["by"] == agent.id
        await agent.wait_remote_tracks(2, timeout=T)

        await asyncio.sleep(1.5)  # media flows; nobody has answered
        assert await asyncio.to_thread(_recordings, server, room) == [], "zero bytes before"

        # A refusal on the home shard shows on the spill shard's clients too.
        await near.signal.request({"type": "consent.refuse", "request": asked["request"]}, T)
        await customer.next_event(
            "recording.state",
            lambda e: {"participant": near.id, "state": "refused"} in e["requests"],
            timeout=T,
        )
        granted = await customer.signal.request(
            {"type": "consent.grant", "request": asked["request"], "scope": ["audio", "video"]},
            T,
        )
        assert granted["type"] == "consent.granted" and granted["jti"]
        seen = [
            await p.next_event("recording.state", lambda e: _recorded(e, customer), timeout=T)
            for p in (agent, customer, near)
        ]
        assert seen[0]["active"] is True
        assert _state(seen[0]) == _state(seen[1]) == _state(seen[2]), seen
        assert {"participant": customer.id, "state": "granted"} in seen[0]["requests"]
        assert not _recorded(seen[0], agent), "the agent never consented: never recorded"
        await asyncio.sleep(4.0)

        for person in (agent, customer):  # only states sent from now on count
            person.signal.discard("recording.state")
        started = time.monotonic()
        await customer.signal.request({"type": "consent.withdraw", "jti": granted["jti"]}, T)
        await customer.next_event(
            "recording.state", lambda e: not _recorded(e, customer), timeout=T
        )
        local_ms = (time.monotonic() - started) * 1000
        await agent.next_event("recording.state", lambda e: not _recorded(e, customer), timeout=T)
        agent_ms = (time.monotonic() - started) * 1000
        print(
            f"withdraw → stopped on the spill worker {local_ms:.0f} ms, agent told {agent_ms:.0f}"
        )
        assert local_ms < 500

        [recording] = await _sealed(server, room, 1)
        assert recording["subject"] == "customer"
        status, media = await asyncio.to_thread(
            _http, server, "GET", f"/v1/recordings/{recording['id']}/media"
        )
        assert status == 200
        path = tmp_path / "customer.webm"
        path.write_bytes(media)
        result = probe(path)
        assert result.codecs == {"video": "vp8", "audio": "opus"}
        assert 3.0 <= result.duration_s <= 8.0, result

        # The ledger (shared by both workers) holds each step once, chain intact.
        audit = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "sfu", "audit", "verify", "--data-dir", str(server.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
        status, body = await asyncio.to_thread(_http, server, "GET", "/v1/subjects/customer/export")
        assert status == 200
        kinds = [r["kind"] for r in json.loads(body)["consent_records"] if r.get("room") == room]
        for kind in ("consent.requested", "consent.granted", "recording.started"):
            assert kinds.count(kind) == 1, kinds
        assert "consent.withdrawn" in kinds and "recording.stopped" in kinds
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)


async def test_agent_stop_ends_recorders_on_both_workers(server: ServerProcess) -> None:
    room = f"span-stop-{uuid.uuid4().hex[:8]}"
    people: list[Participant] = []
    try:
        agent = await _join(server, room, "agent", agent=True)
        people.append(agent)
        near = await _join(server, room, "near", publish=True)
        people += [near, await _join(server, room, "near-2")]
        customer = await _join(server, room, "customer", publish=True)
        people.append(customer)
        assert _worker_of(customer) != _worker_of(near)

        # Started after the spill: the request crosses the link to the customer's worker.
        await agent.signal.request(
            {"type": "recording.start", "scope": ["audio", "video"], "notice": NOTICE}, T
        )
        for person in (near, customer):
            asked = await person.next_event("consent.request", timeout=T)
            await person.signal.request(
                {"type": "consent.grant", "request": asked["request"], "scope": ["audio"]}, T
            )
        both = [
            await p.next_event(
                "recording.state",
                lambda e: _recorded(e, near) and _recorded(e, customer),
                timeout=T,
            )
            for p in (agent, customer)
        ]
        assert _state(both[0]) == _state(both[1])
        assert all(p["scope"] == ["audio"] for p in both[0]["participants"])
        await asyncio.sleep(2.0)

        for person in (agent, near, customer):  # only states sent from now on count
            person.signal.discard("recording.state")
        await agent.signal.request({"type": "recording.stop"}, T)
        for person in (agent, near, customer):
            await person.next_event("recording.state", lambda e: e["active"] is False, timeout=T)
        recordings = await _sealed(server, room, 2)  # one per worker, both finished
        assert {r["subject"] for r in recordings} == {"near", "customer"}
        # A new request is possible on either shard once the old one ended everywhere.
        await agent.signal.request(
            {"type": "recording.start", "scope": ["audio"], "notice": NOTICE}, T
        )
        await customer.next_event("consent.request", timeout=T)
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)

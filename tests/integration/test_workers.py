"""``serve --workers 2``: real supervisor and worker processes, aiortc peers over loopback.

Rooms are placed by load (not round-robin), every participant of a room reaches the room's
home worker through the one port, media flows on the worker's own UDP port range, a worker
killed with SIGKILL is restarted while its clients get ``error`` ``internal`` and can rejoin,
and the other worker's call keeps decoding frames throughout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from helpers.calls import CallResult, join, timed_call
from helpers.media import collect, read_frame_counter
from helpers.server import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

from signaling.client import SignalClient

pytestmark = pytest.mark.integration

# Above the kernel's ephemeral range (32768-60999 here): no other socket lands in it by chance.
PORTS = (61400, 61599)
WORKER_PORTS = {"0": (61400, 61499), "1": (61500, 61599)}
T = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("sfu-data")),
        ["--workers", "2", "--ice-port-range", f"{PORTS[0]}-{PORTS[1]}"],
    ).start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, "the supervisor must exit cleanly:\n" + "".join(process.log_lines[-40:])


def _get(server: ServerProcess, path: str, token: str | None = None) -> Any:
    request = urllib.request.Request(server.http + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
    return json.loads(body) if path != "/metrics" else body


def _rooms(server: ServerProcess) -> dict[str, dict[str, Any]]:
    admin = server.token("ops", "admin", grants=("admin",))
    return {room["id"]: room for room in _get(server, "/v1/rooms", admin)["rooms"]}


async def _wait_room(
    server: ServerProcess, room: str, participants: int, timeout: float = T
) -> dict[str, Any]:
    """The room's /v1/rooms entry once the load reports show ``participants``."""
    deadline = time.monotonic() + timeout
    while True:
        entry = (await asyncio.to_thread(_rooms, server)).get(room)
        if entry is not None and entry["participants"] == participants:
            return entry
        assert time.monotonic() < deadline, f"room {room} never showed {participants}: {entry}"
        await asyncio.sleep(0.2)


def _worker_pids(server: ServerProcess) -> dict[str, int]:
    """Latest PID of each worker id, from the supervisor's worker_ready log lines."""
    pids: dict[str, int] = {}
    for line in list(server.log_lines):
        if '"worker_ready"' in line:
            record = json.loads(line)
            pids[str(record["worker"])] = int(record["pid"])
    return pids


def _candidate_ports(sdp: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ 1 udp \d+ \S+ (\d+) typ", sdp)}


def _server_ports(call: CallResult) -> set[int]:
    ports: set[int] = set()
    for participant in (call.publisher, call.subscriber):
        for pc in (participant.publish_pc, participant.subscribe_pc):
            if pc is not None and pc.remoteDescription is not None:
                ports |= _candidate_ports(pc.remoteDescription.sdp)
    return ports


async def _still_decoding(call: CallResult) -> int:
    track = next(iter(call.subscriber.remote_tracks.values()))
    frames = await collect(track, 10, timeout=T)
    counters = [read_frame_counter(frame) for frame in frames]  # type: ignore[arg-type]
    assert all(c is not None for c in counters)
    return len(frames)


@pytest_asyncio.fixture
async def calls(server: ServerProcess) -> AsyncIterator[list[CallResult]]:
    made: list[CallResult] = []
    yield made
    for call in made:
        await asyncio.gather(
            call.publisher.close(), call.subscriber.close(), return_exceptions=True
        )


async def _call(server: ServerProcess, room: str, calls: list[CallResult]) -> CallResult:
    call = await timed_call(
        server.url, server.token(room, "alice"), server.token(room, "bob"), relay=False
    )
    calls.append(call)
    return call


async def test_rooms_placed_by_load_media_on_home_worker(
    server: ServerProcess, calls: list[CallResult]
) -> None:
    busy, idle, third = (f"room-{uuid.uuid4().hex[:8]}" for _ in range(3))
    call = await _call(server, busy, calls)  # publisher + subscriber: the busy worker
    busy_entry = await _wait_room(server, busy, 2)
    assert len(busy_entry["workers"]) == 1
    home = busy_entry["workers"][0]
    assert _server_ports(call) and all(
        WORKER_PORTS[home][0] <= port <= WORKER_PORTS[home][1] for port in _server_ports(call)
    ), (home, _server_ports(call))

    lone = await join(server.url, server.token(idle, "carol"))
    try:
        idle_entry = await _wait_room(server, idle, 1)
        assert idle_entry["workers"] != [home], "a new room goes to the less loaded worker"
        await asyncio.sleep(1.5)  # a load report after carol's join
        # Round-robin would put the third room back on the busy worker; load says otherwise.
        late = await join(server.url, server.token(third, "dave"))
        try:
            third_entry = await _wait_room(server, third, 1)
            assert third_entry["workers"] == idle_entry["workers"]
        finally:
            await late.close()
    finally:
        await lone.close()
    assert await _still_decoding(call) >= 10


async def test_metrics_merge_every_worker(server: ServerProcess, calls: list[CallResult]) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    await _call(server, room, calls)
    await _wait_room(server, room, 2)
    text = await asyncio.to_thread(_get, server, "/metrics")
    for worker in ("0", "1"):
        assert f'sfu_worker_up{{worker="{worker}"}} 1' in text
        assert re.search(rf'^sfu_participants{{worker="{worker}"}} \d', text, re.M)
    participants = sum(
        float(v) for v in re.findall(r'^sfu_participants\{worker="\d+"\} (\S+)', text, re.M)
    )
    assert participants >= 2
    assert text.count("# TYPE sfu_participants gauge") == 1  # one family, both workers in it
    families = {family.name: family for family in text_string_to_metric_families(text)}
    up = {sample.labels["worker"]: sample.value for sample in families["sfu_worker_up"].samples}
    assert up == {"0": 1.0, "1": 1.0}  # the merged text is valid Prometheus exposition
    lag = families["sfu_event_loop_lag_seconds"]
    assert {s.labels["worker"] for s in lag.samples if s.name.endswith("_count")} == {"0", "1"}


async def test_protocol_errors_pass_through_the_relay(server: ServerProcess) -> None:
    signal_client = await SignalClient.connect(server.url, timeout=T)
    try:
        await signal_client.send({"type": "join", "token": "not-a-token", "id": "j1"})
        reply = await signal_client.next_event("error", timeout=T)
        assert reply["code"] == "unauthenticated" and reply["id"] == "j1"
        assert await signal_client.wait_closed(T) == 4401
    finally:
        await signal_client.close()
    signal_client = await SignalClient.connect(server.url, timeout=T)
    try:
        await signal_client.send({"type": "ping"})
        reply = await signal_client.next_event("error", timeout=T)
        assert reply["code"] == "unauthenticated"
        assert await signal_client.wait_closed(T) == 4401
    finally:
        await signal_client.close()


async def test_killed_worker_restarts_and_other_calls_never_notice(
    server: ServerProcess, calls: list[CallResult]
) -> None:
    doomed_room, safe_room = f"room-{uuid.uuid4().hex[:8]}", f"room-{uuid.uuid4().hex[:8]}"
    doomed = await _call(server, doomed_room, calls)
    doomed_worker = (await _wait_room(server, doomed_room, 2))["workers"][0]
    safe = await _call(server, safe_room, calls)
    safe_worker = (await _wait_room(server, safe_room, 2))["workers"][0]
    assert safe_worker != doomed_worker
    old_pid = _worker_pids(server)[doomed_worker]

    os.kill(old_pid, signal.SIGKILL)
    for participant in (doomed.publisher, doomed.subscriber):
        error = await participant.signal.next_event("error", timeout=T)
        assert error["code"] == "internal" and "join again" in error["message"]
        assert await participant.signal.wait_closed(T) == 1011
    assert await _still_decoding(safe) >= 10  # the other worker's call keeps decoding

    deadline = time.monotonic() + T
    while _worker_pids(server).get(doomed_worker, old_pid) == old_pid:
        assert time.monotonic() < deadline, "the dead worker was not restarted"
        await asyncio.sleep(0.2)
    ready = await asyncio.to_thread(_get, server, "/readyz")
    assert sorted(ready["workers"]) == ["0", "1"]

    rejoined = await _call(server, doomed_room, calls)  # its clients can rejoin
    assert await _still_decoding(rejoined) >= 10
    assert await _still_decoding(safe) >= 10


async def test_http_api_and_pages_are_served_through_the_supervisor(server: ServerProcess) -> None:
    def post_session() -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            server.http + "/v1/sessions", data=b'{"customer": "Zoe"}', method="POST"
        )
        request.add_header("Authorization", f"Bearer {server.token('x', 'agent', role='agent')}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())

    status, body = await asyncio.to_thread(post_session)
    assert status == 201
    assert body["join_url"].startswith(server.http + "/join?token=")  # the public origin
    customer = await join(server.url, body["customer_token"])  # the token works on any worker
    try:
        assert customer.room == body["room"]
    finally:
        await customer.close()
    with urllib.request.urlopen(server.http + "/join", timeout=10) as response:
        assert response.status == 200 and b"<html" in response.read().lower()
    assert (await asyncio.to_thread(_get, server, "/healthz"))["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(_get, server, "/v1/rooms", server.token("x", "nobody"))
    assert refused.value.code == 403

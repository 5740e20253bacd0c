"""A room spanning two nodes of a cluster: two real server processes sharing a real
redis-server, ``--room-span-subscribers 2``, aiortc peers over loopback.

The publisher and two subscribers join node A (the room's home); later joins reaching node B
are served there as a spill shard (not redirected), which receives the tracks over an SRTP
pipe whose keys the home wrote to Redis beside the claim. Every subscriber decodes frames and
the tone, a keyframe crosses back as a PLI, the datagrams captured on lo are SRTP that only
the key from Redis opens, the keys change with the claim's epoch, and a link attempt without
a valid token is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pylibsrtp
import pytest
import redis
from helpers.cluster import admin_get, start_node
from helpers.loopback_tap import capture_udp
from helpers.media import (
    FrameCounterTrack,
    ToneTrack,
)
from helpers.placement import assert_decodes, served_by
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess

from sfu.cluster.link_auth import sign_link
from sfu.cluster.node_span import NODE_LINK_PATH
from sfu.pipe_crypto import new_key
from signaling.client import Participant

pytestmark = pytest.mark.integration

assert shutil.which("redis-server"), "redis-server is missing: scripts/test installs it"

T = 30.0
TTL_S = 1.5
TONE_HZ = 660.0
NODE_PORTS = {"node-a": (63100, 63199), "node-b": (63200, 63299)}


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for node_id, (low, high) in NODE_PORTS.items():
            extra = ["--room-span-subscribers", "2", "--ice-port-range", f"{low}-{high}"]
            started.append(
                start_node(tmp_path, redis_server.url, node_id, ttl_s=TTL_S, extra=extra)
            )
        yield started
    finally:
        for node in started:
            node.stop()


def _node_of(participant: Participant) -> str:
    return served_by(participant, NODE_PORTS)


def _metric(node: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(node.http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)", text, re.M))


def _room(node: ServerProcess, room: str) -> dict[str, Any] | None:
    status, body = admin_get(node, "/v1/rooms")
    assert status == 200, body
    return next((r for r in body["rooms"] if r["id"] == room), None)


async def _until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + T
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.2)


def _link_status(node: ServerProcess, token: str | None) -> int:
    """GET the link path as a WebSocket upgrade would; the HTTP status."""
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(node.http + NODE_LINK_PATH, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _span(client: redis.Redis, room: str) -> dict[str, str]:
    raw = client.hgetall(f"{{sfu-cluster}}:span:{room}")
    return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]


async def test_room_spans_two_nodes_over_an_srtp_pipe(
    nodes: list[ServerProcess], redis_server: RedisServer
) -> None:
    node_a, node_b = nodes
    client = redis.Redis.from_url(redis_server.url)
    room = f"nodespan-{uuid.uuid4().hex[:8]}"
    people: list[Participant] = []

    async def join(node: ServerProcess, identity: str, tracks: Any = None) -> Participant:
        participant = await Participant.join(
            node.url, node.token(room, identity), publish_tracks=tracks or [], timeout=T
        )
        people.append(participant)
        return participant

    try:
        # Below the limit a join reaching B is redirected to A, as before.
        host = await join(node_a, "host", [FrameCounterTrack(), ToneTrack(TONE_HZ)])
        video, audio = (
            next(t for t, info in host.published.items() if info["kind"] == kind)
            for kind in ("video", "audio")
        )
        near = [await join(node_b, "near-1"), await join(node_a, "near-2")]
        for participant in near:
            await assert_decodes(participant, video, tone=None, timeout=T)
        assert [_node_of(p) for p in [host, *near]] == ["node-a"] * 3
        # A's heartbeat writes its 3 participants into the claim: over 2, B serves joins.
        await _until(lambda: (_room(node_b, room) or {}).get("participants") == 3, "claim counts 3")
        await asyncio.sleep(1.5)  # the keyframe the near subscribers got is now stale
        far = [await join(node_b, "far-1"), await join(node_b, "far-2")]
        for participant in far:
            await participant.wait_remote_tracks([video, audio], T)  # offered: a subscribe PC
        assert [_node_of(p) for p in far] == ["node-b", "node-b"]
        assert {p["identity"] for p in far[1].joined["participants"]} == {
            "host", "near-1", "near-2", "far-1",
        }  # fmt: skip
        assert {t["id"] for t in far[0].joined["tracks"]} == {video, audio}

        # Media through the SRTP pipe: frames, the tone, and a keyframe asked back by PLI.
        for participant in far:
            await assert_decodes(participant, video, tone=None, timeout=T)
            await assert_decodes(participant, audio, tone=TONE_HZ, timeout=T)
        assert await asyncio.to_thread(_metric, node_a, "sfu_pipe_keyframe_requests") >= 1
        assert await asyncio.to_thread(_metric, node_a, "sfu_pipe_tracks") == 2
        assert await asyncio.to_thread(_metric, node_b, "sfu_pipe_rtp_packets") > 50
        assert await asyncio.to_thread(_metric, node_b, "sfu_pipe_srtp_auth_failures") == 0
        # Keys in Redis, bound to the claim's epoch; both nodes list the room with both.
        span = _span(client, room)
        # On the wire to B's pipe: SRTP that only the home's key from Redis opens.
        await _wire_is_srtp(node_b, bytes.fromhex(span["home_key"]))
        epoch = client.hget(f"{{sfu-cluster}}:room:{room}", "epoch")
        assert span["home"] == "node-a" and span["spill"] == "node-b"
        assert isinstance(epoch, bytes) and span["epoch"] == epoch.decode()
        assert len(bytes.fromhex(span["home_key"])) == 44
        assert span["home_key"] != span["spill_key"]
        for node in nodes:
            entry = await asyncio.to_thread(_room, node, room)
            assert entry is not None and entry["nodes"] == ["node-a", "node-b"], entry

        # Events cross nodes: a leave on A is seen on B.
        await near[0].leave()
        people.remove(near[0])
        left = await far[0].next_event(
            "participant.left", lambda m: m["participant"]["identity"] == "near-1", timeout=T
        )
        assert left["participant"]["id"] == near[0].id

        # Everyone leaves: the claim goes; the room re-forms on A at a new epoch, spills
        # again, and the pipe has new keys.
        first_epoch, first_keys = span["epoch"], (span["home_key"], span["spill_key"])
        await asyncio.gather(*(p.close() for p in people))
        people.clear()
        await _until(lambda: not client.exists(f"{{sfu-cluster}}:room:{room}"), "claim gone")
        host = await join(node_a, "host", [FrameCounterTrack()])
        (video,) = host.published
        await join(node_a, "near-1")
        await join(node_a, "near-2")
        await _until(lambda: (_room(node_b, room) or {}).get("participants") == 3, "claim counts 3")
        again = await join(node_b, "far-1")
        await assert_decodes(again, video, tone=None, timeout=T)
        assert _node_of(again) == "node-b"
        span = _span(client, room)
        assert int(span["epoch"]) > int(first_epoch)
        assert (span["home_key"], span["spill_key"]) != first_keys
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)
        client.close()


async def _wire_is_srtp(node_b: ServerProcess, home_key: bytes) -> None:
    """Capture what A sends to B's pipe port (from B's log): every datagram is SRTP or
    SRTCP that the home's key opens and another key does not; the RTP payload on the wire
    is not the payload inside."""
    line = next(line for line in node_b.log_lines if '"node_shard_opened"' in line)
    port = int(json.loads(line)["pipe_port"])
    wire = await asyncio.to_thread(capture_udp, port, 1.5)
    rtp = [d for d in wire if not 192 <= d[1] <= 223]
    assert len(rtp) > 20, len(rtp)
    right = pylibsrtp.Session(_policy(home_key))
    wrong = pylibsrtp.Session(_policy(new_key()))
    for datagram in rtp:
        plain = right.unprotect(datagram)
        assert plain[:12] == datagram[:12] and plain[12:] not in datagram
        with pytest.raises(pylibsrtp.Error):
            wrong.unprotect(datagram)


def _policy(key: bytes) -> pylibsrtp.Policy:
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    )
    policy.window_size = 1024
    return policy


async def test_an_unauthenticated_link_attempt_is_refused(
    nodes: list[ServerProcess], redis_server: RedisServer
) -> None:
    node_a, _ = nodes
    before = await asyncio.to_thread(_metric, node_a, "sfu_node_link_refused")
    assert await asyncio.to_thread(_link_status, node_a, None) == 401
    assert await asyncio.to_thread(_link_status, node_a, "garbage.token") == 401
    forged = sign_link(b"x" * 32, room="any", node="intruder", now=time.time())
    assert await asyncio.to_thread(_link_status, node_a, forged) == 401
    after = await asyncio.to_thread(_metric, node_a, "sfu_node_link_refused")
    assert after == before + 3
    # A genuine token (the cluster's secret) for another room: upgraded, then refused.
    client = redis.Redis.from_url(redis_server.url)
    try:
        raw = client.get("{sfu-cluster}:link-secret")
        assert isinstance(raw, bytes)
    finally:
        client.close()
    token = sign_link(bytes.fromhex(raw.decode()), room="r-1", node="b", now=time.time())
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            node_a.http + NODE_LINK_PATH, headers={"Authorization": f"Bearer {token}"}
        ) as ws,
    ):
        hello = {"op": "hello", "room": "r-2", "pipe_host": "127.0.0.1", "pipe_port": 9}
        await ws.send_str(json.dumps(hello | {"node": "b", "state": {}}))
        message = await ws.receive(timeout=T)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4409


async def test_the_spill_node_takes_the_room_when_the_home_node_dies(
    nodes: list[ServerProcess], redis_server: RedisServer
) -> None:
    node_a, node_b = nodes
    client = redis.Redis.from_url(redis_server.url)
    room = f"nodespan-kill-{uuid.uuid4().hex[:8]}"
    people: list[Participant] = []

    async def join(node: ServerProcess, identity: str, tracks: Any = None) -> Participant:
        participant = await Participant.join(
            node.url, node.token(room, identity), publish_tracks=tracks or [], timeout=T
        )
        people.append(participant)
        return participant

    try:
        host = await join(node_a, "host", [FrameCounterTrack()])
        await join(node_a, "near-1")
        await join(node_a, "near-2")
        await _until(lambda: (_room(node_b, room) or {}).get("participants") == 3, "claim counts 3")
        far = await join(node_b, "far-1", [FrameCounterTrack()])
        (video,) = host.published
        await assert_decodes(far, video, tone=None, timeout=T)
        assert _node_of(far) == "node-b"

        assert node_a.proc is not None
        node_a.proc.kill()  # SIGKILL: no goodbye to Redis, the link just ends
        node_a.proc.wait(timeout=5)
        # B's client stays and sees the home's participants leave and tracks go ...
        left = await far.next_event(
            "participant.left", lambda m: m["participant"]["identity"] == "host", timeout=T
        )
        assert left["participant"]["id"] == host.id
        # ... and once A's record expires B claims the room: a new join lands beside it.
        claim_key = f"{{sfu-cluster}}:room:{room}"
        await _until(lambda: client.hget(claim_key, "node") == b"node-b", "B holds the claim")
        late = await join(node_b, "late")
        assert {p["identity"] for p in late.joined["participants"]} == {"far-1"}
        (far_video,) = far.published
        await assert_decodes(late, far_video, tone=None, timeout=T)
        assert _node_of(late) == "node-b"
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)
        client.close()


async def test_recording_reaches_participants_on_the_spill_node(
    nodes: list[ServerProcess],
) -> None:
    """An agent on the home node asks to record; the customer spilled to node B is asked the
    same question on B, is recorded there (its own producer, not a piped copy) once it
    agrees, both nodes show one recording state, and the agent's stop ends both recorders."""
    node_a, node_b = nodes
    room = f"nodespan-rec-{uuid.uuid4().hex[:8]}"
    people: list[Participant] = []
    grants = ("publish", "subscribe", "record")

    async def join(node: ServerProcess, identity: str, *, agent: bool = False) -> Participant:
        token = (
            node.token(room, identity, role="agent", grants=grants)
            if agent
            else node.token(room, identity)
        )
        participant = await Participant.join(
            node.url, token, publish_tracks=[FrameCounterTrack(), ToneTrack()], timeout=T
        )
        people.append(participant)
        return participant

    def recorded(event: dict[str, Any], *who: Participant) -> bool:
        ids = {p["id"] for p in event["participants"]}
        return all(p.id in ids for p in who)

    try:
        agent = await join(node_a, "agent", agent=True)
        near = await join(node_a, "near")
        await join(node_a, "near-2")
        await _until(lambda: (_room(node_b, room) or {}).get("participants") == 3, "claim counts 3")
        customer = await join(node_b, "customer")
        assert [_node_of(p) for p in (agent, near, customer)] == ["node-a", "node-a", "node-b"]

        await agent.signal.request(
            {"type": "recording.start", "scope": ["audio", "video"], "notice": "Recorded."}, T
        )
        for person in (near, customer):
            asked = await person.next_event("consent.request", timeout=T)
            await person.signal.request(
                {"type": "consent.grant", "request": asked["request"], "scope": ["audio"]}, T
            )
        states = [
            await p.next_event("recording.state", lambda e: recorded(e, near, customer), T)
            for p in (agent, customer)
        ]
        assert {k: states[0][k] for k in ("active", "participants")} == {
            k: states[1][k] for k in ("active", "participants")
        }
        await asyncio.sleep(2.0)
        for person in (agent, customer):
            person.signal.discard("recording.state")
        await agent.signal.request({"type": "recording.stop"}, T)
        for person in (agent, customer):
            await person.next_event("recording.state", lambda e: e["active"] is False, timeout=T)

        def sealed(node: ServerProcess) -> list[dict[str, Any]] | None:
            status, body = admin_get(node, f"/v1/recordings?room={room}")
            assert status == 200, body
            found: list[dict[str, Any]] = body["recordings"]
            return found if found and all(r["state"] != "recording" for r in found) else None

        on_a, on_b = (
            await _until(lambda: sealed(node_a), "A sealed"),
            await _until(lambda: sealed(node_b), "B sealed"),
        )
        assert [r["subject"] for r in on_a] == ["near"]
        assert [r["subject"] for r in on_b] == ["customer"]
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)

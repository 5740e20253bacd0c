"""A cluster of two nodes where one runs ``--workers 2``: its supervisor is the node (one
registry entry with ``workers: 2``, the claims), redirects joins for rooms hosted elsewhere,
and rooms it hosts are redirected to from the other node; media flows either way."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cluster import admin_get, start_node, wait_for
from helpers.media import FrameCounterTrack, collect
from helpers.redis_server import RedisServer
from helpers.server import ServerProcess

from signaling.client import Participant, SignalClient, SignalError

pytestmark = pytest.mark.integration

assert shutil.which("redis-server"), "redis-server is missing: scripts/test installs it"

TTL_S = 1.5
T = 20.0


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        started.append(start_node(tmp_path, redis_server.url, "node-a", ttl_s=TTL_S))
        started.append(
            start_node(tmp_path, redis_server.url, "node-b", ttl_s=TTL_S, extra=["--workers", "2"])
        )
        yield started
    finally:
        for node in started:
            node.stop()


def _csp(node: ServerProcess) -> str:
    with urllib.request.urlopen(node.http + "/join", timeout=5) as response:
        return str(response.headers["Content-Security-Policy"])


async def _redirected_to(entry: ServerProcess, room: str) -> str:
    """The bare protocol: a join on ``entry`` gets ``redirect`` with its id, then 1000."""
    raw = await SignalClient.connect(entry.url)
    try:
        reply = await raw.request({"type": "join", "token": entry.token(room, "probe")})
        assert reply["type"] == "redirect" and reply["id"], reply
        assert await raw.wait_closed(timeout=5) == 1000
        return str(reply["url"])
    finally:
        await raw.close()


async def _media_through(entry: ServerProcess, host: ServerProcess, room: str) -> None:
    """alice publishes on ``host``; bob joins through ``entry``, follows the redirect to
    ``host`` and decodes her frames."""
    alice = await Participant.join(
        host.url, host.token(room, "alice"), publish_tracks=[FrameCounterTrack()], timeout=T
    )
    try:
        assert await _redirected_to(entry, room) == host.url
        bob = await Participant.join(entry.url, entry.token(room, "bob"), timeout=T)
        try:
            assert bob.signal.url == host.url
            tracks = await bob.wait_remote_tracks(1, timeout=T)
            frames = await collect(next(iter(tracks.values())), 5, timeout=T)
            assert len(frames) == 5
        finally:
            await bob.close()
    finally:
        await alice.close()


@pytest.mark.asyncio
async def test_a_workers_node_is_one_node_of_the_cluster(
    nodes: list[ServerProcess], room: str
) -> None:
    node_a, node_b = nodes
    for node in nodes:
        status, body = admin_get(node, "/v1/nodes")
        assert status == 200, body
        listed = {n["id"]: n for n in body["nodes"]}
        assert set(listed) == {"node-a", "node-b"}  # the workers never register themselves
        assert listed["node-b"]["workers"] == 2 and listed["node-a"]["workers"] == 1
        assert listed["node-b"]["url"] == node_b.url

    alice = await Participant.join(
        node_b.url, node_b.token(room, "alice"), publish_tracks=[FrameCounterTrack()], timeout=T
    )
    try:
        bob = await Participant.join(node_a.url, node_a.token(room, "bob"), timeout=T)
        try:
            assert bob.signal.url == node_b.url  # redirected to the supervisor's port
            tracks = await bob.wait_remote_tracks(1, timeout=T)
            assert len(await collect(next(iter(tracks.values())), 5, timeout=T)) == 5

            def listed_on_one_worker(node: ServerProcess) -> bool:
                status, body = admin_get(node, "/v1/rooms")
                rows = body["rooms"] if status == 200 else []
                return (
                    len(rows) == 1
                    and rows[0]["id"] == room
                    and rows[0]["node"] == "node-b"
                    and rows[0]["participants"] == 2
                    and len(rows[0]["workers"]) == 1
                    and rows[0]["workers"][0] in {"0", "1"}
                )

            # Both nodes see the room on node B, on the one worker that hosts it.
            for node in nodes:
                await wait_for(lambda node=node: listed_on_one_worker(node), timeout=10)
            samples = node_b.metrics()
            assert samples['sfu_cluster_rooms_claimed{node="node-b"}'] == 1
            assert samples['sfu_cluster_available{node="node-b"}'] == 1
            # Pages served through the supervisor (by a worker) may follow a redirect to
            # node A: their CSP lists it (the supervisor passes the nodes on to its workers).
            await wait_for(lambda: f"ws://127.0.0.1:{node_a.port}" in _csp(node_b), timeout=10)
            # The workers' private routes are not reachable through the public port.
            status, _ = admin_get(node_b, "/internal/load")
            assert status == 404
        finally:
            await bob.close()
    finally:
        await alice.close()
    # Everyone left: the supervisor gives the claim up, and the room is gone cluster-wide.
    await wait_for(lambda: admin_get(node_a, "/v1/rooms")[1]["rooms"] == [], timeout=10)


@pytest.mark.asyncio
async def test_redirects_both_ways_between_a_process_and_a_supervisor(
    nodes: list[ServerProcess], room: str
) -> None:
    node_a, node_b = nodes
    # A room on the single process, joined through the supervisor: it answers `redirect`.
    await _media_through(node_b, node_a, room + "-a")
    assert node_b.metrics()['sfu_cluster_redirects_total{node="node-b"}'] >= 2
    # A room on the supervisor's workers, joined through the single process.
    await _media_through(node_a, node_b, room + "-b")


def _ready(node: ServerProcess) -> int:
    try:
        with urllib.request.urlopen(node.http + "/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.asyncio
async def test_a_resume_needs_no_redis_but_a_fresh_join_does(
    nodes: list[ServerProcess], redis_server: RedisServer, room: str
) -> None:
    """Redis down: calls go on and a dropped socket is resumed on either kind of node (the
    room is held here already); a new join is refused with `internal`, the socket kept."""
    joined: list[Participant] = []
    try:
        for node in nodes:
            joined.append(
                await Participant.join(
                    node.url,
                    node.token(f"{room}-{node.port}", "alice"),
                    publish_tracks=[FrameCounterTrack()],
                    timeout=T,
                )
            )
        # Both rooms are listed (for node B: its workers' load reports name them).
        await wait_for(lambda: len(admin_get(nodes[1], "/v1/rooms")[1]["rooms"]) == 2, timeout=10)
        redis_server.stop()
        for node in nodes:
            await wait_for(lambda node=node: _ready(node) == 503, timeout=10)
        for node, alice in zip(nodes, joined, strict=True):
            before = alice.id
            assert await alice.resume(timeout=T) is True
            assert alice.id == before
            raw = await SignalClient.connect(node.url)
            try:
                token = node.token(f"{room}-{node.port}", "bob")
                for _ in range(2):  # the socket stays open: a second try is answered alike
                    with pytest.raises(SignalError) as refused:
                        await raw.request({"type": "join", "token": token})
                    assert refused.value.code == "internal", refused.value
                    assert refused.value.message == "cluster state unavailable"
            finally:
                await raw.close()
    finally:
        for alice in joined:
            await alice.close()

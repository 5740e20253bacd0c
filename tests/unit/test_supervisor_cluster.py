"""sfu.workers.cluster on a real redis-server: the supervisor's node claims rooms for its
workers, keeps a claim while a connection or a worker report names the room (a participant
awaiting resume) and gives it up after; the registry entry counts the workers."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers.redis_server import RedisServer

from sfu.cluster.state import ClusterState
from sfu.settings import Settings
from sfu.workers.cluster import SupervisorNode
from sfu.workers.pool import WorkerPool

pytestmark = pytest.mark.asyncio

assert shutil.which("redis-server"), "redis-server is missing: scripts/test installs it"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[ClusterState]:
    cluster = ClusterState.from_url(redis_server.url)
    await cluster.client.flushall()
    yield cluster  # closed by SupervisorNode.stop()


def _pool(tmp_path: Path) -> WorkerPool:
    """Two worker slots that look ready (no processes: their load reports are set by hand)."""
    pool = WorkerPool(Settings(data_dir=tmp_path), tmp_path, 2)
    for slot in pool.slots:
        slot.ready = True
        slot.take_report({"rooms": {}, "tracks_in": 0, "cpu_s": 0.0})
    return pool


async def _until_released(state: ClusterState, room: str) -> None:
    deadline = time.monotonic() + 5.0
    while await state.holder(room) is not None:
        assert time.monotonic() < deadline, "the claim was not released"
        await asyncio.sleep(0.05)


async def test_claims_follow_connections_and_worker_reports(
    state: ClusterState, tmp_path: Path
) -> None:
    pool = _pool(tmp_path)
    connections: dict[str, int] = {}
    homes: dict[str, tuple[str, int]] = {}
    node = SupervisorNode(
        state,
        Settings(data_dir=tmp_path, redis_url="redis://x", node_id="sup", cluster_ttl_s=3.0),
        node_id="sup",
        pool=pool,
        connections=connections,
        homes=homes,
    )
    await node.start("ws://sup/v1/signal")
    try:
        (record,) = await state.nodes()
        assert (record.id, record.workers, record.url) == ("sup", 2, "ws://sup/v1/signal")

        connections["r1"] = 1  # a join being relayed: placement asked first
        assert await node.node_for("r1") is None  # free: claimed for this node
        assert node.node.held().keys() == {"r1"}
        node.sweep()
        assert node.node.held().keys() == {"r1"}  # the connection still uses it

        # The socket dropped, the worker keeps the participant for a resume: still claimed,
        # and the claim names the worker that hosts it.
        del connections["r1"]
        pool.slots[1].take_report({"rooms": {"r1": 1}, "tracks_in": 1, "cpu_s": 0.0})
        node.sweep()
        assert node.node.held().keys() == {"r1"}
        assert node.room_workers("r1") == ("1",)
        assert node.load().rooms == {"r1": 1} and node.load().tracks == 1

        # The worker no longer reports it (left, or the resume window ended): released.
        pool.slots[1].take_report({"rooms": {}, "tracks_in": 0, "cpu_s": 0.0})
        node.sweep()
        assert node.node.held() == {}
        await _until_released(state, "r1")

        # A room another node holds is a redirect to its URL.
        await state.heartbeat(
            node="other", instance="o", url="ws://other/v1/signal", ttl_s=3.0, load={}, workers=1
        )
        claim = await state.claim(
            "r2", node="other", url="ws://other/v1/signal", ttl_s=3.0, held_epoch=0,
            participants=1, workers=("0",), offer=False,
        )  # fmt: skip
        assert claim.node == "other"
        assert await node.node_for("r2") == "ws://other/v1/signal"
    finally:
        await node.stop()

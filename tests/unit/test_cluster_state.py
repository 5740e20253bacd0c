"""Room claims, fencing epochs and the node registry on a real redis-server."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
from helpers.redis_server import RedisServer

from sfu.cluster.node import ClusterNode, LocalLoad
from sfu.cluster.placement import ClusterUnavailable, LocalPlacement
from sfu.cluster.state import PREFIX, ClusterState, HeldRoom, NodeIdInUse, RoomClaim

assert shutil.which("redis-server"), "redis-server is missing: scripts/test installs it"

TTL = 5.0


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
    try:
        yield cluster
    finally:
        await cluster.close()


async def _alive(state: ClusterState, node: str) -> None:
    await state.heartbeat(
        node=node, instance=node, url=f"ws://{node}/v1/signal", ttl_s=TTL, load={}, workers=1
    )


async def test_concurrent_claims_give_a_room_to_exactly_one_node(state: ClusterState) -> None:
    nodes = [f"n{i}" for i in range(8)]
    for node in nodes:
        await _alive(state, node)
    claims = await asyncio.gather(
        *(
            state.claim("r1", node=n, url=f"ws://{n}/v1/signal", ttl_s=TTL, held_epoch=0)
            for n in nodes
        )
    )
    holders = {c.node for c in claims}
    assert len(holders) == 1
    [holder] = holders
    assert all(c.url == f"ws://{holder}/v1/signal" and c.epoch == claims[0].epoch for c in claims)


async def test_epochs_only_grow_and_fence_refresh_and_release(state: ClusterState) -> None:
    await _alive(state, "a")
    first = await state.claim("r1", node="a", url="ws://a", ttl_s=TTL, held_epoch=0)
    # The holder refreshing with its epoch keeps it; without it (a restart) gets a new one.
    same = await state.claim("r1", node="a", url="ws://a", ttl_s=TTL, held_epoch=first.epoch)
    assert same.epoch == first.epoch
    renewed = await state.claim("r1", node="a", url="ws://a", ttl_s=TTL, held_epoch=0)
    assert renewed.epoch > first.epoch
    # A release with the old epoch is a no-op: the newer claim stands.
    assert not await state.release("r1", node="a", epoch=first.epoch)
    held = HeldRoom("r1", renewed.epoch, 3, ("0",))
    assert await state.refresh([held], node="a", url="ws://a", ttl_s=TTL) == {"r1": renewed.epoch}
    stale = HeldRoom("r1", first.epoch, 3, ("0",))
    assert await state.refresh([stale], node="a", url="ws://a", ttl_s=TTL) == {"r1": 0}
    [room] = await state.rooms()
    assert (room.id, room.node, room.participants, room.workers) == ("r1", "a", 3, ["0"])
    assert await state.release("r1", node="a", epoch=renewed.epoch)
    assert await state.rooms() == []


async def test_a_claim_of_a_live_node_is_kept_and_of_a_dead_node_is_free(
    state: ClusterState,
) -> None:
    await _alive(state, "a")
    await _alive(state, "b")
    first = await state.claim("r1", node="a", url="ws://a", ttl_s=TTL, held_epoch=0)
    other = await state.claim("r1", node="b", url="ws://b", ttl_s=TTL, held_epoch=0)
    assert (other.node, other.url, other.epoch) == ("a", "ws://a", first.epoch)
    await state.client.delete(f"{PREFIX}node:a")  # node a's record expired: it died
    taken = await state.claim("r1", node="b", url="ws://b", ttl_s=TTL, held_epoch=0)
    assert taken.node == "b" and taken.epoch > first.epoch
    # Node a (back from a stall) finds its claim lost at its next refresh.
    held = HeldRoom("r1", first.epoch, 1, ("0",))
    assert await state.refresh([held], node="a", url="ws://a", ttl_s=TTL) == {"r1": 0}


async def test_an_expired_claim_is_retaken_with_a_higher_epoch_even_after_redis_lost_it(
    state: ClusterState,
) -> None:
    await _alive(state, "a")
    await state.client.set(f"{PREFIX}epoch", 41)
    claim = await state.claim("r1", node="a", url="ws://a", ttl_s=TTL, held_epoch=0)
    assert claim.epoch == 42
    await state.client.flushall()  # Redis restarted without persistence
    held = HeldRoom("r1", claim.epoch, 2, ("0",))
    epochs = await state.refresh([held], node="a", url="ws://a", ttl_s=TTL)
    assert epochs["r1"] > 42  # the counter resumes above every epoch a node still holds
    assert (await state.holder("r1")) is not None


async def test_claims_and_records_expire_after_the_ttl(state: ClusterState) -> None:
    await state.heartbeat(node="a", instance="i", url="ws://a", ttl_s=0.2, load={"cpu": 0.5},
                          workers=2)  # fmt: skip
    await state.claim("r1", node="a", url="ws://a", ttl_s=0.2, held_epoch=0)
    [node] = await state.nodes()
    assert node.describe() == {"id": "a", "url": "ws://a", "load": {"cpu": 0.5}, "workers": 2}
    await asyncio.sleep(0.4)
    assert await state.nodes() == []
    assert await state.rooms() == []
    assert await state.client.smembers(f"{PREFIX}nodes") == set()  # pruned from the index


async def test_two_live_processes_cannot_share_a_node_id(state: ClusterState) -> None:
    await state.heartbeat(node="a", instance="one", url="ws://a", ttl_s=TTL, load={}, workers=1)
    with pytest.raises(NodeIdInUse):
        await state.heartbeat(node="a", instance="two", url="ws://a", ttl_s=TTL, load={}, workers=1)
    await state.remove_node("a", "two")  # not its record: left alone
    assert [n.id for n in await state.nodes()] == ["a"]
    await state.remove_node("a", "one")
    assert await state.nodes() == []


async def test_an_unreachable_redis_raises_cluster_unavailable() -> None:
    state = ClusterState.from_url("redis://127.0.0.1:1/0", timeout_s=0.5)
    try:
        with pytest.raises(ClusterUnavailable):
            await state.claim("r1", node="a", url="ws://a", ttl_s=TTL, held_epoch=0)
        with pytest.raises(ClusterUnavailable):
            await state.nodes()
    finally:
        await state.close()


async def test_the_node_places_rooms_and_evicts_a_lost_one(
    state: ClusterState, redis_server: RedisServer
) -> None:
    hosted: dict[str, int] = {}
    evicted: list[tuple[str, str | None]] = []
    node = ClusterNode(
        ClusterState.from_url(redis_server.url),
        node_id="a",
        ttl_s=0.6,
        load=lambda: LocalLoad(rooms=dict(hosted), tracks=0),
        evict=lambda room, url: evicted.append((room, url)),
    )
    node.set_url("ws://a/v1/signal")
    with pytest.raises(ClusterUnavailable):
        await node.place("r1")  # not registered yet: refuse
    await node.start()
    placement = await node.place("r1")
    assert placement.local and placement.node == "a" and placement.epoch > 0
    hosted["r1"] = 1
    # Another node takes the room over (a forged claim with a higher epoch).
    await _alive(state, "b")
    await state.client.hset(
        f"{PREFIX}room:r1", mapping={"node": "b", "url": "ws://b/v1/signal", "epoch": 10**6}
    )
    for _ in range(100):
        if evicted:
            break
        await asyncio.sleep(0.05)
    assert evicted == [("r1", "ws://b/v1/signal")]
    assert node.held() == {}
    moved = await node.place("r1")
    assert not moved.local and moved.url == "ws://b/v1/signal"
    # Releasing a room this node hosts deletes its claim (and nothing else's).
    own = await node.place("r2")
    node.released("r2")
    for _ in range(100):
        if await state.holder("r2") is None:
            break
        await asyncio.sleep(0.05)
    assert own.local and await state.holder("r2") is None
    await node.stop()
    assert [n.id for n in await state.nodes()] == ["b"]  # node a left the registry


async def test_without_redis_every_room_is_local() -> None:
    placement = await LocalPlacement("solo").place("any-room")
    assert placement.local and placement.node == "solo"


async def test_concurrent_joins_on_one_node_never_fence_the_node_out(
    state: ClusterState, redis_server: RedisServer
) -> None:
    evicted: list[str] = []
    node = ClusterNode(
        ClusterState.from_url(redis_server.url),
        node_id="a",
        ttl_s=1.5,  # heartbeats every 0.5 s: several during the bursts, even on a busy machine
        load=lambda: LocalLoad(rooms={"r1": 5}, tracks=0),
        evict=lambda room, url: evicted.append(room),
    )
    node.set_url("ws://a/v1/signal")
    await node.start()
    try:
        for _ in range(5):  # bursts of joins for one new room, with heartbeats in between
            placements = await asyncio.gather(*(node.place("r1") for _ in range(10)))
            assert all(p.local for p in placements)
            await asyncio.sleep(0.4)
        holder = await state.holder("r1")
        assert holder is not None and node.held() == {"r1": holder.epoch}
        assert evicted == []
    finally:
        await node.stop()


class _ReorderingState(ClusterState):
    """Claims answered in reverse order: the newer epoch arrives first."""

    def __init__(self) -> None:
        self.answers: list[asyncio.Future[RoomClaim]] = []

    async def claim(self, room: str, **_: object) -> RoomClaim:
        future: asyncio.Future[RoomClaim] = asyncio.get_running_loop().create_future()
        self.answers.append(future)
        return await future


async def test_an_older_claim_answer_arriving_last_does_not_replace_the_newer_epoch() -> None:
    fake = _ReorderingState()
    node = ClusterNode(
        fake, node_id="a", ttl_s=3, load=lambda: LocalLoad({}, 0), evict=lambda r, u: None
    )
    node.available = True
    first = asyncio.ensure_future(node.place("r1"))
    second = asyncio.ensure_future(node.place("r1"))
    for _ in range(1000):  # both claims sent (bounded)
        if len(fake.answers) == 2:
            break
        await asyncio.sleep(0)
    assert len(fake.answers) == 2
    fake.answers[1].set_result(RoomClaim("a", "ws://a", 8))  # the later claim, epoch 8
    await second
    fake.answers[0].set_result(RoomClaim("a", "ws://a", 7))  # the earlier one, answered last
    await first
    assert node.held() == {"r1": 8}  # else the next heartbeat would fence this node out


async def test_an_offer_for_another_node_never_renews_a_live_claim(state: ClusterState) -> None:
    await _alive(state, "a")
    await _alive(state, "b")
    # Free: the room is claimed for node b (least-loaded placement decided on node a).
    offered = await state.claim("r1", node="b", url="ws://b", ttl_s=TTL, held_epoch=0, offer=True)
    assert offered.node == "b" and offered.epoch > 0
    # Offered again (another join meanwhile): node b's claim and epoch stay as they are.
    again = await state.claim("r1", node="b", url="ws://b", ttl_s=TTL, held_epoch=0, offer=True)
    assert again == offered
    # Node b's own join adopts it; without `offer` a node renews its own claim.
    assert await state.refresh(
        [HeldRoom("r1", offered.epoch, 1, ("0",))], node="b", url="ws://b", ttl_s=TTL
    ) == {"r1": offered.epoch}


async def test_least_loaded_placement_sends_a_new_room_to_the_idle_node(
    state: ClusterState, redis_server: RedisServer
) -> None:
    await state.heartbeat(node="idle", instance="i", url="ws://idle", ttl_s=TTL,
                          load={"participants": 1, "tracks": 0}, workers=1)  # fmt: skip
    busy = {"r0": 3}
    node = ClusterNode(
        ClusterState.from_url(redis_server.url),
        node_id="busy",
        ttl_s=3,
        load=lambda: LocalLoad(rooms=dict(busy), tracks=2),
        evict=lambda room, url: None,
        policy="least-loaded",
    )
    node.set_url("ws://busy")
    await node.start()
    try:
        first = await node.place("r1")
        assert (first.local, first.node, first.url) == (False, "idle", "ws://idle")
        # Rooms sent there since the last heartbeat count: the idle node fills up to par.
        placed = [await node.place(f"r{i}") for i in range(2, 8)]
        assert [p.node for p in placed].count("idle") == 3
        assert all(p.node == "busy" for p in placed[3:])
        # A placed room stays where it is, whatever the loads now.
        assert (await node.place("r2")).node == "idle"
        again = await node.place("r5")
        assert again.local and again.epoch == placed[3].epoch
    finally:
        await node.stop()


async def test_span_keys_are_written_only_by_the_holder_at_its_epoch(state: ClusterState) -> None:
    await _alive(state, "a")
    await _alive(state, "b")
    claim = await state.claim("rs", node="a", url="ws://a/v1/signal", ttl_s=TTL, held_epoch=0)
    home_key, spill_key = b"h" * 44, b"s" * 44

    async def write(home: str, epoch: int) -> bool:
        return await state.write_span(
            "rs", home=home, epoch=epoch, spill="b", home_key=home_key, spill_key=spill_key,
            ttl_s=TTL,
        )  # fmt: skip

    assert not await write("b", claim.epoch)  # not the holder
    assert not await write("a", claim.epoch + 1)  # not the epoch it holds
    assert await state.read_span("rs") is None
    assert await write("a", claim.epoch)
    keys = await state.read_span("rs")
    assert keys is not None
    assert (keys.home, keys.spill, keys.epoch) == ("a", "b", claim.epoch)
    assert (keys.home_key, keys.spill_key) == (home_key, spill_key)
    assert 0 < await state.client.pttl(f"{PREFIX}span:rs") <= TTL * 1000
    # The room's listing names both nodes while the span's epoch is the claim's.
    [record] = await state.rooms()
    assert record.describe()["nodes"] == ["a", "b"]
    # The claim re-taken at a new epoch: the old keys no longer describe the room.
    assert await state.release("rs", node="a", epoch=claim.epoch)
    again = await state.claim("rs", node="a", url="ws://a/v1/signal", ttl_s=TTL, held_epoch=0)
    assert again.epoch > claim.epoch
    [record] = await state.rooms()
    assert "nodes" not in record.describe()


async def test_the_claim_answer_carries_the_holder_participants(state: ClusterState) -> None:
    await _alive(state, "a")
    await state.claim("rp", node="a", url="ws://a", ttl_s=TTL, held_epoch=0, participants=4)
    seen = await state.claim("rp", node="b", url="ws://b", ttl_s=TTL, held_epoch=0)
    assert (seen.node, seen.participants) == ("a", 4)


async def test_the_link_secret_is_created_once_and_shared(
    state: ClusterState, redis_server: RedisServer
) -> None:
    other = ClusterState.from_url(redis_server.url)
    try:
        first = await state.link_secret()
        assert len(first) == 32 and await other.link_secret() == first
    finally:
        await other.close()

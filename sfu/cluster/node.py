"""This node's part in the cluster: heartbeat, room claims, and what happens when one is lost.

Placement: the node a ``join`` reaches claims the room if no live node holds it (a load
balancer in front spreads first joins; nobody pays an extra hop to start a call); a join for a
room held elsewhere is answered with the holder's URL (``redirect``).

Every ``ttl/3`` seconds the heartbeat rewrites this node's record (load, workers) and refreshes
the claims of the rooms it hosts in one script. A claim whose epoch changed under it (another
node took the room: split brain after a stall, or an operator) is *lost*: the room's
participants are evicted with the new holder's URL. A claim that expired while Redis was away
is re-taken with a new epoch if still free. Redis errors never touch calls in progress: the
node keeps its rooms, refuses new joins (:class:`ClusterUnavailable`) and resyncs when Redis
answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from sfu.cluster.placement import ClusterUnavailable, Placement
from sfu.cluster.state import ClusterState, HeldRoom, NodeIdInUse, NodeRecord

__all__ = ["ClusterNode", "CpuMeter", "LocalLoad", "default_node_id"]

log = structlog.get_logger(__name__)


def default_node_id() -> str:
    """``<hostname>-<pid>``: unique per process on a machine, readable in listings."""
    return f"{socket.gethostname()}-{os.getpid()}"[:64]


@dataclass(frozen=True, slots=True)
class LocalLoad:
    """What this node hosts now: room id → participants, and the track count."""

    rooms: dict[str, int]
    tracks: int

    def describe(self, cpu: float) -> dict[str, float | int]:
        """The ``load`` object of ``GET /v1/nodes`` (``cpu``: share of one core)."""
        return {
            "rooms": len(self.rooms),
            "participants": sum(self.rooms.values()),
            "tracks": self.tracks,
            "cpu": cpu,
        }


LoadSource = Callable[[], LocalLoad]
EvictCallback = Callable[[str, str | None], None]


class CpuMeter:
    """Share of one core this process used since the last reading."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def read(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        share = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._wall, self._cpu = wall, cpu
        return round(share, 3)


class ClusterNode:
    """Implements :class:`~sfu.cluster.placement.RoomPlacement` over :class:`ClusterState`."""

    def __init__(
        self,
        state: ClusterState,
        *,
        node_id: str,
        ttl_s: float,
        load: LoadSource,
        evict: EvictCallback,
        worker_ids: tuple[str, ...] = ("0",),
        policy: str = "local",
        room_workers: Callable[[str], tuple[str, ...]] | None = None,
    ) -> None:
        self.state = state
        self.node_id = node_id
        self.url = ""  # set_url() once the listening port is known
        self.ttl_s = ttl_s
        self.worker_ids = worker_ids
        # Which of this node's workers host a room (a supervisor knows; one process: all).
        self._room_workers = room_workers or (lambda room: self.worker_ids)
        self.policy = policy  # "local" or "least-loaded" (see place())
        self._peers: list[NodeRecord] = []  # other live nodes, as of the last heartbeat
        self._offers: dict[str, int] = {}  # rooms sent to each node since that heartbeat
        self._load = load
        self._evict = evict
        self._instance = secrets.token_hex(8)
        self._claims: dict[str, int] = {}  # room id → epoch this node holds
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._cpu = CpuMeter()
        self.available = False  # False until registered, and while Redis is unreachable
        self.node_urls: tuple[str, ...] = ()  # every live node's URL, as of the last heartbeat
        # Totals for /metrics.
        self.redirects = 0
        self.rooms_lost = 0
        self.rooms_reclaimed = 0
        self._draining = False

    @property
    def interval_s(self) -> float:
        return self.ttl_s / 3

    def set_url(self, url: str) -> None:
        self.url = url

    def held(self) -> dict[str, int]:
        """Rooms this node holds a claim on, with the epoch (a copy)."""
        return dict(self._claims)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Register (waiting up to a TTL for a dead predecessor with the same id to expire),
        then heartbeat in the background. Raises ClusterUnavailable if Redis is down."""
        deadline = time.monotonic() + self.ttl_s + 1.0
        while True:
            try:
                await self._beat()
                break
            except NodeIdInUse:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(self.interval_s)
        self.available = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-heartbeat")
        log.info("cluster_joined", node=self.node_id, url=self.url, ttl_s=self.ttl_s)

    async def stop(self) -> None:
        """Leave: release every claim and remove this node's record (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._releases:
            await asyncio.wait(self._releases, timeout=self.ttl_s)
        with contextlib.suppress(ClusterUnavailable):
            for room, epoch in list(self._claims.items()):
                await self.state.release(room, node=self.node_id, epoch=epoch)
            self._claims.clear()
            await self.state.remove_node(self.node_id, self._instance)
        await self.state.close()

    # --- placement ----------------------------------------------------------------------

    async def place(self, room_id: str, *, here: bool = False) -> Placement:
        """``here``: never offer the room to another node (it has participants here)."""
        if not self.available:
            raise ClusterUnavailable("cluster state unavailable")
        if self._draining:
            raise ClusterUnavailable("this node is draining")
        held = self._claims.get(room_id, 0)
        load = self._load()
        offer = self.policy == "least-loaded" and not held and not here
        target = self._least_loaded(load) if offer else None
        claim = await self.state.claim(
            room_id,
            node=target.id if target is not None else self.node_id,
            url=target.url if target is not None else self.url,
            ttl_s=self.ttl_s,
            held_epoch=held,
            participants=load.rooms.get(room_id, 0),
            workers=self._room_workers(room_id),
            offer=target is not None,
        )
        if target is not None and claim.node == target.id:
            self._offers[target.id] = self._offers.get(target.id, 0) + 1
        local = claim.node == self.node_id
        if local:
            # Epochs only grow: of two joins placing one room at once, the later claim wins.
            self._claims[room_id] = max(claim.epoch, self._claims.get(room_id, 0))
        else:
            self.redirects += 1
        return Placement(
            room=room_id,
            node=claim.node,
            url=claim.url,
            epoch=claim.epoch,
            local=local,
            participants=claim.participants,
        )

    def _least_loaded(self, load: LocalLoad) -> NodeRecord | None:
        """The live node with the fewest participants and tracks, if not this one (a tie
        keeps the room here). Rooms already sent to a node since the last heartbeat count
        as one participant each, so a burst of new rooms spreads."""
        own = sum(load.rooms.values()) + load.tracks
        best: NodeRecord | None = None
        best_score = own
        for peer in self._peers:
            score = _score(peer.load) + self._offers.get(peer.id, 0)
            if score < best_score and peer.url:
                best, best_score = peer, score
        return best

    def released(self, room_id: str) -> None:
        epoch = self._claims.pop(room_id, None)
        if epoch is not None:
            self._spawn_release(room_id, epoch)

    def draining(self) -> None:
        """Give up every claim at once: participants told to move (``server.draining``)
        rejoin through any node, and the first one re-forms the room there. Stragglers
        still here until they leave do not see the movers (their room is not linked)."""
        self._draining = True
        for room_id in list(self._claims):
            self.released(room_id)

    def _spawn_release(self, room_id: str, epoch: int) -> None:
        task = asyncio.get_running_loop().create_task(self._release(room_id, epoch))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, room_id: str, epoch: int) -> None:
        with contextlib.suppress(ClusterUnavailable):  # else it expires after the TTL
            await self.state.release(room_id, node=self.node_id, epoch=epoch)

    # --- heartbeat ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._beat()
            except NodeIdInUse:
                log.error("cluster_node_id_in_use", node=self.node_id)
                self.available = False
                continue
            except ClusterUnavailable as exc:
                if self.available:
                    log.warning("cluster_state_unavailable", node=self.node_id, error=str(exc))
                self.available = False
                continue
            except Exception:  # a bug must not stop the heartbeat: the node would vanish
                log.exception("cluster_heartbeat_failed", node=self.node_id)
                continue
            if not self.available:
                log.info("cluster_state_recovered", node=self.node_id, rooms=len(self._claims))
            self.available = True

    async def _beat(self) -> None:
        current = self._load()
        await self.state.heartbeat(
            node=self.node_id,
            instance=self._instance,
            url=self.url,
            ttl_s=self.ttl_s,
            load=current.describe(self._cpu.read()),
            workers=len(self.worker_ids),
        )
        nodes = await self.state.nodes()
        self.node_urls = tuple(node.url for node in nodes if node.url)
        self._peers = [node for node in nodes if node.id != self.node_id]
        self._offers.clear()
        held = [
            HeldRoom(room, epoch, current.rooms.get(room, 0), self._room_workers(room))
            for room, epoch in self._claims.items()
        ]
        epochs = await self.state.refresh(held, node=self.node_id, url=self.url, ttl_s=self.ttl_s)
        sent = {h.room: h.epoch for h in held}
        for room, epoch in epochs.items():
            mine = self._claims.get(room)
            if mine is None:
                if epoch > 0:  # released while the refresh ran (and perhaps re-taken by it)
                    self._spawn_release(room, epoch)
                continue
            if mine != sent[room]:
                continue  # a join re-placed the room meanwhile: its answer is the newer one
            if epoch > 0:
                if epoch != mine:
                    self.rooms_reclaimed += 1
                    log.info("cluster_room_reclaimed", room=room, epoch=epoch)
                self._claims[room] = epoch
                continue
            del self._claims[room]
            self.rooms_lost += 1
            try:
                holder = await self.state.holder(room)
            except ClusterUnavailable:
                holder = None
            log.warning(
                "cluster_room_lost",
                room=room,
                holder=holder.node if holder else None,
                epoch=holder.epoch if holder else None,
            )
            self._evict(room, holder.url if holder and holder.node != self.node_id else None)


def _score(load: dict[str, object]) -> int:
    """Participants plus tracks of a node's heartbeat ``load`` (0 for what is missing)."""
    total = 0
    for key in ("participants", "tracks"):
        value = load.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total += value
    return total

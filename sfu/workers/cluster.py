"""``--workers N`` with ``--redis``: the supervisor is this machine's node of the cluster.

The supervisor owns the one :class:`~sfu.cluster.node.ClusterNode`: it registers the node
(``workers`` = N, the load summed over the workers' last reports), claims rooms and answers
the supervisor's :class:`~sfu.workers.placement.NodePlacement` question before a home worker
is chosen (None: a worker here; a URL: ``redirect``). Workers keep local placement and never
register.

A claim is given up once no connection for the room passes through the supervisor and no
worker reports the room (a detached participant waiting for its resume still counts). A lost
claim evicts the room on the workers (``POST /internal/evict``).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import structlog

from sfu.cluster.node import ClusterNode, LocalLoad
from sfu.cluster.state import ClusterState
from sfu.settings import Settings
from sfu.workers.pool import WorkerPool, WorkerSlot
from sfu.workers.worker import EVICT_PATH

__all__ = ["SupervisorNode", "pool_load", "worker_rooms"]

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_S = 1.0  # as often as the workers report their rooms
EVICT_TIMEOUT_S = 5.0


def worker_rooms(pool: WorkerPool) -> dict[str, dict[str, int]]:
    """Worker id → its rooms with participants, as of its last load report (≤ 1 s old)."""
    return {slot.id: slot.rooms() for slot in pool.ready()}


def pool_load(pool: WorkerPool) -> LocalLoad:
    """What this node's workers host: room → participants summed, and the tracks."""
    rooms: dict[str, int] = {}
    for hosted in worker_rooms(pool).values():
        for room, count in hosted.items():
            rooms[room] = rooms.get(room, 0) + count
    tracks = sum(int(slot.report.get("tracks_in", 0)) for slot in pool.ready())
    return LocalLoad(rooms=rooms, tracks=tracks)


class SupervisorNode:
    """The cluster membership of a supervisor and its workers (one node, N workers)."""

    def __init__(
        self,
        state: ClusterState,
        settings: Settings,
        *,
        node_id: str,
        pool: WorkerPool,
        connections: dict[str, int],
        homes: dict[str, tuple[str, int]],
    ) -> None:
        self.pool = pool
        self._connections = connections  # room → signalling connections relayed now
        self._homes = homes  # room → (home worker, generation)
        self.node = ClusterNode(
            state,
            node_id=node_id,
            ttl_s=settings.cluster_ttl_s,
            load=self.load,
            evict=self.evict,
            worker_ids=tuple(slot.id for slot in pool.slots),
            policy=settings.placement,
            room_workers=self.room_workers,
        )
        pool.node_urls = lambda: self.node.node_urls
        self._sweeper: asyncio.Task[None] | None = None
        self._evictions: set[asyncio.Task[None]] = set()

    # --- NodePlacement ------------------------------------------------------------------

    async def node_for(self, room: str) -> str | None:
        """None when this node hosts ``room`` (claimed now if free); else the holder's URL.
        Raises ClusterUnavailable when Redis cannot be reached (or while draining)."""
        placement = await self.node.place(room)
        return None if placement.local else placement.url

    # --- what the workers host ----------------------------------------------------------

    def reported(self) -> dict[str, dict[str, int]]:
        return worker_rooms(self.pool)

    def load(self) -> LocalLoad:
        return pool_load(self.pool)

    def room_workers(self, room: str) -> tuple[str, ...]:
        hosting = tuple(w for w, rooms in self.reported().items() if rooms.get(room, 0) > 0)
        if hosting:
            return hosting
        home = self._homes.get(room)
        return (home[0],) if home is not None else self.node.worker_ids

    def sweep(self) -> None:
        """Give up the claims of rooms nobody here uses any more."""
        in_use = set(self._connections)
        for rooms in self.reported().values():
            in_use.update(room for room, count in rooms.items() if count > 0)
        for room in self.node.held():
            if room not in in_use:
                self.node.released(room)

    # --- a lost claim -------------------------------------------------------------------

    def evict(self, room: str, url: str | None) -> None:
        """Tell every worker to evict ``room`` (those not hosting it ignore it)."""
        self._homes.pop(room, None)
        for slot in self.pool.ready():
            task = asyncio.get_running_loop().create_task(self._evict_on(slot, room, url))
            self._evictions.add(task)
            task.add_done_callback(self._evictions.discard)

    async def _evict_on(self, slot: WorkerSlot, room: str, url: str | None) -> None:
        if slot.session is None:
            return
        try:
            async with slot.session.post(
                "http://worker" + EVICT_PATH,
                json={"room": room, "url": url},
                timeout=aiohttp.ClientTimeout(total=EVICT_TIMEOUT_S),
            ) as response:
                if response.status != 200:
                    log.warning("evict_refused", worker=slot.id, room=room, status=response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("evict_failed", worker=slot.id, room=room, error=str(exc))

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, url: str) -> None:
        """Register under ``url`` (raises ClusterUnavailable), then sweep in the background."""
        self.node.set_url(url)
        await self.node.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="sweep")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.sweep()
            except Exception:
                log.exception("cluster_sweep_failed")

    def draining(self) -> None:
        self.node.draining()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._evictions):
            task.cancel()
        await self.node.stop()

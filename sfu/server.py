"""The server root: settings, keys, rooms. Closing it closes everything below it.

Besides the rooms it owns the operations side: the ICE servers handed out (with TURN REST
credentials), webhook delivery, /metrics statistics and the draining state.
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
from typing import TYPE_CHECKING, Any

import structlog

from recorder.service import RecordingService
from sfu.cluster.node import ClusterNode, LocalLoad, default_node_id
from sfu.cluster.placement import LocalPlacement, RoomPlacement
from sfu.keys import KeyStore
from sfu.peer_connection import MediaConfig
from sfu.room import Room, RoomHooks
from sfu.rooms import LocalRoomRegistry, RoomRegistry
from sfu.settings import IceServer, Settings
from sfu.stats import ServerStats
from sfu.turn import IceServerSet
from sfu.webhooks import Webhooks

if TYPE_CHECKING:
    from sfu.cluster.node_span import NodeSpans

__all__ = ["Server"]

log = structlog.get_logger(__name__)


class Server:
    """Owns the room registry; the signalling layer asks it for rooms."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyStore,
        rooms: RoomRegistry | None = None,
        *,
        worker_id: str = "0",
        recordings: RecordingService | None = None,
        placement: RoomPlacement | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.recordings = recordings  # consent-gated recorder (None: recording disabled)
        self.worker_id = worker_id
        self.rooms: RoomRegistry = rooms if rooms is not None else LocalRoomRegistry()
        # In a cluster a node id must be unique per process; alone, the host name names it.
        self.node_id = settings.node_id or (
            default_node_id() if settings.redis_url else socket.gethostname()
        )
        # Which node hosts a room: this one (no Redis) or the cluster's claim (sfu.cluster).
        self.placement: RoomPlacement = placement or LocalPlacement(self.node_id)
        self.cluster: ClusterNode | None = None  # with --redis (set by server_main)
        self.node_spans: NodeSpans | None = None  # rooms spanning nodes (server_main)
        self.peer_urls: tuple[str, ...] = ()  # a worker's cluster nodes, told by its supervisor
        self.stats = ServerStats()
        self.ice = IceServerSet.from_settings(settings)
        self.media = MediaConfig(
            ice_servers=self.ice.for_server(turn=True),
            announce_ip=settings.announce_ip,
            queue_limit=settings.subscriber_queue_bytes,
            stale_after_s=settings.producer_timeout_s,
            observe_report=self.stats.reports.observe,
        )
        self.webhooks = self._webhooks(settings)
        self.hooks = RoomHooks(events=self.webhooks, traffic=self.stats.traffic)
        self.started_at = time.time()
        self.closing = False
        self.draining = False
        self._drain_deadline = 0.0  # time.monotonic() when draining ends at the latest

    def _webhooks(self, settings: Settings) -> Webhooks:
        options: dict[str, Any] = {
            "issuer": settings.issuer,
            "worker": self.worker_id,
            "node": self.node_id if settings.redis_url else None,
            "timeout_s": settings.webhook_timeout_s,
            "retry_max_s": settings.webhook_retry_max_s,
            "queue_size": settings.webhook_queue_size,
        }
        if settings.redis_url and settings.webhook_urls:
            # One consumer name per node and data dir: after a restart it finds its own
            # unacknowledged events in the stream's pending list.
            where = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]
            node = f"{socket.gethostname()}:{where}:{self.worker_id}"
            client, factory = Webhooks.redis_queues(
                settings.redis_url, queue_size=settings.webhook_queue_size, consumer=node
            )
            hooks = Webhooks(
                settings.webhook_urls, settings.webhook_key, queue_factory=factory, **options
            )
            hooks.attach_redis(client)
            return hooks
        return Webhooks(settings.webhook_urls, settings.webhook_key, **options)

    def ice_servers_for(self, participant_id: str) -> list[IceServer]:
        """``joined.ice_servers``: configured servers plus this participant's TURN credential."""
        return self.ice.for_user(participant_id)

    async def start(self) -> None:
        """Start the background parts: webhook delivery and the event-loop lag probe."""
        self.stats.loop_lag.start()
        await self.webhooks.start()

    # --- rooms and the cluster -----------------------------------------------------------

    def release_room(self, room: Room) -> None:
        """After a participant left: forget the room if empty, and give up its placement."""
        self.rooms.release(room)
        if self.rooms.get(room.id) is None:
            self.placement.released(room.id)

    def local_load(self) -> LocalLoad:
        """What this node hosts, for the cluster heartbeat and ``GET /v1/nodes``."""
        rooms = self.rooms.all()
        return LocalLoad(
            rooms={room.id: len(room.participants) for room in rooms},
            tracks=sum(len(room.tracks) for room in rooms),
        )

    def evict_room(self, room_id: str, url: str | None) -> None:
        """The room's claim went to another node: everyone here must leave (and rejoin)."""
        room = self.rooms.get(room_id)
        if room is None:
            return
        link = self.node_spans.links.get(room_id) if self.node_spans is not None else None
        if link is not None:
            link.close("the room's claim was lost")
        message = {
            "type": "error",
            "code": "conflict",
            "message": "this room moved to another node: join again",
        }
        if url:
            message["url"] = url
        for participant in list(room.participants.values()):
            participant.send(message)
            if participant.connection is None:
                participant.give_up.set()  # detached: nothing to resume here, leave now
            else:
                participant.connection.disconnect(1012)
        log.warning("room_evicted", room=room_id, participants=len(room.participants), to=url)

    # --- draining ---------------------------------------------------------------------

    def start_draining(self, deadline_s: float) -> None:
        """Refuse joins from now on and tell every participant to move before the deadline."""
        deadline = time.monotonic() + deadline_s
        if self.draining:
            self._drain_deadline = min(self._drain_deadline, deadline)
        else:
            self.draining = True
            self._drain_deadline = deadline
            self.placement.draining()
        remaining = self.drain_remaining()
        participants = 0
        for room in self.rooms.all():
            for participant in room.participants.values():
                participant.send({"type": "server.draining", "deadline": remaining})
                participants += 1
                if participant.connection is None:
                    participant.give_up.set()  # no socket to resume here: leave now
        log.info("draining", deadline_s=remaining, participants=participants)

    def drain_remaining(self) -> float:
        """Seconds left until the drain deadline (0 when not draining or past it)."""
        if not self.draining:
            return 0.0
        return max(0.0, round(self._drain_deadline - time.monotonic(), 3))

    def retry_after_s(self) -> int:
        """``Retry-After`` for refused joins: when this node will be gone at the latest."""
        return max(1, math.ceil(self.drain_remaining()))

    @property
    def participant_count(self) -> int:
        return sum(len(room.participants) for room in self.rooms.all())

    # --- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave every participant of every room (peer connections closed)."""
        self.closing = True
        for room in self.rooms.all():
            for participant in list(room.participants.values()):
                await room.leave(participant)
            self.rooms.release(room)
        if self.recordings is not None:
            await self.recordings.close()  # every file finished and sealed
        log.info("server_closed")

    async def stop(self, webhook_flush_s: float = 5.0) -> None:
        """After :meth:`close`: deliver what webhooks can in time, stop background tasks."""
        await self.webhooks.close(webhook_flush_s)
        await self.stats.loop_lag.stop()

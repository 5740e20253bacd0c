"""The server root: settings, keys, rooms. Closing it closes everything below it."""

from __future__ import annotations

import time

import structlog

from sfu.keys import KeyStore
from sfu.peer_connection import MediaConfig
from sfu.rooms import LocalRoomRegistry, RoomRegistry
from sfu.settings import Settings

__all__ = ["Server"]

log = structlog.get_logger(__name__)


class Server:
    """Owns the room registry; the signalling layer asks it for rooms."""

    def __init__(
        self, settings: Settings, keys: KeyStore, rooms: RoomRegistry | None = None
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.rooms: RoomRegistry = rooms if rooms is not None else LocalRoomRegistry()
        self.media = MediaConfig(
            ice_servers=tuple(dict(s) for s in settings.ice_servers),
            announce_ip=settings.announce_ip,
            queue_limit=settings.subscriber_queue_bytes,
            stale_after_s=settings.producer_timeout_s,
        )
        self.started_at = time.time()
        self.closing = False

    async def close(self) -> None:
        """Leave every participant of every room (peer connections closed)."""
        self.closing = True
        for room in self.rooms.all():
            for participant in list(room.participants.values()):
                await room.leave(participant)
            self.rooms.release(room)
        log.info("server_closed")

"""Participant: one joined client, with its publish and subscribe sides."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from sfu.peer_connection import MediaConfig
from sfu.publisher import Publisher
from sfu.room import NO_HOOKS, RoomHooks
from sfu.subscriber import Subscriber

if TYPE_CHECKING:
    from sfu.producer import Producer
    from sfu.room import Room

__all__ = ["Participant"]

OUTBOX_LIMIT = 1000


class Participant:
    """A client in a room. Messages to it go through a bounded outbox."""

    def __init__(
        self,
        *,
        participant_id: str,
        identity: str,
        role: str,
        grants: frozenset[str],
        room: Room,
        media: MediaConfig,
        hooks: RoomHooks = NO_HOOKS,
    ) -> None:
        self.id = participant_id
        self.hooks = hooks
        self.identity = identity
        self.role = role
        self.grants = grants
        self.room = room
        self.unsubscribed: set[str] = set()
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_LIMIT)
        self.overflowed = False
        # Set by the signalling session: flush the outbox, then close with this code.
        self.disconnect: Callable[[int], None] = _not_connected
        self.log = structlog.get_logger(__name__).bind(room=room.id, participant=participant_id)
        self.publisher = Publisher(
            participant_id, media, on_added=room.producer_added, on_removed=room.producer_removed
        )
        self.subscriber = Subscriber(participant_id, media, send=self.send)

    def describe(self) -> dict[str, str]:
        """The ``participant`` object of protocol v1."""
        return {"id": self.id, "identity": self.identity, "role": self.role}

    def can(self, grant: str) -> bool:
        return grant in self.grants

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the client; a client that stops reading is cut off."""
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            if not self.overflowed:
                self.overflowed = True
                self.log.warning("outbox_overflow")

    def offer_track(self, producer: Producer) -> None:
        """Forward a track to this participant unless it opted out or cannot receive."""
        if (
            producer.participant_id != self.id
            and self.can("subscribe")
            and producer.id not in self.unsubscribed
        ):
            self.subscriber.want(producer)

    async def close(self) -> None:
        await self.publisher.close()
        await self.subscriber.close()


def _not_connected(code: int) -> None:
    return None

"""Participant: one joined client, with its publish and subscribe sides."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from sfu.peer_connection import MediaConfig
from sfu.publisher import Publisher
from sfu.room import NO_HOOKS, RoomHooks
from sfu.subscriber import Subscriber

if TYPE_CHECKING:
    from sfu.producer import Producer
    from sfu.room import Room

__all__ = ["Connection", "Participant"]

OUTBOX_LIMIT = 1000


class Connection(Protocol):
    """The signalling connection a participant is attached to."""

    def replaced(self) -> None:
        """Another connection took this participant over."""

    def disconnect(self, code: int) -> None:
        """Flush what is queued, then close with ``code`` (the participant then leaves)."""


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
        # Proves "I am this participant" to a later `join` after the socket dropped.
        self.resume_secret = secrets.token_urlsafe(24)
        self.connection: Connection | None = None  # the signalling session attached now, if any
        self.expiry: asyncio.Task[None] | None = None  # leaves unless resumed in time
        self.give_up = asyncio.Event()  # set: a detached participant leaves now (draining)
        self.log = structlog.get_logger(__name__).bind(room=room.id, participant=participant_id)
        self.publisher = Publisher(
            participant_id, media, on_added=room.producer_added, on_removed=room.producer_removed
        )
        self.subscriber = Subscriber(participant_id, media, send=self.send)

    def describe(self) -> dict[str, str]:
        """The ``participant`` object of protocol v1."""
        return {"id": self.id, "identity": self.identity, "role": self.role}

    def fresh_outbox(self) -> None:
        """Start a new connection's outbox: what was queued for the old one is dropped
        (a resumed client gets the current state instead)."""
        self.outbox = asyncio.Queue(OUTBOX_LIMIT)
        self.overflowed = False

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
        if self.expiry is not None and self.expiry is not asyncio.current_task():
            self.expiry.cancel()
        await self.publisher.close()
        await self.subscriber.close()

"""The join path's one question: which node hosts this room? (and "host it here if free")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ClusterUnavailable", "LocalPlacement", "Placement", "RoomPlacement"]


class ClusterUnavailable(Exception):
    """The shared cluster state (Redis) cannot be read or written: refuse new joins."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a room lives: ``local`` (this node hosts it now) or another node's ``url``."""

    room: str
    node: str
    url: str
    epoch: int
    local: bool
    participants: int = 0  # the holder's participants, as its last heartbeat wrote them


class RoomPlacement(Protocol):
    """Placement of rooms on nodes; a supervisor of worker processes can call it too."""

    async def place(self, room_id: str) -> Placement:
        """The room's host, claiming it for this node when no live node holds it.

        Raises :class:`ClusterUnavailable` when the shared state cannot be reached.
        """
        ...

    def released(self, room_id: str) -> None:
        """This node's last participant of ``room_id`` left: give the claim up."""
        ...

    def draining(self) -> None:
        """This node is shutting down: give every claim up so its rooms re-form elsewhere."""
        ...


class LocalPlacement:
    """One node, no Redis: every room is hosted here."""

    def __init__(self, node_id: str, url: str = "") -> None:
        self.node_id = node_id
        self.url = url

    async def place(self, room_id: str) -> Placement:
        return Placement(room=room_id, node=self.node_id, url=self.url, epoch=0, local=True)

    def released(self, room_id: str) -> None:
        return None

    def draining(self) -> None:
        return None

"""Where rooms live. One small seam, so a Redis-backed registry can replace it."""

from __future__ import annotations

from typing import Protocol

from sfu.room import Room

__all__ = ["LocalRoomRegistry", "RoomRegistry"]


class RoomRegistry(Protocol):
    def get_or_create(self, room_id: str) -> Room: ...

    def get(self, room_id: str) -> Room | None: ...

    def release(self, room: Room) -> None: ...

    def all(self) -> list[Room]: ...


class LocalRoomRegistry:
    """Rooms of this process only (the embedded, single-node default)."""

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}

    def get_or_create(self, room_id: str) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = Room(room_id)
        return room

    def get(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    def release(self, room: Room) -> None:
        """Forget a room once its last participant left (and it spans no other worker)."""
        if room.empty and room.shard is None and self._rooms.get(room.id) is room:
            del self._rooms[room.id]

    def all(self) -> list[Room]:
        return list(self._rooms.values())

"""Room: the participants and tracks of one call, and the events between them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from sfu.speakers import ActiveSpeakers
from sfu.webhooks import EventSink, NullEvents

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.producer import Producer
    from sfu.stats import TrafficArchive

__all__ = ["NO_HOOKS", "SPEAKER_TICK_S", "Room", "RoomHooks", "ShardHooks"]

log = structlog.get_logger(__name__)

SPEAKER_TICK_S = 0.2


@dataclass(frozen=True, slots=True)
class RoomHooks:
    """Where a room reports to outside the media graph: webhook events and /metrics totals."""

    events: EventSink = field(default_factory=NullEvents)
    traffic: TrafficArchive | None = None


NO_HOOKS = RoomHooks()


class ShardHooks(Protocol):
    """The room's link to its shard on another worker (:mod:`sfu.shard`), if it spans.

    The room tells it what happened here; it ignores what it caused itself (the other
    shard's participants and piped tracks).
    """

    @property
    def home(self) -> bool:
        """True on the room's home worker (it decides who is speaking)."""
        ...

    def is_remote(self, track_id: str) -> bool: ...

    def remote_participants(self) -> list[dict[str, str]]: ...

    def participant_joined(self, participant: Participant) -> None: ...

    def participant_left(self, participant: Participant) -> None: ...

    def track_published(self, producer: Producer) -> None: ...

    def track_unpublished(self, producer: Producer) -> None: ...

    def track_updated(self, producer: Producer) -> None: ...

    def speakers_changed(self, speakers: list[str]) -> None: ...

    def room_empty(self) -> None: ...


class Room:
    """Participants and tracks of one call. Nothing here crosses into another room."""

    def __init__(self, room_id: str) -> None:
        self.id = room_id
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, Producer] = {}
        self.speakers = ActiveSpeakers()
        self._speaker_task: asyncio.Task[None] | None = None
        self.hooks = NO_HOOKS  # the server's, adopted from the first participant
        self._started = False
        self._leaving = 0  # participants whose close() is still running
        self.shard: ShardHooks | None = None  # set while the room spans another worker

    def describe(self) -> dict[str, str]:
        return {"id": self.id}

    def join(self, participant: Participant) -> None:
        if participant.hooks is not NO_HOOKS:
            self.hooks = participant.hooks
        if not self._started and (self.shard is None or self.shard.home):
            # A spill shard's room is the home's room: it started (and finishes) there.
            self._started = True
            self.hooks.events.emit("room_started", room=self.describe())
        self.participants[participant.id] = participant
        self.hooks.events.emit(
            "participant_joined", room=self.describe(), participant=participant.describe()
        )
        self.broadcast(
            {"type": "participant.joined", "participant": participant.describe()},
            exclude=participant.id,
        )
        for producer in self.tracks.values():
            participant.offer_track(producer)
        if self.shard is not None:
            self.shard.participant_joined(participant)
        if self._speaker_task is None or self._speaker_task.done():
            self._speaker_task = asyncio.get_running_loop().create_task(self._watch_speakers())
        log.info(
            "participant_joined",
            room=self.id,
            participant=participant.id,
            identity=participant.identity,
            role=participant.role,
        )

    async def leave(self, participant: Participant) -> None:
        if self.participants.pop(participant.id, None) is None:
            return
        traffic = self.hooks.traffic
        held = traffic.hold(participant) if traffic is not None else None
        self._leaving += 1
        try:
            await participant.close()
        finally:
            self._leaving -= 1
            if traffic is not None and held is not None:
                traffic.release(held)
        self.broadcast({"type": "participant.left", "participant": participant.describe()})
        if self.shard is not None:
            self.shard.participant_left(participant)
        log.info("participant_left", room=self.id, participant=participant.id)
        self.hooks.events.emit(
            "participant_left", room=self.describe(), participant=participant.describe()
        )
        self.finish_if_empty()
        if self.empty and self.shard is not None:
            self.shard.room_empty()

    def finish_if_empty(self) -> None:
        """``room_finished`` once nobody is left here nor on a shard on another worker."""
        if self.empty and self._started and not self._leaving and self.shard is None:
            self._started = False
            self.hooks.events.emit("room_finished", room=self.describe())

    def producer_added(self, producer: Producer) -> None:
        self.tracks[producer.id] = producer
        self.broadcast(
            {"type": "track.published", "track": producer.describe()},
            exclude=producer.participant_id,
        )
        for participant in self.participants.values():
            participant.offer_track(producer)
        if self.shard is not None:
            self.shard.track_published(producer)
            if self.shard.is_remote(producer.id):
                return  # its own worker reports it
        self.hooks.events.emit("track_published", room=self.describe(), track=producer.describe())

    def producer_removed(self, producer: Producer) -> None:
        if self.tracks.pop(producer.id, None) is None:
            return
        self.broadcast({"type": "track.unpublished", "track": producer.describe()})
        traffic = self.hooks.traffic
        for participant in self.participants.values():
            if traffic is not None:
                consumer = participant.subscriber.consumers.get(producer.id)
                if consumer is not None:
                    traffic.retire(consumer)  # it forwards nothing more
            participant.subscriber.drop(producer.id)
        if traffic is not None:
            traffic.retire(producer)
        if self.shard is not None:
            self.shard.track_unpublished(producer)
            if self.shard.is_remote(producer.id):
                return  # its own worker reports it
        self.hooks.events.emit("track_unpublished", room=self.describe(), track=producer.describe())

    async def _watch_speakers(self) -> None:
        """Tell everyone who is speaking, from audio levels (ends when the room empties)."""
        while self.participants:
            await asyncio.sleep(SPEAKER_TICK_S)
            if self.shard is not None and not self.shard.home:
                continue  # the home worker decides and tells us
            heard: dict[str, float | None] = {p: None for p in self.participants}
            for producer in self.tracks.values():
                if producer.kind != "audio":
                    continue
                level = producer.take_audio_level()
                current = heard.get(producer.participant_id)
                if level is not None and (current is None or level > current):
                    heard[producer.participant_id] = level
            speakers = self.speakers.update(heard)
            if speakers is not None:
                self.broadcast({"type": "speaker.changed", "speakers": speakers})
                if self.shard is not None:
                    self.shard.speakers_changed(speakers)

    def set_muted(self, producer: Producer, muted: bool, now: float) -> None:
        producer.set_muted(muted, now)
        self.broadcast({"type": "track.updated", "track": producer.describe()})
        if self.shard is not None:
            self.shard.track_updated(producer)

    def broadcast(self, message: dict[str, Any], *, exclude: str | None = None) -> None:
        for participant in self.participants.values():
            if participant.id != exclude:
                participant.send(message)

    def all_participants(self) -> list[dict[str, str]]:
        """``joined.participants``: this worker's and, if the room spans, the other's."""
        local = [p.describe() for p in self.participants.values()]
        return local + (self.shard.remote_participants() if self.shard is not None else [])

    @property
    def empty(self) -> bool:
        return not self.participants

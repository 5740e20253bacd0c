"""Room: the participants and tracks of one call, and the events between them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from sfu.speakers import ActiveSpeakers

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.producer import Producer

__all__ = ["SPEAKER_TICK_S", "Room"]

log = structlog.get_logger(__name__)

SPEAKER_TICK_S = 0.2


class Room:
    """Participants and tracks of one call. Nothing here crosses into another room."""

    def __init__(self, room_id: str) -> None:
        self.id = room_id
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, Producer] = {}
        self.speakers = ActiveSpeakers()
        self._speaker_task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, str]:
        return {"id": self.id}

    def join(self, participant: Participant) -> None:
        self.participants[participant.id] = participant
        self.broadcast(
            {"type": "participant.joined", "participant": participant.describe()},
            exclude=participant.id,
        )
        for producer in self.tracks.values():
            participant.offer_track(producer)
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
        await participant.close()
        self.broadcast({"type": "participant.left", "participant": participant.describe()})
        log.info("participant_left", room=self.id, participant=participant.id)

    def producer_added(self, producer: Producer) -> None:
        self.tracks[producer.id] = producer
        self.broadcast(
            {"type": "track.published", "track": producer.describe()},
            exclude=producer.participant_id,
        )
        for participant in self.participants.values():
            participant.offer_track(producer)

    def producer_removed(self, producer: Producer) -> None:
        if self.tracks.pop(producer.id, None) is None:
            return
        self.broadcast({"type": "track.unpublished", "track": producer.describe()})
        for participant in self.participants.values():
            participant.subscriber.drop(producer.id)

    async def _watch_speakers(self) -> None:
        """Tell everyone who is speaking, from audio levels (ends when the room empties)."""
        while self.participants:
            await asyncio.sleep(SPEAKER_TICK_S)
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

    def set_muted(self, producer: Producer, muted: bool, now: float) -> None:
        producer.set_muted(muted, now)
        self.broadcast({"type": "track.updated", "track": producer.describe()})

    def broadcast(self, message: dict[str, Any], *, exclude: str | None = None) -> None:
        for participant in self.participants.values():
            if participant.id != exclude:
                participant.send(message)

    @property
    def empty(self) -> bool:
        return not self.participants

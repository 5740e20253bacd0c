"""Active speaker events from RFC 6464 audio levels, through the real server."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.media import ToneTrack
from helpers.server import ServerProcess

from signaling.client import Participant

pytestmark = pytest.mark.integration


def _first_speaker(event: dict[str, Any], participant_id: str) -> bool:
    return bool(event["speakers"]) and event["speakers"][0] == participant_id


async def test_loudest_participant_is_the_active_speaker(server: ServerProcess, room: str) -> None:
    loud = await Participant.join(
        server.url, server.token(room, "loud"), publish_tracks=[ToneTrack(440, amplitude=0.5)]
    )
    quiet = await Participant.join(
        server.url, server.token(room, "quiet"), publish_tracks=[ToneTrack(660, amplitude=0.01)]
    )
    listener = await Participant.join(server.url, server.token(room, "listener"))
    try:
        # Both are above the silence floor (smoothing brings the quiet one in a tick later).
        event = await listener.next_event(
            "speaker.changed", lambda e: len(e["speakers"]) == 2, timeout=5
        )
        assert event["speakers"] == [loud.id, quiet.id]
        # The loud speaker mutes: the quiet one becomes the active speaker.
        [audio_id] = loud.published
        await loud.mute(audio_id, True)
        event = await listener.next_event(
            "speaker.changed", lambda e: _first_speaker(e, quiet.id), timeout=5
        )
        assert loud.id not in event["speakers"]
    finally:
        for participant in (listener, quiet, loud):
            await participant.close()

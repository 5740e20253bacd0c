"""Active speaker events from RFC 6464 audio levels, through the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from helpers.media import ToneTrack
from helpers.server import ServerProcess

from signaling.client import Participant

pytestmark = pytest.mark.integration


def _first_speaker(event: dict[str, Any], participant_id: str) -> bool:
    return bool(event["speakers"]) and event["speakers"][0] == participant_id


def _led_by(participant_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: _first_speaker(event, participant_id)


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


async def test_active_speaker_follows_the_loud_tone(server: ServerProcess, room: str) -> None:
    """The loud tone moves from one publisher to the other: so does the active speaker
    (prints the speaker-change latency: the swap → the listener's `speaker.changed`)."""
    first_tone, second_tone = ToneTrack(440, amplitude=0.5), ToneTrack(660, amplitude=0.01)
    first = await Participant.join(
        server.url, server.token(room, "first"), publish_tracks=[first_tone]
    )
    second = await Participant.join(
        server.url, server.token(room, "second"), publish_tracks=[second_tone]
    )
    listener = await Participant.join(server.url, server.token(room, "listener"))
    loop = asyncio.get_running_loop()
    latencies = []
    try:
        await listener.next_event(
            "speaker.changed", lambda e: _first_speaker(e, first.id), timeout=5
        )
        swaps = ((second_tone, first_tone, second.id), (first_tone, second_tone, first.id))
        for loud, quiet, loud_id in swaps * 2:
            await asyncio.sleep(1.5)  # let the smoothing settle on the current speaker
            listener.signal.discard("speaker.changed")
            swapped = loop.time()
            loud.amplitude, quiet.amplitude = 0.5, 0.01
            await listener.next_event("speaker.changed", _led_by(loud_id), timeout=5)
            latencies.append(loop.time() - swapped)
        print(f"\nspeaker_change_latency_ms: {[round(1000 * s) for s in latencies]}")
    finally:
        for participant in (listener, second, first):
            await participant.close()

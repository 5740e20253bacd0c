"""Session resumption: a participant outlives a dropped signalling connection for a while.

When a WebSocket ends without ``leave`` (network loss, a laptop lid, a proxy timeout), the
participant stays in its room — same id, producers, subscriptions and consent — for
``resume_window_s``. Nobody is told it left. A new connection sending ``join`` with the
same identity's access token and the ``resume`` secret from ``joined`` takes it over;
after the window it leaves as if it had sent ``leave``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.room import Room
    from sfu.server import Server

__all__ = ["claim", "detach", "end_participant"]

MAX_SECRET_CHARS = 128


async def end_participant(server: Server, room: Room, participant: Participant) -> None:
    """The participant leaves for good: media closed, others told, recording finished."""
    await room.leave(participant)
    if server.recordings is not None:
        await server.recordings.participant_left(room, participant)
    server.release_room(room)  # the last one out gives the room's cluster claim up


def detach(server: Server, room: Room, participant: Participant) -> None:
    """Keep the participant without a connection; it leaves unless claimed in time."""
    window = server.settings.resume_window_s
    participant.connection = None
    participant.log.info("participant_detached", window_s=window)
    participant.expiry = asyncio.get_running_loop().create_task(
        _expire(server, room, participant, window)
    )


async def _expire(server: Server, room: Room, participant: Participant, window: float) -> None:
    with contextlib.suppress(TimeoutError):  # the window ends, or the server drains
        await asyncio.wait_for(participant.give_up.wait(), window)
    # From here on nobody can claim it: decided before the first await, so a resume
    # racing the expiry either wins entirely (and cancelled this task) or loses entirely.
    participant.resume_secret = ""
    participant.log.info("resume_window_expired")
    await end_participant(server, room, participant)


def claim(room: Room | None, secret: str, identity: str) -> Participant | None:
    """The participant this ``resume`` secret belongs to, if it is still in the room and
    the token names the same identity; its expiry is cancelled (synchronously)."""
    if room is None or not secret or len(secret) > MAX_SECRET_CHARS:
        return None
    for participant in room.participants.values():
        if (
            participant.resume_secret
            and hmac.compare_digest(participant.resume_secret, secret)
            and participant.identity == identity
        ):
            if participant.expiry is not None:
                participant.expiry.cancel()
                participant.expiry = None
            return participant
    return None

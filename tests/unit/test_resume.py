"""signaling.resume: detach, claim, expiry, and the races between them (real Room and
Participant objects, a stand-in server; no peer connection is ever negotiated)."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from sfu.participant import Participant
from sfu.peer_connection import MediaConfig
from sfu.room import Room
from sfu.settings import Settings as SfuSettings
from sfu.settings import SettingsError, add_serve_arguments
from signaling.resume import claim, detach


@dataclass
class Settings:
    resume_window_s: float


@dataclass
class Registry:
    released: list[Room] = field(default_factory=list)

    def release(self, room: Room) -> None:
        self.released.append(room)


@dataclass
class StandInServer:
    settings: Settings
    rooms: Registry = field(default_factory=Registry)
    recordings: Any = None

    def release_room(self, room: Room) -> None:
        """As Server.release_room: the registry forgets the room (and the cluster claim)."""
        self.rooms.release(room)


def _member(room: Room, identity: str) -> Participant:
    participant = Participant(
        participant_id=f"PA_{identity}",
        identity=identity,
        role="customer",
        grants=frozenset({"publish", "subscribe"}),
        room=room,
        media=MediaConfig(),
    )
    room.join(participant)
    return participant


def _events(member: Participant) -> list[str]:
    types = []
    while not member.outbox.empty():
        message = member.outbox.get_nowait()
        if message is not None:
            types.append(str(message["type"]))
    return types


async def test_claimed_in_time_stays_and_nobody_is_told() -> None:
    server = StandInServer(Settings(resume_window_s=0.2))
    room = Room("r1")
    alice, bob = _member(room, "alice"), _member(room, "bob")
    _events(bob)
    detach(server, room, alice)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert claim(room, alice.resume_secret, "alice") is alice
    assert alice.expiry is None
    await asyncio.sleep(0.3)  # past the window: the cancelled expiry did nothing
    assert room.participants.keys() == {alice.id, bob.id}
    assert "participant.left" not in _events(bob)
    await room.leave(alice)
    await room.leave(bob)


async def test_expiry_leaves_and_then_the_secret_is_worthless() -> None:
    server = StandInServer(Settings(resume_window_s=0.05))
    room = Room("r2")
    alice, bob = _member(room, "alice"), _member(room, "bob")
    _events(bob)
    secret = alice.resume_secret
    detach(server, room, alice)  # type: ignore[arg-type]
    assert alice.expiry is not None
    await asyncio.wait_for(alice.expiry, 5.0)
    assert alice.id not in room.participants
    assert "participant.left" in _events(bob)
    assert server.rooms.released == [room]
    assert claim(room, secret, "alice") is None
    await room.leave(bob)


async def test_a_resume_racing_the_expiry_gets_all_or_nothing() -> None:
    """The expiry clears the secret before its first await: once it has woken, a claim
    fails, even while the participant is still being closed."""
    server = StandInServer(Settings(resume_window_s=0.01))
    room = Room("r3")
    alice = _member(room, "alice")
    secret = alice.resume_secret
    detach(server, room, alice)  # type: ignore[arg-type]
    while alice.resume_secret:  # the expiry task woke and decided
        await asyncio.sleep(0.001)
    assert claim(room, secret, "alice") is None
    assert alice.expiry is not None
    await asyncio.wait_for(alice.expiry, 5.0)
    assert room.empty


async def test_claim_needs_the_same_identity_and_the_exact_secret() -> None:
    room = Room("r4")
    alice = _member(room, "alice")
    assert claim(room, alice.resume_secret, "mallory") is None
    assert claim(room, alice.resume_secret[:-1], "alice") is None
    assert claim(room, "", "alice") is None
    assert claim(room, "x" * 1000, "alice") is None
    assert claim(None, alice.resume_secret, "alice") is None
    assert claim(room, alice.resume_secret, "alice") is alice
    await room.leave(alice)


async def test_draining_ends_a_detached_participant_at_once() -> None:
    server = StandInServer(Settings(resume_window_s=60.0))
    room = Room("r5")
    alice = _member(room, "alice")
    detach(server, room, alice)  # type: ignore[arg-type]
    alice.give_up.set()  # what Server.start_draining does for participants without a socket
    assert alice.expiry is not None
    await asyncio.wait_for(alice.expiry, 5.0)
    assert room.empty


def test_resume_window_setting() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)

    def build(*argv: str, **env: str) -> SfuSettings:
        return SfuSettings.from_env_and_args(parser.parse_args(list(argv)), env)

    assert SfuSettings().resume_window_s == 30
    assert build("--resume-window", "5").resume_window_s == 5
    assert build(SFU_RESUME_WINDOW="0").resume_window_s == 0  # resumption off
    assert SfuSettings().redacted()["resume_window_s"] == 30
    for bad in ("-1", "7200", "soon"):
        with pytest.raises(SettingsError, match="SFU_RESUME_WINDOW"):
            build(SFU_RESUME_WINDOW=bad)

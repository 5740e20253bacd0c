"""Recording across the shard link: the wire messages (recorder.span_wire), ShardLink's
dispatch of ``recording.*``, and two real RecordingServices (one per "worker", each with its
own data dir, ledger and revocation store) linked in-process. Participants are stand-ins;
the media side (sinks on real producers) is covered by tests/integration/test_spanning_recording.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from recorder.requests import RecordingError, RoomRecording
from recorder.service import RecordingService
from recorder.span_wire import (
    consents_message,
    parse_consents,
    parse_start,
    parse_stop,
    start_message,
    stop_message,
)
from sfu.keys import KeyStore
from sfu.participant import Participant
from sfu.pipe import PipeEndpoint
from sfu.room import Room
from sfu.shard import ShardLink, ShardProtocolError

NOTICE = "We record this call for training."


@dataclass
class Person:
    id: str
    identity: str
    grants: tuple[str, ...] = ()
    inbox: list[dict[str, Any]] = field(default_factory=list)

    def can(self, grant: str) -> bool:
        return grant in self.grants

    def send(self, message: dict[str, Any]) -> None:
        self.inbox.append(message)

    def last(self, kind: str) -> dict[str, Any]:
        return [m for m in self.inbox if m["type"] == kind][-1]


def _add(room: Room, person: Person) -> Participant:
    participant = cast(Participant, person)
    room.participants[person.id] = participant
    return participant


# --- the wire ---------------------------------------------------------------------------


def test_messages_round_trip() -> None:
    room = Room("r")
    request = RoomRecording("RQ1", room, frozenset({"audio"}), NOTICE, "PA", "agent")
    start = parse_start(start_message(request))
    assert (start.request, start.scope, start.notice, start.by, start.by_identity) == (
        "RQ1",
        frozenset({"audio"}),
        NOTICE,
        "PA",
        "agent",
    )
    assert parse_stop(stop_message(request, "agent")) == ("RQ1", "agent")
    assert parse_consents(consents_message(request)) == ("RQ1", {})


@pytest.mark.parametrize(
    "message",
    [
        {"op": "recording.start"},
        {"op": "recording.start", "request": "R", "scope": ["smell"], "notice": "n", "by": "a",
         "by_identity": "a", "consents": []},
        {"op": "recording.start", "request": "R", "scope": ["audio"], "notice": "", "by": "a",
         "by_identity": "a", "consents": []},
        {"op": "recording.consents", "request": "R", "consents": "all"},
        {"op": "recording.consents", "request": "R", "consents": [{"participant": "P"}]},
        {"op": "recording.consents", "request": "R",
         "consents": [{"participant": "P", "state": "maybe", "recorded": False}]},
        {"op": "recording.consents", "request": "R",
         "consents": [{"participant": "P", "state": "granted", "recorded": "yes"}]},
        {"op": "recording.stop", "request": 5, "actor": "a"},
        {"op": "recording.frobnicate"},
    ],
)  # fmt: skip
async def test_malformed_messages_end_the_link(tmp_path: Path, message: dict[str, Any]) -> None:
    service = await RecordingService.open(tmp_path, KeyStore.open(tmp_path), "test", recover=False)
    try:
        with pytest.raises(ShardProtocolError):
            service.link_message(Room("r"), message)
        assert service.rooms == {}
    finally:
        await service.close()


async def test_shard_link_hands_recording_messages_to_the_recorder() -> None:
    endpoint = PipeEndpoint()
    await endpoint.open()
    link = ShardLink(Room("r"), endpoint, lambda message: None, home=True)
    try:
        link.on_message({"op": "recording.stop", "request": "R", "actor": "a"})  # ignored: off
        got: list[dict[str, Any]] = []
        link.on_recording = got.append
        link.on_message({"op": "recording.stop", "request": "R", "actor": "a"})
        assert got == [{"op": "recording.stop", "request": "R", "actor": "a"}]
        with pytest.raises(ShardProtocolError):
            link.on_message({"op": "recordingstop"})
    finally:
        link.close("test")


# --- two services, one room on two "workers" ----------------------------------------------


@dataclass
class Span:
    home: RecordingService
    spill: RecordingService
    home_room: Room
    spill_room: Room


@pytest.fixture
async def span(tmp_path: Path) -> AsyncIterator[Span]:
    # Both workers sign with the same keys (one data dir's key store), as in `--workers`.
    keys = KeyStore.open(tmp_path / "keys")
    home = await RecordingService.open(tmp_path / "a", keys, "test", recover=False)
    spill = await RecordingService.open(tmp_path / "b", keys, "test", recover=False)
    result = Span(home, spill, Room("r"), Room("r"))
    yield result
    await home.close()
    await spill.close()


def _link(span: Span) -> None:
    span.home.link_opened(span.home_room, lambda m: span.spill.link_message(span.spill_room, m))
    span.spill.link_opened(span.spill_room, lambda m: span.home.link_message(span.home_room, m))


async def _settle() -> None:
    for _ in range(20):  # the link's messages are applied in tasks, in order
        await asyncio.sleep(0.01)


def _state(person: Person) -> dict[str, Any]:
    state = person.last("recording.state")
    return {k: state[k] for k in ("active", "recording", "participants", "requests")}


async def test_a_request_reaches_the_other_shard_and_state_is_shared(span: Span) -> None:
    agent = Person("PA", "agent", ("record",))
    near, far = Person("PN", "near"), Person("PF", "far")
    _add(span.home_room, agent)
    _add(span.home_room, near)
    _link(span)
    request = await span.home.start(span.home_room, cast(Participant, agent), ["audio"], NOTICE)
    far_participant = _add(span.spill_room, far)
    await span.spill.participant_joined(span.spill_room, far_participant)  # a race with start
    await _settle()
    asked = far.last("consent.request")
    assert [m["type"] for m in far.inbox].count("consent.request") == 1, "asked once"
    assert asked == near.last("consent.request")
    assert asked["request"] == request.id and asked["by"] == agent.id

    with pytest.raises(RecordingError):  # one request per room, on either shard
        await span.spill.start(span.spill_room, cast(Participant, far), ["audio"], NOTICE)

    await span.home.refuse(span.home_room, cast(Participant, near), request.id)
    reply = await span.spill.grant(span.spill_room, far_participant, request.id, ["audio"])
    assert reply["type"] == "consent.granted"
    await _settle()
    assert _state(agent) == _state(far) == _state(near)
    assert {"participant": "PF", "state": "granted"} in _state(agent)["requests"]
    assert {"participant": "PN", "state": "refused"} in _state(far)["requests"]

    # The agent's stop ends the request on both shards.
    await span.home.stop(span.home_room, cast(Participant, agent))
    await _settle()
    assert span.spill.rooms == {} and span.home.rooms == {}
    assert _state(far)["recording"] is None


async def test_a_request_crosses_when_the_link_opens_and_ends_when_it_closes(span: Span) -> None:
    agent, far = Person("PA", "agent", ("record",)), Person("PF", "far")
    _add(span.home_room, agent)
    await span.home.start(span.home_room, cast(Participant, agent), ["audio", "video"], NOTICE)
    _add(span.spill_room, far)
    _link(span)  # the room spills while it is being recorded
    await _settle()
    assert far.last("consent.request")["scope"] == ["audio", "video"]
    assert _state(agent)["requests"] == [{"participant": "PF", "state": "pending"}]

    span.spill.link_closed(span.spill_room)  # the home worker is gone: so is its agent
    span.home.link_closed(span.home_room)
    await _settle()
    assert span.spill.rooms == {}
    assert _state(far)["recording"] is None
    assert _state(agent)["requests"] == []  # the home forgets the other shard's answers

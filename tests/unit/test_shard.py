"""sfu.shard.ShardLink: two real Rooms (one per "worker"), their links wired to each other
in-process, real PipeEndpoints on loopback. Participants are stand-ins that record what the
room sends them and offers them (the media side of a participant is not under test here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from sfu import shard as shard_module
from sfu.codec import Codec
from sfu.layers import Layer
from sfu.participant import Participant
from sfu.pipe import PipedProducer, PipeEndpoint
from sfu.producer import Producer
from sfu.room import Room, RoomHooks
from sfu.shard import ShardLink, ShardProtocolError

OPUS = Codec(kind="audio", name="opus", clock_rate=48_000, channels=2, payload_type=111)


class Events:
    def __init__(self) -> None:
        self.emitted: list[str] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.emitted.append(event)


class Subscriber:
    def __init__(self) -> None:
        self.consumers: dict[str, Any] = {}
        self.dropped: list[str] = []

    def drop(self, track_id: str) -> None:
        self.dropped.append(track_id)


class Person:
    """What Room needs of a participant: id, describe, send, offer_track, subscriber."""

    def __init__(self, participant_id: str, hooks: RoomHooks | None = None) -> None:
        self.id = participant_id
        self.identity, self.role = f"who-{participant_id}", "customer"
        self.hooks = hooks  # Room.join adopts the server's hooks from its participants
        self.inbox: list[dict[str, Any]] = []
        self.offered: list[str] = []
        self.subscriber = Subscriber()

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "identity": self.identity, "role": self.role}

    def send(self, message: dict[str, Any]) -> None:
        self.inbox.append(message)

    def offer_track(self, producer: Producer) -> None:
        if producer.participant_id != self.id:
            self.offered.append(producer.id)

    async def close(self) -> None:
        pass

    def types(self) -> list[str]:
        return [m["type"] for m in self.inbox]


class Feedback:
    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        pass

    def nack_pending(self, producer: Producer) -> None:
        pass

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        pass


def local_track(room: Room, owner: Person, track_id: str = "TRa") -> Producer:
    producer = Producer(
        track_id=track_id,
        participant_id=owner.id,
        kind="audio",
        mid="0",
        codec=OPUS,
        ssrc=0x0A0A0A0A,
        rtx_ssrc=None,
        extension_map=list(range(256)),
        feedback=Feedback(),
        now=time.monotonic(),
        audio_level_id=1,
    )
    room.producer_added(producer)
    return producer


def admit(room: Room, person: Person) -> None:
    """Room.join without the speaker task's needs: the room's own bookkeeping only."""
    room.participants[person.id] = cast(Participant, person)
    if room.shard is not None:
        room.shard.participant_joined(cast(Participant, person))


Pair = tuple[ShardLink, ShardLink]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    home_room, spill_room = Room("r"), Room("r")
    home_room.hooks = RoomHooks(events=Events())
    spill_room.hooks = RoomHooks(events=Events())
    ends = (PipeEndpoint(), PipeEndpoint())
    ports = [await end.open() for end in ends]
    ends[0].connect(ports[1])
    ends[1].connect(ports[0])
    links: list[ShardLink] = []
    # Each link's messages reach the other in order, on a later loop turn (as over a socket).
    loop = asyncio.get_running_loop()

    def to(index: int) -> Any:
        return lambda message: loop.call_soon(links[index].on_message, message)

    links.append(ShardLink(home_room, ends[0], to(1), home=True))
    links.append(ShardLink(spill_room, ends[1], to(0), home=False))
    home_room.shard, spill_room.shard = links
    yield links[0], links[1]
    for link in links:
        link.close("test over")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_snapshot_gives_the_spill_shard_everyone_and_every_track(pair: Pair) -> None:
    home, _ = pair
    host = Person("PAhost")
    admit(home.room, host)
    producer = local_track(home.room, host)
    await settle()
    spill_room = Room("r")
    spill_room.hooks = RoomHooks(events=Events())
    late = ShardLink(spill_room, PipeEndpoint(), lambda m: None, home=False)
    spill_room.shard = late
    late.apply_snapshot(home.snapshot())
    piped = spill_room.tracks[producer.id]
    assert isinstance(piped, PipedProducer)
    assert piped.describe() == producer.describe()
    assert (piped.kind, piped.ssrc, piped.audio_level_id) == ("audio", 0x0A0A0A0A, 1)
    assert spill_room.all_participants() == [host.describe()]
    assert cast(Events, spill_room.hooks.events).emitted == []  # its own worker reports it
    late.close("test over")


async def test_events_cross_both_ways(pair: Pair) -> None:
    home, spill = pair
    near, far = Person("PAnear"), Person("PAfar")
    admit(home.room, near)
    admit(spill.room, far)
    await settle()
    assert far.types() == ["participant.joined"] and near.types() == ["participant.joined"]
    assert [p["id"] for p in spill.room.all_participants()] == ["PAfar", "PAnear"]

    producer = local_track(home.room, near)
    await settle()
    assert far.inbox[-1] == {"type": "track.published", "track": producer.describe()}
    assert far.offered == [producer.id]  # offered like any track of the room
    home.room.set_muted(producer, True, time.monotonic())
    await settle()
    assert far.inbox[-1]["type"] == "track.updated" and far.inbox[-1]["track"]["muted"]
    assert spill.room.tracks[producer.id].muted

    home.speakers_changed(["PAnear"])
    spill.speakers_changed(["PAfar"])  # only the home decides who speaks
    await settle()
    assert far.inbox[-1] == {"type": "speaker.changed", "speakers": ["PAnear"]}
    assert "speaker.changed" not in near.types()

    home.room.producer_removed(producer)
    await settle()
    assert far.inbox[-1]["type"] == "track.unpublished"
    assert producer.id not in spill.room.tracks and far.subscriber.dropped == [producer.id]
    home.room.participants.pop(near.id)
    home.participant_left(cast(Participant, near))
    await settle()
    assert far.inbox[-1] == {"type": "participant.left", "participant": near.describe()}
    assert spill.room.all_participants() == [far.describe()]
    events = cast(Events, home.room.hooks.events).emitted
    assert events.count("track_published") == 1  # the home's webhook only, not the spill's
    assert cast(Events, spill.room.hooks.events).emitted == []


async def test_tracks_are_piped_only_while_the_other_shard_subscribes(pair: Pair) -> None:
    home, spill = pair
    host = Person("PAhost")
    admit(home.room, host)
    producer = local_track(home.room, host)
    await settle()
    piped = spill.room.tracks[producer.id]
    assert isinstance(piped, PipedProducer) and home.endpoint.sinks == {}
    consumer: Any = object()
    piped.add_consumer(consumer)
    await settle()
    assert list(home.endpoint.sinks) == [producer.id] and len(producer.pipes) == 1
    piped.remove_consumer(consumer)
    await settle()
    assert home.endpoint.sinks == {} and producer.pipes == []


async def test_bad_messages_raise_and_change_nothing(pair: Pair) -> None:
    _, spill = pair
    bad: list[Any] = [
        "text",
        {"op": "nope"},
        {"op": "participant.joined", "participant": {"id": "", "identity": "x", "role": "r"}},
        {"op": "track.published", "track": {"id": "T", "kind": "video", "ssrc": -1}},
        {"op": "track.published", "track": {"id": "T", "kind": "data", "ssrc": 5}},
        {"op": "track.published", "track": {"id": "T", "kind": "audio", "ssrc": 5, "codec": 1}},
        {"op": "speaker.changed", "speakers": [1]},
        {"op": "demand", "track": "T", "on": "yes"},
    ]
    for message in bad:
        with pytest.raises(ShardProtocolError):
            spill.on_message(message)
    assert spill.room.tracks == {} and spill.remote == {}


async def test_close_removes_the_other_shard_from_this_one(pair: Pair) -> None:
    home, spill = pair
    near, far = Person("PAnear"), Person("PAfar")
    admit(home.room, near)
    admit(spill.room, far)
    producer = local_track(home.room, near)
    await settle()
    assert producer.id in spill.room.tracks
    spill.close("home worker gone")
    assert spill.room.shard is None and spill.room.tracks == {}
    assert far.types()[-2:] == ["track.unpublished", "participant.left"]
    assert spill.endpoint.closed


async def test_an_empty_spill_shard_closes_its_link_after_a_grace(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_module, "EMPTY_GRACE_S", 0.05)
    home, spill = pair
    closed: list[ShardLink] = []
    spill._on_closed = closed.append
    far = Person("PAfar")
    admit(spill.room, far)
    spill.room.participants.pop(far.id)
    spill.room_empty()
    admit(spill.room, far)  # a join within the grace keeps the link
    await asyncio.sleep(0.1)
    assert not spill.closed
    spill.room.participants.pop(far.id)
    spill.room_empty()
    home.room_empty()  # the home keeps its link while the spill shard lives
    await asyncio.sleep(0.1)
    assert closed == [spill] and spill.room.shard is None and not home.closed


async def test_room_webhooks_come_from_the_home_once(pair: Pair) -> None:
    home, spill = pair
    near, far = Person("PAnear", home.room.hooks), Person("PAfar", spill.room.hooks)
    home.room.join(cast(Participant, near))
    spill.room.join(cast(Participant, far))
    await settle()
    home_events = cast(Events, home.room.hooks.events).emitted
    spill_events = cast(Events, spill.room.hooks.events).emitted
    assert home_events.count("room_started") == 1 and "room_started" not in spill_events
    await home.room.leave(cast(Participant, near))
    assert "room_finished" not in home_events  # the spill shard still has someone
    await spill.room.leave(cast(Participant, far))
    spill.close("empty")
    home.close("link ended")  # what the WebSocket's end tells the home
    await settle()
    assert "room_finished" not in spill_events
    assert home_events.count("room_finished") == 1  # once the link is gone and both are empty

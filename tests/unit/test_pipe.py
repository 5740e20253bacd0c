"""sfu.pipe: two real PipeEndpoints on loopback UDP, a real Producer on side A, a
PipedProducer and a real Consumer on side B (only the subscriber's transport and the
publisher's feedback are fakes that record what they are asked)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from sfu.codec import Codec
from sfu.consumer import Consumer, ConsumerState
from sfu.layers import Layer
from sfu.pipe import PipedProducer, PipeEndpoint, codec_from_wire, codec_to_wire
from sfu.producer import Producer
from sfu.transport import MediaTransport

VP8 = Codec(kind="video", name="vp8", clock_rate=90_000, channels=None, payload_type=96)
SSRC = 0x11223344
KEY = b"\x10" + b"\x00\x00\x00\x9d\x01\x2a" + b"K" * 40
INTER = b"\x10" + b"\x01\x00\x00" + b"I" * 40
_HEADER = struct.Struct("!BBHII")


def rtp(seq: int, ts: int, payload: bytes, *, marker: bool = True) -> bytes:
    return _HEADER.pack(0x80, (0x80 if marker else 0) | 96, seq, ts, SSRC) + payload


class Feedback:
    def __init__(self) -> None:
        self.keyframe_requests = 0
        self.layers: list[int] = []
        self.retries: list[float] = []

    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        self.keyframe_requests += 1
        self.layers.append(layer.index)

    def nack_pending(self, producer: Producer) -> None:
        pass

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        self.retries.append(delay_s)


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int]] = []  # (packet, out seq)

    def send_rtp(self, packet: bytes, second: int, seq: int, ts: int, ssrc: int) -> bool:
        self.sent.append((packet, seq))
        return True


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[PipeEndpoint, PipeEndpoint]]:
    a, b = PipeEndpoint(), PipeEndpoint()
    port_a, port_b = await a.open(), await b.open()
    a.connect(port_b)
    b.connect(port_a)
    yield a, b
    a.close()
    b.close()


def source(feedback: Feedback) -> Producer:
    return Producer(
        track_id="TRa",
        participant_id="PAa",
        kind="video",
        mid="0",
        codec=VP8,
        ssrc=SSRC,
        rtx_ssrc=None,
        extension_map=list(range(256)),
        feedback=feedback,
        now=time.monotonic(),
    )


def piped(b: PipeEndpoint, demand: list[bool]) -> PipedProducer:
    producer = b.make_piped(
        track_id="TRa",
        participant_id="PAa",
        kind="video",
        mid="0",
        codec=codec_from_wire(codec_to_wire(VP8)),
        ssrcs=[SSRC],
        audio_level_id=0,
        muted=False,
        on_demand=lambda _p, on: demand.append(on),
    )
    assert producer is not None
    return producer


def consumer_of(producer: Producer, transport: Transport) -> Consumer:
    return Consumer(
        producer,
        subscriber_id="PAb",
        transport=cast(MediaTransport, transport),
        ssrc=0xA0A0A0A0,
        rtx_ssrc=0xB0B0B0B0,
        cname="b",
    )


async def test_packets_cross_unchanged_and_feed_b_consumers(
    pair: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = pair
    feedback = Feedback()
    producer = source(feedback)
    demand: list[bool] = []
    remote = piped(b, demand)
    transport = Transport()
    consumer = consumer_of(remote, transport)
    remote.add_consumer(consumer)
    assert demand == [True]  # the first consumer asks the other shard to pipe
    assert a.start_sending(producer) is not None
    consumer.start(100, None, time.monotonic())
    packets = [rtp(500, 9000, KEY), rtp(501, 12000, INTER), rtp(502, 15000, INTER)]
    for packet in packets:
        producer.on_rtp(packet, time.monotonic())
    await until(lambda: len(transport.sent) == 3)
    assert [p for p, _ in transport.sent] == packets  # raw bytes, no rewrite on the pipe
    assert consumer.state is ConsumerState.FORWARDING
    assert remote.keyframes == 1 and remote.packets == 3
    remote.remove_consumer(consumer)
    assert demand == [True, False]
    a.stop_sending(producer)
    producer.on_rtp(rtp(503, 18000, INTER), time.monotonic())
    await asyncio.sleep(0.1)
    assert remote.packets == 3  # nothing piped once B has no subscriber for it


async def test_keyframe_request_crosses_and_is_throttled(
    pair: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = pair
    feedback = Feedback()
    producer = source(feedback)
    a.start_sending(producer)
    remote = piped(b, [])
    consumer = consumer_of(remote, Transport())
    remote.add_consumer(consumer)
    consumer.start(100, None, time.monotonic())  # waits for a keyframe: PLI through the pipe
    await until(lambda: feedback.keyframe_requests == 1)
    assert a.keyframe_requests_in == 1
    # A second subscriber inside the 500 ms window: no second PLI upstream at once ...
    second = consumer_of(remote, Transport())
    remote.add_consumer(second)
    remote.layers[0].last_keyframe_request_at = -1e9  # B's own throttle aside: A's must hold
    second.start(100, None, time.monotonic())
    await until(lambda: a.keyframe_requests_in == 2)
    assert feedback.keyframe_requests == 1
    # ... but when the window ends with no keyframe since, A asks the publisher again.
    await until(lambda: feedback.keyframe_requests == 2, timeout=2.0)


async def test_nack_is_served_from_the_other_side_cache(
    pair: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = pair
    producer = source(Feedback())
    sink = a.start_sending(producer)
    assert sink is not None
    remote = piped(b, [])
    transport = Transport()
    consumer = consumer_of(remote, transport)
    remote.add_consumer(consumer)
    consumer.start(100, None, time.monotonic())
    producer.on_rtp(rtp(700, 1000, KEY), time.monotonic())
    producer.pipes.remove(sink)  # packet 701 is lost on the pipe
    producer.on_rtp(rtp(701, 4000, INTER), time.monotonic())
    producer.pipes.append(sink)
    for seq in range(702, 706):
        producer.on_rtp(rtp(seq, 1000 + 3000 * (seq - 700), INTER), time.monotonic())
    await until(lambda: remote.cache.get(701) is not None)
    assert a.resent >= 1 and a.nacked_in >= 1
    assert rtp(701, 4000, INTER) in [p for p, _ in transport.sent]


async def test_sender_clock_crosses_for_lip_sync(pair: tuple[PipeEndpoint, PipeEndpoint]) -> None:
    a, b = pair
    producer = source(Feedback())
    a.start_sending(producer)
    remote = piped(b, [])
    now = time.monotonic()
    producer.on_sender_report(0xE000_0000_0000_0000, 123_456, now)
    a.tick(now + 0.5)
    await until(lambda: remote.sender_clock is not None)
    assert remote.sender_clock is not None
    # Moved forward by the 0.5 s it aged on A: NTP and RTP stay a consistent pair.
    assert remote.sender_clock.rtp_ts == 123_456 + 45_000
    assert remote.sender_clock.ntp == 0xE000_0000_0000_0000 + (1 << 31)


async def test_foreign_and_garbage_datagrams_change_nothing(
    pair: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = pair
    remote = piped(b, [])
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.sendto(rtp(1, 1, KEY), ("127.0.0.1", b.port))  # not the connected peer
    finally:
        stranger.close()
    a.send_rtcp(b"")  # nothing
    a.send_rtcp(b"\x00" * 20)  # not RTP version 2
    a.send_rtcp(rtp(1, 1, KEY)[:8])  # too short
    a.send_rtcp(_HEADER.pack(0x80, 96, 1, 1, 0xDEAD) + KEY)  # unknown SSRC
    await until(lambda: b.dropped_unknown >= 2)
    await asyncio.sleep(0.05)
    assert remote.packets == 0 and b.rtp_in == 0


async def test_ssrc_taken_is_refused_and_close_ends_everything(
    pair: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = pair
    remote = piped(b, [])
    assert (
        b.make_piped(
            track_id="TRother",
            participant_id="PAx",
            kind="video",
            mid="1",
            codec=VP8,
            ssrcs=[SSRC],
            audio_level_id=0,
            muted=False,
            on_demand=lambda _p, _on: None,
        )
        is None
    )
    producer = source(Feedback())
    a.start_sending(producer)
    assert len(producer.pipes) == 1
    a.close()
    b.close()
    assert producer.pipes == [] and remote.closed


async def test_simulcast_layers_cross_on_their_own_ssrcs(
    pair: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = pair
    feedback = Feedback()
    producer = Producer(
        track_id="TRs",
        participant_id="PAa",
        kind="video",
        mid="0",
        codec=VP8,
        ssrc=None,
        rtx_ssrc=None,
        extension_map=list(range(256)),
        feedback=feedback,
        now=time.monotonic(),
        rids=["h", "m", "l"],
    )
    remote = b.make_piped(
        track_id="TRs",
        participant_id="PAa",
        kind="video",
        mid="0",
        codec=VP8,
        ssrcs=[None, None, None],  # learnt from the first packets, after the track was announced
        audio_level_id=0,
        muted=False,
        on_demand=lambda _p, _on: None,
        rids=["h", "m", "l"],
    )
    assert remote is not None and [layer.rid for layer in remote.layers] == ["l", "m", "h"]
    announced: list[int] = []

    def learn(local: Producer, index: int) -> None:  # what the shard link carries
        announced.append(index)
        ssrc = local.layers[index].ssrc
        assert ssrc is not None and b.learn_layer(remote, index, ssrc)

    a.on_layer = learn
    a.start_sending(producer)
    for index, layer in enumerate(producer.layers):
        layer.ssrc = 0x1000 + index  # the ingress learns each rid's SSRC
        header = _HEADER.pack(0x80, 0x80 | 96, 10, 9000, layer.ssrc)
        for _ in range(index + 1):
            producer.on_rtp(header + KEY, time.monotonic(), layer)
    await until(lambda: b.rtp_in == 6)
    assert announced == [0, 1, 2]  # once per layer
    assert [layer.stats.packets_received for layer in remote.layers] == [1, 2, 3]
    # A PLI for the top layer reaches the top layer upstream.
    remote.request_keyframe(time.monotonic(), 2)
    await until(lambda: a.keyframe_requests_in == 1)
    assert feedback.layers == [2]

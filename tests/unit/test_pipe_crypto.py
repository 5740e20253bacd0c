"""SRTP pipes between nodes: two real PipeEndpoints on loopback UDP with PipeCrypto, a real
Producer on side A and a real PipedProducer + Consumer on side B (only the subscriber's
transport and the publisher's feedback are recording fakes)."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from sfu.codec import Codec
from sfu.consumer import Consumer
from sfu.layers import Layer
from sfu.pipe import PipedProducer, PipeEndpoint
from sfu.pipe_crypto import KEY_BYTES, PipeCrypto, new_key
from sfu.producer import Producer
from sfu.transport import MediaTransport

VP8 = Codec(kind="video", name="vp8", clock_rate=90_000, channels=None, payload_type=96)
SSRC = 0x11223344
KEY = b"\x10" + b"\x00\x00\x00\x9d\x01\x2a" + b"K" * 40
INTER = b"\x10" + b"\x01\x00\x00" + b"I" * 40
_HEADER = struct.Struct("!BBHII")


def rtp(seq: int, ts: int, payload: bytes) -> bytes:
    return _HEADER.pack(0x80, 0x80 | 96, seq, ts, SSRC) + payload


class Feedback:
    def __init__(self) -> None:
        self.keyframe_requests = 0

    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        self.keyframe_requests += 1

    def nack_pending(self, producer: Producer) -> None:
        pass

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        pass


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_rtp(self, packet: bytes, second: int, seq: int, ts: int, ssrc: int) -> bool:
        self.sent.append(packet)
        return True


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Tap:
    """Records the datagrams an endpoint receives, as they were on the wire."""

    def __init__(self, endpoint: PipeEndpoint) -> None:
        self.seen: list[bytes] = []
        inner = endpoint.datagram_received

        def tapped(data: bytes, addr: Any) -> None:
            self.seen.append(data)
            inner(data, addr)

        endpoint.datagram_received = tapped  # type: ignore[method-assign]


async def open_pair(
    a_crypto: PipeCrypto, b_crypto: PipeCrypto
) -> tuple[PipeEndpoint, PipeEndpoint]:
    a, b = PipeEndpoint(crypto=a_crypto), PipeEndpoint(crypto=b_crypto)
    port_a, port_b = await a.open(), await b.open()
    a.connect(port_b, "127.0.0.1")
    b.connect(port_a, "127.0.0.1")
    return a, b


@pytest.fixture
async def keyed() -> AsyncIterator[tuple[PipeEndpoint, PipeEndpoint]]:
    home_key, spill_key = new_key(), new_key()
    a, b = await open_pair(PipeCrypto(home_key, spill_key), PipeCrypto(spill_key, home_key))
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


def subscribed(b: PipeEndpoint) -> tuple[PipedProducer, Transport, Consumer]:
    remote = b.make_piped(
        track_id="TRa",
        participant_id="PAa",
        kind="video",
        mid="0",
        codec=VP8,
        ssrcs=[SSRC],
        audio_level_id=0,
        muted=False,
        on_demand=lambda _p, _on: None,
    )
    assert remote is not None
    transport = Transport()
    consumer = Consumer(
        remote,
        subscriber_id="PAb",
        transport=cast(MediaTransport, transport),
        ssrc=0xA0A0A0A0,
        rtx_ssrc=0xB0B0B0B0,
        cname="b",
    )
    remote.add_consumer(consumer)
    consumer.start(100, None, time.monotonic())
    return remote, transport, consumer


def test_keys_have_the_gcm_length_and_bad_keys_are_refused() -> None:
    assert len(new_key()) == KEY_BYTES == 44
    assert new_key() != new_key()
    with pytest.raises(ValueError, match="44 bytes"):
        PipeCrypto(b"short", new_key())


async def test_packets_cross_encrypted_and_arrive_intact(
    keyed: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = keyed
    tap = Tap(b)
    producer = source(Feedback())
    _remote, transport, _ = subscribed(b)
    assert a.start_sending(producer) is not None
    packets = [rtp(500, 9000, KEY), rtp(501, 12000, INTER), rtp(502, 15000, INTER)]
    for packet in packets:
        producer.on_rtp(packet, time.monotonic())
    await until(lambda: len(transport.sent) == 3)
    assert transport.sent == packets  # decrypted back to the publisher's bytes
    wire = [d for d in tap.seen if not 192 <= d[1] <= 223]
    assert len(wire) == 3
    for sent, plain in zip(wire, packets, strict=True):
        assert sent[:12] == plain[:12]  # SRTP keeps the RTP header readable (routing) ...
        assert plain[12:] not in sent  # ... but the payload is encrypted
        assert len(sent) == len(plain) + 16  # plus the GCM tag
    assert b.crypto is not None and b.crypto.auth_failures == 0


async def test_pli_and_nack_cross_the_encrypted_pipe(
    keyed: tuple[PipeEndpoint, PipeEndpoint],
) -> None:
    a, b = keyed
    feedback = Feedback()
    producer = source(feedback)
    sink = a.start_sending(producer)
    assert sink is not None
    _remote, transport, _ = subscribed(b)  # waits for a keyframe: an SRTCP PLI to A
    await until(lambda: feedback.keyframe_requests == 1)
    producer.on_rtp(rtp(700, 1000, KEY), time.monotonic())
    producer.pipes.remove(sink)  # 701 lost on the pipe
    producer.on_rtp(rtp(701, 4000, INTER), time.monotonic())
    producer.pipes.append(sink)
    for seq in range(702, 706):
        producer.on_rtp(rtp(seq, 1000 + 3000 * (seq - 700), INTER), time.monotonic())
    # Re-sent with its original sequence number: allow_repeat_tx on A, replay window on B.
    await until(lambda: rtp(701, 4000, INTER) in transport.sent)
    assert a.resent >= 1


async def test_a_wrong_key_authenticates_nothing() -> None:
    home_key, spill_key = new_key(), new_key()
    a, b = await open_pair(PipeCrypto(home_key, spill_key), PipeCrypto(spill_key, new_key()))
    try:
        producer = source(Feedback())
        _remote, transport, _ = subscribed(b)
        a.start_sending(producer)
        for seq in range(10):
            producer.on_rtp(rtp(seq, 3000 * seq, KEY), time.monotonic())
        assert b.crypto is not None
        await until(lambda: b.crypto is not None and b.crypto.auth_failures >= 10)
        assert transport.sent == [] and b.rtp_in == 0
    finally:
        a.close()
        b.close()


async def test_an_ipv6_pipe_carries_srtp_too() -> None:
    home_key, spill_key = new_key(), new_key()
    a = PipeEndpoint("::1", PipeCrypto(home_key, spill_key))
    b = PipeEndpoint("::1", PipeCrypto(spill_key, home_key))
    try:
        port_a, port_b = await a.open(), await b.open()
        a.connect(port_b, "::1")
        b.connect(port_a, "::1")
        producer = source(Feedback())
        _remote, transport, _ = subscribed(b)
        a.start_sending(producer)
        producer.on_rtp(rtp(1, 0, KEY), time.monotonic())
        await until(lambda: transport.sent == [rtp(1, 0, KEY)])
    finally:
        a.close()
        b.close()

"""Simulcast forwarding: one producer with three layers, consumers on the layer they should
have, switching only on a keyframe of the target, numbering continuous across switches."""

from __future__ import annotations

import itertools
import struct
from typing import cast

from sfu.codec import Codec
from sfu.consumer import Consumer, ConsumerState
from sfu.layer_choice import Preference
from sfu.layers import Layer
from sfu.producer import Producer
from sfu.rtcp import ReportBlock
from sfu.rtp import payload_offset
from sfu.transport import MediaTransport
from sfu.vp8 import read_descriptor

VP8 = Codec(
    kind="video", name="vp8", clock_rate=90_000, channels=None, payload_type=96, rtx_payload_type=97
)
SSRCS = (0x1000, 0x2000, 0x3000)  # layers l, m, h
_HEADER = struct.Struct("!BBHII")


class Feedback:
    def __init__(self) -> None:
        self.plis: list[int] = []  # SSRCs a keyframe was asked of

    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        assert layer.ssrc is not None
        self.plis.append(layer.ssrc)

    def nack_pending(self, producer: Producer) -> None:
        pass

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        pass


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int, int]] = []  # (packet, out seq, out ts)

    def send_rtp(self, packet: bytes, second_byte: int, seq: int, ts: int, ssrc: int) -> bool:
        self.sent.append((packet, seq, ts))
        return True

    def send_rtcp(self, packet: bytes) -> None:
        pass


class LayerSource:
    """One encoding: its own SSRC, sequence numbers, timestamps and VP8 picture ids."""

    def __init__(self, ssrc: int, seq: int, ts: int, pic_id: int, tl0: int) -> None:
        self.ssrc, self.seq, self.ts, self.pic_id, self.tl0 = ssrc, seq, ts, pic_id, tl0

    def frame(self, *, keyframe: bool = False, packets: int = 2) -> list[bytes]:
        out = []
        for i in range(packets):
            descriptor = bytes([0x90 if i == 0 else 0x80, 0xC0])
            descriptor += bytes([0x80 | (self.pic_id >> 8), self.pic_id & 0xFF, self.tl0])
            if i == 0:
                header = (
                    b"\x10\x02\x00\x9d\x01\x2a\x00\x05\xd0\x02" if keyframe else b"\x11\x00\x00"
                )
            else:
                header = b""
            second = (0x80 if i == packets - 1 else 0) | 96
            out.append(
                _HEADER.pack(0x80, second, self.seq, self.ts, self.ssrc)
                + descriptor
                + header
                + b"x" * 30
            )
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 3000) & 0xFFFFFFFF
        self.pic_id = (self.pic_id + 1) & 0x7FFF
        self.tl0 = (self.tl0 + 1) & 0xFF
        return out


def state(consumer: Consumer) -> ConsumerState:
    """Read through a call (mypy would keep an earlier narrowing)."""
    return consumer.state


def setup() -> tuple[Producer, Feedback, list[LayerSource]]:
    feedback = Feedback()
    producer = Producer(
        track_id="TR1",
        participant_id="PA1",
        kind="video",
        mid="1",
        codec=VP8,
        ssrc=None,
        rtx_ssrc=None,
        extension_map=list(range(256)),
        feedback=feedback,
        now=0.0,
        rids=("h", "m", "l"),
    )
    for layer, ssrc in zip(producer.layers, SSRCS, strict=True):
        layer.ssrc = ssrc
    sources = [
        LayerSource(SSRCS[0], 100, 10_000, 7000, 20),
        LayerSource(SSRCS[1], 40_000, 900_000, 300, 200),
        LayerSource(SSRCS[2], 65_000, 4_000_000_000, 32_760, 250),
    ]
    return producer, feedback, sources


def consumer_for(producer: Producer) -> tuple[Consumer, Transport]:
    transport = Transport()
    consumer = Consumer(
        producer,
        subscriber_id="PB",
        transport=cast(MediaTransport, transport),
        ssrc=0xABC,
        rtx_ssrc=0xABD,
        cname="c",
    )
    producer.add_consumer(consumer)
    consumer.start(100, None, 0.0)
    return consumer, transport


def send_round(producer: Producer, sources: list[LayerSource], now: float, key: int = -1) -> None:
    """One captured frame, encoded by every layer (``key``: the layer sending a keyframe)."""
    for i, source in enumerate(sources):
        for packet in source.frame(keyframe=i == key):
            producer.on_rtp(packet, now, producer.layers[i])


def pictures(transport: Transport) -> list[int]:
    out: list[int] = []
    for packet, _, _ in transport.sent:
        pic_id, _, _, _ = read_descriptor(packet, payload_offset(packet))
        if not out or out[-1] != pic_id:
            out.append(pic_id)
    return out


def test_rids_become_layers_lowest_first() -> None:
    producer, _, _ = setup()
    assert [layer.rid for layer in producer.layers] == ["l", "m", "h"]
    assert producer.simulcast and producer.record_layer == 2


def test_a_consumer_starts_on_the_top_layer_keyframe_and_ignores_the_others() -> None:
    producer, feedback, sources = setup()
    consumer, transport = consumer_for(producer)
    assert feedback.plis == [SSRCS[2]]  # the top layer's keyframe is asked for
    send_round(producer, sources, 0.0, key=0)  # a low-layer keyframe does not start it
    assert transport.sent == []
    send_round(producer, sources, 0.1, key=2)
    send_round(producer, sources, 0.2)
    assert consumer.layer == 2 and len(transport.sent) == 4
    assert all(packet[8:12] == SSRCS[2].to_bytes(4, "big") for packet, _, _ in transport.sent)


def test_a_switch_waits_for_the_target_keyframe_and_keeps_everything_continuous() -> None:
    producer, feedback, sources = setup()
    consumer, transport = consumer_for(producer)
    send_round(producer, sources, 0.0, key=2)
    send_round(producer, sources, 0.05)
    feedback.plis.clear()

    consumer.set_preference(Preference(quality="low"), 0.1)
    assert consumer.target_layer == 0 and feedback.plis == [SSRCS[0]]
    send_round(producer, sources, 0.1)  # no keyframe of layer 0 yet: still on layer 2
    assert consumer.layer == 2
    send_round(producer, sources, 0.15, key=0)
    send_round(producer, sources, 0.2)
    assert consumer.layer == 0 and consumer.switches == 1

    seqs = [seq for _, seq, _ in transport.sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    stamps = sorted(
        {ts for _, _, ts in transport.sent}, key=lambda t: (t - transport.sent[0][2]) & 0xFFFFFFFF
    )
    assert len(stamps) == 5  # one per frame, always moving forward (no sender reports: +1 frame)
    assert all(0 < (b - a) & 0xFFFFFFFF <= 3000 for a, b in itertools.pairwise(stamps))
    # Picture ids go on by one across the switch (layer 2 wrapped 32767 -> 0 meanwhile).
    pics = pictures(transport)
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pics)), pics
    tl0s = [read_descriptor(p, payload_offset(p))[2] for p, _, _ in transport.sent]
    assert all((b - a) & 0xFF in (0, 1) for a, b in itertools.pairwise(tl0s)), tl0s


def test_nacks_after_a_switch_are_served_from_the_old_layer() -> None:
    producer, _, sources = setup()
    consumer, transport = consumer_for(producer)
    send_round(producer, sources, 0.0, key=2)
    consumer.set_preference(Preference(quality="medium"), 0.1)
    send_round(producer, sources, 0.1, key=1)
    old_seq = transport.sent[1][1]  # the old layer's last packet, as numbered for us
    new_seq = transport.sent[-1][1]
    assert consumer.on_nack((old_seq, new_seq)) == 2
    (old, _, _), (new, _, _) = transport.sent[-2:]
    assert old[8:12] == SSRCS[2].to_bytes(4, "big") and new[8:12] == SSRCS[1].to_bytes(4, "big")


def test_a_rendered_size_picks_the_smallest_layer_that_covers_it() -> None:
    producer, _, _ = setup()
    consumer, _ = consumer_for(producer)
    for layer in producer.layers:  # sizes come from keyframe headers in real streams
        layer.last_packet_at = 1.0
    producer.layers[0].width, producer.layers[0].height = 320, 180
    producer.layers[1].width, producer.layers[1].height = 640, 360
    producer.layers[2].width, producer.layers[2].height = 1280, 720
    consumer.set_preference(Preference(width=400, height=200), 1.0)
    assert consumer.target_layer == 1
    consumer.set_preference(Preference(width=200, height=100), 1.0)
    assert consumer.target_layer == 0


def test_congestion_moves_down_clean_reports_bring_it_back_up() -> None:
    producer, _, sources = setup()
    consumer, transport = consumer_for(producer)
    now = 0.0
    rates = (150_000, 500_000, 1_500_000)
    for layer, rate in zip(producer.layers, rates, strict=True):
        layer.bitrate_bps = rate

    def tick(loss: int) -> None:
        nonlocal now
        for _ in range(10):
            now += 0.1
            send_round(producer, sources, now, key=consumer.target_layer)
            for layer, rate in zip(producer.layers, rates, strict=True):
                layer.bitrate_bps = rate
        consumer.octets = int(consumer.octets + rates[max(consumer.layer, 0)] / 8)
        consumer.on_report(ReportBlock(0xABC, loss, 0, 0, 0, 0, 0), now)
        consumer.adapt(now)

    tick(0)
    tick(0)
    assert consumer.layer == 2
    tick(80)  # 31% loss at 1.5 Mbit/s: budget ~1.27 Mbit/s, the top layer does not fit
    assert consumer.target_layer == 1 and consumer.state is ConsumerState.FORWARDING
    for _ in range(3):
        tick(0)
    assert consumer.target_layer == 1  # held: not before hold_s of clean reports
    for _ in range(10):
        tick(0)
    assert consumer.target_layer == 2 and consumer.layer == 2
    tick(80)
    tick(80)  # still lossy one layer down: the base layer
    assert consumer.target_layer == 0
    tick(250)  # even that does not fit: video waits, nothing more is sent
    assert consumer.target_layer == -1 and state(consumer) is ConsumerState.WAITING_KEYFRAME
    sent = len(transport.sent)
    tick(0)
    assert len(transport.sent) == sent
    for _ in range(20):
        tick(0)
    assert consumer.layer >= 0 and len(transport.sent) > sent  # back once reports are clean

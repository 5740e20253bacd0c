"""Tests for sfu.consumer.Consumer driven by a real sfu.producer.Producer.

The subscriber's transport is a fake that records what the consumer asks it to send
(``packet, second_byte, seq, ts, ssrc``: the same arguments MediaTransport.send_rtp
rewrites and protects) and can refuse sends like a full queue. Publisher packets are
real RTP with real VP8 payload descriptors / Opus payloads.
"""

from __future__ import annotations

import itertools
import struct
import time
from dataclasses import dataclass
from typing import cast

import pytest

from sfu.codec import Codec
from sfu.consumer import Consumer, ConsumerState
from sfu.layers import Layer
from sfu.producer import KEYFRAME_REQUEST_INTERVAL_S, Producer
from sfu.rtcp import ReportBlock, SenderReport, ntp_middle32, ntp_to_seconds, parse_rtcp
from sfu.transport import MediaTransport

VP8 = Codec(
    kind="video", name="vp8", clock_rate=90_000, channels=None, payload_type=96, rtx_payload_type=97
)
OPUS = Codec(kind="audio", name="opus", clock_rate=48_000, channels=2, payload_type=111)
IDENTITY = list(range(256))

PUBLISHER_SSRC = 0x11223344
CONSUMER_SSRC = 0xA1A2A3A4
CONSUMER_RTX_SSRC = 0xB1B2B3B4
SUB_VIDEO_PT = 100  # the subscriber negotiated other payload types than the publisher
SUB_RTX_PT = 101
SUB_AUDIO_PT = 109

# VP8 payloads (RFC 7741): payload descriptor, then the VP8 payload header whose lowest
# bit (P, inverse key frame flag) is 0 on keyframes. 0x9d 0x01 0x2a is the keyframe start code.
VP8_KEYFRAME_START = b"\x10" + b"\x00\x00\x00\x9d\x01\x2a" + b"K" * 40  # S=1, PID=0, P=0
VP8_INTERFRAME_START = b"\x10" + b"\x01\x00\x00" + b"I" * 40  # S=1, PID=0, P=1
VP8_CONTINUATION = b"\x00" + b"C" * 40  # S=0: never a frame start
OPUS_PAYLOAD = b"\xfc" + b"O" * 60

_HEADER = struct.Struct("!BBHII")


def rtp(
    seq: int,
    ts: int,
    payload: bytes,
    *,
    pt: int = 96,
    marker: bool = False,
    ssrc: int = PUBLISHER_SSRC,
) -> bytes:
    return (
        _HEADER.pack(0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        + payload
    )


@dataclass(frozen=True, slots=True)
class Sent:
    """One send_rtp call: the packet and the header fields the transport writes."""

    packet: bytes
    second_byte: int
    seq: int
    ts: int
    ssrc: int

    @property
    def marker(self) -> bool:
        return bool(self.second_byte & 0x80)

    @property
    def payload_type(self) -> int:
        return self.second_byte & 0x7F

    def wire(self) -> bytes:
        """The packet as it leaves (before SRTP): what FastSrtp.protect_rewritten builds."""
        out = bytearray(self.packet)
        struct.pack_into("!BHII", out, 1, self.second_byte, self.seq, self.ts, self.ssrc)
        return bytes(out)


class FakeTransport:
    """Records send_rtp/send_rtcp; ``refuse`` makes send_rtp fail like a full queue."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.rtcp: list[bytes] = []
        self.refuse = False
        self.refused: list[int] = []  # sequence numbers of refused sends

    def send_rtp(self, packet: bytes, second_byte: int, seq: int, ts: int, ssrc: int) -> bool:
        if self.refuse:
            self.refused.append(seq)
            return False
        self.sent.append(Sent(packet, second_byte, seq, ts, ssrc))
        return True

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)

    def seqs(self) -> list[int]:
        return [s.seq for s in self.sent]


class FakeFeedback:
    """ProducerFeedback that records what the producer asked the publish side."""

    def __init__(self) -> None:
        self.keyframe_requests: list[Producer] = []
        self.nack_pending_calls: list[Producer] = []
        self.keyframe_retries: list[tuple[Producer, float]] = []

    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        self.keyframe_requests.append(producer)

    def nack_pending(self, producer: Producer) -> None:
        self.nack_pending_calls.append(producer)

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        self.keyframe_retries.append((producer, delay_s))


class Source:
    """A publisher's stream: frames of consecutive RTP packets, marker on the last."""

    def __init__(self, codec: Codec, *, seq: int = 1000, ts: int = 50_000) -> None:
        self.codec = codec
        self.seq = seq & 0xFFFF
        self.ts = ts & 0xFFFFFFFF
        self.ts_step = 3000 if codec.kind == "video" else 960

    def frame(self, *, keyframe: bool = False, packets: int = 1) -> list[bytes]:
        out = []
        for i in range(packets):
            if self.codec.kind == "audio":
                payload = OPUS_PAYLOAD
            elif i == 0:
                payload = VP8_KEYFRAME_START if keyframe else VP8_INTERFRAME_START
            else:
                payload = VP8_CONTINUATION
            marker = self.codec.kind == "video" and i == packets - 1
            out.append(rtp(self.seq, self.ts, payload, pt=self.codec.payload_type, marker=marker))
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + self.ts_step) & 0xFFFFFFFF
        return out


def feed(producer: Producer, packets: list[bytes], now: float = 0.0) -> None:
    for packet in packets:
        producer.on_rtp(packet, now)


def make_producer(
    codec: Codec = VP8, feedback: FakeFeedback | None = None, now: float = 0.0
) -> tuple[Producer, FakeFeedback]:
    feedback = feedback if feedback is not None else FakeFeedback()
    producer = Producer(
        track_id="TR1",
        participant_id="PA1",
        kind=codec.kind,
        mid="0",
        codec=codec,
        ssrc=PUBLISHER_SSRC,
        rtx_ssrc=None,
        extension_map=IDENTITY,
        feedback=feedback,
        now=now,
    )
    return producer, feedback


def make_consumer(
    producer: Producer,
    transport: FakeTransport,
    *,
    start: bool = True,
    now: float = 0.0,
    rtx: bool = False,
    seq_origin: int | None = None,
    ts_offset: int | None = None,
    ssrc: int = CONSUMER_SSRC,
) -> Consumer:
    consumer = Consumer(
        producer,
        subscriber_id="PB1",
        transport=cast(MediaTransport, transport),
        ssrc=ssrc,
        rtx_ssrc=CONSUMER_RTX_SSRC,
        cname="cname-b",
    )
    if seq_origin is not None:  # pin the random origin (RFC 3550 §5.1) to test the wraps
        consumer.next_seq = seq_origin
        consumer.segment_start = seq_origin
        consumer.last_seq = (seq_origin - 1) & 0xFFFF
    if ts_offset is not None:
        consumer.ts_offset = ts_offset
    producer.add_consumer(consumer)
    if start:
        pt = SUB_VIDEO_PT if producer.kind == "video" else SUB_AUDIO_PT
        consumer.start(pt, SUB_RTX_PT if rtx else None, now)
    return consumer


def state(consumer: Consumer) -> ConsumerState:
    """The consumer's state, read through a call (mypy would keep an earlier narrowing)."""
    return consumer.state


def continuous(seqs: list[int]) -> bool:
    return all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))


# --- starting on a keyframe -----------------------------------------------------------


def test_video_consumer_waits_for_keyframe_then_numbers_from_its_origin() -> None:
    producer, feedback = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport)
    origin = consumer.next_seq
    assert state(consumer) is ConsumerState.WAITING_KEYFRAME
    assert feedback.keyframe_requests == [producer]  # starting asks the publisher for one

    src = Source(VP8)
    feed(producer, src.frame(packets=3) + src.frame(packets=2))
    # A keyframe's continuation packets are not a start either.
    feed(producer, [rtp(src.seq, src.ts, VP8_CONTINUATION)])
    src.seq += 1
    assert transport.sent == []
    assert state(consumer) is ConsumerState.WAITING_KEYFRAME

    keyframe = src.frame(keyframe=True, packets=3)
    later = src.frame(packets=2) + src.frame(packets=1)
    feed(producer, keyframe + later)
    assert state(consumer) is ConsumerState.FORWARDING
    assert [s.packet for s in transport.sent] == keyframe + later
    assert transport.seqs() == [(origin + i) & 0xFFFF for i in range(6)]
    # Timestamps keep the publisher's spacing, shifted by the consumer's random offset.
    in_ts = [_HEADER.unpack_from(p)[3] for p in keyframe + later]
    assert [s.ts for s in transport.sent] == [(t + consumer.ts_offset) & 0xFFFFFFFF for t in in_ts]
    assert consumer.packets == 6
    assert consumer.octets == sum(len(p) - 12 for p in keyframe + later)


def test_not_started_consumer_forwards_nothing() -> None:
    producer, feedback = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, start=False)
    feed(producer, Source(VP8).frame(keyframe=True, packets=2))
    assert state(consumer) is ConsumerState.NEGOTIATING
    assert transport.sent == []
    assert feedback.keyframe_requests == []


def test_audio_consumer_forwards_from_the_first_packet() -> None:
    producer, feedback = make_producer(OPUS)
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, seq_origin=4242)
    src = Source(OPUS)
    packets = [p for _ in range(5) for p in src.frame()]
    feed(producer, packets)
    assert transport.seqs() == [4242 + i for i in range(5)]
    assert {s.payload_type for s in transport.sent} == {SUB_AUDIO_PT}
    assert state(consumer) is ConsumerState.FORWARDING
    assert feedback.keyframe_requests == []  # audio never asks for keyframes


# --- header rewrite -------------------------------------------------------------------


def test_payload_type_and_ssrc_rewritten_marker_preserved() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, seq_origin=777, ts_offset=123_456)
    src = Source(VP8)
    packets = src.frame(keyframe=True, packets=3) + src.frame(packets=2)
    feed(producer, packets)
    assert len(transport.sent) == 5
    assert [s.marker for s in transport.sent] == [False, False, True, False, True]
    for sent, original in zip(transport.sent, packets, strict=True):
        assert sent.payload_type == SUB_VIDEO_PT
        assert sent.ssrc == CONSUMER_SSRC
        wire = sent.wire()
        _, b1, seq, ts, ssrc = _HEADER.unpack_from(wire)
        in_seq, in_ts = _HEADER.unpack_from(original)[2:4]
        assert b1 == (original[1] & 0x80) | SUB_VIDEO_PT
        assert seq == (in_seq + consumer.seq_offset) & 0xFFFF
        assert ts == (in_ts + 123_456) & 0xFFFFFFFF
        assert ssrc == CONSUMER_SSRC
        assert wire[0] == original[0] and wire[12:] == original[12:]  # payload untouched


def test_sequence_and_timestamp_wrap() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    # Output origin and offset just below the 16-bit and 32-bit wraps, and the publisher's
    # own numbers wrap during the stream too.
    make_consumer(producer, transport, seq_origin=0xFFFD, ts_offset=0xFFFFFFFF - 4000)
    src = Source(VP8, seq=0xFFFB, ts=0xFFFFFFFF - 2 * 3000 + 1)
    packets = src.frame(keyframe=True, packets=2)
    for _ in range(4):
        packets += src.frame(packets=2)
    feed(producer, packets)
    seqs = transport.seqs()
    assert seqs[:5] == [0xFFFD, 0xFFFE, 0xFFFF, 0, 1]
    assert continuous(seqs) and len(seqs) == 10
    in_ts = [_HEADER.unpack_from(p)[3] for p in packets]
    assert in_ts[0] > in_ts[-1]  # the publisher's timestamps wrapped
    out_ts = [s.ts for s in transport.sent]
    assert out_ts == [(t + 0xFFFFFFFF - 4000) & 0xFFFFFFFF for t in in_ts]
    # 3000 ticks per frame on the wire, across both wraps.
    frame_ts = out_ts[::2]
    assert all((b - a) & 0xFFFFFFFF == 3000 for a, b in itertools.pairwise(frame_ts))
    assert all(0 <= t <= 0xFFFFFFFF for t in out_ts)


# --- mute, pause ----------------------------------------------------------------------


def test_muted_producer_holds_consumers_and_unmute_restarts_on_keyframe_without_gap() -> None:
    producer, feedback = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, seq_origin=65530, now=0.0)
    src = Source(VP8)
    feed(producer, src.frame(keyframe=True, packets=2) + src.frame(packets=2))
    assert len(transport.sent) == 4
    last_before_mute = transport.sent[-1]

    producer.set_muted(True, 1.0)
    assert state(consumer) is ConsumerState.WAITING_KEYFRAME
    # Whatever the publisher still sends while muted is not forwarded, keyframes included.
    feed(producer, src.frame(packets=3) + src.frame(keyframe=True, packets=2), now=1.5)
    assert len(transport.sent) == 4

    requests = len(feedback.keyframe_requests)
    producer.set_muted(False, 2.0)
    assert len(feedback.keyframe_requests) == requests + 1  # unmute asks for a keyframe
    assert state(consumer) is ConsumerState.WAITING_KEYFRAME
    feed(producer, src.frame(packets=2), now=2.1)  # not decodable: still waiting
    assert len(transport.sent) == 4

    feed(producer, src.frame(keyframe=True, packets=2) + src.frame(packets=1), now=2.2)
    resumed = transport.sent[4:]
    assert len(resumed) == 3
    assert resumed[0].seq == (last_before_mute.seq + 1) & 0xFFFF  # no gap for the subscriber
    assert continuous(transport.seqs())
    assert state(consumer) is ConsumerState.FORWARDING
    # Timestamps still follow the publisher's clock (the pause shows as elapsed time).
    assert (
        resumed[0].ts
        == (_HEADER.unpack_from(resumed[0].packet)[3] + consumer.ts_offset) & 0xFFFFFFFF
    )


def test_set_paused_stops_and_resumes_on_keyframe_without_gap() -> None:
    producer, feedback = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, now=0.0)
    src = Source(VP8)
    feed(producer, src.frame(keyframe=True, packets=2) + src.frame(packets=1))
    assert len(transport.sent) == 3

    consumer.set_paused(True, 1.0)
    assert consumer.paused
    assert state(consumer) is ConsumerState.WAITING_KEYFRAME
    feed(producer, src.frame(keyframe=True, packets=2) + src.frame(packets=2))
    assert len(transport.sent) == 3
    assert consumer.on_nack((transport.sent[0].seq,)) == 0  # nothing is served while paused

    consumer.set_paused(True, 1.1)  # no change: no keyframe request, no state change
    requests = len(feedback.keyframe_requests)
    consumer.set_paused(False, 2.0)
    assert len(feedback.keyframe_requests) == requests + 1
    feed(producer, src.frame(packets=2))
    assert len(transport.sent) == 3
    feed(producer, src.frame(keyframe=True, packets=2))
    assert len(transport.sent) == 5
    assert continuous(transport.seqs())


def test_paused_before_start_forwards_once_resumed() -> None:
    """A subscriber may pause a track before its m-line is negotiated (Subscriber._start
    calls set_paused(True) before the sender's parameters arrive); resuming later must
    still start the consumer."""
    producer, _ = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, start=False)
    consumer.set_paused(True, 0.0)
    consumer.start(SUB_VIDEO_PT, None, 0.1)
    consumer.set_paused(False, 1.0)
    assert state(consumer) is ConsumerState.WAITING_KEYFRAME
    feed(producer, Source(VP8).frame(keyframe=True, packets=2))
    assert len(transport.sent) == 2


# --- bounded queue --------------------------------------------------------------------


def test_queue_full_drops_the_rest_of_the_video_frame() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport)
    src = Source(VP8)
    feed(producer, src.frame(keyframe=True, packets=2))
    assert len(transport.sent) == 2

    frame = src.frame(packets=4)
    feed(producer, frame[:1])
    transport.refuse = True
    feed(producer, frame[1:2])  # refused: the queue is full
    transport.refuse = False
    feed(producer, frame[2:])  # room again, but the frame is already broken: skipped
    assert len(transport.sent) == 3
    assert len(transport.refused) == 1  # the rest was never even tried

    nxt = src.frame(packets=2)
    feed(producer, nxt)
    assert [s.packet for s in transport.sent[3:]] == nxt  # the next frame goes out whole
    assert consumer.packets == 5
    assert state(consumer) is ConsumerState.FORWARDING


def test_queue_full_on_marker_packet_does_not_drop_the_next_frame() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    make_consumer(producer, transport)
    src = Source(VP8)
    keyframe = src.frame(keyframe=True, packets=1)
    frame = src.frame(packets=2)
    feed(producer, keyframe + frame[:1])
    transport.refuse = True
    feed(producer, frame[1:])  # the marker packet itself is refused
    transport.refuse = False
    nxt = src.frame(packets=2)
    feed(producer, nxt)
    assert [s.packet for s in transport.sent] == [*keyframe, frame[0], *nxt]


def test_queue_full_audio_drops_only_that_packet() -> None:
    producer, _ = make_producer(OPUS)
    transport = FakeTransport()
    make_consumer(producer, transport)
    src = Source(OPUS)
    feed(producer, src.frame())
    transport.refuse = True
    feed(producer, src.frame())
    transport.refuse = False
    feed(producer, src.frame() + src.frame())
    assert len(transport.sent) == 3
    assert len(transport.refused) == 1


# --- NACK -----------------------------------------------------------------------------


def _forwarding_video(
    rtx: bool, seq_origin: int
) -> tuple[Producer, FakeTransport, Consumer, list[bytes]]:
    producer, _ = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, rtx=rtx, seq_origin=seq_origin)
    src = Source(VP8, seq=65533)
    packets = src.frame(keyframe=True, packets=3) + src.frame(packets=3) + src.frame(packets=2)
    feed(producer, packets)
    assert len(transport.sent) == len(packets)
    return producer, transport, consumer, packets


def test_nack_plain_retransmission_from_producer_cache() -> None:
    _, transport, consumer, packets = _forwarding_video(False, seq_origin=65534)
    first = list(transport.sent)
    wanted = (first[2].seq, first[4].seq)  # across the output wrap (65534 -> 0)
    assert wanted == (0, 2)
    assert consumer.on_nack(wanted) == 2
    resent = transport.sent[len(first) :]
    assert resent == [first[2], first[4]]  # same bytes, same PT/marker/seq/ts/SSRC
    assert resent[0].packet == packets[2] and resent[0].marker
    assert consumer.retransmitted == 2
    assert consumer.packets == len(packets)  # retransmissions are not new packets


def test_nack_with_rtx() -> None:
    _, transport, consumer, packets = _forwarding_video(True, seq_origin=65534)
    first = list(transport.sent)
    consumer.rtx_seq = 0xFFFF  # the RTX stream wraps on the second retransmission
    assert consumer.on_nack((first[2].seq, first[4].seq)) == 2
    rtx = transport.sent[len(first) :]
    assert [r.seq for r in rtx] == [0xFFFF, 0]
    assert consumer.rtx_seq == 1
    for sent, original_out, original_in in zip(
        rtx, (first[2], first[4]), (packets[2], packets[4]), strict=True
    ):
        assert sent.ssrc == CONSUMER_RTX_SSRC
        assert sent.payload_type == SUB_RTX_PT
        assert sent.marker == original_out.marker
        assert sent.ts == original_out.ts
        wire = sent.wire()
        _, b1, seq, ts, ssrc = _HEADER.unpack_from(wire)
        assert (b1 & 0x7F, seq, ts, ssrc) == (
            SUB_RTX_PT,
            sent.seq,
            original_out.ts,
            CONSUMER_RTX_SSRC,
        )
        # RFC 4588: the original *output* sequence number, then the original payload.
        assert wire[12:14] == struct.pack("!H", original_out.seq)
        assert wire[14:] == original_in[12:]
        assert sent.packet[12:] == wire[12:]
    assert first[2].marker and not first[4].marker
    assert consumer.retransmitted == 2


def test_nack_ignored_before_segment_never_sent_or_evicted() -> None:
    producer, transport, consumer, _ = _forwarding_video(False, seq_origin=100)
    sent = len(transport.sent)
    assert consumer.on_nack((99, 98, 100 - 3000)) == 0  # before this consumer's first packet
    assert consumer.on_nack((108, 109, 200)) == 0  # after the last packet sent: never sent
    assert len(transport.sent) == sent

    # Mute/unmute starts a new segment. The one before stays served through its own
    # offsets (a lost tail of it would otherwise stall the subscriber's decoder), and
    # exactly as first sent; nothing older than that.
    first = {s.seq: s for s in transport.sent}
    producer.set_muted(True, 1.0)
    producer.set_muted(False, 2.0)
    src = Source(VP8, seq=20_000, ts=900_000)
    feed(producer, src.frame(keyframe=True, packets=2), now=2.1)
    assert transport.sent[-2].seq == 108
    assert consumer.on_nack((100, 104, 107)) == 3
    for resent in transport.sent[-3:]:
        assert (resent.wire(), resent.ts) == (first[resent.seq].wire(), first[resent.seq].ts)
    assert consumer.on_nack((108, 109)) == 2
    producer.set_muted(True, 3.0)
    producer.set_muted(False, 4.0)
    feed(producer, src.frame(keyframe=True, packets=2), now=4.1)
    assert consumer.on_nack((100, 104, 107)) == 0  # two segments ago

    # Packets the producer's cache no longer holds cannot be served.
    for _ in range(1100):
        feed(producer, src.frame(), now=2.2)
    assert consumer.on_nack((108,)) == 0
    assert consumer.on_nack((transport.sent[-1].seq,)) == 1


def test_nack_when_not_forwarding_is_ignored() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, seq_origin=10)
    feed(producer, Source(VP8).frame(packets=2))  # no keyframe yet
    assert consumer.on_nack((10, 11)) == 0
    assert transport.sent == []


def test_nack_served_after_a_long_stream() -> None:
    """After 32768 forwarded packets the NACK window check must still work."""
    producer, _ = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, seq_origin=0)
    src = Source(VP8, seq=0)
    feed(producer, src.frame(keyframe=True))
    for _ in range(40_000):
        feed(producer, src.frame())
    assert len(transport.sent) == 40_001
    last = transport.sent[-1]
    assert last.seq == 40_000
    # The last packets are in the producer's cache and were sent by this consumer.
    assert consumer.on_nack((last.seq, last.seq - 5)) == 2


def test_late_packet_does_not_hide_newer_ones_from_nack() -> None:
    """A late packet (e.g. the publisher's RTX answer to our NACK) is forwarded, but the
    consumer must not forget that newer packets were already sent."""
    producer, _ = make_producer()
    transport = FakeTransport()
    consumer = make_consumer(producer, transport, seq_origin=500)
    src = Source(VP8)
    packets = src.frame(keyframe=True) + [p for _ in range(9) for p in src.frame()]
    feed(producer, packets[:5] + packets[6:])  # packet 5 is late
    feed(producer, packets[5:6])
    assert transport.sent[-1].seq == 505
    assert consumer.on_nack((508,)) == 1  # 508 was sent before the late packet


def test_late_packet_before_mute_does_not_reuse_sequence_numbers() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    make_consumer(producer, transport, seq_origin=500)
    src = Source(VP8)
    packets = src.frame(keyframe=True) + [p for _ in range(9) for p in src.frame()]
    feed(producer, packets[:5] + packets[6:] + packets[5:6])  # packet 5 arrives last
    highest = max(s.seq for s in transport.sent)
    assert highest == 509
    producer.set_muted(True, 1.0)
    producer.set_muted(False, 2.0)
    feed(producer, src.frame(keyframe=True), now=2.1)
    # The restart must continue after the highest number sent, never repeat one.
    assert transport.sent[-1].seq == 510
    assert len({s.seq for s in transport.sent}) == len(transport.sent)


def test_late_packet_from_before_the_restart_keyframe_is_not_forwarded() -> None:
    """After a restart, a straggler older than the keyframe would get a number of the
    previous segment: the subscriber already has a (different) packet with that number."""
    producer, _ = make_producer()
    transport = FakeTransport()
    make_consumer(producer, transport, seq_origin=300)
    src = Source(VP8)
    feed(producer, src.frame(keyframe=True, packets=2) + src.frame(packets=2))
    producer.set_muted(True, 1.0)
    producer.set_muted(False, 2.0)
    straggler = src.frame(packets=1)  # sent by the publisher just before the keyframe ...
    feed(producer, src.frame(keyframe=True, packets=2), now=2.1)
    assert [s.seq for s in transport.sent] == [300, 301, 302, 303, 304, 305]
    feed(producer, straggler, now=2.2)  # ... but arriving after it
    assert [s.seq for s in transport.sent] == [300, 301, 302, 303, 304, 305]


# --- sender reports -------------------------------------------------------------------


def test_sender_report_translates_the_publisher_clock() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    ts_offset = 0xFFFFFFFF - 10_000  # the translated timestamp wraps
    consumer = make_consumer(producer, transport, ts_offset=ts_offset)
    assert consumer.sender_report(1.0) is None  # nothing sent yet: nothing to report
    src = Source(VP8, ts=70_000)
    packets = src.frame(keyframe=True, packets=2) + src.frame(packets=3)
    feed(producer, packets, now=9.0)

    publisher_ntp = (3_900_000_000 << 32) | (1 << 31)  # .5 s
    publisher_rtp = 70_000 + 3000
    producer.on_sender_report(publisher_ntp, publisher_rtp, 10.0)
    report = consumer.sender_report(10.25)
    assert report is not None
    messages = parse_rtcp(report)
    assert len(messages) == 1  # the SDES that follows is not an actionable message
    sr = messages[0]
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == CONSUMER_SSRC
    assert sr.ntp == publisher_ntp + (1 << 30)  # + 0.25 s
    assert sr.rtp_ts == (publisher_rtp + ts_offset + 22_500) & 0xFFFFFFFF
    assert sr.packet_count == 5
    assert sr.octet_count == sum(len(p) - 12 for p in packets)
    # The SR's mapping agrees with the timestamps on the wire: the frame the publisher
    # stamped publisher_rtp went out with publisher_rtp + ts_offset.
    frame2 = [s for s in transport.sent if _HEADER.unpack_from(s.packet)[3] == publisher_rtp]
    assert frame2 and all(s.ts == (publisher_rtp + ts_offset) & 0xFFFFFFFF for s in frame2)
    # SDES CNAME follows the SR in the same compound packet.
    sr_len = (struct.unpack_from("!H", report, 2)[0] + 1) * 4
    assert report[sr_len + 1] == 202 and b"cname-b" in report[sr_len:]


def test_sender_report_without_publisher_report_uses_last_packet() -> None:
    producer, _ = make_producer(OPUS)
    transport = FakeTransport()
    consumer = make_consumer(producer, transport)
    src = Source(OPUS)
    feed(producer, src.frame() + src.frame(), now=5.0)
    before = time.time()
    report = consumer.sender_report(5.5)
    after = time.time()
    assert report is not None
    sr = parse_rtcp(report)[0]
    assert isinstance(sr, SenderReport)
    assert sr.rtp_ts == (transport.sent[-1].ts + 24_000) & 0xFFFFFFFF  # + 0.5 s at 48 kHz
    assert before - 0.01 <= ntp_to_seconds(sr.ntp) <= after + 0.01
    assert sr.packet_count == 2


def test_round_trip_time_from_receiver_report() -> None:
    producer, _ = make_producer(OPUS)
    transport = FakeTransport()
    consumer = make_consumer(producer, transport)
    feed(producer, Source(OPUS).frame(), now=1.0)
    report = consumer.sender_report(2.0)
    assert report is not None
    sr = parse_rtcp(report)[0]
    assert isinstance(sr, SenderReport)
    block = ReportBlock(CONSUMER_SSRC, 12, 3, 1000, 40, ntp_middle32(sr.ntp), 16384)
    consumer.on_report(block, 2.5)  # 0.5 s later, 0.25 s of it spent at the subscriber
    assert consumer.rtt_s is not None and abs(consumer.rtt_s - 0.25) < 1e-6
    assert (consumer.fraction_lost, consumer.jitter) == (12, 40)
    consumer.on_report(ReportBlock(CONSUMER_SSRC, 0, 0, 0, 0, 0, 0), 3.0)  # no LSR: keep RTT
    assert consumer.rtt_s is not None and abs(consumer.rtt_s - 0.25) < 1e-6


# --- keyframe requests ----------------------------------------------------------------


def test_keyframe_requests_throttled_per_producer() -> None:
    assert KEYFRAME_REQUEST_INTERVAL_S == 0.5
    producer, feedback = make_producer(now=0.0)
    other, other_feedback = make_producer(now=0.0)
    transport = FakeTransport()
    a = make_consumer(producer, transport, now=10.0)  # start: first request goes out
    b = make_consumer(producer, transport, now=10.1, ssrc=2)  # within 500 ms: throttled
    assert len(feedback.keyframe_requests) == 1
    a.on_keyframe_request(10.3)
    b.on_keyframe_request(10.49)
    assert len(feedback.keyframe_requests) == 1
    b.on_keyframe_request(10.5)
    assert len(feedback.keyframe_requests) == 2
    a.on_keyframe_request(10.7)
    a.on_keyframe_request(10.99)
    assert len(feedback.keyframe_requests) == 2
    a.on_keyframe_request(11.0)
    assert len(feedback.keyframe_requests) == 3
    assert producer.keyframe_requests == 3
    # Another producer has its own throttle.
    c = make_consumer(other, transport, now=11.1, ssrc=3)
    c.on_keyframe_request(11.2)
    assert len(other_feedback.keyframe_requests) == 1
    assert all(p is producer for p in feedback.keyframe_requests)


def test_throttled_keyframe_request_is_retried_while_a_consumer_waits() -> None:
    producer, feedback = make_producer(now=0.0)
    transport = FakeTransport()
    make_consumer(producer, transport, now=10.0)  # request sent at 10.0
    make_consumer(producer, transport, now=10.1, ssrc=2)  # throttled: retry scheduled
    assert len(feedback.keyframe_requests) == 1
    [(retried, delay)] = feedback.keyframe_retries
    assert retried is producer and delay == pytest.approx(0.4)
    producer.keyframe_retry_due(10.5)  # both still wait for a keyframe
    assert len(feedback.keyframe_requests) == 2


def test_no_retry_once_the_keyframe_arrived() -> None:
    producer, feedback = make_producer(now=0.0)
    source = Source(VP8)
    transport = FakeTransport()
    make_consumer(producer, transport, now=10.0)
    make_consumer(producer, transport, now=10.1, ssrc=2)
    for packet in source.frame(keyframe=True):
        producer.on_rtp(packet, 10.2)
    producer.keyframe_retry_due(10.5)
    assert len(feedback.keyframe_requests) == 1


def test_audio_producer_never_requests_keyframes() -> None:
    producer, feedback = make_producer(OPUS)
    consumer = make_consumer(producer, FakeTransport())
    consumer.on_keyframe_request(5.0)
    assert producer.request_keyframe(10.0) is False
    assert feedback.keyframe_requests == []


# --- lifecycle ------------------------------------------------------------------------


def test_close_and_producer_close() -> None:
    producer, _ = make_producer()
    transport = FakeTransport()
    a = make_consumer(producer, transport)
    b = make_consumer(producer, transport, ssrc=2)
    a.close()
    assert producer.consumers == [b]
    assert state(a) is ConsumerState.CLOSED
    producer.close()
    assert state(b) is ConsumerState.CLOSED
    assert producer.consumers == []
    feed(producer, Source(VP8).frame(keyframe=True))
    assert transport.sent == []
    assert b.on_nack((b.next_seq,)) == 0


def test_new_consumer_starts_from_a_recent_cached_keyframe_without_a_pli() -> None:
    producer, feedback = make_producer(now=0.0)
    src = Source(VP8)
    early = FakeTransport()
    make_consumer(producer, early, now=0.0)  # the first subscriber asks for a keyframe
    feed(producer, src.frame(keyframe=True, packets=3) + src.frame(packets=2), now=0.5)
    requests = len(feedback.keyframe_requests)
    late = FakeTransport()
    make_consumer(producer, late, now=0.8, ssrc=7)
    assert len(feedback.keyframe_requests) == requests, "replayed: no PLI needed"
    assert len(late.sent) == 5 and continuous(late.seqs())
    assert [s.packet for s in late.sent] == [s.packet for s in early.sent]
    assert producer.replays == 1


def test_old_keyframe_is_not_replayed() -> None:
    producer, feedback = make_producer(now=0.0)
    src = Source(VP8)
    make_consumer(producer, FakeTransport(), now=0.0)
    feed(producer, src.frame(keyframe=True, packets=2), now=0.5)
    requests = len(feedback.keyframe_requests)
    late = FakeTransport()
    make_consumer(producer, late, now=5.0, ssrc=7)
    assert late.sent == [] and len(feedback.keyframe_requests) == requests + 1

"""Tests for sfu.ingress.Ingress (publish side) and sfu.egress.Egress (subscribe side).

Producers and consumers are real; the transports are fakes that record what would be
protected and sent. Tests that create sequence gaps run on an event loop because the
producer then arms the ingress's NACK timer.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from typing import cast

from sfu.codec import Codec
from sfu.consumer import Consumer
from sfu.egress import Egress
from sfu.ingress import (
    DEFAULT_REMB_BPS,
    MAX_REMB_BPS,
    MIN_REMB_BPS,
    SIMULCAST_REMB_BPS,
    Ingress,
    wanted_publish_rate,
)
from sfu.producer import Producer
from sfu.rtcp import (
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sdes,
    build_sr,
    ntp_middle32,
    parse_rtcp,
)
from sfu.transport import MediaTransport

VP8 = Codec(
    kind="video", name="vp8", clock_rate=90_000, channels=None, payload_type=96, rtx_payload_type=97
)
OPUS = Codec(kind="audio", name="opus", clock_rate=48_000, channels=2, payload_type=111)
IDENTITY = list(range(256))

AUDIO_SSRC = 0x0A0A0A0A
VIDEO_SSRC = 0x0B0B0B0B
VIDEO_RTX_SSRC = 0x0C0C0C0C
MID_EXT_ID = 9

_HEADER = struct.Struct("!BBHII")


def rtp(
    seq: int,
    ssrc: int,
    *,
    pt: int = 96,
    ts: int = 1000,
    payload: bytes = b"\x00\x01pay",
    marker: bool = False,
    extensions: bytes = b"",
) -> bytes:
    """RTP packet; ``extensions`` is a one-byte-profile block body (padded here)."""
    b0 = 0x80
    block = b""
    if extensions:
        b0 |= 0x10
        body = extensions + b"\x00" * (-len(extensions) & 3)
        block = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    return _HEADER.pack(b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, ssrc) + block + payload


def mid_element(mid: str, ext_id: int = MID_EXT_ID) -> bytes:
    value = mid.encode()
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value


def rtx_of(
    packet: bytes,
    rtx_seq: int,
    *,
    rtx_ssrc: int = VIDEO_RTX_SSRC,
    rtx_pt: int = 97,
    extensions: bytes = b"",
) -> bytes:
    """RFC 4588 packet for a packet without header extensions."""
    _, b1, seq, ts, _ = _HEADER.unpack_from(packet)
    return rtp(
        rtx_seq,
        rtx_ssrc,
        pt=rtx_pt,
        ts=ts,
        marker=bool(b1 & 0x80),
        payload=struct.pack("!H", seq) + packet[12:],
        extensions=extensions,
    )


class FakeTransport:
    def __init__(self) -> None:
        self.rtcp: list[bytes] = []
        self.rtp: list[tuple[int, int, int]] = []  # (seq, ts, ssrc)

    def send_rtp(self, packet: bytes, second_byte: int, seq: int, ts: int, ssrc: int) -> bool:
        self.rtp.append((seq, ts, ssrc))
        return True

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)

    def messages(self) -> list[object]:
        return [m for packet in self.rtcp for m in parse_rtcp(packet)]


class Setup:
    """An Ingress with an audio and a video producer (and a record of stale callbacks)."""

    def __init__(
        self,
        *,
        audio_ssrc: int | None = AUDIO_SSRC,
        video_ssrc: int | None = VIDEO_SSRC,
        video_rtx_ssrc: int | None = VIDEO_RTX_SSRC,
        video_extensions: list[int] | None = None,
        now: float = 0.0,
        stale_after_s: float = 5.0,
    ) -> None:
        self.stale: list[Producer] = []
        self.ingress = Ingress(on_stale=self.stale.append, stale_after_s=stale_after_s)
        self.transport = FakeTransport()
        self.ingress.transport = cast(MediaTransport, self.transport)
        self.audio = Producer(
            track_id="TRa",
            participant_id="PA",
            kind="audio",
            mid="0",
            codec=OPUS,
            ssrc=audio_ssrc,
            rtx_ssrc=None,
            extension_map=IDENTITY,
            feedback=self.ingress,
            now=now,
        )
        self.video = Producer(
            track_id="TRv",
            participant_id="PA",
            kind="video",
            mid="1",
            codec=VP8,
            ssrc=video_ssrc,
            rtx_ssrc=video_rtx_ssrc,
            extension_map=video_extensions if video_extensions is not None else IDENTITY,
            feedback=self.ingress,
            now=now,
        )
        self.ingress.add(self.audio)
        self.ingress.add(self.video)


def ssrcs(s: Setup) -> tuple[int | None, int | None, int | None]:
    """(audio, video, video RTX) SSRCs the producers are bound to."""
    return s.audio.ssrc, s.video.ssrc, s.video.rtx_ssrc


# --- routing --------------------------------------------------------------------------


def test_routes_rtp_by_ssrc() -> None:
    s = Setup()
    audio = rtp(1, AUDIO_SSRC, pt=111)
    video = rtp(500, VIDEO_SSRC)
    s.ingress.on_rtp(audio, 1.0)
    s.ingress.on_rtp(video, 1.0)
    s.ingress.on_rtp(rtp(2, AUDIO_SSRC, pt=111), 1.1)
    assert (s.audio.packets, s.video.packets) == (2, 1)
    assert s.audio.cache.get(1) == audio
    assert s.video.cache.get(500) == video
    assert s.audio.last_packet_at == 1.1

    s.ingress.on_rtp(rtp(3, 0xDEAD, pt=111), 1.2)  # unknown SSRC, no MID extension
    assert s.ingress.unknown_packets == 1
    assert (s.audio.packets, s.video.packets) == (2, 1)

    s.ingress.remove(s.audio)
    s.ingress.on_rtp(rtp(3, AUDIO_SSRC, pt=111), 1.3)
    assert s.audio.packets == 2
    assert s.ingress.unknown_packets == 2
    assert s.ingress.producers == [s.video]


async def test_rtx_is_unwrapped_into_the_producer() -> None:
    s = Setup()
    now = time.monotonic()
    original = [
        rtp(seq, VIDEO_SSRC, ts=9000, payload=b"\x00\x01frame-%d" % seq) for seq in range(10, 14)
    ]
    for packet in original[:2] + original[3:]:  # 12 is lost
        s.ingress.on_rtp(packet, now)
    assert s.video.cache.get(12) is None
    s.ingress.on_rtp(rtx_of(original[2], rtx_seq=7000), now + 0.01)
    assert s.video.cache.get(12) == original[2]  # media SSRC, PT and sequence restored
    assert s.video.packets == 4
    assert 12 not in s.video.nacks.due(now + 0.1)  # recovered: no more NACKs for it
    # An RTX payload shorter than the 2-byte sequence number is dropped, not raised on.
    s.ingress.on_rtp(rtp(7001, VIDEO_RTX_SSRC, pt=97, payload=b"\x01"), now + 0.02)
    assert s.video.packets == 4
    s.ingress.close()


def test_learns_unsignalled_ssrcs_from_the_mid_extension() -> None:
    # The MID extension is dropped when forwarding (extension map 9 -> 0).
    s = Setup(video_ssrc=None, video_rtx_ssrc=None, video_extensions=[0] * 256)
    s.ingress.mid_extension_id = MID_EXT_ID
    first = rtp(100, 0x5555, extensions=mid_element("1"))
    s.ingress.on_rtp(first, 1.0)
    assert s.video.ssrc == 0x5555
    assert s.video.packets == 1
    cached = s.video.cache.get(100)
    # MID stripped: X bit cleared, the 8-byte extension block gone.
    assert cached == bytes([first[0] & 0xEF]) + first[1:12] + first[20:]
    # Later packets carry no MID: routed by the learnt SSRC.
    s.ingress.on_rtp(rtp(101, 0x5555), 1.01)
    assert s.video.packets == 2
    # The RTX SSRC is learnt the same way, by its payload type, and unwrapped.
    s.ingress.on_rtp(rtx_of(rtp(99, 0x5555), 1, rtx_ssrc=0x6666, extensions=mid_element("1")), 1.02)
    assert s.video.rtx_ssrc == 0x6666
    assert s.video.cache.get(99) is not None
    assert s.video.packets == 3
    assert s.ingress.unknown_packets == 2


def test_does_not_learn_unknown_mids_or_foreign_payload_types() -> None:
    s = Setup(audio_ssrc=None, video_ssrc=None, video_rtx_ssrc=None)
    s.ingress.on_rtp(rtp(1, 0x7777, extensions=mid_element("1")), 1.0)
    assert s.video.ssrc is None  # no MID extension id negotiated: nothing to go by
    s.ingress.mid_extension_id = MID_EXT_ID
    s.ingress.on_rtp(rtp(1, 0x7777, extensions=mid_element("7")), 1.0)  # unknown mid
    s.ingress.on_rtp(rtp(1, 0x7777, extensions=mid_element("1", ext_id=3)), 1.0)  # other id
    s.ingress.on_rtp(rtp(1, 0x7777, pt=100, extensions=mid_element("1")), 1.0)  # not its PT
    s.ingress.on_rtp(rtp(1, 0x7777, pt=96, extensions=mid_element("0")), 1.0)  # audio's PT 111
    s.ingress.on_rtp(rtp(1, 0x7777), 1.0)  # no extension at all
    assert ssrcs(s) == (None, None, None)
    assert s.audio.packets == s.video.packets == 0
    assert s.ingress.unknown_packets == 6
    # Once bound, a producer is never rebound by a stray packet with the same MID.
    s.ingress.on_rtp(rtp(1, 0x8888, pt=96, extensions=mid_element("1")), 1.0)
    assert ssrcs(s) == (None, 0x8888, None)
    s.ingress.on_rtp(rtp(1, 0x9999, pt=96, extensions=mid_element("1")), 1.0)
    assert ssrcs(s) == (None, 0x8888, None)
    assert s.video.packets == 1


def test_sender_reports_reach_their_producer() -> None:
    s = Setup()
    ntp = (3_900_000_000 << 32) | 0x80000000
    s.ingress.on_rtcp(
        build_sr(VIDEO_SSRC, ntp, 123_456, 10, 1000) + build_sdes(VIDEO_SSRC, "x"), 4.0
    )
    s.ingress.on_rtcp(build_sr(0x4242, ntp, 1, 1, 1), 4.0)  # unknown sender: ignored
    assert s.video.sender_clock is not None
    assert (
        s.video.sender_clock.ntp,
        s.video.sender_clock.rtp_ts,
        s.video.sender_clock.received_at,
    ) == (ntp, 123_456, 4.0)
    assert s.audio.sender_clock is None


# --- feedback to the publisher ----------------------------------------------------------


async def test_periodic_sends_receiver_reports_and_remb() -> None:
    s = Setup()
    now = time.monotonic()
    for seq in (1, 2, 3, 5):  # audio: one lost
        s.ingress.on_rtp(rtp(seq, AUDIO_SSRC, pt=111, ts=seq * 960), now)
    for seq in range(1000, 1010):
        s.ingress.on_rtp(rtp(seq, VIDEO_SSRC, ts=seq * 3000), now)
    ntp = (3_900_000_000 << 32) | 0x40000000
    s.ingress.on_rtcp(build_sr(VIDEO_SSRC, ntp, 3_000_000, 10, 1000), now)
    packets = s.ingress.periodic(now + 0.5)
    messages = [m for p in packets for m in parse_rtcp(p)]
    assert len(packets) == len(messages) == 2
    rr, remb = messages
    assert isinstance(rr, ReceiverReport) and rr.ssrc == s.ingress.ssrc
    blocks = {b.ssrc: b for b in rr.reports}
    assert set(blocks) == {AUDIO_SSRC, VIDEO_SSRC}
    audio, video = blocks[AUDIO_SSRC], blocks[VIDEO_SSRC]
    assert (audio.highest_seq, audio.cumulative_lost, audio.fraction_lost) == (5, 1, 256 // 5)
    assert (audio.lsr, audio.dlsr) == (0, 0)  # no SR from the audio sender yet
    assert (video.highest_seq, video.cumulative_lost, video.fraction_lost) == (1009, 0, 0)
    assert video.lsr == ntp_middle32(ntp)
    assert abs(video.dlsr - 32768) <= 1  # 0.5 s in 1/65536 s
    assert isinstance(remb, Remb)  # video only
    assert (remb.sender_ssrc, remb.bitrate, remb.ssrcs) == (
        s.ingress.ssrc,
        DEFAULT_REMB_BPS,
        (VIDEO_SSRC,),
    )
    # Next interval: no new loss.
    again = parse_rtcp(s.ingress.periodic(now + 1.0)[0])[0]
    assert isinstance(again, ReceiverReport)
    assert {b.ssrc: b.fraction_lost for b in again.reports} == {AUDIO_SSRC: 0, VIDEO_SSRC: 0}
    s.ingress.close()


def test_remb_follows_the_best_subscriber_within_limits() -> None:
    s = Setup()
    s.ingress.on_rtp(rtp(1, VIDEO_SSRC), 1.0)

    def remb_now() -> int:
        remb = [m for p in s.ingress.periodic(1.5) for m in parse_rtcp(p) if isinstance(m, Remb)]
        assert len(remb) == 1
        return remb[0].bitrate

    consumers = []
    for ssrc in (1, 2):
        consumer = Consumer(
            s.video,
            subscriber_id=f"S{ssrc}",
            transport=cast(MediaTransport, FakeTransport()),
            ssrc=ssrc,
            rtx_ssrc=ssrc + 100,
            cname="c",
        )
        s.video.add_consumer(consumer)
        consumers.append(consumer)
    assert remb_now() == DEFAULT_REMB_BPS  # no estimate from any subscriber yet
    consumers[0].on_remb(1_000_000)
    consumers[1].on_remb(1_500_000)
    assert remb_now() == 1_500_000
    consumers[1].on_remb(50_000_000)
    assert remb_now() == MAX_REMB_BPS
    consumers[0].on_remb(1_000)
    consumers[1].on_remb(2_000)
    assert remb_now() == MIN_REMB_BPS


def test_no_reports_before_any_packet() -> None:
    s = Setup()
    assert s.ingress.periodic(1.0) == []


def test_stale_producer_callback_after_timeout() -> None:
    s = Setup(now=0.0, stale_after_s=5.0)
    s.ingress.on_rtp(rtp(1, VIDEO_SSRC), 2.0)
    s.ingress.periodic(4.9)
    assert s.stale == []
    s.ingress.periodic(6.9)
    assert s.stale == [s.audio]  # silent since it was created at 0.0
    s.ingress.remove(s.audio)  # what the publisher does on the callback
    s.ingress.periodic(7.5)
    assert s.stale == [s.audio, s.video]


async def test_nack_timer_sends_nacks_upstream() -> None:
    s = Setup()
    start = time.monotonic()
    for seq in (1, 2, 5, 6):
        s.ingress.on_rtp(rtp(seq, VIDEO_SSRC), time.monotonic())
    assert s.transport.rtcp == []  # nothing is sent synchronously from the packet path
    await asyncio.sleep(0.05)
    nacks = [m for m in s.transport.messages() if isinstance(m, Nack)]
    assert nacks, f"no NACK within {time.monotonic() - start:.3f} s"
    assert nacks[0].sender_ssrc == s.ingress.ssrc
    assert nacks[0].media_ssrc == VIDEO_SSRC
    assert set(nacks[0].seqs) == {3, 4}
    # The publisher's RTX answers: the retries stop for what was recovered.
    for seq in (3, 4):
        s.ingress.on_rtp(rtx_of(rtp(seq, VIDEO_SSRC), 100 + seq), time.monotonic())
    count = len(s.transport.rtcp)
    await asyncio.sleep(0.06)
    assert len(s.transport.rtcp) == count
    s.ingress.close()


async def test_nack_across_the_sequence_wrap() -> None:
    s = Setup()
    for seq in (65533, 65534, 1, 2):
        s.ingress.on_rtp(rtp(seq, VIDEO_SSRC), time.monotonic())
    await asyncio.sleep(0.05)
    nacks = [m for m in s.transport.messages() if isinstance(m, Nack)]
    assert nacks and set(nacks[0].seqs) == {65535, 0}
    s.ingress.close()


async def test_close_cancels_the_nack_timer() -> None:
    s = Setup()
    for seq in (1, 5):
        s.ingress.on_rtp(rtp(seq, VIDEO_SSRC), time.monotonic())
    s.ingress.close()
    await asyncio.sleep(0.05)
    assert s.transport.rtcp == []


def test_keyframe_request_sends_a_pli() -> None:
    s = Setup()
    assert s.video.request_keyframe(10.0)
    assert not s.video.request_keyframe(10.2)  # throttled
    assert s.transport.messages() == [Pli(s.ingress.ssrc, VIDEO_SSRC)]
    s.ingress.transport = None  # not connected (yet/any more): nothing to send on
    assert s.video.request_keyframe(11.0)
    assert len(s.transport.rtcp) == 1


# --- egress -----------------------------------------------------------------------------


class FakeConsumer:
    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.nacks: list[tuple[int, ...]] = []
        self.keyframe_requests: list[float] = []
        self.reports: list[ReportBlock] = []
        self.rembs: list[int] = []
        self.report: bytes | None = None

    def on_nack(self, seqs: tuple[int, ...]) -> int:
        self.nacks.append(seqs)
        return 0

    def on_keyframe_request(self, now: float) -> None:
        self.keyframe_requests.append(now)

    def on_report(self, block: ReportBlock, now: float) -> None:
        self.reports.append(block)

    def on_remb(self, bitrate: int, now: float) -> None:
        self.rembs.append(bitrate)

    def adapt(self, now: float) -> None:
        pass

    def sender_report(self, now: float) -> bytes | None:
        return self.report


def egress_with(*ssrcs: int) -> tuple[Egress, list[FakeConsumer]]:
    egress = Egress()
    fakes = [FakeConsumer(ssrc) for ssrc in ssrcs]
    for fake in fakes:
        egress.add(cast(Consumer, fake))
    return egress, fakes


def block(ssrc: int) -> ReportBlock:
    return ReportBlock(ssrc, 3, 7, 1234, 20, 0, 0)


def test_egress_routes_feedback_to_consumers_by_ssrc() -> None:
    egress, (a, b) = egress_with(0xA, 0xB)
    unknown = 0xF
    egress.on_rtcp(build_nack(1, 0xA, [10, 11, 30]), 1.0)
    egress.on_rtcp(build_nack(1, unknown, [1]), 1.0)
    assert a.nacks == [(10, 11, 30)] and b.nacks == []

    egress.on_rtcp(build_pli(1, 0xB) + build_pli(1, unknown), 2.0)
    egress.on_rtcp(build_fir(1, [(0xA, 1), (unknown, 2)]), 3.0)
    assert a.keyframe_requests == [3.0] and b.keyframe_requests == [2.0]

    egress.on_rtcp(build_rr(1, [block(0xA), block(unknown), block(0xB)]), 4.0)
    egress.on_rtcp(build_sr(1, 0, 0, 0, 0, [block(0xB)]), 4.0)  # a sending subscriber
    assert a.reports == [block(0xA)] and b.reports == [block(0xB), block(0xB)]

    egress.on_rtcp(build_remb(1, 750_000, [0xA, unknown, 0xB]), 5.0)
    assert a.rembs == [750_000] and b.rembs == [750_000]


def test_egress_handles_compound_packets_and_ignores_the_rest() -> None:
    egress, (a,) = egress_with(0xA)
    compound = (
        build_rr(1, [block(0xA)])
        + build_sdes(1, "subscriber")
        + build_remb(1, 300_000, [0xA])
        + build_nack(1, 0xA, [5])
        + build_pli(1, 0xA)
        + build_bye([1])
    )
    egress.on_rtcp(compound, 1.0)
    assert (a.reports, a.rembs, a.nacks, a.keyframe_requests) == (
        [block(0xA)],
        [300_000],
        [(5,)],
        [1.0],
    )
    egress.on_rtp(b"\x80" * 20, 1.0)  # subscribe PCs only send media
    assert egress.unexpected_rtp == 1


def test_egress_remove_and_periodic_reports() -> None:
    egress, (a, b) = egress_with(0xA, 0xB)
    a.report = b"SR-A"
    assert egress.periodic(1.0) == [b"SR-A"]  # b has nothing to report yet
    b.report = b"SR-B"
    assert sorted(egress.periodic(2.0)) == [b"SR-A", b"SR-B"]
    egress.remove(cast(Consumer, a))
    egress.remove(cast(Consumer, FakeConsumer(0xB)))  # not the registered one: kept
    egress.on_rtcp(build_pli(1, 0xA) + build_pli(1, 0xB), 3.0)
    assert a.keyframe_requests == [] and b.keyframe_requests == [3.0]
    assert egress.periodic(3.0) == [b"SR-B"]


def test_egress_drives_real_consumers() -> None:
    """NACK and PLI from a subscriber reach a real consumer and its producer."""
    s = Setup()
    transport = FakeTransport()
    consumer = Consumer(
        s.video,
        subscriber_id="S",
        transport=cast(MediaTransport, transport),
        ssrc=0x5151,
        rtx_ssrc=0x5252,
        cname="c",
    )
    s.video.add_consumer(consumer)
    consumer.start(100, None, 10.0)
    keyframe = rtp(1, VIDEO_SSRC, payload=b"\x10\x00\x9d\x01\x2a", marker=True)
    s.ingress.on_rtp(keyframe, 10.0)
    assert len(transport.rtp) == 1
    egress = Egress()
    egress.add(consumer)
    egress.on_rtcp(build_nack(1, 0x5151, [transport.rtp[0][0]]), 10.1)
    assert len(transport.rtp) == 2 and transport.rtp[1] == transport.rtp[0]
    egress.on_rtcp(build_pli(1, 0x5151), 10.6)
    assert s.transport.messages() == [Pli(s.ingress.ssrc, VIDEO_SSRC)] * 2


# --- hostile input ------------------------------------------------------------------------


def _rtcp_corpus(rng: random.Random) -> list[bytes]:
    valid = [
        build_rr(1, [block(0xA), block(0xB)]),
        build_sr(VIDEO_SSRC, 1 << 40, 5, 6, 7, [block(0xA)]),
        build_nack(1, 0xA, [1, 2, 3, 40, 65535, 0]),
        build_pli(1, 0xA),
        build_fir(1, [(0xA, 1), (0xB, 2)]),
        build_remb(1, 500_000, [0xA, 0xB]),
        build_sdes(1, "cname"),
        build_bye([1, 2]),
    ]
    corpus: list[bytes] = [b"", b"\x80", b"\x80\xc9", b"\x81\xc9\x00\x07" + b"\x00" * 8]
    # REMB claiming more SSRCs than present (aiortc raises struct.error on this).
    remb = bytearray(build_remb(1, 500_000, [0xA]))
    remb[16] = 200  # the SSRC count
    corpus.append(bytes(remb))
    # NACK with a truncated FCI, padding bit with a lying pad count, huge length field.
    corpus.append(build_nack(1, 0xA, [1])[:-1])
    padded = bytearray(build_pli(1, 0xA))
    padded[0] |= 0x20
    corpus.append(bytes(padded))
    corpus.append(b"\x80\xcd\xff\xff" + b"\x00" * 12)
    for packet in valid:
        corpus.append(packet)
        for cut in range(len(packet)):
            corpus.append(packet[:cut])
        for _ in range(40):
            mutated = bytearray(packet)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            corpus.append(bytes(mutated))
    for _ in range(1500):
        n = rng.randrange(0, 80)
        head = bytes([0x80 | rng.randrange(32), rng.choice((200, 201, 202, 203, 205, 206))])
        corpus.append((head + rng.randbytes(n))[: n + 2])
        corpus.append(rng.randbytes(n))
    return corpus


async def test_malformed_rtcp_never_raises() -> None:
    rng = random.Random(20240607)
    s = Setup()
    s.ingress.on_rtp(rtp(1, VIDEO_SSRC), time.monotonic())
    transport = FakeTransport()
    egress = Egress()
    for ssrc in (0xA, 0xB):
        consumer = Consumer(
            s.video,
            subscriber_id="S",
            transport=cast(MediaTransport, transport),
            ssrc=ssrc,
            rtx_ssrc=ssrc + 1,
            cname="c",
        )
        s.video.add_consumer(consumer)
        consumer.start(100, 101, 0.0)
        egress.add(consumer)
    s.ingress.on_rtp(rtp(2, VIDEO_SSRC, payload=b"\x10\x00\x9d"), time.monotonic())
    corpus = _rtcp_corpus(rng)
    assert len(corpus) > 3000
    for i, data in enumerate(corpus):
        now = 1.0 + i * 0.001
        egress.on_rtcp(data, now)
        s.ingress.on_rtcp(data, now)
    egress.periodic(100.0)
    s.ingress.periodic(100.0)
    s.ingress.close()


async def test_malformed_rtp_never_raises() -> None:
    """Unprotected RTP is at least 12 bytes (the transport drops shorter datagrams)."""
    rng = random.Random(7)
    s = Setup(video_extensions=[0] * 256)
    s.ingress.mid_extension_id = MID_EXT_ID
    transport = FakeTransport()
    consumer = Consumer(
        s.video,
        subscriber_id="S",
        transport=cast(MediaTransport, transport),
        ssrc=0xA,
        rtx_ssrc=0xB,
        cname="c",
    )
    s.video.add_consumer(consumer)
    consumer.start(100, 101, 0.0)
    base = [
        rtp(1, VIDEO_SSRC, extensions=mid_element("1") + b"\x10\xff"),
        rtx_of(rtp(2, VIDEO_SSRC), 3),
        rtp(3, AUDIO_SSRC, pt=111),
        rtp(4, 0x1234, extensions=mid_element("1")),
    ]
    now = time.monotonic()
    for _ in range(3000):
        packet = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 5)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        if rng.random() < 0.3:
            packet = packet[: rng.randint(12, len(packet))]
        s.ingress.on_rtp(bytes(packet), now)
        s.ingress.on_rtp(
            bytes([0x80 | rng.randrange(64)]) + rng.randbytes(rng.randint(11, 60)), now
        )
    s.ingress.close()


# --- simulcast: layers learnt from the RID extensions ---------------------------------

RID_EXT_ID = 10
REPAIRED_RID_EXT_ID = 11


def rid_element(rid: str, ext_id: int = RID_EXT_ID) -> bytes:
    value = rid.encode()
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value


def simulcast_setup() -> tuple[Ingress, Producer, FakeTransport]:
    ingress = Ingress(on_stale=lambda producer: None, stale_after_s=5.0)
    ingress.mid_extension_id = MID_EXT_ID
    ingress.rid_extension_id = RID_EXT_ID
    ingress.repaired_rid_extension_id = REPAIRED_RID_EXT_ID
    transport = FakeTransport()
    ingress.transport = cast(MediaTransport, transport)
    producer = Producer(
        track_id="TRS",
        participant_id="PA1",
        kind="video",
        mid="1",
        codec=VP8,
        ssrc=None,
        rtx_ssrc=None,
        extension_map=IDENTITY,
        feedback=ingress,
        now=0.0,
        rids=("h", "m", "l"),
    )
    ingress.add(producer)
    return ingress, producer, transport


def test_simulcast_layers_are_learnt_from_rid_and_repaired_rid() -> None:
    ingress, producer, transport = simulcast_setup()
    ssrcs = {"l": 0x111, "m": 0x222, "h": 0x333}
    for rid, ssrc in ssrcs.items():
        ingress.on_rtp(rtp(1, ssrc, extensions=mid_element("1") + rid_element(rid)), 0.0)
        # Later packets carry no extension: the SSRC is known by now.
        ingress.on_rtp(rtp(2, ssrc), 0.1)
    assert [(layer.rid, layer.ssrc) for layer in producer.layers] == [
        ("l", 0x111),
        ("m", 0x222),
        ("h", 0x333),
    ]
    assert [layer.stats.packets_received for layer in producer.layers] == [2, 2, 2]
    # A retransmission stream names its layer with the repaired RID.
    first_m = rtp(3, 0x222)
    repaired = rtx_of(
        first_m,
        50,
        rtx_ssrc=0x2222,
        extensions=mid_element("1") + rid_element("m", REPAIRED_RID_EXT_ID),
    )
    ingress.on_rtp(repaired, 0.2)
    assert producer.layers[1].rtx_ssrc == 0x2222
    assert producer.layers[1].cache.get(3) is not None
    # ... and a second copy of it (a browser's probe padding) is not forwarded again.
    ingress.on_rtp(rtx_of(first_m, 51, rtx_ssrc=0x2222), 0.3)
    assert producer.rtx_duplicates == 1
    # An unknown rid or one without a RID extension binds nothing.
    ingress.on_rtp(rtp(1, 0x444, extensions=mid_element("1") + rid_element("x")), 0.3)
    ingress.on_rtp(rtp(1, 0x555, extensions=mid_element("1")), 0.3)
    assert all(layer.ssrc in ssrcs.values() for layer in producer.layers)

    # Feedback is per layer: a report block each, one REMB naming all, PLI to one layer.
    messages = [m for p in ingress.periodic(1.0) for m in parse_rtcp(p)]
    blocks = [b.ssrc for m in messages if isinstance(m, ReceiverReport) for b in m.reports]
    assert sorted(blocks) == sorted(ssrcs.values())
    rembs = [m for m in messages if isinstance(m, Remb)]
    assert len(rembs) == 1 and sorted(rembs[0].ssrcs) == sorted(ssrcs.values())
    assert producer.request_keyframe(1.0, 1)
    assert [m.media_ssrc for m in transport.messages() if isinstance(m, Pli)] == [0x222]
    assert producer.request_keyframe(1.1, 0)  # another layer: its own throttle
    assert not producer.request_keyframe(1.2, 1)


def test_simulcast_remb_asks_for_the_best_subscriber_plus_the_layers_below() -> None:
    _, producer, _ = simulcast_setup()
    for layer, rate in zip(producer.layers, (150_000, 500_000, 1_500_000), strict=True):
        layer.bitrate_bps = rate
    assert wanted_publish_rate(producer, None) == SIMULCAST_REMB_BPS  # nobody limited
    assert wanted_publish_rate(producer, 600_000) == 600_000 + 150_000 + 500_000
    assert wanted_publish_rate(producer, 200_000) == 200_000 + 150_000
    assert wanted_publish_rate(producer, 10_000) == 300_000  # the base layer keeps flowing
    assert wanted_publish_rate(producer, 5_000_000) == SIMULCAST_REMB_BPS


def test_recorders_get_only_the_top_layer() -> None:
    _, producer, _ = simulcast_setup()

    class Recorder:
        needs_keyframe = False

        def __init__(self) -> None:
            self.seqs: list[int] = []

        def forward(self, packet: bytes, seq: int, ts: int, keyframe: bool) -> None:
            self.seqs.append(seq)

    recorder = Recorder()
    producer.recorders.append(recorder)
    for index, layer in enumerate(producer.layers):
        producer.on_rtp(rtp(100 + index, 0x700 + index), 0.0, layer)
    assert recorder.seqs == [102]

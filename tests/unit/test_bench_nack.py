"""Tests for the bench subscribers' NACKs (``bench.nack``) on fake packets and a fake clock."""

from __future__ import annotations

import struct
from collections.abc import Callable

from bench.latency import payload_key
from bench.nack import TRIES, NackingTap, NackPlan, nack_plan
from sfu.rtcp import Nack, parse_rtcp
from sfu.rtp import rtx_wrap

SDP = (
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\n"
    "a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\n"
    "a=fmtp:97 apt=96\r\na=ssrc-group:FID 1000 2000\r\n"
)
VIDEO, RTX, AUDIO = 1000, 2000, 3000


def _rtp(pt: int, seq: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 3000, ssrc) + payload


class _Rig:
    def __init__(self) -> None:
        self.passed: list[bytes] = []
        self.sent: list[Nack] = []
        self.timers: list[Callable[[], None]] = []
        self.tap = NackingTap(self.passed.append, self._send, self._later, lambda: nack_plan(SDP))

    def _send(self, rtcp: bytes) -> None:
        (nack,) = parse_rtcp(rtcp)
        assert isinstance(nack, Nack)
        self.sent.append(nack)

    def _later(self, delay: float, fn: Callable[[], None]) -> object:
        assert delay > 0
        self.timers.append(fn)
        return None

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for fn in timers:
            fn()


def test_the_plan_reads_nack_rtx_and_fid_from_the_sdp() -> None:
    assert nack_plan(SDP) == NackPlan(frozenset({96}), {97: 96}, {RTX: VIDEO})
    assert nack_plan("") == NackPlan()


def test_a_gap_is_nacked_and_a_retransmission_fills_it() -> None:
    rig = _Rig()
    for seq in (65534, 65535, 2, 3):  # 0 and 1 lost, across the wrap
        rig.tap(_rtp(96, seq, VIDEO, b"v%d" % seq))
    assert [(n.media_ssrc, sorted(n.seqs)) for n in rig.sent] == [(VIDEO, [0, 1])]
    original = _rtp(96, 0, VIDEO, b"lost-zero")
    rtx = rtx_wrap(original, RTX, 97, 77)
    assert rtx is not None
    rig.tap(rtx)
    assert payload_key(rig.passed[-1]) == payload_key(original)  # unwrapped for the counter
    assert rig.tap.repaired == 1
    rig.fire()  # 1 is still missing: asked again, 0 is not
    assert sorted(rig.sent[-1].seqs) == [1]
    rig.tap(_rtp(96, 1, VIDEO, b"plain resend"))  # a resend without RTX counts too
    assert rig.tap.repaired == 2
    rig.fire()
    assert len(rig.sent) == 2 and not rig.timers


def test_audio_passes_untouched_and_hopeless_packets_are_given_up() -> None:
    rig = _Rig()
    for seq in (10, 13):
        rig.tap(_rtp(111, seq, AUDIO, b"a"))
    assert rig.sent == [] and len(rig.passed) == 2
    rig.tap(_rtp(96, 100, VIDEO, b"x"))
    rig.tap(_rtp(96, 102, VIDEO, b"y"))
    for _ in range(TRIES + 2):
        rig.fire()
    assert [sorted(n.seqs) for n in rig.sent] == [[101]] * TRIES
    assert not rig.timers  # bounded: no retry left
    rig.tap(_rtp(96, 5000, VIDEO, b"jump"))  # a restart, not 4,897 losses
    assert len(rig.sent) == TRIES


def test_an_rtx_stream_the_sdp_does_not_pair_is_placed_by_what_it_repairs() -> None:
    rig = _Rig()
    rig.tap = NackingTap(
        rig.passed.append, rig._send, rig._later, lambda: nack_plan(SDP.replace("FID", "X"))
    )
    for seq in (10, 12):
        rig.tap(_rtp(96, seq, VIDEO, b"v"))
    rtx = rtx_wrap(_rtp(96, 11, VIDEO, b"eleven"), 4242, 97, 1)
    assert rtx is not None
    rig.tap(rtx)
    assert rig.tap.repaired == 1 and payload_key(rig.passed[-1]) == payload_key(
        b"\x80" * 12 + b"eleven"
    )

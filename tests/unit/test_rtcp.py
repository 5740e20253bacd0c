"""Tests for sfu.rtcp: build -> parse round trips, aiortc cross-checks, fuzzing."""

from __future__ import annotations

import random
import struct
import time

from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from sfu.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    SenderReport,
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sdes,
    build_sr,
    ntp_middle32,
    ntp_now,
    ntp_to_seconds,
    parse_rtcp,
    seconds_to_ntp,
)

BLOCKS = (
    ReportBlock(0x11111111, 25, 1234, 0x0001FFFF, 77, 0xDEADBEEF, 65536),
    ReportBlock(0x22222222, 255, -5, 3, 0, 0, 0),
    ReportBlock(0x33333333, 0, 0x7FFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 1, 2),
)


def to_aiortc(block: ReportBlock) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(
        ssrc=block.ssrc,
        fraction_lost=block.fraction_lost,
        packets_lost=block.cumulative_lost,
        highest_sequence=block.highest_seq,
        jitter=block.jitter,
        lsr=block.lsr,
        dlsr=block.dlsr,
    )


# ------------------------------------------------------------------ reports


def test_sr_roundtrip_and_aiortc() -> None:
    ntp = seconds_to_ntp(1_700_000_000.25)
    data = build_sr(0xCAFEBABE, ntp, 0xFFFFFFF0, 1000, 1_200_000, BLOCKS)
    assert parse_rtcp(data) == [SenderReport(0xCAFEBABE, ntp, 0xFFFFFFF0, 1000, 1_200_000, BLOCKS)]
    theirs = RtcpSrPacket(
        ssrc=0xCAFEBABE,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=ntp, rtp_timestamp=0xFFFFFFF0, packet_count=1000, octet_count=1_200_000
        ),
        reports=[to_aiortc(b) for b in BLOCKS],
    )
    assert bytes(theirs) == data
    (parsed,) = RtcpPacket.parse(data)
    assert isinstance(parsed, RtcpSrPacket)
    assert parsed.reports[1].packets_lost == -5
    # without report blocks
    assert parse_rtcp(build_sr(1, 2, 3, 4, 5)) == [SenderReport(1, 2, 3, 4, 5, ())]


def test_rr_roundtrip_and_aiortc() -> None:
    data = build_rr(0x01020304, BLOCKS)
    assert parse_rtcp(data) == [ReceiverReport(0x01020304, BLOCKS)]
    assert bytes(RtcpRrPacket(ssrc=0x01020304, reports=[to_aiortc(b) for b in BLOCKS])) == data
    assert parse_rtcp(build_rr(9)) == [ReceiverReport(9, ())]


def test_report_values_clamped_and_masked() -> None:
    block = ReportBlock(0x1_0000_0005, 0x1FF, -(1 << 30), 1 << 33, -1, 0, 0)
    (rr,) = parse_rtcp(build_rr(5, [block]))
    assert isinstance(rr, ReceiverReport)
    assert rr.reports[0] == ReportBlock(5, 0xFF, -0x800000, 0, 0xFFFFFFFF, 0, 0)
    (rr,) = parse_rtcp(build_rr(5, [ReportBlock(1, 0, 1 << 30, 0, 0, 0, 0)]))
    assert isinstance(rr, ReceiverReport)
    assert rr.reports[0].cumulative_lost == 0x7FFFFF


def test_more_than_31_blocks_spill_into_rr() -> None:
    blocks = [ReportBlock(i, 0, i, i, 0, 0, 0) for i in range(40)]
    messages = parse_rtcp(build_sr(7, 1, 2, 3, 4, blocks))
    assert [type(m) for m in messages] == [SenderReport, ReceiverReport]
    assert isinstance(messages[0], SenderReport) and isinstance(messages[1], ReceiverReport)
    assert messages[0].reports + messages[1].reports == tuple(blocks)
    messages = parse_rtcp(build_rr(7, blocks + blocks))
    assert len(messages) == 3
    assert sum(len(m.reports) for m in messages if isinstance(m, ReceiverReport)) == 80


def test_sr_with_profile_extension_is_accepted() -> None:
    # RFC 3550 allows profile-specific data after the report blocks.
    data = bytearray(build_sr(1, 2, 3, 4, 5, BLOCKS[:1]) + b"\x00\x00\x00\x00")
    struct.pack_into("!H", data, 2, (len(data) // 4) - 1)
    assert parse_rtcp(bytes(data)) == [SenderReport(1, 2, 3, 4, 5, BLOCKS[:1])]


# ------------------------------------------------------------------ feedback


def test_nack_roundtrip_across_wrap() -> None:
    data = build_nack(0xAA, 0xBB, [65534, 65535, 0, 1, 5])
    assert len(data) == 16  # a single PID+BLP word
    assert parse_rtcp(data) == [Nack(0xAA, 0xBB, (65534, 65535, 0, 1, 5))]
    # aiortc reads the same packet, but without masking (65536+): the defect
    (theirs,) = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpRtpfbPacket)
    assert [s & 0xFFFF for s in theirs.lost] == [65534, 65535, 0, 1, 5]


def test_nack_order_dedup_and_spread() -> None:
    # out of order input is sorted by distance from the first seq
    (nack,) = parse_rtcp(build_nack(1, 2, [5, 65535, 3, 5, 70000]))
    assert isinstance(nack, Nack)
    assert sorted(nack.seqs) == sorted({5, 65535, 3, 70000 & 0xFFFF})
    seqs = [100, 116, 117, 200, 1000, 1016, 1017]
    (nack,) = parse_rtcp(build_nack(1, 2, seqs))
    assert isinstance(nack, Nack)
    assert nack.seqs == tuple(seqs)
    assert build_nack(1, 2, []) == b""


def test_nack_matches_aiortc_serialisation() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        start = rng.randrange(60000)
        lost = sorted(rng.sample(range(start, start + 200), rng.randint(1, 40)))
        ours = build_nack(3, 4, lost)
        theirs = bytes(RtcpRtpfbPacket(fmt=1, ssrc=3, media_ssrc=4, lost=lost))
        assert ours == theirs
        (parsed,) = parse_rtcp(ours)
        assert isinstance(parsed, Nack)
        assert parsed.seqs == tuple(lost)


def test_pli_and_fir() -> None:
    data = build_pli(0x10, 0x20)
    assert parse_rtcp(data) == [Pli(0x10, 0x20)]
    assert bytes(RtcpPsfbPacket(fmt=1, ssrc=0x10, media_ssrc=0x20)) == data
    data = build_fir(0x10, [(0x20, 1), (0x30, 258)])
    assert parse_rtcp(data) == [Fir(0x10, ((0x20, 1), (0x30, 2)))]
    assert parse_rtcp(build_fir(0x10, [])) == [Fir(0x10, ())]


def test_remb_roundtrip_and_aiortc() -> None:
    for bitrate in (0, 1, 0x3FFFF, 0x40000, 2_000_000, 123_456_789, 10**12):
        data = build_remb(0x99, bitrate, [1, 2, 3])
        (remb,) = parse_rtcp(data)
        assert isinstance(remb, Remb)
        assert remb.sender_ssrc == 0x99 and remb.ssrcs == (1, 2, 3)
        # never overstated, and within the 18-bit mantissa's precision
        assert remb.bitrate <= bitrate
        assert bitrate - remb.bitrate <= bitrate >> 17
        assert data[12:] == pack_remb_fci(bitrate, [1, 2, 3])
        assert unpack_remb_fci(data[12:]) == (remb.bitrate, [1, 2, 3])
    (remb,) = parse_rtcp(build_remb(1, 1 << 90, []))
    assert isinstance(remb, Remb)
    assert remb.bitrate == 0x3FFFF << 63
    assert parse_rtcp(build_remb(1, -5, [7])) == [Remb(1, 0, (7,))]


def test_remb_claiming_more_ssrcs_than_present() -> None:
    good = build_remb(0x99, 500_000, [1, 2])
    bad = bytearray(good)
    bad[16] = 5  # count of 5 with 2 SSRCs present
    assert parse_rtcp(bytes(bad)) == []
    # the rest of a compound packet is still read
    assert parse_rtcp(bytes(bad) + build_pli(1, 2)) == [Pli(1, 2)]
    # wrong identifier, and a too-short FCI
    bad = bytearray(good)
    bad[12:16] = b"ABCD"
    assert parse_rtcp(bytes(bad)) == []
    short = build_pli(1, 2)[:1] + bytes([0xCF]) + build_pli(1, 2)[2:]  # fmt 15, no FCI
    assert parse_rtcp(short) == []


def test_bye_and_sdes() -> None:
    assert parse_rtcp(build_bye([1, 2, 3])) == [Bye((1, 2, 3))]
    assert bytes(RtcpByePacket(sources=[1, 2, 3])) == build_bye([1, 2, 3])
    assert parse_rtcp(build_bye([])) == [Bye(())]
    many = list(range(70))
    assert [m for m in parse_rtcp(build_bye(many)) if isinstance(m, Bye)] == [
        Bye(tuple(range(31))),
        Bye(tuple(range(31, 62))),
        Bye(tuple(range(62, 70))),
    ]
    for cname in ("", "a", "abcd", "{f81d4fae-7dec-11d0-a765-00a0c91e6bf6}", "é" * 200):
        data = build_sdes(0x1234, cname)
        assert len(data) % 4 == 0
        assert parse_rtcp(data) == []  # SDES is skipped by the parser
        (sdes,) = RtcpPacket.parse(data)
        assert isinstance(sdes, RtcpSdesPacket)
        assert sdes.chunks[0].ssrc == 0x1234
        expected = cname.encode()[:255]
        assert sdes.chunks[0].items == [(1, expected)]


def test_compound_with_unknown_and_padding() -> None:
    app = struct.pack("!BBHI4s", 0x80, 204, 2, 1, b"name")
    xr = struct.pack("!BBHI", 0x80, 207, 1, 1)
    twcc = struct.pack("!BBHII", 0x8F, 205, 2, 1, 2)
    # PLI with 4 bytes of padding (P bit, last byte = 4)
    padded_pli = struct.pack("!BBHII4s", 0xA1, 206, 3, 5, 6, b"\x00\x00\x00\x04")
    data = (
        build_sr(1, 2, 3, 4, 5)
        + build_sdes(1, "x")
        + app
        + xr
        + twcc
        + padded_pli
        + build_nack(1, 2, [10])
    )
    assert parse_rtcp(data) == [
        SenderReport(1, 2, 3, 4, 5, ()),
        Pli(5, 6),
        Nack(1, 2, (10,)),
    ]
    # invalid padding count spoils only that sub-packet
    bad_pad = struct.pack("!BBHII4s", 0xA1, 206, 3, 5, 6, b"\x00\x00\x00\x0f")
    assert parse_rtcp(bad_pad + build_pli(7, 8)) == [Pli(7, 8)]


def test_truncated_and_malformed() -> None:
    data = build_pli(1, 2) + build_rr(3, BLOCKS)
    assert parse_rtcp(data[:-1]) == [Pli(1, 2)]  # stop at the overrun
    assert parse_rtcp(b"") == []
    assert parse_rtcp(b"\x80\xc8\x00") == []
    assert parse_rtcp(b"\x40" + data[1:]) == []  # version 1
    # RR whose count claims more blocks than its length holds
    rr = bytearray(build_rr(3, BLOCKS[:1]))
    rr[0] = 0x82
    assert parse_rtcp(bytes(rr) + build_pli(1, 2)) == [Pli(1, 2)]
    # BYE claiming more SSRCs than present
    assert parse_rtcp(b"\x83\xcb\x00\x01\x00\x00\x00\x01") == []
    # NACK with only the SSRCs and a stray trailing word part
    assert parse_rtcp(struct.pack("!BBHII", 0x81, 205, 2, 1, 2)) == [Nack(1, 2, ())]
    assert parse_rtcp(struct.pack("!BBHI", 0x81, 205, 1, 1)) == []


def test_fuzz_never_raises() -> None:
    rng = random.Random(1234)
    seeds = [
        build_sr(1, 2, 3, 4, 5, BLOCKS) + build_sdes(1, "cname"),
        build_rr(1, BLOCKS) + build_remb(1, 1_000_000, [1, 2]),
        build_nack(1, 2, [1, 2, 3, 40]) + build_pli(1, 2) + build_fir(1, [(2, 3)]),
        build_bye([1, 2]),
    ]
    for _ in range(20000):
        r = rng.random()
        if r < 0.3:
            data = rng.randbytes(rng.randrange(64))
        else:
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(buf))
                buf[i] = rng.randrange(256)
            if r < 0.6:
                # keep headers plausible so the sub-parsers get exercised
                buf[0] = 0x80 | (buf[0] & 0x3F)
            data = bytes(buf[: rng.randrange(len(buf) + 1)] if r > 0.9 else buf)
        messages = parse_rtcp(data)
        assert isinstance(messages, list)
        for m in messages:
            if isinstance(m, Nack):
                assert all(0 <= s <= 0xFFFF for s in m.seqs)


# ------------------------------------------------------------------ NTP time


def test_ntp_helpers() -> None:
    ntp = seconds_to_ntp(1_700_000_000.5)
    assert ntp >> 32 == 1_700_000_000 + 2208988800
    assert ntp & 0xFFFFFFFF == 0x80000000
    assert ntp_to_seconds(ntp) == 1_700_000_000.5
    assert ntp_middle32(ntp) == ((ntp >> 16) & 0xFFFFFFFF)
    assert ntp_middle32(0x1122334455667788) == 0x33445566
    before = time.time()
    now = ntp_to_seconds(ntp_now())
    after = time.time()
    assert before - 1e-6 <= now <= after + 1e-6
    assert abs(ntp_to_seconds(seconds_to_ntp(1234.000001)) - 1234.000001) < 1e-9

"""Tests for sfu.receive_stats: RFC 3550 statistics and NACK scheduling (fake clock)."""

from __future__ import annotations

import random

import pytest
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket

from sfu.receive_stats import NackTracker, ReceiveStats
from sfu.rtcp import ReportBlock

# ------------------------------------------------------------------ ReceiveStats


def test_empty_report_block() -> None:
    stats = ReceiveStats(90000)
    assert stats.packets_received == 0
    assert stats.report_block(1, 2, 3) == ReportBlock(1, 0, 0, 0, 0, 2, 3)


def test_known_loss_across_wrap() -> None:
    stats = ReceiveStats(90000)
    start = 65000
    for i in range(1000):
        if i % 10 == 5:
            continue  # 100 packets lost
        stats.update((start + i) & 0xFFFF, 3000 * i, i * 0.01)
    assert stats.packets_received == 900
    assert stats.highest_seq_ext == start + 999  # one wrap: 65536 + 463
    block = stats.report_block(0xABC, 0x1234, 0x10)
    assert block.ssrc == 0xABC
    assert block.fraction_lost == (100 << 8) // 1000
    assert block.cumulative_lost == 100
    assert block.highest_seq == start + 999
    assert (block.lsr, block.dlsr) == (0x1234, 0x10)
    # next interval without loss: fraction 0, cumulative kept
    for i in range(1000, 1100):
        stats.update((start + i) & 0xFFFF, 3000 * i, i * 0.01)
    block = stats.report_block(0xABC, 0, 0)
    assert block.fraction_lost == 0
    assert block.cumulative_lost == 100
    # an interval losing half of the packets
    for i in range(1101, 1200, 2):
        stats.update((start + i) & 0xFFFF, 3000 * i, i * 0.01)
    assert stats.report_block(0xABC, 0, 0).fraction_lost == 128


def test_jitter_zero_when_paced_and_known_when_alternating() -> None:
    stats = ReceiveStats(48000)
    for i in range(500):
        stats.update(i, 960 * i, 1.0 + 0.02 * i)
    assert stats.report_block(1, 0, 0).jitter == 0
    stats = ReceiveStats(48000)
    for i in range(500):
        # transit alternates between 0 and 5 ms: |D| = 5 ms = 240 ts units
        stats.update(i, 960 * i, 1.0 + 0.02 * i + (0.005 if i % 2 else 0.0))
    assert stats.jitter == pytest.approx(240, abs=0.5)
    assert stats.report_block(1, 0, 0).jitter in (239, 240)


def test_same_timestamp_packets_do_not_add_jitter() -> None:
    stats = ReceiveStats(90000)
    seq = 0
    for frame in range(100):
        for k in range(5):  # 5 packets per frame, paced 1 ms apart
            stats.update(seq, 3000 * frame, frame / 30 + k * 0.001)
            seq += 1
    # only the frame-to-frame delay counts: 4 ms late vs the timestamp step
    assert stats.jitter == pytest.approx(0.004 * 90000, rel=0.01)


def test_timestamp_wrap() -> None:
    stats = ReceiveStats(90000)
    for i in range(100):
        stats.update(i, (0xFFFFFFFF - 3000 * 50 + 3000 * i) & 0xFFFFFFFF, i / 30)
    assert stats.jitter < 1


def test_duplicates_reorder_and_late_packets() -> None:
    stats = ReceiveStats(90000)
    for seq in (10, 11, 13, 12, 13, 14):
        stats.update(seq, 0, 0.0)
    assert stats.packets_received == 6
    assert stats.highest_seq_ext == 14
    assert stats.cumulative_lost == -1  # a duplicate makes it negative (RFC 3550)
    block = stats.report_block(1, 0, 0)
    assert block.cumulative_lost == -1 and block.fraction_lost == 0


def test_restart_after_big_jump() -> None:
    stats = ReceiveStats(90000)
    for seq in range(100, 110):
        stats.update(seq, 0, 0.0)
    stats.update(40000, 0, 0.0)  # one stray packet: ignored
    assert stats.highest_seq_ext == 109 and stats.packets_received == 10
    stats.update(110, 0, 0.0)
    stats.update(30000, 0, 0.0)  # another stray packet
    stats.update(40001, 0, 0.0)  # not the follower of the last stray one
    assert stats.highest_seq_ext == 110 and stats.packets_received == 11
    stats.update(40002, 0, 0.0)  # follows 40001: the sender restarted
    assert stats.highest_seq_ext == 40002 and stats.packets_received == 1
    assert stats.report_block(1, 0, 0).cumulative_lost == 0


def test_cumulative_loss_clamped_to_24_bits() -> None:
    stats = ReceiveStats(90000)
    ext = 0
    stats.update(0, 0, 0.0)
    while ext < 0x900000:
        ext += 2999
        stats.update(ext & 0xFFFF, 0, 0.0)
    block = stats.report_block(1, 0, 0)
    assert block.cumulative_lost == 0x7FFFFF
    assert block.highest_seq == ext & 0xFFFFFFFF
    assert block.fraction_lost == 255


def test_matches_aiortc_stream_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("aiortc.rtcrtpreceiver.time.time", lambda: clock[0])
    rng = random.Random(1234)
    ours = ReceiveStats(90000)
    theirs = StreamStatistics(90000)
    arrivals = []
    for i in range(3000):
        if rng.random() < 0.05:
            continue  # lost
        # (aiortc ignores the timestamp wrap, so stay clear of it here)
        ts = 1000 + 3000 * (i // 3)
        arrivals.append((i / 90 + rng.random() * 0.01, (60000 + i) & 0xFFFF, ts))
    arrivals.sort()  # network jitter also reorders a few packets
    fractions = []
    for n, (arrival, seq, ts) in enumerate(arrivals):
        clock[0] = arrival
        ours.update(seq, ts, arrival)
        theirs.add(RtpPacket(sequence_number=seq, timestamp=ts))
        if n % 500 == 499:
            block = ours.report_block(1, 0, 0)
            fractions.append((block.fraction_lost, theirs.fraction_lost))
            assert block.cumulative_lost == theirs.packets_lost
            assert block.highest_seq == theirs.cycles + (theirs.max_seq or 0)
            assert abs(block.jitter - theirs.jitter) <= 3
    assert all(a == b for a, b in fractions)
    assert ours.packets_received == theirs.packets_received


# ------------------------------------------------------------------ NackTracker


def feed(tracker: NackTracker, seqs: list[int], now: float) -> list[bool]:
    return [tracker.on_packet(s, now) for s in seqs]


def test_no_gap_nothing_due() -> None:
    tracker = NackTracker()
    assert feed(tracker, list(range(10)), 0.0) == [False] * 10
    assert not tracker.pending()
    assert tracker.due(1.0) == []


def test_gap_timing_two_packets_or_20ms() -> None:
    tracker = NackTracker()
    feed(tracker, [1, 2], 0.0)
    assert tracker.on_packet(5, 0.0) is True  # 3 and 4 missing
    assert tracker.pending()
    assert tracker.due(0.0) == [3]  # 3 is 2 behind 5; 4 only 1 behind and not late
    assert tracker.due(0.005) == []
    assert tracker.due(0.019) == []
    assert tracker.due(0.020) == [3, 4]  # 3 retried after 20 ms, 4 now 20 ms late
    tracker.on_packet(3, 0.021)  # recovered
    tracker.on_packet(4, 0.022)
    assert not tracker.pending()
    assert tracker.due(0.1) == []


def test_reordered_packet_is_not_nacked() -> None:
    tracker = NackTracker()
    feed(tracker, [1, 3], 0.0)
    assert tracker.due(0.01) == []
    tracker.on_packet(2, 0.011)
    assert not tracker.pending()
    assert tracker.due(0.05) == []


def test_retries_limit_and_rtt_interval() -> None:
    tracker = NackTracker(max_age_s=10.0, max_retries=3)
    tracker.rtt = 0.125  # (binary fractions keep the float arithmetic exact)
    feed(tracker, [1, 10], 0.0)
    assert tracker.due(0.0) == list(range(2, 9))  # 9 is only one behind
    assert tracker.due(0.03125) == [9]  # 9 is now > 20 ms late
    assert tracker.due(0.0625) == []  # within one RTT
    assert tracker.due(0.125) == list(range(2, 9))
    assert tracker.due(0.15625) == [9]
    assert tracker.due(0.25) == list(range(2, 9))
    assert tracker.due(0.28125) == [9]
    assert tracker.pending()
    assert tracker.due(0.5) == []  # all reached 3 NACKs
    assert not tracker.pending()


def test_max_age_drops() -> None:
    tracker = NackTracker(max_age_s=0.5, max_retries=100)
    feed(tracker, [1, 4], 0.0)
    assert tracker.due(0.0) == [2]
    assert tracker.due(0.3) == [2, 3]
    assert tracker.due(0.5) == []
    assert not tracker.pending()


def test_wrap() -> None:
    tracker = NackTracker()
    feed(tracker, [65533, 65534], 0.0)
    assert tracker.on_packet(2, 0.0) is True
    assert tracker.due(0.0) == [65535, 0]
    assert tracker.due(0.02) == [65535, 0, 1]
    tracker.on_packet(0, 0.03)
    assert tracker.due(0.05) == [65535, 1]


def test_huge_jump_resets() -> None:
    tracker = NackTracker()
    feed(tracker, [100, 103], 0.0)
    assert tracker.pending()
    assert tracker.on_packet(103 + 600, 0.0) is False
    assert not tracker.pending()
    assert tracker.on_packet(103 + 602, 0.0) is True
    assert tracker.due(0.02) == [103 + 601]


def test_backward_restart() -> None:
    tracker = NackTracker()
    feed(tracker, [40000, 40001], 0.0)
    tracker.on_packet(30000, 0.0)  # stray: ignored
    assert tracker.on_packet(30003, 0.0) is False  # no gap from a stray packet
    assert tracker.on_packet(40003, 0.0) is True  # the stream goes on: 40002 missing
    tracker.on_packet(30004, 0.0)  # not the follower of 30003 (40003 came between)
    tracker.on_packet(30005, 0.0)  # follows 30004: the sender restarted there
    assert not tracker.pending()
    assert tracker.on_packet(30007, 0.0) is True
    assert tracker.due(0.0) == []
    assert tracker.due(0.02) == [30006]


def test_missing_set_is_bounded() -> None:
    tracker = NackTracker()
    seq = 0
    tracker.on_packet(seq, 0.0)
    for _ in range(10):
        seq += 500
        tracker.on_packet(seq, 0.0)
    out = tracker.due(0.02)
    assert 0 < len(out) <= 1024
    assert out == sorted(out)
    assert out[-1] == seq - 1

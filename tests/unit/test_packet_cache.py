"""Tests for sfu.packet_cache.PacketCache."""

from __future__ import annotations

import pytest

from sfu.packet_cache import PacketCache


def test_capacity_rounds_up_to_power_of_two() -> None:
    assert PacketCache().capacity == 1024
    assert PacketCache(1).capacity == 1
    assert PacketCache(500).capacity == 512
    assert PacketCache(512).capacity == 512
    assert PacketCache(513).capacity == 1024
    assert PacketCache(1 << 20).capacity == 1 << 16  # 16-bit seqs: no point beyond
    with pytest.raises(ValueError):
        PacketCache(0)


def test_put_get_and_missing() -> None:
    cache = PacketCache(8)
    assert cache.get(0) is None
    assert len(cache) == 0
    for seq in range(5):
        cache.put(seq, b"p%d" % seq)
    assert [cache.get(s) for s in range(5)] == [b"p0", b"p1", b"p2", b"p3", b"p4"]
    assert cache.get(5) is None
    assert cache.get(8) is None  # same slot as 0, other seq
    assert len(cache) == 5


def test_overwrite_evicts_old_seq() -> None:
    cache = PacketCache(8)
    for seq in range(20):
        cache.put(seq, bytes([seq]))
    assert len(cache) == 8
    for seq in range(12):
        assert cache.get(seq) is None
    for seq in range(12, 20):
        assert cache.get(seq) == bytes([seq])
    # storing the same seq again replaces the packet
    cache.put(19, b"again")
    assert cache.get(19) == b"again"


def test_wrap_65535_to_0() -> None:
    cache = PacketCache(16)
    seqs = [(65530 + i) & 0xFFFF for i in range(12)]
    for seq in seqs:
        cache.put(seq, seq.to_bytes(2, "big"))
    for seq in seqs:
        assert cache.get(seq) == seq.to_bytes(2, "big")
    # unwrapped numbers address the same packets
    assert cache.get(65536 + 3) == (3).to_bytes(2, "big")
    cache.put(65536 + 4, b"ext")
    assert cache.get(4) == b"ext"
    # a seq 65536 * k away is the same RTP seq; one 16 away is not
    assert cache.get(65535 - 16) is None


def test_full_ring_of_65536() -> None:
    cache = PacketCache(65536)
    for seq in range(0, 65536, 7):
        cache.put(seq, b"x")
    assert cache.get(7 * 100) == b"x"
    assert cache.get(7 * 100 + 1) is None


def test_clear() -> None:
    cache = PacketCache(4)
    for seq in range(4):
        cache.put(seq, b"x")
    cache.clear()
    assert len(cache) == 0
    assert all(cache.get(s) is None for s in range(4))
    assert cache.capacity == 4
    cache.put(1, b"y")
    assert cache.get(1) == b"y"

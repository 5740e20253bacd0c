"""Tests for spreading the load generator over processes: split, plan, records, merge."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from bench.latency import KIND_AUDIO, KIND_KEYFRAME, Arrivals, SendLedger, classify_sent, key_of
from bench.pool import GeneratorPool
from bench.procs import (
    ProcessFigures,
    Records,
    auto_generators,
    decode_records,
    encode_records,
    predicted_cpu_share,
    split_members,
)
from bench.scenario import RunFigures, _check


def _rtp(pt: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 960, 7) + payload


def test_members_are_dealt_round_robin_and_none_is_lost() -> None:
    split = split_members(7, 3)
    assert split == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(i for part in split for i in part) == list(range(7))
    assert split_members(2, 4) == [[0], [1], [], []]
    with pytest.raises(ValueError, match="at least one"):
        split_members(3, 0)


def test_auto_plans_for_70_percent_per_process_capped_by_free_cores() -> None:
    assert auto_generators(0.2, free_cores=4) == 1
    assert auto_generators(1.5, free_cores=4) == 3  # 1.5 / 0.7 → 3 processes of 50 %
    assert auto_generators(1.5, free_cores=1) == 1  # the server has the other core
    assert auto_generators(0.0, free_cores=0) == 1
    # 1 → 40 fan-out of ~144 pkt/s: ~5,800 received pkt/s, measured at ~40 % of a core
    assert 0.4 < predicted_cpu_share(40 * 144, 144) < 0.5
    with pytest.raises(ValueError):
        auto_generators(-1.0, free_cores=2)


def test_records_survive_the_pipe_and_bad_ones_are_refused() -> None:
    records = Records()
    records.add(2**64 - 1, 12.5, 1200)
    records.add(5, 12.75, -1)
    decoded = decode_records(encode_records(records.take()))
    assert list(decoded.keys) == [2**64 - 1, 5]
    assert list(decoded.times) == [12.5, 12.75]
    assert list(decoded.values) == [1200, -1]
    assert len(records) == 0  # take() empties it
    for bad in ("x", ["a", "b"], ["!!", "", ""], [encode_records(decoded)[0], "", ""]):
        with pytest.raises(ValueError):
            decode_records(bad)


def test_the_payload_key_is_the_same_in_another_process() -> None:
    # hash() of bytes is salted per process; a fixed key is what lets processes agree
    assert key_of(b"payload") == 0x422C6A150BDD02EB
    assert classify_sent(_rtp(111, 1, b"opus"), frozenset(), frozenset({111}), "vp8") == (
        key_of(b"opus"),
        KIND_AUDIO,
    )
    assert classify_sent(_rtp(97, 1, b"rtx"), frozenset({96}), frozenset({111}), "vp8") is None


class _FakeChild:
    """Stands in for one worker: only its position in the pool matters here."""


def _pool_with(replies: list[list[dict[str, Any]]]) -> GeneratorPool:
    """A pool whose workers answer successive polls with ``replies[round][worker]``."""
    pool = GeneratorPool(len(replies[0]))
    rounds = iter(replies)
    pool._children = [_FakeChild() for _ in replies[0]]  # type: ignore[misc]
    current: list[dict[str, Any]] = []

    async def request(child: Any, op: str, **fields: Any) -> dict[str, Any]:
        assert op == "poll"
        index = pool._children.index(child)
        if index == 0:
            current[:] = next(rounds)
        return current[index]

    pool._request = request  # type: ignore[method-assign]
    return pool


def _reply(
    sent: dict[int, Records] | None = None, received: dict[int, Records] | None = None
) -> dict[str, Any]:
    return {
        "sent": {str(m): encode_records(r) for m, r in (sent or {}).items()},
        "received": {str(m): encode_records(r) for m, r in (received or {}).items()},
        "tapped_late": [],
        "nacks_sent": 0,
        "nack_repaired": 0,
        "late_skips": 0,
        "keyframe_requests": 0,
    }


def _records(*rows: tuple[int, float, int]) -> Records:
    records = Records()
    for row in rows:
        records.add(*row)
    return records


def test_merge_counts_every_subscribers_packets_across_processes() -> None:
    """Publisher in process 1, subscribers in processes 1 and 2. Process 2 reports an
    arrival in the same round as (or before) the send it matches: arrivals are held one
    round, so every packet is matched and its latency counted."""
    ledger = SendLedger()
    publisher = ledger.add_publisher({96}, {111})
    ledger.open_window(10.0)
    a, b = Arrivals(ledger), Arrivals(ledger)
    k1, k2, k3 = key_of(b"one"), key_of(b"two"), key_of(b"three")
    pool = _pool_with(
        [
            [  # round 1: worker 2 already has k1 (sent by worker 1 in this same round)
                _reply(
                    sent={0: _records((k1, 10.100, KIND_KEYFRAME))},
                    received={1: _records((k1, 10.101, 1100))},
                ),
                _reply(received={2: _records((k1, 10.102, 1100))}),
            ],
            [  # round 2: worker 2 reports k2 before worker 1 reports sending it
                _reply(),
                _reply(received={2: _records((k2, 10.201, 90), (0, 10.3, 12))}),
            ],
            [  # round 3: worker 1's send record of k2 (and its own subscriber's copy)
                _reply(
                    sent={0: _records((k2, 10.200, KIND_AUDIO))},
                    received={1: _records((k2, 10.2005, 90))},
                ),
                _reply(),
            ],
            [  # final flush: k3 sent after the window closed
                _reply(sent={0: _records((k3, 11.5, KIND_AUDIO))}),
                _reply(received={2: _records((k3, 11.502, 90))}),
            ],
        ]
    )
    pool.publish_into(0, publisher)
    pool._arrivals = {1: a, 2: b}

    async def run() -> None:
        await pool._poll_once()
        await pool._poll_once()
        ledger.close_window(11.0)
        await pool._poll_once()
        await pool.flush()

    asyncio.run(run())
    pool._tmp.cleanup()
    assert ledger.window_sent == [2]
    assert a.packets == 2 and b.packets == 4  # b also got one unparseable packet (key 0)
    assert a.received_from({publisher.index}) == b.received_from({publisher.index}) == 2
    assert b.unmatched == 1
    assert [round(x * 1000, 1) for x in a.latencies_s] == [1.0, 0.5]
    assert [round(x * 1000, 1) for x in b.latencies_s] == [2.0, 1.0]
    assert a.first_keyframe_at == 10.101 and b.first_keyframe_at == 10.102
    assert b.octets == 1100 + 90 + 12 + 90


def test_any_limited_process_flags_the_run() -> None:
    figures = RunFigures("oktorus", "1→40", 40, 41, 1, 40)
    figures.generator_processes = [
        ProcessFigures("coordinator", 1, 0, 0.05, {"p50": 0.1, "p99": 1.0, "max": 2.0}),
        ProcessFigures("generator 1", 2, 20, 0.40, {"p50": 0.3, "p99": 3.0, "max": 5.0}),
        ProcessFigures("generator 2", 3, 21, 0.95, {"p50": 0.3, "p99": 31.0, "max": 40.0}),
    ]
    _check(figures)
    assert figures.generator_limited
    limited = [w for w in figures.warnings if w.startswith("generator-limited")]
    assert limited == [
        "generator-limited: generator 2 (pid 3) used 95% of a core and event-loop lag p99 31.0 ms"
    ]
    calm = RunFigures("oktorus", "1→4", 4, 5, 1, 4)
    calm.generator_processes = figures.generator_processes[:2]
    _check(calm)
    assert not calm.generator_limited


def test_a_lagging_but_idle_process_is_said_to_be_starved() -> None:
    idle = ProcessFigures("generator 1", 2, 20, 0.2, {"p50": 1.0, "p99": 60.0, "max": 90.0})
    assert idle.limits(0.85, 20.0) == [
        "event-loop lag p99 60.0 ms (while mostly idle: held up by other processes)"
    ]

"""Drain state machine: SIGTERM waits for participants or the deadline, SIGINT is faster."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from sfu.drain import Drain
from sfu.stats import Histogram


class FakeServer:
    def __init__(self, participants: int) -> None:
        self.participant_count = participants
        self.draining = False
        self.deadline = 0.0
        self.notified: list[float] = []

    def start_draining(self, deadline_s: float) -> None:
        self.draining = True
        self.deadline = time.monotonic() + deadline_s
        self.notified.append(deadline_s)

    def drain_remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


@pytest.mark.asyncio
async def test_sigterm_waits_for_the_last_participant() -> None:
    server = FakeServer(participants=2)
    drain = Drain(server, deadline_s=30)  # type: ignore[arg-type]
    waiter = asyncio.ensure_future(drain.wait())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # nothing happens before a signal
    drain.on_signal(signal.SIGTERM)
    assert server.notified == [30]
    await asyncio.sleep(0.2)
    assert not waiter.done()
    server.participant_count = 0
    assert await asyncio.wait_for(waiter, 2) == "no participants left"


@pytest.mark.asyncio
async def test_deadline_and_fast_sigint() -> None:
    server = FakeServer(participants=1)
    drain = Drain(server, deadline_s=30, fast_deadline_s=0.3)  # type: ignore[arg-type]
    started = time.monotonic()
    drain.on_signal(signal.SIGINT)
    assert server.notified == [0.3]
    assert await asyncio.wait_for(drain.wait(), 2) == "drain deadline reached"
    assert 0.25 < time.monotonic() - started < 1.5


@pytest.mark.asyncio
async def test_second_signal_stops_at_once() -> None:
    server = FakeServer(participants=1)
    drain = Drain(server, deadline_s=30)  # type: ignore[arg-type]
    drain.on_signal(signal.SIGTERM)
    waiter = asyncio.ensure_future(drain.wait())
    await asyncio.sleep(0.05)
    drain.on_signal(signal.SIGTERM)
    assert (await asyncio.wait_for(waiter, 1)).startswith("second signal")


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.05, 0.05, 0.5, 5.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.01", 1.0), ("0.1", 3.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert hist.total == pytest.approx(5.605)

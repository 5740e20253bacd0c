"""Several generator processes: how members are split, how many processes fit, how their
records travel, and when a process (not the server) was the limit. Pure: unit-tested.

A generator process (:mod:`bench.worker`) hosts some of a run's members (publishers
and/or subscribers). It records, per member, the key and send time of each media packet
it publishes and the key, arrival time and size of each packet it receives; the
coordinator (:mod:`bench.pool`) pulls those records in batches and feeds them into one
:class:`bench.latency.SendLedger` and the members' :class:`bench.latency.Arrivals`, so
latency is matched exactly as in one process (``time.perf_counter`` is CLOCK_MONOTONIC,
one clock for the whole machine).
"""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import percentile

__all__ = [
    "PROCESS_CPU_TARGET",
    "ProcessFigures",
    "Records",
    "auto_generators",
    "decode_records",
    "encode_records",
    "predicted_cpu_share",
    "split_members",
]

PROCESS_CPU_TARGET = 0.7
"""``--generators auto`` plans for no process above this share of a core."""
RECEIVE_US_PER_PACKET = 75.0
"""Generator CPU per received packet (aioice receive + SRTP unprotect + the tap), µs:
measured with ``--generators 1`` (fanout 1→20: 24 % of a core for ~3,000 pkt/s; 1→40:
40 % for ~5,900 pkt/s; publisher included)."""
SEND_US_PER_PACKET = 120.0
STARVED_BELOW = 0.5
"""A lagging process below this CPU share was waiting for a core, not busy itself."""
"""Per sent packet (aiortc packetizer, SRTP protect, aioice send), µs."""


def split_members(count: int, processes: int) -> list[list[int]]:
    """Member indices ``0..count-1`` dealt round-robin over ``processes`` (each gets
    ``count // processes`` or one more); raises ValueError for fewer than one process."""
    if processes < 1:
        raise ValueError(f"at least one generator process, got {processes}")
    if count < 0:
        raise ValueError(f"negative member count {count}")
    return [list(range(p, count, processes)) for p in range(processes)]


def predicted_cpu_share(received_pps: float, sent_pps: float) -> float:
    """Cores the generator is predicted to need for this traffic (one process)."""
    return (received_pps * RECEIVE_US_PER_PACKET + sent_pps * SEND_US_PER_PACKET) / 1e6


def auto_generators(
    predicted_share: float, free_cores: int, target: float = PROCESS_CPU_TARGET
) -> int:
    """Enough processes that none is predicted above ``target`` of a core, capped by the
    cores the server does not use (at least one)."""
    if predicted_share < 0 or target <= 0:
        raise ValueError("the predicted share must be >= 0 and the target > 0")
    wanted = max(1, math.ceil(predicted_share / target))
    return max(1, min(wanted, free_cores))


@dataclass(slots=True)
class Records:
    """Per-packet records of one member: key, time (perf_counter s) and an integer
    (packet size for received packets, kind for sent ones)."""

    keys: array[int] = field(default_factory=lambda: array("Q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    values: array[int] = field(default_factory=lambda: array("l"))

    def add(self, key: int, when: float, value: int) -> None:
        self.keys.append(key)
        self.times.append(when)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self) -> Records:
        """Everything recorded so far; this object starts empty again."""
        taken = Records(self.keys, self.times, self.values)
        self.keys, self.times, self.values = array("Q"), array("d"), array("l")
        return taken


def encode_records(records: Records) -> list[str]:
    """JSON-safe form: three base64 strings of the native arrays (same machine)."""
    return [
        base64.b64encode(records.keys.tobytes()).decode("ascii"),
        base64.b64encode(records.times.tobytes()).decode("ascii"),
        base64.b64encode(records.values.tobytes()).decode("ascii"),
    ]


def decode_records(encoded: Any) -> Records:
    """Inverse of :func:`encode_records`; ValueError if malformed or of unequal lengths."""
    if (
        not isinstance(encoded, list)
        or len(encoded) != 3
        or not all(isinstance(part, str) for part in encoded)
    ):
        raise ValueError("records are a list of three base64 strings")
    records = Records()
    try:
        records.keys.frombytes(base64.b64decode(encoded[0], validate=True))
        records.times.frombytes(base64.b64decode(encoded[1], validate=True))
        records.values.frombytes(base64.b64decode(encoded[2], validate=True))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"malformed records: {exc}") from None
    if not len(records.keys) == len(records.times) == len(records.values):
        raise ValueError("records of unequal lengths")
    return records


@dataclass(slots=True)
class ProcessFigures:
    """One generator process over a run's window."""

    name: str
    pid: int
    members: int
    cpu_share: float = 0.0
    lag_ms: dict[str, float] = field(default_factory=dict)
    udp_drops: int = 0

    def limits(self, cpu_limit: float, lag_p99_limit_ms: float) -> list[str]:
        """Why this process may have been the limit of the run (empty if it was not)."""
        reasons = []
        if self.cpu_share > cpu_limit:
            reasons.append(f"used {self.cpu_share:.0%} of a core")
        p99 = self.lag_ms.get("p99", 0.0)
        if p99 > lag_p99_limit_ms:
            starved = (
                " (while mostly idle: held up by other processes)"
                if (self.cpu_share < STARVED_BELOW)
                else ""
            )
            reasons.append(f"event-loop lag p99 {p99:.1f} ms{starved}")
        return reasons

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "members": self.members,
            "cpu_share": self.cpu_share,
            "loop_lag_ms": self.lag_ms,
            "udp_drops": self.udp_drops,
        }


def lag_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    if not samples_ms:
        return {}
    return {
        "p50": percentile(samples_ms, 50),
        "p99": percentile(samples_ms, 99),
        "max": max(samples_ms),
        "samples": float(len(samples_ms)),
    }

"""Pure logic of ``python -m bench capacity``: one step's figures and when the server is
saturated (no I/O, unit-tested).

A step is R rooms of one publisher and S subscribers each, measured over a window on the
server side. The server is saturated when one of its processes uses ≥ 95 % of a core, when
it drops anything (UDP receive drops of its sockets or its own drop counters), or when it
forwards < 99 % of what it was offered (publishers' RTP received times subscribers per room).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "StepFigures",
    "capacity_summary",
    "saturation_reasons",
    "sum_counter",
]


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_share: float = 0.95
    """Of one core, for any single server process (a worker is one event loop)."""
    forwarded_ratio: float = 0.99


@dataclass(frozen=True, slots=True)
class StepFigures:
    rooms: int
    subscribers: int
    """Subscribers joined over all rooms (each room's publisher goes to each of its own)."""
    window_s: float
    rtp_in: int
    rtp_out: int
    sfu_dropped: int
    """The server's own drop counters (queue full, SRTP, ...) over the window."""
    udp_drops: int
    """UDP receive-buffer drops of the server's sockets over the window."""
    cpu_shares: tuple[float, ...]
    """Per server process (supervisor first with workers), 1.0 = one core."""
    generator_cpu_share: float = 0.0
    unpaused: int = 0
    generator_udp_drops: int = 0
    metrics_s: float = 0.0
    join_lag_max_ms: float = 0.0
    """The generator's worst event-loop lag while the step's room joined (sockets read)."""
    """Slowest /metrics answer of a server process at the window's ends (a busy loop)."""
    """Drops at the paused subscribers' sockets: the forwarded packets the kernel discarded."""
    """Subscribers whose sockets could not be paused (they still read, cheaply)."""

    @property
    def forwarded_pps(self) -> float:
        return self.rtp_out / self.window_s if self.window_s > 0 else 0.0

    @property
    def offered(self) -> float:
        """Packets the server should have forwarded: each received RTP packet times the
        subscribers of its room (every room has the same number)."""
        if self.rooms <= 0:
            return 0.0
        return self.rtp_in * self.subscribers / self.rooms

    @property
    def forwarded_ratio(self) -> float:
        return self.rtp_out / self.offered if self.offered > 0 else 0.0

    @property
    def busiest_cpu_share(self) -> float:
        return max(self.cpu_shares, default=0.0)

    @property
    def server_cpu_share(self) -> float:
        return sum(self.cpu_shares)

    @property
    def us_per_forwarded_packet(self) -> float:
        if self.rtp_out <= 0:
            return 0.0
        return self.server_cpu_share * self.window_s / self.rtp_out * 1e6

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_shares"] = list(self.cpu_shares)
        data.update(
            forwarded_pps=self.forwarded_pps,
            forwarded_ratio=self.forwarded_ratio,
            us_per_forwarded_packet=self.us_per_forwarded_packet,
        )
        return data


DEFAULT_LIMITS = Limits()


def saturation_reasons(step: StepFigures, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Why this step counts as saturated (empty: the server kept up)."""
    reasons = []
    if step.window_s <= 0 or step.rtp_in <= 0:
        return ["no media in the window"]
    if step.busiest_cpu_share >= limits.cpu_share:
        reasons.append(f"a server process at {step.busiest_cpu_share:.0%} of a core")
    if step.udp_drops > 0:
        reasons.append(f"{step.udp_drops} UDP receive drops at the server")
    if step.sfu_dropped > 0:
        reasons.append(f"{step.sfu_dropped} packets dropped by the server")
    if step.forwarded_ratio < limits.forwarded_ratio:
        reasons.append(f"forwarded {step.forwarded_ratio:.1%} of the offered packets")
    return reasons


def _dropped(step: StepFigures) -> bool:
    return step.udp_drops > 0 or step.sfu_dropped > 0


def capacity_summary(
    steps: Sequence[StepFigures], limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """The figures of one server configuration over its steps (in load order).

    ``clean_pps``: the highest forwarded rate of a step before the first saturated one;
    ``before_drops_pps``: the highest before the first step with any drop (issue 5's
    "before it drops any"); ``peak_pps``: the highest of any step.
    """
    clean = 0.0
    before_drops = 0.0
    saturated_at: int | None = None
    dropped_at: int | None = None
    for step in steps:
        if saturated_at is None and saturation_reasons(step, limits):
            saturated_at = step.rooms
        if dropped_at is None and _dropped(step):
            dropped_at = step.rooms
        if saturated_at is None:
            clean = max(clean, step.forwarded_pps)
        if dropped_at is None:
            before_drops = max(before_drops, step.forwarded_pps)
    return {
        "clean_pps": clean,
        "before_drops_pps": before_drops,
        "peak_pps": max((s.forwarded_pps for s in steps), default=0.0),
        "saturated_at_rooms": saturated_at,
        "first_drop_at_rooms": dropped_at,
    }


def sum_counter(samples: Mapping[str, float], metric: str, counter: str) -> int:
    """Sum ``metric{counter="NAME",...}`` over every other label (the supervisor's merged
    /metrics adds a ``worker`` label per worker)."""
    prefix = metric + "{"
    label = f'counter="{counter}"'
    total = 0.0
    for key, value in samples.items():
        if key.startswith(prefix) and label in key[len(prefix) : -1].split(","):
            total += value
    return int(total)

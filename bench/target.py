"""What a scenario needs from the system under test: the target adapter interface.

A scenario only talks to a :class:`Target`: a signalling URL that speaks protocol v1,
access tokens, and process-level figures. ``bench.server.SfuServer`` is the one
implementation today (our server as a child process); another SFU can be benchmarked
in the same harness by writing an adapter with these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["PacketCounters", "Target"]


@dataclass(frozen=True, slots=True)
class PacketCounters:
    """Cumulative media counters of the target (summed over its live peer connections)."""

    rtp_in: int
    rtp_out: int
    rtcp_in: int
    rtcp_out: int
    bytes_out: int
    dropped: int
    """Every packet the target dropped on purpose (queue full, SRTP errors, ...)."""

    @classmethod
    def zero(cls) -> PacketCounters:
        return cls(0, 0, 0, 0, 0, 0)

    def minus(self, before: PacketCounters) -> PacketCounters:
        return PacketCounters(
            self.rtp_in - before.rtp_in,
            self.rtp_out - before.rtp_out,
            self.rtcp_in - before.rtcp_in,
            self.rtcp_out - before.rtcp_out,
            self.bytes_out - before.bytes_out,
            self.dropped - before.dropped,
        )


class Target(Protocol):
    """A media server under test. Scenarios call :meth:`start`, use it, then
    :meth:`aclose` and :meth:`stop` (``start``/``stop`` block: run them in a thread)."""

    def start(self) -> object:
        """Start the server and return once it accepts joins."""
        ...

    def stop(self) -> int | None:
        """Stop it; returns its exit code if it is a process (0 = clean)."""
        ...

    async def aclose(self) -> None:
        """Release resources bound to the event loop (HTTP sessions)."""
        ...

    @property
    def name(self) -> str:
        """Short label for reports, e.g. ``oktorus-sfu``."""
        ...

    @property
    def url(self) -> str:
        """Signalling WebSocket URL (``ws://127.0.0.1:PORT/v1/signal``)."""
        ...

    @property
    def pid(self) -> int:
        """The process whose CPU and memory are measured."""
        ...

    def token(self, room: str, identity: str, grants: Sequence[str]) -> str:
        """An access token for ``identity`` in ``room``."""
        ...

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the target has used so far."""
        ...

    def rss_bytes(self) -> int:
        """The target's resident memory now."""
        ...

    def wakeups(self) -> int:
        """Voluntary context switches of the target's main thread so far (for an event-loop
        server: how often it woke up; packets handled per wake-up = batching)."""
        ...

    async def packet_counters(self) -> PacketCounters:
        """The target's cumulative packet counters now."""
        ...

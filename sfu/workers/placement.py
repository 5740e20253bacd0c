"""Which worker hosts a new room: the least loaded one (pure functions, unit-tested).

Load is what a worker reported in its last load report (about once a second) plus what the
supervisor placed there since, so a burst of new rooms does not all land on the worker that
looked idlest a moment ago. A room stays on its home worker while it lives; placement is only
asked for rooms that have no home yet.

:class:`NodePlacement` is the seam for a cluster: before picking a worker, the supervisor asks
it which node hosts the room (``None``: this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CPU_WEIGHT",
    "LocalNode",
    "NodePlacement",
    "WorkerLoad",
    "choose_worker",
    "load_score",
]

#: One percent of a core counts as much as this many forwarded tracks.
CPU_WEIGHT = 0.5
TRACK_IN_WEIGHT = 2.0  # a published track costs an unprotect per packet plus its fan-out
PARTICIPANT_WEIGHT = 1.0  # peer connections: ICE consent checks, RTCP timers
PLACED_WEIGHT = 4.0  # a room placed since the last report: its participants are coming


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One worker's last reported load, as the supervisor sees it."""

    worker: str
    ready: bool = True
    participants: int = 0
    tracks_in: int = 0
    tracks_out: int = 0
    cpu_percent: float = 0.0
    placed_since_report: int = 0


def load_score(load: WorkerLoad) -> float:
    """Lower is less loaded: CPU, then forwarding work, then peers and fresh placements."""
    return (
        CPU_WEIGHT * load.cpu_percent
        + load.tracks_out
        + TRACK_IN_WEIGHT * load.tracks_in
        + PARTICIPANT_WEIGHT * load.participants
        + PLACED_WEIGHT * load.placed_since_report
    )


def choose_worker(loads: Sequence[WorkerLoad]) -> str | None:
    """The ready worker with the lowest :func:`load_score` (ties: lowest id); None if none."""
    ready = [load for load in loads if load.ready]
    if not ready:
        return None
    return min(ready, key=lambda load: (load_score(load), load.worker)).worker


class NodePlacement(Protocol):
    """Cluster seam: which node hosts ``room`` (claiming it for this node if nobody does)."""

    async def node_for(self, room: str) -> str | None:
        """The signalling URL of the node hosting ``room``, or None when it is this node."""
        ...


class LocalNode:
    """One node: every room is hosted here."""

    async def node_for(self, room: str) -> str | None:
        return None

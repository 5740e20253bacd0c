"""Process-wide statistics for /metrics, read from the live objects at scrape time.

Nothing here runs per packet. The media objects keep plain integer counters; a scrape walks
rooms → participants → transports, producers and consumers and sums them. Counters must
never go down (Prometheus reads a drop as a restart), so when objects leave the graph their
final values are *folded* into :attr:`TrafficArchive.totals`: a leaving participant's objects
are held (still counted) while it closes, then folded; a removed producer and the consumers
that forwarded it are folded at once; an unsubscribed consumer likewise.

Counters the hot path does not keep yet are read with ``getattr`` and simply absent from the
output until they exist (see :func:`contribute`).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from sfu.consumer import Consumer
from sfu.egress import Egress
from sfu.ingress import Ingress
from sfu.producer import Producer
from sfu.transport import MediaTransport

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.rooms import RoomRegistry

__all__ = [
    "Histogram",
    "LoopLagMonitor",
    "ReportHistograms",
    "ServerStats",
    "TrafficArchive",
    "contribute",
    "participant_objects",
]

Key = tuple[str, ...]

RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25)
LOSS_BUCKETS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-output bucket counts (le semantics), like a Prometheus histogram."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.observations += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """[(le, count)] ending with +Inf, as prometheus-client's families want them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(float(bound)), float(running)))
        out.append(("+Inf", float(self.observations)))
        return out


class ReportHistograms:
    """RTT, jitter and loss from subscribers' RTCP receiver reports, by media kind.

    :meth:`observe` is the hook for RTCP report handling (one call per report block). Until
    the media path calls it, :meth:`sample` records each forwarding consumer's latest values
    once per scrape.
    """

    def __init__(self) -> None:
        self.rtt = {k: Histogram(RTT_BUCKETS) for k in ("audio", "video")}
        self.jitter = {k: Histogram(JITTER_BUCKETS) for k in ("audio", "video")}
        self.loss = {k: Histogram(LOSS_BUCKETS) for k in ("audio", "video")}
        self.hooked = False

    def observe(self, kind: str, rtt_s: float | None, jitter_s: float, loss: float) -> None:
        """One report block: ``rtt_s`` (None when unknown), jitter in seconds, loss 0..1."""
        self.hooked = True
        self._record(kind, rtt_s, jitter_s, loss)

    def _record(self, kind: str, rtt_s: float | None, jitter_s: float, loss: float) -> None:
        if kind not in self.rtt:
            return
        if rtt_s is not None:
            self.rtt[kind].observe(rtt_s)
        self.jitter[kind].observe(jitter_s)
        self.loss[kind].observe(loss)

    def sample(self, consumers: Iterable[Any]) -> None:
        if self.hooked:
            return
        for consumer in consumers:
            if consumer.packets == 0:
                continue
            rate = consumer.producer.codec.clock_rate or 90000
            self._record(
                consumer.kind, consumer.rtt_s, consumer.jitter / rate, consumer.fraction_lost / 256
            )


class LoopLagMonitor:
    """How late the event loop runs a timer: the best single signal of an overloaded worker."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(LAG_BUCKETS)
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, loop.time() - expected)
            self.histogram.observe(lag)
            self.max_s = max(self.max_s, lag)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def contribute(obj: object, into: Counter[Key]) -> None:
    """Add one media object's counters to ``into`` (keys: metric name + label values)."""
    if isinstance(obj, Consumer):
        kind = obj.kind
        into["packets", "out", kind, "initial"] += obj.packets
        into["packets", "out", kind, "retransmit"] += obj.retransmitted
        into["payload_bytes", "out", kind, "initial"] += obj.octets
        rtx_octets = getattr(obj, "retransmitted_octets", None)
        if rtx_octets is not None:
            into["payload_bytes", "out", kind, "retransmit"] += rtx_octets
    elif isinstance(obj, Producer):
        kind = obj.kind
        rtx = getattr(obj, "rtx_packets", None)
        into["packets", "in", kind, "initial"] += obj.packets - (rtx or 0)
        if rtx is not None:
            into["packets", "in", kind, "retransmit"] += rtx
        octets = getattr(obj, "octets", None)
        if octets is not None:
            in_rtx_octets: int = getattr(obj, "rtx_octets", 0)
            into["payload_bytes", "in", kind, "initial"] += octets - in_rtx_octets
            into["payload_bytes", "in", kind, "retransmit"] += in_rtx_octets
        into["keyframe_requests", "out", "pli"] += obj.keyframe_requests
        keyframes = getattr(obj, "keyframes", None)
        if keyframes is not None and kind == "video":
            into["keyframes", "in"] += keyframes
    elif isinstance(obj, MediaTransport):
        counters = obj.counters
        for f in fields(counters):
            into["transport", f.name] += getattr(counters, f.name)
    elif isinstance(obj, Ingress):
        into["nacks", "out"] += obj.nacks_sent
    elif isinstance(obj, Egress):
        for attr, key in (
            ("nacks_received", ("nacks", "in")),
            ("plis_received", ("keyframe_requests", "in", "pli")),
            ("firs_received", ("keyframe_requests", "in", "fir")),
        ):
            value = getattr(obj, attr, None)
            if value is not None:
                into[key] += value


def participant_objects(participant: Participant) -> list[object]:
    """Every object of a participant that carries counters."""
    publisher, subscriber = participant.publisher, participant.subscriber
    objects: list[object] = [publisher.ingress, subscriber.egress]
    objects += [t for t in (publisher.transport, subscriber.transport) if t is not None]
    objects += list(publisher.producers.values())
    objects += list(subscriber.consumers.values())
    return objects


class TrafficArchive:
    """Final counter values of objects that left the room graph (see the module doc)."""

    def __init__(self) -> None:
        self.totals: Counter[Key] = Counter()
        self._retired: weakref.WeakSet[object] = weakref.WeakSet()
        self._held: list[list[object]] = []

    def retire(self, *objects: object) -> None:
        """Fold these objects' current values in; they are never counted live again."""
        for obj in objects:
            if obj not in self._retired:
                self._retired.add(obj)
                contribute(obj, self.totals)

    def hold(self, participant: Participant) -> list[object]:
        """Keep counting a leaving participant's objects until :meth:`release`."""
        held = participant_objects(participant)
        self._held.append(held)
        return held

    def release(self, held: list[object]) -> None:
        if held in self._held:
            self._held.remove(held)
        self.retire(*held)

    def snapshot(self, rooms: RoomRegistry) -> Counter[Key]:
        """Totals now: folded values plus every live (or held) object, each counted once."""
        result: Counter[Key] = Counter(self.totals)
        seen: set[int] = set()
        for obj in self._live(rooms):
            if id(obj) in seen or obj in self._retired:
                continue
            seen.add(id(obj))
            contribute(obj, result)
        return result

    def _live(self, rooms: RoomRegistry) -> Iterator[object]:
        for room in rooms.all():
            for participant in list(room.participants.values()):
                yield from participant_objects(participant)
        for held in self._held:
            yield from held


@dataclass(slots=True)
class ServerStats:
    """Everything /metrics reads that is not a live object."""

    traffic: TrafficArchive = field(default_factory=TrafficArchive)
    reports: ReportHistograms = field(default_factory=ReportHistograms)
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    signal_errors: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)

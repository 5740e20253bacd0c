"""``python -m bench capacity``: how many packets/s one node forwards before it saturates.

The usual scenarios cannot load the server that far: an aiortc subscriber costs the
generator ~75 µs of CPU per received packet, more than the server spends forwarding it.
Here subscribers join normally (protocol v1, ICE + DTLS, :mod:`signaling.client`) and then
stop costing anything:

* a datagram hook (:func:`sfu.aiortc_bridge.install_datagram_hook`) drops every RTP/RTCP
  datagram before aiortc sees it, while STUN (consent) and DTLS still go through;
* during the measured window their sockets' transports are paused (``pause_reading``):
  the server's ``sendto`` still succeeds and the kernel drops at the full subscriber
  socket. The window (warm-up + measurement) stays well under the ~30 s after which ICE
  consent would fail; reading resumes after it.

Step by step one more room (1 publisher replaying VP8 + Opus → S subscribers) joins the
same server until it saturates (:mod:`bench.capacity_steps`). Everything is measured on
the server side: ``rtp_out``/``rtp_in`` and drop counters from /metrics (summed over
workers), CPU per process from /proc, UDP receive drops of its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av

from bench.capacity_steps import (
    DEFAULT_LIMITS,
    Limits,
    StepFigures,
    capacity_summary,
    saturation_reasons,
    sum_counter,
)
from bench.media import EncodedClip, ReplayTrack, forward_keyframe_requests
from bench.monitor import LoopLagMonitor
from bench.procfs import drops_between, read_cpu_seconds, read_udp_drops, socket_inodes
from bench.scenario import Clips, progress
from bench.server import SfuServer, grants_for
from bench.stats import parse_prometheus
from sfu import aiortc_bridge as bridge
from signaling.client import Participant

__all__ = ["CapacityRun", "capacity_markdown", "run_capacity", "worker_sockets"]

JOIN_TIMEOUT_S = 20.0
DTLS_TIMEOUT_S = 20.0
TRANSPORT_WAIT_S = 10.0
JOIN_CONCURRENCY = 8
RESUME_SETTLE_S = 1.0
FLOW_SETTLE_S = 2.0  # media back on: every subscriber gets packets before the pause
CLOSE_TIMEOUT_S = 20.0
METRICS_TIMEOUT_S = 30.0
WORKER_SOCKET = re.compile(r"/worker-\d+\.sock$")
MAX_PAUSED_S = 25.0
LOG_LINES = 40  # ICE consent fails after ~30 s without answers
_POLL_S = 0.05
_METRIC = "sfu_transport_packets"
_DROP_COUNTERS = (
    "dropped_empty",
    "dropped_oversize",
    "dropped_foreign",
    "dropped_unready",
    "dropped_srtp",
    "dropped_queue_full",
)


class SilentSubscriber:
    """A joined subscriber whose RTP/RTCP is dropped at its sockets (STUN/DTLS pass)."""

    def __init__(self, participant: Participant) -> None:
        self.participant = participant
        self.transports: set[Any] = set()

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...], transport: Any) -> bool:
        self.transports.add(transport)
        return len(data) > 0 and 128 <= data[0] <= 191  # RTP/RTCP (RFC 7983)

    async def silence(self) -> None:
        """Once DTLS is up, hook the subscribe PC's sockets (bounded wait)."""
        deadline = time.monotonic() + DTLS_TIMEOUT_S
        while True:
            pc = self.participant.subscribe_pc
            dtls = bridge.dtls_transport(pc) if pc is not None else None
            if dtls is not None and dtls.state == "connected":
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the subscribe PC did not connect")
            await asyncio.sleep(_POLL_S)
        bridge.install_datagram_hook(dtls, self._on_datagram)

    def pause(self) -> int:
        """Stop reading this subscriber's sockets; returns how many were paused."""
        paused = 0
        for transport in self.transports:
            if not hasattr(transport, "pause_reading"):
                raise RuntimeError(
                    f"{type(transport).__name__} cannot pause reading (uvloop's UDP "
                    "transports cannot): run on asyncio's default loop"
                )
            if not transport.is_closing():
                transport.pause_reading()
                paused += 1
        return paused

    def resume(self) -> None:
        for transport in self.transports:
            if not transport.is_closing():
                transport.resume_reading()


@dataclass(slots=True)
class CapacityRun:
    workers: int
    subscribers_per_room: int
    publishers_per_room: int = 1
    steps: list[StepFigures] = field(default_factory=list)
    reasons: list[list[str]] = field(default_factory=list)
    join_failures: int = 0
    description: str = ""
    failure: str = ""
    server_log_tail: list[str] = field(default_factory=list)
    limits: Limits = DEFAULT_LIMITS
    """Why the last step could not be measured (empty: every step was)."""

    def summary(self) -> dict[str, Any]:
        return capacity_summary(self.steps, self.limits)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "subscribers_per_room": self.subscribers_per_room,
            "publishers_per_room": self.publishers_per_room,
            "description": self.description,
            "join_failures": self.join_failures,
            "failure": self.failure,
            "server_log_tail": self.server_log_tail,
            "cpu_limit": self.limits.cpu_share,
            "steps": [
                {**s.as_dict(), "saturation": r}
                for s, r in zip(self.steps, self.reasons, strict=True)
            ],
            "summary": self.summary(),
        }


def _server_pids(server: SfuServer) -> list[int]:
    return server._pids()  # the bench's own adapter: server + workers


def _cpu_by_pid(pids: Sequence[int]) -> dict[int, float]:
    readings: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            readings[pid] = read_cpu_seconds(pid)
    return readings


def _udp_drops(pids: Sequence[int]) -> dict[int, int]:
    drops: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            drops.update(read_udp_drops(pid))
    return drops


def worker_sockets(pids: Sequence[int], unix_table: str | None = None) -> list[str]:
    """Paths of the ``worker-N.sock`` unix sockets the server's processes listen on.

    With workers the supervisor's /metrics leaves out a worker that does not answer within
    5 s, so the bench asks each worker itself (on the socket the supervisor uses)."""
    table = unix_table if unix_table is not None else Path("/proc/net/unix").read_text()
    mine: set[int] = set()
    for pid in pids:
        mine |= socket_inodes(pid)
    paths: set[str] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[6]) in mine and WORKER_SOCKET.search(fields[7]):
            paths.add(fields[7])
    return sorted(paths)


async def _scrape(http: aiohttp.ClientSession, url: str, unix: str | None) -> dict[str, float]:
    if unix is None:
        async with http.get(url) as response:
            response.raise_for_status()
            return parse_prometheus(await response.text())
    connector = aiohttp.UnixConnector(path=unix)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=http.timeout) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()
        return parse_prometheus(await response.text())


@dataclass(slots=True)
class Scrape:
    rtp_in: int
    rtp_out: int
    dropped: int
    slowest_s: float


async def _counters(server: SfuServer, http: aiohttp.ClientSession, workers: int) -> Scrape:
    """rtp_in, rtp_out and the drop counters, summed over the worker processes."""
    rtp_in = rtp_out = dropped = 0
    slowest = 0.0
    targets: list[tuple[str, str | None]] = [(server.http_url + "/metrics", None)]
    if workers > 1:
        sockets = worker_sockets(_server_pids(server))
        if len(sockets) != workers:
            raise RuntimeError(f"found {len(sockets)} worker sockets, expected {workers}")
        targets = [("http://worker/metrics", path) for path in sockets]
    for url, unix in targets:
        started = time.perf_counter()
        samples = await _scrape(http, url, unix)
        slowest = max(slowest, time.perf_counter() - started)
        rtp_in += sum_counter(samples, _METRIC, "rtp_in")
        rtp_out += sum_counter(samples, _METRIC, "rtp_out")
        dropped += sum(sum_counter(samples, _METRIC, name) for name in _DROP_COUNTERS)
    return Scrape(rtp_in, rtp_out, dropped, slowest)


class GatedReplayTrack(ReplayTrack):
    """A replay that sends only while ``flowing`` is set: media stops while rooms join, so
    the subscribers that read (between windows) are not flooded and joins stay cheap."""

    def __init__(self, clip: EncodedClip, flowing: asyncio.Event) -> None:
        super().__init__(clip)
        self._flowing = flowing

    async def recv(self) -> av.Packet[Any]:
        await self._flowing.wait()
        return await super().recv()  # late after a stop: the replay skips ahead


async def _join_publisher(
    server: SfuServer, room: str, clips: Clips, index: int, flowing: asyncio.Event
) -> Any:
    """Publishers of a room all go to each of its subscribers (who do not publish)."""
    tracks = [
        GatedReplayTrack(clips.video, flowing),
        GatedReplayTrack(clips.audio_for(index), flowing),
    ]
    peer = await server.join(room, f"pub-{index}", tracks=tracks, subscribe=False)
    pc = peer.publish_pc
    if pc is not None:
        for sender in pc.getSenders():
            track = sender.track
            if isinstance(track, ReplayTrack) and track.kind == "video":
                forward_keyframe_requests(sender, track.request_keyframe)
    return peer


async def _join_subscriber(
    server: SfuServer, room: str, identity: str, gate: asyncio.Semaphore
) -> SilentSubscriber:
    async with gate:
        token = server.token(room, identity, grants_for(False, True))
        participant = await Participant.join(
            server.url, token, timeout=JOIN_TIMEOUT_S, renack=False
        )
        subscriber = SilentSubscriber(participant)
        try:
            await subscriber.silence()
        except BaseException:
            await participant.close()
            raise
        return subscriber


async def _wait_transports(subscribers: Sequence[SilentSubscriber]) -> None:
    deadline = time.monotonic() + TRANSPORT_WAIT_S
    while any(not s.transports for s in subscribers) and time.monotonic() < deadline:
        await asyncio.sleep(_POLL_S)


async def _measure(
    lag: LoopLagMonitor,
    server: SfuServer,
    http: aiohttp.ClientSession,
    workers: int,
    rooms: int,
    subscribers: Sequence[SilentSubscriber],
    warmup_s: float,
    window_s: float,
) -> StepFigures:
    await _wait_transports(subscribers)
    join_lag = max(lag.samples_ms, default=0.0)
    unpaused = sum(1 for s in subscribers if s.pause() == 0)
    try:
        await asyncio.sleep(warmup_s)
        pids = _server_pids(server)
        cpu0, drops0, gen0 = _cpu_by_pid(pids), _udp_drops(pids), read_cpu_seconds()
        mine0 = read_udp_drops()
        first = await _counters(server, http, workers)
        started = time.perf_counter()
        await asyncio.sleep(window_s)
        last = await _counters(server, http, workers)
        elapsed = time.perf_counter() - started
        cpu1, drops1, gen1 = _cpu_by_pid(pids), _udp_drops(pids), read_cpu_seconds()
        mine1 = read_udp_drops()
    finally:
        for subscriber in subscribers:
            subscriber.resume()
    return StepFigures(
        rooms=rooms,
        subscribers=len(subscribers),
        window_s=elapsed,
        rtp_in=last.rtp_in - first.rtp_in,
        rtp_out=last.rtp_out - first.rtp_out,
        sfu_dropped=last.dropped - first.dropped,
        udp_drops=drops_between(drops0, drops1),
        cpu_shares=tuple(
            (cpu1[pid] - cpu0[pid]) / elapsed for pid in pids if pid in cpu0 and pid in cpu1
        ),
        generator_cpu_share=(gen1 - gen0) / elapsed,
        unpaused=unpaused,
        generator_udp_drops=drops_between(mine0, mine1),
        metrics_s=max(first.slowest_s, last.slowest_s),
        join_lag_max_ms=join_lag,
    )


async def _close_all(peers: Sequence[Any], subscribers: Sequence[SilentSubscriber]) -> None:
    closers = [p.close() for p in peers] + [s.participant.close() for s in subscribers]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await asyncio.gather(*closers, return_exceptions=True)


async def run_capacity(
    workers: int,
    clips: Clips,
    *,
    subscribers_per_room: int,
    publishers_per_room: int = 1,
    max_rooms: int,
    warmup_s: float,
    window_s: float,
    limits: Limits = DEFAULT_LIMITS,
) -> CapacityRun:
    """Add rooms one at a time to one server with ``workers`` workers until it saturates
    (or ``max_rooms``)."""
    if warmup_s + window_s > MAX_PAUSED_S:
        raise ValueError(f"warm-up + window must stay under {MAX_PAUSED_S:g} s (ICE consent)")
    run = CapacityRun(workers, subscribers_per_room, publishers_per_room, limits=limits)
    server = SfuServer(extra_args=["--workers", str(workers)])
    await asyncio.to_thread(server.start)
    publishers: list[Any] = []
    subscribers: list[SilentSubscriber] = []
    gate = asyncio.Semaphore(JOIN_CONCURRENCY)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT_S))
    lag = LoopLagMonitor()
    lag.start()
    flowing = asyncio.Event()
    try:
        run.description = server.description
        for rooms in range(1, max_rooms + 1):
            room = f"cap-{uuid.uuid4().hex[:8]}"
            lag.reset()
            for index in range(publishers_per_room):
                voice = (rooms - 1) * publishers_per_room + index
                publishers.append(await _join_publisher(server, room, clips, voice, flowing))
            results = await asyncio.gather(
                *(
                    _join_subscriber(server, room, f"sub-{rooms}-{i}", gate)
                    for i in range(subscribers_per_room)
                ),
                return_exceptions=True,
            )
            joined = [r for r in results if isinstance(r, SilentSubscriber)]
            failed = [r for r in results if not isinstance(r, SilentSubscriber)]
            run.join_failures += len(failed)
            subscribers.extend(joined)
            if failed:
                progress(
                    f"workers={workers} room {rooms}: {len(failed)} joins failed "
                    f"(first: {failed[0]!r})"
                )
            flowing.set()
            await asyncio.sleep(FLOW_SETTLE_S)
            try:
                step = await _measure(
                    lag, server, http, workers, rooms, subscribers, warmup_s, window_s
                )
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                run.failure = f"rooms={rooms}: {type(exc).__name__}: {exc}"
                progress(f"workers={workers} step failed: {run.failure}")
                break
            reasons = saturation_reasons(step, limits)
            run.steps.append(step)
            run.reasons.append(reasons)
            progress(
                f"workers={workers} rooms={rooms} subs={step.subscribers}: "
                f"{step.forwarded_pps:,.0f} fwd pkt/s, {step.forwarded_ratio:.1%} of offered, "
                f"CPU {', '.join(f'{c:.0%}' for c in step.cpu_shares)}, "
                f"udp drops {step.udp_drops}, sfu drops {step.sfu_dropped}, "
                f"join lag max {step.join_lag_max_ms:.0f} ms, "
                f"/metrics {step.metrics_s:.1f} s, generator {step.generator_cpu_share:.0%} "
                f"(its sockets dropped "
                f"{step.generator_udp_drops})"
                + (f" → saturated: {'; '.join(reasons)}" if reasons else "")
            )
            flowing.clear()
            if reasons:
                break
            await asyncio.sleep(RESUME_SETTLE_S)
    finally:
        run.server_log_tail = [line.rstrip() for line in list(server.log_tail)[-LOG_LINES:]]
        await lag.stop()
        await _close_all(publishers, subscribers)
        await http.close()
        await server.aclose()
        await asyncio.to_thread(server.stop)
    return run


def capacity_markdown(runs: Sequence[CapacityRun], command: str) -> str:
    lines = [f"# capacity\n\n`{command}`\n"]
    for run in runs:
        lines.append(
            f"\n## --workers {run.workers}: rooms of {run.publishers_per_room} publisher(s) → "
            f"{run.subscribers_per_room} subscribers ({run.description})\n"
        )
        lines.append(
            "| rooms | subscribers | fwd pkt/s | fwd/offered | server CPU per process "
            "| µs/fwd pkt | UDP drops | SFU drops | generator CPU | saturated |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for step, reasons in zip(run.steps, run.reasons, strict=True):
            cpus = " + ".join(f"{c:.0%}" for c in step.cpu_shares)
            lines.append(
                f"| {step.rooms} | {step.subscribers} | {step.forwarded_pps:,.0f} "
                f"| {step.forwarded_ratio:.1%} | {cpus} | {step.us_per_forwarded_packet:.1f} "
                f"| {step.udp_drops} | {step.sfu_dropped} | {step.generator_cpu_share:.0%} "
                f"| {'; '.join(reasons) or 'no'} |"
            )
        summary = run.summary()
        lines.append(
            f"\nmax before saturation: **{summary['clean_pps']:,.0f}** fwd pkt/s; "
            f"before any drop: {summary['before_drops_pps']:,.0f}; "
            f"peak: {summary['peak_pps']:,.0f}; join failures: {run.join_failures}"
        )
        if run.failure:
            lines.append(f"\n⚠ step not measured: {run.failure}")
    by_workers = {run.workers: run.summary()["peak_pps"] for run in runs}
    if 1 in by_workers and len(by_workers) > 1 and by_workers[1] > 0:
        for workers, peak in sorted(by_workers.items()):
            if workers != 1:
                lines.append(
                    f"\npeak ratio --workers {workers} / --workers 1: "
                    f"**{peak / by_workers[1]:.2f}x**"
                )
    return "\n".join(lines) + "\n"

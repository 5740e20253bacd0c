"""Scenario ``join-storm``: subscribers join a publishing room at a fixed rate.

One publisher (VP8 + Opus, as in fanout) is in the room; then ``joins`` subscribers
start joining, one every ``1 / rate`` seconds, each its own task (a slow join does not
hold back the next). For each: join → first RTP packet, → first media packet matched to
the publisher, → first packet of a video keyframe (what a new viewer waits for before
a picture). A new subscriber needs a keyframe: the SFU either forwards one it asks the
publisher for (PLI, throttled per producer by both servers) or, Janus, forwards from
the next packet on, whatever it is. The target's CPU over the storm is reported too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.latency import Arrivals, SendLedger
from bench.media import ReplayTrack, forward_keyframe_requests
from bench.monitor import LoopLagMonitor, ProcessCpu
from bench.scenario import (
    JOIN_TIMEOUT_S,
    MEDIA_TIMEOUT_S,
    Clips,
    finish_run,
    progress,
    publisher_tap_for,
)
from bench.stats import percentile
from bench.target import Peer, Target
from sfu import aiortc_bridge as bridge

__all__ = ["JoinStormFigures", "run_join_storm"]


@dataclass(slots=True)
class JoinStormFigures:
    target: str
    rate: float
    joins: int
    description: str = ""
    joined: int = 0
    failed: list[str] = field(default_factory=list)
    first_rtp_ms: list[float] = field(default_factory=list)
    first_media_ms: list[float] = field(default_factory=list)
    first_keyframe_ms: list[float] = field(default_factory=list)
    signalling_ms: list[float] = field(default_factory=list)
    """join() call → it returned (signalling and negotiation, before media)."""
    storm_s: float = 0.0
    server_cpu_s: float = 0.0
    server_rss_idle_bytes: int = 0
    server_rss_bytes: int = 0
    generator_cpu_share: float = 0.0
    loop_lag_p99_ms: float = 0.0
    publisher_keyframe_requests: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self, values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {
            "p50": percentile(values, 50), "p90": percentile(values, 90),
            "max": max(values), "n": float(len(values)),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "description": self.description, "rate_per_s": self.rate,
            "joins": self.joins, "joined": self.joined, "failed": self.failed,
            "join_to_first_rtp_ms": self.first_rtp_ms,
            "join_to_first_media_ms": self.first_media_ms,
            "join_to_first_keyframe_ms": self.first_keyframe_ms,
            "join_call_ms": self.signalling_ms,
            "summary": {
                "first_rtp": self.summary(self.first_rtp_ms),
                "first_keyframe": self.summary(self.first_keyframe_ms),
                "join_call": self.summary(self.signalling_ms),
            },
            "storm_s": self.storm_s, "server_cpu_s": self.server_cpu_s,
            "server_rss_idle_bytes": self.server_rss_idle_bytes,
            "server_rss_bytes": self.server_rss_bytes,
            "generator_cpu_share": self.generator_cpu_share,
            "generator_loop_lag_p99_ms": self.loop_lag_p99_ms,
            "publisher_keyframe_requests": self.publisher_keyframe_requests,
            "warnings": self.warnings,
        }


@dataclass(slots=True)
class _Joiner:
    started: float
    arrivals: Arrivals
    joined_at: float | None = None
    peer: Peer | None = None


async def run_join_storm(
    target: Target, clips: Clips, rate: float, joins: int, settle_s: float = 2.0
) -> JoinStormFigures:
    figures = JoinStormFigures(target.name, rate, joins)
    tag = f"{target.name} join-storm"
    progress(f"{tag}: starting the server")
    await asyncio.to_thread(target.start)
    figures.description = target.description
    progress(f"{tag}: pid {target.pid}; {figures.description}")
    lag = LoopLagMonitor()
    lag.start()
    peers: list[Peer] = []
    tracks = [ReplayTrack(clips.video), ReplayTrack(clips.audio_for(0))]
    try:
        with target.network():
            bridge.restrict_host_addresses(target.host_addresses)
            await _storm(target, clips, rate, joins, settle_s, figures, lag, peers, tracks, tag)
    finally:
        await finish_run(target, lag, peers, tracks, figures.warnings)
    return figures


async def _storm(
    target: Target, clips: Clips, rate: float, joins: int, settle_s: float,
    figures: JoinStormFigures, lag: LoopLagMonitor, peers: list[Peer],
    tracks: list[ReplayTrack], tag: str,
) -> None:
    figures.server_rss_idle_bytes = target.rss_bytes()
    room = f"bench-{uuid.uuid4().hex[:8]}"
    await target.open_room(room, 1)
    ledger = SendLedger()
    publisher = await target.join(
        room, "publisher", tracks=list(tracks), subscribe=False, timeout=JOIN_TIMEOUT_S
    )
    peers.append(publisher)
    assert publisher.publish_pc is not None
    bridge.tap_sent_rtp(publisher.publish_pc, publisher_tap_for(publisher.publish_pc, ledger))
    video = tracks[0]
    for sender in publisher.publish_pc.getSenders():
        if sender.track is video:
            forward_keyframe_requests(sender, video.request_keyframe)
    deadline = time.monotonic() + MEDIA_TIMEOUT_S
    while not any(ledger.sent.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle_s)  # the publisher's first keyframe request storm is over

    progress(f"{tag}: {joins} joins at {rate:g}/s")
    joiners: list[_Joiner] = []
    tasks: list[asyncio.Task[None]] = []
    generator = ProcessCpu()
    cpu_before = target.cpu_seconds()
    lag.reset()
    started = time.perf_counter()

    async def join_one(index: int, joiner: _Joiner) -> None:
        try:
            joiner.peer = await target.join(
                room, f"storm-{index}", subscribe=True, tap=joiner.arrivals,
                timeout=JOIN_TIMEOUT_S,
            )
            joiner.joined_at = time.perf_counter()
            peers.append(joiner.peer)
        except Exception as exc:  # noqa: BLE001 - a failed join is a figure, not a crash
            figures.failed.append(f"storm-{index}: {exc!r}")

    for i in range(joins):
        wake = started + i / rate
        if (delay := wake - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        joiner = _Joiner(time.perf_counter(), Arrivals(ledger))
        joiners.append(joiner)
        tasks.append(asyncio.get_running_loop().create_task(join_one(i, joiner)))
        if (i + 1) % max(1, int(rate) * 2) == 0:
            progress(f"{tag}: {i + 1}/{joins} joins started")
    await asyncio.gather(*tasks)
    wait_until = time.monotonic() + MEDIA_TIMEOUT_S
    while time.monotonic() < wait_until:
        if all(j.arrivals.first_keyframe_at is not None for j in joiners if j.peer is not None):
            break
        await asyncio.sleep(0.05)
    figures.storm_s = time.perf_counter() - started
    figures.server_cpu_s = target.cpu_seconds() - cpu_before
    figures.server_rss_bytes = target.rss_bytes()
    figures.generator_cpu_share = generator.share()
    if lag.samples_ms:
        figures.loop_lag_p99_ms = percentile(lag.samples_ms, 99)
    figures.publisher_keyframe_requests = video.keyframe_requests
    for j in joiners:
        if j.peer is None:
            continue
        figures.joined += 1
        a = j.arrivals
        if j.joined_at is not None:
            figures.signalling_ms.append((j.joined_at - j.started) * 1000)
        if a.first_rtp_at is not None:
            figures.first_rtp_ms.append((a.first_rtp_at - j.started) * 1000)
        if a.first_media_at is not None:
            figures.first_media_ms.append((a.first_media_at - j.started) * 1000)
        if a.first_keyframe_at is not None:
            figures.first_keyframe_ms.append((a.first_keyframe_at - j.started) * 1000)
    missing = figures.joined - len(figures.first_keyframe_ms)
    if missing:
        figures.warnings.append(
            f"{missing} subscriber(s) saw no keyframe within {MEDIA_TIMEOUT_S:g} s"
        )
    if figures.failed:
        figures.warnings.append(f"{len(figures.failed)} join(s) failed: {figures.failed[0]}")

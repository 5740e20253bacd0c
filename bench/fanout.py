"""Scenario ``fanout``: one publisher (VP8 + Opus) → N subscribers in one room.

For each N, on a fresh target:

1. the publisher joins and publishes a pre-encoded clip (see :mod:`bench.media`);
2. N subscribers join at once; each counts the RTP it receives and never decodes;
3. after every subscriber has seen video, a warm-up, then a steady-state window in which
   the target's CPU time and packet counters are read at both ends;
4. then, outside the window, a decoding probe subscriber joins ``probes`` times:
   ``join()`` → first decoded video frame.

The marginal cost across the N values is the slope of the target's CPU seconds per
second against forwarded packets per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.clients import CountingSubscriber, join_counting_subscriber, probe_first_frame
from bench.media import EncodedClip, ReplayTrack, forward_keyframe_requests
from bench.monitor import LoopLagMonitor, ProcessCpu
from bench.server import SfuServer
from bench.stats import linear_fit, percentile
from bench.target import PacketCounters, Target
from signaling.client import Participant

__all__ = ["FanoutOptions", "FanoutResult", "FanoutRun", "Marginal", "marginal_cost", "run_fanout"]

JOIN_TIMEOUT_S = 10.0
MEDIA_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 10.0
PROBE_GAP_S = 0.6  # > the server's 500 ms PLI throttle, so each probe gets its own keyframe
CLOSE_TIMEOUT_S = 10.0
RUN_SLACK_S = 120.0  # joins, probes, start and stop: each bounded on its own too
GENERATOR_CPU_LIMIT = 0.85
LAG_P99_LIMIT_MS = 20.0
COUNT_MISMATCH_LIMIT = 0.02
SLOW_FIRST_VIDEO_MS = 1000.0


@dataclass(frozen=True, slots=True)
class FanoutOptions:
    subscribers: tuple[int, ...]
    duration_s: float = 10.0
    warmup_s: float = 3.0
    probes: int = 5


@dataclass(frozen=True, slots=True)
class Clips:
    video: EncodedClip
    audio: EncodedClip


@dataclass(slots=True)
class FanoutRun:
    """Figures of one N. Counts are deltas over the measurement window."""

    subscribers: int
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    server_wakeups: int = 0
    server: PacketCounters = field(default_factory=PacketCounters.zero)
    subscriber_packets: int = 0
    subscriber_bytes: int = 0
    server_rss_idle_bytes: int = 0
    server_rss_bytes: int = 0
    generator_cpu_share: float = 0.0
    loop_lag_ms: dict[str, float] = field(default_factory=dict)
    join_first_video_packet_ms: list[float] = field(default_factory=list)
    probe_first_frame_ms: list[float] = field(default_factory=list)
    publisher_keyframe_requests: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def server_cpu_share(self) -> float:
        return self.server_cpu_s / self.window_s if self.window_s else 0.0

    @property
    def forwarded_pps(self) -> float:
        return self.server.rtp_out / self.window_s if self.window_s else 0.0

    @property
    def incoming_pps(self) -> float:
        return self.server.rtp_in / self.window_s if self.window_s else 0.0

    @property
    def forwarded_mbps(self) -> float:
        """SRTP bytes the server sent (no UDP/IP headers), in Mbit/s."""
        return self.server.bytes_out * 8 / self.window_s / 1e6 if self.window_s else 0.0

    @property
    def cpu_us_per_forwarded(self) -> float | None:
        return self.server_cpu_s * 1e6 / self.server.rtp_out if self.server.rtp_out else None

    @property
    def wakeups_per_s(self) -> float:
        return self.server_wakeups / self.window_s if self.window_s else 0.0

    @property
    def cpu_us_per_wakeup(self) -> float | None:
        return self.server_cpu_s * 1e6 / self.server_wakeups if self.server_wakeups else None

    @property
    def cpu_us_per_incoming(self) -> float | None:
        return self.server_cpu_s * 1e6 / self.server.rtp_in if self.server.rtp_in else None

    @property
    def counted_ratio(self) -> float | None:
        """Packets the subscribers counted / packets the server says it sent."""
        return self.subscriber_packets / self.server.rtp_out if self.server.rtp_out else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "subscribers": self.subscribers,
            "window_s": self.window_s,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_share": self.server_cpu_share,
            "server_packets": {
                "rtp_in": self.server.rtp_in, "rtp_out": self.server.rtp_out,
                "rtcp_in": self.server.rtcp_in, "rtcp_out": self.server.rtcp_out,
                "bytes_out": self.server.bytes_out, "dropped": self.server.dropped,
            },
            "forwarded_pps": self.forwarded_pps,
            "incoming_pps": self.incoming_pps,
            "forwarded_mbps": self.forwarded_mbps,
            "cpu_us_per_forwarded_packet": self.cpu_us_per_forwarded,
            "cpu_us_per_incoming_packet": self.cpu_us_per_incoming,
            "server_wakeups": self.server_wakeups,
            "server_wakeups_per_s": self.wakeups_per_s,
            "cpu_us_per_wakeup": self.cpu_us_per_wakeup,
            "subscriber_packets": self.subscriber_packets,
            "subscriber_bytes": self.subscriber_bytes,
            "subscriber_counted_ratio": self.counted_ratio,
            "server_rss_idle_bytes": self.server_rss_idle_bytes,
            "server_rss_bytes": self.server_rss_bytes,
            "generator_cpu_share": self.generator_cpu_share,
            "generator_loop_lag_ms": self.loop_lag_ms,
            "join_to_first_video_packet_ms": self.join_first_video_packet_ms,
            "join_to_first_decoded_frame_ms": self.probe_first_frame_ms,
            "publisher_keyframe_requests": self.publisher_keyframe_requests,
            "warnings": self.warnings,
        }


@dataclass(frozen=True, slots=True)
class Marginal:
    """Least-squares fit of target CPU share against load over the runs."""

    us_per_forwarded_packet: float
    fixed_cpu_share: float
    """Intercept: CPU share at zero forwarded packets (ingest, timers, idle)."""
    cpu_ms_per_s_per_subscriber: float


def marginal_cost(runs: Sequence[FanoutRun]) -> Marginal | None:
    """None unless at least two runs with different forwarded rates."""
    usable = [r for r in runs if r.window_s > 0]
    if len({r.subscribers for r in usable}) < 2:
        return None
    slope, intercept = linear_fit(
        [r.forwarded_pps for r in usable], [r.server_cpu_share for r in usable]
    )
    per_subscriber, _ = linear_fit(
        [float(r.subscribers) for r in usable], [r.server_cpu_share for r in usable]
    )
    return Marginal(slope * 1e6, intercept, per_subscriber * 1e3)


@dataclass(slots=True)
class FanoutResult:
    target: str
    options: FanoutOptions
    clips: Clips
    runs: list[FanoutRun]

    @property
    def marginal(self) -> Marginal | None:
        return marginal_cost(self.runs)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def run_fanout(
    options: FanoutOptions, clips: Clips, make_target: Callable[[], Target] = SfuServer
) -> FanoutResult:
    """Run every N in ``options.subscribers``, each on a fresh target from ``make_target``."""
    runs = []
    name = ""
    for n in options.subscribers:
        target = make_target()
        name = target.name
        async with asyncio.timeout(options.warmup_s + options.duration_s + RUN_SLACK_S):
            runs.append(await _run_once(n, options, clips, target))
    return FanoutResult(name, options, clips, runs)


async def _run_once(
    n: int, options: FanoutOptions, clips: Clips, target: Target
) -> FanoutRun:
    run = FanoutRun(subscribers=n)
    _progress(f"N={n}: starting the server")
    await asyncio.to_thread(target.start)
    _progress(f"N={n}: server pid {target.pid}, {target.url}")
    lag = LoopLagMonitor()
    lag.start()
    publisher: Participant | None = None
    subscribers: list[CountingSubscriber] = []
    video = ReplayTrack(clips.video)
    audio = ReplayTrack(clips.audio)
    try:
        run.server_rss_idle_bytes = target.rss_bytes()
        room = f"bench-{uuid.uuid4().hex[:8]}"
        publisher = await Participant.join(
            target.url, target.token(room, "publisher", ["publish"]), timeout=JOIN_TIMEOUT_S
        )
        video_id, _audio_id = await publisher.publish([video, audio])
        assert publisher.publish_pc is not None
        sender = next(s for s in publisher.publish_pc.getSenders() if s.track is video)
        forward_keyframe_requests(sender, video.request_keyframe)

        _progress(f"N={n}: {n} subscriber(s) joining")
        subscribers = await _join_all(target, room, n)
        await _wait_for_video(subscribers, run)
        late = sum(s.tapped_late for s in subscribers)
        if late:
            run.warnings.append(f"{late} subscriber tap(s) went in after DTLS was up")
        run.join_first_video_packet_ms = [
            (first - s.join_started) * 1000.0
            for s in subscribers
            if (first := s.first_video_at()) is not None
        ]
        slow = sum(ms > SLOW_FIRST_VIDEO_MS for ms in run.join_first_video_packet_ms)
        if slow:
            run.warnings.append(
                f"{slow} of {n} subscriber(s) got their first video packet more than "
                f"{SLOW_FIRST_VIDEO_MS / 1000:g} s after joining; the publisher had heard "
                f"{video.keyframe_requests} keyframe request(s), so they probably waited for "
                f"the clip's next loop keyframe (every {clips.video.duration_s:g} s)"
            )

        _progress(f"N={n}: warm-up {options.warmup_s:g} s, then {options.duration_s:g} s measured")
        await asyncio.sleep(options.warmup_s)
        await _measure(target, subscribers, options.duration_s, lag, run)

        _progress(f"N={n}: {options.probes} join→first-frame probe(s)")
        for i in range(options.probes):
            token = target.token(room, f"probe-{i}", ["subscribe"])
            try:
                ms = await probe_first_frame(target.url, token, video_id, PROBE_TIMEOUT_S)
                run.probe_first_frame_ms.append(ms)
            except TimeoutError:
                run.warnings.append(f"probe {i}: no decoded frame within {PROBE_TIMEOUT_S:g} s")
            except Exception as exc:  # noqa: BLE001 - one failed probe is reported, not fatal
                run.warnings.append(f"probe {i} failed: {exc!r}")
            await asyncio.sleep(PROBE_GAP_S)
        run.publisher_keyframe_requests = video.keyframe_requests
        if video.keyframe_requests == 0 and (n or options.probes):
            run.warnings.append(
                "the publisher heard no keyframe request: is the PLI hook "
                "(bench.media.forward_keyframe_requests) still working?"
            )
        _check(run)
    finally:
        await lag.stop()
        await _close_all([s.participant for s in subscribers], publisher)
        video.stop()
        audio.stop()
        await target.aclose()
        code = await asyncio.to_thread(target.stop)
        if code not in (0, None):
            run.warnings.append(f"the server exited with code {code}")
    return run


async def _join_all(target: Target, room: str, n: int) -> list[CountingSubscriber]:
    results = await asyncio.gather(
        *(
            join_counting_subscriber(
                target.url, target.token(room, f"sub-{i}", ["subscribe"]), JOIN_TIMEOUT_S
            )
            for i in range(n)
        ),
        return_exceptions=True,
    )
    joined = [r for r in results if isinstance(r, CountingSubscriber)]
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await _close_all([s.participant for s in joined], None)
        raise RuntimeError(f"{len(failed)} of {n} subscribers failed to join") from failed[0]
    return joined


async def _wait_for_video(subscribers: Sequence[CountingSubscriber], run: FanoutRun) -> None:
    deadline = time.monotonic() + MEDIA_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(s.first_video_at() is not None for s in subscribers):
            return
        await asyncio.sleep(0.05)
    missing = sum(s.first_video_at() is None for s in subscribers)
    run.warnings.append(f"{missing} subscriber(s) had no video after {MEDIA_TIMEOUT_S:g} s")


async def _measure(
    target: Target,
    subscribers: Sequence[CountingSubscriber],
    duration_s: float,
    lag: LoopLagMonitor,
    run: FanoutRun,
) -> None:
    generator = ProcessCpu()
    counters_before = await target.packet_counters()
    cpu_before = target.cpu_seconds()
    wakeups_before = target.wakeups()
    started = time.perf_counter()
    packets_before = sum(s.counter.packets for s in subscribers)
    bytes_before = sum(s.counter.octets for s in subscribers)
    generator.reset()
    lag.reset()

    await asyncio.sleep(duration_s)

    packets_after = sum(s.counter.packets for s in subscribers)
    bytes_after = sum(s.counter.octets for s in subscribers)
    ended = time.perf_counter()
    cpu_after = target.cpu_seconds()
    wakeups_after = target.wakeups()
    counters_after = await target.packet_counters()
    run.generator_cpu_share = generator.share()
    samples = list(lag.samples_ms)

    run.window_s = ended - started
    run.server_cpu_s = cpu_after - cpu_before
    run.server_wakeups = wakeups_after - wakeups_before
    run.server = counters_after.minus(counters_before)
    run.subscriber_packets = packets_after - packets_before
    run.subscriber_bytes = bytes_after - bytes_before
    run.server_rss_bytes = target.rss_bytes()
    if samples:
        run.loop_lag_ms = {
            "p50": percentile(samples, 50), "p99": percentile(samples, 99),
            "max": max(samples), "samples": float(len(samples)),
        }


def _check(run: FanoutRun) -> None:
    if run.generator_cpu_share > GENERATOR_CPU_LIMIT:
        run.warnings.append(
            f"the generator used {run.generator_cpu_share:.0%} of a core: "
            "it may be the bottleneck"
        )
    p99 = run.loop_lag_ms.get("p99", 0.0)
    if p99 > LAG_P99_LIMIT_MS:
        run.warnings.append(f"generator event-loop lag p99 {p99:.1f} ms > {LAG_P99_LIMIT_MS:g} ms")
    ratio = run.counted_ratio
    if ratio is not None and abs(ratio - 1.0) > COUNT_MISMATCH_LIMIT:
        run.warnings.append(
            f"subscribers counted {run.subscriber_packets} packets, the server reports "
            f"{run.server.rtp_out} sent ({ratio:.1%})"
        )
    if run.server.dropped:
        run.warnings.append(f"the server dropped {run.server.dropped} packets in the window")


async def _close_all(participants: Sequence[Participant], publisher: Participant | None) -> None:
    everyone = [*participants, *([publisher] if publisher is not None else [])]
    if not everyone:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(p.close() for p in everyone), return_exceptions=True),
            CLOSE_TIMEOUT_S,
        )

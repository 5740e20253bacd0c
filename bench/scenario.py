"""One measured run of rooms of participants on one target: the engine of every scenario.

A :class:`Layout` says who is in which room and what each one publishes and receives
(fanout: one publisher and N receivers; meeting: N who both publish and receive; audio
rooms: R rooms of P such participants, Opus only). :func:`run_layout`, on a fresh target:

1. starts it (and enters its network: loopback, or the bench's namespace for Janus);
2. joins the publishers, then the receivers (bounded concurrency), each with a counting
   tap that never decodes; the publishers' sent packets go into a :class:`SendLedger`;
3. waits until every receiver has media from every publisher it expects, warms up, then
   measures a steady-state window: the target's CPU (``/proc/PID/stat``, all threads),
   packets, RSS, UDP receive drops of its sockets and of the generator's, and, per
   received packet, the SFU-added latency (see :mod:`bench.latency`);
4. optionally runs join → first decoded frame probes outside the window;
5. closes everything and stops the target by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection

from bench.impairments import LinkRule, impairments_for
from bench.latency import Arrivals, SendLedger, media_payload_types
from bench.media import EncodedClip, ReplayTrack, forward_keyframe_requests
from bench.monitor import LoopLagMonitor, ProcessCpu
from bench.pool import GeneratorPool
from bench.procfs import (
    clock_ticks_per_second,
    drops_between,
    read_cpu_seconds,
    read_machine_busy,
    read_softnet_dropped,
    read_udp_drops,
)
from bench.procs import ProcessFigures, auto_generators, lag_summary, predicted_cpu_share
from bench.server import SfuServer, grants_for
from bench.stats import percentile
from bench.target import PacketCounters, Peer, Target
from sfu import aiortc_bridge as bridge
from signaling.client.impair import Impairment

__all__ = [
    "Clips",
    "Layout",
    "MemberSpec",
    "RunFigures",
    "RunOptions",
    "close_peers",
    "latency_summary",
    "progress",
    "run_layout",
]

JOIN_TIMEOUT_S = 15.0
MEDIA_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 10.0
PROBE_GAP_S = 0.6  # > the 500 ms PLI throttles, so each probe gets its own keyframe
CLOSE_TIMEOUT_S = 10.0
DRAIN_S = 2.0  # after the window: late packets of the window still count (not lost)
JOIN_CONCURRENCY = 10
GENERATOR_CPU_LIMIT = 0.85
LAG_P99_LIMIT_MS = 20.0
COUNT_MISMATCH_LIMIT = 0.02
PROGRESS_EVERY_S = 5.0
OTHER_CPU_LIMIT = 0.2


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Clips:
    """Pre-encoded media: one video clip, and one audio clip per publisher (cycled), so
    that no two publishers send the same payload (see :mod:`bench.latency`)."""

    video: EncodedClip
    audio: tuple[EncodedClip, ...]

    def audio_for(self, index: int) -> EncodedClip:
        return self.audio[index % len(self.audio)]


@dataclass(frozen=True, slots=True)
class MemberSpec:
    identity: str
    video: bool = False
    audio: bool = False
    subscribe: bool = False

    @property
    def publishes(self) -> bool:
        return self.video or self.audio


@dataclass(frozen=True, slots=True)
class Layout:
    """Rooms of participants; ``label`` names the size in reports (e.g. ``N=20``)."""

    label: str
    size: int
    """The x axis of plots and slopes (N subscribers, N participants, RxP)."""
    rooms: tuple[tuple[MemberSpec, ...], ...]

    @property
    def participants(self) -> int:
        return sum(len(room) for room in self.rooms)

    @property
    def publishers(self) -> int:
        return sum(m.publishes for room in self.rooms for m in room)

    @property
    def streams(self) -> int:
        """Publisher → receiver pairs (each carries that publisher's tracks)."""
        return sum(
            sum(m.publishes for m in room if m is not r)
            for room in self.rooms
            for r in room
            if r.subscribe
        )


@dataclass(frozen=True, slots=True)
class RunOptions:
    duration_s: float = 10.0
    warmup_s: float = 3.0
    probes: int = 0
    generators: int = 1
    """Generator processes: 1 = everything in this process; N > 1 = the members are
    spread over N worker processes (:mod:`bench.pool`), this one only coordinates;
    0 = auto (:func:`plan_generators`)."""
    impair: tuple[LinkRule, ...] = ()
    """Impaired links per client group (``--impair``, :mod:`bench.impairments`)."""


@dataclass(slots=True)
class RunFigures:
    """Figures of one run (one target, one size). Counts are deltas over the window."""

    target: str
    label: str
    size: int
    participants: int
    publishers: int
    streams: int
    description: str = ""
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    server_wakeups: int | None = None
    server: PacketCounters | None = None
    subscriber_packets: int = 0
    subscriber_bytes: int = 0
    expected_packets: int = 0
    received_packets: int = 0
    video_expected_packets: int = 0
    video_received_packets: int = 0
    nacks_sent: int = 0
    """Generic NACKs the bench's subscribers sent (each may list several packets)."""
    nack_repaired: int = 0
    """Packets they had NACKed that then arrived (retransmitted or late)."""
    worst_subscriber_loss: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_rss_idle_bytes: int = 0
    server_rss_bytes: int = 0
    server_udp_drops: int = 0
    generator_udp_drops: int = 0
    softnet_drops: int = 0
    """Kernel input-backlog drops, machine-wide (loopback and veth bursts)."""
    other_cpu_share: float = 0.0
    """CPU used by every other process on the machine during the window (cores)."""
    generator_cpu_share: float = 0.0
    loop_lag_ms: dict[str, float] = field(default_factory=dict)
    join_first_media_ms: list[float] = field(default_factory=list)
    join_first_keyframe_ms: list[float] = field(default_factory=list)
    probe_first_frame_ms: list[float] = field(default_factory=list)
    publisher_keyframe_requests: int = 0
    generator_processes: list[ProcessFigures] = field(default_factory=list)
    """Per generator process (the coordinator first), when there are worker processes."""
    impaired: bool = False
    """Some links were impaired on purpose (``--impair``): loss and count gaps expected."""
    generators_planned: int = 1
    generator_limited: bool = False
    """Some generator process, not the server, may have been the limit of this run."""
    warnings: list[str] = field(default_factory=list)

    @property
    def server_cpu_share(self) -> float:
        return self.server_cpu_s / self.window_s if self.window_s else 0.0

    @property
    def forwarded_packets(self) -> int:
        """The server's own count where it has one, else what the subscribers counted."""
        return self.server.rtp_out if self.server is not None else self.subscriber_packets

    @property
    def forwarded_pps(self) -> float:
        return self.forwarded_packets / self.window_s if self.window_s else 0.0

    @property
    def forwarded_mbps(self) -> float:
        """Bytes forwarded (SRTP if the server counts them, else plain RTP), Mbit/s."""
        octets = self.server.bytes_out if self.server is not None else self.subscriber_bytes
        return octets * 8 / self.window_s / 1e6 if self.window_s else 0.0

    @property
    def cpu_us_per_forwarded(self) -> float | None:
        n = self.forwarded_packets
        return self.server_cpu_s * 1e6 / n if n else None

    @property
    def cpu_ms_per_s_per_stream(self) -> float | None:
        return self.server_cpu_share * 1e3 / self.streams if self.streams else None

    @property
    def rss_per_participant_bytes(self) -> float | None:
        if not self.participants or not self.server_rss_bytes:
            return None
        return (self.server_rss_bytes - self.server_rss_idle_bytes) / self.participants

    @property
    def loss(self) -> float | None:
        if not self.expected_packets:
            return None
        return max(0.0, 1.0 - self.received_packets / self.expected_packets)

    @property
    def video_loss(self) -> float | None:
        if not self.video_expected_packets:
            return None
        return max(0.0, 1.0 - self.video_received_packets / self.video_expected_packets)

    @property
    def counted_ratio(self) -> float | None:
        if self.server is None or not self.server.rtp_out:
            return None
        return self.subscriber_packets / self.server.rtp_out

    def as_dict(self) -> dict[str, Any]:
        server = self.server
        return {
            "target": self.target,
            "description": self.description,
            "label": self.label,
            "size": self.size,
            "participants": self.participants,
            "publishers": self.publishers,
            "streams": self.streams,
            "window_s": self.window_s,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_share": self.server_cpu_share,
            "server_wakeups": self.server_wakeups,
            "server_packets": None
            if server is None
            else {
                "rtp_in": server.rtp_in,
                "rtp_out": server.rtp_out,
                "rtcp_in": server.rtcp_in,
                "rtcp_out": server.rtcp_out,
                "bytes_out": server.bytes_out,
                "dropped": server.dropped,
            },
            "forwarded_packets": self.forwarded_packets,
            "forwarded_pps": self.forwarded_pps,
            "forwarded_mbps": self.forwarded_mbps,
            "cpu_us_per_forwarded_packet": self.cpu_us_per_forwarded,
            "cpu_ms_per_s_per_stream": self.cpu_ms_per_s_per_stream,
            "subscriber_packets": self.subscriber_packets,
            "subscriber_bytes": self.subscriber_bytes,
            "subscriber_counted_ratio": self.counted_ratio,
            "expected_packets": self.expected_packets,
            "received_packets": self.received_packets,
            "loss": self.loss,
            "video_loss": self.video_loss,
            "nacks_sent": self.nacks_sent,
            "nack_repaired_packets": self.nack_repaired,
            "worst_subscriber_loss": self.worst_subscriber_loss,
            "latency_ms": self.latency_ms,
            "server_rss_idle_bytes": self.server_rss_idle_bytes,
            "server_rss_bytes": self.server_rss_bytes,
            "rss_per_participant_bytes": self.rss_per_participant_bytes,
            "server_udp_drops": self.server_udp_drops,
            "generator_udp_drops": self.generator_udp_drops,
            "softnet_backlog_drops": self.softnet_drops,
            "other_processes_cpu_share": self.other_cpu_share,
            "generator_cpu_share": self.generator_cpu_share,
            "generator_loop_lag_ms": self.loop_lag_ms,
            "join_to_first_media_ms": self.join_first_media_ms,
            "join_to_first_keyframe_ms": self.join_first_keyframe_ms,
            "join_to_first_decoded_frame_ms": self.probe_first_frame_ms,
            "publisher_keyframe_requests": self.publisher_keyframe_requests,
            "generator_processes": [p.as_dict() for p in self.generator_processes],
            "generators": self.generators_planned,
            "generator_limited": self.generator_limited,
            "warnings": self.warnings,
        }


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    if not samples_s:
        return {}
    ms = [s * 1000.0 for s in samples_s]
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "samples": float(len(ms)),
    }


def clip_packets_per_s(clip: EncodedClip, payload_bytes: int = 1100) -> float:
    """RTP packets per second of a clip (a frame is split into ~``payload_bytes`` packets)."""
    packets = sum(max(1, -(-len(frame) // payload_bytes)) for frame in clip.frames)
    return packets / clip.duration_s if clip.duration_s else 0.0


def plan_generators(layout: Layout, clips: Clips, server_cpu: int | None) -> int:
    """``--generators auto``: enough processes that none is predicted above 70 % of a
    core, capped by the CPUs this process may use other than the server's."""
    video = clip_packets_per_s(clips.video)
    audio = clip_packets_per_s(clips.audio[0])
    sent = sum(
        (video if m.video else 0.0) + (audio if m.audio else 0.0)
        for room in layout.rooms
        for m in room
    )
    received = 0.0
    for room in layout.rooms:
        for r in room:
            if r.subscribe:
                received += sum(
                    (video if m.video else 0.0) + (audio if m.audio else 0.0)
                    for m in room
                    if m is not r
                )
    free = len(os.sched_getaffinity(0) - ({server_cpu} if server_cpu is not None else set()))
    return auto_generators(predicted_cpu_share(received, sent), max(1, free))


@dataclass(slots=True)
class _Member:
    spec: MemberSpec
    room_index: int
    peer: Peer | None = None
    publisher: int | None = None
    arrivals: Arrivals | None = None
    join_started: float = 0.0
    tracks: list[ReplayTrack] = field(default_factory=list)
    impair: tuple[Impairment | None, Impairment | None] = (None, None)
    """(send, receive) impairment of this member's links."""


async def run_layout(
    target: Target, layout: Layout, clips: Clips, options: RunOptions
) -> RunFigures:
    """Run ``layout`` once on a fresh ``target`` (started and stopped here)."""
    tag = f"{target.name} {layout.label}"
    figures = RunFigures(
        target=target.name,
        label=layout.label,
        size=layout.size,
        participants=layout.participants,
        publishers=layout.publishers,
        streams=layout.streams,
    )
    progress(f"{tag}: starting the server")
    await asyncio.to_thread(target.start)
    figures.description = target.description
    progress(f"{tag}: pid {target.pid}; {figures.description}")
    lag = LoopLagMonitor()
    lag.start()
    members: list[_Member] = []
    pool: GeneratorPool | None = None
    generators = options.generators or plan_generators(layout, clips, getattr(target, "cpu", None))
    figures.impaired = bool(options.impair)
    figures.generators_planned = generators
    if generators > 1 and not isinstance(target, SfuServer):
        figures.warnings.append(
            f"--generators {generators}: generator processes drive the oktorus "
            f"target only; {target.name} ran with one generator process"
        )
        generators = figures.generators_planned = 1
    try:
        with target.network():
            bridge.restrict_host_addresses(target.host_addresses)
            if generators > 1 and isinstance(target, SfuServer):
                pool = GeneratorPool(generators)
                progress(f"{tag}: starting {generators} generator processes")
                await pool.start(clips, target.host_addresses)
            members = await _run_inside(target, layout, clips, options, figures, lag, tag, pool)
    finally:
        if pool is not None:
            await pool.close()
        await finish_run(
            target, lag, [m.peer for m in members if m.peer is not None],
            [t for m in members for t in m.tracks], figures.warnings,
        )  # fmt: skip
    return figures


async def finish_run(
    target: Target,
    lag: LoopLagMonitor,
    peers: list[Peer],
    tracks: Sequence[MediaStreamTrack],
    warnings: list[str],
) -> None:
    """End a run: stop the lag probe, leave, stop the media, stop the server by PID."""
    await lag.stop()
    with target.network():
        await close_peers(peers)
    for track in tracks:
        track.stop()
    with contextlib.suppress(Exception):
        await target.aclose()
    code = await asyncio.to_thread(target.stop)
    if code not in (0, None):
        warnings.append(f"the server exited with code {code}")


async def _run_inside(
    target: Target,
    layout: Layout,
    clips: Clips,
    options: RunOptions,
    figures: RunFigures,
    lag: LoopLagMonitor,
    tag: str,
    pool: GeneratorPool | None = None,
) -> list[_Member]:
    figures.server_rss_idle_bytes = target.rss_bytes()
    ledger = SendLedger()
    members: list[_Member] = []
    room_names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in layout.rooms]
    for index, (room, specs) in enumerate(zip(room_names, layout.rooms, strict=True)):
        await target.open_room(room, sum(s.publishes for s in specs))
        members += [_Member(spec, index) for spec in specs]
    for number, member in enumerate(members):
        member.impair = impairments_for(
            options.impair, number, member.spec.publishes, member.spec.subscribe
        )

    publishers = [m for m in members if m.spec.publishes]
    progress(f"{tag}: {len(publishers)} publisher(s) joining")
    if pool is not None:
        assert isinstance(target, SfuServer)
        server = target
        await _bounded(
            [
                _join_remote(server, pool, room_names[m.room_index], members.index(m), m, k, ledger)
                for k, m in enumerate(publishers)
            ]
        )
    else:
        await _bounded(
            [
                _join_publisher(
                    target, room_names[m.room_index], m, clips.audio_for(k), clips, ledger
                )
                for k, m in enumerate(publishers)
            ]
        )
    receivers = [m for m in members if not m.spec.publishes and m.spec.subscribe]
    progress(f"{tag}: {len(receivers)} subscriber(s) joining")
    if pool is not None:
        await _bounded(
            [
                _join_remote(server, pool, room_names[m.room_index], members.index(m), m, 0, ledger)
                for m in receivers
            ]
        )
    else:
        await _bounded(
            [_join_receiver(target, room_names[m.room_index], m, ledger) for m in receivers]
        )
    expected = _expected_publishers(members)
    await _wait_for_media(members, expected, figures, video=layout_has_video(layout))
    enlarge_receive_buffers([m.peer for m in members if m.peer is not None])
    if pool is not None:
        await pool.enlarge_buffers()
    late = sum(1 for m in members if m.peer is not None and m.peer.tapped_late)
    late += pool.tapped_late() if pool is not None else 0
    if late:
        figures.warnings.append(f"{late} receive tap(s) went in after DTLS was up")

    progress(f"{tag}: warm-up {options.warmup_s:g} s, then {options.duration_s:g} s measured")
    await asyncio.sleep(options.warmup_s)
    await _measure(target, members, expected, ledger, options.duration_s, lag, figures, tag, pool)

    video_room = next(
        (i for i, specs in enumerate(layout.rooms) if any(s.video for s in specs)), None
    )
    if options.probes and video_room is not None:
        progress(f"{tag}: {options.probes} join→first-frame probe(s)")
        for i in range(options.probes):
            try:
                figures.probe_first_frame_ms.append(
                    await probe_first_frame(target, room_names[video_room], f"probe-{i}")
                )
            except TimeoutError:
                figures.warnings.append(f"probe {i}: no decoded frame in {PROBE_TIMEOUT_S:g} s")
            except Exception as exc:  # noqa: BLE001 - one failed probe is reported, not fatal
                figures.warnings.append(f"probe {i} failed: {exc!r}")
            await asyncio.sleep(PROBE_GAP_S)
    _join_figures(members, figures)
    skips = sum(t.late_skips for m in members for t in m.tracks)
    skips += pool.late_skips() if pool is not None else 0
    if skips:
        figures.warnings.append(
            f"the publishers' replay fell more than 100 ms behind {skips} time(s) and skipped "
            "ahead: the generator was held up (fewer packets were sent than the clips carry)"
        )
    figures.publisher_keyframe_requests = sum(
        t.keyframe_requests for m in members for t in m.tracks if t.kind == "video"
    ) + (pool.keyframe_requests() if pool is not None else 0)
    _check(figures)
    return members


GENERATOR_RCVBUF = 8 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def enlarge_receive_buffers(peers: Sequence[Peer]) -> int:
    """Give the generator's media sockets 8 MiB receive buffers, so a pause of its event
    loop (the machine is shared) queues packets instead of dropping them. Root may exceed
    ``net.core.rmem_max`` (SO_RCVBUFFORCE); otherwise the kernel caps it. Returns the
    number of sockets changed."""
    changed = 0
    for peer in peers:
        for pc in (peer.publish_pc, peer.subscribe_pc):
            dtls = bridge.dtls_transport(pc) if pc is not None else None
            route = bridge.selected_route(dtls) if dtls is not None else None
            sock = route.transport.get_extra_info("socket") if route is not None else None
            if sock is None:
                continue
            for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, GENERATOR_RCVBUF)
                except OSError:
                    continue
                changed += 1
                break
    return changed


def layout_has_video(layout: Layout) -> bool:
    return any(m.video for room in layout.rooms for m in room)


def _join_figures(members: Sequence[_Member], figures: RunFigures) -> None:
    """join → first media / first keyframe of the receive-only members."""
    for m in members:
        a = m.arrivals
        if a is None or m.spec.publishes:
            continue
        if a.first_media_at is not None:
            figures.join_first_media_ms.append((a.first_media_at - m.join_started) * 1000)
        if a.first_keyframe_at is not None:
            figures.join_first_keyframe_ms.append((a.first_keyframe_at - m.join_started) * 1000)


async def _bounded(coros: Sequence[Any]) -> None:
    semaphore = asyncio.Semaphore(JOIN_CONCURRENCY)

    async def one(coro: Any) -> None:
        async with semaphore:
            await coro

    results = await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} joins failed") from failed[0]


def publisher_tap_for(pc: RTCPeerConnection, ledger: SendLedger) -> Any:
    sdp = pc.localDescription.sdp if pc.localDescription is not None else ""
    video, audio = media_payload_types(str(sdp))
    return ledger.add_publisher(video, audio)


async def _join_publisher(
    target: Target,
    room: str,
    member: _Member,
    audio: EncodedClip,
    clips: Clips,
    ledger: SendLedger,
) -> None:
    if member.spec.video:
        member.tracks.append(ReplayTrack(clips.video))
    if member.spec.audio:
        member.tracks.append(ReplayTrack(audio))
    tracks: list[MediaStreamTrack] = list(member.tracks)
    member.arrivals = Arrivals(ledger) if member.spec.subscribe else None
    member.join_started = time.perf_counter()
    peer = await target.join(
        room,
        member.spec.identity,
        tracks=tracks,
        subscribe=member.spec.subscribe,
        tap=member.arrivals,
        timeout=JOIN_TIMEOUT_S,
        impair_send=member.impair[0],
        impair_receive=member.impair[1],
    )
    member.peer = peer
    pc = peer.publish_pc
    assert pc is not None
    tap = publisher_tap_for(pc, ledger)
    member.publisher = tap.index
    bridge.tap_sent_rtp(pc, tap)
    for sender in pc.getSenders():
        track = sender.track
        if isinstance(track, ReplayTrack) and track.kind == "video":
            forward_keyframe_requests(sender, track.request_keyframe)


async def _join_remote(
    target: SfuServer,
    pool: GeneratorPool,
    room: str,
    index: int,
    member: _Member,
    audio_clip: int,
    ledger: SendLedger,
) -> None:
    """Join ``member`` in its generator process; its records come back through ``pool``."""
    spec = member.spec
    member.arrivals = Arrivals(ledger) if spec.subscribe else None
    grants = grants_for(spec.publishes, spec.subscribe)
    joined = await pool.join(
        index,
        url=target.url,
        token=target.token(room, spec.identity, grants),
        identity=spec.identity,
        video=spec.video,
        audio=spec.audio,
        audio_clip=audio_clip,
        subscribe=spec.subscribe,
        arrivals=member.arrivals,
        timeout=JOIN_TIMEOUT_S,
        impair=member.impair,
    )
    member.join_started = joined.join_started
    if spec.publishes:
        tap = ledger.add_publisher(joined.video_pts, joined.audio_pts)
        member.publisher = tap.index
        pool.publish_into(index, tap)


async def _join_receiver(target: Target, room: str, member: _Member, ledger: SendLedger) -> None:
    member.arrivals = Arrivals(ledger)
    member.join_started = time.perf_counter()
    member.peer = await target.join(
        room,
        member.spec.identity,
        subscribe=True,
        tap=member.arrivals,
        timeout=JOIN_TIMEOUT_S,
        impair_send=member.impair[0],
        impair_receive=member.impair[1],
    )


def _expected_publishers(members: Sequence[_Member]) -> dict[int, set[int]]:
    """member index → ledger indices of the publishers it should receive."""
    expected: dict[int, set[int]] = {}
    for i, m in enumerate(members):
        if not m.spec.subscribe:
            continue
        expected[i] = {
            o.publisher
            for o in members
            if o is not m and o.room_index == m.room_index and o.publisher is not None
        }
    return expected


async def _wait_for_media(
    members: Sequence[_Member],
    expected: dict[int, set[int]],
    figures: RunFigures,
    video: bool,
) -> None:
    """Until every receiver has media from each publisher it expects (and, with video,
    a keyframe: it can show a picture)."""
    deadline = time.monotonic() + MEDIA_TIMEOUT_S

    def missing() -> int:
        return sum(
            1
            for i, publishers in expected.items()
            if (a := members[i].arrivals) is None
            or not publishers <= a.publishers_seen
            or (video and publishers and a.first_keyframe_at is None)
        )

    while time.monotonic() < deadline:
        if missing() == 0:
            return
        await asyncio.sleep(0.05)
    figures.warnings.append(
        f"{missing()} receiver(s) lacked media from some publisher after {MEDIA_TIMEOUT_S:g} s"
    )


async def _measure(
    target: Target,
    members: Sequence[_Member],
    expected: dict[int, set[int]],
    ledger: SendLedger,
    duration_s: float,
    lag: LoopLagMonitor,
    figures: RunFigures,
    tag: str,
    pool: GeneratorPool | None = None,
) -> None:
    arrivals = [m.arrivals for m in members if m.arrivals is not None]
    generator = ProcessCpu()
    counters_before = await target.packet_counters()
    cpu_before = target.cpu_seconds()
    wakeups_before = target.wakeups()
    server_drops = read_udp_drops(target.pid)
    generator_drops = read_udp_drops("self", "/proc/thread-self/net")
    softnet_before = read_softnet_dropped()
    busy_before, _ = read_machine_busy()
    mine_before = target.cpu_seconds() + read_cpu_seconds()
    mine_before += pool.cpu_seconds() if pool is not None else 0.0
    packets_before = sum(a.packets for a in arrivals)
    bytes_before = sum(a.octets for a in arrivals)
    for a in arrivals:
        a.reset_window()
    generator.reset()
    lag.reset()
    if pool is not None:
        await pool.reset_lag()
        pool.window_open()
    started = time.perf_counter()
    ledger.open_window(started)

    end = started + duration_s
    while (left := end - time.perf_counter()) > 0:
        await asyncio.sleep(min(left, PROGRESS_EVERY_S))
        done = time.perf_counter() - started
        if done < duration_s - 0.5:
            progress(f"{tag}: measuring, {done:.0f}/{duration_s:g} s")

    ended = time.perf_counter()
    ledger.close_window(ended)
    busy_after, _ = read_machine_busy()
    mine_after = target.cpu_seconds() + read_cpu_seconds()
    mine_after += pool.cpu_seconds() if pool is not None else 0.0
    cpu_after = target.cpu_seconds()
    wakeups_after = target.wakeups()
    counters_after = await target.packet_counters()
    figures.generator_cpu_share = generator.share()
    if pool is not None:
        shares = pool.cpu_shares()
        lags = await pool.lag_samples()
        figures.generator_processes = [
            ProcessFigures(
                "coordinator",
                os.getpid(),
                0,
                figures.generator_cpu_share,
                lag_summary(list(lag.samples_ms)),
            )
        ] + [
            ProcessFigures(f"generator {i + 1}", pid, n, share, lag_summary(samples))
            for i, (pid, n, share, samples) in enumerate(
                zip(pool.pids, pool.members_per_process(), shares, lags, strict=True)
            )
        ]
    figures.server_rss_bytes = target.rss_bytes()
    figures.window_s = ended - started
    figures.server_cpu_s = cpu_after - cpu_before
    others = (busy_after - busy_before) / clock_ticks_per_second() - (mine_after - mine_before)
    figures.other_cpu_share = max(0.0, others / figures.window_s)
    if wakeups_before is not None and wakeups_after is not None:
        figures.server_wakeups = wakeups_after - wakeups_before
    if counters_before is not None and counters_after is not None:
        figures.server = counters_after.minus(counters_before)
    figures.subscriber_packets = sum(a.packets for a in arrivals) - packets_before
    figures.subscriber_bytes = sum(a.octets for a in arrivals) - bytes_before
    samples = list(lag.samples_ms)
    if samples:
        figures.loop_lag_ms = {
            "p50": percentile(samples, 50),
            "p99": percentile(samples, 99),
            "max": max(samples),
            "samples": float(len(samples)),
        }

    await asyncio.sleep(DRAIN_S)  # late packets of the window still count (latency, loss)
    if pool is not None:
        await pool.flush()
        for process, drops in zip(figures.generator_processes[1:], pool.udp_drops(), strict=True):
            process.udp_drops = drops
            figures.generator_udp_drops += drops
    figures.server_udp_drops = drops_between(server_drops, read_udp_drops(target.pid))
    figures.softnet_drops = read_softnet_dropped() - softnet_before
    figures.generator_udp_drops = drops_between(
        generator_drops, read_udp_drops("self", "/proc/thread-self/net")
    )
    latencies: list[float] = []
    worst = 0.0
    for i, publishers in expected.items():
        tap = members[i].arrivals
        if tap is None or not publishers:
            continue
        sent = sum(ledger.window_sent[p] for p in publishers)
        got = min(sent, tap.received_from(publishers))
        figures.expected_packets += sent
        figures.received_packets += got
        video = sum(ledger.window_sent_video[p] for p in publishers)
        figures.video_expected_packets += video
        figures.video_received_packets += min(video, tap.video_received_from(publishers))
        if sent:
            worst = max(worst, 1.0 - got / sent)
        latencies.extend(tap.latencies_s)
    figures.worst_subscriber_loss = worst
    figures.latency_ms = latency_summary(latencies)
    nackers = [m.peer.nacker for m in members if m.peer is not None and m.peer.nacker]
    figures.nacks_sent = sum(n.nacks_sent for n in nackers)
    figures.nack_repaired = sum(n.repaired for n in nackers)
    if pool is not None:
        sent, repaired = pool.nacks()
        figures.nacks_sent += sent
        figures.nack_repaired += repaired


async def probe_first_frame(target: Target, room: str, identity: str) -> float:
    """Milliseconds from starting to join to the first *decoded* video frame."""
    started = time.perf_counter()
    peer: Peer | None = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            peer = await target.join(
                room,
                identity,
                subscribe=True,
                tap=_ignore,
                swallow=False,
                timeout=PROBE_TIMEOUT_S,
            )
            pc = peer.subscribe_pc
            assert pc is not None
            receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
            await receiver.track.recv()
            return (time.perf_counter() - started) * 1000.0
    finally:
        if peer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), CLOSE_TIMEOUT_S)


def _ignore(packet: bytes) -> None:
    pass


def _check(figures: RunFigures) -> None:
    for process in figures.generator_processes:
        reasons = process.limits(GENERATOR_CPU_LIMIT, LAG_P99_LIMIT_MS)
        if reasons:
            figures.generator_limited = True
            figures.warnings.append(
                f"generator-limited: {process.name} (pid {process.pid}) {' and '.join(reasons)}"
            )
    if not figures.generator_processes and figures.generator_cpu_share > GENERATOR_CPU_LIMIT:
        figures.generator_limited = True
        figures.warnings.append(
            f"the generator used {figures.generator_cpu_share:.0%} of a core: "
            "it may be the bottleneck"
        )
    p99 = figures.loop_lag_ms.get("p99", 0.0)
    if not figures.generator_processes and p99 > LAG_P99_LIMIT_MS:
        figures.generator_limited = True
        figures.warnings.append(
            f"generator event-loop lag p99 {p99:.1f} ms > {LAG_P99_LIMIT_MS:g} ms: "
            "latency figures include the generator's own delay"
        )
    ratio = figures.counted_ratio
    if ratio is not None and abs(ratio - 1.0) > COUNT_MISMATCH_LIMIT and not figures.impaired:
        figures.warnings.append(
            f"subscribers counted {figures.subscriber_packets} packets, the server reports "
            f"{figures.forwarded_packets} sent ({ratio:.1%})"
        )
    if figures.server is not None and figures.server.dropped:
        figures.warnings.append(f"the server dropped {figures.server.dropped} packets")
    if figures.server_udp_drops or figures.generator_udp_drops:
        figures.warnings.append(
            f"UDP receive drops in the window: server {figures.server_udp_drops}, "
            f"generator {figures.generator_udp_drops}"
        )
    if figures.softnet_drops:
        figures.warnings.append(
            f"the kernel's input backlog dropped {figures.softnet_drops} packets (machine-wide, "
            "net.core.netdev_max_backlog): a burst of sends overflowed it"
        )
    if figures.other_cpu_share > OTHER_CPU_LIMIT:
        figures.warnings.append(
            f"other processes on this machine used {figures.other_cpu_share:.0%} of a core "
            "during the window: figures are noisy"
        )
    if figures.publishers and not figures.latency_ms:
        figures.warnings.append("no packet could be matched for latency")


async def close_peers(peers: Sequence[Peer]) -> None:
    if not peers:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(p.close() for p in peers), return_exceptions=True),
            CLOSE_TIMEOUT_S,
        )

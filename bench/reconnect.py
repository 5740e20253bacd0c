"""``python -m bench.reconnect``: how long a call takes to recover from a network change.

Three cases against a real server process, aiortc peers on loopback, ``--runs`` times each:

* **publisher moves**: every socket of the publisher's two peer connections is blackholed
  (its old network is gone), then it gathers a host candidate on another loopback address and
  restarts ICE (publish offer with new credentials; the server re-offers its subscribe PC);
* **subscriber moves**: the same for a subscriber without a publish PC (``ice.restart``);
* **signalling drop**: the publisher's WebSocket is cut without a close frame and resumed.

Figures: ICE restart → first RTP packet and first decoded video frame at the subscriber
(media had stopped before the restart), and socket cut → ``joined`` (resumed) with the number
of video frames the subscriber decoded meanwhile (media does not depend on the socket).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiortc import MediaStreamTrack, RTCPeerConnection, VideoStreamTrack

from bench.server import SfuServer
from sfu import aiortc_bridge as bridge
from signaling.client import Participant

__all__ = ["ReconnectFigures", "main", "run"]

QUIET_S = 0.4  # no frame for this long: media has stopped
STEP_TIMEOUT_S = 15.0
GRANTS = ("publish", "subscribe")


@dataclass
class ReconnectFigures:
    """Milliseconds per run, by case."""

    first_packet_ms: dict[str, list[float]] = field(default_factory=dict)
    first_frame_ms: dict[str, list[float]] = field(default_factory=dict)
    resume_ms: list[float] = field(default_factory=list)
    frames_during_drop: list[int] = field(default_factory=list)


def _blackhole(*pcs: RTCPeerConnection | None) -> None:
    for pc in pcs:
        if pc is not None:
            bridge.impair_datagrams(pc, drop_outgoing=lambda _: True, drop_incoming=lambda _: True)


async def _drain(track: MediaStreamTrack) -> None:
    """Read frames until none arrives for QUIET_S (bounded by STEP_TIMEOUT_S)."""
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while True:
            try:
                await asyncio.wait_for(track.recv(), QUIET_S)
            except TimeoutError:
                return


async def _count_frames(track: MediaStreamTrack, seconds: float) -> int:
    frames = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(track.recv(), left)
            frames += 1
        except TimeoutError:
            break
    return frames


async def _one_restart(
    server: SfuServer, room: str, mover: str, address: str
) -> tuple[float, float]:
    """(ms to first packet, ms to first frame) after the mover's ICE restart."""
    publisher = await Participant.join(
        server.url, server.token(room, "pub", GRANTS), publish_tracks=[VideoStreamTrack()]
    )
    subscriber = await Participant.join(server.url, server.token(room, "sub", GRANTS))
    try:
        [video] = publisher.published
        track = (await subscriber.wait_remote_tracks([video], STEP_TIMEOUT_S))[video]
        await asyncio.wait_for(track.recv(), STEP_TIMEOUT_S)
        packet_at: list[float] = []
        assert subscriber.subscribe_pc is not None
        bridge.tap_received_rtp(
            subscriber.subscribe_pc, lambda _: packet_at.append(time.monotonic())
        )
        moving = publisher if mover == "publisher" else subscriber
        _blackhole(moving.publish_pc, moving.subscribe_pc)
        await _drain(track)
        started = time.monotonic()
        packet_at.clear()
        await moving.restart_ice(host_addresses=[address])
        await asyncio.wait_for(track.recv(), STEP_TIMEOUT_S)
        frame_ms = (time.monotonic() - started) * 1000
        packet_ms = (packet_at[0] - started) * 1000 if packet_at else frame_ms
        return packet_ms, frame_ms
    finally:
        await publisher.leave()
        await subscriber.leave()


async def _one_resume(server: SfuServer, room: str) -> tuple[float, int]:
    """(ms from socket cut to resumed `joined`, frames decoded by the subscriber meanwhile)."""
    publisher = await Participant.join(
        server.url, server.token(room, "pub", GRANTS), publish_tracks=[VideoStreamTrack()]
    )
    subscriber = await Participant.join(server.url, server.token(room, "sub", GRANTS))
    try:
        [video] = publisher.published
        track = (await subscriber.wait_remote_tracks([video], STEP_TIMEOUT_S))[video]
        await asyncio.wait_for(track.recv(), STEP_TIMEOUT_S)
        started = time.monotonic()
        publisher.signal.abort()
        counting = asyncio.ensure_future(_count_frames(track, 1.0))
        if not await publisher.resume():
            raise RuntimeError("the server did not resume the participant")
        resume_ms = (time.monotonic() - started) * 1000
        return resume_ms, await counting
    finally:
        await publisher.leave()
        await subscriber.leave()


async def run(runs: int) -> ReconnectFigures:
    bridge.restrict_host_addresses(["127.0.0.1"])
    server = await asyncio.to_thread(SfuServer().start)
    figures = ReconnectFigures()
    try:
        for case, address in (("publisher", "127.0.0.2"), ("subscriber", "127.0.0.3")):
            for i in range(runs):
                packet_ms, frame_ms = await _one_restart(server, f"{case}-{i}", case, address)
                figures.first_packet_ms.setdefault(case, []).append(packet_ms)
                figures.first_frame_ms.setdefault(case, []).append(frame_ms)
        for i in range(runs):
            resume_ms, frames = await _one_resume(server, f"resume-{i}")
            figures.resume_ms.append(resume_ms)
            figures.frames_during_drop.append(frames)
    finally:
        await server.aclose()
        await asyncio.to_thread(server.stop)
    return figures


def _summary(values: Sequence[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):.0f} ms, p90 {p90:.0f} ms, max {ordered[-1]:.0f} ms"


def markdown(figures: ReconnectFigures, runs: int) -> str:
    lines = [
        f"## Reconnect ({runs} runs per case, loopback, aiortc peers)",
        "",
        "| case | ICE restart → first RTP packet | ICE restart → first decoded frame |",
        "|---|---|---|",
    ]
    for case in figures.first_frame_ms:
        lines.append(
            f"| {case} moves network | {_summary(figures.first_packet_ms[case])} "
            f"| {_summary(figures.first_frame_ms[case])} |"
        )
    lines += [
        "",
        f"Signalling socket cut → resumed `joined`: {_summary(figures.resume_ms)}; video frames "
        f"the subscriber decoded in the second after the cut: {figures.frames_during_drop}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, choices=range(1, 51), metavar="1..50")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.runs))
    print(markdown(figures, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Codecs, RTCP feedback and loss recovery through the real server process."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.media import FrameCounterTrack, ToneTrack, collect, read_frame_counter
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from signaling.client import Participant

pytestmark = pytest.mark.integration


def _lossy(rate: float, seed: int) -> Callable[[bytes], bool]:
    """Drop this share of SRTP media datagrams (never STUN, DTLS or RTCP), seeded."""
    rng = random.Random(seed)

    def drop(data: bytes) -> bool:
        is_rtp = len(data) > 1 and 127 < data[0] < 192 and not 191 < data[1] < 224
        return is_rtp and rng.random() < rate

    return drop


async def _video_counters(participant: Participant, frames: int) -> list[int]:
    video = next(t for t in participant.remote_tracks.values() if t.kind == "video")
    decoded = await collect(video, frames, timeout=20)
    return [c for c in (read_frame_counter(f) for f in decoded) if c is not None]  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_vp8_and_h264_are_forwarded(server: ServerProcess, room: str, codec: str) -> None:
    publisher = await Participant.join(
        server.url,
        server.token(room, "pub"),
        publish_tracks=[FrameCounterTrack()],
        video_codec=codec,
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(1, timeout=10)
        assert viewer.subscribe_pc is not None
        offered = viewer.subscribe_pc.remoteDescription.sdp
        assert codec.split("/")[1] in offered
        counters = await _video_counters(viewer, 30)
        assert len(counters) >= 25 and counters == sorted(counters)
    finally:
        await viewer.close()
        await publisher.close()


async def test_reports_flow_both_ways(server: ServerProcess, room: str) -> None:
    """The server sends receiver reports to publishers and sender reports to subscribers."""
    publisher = await Participant.join(
        server.url, server.token(room, "pub"), publish_tracks=[FrameCounterTrack(), ToneTrack()]
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(2, timeout=10)
        await asyncio.sleep(3.5)  # RTCP interval is 0.5-1.5 s
        assert publisher.publish_pc is not None and viewer.subscribe_pc is not None
        sent_stats = await publisher.publish_pc.getStats()
        remote_inbound = [s for s in sent_stats.values() if s.type == "remote-inbound-rtp"]
        assert len(remote_inbound) == 2, "a receiver report for each published track"
        received_stats = await viewer.subscribe_pc.getStats()
        remote_outbound = [s for s in received_stats.values() if s.type == "remote-outbound-rtp"]
        assert len(remote_outbound) == 2, "a sender report for each forwarded track"
        assert all(s.packetsSent > 0 for s in remote_outbound)
    finally:
        await viewer.close()
        await publisher.close()


async def test_loss_is_repaired_upstream_and_downstream(server: ServerProcess, room: str) -> None:
    """5% loss publisher→server and 5% server→subscriber: NACKs and RTX repair both."""
    publisher = await Participant.join(
        server.url, server.token(room, "pub"), publish_tracks=[FrameCounterTrack()]
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(1, timeout=10)
        assert publisher.publish_pc is not None and viewer.subscribe_pc is not None
        bridge.impair_datagrams(publisher.publish_pc, drop_outgoing=_lossy(0.05, seed=1))
        bridge.impair_datagrams(viewer.subscribe_pc, drop_incoming=_lossy(0.05, seed=2))
        counters = await _video_counters(viewer, 150)
        metrics = server.metrics()
        assert metrics['sfu_media_recovery{counter="nacked_upstream"}'] > 0
        assert metrics['sfu_media_recovery{counter="retransmitted"}'] > 0
        # Repaired, not just concealed: nearly every frame of the 5 s arrives, in order.
        assert counters == sorted(counters)
        span = counters[-1] - counters[0] + 1
        assert len(set(counters)) >= 0.9 * span, (len(set(counters)), span)
    finally:
        await viewer.close()
        await publisher.close()


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        Path(tmp_path_factory.mktemp("impatient")), ["--producer-timeout", "2"]
    ).start()
    try:
        yield process
    finally:
        assert process.stop() == 0


async def test_silent_producer_is_removed_and_subscribers_reoffered(
    impatient_server: ServerProcess, room: str
) -> None:
    server = impatient_server
    publisher = await Participant.join(
        server.url, server.token(room, "pub"), publish_tracks=[FrameCounterTrack()]
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(1, timeout=10)
        offers_before = viewer.subscribe_negotiations
        published = set(publisher.published)
        assert publisher.publish_pc is not None
        # The publisher's media vanishes (its network drops everything but signalling).
        bridge.impair_datagrams(publisher.publish_pc, drop_outgoing=lambda data: True)
        event = await viewer.next_event("track.unpublished", timeout=10)
        assert event["track"]["id"] in published
        for _ in range(100):
            if viewer.subscribe_negotiations > offers_before:
                break
            await asyncio.sleep(0.05)
        assert viewer.subscribe_negotiations > offers_before, "the subscriber is re-offered"
    finally:
        await viewer.close()
        await publisher.close()


async def test_rtx_is_routed_per_track_with_two_video_tracks(
    server: ServerProcess, room: str
) -> None:
    """aiortc drops RTX when two bundled video m-lines share its payload type; the
    server's ingress routes RTX by SSRC itself, so both tracks are repaired."""
    publisher = await Participant.join(
        server.url,
        server.token(room, "pub"),
        publish_tracks=[FrameCounterTrack(), FrameCounterTrack(width=160, height=120)],
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(2, timeout=10)
        assert publisher.publish_pc is not None
        bridge.impair_datagrams(publisher.publish_pc, drop_outgoing=_lossy(0.05, seed=3))
        for video in list(viewer.remote_tracks.values()):
            decoded = await collect(video, 90, timeout=20)
            counters = [c for c in (read_frame_counter(f) for f in decoded) if c is not None]  # type: ignore[arg-type]
            span = counters[-1] - counters[0] + 1
            assert counters == sorted(counters) and len(set(counters)) >= 0.9 * span
        assert server.metrics()['sfu_media_recovery{counter="nacked_upstream"}'] > 0
    finally:
        await viewer.close()
        await publisher.close()

"""Issue 6's loss figures with real peers: a lossy subscriber link is repaired frame by frame,
and burst loss does not stall audio (audio never waits for video's repairs)."""

from __future__ import annotations

import itertools
import time

import pytest
from helpers.media import FrameCounterTrack, ToneTrack, collect, read_frame_counter
from helpers.server import ServerProcess

from sfu import aiortc_bridge as bridge
from signaling.client import Participant, impair_peer_connection
from signaling.client.impair import Impairment

pytestmark = pytest.mark.integration

FRAMES = 300  # 10 s at 30 fps


# Issue 6 asks 99.5 % at 5 % loss; at 10 % it asks for the figure (printed), held to 95 %.
@pytest.mark.parametrize(("loss", "wanted"), [(5, 0.995), (10, 0.95)])
async def test_subscriber_link_loss_is_repaired_frame_by_frame(
    server: ServerProcess, room: str, loss: int, wanted: float
) -> None:
    publisher = await Participant.join(
        server.url, server.token(room, "pub"), publish_tracks=[FrameCounterTrack()]
    )
    viewer = await Participant.join(
        server.url,
        server.token(room, "viewer"),
        impair_receive=Impairment(loss=loss, seed=11),
    )
    try:
        await viewer.wait_remote_tracks(1, timeout=15)
        video = next(t for t in viewer.remote_tracks.values() if t.kind == "video")
        frames = await collect(video, FRAMES, timeout=60, allow_partial=True)
        counters = [read_frame_counter(f) for f in frames]  # type: ignore[arg-type]
        decoded = [c for c in counters if c is not None]
        link = viewer.link_models["subscribe.receive"]
        assert link.lost > 0.5 * loss / 100 * link.offered  # the link really was lossy
        assert decoded == sorted(decoded)
        span = decoded[-1] - decoded[0] + 1
        complete = len(set(decoded)) / span
        print(
            f"\nloss_recovery: {loss}% loss on the subscriber link: {len(set(decoded))} of "
            f"{span} frames decoded complete ({100 * complete:.2f} %), "
            f"{link.lost} of {link.offered} datagrams dropped"
        )
        assert span >= FRAMES * 0.9
        assert complete >= wanted, complete
    finally:
        await viewer.close()
        await publisher.close()


async def test_burst_loss_does_not_stall_audio(server: ServerProcess, room: str) -> None:
    """20 % loss in bursts on the subscriber link: audio keeps arriving while video is
    being repaired (NACK/RTX), and decoded audio keeps flowing."""
    publisher = await Participant.join(
        server.url,
        server.token(room, "pub"),
        publish_tracks=[ToneTrack(), FrameCounterTrack()],
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(2, timeout=15)
        pc = viewer.subscribe_pc
        assert pc is not None
        audio_types = {
            c.payloadType
            for t in pc.getTransceivers()
            if t.kind == "audio"
            for c in bridge.negotiated_codecs(t)
        }
        arrivals: list[float] = []

        def tap(packet: bytes) -> None:
            if packet[1] & 0x7F in audio_types:
                arrivals.append(time.monotonic())

        bridge.tap_received_rtp(pc, tap)
        # Impaired from here on, once the call is up (ICE and DTLS are not the subject).
        link = impair_peer_connection(pc, None, Impairment.parse("loss=20,burst=4,seed=3"))
        audio = next(t for t in viewer.remote_tracks.values() if t.kind == "audio")
        started = time.monotonic()
        frames = await collect(audio, 150, timeout=20, allow_partial=True)  # 3 s of audio
        elapsed = time.monotonic() - started
        window = [t for t in arrivals if t >= started]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        print(
            f"\nloss_recovery: 20% burst loss: {len(window)} audio packets in {elapsed:.1f} s "
            f"(≈{50 * elapsed:.0f} sent), longest gap {1000 * max(gaps):.0f} ms, "
            f"{len(frames)} audio frames decoded"
        )
        assert link["receive"].lost > 0.1 * link["receive"].offered
        assert len(frames) == 150
        assert len(window) >= 0.6 * 50 * elapsed  # 20 % lost, the rest arrives
        assert max(gaps) < 0.5  # no stall behind video's retransmissions
    finally:
        await viewer.close()
        await publisher.close()

"""A real call through the server on impaired links (``signaling.client.impair``)."""

from __future__ import annotations

import pytest
from helpers.media import FrameCounterTrack, collect, read_frame_counter
from helpers.server import ServerProcess

from signaling.client import Participant
from signaling.client.impair import Impairment

pytestmark = pytest.mark.integration


async def test_call_decodes_under_loss_delay_and_jitter(server: ServerProcess, room: str) -> None:
    """5 % loss, 40 ms delay and ±10 ms jitter on the publisher's uplink and on the
    viewer's downlink: NACK/RTX repair the loss, every frame decodes, in order."""
    publisher = await Participant.join(
        server.url,
        server.token(room, "pub"),
        publish_tracks=[FrameCounterTrack()],
        impair_send=Impairment.parse("loss=5,delay=40,jitter=10,seed=1"),
    )
    viewer = await Participant.join(
        server.url,
        server.token(room, "viewer"),
        impair_receive=Impairment.parse("loss=5,delay=40,jitter=10,seed=2"),
    )
    try:
        await viewer.wait_remote_tracks(1, timeout=15)
        video = next(t for t in viewer.remote_tracks.values() if t.kind == "video")
        frames = await collect(video, 150, timeout=30)
        counters = [c for c in (read_frame_counter(f) for f in frames) if c is not None]  # type: ignore[arg-type]
        metrics = server.metrics()

        uplink = publisher.link_models["publish.send"]
        downlink = viewer.link_models["subscribe.receive"]
        for link in (uplink, downlink):  # the shim really dropped some (seeded, ~5 %)
            assert link.offered > 150
            assert 0 < link.lost < 0.12 * link.offered, (link.lost, link.offered)
        assert set(publisher.link_models) == {"publish.send"}
        assert set(viewer.link_models) == {"subscribe.receive"}
        assert metrics['sfu_media_recovery{counter="nacked_upstream"}'] > 0
        assert metrics['sfu_media_recovery{counter="retransmitted"}'] > 0
        assert len(counters) >= 140 and counters == sorted(counters)
        span = counters[-1] - counters[0] + 1
        assert len(set(counters)) >= 0.9 * span, (len(set(counters)), span)
    finally:
        await viewer.close()
        await publisher.close()

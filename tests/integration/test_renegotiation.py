"""Publishers add and remove tracks mid-call; subscribers are re-offered each time."""

from __future__ import annotations

import pytest
from helpers.media import (
    FrameCounterTrack,
    ToneTrack,
    collect,
    dominant_frequency,
    frames_to_samples,
    read_frame_counter,
)
from helpers.server import ServerProcess

from signaling.client import Participant, SignalError

pytestmark = pytest.mark.integration


async def test_tracks_added_and_removed_mid_call(server: ServerProcess, room: str) -> None:
    publisher = await Participant.join(
        server.url, server.token(room, "pub"), publish_tracks=[FrameCounterTrack()]
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(1, timeout=10)
        [audio_id] = await publisher.publish([ToneTrack()])
        event = await viewer.next_event("track.published", timeout=5)
        assert event["track"]["id"] == audio_id and event["track"]["kind"] == "audio"
        await viewer.wait_remote_tracks([audio_id], timeout=10)
        audio = await collect(viewer.remote_tracks[audio_id], 10, timeout=10)
        assert len(audio) == 10

        await publisher.unpublish(audio_id)
        event = await viewer.next_event("track.unpublished", timeout=5)
        assert event["track"]["id"] == audio_id
        video = next(t for t in viewer.remote_tracks.values() if t.kind == "video")
        frames = await collect(video, 10, timeout=10)
        assert read_frame_counter(frames[-1]) is not None  # type: ignore[arg-type]

        # A later track of the same codec reuses the ended m-line: SDP stays bounded.
        assert viewer.subscribe_pc is not None
        audio_lines = viewer.subscribe_pc.remoteDescription.sdp.count("m=audio")
        [again_id] = await publisher.publish([ToneTrack(880)])
        await viewer.wait_remote_tracks([again_id], timeout=10)
        assert viewer.subscribe_pc.remoteDescription.sdp.count("m=audio") == audio_lines
        # The m-line's track object may still hold queued frames of the old 440 Hz tone.
        audio = await collect(viewer.remote_tracks[again_id], 150, timeout=15)
        samples = frames_to_samples(audio[-25:])  # type: ignore[arg-type]
        assert abs(dominant_frequency(samples, 48_000) - 880) < 5
    finally:
        await viewer.close()
        await publisher.close()


async def test_reoffer_that_drops_existing_mlines_is_refused(
    server: ServerProcess, room: str
) -> None:
    publisher = await Participant.join(
        server.url, server.token(room, "pub"), publish_tracks=[FrameCounterTrack()]
    )
    viewer = await Participant.join(server.url, server.token(room, "viewer"))
    try:
        await viewer.wait_remote_tracks(1, timeout=10)
        assert publisher.publish_pc is not None
        sdp = publisher.publish_pc.localDescription.sdp
        renamed = sdp.replace("a=mid:0", "a=mid:zz").replace("BUNDLE 0", "BUNDLE zz")
        with pytest.raises(SignalError) as refused:
            await publisher.signal.request({"type": "publish", "sdp": renamed})
        assert refused.value.code == "bad_request"
        assert "previous m-lines" in refused.value.message
        video = next(iter(viewer.remote_tracks.values()))
        frames = await collect(video, 15, timeout=10)
        counters = [read_frame_counter(f) for f in frames]  # type: ignore[arg-type]
        readable = [c for c in counters if c is not None]
        assert len(readable) == len(counters) and readable == sorted(readable)
    finally:
        await viewer.close()
        await publisher.close()

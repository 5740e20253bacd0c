"""Screen share: a second video track marked ``source: "screen"`` beside the camera.

Real server process, real aiortc peers. The publisher marks the m-line in ``publish.sources``;
everyone sees ``source`` on the track object, and both videos are forwarded.
"""

from __future__ import annotations

import av
import pytest
from helpers.media import FrameCounterTrack, ToneTrack, collect, read_frame_counter
from helpers.server import ServerProcess

from signaling.client import Participant, SignalError

pytestmark = pytest.mark.integration


async def test_screen_track_is_marked_and_forwarded(server: ServerProcess, room: str) -> None:
    alice = await Participant.join(
        server.url, server.token(room, "alice"), publish_tracks=[FrameCounterTrack(), ToneTrack()]
    )
    bob = await Participant.join(server.url, server.token(room, "bob"))
    try:
        camera, microphone = alice.published
        [screen] = await alice.publish([FrameCounterTrack()], sources=["screen"])
        published = await bob.next_event(
            "track.published", lambda m: m["track"]["id"] == screen, timeout=10.0
        )
        assert published["track"]["source"] == "screen"
        assert published["track"]["kind"] == "video"
        sources = {t["id"]: t["source"] for t in bob.tracks.values()}
        assert sources == {camera: "camera", microphone: "microphone", screen: "screen"}
        received = await bob.wait_remote_tracks([camera, screen], timeout=15.0)
        for track_id in (camera, screen):
            frames = await collect(received[track_id], 5, timeout=15.0)
            assert all(
                read_frame_counter(f) is not None for f in frames if isinstance(f, av.VideoFrame)
            )
        # A late joiner learns the source from `joined`.
        carol = await Participant.join(server.url, server.token(room, "carol"))
        try:
            assert {t["id"]: t["source"] for t in carol.joined["tracks"]}[screen] == "screen"
        finally:
            await carol.leave()
    finally:
        await alice.leave()
        await bob.leave()


@pytest.mark.parametrize(
    ("sources", "words"),
    [
        ({"0": "window"}, "'sources' maps"),
        ({"0": "microphone"}, "cannot be a 'microphone' source"),
        ({"9": "screen"}, "does not have"),
        (["screen"], "'sources' must be of type dict"),
    ],
)
async def test_bad_sources_are_refused(
    server: ServerProcess, room: str, sources: object, words: str
) -> None:
    alice = await Participant.join(server.url, server.token(room, "alice"))
    try:
        pc = alice._ensure_publish_pc()
        pc.addTransceiver(FrameCounterTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(SignalError, match=words) as refused:
            await alice.signal.request(
                {"type": "publish", "sdp": pc.localDescription.sdp, "sources": sources}
            )
        assert refused.value.code == "bad_request"
        assert (await alice.signal.request({"type": "ping"}))["type"] == "pong"
    finally:
        await alice.leave()

"""The client's peer plumbing between two raw aiortc peers on loopback (no server).

A plain aiortc peer plays the SFU's subscribe side: it offers, re-offers on the same
connection as tracks come and go, and writes ``a=msid`` like the SFU does; the client
side uses exactly the functions :class:`signaling.client.Participant` uses. ICE gathers
on 127.0.0.1 through conftest's ``loopback_only`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import av
import pytest
import pytest_asyncio
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from helpers.media import (
    FrameCounterTrack,
    ToneTrack,
    collect,
    dominant_frequency,
    frames_to_samples,
    read_frame_counter,
)

from signaling.client import (
    answer_offer,
    create_offer,
    ice_candidate,
    offered_tracks,
    received_tracks,
    rtc_configuration,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    server, client = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    yield server, client
    await client.close()
    await server.close()


async def _negotiate(
    server: RTCPeerConnection, client: RTCPeerConnection
) -> dict[str, MediaStreamTrack]:
    offer = await create_offer(server)
    answer = await answer_offer(client, offer)
    await server.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return received_tracks(client, offered_tracks(offer))


async def _counters(track: MediaStreamTrack, count: int = 10) -> list[int | None]:
    frames = await collect(track, count, timeout=10.0)
    return [read_frame_counter(f) for f in frames if isinstance(f, av.VideoFrame)]


def _increasing(values: list[int | None]) -> bool:
    known = [v for v in values if v is not None]
    return len(known) == len(values) and known == sorted(set(known))


@pytest.mark.asyncio
async def test_subscribe_side_renegotiates_on_one_connection(
    peers: tuple[RTCPeerConnection, RTCPeerConnection],
) -> None:
    server, client = peers
    video, audio = FrameCounterTrack(), ToneTrack(440.0)
    server.addTransceiver(video, direction="sendonly")
    server.addTransceiver(audio, direction="sendonly")

    tracks = await _negotiate(server, client)
    assert set(tracks) == {video.id, audio.id}
    assert _increasing(await _counters(tracks[video.id]))
    received = await collect(tracks[audio.id], 50, timeout=10.0)
    samples = frames_to_samples(f for f in received if isinstance(f, av.AudioFrame))
    assert abs(dominant_frequency(samples[4800:], 48_000) - 440.0) <= 5.0

    second = FrameCounterTrack()
    server.addTransceiver(second, direction="sendonly")
    tracks2 = await _negotiate(server, client)
    assert set(tracks2) == {video.id, audio.id, second.id}
    assert tracks2[video.id] is tracks[video.id]  # same connection, same receivers
    assert _increasing(await _counters(tracks2[second.id]))
    assert _increasing(await _counters(tracks2[video.id]))

    first_video = next(t for t in server.getTransceivers() if t.sender.track is video)
    first_video.direction = "inactive"
    tracks3 = await _negotiate(server, client)
    assert set(tracks3) == {audio.id, second.id}
    assert _increasing(await _counters(tracks3[second.id]))
    assert len(client.getTransceivers()) == 3


def test_offered_tracks_reads_msid_direction_and_port() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "a=msid-semantic:WMS *",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=mid:0",
            "a=sendonly",
            "a=msid:alice TR_v1",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:1",
            "a=msid:alice TR_a1",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=mid:2",
            "a=inactive",
            "a=msid:bob TR_v2",
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "a=mid:3",
            "a=sendonly",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:4",
            "a=sendonly",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "a=mid:5",
            "",
        ]
    )
    assert offered_tracks(sdp) == {"0": "TR_v1", "1": "TR_a1", "4": None}


@pytest.mark.parametrize("prefix", ["candidate:", ""])
def test_ice_candidate_accepts_both_spellings(prefix: str) -> None:
    payload = {
        "candidate": prefix + "842163049 1 udp 1677729535 127.0.0.1 40000 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    candidate = ice_candidate(payload)
    assert (candidate.ip, candidate.port, candidate.type) == ("127.0.0.1", 40000, "host")
    assert (candidate.sdpMid, candidate.sdpMLineIndex) == ("0", 0)

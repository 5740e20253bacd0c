"""The bridge's in-place ICE restart between two raw aiortc peers on loopback (no server).

The offerer restarts: new credentials in its offer, the answerer notices and restarts too,
both run connectivity checks again on the same peer connections, DTLS and SRTP — and video
keeps arriving. ICE gathers on 127.0.0.1 through conftest's ``loopback_only`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import av
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection, RTCSessionDescription
from helpers.media import FrameCounterTrack, collect, read_frame_counter

from sfu import aiortc_bridge as bridge
from signaling.client import (
    answer_offer,
    create_offer,
    offered_tracks,
    received_tracks,
    rtc_configuration,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    sender, receiver = (
        RTCPeerConnection(rtc_configuration()),
        RTCPeerConnection(rtc_configuration()),
    )
    yield sender, receiver
    await receiver.close()
    await sender.close()


def _counters(frames: list[av.AudioFrame | av.VideoFrame]) -> list[int]:
    values = [read_frame_counter(f) for f in frames if isinstance(f, av.VideoFrame)]
    return [v for v in values if v is not None]


async def test_restart_renegotiates_ice_on_the_same_connections(
    peers: tuple[RTCPeerConnection, RTCPeerConnection],
) -> None:
    sender, receiver = peers
    with pytest.raises(bridge.IceRestartError):
        bridge.begin_ice_restart(sender)  # nothing negotiated yet
    sender.addTransceiver(FrameCounterTrack(), direction="sendonly")
    offer = await create_offer(sender)
    answer = await answer_offer(receiver, offer)
    await sender.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    [track] = received_tracks(receiver, offered_tracks(offer)).values()
    before = _counters(await collect(track, 5, timeout=10.0))
    old_offer, old_answer = bridge.ice_credentials(offer), bridge.ice_credentials(answer)
    dtls = bridge.dtls_transport(sender)

    bridge.begin_ice_restart(sender)
    offer = await create_offer(sender)
    assert bridge.ice_credentials(offer) != old_offer
    assert bridge.is_ice_restart(receiver, offer)
    bridge.begin_ice_restart(receiver)
    answer = await answer_offer(receiver, offer)
    assert bridge.ice_credentials(answer) != old_answer
    receiving = bridge.finish_ice_restart(receiver, offer)
    await sender.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    sending = bridge.finish_ice_restart(sender, answer)
    assert await sending and await receiving

    after = _counters(await collect(track, 10, timeout=10.0))
    assert before[-1] < after[0] and after == sorted(after)  # one stream, never restarted
    assert bridge.dtls_transport(sender) is dtls and dtls.state == "connected"
    assert not bridge.is_ice_restart(receiver, offer)  # applied: nothing new any more

"""A simulcast publish offer through the real Publisher and aiortc: the answer carries the
receive side of every layer, and the producer has one layer per rid (no media flows here;
tests/e2e/test_simulcast.py sends real Chromium simulcast)."""

from __future__ import annotations

from collections.abc import Iterator

import aioice.ice
import aiortc
import pytest

from sfu.aiortc_bridge import restrict_host_addresses
from sfu.peer_connection import MediaConfig
from sfu.producer import Producer
from sfu.publisher import Publisher
from sfu.sdp_guard import SdpError
from sfu.simulcast_sdp import REPAIRED_RID_URI, RID_URI


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])
    yield


def with_simulcast(offer: str, rids: list[str]) -> str:
    """Add Chromium's simulcast lines to the video section of an aiortc offer."""
    head, video = offer.split("m=video", 1)
    extra = (
        f"a=extmap:10 {RID_URI}\r\na=extmap:11 {REPAIRED_RID_URI}\r\n"
        + "".join(f"a=rid:{rid} send\r\n" for rid in rids)
        + "a=simulcast:send "
        + ";".join(rids)
        + "\r\n"
    )
    return head + "m=video" + video + extra


async def offer_from_aiortc(pc: aiortc.RTCPeerConnection) -> str:
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def test_a_simulcast_offer_is_answered_with_every_layer(loopback_only: None) -> None:
    added: list[Producer] = []
    publisher = Publisher("PA1", MediaConfig(), on_added=added.append, on_removed=lambda p: None)
    client = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    try:
        offer = with_simulcast(await offer_from_aiortc(client), ["h", "m", "l"])
        answer, producers = await publisher.negotiate(offer)
        video_answer = answer.split("m=video", 1)[1]
        for line in (
            f"a=extmap:10 {RID_URI}",
            f"a=extmap:11 {REPAIRED_RID_URI}",
            "a=rid:h recv",
            "a=rid:l recv",
            "a=simulcast:recv h;m;l",
        ):
            assert line in video_answer
        assert "a=simulcast" not in answer.split("m=video", 1)[0]
        video = next(p for p in producers if p.kind == "video")
        assert [layer.rid for layer in video.layers] == ["l", "m", "h"]
        assert publisher.ingress.rid_extension_id == 10
        assert publisher.ingress.repaired_rid_extension_id == 11
        # The client accepts the answer (it is well-formed SDP for aiortc too).
        await client.setRemoteDescription(aiortc.RTCSessionDescription(answer, "answer"))
    finally:
        await client.close()
        await publisher.close()


async def test_four_layers_are_refused_before_aiortc_sees_them(loopback_only: None) -> None:
    publisher = Publisher("PA1", MediaConfig(), on_added=lambda p: None, on_removed=lambda p: None)
    client = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    try:
        offer = with_simulcast(await offer_from_aiortc(client), ["a", "b", "c", "d"])
        with pytest.raises(SdpError, match="at most 3"):
            await publisher.negotiate(offer)
        assert publisher.pc is None
    finally:
        await client.close()
        await publisher.close()

"""Two-party calls for the operations tests: direct or relay-only (TURN), timed.

:class:`RelayOnlyParticipant` uses ``joined.ice_servers`` with ICE transport policy
``relay``: it gathers no host or server-reflexive candidate, so every packet of its
peer connections goes through the TURN server.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy
from helpers.media import FrameCounterTrack, collect, read_frame_counter

from signaling.client import Participant, SignalClient

__all__ = [
    "CallResult",
    "RelayOnlyParticipant",
    "join",
    "local_candidate_types",
    "timed_call",
]


class RelayOnlyParticipant(Participant):
    """Both peer connections use the server's ICE servers, relay candidates only."""

    def _configuration(self) -> RTCConfiguration:
        return RTCConfiguration(
            iceServers=list(self.ice_servers),
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )


async def join(
    url: str,
    token: str,
    *,
    relay: bool = False,
    tracks: list[MediaStreamTrack] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 15.0,
) -> Participant:
    """Join (over wss with ``ssl_context`` if given) and publish ``tracks``."""
    signal = await SignalClient.connect(url, timeout=timeout, ssl=ssl_context or True)
    cls = RelayOnlyParticipant if relay else Participant
    participant = cls(signal, use_server_ice_servers=relay, timeout=timeout)
    try:
        reply = await signal.request({"type": "join", "token": token}, timeout)
        assert reply["type"] == "joined", reply
        if tracks:
            await participant.publish(tracks, timeout=timeout)
    except BaseException:
        await participant.close()
        raise
    return participant


def local_candidate_types(pc: RTCPeerConnection | None) -> set[str]:
    """Types of the local ICE candidates a peer connection gathered."""
    if pc is None:
        return set()
    types: set[str] = set()
    for transceiver in pc.getTransceivers():
        transport: Any = transceiver.receiver.transport  # None before negotiation
        if transport is None:
            continue
        gatherer = transport.transport.iceGatherer
        types |= {candidate.type for candidate in gatherer.getLocalCandidates()}
    return types


@dataclass
class CallResult:
    setup_ms: float  # first join sent → first decoded frame at the other side
    publisher: Participant
    subscriber: Participant


async def timed_call(
    url: str,
    token_a: str,
    token_b: str,
    *,
    relay: bool,
    ssl_context: ssl.SSLContext | None = None,
) -> CallResult:
    """A publishes a frame-counter video, B receives it; both relay-only if ``relay``."""
    started = time.perf_counter()
    publisher = await join(
        url, token_a, relay=relay, tracks=[FrameCounterTrack()], ssl_context=ssl_context
    )
    subscriber = await join(url, token_b, relay=relay, ssl_context=ssl_context)
    try:
        remote = await subscriber.wait_remote_tracks(1, timeout=20.0)
        track = next(iter(remote.values()))
        frames = await collect(track, 1, timeout=20.0)
        setup_ms = (time.perf_counter() - started) * 1000
        assert read_frame_counter(frames[0]) is not None  # type: ignore[arg-type]
    except BaseException:
        await asyncio.gather(publisher.close(), subscriber.close(), return_exceptions=True)
        raise
    return CallResult(setup_ms, publisher, subscriber)

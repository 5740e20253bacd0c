"""Load-generator peers: a counting subscriber that never decodes, and a decoding probe."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from sfu import aiortc_bridge as bridge
from signaling.client import Participant

__all__ = [
    "CountingSubscriber",
    "PacketCounter",
    "join_counting_subscriber",
    "probe_first_frame",
    "sdp_payload_types",
]

_TAP_POLL_S = 0.002


@dataclass(slots=True)
class PacketCounter:
    """An RTP tap: counts packets and bytes (plain RTP) and notes first arrivals per PT."""

    packets: int = 0
    octets: int = 0
    first_at: dict[int, float] = field(default_factory=dict)
    """payload type -> ``time.perf_counter()`` of its first packet."""

    def __call__(self, packet: bytes) -> None:
        self.packets += 1
        self.octets += len(packet)
        payload_type = packet[1] & 0x7F
        if payload_type not in self.first_at:
            self.first_at[payload_type] = time.perf_counter()

    def first_of(self, payload_types: set[int]) -> float | None:
        times = [t for pt, t in self.first_at.items() if pt in payload_types]
        return min(times) if times else None


def sdp_payload_types(sdp: str, kind: str) -> set[int]:
    """Payload types listed on the ``m=<kind>`` lines of an SDP (port 0 lines skipped)."""
    found: set[int] = set()
    for line in sdp.splitlines():
        if not line.startswith(f"m={kind} "):
            continue
        words = line.split()
        if len(words) > 3 and words[1] != "0":
            found.update(int(w) for w in words[3:] if w.isdigit())
    return found


@dataclass(slots=True)
class CountingSubscriber:
    participant: Participant
    counter: PacketCounter
    join_started: float
    tapped_late: bool
    """True if DTLS was already up when the tap went in (a few packets may have been missed)."""

    def video_payload_types(self) -> set[int]:
        pc = self.participant.subscribe_pc
        if pc is None or pc.remoteDescription is None:
            return set()
        return sdp_payload_types(str(pc.remoteDescription.sdp), "video")

    def first_video_at(self) -> float | None:
        return self.counter.first_of(self.video_payload_types())


async def join_counting_subscriber(url: str, token: str, timeout: float) -> CountingSubscriber:
    """Join, then tap the subscribe PC as soon as it exists: received RTP is counted and
    swallowed (no jitter buffer, no decoder)."""
    started = time.perf_counter()
    participant = await Participant.join(url, token, timeout=timeout, renack=False)
    try:
        counter = PacketCounter()
        deadline = time.monotonic() + timeout
        while True:
            pc = participant.subscribe_pc
            if pc is not None and pc.getTransceivers():
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the server sent no subscribe offer")
            await asyncio.sleep(_TAP_POLL_S)
        late = bridge.dtls_transport(pc).state == "connected"
        bridge.tap_received_rtp(pc, counter, swallow=True)
    except BaseException:
        await participant.close()
        raise
    return CountingSubscriber(participant, counter, started, late)


async def probe_first_frame(url: str, token: str, video_track: str, timeout: float) -> float:
    """Milliseconds from calling ``join()`` to the first decoded frame of ``video_track``."""
    started = time.perf_counter()
    participant: Participant | None = None
    try:
        async with asyncio.timeout(timeout):
            participant = await Participant.join(url, token, timeout=timeout)
            tracks = await participant.wait_remote_tracks([video_track], timeout=timeout)
            await tracks[video_track].recv()
            return (time.perf_counter() - started) * 1000.0
    finally:
        if participant is not None:
            with contextlib.suppress(Exception):
                await participant.close()

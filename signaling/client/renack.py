"""Ask again for video packets that are still missing, as libwebrtc's NACK module does.

aiortc's receiver NACKs a hole once; if the retransmission is lost too (a congested link),
the hole stays until 512 packets have passed and the picture freezes for seconds. A
browser re-sends its NACK every round trip, up to ten times; this does the same for the
Python client, with the private access in :mod:`sfu.aiortc_bridge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiortc import RTCPeerConnection, RTCRtpReceiver

from sfu import aiortc_bridge as bridge

__all__ = ["RENACK_INTERVAL_S", "Renacker", "renack_forever"]

logger = logging.getLogger(__name__)

RENACK_INTERVAL_S = 0.1  # about a round trip on a loaded loopback or a LAN
MAX_TRIES = 10


class Renacker:
    """Which missing sequence numbers to ask for again (each at most ``max_tries`` times)."""

    def __init__(self, max_tries: int = MAX_TRIES) -> None:
        self.max_tries = max_tries
        self._tries: dict[int, int] = {}

    def due(self, missing: set[int]) -> list[int]:
        # Forget what arrived or what aiortc gave up on; count one more try for the rest.
        self._tries = {seq: n for seq, n in self._tries.items() if seq in missing}
        due = []
        for seq in missing:
            tries = self._tries.get(seq, 0)
            if tries < self.max_tries:
                self._tries[seq] = tries + 1
                due.append(seq)
        return sorted(due)


async def renack_forever(pc: RTCPeerConnection, interval_s: float = RENACK_INTERVAL_S) -> None:
    """Re-NACK every video receiver of ``pc`` each interval until the PC closes (or cancel)."""
    renackers: dict[int, Renacker] = {}
    while pc.connectionState != "closed":
        await asyncio.sleep(interval_s)
        for transceiver in pc.getTransceivers():
            receiver = transceiver.receiver
            if transceiver.kind != "video" or transceiver.currentDirection in (None, "inactive"):
                continue
            lost = renackers.setdefault(id(receiver), Renacker()).due(
                bridge.missing_packets(receiver)
            )
            ssrc = _media_ssrc(receiver)
            if lost and ssrc is not None:
                with contextlib.suppress(ConnectionError):
                    await bridge.send_nack(receiver, ssrc, lost)


def _media_ssrc(receiver: RTCRtpReceiver) -> int | None:
    sources = receiver.getSynchronizationSources()
    if not sources:
        return None
    return max(sources, key=lambda s: s.timestamp).source

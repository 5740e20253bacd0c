"""Ingress: the publish side of one participant's media path.

Routes unprotected RTP to producers by SSRC (learning unsignalled SSRCs from the MID
header extension), reads the publisher's sender reports, and gives the publisher the
feedback aiortc's bypassed receivers would have sent: receiver reports, REMB, NACKs
and throttled PLIs.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sfu.rtcp import (
    SenderReport,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    ntp_middle32,
    parse_rtcp,
)
from sfu.rtp import find_extension

if TYPE_CHECKING:
    from sfu.producer import Producer
    from sfu.transport import MediaTransport

__all__ = ["Ingress"]

_SSRC = struct.Struct("!I")
NACK_INTERVAL_S = 0.02
DEFAULT_REMB_BPS = 2_000_000
MAX_REMB_BPS = 4_000_000
MIN_REMB_BPS = 100_000
MAX_REPORT_BLOCKS = 31


class Ingress:
    """RTP/RTCP demultiplexer and feedback generator for one publish peer connection."""

    def __init__(self, *, on_stale: Callable[[Producer], None], stale_after_s: float) -> None:
        self.ssrc = random.getrandbits(32) or 1  # our RTCP sender SSRC
        self.transport: MediaTransport | None = None
        self.producers: list[Producer] = []
        self.mid_extension_id: int | None = None
        self.unknown_packets = 0
        self.nacks_sent = 0
        self._by_ssrc: dict[int, Producer] = {}
        self._by_rtx_ssrc: dict[int, Producer] = {}
        self._by_mid: dict[str, Producer] = {}
        self._on_stale = on_stale
        self._stale_after_s = stale_after_s
        self._nack_timer: asyncio.TimerHandle | None = None
        self._keyframe_timers: dict[Producer, asyncio.TimerHandle] = {}

    def add(self, producer: Producer) -> None:
        self.producers.append(producer)
        self._by_mid[producer.mid] = producer
        if producer.ssrc is not None:
            self._by_ssrc[producer.ssrc] = producer
        if producer.rtx_ssrc is not None:
            self._by_rtx_ssrc[producer.rtx_ssrc] = producer

    def remove(self, producer: Producer) -> None:
        timer = self._keyframe_timers.pop(producer, None)
        if timer is not None:
            timer.cancel()
        if producer in self.producers:
            self.producers.remove(producer)
        for table in (self._by_ssrc, self._by_rtx_ssrc):
            for ssrc in [s for s, p in table.items() if p is producer]:
                del table[ssrc]
        if self._by_mid.get(producer.mid) is producer:
            del self._by_mid[producer.mid]

    # --- media in -------------------------------------------------------------------

    def on_rtp(self, packet: bytes, now: float) -> None:
        ssrc = _SSRC.unpack_from(packet, 8)[0]
        producer = self._by_ssrc.get(ssrc)
        if producer is not None:
            producer.on_rtp(packet, now)
            return
        producer = self._by_rtx_ssrc.get(ssrc)
        if producer is not None:
            producer.on_rtx(packet, now)
            return
        self._learn(ssrc, packet, now)

    def _learn(self, ssrc: int, packet: bytes, now: float) -> None:
        """Bind an unsignalled SSRC to a producer through the MID header extension."""
        self.unknown_packets += 1
        if self.mid_extension_id is None:
            return
        value = find_extension(packet, self.mid_extension_id)
        producer = self._by_mid.get(value.decode("ascii", "replace")) if value else None
        if producer is None:
            return
        payload_type = packet[1] & 0x7F
        if payload_type == producer.codec.payload_type and producer.ssrc is None:
            producer.ssrc = ssrc
            self._by_ssrc[ssrc] = producer
            producer.on_rtp(packet, now)
        elif payload_type == producer.codec.rtx_payload_type and producer.rtx_ssrc is None:
            producer.rtx_ssrc = ssrc
            self._by_rtx_ssrc[ssrc] = producer
            producer.on_rtx(packet, now)

    def on_rtcp(self, packet: bytes, now: float) -> None:
        for message in parse_rtcp(packet):
            if isinstance(message, SenderReport):
                producer = self._by_ssrc.get(message.ssrc)
                if producer is not None:
                    producer.on_sender_report(message.ntp, message.rtp_ts, now)

    # --- feedback out ---------------------------------------------------------------

    def request_keyframe(self, producer: Producer) -> None:
        if self.transport is not None and producer.ssrc is not None:
            self.transport.send_rtcp(build_pli(self.ssrc, producer.ssrc))

    def retry_keyframe_request(self, producer: Producer, delay_s: float) -> None:
        def due() -> None:
            self._keyframe_timers.pop(producer, None)
            producer.keyframe_retry_due(time.monotonic())

        loop = asyncio.get_running_loop()
        self._keyframe_timers[producer] = loop.call_later(delay_s, due)

    def nack_pending(self, producer: Producer) -> None:
        self._arm_nack_timer()

    def _arm_nack_timer(self) -> None:
        """One timer for all producers, running only while packets are missing."""
        if self._nack_timer is None:
            loop = asyncio.get_running_loop()
            self._nack_timer = loop.call_later(NACK_INTERVAL_S, self._send_nacks)

    def _send_nacks(self) -> None:
        self._nack_timer = None
        if self.transport is None:
            return
        now = time.monotonic()
        pending = False
        for producer in self.producers:
            seqs = producer.nacks.due(now)
            if seqs and producer.ssrc is not None:
                self.transport.send_rtcp(build_nack(self.ssrc, producer.ssrc, seqs))
                self.nacks_sent += len(seqs)
            pending = pending or producer.nacks.pending()
        if pending:
            self._arm_nack_timer()

    def periodic(self, now: float) -> list[bytes]:
        """Receiver reports and REMB for every producer; flags silent producers."""
        for producer in list(self.producers):
            # A muted track may legitimately send nothing (camera switched off).
            if not producer.muted and now - producer.last_packet_at > self._stale_after_s:
                self._on_stale(producer)
            else:
                # A request can be lost (sent before the publisher's transport was up, or
                # the keyframe arrived before SRTP keys): keep asking while someone waits.
                producer.keyframe_overdue(now)
        blocks = []
        packets: list[bytes] = []
        for producer in self.producers:
            if producer.ssrc is None or producer.stats.packets_received == 0:
                continue
            clock = producer.sender_clock
            lsr = ntp_middle32(clock.ntp) if clock else 0
            dlsr = int((now - clock.received_at) * 65536) if clock else 0
            blocks.append(producer.stats.report_block(producer.ssrc, lsr, dlsr))
            if producer.kind == "video":
                packets.append(build_remb(self.ssrc, self._remb_for(producer), [producer.ssrc]))
        for i in range(0, len(blocks), MAX_REPORT_BLOCKS):
            packets.insert(0, build_rr(self.ssrc, blocks[i : i + MAX_REPORT_BLOCKS]))
        return packets

    @staticmethod
    def _remb_for(producer: Producer) -> int:
        """Ask for no more than the best subscriber can take (and a sane ceiling)."""
        estimates = [c.remb_bps for c in producer.consumers if c.remb_bps]
        wanted = max(estimates) if estimates else DEFAULT_REMB_BPS
        return max(MIN_REMB_BPS, min(MAX_REMB_BPS, wanted))

    def close(self) -> None:
        for timer in self._keyframe_timers.values():
            timer.cancel()
        self._keyframe_timers.clear()
        if self._nack_timer is not None:
            self._nack_timer.cancel()
            self._nack_timer = None
        self.transport = None

"""Ingress: the publish side of one participant's media path.

Routes unprotected RTP to producer layers by SSRC (learning unsignalled SSRCs from the
MID header extension, and simulcast layers from the RID / repaired-RID extensions),
reads the publisher's sender reports, and gives the publisher the feedback aiortc's
bypassed receivers would have sent: receiver reports, REMB, NACKs and throttled PLIs.
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
    from sfu.layers import Layer
    from sfu.producer import Producer
    from sfu.transport import MediaTransport

__all__ = ["SIMULCAST_REMB_BPS", "Ingress", "wanted_publish_rate"]

_SSRC = struct.Struct("!I")
NACK_INTERVAL_S = 0.02
DEFAULT_REMB_BPS = 2_000_000
SIMULCAST_REMB_BPS = 3_000_000  # room for all three layers of a 720p camera
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
        # RID / repaired-RID extension ids of simulcast offers (0: none offered).
        self.rid_extension_id = 0
        self.repaired_rid_extension_id = 0
        self.unknown_packets = 0
        self.nacks_sent = 0
        self._by_ssrc: dict[int, Layer] = {}
        self._by_rtx_ssrc: dict[int, Layer] = {}
        self._by_mid: dict[str, Producer] = {}
        self._on_stale = on_stale
        self._stale_after_s = stale_after_s
        self._nack_timer: asyncio.TimerHandle | None = None
        self._keyframe_timers: dict[Producer, asyncio.TimerHandle] = {}

    def add(self, producer: Producer) -> None:
        self.producers.append(producer)
        self._by_mid[producer.mid] = producer
        for layer in producer.layers:
            if layer.ssrc is not None:
                self._by_ssrc[layer.ssrc] = layer
            if layer.rtx_ssrc is not None:
                self._by_rtx_ssrc[layer.rtx_ssrc] = layer

    def remove(self, producer: Producer) -> None:
        timer = self._keyframe_timers.pop(producer, None)
        if timer is not None:
            timer.cancel()
        if producer in self.producers:
            self.producers.remove(producer)
        for table in (self._by_ssrc, self._by_rtx_ssrc):
            for ssrc in [s for s, layer in table.items() if layer.producer is producer]:
                del table[ssrc]
        if self._by_mid.get(producer.mid) is producer:
            del self._by_mid[producer.mid]

    # --- media in -------------------------------------------------------------------

    def on_rtp(self, packet: bytes, now: float) -> None:
        ssrc = _SSRC.unpack_from(packet, 8)[0]
        layer = self._by_ssrc.get(ssrc)
        if layer is not None:
            layer.producer.on_rtp(packet, now, layer)
            return
        layer = self._by_rtx_ssrc.get(ssrc)
        if layer is not None:
            layer.producer.on_rtx(packet, now, layer)
            return
        self._learn(ssrc, packet, now)

    def _learn(self, ssrc: int, packet: bytes, now: float) -> None:
        """Bind an unsignalled SSRC to a producer layer through the MID and RID extensions.

        A simulcast publisher names each layer with the RID extension (its retransmission
        stream with the repaired RID) in the first packets of each SSRC.
        """
        self.unknown_packets += 1
        if self.mid_extension_id is None:
            return
        value = find_extension(packet, self.mid_extension_id)
        producer = self._by_mid.get(value.decode("ascii", "replace")) if value else None
        if producer is None:
            return
        payload_type = packet[1] & 0x7F
        rtx = payload_type == producer.codec.rtx_payload_type
        if not rtx and payload_type != producer.codec.payload_type:
            return
        layer = producer.layers[0]
        if producer.simulcast:
            ext_id = self.repaired_rid_extension_id if rtx else self.rid_extension_id
            rid = find_extension(packet, ext_id) if ext_id else None
            if rid is None and rtx:
                rid = find_extension(packet, self.rid_extension_id)  # some senders reuse it
            named = [
                x
                for x in producer.layers
                if rid is not None and x.rid == rid.decode("ascii", "replace")
            ]
            if not named:
                return
            layer = named[0]
        if not rtx and layer.ssrc is None:
            layer.ssrc = ssrc
            self._by_ssrc[ssrc] = layer
            producer.on_rtp(packet, now, layer)
        elif rtx and layer.rtx_ssrc is None:
            layer.rtx_ssrc = ssrc
            self._by_rtx_ssrc[ssrc] = layer
            producer.on_rtx(packet, now, layer)

    def on_rtcp(self, packet: bytes, now: float) -> None:
        for message in parse_rtcp(packet):
            if isinstance(message, SenderReport):
                layer = self._by_ssrc.get(message.ssrc)
                if layer is not None:
                    layer.producer.on_sender_report(message.ntp, message.rtp_ts, now, layer)

    # --- feedback out ---------------------------------------------------------------

    def request_keyframe(self, producer: Producer, layer: Layer) -> None:
        if self.transport is not None and layer.ssrc is not None:
            self.transport.send_rtcp(build_pli(self.ssrc, layer.ssrc))

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
            for layer in producer.layers:
                seqs = layer.nacks.due(now)
                if seqs and layer.ssrc is not None:
                    self.transport.send_rtcp(build_nack(self.ssrc, layer.ssrc, seqs))
                    self.nacks_sent += len(seqs)
                pending = pending or layer.nacks.pending()
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
            ssrcs = []
            for layer in producer.layers:
                layer.measure(now)
                if layer.ssrc is None or layer.stats.packets_received == 0:
                    continue
                clock = layer.sender_clock
                lsr = ntp_middle32(clock.ntp) if clock else 0
                dlsr = int((now - clock.received_at) * 65536) if clock else 0
                blocks.append(layer.stats.report_block(layer.ssrc, lsr, dlsr))
                ssrcs.append(layer.ssrc)
            if producer.kind == "video" and ssrcs:
                packets.append(build_remb(self.ssrc, self._remb_for(producer), ssrcs))
        for i in range(0, len(blocks), MAX_REPORT_BLOCKS):
            packets.insert(0, build_rr(self.ssrc, blocks[i : i + MAX_REPORT_BLOCKS]))
        return packets

    @staticmethod
    def _remb_for(producer: Producer) -> int:
        """Ask for no more than the best subscriber can take (and a sane ceiling).

        For simulcast, each consumer's bandwidth budget (None: not limited) is used.
        """
        if producer.simulcast:
            budgets = [c.budget_bps for c in producer.consumers]
            best = None if not budgets or None in budgets else max(b or 0 for b in budgets)
            return wanted_publish_rate(producer, best)
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


def wanted_publish_rate(producer: Producer, best_subscriber_bps: int | None) -> int:
    """REMB for a simulcast producer: what the best subscriber takes, plus the layers below.

    The publisher encodes every layer at once, so a subscriber able to take ``x`` bit/s
    needs ``x`` for its layer on top of the lower ones. Without a subscriber estimate,
    room for all layers; never so little that the base layer stops.
    """
    if best_subscriber_bps is None:
        return SIMULCAST_REMB_BPS
    below = 0
    for layer in producer.layers:
        if layer.bitrate_bps >= best_subscriber_bps:
            break
        below += layer.bitrate_bps
    floor = max(MIN_REMB_BPS, 2 * producer.layers[0].bitrate_bps)
    return max(floor, min(SIMULCAST_REMB_BPS, best_subscriber_bps + below))

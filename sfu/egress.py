"""Egress: the subscribe side of one participant's media path.

Consumers write RTP straight to the transport; this routes the subscriber's RTCP
(NACK, PLI/FIR, receiver reports, REMB) back to them, sends their sender reports and, at
the same pace, lets simulcast consumers re-choose their layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sfu.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    SenderReport,
    parse_rtcp,
)

if TYPE_CHECKING:
    from sfu.consumer import Consumer
    from sfu.peer_connection import ReportObserver

__all__ = ["Egress"]


class Egress:
    """RTCP demultiplexer and sender-report source for one subscribe peer connection."""

    def __init__(self, observe_report: ReportObserver | None = None) -> None:
        self.consumers: dict[int, Consumer] = {}  # by our media SSRC
        self.unexpected_rtp = 0
        self.nacks_received = 0  # sequence numbers asked for
        self.plis_received = 0
        self.firs_received = 0
        self._observe_report = observe_report

    def add(self, consumer: Consumer) -> None:
        self.consumers[consumer.ssrc] = consumer

    def remove(self, consumer: Consumer) -> None:
        if self.consumers.get(consumer.ssrc) is consumer:
            del self.consumers[consumer.ssrc]

    def on_rtp(self, packet: bytes, now: float) -> None:
        self.unexpected_rtp += 1  # subscribe PCs are send-only on our side

    def on_rtcp(self, packet: bytes, now: float) -> None:
        consumers = self.consumers
        for message in parse_rtcp(packet):
            if isinstance(message, Nack):
                self.nacks_received += len(message.seqs)
                consumer = consumers.get(message.media_ssrc)
                if consumer is not None:
                    consumer.on_nack(message.seqs)
            elif isinstance(message, Pli):
                self.plis_received += 1
                consumer = consumers.get(message.media_ssrc)
                if consumer is not None:
                    consumer.on_keyframe_request(now)
            elif isinstance(message, Fir):
                self.firs_received += 1
                for ssrc, _ in message.entries:
                    consumer = consumers.get(ssrc)
                    if consumer is not None:
                        consumer.on_keyframe_request(now)
            elif isinstance(message, ReceiverReport | SenderReport):
                for block in message.reports:
                    consumer = consumers.get(block.ssrc)
                    if consumer is not None:
                        consumer.on_report(block, now)
                        self._observe(consumer, block)
            elif isinstance(message, Remb):
                for ssrc in message.ssrcs:
                    consumer = consumers.get(ssrc)
                    if consumer is not None:
                        consumer.on_remb(message.bitrate, now)

    def _observe(self, consumer: Consumer, block: ReportBlock) -> None:
        """Feed the /metrics RTT, jitter and loss histograms (RTCP rate: about 1/s)."""
        if self._observe_report is not None:
            rate = consumer.producer.codec.clock_rate or 90_000
            self._observe_report(
                consumer.kind, consumer.rtt_s, block.jitter / rate, block.fraction_lost / 256
            )

    def periodic(self, now: float) -> list[bytes]:
        for consumer in self.consumers.values():
            consumer.adapt(now)  # simulcast layer choice, at the RTCP pace
        reports = (consumer.sender_report(now) for consumer in self.consumers.values())
        return [report for report in reports if report is not None]

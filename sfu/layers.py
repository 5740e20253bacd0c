"""Layer: one RTP stream of a producer (the only one, or one simulcast encoding).

Everything that belongs to one SSRC lives here: receive statistics, NACK state, the packet
cache retransmissions and replays are served from, the last keyframe, the sender clock, and
a bitrate figure for layer choice. A producer without simulcast has exactly one layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sfu.packet_cache import PacketCache
from sfu.receive_stats import NackTracker, ReceiveStats

if TYPE_CHECKING:
    from sfu.producer import Producer

__all__ = ["Layer", "SenderClock", "vp8_keyframe_size"]

BITRATE_WINDOW_S = 1.0  # the bitrate figure is re-measured about once per window


@dataclass(slots=True)
class SenderClock:
    """The publisher's last sender report: its NTP time for an RTP timestamp."""

    ntp: int
    rtp_ts: int
    received_at: float


class Layer:
    """One incoming RTP stream; ``index`` 0 is the lowest quality."""

    __slots__ = (
        "_last_window_bps",
        "_window_octets",
        "_window_start",
        "bitrate_bps",
        "cache",
        "height",
        "index",
        "keyframe_seq",
        "last_keyframe_at",
        "last_keyframe_request_at",
        "last_packet_at",
        "nacks",
        "octets",
        "pic_id",
        "producer",
        "rid",
        "rtx_ssrc",
        "sender_clock",
        "ssrc",
        "stats",
        "tl0",
        "width",
    )

    def __init__(
        self,
        producer: Producer,
        index: int,
        *,
        rid: str | None,
        ssrc: int | None,
        rtx_ssrc: int | None,
        clock_rate: int,
        cache_packets: int,
    ) -> None:
        self.producer = producer
        self.index = index
        self.rid = rid
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.stats = ReceiveStats(clock_rate)
        self.nacks = NackTracker()
        self.cache = PacketCache(cache_packets)
        self.sender_clock: SenderClock | None = None
        self.last_packet_at = -1e9
        self.last_keyframe_at = -1.0
        self.keyframe_seq = -1  # sequence number of the last keyframe's first packet
        self.last_keyframe_request_at = -1e9
        self.octets = 0
        self.bitrate_bps = 0
        self._window_start = 0.0
        self._window_octets = 0  # octets at the window start
        self._last_window_bps = 0
        # Last VP8 picture id / TL0PICIDX seen (-1: none), for continuous numbering on a switch.
        self.pic_id = -1
        self.tl0 = -1
        self.width = 0  # from the last keyframe's header (VP8), 0 when unknown
        self.height = 0

    def measure(self, now: float) -> None:
        """Refresh the bitrate figure from the octets counted since the last call (about 1/s).

        The larger of the last two windows: encoders swing (keyframes, CPU adaptation) and a
        layer choice made on a dip would not fit a second later.
        """
        elapsed = now - self._window_start
        if elapsed < BITRATE_WINDOW_S / 2:
            return
        measured = int((self.octets - self._window_octets) * 8 / elapsed) if elapsed < 3 else 0
        self.bitrate_bps = max(measured, self._last_window_bps)
        self._last_window_bps = measured
        self._window_start = now
        self._window_octets = self.octets

    def active(self, now: float, silence_s: float = 1.0) -> bool:
        """Packets arrived lately (a publisher drops its upper layers when its link is thin)."""
        return now - self.last_packet_at < silence_s


def vp8_keyframe_size(payload: bytes | memoryview, descriptor_end: int) -> tuple[int, int]:
    """(width, height) from a VP8 keyframe's uncompressed header, (0, 0) if not readable.

    RFC 6386 §9.1: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
    """
    p = descriptor_end
    if len(payload) < p + 10 or payload[p + 3 : p + 6] != b"\x9d\x01\x2a":
        return 0, 0
    width = (payload[p + 6] | (payload[p + 7] << 8)) & 0x3FFF
    height = (payload[p + 8] | (payload[p + 9] << 8)) & 0x3FFF
    return width, height

"""Consumer: one outgoing copy of a producer for one subscriber.

A consumer owns the subscriber-side numbering: its SSRC, payload type, and the offsets
that map the producer's sequence numbers and timestamps into a continuous stream for
the subscriber. Video starts (and restarts after a pause) on a keyframe, so a decoder
never sees a stream it cannot decode.
"""

from __future__ import annotations

import enum
import random
import struct
from typing import TYPE_CHECKING

from sfu.rtcp import ReportBlock, build_sdes, build_sr, ntp_middle32, ntp_now
from sfu.rtp import rtx_wrap, seq_diff

if TYPE_CHECKING:
    from sfu.producer import Producer
    from sfu.transport import MediaTransport

__all__ = ["Consumer", "ConsumerState"]

_TIMESTAMP = struct.Struct("!I")
_REWRITE = struct.Struct("!BHII")
NTP_UNITS = 1 << 32
_NACK_WINDOW = 0x4000  # far more than the packet cache holds


class ConsumerState(enum.Enum):
    NEGOTIATING = "negotiating"  # m-line offered, subscriber has not answered yet
    WAITING_KEYFRAME = "waiting_keyframe"
    FORWARDING = "forwarding"
    CLOSED = "closed"


class Consumer:
    """Forwards one producer to one subscriber over that subscriber's transport."""

    def __init__(
        self,
        producer: Producer,
        *,
        subscriber_id: str,
        transport: MediaTransport,
        ssrc: int,
        rtx_ssrc: int,
        cname: str,
    ) -> None:
        self.producer = producer
        self.subscriber_id = subscriber_id
        self.transport = transport
        self.kind = producer.kind
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.cname = cname
        self.payload_type = -1
        self.rtx_payload_type: int | None = None
        self.state = ConsumerState.NEGOTIATING
        self.paused = False
        # Random origins (RFC 3550 §5.1) and the offsets that produce them.
        self.next_seq = random.getrandbits(16)
        self.ts_offset = random.getrandbits(32)
        self.seq_offset = 0
        self.segment_start = self.next_seq
        self.last_seq = (self.next_seq - 1) & 0xFFFF
        self.last_ts = 0
        self.rtx_seq = random.getrandbits(16)
        self.packets = 0
        self.octets = 0
        self.retransmitted = 0
        self.retransmitted_octets = 0
        self.keyframe_waits = 0
        self._drop_to_frame_end = False
        self._timeline_after: int | None = None  # set when taking over a reused m-line
        # From the subscriber's reports.
        self.fraction_lost = 0
        self.jitter = 0
        self.rtt_s: float | None = None
        self.remb_bps: int | None = None
        self._last_sr: tuple[int, float] | None = None  # (middle 32 bits of NTP, sent at)

    # --- negotiation ----------------------------------------------------------------

    def start(self, payload_type: int, rtx_payload_type: int | None, now: float) -> None:
        """The subscriber accepted the m-line and DTLS is up: start forwarding."""
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        if self.state is ConsumerState.NEGOTIATING:
            self.state = ConsumerState.WAITING_KEYFRAME  # even if paused: resume starts it
            self._wait_for_keyframe(now)

    @property
    def awaiting_keyframe(self) -> bool:
        return self.state is ConsumerState.WAITING_KEYFRAME and not self.paused

    def follow(self, previous: Consumer) -> None:
        """Take over a reused m-line: same SSRC, numbering continues where it stopped.

        The subscriber's receiver for this SSRC then sees one continuous stream (no
        sequence jump to misread as loss, timestamps moving forward).
        """
        self.next_seq = (previous.last_seq + 1) & 0xFFFF
        self.last_seq = previous.last_seq
        self.segment_start = self.next_seq
        self.rtx_seq = previous.rtx_seq
        self._timeline_after = previous.last_ts if previous.packets else None

    def set_paused(self, paused: bool, now: float) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            self._suspend()
        elif self.state is not ConsumerState.NEGOTIATING:
            self._wait_for_keyframe(now)

    def hold(self) -> None:
        """The producer was muted: keep our numbering continuous for the restart."""
        self._suspend()

    def restart(self, now: float) -> None:
        """The producer was unmuted: restart cleanly on the next keyframe."""
        if self.state is ConsumerState.WAITING_KEYFRAME:
            self._wait_for_keyframe(now)

    def _suspend(self) -> None:
        if self.state is ConsumerState.FORWARDING:
            self.next_seq = (self.last_seq + 1) & 0xFFFF
            self.state = ConsumerState.WAITING_KEYFRAME

    def _wait_for_keyframe(self, now: float) -> None:
        if self.paused or self.state is ConsumerState.CLOSED:
            return
        self.state = ConsumerState.WAITING_KEYFRAME
        self.keyframe_waits += 1
        if not self.producer.replay_keyframe(self, now):
            self.producer.request_keyframe(now)

    # --- hot path -----------------------------------------------------------------

    def forward(self, packet: bytes, seq: int, ts: int, keyframe: bool) -> None:
        if self.state is not ConsumerState.FORWARDING:
            if not keyframe or self.state is not ConsumerState.WAITING_KEYFRAME or self.paused:
                return
            # First packet of a keyframe: continue our numbering from here.
            self.seq_offset = (self.next_seq - seq) & 0xFFFF
            self.segment_start = self.next_seq
            if self._timeline_after is not None:
                step = self.producer.codec.clock_rate // 50  # 20 ms after the last stamp
                self.ts_offset = (self._timeline_after + step - ts) & 0xFFFFFFFF
                self._timeline_after = None
            self.state = ConsumerState.FORWARDING
            self._drop_to_frame_end = False
        second = packet[1]
        if self._drop_to_frame_end:
            if second & 0x80:
                self._drop_to_frame_end = False
            return
        out_seq = (seq + self.seq_offset) & 0xFFFF
        # Signed 16-bit distances (seq_diff, inlined on the hot path).
        ahead = ((out_seq - self.last_seq + 0x8000) & 0xFFFF) - 0x8000
        if ahead <= 0 and ((out_seq - self.segment_start + 0x8000) & 0xFFFF) < 0x8000:
            return  # a straggler from before this segment would reuse a sent number
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        if self.transport.send_rtp(
            packet, (second & 0x80) | self.payload_type, out_seq, out_ts, self.ssrc
        ):
            self.packets += 1
            self.octets += self.producer.last_payload_size
            if ahead > 0:  # late packets (incl. repaired ones) never move us backwards
                self.last_seq = out_seq
                self.last_ts = out_ts
                if ((out_seq - self.segment_start) & 0xFFFF) > _NACK_WINDOW:
                    # Keep the NACK window meaningful on long streams (no 16-bit wrap).
                    self.segment_start = (out_seq - _NACK_WINDOW) & 0xFFFF
        elif self.kind == "video" and not second & 0x80:
            # Queue full: skip the rest of this frame rather than send half of it late.
            self._drop_to_frame_end = True

    # --- feedback from the subscriber ---------------------------------------------

    def on_nack(self, seqs: tuple[int, ...]) -> int:
        """Retransmit from the producer's cache (RTX when negotiated); returns count."""
        if self.state is not ConsumerState.FORWARDING:
            return 0
        sent = 0
        cache = self.producer.cache
        for out_seq in seqs:
            if seq_diff(out_seq, self.segment_start) < 0 or seq_diff(out_seq, self.last_seq) > 0:
                continue  # not ours to resend (before this segment or never sent)
            in_seq = (out_seq - self.seq_offset) & 0xFFFF
            packet = cache.get(in_seq)
            if packet is None:
                continue
            out_ts = (_TIMESTAMP.unpack_from(packet, 4)[0] + self.ts_offset) & 0xFFFFFFFF
            second = (packet[1] & 0x80) | self.payload_type
            if self.rtx_payload_type is None:
                ok = self.transport.send_rtp(packet, second, out_seq, out_ts, self.ssrc)
            else:
                ok = self._send_rtx(packet, second, out_seq, out_ts)
            if ok:
                sent += 1
                self.retransmitted_octets += len(packet) - 12
        self.retransmitted += sent
        return sent

    def _send_rtx(self, packet: bytes, second: int, out_seq: int, out_ts: int) -> bool:
        assert self.rtx_payload_type is not None
        rewritten = bytearray(packet)
        _REWRITE.pack_into(rewritten, 1, second, out_seq, out_ts, self.ssrc)
        rtx = rtx_wrap(bytes(rewritten), self.rtx_ssrc, self.rtx_payload_type, self.rtx_seq)
        if rtx is None:
            return False
        seq = self.rtx_seq
        if not self.transport.send_rtp(rtx, rtx[1], seq, out_ts, self.rtx_ssrc):
            return False
        self.rtx_seq = (seq + 1) & 0xFFFF
        return True

    def on_keyframe_request(self, now: float) -> None:
        self.producer.request_keyframe(now)

    def on_report(self, block: ReportBlock, now: float) -> None:
        self.fraction_lost = block.fraction_lost
        self.jitter = block.jitter
        if self._last_sr is not None and block.lsr == self._last_sr[0] and block.lsr:
            self.rtt_s = max(0.0, now - self._last_sr[1] - block.dlsr / 65536)

    def on_remb(self, bitrate: int) -> None:
        self.remb_bps = bitrate

    # --- reports --------------------------------------------------------------------

    def sender_report(self, now: float) -> bytes | None:
        """SR + SDES, with the publisher's NTP↔RTP mapping translated (lip sync)."""
        if self.state is ConsumerState.NEGOTIATING or self.packets == 0:
            return None
        producer = self.producer
        rate = producer.codec.clock_rate
        clock = producer.sender_clock
        if clock is not None:
            elapsed = now - clock.received_at
            ntp = clock.ntp + int(elapsed * NTP_UNITS)
            rtp_ts = (clock.rtp_ts + self.ts_offset + int(elapsed * rate)) & 0xFFFFFFFF
        else:
            # No SR from the publisher yet: anchor on the last packet we forwarded.
            ntp = ntp_now()
            rtp_ts = (self.last_ts + int((now - producer.last_packet_at) * rate)) & 0xFFFFFFFF
        self._last_sr = (ntp_middle32(ntp), now)
        return build_sr(
            self.ssrc, ntp, rtp_ts, self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF
        ) + build_sdes(self.ssrc, self.cname)

    def producer_closed(self) -> None:
        self.state = ConsumerState.CLOSED

    def close(self) -> None:
        if self.state is ConsumerState.CLOSED:
            return
        self.state = ConsumerState.CLOSED
        self.producer.remove_consumer(self)

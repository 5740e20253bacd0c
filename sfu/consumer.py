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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from sfu.bandwidth import BandwidthEstimator
from sfu.layer_choice import LayerInfo, Preference, choose_layer, preferred_layer
from sfu.rtcp import ReportBlock, build_sdes, build_sr, ntp_middle32, ntp_now
from sfu.rtp import payload_offset, rtx_wrap, seq_diff, ts_diff
from sfu.vp8 import read_descriptor, rewrite_descriptor

if TYPE_CHECKING:
    from sfu.producer import Producer
    from sfu.transport import MediaTransport

__all__ = ["Consumer", "ConsumerState"]

log = structlog.get_logger(__name__)

_TIMESTAMP = struct.Struct("!I")
_REWRITE = struct.Struct("!BHII")
NTP_UNITS = 1 << 32
_NACK_WINDOW = 0x4000  # far more than the packet cache holds
UP_SWITCH_HOLD_S = 3.0  # a higher layer is taken at most this often (down: at once)


@dataclass(frozen=True, slots=True)
class _Segment:
    """How one run of forwarded packets maps a layer's numbers to ours: [start, end)."""

    layer: int
    seq_offset: int
    ts_offset: int
    start: int
    end: int
    pic_delta: int
    tl0_delta: int

    def holds(self, out_seq: int) -> bool:
        return 0 <= seq_diff(out_seq, self.start) < seq_diff(self.end, self.start)


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
        # The layer whose packets go out untouched (-2: none); the one test on the hot path.
        self._passing = -2
        self._state = ConsumerState.NEGOTIATING
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
        # Simulcast: the layer forwarded (-1 before the first) and the one wanted (-1: none
        # fits, video waits). A switch happens on the target layer's next keyframe.
        self.layer = -1
        self.target_layer = 0
        self.switches = 0
        self.last_switch_s: float | None = None  # target set -> first packet of its keyframe
        self._target_set_at = 0.0
        # VP8 picture id / TL0PICIDX shifts that keep numbering continuous across switches.
        self.pic_delta = 0
        self.tl0_delta = 0
        self._rewrite_vp8 = False
        self._previous: _Segment | None = None  # before the last switch, for NACKs
        self.preference = Preference()  # from track.settings
        self._chosen_for = self.preference  # the preference the target was chosen for
        self.estimator = BandwidthEstimator()
        if producer.simulcast:
            self.target_layer = len(producer.layers) - 1
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
    def state(self) -> ConsumerState:
        return self._state

    @state.setter
    def state(self, value: ConsumerState) -> None:
        self._state = value
        forwarding = value is ConsumerState.FORWARDING and not self._rewrite_vp8
        self._passing = self.layer if forwarding else -2

    @property
    def awaiting_keyframe(self) -> bool:
        return self.state is ConsumerState.WAITING_KEYFRAME and not self.paused

    @property
    def awaited_layer(self) -> int:
        """The layer whose keyframe this consumer waits for (to start or switch), else -1."""
        if self.paused or self.target_layer < 0:
            return -1
        if self.state is ConsumerState.WAITING_KEYFRAME:
            return self.target_layer
        if self.state is ConsumerState.FORWARDING and self.target_layer != self.layer:
            return self.target_layer
        return -1

    def set_target_layer(self, index: int, now: float) -> None:
        """Forward layer ``index`` from its next keyframe on (-1: no layer fits, hold video)."""
        if index == self.target_layer:
            return
        self.target_layer = index
        self._target_set_at = now
        if index < 0:
            self._suspend()
        elif self.state is ConsumerState.FORWARDING:
            if index != self.layer and not self.paused:
                self.producer.request_keyframe(now, index)
        elif self.state is ConsumerState.WAITING_KEYFRAME:
            self._wait_for_keyframe(now)

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
        if self.paused or self.state is ConsumerState.CLOSED or self.target_layer < 0:
            return
        self.state = ConsumerState.WAITING_KEYFRAME
        self.keyframe_waits += 1
        if not self.producer.replay_keyframe(self, now, self.target_layer):
            self.producer.request_keyframe(now, self.target_layer)

    # --- hot path -----------------------------------------------------------------

    def forward(self, packet: bytes, seq: int, ts: int, keyframe: bool, layer: int = 0) -> None:
        if layer != self._passing:
            entered = self._enter(packet, seq, ts, keyframe, layer)
            if entered is None:
                return
            packet = entered
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

    def _enter(self, packet: bytes, seq: int, ts: int, keyframe: bool, layer: int) -> bytes | None:
        """Not a packet to pass as is: drop it, start or switch on it, or renumber its VP8."""
        state = self._state
        if layer != self.layer or state is not ConsumerState.FORWARDING:
            # Another layer's packet, or not forwarding: only the target's keyframe starts.
            if not keyframe or layer != self.target_layer or self.paused:
                return None
            if state is ConsumerState.FORWARDING:
                self.next_seq = (self.last_seq + 1) & 0xFFFF  # a switch: numbering goes on
            elif state is not ConsumerState.WAITING_KEYFRAME:
                return None
            self._begin_segment(packet, seq, ts, layer)
        if self._rewrite_vp8:
            return rewrite_descriptor(
                packet, payload_offset(packet), self.pic_delta, self.tl0_delta
            )
        return packet

    def _begin_segment(self, packet: bytes, seq: int, ts: int, layer: int) -> None:
        """First packet of a keyframe: continue our numbering from here (once per start)."""
        if self.layer >= 0 and self.packets:
            self._previous = _Segment(
                self.layer,
                self.seq_offset,
                self.ts_offset,
                self.segment_start,
                self.next_seq,
                self.pic_delta,
                self.tl0_delta,
            )
        self.seq_offset = (self.next_seq - seq) & 0xFFFF
        self.segment_start = self.next_seq
        rate = self.producer.codec.clock_rate
        if self._timeline_after is not None:
            step = rate // 50  # 20 ms after the last stamp
            self.ts_offset = (self._timeline_after + step - ts) & 0xFFFFFFFF
            self._timeline_after = None
        elif self.layer >= 0 and layer != self.layer:
            self.ts_offset = self._switched_ts_offset(layer, ts, rate)
            self._continue_vp8(packet, layer)
            self.switches += 1
            self.last_switch_s = time.monotonic() - self._target_set_at
        self.layer = layer
        self.state = ConsumerState.FORWARDING
        self._drop_to_frame_end = False

    def _switched_ts_offset(self, layer: int, ts: int, rate: int) -> int:
        """Offset mapping the new layer's timestamps onto ours.

        Layers have unrelated RTP clocks; their sender reports tie both to NTP, which keeps
        lip sync exact. Without them (or if that would step backwards), one frame on.
        """
        new = self.producer.layers[layer].sender_clock
        old = self.producer.layers[self.layer].sender_clock
        if new is not None and old is not None:
            new_at_old = new.rtp_ts + int((old.ntp - new.ntp) / NTP_UNITS * rate)
            offset = (old.rtp_ts + self.ts_offset - new_at_old) & 0xFFFFFFFF
            step = ts_diff((ts + offset) & 0xFFFFFFFF, self.last_ts)
            if 0 < step < rate:
                return offset
        return (self.last_ts + rate // 30 - ts) & 0xFFFFFFFF

    def _continue_vp8(self, packet: bytes, layer: int) -> None:
        """Shift the new layer's picture ids so they follow the last one forwarded."""
        if not self.producer._simulcast_vp8:
            return
        old = self.producer.layers[self.layer]
        pic_id, _, tl0, _ = read_descriptor(packet, payload_offset(packet))
        if pic_id >= 0 and old.pic_id >= 0:
            self.pic_delta = (old.pic_id + self.pic_delta + 1 - pic_id) & 0x7FFF
        if tl0 >= 0 and old.tl0 >= 0:
            self.tl0_delta = (old.tl0 + self.tl0_delta + 1 - tl0) & 0xFF
        self._rewrite_vp8 = bool(self.pic_delta or self.tl0_delta)

    # --- feedback from the subscriber ---------------------------------------------

    def on_nack(self, seqs: tuple[int, ...]) -> int:
        """Retransmit from the producer's cache (RTX when negotiated); returns count.

        The segment before the last layer switch is still served: the tail of the old
        layer's last frame may be what the subscriber lost.
        """
        if self.state is not ConsumerState.FORWARDING:
            return 0
        sent = 0
        layers = self.producer.layers
        current = _Segment(
            max(self.layer, 0),
            self.seq_offset,
            self.ts_offset,
            self.segment_start,
            (self.last_seq + 1) & 0xFFFF,
            self.pic_delta,
            self.tl0_delta,
        )
        for out_seq in seqs:
            segment = current
            if not current.holds(out_seq):
                previous = self._previous
                if previous is None or not previous.holds(out_seq):
                    continue  # not ours to resend (never sent, or too long ago)
                segment = previous
            in_seq = (out_seq - segment.seq_offset) & 0xFFFF
            packet = layers[segment.layer].cache.get(in_seq)
            if packet is None:
                continue
            if segment.pic_delta or segment.tl0_delta:
                packet = rewrite_descriptor(
                    packet, payload_offset(packet), segment.pic_delta, segment.tl0_delta
                )
            out_ts = (_TIMESTAMP.unpack_from(packet, 4)[0] + segment.ts_offset) & 0xFFFFFFFF
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
        self.producer.request_keyframe(now, self.layer if self.layer >= 0 else self.target_layer)

    def on_report(self, block: ReportBlock, now: float) -> None:
        self.fraction_lost = block.fraction_lost
        self.jitter = block.jitter
        if self._last_sr is not None and block.lsr == self._last_sr[0] and block.lsr:
            self.rtt_s = max(0.0, now - self._last_sr[1] - block.dlsr / 65536)
        if self.state is ConsumerState.FORWARDING or self.target_layer < 0:
            # Held for lack of bandwidth, clean reports are what lets video come back.
            self.estimator.on_sent(self.octets, now)
            self.estimator.on_report(block.fraction_lost, now)

    def on_remb(self, bitrate: int, now: float | None = None) -> None:
        self.remb_bps = bitrate
        self.estimator.on_remb(bitrate, time.monotonic() if now is None else now)

    # --- layer choice (simulcast) ------------------------------------------------

    @property
    def budget_bps(self) -> int | None:
        """What this subscriber's link can take for this stream (None: not limited)."""
        return self.estimator.budget_bps

    def set_preference(self, preference: Preference, now: float) -> None:
        self.preference = preference
        self.adapt(now)

    def adapt(self, now: float) -> None:
        """Re-choose the layer from the preference and the link budget (about once a second).

        Only simulcast tracks have a choice; a single-layer track is never paused here (its
        publisher is asked, through REMB, to send less instead).
        """
        producer = self.producer
        if not producer.simulcast or self.state is ConsumerState.CLOSED:
            return
        layers = [
            LayerInfo(layer.active(now), layer.bitrate_bps, layer.width, layer.height)
            for layer in producer.layers
        ]
        target = choose_layer(
            layers,
            preferred_layer(layers, self.preference),
            self.budget_bps,
            current=self.layer if self.state is ConsumerState.FORWARDING else -1,
            favour_resolution=producer.favour_resolution,
        )
        if (
            0 <= self.target_layer < target
            and now - self._target_set_at < UP_SWITCH_HOLD_S
            and self.preference == self._chosen_for
        ):
            return  # going up again so soon would only cost keyframes
        self._chosen_for = self.preference
        if target != self.target_layer:
            log.info(
                "layer_target",
                track=producer.id,
                subscriber=self.subscriber_id,
                layer=target,
                was=self.target_layer,
                budget_bps=self.budget_bps,
                sent_bps=self.estimator.sent_bps,
                remb_bps=self.remb_bps,
                loss=self.fraction_lost,
                rates=[layer.bitrate_bps for layer in layers],
            )
        self.set_target_layer(target, now)

    # --- reports --------------------------------------------------------------------

    def sender_report(self, now: float) -> bytes | None:
        """SR + SDES, with the publisher's NTP↔RTP mapping translated (lip sync)."""
        if self.state is ConsumerState.NEGOTIATING or self.packets == 0:
            return None
        producer = self.producer
        rate = producer.codec.clock_rate
        clock = producer.layers[max(self.layer, 0)].sender_clock
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

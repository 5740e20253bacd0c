"""RTP payloads back into whole encoded frames, without decoding.

* Opus (RFC 7587): one packet is one frame.
* VP8 (RFC 7741): strip each packet's payload descriptor and join a frame's packets; a frame
  starts with S=1, PID=0 and ends at the marker; keyframe from the VP8 header's P bit.
* H.264 (RFC 6184, packetization-mode 1): single NAL units, STAP-A and FU-A into one Annex B
  access unit per timestamp; SPS and PPS stay in the access unit (in-band parameter sets).

:class:`VideoAssembler` collects a frame's packets by timestamp, tolerates reordering and late
retransmissions, and never emits a frame that is missing a packet. After a loss it emits
nothing until the next keyframe (and sets :attr:`VideoAssembler.need_keyframe` so the caller
can ask the publisher for one): a recording freezes briefly rather than showing corruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from recorder.bitstream import H264_IDR, annexb

__all__ = [
    "AudioAssembler",
    "Frame",
    "FrameDepacketizer",
    "H264Depacketizer",
    "VideoAssembler",
    "Vp8Depacketizer",
    "vp8_descriptor_size",
]

_MAX_FILLERS = 1024
_MAX_GAP = 512


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded frame: ``ts`` is the unwrapped RTP timestamp, ``arrival`` monotonic s."""

    ts: int
    data: bytes
    keyframe: bool
    arrival: float


class FrameDepacketizer(Protocol):
    """Codec-specific half of :class:`VideoAssembler`."""

    def is_frame_start(self, payload: bytes) -> bool:
        """Whether ``payload`` can be the first packet of a frame."""
        ...

    def assemble(self, payloads: list[bytes]) -> tuple[bytes, bool] | None:
        """(frame, keyframe) from a frame's payloads in order; None if malformed."""
        ...


# --- VP8 -----------------------------------------------------------------------------


def vp8_descriptor_size(payload: bytes) -> int:
    """Length of the RFC 7741 payload descriptor, -1 if malformed."""
    n = len(payload)
    if n < 1:
        return -1
    size = 1
    if payload[0] & 0x80:  # X
        if n < 2:
            return -1
        ext = payload[1]
        size = 2
        if ext & 0x80:  # I: picture id, 15 bits when M is set
            if n <= size:
                return -1
            size += 2 if payload[size] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            size += 1
        if ext & 0x30:  # T or K: one shared byte
            size += 1
    return size if size < n else -1


class Vp8Depacketizer:
    """VP8 frames from RFC 7741 payloads."""

    def is_frame_start(self, payload: bytes) -> bool:
        # S=1 and partition index 0: the first packet of a frame.
        return len(payload) > 1 and payload[0] & 0x1F == 0x10

    def assemble(self, payloads: list[bytes]) -> tuple[bytes, bool] | None:
        parts = []
        for payload in payloads:
            size = vp8_descriptor_size(payload)
            if size < 0:
                return None
            parts.append(payload[size:])
        frame = b"".join(parts)
        if not frame:
            return None
        return frame, not frame[0] & 0x01


# --- H.264 ---------------------------------------------------------------------------


_STAP_A = 24
_FU_A = 28


class H264Depacketizer:
    """H.264 Annex B access units from RFC 6184 (packetization-mode 0 or 1) payloads."""

    def is_frame_start(self, payload: bytes) -> bool:
        if not payload:
            return False
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= _STAP_A:
            return True
        return nal_type == _FU_A and len(payload) > 1 and bool(payload[1] & 0x80)

    def assemble(self, payloads: list[bytes]) -> tuple[bytes, bool] | None:
        nals: list[bytes] = []
        fragment: bytearray | None = None
        for payload in payloads:
            if not payload:
                return None
            nal_type = payload[0] & 0x1F
            if 1 <= nal_type <= 23:
                if fragment is not None:
                    return None
                nals.append(payload)
            elif nal_type == _STAP_A:
                if fragment is not None:
                    return None
                pos, n = 1, len(payload)
                while pos < n:
                    if pos + 2 > n:
                        return None
                    size = (payload[pos] << 8) | payload[pos + 1]
                    pos += 2
                    if size == 0 or pos + size > n:
                        return None
                    nals.append(payload[pos : pos + size])
                    pos += size
            elif nal_type == _FU_A:
                if len(payload) < 3:
                    return None
                fu = payload[1]
                if fu & 0x80:  # start: rebuild the NAL header from indicator and FU header
                    if fragment is not None:
                        return None
                    fragment = bytearray(((payload[0] & 0xE0) | (fu & 0x1F),))
                elif fragment is None:
                    return None
                fragment += payload[2:]
                if fu & 0x40:  # end
                    nals.append(bytes(fragment))
                    fragment = None
            else:
                return None  # STAP-B, MTAP, FU-B: not in packetization-mode 1
        if fragment is not None or not nals:
            return None
        keyframe = any(nal[0] & 0x1F == H264_IDR for nal in nals)
        return annexb(nals), keyframe


# --- assembly ------------------------------------------------------------------------


class _Pending:
    __slots__ = ("arrival", "marker_seq", "packets")

    def __init__(self, arrival: float) -> None:
        self.packets: dict[int, bytes] = {}
        self.marker_seq: int | None = None
        self.arrival = arrival


class VideoAssembler:
    """Frames in timestamp order from video packets in any order (see the module doc).

    ``seq`` and ``ts`` given to :meth:`push` are unwrapped (unbounded) ints. A frame that is
    still incomplete when ``max_pending`` newer frames wait behind it, or when the newest is
    ``max_wait_s`` later, is given up as lost.
    """

    def __init__(
        self,
        depacketizer: FrameDepacketizer,
        clock_rate: int,
        *,
        max_pending: int = 8,
        max_wait_s: float = 0.5,
    ) -> None:
        self._dep = depacketizer
        self._max_pending = max_pending
        self._max_wait_ticks = int(max_wait_s * clock_rate)
        self._pending: dict[int, _Pending] = {}
        self._fillers: set[int] = set()
        self._expected: int | None = None  # seq after the last frame emitted or given up
        self._last_ts: int | None = None
        self.need_keyframe = True
        self.frames = 0
        self.lost_frames = 0
        self.late_packets = 0

    def push(self, seq: int, ts: int, marker: bool, payload: bytes, arrival: float) -> list[Frame]:
        if self._expected is not None and seq < self._expected:
            self.late_packets += 1
            return []
        if not payload:  # padding only (bandwidth probing): it still uses a sequence number
            if len(self._fillers) < _MAX_FILLERS:
                self._fillers.add(seq)
            return self._drain()
        pending = self._pending.get(ts)
        if pending is None:
            if self._last_ts is not None and ts <= self._last_ts:
                self.late_packets += 1
                return []
            pending = self._pending[ts] = _Pending(arrival)
        pending.packets[seq] = payload
        if marker:
            pending.marker_seq = seq
        return self._drain()

    def _contiguous(self, first: int) -> bool:
        """Whether every seq from the expected one up to ``first`` was padding."""
        expected = self._expected
        if expected is None or first == expected:
            return True
        if first - expected > _MAX_GAP:
            return False
        return all(s in self._fillers for s in range(expected, first))

    def _complete(self, pending: _Pending) -> int | None:
        """The first seq of a complete frame, else None."""
        marker = pending.marker_seq
        if marker is None:
            return None
        first = min(pending.packets)
        if marker - first + 1 != len(pending.packets) or max(pending.packets) != marker:
            return None
        return first if self._dep.is_frame_start(pending.packets[first]) else None

    def _advance(self, ts: int, next_seq: int) -> None:
        self._last_ts = ts
        self._expected = next_seq
        self._fillers = {s for s in self._fillers if s >= next_seq}

    def _drain(self) -> list[Frame]:
        out: list[Frame] = []
        while self._pending:
            ts = min(self._pending)
            pending = self._pending[ts]
            first = self._complete(pending)
            contiguous = first is not None and self._contiguous(first)
            if not contiguous:
                if (
                    len(self._pending) <= self._max_pending
                    and max(self._pending) - ts <= self._max_wait_ticks
                ):
                    break  # wait for the missing packets (reordering, retransmission)
                if first is None:  # give up on this frame
                    del self._pending[ts]
                    self._advance(ts, max(pending.packets) + 1)
                    self._lose()
                    continue
                self.need_keyframe = True  # give up on what is missing before this frame
            del self._pending[ts]
            assert pending.marker_seq is not None
            self._advance(ts, pending.marker_seq + 1)
            assembled = self._dep.assemble([pending.packets[s] for s in sorted(pending.packets)])
            if assembled is None:
                self._lose()
                continue
            data, keyframe = assembled
            if self.need_keyframe and not keyframe:
                self.lost_frames += 1
                continue
            self.need_keyframe = False
            self.frames += 1
            out.append(Frame(ts=ts, data=data, keyframe=keyframe, arrival=pending.arrival))
        return out

    def _lose(self) -> None:
        self.lost_frames += 1
        self.need_keyframe = True


class AudioAssembler:
    """Opus (and any one-packet-per-frame codec): each new timestamp is a frame."""

    def __init__(self) -> None:
        self._last_ts: int | None = None
        self.frames = 0
        self.late_packets = 0

    def push(self, seq: int, ts: int, marker: bool, payload: bytes, arrival: float) -> list[Frame]:
        if not payload:
            return []
        if self._last_ts is not None and ts <= self._last_ts:
            self.late_packets += 1  # a duplicate, or too late to place in order
            return []
        self._last_ts = ts
        self.frames += 1
        return [Frame(ts=ts, data=payload, keyframe=True, arrival=arrival)]

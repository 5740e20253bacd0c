"""NACKs from the load generator's subscribers, so loss on their links is repaired.

The bench's subscribers swallow packets before aiortc's receiver (no jitter buffer, no
decoder), so aiortc never asks for a retransmission. :class:`NackingTap` sits in front
of a counting tap: it follows each video SSRC's sequence numbers, sends a generic NACK
(RFC 4585) for each gap, asks again for what is still missing after :data:`RETRY_S`
(up to :data:`TRIES` times), and hands retransmissions (RFC 4588 RTX, unwrapped, or a
plain resend) to the counting tap like any packet, so "loss" is loss after repair.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from sfu.rtcp import build_nack
from sfu.rtp import payload_offset, rtx_unwrap, seq_diff

__all__ = ["NackPlan", "NackingTap", "nack_plan"]

RETRY_S = 0.05
TRIES = 3
MAX_GAP = 200  # a larger jump is a restart of the stream, not loss
_SEQ_SSRC = struct.Struct("!H4xI")


@dataclass(frozen=True, slots=True)
class NackPlan:
    """What the subscribe SDP negotiated: video payload types with NACK, RTX payload type
    → its media payload type, RTX SSRC → media SSRC (``a=ssrc-group:FID``)."""

    nack_payload_types: frozenset[int] = frozenset()
    rtx_apt: dict[int, int] = field(default_factory=dict)
    rtx_ssrc: dict[int, int] = field(default_factory=dict)


def nack_plan(sdp: str) -> NackPlan:
    nack: set[int] = set()
    apt: dict[int, int] = {}
    fid: dict[int, int] = {}
    for line in sdp.splitlines():
        if line.startswith("a=rtcp-fb:") and line.rstrip().endswith(" nack"):
            head = line[len("a=rtcp-fb:") :].split(" ", 1)[0]
            if head.isdigit():
                nack.add(int(head))
        elif line.startswith("a=fmtp:") and "apt=" in line:
            head, _, params = line[len("a=fmtp:") :].partition(" ")
            for param in params.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "apt" and head.isdigit() and value.isdigit():
                    apt[int(head)] = int(value)
        elif line.startswith("a=ssrc-group:FID "):
            words = line.split()[1:]
            if len(words) == 2 and all(w.isdigit() for w in words):
                fid[int(words[1])] = int(words[0])
    return NackPlan(frozenset(nack), apt, fid)


@dataclass(slots=True)
class _Stream:
    highest: int
    missing: dict[int, int] = field(default_factory=dict)
    """sequence number → NACKs sent for it."""


class NackingTap:
    """``tap(plain_packet)``: NACK gaps in video streams, unwrap RTX, pass packets on.

    ``send(rtcp)`` sends one RTCP packet; ``call_later(delay, fn)`` schedules a retry
    (``loop.call_later``); ``plan()`` reads the negotiated payload types (the SDP may
    change, so it is read again whenever an unknown payload type shows up)."""

    def __init__(
        self,
        inner: Callable[[bytes], None],
        send: Callable[[bytes], None],
        call_later: Callable[[float, Callable[[], None]], object],
        plan: Callable[[], NackPlan],
    ) -> None:
        self._inner = inner
        self._send = send
        self._call_later = call_later
        self._read_plan = plan
        self._plan = NackPlan()
        self._seen_types: set[int] = set()
        self._streams: dict[int, _Stream] = {}
        self._learned: dict[int, int] = {}
        """RTX SSRC → media SSRC, learnt where the SDP does not say."""
        self._ssrc = random.getrandbits(32)
        self._retry_pending = False
        self.nacks_sent = 0
        self.repaired = 0

    def __call__(self, packet: bytes) -> None:
        if len(packet) < 12:
            self._inner(packet)
            return
        payload_type = packet[1] & 0x7F
        if payload_type not in self._seen_types:
            self._seen_types.add(payload_type)
            self._plan = self._read_plan()
        plan = self._plan
        seq, ssrc = _SEQ_SSRC.unpack_from(packet, 2)
        media_type = plan.rtx_apt.get(payload_type)
        if media_type is not None:
            media_ssrc = plan.rtx_ssrc.get(ssrc) or self._rtx_owner(ssrc, packet)
            original = None if media_ssrc is None else rtx_unwrap(packet, media_ssrc, media_type)
            if original is None or payload_offset(original) < 0:
                return  # an RTX we cannot place: not a media packet
            seq, ssrc, packet = (original[2] << 8) | original[3], media_ssrc, original
        elif payload_type not in plan.nack_payload_types:
            self._inner(packet)  # audio and anything without NACK
            return
        self._follow(ssrc, seq)
        self._inner(packet)

    def _rtx_owner(self, rtx_ssrc: int, packet: bytes) -> int | None:
        """The media SSRC of an RTX SSRC the SDP does not pair (no ``ssrc-group:FID``, as
        Janus offers): the stream missing the packet it carries, remembered once found."""
        owner = self._learned.get(rtx_ssrc)
        if owner is not None:
            return owner
        offset = payload_offset(packet)
        if offset < 0 or len(packet) < offset + 2:
            return None
        original_seq = (packet[offset] << 8) | packet[offset + 1]
        for ssrc, stream in self._streams.items():
            if original_seq in stream.missing:
                self._learned[rtx_ssrc] = ssrc
                return ssrc
        return None

    def _follow(self, ssrc: int, seq: int) -> None:
        stream = self._streams.get(ssrc)
        if stream is None:
            self._streams[ssrc] = _Stream(seq)
            return
        ahead = seq_diff(seq, stream.highest)
        if ahead <= 0:
            if stream.missing.pop(seq, None) is not None:
                self.repaired += 1
            return
        if 1 < ahead <= MAX_GAP:
            lost = [(stream.highest + i) & 0xFFFF for i in range(1, ahead)]
            for s in lost:
                stream.missing[s] = 1
            self._nack(ssrc, lost)
        stream.highest = seq

    def _nack(self, ssrc: int, seqs: list[int]) -> None:
        self._send(build_nack(self._ssrc, ssrc, seqs))
        self.nacks_sent += 1
        if not self._retry_pending:
            self._retry_pending = True
            self._call_later(RETRY_S, self._retry)

    def _retry(self) -> None:
        self._retry_pending = False
        for ssrc, stream in self._streams.items():
            again = [s for s, tries in stream.missing.items() if tries < TRIES]
            for s in list(stream.missing):
                if stream.missing[s] >= TRIES:
                    del stream.missing[s]  # given up: it stays lost
            for s in again:
                stream.missing[s] += 1
            if again:
                self._nack(ssrc, again)

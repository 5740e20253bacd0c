"""RTP header helpers for the forwarding hot path.

Everything here works on raw ``bytes`` (RFC 3550 fixed header, RFC 8285
header extensions, RFC 4588 retransmission) and never raises on malformed
input: functions return ``None`` or ``-1`` instead, because a single bad
datagram must not take a peer connection down (aiortc's own parser raises
``struct.error`` on extensions of the wrong length).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = [
    "HEADER",
    "SeqUnwrapper",
    "TsUnwrapper",
    "find_extension",
    "is_rtcp",
    "payload_end",
    "payload_offset",
    "rtx_unwrap",
    "rtx_wrap",
    "seq_diff",
    "translate_extensions",
    "ts_diff",
]

# V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
HEADER = struct.Struct("!BBHII")
# Profile and length (in 32-bit words) of the header extension block.
_EXT_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")

_ONE_BYTE_PROFILE = 0xBEDE
_TWO_BYTE_PROFILE = 0x1000


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192..223 sit where RTP has M+PT."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def payload_offset(packet: bytes) -> int:
    """Offset of the payload (after CSRCs and the extension block), -1 if malformed."""
    n = len(packet)
    if n < 12:
        return -1
    b0 = packet[0]
    if b0 & 0xC0 != 0x80:
        return -1
    pos = 12 + ((b0 & 0x0F) << 2)
    if b0 & 0x10:
        if pos + 4 > n:
            return -1
        pos += 4 + (((packet[pos + 2] << 8) | packet[pos + 3]) << 2)
    if pos > n:
        return -1
    return pos


def payload_end(packet: bytes) -> int:
    """End of the payload (length minus RTP padding), -1 if malformed."""
    off = payload_offset(packet)
    if off < 0:
        return -1
    n = len(packet)
    if packet[0] & 0x20:
        # The last byte counts the padding, itself included: 0 or more than
        # the bytes after the header is a lie.
        if n == off:
            return -1
        pad = packet[n - 1]
        if pad == 0 or pad > n - off:
            return -1
        return n - pad
    return n


def _ext_block(packet: bytes) -> tuple[int, int, int, int]:
    """(header_end, profile, start, end) of the extension block.

    header_end is -1 if the packet is malformed; profile is -1 if there is no
    extension block.
    """
    n = len(packet)
    if n < 12:
        return -1, -1, 0, 0
    b0 = packet[0]
    if b0 & 0xC0 != 0x80:
        return -1, -1, 0, 0
    hdr_end = 12 + ((b0 & 0x0F) << 2)
    if not b0 & 0x10:
        if hdr_end > n:
            return -1, -1, 0, 0
        return hdr_end, -1, 0, 0
    start = hdr_end + 4
    if start > n:
        return -1, -1, 0, 0
    end = start + (((packet[hdr_end + 2] << 8) | packet[hdr_end + 3]) << 2)
    if end > n:
        return -1, -1, 0, 0
    return hdr_end, (packet[hdr_end] << 8) | packet[hdr_end + 1], start, end


def find_extension(packet: bytes, ext_id: int) -> bytes | None:
    """Value of the first header extension element ``ext_id``.

    Supports the one-byte (0xBEDE) and two-byte (0x100X) profiles of
    RFC 8285.  Returns None if the element is absent, the packet is
    malformed, or the block is truncated before the element is reached.
    """
    _, profile, pos, end = _ext_block(packet)
    if profile < 0:
        return None
    if profile == _ONE_BYTE_PROFILE:
        if not 0 < ext_id < 15:
            return None
        while pos < end:
            b = packet[pos]
            if b == 0:  # padding byte
                pos += 1
                continue
            x_id = b >> 4
            # id 15 ends the block (RFC 8285 4.2); id 0 with a length is
            # invalid and libwebrtc stops there too.
            if x_id == 15 or x_id == 0:
                return None
            start = pos + 1
            pos = start + (b & 0x0F) + 1
            if pos > end:
                return None
            if x_id == ext_id:
                return packet[start:pos]
        return None
    if profile & 0xFFF0 == _TWO_BYTE_PROFILE:
        if not 0 < ext_id < 256:
            return None
        while pos < end:
            x_id = packet[pos]
            if x_id == 0:  # padding byte
                pos += 1
                continue
            if pos + 2 > end:
                return None
            start = pos + 2
            pos = start + packet[pos + 1]
            if pos > end:
                return None
            if x_id == ext_id:
                return packet[start:pos]
        return None
    return None


def translate_extensions(packet: bytes, id_map: Sequence[int]) -> bytes | None:
    """Rewrite header extension ids from the ingress to the egress mapping.

    ``id_map`` has 256 entries: ``id_map[in_id]`` is the egress id, 0 (or
    anything outside 1..255) drops the element.  The block is rebuilt with
    the one-byte profile when every kept element fits it (ids 1..14, values
    of 1..16 bytes), else with the two-byte profile; the X bit is cleared if
    nothing is left.  Returns the same object when nothing changes, and None
    if the packet is malformed.  Blocks of a non-RFC 8285 profile are kept
    as they are.
    """
    n = len(packet)
    if n < 12:
        return None
    b0 = packet[0]
    if b0 & 0xC0 != 0x80:
        return None
    hdr_end = 12 + ((b0 & 0x0F) << 2)
    if not b0 & 0x10:
        return packet if hdr_end <= n else None
    pos = hdr_end + 4
    if pos > n:
        return None
    end = pos + (((packet[hdr_end + 2] << 8) | packet[hdr_end + 3]) << 2)
    if end > n or len(id_map) < 256:
        return None
    if packet[hdr_end] != 0xBE or packet[hdr_end + 1] != 0xDE:
        return _rebuild_extensions(packet, id_map, hdr_end, end)
    # Fast path, the common case: one-byte profile, ids only renumbered.
    # Validate in one pass without allocating; copy only on the first change
    # and rewrite the id nibbles in place (same layout, same length).
    out: bytearray | None = None
    while pos < end:
        b = packet[pos]
        if b < 0x10 or b >= 0xF0:  # rare: padding byte or end marker
            if b == 0:
                pos += 1
                continue
            break  # RFC 8285: id 15 ends the block (id 0 + length: libwebrtc)
        in_id = b >> 4
        out_id = id_map[in_id]
        if out_id != in_id:
            if not 0 < out_id < 15:
                # A drop or an id needing the two-byte profile: rebuild.
                return _rebuild_one_byte(packet, id_map, hdr_end, end)
            if out is None:
                out = bytearray(packet)
            out[pos] = (out_id << 4) | (b & 0x0F)
        pos += (b & 0x0F) + 2
    # Headers are only read below `end`, so one check catches any element
    # whose value runs past the block.
    if pos > end:
        return None
    return packet if out is None else bytes(out)


def _rebuild_one_byte(packet: bytes, id_map: Sequence[int], hdr_end: int, end: int) -> bytes | None:
    """One-byte block with drops: rebuild it in one pass, still one-byte."""
    pos = hdr_end + 4
    out = bytearray(packet[:pos])  # header, CSRCs, block header (fixed below)
    while pos < end:
        b = packet[pos]
        if b < 0x10 or b >= 0xF0:  # padding byte or end marker
            if b == 0:
                pos += 1
                continue
            break
        nxt = pos + (b & 0x0F) + 2
        if nxt > end:
            return None
        in_id = b >> 4
        out_id = id_map[in_id]
        if 0 < out_id < 15:
            out.append((out_id << 4) | (b & 0x0F))
            out += packet[pos + 1 : nxt]
        elif 0 < out_id < 256:
            # Needs the two-byte profile: the general builder does that.
            return _rebuild_extensions(packet, id_map, hdr_end, end)
        pos = nxt
    if len(out) == hdr_end + 4:
        del out[hdr_end:]
        out[0] &= 0xEF  # no element left: clear X, drop the block
    else:
        pad = -len(out) & 3  # pad the block to 32 bits
        if pad:
            out += b"\x00" * pad
        _EXT_HEADER.pack_into(out, hdr_end, _ONE_BYTE_PROFILE, (len(out) - hdr_end - 4) >> 2)
    out += packet[end:]
    return bytes(out)


def _rebuild_extensions(
    packet: bytes, id_map: Sequence[int], hdr_end: int, end: int
) -> bytes | None:
    """translate_extensions, general case: any drops and profile changes."""
    profile = (packet[hdr_end] << 8) | packet[hdr_end + 1]
    pos = hdr_end + 4
    # (egress id, value start, value end) of each kept element.
    kept: list[tuple[int, int, int]] = []
    changed = False
    two_byte_out = False
    if profile == _ONE_BYTE_PROFILE:
        while pos < end:
            b = packet[pos]
            if b == 0:
                pos += 1
                continue
            in_id = b >> 4
            if in_id == 15 or in_id == 0:
                break
            start = pos + 1
            pos = start + (b & 0x0F) + 1
            if pos > end:
                return None
            out_id = id_map[in_id]
            if out_id != in_id:
                changed = True
                if not 0 < out_id < 256:
                    continue
                if out_id > 14:
                    two_byte_out = True
            kept.append((out_id, start, pos))
    elif profile & 0xFFF0 == _TWO_BYTE_PROFILE:
        while pos < end:
            in_id = packet[pos]
            if in_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                return None
            start = pos + 2
            pos = start + packet[pos + 1]
            if pos > end:
                return None
            out_id = id_map[in_id]
            if out_id != in_id:
                changed = True
                if not 0 < out_id < 256:
                    continue
            if out_id > 14 or not 0 < pos - start <= 16:
                two_byte_out = True
            kept.append((out_id, start, pos))
    else:
        return packet
    if not changed:
        return packet

    out = bytearray(packet[:hdr_end])
    if not kept:
        out[0] &= 0xEF  # no element left: clear X, drop the block
        out += packet[end:]
        return bytes(out)
    out += b"\x00\x00\x00\x00"  # block header, filled in below
    if two_byte_out:
        for out_id, start, stop in kept:
            out.append(out_id)
            out.append(stop - start)
            out += packet[start:stop]
        # Keep the sender's appbits if it already used the two-byte profile.
        out_profile = profile if profile != _ONE_BYTE_PROFILE else _TWO_BYTE_PROFILE
    else:
        for out_id, start, stop in kept:
            out.append((out_id << 4) | (stop - start - 1))
            out += packet[start:stop]
        out_profile = _ONE_BYTE_PROFILE
    # Pad the block to 32 bits (hdr_end is a multiple of 4).
    pad = -len(out) & 3
    if pad:
        out += b"\x00" * pad
    _EXT_HEADER.pack_into(out, hdr_end, out_profile, (len(out) - hdr_end - 4) >> 2)
    out += packet[end:]
    return bytes(out)


def rtx_wrap(packet: bytes, rtx_ssrc: int, rtx_payload_type: int, rtx_seq: int) -> bytes | None:
    """RFC 4588 retransmission packet carrying ``packet``.

    The header (CSRCs, extensions, marker, timestamp) is kept; PT, sequence
    number and SSRC are replaced; the payload is the original sequence
    number followed by the original payload; padding is dropped.
    """
    off = payload_offset(packet)
    end = payload_end(packet)
    if off < 0 or end < 0:
        return None
    b0, b1, seq, ts, _ = HEADER.unpack_from(packet)
    return b"".join(
        (
            HEADER.pack(
                b0 & 0xDF,
                (b1 & 0x80) | (rtx_payload_type & 0x7F),
                rtx_seq & 0xFFFF,
                ts,
                rtx_ssrc & 0xFFFFFFFF,
            ),
            packet[12:off],
            _U16.pack(seq),
            packet[off:end],
        )
    )


def rtx_unwrap(packet: bytes, media_ssrc: int, media_payload_type: int) -> bytes | None:
    """Original packet from an RFC 4588 retransmission; None if malformed.

    An RTX payload shorter than the 2-byte original sequence number (which
    makes aiortc raise) returns None.
    """
    off = payload_offset(packet)
    end = payload_end(packet)
    if off < 0 or end - off < 2:
        return None
    b0, b1, _, ts, _ = HEADER.unpack_from(packet)
    return b"".join(
        (
            HEADER.pack(
                b0 & 0xDF,
                (b1 & 0x80) | (media_payload_type & 0x7F),
                (packet[off] << 8) | packet[off + 1],
                ts,
                media_ssrc & 0xFFFFFFFF,
            ),
            packet[12:off],
            packet[off + 2 : end],
        )
    )


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b between 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between 32-bit RTP timestamps."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class _Unwrapper:
    """Extends n-bit counters to unbounded ints.

    Each number is placed nearest to the previous one, so wraps and reordering both unwrap
    correctly. The first number is returned as is; a value reordered before it may unwrap
    to a negative number.
    """

    __slots__ = ("_half", "_last", "_mask")

    def __init__(self, bits: int) -> None:
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def unwrap(self, value: int) -> int:
        last = self._last
        if last is None:
            self._last = value & self._mask
            return self._last
        unwrapped = last + (((value - last + self._half) & self._mask) - self._half)
        # Follow the latest value (not the highest) so that a stream that jumps by more
        # than half the range keeps unwrapping consistently.
        self._last = unwrapped
        return unwrapped


class SeqUnwrapper(_Unwrapper):
    """Extends 16-bit RTP sequence numbers (see :class:`_Unwrapper`)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(16)


class TsUnwrapper(_Unwrapper):
    """Extends 32-bit RTP timestamps (see :class:`_Unwrapper`)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(32)

"""VP8 payload descriptor (RFC 7741 §4.2): read and renumber, never decode.

Simulcast layers number their pictures independently. When a subscriber moves from one
layer to another, its picture ids and TL0PICIDX must continue from where they were, or
the decoder sees a jump it cannot explain; the fix is a header rewrite at fixed offsets.
"""

from __future__ import annotations

__all__ = ["Vp8Descriptor", "read_descriptor", "rewrite_descriptor"]

Vp8Descriptor = tuple[int, int, int, int]
"""(picture id or -1, picture id bits 7/15 or 0, TL0PICIDX or -1, payload header offset or -1)."""

_NONE: Vp8Descriptor = (-1, 0, -1, -1)


def read_descriptor(packet: bytes | bytearray, offset: int) -> Vp8Descriptor:
    """The descriptor of the VP8 payload starting at ``offset``; all -1 if malformed."""
    n = len(packet)
    if offset >= n:
        return _NONE
    pos = offset + 1
    pic_id, bits, tl0 = -1, 0, -1
    if packet[offset] & 0x80:  # X: extension byte
        if pos >= n:
            return _NONE
        ext = packet[pos]
        pos += 1
        if ext & 0x80:  # I: picture id
            if pos >= n:
                return _NONE
            if packet[pos] & 0x80:  # M: 15 bits
                if pos + 1 >= n:
                    return _NONE
                pic_id, bits = ((packet[pos] & 0x7F) << 8) | packet[pos + 1], 15
                pos += 2
            else:
                pic_id, bits = packet[pos], 7
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if pos >= n:
                return _NONE
            tl0 = packet[pos]
            pos += 1
        if ext & 0x30:  # T or K: one shared byte
            pos += 1
    if pos > n:
        return _NONE
    return pic_id, bits, tl0, pos


def rewrite_descriptor(packet: bytes, offset: int, pic_delta: int, tl0_delta: int) -> bytes:
    """``packet`` with its picture id and TL0PICIDX shifted (modulo their widths).

    Returns ``packet`` itself when there is nothing to change or it is malformed.
    """
    pic_id, bits, tl0, end = read_descriptor(packet, offset)
    if end < 0 or ((pic_id < 0 or not pic_delta) and (tl0 < 0 or not tl0_delta)):
        return packet
    out = bytearray(packet)
    pos = offset + 2
    if pic_id >= 0:
        if bits == 15:
            value = (pic_id + pic_delta) & 0x7FFF
            out[pos] = 0x80 | (value >> 8)
            out[pos + 1] = value & 0xFF
            pos += 2
        else:
            out[pos] = (pic_id + pic_delta) & 0x7F
            pos += 1
    if tl0 >= 0:
        out[pos] = (tl0 + tl0_delta) & 0xFF
    return bytes(out)

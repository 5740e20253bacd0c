"""VP8 payload descriptor rewriting (RFC 7741): picture ids continue across layer switches."""

from __future__ import annotations

from sfu.layers import vp8_keyframe_size
from sfu.vp8 import read_descriptor, rewrite_descriptor

HEADER = bytes(12)


def vp8(pic_id: int | None, tl0: int | None, *, long_id: bool = True, tid: bool = True) -> bytes:
    ext = (0x80 if pic_id is not None else 0) | (0x40 if tl0 is not None else 0)
    ext |= 0x20 if tid else 0
    out = bytearray([0x90, ext])  # X and S
    if pic_id is not None:
        out += bytes([0x80 | (pic_id >> 8), pic_id & 0xFF]) if long_id else bytes([pic_id])
    if tl0 is not None:
        out.append(tl0)
    if tid:
        out.append(0x40)
    return HEADER + bytes(out) + b"\x10\x02\x00\x9d\x01\x2a\x00\x05\xd0\x02"


def test_read_both_picture_id_widths_and_tl0() -> None:
    assert read_descriptor(vp8(0x1234, 7), 12) == (0x1234, 15, 7, 12 + 6)
    assert read_descriptor(vp8(0x55, None, long_id=False), 12) == (0x55, 7, -1, 12 + 4)
    assert read_descriptor(vp8(None, None, tid=False), 12) == (-1, 0, -1, 12 + 2)


def test_truncated_descriptors_read_as_malformed() -> None:
    packet = vp8(0x1234, 7)
    for cut in range(13, 17):
        assert read_descriptor(packet[:cut], 12)[3] == -1
    assert read_descriptor(packet, len(packet)) == (-1, 0, -1, -1)


def test_rewrite_shifts_modulo_the_field_widths_and_touches_nothing_else() -> None:
    packet = vp8(0x7FFE, 0xFF)
    out = rewrite_descriptor(packet, 12, 5, 3)
    assert read_descriptor(out, 12) == (3, 15, 2, 18)  # both wrapped
    assert out[:12] == packet[:12] and out[18:] == packet[18:]
    short = vp8(0x7E, None, long_id=False)
    assert read_descriptor(rewrite_descriptor(short, 12, 0x1003, 0), 12)[0] == 0x01


def test_nothing_to_do_returns_the_same_object() -> None:
    packet = vp8(10, 1)
    assert rewrite_descriptor(packet, 12, 0, 0) is packet
    bare = vp8(None, None)
    assert rewrite_descriptor(bare, 12, 9, 9) is bare
    assert rewrite_descriptor(packet[:14], 12, 1, 1) == packet[:14]


def test_keyframe_size_from_the_uncompressed_header() -> None:
    packet = vp8(1, 1)
    assert vp8_keyframe_size(packet, 18) == (1280, 720)
    assert vp8_keyframe_size(packet[:-1], 18) == (0, 0)
    assert vp8_keyframe_size(packet, 17) == (0, 0)  # no start code there

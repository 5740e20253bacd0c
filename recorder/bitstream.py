"""Just enough of the VP8, H.264 and Opus bitstreams to describe a stream to a muxer.

The recorder never decodes media, but a container needs a video track's dimensions, an H.264
track's parameter sets and an Opus track's ``OpusHead``, and each packet's duration. These
parsers read headers only; they return None (never raise) on short or malformed input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = [
    "H264_IDR",
    "H264_PPS",
    "H264_SPS",
    "annexb",
    "annexb_nals",
    "h264_sps_dimensions",
    "opus_head",
    "opus_samples",
    "vp8_keyframe_dimensions",
]

H264_IDR = 5
H264_SPS = 7
H264_PPS = 8
START_CODE = b"\x00\x00\x00\x01"
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


# --- VP8 (RFC 6386 §9.1) --------------------------------------------------------------


def vp8_keyframe_dimensions(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe (the frame, descriptor already stripped)."""
    if len(frame) < 10 or frame[0] & 0x01:  # P bit set: an inter frame
        return None
    if frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    width &= 0x3FFF
    height &= 0x3FFF
    return (width, height) if width and height else None


# --- H.264 ---------------------------------------------------------------------------


def annexb(nals: list[bytes]) -> bytes:
    """NAL units as one Annex B byte stream (4-byte start codes)."""
    return b"".join(START_CODE + nal for nal in nals)


def annexb_nals(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B stream (3- or 4-byte start codes)."""
    n = len(data)
    pos = data.find(b"\x00\x00\x01")
    while 0 <= pos < n:
        start = pos + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = n if nxt < 0 else nxt
        nal = data[start:end]
        if nxt >= 0 and nal.endswith(b"\x00"):
            nal = nal[:-1]  # the leading zero of a 4-byte start code
        if nal:
            yield nal
        pos = nxt


class _Bits:
    """An RBSP bit reader (emulation prevention bytes removed by the caller)."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def u(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise ValueError("end of data")
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _rbsp(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last


def h264_sps_dimensions(sps: bytes) -> tuple[int, int] | None:
    """(width, height) after cropping, from an SPS NAL unit (header byte included)."""
    if not sps or sps[0] & 0x1F != H264_SPS:
        return None
    try:
        bits = _Bits(_rbsp(sps[1:]))
        profile = bits.u(8)
        bits.u(16)  # constraint flags, level
        bits.ue()  # seq_parameter_set_id
        chroma_format = 1
        separate_planes = 0
        if profile in _HIGH_PROFILES:
            chroma_format = bits.ue()
            if chroma_format == 3:
                separate_planes = bits.u(1)
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.u(1)  # qpprime_y_zero_transform_bypass
            if bits.u(1):  # seq_scaling_matrix_present
                for i in range(8 if chroma_format != 3 else 12):
                    if bits.u(1):
                        _skip_scaling_list(bits, 16 if i < 6 else 64)
        bits.ue()  # log2_max_frame_num_minus4
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()
        elif poc_type == 1:
            bits.u(1)
            bits.se()
            bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.u(1)  # gaps_in_frame_num_allowed
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.u(1)
        if not frame_mbs_only:
            bits.u(1)  # mb_adaptive_frame_field
        bits.u(1)  # direct_8x8_inference
        crop = (0, 0, 0, 0)
        if bits.u(1):
            crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    except ValueError:
        return None
    if separate_planes or chroma_format == 0:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        unit_x = 1 if chroma_format == 3 else 2
        unit_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3])
    return (width, height) if width > 0 and height > 0 else None


# --- Opus (RFC 6716 §3.1, RFC 7845 §5.1) ----------------------------------------------


def opus_samples(packet: bytes) -> int | None:
    """Duration of an Opus packet in 48 kHz samples, from its TOC byte."""
    if not packet:
        return None
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:
        frame = (480, 960)[config & 1]
    else:
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            return None
        count = packet[1] & 0x3F
    total = frame * count
    return total if 0 < total <= 5760 else None


def opus_head(channels: int, pre_skip: int = 0) -> bytes:
    """An ``OpusHead`` (mapping family 0): the codec private data of an Opus track.

    WebRTC carries no pre-skip (the stream started long before we joined it), so 0.
    """
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, 48000, 0, 0)

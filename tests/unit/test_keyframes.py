"""Tests for sfu.keyframes: VP8/H.264/VP9 keyframe starts without decoding."""

from __future__ import annotations

import fractions
import random
import struct
from collections.abc import Iterator

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor

from sfu.keyframes import is_keyframe_start, vp8_picture_id

# VP8 payload header first byte: size0=0, show_frame=1, version=0, P bit last.
VP8_KEY = b"\x10\x02\x00\x9d\x01\x2a"
VP8_INTER = b"\x11\x02\x00\x00\x00\x00"


def frames(count: int, width: int = 160, height: int = 120) -> Iterator[av.VideoFrame]:
    for i in range(count):
        frame = av.VideoFrame(width=width, height=height, format="yuv420p")
        for plane in frame.planes:
            plane.update(bytes((i * 7 + k) % 256 for k in range(plane.buffer_size)))
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        yield frame


def vp8(
    start: int,
    pid: int,
    body: bytes,
    picture_id: int | None = None,
    tl0: int | None = None,
    tid: tuple[int, int] | None = None,
    keyidx: int | None = None,
) -> bytes:
    descriptor = VpxPayloadDescriptor(start, pid, picture_id, tl0, tid, keyidx)
    return bytes(descriptor) + body


# ------------------------------------------------------------------ VP8


def test_vp8_descriptor_variants() -> None:
    variants: list[dict[str, int | tuple[int, int] | None]] = [
        {},
        {"picture_id": 5},
        {"picture_id": 300},
        {"picture_id": 300, "tl0": 7},
        {"picture_id": 1, "tl0": 7, "tid": (1, 1)},
        {"tid": (2, 0)},
        {"keyidx": 3},
        {"tl0": 1, "keyidx": 3, "tid": (0, 1)},
    ]
    for kw in variants:
        pic = kw.get("picture_id")
        tl0 = kw.get("tl0")
        tid = kw.get("tid")
        key = kw.get("keyidx")
        assert pic is None or isinstance(pic, int)
        assert tl0 is None or isinstance(tl0, int)
        assert tid is None or isinstance(tid, tuple)
        assert key is None or isinstance(key, int)
        assert is_keyframe_start("vp8", vp8(1, 0, VP8_KEY, pic, tl0, tid, key)), kw
        assert not is_keyframe_start("vp8", vp8(1, 0, VP8_INTER, pic, tl0, tid, key)), kw
        # continuation packets (S=0) and other partitions (PID != 0)
        assert not is_keyframe_start("vp8", vp8(0, 0, VP8_KEY, pic, tl0, tid, key)), kw
        assert not is_keyframe_start("vp8", vp8(1, 1, VP8_KEY, pic, tl0, tid, key)), kw


def test_vp8_hand_built_descriptors() -> None:
    # X=1 with a 7-bit picture id (aiortc always writes the 15-bit form)
    assert is_keyframe_start("vp8", bytes([0x90, 0x80, 0x05]) + VP8_KEY)
    assert not is_keyframe_start("vp8", bytes([0x90, 0x80, 0x05]) + VP8_INTER)
    # N bit (non-reference) set does not matter
    assert is_keyframe_start("vp8", bytes([0x30]) + VP8_KEY)
    # descriptor only, no payload header
    assert not is_keyframe_start("vp8", bytes([0x90, 0x80, 0x85]))
    assert not is_keyframe_start("vp8", bytes([0x90, 0x80, 0x85, 0x00]))
    assert not is_keyframe_start("vp8", bytes([0x10]))
    assert not is_keyframe_start("vp8", bytes([0x90]))
    assert not is_keyframe_start("vp8", b"")


def test_vp8_real_encoder() -> None:
    encoder = Vp8Encoder()
    results = []
    for i, frame in enumerate(frames(6)):
        payloads, _ = encoder.encode(frame, force_keyframe=(i == 4))
        results.append([is_keyframe_start("vp8", p) for p in payloads])
    for i, flags in enumerate(results):
        assert flags[0] == (i in (0, 4))
        assert not any(flags[1:])


def test_vp8_picture_id() -> None:
    assert vp8_picture_id(vp8(1, 0, VP8_KEY, picture_id=0x1234)) == 0x1234
    assert vp8_picture_id(bytes([0x90, 0x80, 0x05])) == 5
    assert vp8_picture_id(bytes([0x90, 0x80, 0x85])) is None  # truncated 15-bit id
    assert vp8_picture_id(vp8(1, 0, VP8_KEY)) is None
    assert vp8_picture_id(vp8(1, 0, VP8_KEY, tl0=3)) is None
    assert vp8_picture_id(memoryview(bytes([0x90, 0x80, 0xFF, 0xFF]))) == 0x7FFF
    assert vp8_picture_id(b"") is None


# ------------------------------------------------------------------ H.264


def test_h264_single_nal() -> None:
    assert is_keyframe_start("h264", bytes([0x67, 0x42, 0x00, 0x1F]))  # SPS
    assert is_keyframe_start("h264", bytes([0x65, 0x88, 0x84]))  # IDR, first_mb 0
    assert not is_keyframe_start("h264", bytes([0x65, 0x05, 0x84]))  # IDR, later slice
    assert not is_keyframe_start("h264", bytes([0x65]))
    assert not is_keyframe_start("h264", bytes([0x68, 0xCE]))  # PPS
    assert not is_keyframe_start("h264", bytes([0x41, 0x9A]))  # non-IDR slice
    assert not is_keyframe_start("h264", bytes([0x06, 0x05]))  # SEI
    assert not is_keyframe_start("h264", b"")


def stap_a(*nals: bytes) -> bytes:
    return b"\x78" + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def test_h264_stap_a() -> None:
    sps, pps, idr = b"\x67\x42\x00\x1f", b"\x68\xce\x38\x80", b"\x65\x88\x80"
    sei, slice_ = b"\x06\x05\x01", b"\x41\x9a\x00"
    assert is_keyframe_start("h264", stap_a(sps, pps))
    assert is_keyframe_start("h264", stap_a(sei, idr))
    assert not is_keyframe_start("h264", stap_a(sei, pps))
    assert not is_keyframe_start("h264", stap_a(sei, slice_))
    # truncated: the SPS claims more bytes than present
    assert not is_keyframe_start("h264", stap_a(sei)[:-1] + b"\x00\x09\x67\x42")
    assert not is_keyframe_start("h264", b"\x78\x00\x00\x67")  # zero size
    assert not is_keyframe_start("h264", b"\x78\x00")
    assert not is_keyframe_start("h264", b"\x78")


def test_h264_fu_a() -> None:
    assert is_keyframe_start("h264", bytes([0x7C, 0x85, 0x88, 0x84]))  # start of IDR
    assert not is_keyframe_start("h264", bytes([0x7C, 0x05, 0x88]))  # middle of IDR
    assert not is_keyframe_start("h264", bytes([0x7C, 0x45, 0x88]))  # end of IDR
    assert not is_keyframe_start("h264", bytes([0x7C, 0x85, 0x01]))  # IDR, later slice
    assert not is_keyframe_start("h264", bytes([0x5C, 0x81, 0x9A]))  # start of non-IDR
    assert is_keyframe_start("h264", bytes([0x7C, 0x87, 0x42]))  # start of SPS
    assert not is_keyframe_start("h264", bytes([0x7C, 0x85]))
    assert not is_keyframe_start("h264", bytes([0x7C]))


def test_h264_real_encoder() -> None:
    encoder = H264Encoder()
    for i, frame in enumerate(frames(5, 320, 240)):
        payloads, _ = encoder.encode(frame, force_keyframe=(i == 3))
        flags = [is_keyframe_start("h264", p) for p in payloads]
        if i in (0, 3):
            # STAP-A with SPS+PPS, then the first FU-A of the IDR picture
            assert flags[0] and flags[1]
            assert not any(flags[2:])
        else:
            assert not any(flags)


# ------------------------------------------------------------------ VP9


def test_vp9_descriptors_and_real_frames() -> None:
    ctx = av.CodecContext.create("libvpx-vp9", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = 160, 120, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    encoded: list[tuple[bool, bytes]] = []
    for frame in frames(3, 160, 120):
        frame.pts = len(encoded)
        encoded.extend((p.is_keyframe, bytes(p)) for p in ctx.encode(frame))
    assert [k for k, _ in encoded][:2] == [True, False]
    for key, data in encoded:
        p_bit = 0 if key else 0x40
        # I=1 (15-bit id), B=1, E=1
        assert is_keyframe_start("vp9", bytes([0x8C | p_bit, 0x80, 0x01]) + data) == key
        # P=0 on a keyframe but header check still applies
        assert is_keyframe_start("vp9", bytes([0x0C]) + data) == key
        # not the beginning of the frame
        assert not is_keyframe_start("vp9", bytes([0x84, 0x05]) + data)
    key_data = encoded[0][1]
    # L present (non-flexible): TID/U/SID/D + TL0PICIDX; SID 0 starts, SID 1 does not
    assert is_keyframe_start("vp9", bytes([0xA8, 0x05, 0x00, 0x03]) + key_data)
    assert not is_keyframe_start("vp9", bytes([0xA8, 0x05, 0x02, 0x03]) + key_data)
    # V: scalability structure with Y (1 layer: 4 bytes) and G (1 group, R=1)
    ss = bytes([0x18, 0, 160, 0, 120, 1, 0x04, 0x01])
    assert is_keyframe_start("vp9", bytes([0x0A]) + ss + key_data)
    assert not is_keyframe_start("vp9", bytes([0x0A]) + ss[:-1])
    assert not is_keyframe_start("vp9", bytes([0x0A, 0x08]))
    assert not is_keyframe_start("vp9", bytes([0x88]))
    assert not is_keyframe_start("vp9", b"")
    # profile 3 places frame_type one bit lower
    assert is_keyframe_start("vp9", bytes([0x08, 0xB0]))
    assert not is_keyframe_start("vp9", bytes([0x08, 0xB2]))


# ------------------------------------------------------------------ others


def test_audio_and_unknown_codecs() -> None:
    for codec in ("opus", "pcmu", "pcma", "g722"):
        assert is_keyframe_start(codec, b"")
        assert is_keyframe_start(codec, b"\x00\x01")
    assert not is_keyframe_start("av1", b"\x10")
    assert not is_keyframe_start("VP8", bytes([0x10]) + VP8_KEY)  # names are lowercase


def test_memoryview_input() -> None:
    packet = b"\x00" * 12 + vp8(1, 0, VP8_KEY, picture_id=9)
    assert is_keyframe_start("vp8", memoryview(packet)[12:])
    assert is_keyframe_start("h264", memoryview(stap_a(b"\x67\x42", b"\x68\xce")))


def test_fuzz_never_raises() -> None:
    rng = random.Random(1234)
    seeds = [
        vp8(1, 0, VP8_KEY, picture_id=300, tl0=1, tid=(1, 1), keyidx=2),
        stap_a(b"\x67\x42\x00\x1f", b"\x68\xce"),
        bytes([0x7C, 0x85, 0x88]),
        bytes([0x8E, 0x80, 0x01, 0x18, 0, 160, 0, 120, 1, 0x04, 0x01, 0x82, 0x49]),
    ]
    codecs = ("vp8", "h264", "vp9", "opus", "x")
    for _ in range(20000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(12))
        else:
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf[: rng.randrange(len(buf) + 1)])
        for codec in codecs:
            assert isinstance(is_keyframe_start(codec, data), bool)
        pic = vp8_picture_id(data)
        assert pic is None or 0 <= pic < 0x8000

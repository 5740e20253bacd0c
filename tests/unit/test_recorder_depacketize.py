"""RTP payloads → frames (recorder.depacketize) and the header parsers (recorder.bitstream)."""

from __future__ import annotations

import fractions
import os
import struct

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from recorder.bitstream import (
    annexb,
    annexb_nals,
    h264_sps_dimensions,
    opus_head,
    opus_samples,
    vp8_keyframe_dimensions,
)
from recorder.depacketize import (
    AudioAssembler,
    Frame,
    H264Depacketizer,
    VideoAssembler,
    Vp8Depacketizer,
    vp8_descriptor_size,
)


def picture(width: int, height: int, *, noise: bool = False) -> av.VideoFrame:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = 200
    if noise:  # hard to compress: a keyframe then spans several packets
        image = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


# --------------------------------------------------------------------------- VP8


def test_vp8_descriptor_sizes() -> None:
    assert vp8_descriptor_size(b"\x10\x9d") == 1
    assert vp8_descriptor_size(b"\x90\x80\x05\x00") == 3  # X, I with a 7-bit picture id
    assert vp8_descriptor_size(b"\x90\x80\x85\x05\x00") == 4  # 15-bit picture id
    assert vp8_descriptor_size(b"\x90\xe0\x85\x05\x01\x02\x00") == 6  # I, L, T
    assert vp8_descriptor_size(b"\x90\x80") == -1  # picture id missing
    assert vp8_descriptor_size(b"\x10") == -1  # no payload after it
    assert vp8_descriptor_size(b"") == -1


def test_vp8_real_frames_reassemble_with_dimensions() -> None:
    encoder = Vp8Encoder()
    payloads, _ = encoder.encode(picture(640, 360, noise=True))
    assert len(payloads) > 1  # a keyframe spans several packets
    dep = Vp8Depacketizer()
    assert dep.is_frame_start(payloads[0]) and not dep.is_frame_start(payloads[1])
    assembled = dep.assemble(payloads)
    assert assembled is not None
    frame, keyframe = assembled
    assert keyframe
    assert vp8_keyframe_dimensions(frame) == (640, 360)
    assert vp8_keyframe_dimensions(b"\x01" + frame[1:]) is None  # an inter frame
    assert dep.assemble([b"\x90"]) is None


# --------------------------------------------------------------------------- H.264


def test_h264_single_stap_a_and_fu_a() -> None:
    nals = [b"\x67" + os.urandom(10), b"\x68" + os.urandom(4), b"\x65" + os.urandom(5000),
            b"\x06" + os.urandom(20), b"\x41" + os.urandom(300)]  # fmt: skip
    payloads = H264Encoder._packetize(nals)
    assert {p[0] & 0x1F for p in payloads} >= {24, 28}  # STAP-A and FU-A both used
    dep = H264Depacketizer()
    assert dep.is_frame_start(payloads[0])
    assert dep.assemble(payloads) == (annexb(nals), True)
    assert list(annexb_nals(annexb(nals))) == nals
    assert list(annexb_nals(b"\x00\x00\x01\x41\xaa\x00\x00\x00\x01\x41\xbb")) == [
        b"\x41\xaa",
        b"\x41\xbb",
    ]
    fu = [p for p in payloads if p[0] & 0x1F == 28]
    assert not dep.is_frame_start(fu[1])
    assert dep.assemble(fu[1:]) is None  # FU-A without its start
    assert dep.assemble(fu[:1]) is None  # FU-A without its end
    assert dep.assemble([b"\x18\x00\x09\x67"]) is None  # STAP-A size past the end
    assert dep.assemble([b"\x1a\x00"]) is None  # MTAP: not packetization-mode 1
    assert dep.assemble([b"\x41\x9a"]) == (annexb([b"\x41\x9a"]), False)


@pytest.mark.parametrize(("width", "height"), [(320, 240), (642, 362), (1280, 720)])
def test_h264_sps_dimensions(width: int, height: int) -> None:
    payloads, _ = H264Encoder().encode(picture(width, height))
    assembled = H264Depacketizer().assemble(payloads)
    assert assembled is not None
    sps = next(n for n in annexb_nals(assembled[0]) if n[0] & 0x1F == 7)
    assert h264_sps_dimensions(sps) == (width, height)
    assert h264_sps_dimensions(sps[:4]) is None
    assert h264_sps_dimensions(b"\x68\x00") is None


# --------------------------------------------------------------------------- Opus


def test_opus_durations_and_head() -> None:
    assert opus_samples(b"\xfc\x00") == 960  # CELT FB 20 ms, one frame
    assert opus_samples(b"\x78\x00") == 960  # SILK WB 20 ms
    assert opus_samples(b"\x79\x00") == 1920  # two frames
    assert opus_samples(b"\x7b\x03") == 2880  # code 3: three 20 ms frames
    assert opus_samples(b"\x7b") is None
    assert opus_samples(b"") is None
    head = opus_head(2)
    assert head[:8] == b"OpusHead" and head[9] == 2
    assert struct.unpack_from("<I", head, 12)[0] == 48000


# --------------------------------------------------------------------------- assembly


def vp8(
    seq: int, ts: int, *, start: bool, marker: bool, key: bool = False
) -> tuple[int, int, bool, bytes]:
    descriptor = b"\x10" if start else b"\x00"
    body = (b"\x00" if key else b"\x01") + bytes((seq & 0xFF,))
    return seq, ts, marker, descriptor + body if start else descriptor + bytes((seq & 0xFF,))


def frames_of(
    n: int, *, first_seq: int = 100, per_frame: int = 3
) -> list[tuple[int, int, bool, bytes]]:
    packets = []
    seq = first_seq
    for i in range(n):
        for j in range(per_frame):
            packets.append(
                vp8(seq, i * 3000, start=j == 0, marker=j == per_frame - 1, key=i % 10 == 0)
            )
            seq += 1
    return packets


def push_all(assembler: VideoAssembler, packets: list[tuple[int, int, bool, bytes]]) -> list[Frame]:
    out: list[Frame] = []
    for seq, ts, marker, payload in packets:
        out += assembler.push(seq, ts, marker, payload, 0.0)
    return out


def test_in_order_and_reordered_inside_a_frame() -> None:
    packets = frames_of(5)
    packets[4], packets[5] = packets[5], packets[4]  # 2nd frame: middle and last swapped
    packets[6], packets[7] = packets[7], packets[6]  # 3rd frame arrives start-last
    frames = push_all(VideoAssembler(Vp8Depacketizer(), 90000), packets)
    assert [f.ts for f in frames] == [0, 3000, 6000, 9000, 12000]
    assert frames[0].keyframe and not frames[1].keyframe


def test_reordered_across_frames_waits_for_the_gap() -> None:
    packets = frames_of(4, per_frame=1)
    packets[1], packets[2] = packets[2], packets[1]
    assembler = VideoAssembler(Vp8Depacketizer(), 90000)
    frames = push_all(assembler, packets)
    assert [f.ts for f in frames] == [0, 3000, 6000, 9000]
    assert assembler.lost_frames == 0


def test_duplicates_and_padding_cost_nothing() -> None:
    first = frames_of(1, first_seq=100)  # seqs 100-102
    padding = (103, 0, False, b"")  # a padding-only packet (bandwidth probe) between frames
    rest = [(seq, ts + 3000, marker, payload) for seq, ts, marker, payload in
            frames_of(2, first_seq=104)]  # fmt: skip
    rest[-1] = (rest[-1][0], rest[-1][1], rest[-1][2], b"\x00\x09")
    packets = [*first, padding, rest[0], rest[0], *rest[1:]]  # and a duplicate
    assembler = VideoAssembler(Vp8Depacketizer(), 90000)
    frames = push_all(assembler, packets)
    assert [f.ts for f in frames] == [0, 3000, 6000]
    assert assembler.lost_frames == 0


def test_loss_waits_then_resumes_at_a_keyframe() -> None:
    packets = frames_of(25)
    del packets[3 * 4 + 1]  # a middle packet of frame 4
    assembler = VideoAssembler(Vp8Depacketizer(), 90000, max_pending=4)
    frames = push_all(assembler, packets)
    timestamps = [f.ts // 3000 for f in frames]
    assert timestamps == [0, 1, 2, 3, *range(10, 25)]  # frames 4-9 lost, 10 is a keyframe
    assert assembler.lost_frames == 6
    assert not assembler.need_keyframe
    # the missing packet, retransmitted much too late, is refused
    assert assembler.push(100 + 13, 4 * 3000, False, b"\x00\x0d", 0.0) == []
    assert assembler.late_packets == 1


def test_video_starts_at_a_keyframe() -> None:
    packets = frames_of(12)[3 * 2 :]  # starts at frame 2, an inter frame
    frames = push_all(VideoAssembler(Vp8Depacketizer(), 90000), packets)
    assert frames[0].ts == 10 * 3000 and frames[0].keyframe


def test_audio_drops_duplicates_and_late_packets() -> None:
    assembler = AudioAssembler()
    assert len(assembler.push(1, 960, False, b"\xfc\x01", 0.0)) == 1
    assert assembler.push(1, 960, False, b"\xfc\x01", 0.0) == []
    assert len(assembler.push(3, 2880, False, b"\xfc\x03", 0.0)) == 1
    assert assembler.push(2, 1920, False, b"\xfc\x02", 0.0) == []  # too late to place
    assert assembler.push(4, 3840, False, b"", 0.0) == []
    assert (assembler.frames, assembler.late_packets) == (2, 2)

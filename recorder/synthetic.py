"""Synthetic but real RTP for tests and benchmarks of the recorder.

Encodes generated pictures and a tone with aiortc's own encoders and packetizers (the same
payloads a browser-facing aiortc peer sends), then wraps them in RTP headers with a header
extension, as the forwarding core hands them to a sink. Encoding happens up front, so feeding
measures the recorder alone.
"""

from __future__ import annotations

import fractions
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder

from sfu.keyframes import is_keyframe_start

__all__ = ["SyntheticPacket", "feed", "synth_rtp"]

_HEADER = struct.Struct("!BBHII")
_ABS_SEND_TIME = bytes((0xBE, 0xDE, 0x00, 0x01, 0x32, 0x12, 0x34, 0x56))  # id 3, 3 bytes


@dataclass(frozen=True, slots=True)
class SyntheticPacket:
    """One RTP packet of track ``track`` (0 audio, 1 video), due at media time ``at`` (s)."""

    track: int
    packet: bytes
    seq: int
    ts: int
    keyframe: bool
    at: float


def _rtp(pt: int, seq: int, ts: int, ssrc: int, marker: bool, payload: bytes) -> bytes:
    header = _HEADER.pack(0x90, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return header + _ABS_SEND_TIME + payload


def _picture(index: int, width: int, height: int, noise: int) -> av.VideoFrame:
    """A moving bar (plus optional noise), made directly in YUV 4:2:0 (no conversion)."""
    planes = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    luma = planes[:height]
    luma[:] = 40
    bar = (index * 8) % width
    luma[:, bar : bar + width // 8] = 230
    if noise:
        rng = np.random.default_rng(index)
        luma += rng.integers(0, noise, luma.shape, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    frame.pts = index * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def _tone(index: int) -> av.AudioFrame:
    t = (np.arange(960) + index * 960) / 48000
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(
        np.stack([samples, samples]).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = 48000
    frame.pts = index * 960
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


def synth_rtp(
    seconds: float,
    *,
    video: str | None = "vp8",
    audio: bool = True,
    fps: int = 30,
    width: int = 320,
    height: int = 240,
    video_bitrate: int | None = None,
    noise: int = 0,
    keyframe_interval_s: float | None = None,
) -> tuple[list[SyntheticPacket], dict[str, int]]:
    """Packets of ``seconds`` of media in send order, and the frame count of each kind.

    Sequence numbers and timestamps start near their wrap points, so unwrapping is exercised.
    """
    packets: list[SyntheticPacket] = []
    counts = {"audio": 0, "video": 0}
    if video is not None:
        encoder: Vp8Encoder | H264Encoder = Vp8Encoder() if video == "vp8" else H264Encoder()
        if video_bitrate is not None:
            encoder.target_bitrate = video_bitrate
        seq, ts0 = 65500, 0xFFFFFFFF - 90000
        every = None if keyframe_interval_s is None else max(1, round(keyframe_interval_s * fps))
        for i in range(round(seconds * fps)):
            force = every is not None and i > 0 and i % every == 0
            payloads, ts = encoder.encode(_picture(i, width, height, noise), force_keyframe=force)
            if not payloads:
                continue
            counts["video"] += 1
            for j, payload in enumerate(payloads):
                packets.append(
                    SyntheticPacket(
                        track=1,
                        packet=_rtp(96, seq, ts0 + ts, 0x1111, j == len(payloads) - 1, payload),
                        seq=seq & 0xFFFF,
                        ts=(ts0 + ts) & 0xFFFFFFFF,
                        keyframe=is_keyframe_start(video, payload),
                        at=i / fps,
                    )
                )
                seq += 1
    if audio:
        opus = OpusEncoder()
        seq, ts0 = 65000, 0xFFFFFFFF - 48000 * 3
        for i in range(round(seconds * 50)):
            payloads, ts = opus.encode(_tone(i))
            for payload in payloads:
                counts["audio"] += 1
                packets.append(
                    SyntheticPacket(
                        track=0,
                        packet=_rtp(111, seq, ts0 + ts, 0x2222, False, payload),
                        seq=seq & 0xFFFF,
                        ts=(ts0 + ts) & 0xFFFFFFFF,
                        keyframe=True,
                        at=i * 0.02,
                    )
                )
                seq += 1
    packets.sort(key=lambda p: (p.at, p.track))
    return packets, counts


def feed(
    feeds: Sequence[Callable[[bytes, int, int, bool], None]],
    packets: Sequence[SyntheticPacket],
    *,
    realtime: bool = False,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Call ``feeds[p.track](packet, seq, ts, keyframe)`` for each packet; returns how many.

    With ``realtime`` each packet waits for its media time (as a live publisher sends);
    ``stop`` is checked between packets.
    """
    start = time.monotonic()
    sent = 0
    for p in packets:
        if stop is not None and stop():
            break
        if realtime:
            delay = start + p.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        feeds[p.track](p.packet, p.seq, p.ts, p.keyframe)
        sent += 1
    return sent

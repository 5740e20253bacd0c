"""A cheap publisher: media encoded once with PyAV, then replayed in real time.

Encoding 640x360 VP8 live would cost the load generator a large share of a core, so a
few seconds of VP8 and Opus are encoded once (:func:`encode_video_clip`,
:func:`encode_audio_clip`) and looped by :class:`ReplayTrack`. Its ``recv()`` returns
``av.Packet`` objects: aiortc's ``RTCRtpSender`` then only packetizes them (the public
path ``MediaPlayer(decode=False)`` uses), it never encodes.

A pre-encoded loop cannot make a keyframe on demand, so a keyframe request (PLI/FIR from
the server, e.g. when a subscriber joins) restarts the clip at its first frame, which is
the clip's only keyframe. Hearing those requests needs one touch of aiortc's private API:
see :func:`forward_keyframe_requests`.
"""

from __future__ import annotations

import asyncio
import fractions
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from sfu import aiortc_bridge as bridge

__all__ = [
    "EncodedClip",
    "ReplayTrack",
    "encode_audio_clip",
    "encode_video_clip",
    "forward_keyframe_requests",
]

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms, what aiortc's own Opus encoder sends
MAX_LATE_S = 0.1  # a replay more than this behind its schedule skips ahead


@dataclass(frozen=True, slots=True)
class EncodedClip:
    """Encoded frames of one kind, played back at ``1 / frame_s`` frames per second."""

    kind: str
    codec: str
    frames: tuple[bytes, ...]
    keyframes: frozenset[int]
    frame_s: float
    time_base: fractions.Fraction
    pts_step: int
    description: str

    @property
    def duration_s(self) -> float:
        return len(self.frames) * self.frame_s

    @property
    def bitrate_kbps(self) -> float:
        """Average encoded payload bitrate (no RTP/SRTP/UDP overhead)."""
        return sum(map(len, self.frames)) * 8 / self.duration_s / 1000


def _pattern_frames(
    count: int, width: int, height: int, seed: int
) -> Iterator[np.ndarray]:
    """yuv420p planes of a moving pattern with some noise: enough detail for the encoder
    to use its bitrate, like a camera would."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    diagonal = (xs + ys).astype(np.int16)
    cys, cxs = np.mgrid[0 : height // 2, 0 : width // 2]
    for index in range(count):
        luma = 40 + ((diagonal + 6 * index) % 96) * 2
        box_x = (index * 7) % max(1, width - 96)
        luma[height // 3 : height // 3 + 96, box_x : box_x + 96] = 220
        luma += rng.integers(-10, 11, size=luma.shape, dtype=np.int16)
        u = 128 + 40 * np.sin((cxs + 3 * index) / 23.0)
        v = 128 + 40 * np.cos((cys + 2 * index) / 17.0)
        chroma = np.concatenate([u.reshape(-1), v.reshape(-1)]).reshape(height // 2, width)
        yield np.vstack([np.clip(luma, 16, 235), chroma]).astype(np.uint8)


def encode_video_clip(
    seconds: float = 4.0, width: int = 640, height: int = 360, fps: int = 30, kbps: int = 900,
    seed: int = 1,
) -> EncodedClip:
    """VP8 frames (libvpx, realtime CBR like aiortc's encoder); only frame 0 is a keyframe."""
    count = max(1, round(seconds * fps))
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps, 1)
    codec.bit_rate = kbps * 1000
    codec.gop_size = count + 1  # no keyframe but the first: a loop restart is the keyframe
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(kbps * 1000), "minrate": str(kbps * 1000), "maxrate": str(kbps * 1000),
        "cpu-used": "-6", "deadline": "realtime", "lag-in-frames": "0", "static-thresh": "1",
        "undershoot-pct": "100", "overshoot-pct": "15", "auto-alt-ref": "0",
    }
    frames: list[bytes] = []
    keyframes: set[int] = set()

    def collect(packets: list[av.Packet[Any]]) -> None:
        for packet in packets:
            if packet.is_keyframe:
                keyframes.add(len(frames))
            frames.append(bytes(packet))

    for index, planes in enumerate(_pattern_frames(count, width, height, seed)):
        frame = av.VideoFrame.from_ndarray(planes, "yuv420p")
        frame.pts = index
        frame.time_base = codec.time_base
        collect(codec.encode(frame))
    collect(codec.encode(None))
    if not frames or 0 not in keyframes:
        raise RuntimeError("libvpx did not start the clip with a keyframe")
    return EncodedClip(
        kind="video", codec="VP8", frames=tuple(frames), keyframes=frozenset(keyframes),
        frame_s=1.0 / fps, time_base=VIDEO_TIME_BASE, pts_step=90_000 // fps,
        description=f"VP8 {width}x{height}@{fps}",
    )


def encode_audio_clip(seconds: float = 4.0, kbps: int = 32, voice: int = 0) -> EncodedClip:
    """Opus, 48 kHz stereo, 20 ms frames of two tones over faint noise; each ``voice`` has
    its own tones and noise, so no payload repeats within a clip or across voices (what
    latency matching needs: :mod:`bench.latency`)."""
    count = max(1, round(seconds * AUDIO_RATE / AUDIO_FRAME_SAMPLES))
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.format = "s16"
    codec.layout = "stereo"
    codec.bit_rate = kbps * 1000
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    codec.options = {"application": "voip", "frame_duration": "20"}
    frames: list[bytes] = []
    rng = np.random.default_rng(1000 + voice)  # a little noise: no two frames alike
    for index in range(count):
        t = (index * AUDIO_FRAME_SAMPLES + np.arange(AUDIO_FRAME_SAMPLES)) / AUDIO_RATE
        left = 0.3 * np.sin(2 * math.pi * (440.0 + 7.0 * voice) * t)
        right = 0.3 * np.sin(2 * math.pi * (660.0 + 11.0 * voice) * t)
        stereo = np.stack([left, right], axis=1) + rng.normal(0.0, 0.02, (AUDIO_FRAME_SAMPLES, 2))
        samples = (np.clip(stereo, -1.0, 1.0).reshape(1, -1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_FRAME_SAMPLES
        frame.time_base = codec.time_base
        frames.extend(bytes(p) for p in codec.encode(frame))
    frames.extend(bytes(p) for p in codec.encode(None))
    if not frames:
        raise RuntimeError("libopus produced no packets")
    return EncodedClip(
        kind="audio", codec="Opus", frames=tuple(frames), keyframes=frozenset(range(len(frames))),
        frame_s=AUDIO_FRAME_SAMPLES / AUDIO_RATE, time_base=fractions.Fraction(1, AUDIO_RATE),
        pts_step=AUDIO_FRAME_SAMPLES, description="Opus 48 kHz stereo, 20 ms",
    )


class ReplayTrack(MediaStreamTrack):
    """Loops an :class:`EncodedClip` in real time, yielding ``av.Packet`` (never frames)."""

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self.kind = clip.kind
        self.clip = clip
        self.frames_sent = 0
        self.keyframe_requests = 0
        self.late_skips = 0
        """How often the schedule was re-anchored because the generator fell behind."""
        self._position = 0
        self._start: float | None = None
        self._keyframe_wanted = False

    def request_keyframe(self) -> None:
        """Restart the clip (at its keyframe) with the next frame."""
        self.keyframe_requests += 1
        self._keyframe_wanted = True

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            delay = self._start + self.frames_sent * self.clip.frame_s - loop.time()
            if delay < -MAX_LATE_S:
                # Far behind (the generator's loop was held up): skip to now, as a camera
                # would, instead of bursting every overdue frame without ever yielding.
                self.late_skips += 1
                self._start -= delay
                delay = 0.0
            # Always yield: aiortc's sender loop never does between frames otherwise.
            await asyncio.sleep(max(0.0, delay))
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            self._position = 0
        packet = av.Packet(self.clip.frames[self._position])
        packet.pts = self.frames_sent * self.clip.pts_step
        packet.time_base = self.clip.time_base
        self.frames_sent += 1
        self._position = (self._position + 1) % len(self.clip.frames)
        return packet


def forward_keyframe_requests(sender: Any, on_request: Callable[[], None]) -> None:
    """Call ``on_request()`` when the remote asks ``sender`` for a keyframe (PLI or FIR).

    Pre-encoded packets ignore aiortc's own keyframe flag, so the request is rerouted
    (through ``sfu.aiortc_bridge``, where all private aiortc API lives and is checked).
    """
    bridge.on_keyframe_request(sender, on_request)

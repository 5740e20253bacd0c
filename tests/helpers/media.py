"""Test media: tracks whose content can be checked after a lossy codec round trip.

Import (``tests`` is on pytest's ``pythonpath``; there is no ``__init__.py``)::

    from helpers.media import FrameCounterTrack, ToneTrack, collect, read_frame_counter

* :class:`FrameCounterTrack` paints each frame's index as 16 black/white blocks (15 data
  bits + 1 odd-parity bit); :func:`read_frame_counter` reads it back after VP8/H.264, or
  returns None for anything that is not a counter frame (grey, black, noise, mid-fade).
* :class:`ToneTrack` is a sine; :func:`frames_to_samples` + :func:`dominant_frequency`
  measure it after Opus.
* :func:`collect` reads frames from any track with one overall deadline.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections.abc import Iterable

import av
import numpy as np
from aiortc import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, MediaStreamError

__all__ = [
    "COUNTER_MODULUS",
    "FrameCounterTrack",
    "ToneTrack",
    "collect",
    "counter_bits",
    "dominant_frequency",
    "frames_to_samples",
    "read_frame_counter",
]

GRID_COLUMNS = 8
GRID_ROWS = 2
DATA_BITS = GRID_COLUMNS * GRID_ROWS - 1
COUNTER_MODULUS = 1 << DATA_BITS
"""Frame indices wrap at 32768 (18 minutes at 30 fps)."""

BLACK_LUMA = 16  # video range, what encoders expect
WHITE_LUMA = 235
_DARK_MAX = 80.0  # a block's mean luma at or below this reads 0 ...
_LIGHT_MIN = 170.0  # ... at or above this reads 1; anything between is not a counter frame
_INSET = 0.2  # ignore this fraction of each block's width/height on every side (ringing)


# --- video ----------------------------------------------------------------------------


def counter_bits(index: int) -> list[int]:
    """The 16 block values for ``index``: 15 data bits (MSB first) then odd parity."""
    value = index % COUNTER_MODULUS
    data = [(value >> (DATA_BITS - 1 - i)) & 1 for i in range(DATA_BITS)]
    return [*data, 1 ^ (sum(data) & 1)]


def _block_bounds(width: int, height: int, row: int, column: int) -> tuple[int, int, int, int]:
    x0, x1 = column * width // GRID_COLUMNS, (column + 1) * width // GRID_COLUMNS
    y0, y1 = row * height // GRID_ROWS, (row + 1) * height // GRID_ROWS
    return x0, x1, y0, y1


def counter_luma(index: int, width: int, height: int) -> np.ndarray:
    """The luma plane (uint8, height x width) that encodes ``index``."""
    plane = np.full((height, width), BLACK_LUMA, dtype=np.uint8)
    for n, bit in enumerate(counter_bits(index)):
        if bit:
            x0, x1, y0, y1 = _block_bounds(width, height, n // GRID_COLUMNS, n % GRID_COLUMNS)
            plane[y0:y1, x0:x1] = WHITE_LUMA
    return plane


def read_frame_counter(frame: av.VideoFrame) -> int | None:
    """The index painted by :class:`FrameCounterTrack`, or None if ``frame`` is not one.

    Works on any size and pixel format (the frame is converted to grey); each block's
    centre must be clearly dark or clearly light and the parity must hold.
    """
    luma = frame.to_ndarray(format="gray").astype(np.float32)
    height, width = luma.shape
    bits: list[int] = []
    for n in range(GRID_ROWS * GRID_COLUMNS):
        x0, x1, y0, y1 = _block_bounds(width, height, n // GRID_COLUMNS, n % GRID_COLUMNS)
        dx, dy = int((x1 - x0) * _INSET), int((y1 - y0) * _INSET)
        mean = float(luma[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean())
        if mean <= _DARK_MAX:
            bits.append(0)
        elif mean >= _LIGHT_MIN:
            bits.append(1)
        else:
            return None
    if sum(bits) % 2 != 1:
        return None
    return int("".join(map(str, bits[:DATA_BITS])), 2)


class FrameCounterTrack(VideoStreamTrack):
    """Video frames that carry their own index (see :func:`read_frame_counter`).

    ``recv()`` paces frames in real time at ``fps`` with aiortc's 90 kHz timestamps
    (aiortc's own ``next_timestamp()`` at 30 fps). :meth:`render` builds frame ``n``
    without waiting (for codec tests). ``format`` is ``"yuv420p"`` or ``"rgb24"``.
    """

    def __init__(
        self, width: int = 320, height: int = 240, fps: float = 30.0, format: str = "yuv420p"
    ) -> None:
        super().__init__()
        if format not in ("yuv420p", "rgb24"):
            raise ValueError(f"unsupported format {format!r}")
        if width % 2 or height % 2:
            raise ValueError("width and height must be even")
        self.width, self.height, self.fps, self.format = width, height, fps, format
        self.index = 0
        """Index of the next frame ``recv()`` returns."""

    def render(self, index: int) -> av.VideoFrame:
        """Frame ``index`` (no timestamp set)."""
        luma = counter_luma(index, self.width, self.height)
        if self.format == "rgb24":
            rgb = np.repeat(luma[:, :, None], 3, axis=2)
            return av.VideoFrame.from_ndarray(rgb, format="rgb24")
        chroma = np.full((self.height // 2, self.width), 128, dtype=np.uint8)
        return av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")

    async def next_timestamp(self) -> tuple[int, fractions.Fraction]:
        if self.fps == 30.0:
            return await super().next_timestamp()
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += round(VIDEO_CLOCK_RATE / self.fps)
            await asyncio.sleep(self._start + self._timestamp / VIDEO_CLOCK_RATE - time.time())
        else:
            self._start = time.time()
            self._timestamp = 0
        return self._timestamp, VIDEO_TIME_BASE

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = self.render(self.index)
        frame.pts = pts
        frame.time_base = time_base
        self.index += 1
        return frame


# --- audio ----------------------------------------------------------------------------


class ToneTrack(AudioStreamTrack):
    """A continuous sine: 48 kHz mono s16, 20 ms frames, paced in real time.

    :meth:`render` builds frame ``n`` without waiting (for codec tests).
    """

    def __init__(
        self,
        frequency: float = 440.0,
        amplitude: float = 0.3,
        sample_rate: int = 48_000,
        ptime: float = 0.020,
    ) -> None:
        super().__init__()
        self.frequency, self.amplitude, self.sample_rate = frequency, amplitude, sample_rate
        self.samples_per_frame = round(sample_rate * ptime)
        self.index = 0
        """Index of the next frame ``recv()`` returns."""
        self._started = False

    def render(self, index: int) -> av.AudioFrame:
        """Frame ``index`` with ``pts`` in samples (phase-continuous across frames)."""
        first = index * self.samples_per_frame
        n = np.arange(first, first + self.samples_per_frame, dtype=np.float64)
        wave = self.amplitude * np.sin(2 * math.pi * self.frequency * n / self.sample_rate)
        pcm = np.round(wave * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = first
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        return frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._started:
            self._started = True
            self._start = time.time()
        else:
            due = self._start + self.index * self.samples_per_frame / self.sample_rate
            await asyncio.sleep(due - time.time())
        frame = self.render(self.index)
        self.index += 1
        return frame


def frames_to_samples(frames: Iterable[av.AudioFrame]) -> np.ndarray:
    """Concatenate audio frames into mono float32 in [-1, 1] (channels averaged).

    Handles packed (interleaved, e.g. aiortc's decoded Opus: s16, 2 channels) and planar
    layouts, integer and float sample formats.
    """
    chunks: list[np.ndarray] = []
    for frame in frames:
        data = frame.to_ndarray()
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            samples = data.reshape(channels, -1).T
        else:
            samples = data.reshape(-1, channels)
        if samples.dtype.kind in "iu":  # signed, or offset-binary unsigned (u8)
            half = 2.0 ** (8 * samples.dtype.itemsize - 1)
            offset = half if samples.dtype.kind == "u" else 0.0
            samples = (samples.astype(np.float64) - offset) / half
        chunks.append(samples.mean(axis=1).astype(np.float32))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency in ``samples`` (Hann window, FFT, parabolic interpolation)."""
    if len(samples) < 4:
        raise ValueError("need at least 4 samples")
    x = np.asarray(samples, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x))))
    peak = int(np.argmax(spectrum[1:])) + 1
    offset = 0.0
    if 0 < peak < len(spectrum) - 1:
        a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        denominator = a - 2 * b + c
        offset = 0.5 * (a - c) / denominator if denominator else 0.0
    return float((peak + offset) * rate / len(x))


# --- any track ------------------------------------------------------------------------


async def collect(
    track: MediaStreamTrack, count: int, timeout: float, *, allow_partial: bool = False
) -> list[av.AudioFrame | av.VideoFrame]:
    """Receive ``count`` frames from ``track`` within ``timeout`` seconds overall.

    Raises :class:`TimeoutError` (saying how many arrived), or ``MediaStreamError`` if
    the track ends first, unless ``allow_partial``: then returns what arrived.
    """
    frames: list[av.AudioFrame | av.VideoFrame] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while len(frames) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            frame = await asyncio.wait_for(track.recv(), remaining)
            if not isinstance(frame, av.AudioFrame | av.VideoFrame):
                raise TypeError(f"expected decoded frames, got {type(frame).__name__}")
            frames.append(frame)
    except TimeoutError as exc:
        if not allow_partial:
            raise TimeoutError(
                f"{len(frames)} of {count} {track.kind} frames arrived in {timeout} s"
            ) from exc
    except MediaStreamError:
        if not allow_partial:
            raise
    return frames

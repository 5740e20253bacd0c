"""The test-media helpers survive real codecs: VP8, H.264 and Opus through PyAV."""

from __future__ import annotations

import asyncio
import fractions
from typing import Literal

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext
from helpers.media import (
    COUNTER_MODULUS,
    FrameCounterTrack,
    ToneTrack,
    collect,
    counter_bits,
    dominant_frequency,
    frames_to_samples,
    read_frame_counter,
)

VIDEO_TIME_BASE = fractions.Fraction(1, 30)
FRAMES = 301  # indices 0..300, every one checked


def _codec_available(name: str, mode: Literal["r", "w"]) -> bool:
    try:
        av.CodecContext.create(name, mode)
    except (av.error.FFmpegError, ValueError):  # PyAV: UnknownCodecError is a ValueError
        return False
    return True


def _encoder(name: str, bitrate: int, options: dict[str, str]) -> VideoCodecContext:
    encoder = av.CodecContext.create(name, "w")
    assert isinstance(encoder, VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = VIDEO_TIME_BASE
    encoder.framerate = fractions.Fraction(30, 1)
    encoder.bit_rate = bitrate
    encoder.options = options
    return encoder


def _round_trip_video(encoder: VideoCodecContext, decoder_name: str) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create(decoder_name, "r")
    assert isinstance(decoder, VideoCodecContext)
    track = FrameCounterTrack()
    decoded: list[av.VideoFrame] = []
    for index in [*range(FRAMES), None]:
        frame = None
        if index is not None:
            frame = track.render(index)
            frame.pts, frame.time_base = index, VIDEO_TIME_BASE
        for packet in encoder.encode(frame):
            decoded += decoder.decode(packet)
    return decoded


def _assert_counts_in_order(decoded: list[av.VideoFrame]) -> None:
    assert len(decoded) == FRAMES
    assert [read_frame_counter(f) for f in decoded] == list(range(FRAMES))


# --- frame counter ------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 2, 255, 4097, 12345, COUNTER_MODULUS - 1])
@pytest.mark.parametrize("size", [(320, 240), (640, 480), (1280, 720), (176, 144)])
@pytest.mark.parametrize("fmt", ["yuv420p", "rgb24"])
def test_counter_reads_back_uncompressed(index: int, size: tuple[int, int], fmt: str) -> None:
    frame = FrameCounterTrack(*size, format=fmt).render(index)
    assert (frame.width, frame.height, frame.format.name) == (*size, fmt)
    assert read_frame_counter(frame) == index


def test_counter_wraps_and_keeps_odd_parity() -> None:
    assert read_frame_counter(FrameCounterTrack().render(COUNTER_MODULUS + 7)) == 7
    assert all(sum(counter_bits(i)) % 2 == 1 for i in range(0, COUNTER_MODULUS, 97))


@pytest.mark.parametrize("size", [(640, 480), (160, 120)])
def test_counter_survives_scaling(size: tuple[int, int]) -> None:
    frame = FrameCounterTrack().render(4242)
    assert read_frame_counter(frame.reformat(width=size[0], height=size[1])) == 4242


def _plane(value: int) -> np.ndarray:
    return np.full((240, 320), value, dtype=np.uint8)


@pytest.mark.parametrize(
    "luma",
    [
        pytest.param(_plane(16), id="black"),
        pytest.param(_plane(235), id="white"),
        pytest.param(_plane(128), id="grey"),
        pytest.param(np.random.default_rng(1).integers(0, 256, (240, 320), np.uint8), id="noise"),
    ],
)
def test_garbage_is_not_a_counter(luma: np.ndarray) -> None:
    frame = av.VideoFrame.from_ndarray(luma, format="gray")
    assert read_frame_counter(frame) is None


def test_one_flipped_block_fails_parity() -> None:
    frame = FrameCounterTrack().render(1000)
    rgb = frame.to_ndarray(format="rgb24")
    rgb[:120, :40] = 255 - rgb[:120, :40]  # block 0 (most significant data bit)
    assert read_frame_counter(av.VideoFrame.from_ndarray(rgb, format="rgb24")) is None


def test_half_blended_frames_are_rejected() -> None:
    a = FrameCounterTrack().render(0x5555).to_ndarray(format="gray").astype(np.uint16)
    b = FrameCounterTrack().render(0x2AAA).to_ndarray(format="gray").astype(np.uint16)
    blend = ((a + b) // 2).astype(np.uint8)
    assert read_frame_counter(av.VideoFrame.from_ndarray(blend, format="gray")) is None


@pytest.mark.parametrize(("bitrate", "decoder"), [(300_000, "vp8"), (60_000, "libvpx")])
def test_counter_survives_vp8(bitrate: int, decoder: str) -> None:
    options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    _assert_counts_in_order(_round_trip_video(_encoder("libvpx", bitrate, options), decoder))


@pytest.mark.parametrize("bitrate", [300_000, 60_000])
def test_counter_survives_h264(bitrate: int) -> None:
    # aiortc's H.264 encoder needs it too: a PyAV without libx264 must fail here, not skip.
    assert _codec_available("libx264", "w"), "PyAV's FFmpeg has no libx264 encoder"
    options = {"preset": "ultrafast", "tune": "zerolatency"}
    _assert_counts_in_order(_round_trip_video(_encoder("libx264", bitrate, options), "h264"))


# --- tone ---------------------------------------------------------------------------


def _opus_round_trip(track: ToneTrack, frames: int) -> list[av.AudioFrame]:
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, AudioCodecContext)
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "mono", "s16"
    encoder.bit_rate = 32_000
    encoder.time_base = fractions.Fraction(1, 48_000)
    decoder = av.CodecContext.create("opus", "r")
    assert isinstance(decoder, AudioCodecContext)
    decoder.sample_rate, decoder.layout = 48_000, "stereo"
    # what aiortc's Opus decoder hands to track.recv(): 48 kHz, stereo, s16 packed
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000)
    decoded: list[av.AudioFrame] = []
    for index in [*range(frames), None]:
        for packet in encoder.encode(None if index is None else track.render(index)):
            for frame in decoder.decode(packet):
                decoded += resampler.resample(frame)
    return decoded


@pytest.mark.parametrize("frequency", [440.0, 1000.0])
def test_tone_survives_opus(frequency: float) -> None:
    decoded = _opus_round_trip(ToneTrack(frequency), frames=100)
    assert decoded[0].format.name == "s16" and not decoded[0].format.is_planar
    assert len(decoded[0].layout.channels) == 2
    samples = frames_to_samples(decoded[5:])  # skip the codec's start-up
    assert abs(dominant_frequency(samples, 48_000) - frequency) <= 5.0
    rms = float(np.sqrt(np.mean(samples**2)))
    assert 0.3 / np.sqrt(2) * 0.8 < rms < 0.3 / np.sqrt(2) * 1.2


def test_tone_frames_are_48k_mono_s16_20ms_and_continuous() -> None:
    track = ToneTrack(440.0)
    frames = [track.render(i) for i in range(50)]
    first = frames[0]
    assert (first.sample_rate, first.samples, first.format.name) == (48_000, 960, "s16")
    assert first.layout.name == "mono" and [f.pts for f in frames[:3]] == [0, 960, 1920]
    samples = frames_to_samples(frames)
    assert abs(float(np.max(np.abs(samples))) - 0.3) < 0.01
    assert float(np.max(np.abs(np.diff(samples)))) < 0.02  # no phase jumps between frames
    assert abs(dominant_frequency(samples, 48_000) - 440.0) < 0.5


def test_frames_to_samples_layouts() -> None:
    left = np.linspace(-0.5, 0.5, 960, dtype=np.float32)
    right = -left
    packed = np.round(np.stack([left, right], axis=1).reshape(1, -1) * 32768).astype(np.int16)
    stereo_s16 = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
    planar = av.AudioFrame.from_ndarray(np.stack([left, left]), format="fltp", layout="stereo")
    assert np.allclose(frames_to_samples([stereo_s16]), 0.0, atol=1e-4)
    assert np.allclose(frames_to_samples([planar]), left)
    assert frames_to_samples([]).shape == (0,)


# --- pacing and collect ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_frame_counter_track_paces_and_counts() -> None:
    track = FrameCounterTrack(fps=60)
    frames = await collect(track, 4, timeout=2.0)
    assert all(isinstance(f, av.VideoFrame) for f in frames)
    assert [read_frame_counter(f) for f in frames if isinstance(f, av.VideoFrame)] == [0, 1, 2, 3]
    assert [f.pts for f in frames] == [0, 1500, 3000, 4500]
    standard = await collect(FrameCounterTrack(), 2, timeout=2.0)
    assert [f.pts for f in standard] == [0, 3000]  # aiortc's own next_timestamp()


@pytest.mark.asyncio
async def test_tone_track_paces_in_real_time() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames = await collect(ToneTrack(), 6, timeout=2.0)
    assert [f.pts for f in frames] == [0, 960, 1920, 2880, 3840, 4800]
    assert loop.time() - started >= 0.09  # 5 frame intervals of 20 ms


class _Silent(MediaStreamTrack):
    kind = "video"

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


@pytest.mark.asyncio
async def test_collect_times_out_or_returns_partial() -> None:
    with pytest.raises(TimeoutError, match="0 of 3 video frames"):
        await collect(_Silent(), 3, timeout=0.05)
    assert await collect(_Silent(), 3, timeout=0.05, allow_partial=True) == []


@pytest.mark.asyncio
async def test_collect_stops_when_the_track_ends() -> None:
    track = ToneTrack()
    track.stop()
    with pytest.raises(MediaStreamError):
        await collect(track, 3, timeout=1.0)
    assert await collect(track, 3, timeout=1.0, allow_partial=True) == []

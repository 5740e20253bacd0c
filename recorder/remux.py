"""Encoded frames into WebM/Matroska with PyAV, without ever opening an encoder or decoder.

Streams are created from a *template* stream (``add_stream_from_template``): PyAV then copies
codec parameters we set by hand (dimensions from the first keyframe, H.264 SPS/PPS, an Opus
``OpusHead``) into the container and never opens a codec. Opus and VP8 go to WebM; anything
with H.264 to Matroska.

Timing: the container's time base is 1 ms. Each track is anchored at the arrival time of its
first frame; after that its timestamps follow the RTP clock (unwrapped), so jitter does not
distort them, and a track that starts later (video waiting for a keyframe) starts later in
the file. Audio and video therefore share one wall-clock origin: the first frame of the
recording.

The container header needs every track's parameters, so until each video track has had a
keyframe (or ``preroll_limit_ms`` of media is waiting) frames are held; a video track that
never produced a keyframe by then is left out of the file. The output is written for a
non-seekable sink (the encrypting writer): clusters of at most ``cluster_ms`` are emitted as
they close, and there are no cues or total duration (players handle this like a live stream;
durations come from the timestamps).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import av

from recorder.bitstream import (
    H264_PPS,
    H264_SPS,
    annexb,
    annexb_nals,
    h264_sps_dimensions,
    opus_head,
    opus_samples,
    vp8_keyframe_dimensions,
)
from recorder.depacketize import Frame

__all__ = [
    "SUPPORTED_CODECS",
    "RemuxError",
    "Remuxer",
    "TrackResult",
    "TrackSpec",
    "container_for",
]

SUPPORTED_CODECS = {"audio": frozenset({"opus"}), "video": frozenset({"vp8", "h264"})}
_MS = Fraction(1, 1000)


class RemuxError(Exception):
    """The tracks cannot be recorded (unsupported codec) or the muxer failed."""


class _Writable(Protocol):
    def write(self, data: bytes) -> int: ...


@dataclass(frozen=True, slots=True)
class TrackSpec:
    """One track to record: what the producer negotiated (see :meth:`from_codec`)."""

    kind: str
    codec: str
    clock_rate: int
    channels: int | None = None
    track_id: str = ""

    @classmethod
    def from_codec(cls, codec: Any, track_id: str = "") -> TrackSpec:
        """From an :class:`sfu.codec.Codec` (kind, name, clock_rate, channels)."""
        return cls(
            kind=codec.kind,
            codec=codec.name.lower(),
            clock_rate=codec.clock_rate,
            channels=codec.channels,
            track_id=track_id,
        )


def container_for(tracks: Sequence[TrackSpec]) -> tuple[str, str]:
    """(PyAV format name, media type) for these tracks; raises RemuxError if unsupported."""
    if not tracks:
        raise RemuxError("nothing to record")
    for track in tracks:
        if track.codec not in SUPPORTED_CODECS.get(track.kind, ()):
            raise RemuxError(f"cannot record {track.kind}/{track.codec}")
    if sum(t.kind == "video" for t in tracks) > 1 or sum(t.kind == "audio" for t in tracks) > 1:
        raise RemuxError("one recording holds at most one audio and one video track")
    if any(t.codec == "h264" for t in tracks):
        return "matroska", "video/x-matroska"
    has_video = any(t.kind == "video" for t in tracks)
    return "webm", "video/webm" if has_video else "audio/webm"


@dataclass(slots=True)
class TrackResult:
    """What was written for one track."""

    kind: str
    codec: str
    frames: int = 0
    first_pts_ms: int | None = None
    last_pts_ms: int | None = None
    width: int | None = None
    height: int | None = None
    omitted: bool = False  # video that had no keyframe before the header was written

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "codec": self.codec,
            "frames": self.frames,
            "first_pts_ms": self.first_pts_ms,
            "last_pts_ms": self.last_pts_ms,
            "width": self.width,
            "height": self.height,
            "omitted": self.omitted,
        }


@dataclass(slots=True)
class _Track:
    spec: TrackSpec
    result: TrackResult
    configured: bool = False
    extradata: bytes | None = None
    anchor: tuple[float, int] | None = None  # (arrival, RTP ts) of the first frame
    last_pts: int = -1
    stream: Any = None
    held: list[tuple[int, Frame]] = field(default_factory=list)


def _template_stream(codec: str) -> tuple[Any, Any]:
    """(scratch container, stream) whose codec context is never opened: a muxing template."""
    scratch = av.open(io.BytesIO(), mode="w", format="matroska")
    try:
        return scratch, scratch.add_stream(codec)
    except (av.FFmpegError, ValueError) as exc:
        scratch.close()
        raise RemuxError(f"PyAV has no {codec} codec to describe the track: {exc}") from exc


class Remuxer:
    """Writes frames of the declared tracks into one container on ``out`` (see module doc).

    Not thread-safe: the recorder's worker thread owns it.
    """

    def __init__(
        self,
        out: _Writable,
        tracks: Sequence[TrackSpec],
        *,
        preroll_limit_ms: int = 5000,
        cluster_ms: int = 1000,
    ) -> None:
        self.format, self.media_type = container_for(tracks)
        self._out = out
        self._tracks = [_Track(spec=t, result=TrackResult(t.kind, t.codec)) for t in tracks]
        for track in self._tracks:
            if track.spec.kind == "audio":
                track.configured = True
                track.extradata = opus_head(track.spec.channels or 2)
        self._preroll_limit_ms = preroll_limit_ms
        self._cluster_ms = cluster_ms
        self._origin: float | None = None
        self._container: Any = None
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether the container header has been written."""
        return self._container is not None

    @property
    def streams(self) -> list[Any]:
        """The container's PyAV streams (none before the header is written)."""
        return [t.stream for t in self._tracks if t.stream is not None]

    @property
    def results(self) -> list[TrackResult]:
        return [t.result for t in self._tracks]

    def _pts(self, track: _Track, frame: Frame) -> int:
        if self._origin is None:
            self._origin = frame.arrival
        if track.anchor is None:
            track.anchor = (frame.arrival, frame.ts)
        arrival, ts0 = track.anchor
        pts = round(
            (arrival - self._origin) * 1000 + (frame.ts - ts0) * 1000 / track.spec.clock_rate
        )
        if pts <= track.last_pts:
            pts = track.last_pts + 1  # the muxer needs strictly increasing timestamps
        track.last_pts = pts
        return pts

    def _configure(self, track: _Track, frame: Frame) -> None:
        if not frame.keyframe:
            return
        if track.spec.codec == "vp8":
            dims = vp8_keyframe_dimensions(frame.data)
            if dims is not None:
                track.result.width, track.result.height = dims
                track.configured = True
            return
        nals = list(annexb_nals(frame.data))
        sps = next((n for n in nals if n[0] & 0x1F == H264_SPS), None)
        pps = next((n for n in nals if n[0] & 0x1F == H264_PPS), None)
        dims = h264_sps_dimensions(sps) if sps else None
        if sps and pps and dims:
            track.result.width, track.result.height = dims
            track.extradata = annexb([sps, pps])
            track.configured = True

    def add(self, index: int, frame: Frame) -> None:
        """Add a frame of track ``index`` (frames of one track in timestamp order)."""
        if self._closed:
            return
        track = self._tracks[index]
        if track.result.omitted:
            return
        if not track.configured:
            self._configure(track, frame)
            if not track.configured:
                return  # nothing decodable before the first usable keyframe
        pts = self._pts(track, frame)
        if self._container is None:
            track.held.append((pts, frame))
            if all(t.configured for t in self._tracks) or self._preroll_exceeded():
                self._start()
            return
        self._mux(track, pts, frame)

    def _preroll_exceeded(self) -> bool:
        held = [pts for t in self._tracks for pts, _ in t.held]
        return bool(held) and max(held) - min(held) > self._preroll_limit_ms

    def _start(self) -> None:
        options = {
            "cluster_time_limit": str(self._cluster_ms),
            "max_interleave_delta": "500000",  # µs: never hold one track back longer
            "flush_packets": "1",
        }
        container = av.open(self._out, mode="w", format=self.format, options=options)
        try:
            for track in self._tracks:
                if not track.configured:
                    track.result.omitted = True
                    track.held.clear()
                    continue
                scratch, template = _template_stream(track.spec.codec)
                try:
                    stream = container.add_stream_from_template(template, opaque=True)
                finally:
                    scratch.close()
                ctx = stream.codec_context
                if track.spec.kind == "video":
                    ctx.width = track.result.width
                    ctx.height = track.result.height
                    ctx.framerate = 0  # no fixed frame rate (and no DefaultDuration): as sent
                else:
                    ctx.sample_rate = 48000
                    ctx.layout = "mono" if track.spec.channels == 1 else "stereo"
                if track.extradata is not None:
                    ctx.extradata = track.extradata
                stream.time_base = _MS
                track.stream = stream
        except (av.FFmpegError, ValueError) as exc:
            container.close()
            raise RemuxError(f"cannot set up the {self.format} container: {exc}") from exc
        self._container = container
        held = sorted(
            ((pts, i, frame) for i, t in enumerate(self._tracks) for pts, frame in t.held),
            key=lambda item: (item[0], item[1]),
        )
        for track in self._tracks:
            track.held.clear()
        for pts, i, frame in held:
            self._mux(self._tracks[i], pts, frame)

    def _mux(self, track: _Track, pts: int, frame: Frame) -> None:
        packet = av.Packet(frame.data)
        packet.stream = track.stream
        packet.time_base = _MS
        packet.pts = packet.dts = pts
        packet.is_keyframe = frame.keyframe
        if track.spec.kind == "audio":
            samples = opus_samples(frame.data)
            if samples:
                packet.duration = samples // 48
        try:
            self._container.mux(packet)
        except (av.FFmpegError, ValueError) as exc:
            raise RemuxError(f"muxing failed: {exc}") from exc
        result = track.result
        result.frames += 1
        if result.first_pts_ms is None:
            result.first_pts_ms = pts
        result.last_pts_ms = pts

    def close(self) -> None:
        """Write everything held and the trailer (the last cluster)."""
        if self._closed:
            return
        if self._container is None and any(t.held for t in self._tracks):
            self._start()
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, ValueError) as exc:
                raise RemuxError(f"cannot finish the container: {exc}") from exc

    def abandon(self) -> None:
        """Stop without writing anything more (the output is being discarded or was lost)."""
        self._closed = True
        self._container = None  # never closed: no trailer reaches the (abandoned) output

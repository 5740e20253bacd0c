"""ffprobe on real recordings (Debian's ffmpeg)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Probe", "probe"]


@dataclass(frozen=True)
class Probe:
    format: str
    codecs: dict[str, str]  # codec_type -> codec_name
    duration_s: float
    start_s: dict[str, float]  # codec_type -> first packet time
    frames: dict[str, int]


def _ffprobe(path: Path, *args: str) -> str:
    return subprocess.run(
        ["ffprobe", "-v", "error", *args, str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip


def _packet_times(path: Path, *select: str) -> list[float]:
    out = _ffprobe(path, *select, "-show_entries", "packet=pts_time", "-of", "csv=p=0")
    return [float(t) for t in out.split() if t.strip() and t != "N/A"]


def probe(path: Path) -> Probe:
    """Streams, duration and first-packet times, read by ffprobe (counting packets)."""
    info = json.loads(
        _ffprobe(path, "-count_packets", "-show_streams", "-show_format", "-of", "json")
    )
    codecs, frames, starts = {}, {}, {}
    for stream in info["streams"]:
        kind = stream["codec_type"]
        codecs[kind] = stream["codec_name"]
        frames[kind] = int(stream.get("nb_read_packets", 0))
        first = _packet_times(path, "-select_streams", f"{kind[0]}:0", "-read_intervals", "%+#1")
        starts[kind] = first[0] if first else 0.0
    # Live-written files carry no total duration: measure the last packet instead.
    duration = float(info["format"].get("duration") or 0.0) or max(
        _packet_times(path), default=0.0
    )
    return Probe(info["format"]["format_name"], codecs, duration, starts, frames)

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


def probe(path: Path) -> Probe:
    """Streams, duration and first-packet times, read by ffprobe (counting packets)."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_packets",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    info = json.loads(out.stdout)
    codecs, frames, starts = {}, {}, {}
    for stream in info["streams"]:
        kind = stream["codec_type"]
        codecs[kind] = stream["codec_name"]
        frames[kind] = int(stream.get("nb_read_packets", 0))
        first = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                f"{kind[0]}:0",
                "-show_entries",
                "packet=pts_time",
                "-read_intervals",
                "%+#1",
                "-of",
                "csv=p=0",
                str(path),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        starts[kind] = float(first[0]) if first else 0.0
    duration = float(info["format"].get("duration") or 0.0)
    if not duration:
        # Live-written files carry no total duration: measure the last packet instead.
        last = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "packet=pts_time",
                "-of",
                "csv=p=0",
                str(path),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        duration = max((float(t) for t in last if t.strip() and t != "N/A"), default=0.0)
    return Probe(info["format"]["format_name"], codecs, duration, starts, frames)

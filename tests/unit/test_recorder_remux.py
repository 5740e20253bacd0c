"""RTP → WebM/Matroska through the recording sink, checked with ffprobe/ffmpeg.

The media are real: aiortc's VP8/H.264/Opus encoders and packetizers (recorder.synthetic).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from recorder.crypto import EncryptedWriter, StreamStatus, decrypt_chunks, new_data_key
from recorder.remux import RemuxError, TrackSpec, container_for
from recorder.sink import RecordingResult, RecordingSink
from recorder.synthetic import SyntheticPacket, feed, synth_rtp

assert shutil.which("ffprobe"), "ffprobe is missing: scripts/test installs it"

SECONDS = 5.0
OPUS = TrackSpec("audio", "opus", 48000, 2, "mic")


def vtrack(codec: str) -> TrackSpec:
    return TrackSpec("video", codec, 90000, None, "cam")


@pytest.fixture(scope="module")
def vp8_media() -> tuple[list[SyntheticPacket], dict[str, int]]:
    return synth_rtp(SECONDS, video="vp8", keyframe_interval_s=1.0)


@pytest.fixture(scope="module")
def h264_media() -> tuple[list[SyntheticPacket], dict[str, int]]:
    return synth_rtp(SECONDS, video="h264")


class Recording:
    """A sink writing to an encrypted file in a temp dir, and ways to look at the result."""

    def __init__(self, tmp: Path, tracks: list[TrackSpec], **options: Any) -> None:
        self.key = new_data_key()
        self.path = tmp / "media.enc"
        self.writer = EncryptedWriter(self.path.open("wb"), self.key, "rec-1")
        self.sink = RecordingSink("rec-1", tracks, self.writer, **options)
        self.tmp = tmp

    def feed(self, packets: list[SyntheticPacket]) -> None:
        feed([f.on_rtp for f in self.sink.feeds], packets)

    def wait_drained(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.sink.queued and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the last item's frames are muxed and flushed

    def decrypt(self, *, allow_truncated: bool = False) -> tuple[Path, StreamStatus]:
        status = StreamStatus()
        out = self.tmp / "plain.mkv"
        with self.path.open("rb") as file:
            data = b"".join(
                decrypt_chunks(file, self.key, allow_truncated=allow_truncated, status=status)
            )
        out.write_bytes(data)
        return out, status


def ffprobe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format",
         "-of", "json", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return dict(json.loads(result.stdout))


def spans(path: Path) -> dict[str, tuple[float, float]]:
    """(first pts, end of last packet) per codec, from the packets' own timestamps."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=stream_index,pts_time,duration_time",
         "-show_entries", "stream=index,codec_name", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    info = json.loads(result.stdout)
    names = {s["index"]: s["codec_name"] for s in info["streams"]}
    found: dict[str, tuple[float, float]] = {}
    for packet in info["packets"]:
        name = names[packet["stream_index"]]
        pts = float(packet["pts_time"])
        duration = float(packet.get("duration_time", "0") or 0) or (1 / 30)
        first, end = found.get(name, (pts, pts))
        found[name] = (min(first, pts), max(end, pts + duration))
    return found


def decode_errors(path: Path) -> str:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-fps_mode", "passthrough",
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.stderr.strip()


def check_file(path: Path, counts: dict[str, int], video: str, *, doc_type: str) -> None:
    info = ffprobe(path)
    assert doc_type.encode() in path.read_bytes()[:64]  # the EBML DocType
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == video
    assert (streams["video"]["width"], streams["video"]["height"]) == (320, 240)
    assert streams["audio"]["codec_name"] == "opus"
    assert int(streams["video"]["nb_read_frames"]) == counts["video"]
    assert int(streams["audio"]["nb_read_frames"]) == counts["audio"]
    timing = spans(path)
    for codec in (video, "opus"):
        first, end = timing[codec]
        assert abs((end - first) - SECONDS) < 0.1, (codec, first, end)
    assert abs(timing[video][0] - timing["opus"][0]) < 0.1  # aligned starts
    assert decode_errors(path) == ""


# --------------------------------------------------------------------------- formats


def test_container_choice() -> None:
    assert container_for([OPUS, vtrack("vp8")]) == ("webm", "video/webm")
    assert container_for([OPUS]) == ("webm", "audio/webm")
    assert container_for([vtrack("h264"), OPUS]) == ("matroska", "video/x-matroska")
    for bad in ([], [TrackSpec("video", "av1", 90000)], [OPUS, OPUS]):
        with pytest.raises(RemuxError):
            container_for(bad)


def test_vp8_and_opus_to_webm(
    tmp_path: Path, vp8_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    packets, counts = vp8_media
    recording = Recording(tmp_path, [OPUS, vtrack("vp8")])
    recording.feed(packets)
    result = recording.sink.close()
    assert result.state == "complete" and result.dropped_packets == 0 and result.lost_frames == 0
    assert [t.frames for t in result.tracks] == [counts["audio"], counts["video"]]
    # remuxed, never transcoded: no codec context was ever opened
    assert not any(s.codec_context.is_open for s in recording.sink.remuxer.streams)
    path, status = recording.decrypt()
    assert status.complete
    check_file(path, counts, "vp8", doc_type="webm")


def test_h264_and_opus_to_matroska(
    tmp_path: Path, h264_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    packets, counts = h264_media
    recording = Recording(tmp_path, [OPUS, vtrack("h264")])
    recording.feed(packets)
    result = recording.sink.close()
    assert result.state == "complete" and result.format == "matroska"
    path, _ = recording.decrypt()
    check_file(path, counts, "h264", doc_type="matroska")


def test_audio_only(
    tmp_path: Path, vp8_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    packets, counts = vp8_media
    recording = Recording(tmp_path, [OPUS])
    recording.feed([p for p in packets if p.track == 0])
    result = recording.sink.close()
    assert result.media_type == "audio/webm"
    path, _ = recording.decrypt()
    streams = ffprobe(path)["streams"]
    assert [s["codec_name"] for s in streams] == ["opus"]
    assert int(streams[0]["nb_read_frames"]) == counts["audio"]


# --------------------------------------------------------------------------- damage


def test_crash_keeps_what_was_flushed(
    tmp_path: Path, vp8_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    """SIGKILL simulation: no trailer, no final chunk; the flushed clusters survive."""
    packets, _ = vp8_media
    recording = Recording(tmp_path, [OPUS, vtrack("vp8")])
    recording.feed(packets)
    recording.wait_drained()
    recording.sink.crash()
    result = recording.sink.join(10)
    assert result is not None and result.state == "crashed"
    with pytest.raises(Exception, match="truncated"):
        recording.decrypt()
    path, status = recording.decrypt(allow_truncated=True)
    assert status.truncation is not None and not status.complete
    timing = spans(path)
    readable = min(end for _, end in timing.values())
    assert readable >= 3.0  # at most the open cluster (≤ 1 s) is lost
    assert readable >= SECONDS - 1.2
    assert decode_errors(path) == ""


def test_lost_packet_freezes_until_the_next_keyframe(
    tmp_path: Path, vp8_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    packets, counts = vp8_media
    video = [p for p in packets if p.track == 1]
    lost = next(p for p in video if p.at > 2.1 and not p.keyframe)
    # a reordered pair elsewhere must not cost anything
    i = next(i for i, p in enumerate(packets) if p.track == 1 and p.at > 3.5)
    j = next(j for j in range(i + 1, len(packets)) if packets[j].track == 1)
    shuffled = list(packets)
    shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    requests: list[str] = []
    recording = Recording(tmp_path, [OPUS, vtrack("vp8")], keyframe_request=requests.append)
    recording.feed([p for p in shuffled if p is not lost])
    result = recording.sink.close()
    frames_lost = counts["video"] - result.tracks[1].frames
    assert 1 <= frames_lost <= 30  # up to the next keyframe (one a second here)
    assert frames_lost - 1 <= result.lost_frames <= frames_lost  # a frame may vanish whole
    assert requests == ["cam"]
    path, _ = recording.decrypt()
    assert int(ffprobe(path)["streams"][1]["nb_read_frames"]) == result.tracks[1].frames
    assert decode_errors(path) == ""


def test_on_rtp_never_blocks_and_counts_drops(
    tmp_path: Path, vp8_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    packets, _ = vp8_media
    recording = Recording(tmp_path, [OPUS, vtrack("vp8")], queue_packets=8)
    feeds = recording.sink.feeds
    slowest = 0.0
    for p in packets:
        started = time.perf_counter()
        feeds[p.track].on_rtp(p.packet, p.seq, p.ts, p.keyframe)
        slowest = max(slowest, time.perf_counter() - started)
    result = recording.sink.close()
    assert result.dropped_packets > 0
    assert slowest < 0.05  # never waits for the worker


def test_nothing_is_accepted_after_stop(
    tmp_path: Path, vp8_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    packets, _ = vp8_media
    recording = Recording(tmp_path, [OPUS, vtrack("vp8")])
    half = len(packets) // 2
    recording.feed(packets[:half])
    recording.sink.stop()
    recording.feed(packets[half:])
    result: RecordingResult | None = recording.sink.join(10)
    assert result is not None and result.state == "complete"
    assert sum(t.frames for t in result.tracks) < sum(1 for _ in packets[:half]) + 1
    path, _ = recording.decrypt()
    assert max(end for _, end in spans(path).values()) < SECONDS / 2 + 0.2


def test_video_without_a_keyframe_is_left_out(
    tmp_path: Path, vp8_media: tuple[list[SyntheticPacket], dict[str, int]]
) -> None:
    """Audio is held for the container header at most ``preroll_limit_ms``, not forever."""
    packets, counts = vp8_media
    recording = Recording(tmp_path, [OPUS, vtrack("vp8")], preroll_limit_ms=1000)
    assert recording.sink.feeds[1].needs_keyframe
    recording.feed([p for p in packets if p.track == 0 or not p.keyframe])
    result = recording.sink.close()
    assert result.tracks[1].omitted and result.tracks[1].frames == 0
    assert result.tracks[0].frames == counts["audio"]
    path, _ = recording.decrypt()
    assert [s["codec_name"] for s in ffprobe(path)["streams"]] == ["opus"]

"""kill -9 of a process that is recording: the file keeps all but the last ~second or two.

The test starts this file as a child process that records real-time VP8 + Opus RTP (aiortc's
encoders) through the real store and sink, kills it with SIGKILL after 4 s, then does what the
next server start does (``RecordingStore.recover``) and probes the decrypted file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
assert shutil.which("ffprobe"), "ffprobe is missing: scripts/test installs it"

REPO = Path(__file__).resolve().parents[2]
KILL_AFTER_S = 4.0


def _child(data_dir: Path) -> None:
    """Record until killed."""
    from consent.tokens import issue_consent_token
    from recorder.crypto import load_master_key
    from recorder.remux import TrackSpec
    from recorder.store import RecordingStore
    from recorder.synthetic import feed, synth_rtp
    from sfu.keys import KeyStore

    keys = KeyStore.open(data_dir)
    store = RecordingStore(data_dir, load_master_key(data_dir), keys)
    claims = issue_consent_token(
        keys, room="room-1", subject="alice", scope=["audio", "video"], purpose="test",
        notice_text="This call is recorded.",
    )[1]  # fmt: skip
    packets, _ = synth_rtp(KILL_AFTER_S + 1.5, video="vp8", noise=4)
    sink = store.create(
        room="room-1",
        subject="alice",
        consents=[claims],
        tracks=[
            TrackSpec("audio", "opus", 48000, 2, "mic"),
            TrackSpec("video", "vp8", 90000, None, "cam"),
        ],
    )
    payload = sum(len(p.packet) for p in packets)
    print(json.dumps({"recording": sink.recording_id, "rtp_bytes_per_s": payload / 8}), flush=True)
    feed([f.on_rtp for f in sink.feeds], packets, realtime=True)
    time.sleep(60)  # never reached in the test: it is killed first


def _spans(path: Path) -> dict[str, tuple[float, float]]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=stream_index,pts_time",
         "-show_entries", "stream=index,codec_name", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    info = json.loads(result.stdout)
    names = {s["index"]: s["codec_name"] for s in info["streams"]}
    found: dict[str, tuple[float, float]] = {}
    for packet in info["packets"]:
        name, pts = names[packet["stream_index"]], float(packet["pts_time"])
        first, last = found.get(name, (pts, pts))
        found[name] = (min(first, pts), max(last, pts))
    return found


def test_kill_9_loses_at_most_about_two_seconds(tmp_path: Path) -> None:
    from recorder.crypto import MASTER_KEY_ENV, StreamStatus, load_master_key
    from recorder.store import RecordingStore
    from sfu.keys import KeyStore

    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != MASTER_KEY_ENV}
    env["PYTHONPATH"] = str(REPO)
    child = subprocess.Popen(
        [sys.executable, __file__, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # printed when the first packet is about to go out
        started = time.monotonic()
        assert line, "the recording child did not start"
        hello = json.loads(line)
        time.sleep(KILL_AFTER_S)
        os.kill(child.pid, signal.SIGKILL)
        fed_s = time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    store = RecordingStore(data_dir, load_master_key(data_dir), KeyStore.open(data_dir))
    assert store.recover() == [hello["recording"]]
    info = store.get(hello["recording"])
    assert info.state == "interrupted"
    assert store.verify(info.id) is None
    status = StreamStatus()
    out = tmp_path / "recovered.webm"
    out.write_bytes(b"".join(store.decrypted_media(info.id, status=status)))
    spans = _spans(out)
    assert set(spans) == {"vp8", "opus"}
    readable = min(last for _, last in spans.values())
    lost_s = fed_s - readable
    print(
        f"\nkill -9 after {fed_s:.2f} s of real-time media: {readable:.2f} s readable, "
        f"{lost_s:.2f} s lost (≈ {lost_s * hello['rtp_bytes_per_s'] / 1024:.0f} KiB of RTP), "
        f"{status.chunks} chunks intact, cut: {status.truncation}"
    )
    assert readable >= 2.0
    assert lost_s <= 2.2


if __name__ == "__main__":
    _child(Path(sys.argv[1]))

"""``python -m bench.worker``: one generator process, driven by :mod:`bench.pool`.

It hosts some of a run's members (aiortc peers that publish the replayed clips and/or
count received packets without decoding) and answers requests, one JSON object per line
on stdin, one reply per line on stdout (``{"id": n, "ok": true, ...}`` or
``{"id": n, "ok": false, "error": "..."}``). Requests:

* ``setup`` {clips: pickle path, hosts: [addresses]} → {pid}
* ``join`` {member, url, token, identity, video, audio, audio_clip, subscribe, timeout,
  impair: [send, receive] (``Impairment`` text or null)}
  → {join_started, video_pts, audio_pts}
* ``poll`` → {sent: {member: records}, received: {member: records}, tapped_late: [member],
  late_skips, keyframe_requests} (records since the last poll, :mod:`bench.procs`)
* ``buffers`` → {changed}: 8 MiB receive buffers on its media sockets
* ``lag_reset`` / ``lag`` → {samples_ms}: its own event-loop lag
* ``close`` → {}: leave and stop the media. The process exits at the end of stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiortc import MediaStreamTrack

from bench.latency import classify_sent, key_of, media_payload_types
from bench.media import ReplayTrack, forward_keyframe_requests
from bench.monitor import LoopLagMonitor
from bench.procs import Records, encode_records
from bench.scenario import Clips, close_peers, enlarge_receive_buffers
from bench.server import OktorusPeer, join_oktorus
from sfu import aiortc_bridge as bridge
from sfu.rtp import payload_offset
from signaling.client.impair import Impairment

__all__ = ["main"]


class _Received:
    """Receive tap: key, arrival time and size of every packet (swallowed, not decoded)."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records = Records()

    def __call__(self, packet: bytes) -> None:
        now = time.perf_counter()
        offset = payload_offset(packet)
        key = 0 if offset < 0 or offset >= len(packet) else key_of(packet[offset:])
        self.records.add(key, now, len(packet))


class _Sent:
    """Send tap: key, send time and kind of every media packet this member publishes."""

    __slots__ = ("_audio", "_video", "records")

    def __init__(self, video: set[int], audio: set[int]) -> None:
        self._video = frozenset(video)
        self._audio = frozenset(audio)
        self.records = Records()

    def __call__(self, packet: bytes) -> None:
        sent = classify_sent(packet, self._video, self._audio, "vp8")
        if sent is not None:
            self.records.add(sent[0], time.perf_counter(), sent[1])


class Worker:
    def __init__(self) -> None:
        self.clips: Clips | None = None
        self.peers: dict[int, OktorusPeer] = {}
        self.tracks: list[ReplayTrack] = []
        self.sent: dict[int, _Sent] = {}
        self.received: dict[int, _Received] = {}
        self.lag = LoopLagMonitor()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "setup":
            self.clips = pickle.loads(Path(str(request["clips"])).read_bytes())
            bridge.restrict_host_addresses([str(h) for h in request["hosts"]])
            self.lag.start()
            return {"pid": os.getpid()}
        if op == "join":
            return await self._join(request)
        if op == "poll":
            return self._poll()
        if op == "buffers":
            return {"changed": enlarge_receive_buffers(list(self.peers.values()))}
        if op == "lag_reset":
            self.lag.reset()
            return {}
        if op == "lag":
            return {"samples_ms": list(self.lag.samples_ms)}
        if op == "close":
            await self.lag.stop()
            await close_peers(list(self.peers.values()))
            for track in self.tracks:
                track.stop()
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def _join(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.clips is None:
            raise RuntimeError("join before setup")
        member = int(request["member"])
        tracks: list[MediaStreamTrack] = []
        if request["video"]:
            tracks.append(ReplayTrack(self.clips.video))
        if request["audio"]:
            tracks.append(ReplayTrack(self.clips.audio_for(int(request["audio_clip"]))))
        self.tracks += [t for t in tracks if isinstance(t, ReplayTrack)]
        tap = _Received() if request["subscribe"] else None
        if tap is not None:
            self.received[member] = tap
        send, receive = (None if i is None else Impairment.parse(str(i)) for i in request["impair"])
        started = time.perf_counter()
        peer = await join_oktorus(
            str(request["url"]),
            str(request["token"]),
            str(request["identity"]),
            tracks=tracks,
            subscribe=bool(request["subscribe"]),
            tap=tap,
            timeout=float(request["timeout"]),
            impair_send=send,
            impair_receive=receive,
        )
        self.peers[member] = peer
        video: set[int] = set()
        audio: set[int] = set()
        pc = peer.publish_pc
        if pc is not None and pc.localDescription is not None:
            video, audio = media_payload_types(str(pc.localDescription.sdp))
            sent = _Sent(video, audio)
            self.sent[member] = sent
            bridge.tap_sent_rtp(pc, sent)
            for sender in pc.getSenders():
                track = sender.track
                if isinstance(track, ReplayTrack) and track.kind == "video":
                    forward_keyframe_requests(sender, track.request_keyframe)
        return {"join_started": started, "video_pts": sorted(video), "audio_pts": sorted(audio)}

    def _poll(self) -> dict[str, Any]:
        return {
            "sent": {str(m): encode_records(s.records.take()) for m, s in self.sent.items()},
            "received": {
                str(m): encode_records(r.records.take()) for m, r in self.received.items()
            },
            "tapped_late": [m for m, p in self.peers.items() if p.tapped_late],
            "nacks_sent": sum(p.nacker.nacks_sent for p in self.peers.values() if p.nacker),
            "nack_repaired": sum(p.nacker.repaired for p in self.peers.values() if p.nacker),
            "late_skips": sum(t.late_skips for t in self.tracks),
            "keyframe_requests": sum(t.keyframe_requests for t in self.tracks if t.kind == "video"),
        }


def _reply(request_id: Any, body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"id": request_id, **body}) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    """Read requests from stdin (a thread), answer each in its own task, until EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="worker-stdin", daemon=True).start()
    worker = Worker()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(request: dict[str, Any]) -> None:
        try:
            _reply(request.get("id"), {"ok": True, **await worker.handle(request)})
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the coordinator
            _reply(request.get("id"), {"ok": False, "error": f"{type(exc).__name__}: {exc}"})

    while (line := await queue.get()) is not None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            _reply(None, {"ok": False, "error": f"bad request: {exc}"})
            continue
        task = loop.create_task(answer(request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()
    with contextlib.suppress(Exception):
        await worker.handle({"op": "close"})


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()

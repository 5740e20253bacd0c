"""The recording sink: a consumer-like end point of producers, writing one encrypted file.

The event loop only enqueues: :meth:`TrackFeed.on_rtp` (same signature as
:meth:`sfu.consumer.Consumer.forward`) appends the forwarded packet's bytes to a bounded
queue and returns; when the queue is full the packet is dropped and counted, never waited
for. One worker thread per recording does everything else: RTP depacketizing, muxing (PyAV),
encryption and file I/O, in batches.

The queue is a :class:`collections.deque` capped by length, which the worker polls every
``poll_s`` (20 ms), rather than a :class:`queue.Queue`: ``Queue.put_nowait`` costs ≈ 4 µs
warm and 12-18 µs right after the loop wakes (locks, a condition variable, a futex wake of
the worker), ``deque.append`` ≈ 0.2 µs / 3 µs, and the loop never makes a system call for
the recorder. ``append``/``popleft``/``len`` are atomic under the GIL.

Ending a recording, all non-blocking on the loop (the worker finishes in the background):

* :meth:`RecordingSink.stop`: no packet is accepted after the call; those already queued
  are written, then the container trailer and the final encrypted chunk (state "complete").
* :meth:`RecordingSink.abort`: stop at once and discard (erasure follows; state "aborted").
* :meth:`RecordingSink.crash`: for tests: stop as a ``kill -9`` would, leaving only what
  was already handed to the OS (state "crashed").
* consent expiry: with ``stop_at`` (the consent's ``exp``), the sink stops by itself.

Loss bound on a killed process: the muxer closes a cluster every ``cluster_ms`` and the worker
hands each closed cluster to the OS at once (``flush``), fsyncing every ``fsync_interval_s``;
so at most the open cluster (≤ ``cluster_ms``) plus what is in the queue is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recorder.crypto import EncryptedWriter
from recorder.depacketize import (
    AudioAssembler,
    FrameDepacketizer,
    H264Depacketizer,
    VideoAssembler,
    Vp8Depacketizer,
)
from recorder.remux import Remuxer, TrackResult, TrackSpec
from sfu.rtp import SeqUnwrapper, TsUnwrapper, payload_end, payload_offset

__all__ = ["RecordingResult", "RecordingSink", "TrackFeed"]

_log = logging.getLogger(__name__)
_KEYFRAME_REQUEST_INTERVAL_S = 0.5
_Item = tuple[int, bytes, int, int, float]


@dataclass(slots=True)
class RecordingResult:
    """How a recording ended (handed to ``on_finished`` on the worker thread, except after
    :meth:`RecordingSink.crash`, which like a real kill leaves nothing but the file)."""

    recording_id: str
    state: str  # "complete" | "aborted" | "failed" | "crashed"
    format: str
    media_type: str
    started_at: float
    stopped_at: float
    tracks: list[TrackResult]
    chunks: int = 0
    chunk_sha256: list[str] = field(default_factory=list)
    media_bytes: int = 0
    dropped_packets: int = 0
    lost_frames: int = 0
    late_packets: int = 0
    worker_cpu_s: float = 0.0
    reason: str = ""  # why it ended: "stopped", "consent expired", an error...


class _TrackState:
    __slots__ = ("assembler", "last_request", "seq", "spec", "ts")

    def __init__(self, spec: TrackSpec) -> None:
        self.spec = spec
        self.seq = SeqUnwrapper()
        self.ts = TsUnwrapper()
        self.last_request = -1e9
        self.assembler: VideoAssembler | AudioAssembler
        if spec.kind == "video":
            dep: FrameDepacketizer = (
                Vp8Depacketizer() if spec.codec == "vp8" else H264Depacketizer()
            )
            self.assembler = VideoAssembler(dep, spec.clock_rate)
        else:
            self.assembler = AudioAssembler()


class TrackFeed:
    """The per-track entry point, attached to one producer like a consumer."""

    __slots__ = ("_limit", "_queue", "_sink", "_started", "index", "spec")

    def __init__(self, sink: RecordingSink, index: int, spec: TrackSpec) -> None:
        self._sink = sink
        self._queue = sink._queue
        self._limit = sink._queue_limit
        self._started = spec.kind != "video"
        self.index = index
        self.spec = spec

    def on_rtp(self, packet: bytes, seq: int, ts: int, keyframe: bool) -> None:
        """Take one forwarded packet (event loop; never blocks, never raises)."""
        sink = self._sink
        if not sink.accepting:
            return
        if not self._started:
            if not keyframe:
                return  # video before its first keyframe is useless: don't queue it
            self._started = True
        queue = self._queue
        if len(queue) >= self._limit:
            sink.dropped_packets += 1
            return
        queue.append((self.index, packet, seq, ts, time.monotonic()))

    forward = on_rtp  # the name the producer calls on its consumers

    @property
    def needs_keyframe(self) -> bool:
        """True while this video track waits for a keyframe (ask the producer for one)."""
        return not self._started or self._sink._needs_keyframe(self.index)


class RecordingSink:
    """Records the tracks of one participant into one encrypted file (see module doc).

    ``on_finished(result)`` runs on the worker thread when the file is finished (write the
    manifest there). ``keyframe_request(track_id)`` is called when a video track needs a
    keyframe after a loss: on ``loop`` via ``call_soon_threadsafe`` if a loop is given, else
    on the worker thread.
    """

    def __init__(
        self,
        recording_id: str,
        tracks: Sequence[TrackSpec],
        writer: EncryptedWriter,
        *,
        queue_packets: int = 4096,
        stop_at: float | None = None,
        on_finished: Callable[[RecordingResult], None] | None = None,
        keyframe_request: Callable[[str], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        cluster_ms: int = 1000,
        preroll_limit_ms: int = 5000,
        fsync_interval_s: float = 1.0,
        poll_s: float = 0.02,
    ) -> None:
        self.recording_id = recording_id
        self.tracks = tuple(tracks)
        self.remuxer = Remuxer(
            writer, self.tracks, preroll_limit_ms=preroll_limit_ms, cluster_ms=cluster_ms
        )
        self.started_at = time.time()
        self.accepting = True
        self.dropped_packets = 0
        self.result: RecordingResult | None = None
        self._writer = writer
        self._queue: collections.deque[_Item] = collections.deque()
        self._queue_limit = queue_packets
        self._poll_s = poll_s
        self._states = [_TrackState(spec) for spec in self.tracks]
        self.feeds = tuple(TrackFeed(self, i, spec) for i, spec in enumerate(self.tracks))
        self._stop_at_mono = (
            None if stop_at is None else time.monotonic() + (stop_at - self.started_at)
        )
        self._on_finished = on_finished
        self._keyframe_request = keyframe_request
        self._loop = loop
        self._fsync_interval_s = fsync_interval_s
        self._ending: str | None = None  # "stop" | "abort" | "crash"
        self._end_reason = ""
        self._control = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"recorder-{recording_id[:8]}", daemon=True
        )
        self._thread.start()

    # --- loop side ------------------------------------------------------------------

    def feed(self, track_id: str) -> TrackFeed:
        """The feed of the track with this id (KeyError if none)."""
        for feed in self.feeds:
            if feed.spec.track_id == track_id:
                return feed
        raise KeyError(track_id)

    def _end(self, how: str, reason: str) -> None:
        self.accepting = False
        if self._ending is None or how in ("abort", "crash"):
            self._ending = how
            self._end_reason = reason
        self._control.set()  # the worker sees it within poll_s

    def extend(self, stop_at: float) -> None:
        """A renewed consent: stop at ``stop_at`` (Unix time) instead."""
        self._stop_at_mono = time.monotonic() + (stop_at - time.time())

    def stop(self, reason: str = "stopped") -> None:
        """Accept no more packets; finish the file cleanly in the background."""
        self._end("stop", reason)

    def abort(self, reason: str = "aborted") -> None:
        """Accept no more packets; discard everything not yet written (before an erase)."""
        self._end("abort", reason)

    def crash(self) -> None:
        """Test hook: end like a SIGKILL (no trailer, no final chunk, buffers lost)."""
        self._end("crash", "crashed")

    @property
    def queued(self) -> int:
        """Packets accepted but not yet taken by the worker."""
        return len(self._queue)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def join(self, timeout: float | None = None) -> RecordingResult | None:
        """Wait (blocking) for the worker; the result, or None on timeout."""
        self._done.wait(timeout)
        return self.result

    def close(self, timeout: float | None = 30) -> RecordingResult:
        """:meth:`stop` and wait (blocking: threads and tests; the loop uses :meth:`aclose`)."""
        self.stop()
        result = self.join(timeout)
        if result is None:
            raise TimeoutError(f"recording {self.recording_id} did not finish in {timeout} s")
        return result

    async def aclose(self, reason: str = "stopped") -> RecordingResult:
        """:meth:`stop` and wait without blocking the loop."""
        self.stop(reason)
        return await self.wait_finished()

    async def wait_finished(self) -> RecordingResult:
        await asyncio.to_thread(self._done.wait)
        assert self.result is not None
        return self.result

    def _needs_keyframe(self, index: int) -> bool:
        assembler = self._states[index].assembler
        return isinstance(assembler, VideoAssembler) and assembler.need_keyframe

    # --- worker side ----------------------------------------------------------------

    def _run(self) -> None:
        cpu0 = time.thread_time()
        state, reason = "complete", ""
        try:
            self._loop_until_ended()
            how = self._ending
            reason = self._end_reason
            if how == "stop":
                self._drain()
                self.remuxer.close()
                self._writer.close()
            else:
                self._writer.abandon()
                self.remuxer.abandon()
                state = "aborted" if how == "abort" else "crashed"
        except Exception as exc:  # noqa: BLE001 - the worker must always end and report
            _log.exception("recording %s failed", self.recording_id)
            self.accepting = False
            state, reason = "failed", f"{type(exc).__name__}: {exc}"
            self._seal_after_failure()
        self._finish(state, reason, time.thread_time() - cpu0)

    def _loop_until_ended(self) -> None:
        last_fsync = time.monotonic()
        unsynced = False
        queue = self._queue
        while not self._control.is_set():
            if queue:
                for _ in range(min(len(queue), 256)):  # a batch, then the timers below
                    self._process(queue.popleft())
            else:
                time.sleep(self._poll_s)  # cheaper than Event.wait; stop is seen next round
            now = time.monotonic()
            if self._writer.pending:  # a cluster closed: hand it to the OS now
                self._writer.flush()
                unsynced = True
            if unsynced and now - last_fsync >= self._fsync_interval_s:
                self._writer.flush(fsync=True)
                last_fsync, unsynced = now, False
            if self._stop_at_mono is not None and now >= self._stop_at_mono:
                self._end("stop", "consent expired")

    def _drain(self) -> None:
        """Write what was accepted before the stop."""
        queue = self._queue
        while queue:
            self._process(queue.popleft())

    def _process(self, item: _Item) -> None:
        index, packet, seq, ts, arrival = item
        if self._stop_at_mono is not None and arrival >= self._stop_at_mono:
            return  # arrived after consent ended
        offset = payload_offset(packet)
        end = payload_end(packet)
        if offset < 0 or end < offset:
            return
        state = self._states[index]
        frames = state.assembler.push(
            state.seq.unwrap(seq),
            state.ts.unwrap(ts),
            bool(packet[1] & 0x80),
            packet[offset:end],
            arrival,
        )
        for frame in frames:
            self.remuxer.add(index, frame)
        if (
            self._keyframe_request is not None
            and isinstance(state.assembler, VideoAssembler)
            and state.assembler.need_keyframe
            and arrival - state.last_request >= _KEYFRAME_REQUEST_INTERVAL_S
        ):
            state.last_request = arrival
            self._request_keyframe(state.spec.track_id)

    def _request_keyframe(self, track_id: str) -> None:
        callback = self._keyframe_request
        assert callback is not None
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to ask
                self._loop.call_soon_threadsafe(callback, track_id)
        else:
            callback(track_id)

    def _seal_after_failure(self) -> None:
        """Keep what was written readable: seal the final chunk if the file is still open."""
        try:
            self.remuxer.abandon()
            self._writer.close()
        except Exception:  # noqa: BLE001 - best effort after a failure already reported
            _log.exception("recording %s: cannot seal the file", self.recording_id)
            self._writer.abandon()

    def _finish(self, state: str, reason: str, cpu_s: float) -> None:
        lost = late = 0
        for track_state in self._states:
            assembler: Any = track_state.assembler
            lost += getattr(assembler, "lost_frames", 0)
            late += assembler.late_packets
        self.result = RecordingResult(
            recording_id=self.recording_id,
            state=state,
            format=self.remuxer.format,
            media_type=self.remuxer.media_type,
            started_at=self.started_at,
            stopped_at=time.time(),
            tracks=self.remuxer.results,
            chunks=self._writer.chunks,
            chunk_sha256=list(self._writer.chunk_sha256),
            media_bytes=self._writer.bytes_written,
            dropped_packets=self.dropped_packets,
            lost_frames=lost,
            late_packets=late,
            worker_cpu_s=cpu_s,
            reason=reason,
        )
        if self._on_finished is not None and state != "crashed":  # kill -9 runs no code
            try:
                self._on_finished(self.result)
            except Exception:  # noqa: BLE001 - the result stays available to join()
                _log.exception("recording %s: on_finished failed", self.recording_id)
        self._done.set()

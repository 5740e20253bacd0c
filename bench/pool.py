"""The coordinator's side of several generator processes (``--generators N``).

Starts N ``python -m bench.worker`` children (inheriting this process's CPU affinity and
nice value), sends them members to join, and every :data:`POLL_S` pulls their records:
sends first (into the run's :class:`bench.latency.SendLedger`, through each remote
publisher's :class:`bench.latency.PublisherTap`), then the *previous* round's arrivals
(into the members' :class:`bench.latency.Arrivals`). Holding arrivals back one round
means a packet's send record is in the ledger before its arrival is matched, whichever
process reported first. Children are stopped by PID at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.latency import Arrivals, PublisherTap
from bench.monitor import ProcessCpu
from bench.procfs import drops_between, read_cpu_seconds, read_udp_drops
from bench.procs import Records, decode_records
from signaling.client.impair import Impairment

__all__ = ["GeneratorPool", "RemoteJoin", "WorkerError"]

POLL_S = 0.1
REQUEST_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_LINE_LIMIT = 64 << 20
_ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """A generator process failed a request or died."""


@dataclass(frozen=True, slots=True)
class RemoteJoin:
    join_started: float
    video_pts: set[int]
    audio_pts: set[int]


@dataclass(slots=True)
class _Child:
    index: int
    proc: asyncio.subprocess.Process
    log: Path
    pid: int = 0
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 0
    reader: asyncio.Task[None] | None = None
    members: int = 0
    late_skips: int = 0
    keyframe_requests: int = 0
    tapped_late: set[int] = field(default_factory=set)
    nacks_sent: int = 0
    nack_repaired: int = 0


class GeneratorPool:
    """N generator processes hosting members of one run."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("at least one generator process")
        self.processes = processes
        self._children: list[_Child] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-gen-")
        self._sinks: dict[int, PublisherTap] = {}
        self._arrivals: dict[int, Arrivals] = {}
        self._held: list[tuple[int, Records]] = []
        self._poller: asyncio.Task[None] | None = None
        self._cpu: list[ProcessCpu] = []
        self._drops: list[dict[int, int]] = []

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children]

    async def start(self, clips: object, hosts: list[str]) -> None:
        path = Path(self._tmp.name) / "clips.pickle"
        path.write_bytes(pickle.dumps(clips))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        for index in range(self.processes):
            log = Path(self._tmp.name) / f"worker-{index}.log"
            with log.open("wb") as stderr:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.worker",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    limit=_LINE_LIMIT,
                )
            child = _Child(index, proc, log, pid=proc.pid)
            child.reader = asyncio.get_running_loop().create_task(self._read(child))
            self._children.append(child)
        async with asyncio.timeout(START_TIMEOUT_S):
            await asyncio.gather(
                *(self._request(c, "setup", clips=str(path), hosts=hosts) for c in self._children)
            )
        self._poller = asyncio.get_running_loop().create_task(self._poll_loop(), name="gen-poll")

    def worker_of(self, member: int) -> int:
        return member % self.processes

    async def join(
        self,
        member: int,
        *,
        url: str,
        token: str,
        identity: str,
        video: bool,
        audio: bool,
        audio_clip: int,
        subscribe: bool,
        arrivals: Arrivals | None,
        timeout: float,
        impair: tuple[Impairment | None, Impairment | None] = (None, None),
    ) -> RemoteJoin:
        """Join ``member`` in its process; its received packets go to ``arrivals``."""
        child = self._children[self.worker_of(member)]
        if arrivals is not None:
            self._arrivals[member] = arrivals
        child.members += 1
        reply = await self._request(
            child,
            "join",
            member=member,
            url=url,
            token=token,
            identity=identity,
            video=video,
            audio=audio,
            audio_clip=audio_clip,
            subscribe=subscribe,
            timeout=timeout,
            impair=[None if i is None else i.describe() for i in impair],
        )
        return RemoteJoin(
            float(reply["join_started"]), set(reply["video_pts"]), set(reply["audio_pts"])
        )

    def publish_into(self, member: int, tap: PublisherTap) -> None:
        """Feed ``member``'s sent packets into the ledger through ``tap``."""
        self._sinks[member] = tap

    # figures

    def window_open(self) -> None:
        self._cpu = [ProcessCpu(c.pid) for c in self._children]
        self._drops = [read_udp_drops(c.pid) for c in self._children]

    async def reset_lag(self) -> None:
        await asyncio.gather(*(self._request(c, "lag_reset") for c in self._children))

    def cpu_seconds(self) -> float:
        """CPU seconds the generator processes have used so far (together)."""
        return sum(read_cpu_seconds(c.pid) for c in self._children)

    def cpu_shares(self) -> list[float]:
        return [cpu.share() for cpu in self._cpu]

    async def lag_samples(self) -> list[list[float]]:
        replies = await asyncio.gather(*(self._request(c, "lag") for c in self._children))
        return [[float(x) for x in r["samples_ms"]] for r in replies]

    def udp_drops(self) -> list[int]:
        return [
            drops_between(before, read_udp_drops(c.pid))
            for before, c in zip(self._drops, self._children, strict=True)
        ]

    def members_per_process(self) -> list[int]:
        return [c.members for c in self._children]

    def late_skips(self) -> int:
        return sum(c.late_skips for c in self._children)

    def keyframe_requests(self) -> int:
        return sum(c.keyframe_requests for c in self._children)

    def nacks(self) -> tuple[int, int]:
        """NACKs sent and packets they repaired, over every process's subscribers."""
        return (
            sum(c.nacks_sent for c in self._children),
            sum(c.nack_repaired for c in self._children),
        )

    def tapped_late(self) -> int:
        return sum(len(c.tapped_late) for c in self._children)

    async def enlarge_buffers(self) -> None:
        await asyncio.gather(*(self._request(c, "buffers") for c in self._children))

    # records

    async def flush(self) -> None:
        """One poll round now, and match every held arrival (end of a run)."""
        await self._poll_once()
        self._match(self._held)
        self._held = []

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._poll_once()

    async def _poll_once(self) -> None:
        replies = await asyncio.gather(*(self._request(c, "poll") for c in self._children))
        arrivals: list[tuple[int, Records]] = []
        for child, reply in zip(self._children, replies, strict=True):
            child.late_skips = int(reply["late_skips"])
            child.keyframe_requests = int(reply["keyframe_requests"])
            child.tapped_late = {int(m) for m in reply["tapped_late"]}
            child.nacks_sent = int(reply["nacks_sent"])
            child.nack_repaired = int(reply["nack_repaired"])
            for member, encoded in reply["sent"].items():
                tap = self._sinks.get(int(member))
                records = decode_records(encoded)
                if tap is not None:
                    for key, when, kind in zip(
                        records.keys, records.times, records.values, strict=True
                    ):
                        tap.record(key, when, kind)
            arrivals += [(int(m), decode_records(e)) for m, e in reply["received"].items()]
        self._match(self._held)
        self._held = arrivals

    def _match(self, batches: list[tuple[int, Records]]) -> None:
        for member, records in batches:
            sink = self._arrivals.get(member)
            if sink is None:
                continue
            record: Callable[[int | None, int, float], None] = sink.record
            for key, when, size in zip(records.keys, records.times, records.values, strict=True):
                record(key or None, size, when)

    # plumbing

    async def _request(self, child: _Child, op: str, **fields: Any) -> dict[str, Any]:
        if child.proc.returncode is not None:
            raise WorkerError(f"generator process {child.index} exited: {self._tail(child)}")
        child.next_id += 1
        request_id = child.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        child.pending[request_id] = future
        assert child.proc.stdin is not None
        child.proc.stdin.write((json.dumps({"id": request_id, "op": op, **fields}) + "\n").encode())
        try:
            await child.proc.stdin.drain()
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reply = await future
        finally:
            child.pending.pop(request_id, None)
        if not reply.get("ok"):
            raise WorkerError(f"generator process {child.index}: {op}: {reply.get('error')}")
        return reply

    async def _read(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        while line := await child.proc.stdout.readline():
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            request_id = reply.get("id") if isinstance(reply, dict) else None
            future = child.pending.get(request_id) if isinstance(request_id, int) else None
            if future is not None and not future.done():
                future.set_result(reply)
        for future in child.pending.values():
            if not future.done():
                future.set_exception(
                    WorkerError(f"generator process {child.index} exited: {self._tail(child)}")
                )

    def _tail(self, child: _Child) -> str:
        with contextlib.suppress(OSError):
            return child.log.read_text(errors="replace")[-2000:]
        return ""

    async def close(self) -> None:
        """Leave in every process, then stop each by PID (SIGTERM, SIGKILL if stuck)."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            # a poll that failed already ended the run with its error; do not raise it twice
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await poller
        with contextlib.suppress(Exception):
            await asyncio.gather(
                *(self._request(c, "close") for c in self._children if c.proc.returncode is None),
                return_exceptions=True,
            )
        for child in self._children:
            if child.proc.stdin is not None:
                with contextlib.suppress(Exception):
                    child.proc.stdin.close()
            try:
                await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                await child.proc.wait()
            if child.reader is not None:
                child.reader.cancel()
        self._tmp.cleanup()

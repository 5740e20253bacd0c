"""The worker processes: start, watch, restart (bounded backoff), poll their load.

Each worker slot keeps its id (``0``..``N-1``), its private unix socket and its share of the
ICE port range across restarts. A slot whose process exits while the pool is not stopping is
restarted after a backoff (0.5 s doubling to 8 s); more than :data:`MAX_RESTARTS` restarts in
:data:`RESTART_WINDOW_S` and the slot stays down (logged), so a worker that cannot start does
not spin. Loads are polled from every ready worker about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from sfu.settings import Settings
from sfu.workers.placement import WorkerLoad
from sfu.workers.worker import (
    LOAD_PATH,
    NODES_HEADER,
    WorkerSpec,
    encode_spec,
    split_port_range,
)

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "WorkerPool", "WorkerSlot", "WorkerStartError"]

log = structlog.get_logger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0
START_TIMEOUT_S = 30.0
LOAD_INTERVAL_S = 1.0
LOAD_TIMEOUT_S = 2.0
STALE_AFTER_S = 5.0  # no load report for this long: a hung worker gets no new rooms


class WorkerStartError(RuntimeError):
    """Not one worker process came up."""


@dataclass(eq=False)
class WorkerSlot:
    """One worker id: its current process, HTTP session and last load report."""

    spec: WorkerSpec
    process: asyncio.subprocess.Process | None = None
    session: aiohttp.ClientSession | None = None
    ready: bool = False
    generation: int = 0  # bumped on every (re)start: rooms homed on an older one are gone
    report: dict[str, Any] = field(default_factory=dict)
    cpu_percent: float = 0.0
    placed_since_report: int = 0
    restarts: deque[float] = field(default_factory=deque)
    given_up: bool = False
    reported_at: float = 0.0
    _cpu_mark: tuple[float, float] | None = None

    @property
    def id(self) -> str:
        return self.spec.worker_id

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def load(self) -> WorkerLoad:
        report = self.report
        return WorkerLoad(
            worker=self.id,
            ready=self.ready
            and not report.get("draining", False)
            and time.monotonic() - self.reported_at < STALE_AFTER_S,
            participants=int(report.get("participants", 0)),
            tracks_in=int(report.get("tracks_in", 0)),
            tracks_out=int(report.get("tracks_out", 0)),
            cpu_percent=self.cpu_percent,
            placed_since_report=self.placed_since_report,
        )

    def rooms(self) -> dict[str, int]:
        rooms = self.report.get("rooms", {})
        return dict(rooms) if isinstance(rooms, dict) else {}

    def take_report(self, report: dict[str, Any]) -> None:
        now = time.monotonic()
        cpu = float(report.get("cpu_s", 0.0))
        if self._cpu_mark is not None and now > self._cpu_mark[1]:
            self.cpu_percent = max(
                0.0, 100.0 * (cpu - self._cpu_mark[0]) / (now - self._cpu_mark[1])
            )
        self._cpu_mark = (cpu, now)
        self.report = report
        self.reported_at = now
        self.placed_since_report = 0


class WorkerPool:
    """N worker slots; :meth:`start` returns once every worker answers on its socket."""

    def __init__(self, settings: Settings, socket_dir: Path, count: int) -> None:
        self.settings = settings
        self.slots = [
            WorkerSlot(
                WorkerSpec(
                    settings=settings,
                    worker_id=str(index),
                    socket_path=str(socket_dir / f"worker-{index}.sock"),
                    ice_ports=split_port_range(settings.ice_port_range, index, count),
                )
            )
            for index in range(count)
        ]
        self.stopping = False
        self.on_worker_lost: list[Any] = []  # callbacks(slot) when a worker dies
        # The cluster's node URLs, passed to the workers on each load poll (--redis).
        self.node_urls: Callable[[], tuple[str, ...]] = lambda: ()
        self._tasks: set[asyncio.Task[None]] = set()

    def by_id(self, worker_id: str) -> WorkerSlot | None:
        for slot in self.slots:
            if slot.id == worker_id:
                return slot
        return None

    def ready(self) -> list[WorkerSlot]:
        return [slot for slot in self.slots if slot.ready]

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        if not self.ready():
            raise WorkerStartError("no worker process started (see the log above)")
        self._spawn_task(self._poll_loads(), "worker-loads")

    def _spawn_task(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, slot: WorkerSlot) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(slot.spec.socket_path)
        slot.generation += 1
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sfu.workers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            # Own process group: Ctrl-C or a group kill reaches the supervisor only, which
            # forwards it once (a second signal would cut the worker's drain short).
            start_new_session=True,
        )
        assert process.stdin is not None
        process.stdin.write(encode_spec(slot.spec))
        await process.stdin.drain()  # and keep it open: its end tells the worker we are gone
        slot.process = process
        slot.report, slot._cpu_mark, slot.cpu_percent = {}, None, 0.0
        if slot.session is not None:
            await slot.session.close()
        slot.session = aiohttp.ClientSession(
            # One connection per relayed participant: aiohttp's default pool of 100 would
            # make the 101st join on a worker wait (and time out).
            connector=aiohttp.UnixConnector(path=slot.spec.socket_path, limit=0),
            auto_decompress=False,
        )
        self._spawn_task(self._watch(slot, process), f"worker-{slot.id}-watch")
        await self._wait_ready(slot, process)

    async def _wait_ready(self, slot: WorkerSlot, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.returncode is None:
            if await self._poll_one(slot):
                slot.ready = True
                log.info("worker_ready", worker=slot.id, pid=process.pid)
                return
            await asyncio.sleep(0.1)
        if process.returncode is None:
            log.error("worker_start_timeout", worker=slot.id, pid=process.pid)
            process.kill()  # the watcher restarts it (bounded)

    async def _watch(self, slot: WorkerSlot, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if slot.process is not process:
            return
        slot.ready = False
        if self.stopping:
            log.info("worker_exited", worker=slot.id, pid=process.pid, code=code)
            return
        log.error("worker_died", worker=slot.id, pid=process.pid, code=code)
        for callback in self.on_worker_lost:
            callback(slot)
        now = time.monotonic()
        while slot.restarts and now - slot.restarts[0] > RESTART_WINDOW_S:
            slot.restarts.popleft()
        if len(slot.restarts) >= MAX_RESTARTS:
            slot.given_up = True
            log.error("worker_given_up", worker=slot.id, restarts=len(slot.restarts))
            return
        backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** len(slot.restarts))
        slot.restarts.append(now)
        await asyncio.sleep(backoff)
        if not self.stopping:
            log.info("worker_restarting", worker=slot.id, backoff_s=backoff)
            await self._spawn(slot)

    async def _poll_one(self, slot: WorkerSlot) -> bool:
        if slot.session is None:
            return False
        try:
            async with slot.session.get(
                "http://worker" + LOAD_PATH,
                headers={NODES_HEADER: " ".join(self.node_urls())} if self.node_urls() else None,
                timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT_S),
            ) as response:
                if response.status != 200:
                    return False
                slot.take_report(await response.json())
                return True
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return False

    async def _poll_loads(self) -> None:
        while not self.stopping:
            await asyncio.sleep(LOAD_INTERVAL_S)
            await asyncio.gather(*(self._poll_one(slot) for slot in self.ready()))

    def signal_all(self, sig: int) -> None:
        """Forward ``sig`` to every live worker (by its PID)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(sig)

    async def wait_exited(self, timeout_s: float) -> bool:
        """Wait until every worker process has exited; False on timeout."""
        waits = [
            slot.process.wait()
            for slot in self.slots
            if slot.process is not None and slot.process.returncode is None
        ]
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every worker: SIGTERM was forwarded by the drain; now end what is left."""
        self.stopping = True
        if not await self.wait_exited(0.1):
            self.signal_all(signal.SIGTERM)
            await asyncio.sleep(0.2)  # signals do not queue: let the first one land
            self.signal_all(signal.SIGTERM)  # a second signal: shut down now
            if not await self.wait_exited(timeout_s):
                self.signal_all(signal.SIGKILL)
                await self.wait_exited(5.0)
        for task in list(self._tasks):
            task.cancel()
        for slot in self.slots:
            if slot.process is not None and slot.process.stdin is not None:
                slot.process.stdin.close()
            if slot.session is not None:
                await slot.session.close()

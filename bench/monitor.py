"""Is the load generator itself the bottleneck? Its CPU share and its event-loop lag."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.procfs import read_cpu_seconds

__all__ = ["LoopLagMonitor", "ProcessCpu"]


class LoopLagMonitor:
    """A ticker that asks to wake every ``interval_s`` and records how late it woke (ms).

    A busy or blocked event loop shows up as lag: packets wait just as long.
    """

    def __init__(self, interval_s: float = 0.010, max_samples: int = 200_000) -> None:
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    def reset(self) -> None:
        self.samples_ms = []

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            expected = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            if len(self.samples_ms) < self.max_samples:
                self.samples_ms.append(max(0.0, time.perf_counter() - expected) * 1000.0)


class ProcessCpu:
    """CPU share of this process (all threads) between :meth:`reset` and :meth:`share`."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self.reset()

    def reset(self) -> None:
        self._cpu = read_cpu_seconds(self.pid)
        self._wall = time.perf_counter()

    def share(self) -> float:
        """CPU seconds per wall second since :meth:`reset` (1.0 = one core busy)."""
        wall = time.perf_counter() - self._wall
        return (read_cpu_seconds(self.pid) - self._cpu) / wall if wall > 0 else 0.0

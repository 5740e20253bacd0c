"""Graceful drain: SIGTERM stops new joins, tells clients, and exits when the calls are over.

``SIGTERM`` → :meth:`Server.start_draining` with ``--drain-deadline``: ``/readyz`` answers 503,
WebSocket upgrades and ``join`` are refused (503 + ``Retry-After``), every participant gets
``server.draining`` {``deadline``}. The process then shuts down (sockets closed with 1001,
participants leave, recordings finish, webhooks flushed) as soon as the last participant has
left, or at the deadline. ``SIGINT`` does the same with a deadline of at most
:data:`FAST_DEADLINE_S`; a second signal of either kind shuts down at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from sfu.server import Server

__all__ = ["FAST_DEADLINE_S", "Drain"]

log = structlog.get_logger(__name__)

FAST_DEADLINE_S = 5.0
POLL_S = 0.1


class Drain:
    """Turns signals into a drain, and :meth:`wait` into "time to shut down"."""

    def __init__(
        self, server: Server, *, deadline_s: float, fast_deadline_s: float = FAST_DEADLINE_S
    ) -> None:
        self.server = server
        self.deadline_s = deadline_s
        self.fast_deadline_s = min(deadline_s, fast_deadline_s)
        self._started = asyncio.Event()
        self._now = asyncio.Event()
        self.reason = ""

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._started.is_set():
            log.info("drain_cut_short", signal=name)
            self.reason = f"second signal ({name})"
            self._now.set()
            return
        deadline = self.fast_deadline_s if sig == signal.SIGINT else self.deadline_s
        log.info("drain_requested", signal=name, deadline_s=deadline)
        self.start(deadline)

    def start(self, deadline_s: float) -> None:
        self.server.start_draining(deadline_s)
        self._started.set()

    async def wait(self) -> str:
        """Return (with the reason) once the server should shut down."""
        await self._started.wait()
        deadline = time.monotonic() + self.server.drain_remaining()
        while not self._now.is_set():
            if self.server.participant_count == 0:
                return self.reason or "no participants left"
            if time.monotonic() >= deadline:
                return "drain deadline reached"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), POLL_S)
        return self.reason

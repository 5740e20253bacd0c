"""A real webhook receiver on 127.0.0.1: verifies every request, can fail, hang or go down."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sfu.webhooks import WebhookError, verify_webhook

__all__ = ["Received", "WebhookReceiver"]


@dataclass
class Received:
    event: dict[str, Any]
    at: float  # time.time() on arrival


class WebhookReceiver:
    """``mode``: "ok" (204), "error" (500) or "hang" (never answers)."""

    def __init__(self, key: str, *, issuer: str = "oktorus-sfu") -> None:
        self.key = key
        self.issuer = issuer
        self.mode = "ok"
        self.received: list[Received] = []
        self.requests = 0
        self.rejected: list[str] = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/sfu"

    @property
    def ids(self) -> list[str]:
        return [str(r.event["id"]) for r in self.received]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in self.received if name is None or r.event["event"] == name]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if self.mode == "hang":
            await self._release.wait()
        if self.mode == "error":
            return web.Response(status=500)
        try:
            event = verify_webhook(
                body, request.headers.get("Authorization", ""), self.key, issuer=self.issuer
            )
        except WebhookError as exc:
            self.rejected.append(str(exc))
            return web.Response(status=401)
        self.received.append(Received(event, time.time()))
        return web.Response(status=204)

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hooks/sfu", self._handle)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        """Go down (connections refused until :meth:`start`)."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(set(self.ids)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(set(self.ids))} of {count} events arrived")
            await asyncio.sleep(0.05)

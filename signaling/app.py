"""The aiohttp application: WebSocket signalling, health and metrics endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sfu.server import Server
from signaling.messages import MAX_FRAME_BYTES
from signaling.metrics import render_metrics
from signaling.session import SignalSession

__all__ = ["SERVER", "create_app"]

SERVER = web.AppKey("server", Server)
# Frames above the contract's 64 KiB get a `too_large` error; far larger ones are cut
# off by aiohttp itself with close code 1009 before they are buffered.
HARD_FRAME_LIMIT = 4 * MAX_FRAME_BYTES


async def signal(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_LIMIT, heartbeat=20.0)
    await ws.prepare(request)
    await SignalSession(ws, request.app[SERVER]).run()
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=render_metrics(request.app[SERVER]),
                        content_type="text/plain", charset="utf-8")


def create_app(server: Server) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SERVER] = server
    app.router.add_get("/v1/signal", signal)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)

    async def close_server(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[SERVER].close()

    app.cleanup_ctx.append(close_server)
    return app

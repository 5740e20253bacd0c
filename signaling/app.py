"""The aiohttp application: WebSocket signalling, health and metrics endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sfu.server import Server
from signaling.messages import MAX_FRAME_BYTES
from signaling.metrics import render_metrics
from signaling.session import SignalSession

__all__ = ["SERVER", "SESSIONS", "create_app"]

SERVER = web.AppKey("server", Server)
SESSIONS: web.AppKey[set[SignalSession]] = web.AppKey("sessions")
# Frames above the contract's 64 KiB get a `too_large` error; far larger ones are cut
# off by aiohttp itself with close code 1009 before they are buffered.
HARD_FRAME_LIMIT = 4 * MAX_FRAME_BYTES


async def signal(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_LIMIT, heartbeat=20.0)
    await ws.prepare(request)
    session = SignalSession(ws, request.app[SERVER])
    sessions = request.app[SESSIONS]
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=render_metrics(request.app[SERVER]), content_type="text/plain", charset="utf-8"
    )


def create_app(server: Server) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SERVER] = server
    app[SESSIONS] = set()
    app.router.add_get("/v1/signal", signal)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)

    async def close_server(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[SERVER].close()

    async def close_sessions(app: web.Application) -> None:
        """Shutting down: refuse new joins, close every signalling socket (going away)."""
        app[SERVER].closing = True
        sessions: set[SignalSession] = app[SESSIONS]
        for session in list(sessions):
            await session.ws.close(code=1001, message=b"server shutting down")

    app.on_shutdown.append(close_sessions)
    app.cleanup_ctx.append(close_server)
    return app

"""The aiohttp application: WebSocket signalling, health and metrics endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sfu.server import Server
from signaling.cluster_api import setup_cluster_api
from signaling.http_api import setup_http_api
from signaling.messages import MAX_FRAME_BYTES
from signaling.metrics import METRICS_CONTENT_TYPE, render_metrics
from signaling.pages import CONNECT_SOURCES, setup_pages
from signaling.recordings_api import setup_recordings_api
from signaling.session import SignalSession

__all__ = ["SERVER", "SESSIONS", "create_app"]

SERVER = web.AppKey("server", Server)
SESSIONS: web.AppKey[set[SignalSession]] = web.AppKey("sessions")
# Frames above the contract's 64 KiB get a `too_large` error; far larger ones are cut
# off by aiohttp itself with close code 1009 before they are buffered.
HARD_FRAME_LIMIT = 4 * MAX_FRAME_BYTES


async def signal(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    if server.draining or server.closing:
        # Draining: no new sessions here; a load balancer or client retries on another node.
        return web.json_response(
            {"code": "draining", "message": "the server is draining; join another node"},
            status=503,
            headers={"Retry-After": str(server.retry_after_s())},
        )
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


async def readyz(request: web.Request) -> web.Response:
    """Accepting joins: 200, or 503 while draining/closing (load balancers stop sending)."""
    server = request.app[SERVER]
    if server.draining or server.closing:
        return web.json_response(
            {"status": "draining", "deadline": server.drain_remaining()},
            status=503,
            headers={"Retry-After": str(server.retry_after_s())},
        )
    if server.cluster is not None and not server.cluster.available:
        # Redis unreachable: joins are refused ("cluster state unavailable"), calls go on.
        return web.json_response({"status": "cluster state unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=render_metrics(request.app[SERVER]).encode())
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response


def create_app(server: Server) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SERVER] = server
    app[SESSIONS] = set()
    app.router.add_get("/v1/signal", signal)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    setup_http_api(app, server)
    setup_recordings_api(app, server)
    setup_cluster_api(app, server)
    setup_pages(app)
    # Pages may follow `redirect` to any node of the cluster: allow their WebSockets (CSP).
    # A worker has no ClusterNode: its supervisor passes the nodes' URLs on (peer_urls).
    app[CONNECT_SOURCES] = lambda: (
        server.cluster.node_urls if server.cluster is not None else server.peer_urls
    )

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

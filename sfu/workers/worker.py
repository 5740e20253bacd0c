"""One worker process: today's server on a private unix socket, started by the supervisor.

The supervisor starts ``python -m sfu.workers`` and writes a pickled :class:`WorkerSpec`
on its standard input, then keeps that pipe open: end of input means the supervisor is gone,
and the worker shuts down instead of living on as an orphan. The worker serves the normal
application (signalling, HTTP API) plus ``GET /internal/load`` on its unix socket only.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sfu.settings import Settings

if TYPE_CHECKING:  # the supervisor imports this module without the media stack
    from sfu.server import Server

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["WorkerSpec", "load_report", "main", "split_port_range", "worker_routes"]

LOAD_PATH = "/internal/load"
SPAN_OPEN_PATH = "/internal/span/open"  # supervisor → spill worker (sfu.workers.span)
SPAN_LINK_PATH = "/internal/span/link"  # spill worker → home worker
EVICT_PATH = "/internal/evict"  # the supervisor's cluster claim on a room was lost
#: On load polls: the cluster's node URLs, space-separated (pages' CSP may connect to them).
NODES_HEADER = "X-Oktorus-Cluster-Nodes"
MAX_NODE_URLS = 64


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What the supervisor tells a worker: its settings, id, socket and UDP ports."""

    settings: Settings
    worker_id: str
    socket_path: str
    ice_ports: tuple[int, int] | None = None


def split_port_range(
    ports: tuple[int, int] | None, index: int, count: int
) -> tuple[int, int] | None:
    """Worker ``index``'s share of ``ports`` (contiguous, as even as possible); None: any."""
    if ports is None:
        return None
    low, high = ports
    span = high - low + 1
    if not 0 <= index < count <= span:
        raise ValueError(f"cannot split {low}-{high} into {count} ranges")
    start = low + span * index // count
    end = low + span * (index + 1) // count - 1
    return (start, end)


def load_report(server: Server) -> dict[str, Any]:
    """Rooms, peers, tracks in and out and CPU seconds: what placement and /v1/rooms read."""
    rooms = server.rooms.all()
    participants = [p for room in rooms for p in room.participants.values()]
    return {
        "worker": server.worker_id,
        "pid": os.getpid(),
        "draining": server.draining or server.closing,
        "participants": len(participants),
        "tracks_in": sum(len(room.tracks) for room in rooms),
        "tracks_out": sum(len(p.subscriber.consumers) for p in participants),
        "cpu_s": time.process_time(),
        "rooms": {room.id: len(room.participants) for room in rooms if room.participants},
    }


def worker_routes(app: web.Application, server: Server) -> None:
    """Routes only the supervisor can reach (the worker listens on a private socket)."""

    async def load(request: web.Request) -> web.Response:
        nodes = request.headers.get(NODES_HEADER)
        if nodes is not None:
            server.peer_urls = tuple(nodes.split()[:MAX_NODE_URLS])
        return web.json_response(load_report(server))

    @web.middleware
    async def forwarded_proto(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Only the supervisor reaches this socket: trust its word on http/https.
        proto = request.headers.get("X-Forwarded-Proto")
        if proto in ("http", "https") and proto != request.scheme:
            request = request.clone(scheme=proto)
        return await handler(request)

    async def evict(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        room = body.get("room") if isinstance(body, dict) else None
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(room, str) or not (url is None or isinstance(url, str)):
            return web.json_response({"error": "expected {room, url}"}, status=400)
        server.evict_room(room, url)
        return web.json_response({"evicted": room})

    app.router.add_get(LOAD_PATH, load)
    app.router.add_post(EVICT_PATH, evict)
    app.middlewares.append(forwarded_proto)
    from sfu.workers.span import span_routes

    span_routes(app, server)


def read_spec() -> WorkerSpec:
    """The spec the supervisor (our parent, trusted) wrote first on standard input."""
    raw = sys.stdin.buffer.readline()
    size = int(raw.strip() or b"0")
    spec = pickle.loads(sys.stdin.buffer.read(size))  # trusted: written by our parent
    if not isinstance(spec, WorkerSpec):
        raise SystemExit("sfu worker: expected a WorkerSpec on standard input")
    return spec


def encode_spec(spec: WorkerSpec) -> bytes:
    data = pickle.dumps(spec)
    return str(len(data)).encode() + b"\n" + data


async def watch_parent(on_gone: Any) -> None:
    """Call ``on_gone()`` when standard input ends: the supervisor died or closed it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass
    on_gone()


def main() -> int:
    from sfu import server_main
    from sfu.logs import configure_logging

    spec = read_spec()
    configure_logging(spec.settings.log_level, spec.settings.log_format)
    import structlog

    structlog.contextvars.bind_contextvars(worker=spec.worker_id)
    return server_main.run_worker(spec)

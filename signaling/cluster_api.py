"""``GET /v1/nodes`` and ``GET /v1/rooms`` (admin grant): the cluster as Redis knows it.

Without ``--redis`` both describe this one node. With it, every live node and every claimed
room of the cluster; rooms hosted here report live participant counts, others the count
their node's last heartbeat wrote (at most ``--cluster-ttl``/3 old). Redis unreachable:
500 ``internal`` "cluster state unavailable".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sfu.cluster.node import CpuMeter
from sfu.cluster.placement import ClusterUnavailable
from signaling.http_api import ApiError, authenticate, error_response, node_name

if TYPE_CHECKING:  # the workers' supervisor imports this module without the media stack
    from sfu.server import Server

__all__ = ["local_rooms", "setup_cluster_api"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Listing = Callable[[web.Request], Awaitable[dict[str, Any]]]


def local_rooms(node: str, by_worker: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """This node's rooms with participants, from each worker's room → participants map:
    ``[{"id", "node", "workers": [ids], "participants"}]`` sorted by id."""
    merged: dict[str, dict[str, Any]] = {}
    for worker, rooms in by_worker.items():
        for room, count in rooms.items():
            if count <= 0:
                continue
            entry = merged.setdefault(
                room, {"id": room, "node": node, "workers": [], "participants": 0}
            )
            entry["workers"].append(worker)
            entry["participants"] += count
    return [merged[room] for room in sorted(merged)]


def _admin(server: Server, listing: Listing) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            claims = authenticate(request, server)
            if not claims.can("admin"):
                raise ApiError("forbidden", "this needs the 'admin' grant")
            body = await listing(request)
        except ApiError as exc:
            return error_response(exc.code, exc.message)
        except ClusterUnavailable:
            return error_response("internal", "cluster state unavailable")
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return handler


def setup_cluster_api(app: web.Application, server: Server) -> None:
    cpu = CpuMeter()  # this node's share of a core between two calls (single-node mode)

    async def nodes(request: web.Request) -> dict[str, Any]:
        if server.cluster is not None:
            return {"nodes": [n.describe() for n in await server.cluster.state.nodes()]}
        scheme = "wss" if request.secure else "ws"
        url = f"{scheme}://{request.host}/v1/signal"
        load = server.local_load().describe(cpu.read())
        return {"nodes": [{"id": server.node_id, "url": url, "load": load, "workers": 1}]}

    async def rooms(request: web.Request) -> dict[str, Any]:
        live = server.local_load().rooms
        if server.cluster is None:
            return {"rooms": local_rooms(node_name(), {server.worker_id: live})}
        records = await server.cluster.state.rooms()
        result = []
        for record in records:
            row = record.describe()
            if record.node == server.node_id and record.id in live:
                row["participants"] = live[record.id]
            result.append(row)
        return {"rooms": result}

    app.router.add_get("/v1/nodes", _admin(server, nodes))
    app.router.add_get("/v1/rooms", _admin(server, rooms))

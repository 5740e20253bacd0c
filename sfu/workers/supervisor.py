"""The supervisor of ``serve --workers N``: one public port, N worker processes.

It owns the public HTTP/WebSocket port (TLS ends here). A signalling connection's first frame
is read here: a ``join`` whose token verifies names the room; the room's home worker (placed
by load when it has none, see :mod:`sfu.workers.placement`) gets the connection through
:func:`sfu.workers.relay.relay`. Anything else first (a bad token, no join) is relayed to the
least-loaded worker, which answers exactly as a single process would. Media never passes
through here: the SDP carries the worker's own UDP ports.

``/healthz``, ``/readyz``, ``/metrics`` (the workers' merged, ``worker`` label) and
``GET /v1/rooms`` are served here; every other path (HTTP API, recordings, pages) is proxied
to a ready worker, since all of them share the data dir.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from sfu.cluster.node import CpuMeter, default_node_id
from sfu.cluster.placement import ClusterUnavailable
from sfu.cluster.state import ClusterState
from sfu.drain import FAST_DEADLINE_S
from sfu.keys import KeyStore
from sfu.settings import Settings
from sfu.tokens import TokenError
from sfu.workers.cluster import SupervisorNode, pool_load, worker_rooms
from sfu.workers.metrics_merge import merge_metrics
from sfu.workers.placement import LocalNode, NodePlacement, choose_worker
from sfu.workers.pool import WorkerPool, WorkerSlot, WorkerStartError
from sfu.workers.proxy import proxy_request
from sfu.workers.relay import relay
from sfu.workers.worker import SPAN_OPEN_PATH
from signaling.access import verify_access_token
from signaling.cluster_api import local_rooms
from signaling.http_api import ApiError, authenticate_with, error_response, node_name
from signaling.messages import MAX_FRAME_BYTES, ProtocolError, parse_frame
from signaling.session import CLOSE_RATE_LIMITED, ERRORS_BEFORE_CUTOFF

__all__ = ["Homes", "Joining", "Supervisor", "supervise"]

log = structlog.get_logger(__name__)

METRICS_TIMEOUT_S = 5.0
SPAN_OPEN_TIMEOUT_S = 10.0
REFUSED_JOINS_MAX = ERRORS_BEFORE_CUTOFF


@dataclass(frozen=True, slots=True)
class Joining:
    """What the supervisor reads from a first ``join`` frame whose token verified."""

    room: str
    identity: str
    resuming: bool


@dataclass
class Homes:
    """Room → home worker (and that worker's generation), while connections for it last."""

    worker: dict[str, tuple[str, int]] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    spill: dict[str, tuple[str, int]] = field(default_factory=dict)  # the room's 2nd worker
    on_worker: dict[tuple[str, str], int] = field(default_factory=dict)  # relayed there now
    # (room, identity) → (worker, generation, when last seen): where a `resume` must go.
    seen: dict[tuple[str, str], tuple[str, int, float]] = field(default_factory=dict)

    def remember(
        self, room: str, identity: str, worker: str, generation: int, keep_s: float
    ) -> None:
        now = time.monotonic()
        self.seen.pop((room, identity), None)
        self.seen[(room, identity)] = (worker, generation, now)
        while self.seen:  # oldest first: forget what no resume can claim any more
            key, (_, _, when) = next(iter(self.seen.items()))
            if now - when <= keep_s:
                break
            del self.seen[key]

    def attach(self, room: str, worker: str) -> None:
        key = (room, worker)
        self.on_worker[key] = self.on_worker.get(key, 0) + 1

    def detach(self, room: str, worker: str) -> None:
        key = (room, worker)
        left = self.on_worker.get(key, 0) - 1
        if left > 0:
            self.on_worker[key] = left
        else:
            self.on_worker.pop(key, None)

    def count(self, room: str, worker: str) -> int:
        return self.on_worker.get((room, worker), 0)

    def acquire(self, room: str) -> None:
        self.connections[room] = self.connections.get(room, 0) + 1

    def release(self, room: str) -> None:
        left = self.connections.get(room, 0) - 1
        if left > 0:
            self.connections[room] = left
        else:
            self.connections.pop(room, None)
            self.worker.pop(room, None)  # the room ended: placed afresh next time
            self.spill.pop(room, None)

    def forget_worker(self, worker: str) -> list[str]:
        """A worker died: its rooms have no home (they are placed again on rejoin)."""
        gone = [room for room, (home, _) in self.worker.items() if home == worker]
        for room in gone:
            del self.worker[room]
            spill = self.spill.pop(room, None)
            if spill is not None:  # its spill shard lives on: the room's home from now on
                self.worker[room] = spill
        for room in [room for room, (spill, _) in self.spill.items() if spill == worker]:
            del self.spill[room]
        return gone


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        keys: KeyStore,
        pool: WorkerPool,
        nodes: NodePlacement | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.pool = pool
        self.nodes: NodePlacement = nodes if nodes is not None else LocalNode()
        self.cluster: SupervisorNode | None = None  # with --redis: this node of the cluster
        self.cpu = CpuMeter()
        self.homes = Homes()
        self.draining = False
        self.drain_deadline = 0.0
        self.clients: set[web.WebSocketResponse] = set()
        self.restarts_seen: dict[str, int] = {}
        pool.on_worker_lost.append(self._worker_lost)

    def _worker_lost(self, slot: WorkerSlot) -> None:
        rooms = self.homes.forget_worker(slot.id)
        log.warning("worker_rooms_lost", worker=slot.id, rooms=len(rooms))

    # --- placement ------------------------------------------------------------------------

    def home_of(self, room: str) -> WorkerSlot | None:
        """The room's home worker, placing it on the least-loaded ready worker if new."""
        home = self.homes.worker.get(room)
        if home is not None:
            slot = self.pool.by_id(home[0])
            if slot is not None and slot.ready and slot.generation == home[1]:
                return slot
        for slot in self.pool.ready():
            if slot.rooms().get(room, 0) > 0:  # still hosted (a participant awaiting resume)
                self.homes.worker[room] = (slot.id, slot.generation)
                return slot
        chosen = choose_worker([slot.load() for slot in self.pool.slots])
        slot = self.pool.by_id(chosen) if chosen is not None else None
        if slot is not None:
            slot.placed_since_report += 1
            self.homes.worker[room] = (slot.id, slot.generation)
            log.info("room_placed", room=room, worker=slot.id)
        return slot

    async def span_target(self, room: str, home: WorkerSlot) -> WorkerSlot:
        """Where a new join of ``room`` goes: its home, or its spill worker once the home
        holds more than ``--room-span-subscribers`` of its participants (or is over
        ``--room-span-cpu``). The spill worker opens its shard before the join reaches it."""
        limit, cpu = self.settings.room_span_subscribers, self.settings.room_span_cpu
        here = self.homes.count(room, home.id)
        full = (limit > 0 and here > limit) or (cpu > 0 and here > 0 and home.cpu_percent > cpu)
        if not full or len(self.pool.slots) < 2:
            return home
        spill = self._spill_slot(room, home)
        if spill is None or spill.session is None:
            return home
        try:
            async with spill.session.post(
                "http://worker" + SPAN_OPEN_PATH,
                json={"room": room, "home_socket": home.spec.socket_path},
                timeout=aiohttp.ClientTimeout(total=SPAN_OPEN_TIMEOUT_S),
            ) as response:
                if response.status != 200:
                    reason = (await response.text())[:200]
                    log.warning("room_span_refused", room=room, worker=spill.id, reason=reason)
                    return home
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("room_span_failed", room=room, worker=spill.id, error=repr(exc))
            return home
        if self.homes.spill.get(room) != (spill.id, spill.generation):
            self.homes.spill[room] = (spill.id, spill.generation)
            log.info("room_spans", room=room, home=home.id, spill=spill.id)
        return spill

    def _spill_slot(self, room: str, home: WorkerSlot) -> WorkerSlot | None:
        """The room's spill worker, or the least-loaded other ready worker for a new one."""
        known = self.homes.spill.get(room)
        if known is not None:
            slot = self.pool.by_id(known[0])
            if slot is not None and slot.ready and slot.generation == known[1]:
                return slot
        others = [slot.load() for slot in self.pool.slots if slot.id != home.id]
        chosen = choose_worker(others)
        return self.pool.by_id(chosen) if chosen is not None else None

    def any_worker(self) -> WorkerSlot | None:
        chosen = choose_worker([slot.load() for slot in self.pool.slots])
        return self.pool.by_id(chosen) if chosen is not None else None

    def hosts(self, room: str) -> bool:
        """Whether ``room`` lives here: a connection for it is relayed now, or a worker
        reports it (participants, kept ones awaiting resume too)."""
        return room in self.homes.worker or any(
            slot.rooms().get(room, 0) > 0 for slot in self.pool.ready()
        )

    def room_of(self, frame: aiohttp.WSMessage) -> str | None:
        """The room a first frame's valid ``join`` token names; None for anything else."""
        joining = self.join_of(frame)
        return joining.room if joining is not None else None

    def join_of(self, frame: aiohttp.WSMessage) -> Joining | None:
        """Room, identity and resumption of a first frame's valid ``join``; None otherwise."""
        if frame.type != WSMsgType.TEXT:
            return None
        try:
            message, _ = parse_frame(frame.data)
        except ProtocolError:
            return None
        token = message.get("token")
        if message.get("type") != "join" or not isinstance(token, str):
            return None
        try:
            claims = verify_access_token(
                self.keys,
                token,
                issuer=self.settings.issuer,
                leeway_s=self.settings.token_leeway_s,
            )
        except TokenError:
            return None
        return Joining(claims.room, claims.identity, isinstance(message.get("resume"), str))

    def resume_slot(self, joining: Joining) -> WorkerSlot | None:
        """The worker that last served this identity in this room, while it may still keep
        the participant for a ``resume`` (a spanning room has two workers to choose from)."""
        seen = self.homes.seen.get((joining.room, joining.identity))
        window = self.settings.resume_window_s
        if seen is None or not joining.resuming or time.monotonic() - seen[2] > window + 5:
            return None
        slot = self.pool.by_id(seen[0])
        if slot is None or not slot.ready or slot.generation != seen[1]:
            return None
        home = self.homes.worker.get(joining.room)
        if home is None or self.pool.by_id(home[0]) is None:
            self.homes.worker[joining.room] = (slot.id, slot.generation)  # still lives there
        return slot

    # --- draining -------------------------------------------------------------------------

    def drain_remaining(self) -> float:
        if not self.draining:
            return 0.0
        return max(0.0, round(self.drain_deadline - time.monotonic(), 3))

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.drain_remaining()))

    def start_draining(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        self.drain_deadline = min(self.drain_deadline, deadline) if self.draining else deadline
        self.draining = True


SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")
HARD_FRAME_LIMIT = 4 * MAX_FRAME_BYTES  # as signaling.app: larger frames are cut with 1009


# --- HTTP handlers ------------------------------------------------------------------------


def _draining_response(sup: Supervisor) -> web.Response:
    return web.json_response(
        {"code": "draining", "message": "the server is draining; join another node"},
        status=503,
        headers={"Retry-After": str(sup.retry_after_s())},
    )


async def signal_handler(request: web.Request) -> web.StreamResponse:
    sup: Supervisor = request.app[SUPERVISOR]
    if sup.draining:
        return _draining_response(sup)
    ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_LIMIT, heartbeat=20.0)
    await ws.prepare(request)
    sup.clients.add(ws)
    room: str | None = None
    attached: str | None = None
    joining: Joining | None = None
    refused = 0
    try:
        while True:  # each turn reads one frame; at most REFUSED_JOINS_MAX turns refuse
            first = await ws.receive()  # as with one process: no deadline, heartbeats
            if first.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return ws
            joining = sup.join_of(first)
            room = joining.room if joining is not None else None
            if room is None:
                break
            sup.homes.acquire(room)
            try:
                elsewhere = await sup.nodes.node_for(room)
            except ClusterUnavailable:
                if sup.hosts(room) and _resuming(first):
                    break  # as one process: a resume never waits for the cluster state
                # As one process: `internal`, the socket stays open for another try.
                sup.homes.release(room)
                room = None
                await _send_error(ws, first, "internal", "cluster state unavailable")
                refused += 1
                if refused >= REFUSED_JOINS_MAX:  # as one process cuts off an erring client
                    await ws.close(code=CLOSE_RATE_LIMITED, message=b"too many errors")
                    return ws
                continue
            if elsewhere is not None:
                await _redirect(ws, first, elsewhere)
                return ws
            break
        slot = sup.resume_slot(joining) if joining is not None else None
        if slot is None:
            slot = sup.home_of(room) if room is not None else sup.any_worker()
            if room is not None and slot is not None:
                slot = await sup.span_target(room, slot)
        if slot is None or slot.session is None:
            await _no_worker(ws, first)
            return ws
        if room is not None:
            attached = slot.id
            sup.homes.attach(room, attached)
            assert joining is not None
            keep = sup.settings.resume_window_s + 5
            sup.homes.remember(room, joining.identity, slot.id, slot.generation, keep)
        await relay(ws, slot.session, first, forwarded_proto=request.scheme)
    finally:
        sup.clients.discard(ws)
        if room is not None:
            if attached is not None:
                sup.homes.detach(room, attached)
                slot = sup.pool.by_id(attached)
                if joining is not None and slot is not None:
                    keep = sup.settings.resume_window_s + 5
                    sup.homes.remember(room, joining.identity, slot.id, slot.generation, keep)
            sup.homes.release(room)
    return ws


def _resuming(first: aiohttp.WSMessage) -> bool:
    """Whether a (parsed before) first frame is a ``join`` carrying a ``resume`` secret."""
    try:
        message, _ = parse_frame(first.data)
    except ProtocolError:
        return False
    return isinstance(message.get("resume"), str)


def _request_id(first: aiohttp.WSMessage) -> str | None:
    try:
        return parse_frame(first.data)[1] if first.type == WSMsgType.TEXT else None
    except ProtocolError as exc:
        return exc.request_id


async def _send_error(
    ws: web.WebSocketResponse, first: aiohttp.WSMessage, code: str, text: str
) -> None:
    message: dict[str, object] = {"type": "error", "code": code, "message": text}
    request_id = _request_id(first)
    if request_id is not None:
        message["id"] = request_id
    await ws.send_json(message)


async def _no_worker(ws: web.WebSocketResponse, first: aiohttp.WSMessage) -> None:
    """Every worker is down or restarting: ``internal``, try again shortly."""
    message: dict[str, object] = {
        "type": "error",
        "code": "internal",
        "message": "no worker process is available: join again shortly",
    }
    request_id = _request_id(first)
    if request_id is not None:
        message["id"] = request_id
    await ws.send_json(message)
    await ws.close(code=1011)


async def _redirect(ws: web.WebSocketResponse, first: aiohttp.WSMessage, url: str) -> None:
    """protocol v1 ``redirect``: the room lives on another node (cluster seam)."""
    message: dict[str, object] = {"type": "redirect", "url": url}
    request_id = _request_id(first)
    if request_id is not None:
        message["id"] = request_id
    await ws.send_json(message)
    await ws.close(code=1000)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sup: Supervisor = request.app[SUPERVISOR]
    if sup.draining:
        return web.json_response(
            {"status": "draining", "deadline": sup.drain_remaining()},
            status=503,
            headers={"Retry-After": str(sup.retry_after_s())},
        )
    ready = [slot.id for slot in sup.pool.ready()]
    if not ready:
        return web.json_response({"status": "no worker ready"}, status=503)
    if sup.cluster is not None and not sup.cluster.node.available:
        # Redis unreachable: joins are refused ("cluster state unavailable"), calls go on.
        return web.json_response({"status": "cluster state unavailable"}, status=503)
    return web.json_response({"status": "ready", "workers": ready})


async def metrics(request: web.Request) -> web.Response:
    sup: Supervisor = request.app[SUPERVISOR]

    async def scrape(slot: WorkerSlot) -> str:
        if slot.session is None:
            return ""
        try:
            async with slot.session.get(
                "http://worker/metrics", timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT_S)
            ) as response:
                return await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, OSError, TimeoutError):
            return ""

    texts = await asyncio.gather(*(scrape(slot) for slot in sup.pool.ready()))
    own = ["# HELP sfu_worker_up 1 while the worker process answers.", "# TYPE sfu_worker_up gauge"]
    own += [f'sfu_worker_up{{worker="{s.id}"}} {1 if s.ready else 0}' for s in sup.pool.slots]
    own += [
        "# HELP sfu_worker_restarts_total Worker processes restarted after dying.",
        "# TYPE sfu_worker_restarts_total counter",
    ]
    own += [
        f'sfu_worker_restarts_total{{worker="{s.id}"}} {s.generation - 1}' for s in sup.pool.slots
    ]
    if sup.cluster is not None:
        own += _cluster_metrics(sup.cluster)
    body = merge_metrics([*texts, "\n".join(own)])
    return web.Response(
        body=body.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


def _cluster_metrics(cluster: SupervisorNode) -> list[str]:
    """The node's cluster families (as one process writes them, labelled by ``node``)."""
    node = cluster.node
    label = f'{{node="{node.node_id}"}}'
    families = (
        ("sfu_cluster_available", "gauge", "1 while Redis answers.", int(node.available)),
        ("sfu_cluster_rooms_claimed", "gauge", "Rooms claimed here.", len(node.held())),
        ("sfu_cluster_nodes", "gauge", "Live nodes as of the last heartbeat.", len(node.node_urls)),
        ("sfu_cluster_redirects_total", "counter", "Joins answered with redirect.", node.redirects),
        ("sfu_cluster_rooms_lost_total", "counter", "Claims lost.", node.rooms_lost),
        ("sfu_cluster_rooms_reclaimed_total", "counter", "Expired claims re-taken.",
         node.rooms_reclaimed),
    )  # fmt: skip
    lines: list[str] = []
    for name, kind, text, value in families:
        family = name.removesuffix("_total")
        lines += [f"# HELP {family} {text}", f"# TYPE {family} {kind}", f"{name}{label} {value}"]
    return lines


def _admin(sup: Supervisor, request: web.Request) -> web.Response | None:
    """None when the request carries an admin token; else the error response."""
    try:
        claims = authenticate_with(request, sup.keys, sup.settings)
        if not claims.can("admin"):
            raise ApiError("forbidden", "this needs the 'admin' grant")
    except ApiError as exc:
        return error_response(exc.code, exc.message)
    return None


def _listing(body: dict[str, object]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def list_rooms(request: web.Request) -> web.Response:
    """``GET /v1/rooms``: as one process, with the worker ids from the load reports; with
    ``--redis`` every claimed room of the cluster (this node's counts live)."""
    sup: Supervisor = request.app[SUPERVISOR]
    refused = _admin(sup, request)
    if refused is not None:
        return refused
    cluster = sup.cluster
    if cluster is None:
        return _listing({"rooms": local_rooms(node_name(), worker_rooms(sup.pool))})
    here = {r["id"]: r for r in local_rooms(cluster.node.node_id, worker_rooms(sup.pool))}
    try:
        records = await cluster.node.state.rooms()
    except ClusterUnavailable:
        return error_response("internal", "cluster state unavailable")
    rows = []
    for record in records:
        row = record.describe()
        if record.node == cluster.node.node_id and record.id in here:
            row = here[record.id]
        rows.append(row)
    return _listing({"rooms": rows})


async def list_nodes(request: web.Request) -> web.Response:
    """``GET /v1/nodes``: the cluster's live nodes; without ``--redis`` this one (N workers)."""
    sup: Supervisor = request.app[SUPERVISOR]
    refused = _admin(sup, request)
    if refused is not None:
        return refused
    if sup.cluster is not None:
        try:
            nodes = await sup.cluster.node.state.nodes()
        except ClusterUnavailable:
            return error_response("internal", "cluster state unavailable")
        return _listing({"nodes": [n.describe() for n in nodes]})
    scheme = "wss" if request.secure else "ws"
    load = pool_load(sup.pool).describe(sup.cpu.read())
    me = {
        "id": node_name(),
        "url": f"{scheme}://{request.host}/v1/signal",
        "load": load,
        "workers": len(sup.pool.slots),
    }
    return _listing({"nodes": [me]})


async def proxy(request: web.Request) -> web.StreamResponse:
    sup: Supervisor = request.app[SUPERVISOR]
    if request.path.lstrip("/").startswith("internal/"):
        # The workers' private routes (load reports, eviction) are not for the public port.
        return web.json_response(
            {"error": {"code": "not_found", "message": "no such endpoint"}}, status=404
        )
    slot = sup.any_worker()
    if slot is None or slot.session is None:
        return web.json_response(
            {"error": {"code": "internal", "message": "no worker is available"}}, status=503
        )
    try:
        return await proxy_request(request, slot.session)
    except (aiohttp.ClientError, OSError):
        return web.json_response(
            {"error": {"code": "internal", "message": "the worker did not answer"}}, status=502
        )


def create_supervisor_app(sup: Supervisor) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SUPERVISOR] = sup
    app.router.add_get("/v1/signal", signal_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/rooms", list_rooms)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_route("*", "/{tail:.*}", proxy)

    async def close_clients(app: web.Application) -> None:
        for ws in list(sup.clients):
            await ws.close(code=1001, message=b"server shutting down")

    app.on_shutdown.append(close_clients)
    return app


# --- the process ------------------------------------------------------------------------


def recover_recordings(settings: Settings, keys: KeyStore) -> None:
    """Seal what a killed process left recording; only here, before any worker records."""
    from recorder.crypto import load_master_key
    from recorder.store import RecordingStore, hold_recordings_lock

    lock = hold_recordings_lock(settings.data_dir)
    try:
        store = RecordingStore(settings.data_dir, load_master_key(settings.data_dir), keys)
        recovered = store.recover()
        if recovered:
            log.info("recordings_recovered", recordings=recovered)
    finally:
        lock.close()


async def supervise(settings: Settings) -> int:
    """Run the supervisor until SIGTERM/SIGINT has drained the workers."""
    keys = KeyStore.open(settings.data_dir)  # created here once, before workers race for it
    state: ClusterState | None = None
    if settings.redis_url:
        state = ClusterState.from_url(settings.redis_url)
        await state.ping()  # fail fast with a clear message (ClusterUnavailable) when down
        # One node id for the supervisor and its workers (their webhooks name the node).
        settings = dataclasses.replace(settings, node_id=settings.node_id or default_node_id())
    socket_dir = Path(tempfile.mkdtemp(prefix="oktorus-sfu-"))
    pool = WorkerPool(settings, socket_dir, settings.workers)
    # Workers start (and import the media stack) while recovery runs: no worker can record
    # before this process listens, which is after both.
    starting = asyncio.get_running_loop().create_task(pool.start())
    try:
        await asyncio.to_thread(recover_recordings, settings, keys)
        from sfu.server_main import _tls

        tls = _tls(settings)
    except BaseException:
        starting.cancel()
        await pool.stop(timeout_s=5.0)
        shutil.rmtree(socket_dir, ignore_errors=True)
        if state is not None:
            await state.close()
        raise
    sup = Supervisor(settings, keys, pool)
    if state is not None:
        assert settings.node_id is not None
        sup.cluster = SupervisorNode(
            state,
            settings,
            node_id=settings.node_id,
            pool=pool,
            connections=sup.homes.connections,
            homes=sup.homes.worker,
        )
        sup.nodes = sup.cluster
    runner = web.AppRunner(create_supervisor_app(sup), access_log=None, handle_signals=False)
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        try:
            await starting
        except WorkerStartError as exc:
            log.error("workers_failed", error=str(exc))
            return 1
        await runner.setup()
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=tls.context if tls is not None else None,
        )
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if tls is not None else "http"
        if sup.cluster is not None:
            # Until registered, joins are refused ("cluster state unavailable").
            from sfu.server_main import signal_url

            await sup.cluster.start(signal_url(settings, port, tls=tls is not None))
        log.info(
            "listening",
            url=f"{scheme}://{settings.host}:{port}",
            port=port,
            tls=tls is not None,
            data_dir=str(settings.data_dir),
            workers=[{"id": s.id, "pid": s.pid, "ice_ports": s.spec.ice_ports} for s in pool.slots],
            node=settings.node_id,
            cluster=sup.cluster.node.url if sup.cluster is not None else None,
        )
        await _drain(sup, signals)
    finally:
        pool.stopping = True
        await runner.cleanup()
        if sup.cluster is not None:
            await sup.cluster.stop()
        elif state is not None:
            await state.close()
        await pool.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
    return 0


async def _drain(sup: Supervisor, signals: asyncio.Queue[int]) -> None:
    """First signal: forward it and wait for the workers to finish; second: cut short."""
    sig = await signals.get()
    deadline = (
        min(sup.settings.drain_deadline_s, FAST_DEADLINE_S)
        if sig == signal.SIGINT
        else sup.settings.drain_deadline_s
    )
    log.info("drain_requested", signal=signal.Signals(sig).name, deadline_s=deadline)
    sup.start_draining(deadline)
    if sup.cluster is not None:
        sup.cluster.draining()  # rooms re-form on other nodes as participants move
    sup.pool.stopping = True
    sup.pool.signal_all(sig)
    waiting = asyncio.get_running_loop().create_task(sup.pool.wait_exited(deadline + 15.0))
    second = asyncio.get_running_loop().create_task(signals.get())
    done, _ = await asyncio.wait({waiting, second}, return_when=asyncio.FIRST_COMPLETED)
    if second in done:
        log.info("drain_cut_short", signal=signal.Signals(second.result()).name)
        sup.pool.signal_all(second.result())
    else:
        second.cancel()
    log.info("shutting_down", reason="workers finished" if waiting in done else "cut short")

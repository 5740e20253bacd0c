"""`python -m sfu serve`: start the signalling server and the forwarding core."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from sfu.drain import Drain
from sfu.keys import KeyStore
from sfu.settings import Settings
from sfu.tls import ReloadingTls, self_signed

if TYPE_CHECKING:
    from sfu.cluster.node import ClusterNode
    from sfu.cluster.state import ClusterState
    from sfu.server import Server
    from sfu.workers.worker import WorkerSpec

__all__ = ["run", "run_worker", "signal_url"]

log = structlog.get_logger(__name__)

WEBHOOK_FLUSH_S = 5.0


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM, drain, then close every session gracefully.

    With ``--workers`` above 1 this process becomes the supervisor of that many workers.
    """
    if settings.workers > 1:
        from sfu.workers.supervisor import supervise

        return _run_loop(supervise(settings))
    return _run_loop(_serve(settings))


def run_worker(spec: WorkerSpec) -> int:
    """One worker process of a supervisor (see :mod:`sfu.workers.worker`)."""
    return _run_loop(_serve(spec.settings, worker=spec))


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay portable
        return asyncio.run(main)
    return uvloop.run(main)


def _tls(settings: Settings) -> ReloadingTls | None:
    """The reloading TLS context, or None for plain http (TlsError on unusable files)."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        return ReloadingTls(
            settings.tls_cert, settings.tls_key, interval_s=settings.tls_reload_interval_s
        )
    if settings.tls_self_signed:
        cert, key = self_signed(settings)
        tls = ReloadingTls(cert, key, interval_s=settings.tls_reload_interval_s)
        log.warning(
            "tls_self_signed",
            fingerprint_sha256=tls.info.fingerprint_sha256,
            certificate=str(cert),
            note="browsers warn about it: compare this fingerprint, then use real certificates",
        )
        return tls
    return None


async def _serve(settings: Settings, *, worker: WorkerSpec | None = None) -> int:
    # The media stack is imported here, not at module level: a workers' supervisor never
    # loads it, and starts (and restarts) its workers sooner.
    from recorder.service import RecordingService
    from sfu import aiortc_bridge as bridge
    from sfu.cluster.state import ClusterState
    from sfu.server import Server
    from signaling.app import create_app

    await bridge.check_contract()
    bridge.restrict_host_addresses(settings.ice_hosts)
    bridge.forbid_transcoding()
    ice_ports = settings.ice_port_range if worker is None else worker.ice_ports
    if ice_ports is not None:
        bridge.bind_ice_ports(*ice_ports)
    keys = KeyStore.open(settings.data_dir)
    # A worker's TLS ends at the supervisor: it speaks plain HTTP on its private socket.
    tls = _tls(settings) if worker is None else None
    context: ssl.SSLContext | None = tls.context if tls is not None else None
    state = (
        ClusterState.from_url(settings.redis_url) if settings.redis_url and worker is None else None
    )
    if state is not None:
        await state.ping()  # fail fast with a clear message (ClusterUnavailable) when down
    recordings = await RecordingService.open(
        settings.data_dir,
        keys,
        settings.issuer,
        redis_url=settings.redis_url,
        recover=worker is None,  # siblings may be recording: the supervisor recovers
    )
    worker_id = worker.worker_id if worker is not None else "0"
    server = Server(settings, keys, recordings=recordings, worker_id=worker_id)
    # A worker never joins the cluster itself: its supervisor owns the one ClusterNode.
    cluster = _cluster(state, settings, server) if worker is None else None
    app = create_app(server)
    if cluster is not None and settings.room_span_subscribers > 0:
        from sfu.cluster.node_span import node_span_routes

        node_span_routes(app, server, cluster)
    if worker is not None:
        from sfu.workers.worker import worker_routes

        worker_routes(app, server)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite = (
        web.TCPSite(runner, settings.host, settings.port, ssl_context=context)
        if worker is None
        else web.UnixSite(runner, worker.socket_path)
    )
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None
    try:
        await site.start()
        if worker is not None:
            await server.start()
            return await _serve_worker(server, worker, ice_ports)
        port = runner.addresses[0][1]
        scheme = "https" if tls is not None else "http"
        if cluster is not None:
            # Until registered, joins are refused ("cluster state unavailable").
            cluster.set_url(signal_url(settings, port, tls=tls is not None))
            await cluster.start()
        await server.start()
        certificate = (
            {"tls_not_after": tls.info.not_after, "fingerprint_sha256": tls.info.fingerprint_sha256}
            if tls is not None
            else {}
        )
        log.info(
            "listening",
            url=f"{scheme}://{settings.host}:{port}",
            port=port,
            tls=tls is not None,
            data_dir=str(settings.data_dir),
            ice_hosts=list(settings.ice_hosts),
            turn=server.ice.has_turn,
            webhooks=len(settings.webhook_urls),
            node=server.node_id,
            cluster=cluster.url if cluster is not None else None,
            **certificate,
        )
        if tls is not None:
            watcher = loop.create_task(tls.watch(), name="tls-watch")
            loop.add_signal_handler(signal.SIGHUP, tls.check)
        drain = Drain(server, deadline_s=settings.drain_deadline_s)
        drain.install(loop)
        reason = await drain.wait()
        log.info("shutting_down", reason=reason, participants=server.participant_count)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await runner.cleanup()
        if cluster is not None:
            await cluster.stop()
        await server.stop(WEBHOOK_FLUSH_S)
    return 0


def _cluster(state: ClusterState | None, settings: Settings, server: Server) -> ClusterNode | None:
    """With ``--redis``: this node's cluster membership, installed as the server's placement."""
    if state is None:
        return None
    from sfu.cluster.node import ClusterNode

    cluster = ClusterNode(
        state,
        node_id=server.node_id,
        ttl_s=settings.cluster_ttl_s,
        load=server.local_load,
        evict=server.evict_room,
        worker_ids=(server.worker_id,),
        policy=settings.placement,
    )
    server.placement = server.cluster = cluster
    return cluster


def signal_url(settings: Settings, port: int, *, tls: bool) -> str:
    """The URL other nodes redirect to: ``--public-url``, or ws(s)://host:port/v1/signal."""
    if settings.public_url:
        return settings.public_url
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{'wss' if tls else 'ws'}://{host}:{port}/v1/signal"


async def _serve_worker(
    server: Server, worker: WorkerSpec, ice_ports: tuple[int, int] | None
) -> int:
    """A worker: announce the socket, drain on signals or when the supervisor is gone."""
    from sfu.workers.worker import watch_parent

    loop = asyncio.get_running_loop()
    log.info(
        "worker_listening",
        socket=worker.socket_path,
        ice_ports=list(ice_ports) if ice_ports else None,
    )
    drain = Drain(server, deadline_s=server.settings.drain_deadline_s)
    drain.install(loop)
    parent = loop.create_task(watch_parent(lambda: drain.start(0.0)), name="parent-watch")
    try:
        reason = await drain.wait()
    finally:
        parent.cancel()
    log.info("worker_shutting_down", reason=reason, participants=server.participant_count)
    return 0

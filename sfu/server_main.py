"""`python -m sfu serve`: start the signalling server and the forwarding core."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl

import structlog
from aiohttp import web

from recorder.service import RecordingService
from sfu import aiortc_bridge as bridge
from sfu.cluster.node import ClusterNode
from sfu.cluster.state import ClusterState
from sfu.drain import Drain
from sfu.keys import KeyStore
from sfu.server import Server
from sfu.settings import Settings
from sfu.tls import ReloadingTls, self_signed
from signaling.app import create_app

__all__ = ["run"]

log = structlog.get_logger(__name__)

WEBHOOK_FLUSH_S = 5.0


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM, drain, then close every session gracefully."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay portable
        return asyncio.run(_serve(settings))
    return uvloop.run(_serve(settings))


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


async def _serve(settings: Settings) -> int:
    await bridge.check_contract()
    bridge.restrict_host_addresses(settings.ice_hosts)
    bridge.forbid_transcoding()
    keys = KeyStore.open(settings.data_dir)
    tls = _tls(settings)
    context: ssl.SSLContext | None = tls.context if tls is not None else None
    state = ClusterState.from_url(settings.redis_url) if settings.redis_url else None
    if state is not None:
        await state.ping()  # fail fast with a clear message (ClusterUnavailable) when down
    recordings = await RecordingService.open(
        settings.data_dir, keys, settings.issuer, redis_url=settings.redis_url
    )
    server = Server(settings, keys, recordings=recordings)
    cluster = _cluster(state, settings, server)
    runner = web.AppRunner(create_app(server), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context)
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None
    try:
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if tls is not None else "http"
        if cluster is not None:
            # Until registered, joins are refused ("cluster state unavailable").
            ws_scheme = "wss" if tls is not None else "ws"
            cluster.set_url(
                settings.public_url or f"{ws_scheme}://{_url_host(settings.host)}:{port}/v1/signal"
            )
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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

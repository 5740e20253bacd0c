"""`python -m sfu serve`: start the signalling server and the forwarding core."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from sfu import aiortc_bridge as bridge
from sfu.keys import KeyStore
from sfu.server import Server
from sfu.settings import Settings
from signaling.app import create_app

__all__ = ["run"]

log = structlog.get_logger(__name__)


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM, then close every session gracefully."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay portable
        return asyncio.run(_serve(settings))
    return uvloop.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    await bridge.check_contract()
    bridge.restrict_host_addresses(settings.ice_hosts)
    bridge.forbid_transcoding()
    keys = KeyStore.open(settings.data_dir)
    server = Server(settings, keys)
    runner = web.AppRunner(create_app(server), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = runner.addresses[0][1]
    log.info(
        "listening",
        url=f"http://{settings.host}:{port}",
        port=port,
        data_dir=str(settings.data_dir),
        ice_hosts=list(settings.ice_hosts),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down")
    await runner.cleanup()
    return 0

"""Carry one client's signalling WebSocket to its room's worker, frame for frame.

The supervisor has read the client's first frame (to learn the room); the relay opens a
WebSocket to the worker over its private socket, sends that frame, then copies frames both
ways in order. Close codes pass through unchanged (4401, 4429, 1001, 1009, ...), so protocol
v1 looks the same as with one process. If the worker goes away without closing (it died),
the client gets ``error`` ``internal`` asking it to join again, then close code 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
from aiohttp import WSMsgType, web

__all__ = ["WORKER_LOST", "WORKER_LOST_CLOSE", "relay"]

WORKER_LOST = {
    "type": "error",
    "code": "internal",
    "message": "the worker process hosting this room stopped; join again",
}
WORKER_LOST_CLOSE = 1011
CONNECT_TIMEOUT_S = 10.0


async def relay(
    client: web.WebSocketResponse,
    session: aiohttp.ClientSession,
    first: aiohttp.WSMessage,
    *,
    forwarded_proto: str,
) -> None:
    """Relay ``client`` to the worker behind ``session`` until either side closes."""
    try:
        upstream = await session.ws_connect(
            "http://worker/v1/signal",
            autoclose=False,
            max_msg_size=0,  # the worker enforces the contract's limits itself
            heartbeat=20.0,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            headers={"X-Forwarded-Proto": forwarded_proto},
        )
    except (aiohttp.ClientError, OSError, TimeoutError):
        await _worker_lost(client)
        return
    async with upstream:
        await _send(upstream, first)
        down = asyncio.get_running_loop().create_task(_downstream(upstream, client))
        try:
            await _upstream(client, upstream)
        finally:
            if not down.done():
                # The client left first: closing upstream ends the worker's session.
                with contextlib.suppress(Exception):
                    await upstream.close(code=_code(client.close_code))
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(down, 10.0)
            down.cancel()


async def _send(upstream: aiohttp.ClientWebSocketResponse, frame: aiohttp.WSMessage) -> None:
    if frame.type == WSMsgType.TEXT:
        await upstream.send_str(frame.data)
    elif frame.type == WSMsgType.BINARY:
        await upstream.send_bytes(frame.data)


async def _upstream(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    """Client → worker, until the client closes or the worker is gone."""
    async for frame in client:
        if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY) or upstream.closed:
            break
        try:
            await _send(upstream, frame)
        except (ConnectionError, aiohttp.ClientError):
            break


async def _downstream(
    upstream: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse
) -> None:
    """Worker → client. A close frame passes its code on; a connection that just ends
    (no close frame: the worker died) tells the client to join again."""
    while True:
        frame = await upstream.receive()
        if frame.type == WSMsgType.TEXT:
            with contextlib.suppress(ConnectionError):
                await client.send_str(frame.data)
        elif frame.type == WSMsgType.BINARY:
            with contextlib.suppress(ConnectionError):
                await client.send_bytes(frame.data)
        elif frame.type == WSMsgType.CLOSE:
            code = frame.data if isinstance(frame.data, int) else None
            with contextlib.suppress(Exception):
                await upstream.close()
            if not client.closed:
                await client.close(code=_code(code), message=(frame.extra or "").encode()[:120])
            return
        else:  # CLOSED or ERROR without a close frame: the worker is gone
            await _worker_lost(client)
            return


async def _worker_lost(client: web.WebSocketResponse) -> None:
    if client.closed:
        return
    with contextlib.suppress(ConnectionError):
        await client.send_str(json.dumps(WORKER_LOST))
    await client.close(code=WORKER_LOST_CLOSE, message=b"worker stopped: join again")


def _code(code: int | None) -> int:
    return 1000 if code is None or code == 1006 else code

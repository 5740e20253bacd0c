"""Forward a plain HTTP request (API, pages, recordings) to a worker and stream the answer.

Every worker serves the same HTTP API over the same data dir (keys, ledger, recordings), so
any ready worker can answer. The client's Host header is kept and ``X-Forwarded-Proto``
says whether the supervisor spoke TLS, so URLs the worker builds (``join_url``) are right.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

__all__ = ["HOP_BY_HOP", "proxy_request"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "x-forwarded-proto",
    }
)
CHUNK_BYTES = 64 * 1024


async def proxy_request(request: web.Request, session: aiohttp.ClientSession) -> web.StreamResponse:
    """Send ``request`` to the worker behind ``session``; stream its response back."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["X-Forwarded-Proto"] = request.scheme
    body = await request.read() if request.can_read_body else None
    async with session.request(
        request.method,
        "http://worker" + str(request.rel_url),
        headers=headers,
        data=body,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
        return response

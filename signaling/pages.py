"""The browser pages: the customer call page, the agent console and their static files.

``GET /join`` (the customer's invite link, ``/join?token=…``), ``GET /agent`` (the agent
console) and ``GET /static/<name>`` serve the files of ``signaling/static/`` — plain ES modules,
CSS and HTML, no build step. Files are read once at start-up, gzip-compressed when that helps,
and served with an ETag. Every response carries strict headers: a Content-Security-Policy that
allows only this origin (and the signalling WebSocket on the same host), no referrer (invite
links carry tokens in the URL), ``nosniff``, no framing, camera and microphone for this origin
only. HTML is ``no-store``: a page opened from an invite link is never cached with its URL.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

__all__ = [
    "CONNECT_SOURCES",
    "PAGES",
    "STATIC_DIR",
    "StaticFile",
    "load_static",
    "security_headers",
    "setup_pages",
]

STATIC_DIR = Path(__file__).with_name("static")
PAGES: Mapping[str, str] = {"/join": "call.html", "/agent": "agent.html"}
CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
_COMPRESSIBLE = (".html", ".js", ".css", ".svg", ".json")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Other signalling URLs a page may be sent to (a cluster's nodes, for ``redirect``).
CONNECT_SOURCES: web.AppKey[Callable[[], Iterable[str]]] = web.AppKey("connect_sources")


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One served file: its bytes, gzip bytes (if smaller), type and validator."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def load_static(directory: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every servable file directly in ``directory``, by name."""
    files: dict[str, StaticFile] = {}
    for path in sorted(directory.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if not path.is_file() or content_type is None or not _NAME_RE.match(path.name):
            continue
        body = path.read_bytes()
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        use_gzip = path.suffix in _COMPRESSIBLE and len(packed) < len(body)
        files[path.name] = StaticFile(
            body=body,
            gzipped=packed if use_gzip else None,
            content_type=content_type,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        )
    return files


def _connect_src(host: str, others: Iterable[str] = ()) -> str:
    """'self' plus the signalling WebSocket on this very host (ws: and wss:), and the
    ws(s) origins of ``others`` (other nodes' signalling URLs: a `redirect` may lead there)."""
    sources = ["'self'"]
    if _HOST_RE.match(host):
        sources += [f"ws://{host}", f"wss://{host}"]
    for url in others:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if parts.scheme in ("ws", "wss") and _HOST_RE.match(parts.netloc) and origin not in sources:
            sources.append(origin)
    return " ".join(sources)


def _others(request: web.Request) -> Iterable[str]:
    sources = request.app.get(CONNECT_SOURCES)
    return sources() if sources is not None else ()


def security_headers(request: web.Request) -> dict[str, str]:
    """The headers every page, script and style sheet is served with."""
    csp = "; ".join(
        (
            "default-src 'self'",
            f"connect-src {_connect_src(request.host, _others(request))}",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": (
            "camera=(self), microphone=(self), display-capture=(self), geolocation=(), "
            "payment=(), usb=()"
        ),
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def _respond(request: web.Request, item: StaticFile, *, cache: str) -> web.Response:
    headers = security_headers(request)
    headers["Cache-Control"] = cache
    headers["ETag"] = item.etag
    headers["Vary"] = "Accept-Encoding"
    if item.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = item.body
    if item.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = item.gzipped
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = item.content_type
    return web.Response(body=body, headers=headers)


def _not_found(request: web.Request) -> web.Response:
    headers = security_headers(request)
    return web.Response(status=404, text="not found", headers=headers)


def _page_handler(item: StaticFile) -> Handler:
    async def page(request: web.Request) -> web.StreamResponse:
        return _respond(request, item, cache="no-store")

    return page


def _static_handler(files: Mapping[str, StaticFile]) -> Handler:
    async def static(request: web.Request) -> web.StreamResponse:
        item = files.get(request.match_info["name"])
        if item is None:
            return _not_found(request)
        return _respond(request, item, cache="no-cache")

    return static


def setup_pages(app: web.Application, directory: Path = STATIC_DIR) -> None:
    """Register ``/join``, ``/agent`` and ``/static/{name}`` on ``app``."""
    files = load_static(directory)
    for path, name in PAGES.items():
        app.router.add_get(path, _page_handler(files[name]))
    app.router.add_get("/static/{name}", _static_handler(files))

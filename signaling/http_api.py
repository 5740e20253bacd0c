"""The HTTP API (JSON, ``Authorization: Bearer <access token>``): support sessions.

``POST /v1/sessions`` lets an agent open a support session: a fresh room, an agent token and a
customer token for it (both expiring), and the ``join_url`` the customer opens in a browser.
The caller's token must carry role ``agent`` or the ``admin`` grant; the room named in the
caller's token is ignored (a console sign-in token is not a room token).

Errors are JSON ``{"error": {"code", "message"}}`` with protocol v1's codes: 401
``unauthenticated`` (no or invalid token, with ``WWW-Authenticate: Bearer``), 403 ``forbidden``,
400 ``bad_request``, 413 ``too_large`` (see :data:`STATUS_BY_CODE`). Other HTTP API modules use
:func:`authenticate`, :class:`ApiError` and :func:`error_response` so every endpoint answers alike.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:  # the workers' supervisor imports this module without the media stack
    from sfu.server import Server

from sfu.keys import KeyStore
from sfu.settings import Settings
from sfu.tokens import TokenError
from signaling.access import (
    AccessClaims,
    issue_access_token,
    validate_identity,
    verify_access_token,
)

__all__ = [
    "AGENT_GRANTS",
    "CUSTOMER_GRANTS",
    "DEFAULT_SESSION_TTL_S",
    "MAX_SESSION_TTL_S",
    "MIN_SESSION_TTL_S",
    "STATUS_BY_CODE",
    "ApiError",
    "authenticate",
    "authenticate_with",
    "error_response",
    "node_name",
    "setup_http_api",
]

DEFAULT_SESSION_TTL_S = 2 * 3600
MIN_SESSION_TTL_S = 60
MAX_SESSION_TTL_S = 12 * 3600
AGENT_GRANTS = ("publish", "subscribe", "record")
CUSTOMER_GRANTS = ("publish", "subscribe")
DEFAULT_CUSTOMER_IDENTITY = "Customer"
MAX_BODY_BYTES = 4096
#: HTTP status of each protocol v1 error code (anything else: 500).
STATUS_BY_CODE = {
    "bad_request": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "consent_invalid": 422,
    "rate_limited": 429,
    "internal": 500,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refused request: protocol v1 error code and a message safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_response(code: str, message: str) -> web.Response:
    """The JSON error body every API refusal carries."""
    headers = {"Cache-Control": "no-store"}
    if code == "unauthenticated":
        headers["WWW-Authenticate"] = 'Bearer realm="oktorus-sfu"'
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=STATUS_BY_CODE.get(code, 500),
        headers=headers,
    )


def authenticate(request: web.Request, server: Server) -> AccessClaims:
    """The verified claims of the request's bearer token; raises ApiError (401)."""
    return authenticate_with(request, server.keys, server.settings)


def authenticate_with(request: web.Request, keys: KeyStore, settings: Settings) -> AccessClaims:
    """:func:`authenticate` without a Server (the workers' supervisor has none)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("unauthenticated", "send 'Authorization: Bearer <access token>'")
    try:
        return verify_access_token(
            keys, token.strip(), issuer=settings.issuer, leeway_s=settings.token_leeway_s
        )
    except TokenError as exc:
        raise ApiError("unauthenticated", f"invalid token: {exc}") from None


async def _json_body(request: web.Request) -> Mapping[str, Any]:
    """The request's JSON object; an empty body is an empty object."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError("too_large", f"the body is limited to {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError("too_large", f"the body is limited to {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError("bad_request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError("bad_request", "the body must be a JSON object")
    return body


def _ttl(body: Mapping[str, Any]) -> int:
    ttl = body.get("ttl", DEFAULT_SESSION_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ApiError("bad_request", "'ttl' must be an integer number of seconds")
    if not MIN_SESSION_TTL_S <= ttl <= MAX_SESSION_TTL_S:
        raise ApiError(
            "bad_request", f"'ttl' must be in {MIN_SESSION_TTL_S}..{MAX_SESSION_TTL_S} seconds"
        )
    return ttl


def _customer_identity(body: Mapping[str, Any]) -> str:
    name = body.get("customer", DEFAULT_CUSTOMER_IDENTITY)
    try:
        return validate_identity(name.strip() if isinstance(name, str) else name)
    except ValueError as exc:
        raise ApiError("bad_request", f"'customer': {exc}") from None


def _new_room_id(server: Server) -> str:
    while True:
        room = f"support-{secrets.token_hex(8)}"
        if server.rooms.get(room) is None:
            return room


def _sessions_handler(server: Server) -> Handler:
    async def create_session(request: web.Request) -> web.StreamResponse:
        try:
            claims = authenticate(request, server)
            if claims.role != "agent" and not claims.can("admin"):
                raise ApiError("forbidden", "opening a session needs role 'agent' or 'admin'")
            body = await _json_body(request)
            ttl = _ttl(body)
            customer = _customer_identity(body)
        except ApiError as exc:
            return error_response(exc.code, exc.message)
        room = _new_room_id(server)

        def issue(identity: str, role: str, grants: tuple[str, ...]) -> str:
            return issue_access_token(
                server.keys,
                room=room,
                identity=identity,
                role=role,
                grants=grants,
                ttl_s=ttl,
                issuer=server.settings.issuer,
            )

        agent_token = issue(claims.identity, "agent", AGENT_GRANTS)
        customer_token = issue(customer, "customer", CUSTOMER_GRANTS)
        join_url = request.url.origin().with_path("/join").with_query(token=customer_token)
        return web.json_response(
            {
                "room": room,
                "agent_token": agent_token,
                "customer_token": customer_token,
                "join_url": str(join_url),
                "expires_in": ttl,
            },
            status=201,
            headers={"Cache-Control": "no-store"},
        )

    return create_session


def node_name() -> str:
    """This node's name in ``GET /v1/rooms`` (the host name)."""
    return socket.gethostname()


def setup_http_api(app: web.Application, server: Server) -> None:
    """Register the HTTP API routes of ``server`` on ``app``."""
    app.router.add_post("/v1/sessions", _sessions_handler(server))
    # GET /v1/rooms is signaling.cluster_api's (cluster-aware, same shape).

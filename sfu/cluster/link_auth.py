"""Tokens for the shard link between nodes: HMAC-SHA256 with the cluster's secret in Redis.

The spill node opens a WebSocket to the home node's public port (``/internal/node-span/link``);
the link carries participants and tracks of a room, so only another node may open it. The
token names the room and the calling node and lives ``LINK_TOKEN_TTL_S``; the home node
refuses (401) anything else before upgrading. Pure functions: the clock is a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

__all__ = ["LINK_TOKEN_TTL_S", "LinkAuthError", "LinkClaims", "sign_link", "verify_link"]

LINK_TOKEN_TTL_S = 30.0
MAX_TOKEN_CHARS = 1024


class LinkAuthError(Exception):
    """A missing, forged, expired or malformed link token."""


@dataclass(frozen=True, slots=True)
class LinkClaims:
    room: str
    node: str  # the spill node asking


def _mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def sign_link(secret: bytes, *, room: str, node: str, now: float) -> str:
    payload = json.dumps({"room": room, "node": node, "exp": now + LINK_TOKEN_TTL_S})
    body = base64.urlsafe_b64encode(payload.encode()).decode()
    return f"{body}.{_mac(secret, body)}"


def verify_link(secret: bytes, token: str | None, *, now: float) -> LinkClaims:
    if not token or len(token) > MAX_TOKEN_CHARS or "." not in token:
        raise LinkAuthError("a link token is required")
    body, _, mac = token.partition(".")
    if not hmac.compare_digest(mac, _mac(secret, body)):
        raise LinkAuthError("bad link token signature")
    try:
        payload = json.loads(base64.urlsafe_b64decode(body.encode()))
        room, node, exp = payload["room"], payload["node"], float(payload["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LinkAuthError(f"malformed link token ({type(exc).__name__})") from None
    if not isinstance(room, str) or not isinstance(node, str):
        raise LinkAuthError("malformed link token")
    if exp < now or exp > now + 2 * LINK_TOKEN_TTL_S:
        raise LinkAuthError("expired link token")
    return LinkClaims(room=room, node=node)

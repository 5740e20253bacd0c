"""Protocol v1 framing: parse one client frame, validate fields, build replies.

Every way a frame can be wrong maps to one contract error code; nothing here raises
anything but :class:`ProtocolError`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

__all__ = [
    "MAX_FRAME_BYTES",
    "ProtocolError",
    "error_message",
    "optional",
    "parse_frame",
    "require",
]

MAX_FRAME_BYTES = 64 * 1024
MAX_ID_CHARS = 64
_T = TypeVar("_T")


class ProtocolError(Exception):
    """A request the server refuses; ``code`` is one of protocol v1's error codes."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id  # known when the frame failed after its id was read


def parse_frame(text: str) -> tuple[dict[str, Any], str | None]:
    """Decode a text frame into (message, request id); raises ProtocolError."""
    if len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_request", "the frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", "a message must be a JSON object")
    request_id = message.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS
    ):
        raise ProtocolError("bad_request", f"id must be a string of at most {MAX_ID_CHARS} chars")
    if not isinstance(message.get("type"), str):
        raise ProtocolError(
            "bad_request", "every message needs a string 'type'", request_id=request_id
        )
    return message, request_id


def require(message: dict[str, Any], name: str, kind: type[_T], *, max_len: int = 0) -> _T:
    """The field ``name`` of type ``kind`` (bool is never accepted as int)."""
    if name not in message:
        raise ProtocolError("bad_request", f"'{name}' is required")
    return _check(message[name], name, kind, max_len)


def optional(message: dict[str, Any], name: str, kind: type[_T], *, max_len: int = 0) -> _T | None:
    if message.get(name) is None:
        return None
    return _check(message[name], name, kind, max_len)


def _check(value: object, name: str, kind: type[_T], max_len: int) -> _T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError("bad_request", f"'{name}' must be of type {kind.__name__}")
    if max_len and isinstance(value, str | list) and len(value) > max_len:
        raise ProtocolError("bad_request", f"'{name}' is longer than {max_len}")
    return value


def error_message(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        reply["id"] = request_id
    return reply

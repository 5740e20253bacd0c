"""Recording in a room that spans two workers: the shard-link messages, built and checked.

Each shard keeps the consents of its own participants (asked, answered, recorded where they
are connected); the link carries the request itself and each side's answers, so both shards
show the same ``recording.state``. Messages (JSON, ``op``):

- ``recording.start`` {``request``, ``scope``, ``notice``, ``by``, ``by_identity``,
  ``consents``}: a recording request exists (sent when it starts, and when a link opens
  while one is active); the other shard asks its own participants.
- ``recording.stop`` {``request``, ``actor``}: the request ended (agent stop, requester gone).
- ``recording.consents`` {``request``, ``consents``: [{``participant``, ``state``,
  ``scope``, ``recorded``}]}: this shard's answers, whenever one changes.

A malformed message raises :class:`~sfu.shard.ShardProtocolError` (the link ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consent.tokens import validate_scope
from recorder.requests import RemoteConsent, RoomRecording
from sfu.shard import ShardProtocolError

__all__ = [
    "MAX_CONSENTS",
    "RemoteStart",
    "consents_message",
    "parse_consents",
    "parse_start",
    "parse_stop",
    "start_message",
    "stop_message",
]

MAX_CONSENTS = 10_000  # bound what the other shard can make us hold
MAX_NOTICE_CHARS = 4000
STATES = frozenset({"pending", "granted", "refused", "withdrawn", "expired"})


@dataclass(frozen=True, slots=True)
class RemoteStart:
    request: str
    scope: frozenset[str]
    notice: str
    by: str
    by_identity: str
    consents: dict[str, RemoteConsent]


def _text(message: dict[str, Any], key: str, limit: int) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ShardProtocolError(f"{key!r} must be a string of 1..{limit} characters")
    return value


def _scope(value: object) -> frozenset[str]:
    try:
        return validate_scope(value if isinstance(value, list) else [])
    except ValueError as exc:
        raise ShardProtocolError(f"scope: {exc}") from None


def local_consents(request: RoomRecording) -> list[dict[str, Any]]:
    return [
        {
            "participant": pid,
            "state": consent.state,
            "scope": consent.scope,
            "recorded": consent.sink is not None,
        }
        for pid, consent in request.consents.items()
    ]


def start_message(request: RoomRecording) -> dict[str, Any]:
    return {
        "op": "recording.start",
        "request": request.id,
        "scope": sorted(request.scope),
        "notice": request.notice,
        "by": request.requested_by,
        "by_identity": request.requested_by_identity,
        "consents": local_consents(request),
    }


def stop_message(request: RoomRecording, actor: str) -> dict[str, Any]:
    return {"op": "recording.stop", "request": request.id, "actor": actor}


def consents_message(request: RoomRecording) -> dict[str, Any]:
    return {
        "op": "recording.consents",
        "request": request.id,
        "consents": local_consents(request),
    }


def _consents(value: object) -> dict[str, RemoteConsent]:
    if not isinstance(value, list) or len(value) > MAX_CONSENTS:
        raise ShardProtocolError(f"'consents' must be a list of at most {MAX_CONSENTS}")
    result: dict[str, RemoteConsent] = {}
    for item in value:
        if not isinstance(item, dict):
            raise ShardProtocolError("a consent must be an object")
        state = item.get("state")
        recorded = item.get("recorded")
        if state not in STATES or not isinstance(recorded, bool):
            raise ShardProtocolError("a consent needs a known state and 'recorded'")
        scope = item.get("scope")
        kinds = _scope(scope) if scope else frozenset()
        result[_text(item, "participant", 128)] = RemoteConsent(
            str(state), tuple(sorted(kinds)), recorded
        )
    return result


def parse_start(message: dict[str, Any]) -> RemoteStart:
    return RemoteStart(
        request=_text(message, "request", 64),
        scope=_scope(message.get("scope")),
        notice=_text(message, "notice", MAX_NOTICE_CHARS),
        by=_text(message, "by", 128),
        by_identity=_text(message, "by_identity", 256),
        consents=_consents(message.get("consents")),
    )


def parse_stop(message: dict[str, Any]) -> tuple[str, str]:
    return _text(message, "request", 64), _text(message, "actor", 256)


def parse_consents(message: dict[str, Any]) -> tuple[str, dict[str, RemoteConsent]]:
    return _text(message, "request", 64), _consents(message.get("consents"))

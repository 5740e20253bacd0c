"""Protocol v1 requests of consent-gated recording: ``recording.*`` and ``consent.*``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from recorder.requests import RecordingError
from recorder.service import RecordingService
from signaling.messages import ProtocolError, optional, require

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.room import Room
    from signaling.session import SignalSession

__all__ = ["CONSENT_HANDLERS"]

Handler = Callable[["SignalSession", dict[str, Any], "str | None"], Awaitable[None]]


def _context(session: SignalSession) -> tuple[RecordingService, Room, Participant]:
    service = session.server.recordings
    if service is None:
        raise ProtocolError("internal", "recording is not available on this server")
    assert session.room is not None and session.participant is not None
    return service, session.room, session.participant


async def _run(action: Awaitable[Any]) -> Any:
    try:
        return await action
    except RecordingError as exc:
        raise ProtocolError(exc.code, exc.message) from None


def _ok(session: SignalSession, request_id: str | None) -> None:
    session.reply(request_id, {"type": "ok"})


async def on_recording_start(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    service, room, participant = _context(session)
    scope = require(message, "scope", list, max_len=2)
    notice = require(message, "notice", str, max_len=4000)
    await _run(service.start(room, participant, scope, notice))
    _ok(session, request_id)


async def on_recording_stop(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    service, room, participant = _context(session)
    await _run(service.stop(room, participant))
    _ok(session, request_id)


async def on_consent_grant(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    service, room, participant = _context(session)
    request = require(message, "request", str, max_len=64)
    scope = require(message, "scope", list, max_len=2)
    reply = await _run(service.grant(room, participant, request, scope))
    session.reply(request_id, reply)


async def on_consent_present(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    service, room, participant = _context(session)
    # No token, or not a string, is a failed consent check like any other (not bad input).
    token = message.get("token")
    await _run(service.present(room, participant, token if isinstance(token, str) else ""))
    _ok(session, request_id)


async def on_consent_refuse(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    """An addition to protocol v1: an explicit "no" (closing the dialog is one too)."""
    service, room, participant = _context(session)
    request = require(message, "request", str, max_len=64)
    await _run(service.refuse(room, participant, request))
    _ok(session, request_id)


async def on_consent_withdraw(
    session: SignalSession, message: dict[str, Any], request_id: str | None
) -> None:
    service, room, participant = _context(session)
    jti = optional(message, "jti", str, max_len=128)
    erase = optional(message, "erase", bool) or False
    await _run(service.withdraw(room, participant, jti, erase))
    _ok(session, request_id)


CONSENT_HANDLERS: dict[str, Handler] = {
    "recording.start": on_recording_start,
    "recording.stop": on_recording_stop,
    "consent.grant": on_consent_grant,
    "consent.present": on_consent_present,
    "consent.refuse": on_consent_refuse,
    "consent.withdraw": on_consent_withdraw,
}

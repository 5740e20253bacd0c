"""Data-rights endpoints: list, export and erase recordings; export everything about a subject.

Who may do what (``Authorization: Bearer <access token>``):
- the ``admin`` grant: everything;
- an agent: recordings of the room its token names;
- anyone else (a customer): only their own data — recordings whose subject is their token's
  identity, and their own subject export. Nobody else's data is ever reachable.
Every export and erasure is written to the consent ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from consent.ledger import LedgerEntry
from consent.revocation import RevocationUnavailable
from recorder.requests import RecordingError
from recorder.service import RecordingService
from recorder.store import RecordingInfo, RecordingNotFound
from sfu.server import Server
from signaling.access import AccessClaims
from signaling.http_api import ApiError, authenticate, error_response

__all__ = ["setup_recordings_api"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STATUS = {"not_found": 404, "conflict": 409}


def _service(server: Server) -> RecordingService:
    if server.recordings is None:
        raise ApiError("not_found", "recording is not enabled on this server")
    return server.recordings


def _may_read(claims: AccessClaims, info: RecordingInfo) -> bool:
    if claims.can("admin"):
        return True
    if claims.role == "agent" and claims.room == info.room:
        return True
    return claims.identity == info.subject


def _refuse(exc: ApiError) -> web.Response:
    if exc.code in _STATUS:
        return web.json_response(
            {"error": {"code": exc.code, "message": exc.message}}, status=_STATUS[exc.code]
        )
    return error_response(exc.code, exc.message)


def _guarded(
    server: Server, handler: Callable[[web.Request, AccessClaims], Awaitable[Any]]
) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            claims = authenticate(request, server)
            result = await handler(request, claims)
        except ApiError as exc:
            return _refuse(exc)
        except RecordingNotFound:
            return _refuse(ApiError("not_found", "no such recording"))
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, headers={"Cache-Control": "no-store"})

    return wrapped


async def _readable(server: Server, claims: AccessClaims, recording_id: str) -> RecordingInfo:
    info = await asyncio.to_thread(_service(server).store.get, recording_id)
    if not _may_read(claims, info):
        raise ApiError("not_found", "no such recording")  # do not confirm it exists
    return info


async def _log(
    server: Server,
    claims: AccessClaims,
    kind: str,
    subject: str,
    room: str | None,
    recording: str | None,
    details: dict[str, Any],
) -> None:
    await _service(server).ledger.append(
        LedgerEntry(
            kind=kind,
            room=room,
            subject=subject,
            actor=claims.identity,
            recording=recording,
            details=details,
        )
    )


def setup_recordings_api(app: web.Application, server: Server) -> None:
    """Register the recording and subject endpoints."""

    async def list_recordings(request: web.Request, claims: AccessClaims) -> Any:
        room = request.query.get("room") or None
        subject = request.query.get("subject") or None
        if not claims.can("admin"):
            if claims.role == "agent" and room == claims.room:
                pass
            elif subject in (None, claims.identity):
                subject = claims.identity
            else:
                raise ApiError("forbidden", "you may only list your own recordings")
        store = _service(server).store
        infos = await asyncio.to_thread(store.list_recordings, room=room, subject=subject)
        return {"recordings": [i.to_dict() for i in infos if _may_read(claims, i)]}

    async def media(request: web.Request, claims: AccessClaims) -> web.StreamResponse:
        info = await _readable(server, claims, request.match_info["id"])
        chunks: Iterator[bytes] = _service(server).store.decrypted_media(info.id)
        response = web.StreamResponse(
            headers={
                "Content-Type": info.media_type,
                "Content-Disposition": f'attachment; filename="{info.id}.{info.format}"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await response.write(chunk)
        await response.write_eof()
        await _log(
            server,
            claims,
            "recording.exported",
            info.subject,
            info.room,
            info.id,
            {"how": "media download"},
        )
        return response

    async def erase(request: web.Request, claims: AccessClaims) -> Any:
        info = await _readable(server, claims, request.match_info["id"])
        if not claims.can("admin") and claims.identity != info.subject:
            raise ApiError("forbidden", "only an admin or the recorded person may erase")
        report = await asyncio.to_thread(_service(server).store.erase, info.id)
        await _log(
            server, claims, "recording.erased", info.subject, info.room, info.id, report.to_dict()
        )
        return {"erased": report.to_dict()}

    async def export_subject(request: web.Request, claims: AccessClaims) -> Any:
        subject = request.match_info["subject"]
        if not claims.can("admin") and claims.identity != subject:
            raise ApiError("forbidden", "you may only export your own data")
        service = _service(server)
        records = await service.ledger.records_for_subject(subject)
        infos = await asyncio.to_thread(service.store.list_recordings, subject=subject)
        await _log(
            server,
            claims,
            "recording.exported",
            subject,
            None,
            None,
            {"how": "subject export", "recordings": [i.id for i in infos]},
        )
        return {
            "subject": subject,
            "consent_records": [r.to_dict() for r in records],
            "recordings": [i.to_dict() for i in infos],
        }

    async def withdraw_subject(request: web.Request, claims: AccessClaims) -> Any:
        """Withdraw a person's consent from anywhere (a privacy page, support on another
        node): recordings of it stop on whichever node is recording (within 500 ms)."""
        subject = request.match_info["subject"]
        if not claims.can("admin") and claims.identity != subject:
            raise ApiError("forbidden", "only an admin or that person may withdraw consent")
        jti = request.query.get("jti") or None
        try:
            withdrawn = await _service(server).withdraw_subject(subject, claims.identity, jti)
        except RecordingError as exc:
            raise ApiError(exc.code, exc.message) from None
        except RevocationUnavailable:
            raise ApiError("internal", "revocation state unavailable: retry") from None
        return {"subject": subject, "withdrawn": withdrawn}

    app.router.add_get("/v1/recordings", _guarded(server, list_recordings))
    app.router.add_get("/v1/recordings/{id}/media", _guarded(server, media))
    app.router.add_delete("/v1/recordings/{id}", _guarded(server, erase))
    app.router.add_get("/v1/subjects/{subject}/export", _guarded(server, export_subject))
    app.router.add_post("/v1/subjects/{subject}/withdraw", _guarded(server, withdraw_subject))

"""One WebSocket connection speaking protocol v1: framing, auth state, abuse limits.

The session reads frames in order and hands each to its handler
(:mod:`signaling.handlers`); everything sent to the client goes through the
participant's bounded outbox, drained by one writer task, so replies and events keep
their order and a client that stops reading cannot make the server buffer forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSMsgType, web

from signaling.messages import ProtocolError, error_message, parse_frame

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.room import Room
    from sfu.server import Server

__all__ = ["CLOSE_RATE_LIMITED", "CLOSE_UNAUTHENTICATED", "SignalSession"]

log = structlog.get_logger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_RATE_LIMITED = 4429
MESSAGES_PER_SECOND = 50.0
MESSAGE_BURST = 200.0
ERRORS_BEFORE_CUTOFF = 20
ERROR_WINDOW_S = 10.0
CONCURRENT = frozenset({"publish"})  # handled beside the read loop, not in it


class SignalSession:
    """State of one signalling connection (before and after ``join``)."""

    def __init__(self, ws: web.WebSocketResponse, server: Server) -> None:
        self.ws = ws
        self.server = server
        self.participant: Participant | None = None
        self.room: Room | None = None
        self.log = log
        self._pending: list[dict[str, Any]] = []  # replies before join (no outbox yet)
        self._tokens = MESSAGE_BURST
        self._refilled_at = time.monotonic()
        self._errors: list[float] = []
        self._writer: asyncio.Task[None] | None = None
        self._close_code: int | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._kicked: asyncio.Task[None] | None = None

    # --- sending --------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        if self.participant is not None:
            self.participant.send(message)
        else:
            self._pending.append(message)

    def reply(self, request_id: str | None, message: dict[str, Any]) -> None:
        if request_id is not None:
            message["id"] = request_id
        self.send(message)

    def close_after_flush(self, code: int) -> None:
        """Close once everything queued so far has been written."""
        self._close_code = code

    async def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for message in pending:
            await self.ws.send_str(json.dumps(message))

    async def _write_loop(self, participant: Participant) -> None:
        outbox = participant.outbox
        try:
            while True:
                message = await outbox.get()
                if message is None or self.ws.closed:
                    return
                await self.ws.send_str(json.dumps(message))
        except ConnectionError:
            return  # the client went away; the read loop ends the session

    def start_writer(self, participant: Participant) -> None:
        self.participant = participant
        participant.disconnect = self.disconnect
        for message in self._pending:
            participant.send(message)
        self._pending = []
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(participant))

    def disconnect(self, code: int) -> None:
        """Server-side end of a joined session: send what is queued, then close the socket
        (the read loop then ends and the participant leaves its room)."""
        if self._close_code is not None and self._kicked is not None:
            return
        self._close_code = code
        self._kicked = asyncio.get_running_loop().create_task(self._close_after_writer(code))

    async def _close_after_writer(self, code: int) -> None:
        participant, writer = self.participant, self._writer
        if participant is not None and writer is not None:
            with contextlib.suppress(asyncio.QueueFull):
                participant.outbox.put_nowait(None)
            await asyncio.wait([writer], timeout=2.0)
        await self.ws.close(code=code)

    # --- the read loop ----------------------------------------------------------------

    async def run(self) -> None:
        from signaling.handlers import dispatch

        try:
            async for frame in self.ws:
                if frame.type == WSMsgType.TEXT:
                    await self._on_text(frame.data, dispatch)
                elif frame.type == WSMsgType.BINARY:
                    self._refuse(
                        None,
                        self._before_join(
                            ProtocolError("bad_request", "binary frames are not used")
                        ),
                    )
                else:
                    break
                if self.participant is None:
                    await self._flush_pending()
                if self._close_code is not None or (
                    self.participant is not None and self.participant.overflowed
                ):
                    break
        finally:
            await self._finish()

    async def _on_text(self, text: str, dispatch: Any) -> None:
        try:
            self._rate_limit()
        except ProtocolError as exc:
            self._refuse(None, exc)
            return
        try:
            message, request_id = parse_frame(text)
        except ProtocolError as exc:
            self._refuse(exc.request_id, self._before_join(exc))
            return
        if message["type"] in CONCURRENT and self.participant is not None:
            # Negotiating a publish takes a while; the answer to the subscribe offer and
            # candidates must not wait behind it (the publisher serialises its own offers).
            task = asyncio.get_running_loop().create_task(
                self._handle(dispatch, message, request_id)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        await self._handle(dispatch, message, request_id)

    async def _handle(self, dispatch: Any, message: dict[str, Any], request_id: str | None) -> None:
        try:
            await dispatch(self, message, request_id)
        except ProtocolError as exc:
            self._refuse(request_id or exc.request_id, exc)
        except Exception:
            self.log.exception("handler_failed")
            self._refuse(request_id, ProtocolError("internal", "internal error"))

    def _before_join(self, exc: ProtocolError) -> ProtocolError:
        """Before ``join``, anything that is not a valid join is `unauthenticated`."""
        if self.participant is None:
            return ProtocolError(
                "unauthenticated",
                f"the first message must be 'join' ({exc})",
                request_id=exc.request_id,
            )
        return exc

    def _refuse(self, request_id: str | None, exc: ProtocolError) -> None:
        self.send(error_message(exc.code, exc.message, request_id))
        self.server.stats.signal_errors[exc.code] += 1
        if exc.code == "unauthenticated":
            self.close_after_flush(CLOSE_UNAUTHENTICATED)
            return
        now = time.monotonic()
        self._errors = [t for t in self._errors if now - t < ERROR_WINDOW_S] + [now]
        if len(self._errors) >= ERRORS_BEFORE_CUTOFF and exc.code != "rate_limited":
            self.send(error_message("rate_limited", "too many bad requests", None))
            self.server.stats.signal_errors["rate_limited"] += 1
            self.close_after_flush(CLOSE_RATE_LIMITED)

    def _rate_limit(self) -> None:
        now = time.monotonic()
        self._tokens = min(
            MESSAGE_BURST, self._tokens + (now - self._refilled_at) * MESSAGES_PER_SECOND
        )
        self._refilled_at = now
        if self._tokens < 1:
            self.close_after_flush(CLOSE_RATE_LIMITED)
            raise ProtocolError("rate_limited", "too many messages")
        self._tokens -= 1

    async def _finish(self) -> None:
        for task in self._background:
            task.cancel()
        participant, room = self.participant, self.room
        if participant is not None and self._writer is not None:
            try:
                participant.outbox.put_nowait(None)  # flush what is queued, then stop
            except asyncio.QueueFull:
                self._writer.cancel()
            await asyncio.wait([self._writer], timeout=2.0)
            self._writer.cancel()
        else:
            with contextlib.suppress(ConnectionError):
                await self._flush_pending()
        if not self.ws.closed:
            await self.ws.close(code=self._close_code or 1000)
        if participant is not None and room is not None:
            await room.leave(participant)
            if self.server.recordings is not None:
                await self.server.recordings.participant_left(room, participant)
            self.server.release_room(room)

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
from aiohttp import WebSocketError, WSMessage, WSMsgType, web

from signaling.messages import ProtocolError, error_message, parse_frame

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.room import Room
    from sfu.server import Server

__all__ = ["CLOSE_RATE_LIMITED", "CLOSE_REPLACED", "CLOSE_UNAUTHENTICATED", "SignalSession"]

log = structlog.get_logger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_RATE_LIMITED = 4429
CLOSE_REPLACED = 4409  # another connection resumed this participant
CLIENT_LEFT = (1000, 1001)  # close codes a client sends when it means to go
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
        self._dropped = False  # the socket ended without the client meaning to leave
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
        participant.connection = self
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

    def replaced(self) -> None:
        """Another connection resumed this participant: this one stops speaking for it."""
        self._close_code = CLOSE_REPLACED
        if self._writer is not None:
            self._writer.cancel()
        task = asyncio.get_running_loop().create_task(self._close_replaced())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_replaced(self) -> None:
        await self.ws.close(code=CLOSE_REPLACED, message=b"resumed on another connection")

    # --- the read loop ----------------------------------------------------------------

    async def run(self) -> None:
        from signaling.handlers import dispatch

        try:
            while True:
                frame = await self.ws.receive()
                if self._close_code == CLOSE_REPLACED:
                    break  # resumed elsewhere: nothing more from this socket counts
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
                    self._dropped = _dropped(frame)
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
        participant = self.participant
        if message["type"] in CONCURRENT and participant is not None:
            # Negotiating a publish takes a while; the answer to the subscribe offer must
            # not wait behind it (the publisher serialises its own offers, and publish
            # candidates that follow wait for it, beside the read loop too).
            publisher = participant.publisher
            publisher.expect_offer()
            task = self._beside(dispatch, message, request_id)
            task.add_done_callback(lambda _: publisher.offer_done())
            return
        if (
            message["type"] == "candidate"
            and message.get("pc") == "publish"
            and participant is not None
            and not participant.publisher.is_settled
        ):
            self._beside(dispatch, message, request_id)
            return
        await self._handle(dispatch, message, request_id)

    def _beside(
        self, dispatch: Any, message: dict[str, Any], request_id: str | None
    ) -> asyncio.Task[None]:
        """Handle a message in a task of its own, beside the read loop."""
        task = asyncio.get_running_loop().create_task(self._handle(dispatch, message, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

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
        from signaling.resume import detach, end_participant

        participant, room = self.participant, self.room
        mine = participant is not None and participant.connection is self
        resumable = mine and self._resumable()
        if (mine and not resumable) or participant is None:
            # Detached or replaced: a publish in flight finishes (the PC outlives the socket).
            for task in self._background:
                task.cancel()
        if mine and participant is not None and self._writer is not None:
            try:
                participant.outbox.put_nowait(None)  # flush what is queued, then stop
            except asyncio.QueueFull:
                self._writer.cancel()
            await asyncio.wait([self._writer], timeout=2.0)
            self._writer.cancel()
        elif self._writer is not None:
            self._writer.cancel()  # replaced: the outbox belongs to the new connection
        else:
            with contextlib.suppress(ConnectionError):
                await self._flush_pending()
        if not self.ws.closed:
            await self.ws.close(code=self._close_code or 1000)
        if not mine or participant is None or room is None:
            return
        if resumable:
            detach(self.server, room, participant)
        else:
            participant.connection = None
            await end_participant(self.server, room, participant)

    def _resumable(self) -> bool:
        """Did the connection drop (rather than the client or the server ending it)?"""
        server = self.server
        return (
            server.settings.resume_window_s > 0
            and self._close_code is None
            and self.participant is not None
            and not self.participant.overflowed
            and not (server.closing or server.draining)
            and self._dropped
        )


def _dropped(frame: WSMessage) -> bool:
    """Whether the frame that ended a session means the network, not the client, ended it.

    Kept for a resume: no close frame at all (EOF, reset, missed heartbeat) or a close
    frame with a code other than 1000/1001 (e.g. 4000, a client reconnecting). Ended:
    1000/1001 ("I left") and protocol violations (oversize frames: 1009).
    """
    if frame.type == WSMsgType.CLOSE:
        return frame.data not in CLIENT_LEFT
    if frame.type == WSMsgType.ERROR:
        return not isinstance(frame.data, WebSocketError)
    return frame.type == WSMsgType.CLOSED

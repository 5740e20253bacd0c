"""Protocol v1 over a WebSocket: requests matched to replies by id, events buffered."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import socket
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
)

logger = logging.getLogger(__name__)

Message = dict[str, Any]
"""One decoded protocol message (a JSON object with a ``type``)."""

Listener = Callable[[Message], bool]
"""Sees every inbound message in order; returns True to consume it (not buffered)."""

Predicate = Callable[[Message], bool]

TrackCallback = Callable[[str, MediaStreamTrack], None]
"""``on_track(sfu_track_id, track)``: a remote track started arriving."""

DEFAULT_TIMEOUT = 10.0
MAX_BUFFERED_EVENTS = 10_000
MAX_INBOUND_MESSAGE = 4 * 1024 * 1024  # server SDPs can exceed the 64 KiB client limit


class SignalError(Exception):
    """The server answered a request with ``error`` {``code``, ``message``}."""

    def __init__(self, code: str, message: str = "", reply: Message | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.reply: Message = reply if reply is not None else {}


class SignalClosed(ConnectionError):
    """The WebSocket is closed; ``code`` is its close code (None if unknown)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"signalling connection closed (code {code})")
        self.code = code


class ProtocolError(Exception):
    """The server sent something protocol v1 does not allow here."""


# --- the WebSocket layer ------------------------------------------------------------


def _as_types(types: str | Iterable[str] | None) -> frozenset[str] | None:
    if types is None:
        return None
    return frozenset([types]) if isinstance(types, str) else frozenset(types)


@dataclass
class _Waiter:
    types: frozenset[str] | None
    predicate: Predicate | None
    future: asyncio.Future[Message]

    def matches(self, message: Message) -> bool:
        if self.types is not None and message.get("type") not in self.types:
            return False
        return self.predicate is None or bool(self.predicate(message))


class SignalClient:
    """Protocol v1 over one WebSocket: requests with replies, events, raw frames.

    Inbound messages whose ``id`` names a pending :meth:`request` resolve it; every other
    message is an *event*: listeners see it first, then the oldest matching
    :meth:`next_event` waiter gets it, else it is buffered (at most
    ``MAX_BUFFERED_EVENTS``, oldest dropped).
    """

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, url: str
    ) -> None:
        self.url = url
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._waiters: list[_Waiter] = []
        self._events: deque[Message] = deque(maxlen=MAX_BUFFERED_EVENTS)
        self._listeners: list[Listener] = []
        self._send_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._close_code: int | None = None
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"signal-reader {url}"
        )

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl: ssl_module.SSLContext | bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> SignalClient:
        """Open ``url`` (``ws://host:port/v1/signal``); raises on HTTP errors or timeout."""
        session = aiohttp.ClientSession()
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(url, ssl=ssl, headers=headers, max_msg_size=MAX_INBOUND_MESSAGE),
                timeout,
            )
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, url)

    # state

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by either side)."""
        return self._closed.is_set()

    @property
    def closed_code(self) -> int | None:
        """The WebSocket close code once closed (e.g. 4401, 4429, 1009), else None."""
        return self._close_code

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(message)`` for every inbound message (replies included), in order."""
        self._listeners.append(listener)

    def buffered(self, types: str | Iterable[str] | None = None) -> list[Message]:
        """A snapshot of buffered events (optionally of these types), oldest first."""
        wanted = _as_types(types)
        return [m for m in self._events if wanted is None or m.get("type") in wanted]

    def discard(self, types: str | Iterable[str] | None = None) -> int:
        """Drop buffered events (optionally of these types): only what comes next counts."""
        wanted = _as_types(types)
        kept = [m for m in self._events if wanted is not None and m.get("type") not in wanted]
        dropped = len(self._events) - len(kept)
        self._events.clear()
        self._events.extend(kept)
        return dropped

    # sending

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message as a JSON text frame (fire and forget)."""
        await self.send_raw(json.dumps(message, separators=(",", ":")))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a text (str) or binary (bytes) frame verbatim: for malformed-input tests."""
        if self.closed:
            raise SignalClosed(self._close_code)
        async with self._send_lock:
            if isinstance(data, bytes):
                await self._ws.send_bytes(data)
            else:
                await self._ws.send_str(data)

    async def request(
        self, message: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> Message:
        """Send ``message`` with a unique ``id`` (unless it has one) and return the reply.

        Raises :class:`SignalError` on an ``error`` reply, :class:`SignalClosed` if the
        connection closes first, :class:`TimeoutError` after ``timeout`` seconds.
        """
        outgoing = dict(message)
        request_id = str(outgoing.setdefault("id", f"{self._id_prefix}-{next(self._ids)}"))
        if request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already pending")
        if self.closed:
            raise SignalClosed(self._close_code)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.send(outgoing)
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)
        if reply.get("type") == "error":
            raise SignalError(str(reply.get("code", "")), str(reply.get("message", "")), reply)
        return reply

    # receiving

    async def next_event(
        self,
        types: str | Iterable[str] | None,
        predicate: Predicate | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Message:
        """Remove and return the first event of ``types`` (None: any) matching ``predicate``.

        Buffered events are searched first; non-matching ones stay buffered. Raises
        :class:`TimeoutError`, or :class:`SignalClosed` if the connection is closed and
        nothing buffered matches.
        """
        waiter = _Waiter(_as_types(types), predicate, asyncio.get_running_loop().create_future())
        for event in self._events:
            if waiter.matches(event):
                self._events.remove(event)
                return event
        if self.closed:
            raise SignalClosed(self._close_code)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def wait_closed(self, timeout: float | None = DEFAULT_TIMEOUT) -> int | None:
        """Wait until the server closes the connection; returns :attr:`closed_code`."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self._close_code

    def abort(self) -> None:
        """Drop the TCP connection without a WebSocket close frame, as a network loss
        or a dying proxy would (tests of session resumption)."""
        sock = self._ws.get_extra_info("socket")  # asyncio's TransportSocket wrapper
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Close the WebSocket (idempotent) and release the HTTP session."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(code=code), timeout)
        if not self._reader.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        if not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._mark_closed()
        await self._session.close()

    async def __aenter__(self) -> SignalClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch_text(frame.data)
                elif frame.type == aiohttp.WSMsgType.ERROR:
                    logger.debug("signalling socket error: %s", self._ws.exception())
                    break
        except Exception:
            logger.exception("signalling reader failed")
        finally:
            self._mark_closed()

    def _dispatch_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            logger.warning("ignoring a non-JSON frame from the server: %.80r", data)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            logger.warning("ignoring a frame without a type: %.80r", data)
            return
        self._dispatch(message)

    def _dispatch(self, message: Message) -> None:
        consumed = False
        for listener in list(self._listeners):
            try:
                consumed = listener(message) or consumed
            except Exception:
                logger.exception("signalling listener failed on %s", message.get("type"))
        reply_to = self._pending.get(str(message.get("id"))) if "id" in message else None
        if reply_to is not None and not reply_to.done():
            reply_to.set_result(message)
        elif not consumed:
            self._deliver_event(message)

    def _deliver_event(self, message: Message) -> None:
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            try:
                matched = waiter.matches(message)
            except Exception as exc:  # noqa: BLE001 - a bad predicate fails its waiter only
                waiter.future.set_exception(exc)
                continue
            if matched:
                waiter.future.set_result(message)
                return
        self._events.append(message)

    def _mark_closed(self) -> None:
        if self._closed.is_set():
            return
        self._close_code = self._ws.close_code
        self._closed.set()
        error = SignalClosed(self._close_code)
        for future in [*self._pending.values(), *(w.future for w in self._waiters)]:
            if not future.done():
                future.set_exception(error)

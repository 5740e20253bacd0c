"""Rooms that span workers: the control channel between two workers' shards of a room.

The supervisor decides a room spills (:meth:`Supervisor.span_target`) and asks the spill
worker ``POST /internal/span/open`` with the home worker's private socket. The spill worker
opens a WebSocket to the home worker's ``/internal/span/link`` on that socket (only the
supervisor and sibling workers can reach it), says ``hello`` with its pipe port and state,
and gets ``welcome`` with the home's pipe port and state; from then on both ends run a
:class:`~sfu.shard.ShardLink` (events, demand) over it and a :class:`~sfu.pipe.PipeEndpoint`
(media) beside it. Either end closing, or the other worker dying, ends the link: the other
shard's participants leave and its tracks are unpublished for this shard's clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from sfu.pipe import PipeEndpoint
from sfu.shard import ShardLink, ShardProtocolError
from sfu.workers.worker import SPAN_LINK_PATH, SPAN_OPEN_PATH

if TYPE_CHECKING:
    from sfu.room import Room
    from sfu.server import Server

__all__ = ["Spans", "span_routes"]

log = structlog.get_logger(__name__)

HELLO_TIMEOUT_S = 5.0
OUTBOX_LIMIT = 10_000  # control messages queued for the other shard; beyond: link broken
CLOSE_REFUSED = 4409


class _Channel:
    """One link's WebSocket: a writer task drains what the (synchronous) link sends."""

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_LIMIT)
        self.link: ShardLink | None = None
        self.writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            if self.link is not None:
                self.link.close("control channel overflow")

    def stop(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(None)

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while (message := await self.outbox.get()) is not None:
                if self.ws.closed:
                    return
                await self.ws.send_str(json.dumps(message))
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def read(self) -> None:
        """Feed the link until the WebSocket ends or the other side misbehaves."""
        assert self.link is not None
        async for frame in self.ws:
            if frame.type != WSMsgType.TEXT:
                break
            try:
                self.link.on_message(json.loads(frame.data))
            except (ShardProtocolError, ValueError) as exc:
                log.warning("shard_bad_message", room=self.link.room.id, error=str(exc))
                break


class Spans:
    """This worker's shard links, by room id (one link per room: two shards at most)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.links: dict[str, ShardLink] = {}
        self._opening: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _closed(self, link: ShardLink, channel: _Channel) -> None:
        if self.links.get(link.room.id) is link:
            del self.links[link.room.id]
            if self.server.recordings is not None:
                self.server.recordings.link_closed(link.room)
        channel.stop()
        self.server.rooms.release(link.room)

    def _new_link(
        self, room: Room, endpoint: PipeEndpoint, channel: _Channel, home: bool
    ) -> ShardLink:
        link = ShardLink(
            room,
            endpoint,
            channel.send,
            home=home,
            on_closed=lambda done: self._closed(done, channel),
        )
        channel.link = link
        room.shard = link
        self.links[room.id] = link
        recordings = self.server.recordings
        if recordings is not None:
            link.on_recording = lambda message: recordings.link_message(room, message)
        return link

    def _established(self, link: ShardLink) -> None:
        """Both shards know each other: a recording request crosses now (consent.request
        for the other shard's participants, one recording.state on both)."""
        if self.server.recordings is not None and not link.closed:
            self.server.recordings.link_opened(link.room, link.send)

    # --- the spill worker's end ---------------------------------------------------------

    async def _open_spill_shard(
        self,
        room_id: str,
        endpoint: PipeEndpoint,
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
    ) -> tuple[ShardLink, _Channel, int] | None:
        """Open the pipe and this side's shard on a connected link (worker or node);
        None, with everything closed, if a concurrent open of the room won."""
        port = await endpoint.open()
        room = self.server.rooms.get_or_create(room_id)
        if room.shard is not None:
            endpoint.close()
            await ws.close()
            await session.close()
            return None
        channel = _Channel(ws)
        return self._new_link(room, endpoint, channel, home=False), channel, port

    async def open_spill(self, room_id: str, home_socket: str) -> None:
        """Open this worker's shard of ``room_id`` (homed behind ``home_socket``).

        Returns once the home's state is applied, so the join that follows sees everyone;
        concurrent opens of one room wait for the first."""
        existing = self.links.get(room_id)
        if existing is not None and not existing.closed:
            return
        opening = self._opening.get(room_id)
        if opening is not None:
            await asyncio.shield(opening)
            if room_id not in self.links:
                raise ShardProtocolError("opening the shard failed")
            return
        done = asyncio.get_running_loop().create_future()
        self._opening[room_id] = done
        try:
            await self._open_spill(room_id, home_socket)
        finally:
            del self._opening[room_id]
            done.set_result(None)

    async def _open_spill(self, room_id: str, home_socket: str) -> None:
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=home_socket))
        endpoint = PipeEndpoint()
        link: ShardLink | None = None
        try:
            ws = await session.ws_connect(
                "http://worker" + SPAN_LINK_PATH, heartbeat=10.0, max_msg_size=0
            )
            opened = await self._open_spill_shard(room_id, endpoint, ws, session)
            if opened is None:
                return
            link, channel, port = opened
            await ws.send_str(
                json.dumps(
                    {"op": "hello", "room": room_id, "pipe_port": port, "state": link.snapshot()}
                )
            )
            welcome = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if link is not None:
                link.close("no welcome")
            endpoint.close()
            await session.close()
            raise ShardProtocolError(f"the home worker did not answer ({exc!r})") from None
        try:
            message = json.loads(welcome.data) if welcome.type == WSMsgType.TEXT else None
            if not isinstance(message, dict) or message.get("op") != "welcome":
                raise ShardProtocolError("the home worker refused the link")
            endpoint.connect(_port(message))
            link.apply_snapshot(message.get("state"))
        except (ShardProtocolError, ValueError) as exc:
            link.close(f"refused: {exc}")
            await session.close()
            raise ShardProtocolError(str(exc)) from None
        log.info("shard_opened", room=room_id, home=False, pipe_port=port)
        self._established(link)
        self._spawn(self._run(channel, link, session))

    async def _run(
        self, channel: _Channel, link: ShardLink, session: aiohttp.ClientSession | None
    ) -> None:
        try:
            await channel.read()
        finally:
            link.close("link ended")
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(channel.writer, 2.0)
            if session is not None:
                await session.close()

    # --- the home worker's end ----------------------------------------------------------

    async def accept(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=0)
        await ws.prepare(request)
        try:
            hello = json.loads((await ws.receive(timeout=HELLO_TIMEOUT_S)).data)
            room_id = str(hello["room"])
            port = _port(hello)
        except (TimeoutError, ValueError, KeyError, TypeError, ShardProtocolError):
            await ws.close(code=CLOSE_REFUSED, message=b"expected hello")
            return ws
        room = self.server.rooms.get_or_create(room_id)
        refusal = None
        if room.shard is not None:
            refusal = b"the room already spans another worker"
        elif self.server.draining or self.server.closing:
            refusal = b"draining"
        if refusal is not None:
            self.server.rooms.release(room)
            await ws.close(code=CLOSE_REFUSED, message=refusal)
            return ws
        endpoint = PipeEndpoint()
        pipe_port = await endpoint.open()
        endpoint.connect(port)
        channel = _Channel(ws)
        link = self._new_link(room, endpoint, channel, home=True)
        channel.send(
            {"op": "welcome", "room": room_id, "pipe_port": pipe_port, "state": link.snapshot()}
        )
        try:
            link.apply_snapshot(hello.get("state"))
        except ShardProtocolError:
            link.close("bad hello")
            return ws
        log.info("shard_opened", room=room_id, home=True, pipe_port=pipe_port)
        self._established(link)
        await self._run(channel, link, None)
        return ws

    async def close(self) -> None:
        for link in list(self.links.values()):
            link.close("worker shutting down")
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)


def _port(message: dict[str, Any]) -> int:
    port = message.get("pipe_port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ShardProtocolError("'pipe_port' must be a UDP port")
    return port


SPANS: web.AppKey[Spans] = web.AppKey("spans", Spans)


def span_routes(app: web.Application, server: Server) -> Spans:
    """``/internal/span/*`` on a worker's private socket (supervisor and siblings only)."""
    spans = Spans(server)
    app[SPANS] = spans

    async def open_span(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            room, home_socket = body["room"], body["home_socket"]
            if not isinstance(room, str) or not isinstance(home_socket, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected room and home_socket"}, status=400)
        if server.draining or server.closing:
            return web.json_response({"error": "draining"}, status=503)
        try:
            await spans.open_spill(room, home_socket)
        except ShardProtocolError as exc:
            log.warning("shard_open_failed", room=room, error=str(exc))
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response({"ok": True})

    app.router.add_post(SPAN_OPEN_PATH, open_span)
    app.router.add_get(SPAN_LINK_PATH, spans.accept)

    async def close_links(app: web.Application) -> None:
        await spans.close()

    app.on_shutdown.append(close_links)
    return spans
